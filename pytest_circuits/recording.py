"""Gate results and where assertions send them (the plugin installs a recorder per test).

Kept free of torch so the plugin can import it at load time.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


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
class GateResult:
    """What one ``assert_*`` call measured and decided: the unit of reports and baselines."""

    gate: str  # "circuit_aligned" | "ablation_robust" | "behavior_preserved" | ...
    subject: str  # "teacher -> student" or a model name
    task: str
    checks: list[MetricCheck]
    values: dict[str, float] = field(default_factory=dict)  # every score, for baselines/JUnit
    blame: list[dict[str, Any]] = field(default_factory=list)  # components to blame
    fingerprint: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)  # role -> model description
    report: dict[str, Any] | None = None  # the full report (PairReport/ModelReport to_dict)
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
        data = asdict(self)
        data["passed"] = self.passed
        data["key"] = self.key
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        data = dict(data)
        data.pop("passed", None)
        data.pop("key", None)
        data["checks"] = [MetricCheck(**c) for c in data.get("checks", [])]
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
