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


# ----------------------------------------------------------------------------- outputs vs inputs

#: A test that leaves a trace when it runs: a refused run must refuse before any test runs.
TRACE = '''
from pathlib import Path


def test_ran():
    Path("ran").write_text("yes")
'''

GATE_FILE = '''
pairs:
  good: {teacher: "zoo:tiny-teacher", student: "zoo:tiny-student"}
gates:
  - name: aligned
    pair: good
    task: mytask.yaml
    circuit_aligned: {min_score: 0.5}
    marks: [skip]  # collected (its task file is an input) but never loads a model
'''

BASELINE = json.dumps({"format": "pytest-circuits-baseline", "version": 1, "entries": {}})


def _refused(pytester: pytest.Pytester, *args: str) -> str:
    """Run with ``args``; assert it was a usage error before any test ran; its error text."""
    before = {p.name: p.read_bytes() for p in pytester.path.iterdir() if p.is_file()}
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.outlines
    assert not (pytester.path / "ran").exists()
    after = {p.name: p.read_bytes() for p in pytester.path.iterdir() if p.is_file()}
    assert after == before  # nothing was written or overwritten
    return " ".join(line.strip() for line in result.errlines)


@pytest.mark.parametrize(("args", "expected"), [
    (("--circuits-baseline=baseline.json", "--circuits-json=baseline.json"),
     "--circuits-json {d}/baseline.json is the baseline file this run compares with: writing "
     "it would destroy an input of the run; give another path"),
    (("--circuits-json=out.json", "--circuits-html=out.json"),
     "--circuits-html {d}/out.json is the same file as --circuits-json {d}/out.json: one "
     "would overwrite the other; give each its own path"),
    (("--circuits-baseline=baseline.json", "--circuits-update-baseline",
      "--circuits-json=baseline.json"),
     "(written by --circuits-update-baseline) is the same file as --circuits-json "
     "{d}/baseline.json"),
    (("--circuits-json=out.json", "--junitxml=out.json"),
     "--junitxml out.json is the same file as --circuits-json {d}/out.json"),
    (("--circuits-json=hardlink.json", "--circuits-baseline=baseline.json"),
     "--circuits-json {d}/hardlink.json is the baseline file this run compares with"),
    (("--circuits-json=circuits.yaml",),
     "--circuits-json {d}/circuits.yaml is {d}/circuits.yaml, a file pytest collects (a test "
     "module or a gate file)"),
    (("--circuits-html=test_trace.py",), "a file pytest collects"),
    (("--circuits-json=tox.ini",), "--circuits-json {d}/tox.ini is the configuration "
                                      "file"),
    (("--circuits-teacher=model", "--circuits-json=model/config.json"),
     "is a file of the teacher model {d}/model (--circuits-teacher)"),
    (("--circuits-json=mytask.yaml",),
     "--circuits-json {d}/mytask.yaml is the task file {d}/mytask.yaml of gate 'aligned' of "
     "{d}/circuits.yaml"),
    (("--junitxml=mytask.yaml",), "--junitxml mytask.yaml is the task file"),
])
def test_an_output_that_is_an_input_or_another_output_is_refused_before_any_test_runs(
    pytester: pytest.Pytester, args: tuple[str, ...], expected: str
) -> None:
    pytester.makepyfile(test_trace=TRACE)
    pytester.makeini("[pytest]\n")
    (pytester.path / "circuits.yaml").write_text(GATE_FILE)
    (pytester.path / "mytask.yaml").write_text("name: mine\n")
    (pytester.path / "baseline.json").write_text(BASELINE)
    (pytester.path / "hardlink.json").hardlink_to(pytester.path / "baseline.json")
    (pytester.path / "model").mkdir()
    (pytester.path / "model" / "config.json").write_text("{}")
    assert expected.format(d=pytester.path) in _refused(pytester, *args)


# ----------------------------------------------------------------------------- swallowed gates

