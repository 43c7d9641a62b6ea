"""What a gate kind is, as data: its assertion, thresholds, metrics and YAML key.

Each kind module of this package (``aligned.py``, ``robust.py``...) defines one ``KIND``; the
package collects them. The assertions validate thresholds with it, YAML gate files take their
keys from it, baselines their directions and tolerances, the terminal summary its units, and a
test holds ``GATES.md`` to it. Torch-free: the plugin reads it at load time.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.options import AnalysisOptions, closest
from ..errors import GateConfigError

#: A baseline tolerance as a caller gives it: one number for every metric, or per metric.
Tolerance = float | Mapping[str, float] | None

#: The units thresholds and metrics are measured in, with what a number in them means.
UNITS: dict[str, str] = {
    "score": "a score from 0 to 1",
    "score difference": "a difference of two scores, from -1 to 1",
    "similarity": "a similarity from -1 to 1",
    "points": "percentage points of the clean task metric",
    "percent": "percent of the teacher's clean task metric",
    "logit": "a logit difference (correct minus distractor)",
    "fraction": "a share of prompts, from 0 to 1",
    "count": "a count",
    "ratio": "a logit difference as a share of the largest absolute logit of its prompt",
    "probability": "a probability, from 0 to 1",
    "share": "a share of a reference value (1 is equal to it)",
}

#: What a student identical to its teacher measures in the units that compare the two: 100% of
#: the teacher's metric, no difference of scores. A threshold that such a student fails blocks
#: every release, the faithful ones included (see :meth:`Threshold.mistake`).
IDENTICAL_COPY: dict[str, float] = {"percent": 100.0, "score difference": 0.0}

#: How a unit is marked after a number in the terminal summary ("" for plain scores).
UNIT_SYMBOLS: dict[str, str] = {"points": "pts", "percent": "%"}



class ThresholdWarning(UserWarning):
    """A threshold is valid but almost certainly not what was meant: a percentage written as a
    fraction (``min_retained=0.9``), or a bound an identical copy of the teacher fails
    (``max_severity_increase=-0.01``). The gate runs as written; the warning says what it
    will do and what was probably meant."""


#: A comparison: ">=" the value must reach the threshold (higher is better), "<=" it must not
#: exceed it (lower is better).
DIRECTIONS = (">=", "<=")


@dataclass(frozen=True)
class Threshold:
    """A keyword argument (and YAML key) that bounds one metric."""

    name: str  # "min_score"
    metric: str  # the metric it bounds: "alignment" (per component: "similarity")
    direction: str  # ">=" for a minimum, "<=" for a maximum
    unit: str  # a key of UNITS
    low: float  # the valid range of the threshold itself
    high: float
    required: bool = False  # the gate cannot run without it
    default: float | None = None  # what the assertion uses when the caller gives nothing

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS or self.unit not in UNITS:
            raise ValueError(f"threshold {self.name}: bad direction or unit")  # a coding error

    @property
    def range_text(self) -> str:
        return f"[{self.low:g}, {self.high:g}]"

    def read(self, value: Any, gate: str) -> float | None:
        """``value`` as a float in range, None when unset; :class:`GateConfigError` otherwise."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GateConfigError(
                f"{gate}: {self.name}={value!r} must be a number in {self.range_text} "
                f"({UNITS[self.unit]})"
            )
        number = float(value)
        if not math.isfinite(number) or not self.low <= number <= self.high:
            raise GateConfigError(
                f"{gate}: {self.name}={value!r} is out of range: it must lie in "
                f"{self.range_text} ({UNITS[self.unit]})"
            )
        return number

    def mistake(self, value: float, gate: str, label: str | None = None) -> str:
        """What is probably wrong with a valid ``value`` ("" when nothing): the one rule for
        every threshold, so each kind gets it by declaring its unit. ``label`` is how the value
        was written (default ``name=value``; the CLI's ``--min-retained 0.9``).

        - a percentage in (0, 1] was almost surely written as a fraction: ``min_retained=0.9``
          passes a student that keeps 0.9% of its teacher's metric (meant: 90);
        - a bound that a student identical to its teacher fails (:data:`IDENTICAL_COPY`) blocks
          every release: ``max_severity_increase=-0.01`` demands the student be less brittle
          than its teacher, ``min_retained=101`` more capable.
        """
        what = f"{gate}: {label or f'{self.name}={value:g}'}"
        if self.unit == "percent" and 0 < value <= 1:
            return (f"{what} is read as {value:g} percent of the teacher's metric, which almost "
                    f"any student reaches; did you mean {value * 100:g}? (percent thresholds "
                    "are written from 0 to 100, not as fractions)")
        identical = IDENTICAL_COPY.get(self.unit)
        if identical is None:
            return ""
        fails = value > identical if self.direction == ">=" else value < identical
        if not fails:
            return ""
        unit = "%" if self.unit == "percent" else ""
        demand = ("LESS" if self.direction == "<=" else "MORE") + (
            " brittle" if "severity" in self.metric else " capable")
        return (f"{what} blocks a student identical to its teacher (which measures "
                f"{identical:g}{unit}): it demands the student be {demand} than the teacher, "
                "so even a faithful copy fails; "
                + (f"write a value >= {identical:g} to allow the teacher's own level"
                   if self.direction == "<=" else
                   f"write a value <= {identical:g} to pass a faithful copy"))


