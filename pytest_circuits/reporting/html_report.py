"""The self-contained HTML report of a run: every analysis a gate stored, with every verdict."""

from __future__ import annotations

from pathlib import Path

from .base import RunInfo, Writer


class HtmlReport(Writer):
    """Writes ``--circuits-html`` after the xdist merge, atomically; an interrupted run leaves
    the previous report as it was."""

    name = "html"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.what = f"the HTML report {path}"

    def finish(self, run: RunInfo) -> list[str]:
        if run.interrupted:
            return [f"HTML report {self.path} NOT written: the run was interrupted "
                    f"({run.stopped})"]
        try:
            from ..htmlreport import write_session_report
        except ImportError as exc:  # the report needs matplotlib
            return [f"HTML report {self.path} NOT written: {exc}"]
        write_session_report(self.path, run.records)
        return [f"wrote the HTML report to {self.path}"]