CAUGHT = '''
import pytest

import fakegates
from pytest_circuits.errors import CircuitAssertionError
from pytest_circuits.recording import recording


def test_swallowed():
    try:
        fakegates.aligned(0.5, subject="a -> swallowed")
    except CircuitAssertionError:
        pass


def test_expected():
    with pytest.raises(CircuitAssertionError, match="alignment 0.5"):
        fakegates.aligned(0.5, subject="a -> expected")


def test_expected_as_an_assertion():
    with pytest.raises(AssertionError):
        fakegates.robust(80.0, subject="expected-too")


def test_one_expected_one_swallowed():
    with pytest.raises(CircuitAssertionError):
        fakegates.aligned(0.5, subject="a -> raised")
    try:
        fakegates.aligned(0.6, subject="a -> eaten")
    except CircuitAssertionError:
        pass


@pytest.mark.xfail(strict=True, reason="known bad")
def test_swallowed_but_xfail():
    try:
        fakegates.aligned(0.5, subject="a -> known")
    except CircuitAssertionError:
        pass


def test_own_recorder():
    seen = []
    with recording(seen.append):
        try:
            fakegates.aligned(0.5, subject="a -> own")
        except CircuitAssertionError:
            pass
    assert [r.passed for r in seen] == [False]
'''


