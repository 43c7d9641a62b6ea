"""The pytest plugin (entry point ``circuits``): options, markers, fixtures, gate files, reports.

Loading it is cheap: torch, transformers and TransformerLens are imported only when a fixture
loads a model, a gate runs, or a ``gpu``-marked test asks whether CUDA is there.

Fixtures ``circuit_pair``, ``teacher``, ``student`` and ``circuit_task`` read their settings from
``@pytest.mark.circuits(...)``, then ``--circuits-*`` options, then ``circuits_*`` ini keys, and
share one loaded model per (source, device, dtype) per process. Under pytest-xdist each worker
loads its own copy; ``--dist loadgroup`` with ``@pytest.mark.xdist_group("pair")`` keeps the
tests of one pair on one worker (gate files: ``--dist loadfile`` keeps a file together).

Each test runs with a recorder (:mod:`pytest_circuits.recording`): every gate result becomes
JUnit properties, a row of the terminal summary, an entry of ``--circuits-json`` and, with
``--circuits-baseline``, a comparison with the last accepted release that fails the test that
regressed. Workers ship their results on the test reports; only the controller writes files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .baseline import Baseline, BaselineCheck, BaselineFileError
from .errors import CircuitAssertionError
from .fixtures import (  # the fixtures are imported here so that pytest finds them
    circuit_pair,
    circuit_task,
    student,
    teacher,
)
from .output import (
    GateRecord,
    environment,
    junit_properties,
    plain,
    property_prefix,
    results_document,
    sort_key,
    summary_lines,
    write_json_atomic,
)
from .recording import GateResult, recording
from .settings import MARKER_KEYS, SETTINGS, add_options, resolve

__all__ = ["CircuitsRun", "circuit_pair", "circuit_task", "student", "teacher"]

#: The report attribute that carries a test's gate records from an xdist worker.
REPORT_ATTRIBUTE = "circuits_gates"


RECORDS = pytest.StashKey[list[GateRecord]]()


# ----------------------------------------------------------------------------- configuration


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"circuits({', '.join(f'{key}=' for key in MARKER_KEYS)}): settings for this test's "
        "circuit fixtures and baseline check",
    )
    config.addinivalue_line(
        "markers",
        "gpu: needs CUDA; skipped when it is absent (failed with --circuits-require-gpu)",
    )
    config.pluginmanager.register(CircuitsRun(config), CircuitsRun.name)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    from .gatefile import is_gate_file

    if is_gate_file(file_path):
        from .gatefile import GateFile

        return GateFile.from_parent(parent, path=file_path)
    return None


# ----------------------------------------------------------------------------- recording


class _Recorder:
    """Receives a test's gate results: records them, adds JUnit properties, checks baselines."""

    def __init__(self, item: pytest.Item, run: CircuitsRun) -> None:
        self.item = item
        self.run = run
        self.records: list[GateRecord] = []
        self.prefixes: dict[str, int] = {}
        marker = item.get_closest_marker("circuits")
        self.tolerance = marker.kwargs.get("baseline_tolerance") if marker else None

    def __call__(self, result: GateResult) -> None:
        __tracebackhide__ = True
        result = GateResult.from_dict(plain(result.to_dict()))
        result.nodeid = self.item.nodeid
        check = self.run.check(result, self.tolerance)
        self.records.append(GateRecord(result, len(self.records), check))
        prefix = property_prefix(result, self.prefixes)
        self.item.user_properties.extend(junit_properties(result, prefix))
        if check is not None and check.failed:
            raise CircuitAssertionError("\n\n".join(filter(None, [result.message, check.message])))

    def unraised(self) -> str:
        """Baseline failures, for when the test caught the error raised at the time."""
        return "\n\n".join(r.baseline.message for r in self.records
                           if r.baseline is not None and r.baseline.failed)


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return report.outcome


