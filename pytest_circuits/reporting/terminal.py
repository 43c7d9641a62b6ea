"""The terminal summary: a table of every checked metric, the verdict counts, and the lines a
passing gate has no message to say (adapted tasks, sweeps that were not all exact)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..kinds import UNIT_SYMBOLS, metric_spec
from ..output import GateRecord, sort_key
from ..results import GateResult, MetricCheck
from ..tables import format_number, format_table
from .base import RunInfo, Writer, unfinished_summary


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
        failing = record.failing
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


def summary_lines(records: Sequence[GateRecord], with_baseline: bool) -> list[str]:
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
        note = record.result.task_adaptation
        if note:
            seen.setdefault((record.result.task, note), None)
    return [f"circuits: task '{task}' was {note}" for task, note in seen]


def method_lines(records: Iterable[GateRecord]) -> list[str]:
    """One line per gate whose sweeps were not all exact: which method ran and how many values
    are exact and how many bounded estimates (a passing gate has no message to say it in)."""
    lines = []
    for record in records:
        method = record.result.sweep_method
        if method is None or not method.any_auto:
            continue
        lines.append(f"circuits: {record.result.nodeid} [{record.result.gate}] {method.note}")
    return lines


class TerminalSummary(Writer):
    """The "circuit gates" section of pytest's terminal summary (controller or serial run)."""

    name = "terminal"

    def summary(self, run: RunInfo, terminal: Any) -> None:
        if not (run.records or run.stale or run.notes or run.unfinished):
            return
        write = terminal.write_line
        terminal.write_sep("=", "circuit gates")
        records = run.records
        if records:
            for line in summary_lines(records, with_baseline=run.with_baseline):
                write(line)
            verdicts = [r.verdict for r in records]
            write(f"circuits: {len(records)} gate results: {verdicts.count('PASS')} passed, "
                  f"{verdicts.count('FAIL')} failed, {verdicts.count('XFAIL')} xfailed")
            for line in adaptation_lines(records):
                write(line)
            for line in method_lines(records):
                write(line)
        if run.unfinished:
            write(f"circuits: {unfinished_summary(run.tests)}, so the results are INCOMPLETE "
                  "(a gate that did not run is not a gate that passed):")
            for test in run.unfinished:
                write(f"  {test.nodeid}: {test.outcome}" + (f" ({test.reason})" if test.reason
                                                             else ""))
        if run.stale:
            what = "removed from the baseline" if run.update_baseline and any(
                "stale removed" in n for n in run.notes) else "not produced by this run"
            write(f"circuits: {len(run.stale)} stale baseline entries ({what}):")
            for key in run.stale:
                write(f"  {key}")
        for note in run.notes:
            write(f"circuits: {note}")
