"""Where a long sweep reports how far it is: one callback per context, torch-free.

The sweep calls :func:`report` after each measured component; the CLI's progress bar and the
plugin's terminal line install a callback with :func:`reporting`. Nothing is reported when no
callback is installed, so library users see no output they did not ask for.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: ``callback(model_name, done, total)``: ``done`` of ``total`` component ablations measured.
Callback = Callable[[str, int, int], None]

_callback: contextvars.ContextVar[Callback | None] = contextvars.ContextVar(
    "pytest_circuits_progress", default=None
)


def report(model_name: str, done: int, total: int) -> None:
    """Tell the installed callback (if any) that ``done`` of ``total`` ablations are measured."""
    callback = _callback.get()
    if callback is not None:
        callback(model_name, done, total)


@contextmanager
def reporting(callback: Callback) -> Iterator[None]:
    """Install ``callback`` for the sweeps run inside the block."""
    token = _callback.set(callback)
    try:
        yield
    finally:
        _callback.reset(token)
