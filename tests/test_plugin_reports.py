"""What a run reports: the terminal summary, JUnit properties, the JSON file, and xdist merging."""

from __future__ import annotations

from pathlib import Path

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
