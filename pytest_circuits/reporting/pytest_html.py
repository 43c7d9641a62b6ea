"""pytest-html extras: the compact report of a test's gates, attached to its row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..output import GateRecord
from . import Writer


class PytestHtmlExtras(Writer):
    """Adds the compact HTML report of a test's gates to pytest-html's extras (only when
    pytest-html is loaded; the fragment needs matplotlib, without which nothing is added)."""

    name = "pytest-html"

    def __init__(self, pluginmanager: Any) -> None:
        self.pluginmanager = pluginmanager

    def test(self, report: Any, records: Sequence[GateRecord]) -> None:
        if not self.pluginmanager.hasplugin("html"):
            return
        try:
            from pytest_html import extras  # type: ignore[import-not-found]

            from ..htmlreport import html_snippet
        except ImportError:
            return
        snippet = html_snippet(records)
        if snippet:
            report.extras = [*getattr(report, "extras", []), extras.html(snippet)]
