"""similarity="combined": heads compared by what they read (attention pattern) and what they write
(their output at the prediction positions, centred over prompts), in the residual basis the two
models share; the pattern alone where they share none."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pytest_circuits.analysis import compare
from pytest_circuits.analysis.matching import match_tie_aware
from pytest_circuits.analysis.similarity import (
    combined_head_similarity,
    output_similarity,
    shares_residual_basis,
    signatures,
    silent_heads,
    similarity_matrices,
)
from pytest_circuits.components import Component
from pytest_circuits.config.options import OUTPUT_TIE_MARGIN
from pytest_circuits.models import CircuitModel, load_model, load_pair
from pytest_circuits.tasks import builtin_task
from pytest_circuits.zoo import zoo_path


@pytest.fixture(scope="module")
def teacher() -> CircuitModel:
    return load_model("zoo:tiny-teacher")


@pytest.fixture(scope="module")
def task():
    return builtin_task("numerals", n_prompts=8, seed=7)


def _copy(model: CircuitModel, edit, name: str) -> CircuitModel:
    hf = copy.deepcopy(model.hf_model)
    with torch.no_grad():
        edit(hf)
    return load_model(hf, tokenizer=zoo_path("tiny-teacher"), name=name)


def test_output_similarity_compares_what_varies_over_prompts():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1, 6, 8))
    b = np.zeros((1, 6, 8))
    b[0, :, :4] = rng.normal(size=(6, 4))
    a_only_first_half = a.copy()
    a_only_first_half[0, :, 4:] = 0
    other = np.zeros((1, 6, 8))
    other[0, :, 4:] = rng.normal(size=(6, 4))  # writes only where the first does not
    constant = np.ones((1, 6, 8))  # the same write on every prompt: nothing left once centred
    assert output_similarity(a, a)[0, 0] == pytest.approx(1.0)
    assert output_similarity(a, 3.0 * a + 5.0)[0, 0] == pytest.approx(1.0)  # scale, mean
    assert output_similarity(a, -a)[0, 0] == pytest.approx(-1.0)
    assert output_similarity(a_only_first_half, other)[0, 0] == pytest.approx(0.0, abs=1e-12)
    assert output_similarity(a, constant)[0, 0] == 0.0
    assert output_similarity(a, np.zeros((1, 6, 8)))[0, 0] == 0.0  # a pruned head
    with pytest.raises(Exception, match="different prompts or widths"):
        output_similarity(a, np.zeros((1, 5, 8)))


def test_a_model_and_its_copy_score_exactly_one(teacher, task):
    again = _copy(teacher, lambda hf: None, "tiny-teacher-again")
    report = compare(load_pair(teacher, again), task, preset="recommended")
    assert report.fingerprint.similarity == "combined"
    assert report.alignment.score == 1.0 and report.alignment.weighted_score == 1.0
    assert all(p.teacher == p.student and p.similarity == 1.0 for p in report.alignment.pairs)


def test_a_head_that_reads_the_same_but_writes_the_opposite_scores_zero(teacher, task):
    """Negate one last-layer head's output projection: its pattern and every other head's
    signature are unchanged, its write is exactly the opposite."""
    layer, head, d_head = teacher.n_layers - 1, 2, teacher.d_head

    def flip(hf):
        hf.transformer.h[layer].attn.c_proj.weight[head * d_head:(head + 1) * d_head] *= -1

    flipped = _copy(teacher, flip, "tiny-teacher-flipped")
    combined = similarity_matrices(teacher, flipped, task, "combined").heads
    patterns = similarity_matrices(teacher, flipped, task, "subspace").heads
    i = layer * teacher.n_heads + head
    assert patterns[i, i] == 1.0  # it reads exactly as before
    assert combined[i, i] == pytest.approx(0.0, abs=1e-9)  # (1 + (-1)) / 2
    others = np.delete(np.diag(combined), i)
    assert np.all(others == 1.0)
    writes = signatures(flipped, task).head_writes
    assert writes is not None
    assert writes.shape == (teacher.n_layers * teacher.n_heads, 8, teacher.d_model)
    np.testing.assert_allclose(writes[i], -signatures(teacher, task).head_writes[i], atol=1e-6)


def test_models_trained_apart_share_no_basis_and_fall_back_to_patterns(teacher, task):
    student = load_model("zoo:tiny-student")
    assert shares_residual_basis(teacher, student, task)  # initialised from the teacher

    def scramble(hf):
        generator = torch.Generator().manual_seed(0)
        weight = hf.transformer.wte.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * weight.std())

    apart = _copy(teacher, scramble, "tiny-teacher-other-basis")
    assert not shares_residual_basis(teacher, apart, task)
    combined = similarity_matrices(teacher, apart, task, "combined")
    by_pattern = similarity_matrices(teacher, apart, task, "subspace")
    np.testing.assert_array_equal(combined.heads, by_pattern.heads)
    np.testing.assert_array_equal(combined.mlps, by_pattern.mlps)


def test_a_pattern_tie_stays_a_tie_unless_the_writes_differ_beyond_their_noise():
    teacher = [Component.head_at(0, 0)]
    student = [Component.head_at(0, 0), Component.head_at(0, 1)]
    patterns = np.array([[1.0, 0.99]])  # a tie on what they read (within 0.02)
    for writes, tied in ((np.array([[0.1, 0.35]]), True),  # 0.25 apart: within the noise
                         (np.array([[0.1, 0.8]]), False)):  # 0.7 apart: told apart
        combined = combined_head_similarity(patterns, writes)
        plain = match_tie_aware(combined, teacher, student, np.zeros(1), np.zeros(2))
        assert not plain[0].ambiguous and plain[0].student == "L0H1"  # the average alone
        (match,) = match_tie_aware(combined, teacher, student, np.zeros(1), np.zeros(2),
                                   evidence=[(patterns, 0.02), (writes, OUTPUT_TIE_MARGIN)])
        assert match.ambiguous is tied
        assert match.candidates == (("L0H1", "L0H0") if tied else ())


def test_a_head_that_writes_nothing_is_compared_by_its_pattern_alone():
    writes = np.ones((3, 4, 5))
    writes[1] = 0.0  # pruned: its output projection is zero
    assert silent_heads(writes).tolist() == [False, True, False]
    patterns = np.array([[1.0, 0.6], [0.3, 0.9]])
    outputs = np.array([[np.nan, 0.2], [np.nan, 0.8]])
    np.testing.assert_allclose(combined_head_similarity(patterns, outputs),
                               [[1.0, 0.4], [0.3, 0.85]])
