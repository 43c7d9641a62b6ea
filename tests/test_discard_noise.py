"""A discarded mechanism is decided above the sweeps' own noise: each exact sweep keeps the
standard error of every drop over its prompts, and a teacher component whose counterpart is dead
is discarded only when its influence clears the dead floor by two combined standard errors, never
because both sit near the floor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_circuits.analysis import compare, sweep
from pytest_circuits.analysis.ablation import ablation_stderr
from pytest_circuits.analysis.comparison import CompareSettings, MatchedPair, find_discarded
from pytest_circuits.config.options import DISCARD_Z
from pytest_circuits.models import load_model, load_pair
from pytest_circuits.results.sweep import ComponentEffect
from pytest_circuits.tasks import Task, builtin_task

SETTINGS = CompareSettings(influential=10.0, weak_similarity=0.5, min_student_influence=2.0)


def _pair(teacher: str, student: str, t_infl: float, s_infl: float, similarity: float = 0.9,
          candidates: tuple[str, ...] = ()) -> MatchedPair:
    return MatchedPair(teacher, student, "mlp" if teacher.startswith("MLP") else "head",
                       similarity, t_infl, s_infl, 0.0, 0.0, candidates)


# --------------------------------------------------------------------------- the standard error


def test_the_standard_error_of_a_ratio_of_means_by_hand():
    # r = mean(ablated) / mean(clean) = 2 / 3; residuals a - r c = (-1/3, 1/3), sd = sqrt(2) / 3
    se = ablation_stderr([2.0, 4.0], [1.0, 3.0])
    assert se == pytest.approx(100 * (math.sqrt(2) / 3) / (math.sqrt(2) * 3))  # 11.11 points
    assert ablation_stderr([2.0, 4.0], [1.0, 2.0]) == 0.0  # every prompt keeps the same share
    assert ablation_stderr([3.0], [1.0]) is None  # one prompt: nothing to estimate from
    with pytest.raises(ValueError, match="same prompts"):
        ablation_stderr([1.0, 2.0], [1.0])


def test_the_standard_error_matches_a_bootstrap_over_prompts():
    rng = np.random.default_rng(0)
    clean = rng.normal(5.0, 1.0, 40)
    ablated = clean * 0.8 + rng.normal(0.0, 0.6, 40)
    drops = []
    for _ in range(4000):
        i = rng.integers(0, 40, 40)
        drops.append(100 * (1 - ablated[i].mean() / clean[i].mean()))
    assert ablation_stderr(clean, ablated) == pytest.approx(np.std(drops), rel=0.1)


def test_an_exact_sweep_keeps_each_drops_standard_error_over_its_prompts():
    """The stored standard error is the one computed from each prompt measured alone."""
    model = load_model("zoo:tiny-teacher")
    task = builtin_task("numerals", n_prompts=6, seed=7)
    names = ["L1H2", "MLP0"]
    result = sweep(model, task, components=names, ablation="zero", method="exact")
    clean = result.performance.per_prompt
    for name in names:
        alone = [
            sweep(model, Task(name=f"prompt-{i}", prompts=(task.prompts[i],),
                              correct=(task.correct[i],), distractors=(task.distractors[i],),
                              corrupted=task.corrupted),
                  components=[name], ablation="zero", method="exact").effect(name)
            for i in range(len(task.prompts))
        ]
        assert all(a.stderr is None for a in alone)  # one prompt each
        expected = ablation_stderr(clean, [a.ablated_metric for a in alone])
        assert expected is not None and expected > 0.1
        assert result.effect(name).stderr == pytest.approx(expected, rel=1e-4)


def test_a_stderr_round_trips_and_an_old_record_without_one_reads_as_none():
    effect = ComponentEffect("MLP6", "mlp", 6, None, 1.0, 80.0, 20.0, 20.0, stderr=1.25)
    assert ComponentEffect.from_dict(effect.to_dict()) == effect
    old = {k: v for k, v in effect.to_dict().items() if k != "stderr"}
    assert ComponentEffect.from_dict(old).stderr is None


# --------------------------------------------------------------------------- the rule


def test_two_components_near_the_floor_are_noise_not_a_discarded_mechanism():
    """The 8-bit SmolLM2 copy's MLP6: 2.27 points in the teacher, 1.89 in the copy."""
    pairs = [_pair("MLP6", "MLP6", 2.27, 1.89)]
    # without standard errors the floor alone decides, as it did: "discarded"
    assert [d.teacher for d in find_discarded(pairs, {"MLP6": 2.27}, SETTINGS)] == ["MLP6"]
    found = find_discarded(pairs, {"MLP6": 2.27}, SETTINGS,
                           teacher_stderr={"MLP6": 0.8}, student_stderr={"MLP6": 0.7})
    assert found == []


