"""Tests of pytest_circuits.strategies and tasks.shifts: shifted prompts that stay encodable."""

from __future__ import annotations

import re
from typing import Any

import pytest
from helpers import bpe_tokenizer
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pytest_circuits import strategies
from pytest_circuits.tasks import Task, TaskError, TaskValidationError, encode_task
from pytest_circuits.tasks.builtin import IOI_NAMES, IOI_OBJECTS, NUMBER_WORDS, NUMERAL_MEMBERS
from pytest_circuits.tasks.shifts import SHIFTS, shifted_task
from pytest_circuits.zoo import zoo_path

QUICK = settings(max_examples=15, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])
CASES = [(name, shift) for name, shifts in SHIFTS.items() for shift in shifts]
ZOO_LACKS = {("numwords", "numbers")}  # the zoo has no number words past twelve


@pytest.fixture(scope="module")
def zoo() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(zoo_path("tiny-teacher"))


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    return bpe_tokenizer(at_start=NUMERAL_MEMBERS[:20])


def _value(word: str) -> int:
    return int(word) if word.isdigit() else NUMBER_WORDS.index(word) + 1


def _check_draws(strategy: Any, tokenizer: Any) -> list[Task]:
    seen: list[Task] = []

    @QUICK
    @given(strategy)
    def draws_encode(task: Task) -> None:
        assert len(task) == 1 and len(task.corrupted) == 1
        encoded = encode_task(task, tokenizer)  # single-token answers, one length
        assert len(encoded.tokens[0]) == len(encoded.corrupted_tokens[0])
        seen.append(task)

    draws_encode()
    return seen


@pytest.mark.parametrize(("name", "shift"), CASES)
def test_every_draw_encodes_for_the_zoo_tokenizer(name: str, shift: str, zoo: Any) -> None:
    if (name, shift) in ZOO_LACKS:
        with pytest.raises(TaskValidationError, match="no number above 12 is a single-token"):
            strategies.shifted_prompts(name, shift, zoo)
        return
    assert len(_check_draws(strategies.shifted_prompts(name, shift, zoo), zoo)) == 15


@pytest.mark.parametrize(("name", "shift"), CASES)
def test_every_draw_encodes_for_a_bpe_that_splits_digits(name: str, shift: str, bpe: Any) -> None:
    if shift == "numbers":  # 1..9 are all the single digits; it never saw 'thirteen'
        top = 9 if name == "numerals" else 12
        with pytest.raises(TaskValidationError, match=f"no number above {top} is a single-token"):
            strategies.shifted_prompts(name, shift, bpe)
        return
    drawn = _check_draws(strategies.shifted_prompts(name, shift, bpe), bpe)
    if name == "numerals":
        assert all(t.prompts[0].endswith(" in ") and not t.correct[0].startswith(" ")
                   for t in drawn)


@pytest.mark.parametrize("shift", SHIFTS["numerals"])
def test_list_draws_keep_the_task_and_change_what_the_shift_says(shift: str) -> None:
    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(strategies.numerals(shift=shift))
    def check(task: Task) -> None:
        prompt = task.prompts[0]
        entries = re.findall(r"(\w+) (\w+) in (\d+)\.", prompt)
        numbers = [int(n) for _, _, n in entries]
        step = -1 if shift == "order" else 1
        assert numbers == [numbers[0] + step * k for k in range(len(numbers))]
        assert int(task.correct[0]) == numbers[-1] + step
        assert int(task.distractors[0]) == numbers[-1]
        length = {"longer": range(5, 9), "shorter": range(2, 4)}.get(shift, range(4, 5))
        assert len(entries) in length
        members = {m for m, _, _ in entries}
        if shift == "members":
            assert not members & set(NUMERAL_MEMBERS)
        if shift == "template":
            assert {v for _, v, _ in entries}.isdisjoint({"done", "lost", "born"})
        if shift == "numbers":
            assert int(task.correct[0]) > 12
        else:
            assert 1 <= int(task.correct[0]) <= 12
        assert ("went to the" in prompt) == (shift == "filler")

    check()


@pytest.mark.parametrize("shift", SHIFTS["ioi"])
def test_ioi_draws_answer_the_indirect_object(shift: str) -> None:
    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(strategies.ioi(shift=shift))
    def check(task: Task) -> None:
        prompt, io_name, s_name = task.prompts[0], task.correct[0][1:], task.distractors[0][1:]
        first_clause, second_clause = re.split(r"[,.] ", prompt, maxsplit=1)
        assert {io_name, s_name} == set(re.findall(r"(\w+) and (\w+) went", first_clause)[0])
        assert second_clause.startswith(f"{s_name} gave")
        if shift == "names":
            assert not {io_name, s_name} & set(IOI_NAMES)
        if shift == "objects":
            obj = re.search(r"gave (?:a|the) (\w+) to", prompt).group(1)
            assert obj not in IOI_OBJECTS
        corrupted_names = set(re.findall(r"(\w+) and (\w+) went", task.corrupted[0])[0])
        assert not corrupted_names & {io_name, s_name}

    check()