@pytest.fixture
def caught(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makepyfile(fakegates=FAKE_GATES, test_caught=CAUGHT)
    return pytester.runpytest("--circuits-json=out.json")


def test_a_failing_gate_whose_error_the_test_swallowed_fails_the_test(
    caught: pytest.RunResult, pytester: pytest.Pytester
) -> None:
    caught.assert_outcomes(passed=3, failed=2, xfailed=1)
    failed = {line.split("::")[1].split()[0] for line in caught.outlines
              if line.startswith("FAILED ")}
    assert failed == {"test_swallowed", "test_one_expected_one_swallowed"}
    text = caught.stdout.str()
    assert ("gate circuit_aligned on 'a -> swallowed' (task 'numerals') FAILED and the test "
            "caught its CircuitAssertionError") in text
    assert "on 'a -> eaten'" in text and "on 'a -> raised'" not in text
    results = {r["subject"]: r for r in load_json(pytester.path / "out.json")["results"]}
    assert (results["a -> swallowed"]["verdict"], results["a -> swallowed"]["outcome"]) == (
        "FAIL", "failed")
    assert results["a -> eaten"]["verdict"] == "FAIL"
    assert results["a -> known"]["verdict"] == "XFAIL"  # the xfail mark: an expected failure
    assert "a -> own" not in results  # recorded by the test's own recorder, not the plugin's


def test_a_failing_gate_caught_by_pytest_raises_is_an_expected_failure(
    caught: pytest.RunResult, pytester: pytest.Pytester
) -> None:
    document = load_json(pytester.path / "out.json")
    results = {r["subject"]: r for r in document["results"]}
    for subject in ("a -> expected", "expected-too", "a -> raised"):
        assert results[subject]["expected"] is True
        assert results[subject]["verdict"] == "XFAIL"
    assert results["a -> expected"]["outcome"] == "passed"
    assert results["a -> eaten"]["expected"] is False
    assert document["summary"] == {"gates": 6, "passed": 0, "failed": 2, "xfailed": 4}
    assert "circuits: 6 gate results: 0 passed, 2 failed, 4 xfailed" in summary_section(
        caught.outlines)


# ----------------------------------------------------------------------------- unfinished gates

UNFINISHED = '''
import os

import pytest

import fakegates


@pytest.fixture
def release_model():
    raise OSError("release model ./release cannot be loaded: config.json is missing")


@pytest.mark.circuits(n_prompts=8)
def test_release(release_model):
    fakegates.aligned(0.9, subject="a -> release")


def test_good():
    fakegates.aligned(0.9)


def test_plain():  # no gate, no circuit fixture or marker: not a gate test
    assert True
'''

MISSING_MODEL_GATES = '''
pairs:
  gone: {teacher: "./no-teacher-here", student: "./no-student-here"}
gates:
  - name: gone-aligned
    pair: gone
    task: numerals
    circuit_aligned: {min_score: 0.5}
'''


def test_a_gate_test_that_errored_in_setup_leaves_the_results_incomplete(
    pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(fakegates=FAKE_GATES, test_unfinished=UNFINISHED)
    result = pytester.runpytest("--circuits-json=out.json")
    result.assert_outcomes(passed=2, errors=1)
    document = load_json(pytester.path / "out.json")
    assert document["summary"] == {"gates": 1, "passed": 1, "failed": 0, "xfailed": 0}
    assert document["complete"] is False
    assert document["interruption"] == "1 gate test did not finish (1 error)"
    assert document["tests"] == [
        {"nodeid": "test_unfinished.py::test_good", "outcome": "passed", "gates": 1,
         "finished": True, "reason": ""},
        {"nodeid": "test_unfinished.py::test_release", "outcome": "error", "gates": 0,
         "finished": False,
         "reason": "OSError: release model ./release cannot be loaded: config.json is missing"},
    ]
    section = summary_section(result.outlines)
    assert ("circuits: 1 gate test did not finish (1 error), so the results are INCOMPLETE (a "
            "gate that did not run is not a gate that passed):") in section
    assert ("  test_unfinished.py::test_release: error (OSError: release model ./release cannot "
            "be loaded: config.json is missing)") in section
    assert any("(INCOMPLETE: 1 gate test did not finish (1 error))" in line for line in section)


@pytest.mark.slow  # the gate imports torch before it finds no model
def test_a_gate_file_whose_model_fails_to_load_leaves_the_results_incomplete(
    pytester: pytest.Pytester
) -> None:
    (pytester.path / "circuits.yaml").write_text(MISSING_MODEL_GATES)
    result = pytester.runpytest("--circuits-json=out.json")
    result.assert_outcomes(failed=1)
    document = load_json(pytester.path / "out.json")
    assert (document["complete"], document["summary"]["failed"]) == (False, 0)
    [test] = document["tests"]
    assert (test["nodeid"], test["outcome"], test["gates"], test["finished"]) == (
        "circuits.yaml::gone-aligned", "failed", 0, False)
    # the reason is one line, cut to a length: the temporary path may push the name past it
    assert "gate 'gone-aligned': ModelLoadError: model directory" in test["reason"]
    assert "  circuits.yaml::gone-aligned: failed (" in "\n".join(summary_section(result.outlines))


CRASHING = '''
import os

import pytest

import fakegates


@pytest.mark.circuits(n_prompts=8)
def test_crash():
    os._exit(3)


def test_good():
    fakegates.aligned(0.9)
'''


@pytest.mark.slow
def test_a_gate_test_whose_xdist_worker_crashed_leaves_the_results_incomplete(
    pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(fakegates=FAKE_GATES, test_crashing=CRASHING)
    result = pytester.runpytest_subprocess("-n", "2", "--circuits-json=out.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    document = load_json(pytester.path / "out.json")
    assert (document["complete"], document["summary"]["failed"]) == (False, 0)
    tests = {t["nodeid"]: t for t in document["tests"]}
    assert sorted(tests) == ["test_crashing.py::test_crash", "test_crashing.py::test_good"]
    crashed = tests["test_crashing.py::test_crash"]
    assert (crashed["outcome"], crashed["finished"]) == ("crashed", False)
    assert "crashed while running 'test_crashing.py::test_crash'" in crashed["reason"]
    assert tests["test_crashing.py::test_good"]["finished"] is True
    assert document["interruption"] == "1 gate test did not finish (1 crashed)"
    assert any(line.startswith("  test_crashing.py::test_crash: crashed (worker ")
               for line in summary_section(result.outlines))
