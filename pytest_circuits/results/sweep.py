"""Single-model sweep results: each component's ablation effect, the clean performance, how an
auto sweep screened (torch-free; the sweeps themselves are in :mod:`pytest_circuits.analysis`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import metrics
from ..components import Component

# the defaults and the thresholds' type are defined with the analysis options
from ..config.options import (
    DEFAULT_DROP_THRESHOLDS,
    DEFAULT_MARGIN,
    DEFAULT_TOP_K,
    GateThresholds,
)
from ..errors import SweepConfigError
from ..identity import ModelInfo
from .fingerprint import MethodFingerprint

__all__ = [
    "DEFAULT_DROP_THRESHOLDS",
    "DEFAULT_MARGIN",
    "DEFAULT_TOP_K",
    "ComponentEffect",
    "GateThresholds",
    "Screening",
    "SweepConfigError",
    "SweepResult",
    "TaskPerformance",
]

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
    #: For a screened value of an auto sweep: the half-width, in drop points, of the interval
    #: around ``drop`` in which its exact drop is expected (an empirical bound, see
    #: :class:`Screening`); it also bounds ``retained``, ``influence`` and the clamped drop.
    #: None when the value is exact, or screened without any bound (``method="attribution"``).
    bound: float | None = None
    #: For an exactly measured value: the standard error of ``drop`` (hence of ``influence``)
    #: over the task's prompts, in drop points (``analysis.ablation.ablation_stderr``): how far
    #: the value could move on another draw of prompts. None for an estimate, a single-prompt
    #: task, or a sweep stored before it was kept.
    stderr: float | None = None

    @property
    def is_exact(self) -> bool:
        return self.method == "exact"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComponentEffect:
        return cls(**data)


@dataclass(frozen=True)
class Screening:
    """How an auto sweep decided which values to measure exactly, and how far to trust the rest.

    On a shallow model every MLP is measured exactly and a head may stay a first-order estimate;
    on a deep one (``sampled_prompts`` > 0) an MLP may stay an estimate too, with a band from
    its own error on a sample of the prompts (``mlp_errors``), and each head's band also holds
    its layer's joint error on that sample scaled up to the task (``layer_floors``), unless the
    head was ablated alone on the sample (``head_rates``: its own error rate there replaces its
    layer's rate and floor). Attribution
    is a linear approximation, not a bound, so a head's bound is empirical: ``safety`` times its
    layer's error rate times the head's scale, plus ``floor``, in drop points. The scale
    (``scales``) is the head's prompt mass, the sum over prompts of the absolute first-order
    change on each (a head whose estimate is a sum of large per-prompt changes that cancel, or
    that moves single prompts a lot, is where the screen goes wrong), plus a small share of the
    mean. The error rate (``layer_errors``) is the largest error per unit of scale seen on the
    layer's measured heads or in the joint ablation of all its swept heads (its error shared in
    proportion to their scales), but at least ``model_share`` of the largest rate of any layer:
    a layer whose measured heads happened to be screened well still inherits part of the model's
    worst. Every head whose interval could reach a threshold or the top-k was measured exactly,
    so the verdicts and the blamed components are exact as long as each estimate lies within its
    bound. That is an empirical claim, not a theorem: on saved exact sweeps of the zoo, random
    GPT-2 shapes, the GPT-2-small shape and SmolLM2-135M (IOI, mean and zero ablation;
    ``benchmarks/auto_bounds.py``, figures in benchmarks/README.md) every kept estimate lay
    within its band, the worst at half of it. A head the screen gets badly wrong while its
    prompt mass is small and its layer looks clean would still escape; use ``method="exact"``
    where a verdict must not rest on an estimate.
    """

    thresholds: GateThresholds
    safety: float
    floor: float
    #: (layer, largest screening error per unit of scale seen on the layer's heads)
    layer_errors: tuple[tuple[int, float], ...]
    rounds: int  # confirmation rounds until no interval reached a threshold or the top-k
    #: a layer's error rate is at least this share of the largest in the model
    model_share: float = 0.0
    #: (head, its scale: prompt mass in drop points plus a small share of the mean), every
    #: swept head
    scales: tuple[tuple[str, float], ...] = ()
    #: (layer, error per unit of scale assumed for that layer's MLP) where MLPs may be
    #: estimates: on a deep model the screen is calibrated on a sample of the prompts
    #: (``sampled_prompts`` of them, 0 when not), every MLP on its own; an MLP's rate is its
    #: own but at least ``model_share`` of the largest, and its scale its prompt mass as a head's
    mlp_errors: tuple[tuple[int, float], ...] = ()
    sampled_prompts: int = 0
    #: (layer, drop points added to each of its heads' bands): with a sampled calibration, the
    #: joint ablation's error on the sample scaled up to the task (it could be one head's)
    layer_floors: tuple[tuple[int, float], ...] = ()
    #: (head, its own error per unit of scale on the sample): with a sampled calibration, the
    #: heads of a layer whose joint error would have sent several of them to a full replay were
    #: each ablated alone on the sample; such a head's rate is its own (at least
    #: ``model_share`` of the largest layer rate) and its layer's floor does not apply
    head_rates: tuple[tuple[str, float], ...] = ()

    def mlp_rate(self, layer: int) -> float:
        """The error per unit of scale assumed for ``layer``'s MLP if unconfirmed."""
        observed = dict(self.mlp_errors)
        if layer not in observed:
            return math.inf
        return max(observed[layer], self.model_share * max(observed.values()))

    def error_rate(self, layer: int) -> float:
        """The error per unit of scale assumed for ``layer``'s unconfirmed heads."""
        observed = dict(self.layer_errors)
        model_wide = max(observed.values(), default=0.0)
        return max(observed.get(layer, 0.0), self.model_share * model_wide)

    def band(self, layer: int, scale: float = 1.0) -> float:
        """Half-width, in drop points, of the interval of a head of ``layer`` with ``scale``."""
        return self.safety * self.error_rate(layer) * scale + self.floor

    def head_band(self, component: Component | str) -> float:
        """The band of one swept head, or of an MLP left an estimate (its own scale, see
        ``scales``)."""
        comp = component if isinstance(component, Component) else Component.parse(component)
        scale = dict(self.scales).get(comp.name, 1.0)
        if comp.kind == "mlp":
            return self.safety * self.mlp_rate(comp.layer) * scale + self.floor
        own = dict(self.head_rates)
        if comp.name in own:
            model_wide = max((error for _, error in self.layer_errors), default=0.0)
            return self.safety * max(own[comp.name], self.model_share * model_wide) * scale \
                + self.floor
        return self.band(comp.layer, scale) + dict(self.layer_floors).get(comp.layer, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": self.thresholds.to_dict(),
            "safety": self.safety,
            "floor": self.floor,
            "layer_errors": [[layer, error] for layer, error in self.layer_errors],
            "rounds": self.rounds,
            "model_share": self.model_share,
            "scales": [[name, scale] for name, scale in self.scales],
            "mlp_errors": [[layer, error] for layer, error in self.mlp_errors],
            "sampled_prompts": self.sampled_prompts,
            "layer_floors": [[layer, value] for layer, value in self.layer_floors],
            "head_rates": [[name, rate] for name, rate in self.head_rates],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Screening:
        return cls(
            thresholds=GateThresholds.from_dict(data["thresholds"]),
            safety=data["safety"],
            floor=data["floor"],
            layer_errors=tuple((int(layer), error) for layer, error in data["layer_errors"]),
            rounds=data["rounds"],
            model_share=data.get("model_share", 0.0),  # records from before the prompt mass
            scales=tuple((str(name), scale) for name, scale in data.get("scales", ())),
            mlp_errors=tuple((int(layer), error) for layer, error in data.get("mlp_errors", ())),
            sampled_prompts=int(data.get("sampled_prompts", 0)),
            layer_floors=tuple((int(layer), value)
                               for layer, value in data.get("layer_floors", ())),
            head_rates=tuple((str(name), rate) for name, rate in data.get("head_rates", ())),
        )


@dataclass(frozen=True)
class TaskPerformance:
    """A model's clean behaviour on a task."""

    model: str
    task: str
    mean_logit_diff: float
    per_prompt: tuple[float, ...]
    accuracy: float  # share of prompts whose top-1 token is the correct answer
    pairwise_accuracy: float  # share of prompts with correct logit > distractor logit
    #: mean probability of the correct answer at the prediction position (softmax over the
    #: vocabulary); None in a result written before it was measured
    answer_prob: float | None = None

    @property
    def n_prompts(self) -> int:
        return len(self.per_prompt)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["answer_prob"] is None:  # as a result written before it existed: reads back equal
            del data["answer_prob"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskPerformance:
        # JSON has no tuples: the per-prompt values come back as a list
        return cls(**{**data, "per_prompt": tuple(data["per_prompt"])})


@dataclass
class SweepResult:
    """Every requested component's single-ablation effect on one model and task.

    ``confirm_top_k`` is how many of an attribution sweep's most influential components were
    re-measured exactly (None for an exact sweep, where it means nothing). ``screening`` says how
    an auto sweep chose what to measure exactly (None for the other methods); each effect's
    ``method`` and ``bound`` say whether its value is exact or a bounded estimate.
    ``pruned`` names the components whose weights were zeroed (None: not recorded).
    """

    model: ModelInfo
    task: str
    clean_metric: float
    performance: TaskPerformance
    effects: list[ComponentEffect]
    fingerprint: MethodFingerprint
    confirm_top_k: int | None = None
    screening: Screening | None = field(default=None)
    #: The model's components (swept or not) that write nothing because their weights were
    #: zeroed (pruned): a head whose output projection rows are all zero, an MLP whose output
    #: does not depend on its input. Ablating one costs nothing, as ablating an idle one does;
    #: this tells them apart. None: not recorded (a sweep from before this field, or a family
    #: whose modules the engine does not know).
    pruned: tuple[str, ...] | None = None

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.effects]

    @property
    def exact_names(self) -> list[str]:
        """Components whose value was measured exactly."""
        return [e.name for e in self.effects if e.is_exact]

    @property
    def estimated_names(self) -> list[str]:
        """Components whose value is a screened estimate (bounded or not)."""
        return [e.name for e in self.effects if not e.is_exact]

    @property
    def is_exact(self) -> bool:
        return all(e.is_exact for e in self.effects)

    @property
    def mean_drop_bound(self) -> float:
        """Half-width, in points, of the interval around the mean clamped drop in which the
        exact sweep's mean drop lies: 0 for an exact sweep, the mean of the estimates' bounds
        for an auto sweep, infinite when an estimate carries no bound."""
        if not self.effects:
            return 0.0
        total = 0.0
        for e in self.effects:
            if e.is_exact:
                continue
            if e.bound is None:
                return math.inf
            total += e.bound
        return total / len(self.effects)

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
            "screening": self.screening.to_dict() if self.screening is not None else None,
            "pruned": list(self.pruned) if self.pruned is not None else None,
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
            screening=(
                Screening.from_dict(data["screening"])
                if data.get("screening") is not None
                else None
            ),
            # results from before the field: not recorded (None), never "nothing pruned"
            pruned=(tuple(str(n) for n in data["pruned"])
                    if data.get("pruned") is not None else None),
        )
