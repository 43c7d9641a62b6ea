"""``sweep(method="auto")`` gives the exact sweep's verdicts and blamed components, each
confirmed value is the exact sweep's own float, the result says which values are estimates and
how far they are trusted; and stacked ablations that run out of memory are halved and retried."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from helpers import load_plain_hf, preferred_task, save_tiny_gpt2, smollm2_gguf
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_circuits.analysis import engine
from pytest_circuits.analysis.ablation import (
    SCREEN_FLOOR,
    SCREEN_SAFETY,
    GateThresholds,
    OutOfMemoryRetryWarning,
    Screening,
    SweepConfigError,
    SweepResult,
    _AutoState,
    sweep,
)
from pytest_circuits.components import Component
from pytest_circuits.errors import CircuitsError
from pytest_circuits.models import CircuitModel, load_model
from pytest_circuits.tasks import Task, builtin_task

#: What the gates compare: two tolerances (severity, count above), mean-drop limits, top 5.
THRESHOLDS = GateThresholds(drop=(5.0, 20.0), mean_drop=(2.0, 10.0, 25.0), top_k=5)
ZOO = ("tiny-teacher", "tiny-student", "tiny-student-brittle")


def assert_same_verdicts(exact: SweepResult, auto: SweepResult) -> None:
    """Every gate-facing quantity auto promises equals the exact sweep's."""
    for tolerance in THRESHOLDS.drop:
        e, a = exact.brittleness(tolerance=tolerance), auto.brittleness(tolerance=tolerance)
        assert a.severity == e.severity, tolerance
        assert a.worst_drop == e.worst_drop and a.worst_component == e.worst_component
        assert a.count_above_tolerance == e.count_above_tolerance, tolerance
    e_mean, a_mean = exact.brittleness().mean_drop, auto.brittleness().mean_drop
    assert abs(a_mean - e_mean) <= auto.mean_drop_bound + 1e-9
    for limit in THRESHOLDS.mean_drop:
        assert (a_mean <= limit) == (e_mean <= limit), limit
    assert [x.name for x in auto.worst(5)] == [x.name for x in exact.worst(5)]
    by_influence = sorted(exact.effects, key=lambda x: -x.influence)[:5]
    auto_by_influence = sorted(auto.effects, key=lambda x: -x.influence)[:5]
    assert [x.name for x in auto_by_influence] == [x.name for x in by_influence]


def assert_bands_hold(exact: SweepResult, auto: SweepResult, share: float = 1.0) -> None:
    """Every estimate auto kept lies within ``share`` of its band of the exact drop, and its
    band is the one the screening record gives that head."""
    assert auto.screening is not None
    for e, a in zip(exact.effects, auto.effects, strict=True):
        if a.method != "exact":
            assert a.bound == auto.screening.head_band(a.name)
            assert abs(a.drop - e.drop) <= share * a.bound, (a.name, a.drop, e.drop, a.bound)


def assert_confirmed_values_are_exact(exact: SweepResult, auto: SweepResult) -> None:
    for e, a in zip(exact.effects, auto.effects, strict=True):
        assert a.name == e.name
        if a.method == "exact":
            assert a.bound is None
            assert a.ablated_metric == e.ablated_metric, a.name  # bit for bit on a CPU
            assert (a.drop, a.retained, a.influence) == (e.drop, e.retained, e.influence)
        else:
            assert a.method == "attribution" and a.bound is not None and a.bound > 0


# --------------------------------------------------------------------------- the zoo


@pytest.fixture(scope="module")
def zoo_models() -> dict[str, CircuitModel]:
    return {name: load_model(f"zoo:{name}") for name in ZOO}


@pytest.mark.parametrize("ablation", ["mean", "zero"])
@pytest.mark.parametrize("task_name", ["numerals", "ioi"])
@pytest.mark.parametrize("name", ZOO)
def test_auto_matches_exact_on_the_zoo(zoo_models: dict[str, CircuitModel], name: str,
                                       task_name: str, ablation: str) -> None:
    model = zoo_models[name]
    task = builtin_task(task_name, n_prompts=24)
    exact = sweep(model, task, ablation=ablation, method="exact")
    auto = sweep(model, task, ablation=ablation, method="auto", thresholds=THRESHOLDS)
    assert_same_verdicts(exact, auto)
    assert_confirmed_values_are_exact(exact, auto)
    assert_bands_hold(exact, auto)
    assert auto.fingerprint.method == "auto" and auto.screening is not None


