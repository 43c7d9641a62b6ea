"""Pruned components (weights zeroed) are told apart from idle ones: the sweep records them,
from the weights, and a results file from before the record still loads."""

from __future__ import annotations

import pytest
import torch

from pytest_circuits.analysis import engine
from pytest_circuits.analysis.ablation import sweep
from pytest_circuits.models import load_model
from pytest_circuits.results import SweepResult

pytestmark = pytest.mark.slow  # zoo models


def test_the_brittle_zoo_students_pruned_heads_are_found() -> None:
    # tiny-student-brittle keeps one head per layer (H3) and zeroes the others' weights
    model = load_model("zoo:tiny-student-brittle", device="cpu")
    found = [c.name for c in engine.pruned_components(model)]
    assert found == ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]


def test_a_zeroed_head_and_mlp_are_found_and_nothing_else() -> None:
    model = load_model("zoo:tiny-teacher", device="cpu")
    assert engine.pruned_components(model) == []
    d_head = model.d_head
    blocks = model.hf_model.transformer.h
    with torch.no_grad():
        # GPT-2's Conv1D keeps its weight as [in, out]: head 1's rows of z
        blocks[2].attn.c_proj.weight[d_head:2 * d_head, :] = 0.0
        blocks[3].mlp.c_proj.weight.zero_()  # the bias stays: a constant is no computation
        blocks[1].attn.c_proj.weight[0, :] = 0.0  # one row of head 0 only: not pruned
    assert [c.name for c in engine.pruned_components(model)] == ["L2H1", "MLP3"]
    result = sweep(model, "numerals", ablation="zero")
    assert result.pruned == ("L2H1", "MLP3")
    # a pruned head costs nothing, as an idle head does: only the record tells them apart
    assert abs(result.effect("L2H1").drop) < 1e-6
    assert SweepResult.from_dict(result.to_dict()).pruned == ("L2H1", "MLP3")


def test_a_sweep_recorded_before_the_field_loads_as_not_recorded() -> None:
    model = load_model("zoo:tiny-student", device="cpu")
    result = sweep(model, "numerals", components=["L0H0", "MLP1"])
    assert result.pruned == ()  # recorded: none pruned
    old = result.to_dict()
    del old["pruned"]
    assert SweepResult.from_dict(old).pruned is None  # not recorded, never "none pruned"
