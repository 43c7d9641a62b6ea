"""The options of one analysis, as one frozen object: defaults defined once, validated once, and
the cache key derived from it.

Every layer takes an :class:`AnalysisOptions`: ``compare`` and the cached analyses, the gate
runner and the CLI. The assertions keep keyword arguments as the public convenience and turn
them into options at their edge (:meth:`AnalysisOptions.of`), so a bad value is refused before
any model loads, with the same message wherever it came from.

Torch-free and free of project imports above ``errors``: the plugin reads it at load time.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, fields, replace
from typing import Any

from ..errors import GateConfigError, SweepConfigError

# ----------------------------------------------------------------------------- the choices

#: How a component is knocked out: zeroed, replaced by its mean over a reference set, or by a
#: random reference prompt's value.
ABLATIONS = ("zero", "mean", "resample")
#: The algorithms the analysis layer's ``sweep`` offers; "attribution" is first-order only.
ANALYSIS_METHODS = ("exact", "attribution", "auto")
#: The sweep algorithms a gate may be told to use (``method=``, ``--circuits-method``, the ini
#: key ``circuits_method``, ``@pytest.mark.circuits(method=...)`` and YAML ``method:``).
#: "exact" measures every component; "auto" screens every component by attribution and measures
#: exactly each one whose value could change the gate's verdict or its blamed components (see
#: ``analysis.ablation.sweep``). "attribution" is not offered to gates: its estimates carry no
#: bound, so a verdict could rest on one.
SWEEP_METHODS = ("exact", "auto")
#: "paper": most similar component; "causal": nearest normalised ablation effect;
#: "tie_aware": most similar component, where candidates within ``tie_margin`` of the best are
#: an ambiguous set decided by ablation effect and left out of fan-in.
MATCHINGS = ("paper", "causal", "tie_aware")
#: Who picks: each teacher component picks its best student component (the paper's v2
#: convention, the default), or each student component picks its best teacher component (the
#: authors' earlier notebooks; every student component then counts once, which scores higher).
DIRECTIONS = ("teacher_to_student", "student_to_teacher")
DEFAULT_DIRECTION = "teacher_to_student"
#: "paper": attention patterns and top eigenvectors; "subspace": the paper's for heads,
#: principal angles between MLP output subspaces; "cka": linear CKA of head and MLP outputs;
#: "combined": subspace for MLPs, and for heads the mean of the attention-pattern similarity
#: (what a head reads) and the output similarity (what it writes to the residual stream at the
#: prediction positions) wherever the two models share a residual basis.
SIMILARITIES = ("paper", "subspace", "cka", "combined")

# ----------------------------------------------------------------------------- the defaults

#: The clean logit difference a model must exceed to count as doing the task.
DEFAULT_MARGIN = 0.1
#: Points of the clean metric one ablation may cost before it counts as severe.
DEFAULT_TOLERANCE = 20.0
#: The dead-component floor, in points of the clean metric: a student component whose ablation
#: costs less does no measurable work on the task, so matches onto it are not counted as
#: compression and its teacher partners are reported as discarded.
DEFAULT_MIN_STUDENT_INFLUENCE = 2.0
#: Similarity margin of tie-aware matching: candidates this close to the best are a tie. Chosen
#: by measurement (docs/method.md): on SmolLM2-135M against its 4-bit copy, 0.02 puts a head's
#: own copy within the margin of its best match for 256 of 270 heads (204 are the strict best).
DEFAULT_TIE_MARGIN = 0.02
#: Output-similarity margin of tie-aware matching with ``similarity="combined"``: a candidate
#: ties with the best when its attention pattern is within ``tie_margin`` of the best's and what
#: it writes within this margin of the best's. The output similarity is noisier than the pattern
#: (a head against its own 4-bit copy scores 0.56 to 0.85 on SmolLM2-135M), so two heads whose
#: writes differ by less than 0.3 are not told apart by them (docs/method.md).
OUTPUT_TIE_MARGIN = 0.3
#: A teacher component whose ablation costs at least this many points is "influential".
DEFAULT_INFLUENTIAL = 10.0
#: A match weaker than this similarity does not count as a counterpart.
DEFAULT_WEAK_SIMILARITY = 0.5
#: How many standard errors a teacher component's influence must clear the dead floor by, its
#: counterpart's standard error combined with its own, before a dead counterpart makes it
#: "discarded" (docs/method.md, "Discarded"): 2 is about a 95% one-sided margin, so an
#: influence that sits near the floor on both sides (2.27 against 1.89 points) is noise, not a
#: lost mechanism.
DISCARD_Z = 2.0
#: The recommended noise floor of the influence-weighted score, in points: pairs whose
#: ablation costs less on both sides drop out (see metrics.weighted_alignment_score).
DEFAULT_NOISE_FLOOR = 3.0
#: How many blamed components a gate prints (``SweepResult.worst(5)``): ``method="auto"``
#: measures exactly every component that could be among them.
DEFAULT_TOP_K = 5
#: The single-component thresholds (drop points) an auto sweep without ``thresholds=`` respects:
#: the default severity tolerance (``count_above_tolerance`` and severity depend on which side
#: of it every drop lies).
DEFAULT_DROP_THRESHOLDS: tuple[float, ...] = (DEFAULT_TOLERANCE,)

#: A gate left at ``method=None`` with no ``--circuits-method`` sweeps a model of at least this
#: many components (heads plus MLPs) with ``method="auto"``, a smaller one exactly.
#:
#: 1,000 puts the Llama-3.1-8B class (32 layers x 32 heads + 32 MLPs = 1,056) and larger models
#: on auto, where an exact sweep costs hundreds of forward passes of a multi-billion-parameter
#: model and auto costs about a third of the exact sweep or less (GPT-2-small shape: 16 FE
#: against 54; SmolLM2-135M: 31 against 130, benchmarks/README.md). Below it the exact sweep
#: stays the default: it is affordable there (GPT-2-small: 156 components, SmolLM2-135M: 300),
#: and auto's bands are empirical (fitted on the zoo, random shapes and SmolLM2, where an
#: earlier rule let 8 of 239 estimates escape), so a small model's gate keeps numbers that rest
#: on no estimate. Either way a gate sweeps exactly whenever an estimate could decide its verdict
#: (kinds/runner.py). Read at call time, so a test may lower it.
AUTO_MIN_COMPONENTS = 1000

#: Below :data:`AUTO_MIN_COMPONENTS` the default is decided by cost: auto wherever its predicted
#: forward-pass equivalents (FE) are fewer than the exact sweep's (``store.sweep_costs``; the
#: model's layout and the task's prompt count are all it reads, so the choice is made before
#: anything runs). An exact value of layer ``l`` of ``L`` costs a replay of the blocks from
#: ``l`` up, ``(L - l) / L`` FE. Auto costs its screen (``AUTO_SCREEN_FE``: one forward and one
#: backward pass), its calibration (each layer's heads jointly and every MLP: on every prompt for
#: a shallow model, on ``AUTO_SAMPLE_PROMPTS`` of them for a deep one, see
#: ``analysis.ablation``) and ``AUTO_CONFIRMED_SHARE`` of the components measured exactly (at
#: least ``AUTO_CONFIRMED_MIN``: the top 5 by drop and by influence) at the mean replay's cost.
#: Measured with ``benchmarks/count_sweep_work.py`` (counted FLOPs, default thresholds):
#: SmolLM2-135M on IOI (32 prompts) exact 115 FE, auto 14.8 with 25 of 300 values exact
#: (18.8 and 45 before a layer's heads could be calibrated one by one; the share is kept at
#: the earlier 15%, which leans towards exact) (predicted 155 and 30): auto; the zoo's tiny
#: teacher (4 layers x 4 heads) exact 8.7 FE, auto 8.8, its students (2 layers) 4.0 against
#: 6.6 (predicted 12.5 against 14.3, 7.5 against 13.5): exact.
AUTO_SCREEN_FE = 3.0
AUTO_CONFIRMED_SHARE = 0.15
#: The share a comparison (``compare``, the pair gates) measures exactly: its dead floor (2
#: points) and noise floor (3) sit where most of a real model's values are, and the weighted
#: score reads every matched influence, so on SmolLM2-135M's IOI sweeps (the teacher against
#: its 8-bit copy, ``benchmarks/bench_release.py``) the floors alone needed 238 and 241 of 300
#: values with the bands auto has (median 3.5 points against a median influence of 0.2; their
#: sum, 890 points, exceeds the influences' own, 585), and the score's slack closed only with
#: the rest measured. Auto then costs its screen on top of an exact sweep, so by the same cost
#: rule a comparison's default is exact below ``AUTO_MIN_COMPONENTS``.
AUTO_COMPARE_CONFIRMED_SHARE = 1.0
AUTO_CONFIRMED_MIN = 10
#: An auto sweep of a model of at least ``AUTO_SAMPLE_MIN_LAYERS`` layers, on a task of at
#: least twice ``AUTO_SAMPLE_PROMPTS`` prompts, calibrates its screen on the first
#: ``AUTO_SAMPLE_PROMPTS`` prompts (see ``analysis.ablation``).
AUTO_SAMPLE_PROMPTS = 4
AUTO_SAMPLE_MIN_LAYERS = 8


def default_method_rule() -> str:
    """The default sweep method in words, for messages and help (read at call time, so that a
    test lowering :data:`AUTO_MIN_COMPONENTS` sees its value)."""
    return (f"auto for a model of {AUTO_MIN_COMPONENTS:,} components or more, or where auto's "
            "predicted cost is below the exact sweep's; exact otherwise")

#: Named combinations of method options. "paper" is the paper's method (the default);
#: "recommended" is what docs/method.md measured to give meaningful numbers on real models:
#: tie-aware matching, heads compared by what they read and write (``"combined"``), subspace
#: similarity for MLPs and a noise floor under the weighted score.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"matching": "paper", "similarity": "paper", "tie_margin": None,
              "noise_floor": 0.0},
    "recommended": {"matching": "tie_aware", "similarity": "combined",
                    "tie_margin": DEFAULT_TIE_MARGIN, "noise_floor": DEFAULT_NOISE_FLOOR},
}


# ----------------------------------------------------------------------------- small helpers


def closest(word: Any, choices: Any) -> str:
    """' (did you mean 'x'?)' for the nearest of ``choices``, or '' when nothing is close."""
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {found[0]!r}?)" if found else ""


def method_hint(value: Any) -> str:
    """Why ``value`` is not a gate's sweep method, for the error that refuses it."""
    if value == "attribution":
        return ("attribution estimates carry no bound, so a gate does not use them; auto screens "
                "by attribution and measures exactly what could change the verdict")
    if value in MATCHINGS:
        return (f"{value!r} is a matching strategy: write matching={value!r}; method chooses how "
                "components are ablated")
    return "exact measures every component, auto screens first"


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _is_whole(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int)


