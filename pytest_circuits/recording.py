"""Where assertions send their gate results (the plugin installs a recorder per test) and the
run settings they read, both from the running context (:mod:`pytest_circuits.config.context`).

The result types live in :mod:`pytest_circuits.results` and stay importable from here. Kept free
of torch so the plugin can import it at load time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .config import context
from .config.context import RunSettings
from .results.gate import (
    Blame,
    GateResult,
    MetricCheck,
    as_model_info,
    report_from_data,
)

__all__ = [
    "Blame",
    "GateResult",
    "MetricCheck",
    "Recorder",
    "RunSettings",
    "as_model_info",
    "record",
    "recording",
    "report_from_data",
    "run_settings",
    "using_settings",
]

Recorder = Callable[[GateResult], None]


def record(result: GateResult) -> None:
    """Hand a result to the active recorder (the plugin's, during a test); no-op outside."""
    recorder = context.current().recorder
    if recorder is not None:
        recorder(result)


@contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    """Install ``recorder`` for the duration of the block (the plugin wraps each test)."""
    with context.changed(recorder=recorder):
        yield


def run_settings() -> RunSettings:
    """The settings of the test running now (defaults outside pytest)."""
    return context.current().settings


@contextmanager
def using_settings(settings: RunSettings) -> Iterator[None]:
    """Install ``settings`` for the duration of the block (the plugin wraps each test)."""
    with context.changed(settings=settings):
        yield
