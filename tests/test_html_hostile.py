"""The HTML report with hostile names: a model path, task or component name holding matplotlib
mathtext (``rc$\\foo$``, ``$x^2$``, ``_{``), a newline or markup is drawn and printed literally,
never parsed (a crash) nor run (a script), whatever the user's own matplotlib settings say."""

from __future__ import annotations

import base64
import html
import json
import re
import string
import warnings
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_circuits.analysis.cached import pair_report
from pytest_circuits.analysis.comparison import report_from_dict
from pytest_circuits.htmlreport import figures, render_html
from pytest_circuits.models import load_model, load_pair

TEACHER, STUDENT, TASK = "zoo:tiny-teacher", "zoo:tiny-student", "numerals"

#: Every name the report shows, mapped to a hostile one (components keep distinct names).
HOSTILE = {
    TEACHER: "rc$\\foo$",
    STUDENT: "st $x^2$ _{a}\n<script>alert(1)</script>",
    TASK: "task_{1} $\\alpha$ & <b>bold</b> <!--<script>",
    "L0H0": "L0H0$_{x}$",
    "L1H1": "L1H1 $\\frac{1}{0}$",
    "MLP0": "MLP0 ^{}_$",
}

PNG = b"\x89PNG\r\n\x1a\n"


def renamed(data: Any, names: dict[str, str]) -> Any:
    """``data`` (a report's dict) with every string and key equal to a name in ``names``
    replaced: the same report about models, a task and components with other names."""
    if isinstance(data, dict):
        return {names.get(k, k): renamed(v, names) for k, v in data.items()}
    if isinstance(data, list):
        return [renamed(v, names) for v in data]
    if isinstance(data, str):
        return names.get(data, data)
    return data


@pytest.fixture(scope="module")
def report_data() -> dict[str, Any]:
    teacher = load_model(TEACHER, device="cpu")
    pair = load_pair(teacher, load_model(STUDENT, device="cpu"))
    data: dict[str, Any] = pair_report(pair, TASK, n_prompts=8).to_dict()
    return data


class _Page(HTMLParser):
    """Collects the images and every script block of a page; fails on a malformed tag nest."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.scripts: list[dict[str, str]] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(data["src"])
            return
        if tag in ("meta", "br"):
            return
        if tag == "script":
            self.scripts.append(data)
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def check_page(page: str, names: list[str], data: dict[str, Any]) -> None:
    """A whole page: tags nest, three real PNGs, the only script is the inert data block,
    each name printed literally (HTML-escaped), and the data block reads back unchanged."""
    parsed = _Page()
    parsed.feed(page)
    parsed.close()
    assert parsed.stack == []
    assert parsed.scripts == [{"type": "application/json", "id": "circuits-data"}]
    assert len(parsed.images) == 3
    for src in parsed.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    for name in names:
        assert html.escape(name) in page, name
    block = re.search(r'<script type="application/json" id="circuits-data">(.*?)</script>',
                      page, re.S)
    assert block is not None and "<" not in block.group(1)
    assert json.loads(block.group(1)) == [json.loads(json.dumps(data))]


def test_mathtext_and_markup_in_every_name_give_a_literal_page(
        report_data: dict[str, Any]) -> None:
    data = renamed(report_data, HOSTILE)
    report = report_from_dict(data)
    assert report.teacher.model.name == HOSTILE[TEACHER] and report.task == HOSTILE[TASK]
    assert HOSTILE["L0H0"] in report.student.sweep.names
    page = render_html([report])
    check_page(page, list(HOSTILE.values()), data)
    assert "<script>alert" not in page
    assert f"<h2>{html.escape(HOSTILE[TEACHER])} &rarr; " in page


def test_the_users_usetex_setting_is_neither_used_nor_changed(
        report_data: dict[str, Any]) -> None:
    import matplotlib

    data = renamed(report_data, HOSTILE)
    with matplotlib.rc_context({"text.usetex": True, "text.parse_math": True}):
        page = render_html([report_from_dict(data)])  # no LaTeX is needed to draw it
        assert matplotlib.rcParams["text.usetex"] is True
        assert matplotlib.rcParams["text.parse_math"] is True
    check_page(page, list(HOSTILE.values()), data)


# --------------------------------------------------------------------------- fuzzed labels

#: Printable text with every character mathtext and TeX give a meaning to.
LABELS = st.text(alphabet=st.sampled_from(string.printable + "$\\^_{}"), min_size=1,
                 max_size=24)
FEW = settings(max_examples=30, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


def is_png(encoded: str) -> bool:
    return base64.b64decode(encoded)[:8] == PNG


@pytest.mark.slow
@FEW
@given(label=LABELS, names=st.lists(LABELS, min_size=2, max_size=4, unique=True))
def test_any_printable_label_draws_every_figure(label: str, names: list[str]) -> None:
    with warnings.catch_warnings():  # a tab or a NUL in a name: no "Glyph missing" either
        warnings.simplefilter("error")
        draw_every_figure(label, names)


def draw_every_figure(label: str, names: list[str]) -> None:
    grid = figures.Grid(label, np.array([[10.0, 80.0], [np.nan, 55.0]]), np.array([5.0, 95.0]))
    assert is_png(figures.heatmaps([grid, figures.Grid(names[0], grid.heads, grid.mlps)]))
    links = [figures.Link(names[0], names[1], 0.9, 0.7, False),
             figures.Link(names[-1], names[1], 0.4, 0.3, True)]
    assert is_png(figures.correspondence(names, names[:2], links, {names[1]: 2}, {names[0]},
                                         teacher_label=label, student_label=names[-1]))
    drops = np.linspace(10.0, 90.0, len(names))
    assert is_png(figures.drop_distributions([(label, names, drops)], 20.0))


@pytest.mark.slow
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.lists(LABELS, min_size=3, max_size=3, unique=True))
def test_any_printable_model_and_task_name_gives_a_literal_page(
        report_data: dict[str, Any], chosen: list[str]) -> None:
    data = renamed(report_data, dict(zip((TEACHER, STUDENT, TASK), chosen, strict=True)))
    check_page(render_html([report_from_dict(data)]), chosen, data)
