"""What every gate does after measuring: build its GateResult, record it, raise with a table.

One helper for every kind, so each records before it raises, prints the same check table and
keys its baseline entry the same way.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import CircuitAssertionError, GateConfigError, InvalidTaskError
from ..identity import ModelInfo
from ..recording import Blame, GateResult, MetricCheck, as_model_info, record, run_settings
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


def tolerances(baseline_tolerance: Tolerance, names: Sequence[str],
               kind: GateKind | None = None) -> dict[str, float]:
    """Per-metric baseline tolerances from one number (every metric) or a mapping, checked by
    :func:`read_baseline_tolerance` against ``kind``'s metrics."""
    what = f"{kind.function_name}: baseline_tolerance" if kind else "baseline_tolerance"
    value = read_baseline_tolerance(baseline_tolerance, what, kind)
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    return {name: value for name in names}


def read_baseline_tolerance(value: Any, what: str, kind: GateKind | None = None
                            ) -> float | dict[str, float] | None:
    """A baseline tolerance validated: None, a finite number >= 0, or a mapping of metric names
    (of ``kind``, or of any gate kind when none is given) to such numbers.

    A NaN compares false with everything, so a NaN tolerance would pass every regression; a
    negative one would fail an unchanged result; a misspelt metric name would silently leave
    the metric at its default. Each is a :class:`GateConfigError` instead.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        if not value:
            raise GateConfigError(f"{what} is an empty mapping; give metric: number pairs or "
                                  "one number for every metric")
        known = _metric_names(kind)
        checked: dict[str, float] = {}
        for metric, number in value.items():
            if not isinstance(metric, str) or _find_metric(metric, kind) is None:
                from ..settings import closest

                owner = f"gate {kind.name}" if kind else "any gate kind"
                raise GateConfigError(
                    f"{what}: {metric!r} is not a metric of {owner}{closest(metric, known)}; "
                    f"known metrics: {', '.join(known)} (see GATES.md)"
                )
            checked[metric] = _tolerance(number, f"{what}[{metric!r}]")
        return checked
    return _tolerance(value, what)


def _metric_names(kind: GateKind | None) -> list[str]:
    from . import KINDS

    kinds = [kind] if kind is not None else list(KINDS.values())
    return sorted({m.name for k in kinds for m in k.metrics})


def _find_metric(name: str, kind: GateKind | None) -> Any:
    from . import KINDS

    kinds = [kind] if kind is not None else list(KINDS.values())
    return next((m for k in kinds if (m := k.metric(name)) is not None), None)


def _tolerance(value: Any, what: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise GateConfigError(
            f"{what} is {value!r}; give a finite number >= 0 (or a mapping metric -> number)"
        )
    return float(value)


# ----------------------------------------------------------------------------- gate edge checks


def task_options(n_prompts: Any, seed: Any, gate: str) -> tuple[int | None, int]:
    """``n_prompts`` and ``seed`` for a gate: its own when given, else the running test's
    (``--circuits-n-prompts``/``--circuits-seed``, marker or ini key), else the defaults.

    ``n_prompts=0`` is refused, never read as "the default".
    """
    settings = run_settings()
    if n_prompts is None:
        n_prompts = settings.n_prompts
    elif isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise GateConfigError(f"{gate}: n_prompts={n_prompts!r} must be a whole number >= 1 "
                              "(or None for the run's --circuits-n-prompts)")
    if seed is None:
        seed = settings.seed if settings.seed is not None else 0
    elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise GateConfigError(f"{gate}: seed={seed!r} must be a whole number >= 0")
    return n_prompts, seed


# ----------------------------------------------------------------------------- sweep method

#: The run's ``--circuits-method`` for the test running now (None: unset) and where it came
#: from; the plugin installs it per test (:func:`using_method`).
_session_method: contextvars.ContextVar[tuple[str | None, str]] = contextvars.ContextVar(
    "pytest_circuits_sweep_method", default=(None, "default")
)


@contextmanager
def using_method(method: str | None, origin: str) -> Iterator[None]:
    """Install the run's sweep method (``--circuits-method``, ini key or marker) for the block."""
    token = _session_method.set((method, origin))
    try:
        yield
    finally:
        _session_method.reset(token)


