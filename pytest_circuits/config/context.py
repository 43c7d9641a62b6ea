"""The context a gate runs in, held in one context variable: who records its results, the run's
settings and sweep method, where sweep progress goes, the session's analysis cache and where
sweeps run (in process, or on a Ray cluster).

The plugin installs a fresh :class:`RunContext` when a session starts (so a second session in
the same process, a pytester run say, shares nothing with the first) and a copy with the test's
recorder, settings and progress line around each test. Code outside any installed context (a
script, a notebook, the CLI) sees one process-wide context, as it would a module global.
Torch-free and free of project imports: every layer reads it.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CacheStore",
    "ProgressCallback",
    "Recorder",
    "RunContext",
    "RunSettings",
    "changed",
    "current",
    "install",
    "uninstall",
    "using",
]

#: Receives each GateResult a gate records (the plugin's recorder adds it to the test's report).
Recorder = Callable[[Any], None]
#: ``callback(model_name, done, total)``: ``done`` of ``total`` component ablations measured.
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RunSettings:
    """What the plugin tells the gates of the test that calls them: the ``--circuits-n-prompts``
    and ``--circuits-seed`` (or marker, or ini) values a gate uses when it is given a task name
    and no ``n_prompts=``/``seed=`` of its own, and whether the run needs a GPU."""

    n_prompts: int | None = None
    seed: int | None = None
    require_gpu: bool = False


@dataclass(eq=False)
class CacheStore:
    """One session's analysis cache: the directory of its disk entries (None: memory only),
    whether caching is on at all, the results memoised in memory (by key) and the warnings
    already given (so a broken directory or entry warns once, not per gate).

    Mutable on purpose: the contexts of a session's tests share their session's store.
    """

    directory: Path | None = None
    enabled: bool = True
    memory: dict[str, Any] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class RunContext:
    """Everything a running gate reads from its surroundings (see the module docstring)."""

    recorder: Recorder | None = None
    settings: RunSettings = field(default_factory=RunSettings)
    progress: ProgressCallback | None = None
    cache: CacheStore = field(default_factory=CacheStore)
    #: the run's sweep method (``--circuits-method``, ini key or marker; None: unset, each
    #: gate picks by its models' size) and where it came from
    method: tuple[str | None, str] = (None, "default")
    #: where exact sweeps run their replays: None in this process (the default), else an
    #: executor with ``map`` (see ``analysis.ablation.Executor``; ``--circuits-ray`` installs
    #: the Ray one from ``pytest_circuits.distributed``)
    executor: Any = None

    def replace(self, **changes: Any) -> RunContext:
        """A copy with ``changes`` (``recorder=``, ``settings=``, ``progress=``, ``cache=``,
        ``method=``, ``executor=``)."""
        return dataclasses.replace(self, **changes)


#: The context of code that runs outside any installed one.
_OUTSIDE = RunContext()

_current: contextvars.ContextVar[RunContext] = contextvars.ContextVar(
    "pytest_circuits_run_context", default=_OUTSIDE
)


def current() -> RunContext:
    """The context of the code running now."""
    return _current.get()


def install(context: RunContext) -> contextvars.Token[RunContext]:
    """Make ``context`` current until :func:`uninstall` is given the returned token (for a
    lifetime that spans hooks, such as a pytest session; prefer :func:`using` in a block)."""
    if not isinstance(context, RunContext):
        raise TypeError(f"install() takes a RunContext, got {type(context).__name__}; build one "
                        "with RunContext(...) or current().replace(...)")
    return _current.set(context)


def uninstall(token: contextvars.Token[RunContext]) -> None:
    """Restore the context that was current before the :func:`install` that gave ``token``."""
    _current.reset(token)


@contextmanager
def using(context: RunContext) -> Iterator[RunContext]:
    """Make ``context`` current for the block."""
    token = install(context)
    try:
        yield context
    finally:
        uninstall(token)


@contextmanager
def changed(**changes: Any) -> Iterator[RunContext]:
    """The current context with ``changes`` (see :meth:`RunContext.replace`) for the block."""
    with using(current().replace(**changes)) as context:
        yield context
