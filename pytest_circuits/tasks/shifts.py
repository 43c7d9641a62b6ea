"""Shifted variants of the built-in tasks: unseen words, other templates, other list shapes.

A distilled student can hold up on the exact test prompts and fall apart when they shift a
little. Each shift here is a way to draw one example (prompt, answers, and a corrupted prompt of
the same shape) away from the built-in distribution, from word pools fitted to the tokenizer
(``fit.py``), so answers stay single tokens and clean and corrupted prompts equal in length.
One drawing code serves two callers through a :class:`Chooser`: ``shifted_task`` draws with a
seeded ``random.Random`` and fixed shapes (one token length for the whole task, as the engine
needs), and ``pytest_circuits.strategies`` draws with Hypothesis (shapes vary, and failures
shrink). Pure Python.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .builtin import (
    _LIST_LENGTH,
    BUILTIN_TASKS,
    DEFAULT_N_PROMPTS,
    IOI_NAMES,
    IOI_PLACES,
    KINDS,
    NUMBER_WORDS,
    NUMERAL_MEMBERS,
    IoiSpec,
    ListSpec,
    check_count,
)
from .fit import AFTER_SPACE, AT_START, _answer_refusal, _context, fit_builtin, fit_pool, token_ids
from .task import MAX_N_PROMPTS, Task, TaskError, TaskValidationError

__all__ = [
    "SHIFTS",
    "Chooser",
    "Example",
    "RandomChooser",
    "ShiftPools",
    "draw_example",
    "shift_pools",
    "shifted_task",
]

T = TypeVar("T")

_LIST_SHIFTS = ("none", "members", "template", "numbers", "longer", "shorter", "filler", "order")
#: The shifts each built-in task supports.
SHIFTS: dict[str, tuple[str, ...]] = {
    "numerals": _LIST_SHIFTS,
    "numwords": _LIST_SHIFTS,
    "ioi": ("none", "names", "objects", "template", "filler"),
}
#: What each shift changes, in words (docs, errors and the gate's report).
SHIFT_MEANINGS: dict[str, str] = {
    "none": "the built-in distribution",
    "members": "list members never seen in lists (names and other nouns)",
    "template": "other sentence templates (unseen list verbs; IOI without 'When', or 'the')",
    "numbers": "numbers above the usual range (answers past 12, or past the tokenizer's limit)",
    "longer": "longer lists (5-8 listed members; 6 in a shifted task)",
    "shorter": "shorter lists (2-3 listed members; 2 in a shifted task)",
    "filler": "an inserted filler clause ('Mary went to the park.'; IOI: 'and the park')",
    "order": "lists counting down instead of up",
    "names": "IOI names never seen in IOI",
    "objects": "IOI objects never seen in IOI",
}

#: Words outside the built-in pools, tried in order; a tokenizer keeps those it encodes evenly.
EXTRA_NOUNS: tuple[str, ...] = (
    "Lamp", "Shoe", "Fork", "Kite", "Drum", "Tent", "Vase", "Sock", "Bowl", "Nest", "Milk",
    "Cake", "Frog", "Leaf", "Moon", "Rope",
)
EXTRA_NAMES: tuple[str, ...] = (
    "Olivia", "Noah", "Liam", "Emma", "Lucy", "Oscar", "Hugo", "Chloe", "Ethan", "Zoe",
)
EXTRA_OBJECTS: tuple[str, ...] = ("cake", "pen", "hat", "cup", "key", "map", "coin", "lamp")
EXTRA_VERBS: tuple[str, ...] = ("went", "saw", "gave", "has", "is", "came", "ran", "sat")
EXTRA_NUMBER_WORDS: tuple[str, ...] = (
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)
_ALL_NUMBER_WORDS = NUMBER_WORDS + EXTRA_NUMBER_WORDS
_MAX_NUMERAL = 99
_FIXED = {"longer": 6, "shorter": 2, "filler": 2}  # shapes of a shifted task
_IOI_TEMPLATES = (
    "When {a} and {b} went to the {p}, {s} gave a {o} to",
    "{a} and {b} went to the {p}. {s} gave a {o} to",
    "When {a} and {b} went to the {p}, {s} gave the {o} to",
)
_IOI_FILLER = "When {a} and {b} went to the {p} and the {q}, {s} gave a {o} to"


class Chooser(Protocol):
    """Where an example's random choices come from (a seeded generator, or Hypothesis)."""

    def choice(self, options: Sequence[T]) -> T: ...

    def integer(self, low: int, high: int) -> int: ...

    def sample(self, options: Sequence[T], k: int) -> list[T]: ...


