"""The pytest plugin (entry point ``circuits``): options, markers, fixtures, gate files, reports.

Loading it is cheap: torch, transformers and TransformerLens are imported only when a fixture
loads a model, a gate runs, or a ``gpu``-marked test asks whether CUDA is there.

Fixtures ``circuit_pair``, ``teacher``, ``student`` and ``circuit_task`` read their settings from
``@pytest.mark.circuits(...)``, then ``--circuits-*`` options, then ``circuits_*`` ini keys, and
share one loaded model per (source, device, dtype) per process. Under pytest-xdist each worker
loads its own copy; ``--dist loadgroup`` with ``@pytest.mark.xdist_group("pair")`` keeps the
tests of one pair on one worker (gate files: ``--dist loadfile`` keeps a file together).

Each session gets its own context (:mod:`pytest_circuits.config.context`: a fresh analysis
cache), and each test a copy of it with a recorder, its run settings and the sweep progress
line: every gate result goes to the report writers (:mod:`pytest_circuits.reporting`: JUnit
properties, a row of the terminal summary, an entry of ``--circuits-json``, the HTML report)
and, with ``--circuits-baseline``, is compared with the last accepted release, which fails the
test that regressed. A failing verdict fails its test even when the test swallows the error,
unless ``pytest.raises`` caught it (an expected failure). Workers ship their results on the
test reports; only the controller writes files.

An interrupted run (Ctrl-C, or SIGTERM, which the plugin turns into the same interruption), or
one where a gate test errored, crashed or did not run, writes a results file marked
``"complete": false`` listing them, and an interruption leaves the baseline and the HTML report
as they were. A run that gates nothing (``--collect-only``, or no gate test selected) writes no
file at all: the last results JSON, HTML report and baseline stay as they were. Every output
path is checked at startup, before a model loads: writable, and neither another output nor an
input of the run. A file that cannot be written at the end is
one ERROR line and a failed run, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from .baseline import Baseline, BaselineCheck, BaselineFileError, entry_for, entry_problem
from .config import context
from .config.context import CacheStore, RunContext, RunSettings
from .errors import CircuitAssertionError
from .fixtures import (  # the fixtures are imported here so that pytest finds them
    circuit_pair,
    circuit_task,
    memo_of,
    student,
    teacher,
)
from .gatefile import GateFile, GateItem, is_gate_file
from .output import (
    GateRecord,
    SweepProgress,
    environment,
    plain,
    same_file,
    sort_key,
    unwritable,
    write_json_atomic,
)
from .reporting import GateTest, ReportWriter, RunInfo, configured_writers
from .results import GateResult
from .settings import (
    MARKER_KEYS,
    SETTINGS,
    add_options,
    apply_threads,
    merged_marker_kwargs,
    model_source,
    ray_address,
    resolve,
    thread_count,
)

__all__ = ["CircuitsRun", "circuit_pair", "circuit_task", "student", "teacher"]

#: The report attribute that carries a test's gate records from an xdist worker.
REPORT_ATTRIBUTE = "circuits_gates"


RECORDS = pytest.StashKey[list[GateRecord]]()

#: The report attribute that tells the controller a test is a gate test (sent with its setup
#: report, so a worker that dies during the call still leaves it known), and the
#: ``workeroutput`` key under which a worker sends every gate test it collected.
GATE_TEST_ATTRIBUTE = "circuits_gate_test"
GATE_TESTS_OUTPUT = "circuits_gate_tests"

#: Seconds between the progress lines of a long sweep (after its first, at 3 s); read when
#: each test starts.
PROGRESS_EVERY = 30.0

#: The fixtures that make a test a gate test.
CIRCUIT_FIXTURES = frozenset({"circuit_pair", "circuit_task", "student", "teacher"})


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
    _watch_raises()


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.pluginmanager.get_plugin(CircuitsRun.name)
    if isinstance(run, CircuitsRun):
        run.restore_signals()
        run.release_context()


def session_executor(config: pytest.Config) -> Any:
    """The session's sweep executor: a Ray one when ``--circuits-ray`` (or ini, or
    ``RAY_ADDRESS``) names a cluster, else None. Ray itself is imported on first use."""
    address = ray_address(config)
    if address is None:
        return None
    from .distributed import RayExecutor

    # each xdist worker runs its own executor on the same cluster: each takes its share
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    sessions = int(workers) if workers.isdigit() and int(workers) > 0 else 1
    return RayExecutor(address.value, origin=address.origin, sessions=sessions)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:

    if is_gate_file(file_path):

        return GateFile.from_parent(parent, path=file_path)
    return None


# ----------------------------------------------------------------------------- recording


class _Recorder:
    """Receives a test's gate results: records them, checks baselines, tells the writers."""

    def __init__(self, item: pytest.Item, run: CircuitsRun, marker: dict[str, Any]) -> None:
        self.item = item
        self.run = run
        self.records: list[GateRecord] = []
        self.tolerance = marker.get("baseline_tolerance")

    def __call__(self, result: GateResult) -> None:
        __tracebackhide__ = True
        result = GateResult.from_dict(plain(result.to_dict()))
        result.nodeid = self.item.nodeid
        check = self.run.check(result, self.tolerance)
        self.records.append(GateRecord(result, len(self.records), check))
        for writer in self.run.writers:
            writer.gate(self.item, self.records)
        if check is not None and check.failed:
            raise CircuitAssertionError("\n\n".join(filter(None, [result.message, check.message])))

    def expect(self, error: BaseException) -> None:
        """The test caught ``error`` with ``pytest.raises``: the failing gate that raised it
        (the latest whose message the error carries) was expected to fail."""
        text = str(error)
        for record in reversed(self.records):
            message = record.result.message
            if not record.result.passed and not record.expected and message and message in text:
                record.expected = True
                return

    def unraised(self) -> str:
        """Why the test fails although it returned: it caught the error of a failing gate
        (other than with ``pytest.raises``), or of a baseline failure (which fails the test
        however it was caught)."""
        problems = []
        for record in self.records:
            result = record.result
            if not result.passed and not record.expected:
                problems.append(
                    f"gate {result.gate} on {result.subject!r} (task {result.task!r}) FAILED and "
                    "the test caught its CircuitAssertionError: a failing gate fails its test "
                    "(to expect the failure, catch it with pytest.raises(CircuitAssertionError) "
                    f"or mark the test xfail)\n{result.message}")
            if record.baseline is not None and record.baseline.failed:
                problems.append(record.baseline.message)
        return "\n\n".join(problems)


