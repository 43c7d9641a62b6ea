"""The ``shift_robust`` gate: the student holds up as well as its teacher when prompts shift.

A distilled student can match its teacher on the exact test prompts and fall apart on slightly
different ones (longer lists, unseen names, a filler clause). This gate measures both models on
the built-in task and on a shifted version of it (``tasks.shifts``), and fails when the student
keeps clearly less of its logit difference, or loses clearly more accuracy, than the teacher.
A failure prints the shifted prompts on which the student broke and the teacher did not, and
the smallest such prompt Hypothesis finds (a derandomised, bounded search that then shrinks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..config.options import DEFAULT_MARGIN
from ..errors import GateConfigError
from ..results import MetricCheck
from ..tables import format_table
from ..tasks import resolve_task
from ..tasks.builtin import BUILTIN_TASKS
from ..tasks.shifts import SHIFTS, shifted_task
from .registry import GateKind, Metric, Threshold, Tolerance
from .runner import GateCall, Measurement, clean_fingerprint, run_gate

#: Hypothesis examples tried when looking for the smallest prompt that breaks the student.
DEFAULT_MAX_EXAMPLES = 100
#: At most this many: each draw runs both models on a shifted prompt, and the search (with its
#: shrinking) then has a bounded cost; 10^9 draws ran for minutes before being killed.
MAX_EXAMPLES = 10_000
_SHOWN = 5  # broken prompts of the shifted task listed in a failure


@dataclass(frozen=True)
class ShiftMeasurement:
    """Teacher and student on a built-in task and on its shifted version."""

    task: str
    shift: str
    teacher_logit_diff: float  # on the built-in task
    student_logit_diff: float
    teacher_shifted_logit_diff: float  # on the shifted task
    student_shifted_logit_diff: float
    teacher_shifted_accuracy: float
    student_shifted_accuracy: float
    broken: tuple[str, ...]  # shifted prompts the student gets wrong and the teacher right
    smallest: str | None = None  # the shrunk counterexample, when one was searched for

    @property
    def teacher_retained(self) -> float:
        """Teacher's shifted logit difference in % of its logit difference on the task."""
        return 100.0 * self.teacher_shifted_logit_diff / self.teacher_logit_diff

    @property
    def student_retained(self) -> float:
        return 100.0 * self.student_shifted_logit_diff / self.student_logit_diff

    @property
    def gap(self) -> float:
        """How many more points of its logit difference the student loses than the teacher."""
        return self.teacher_retained - self.student_retained

    @property
    def accuracy_gap(self) -> float:
        return self.teacher_shifted_accuracy - self.student_shifted_accuracy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_shift_name(task_name: str, shift: Any) -> None:

    if task_name not in BUILTIN_TASKS:
        raise GateConfigError(
            f"assert_shift_robust: task {task_name!r} is not a built-in task; shifts are drawn "
            f"from the built-ins ({', '.join(BUILTIN_TASKS)})"
        )
    if not isinstance(shift, str) or shift not in SHIFTS[task_name]:
        raise GateConfigError(
            f"assert_shift_robust: shift={shift!r} is not a shift of {task_name!r}; use one of "
            f"{', '.join(s for s in SHIFTS[task_name] if s != 'none')}"
        )


def _performance(model: Any, task: Any) -> Any:
    """Clean performance without keeping anything of the task in the model's memo or the
    analysis cache (a search tries many throwaway tasks)."""
    from ..analysis.ablation import measure_task_performance
    from ..analysis.engine import forget_task

    try:
        return measure_task_performance(model, task)
    finally:
        forget_task(model, task)


