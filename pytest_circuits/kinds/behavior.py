"""The ``behavior_preserved`` gate: the student still does the task as well as its teacher.

Three measures of the clean behaviour, each against the teacher's: the logit difference (how
strongly the correct answer beats the distractor), the top-1 accuracy (how often the model
actually names the correct answer) and the probability it gives the correct answer. The logit
difference alone cannot see a student that prefers the correct answer to the distractor but
predicts some third token: SmolLM2-135M with six layers dropped keeps 104.5% of its IOI logit
difference while naming the answer on 0 of 32 prompts.
"""

from __future__ import annotations

from typing import Any

from ..config.options import DEFAULT_MARGIN
from ..results import MetricCheck
from ..tables import format_table
from .registry import GateKind, Metric, Threshold, Tolerance
from .runner import GateCall, Measurement, clean_fingerprint, run_gate

#: The default floor of ``min_accuracy_retained``, in percent of the teacher's top-1 accuracy.
#: It blocks a student that has stopped naming the answer, not one that is a little noisier:
#: on 32 prompts one prompt is 3 points, and a faithful copy stays near 100% (the zoo students
#: keep 100% on every built-in task; SmolLM2-135M's 8-bit copy 100% on IOI), while a model that
#: never names the answer keeps 0% (SmolLM2 with six layers dropped). Half the teacher's
#: accuracy leaves room for sampling noise at small prompt counts (a teacher right on 8 of 8
#: prompts and a student on 5 is 62.5%) and still fails a student right less than half as
#: often as its teacher.
DEFAULT_MIN_ACCURACY_RETAINED = 50.0


def assert_behavior_preserved(
    pair: Any,
    task: Any,
    *,
    min_retained: float,
    min_accuracy_retained: float | None = DEFAULT_MIN_ACCURACY_RETAINED,
    min_answer_prob_retained: float | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = DEFAULT_MARGIN,
    baseline_tolerance: Tolerance = None,
) -> Any:
    """The student still does the task: its clean logit difference is >= ``min_retained``
    percent of the teacher's, its top-1 accuracy >= ``min_accuracy_retained`` percent of the
    teacher's (default 50; None checks no accuracy) and, when given, its mean probability of
    the correct answer >= ``min_answer_prob_retained`` percent of the teacher's. A student whose
    clean logit difference is not above ``margin`` fails whatever the thresholds say (it no
    longer does the task). Returns the student's TaskPerformance."""
    __tracebackhide__ = True
    return run_gate(KIND, pair, task, min_retained=min_retained,
                    min_accuracy_retained=min_accuracy_retained,
                    min_answer_prob_retained=min_answer_prob_retained, n_prompts=n_prompts,
                    seed=seed, margin=margin, baseline_tolerance=baseline_tolerance)


def share_of_teacher(student: float, teacher: float) -> float:
    """``student`` as a percentage of ``teacher``; 100 when the teacher's is 0 (a student
    cannot lose what its teacher does not have)."""
    return 100.0 * student / teacher if teacher > 0 else 100.0


def _measure(call: GateCall, method: str | None) -> Measurement:
    from ..analysis import require_valid_task
    from ..analysis.store import task_performance

    pair, task = call.pair, call.task
    teacher = task_performance(pair.teacher, task)
    student = task_performance(pair.student, task)
    # both must do the task: a student that does not fails the gate (the runner's rule)
    require_valid_task([teacher, student], margin=call.options.margin)
    kept = 100.0 * student.mean_logit_diff / teacher.mean_logit_diff
    accuracy_kept = share_of_teacher(student.accuracy, teacher.accuracy)
    checks = [MetricCheck("behavior_retained", kept, call.limits["min_retained"], ">=")]
    if call.limits["min_accuracy_retained"] is not None:
        checks.append(MetricCheck("accuracy_retained", accuracy_kept,
                                  call.limits["min_accuracy_retained"], ">="))
    values = {"behavior_retained": kept, "accuracy_retained": accuracy_kept,
              "student_logit_diff": student.mean_logit_diff,
              "teacher_logit_diff": teacher.mean_logit_diff,
              "student_accuracy": student.accuracy, "teacher_accuracy": teacher.accuracy}
    if student.answer_prob is not None and teacher.answer_prob is not None:
        values["answer_prob_retained"] = share_of_teacher(student.answer_prob,
                                                          teacher.answer_prob)
        values["student_answer_prob"] = student.answer_prob
        values["teacher_answer_prob"] = teacher.answer_prob
    if call.limits["min_answer_prob_retained"] is not None:
        checks.append(MetricCheck("answer_prob_retained", values["answer_prob_retained"],
                                  call.limits["min_answer_prob_retained"], ">="))
    n = student.n_prompts
    details = format_table(
        ["model", "logit diff", "top-1 accuracy", "answer probability", "pairwise accuracy"],
        [
            [name, p.mean_logit_diff, f"{p.accuracy:.3f} ({round(p.accuracy * n)}/{n})",
             p.answer_prob, p.pairwise_accuracy]
            for name, p in (("teacher", teacher), ("student", student))
        ],
    )
    return Measurement(
        value=student,
        checks=checks,
        values=values,
        headline=f"behaviour of {pair.name} on task '{task.name}'",
        details=lambda line: details,
        fingerprint=clean_fingerprint(pair.student, task, call.options.seed,
                                      analysis="behavior", method="clean"),
        models={"teacher": pair.teacher.describe(), "student": pair.student.describe()},
    )


KIND = GateKind(
    name="behavior_preserved",
    function=assert_behavior_preserved,
    meaning=("the student still does the task: its clean logit difference, top-1 accuracy and "
             "answer probability against the teacher's"),
    thresholds=(
        Threshold("min_retained", "behavior_retained", ">=", "percent", 0.0, 1000.0,
                  required=True),
        Threshold("min_accuracy_retained", "accuracy_retained", ">=", "percent", 0.0, 1000.0,
                  default=DEFAULT_MIN_ACCURACY_RETAINED),
        Threshold("min_answer_prob_retained", "answer_prob_retained", ">=", "percent", 0.0,
                  1000.0),
    ),
    metrics=(
        Metric("behavior_retained", "percent", ">=", 2.0,
               meaning="student logit difference as a percentage of the teacher's"),
        # one prompt of 32 moves accuracy by 3.1 points of a perfect teacher's
        Metric("accuracy_retained", "percent", ">=", 5.0,
               meaning=("student top-1 accuracy as a percentage of the teacher's (100 when the "
                        "teacher's is 0)")),
        Metric("answer_prob_retained", "percent", ">=", 5.0,
               meaning=("student mean probability of the correct answer as a percentage of the "
                        "teacher's")),
        Metric("student_logit_diff", "logit", None, meaning="the student's mean logit difference"),
        Metric("teacher_logit_diff", "logit", None, meaning="the teacher's mean logit difference"),
        Metric("student_accuracy", "fraction", None, meaning="the student's top-1 accuracy"),
        Metric("teacher_accuracy", "fraction", None, meaning="the teacher's top-1 accuracy"),
        Metric("student_answer_prob", "probability", None,
               meaning="the student's mean probability of the correct answer"),
        Metric("teacher_answer_prob", "probability", None,
               meaning="the teacher's mean probability of the correct answer"),
    ),
    options=("margin",),
    measure=_measure,
)
