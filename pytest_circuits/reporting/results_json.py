"""The ``--circuits-json`` results file: header, environment and every gate result, sorted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..output import GateRecord, environment, sort_key, write_json_atomic
from .base import GateTest, RunInfo, Writer, unfinished_summary

FORMAT = "pytest-circuits-results"
VERSION = 1


def results_document(records: Sequence[GateRecord], extra: dict[str, Any] | None = None, *,
                     complete: bool = True, interruption: str | None = None,
                     tests: Sequence[GateTest] = ()) -> dict[str, Any]:
    """The ``--circuits-json`` document: header, environment and every result, sorted.

    ``complete`` is False when the run stopped before every selected test ran (an interruption,
    ``-x``) or a gate test did not finish (its setup failed, its worker crashed, it failed
    before recording a gate): a reader must not take the absence of failures for a green
    release then. ``tests`` lists every gate test with how it ended.
    """
    ordered = sorted(records, key=sort_key)
    unfinished = unfinished_summary(tests)
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "complete": complete and not unfinished,
        "interruption": interruption or unfinished or None,
        "environment": environment(ordered),
        "summary": {
            "gates": len(ordered),
            "passed": sum(r.verdict == "PASS" for r in ordered),
            "failed": sum(r.verdict == "FAIL" for r in ordered),
            "xfailed": sum(r.verdict == "XFAIL" for r in ordered),
        },
        **(extra or {}),
        "tests": [t.to_dict() for t in sorted(tests, key=lambda t: t.nodeid)],
        "results": [r.to_dict() for r in ordered],
    }


def shown(path: Path) -> str:
    """``path`` as a note prints it: relative to the working directory when it lies inside it
    (``examples/gate-results.json``), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class ResultsJson(Writer):
    """Writes the results file atomically, also after an interruption (then marked
    ``"complete": false`` with the reason)."""

    name = "json"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.what = f"the results JSON {path}"

    def finish(self, run: RunInfo) -> list[str]:
        write_json_atomic(self.path, results_document(
            run.records, dict(run.extra), complete=run.stopped is None,
            interruption=run.stopped, tests=run.tests))
        incomplete = run.stopped or unfinished_summary(run.tests)
        return [f"wrote {len(run.records)} gate results to {shown(self.path)}"
                + (f" (INCOMPLETE: {incomplete})" if incomplete else "")]
