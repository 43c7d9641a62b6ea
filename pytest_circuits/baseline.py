"""Baselines: gate results of the last accepted release, and the regression check against them.

A baseline file is JSON with a header (format, version, dates, library versions) and one entry
per :attr:`GateResult.key`. A result is compared metric by metric with its entry: for a metric a
gate checks with ``>=`` a lower value is worse, for ``<=`` a higher one; a change in the worse
direction beyond the tolerance is a regression and fails the test that measured it.

An auto sweep's values may be estimates with a band (``ComponentEffect.bound``); the band of
each metric a gate reports is derived from the sweeps in its report (:func:`value_bands`) and a
baseline entry keeps it. An estimate is compared by its band: within tolerance only if the whole
band is, a regression only if the whole band is beyond it, and otherwise undecided: a checked
metric then refuses the comparison (measure exactly, or re-record), an unchecked one is left out
and named. So an exact baseline serves an auto run and the other way round (the sweep
algorithm, exact or auto, is not a difference of method here), and no estimate passes a
regression check on its point value alone. Two estimates of the same weights by the same method
are the same measurement and compare by value.

An entry measured with a different method (any other of ``METHOD_FIELDS`` of the fingerprint)
or with other value settings (:func:`value_settings`: the severity tolerance, limit and
exponent) is refused; a field an older release did not write yet reads as the value it
implicitly had. An entry that lacks a metric the gate checks is refused, and so is a stored
value outside what its unit can take (:data:`VALUE_RANGES`). Which way is worse for a metric
the gate did not check, each metric's default tolerance and its unit come from its gate kind's
registry entry (:mod:`pytest_circuits.kinds`).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import CircuitsError, GateConfigError
from .kinds import UNITS, kind_of, metric_spec
from .results import GateResult
from .results.fingerprint import DEFAULT_DIRECTION, METHOD_FIELDS, MethodFingerprint
from .settings import closest
from .tables import format_table

FORMAT = "pytest-circuits-baseline"
VERSION = 1

#: The tolerance of a metric no gate kind declares (a score's).
FALLBACK_TOLERANCE = 0.02

#: The largest magnitude a value of an unbounded unit (a logit difference, a percentage of a
#: clean metric) is taken to reach: a baseline value beyond it is a damaged file, not a
#: measurement (a stored 1e308 would let every later value through).
MAX_MAGNITUDE = 1e9

#: What a stored value of each unit (``pytest_circuits.kinds.UNITS``) can be; a unit missing
#: here only has to be finite and within MAX_MAGNITUDE. A "count" is a whole number too.
VALUE_RANGES: dict[str, tuple[float, float]] = {
    "score": (0.0, 1.0),
    "score difference": (-1.0, 1.0),
    "similarity": (-1.0, 1.0),
    "points": (0.0, 100.0),  # drops are clamped to [0, 100]
    "percent": (-MAX_MAGNITUDE, MAX_MAGNITUDE),
    "logit": (-MAX_MAGNITUDE, MAX_MAGNITUDE),
    "fraction": (0.0, 1.0),
    "count": (0.0, MAX_MAGNITUDE),
    "ratio": (0.0, MAX_MAGNITUDE),
}

#: Metrics whose values reach past their unit's range, by what they are computed as.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    # A = mean of S_i (1 - |share difference|): below 0 only when similarities are negative
    "alignment": (-1.0, 1.0),
    "weighted_alignment": (-1.0, 1.0),
    "student_influence": (0.0, MAX_MAGNITUDE),  # an influence is not clamped (metrics.influence)
    "shift_gap": (-MAX_MAGNITUDE, MAX_MAGNITUDE),  # a difference of two retained percentages
    "accuracy_gap": (-1.0, 1.0),  # a difference of two accuracies
    # a circuit node's drop is not clamped: removing it can push the logit difference past 0
    # (over 100 points) or raise it (below 0); the increase is a difference of two such drops
    "worst_node_drop": (-MAX_MAGNITUDE, MAX_MAGNITUDE),
    "teacher_worst_node_drop": (-MAX_MAGNITUDE, MAX_MAGNITUDE),
    "node_drop_increase": (-MAX_MAGNITUDE, MAX_MAGNITUDE),
}

#: Rounding room at a range's ends (a cosine similarity may come out as 1.0000000000000002).
RANGE_SLACK = 1e-9

#: Sweep algorithms that measure the same quantities (auto: exactly where a verdict could
#: depend on it, a bounded estimate elsewhere): a baseline of one compares with a run of the
#: other, estimates by their bands.
INTERCHANGEABLE_METHODS = frozenset({"exact", "auto"})

#: What an entry written before :func:`value_settings` existed was measured with: the
#: defaults of ``assert_ablation_robust`` and ``metrics.severity_score``.
LEGACY_SETTINGS: dict[str, float] = {
    "severity_tolerance": 20.0, "severity_limit": 100.0, "severity_alpha": 1.0,
}

Tolerance = float | dict[str, float] | None


class BaselineFileError(CircuitsError, ValueError):
    """The baseline file cannot be read or is not a pytest-circuits baseline."""


def default_tolerance(metric: str, gate: str = "") -> float:
    """The registry's tolerance of ``metric`` for ``gate`` (``L1H2.similarity`` counts as
    ``similarity``)."""
    spec = metric_spec(gate, metric)
    if spec is None or spec.tolerance is None:
        return FALLBACK_TOLERANCE
    return spec.tolerance


def tolerance_for(metric: str, result: GateResult, override: Tolerance = None) -> float:
    """The result's own tolerance, else the test's (marker/YAML), else the registry's.

    A NaN or negative tolerance is a :class:`GateConfigError`: NaN would let every regression
    through (it compares false), a negative one would fail an unchanged value.
    """
    if metric in result.tolerances:
        return _checked(result.tolerances[metric], metric, f"{result.gate}'s baseline_tolerance")
    if isinstance(override, dict):
        if metric in override:
            return _checked(override[metric], metric, "the test's baseline_tolerance")
    elif override is not None:
        return _checked(override, metric, "the test's baseline_tolerance")
    return default_tolerance(metric, result.gate)


def _checked(value: object, metric: str, where: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise GateConfigError(f"{where} for {metric} is {value!r}; give a finite number >= 0")
    return float(value)


def direction(metric: str, result: GateResult) -> str | None:
    """``">="`` when lower is worse, ``"<="`` when higher is worse, None when not compared:
    the check's own comparison, else the registry's direction of the metric."""
    for check in result.checks:
        if check.metric == metric:
            return check.op
    spec = metric_spec(result.gate, metric)
    return spec.direction if spec is not None else None


@dataclass
class MetricDelta:
    """One metric against its baseline value."""

    metric: str
    baseline: float
    current: float
    tolerance: float
    op: str  # ">=" (lower is worse) or "<=" (higher is worse)
    #: [low, high] where a value is an estimate (None: an unbounded end); None when exact
    current_band: list[float | None] | None = None
    baseline_band: list[float | None] | None = None

    @property
    def worse_by(self) -> float:
        """How far the current value moved in the worse direction (negative: it improved)."""
        change = self.current - self.baseline
        return -change if self.op == ">=" else change

    def _worse_range(self) -> tuple[float, float]:
        """The least and the most the value can have moved in the worse direction, over both
        bands (a point for exact values)."""
        c_lo, c_hi = _ends(self.current_band, self.current)
        b_lo, b_hi = _ends(self.baseline_band, self.baseline)
        if self.op == ">=":
            return b_lo - c_hi, b_hi - c_lo
        return c_lo - b_hi, c_hi - b_lo

    @property
    def regressed(self) -> bool:
        """Worse by more than the tolerance, wherever the estimates lie in their bands."""
        if not (math.isfinite(self.current) and math.isfinite(self.baseline)):
            return True  # NaN compares false with everything: it must never read as "ok"
        return self._worse_range()[0] > self.tolerance + 1e-12

    @property
    def unsettled(self) -> bool:
        """Within the tolerance at one end of an estimate's band and beyond it at the other:
        neither a regression nor a pass (never true of two exact values)."""
        if self.regressed:
            return False
        return self._worse_range()[1] > self.tolerance + 1e-12

    def band_text(self) -> str:
        """``0.91 (0.88..0.94)`` per side, for messages."""
        def side(value: float, band: list[float | None] | None) -> str:
            if band is None:
                return f"{value:.4g} (exact)"
            low, high = _ends(band, value)
            return f"{value:.4g} (estimate within {low:.4g}..{high:.4g})"

        return (f"baseline {side(self.baseline, self.baseline_band)}, this run "
                f"{side(self.current, self.current_band)}")


def _ends(band: list[float | None] | None, value: float) -> tuple[float, float]:
    if band is None:
        return value, value
    low, high = band
    return (-math.inf if low is None else float(low)), (math.inf if high is None else float(high))


def _band(low: float, high: float) -> list[float | None]:
    """A band as stored (JSON has no infinity: an unbounded end is None)."""
    return [None if math.isinf(low) or math.isnan(low) else float(low),
            None if math.isinf(high) or math.isnan(high) else float(high)]


@dataclass
class BaselineCheck:
    """The outcome of comparing one result with the baseline (or of recording it there)."""

    key: str
    status: str  # "ok" | "regressed" | "missing" | "refused" | "updated"
    deltas: list[MetricDelta] = field(default_factory=list)
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("regressed", "missing", "refused")

    def delta(self, metric: str) -> MetricDelta | None:
        return next((d for d in self.deltas if d.metric == metric), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineCheck:
        data = dict(data)
        data["deltas"] = [MetricDelta(**d) for d in data.get("deltas", [])]
        return cls(**data)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def legacy_value(name: str, fingerprint: dict[str, Any]) -> Any:
    """The value a method field had in a fingerprint written before the field existed.

    ``direction`` came with the choice of matching direction; before it every comparison
    matched teacher to student (the paper's convention) and a sweep had none. Any other field
    reads as the fingerprint's default, or None (a mismatch) when it has none.
    """

    if name == "direction":
        return DEFAULT_DIRECTION if fingerprint.get("matching") else ""
    for spec in fields(MethodFingerprint):
        if spec.name == name and spec.default is not MISSING:
            return spec.default
    return None


def _method_value(fingerprint: dict[str, Any], name: str) -> Any:
    return fingerprint[name] if name in fingerprint else legacy_value(name, fingerprint)


def method_differences(current: dict[str, Any], stored: dict[str, Any],
                       ignore: tuple[str, ...] = ()) -> list[str]:
    """Method fields of two fingerprints that differ, as ``name: stored -> current`` (the
    fields in ``ignore`` left out)."""

    return [
        f"{name}: baseline {_method_value(stored, name)!r}, this run "
        f"{_method_value(current, name)!r}"
        for name in METHOD_FIELDS
        if name not in ignore and _method_value(stored, name) != _method_value(current, name)
    ]


def switched_algorithm(current: dict[str, Any], stored: dict[str, Any]) -> bool:
    """Whether the two fingerprints were swept by different algorithms that measure the same
    quantities (:data:`INTERCHANGEABLE_METHODS`: exact and auto)."""
    before, now = _method_value(stored, "method"), _method_value(current, "method")
    return before != now and {before, now} <= INTERCHANGEABLE_METHODS


def value_settings(result: GateResult) -> dict[str, float]:
    """Settings that change a result's values without being method fields of its fingerprint,
    read from the report the gate saw: a model report's severity tolerance T, limit L and
    exponent alpha (``ablation_robust``'s ``tolerance=`` moves severity and the count above
    tolerance). Empty when the result carries no model report (a pair report's values do not
    depend on them)."""
    report = result.report
    brittleness = (report.get("brittleness") if isinstance(report, dict)
                   else getattr(report, "brittleness", None))
    if brittleness is None:
        return {}

    def field_of(name: str) -> Any:
        if isinstance(brittleness, dict):
            return brittleness.get(name)
        return getattr(brittleness, name, None)

    found = {}
    for setting, name in (("severity_tolerance", "tolerance"), ("severity_limit", "limit"),
                          ("severity_alpha", "alpha")):
        value = field_of(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found[setting] = float(value)
    return found


def setting_differences(current: dict[str, float], stored: dict[str, Any]) -> list[str]:
    """Value settings of this run that differ from the entry's, as ``name: stored -> current``;
    a setting the entry does not record reads as :data:`LEGACY_SETTINGS` has it."""
    differences = []
    for name, value in current.items():
        recorded = name in stored
        before = stored[name] if recorded else LEGACY_SETTINGS.get(name)
        if before != value:
            shown = repr(before) if recorded else f"{before!r} (not recorded: the default then)"
            differences.append(f"{name}: baseline {shown}, this run {value!r}")
    return differences


# ----------------------------------------------------------------------------- estimates' bands

UNBOUNDED = (-math.inf, math.inf)


def has_estimates(fingerprint: dict[str, Any]) -> bool:
    """Whether the sweep record in a result's (or an entry's) fingerprint says some of its
    values were estimates (an auto sweep that did not measure every component exactly)."""
    from .results.gate import SWEEP_METHOD_KEY, SweepMethodRecord

    data = fingerprint.get(SWEEP_METHOD_KEY)
    if not isinstance(data, dict):
        return False
    return any(sweep.estimated for sweep in SweepMethodRecord.from_dict(data).sweeps.values())


def value_bands(result: GateResult) -> dict[str, tuple[float, float]]:
    """The interval each of ``result``'s values can lie in while every estimate of its sweeps
    moves within its band, for the values that are estimates; empty when every value is exact
    (an exact sweep, an auto sweep that settled, or a gate that sweeps nothing).

    Read from the sweeps in the result's report with the intervals the gates decide their
    verdicts by (:mod:`pytest_circuits.analysis.bounds`); a value no interval is known for (a
    Gini coefficient, a pair's teacher-side value the student's report does not hold, a result
    without its report) is unbounded. Loads numpy, only when the result has estimates."""
    if not has_estimates(result.fingerprint):
        return {}
    from .results.gate import report_from_data
    from .results.reports import ModelReport, PairReport

    report = report_from_data(result.report)
    if isinstance(report, ModelReport):
        found = _model_bands(result, report)
    elif isinstance(report, PairReport):
        found = _pair_bands(result, report)
    else:
        found = {}
    bands = {}
    for metric, value in result.values.items():
        low, high = found.get(metric, UNBOUNDED)
        low, high = min(low, value), max(high, value)  # rounding never leaves the value out
        if high > low:
            bands[metric] = (low, high)
    return bands


def _model_bands(result: GateResult, report: Any) -> dict[str, tuple[float, float]]:
    """``ablation_robust``'s metrics over the student's (or model's) sweep; the increase over
    the teacher is bounded only when the teacher's values were exact."""
    from .analysis.bounds import brittleness_intervals, drop_intervals
    from .metrics import worst_share_mean

    record = result.sweep_method
    roles = record.sweeps if record is not None else {}
    subject = roles.get("student", roles.get("model"))
    bands: dict[str, tuple[float, float]] = {}
    if subject is None or subject.estimated:
        low, high = drop_intervals(report.sweep)
        bands.update(brittleness_intervals(report.sweep, report.brittleness))
        bands["worst5_mean"] = (worst_share_mean(low), worst_share_mean(high))
        tolerance = report.brittleness.tolerance
        bands["count_above_tolerance"] = (float((low > tolerance).sum()),
                                          float((high > tolerance).sum()))
        bands["gini"] = UNBOUNDED  # not monotone in the drops: no band is derived for it
        bands["n_components"] = (float(len(low)),) * 2
    teacher = roles.get("teacher")
    if "severity_increase" in result.values:
        if teacher is not None and teacher.estimated:
            bands["severity_increase"] = bands["teacher_severity"] = UNBOUNDED
        else:
            taught = result.values["teacher_severity"]
            low, high = bands.get("severity", (result.values["severity"],) * 2)
            bands["severity_increase"] = (low - taught, high - taught)
    return bands


def _pair_bands(result: GateResult, report: Any) -> dict[str, tuple[float, float]]:
    """``circuit_aligned``'s scores (``alignment_slack``) and ``mechanism_preserved``'s
    per-component values: a similarity is exact unless the matching reads influences, a matched
    student component's influence moves within its effect's band."""
    from .analysis.bounds import alignment_slack, matching_reads_influences

    bands: dict[str, tuple[float, float]] = {}
    if matching_reads_influences(report):
        return bands  # other estimates could pair other components: nothing is bounded
    a = report.alignment
    paper, weighted = alignment_slack(report)
    bands["alignment"] = (a.score - paper, a.score + paper)
    bands["weighted_alignment"] = (a.weighted_score - weighted, a.weighted_score + weighted)
    bands["influence_term"] = (a.influence_term - paper, a.influence_term + paper)
    for metric in ("mean_similarity", "n_pairs"):
        if metric in result.values:
            bands[metric] = (result.values[metric],) * 2
    effects = {e.name: e for e in report.student.sweep.effects}
    for pair in a.pairs:
        similarity = f"{pair.teacher}.similarity"
        if similarity in result.values:
            bands[similarity] = (pair.similarity,) * 2
        effect = effects.get(pair.student)
        influence = f"{pair.teacher}.student_influence"
        if influence in result.values and effect is not None:
            band = 0.0 if effect.is_exact else (
                math.inf if effect.bound is None else float(effect.bound))
            bands[influence] = (pair.student_influence - band, pair.student_influence + band)
    return bands


def stored_bands(entry: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The bands of a baseline entry's estimated values (as :func:`value_bands`); an entry
    whose values were estimates but that was recorded before bands were kept has every value
    unbounded."""
    recorded = entry.get("bands")
    if isinstance(recorded, dict):
        return {metric: _ends(band, 0.0) for metric, band in recorded.items()}
    if has_estimates(entry.get("fingerprint") or {}):
        return {metric: UNBOUNDED for metric in entry.get("values", {})}
    return {}


def same_weights(result: GateResult, entry: dict[str, Any]) -> bool:
    """Whether the entry was measured on the very weights this result was, role by role."""
    stored = entry.get("models")
    if not isinstance(stored, dict) or not result.models or set(stored) != set(result.models):
        return False
    return all(isinstance(stored[role], dict)
               and stored[role].get("weights_sha256") == info.weights_sha256
               for role, info in result.models.items())


def value_range(gate: str, metric: str) -> tuple[float, float] | None:
    """The values ``metric`` of gate kind ``gate`` can take (None: not a registered kind's)."""
    kind = kind_of(gate)
    spec = kind.metric(metric) if kind is not None else None
    if spec is None:
        return None
    return METRIC_RANGES.get(spec.name, VALUE_RANGES.get(spec.unit,
                                                         (-MAX_MAGNITUDE, MAX_MAGNITUDE)))


def value_problem(gate: str, metric: str, value: object) -> str:
    """Why ``value`` cannot be a stored ``metric`` of gate ``gate`` ("" when it can): not a
    number, not finite, or outside what its unit can take."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{metric}: {value!r} is not a number"
    if not math.isfinite(value):
        return f"{metric}: {value!r} is not finite"
    bounds = value_range(gate, metric)
    if bounds is None:
        return ""
    low, high = bounds
    unit = kind_of(gate).metric(metric).unit  # type: ignore[union-attr]  # bounds: it has one
    if not low - RANGE_SLACK <= value <= high + RANGE_SLACK:
        return (f"{metric}: {value!r} is outside [{low:g}, {high:g}], what a value in "
                f"{unit} can be ({UNITS.get(unit, unit)})")
    if unit == "count" and value != int(value):
        return f"{metric}: {value!r} is not a whole number (a count)"
    return ""


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (for messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def update_command(path: str, nodeid: str) -> str:
    return (
        f"pytest {shlex.quote(nodeid)} --circuits-baseline={shlex.quote(str(path))} "
        "--circuits-update-baseline"
    )


class Baseline:
    """A baseline file's entries; ``check`` compares a result, ``updated`` merges new ones."""

    def __init__(self, path: Path, entries: dict[str, dict[str, Any]] | None = None,
                 header: dict[str, Any] | None = None) -> None:
        self.path = path
        self.shown = _shown(path)
        self.entries = dict(entries or {})
        self.header = dict(header or {})

    @classmethod
    def load(cls, path: Path) -> Baseline:
        """Read ``path``; a file that does not exist yet is an empty baseline."""
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise BaselineFileError(
                f"baseline {path} cannot be read ({exc}); restore it from version control or "
                "rewrite it with --circuits-update-baseline"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BaselineFileError(
                f"baseline {path} is not a pytest-circuits baseline (no \"format\": "
                f"\"{FORMAT}\"); point --circuits-baseline at a file written by "
                "--circuits-update-baseline"
            )
        if data.get("version") != VERSION:
            raise BaselineFileError(
                f"baseline {path} has format version {data.get('version')!r}; this "
                f"pytest-circuits reads version {VERSION}: rewrite it with "
                "--circuits-update-baseline"
            )
        entries = data.get("entries", {})
        if not isinstance(entries, dict):
            raise BaselineFileError(
                f"baseline {path}: \"entries\" must be a mapping of gate keys to entries, got "
                f"{type(entries).__name__}; rewrite it with --circuits-update-baseline"
            )
        for key, entry in entries.items():
            problem = entry_problem(key, entry)
            if problem:
                raise BaselineFileError(
                    f"baseline {path}: entry {key!r} {problem}; a baseline that cannot be "
                    "compared must not pass. Fix the entry, or re-record it with "
                    "--circuits-update-baseline"
                )
        header = {k: v for k, v in data.items() if k != "entries"}
        return cls(path, entries, header)

    def check(self, result: GateResult, tolerance: Tolerance = None) -> BaselineCheck:
        """Compare ``result`` with its entry: ok, regressed, missing or refused."""
        entry = self.entries.get(result.key)
        if entry is None:
            return BaselineCheck(
                result.key, "missing",
                message=(
                    f"no baseline entry for {result.key!r} in {self.shown}; record the current "
                    f"values as the baseline with:\n  {update_command(self.shown, result.nodeid)}"
                ),
            )
        stored_fingerprint = entry.get("fingerprint", {})
        switched = switched_algorithm(result.fingerprint, stored_fingerprint)
        differences = method_differences(result.fingerprint, stored_fingerprint,
                                         ignore=("method",) if switched else ())
        if differences:
            return BaselineCheck(
                result.key, "refused",
                message=(
                    f"baseline entry {result.key!r} in {self.shown} was measured with a different "
                    "method, so the numbers are not comparable:\n    "
                    + "\n    ".join(differences)
                    + "\n  measure both the same way, or re-record the baseline with:\n  "
                    + update_command(self.shown, result.nodeid)
                ),
            )
        differences = setting_differences(value_settings(result), entry.get("settings", {}))
        if differences:
            return BaselineCheck(
                result.key, "refused",
                message=(
                    f"baseline entry {result.key!r} in {self.shown} was measured with other "
                    "settings that change its values, so the numbers are not comparable:\n    "
                    + "\n    ".join(differences)
                    + "\n  measure both the same way, or re-record the baseline with:\n  "
                    + update_command(self.shown, result.nodeid)
                ),
            )
        stored = entry.get("values", {})
        lacking = [c.metric for c in result.checks if c.metric not in stored]
        if lacking:
            return BaselineCheck(
                result.key, "refused",
                message=(
                    f"baseline entry {result.key!r} in {self.shown} holds no value for "
                    f"{', '.join(sorted(set(lacking)))}, which this gate checks (it holds "
                    f"{', '.join(sorted(stored)) or 'nothing'}), so the check would compare "
                    "nothing; re-record the baseline with:\n  "
                    + update_command(self.shown, result.nodeid)
                ),
            )
        # two estimates of the same weights by the same method are one measurement: by value
        same = not switched and same_weights(result, entry)
        bands = {} if same else value_bands(result)
        before = {} if same else stored_bands(entry)
        deltas = []
        for metric, current in result.values.items():
            op = direction(metric, result)
            if op is None or metric not in stored:
                continue
            deltas.append(MetricDelta(
                metric, float(stored[metric]), float(current),
                tolerance_for(metric, result, tolerance), op,
                current_band=_band(*bands[metric]) if metric in bands else None,
                baseline_band=_band(*before[metric]) if metric in before else None,
            ))
        regressed = [d for d in deltas if d.regressed]
        checked = {c.metric for c in result.checks}
        undecided = [d for d in deltas if d.unsettled]
        left_out = "".join(
            f"\n  not compared: {d.metric}: {d.band_text()}; its band reaches past the "
            f"tolerance {d.tolerance:g}" for d in undecided if d.metric not in checked)
        blocking = [d for d in undecided if d.metric in checked]
        if blocking and not regressed:
            return BaselineCheck(
                result.key, "refused", deltas,
                message=(
                    f"baseline entry {result.key!r} in {self.shown} cannot be compared: an "
                    "estimate's band reaches both within and beyond the tolerance, so whether "
                    "it regressed is not decided:\n    "
                    + "\n    ".join(f"{d.metric}: {d.band_text()}, tolerance {d.tolerance:g}"
                                     for d in blocking)
                    + "\n  measure exactly (--circuits-method=exact, or method='exact' on the "
                    "gate), or re-record the baseline with:\n  "
                    + update_command(self.shown, result.nodeid) + left_out
                ),
            )
        if not regressed:
            return BaselineCheck(result.key, "ok", deltas, message=left_out.strip())
        table = format_table(
            ["metric", "baseline", "now", "change", "tolerance"],
            [[d.metric, d.baseline, d.current, f"{d.current - d.baseline:+.4g}",
              f"{d.tolerance:g} ({'lower' if d.op == '>=' else 'higher'} is worse)"]
             for d in regressed],
        )
        return BaselineCheck(
            result.key, "regressed", deltas,
            message=(
                f"regression against baseline {self.shown} for {result.key!r}:\n{table}\n"
                "  if the change is intended, accept it with:\n  "
                + update_command(self.shown, result.nodeid) + left_out
            ),
        )

    def updated(self, results: list[GateResult], remove: set[str] = frozenset(),
                versions: dict[str, str] | None = None) -> Baseline:
        """A new baseline: these results replace their entries; keys in ``remove`` go."""
        entries = {k: v for k, v in self.entries.items() if k not in remove}
        for result in results:
            entries[result.key] = entry_for(result)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "created": self.header.get("created") or _now(),
            "updated": _now(),
            "versions": versions or {},
        }
        return Baseline(self.path, entries, header)

    def to_dict(self) -> dict[str, Any]:
        return {**self.header, "entries": dict(sorted(self.entries.items()))}


def entry_problem(key: Any, entry: Any) -> str:
    """What is wrong with one baseline entry ("" when nothing): each must hold a non-empty
    ``values`` mapping of finite numbers within their units' ranges, named as its gate kind's
    registry names them, and finite ``settings``. (Whether it holds every metric a gate checks
    is decided when a result is compared with it.)"""
    if not isinstance(entry, dict):
        return f"is {type(entry).__name__}, not a mapping"
    values = entry.get("values")
    if not isinstance(values, dict) or not values:
        return ("has no values (\"values\" must be a non-empty mapping metric -> number), so "
                "nothing could be compared")
    gate = str(key).split("::", 1)[0]
    kind = kind_of(gate)
    for metric, number in values.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            return f"has a value {metric}: {number!r} that is not a number"
        if not math.isfinite(number):
            return f"has a value {metric}: {number!r} that is not finite"
        if kind is not None and kind.metric(str(metric)) is None:

            known = [m.name for m in kind.metrics]
            return (f"names a metric {metric!r} that gate {kind.name} does not report"
                    f"{closest(metric, known)} (its metrics: {', '.join(known)})")
        problem = value_problem(gate, str(metric), number)
        if problem:
            return f"has a value {problem}, so it cannot be a baseline"
    for part in ("fingerprint", "checks", "models", "settings"):
        if part in entry and not isinstance(entry[part], dict):
            return f"has a \"{part}\" that is {type(entry[part]).__name__}, not a mapping"
    for name, number in entry.get("settings", {}).items():
        if (isinstance(number, bool) or not isinstance(number, (int, float))
                or not math.isfinite(number)):
            return f"has a setting {name}: {number!r} that is not a finite number"
    problem = _bands_problem(entry.get("bands", {}), values)
    if problem:
        return problem
    if "nodeid" in entry and not isinstance(entry["nodeid"], str):
        return "has a \"nodeid\" that is not a string"
    return ""


def _bands_problem(bands: Any, values: dict[str, Any]) -> str:
    """What is wrong with an entry's ``bands`` ("" when nothing): a mapping of its own metrics
    to [low, high] around the value, each end a finite number or null (unbounded)."""
    if not isinstance(bands, dict):
        return f"has \"bands\" that is {type(bands).__name__}, not a mapping"
    for metric, band in bands.items():
        if metric not in values:
            return f"has a band for {metric!r}, which it holds no value of"
        if not isinstance(band, list) or len(band) != 2 or any(
                end is not None and (isinstance(end, bool) or not isinstance(end, (int, float))
                                     or not math.isfinite(end)) for end in band):
            return (f"has a band {metric}: {band!r} that is not [low, high] of finite numbers "
                    "or null")
        low, high = _ends(band, 0.0)
        if not low <= values[metric] <= high:
            return f"has a band {metric}: {band!r} that leaves out its value {values[metric]!r}"
    return ""


def entry_for(result: GateResult) -> dict[str, Any]:
    """What a baseline keeps of a result: its values, thresholds, method, value settings,
    models and the bands of its estimated values."""
    entry = {
        "values": dict(result.values),
        "checks": {c.metric: {"op": c.op, "threshold": c.threshold} for c in result.checks},
        "fingerprint": dict(result.fingerprint),
        "models": {role: info.to_dict() for role, info in result.models.items()},
        "nodeid": result.nodeid,
    }
    settings = value_settings(result)
    if settings:
        entry["settings"] = settings
    bands = value_bands(result)
    if bands:
        entry["bands"] = {metric: _band(*band) for metric, band in bands.items()}
    return entry