def test_failures_shrink_to_the_shortest_list_of_the_first_words() -> None:
    smallest = find(strategies.numerals(shift="longer"), lambda task: True,
                    settings=settings(database=None, derandomize=True))
    assert smallest.prompts[0] == (
        "Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in 5. Cup done in"
    )
    assert (smallest.correct[0], smallest.distractors[0]) == (" 6", " 5")


def test_a_word_draw_shrinks_to_the_first_number_words() -> None:
    smallest = find(strategies.numwords(), lambda task: True,
                    settings=settings(database=None, derandomize=True))
    assert smallest.correct[0] == " five" and smallest.prompts[0].startswith("Van done in one.")


@pytest.mark.parametrize(("name", "shift"), [c for c in CASES if c not in ZOO_LACKS])
def test_a_shifted_task_has_one_length_and_is_reproducible(name: str, shift: str, zoo: Any) -> None:
    task = shifted_task(name, shift, n_prompts=40, seed=3, tokenizer=zoo)
    encoded = encode_task(task, zoo)
    assert {len(t) for t in encoded.tokens + encoded.corrupted_tokens} == {encoded.seq_len}
    assert task == shifted_task(name, shift, n_prompts=40, seed=3, tokenizer=zoo)
    assert task.prompts != shifted_task(name, shift, n_prompts=40, seed=4).prompts
    assert task.name == (name if shift == "none" else f"{name}-{shift}")
    assert len(set(task.prompts)) > 30  # varied words, one shape


def test_masked_draws_end_at_the_mask() -> None:
    from helpers import word_tokenizer

    bert = word_tokenizer(style="bert")

    @QUICK
    @given(strategies.ioi(bert, shift="filler"))
    def check(task: Task) -> None:
        assert task.prompts[0].endswith(" to [MASK].") and task.position == "mask"
        encoded = encode_task(task, bert, masked=True)
        assert encoded.tokens[0][encoded.positions[0]] == bert.mask_token_id

    check()


def test_unknown_shifts_and_tasks_are_refused_with_the_choices() -> None:
    with pytest.raises(TaskError, match="Unknown shift 'names' for task 'numerals'; its shifts "
                                        "are none, members, template, numbers"):
        strategies.numerals(shift="names")
    with pytest.raises(TaskError, match="shifts exist for numerals, numwords, ioi"):
        strategies.shifted_prompts("sums", "none")
    with pytest.raises(TaskError, match="n_prompts must be at least 1, got 0"):
        shifted_task("ioi", "names", n_prompts=0)


def test_strategies_compose_with_other_strategies() -> None:
    pairs = st.tuples(strategies.numerals(shift="shorter"), strategies.ioi(shift="template"))

    @QUICK
    @given(pairs)
    def check(drawn: tuple[Task, Task]) -> None:
        assert drawn[0].name == "numerals-shorter" and drawn[1].name == "ioi-template"

    check()


@pytest.mark.slow
def test_the_docstring_example_runs_against_the_zoo() -> None:
    from pytest_circuits.analysis import task_performance
    from pytest_circuits.models import load_model

    teacher = load_model("zoo:tiny-teacher", device="cpu")
    student = load_model("zoo:tiny-student", device="cpu")
    lengths: set[int] = set()

    @settings(max_examples=25, deadline=None, derandomize=True)
    @given(strategies.numerals(student.tokenizer, shift="longer"))
    def test_student_continues_longer_lists_where_the_teacher_does(task: Task) -> None:
        lengths.add(task.prompts[0].count(" in "))
        if task_performance(teacher, task).mean_logit_diff > 0:
            assert task_performance(student, task).mean_logit_diff > 0, task.prompts[0]

    test_student_continues_longer_lists_where_the_teacher_does()
    assert len(lengths) >= 3  # lists of several lengths were drawn


@pytest.mark.real
@pytest.mark.slow
def test_draws_encode_for_smollm2s_tokenizer(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    for name, shift in (("numerals", "longer"), ("numwords", "numbers"), ("ioi", "names")):
        assert _check_draws(strategies.shifted_prompts(name, shift, tok), tok)
