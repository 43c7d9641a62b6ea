"""The ablation engine against independent computations: plain Hugging Face forwards with edited
weights, plain bridge hooks on full forwards, and hand-written formulas.

Every model here is a tiny random one (2 layers, 4 heads, d_model 32, float32) built offline in
``conftest.py``; the GPT-2 (fused Conv1D projections) and the Llama (grouped-query attention,
RMSNorm, rotary positions) run the same tests. Logits and logit differences must agree to 1e-5.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import D_HEAD, N_HEADS, N_LAYERS, mean_logit_diff, per_prompt_logit_diff, swapped

from pytest_circuits.analysis import engine
from pytest_circuits.analysis.ablation import (
    SweepResult,
    TaskPerformance,
    require_valid_task,
    spearman,
    sweep,
)
from pytest_circuits.analysis.ablation import (
    measure_task_performance as task_performance,
)
from pytest_circuits.components import Component
from pytest_circuits.errors import ComponentError, InvalidTaskError, NonFiniteError
from pytest_circuits.models import CircuitModel, load_model
from pytest_circuits.tasks import Task

TOL = 1e-5
FAMILIES = ("gpt2", "llama")
HEADS = [(layer, head) for layer in range(N_LAYERS) for head in range(N_HEADS)]
HEAD_NAMES = [f"L{layer}H{head}" for layer, head in HEADS]
#: Every component in residual-stream order: a layer's heads, then its MLP.
ALL_NAMES = [
    name
    for layer in range(N_LAYERS)
    for name in [f"L{layer}H{head}" for head in range(N_HEADS)] + [f"MLP{layer}"]
]


# --------------------------------------------------------------------------- fixtures and oracles


@dataclass
class Case:
    """One model, its untouched Hugging Face twin, a task it performs, and the task encoded by
    hand (the bridge's tokenizer called directly, not the engine's encoder)."""

    family: str
    model: CircuitModel
    hf: Any
    task: Task
    tokens: torch.Tensor
    positions: torch.Tensor
    correct: torch.Tensor
    distractor: torch.Tensor
    corrupted: torch.Tensor


def encode_by_hand(model: CircuitModel, task: Task) -> dict[str, torch.Tensor]:
    tok = model.tokenizer
    tokens = torch.tensor([tok(p)["input_ids"] for p in task.prompts])
    return {
        "tokens": tokens,
        "positions": torch.full((len(task.prompts),), tokens.shape[1] - 1),
        "correct": torch.tensor([tok.convert_tokens_to_ids(a.strip()) for a in task.correct]),
        "distractor": torch.tensor(
            [tok.convert_tokens_to_ids(a.strip()) for a in task.distractors]
        ),
        "corrupted": torch.tensor([tok(p)["input_ids"] for p in task.corrupted]),
    }


@pytest.fixture(params=FAMILIES)
def case(request: pytest.FixtureRequest) -> Case:
    family = request.param
    model = request.getfixturevalue(family)
    task = request.getfixturevalue(f"{family}_task")
    return Case(
        family=family,
        model=model,
        hf=request.getfixturevalue(f"{family}_hf"),
        task=task,
        **encode_by_hand(model, task),
    )


def hf_metric(hf: Any, case: Case) -> float:
    """Mean logit difference from a plain Hugging Face forward over the full prompts."""
    with torch.no_grad():
        logits = hf(case.tokens).logits
    return mean_logit_diff(logits, case.positions, case.correct, case.distractor)


def bridge_metric(case: Case, hooks: Sequence[tuple[str, Any]] = ()) -> float:
    """Mean logit difference from a full bridge forward with plain hooks (no engine code)."""
    with torch.no_grad(), case.model.bridge.hooks(fwd_hooks=list(hooks)):
        logits = case.model.bridge(case.tokens)
    return mean_logit_diff(logits, case.positions, case.correct, case.distractor)


def head_slice(head: int) -> slice:
    return slice(head * D_HEAD, (head + 1) * D_HEAD)


def w_o(hf: Any, family: str, layer: int, head: int) -> torch.Tensor:
    """Head ``head``'s output projection as [d_head, d_model] (z_h @ W_O[h] is its output)."""
    if family == "gpt2":  # Conv1D weight is [d_in, d_out]: the head's rows
        return hf.transformer.h[layer].attn.c_proj.weight[head_slice(head), :]
    return hf.model.layers[layer].self_attn.o_proj.weight[:, head_slice(head)].T  # [out, in]


