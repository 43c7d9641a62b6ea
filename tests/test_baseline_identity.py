"""Baselines compare only what is comparable: every setting that changes a value is part of an
entry's identity, an entry must hold every metric the gate checks, and a stored value its unit
cannot take is refused like any other damaged entry."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import FINGERPRINT

from pytest_circuits import metrics
from pytest_circuits.baseline import Baseline, BaselineFileError
from pytest_circuits.recording import GateResult, MetricCheck

KEY = "ablation_robust::student::numerals"
DROPS = [80.0, 45.0, 30.0, 5.0, 0.0, 0.0]


def robust(tolerance: float = 20.0, report: Any = "typed") -> GateResult:
    """What ``assert_ablation_robust`` records: values at severity tolerance ``tolerance``."""
    summary = metrics.brittleness_summary([f"L0H{i}" for i in range(len(DROPS))], DROPS,
                                          tolerance=tolerance, n_resamples=200)
    if report == "typed":
        report = SimpleNamespace(brittleness=summary)  # a ModelReport's part that matters
    elif report == "plain":
        report = {"brittleness": summary.to_dict()}  # a report stored untyped
    return GateResult(
        gate="ablation_robust", subject="student", task="numerals",
        checks=[MetricCheck("max_single_drop", summary.worst_drop, 90.0, "<=")],
        values={"severity": summary.severity, "max_single_drop": summary.worst_drop,
                "count_above_tolerance": float(summary.count_above_tolerance)},
        fingerprint={**FINGERPRINT, "analysis": "sweep", "similarity": "", "matching": ""},
        report=report, nodeid="t.py::test_robust",
    )


def test_the_severity_tolerance_changes_the_values_it_is_recorded_with() -> None:
    at_20, at_60 = robust(20.0), robust(60.0)
    assert at_20.values["severity"] > at_60.values["severity"]  # so it must be comparable


@pytest.mark.parametrize("report", ["typed", "plain"])
def test_an_entry_recorded_at_another_severity_tolerance_is_refused(report: str) -> None:
    baseline = Baseline(Path("b.json")).updated([robust(60.0, report)])
    assert baseline.entries[KEY]["settings"]["severity_tolerance"] == 60.0
    check = baseline.check(robust(20.0, report))
    assert check.status == "refused" and check.failed
    assert "severity_tolerance: baseline 60.0, this run 20.0" in check.message
    assert "--circuits-update-baseline" in check.message
    assert baseline.check(robust(60.0, report)).status == "ok"


def test_the_recorded_settings_survive_the_file(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps(Baseline(path).updated([robust(60.0)]).to_dict()))
    loaded = Baseline.load(path)
    assert loaded.entries[KEY]["settings"] == {"severity_tolerance": 60.0,
                                               "severity_limit": 100.0, "severity_alpha": 1.0}
    assert loaded.check(robust(20.0)).status == "refused"


def test_an_entry_written_before_settings_were_recorded_reads_as_the_default_then() -> None:
    entry = Baseline(Path("b.json")).updated([robust(20.0)]).entries[KEY]
    del entry["settings"]
    legacy = Baseline(Path("b.json"), {KEY: entry})
    assert legacy.check(robust(20.0)).status == "ok"
    check = legacy.check(robust(60.0))
    assert check.status == "refused"
    assert ("severity_tolerance: baseline 20.0 (not recorded: the default then), this run 60.0"
            in check.message)


def test_a_result_without_a_report_compares_as_before() -> None:
    entry = Baseline(Path("b.json")).updated([robust(60.0)]).entries[KEY]
    assert Baseline(Path("b.json"), {KEY: entry}).check(robust(60.0, report=None)).status == "ok"


@pytest.mark.parametrize("values", [{"n_components": 10.0}, {"severity": 0.1}])
def test_an_entry_without_the_checked_metric_is_refused_not_passed(values: dict[str, float]
                                                                   ) -> None:
    entry = {**Baseline(Path("b.json")).updated([robust()]).entries[KEY], "values": values}
    check = Baseline(Path("b.json"), {KEY: entry}).check(robust())
    assert check.status == "refused"
    assert "holds no value for max_single_drop, which this gate checks" in check.message
    assert f"it holds {', '.join(sorted(values))}" in check.message


def _stored(tmp_path: Path, key: str, values: dict[str, float]) -> Path:
    entry = {"values": values, "fingerprint": dict(FINGERPRINT), "nodeid": "t.py::test"}
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"format": "pytest-circuits-baseline", "version": 1,
                                "entries": {key: entry}}))
    return path


@pytest.mark.parametrize(
    ("key", "values", "problem"),
    [
        (KEY, {"severity": 5.0}, "severity: 5.0 is outside [0, 1]"),
        (KEY, {"max_single_drop": 1e308}, "max_single_drop: 1e+308 is outside [0, 100]"),
        (KEY, {"mean_drop": -3.0}, "mean_drop: -3.0 is outside [0, 100]"),
        (KEY, {"count_above_tolerance": 2.5}, "count_above_tolerance: 2.5 is not a whole"),
        (KEY, {"severity_increase": 1.5}, "severity_increase: 1.5 is outside [-1, 1]"),
        ("circuit_aligned::a -> b::numerals", {"alignment": 1.5},
         "alignment: 1.5 is outside [-1, 1]"),
        ("behavior_preserved::a -> b::numerals", {"behavior_retained": -1e300},
         "behavior_retained: -1e+300 is outside"),
        ("shift_robust::a -> b::numerals", {"accuracy_gap": 2.0},
         "accuracy_gap: 2.0 is outside [-1, 1]"),
    ],
)
def test_a_value_its_unit_cannot_take_is_refused_as_a_baseline(
        tmp_path: Path, key: str, values: dict[str, float], problem: str) -> None:
    path = _stored(tmp_path, key, values)
    with pytest.raises(BaselineFileError) as raised:
        Baseline.load(path)
    message = str(raised.value)
    assert f"baseline {path}: entry {key!r}" in message
    assert problem in message and "re-record it with --circuits-update-baseline" in message


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ("circuit_aligned::a -> b::numerals",  # negative similarities give a negative A
         {"alignment": -0.2, "weighted_alignment": -0.1, "mean_similarity": 1 + 2e-16}),
        ("mechanism_preserved::a -> b::numerals", {"L0H1.student_influence": 456.0}),
        ("shift_robust::a -> b::numerals", {"shift_gap": -130.0, "accuracy_gap": -0.5}),
        ("behavior_preserved::a -> b::numerals", {"behavior_retained": 412.0}),
        (KEY, {"severity": 0.0, "max_single_drop": 100.0, "n_components": 156.0}),
    ],
)
def test_values_a_gate_can_measure_stay_a_baseline(tmp_path: Path, key: str,
                                                   values: dict[str, float]) -> None:
    assert Baseline.load(_stored(tmp_path, key, values)).entries[key]["values"] == values


def test_a_setting_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    data = Baseline(path).updated([robust(20.0)]).to_dict()
    data["entries"][KEY]["settings"]["severity_tolerance"] = float("nan")
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineFileError, match="setting severity_tolerance: nan"):
        Baseline.load(path)
