"""The pytest-circuits command: help, usage errors and exit codes, and each command on the zoo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import run_cli as run

from pytest_circuits import cache
from pytest_circuits.cli import (
    EXIT_ANALYSIS,
    EXIT_OK,
    EXIT_REGRESSION,
    EXIT_USAGE,
    REPORTS_FORMAT,
    load_reports,
    main,
)

TEACHER, GOOD, BRITTLE = "zoo:tiny-teacher", "zoo:tiny-student", "zoo:tiny-student-brittle"
FAST = ["--n-prompts", "16", "-q", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("restore_cache_settings")



# ----------------------------------------------------------------------------- without models


@pytest.mark.parametrize("command", ["compare", "calibrate", "rank", "diff"])
def test_each_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == EXIT_OK
    text = capsys.readouterr().out
    assert f"usage: pytest-circuits {command}" in text


def test_top_level_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())
    assert "0 ok; 1 regression" in text and "2 usage error" in text and "3 analysis" in text


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert "required" in capsys.readouterr().err


def test_a_missing_results_file_is_named(tmp_path: Path) -> None:
    code, _, err = run("diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert code == EXIT_USAGE
    assert "a.json" in err and "No such file" in err and "Traceback" not in err


def test_a_file_that_is_not_results_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"hello": 1}))
    code, _, err = run("diff", str(path), str(path))
    assert code == EXIT_USAGE
    assert "not a pytest-circuits results file" in err


def test_broken_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"format":\n')
    code, _, err = run("diff", str(path), str(path))
    assert code == EXIT_USAGE and "not JSON" in err and "line" in err


def test_zero_prompts_is_a_usage_error() -> None:
    code, _, err = run("compare", TEACHER, GOOD, "--n-prompts", "0")
    assert code == EXIT_USAGE and "--n-prompts must be at least 1, got 0" in err


def test_python_dash_m_runs_the_same_tool() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest_circuits", "rank", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "CANDIDATE" in done.stdout


# ----------------------------------------------------------------------------- on the zoo


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``compare`` of both zoo students, with JSON and HTML written."""
    saved = dict(cache._settings)
    folder = tmp_path_factory.mktemp("compare")
    runs = {}
    for label, student in (("good", GOOD), ("brittle", BRITTLE)):
        code, out, err = run("compare", TEACHER, student, "--task", "numerals", *FAST,
                             "--cache-dir", str(folder / "cache"),
                             "--json", str(folder / f"{label}.json"),
                             "--html", str(folder / f"{label}.html"))
        runs[label] = {"code": code, "out": out, "err": err,
                       "json": folder / f"{label}.json", "html": folder / f"{label}.html"}
    cache._settings.update(saved)
    return runs


@pytest.mark.slow
def test_compare_prints_the_analysis_and_writes_json_and_html(compared: dict[str, Any]) -> None:
    good = compared["good"]
    assert good["code"] == EXIT_OK, good["err"]
    (report,) = load_reports(str(good["json"]))
    assert json.loads(good["json"].read_text())["format"] == REPORTS_FORMAT
    out = good["out"]
    assert f"{TEACHER} -> {GOOD} on task 'numerals'" in out
    assert f"alignment A {report.alignment.score:.4f}" in out
    assert f"weighted {report.alignment.weighted_score:.4f}" in out
    t, s = report.teacher.brittleness, report.student.brittleness
    assert f"{t.severity:.4f}" in out and f"{s.severity:.4f}" in out
    for name, absorbed in report.compressed.items():
        assert f"{name} <- {', '.join(absorbed)}" in out
    page = good["html"].read_text()
    assert f'data-value="{report.alignment.score!r}"' in page


@pytest.mark.slow
def test_diff_of_a_release_with_itself_finds_nothing(compared: dict[str, Any]) -> None:
    path = str(compared["good"]["json"])
    code, out, _ = run("diff", path, path)
    assert code == EXIT_OK
    assert "0 regression(s)" in out and "REGRESSED" not in out


@pytest.mark.slow
def test_diff_to_the_brittle_release_fails_and_names_the_components(
        compared: dict[str, Any]) -> None:
    code, out, _ = run("diff", str(compared["good"]["json"]), str(compared["brittle"]["json"]))
    assert code == EXIT_REGRESSION
    (old,) = load_reports(str(compared["good"]["json"]))
    (new,) = load_reports(str(compared["brittle"]["json"]))
    drop = new.alignment.score - old.alignment.score
    assert drop < -0.02
    assert "alignment A" in out and "REGRESSED" in out
    # the brittle student's one live layer-0 head now carries the task
    worst = new.student.brittleness.worst_component
    assert f"student {worst} drop" in out and "gained" in out
    assert "newly discarded" in out


