"""The ``behavior_preserved`` gate: the student still does the task as well as its teacher."""

from __future__ import annotations

from typing import Any

from ..config.options import DEFAULT_MARGIN
from ..results import MetricCheck
from ..tables import format_table
from .registry import GateKind, Metric, Threshold, Tolerance
from .runner import GateCall, Measurement, clean_fingerprint, run_gate


def assert_behavior_preserved(
    pair: Any,
    task: Any,
    *,
    min_retained: float,
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = DEFAULT_MARGIN,
    baseline_tolerance: Tolerance = None,
) -> Any:
    """The student still does the task: its clean metric is >= ``min_retained`` percent of the
    teacher's. A student whose clean logit difference is not above ``margin`` fails whatever
    ``min_retained`` says (it no longer does the task). Returns the student's TaskPerformance."""
    __tracebackhide__ = True
    return run_gate(KIND, pair, task, min_retained=min_retained, n_prompts=n_prompts, seed=seed,
                    margin=margin, baseline_tolerance=baseline_tolerance)


def _measure(call: GateCall, method: str | None) -> Measurement:
    from ..analysis import require_valid_task
    from ..analysis.store import task_performance

    pair, task = call.pair, call.task
    teacher = task_performance(pair.teacher, task)
    student = task_performance(pair.student, task)
    # both must do the task: a student that does not fails the gate (the runner's rule)
    require_valid_task([teacher, student], margin=call.options.margin)
    kept = 100.0 * student.mean_logit_diff / teacher.mean_logit_diff
    details = format_table(
        ["model", "logit diff", "accuracy", "pairwise accuracy"],
        [
            ["teacher", teacher.mean_logit_diff, teacher.accuracy, teacher.pairwise_accuracy],
            ["student", student.mean_logit_diff, student.accuracy, student.pairwise_accuracy],
        ],
    )
    return Measurement(
        value=student,
        checks=[MetricCheck("behavior_retained", kept, call.limits["min_retained"], ">=")],
        values={"behavior_retained": kept, "student_logit_diff": student.mean_logit_diff,
                "teacher_logit_diff": teacher.mean_logit_diff,
                "student_accuracy": student.accuracy, "teacher_accuracy": teacher.accuracy},
        headline=f"behaviour of {pair.name} on task '{task.name}'",
        details=lambda line: details,
        fingerprint=clean_fingerprint(pair.student, task, call.options.seed,
                                      analysis="behavior", method="clean"),
        models={"teacher": pair.teacher.describe(), "student": pair.student.describe()},
    )


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
    measure=_measure,
)
