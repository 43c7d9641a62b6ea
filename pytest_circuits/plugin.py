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

An interrupted run (Ctrl-C, or SIGTERM, which the plugin turns into the same interruption)
writes a results file marked ``"complete": false`` and leaves the baseline and the HTML report
as they were; every output path is checked for writability at startup, before a model loads.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from . import progress
from .baseline import Baseline, BaselineCheck, BaselineFileError
from .errors import CircuitAssertionError
from .fixtures import (  # the fixtures are imported here so that pytest finds them
    circuit_pair,
    circuit_task,
    memo_of,
    student,
    teacher,
)
from .output import (
    GateRecord,
    SweepProgress,
    adaptation_lines,
    environment,
    junit_properties,
    plain,
    property_prefix,
    results_document,
    sort_key,
    summary_lines,
    unwritable,
    write_json_atomic,
)
from .recording import GateResult, RunSettings, recording, using_settings
from .settings import (
    MARKER_KEYS,
    SETTINGS,
    add_options,
    apply_threads,
    merged_marker_kwargs,
    resolve,
    thread_count,
)

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


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.pluginmanager.get_plugin(CircuitsRun.name)
    if isinstance(run, CircuitsRun):
        run.restore_signals()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    from .gatefile import is_gate_file

    if is_gate_file(file_path):
        from .gatefile import GateFile

        return GateFile.from_parent(parent, path=file_path)
    return None


# ----------------------------------------------------------------------------- recording


