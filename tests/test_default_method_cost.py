"""The default sweep method is chosen by predicted cost (``store.sweep_costs``), not by a
component count: auto where its screen, calibration and confirmations cost fewer forward-pass
equivalents than the exact sweep's replays (SmolLM2-135M), exact where they do not (the zoo);
``AUTO_MIN_COMPONENTS`` stays the size from which auto is used whatever the prediction."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pytest_circuits.analysis.store import default_method, sweep_costs
from pytest_circuits.config import options
from pytest_circuits.models import load_model


def shape(n_layers: int, n_heads: int) -> SimpleNamespace:
    return SimpleNamespace(n_layers=n_layers, n_heads=n_heads)


def test_the_exact_cost_is_a_replay_of_the_blocks_above_each_component() -> None:
    exact, auto = sweep_costs(4, 4)
    # 5 components a layer, replays of 4/4, 3/4, 2/4 and 1/4 of the blocks
    assert exact == pytest.approx(5 * (1 + 0.75 + 0.5 + 0.25))
    # shallow: the screen, every MLP and each layer's joint replay on every prompt, and at
    # least 10 values at the mean replay (2.5 / 4)
    assert auto == pytest.approx(3.0 + 2 * 2.5 + 10 * 2.5 / 4)


def test_a_deep_model_calibrates_on_a_sample_of_the_prompts() -> None:
    exact, auto = sweep_costs(30, 9, n_prompts=32)
    per_layer = sum((30 - layer) / 30 for layer in range(30))  # 15.5
    assert exact == pytest.approx(10 * per_layer)
    # and 15% of the 300 components confirmed (SmolLM2-135M: 25 of 300 measured today)
    assert auto == pytest.approx(3.0 + 2 * per_layer * 4 / 32 + 45 * per_layer / 30)
    # too few prompts to hold a sample out: calibrated on all of them, as a shallow model is
    _, unsampled = sweep_costs(30, 9, n_prompts=6)
    assert unsampled == pytest.approx(3.0 + 2 * per_layer + 45 * per_layer / 30)


def test_smollm2_defaults_to_auto_and_the_zoo_to_exact() -> None:
    assert options.AUTO_MIN_COMPONENTS == 1000
    assert default_method(shape(30, 9)) == "auto"  # SmolLM2-135M: 300 components
    assert default_method(shape(12, 12)) == "auto"  # the GPT-2-small shape: 156
    for name in ("tiny-teacher", "tiny-student", "tiny-student-brittle"):
        model = load_model(f"zoo:{name}")
        exact, auto = sweep_costs(model.n_layers, model.n_heads)
        assert auto > exact, name
        assert default_method(model) == "exact", name


def test_from_auto_min_components_on_auto_is_used_whatever_the_prediction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    small = shape(2, 4)  # 10 components, exact predicted cheaper
    assert default_method(small) == "exact"
    monkeypatch.setattr(options, "AUTO_MIN_COMPONENTS", 10)
    assert default_method(small) == "auto"
    assert "10 components" in options.default_method_rule()


def test_the_cost_constants_move_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    # read at call time: a screen assumed 200 FE dearer makes exact SmolLM2's default again
    monkeypatch.setattr(options, "AUTO_SCREEN_FE", 200.0)
    assert default_method(shape(30, 9)) == "exact"
