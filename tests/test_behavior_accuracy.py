"""The behaviour gate judges what the student predicts, not only how far the correct answer
beats the distractor: top-1 accuracy and the answer's probability against the teacher's.

The student that motivates it (SmolLM2-135M with six layers dropped, tests/test_real_release)
keeps 104.5% of its teacher's IOI logit difference and names the answer on 0 of 32 prompts. The
zoo version here is built exactly: the student's final LayerNorm gets a bias along a direction
that raises one unrelated token above every answer while leaving each answer's logit, and so
every logit difference, unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pytest_circuits import (
    CircuitAssertionError,
    assert_behavior_preserved,
    load_model,
    load_pair,
)
from pytest_circuits.analysis import engine
from pytest_circuits.analysis.store import as_task, task_performance
from pytest_circuits.kinds import KINDS
from pytest_circuits.kinds.behavior import DEFAULT_MIN_ACCURACY_RETAINED, share_of_teacher
from pytest_circuits.results import TaskPerformance
from pytest_circuits.zoo import zoo_path

TEACHER, STUDENT = "zoo:tiny-teacher", "zoo:tiny-student"


@pytest.fixture(scope="module")
def teacher() -> Any:
    return load_model(TEACHER, device="cpu")


@pytest.fixture(scope="module")
def student() -> Any:
    return load_model(STUDENT, device="cpu")


@pytest.fixture(scope="module")
def task(teacher: Any) -> Any:
    return as_task("ioi", 16, 0, teacher)


@pytest.fixture(scope="module")
def never_answers(student: Any, task: Any) -> Any:
    """The zoo student, made to predict one unrelated token on every prompt while each
    answer's logit stays what it was."""
    import copy

    hf = copy.deepcopy(student.hf_model)
    tensors = engine.task_tensors(student, task)
    answers = sorted({*tensors.correct.tolist(), *tensors.distractor.tolist()})
    unembed = hf.get_output_embeddings().weight.detach()
    other = next(t for t in range(unembed.shape[0]) if t not in answers)
    basis, _ = torch.linalg.qr(unembed[answers].T)  # the span of the answers' rows
    direction = unembed[other] - basis @ (basis.T @ unembed[other])  # orthogonal to it
    with torch.no_grad():
        hf.transformer.ln_f.bias += 200.0 * direction / direction.norm()
    return load_model(hf, tokenizer=zoo_path("tiny-student"), device="cpu",
                      name="zoo:tiny-student-never-answers")


def test_a_student_that_never_names_the_answer_fails_on_accuracy_alone(
        teacher: Any, student: Any, never_answers: Any, task: Any) -> None:
    seen: list[Any] = []
    from pytest_circuits.config import context

    with context.changed(recorder=seen.append), pytest.raises(CircuitAssertionError) as failed:
        assert_behavior_preserved(load_pair(teacher, never_answers), task, min_retained=90)
    (result,) = seen
    checks = {c.metric: c for c in result.checks}
    # the logit difference alone would pass it: it is the unedited student's, to rounding
    assert checks["behavior_retained"].passed
    assert task_performance(never_answers, task).mean_logit_diff == pytest.approx(
        task_performance(student, task).mean_logit_diff, rel=1e-4)
    assert task_performance(student, task).accuracy > 0.9
    assert result.values["student_accuracy"] == 0.0
    assert checks["accuracy_retained"].value == 0.0 and not checks["accuracy_retained"].passed
    assert checks["accuracy_retained"].threshold == DEFAULT_MIN_ACCURACY_RETAINED
    assert result.values["student_answer_prob"] < 1e-6
    message = str(failed.value)
    assert "accuracy_retained" in message and "FAIL" in message
    assert "0.000 (0/16)" in message  # the student's accuracy, counted in prompts


def test_the_accuracy_check_can_be_switched_off(teacher: Any, never_answers: Any,
                                                task: Any) -> None:
    performance = assert_behavior_preserved(load_pair(teacher, never_answers), task,
                                            min_retained=90, min_accuracy_retained=None)
    assert performance.accuracy == 0.0


def test_the_answer_probability_floor_fails_a_student_that_gives_the_answer_no_mass(
        teacher: Any, never_answers: Any, task: Any) -> None:
    with pytest.raises(CircuitAssertionError, match="answer_prob_retained"):
        assert_behavior_preserved(load_pair(teacher, never_answers), task, min_retained=90,
                                  min_accuracy_retained=None, min_answer_prob_retained=50)


@pytest.mark.parametrize("name", ["numerals", "numwords", "ioi"])
def test_the_zoo_students_keep_their_teachers_accuracy(teacher: Any, name: str) -> None:
    """The README's release policy (80% of the logit difference) with the default accuracy
    floor passes both zoo students on every built-in task: they name the answer as often as
    the teacher (measured: 100% of the teacher's accuracy everywhere, the brittle one 103% on
    IOI, where the teacher misses one prompt of 32)."""
    for source in (STUDENT, "zoo:tiny-student-brittle"):
        pair = load_pair(teacher, load_model(source, device="cpu"))
        built = as_task(name, 32, 0, teacher)
        performance = assert_behavior_preserved(pair, built, min_retained=80)
        assert share_of_teacher(performance.accuracy,
                                task_performance(teacher, built).accuracy) >= 100.0


def test_the_answer_probability_is_the_softmax_at_the_prediction_position(
        teacher: Any, task: Any) -> None:
    tensors = engine.task_tensors(teacher, task)
    with torch.no_grad():
        logits = teacher.hf_model(tensors.tokens).logits
    rows = torch.arange(tensors.n_prompts)
    probabilities = logits[rows, tensors.positions].softmax(-1)[rows, tensors.correct]
    measured = task_performance(teacher, task).answer_prob
    assert measured == pytest.approx(float(probabilities.double().mean()), abs=1e-6)
    assert 0.5 < measured < 1.0  # the teacher does IOI, but not with certainty


def test_share_of_teacher_is_a_percentage_and_nothing_is_lost_from_zero() -> None:
    assert share_of_teacher(0.5, 1.0) == 50.0
    assert share_of_teacher(1.0, 0.8) == pytest.approx(125.0)
    assert share_of_teacher(0.0, 0.0) == 100.0  # the teacher never names it either


def test_a_task_performance_written_before_the_probability_existed_still_loads() -> None:
    old = {"model": "m", "task": "t", "mean_logit_diff": 1.0, "per_prompt": [1.0, 1.0],
           "accuracy": 1.0, "pairwise_accuracy": 1.0}
    performance = TaskPerformance.from_dict(old)
    assert performance.answer_prob is None
    assert performance.to_dict() == {**old, "per_prompt": (1.0, 1.0)}  # reads back the same
    measured = TaskPerformance.from_dict({**old, "answer_prob": 0.25})
    assert measured.answer_prob == 0.25 and measured.to_dict()["answer_prob"] == 0.25


def test_the_registry_declares_the_new_thresholds_and_metrics() -> None:
    kind = KINDS["behavior_preserved"]
    accuracy = kind.threshold("min_accuracy_retained")
    assert (accuracy.metric, accuracy.unit, accuracy.default) == (
        "accuracy_retained", "percent", DEFAULT_MIN_ACCURACY_RETAINED)
    assert kind.threshold("min_answer_prob_retained").default is None
    assert kind.required_thresholds == ("min_retained",)
    assert kind.metric("accuracy_retained").direction == ">="
    assert kind.metric("student_answer_prob").direction is None