def sweep_method(method: Any, gate: str) -> tuple[str | None, str]:
    """A gate's ``method=`` checked, with where it came from: its own argument when given, else
    the run's ``--circuits-method`` (or ini key, or marker), else None: the default by size
    (auto from ``settings.AUTO_MIN_COMPONENTS`` components, exact below)."""
    from ..settings import AUTO_MIN_COMPONENTS, SWEEP_METHODS, closest, method_hint

    if method is None:
        return _session_method.get()
    if not isinstance(method, str) or method not in SWEEP_METHODS:
        raise GateConfigError(
            f"{gate}: method={method!r} is not a sweep method{closest(method, SWEEP_METHODS)}; "
            f"pass method='exact' or method='auto' ({method_hint(method)}), or None for the "
            f"run's --circuits-method, else the default (auto for a model of "
            f"{AUTO_MIN_COMPONENTS:,} components or more, exact below)"
        )
    return method, f"method={method!r}"


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


def record_method(result: GateResult, requested: str | None, origin: str,
                  sweeps: Mapping[str, Any], settled: Sequence[str] = ()) -> str:
    """Write into ``result`` how its sweeps were measured, and return the line its message
    prints: "sweep method: auto (method='auto'): student M: auto: 3 of 10 exact, 7 bounded...".

    ``sweeps`` maps roles ("student", "teacher", "model") to SweepResults. The result's
    fingerprint ``method`` is the method the gate ran by (``requested``, or the default for its
    models' size), not what served it: an exact sweep already stored may serve an auto request,
    and a baseline must not be refused for that. ``fingerprint["sweep_method"]`` holds the
    requested method, its origin, the line, and per role the method of the sweep that served
    and how many of its values are exact and how many bounded estimates.
    """
    from ..analysis.cached import default_method
    from ..settings import AUTO_MIN_COMPONENTS

    per_role: dict[str, Any] = {}
    ran_by = set()
    for role, sweep in sweeps.items():
        ran_by.add(requested or default_method(sweep.model))  # ModelInfo has layers and heads
        per_role[role] = {
            "model": model_name(sweep.model),
            "method": sweep.fingerprint.method,
            "components": len(sweep.effects),
            "exact": len(sweep.exact_names),
            "bounded": sum(1 for e in sweep.effects if not e.is_exact and e.bound is not None),
            "estimated": len(sweep.estimated_names),
            "mean_drop_bound": sweep.mean_drop_bound,
        }
    method = "auto" if "auto" in ran_by else "exact"
    if requested is None:
        origin = (f"default: auto for a model of {AUTO_MIN_COMPONENTS:,} components or more, "
                  "exact below")
    line = f"sweep method: {method} ({origin}): " + "; ".join(
        f"{role} {sweep_line(sweep)}" for role, sweep in sweeps.items())
    if settled:  # the gate swept again exactly (see ``unsettled``)
        line += ("; swept exactly, since estimates within their bands could decide "
                 + ", ".join(settled))
    result.fingerprint = {
        **result.fingerprint,
        "method": method,
        "sweep_method": {"requested": requested, "origin": origin, "note": line,
                         "sweeps": per_role, "settled_exactly": list(settled)},
    }
    return line


def check_margin(margin: Any, gate: str) -> float:
    """The "model cannot do this task" guard's margin: a finite logit difference >= 0.

    A negative margin would let a model whose correct answer scores below the distractor pass
    the guard, and every ablation percentage against that clean metric would be meaningless.
    """
    if (isinstance(margin, bool) or not isinstance(margin, (int, float))
            or not math.isfinite(margin) or margin < 0):
        raise GateConfigError(
            f"{gate}: margin={margin!r} must be a finite number >= 0 (a logit difference; the "
            "default 0.1 refuses a model whose clean logit difference is not above it)"
        )
    return float(margin)


