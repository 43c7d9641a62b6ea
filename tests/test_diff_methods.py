"""``pytest-circuits diff`` across sweep algorithms: an exact release and an auto one measure the
same values, so they are compared (not refused as "measured differently"), an estimated value by
its band: a regression only when the whole band is beyond the tolerance, undecided (exit 1, never
"ok") when part of it is; two estimates of the same weights by the same method compare by value.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli as run

from pytest_circuits import cache
from pytest_circuits.cli import EXIT_ANALYSIS, EXIT_OK, EXIT_REGRESSION, _judged

TEACHER, STUDENT = "zoo:tiny-teacher", "zoo:tiny-student"


pytestmark = pytest.mark.usefixtures("restore_cache_settings")



@pytest.fixture(scope="module")
def exact_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("diff-methods")
    saved = dict(cache._settings)
    code, _, err = run("compare", TEACHER, STUDENT, "--task", "numerals", "--n-prompts", "16",
                       "-q", "--device", "cpu", "--method", "exact", "--cache-dir",
                       str(folder / "cache"), "--json", str(folder / "exact.json"))
    cache._settings.update(saved)
    assert code == EXIT_OK, err
    return folder / "exact.json"


def as_auto(data: dict[str, Any], band: float) -> dict[str, Any]:
    """The same results as an auto sweep's whose student heads are estimates with ``band``."""
    auto = copy.deepcopy(data)
    for report in auto["reports"]:
        report["fingerprint"]["method"] = "auto"
        for side in ("teacher", "student"):
            report[side]["sweep"]["fingerprint"]["method"] = "auto"
        for effect in report["student"]["sweep"]["effects"]:
            if effect["kind"] == "head":
                effect["method"], effect["bound"] = "attribution", band
    return auto


def write(path: Path, data: dict[str, Any]) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_an_exact_release_and_an_auto_one_are_compared(exact_file: Path,
                                                       tmp_path: Path) -> None:
    data = json.loads(exact_file.read_text())
    auto = write(tmp_path / "auto.json", as_auto(data, band=1e-9))
    code, out, err = run("diff", str(exact_file), auto)
    # before: "measured differently in the two files (method: baseline 'exact', this run
    # 'auto')", exit 3
    assert code == EXIT_OK, err + out
    assert "0 regression(s)" in out and "UNDECIDED" not in out and "undecided" not in out


def test_an_estimate_whose_band_straddles_the_tolerance_is_undecided(exact_file: Path,
                                                                     tmp_path: Path) -> None:
    data = json.loads(exact_file.read_text())
    auto = write(tmp_path / "auto.json", as_auto(data, band=30.0))
    code, out, err = run("diff", str(exact_file), auto)
    # the same point values, but a head could be 30 points worse: severity (tolerance 0.02)
    # and each head's drop (tolerance 10 points) are undecided, not "ok"
    assert code == EXIT_REGRESSION, err + out
    assert "0 regression(s)" in out
    severity = next(line for line in out.splitlines() if line.strip().startswith("severity"))
    assert "UNDECIDED" in severity
    # the worst drop is MLP0's exact 100 (a clamped drop cannot be worse): decided
    assert "UNDECIDED" not in next(line for line in out.splitlines() if "worst single" in line)
    assert "student L" in out  # the heads whose drop could regress are listed
    assert "change(s) undecided" in out
    # the other way round (auto baseline, exact release) reads the baseline's band the same way
    code, out, _ = run("diff", auto, str(exact_file))
    assert code == EXIT_REGRESSION and "UNDECIDED" in out


def test_two_estimates_of_the_same_weights_by_the_same_method_compare_by_value(
        exact_file: Path, tmp_path: Path) -> None:
    data = json.loads(exact_file.read_text())
    auto = write(tmp_path / "auto.json", as_auto(data, band=30.0))
    code, out, _ = run("diff", auto, auto)
    assert code == EXIT_OK and "UNDECIDED" not in out and "0 regression(s)" in out


def test_another_method_difference_is_still_refused(exact_file: Path, tmp_path: Path) -> None:
    data = as_auto(json.loads(exact_file.read_text()), band=1e-9)
    for report in data["reports"]:
        report["fingerprint"]["ablation"] = "zero"
    other = write(tmp_path / "zero.json", data)
    code, _, err = run("diff", str(exact_file), other)
    assert code == EXIT_ANALYSIS
    assert "measured differently" in err and "ablation" in err and "'method'" not in err


def test_a_band_regresses_only_when_all_of_it_is_beyond_the_tolerance() -> None:
    # higher is worse (a severity), tolerance 0.1 from an exact 1.0
    assert _judged("s", 1.0, 1.3, 0.1, True, (None, (1.15, 1.45))).verdict == "REGRESSED"
    assert _judged("s", 1.0, 1.3, 0.1, True, (None, (1.05, 1.45))).verdict == "UNDECIDED"
    assert _judged("s", 1.0, 1.05, 0.1, True, (None, (0.95, 1.08))).verdict == "ok"
    # both sides estimates: the least the value can have worsened is new low minus old high
    assert _judged("s", 1.0, 1.3, 0.1, True, ((0.9, 1.1), (1.25, 1.35))).verdict == "REGRESSED"
    assert _judged("s", 1.0, 1.3, 0.1, True, ((0.9, 1.2), (1.25, 1.35))).verdict == "UNDECIDED"
    # lower is worse (an alignment score)
    assert _judged("a", 0.8, 0.75, 0.02, False, (None, (0.7, 0.77))).verdict == "REGRESSED"
    assert _judged("a", 0.8, 0.79, 0.02, False, (None, (0.77, 0.81))).verdict == "UNDECIDED"
    assert _judged("a", 0.8, 0.79, 0.02, False, (None, None)).verdict == "ok"
