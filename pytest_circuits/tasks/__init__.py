"""Tasks: prompts with a correct and a distractor answer, built-ins, task files and encoding.

Pure Python (no torch at import). ``resolve_task`` turns what a user wrote (a Task, a built-in
name or a task file path) into a :class:`Task`; ``encode_task`` checks it against a tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .builtin import BUILTIN_TASKS, DEFAULT_N_PROMPTS, builtin_task
from .encode import EncodedTask, encode_task, resolve_position_rule
from .files import TASK_FILE_SUFFIXES, load_task_file, save_task_file
from .task import POSITION_RULES, Task, TaskError, TaskValidationError

__all__ = [
    "BUILTIN_TASKS",
    "DEFAULT_N_PROMPTS",
    "POSITION_RULES",
    "TASK_FILE_SUFFIXES",
    "EncodedTask",
    "Task",
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
    n_prompts: int = DEFAULT_N_PROMPTS,
    seed: int = 0,
    search_paths: Iterable[str | os.PathLike[str]] = (),
) -> Task:
    """A :class:`Task` from a Task (returned as is), a built-in name, or a task file path.

    ``n_prompts`` and ``seed`` apply to built-ins only; a task file is used as written. A
    relative path is tried as given, then under each of ``search_paths`` in order.
    """
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, str) and spec in BUILTIN_TASKS:
        return builtin_task(spec, n_prompts=n_prompts, seed=seed)
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
            return load_task_file(candidate)
    looked = ", ".join(str(c) for c in candidates)
    if path.suffix.lower() in TASK_FILE_SUFFIXES:
        raise TaskError(f"Task file {str(spec)!r} not found (looked in: {looked})")
    raise TaskError(
        f"Unknown task {str(spec)!r}: not a built-in task ({', '.join(BUILTIN_TASKS)}) and no "
        f"task file found (looked in: {looked}); give a built-in name or a path ending in "
        f"{', '.join(TASK_FILE_SUFFIXES)}"
    )
