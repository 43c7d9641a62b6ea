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
    inf for an estimate without a bound."""
    return np.array([0.0 if e.is_exact else (math.inf if e.bound is None else float(e.bound))
                     for e in sweep.effects])


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

