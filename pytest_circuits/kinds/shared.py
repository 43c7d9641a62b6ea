"""What the gate kinds over a compared pair (aligned, mechanism) share: the cached pair report
measured with the gate's options, its headline, the method settings it names, its models."""

from __future__ import annotations

from typing import Any

from ..config.options import GateThresholds
from ..results import as_model_info
from .runner import GateCall


def measure_pair(call: GateCall, method: str | None,
                 thresholds: GateThresholds) -> tuple[Any, dict[str, Any], bool]:
    """The pair's report for the gate's options and ``method`` (an auto sweep decides
    ``thresholds`` exactly, plus compare's own cut points), the sweeps it read by role, and
    whether any of their values is an estimate."""
    from ..analysis.bounds import has_estimates
    from ..analysis.cached import pair_report

    options = call.options.replace(method=method, thresholds=thresholds)
    report = pair_report(call.pair, call.task, options)
    sweeps = {"teacher": report.teacher.sweep, "student": report.student.sweep}
    return report, sweeps, has_estimates(*sweeps.values())


def pair_subject(report: Any) -> str:
    """``teacher -> student``: the subject of a pair gate (part of its baseline key)."""
    teacher, student = as_model_info(report.teacher.model), as_model_info(report.student.model)
    return f"{teacher.name} -> {student.name}"


def pair_headline(what: str, report: Any) -> str:
    return f"{what} of {pair_subject(report)} on task '{report.task}'"


def pair_models(report: Any) -> dict[str, Any]:
    return {"teacher": as_model_info(report.teacher.model),
            "student": as_model_info(report.student.model)}


def method_settings(preset: str | None, report: Any) -> str:
    """How a pair report matched and compared components, for a failure's "parts:" line.

    The values come from the report's fingerprint, since a preset replaces the matching and
    similarity the caller passed; the preset is named first so a reader knows where they came
    from ("no preset": the options were given one by one, or left at the paper's defaults).
    """
    method = report.fingerprint
    parts = [f"preset={preset}" if preset else "no preset", f"matching={method.matching}",
             f"similarity={method.similarity}"]
    if method.tie_margin is not None:
        parts.append(f"tie_margin={method.tie_margin:g}")
    if method.noise_floor:
        parts.append(f"noise_floor={method.noise_floor:g}")
    return ", ".join(parts)