class _Recorder:
    """Receives a test's gate results: records them, adds JUnit properties, checks baselines."""

    def __init__(self, item: pytest.Item, run: CircuitsRun, marker: dict[str, Any]) -> None:
        self.item = item
        self.run = run
        self.records: list[GateRecord] = []
        self.prefixes: dict[str, int] = {}
        self.tolerance = marker.get("baseline_tolerance")

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
        self.html_path: Path | None = resolve(config, "html").value
        self.interruption: str | None = None  # what stopped the run, when something did
        self.baseline: Baseline | None = None
        baseline_path = resolve(config, "baseline").value
        if self.update_baseline and baseline_path is None:
            raise pytest.UsageError(
                "--circuits-update-baseline needs the file to write: add "
                "--circuits-baseline=PATH (or the ini key circuits_baseline)"
            )
        if not self.is_worker:
            self._check_writable(baseline_path)
        if baseline_path is not None:
            try:
                self.baseline = Baseline.load(baseline_path)
            except BaselineFileError as exc:
                raise pytest.UsageError(str(exc)) from None
        self.threads, self.threads_origin = thread_count(config)
        if self.is_worker or not getattr(config.option, "numprocesses", None):
            # a process that runs tests (not an xdist controller): set before any model loads
            apply_threads(self.threads)
            memo_of(config).threads = self.threads
        self._previous_sigterm: Any = None
        self._install_sigterm()

    def _check_writable(self, baseline_path: Path | None) -> None:
        """Refuse at startup an output path the run could not write at its end (after an hour
        of sweeps), naming the path and the setting it came from."""
        paths = [("json", self.json_path, False), ("html", self.html_path, False)]
        if self.update_baseline:
            paths.append(("baseline", baseline_path, False))
        cache_dir = resolve(self.config, "cache_dir")
        if cache_dir.value is not None and not resolve(self.config, "no_cache").value:
            paths.append(("cache_dir", cache_dir.value, True))
        for name, path, directory in paths:
            if path is None:
                continue
            problem = unwritable(path, directory=directory)
            if problem:
                origin = resolve(self.config, name).origin
                raise pytest.UsageError(
                    f"{origin}: cannot write {path}: {problem}. Point it at a writable "
                    "location (checked before any model loads, so the run does not end without "
                    "its results)"
                )

    # ------------------------------------------------------------------------- interruptions

    def _install_sigterm(self) -> None:
        """Turn SIGTERM (a CI job cancelled, a container stopped) into the interruption pytest
        reports for Ctrl-C, so the run ends through sessionfinish: results marked incomplete,
        the baseline untouched, a non-zero exit. A handler the user installed is left alone."""
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            current = signal.getsignal(signal.SIGTERM)
        except (AttributeError, ValueError):  # no SIGTERM on this platform
            return
        if current not in (signal.SIG_DFL, None):
            return
        self._previous_sigterm = current
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.interruption = "SIGTERM: the run was told to stop"
        raise KeyboardInterrupt("SIGTERM")

    def restore_signals(self) -> None:
        if self._previous_sigterm is not None:
            try:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            except ValueError:  # not the main thread any more
                pass
            self._previous_sigterm = None

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        if self.interruption is None:
            self.interruption = f"KeyboardInterrupt: {excinfo.exconly()}"

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

    def _run_settings(self, item: pytest.Item, marker: dict[str, Any]) -> RunSettings:
        """What the gates of ``item`` use for a task given by name: its merged marker, else
        ``--circuits-n-prompts``/``--circuits-seed``, else the ini keys, else the defaults."""
        base = Path(str(item.path)).parent
        return RunSettings(
            n_prompts=resolve(self.config, "n_prompts", marker, base).value,
            seed=resolve(self.config, "seed", marker, base).value,
            require_gpu=self.require_gpu,
        )

    def _sweep_method(self, item: pytest.Item, marker: dict[str, Any]) -> Any:
        """The run's ``--circuits-method`` (marker, option, ini key) for the gates of ``item``;
        unset, each gate picks by its models' size."""
        from .kinds.runner import using_method

        chosen = resolve(self.config, "method", marker, Path(str(item.path)).parent)
        return using_method(chosen.value, chosen.origin)

    def _sweep_progress(self) -> Any:
        """Lines on the terminal while a long sweep runs (serial runs: a worker has none)."""
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if self.is_worker or terminal is None:
            return contextlib.nullcontext()
        capture = self.config.pluginmanager.get_plugin("capturemanager")

        def write_line(line: str) -> None:
            # the test's output is being captured (fd level): step outside it, as live logs do
            with (capture.global_and_fixture_disabled() if capture is not None
                  else contextlib.nullcontext()):
                terminal.write_line(line)

        return progress.reporting(SweepProgress(write_line))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        try:
            marker = merged_marker_kwargs(item)
            settings = self._run_settings(item, marker)
            method = self._sweep_method(item, marker)
        except pytest.UsageError as exc:
            problem = str(exc)
            pytest.fail(problem, pytrace=False)
        if "torch" in sys.modules:  # a test or fixture imported it after configure
            apply_threads(self.threads)
        recorder = _Recorder(item, self, marker)
        item.stash[RECORDS] = recorder.records
        with recording(recorder), using_settings(settings), method, self._sweep_progress():
            try:
                outcome = yield
            except KeyboardInterrupt:  # no report will carry them: keep what the test measured
                if not self.is_worker:
                    for record in recorder.records:
                        record.outcome = "interrupted"
                        self.records.append(record)
                raise
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
            if self.config.pluginmanager.hasplugin("html"):
                _attach_html_snippet(report, records)
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

    def _interruption(self, session: pytest.Session, exitstatus: int) -> str | None:
        """Why the run did not get through its selected tests, None when it did."""
        if self.interruption is not None:
            return self.interruption
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            return "interrupted"
        if exitstatus == pytest.ExitCode.INTERNAL_ERROR:
            return "internal error"
        if session.shouldstop:
            return f"stopped early: {session.shouldstop}"
        if session.shouldfail:
            return f"stopped early: {session.shouldfail}"
        return None

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """On the controller (or a serial run): find stale entries, write baseline and JSON.

        After an interruption the baseline and the HTML report are left as they were (a
        half-updated baseline would accept whatever ran before the interruption), and the JSON
        says ``"complete": false`` with the reason.
        """
        if self.is_worker:
            return
        records = sorted(self.records, key=sort_key)
        stopped = self._interruption(session, exitstatus)
        interrupted = stopped is not None and not stopped.startswith("stopped early")
        extra: dict[str, Any] = {"threads": {"per_process": self.threads,
                                             "origin": self.threads_origin}}
        if self.baseline is not None:
            complete = self._complete(session, exitstatus) and not interrupted
            self.stale = self._stale(complete)
            if self.update_baseline and interrupted:
                self.notes.append(f"baseline {self.baseline.path} NOT updated: the run was "
                                  f"interrupted ({stopped}); rerun to completion to update it")
            elif self.update_baseline:
                self._write_baseline(records, complete)
            self.notes.extend(_ambiguous_keys(records))
            extra["baseline"] = {
                "path": str(self.baseline.path),
                "mode": "update" if self.update_baseline else "compare",
                "stale": self.stale,
                "written": self.update_baseline and not interrupted,
            }
        if self.json_path is not None:
            write_json_atomic(self.json_path, results_document(
                records, extra, complete=stopped is None, interruption=stopped))
            self.notes.append(f"wrote {len(records)} gate results to {_shown(self.json_path)}"
                              + (f" (INCOMPLETE: {stopped})" if stopped else ""))
        if self.html_path is not None:
            if interrupted:
                self.notes.append(f"HTML report {self.html_path} NOT written: the run was "
                                  f"interrupted ({stopped})")
            else:
                self._write_html(records)

    def _write_baseline(self, records: list[GateRecord], complete: bool) -> None:
        assert self.baseline is not None
        remove = set(self.stale) if complete else set()
        # a result without finite values would make the file unreadable (the loader refuses
        # it), so the entry it would replace stays as it was
        usable, skipped = [], []
        for record in records:
            values = record.result.values
            finite = bool(values) and all(
                isinstance(v, (int, float)) and v == v and abs(v) != float("inf")
                for v in values.values())
            (usable if finite else skipped).append(record.result)
        updated = self.baseline.updated(usable, remove, environment(records)["versions"])
        write_json_atomic(self.baseline.path, updated.to_dict())
        written = len({r.key for r in usable})
        self.notes.append(
            f"updated baseline {self.baseline.path}: {written} entries written"
            + (f", {len(remove)} stale removed" if remove else "")
        )
        for result in skipped:
            self.notes.append(f"baseline entry {result.key!r} NOT updated: {result.nodeid} "
                              "measured no finite values")

    def _write_html(self, records: list[GateRecord]) -> None:
        """The HTML report of every gate (after the xdist merge), written atomically."""
        try:
            from .htmlreport import write_session_report
        except ImportError as exc:  # the report needs matplotlib
            self.notes.append(f"HTML report {self.html_path} NOT written: {exc}")
            return
        write_session_report(self.html_path, records)
        self.notes.append(f"wrote the HTML report to {self.html_path}")

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
            for line in adaptation_lines(records):
                write(line)
            for line in method_lines(records):
                write(line)
        if self.stale:
            what = "removed from the baseline" if self.update_baseline and any(
                "stale removed" in n for n in self.notes) else "not produced by this run"
            write(f"circuits: {len(self.stale)} stale baseline entries ({what}):")
            for key in self.stale:
                write(f"  {key}")
        for note in self.notes:
            write(f"circuits: {note}")


def method_lines(records: list[GateRecord]) -> list[str]:
    """One line per gate whose sweeps were not all exact: which method ran and how many values
    are exact and how many bounded estimates (a passing gate has no message to say it in)."""
    lines = []
    for record in records:
        data = record.result.fingerprint.get("sweep_method")
        if not isinstance(data, dict) or not any(
                isinstance(s, dict) and s.get("method") == "auto"
                for s in dict(data.get("sweeps") or {}).values()):
            continue
        lines.append(f"circuits: {record.result.nodeid} [{record.result.gate}] "
                     f"{data.get('note', '')}")
    return lines


def _attach_html_snippet(report: pytest.TestReport, records: list[GateRecord]) -> None:
    """Add the compact report of this test's gates to pytest-html's extras."""
    try:
        from pytest_html import extras  # type: ignore[import-not-found]

        from .htmlreport import html_snippet
    except ImportError:
        return
    snippet = html_snippet(records)
    if snippet:
        report.extras = [*getattr(report, "extras", []), extras.html(snippet)]


def _shown(path: Path) -> str:
    """``path`` as a note prints it: relative to the working directory when it lies inside it
    (``examples/gate-results.json``), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
