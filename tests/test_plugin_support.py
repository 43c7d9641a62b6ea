"""Shared by the test_plugin_* files (holds no tests): fake gates and readers of run outputs.

The fake gates record :class:`GateResult` objects exactly as the real ``assert_*`` functions
do (record first, then raise), so reports, JUnit, JSON and baselines are tested in a fraction
of a second per run, without loading a model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

#: The method fingerprint of every fake alignment result.
FINGERPRINT: dict[str, Any] = {
    "analysis": "compare", "ablation": "mean", "method": "exact", "similarity": "paper",
    "matching": "paper", "task": "numerals", "task_sha256": "0" * 16, "n_prompts": 8,
    "n_reference": 8, "seed": 0, "dtype": "float32", "device_kind": "cpu",
    "versions": {"torch": "2.0"},
}

#: Written into a pytester directory as ``fakegates.py``.
FAKE_GATES = '''
"""Fake gates: record like the real assertions, then raise on failure."""
import os

from pytest_circuits.errors import CircuitAssertionError
from pytest_circuits.recording import GateResult, MetricCheck, record

FINGERPRINT = None  # replaced below


def env(name, default):
    return float(os.environ.get(name, default))


def _finish(result):
    failed = [c for c in result.checks if not c.passed]
    result.message = "" if not failed else "gate failed: " + ", ".join(
        f"{c.metric} {c.value} {c.op} {c.threshold} is false" for c in failed)
    record(result)
    if failed:
        raise CircuitAssertionError(result.message)
    return result


def aligned(score, min_score=0.8, subject="teacher -> student", task="numerals", **method):
    return _finish(GateResult(
        gate="circuit_aligned", subject=subject, task=task,
        checks=[MetricCheck("alignment", score, min_score, ">=")],
        values={"alignment": score, "mean_similarity": score + 0.05, "n_pairs": 12.0},
        blame=[{"teacher": "L0H1", "student": "L0H0", "contribution": 0.1}],
        fingerprint={**FINGERPRINT, **method},
        models={"teacher": {"name": "teacher"}, "student": {"name": "student"}},
        report={"alignment": {"score": score}},
    ))


def robust(worst_drop, max_single_drop=50.0, subject="student", task="numerals"):
    return _finish(GateResult(
        gate="ablation_robust", subject=subject, task=task,
        checks=[MetricCheck("max_single_drop", worst_drop, max_single_drop, "<=")],
        values={"max_single_drop": worst_drop, "severity": worst_drop / 1000, "gini": 0.3},
        blame=[{"component": "L1H0", "drop": worst_drop}],
        fingerprint={**FINGERPRINT, "analysis": "sweep", "similarity": "", "matching": ""},
        models={"model": {"name": subject}},
    ))
'''.replace("FINGERPRINT = None  # replaced below", f"FINGERPRINT = {FINGERPRINT!r}")

#: Four tests over the fake gates: a pass, a fail, a pass driven by env vars, a strict xfail.
FAKE_TESTS = """
import pytest

import fakegates
from pytest_circuits.errors import CircuitAssertionError


def test_good():
    fakegates.aligned(fakegates.env("GOOD_SCORE", "0.9"))


def test_bad():
    fakegates.aligned(0.5, subject="teacher -> weak")


def test_robust():
    fakegates.robust(fakegates.env("WORST_DROP", "30"))


@pytest.mark.xfail(strict=True, raises=CircuitAssertionError, reason="brittle on purpose")
def test_brittle():
    fakegates.robust(80.0, subject="brittle")
"""


def write_fake_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(fakegates=FAKE_GATES, test_fake=FAKE_TESTS)


def shared_run(
    tmp_path_factory: pytest.TempPathFactory, name: str, files: dict[str, str], *args: str,
    env: dict[str, str] | None = None,
) -> tuple[Path, pytest.RunResult]:
    """Write ``files`` into a directory and run pytest there, once per test session.

    Under xdist the first worker to ask runs it and the others read its result, so a module
    whose tests share one run pays for it once however the tests are spread over workers.
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    directory = root / name
    record = root / f"{name}.run.json"
    with FileLock(str(root / f"{name}.lock")):
        if not record.exists():
            directory.mkdir(parents=True, exist_ok=True)
            for file_name, text in files.items():
                (directory / file_name).write_text(text)
            run = run_pytest(directory, *args, env=env)
            record.write_text(json.dumps([run.ret, run.outlines, run.errlines, run.duration]))
        ret, outlines, errlines, duration = json.loads(record.read_text())
    return directory, pytest.RunResult(ret, outlines, errlines, duration)


def run_pytest(directory: Path, *args: str, env: dict[str, str] | None = None) -> pytest.RunResult:
    """``python -m pytest *args`` in ``directory`` (a fresh process, like
    ``pytester.runpytest_subprocess``), for runs that several tests of a module share."""
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_ADDOPTS", "PYTEST_XDIST"))
    }
    environ.update(env or {})
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=directory,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return pytest.RunResult(
        done.returncode,
        done.stdout.splitlines(),
        done.stderr.splitlines(),
        time.monotonic() - start,
    )


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    """testcase name -> {property name: value} from a JUnit XML file."""
    found: dict[str, dict[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        found[case.get("name", "")] = {
            p.get("name", ""): p.get("value", "") for p in case.iter("property")
        }
    return found


def summary_section(lines: list[str]) -> list[str]:
    """The lines of the 'circuit gates' terminal summary section."""
    start = next(i for i, line in enumerate(lines) if re.search(r"=+ circuit gates =+", line))
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"^=+ .* =+$", lines[i])), len(lines)
    )
    return lines[start + 1 : end]


def summary_row(lines: list[str], *words: str) -> str:
    """The one summary line that contains all ``words``."""
    rows = [line for line in summary_section(lines) if all(w in line for w in words)]
    assert len(rows) == 1, f"expected one summary row with {words}, got {rows}"
    return rows[0]


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def results_by_test(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The JSON results keyed by test name (the part of the node id after '::')."""
    return {r["nodeid"].split("::")[-1]: r for r in document["results"]}
