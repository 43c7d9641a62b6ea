"""Single-component ablation sweeps: exact (replayed) and attribution (first-order) methods."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..components import Component, select_components
from ..errors import InvalidTaskError, NonFiniteError
from ..identity import ModelInfo
from ..models import CircuitModel
from ..tasks import Task
from . import engine
from .fingerprint import MethodFingerprint, library_versions

DEFAULT_MARGIN = 0.1


@dataclass(frozen=True)
class ComponentEffect:
    """What ablating one component did to the task metric (mean logit difference).

    ``drop = 100 - retained`` as the paper reports single components (a head can cost 104%);
    brittleness statistics clamp it to [0, 100] (``m_i``), see :attr:`SweepResult.clamped_drops`.
    """

    name: str
    kind: str
    layer: int
    head: int | None
    ablated_metric: float
    retained: float
    drop: float
    influence: float
    method: str = "exact"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComponentEffect:
        return cls(**data)


@dataclass(frozen=True)
class TaskPerformance:
    """A model's clean behaviour on a task."""

    model: str
    task: str
    mean_logit_diff: float
    per_prompt: tuple[float, ...]
    accuracy: float  # share of prompts whose top-1 token is the correct answer
    pairwise_accuracy: float  # share of prompts with correct logit > distractor logit

    @property
    def n_prompts(self) -> int:
        return len(self.per_prompt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskPerformance:
        # JSON has no tuples: the per-prompt values come back as a list
        return cls(**{**data, "per_prompt": tuple(data["per_prompt"])})


@dataclass
class SweepResult:
    """Every requested component's single-ablation effect on one model and task.

    ``confirm_top_k`` is how many of an attribution sweep's most influential components were
    re-measured exactly (None for an exact sweep, where it means nothing).
    """

    model: ModelInfo
    task: str
    clean_metric: float
    performance: TaskPerformance
    effects: list[ComponentEffect]
    fingerprint: MethodFingerprint
    confirm_top_k: int | None = None

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.effects]

    @property
    def drops(self) -> np.ndarray:
        """``100 - retained`` per component, unclamped."""
        return np.array([e.drop for e in self.effects], dtype=float)

    @property
    def clamped_drops(self) -> np.ndarray:
        """The paper's brittleness drops ``m_i = 100 - clamp(retained_i, 0, 100)``."""
        return metrics.drops_from_retained(np.array([e.retained for e in self.effects]))

    @property
    def influences(self) -> np.ndarray:
        return np.array([e.influence for e in self.effects], dtype=float)

    def effect(self, name: str) -> ComponentEffect:
        for e in self.effects:
            if e.name == name:
                return e
        raise KeyError(f"{name} was not part of this sweep (swept: {', '.join(self.names)})")

    def brittleness(self, **kwargs: Any) -> metrics.BrittlenessSummary:
        return metrics.brittleness_summary(self.names, self.clamped_drops, **kwargs)

    def worst(self, k: int = 5) -> list[ComponentEffect]:
        return sorted(self.effects, key=lambda e: -e.drop)[:k]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "task": self.task,
            "clean_metric": self.clean_metric,
            "performance": self.performance.to_dict(),
            "effects": [e.to_dict() for e in self.effects],
            "fingerprint": self.fingerprint.to_dict(),
            "confirm_top_k": self.confirm_top_k,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepResult:
        return cls(
            model=ModelInfo.from_dict(data["model"]),
            task=data["task"],
            clean_metric=data["clean_metric"],
            performance=TaskPerformance.from_dict(data["performance"]),
            effects=[ComponentEffect.from_dict(e) for e in data["effects"]],
            fingerprint=MethodFingerprint.from_dict(data["fingerprint"]),
            confirm_top_k=data.get("confirm_top_k"),
        )


def model_info(model: CircuitModel) -> ModelInfo:
    """``model.describe()`` as a ModelInfo, whether it already returns one or a plain dict."""
    described: Any = model.describe()
    return described if isinstance(described, ModelInfo) else ModelInfo.from_dict(described)


def task_performance(model: CircuitModel, task: Task) -> TaskPerformance:
    """Clean logit difference (per prompt and mean) and accuracy of ``model`` on ``task``.

    Only the prediction position is unembedded. Raises NonFiniteError when any logit there is
    NaN or infinite, over the whole vocabulary (``engine.clean_run`` checks every clean run with
    ``engine.check_finite_logits`` before it is memoised): a NaN outside the two answer tokens
    leaves the logit difference finite but makes top-1 accuracy meaningless.
    """
    run = engine.clean_run(model, task)
    diffs = run.logit_diff.double().cpu().numpy()
    return TaskPerformance(
        model=model.name,
        task=task.name,
        mean_logit_diff=float(diffs.mean()),
        per_prompt=tuple(float(x) for x in diffs),
        accuracy=float(run.top1_correct.float().mean()),
        pairwise_accuracy=float((diffs > 0).mean()),
    )


def logit_diff(model: CircuitModel, task: Task) -> TaskPerformance:
    """Alias of :func:`task_performance` under the paper's name for the metric."""
    return task_performance(model, task)


def require_valid_task(
    performances: Sequence[TaskPerformance], *, margin: float = DEFAULT_MARGIN
) -> None:
    """Refuse a task that any of the models does not perform (clean metric <= margin)."""
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
    )


