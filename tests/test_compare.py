"""Properties of compare(): self-comparison, head-permutation invariance, random students,
fan-in, dead components, discards, the matching direction and the influence-weighted alignment
variant, on the bundled zoo."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from pytest_circuits.analysis import compare, model_report
from pytest_circuits.analysis.cached import pair_report
from pytest_circuits.analysis.comparison import CompareSettings, MatchedPair, find_discarded
from pytest_circuits.analysis.matching import fan_in, match_by_effect, match_by_similarity
from pytest_circuits.analysis.similarity import (
    eigenvector_similarity,
    linear_cka,
    pattern_similarity,
    top_eigenvectors,
)
from pytest_circuits.components import Component
from pytest_circuits.errors import CircuitsError, IncompatiblePairError
from pytest_circuits.models import CircuitModel, load_model, load_pair
from pytest_circuits.tasks import builtin_task
from pytest_circuits.zoo import zoo_path

N_PROMPTS = 12


@pytest.fixture(scope="module")
def task():
    return builtin_task("numerals", n_prompts=N_PROMPTS, seed=7)


@pytest.fixture(scope="module")
def zoo_teacher():
    return load_model("zoo:tiny-teacher")


@pytest.fixture(scope="module")
def zoo_student():
    return load_model("zoo:tiny-student")


@pytest.fixture(scope="module")
def base(zoo_teacher, zoo_student, task):
    """The distilled pair's report, computed once for the tests that read it."""
    return compare(load_pair(zoo_teacher, zoo_student), task)


def _clone_with(model, edit, name):
    """A CircuitModel over a deep copy of ``model``'s HF weights after ``edit(hf_model)``."""
    hf = copy.deepcopy(model.hf_model)
    with torch.no_grad():
        edit(hf)
    return load_model(hf, tokenizer=zoo_path("tiny-teacher"), name=name)


def test_pattern_similarity_is_mean_rowwise_cosine():
    a = np.array([[[1.0, 0.0], [0.5, 0.5]]])
    b = np.array([[[0.0, 1.0], [0.5, 0.5]]])
    # row 0: orthogonal (0), row 1: identical (1) -> mean 0.5
    assert pattern_similarity(a, b)[0, 0] == pytest.approx(0.5)
    assert pattern_similarity(a, a)[0, 0] == pytest.approx(1.0)


def test_eigenvector_similarity_ignores_sign_and_matches_by_rank():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * np.array([5, 3, 2, 0.1, 0.1, 0.1])
    v = top_eigenvectors(x)
    assert v.shape == (6, 3)
    assert eigenvector_similarity(v[None], (-v)[None])[0, 0] == pytest.approx(1.0)
    swapped = v[:, [1, 0, 2]]
    # first two directions swapped rank: those two cosines are 0, the third 1 -> 1/3
    assert eigenvector_similarity(v[None], swapped[None])[0, 0] == pytest.approx(1 / 3, abs=1e-9)


def test_linear_cka_is_one_for_rotations_and_scaling():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 4))
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)
    assert linear_cka(x, rng.normal(size=(100, 4))) < 0.3


def test_paper_matching_allows_many_to_one_and_reports_fan_in():
    t = [Component.head_at(0, 0), Component.head_at(0, 1), Component.head_at(0, 2)]
    s = [Component.head_at(0, 0), Component.head_at(0, 1)]
    sim = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7]])
    matches = match_by_similarity(sim, t, s)
    assert [m.student for m in matches] == ["L0H0", "L0H0", "L0H1"]
    assert fan_in(matches) == {"L0H0": ["L0H0", "L0H1"], "L0H1": ["L0H2"]}


