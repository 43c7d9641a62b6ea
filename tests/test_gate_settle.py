"""A gate's verdict never rests on an auto sweep's estimate: each sweeping gate bounds its
metrics over the estimates' bands (``analysis.bounds``) and sweeps again exactly when a threshold
lies inside a metric's interval.

The intervals are checked against the metric functions themselves (perturbing every estimate
to the ends of its band never leaves them), and the gates are checked with an auto sweep that
was asked to decide nothing, so that only the gate's own check can save the verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pytest_circuits import cache, metrics
from pytest_circuits.analysis import ablation
from pytest_circuits.analysis import bounds as finish
from pytest_circuits.analysis.ablation import ComponentEffect, GateThresholds
from pytest_circuits.kinds import (
    assert_ablation_robust,
    assert_circuit_aligned,
    assert_mechanism_preserved,
)
from pytest_circuits.models import CircuitModel, ModelPair, load_model, load_pair
from pytest_circuits.recording import MetricCheck, recording
from pytest_circuits.tasks import builtin_task


@pytest.fixture(scope="module")
def teacher() -> CircuitModel:
    return load_model("zoo:tiny-teacher", device="cpu")


@pytest.fixture(scope="module")
def pair(teacher: CircuitModel) -> ModelPair:
    return load_pair(teacher, load_model("zoo:tiny-student-brittle", device="cpu"))


@pytest.fixture
def undecided_auto(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Auto sweeps that were told no threshold and no top-k (so most values stay estimates),
    nothing cached; yields the methods of the sweeps that ran."""
    saved = dict(cache._settings)
    cache.forget()
    cache.configure(None, enabled=True)
    ran: list[str] = []
    real = ablation.sweep

    def sweep(*args: Any, **kwargs: Any) -> Any:
        ran.append(kwargs.get("method"))
        if kwargs.get("method") == "auto":
            kwargs["thresholds"] = GateThresholds(drop=(), mean_drop=(), top_k=0)
        return real(*args, **kwargs)

    monkeypatch.setattr(ablation, "sweep", sweep)
    yield ran
    cache.forget()
    cache._settings.update(saved)


TASK = builtin_task("numerals", n_prompts=16)


# --------------------------------------------------------------------------- the intervals


def _effect(name: str, drop: float, bound: float | None, exact: bool) -> ComponentEffect:
    return ComponentEffect(
        name=name, kind="mlp", layer=0, head=None, ablated_metric=1.0 - drop / 100,
        retained=100.0 - drop, drop=drop, influence=abs(drop),
        method="exact" if exact else "auto", bound=None if exact else bound,
    )


class _Sweep:
    def __init__(self, effects: list[ComponentEffect]) -> None:
        self.effects = effects


def test_brittleness_intervals_hold_the_metrics_at_every_end_of_the_bands() -> None:
    rng = np.random.default_rng(0)
    drops = rng.uniform(-5, 60, size=12)
    bounds = rng.uniform(0, 8, size=12)
    exact = rng.random(12) < 0.4
    sweep = _Sweep([_effect(f"MLP{i}", d, b, e)
                    for i, (d, b, e) in enumerate(zip(drops, bounds, exact, strict=True))])
    summary = metrics.brittleness_summary([e.name for e in sweep.effects],
                                          np.clip(drops, 0, 100), tolerance=20.0)
    intervals = finish.brittleness_intervals(sweep, summary)
    lo, hi = intervals["severity"]
    assert lo < summary.severity < hi  # estimates above the tolerance: the interval is wide
    for _ in range(200):
        moved = drops + np.where(exact, 0.0, rng.uniform(-1, 1, 12) * bounds)
        m = np.clip(moved, 0, 100)
        assert lo - 1e-12 <= metrics.severity_score(m, tolerance=20.0) <= hi + 1e-12
        assert intervals["mean_drop"][0] - 1e-9 <= m.mean() <= intervals["mean_drop"][1] + 1e-9
        assert intervals["max_single_drop"][0] <= m.max() <= intervals["max_single_drop"][1]
    # all exact: a point
    point = finish.brittleness_intervals(
        _Sweep([dataclasses.replace(e, method="exact", bound=None) for e in sweep.effects]),
        summary)
    assert point["severity"][0] == point["severity"][1] == pytest.approx(summary.severity)


def test_unsettled_names_the_checks_whose_threshold_is_inside_the_interval() -> None:
    checks = [MetricCheck("severity", 0.10, 0.12, "<="), MetricCheck("alignment", 0.8, 0.5, ">="),
              MetricCheck("mean_drop", 3.0, 2.0, "<=")]
    intervals = {"severity": (0.05, 0.15), "alignment": (0.7, 0.9), "mean_drop": (2.5, 3.5)}
    assert finish.unsettled(checks, intervals) == ["severity"]
    # a threshold at the interval's end: "<=" passes at high == threshold, so it is decided
    assert finish.unsettled([MetricCheck("severity", 0.1, 0.15, "<=")], intervals) == []
    assert finish.unsettled([MetricCheck("alignment", 0.8, 0.7, ">=")], intervals) == []
    assert finish.unsettled([MetricCheck("alignment", 0.8, 0.75, ">=")], intervals) == [
        "alignment"]


