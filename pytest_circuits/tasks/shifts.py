"""Shifted variants of the built-in tasks: unseen words, other templates, other list shapes.

A distilled student can hold up on the exact test prompts and fall apart when they shift a
little. Each shift is a way to draw one example (prompt, answers, and a corrupted prompt of
the same shape) away from the built-in distribution, from word pools fitted to the tokenizer
(``fit.py``), so answers stay single tokens and clean and corrupted prompts equal in length.
Each built-in task's module (``tasks/builtin/``) declares its shifts, their pools and how one
example is drawn; this module runs them. One drawing code serves two callers through a
:class:`Chooser`: ``shifted_task`` draws with a seeded ``random.Random`` and fixed shapes (one
token length for the whole task, as the engine needs), and ``pytest_circuits.strategies`` draws
with Hypothesis (shapes vary, and failures shrink). Pure Python.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .builtin import BUILTIN_TASKS, BUILTINS, DEFAULT_N_PROMPTS, fit_builtin
from .fit import check_fits
from .registry import MODEL_KINDS, Chooser, Example, ShiftPools, T
from .task import MAX_N_PROMPTS, Task, TaskError, check_count

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

#: The shifts each built-in task supports (declared by the task's module).
SHIFTS: dict[str, tuple[str, ...]] = {name: tuple(task.shifts) for name, task in BUILTINS.items()}
#: What each shift changes, in words (docs, errors and the gate's report).
SHIFT_MEANINGS: dict[str, str] = {
    shift: meaning for task in BUILTINS.values() for shift, meaning in task.shifts.items()
}


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
    if kind not in MODEL_KINDS:
        raise TaskError(f"kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    spec, _ = fit_builtin(task, tokenizer, kind)
    return BUILTINS[task].pools(shift, spec, tokenizer, kind)


def draw_example(pools: ShiftPools, chooser: Chooser, *, fixed: bool = False) -> Example:
    """One example of ``pools``' shift; ``fixed`` keeps the shape (list length, filler place,
    template) the same for every draw, so a whole task has one token length."""
    return BUILTINS[pools.task].draw(pools, chooser, fixed)


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
        description=f"{pools.task} shifted: {BUILTINS[pools.task].shifts[pools.shift]}.",
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
        check_fits(task, tokenizer, "masked" if pools.spec.mask else "causal")
    return task
