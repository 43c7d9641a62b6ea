"""The paper's built-in tasks (numerals, numwords, IOI), generated deterministically from a seed.

Every prompt of one built-in task has one sentence shape; only single words are swapped, so all
prompts (clean and corrupted) have the same token count under a word-level tokenizer and, with
the word pools below (common words that are single GPT-2 tokens after a space), under GPT-2's BPE.

Prompt ``i`` is drawn from its own ``random.Random`` seeded with ``(task, seed, i)``, so a task
with more prompts extends one with fewer: ``builtin_task(t, 64).subset(32) == builtin_task(t, 32)``.
"""

from __future__ import annotations

import random

from .task import Task, TaskError

__all__ = [
    "BUILTIN_TASKS",
    "IOI_NAMES",
    "IOI_OBJECTS",
    "IOI_PLACES",
    "NUMBER_WORDS",
    "NUMERAL_MEMBERS",
    "NUMERAL_VERBS",
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
_MAX_START = 8  # start 1..8, so the answer runs up to 12

#: Common first names from the IOI literature, each a single GPT-2 token after a space.
IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sarah", "Paul", "Anna", "Mark", "Lisa", "David",
    "Kate", "Peter", "Emily", "Jack", "Laura", "Michael", "Rachel", "Ryan", "Amy", "Eric",
    "Alice", "Kevin", "Jane", "Adam", "Rose", "Sean", "Maria", "Scott", "Ruby", "Frank",
    "Grace", "George", "Helen", "Henry", "Jason", "Simon", "Victoria", "William", "Robert",
)
IOI_PLACES: tuple[str, ...] = ("store", "park", "school", "office", "garden", "house", "station")
IOI_OBJECTS: tuple[str, ...] = ("drink", "book", "ball", "gift", "snack", "ring")


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


def _spell(number: int, words: bool) -> str:
    return NUMBER_WORDS[number - 1] if words else str(number)


def _list_template(task: str, seed: int, index: int) -> tuple[list[str], str]:
    rng = _rng(task, seed, "template", index)
    members = rng.sample(NUMERAL_MEMBERS, _LIST_LENGTH + 1)
    verb = rng.choice(NUMERAL_VERBS)
    return members, verb


def _list_task(task: str, n_prompts: int, seed: int, n_reference: int, words: bool) -> Task:
    prompts: list[str] = []
    correct: list[str] = []
    distractors: list[str] = []
    templates = [_list_template(task, seed, i) for i in range(n_prompts)]
    for i, (members, verb) in enumerate(templates):
        start = _rng(task, seed, "start", i).randint(1, _MAX_START)
        numbers = [_spell(start + k, words) for k in range(_LIST_LENGTH)]
        prompts.append(numbered_list_prompt(members, verb, numbers))
        correct.append(" " + _spell(start + _LIST_LENGTH, words))
        distractors.append(" " + _spell(start + _LIST_LENGTH - 1, words))
    corrupted: list[str] = []
    top = _MAX_START + _LIST_LENGTH
    for j in range(n_reference):
        members, verb = templates[j % n_prompts]
        rng = _rng(task, seed, "corrupted", j)
        numbers = [_spell(rng.randint(1, top), words) for _ in range(_LIST_LENGTH)]
        corrupted.append(numbered_list_prompt(members, verb, numbers))
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
        position="auto",
        seed=seed,
        description=description,
    )


def _ioi_task(n_prompts: int, seed: int, n_reference: int) -> Task:
    prompts: list[str] = []
    correct: list[str] = []
    distractors: list[str] = []
    scenes: list[tuple[str, str, str, str]] = []
    for i in range(n_prompts):
        rng = _rng("ioi", seed, "clean", i)
        io_name, s_name = rng.sample(IOI_NAMES, 2)
        place, obj = rng.choice(IOI_PLACES), rng.choice(IOI_OBJECTS)
        scenes.append((place, obj, io_name, s_name))
        if i % 2 == 0:  # ABBA: "When A and B ..., B gave ... to" -> A
            prompts.append(ioi_prompt(io_name, s_name, s_name, place, obj))
        else:  # BABA: "When B and A ..., B gave ... to" -> A
            prompts.append(ioi_prompt(s_name, io_name, s_name, place, obj))
        correct.append(" " + io_name)
        distractors.append(" " + s_name)
    corrupted: list[str] = []
    for j in range(n_reference):
        place, obj, io_name, s_name = scenes[j % n_prompts]
        pool = [name for name in IOI_NAMES if name not in (io_name, s_name)]
        first, second, third = _rng("ioi", seed, "corrupted", j).sample(pool, 3)
        corrupted.append(ioi_prompt(first, second, third, place, obj))
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
        position="auto",
        seed=seed,
        description=description,
    )


def builtin_task(
    name: str, n_prompts: int = DEFAULT_N_PROMPTS, seed: int = 0, n_reference: int | None = None
) -> Task:
    """Generate the built-in task ``name`` with ``n_prompts`` prompts.

    ``n_reference`` corrupted reference prompts (default: as many as prompts); corrupted prompt
    ``j`` reuses the template of clean prompt ``j mod n_prompts`` with the answer-relevant words
    (numbers or names) randomised.
    """
    if name not in BUILTIN_TASKS:
        raise TaskError(
            f"Unknown built-in task {name!r}; the built-in tasks are "
            f"{', '.join(BUILTIN_TASKS)} (or give a path to a task file)"
        )
    for label, value in (("n_prompts", n_prompts), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TaskError(f"builtin_task({name!r}): {label} must be an integer, got {value!r}")
    if n_prompts < 1:
        raise TaskError(f"builtin_task({name!r}): n_prompts must be at least 1, got {n_prompts}")
    if n_reference is None:
        n_reference = n_prompts
    if isinstance(n_reference, bool) or not isinstance(n_reference, int) or n_reference < 1:
        raise TaskError(
            f"builtin_task({name!r}): n_reference must be a positive integer, got {n_reference!r}"
        )
    if name == "ioi":
        return _ioi_task(n_prompts, seed, n_reference)
    return _list_task(name, n_prompts, seed, n_reference, words=(name == "numwords"))