class RandomChooser:
    """Choices from a ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def sample(self, options: Sequence[T], k: int) -> list[T]:
        return self.rng.sample(list(options), k)


@dataclass(frozen=True)
class Example:
    """One drawn prompt with its answers and a corrupted prompt of the same shape."""

    prompt: str
    correct: str
    distractor: str
    corrupted: str


@dataclass(frozen=True)
class ShiftPools:
    """The words and numbers one shift of one task draws from, fitted to a tokenizer."""

    task: str
    shift: str
    spec: ListSpec | IoiSpec
    members: tuple[str, ...] = ()  # list members (lists) or names (IOI)
    verbs: tuple[str, ...] = ()  # list verbs (lists) or objects (IOI)
    places: tuple[str, ...] = ()  # filler places (lists) or places (IOI)
    names: tuple[str, ...] = ()  # filler names (lists)
    low_start: int = 1
    high_start: int = 1
    top: int = 12  # the largest number of a corrupted list


def _spell(number: int, words: bool) -> str:
    return _ALL_NUMBER_WORDS[number - 1] if words else str(number)


def _unavailable(task: str, shift: str, tokenizer: Any, why: str) -> TaskValidationError:
    from .fit import tokenizer_name

    return TaskValidationError(
        f"Shift {shift!r} of task {task!r} cannot be drawn for tokenizer "
        f"{tokenizer_name(tokenizer)!r}: {why}; pick another shift (of "
        f"{', '.join(SHIFTS[task])}) or write the shifted prompts as a task file"
    )


def _pool(
    tokenizer: Any, label: str, words: Sequence[str], positions: Any, exclude: Sequence[str] = (),
    accept: Any = None,
) -> tuple[str, ...]:
    chosen = tuple(w for w in words if w not in exclude)
    if tokenizer is None:
        return chosen
    return fit_pool(tokenizer, label, chosen, positions, accept=accept).kept


def _preferring(
    tokenizer: Any, label: str, first: Sequence[str], fallback: Sequence[str], positions: Any,
    need: int, exclude: Sequence[str] = (), accept: Any = None,
) -> tuple[str, ...]:
    """``first``'s fitting words, topped up with ``fallback``'s when fewer than ``need`` fit
    (a toy vocabulary such as the zoo's has no unseen names, only other nouns)."""
    kept = _pool(tokenizer, label, first, positions, exclude, accept)
    if len(kept) >= need:
        return kept
    return _pool(tokenizer, label, tuple(first) + tuple(fallback), positions, exclude, accept)


def _check_shift(task: str, shift: str) -> None:
    if task not in BUILTIN_TASKS:
        raise TaskError(
            f"Unknown built-in task {task!r}; shifts exist for {', '.join(BUILTIN_TASKS)}"
        )
    if shift not in SHIFTS[task]:
        raise TaskError(
            f"Unknown shift {shift!r} for task {task!r}; its shifts are {', '.join(SHIFTS[task])}"
        )


def shift_pools(
    task: str, shift: str, tokenizer: Any = None, kind: str | None = None
) -> ShiftPools:
    """The pools ``shift`` of built-in ``task`` draws from for ``tokenizer`` (or the paper's
    words without one). Raises :class:`TaskValidationError` when the tokenizer leaves too few."""
    _check_shift(task, shift)
    if kind is None:
        kind = "masked" if getattr(tokenizer, "mask_token", None) else "causal"
    if kind not in KINDS:
        raise TaskError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    spec, _ = fit_builtin(task, tokenizer, kind)
    if isinstance(spec, IoiSpec):
        return _ioi_pools(task, shift, spec, tokenizer, kind)
    return _list_pools(task, shift, spec, tokenizer, kind)


def _list_pools(task: str, shift: str, spec: ListSpec, tokenizer: Any, kind: str) -> ShiftPools:
    words = task == "numwords"
    members, verbs, top = spec.members, spec.verbs, spec.max_number
    low, high = 1, spec.max_number - _LIST_LENGTH
    need = _LIST_LENGTH + 1
    if shift == "members":
        members = _preferring(tokenizer, "list members", EXTRA_NOUNS, IOI_NAMES,
                              (AT_START, AFTER_SPACE), _LIST_LENGTH + 1, exclude=spec.members)
    elif shift == "template":
        verbs = _pool(tokenizer, "verbs", EXTRA_VERBS, (AFTER_SPACE,), exclude=spec.verbs)
    elif shift == "numbers":
        top = _extra_numbers(spec, words, tokenizer, kind)
        low, high = spec.max_number - _LIST_LENGTH + 1, top - _LIST_LENGTH
        if high < low:
            raise _unavailable(task, shift, tokenizer,
                               f"no number above {spec.max_number} is a single-token answer")
    elif shift == "longer":
        need = 9 + 1
        high = spec.max_number - _FIXED["longer"]
    elif shift == "order":
        low, high = _LIST_LENGTH + 1, spec.max_number
    names = places = ()
    if shift == "filler":
        names = _pool(tokenizer, "names", IOI_NAMES, (AT_START, AFTER_SPACE))
        places = _pool(tokenizer, "places", IOI_PLACES, (AFTER_SPACE,))
        if not names or not places:
            raise _unavailable(task, shift, tokenizer, "no filler name or place fits")
    if len(members) < need or not verbs:
        raise _unavailable(task, shift, tokenizer,
                           f"{len(members)} list members and {len(verbs)} verbs fit "
                           f"(need {need} and 1)")
    return ShiftPools(task, shift, spec, members, verbs, places, names, low, high, top)


def _extra_numbers(spec: ListSpec, words: bool, tokenizer: Any, kind: str) -> int:
    """The largest ``m`` such that every number up to ``m`` past the usual range is a
    single-token answer of the usual length in a list."""
    limit = len(_ALL_NUMBER_WORDS) if words else _MAX_NUMERAL
    if tokenizer is None:
        return limit
    usual = len(token_ids(tokenizer, f" in {_spell(1, words)}."))
    context = _context("Desk done in 4. Sun done in", spec.answer_space, kind)
    top = spec.max_number
    for k in range(spec.max_number + 1, limit + 1):
        answer = spec.answer(_spell(k, words))
        if _answer_refusal(tokenizer, answer, context) is not None:
            break
        if len(token_ids(tokenizer, f" in {_spell(k, words)}.")) != usual:
            break
        top = k
    return top


def _ioi_pools(task: str, shift: str, spec: IoiSpec, tokenizer: Any, kind: str) -> ShiftPools:
    names, objects, places = spec.names, spec.objects, spec.places
    context = _context("gave a drink to", spec.answer_space, kind)

    def answerable(name: str) -> str | None:  # a name is an answer too: one token
        return _answer_refusal(tokenizer, spec.answer(name), context)

    if shift == "names":
        names = _preferring(tokenizer, "names", EXTRA_NAMES, NUMERAL_MEMBERS, (AFTER_SPACE,), 5,
                            exclude=spec.names, accept=answerable)
    elif shift == "template":
        names = _pool(tokenizer, "names", spec.names, (AT_START, AFTER_SPACE), accept=answerable)
    elif shift == "objects":
        objects = _preferring(tokenizer, "objects", EXTRA_OBJECTS, NUMERAL_MEMBERS,
                              (AFTER_SPACE,), 1, exclude=spec.objects)
    if len(names) < 5 or not objects or not places:
        raise _unavailable(task, shift, tokenizer,
                           f"{len(names)} names, {len(objects)} objects and {len(places)} places "
                           "fit (need 5, 1 and 1)")
    return ShiftPools(task, shift, spec, members=names, verbs=objects, places=places)


def draw_example(pools: ShiftPools, chooser: Chooser, *, fixed: bool = False) -> Example:
    """One example of ``pools``' shift; ``fixed`` keeps the shape (list length, filler place,
    template) the same for every draw, so a whole task has one token length."""
    if isinstance(pools.spec, IoiSpec):
        return _ioi_example(pools, pools.spec, chooser, fixed)
    return _list_example(pools, pools.spec, chooser, fixed)


def _list_example(pools: ShiftPools, spec: ListSpec, c: Chooser, fixed: bool) -> Example:
    words, shift = pools.task == "numwords", pools.shift
    length = _LIST_LENGTH
    if shift == "longer":
        length = _FIXED["longer"] if fixed else c.integer(5, 8)
    elif shift == "shorter":
        length = _FIXED["shorter"] if fixed else c.integer(2, 3)
    members = c.sample(pools.members, length + 1)
    verb = c.choice(pools.verbs)
    low, high = pools.low_start, pools.high_start
    if shift == "longer":
        high = pools.spec.max_number - length if isinstance(pools.spec, ListSpec) else high
    start = c.integer(low, high)
    step = -1 if shift == "order" else 1
    numbers = [start + step * k for k in range(length)]
    filler = None
    if shift == "filler":
        at = _FIXED["filler"] if fixed else c.integer(0, length)
        filler = (at, f"{c.choice(pools.names)} went to the {c.choice(pools.places)}.")
    shuffled = [c.integer(1, pools.top) for _ in range(length)]

    def text(values: list[int]) -> str:
        entries = [f"{m} {verb} in {_spell(v, words)}." for m, v in zip(members, values,
                                                                          strict=False)]
        if filler is not None:
            entries.insert(filler[0], filler[1])
        return " ".join([*entries, f"{members[length]} {verb} in"]) + spec.ending()

    return Example(
        prompt=text(numbers),
        correct=spec.answer(_spell(start + step * length, words)),
        distractor=spec.answer(_spell(numbers[-1], words)),
        corrupted=text(shuffled),
    )


def _ioi_example(pools: ShiftPools, spec: IoiSpec, c: Chooser, fixed: bool) -> Example:
    io_name, s_name = c.sample(pools.members, 2)
    place, obj = c.choice(pools.places), c.choice(pools.verbs)
    abba = c.choice((True, False))
    template = _IOI_TEMPLATES[0]
    if pools.shift == "template":
        template = _IOI_TEMPLATES[1] if fixed else c.choice(_IOI_TEMPLATES[1:])
    elif pools.shift == "filler":
        template = _IOI_FILLER
    other_place = c.choice([p for p in pools.places if p != place] or [place])
    others = c.sample([n for n in pools.members if n not in (io_name, s_name)], 3)

    def text(a: str, b: str, s: str) -> str:
        return template.format(a=a, b=b, s=s, p=place, q=other_place, o=obj) + spec.ending()

    first, second = (io_name, s_name) if abba else (s_name, io_name)
    return Example(
        prompt=text(first, second, s_name),
        correct=spec.answer(io_name),
        distractor=spec.answer(s_name),
        corrupted=text(*others),
    )


def example_task(pools: ShiftPools, examples: Sequence[Example], seed: int | None = None) -> Task:
    """A task of ``examples`` (corrupted prompt ``i`` is example ``i``'s)."""
    name = pools.task if pools.shift == "none" else f"{pools.task}-{pools.shift}"
    return Task(
        name=name,
        prompts=tuple(e.prompt for e in examples),
        correct=tuple(e.correct for e in examples),
        distractors=tuple(e.distractor for e in examples),
        corrupted=tuple(e.corrupted for e in examples),
        position="auto" if pools.spec.mask is None else "mask",
        seed=seed,
        description=f"{pools.task} shifted: {SHIFT_MEANINGS[pools.shift]}.",
    )


def shifted_task(
    name: str,
    shift: str,
    n_prompts: int = DEFAULT_N_PROMPTS,
    seed: int = 0,
    *,
    tokenizer: Any = None,
    kind: str | None = None,
) -> Task:
    """``n_prompts`` prompts of built-in ``name`` under ``shift``, one shape for all (so they
    encode to one length), drawn from a seed; named ``"{name}-{shift}"``."""
    check_count("n_prompts", n_prompts, where=f"shifted_task({name!r})", limit=MAX_N_PROMPTS)
    pools = shift_pools(name, shift, tokenizer, kind)
    examples = [
        draw_example(pools, RandomChooser(random.Random(f"pytest-circuits/shift/{name}/{shift}/"
                                                        f"{seed}/{i}")), fixed=True)
        for i in range(n_prompts)
    ]
    task = example_task(pools, examples, seed)
    if tokenizer is not None:
        from .fit import check_fits

        check_fits(task, tokenizer, "masked" if pools.spec.mask else "causal")
    return task
