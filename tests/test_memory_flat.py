"""Memory that does not grow with the number of prompts (issue 11): similarity (every option) and
the bridge parity check run prompts in chunks of ``engine.PROMPT_BATCH`` and keep only
statistics whose size is independent of the task's size, giving the unchunked numbers (up to
float summation order) and the unchunked verdicts."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import fields
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from pytest_circuits import cache, parity
from pytest_circuits.analysis import engine, similarity
from pytest_circuits.models import CircuitModel, load_model
from pytest_circuits.tasks import Task, builtin_task

pytestmark = pytest.mark.slow

#: chunks of 7 prompts over a 20-prompt task: three chunks, the last one short
SMALL_BATCH = 7
N_PROMPTS = 20


@pytest.fixture()
def fresh() -> Iterator[Callable[[str], CircuitModel]]:
    """Loads a model with no memoised clean runs, signatures or cached results, so each run
    computes everything under the PROMPT_BATCH in force."""
    cache.forget()
    similarity._SHARED.clear()
    yield load_model
    cache.forget()
    similarity._SHARED.clear()


@pytest.fixture()
def task() -> Task:
    return builtin_task("numerals", n_prompts=N_PROMPTS)


def _pair_matrices(
    fresh: Callable[[str], CircuitModel], task: Task, which: str, student: str
) -> similarity.SimilarityMatrices:
    similarity._SHARED.clear()
    return similarity.similarity_matrices(fresh("zoo:tiny-teacher"), fresh(student), task, which)


@pytest.mark.parametrize("which", similarity.SIMILARITIES)
def test_chunked_similarity_equals_the_one_chunk_computation(
    fresh: Callable[[str], CircuitModel],
    monkeypatch: pytest.MonkeyPatch,
    task: Task,
    which: str,
) -> None:
    whole = _pair_matrices(fresh, task, which, "zoo:tiny-student")
    monkeypatch.setattr(engine, "PROMPT_BATCH", SMALL_BATCH)
    chunked = _pair_matrices(fresh, task, which, "zoo:tiny-student")
    assert chunked.heads.shape == whole.heads.shape == (16, 8)
    assert chunked.mlps.shape == whole.mlps.shape == (4, 2)
    # patterns: the one-chunk path averages in float32, the chunked one sums in float64
    np.testing.assert_allclose(chunked.heads, whole.heads, rtol=0, atol=1e-7)
    np.testing.assert_allclose(chunked.mlps, whole.mlps, rtol=0, atol=1e-9)
    assert chunked.teacher_heads == whole.teacher_heads
    assert chunked.student_mlps == whole.student_mlps
    # not vacuous: the matrices spread over a real range and no pair is an exact copy
    assert whole.heads.max() - whole.heads.min() > 0.2
    assert np.ptp(whole.mlps) > 0.01
    assert (whole.heads < 1.0).all() and (whole.mlps < 1.0).all()


@pytest.mark.parametrize("which", similarity.SIMILARITIES)
def test_chunked_self_similarity_is_exactly_one_on_the_diagonal(
    fresh: Callable[[str], CircuitModel],
    monkeypatch: pytest.MonkeyPatch,
    task: Task,
    which: str,
) -> None:
    """The exact-copy check survives chunking: a model against itself scores exactly 1 for each
    component with itself (the output digests match), and only there for the MLPs."""
    monkeypatch.setattr(engine, "PROMPT_BATCH", SMALL_BATCH)
    model = fresh("zoo:tiny-teacher")
    mats = similarity.similarity_matrices(model, model, task, which)
    np.testing.assert_array_equal(np.diag(mats.heads), np.ones(16))
    np.testing.assert_array_equal(np.diag(mats.mlps), np.ones(4))
    assert (mats.mlps[~np.eye(4, dtype=bool)] < 1.0).all()


def test_chunked_digests_equal_the_one_chunk_digests(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch, task: Task
) -> None:
    """Digests streamed chunk by chunk are those of the concatenated outputs, and tell
    different components (and a different task size) apart."""
    whole = similarity.signatures(fresh("zoo:tiny-teacher"), task)
    assert whole.head_outputs is not None and whole.mlp_outputs is not None
    similarity._SHARED.clear()
    monkeypatch.setattr(engine, "PROMPT_BATCH", SMALL_BATCH)
    chunked = similarity.signatures(fresh("zoo:tiny-teacher"), task)
    assert chunked.head_digests == whole.head_digests
    assert chunked.mlp_digests == whole.mlp_digests
    assert len(set(chunked.head_digests)) == 16 and len(set(chunked.mlp_digests)) == 4
    # the one-chunk digests are those of the outputs it holds
    assert similarity._identical(whole.mlp_outputs, whole.mlp_outputs).diagonal().all()
    fewer = similarity.signatures(fresh("zoo:tiny-teacher"), builtin_task("numerals", 19))
    assert not set(fewer.mlp_digests) & set(chunked.mlp_digests)
    # what the chunked signatures do keep equals the one-chunk values
    np.testing.assert_allclose(chunked.patterns, whole.patterns, rtol=1e-6, atol=1e-7)
    k = similarity.SUBSPACE_DIM
    for a, b in zip(chunked.mlp_eigenvectors, whole.mlp_eigenvectors, strict=True):
        np.testing.assert_allclose(a[:, :k] @ a[:, :k].T, b[:, :k] @ b[:, :k].T, atol=1e-6)


def _array_bytes(sig: similarity.Signatures) -> dict[str, int]:
    """nbytes of every array a Signatures holds, by field (0 for None and non-arrays)."""
    sizes = {}
    for f in fields(sig):
        value = getattr(sig, f.name)
        if isinstance(value, np.ndarray | torch.Tensor):
            sizes[f.name] = int(value.nbytes)
        elif isinstance(value, tuple | list):
            sizes[f.name] = sum(
                int(v.nbytes) if isinstance(v, np.ndarray | torch.Tensor) else len(v)
                for v in value if isinstance(v, np.ndarray | torch.Tensor | bytes)
            )
        else:
            sizes[f.name] = 0
    return sizes


def test_signatures_hold_nothing_that_grows_with_the_prompts(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With chunks of 8, the signatures of 64 and of 192 prompts hold arrays of the same sizes:
    no per-token outputs over all prompts are kept (the heads' writes at the prediction
    positions, which the combined similarity reads, cover at most the first
    ``similarity.OUTPUT_PROMPTS`` = 64 prompts, so both counts are at or above that bound)."""
    monkeypatch.setattr(engine, "PROMPT_BATCH", 8)
    sizes = []
    assert similarity.OUTPUT_PROMPTS == 64
    for n in (64, 192):
        sig = similarity.signatures(fresh("zoo:tiny-teacher"), builtin_task("numerals", n))
        assert sig.head_outputs is None and sig.mlp_outputs is None
        sizes.append(_array_bytes(sig))
    assert sizes[0] == sizes[1]
    assert sizes[0]["patterns"] > 0 and sizes[0]["mlp_eigenvectors"] > 0