def test_alignment_slack_bounds_the_score_over_every_band(pair: ModelPair) -> None:
    """A real auto pair report: moving each estimated influence anywhere within its band moves
    the paper's score and the weighted score by no more than the slack."""
    from pytest_circuits.analysis.cached import pair_report

    cache.forget()
    report = pair_report(pair, TASK, method="auto",
                         thresholds=GateThresholds(drop=(), mean_drop=(), top_k=0))
    sweeps = {"teacher": report.teacher.sweep, "student": report.student.sweep}
    assert finish.has_estimates(*sweeps.values())
    paper, weighted = finish.alignment_slack(report)
    assert 0 < paper < weighted < np.inf
    pairs = report.alignment.pairs
    sim = np.array([p.similarity for p in pairs])
    t0 = np.array([p.teacher_influence for p in pairs])
    s0 = np.array([p.student_influence for p in pairs])
    band = {side: {e.name: (0.0 if e.is_exact else e.bound) for e in sw.effects}
            for side, sw in sweeps.items()}
    a0 = metrics.alignment_score(sim, t0, s0)
    w0 = metrics.weighted_alignment_score(sim, t0, s0)
    assert a0 == pytest.approx(report.alignment.score)
    rng = np.random.default_rng(1)
    # one shift per component (a component matched twice moves once), to the ends of the bands
    for _ in range(300):
        shift = {side: {name: b * rng.choice([-1.0, 1.0]) for name, b in bands.items()}
                 for side, bands in band.items()}
        t = np.maximum(0.0, t0 + [shift["teacher"][p.teacher] for p in pairs])
        s = np.maximum(0.0, s0 + [shift["student"][p.student] for p in pairs])
        if t.sum() == 0 or s.sum() == 0:
            continue
        assert abs(metrics.alignment_score(sim, t, s) - a0) <= paper + 1e-12
        assert abs(metrics.weighted_alignment_score(sim, t, s) - w0) <= weighted + 1e-12
    cache.forget()


# --------------------------------------------------------------------------- the gates


def test_robust_gate_settles_a_severity_the_estimates_could_flip(
    teacher: CircuitModel, undecided_auto: list[str]
) -> None:
    exact = ablation.sweep(teacher, TASK, method="exact")
    undecided_auto.clear()
    cache.forget()
    severity = metrics.severity_score(exact.clamped_drops, tolerance=20.0)
    assert severity > 0
    got: list[Any] = []
    with recording(got.append):
        report = assert_ablation_robust(teacher, TASK, max_severity=severity, method="auto")
    # the auto sweep left estimates whose bands straddle the limit; the gate swept exactly
    assert undecided_auto == ["auto", "exact"]
    assert report.sweep.is_exact
    assert report.brittleness.severity == pytest.approx(severity)
    note = got[-1].fingerprint["sweep_method"]["note"]
    assert "swept exactly" in note and "severity" in note


def test_robust_gate_keeps_auto_when_every_verdict_is_decided(
    teacher: CircuitModel, undecided_auto: list[str]
) -> None:
    # a limit no estimate can reach: the interval lies wholly below it
    assert_ablation_robust(teacher, TASK, max_single_drop=100.0, method="auto")
    assert undecided_auto == ["auto"]


def test_aligned_gate_settles_a_score_the_estimates_could_flip(
    pair: ModelPair, undecided_auto: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_circuits.analysis import cached, store
    from pytest_circuits.analysis.cached import pair_report

    # on this tiny pair the top 5 and the floors reach every value, so the sweep and the pair
    # report would settle them all first (test_compare_needs); leave the score to the gate
    monkeypatch.setattr(cached, "compare_needs", lambda report: {})
    monkeypatch.setattr(store.bounds, "threshold_needs", lambda sweep, thresholds: set())
    exact = pair_report(pair, TASK, method="exact")
    cache.forget()
    undecided_auto.clear()
    score = exact.alignment.score
    got: list[Any] = []
    with recording(got.append):
        report = assert_circuit_aligned(pair, TASK, min_score=score, method="auto")
    # no second sweep: the gate measured the estimates the score reads, widest bands first,
    # until the threshold left the interval; at the exact score that takes every matched value
    assert sorted(undecided_auto) == ["auto", "auto"]
    assert got[-1].fingerprint["sweep_method"]["settled_exactly"] == ["alignment"]
    assert "more values measured exactly" in got[-1].fingerprint["sweep_method"]["note"]
    assert report.alignment.score == pytest.approx(score)
    for p in report.alignment.pairs:
        assert report.teacher.sweep.effect(p.teacher).is_exact
        assert report.student.sweep.effect(p.student).is_exact


def test_mechanism_gate_settles_an_influence_the_estimates_could_flip(
    pair: ModelPair, undecided_auto: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_circuits.analysis import cached
    from pytest_circuits.analysis.cached import pair_report

    # on this tiny pair every matched value sits near the dead floor, so the pair report
    # would settle them all (test_compare_needs); keep them estimates to reach the gate's own
    monkeypatch.setattr(cached, "compare_needs", lambda report: {})
    auto = pair_report(pair, TASK, method="auto")
    estimated = [p for p in auto.alignment.pairs
                 if not auto.student.sweep.effect(p.student).is_exact]
    assert estimated, "the undecided auto sweep left no student estimate"
    target = max(estimated, key=lambda p: p.student_influence)
    assert target.student_influence > 0
    cache.forget()
    undecided_auto.clear()
    got: list[Any] = []
    with recording(got.append):
        assert_mechanism_preserved(pair, TASK, components=[target.teacher], min_similarity=None,
                                   min_influence=target.student_influence, method="auto")
    # the two auto sweeps, then the two exact ones that settled the influence
    assert sorted(undecided_auto) == ["auto", "auto", "exact", "exact"]
    settled = got[-1].fingerprint["sweep_method"]["settled_exactly"]
    assert settled == [f"{target.teacher}.student_influence"]
