"""Baselines across sweep methods: an exact baseline serves an auto run (and the other way
round), exact values compare as before, an estimate by its band: within tolerance only if its
whole band is, a regression only if its whole band is beyond it, and otherwise the comparison of
a checked metric is refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_circuits.analysis.comparison import report_from_sweep
from pytest_circuits.baseline import (
    Baseline,
    BaselineFileError,
    MetricDelta,
    entry_for,
    value_bands,
)
from pytest_circuits.identity import ModelInfo
from pytest_circuits.results import GateResult, MetricCheck
from pytest_circuits.results.fingerprint import MethodFingerprint
from pytest_circuits.results.gate import RoleSweep, SweepMethodRecord
from pytest_circuits.results.sweep import ComponentEffect, SweepResult, TaskPerformance

KEY = "ablation_robust::candidate::numerals"
#: The other components' drops (exact in every sweep): none near the checked limit.
QUIET = (2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 0.5, 2.5, 1.5)


def info(weights: str = "a" * 64) -> ModelInfo:
    return ModelInfo(name="candidate", source="candidate", architecture="GPT2LMHeadModel",
                     kind="causal", n_layers=10, n_heads=1, d_head=8, d_model=8, n_params=100,
                     dtype="float32", device_kind="cpu", processing="raw",
                     weights_sha256=weights)


def robust_result(worst: float, bound: float | None = None, *, weights: str = "a" * 64,
                  method: str | None = None, ablation: str = "mean") -> GateResult:
    """An ``ablation_robust`` result over a 10-component sweep whose worst component drops
    ``worst`` points: exact when ``bound`` is None, else an auto estimate within +-``bound``."""
    estimated = bound is not None
    chosen = method or ("auto" if estimated else "exact")
    effects = [ComponentEffect(f"L{i}H0", "head", i, 0, 1.0, 100.0 - d, d, d)
               for i, d in enumerate(QUIET)]
    effects.append(ComponentEffect("L9H0", "head", 9, 0, 1.0, 100.0 - worst, worst, worst,
                                   method="auto" if estimated else "exact", bound=bound))
    fingerprint = MethodFingerprint(analysis="sweep", ablation=ablation, method=chosen,
                                    task="numerals", task_sha256="0" * 16, n_prompts=8,
                                    n_reference=8, seed=0, dtype="float32")
    model = info(weights)
    performance = TaskPerformance("candidate", "numerals", 2.0, (2.0,) * 8, 1.0, 1.0)
    sweep = SweepResult(model=model, task="numerals", clean_metric=2.0, performance=performance,
                        effects=effects, fingerprint=fingerprint)
    report = report_from_sweep(sweep, tolerance=20.0)
    b = report.brittleness
    result = GateResult(
        gate="ablation_robust", subject="candidate", task="numerals",
        checks=[MetricCheck("max_single_drop", b.worst_drop, 50.0, "<=")],
        values={"severity": b.severity, "max_single_drop": b.worst_drop,
                "mean_drop": b.mean_drop, "worst5_mean": b.worst5_mean, "gini": b.gini,
                "count_above_tolerance": float(b.count_above_tolerance),
                "n_components": float(b.n_components)},
        fingerprint={**fingerprint.to_dict(), "method": chosen},
        models={"model": model}, report=report, nodeid="test_release.py::test_robust",
    )
    result.set_sweep_method(SweepMethodRecord(
        requested=chosen, origin="test", note="",
        sweeps={"model": RoleSweep(model="candidate", method=chosen, components=10,
                                   exact=9 if estimated else 10,
                                   bounded=1 if estimated else 0,
                                   estimated=1 if estimated else 0,
                                   mean_drop_bound=(bound or 0.0) / 10)}))
    return result


def baseline_of(*results: GateResult) -> Baseline:
    """A baseline as a team records it, written to JSON and read back."""
    written = Baseline(Path("baseline.json")).updated(list(results)).to_dict()
    return Baseline(Path("baseline.json"), json.loads(json.dumps(written))["entries"])


def test_an_exact_value_has_no_band_and_an_estimate_the_intervals_the_gate_reads() -> None:
    assert value_bands(robust_result(30.0)) == {}
    bands = value_bands(robust_result(30.0, bound=3.0))
    assert bands["max_single_drop"] == (27.0, 33.0)
    assert bands["mean_drop"][0] == pytest.approx((sum(QUIET) + 27.0) / 10)
    assert bands["mean_drop"][1] == pytest.approx((sum(QUIET) + 33.0) / 10)
    assert bands["worst5_mean"] == (27.0, 33.0)  # one component is the worst 5%
    assert bands["severity"][0] == pytest.approx(7.0 / 80 / 10)
    assert bands["severity"][1] == pytest.approx(13.0 / 80 / 10)
    assert bands["gini"] == (float("-inf"), float("inf"))  # no band is derived for it
    assert "count_above_tolerance" not in bands and "n_components" not in bands


def test_exact_baseline_and_auto_estimate_whose_band_straddles_the_tolerance_is_refused(
) -> None:
    baseline = baseline_of(robust_result(30.0))
    check = baseline.check(robust_result(31.0, bound=3.0))  # 28..34: +4 at worst, tolerance 2
    assert check.status == "refused" and check.failed
    delta = check.delta("max_single_drop")
    assert delta is not None and delta.unsettled and not delta.regressed
    assert delta.current_band == [28.0, 34.0] and delta.baseline_band is None
    assert ("max_single_drop: baseline 30 (exact), this run 31 (estimate within 28..34), "
            "tolerance 2") in check.message
    assert "--circuits-method=exact" in check.message
    assert "different method" not in check.message  # exact and auto are not refused as such


def test_exact_baseline_and_auto_estimate_whose_band_is_within_tolerance_passes() -> None:
    baseline = baseline_of(robust_result(30.0))
    check = baseline.check(robust_result(30.5, bound=0.5))  # 30..31: +1 at worst
    assert check.status == "ok", check.message
    delta = check.delta("max_single_drop")
    assert delta is not None and delta.current_band == [30.0, 31.0] and not delta.unsettled
    # the Gini coefficient has no band: it is left out and named, never passed
    assert check.message.startswith("not compared: gini: baseline")


def test_an_estimate_whose_whole_band_is_beyond_the_tolerance_regressed() -> None:
    baseline = baseline_of(robust_result(30.0))
    check = baseline.check(robust_result(40.0, bound=1.0))  # 39..41: +9 at best
    assert check.status == "regressed"
    assert check.delta("max_single_drop").regressed  # type: ignore[union-attr]
    assert "max_single_drop" in check.message and "not compared: gini" in check.message


def test_an_estimate_never_passes_on_its_point_value_alone() -> None:
    baseline = baseline_of(robust_result(30.0))
    # the point value is unchanged, but the band reaches 10 points past it
    check = baseline.check(robust_result(30.0, bound=10.0))
    assert check.status == "refused"
    # an auto run whose values all came out exact compares as an exact one
    assert baseline.check(robust_result(30.0, bound=None, method="auto")).status == "ok"
    # an estimate screened without any bound is never within tolerance
    unbounded = robust_result(30.0, bound=1.0)
    unbounded.report.sweep.effects[-1] = dataclasses.replace(
        unbounded.report.sweep.effects[-1], bound=None)
    assert baseline.check(unbounded).status == "refused"


def test_exact_against_exact_is_compared_as_before() -> None:
    baseline = baseline_of(robust_result(30.0))
    steady = baseline.check(robust_result(31.0))
    assert steady.status == "ok" and steady.message == ""
    assert steady.delta("max_single_drop") == MetricDelta("max_single_drop", 30.0, 31.0, 2.0,
                                                          "<=")
    worse = baseline.check(robust_result(33.0))
    assert worse.status == "regressed" and "max_single_drop" in worse.message
    assert MetricDelta("max_single_drop", 30.0, 33.0, 2.0, "<=").regressed


def test_an_auto_baseline_keeps_its_bands_and_serves_an_exact_run() -> None:
    recorded = robust_result(30.0, bound=3.0)
    entry = entry_for(recorded)
    assert entry["bands"]["max_single_drop"] == [27.0, 33.0]
    assert entry["bands"]["gini"] == [None, None]
    baseline = baseline_of(recorded)
    # exact 31 against a baseline somewhere in 27..33: +4 at worst
    assert baseline.check(robust_result(31.0, weights="b" * 64)).status == "refused"
    tight = baseline_of(robust_result(30.0, bound=0.5))
    assert tight.check(robust_result(30.5, weights="b" * 64)).status == "ok"
    assert tight.check(robust_result(36.0, weights="b" * 64)).status == "regressed"


def test_two_estimates_of_the_same_weights_by_the_same_method_compare_by_value() -> None:
    baseline = baseline_of(robust_result(30.0, bound=10.0))
    assert baseline.check(robust_result(30.0, bound=10.0)).status == "ok"
    # other weights: the same point value no longer says the true values are equal
    assert baseline.check(robust_result(30.0, bound=10.0, weights="b" * 64)).status == (
        "refused")


def test_an_auto_entry_recorded_without_bands_is_unbounded() -> None:
    recorded = robust_result(30.0, bound=0.5)
    entry = entry_for(recorded)
    del entry["bands"]  # written before bands were kept
    baseline = Baseline(Path("baseline.json"), {KEY: entry})
    assert baseline.check(robust_result(30.0, weights="b" * 64)).status == "refused"


def test_another_difference_of_method_is_still_refused() -> None:
    baseline = baseline_of(robust_result(30.0))
    check = baseline.check(robust_result(30.0, bound=0.5, ablation="zero"))
    assert check.status == "refused"
    assert "ablation: baseline 'mean', this run 'zero'" in check.message
    assert "method: baseline" not in check.message  # exact -> auto is not listed


@pytest.mark.parametrize(("bands", "words"), [
    ({"max_single_drop": [31.0, 33.0]}, "leaves out its value 30.0"),
    ({"max_single_drop": [29.0]}, "is not [low, high]"),
    ({"max_single_drop": [29.0, float("inf")]}, "is not [low, high]"),
    ({"nowhere": [0.0, 1.0]}, "which it holds no value of"),
    ([1, 2], "not a mapping"),
])
def test_a_damaged_band_is_refused_when_the_baseline_loads(tmp_path: Path, bands: Any,
                                                           words: str) -> None:
    entry = entry_for(robust_result(30.0))
    entry["bands"] = bands
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"format": "pytest-circuits-baseline", "version": 1,
                                "entries": {KEY: entry}}))
    with pytest.raises(BaselineFileError, match="cannot be compared must not pass") as caught:
        Baseline.load(path)
    assert words in str(caught.value)


def test_a_real_auto_gate_is_compared_with_an_exact_baseline_by_its_bands() -> None:
    """The zoo pair through the real gate: auto first (a fresh cache, so its sweeps are
    screened), then exact; the alignment estimate's band is the one the gate bounds its verdict
    by, and the weighted score's band, wider than its tolerance, refuses once it is checked."""
    from pytest_circuits import cache
    from pytest_circuits.analysis.bounds import alignment_slack
    from pytest_circuits.config import context
    from pytest_circuits.kinds import KINDS
    from pytest_circuits.kinds.runner import evaluate
    from pytest_circuits.models import load_pair

    pair = load_pair("zoo:tiny-teacher", "zoo:tiny-student", device="cpu")
    kind = KINDS["circuit_aligned"]
    with context.changed(cache=context.CacheStore()):
        cache.configure(None, enabled=True)
        auto = evaluate(kind, pair, "numerals", min_score=0.1, method="auto", n_prompts=16)
        checked = evaluate(kind, pair, "numerals", min_score=0.1, min_weighted_score=0.1,
                           method="auto", n_prompts=16)
        exact = evaluate(kind, pair, "numerals", min_score=0.1, min_weighted_score=0.1,
                         method="exact", n_prompts=16)
    assert auto.sweep_method is not None and auto.sweep_method.sweeps["teacher"].estimated
    paper, weighted = alignment_slack(auto.report)
    score = auto.values["alignment"]
    bands = value_bands(auto)
    assert bands["alignment"] == (score - paper, score + paper) and 0 < paper < 0.02
    assert "mean_similarity" not in bands  # paper matching reads no influence: exact
    assert weighted > 0.02  # wider than the tolerance

    baseline = baseline_of(exact)
    check = baseline.check(auto)
    assert check.status == "ok", check.message
    assert check.delta("alignment").current_band == [score - paper, score + paper]  # type: ignore[union-attr]
    assert check.message.startswith("not compared: weighted_alignment: baseline")
    refused = baseline.check(checked)
    assert refused.status == "refused"
    assert "weighted_alignment: baseline" in refused.message
    assert refused.delta("alignment").unsettled is False  # type: ignore[union-attr]