def zero_head_weights(hf: Any, family: str, layer: int, head: int) -> None:
    with torch.no_grad():
        if family == "gpt2":
            hf.transformer.h[layer].attn.c_proj.weight[head_slice(head), :] = 0.0
        else:
            hf.model.layers[layer].self_attn.o_proj.weight[:, head_slice(head)] = 0.0


def mlp_module(hf: Any, family: str, layer: int) -> Any:
    return hf.transformer.h[layer].mlp if family == "gpt2" else hf.model.layers[layer].mlp


@contextmanager
def mlp_output_zeroed(hf: Any, family: str, layer: int) -> Iterator[None]:
    handle = mlp_module(hf, family, layer).register_forward_hook(
        lambda module, args, output: torch.zeros_like(output)
    )
    try:
        yield
    finally:
        handle.remove()


def corrupted_cache(case: Case) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        _, cache = case.model.bridge.run_with_cache(case.corrupted)
    return cache


def patch_hook(comp: Component, value: torch.Tensor) -> tuple[str, Any]:
    """A plain bridge hook writing ``value`` into the component's activation."""

    def patch(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act = act.clone()
        if comp.kind == "head":
            act[:, :, comp.order] = value
        else:
            act[:] = value
        return act

    return engine.component_hook(comp), patch


_SWEEPS: dict[tuple[Any, ...], SweepResult] = {}


def cached_sweep(model: CircuitModel, task: Task, **kwargs: Any) -> SweepResult:
    """``sweep`` memoised for this module: full sweeps are deterministic, and several tests
    read the same one (the shared models are never modified)."""
    key = (id(model), task.fingerprint(), tuple(sorted(kwargs.items())))
    if key not in _SWEEPS:
        _SWEEPS[key] = sweep(model, task, **kwargs)
    return _SWEEPS[key]


def metrics_of(result: SweepResult) -> np.ndarray:
    return np.array([e.ablated_metric for e in result.effects])


# --------------------------------------------------------------------------- 1. clean forward


def test_bridge_forward_is_the_plain_hugging_face_forward(case: Case) -> None:
    with torch.no_grad():
        bridged = case.model.bridge(case.tokens)
        plain = case.hf(case.tokens).logits
    torch.testing.assert_close(bridged, plain, atol=TOL, rtol=0)


def test_engine_encodes_the_task_like_the_tokenizer(case: Case) -> None:
    tensors = engine.task_tensors(case.model, case.task)
    assert torch.equal(tensors.tokens, case.tokens)
    assert torch.equal(tensors.positions, case.positions)
    assert torch.equal(tensors.correct, case.correct)
    assert torch.equal(tensors.distractor, case.distractor)
    assert torch.equal(tensors.corrupted, case.corrupted)


def test_prediction_logits_are_the_full_forward_rows_at_the_positions(case: Case) -> None:
    seq = case.tokens.shape[1]
    positions = torch.tensor([seq - 1, 3, 0, 5, seq - 2, 7])[: case.tokens.shape[0]]
    capture = engine.run_capture(case.model, case.tokens)
    with torch.no_grad():
        got = engine.prediction_logits(case.model, capture.final, positions)
        full = case.model.bridge(case.tokens)
    want = full[torch.arange(len(positions)), positions]
    assert got.shape == (len(positions), full.shape[-1])
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_task_performance_matches_a_full_forward_by_hand(case: Case) -> None:
    with torch.no_grad():
        logits = case.hf(case.tokens).logits
    diffs = per_prompt_logit_diff(logits, case.positions, case.correct, case.distractor)
    last = logits[torch.arange(len(case.positions)), case.positions]
    perf = task_performance(case.model, case.task)
    np.testing.assert_allclose(perf.per_prompt, diffs.double().numpy(), atol=TOL, rtol=0)
    assert perf.mean_logit_diff == pytest.approx(float(diffs.double().mean()), abs=TOL)
    assert perf.accuracy == pytest.approx(float((last.argmax(-1) == case.correct).double().mean()))
    assert perf.pairwise_accuracy == pytest.approx(float((diffs > 0).double().mean()))
    assert perf.n_prompts == len(case.task.prompts)


def test_tasks_of_the_fixtures_are_performed(case: Case) -> None:
    """The shared tasks are valid ones: every prompt prefers the correct answer by > 0.1."""
    perf = task_performance(case.model, case.task)
    assert min(perf.per_prompt) > 0.1
    assert perf.pairwise_accuracy == 1.0


def test_clean_run_refuses_nan_logits_outside_the_answer_tokens(
    gpt2_dir: Path, gpt2_task: Task
) -> None:
    """A hook poisons one vocabulary entry that is neither answer: the logit differences stay
    finite, so only a check over every vocabulary entry at the prediction rows catches it."""
    model = load_model(gpt2_dir, device="cpu")  # its own memo: the shared model stays clean
    tensors = engine.task_tensors(model, gpt2_task)
    answers = set(tensors.correct.tolist()) | set(tensors.distractor.tolist())
    poisoned = next(i for i in range(model.hf_model.config.vocab_size) if i not in answers)

    def poison(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., poisoned] = float("nan")
        return output

    handle = model.hf_model.lm_head.register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteError) as info:
            engine.clean_run(model, gpt2_task)
    finally:
        handle.remove()
    message = str(info.value)
    assert message.startswith(f"{model.name}: the clean run of task '{gpt2_task.name}'")
    n = len(gpt2_task.prompts)
    assert f"({n} NaN)" in message and f"{n} of {n} prompts, first prompt 0" in message
    # nothing half-made was memoised: without the hook the clean run is the plain forward's
    clean = engine.clean_run(model, gpt2_task)
    assert torch.isfinite(clean.logit_diff).all()