def _traced_peak(run: Callable[[], Any]) -> int:
    """Peak bytes numpy and Python allocated while ``run`` ran (torch's own CPU allocator is not
    traced; every array similarity keeps is numpy)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("which", similarity.SIMILARITIES)
def test_similarity_peak_does_not_grow_with_the_prompts(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """With chunks of 8, similarity over 4x the prompts (64 -> 256) peaks at about the same
    traced memory; keeping per-token float64 outputs of every prompt (CKA's inputs, the
    exact-copy check's) would make it grow about 4x. (The heads' writes the combined similarity
    reads are bounded by ``similarity.OUTPUT_PROMPTS`` = 64 prompts: both counts are at or
    above it.)"""
    monkeypatch.setattr(engine, "PROMPT_BATCH", 8)
    peaks = []
    for n in (64, 256):
        task = builtin_task("numerals", n)
        teacher, student = fresh("zoo:tiny-teacher"), fresh("zoo:tiny-student")
        for model in (teacher, student):
            engine.task_tensors(model, task)  # encoding the prompts is not what is measured
        similarity._SHARED.clear()
        peaks.append(_traced_peak(
            lambda: similarity.similarity_matrices(teacher, student, task, which)  # noqa: B023
        ))
    assert peaks[1] < 1.25 * peaks[0], peaks


# --- bridge parity ---------------------------------------------------------------------------

#: the fault the plain side gets at one prompt: FAULT_LOGIT added to vocabulary entry FAULT_TOKEN
FAULT_PROMPT = 16  # in the third chunk of 7
FAULT_TOKEN = 5
FAULT_LOGIT = 0.75


class _FaultyPlain:
    """The plain model, with ``fault`` added at FAULT_TOKEN for the rows whose tokens are those of
    prompt ``target`` (found by content, so the fault follows the prompt into any chunk), and
    the widest batch it was called with recorded."""

    def __init__(self, plain: Any, target: torch.Tensor, fault: float) -> None:
        self.plain, self.target, self.fault = plain, target, fault
        self.widest = 0

    def __call__(self, tokens: torch.Tensor) -> Any:
        self.widest = max(self.widest, int(tokens.shape[0]))
        logits = self.plain(tokens).logits.clone()
        for row in range(tokens.shape[0]):
            if torch.equal(tokens[row], self.target):
                logits[row, :, FAULT_TOKEN] += self.fault
        return SimpleNamespace(logits=logits)


def _parity(
    model: CircuitModel, task: Task, monkeypatch: pytest.MonkeyPatch, fault: float | None
) -> tuple[parity.ParityResult, _FaultyPlain]:
    build = parity.plain_hf_model
    target = engine.task_tensors(model, task).tokens[FAULT_PROMPT]
    made: list[_FaultyPlain] = []

    def faulty(m: CircuitModel) -> Any:
        made.append(_FaultyPlain(build(m), target, 0.0 if fault is None else fault))
        return made[-1]

    monkeypatch.setattr(parity, "plain_hf_model", faulty)
    result = parity.bridge_parity(model, task)
    monkeypatch.setattr(parity, "plain_hf_model", build)
    return result, made[0]


@pytest.mark.parametrize("fault", [None, FAULT_LOGIT, float("nan")])
def test_chunked_parity_equals_the_whole_batch(
    monkeypatch: pytest.MonkeyPatch, task: Task, fault: float | None
) -> None:
    model = load_model("zoo:tiny-student")
    whole, plain = _parity(model, task, monkeypatch, fault)
    assert plain.widest == N_PROMPTS
    monkeypatch.setattr(engine, "PROMPT_BATCH", SMALL_BATCH)
    chunked, plain = _parity(model, task, monkeypatch, fault)
    assert plain.widest == SMALL_BATCH
    assert chunked.passed == whole.passed == (fault is None)
    assert chunked.n_prompts == whole.n_prompts == N_PROMPTS
    assert chunked.vocab_size == whole.vocab_size
    if fault is None:
        # a healthy model: the largest differences are float32 rounding either way
        assert chunked.max_rel_diff < 1e-5 and whole.max_rel_diff < 1e-5
        return
    position = int(engine.task_tensors(model, task).positions[FAULT_PROMPT])
    for result in (chunked, whole):
        assert result.worst_prompt_index == FAULT_PROMPT
        assert result.worst_prompt == task.prompts[FAULT_PROMPT]
        assert result.worst_position == position
    assert chunked.worst_bridge_logit == pytest.approx(whole.worst_bridge_logit, abs=1e-5)
    if fault != fault:
        # NaN: the row's scale is NaN, so every logit of that prompt counts as infinitely far
        # and the first of them is named; never a pass
        assert chunked.max_rel_diff == whole.max_rel_diff == float("inf")
        assert chunked.max_abs_diff == whole.max_abs_diff == float("inf")
        assert chunked.worst_token_id == whole.worst_token_id == 0
        return
    assert chunked.worst_token_id == whole.worst_token_id == FAULT_TOKEN
    assert chunked.max_abs_diff == pytest.approx(FAULT_LOGIT, abs=1e-5)
    assert chunked.max_abs_diff == pytest.approx(whole.max_abs_diff, abs=1e-6)
    assert chunked.max_rel_diff == pytest.approx(whole.max_rel_diff, rel=1e-5)
    assert chunked.worst_plain_logit == pytest.approx(whole.worst_plain_logit, abs=1e-5)