def check_drop_tolerance(tolerance: Any, gate: str) -> float:
    """The per-component drop tolerance of a sweep: percentage points in [0, 100]."""
    if (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
            or not math.isfinite(tolerance) or not 0 <= tolerance <= 100):
        raise GateConfigError(
            f"{gate}: tolerance={tolerance!r} must be a number in [0, 100] (percentage points "
            "of the clean metric a single ablation may cost before it counts as severe)"
        )
    return float(tolerance)


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


def check_atol(atol: Any, gate: str) -> float | None:
    """The bridge parity check's absolute tolerance: None (the dtype's) or a finite logit
    difference >= 0 (a NaN would compare false with every difference and pass them all)."""
    if atol is None:
        return None
    if (isinstance(atol, bool) or not isinstance(atol, (int, float))
            or not math.isfinite(atol) or atol < 0):
        raise GateConfigError(
            f"{gate}: atol={atol!r} must be a finite number >= 0 (a logit difference allowed on "
            "top of rtol x the prompt's largest logit), or None for the model dtype's default"
        )
    return float(atol)


def bridges_match(kind: GateKind, task: Any, subject: str, models: Mapping[str, Any], *,
                  seed: int) -> None:
    """The preflight every gate runs once its models and task are resolved: each model's
    bridge must compute the plain Hugging Face model's logits (``parity.ensure_bridge_parity``,
    memoised per model, so it costs one clean forward per model, not one per gate).

    A model that fails it fails the gate (recorded, with the largest difference), whatever the
    gate measures: every number the gate would read comes through that bridge.
    ``models`` maps roles ("teacher", "student", "model") to models.
    """
    __tracebackhide__ = True
    from ..parity import BridgeParityError, ensure_bridge_parity

    checked: set[int] = set()
    failed: tuple[str, Any, BridgeParityError] | None = None
    for role, model in models.items():
        if id(model) in checked:  # a model paired with itself is checked once
            continue
        checked.add(id(model))
        try:
            ensure_bridge_parity(model, task)
        except BridgeParityError as exc:
            failed = (role, model, exc)
            break
    if failed is None:
        return
    # outside the except block, so a failed gate does not read as "during handling of"
    role, model, error = failed
    parity = error.result
    result = GateResult(
        gate=kind.name, subject=subject, task=task.name,
        checks=[MetricCheck("bridge_rel_diff", parity.max_rel_diff, parity.rtol, "<=")],
        values=parity_values(parity),
        fingerprint=_parity_fingerprint(model, task, seed),
        models={r: m.describe() for r, m in models.items()},
    )
    finish(result, f"{kind.function_name}: bridge parity of the {role} {model.name} on task "
                   f"'{task.name}'", f"  {error}", task=task)
    raise AssertionError("unreachable: finish raises on a failed check")  # pragma: no cover


def parity_values(parity: Any) -> dict[str, float]:
    """The values a parity check records (see ``registry.PARITY_METRICS``)."""
    return {"bridge_rel_diff": parity.max_rel_diff, "bridge_abs_diff": parity.max_abs_diff}


def _parity_fingerprint(model: Any, task: Any, seed: int) -> dict[str, Any]:
    from ..analysis.ablation import make_fingerprint

    return make_fingerprint(model, task, analysis="parity", ablation="none", method="bridge",
                            seed=seed).to_dict()


@contextmanager
def student_must_do_task(kind: GateKind, pair: Any, task: Any, subject: str, *, margin: float,
                         seed: int) -> Iterator[None]:
    """Turn the analysis' "cannot do the task" refusal into a failed gate when it is the
    student that lost the behaviour (a regression), and leave it an error when the teacher
    cannot do the task (the test is misconfigured)."""
    __tracebackhide__ = True
    try:
        yield
    except InvalidTaskError as exc:
        error = exc
    else:
        return
    # outside the except block, so a failed gate does not read as "during handling of"
    lost_behaviour(kind, pair, task, subject, margin=margin, seed=seed)
    raise error


