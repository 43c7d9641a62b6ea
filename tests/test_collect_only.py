"""A run that gates nothing writes nothing: ``--collect-only`` and a run of tests that are no
gate leave the last results JSON, HTML report and baseline byte for byte as they were."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FAKE_GATES, junit_properties, load_json, run_pytest

SUITE = '''
import fakegates


def test_gate():
    fakegates.aligned(0.9, subject="a -> gated")


def test_plain():
    assert 1 + 1 == 2
'''

#: The fake gates store no real analysis, so the page is drawn by a stand-in that stamps each
#: write (a page written again is never byte-identical to the last one).
CONFTEST = """
import json
import time

import pytest_circuits.htmlreport as h


def fake(path, records):
    text = json.dumps([r.result.subject for r in records] + [time.time_ns()])
    open(path, "w").write(text)


h.write_session_report = fake
"""

OUTPUTS = ("-p", "no:html", "--circuits-json=out.json", "--circuits-html=report.html",
           "--circuits-baseline=base.json", "--circuits-update-baseline")


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where a gate run has written its results JSON, HTML report and baseline."""
    folder = tmp_path_factory.mktemp("suite")
    (folder / "fakegates.py").write_text(FAKE_GATES)
    (folder / "test_suite.py").write_text(SUITE)
    (folder / "conftest.py").write_text(CONFTEST)
    first = run_pytest(folder, *OUTPUTS)
    first.assert_outcomes(passed=2)
    document = load_json(folder / "out.json")
    assert [r["subject"] for r in document["results"]] == ["a -> gated"]
    assert "a -> gated" in (folder / "report.html").read_text(encoding="utf-8")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("out.json", "report.html",
                                                            "base.json")}


@pytest.mark.slow
@pytest.mark.parametrize("selection", [
    ("--collect-only",),
    ("--collect-only", "-q"),
    ("-k", "plain"),
    ("test_suite.py::test_plain",),
])
def test_a_run_that_gates_nothing_leaves_every_file_byte_identical(
        gated: Path, selection: tuple[str, ...]) -> None:
    before = snapshot(gated)
    run = run_pytest(gated, *OUTPUTS, "--junitxml=junit.xml", *selection)
    assert run.ret == pytest.ExitCode.OK, "\n".join(run.outlines)
    assert snapshot(gated) == before
    if "--collect-only" not in selection:
        run.assert_outcomes(passed=1, deselected=1 if "-k" in selection else 0)
        # the plain test's JUnit case carries none of the plugin's properties
        assert junit_properties(gated / "junit.xml").get("test_plain", {}) == {}
    assert "no gate test ran: the results JSON, the HTML report and the baseline are left " \
           "as they were" in "\n".join(run.outlines)


@pytest.mark.slow
def test_a_run_that_gates_writes_the_files_again(gated: Path) -> None:
    """The rule is about gating nothing, not about the options: a gate run still writes."""
    before = snapshot(gated)
    run = run_pytest(gated, *OUTPUTS, "-k", "test_gate")
    run.assert_outcomes(passed=1, deselected=1)
    after = snapshot(gated)
    assert after["report.html"] != before["report.html"]
    assert load_json(gated / "out.json")["summary"]["gates"] == 1
    assert "no gate test ran" not in "\n".join(run.outlines)
