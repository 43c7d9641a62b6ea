"""Pure numpy formulas of the method: ablation percentages, the alignment score, brittleness."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "AlignmentParts",
    "BrittlenessDelta",
    "BrittlenessSummary",
    "above_noise_floor",
    "alignment_parts",
    "alignment_score",
    "bootstrap_ci",
    "brittleness_delta",
    "brittleness_summary",
    "compression_ratio",
    "count_above",
    "drops_from_retained",
    "gini",
    "influence",
    "retained",
    "severity_score",
    "weighted_alignment_score",
    "worst_share_mean",
]

# Cosine similarities computed in float arithmetic can land a hair outside [-1, 1]; values within
# this slack are clipped, anything further out is a caller bug and is refused.
_SIMILARITY_SLACK = 1e-9

# Upper bound on the number of indices held at once by bootstrap_ci (8 MB of int64).
_BOOTSTRAP_CHUNK_ELEMENTS = 1_000_000


# --------------------------------------------------------------------------- input validation


def _as_finite_array(values: ArrayLike, name: str) -> np.ndarray:
    """Convert to a float array, refusing non-numeric, NaN and infinite entries by name."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must be numeric (a number or an array of numbers); got {values!r}"
        ) from error
    finite = np.isfinite(array)
    if not np.all(finite):
        if array.ndim == 0:
            first, where = float(array), ""
        else:
            index = np.unravel_index(int(np.argmin(finite)), array.shape)
            first = float(array[index])
            where = f" at index {index[0] if array.ndim == 1 else tuple(int(i) for i in index)}"
        raise ValueError(
            f"{name} contains a non-finite value ({first}){where}; NaN or inf usually "
            "means a failed forward pass or a division by zero upstream: fix or drop those "
            "measurements before scoring"
        )
    return array


