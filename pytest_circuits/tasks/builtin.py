"""The paper's built-in tasks (numerals, numwords, IOI), generated deterministically from a seed.

Every prompt of one built-in task has one sentence shape; only single words are swapped, so all
prompts (clean and corrupted) have the same token count under a word-level tokenizer and, with
the word pools below (common words that are single GPT-2 tokens after a space), under GPT-2's BPE.
Given a tokenizer, ``builtin_task`` keeps only the words and numbers that stay single tokens
(or the same count) for it, picks the answer form it encodes as one token (``" 5"`` after
``"done in"``, or ``"5"`` after ``"done in "``), and records what it changed on
``Task.adaptation`` (see ``fit.py``); masked models get ``... done in [MASK].`` variants.

Prompt ``i`` is drawn from its own ``random.Random`` seeded with ``(task, seed, i)``, so a task
with more prompts extends one with fewer: ``builtin_task(t, 64).subset(32) == builtin_task(t, 32)``.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from .task import Task, TaskError

__all__ = [
    "BUILTIN_TASKS",
    "IOI_NAMES",
    "IOI_OBJECTS",
    "IOI_PLACES",
    "NUMBER_WORDS",
    "NUMERAL_MEMBERS",
    "NUMERAL_VERBS",
    "IoiSpec",
    "ListSpec",
    "builtin_task",
    "ioi_prompt",
    "numbered_list_prompt",
]

BUILTIN_TASKS: tuple[str, ...] = ("numerals", "numwords", "ioi")
#: How many prompts a built-in task draws when nobody says otherwise (one place for the default).
DEFAULT_N_PROMPTS = 32

#: Short, common, capitalised nouns used as list members in the numerals/numwords tasks.
NUMERAL_MEMBERS: tuple[str, ...] = (
    "Van", "Hat", "Ring", "Desk", "Sun", "Cup", "Box", "Car", "Pen", "Bag", "Key", "Map",
    "Bed", "Door", "Book", "Ball", "Bell", "Boat", "Bird", "Fish", "Tree", "Cat", "Dog",
    "Star", "Rock", "Road", "Ship", "Wall", "Gate", "Coin",
)
#: The verbs of the three list templates ("Van done in 1.", "Van lost in 1.", "Van born in 1.").
NUMERAL_VERBS: tuple[str, ...] = ("done", "lost", "born")
#: Number words for numwords; ``NUMBER_WORDS[k - 1]`` spells ``k`` (1..12).
NUMBER_WORDS: tuple[str, ...] = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve",
)
_LIST_LENGTH = 4  # listed members before the query member
_MAX_NUMBER = 12  # start 1..8, so the answer runs up to 12
#: Kinds of model a built-in task is written for: the prediction at the last token, or at a mask.
KINDS: tuple[str, ...] = ("causal", "masked")
#: A bound on generating prompts (the zoo trains on 30,000 a task); a gate analyses at most
#: MAX_N_PROMPTS of them.
MAX_GENERATED_PROMPTS = 1_000_000

#: Common first names from the IOI literature, each a single GPT-2 token after a space.
IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sarah", "Paul", "Anna", "Mark", "Lisa", "David",
    "Kate", "Peter", "Emily", "Jack", "Laura", "Michael", "Rachel", "Ryan", "Amy", "Eric",
    "Alice", "Kevin", "Jane", "Adam", "Rose", "Sean", "Maria", "Scott", "Ruby", "Frank",
    "Grace", "George", "Helen", "Henry", "Jason", "Simon", "Victoria", "William", "Robert",
)
IOI_PLACES: tuple[str, ...] = ("store", "park", "school", "office", "garden", "house", "station")
IOI_OBJECTS: tuple[str, ...] = ("drink", "book", "ball", "gift", "snack", "ring")


@dataclass(frozen=True)
class ListSpec:
    """The words and forms of a numbered-list task (the paper's, or fitted to a tokenizer)."""

    members: tuple[str, ...] = NUMERAL_MEMBERS
    verbs: tuple[str, ...] = NUMERAL_VERBS
    max_number: int = _MAX_NUMBER  # the largest number in a list or an answer
    answer_space: bool = True  # " 5" after "done in"; False: "5" after "done in "
    mask: str | None = None  # a masked variant: the prompt ends "done in [MASK]."

    def ending(self) -> str:
        """What follows ``... Sun done in``: nothing, a space, or `` [MASK].``."""
        if self.mask is not None:
            return f" {self.mask}."
        return "" if self.answer_space else " "

    def answer(self, text: str) -> str:
        return f" {text}" if self.answer_space else text


@dataclass(frozen=True)
class IoiSpec:
    """The words and forms of the IOI task (the paper's, or fitted to a tokenizer)."""

    names: tuple[str, ...] = IOI_NAMES
    places: tuple[str, ...] = IOI_PLACES
    objects: tuple[str, ...] = IOI_OBJECTS
    answer_space: bool = True
    mask: str | None = None

    def ending(self) -> str:
        if self.mask is not None:
            return f" {self.mask}."
        return "" if self.answer_space else " "

    def answer(self, text: str) -> str:
        return f" {text}" if self.answer_space else text


def _rng(task: str, seed: int, kind: str, index: int) -> random.Random:
    """A generator for one prompt, independent of how many prompts are drawn."""
    return random.Random(f"pytest-circuits/{task}/{seed}/{kind}/{index}")


def numbered_list_prompt(members: list[str], verb: str, numbers: list[str]) -> str:
    """``"Van done in 1. Hat done in 2. ... Sun done in"``: listed members, then the query."""
    listed = " ".join(
        f"{member} {verb} in {number}." for member, number in zip(members, numbers, strict=False)
    )
    return f"{listed} {members[len(numbers)]} {verb} in"


def ioi_prompt(first: str, second: str, subject: str, place: str, obj: str) -> str:
    """``"When A and B went to the PLACE, S gave a OBJECT to"``."""
    return f"When {first} and {second} went to the {place}, {subject} gave a {obj} to"


def spell(number: int, words: bool) -> str:
    """``5`` or ``five``."""
    return NUMBER_WORDS[number - 1] if words else str(number)


def _list_template(task: str, seed: int, index: int, spec: ListSpec) -> tuple[list[str], str]:
    rng = _rng(task, seed, "template", index)
    members = rng.sample(spec.members, _LIST_LENGTH + 1)
    verb = rng.choice(spec.verbs)
    return members, verb


def _list_task(
    task: str, n_prompts: int, seed: int, n_reference: int, words: bool, spec: ListSpec
) -> Task:
    prompts: list[str] = []
    correct: list[str] = []
    distractors: list[str] = []
    ending = spec.ending()
    max_start = spec.max_number - _LIST_LENGTH
    templates = [_list_template(task, seed, i, spec) for i in range(n_prompts)]
    for i, (members, verb) in enumerate(templates):
        start = _rng(task, seed, "start", i).randint(1, max_start)
        numbers = [spell(start + k, words) for k in range(_LIST_LENGTH)]
        prompts.append(numbered_list_prompt(members, verb, numbers) + ending)
        correct.append(spec.answer(spell(start + _LIST_LENGTH, words)))
        distractors.append(spec.answer(spell(start + _LIST_LENGTH - 1, words)))
    corrupted: list[str] = []
    for j in range(n_reference):
        members, verb = templates[j % n_prompts]
        rng = _rng(task, seed, "corrupted", j)
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


def _ioi_task(n_prompts: int, seed: int, n_reference: int, spec: IoiSpec) -> Task:
    prompts: list[str] = []
    correct: list[str] = []
    distractors: list[str] = []
    scenes: list[tuple[str, str, str, str]] = []
    ending = spec.ending()
    for i in range(n_prompts):
        rng = _rng("ioi", seed, "clean", i)
        io_name, s_name = rng.sample(spec.names, 2)
        place, obj = rng.choice(spec.places), rng.choice(spec.objects)
        scenes.append((place, obj, io_name, s_name))
        if i % 2 == 0:  # ABBA: "When A and B ..., B gave ... to" -> A
            prompts.append(ioi_prompt(io_name, s_name, s_name, place, obj) + ending)
        else:  # BABA: "When B and A ..., B gave ... to" -> A
            prompts.append(ioi_prompt(s_name, io_name, s_name, place, obj) + ending)
        correct.append(spec.answer(io_name))
        distractors.append(spec.answer(s_name))
    corrupted: list[str] = []
    for j in range(n_reference):
        place, obj, io_name, s_name = scenes[j % n_prompts]
        pool = [name for name in spec.names if name not in (io_name, s_name)]
        first, second, third = _rng("ioi", seed, "corrupted", j).sample(pool, 3)
        corrupted.append(ioi_prompt(first, second, third, place, obj) + ending)
    description = (
        "Indirect object identification: 'When A and B went to the PLACE, B gave a OBJECT to' "
        "-> A (the indirect object) over B (the subject); even prompts ABBA, odd prompts BABA. "
        "Corrupted reference: the three names replaced by three other distinct names."
    )
    return Task(
        name="ioi",
        prompts=tuple(prompts),
        correct=tuple(correct),
        distractors=tuple(distractors),
        corrupted=tuple(corrupted),
        position="auto" if spec.mask is None else "mask",
        seed=seed,
        description=description,
    )


def check_count(label: str, value: Any, *, where: str, limit: int) -> int:
    """``value`` as a count in 1..``limit``; a :class:`TaskError` naming the fix otherwise
    (0 and negatives are errors, never replaced by a default)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskError(f"{where}: {label} must be an integer, got {value!r}")
    if value < 1:
        raise TaskError(f"{where}: {label} must be at least 1, got {value}")
    if value > limit:
        raise TaskError(
            f"{where}: {label}={value} is more than the limit of {limit:,}; use at most "
            f"{limit:,} (split a larger set into several tasks)"
        )
    return value


def builtin_task(
    name: str,
    n_prompts: int = DEFAULT_N_PROMPTS,
    seed: int = 0,
    n_reference: int | None = None,
    *,
    tokenizer: Any = None,
    kind: str | None = None,
) -> Task:
    """Generate the built-in task ``name`` with ``n_prompts`` prompts.

    ``n_reference`` corrupted reference prompts (default: as many as prompts); corrupted prompt
    ``j`` reuses the template of clean prompt ``j mod n_prompts`` with the answer-relevant words
    (numbers or names) randomised.

    With ``tokenizer`` (a Hugging Face tokenizer), the task is built for it: words that would
    change the prompt length or split an answer are left out, the answer takes the form the
    tokenizer makes one token, and ``task.adaptation`` says what changed (None when the paper's
    prompts fit as they are). ``kind`` is ``"causal"`` (answer after the last token) or
    ``"masked"`` (``... Sun done in [MASK].``, read at the mask); by default masked when the
    tokenizer has a mask token. Raises :class:`TaskValidationError` naming the words that failed
    when no such task exists for the tokenizer.
    """
    if name not in BUILTIN_TASKS:
        raise TaskError(
            f"Unknown built-in task {name!r}; the built-in tasks are "
            f"{', '.join(BUILTIN_TASKS)} (or give a path to a task file)"
        )
    where = f"builtin_task({name!r})"
    check_count("n_prompts", n_prompts, where=where, limit=MAX_GENERATED_PROMPTS)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskError(f"{where}: seed must be an integer, got {seed!r}")
    if n_reference is None:
        n_reference = n_prompts
    check_count("n_reference", n_reference, where=where, limit=MAX_GENERATED_PROMPTS)
    if kind is None:
        kind = "masked" if getattr(tokenizer, "mask_token", None) else "causal"
    if kind not in KINDS:
        raise TaskError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    from .fit import fit_builtin

    spec, adaptation = fit_builtin(name, tokenizer, kind)
    if isinstance(spec, IoiSpec):
        task = _ioi_task(n_prompts, seed, n_reference, spec)
    else:
        task = _list_task(name, n_prompts, seed, n_reference, name == "numwords", spec)
    if adaptation is not None:
        task = dataclasses.replace(task, adaptation=adaptation)
    if tokenizer is not None:
        from .fit import check_fits

        check_fits(task, tokenizer, kind)
    return task