def warn_mistakes(thresholds: Sequence[Threshold], values: Mapping[str, float | None],
                  gate: str) -> list[str]:
    """Issue a :class:`ThresholdWarning` for every threshold whose value is probably a mistake
    (:meth:`Threshold.mistake`); return their texts."""
    found = [text for t in thresholds
             if (value := values.get(t.name)) is not None and (text := t.mistake(value, gate))]
    for text in found:
        warnings.warn(text, ThresholdWarning, stacklevel=_caller_level())
    return found


_PACKAGE = str(Path(__file__).resolve().parent.parent)


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside this package: the
    user's call of the assertion, however many of the package's frames lie between."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


@dataclass(frozen=True)
class Metric:
    """A value a gate reports (and may check), and how a baseline compares it."""

    name: str  # "alignment"; a per-component metric is reported as "L1H2.<name>"
    unit: str  # a key of UNITS
    direction: str | None  # ">=": lower is a regression; "<=": higher is; None: not compared
    tolerance: float | None = None  # default baseline tolerance, in the metric's unit
    per_component: bool = False
    meaning: str = ""

    def __post_init__(self) -> None:
        if self.unit not in UNITS or self.direction not in (*DIRECTIONS, None):
            raise ValueError(f"metric {self.name}: bad direction or unit")  # a coding error
        if (self.direction is None) != (self.tolerance is None):
            raise ValueError(f"metric {self.name}: a compared metric needs a tolerance")


#: What any gate reports when the student has lost the task's behaviour (its clean metric is
#: not above the margin while the teacher's is): the gate fails on these, not on its own.
CLEAN_METRICS: tuple[Metric, ...] = (
    Metric("student_logit_diff", "logit", None, meaning="the student's mean logit difference"),
    Metric("teacher_logit_diff", "logit", None, meaning="the teacher's mean logit difference"),
    Metric("student_accuracy", "fraction", None, meaning="the student's top-1 accuracy"),
    Metric("teacher_accuracy", "fraction", None, meaning="the teacher's top-1 accuracy"),
)

#: What the bridge parity check reports: the ``bridge_parity`` gate's own metrics, and what any
#: gate reports instead of its own when the bridge of one of its models fails the preflight.
PARITY_METRICS: tuple[Metric, ...] = (
    # compared so a baseline notices a bridge drifting from the plain model: 1e-3 is far above
    # float32 rounding (1e-7) and below the bfloat16 tolerance (2e-2), where reduced-precision
    # kernels on another machine may round a few sums differently
    Metric("bridge_rel_diff", "ratio", "<=", 1e-3,
           meaning=("largest bridge-minus-plain logit difference (absolute) over its "
                    "prompt's largest absolute logit")),
    Metric("bridge_abs_diff", "logit", None,
           meaning="largest bridge-minus-plain logit difference (absolute)"),
)


