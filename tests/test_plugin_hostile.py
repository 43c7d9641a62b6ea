"""Hostile runs of the plugin: a full disk at the end, outputs that would overwrite inputs,
tests that swallow a failing gate, and gate tests that never get to record their verdict."""

from __future__ import annotations

import json

import pytest
from helpers import FAKE_GATES, load_json, summary_section

#: A conftest that makes every atomic write to a file named in CIRCUITS_FULL fail as a full
#: disk would (after the temporary file was created: the old file must survive), and puts the
#: writer back when the run ends, so the in-process runs that follow are unaffected.
FULL_DISK = '''
import errno
import os

from pytest_circuits import output

_real = output.write_bytes_atomic


def _full(path, data):
    if path.name in os.environ.get("CIRCUITS_FULL", "").split(","):
        raise OSError(errno.ENOSPC, "No space left on device")
    _real(path, data)


def pytest_configure(config):
    output.write_bytes_atomic = _full


def pytest_unconfigure(config):
    output.write_bytes_atomic = _real
'''

PASSING = '''
import fakegates


def test_good():
    fakegates.aligned(0.9)
'''


def _full_disk_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                     full: str) -> None:
    pytester.makepyfile(fakegates=FAKE_GATES, test_gates=PASSING)
    pytester.makeconftest(FULL_DISK)
    monkeypatch.setenv("CIRCUITS_FULL", full)


def test_a_full_disk_at_the_results_json_is_one_error_line_and_a_failed_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _full_disk_suite(pytester, monkeypatch, "out.json")
    (pytester.path / "out.json").write_text('{"old": true}\n')
    result = pytester.runpytest("--circuits-json=out.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # every test passed, the results are lost
    result.assert_outcomes(passed=1)
    section = summary_section(result.outlines)
    assert any("test_gates.py::test_good [circuit_aligned]" in line for line in section)
    errors = [line for line in section if "ERROR" in line]
    assert len(errors) == 1, section
    assert "the results JSON" in errors[0] and "out.json was NOT written" in errors[0]
    assert "ENOSPC: No space left on device" in errors[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert load_json(pytester.path / "out.json") == {"old": True}


def test_a_full_disk_at_the_baseline_keeps_it_and_still_writes_the_results(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _full_disk_suite(pytester, monkeypatch, "baseline.json")
    result = pytester.runpytest("--circuits-json=out.json", "--circuits-baseline=baseline.json",
                                "--circuits-update-baseline")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    section = summary_section(result.outlines)
    errors = [line for line in section if "ERROR" in line]
    assert len(errors) == 1 and "the baseline" in errors[0], section
    assert "baseline.json was NOT written (ENOSPC" in errors[0]
    assert not any("updated baseline" in line for line in section)
    assert not (pytester.path / "baseline.json").exists()
    document = load_json(pytester.path / "out.json")
    assert document["baseline"]["written"] is False
    assert [r["verdict"] for r in document["results"]] == ["PASS"]


OUT_OF_RANGE = '''
import fakegates


def test_impossible():
    fakegates.aligned(1.5, min_score=0.8, subject="a -> impossible")


def test_fine():
    fakegates.aligned(0.9, subject="a -> fine")
'''


def test_an_entry_the_loader_would_refuse_is_never_written_to_the_baseline(
    pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(fakegates=FAKE_GATES, test_gates=OUT_OF_RANGE)
    result = pytester.runpytest("--circuits-baseline=baseline.json", "--circuits-update-baseline")
    result.assert_outcomes(passed=2)
    entries = json.loads((pytester.path / "baseline.json").read_text())["entries"]
    assert sorted(entries) == ["circuit_aligned::a -> fine::numerals"]
    section = "\n".join(summary_section(result.outlines))
    assert ("baseline entry 'circuit_aligned::a -> impossible::numerals' NOT updated: the "
            "result of test_gates.py::test_impossible has a value alignment: 1.5 is outside "
            "[-1, 1]") in section
    assert "updated baseline" in section and "1 entries written" in section
    # the file it wrote loads: the next run compares instead of refusing the baseline
    again = pytester.runpytest("--circuits-baseline=baseline.json", "-k", "fine")
    again.assert_outcomes(passed=1, deselected=1)
