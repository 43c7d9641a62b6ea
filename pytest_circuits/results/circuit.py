"""A model's circuit on one task, as discovered by iterative node pruning (torch-free; the
discovery itself is :func:`pytest_circuits.analysis.circuits.discover_circuit`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..components import Component
from ..config.options import ABLATIONS
from ..errors import GateConfigError

__all__ = ["CircuitEdge", "CircuitResult", "StabilityPoint", "check_ablation", "check_threshold",
           "jaccard"]


def check_threshold(value: Any, where: str = "discover_circuit", name: str = "threshold"
                    ) -> float:
    """A pruning threshold: a finite number strictly between 0 and 1."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0 < value < 1):
        raise GateConfigError(
            f"{where}: {name}={value!r} must be a number strictly between 0 and 1: the share "
            "of the full model's logit difference pruning may lose (the paper's 0.20 keeps "
            "more than 80%); pass e.g. threshold=0.2"
        )
    return float(value)


def check_ablation(value: Any, where: str = "discover_circuit") -> str:
    """An ablation name: one of ``ABLATIONS``."""
    if value not in ABLATIONS:
        raise GateConfigError(
            f"{where}: ablation={value!r} is not one of {', '.join(map(repr, ABLATIONS))}; "
            "pass ablation='mean' (the paper's), 'zero' or 'resample'"
        )
    return str(value)


def jaccard(a: Any, b: Any) -> float:
    """|a & b| / |a | b| of two collections of node names (1.0 when both are empty)."""
    first, second = set(a), set(b)
    union = first | second
    return 1.0 if not union else len(first & second) / len(union)


def _node_order(name: str) -> tuple[int, int]:
    component = Component.parse(name)
    return component.layer, component.order


@dataclass(frozen=True)
class StabilityPoint:
    """The circuit found at threshold ``threshold``: its nodes, and their Jaccard overlap with
    the nodes at the result's own threshold."""

    threshold: float
    nodes: tuple[str, ...]
    faithfulness: float
    jaccard: float

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "nodes": list(self.nodes),
                "faithfulness": self.faithfulness, "jaccard": self.jaccard}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StabilityPoint:
        return cls(threshold=float(data["threshold"]), nodes=tuple(data["nodes"]),
                   faithfulness=float(data["faithfulness"]), jaccard=float(data["jaccard"]))


@dataclass(frozen=True)
class CircuitEdge:
    """An edge of the node circuit found by path patching: ``sender``'s ablated output fed to
    ``receiver``'s input only (``"logits"``: the final residual) leaves ``score`` of the
    circuit's own logit difference (kept when below the edge threshold, 0.8)."""

    sender: str
    receiver: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"sender": self.sender, "receiver": self.receiver, "score": self.score}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CircuitEdge:
        return cls(sender=str(data["sender"]), receiver=str(data["receiver"]),
                   score=float(data["score"]))


