"""What every report writer reads and shares: a test's gate results as :class:`GateRecord`,
where the numbers were measured, atomic JSON writes and the terminal line of a long sweep.

Every gate result travels as a :class:`GateRecord` (plain JSON-able data), so an xdist worker
ships exactly what a serial run keeps, and the controller prints and writes the same thing. The
writers themselves (terminal summary, JUnit properties, results JSON, HTML report, pytest-html
extras) are in :mod:`pytest_circuits.reporting`, one module each.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import write_bytes_atomic
from .baseline import BaselineCheck
from .results import GateResult

#: Names that moved to the report writers (:mod:`pytest_circuits.reporting`), importable from
#: here as before; loaded on first use, since the writers import this module.
_MOVED = {
    "FORMAT": "results_json",
    "VERSION": "results_json",
    "results_document": "results_json",
    "junit_properties": "junit",
    "property_prefix": "junit",
    "adaptation_lines": "terminal",
    "method_lines": "terminal",
    "summary_lines": "terminal",
    "summary_rows": "terminal",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_circuits.output' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"pytest_circuits.reporting.{module}"), name)


def plain(data: Any) -> Any:
    """``data`` as built-in JSON types (numpy scalars and arrays become floats and lists)."""

    def convert(value: Any) -> Any:
        if hasattr(value, "tolist"):
            return value.tolist()
        if hasattr(value, "item"):
            return value.item()
        return str(value)

    return json.loads(json.dumps(data, default=convert))


@dataclass
class GateRecord:
    """One gate result of one test, with its baseline comparison and the test's outcome."""

    result: GateResult
    index: int  # order within the test
    baseline: BaselineCheck | None = None
    outcome: str = ""  # the test's: "passed", "failed", "xfailed"; set on the controller
    #: the test expected this gate to fail: it caught the gate's error with ``pytest.raises``
    expected: bool = False

    @property
    def failing(self) -> str:
        """What a failing verdict reads as: XFAIL when the test expected it (an xfail mark,
        or ``pytest.raises`` around the gate), else FAIL."""
        return "XFAIL" if self.outcome == "xfailed" or self.expected else "FAIL"

    @property
    def verdict(self) -> str:
        failed = not self.result.passed or (self.baseline is not None and self.baseline.failed)
        return self.failing if failed else "PASS"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.result.to_dict(),
            "index": self.index,
            "baseline": self.baseline.to_dict() if self.baseline is not None else None,
            "outcome": self.outcome,
            "expected": self.expected,
            "verdict": self.verdict,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateRecord:
        data = dict(data)
        index = data.pop("index")
        baseline = data.pop("baseline", None)
        outcome = data.pop("outcome", "")
        expected = bool(data.pop("expected", False))
        data.pop("verdict", None)
        return cls(
            result=GateResult.from_dict(data),
            index=index,
            baseline=BaselineCheck.from_dict(baseline) if baseline is not None else None,
            outcome=outcome,
            expected=expected,
        )


def sort_key(record: GateRecord) -> tuple[str, int]:
    return (record.result.nodeid, record.index)


def environment(records: Iterable[GateRecord]) -> dict[str, Any]:
    """Where the numbers were measured: interpreter, platform, devices and library versions."""
    versions: dict[str, str] = {}
    devices = set()
    for record in records:
        versions.update(record.result.fingerprint.get("versions", {}))
        kind = record.result.fingerprint.get("device_kind")
        if kind:
            devices.add(kind)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "devices": sorted(devices),
        "versions": dict(sorted(versions.items())),
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so readers see the old file or the new one, never a torn one."""
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same real path (links resolved), or, for
    files that exist, the same inode (a hard link)."""
    import os

    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def unwritable(path: Path, *, directory: bool = False) -> str | None:
    """Why ``path`` (a file, or with ``directory`` a folder) cannot be written, None if it can.

    Probes by creating a file in the nearest existing folder, so it tells the truth for root,
    for read-only mounts and for a parent that is a file, where permission bits would not.
    Creates no folder and leaves nothing behind.
    """
    import os
    import tempfile

    if path.exists():
        if directory and not path.is_dir():
            return f"{path} exists and is not a directory"
        if not directory and path.is_dir():
            return f"{path} is a directory, not a file"
        if not directory and not os.access(path, os.W_OK):
            return f"{path} is not writable"
    folder = path if directory else path.parent
    while not folder.exists():
        if folder.parent == folder:
            return f"no part of {path} exists"
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, so {path} cannot be created under it"
    try:
        fd, probe = tempfile.mkstemp(prefix=".circuits-probe.", dir=folder)
    except OSError as exc:
        return f"cannot create files in {folder} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


class SweepProgress:
    """Lines on the terminal for a sweep that runs longer than ``after`` seconds: when it passes
    that mark, at each further quarter, and when it is done. Whole lines (never carriage
    returns), so pytest's progress line and CI logs stay readable; quick sweeps print nothing.

    With ``every`` (seconds), the lines after the mark come on a clock instead of at quarters:
    one whenever ``every`` seconds have passed since the last, so a CI log shows a long sweep
    moving at a steady pace (the plugin's lines: :data:`pytest_circuits.plugin.PROGRESS_EVERY`).
    ``clock`` (seconds, monotonic) is for tests.
    """

    def __init__(self, write_line: Any, after: float = 3.0, clock: Any = None, *,
                 every: float | None = None) -> None:
        import time

        if every is not None and not every >= 0:
            raise ValueError(f"SweepProgress: every={every!r} must be a number of seconds >= 0 "
                             "(None: a line at each quarter)")
        self.write_line = write_line
        self.after = after
        self.every = every
        self.clock = clock if clock is not None else time.monotonic
        self._started: dict[str, float] = {}
        self._quarter: dict[str, int] = {}  # last quarter announced; absent: nothing shown yet
        self._shown: dict[str, float] = {}  # when the last line was written (with ``every``)

    def __call__(self, model_name: str, done: int, total: int) -> None:
        now = self.clock()
        started = self._started.setdefault(model_name, now)
        elapsed = now - started
        if done >= total:
            if model_name in self._quarter:
                self.write_line(f"circuits: swept {model_name}: {total} ablations in "
                                f"{elapsed:.1f} s")
            self._started.pop(model_name, None)
            self._quarter.pop(model_name, None)
            self._shown.pop(model_name, None)
            return
        if elapsed < self.after:
            return
        quarter = 4 * done // total
        if self.every is None:
            due = self._quarter.get(model_name, -1) < quarter
        else:
            last = self._shown.get(model_name)
            due = last is None or now - last >= self.every
        if due:
            self._quarter[model_name] = quarter
            self._shown[model_name] = now
            self.write_line(f"circuits: sweeping {model_name}: {done}/{total} ablations after "
                            f"{elapsed:.1f} s")
