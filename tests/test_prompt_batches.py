"""Prompts run in chunks of ``engine.PROMPT_BATCH`` (issue 11): chunked analyses give the
unchunked numbers (up to float summation order) and the model never sees a wider batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from pytest_circuits import cache
from pytest_circuits.analysis import ablation, compare, engine, similarity
from pytest_circuits.models import CircuitModel, load_model, load_pair
from pytest_circuits.tasks import Task, builtin_task

TINY_BATCH = 3
RTOL = 1e-6


@pytest.fixture()
def fresh() -> Iterator[Callable[[str], CircuitModel]]:
    """Loads a model with no memoised clean runs, signatures or cached results, so each side of
    a comparison computes everything under its own PROMPT_BATCH."""
    cache.forget()
    similarity._SHARED.clear()
    yield load_model
    cache.forget()
    similarity._SHARED.clear()


@pytest.fixture()
def task() -> Task:
    return builtin_task("numerals", n_prompts=10)


def _close(a: float, b: float, scale: float = 0.0) -> None:
    """Equal up to float rounding: relative ``RTOL``, or ``RTOL`` of ``scale`` (the clean metric,
    for an ablated metric that a large drop brought near zero)."""
    assert a == pytest.approx(b, rel=RTOL, abs=max(1e-9, RTOL * abs(scale)))


def _sweep_both(
    fresh: Callable[[str], CircuitModel],
    monkeypatch: pytest.MonkeyPatch,
    task: Task,
    **kwargs: Any,
) -> tuple[ablation.SweepResult, ablation.SweepResult]:
    whole = ablation.sweep(fresh("zoo:tiny-teacher"), task, **kwargs)
    monkeypatch.setattr(engine, "PROMPT_BATCH", TINY_BATCH)
    chunked = ablation.sweep(fresh("zoo:tiny-teacher"), task, **kwargs)
    return whole, chunked


def test_chunks_cover_every_prompt_once() -> None:
    assert engine.prompt_chunks(10, 3) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    # a task that fits takes the one-batch path
    assert engine.prompt_chunks(3, 3) == [slice(0, 3)]
    with pytest.raises(ValueError, match="PROMPT_BATCH"):
        engine.prompt_chunks(5, 0)


@pytest.mark.parametrize("ablation_kind", ["mean", "resample", "zero"])
def test_chunked_exact_sweep_equals_the_whole_batch(
    fresh: Callable[[str], CircuitModel],
    monkeypatch: pytest.MonkeyPatch,
    task: Task,
    ablation_kind: str,
) -> None:
    whole, chunked = _sweep_both(fresh, monkeypatch, task, ablation=ablation_kind, seed=3)
    assert chunked.names == whole.names
    _close(chunked.clean_metric, whole.clean_metric)
    # a reference set of several chunks has its means summed in float64 chunk by chunk (one
    # chunk: float32 in one reduction), so an ablated metric differs by the rounding of a mean
    for a, b in zip(chunked.effects, whole.effects, strict=True):
        _close(a.ablated_metric, b.ablated_metric, whole.clean_metric)
    # the ablations do something, so equality is not vacuous
    assert np.abs(whole.drops).max() > 1.0


def test_chunked_attribution_sweep_equals_the_whole_batch(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch, task: Task
) -> None:
    whole, chunked = _sweep_both(fresh, monkeypatch, task, method="attribution")
    for a, b in zip(chunked.effects, whole.effects, strict=True):
        _close(a.ablated_metric, b.ablated_metric, whole.clean_metric)
    assert chunked.estimated_names == whole.estimated_names


def test_chunked_auto_sweep_equals_the_whole_batch(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch, task: Task
) -> None:
    whole, chunked = _sweep_both(fresh, monkeypatch, task, method="auto")
    assert chunked.exact_names == whole.exact_names
    for a, b in zip(chunked.effects, whole.effects, strict=True):
        _close(a.ablated_metric, b.ablated_metric, whole.clean_metric)


def test_chunked_task_performance_equals_the_whole_batch(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch, task: Task
) -> None:
    whole = ablation.measure_task_performance(fresh("zoo:tiny-student"), task)
    monkeypatch.setattr(engine, "PROMPT_BATCH", TINY_BATCH)
    chunked = ablation.measure_task_performance(fresh("zoo:tiny-student"), task)
    assert chunked.n_prompts == whole.n_prompts == 10
    # per-prompt values come from the same rows: float32 logits, so allow rounding only
    np.testing.assert_allclose(chunked.per_prompt, whole.per_prompt, rtol=RTOL, atol=1e-6)
    _close(chunked.mean_logit_diff, whole.mean_logit_diff)
    assert chunked.accuracy == whole.accuracy
    assert chunked.pairwise_accuracy == whole.pairwise_accuracy


def test_chunked_compare_equals_the_whole_batch(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch, task: Task
) -> None:
    whole = compare(load_pair(fresh("zoo:tiny-teacher"), fresh("zoo:tiny-student")), task)
    cache.forget()
    similarity._SHARED.clear()
    monkeypatch.setattr(engine, "PROMPT_BATCH", TINY_BATCH)
    chunked = compare(load_pair(fresh("zoo:tiny-teacher"), fresh("zoo:tiny-student")), task)
    _close(chunked.alignment.score, whole.alignment.score)
    _close(chunked.alignment.mean_similarity, whole.alignment.mean_similarity)
    _close(chunked.compression, whole.compression)
    assert chunked.fan_in_all == whole.fan_in_all
    for side in ("teacher", "student"):
        a, b = getattr(chunked, side), getattr(whole, side)
        # drops are points (100 x relative to the clean metric): float rounding of the reference
        # means, summed by chunk, moves them by about 1e-5 points
        np.testing.assert_allclose(a.sweep.drops, b.sweep.drops, rtol=RTOL, atol=1e-4)


def test_chunked_signatures_equal_the_whole_batch(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch, task: Task
) -> None:
    whole = similarity.signatures(fresh("zoo:tiny-teacher"), task)
    similarity._SHARED.clear()
    monkeypatch.setattr(engine, "PROMPT_BATCH", TINY_BATCH)
    chunked = similarity.signatures(fresh("zoo:tiny-teacher"), task)
    np.testing.assert_allclose(chunked.patterns, whole.patterns, rtol=RTOL, atol=1e-7)
    # several chunks keep no per-token outputs, only digests of them, equal to the one-chunk
    # digests (the same float32 rows in the same order)
    assert chunked.head_outputs is None and chunked.mlp_outputs is None
    assert whole.head_outputs is not None
    assert chunked.head_digests == whole.head_digests and len(whole.head_digests) == 16
    assert chunked.mlp_digests == whole.mlp_digests and len(whole.mlp_digests) == 4
    # eigenvectors have no sign: compare the projectors they span
    for a, b in zip(chunked.mlp_eigenvectors, whole.mlp_eigenvectors, strict=True):
        k = similarity.N_EIGENVECTORS
        np.testing.assert_allclose(
            np.abs(np.sum(a[:, :k] * b[:, :k], axis=0)), np.ones(k), atol=1e-6
        )


def test_no_forward_pass_sees_more_than_prompt_batch_prompts(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory check without timing anything: every capture and every replayed block runs on
    at most PROMPT_BATCH prompts (times the ablations stacked in it) for a 50-prompt task."""
    task = builtin_task("numerals", n_prompts=50)
    monkeypatch.setattr(engine, "PROMPT_BATCH", 4)
    seen: list[int] = []
    capture, run_block = engine.run_capture, engine._run_block

    def spy_capture(model: CircuitModel, tokens: torch.Tensor, **kwargs: Any) -> Any:
        seen.append(int(tokens.shape[0]))
        return capture(model, tokens, **kwargs)

    def spy_block(model: Any, cap: Any, index: int, hidden: torch.Tensor, reps: int) -> Any:
        seen.append(int(hidden.shape[0]) // reps)
        return run_block(model, cap, index, hidden, reps)

    monkeypatch.setattr(engine, "run_capture", spy_capture)
    monkeypatch.setattr(engine, "_run_block", spy_block)
    model = fresh("zoo:tiny-teacher")
    ablation.sweep(model, task, ablation="resample")
    ablation.sweep(model, task, method="attribution", confirm_top_k=2)
    similarity.signatures(model, task)
    assert seen, "the spies saw no forward pass"
    assert max(seen) <= 4
    # and the memo holds one chunk's clean run, not the whole task's
    memo = engine.model_cache(model)
    assert ("clean", task.fingerprint()) not in memo
    span, run = memo[("clean_chunk", task.fingerprint())]
    assert run.capture.batch <= 4


def test_a_large_reference_set_keeps_means_not_activations(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond one chunk the reference set is summed into its means chunk by chunk, and resample
    ablation reruns only the picked reference prompts of the chunk at hand: nothing the engine
    keeps grows with the number of prompts, and the values are the one-chunk values."""
    task = builtin_task("numerals", n_prompts=12)
    whole_model = fresh("zoo:tiny-teacher")
    whole = engine.reference(whole_model, task)
    assert whole.z is not None and whole.z[0].shape[0] == 12  # one chunk: held, as before
    whole_rows = engine.resample_rows(whole_model, task, 5, slice(4, 8))

    monkeypatch.setattr(engine, "PROMPT_BATCH", 4)
    model = fresh("zoo:tiny-teacher")
    ref = engine.reference(model, task)
    assert ref.z is None and ref.mlp_out is None and ref.size == 12
    for layer in range(model.n_layers):
        torch.testing.assert_close(ref.mean_z(layer), whole.mean_z(layer), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ref.mean_mlp(layer), whole.mean_mlp(layer), rtol=1e-6, atol=1e-6)
        assert ref.mean_z(layer).dtype == whole.mean_z(layer).dtype
    # the means are of the corrupted prompts, not zeros or one chunk's
    assert float(ref.mean_mlp(0).abs().max()) > 1e-3
    one_chunk = whole.mlp_out[0][:4].mean(0) if whole.mlp_out is not None else None
    assert one_chunk is not None and not torch.allclose(ref.mean_mlp(0), one_chunk)

    seen: list[int] = []
    capture = engine.run_capture

    def spy(m: CircuitModel, tokens: torch.Tensor, **kwargs: Any) -> Any:
        seen.append(int(tokens.shape[0]))
        return capture(m, tokens, **kwargs)

    monkeypatch.setattr(engine, "run_capture", spy)
    zs, mlps = engine.resample_rows(model, task, 5, slice(4, 8))
    assert seen == [4]  # the four picked reference prompts of this chunk, once
    engine.resample_rows(model, task, 5, slice(4, 8))
    assert seen == [4]  # memoised for the chunk at hand
    for got, want in zip([*zs, *mlps], [*whole_rows[0], *whole_rows[1]], strict=True):
        assert got.shape[0] == 4
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # another seed picks other prompts
    other, _ = engine.resample_rows(model, task, 6, slice(4, 8))
    assert not torch.equal(
        engine.resample_picks(model, task, 5), engine.resample_picks(model, task, 6)
    )
    assert seen == [4, 4] and not torch.allclose(other[0], zs[0])


def test_a_sweep_after_task_performance_does_not_capture_its_first_chunk_again(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = builtin_task("numerals", n_prompts=12)
    monkeypatch.setattr(engine, "PROMPT_BATCH", 4)
    model = fresh("zoo:tiny-teacher")
    seen: list[int] = []
    capture = engine.run_capture

    def spy(m: CircuitModel, tokens: torch.Tensor, **kwargs: Any) -> Any:
        seen.append(int(tokens.shape[0]))
        return capture(m, tokens, **kwargs)

    monkeypatch.setattr(engine, "run_capture", spy)
    ablation.measure_task_performance(model, task)
    assert seen == [4, 4, 4]  # three chunks, each once
    seen.clear()
    ablation.sweep(model, task, ablation="zero", margin=None)
    # chunks 1 and 2 again (only one chunk's capture is ever held), but not chunk 0
    assert seen == [4, 4]


def test_task_performance_holds_one_chunks_capture_at_a_time(
    fresh: Callable[[str], CircuitModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the metrics of a many-chunk task are gathered, no earlier chunk's capture stays
    alive (they once did until the last chunk was done: memory grew with the prompts)."""
    import gc
    import weakref

    task = builtin_task("numerals", n_prompts=12)
    monkeypatch.setattr(engine, "PROMPT_BATCH", 4)
    model = fresh("zoo:tiny-teacher")
    alive: list[weakref.ref[Any]] = []
    capture = engine.run_capture
    most = 0

    def spy(m: CircuitModel, tokens: torch.Tensor, **kwargs: Any) -> Any:
        nonlocal most
        gc.collect()
        most = max(most, sum(ref() is not None for ref in alive))
        result = capture(m, tokens, **kwargs)
        alive.append(weakref.ref(result))
        return result

    monkeypatch.setattr(engine, "run_capture", spy)
    ablation.measure_task_performance(model, task)
    assert len(alive) == 3
    # when each capture starts, at most the one memoised chunk is alive (dropped just after)
    assert most <= 1


@pytest.mark.parametrize("text", ["abc", "-3"])
def test_a_bad_prompt_batch_in_the_environment_is_refused_by_name(text: str) -> None:
    """The variable is read when the engine is imported: a value that is not a whole number
    >= 1 stops there with an error naming the variable, not a bare int() failure later."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTEST_CIRCUITS_PROMPT_BATCH": text}
    run = subprocess.run(
        [sys.executable, "-c", "import pytest_circuits.analysis.engine"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode != 0
    assert "GateConfigError: PYTEST_CIRCUITS_PROMPT_BATCH=" in run.stderr


def test_a_prompt_batch_in_the_environment_is_read() -> None:
    import os
    import subprocess
    import sys

    good = subprocess.run(
        [sys.executable, "-c",
         "from pytest_circuits.analysis import engine; print(engine.PROMPT_BATCH)"],
        env={**os.environ, "PYTEST_CIRCUITS_PROMPT_BATCH": " 64 "},
        capture_output=True, text=True, timeout=300,
    )
    assert good.stdout.strip() == "64"