@dataclass(frozen=True)
class GateKind:
    """One kind of gate: the assertion it runs and everything the plugin needs to know of it."""

    name: str  # the gate's name in results and baseline keys, and its key in YAML gate files
    function: Callable[..., Any]  # the public assert_* function
    meaning: str  # one line: what passing means
    thresholds: tuple[Threshold, ...]
    metrics: tuple[Metric, ...]
    options: tuple[str, ...] = ()  # other keyword arguments a YAML gate may set
    required: tuple[str, ...] = ()  # non-threshold keys a YAML gate must set ("components")
    takes_model: bool = False  # may check a single model (YAML ``model:``) instead of a pair
    takes_pair: bool = True  # False: checks one model only (YAML ``model:``, never ``pair:``)
    #: What the gate checks when the caller sets no threshold ("" when it would check nothing,
    #: which is then refused); bridge_parity falls back to its dtype's tolerance.
    default_check: str = ""
    #: How the gate measures: ``measure(call, method) -> runner.Measurement``, where
    #: ``method`` is the sweep method to use ("exact" when the runner settles a verdict).
    measure: Callable[..., Any] | None = None
    #: Checks of the call's own arguments beyond thresholds and options: ``check(call)``,
    #: run once the pair or model is known and before anything is measured.
    check: Callable[..., None] | None = None
    #: Builds the gate's task from what the caller wrote (default: the teacher's fit of it).
    build_task: Callable[..., Any] | None = None
    #: A gate on a pair keyed (in baselines) by the model it checks, the student, not by
    #: "teacher -> student" (the robustness gate).
    keyed_by_model: bool = False
    #: Runs the bridge parity preflight on its models first (every gate but bridge_parity).
    preflight: bool = True

    def __post_init__(self) -> None:
        if not (self.takes_pair or self.takes_model):
            raise ValueError(f"gate kind {self.name}: takes neither a pair nor a model")

    @property
    def analysis_options(self) -> tuple[str, ...]:
        """Its options that are :class:`AnalysisOptions` fields (the rest are its own)."""
        return tuple(o for o in self.options if o in _ANALYSIS_FIELDS)

    @property
    def yaml_key(self) -> str:
        return self.name

    @property
    def function_name(self) -> str:
        return self.function.__name__

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key its YAML mapping accepts."""
        return self.required + tuple(t.name for t in self.thresholds) + self.options

    @property
    def required_thresholds(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.thresholds if t.required)

    @property
    def optional_thresholds(self) -> tuple[str, ...]:
        """Thresholds of which a YAML gate must set at least one when none is required and
        none has a default (otherwise the gate would check nothing)."""
        if (self.required_thresholds or self.default_check
                or any(t.default is not None for t in self.thresholds)):
            return ()
        return tuple(t.name for t in self.thresholds)

    def threshold(self, name: str) -> Threshold:
        return next(t for t in self.thresholds if t.name == name)

    def metric(self, name: str) -> Metric | None:
        """The metric ``name`` (``L1H2.similarity`` finds ``similarity``), None if unknown.

        Every kind also knows :data:`CLEAN_METRICS` and :data:`PARITY_METRICS`, which a gate
        reports instead of its own when the student no longer does the task or a model's bridge
        fails the parity preflight."""
        base = name.rsplit(".", 1)[-1]
        known = (*self.metrics, *CLEAN_METRICS, *PARITY_METRICS)
        return next((m for m in known if m.name == base), None)

    def read_thresholds(self, given: Mapping[str, Any]) -> dict[str, float | None]:
        """Every threshold validated; fails when a required one or all of them are missing.

        This is the one rule against a silent pass: a gate that would check nothing refuses to
        run, before any model is touched.
        """
        gate = self.function_name
        values = {t.name: t.read(given.get(t.name), gate) for t in self.thresholds}
        for threshold in self.thresholds:
            if threshold.required and values[threshold.name] is None:
                raise GateConfigError(
                    f"{gate} needs {threshold.name} (a number in {threshold.range_text}: "
                    f"{UNITS[threshold.unit]})"
                )
        if all(v is None for v in values.values()) and not self.default_check:
            names = ", ".join(t.name for t in self.thresholds)
            first = self.thresholds[0]
            raise GateConfigError(
                f"{gate}: no threshold was set, so nothing would be checked; pass at least one "
                f"of {names} (for example {first.name}={_example(first)})"
            )
        warn_mistakes(self.thresholds, values, gate)
        return values


_ANALYSIS_FIELDS = frozenset(AnalysisOptions.__dataclass_fields__)


def tolerances(baseline_tolerance: Tolerance, names: Sequence[str],
               kind: GateKind | None = None) -> dict[str, float]:
    """Per-metric baseline tolerances from one number (every metric) or a mapping, checked by
    :func:`read_baseline_tolerance` against ``kind``'s metrics."""
    what = f"{kind.function_name}: baseline_tolerance" if kind else "baseline_tolerance"
    value = read_tolerance(baseline_tolerance, what, [kind] if kind else [])
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    return {name: value for name in names}


