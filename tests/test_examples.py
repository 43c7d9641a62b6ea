"""The example release gate (the README's first command) keeps its verdicts: the good
candidate passes every gate and the brittle one is blocked by the circuit and robustness gates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
def test_example_gate_passes_the_good_candidate_and_blocks_the_brittle_one(tmp_path: Path):
    results = tmp_path / "gate-results.json"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(EXAMPLES), "-p", "no:cacheprovider",
         "--circuits-no-cache", f"--circuits-json={results}", "-q"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "7 passed, 5 xfailed" in run.stdout
    document = json.loads(results.read_text())
    by_test = {}
    for result in document["results"]:
        for check in result["checks"]:
            by_test[(result["nodeid"].split("::")[-1], check["metric"])] = check["value"]
    brittle_alignment = by_test[("test_brittle_candidate_keeps_the_teachers_circuit", "alignment")]
    good_alignment = by_test[("test_good_candidate_keeps_the_teachers_circuit", "alignment")]
    assert brittle_alignment < 0.65 <= good_alignment
    worst_brittle_head = by_test[
        ("test_brittle_candidate_has_no_single_point_of_failure", "max_single_drop")
    ]
    assert worst_brittle_head > 95
    # the circuit gate: the brittle student's worst node is more critical, beyond the 10 points
    good_drop = by_test[("ioi-circuit", "node_drop_increase")]
    brittle_drop = by_test[("ioi-brittle-circuit", "node_drop_increase")]
    assert good_drop <= 10 < brittle_drop
    assert by_test[("ioi-circuit", "faithfulness")] >= 0.8
    assert len(document["results"]) == 14