def test_check_finite_logits_names_the_counts_and_first_bad_prompt() -> None:
    logits = torch.zeros(4, 10)
    engine.check_finite_logits(logits, "m", "the clean run of task 't'")  # finite: silent
    logits[2, 7] = float("inf")
    logits[3, 1] = float("nan")
    logits[3, 2] = float("-inf")
    with pytest.raises(NonFiniteError) as info:
        engine.check_finite_logits(logits, "student", "an ablated replay")
    assert str(info.value).startswith(
        "student: an ablated replay produced non-finite logits (1 NaN, 2 infinite) at the "
        "prediction positions (2 of 4 prompts, first prompt 2)"
    )


# --------------------------------------------------------------------------- 2. head ablation


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_zero_head_equals_zeroed_output_projection(case: Case, layer: int) -> None:
    """Every head of the layer: the sweep's ablated metric is a plain Hugging Face forward of a
    copy whose output projection has only that head's slice zeroed (GPT-2 Conv1D rows, Llama
    o_proj columns)."""
    names = [f"L{layer}H{head}" for head in range(N_HEADS)]
    result = sweep(case.model, case.task, ablation="zero", components=names)
    for head in range(N_HEADS):
        edited = copy.deepcopy(case.hf)
        zero_head_weights(edited, case.family, layer, head)
        got = result.effect(f"L{layer}H{head}").ablated_metric
        assert got == pytest.approx(hf_metric(edited, case), abs=TOL), f"L{layer}H{head}"
        # the ablation did something measurable, so agreement is not that of two no-ops
        assert abs(got - result.clean_metric) > 10 * TOL


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_zero_head_hook_changes_only_that_heads_z(case: Case, layer: int) -> None:
    name = engine.z_hook(layer)
    batch = case.tokens.shape[0]
    with torch.no_grad():
        clean = engine.run_capture(case.model, case.tokens, cache_names=[name]).cache[name]
    # z is per query head, also under grouped-query attention (4 query heads, 2 kv heads)
    assert clean.shape == (*case.tokens.shape, N_HEADS, D_HEAD)
    for head in range(N_HEADS):
        hooks = engine.ablation_hooks([Component.head_at(layer, head)], [None], batch)
        with torch.no_grad():
            capture = engine.run_capture(case.model, case.tokens, cache_names=[name], hooks=hooks)
        ablated = capture.cache[name]
        others = [h for h in range(N_HEADS) if h != head]
        assert torch.equal(ablated[:, :, others], clean[:, :, others]), head
        assert torch.count_nonzero(ablated[:, :, head]) == 0, head
        assert torch.count_nonzero(clean[:, :, head]) > 0, head


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_zero_head_removes_exactly_its_output_from_attn_out(case: Case, layer: int) -> None:
    """hook_attn_out changes by -(z_h @ W_O[h]) and nothing else."""
    names = [engine.z_hook(layer), f"blocks.{layer}.hook_attn_out"]
    batch = case.tokens.shape[0]
    with torch.no_grad():
        clean = engine.run_capture(case.model, case.tokens, cache_names=names).cache
    for head in range(N_HEADS):
        hooks = engine.ablation_hooks([Component.head_at(layer, head)], [None], batch)
        with torch.no_grad():
            ablated = engine.run_capture(
                case.model, case.tokens, cache_names=names, hooks=hooks
            ).cache
            contribution = clean[names[0]][:, :, head] @ w_o(case.hf, case.family, layer, head)
        change = ablated[names[1]] - clean[names[1]]
        torch.testing.assert_close(change, -contribution, atol=TOL, rtol=0, msg=f"head {head}")
        assert contribution.abs().max() > 100 * TOL


