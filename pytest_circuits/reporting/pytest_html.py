"""pytest-html extras: the compact report of a test's gates, attached to its row."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from ..output import GateRecord
from .base import Writer


def writes_a_report(pluginmanager: Any) -> bool:
    """Whether pytest-html is writing a report in this run: installed, it is always loaded, but
    it registers its report object only when ``--html`` was given (and not on xdist workers,
    whose rows reach the controller's report)."""
    return any(type(plugin).__module__.startswith("pytest_html.")
               for plugin in pluginmanager.get_plugins())


class PytestHtmlExtras(Writer):
    """Adds the compact HTML report of a test's gates to pytest-html's extras (only when
    pytest-html writes a report; the fragment needs matplotlib, without which nothing is
    added)."""

    name = "pytest-html"

    def __init__(self, pluginmanager: Any) -> None:
        self.pluginmanager = pluginmanager

    def test(self, report: Any, records: Sequence[GateRecord]) -> None:
        if not self.pluginmanager.hasplugin("html") or not writes_a_report(self.pluginmanager):
            return
        try:
            from pytest_html import extras  # type: ignore[import-not-found]

            from ..htmlreport import html_snippet
        except ImportError:
            return
        try:
            snippet = html_snippet(records)
        except (ValueError, KeyError, TypeError) as exc:
            # a stored report this version cannot read back (a ReportFormatError is a
            # ValueError): the row says so; the run and its own verdicts go on
            snippet = ('<div class="circuits-extra">circuits report not drawn: '
                       f"{html.escape(str(exc))}</div>")
        if snippet:
            report.extras = [*getattr(report, "extras", []), extras.html(snippet)]
