"""Tests of the shift_robust gate: a student that breaks on shifted prompts the teacher handles."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pytest_circuits.errors import CircuitAssertionError, GateConfigError
from pytest_circuits.kinds import KINDS
from pytest_circuits.kinds.shift import ShiftMeasurement, assert_shift_robust, measure_shift
from pytest_circuits.models import CircuitModel, ModelPair, load_model, load_pair
from pytest_circuits.zoo import zoo_path

NUMERALS_LENGTH = 24  # tokens of a built-in numerals prompt on the zoo (<bos> + 23 words)


def _measurement(**changes: Any) -> ShiftMeasurement:
    values: dict[str, Any] = dict(
        task="numerals", shift="longer", teacher_logit_diff=10.0, student_logit_diff=8.0,
        teacher_shifted_logit_diff=9.0, student_shifted_logit_diff=2.0,
        teacher_shifted_accuracy=1.0, student_shifted_accuracy=0.25, broken=("p",),
    )
    values.update(changes)
    return ShiftMeasurement(**values)


def test_the_gap_compares_each_model_with_itself() -> None:
    measured = _measurement()
    assert measured.teacher_retained == pytest.approx(90.0)
    assert measured.student_retained == pytest.approx(25.0)  # 2 of its own 8, not of 10
    assert measured.gap == pytest.approx(65.0) and measured.accuracy_gap == pytest.approx(0.75)
    both_fail = _measurement(teacher_shifted_logit_diff=-1.0, student_shifted_logit_diff=-0.8)
    assert both_fail.gap == pytest.approx(0.0)  # a shift that defeats both blames neither


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"shift": "longer"}, "no threshold was set"),
        ({"shift": "longer", "max_gap": -1}, "max_gap=-1 is out of range"),
        ({"shift": "longer", "max_accuracy_gap": 2}, "max_accuracy_gap=2 is out of range"),
        ({"shift": "names", "max_gap": 10}, "shift='names' is not a shift of 'numerals'; use one "
                                            "of members, template, numbers"),
        ({"shift": "longer", "max_gap": 10, "max_examples": 0}, "max_examples=0 must be"),
    ],
)
def test_wrong_arguments_fail_before_any_model_loads(arguments: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(GateConfigError, match=message):
        assert_shift_robust(None, "numerals", **arguments)
    with pytest.raises(GateConfigError, match="'sums' is not a built-in task"):
        assert_shift_robust(None, "sums", shift="longer", max_gap=10)


def test_the_kind_is_registered_with_its_yaml_keys() -> None:
    kind = KINDS["shift_robust"]
    assert kind.function is assert_shift_robust and kind.required == ("shift",)
    assert kind.keys == ("shift", "max_gap", "max_accuracy_gap", "margin", "max_examples")


# ----------------------------------------------------------------------------- on the zoo


@pytest.fixture(scope="module")
def teacher() -> CircuitModel:
    return load_model("zoo:tiny-teacher", device="cpu")


@pytest.fixture(scope="module")
def good(teacher: CircuitModel) -> ModelPair:
    return load_pair(teacher, load_model("zoo:tiny-student", device="cpu"))


@pytest.fixture(scope="module")
def brittle(teacher: CircuitModel) -> ModelPair:
    return load_pair(teacher, load_model("zoo:tiny-student-brittle", device="cpu"))


@pytest.fixture(scope="module")
def short_context(teacher: CircuitModel) -> ModelPair:
    """The good student with its position embeddings past the built-in prompts' length put in
    reverse order: every built-in prompt computes exactly as before, any longer one does not
    (a student distilled on short contexts only). No test of the suite has seen it."""
    import torch
    from helpers import load_plain_hf

    # from the saved weights, not a copy of the loaded model's: the bridge renames the modules
    # of the model it wraps, and the parity preflight rebuilds a plain model from the names
    hf = load_plain_hf(zoo_path("tiny-student"))
    with torch.no_grad():
        table = hf.transformer.wpe.weight
        table[NUMERALS_LENGTH:] = table[NUMERALS_LENGTH:].flip(0).clone()
    edited = load_model(hf, tokenizer=str(zoo_path("tiny-student")), name="short-context",
                        device="cpu")
    return load_pair(teacher, edited)


@pytest.mark.slow
def test_the_teacher_against_itself_shows_no_gap(teacher: CircuitModel) -> None:
    measured = assert_shift_robust(load_pair(teacher, teacher), "numerals", shift="longer",
                                   max_gap=0.0, max_accuracy_gap=0.0, n_prompts=16)
    assert measured.gap == 0.0 and measured.accuracy_gap == 0.0 and measured.broken == ()


@pytest.mark.slow
def test_the_brittle_student_breaks_on_unseen_objects_where_the_teacher_holds(
    good: ModelPair, brittle: ModelPair
) -> None:
    passed = assert_shift_robust(good, "ioi", shift="objects", max_gap=30,
                                 max_accuracy_gap=0.2)
    assert passed.teacher_shifted_accuracy > 0.9 and passed.student_shifted_accuracy > 0.9
    with pytest.raises(CircuitAssertionError) as caught:
        assert_shift_robust(brittle, "ioi", shift="objects", max_gap=30, max_accuracy_gap=0.2,
                            max_examples=50)
    message = str(caught.value)
    assert "robustness of zoo:tiny-teacher -> zoo:tiny-student-brittle to shift 'objects'" in (
        message
    )
    assert re.search(r"shift_gap +[\d.]+ +<= 30 +[\d.]+ +FAIL", message), message
    broken = int(re.search(r"teacher right: (\d+) of 32", message).group(1))
    assert broken >= 8
    smallest = re.search(r"smallest such prompt \(Hypothesis, shrunk\): '(.*)' -> ' (\w+)' "
                         r"over ' (\w+)'", message)
    assert smallest is not None, message
    prompt, answer, distractor = smallest.groups()
    assert prompt.startswith("When ") and f"{distractor} gave a " in prompt and answer in prompt
    measured = measure_shift(brittle, "ioi", "objects", n_prompts=32)[0]
    assert measured.gap > 50 and measured.student_shifted_accuracy < 0.7


@pytest.mark.slow
def test_a_student_made_brittle_to_longer_lists_is_caught(short_context: ModelPair,
                                                          good: ModelPair) -> None:
    from pytest_circuits.analysis import task_performance
    from pytest_circuits.tasks import builtin_task

    task = builtin_task("numerals", n_prompts=16, seed=0)
    same = task_performance(short_context.student, task).per_prompt
    assert same == task_performance(good.student, task).per_prompt  # the task cannot see it
    assert_shift_robust(short_context, "numerals", shift="shorter", max_gap=10, n_prompts=16)
    with pytest.raises(CircuitAssertionError) as caught:
        assert_shift_robust(short_context, "numerals", shift="longer", max_gap=20,
                            n_prompts=16, max_examples=30)
    message = str(caught.value)
    smallest = re.search(r"shrunk\): '([^']*)'", message).group(1)
    # shrunk to the shortest list that is longer than the built-in's: five listed members
    assert smallest.count("done in") == 6 and smallest.startswith("Van done in 1. Hat done in 2.")