def test_a_layer_the_screen_gets_wrong_is_measured_whole(
    zoo_models: dict[str, CircuitModel]
) -> None:
    # the zoo teacher's first layer is where the screen is far off (L0H1 screened near 9 points,
    # exact near 50 under zero ablation): the errors seen there widen its band until all of its
    # heads are measured, while the later layers, screened well, keep estimates within bounds
    model = zoo_models["tiny-teacher"]
    task = builtin_task("ioi", n_prompts=24)
    exact = sweep(model, task, ablation="zero", method="exact")
    auto = sweep(model, task, ablation="zero", method="auto")
    assert auto.screening is not None
    rates = dict(auto.screening.layer_errors)
    assert rates[0] == max(rates.values())  # the worst screened layer sets the model's rate
    assert all(e.method == "exact" for e in auto.effects if e.layer == 0)
    assert_bands_hold(exact, auto)


# --------------------------------------------------------------------------- random GPT-2 shapes


def random_gpt2(tmp_path_factory: pytest.TempPathFactory, **shape: Any) -> tuple[Any, Task]:
    directory = save_tiny_gpt2(tmp_path_factory.mktemp("auto-gpt2"), **shape)
    model = load_model(directory, device="cpu")
    return model, preferred_task(load_plain_hf(directory), model.tokenizer, name="auto")


SHAPES = [
    dict(seed=0),  # 2 layers x 4 heads, d_model 32, large initialisation: very nonlinear
    dict(seed=1, n_layer=3, n_head=4, n_embd=32, initializer_range=0.05),
    dict(seed=2, n_layer=4, n_head=8, n_embd=64, initializer_range=0.02),
    dict(seed=3, n_layer=3, n_head=8, n_embd=64, initializer_range=0.02),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_auto_matches_exact_on_random_gpt2_shapes(tmp_path_factory: pytest.TempPathFactory,
                                                  shape: dict[str, Any]) -> None:
    model, task = random_gpt2(tmp_path_factory, **shape)
    for ablation in ("mean", "resample"):
        exact = sweep(model, task, ablation=ablation, method="exact")
        auto = sweep(model, task, ablation=ablation, method="auto", thresholds=THRESHOLDS)
        assert_same_verdicts(exact, auto)
        assert_confirmed_values_are_exact(exact, auto)
        assert_bands_hold(exact, auto)


@pytest.fixture(scope="module")
def smooth_wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Task]:
    """A random GPT-2 whose single ablations are small and nearly linear (GPT-2's own
    initialisation, 8 heads a layer): the regime in which auto keeps most estimates."""
    return random_gpt2(tmp_path_factory, seed=4, n_layer=3, n_head=8, n_embd=64,
                       initializer_range=0.02)


def test_where_the_screen_is_good_auto_keeps_bounded_estimates(
    smooth_wide: tuple[Any, Task]
) -> None:
    model, task = smooth_wide
    exact = sweep(model, task, method="exact")
    auto = sweep(model, task, method="auto", thresholds=GateThresholds(drop=(20.0,), top_k=5))
    assert auto.estimated_names, "nothing was left to the screen: this test checks nothing"
    assert_confirmed_values_are_exact(exact, auto)
    assert [x.name for x in auto.worst(5)] == [x.name for x in exact.worst(5)]
    assert auto.brittleness().severity == exact.brittleness().severity
    assert_bands_hold(exact, auto, share=0.5)  # the empirical bound held, half of it to spare
    # every MLP is measured, whatever its screened value (MLP0 is where screens go wrong)
    assert all(e.method == "exact" for e in auto.effects if e.kind == "mlp")


# --------------------------------------------------------------------------- the real model

#: IOI over names SmolLM2's tokenizer keeps as one token after a space (as bench_sweep.py's).
REAL_IOI = (("Mary", "John", "Emma"), ("Tom", "Anna", "Paul"), ("James", "Sarah", "Lisa"),
            ("Paul", "Mark", "Kate"), ("Alice", "Bob", "Ryan"), ("David", "Laura", "Amy"),
            ("Peter", "Kate", "Jack"), ("Michael", "Emma", "Tom"))
