"""The release gate for two distilled candidates of the bundled tiny teacher.

`zoo:tiny-student` is an ordinary distillation and ships. `zoo:tiny-student-brittle` was
head-pruned to one head per layer before distillation: it still answers (its outputs pass the
behaviour gate), but its mechanism no longer resembles the teacher's and single heads carry the
task, so the circuit and robustness gates block it. Those blocks are strict expected failures:
this file passes only while the gates keep blocking the brittle candidate.
"""

import pytest

from pytest_circuits import (
    CircuitAssertionError,
    assert_ablation_robust,
    assert_behavior_preserved,
    assert_circuit_aligned,
)

GOOD = pytest.mark.circuits(student="zoo:tiny-student")
BRITTLE = pytest.mark.circuits(student="zoo:tiny-student-brittle")
BLOCKED = pytest.mark.xfail(
    strict=True, raises=CircuitAssertionError, reason="brittle release candidate must be blocked"
)

# The release policy, in one place.
MIN_RETAINED = 80.0  # student logit difference, % of the teacher's
MIN_ALIGNMENT = 0.65  # the paper's alignment score A
MAX_SEVERITY = 0.25  # share of how far single-component drops exceed 20 points
MAX_HEAD_DROP = 95.0  # no single head may cost more than this share of the metric


def gate_robustness(pair, task):
    assert_ablation_robust(pair, task, max_severity=MAX_SEVERITY)
    assert_ablation_robust(pair, task, components="heads", max_single_drop=MAX_HEAD_DROP)


@GOOD
def test_good_candidate_still_does_the_task(circuit_pair, circuit_task):
    assert_behavior_preserved(circuit_pair, circuit_task, min_retained=MIN_RETAINED)


@GOOD
def test_good_candidate_keeps_the_teachers_circuit(circuit_pair, circuit_task):
    assert_circuit_aligned(circuit_pair, circuit_task, min_score=MIN_ALIGNMENT)


@GOOD
def test_good_candidate_has_no_single_point_of_failure(circuit_pair, circuit_task):
    gate_robustness(circuit_pair, circuit_task)


@BRITTLE
def test_brittle_candidate_still_does_the_task(circuit_pair, circuit_task):
    assert_behavior_preserved(circuit_pair, circuit_task, min_retained=MIN_RETAINED)


@BRITTLE
@BLOCKED
def test_brittle_candidate_keeps_the_teachers_circuit(circuit_pair, circuit_task):
    assert_circuit_aligned(circuit_pair, circuit_task, min_score=MIN_ALIGNMENT)


@BRITTLE
@BLOCKED
def test_brittle_candidate_has_no_single_point_of_failure(circuit_pair, circuit_task):
    gate_robustness(circuit_pair, circuit_task)