def test_a_dead_counterpart_is_a_discard_only_when_the_teacher_clears_the_floor_by_the_noise():
    t_se, s_se = {"L0H0": 0.2, "L0H1": 0.2}, {"L0H3": 0.05}
    margin = DISCARD_Z * math.hypot(0.2, 0.05)  # 0.41 points above the 2-point floor
    pairs = [_pair("L0H0", "L0H3", 2.0 + margin + 0.01, 0.1),  # clears it: discarded
             _pair("L0H1", "L0H3", 2.0 + margin - 0.01, 0.1)]  # within the noise: kept
    influence = {p.teacher: p.teacher_influence for p in pairs}
    found = find_discarded(pairs, influence, SETTINGS, teacher_stderr=t_se, student_stderr=s_se)
    assert [(d.teacher, d.student) for d in found] == [("L0H0", "L0H3")]
    assert found[0].reason.startswith("matched onto a dead component: L0H3 costs only 0.1")
    assert "L0H0 costs 2.4 ± 0.2 and L0H3 0.1 ± 0.1 points" in found[0].reason


def test_a_large_drop_onto_a_noisy_near_dead_counterpart_is_still_discarded():
    # 30 points lost: the student's 1.9 is not "clearly dead", but the loss is far above noise
    pairs = [_pair("L5H1", "L5H1", 30.0, 1.9)]
    found = find_discarded(pairs, {"L5H1": 30.0}, SETTINGS,
                           teacher_stderr={"L5H1": 3.0}, student_stderr={"L5H1": 1.5})
    assert [d.teacher for d in found] == ["L5H1"]


def test_a_tie_whose_most_similar_candidate_is_dead_follows_the_same_noise_rule():
    def tie(influence: float) -> list[MatchedPair]:
        # the tie went to the live L2H4 by effect; the most similar candidate L2H3 is dead
        return [_pair("L2H3", "L2H4", influence, 20.0, candidates=("L2H3", "L2H4"))]

    s_infl = {"L2H3": 0.0, "L2H4": 20.0}
    t_se, s_se = {"L2H3": 1.0}, {"L2H3": 0.0}
    quiet = find_discarded(tie(2.5), {"L2H3": 2.5}, SETTINGS, s_infl,
                           teacher_stderr=t_se, student_stderr=s_se)
    assert quiet == []  # 0.5 above the floor with a standard error of 1: noise
    loud = find_discarded(tie(45.0), {"L2H3": 45.0}, SETTINGS, s_infl,
                          teacher_stderr=t_se, student_stderr=s_se)
    assert [(d.teacher, d.student) for d in loud] == [("L2H3", "L2H3")]
    assert loud[0].reason.startswith("its most similar counterpart L2H3 is dead")


def test_a_weak_match_of_an_influential_component_is_discarded_whatever_the_noise():
    pairs = [_pair("L0H3", "L0H1", 40.0, 12.0, similarity=0.3)]
    found = find_discarded(pairs, {"L0H3": 40.0}, SETTINGS,
                           teacher_stderr={"L0H3": 5.0}, student_stderr={"L0H1": 5.0})
    assert [d.reason for d in found] == ["best match L0H1 has similarity 0.30 < 0.5"]


# --------------------------------------------------------------------------- on the zoo


@pytest.mark.parametrize("preset", ["paper", "recommended"])
def test_the_brittle_students_pruned_heads_stay_discarded(preset):
    pair = load_pair("zoo:tiny-teacher", "zoo:tiny-student-brittle")
    report = compare(pair, builtin_task("numerals", n_prompts=12, seed=7), preset=preset)
    lost = {d.teacher: d for d in report.discarded}
    assert {"L0H0", "L0H1"} <= set(lost)
    for name in ("L0H0", "L0H1"):
        teacher = report.teacher.sweep.effect(name)
        assert teacher.stderr is not None and teacher.stderr > 0
        # 62.3 +- 13.7 and 27.3 +- 6.7 points: both clear the floor by more than the noise
        assert teacher.influence - 2.0 > DISCARD_Z * teacher.stderr
        reason = lost[name].reason
        assert "standard errors over prompts" in reason if "dead" in reason else (
            reason.startswith("best match"))
