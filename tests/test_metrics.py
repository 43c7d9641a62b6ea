"""Tests of the metric formulas: hand computations, the paper's figures and properties."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_circuits.metrics import (
    AlignmentParts,
    BrittlenessDelta,
    BrittlenessSummary,
    alignment_parts,
    alignment_score,
    bootstrap_ci,
    brittleness_delta,
    brittleness_summary,
    compression_ratio,
    count_above,
    drops_from_retained,
    gini,
    influence,
    retained,
    severity_score,
    weighted_alignment_score,
    worst_share_mean,
)

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)

Pairs = tuple[list[float], list[float], list[float]]

similarities = st.floats(min_value=0.0, max_value=1.0)
influences = st.floats(min_value=0.0, max_value=500.0)
positive_influences = st.floats(min_value=0.01, max_value=500.0)


@st.composite
def matched_pairs(draw: st.DrawFn) -> Pairs:
    """N matched pairs: similarities in [0, 1], influences >= 0 with a nonzero sum on each side."""
    n = draw(st.integers(min_value=1, max_value=30))
    similarity = draw(st.lists(similarities, min_size=n, max_size=n))
    teacher = draw(st.lists(influences, min_size=n - 1, max_size=n - 1))
    student = draw(st.lists(influences, min_size=n - 1, max_size=n - 1))
    # One strictly positive value per side keeps the shares defined.
    teacher.insert(draw(st.integers(0, n - 1)), draw(positive_influences))
    student.insert(draw(st.integers(0, n - 1)), draw(positive_influences))
    return similarity, teacher, student


# --------------------------------------------------------------------------- ablation percentages


def test_retained_is_percent_of_clean_with_scalar_clean_broadcast() -> None:
    result = retained(2.0, [2.0, 1.0, 0.0, -1.0, 3.0])
    np.testing.assert_allclose(result, [100.0, 50.0, 0.0, -50.0, 150.0])


def test_retained_of_scalars_is_a_plain_float() -> None:
    result = retained(4.0, 1.0)
    assert type(result) is float
    assert result == 25.0


def test_retained_elementwise_arrays() -> None:
    np.testing.assert_allclose(retained([1.0, 4.0], [0.5, 5.0]), [50.0, 125.0])


def test_influence_is_absolute_percent_change() -> None:
    np.testing.assert_allclose(
        influence(2.0, [2.0, 1.0, 0.0, -1.0, 3.0]), [0.0, 50.0, 100.0, 150.0, 50.0]
    )


def test_drops_clamp_retained_to_0_100() -> None:
    np.testing.assert_allclose(
        drops_from_retained([100.0, 53.0, 0.0, -50.0, 150.0]), [0.0, 47.0, 100.0, 100.0, 0.0]
    )


def test_mlp_retaining_556_percent_drops_0_but_has_influence_456() -> None:
    # The paper: with DistilGPT-2 on IOI (which it fails) one MLP "retains 556%".
    clean, ablated = 0.25, 1.39
    assert retained(clean, ablated) == pytest.approx(556.0)
    assert drops_from_retained(retained(clean, ablated)) == 0.0
    assert influence(clean, ablated) == pytest.approx(456.0)


@pytest.mark.parametrize("function", [retained, influence])
def test_zero_clean_metric_is_refused(function: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="clean metric is 0"):
        function(0.0, [1.0, 2.0])
    with pytest.raises(ValueError, match="clean metric is 0"):
        function([1.0, 0.0], [1.0, 2.0])


def test_tiny_clean_metric_that_overflows_is_refused_not_inf() -> None:
    with pytest.raises(ValueError, match="too close to 0"):
        retained(1e-308, 1e10)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_ablation_inputs_are_refused_by_name(bad: float) -> None:
    with pytest.raises(ValueError, match=r"ablated contains a non-finite value .* at index 1"):
        retained(1.0, [0.5, bad])
    with pytest.raises(ValueError, match="clean contains a non-finite value"):
        influence(bad, 1.0)
    with pytest.raises(ValueError, match="retained contains a non-finite value"):
        drops_from_retained([bad])


def test_non_numeric_input_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="ablated must be numeric"):
        retained(1.0, ["a lot"])


def test_unbroadcastable_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot be broadcast"):
        retained([1.0, 2.0], [1.0, 2.0, 3.0])


# --------------------------------------------------------------------------- alignment


def test_identical_influence_shares_give_mean_similarity_exactly() -> None:
    similarity = [0.9, 0.7, 0.95]
    # Proportional influences: the shares are equal, the influence term vanishes.
    parts = alignment_parts(similarity, [10.0, 30.0, 60.0], [1.0, 3.0, 6.0])
    assert parts.score == pytest.approx(np.mean(similarity), abs=1e-15)
    assert parts.mean_similarity == pytest.approx(0.85, abs=1e-15)
    assert parts.influence_term == pytest.approx(0.0, abs=1e-15)


def test_alignment_two_pairs_by_hand() -> None:
    # Î_T = [0.75, 0.25], Î_S = [0.5, 0.5], |diff| = 0.25 on both pairs.
    # A = (0.9 * 0.75 + 0.8 * 0.75) / 2 = 0.6375; A_w = 0.9 * 0.5 + 0.8 * 0.25 = 0.65.
    similarity, teacher, student = [0.9, 0.8], [30.0, 10.0], [10.0, 10.0]
    assert alignment_score(similarity, teacher, student) == pytest.approx(0.6375, abs=1e-12)
    assert weighted_alignment_score(similarity, teacher, student) == pytest.approx(0.65, abs=1e-12)


def test_alignment_three_pairs_by_hand() -> None:
    # Î_T = [0.5, 0.25, 0.25], Î_S = [0.25, 0.25, 0.5], |diff| = [0.25, 0, 0.25].
    # A = (1 * 0.75 + 0.5 * 1 + 0.8 * 0.75) / 3 = 1.85 / 3; A_w = 0.25 + 0.125 + 0.2 = 0.575.
    similarity, teacher, student = [1.0, 0.5, 0.8], [2.0, 1.0, 1.0], [1.0, 1.0, 2.0]
    parts = alignment_parts(similarity, teacher, student)
    assert parts.score == pytest.approx(1.85 / 3, abs=1e-12)
    assert parts.mean_similarity == pytest.approx(2.3 / 3, abs=1e-12)
    assert parts.influence_term == pytest.approx(-0.45 / 3, abs=1e-12)
    assert parts.weighted_score == pytest.approx(0.575, abs=1e-12)
    assert parts.n_pairs == 3
    assert parts.teacher_share == pytest.approx((0.5, 0.25, 0.25))
    assert parts.student_share == pytest.approx((0.25, 0.25, 0.5))


def test_alignment_parts_are_plain_json_data() -> None:
    parts = alignment_parts([0.9, 0.8], [30.0, 10.0], [10.0, 10.0])
    assert isinstance(parts, AlignmentParts)
    as_dict = dataclasses.asdict(parts)
    assert all(type(as_dict[key]) is float for key in ("score", "mean_similarity"))
    assert all(type(x) is float for x in parts.teacher_share + parts.student_share)
    assert json.loads(json.dumps(as_dict))["weighted_score"] == pytest.approx(0.65)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parts.score = 1.0  # type: ignore[misc]


def test_weighted_variant_makes_losing_an_influential_counterpart_cost() -> None:
    # 20 pairs, S = 0.95; the teacher's most influential component carries 30% of the influence.
    similarity = np.full(20, 0.95)
    rest = np.arange(1.0, 20.0)
    teacher = np.concatenate([[30.0], 70.0 * rest / rest.sum()])
    student = teacher.copy()
    assert alignment_score(similarity, teacher, student) == pytest.approx(0.95, abs=1e-12)
    assert weighted_alignment_score(similarity, teacher, student) == pytest.approx(0.95, abs=1e-12)

    student[0] = 0.0  # the student counterpart of that component no longer matters
    paper = alignment_score(similarity, teacher, student)
    weighted = weighted_alignment_score(similarity, teacher, student)
    # Paper: total share error 0.3 + 0.7 * (1 / 0.7 - 1) = 0.6, so A = 0.95 * (1 - 0.6 / 20).
    assert paper == pytest.approx(0.9215, abs=1e-12)
    assert 0.95 - paper < 0.03
    # Weighted: the lost pair's overlap is 0, the other 19 keep theirs (0.7): 0.95 * 0.7.
    assert weighted == pytest.approx(0.665, abs=1e-12)
    assert 0.95 - weighted > 0.2
    assert 0.95 - weighted == pytest.approx(0.95 * 0.30, abs=1e-12)


@PROPERTY_SETTINGS
@given(matched_pairs())
def test_alignment_scores_lie_in_unit_interval(pairs: Pairs) -> None:
    similarity, teacher, student = pairs
    assert 0.0 <= alignment_score(similarity, teacher, student) <= 1.0
    assert 0.0 <= weighted_alignment_score(similarity, teacher, student) <= 1.0 + 1e-12


@PROPERTY_SETTINGS
@given(matched_pairs())
def test_alignment_never_exceeds_mean_similarity(pairs: Pairs) -> None:
    parts = alignment_parts(*pairs)
    assert parts.influence_term <= 1e-15
    assert parts.score == pytest.approx(parts.mean_similarity + parts.influence_term, abs=1e-15)
    # Shares sum to 1, so the paper's influence term is at most 2 * max(S) / N.
    assert -parts.influence_term <= 2.0 * max(pairs[0]) / parts.n_pairs + 1e-12


@PROPERTY_SETTINGS
@given(matched_pairs(), st.randoms(use_true_random=False))
def test_alignment_is_invariant_to_pair_order(pairs: Pairs, rng: random.Random) -> None:
    order = list(range(len(pairs[0])))
    rng.shuffle(order)
    shuffled = [[side[i] for i in order] for side in pairs]
    assert alignment_score(*shuffled) == pytest.approx(alignment_score(*pairs), abs=1e-12)
    assert weighted_alignment_score(*shuffled) == pytest.approx(
        weighted_alignment_score(*pairs), abs=1e-12
    )


@PROPERTY_SETTINGS
@given(matched_pairs(), st.floats(min_value=1e-3, max_value=1e3), st.booleans())
def test_alignment_is_invariant_to_scaling_one_sides_influence(
    pairs: Pairs, factor: float, teacher_side: bool
) -> None:
    similarity, teacher, student = pairs
    if teacher_side:
        scaled = (similarity, [factor * x for x in teacher], student)
    else:
        scaled = (similarity, teacher, [factor * x for x in student])
    assert alignment_score(*scaled) == pytest.approx(alignment_score(*pairs), abs=1e-12)
    assert weighted_alignment_score(*scaled) == pytest.approx(
        weighted_alignment_score(*pairs), abs=1e-12
    )


@PROPERTY_SETTINGS
@given(matched_pairs())
def test_identical_models_score_one(pairs: Pairs) -> None:
    _, teacher, _ = pairs
    ones = [1.0] * len(teacher)
    assert alignment_score(ones, teacher, teacher) == 1.0
    assert weighted_alignment_score(ones, teacher, teacher) == 1.0  # exactly, not 1 - 1e-16
    if max(teacher) >= 3.0:  # otherwise every pair is below the floor, which is refused
        assert weighted_alignment_score(ones, teacher, teacher, noise_floor=3.0) == 1.0


def test_identical_influences_whose_shares_do_not_sum_to_one_still_score_exactly_one() -> None:
    influence_list = [3.0] * 7  # seven shares of 1/7 sum to 0.9999999999999998 in numpy
    assert np.sum(np.array(influence_list) / sum(influence_list)) != 1.0
    assert weighted_alignment_score([1.0] * 7, influence_list, influence_list) == 1.0


def test_noise_floor_drops_pairs_below_it_on_both_sides_by_hand() -> None:
    similarity = [1.0, 1.0, 1.0, 1.0]
    teacher = [40.0, 20.0, 1.0, 0.5]
    student = [40.0, 20.0, 0.2, 2.5]
    # floor 0: shares T (.6612, .3306, .0165, .0083), S (.6584, .3292, .0033, .0412)
    # floor 3: only the first two pairs remain, with equal shares on both sides
    assert weighted_alignment_score(similarity, teacher, student) < 0.99
    assert weighted_alignment_score(similarity, teacher, student, noise_floor=3.0) == 1.0
    # one side above the floor keeps the pair: 2.5 -> 4.0 on the student side, so the shares are
    # T (40, 20, 0.5) / 60.5 and S (40, 20, 4) / 64, and A_w = 60 / 64 + 0.5 / 60.5
    kept = weighted_alignment_score(similarity, teacher, [40.0, 20.0, 0.2, 4.0], noise_floor=3.0)
    assert kept == pytest.approx(60.0 / 64.0 + 0.5 / 60.5, abs=1e-12)


def test_a_removed_component_costs_exactly_its_share_above_the_floor() -> None:
    teacher = [30.0, 20.0, 10.0, 1.0, 1.0]
    student = [0.0, 20.0, 10.0, 1.0, 1.0]  # the first component lost, the rest in proportion
    ones = [1.0] * 5
    assert weighted_alignment_score(ones, teacher, student, noise_floor=3.0) == pytest.approx(
        1.0 - 30.0 / 60.0, abs=1e-12
    )
    parts = alignment_parts(ones, teacher, student, noise_floor=3.0)
    assert parts.weighted_score == pytest.approx(0.5, abs=1e-12)
    # the paper's score is unchanged by the floor
    assert parts.score == alignment_score(ones, teacher, student)


def test_a_noise_floor_above_every_influence_is_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="noise_floor=50.0"):
        weighted_alignment_score([1.0, 1.0], [10.0, 5.0], [10.0, 5.0], noise_floor=50.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        weighted_alignment_score([1.0], [10.0], [10.0], noise_floor=-1.0)


@PROPERTY_SETTINGS
@given(matched_pairs(), similarities)
def test_constant_similarity_ties_paper_and_weighted_scores(pairs: Pairs, c: float) -> None:
    # With S_i = c: A = c - 2 (c - A_w) / N, i.e. the paper's penalty is the weighted one / (N/2).
    _, teacher, student = pairs
    n = len(teacher)
    similarity = [c] * n
    weighted = weighted_alignment_score(similarity, teacher, student)
    expected = c - 2.0 * (c - weighted) / n
    assert alignment_score(similarity, teacher, student) == pytest.approx(expected, abs=1e-12)


@PROPERTY_SETTINGS
@given(matched_pairs())
def test_weighted_score_is_symmetric_in_teacher_and_student(pairs: Pairs) -> None:
    similarity, teacher, student = pairs
    assert weighted_alignment_score(similarity, teacher, student) == pytest.approx(
        weighted_alignment_score(similarity, student, teacher), abs=1e-12
    )


def test_similarity_rounding_just_above_one_is_clipped() -> None:
    assert alignment_score([1.0 + 1e-12], [1.0], [1.0]) == 1.0


@pytest.mark.parametrize(
    ("similarity", "teacher", "student", "message"),
    [
        ([], [], [], r"no matched pairs \(N == 0\)"),
        ([0.9, 0.8], [1.0], [1.0, 1.0], "teacher_influence has 1 values but similarity has 2"),
        ([0.9, 0.8], [1.0, 1.0], [1.0, 2.0, 3.0], "student_influence has 3 values"),
        ([0.9, 0.8], [0.0, 0.0], [1.0, 1.0], "teacher_influence is zero for every matched pair"),
        ([0.9, 0.8], [1.0, 1.0], [0.0, 0.0], "the student has no influential component"),
        ([0.9, 0.8], [1.0, -2.0], [1.0, 1.0], r"teacher_influence\[1\] is -2.0"),
        ([0.9, 1.5], [1.0, 1.0], [1.0, 1.0], r"similarity\[1\] is 1.5; .* \[-1, 1\]"),
        ([0.9, math.nan], [1.0, 1.0], [1.0, 1.0], "similarity contains a non-finite value"),
        ([0.9, 0.8], [1.0, math.inf], [1.0, 1.0], "teacher_influence contains a non-finite"),
        ([0.9, 0.8], [1.0, 1.0], [math.nan, 1.0], "student_influence contains a non-finite"),
        ([[0.9, 0.8]], [[1.0, 1.0]], [[1.0, 1.0]], "similarity must be one-dimensional"),
    ],
)
def test_bad_alignment_inputs_are_refused(
    similarity: list[Any], teacher: list[Any], student: list[Any], message: str
) -> None:
    for function in (alignment_score, weighted_alignment_score, alignment_parts):
        with pytest.raises(ValueError, match=message):
            function(similarity, teacher, student)


# --------------------------------------------------------------------------- severity


def test_severity_by_hand() -> None:
    # (0 + 0 + 40/80 + 80/80 + 80/80) / 5: 120 clamps to the limit.
    assert severity_score([0.0, 20.0, 60.0, 100.0, 120.0]) == pytest.approx(0.5, abs=1e-15)


def test_severity_alpha_squares_each_excess() -> None:
    assert severity_score([60.0, 100.0], alpha=2.0) == pytest.approx((0.25 + 1.0) / 2)


def test_severity_custom_tolerance_and_limit() -> None:
    # T = 10, L = 50: (0 + 10/40 + 40/40) / 3.
    assert severity_score([5.0, 20.0, 90.0], tolerance=10.0, limit=50.0) == pytest.approx(1.25 / 3)


def test_gpt2_worst_head_contributes_0_3375() -> None:
    # GPT-2 small: 144 heads + 12 MLPs; its worst single head costs 47% on the number task.
    names = [f"L{layer}H{head}" for layer in range(12) for head in range(12)]
    names += [f"MLP{layer}" for layer in range(12)]
    drops = np.zeros(len(names))
    drops[names.index("L9H1")] = 47.0
    drops[names.index("MLP0")] = 30.0
    drops[names.index("L5H5")] = 12.0
    assert severity_score([47.0]) == pytest.approx(0.3375, abs=1e-15)
    summary = brittleness_summary(names, drops, n_resamples=1000)
    assert summary.n_components == 156
    assert summary.severity == pytest.approx((0.3375 + 0.125) / 156, abs=1e-15)
    assert summary.worst_drop == 47.0
    assert summary.worst_component == "L9H1"
    assert summary.count_above_tolerance == 2
    # k = ceil(0.05 * 156) = 8 largest: 47, 30, 12 and five zeros.
    assert summary.worst5_mean == pytest.approx(89.0 / 8)


def test_distilgpt2_heads_costing_86_to_104_percent() -> None:
    # Four DistilGPT-2 heads cost 86-104% of the logit difference; two MLPs flip the answer.
    clean = 2.0
    ablated = clean * (1.0 - np.array([0.86, 0.92, 0.98, 1.04, 1.30, 2.50]))
    drops = drops_from_retained(retained(clean, ablated))
    np.testing.assert_allclose(drops, [86.0, 92.0, 98.0, 100.0, 100.0, 100.0])
    np.testing.assert_allclose(influence(clean, ablated), [86.0, 92.0, 98.0, 104.0, 130.0, 250.0])
    contributions = [severity_score([d]) for d in drops]
    assert contributions == pytest.approx([0.825, 0.9, 0.975, 1.0, 1.0, 1.0])
    # Unclamped 104 as a drop also saturates at L.
    assert severity_score([104.0]) == 1.0
    # In a 6 x 12 + 6 = 78-component model whose other components drop 0:
    all_drops = np.concatenate([drops, np.zeros(72)])
    assert severity_score(all_drops) == pytest.approx(5.7 / 78, abs=1e-15)


@PROPERTY_SETTINGS
@given(st.lists(st.floats(min_value=-50.0, max_value=300.0), min_size=1, max_size=60))
def test_severity_lies_in_unit_interval(drops: list[float]) -> None:
    value = severity_score(drops)
    assert 0.0 <= value <= 1.0
    assert (value == 0.0) == all(d <= 20.0 for d in drops)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drops": []}, "drops is empty"),
        ({"drops": [1.0, math.nan]}, r"drops contains a non-finite value \(nan\) at index 1"),
        ({"drops": [1.0], "tolerance": 100.0}, r"limit \(100.0\) must be greater than tolerance"),
        ({"drops": [1.0], "alpha": 0.0}, "alpha must be > 0"),
        ({"drops": [1.0], "tolerance": math.nan}, "tolerance contains a non-finite value"),
    ],
)
def test_bad_severity_inputs_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        severity_score(**kwargs)


# --------------------------------------------------------------------------- gini


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 1.0, 1.0, 1.0], 0.0),
        ([0.0, 0.0, 0.0, 1.0], 0.75),  # (5 - 2 * 1 / 1) / 4
        ([1.0, 0.0, 0.0, 0.0], 0.75),  # order does not matter
        ([1.0, 2.0, 3.0], 2.0 / 9.0),  # c = [1, 3, 6]: (4 - 2 * 10 / 6) / 3
        ([0.0, 0.0, 0.0], 0.0),
        ([-1.0, 0.0, 0.0, 0.0], 0.0 + 0.25),  # shifted to [0, 1, 1, 1]: (5 - 2 * 6 / 3) / 4
        ([-3.0, -3.0], 0.0),
        ([7.0], 0.0),
    ],
)
def test_gini_by_hand(values: list[float], expected: float) -> None:
    assert gini(values) == pytest.approx(expected, abs=1e-15)


@PROPERTY_SETTINGS
@given(st.lists(st.floats(min_value=0.0, max_value=1e6), min_size=1, max_size=60))
def test_gini_of_nonnegative_values_lies_in_0_1(values: list[float]) -> None:
    value = gini(values)
    assert 0.0 <= value < 1.0
    assert value <= (len(values) - 1) / len(values) + 1e-12


def test_gini_refuses_empty_and_nan() -> None:
    with pytest.raises(ValueError, match="values is empty"):
        gini([])
    with pytest.raises(ValueError, match="values contains a non-finite value"):
        gini([1.0, math.nan])


# --------------------------------------------------------------------------- worst share, count


def test_worst_share_mean_of_41_components_takes_3() -> None:
    drops = np.arange(41.0)  # ceil(0.05 * 41) = ceil(2.05) = 3: 40, 39, 38
    assert worst_share_mean(drops) == pytest.approx(39.0)


def test_worst_share_mean_is_not_fooled_by_float_noise() -> None:
    # 0.07 * 100 is 7.000000000000001 in floats; k must still be 7 (99 .. 93), not 8.
    assert worst_share_mean(np.arange(100.0), share=0.07) == pytest.approx(96.0)


def test_worst_share_mean_takes_at_least_one() -> None:
    assert worst_share_mean([3.0, 9.0, 1.0]) == 9.0
    assert worst_share_mean([3.0, 9.0, 1.0], share=1.0) == pytest.approx(13.0 / 3)


def test_worst_share_mean_refuses_bad_share() -> None:
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\]"):
        worst_share_mean([1.0], share=0.0)


def test_count_above_is_strict() -> None:
    assert count_above([0.0, 20.0, 20.5, 60.0, 100.0]) == 3
    assert count_above([0.0, 20.0, 20.5], tolerance=0.0) == 2
    assert type(count_above([50.0])) is int


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_is_deterministic_for_a_seed() -> None:
    values = np.random.default_rng(0).normal(30.0, 10.0, size=200)
    first = bootstrap_ci(values)
    assert bootstrap_ci(values) == first
    assert bootstrap_ci(values, seed=7) != first
    assert all(type(x) is float for x in first)


def test_bootstrap_ci_width_matches_standard_error() -> None:
    # 200 values with sd 10: the mean's standard error is about 10 / sqrt(200) = 0.71, so the
    # 95% interval is about 2 * 1.96 * 0.71 = 2.8 wide around the sample mean.
    values = np.random.default_rng(0).normal(30.0, 10.0, size=200)
    lo, hi = bootstrap_ci(values)
    standard_error = values.std() / math.sqrt(values.size)
    assert hi - lo == pytest.approx(2 * 1.96 * standard_error, rel=0.1)
    assert lo < values.mean() < hi


def test_bootstrap_ci_chunks_large_inputs() -> None:
    # 10,000 resamples of 50,000 values would be 4 GB of indices in one draw.
    values = np.arange(50_000.0)
    lo, hi = bootstrap_ci(values, n_resamples=200)
    assert lo < values.mean() < hi


@PROPERTY_SETTINGS
@given(
    st.lists(st.floats(min_value=-100.0, max_value=100.0), min_size=1, max_size=40),
    st.integers(min_value=0, max_value=2**32),
)
def test_bootstrap_ci_brackets_the_mean(values: list[float], seed: int) -> None:
    lo, hi = bootstrap_ci(values, n_resamples=400, seed=seed)
    mean = float(np.mean(values))
    assert lo <= mean + 1e-9
    assert mean <= hi + 1e-9
    assert (lo, hi) == bootstrap_ci(values, n_resamples=400, seed=seed)


@PROPERTY_SETTINGS
@given(st.floats(min_value=-1e6, max_value=1e6), st.integers(min_value=1, max_value=50))
def test_bootstrap_ci_of_a_constant_is_that_constant(value: float, n: int) -> None:
    assert bootstrap_ci([value] * n, n_resamples=300) == (value, value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": []}, "values is empty"),
        ({"values": [1.0, math.inf]}, "values contains a non-finite value"),
        ({"values": [1.0], "confidence": 1.0}, r"confidence must be in \(0, 1\)"),
        ({"values": [1.0], "n_resamples": 0}, "n_resamples must be a positive integer"),
        ({"values": [1.0], "n_resamples": 2.5}, "n_resamples must be a positive integer"),
    ],
)
def test_bad_bootstrap_inputs_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(**kwargs)


# --------------------------------------------------------------------------- summary and deltas


def _summary(drops: list[float]) -> BrittlenessSummary:
    names = [f"L0H{i}" for i in range(len(drops))]
    return brittleness_summary(names, drops, n_resamples=500)


def test_brittleness_summary_by_hand() -> None:
    names = ["L0H0", "L0H1", "MLP0", "L1H0", "MLP1"]
    summary = brittleness_summary(names, [0.0, 20.0, 60.0, 100.0, 100.0], n_resamples=2000)
    assert summary.n_components == 5
    assert summary.mean_drop == pytest.approx(56.0)
    assert summary.severity == pytest.approx(0.5)
    assert summary.worst_drop == 100.0
    assert summary.worst_component == "L1H0"  # first of the tied worst
    assert summary.count_above_tolerance == 3
    assert summary.worst5_mean == 100.0
    # Sorted [0, 20, 60, 100, 100], c = [0, 20, 80, 180, 280]: (6 - 2 * 560 / 280) / 5 = 0.4.
    assert summary.gini == pytest.approx(0.4)
    assert summary.tolerance == 20.0
    lo, hi = summary.mean_drop_ci
    assert 0.0 <= lo < 56.0 < hi <= 100.0
    assert summary.mean_drop_ci == bootstrap_ci(
        [0.0, 20.0, 60.0, 100.0, 100.0], n_resamples=2000, seed=42
    )


def test_brittleness_summary_is_plain_json_data() -> None:
    summary = brittleness_summary(["L0H0", "MLP0"], np.array([10.0, 40.0]), n_resamples=100)
    as_dict = dataclasses.asdict(summary)
    for key in ("mean_drop", "severity", "worst_drop", "worst5_mean", "gini", "tolerance"):
        assert type(as_dict[key]) is float, key
    assert type(as_dict["n_components"]) is int
    assert type(as_dict["count_above_tolerance"]) is int
    assert all(type(x) is float for x in summary.mean_drop_ci)
    assert json.loads(json.dumps(as_dict))["worst_component"] == "MLP0"


@pytest.mark.parametrize(
    ("names", "drops", "message"),
    [
        ([], [], "zero components evaluated"),
        (["L0H0"], [1.0, 2.0], "names has 1 entries but drops has 2"),
        (["L0H0", "L0H0"], [1.0, 2.0], "must be unique; repeated: L0H0"),
        (["L0H0", ""], [1.0, 2.0], "names must be non-empty strings"),
        (["L0H0", "MLP0"], [1.0, math.nan], "drops contains a non-finite value"),
    ],
)
def test_bad_summary_inputs_are_refused(names: list[str], drops: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        brittleness_summary(names, drops)


def test_compression_ratio() -> None:
    assert compression_ratio(100, 50) == 0.5
    assert compression_ratio(124e6, 82e6) == pytest.approx(42.0 / 124.0)
    assert compression_ratio(10, 12) == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="parameter counts must be positive"):
        compression_ratio(0, 10)
    with pytest.raises(ValueError, match="params_student contains a non-finite value"):
        compression_ratio(10, math.nan)


def test_brittleness_delta_per_unit_of_compression() -> None:
    teacher = _summary([0.0, 10.0, 20.0, 30.0])  # mean 15, severity 0.125/4, worst 30, 1 above
    student = _summary([0.0, 10.0, 60.0, 100.0])  # mean 42.5, severity 1.5/4, worst 100, 2 above
    delta = brittleness_delta(teacher, student, compression=0.5)
    assert isinstance(delta, BrittlenessDelta)
    assert delta.compression == 0.5
    assert delta.mean_drop == pytest.approx(27.5)
    assert delta.mean_drop_per_compression == pytest.approx(55.0)
    assert delta.severity == pytest.approx((1.5 - 0.125) / 4)
    assert delta.severity_per_compression == pytest.approx(2 * (1.5 - 0.125) / 4)
    assert delta.worst_drop == pytest.approx(70.0)
    assert delta.worst_drop_per_compression == pytest.approx(140.0)
    assert delta.worst5_mean == pytest.approx(70.0)  # k = 1 of 4
    assert delta.gini == pytest.approx(student.gini - teacher.gini)
    assert delta.gini_per_compression == pytest.approx(2 * (student.gini - teacher.gini))
    assert delta.count_above_tolerance == 1
    assert type(delta.count_above_tolerance) is int
    assert delta.count_above_tolerance_per_compression == pytest.approx(2.0)
    json.dumps(dataclasses.asdict(delta))


def test_paper_slope_of_27_points_per_unit_of_compression() -> None:
    # GPT-2 small (~124M parameters) -> DistilGPT-2 (~82M): C = 42/124 = 0.339. A mean-drop
    # increase of 9.15 points is then about 27 points per unit of compression.
    compression = compression_ratio(124e6, 82e6)
    teacher = _summary([5.0, 5.0])
    student = _summary([14.15, 14.15])
    delta = brittleness_delta(teacher, student, compression)
    assert delta.mean_drop_per_compression == pytest.approx(9.15 * 124.0 / 42.0)
    assert 26.5 < delta.mean_drop_per_compression < 27.5


@pytest.mark.parametrize("compression", [0.0, -0.2])
def test_brittleness_delta_without_compression_has_no_per_unit_values(compression: float) -> None:
    delta = brittleness_delta(_summary([0.0, 10.0]), _summary([0.0, 50.0]), compression)
    assert delta.mean_drop == pytest.approx(20.0)
    per_unit = [f.name for f in dataclasses.fields(delta) if f.name.endswith("_per_compression")]
    assert len(per_unit) == 6
    assert all(getattr(delta, name) is None for name in per_unit)


def test_brittleness_delta_refuses_bad_compression_and_mismatched_settings() -> None:
    teacher, student = _summary([0.0, 10.0]), _summary([0.0, 50.0])
    with pytest.raises(ValueError, match="compression must be < 1"):
        brittleness_delta(teacher, student, 1.0)
    with pytest.raises(ValueError, match="compression contains a non-finite value"):
        brittleness_delta(teacher, student, math.nan)
    other = brittleness_summary(["L0H0", "L0H1"], [0.0, 50.0], tolerance=30.0, n_resamples=100)
    with pytest.raises(ValueError, match=r"different tolerance \(20.0 vs 30.0\)"):
        brittleness_delta(teacher, other, 0.5)


def test_metrics_module_does_not_import_torch() -> None:
    root = Path(__file__).resolve().parents[1]
    code = "import sys, pytest_circuits.metrics; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=100), min_size=2, max_size=40),
    st.randoms(use_true_random=False),
)
def test_bootstrap_ci_does_not_depend_on_the_order_of_components(
    values: list[float], shuffler: Any
) -> None:
    shuffled = list(values)
    shuffler.shuffle(shuffled)
    assert bootstrap_ci(shuffled, n_resamples=500) == bootstrap_ci(values, n_resamples=500)
