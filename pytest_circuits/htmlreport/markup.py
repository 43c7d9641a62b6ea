"""The small pieces of markup every section of the HTML page is made of: numbers with their exact
value attached, escaped text, tables and titled parts."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["esc", "fmt", "num", "part", "slug", "table"]


def fmt(value: float | int | None, digits: int = 3) -> str:
    """Numbers as the page prints them: ``digits`` significant figures, '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 10 ** digits:
        return f"{value:.0f}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(1, digits - 1)}f}"


def num(key: str, value: float | int | None, digits: int = 3) -> str:
    """A number with its exact value attached (``data-value``) for checks against the JSON."""
    exact = "" if value is None else repr(float(value)) if not isinstance(value, int) else str(
        value)
    return (f'<span class="num" data-key="{html.escape(key)}" data-value="{exact}">'
            f"{fmt(value, digits)}</span>")


def esc(text: Any) -> str:
    return html.escape(str(text))


def slug(*parts: str) -> str:
    text = "-".join(parts).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()
           ) -> str:
    head = "".join(
        f'<th class="n">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>" + "".join(
            f'<td class="n">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def part(name: str, title: str, body: str) -> str:
    return f'<div class="part" data-part="{name}"><h3>{esc(title)}</h3>{body}</div>'
