"""The ``ablation_robust`` gate: no single head or MLP is a single point of failure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import CircuitAssertionError, GateConfigError
from ..recording import Blame, GateResult, MetricCheck, as_model_info
from ..tables import format_table
from .finish import (
    Tolerance,
    bridges_match,
    brittleness_intervals,
    check_drop_tolerance,
    check_margin,
    finish,
    has_estimates,
    model_name,
    read_baseline_tolerance,
    record_method,
    require_gpu,
    student_must_do_task,
    sweep_method,
    task_options,
    tolerances,
    unsettled,
)
from .registry import GateKind, Metric, Threshold


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
    tolerance: float = 20.0,
    method: str | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = 0.1,
    baseline_tolerance: Tolerance = None,
) -> Any:
    """No single head or MLP is a single point of failure.

    Given a pair, the student is tested and ``max_severity_increase`` (student minus teacher
    severity) applies; given a model, that model is tested. Drops are percentage points of the
    clean metric (``100 - retained``, clamped to [0, 100]). ``method`` is the sweep algorithm:
    "exact", "auto" (screen by attribution, then measure exactly every component whose value
    could decide ``tolerance``, ``max_single_drop``, ``max_mean_drop`` or the 5 blamed
    components) or None (the run's ``--circuits-method``, else auto for a model of
    ``settings.AUTO_MIN_COMPONENTS`` components or more). Returns the student's ModelReport.
    """
    __tracebackhide__ = True
    limits = KIND.read_thresholds({  # before torch loads: a wrong call fails at once
        "max_severity": max_severity, "max_single_drop": max_single_drop,
        "max_mean_drop": max_mean_drop, "max_severity_increase": max_severity_increase,
    })
    from ..analysis.cached import as_task, model_report
    from ..models import ModelPair

    is_pair = isinstance(model_or_pair, ModelPair)
    if limits["max_severity_increase"] is not None and not is_pair:
        raise GateConfigError(
            "assert_ablation_robust: max_severity_increase compares the student with its "
            f"teacher, but a single model ({type(model_or_pair).__name__}) was given; pass a "
            "pair (circuit_pair)"
        )
    gate = KIND.function_name
    n_prompts, seed = task_options(n_prompts, seed, gate)
    margin = check_margin(margin, gate)
    tolerance = check_drop_tolerance(tolerance, gate)
    read_baseline_tolerance(baseline_tolerance, f"{gate}: baseline_tolerance", KIND)
    requested, origin = sweep_method(method, gate)
    subject = model_or_pair.student if is_pair else model_or_pair
    require_gpu(gate, *((model_or_pair.teacher, subject) if is_pair else (subject,)))
    task = as_task(task, n_prompts, seed, model_or_pair.teacher if is_pair else subject)
    bridges_match(KIND, task, _subject(subject.name, components),
                  {"teacher": model_or_pair.teacher, "student": subject} if is_pair
                  else {"model": subject}, seed=seed)
    from ..analysis.ablation import GateThresholds

    # what an auto sweep must decide exactly: the tolerance (added by model_report), the
    # single-drop and mean-drop limits, and the 5 components the gate blames
    single = () if limits["max_single_drop"] is None else (limits["max_single_drop"],)
    mean = () if limits["max_mean_drop"] is None else (limits["max_mean_drop"],)
    settings = dict(components=components, ablation=ablation, seed=seed, margin=margin,
                    tolerance=tolerance, method=requested,
                    thresholds=GateThresholds(drop=single, mean_drop=mean, top_k=BLAMED))
    if is_pair:  # a student that lost the task fails; a single model that cannot do it errs
        with student_must_do_task(KIND, model_or_pair, task,
                                  _subject(subject.name, components), margin=margin, seed=seed):
            report = model_report(subject, task, **settings)
    else:
        report = model_report(subject, task, **settings)
    teacher = model_report(model_or_pair.teacher, task, **settings) if is_pair else None
    checks = _checks(report, teacher, limits)
    sweeps = [report.sweep] + ([teacher.sweep] if teacher is not None else [])
    undecided: list[str] = []
    if has_estimates(*sweeps):
        # a verdict an estimate could flip is settled by the exact sweep (see finish.unsettled)
        undecided = unsettled(checks, _intervals(report, teacher))
        if undecided:
            settings["method"] = "exact"
            report = model_report(subject, task, **settings)
            teacher = model_report(model_or_pair.teacher, task, **settings) if is_pair else None
            checks = _checks(report, teacher, limits)
    b = report.brittleness
    tb = teacher.brittleness if teacher is not None else None
    values = {
        "severity": b.severity,
        "max_single_drop": b.worst_drop,
        "mean_drop": b.mean_drop,
        "worst5_mean": b.worst5_mean,
        "gini": b.gini,
        "count_above_tolerance": float(b.count_above_tolerance),
        "n_components": float(b.n_components),
    }
    if tb is not None:
        values["severity_increase"] = b.severity - tb.severity
        values["teacher_severity"] = tb.severity
    worst = report.sweep.worst(BLAMED)
    models = {"model": as_model_info(report.model)}
    if teacher is not None:
        models["teacher"] = as_model_info(teacher.model)
    name = model_name(report.model)
    result = GateResult(
        gate=KIND.name,
        subject=_subject(name, components),
        task=report.task,
        checks=checks,
        values=values,
        blame=[Blame(e.name, None, {"drop": e.drop, "retained": e.retained}) for e in worst],
        fingerprint=report.fingerprint.to_dict(),
        models=models,
        report=report,
        tolerances=tolerances(baseline_tolerance, list(values), KIND),
    )
    by_role = {"student" if is_pair else "model": report.sweep}
    if teacher is not None:
        by_role["teacher"] = teacher.sweep
    method_line = record_method(result, requested, origin, by_role, undecided)
    details = (
        f"  {method_line}\n"
        f"  mean drop {b.mean_drop:.2f} (95% CI {b.mean_drop_ci[0]:.2f}..{b.mean_drop_ci[1]:.2f}),"
        f" {b.count_above_tolerance} of {b.n_components} components drop more than "
        f"{b.tolerance:g} points, worst-5% mean {b.worst5_mean:.2f}, Gini {b.gini:.3f}\n"
        "  components to blame (largest drops):\n"
        + format_table(
            ["component", "drop", "retained"],
            [[e.name, e.drop, e.retained] for e in worst],
        )
    )
    head = f"ablation robustness of {name} on task '{report.task}'"
    if teacher is not None:
        head += f" (teacher {model_name(teacher.model)} for context)"
    finish(result, head, details, task=task)
    return report


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


def _intervals(report: Any, teacher: Any) -> dict[str, tuple[float, float]]:
    """Each checked metric's interval over the sweeps' bands."""
    intervals = brittleness_intervals(report.sweep, report.brittleness)
    if teacher is not None:
        t_lo, t_hi = brittleness_intervals(teacher.sweep, teacher.brittleness)["severity"]
        s_lo, s_hi = intervals["severity"]
        intervals["severity_increase"] = (s_lo - t_hi, s_hi - t_lo)
    return intervals


#: How many components the gate blames (and an auto sweep measures exactly among the worst).
BLAMED = 5


def _subject(name: str, components: str | Sequence[str]) -> str:
    """A model's name, plus the component selection when it is not every component, so gates
    over different selections keep separate baseline entries."""
    if isinstance(components, str):
        return name if components == "all" else f"{name} [{components}]"
    return f"{name} [{','.join(components)}]"


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
)
