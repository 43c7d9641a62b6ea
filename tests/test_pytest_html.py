"""With the real pytest-html plugin loaded, each test's gates are attached to its row of
pytest-html's report as the compact circuits report (verdicts and figures), and a run
without gates adds nothing."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest

pytest.importorskip("pytest_html", reason="pytest-html is part of the dev extra")

GATED = '''
from pytest_circuits import assert_circuit_aligned, load_model, load_pair

PAIR = load_pair(load_model("zoo:tiny-teacher", device="cpu"),
                 load_model("zoo:tiny-student", device="cpu"))


def test_gated():
    assert_circuit_aligned(PAIR, "numerals", min_score=0.0, n_prompts=4)


def test_plain():
    assert 1 + 1 == 2
'''


def _rows(page: str) -> str:
    """pytest-html 4 keeps its rows in a JSON blob in an attribute: every text in it."""
    found = re.search(r'data-jsonblob="([^"]*)"', page)
    assert found, "pytest-html's data blob is missing"

    def texts(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [t for v in value.values() for t in texts(v)]
        if isinstance(value, list):
            return [t for v in value for t in texts(v)]
        return [value] if isinstance(value, str) else []

    return "\n".join(texts(json.loads(html.unescape(found.group(1)))))


@pytest.mark.slow
def test_the_real_pytest_html_report_carries_each_tests_gates(pytester: pytest.Pytester
                                                               ) -> None:
    pytester.makepyfile(test_gates=GATED)
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--html=report.html",
                                        "--self-contained-html", "--circuits-no-cache")
    run.assert_outcomes(passed=2)
    rows = _rows((pytester.path / "report.html").read_text())
    # the gated test only, once
    assert rows.count('<div class="circuits-extra">') == 1
    assert "<b>zoo:tiny-teacher &rarr; zoo:tiny-student &middot; numerals</b>" in rows
    assert '<span class="badge PASS">1 PASS</span>' in rows
    assert rows.count("data:image/png;base64,") == 1  # the heatmap of drops
    assert re.search(r"A 0\.\d+ \(weighted 0\.\d+\)", rows)


def test_installed_but_not_asked_for_it_draws_nothing(pytester: pytest.Pytester) -> None:
    # pytest-html is always loaded once installed; without --html no fragment may be drawn
    from helpers import FAKE_GATES

    pytester.makepyfile(fakegates=FAKE_GATES, test_fake="import fakegates\n\n"
                        "def test_gate():\n    fakegates.aligned(0.9)\n")
    pytester.makeconftest("import pytest_circuits.htmlreport as h\n\n"
                          "def refuse(records):\n    raise AssertionError('drawn')\n\n"
                          "h.html_snippet = refuse\n")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_result_whose_report_cannot_be_drawn_leaves_the_html_row_without_it(
        pytester: pytest.Pytester) -> None:
    from helpers import FAKE_GATES  # its results hold a plain dict, not a typed report

    pytester.makepyfile(fakegates=FAKE_GATES, test_fake="import fakegates\n\n"
                        "def test_gate():\n    fakegates.aligned(0.9)\n")
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--html=r.html")
    run.assert_outcomes(passed=1)
    assert "INTERNALERROR" not in run.stdout.str()
    assert "circuits-extra" not in _rows((pytester.path / "r.html").read_text())
