"""Baselines: gate results of the last accepted release, and the regression check against them.

A baseline file is JSON with a header (format, version, dates, library versions) and one entry
per :attr:`GateResult.key`. A result is compared metric by metric with its entry: for a metric a
gate checks with ``>=`` a lower value is worse, for ``<=`` a higher one; a change in the worse
direction beyond the tolerance is a regression and fails the test that measured it. An entry
measured with a different method (any of ``METHOD_FIELDS`` of the fingerprint) is refused; a
method field an older release did not write yet reads as the value it implicitly had.
Which way is worse for a metric the gate did not check, and each metric's default tolerance,
come from its gate kind's registry entry (:mod:`pytest_circuits.kinds`).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import CircuitsError, GateConfigError
from .kinds import kind_of, metric_spec
from .results import GateResult
from .tables import format_table

FORMAT = "pytest-circuits-baseline"
VERSION = 1

#: The tolerance of a metric no gate kind declares (a score's).
FALLBACK_TOLERANCE = 0.02

Tolerance = float | dict[str, float] | None


class BaselineFileError(CircuitsError, ValueError):
    """The baseline file cannot be read or is not a pytest-circuits baseline."""


def default_tolerance(metric: str, gate: str = "") -> float:
    """The registry's tolerance of ``metric`` for ``gate`` (``L1H2.similarity`` counts as
    ``similarity``)."""
    spec = metric_spec(gate, metric)
    if spec is None or spec.tolerance is None:
        return FALLBACK_TOLERANCE
    return spec.tolerance


def tolerance_for(metric: str, result: GateResult, override: Tolerance = None) -> float:
    """The result's own tolerance, else the test's (marker/YAML), else the registry's.

    A NaN or negative tolerance is a :class:`GateConfigError`: NaN would let every regression
    through (it compares false), a negative one would fail an unchanged value.
    """
    if metric in result.tolerances:
        return _checked(result.tolerances[metric], metric, f"{result.gate}'s baseline_tolerance")
    if isinstance(override, dict):
        if metric in override:
            return _checked(override[metric], metric, "the test's baseline_tolerance")
    elif override is not None:
        return _checked(override, metric, "the test's baseline_tolerance")
    return default_tolerance(metric, result.gate)


def _checked(value: object, metric: str, where: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise GateConfigError(f"{where} for {metric} is {value!r}; give a finite number >= 0")
    return float(value)


def direction(metric: str, result: GateResult) -> str | None:
    """``">="`` when lower is worse, ``"<="`` when higher is worse, None when not compared:
    the check's own comparison, else the registry's direction of the metric."""
    for check in result.checks:
        if check.metric == metric:
            return check.op
    spec = metric_spec(result.gate, metric)
    return spec.direction if spec is not None else None


@dataclass
class MetricDelta:
    """One metric against its baseline value."""

    metric: str
    baseline: float
    current: float
    tolerance: float
    op: str  # ">=" (lower is worse) or "<=" (higher is worse)

    @property
    def worse_by(self) -> float:
        """How far the current value moved in the worse direction (negative: it improved)."""
        change = self.current - self.baseline
        return -change if self.op == ">=" else change

    @property
    def regressed(self) -> bool:
        if not (math.isfinite(self.current) and math.isfinite(self.baseline)):
            return True  # NaN compares false with everything: it must never read as "ok"
        return self.worse_by > self.tolerance + 1e-12


@dataclass
class BaselineCheck:
    """The outcome of comparing one result with the baseline (or of recording it there)."""

    key: str
    status: str  # "ok" | "regressed" | "missing" | "refused" | "updated"
    deltas: list[MetricDelta] = field(default_factory=list)
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("regressed", "missing", "refused")

    def delta(self, metric: str) -> MetricDelta | None:
        return next((d for d in self.deltas if d.metric == metric), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineCheck:
        data = dict(data)
        data["deltas"] = [MetricDelta(**d) for d in data.get("deltas", [])]
        return cls(**data)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def legacy_value(name: str, fingerprint: dict[str, Any]) -> Any:
    """The value a method field had in a fingerprint written before the field existed.

    ``direction`` came with the choice of matching direction; before it every comparison
    matched teacher to student (the paper's convention) and a sweep had none. Any other field
    reads as the fingerprint's default, or None (a mismatch) when it has none.
    """
    from .results.fingerprint import DEFAULT_DIRECTION, MethodFingerprint

    if name == "direction":
        return DEFAULT_DIRECTION if fingerprint.get("matching") else ""
    for spec in fields(MethodFingerprint):
        if spec.name == name and spec.default is not MISSING:
            return spec.default
    return None


def method_differences(current: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    """Method fields of two fingerprints that differ, as ``name: stored -> current``."""
    from .results.fingerprint import METHOD_FIELDS

    def value(fingerprint: dict[str, Any], name: str) -> Any:
        return fingerprint[name] if name in fingerprint else legacy_value(name, fingerprint)

    return [
        f"{name}: baseline {value(stored, name)!r}, this run {value(current, name)!r}"
        for name in METHOD_FIELDS
        if value(stored, name) != value(current, name)
    ]


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (for messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def update_command(path: str, nodeid: str) -> str:
    return (
        f"pytest {shlex.quote(nodeid)} --circuits-baseline={shlex.quote(str(path))} "
        "--circuits-update-baseline"
    )


class Baseline:
    """A baseline file's entries; ``check`` compares a result, ``updated`` merges new ones."""

    def __init__(self, path: Path, entries: dict[str, dict[str, Any]] | None = None,
                 header: dict[str, Any] | None = None) -> None:
        self.path = path
        self.shown = _shown(path)
        self.entries = dict(entries or {})
        self.header = dict(header or {})

    @classmethod
    def load(cls, path: Path) -> Baseline:
        """Read ``path``; a file that does not exist yet is an empty baseline."""
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise BaselineFileError(
                f"baseline {path} cannot be read ({exc}); restore it from version control or "
                "rewrite it with --circuits-update-baseline"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BaselineFileError(
                f"baseline {path} is not a pytest-circuits baseline (no \"format\": "
                f"\"{FORMAT}\"); point --circuits-baseline at a file written by "
                "--circuits-update-baseline"
            )
        if data.get("version") != VERSION:
            raise BaselineFileError(
                f"baseline {path} has format version {data.get('version')!r}; this "
                f"pytest-circuits reads version {VERSION}: rewrite it with "
                "--circuits-update-baseline"
            )
        entries = data.get("entries", {})
        if not isinstance(entries, dict):
            raise BaselineFileError(
                f"baseline {path}: \"entries\" must be a mapping of gate keys to entries, got "
                f"{type(entries).__name__}; rewrite it with --circuits-update-baseline"
            )
        for key, entry in entries.items():
            problem = entry_problem(key, entry)
            if problem:
                raise BaselineFileError(
                    f"baseline {path}: entry {key!r} {problem}; a baseline that cannot be "
                    "compared must not pass. Fix the entry, or re-record it with "
                    "--circuits-update-baseline"
                )
        header = {k: v for k, v in data.items() if k != "entries"}
        return cls(path, entries, header)

    def check(self, result: GateResult, tolerance: Tolerance = None) -> BaselineCheck:
        """Compare ``result`` with its entry: ok, regressed, missing or refused."""
        entry = self.entries.get(result.key)
        if entry is None:
            return BaselineCheck(
                result.key, "missing",
                message=(
                    f"no baseline entry for {result.key!r} in {self.shown}; record the current "
                    f"values as the baseline with:\n  {update_command(self.shown, result.nodeid)}"
                ),
            )
        differences = method_differences(result.fingerprint, entry.get("fingerprint", {}))
        if differences:
            return BaselineCheck(
                result.key, "refused",
                message=(
                    f"baseline entry {result.key!r} in {self.shown} was measured with a different "
                    "method, so the numbers are not comparable:\n    "
                    + "\n    ".join(differences)
                    + "\n  measure both the same way, or re-record the baseline with:\n  "
                    + update_command(self.shown, result.nodeid)
                ),
            )
        deltas = []
        stored = entry.get("values", {})
        for metric, current in result.values.items():
            op = direction(metric, result)
            if op is None or metric not in stored:
                continue
            deltas.append(MetricDelta(metric, float(stored[metric]), float(current),
                                      tolerance_for(metric, result, tolerance), op))
        regressed = [d for d in deltas if d.regressed]
        if not regressed:
            return BaselineCheck(result.key, "ok", deltas)
        table = format_table(
            ["metric", "baseline", "now", "change", "tolerance"],
            [[d.metric, d.baseline, d.current, f"{d.current - d.baseline:+.4g}",
              f"{d.tolerance:g} ({'lower' if d.op == '>=' else 'higher'} is worse)"]
             for d in regressed],
        )
        return BaselineCheck(
            result.key, "regressed", deltas,
            message=(
                f"regression against baseline {self.shown} for {result.key!r}:\n{table}\n"
                "  if the change is intended, accept it with:\n  "
                + update_command(self.shown, result.nodeid)
            ),
        )

    def updated(self, results: list[GateResult], remove: set[str] = frozenset(),
                versions: dict[str, str] | None = None) -> Baseline:
        """A new baseline: these results replace their entries; keys in ``remove`` go."""
        entries = {k: v for k, v in self.entries.items() if k not in remove}
        for result in results:
            entries[result.key] = entry_for(result)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "created": self.header.get("created") or _now(),
            "updated": _now(),
            "versions": versions or {},
        }
        return Baseline(self.path, entries, header)

    def to_dict(self) -> dict[str, Any]:
        return {**self.header, "entries": dict(sorted(self.entries.items()))}


def entry_problem(key: Any, entry: Any) -> str:
    """What is wrong with one baseline entry ("" when nothing): each must hold a non-empty
    ``values`` mapping of finite numbers, named as its gate kind's registry names them."""
    if not isinstance(entry, dict):
        return f"is {type(entry).__name__}, not a mapping"
    values = entry.get("values")
    if not isinstance(values, dict) or not values:
        return ("has no values (\"values\" must be a non-empty mapping metric -> number), so "
                "nothing could be compared")
    kind = kind_of(str(key).split("::", 1)[0])
    for metric, number in values.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            return f"has a value {metric}: {number!r} that is not a number"
        if not math.isfinite(number):
            return f"has a value {metric}: {number!r} that is not finite"
        if kind is not None and kind.metric(str(metric)) is None:
            from .settings import closest

            known = [m.name for m in kind.metrics]
            return (f"names a metric {metric!r} that gate {kind.name} does not report"
                    f"{closest(metric, known)} (its metrics: {', '.join(known)})")
    for part in ("fingerprint", "checks", "models"):
        if part in entry and not isinstance(entry[part], dict):
            return f"has a \"{part}\" that is {type(entry[part]).__name__}, not a mapping"
    if "nodeid" in entry and not isinstance(entry["nodeid"], str):
        return "has a \"nodeid\" that is not a string"
    return ""


def entry_for(result: GateResult) -> dict[str, Any]:
    """What a baseline keeps of a result: its values, thresholds, method and models."""
    return {
        "values": dict(result.values),
        "checks": {c.metric: {"op": c.op, "threshold": c.threshold} for c in result.checks},
        "fingerprint": dict(result.fingerprint),
        "models": {role: info.to_dict() for role, info in result.models.items()},
        "nodeid": result.nodeid,
    }