def test_causal_matching_pairs_nearest_normalised_effect():
    t = [Component.mlp_at(0), Component.mlp_at(1)]
    s = [Component.mlp_at(0), Component.mlp_at(1)]
    # teacher effects 10, 40 -> 0.25, 1.0 ; student effects 80, 16 -> 1.0, 0.2
    matches = match_by_effect(np.array([10.0, 40.0]), np.array([80.0, 16.0]), t, s)
    assert [m.student for m in matches] == ["MLP1", "MLP0"]
    assert matches[0].similarity == pytest.approx(1 - abs(0.25 - 0.2))


def test_model_compared_with_itself_scores_one_with_fan_in_one(zoo_teacher, task):
    twin = load_model("zoo:tiny-teacher")
    report = compare(load_pair(zoo_teacher, twin), task)
    assert report.alignment.score == pytest.approx(1.0, abs=1e-9)
    assert report.alignment.weighted_score == pytest.approx(1.0, abs=1e-9)
    assert all(len(teachers) == 1 for teachers in report.fan_in.values())
    assert report.compressed == {}
    assert report.discarded == []
    assert report.compression == 0.0
    json.dumps(report.to_dict())  # plain data all the way down


def test_permuting_student_heads_changes_no_score(zoo_teacher, zoo_student, task, base):
    layer, perm = 1, [2, 0, 3, 1]
    d_head = zoo_student.d_head
    d_model = zoo_student.d_model

    def permute(hf):
        block = hf.transformer.h[layer].attn
        index = torch.cat([torch.arange(p * d_head, (p + 1) * d_head) for p in perm])
        qkv = torch.cat([index + k * d_model for k in range(3)])
        block.c_attn.weight.copy_(block.c_attn.weight[:, qkv])
        block.c_attn.bias.copy_(block.c_attn.bias[qkv])
        block.c_proj.weight.copy_(block.c_proj.weight[index, :])

    permuted = _clone_with(zoo_student, permute, "permuted-student")
    original = base
    shuffled = compare(load_pair(zoo_teacher, permuted), task)
    assert shuffled.alignment.score == pytest.approx(original.alignment.score, abs=1e-6)
    assert shuffled.alignment.weighted_score == pytest.approx(
        original.alignment.weighted_score, abs=1e-6
    )
    ob, sb = original.student.brittleness, shuffled.student.brittleness
    for field in ("mean_drop", "severity", "worst_drop", "worst5_mean", "gini"):
        assert getattr(sb, field) == pytest.approx(getattr(ob, field), abs=1e-4), field
    assert ob.mean_drop_ci == pytest.approx(sb.mean_drop_ci, abs=1e-4)
    # the permuted head L1H{perm[i]} of the original is head L1H{i} of the copy
    for new, old in enumerate(perm):
        assert shuffled.student.sweep.effect(f"L{layer}H{new}").drop == pytest.approx(
            original.student.sweep.effect(f"L{layer}H{old}").drop, abs=1e-4
        )


def test_random_student_of_same_shape_scores_clearly_lower(zoo_teacher, zoo_student, task, base):
    def scramble(hf):
        generator = torch.Generator().manual_seed(0)
        for block in hf.transformer.h:
            for param in block.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)

    random_student = _clone_with(zoo_student, scramble, "random-student")
    distilled = base
    # a random student does not perform the task, so influence percentages are meaningless and
    # compare refuses it by default; the guard is turned off here only to read the similarity
    scrambled = compare(load_pair(zoo_teacher, random_student), task, margin=None)
    assert scrambled.alignment.mean_similarity < distilled.alignment.mean_similarity - 0.1
    assert scrambled.alignment.score < distilled.alignment.score - 0.1