def lost_behaviour(kind: GateKind, pair: Any, task: Any, subject: str, *, margin: float,
                   seed: int) -> None:
    """Record and raise a failed gate when the student no longer does ``task`` and the teacher
    does; return (so the caller re-raises the analysis' error) otherwise."""
    __tracebackhide__ = True
    from ..analysis import task_performance
    from ..analysis.ablation import make_fingerprint

    teacher = task_performance(pair.teacher, task)
    if not teacher.mean_logit_diff > margin:
        return  # the teacher cannot do it either: the task or the pair is wrong
    student = task_performance(pair.student, task)
    if student.mean_logit_diff > margin:
        return  # not the student's failure: keep the analysis' own error
    # the guard is "strictly above margin", so the smallest passing value is just above it
    threshold = math.nextafter(margin, math.inf)
    checks = [MetricCheck("student_logit_diff", student.mean_logit_diff, threshold, ">=",
                          teacher.mean_logit_diff)]
    values = {"student_logit_diff": student.mean_logit_diff,
              "teacher_logit_diff": teacher.mean_logit_diff,
              "student_accuracy": student.accuracy, "teacher_accuracy": teacher.accuracy}
    fingerprint = make_fingerprint(pair.student, task, analysis="behavior", ablation="none",
                                   method="clean", seed=seed)
    result = GateResult(
        gate=kind.name, subject=subject, task=task.name, checks=checks, values=values,
        fingerprint=fingerprint.to_dict(),
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
    finish(result, f"{kind.function_name}: behaviour of {subject} on task '{task.name}'",
           details, task=task)
    raise AssertionError("unreachable: finish raises on a failed check")  # pragma: no cover


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
        tolerances=tolerances(baseline_tolerance, list(values), kind),
    )


def adaptation_note(task: Any) -> str:
    """How a built-in task was adapted to the tokenizer ("" when its prompts are the paper's):
    the numbers of an adapted task are not comparable with the paper's, so every gate says so."""
    adaptation = getattr(task, "adaptation", None)
    return adaptation.summary() if adaptation is not None else ""


#: The fingerprint key that carries :func:`adaptation_note` to reports (not a method field:
#: the task's hash already tells adapted tasks apart).
ADAPTATION_KEY = "task_adaptation"


def finish(result: GateResult, headline: str, details: str, *, task: Any = None) -> None:
    """Record ``result``, then raise :class:`CircuitAssertionError` with its table if any check
    failed (recording first, so a failed gate is still reported and compared).

    With ``task``, a built-in task adapted to the tokenizer is named in the headline and in
    the result (``fingerprint["task_adaptation"]``), which the terminal summary prints."""
    __tracebackhide__ = True
    note = adaptation_note(task)
    if note:
        headline += f"\n  task '{task.name}' {note}"
        result.fingerprint = {**result.fingerprint, ADAPTATION_KEY: note}
    failed = [c for c in result.checks if not c.passed]
    message = f"{headline}\n{checks_table(result.checks)}"
    if details:
        message += f"\n{details}"
    result.message = message if failed else ""
    record(result)
    if failed:
        raise CircuitAssertionError(message)


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


# --------------------------------------------------------------------------- verdicts that an
# auto sweep's estimates could not decide
#
# An auto sweep measures exactly every component whose value could cross a threshold it was
# given or enter the blamed top 5; the rest are estimates with a band. A gate's metric can still
# read those estimates (severity sums the excess of every drop over the tolerance, the alignment
# score normalises every matched influence), so each sweeping gate bounds its metrics over the
# bands, and when a threshold lies inside a metric's interval it sweeps again exactly: the
# verdict never rests on an estimate.


