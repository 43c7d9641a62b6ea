"""Report writers: one module per output of a run, each reading the typed gate records.

The plugin calls every configured writer at the moments a run has something to show, and a
writer implements the moments its format needs (:class:`Writer` gives the rest as no-ops):

- ``gate(item, records)``: a gate result was just recorded in the test ``item`` (``records``
  are the test's so far, the new one last): JUnit properties;
- ``test(report, records)``: the call report of a test with gate results was made: pytest-html;
- ``finish(run)``: the session ended; write files and return notes for the terminal summary:
  the results JSON, the HTML report (an ``OSError`` it raises, a full disk say, becomes one
  ERROR line naming ``what`` it writes, and a failed run);
- ``summary(run, terminal)``: pytest's terminal summary: the table of gates.

A new report format is one module with a :class:`Writer` subclass, listed in
:func:`configured_writers` (and, if it needs one, an option in ``settings.SETTINGS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import GateTest, ReportWriter, RunInfo, Writer, unfinished_summary
from .html_report import HtmlReport
from .junit import JUnitProperties
from .pytest_html import PytestHtmlExtras
from .results_json import ResultsJson
from .terminal import TerminalSummary

__all__ = ["GateTest", "ReportWriter", "RunInfo", "Writer", "configured_writers",
           "unfinished_summary"]


def configured_writers(pluginmanager: Any, json_path: Path | None, html_path: Path | None
                       ) -> list[ReportWriter]:
    """The writers of a run, in the order their notes are printed: JUnit properties and
    pytest-html extras always (the latter only acts when pytest-html is loaded), the results
    JSON and the HTML report when asked for, and the terminal summary."""
    writers: list[ReportWriter] = [JUnitProperties(), PytestHtmlExtras(pluginmanager)]
    if json_path is not None:
        writers.append(ResultsJson(json_path))
    if html_path is not None:
        writers.append(HtmlReport(html_path))
    writers.append(TerminalSummary())
    return writers
