"""End to end on the bundled zoo: fixtures, real gates in Python and YAML, the JSON file, the
analysis cache and a baseline of real results. One run with 8 prompts: importing torch and
TransformerLens alone costs a new process about ten seconds, so the suite shares it (xdist
merging is covered with fake gates in test_plugin_reports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_json, shared_run, summary_row

#: Every test here reads one pytest subprocess that loads the zoo's models (over 10 s).
pytestmark = pytest.mark.slow

#: Between the zoo's good student and its brittle one on numerals with 8 prompts (seed 0): the
#: good one's worst head costs about 87 points, the brittle one's 100 (one head carries the
#: task). Both lean on MLP0, so the gates look at heads. Retraining the zoo may move these.
MAX_SINGLE_DROP = 95.0
#: On 8 IOI prompts with unseen objects the good student keeps about 8 points less of its logit
#: difference than the teacher, the brittle one about 115 (it flips two of the eight).
MAX_SHIFT_GAP = 30.0

SUITE = f'''
import json
import pathlib

import pytest

from pytest_circuits import assert_ablation_robust, assert_circuit_aligned


def test_aligned(circuit_pair, circuit_task):
    report = assert_circuit_aligned(circuit_pair, circuit_task, min_score=0.0)
    pathlib.Path("alignment.json").write_text(json.dumps(report.alignment.score))


@pytest.mark.circuits(student="zoo:tiny-student-brittle")
def test_brittle_student(circuit_pair, circuit_task):
    assert_ablation_robust(circuit_pair, circuit_task, max_single_drop={MAX_SINGLE_DROP},
                           components="heads")
'''

GATES = f'''\
pairs:
  good: {{teacher: "zoo:tiny-teacher", student: "zoo:tiny-student"}}
  brittle: {{teacher: "zoo:tiny-teacher", student: "zoo:tiny-student-brittle"}}
models:
  teacher: "zoo:tiny-teacher"
defaults: {{n_prompts: 8}}
gates:
  - name: good-robust
    pair: good
    task: numerals
    ablation_robust: {{max_single_drop: {MAX_SINGLE_DROP}, components: heads}}
  - name: brittle-robust
    pair: brittle
    task: numerals
    ablation_robust: {{max_single_drop: {MAX_SINGLE_DROP}, components: heads}}
    xfail: "one head carries the task"
  - name: brittle-blocked
    pair: brittle
    task: numerals
    ablation_robust: {{max_single_drop: {MAX_SINGLE_DROP}, components: heads}}
  - name: good-shift
    pair: good
    task: ioi
    shift_robust: {{shift: objects, max_gap: {MAX_SHIFT_GAP}, max_accuracy_gap: 0.2,
                   max_examples: 5}}
  - name: brittle-shift
    pair: brittle
    task: ioi
    shift_robust: {{shift: objects, max_gap: {MAX_SHIFT_GAP}, max_examples: 5}}
    xfail: "breaks on objects it was not distilled on"
  - name: teacher-parity
    model: teacher
    task: numerals
    bridge_parity: {{rtol: 0.0001}}
'''

OPTIONS = ("--circuits-teacher=zoo:tiny-teacher", "--circuits-student=zoo:tiny-student",
           "--circuits-n-prompts=8", "--circuits-device=cpu", "--circuits-cache-dir=cache",
           "--circuits-baseline=baseline.json")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pytest.RunResult]:
    """One run of the suite that also records the baseline."""
    return shared_run(tmp_path_factory, "zoo-suite",
                      {"test_zoo.py": SUITE, "circuits.yaml": GATES},
                      *OPTIONS, "--circuits-update-baseline", "--circuits-json=out.json")


@pytest.fixture(scope="module")
def suite(shared: tuple[Path, pytest.RunResult]) -> Path:
    return shared[0]


@pytest.fixture(scope="module")
def serial(shared: tuple[Path, pytest.RunResult]) -> pytest.RunResult:
    shared[1].assert_outcomes(passed=4, failed=2, xfailed=2)
    return shared[1]


def test_the_json_holds_the_score_the_report_returned(serial: pytest.RunResult, suite: Path
                                                      ) -> None:
    results = {r["nodeid"]: r for r in load_json(suite / "out.json")["results"]}
    aligned = results["test_zoo.py::test_aligned"]
    assert aligned["values"]["alignment"] == json.loads((suite / "alignment.json").read_text())
    assert aligned["subject"] == "zoo:tiny-teacher -> zoo:tiny-student"
    assert aligned["report"]["alignment"]["score"] == aligned["values"]["alignment"]
    assert aligned["fingerprint"]["n_prompts"] == 8
    assert aligned["models"]["student"]["name"] == "zoo:tiny-student"
    brittle = results["test_zoo.py::test_brittle_student"]
    assert brittle["verdict"] == "FAIL"
    assert brittle["values"]["max_single_drop"] > MAX_SINGLE_DROP
    good = results["circuits.yaml::good-robust"]
    assert good["verdict"] == "PASS"
    assert good["values"]["max_single_drop"] <= MAX_SINGLE_DROP
    assert results["circuits.yaml::brittle-robust"]["verdict"] == "XFAIL"


def test_yaml_shift_and_parity_gates_run_on_the_zoo(serial: pytest.RunResult, suite: Path
                                                    ) -> None:
    results = {r["nodeid"]: r for r in load_json(suite / "out.json")["results"]}
    good = results["circuits.yaml::good-shift"]
    assert (good["gate"], good["task"], good["verdict"]) == ("shift_robust", "ioi-objects",
                                                            "PASS")
    assert good["values"]["shift_gap"] <= MAX_SHIFT_GAP
    assert good["fingerprint"]["n_prompts"] == 8  # the file's defaults reached the shift
    brittle = results["circuits.yaml::brittle-shift"]
    assert brittle["verdict"] == "XFAIL" and brittle["values"]["shift_gap"] > MAX_SHIFT_GAP
    assert "smallest such prompt (Hypothesis, shrunk)" in brittle["message"]
    parity = results["circuits.yaml::teacher-parity"]
    assert (parity["gate"], parity["subject"], parity["verdict"]) == (
        "bridge_parity", "zoo:tiny-teacher", "PASS")
    assert 0 <= parity["values"]["bridge_rel_diff"] < 1e-4
    assert parity["checks"][0]["threshold"] == 1e-4


def test_the_summary_fails_the_brittle_student(serial: pytest.RunResult) -> None:
    row = summary_row(serial.outlines, "test_brittle_student")
    assert "zoo:tiny-student-brittle" in row and f"<= {MAX_SINGLE_DROP:g}" in row
    assert row.split()[-2:] == ["updated", "FAIL"]
    assert summary_row(serial.outlines, "brittle-robust").split()[-1] == "XFAIL"
    assert summary_row(serial.outlines, "good-robust").split()[-1] == "PASS"


def test_a_failing_yaml_gate_shows_its_table_without_a_traceback(serial: pytest.RunResult
                                                                 ) -> None:
    text = "\n".join(serial.outlines)
    section = text.split("ablation_robust gate brittle-blocked")[1].split("\n___")[0]
    assert "circuits.yaml:17: gate 'brittle-blocked' failed" in section
    assert "ablation robustness of zoo:tiny-student-brittle on task 'numerals'" in section
    assert "max_single_drop" in section and "components to blame" in section
    assert "Traceback" not in section and "assertions.py" not in section


def test_analyses_are_cached_in_the_configured_directory(serial: pytest.RunResult, suite: Path
                                                         ) -> None:
    assert list((suite / "cache").glob("pair-*.json"))
    assert list((suite / "cache").glob("sweep-*.json"))


def test_the_baseline_records_each_real_result(serial: pytest.RunResult, suite: Path) -> None:
    entries = load_json(suite / "baseline.json")["entries"]
    results = {r["key"]: r for r in load_json(suite / "out.json")["results"]}
    assert sorted(entries) == sorted(results) == [
        "ablation_robust::zoo:tiny-student [heads]::numerals",
        "ablation_robust::zoo:tiny-student-brittle [heads]::numerals",
        "bridge_parity::zoo:tiny-teacher::numerals",
        "circuit_aligned::zoo:tiny-teacher -> zoo:tiny-student::numerals",
        "shift_robust::zoo:tiny-teacher -> zoo:tiny-student-brittle::ioi-objects",
        "shift_robust::zoo:tiny-teacher -> zoo:tiny-student::ioi-objects",
    ]
    for key, entry in entries.items():
        assert entry["values"] == results[key]["values"]
        assert entry["fingerprint"]["ablation"] in ("mean", "none")
        assert entry["fingerprint"]["n_prompts"] == 8
