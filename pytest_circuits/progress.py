"""Where a long sweep reports how far it is: the running context's callback, torch-free.

The sweep calls :func:`report` after each measured component; the CLI's progress bar and the
plugin's terminal line install a callback (:func:`reporting`, or ``progress=`` of the
:class:`~pytest_circuits.config.context.RunContext`). Nothing is reported when no callback is
installed, so library users see no output they did not ask for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .config import context
from .config.context import ProgressCallback as Callback

__all__ = ["Callback", "report", "reporting"]


def report(model_name: str, done: int, total: int) -> None:
    """Tell the installed callback (if any) that ``done`` of ``total`` ablations are measured."""
    callback = context.current().progress
    if callback is not None:
        callback(model_name, done, total)


@contextmanager
def reporting(callback: Callback) -> Iterator[None]:
    """Install ``callback`` for the sweeps run inside the block."""
    with context.changed(progress=callback):
        yield