# --------------------------------------------------------------------------- 3. MLP ablation


@pytest.mark.parametrize("layer", range(N_LAYERS))
def test_zero_mlp_equals_hugging_face_forward_with_mlp_output_zeroed(
    case: Case, layer: int
) -> None:
    result = sweep(case.model, case.task, ablation="zero", components=[f"MLP{layer}"])
    with mlp_output_zeroed(case.hf, case.family, layer):
        want = hf_metric(case.hf, case)
    assert result.effects[0].ablated_metric == pytest.approx(want, abs=TOL)
    assert abs(want - result.clean_metric) > 10 * TOL


# --------------------------------------------------------------------------- 4. mean / resample


def test_mean_ablation_equals_hand_patched_reference_mean(case: Case) -> None:
    """For every component: its activation replaced by the per-position mean over the
    corrupted prompts (run_with_cache on the bridge, patched with a plain hook)."""
    cache = corrupted_cache(case)
    result = cached_sweep(case.model, case.task, ablation="mean", ablations_per_forward=1)
    for effect in result.effects:
        comp = Component.parse(effect.name)
        mean = cache[engine.component_hook(comp)].mean(0)  # [seq, heads, d_head] | [seq, d]
        value = mean[:, comp.order] if comp.kind == "head" else mean
        want = bridge_metric(case, [patch_hook(comp, value)])
        assert effect.ablated_metric == pytest.approx(want, abs=TOL), effect.name


