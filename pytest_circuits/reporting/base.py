"""What every report writer shares: the protocol the plugin calls, the run a writer is given,
and how the gate tests of a run ended (see the package docstring for the moments)."""


from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..output import GateRecord

__all__ = ["GateTest", "ReportWriter", "RunInfo", "Writer", "unfinished_summary"]


#: How a gate test ended when it did not get to decide its gates.
UNFINISHED = ("error", "crashed", "not run")


@dataclass(frozen=True)
class GateTest:
    """A test that runs gates (a gate-file item, a test that uses the circuit fixtures or the
    ``circuits`` marker, or one that recorded a result) and how it ended: its ``outcome``
    (passed, failed, xfailed, xpassed, skipped; error: its setup failed; crashed: its xdist
    worker died; not run), how many gate results it recorded and, when it did not finish,
    why (the error's last line)."""

    nodeid: str
    outcome: str
    gates: int = 0
    reason: str = ""

    @property
    def finished(self) -> bool:
        """Whether the test got to decide its gates: it ran to an outcome, and a failure
        came with a recorded gate (a model that failed to load records none)."""
        if self.outcome in UNFINISHED:
            return False
        return not (self.outcome == "failed" and self.gates == 0)

    def to_dict(self) -> dict[str, Any]:
        return {"nodeid": self.nodeid, "outcome": self.outcome, "gates": self.gates,
                "finished": self.finished, "reason": self.reason}


def unfinished_summary(tests: Sequence[GateTest]) -> str:
    """``2 gate tests did not finish (1 crashed, 1 error)``; "" when every one finished."""
    unfinished = [t for t in tests if not t.finished]
    if not unfinished:
        return ""
    counts: dict[str, int] = {}
    for test in unfinished:
        counts[test.outcome] = counts.get(test.outcome, 0) + 1
    kinds = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    return (f"{len(unfinished)} gate test{'s' if len(unfinished) > 1 else ''} did not finish "
            f"({kinds})")


@dataclass(frozen=True)
class RunInfo:
    """What a finished run hands its writers.

    ``records`` are every gate record, sorted by test and order; ``extra`` the results file's
    header fields beyond the standard ones (threads, baseline); ``stopped`` why the run did not
    get through its selected tests (None when it did) and ``interrupted`` whether that was an
    interruption (Ctrl-C, SIGTERM) rather than an early stop (``-x``); ``stale`` the baseline
    keys no test produced; ``notes`` the closing lines so far; ``tests`` every gate test of
    the run with how it ended.
    """

    records: tuple[GateRecord, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    stopped: str | None = None
    interrupted: bool = False
    with_baseline: bool = False
    update_baseline: bool = False
    stale: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    tests: tuple[GateTest, ...] = ()

    @property
    def unfinished(self) -> tuple[GateTest, ...]:
        """The gate tests that did not get to decide their gates."""
        return tuple(t for t in self.tests if not t.finished)


class ReportWriter(Protocol):
    """One output of a run (see the module docstring for when each method is called)."""

    name: str
    #: what the writer writes, for the error line when it cannot ("the results JSON out.json")
    what: str

    def gate(self, item: Any, records: Sequence[GateRecord]) -> None: ...

    def test(self, report: Any, records: Sequence[GateRecord]) -> None: ...

    def finish(self, run: RunInfo) -> list[str]: ...

    def summary(self, run: RunInfo, terminal: Any) -> None: ...


class Writer:
    """A :class:`ReportWriter` that does nothing at any moment: subclass it and override the
    moments your format needs."""

    name = "writer"
    what = "a report"

    def gate(self, item: Any, records: Sequence[GateRecord]) -> None:
        """A gate result was recorded in the test ``item`` (the last of ``records``)."""

    def test(self, report: Any, records: Sequence[GateRecord]) -> None:
        """The call-phase ``report`` of a test that recorded ``records`` was made."""

    def finish(self, run: RunInfo) -> list[str]:
        """The session ended (on the controller, or a serial run): write, return notes."""
        return []

    def summary(self, run: RunInfo, terminal: Any) -> None:
        """Print to pytest's terminal summary (``terminal``: its terminal reporter)."""


