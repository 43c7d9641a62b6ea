"""What one ``assert_*`` call measured and decided (:class:`GateResult`), with the typed records
that gates keep in its fingerprint: how its sweeps were measured, how its task was adapted.

Torch-free, so the plugin, the reports and the baselines read results without the analysis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..identity import ModelInfo

__all__ = [
    "SWEEP_METHOD_KEY",
    "TASK_ADAPTATION_KEY",
    "Blame",
    "GateResult",
    "MetricCheck",
    "RoleSweep",
    "SweepMethodRecord",
    "as_model_info",
    "report_from_data",
]

#: The fingerprint key of a gate's :class:`SweepMethodRecord` (results files keep this name).
SWEEP_METHOD_KEY = "sweep_method"
#: The fingerprint key of the note on a built-in task adapted to a tokenizer (not a method
#: field: the task hash already differs when the prompts do).
TASK_ADAPTATION_KEY = "task_adaptation"


@dataclass
class MetricCheck:
    """One measured value against one threshold."""

    metric: str  # e.g. "alignment", "severity", "max_single_drop"
    value: float
    threshold: float
    op: str  # ">=" or "<="
    teacher_value: float | None = None

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold


@dataclass
class Blame:
    """A component to blame for a gate's verdict, and the numbers that single it out."""

    component: str  # the model's component, or the teacher's for a pair gate ("L1H2")
    counterpart: str | None = None  # the matched student component, for a pair gate
    scores: dict[str, float] = field(default_factory=dict)  # {"drop": 87.5, "retained": 12.5}

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "counterpart": self.counterpart,
                "scores": dict(self.scores)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Blame:
        return cls(str(data["component"]), data.get("counterpart"),
                   {str(k): float(v) for k, v in dict(data.get("scores", {})).items()})


@dataclass(frozen=True)
class RoleSweep:
    """How the sweep of one role's model ("student", "teacher", "model") was measured: the
    method of the sweep that served the gate and how many of its values are exact, bounded
    estimates or estimates at all, with the half-width of the mean drop's interval."""

    model: str
    method: str
    components: int
    exact: int
    bounded: int
    estimated: int
    mean_drop_bound: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoleSweep:
        """Inverse of :meth:`to_dict`; a field a record lacks reads as empty (0, "")."""
        return cls(
            model=str(data.get("model", "")),
            method=str(data.get("method", "")),
            components=int(data.get("components", 0)),
            exact=int(data.get("exact", 0)),
            bounded=int(data.get("bounded", 0)),
            estimated=int(data.get("estimated", 0)),
            mean_drop_bound=float(data.get("mean_drop_bound", 0.0)),
        )


