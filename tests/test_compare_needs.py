"""An auto pair report settles exactly the estimates its yes/no decisions read.

compare decides ties (tie-aware matching), the noise floor of the weighted score, fan-in and
the discarded components at the dead floor and the noise floor, where most of a real model's
values sit. An auto sweep no longer measures every value near those floors; the pair report
measures only the estimates a decision reads while their band lets it go either way
(``bounds.compare_needs``), each as a full exact sweep would (``ablation.settle``), stored in
the sweep's place so every later reader sees them. The decisions then equal the exact report's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_circuits import cache
from pytest_circuits.analysis import ablation, bounds, store
from pytest_circuits.analysis.cached import pair_report
from pytest_circuits.config import context
from pytest_circuits.config.options import AnalysisOptions, GateThresholds
from pytest_circuits.errors import SweepConfigError
from pytest_circuits.models import CircuitModel, ModelPair, load_model, load_pair
from pytest_circuits.tasks import builtin_task

TASK = builtin_task("numerals", n_prompts=16)
#: an auto sweep told to decide nothing: every value it did not need stays an estimate
NOTHING = GateThresholds(drop=(), mean_drop=(), top_k=0)


@pytest.fixture(scope="module")
def teacher() -> CircuitModel:
    return load_model("zoo:tiny-teacher", device="cpu")


@pytest.fixture(scope="module")
def pair(teacher: CircuitModel) -> ModelPair:
    return load_pair(teacher, load_model("zoo:tiny-student-brittle", device="cpu"))


@pytest.fixture
def fresh_cache(tmp_path: Path) -> Iterator[Path]:
    with context.changed(cache=context.CacheStore()):
        cache.configure(tmp_path / "cache", enabled=True)
        yield tmp_path / "cache"


@pytest.fixture
def undecided(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Auto sweeps decide nothing themselves; yields the methods of the sweeps that ran."""
    ran: list[str] = []
    real = ablation.sweep

    def sweep(*args: Any, **kwargs: Any) -> Any:
        ran.append(kwargs.get("method"))
        if kwargs.get("method") == "auto":
            kwargs["thresholds"] = NOTHING
        return real(*args, **kwargs)

    monkeypatch.setattr(ablation, "sweep", sweep)
    return ran


def test_settle_measures_the_named_estimates_as_the_exact_sweep_does(
    teacher: CircuitModel, fresh_cache: Path
) -> None:
    auto = ablation.sweep(teacher, TASK, method="auto", thresholds=NOTHING)
    exact = ablation.sweep(teacher, TASK, method="exact")
    estimated = auto.estimated_names
    assert len(estimated) >= 4
    chosen = estimated[:3]
    settled = ablation.settle(teacher, TASK, auto, chosen)
    by_exact = {e.name: e for e in exact.effects}
    for before, after in zip(auto.effects, settled.effects, strict=True):
        if before.name in chosen:
            truth = by_exact[before.name]
            assert after.is_exact and after.bound is None
            assert (after.ablated_metric, after.drop, after.influence, after.stderr) == (
                truth.ablated_metric, truth.drop, truth.influence, truth.stderr)
        else:
            assert after == before  # untouched, estimate or exact
    # nothing left to settle: the same object back, no replay
    assert ablation.settle(teacher, TASK, settled, chosen) is settled
    with pytest.raises(SweepConfigError, match="L9H9"):
        ablation.settle(teacher, TASK, auto, ["L9H9"])


def test_a_settled_sweep_replaces_the_stored_one_on_disk(
    teacher: CircuitModel, fresh_cache: Path
) -> None:
    options = AnalysisOptions(method="auto", thresholds=NOTHING)
    auto = store.sweep_result(teacher, TASK, options)
    chosen = auto.estimated_names[:2]
    store.settle_sweep(teacher, TASK, options, chosen)
    # a new session reading the same directory finds the settled sweep
    with context.changed(cache=context.CacheStore()):
        cache.configure(fresh_cache, enabled=True)
        again = store.sweep_result(teacher, TASK, options)
    assert set(again.exact_names) == set(auto.exact_names) | set(chosen)


