"""Gate results and where assertions send them (the plugin installs a recorder per test).

Kept free of torch so the plugin can import it at load time.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from .identity import ModelInfo


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


def as_model_info(model: ModelInfo | Mapping[str, Any]) -> ModelInfo:
    """A model description as :class:`ModelInfo` (reports made before it was typed hold dicts)."""
    return model if isinstance(model, ModelInfo) else ModelInfo.from_dict(dict(model))


def report_from_data(data: Any) -> Any:
    """A stored report as its typed PairReport/ModelReport when it says which it is.

    Imported here, not at module load, so the plugin stays torch-free; a report without a
    ``"kind"`` (or an analysis package that cannot rebuild one) stays the plain dict it was.
    """
    if not isinstance(data, Mapping) or "kind" not in data:
        return data
    try:
        from .analysis.comparison import report_from_dict
    except ImportError:
        return dict(data)
    return report_from_dict(dict(data))


@dataclass
class GateResult:
    """What one ``assert_*`` call measured and decided: the unit of reports and baselines."""

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


Recorder = Callable[[GateResult], None]

_recorder: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar(
    "pytest_circuits_recorder", default=None
)


def record(result: GateResult) -> None:
    """Hand a result to the active recorder (the plugin's, during a test); no-op outside."""
    recorder = _recorder.get()
    if recorder is not None:
        recorder(result)


@contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    """Install ``recorder`` for the duration of the block (the plugin wraps each test)."""
    token = _recorder.set(recorder)
    try:
        yield
    finally:
        _recorder.reset(token)


@dataclass(frozen=True)
class RunSettings:
    """What the plugin tells the gates of the test that calls them: the ``--circuits-n-prompts``
    and ``--circuits-seed`` (or marker, or ini) values a gate uses when it is given a task name
    and no ``n_prompts=``/``seed=`` of its own, and whether the run needs a GPU."""

    n_prompts: int | None = None
    seed: int | None = None
    require_gpu: bool = False


_settings: contextvars.ContextVar[RunSettings | None] = contextvars.ContextVar(
    "pytest_circuits_run_settings", default=None
)


def run_settings() -> RunSettings:
    """The settings of the test running now (defaults outside pytest)."""
    return _settings.get() or RunSettings()


@contextmanager
def using_settings(settings: RunSettings) -> Iterator[None]:
    """Install ``settings`` for the duration of the block (the plugin wraps each test)."""
    token = _settings.set(settings)
    try:
        yield
    finally:
        _settings.reset(token)
