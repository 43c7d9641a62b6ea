"""Indirect object identification: ``When Mary and John went to the store, John gave a drink to``
-> `` Mary`` (the indirect object) over `` John`` (the subject).

Even prompts are ABBA ("When A and B ..., B gave ... to"), odd prompts BABA; the corrupted
reference replaces the three names by three other distinct names. For a tokenizer the names are
narrowed to single-token answers and the places and objects to words of one token count.
Shifts: unseen names, unseen objects, other templates, an inserted filler place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..fit import (
    AFTER_SPACE,
    ANSWER_FORMS,
    AT_START,
    PoolFit,
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
from ..task import Task
from ..words import IOI_NAMES, IOI_OBJECTS, IOI_PLACES, NUMERAL_MEMBERS

__all__ = ["TASKS", "IoiSpec", "ioi_prompt"]

_NAME = "ioi"
# What precedes an answer in the paper's prompts (see lists.py's _CONTEXT).
_CONTEXT = "When Mary and John went to the store, John gave a drink to"

#: Words outside the built-in pools, tried in order; a tokenizer keeps those it encodes evenly.
EXTRA_NAMES: tuple[str, ...] = (
    "Olivia", "Noah", "Liam", "Emma", "Lucy", "Oscar", "Hugo", "Chloe", "Ethan", "Zoe",
)
EXTRA_OBJECTS: tuple[str, ...] = ("cake", "pen", "hat", "cup", "key", "map", "coin", "lamp")
_TEMPLATES = (
    "When {a} and {b} went to the {p}, {s} gave a {o} to",
    "{a} and {b} went to the {p}. {s} gave a {o} to",
    "When {a} and {b} went to the {p}, {s} gave the {o} to",
)
_FILLER = "When {a} and {b} went to the {p} and the {q}, {s} gave a {o} to"

#: The shifts of IOI and what each changes.
SHIFTS: dict[str, str] = {
    "none": SHARED_SHIFT_MEANINGS["none"],
    "names": "IOI names never seen in IOI",
    "objects": "IOI objects never seen in IOI",
    "template": SHARED_SHIFT_MEANINGS["template"],
    "filler": SHARED_SHIFT_MEANINGS["filler"],
}


@dataclass(frozen=True)
class IoiSpec(AnswerForm):
    """The words and forms of the IOI task (the paper's, or fitted to a tokenizer)."""

    names: tuple[str, ...] = IOI_NAMES
    places: tuple[str, ...] = IOI_PLACES
    objects: tuple[str, ...] = IOI_OBJECTS
    answer_space: bool = True
    mask: str | None = None


def ioi_prompt(first: str, second: str, subject: str, place: str, obj: str) -> str:
    """``"When A and B went to the PLACE, S gave a OBJECT to"``."""
    return f"When {first} and {second} went to the {place}, {subject} gave a {obj} to"


def _build(n_prompts: int, seed: int, n_reference: int, spec: IoiSpec) -> Task:
    prompts: list[str] = []
    correct: list[str] = []
    distractors: list[str] = []
    scenes: list[tuple[str, str, str, str]] = []
    ending = spec.ending()
    for i in range(n_prompts):
        rng = prompt_rng(_NAME, seed, "clean", i)
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
        first, second, third = prompt_rng(_NAME, seed, "corrupted", j).sample(pool, 3)
        corrupted.append(ioi_prompt(first, second, third, place, obj) + ending)
    description = (
        "Indirect object identification: 'When A and B went to the PLACE, B gave a OBJECT to' "
        "-> A (the indirect object) over B (the subject); even prompts ABBA, odd prompts BABA. "
        "Corrupted reference: the three names replaced by three other distinct names."
    )
    return Task(
        name=_NAME,
        prompts=tuple(prompts),
        correct=tuple(correct),
        distractors=tuple(distractors),
        corrupted=tuple(corrupted),
        position="auto" if spec.mask is None else "mask",
        seed=seed,
        description=description,
    )


def _fit(tokenizer: Any, kind: str, mask: str | None) -> Fitted:
    best: tuple[PoolFit, bool] | None = None
    for space in ANSWER_FORMS:
        context = answer_context(_CONTEXT, space, kind)

        def accept(word: str, space: bool = space, context: str | None = context) -> str | None:
            return answer_refusal(tokenizer, (" " if space else "") + word, context)

        names = fit_pool(tokenizer, "names", IOI_NAMES, accept=accept)
        if best is None or len(names.kept) > len(best[0].kept):
            best = (names, space)
    assert best is not None
    names, space = best
    if len(names.kept) < 5:  # the subject, the indirect object and three corrupting names
        raise cannot_build(
            _NAME, tokenizer,
            f"IOI needs 5 names that are single-token answers, but only {len(names.kept)} are",
            names.dropped,
        )
    places = fit_pool(tokenizer, "places", IOI_PLACES)
    objects = fit_pool(tokenizer, "objects", IOI_OBJECTS)
    for label, fit in (("place", places), ("object", objects)):
        if not fit.kept:
            raise cannot_build(_NAME, tokenizer, f"no {label} is in the vocabulary", fit.dropped)
    spec = IoiSpec(names.kept, places.kept, objects.kept, space, mask)
    changes = masked_change(mask, "to")
    if mask is None:
        changes += answer_change(space, names.kept[0], "gave a drink to", tokenizer)
    elif not space:
        changes.append(f"answers without a leading space ({names.kept[0]!r})")
    changes += pool_change("names", names, len(IOI_NAMES))
    changes += pool_change("places", places, len(IOI_PLACES))
    changes += pool_change("objects", objects, len(IOI_OBJECTS))
    return Fitted(spec, tuple(changes), names.dropped + places.dropped + objects.dropped)


def _pools(shift: str, spec: IoiSpec, tokenizer: Any, kind: str) -> ShiftPools:
    names, objects, places = spec.names, spec.objects, spec.places
    context = answer_context("gave a drink to", spec.answer_space, kind)

    def answerable(name: str) -> str | None:  # a name is an answer too: one token
        return answer_refusal(tokenizer, spec.answer(name), context)

    if shift == "names":
        names = preferring(tokenizer, "names", EXTRA_NAMES, NUMERAL_MEMBERS, (AFTER_SPACE,), 5,
                           exclude=spec.names, accept=answerable)
    elif shift == "template":
        names = shift_pool(tokenizer, "names", spec.names, (AT_START, AFTER_SPACE),
                           accept=answerable)
    elif shift == "objects":
        objects = preferring(tokenizer, "objects", EXTRA_OBJECTS, NUMERAL_MEMBERS,
                             (AFTER_SPACE,), 1, exclude=spec.objects)
    if len(names) < 5 or not objects or not places:
        raise cannot_shift(_NAME, shift, tuple(SHIFTS), tokenizer,
                           f"{len(names)} names, {len(objects)} objects and {len(places)} places "
                           "fit (need 5, 1 and 1)")
    return ShiftPools(_NAME, shift, spec, members=names, verbs=objects, places=places)


def _draw(pools: ShiftPools, c: Chooser, fixed: bool) -> Example:
    spec = pools.spec
    io_name, s_name = c.sample(pools.members, 2)
    place, obj = c.choice(pools.places), c.choice(pools.verbs)
    abba = c.choice((True, False))
    template = _TEMPLATES[0]
    if pools.shift == "template":
        template = _TEMPLATES[1] if fixed else c.choice(_TEMPLATES[1:])
    elif pools.shift == "filler":
        template = _FILLER
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


def _paper(mask: str | None) -> IoiSpec:
    return IoiSpec(mask=mask)


TASKS = (
    BuiltinTask(
        name=_NAME, order=30, before_mask="to", paper=_paper, fit=_fit, build=_build,
        shifts=SHIFTS, pools=_pools, draw=_draw,
        strategy_doc="One-prompt IOI tasks: ``When Mary and John went to the store, John gave a "
                     "drink to``.",
    ),
)