def test_resample_ablation_equals_hand_patched_seeded_draws(case: Case) -> None:
    """Resample: prompt i gets reference prompt picks[i]'s activation, picks drawn with
    ``torch.randint(0, m, (n,), generator=torch.Generator().manual_seed(seed))``."""
    seed = 7
    cache = corrupted_cache(case)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(case.task.corrupted), (len(case.task),), generator=generator)
    assert len(set(picks.tolist())) > 1  # the draws really mix reference prompts
    result = cached_sweep(case.model, case.task, ablation="resample", seed=seed)
    for effect in result.effects:
        comp = Component.parse(effect.name)
        drawn = cache[engine.component_hook(comp)][picks]
        value = drawn[:, :, comp.order] if comp.kind == "head" else drawn
        want = bridge_metric(case, [patch_hook(comp, value)])
        assert effect.ablated_metric == pytest.approx(want, abs=TOL), effect.name


def test_resample_ablation_is_reproducible_per_seed_and_varies_across_seeds(case: Case) -> None:
    first = metrics_of(cached_sweep(case.model, case.task, ablation="resample", seed=3))
    again = metrics_of(sweep(case.model, case.task, ablation="resample", seed=3))
    other = metrics_of(cached_sweep(case.model, case.task, ablation="resample", seed=7))
    assert np.array_equal(first, again)
    assert np.abs(first - other).max() > 10 * TOL


# --------------------------------------------------------------------------- 5. replay engine


def test_exact_sweep_equals_naive_full_forward_loop(case: Case) -> None:
    """The replay (blocks above the component only, prediction rows only) changes nothing: one
    full forward per component with the engine's own ablation hook gives the same numbers. (The
    mean and resample tests above are the same loop with hand-written hooks.)"""
    ablation = "zero"
    result = cached_sweep(case.model, case.task, ablation=ablation, ablations_per_forward=1)
    assert result.names == ALL_NAMES
    batch = case.tokens.shape[0]
    for effect in result.effects:
        comp = Component.parse(effect.name)
        value = engine.replacement(case.model, case.task, comp, ablation)
        naive = bridge_metric(case, engine.ablation_hooks([comp], [value], batch))
        assert effect.ablated_metric == pytest.approx(naive, rel=TOL, abs=1e-6), effect.name
        assert effect.method == "exact"


@pytest.mark.parametrize("per_forward", [3, 5])
def test_stacked_ablations_give_the_numbers_of_one_per_forward(
    case: Case, per_forward: int
) -> None:
    """Several ablations stacked along the batch (heads and the MLP of a layer mixed in one
    chunk for 3 and 5) give what one ablation per replay gives."""
    one = metrics_of(cached_sweep(case.model, case.task, ablation="mean", ablations_per_forward=1))
    stacked = metrics_of(
        sweep(case.model, case.task, ablation="mean", ablations_per_forward=per_forward)
    )
    np.testing.assert_allclose(stacked, one, rtol=1e-6, atol=1e-7)


def test_ablations_per_forward_below_one_is_refused(gpt2: CircuitModel, gpt2_task: Task) -> None:
    with pytest.raises(ValueError, match="ablations_per_forward"):
        sweep(gpt2, gpt2_task, ablations_per_forward=-1)


# --------------------------------------------------------------------------- 6. attribution


