"""The paper's built-in tasks (numerals, numwords, IOI): one module each, collected into BUILTINS.

A module of this package that defines ``TASKS`` (a tuple of :class:`BuiltinTask`) holds built-in
tasks: its prompts, how its words are fitted to a tokenizer, its shifts and how a shifted
example is drawn (which ``pytest_circuits.strategies`` turns into a Hypothesis strategy). Adding
a built-in task means adding its module; ``builtin_task``, task names in gates and YAML files,
``shifted_task``, ``assert_shift_robust`` and the strategies find it here.

Every prompt of one built-in task has one sentence shape; only single words are swapped, so all
prompts (clean and corrupted) have the same token count under a word-level tokenizer and, with
the paper's word pools (common words that are single GPT-2 tokens after a space), under GPT-2's
BPE. Given a tokenizer, ``builtin_task`` keeps only the words and numbers that stay single tokens
(or the same count) for it, picks the answer form it encodes as one token (``" 5"`` after
``"done in"``, or ``"5"`` after ``"done in "``), and records what it changed on
``Task.adaptation`` (see ``fit.py``); masked models get ``... done in [MASK].`` variants.

Prompt ``i`` is drawn from its own ``random.Random`` seeded with ``(task, seed, i)``, so a task
with more prompts extends one with fewer: ``builtin_task(t, 64).subset(32) == builtin_task(t, 32)``.
"""

from __future__ import annotations

import dataclasses
import pkgutil
from importlib import import_module
from typing import Any

from ..fit import check_fits, mask_token, masked_change, tokenizer_name
from ..registry import MODEL_KINDS, AnswerForm, BuiltinTask
from ..task import Task, TaskAdaptation, TaskError, check_count
from ..words import (
    IOI_NAMES,
    IOI_OBJECTS,
    IOI_PLACES,
    NUMBER_WORDS,
    NUMERAL_MEMBERS,
    NUMERAL_VERBS,
)
from .ioi import IoiSpec, ioi_prompt
from .lists import ListSpec, numbered_list_prompt, spell

__all__ = [
    "BUILTINS",
    "BUILTIN_TASKS",
    "DEFAULT_N_PROMPTS",
    "IOI_NAMES",
    "IOI_OBJECTS",
    "IOI_PLACES",
    "MODEL_KINDS",
    "MAX_GENERATED_PROMPTS",
    "NUMBER_WORDS",
    "NUMERAL_MEMBERS",
    "NUMERAL_VERBS",
    "BuiltinTask",
    "IoiSpec",
    "ListSpec",
    "builtin_task",
    "check_count",
    "fit_builtin",
    "ioi_prompt",
    "numbered_list_prompt",
    "spell",
]

#: How many prompts a built-in task draws when nobody says otherwise (one place for the default).
DEFAULT_N_PROMPTS = 32
#: A bound on generating prompts (the zoo trains on 30,000 a task); a gate analyses at most
#: MAX_N_PROMPTS of them.
MAX_GENERATED_PROMPTS = 1_000_000


def _discover() -> dict[str, BuiltinTask]:
    found: list[BuiltinTask] = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        tasks = getattr(import_module(f"{__name__}.{module.name}"), "TASKS", None)
        if not (isinstance(tasks, tuple) and tasks
                and all(isinstance(task, BuiltinTask) for task in tasks)):
            raise TypeError(f"{__name__}.{module.name} defines no TASKS; a module here holds "
                            "built-in tasks and must define TASKS = (BuiltinTask(...), ...)")
        found += tasks
    found.sort(key=lambda task: (task.order, task.name))
    registry: dict[str, BuiltinTask] = {}
    for task in found:
        if task.name in registry:
            raise TypeError(f"built-in task {task.name!r} is defined twice")  # a coding error
        registry[task.name] = task
    return registry


#: Built-in task name -> its declaration, in ``order``.
BUILTINS: dict[str, BuiltinTask] = _discover()
BUILTIN_TASKS: tuple[str, ...] = tuple(BUILTINS)


def fit_builtin(name: str, tokenizer: Any, kind: str) -> tuple[AnswerForm, TaskAdaptation | None]:
    """The specification of built-in ``name`` for ``tokenizer`` and what was adapted (None
    when nothing was). Without a tokenizer: the paper's words, masked when ``kind`` says so."""
    task = BUILTINS[name]
    mask = mask_token(tokenizer, kind)
    spec = task.paper(mask)
    if tokenizer is None:
        changes = masked_change(mask, task.before_mask)
        adaptation = (
            TaskAdaptation("none (the paper's words)", kind, tuple(changes)) if changes else None
        )
        return spec, adaptation
    fitted = task.fit(tokenizer, kind, mask)
    if not fitted.changes:
        return fitted.spec, None
    return fitted.spec, TaskAdaptation(tokenizer_name(tokenizer), kind, fitted.changes,
                                       fitted.dropped)


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
    if name not in BUILTINS:
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
    if kind not in MODEL_KINDS:
        raise TaskError(f"{where}: kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    spec, adaptation = fit_builtin(name, tokenizer, kind)
    task = BUILTINS[name].build(n_prompts, seed, n_reference, spec)
    if adaptation is not None:
        task = dataclasses.replace(task, adaptation=adaptation)
    if tokenizer is not None:
        check_fits(task, tokenizer, kind)
    return task