def default_ablations_per_forward(model: CircuitModel) -> int:
    """One ablation per replay on CPU (stacking saves no arithmetic there); a layer's worth
    on an accelerator, where a wider batch is nearly free."""
    return 1 if model.device_kind == "cpu" else model.n_heads + 1


def _exact_metrics(
    model: CircuitModel,
    task: Task,
    components: Sequence[Component],
    ablation: str,
    seed: int,
    ablations_per_forward: int,
) -> dict[Component, float]:
    tensors = engine.task_tensors(model, task)
    run = engine.clean_run(model, task)
    batch = tensors.n_prompts
    by_layer: dict[int, list[Component]] = {}
    for comp in components:
        by_layer.setdefault(comp.layer, []).append(comp)
    ablated: dict[Component, float] = {}
    with torch.no_grad():
        for layer, comps in sorted(by_layer.items()):
            for start in range(0, len(comps), ablations_per_forward):
                chunk = comps[start : start + ablations_per_forward]
                values = [
                    engine.replacement(model, task, c, ablation, seed=seed) for c in chunk
                ]
                hooks = engine.ablation_hooks(chunk, values, batch)
                final = engine.replay(model, run.capture, layer, hooks, reps=len(chunk))
                logits = engine.prediction_logits(model, final, tensors.positions)
                diffs = engine.logit_differences(logits, tensors.correct, tensors.distractor)
                per_copy = diffs.view(len(chunk), batch).double().mean(1).cpu().numpy()
                for comp, value in zip(chunk, per_copy, strict=True):
                    ablated[comp] = float(value)
    return ablated


def _attribution_metrics(
    model: CircuitModel, task: Task, components: Sequence[Component], ablation: str, seed: int
) -> dict[Component, float]:
    """First-order estimate of each ablated metric from one forward and one backward pass.

    M(a') ~ M(a) + sum (a' - a) * dM/da over positions and features, where ``a`` is a head's
    z slice or an MLP's output and ``a'`` its ablation value.
    """
    tensors = engine.task_tensors(model, task)
    layers = sorted({c.layer for c in components})
    names = [engine.z_hook(i) for i in layers] + [engine.mlp_out_hook(i) for i in layers]
    capture = engine.run_capture(model, tensors.tokens, cache_names=names, track_grad=True)
    with torch.enable_grad():
        logits = engine.prediction_logits(model, capture.final, tensors.positions)
        diffs = engine.logit_differences(logits, tensors.correct, tensors.distractor)
        diffs.mean().backward()
    clean = float(diffs.detach().double().mean())
    estimates: dict[Component, float] = {}
    with torch.no_grad():
        for comp in components:
            act = capture.cache[engine.component_hook(comp)]
            grad = act.grad
            if grad is None:
                raise RuntimeError(f"no gradient reached {comp.name}; attribution impossible")
            if comp.kind == "head":
                act, grad = act[:, :, comp.order], grad[:, :, comp.order]
            value = engine.replacement(model, task, comp, ablation, seed=seed)
            target = torch.zeros_like(act) if value is None else value.to(act.dtype).expand_as(act)
            delta = ((target - act) * grad).double().sum()
            # grad is of the mean metric, so the summed product is already the mean's change
            estimates[comp] = clean + float(delta)
    return estimates


def sweep(
    model: CircuitModel,
    task: Task | str,
    *,
    components: str | Sequence[str | Component] = "all",
    ablation: str = "mean",
    method: str = "exact",
    confirm_top_k: int = 0,
    seed: int = 0,
    margin: float = DEFAULT_MARGIN,
    ablations_per_forward: int | None = None,
) -> SweepResult:
    """Ablate each component alone and measure the task metric (mean logit difference).

    ``ablation``: "zero", "mean" (per-position mean over the corrupted reference set) or
    "resample" (each prompt gets a random reference prompt's activation, seeded).
    ``method``: "exact" replays the layers above each component; "attribution" estimates all
    components from one forward and one backward pass, then re-measures the ``confirm_top_k``
    most influential ones exactly.
    """
    from ..tasks import resolve_task

    task = resolve_task(task)
    if ablation not in engine.ABLATIONS:
        raise ValueError(
            f"ablation={ablation!r} is not one of {', '.join(engine.ABLATIONS)}"
        )
    if method not in ("exact", "attribution"):
        raise ValueError(f"method={method!r} is not one of 'exact', 'attribution'")
    chosen = select_components(components, model.n_layers, model.n_heads, model_name=model.name)
    performance = task_performance(model, task)
    require_valid_task([performance], margin=margin)
    clean = performance.mean_logit_diff
    per_forward = ablations_per_forward or default_ablations_per_forward(model)
    if per_forward < 1:
        raise ValueError(f"ablations_per_forward must be >= 1, got {per_forward}")

    used_method = {c: method for c in chosen}
    if method == "exact":
        ablated = _exact_metrics(model, task, chosen, ablation, seed, per_forward)
    else:
        ablated = _attribution_metrics(model, task, chosen, ablation, seed)
        if confirm_top_k > 0:
            ranked = sorted(chosen, key=lambda c: -abs(ablated[c] - clean))[:confirm_top_k]
            ablated.update(_exact_metrics(model, task, ranked, ablation, seed, per_forward))
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
    )


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
