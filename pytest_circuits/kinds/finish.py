"""What every gate does after measuring: build its GateResult, record it, raise with a table.

One helper for every kind, so each records before it raises, prints the same check table and
keys its baseline entry the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import CircuitAssertionError, GateConfigError
from ..identity import ModelInfo
from ..recording import Blame, GateResult, MetricCheck, as_model_info, record
from ..tables import format_number, format_table
from .registry import GateKind

Tolerance = float | Mapping[str, float] | None


def checks_table(checks: Sequence[MetricCheck]) -> str:
    """The measured value, threshold, teacher context and verdict of each check."""
    return format_table(
        ["metric", "measured", "threshold", "teacher", "verdict"],
        [
            [c.metric, c.value, f"{c.op} {format_number(c.threshold)}", c.teacher_value,
             "ok" if c.passed else "FAIL"]
            for c in checks
        ],
    )


def tolerances(baseline_tolerance: Tolerance, names: Sequence[str]) -> dict[str, float]:
    """Per-metric baseline tolerances from one number (every metric) or a mapping."""
    if baseline_tolerance is None:
        return {}
    if isinstance(baseline_tolerance, Mapping):
        return {str(k): _tolerance(v, str(k)) for k, v in baseline_tolerance.items()}
    return {name: _tolerance(baseline_tolerance, name) for name in names}


def _tolerance(value: Any, metric: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise GateConfigError(
            f"baseline_tolerance for {metric} is {value!r}; give a non-negative number (or a "
            "mapping metric -> number)"
        )
    return float(value)


def model_name(model: ModelInfo | Mapping[str, Any]) -> str:
    return as_model_info(model).name


def pair_subject(report: Any) -> str:
    """``teacher -> student``: the subject of a pair gate (part of its baseline key)."""
    return f"{model_name(report.teacher.model)} -> {model_name(report.student.model)}"


def headline(what: str, report: Any) -> str:
    return f"{what} of {pair_subject(report)} on task '{report.task}'"


def pair_result(
    kind: GateKind,
    report: Any,
    checks: list[MetricCheck],
    values: dict[str, float],
    blame: list[Blame],
    baseline_tolerance: Tolerance,
) -> GateResult:
    """The GateResult of a gate over a PairReport."""
    return GateResult(
        gate=kind.name,
        subject=pair_subject(report),
        task=report.task,
        checks=checks,
        values=values,
        blame=blame,
        fingerprint=report.fingerprint.to_dict(),
        models={"teacher": as_model_info(report.teacher.model),
                "student": as_model_info(report.student.model)},
        report=report,
        tolerances=tolerances(baseline_tolerance, list(values)),
    )


def finish(result: GateResult, headline: str, details: str) -> None:
    """Record ``result``, then raise :class:`CircuitAssertionError` with its table if any check
    failed (recording first, so a failed gate is still reported and compared)."""
    __tracebackhide__ = True
    failed = [c for c in result.checks if not c.passed]
    message = f"{headline}\n{checks_table(result.checks)}"
    if details:
        message += f"\n{details}"
    result.message = message if failed else ""
    record(result)
    if failed:
        raise CircuitAssertionError(message)