@pytest.mark.parametrize("preset", [None, "recommended"])
def test_the_auto_report_decides_as_the_exact_one(
    pair: ModelPair, fresh_cache: Path, undecided: list[str], preset: str | None
) -> None:
    exact = pair_report(pair, TASK, method="exact", preset=preset)
    undecided.clear()
    with context.changed(cache=context.CacheStore()):
        cache.configure(None, enabled=True)
        auto = pair_report(pair, TASK, method="auto", preset=preset, thresholds=NOTHING)
    assert undecided == ["auto", "auto"]  # settled in place, never swept again
    assert bounds.compare_needs(auto) == {}
    estimates = len(auto.teacher.sweep.estimated_names) + len(auto.student.sweep.estimated_names)
    assert estimates > 0, "every value was settled: the test no longer shows a partial settle"
    # every decision compare makes is the exact report's
    assert [(p.teacher, p.student, p.candidates) for p in auto.alignment.pairs] == [
        (p.teacher, p.student, p.candidates) for p in exact.alignment.pairs]
    assert [(d.teacher, d.student, d.reason) for d in auto.discarded] == [
        (d.teacher, d.student, d.reason) for d in exact.discarded]
    assert auto.fan_in == exact.fan_in
    # each discarded component and its counterpart rest on exact values
    for d in auto.discarded:
        assert auto.teacher.sweep.effect(d.teacher).is_exact
        if d.student is not None:
            assert auto.student.sweep.effect(d.student).is_exact


def test_needs_name_only_estimates_whose_band_straddles_a_floor(
    pair: ModelPair, fresh_cache: Path, undecided: list[str]
) -> None:
    from pytest_circuits.analysis.comparison import compare

    options = AnalysisOptions(method="auto", thresholds=NOTHING)
    sweeps = tuple(store.sweep_result(m, TASK, options) for m in (pair.teacher, pair.student))
    report = compare(pair, TASK, options, sweeps=sweeps)
    needs = bounds.compare_needs(report)
    assert needs, "an undecided auto sweep left no decision open: the test shows nothing"
    floor = report.settings.min_student_influence
    for side, names in needs.items():
        sweep = sweeps[0] if side == "teacher" else sweeps[1]
        for name in names:
            effect = sweep.effect(name)
            assert not effect.is_exact
            low, high = bounds._influence_range((effect.drop - effect.bound,
                                                 effect.drop + effect.bound))
            # the paper's matching reads no tie and no noise floor: only the dead floor, where
            # a teacher that could clear it matters, and a student that could be dead
            if side == "teacher":
                assert high > floor
            else:
                assert low < floor
    # exact sweeps open nothing
    exact = tuple(store.sweep_result(m, TASK, method="exact") for m in (pair.teacher, pair.student))
    assert bounds.compare_needs(compare(pair, TASK, options, sweeps=exact)) == {}


@pytest.mark.parametrize("thresholds", [
    GateThresholds(drop=(1.0,), mean_drop=(), top_k=0),
    GateThresholds(drop=(), mean_drop=(), top_k=3),
    GateThresholds(drop=(), mean_drop=(9.0,), top_k=0),
])
def test_settling_what_thresholds_need_decides_them_as_exact(
    teacher: CircuitModel, fresh_cache: Path, thresholds: GateThresholds
) -> None:
    auto = ablation.sweep(teacher, TASK, method="auto", thresholds=NOTHING)
    exact = {e.name: e for e in ablation.sweep(teacher, TASK, method="exact").effects}
    settled, rounds = auto, 0
    while need := bounds.threshold_needs(settled, thresholds):
        assert all(not settled.effect(n).is_exact for n in need)
        settled = ablation.settle(teacher, TASK, settled, sorted(need))
        rounds += 1
    assert rounds >= 1 and settled.estimated_names, "nothing or everything was needed"
    for level in thresholds.drop:  # every value on the exact side of each level
        assert {e.name for e in settled.effects if e.drop >= level} == {
            n for n, e in exact.items() if e.drop >= level}
    if thresholds.top_k:
        def top(effects: Any) -> list[str]:
            ranked = sorted(effects, key=lambda e: -min(max(e.drop, 0.0), 100.0))
            return [e.name for e in ranked][:3]
        assert top(settled.effects) == top(exact.values())
        assert all(settled.effect(n).is_exact for n in top(settled.effects))
    for limit in thresholds.mean_drop:
        lo, hi = bounds.drop_intervals(settled)
        truth = np.mean([min(max(e.drop, 0.0), 100.0) for e in exact.values()])
        assert not lo.mean() <= limit <= hi.mean()
        assert (lo.mean() > limit) == (truth > limit)


def test_every_gate_on_a_model_shares_one_auto_sweep(
    teacher: CircuitModel, fresh_cache: Path, undecided: list[str]
) -> None:
    from pytest_circuits.kinds import assert_ablation_robust

    assert_ablation_robust(teacher, TASK, max_single_drop=100.0, method="auto")
    assert_ablation_robust(teacher, TASK, max_severity=1.0, method="auto")
    assert_ablation_robust(teacher, TASK, components="heads", max_single_drop=100.0,
                           method="auto")
    assert undecided == ["auto"]  # one screen; the later gates settled what they needed


