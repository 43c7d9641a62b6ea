"""Bounds over an auto sweep's estimates: how far a gate's metrics can move while every
estimated value moves within its band, and which verdicts that could flip.

An auto sweep measures exactly every component whose value could cross a threshold it was
given or enter the blamed top 5; the rest are estimates with a band. A gate's metric can still
read those estimates (severity sums the excess of every drop over the tolerance, the alignment
score normalises every matched influence), so each sweeping gate bounds its metrics over the
bands, and when a threshold lies inside a metric's interval the gate runner sweeps again
exactly: the verdict never rests on an estimate. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..metrics import severity_score


def _bands(sweep: Any) -> Any:
    """Per effect of ``sweep``, the half-width of its band in drop points: 0 for an exact value,
    inf for an estimate without a bound, or with one that is not a number >= 0 (NaN or
    negative, which no sweep writes: such an estimate is never trusted)."""
    def band(effect: Any) -> float:
        if effect.is_exact:
            return 0.0
        value = math.inf if effect.bound is None else float(effect.bound)
        return value if value >= 0.0 else math.inf  # NaN compares false: unbounded
    return np.array([band(e) for e in sweep.effects])


def has_estimates(*sweeps: Any) -> bool:
    return any(not e.is_exact for sweep in sweeps for e in sweep.effects)


def drop_intervals(sweep: Any) -> tuple[Any, Any]:
    """The lowest and highest clamped drop (the paper's m_i, in [0, 100]) each component of
    ``sweep`` can have within its band."""
    drops = np.array([e.drop for e in sweep.effects], dtype=float)
    bands = _bands(sweep)
    return np.clip(drops - bands, 0.0, 100.0), np.clip(drops + bands, 0.0, 100.0)


def brittleness_intervals(sweep: Any, summary: Any) -> dict[str, tuple[float, float]]:
    """Intervals of the robust gate's metrics over ``sweep``'s bands (``summary``: its
    BrittlenessSummary, for the tolerance, limit and alpha): severity and the mean are monotone
    in every drop, the worst drop is the largest."""
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
    and the weighted sum S_i min(s_i, t_i) by at most max|S| times them, its shares taken over
    the pairs above the noise floor (the pairs it keeps). A matching that reads influences
    (causal, or a tie decided by an estimate) could itself change, which no band bounds; so
    could the set of pairs the noise floor keeps while an estimate straddles it.
    """
    pairs = report.alignment.pairs
    sweeps = {"teacher": report.teacher.sweep, "student": report.student.sweep}
    if not has_estimates(*sweeps.values()):
        return 0.0, 0.0
    if matching_reads_influences(report) or not pairs:
        return math.inf, math.inf
    bands = {side: dict(zip((e.name for e in sweep.effects), _bands(sweep), strict=True))
             for side, sweep in sweeps.items()}
    paper = _share_slack(pairs, bands)
    noise = report.fingerprint.noise_floor or 0.0
    kept = [p for p in pairs if p.teacher_influence >= noise or p.student_influence >= noise]
    if noise and _noise_floor_open(report, noise):
        weighted = math.inf  # which pairs the floor keeps is not settled
    else:
        weighted = _share_slack(kept, bands) if kept else math.inf
    largest = max(abs(float(p.similarity)) for p in pairs)
    return largest * paper / len(pairs), largest * weighted


def _noise_floor_open(report: Any, noise: float) -> bool:
    """Whether an estimate's band lets some pair fall on either side of the noise floor."""
    teacher, student = drop_bands(report.teacher.sweep), drop_bands(report.student.sweep)
    return any(_pair_at_noise_floor(teacher[p.teacher], student[p.student], noise)
               for p in report.alignment.pairs)


def _pair_at_noise_floor(teacher: tuple[float, float], student: tuple[float, float],
                         noise: float) -> bool:
    """Whether a pair whose drops lie in these intervals could be kept by the noise floor (an
    influence >= it on either side) and could be left out (both below it)."""
    t_low, t_high = _influence_range(teacher)
    s_low, s_high = _influence_range(student)
    return not (t_low >= noise or s_low >= noise or (t_high < noise and s_high < noise))


def _share_slack(pairs: Any, bands: dict[str, dict[str, float]]) -> float:
    """The largest total change of both sides' influence shares over ``pairs`` while every
    estimate moves within its band (inf when a side's bands reach its total influence)."""
    total = 0.0
    for side, band in bands.items():
        influence = sum(float(getattr(p, f"{side}_influence")) for p in pairs)
        spread = sum(float(band.get(getattr(p, side), math.inf)) for p in pairs)
        if not spread:
            continue
        if spread >= influence:
            return math.inf
        total += 2.0 * spread / (influence - spread)
    return total


def matching_reads_influences(report: Any) -> bool:
    """Whether estimates could change who a PairReport pairs: causal matching reads every
    effect; tie-aware matching reads effects only to break ties, so it depends on estimates
    only while a tie's decision reads one whose band lets it go either way."""
    if report.fingerprint.matching == "causal":
        return has_estimates(report.teacher.sweep, report.student.sweep)
    return bool(compare_needs(report, ties_only=True))


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



def drop_bands(sweep: Any) -> dict[str, tuple[float, float]]:
    """Per component of ``sweep``, the interval its signed (unclamped) drop lies in: the value
    itself when exact, the value +- its band when estimated (infinite without a bound)."""
    return {e.name: (e.drop - b, e.drop + b) for e, b in zip(sweep.effects, _bands(sweep),
                                                             strict=True)}


def _influence_range(interval: tuple[float, float]) -> tuple[float, float]:
    """The interval of the influence |drop| over a signed drop interval."""
    low, high = interval
    if low <= 0.0 <= high:
        return 0.0, max(-low, high)
    return min(abs(low), abs(high)), max(abs(low), abs(high))


def _straddles(interval: tuple[float, float], cut: float) -> bool:
    """Whether the influence can lie on both sides of ``cut`` (below it, and at or above it)."""
    low, high = _influence_range(interval)
    return low < cut <= high


def compare_needs(report: Any, *, ties_only: bool = False) -> dict[str, set[str]]:
    """The estimates of a PairReport's two sweeps that one of compare's yes/no decisions reads
    while its band lets the answer go either way, by side ("teacher", "student"): measured
    exactly, they leave those decisions resting on exact values only. Empty for exact sweeps.

    The decisions: who a tie-aware chooser picks (its own drop against the dead floor, then its
    candidates' drops), whether a pair clears the noise floor on either side (the weighted
    score), whether a student claimed by several teachers is alive (fan-in, compression), and
    whether a teacher component is discarded onto a dead counterpart (the dead floor, both
    sides). The tolerance and the "influential" level are cut points the auto sweep decides
    itself (``AnalysisOptions.drop_cut_points``). ``ties_only``: the ties' needs alone.
    """
    sides = {"teacher": report.teacher.sweep, "student": report.student.sweep}
    if not has_estimates(*sides.values()):
        return {}
    bands = {side: drop_bands(sweep) for side, sweep in sides.items()}
    exact = {side: {e.name for e in sweep.effects if e.is_exact} for side, sweep in sides.items()}
    needs: dict[str, set[str]] = {"teacher": set(), "student": set()}

    def need(side: str, *names: str) -> None:
        needs[side].update(n for n in names if n in bands[side] and n not in exact[side])

    settings = report.settings
    floor = settings.min_student_influence
    chooser = "teacher" if report.fingerprint.direction != "student_to_teacher" else "student"
    partner = "student" if chooser == "teacher" else "teacher"
    for p in report.alignment.pairs:
        mine = getattr(p, chooser)
        # a tie broken by effect: the chooser's drop says whether effects are read at all
        if p.ambiguous:
            interval = bands[chooser][mine]
            if _straddles(interval, floor):
                need(chooser, mine)
            if _influence_range(interval)[1] >= floor:
                need(chooser, mine)
                need(partner, *p.candidates)
        noise = report.fingerprint.noise_floor
        if noise and not ties_only:
            if _pair_at_noise_floor(bands["teacher"][p.teacher], bands["student"][p.student],
                                    noise):
                if _straddles(bands["teacher"][p.teacher], noise):
                    need("teacher", p.teacher)
                if _straddles(bands["student"][p.student], noise):
                    need("student", p.student)
    if ties_only:
        return {side: names for side, names in needs.items() if names}
    # fan-in (and the dead matches it leaves out): a student an unambiguous teacher chose is
    # counted only while alive
    for p in report.alignment.pairs:
        if not p.ambiguous and _straddles(bands["student"][p.student], floor):
            need("student", p.student)
    # discarded onto a dead counterpart: the teacher could clear the floor and the counterpart
    # (its best match, or the most similar candidate of a tie) could be dead
    best: dict[str, Any] = {}
    for p in report.alignment.pairs:
        if p.teacher not in best or p.similarity > best[p.teacher].similarity:
            best[p.teacher] = p
    for teacher, p in best.items():
        counterparts = [p.student] + ([p.candidates[0]] if p.ambiguous and chooser == "teacher"
                                      else [])
        t_high = _influence_range(bands["teacher"][teacher])[1]
        for student in counterparts:
            if student not in bands["student"]:
                continue
            s_low = _influence_range(bands["student"][student])[0]
            if s_low < floor and t_high > floor and (
                    teacher not in exact["teacher"] or student not in exact["student"]):
                need("teacher", teacher)
                need("student", student)
    return {side: names for side, names in needs.items() if names}


def widest_estimates(report: Any, share: float = 0.5, least: int = 8) -> dict[str, set[str]]:
    """The matched estimates of a PairReport with the widest bands, by side: the fewest that
    carry ``share`` of the bands' total (at least ``least`` of them, or all there are). Measured
    exactly, they shrink the scores' slack (:func:`alignment_slack`) fastest."""
    sides = {"teacher": report.teacher.sweep, "student": report.student.sweep}
    found: dict[tuple[str, str], float] = {}
    for side, sweep in sides.items():
        band = dict(zip((e.name for e in sweep.effects), _bands(sweep), strict=True))
        for p in report.alignment.pairs:
            name = getattr(p, side)
            if band.get(name, 0.0) > 0.0:
                found[(side, name)] = band[name]
    ranked = sorted(found.items(), key=lambda item: -item[1])
    total = sum(b for _, b in ranked if math.isfinite(b))
    chosen: dict[str, set[str]] = {}
    carried = 0.0
    for count, ((side, name), b) in enumerate(ranked):
        if count >= least and carried >= share * total:
            break
        chosen.setdefault(side, set()).add(name)
        carried += b if math.isfinite(b) else 0.0
    return chosen


def threshold_needs(sweep: Any, thresholds: Any) -> set[str]:
    """The estimates of ``sweep`` whose bands leave a verdict against ``thresholds`` (a
    GateThresholds) open: each single-component level a band reaches (on the drop, or its
    negative, the influence cut point), each estimate that could be among the ``top_k``
    largest by clamped drop or by influence, and, while a mean-drop limit lies inside the mean
    clamped drop's interval, the widest estimates until it no longer does. Measured exactly
    (``ablation.settle``) they make the sweep decide ``thresholds`` as an auto sweep made for
    them would; an auto sweep is made once per model and settled further for each new set."""
    effects = list(sweep.effects)
    if not effects:
        return set()
    names = [e.name for e in effects]
    estimate = np.array([not e.is_exact for e in effects])
    drops = np.array([e.drop for e in effects], dtype=float)
    bands = _bands(sweep)
    low, high = drops - bands, drops + bands
    need: set[str] = set()
    for level in thresholds.drop:
        reach = ((low <= level) & (level <= high)) | ((low <= -level) & (-level <= high))
        need.update(n for n, hit in zip(names, reach & estimate, strict=True) if hit)
    k = int(thresholds.top_k)
    if k and len(effects) <= k:  # every component is among the top k: each is blamed
        need.update(n for n, hit in zip(names, estimate, strict=True) if hit)
    elif k:
        influence = [_influence_range((a, b)) for a, b in zip(low, high, strict=True)]
        orders = [(np.clip(low, 0.0, 100.0), np.clip(high, 0.0, 100.0)),
                  (np.array([r[0] for r in influence]), np.array([r[1] for r in influence]))]
        for lows, highs in orders:
            kth = np.sort(lows)[-k]
            could = estimate & (highs >= kth)
            need.update(n for n, hit in zip(names, could, strict=True) if hit)
    if thresholds.mean_drop:
        c_low, c_high = np.clip(low, 0.0, 100.0), np.clip(high, 0.0, 100.0)
        width = np.where(estimate, c_high - c_low, 0.0)
        n = len(effects)
        for limit in thresholds.mean_drop:
            mid_low, mid_high = float(c_low.mean()), float(c_high.mean())
            order = np.argsort(-width)
            taken = 0
            # settling an estimate can move its value anywhere in its band: remove its width
            while mid_low <= limit <= mid_high and taken < n and width[order[taken]] > 0:
                i = order[taken]
                need.add(names[i])
                mid_high -= width[i] / n
                taken += 1
    return need
