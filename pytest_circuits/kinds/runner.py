"""The one gate sequence. A gate kind declares its thresholds, how it measures and what it
reports (``registry.GateKind``); :func:`run_gate` does every step the kinds share, once:

1. thresholds, analysis options and the baseline tolerance checked (before any model loads);
2. the pair or model resolved, the GPU rule applied, the task built for the teacher;
3. the bridge parity preflight on every (model, task) the gate reads;
4. the kind measures; a student that lost the task fails the gate (a teacher that cannot do it
   is an error);
5. a verdict an auto sweep's estimates could flip is settled by measuring again exactly;
6. the result is built, recorded, and raised as a table when a check failed.

Torch-free at import: the analysis loads when a gate first measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import context
from ..config import options as defaults
from ..config.options import (
    AnalysisOptions,
    check_gate_method,
    check_margin,
    check_n_prompts,
    check_seed,
)
from ..errors import CircuitAssertionError, InvalidTaskError
from ..identity import ModelInfo, model_name
from ..recording import record, run_settings
from ..results import (
    Blame,
    GateResult,
    MetricCheck,
    PairReport,
    RoleSweep,
    SweepMethodRecord,
)
from ..tables import format_number, format_table
from .registry import GateKind, Tolerance, tolerances

_ANALYSIS_FIELDS = frozenset(AnalysisOptions.__dataclass_fields__)


@dataclass
class GateCall:
    """One ``assert_*`` call, resolved: what it checks, on which models, with which options."""

    kind: GateKind
    limits: dict[str, float | None]  # every threshold, None when unset
    options: AnalysisOptions  # ``method`` is the requested one (None: the default rule)
    method_origin: str  # where the requested method came from
    baseline_tolerance: Tolerance
    extra: dict[str, Any]  # the kind's own arguments (components to check, shift, atol...)
    pair: Any = None  # the ModelPair, when the gate was given one
    model: Any = None  # the model it checks: the student of a pair, or the model given
    task: Any = None

    @property
    def gate(self) -> str:
        return self.kind.function_name

    @property
    def teacher(self) -> Any:
        return self.pair.teacher if self.pair is not None else None

    @property
    def roles(self) -> dict[str, Any]:
        """The models the gate reads, by role ("teacher", "student"; "model" alone)."""
        if self.pair is not None:
            return {"teacher": self.pair.teacher, "student": self.pair.student}
        return {"model": self.model}

    @property
    def subject(self) -> str:
        """What the gate's baseline entry is keyed by: "teacher -> student" for a pair gate,
        the checked model's name for a gate keyed by its model, with the component selection
        when it is not every component."""
        if self.pair is not None and not self.kind.keyed_by_model:
            name = self.pair.name
        else:
            name = self.model.name
        components = self.options.components
        if components == "all":
            return name
        return f"{name} [{components if isinstance(components, str) else ','.join(components)}]"


@dataclass
class Measurement:
    """What a kind measured, checked and reports; the runner turns it into a GateResult."""

    value: Any  # what the assertion returns
    checks: list[MetricCheck]
    values: dict[str, float]
    headline: str
    details: Callable[[str], str]  # the message's details, given the sweep-method line
    fingerprint: dict[str, Any]
    models: dict[str, ModelInfo]
    blame: list[Blame] = field(default_factory=list)
    report: Any = None  # the report stored with the result (the HTML page draws it)
    sweeps: dict[str, Any] = field(default_factory=dict)  # role -> SweepResult read
    #: the checked metrics whose verdict the estimates' bands could flip (settled exactly)
    unsettled: Sequence[str] = ()
    #: the checked metrics whose verdict the gate decided by measuring some estimates exactly
    #: (the widest bands first) rather than every component, and how many values that took
    settled: Sequence[str] = ()
    settled_values: int = 0
    task: str | None = None  # the result's task name, when not the call's task


# ----------------------------------------------------------------------------- the sequence


def run_gate(kind: GateKind, target: Any, task: Any, **arguments: Any) -> Any:
    """Run ``kind``'s gate on ``target`` (a pair or a model) and ``task`` with the assertion's
    keyword ``arguments``; return what the kind's measurement returns, or raise
    :class:`CircuitAssertionError` with the check table (after recording the result)."""
    __tracebackhide__ = True
    call = _read_call(kind, arguments)  # before torch loads: a wrong call fails at once
    _resolve(call, target, task)
    if kind.preflight:
        bridges_match(call)
    measured = _measure(call, call.options.method)
    settled: Sequence[str] = ()
    if measured.unsettled:  # an estimate could decide the verdict: measure exactly
        settled = measured.unsettled
        measured = _measure(call, "exact")
    result = GateResult(
        gate=kind.name, subject=call.subject, task=measured.task or call.task.name,
        checks=measured.checks, values=measured.values, blame=measured.blame,
        fingerprint=measured.fingerprint, models=measured.models, report=measured.report,
        tolerances=tolerances(call.baseline_tolerance, list(measured.values), kind),
    )
    line = record_method(result, call, measured.sweeps, settled, partly=measured.settled,
                         partly_values=measured.settled_values,
                         compares=isinstance(measured.report, PairReport),
                         ) if measured.sweeps else ""
    finish(result, measured.headline, measured.details(line), task=call.task)
    return measured.value


def evaluate(kind: GateKind, target: Any, task: Any, **arguments: Any) -> GateResult:
    """Run ``kind``'s gate as :func:`run_gate` does and return its result, passed or failed,
    instead of raising: what the CLI's ``calibrate`` and ``rank`` report, by the same rules as
    the gates (the parity preflight, a lost behaviour, verdicts settled exactly)."""
    seen: list[GateResult] = []
    with context.changed(recorder=seen.append):
        try:
            run_gate(kind, target, task, **arguments)
        except CircuitAssertionError:
            if not seen:  # a failure before any result (zero components): not a verdict
                raise
    return seen[-1]


def _read_call(kind: GateKind, arguments: dict[str, Any]) -> GateCall:
    gate = kind.function_name
    limits = kind.read_thresholds({t.name: arguments.pop(t.name, None) for t in kind.thresholds})
    baseline_tolerance = arguments.pop("baseline_tolerance", None)
    tolerances(baseline_tolerance, (), kind)  # checked now, applied to the values later
    n_prompts, seed = task_options(arguments.pop("n_prompts", None),
                                   arguments.pop("seed", None), gate)
    chosen = {name: arguments.pop(name) for name in kind.analysis_options if name in arguments}
    if "margin" in chosen:
        check_margin(chosen["margin"], gate)  # a gate never switches the task guard off
    requested, origin = (None, "default")
    if "method" in chosen:
        requested, origin = sweep_method(chosen["method"], gate)
        chosen["method"] = requested
    options = AnalysisOptions.of(gate, n_prompts=n_prompts, seed=seed, **chosen)
    return GateCall(kind, limits, options, origin, baseline_tolerance, extra=arguments)


def _resolve(call: GateCall, target: Any, task: Any) -> None:
    """The pair or model, the GPU rule and the task (built for the teacher's tokenizer)."""
    from ..analysis.store import as_pair, as_task
    from ..models import ModelPair

    kind = call.kind
    if kind.takes_pair and (not kind.takes_model or isinstance(target, ModelPair)):
        call.pair = as_pair(target)
        call.model = call.pair.student
    else:
        call.model = target
    if kind.check is not None:
        kind.check(call)
    require_gpu(call.gate, *dict.fromkeys(call.roles.values()))
    builder = kind.build_task
    call.task = builder(call, task) if builder is not None else as_task(
        task, call.options.n_prompts, call.options.seed, call.teacher or call.model)


def _measure(call: GateCall, method: str | None) -> Measurement:
    """The kind's measurement; a student that lost the task fails the gate instead."""
    __tracebackhide__ = True
    assert call.kind.measure is not None, f"gate kind {call.kind.name} does not measure"
    try:
        return call.kind.measure(call, method)
    except InvalidTaskError as exc:
        error = exc
    # outside the except block, so a failed gate does not read as "during handling of"
    if call.pair is not None:
        lost_behaviour(call)
    raise error


# ----------------------------------------------------------------------------- shared steps


def task_options(n_prompts: Any, seed: Any, gate: str) -> tuple[int | None, int]:
    """``n_prompts`` and ``seed`` for a gate: its own when given, else the running test's
    (``--circuits-n-prompts``/``--circuits-seed``, marker or ini key), else the defaults.

    ``n_prompts=0`` is refused, never read as "the default".
    """
    settings = run_settings()
    n_prompts = settings.n_prompts if n_prompts is None else check_n_prompts(n_prompts, gate)
    if seed is None:
        seed = settings.seed if settings.seed is not None else 0
    return n_prompts, check_seed(seed, gate)


def sweep_method(method: Any, gate: str) -> tuple[str | None, str]:
    """A gate's ``method=`` checked, with where it came from: its own argument when given, else
    the run's ``--circuits-method`` (or ini key, or marker), else None: the default by size
    (``analysis.store.default_method``: auto where it costs less, exact otherwise)."""
    if method is None:
        return context.current().method
    return check_gate_method(method, gate), f"method={method!r}"


def require_gpu(gate: str, *models: Any) -> None:
    """Under ``--circuits-require-gpu``, fail a gate whose models are not on a CUDA device:
    the run promised GPU numbers, so a silent CPU fallback must not pass."""
    __tracebackhide__ = True
    if not run_settings().require_gpu:
        return
    on_cpu = [f"{getattr(m, 'name', m)} on {getattr(m, 'device', '?')}" for m in models
              if getattr(m, "device_kind", "cpu") != "cuda"]
    if on_cpu:
        import pytest

        pytest.fail(
            f"{gate}: --circuits-require-gpu was given but this gate would run on "
            f"{', '.join(on_cpu)}: load the models on a CUDA device (--circuits-device=cuda or "
            "cuda:auto) on a GPU runner",
            pytrace=False,
        )


def bridges_match(call: GateCall) -> None:
    """The preflight every gate runs once its models and task are resolved: each model's
    bridge must compute the plain Hugging Face model's logits on the gate's task
    (``parity.ensure_bridge_parity``, memoised per model and task, so it costs one clean
    forward per model and task, not one per gate).

    A model that fails it fails the gate (recorded, with the largest difference), whatever the
    gate measures: every number the gate would read comes through that bridge.
    """
    __tracebackhide__ = True
    from ..parity import BridgeParityError, ensure_bridge_parity

    failed: tuple[str, Any, BridgeParityError] | None = None
    checked: set[int] = set()
    for role, model in call.roles.items():
        if id(model) in checked:  # a model paired with itself is checked once
            continue
        checked.add(id(model))
        try:
            ensure_bridge_parity(model, call.task)
        except BridgeParityError as exc:
            failed = (role, model, exc)
            break
    if failed is None:
        return
    role, model, error = failed
    parity = error.result
    result = GateResult(
        gate=call.kind.name, subject=call.subject, task=call.task.name,
        checks=[MetricCheck("bridge_rel_diff", parity.max_rel_diff, parity.rtol, "<=")],
        values=parity_values(parity),
        fingerprint=clean_fingerprint(model, call.task, call.options.seed, analysis="parity",
                                      method="bridge"),
        models={r: m.describe() for r, m in call.roles.items()},
    )
    finish(result, f"{call.gate}: bridge parity of the {role} {model.name} on task "
                   f"'{call.task.name}'", f"  {error}", task=call.task)
    raise AssertionError("unreachable: finish raises on a failed check")  # pragma: no cover


def parity_values(parity: Any) -> dict[str, float]:
    """The values a parity check records (see ``registry.PARITY_METRICS``)."""
    return {"bridge_rel_diff": parity.max_rel_diff, "bridge_abs_diff": parity.max_abs_diff}


def clean_fingerprint(model: Any, task: Any, seed: int, *, analysis: str,
                      method: str) -> dict[str, Any]:
    """The fingerprint of a result read from clean runs (no ablation)."""
    from ..analysis.ablation import make_fingerprint

    return make_fingerprint(model, task, analysis=analysis, ablation="none", method=method,
                            seed=seed).to_dict()


def lost_behaviour(call: GateCall) -> None:
    """Record and raise a failed gate when the student no longer does the task and the teacher
    does; return (so the caller re-raises the analysis' error) otherwise."""
    __tracebackhide__ = True
    from ..analysis.store import task_performance

    pair, task, margin = call.pair, call.task, call.options.margin
    teacher = task_performance(pair.teacher, task)
    if not teacher.mean_logit_diff > margin:
        return  # the teacher cannot do it either: the task or the pair is wrong
    student = task_performance(pair.student, task)
    if student.mean_logit_diff > margin:
        return  # not the student's failure: keep the analysis' own error
    # the guard is "strictly above margin", so the smallest passing value is just above it
    threshold = math.nextafter(margin, math.inf)
    result = GateResult(
        gate=call.kind.name, subject=call.subject, task=task.name,
        checks=[MetricCheck("student_logit_diff", student.mean_logit_diff, threshold, ">=",
                            teacher.mean_logit_diff)],
        values={"student_logit_diff": student.mean_logit_diff,
                "teacher_logit_diff": teacher.mean_logit_diff,
                "student_accuracy": student.accuracy, "teacher_accuracy": teacher.accuracy},
        fingerprint=clean_fingerprint(pair.student, task, call.options.seed,
                                      analysis="behavior", method="clean"),
        models={"teacher": pair.teacher.describe(), "student": pair.student.describe()},
    )
    details = (
        f"  behaviour lost: {pair.student.name} no longer does task '{task.name}': its clean "
        f"logit difference is {student.mean_logit_diff:.4f} (accuracy "
        f"{student.accuracy:.3f}), the teacher {pair.teacher.name}'s is "
        f"{teacher.mean_logit_diff:.4f} (accuracy {teacher.accuracy:.3f}); a model must score "
        f"above margin={margin:g} to be gated on how it computes the task, so the student "
        "fails this gate"
    )
    finish(result, f"{call.gate}: behaviour of {call.subject} on task '{task.name}'",
           details, task=task)
    raise AssertionError("unreachable: finish raises on a failed check")  # pragma: no cover


# ----------------------------------------------------------------------------- the result


def sweep_line(sweep: Any) -> str:
    """How one model's sweep was measured: "M: auto: 25 of 156 exact, 131 bounded (mean drop
    within +-0.40 points)" or "M: exact (156 of 156 values measured)"."""
    n = len(sweep.effects)
    exact = len(sweep.exact_names)
    name = model_name(sweep.model)
    if sweep.fingerprint.method != "auto":
        return f"{name}: {sweep.fingerprint.method} ({exact} of {n} values measured)"
    bounded = sum(1 for e in sweep.effects if not e.is_exact and e.bound is not None)
    unbounded = n - exact - bounded
    text = f"{name}: auto: {exact} of {n} exact, {bounded} bounded"
    if unbounded:
        text += f", {unbounded} without a bound"
    return text + f" (mean drop within +-{sweep.mean_drop_bound:.2f} points)"


def record_method(result: GateResult, call: GateCall, sweeps: Mapping[str, Any],
                  settled: Sequence[str] = (), *, partly: Sequence[str] = (),
                  partly_values: int = 0, compares: bool = False) -> str:
    """Write into ``result`` how its sweeps were measured, and return the line its message
    prints: "sweep method: auto (method='auto'): student M: auto: 3 of 10 exact, 7 bounded...".

    ``sweeps`` maps roles ("student", "teacher", "model") to SweepResults. The result's
    fingerprint ``method`` is the method the gate ran by (the requested one, or the default for
    its models' size), not what served it: an exact sweep already stored may serve an auto
    request, and a baseline must not be refused for that. ``fingerprint["sweep_method"]`` holds
    the requested method, its origin, the line, and per role the method of the sweep that
    served and how many of its values are exact and how many bounded estimates.
    """
    from ..analysis.store import default_method

    requested, origin = call.options.method, call.method_origin
    per_role: dict[str, RoleSweep] = {}
    ran_by = set()
    for role, sweep in sweeps.items():
        # ModelInfo has layers and heads; a comparison has its own default (it reads most values)
        ran_by.add(requested or default_method(sweep.model, compare=compares))
        per_role[role] = RoleSweep(
            model=model_name(sweep.model),
            method=sweep.fingerprint.method,
            components=len(sweep.effects),
            exact=len(sweep.exact_names),
            bounded=sum(1 for e in sweep.effects if not e.is_exact and e.bound is not None),
            estimated=len(sweep.estimated_names),
            mean_drop_bound=sweep.mean_drop_bound,
        )
    method = "auto" if "auto" in ran_by else "exact"
    if requested is None:  # the threshold is read now: a test may lower it
        origin = f"default: {defaults.default_method_rule()}"
    line = f"sweep method: {method} ({origin}): " + "; ".join(
        f"{role} {sweep_line(sweep)}" for role, sweep in sweeps.items())
    if partly and not settled:  # the gate measured the estimates that kept it open
        line += (f"; {partly_values} more values measured exactly, since estimates within "
                 "their bands could decide " + ", ".join(partly))
    if settled:  # the gate swept again exactly (see ``Measurement.unsettled``)
        line += ("; swept exactly, since estimates within their bands could decide "
                 + ", ".join(settled))
    result.fingerprint = {**result.fingerprint, "method": method}
    result.set_sweep_method(SweepMethodRecord(
        requested=requested, origin=origin, note=line, sweeps=per_role,
        settled_exactly=tuple(dict.fromkeys([*partly, *settled]))))
    return line


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


def adaptation_note(task: Any) -> str:
    """How a built-in task was adapted to the tokenizer ("" when its prompts are the paper's):
    the numbers of an adapted task are not comparable with the paper's, so every gate says so."""
    adaptation = getattr(task, "adaptation", None)
    return adaptation.summary() if adaptation is not None else ""


def finish(result: GateResult, headline: str, details: str, *, task: Any = None) -> None:
    """Record ``result``, then raise :class:`CircuitAssertionError` with its table if any check
    failed (recording first, so a failed gate is still reported and compared).

    With ``task``, a built-in task adapted to the tokenizer is named in the headline and in
    the result (``fingerprint["task_adaptation"]``), which the terminal summary prints."""
    __tracebackhide__ = True
    note = adaptation_note(task)
    if note:
        headline += f"\n  task '{task.name}' {note}"
        result.set_task_adaptation(note)
    failed = [c for c in result.checks if not c.passed]
    message = f"{headline}\n{checks_table(result.checks)}"
    if details:
        message += f"\n{details}"
    result.message = message if failed else ""
    record(result)
    if failed:
        raise CircuitAssertionError(message)


__all__ = ["GateCall", "Measurement", "evaluate", "run_gate",
           "sweep_method", "task_options"]