def test_a_value_settled_outside_its_band_distrusts_every_band(
    teacher: CircuitModel, fresh_cache: Path
) -> None:
    import dataclasses

    options = AnalysisOptions(method="auto", thresholds=NOTHING)
    auto = store.sweep_result(teacher, TASK, options)
    exact = {e.name: e for e in ablation.sweep(teacher, TASK, method="exact").effects}
    # forge the stored sweep: one estimate claims a band its exact value lies far outside
    victim = next(e for e in auto.effects if not e.is_exact
                  and abs(exact[e.name].drop - e.drop) > 1e-3)
    forged = dataclasses.replace(auto, effects=[
        dataclasses.replace(e, bound=1e-6) if e.name == victim.name else e
        for e in auto.effects])
    parts = store._full_parts(teacher, TASK, options, "auto")
    cache.replace("sweep", parts, forged)
    settled = store.settle_sweep(teacher, TASK, options, [victim.name])
    # the screen was wrong there, so no other estimate is left resting on it
    assert settled.estimated_names == []
    assert {e.name: e.drop for e in settled.effects} == {n: e.drop for n, e in exact.items()}
    # an honest band that holds: only the named estimate is measured
    cache.replace("sweep", parts, auto)
    honest = next(e for e in auto.effects if not e.is_exact and e.name != victim.name
                  and abs(exact[e.name].drop - e.drop) <= e.bound)
    again = store.settle_sweep(teacher, TASK, options, [honest.name])
    assert set(again.exact_names) == set(auto.exact_names) | {honest.name}


def test_with_caching_off_the_report_settles_its_own_sweeps_and_ends(
    pair: ModelPair, undecided: list[str]
) -> None:
    with context.changed(cache=context.CacheStore()):
        cache.configure(None, enabled=True)
        exact = pair_report(pair, TASK, method="exact", preset="recommended")
    undecided.clear()
    with context.changed(cache=context.CacheStore()):
        cache.configure(None, enabled=False)
        auto = pair_report(pair, TASK, method="auto", preset="recommended", thresholds=NOTHING)
    # one screen per model, settled in place round after round: never a fresh screen
    assert undecided == ["auto", "auto"]
    assert bounds.compare_needs(auto) == {}
    assert [(d.teacher, d.student) for d in auto.discarded] == [
        (d.teacher, d.student) for d in exact.discarded]


def test_values_another_worker_settled_are_kept_when_this_one_writes(
    teacher: CircuitModel, fresh_cache: Path
) -> None:
    options = AnalysisOptions(method="auto", thresholds=NOTHING)
    auto = store.sweep_result(teacher, TASK, options)
    mine, theirs = auto.estimated_names[0], auto.estimated_names[1]
    # another process settles `theirs` and writes the entry; this one still holds the old copy
    with context.changed(cache=context.CacheStore()):
        cache.configure(fresh_cache, enabled=True)
        store.settle_sweep(teacher, TASK, options, [theirs])
    settled = store.settle_sweep(teacher, TASK, options, [mine])
    assert {mine, theirs} <= set(settled.exact_names)
    with context.changed(cache=context.CacheStore()):
        cache.configure(fresh_cache, enabled=True)
        assert {mine, theirs} <= set(store.sweep_result(teacher, TASK, options).exact_names)


def test_a_subset_no_larger_than_the_top_k_is_measured_whole(
    teacher: CircuitModel, fresh_cache: Path
) -> None:
    auto = ablation.sweep(teacher, TASK, method="auto", thresholds=NOTHING)
    import dataclasses

    few = dataclasses.replace(auto, effects=[e for e in auto.effects if not e.is_exact][:3])
    assert bounds.threshold_needs(few, GateThresholds(drop=(), mean_drop=(), top_k=5)) == {
        e.name for e in few.effects}


@pytest.mark.parametrize("bound", [float("nan"), -1.0])
def test_an_estimate_with_a_nan_or_negative_band_is_never_trusted(
    teacher: CircuitModel, fresh_cache: Path, bound: float
) -> None:
    import dataclasses

    auto = ablation.sweep(teacher, TASK, method="auto", thresholds=NOTHING)
    victim = auto.estimated_names[0]
    forged = dataclasses.replace(auto, effects=[
        dataclasses.replace(e, bound=bound) if e.name == victim else e for e in auto.effects])
    # any level at all is within an unbounded band: the estimate must be measured
    assert victim in bounds.threshold_needs(forged, GateThresholds(drop=(99.0,), top_k=0))
    low, high = bounds.drop_bands(forged)[victim]
    assert low == -np.inf and high == np.inf