def _watch_raises() -> None:
    """Let a recorder know when ``pytest.raises`` catches a gate's error (an expected failure,
    not a swallowed one). ``ExceptionInfo.fill_unfilled`` is what every ``pytest.raises``
    form calls with the exception it caught; it is wrapped once per process."""
    original = getattr(pytest.ExceptionInfo, "fill_unfilled", None)
    if original is None or getattr(original, "circuits_watch", False):
        # a pytest without it: a gate failure caught by pytest.raises then fails its test
        # like any swallowed one (stricter, never a silent pass)
        return

    def fill_unfilled(self: Any, exc_info: Any) -> None:
        original(self, exc_info)
        recorder = context.current().recorder
        if isinstance(recorder, _Recorder) and isinstance(exc_info[1], CircuitAssertionError):
            recorder.expect(exc_info[1])

    fill_unfilled.circuits_watch = True  # type: ignore[attr-defined]
    pytest.ExceptionInfo.fill_unfilled = fill_unfilled  # type: ignore[method-assign]


def collected_inputs(items: list[pytest.Item]) -> list[tuple[str, Path]]:
    """The files the collected tests read that collection knows: their modules and gate
    files, and a gate file's task files and model files."""

    found: dict[Path, str] = {}
    for item in items:
        found.setdefault(Path(str(item.path)), f"{item.path}, a file of the collected tests")
        if not isinstance(item, GateItem):
            continue
        where = f"gate {item.spec.name!r} of {item.path}"
        task = item.path.parent / item.spec.task
        if task.is_file():
            found.setdefault(task, f"the task file {task} of {where}")
        for model in filter(None, (item.spec.teacher, item.spec.subject)):
            source = Path(model.source)
            files = [source] if source.is_file() else (
                [c for c in source.iterdir() if c.is_file()] if source.is_dir() else [])
            for file in files:
                found.setdefault(file, f"{file}, a file of model {model.name!r} of {where}")
    return [(what, path) for path, what in found.items()]