def test_weighted_variant_catches_a_disabled_influential_component(
    zoo_teacher, zoo_student, task, base
):
    heads = [e for e in base.student.sweep.effects if e.kind == "head"]
    top = max(heads, key=lambda e: e.influence)
    layer, head, d_head = top.layer, top.head, zoo_student.d_head

    def disable(hf):
        hf.transformer.h[layer].attn.c_proj.weight[head * d_head : (head + 1) * d_head] = 0

    crippled = _clone_with(zoo_student, disable, "crippled-student")
    after = compare(load_pair(zoo_teacher, crippled), task)
    paper_move = abs(base.alignment.score - after.alignment.score)
    weighted_move = base.alignment.weighted_score - after.alignment.weighted_score
    assert after.student.sweep.effect(top.name).influence < 1.0  # it really is disabled
    # with only 20 teacher components the paper's 1/N dilution is mild (it moved ~0.09 here);
    # the weighted variant still moves by about the disabled component's teacher share
    assert weighted_move > 2 * paper_move
    assert weighted_move > 0.15


def test_report_lists_brittleness_of_both_models_and_deltas(zoo_teacher, zoo_student, base):
    report = base
    t, s, d = report.teacher.brittleness, report.student.brittleness, report.brittleness_delta
    assert t.n_components == zoo_teacher.n_layers * (zoo_teacher.n_heads + 1)
    assert s.n_components == zoo_student.n_layers * (zoo_student.n_heads + 1)
    assert d.severity == pytest.approx(s.severity - t.severity)
    assert report.compression == pytest.approx(1 - zoo_student.n_params / zoo_teacher.n_params)
    assert d.severity_per_compression == pytest.approx(d.severity / report.compression)
    # every teacher component is matched exactly once, to a student component of its type
    pairs = report.alignment.pairs
    assert len(pairs) == t.n_components
    assert all(Component.parse(p.teacher).kind == Component.parse(p.student).kind for p in pairs)


def test_discarded_lists_influential_teacher_components_without_counterpart(zoo_teacher, task):
    def kill_all_heads(hf):
        for block in hf.transformer.h:
            block.attn.c_proj.weight.zero_()

    headless = _clone_with(zoo_teacher, kill_all_heads, "headless")
    report = model_report(zoo_teacher, task)
    influential = {e.name for e in report.sweep.effects if e.kind == "head" and e.influence >= 10}
    assert influential, "the teacher should have influential heads on numerals"
    pair = load_pair(zoo_teacher, headless)
    cmp = compare(pair, task, margin=None)  # a headless model does not do the task
    discarded = {d.teacher for d in cmp.discarded}
    assert influential <= discarded


def test_paper_matching_refuses_different_tokenizers(zoo_teacher, zoo_student, task):
    pair = load_pair(zoo_teacher, zoo_student)
    pair.same_tokenizer = False
    with pytest.raises(IncompatiblePairError, match="matching='causal'"):
        compare(pair, task)


# --------------------------------------------------------------------------- matching direction


def test_both_directions_pick_each_choosers_most_similar_partner():
    t = [Component.head_at(0, h) for h in range(3)]
    s = [Component.head_at(0, h) for h in range(2)]
    sim = np.array([[0.9, 0.3], [0.8, 0.2], [0.1, 0.7]])
    forward = match_by_similarity(sim, t, s, "teacher_to_student")
    assert [(m.teacher, m.student, m.similarity) for m in forward] == [
        ("L0H0", "L0H0", 0.9), ("L0H1", "L0H0", 0.8), ("L0H2", "L0H1", 0.7)
    ]
    backward = match_by_similarity(sim, t, s, "student_to_teacher")
    # one pair per student component, in student order; teacher L0H1 is nobody's best
    assert [(m.teacher, m.student, m.similarity) for m in backward] == [
        ("L0H0", "L0H0", 0.9), ("L0H2", "L0H1", 0.7)
    ]


def test_causal_matching_honours_the_direction():
    t = [Component.mlp_at(0), Component.mlp_at(1), Component.mlp_at(2)]
    s = [Component.mlp_at(0), Component.mlp_at(1)]
    # normalised teacher effects 0.25, 1.0, 0.9; student effects 1.0, 0.2
    teacher, student = np.array([10.0, 40.0, 36.0]), np.array([80.0, 16.0])
    assert [m.student for m in match_by_effect(teacher, student, t, s)] == [
        "MLP1", "MLP0", "MLP0"
    ]
    backward = match_by_effect(teacher, student, t, s, "student_to_teacher")
    assert [(m.teacher, m.student) for m in backward] == [("MLP1", "MLP0"), ("MLP0", "MLP1")]
    assert backward[1].similarity == pytest.approx(1 - abs(0.25 - 0.2))