# ----------------------------------------------------------------------------- field checks
#
# One function per kind of value, each naming where the value came from (a gate's public name,
# "compare", a CLI option), the value seen and what to write instead.


def check_n_prompts(value: Any, where: str) -> int | None:
    """A prompt count: a whole number >= 1, or None for the run's (else the task's) default."""
    if value is not None and (not _is_whole(value) or value < 1):
        raise GateConfigError(f"{where}: n_prompts={value!r} must be a whole number >= 1 "
                              "(or None for the run's --circuits-n-prompts)")
    return value


def check_seed(value: Any, where: str) -> int:
    if not _is_whole(value) or value < 0:
        raise GateConfigError(f"{where}: seed={value!r} must be a whole number >= 0")
    return value


def check_margin(value: Any, where: str) -> float:
    """The "model cannot do this task" guard's margin: a finite logit difference >= 0.

    A negative margin would let a model whose correct answer scores below the distractor pass
    the guard, and every ablation percentage against that clean metric would be meaningless.
    """
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise GateConfigError(
            f"{where}: margin={value!r} must be a finite number >= 0 (a logit difference; the "
            f"default {DEFAULT_MARGIN:g} refuses a model whose clean logit difference is not "
            "above it)"
        )
    return float(value)


def check_drop_tolerance(value: Any, where: str) -> float:
    """The per-component drop tolerance of a sweep: percentage points in [0, 100) (severity
    scales each drop's excess by 100 - tolerance, so 100 itself measures nothing)."""
    if not _is_number(value) or not math.isfinite(value) or not 0 <= value < 100:
        raise GateConfigError(
            f"{where}: tolerance={value!r} must be a number in [0, 100) (percentage points "
            "of the clean metric a single ablation may cost before it counts as severe; "
            "severity divides by 100 minus it)"
        )
    return float(value)


