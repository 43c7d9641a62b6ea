"""Auto's sampled calibration (deep models): each layer's heads jointly and every MLP alone on a
few prompts set the error rates; an MLP may then stay a bounded estimate, and a layer's joint
error on the sample, scaled up to the task, widens each of its heads' bands (where that would
send several heads to a full replay, each head is ablated alone on the sample and gets its own
rate instead). The verdicts, the blamed components and the bands stay the exact sweep's, as on
shallow models."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import (
    ANSWER_NAMES,
    _name_ids,
    ioi_prompt,
    load_plain_hf,
    preferred_task,
    save_tiny_gpt2,
)
from test_sweep_auto import (
    THRESHOLDS,
    assert_bands_hold,
    assert_confirmed_values_are_exact,
    assert_same_verdicts,
)

from pytest_circuits.analysis.ablation import (
    SAMPLE_MIN_LAYERS,
    SAMPLE_PROMPTS,
    SCREEN_FLOOR,
    SCREEN_SAFETY,
    GateThresholds,
    Screening,
    _AutoState,
    _confirm,
    sweep,
)
from pytest_circuits.components import Component
from pytest_circuits.models import load_model
from pytest_circuits.tasks import Task


def preferred_task_of(hf_model: Any, tokenizer: Any, n: int) -> Task:
    """``helpers.preferred_task`` over ``n`` prompts (it has 6: too few to hold out a sample)."""
    import torch

    pairs = [(ANSWER_NAMES[i % 12], ANSWER_NAMES[(i + 3 + i // 12) % 12]) for i in range(n)]
    prompts = [ioi_prompt(a, b, b if i % 2 == 0 else a) for i, (a, b) in enumerate(pairs)]
    ids = torch.tensor([tokenizer(p)["input_ids"] for p in prompts])
    with torch.no_grad():
        scores = hf_model(ids).logits[:, -1][:, torch.tensor(_name_ids(tokenizer))]
    task = preferred_task(hf_model, tokenizer, name="auto")
    return Task(name="auto-deep", prompts=tuple(prompts),
                correct=tuple(" " + ANSWER_NAMES[int(i)] for i in scores.argmax(-1)),
                distractors=tuple(" " + ANSWER_NAMES[int(i)] for i in scores.argmin(-1)),
                corrupted=task.corrupted)


@pytest.fixture(scope="module")
def deep_gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    directory = save_tiny_gpt2(tmp_path_factory.mktemp("deep-gpt2"), seed=5,
                               n_layer=SAMPLE_MIN_LAYERS, n_head=4, n_embd=32,
                               initializer_range=0.02)
    model = load_model(directory, device="cpu")
    return model, preferred_task_of(load_plain_hf(directory), model.tokenizer, 16)


@pytest.mark.parametrize("ablation", ["mean", "resample"])
def test_a_deep_model_is_calibrated_on_a_sample_and_keeps_the_exact_verdicts(
        deep_gpt2: tuple[Any, Any], ablation: str) -> None:
    model, task = deep_gpt2
    assert len(task.prompts) >= 2 * SAMPLE_PROMPTS
    exact = sweep(model, task, ablation=ablation, method="exact")
    kept_mlps = 0
    for thresholds in (THRESHOLDS, GateThresholds()):
        auto = sweep(model, task, ablation=ablation, method="auto", thresholds=thresholds)
        assert auto.screening is not None and auto.screening.sampled_prompts == SAMPLE_PROMPTS
        # every MLP and every layer has a sampled rate, every layer a floor
        assert [layer for layer, _ in auto.screening.mlp_errors] == list(range(model.n_layers))
        assert [layer for layer, _ in auto.screening.layer_floors] == list(
            range(model.n_layers))
        assert_confirmed_values_are_exact(exact, auto)
        assert_bands_hold(exact, auto)
        kept_mlps += sum(1 for e in auto.effects if e.kind == "mlp" and not e.is_exact)
        if thresholds == THRESHOLDS:
            assert_same_verdicts(exact, auto)
        else:
            assert [x.name for x in auto.worst(5)] == [x.name for x in exact.worst(5)]
            assert auto.brittleness().severity == exact.brittleness().severity
    assert kept_mlps, "every MLP was measured: the MLP bands were not checked"


def test_a_shallow_model_measures_every_mlp_and_is_not_sampled(tmp_path: Any) -> None:
    directory = save_tiny_gpt2(tmp_path, seed=4, n_layer=SAMPLE_MIN_LAYERS - 1, n_head=4,
                               n_embd=32, initializer_range=0.02)
    model = load_model(directory, device="cpu")
    task = preferred_task(load_plain_hf(directory), model.tokenizer, name="auto")
    auto = sweep(model, task, method="auto", thresholds=GateThresholds(drop=(20.0,)))
    assert auto.screening is not None and auto.screening.sampled_prompts == 0
    assert auto.screening.mlp_errors == () and auto.screening.layer_floors == ()
    assert all(e.method == "exact" for e in auto.effects if e.kind == "mlp")


def sampled_state(screened: dict[str, float], thresholds: GateThresholds,
                  **kwargs: Any) -> _AutoState:
    return _AutoState(
        clean=10.0,
        components=[Component.parse(name) for name in screened],
        screened_drop={Component.parse(n): d for n, d in screened.items()},
        thresholds=thresholds, safety=SCREEN_SAFETY, floor=SCREEN_FLOOR, screen_mlps=True,
        **kwargs,
    )


def test_a_layers_sampled_joint_error_widens_each_of_its_heads_bands() -> None:
    screened = {"L0H0": 1.0, "L0H1": 1.0, "L1H0": 1.0, "MLP0": 1.0, "MLP1": 1.0}
    state = sampled_state(screened, GateThresholds(drop=(20.0,), top_k=0),
                          layer_errors={0: 0.0, 1: 0.0}, mlp_errors={0: 0.0, 1: 0.0},
                          layer_floors={0: 19.0})
    assert state.band(Component.parse("L0H0")) == pytest.approx(SCREEN_FLOOR + 19.0)
    assert state.band(Component.parse("L1H0")) == pytest.approx(SCREEN_FLOOR)
    # 1 + 19.25 reaches 20 in layer 0 only; the MLPs, screened well on the sample, stay
    # estimates: nothing is measured just because it is an MLP
    assert [c.name for c in state.candidates()] == ["L0H0", "L0H1"]


def test_an_mlp_estimate_is_bounded_by_its_own_sampled_rate() -> None:
    screened = {"L0H0": 1.0, "MLP0": 5.0, "MLP1": 5.0}
    state = sampled_state(screened, GateThresholds(drop=(20.0,), top_k=0),
                          scale={Component.parse("MLP0"): 2.0, Component.parse("MLP1"): 2.0},
                          mlp_errors={0: 2.0, 1: 0.5}, model_share=0.1)
    # MLP0: 4 * 2.0 * 2 + 0.25 = 16.25, reaching 20; MLP1: 4 * 0.5 * 2 + 0.25 = 4.25
    assert state.band(Component.parse("MLP0")) == pytest.approx(16.25)
    assert state.band(Component.parse("MLP1")) == pytest.approx(4.25)
    assert [c.name for c in state.candidates()] == ["MLP0"]
    # an MLP without a sampled rate has no bound: it is measured
    unknown = sampled_state({"MLP2": 0.0}, GateThresholds(drop=(20.0,), top_k=0))
    assert [c.name for c in unknown.candidates()] == ["MLP2"]


def test_the_sampled_record_round_trips_and_gives_each_estimate_its_band() -> None:
    screening = Screening(
        thresholds=GateThresholds(), safety=4.0, floor=0.25, layer_errors=((0, 0.5), (1, 0.1)),
        rounds=2, model_share=0.1, scales=(("L0H0", 2.0), ("L1H0", 1.0), ("MLP1", 3.0)),
        mlp_errors=((0, 2.0), (1, 0.25)), sampled_prompts=4, layer_floors=((0, 1.5),),
    )
    again = Screening.from_dict(json.loads(json.dumps(screening.to_dict())))
    assert again == screening
    assert again.head_band("L0H0") == pytest.approx(4.0 * 0.5 * 2.0 + 0.25 + 1.5)
    assert again.head_band("L1H0") == pytest.approx(4.0 * 0.1 * 1.0 + 0.25)
    # MLP1's own rate 0.25 against a tenth of MLP0's 2.0
    assert again.head_band("MLP1") == pytest.approx(4.0 * 0.25 * 3.0 + 0.25)
    # a record from before the sampled calibration reads as unsampled
    old = screening.to_dict()
    for key in ("mlp_errors", "sampled_prompts", "layer_floors"):
        del old[key]
    assert Screening.from_dict(old).sampled_prompts == 0


def test_a_head_ablated_alone_on_the_sample_gets_its_own_band_without_the_layer_floor() -> None:
    screened = {"L0H0": 1.0, "L0H1": 1.0, "L1H0": 1.0}
    state = sampled_state(screened, GateThresholds(drop=(20.0,), top_k=0),
                          scale={Component.parse("L0H1"): 2.0},
                          layer_errors={0: 0.5, 1: 0.0}, layer_floors={0: 19.0, 1: 19.0},
                          model_share=0.1,
                          head_rates={Component.parse("L0H0"): 0.0,
                                      Component.parse("L0H1"): 3.0})
    # L0H0: its own rate 0 is raised to a tenth of the model's worst (0.5), no floor of 19
    assert state.band(Component.parse("L0H0")) == pytest.approx(4.0 * 0.05 * 1.0 + SCREEN_FLOOR)
    # L0H1 carries the layer's error: 4 * 3 * 2 + 0.25 = 24.25 reaches 20
    assert state.band(Component.parse("L0H1")) == pytest.approx(24.25)
    # L1H0 was not ablated alone: its layer's rate and floor
    assert state.band(Component.parse("L1H0")) == pytest.approx(4.0 * 0.05 + SCREEN_FLOOR + 19.0)
    assert [c.name for c in state.candidates()] == ["L0H1", "L1H0"]


def test_the_head_rates_round_trip_and_set_those_heads_bands() -> None:
    screening = Screening(
        thresholds=GateThresholds(), safety=4.0, floor=0.25, layer_errors=((0, 0.5), (1, 0.1)),
        rounds=2, model_share=0.1, scales=(("L0H0", 2.0), ("L0H1", 1.0)),
        mlp_errors=((0, 2.0),), sampled_prompts=4, layer_floors=((0, 1.5),),
        head_rates=(("L0H0", 0.01), ("L0H1", 1.5)),
    )
    again = Screening.from_dict(json.loads(json.dumps(screening.to_dict())))
    assert again == screening
    # L0H0: a tenth of the model's worst rate (0.5), not the layer's 0.5, and no floor
    assert again.head_band("L0H0") == pytest.approx(4.0 * 0.05 * 2.0 + 0.25)
    assert again.head_band("L0H1") == pytest.approx(4.0 * 1.5 * 1.0 + 0.25)
    old = screening.to_dict()
    del old["head_rates"]
    assert Screening.from_dict(old).head_rates == ()
    assert Screening.from_dict(old).head_band("L0H0") == pytest.approx(4.0 * 0.5 * 2.0 + 1.75)


def test_bands_alone_decide_when_round_zero_has_nothing_to_measure() -> None:
    # no top-k and every MLP an estimate: round 0 is empty, yet MLP0's band (4 * 1 + 0.25
    # around 17) reaches 20
    # (two heads: a layer's only head would be measured in round 0)
    screened = {"L0H0": 1.0, "L0H1": 1.0, "MLP0": 17.0, "MLP1": 1.0}
    state = sampled_state(screened, GateThresholds(drop=(20.0,), top_k=0),
                          layer_errors={0: 0.0}, mlp_errors={0: 1.0, 1: 0.0})
    measured: list[str] = []

    def measure(pending: list[Component]) -> dict[Component, float]:
        measured.extend(c.name for c in pending)
        return {c: 8.0 for c in pending}

    assert _confirm(state, {}, measure) == 1
    assert measured == ["MLP0"]


@pytest.mark.parametrize("ablation", ["mean", "resample"])
def test_layers_whose_joint_error_blocks_many_heads_ablate_each_head_on_the_sample(
        deep_gpt2: tuple[Any, Any], ablation: str) -> None:
    # a 0.5-point cut point puts the layer floors of this tiny model in the way of several heads
    # per layer: those layers' heads are ablated alone on the sample instead (no top-k, so that
    # some of them stay estimates)
    model, task = deep_gpt2
    thresholds = GateThresholds(drop=(0.5,), top_k=0)
    exact = sweep(model, task, ablation=ablation, method="exact")
    auto = sweep(model, task, ablation=ablation, method="auto", thresholds=thresholds)
    assert auto.screening is not None
    own = dict(auto.screening.head_rates)
    assert own, "no layer was calibrated head by head"
    assert {name[: name.index("H")] for name in own} != {f"L{i}" for i in range(model.n_layers)}
    assert_confirmed_values_are_exact(exact, auto)
    assert_bands_hold(exact, auto)
    kept = [e for e in auto.effects if e.name in own and not e.is_exact]
    assert kept, "every head with its own rate was measured: their bands were not checked"
    screening = auto.screening
    worst = max(rate for _, rate in screening.layer_errors)
    scales = dict(screening.scales)
    for effect in kept:  # its own rate, and no layer floor
        rate = max(own[effect.name], screening.model_share * worst)
        assert effect.bound == pytest.approx(
            screening.safety * rate * scales[effect.name] + screening.floor)
    e, a = exact.brittleness(tolerance=0.5), auto.brittleness(tolerance=0.5)
    assert (a.severity, a.count_above_tolerance) == (e.severity, e.count_above_tolerance)
    for x, y in zip(exact.effects, auto.effects, strict=True):
        assert (x.drop >= 0.5, x.influence >= 0.5) == (y.drop >= 0.5, y.influence >= 0.5), x.name