#: The layers of SmolLM2 where one error scale per layer left heads outside their bands (L5H6,
#: L8H1, L11H8, L16H0 on 32 prompts; benchmarks/README.md), with their MLPs.
REAL_LAYERS = (5, 8, 11, 16, 17)


@pytest.mark.slow
@pytest.mark.real
def test_every_band_holds_on_the_real_model() -> None:
    # one exact sweep of 50 components on 8 prompts: about a minute of CPU with the load. One
    # error scale per layer (the rule before the prompt mass) fails here: L5H6 screened -0.37,
    # exact 1.54 points, band 1.23
    model = load_model(smollm2_gguf(), device="cpu")
    places = ("store", "park", "school", "beach")
    prompts, corrupted = [], []
    for i, (a, b, c) in enumerate(REAL_IOI):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        place = places[i % len(places)]
        prompts.append(f"When {first} and {second} went to the {place}, {b} gave a drink to")
        corrupted.append(f"When {first} and {second} went to the {place}, {c} gave a drink to")
    task = Task(name="smollm2-ioi-8", prompts=tuple(prompts),
                correct=tuple(" " + a for a, _, _ in REAL_IOI),
                distractors=tuple(" " + b for _, b, _ in REAL_IOI), corrupted=tuple(corrupted))
    chosen = [f"L{layer}H{head}" for layer in REAL_LAYERS for head in range(model.n_heads)]
    chosen += [f"MLP{layer}" for layer in REAL_LAYERS]
    exact = sweep(model, task, components=chosen, method="exact")
    auto = sweep(model, task, components=chosen, method="auto")
    assert auto.estimated_names, "nothing was left to the screen: this test checks nothing"
    assert_confirmed_values_are_exact(exact, auto)
    assert_bands_hold(exact, auto)
    assert [x.name for x in auto.worst(5)] == [x.name for x in exact.worst(5)]
    assert auto.brittleness().severity == exact.brittleness().severity


# --------------------------------------------------------------------------- the confirmation rule


def state_for(screened: dict[str, float], exact: dict[str, float], errors: dict[int, float],
              thresholds: GateThresholds, scales: dict[str, float] | None = None,
              model_share: float = 0.0) -> _AutoState:
    """An auto sweep's state (clean metric 10: a drop of d points is an ablated metric of
    10 - d/10); heads' scales 1 unless given."""
    components = [Component.parse(name) for name in screened]
    return _AutoState(
        clean=10.0,
        components=components,
        screened_drop={Component.parse(n): d for n, d in screened.items()},
        thresholds=thresholds,
        safety=SCREEN_SAFETY,
        floor=SCREEN_FLOOR,
        scale={Component.parse(n): v for n, v in (scales or {}).items()},
        model_share=model_share,
        exact={Component.parse(n): 10.0 - d / 10.0 for n, d in exact.items()},
        layer_errors=dict(errors),
    )


def rule(screened: dict[str, float], exact: dict[str, float], errors: dict[int, float],
         thresholds: GateThresholds, **kwargs: Any) -> list[str]:
    """The components the rule would measure next."""
    return [c.name for c in state_for(screened, exact, errors, thresholds, **kwargs).candidates()]


def error_for_band(band: float) -> float:
    """The observed error scale that gives a layer this band (safety * error + floor)."""
    return (band - SCREEN_FLOOR) / SCREEN_SAFETY


def test_an_estimate_whose_band_reaches_a_threshold_is_measured() -> None:
    # layer 1's band: 6.25 points around each estimate
    screened = {"L1H0": 14.0, "L1H1": 13.0, "L1H2": -14.0, "L1H3": 1.0, "MLP1": 60.0}
    errors = {1: error_for_band(6.25)}
    picked = rule(screened, {"MLP1": 60.0}, errors, GateThresholds(drop=(20.0,), top_k=1))
    # 14 + 6.25 reaches 20; 13 + 6.25 does not; -14 - 6.25 reaches -20 (an influence of 20)
    assert picked == ["L1H0", "L1H2"]