def gradients_by_hand(case: Case) -> tuple[float, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The clean metric and, for every z and MLP output, (activation, dM/d activation) from one
    full bridge forward and backward: the residual entering block 0 becomes a leaf so the
    activations after it carry gradients (the model's own weights do not require grad)."""
    names = [engine.z_hook(i) for i in range(N_LAYERS)]
    names += [engine.mlp_out_hook(i) for i in range(N_LAYERS)]
    kept: dict[str, torch.Tensor] = {}

    def make_leaf(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act.detach().requires_grad_(True)

    def keeper(name: str) -> Any:
        def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act.retain_grad()
            kept[name] = act
            return act

        return keep

    hooks = [("blocks.0.hook_resid_pre", make_leaf)] + [(n, keeper(n)) for n in names]
    with torch.enable_grad(), case.model.bridge.hooks(fwd_hooks=hooks):
        logits = case.model.bridge(case.tokens)
        metric = per_prompt_logit_diff(logits, case.positions, case.correct, case.distractor).mean()
        metric.backward()
    grads = {name: (act.detach(), act.grad) for name, act in kept.items()}
    return float(metric.detach().double()), grads


def test_attribution_is_the_first_order_estimate_computed_by_hand(case: Case) -> None:
    """Attribution estimate = M(a) + sum((a' - a) * dM/da) over positions and features of the
    component's slice, a' being the reference mean."""
    result = cached_sweep(case.model, case.task, ablation="mean", method="attribution")
    clean, grads = gradients_by_hand(case)
    cache = corrupted_cache(case)
    assert clean == pytest.approx(result.clean_metric, abs=TOL)
    for effect in result.effects:
        comp = Component.parse(effect.name)
        name = engine.component_hook(comp)
        act, grad = grads[name]
        mean = cache[name].mean(0)
        if comp.kind == "head":
            act, grad, mean = act[:, :, comp.order], grad[:, :, comp.order], mean[:, comp.order]
        want = clean + float(((mean - act) * grad).double().sum())
        assert effect.ablated_metric == pytest.approx(want, rel=TOL, abs=TOL), effect.name
        assert effect.method == "attribution"


def test_attribution_tracks_exact_when_ablations_are_small(
    gpt2_smooth: CircuitModel, gpt2_smooth_task: Task
) -> None:
    """On a model with GPT-2's small initialisation mean ablation moves the metric by ~1e-3, the
    regime where a first-order estimate should be close (observed: Spearman 1.0, worst error 3%
    of the largest effect)."""
    exact = sweep(gpt2_smooth, gpt2_smooth_task, ablation="mean")
    approx = sweep(gpt2_smooth, gpt2_smooth_task, ablation="mean", method="attribution")
    clean = exact.clean_metric
    exact_effect = metrics_of(exact) - clean
    approx_effect = metrics_of(approx) - clean
    assert approx.clean_metric == exact.clean_metric
    assert spearman(exact_effect, approx_effect) > 0.9
    assert np.abs(approx_effect - exact_effect).max() <= 0.1 * np.abs(exact_effect).max()


@pytest.mark.parametrize("k", [1, 3])
def test_confirm_top_k_measures_exactly_the_k_most_influential_exactly(
    gpt2: CircuitModel, gpt2_task: Task, k: int
) -> None:
    screen = cached_sweep(gpt2, gpt2_task, ablation="mean", method="attribution")
    exact = cached_sweep(gpt2, gpt2_task, ablation="mean", ablations_per_forward=1)
    confirmed = sweep(gpt2, gpt2_task, ablation="mean", method="attribution", confirm_top_k=k)
    clean = screen.clean_metric
    ranked = sorted(screen.effects, key=lambda e: -abs(e.ablated_metric - clean))
    top = {e.name for e in ranked[:k]}
    assert {e.name for e in confirmed.effects if e.method == "exact"} == top
    for effect in confirmed.effects:
        if effect.name in top:
            assert effect.ablated_metric == exact.effect(effect.name).ablated_metric
        else:
            assert effect.method == "attribution"
            assert effect.ablated_metric == screen.effect(effect.name).ablated_metric
    assert confirmed.confirm_top_k == k


# --------------------------------------------------------------------------- 7. invalid task


def test_sweep_refuses_a_task_the_model_gets_wrong(gpt2: CircuitModel, gpt2_task: Task) -> None:
    wrong = swapped(gpt2_task)
    clean = -task_performance(gpt2, gpt2_task).mean_logit_diff
    with pytest.raises(InvalidTaskError) as info:
        sweep(gpt2, wrong, ablation="zero")
    message = str(info.value)
    assert f"{clean:.3f}" in message
    assert "> 0.1" in message
    assert gpt2.name in message


def test_sweep_refuses_when_clean_metric_is_not_above_a_custom_margin(
    gpt2: CircuitModel, gpt2_task: Task
) -> None:
    clean = task_performance(gpt2, gpt2_task).mean_logit_diff
    with pytest.raises(InvalidTaskError, match=r"> 50\.0") as info:
        sweep(gpt2, gpt2_task, margin=50.0)
    assert f"{clean:.3f}" in str(info.value)


def _perf(value: float, model: str = "m") -> TaskPerformance:
    return TaskPerformance(
        model=model,
        task="t",
        mean_logit_diff=value,
        per_prompt=(value,),
        accuracy=1.0,
        pairwise_accuracy=1.0,
    )


def test_clean_metric_equal_to_the_margin_is_invalid() -> None:
    with pytest.raises(InvalidTaskError, match="0.250"):
        require_valid_task([_perf(0.25)], margin=0.25)


def test_clean_metric_just_above_the_margin_is_valid() -> None:
    require_valid_task([_perf(0.2500001)], margin=0.25)


def test_invalid_task_names_the_failing_model_among_several() -> None:
    with pytest.raises(InvalidTaskError) as info:
        require_valid_task([_perf(3.0, "teacher"), _perf(-1.5, "student")], margin=0.1)
    message = str(info.value)
    assert "teacher clean logit difference is 3.000" in message
    assert "student clean logit difference is -1.500" in message
    assert "student does not perform this task" in message


# --------------------------------------------------------------------------- 8. component choice


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("heads", HEAD_NAMES),
        ("mlps", ["MLP0", "MLP1"]),
        (["MLP1", "L0H2", "L0H2", "L1H0"], ["L0H2", "L1H0", "MLP1"]),
        ("L1H3", ["L1H3"]),
    ],
    ids=["heads", "mlps", "explicit-deduplicated-sorted", "single-name"],
)
def test_sweep_ablates_the_selected_components(
    gpt2: CircuitModel, gpt2_task: Task, spec: Any, names: list[str]
) -> None:
    result = sweep(gpt2, gpt2_task, ablation="zero", components=spec)
    assert result.names == [Component.parse(n).name for n in names]
    assert [e.name for e in result.effects] == names


def test_components_sort_in_residual_stream_order() -> None:
    order = sorted(Component.parse(n) for n in ["MLP0", "L1H0", "L0H3", "MLP1", "L0H0"])
    assert [c.name for c in order] == ["L0H0", "L0H3", "MLP0", "L1H0", "MLP1"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (["L9H0"], ["L9H0", "2 layers (0..1)"]),
        (["L0H4"], ["L0H4", "4 heads per layer (0..3)"]),
        (["MLP2"], ["MLP2", "2 layers (0..1)"]),
        (["X3"], ["'X3'", "L<layer>H<head>", "MLP<layer>"]),
        ("everything", ["'everything'", "L<layer>H<head>"]),
        ([], ["no components selected"]),
    ],
    ids=[
        "layer-out-of-range",
        "head-out-of-range",
        "mlp-out-of-range",
        "malformed",
        "unknown-keyword",
        "empty",
    ],
)
def test_bad_component_names_raise_component_error(
    gpt2: CircuitModel, gpt2_task: Task, spec: Any, expected: list[str]
) -> None:
    with pytest.raises(ComponentError) as info:
        sweep(gpt2, gpt2_task, ablation="zero", components=spec)
    for text in expected:
        assert text in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"ablation": "shuffle"}, "zero, mean, resample"),
        ({"method": "guess"}, "'exact', 'attribution'"),
    ],
    ids=["ablation", "method"],
)
def test_unknown_ablation_or_method_is_refused(
    gpt2: CircuitModel, gpt2_task: Task, kwargs: dict[str, str], expected: str
) -> None:
    with pytest.raises(ValueError, match=expected):
        sweep(gpt2, gpt2_task, **kwargs)


