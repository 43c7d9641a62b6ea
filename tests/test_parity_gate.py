"""The bridge_parity gate, and the parity preflight every gate runs: a model whose bridge does not
compute the plain Hugging Face model's logits fails every gate, naming the largest difference; a
healthy model passes, and is checked once however many gates touch it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pytest_circuits import kinds
from pytest_circuits.errors import CircuitAssertionError
from pytest_circuits.models import CircuitModel, load_model, load_pair
from pytest_circuits.recording import GateResult, recording

#: Loading the zoo (torch, TransformerLens) takes longer than the fast tier allows.
pytestmark = pytest.mark.slow

#: The sabotaged bridge adds this much to the logit of vocabulary entry FAULT_TOKEN (<pad>,
#: which no task uses as an answer, so every gate's own numbers stay what they were).
FAULT = 0.5
FAULT_TOKEN = 0


@pytest.fixture(scope="module")
def teacher() -> CircuitModel:
    return load_model("zoo:tiny-teacher", device="cpu")


@pytest.fixture(scope="module")
def student() -> CircuitModel:
    return load_model("zoo:tiny-student", device="cpu")


@pytest.fixture(scope="module")
def sabotaged() -> Iterator[CircuitModel]:
    """The zoo student with a fault on the bridge side only: a hook on the bridged unembedding
    (the engine reads its logits through it; the plain comparison model has its own modules)."""
    import torch

    model = load_model("zoo:tiny-student", device="cpu", name="sabotaged")

    def fault(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., FAULT_TOKEN] += FAULT
        return output

    handle = model.hf_model.lm_head.register_forward_hook(fault)
    yield model
    handle.remove()


def test_a_healthy_model_passes_the_parity_gate(teacher: CircuitModel) -> None:
    seen: list[GateResult] = []
    with recording(seen.append):
        parity = kinds.assert_bridge_parity(teacher, "numerals", n_prompts=8)
    assert parity.passed and parity.n_prompts == 8 and parity.rtol == 1e-4  # float32 default
    (result,) = seen
    assert (result.gate, result.subject, result.task) == ("bridge_parity", "zoo:tiny-teacher",
                                                          "numerals")
    assert result.passed and list(result.models) == ["model"]
    assert result.values == {"bridge_rel_diff": parity.max_rel_diff,
                             "bridge_abs_diff": parity.max_abs_diff}
    (check,) = result.checks
    assert (check.metric, check.value, check.threshold) == ("bridge_rel_diff",
                                                            parity.max_rel_diff, 1e-4)
    assert result.fingerprint["analysis"] == "parity" and result.fingerprint["n_prompts"] == 8


def test_the_parity_gate_fails_a_sabotaged_bridge_naming_the_largest_difference(
    sabotaged: CircuitModel,
) -> None:
    seen: list[GateResult] = []
    with recording(seen.append), pytest.raises(CircuitAssertionError) as caught:
        kinds.assert_bridge_parity(sabotaged, "numerals", n_prompts=8)
    message = str(caught.value)
    assert "bridge parity of sabotaged on task 'numerals'" in message
    assert "does NOT match" in message and f"(id {FAULT_TOKEN})" in message
    (result,) = seen
    assert not result.passed
    assert result.values["bridge_abs_diff"] == pytest.approx(FAULT, abs=1e-5)
    assert result.checks[0].value > 1e-4 == result.checks[0].threshold
    # a tolerance looser than the fault accepts it: the verdict is the caller's rtol
    with recording(seen.append):
        assert kinds.assert_bridge_parity(sabotaged, "numerals", n_prompts=8, rtol=1.0).passed
    assert seen[-1].passed and seen[-1].checks[0].threshold == 1.0


def _gates(pair: Any, model: CircuitModel) -> list[Any]:
    """Every gate kind on ``pair`` (and the robustness gate on ``model`` alone), with thresholds
    so loose that only the preflight can fail them."""
    return [
        lambda: kinds.assert_circuit_aligned(pair, "numerals", min_score=0.0, n_prompts=8),
        lambda: kinds.assert_behavior_preserved(pair, "numerals", min_retained=0, n_prompts=8),
        lambda: kinds.assert_mechanism_preserved(pair, "numerals", components=["L0H0"],
                                                 min_similarity=-1.0, min_influence=None,
                                                 n_prompts=8),
        lambda: kinds.assert_ablation_robust(pair, "numerals", max_single_drop=100, n_prompts=8),
        lambda: kinds.assert_ablation_robust(model, "numerals", max_single_drop=100,
                                             n_prompts=8),
        lambda: kinds.assert_shift_robust(pair, "numerals", shift="longer", max_gap=1000,
                                          n_prompts=8, max_examples=1),
    ]


GATE_NAMES = ["circuit_aligned", "behavior_preserved", "mechanism_preserved", "ablation_robust",
              "ablation_robust", "shift_robust"]


def test_every_gate_fails_on_a_model_whose_bridge_is_off(
    teacher: CircuitModel, sabotaged: CircuitModel
) -> None:
    seen: list[GateResult] = []
    for role, pair in (("student", load_pair(teacher, sabotaged)),
                       ("teacher", load_pair(sabotaged, teacher))):
        for index, gate in enumerate(_gates(pair, sabotaged)):
            with recording(seen.append), pytest.raises(CircuitAssertionError) as caught:
                gate()
            message = str(caught.value)
            who = "model" if index == 4 else role  # the robustness gate on the model alone
            assert f"bridge parity of the {who} sabotaged on task 'numerals'" in message
            assert "does NOT match" in message and f"(id {FAULT_TOKEN})" in message
    assert [r.gate for r in seen] == GATE_NAMES * 2
    for result in seen:
        assert not result.passed and [c.metric for c in result.checks] == ["bridge_rel_diff"]
        assert result.values["bridge_abs_diff"] == pytest.approx(FAULT, abs=1e-5)
    assert seen[0].subject == "zoo:tiny-teacher -> sabotaged"  # the gate's own baseline key
    assert seen[4].subject == "sabotaged" and list(seen[4].models) == ["model"]


def test_healthy_models_pass_every_gate_and_are_checked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_circuits import parity

    checked: list[tuple[str, str]] = []
    real = parity.bridge_parity

    def counting(model: CircuitModel, task: Any, **kwargs: Any) -> Any:
        checked.append((model.name, task.name))
        return real(model, task, **kwargs)

    monkeypatch.setattr(parity, "bridge_parity", counting)
    # loaded here, so no earlier test has checked them (the verdict lives on the model)
    teacher = load_model("zoo:tiny-teacher", device="cpu", name="fresh-teacher")
    student = load_model("zoo:tiny-student", device="cpu", name="fresh-student")
    seen: list[GateResult] = []
    with recording(seen.append):
        for gate in _gates(load_pair(teacher, student), student):
            gate()
    assert [r.gate for r in seen] == GATE_NAMES and all(r.passed for r in seen)
    assert checked == [("fresh-teacher", "numerals"), ("fresh-student", "numerals")]
