"""Tasks: prompts with a correct and a distractor answer, built-ins, task files and encoding.

Pure Python (no torch at import). ``resolve_task`` turns what a user wrote (a Task, a built-in
name or a task file path) into a :class:`Task`; ``encode_task`` checks it against a tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .builtin import BUILTIN_TASKS, DEFAULT_N_PROMPTS, builtin_task
from .encode import EncodedTask, encode_task, resolve_position_rule
from .files import TASK_FILE_SUFFIXES, load_task_file, save_task_file
from .task import (
    MAX_N_PROMPTS,
    POSITION_RULES,
    DroppedWord,
    Task,
    TaskAdaptation,
    TaskError,
    TaskValidationError,
    check_count,
)

__all__ = [
    "BUILTIN_TASKS",
    "DEFAULT_N_PROMPTS",
    "MAX_N_PROMPTS",
    "POSITION_RULES",
    "TASK_FILE_SUFFIXES",
    "DroppedWord",
    "EncodedTask",
    "Task",
    "TaskAdaptation",
    "TaskError",
    "TaskValidationError",
    "builtin_task",
    "encode_task",
    "load_task_file",
    "resolve_position_rule",
    "resolve_task",
    "save_task_file",
]


def resolve_task(
    spec: Task | str | os.PathLike[str],
    *,
    n_prompts: int | None = None,
    seed: int = 0,
    search_paths: Iterable[str | os.PathLike[str]] = (),
    tokenizer: Any = None,
    kind: str | None = None,
) -> Task:
    """A :class:`Task` from a Task (returned as is), a built-in name, or a task file path.

    ``n_prompts`` (default :data:`DEFAULT_N_PROMPTS`; 1 to :data:`MAX_N_PROMPTS`, never 0),
    ``seed``, ``tokenizer`` and ``kind`` apply to built-ins only: with the model's tokenizer
    and kind (``"causal"``/``"masked"``) a built-in is built to fit it (see ``builtin_task``).
    A task file is used as written. A relative path is tried as given, then under each of
    ``search_paths`` in order. Any task of more than :data:`MAX_N_PROMPTS` prompts is refused.
    """
    where = f"task {spec!r}" if isinstance(spec, str) else "resolve_task"
    if n_prompts is not None:
        check_count("n_prompts", n_prompts, where=where, limit=MAX_N_PROMPTS)
    if isinstance(spec, Task):
        return _bounded(spec)
    if isinstance(spec, str) and spec in BUILTIN_TASKS:
        return builtin_task(
            spec,
            n_prompts=DEFAULT_N_PROMPTS if n_prompts is None else n_prompts,
            seed=seed,
            tokenizer=tokenizer,
            kind=kind,
        )
    if not isinstance(spec, (str, os.PathLike)):
        raise TaskError(
            f"Cannot make a task from {type(spec).__name__} {spec!r}; give a Task, a built-in "
            f"name ({', '.join(BUILTIN_TASKS)}) or a task file path"
        )
    path = Path(spec)
    candidates = [path]
    if not path.is_absolute():
        candidates += [Path(base) / path for base in search_paths]
    for candidate in candidates:
        if candidate.is_file():
            return _bounded(load_task_file(candidate))
    looked = ", ".join(str(c) for c in candidates)
    if path.suffix.lower() in TASK_FILE_SUFFIXES:
        raise TaskError(f"Task file {str(spec)!r} not found (looked in: {looked})")
    raise TaskError(
        f"Unknown task {str(spec)!r}: not a built-in task ({', '.join(BUILTIN_TASKS)}) and no "
        f"task file found (looked in: {looked}); give a built-in name or a path ending in "
        f"{', '.join(TASK_FILE_SUFFIXES)}"
    )


def _bounded(task: Task) -> Task:
    """``task``, unless it has more prompts than one gate analyses."""
    if len(task) > MAX_N_PROMPTS or len(task.corrupted) > MAX_N_PROMPTS:
        raise TaskError(
            f"Task {task.name!r} has {len(task):,} prompts and {len(task.corrupted):,} corrupted "
            f"prompts; a gate analyses at most {MAX_N_PROMPTS:,} of each (memory grows with "
            f"the prompt count). Use task.subset({MAX_N_PROMPTS}) or split it into several tasks"
        )
    return task
