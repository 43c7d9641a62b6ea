"""What a built-in task declares: a :class:`BuiltinTask`, made by the task's own module.

A module of ``tasks/builtin/`` is a built-in task (or a family of them, such as the numbered
lists): it writes its prompts, fits its words to a tokenizer, draws its shifted examples, and
declares all of it as ``TASKS = (BuiltinTask(...), ...)``. ``tasks.builtin`` collects them;
``builtin_task``, ``shifted_task`` and ``pytest_circuits.strategies`` run the steps every task
shares and call the task for the rest. This module holds only the types the task modules and
those callers have in common, so neither imports the other's internals. Pure Python.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

# the kinds of model a built-in task is written for (the last token, or a mask)
from ..identity import MODEL_KINDS
from .task import DroppedWord, Task

__all__ = [
    "MODEL_KINDS",
    "SHARED_SHIFT_MEANINGS",
    "AnswerForm",
    "BuiltinTask",
    "Chooser",
    "Example",
    "Fitted",
    "ShiftPools",
    "prompt_rng",
]

T = TypeVar("T")

#: Meanings of the shifts more than one task has. A shifted task's description quotes its
#: shift's meaning (and so does its fingerprint), so a shift name means one thing for every task.
SHARED_SHIFT_MEANINGS: dict[str, str] = {
    "none": "the built-in distribution",
    "template": "other sentence templates (unseen list verbs; IOI without 'When', or 'the')",
    "filler": "an inserted filler clause ('Mary went to the park.'; IOI: 'and the park')",
}


def prompt_rng(task: str, seed: int, kind: str, index: int) -> random.Random:
    """A generator for one prompt, independent of how many prompts are drawn (so a task with
    more prompts extends one with fewer)."""
    return random.Random(f"pytest-circuits/{task}/{seed}/{kind}/{index}")


class AnswerForm:
    """How a task's prompts end and its answers read; mixed into each task's word specification
    (a frozen dataclass with the fields ``answer_space`` and ``mask``)."""

    answer_space: bool  # " 5" after "done in"; False: "5" after "done in "
    mask: str | None  # a masked variant: the prompt ends "... [MASK]."

    def ending(self) -> str:
        """What follows the prompt's last word: nothing, a space, or `` [MASK].``."""
        if self.mask is not None:
            return f" {self.mask}."
        return "" if self.answer_space else " "

    def answer(self, text: str) -> str:
        return f" {text}" if self.answer_space else text


@dataclass(frozen=True)
class Fitted:
    """A task's words fitted to a tokenizer: the specification, what changed (in words, for
    ``TaskAdaptation.changes``; empty when the paper's words fit as they are) and the words
    left out."""

    spec: AnswerForm
    changes: tuple[str, ...]
    dropped: tuple[DroppedWord, ...]


class Chooser(Protocol):
    """Where an example's random choices come from (a seeded generator, or Hypothesis)."""

    def choice(self, options: Sequence[T]) -> T: ...

    def integer(self, low: int, high: int) -> int: ...

    def sample(self, options: Sequence[T], k: int) -> list[T]: ...


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
    spec: AnswerForm
    members: tuple[str, ...] = ()  # list members (lists) or names (IOI)
    verbs: tuple[str, ...] = ()  # list verbs (lists) or objects (IOI)
    places: tuple[str, ...] = ()  # filler places (lists) or places (IOI)
    names: tuple[str, ...] = ()  # filler names (lists)
    low_start: int = 1
    high_start: int = 1
    top: int = 12  # the largest number of a corrupted list


@dataclass(frozen=True)
class BuiltinTask:
    """One built-in task: how its prompts are written, fitted, shifted and drawn.

    ``spec`` below is the task's own word specification (an :class:`AnswerForm` dataclass);
    only the task's own functions look inside it.
    """

    name: str  # what users write: builtin_task("numerals"), task: numerals
    #: Its place in ``BUILTIN_TASKS`` (lists and error messages, and the zoo's training order).
    order: int
    #: The words before the mask of the masked variant, quoted in its adaptation ("done in").
    before_mask: str
    #: The paper's words, with the mask token of a masked variant (None for a causal one).
    paper: Callable[[str | None], AnswerForm]
    #: ``(tokenizer, kind, mask) -> Fitted``: the words that keep the task's prompts equal in
    #: length and its answers single tokens; raises TaskValidationError when too few do.
    fit: Callable[[Any, str, str | None], Fitted]
    #: ``(n_prompts, seed, n_reference, spec) -> Task``: the prompts, deterministic in the seed.
    build: Callable[[int, int, int, Any], Task]
    #: Shift name -> what it changes, in words; "none" (the built-in distribution) first.
    shifts: Mapping[str, str]
    #: ``(shift, spec, tokenizer, kind) -> ShiftPools``: what ``shift`` draws from.
    pools: Callable[[str, Any, Any, str], ShiftPools]
    #: ``(pools, chooser, fixed) -> Example``: one shifted example; ``fixed`` keeps one shape for
    #: every draw (a whole task), otherwise shapes vary (Hypothesis).
    draw: Callable[[ShiftPools, Chooser, bool], Example]
    #: The docstring of its Hypothesis strategy in ``pytest_circuits.strategies``.
    strategy_doc: str

    def __post_init__(self) -> None:  # coding errors in a task module
        if next(iter(self.shifts), None) != "none":
            raise TypeError(f"built-in task {self.name!r}: its first shift must be 'none'")
        for shift, meaning in self.shifts.items():
            shared = SHARED_SHIFT_MEANINGS.get(shift, meaning)
            if meaning != shared:
                raise TypeError(f"built-in task {self.name!r}: shift {shift!r} must mean "
                                f"{shared!r} (SHARED_SHIFT_MEANINGS), not {meaning!r}")

    @property
    def strategy_name(self) -> str:
        """The name of its strategy function in ``pytest_circuits.strategies``."""
        return self.name.replace("-", "_")