@pytest.mark.slow
def test_diff_tolerances_decide_the_exit_code(compared: dict[str, Any]) -> None:
    code, _, _ = run("diff", str(compared["good"]["json"]), str(compared["brittle"]["json"]),
                     "--max-alignment-drop", "1", "--max-severity-increase", "1",
                     "--max-drop-increase", "200", "--max-retained-drop", "100",
                     "--allow-new-discards")
    assert code == EXIT_OK


@pytest.mark.slow
def test_rank_puts_the_good_student_above_the_brittle_one_and_says_why(
        tmp_path: Path) -> None:
    code, out, err = run("rank", TEACHER, BRITTLE, GOOD, "--task", "numerals", *FAST,
                         "--cache-dir", str(tmp_path))
    assert code == EXIT_OK, err
    rows = [line.split() for line in out.splitlines() if line.strip()[:2] in ("1 ", "2 ")]
    assert [r[1] for r in rows[:2]] == [GOOD, BRITTLE]
    assert f"1. {GOOD}: passes every calibrated threshold; above {BRITTLE}" in out
    assert "ablating head L0H3 costs 100.0 points" in out


@pytest.mark.slow
def test_calibrate_prints_a_gate_file_that_loads_and_blocks_only_the_brittle_student(
        tmp_path: Path) -> None:
    from pytest_circuits.analysis.cached import model_report
    from pytest_circuits.gatefile import load_gate_file
    from pytest_circuits.models import load_model

    code, out, err = run("calibrate", TEACHER, GOOD, BRITTLE, "--task", "numerals", *FAST,
                         "--cache-dir", str(tmp_path / "cache"))
    assert code == EXIT_OK, err
    block = out.split("# ---- paste into circuits.yaml ----\n", 1)[1]
    gate_file = tmp_path / "circuits.yaml"
    gate_file.write_text(block)
    specs = load_gate_file(gate_file)
    assert len(specs) == 2 * 4  # behaviour, severity, critical head, alignment per candidate
    document = yaml.safe_load(block)
    heads = next(g for g in document["gates"] if g["name"] == "numerals-no-critical-head-"
                 "candidate1")["ablation_robust"]
    teacher = model_report(load_model(TEACHER, device="cpu"), "numerals", n_prompts=16)
    worst_head = max(e.drop for e in teacher.sweep.effects if e.head is not None)
    assert worst_head + 10 <= heads["max_single_drop"] < worst_head + 10.5
    assert heads["components"] == "heads"
    verdicts = {line.split()[0]: line for line in out.splitlines()
                if line.strip().startswith("zoo:tiny-student")}
    assert "passes" in verdicts[GOOD] and "BLOCKED" in verdicts[BRITTLE]


@pytest.mark.slow
def test_calibrate_strict_exits_1_when_a_candidate_is_blocked(tmp_path: Path) -> None:
    code, _, _ = run("calibrate", TEACHER, BRITTLE, "--task", "numerals", *FAST, "--strict",
                     "--cache-dir", str(tmp_path))
    assert code == EXIT_REGRESSION


@pytest.mark.slow
def test_a_model_that_does_not_exist_is_an_analysis_error_without_traceback() -> None:
    code, _, err = run("compare", TEACHER, "zoo:no-such-student", *FAST, "--no-cache")
    assert code == EXIT_ANALYSIS
    assert "no-such-student" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_recommended_preset_reaches_the_analysis(tmp_path: Path) -> None:
    out_json = tmp_path / "recommended.json"
    code, _, err = run("compare", TEACHER, GOOD, "--task", "numerals", *FAST,
                       "--preset", "recommended", "--cache-dir", str(tmp_path / "cache"),
                       "--json", str(out_json))
    assert code == EXIT_OK, err
    (report,) = load_reports(str(out_json))
    assert report.fingerprint.matching == "tie_aware"
    # the recommended preset compares heads by pattern and output since issue 18 (was "subspace")
    assert report.fingerprint.similarity == "combined"


def test_a_preset_with_a_conflicting_matching_is_refused_before_any_model_loads() -> None:
    code, _, err = run("compare", TEACHER, "zoo:no-such-student", *FAST, "--no-cache",
                       "--preset", "recommended", "--matching", "causal")
    assert code == EXIT_USAGE
    assert "preset" in err and "Traceback" not in err