def test_an_estimate_that_could_enter_the_top_k_is_measured() -> None:
    screened = {"L0H0": 9.0, "L0H1": 3.0, "L0H2": 1.0, "MLP0": 12.0}
    exact = {"MLP0": 12.0, "L0H0": 9.5}
    # second largest exact drop 9.5; with no error seen the band is the floor: nothing reaches it
    assert rule(screened, exact, {0: 0.0}, GateThresholds(drop=(), top_k=2)) == []
    # band 7.25: 3 + 7.25 reaches 9.5, 1 + 7.25 does not
    errors = {0: error_for_band(7.25)}
    assert rule(screened, exact, errors, GateThresholds(drop=(), top_k=2)) == ["L0H1"]


def test_a_head_the_screen_sees_more_change_in_gets_a_wider_band() -> None:
    # SmolLM2's L11H8 (screened -3.2, exact -0.6 points) sat in a layer whose other heads were
    # screened well: one error scale per layer left it outside its band. Scaled by each head's
    # prompt mass, a head with a large first-order change per prompt gets a wider band.
    screened = {"L1H0": 3.0, "L1H1": 3.0, "MLP1": 60.0}
    errors = {1: error_for_band(6.25)}  # a band of 6.25 for a head of scale 1
    scales = {"L1H0": 1.0, "L1H1": 3.0}
    state = state_for(screened, {"MLP1": 60.0}, errors, GateThresholds(drop=(20.0,), top_k=1),
                      scales=scales)
    assert state.band(Component.parse("L1H0")) == pytest.approx(6.25)
    assert state.band(Component.parse("L1H1")) == pytest.approx(3 * 6.0 + SCREEN_FLOOR)
    assert [c.name for c in state.candidates()] == ["L1H1"]  # 3 + 18.25 reaches 20


def test_a_layer_is_trusted_at_most_a_share_of_the_worst_layer() -> None:
    # a layer whose measured heads happened to be screened well still gets a share of the
    # model's worst error rate (SmolLM2's L5H6 and L16H0 sat in such layers)
    screened = {"L0H0": 1.0, "L1H0": 1.0, "MLP0": 60.0, "MLP1": 50.0}
    exact = {"MLP0": 60.0, "MLP1": 50.0}
    errors = {0: 4.0, 1: 0.0}
    state = state_for(screened, exact, errors, GateThresholds(drop=(20.0,), top_k=2),
                      model_share=0.5)
    assert state.error_rate(1) == 2.0 and state.error_rate(0) == 4.0
    assert state.band(Component.parse("L1H0")) == SCREEN_SAFETY * 2.0 + SCREEN_FLOOR
    alone = state_for(screened, exact, errors, GateThresholds(drop=(20.0,), top_k=2))
    assert alone.band(Component.parse("L1H0")) == SCREEN_FLOOR


def test_the_mean_drop_is_confirmed_until_its_bound_clears_the_limit() -> None:
    screened = {f"L0H{i}": 1.0 for i in range(8)} | {"MLP0": 1.0}
    exact = {"MLP0": 1.0}
    error = error_for_band(1.0)
    # mean drop 1.0 over 9 components, 8 of them estimates: the bound is 8/9 points
    far = rule(screened, exact, {0: error}, GateThresholds(drop=(), mean_drop=(5.0,), top_k=0))
    assert far == []
    near = rule(screened, exact, {0: error}, GateThresholds(drop=(), mean_drop=(1.5,), top_k=0))
    # the bound must fall below the 0.5-point gap (4/9 < 0.5): 4 of the 8 estimates are measured
    assert len(near) == 4


# --------------------------------------------------------------------------- the record


screenings = st.builds(
    Screening,
    thresholds=st.builds(
        GateThresholds,
        drop=st.lists(st.floats(-100, 100), max_size=3).map(tuple),
        mean_drop=st.lists(st.floats(0, 100), max_size=2).map(tuple),
        top_k=st.integers(0, 10),
    ),
    safety=st.floats(0, 10),
    floor=st.floats(0, 10),
    layer_errors=st.lists(
        st.tuples(st.integers(0, 47), st.floats(allow_nan=True, allow_infinity=True)),
        max_size=4,
    ).map(tuple),
    rounds=st.integers(0, 20),
)