@dataclass(frozen=True)
class CircuitResult:
    """The circuit of ``model`` on ``task`` at pruning threshold ``threshold``.

    Two ratios describe it, both against ``full_logit_diff`` (the clean model's mean logit
    difference), and they follow the paper and ``auto-circuit``, not the issue's wording:

    - ``faithfulness``: the logit difference with ONLY the circuit kept (every other head and
      MLP ablated) over the full model's. The paper's "14 heads + 11 MLPs keep 81%" is this
      number; pruning keeps it above ``1 - threshold`` by construction.
    - ``complement``: the logit difference with the circuit ablated and everything else kept,
      over the full model's; ``completeness = 1 - complement`` is high when the rest of the
      model carries little of the task without the circuit.

    ``node_drops[n]`` is the paper's per-node criticality: the points (percent of the full
    logit difference) lost when ``n`` alone is also ablated, everything outside the circuit
    staying ablated. ``stability`` holds the circuit found at each threshold of the sweep, with
    its Jaccard overlap with this one's nodes. ``cost_fe`` is the discovery's cost in
    forward-pass equivalents (blocks run, stacked copies counted each, over the layer count;
    the clean and reference runs included); ``passes`` the pruning passes of this threshold.
    """

    model: str
    task: str
    threshold: float
    ablation: str
    nodes: tuple[str, ...]
    full_logit_diff: float
    circuit_logit_diff: float
    complement_logit_diff: float
    node_drops: dict[str, float]
    n_layers: int
    n_heads_per_layer: int
    cost_fe: float
    passes: int
    seed: int = 0
    stability: tuple[StabilityPoint, ...] = ()
    edges: tuple[CircuitEdge, ...] | None = None
    wall_seconds: float = 0.0
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(sorted(self.nodes, key=_node_order)))

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if not n.startswith("MLP"))

    @property
    def mlps(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if n.startswith("MLP"))

    @property
    def n_heads(self) -> int:
        return len(self.heads)

    @property
    def n_mlps(self) -> int:
        return len(self.mlps)

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def n_components(self) -> int:
        """Every head and MLP of the model (what pruning started from)."""
        return self.n_layers * (self.n_heads_per_layer + 1)

    def _share(self, value: float) -> float:
        full = self.full_logit_diff
        return value / full if full != 0 and math.isfinite(full) else float("nan")

    @property
    def faithfulness(self) -> float:
        """Logit difference with only the circuit kept, over the full model's."""
        return self._share(self.circuit_logit_diff)

    @property
    def complement(self) -> float:
        """Logit difference with the circuit ablated (the rest kept), over the full model's."""
        return self._share(self.complement_logit_diff)

    @property
    def completeness(self) -> float:
        """``1 - complement``."""
        return 1.0 - self.complement

    @property
    def worst_node_drop(self) -> float:
        """The largest single-node drop in the circuit (0 for an empty circuit)."""
        return max(self.node_drops.values(), default=0.0)

    def critical_nodes(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` nodes whose removal costs most, largest drop first (ties by name)."""
        return sorted(self.node_drops.items(), key=lambda item: (-item[1], item[0]))[:k]

    def by_layer(self) -> dict[int, list[str]]:
        """The nodes per layer (layers without a node left out), in residual order."""
        layers: dict[int, list[str]] = {}
        for name in self.nodes:
            layers.setdefault(Component.parse(name).layer, []).append(name)
        return layers

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": self.task,
            "threshold": self.threshold,
            "ablation": self.ablation,
            "seed": self.seed,
            "nodes": list(self.nodes),
            "n_heads": self.n_heads,
            "n_mlps": self.n_mlps,
            "full_logit_diff": self.full_logit_diff,
            "circuit_logit_diff": self.circuit_logit_diff,
            "complement_logit_diff": self.complement_logit_diff,
            "faithfulness": self.faithfulness,
            "complement": self.complement,
            "completeness": self.completeness,
            "node_drops": dict(self.node_drops),
            "n_layers": self.n_layers,
            "n_heads_per_layer": self.n_heads_per_layer,
            "cost_fe": self.cost_fe,
            "passes": self.passes,
            "stability": [p.to_dict() for p in self.stability],
            "edges": None if self.edges is None else [e.to_dict() for e in self.edges],
            "wall_seconds": self.wall_seconds,
            "fingerprint": dict(self.fingerprint),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CircuitResult:
        edges = data.get("edges")
        return cls(
            model=str(data["model"]),
            task=str(data["task"]),
            threshold=float(data["threshold"]),
            ablation=str(data["ablation"]),
            seed=int(data.get("seed", 0)),
            nodes=tuple(data["nodes"]),
            full_logit_diff=float(data["full_logit_diff"]),
            circuit_logit_diff=float(data["circuit_logit_diff"]),
            complement_logit_diff=float(data["complement_logit_diff"]),
            node_drops={str(k): float(v) for k, v in data["node_drops"].items()},
            n_layers=int(data["n_layers"]),
            n_heads_per_layer=int(data["n_heads_per_layer"]),
            cost_fe=float(data["cost_fe"]),
            passes=int(data["passes"]),
            stability=tuple(StabilityPoint.from_dict(p) for p in data.get("stability", ())),
            edges=None if edges is None else tuple(CircuitEdge.from_dict(e) for e in edges),
            wall_seconds=float(data.get("wall_seconds", 0.0)),
            fingerprint=dict(data.get("fingerprint", {})),
        )