def test_an_unknown_direction_is_refused_with_the_choices(zoo_teacher, zoo_student, task):
    with pytest.raises(CircuitsError, match="'sideways'.*'teacher_to_student'.*'student_to_"):
        compare(load_pair(zoo_teacher, zoo_student), task, direction="sideways")
    with pytest.raises(CircuitsError, match="'both'"):
        match_by_similarity(np.ones((1, 1)), [Component.mlp_at(0)], [Component.mlp_at(0)],
                            "both")


def test_student_to_teacher_scores_the_zoo_pair_higher(zoo_teacher, zoo_student, task, base):
    backward = compare(load_pair(zoo_teacher, zoo_student), task, direction="student_to_teacher")
    # measured: teacher_to_student A = 0.708 (20 pairs), student_to_teacher A = 0.907 (10)
    assert backward.alignment.score > base.alignment.score + 0.1
    assert len(backward.alignment.pairs) == zoo_student.n_layers * (zoo_student.n_heads + 1)
    assert len(base.alignment.pairs) == zoo_teacher.n_layers * (zoo_teacher.n_heads + 1)
    assert backward.fingerprint.direction == "student_to_teacher"
    assert base.fingerprint.direction == "teacher_to_student"
    assert backward.fingerprint.key() != base.fingerprint.key()
    # every student component picks exactly one teacher component
    assert sorted(backward.fan_in_all) == sorted(p.student for p in backward.alignment.pairs)


def test_cached_pair_report_keys_on_direction_and_dead_floor(zoo_teacher, zoo_student, task):
    pair = load_pair(zoo_teacher, zoo_student)
    options = {"n_prompts": N_PROMPTS, "seed": 7}
    forward = pair_report(pair, task, **options)
    assert pair_report(pair, task, **options) is forward
    backward = pair_report(pair, task, direction="student_to_teacher", **options)
    assert backward.fingerprint.direction == "student_to_teacher"
    assert backward.alignment.score != forward.alignment.score
    lenient = pair_report(pair, task, min_student_influence=0.0, **options)
    assert lenient.settings.min_student_influence == 0.0
    assert lenient.fan_in == lenient.fan_in_all


# --------------------------------------------------------------------------- dead components


def _pair(teacher: str, student: str, similarity: float, t_infl: float, s_infl: float):
    return MatchedPair(teacher, student, "head", similarity, t_infl, s_infl, 0.0, 0.0)


def test_matches_onto_a_dead_component_are_discarded_unless_the_teacher_was_dead_too():
    settings = CompareSettings(influential=10.0, weak_similarity=0.5, min_student_influence=2.0)
    pairs = [
        _pair("L0H0", "L0H0", 0.9, 30.0, 25.0),  # a live counterpart: kept
        _pair("L0H1", "L0H3", 0.8, 5.0, 0.5),  # live (not influential) teacher onto dead: lost
        _pair("L0H2", "L0H3", 0.7, 1.0, 0.5),  # dead onto dead: nothing was lost
        _pair("L0H3", "L0H1", 0.3, 40.0, 12.0),  # influential, weak similarity
    ]
    influence = {p.teacher: p.teacher_influence for p in pairs}
    found = find_discarded(pairs, influence, settings)
    assert [(d.teacher, d.student) for d in found] == [("L0H1", "L0H3"), ("L0H3", "L0H1")]
    assert found[0].reason.startswith("matched onto a dead component: L0H3 costs only 0.5")
    assert found[1].reason == "best match L0H1 has similarity 0.30 < 0.5"