@settings(max_examples=40, deadline=None)
@given(screenings)
def test_the_screening_record_round_trips_through_json(screening: Screening) -> None:
    again = Screening.from_dict(json.loads(json.dumps(screening.to_dict())))
    assert again.thresholds == screening.thresholds
    assert (again.safety, again.floor, again.rounds) == (
        screening.safety, screening.floor, screening.rounds
    )
    for (layer, error), (layer2, error2) in zip(
        screening.layer_errors, again.layer_errors, strict=True
    ):
        assert layer == layer2 and (error == error2 or (math.isnan(error) and math.isnan(error2)))


def test_an_auto_sweep_round_trips_with_its_estimates_and_bounds(
    smooth_wide: tuple[Any, Task]
) -> None:
    model, task = smooth_wide
    auto = sweep(model, task, method="auto")
    again = SweepResult.from_dict(json.loads(json.dumps(auto.to_dict())))
    assert again.to_dict() == auto.to_dict()
    assert again.estimated_names == auto.estimated_names != []
    assert again.mean_drop_bound == auto.mean_drop_bound > 0
    assert again.screening == auto.screening


def test_thresholds_that_are_not_numbers_are_refused() -> None:
    with pytest.raises(SweepConfigError, match="finite numbers") as caught:
        GateThresholds(drop=(float("nan"),))
    assert isinstance(caught.value, CircuitsError)
    with pytest.raises(SweepConfigError, match="top_k"):
        GateThresholds(top_k=-1)


def test_an_unknown_method_is_refused_naming_the_choices(gpt2: CircuitModel,
                                                         gpt2_task: Task) -> None:
    with pytest.raises(SweepConfigError, match="'exact', 'attribution', 'auto'"):
        sweep(gpt2, gpt2_task, method="fast")


# --------------------------------------------------------------------------- out of memory


def failing_stacks(monkeypatch: pytest.MonkeyPatch, error: Exception, *,
                   times: int | None = None) -> list[int]:
    """Make the engine's replay raise ``error`` for stacked replays (all, or the first
    ``times``); returns the stack sizes it was called with."""
    real = engine.replay_logit_differences
    calls: list[int] = []

    def replay(*args: Any, reps: int = 1, **kwargs: Any) -> torch.Tensor:
        calls.append(reps)
        failures = sum(1 for r in calls[:-1] if r > 1)
        if reps > 1 and (times is None or failures < times):
            raise error
        return real(*args, reps=reps, **kwargs)

    monkeypatch.setattr(engine, "replay_logit_differences", replay)
    return calls


def test_stacks_that_run_out_of_memory_are_halved_down_to_the_unstacked_sweep(
    gpt2: CircuitModel, gpt2_task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    unstacked = sweep(gpt2, gpt2_task, method="exact", ablations_per_forward=1)
    calls = failing_stacks(monkeypatch, torch.cuda.OutOfMemoryError("CUDA out of memory"))
    with pytest.warns(OutOfMemoryRetryWarning, match="retrying with 2 per replay"):
        retried = sweep(gpt2, gpt2_task, method="exact", ablations_per_forward=4)
    assert calls[:3] == [4, 2, 1]
    assert retried.to_dict() == unstacked.to_dict()


def test_a_stack_that_fails_once_continues_at_half_size(
    gpt2: CircuitModel, gpt2_task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    unstacked = sweep(gpt2, gpt2_task, method="exact", ablations_per_forward=1)
    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    calls = failing_stacks(monkeypatch, oom, times=1)
    with pytest.warns(OutOfMemoryRetryWarning):
        retried = sweep(gpt2, gpt2_task, method="exact", ablations_per_forward=4)
    assert calls[0] == 4 and max(calls[1:]) == 2  # the smaller stack is kept afterwards
    for a, b in zip(retried.effects, unstacked.effects, strict=True):
        assert a.name == b.name
        assert math.isclose(a.ablated_metric, b.ablated_metric, rel_tol=1e-6, abs_tol=1e-9)


def test_other_errors_and_out_of_memory_without_a_stack_are_not_swallowed(
    gpt2: CircuitModel, gpt2_task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_stacks(monkeypatch, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        sweep(gpt2, gpt2_task, method="exact", ablations_per_forward=4)

    def always(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(engine, "replay_logit_differences", always)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        sweep(gpt2, gpt2_task, method="exact", ablations_per_forward=1)