# --------------------------------------------------------------------------- 9. results


def test_sweep_result_round_trips_through_json(gpt2: CircuitModel, gpt2_task: Task) -> None:
    result = sweep(gpt2, gpt2_task, ablation="mean", method="attribution", confirm_top_k=2)
    text = json.dumps(result.to_dict())
    again = SweepResult.from_dict(json.loads(text))
    assert again.to_dict() == result.to_dict()
    assert again.effects == result.effects
    assert again.performance == result.performance
    assert again.fingerprint == result.fingerprint
    assert again.fingerprint.key() == result.fingerprint.key()


def test_effect_percentages_follow_the_papers_formulas(case: Case) -> None:
    """retained = 100 M_abl / M_clean; drop = 100 - retained (unclamped, as the paper quotes
    single components); the brittleness m_i = 100 - clamp(retained, 0, 100);
    influence = |100 (1 - M_abl / M_clean)|. Zero ablation of these models
    has effects above and below the clean metric, and the Llama has a flipped answer."""
    result = cached_sweep(case.model, case.task, ablation="zero", ablations_per_forward=1)
    clean = result.clean_metric
    ablated = metrics_of(result)
    retained = 100.0 * ablated / clean
    for effect, kept, value in zip(result.effects, retained, ablated, strict=True):
        assert effect.retained == pytest.approx(kept, rel=1e-12)
        assert effect.drop == pytest.approx(100.0 - kept, rel=1e-12)
        assert effect.influence == pytest.approx(abs(100.0 * (1.0 - value / clean)), rel=1e-12)
    np.testing.assert_allclose(result.drops, [e.drop for e in result.effects])
    np.testing.assert_allclose(
        result.clamped_drops, [100.0 - min(max(k, 0.0), 100.0) for k in retained], rtol=1e-12
    )
    np.testing.assert_allclose(result.influences, [e.influence for e in result.effects])
    assert (retained > 100).any()  # the formulas were exercised where an ablation helped


