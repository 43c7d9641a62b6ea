"""Tests of pytest_circuits.tasks: built-in generators, Task, task files, encoding/validation."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import bpe_tokenizer, tokenizer_words, word_tokenizer
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pytest_circuits.tasks import (
    BUILTIN_TASKS,
    EncodedTask,
    Task,
    TaskError,
    TaskValidationError,
    builtin_task,
    encode_task,
    load_task_file,
    resolve_task,
    save_task_file,
)
from pytest_circuits.tasks.builtin import (
    IOI_NAMES,
    IOI_OBJECTS,
    IOI_PLACES,
    NUMBER_WORDS,
    NUMERAL_MEMBERS,
    NUMERAL_VERBS,
)

LIST_RE = re.compile(
    r"^(\w+) (\w+) in (\w+)\. (\w+) \2 in (\w+)\. (\w+) \2 in (\w+)\. "
    r"(\w+) \2 in (\w+)\. (\w+) \2 in$"
)
IOI_RE = re.compile(r"^When (\w+) and (\w+) went to the (\w+), (\w+) gave a (\w+) to$")
WORD_VALUE = {word: index + 1 for index, word in enumerate(NUMBER_WORDS)}


# ----------------------------------------------------------------------------- tokenizers


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return word_tokenizer()


def _tiny_task(**changes: object) -> Task:
    fields: dict[str, object] = {
        "name": "tiny",
        "prompts": ("When Mary and John went to the store, John gave a drink to",),
        "correct": (" Mary",),
        "distractors": (" John",),
        "corrupted": ("When Tom and Anna went to the store, Paul gave a drink to",),
    }
    fields.update(changes)
    return Task(**fields)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- built-ins


def test_no_torch_at_import() -> None:
    code = "import sys, pytest_circuits.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_deterministic_and_seed_sensitive(name: str) -> None:
    a = builtin_task(name, n_prompts=16, seed=3)
    b = builtin_task(name, n_prompts=16, seed=3)
    c = builtin_task(name, n_prompts=16, seed=4)
    assert a == b and a.fingerprint() == b.fingerprint()
    assert a.prompts != c.prompts and a.corrupted != c.corrupted
    assert a.fingerprint() != c.fingerprint()
    assert a.seed == 3 and a.name == name and len(a) == 16 and len(a.corrupted) == 16


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_more_prompts_extend_fewer(name: str) -> None:
    assert builtin_task(name, n_prompts=40, seed=1).subset(13) == builtin_task(name, 13, seed=1)
    task = builtin_task(name, n_prompts=5, seed=0, n_reference=12)
    assert len(task.corrupted) == 12 and len(task) == 5


def test_builtin_first_numerals_prompt_matches_paper_shape() -> None:
    task = builtin_task("numerals", n_prompts=1, seed=0)
    match = LIST_RE.match(task.prompts[0])
    assert match, task.prompts[0]
    assert task.prompts[0].endswith(" in") and not task.prompts[0].endswith(" ")


@pytest.mark.parametrize("name", ["numerals", "numwords"])
def test_list_answer_is_next_number_and_distractor_the_last(name: str) -> None:
    task = builtin_task(name, n_prompts=300, seed=11)
    value = (lambda s: int(s)) if name == "numerals" else WORD_VALUE.__getitem__
    starts, verbs = set(), set()
    for prompt, good, bad in zip(task.prompts, task.correct, task.distractors, strict=True):
        match = LIST_RE.match(prompt)
        assert match, prompt
        groups = match.groups()
        members = [groups[0], groups[3], groups[5], groups[7], groups[9]]
        numbers = [value(groups[2]), value(groups[4]), value(groups[6]), value(groups[8])]
        assert len(set(members)) == 5 and set(members) <= set(NUMERAL_MEMBERS)
        assert numbers == list(range(numbers[0], numbers[0] + 4))
        assert good.startswith(" ") and bad.startswith(" ")
        assert value(good.strip()) == numbers[-1] + 1
        assert value(bad.strip()) == numbers[-1]
        starts.add(numbers[0])
        verbs.add(groups[1])
    assert starts == set(range(1, 9))
    assert verbs == set(NUMERAL_VERBS)


@pytest.mark.parametrize("name", ["numerals", "numwords"])
def test_list_corrupted_keeps_template_and_randomises_numbers(name: str) -> None:
    task = builtin_task(name, n_prompts=50, seed=2, n_reference=100)
    value = (lambda s: int(s)) if name == "numerals" else WORD_VALUE.__getitem__
    consecutive = 0
    for j, prompt in enumerate(task.corrupted):
        clean = LIST_RE.match(task.prompts[j % 50]).groups()  # type: ignore[union-attr]
        bad = LIST_RE.match(prompt)
        assert bad, prompt
        groups = bad.groups()
        for k in (0, 1, 3, 5, 7, 9):  # members and verb as in the clean prompt
            assert groups[k] == clean[k]
        numbers = [value(groups[k]) for k in (2, 4, 6, 8)]
        assert all(1 <= n <= 12 for n in numbers)
        consecutive += numbers == list(range(numbers[0], numbers[0] + 4))
    assert consecutive <= 2  # random numbers, not the counting pattern


def test_ioi_answer_is_indirect_object_and_orders_balance() -> None:
    task = builtin_task("ioi", n_prompts=64, seed=5)
    orders = {"ABBA": 0, "BABA": 0}
    for i, (prompt, good, bad) in enumerate(
        zip(task.prompts, task.correct, task.distractors, strict=True)
    ):
        match = IOI_RE.match(prompt)
        assert match, prompt
        first, second, place, subject, obj = match.groups()
        assert first != second and subject in (first, second)
        indirect = second if subject == first else first
        assert good == " " + indirect and bad == " " + subject
        assert place in IOI_PLACES and obj in IOI_OBJECTS
        order = "ABBA" if subject == second else "BABA"
        assert order == ("ABBA" if i % 2 == 0 else "BABA")
        orders[order] += 1
    assert orders == {"ABBA": 32, "BABA": 32}


def test_ioi_corrupted_uses_three_other_names() -> None:
    task = builtin_task("ioi", n_prompts=20, seed=9)
    for clean, corrupted in zip(task.prompts, task.corrupted, strict=True):
        a = IOI_RE.match(clean).groups()  # type: ignore[union-attr]
        b = IOI_RE.match(corrupted).groups()  # type: ignore[union-attr]
        names = {b[0], b[1], b[3]}
        assert len(names) == 3 and names.isdisjoint({a[0], a[1]})
        assert (b[2], b[4]) == (a[2], a[4])  # same place and object


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_tasks_have_one_token_length(tok: PreTrainedTokenizerFast, name: str) -> None:
    task = builtin_task(name, n_prompts=120, seed=0, n_reference=200)
    encoded = encode_task(task, tok)
    lengths = {len(t) for t in encoded.tokens + encoded.corrupted_tokens}
    assert lengths == {encoded.seq_len}
    assert encoded.seq_len == {"numerals": 24, "numwords": 24, "ioi": 15}[name]


def test_unknown_builtin_lists_the_builtins() -> None:
    with pytest.raises(TaskError, match="numerals, numwords, ioi"):
        builtin_task("numbers")
    with pytest.raises(TaskError, match="n_prompts must be at least 1"):
        builtin_task("ioi", n_prompts=0)


# ----------------------------------------------------------------------------- Task


def test_task_validation_errors() -> None:
    with pytest.raises(TaskError, match="has no prompts"):
        _tiny_task(prompts=(), correct=(), distractors=())
    with pytest.raises(TaskError, match="1 prompts but 2 correct answers and 1 distractors"):
        _tiny_task(correct=(" Mary", " Tom"))
    with pytest.raises(TaskError, match="same correct answer and distractor ' John'"):
        _tiny_task(correct=(" John",))
    with pytest.raises(TaskError, match="no corrupted reference prompts"):
        _tiny_task(corrupted=())
    with pytest.raises(TaskError, match="position must be one of auto, last, mask"):
        _tiny_task(position="first")
    with pytest.raises(TaskError, match="prompts must be a list of strings"):
        _tiny_task(prompts="When Mary")
    with pytest.raises(TaskError, match=r"correct\[0\] must be a string"):
        _tiny_task(correct=(5,))


def test_task_lists_become_tuples_and_len() -> None:
    task = _tiny_task(prompts=["When Mary and John went to the store, John gave a drink to"])
    assert isinstance(task.prompts, tuple) and len(task) == 1


def test_fingerprint_is_stable_known_value() -> None:
    # A change of this value means stored baselines no longer match: bump on purpose only.
    assert _tiny_task().fingerprint() == (
        "96d40e7d504fd7edc6cc5cad5b7d438bea6d22a6aedd272d7163d72cb2ebc68d"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"name": "tiny2"},
        {"prompts": ("When Mary and John went to the park, John gave a drink to",)},
        {"correct": (" Tom",)},
        {"distractors": (" Tom",)},
        {"corrupted": ("When Tom and Anna went to the store, Ryan gave a drink to",)},
        {"position": "last"},
        {"seed": 1},
        {"description": "x"},
    ],
)
def test_fingerprint_sensitive_to_every_field(change: dict[str, object]) -> None:
    base = _tiny_task()
    assert dataclasses.replace(base, **change).fingerprint() != base.fingerprint()


def test_dict_round_trip_and_subset() -> None:
    task = builtin_task("numwords", n_prompts=6, seed=2, n_reference=9)
    data = json.loads(json.dumps(task.to_dict()))
    assert Task.from_dict(data) == task
    small = task.subset(4)
    assert small.prompts == task.prompts[:4] and small.corrupted == task.corrupted[:4]
    assert small.correct == task.correct[:4] and small.distractors == task.distractors[:4]
    with pytest.raises(TaskError, match="has 6 prompts; cannot take a subset of 7"):
        task.subset(7)
    with pytest.raises(TaskError, match=r"unknown keys \['extra'\]"):
        Task.from_dict({**data, "extra": 1})


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json", ".jsonl"])
def test_task_file_round_trip(tmp_path: Path, suffix: str) -> None:
    task = dataclasses.replace(
        builtin_task("ioi", n_prompts=5, seed=1, n_reference=7), description="IOI: a test"
    )
    path = save_task_file(task, tmp_path / f"ioi{suffix}")
    assert load_task_file(path) == task


def test_hand_written_yaml(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\n"
        "position: last\n"
        "prompts:\n"
        '  - prompt: "Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in"\n'
        '    correct: " 5"\n'
        '    distractor: " 4"\n'
        "corrupted:\n"
        '  - "Van done in 7. Hat done in 2. Ring done in 11. Desk done in 4. Sun done in"\n'
    )
    task = load_task_file(path)
    assert task.name == "mine" and task.position == "last" and task.seed is None
    assert task.correct == (" 5",) and task.distractors == (" 4",) and len(task.corrupted) == 1


def test_jsonl_name_defaults_to_stem(tmp_path: Path) -> None:
    path = tmp_path / "my_task.jsonl"
    path.write_text(
        '{"prompt": "When Mary and John went to the store, John gave a drink to", '
        '"correct": " Mary", "distractor": " John"}\n\n'
        '{"corrupted": "When Tom and Anna went to the store, Paul gave a drink to"}\n'
    )
    task = load_task_file(path)
    assert task.name == "my_task" and task.position == "auto" and len(task) == 1


GOOD_ITEM = '  - {prompt: "When Mary and John went to the store, John gave a drink to", '
GOOD_ITEM += 'correct: " Mary", distractor: " John"}\n'


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("name: t\nprompt:\n" + GOOD_ITEM + "corrupted: [x]\n",
         r"t\.yaml:2: unknown key 'prompt'\. Fix: did you mean 'prompts'\?"),
        ("name: t\nprompts:\n" + GOOD_ITEM,
         r"t\.yaml:1: missing required key 'corrupted'\. Fix: add corrupted:"),
        ("name: t\nprompts:\n  - {prompt: a b, correct: 5, distractor: \" 4\"}\ncorrupted: [x]\n",
         r"t\.yaml:3: prompts\[0\]: 'correct' must be a string, got number 5\. Fix: quote it"),
        ("name: t\nprompts:\n  - prompt: a b\n    correct: \" 5\"\ncorrupted: [x]\n",
         r"t\.yaml:3: prompts\[0\] is missing 'distractor'"),
        ("name: t\nprompts:\n" + GOOD_ITEM + "  - {prompt: a, correct: ' 5', distractor: ' 5'}\n"
         "corrupted: [x]\n",
         r"t\.yaml:4: prompts\[1\]: correct and distractor are both ' 5'"),
        ("name: t\nposition: first\nprompts:\n" + GOOD_ITEM + "corrupted: [x]\n",
         r"t\.yaml:2: 'position' must be one of auto, last, mask, got 'first'"),
        ("name: t\nseed: zero\nprompts:\n" + GOOD_ITEM + "corrupted: [x]\n",
         r"t\.yaml:2: 'seed' must be an integer or null"),
        ("name: t\nprompts: []\ncorrupted: [x]\n",
         r"t\.yaml:2: 'prompts' must be a non-empty list"),
        ("name: t\nprompts:\n" + GOOD_ITEM + "corrupted:\n  - x\n  - 7\n",
         r"t\.yaml:6: corrupted\[1\] must be a string"),
        ("name: t\nprompts:\n  - [a, b]\ncorrupted: [x]\n",
         r"t\.yaml:3: prompts\[0\] must be a mapping"),
        ("name: t\nprompts: [\n", r"t\.yaml:\d+: invalid YAML"),
        ("- a\n- b\n", r"t\.yaml:1: the top level must be a mapping"),
        ("", r"t\.yaml: the file is empty"),
    ],
)
def test_yaml_errors_name_file_line_and_fix(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(TaskError, match=pattern):
        load_task_file(path)


def test_json_errors_have_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('{\n  "name": "t",\n  "prompts": [],\n  "corupted": []\n}\n')
    with pytest.raises(TaskError, match=r"t\.json:4: unknown key 'corupted'.*'corrupted'"):
        load_task_file(path)
    path.write_text('{\n  "name": "t",\n  "prompts": [,]\n}\n')
    with pytest.raises(TaskError, match=r"t\.json:3: not valid JSON"):
        load_task_file(path)


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        (['{"prompt": "a b", "correct": " 5", "distractor": " 4", "answer": 1}'],
         r"t\.jsonl:1: unknown key 'answer' in prompt on line 1"),
        (['{"prompt": "a b", "correct": " 5", "distractor": " 4"}', '{"name": "x"}'],
         r"t\.jsonl:2: a header line .* after prompt lines\. Fix: move the header"),
        (['{"prompt": "a b", "correct": " 5", "distractor": " 4"}', "[1, 2]"],
         r"t\.jsonl:2: each line must be a JSON object"),
        (['{"prompt": "a b", "correct": " 5", "distractor": " 4"}', "{oops"],
         r"t\.jsonl:2: not valid JSON"),
        (['{"prompt": "a b", "correct": " 5"}'], r"t\.jsonl:1: prompt on line 1 is missing"),
        (['{"prompt": "a b", "correct": " 5", "distractor": " 4"}'],
         r"t\.jsonl: no corrupted reference lines"),
        (['{"corrupted": "a b", "prompt": "c"}'], r"t\.jsonl:1: a corrupted line has extra keys"),
        (['{"name": "x", "positon": "last"}'], r"t\.jsonl:1: unknown key 'positon'.*'position'"),
    ],
)
def test_jsonl_errors(tmp_path: Path, lines: list[str], pattern: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskError, match=pattern):
        load_task_file(path)


def test_file_type_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"unsupported task file type '\.txt'"):
        load_task_file(tmp_path / "t.txt")
    with pytest.raises(TaskError, match="task file not found"):
        load_task_file(tmp_path / "none.yaml")


def test_resolve_task(tmp_path: Path) -> None:
    task = _tiny_task()
    assert resolve_task(task) is task
    assert resolve_task("ioi", n_prompts=6, seed=2) == builtin_task("ioi", 6, seed=2)
    (tmp_path / "sub").mkdir()
    save_task_file(task, tmp_path / "sub" / "x.yaml")
    assert resolve_task("x.yaml", search_paths=[tmp_path / "nowhere", tmp_path / "sub"]) == task
    assert resolve_task(tmp_path / "sub" / "x.yaml") == task
    with pytest.raises(TaskError, match=r"Unknown task 'numbers': not a built-in task"):
        resolve_task("numbers")
    with pytest.raises(TaskError, match=r"Task file 'y\.yaml' not found"):
        resolve_task("y.yaml", search_paths=[tmp_path])


# ----------------------------------------------------------------------------- encoding


def test_encode_causal(tok: PreTrainedTokenizerFast) -> None:
    task = builtin_task("ioi", n_prompts=4, seed=0)
    enc = encode_task(task, tok)
    assert isinstance(enc, EncodedTask) and len(enc) == 4
    assert enc.seq_len == 15 and enc.positions == (14,) * 4 and enc.corrupted_positions == (14,) * 4
    assert all(row[0] == tok.bos_token_id for row in enc.tokens)
    assert tok.convert_ids_to_tokens(list(enc.correct_ids)) == [c.strip() for c in task.correct]
    assert tok.convert_ids_to_tokens(list(enc.distractor_ids)) == [
        d.strip() for d in task.distractors
    ]
    assert tok.convert_ids_to_tokens(enc.tokens[0][-1]) == "to"


def test_encode_skips_appended_eos() -> None:
    tok = word_tokenizer(style="eos")
    enc = encode_task(builtin_task("numerals", n_prompts=3, seed=0), tok)
    assert enc.seq_len == 25 and enc.positions == (23,) * 3
    assert tok.convert_ids_to_tokens(enc.tokens[0][23]) == "in"


def test_encode_multi_token_answer_shows_pieces() -> None:
    tok = word_tokenizer(split_digits=True)
    task = _tiny_task(
        prompts=("Van done in 7. Hat done in 8. Ring done in 9. Desk done in 10. Sun done in",),
        correct=(" 11",),
        distractors=(" 10",),
        corrupted=("Van done in 7. Hat done in 8. Ring done in 9. Desk done in 10. Sun done in",),
    )
    with pytest.raises(TaskValidationError, match=r"' 11' is 2 tokens \['1', '1'\]"):
        encode_task(task, tok)


def test_encode_unequal_lengths(tok: PreTrainedTokenizerFast) -> None:
    task = _tiny_task(
        prompts=("When Mary and John went to the store, John gave a drink to",) * 3,
        correct=(" Mary",) * 3,
        distractors=(" John",) * 3,
        corrupted=("When Tom went to the store, Paul gave a drink to",),
    )
    with pytest.raises(TaskValidationError) as info:
        encode_task(task, tok)
    message = str(info.value)
    assert "13 tokens x1, 15 tokens x3" in message
    assert "corrupted prompt 0 has 13 tokens: 'When Tom went" in message
    assert "aligned prompts" in message


def test_encode_max_length_unknown_words_and_unknown_answer(
    tok: PreTrainedTokenizerFast,
) -> None:
    task = builtin_task("ioi", n_prompts=2, seed=0)
    with pytest.raises(TaskValidationError, match=r"prompts are 15 tokens, longer than .* 10"):
        encode_task(task, tok, max_length=10)
    assert encode_task(task, tok, max_length=15).seq_len == 15
    odd = _tiny_task(prompts=("When Zork and John went to the store, John gave a drink to",))
    with pytest.raises(TaskValidationError, match=r"does not know .*\['Zork'\]"):
        encode_task(odd, tok)
    answer = _tiny_task(correct=(" Zork",))
    with pytest.raises(TaskValidationError, match=r"' Zork' is not in the tokenizer's vocab"):
        encode_task(answer, tok)


def test_encode_masked_position() -> None:
    tok = word_tokenizer(style="bert")
    enc = encode_task(builtin_task("ioi", n_prompts=2, seed=0), tok, masked=True)
    # [CLS] + 14 words + [MASK] + [SEP]
    assert enc.seq_len == 17 and enc.positions == (15, 15)
    assert enc.tokens[0][15] == tok.mask_token_id and enc.corrupted_positions == (15, 15)
    written = _tiny_task(
        prompts=("When Mary and John went to the store, John gave a drink to [MASK].",),
        corrupted=("When Tom and Anna went to the store, Paul gave a drink to [MASK].",),
    )
    assert encode_task(written, tok, masked=True).positions == (15,)


def test_encode_position_rule_mismatch(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(TaskValidationError, match="reads the \\[MASK\\] position .* causal"):
        encode_task(_tiny_task(position="mask"), tok)
    with pytest.raises(TaskValidationError, match="reads the last position .* masked"):
        encode_task(_tiny_task(position="last"), word_tokenizer(style="bert"), masked=True)
    with pytest.raises(TaskValidationError, match="tokenizer has no mask token"):
        encode_task(_tiny_task(), word_tokenizer(style="plain"), masked=True)


def test_unknown_token_that_doubles_as_bos_is_not_an_unknown_word() -> None:
    # GPT-2 style: <|endoftext|> is unk, bos and eos at once; a prompt may contain it.
    vocab = {word: index for index, word in enumerate(tokenizer_words(("<|endoftext|>",)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )
    task = _tiny_task(
        prompts=("<|endoftext|> When Mary and John went to the store , John gave a drink to",),
        corrupted=("<|endoftext|> When Tom and Anna went to the store , Paul gave a drink to",),
    )
    enc = encode_task(task, tok)
    assert enc.tokens[0][0] == vocab["<|endoftext|>"] and enc.positions == (14,)


# ------------------------------------------------------------------------- fitting to a tokenizer


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    return bpe_tokenizer(at_start=tuple(w for w in NUMERAL_MEMBERS if w not in ("Desk", "Coin")))


@pytest.mark.parametrize("name", BUILTIN_TASKS)
@pytest.mark.parametrize("seed", [0, 3])
def test_builtin_for_a_word_level_tokenizer_is_the_papers_task(name: str, seed: int) -> None:
    from transformers import AutoTokenizer

    from pytest_circuits.zoo import zoo_path

    zoo = AutoTokenizer.from_pretrained(zoo_path("tiny-teacher"))
    paper = builtin_task(name, n_prompts=64, seed=seed)
    fitted = builtin_task(name, n_prompts=64, seed=seed, tokenizer=zoo)
    assert fitted == paper and fitted.adaptation is None
    assert fitted.fingerprint() == paper.fingerprint()
    assert fitted.to_dict() == paper.to_dict() and "adaptation" not in fitted.to_dict()


def test_numerals_for_a_bpe_that_splits_digits_off(bpe: PreTrainedTokenizerFast) -> None:
    assert bpe.convert_ids_to_tokens(bpe(" 5")["input_ids"]) == ["Ġ", "5"]
    task = builtin_task("numerals", n_prompts=200, seed=0, tokenizer=bpe)
    encoded = encode_task(task, bpe)
    assert all(p.endswith(" in ") for p in task.prompts + task.corrupted)
    values = {int(a) for a in task.correct + task.distractors}
    assert values <= set(range(1, 10)) and 9 in values  # 10..12 are two digits, two tokens
    for prompt, good, bad in zip(task.prompts, task.correct, task.distractors, strict=True):
        numbers = [int(n) for n in re.findall(r"\d+", prompt)]
        assert numbers == list(range(numbers[0], numbers[0] + 4))
        assert (int(good), int(bad)) == (numbers[-1] + 1, numbers[-1])
    members = {m for p in task.prompts for m in re.findall(r"([A-Z]\w+) \w+ in", p)}
    assert members <= set(NUMERAL_MEMBERS) - {"Desk", "Coin"} and len(members) == 28
    # the answer is the next token after the prompt: prompt + answer == prompt's ids + answer id
    ids = bpe(task.prompts[0] + task.correct[0], add_special_tokens=False)["input_ids"]
    assert ids == list(encoded.tokens[0]) + [encoded.correct_ids[0]]
    adaptation = task.adaptation
    assert adaptation is not None and adaptation.kind == "causal"
    assert {(d.pool, d.word) for d in adaptation.dropped} >= {
        ("numbers", "10"), ("numbers", "12"), ("list members", "Desk"), ("list members", "Coin")
    }
    summary = adaptation.summary()
    assert "answers without a leading space ('5' after 'done in '" in summary
    assert "numbers 1..9 (not 1..12; left out: 10, 11, 12)" in summary
    assert "list members: 28 of 30 kept (left out: Desk, Coin)" in summary


def test_numwords_and_ioi_keep_the_papers_forms_on_the_bpe(bpe: PreTrainedTokenizerFast) -> None:
    words = builtin_task("numwords", n_prompts=50, seed=1, tokenizer=bpe)
    paper_ioi = builtin_task("ioi", n_prompts=50, seed=1)
    assert builtin_task("ioi", n_prompts=50, seed=1, tokenizer=bpe) == paper_ioi
    assert all(a.startswith(" ") for a in words.correct) and words.prompts[0].endswith(" in")
    assert words.adaptation is not None
    assert words.adaptation.changes == ("list members: 28 of 30 kept (left out: Desk, Coin)",)
    encode_task(words, bpe)


def test_answer_form_is_chosen_by_what_the_tokenizer_keeps_whole() -> None:
    # Without "eleven"/"twelve" in the vocabulary, numwords stops at ten.
    vocab = tuple(w for w in tokenizer_words() if w not in ("eleven", "twelve"))
    tok = _word_level(vocab)
    task = builtin_task("numwords", n_prompts=100, seed=0, tokenizer=tok)
    assert {a.strip() for a in task.correct} <= set(NUMBER_WORDS[:10])
    assert task.adaptation is not None
    assert "numbers 1..10 (not 1..12; left out: eleven, twelve)" in task.adaptation.summary()
    assert {d.word: d.reason for d in task.adaptation.dropped}["eleven"] == (
        "' eleven' is not in the tokenizer's vocabulary"
    )


def test_names_missing_from_the_vocabulary_are_left_out_and_listed() -> None:
    tok = _word_level(tuple(w for w in tokenizer_words() if w not in ("Mary", "Victoria")))
    task = builtin_task("ioi", n_prompts=300, seed=0, tokenizer=tok)
    used = {w for p in task.prompts + task.corrupted for w in IOI_RE.match(p).groups()[:2]}
    assert not used & {"Mary", "Victoria"} and len(used) == 38
    assert task.adaptation is not None
    assert task.adaptation.changes == ("names: 38 of 40 kept (left out: Mary, Victoria)",)


def test_a_task_that_cannot_be_built_names_the_words_and_suggests_a_task_file() -> None:
    no_digits = _word_level(tuple(w for w in tokenizer_words() if not w.isdigit() or int(w) < 3))
    with pytest.raises(TaskValidationError) as caught:
        builtin_task("numerals", tokenizer=no_digits)
    message = str(caught.value)
    assert "Built-in task 'numerals' cannot be built for tokenizer" in message
    assert "needs the numbers 1..5 as single-token answers of equal length, but only 1..2" in (
        message
    )
    assert "'3' (' 3' is not in the tokenizer's vocabulary)" in message
    assert "Write a task file" in message and "SCHEMA.md" in message
    assert "save_task_file(builtin_task('numerals'), 'numerals.yaml')" in message
    few_names = _word_level(tuple(w for w in tokenizer_words() if w not in IOI_NAMES[3:]))
    with pytest.raises(TaskValidationError, match=r"IOI needs 5 names .* only 3 are.*'Dan'"):
        builtin_task("ioi", tokenizer=few_names)


def _word_level(words: tuple[str, ...]) -> PreTrainedTokenizerFast:
    vocab = {word: index for index, word in enumerate(dict.fromkeys(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


# ----------------------------------------------------------------------------- masked variants


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_masked_variant_is_chosen_for_a_masked_tokenizer(name: str) -> None:
    bert = word_tokenizer(style="bert")
    task = builtin_task(name, n_prompts=20, seed=2, tokenizer=bert)
    paper = builtin_task(name, n_prompts=20, seed=2)
    assert task.prompts == tuple(p + " [MASK]." for p in paper.prompts)
    assert task.corrupted == tuple(p + " [MASK]." for p in paper.corrupted)
    assert task.correct == paper.correct and task.position == "mask"
    untokenized = builtin_task(name, n_prompts=20, seed=2, kind="masked")
    assert dataclasses.replace(task, adaptation=None) == dataclasses.replace(
        untokenized, adaptation=None
    )
    encoded = encode_task(task, bert, masked=True)
    # [CLS] ... [MASK] . [SEP]: the answer is read at the mask, two before the end
    assert set(encoded.positions) == {encoded.seq_len - 3}
    assert {row[encoded.seq_len - 3] for row in encoded.tokens} == {bert.mask_token_id}
    assert task.adaptation is not None and task.adaptation.kind == "masked"
    with pytest.raises(TaskValidationError, match="reads the \\[MASK\\] position .* causal"):
        encode_task(task, bert, masked=False)


def test_masked_variant_uses_the_tokenizers_own_mask_token() -> None:
    vocab = tuple(w if w != "[MASK]" else "<mask>" for w in tokenizer_words())
    tok = _word_level(vocab)
    tok.add_special_tokens({"mask_token": "<mask>"})
    task = builtin_task("ioi", n_prompts=2, seed=0, tokenizer=tok)
    assert task.prompts[0].endswith(" gave a drink to <mask>.") or task.prompts[0].endswith(
        " to <mask>."
    )
    with pytest.raises(TaskValidationError, match="needs a mask token, but tokenizer"):
        builtin_task("ioi", tokenizer=word_tokenizer(style="plain"), kind="masked")
    with pytest.raises(TaskError, match="kind must be one of causal, masked, got 'mlm'"):
        builtin_task("ioi", kind="mlm")


# ----------------------------------------------------------------------------- input bounds


@pytest.mark.parametrize("bad", [0, -3])
def test_n_prompts_zero_or_negative_is_an_error_never_the_default(bad: int) -> None:
    refused = f"task 'numerals': n_prompts must be at least 1, got {bad}"
    with pytest.raises(TaskError, match=refused):
        resolve_task("numerals", n_prompts=bad)
    with pytest.raises(TaskError, match="n_prompts must be at least 1"):
        builtin_task("numerals", n_prompts=bad)


def test_n_prompts_has_an_upper_limit() -> None:
    from pytest_circuits.tasks import DEFAULT_N_PROMPTS, MAX_N_PROMPTS

    assert MAX_N_PROMPTS == 10_000
    with pytest.raises(TaskError, match="n_prompts=10001 is more than the limit of 10,000"):
        resolve_task("ioi", n_prompts=MAX_N_PROMPTS + 1)
    assert len(resolve_task("ioi", n_prompts=MAX_N_PROMPTS)) == MAX_N_PROMPTS
    default = len(resolve_task("ioi", n_prompts=None))
    assert len(resolve_task("ioi")) == default == DEFAULT_N_PROMPTS
    big = builtin_task("numerals", n_prompts=MAX_N_PROMPTS + 1, n_reference=1)
    refused = r"has 10,001 prompts .* at most 10,000 of each .* task.subset\(10000\)"
    with pytest.raises(TaskError, match=refused):
        resolve_task(big)


def test_resolve_task_builds_a_builtin_for_the_tokenizer(bpe: PreTrainedTokenizerFast) -> None:
    task = resolve_task("numerals", n_prompts=5, seed=1, tokenizer=bpe, kind="causal")
    assert task == builtin_task("numerals", 5, seed=1, tokenizer=bpe)
    assert task.adaptation is not None


def test_a_yaml_alias_bomb_in_a_task_file_is_refused_quickly(tmp_path: Path) -> None:
    import time

    lines = ['name: bomb', 'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines += ["prompts: *a8", "corrupted: *a8"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    began = time.perf_counter()
    with pytest.raises(TaskError, match="aliases"):
        load_task_file(path)
    assert time.perf_counter() - began < 2.0


def test_adaptation_round_trips_through_json_and_subset(bpe: PreTrainedTokenizerFast) -> None:
    task = builtin_task("numerals", n_prompts=6, seed=0, tokenizer=bpe)
    again = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert again == task and again.adaptation == task.adaptation
    assert task.subset(2).adaptation == task.adaptation
    assert task.fingerprint() != dataclasses.replace(task, adaptation=None).fingerprint()


# ----------------------------------------------------------------------------- a real tokenizer


@pytest.mark.real
@pytest.mark.slow
def test_every_builtin_fits_smollm2s_tokenizer(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    numerals = builtin_task("numerals", n_prompts=200, seed=0, tokenizer=tok)
    encode_task(numerals, tok)
    assert numerals.prompts[0].endswith(" in ") and numerals.correct[0] in set("56789")
    assert numerals.adaptation is not None
    assert "numbers 1..9 (not 1..12" in numerals.adaptation.summary()
    assert "the tokenizer splits ' 5' into ['Ġ', '5']" in numerals.adaptation.summary()
    dropped = {d.word for d in numerals.adaptation.dropped if d.pool == "list members"}
    assert "Desk" in dropped and "Van" not in dropped  # 'Desk' is two pieces at the start
    numwords = builtin_task("numwords", n_prompts=200, seed=0, tokenizer=tok)
    encode_task(numwords, tok)
    assert numwords.correct[0].startswith(" ")  # ' five' is one piece
    ioi = builtin_task("ioi", n_prompts=200, seed=0, tokenizer=tok)
    assert ioi == builtin_task("ioi", n_prompts=200, seed=0)  # the paper's prompts fit as they are
    assert encode_task(ioi, tok).seq_len == 14