def is_gate_test(item: pytest.Item) -> bool:
    """Whether ``item`` runs gates, as far as collection can tell: a gate-file item, or a test
    that uses the circuit fixtures or carries the ``circuits`` marker. (A test that calls a
    gate on models it loads itself is known to be one once it records a result.)"""

    if isinstance(item, GateItem) or item.get_closest_marker("circuits") is not None:
        return True
    return bool(CIRCUIT_FIXTURES.intersection(getattr(item, "fixturenames", ())))


def _reason(report: Any) -> str:
    """The one line that says why ``report`` failed: its crash message, else its last line."""
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    text = getattr(crash, "message", None) or str(getattr(report, "longrepr", "") or "")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if crash is not None and lines else (lines[-1] if lines else "")
    return line if len(line) <= 200 else line[:197] + "..."


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
        self.gate_tests: set[str] = set()  # node ids of the collected gate tests
        self.ends: dict[str, tuple[str, str]] = {}  # nodeid -> how it ended, and why
        self.stale: list[str] = []
        self.notes: list[str] = []  # closing lines of the terminal summary
        self.write_failed = False  # an output could not be written at the end: a failed run
        self.html_path: Path | None = resolve(config, "html").value
        self.outputs: list[tuple[str, Path]] = []  # (what, path) of each file the run writes
        #: the run's outputs (JUnit, pytest-html, results JSON, HTML, terminal summary)
        self.writers: list[ReportWriter] = configured_writers(
            config.pluginmanager, self.json_path, self.html_path)
        self.run_info: RunInfo | None = None  # what the writers were given at the end
        self._context_token: Any = None  # the session's context, installed at session start
        self.executor: Any = None  # the session's Ray executor (--circuits-ray), else None
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
            self.outputs = self._outputs(baseline_path)
            self._check_outputs(self._inputs(baseline_path))
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

    def _outputs(self, baseline_path: Path | None) -> list[tuple[str, Path]]:
        """Every file this run writes, named as the user gave it: the results JSON, the HTML
        report, the baseline when updating, and pytest's own JUnit XML and pytest-html reports."""
        found = []
        for name in ("json", "html"):
            chosen = resolve(self.config, name)
            if chosen.value is not None:
                found.append((f"{chosen.origin} {chosen.value}", chosen.value))
        if self.update_baseline and baseline_path is not None:
            origin = resolve(self.config, "baseline").origin
            found.append((f"{origin} {baseline_path} (written by --circuits-update-baseline)",
                          baseline_path))
        invoked = self.config.invocation_params.dir
        for option, flag in (("xmlpath", "--junitxml"), ("htmlpath", "--html")):
            given = getattr(self.config.option, option, None)
            if given:
                path = invoked / os.path.expanduser(os.path.expandvars(str(given)))
                found.append((f"{flag} {given}", path))
        return found

    def _inputs(self, baseline_path: Path | None) -> list[tuple[str, Path]]:
        """The files this run reads that are known before collection: the baseline when only
        compared, the model files and folders and the task file of the options and ini keys,
        and the configuration file."""
        found = []
        if baseline_path is not None and not self.update_baseline:
            found.append(("the baseline file this run compares with", baseline_path))
        for role in ("teacher", "student"):
            chosen = resolve(self.config, role)
            if chosen.value is None:
                continue
            path = Path(model_source(chosen))
            if path.is_file():
                found.append((f"the {role} model {path} ({chosen.origin})", path))
            elif path.is_dir():
                found += [(f"a file of the {role} model {path} ({chosen.origin})", child)
                          for child in path.iterdir() if child.is_file()]
        task = resolve(self.config, "task")
        task_path = task.base / str(task.value)
        if task.origin != "default" and task_path.is_file():
            found.append((f"the task file {task.value} ({task.origin})", task_path))
        if self.config.inipath is not None:
            found.append(("the configuration file", Path(self.config.inipath)))
        return found

    def _check_outputs(self, inputs: list[tuple[str, Path]]) -> None:
        """Refuse an output that is another output (one would overwrite the other) or a file
        the run reads, a test module or gate file included (it would be destroyed), before
        any test runs."""
        for i, (what, path) in enumerate(self.outputs):
            for other, other_path in self.outputs[:i]:
                if same_file(path, other_path):
                    raise pytest.UsageError(f"{what} is the same file as {other}: one would "
                                            "overwrite the other; give each its own path")
            for source, source_path in inputs:
                if same_file(path, source_path):
                    raise pytest.UsageError(
                        f"{what} is {source}: writing it would destroy an input of the run; "
                        "give another path")
            if path.is_file() and self._collectable(path):
                raise pytest.UsageError(
                    f"{what} is {path}, a file pytest collects (a test module or a gate "
                    "file): writing it would destroy an input of the run; give another path")

    def _collectable(self, path: Path) -> bool:
        """Whether pytest would read ``path`` as a test module, conftest or gate file."""
        from fnmatch import fnmatch


        if is_gate_file(path) or path.name == "conftest.py":
            return True
        return path.suffix == ".py" and any(
            fnmatch(path.name, pattern) for pattern in self.config.getini("python_files"))

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
        """Install the session's context, whose analysis cache starts empty and points at
        pytest's cache directory (or is off): nothing carries over from another session in
        this process, and nothing of this one outlives it. Its progress lines show the sweeps
        that fixtures run; each test gets its own for the sweeps of its call."""
        from . import cache

        self.executor = session_executor(self.config)
        # the progress lines also cover sweeps run by fixtures (setup), not only by tests
        self._context_token = context.install(RunContext(cache=CacheStore(),
                                                         progress=self._sweep_progress(),
                                                         executor=self.executor))
        if resolve(self.config, "no_cache").value:
            cache.configure(None, enabled=False)
            return
        directory = resolve(self.config, "cache_dir").value
        if directory is None and getattr(self.config, "cache", None) is not None:
            directory = self.config.cache.mkdir("circuits")
        cache.configure(directory, enabled=True)

    def release_context(self) -> None:
        """Restore the context that was current before the session (at unconfigure)."""
        if self._context_token is not None:
            context.uninstall(self._context_token)
            self._context_token = None
        if self.executor is not None:  # the session's Ray actors (and a local Ray) end here
            self.executor.close()
            self.executor = None

    def _has_cuda(self) -> bool:
        if self.cuda is None:  # imports torch: asked only once a gpu-marked test exists
            import torch

            self.cuda = bool(torch.cuda.is_available())
        return self.cuda

    @pytest.hookimpl(trylast=True)  # after -k/-m deselection: only selected tests count
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Refuse an output that is a collected file, and mark ``gpu`` tests to be skipped
        when CUDA is absent (unless it is required)."""
        if self.outputs:
            try:
                self._check_outputs(collected_inputs(items))
            except pytest.UsageError:
                self.outputs = []  # refused: the run ends before any test, writing nothing
                self.writers = [w for w in self.writers if w.name not in ("json", "html")]
                self.update_baseline = False
                for plugin in self.config.pluginmanager.get_plugins():
                    # pytest's --junitxml writer writes at sessionfinish whatever happened
                    if type(plugin).__name__ == "LogXML" and hasattr(plugin, "logfile"):
                        plugin.logfile = os.devnull
                raise
        gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
        if not gpu_items or self.require_gpu or self._has_cuda():
            return
        skip = pytest.mark.skip(reason="marked gpu: CUDA is not available (pass "
                                       "--circuits-require-gpu to fail instead)")
        for item in gpu_items:
            item.add_marker(skip)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Note the gate tests this run will run (a worker sends them to the controller)."""
        self.gate_tests = {item.nodeid for item in session.items if is_gate_test(item)}
        if self.is_worker:
            self.config.workeroutput[GATE_TESTS_OUTPUT] = sorted(self.gate_tests)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """An xdist worker finished: add the gate tests it collected."""
        self.gate_tests.update(getattr(node, "workeroutput", {}).get(GATE_TESTS_OUTPUT, ()))

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: Any, sched: Any) -> None:
        """An xdist worker died while running ``crashitem``."""
        self.ends[crashitem] = ("crashed", _reason(report))

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

    def _sweep_method(self, item: pytest.Item, marker: dict[str, Any]) -> tuple[str | None, str]:
        """The run's ``--circuits-method`` (marker, option, ini key) for the gates of ``item``
        and where it came from; unset, each gate picks by its models' size."""
        chosen = resolve(self.config, "method", marker, Path(str(item.path)).parent)
        return chosen.value, chosen.origin

    def _sweep_progress(self) -> SweepProgress | None:
        """Lines while a long sweep runs (model, ablations done of all, time so far): when it
        passes 3 s, then about every :data:`PROGRESS_EVERY` seconds, and when it is done; none
        under ``-q``. A serial run writes them through the terminal reporter. An xdist worker
        has no terminal and its captured output reaches the controller only with its report,
        after the test: it writes them to its standard error, which the controller's process
        shares (xdist starts workers with it inherited), prefixed with the worker's id so the
        CI log says whose sweep it is."""
        if self.config.get_verbosity() < 0:
            return None
        capture = self.config.pluginmanager.get_plugin("capturemanager")

        def outside_capture() -> Any:
            # the test's output is being captured (fd level): step outside it, as live logs do
            return (capture.global_and_fixture_disabled() if capture is not None
                    else contextlib.nullcontext())

        if self.is_worker:
            worker = self.config.workerinput.get("workerid", "worker")

            def write_line(line: str) -> None:
                with outside_capture():
                    # on its own line: the controller's dots may be mid-line
                    sys.stderr.write(f"\n[{worker}] {line}\n")
                    sys.stderr.flush()
        else:
            terminal = self.config.pluginmanager.get_plugin("terminalreporter")
            if terminal is None:
                return None

            def write_line(line: str) -> None:
                with outside_capture():
                    terminal.write_line(line)

        return SweepProgress(write_line, every=PROGRESS_EVERY)

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
        running = context.current()
        test_context = running.replace(recorder=recorder, settings=settings, method=method,
                                       progress=self._sweep_progress() or running.progress)
        with context.using(test_context):
            try:
                outcome = yield
            except KeyboardInterrupt:  # no report will carry them: keep what the test measured
                if not self.is_worker:
                    for record in recorder.records:
                        record.outcome = "interrupted"
                        self.records.append(record)
                raise
        problems = recorder.unraised()
        if problems:  # the test swallowed the error: the failing verdict still fails it
            raise CircuitAssertionError(problems)
        return outcome

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]
                                  ) -> pytest.TestReport:
        report = yield
        if item.nodeid in self.gate_tests:
            setattr(report, GATE_TEST_ATTRIBUTE, True)
        records = item.stash.get(RECORDS, None)
        if call.when == "call" and records:
            setattr(report, REPORT_ATTRIBUTE, [r.to_dict() for r in records])
            for writer in self.writers:
                writer.test(report, records)
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Gather records from every report (a worker's arrive here on the controller)."""
        self.files.add(report.nodeid.split("::")[0])
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[report.nodeid] = _outcome(report)
        if getattr(report, GATE_TEST_ATTRIBUTE, False):
            self.gate_tests.add(report.nodeid)
        if report.when == "setup" and report.failed:
            self.ends[report.nodeid] = ("error", _reason(report))
        elif report.when == "call" or (report.when == "setup" and report.skipped):
            self.ends[report.nodeid] = (_outcome(report),
                                        _reason(report) if report.failed else "")
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
        if self._gates_nothing(records):
            # nothing was gated (--collect-only, or no gate test was selected): an empty
            # "complete" results file or an empty page would replace the last real ones and
            # read as a green release, so every file is left as it was
            self.writers = [w for w in self.writers if w.name not in ("json", "html")]
            self.run_info = self._run_info(records)
            for writer in self.writers:
                self.notes.extend(writer.finish(self.run_info))
            if self.json_path is not None or self.html_path is not None or (
                    self.baseline is not None and self.update_baseline):
                self.notes.append("no gate test ran: the results JSON, the HTML report and "
                                  "the baseline are left as they were")
            return
        stopped = self._interruption(session, exitstatus)
        interrupted = stopped is not None and not stopped.startswith("stopped early")
        extra: dict[str, Any] = {"threads": {"per_process": self.threads,
                                             "origin": self.threads_origin}}
        if self.baseline is not None:
            written = False
            complete = self._complete(session, exitstatus) and not interrupted
            self.stale = self._stale(complete)
            if self.update_baseline and interrupted:
                self.notes.append(f"baseline {self.baseline.path} NOT updated: the run was "
                                  f"interrupted ({stopped}); rerun to completion to update it")
            elif self.update_baseline:
                written = self._write_baseline(records, complete)
            self.notes.extend(_ambiguous_keys(records))
            extra["baseline"] = {
                "path": str(self.baseline.path),
                "mode": "update" if self.update_baseline else "compare",
                "stale": self.stale,
                "written": written,
            }
        self.run_info = self._run_info(records, extra, stopped, interrupted)
        for writer in self.writers:
            try:
                self.notes.extend(writer.finish(self.run_info))
            except OSError as exc:
                self._write_failed(writer.what, exc)
        if self.write_failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # the run lost its results

    def _gates_nothing(self, records: list[GateRecord]) -> bool:
        """Whether this run gated nothing: ``--collect-only``, or no gate test was selected,
        recorded a result or ran (a gate test that did not finish still counts: its run
        writes a results file marked incomplete)."""
        if getattr(self.config.option, "collectonly", False):
            return True
        return not self._gate_tests(records)

    def _run_info(self, records: list[GateRecord], extra: dict[str, Any] | None = None,
                  stopped: str | None = None, interrupted: bool = False) -> RunInfo:
        return RunInfo(
            records=tuple(records), extra=dict(extra or {}), stopped=stopped,
            interrupted=interrupted, with_baseline=self.baseline is not None,
            update_baseline=self.update_baseline, stale=tuple(self.stale),
            notes=tuple(self.notes), tests=self._gate_tests(records),
        )

    def _gate_tests(self, records: list[GateRecord]) -> tuple[GateTest, ...]:
        """Every gate test of the run (collected as one, or that recorded a result, or a
        gate-file item) with how it ended; one never reported did not run."""

        counts: dict[str, int] = {}
        for record in records:
            counts[record.result.nodeid] = counts.get(record.result.nodeid, 0) + 1
        nodeids = self.gate_tests | set(counts) | {
            nodeid for nodeid in self.ends if is_gate_file(Path(nodeid.split("::")[0]))}
        tests = []
        for nodeid in sorted(nodeids):
            outcome, reason = self.ends.get(nodeid, ("not run", ""))
            tests.append(GateTest(nodeid, outcome, counts.get(nodeid, 0), reason))
        return tuple(tests)

    def _write_baseline(self, records: list[GateRecord], complete: bool) -> bool:
        """Merge this run's results into the baseline file; whether it was written."""
        assert self.baseline is not None

        remove = set(self.stale) if complete else set()
        # an entry the loader would refuse (no values, a value that is not finite or outside
        # what its unit can take) would make the file unreadable, so it is never written: the
        # entry it would replace stays as it was
        usable, skipped = [], []
        for record in records:
            problem = entry_problem(record.result.key, entry_for(record.result))
            if problem:
                skipped.append((record.result, problem))
            else:
                usable.append(record.result)
        updated = self.baseline.updated(usable, remove, environment(records)["versions"])
        try:
            write_json_atomic(self.baseline.path, updated.to_dict())
        except OSError as exc:
            self._write_failed(f"the baseline {self.baseline.path}", exc)
            return False
        written = len({r.key for r in usable})
        self.notes.append(
            f"updated baseline {self.baseline.path}: {written} entries written"
            + (f", {len(remove)} stale removed" if remove else "")
        )
        for result, problem in skipped:
            self.notes.append(f"baseline entry {result.key!r} NOT updated: the result of "
                              f"{result.nodeid} {problem}; the entry stays as it was")
        return True

    def _write_failed(self, what: str, exc: OSError) -> None:
        """A file the run writes at its end could not be written (a full disk, a folder that
        vanished): one ERROR line in the summary instead of a traceback, and a failed run."""
        reason = exc.strerror or str(exc)
        code = f"{errno.errorcode[exc.errno]}: " if exc.errno in errno.errorcode else ""
        self.notes.append(f"ERROR: {what} was NOT written ({code}{reason}); the previous file, "
                          "if there was one, is kept. Free space or fix the path and rerun")
        self.write_failed = True

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        run = self.run_info or self._run_info(sorted(self.records, key=sort_key))
        run = replace(run, stale=tuple(self.stale), notes=tuple(self.notes))
        for writer in self.writers:
            writer.summary(run, terminalreporter)
