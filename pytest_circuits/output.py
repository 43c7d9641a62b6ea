"""What a run leaves for people and CI: JUnit properties, the terminal summary, the JSON file.

Every gate result travels as a :class:`GateRecord` (plain JSON-able data), so an xdist worker
ships exactly what a serial run keeps, and the controller prints and writes the same thing.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .atomic import write_bytes_atomic
from .baseline import BaselineCheck
from .kinds import UNIT_SYMBOLS, metric_spec
from .kinds.runner import ADAPTATION_KEY
from .recording import GateResult, MetricCheck
from .tables import format_number, format_table

FORMAT = "pytest-circuits-results"
VERSION = 1


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

    @property
    def verdict(self) -> str:
        failed = not self.result.passed or (self.baseline is not None and self.baseline.failed)
        if failed:
            return "XFAIL" if self.outcome == "xfailed" else "FAIL"
        return "PASS"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.result.to_dict(),
            "index": self.index,
            "baseline": self.baseline.to_dict() if self.baseline is not None else None,
            "outcome": self.outcome,
            "verdict": self.verdict,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateRecord:
        data = dict(data)
        index = data.pop("index")
        baseline = data.pop("baseline", None)
        outcome = data.pop("outcome", "")
        data.pop("verdict", None)
        return cls(
            result=GateResult.from_dict(data),
            index=index,
            baseline=BaselineCheck.from_dict(baseline) if baseline is not None else None,
            outcome=outcome,
        )


def sort_key(record: GateRecord) -> tuple[str, int]:
    return (record.result.nodeid, record.index)


def property_prefix(result: GateResult, seen: dict[str, int]) -> str:
    """``circuits.<gate>``; a test's second result of the same gate gets ``#2`` and so on."""
    seen[result.gate] = seen.get(result.gate, 0) + 1
    count = seen[result.gate]
    return f"circuits.{result.gate}" + (f"#{count}" if count > 1 else "")


def junit_properties(result: GateResult, prefix: str) -> list[tuple[str, object]]:
    """(name, value) pairs for ``item.user_properties``: every value, threshold and verdict."""
    properties: list[tuple[str, object]] = [
        (f"{prefix}.subject", result.subject),
        (f"{prefix}.task", result.task),
        (f"{prefix}.passed", result.passed),
    ]
    checks = {c.metric: c for c in result.checks}
    for metric, value in result.values.items():
        properties.append((f"{prefix}.{metric}", value))
        if metric in checks:
            properties.append((f"{prefix}.{metric}.threshold", checks[metric].threshold))
            properties.append((f"{prefix}.{metric}.passed", checks[metric].passed))
    for check in result.checks:  # a checked metric the gate did not list among its values
        if check.metric not in result.values:
            properties.append((f"{prefix}.{check.metric}", check.value))
            properties.append((f"{prefix}.{check.metric}.threshold", check.threshold))
            properties.append((f"{prefix}.{check.metric}.passed", check.passed))
    return properties


def _threshold_cell(result: GateResult, check: MetricCheck) -> str:
    """``<= 95 pts``: the comparison, the threshold and (when not a plain score) its unit."""
    spec = metric_spec(result.gate, check.metric)
    symbol = UNIT_SYMBOLS.get(spec.unit, "") if spec is not None else ""
    return f"{check.op} {format_number(check.threshold)}" + (f" {symbol}" if symbol else "")


def _baseline_cell(record: GateRecord, metric: str) -> str:
    check = record.baseline
    if check is None:
        return "-"
    if check.status in ("missing", "refused", "updated"):
        return check.status
    delta = check.delta(metric)
    if delta is None:
        return "-"
    state = "REGRESSED" if delta.regressed else "ok"
    return f"{state} (was {format_number(delta.baseline)})"


def summary_rows(records: Iterable[GateRecord], with_baseline: bool) -> list[list[str]]:
    """One row per checked metric (and per regressed unchecked metric) of every result."""
    rows = []
    for record in sorted(records, key=sort_key):
        result, check = record.result, record.baseline
        failing = "XFAIL" if record.outcome == "xfailed" else "FAIL"
        metrics = [(c.metric, c.value, _threshold_cell(result, c), c.passed)
                   for c in result.checks]
        if check is not None:
            checked = {c.metric for c in result.checks}
            metrics += [(d.metric, d.current, "-", True) for d in check.deltas
                        if d.regressed and d.metric not in checked]
        for metric, value, threshold, passed in metrics or [("-", None, "-", result.passed)]:
            delta = check.delta(metric) if check is not None else None
            row_failed = (
                not passed
                or (delta is not None and delta.regressed)
                or (check is not None and check.status in ("missing", "refused"))
            )
            row = [f"{result.nodeid} [{result.gate}]", result.subject, result.task, metric,
                   format_number(value), threshold]
            if with_baseline:
                row.append(_baseline_cell(record, metric))
            rows.append(row + [failing if row_failed else "PASS"])
    return rows


def summary_lines(records: list[GateRecord], with_baseline: bool) -> list[str]:
    """The terminal summary table: test [gate], subject, task, metric, value, threshold,
    baseline (when one is in use) and verdict."""
    headers = ["test [gate]", "subject", "task", "metric", "value", "threshold"]
    if with_baseline:
        headers.append("baseline")
    headers.append("verdict")
    return format_table(headers, summary_rows(records, with_baseline)).splitlines()


def adaptation_lines(records: Iterable[GateRecord]) -> list[str]:
    """One line per built-in task that had to be adapted to a tokenizer: its numbers are not
    the paper's prompts', so the summary says so under the table (once per task and change)."""
    seen: dict[tuple[str, str], None] = {}
    for record in sorted(records, key=sort_key):
        note = record.result.fingerprint.get(ADAPTATION_KEY)
        if note:
            seen.setdefault((record.result.task, str(note)), None)
    return [f"circuits: task '{task}' was {note}" for task, note in seen]


def environment(records: list[GateRecord]) -> dict[str, Any]:
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


def results_document(records: list[GateRecord], extra: dict[str, Any] | None = None, *,
                     complete: bool = True, interruption: str | None = None) -> dict[str, Any]:
    """The ``--circuits-json`` document: header, environment and every result, sorted.

    ``complete`` is False when the run stopped before every selected test ran (an interruption,
    ``-x``): a reader must not take the absence of failures for a green release then.
    """
    ordered = sorted(records, key=sort_key)
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "complete": complete,
        "interruption": interruption,
        "environment": environment(ordered),
        "summary": {
            "gates": len(ordered),
            "passed": sum(r.verdict == "PASS" for r in ordered),
            "failed": sum(r.verdict == "FAIL" for r in ordered),
            "xfailed": sum(r.verdict == "XFAIL" for r in ordered),
        },
        **(extra or {}),
        "results": [r.to_dict() for r in ordered],
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so readers see the old file or the new one, never a torn one."""
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


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
    An xdist worker has no terminal, so only a serial run installs it.
    """

    def __init__(self, write_line: Any, after: float = 3.0, clock: Any = None) -> None:
        import time

        self.write_line = write_line
        self.after = after
        self.clock = clock if clock is not None else time.monotonic
        self._started: dict[str, float] = {}
        self._quarter: dict[str, int] = {}  # last quarter announced; absent: nothing shown yet

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
            return
        if elapsed < self.after:
            return
        quarter = 4 * done // total
        if self._quarter.get(model_name, -1) < quarter:
            self._quarter[model_name] = quarter
            self.write_line(f"circuits: sweeping {model_name}: {done}/{total} ablations after "
                            f"{elapsed:.1f} s")