def _ambiguous_keys(records: list[GateRecord]) -> list[str]:
    """Notes on baseline keys that several results share with different values."""
    values: dict[str, list[GateRecord]] = {}
    for record in records:
        values.setdefault(record.result.key, []).append(record)
    return [
        f"baseline key {key!r} is produced by {len(group)} results with different values "
        f"({', '.join(sorted({r.result.nodeid for r in group}))}); give them different "
        "subjects or tasks so each has its own entry"
        for key, group in sorted(values.items())
        if len({json.dumps(r.result.values, sort_keys=True) for r in group}) > 1
    ]


class CircuitsRun:
    """The run's state and the hooks that need it; one per process (controller or worker)."""

    name = "circuits-run"

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        for setting in SETTINGS:  # a bad option or ini value is a usage error, up front
            resolve(config, setting.name)
        self.is_worker = hasattr(config, "workerinput")
        self.json_path: Path | None = resolve(config, "json").value
        self.update_baseline: bool = resolve(config, "update_baseline").value
        self.require_gpu: bool = resolve(config, "require_gpu").value
        self.cuda: bool | None = None  # asked once, when the first gpu-marked test runs
        self.records: list[GateRecord] = []
        self.outcomes: dict[str, str] = {}  # nodeid -> outcome of its call (or failed setup)
        self.files: set[str] = set()  # files of every reported test
        self.stale: list[str] = []
        self.notes: list[str] = []  # closing lines of the terminal summary
        self.baseline: Baseline | None = None
        baseline_path = resolve(config, "baseline").value
        if self.update_baseline and baseline_path is None:
            raise pytest.UsageError(
                "--circuits-update-baseline needs the file to write: add "
                "--circuits-baseline=PATH (or the ini key circuits_baseline)"
            )
        if baseline_path is not None:
            try:
                self.baseline = Baseline.load(baseline_path)
            except BaselineFileError as exc:
                raise pytest.UsageError(str(exc)) from None

    def check(self, result: GateResult, tolerance: Any) -> BaselineCheck | None:
        """Compare ``result`` with the baseline (None without one; "updated" when updating)."""
        if self.baseline is None:
            return None
        if self.update_baseline:
            return BaselineCheck(result.key, "updated")
        return self.baseline.check(result, tolerance)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Point the analysis cache at pytest's cache directory (or turn it off)."""
        from . import cache

        if resolve(self.config, "no_cache").value:
            cache.configure(None, enabled=False)
            return
        directory = resolve(self.config, "cache_dir").value
        if directory is None and getattr(self.config, "cache", None) is not None:
            directory = self.config.cache.mkdir("circuits")
        cache.configure(directory, enabled=True)

    def _has_cuda(self) -> bool:
        if self.cuda is None:  # imports torch: asked only once a gpu-marked test exists
            import torch

            self.cuda = bool(torch.cuda.is_available())
        return self.cuda

    @pytest.hookimpl(trylast=True)  # after -k/-m deselection: only selected tests count
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Mark ``gpu`` tests to be skipped when CUDA is absent (unless it is required)."""
        gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
        if not gpu_items or self.require_gpu or self._has_cuda():
            return
        skip = pytest.mark.skip(reason="marked gpu: CUDA is not available (pass "
                                       "--circuits-require-gpu to fail instead)")
        for item in gpu_items:
            item.add_marker(skip)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """With ``--circuits-require-gpu``, fail ``gpu`` tests when CUDA is absent."""
        if self.require_gpu and item.get_closest_marker("gpu") is not None:
            if not self._has_cuda():
                pytest.fail(
                    "this test is marked gpu and --circuits-require-gpu was given, but CUDA is "
                    "not available (torch.cuda.is_available() is False): run it on a GPU runner",
                    pytrace=False,
                )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        recorder = _Recorder(item, self)
        item.stash[RECORDS] = recorder.records
        with recording(recorder):
            outcome = yield
        problems = recorder.unraised()
        if problems:  # the test swallowed the error: a regression still fails it
            raise CircuitAssertionError(problems)
        return outcome

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]
                                  ) -> pytest.TestReport:
        report = yield
        records = item.stash.get(RECORDS, None)
        if call.when == "call" and records:
            setattr(report, REPORT_ATTRIBUTE, [r.to_dict() for r in records])
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Gather records from every report (a worker's arrive here on the controller)."""
        self.files.add(report.nodeid.split("::")[0])
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[report.nodeid] = _outcome(report)
        for data in getattr(report, REPORT_ATTRIBUTE, None) or ():
            record = GateRecord.from_dict(data)
            record.outcome = _outcome(report)
            self.records.append(record)

    def _complete(self, session: pytest.Session, exitstatus: int) -> bool:
        """Whether every collected test could run (no -k/-m/--lf, no node ids, no early stop)."""
        option = self.config.option
        if getattr(option, "keyword", "") or getattr(option, "markexpr", ""):
            return False
        if getattr(option, "lf", False) or getattr(option, "stepwise", False):
            return False
        if getattr(option, "deselect", None):
            return False
        if any("::" in str(arg) for arg in self.config.args):
            return False
        if session.shouldstop or session.shouldfail:
            return False
        return exitstatus not in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR,
                                  pytest.ExitCode.USAGE_ERROR)

    def _stale(self, complete: bool) -> list[str]:
        """Baseline keys no test of this run produced although the test that made them ran."""
        assert self.baseline is not None
        produced = {r.result.key for r in self.records}
        stale = []
        for key, entry in self.baseline.entries.items():
            if key in produced:
                continue
            nodeid = str(entry.get("nodeid", ""))
            outcome = self.outcomes.get(nodeid)
            if outcome == "passed":
                stale.append(key)  # the test ran to the end and no longer measures this
            elif outcome is None and complete:
                file = nodeid.split("::")[0]
                if file in self.files or not (self.config.rootpath / file).exists():
                    stale.append(key)  # the test is gone from a file that ran, or the file is
        return sorted(stale)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """On the controller (or a serial run): find stale entries, write baseline and JSON."""
        if self.is_worker:
            return
        records = sorted(self.records, key=sort_key)
        extra: dict[str, Any] = {}
        if self.baseline is not None:
            complete = self._complete(session, exitstatus)
            self.stale = self._stale(complete)
            if self.update_baseline:
                remove = set(self.stale) if complete else set()
                updated = self.baseline.updated([r.result for r in records], remove,
                                                environment(records)["versions"])
                write_json_atomic(self.baseline.path, updated.to_dict())
                written = len({r.result.key for r in records})
                self.notes.append(
                    f"updated baseline {self.baseline.path}: {written} entries written"
                    + (f", {len(remove)} stale removed" if remove else "")
                )
            self.notes.extend(_ambiguous_keys(records))
            extra["baseline"] = {
                "path": str(self.baseline.path),
                "mode": "update" if self.update_baseline else "compare",
                "stale": self.stale,
            }
        if self.json_path is not None:
            write_json_atomic(self.json_path, results_document(records, extra))
            self.notes.append(f"wrote {len(records)} gate results to {self.json_path}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or not (self.records or self.stale or self.notes):
            return
        write = terminalreporter.write_line
        terminalreporter.write_sep("=", "circuit gates")
        records = sorted(self.records, key=sort_key)
        if records:
            for line in summary_lines(records, with_baseline=self.baseline is not None):
                write(line)
            verdicts = [r.verdict for r in records]
            write(f"circuits: {len(records)} gate results: {verdicts.count('PASS')} passed, "
                  f"{verdicts.count('FAIL')} failed, {verdicts.count('XFAIL')} xfailed")
        if self.stale:
            what = "removed from the baseline" if self.update_baseline and any(
                "stale removed" in n for n in self.notes) else "not produced by this run"
            write(f"circuits: {len(self.stale)} stale baseline entries ({what}):")
            for key in self.stale:
                write(f"  {key}")
        for note in self.notes:
            write(f"circuits: {note}")