def _as_finite_vector(values: ArrayLike, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """Like _as_finite_array, but require one dimension and (by default) at least one entry."""
    array = _as_finite_array(values, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}")
    if not allow_empty and array.size == 0:
        raise ValueError(f"{name} is empty; at least one value is needed")
    return array


def _finite_scalar(value: float, name: str) -> float:
    array = _as_finite_array(value, name)
    if array.ndim != 0:
        raise ValueError(f"{name} must be a single number; got shape {array.shape}")
    return float(array)


def _check_severity_params(
    tolerance: float, limit: float, alpha: float
) -> tuple[float, float, float]:
    tolerance = _finite_scalar(tolerance, "tolerance")
    limit = _finite_scalar(limit, "limit")
    alpha = _finite_scalar(alpha, "alpha")
    if limit <= tolerance:
        raise ValueError(
            f"limit ({limit}) must be greater than tolerance ({tolerance}); severity measures how "
            "far drops go from the tolerance towards the limit"
        )
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0; got {alpha}")
    return tolerance, limit, alpha


def _scalar_or_array(array: np.ndarray) -> float | np.ndarray:
    return float(array) if array.ndim == 0 else array


# --------------------------------------------------------------------------- ablation percentages


def _ablated_over_clean(clean: ArrayLike, ablated: ArrayLike) -> np.ndarray:
    clean_array = _as_finite_array(clean, "clean")
    ablated_array = _as_finite_array(ablated, "ablated")
    if np.any(clean_array == 0):
        raise ValueError(
            "clean metric is 0: percentages of it are undefined; a task whose clean logit "
            "difference is not clearly positive must be refused, not scored"
        )
    try:
        with np.errstate(over="ignore"):  # reported below as a ValueError instead
            ratio = ablated_array / clean_array
    except ValueError as error:
        raise ValueError(
            f"clean (shape {clean_array.shape}) and ablated (shape {ablated_array.shape}) "
            "cannot be broadcast together"
        ) from error
    if not np.all(np.isfinite(ratio)):
        raise ValueError(
            "ablated / clean overflowed: the clean metric is too close to 0 for percentages of it "
            "to mean anything; refuse the task instead of scoring it"
        )
    return ratio


def retained(clean: ArrayLike, ablated: ArrayLike) -> float | np.ndarray:
    """Share of the clean metric kept after ablation, in percent.

    ``retained = 100 * M_ablated / M_clean``. ``clean`` may be a scalar broadcast against an
    array of ablated metrics. Values above 100 (the ablation helped) and below 0 (the answer
    flipped) are returned as they are. Raises ValueError when ``clean`` is 0 or any input is NaN
    or infinite.
    """
    return _scalar_or_array(100.0 * _ablated_over_clean(clean, ablated))


def influence(clean: ArrayLike, ablated: ArrayLike) -> float | np.ndarray:
    """Influence of a component: ``I(c) = |100 * (1 - M_ablated / M_clean)|``.

    Unlike the drop it is not clamped: a component whose ablation raises the metric to 556% of
    clean has influence 456. Raises ValueError when ``clean`` is 0 or any input is not finite.
    """
    return _scalar_or_array(np.abs(100.0 * (1.0 - _ablated_over_clean(clean, ablated))))


def drops_from_retained(retained: ArrayLike) -> float | np.ndarray:
    """Drop in percentage points: ``m = 100 - clamp(retained, 0, 100)``, so m is in [0, 100].

    An ablation that helps (retained > 100) drops 0; one that flips the answer (retained < 0)
    drops 100.
    """
    array = _as_finite_array(retained, "retained")
    return _scalar_or_array(100.0 - np.clip(array, 0.0, 100.0))


# --------------------------------------------------------------------------- alignment


@dataclass(frozen=True)
class AlignmentParts:
    """The alignment score of N matched pairs and the parts it is made of.

    ``score = mean_similarity + influence_term``: the influence term is the (non-positive when
    all S_i >= 0) amount the influence-share mismatch takes off the mean matched similarity.
    ``teacher_share[i]`` and ``student_share[i]`` are Î_T,i and Î_S,i of pair i.
    """

    score: float
    mean_similarity: float
    influence_term: float
    weighted_score: float
    n_pairs: int
    teacher_share: tuple[float, ...]
    student_share: tuple[float, ...]


def _influence_shares(values: ArrayLike, name: str, side: str, n_pairs: int) -> np.ndarray:
    array = _as_finite_vector(values, name)
    if array.size != n_pairs:
        raise ValueError(
            f"{name} has {array.size} values but similarity has {n_pairs}: one value per matched "
            "pair is needed"
        )
    if np.any(array < 0):
        index = int(np.argmax(array < 0))
        raise ValueError(
            f"{name}[{index}] is {float(array[index])}; influence is an absolute value "
            "|100 * (1 - ablated / clean)| and cannot be negative"
        )
    total = float(array.sum())
    if total == 0:
        raise ValueError(
            f"{name} is zero for every matched pair: the {side} has no influential component on "
            "this task, so influence shares (I / sum I) are undefined and the pair cannot be scored"
        )
    return array / total


def _matched_arrays(
    similarity: ArrayLike, teacher_influence: ArrayLike, student_influence: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the three per-pair lists; return (S, Î_T, Î_S)."""
    similarity_array = _as_finite_vector(similarity, "similarity", allow_empty=True)
    if similarity_array.size == 0:
        raise ValueError("no matched pairs (N == 0): the alignment score needs at least one pair")
    outside = np.abs(similarity_array) > 1.0 + _SIMILARITY_SLACK
    if np.any(outside):
        index = int(np.argmax(outside))
        raise ValueError(
            f"similarity[{index}] is {float(similarity_array[index])}; similarities are cosines "
            "and must lie in [-1, 1]"
        )
    similarity_array = np.clip(similarity_array, -1.0, 1.0)
    n_pairs = similarity_array.size
    teacher_share = _influence_shares(teacher_influence, "teacher_influence", "teacher", n_pairs)
    student_share = _influence_shares(student_influence, "student_influence", "student", n_pairs)
    return similarity_array, teacher_share, student_share


def alignment_score(
    similarity: ArrayLike, teacher_influence: ArrayLike, student_influence: ArrayLike
) -> float:
    """The paper's alignment score of N matched pairs (t_i, s_i) with similarity S_i.

    ``Î_T,i = I_T(t_i) / sum_j I_T(t_j)``, ``Î_S,i = I_S(s_i) / sum_j I_S(s_j)`` (shares taken
    over the matched list, so a student component matched to several teacher components counts
    once per pair), and ``A = (1/N) * sum_i S_i * (1 - |Î_S,i - Î_T,i|)``.

    A <= 1, and A is in [0, 1] when every S_i >= 0. Because the shares sum to 1, the influence
    term moves A by at most 2 * max|S_i| / N, so A stays close to the mean matched similarity; see
    ``alignment_parts`` for both parts and ``weighted_alignment_score`` for a variant in which
    influence weighs. Raises ValueError for N == 0, mismatched lengths, negative or non-finite
    values, similarities outside [-1, 1], or a side whose influences are all zero.
    """
    similarity_array, teacher_share, student_share = _matched_arrays(
        similarity, teacher_influence, student_influence
    )
    return _paper_score(similarity_array, teacher_share, student_share)


def _paper_score(
    similarity: np.ndarray, teacher_share: np.ndarray, student_share: np.ndarray
) -> float:
    return float(np.mean(similarity * (1.0 - np.abs(student_share - teacher_share))))


def _weighted_score(
    similarity: np.ndarray, teacher_share: np.ndarray, student_share: np.ndarray
) -> float:
    # Divided by the larger share total, which is 1 up to rounding: the shares of identical
    # influence lists then sum to exactly that total, so identical models score exactly 1.0
    # (a plain sum of I_i / sum I gives 0.9999999999999999 for many lists).
    overlap = np.sum(similarity * np.minimum(teacher_share, student_share))
    return float(overlap / max(float(np.sum(teacher_share)), float(np.sum(student_share))))


def above_noise_floor(
    teacher_influence: ArrayLike, student_influence: ArrayLike, noise_floor: float
) -> np.ndarray:
    """Mask of the matched pairs that carry measurable influence on at least one side.

    A pair is kept when ``I_T >= noise_floor`` or ``I_S >= noise_floor`` (points of the clean
    metric); pairs below the floor on BOTH sides are noise and drop out of the weighted score.
    ``noise_floor = 0`` keeps every pair.
    """
    floor = _finite_scalar(noise_floor, "noise_floor")
    if floor < 0:
        raise ValueError(
            f"noise_floor is {floor}; it is a number of points of the clean metric below which "
            "a component's influence counts as noise, so it must be >= 0 (0 keeps every pair)"
        )
    teacher = _as_finite_vector(teacher_influence, "teacher_influence", allow_empty=True)
    student = _as_finite_vector(student_influence, "student_influence", allow_empty=True)
    if floor == 0:
        return np.ones(teacher.shape, dtype=bool)
    return (teacher >= floor) | (student >= floor)


def _floored_weighted_score(
    similarity: ArrayLike,
    teacher_influence: ArrayLike,
    student_influence: ArrayLike,
    noise_floor: float,
) -> float:
    keep = above_noise_floor(teacher_influence, student_influence, noise_floor)
    if not np.any(keep):
        raise ValueError(
            f"no matched pair has an influence of at least noise_floor={noise_floor} points on "
            "either side: every component's ablation is within the noise, so there is nothing "
            "to weigh; lower noise_floor (0 keeps every pair) or use a task both models perform"
        )
    similarity_array, teacher_share, student_share = _matched_arrays(
        np.asarray(similarity, dtype=float)[keep],
        np.asarray(teacher_influence, dtype=float)[keep],
        np.asarray(student_influence, dtype=float)[keep],
    )
    return _weighted_score(similarity_array, teacher_share, student_share)


def weighted_alignment_score(
    similarity: ArrayLike,
    teacher_influence: ArrayLike,
    student_influence: ArrayLike,
    noise_floor: float = 0.0,
) -> float:
    """Alignment in which influence weighs: similarity-weighted overlap of the influence shares.

    ``A_w = sum_i S_i * min(Î_S,i, Î_T,i)``, with Î as in ``alignment_score``.

    ``noise_floor`` (points; 0, the default, keeps every pair): pairs whose influence is below
    it on BOTH sides are left out before the shares are taken. Why: a real model has hundreds
    of components whose ablation costs a fraction of a point; their influences are measurement
    noise (a 4-bit copy of SmolLM2-135M moves them by 0.6 points in the median), yet together
    they hold a third of the total influence, so ``sum min(Î_S, Î_T)`` loses that third to noise
    even when every match is right, and a lost 45-point head is diluted by the tail. Above a
    floor of a few points, a model and a copy of itself score near 1 and a lost component costs
    about its share of the influence that is above the floor.

    Why: the paper's A averages uniformly over the pairs, so its influence penalty is
    ``(1/N) * sum_i S_i |Î_S,i - Î_T,i|``, which is O(1/N); with the authors' 100+ pairs it
    rarely moves A by more than 0.01. ``sum_i min(Î_S,i, Î_T,i) = 1 - (1/2) sum_i |Î_S,i -
    Î_T,i|`` is the share of influence both models place on the same pairs (one minus the total
    variation distance between the share lists), so A_w is the paper's penalty without the 1/N
    dilution, each pair counting by the influence it carries instead of 1/N. With a constant
    similarity c the two are tied exactly: ``A = c - 2 * (c - A_w) / N``.

    Consequence: if the student counterpart of a teacher component with share Î_T,i loses all its
    influence (the rest keeping their proportions), A_w falls by exactly S_i * Î_T,i, so
    discarding an influential mechanism costs about its teacher share.

    Properties: A_w <= 1, in [0, 1] when every S_i >= 0; A_w = 1 for identical models (all
    S_i = 1, proportional influences); invariant to the order of the pairs and to scaling either
    side's influences by a positive constant; symmetric in teacher and student.

    (Chosen over ``sum_i Î_T,i S_i (1 - |Î_S,i - Î_T,i| / max(Î_S,i, Î_T,i))``, which has the
    same bounds but charges the renormalisation of every other pair on top of the lost one (0.48
    instead of 0.285 in the 30%-share example of the tests), gives a student component with a
    zero-influence teacher counterpart no weight at all, and needs a 0/0 rule.)

    Identical inputs (all S_i = 1, equal influence lists) score exactly 1.0.
    """
    _matched_arrays(similarity, teacher_influence, student_influence)  # validate all pairs
    return _floored_weighted_score(similarity, teacher_influence, student_influence, noise_floor)


def alignment_parts(
    similarity: ArrayLike,
    teacher_influence: ArrayLike,
    student_influence: ArrayLike,
    noise_floor: float = 0.0,
) -> AlignmentParts:
    """The alignment score with its parts, for reports.

    ``score = A = (1/N) sum_i S_i (1 - |Î_S,i - Î_T,i|)``, ``mean_similarity = (1/N) sum_i S_i``,
    ``influence_term = A - mean_similarity = -(1/N) sum_i S_i |Î_S,i - Î_T,i|``,
    ``weighted_score = A_w = sum_i S_i min(Î_S,i, Î_T,i)`` (over the pairs above
    ``noise_floor``, see ``weighted_alignment_score``) and the per-pair shares Î_T, Î_S of the
    paper's score (over all pairs). Same validation as ``alignment_score``.
    """
    similarity_array, teacher_share, student_share = _matched_arrays(
        similarity, teacher_influence, student_influence
    )
    score = _paper_score(similarity_array, teacher_share, student_share)
    mean_similarity = float(np.mean(similarity_array))
    return AlignmentParts(
        score=score,
        mean_similarity=mean_similarity,
        influence_term=score - mean_similarity,
        weighted_score=_floored_weighted_score(
            similarity, teacher_influence, student_influence, noise_floor
        ),
        n_pairs=int(similarity_array.size),
        teacher_share=tuple(float(x) for x in teacher_share),
        student_share=tuple(float(x) for x in student_share),
    )


# --------------------------------------------------------------------------- brittleness


def severity_score(
    drops: ArrayLike, tolerance: float = 20.0, limit: float = 100.0, alpha: float = 1.0
) -> float:
    """Severity of the drops m_i of one model's N components, in [0, 1].

    ``S = (1/N) * sum_i max(0, (min(L, m_i) - T) / (L - T)) ** alpha`` with T = ``tolerance``,
    L = ``limit``: 0 when no drop exceeds T, 1 when every drop reaches L. Requires L > T,
    alpha > 0 and at least one drop.
    """
    drop_array = _as_finite_vector(drops, "drops")
    tolerance, limit, alpha = _check_severity_params(tolerance, limit, alpha)
    excess = np.maximum(0.0, (np.minimum(limit, drop_array) - tolerance) / (limit - tolerance))
    return float(np.mean(excess**alpha))


def gini(values: ArrayLike) -> float:
    """Gini coefficient of the drops: 0 when all equal, towards 1 when one component takes all.

    Sort ascending (shifting by -min when any value is negative), ``c = cumsum``, then
    ``G = (N + 1 - 2 * sum(c) / c[-1]) / N``. For N values G is in [0, (N - 1) / N]. All-equal
    (including all-zero) input gives 0.0.
    """
    array = np.sort(_as_finite_vector(values, "values"))
    if array[0] < 0:
        array = array - array[0]
    cumulative = np.cumsum(array)
    if cumulative[-1] == 0:
        return 0.0
    if not np.isfinite(cumulative[-1]):
        raise ValueError("values overflow when summed; rescale them before computing the Gini")
    n = array.size
    coefficient = (n + 1 - 2.0 * float(cumulative.sum()) / float(cumulative[-1])) / n
    # Equal values give 0 up to rounding; keep the result from printing as -0.0 or -1e-17.
    return max(0.0, coefficient)


def worst_share_mean(drops: ArrayLike, share: float = 0.05) -> float:
    """Mean of the k = max(1, ceil(share * N)) largest drops (the worst-5% mean by default)."""
    drop_array = _as_finite_vector(drops, "drops")
    share = _finite_scalar(share, "share")
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1]; got {share}")
    # Round first so float noise (0.07 * 100 = 7.000000000000001) does not add a component.
    k = max(1, math.ceil(round(share * drop_array.size, 9)))
    largest = np.partition(drop_array, drop_array.size - k)[drop_array.size - k :]
    return float(np.mean(largest))


def count_above(drops: ArrayLike, tolerance: float = 20.0) -> int:
    """Number of drops strictly above the tolerance T: ``#{i : m_i > T}``."""
    drop_array = _as_finite_vector(drops, "drops", allow_empty=True)
    tolerance = _finite_scalar(tolerance, "tolerance")
    return int(np.count_nonzero(drop_array > tolerance))


def bootstrap_ci(
    values: ArrayLike, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 42
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``.

    Draw ``n_resamples`` resamples of size N with replacement from
    ``numpy.random.default_rng(seed)``, take each resample's mean, and return the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those means. Resample
    indices are drawn in chunks of bounded size, so memory stays small for any N. The same
    values, n_resamples and seed give the same interval, in any order: the values are sorted
    before resampling, so relabelling components (say, permuting a layer's heads) cannot move
    the interval. The interval is clipped to
    [min(values), max(values)], where every resample mean lies, so a constant vector c gives
    exactly (c, c).
    """
    value_array = np.sort(_as_finite_vector(values, "values"))
    confidence = _finite_scalar(confidence, "confidence")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)):
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    n_resamples = int(n_resamples)
    n = value_array.size
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows_per_chunk):
        stop = min(n_resamples, start + rows_per_chunk)
        indices = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = value_array[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    smallest, largest = float(value_array.min()), float(value_array.max())
    return (
        float(min(max(low, smallest), largest)),
        float(min(max(high, smallest), largest)),
    )


@dataclass(frozen=True)
class BrittlenessSummary:
    """How much one model depends on single components (heads and MLPs), from their drops.

    Drops are percentage points of the clean metric (``m_i = 100 - clamp(retained_i, 0, 100)``).
    ``severity`` uses tolerance T, limit L and exponent alpha as stored here.
    """

    n_components: int
    mean_drop: float
    mean_drop_ci: tuple[float, float]
    severity: float
    worst_drop: float
    worst_component: str
    count_above_tolerance: int
    worst5_mean: float
    gini: float
    tolerance: float
    limit: float = 100.0
    alpha: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; ``mean_drop_ci`` becomes a two-element list."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrittlenessSummary:
        """Inverse of :meth:`to_dict` (JSON turns the interval tuple into a list)."""
        low, high = data["mean_drop_ci"]
        return cls(**{**data, "mean_drop_ci": (low, high)})


def brittleness_summary(
    names: Sequence[str],
    drops: ArrayLike,
    *,
    tolerance: float = 20.0,
    limit: float = 100.0,
    alpha: float = 1.0,
    n_resamples: int = 10_000,
    seed: int = 42,
) -> BrittlenessSummary:
    """Brittleness of one model from its component names (``L3H7``, ``MLP4``) and drops m_i.

    mean drop with a 95% percentile bootstrap interval (``n_resamples``, ``seed``); severity
    ``(1/N) sum_i max(0, (min(L, m_i) - T) / (L - T)) ** alpha``; worst drop and its component
    (the first one listed on ties); ``#{m_i > T}``; the mean of the max(1, ceil(0.05 N)) largest
    drops; the Gini of the drops.
    """
    drop_array = _as_finite_vector(drops, "drops", allow_empty=True)
    names = list(names)
    if drop_array.size == 0 and not names:
        raise ValueError(
            "zero components evaluated: no drops to summarise; check that the sweep ran over "
            "the model's heads and MLPs"
        )
    if len(names) != drop_array.size:
        raise ValueError(
            f"names has {len(names)} entries but drops has {drop_array.size}: one name per drop "
            "is needed"
        )
    if not all(isinstance(name, str) and name for name in names):
        raise ValueError("names must be non-empty strings such as 'L3H7' or 'MLP4'")
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"component names must be unique; repeated: {', '.join(duplicates)}")
    tolerance, limit, alpha = _check_severity_params(tolerance, limit, alpha)
    worst_index = int(np.argmax(drop_array))
    return BrittlenessSummary(
        n_components=int(drop_array.size),
        mean_drop=float(np.mean(drop_array)),
        mean_drop_ci=bootstrap_ci(drop_array, n_resamples=n_resamples, seed=seed),
        severity=severity_score(drop_array, tolerance=tolerance, limit=limit, alpha=alpha),
        worst_drop=float(drop_array[worst_index]),
        worst_component=names[worst_index],
        count_above_tolerance=count_above(drop_array, tolerance=tolerance),
        worst5_mean=worst_share_mean(drop_array, share=0.05),
        gini=gini(drop_array),
        tolerance=tolerance,
        limit=limit,
        alpha=alpha,
    )


def compression_ratio(params_teacher: float, params_student: float) -> float:
    """Compression ``C = 1 - params_student / params_teacher`` (0.5: half the parameters).

    Both counts must be positive. C <= 0 when the student is not smaller.
    """
    teacher = _finite_scalar(params_teacher, "params_teacher")
    student = _finite_scalar(params_student, "params_student")
    if teacher <= 0 or student <= 0:
        raise ValueError(
            f"parameter counts must be positive; got params_teacher={teacher}, "
            f"params_student={student}"
        )
    return 1.0 - student / teacher


@dataclass(frozen=True)
class BrittlenessDelta:
    """Student minus teacher brittleness, raw and per unit of compression C.

    Each ``*_per_compression`` field is the delta divided by C; it is None when C <= 0 (the
    student is not smaller, so "per unit of compression" means nothing).
    """

    compression: float
    mean_drop: float
    severity: float
    worst_drop: float
    worst5_mean: float
    gini: float
    count_above_tolerance: int
    mean_drop_per_compression: float | None
    severity_per_compression: float | None
    worst_drop_per_compression: float | None
    worst5_mean_per_compression: float | None
    gini_per_compression: float | None
    count_above_tolerance_per_compression: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrittlenessDelta:
        return cls(**data)


def brittleness_delta(
    teacher: BrittlenessSummary, student: BrittlenessSummary, compression: float
) -> BrittlenessDelta:
    """Deltas ``student - teacher`` of the brittleness summaries, and each delta / C.

    ``C = 1 - params_student / params_teacher`` (see ``compression_ratio``); C must be < 1. The
    two summaries must use the same tolerance, limit and alpha, or the deltas compare different
    things.
    """
    compression = _finite_scalar(compression, "compression")
    if compression >= 1:
        raise ValueError(
            f"compression must be < 1 (C = 1 - params_student / params_teacher); got {compression}"
        )
    for field in ("tolerance", "limit", "alpha"):
        if getattr(teacher, field) != getattr(student, field):
            raise ValueError(
                f"teacher and student summaries use different {field} "
                f"({getattr(teacher, field)} vs {getattr(student, field)}); recompute both with "
                "the same settings"
            )

    def per_compression(delta: float) -> float | None:
        return float(delta / compression) if compression > 0 else None

    mean_drop = float(student.mean_drop - teacher.mean_drop)
    severity = float(student.severity - teacher.severity)
    worst_drop = float(student.worst_drop - teacher.worst_drop)
    worst5_mean = float(student.worst5_mean - teacher.worst5_mean)
    gini_delta = float(student.gini - teacher.gini)
    count_delta = int(student.count_above_tolerance - teacher.count_above_tolerance)
    return BrittlenessDelta(
        compression=compression,
        mean_drop=mean_drop,
        severity=severity,
        worst_drop=worst_drop,
        worst5_mean=worst5_mean,
        gini=gini_delta,
        count_above_tolerance=count_delta,
        mean_drop_per_compression=per_compression(mean_drop),
        severity_per_compression=per_compression(severity),
        worst_drop_per_compression=per_compression(worst_drop),
        worst5_mean_per_compression=per_compression(worst5_mean),
        gini_per_compression=per_compression(gini_delta),
        count_above_tolerance_per_compression=per_compression(count_delta),
    )