@dataclass(frozen=True)
class SweepMethodRecord:
    """How a gate's sweeps were measured: the method it asked for (None: the default by size),
    where that came from, the line its message prints, each role's :class:`RoleSweep`, and the
    checks that made it sweep again exactly (``settled_exactly``)."""

    requested: str | None
    origin: str
    note: str
    sweeps: Mapping[str, RoleSweep] = field(default_factory=dict)
    settled_exactly: tuple[str, ...] = ()

    @property
    def any_auto(self) -> bool:
        """Some role's sweep was an auto sweep (values may be bounded estimates)."""
        return any(sweep.method == "auto" for sweep in self.sweeps.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON a results file holds under ``fingerprint["sweep_method"]``."""
        return {
            "requested": self.requested,
            "origin": self.origin,
            "note": self.note,
            "sweeps": {role: sweep.to_dict() for role, sweep in self.sweeps.items()},
            "settled_exactly": list(self.settled_exactly),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepMethodRecord:
        """Inverse of :meth:`to_dict`; a role whose entry is not a mapping is left out."""
        sweeps = data.get("sweeps") or {}
        return cls(
            requested=data.get("requested"),
            origin=str(data.get("origin", "")),
            note=str(data.get("note", "")),
            sweeps={str(role): RoleSweep.from_dict(sweep) for role, sweep in dict(sweeps).items()
                    if isinstance(sweep, Mapping)},
            settled_exactly=tuple(str(s) for s in data.get("settled_exactly") or ()),
        )


def as_model_info(model: ModelInfo | Mapping[str, Any]) -> ModelInfo:
    """A model description as :class:`ModelInfo` (reports made before it was typed hold dicts)."""
    return model if isinstance(model, ModelInfo) else ModelInfo.from_dict(dict(model))


def report_from_data(data: Any) -> Any:
    """A stored report as its typed PairReport/ModelReport when it says which it is; a report
    without a ``"kind"`` stays the plain data it was."""
    if not isinstance(data, Mapping) or "kind" not in data:
        return data
    from .reports import report_from_dict  # numpy, loaded only when a result holds a report

    return report_from_dict(dict(data))


@dataclass
class GateResult:
    """What one ``assert_*`` call measured and decided: the unit of reports and baselines.

    ``fingerprint`` is the method fingerprint as plain data (what results files and baselines
    store); the records gates add to it are read and written through typed accessors
    (:attr:`sweep_method`, :attr:`task_adaptation`), which keep its JSON as it was.
    """

    gate: str  # a gate kind's name: "circuit_aligned", "ablation_robust", ...
    subject: str  # "teacher -> student" or a model name
    task: str
    checks: list[MetricCheck]
    values: dict[str, float] = field(default_factory=dict)  # every score, for baselines/JUnit
    blame: list[Blame] = field(default_factory=list)  # components to blame
    fingerprint: dict[str, Any] = field(default_factory=dict)
    models: dict[str, ModelInfo] = field(default_factory=dict)  # role -> model
    report: Any = None  # the PairReport/ModelReport the gate saw (a dict when stored untyped)
    tolerances: dict[str, float] = field(default_factory=dict)  # per-metric baseline tolerance
    nodeid: str = ""
    message: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def key(self) -> str:
        """Stable identity of this gate for baselines: gate, subject and task."""
        return f"{self.gate}::{self.subject}::{self.task}"

    @property
    def sweep_method(self) -> SweepMethodRecord | None:
        """How the gate's sweeps were measured (None for a gate that swept nothing, or a result
        stored before gates recorded it)."""
        data = self.fingerprint.get(SWEEP_METHOD_KEY)
        return SweepMethodRecord.from_dict(data) if isinstance(data, Mapping) else None

    def set_sweep_method(self, record: SweepMethodRecord) -> None:
        """Store ``record`` in the fingerprint (a new dict: a shared one is left as it was)."""
        self.fingerprint = {**self.fingerprint, SWEEP_METHOD_KEY: record.to_dict()}

    @property
    def task_adaptation(self) -> str:
        """How a built-in task was adapted to the models' tokenizer ("" when it was not)."""
        note = self.fingerprint.get(TASK_ADAPTATION_KEY)
        return str(note) if note else ""

    def set_task_adaptation(self, note: str) -> None:
        """Store the adaptation ``note`` in the fingerprint; an empty note stores nothing."""
        if note:
            self.fingerprint = {**self.fingerprint, TASK_ADAPTATION_KEY: note}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; :meth:`from_dict` rebuilds the typed parts."""
        report = self.report.to_dict() if hasattr(self.report, "to_dict") else self.report
        return {
            "gate": self.gate,
            "subject": self.subject,
            "task": self.task,
            "checks": [asdict(c) for c in self.checks],
            "values": dict(self.values),
            "blame": [b.to_dict() for b in self.blame],
            "fingerprint": dict(self.fingerprint),
            "models": {role: info.to_dict() for role, info in self.models.items()},
            "report": report,
            "tolerances": dict(self.tolerances),
            "nodeid": self.nodeid,
            "message": self.message,
            "passed": self.passed,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateResult:
        data = dict(data)
        data.pop("passed", None)
        data.pop("key", None)
        data["checks"] = [MetricCheck(**c) for c in data.get("checks", [])]
        data["blame"] = [Blame.from_dict(b) for b in data.get("blame", [])]
        data["models"] = {role: as_model_info(m) for role, m in data.get("models", {}).items()}
        data["report"] = report_from_data(data.get("report"))
        return cls(**data)

