"""What a run reports: the terminal summary, JUnit properties, the JSON file, and xdist merging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import (
    FAKE_GATES,
    FAKE_TESTS,
    junit_properties,
    load_json,
    results_by_test,
    shared_run,
    summary_row,
    summary_section,
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pytest.RunResult]:
    """The fake suite run once in a fresh process, with JUnit XML and the JSON file."""
    return shared_run(tmp_path_factory, "fake-suite",
                      {"fakegates.py": FAKE_GATES, "test_fake.py": FAKE_TESTS},
                      "--junitxml=junit.xml", "--circuits-json=out.json")


@pytest.fixture(scope="module")
def suite(shared: tuple[Path, pytest.RunResult]) -> Path:
    return shared[0]


@pytest.fixture(scope="module")
def serial(shared: tuple[Path, pytest.RunResult]) -> pytest.RunResult:
    shared[1].assert_outcomes(passed=2, failed=1, xfailed=1)
    return shared[1]


@pytest.mark.slow
def test_summary_has_a_row_per_checked_metric_with_threshold_and_verdict(
    serial: pytest.RunResult,
) -> None:
    bad = summary_row(serial.outlines, "test_bad")
    assert bad.split() == [
        "test_fake.py::test_bad",
        "[circuit_aligned]",
        "teacher",
        "->",
        "weak",
        "numerals",
        "alignment",
        "0.5",
        ">=",
        "0.8",
        "FAIL",
    ]
    assert summary_row(serial.outlines, "test_good").split()[-4:] == ["0.9", ">=", "0.8", "PASS"]
    # a threshold in points carries its unit (from the gate kind's registry entry)
    assert summary_row(serial.outlines, "test_robust").split()[-5:] == [
        "30", "<=", "50", "pts", "PASS"]
    assert summary_row(serial.outlines, "test_brittle").split()[-5:] == [
        "80", "<=", "50", "pts", "XFAIL"]
    assert "circuits: 4 gate results: 2 passed, 1 failed, 1 xfailed" in summary_section(
        serial.outlines
    )


@pytest.mark.slow
def test_junit_xml_carries_each_value_threshold_and_verdict(
    serial: pytest.RunResult, suite: Path
) -> None:
    properties = junit_properties(suite / "junit.xml")
    bad = properties["test_bad"]
    assert float(bad["circuits.circuit_aligned.alignment"]) == 0.5
    assert float(bad["circuits.circuit_aligned.alignment.threshold"]) == 0.8
    assert bad["circuits.circuit_aligned.alignment.passed"] == "False"
    assert bad["circuits.circuit_aligned.passed"] == "False"
    assert float(bad["circuits.circuit_aligned.mean_similarity"]) == pytest.approx(0.55)
    assert bad["circuits.circuit_aligned.subject"] == "teacher -> weak"
    robust = properties["test_robust"]
    assert float(robust["circuits.ablation_robust.max_single_drop"]) == 30.0
    assert robust["circuits.ablation_robust.passed"] == "True"


@pytest.mark.slow
def test_json_file_holds_every_result_with_its_verdict(
    serial: pytest.RunResult, suite: Path
) -> None:
    document = load_json(suite / "out.json")
    assert document["format"] == "pytest-circuits-results"
    assert document["summary"] == {"gates": 4, "passed": 2, "failed": 1, "xfailed": 1}
    assert [r["nodeid"] for r in document["results"]] == sorted(
        r["nodeid"] for r in document["results"]
    )
    results = results_by_test(document)
    assert results["test_bad"]["values"]["alignment"] == 0.5
    assert results["test_bad"]["checks"] == [
        {"metric": "alignment", "value": 0.5, "threshold": 0.8, "op": ">=", "teacher_value": None}
    ]
    assert results["test_bad"]["verdict"] == "FAIL"
    assert results["test_bad"]["outcome"] == "failed"
    assert results["test_brittle"]["verdict"] == "XFAIL"
    assert results["test_good"]["key"] == "circuit_aligned::teacher -> student::numerals"
    assert results["test_good"]["blame"] == [
        {"component": "L0H1", "counterpart": "L0H0", "scores": {"contribution": 0.1}}
    ]
    assert results["test_good"]["models"]["teacher"]["name"] == "teacher"
    assert results["test_good"]["fingerprint"]["ablation"] == "mean"
    assert document["environment"]["devices"] == ["cpu"]


@pytest.mark.slow
def test_xdist_run_prints_and_writes_what_a_serial_run_does(
    serial: pytest.RunResult, suite: Path, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(fakegates=FAKE_GATES, test_fake=FAKE_TESTS)
    parallel = pytester.runpytest_subprocess("-n", "2", "--circuits-json=out-n2.json")
    parallel.assert_outcomes(passed=2, failed=1, xfailed=1)
    table = [line for line in summary_section(serial.outlines) if "wrote" not in line]
    assert [line for line in summary_section(parallel.outlines) if "wrote" not in line] == table
    one, two = load_json(suite / "out.json"), load_json(pytester.path / "out-n2.json")
    del one["created"], two["created"]
    assert one == two


# ----------------------------------------------------------------------------- adapted tasks

#: What a built-in task built for a BPE tokenizer says about itself (``TaskAdaptation.summary``).
ADAPTED = "adapted to tokenizer 'tok': numbers 1..9 (not 1..12; left out: ten, eleven, twelve)"

ADAPTED_TESTS = f'''
import fakegates


def test_adapted():
    fakegates.aligned(0.9, task_adaptation={ADAPTED!r})


def test_adapted_again():  # the same task and change: said once
    fakegates.aligned(0.95, subject="teacher -> other", task_adaptation={ADAPTED!r})


def test_paper_prompts():
    fakegates.robust(10.0)
'''


def _record(task: str, note: str | None) -> Any:
    from pytest_circuits.output import GateRecord
    from pytest_circuits.recording import GateResult

    fingerprint = {"task_adaptation": note} if note else {}
    return GateRecord(GateResult(gate="circuit_aligned", subject="t -> s", task=task, checks=[],
                                 fingerprint=fingerprint), index=0)


def test_the_summary_names_each_adapted_task_once() -> None:
    from pytest_circuits.output import adaptation_lines

    records = [_record("numerals", ADAPTED), _record("numerals", ADAPTED),
               _record("ioi", None), _record("numwords", "adapted to tokenizer 'tok': x")]
    assert adaptation_lines(records) == [
        f"circuits: task 'numerals' was {ADAPTED}",
        "circuits: task 'numwords' was adapted to tokenizer 'tok': x",
    ]
    assert adaptation_lines([_record("ioi", None)]) == []


def test_the_terminal_summary_prints_the_adaptation_under_the_table(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(fakegates=FAKE_GATES, test_adapted=ADAPTED_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    section = summary_section(result.outlines)
    assert section[-1] == f"circuits: task 'numerals' was {ADAPTED}"
    assert sum("adapted to tokenizer" in line for line in section) == 1


@pytest.mark.slow
def test_a_gate_on_an_adapted_task_says_so_in_its_headline_and_result() -> None:
    import dataclasses

    from pytest_circuits import kinds
    from pytest_circuits.errors import CircuitAssertionError
    from pytest_circuits.models import load_pair
    from pytest_circuits.recording import GateResult, recording
    from pytest_circuits.tasks import builtin_task
    from pytest_circuits.tasks.task import TaskAdaptation

    adaptation = TaskAdaptation(tokenizer="tok", kind="causal",
                                changes=("numbers 1..9 (not 1..12; left out: ten, eleven, "
                                         "twelve)",))
    assert adaptation.summary() == ADAPTED
    task = dataclasses.replace(builtin_task("numerals", n_prompts=8), adaptation=adaptation)
    pair = load_pair("zoo:tiny-teacher", "zoo:tiny-student")
    seen: list[GateResult] = []
    with recording(seen.append):
        kinds.assert_behavior_preserved(pair, task, min_retained=0)
        with pytest.raises(CircuitAssertionError) as caught:
            kinds.assert_behavior_preserved(pair, task, min_retained=1000)
    headline = str(caught.value).splitlines()[:2]
    assert headline == [
        "behaviour of zoo:tiny-teacher -> zoo:tiny-student on task 'numerals'",
        f"  task 'numerals' {ADAPTED}",
    ]
    assert [r.fingerprint["task_adaptation"] for r in seen] == [ADAPTED, ADAPTED]
    plain = builtin_task("numerals", n_prompts=8)  # the paper's prompts: nothing to say
    with recording(seen.append):
        kinds.assert_behavior_preserved(pair, plain, min_retained=0)
    assert "task_adaptation" not in seen[-1].fingerprint