def test_an_unchosen_influential_teacher_component_is_discarded():
    settings = CompareSettings()
    pairs = [_pair("L0H0", "L0H0", 0.9, 30.0, 25.0)]
    found = find_discarded(pairs, {"L0H0": 30.0, "L0H1": 15.0, "L0H2": 3.0}, settings)
    assert [(d.teacher, d.student, d.similarity) for d in found] == [("L0H1", None, None)]


def test_a_disabled_student_head_absorbs_no_fan_in(zoo_teacher, zoo_student, task, base):
    """Disable the live student head with the most teacher partners: it keeps its partners in
    the raw fan-in, loses them from the effective one, and its live partners are discarded."""
    live = {
        p.student for p in base.alignment.pairs
        if p.kind == "head" and p.student_influence >= base.settings.min_student_influence
    }
    target = max(sorted(live), key=lambda name: len(base.fan_in_all[name]))
    partners = base.fan_in_all[target]
    assert partners, "the zoo student should have a live head that teacher components match"
    head, d_head = Component.parse(target).head, zoo_student.d_head
    layer = Component.parse(target).layer

    def disable(hf):
        # zero its output projection: the attention pattern (what matching sees) is unchanged
        hf.transformer.h[layer].attn.c_proj.weight[head * d_head : (head + 1) * d_head] = 0

    crippled = _clone_with(zoo_student, disable, "head-disabled-student")
    after = compare(load_pair(zoo_teacher, crippled), task)
    assert after.fan_in_all[target] == partners  # it still is the most similar...
    assert target not in after.fan_in  # ...but no longer counts as compression
    assert target not in after.compressed
    assert {p.teacher for p in after.dead_matches if p.student == target} == set(partners)
    lost = {d.teacher: d.reason for d in after.discarded if d.student == target}
    live_partners = {t for t in partners if after.teacher.sweep.effect(t).influence >= 2.0}
    assert set(lost) == live_partners and live_partners
    assert all(r.startswith("matched onto a dead component") for r in lost.values())


def test_every_match_is_either_effective_fan_in_or_onto_a_dead_component(base):
    floor = base.settings.min_student_influence
    counted = sum(len(teachers) for teachers in base.fan_in.values())
    assert counted + len(base.dead_matches) == len(base.alignment.pairs)
    assert all(p.student_influence < floor for p in base.dead_matches)
    # the distilled zoo student has heads that do no work on numerals yet attract matches
    absorbed = set(base.fan_in_all) - set(base.fan_in)
    assert absorbed and all(
        base.student.sweep.effect(name).influence < floor for name in absorbed
    )


def test_the_package_name_compare_is_the_function_whatever_was_imported_first() -> None:
    # A submodule named like a function would replace that function on the package once
    # imported (why the module is comparison.py, as the sweep's is ablation.py).
    import pytest_circuits
    import pytest_circuits.analysis as analysis
    import pytest_circuits.analysis.comparison as comparison

    assert analysis.compare is comparison.compare and callable(analysis.compare)
    assert pytest_circuits.compare is comparison.compare
    assert analysis.sweep.__module__ == "pytest_circuits.analysis.ablation"


@pytest.mark.parametrize("margin", [-5.0, float("nan"), float("inf")])
def test_a_margin_that_would_switch_off_the_task_guard_is_refused_everywhere(
    zoo_teacher: CircuitModel, zoo_student: CircuitModel, margin: float
) -> None:
    # not only through the gates: compare(), sweep() and the CLI reach the guard directly
    from pytest_circuits.analysis import sweep

    task = builtin_task("numerals", n_prompts=4)
    with pytest.raises(CircuitsError, match="margin=.* must be a finite number >= 0"):
        compare(load_pair(zoo_teacher, zoo_student), task, margin=margin)
    with pytest.raises(CircuitsError, match="margin=.* must be a finite number >= 0"):
        sweep(zoo_student, task, margin=margin)