def read_tolerance(value: Any, what: str, kinds: Sequence[GateKind]
                   ) -> float | dict[str, float] | None:
    """A baseline tolerance validated: None, a finite number >= 0, or a mapping of metric names
    (of ``kinds``) to such numbers.

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
        known = sorted({m.name for k in kinds for m in k.metrics})
        checked: dict[str, float] = {}
        for metric, number in value.items():
            if not isinstance(metric, str) or not any(k.metric(metric) for k in kinds):
                owner = f"gate {kinds[0].name}" if len(kinds) == 1 else "any gate kind"
                raise GateConfigError(
                    f"{what}: {metric!r} is not a metric of {owner}{closest(metric, known)}; "
                    f"known metrics: {', '.join(known)} (see GATES.md)"
                )
            checked[metric] = _tolerance(number, f"{what}[{metric!r}]")
        return checked
    return _tolerance(value, what)


def _tolerance(value: Any, what: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise GateConfigError(
            f"{what} is {value!r}; give a finite number >= 0 (or a mapping metric -> number)"
        )
    return float(value)


def _example(threshold: Threshold) -> str:
    if threshold.default is not None:
        return f"{threshold.default:g}"
    middle = (threshold.low + threshold.high) / 2
    return f"{middle:g}" if threshold.high <= 100 else f"{threshold.low + 1:g}"


def reference_markdown(kind: GateKind) -> str:
    """The kind's section of ``GATES.md``, generated from its entry (a test keeps them equal)."""
    lines = [
        f"### `{kind.yaml_key}`: `{kind.function_name}`",
        "",
        f"Passes when {kind.meaning}.",
        "",
        "| threshold | bounds | passes when | unit | valid range | |",
        "|-----------|--------|-------------|------|-------------|-|",
    ]
    for t in kind.thresholds:
        need = "required" if t.required else (
            f"default {t.default:g}" if t.default is not None else "optional")
        lines.append(f"| `{t.name}` | `{t.metric}` | metric {t.direction} threshold | {t.unit} | "
                     f"{t.range_text} | {need} |")
    lines += [
        "",
        "| metric | unit | a regression is | baseline tolerance | meaning |",
        "|--------|------|-----------------|--------------------|---------|",
    ]
    for m in kind.metrics:
        name = f"`COMPONENT.{m.name}`" if m.per_component else f"`{m.name}`"
        worse = {">=": "lower", "<=": "higher", None: "not compared"}[m.direction]
        tolerance = f"{m.tolerance:g}" if m.tolerance is not None else "-"
        lines.append(f"| {name} | {m.unit} | {worse} | {tolerance} | {m.meaning} |")
    keys = ", ".join(f"`{k}`" for k in kind.keys)
    lines += ["", f"YAML keys of `{kind.yaml_key}:` {keys}."]
    if kind.required:
        lines.append(f"Required besides thresholds: {', '.join(f'`{k}`' for k in kind.required)}.")
    if kind.optional_thresholds:
        lines.append("At least one threshold must be set.")
    if kind.default_check:
        lines.append(f"Without a threshold it checks {kind.default_check}.")
    if not kind.takes_pair:
        lines.append("Runs on a single `model:`.")
    elif kind.takes_model:
        lines.append("Runs on a pair (checks the student) or on a single `model:`.")
    return "\n".join(lines) + "\n"