def _bands(sweep: Any) -> Any:
    """Per effect of ``sweep``, the half-width of its band in drop points: 0 for an exact value,
    inf for an estimate without a bound."""
    import numpy as np

    return np.array([0.0 if e.is_exact else (math.inf if e.bound is None else float(e.bound))
                     for e in sweep.effects])


def has_estimates(*sweeps: Any) -> bool:
    return any(not e.is_exact for sweep in sweeps for e in sweep.effects)


def drop_intervals(sweep: Any) -> tuple[Any, Any]:
    """The lowest and highest clamped drop (the paper's m_i, in [0, 100]) each component of
    ``sweep`` can have within its band."""
    import numpy as np

    drops = np.array([e.drop for e in sweep.effects], dtype=float)
    bands = _bands(sweep)
    return np.clip(drops - bands, 0.0, 100.0), np.clip(drops + bands, 0.0, 100.0)


def brittleness_intervals(sweep: Any, summary: Any) -> dict[str, tuple[float, float]]:
    """Intervals of the robust gate's metrics over ``sweep``'s bands (``summary``: its
    BrittlenessSummary, for the tolerance, limit and alpha): severity and the mean are monotone
    in every drop, the worst drop is the largest."""
    from ..metrics import severity_score

    lo, hi = drop_intervals(sweep)
    params = dict(tolerance=summary.tolerance, limit=summary.limit, alpha=summary.alpha)
    return {
        "severity": (severity_score(lo, **params), severity_score(hi, **params)),
        "max_single_drop": (float(lo.max()), float(hi.max())),
        "mean_drop": (float(lo.mean()), float(hi.mean())),
    }


def alignment_slack(report: Any) -> tuple[float, float]:
    """How far the paper's A and the weighted variant of a PairReport can move while each
    estimated influence moves within its band: (paper, weighted), inf when not bounded.

    Per side, the matched list's influences I_i (a component counted once per pair) with bands
    b_i, T = sum I_i and B = sum b_i: every share I_i / T moves by at most
    (b_i + share_i * B) / (T - B), so the shares together by at most 2B / (T - B). Then
    A = (1/N) sum S_i (1 - |s_i - t_i|) moves by at most max|S| / N times the two sides' sums,
    and the weighted sum S_i min(s_i, t_i) by at most max|S| times them. A matching that reads
    influences (causal, or tie-aware decisions) could itself change, which no band bounds.
    """
    pairs = report.alignment.pairs
    sweeps = {"teacher": report.teacher.sweep, "student": report.student.sweep}
    if not has_estimates(*sweeps.values()):
        return 0.0, 0.0
    if matching_reads_influences(report) or not pairs:
        return math.inf, math.inf
    total = 0.0
    for side, sweep in sweeps.items():
        band = dict(zip((e.name for e in sweep.effects), _bands(sweep), strict=True))
        names = [getattr(p, side) for p in pairs]
        influence = sum(float(getattr(p, f"{side}_influence")) for p in pairs)
        spread = sum(float(band.get(name, math.inf)) for name in names)
        if not spread:
            continue
        if spread >= influence:
            return math.inf, math.inf
        total += 2.0 * spread / (influence - spread)
    largest = max(abs(float(p.similarity)) for p in pairs)
    return largest * total / len(pairs), largest * total


def matching_reads_influences(report: Any) -> bool:
    """Whether a PairReport's matching depends on ablation effects (causal matching, or
    tie-aware matching deciding ties by effect), so estimates could change who is paired."""
    return report.fingerprint.matching != "paper" or report.fingerprint.tie_margin is not None


def unsettled(checks: Any, intervals: Mapping[str, tuple[float, float]]) -> list[str]:
    """The metrics of ``checks`` whose threshold lies inside their interval: their verdict is
    not the same everywhere in it."""
    names = []
    for check in checks:
        low, high = intervals.get(check.metric, (check.value, check.value))
        if check.op == "<=":
            decided = high <= check.threshold or low > check.threshold
        else:
            decided = low >= check.threshold or high < check.threshold
        if not decided:
            names.append(check.metric)
    return names