def check_atol(value: Any, where: str) -> float | None:
    """The bridge parity check's absolute tolerance: None (the dtype's) or a finite logit
    difference >= 0 (a NaN would compare false with every difference and pass them all)."""
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise GateConfigError(
            f"{where}: atol={value!r} must be a finite number >= 0 (a logit difference allowed "
            "on top of rtol x the prompt's largest logit), or None for the model dtype's default"
        )
    return float(value)


def check_points(value: Any, name: str, where: str, meaning: str) -> float:
    """A level in points of the clean metric: a finite number in [0, 100]."""
    if not _is_number(value) or not math.isfinite(value) or not 0 <= value <= 100:
        raise GateConfigError(f"{where}: {name}={value!r} must be a number in [0, 100] "
                              f"({meaning})")
    return float(value)


def check_gate_method(value: Any, where: str) -> str | None:
    """A gate's sweep method: "exact", "auto", or None for the run's, else the default."""
    if value is not None and (not isinstance(value, str) or value not in SWEEP_METHODS):
        raise GateConfigError(
            f"{where}: method={value!r} is not a sweep method{closest(value, SWEEP_METHODS)}; "
            f"pass method='exact' or method='auto' ({method_hint(value)}), or None for the "
            f"run's --circuits-method, else the default ({default_method_rule()})"
        )
    return value


