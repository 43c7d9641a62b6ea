"""The ``assert_*`` gates: run (or reuse) an analysis, compare with thresholds, explain failures.

Every gate records a :class:`~pytest_circuits.recording.GateResult` (pass or fail) before it
raises, so the plugin can report scores, write baselines and fill JUnit properties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .analysis.cached import as_pair, as_task, model_report, pair_report
from .errors import CircuitAssertionError
from .recording import GateResult, MetricCheck, record

# ----------------------------------------------------------------------------- inputs


def _check_threshold(
    name: str, value: Any, low: float, high: float, *, what: str
) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number ({what})")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(
            f"{name}={value!r} is out of range: it must lie in [{low}, {high}] ({what})"
        )
    return value


# ----------------------------------------------------------------------------- messages


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (what failure messages and summaries print)."""
    cells = [[str(h) for h in headers]] + [
        [_fmt(c) if isinstance(c, float) or c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


def _checks_table(checks: Sequence[MetricCheck]) -> str:
    return format_table(
        ["metric", "measured", "threshold", "teacher", "verdict"],
        [
            [c.metric, c.value, f"{c.op} {_fmt(c.threshold)}", c.teacher_value,
             "ok" if c.passed else "FAIL"]
            for c in checks
        ],
    )


def _finish(result: GateResult, headline: str, details: str) -> None:
    """Record the result, then raise with a table if any check failed."""
    __tracebackhide__ = True
    failed = [c for c in result.checks if not c.passed]
    message = f"{headline}\n{_checks_table(result.checks)}"
    if details:
        message += f"\n{details}"
    result.message = message if failed else ""
    record(result)
    if failed:
        raise CircuitAssertionError(message)


def _no_silent_pass(checks: list[MetricCheck], gate: str) -> None:
    if not checks:
        raise ValueError(
            f"{gate}: no threshold was set, so nothing would be checked; pass at least one "
            "threshold (for example max_severity=0.05)"
        )


def _tolerances(baseline_tolerance: float | dict[str, float] | None, names: Sequence[str]) -> dict:
    if baseline_tolerance is None:
        return {}
    if isinstance(baseline_tolerance, dict):
        return {k: float(v) for k, v in baseline_tolerance.items()}
    return {name: float(baseline_tolerance) for name in names}


# ----------------------------------------------------------------------------- gates


def assert_circuit_aligned(
    pair: Any,
    task: Any,
    *,
    min_score: float,
    method: str = "paper",
    ablation: str = "mean",
    similarity: str = "paper",
    min_weighted_score: float | None = None,
    n_prompts: int | None = None,
    seed: int = 0,
    margin: float = 0.1,
    baseline_tolerance: float | dict[str, float] | None = None,
) -> Any:
    """The student's circuit matches the teacher's: alignment score A >= ``min_score``.

    ``method`` is the matching: "paper" (most similar component) or "causal" (nearest ablation
    effect). ``min_weighted_score`` also gates the influence-weighted variant, which drops when
    an influential teacher component's counterpart carries no influence. Returns the
    PairReport.
    """
    __tracebackhide__ = True
    min_score = _check_threshold("min_score", min_score, 0.0, 1.0, what="an alignment score")
    if min_score is None:
        raise ValueError("assert_circuit_aligned needs min_score (a number in [0, 1])")
    min_weighted = _check_threshold(
        "min_weighted_score", min_weighted_score, 0.0, 1.0, what="an alignment score"
    )
    report = pair_report(
        pair, task, ablation=ablation, similarity=similarity, matching=method,
        n_prompts=n_prompts, seed=seed, margin=margin,
    )
    a = report.alignment
    if not a.pairs:
        raise CircuitAssertionError("alignment was computed over zero matched components")
    checks = [MetricCheck("alignment", a.score, min_score, ">=")]
    if min_weighted is not None:
        checks.append(MetricCheck("weighted_alignment", a.weighted_score, min_weighted, ">="))
    values = {
        "alignment": a.score,
        "mean_similarity": a.mean_similarity,
        "influence_term": a.influence_term,
        "weighted_alignment": a.weighted_score,
        "n_pairs": float(len(a.pairs)),
    }
    weakest = a.weakest(5)
    blame = [
        {"teacher": p.teacher, "student": p.student, "similarity": p.similarity,
         "teacher_share": p.teacher_share, "student_share": p.student_share,
         "contribution": p.contribution}
        for p in weakest
    ]
    result = _result("circuit_aligned", report, checks, values, blame, baseline_tolerance)
    details = (
        f"  parts: mean similarity {a.mean_similarity:.4f}, influence term "
        f"{a.influence_term:+.4f}, weighted variant {a.weighted_score:.4f} "
        f"({len(a.pairs)} matched pairs, matching={method}, similarity={similarity})\n"
        "  pairs that pull the score down most:\n"
        + format_table(
            ["teacher", "student", "similarity", "teacher share", "student share", "term"],
            [[p.teacher, p.student, p.similarity, p.teacher_share, p.student_share,
              p.contribution] for p in weakest],
        )
    )
    _finish(result, _headline("circuit alignment", report), details)
    return report


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
    n_prompts: int | None = None,
    seed: int = 0,
    margin: float = 0.1,
    baseline_tolerance: float | dict[str, float] | None = None,
) -> Any:
    """No single head or MLP is a single point of failure.

    Given a pair, the student is tested and ``max_severity_increase`` (student minus teacher
    severity) applies; given a model, that model is tested. Drops are percentage points of the
    clean metric (``100 - retained``, clamped to [0, 100]). Returns the student's ModelReport.
    """
    __tracebackhide__ = True
    from .models import ModelPair

    max_severity = _check_threshold("max_severity", max_severity, 0.0, 1.0, what="a severity")
    max_single = _check_threshold(
        "max_single_drop", max_single_drop, 0.0, 100.0, what="percentage points of the metric"
    )
    max_mean = _check_threshold(
        "max_mean_drop", max_mean_drop, 0.0, 100.0, what="percentage points of the metric"
    )
    max_increase = _check_threshold(
        "max_severity_increase", max_severity_increase, -1.0, 1.0, what="a severity difference"
    )
    is_pair = isinstance(model_or_pair, ModelPair)
    if max_increase is not None and not is_pair:
        raise ValueError(
            "max_severity_increase compares the student with its teacher: pass a pair "
            "(circuit_pair), not a single model"
        )
    kw = dict(
        components=components, ablation=ablation, n_prompts=n_prompts, seed=seed,
        margin=margin, tolerance=tolerance,
    )
    subject = model_or_pair.student if is_pair else model_or_pair
    report = model_report(subject, task, **kw)
    teacher = model_report(model_or_pair.teacher, task, **kw) if is_pair else None
    b = report.brittleness
    tb = teacher.brittleness if teacher is not None else None
    if b.n_components == 0:
        raise CircuitAssertionError("ablation sweep evaluated zero components")
    checks: list[MetricCheck] = []
    if max_severity is not None:
        checks.append(
            MetricCheck("severity", b.severity, max_severity, "<=", tb.severity if tb else None)
        )
    if max_single is not None:
        checks.append(
            MetricCheck("max_single_drop", b.worst_drop, max_single, "<=",
                        tb.worst_drop if tb else None)
        )
    if max_mean is not None:
        checks.append(
            MetricCheck("mean_drop", b.mean_drop, max_mean, "<=", tb.mean_drop if tb else None)
        )
    if max_increase is not None and tb is not None:
        checks.append(
            MetricCheck("severity_increase", b.severity - tb.severity, max_increase, "<=")
        )
    _no_silent_pass(checks, "assert_ablation_robust")
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
    worst = report.sweep.worst(5)
    blame = [{"component": e.name, "drop": e.drop, "retained": e.retained} for e in worst]
    models = {"model": report.model}
    if teacher is not None:
        models["teacher"] = teacher.model
    result = GateResult(
        gate="ablation_robust",
        subject=_subject(str(report.model.get("name")), components),
        task=report.task,
        checks=checks,
        values=values,
        blame=blame,
        fingerprint=report.fingerprint.to_dict(),
        models=models,
        report=report.to_dict(),
        tolerances=_tolerances(baseline_tolerance, list(values)),
    )
    details = (
        f"  mean drop {b.mean_drop:.2f} (95% CI {b.mean_drop_ci[0]:.2f}..{b.mean_drop_ci[1]:.2f}),"
        f" {b.count_above_tolerance} of {b.n_components} components drop more than "
        f"{b.tolerance:g} points, worst-5% mean {b.worst5_mean:.2f}, Gini {b.gini:.3f}\n"
        "  components to blame (largest drops):\n"
        + format_table(
            ["component", "drop", "retained"],
            [[e.name, e.drop, e.retained] for e in worst],
        )
    )
    head = f"ablation robustness of {report.model.get('name')} on task '{report.task}'"
    if teacher is not None:
        head += f" (teacher {teacher.model.get('name')} for context)"
    _finish(result, head, details)
    return report


def assert_behavior_preserved(
    pair: Any,
    task: Any,
    *,
    min_retained: float,
    n_prompts: int | None = None,
    seed: int = 0,
    margin: float = 0.1,
    baseline_tolerance: float | dict[str, float] | None = None,
) -> Any:
    """The student still does the task: its clean metric is >= ``min_retained`` percent of the
    teacher's. Returns the student's TaskPerformance."""
    __tracebackhide__ = True
    from .analysis import require_valid_task, task_performance

    min_retained = _check_threshold(
        "min_retained", min_retained, 0.0, 1000.0, what="percent of the teacher's metric"
    )
    if min_retained is None:
        raise ValueError("assert_behavior_preserved needs min_retained (percent, e.g. 90)")
    pair = as_pair(pair)
    task = as_task(task, n_prompts, seed)
    teacher = task_performance(pair.teacher, task)
    student = task_performance(pair.student, task)
    require_valid_task([teacher], margin=margin)
    kept = 100.0 * student.mean_logit_diff / teacher.mean_logit_diff
    checks = [MetricCheck("behavior_retained", kept, min_retained, ">=")]
    values = {
        "behavior_retained": kept,
        "student_logit_diff": student.mean_logit_diff,
        "teacher_logit_diff": teacher.mean_logit_diff,
        "student_accuracy": student.accuracy,
        "teacher_accuracy": teacher.accuracy,
    }
    from .analysis.ablation import make_fingerprint

    fingerprint = make_fingerprint(
        pair.student, task, analysis="behavior", ablation="none", method="clean", seed=seed
    )
    result = GateResult(
        gate="behavior_preserved",
        subject=pair.name,
        task=task.name,
        checks=checks,
        values=values,
        fingerprint=fingerprint.to_dict(),
        models={"teacher": pair.teacher.describe(), "student": pair.student.describe()},
        tolerances=_tolerances(baseline_tolerance, list(values)),
    )
    details = format_table(
        ["model", "logit diff", "accuracy", "pairwise accuracy"],
        [
            ["teacher", teacher.mean_logit_diff, teacher.accuracy, teacher.pairwise_accuracy],
            ["student", student.mean_logit_diff, student.accuracy, student.pairwise_accuracy],
        ],
    )
    _finish(result, f"behaviour of {pair.name} on task '{task.name}'", details)
    return student


def assert_mechanism_preserved(
    pair: Any,
    task: Any,
    *,
    components: Sequence[str],
    min_similarity: float = 0.5,
    min_influence: float = 2.0,
    similarity: str = "paper",
    method: str = "paper",
    ablation: str = "mean",
    n_prompts: int | None = None,
    seed: int = 0,
    margin: float = 0.1,
    baseline_tolerance: float | dict[str, float] | None = None,
) -> Any:
    """Named teacher components (say a "similar member" head) keep an influential student
    counterpart: the matched student component has similarity >= ``min_similarity`` and its
    ablation costs >= ``min_influence`` points. Returns the PairReport."""
    __tracebackhide__ = True
    from .components import Component

    if isinstance(components, str) or not components:
        raise ValueError(
            "components must be a non-empty list of teacher component names, e.g. ['L1H2']"
        )
    min_similarity = _check_threshold(
        "min_similarity", min_similarity, -1.0, 1.0, what="a similarity"
    )
    min_influence = _check_threshold(
        "min_influence", min_influence, 0.0, 1e6, what="percentage points of the metric"
    )
    names = [Component.parse(c).name for c in components]
    report = pair_report(
        pair, task, ablation=ablation, similarity=similarity, matching=method,
        n_prompts=n_prompts, seed=seed, margin=margin,
    )
    by_teacher = {p.teacher: p for p in report.alignment.pairs}
    missing = [n for n in names if n not in by_teacher]
    if missing:
        raise ValueError(
            f"teacher components {', '.join(missing)} do not exist in "
            f"{report.teacher.model.get('name')} (it has {len(by_teacher)} components)"
        )
    checks: list[MetricCheck] = []
    values: dict[str, float] = {}
    rows = []
    for name in names:
        p = by_teacher[name]
        checks.append(MetricCheck(f"{name}.similarity", p.similarity, min_similarity, ">="))
        checks.append(
            MetricCheck(f"{name}.student_influence", p.student_influence, min_influence, ">=",
                        p.teacher_influence)
        )
        values[f"{name}.similarity"] = p.similarity
        values[f"{name}.student_influence"] = p.student_influence
        rows.append([name, p.teacher_influence, p.student, p.similarity, p.student_influence])
    result = _result(
        "mechanism_preserved", report, checks, values,
        [{"teacher": r[0], "student": r[2], "similarity": r[3], "student_influence": r[4]}
         for r in rows],
        baseline_tolerance,
    )
    details = "  counterparts:\n" + format_table(
        ["teacher", "teacher infl", "student match", "similarity", "student infl"], rows
    )
    _finish(result, _headline("mechanism preservation", report), details)
    return report


def _subject(name: str, components: str | Sequence[str]) -> str:
    """A model's name, plus the component selection when it is not every component, so gates
    over different selections keep separate baseline entries."""
    if isinstance(components, str):
        return name if components == "all" else f"{name} [{components}]"
    return f"{name} [{','.join(components)}]"


def _headline(what: str, report: Any) -> str:
    t, s = report.teacher.model.get("name"), report.student.model.get("name")
    return f"{what} of {t} -> {s} on task '{report.task}'"


def _result(
    gate: str,
    report: Any,
    checks: list[MetricCheck],
    values: dict[str, float],
    blame: list[dict[str, Any]],
    baseline_tolerance: float | dict[str, float] | None,
) -> GateResult:
    return GateResult(
        gate=gate,
        subject=f"{report.teacher.model.get('name')} -> {report.student.model.get('name')}",
        task=report.task,
        checks=checks,
        values=values,
        blame=blame,
        fingerprint=report.fingerprint.to_dict(),
        models={"teacher": report.teacher.model, "student": report.student.model},
        report=report.to_dict(),
        tolerances=_tolerances(baseline_tolerance, list(values)),
    )
