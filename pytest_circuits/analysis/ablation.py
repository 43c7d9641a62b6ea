"""Single-component ablation sweeps: exact (replayed), attribution (first-order) and auto
(screened, then exact wherever a gate's verdict or its blamed components could depend on it)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from .. import metrics, progress
from ..components import Component, select_components
from ..config import context
from ..config.options import ANALYSIS_METHODS, AUTO_SAMPLE_MIN_LAYERS, AUTO_SAMPLE_PROMPTS
from ..errors import InvalidTaskError, NonFiniteError
from ..identity import ModelInfo
from ..models import CircuitModel
from ..results.fingerprint import MethodFingerprint, library_versions
from ..results.sweep import (  # the result types' home (torch-free); importable from here too
    DEFAULT_DROP_THRESHOLDS,  # noqa: F401
    DEFAULT_MARGIN,
    DEFAULT_TOP_K,  # noqa: F401
    ComponentEffect,
    GateThresholds,
    Screening,
    SweepConfigError,
    SweepResult,
    TaskPerformance,
)
from ..tasks import Task, resolve_task
from . import engine

METHODS = ANALYSIS_METHODS

#: An auto sweep bounds an unconfirmed head's exact drop by its screened drop plus or minus
#: ``SCREEN_SAFETY * rate * scale + SCREEN_FLOOR`` points (see :class:`Screening`): ``scale`` is
#: the head's prompt mass (sum over prompts of |its first-order change on that prompt|, in drop
#: points) plus ``SCREEN_MASS_EPS`` of the mean over the swept heads, and ``rate`` the largest
#: error per unit of scale seen in its layer, but at least ``SCREEN_MODEL_SHARE`` of the largest
#: seen in any layer. Chosen with ``benchmarks/auto_bounds.py`` on saved exact sweeps of the zoo,
#: 57 random GPT-2 sweeps, the GPT-2-small shape and SmolLM2-135M (IOI, mean and zero ablation):
#: no kept estimate lay outside its band, the worst used 0.50 of it (SmolLM2's L5H6, screened
#: 0.09, exact 2.27 points), so the margin is 2x on the data seen; with one scale per layer (the
#: rule before) 31 of SmolLM2's estimates lay outside, up to 6.6 times. The floor covers a
#: layer whose observed errors happen to be near 0.
SCREEN_SAFETY = 4.0
SCREEN_FLOOR = 0.25
SCREEN_MODEL_SHARE = 0.3
SCREEN_MASS_EPS = 0.05

#: On a model of at least ``SAMPLE_MIN_LAYERS`` layers and a task of at least twice
#: ``SAMPLE_PROMPTS`` prompts (``config.options``), auto calibrates the screen on a sample: the
#: first ``SAMPLE_PROMPTS`` prompts, on which each layer's heads are ablated jointly and every MLP
#: alone (exact replays of that many prompts, about ``SAMPLE_PROMPTS / n`` of a full replay
#: each). An MLP is then a bounded estimate too (its own sampled error rate, see
#: :class:`Screening`), measured on every prompt only where a verdict or the top-k could depend
#: on it. On a shallower model (or a shorter task) every MLP is measured and each layer's heads
#: are ablated jointly on every prompt, as before: there all of that costs about as much as the
#: screen, and the small models are where screens are least linear. Measured with
#: ``benchmarks/count_sweep_work.py --smollm2`` (figures in benchmarks/README.md).
SAMPLE_PROMPTS = AUTO_SAMPLE_PROMPTS
SAMPLE_MIN_LAYERS = AUTO_SAMPLE_MIN_LAYERS
#: With a sampled calibration, a layer's joint error on the sample, scaled up to the whole task,
#: is added to the band of each of its heads (it could be any one head's: SmolLM2's L16H0,
#: screened -1.5 points, exact 20.1, carries nearly all of layer 16's), and a layer or an MLP
#: inherits this share of the model's worst rate (each has direct evidence of its own there).
#: Where that floor would send more of a layer's heads to a full replay than ablating each of
#: them alone on the sample costs, each is, and the floor gives way to each head's own sampled
#: rate: on SmolLM2 (IOI, default thresholds) layers 16, 17, 20, 23 and 29, L16H0 keeping a
#: band that reaches the tolerance and the other heads narrow ones; 25 values measured
#: exactly instead of 45, 14.8 FE instead of 18.8, every verdict and band as exact.
SAMPLED_MODEL_SHARE = 0.1


class OutOfMemoryRetryWarning(UserWarning):
    """Stacked ablations ran out of accelerator memory and the stack was halved."""


def model_info(model: CircuitModel) -> ModelInfo:
    """``model.describe()`` as a ModelInfo, whether it already returns one or a plain dict."""
    described: Any = model.describe()
    return described if isinstance(described, ModelInfo) else ModelInfo.from_dict(described)


def measure_task_performance(model: CircuitModel, task: Task) -> TaskPerformance:
    """Clean logit difference (per prompt and mean), accuracy and the mean probability of the
    correct answer of ``model`` on ``task``.

    Only the prediction position is unembedded. Raises NonFiniteError when any logit there is
    NaN or infinite, over the whole vocabulary (``engine.clean_run`` checks every clean run with
    ``engine.check_finite_logits`` before it is memoised): a NaN outside the two answer tokens
    leaves the logit difference finite but makes top-1 accuracy meaningless.
    """
    logit_diff, top1_correct = engine.clean_metrics(model, task)
    answer_prob = engine.clean_answer_probs(model, task)
    diffs = logit_diff.double().cpu().numpy()
    return TaskPerformance(
        model=model.name,
        task=task.name,
        mean_logit_diff=float(diffs.mean()),
        per_prompt=tuple(float(x) for x in diffs),
        accuracy=float(top1_correct.float().mean()),
        pairwise_accuracy=float((diffs > 0).mean()),
        answer_prob=float(answer_prob.double().mean()),
    )


def logit_diff(model: CircuitModel, task: Task) -> TaskPerformance:
    """:func:`measure_task_performance` under the paper's name for the metric (uncached; the
    cached one is ``pytest_circuits.analysis.task_performance``)."""
    return measure_task_performance(model, task)


def require_valid_task(
    performances: Sequence[TaskPerformance], *, margin: float | None = DEFAULT_MARGIN
) -> None:
    """Refuse a task that any of the models does not perform (clean metric <= margin).

    The margin itself is checked first: a negative, NaN or infinite margin would switch this
    guard off (or refuse everything with a misleading message), whoever passed it in.
    ``margin=None`` turns the guard off explicitly, for research on a model that does not do
    the task (reading a random model's similarities, say); no gate accepts it.
    """
    if margin is None:
        return
    if (isinstance(margin, bool) or not isinstance(margin, (int, float))
            or not math.isfinite(margin) or margin < 0):
        raise SweepConfigError(
            f"margin={margin!r} must be a finite number >= 0: it is the clean logit difference a "
            f"model must exceed to count as doing the task (default {DEFAULT_MARGIN}); a negative "
            "margin would let a model that prefers the distractor through"
        )
    failing = [p for p in performances if not p.mean_logit_diff > margin]
    if failing:
        shown = "; ".join(
            f"{p.model} clean logit difference is {p.mean_logit_diff:.3f}" for p in performances
        )
        names = ", ".join(p.model for p in failing)
        raise InvalidTaskError(
            f"task '{performances[0].task}': {shown} (each must be > {margin}). {names} does not "
            "perform this task, so ablation percentages against its clean metric would be "
            "meaningless; nothing was scored. Use a task the model performs, or lower "
            "margin= only if you are sure the metric is meaningful."
        )


def _require_finite_metrics(
    values: np.ndarray, names: Sequence[str], model_name: str, task_name: str
) -> None:
    if not np.all(np.isfinite(values)):
        index = int(np.argmin(np.isfinite(values)))
        raise NonFiniteError(
            f"{model_name}: the logit difference on task '{task_name}' with {names[index]} "
            f"ablated is {float(values[index])}: that forward pass produced NaN or infinity "
            "(an overflow in float16, or corrupt weights); check the checkpoint or run in float32"
        )


def make_fingerprint(
    model: CircuitModel,
    task: Task,
    *,
    analysis: str,
    ablation: str,
    method: str,
    seed: int,
    similarity: str = "",
    matching: str = "",
    direction: str = "",
) -> MethodFingerprint:
    """The fingerprint of a result about ``model`` on ``task`` (see MethodFingerprint)."""
    return MethodFingerprint(
        analysis=analysis,
        ablation=ablation,
        method=method,
        task=task.name,
        task_sha256=task.fingerprint(),
        n_prompts=len(task.prompts),
        n_reference=len(task.corrupted),
        seed=seed,
        dtype=model.dtype,
        similarity=similarity,
        matching=matching,
        direction=direction,
        device_kind=model.device_kind,
        versions=library_versions(),
        ran_on=ran_on(),
    )


def ran_on() -> str:
    """Where the running context's sweeps run: "" in this process, else its executor's own
    description (the Ray address, actors and devices)."""
    executor = context.current().executor
    return "" if executor is None else str(executor.describe())


def default_ablations_per_forward(model: CircuitModel) -> int:
    """One ablation per replay on CPU (stacking saves no arithmetic there); a layer's worth
    on an accelerator, where a wider batch is nearly free."""
    return 1 if model.device_kind == "cpu" else model.n_heads + 1


def is_out_of_memory(error: BaseException) -> bool:
    """True for an accelerator out-of-memory error (CUDA's own type, or a RuntimeError that
    says so, as other backends and older torch raise)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _release_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _replay_metrics(
    model: CircuitModel,
    task: Task,
    layer: int,
    hooks: Sequence[tuple[str, Any]],
    reps: int,
    prompts: slice | None = None,
) -> np.ndarray:
    """Mean logit difference of each of ``reps`` stacked copies, replayed from ``layer``, over
    the prompts in ``prompts`` (the whole task by default; ``hooks`` must be built for them)."""
    return _replay_per_prompt(model, task, layer, hooks, reps, prompts).mean(1).cpu().numpy()


def _replay_per_prompt(
    model: CircuitModel,
    task: Task,
    layer: int,
    hooks: Sequence[tuple[str, Any]],
    reps: int,
    prompts: slice | None = None,
) -> torch.Tensor:
    """:func:`_replay_metrics` before the mean: [reps, prompts] logit differences (float64)."""
    tensors = engine.task_tensors(model, task)
    if prompts is not None:
        tensors = tensors.rows(prompts)
    run = engine.clean_run(model, task, prompts=prompts)
    # resumes after the ablated part and unembeds only the answer tokens (see the engine)
    diffs = engine.replay_logit_differences(model, run.capture, layer, tensors, hooks, reps=reps)
    return diffs.view(reps, tensors.n_prompts).double()


class _ChunkMeans:
    """Per-key means over all prompts from per-chunk means: with one chunk, that chunk's mean
    itself (bit-identical to the unchunked run), else the prompt-weighted sum over ``n``."""

    def __init__(self, n: int, n_chunks: int) -> None:
        self.n = n
        self.single = n_chunks == 1
        self.sums: dict[Any, float] = {}

    def add(self, key: Any, mean: float, size: int) -> None:
        if self.single:
            self.sums[key] = mean
        else:
            self.sums[key] = self.sums.get(key, 0.0) + mean * size

    def means(self) -> dict[Any, float]:
        if self.single:
            return dict(self.sums)
        return {key: total / self.n for key, total in self.sums.items()}


def _exact_metrics(
    model: CircuitModel,
    task: Task,
    components: Sequence[Component],
    ablation: str,
    seed: int,
    ablations_per_forward: int,
    per_prompt: dict[Component, list[np.ndarray]] | None = None,
) -> dict[Component, float]:
    """Each component's ablated metric, ``ablations_per_forward`` of a layer per replay; when
    ``per_prompt`` is given, each component's per-prompt ablated metrics are appended to it,
    chunk by chunk in prompt order (what :func:`ablation_stderr` needs).

    Prompts run in chunks of ``engine.PROMPT_BATCH``, the chunk loop outermost so that each
    chunk's clean run is captured once and dropped before the next. A stack that runs out of
    accelerator memory is halved and retried (down to one ablation per replay, which is what a
    CPU runs anyway), and later stacks keep the smaller size: a gate should get slower under
    memory pressure, not fail.
    """
    executor = context.current().executor
    if executor is not None:  # a distributed run (pytest_circuits.distributed) shards the stacks
        return _sharded_exact_metrics(executor, model, task, components, ablation, seed,
                                      ablations_per_forward, per_prompt)
    n = engine.task_tensors(model, task).n_prompts
    chunks = engine.prompt_chunks(n)
    by_layer: dict[int, list[Component]] = {}
    for comp in components:
        by_layer.setdefault(comp.layer, []).append(comp)
    per_forward = ablations_per_forward
    totals = _ChunkMeans(n, len(chunks))
    measured, to_measure = 0, len(components) * len(chunks)
    with torch.no_grad():
        for prompts in chunks:
            batch = prompts.stop - prompts.start
            # the whole task as one chunk passes no slice: exactly the unchunked path
            part = None if len(chunks) == 1 else prompts
            for layer, comps in sorted(by_layer.items()):
                start = 0
                while start < len(comps):
                    chunk = comps[start : start + per_forward]
                    try:
                        by_prompt = _stack_replay(model, task, layer, chunk, ablation, seed, part,
                                                  batch)
                    except RuntimeError as error:
                        if len(chunk) == 1 or not is_out_of_memory(error):
                            raise
                        out_of_memory = True
                    else:
                        out_of_memory = False
                    if out_of_memory:  # outside the except block, so its frames are freed first
                        _release_accelerator_memory()
                        per_forward = max(1, len(chunk) // 2)
                        warnings.warn(
                            f"{model.name}: {len(chunk)} stacked ablations of layer {layer} ran "
                            f"out of accelerator memory; retrying with {per_forward} per replay "
                            f"(pass ablations_per_forward={per_forward} to skip the failed "
                            "attempt)",
                            OutOfMemoryRetryWarning,
                            stacklevel=3,
                        )
                        continue
                    per_copy = by_prompt.mean(1).cpu().numpy()
                    for comp, value in zip(chunk, per_copy, strict=True):
                        totals.add(comp, float(value), batch)
                    if per_prompt is not None:
                        for comp, row in zip(chunk, by_prompt.cpu().numpy(), strict=True):
                            per_prompt.setdefault(comp, []).append(row)
                    start += len(chunk)
                    measured += len(chunk)
                    progress.report(model.name, measured, to_measure)
    return totals.means()


def _stack_replay(
    model: CircuitModel,
    task: Task,
    layer: int,
    stack: Sequence[Component],
    ablation: str,
    seed: int,
    prompts: slice | None,
    batch: int,
) -> torch.Tensor:
    """[len(stack), batch] per-prompt metrics with each of ``stack`` (components of ``layer``)
    ablated in its own copy of one replay over ``prompts`` (None: the whole task)."""
    values = [engine.replacement(model, task, c, ablation, seed=seed, prompts=prompts)
              for c in stack]
    hooks = engine.ablation_hooks(stack, values, batch)
    return _replay_per_prompt(model, task, layer, hooks, len(stack), prompts)


# ----------------------------------------------------------------- sharding (distributed runs)


@dataclass(frozen=True)
class StackJob:
    """One replay of an exact sweep: ``components`` (all of ``layer``) ablated side by side
    over the prompts ``prompts`` (None: the whole task, as one chunk). The unit a distributed
    executor ships to a worker; :func:`measure_stack` is what the worker runs."""

    layer: int
    components: tuple[Component, ...]
    ablation: str
    seed: int
    prompts: slice | None = None


class Executor(Protocol):
    """Runs jobs about one model and task somewhere else (``RunContext.executor``; the Ray
    backend in ``pytest_circuits.distributed``). ``map`` returns ``function(model, task, job)``
    for each job, in the jobs' order, and reports progress (``weights``: each job's ablations)
    on the calling side as jobs finish. Circuit discovery's stacked ablations go through the
    same ``map`` with a job type and function of their own."""

    def map(self, function: Callable[[CircuitModel, Task, Any], Any], model: CircuitModel,
            task: Task, jobs: Sequence[Any], weights: Sequence[int] | None = None) -> list[Any]:
        ...

    def describe(self) -> str:
        """Where the jobs run, for the fingerprint's ``ran_on``."""
        ...


def measure_stack(model: CircuitModel, task: Task, job: StackJob) -> tuple[np.ndarray, np.ndarray]:
    """``job``'s per-copy mean metrics [copies] and per-prompt metrics [copies, prompts],
    computed exactly as the in-process sweep computes that stack (so the values are
    bit-identical on the same device type). A stack that runs out of accelerator memory is
    measured in two halves."""
    n = engine.task_tensors(model, task).n_prompts
    batch = n if job.prompts is None else job.prompts.stop - job.prompts.start
    with torch.no_grad():
        try:
            by_prompt = _stack_replay(model, task, job.layer, job.components, job.ablation,
                                      job.seed, job.prompts, batch)
        except RuntimeError as error:
            if len(job.components) == 1 or not is_out_of_memory(error):
                raise
            out_of_memory = True
        else:
            out_of_memory = False
    if out_of_memory:
        _release_accelerator_memory()
        half = len(job.components) // 2
        parts = [measure_stack(model, task, dataclasses.replace(job, components=comps))
                 for comps in (job.components[:half], job.components[half:])]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return by_prompt.mean(1).cpu().numpy(), by_prompt.cpu().numpy()


def stack_jobs(model: CircuitModel, task: Task, components: Sequence[Component],
               ablation: str, seed: int, ablations_per_forward: int) -> list[StackJob]:
    """The replays of an exact sweep of ``components``, in the in-process sweep's order: prompt
    chunks outermost, then layers, then ``ablations_per_forward`` consecutive components."""
    n = engine.task_tensors(model, task).n_prompts
    chunks = engine.prompt_chunks(n)
    by_layer: dict[int, list[Component]] = {}
    for comp in components:
        by_layer.setdefault(comp.layer, []).append(comp)
    return [
        StackJob(layer, tuple(comps[start : start + ablations_per_forward]), ablation, seed,
                 None if len(chunks) == 1 else prompts)
        for prompts in chunks
        for layer, comps in sorted(by_layer.items())
        for start in range(0, len(comps), ablations_per_forward)
    ]


def _sharded_exact_metrics(
    executor: Executor,
    model: CircuitModel,
    task: Task,
    components: Sequence[Component],
    ablation: str,
    seed: int,
    ablations_per_forward: int,
    per_prompt: dict[Component, list[np.ndarray]] | None,
) -> dict[Component, float]:
    """:func:`_exact_metrics` with its replays run by ``executor``: the same stacks, merged in
    the same order, so the result is the in-process one."""
    n = engine.task_tensors(model, task).n_prompts
    jobs = stack_jobs(model, task, components, ablation, seed, ablations_per_forward)
    results = executor.map(measure_stack, model, task, jobs,
                           weights=[len(job.components) for job in jobs])
    totals = _ChunkMeans(n, len(engine.prompt_chunks(n)))
    for job, (per_copy, rows) in zip(jobs, results, strict=True):
        batch = n if job.prompts is None else job.prompts.stop - job.prompts.start
        for comp, value in zip(job.components, per_copy, strict=True):
            totals.add(comp, float(value), batch)
        if per_prompt is not None:
            for comp, row in zip(job.components, rows, strict=True):
                per_prompt.setdefault(comp, []).append(row)
    return totals.means()


def _joint_head_metrics(
    model: CircuitModel,
    task: Task,
    heads_by_layer: dict[int, list[Component]],
    ablation: str,
    seed: int,
) -> dict[int, float]:
    """The metric with all of ``heads_by_layer[layer]`` ablated together, one replay a layer.

    Used only to check the screen: its first-order estimate is the sum of the heads' estimated
    changes, so a head whose estimate is far off usually shows up as a far-off joint estimate.
    """
    n = engine.task_tensors(model, task).n_prompts
    chunks = engine.prompt_chunks(n)
    totals = _ChunkMeans(n, len(chunks))
    with torch.no_grad():
        for prompts in chunks:  # chunk-outermost: each chunk's clean run is captured once
            part = None if len(chunks) == 1 else prompts
            for layer, heads in sorted(heads_by_layer.items()):
                values = [
                    engine.replacement(model, task, h, ablation, seed=seed, prompts=part)
                    for h in heads
                ]

                def edit(
                    act: torch.Tensor, hook: Any, heads: Any = heads, values: Any = values
                ) -> Any:
                    out = act.clone()
                    for head, value in zip(heads, values, strict=True):
                        target = out[:, :, head.order]
                        if value is None:
                            target.zero_()
                        else:
                            target.copy_(value.to(target.dtype).expand_as(target))
                    return out

                hooks = [(engine.z_hook(layer, model), edit)]
                mean = float(_replay_metrics(model, task, layer, hooks, 1, part)[0])
                totals.add(layer, mean, prompts.stop - prompts.start)
    return totals.means()


def _group_hooks(
    model: CircuitModel, components: Sequence[Component], values: Sequence[torch.Tensor | None]
) -> list[tuple[str, Any]]:
    """Hooks that ablate all of ``components`` together in one (unstacked) replay."""
    by_hook: dict[str, list[tuple[Component, torch.Tensor | None]]] = {}
    for comp, value in zip(components, values, strict=True):
        by_hook.setdefault(engine.component_hook(comp, model), []).append((comp, value))
    hooks: list[tuple[str, Any]] = []
    for name, edits in by_hook.items():

        def edit(act: torch.Tensor, hook: Any, edits: Any = edits) -> Any:
            out = act.clone()
            for comp, value in edits:
                target = out[:, :, comp.order] if comp.kind == "head" else out
                if value is None:
                    target.zero_()
                else:
                    target.copy_(value.to(device=target.device, dtype=target.dtype)
                                 .expand_as(target))
            return out

        hooks.append((name, edit))
    return hooks


def _sampled_rates(
    model: CircuitModel,
    task: Task,
    components: Sequence[Component],
    ablation: str,
    seed: int,
    rows: dict[Component, list[np.ndarray]],
) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
    """The screen's error rates on the first ``SAMPLE_PROMPTS`` prompts: per layer, that of
    all its swept heads ablated jointly, and per MLP, its own; each the absolute error of the
    summed first-order terms over the sample divided by their summed absolute values (plus
    ``SCREEN_MASS_EPS`` of the mean, as the scales are; see :func:`_head_scales`), so that
    it multiplies a scale; and per layer, the joint error itself scaled up to the whole task,
    in drop points. One exact replay of the sample per layer and per MLP."""
    sample = slice(0, SAMPLE_PROMPTS)
    n = engine.task_tensors(model, task).n_prompts
    clean = engine.clean_metrics(model, task)[0].double().cpu().numpy()[sample]
    lin = {c: np.concatenate(rows[c])[sample].astype(float) for c in components}
    mass = {c: float(np.abs(lin[c]).sum()) for c in components}
    mean_mass = {
        kind: float(np.mean([mass[c] for c in components if c.kind == kind] or [0.0]))
        for kind in ("head", "mlp")
    }
    groups: list[tuple[str, int, list[Component]]] = [
        ("head", layer, heads) for layer, heads in _grouped_heads(components).items()
    ]
    groups += [("mlp", c.layer, [c]) for c in components if c.kind == "mlp"]
    heads: dict[int, float] = {}
    mlps: dict[int, float] = {}
    floors: dict[int, float] = {}
    clean_mean = abs(float(engine.clean_metrics(model, task)[0].double().mean()))
    with torch.no_grad():
        for kind, layer, comps in sorted(groups, key=lambda g: (g[1], g[0])):
            values = [
                engine.replacement(model, task, c, ablation, seed=seed, prompts=sample)
                for c in comps
            ]
            hooks = _group_hooks(model, comps, values)
            ablated = _replay_per_prompt(model, task, layer, hooks, 1, sample)[0].cpu().numpy()
            change = float((ablated - clean).sum()) / n  # the sample's change of the mean
            error = abs(change - sum(float(lin[c].sum()) for c in comps))
            scale = sum(mass[c] + SCREEN_MASS_EPS * mean_mass[kind] for c in comps)
            rate = error / scale if scale > 0 else (0.0 if error == 0 else math.inf)
            (heads if kind == "head" else mlps)[layer] = rate
            if kind == "head":
                floors[layer] = 100.0 * error * n / (SAMPLE_PROMPTS * clean_mean)
    return heads, mlps, floors


def _sampled_head_rates(
    model: CircuitModel,
    task: Task,
    components: Sequence[Component],
    heads: Sequence[Component],
    ablation: str,
    seed: int,
    rows: dict[Component, list[np.ndarray]],
) -> dict[Component, float]:
    """The screen's error rate of each of ``heads`` (all of one layer) alone on the first
    ``SAMPLE_PROMPTS`` prompts, as :func:`_sampled_rates` computes a layer's joint one: one
    stacked replay of the sample (``len(heads)`` copies, about ``SAMPLE_PROMPTS / n`` of a full
    replay each)."""
    sample = slice(0, SAMPLE_PROMPTS)
    n = engine.task_tensors(model, task).n_prompts
    clean = engine.clean_metrics(model, task)[0].double().cpu().numpy()[sample]
    swept = [c for c in components if c.kind == "head"]
    mass = {c: float(np.abs(np.concatenate(rows[c])[sample]).sum()) for c in swept}
    mean_mass = float(np.mean(list(mass.values())))
    layer = heads[0].layer
    with torch.no_grad():
        values = [
            engine.replacement(model, task, h, ablation, seed=seed, prompts=sample) for h in heads
        ]
        hooks = engine.ablation_hooks(list(heads), values, SAMPLE_PROMPTS)
        ablated = _replay_per_prompt(model, task, layer, hooks, len(heads), sample).cpu().numpy()
    rates: dict[Component, float] = {}
    for head, row in zip(heads, ablated, strict=True):
        change = float((row - clean).sum()) / n
        error = abs(change - float(np.concatenate(rows[head])[sample].sum()))
        scale = mass[head] + SCREEN_MASS_EPS * mean_mass
        rates[head] = error / scale if scale > 0 else (0.0 if error == 0 else math.inf)
    return rates


def _attribution_metrics(
    model: CircuitModel, task: Task, components: Sequence[Component], ablation: str, seed: int
) -> tuple[float, dict[Component, float]]:
    """First-order estimate of each ablated metric from one forward and one backward pass.

    M(a') ~ M(a) + sum (a' - a) * dM/da over positions and features, where ``a`` is a head's
    z slice or an MLP's output and ``a'`` its ablation value. Returns the clean metric of that
    pass and the estimates.
    """
    clean, estimates, _ = _attribution_screen(model, task, components, ablation, seed)
    return clean, estimates


def _attribution_screen(
    model: CircuitModel,
    task: Task,
    components: Sequence[Component],
    ablation: str,
    seed: int,
    rows: dict[Component, list[np.ndarray]] | None = None,
) -> tuple[float, dict[Component, float], dict[Component, float]]:
    """:func:`_attribution_metrics`, plus each component's prompt mass: the sum over prompts of
    the absolute value of that prompt's first-order term (in units of the metric, so at least
    the estimate's own change; auto's error predictor, see :class:`Screening`). ``rows``, when
    given, receives each component's per-prompt first-order terms, chunk by chunk in prompt
    order (each prompt's change of the mean metric: its own change divided by the task's
    prompt count)."""
    tensors = engine.task_tensors(model, task)
    layers = sorted({c.layer for c in components})
    names = [engine.z_hook(i) for i in layers] + [engine.mlp_out_hook(i) for i in layers]
    n = tensors.n_prompts
    chunks = engine.prompt_chunks(n)
    if len(chunks) == 1:
        # one chunk: today's computation, so small tasks give bit-identical estimates
        clean, deltas, masses = _attribution_chunk(
            model, task, tensors, components, names, ablation, seed, None, n, rows
        )
        return clean, {comp: clean + delta for comp, delta in deltas.items()}, masses
    # The metric is the mean over all n prompts, so each chunk backpropagates its sum / n: the
    # gradients, and the summed (a' - a) * grad products, add up over chunks to the whole task's
    # (and the per-prompt masses, each prompt in one chunk, too).
    clean_total = 0.0
    delta_total: dict[Component, float] = {}
    mass_total: dict[Component, float] = {}
    for prompts in chunks:
        chunk_clean, deltas, masses = _attribution_chunk(
            model, task, tensors.rows(prompts), components, names, ablation, seed, prompts, n,
            rows,
        )
        clean_total += chunk_clean
        for comp, delta in deltas.items():
            delta_total[comp] = delta_total.get(comp, 0.0) + delta
            mass_total[comp] = mass_total.get(comp, 0.0) + masses[comp]
    estimates = {comp: clean_total + delta for comp, delta in delta_total.items()}
    return clean_total, estimates, mass_total


def _attribution_chunk(
    model: CircuitModel,
    task: Task,
    tensors: engine.TaskTensors,
    components: Sequence[Component],
    names: Sequence[str],
    ablation: str,
    seed: int,
    prompts: slice | None,
    n: int,
    rows: dict[Component, list[np.ndarray]] | None = None,
) -> tuple[float, dict[Component, float], dict[Component, float]]:
    """One forward and backward pass over ``tensors``' prompts: their contribution to the
    clean metric (sum / ``n``; the mean when they are the whole task), each component's
    first-order change of the metric from them, and the sum over them of its per-prompt
    change's absolute value."""
    capture = engine.run_capture(model, tensors.tokens, cache_names=names, track_grad=True)
    with torch.enable_grad():
        logits = engine.prediction_logits(model, capture.final, tensors.positions)
        diffs = engine.logit_differences(logits, tensors.correct, tensors.distractor)
        if prompts is None:
            diffs.mean().backward()
        else:
            (diffs.sum() / n).backward()
    if prompts is None:
        clean = float(diffs.detach().double().mean())
    else:
        clean = float(diffs.detach().double().sum()) / n
    deltas: dict[Component, float] = {}
    masses: dict[Component, float] = {}
    with torch.no_grad():
        for comp in components:
            act = capture.cache[engine.component_hook(comp)]
            grad = act.grad
            if grad is None:
                raise RuntimeError(f"no gradient reached {comp.name}; attribution impossible")
            if comp.kind == "head":
                act, grad = act[:, :, comp.order], grad[:, :, comp.order]
            value = engine.replacement(model, task, comp, ablation, seed=seed, prompts=prompts)
            target = torch.zeros_like(act) if value is None else value.to(act.dtype).expand_as(act)
            # grad is of the mean metric, so the summed product is already the mean's change
            product = ((target - act) * grad).double()
            deltas[comp] = float(product.sum())
            per_prompt = product.flatten(1).sum(1)
            masses[comp] = float(per_prompt.abs().sum())
            if rows is not None:
                rows.setdefault(comp, []).append(per_prompt.cpu().numpy())
    return clean, deltas, masses


@dataclass
class _AutoState:
    """The working state of an auto sweep: screened drops, exact metrics so far, observed
    screening errors per layer (all drops in points of the clean metric).

    ``scale`` holds each head's error predictor (see :class:`Screening`; 1 when absent), and
    ``layer_errors`` the largest error per unit of it seen in each layer."""

    clean: float
    components: Sequence[Component]
    screened_drop: dict[Component, float]
    thresholds: GateThresholds
    safety: float
    floor: float
    scale: dict[Component, float] = field(default_factory=dict)
    model_share: float = 0.0  # a layer's error per unit is at least this share of the model's
    n_layers: int = 0  # the model's, for the cost of a replay (0: every value costs the same)
    exact: dict[Component, float] = field(default_factory=dict)
    layer_errors: dict[int, float] = field(default_factory=dict)
    #: MLPs that may stay estimates (sampled calibration): (layer, its error per unit of scale)
    mlp_errors: dict[int, float] = field(default_factory=dict)
    screen_mlps: bool = False
    #: (sampled calibration) per layer, drop points added to each of its heads' bands
    layer_floors: dict[int, float] = field(default_factory=dict)
    #: (sampled calibration) heads measured alone on the sample: their own error rate, used
    #: instead of their layer's rate and floor
    head_rates: dict[Component, float] = field(default_factory=dict)

    def drop(self, ablated: float) -> float:
        return 100.0 - 100.0 * (ablated / self.clean)

    def scale_of(self, comp: Component) -> float:
        return self.scale.get(comp, 1.0)

    def observe(self, layer: int, error: float) -> None:
        self.layer_errors[layer] = max(self.layer_errors.get(layer, 0.0), error)

    def observe_joint(self, layer: int, heads: Sequence[Component], error: float) -> None:
        """The joint ablation's error, shared over its heads in proportion to their scale."""
        total = sum(self.scale_of(h) for h in heads)
        if total > 0:
            self.observe(layer, error / total)

    def observe_mlp(self, layer: int, rate: float) -> None:
        self.mlp_errors[layer] = max(self.mlp_errors.get(layer, 0.0), rate)

    def record(self, measured: dict[Component, float]) -> None:
        for comp, value in measured.items():
            self.exact[comp] = value
            error = abs(self.drop(value) - self.screened_drop[comp])
            scale = self.scale_of(comp)
            rate = error / scale if scale > 0 else math.inf
            if comp.kind == "head":
                self.observe(comp.layer, rate)
            elif self.screen_mlps:  # else every MLP is measured: its error bounds no estimate
                self.observe_mlp(comp.layer, rate)

    def mlp_rate(self, layer: int) -> float:
        """Error per unit of scale assumed for an unconfirmed MLP of ``layer``: its own, but at
        least ``model_share`` of the largest seen on any MLP (inf when none was seen)."""
        if layer not in self.mlp_errors:
            return math.inf
        return max(self.mlp_errors[layer], self.model_share * max(self.mlp_errors.values()))

    def error_rate(self, layer: int) -> float:
        """Error per unit of scale assumed for ``layer``'s unconfirmed heads: the largest seen
        in the layer, but at least ``model_share`` of the largest seen in any layer."""
        model_wide = max(self.layer_errors.values(), default=0.0)
        return max(self.layer_errors.get(layer, 0.0), self.model_share * model_wide)

    def band(self, comp: Component) -> float:
        if comp in self.head_rates:
            model_wide = max(self.layer_errors.values(), default=0.0)
            rate, extra = max(self.head_rates[comp], self.model_share * model_wide), 0.0
        elif comp.kind == "head":
            rate = self.error_rate(comp.layer)
            extra = self.layer_floors.get(comp.layer, 0.0)
        else:
            rate, extra = self.mlp_rate(comp.layer), 0.0
        return self.safety * rate * self.scale_of(comp) + self.floor + extra

    def reaches_threshold(self, comp: Component) -> bool:
        """Whether ``comp``'s interval reaches a drop threshold (or its negative, the influence
        cut point)."""
        s, b = self.screened_drop[comp], self.band(comp)
        return any(s - b <= t <= s + b or s - b <= -t <= s + b for t in self.thresholds.drop)

    def unconfirmed(self) -> list[Component]:
        return [c for c in self.components if c not in self.exact]

    def candidates(self) -> list[Component]:
        """Unconfirmed components whose interval reaches a threshold or the top-k, plus as
        many as the mean drop's bound needs to clear every mean-drop limit."""
        pending = self.unconfirmed()
        if not pending:
            return []
        limits = self.thresholds
        k = limits.top_k
        exact_drops = sorted((self.drop(v) for v in self.exact.values()), reverse=True)
        exact_influences = sorted((abs(d) for d in exact_drops), reverse=True)
        kth_drop = exact_drops[k - 1] if 0 < k <= len(exact_drops) else -math.inf
        kth_influence = exact_influences[k - 1] if 0 < k <= len(exact_influences) else -math.inf
        chosen: set[Component] = set()
        for comp in pending:
            s, b = self.screened_drop[comp], self.band(comp)
            low, high = s - b, s + b
            # drop, clamped drop and influence cross t at drop = t or drop = -t
            if any(low <= t <= high or low <= -t <= high for t in limits.drop):
                chosen.add(comp)
            elif k > 0 and (high >= kth_drop or max(abs(low), abs(high)) >= kth_influence):
                chosen.add(comp)
        if limits.mean_drop:
            chosen.update(self._for_mean_drop(pending, chosen))
        return sorted(chosen)

    def cost(self, comp: Component) -> float:
        """Relative cost of measuring ``comp``: a replay runs the blocks from its layer up."""
        return float(self.n_layers - comp.layer) if self.n_layers > comp.layer else 1.0

    def clamped_interval(self, comp: Component) -> tuple[float, float]:
        """Where ``comp``'s exact clamped drop lies: its own value once measured, else its band
        around the estimate, clamped to [0, 100] (a band wholly below 0 pins it at 0)."""
        if comp in self.exact:
            value = float(np.clip(self.drop(self.exact[comp]), 0.0, 100.0))
            return value, value
        s, b = self.screened_drop[comp], self.band(comp)
        return float(np.clip(s - b, 0.0, 100.0)), float(np.clip(s + b, 0.0, 100.0))

    def _for_mean_drop(self, pending: list[Component], chosen: set[Component]) -> list[Component]:
        """The fewest values, widest clamped interval per unit of cost first, whose measurement
        would leave the mean clamped drop's interval clear of every limit (assuming each lands
        on its estimate, as are those ``chosen`` already; the next round checks with the values
        it actually got)."""
        n = len(self.components)
        intervals = {c: self.clamped_interval(c) for c in self.components}
        low = sum(lo for lo, _ in intervals.values()) / n
        high = sum(hi for _, hi in intervals.values()) / n
        estimate = {c: float(np.clip(self.screened_drop[c], 0.0, 100.0)) for c in pending}
        for comp in chosen:
            lo, hi = intervals[comp]
            low += (estimate[comp] - lo) / n
            high -= (hi - estimate[comp]) / n

        def undecided(low: float, high: float) -> bool:
            # the verdict is mean <= limit: decided when the whole interval is on one side
            return any(low <= limit < high for limit in self.thresholds.mean_drop)

        widest = sorted(
            (c for c in pending if c not in chosen),
            key=lambda c: -(intervals[c][1] - intervals[c][0]) / self.cost(c),
        )
        picked: list[Component] = []
        for comp in widest:
            if not undecided(low, high):
                break
            lo, hi = intervals[comp]
            if hi <= lo:
                continue
            picked.append(comp)
            low += (estimate[comp] - lo) / n
            high -= (hi - estimate[comp]) / n
        return picked


def _head_scales(
    masses: dict[Component, float], clean: float, kind: str = "head"
) -> dict[Component, float]:
    """Each head's error predictor in drop points: its prompt mass (see
    :func:`_attribution_screen`) plus ``SCREEN_MASS_EPS`` of the mean over the swept heads, so
    that a head the screen sees no change in still gets a share of its layer's error
    (``kind="mlp"``: the same for the MLPs, over the swept MLPs)."""
    points = {c: 100.0 * mass / abs(clean) for c, mass in masses.items() if c.kind == kind}
    if not points:
        return {}
    mean = sum(points.values()) / len(points)
    return {c: value + SCREEN_MASS_EPS * mean for c, value in points.items()}


def _first_round(state: _AutoState) -> list[Component]:
    """What round 0 measures: every MLP, every head alone in its layer, and the top-k by
    screened drop and by screened influence."""
    components = state.components
    per_layer: dict[int, list[Component]] = {}
    for comp in components:
        if comp.kind == "head":
            per_layer.setdefault(comp.layer, []).append(comp)
    first = set() if state.screen_mlps else {c for c in components if c.kind == "mlp"}
    first.update(heads[0] for heads in per_layer.values() if len(heads) == 1)
    k = state.thresholds.top_k
    first.update(sorted(components, key=lambda c: -state.screened_drop[c])[:k])
    first.update(sorted(components, key=lambda c: -abs(state.screened_drop[c]))[:k])
    return sorted(first)


def _grouped_heads(components: Sequence[Component]) -> dict[int, list[Component]]:
    """Each layer's swept heads, for the layers with more than one."""
    per_layer: dict[int, list[Component]] = {}
    for comp in components:
        if comp.kind == "head":
            per_layer.setdefault(comp.layer, []).append(comp)
    return {layer: heads for layer, heads in per_layer.items() if len(heads) > 1}


def _confirm(
    state: _AutoState,
    joint_drops: dict[int, float],
    measure: Callable[[list[Component]], dict[Component, float]],
) -> int:
    """Auto's confirmation loop on a screened state: the joint ablations' errors (``joint_drops``:
    each grouped layer's exact drop with all its heads ablated) set the first bands, then rounds
    of ``measure`` until no unconfirmed interval reaches a threshold or the top-k. Returns the
    number of rounds. ``benchmarks/auto_bounds.py`` runs it on saved exact values."""
    for layer, heads in _grouped_heads(state.components).items():
        if layer in joint_drops:
            linear = sum(state.screened_drop[h] for h in heads)
            state.observe_joint(layer, heads, abs(joint_drops[layer] - linear))
    # with no top-k and every MLP an estimate, round 0 can be empty: the bands still decide
    pending = _first_round(state) or state.candidates()
    rounds = 0
    while pending:
        rounds += 1
        state.record(measure(pending))
        pending = state.candidates()
    return rounds


def _auto_metrics(
    model: CircuitModel,
    task: Task,
    components: Sequence[Component],
    ablation: str,
    seed: int,
    per_forward: int,
    clean: float,
    thresholds: GateThresholds,
    per_prompt: dict[Component, list[np.ndarray]] | None = None,
) -> tuple[dict[Component, float], set[Component], Screening]:
    """The screen, then exact values wherever a verdict or the top-k could depend on them
    (``per_prompt``, when given, receives the exact values' per-prompt metrics).

    Round 0 measures exactly every MLP, the top-k by screened drop and by screened influence,
    and each layer's heads ablated jointly (a check on the screen that costs one replay a layer);
    the head errors seen there set each layer's error rate. Each later round measures exactly
    every unconfirmed component whose band reaches a threshold or the top-k, and as many more as
    the mean clamped drop's interval needs to clear every mean-drop limit (widest interval per
    unit of replay cost first), and widens the bands by the errors it saw, until none is left.

    On a deep model (``SAMPLE_MIN_LAYERS`` layers, at least twice ``SAMPLE_PROMPTS`` prompts)
    the joint ablations and every MLP are replayed on the first ``SAMPLE_PROMPTS`` prompts
    only (:func:`_sampled_rates`) instead: MLPs get bands of their own and are measured like
    heads, only where a verdict or the top-k could depend on them, and each layer's joint error
    on the sample, scaled up to the task, is added to its heads' bands. Where that would send
    more of a layer's heads to a full replay than ablating each of them alone on the sample
    costs (``SAMPLE_PROMPTS / n`` of a replay each), each is (:func:`_sampled_head_rates`), and
    gets its own sampled rate instead of its layer's rate and floor: the joint error is then
    blamed on the head that carries it.
    """
    rows: dict[Component, list[np.ndarray]] = {}
    _, screened, masses = _attribution_screen(model, task, components, ablation, seed, rows)
    sampled = (model.n_layers >= SAMPLE_MIN_LAYERS
               and engine.task_tensors(model, task).n_prompts >= 2 * SAMPLE_PROMPTS)
    scales = _head_scales(masses, clean)
    if sampled:
        scales.update(_head_scales(masses, clean, kind="mlp"))
    state = _AutoState(
        clean=clean,
        components=components,
        screened_drop={c: 100.0 - 100.0 * (screened[c] / clean) for c in components},
        thresholds=thresholds,
        safety=SCREEN_SAFETY,
        floor=SCREEN_FLOOR,
        scale=scales,
        model_share=SAMPLED_MODEL_SHARE if sampled else SCREEN_MODEL_SHARE,
        n_layers=model.n_layers,
        screen_mlps=sampled,
    )
    joint: dict[int, float] = {}
    if sampled:
        head_rates, mlp_rates, state.layer_floors = _sampled_rates(
            model, task, components, ablation, seed, rows
        )
        for layer, rate in head_rates.items():
            state.observe(layer, rate)
        for layer, rate in mlp_rates.items():
            state.observe_mlp(layer, rate)
        # stage 2: where a layer's bands would send more of its heads to a full replay than
        # measuring all of them on the sample costs, find which head carries the joint error
        n = engine.task_tensors(model, task).n_prompts
        for heads in _grouped_heads(components).values():
            reaching = sum(1 for h in heads if state.reaches_threshold(h))
            if reaching > len(heads) * SAMPLE_PROMPTS / n:
                state.head_rates.update(
                    _sampled_head_rates(model, task, components, heads, ablation, seed, rows)
                )
    else:
        grouped = _grouped_heads(components)
        joint = {
            layer: state.drop(value)
            for layer, value in _joint_head_metrics(model, task, grouped, ablation, seed).items()
        }
    def measure(pending: list[Component]) -> dict[Component, float]:
        fresh: dict[Component, list[np.ndarray]] = {}  # a value measured again replaces its rows
        values = _exact_metrics(model, task, pending, ablation, seed, per_forward, fresh)
        if per_prompt is not None:
            per_prompt.update(fresh)
        return values

    rounds = _confirm(state, joint, measure)
    ablated = {c: state.exact.get(c, screened[c]) for c in components}
    screening = Screening(
        thresholds=thresholds,
        safety=state.safety,
        floor=state.floor,
        layer_errors=tuple(sorted(state.layer_errors.items())),
        rounds=rounds,
        model_share=state.model_share,
        scales=tuple((c.name, state.scale_of(c)) for c in components
                     if c.kind == "head" or c in state.scale),
        mlp_errors=tuple(sorted(state.mlp_errors.items())),
        sampled_prompts=SAMPLE_PROMPTS if sampled else 0,
        layer_floors=tuple(sorted(state.layer_floors.items())),
        head_rates=tuple((c.name, rate) for c, rate in sorted(state.head_rates.items())),
    )
    return ablated, set(state.exact), screening


def sweep(
    model: CircuitModel,
    task: Task | str,
    *,
    components: str | Sequence[str | Component] = "all",
    ablation: str = "mean",
    method: str = "exact",
    confirm_top_k: int = 0,
    seed: int = 0,
    margin: float | None = DEFAULT_MARGIN,
    ablations_per_forward: int | None = None,
    thresholds: GateThresholds | None = None,
    measured: SweepResult | None = None,
) -> SweepResult:
    """Ablate each component alone and measure the task metric (mean logit difference).

    ``ablation``: "zero", "mean" (per-position mean over the corrupted reference set) or
    "resample" (each prompt gets a random reference prompt's activation, seeded).
    ``method``: "exact" replays the layers above each component; "attribution" estimates all
    components from one forward and one backward pass, then re-measures the ``confirm_top_k``
    most influential ones exactly; "auto" screens like attribution, then measures exactly every
    component whose value could change a verdict against ``thresholds`` (default: the default
    tolerance, 20 points, and the top 5) and leaves the rest as estimates with an empirical
    bound (see :class:`Screening`; ``confirm_top_k`` is not used).
    """

    task = resolve_task(task)
    if ablation not in engine.ABLATIONS:
        raise SweepConfigError(
            f"ablation={ablation!r} is not one of {', '.join(engine.ABLATIONS)}"
        )
    if method not in METHODS:
        raise SweepConfigError(
            f"method={method!r} is not one of {', '.join(repr(m) for m in METHODS)}"
        )
    if thresholds is not None and not isinstance(thresholds, GateThresholds):
        raise SweepConfigError(
            f"thresholds must be a GateThresholds, got {type(thresholds).__name__}; write "
            "thresholds=GateThresholds(drop=(20.0,), mean_drop=(2.0,))"
        )
    chosen = select_components(components, model.n_layers, model.n_heads, model_name=model.name)
    performance = measure_task_performance(model, task)
    require_valid_task([performance], margin=margin)
    clean = performance.mean_logit_diff
    per_forward = ablations_per_forward or default_ablations_per_forward(model)
    if per_forward < 1:
        raise SweepConfigError(
            f"ablations_per_forward must be >= 1, got {per_forward}; use 1 on a CPU"
        )

    used_method = {c: method for c in chosen}
    screening: Screening | None = None
    per_prompt: dict[Component, list[np.ndarray]] = {}
    reused: dict[Component, ComponentEffect] = {}
    if method == "exact" and measured is not None:
        # an exact sweep that completes an auto sweep of the same model, task and settings
        # (a gate settling its verdict exactly): the values auto already measured exactly are
        # taken as they are, only its estimates are replayed
        by_name = {e.name: e for e in measured.effects}
        reused = {c: by_name[c.name] for c in chosen
                  if c.name in by_name and by_name[c.name].is_exact}
    if method == "exact":
        ablated = _exact_metrics(model, task, [c for c in chosen if c not in reused], ablation,
                                 seed, per_forward, per_prompt)
        ablated.update({c: e.ablated_metric for c, e in reused.items()})
    elif method == "auto":
        ablated, confirmed, screening = _auto_metrics(
            model, task, chosen, ablation, seed, per_forward, clean,
            thresholds or GateThresholds(), per_prompt,
        )
        used_method = {c: "exact" if c in confirmed else "attribution" for c in chosen}
    else:
        _, ablated = _attribution_metrics(model, task, chosen, ablation, seed)
        if confirm_top_k > 0:
            ranked = sorted(chosen, key=lambda c: -abs(ablated[c] - clean))[:confirm_top_k]
            ablated.update(_exact_metrics(model, task, ranked, ablation, seed, per_forward,
                                          per_prompt))
            for comp in ranked:
                used_method[comp] = "exact"
    values = np.array([ablated[c] for c in chosen], dtype=float)
    _require_finite_metrics(values, [c.name for c in chosen], model.name, task.name)
    kept = metrics.retained(clean, values)
    drops = 100.0 - kept
    infl = metrics.influence(clean, values)
    effects = [
        ComponentEffect(
            name=c.name,
            kind=c.kind,
            layer=c.layer,
            head=c.head,
            ablated_metric=float(values[i]),
            retained=float(kept[i]),
            drop=float(drops[i]),
            influence=float(infl[i]),
            method=used_method[c],
            bound=(
                screening.head_band(c)
                if screening is not None and used_method[c] != "exact"
                else None
            ),
            stderr=(
                reused[c].stderr if c in reused
                else ablation_stderr(performance.per_prompt, np.concatenate(per_prompt[c]))
                if c in per_prompt and used_method[c] == "exact"
                else None
            ),
        )
        for i, c in enumerate(chosen)
    ]
    fingerprint = make_fingerprint(
        model, task, analysis="sweep", ablation=ablation, method=method, seed=seed
    )
    return SweepResult(
        model=model_info(model),
        task=task.name,
        clean_metric=clean,
        performance=performance,
        effects=effects,
        fingerprint=fingerprint,
        confirm_top_k=confirm_top_k if method == "attribution" else None,
        screening=screening,
        pruned=_pruned_names(model),
    )


def settle(
    model: CircuitModel,
    task: Task | str,
    result: SweepResult,
    names: Sequence[str],
    *,
    ablation: str = "mean",
    seed: int = 0,
    ablations_per_forward: int | None = None,
) -> SweepResult:
    """``result`` (a sweep of ``model`` on ``task`` with these ``ablation`` and ``seed``) with
    the estimates named in ``names`` measured exactly: each becomes an exact value with its
    standard error, exactly what a full exact sweep measures for it (the same replay), and
    every other effect is kept as it was. Names already exact are not measured again; a name
    the sweep does not hold is refused. What a gate measures when only some estimates can
    change its verdict, instead of sweeping every component again."""
    task = resolve_task(task)
    by_name = {e.name: e for e in result.effects}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SweepConfigError(
            f"cannot settle {', '.join(unknown[:5])}: the sweep of {result.model.name} on "
            f"'{result.task}' holds no such component (it holds {len(by_name)})"
        )
    chosen = [Component.parse(n) for n in dict.fromkeys(names) if not by_name[n].is_exact]
    if not chosen:
        return result
    performance = measure_task_performance(model, task)
    per_forward = ablations_per_forward or default_ablations_per_forward(model)
    per_prompt: dict[Component, list[np.ndarray]] = {}
    ablated = _exact_metrics(model, task, chosen, ablation, seed, per_forward, per_prompt)
    clean = result.clean_metric
    values = np.array([ablated[c] for c in chosen], dtype=float)
    _require_finite_metrics(values, [c.name for c in chosen], model.name, task.name)
    kept = metrics.retained(clean, values)
    infl = metrics.influence(clean, values)
    settled = {
        c.name: dataclasses.replace(
            by_name[c.name], ablated_metric=float(values[i]), retained=float(kept[i]),
            drop=float(100.0 - kept[i]), influence=float(infl[i]), method="exact", bound=None,
            stderr=ablation_stderr(performance.per_prompt, np.concatenate(per_prompt[c])),
        )
        for i, c in enumerate(chosen)
    }
    return dataclasses.replace(result, effects=[settled.get(e.name, e) for e in result.effects])


def _pruned_names(model: CircuitModel) -> tuple[str, ...] | None:
    found = engine.pruned_components(model)
    return None if found is None else tuple(c.name for c in sorted(found))


def ablation_stderr(clean: Sequence[float], ablated: Sequence[float]) -> float | None:
    """Standard error, in drop points, of a component's drop over the task's prompts.

    The drop is ``100 * (1 - r)`` with ``r = mean(ablated) / mean(clean)`` over the same
    prompts, a ratio of means; its standard error (the delta method's, which a bootstrap over
    the prompts approximates) is ``100 * sd(ablated_p - r * clean_p) / (sqrt(n) * |mean(clean)|)``
    with ``sd`` the sample standard deviation over the n prompts. 0 for a component whose
    ablation changes no prompt's metric; None for a single prompt (nothing to estimate from).
    """
    a = np.asarray(ablated, dtype=float)
    c = np.asarray(clean, dtype=float)
    if a.shape != c.shape:
        raise ValueError(
            f"{len(a)} ablated and {len(c)} clean per-prompt metrics: they must be the same "
            "prompts, in the same order"
        )
    n = len(a)
    if n < 2:
        return None
    mean_clean = float(c.mean())
    residual = a - (float(a.mean()) / mean_clean) * c
    return float(100.0 * residual.std(ddof=1) / (math.sqrt(n) * abs(mean_clean)))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    x = _ranks(np.asarray(a, dtype=float))
    y = _ranks(np.asarray(b, dtype=float))
    if x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.arange(len(values), dtype=float)
    for v in np.unique(values):
        tie = values == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks
