"""The ``ablation_robust`` gate: no single head or MLP is a single point of failure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config.options import DEFAULT_MARGIN, DEFAULT_TOLERANCE, GateThresholds
from ..errors import CircuitAssertionError, GateConfigError
from ..identity import model_name
from ..results import Blame, MetricCheck, as_model_info
from ..tables import format_table
from .registry import GateKind, Metric, Threshold, Tolerance
from .runner import GateCall, Measurement, run_gate

#: How many components the gate blames (and an auto sweep measures exactly among the worst).
BLAMED = 5


def assert_ablation_robust(
    model_or_pair: Any,
    task: Any,
    *,
    max_severity: float | None = None,
    max_single_drop: float | None = None,
    max_mean_drop: float | None = None,
    max_severity_increase: float | None = None,
    components: str | Sequence[str] = "all",
    ablation: str = "mean",
    tolerance: float = DEFAULT_TOLERANCE,
    method: str | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = DEFAULT_MARGIN,
    baseline_tolerance: Tolerance = None,
) -> Any:
    """No single head or MLP is a single point of failure.

    Given a pair, the student is tested and ``max_severity_increase`` (student minus teacher
    severity) applies; given a model, that model is tested. Drops are percentage points of the
    clean metric (``100 - retained``, clamped to [0, 100]). ``method`` is the sweep algorithm:
    "exact", "auto" (screen by attribution, then measure exactly every component whose value
    could decide ``tolerance``, ``max_single_drop``, ``max_mean_drop`` or the 5 blamed
    components) or None (the run's ``--circuits-method``, else auto for a model of
    ``AUTO_MIN_COMPONENTS`` components or more). Returns the student's ModelReport.
    """
    __tracebackhide__ = True
    return run_gate(
        KIND, model_or_pair, task, max_severity=max_severity, max_single_drop=max_single_drop,
        max_mean_drop=max_mean_drop, max_severity_increase=max_severity_increase,
        components=components, ablation=ablation, tolerance=tolerance, method=method,
        n_prompts=n_prompts, seed=seed, margin=margin, baseline_tolerance=baseline_tolerance,
    )


def _check(call: GateCall) -> None:
    if call.limits["max_severity_increase"] is not None and call.pair is None:
        raise GateConfigError(
            "assert_ablation_robust: max_severity_increase compares the student with its "
            f"teacher, but a single model ({type(call.model).__name__}) was given; pass a "
            "pair (circuit_pair)"
        )


def _measure(call: GateCall, method: str | None) -> Measurement:
    from ..analysis.bounds import has_estimates
    from ..analysis.comparison import model_report

    limits = call.limits
    # what an auto sweep must decide exactly: the tolerance (added by model_report), the
    # single-drop and mean-drop limits, and the 5 components the gate blames
    single = () if limits["max_single_drop"] is None else (limits["max_single_drop"],)
    mean = () if limits["max_mean_drop"] is None else (limits["max_mean_drop"],)
    options = call.options.replace(
        method=method, thresholds=GateThresholds(drop=single, mean_drop=mean, top_k=BLAMED))
    report = model_report(call.model, call.task, options)
    teacher = model_report(call.teacher, call.task, options) if call.pair else None
    checks = _checks(report, teacher, limits)
    sweeps = {"student" if call.pair else "model": report.sweep}
    if teacher is not None:
        sweeps["teacher"] = teacher.sweep
    unsettled = _unsettled(checks, report, teacher) if has_estimates(*sweeps.values()) else []
    b, tb = report.brittleness, teacher.brittleness if teacher is not None else None
    values = {"severity": b.severity, "max_single_drop": b.worst_drop, "mean_drop": b.mean_drop,
              "worst5_mean": b.worst5_mean, "gini": b.gini,
              "count_above_tolerance": float(b.count_above_tolerance),
              "n_components": float(b.n_components)}
    if tb is not None:
        values["severity_increase"] = b.severity - tb.severity
        values["teacher_severity"] = tb.severity
    worst = report.sweep.worst(BLAMED)
    models = {"model": as_model_info(report.model)}
    if teacher is not None:
        models["teacher"] = as_model_info(teacher.model)
    head = f"ablation robustness of {model_name(report.model)} on task '{report.task}'"
    if teacher is not None:
        head += f" (teacher {model_name(teacher.model)} for context)"
    return Measurement(
        value=report, checks=checks, values=values, headline=head,
        details=lambda line: _details(line, b, worst), fingerprint=report.fingerprint.to_dict(),
        models=models, report=report, sweeps=sweeps, unsettled=unsettled, task=report.task,
        blame=[Blame(e.name, None, {"drop": e.drop, "retained": e.retained}) for e in worst],
    )


def _checks(report: Any, teacher: Any, limits: dict[str, Any]) -> list[MetricCheck]:
    b = report.brittleness
    tb = teacher.brittleness if teacher is not None else None
    if b.n_components == 0:
        raise CircuitAssertionError("ablation sweep evaluated zero components")
    measured = {
        "max_severity": ("severity", b.severity, tb.severity if tb else None),
        "max_single_drop": ("max_single_drop", b.worst_drop, tb.worst_drop if tb else None),
        "max_mean_drop": ("mean_drop", b.mean_drop, tb.mean_drop if tb else None),
        "max_severity_increase": ("severity_increase",
                                  b.severity - tb.severity if tb else None, None),
    }
    return [
        MetricCheck(metric, value, limits[name], "<=", teacher_value)
        for name, (metric, value, teacher_value) in measured.items()
        if limits[name] is not None and value is not None
    ]


def _unsettled(checks: list[MetricCheck], report: Any, teacher: Any) -> list[str]:
    """The checks whose threshold lies inside their metric's interval over the bands."""
    from ..analysis.bounds import brittleness_intervals, unsettled

    intervals = brittleness_intervals(report.sweep, report.brittleness)
    if teacher is not None:
        t_lo, t_hi = brittleness_intervals(teacher.sweep, teacher.brittleness)["severity"]
        s_lo, s_hi = intervals["severity"]
        intervals["severity_increase"] = (s_lo - t_hi, s_hi - t_lo)
    return unsettled(checks, intervals)