def test_flipped_answer_costs_over_100_and_clamps_to_100_for_brittleness(
    llama: CircuitModel, llama_task: Task
) -> None:
    result = cached_sweep(llama, llama_task, ablation="zero", ablations_per_forward=1)
    flipped = [e for e in result.effects if e.ablated_metric < 0]
    assert flipped, "the tiny Llama was expected to flip its answer when MLP0 is zeroed"
    for effect in flipped:
        assert effect.retained < 0
        assert effect.drop == pytest.approx(100.0 - effect.retained)
        assert effect.drop > 100.0
        assert effect.influence == pytest.approx(100.0 - effect.retained)
    clamped = dict(zip(result.names, result.clamped_drops, strict=True))
    assert all(clamped[e.name] == 100.0 for e in flipped)
    assert result.brittleness().worst_drop == 100.0


def test_sweep_result_records_how_it_was_measured(gpt2: CircuitModel, gpt2_task: Task) -> None:
    result = cached_sweep(gpt2, gpt2_task, ablation="resample", seed=7)
    fp = result.fingerprint
    assert (fp.analysis, fp.ablation, fp.method, fp.seed) == ("sweep", "resample", "exact", 7)
    assert (fp.task, fp.task_sha256) == (gpt2_task.name, gpt2_task.fingerprint())
    assert (fp.n_prompts, fp.n_reference) == (len(gpt2_task.prompts), len(gpt2_task.corrupted))
    assert (fp.dtype, fp.device_kind) == ("float32", "cpu")
    assert result.model.weights_sha256 == gpt2.weights_fingerprint
    assert result.clean_metric == task_performance(gpt2, gpt2_task).mean_logit_diff


def test_worst_lists_the_largest_drops_first(gpt2: CircuitModel, gpt2_task: Task) -> None:
    result = cached_sweep(gpt2, gpt2_task, ablation="zero", ablations_per_forward=1)
    worst = result.worst(3)
    assert [e.drop for e in worst] == sorted(result.drops, reverse=True)[:3]
    with pytest.raises(KeyError, match="L7H0"):
        result.effect("L7H0")