def smallest_break(
    pair: Any, name: str, shift: str, *, max_examples: int = DEFAULT_MAX_EXAMPLES
) -> str | None:
    """The smallest shifted prompt (Hypothesis-shrunk) on which the student's logit difference
    is <= 0 and the teacher's > 0; None when ``max_examples`` draws find none."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample

    from ..strategies import shifted_prompts

    strategy = shifted_prompts(name, shift, pair.teacher.tokenizer, kind=pair.teacher.kind)

    def breaks(task: Any) -> bool:
        return (_performance(pair.student, task).mean_logit_diff <= 0
                < _performance(pair.teacher, task).mean_logit_diff)

    try:
        found = find(strategy, breaks, settings=settings(
            max_examples=max_examples, derandomize=True, database=None, deadline=None,
            phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
        ))
    except NoSuchExample:
        return None
    return f"{found.prompts[0]!r} -> {found.correct[0]!r} over {found.distractors[0]!r}"


def base_task(pair: Any, task: Any, shift: str, *, n_prompts: int | None = None,
              seed: int = 0) -> Any:
    """The built-in ``task`` a shift is measured against: a name is built for the teacher's
    tokenizer (so an adapted task says so in ``task.adaptation``), a Task is taken as given."""
    from ..analysis.store import as_task

    if isinstance(task, str):
        _check_shift_name(task, shift)
        return resolve_task(task, n_prompts=n_prompts, seed=seed,
                            tokenizer=pair.teacher.tokenizer, kind=pair.teacher.kind)
    base = as_task(task, n_prompts, seed, pair.teacher)
    _check_shift_name(base.name, shift)
    return base


def measure_shift(
    pair: Any, task: Any, shift: str, *, n_prompts: int | None = None, seed: int = 0,
    margin: float = 0.1,
) -> tuple[ShiftMeasurement, Any, Any]:
    """Both models on the built-in ``task`` and its ``shift``: the measurement, the base task
    and the shifted task (built for the teacher's tokenizer). Raises ``InvalidTaskError`` when
    either model cannot do the base task (clean logit difference not above ``margin``)."""
    from ..analysis import require_valid_task
    from ..analysis.store import as_pair

    pair = as_pair(pair)
    tokenizer, kind = pair.teacher.tokenizer, pair.teacher.kind
    base = base_task(pair, task, shift, n_prompts=n_prompts, seed=seed)
    teacher, student = _performance(pair.teacher, base), _performance(pair.student, base)
    # first: a model that cannot do the task is reported as such, whatever the shift
    require_valid_task([teacher, student], margin=margin)
    shifted = shifted_task(base.name, shift, len(base), seed, tokenizer=tokenizer, kind=kind)
    teacher_s, student_s = _performance(pair.teacher, shifted), _performance(pair.student, shifted)
    broken = tuple(
        prompt for prompt, t, s in zip(shifted.prompts, teacher_s.per_prompt,
                                       student_s.per_prompt, strict=True)
        if s <= 0 < t
    )
    measurement = ShiftMeasurement(
        task=base.name, shift=shift,
        teacher_logit_diff=teacher.mean_logit_diff, student_logit_diff=student.mean_logit_diff,
        teacher_shifted_logit_diff=teacher_s.mean_logit_diff,
        student_shifted_logit_diff=student_s.mean_logit_diff,
        teacher_shifted_accuracy=teacher_s.accuracy, student_shifted_accuracy=student_s.accuracy,
        broken=broken,
    )
    return measurement, base, shifted


def assert_shift_robust(
    pair: Any,
    task: Any,
    *,
    shift: str,
    max_gap: float | None = None,
    max_accuracy_gap: float | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = DEFAULT_MARGIN,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    baseline_tolerance: Tolerance = None,
) -> ShiftMeasurement:
    """The student holds up under ``shift`` as well as its teacher: it keeps at most
    ``max_gap`` points less of its logit difference than the teacher keeps (each against its
    own logit difference on the built-in ``task``), and loses at most ``max_accuracy_gap``
    more top-1 accuracy. ``task`` is a built-in (``numerals``, ``numwords``, ``ioi``), built for
    the teacher's tokenizer; ``shift`` one of ``tasks.shifts.SHIFTS[task]``. On a failure the
    message lists the shifted prompts the student broke on and the teacher did not, and the
    smallest one Hypothesis finds in ``max_examples`` derandomised draws (at most
    ``MAX_EXAMPLES``). A student that cannot do the built-in task fails the gate; a teacher
    that cannot is an error. Returns the :class:`ShiftMeasurement`."""
    __tracebackhide__ = True
    check_max_examples(max_examples, KIND.function_name)  # before any model loads
    if isinstance(task, str):
        _check_shift_name(task, shift)
    return run_gate(KIND, pair, task, shift=shift, max_gap=max_gap,
                    max_accuracy_gap=max_accuracy_gap, n_prompts=n_prompts, seed=seed,
                    margin=margin, max_examples=max_examples,
                    baseline_tolerance=baseline_tolerance)


def _build_task(call: GateCall, task: Any) -> Any:
    return base_task(call.pair, task, call.extra["shift"], n_prompts=call.options.n_prompts,
                     seed=call.options.seed)


def _measure(call: GateCall, method: str | None) -> Measurement:
    pair, shift, limits = call.pair, call.extra["shift"], call.limits
    measured, _, shifted = measure_shift(pair, call.task, shift, n_prompts=call.options.n_prompts,
                                         seed=call.options.seed, margin=call.options.margin)
    checks: list[MetricCheck] = []
    if limits["max_gap"] is not None:
        checks.append(MetricCheck("shift_gap", measured.gap, limits["max_gap"], "<=",
                                  teacher_value=measured.teacher_retained))
    if limits["max_accuracy_gap"] is not None:
        checks.append(MetricCheck("accuracy_gap", measured.accuracy_gap,
                                  limits["max_accuracy_gap"], "<=",
                                  teacher_value=measured.teacher_shifted_accuracy))
    if not all(c.passed for c in checks):
        measured = ShiftMeasurement(**{**measured.to_dict(), "smallest": smallest_break(
            pair, measured.task, shift, max_examples=call.extra["max_examples"])})
    values = {
        "shift_gap": measured.gap,
        "accuracy_gap": measured.accuracy_gap,
        "teacher_shift_retained": measured.teacher_retained,
        "student_shift_retained": measured.student_retained,
        "teacher_shift_accuracy": measured.teacher_shifted_accuracy,
        "student_shift_accuracy": measured.student_shifted_accuracy,
        "broken_share": len(measured.broken) / len(shifted),
    }
    return Measurement(
        value=measured, checks=checks, values=values,
        headline=f"robustness of {pair.name} to shift '{shift}' of task '{measured.task}'",
        details=lambda line: _details(measured, len(shifted)),
        fingerprint=clean_fingerprint(pair.student, shifted, call.options.seed,
                                      analysis="shift", method=shift),
        models={"teacher": pair.teacher.describe(), "student": pair.student.describe()},
        task=shifted.name,
    )


def check_max_examples(max_examples: Any, gate: str) -> int:
    """Hypothesis draws for the smallest breaking prompt: a whole number in
    [1, ``MAX_EXAMPLES``]."""
    if (isinstance(max_examples, bool) or not isinstance(max_examples, int)
            or not 1 <= max_examples <= MAX_EXAMPLES):
        raise GateConfigError(
            f"{gate}: max_examples={max_examples!r} must be a positive integer, at most "
            f"{MAX_EXAMPLES:,} (Hypothesis draws when searching for the smallest breaking "
            f"prompt; default {DEFAULT_MAX_EXAMPLES})"
        )
    return max_examples


def _details(measured: ShiftMeasurement, n_prompts: int) -> str:
    table = format_table(
        ["model", "logit diff (task)", "logit diff (shifted)", "retained %", "accuracy (shifted)"],
        [
            ["teacher", measured.teacher_logit_diff, measured.teacher_shifted_logit_diff,
             measured.teacher_retained, measured.teacher_shifted_accuracy],
            ["student", measured.student_logit_diff, measured.student_shifted_logit_diff,
             measured.student_retained, measured.student_shifted_accuracy],
        ],
    )
    lines = [table, f"shifted prompts the student gets wrong and the teacher right: "
                    f"{len(measured.broken)} of {n_prompts}"]
    lines += [f"  {prompt!r}" for prompt in _first(measured.broken)]
    if measured.smallest is not None:
        lines.append(f"smallest such prompt (Hypothesis, shrunk): {measured.smallest}")
    return "\n".join(lines)


def _first(prompts: Sequence[str]) -> Sequence[str]:
    return prompts[:_SHOWN]


KIND = GateKind(
    name="shift_robust",
    function=assert_shift_robust,
    meaning=("the student keeps, under a shift of the prompts, about as much of its logit "
             "difference and accuracy as the teacher keeps"),
    thresholds=(
        Threshold("max_gap", "shift_gap", "<=", "points", 0.0, 1000.0),
        Threshold("max_accuracy_gap", "accuracy_gap", "<=", "fraction", 0.0, 1.0),
    ),
    metrics=(
        Metric("shift_gap", "points", "<=", 2.0,
               meaning="teacher's retained % under the shift minus the student's"),
        Metric("accuracy_gap", "fraction", "<=", 0.02,
               meaning="teacher's top-1 accuracy on shifted prompts minus the student's"),
        Metric("teacher_shift_retained", "percent", None,
               meaning="teacher's shifted logit difference in % of its own on the task"),
        Metric("student_shift_retained", "percent", None,
               meaning="student's shifted logit difference in % of its own on the task"),
        Metric("teacher_shift_accuracy", "fraction", None,
               meaning="the teacher's top-1 accuracy on the shifted prompts"),
        Metric("student_shift_accuracy", "fraction", None,
               meaning="the student's top-1 accuracy on the shifted prompts"),
        Metric("broken_share", "fraction", None,
               meaning="shifted prompts the student gets wrong and the teacher right"),
    ),
    options=("margin", "max_examples"),
    required=("shift",),
    measure=_measure,
    build_task=_build_task,
)
