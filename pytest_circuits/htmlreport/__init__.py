"""Self-contained HTML reports of circuit analyses: a full page for a run or the CLI, and a
compact fragment for pytest-html.

Entry points take typed results (``PairReport``, ``ModelReport``) and gate results
(``GateResult``, or the plugin's ``GateRecord`` which also knows the test's xfail outcome).
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic
from ..results import read_report
from ..results.reports import ReportFormatError
from .circuits import CIRCUIT_PARTS, is_circuits_report
from .page import (
    MODEL_PARTS,
    PAIR_PARTS,
    Page,
    as_gates,
    is_pair_report,
    model_name,
    render,
    snippet,
)

__all__ = [
    "CIRCUIT_PARTS",
    "MODEL_PARTS",
    "PAIR_PARTS",
    "html_snippet",
    "render_html",
    "reports_from_gate_results",
    "write_html",
    "write_session_report",
]


def render_html(
    reports: Sequence[Any], gate_results: Iterable[Any] = (), *,
    title: str = "pytest-circuits report", layer_map: Mapping[int, int] | None = None,
) -> str:
    """The report page for ``reports`` (one section each), with the verdicts of
    ``gate_results`` shown in the section of the pair and task they checked.

    A pair whose models differ in depth is drawn layer against layer: each student layer on
    the row of the teacher layer it stands for, read from the matching, or from ``layer_map``
    (student layer -> teacher layer, e.g. ``{0: 0, 1: 1, 2: 3}`` for a copy without the
    teacher's layer 2), which must name every student layer of each such pair in increasing
    order (a ``ValueError`` says what does not fit)."""

    return render(Page(list(reports), as_gates(gate_results), title, layer_map))


def write_html(
    path: str | os.PathLike[str], reports: Sequence[Any], gate_results: Iterable[Any] = (), *,
    title: str = "pytest-circuits report", layer_map: Mapping[int, int] | None = None,
) -> Path:
    """Write :func:`render_html` to ``path`` atomically (a CI artifact is never half written)."""

    target = Path(path)
    text = render_html(reports, gate_results, title=title, layer_map=layer_map)
    write_bytes_atomic(target, text.encode("utf-8"))
    return target


def _typed(report: Any) -> Any:
    """A report stored in a GateResult (a dict after the JSON round trip) as its typed class."""
    if not isinstance(report, dict):
        return report

    return read_report(report)


def _identity(report: Any) -> tuple[Any, ...]:
    if is_pair_report(report):
        names: tuple[str, ...] = (model_name(report.teacher.model),
                                  model_name(report.student.model))
    else:
        names = (model_name(report.model),)
    return (names, report.task, report.fingerprint.key())


def reports_from_gate_results(gate_results: Iterable[Any]) -> list[Any]:
    """The distinct analyses behind a run's gates, pair reports first, then the circuits and
    roles (one :class:`~pytest_circuits.results.CircuitsReport` per models and task, merging
    what the circuit and roles gates stored).

    A single-model report (``ablation_robust``) is dropped when a pair report of the same
    student, task and method is there, because the pair section already shows it.
    """
    pairs: dict[tuple[Any, ...], Any] = {}
    models: dict[tuple[Any, ...], Any] = {}
    circuits: dict[tuple[Any, ...], Any] = {}
    for gate in as_gates(gate_results):
        data = gate.result.report
        if data is None:
            continue
        try:
            report = _typed(data)
        except (ReportFormatError, KeyError, TypeError, ValueError):
            continue  # a report this version cannot draw: the gates table still shows
        if is_circuits_report(report):
            # the circuit gate brings circuits, the roles gate roles and its pair report
            seen = circuits.get(report.key)
            circuits[report.key] = report if seen is None else seen.merged(report)
            if report.pair is None:
                continue
            report = report.pair
        key = _identity(report)
        (pairs if is_pair_report(report) else models).setdefault(key, report)
    shown_students = {
        (model_name(r.student.model), r.task, r.student.fingerprint.key()) for r in pairs.values()
    }
    singles = [
        r for r in models.values()
        if (model_name(r.model), r.task, r.fingerprint.key()) not in shown_students
    ]
    return list(pairs.values()) + singles + list(circuits.values())


def write_session_report(
    path: str | os.PathLike[str], gate_results: Iterable[Any], *,
    title: str = "pytest-circuits gate report",
) -> Path:
    """The page of a pytest run: every analysis a gate stored, with every gate's verdict.

    ``gate_results``: the plugin's GateRecords (verdicts include xfail) or plain GateResults.
    """
    results = list(gate_results)
    return write_html(path, reports_from_gate_results(results), results, title=title)


def html_snippet(gate_results: Iterable[Any]) -> str:
    """A compact HTML fragment (one small block per analysis) for pytest-html's ``extras``."""

    results = list(gate_results)
    return snippet(reports_from_gate_results(results), as_gates(results))