def check_analysis_method(value: Any) -> str | None:
    """What the analysis layer accepts: one of :data:`ANALYSIS_METHODS`, or None."""
    if value is not None and value not in ANALYSIS_METHODS:
        raise SweepConfigError(
            f"method={value!r} is not one of {', '.join(repr(m) for m in ANALYSIS_METHODS)} (or "
            "None for the default: auto where it costs less, exact otherwise)"
        )
    return value


def check_choice(value: Any, name: str, choices: Sequence[str], where: str, what: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise GateConfigError(
            f"{where}: {name}={value!r} is not {what}{closest(value, choices)}; use one of "
            f"{', '.join(repr(c) for c in choices)}"
        )
    return value


def check_direction(direction: Any, where: str = "direction") -> str:
    if direction not in DIRECTIONS:
        raise GateConfigError(
            f"{where}: direction={direction!r} is not a matching direction; use "
            "'teacher_to_student' (each teacher component takes its most similar student "
            "component, the paper's convention) or 'student_to_teacher' (each student component "
            "takes its most similar teacher component)"
        )
    return direction


def check_similarity(similarity: Any, where: str = "similarity") -> str:
    if similarity not in SIMILARITIES:
        raise GateConfigError(
            f"{where}: similarity={similarity!r} is not a similarity; use 'paper' (attention "
            "patterns and top-3 eigenvectors, the paper's), 'subspace' (the paper's for heads, "
            "principal angles between top-8 MLP output subspaces, stable under small weight "
            "changes), 'cka' (linear CKA of head and MLP outputs) or 'combined' (subspace for "
            "MLPs; heads by attention pattern and by what they write to the residual stream)"
        )
    return similarity


def check_components(value: Any, where: str) -> str | tuple[str, ...]:
    """"all", "heads", "mlps" or a non-empty list of component names (checked against the
    model when the sweep selects them)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and all(
            isinstance(getattr(c, "name", c), str) for c in value):
        return tuple(getattr(c, "name", c) for c in value)
    raise GateConfigError(f"{where}: components={value!r} must be 'all', 'heads', 'mlps' or a "
                          "non-empty list of component names such as ['L1H2', 'MLP0']")


# ----------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class GateThresholds:
    """What a gate will compare an auto sweep's values with (see ``sweep(method="auto")``).

    ``drop``: single-component thresholds in points, each read on the drop, the clamped drop
    and the influence (the severity tolerance, ``max_single_drop``, compare's ``influential``
    and ``min_student_influence``). ``mean_drop``: limits on the mean clamped drop. ``top_k``:
    how many components are blamed, by drop and by influence.
    """

    drop: tuple[float, ...] = DEFAULT_DROP_THRESHOLDS
    mean_drop: tuple[float, ...] = ()
    top_k: int = DEFAULT_TOP_K

    def __post_init__(self) -> None:
        for name in ("drop", "mean_drop"):
            values = tuple(getattr(self, name))
            bad = [v for v in values if not _is_number(v) or not math.isfinite(v)]
            if bad:
                raise SweepConfigError(
                    f"GateThresholds.{name} must be finite numbers of drop points, got {bad[0]!r}; "
                    "pass the gate's thresholds (e.g. drop=(20.0,) for the default tolerance)"
                )
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if not _is_whole(self.top_k) or self.top_k < 0:
            raise SweepConfigError(
                f"GateThresholds.top_k must be an integer >= 0, got {self.top_k!r}; it is how "
                "many blamed components must be exact (gates print 5)"
            )

    def normalised(self) -> GateThresholds:
        """Each tuple sorted, repeats dropped, so the same cut points share one cache key."""
        return GateThresholds(drop=tuple(sorted(set(self.drop))),
                              mean_drop=tuple(sorted(set(self.mean_drop))), top_k=self.top_k)

    def with_drops(self, drop: Sequence[float]) -> GateThresholds:
        """These thresholds with the extra single-component cut points ``drop``, normalised."""
        return replace(self, drop=(*self.drop, *drop)).normalised()

    def to_dict(self) -> dict[str, Any]:
        return {"drop": list(self.drop), "mean_drop": list(self.mean_drop), "top_k": self.top_k}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateThresholds:
        return cls(
            drop=tuple(data["drop"]), mean_drop=tuple(data["mean_drop"]), top_k=data["top_k"]
        )


# ----------------------------------------------------------------------------- the options


@dataclass(frozen=True)
class AnalysisOptions:
    """Every setting that changes what an analysis measures.

    ``method`` None is the default rule (auto where it costs less than the exact sweep, or from
    :data:`AUTO_MIN_COMPONENTS` components; ``analysis.store.default_method``);
    ``n_prompts`` None the run's, else the task's default; ``margin`` None switches the "model
    cannot do this task" guard off (research use only: no gate accepts it). A ``preset`` stands
    for matching, similarity, tie margin and noise floor together (:meth:`resolved`).
    ``thresholds`` are the cut points an auto sweep must decide exactly.
    """

    ablation: str = "mean"
    method: str | None = None
    components: str | tuple[str, ...] = "all"
    n_prompts: int | None = None
    seed: int = 0
    margin: float | None = DEFAULT_MARGIN
    tolerance: float = DEFAULT_TOLERANCE
    similarity: str = "paper"
    matching: str = "paper"
    direction: str = DEFAULT_DIRECTION
    preset: str | None = None
    tie_margin: float | None = None
    noise_floor: float = 0.0
    min_student_influence: float = DEFAULT_MIN_STUDENT_INFLUENCE
    influential: float = DEFAULT_INFLUENTIAL
    weak_similarity: float = DEFAULT_WEAK_SIMILARITY
    thresholds: GateThresholds | None = None
    #: who asked (a gate's or function's public name), for the message that refuses a value
    where: InitVar[str] = "options"

    def __post_init__(self, where: str) -> None:
        _validate(self, where)
        # one spelling per value, so equal options make equal cache keys (20 and 20.0 alike)
        object.__setattr__(self, "components", check_components(self.components, where))
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))

    @classmethod
    def of(cls, where: str, base: AnalysisOptions | None = None,
           **changes: Any) -> AnalysisOptions:
        """``base`` (default: the defaults) with ``changes``, every value checked and named as
        coming from ``where`` (a gate's or function's public name) when refused."""
        unknown = sorted(set(changes) - _FIELD_NAMES)
        if unknown:
            raise GateConfigError(
                f"{where}: {unknown[0]!r} is not an analysis option"
                f"{closest(unknown[0], _FIELD_NAMES)}; known options: "
                f"{', '.join(sorted(_FIELD_NAMES))}"
            )
        if base is None:
            return cls(where=where, **changes)
        return replace(base, where=where, **changes)

    def replace(self, **changes: Any) -> AnalysisOptions:
        return replace(self, **changes)

    def resolved(self) -> AnalysisOptions:
        """The options with the preset expanded (matching, similarity, tie margin, noise floor)
        and the tie margin filled in for tie-aware matching: what is measured and keyed."""
        if self.preset is not None:
            values = PRESETS[self.preset]
            return replace(self, matching=values["matching"], similarity=values["similarity"],
                           tie_margin=values["tie_margin"], noise_floor=values["noise_floor"])
        if self.matching == "tie_aware" and self.tie_margin is None:
            return replace(self, tie_margin=DEFAULT_TIE_MARGIN)
        return self

    @property
    def drop_cut_points(self) -> tuple[float, ...]:
        """The single-component levels a pair report reads that an auto sweep decides
        exactly for every component: the tolerance and the influential level. The dead floor
        and the noise floor sit where most of a real model's components are (SmolLM2: 213 to
        281 of 300 values near them), so the pair report settles only the estimates its
        decisions at those floors actually read (``bounds.compare_needs``)."""
        return (self.tolerance, self.influential)

    def key(self, names: Sequence[str]) -> dict[str, Any]:
        """The values of ``names`` as a cache key's parts (plain JSON values).

        Fields added after the first release (:data:`LATE_KEY_FIELDS`) enter a key only when
        they differ from their default, so what was stored before they existed keeps its key.
        """
        parts: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name)
            if name in LATE_KEY_FIELDS and value == _DEFAULTS[name]:
                continue
            if isinstance(value, GateThresholds):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = sorted(value)
            parts[name] = value
        return parts


_FIELD_NAMES = frozenset(f.name for f in fields(AnalysisOptions))
_DEFAULTS = {f.name: f.default for f in fields(AnalysisOptions)}
_FLOAT_FIELDS = ("margin", "tolerance", "tie_margin", "noise_floor", "min_student_influence",
                 "influential", "weak_similarity")

#: What keys a compared pair (besides the models, the task and how the sweeps were made).
PAIR_KEY_FIELDS = ("ablation", "similarity", "matching", "direction", "min_student_influence",
                   "seed", "margin", "tolerance", "tie_margin", "noise_floor", "influential",
                   "weak_similarity")
#: Fields of :data:`PAIR_KEY_FIELDS` keyed only when they differ from their default.
LATE_KEY_FIELDS = frozenset({"tie_margin", "noise_floor", "influential", "weak_similarity"})


def _validate(options: AnalysisOptions, where: str) -> None:
    """Every field of ``options`` checked; the first bad one is a :class:`GateConfigError`
    naming ``where``, the value and the fix."""
    check_choice(options.ablation, "ablation", ABLATIONS, where, "an ablation")
    method = options.method
    if method is not None and method not in ANALYSIS_METHODS:
        check_gate_method(method, where)
    check_components(options.components, where)
    check_n_prompts(options.n_prompts, where)
    check_seed(options.seed, where)
    if options.margin is not None:
        check_margin(options.margin, where)
    check_drop_tolerance(options.tolerance, where)
    check_points(options.min_student_influence, "min_student_influence", where,
                 "the dead-component floor, in points of the clean metric")
    check_points(options.influential, "influential", where,
                 "the drop, in points, from which a teacher component is influential")
    if (not _is_number(options.weak_similarity) or not math.isfinite(options.weak_similarity)
            or not -1 <= options.weak_similarity <= 1):
        raise GateConfigError(f"{where}: weak_similarity={options.weak_similarity!r} must be a "
                              "similarity in [-1, 1]")
    if options.thresholds is not None and not isinstance(options.thresholds, GateThresholds):
        raise SweepConfigError(
            f"thresholds must be a GateThresholds, got {type(options.thresholds).__name__}; "
            "write thresholds=GateThresholds(drop=(20.0,), mean_drop=(2.0,))"
        )
    _check_method_choices(options, where)


def _check_method_choices(options: AnalysisOptions, where: str) -> None:
    """Preset, matching, similarity, direction, tie margin and noise floor, together."""
    preset = options.preset
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise GateConfigError(
                f"{where}: preset={preset!r} is not a preset; use 'recommended' (tie-aware "
                "matching, heads compared by pattern and output, subspace MLP similarity, a "
                "3-point noise floor under the weighted score) or 'paper' (the paper's method, "
                "the default)"
            )
        chosen = [f"{name}={value!r}" for name, value in
                  (("matching", options.matching), ("similarity", options.similarity))
                  if value not in ("paper", PRESETS[preset][name])]
        if chosen:
            raise GateConfigError(
                f"{where}: preset={preset!r} sets matching and similarity itself, but "
                f"{' and '.join(chosen)} was also given; pass either the preset or the options"
            )
    if options.matching not in MATCHINGS:
        raise GateConfigError(
            f"{where}: matching={options.matching!r} is not a matching"
            f"{closest(options.matching, MATCHINGS)}; use one of {', '.join(MATCHINGS)}"
        )
    check_similarity(options.similarity, where)
    check_direction(options.direction, where)
    tie_margin = options.tie_margin
    if tie_margin is not None:
        if preset is None and options.matching != "tie_aware":
            raise GateConfigError(
                f"{where}: tie_margin={tie_margin!r} only applies to matching='tie_aware' "
                f"(matching is {options.matching!r}); drop it, or choose matching='tie_aware'"
            )
        if not _is_number(tie_margin) or not math.isfinite(tie_margin) or tie_margin < 0:
            raise GateConfigError(f"{where}: tie_margin={tie_margin!r} must be a finite "
                                  "similarity margin >= 0 (default "
                                  f"{DEFAULT_TIE_MARGIN:g})")
    floor = options.noise_floor
    if not _is_number(floor) or not math.isfinite(floor) or not 0 <= floor <= 100:
        raise GateConfigError(
            f"{where}: noise_floor={floor!r}: it is the influence, in points, below which a "
            "pair drops out of the weighted score on both sides, so it must be a number in "
            "[0, 100] (0 keeps all)"
        )
