"""The ``behavior_preserved`` gate: the student still does the task as well as its teacher."""

from __future__ import annotations

from typing import Any

from ..recording import GateResult, MetricCheck
from ..tables import format_table
from .finish import (
    Tolerance,
    bridges_match,
    check_margin,
    finish,
    read_baseline_tolerance,
    require_gpu,
    task_options,
    tolerances,
)
from .registry import GateKind, Metric, Threshold


def assert_behavior_preserved(
    pair: Any,
    task: Any,
    *,
    min_retained: float,
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = 0.1,
    baseline_tolerance: Tolerance = None,
) -> Any:
    """The student still does the task: its clean metric is >= ``min_retained`` percent of the
    teacher's. Returns the student's TaskPerformance."""
    __tracebackhide__ = True
    limits = KIND.read_thresholds({"min_retained": min_retained})  # before torch loads
    from ..analysis import require_valid_task, task_performance
    from ..analysis.ablation import make_fingerprint
    from ..analysis.cached import as_pair, as_task

    gate = KIND.function_name
    n_prompts, seed = task_options(n_prompts, seed, gate)
    margin = check_margin(margin, gate)
    read_baseline_tolerance(baseline_tolerance, f"{gate}: baseline_tolerance", KIND)
    pair = as_pair(pair)
    require_gpu(gate, pair.teacher, pair.student)
    task = as_task(task, n_prompts, seed, pair.teacher)
    bridges_match(KIND, task, pair.name, {"teacher": pair.teacher, "student": pair.student},
                  seed=seed)
    teacher = task_performance(pair.teacher, task)
    student = task_performance(pair.student, task)
    require_valid_task([teacher], margin=margin)
    kept = 100.0 * student.mean_logit_diff / teacher.mean_logit_diff
    checks = [MetricCheck("behavior_retained", kept, limits["min_retained"], ">=")]
    values = {
        "behavior_retained": kept,
        "student_logit_diff": student.mean_logit_diff,
        "teacher_logit_diff": teacher.mean_logit_diff,
        "student_accuracy": student.accuracy,
        "teacher_accuracy": teacher.accuracy,
    }
    fingerprint = make_fingerprint(
        pair.student, task, analysis="behavior", ablation="none", method="clean", seed=seed
    )
    result = GateResult(
        gate=KIND.name,
        subject=pair.name,
        task=task.name,
        checks=checks,
        values=values,
        fingerprint=fingerprint.to_dict(),
        models={"teacher": pair.teacher.describe(), "student": pair.student.describe()},
        tolerances=tolerances(baseline_tolerance, list(values), KIND),
    )
    details = format_table(
        ["model", "logit diff", "accuracy", "pairwise accuracy"],
        [
            ["teacher", teacher.mean_logit_diff, teacher.accuracy, teacher.pairwise_accuracy],
            ["student", student.mean_logit_diff, student.accuracy, student.pairwise_accuracy],
        ],
    )
    if not student.mean_logit_diff > margin:
        details += (f"\n  behaviour lost: the student's clean logit difference "
                    f"{student.mean_logit_diff:.4f} is not above margin={margin:g} (the "
                    f"teacher's is {teacher.mean_logit_diff:.4f})")
    finish(result, f"behaviour of {pair.name} on task '{task.name}'", details, task=task)
    return student


KIND = GateKind(
    name="behavior_preserved",
    function=assert_behavior_preserved,
    meaning="the student still does the task: its clean metric against the teacher's",
    thresholds=(
        Threshold("min_retained", "behavior_retained", ">=", "percent", 0.0, 1000.0,
                  required=True),
    ),
    metrics=(
        Metric("behavior_retained", "percent", ">=", 2.0,
               meaning="student logit difference as a percentage of the teacher's"),
        Metric("student_logit_diff", "logit", None, meaning="the student's mean logit difference"),
        Metric("teacher_logit_diff", "logit", None, meaning="the teacher's mean logit difference"),
        Metric("student_accuracy", "fraction", None, meaning="the student's top-1 accuracy"),
        Metric("teacher_accuracy", "fraction", None, meaning="the teacher's top-1 accuracy"),
    ),
    options=("margin",),
)
