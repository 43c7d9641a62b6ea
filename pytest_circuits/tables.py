"""Plain text tables and number formatting: what failure messages and the terminal summary print.

One home, so a failure message, the ``circuit gates`` summary and a command-line tool show a
number the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def format_number(value: float | None) -> str:
    """Four significant digits (``0.8512``, ``87.5``, ``1.235e+04``); ``-`` for a missing value."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)  # nan and inf stay readable as such
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def _cell(value: Any) -> str:
    if value is None or isinstance(value, float):
        return format_number(value)
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table, indented two spaces, with a dashed rule under the headers.

    Floats and None go through :func:`format_number`; anything else prints as ``str``.
    """
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)