def _details(method_line: str, b: Any, worst: Sequence[Any]) -> str:
    return (
        f"  {method_line}\n"
        f"  mean drop {b.mean_drop:.2f} (95% CI {b.mean_drop_ci[0]:.2f}..{b.mean_drop_ci[1]:.2f}),"
        f" {b.count_above_tolerance} of {b.n_components} components drop more than "
        f"{b.tolerance:g} points, worst-5% mean {b.worst5_mean:.2f}, Gini {b.gini:.3f}\n"
        "  components to blame (largest drops):\n"
        + format_table(["component", "drop", "retained"],
                       [[e.name, e.drop, e.retained] for e in worst])
    )


KIND = GateKind(
    name="ablation_robust",
    function=assert_ablation_robust,
    meaning="no single head or MLP is a single point of failure",
    thresholds=(
        Threshold("max_severity", "severity", "<=", "score", 0.0, 1.0),
        Threshold("max_single_drop", "max_single_drop", "<=", "points", 0.0, 100.0),
        Threshold("max_mean_drop", "mean_drop", "<=", "points", 0.0, 100.0),
        Threshold("max_severity_increase", "severity_increase", "<=", "score difference",
                  -1.0, 1.0),
    ),
    metrics=(
        Metric("severity", "score", "<=", 0.02,
               meaning="how far single-component drops exceed the tolerance, 0 (none) to 1"),
        Metric("max_single_drop", "points", "<=", 2.0,
               meaning="the largest drop one component's ablation causes"),
        Metric("mean_drop", "points", "<=", 2.0, meaning="the mean drop over components"),
        Metric("worst5_mean", "points", "<=", 2.0, meaning="the mean of the worst 5% of drops"),
        Metric("gini", "score", "<=", 0.02, meaning="how unevenly the drops are spread"),
        Metric("count_above_tolerance", "count", None,
               meaning="components whose drop exceeds the tolerance"),
        Metric("n_components", "count", None, meaning="components ablated"),
        Metric("severity_increase", "score difference", "<=", 0.02,
               meaning="student severity minus teacher severity (pairs only)"),
        Metric("teacher_severity", "score", None, meaning="the teacher's severity (pairs only)"),
    ),
    options=("components", "ablation", "tolerance", "margin", "method"),
    takes_model=True,
    measure=_measure,
    check=_check,
    keyed_by_model=True,
)
