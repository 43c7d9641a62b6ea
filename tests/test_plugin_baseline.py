"""Baselines: a regression fails the test that regressed; missing and re-measured entries fail
with instructions; stale entries are reported; --circuits-update-baseline rewrites the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import (
    FAKE_GATES,
    FINGERPRINT,
    load_json,
    run_pytest,
    shared_run,
    summary_row,
)

from pytest_circuits.baseline import (
    Baseline,
    BaselineCheck,
    BaselineFileError,
    MetricDelta,
    tolerance_for,
)
from pytest_circuits.errors import GateConfigError
from pytest_circuits.recording import GateResult, MetricCheck

SUITE = '''
import pytest

import fakegates
from pytest_circuits.errors import CircuitAssertionError


def test_regressed():
    fakegates.aligned(fakegates.env("SCORE", "0.85"), subject="a -> regressed")


def test_steady():
    fakegates.aligned(0.89, subject="a -> steady")


def test_improved():
    fakegates.robust(10.0, subject="improved")


def test_missing():
    fakegates.aligned(0.9, subject="a -> new")


def test_remeasured():
    fakegates.aligned(0.9, subject="a -> remeasured", ablation="zero", n_prompts=16)


@pytest.mark.circuits(baseline_tolerance=0.1)
def test_tolerant():
    fakegates.aligned(0.85, subject="a -> tolerant")


def test_twin_one():
    fakegates.robust(10.0, subject="twin")


def test_twin_two():
    fakegates.robust(20.0, subject="twin")


def test_swallowed():
    try:
        fakegates.aligned(0.85, subject="a -> swallowed")
    except CircuitAssertionError:
        pass
'''


def aligned(subject: str, score: float, nodeid: str) -> GateResult:
    return GateResult(
        gate="circuit_aligned", subject=subject, task="numerals",
        checks=[MetricCheck("alignment", score, 0.8, ">=")],
        values={"alignment": score, "mean_similarity": score + 0.05, "n_pairs": 12.0},
        fingerprint=dict(FINGERPRINT), nodeid=nodeid,
    )


def accepted_baseline() -> str:
    """A baseline accepted at alignment 0.9 (ablation 'mean') for every pair."""
    accepted = [
        aligned(f"a -> {name}", 0.9, f"test_base.py::test_{name}")
        for name in ("regressed", "steady", "remeasured", "tolerant", "swallowed", "gone")
    ]
    robust = [
        GateResult(
            gate="ablation_robust", subject=subject, task="numerals",
            checks=[MetricCheck("max_single_drop", 30.0, 50.0, "<=")],
            values={"max_single_drop": 30.0, "severity": 0.03, "gini": 0.3},
            fingerprint={**FINGERPRINT, "analysis": "sweep", "similarity": "", "matching": ""},
            nodeid=f"test_base.py::test_{name}",
        )
        for subject, name in (("improved", "improved"), ("twin", "twin_one"))
    ]
    return json.dumps(Baseline(Path("baseline.json")).updated(accepted + robust).to_dict())


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pytest.RunResult]:
    files = {"fakegates.py": FAKE_GATES, "test_base.py": SUITE,
             "baseline.json": accepted_baseline()}
    return shared_run(tmp_path_factory, "baseline-suite", files,
                      "--circuits-baseline=baseline.json", "--circuits-json=out.json")


@pytest.fixture(scope="module")
def suite(shared: tuple[Path, pytest.RunResult]) -> Path:
    return shared[0]


@pytest.fixture(scope="module")
def compared(shared: tuple[Path, pytest.RunResult]) -> pytest.RunResult:
    return shared[1]


def _failed(run: pytest.RunResult) -> set[str]:
    return {line.split()[1].split("::")[1] for line in run.outlines
            if line.startswith("FAILED ")}


def test_a_regression_fails_the_test_that_regressed_and_only_it(compared: pytest.RunResult
                                                                ) -> None:
    assert _failed(compared) == {"test_regressed", "test_missing", "test_remeasured",
                                 "test_swallowed"}
    compared.assert_outcomes(passed=5, failed=4)
    text = "\n".join(compared.outlines)
    assert "regression against baseline" in text
    assert summary_row(compared.outlines, "test_regressed", " alignment ").split()[-7:] == [
        "0.85", ">=", "0.8", "REGRESSED", "(was", "0.9)", "FAIL"]
    # an unchecked metric that regressed gets its own row
    assert summary_row(compared.outlines, "test_regressed", "mean_similarity").split()[-5:] == [
        "-", "REGRESSED", "(was", "0.95)", "FAIL"]
    assert summary_row(compared.outlines, "test_steady").split()[-4:] == [
        "ok", "(was", "0.9)", "PASS"]


def test_an_improvement_and_a_change_within_tolerance_pass(compared: pytest.RunResult,
                                                           suite: Path) -> None:
    results = {r["nodeid"].split("::")[1]: r for r in load_json(suite / "out.json")["results"]}
    assert results["test_improved"]["baseline"]["status"] == "ok"
    assert results["test_steady"]["baseline"]["status"] == "ok"
    deltas = {d["metric"]: d for d in results["test_regressed"]["baseline"]["deltas"]}
    assert deltas["alignment"]["baseline"] == 0.9
    assert deltas["alignment"]["current"] == 0.85
    assert deltas["alignment"]["tolerance"] == 0.02


def test_a_marker_tolerance_widens_the_comparison(compared: pytest.RunResult) -> None:
    assert summary_row(compared.outlines, "test_tolerant").split()[-1] == "PASS"


def test_a_regression_the_test_caught_itself_still_fails_it(compared: pytest.RunResult) -> None:
    assert "test_swallowed" in _failed(compared)


def test_a_missing_entry_fails_with_the_command_that_records_it(compared: pytest.RunResult
                                                                ) -> None:
    text = "\n".join(compared.outlines)
    assert "no baseline entry for 'circuit_aligned::a -> new::numerals'" in text
    assert ("pytest test_base.py::test_missing --circuits-baseline=baseline.json "
            "--circuits-update-baseline") in text


def test_an_entry_measured_another_way_is_refused_with_the_differing_fields(
    compared: pytest.RunResult,
) -> None:
    text = "\n".join(compared.outlines)
    assert "was measured with a different method" in text
    assert "ablation: baseline 'mean', this run 'zero'" in text
    assert "n_prompts: baseline 8, this run 16" in text
    assert summary_row(compared.outlines, "test_remeasured").split()[-2:] == ["refused", "FAIL"]


def test_stale_entries_are_listed_in_the_summary(compared: pytest.RunResult) -> None:
    text = "\n".join(compared.outlines)
    assert "circuits: 1 stale baseline entries (not produced by this run):" in text
    assert "  circuit_aligned::a -> gone::numerals" in compared.outlines


def test_a_key_shared_by_results_with_different_values_is_pointed_out(
    compared: pytest.RunResult,
) -> None:
    assert ("circuits: baseline key 'ablation_robust::twin::numerals' is produced by 2 results "
            "with different values (test_base.py::test_twin_one, test_base.py::test_twin_two); "
            "give them different subjects or tasks so each has its own entry") in (
        compared.outlines)


@pytest.mark.slow
def test_update_under_xdist_merges_every_worker_into_one_file(
    suite: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "suite"
    shutil.copytree(suite, directory)
    run = run_pytest(directory, "-n", "2", "--circuits-baseline=baseline.json",
                     "--circuits-update-baseline")
    run.assert_outcomes(passed=9)
    entries = load_json(directory / "baseline.json")["entries"]
    assert "circuit_aligned::a -> gone::numerals" not in entries  # stale, removed
    assert entries["circuit_aligned::a -> new::numerals"]["values"]["alignment"] == 0.9
    assert entries["circuit_aligned::a -> regressed::numerals"]["values"]["alignment"] == 0.85
    assert entries["circuit_aligned::a -> remeasured::numerals"]["fingerprint"]["ablation"] == (
        "zero")
    assert len(entries) == 8
    assert not list(directory.glob("*.tmp")) and not list(directory.glob(".baseline.json.*"))
    rerun = aligned("a -> regressed", 0.85, "test_base.py::test_regressed")
    assert Baseline.load(directory / "baseline.json").check(rerun).status == "ok"


def test_a_baseline_that_is_not_one_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".json", baseline='{"entries": {}}')
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--circuits-baseline=baseline.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*is not a pytest-circuits baseline*--circuits-update-baseline*"])


def test_update_needs_a_baseline_path(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--circuits-update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--circuits-update-baseline needs*--circuits-baseline=PATH*"])


@pytest.mark.parametrize(
    ("metric", "op", "baseline", "current", "regressed"),
    [
        ("alignment", ">=", 0.90, 0.87, True),  # lower is worse, beyond 0.02
        ("alignment", ">=", 0.90, 0.89, False),
        ("alignment", ">=", 0.90, 0.99, False),  # an improvement never regresses
        ("max_single_drop", "<=", 30.0, 32.5, True),  # higher is worse, beyond 2.0 points
        ("max_single_drop", "<=", 30.0, 31.5, False),
        ("max_single_drop", "<=", 30.0, 5.0, False),
    ],
)
def test_worse_means_lower_for_a_minimum_and_higher_for_a_maximum(
    metric: str, op: str, baseline: float, current: float, regressed: bool
) -> None:
    result = GateResult(gate="g", subject="s", task="t",
                        checks=[MetricCheck(metric, current, 0.0, op)], values={metric: current})
    delta = MetricDelta(metric, baseline, current, tolerance_for(metric, result), op)
    assert delta.regressed is regressed


def test_tolerance_comes_from_the_result_then_the_test_then_the_default() -> None:
    result = GateResult(gate="g", subject="s", task="t", checks=[],
                        tolerances={"alignment": 0.5})
    assert tolerance_for("alignment", result, 0.1) == 0.5
    assert tolerance_for("mean_similarity", result, {"mean_similarity": 0.3}) == 0.3
    assert tolerance_for("mean_similarity", result, 0.1) == 0.1
    assert tolerance_for("mean_similarity", result) == 0.02
    assert tolerance_for("L1H2.student_influence", result) == 2.0


def test_a_check_round_trips_through_plain_data() -> None:
    check = BaselineCheck("k", "regressed", [MetricDelta("alignment", 0.9, 0.8, 0.02, ">=")], "m")
    assert BaselineCheck.from_dict(json.loads(json.dumps(check.to_dict()))) == check


# ----------------------------------------------------------------------------- no silent pass


def _file(tmp_path: Path, values: object, key: str = "circuit_aligned::a -> b::numerals") -> Path:
    data = Baseline(tmp_path / "b.json").updated([aligned("a -> b", 0.9, "t.py::test")]).to_dict()
    entry = data["entries"].pop("circuit_aligned::a -> b::numerals")
    data["entries"][key] = {**entry, "values": values}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"alignment": float("nan")}, "has a value alignment: nan that is not finite"),
        ({"alignment": float("inf")}, "has a value alignment: inf that is not finite"),
        ({}, "has no values"),
        ([], "has no values"),
        ({"alignment": "0.9"}, "has a value alignment: '0.9' that is not a number"),
        ({"alignmnet": 0.9}, "names a metric 'alignmnet' that gate circuit_aligned does not "
                             "report (did you mean 'alignment'?)"),
    ],
)
def test_a_baseline_entry_that_cannot_be_compared_is_refused(tmp_path: Path, values: object,
                                                             problem: str) -> None:
    with pytest.raises(BaselineFileError) as raised:
        Baseline.load(_file(tmp_path, values))
    assert problem in str(raised.value)
    assert "re-record it with --circuits-update-baseline" in str(raised.value)


def test_a_nan_baseline_value_is_a_usage_error_not_a_pass(pytester: pytest.Pytester) -> None:
    _file(pytester.path, {"alignment": float("nan")})
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--circuits-baseline=b.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "alignment: nan that is not finite" in result.stderr.str()


def test_a_custom_gate_may_report_metrics_the_registry_does_not_know(tmp_path: Path) -> None:
    path = _file(tmp_path, {"my_score": 1.0}, key="my_gate::a -> b::numerals")
    assert Baseline.load(path).entries["my_gate::a -> b::numerals"]["values"] == {"my_score": 1.0}


@pytest.mark.parametrize("bad", [float("nan"), -0.1, "0.1"])
def test_a_nan_or_negative_tolerance_is_an_error_not_a_pass(bad: object) -> None:
    result = GateResult(gate="circuit_aligned", subject="s", task="t", checks=[],
                        tolerances={"alignment": bad})  # type: ignore[dict-item]
    with pytest.raises(GateConfigError, match="give a finite number >= 0"):
        tolerance_for("alignment", result)
    plain = GateResult(gate="circuit_aligned", subject="s", task="t", checks=[])
    with pytest.raises(GateConfigError, match="the test's baseline_tolerance"):
        tolerance_for("alignment", plain, bad)  # type: ignore[arg-type]
    with pytest.raises(GateConfigError):
        tolerance_for("alignment", plain, {"alignment": bad})  # type: ignore[dict-item]


def test_a_nan_on_either_side_regresses() -> None:
    assert MetricDelta("alignment", float("nan"), 0.9, 0.02, ">=").regressed
    assert MetricDelta("alignment", 0.9, float("nan"), 0.02, ">=").regressed
    assert not MetricDelta("alignment", 0.9, 0.9, 0.02, ">=").regressed


def test_an_entry_recorded_before_the_direction_field_existed_still_compares() -> None:
    old = {**FINGERPRINT}  # the fake fingerprint has no "direction": written before it existed
    assert "direction" not in old
    baseline = Baseline(Path("b.json"), {
        "circuit_aligned::a -> b::numerals": {"values": {"alignment": 0.9}, "fingerprint": old},
        "ablation_robust::b::numerals": {
            "values": {"max_single_drop": 30.0},
            "fingerprint": {**old, "analysis": "sweep", "similarity": "", "matching": ""}},
    })
    now = aligned("a -> b", 0.9, "t.py::test")
    now.fingerprint = {**FINGERPRINT, "direction": "teacher_to_student"}
    assert baseline.check(now).status == "ok"
    now.fingerprint["direction"] = "student_to_teacher"  # a real change of method
    check = baseline.check(now)
    assert check.status == "refused"
    assert "direction: baseline 'teacher_to_student', this run 'student_to_teacher'" in (
        check.message)
    sweep = GateResult(gate="ablation_robust", subject="b", task="numerals",
                       checks=[MetricCheck("max_single_drop", 30.0, 50.0, "<=")],
                       values={"max_single_drop": 30.0},
                       fingerprint={**FINGERPRINT, "analysis": "sweep", "similarity": "",
                                    "matching": "", "direction": ""})
    assert baseline.check(sweep).status == "ok"  # a sweep never had a direction
