"""The numbered-list tasks, numerals and numwords: ``Van done in 1. ... Sun done in`` -> `` 5``.

Four members numbered in sequence, then a fifth: the answer is the next number (in digits for
numerals, in words for numwords), the distractor the last listed number. Every prompt has one
sentence shape; only single words are swapped, so all prompts (clean and corrupted) have the same
token count under a word-level tokenizer and GPT-2's BPE. For another tokenizer the numbers, the
members and the verbs are narrowed to those that keep it so. Shifts: unseen members, unseen
verbs, numbers past 12, longer and shorter lists, a filler clause, lists counting down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..fit import (
    AFTER_SPACE,
    ANSWER_FORMS,
    AT_START,
    answer_change,
    answer_context,
    answer_refusal,
    cannot_build,
    cannot_shift,
    fit_pool,
    masked_change,
    pool_change,
    preferring,
    shift_pool,
    token_ids,
)
from ..registry import (
    SHARED_SHIFT_MEANINGS,
    AnswerForm,
    BuiltinTask,
    Chooser,
    Example,
    Fitted,
    ShiftPools,
    prompt_rng,
)
from ..task import DroppedWord, Task
from ..words import IOI_NAMES, IOI_PLACES, NUMBER_WORDS, NUMERAL_MEMBERS, NUMERAL_VERBS

__all__ = ["TASKS", "ListSpec", "numbered_list_prompt", "spell"]

_LIST_LENGTH = 4  # listed members before the query member
_MAX_NUMBER = 12  # start 1..8, so the answer runs up to 12
# What precedes an answer in the paper's prompts: enough context for a BPE to merge as it would
# in the whole prompt (pre-tokenizers split at spaces, so the last words decide).
_CONTEXT = "Desk done in 4. Sun done in"

#: Words outside the built-in pools, tried in order; a tokenizer keeps those it encodes evenly.
EXTRA_NOUNS: tuple[str, ...] = (
    "Lamp", "Shoe", "Fork", "Kite", "Drum", "Tent", "Vase", "Sock", "Bowl", "Nest", "Milk",
    "Cake", "Frog", "Leaf", "Moon", "Rope",
)
EXTRA_VERBS: tuple[str, ...] = ("went", "saw", "gave", "has", "is", "came", "ran", "sat")
EXTRA_NUMBER_WORDS: tuple[str, ...] = (
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)
_ALL_NUMBER_WORDS = NUMBER_WORDS + EXTRA_NUMBER_WORDS
_MAX_NUMERAL = 99
_FIXED = {"longer": 6, "shorter": 2, "filler": 2}  # shapes of a shifted task

#: The shifts of both list tasks and what each changes.
SHIFTS: dict[str, str] = {
    "none": SHARED_SHIFT_MEANINGS["none"],
    "members": "list members never seen in lists (names and other nouns)",
    "template": SHARED_SHIFT_MEANINGS["template"],
    "numbers": "numbers above the usual range (answers past 12, or past the tokenizer's limit)",
    "longer": "longer lists (5-8 listed members; 6 in a shifted task)",
    "shorter": "shorter lists (2-3 listed members; 2 in a shifted task)",
    "filler": SHARED_SHIFT_MEANINGS["filler"],
    "order": "lists counting down instead of up",
}


@dataclass(frozen=True)
class ListSpec(AnswerForm):
    """The words and forms of a numbered-list task (the paper's, or fitted to a tokenizer)."""

    members: tuple[str, ...] = NUMERAL_MEMBERS
    verbs: tuple[str, ...] = NUMERAL_VERBS
    max_number: int = _MAX_NUMBER  # the largest number in a list or an answer
    answer_space: bool = True  # " 5" after "done in"; False: "5" after "done in "
    mask: str | None = None  # a masked variant: the prompt ends "done in [MASK]."


def numbered_list_prompt(members: list[str], verb: str, numbers: list[str]) -> str:
    """``"Van done in 1. Hat done in 2. ... Sun done in"``: listed members, then the query."""
    listed = " ".join(
        f"{member} {verb} in {number}." for member, number in zip(members, numbers, strict=False)
    )
    return f"{listed} {members[len(numbers)]} {verb} in"


def spell(number: int, words: bool) -> str:
    """``5`` or ``five`` (number words run to twenty)."""
    return _ALL_NUMBER_WORDS[number - 1] if words else str(number)


# ----------------------------------------------------------------------------- prompts


def _template(task: str, seed: int, index: int, spec: ListSpec) -> tuple[list[str], str]:
    rng = prompt_rng(task, seed, "template", index)
    members = rng.sample(spec.members, _LIST_LENGTH + 1)
    verb = rng.choice(spec.verbs)
    return members, verb


def _build(
    task: str, words: bool, n_prompts: int, seed: int, n_reference: int, spec: ListSpec
) -> Task:
    prompts: list[str] = []
    correct: list[str] = []
    distractors: list[str] = []
    ending = spec.ending()
    max_start = spec.max_number - _LIST_LENGTH
    templates = [_template(task, seed, i, spec) for i in range(n_prompts)]
    for i, (members, verb) in enumerate(templates):
        start = prompt_rng(task, seed, "start", i).randint(1, max_start)
        numbers = [spell(start + k, words) for k in range(_LIST_LENGTH)]
        prompts.append(numbered_list_prompt(members, verb, numbers) + ending)
        correct.append(spec.answer(spell(start + _LIST_LENGTH, words)))
        distractors.append(spec.answer(spell(start + _LIST_LENGTH - 1, words)))
    corrupted: list[str] = []
    for j in range(n_reference):
        members, verb = templates[j % n_prompts]
        rng = prompt_rng(task, seed, "corrupted", j)
        numbers = [spell(rng.randint(1, spec.max_number), words) for _ in range(_LIST_LENGTH)]
        corrupted.append(numbered_list_prompt(members, verb, numbers) + ending)
    kind = "number words" if words else "numerals"
    description = (
        f"Numbered list in {kind}: four members numbered in sequence, then a fifth member; "
        "the answer is the next number, the distractor the last listed number. Corrupted "
        "reference: the same lists with random numbers."
    )
    return Task(
        name=task,
        prompts=tuple(prompts),
        correct=tuple(correct),
        distractors=tuple(distractors),
        corrupted=tuple(corrupted),
        position="auto" if spec.mask is None else "mask",
        seed=seed,
        description=description,
    )


# ----------------------------------------------------------------------------- fitting


def _fit_numbers(
    tokenizer: Any, words: bool, kind: str
) -> tuple[int, bool, tuple[DroppedWord, ...], str]:
    """The largest ``m`` such that 1..m are single-token answers and equally long in a list,
    the answer form that reaches it, the numbers dropped, and the first failure's reason."""
    label = "numbers"
    in_list = [len(token_ids(tokenizer, f" in {spell(k, words)}.")) for k in range(1, 13)]
    best: tuple[int, bool, tuple[DroppedWord, ...], str] | None = None
    for space in ANSWER_FORMS:
        context = answer_context(_CONTEXT, space, kind)
        reached, failures = 0, []
        for k in range(1, _MAX_NUMBER + 1):
            answer = (" " if space else "") + spell(k, words)
            why = answer_refusal(tokenizer, answer, context)
            if why is None and in_list[k - 1] != in_list[0]:
                why = (f"'in {spell(k, words)}.' is {in_list[k - 1]} tokens in a list "
                       f"(1 makes {in_list[0]})")
            if why is not None:
                failures.append(DroppedWord(label, spell(k, words), why))
            elif not failures:
                reached = k
        dropped = tuple(failures)
        first = failures[0].reason if failures else ""
        if best is None or reached > best[0]:
            best = (reached, space, dropped, first)
    assert best is not None
    return best


def _fit(name: str, words: bool, tokenizer: Any, kind: str, mask: str | None) -> Fitted:
    top, space, dropped_numbers, first_failure = _fit_numbers(tokenizer, words, kind)
    if top < _LIST_LENGTH + 1:
        raise cannot_build(
            name, tokenizer,
            f"a list needs the numbers 1..{_LIST_LENGTH + 1} as single-token answers of equal "
            f"length, but only 1..{top} are ({first_failure})",
            dropped_numbers,
        )
    members = fit_pool(tokenizer, "list members", NUMERAL_MEMBERS, (AT_START, AFTER_SPACE))
    verbs = fit_pool(tokenizer, "verbs", NUMERAL_VERBS)
    if len(members.kept) < _LIST_LENGTH + 1:
        raise cannot_build(
            name, tokenizer,
            f"a list needs {_LIST_LENGTH + 1} members of one token count, but only "
            f"{len(members.kept)} share one", members.dropped,
        )
    if not verbs.kept:
        raise cannot_build(name, tokenizer, "no list verb is in the vocabulary", verbs.dropped)
    spec = ListSpec(members.kept, verbs.kept, top, space, mask)
    changes = masked_change(mask, "done in")
    changes += answer_change(space, spell(5, words), "done in", tokenizer) if mask is None else []
    if space is False and mask is not None:
        changes.append(f"answers without a leading space ({spell(5, words)!r})")
    if top < _MAX_NUMBER:
        left = ", ".join(spell(k, words) for k in range(top + 1, _MAX_NUMBER + 1))
        changes.append(f"numbers 1..{top} (not 1..{_MAX_NUMBER}; left out: {left})")
    changes += pool_change("list members", members, len(NUMERAL_MEMBERS))
    changes += pool_change("verbs", verbs, len(NUMERAL_VERBS))
    dropped = dropped_numbers + members.dropped + verbs.dropped
    return Fitted(spec, tuple(changes), dropped)


# ----------------------------------------------------------------------------- shifts


def _pools(
    task: str, words: bool, shift: str, spec: ListSpec, tokenizer: Any, kind: str
) -> ShiftPools:
    members, verbs, top = spec.members, spec.verbs, spec.max_number
    low, high = 1, spec.max_number - _LIST_LENGTH
    need = _LIST_LENGTH + 1
    if shift == "members":
        members = preferring(tokenizer, "list members", EXTRA_NOUNS, IOI_NAMES,
                             (AT_START, AFTER_SPACE), _LIST_LENGTH + 1, exclude=spec.members)
    elif shift == "template":
        verbs = shift_pool(tokenizer, "verbs", EXTRA_VERBS, (AFTER_SPACE,), exclude=spec.verbs)
    elif shift == "numbers":
        top = _extra_numbers(spec, words, tokenizer, kind)
        low, high = spec.max_number - _LIST_LENGTH + 1, top - _LIST_LENGTH
        if high < low:
            raise cannot_shift(task, shift, tuple(SHIFTS), tokenizer,
                               f"no number above {spec.max_number} is a single-token answer")
    elif shift == "longer":
        need = 9 + 1
        high = spec.max_number - _FIXED["longer"]
    elif shift == "order":
        low, high = _LIST_LENGTH + 1, spec.max_number
    names = places = ()
    if shift == "filler":
        names = shift_pool(tokenizer, "names", IOI_NAMES, (AT_START, AFTER_SPACE))
        places = shift_pool(tokenizer, "places", IOI_PLACES, (AFTER_SPACE,))
        if not names or not places:
            raise cannot_shift(task, shift, tuple(SHIFTS), tokenizer,
                               "no filler name or place fits")
    if len(members) < need or not verbs:
        raise cannot_shift(task, shift, tuple(SHIFTS), tokenizer,
                           f"{len(members)} list members and {len(verbs)} verbs fit "
                           f"(need {need} and 1)")
    return ShiftPools(task, shift, spec, members, verbs, places, names, low, high, top)


def _extra_numbers(spec: ListSpec, words: bool, tokenizer: Any, kind: str) -> int:
    """The largest ``m`` such that every number up to ``m`` past the usual range is a
    single-token answer of the usual length in a list."""
    limit = len(_ALL_NUMBER_WORDS) if words else _MAX_NUMERAL
    if tokenizer is None:
        return limit
    usual = len(token_ids(tokenizer, f" in {spell(1, words)}."))
    context = answer_context(_CONTEXT, spec.answer_space, kind)
    top = spec.max_number
    for k in range(spec.max_number + 1, limit + 1):
        answer = spec.answer(spell(k, words))
        if answer_refusal(tokenizer, answer, context) is not None:
            break
        if len(token_ids(tokenizer, f" in {spell(k, words)}.")) != usual:
            break
        top = k
    return top


def _draw(words: bool, pools: ShiftPools, c: Chooser, fixed: bool) -> Example:
    spec, shift = pools.spec, pools.shift
    assert isinstance(spec, ListSpec)
    length = _LIST_LENGTH
    if shift == "longer":
        length = _FIXED["longer"] if fixed else c.integer(5, 8)
    elif shift == "shorter":
        length = _FIXED["shorter"] if fixed else c.integer(2, 3)
    members = c.sample(pools.members, length + 1)
    verb = c.choice(pools.verbs)
    low, high = pools.low_start, pools.high_start
    if shift == "longer":
        high = spec.max_number - length
    start = c.integer(low, high)
    step = -1 if shift == "order" else 1
    numbers = [start + step * k for k in range(length)]
    filler = None
    if shift == "filler":
        at = _FIXED["filler"] if fixed else c.integer(0, length)
        filler = (at, f"{c.choice(pools.names)} went to the {c.choice(pools.places)}.")
    shuffled = [c.integer(1, pools.top) for _ in range(length)]

    def text(values: list[int]) -> str:
        entries = [f"{m} {verb} in {spell(v, words)}." for m, v in zip(members, values,
                                                                        strict=False)]
        if filler is not None:
            entries.insert(filler[0], filler[1])
        return " ".join([*entries, f"{members[length]} {verb} in"]) + spec.ending()

    return Example(
        prompt=text(numbers),
        correct=spec.answer(spell(start + step * length, words)),
        distractor=spec.answer(spell(numbers[-1], words)),
        corrupted=text(shuffled),
    )


# ----------------------------------------------------------------------------- the tasks


def _numbered_list(name: str, *, words: bool, order: int, example: str) -> BuiltinTask:
    def paper(mask: str | None) -> ListSpec:
        return ListSpec(mask=mask)

    def fit(tokenizer: Any, kind: str, mask: str | None) -> Fitted:
        return _fit(name, words, tokenizer, kind, mask)

    def build(n_prompts: int, seed: int, n_reference: int, spec: ListSpec) -> Task:
        return _build(name, words, n_prompts, seed, n_reference, spec)

    def pools(shift: str, spec: ListSpec, tokenizer: Any, kind: str) -> ShiftPools:
        return _pools(name, words, shift, spec, tokenizer, kind)

    def draw(pools: ShiftPools, chooser: Chooser, fixed: bool) -> Example:
        return _draw(words, pools, chooser, fixed)

    return BuiltinTask(
        name=name, order=order, before_mask="done in", paper=paper, fit=fit, build=build,
        shifts=SHIFTS, pools=pools, draw=draw,
        strategy_doc=f"One-prompt {name} tasks: {example}.",
    )


TASKS = (
    _numbered_list("numerals", words=False, order=10,
                   example="``Van done in 1. ... Sun done in`` -> `` 5``"),
    _numbered_list("numwords", words=True, order=20,
                   example="``Van done in one. ... Sun done in`` -> `` five``"),
)
