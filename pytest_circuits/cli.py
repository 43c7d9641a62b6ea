"""The ``pytest-circuits`` command: compare, calibrate, rank and diff distilled students.

It runs the same cached analysis entry points as the pytest gates (and, by default, shares
their on-disk cache in ``.pytest_cache/d/circuits``), so a number printed here is the number a
gate sees.

Exit codes: 0 success; 1 a regression (``diff``) or a candidate that fails the calibrated
thresholds when ``--strict`` is given; 2 a usage error, found before any model loads (a bad
argument: a number that is NaN, infinite, out of range or of the wrong sign, an unknown device or
dtype, a device this machine does not have; an output path that cannot be written or that is an
input or another output of the run; an explicit ``--cache-dir`` that cannot hold the cache; a
results file that cannot be read, is not JSON or is not a results file; an unknown task);
3 malformed input, or the analysis could not run, or results cannot be compared (a results file
whose reports are damaged: missing keys, wrong types, non-finite or impossible numbers; a model
that does not load, a task a model does not perform, an incompatible pair, results measured with
different methods, exact against auto aside), and an internal error (``--traceback`` shows it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import progress
from .analysis.layers import align_layers, depth, layer_map_problem, parse_layer_map
from .baseline import method_differences, switched_algorithm, value_problem
from .cache import directory_problem
from .config.options import SIMILARITIES, AnalysisOptions
from .dtypes import DTYPES, canonical_dtype
from .errors import CircuitsError
from .gatefile import task_problem
from .htmlreport import write_html
from .identity import model_name
from .kinds import KINDS, UNITS
from .kinds.behavior import DEFAULT_MIN_ACCURACY_RETAINED, share_of_teacher
from .kinds.registry import ThresholdWarning
from .kinds.runner import evaluate
from .metrics import severity_score
from .models import load_model, load_pair
from .output import SweepProgress, plain, unwritable, write_json_atomic
from .results import report_from_dict
from .results.roles import ROLES
from .tables import format_number, format_table
from .tasks import BUILTIN_TASKS, DEFAULT_N_PROMPTS, MAX_N_PROMPTS
from .tasks.task import TaskError

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_ANALYSIS = 3

#: What ``compare --json`` writes and ``diff`` reads (it also reads ``--circuits-json`` files).
REPORTS_FORMAT = "pytest-circuits-reports"
REPORTS_VERSION = 1
#: Where pytest keeps the plugin's analysis cache (``config.cache.mkdir("circuits")``).
DEFAULT_CACHE_DIR = Path(".pytest_cache") / "d" / "circuits"


class UsageError(CircuitsError, ValueError):
    """The command line or an input file is wrong (exit 2)."""


class AnalysisError(CircuitsError):
    """The analysis could not run, or two results cannot be compared (exit 3)."""


class MalformedInputError(AnalysisError):
    """A results file is JSON of the right format, but a report in it is damaged (exit 3)."""


# ----------------------------------------------------------------------------- output helpers


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:

    return format_table(headers, rows)


def _n(value: float | None, digits: int = 4) -> str:

    if value is None:
        return "-"
    return format_number(float(value)) if digits == 4 else f"{value:.{digits}f}"


def _name(model: Any) -> str:

    return model_name(model)


class Progress:
    """A progress bar on stderr: one step per analysis, with the elapsed time of the current one.

    On a terminal the bar redraws in place (and ticks while a long sweep runs); elsewhere (CI
    logs, pipes) each step is one plain line, and a sweep that runs longer than a few seconds
    adds whole lines with its count (``output.SweepProgress``: when it passes the mark, at each
    quarter and when done), so a log shows how far a minutes-long sweep is.
    """

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(1, total)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.detail = ""  # the running sweep: "zoo:tiny-student 40/156 ablations"
        #: without a terminal, a sweep running longer than this many seconds prints its count
        self.sweep_lines_after = 3.0

    def components(self, model_name: str, done: int, total: int) -> None:
        """The sweep's callback (``pytest_circuits.progress``): the ticker draws it."""
        self.detail = f", {model_name} {done}/{total} ablations" if done < total else ""

    def _line(self, text: str) -> None:
        self.stream.write(f"  {text}\n")
        self.stream.flush()

    def _draw(self, label: str, started: float) -> None:
        width = 24
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label} "
                          f"({time.monotonic() - started:.1f}s{self.detail})\x1b[K")
        self.stream.flush()

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        started = time.monotonic()
        if not self.enabled:
            yield
            self.done += 1
            return
        if not self.live:
            self.stream.write(f"[{self.done + 1}/{self.total}] {label} ...\n")
            self.stream.flush()
            with progress.reporting(SweepProgress(self._line, after=self.sweep_lines_after)):
                yield
            self.done += 1
            return
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                self._draw(label, started)

        ticker = threading.Thread(target=tick, daemon=True)
        self._draw(label, started)
        ticker.start()
        try:
            with progress.reporting(self.components):
                yield
        finally:
            self.detail = ""
            stop.set()
            ticker.join()
            self.done += 1
            self._draw(label, started)
            if self.done >= self.total:
                self.stream.write("\n")
                self.stream.flush()


# ----------------------------------------------------------------------------- analysis access


@dataclass
class Run:
    """What every subcommand shares: the analysis options and how models are loaded."""

    tasks: list[str]
    #: every analysis setting of the command line (``method`` None: the gates' default rule)
    options: AnalysisOptions
    device: str
    dtype: str | None
    progress: Progress = field(default_factory=lambda: Progress(1, enabled=False))
    #: ``-q``: the libraries' own progress bars (transformers, huggingface_hub, GGUF) are off too
    quiet: bool = False
    _models: dict[str, Any] = field(default_factory=dict)

    def model(self, source: str) -> Any:
        if source not in self._models:
            with self.progress.step(f"loading {source}"), (
                    library_bars_off() if self.quiet else _nothing()):
                self._models[source] = load_model(source, device=self.device, dtype=self.dtype)
        return self._models[source]

    def pair(self, teacher: str, student: str) -> Any:

        return load_pair(self.model(teacher), self.model(student))

    def pair_report(self, teacher: str, student: str, task: str) -> Any:
        from .analysis.cached import pair_report

        pair = self.pair(teacher, student)
        with self.progress.step(f"{task}: {teacher} -> {student}"):
            return pair_report(pair, task, self.options)

    def model_report(self, source: str, task: str) -> Any:
        from .analysis.cached import model_report

        model = self.model(source)
        with self.progress.step(f"{task}: {source}"):
            return model_report(model, task, self.options)

    def circuits_report(self, sources: dict[str, str], task: str, *, circuits: bool,
                        roles: bool, matching: Any = None, threshold: float = 0.2,
                        stability: Sequence[float] | None = None) -> Any:
        """The circuits (``circuits``: iterative node pruning, with the threshold sweep) and
        head roles (``roles``) of each model of ``sources`` (role -> model: ``teacher`` and
        ``student``, or ``model``) on ``task``, with the pair's role comparison through the
        matching of ``matching`` (a PairReport), as one CircuitsReport."""
        from .analysis.circuits import DEFAULT_STABILITY, circuit_result
        from .analysis.roles import head_roles
        from .analysis.store import as_task
        from .results import CircuitsReport, compare_roles

        models = {role: self.model(source) for role, source in sources.items()}
        options = self.options
        seed = 0 if options.seed is None else options.seed
        # one set of prompts for both models, built for the first (a pair shares a vocabulary)
        built = as_task(task, options.n_prompts, options.seed, next(iter(models.values())))
        found, held = {}, {}
        for role, model in models.items():
            if circuits:
                with self.progress.step(f"{task}: circuit of {sources[role]}"):
                    found[role] = circuit_result(
                        model, built, threshold=threshold, ablation=options.ablation,
                        seed=seed, margin=options.margin,
                        stability=DEFAULT_STABILITY if stability is None else stability)
            if roles:
                with self.progress.step(f"{task}: head roles of {sources[role]}"):
                    held[role] = head_roles(model, built, seed=seed)
        pairs = matching.alignment.pairs if matching is not None else ()
        comparison = (compare_roles(held["teacher"], held["student"], pairs)
                      if "teacher" in held and "student" in held else None)
        report = CircuitsReport(built.name, found, held, comparison)
        return report.with_matching(pairs) if pairs else report

    def gate(self, name: str, target: Any, task: str, **thresholds: Any) -> Any:
        """The result of the gate kind ``name`` with ``thresholds`` and this run's options, by
        the gates' own rules (``kinds.runner.evaluate``): what calibrate and rank report."""

        kind = KINDS[name]
        chosen = {option: getattr(self.options, option) for option in kind.analysis_options
                  if option != "components"}
        with warnings.catch_warnings():
            # a threshold that is probably a mistake was reported once, before any model loaded
            warnings.simplefilter("ignore", ThresholdWarning)
            return evaluate(kind, target, task, n_prompts=self.options.n_prompts,
                            seed=self.options.seed, **chosen, **thresholds)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def library_bars_off() -> Iterator[None]:
    """The progress bars transformers and huggingface_hub draw while a model loads switched
    off for the block (``-q``), and put back as they were afterwards. The GGUF conversion draws
    its bar with tqdm directly, not through transformers' switch, so for the block it draws
    through transformers' own (switched-off) tqdm."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_module
    except ImportError:  # pragma: no cover - a transformers without GGUF support
        gguf_module = None
    drawn_with = getattr(gguf_module, "tqdm", None)
    if drawn_with is not None:
        gguf_module.tqdm = hf_logging.tqdm
    try:
        yield
    finally:
        if drawn_with is not None:
            gguf_module.tqdm = drawn_with
        if was_on:
            hf_logging.enable_progress_bar()


def _run_from(args: argparse.Namespace, steps: int) -> Run:
    """The run of a command whose arguments :func:`preflight` has checked (it also decided the
    cache directory: None when the default one cannot be used)."""
    from . import cache

    if args.no_cache:
        cache.configure(None, enabled=False)
    else:
        cache.configure(args.cache_dir, enabled=True)
    tasks = args.task or ["numerals"]
    options = AnalysisOptions.of(
        f"pytest-circuits {args.command}", n_prompts=args.n_prompts, seed=args.seed,
        ablation=args.ablation, similarity=args.similarity, matching=args.matching,
        preset=args.preset, margin=args.margin, method=args.method)
    return Run(tasks=tasks, options=options, device=args.device, dtype=args.dtype,
               progress=Progress(steps, enabled=not args.quiet), quiet=args.quiet)


# ----------------------------------------------------------------------------- checking arguments

Rule = Callable[[Any], str]


def _whole(low: int, high: int | None = None) -> Rule:
    """A whole number in [low, high]: what is wrong with a value ("" when nothing)."""
    def problem(value: int) -> str:
        if value < low:
            return f"must be at least {low:,}, got {value}"
        if high is not None and value > high:
            return f"must be at most {high:,}, got {value}"
        return ""
    return problem


def _at_least_zero(value: float) -> str:
    """A tolerance, a margin: a finite number >= 0 (NaN compares false with everything, so a
    NaN tolerance would let every change through; a negative one would flag an unchanged
    value)."""
    if not math.isfinite(value) or value < 0:
        return f"must be a finite number >= 0, got {value!r}"
    return ""


def _within(gate: str, threshold: str) -> Rule:
    """A number in the range of a gate kind's threshold (its registry entry), finite."""
    def problem(value: float) -> str:

        spec = KINDS[gate].threshold(threshold)
        if not (math.isfinite(value) and spec.low <= value <= spec.high):
            return (f"must be a number in {spec.range_text} ({UNITS[spec.unit]}), "
                    f"got {value!r}")
        return ""
    return problem


def _number_rules() -> list[tuple[str, str, Rule]]:
    """Every numeric option of every command: (attribute, option, rule)."""

    return [
        ("n_prompts", "--n-prompts", _whole(1, MAX_N_PROMPTS)),
        ("seed", "--seed", _whole(0)),
        ("margin", "--margin", _at_least_zero),
        # the behaviour gate's own threshold; a head may cost at most 100 points, so a margin
        # over the teacher's worst head lies in max_single_drop's range
        ("min_retained", "--min-retained", _within("behavior_preserved", "min_retained")),
        ("min_accuracy_retained", "--min-accuracy-retained",
         _within("behavior_preserved", "min_accuracy_retained")),
        ("drop_margin", "--drop-margin", _within("ablation_robust", "max_single_drop")),
        ("max_alignment_drop", "--max-alignment-drop", _at_least_zero),
        ("max_severity_increase", "--max-severity-increase", _at_least_zero),
        ("max_drop_increase", "--max-drop-increase", _at_least_zero),
        ("max_retained_drop", "--max-retained-drop", _at_least_zero),
        ("influence_change", "--influence-change", _at_least_zero),
        ("threshold", "--threshold", _prune_threshold),
        ("stability", "--stability", _prune_threshold),
    ]


def _prune_threshold(value: Any) -> str:
    """A circuit's pruning threshold (or each of a list): strictly between 0 and 1."""
    for number in value if isinstance(value, list) else [value]:
        if not (math.isfinite(number) and 0 < number < 1):
            return (f"must be strictly between 0 and 1 (the share of the full logit difference "
                    f"pruning may lose; the paper's is 0.2), got {number!r}")
    return ""


#: What ``--device`` may name: a CUDA device (``cuda``, ``cuda:1``), the CPU, Apple's GPU, or
#: ``auto`` (CUDA when available).
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a bad argument before anything runs (:class:`UsageError`): every number (finite,
    in range, of the right sign), the device and dtype names, and a preset with options it
    sets itself."""
    for attribute, option, rule in _number_rules():
        value = getattr(args, attribute, None)
        if value is not None and (problem := rule(value)):
            raise UsageError(f"{option} {problem}")
    device = getattr(args, "device", None)
    if device is not None and not DEVICE_PATTERN.fullmatch(device):
        raise UsageError(f"--device {device!r} is not a device: use auto, cpu, cuda, cuda:N "
                         "(the N-th GPU) or mps")
    if getattr(args, "dtype", None) is not None:

        if canonical_dtype(args.dtype) is None:
            raise UsageError(f"--dtype {args.dtype!r} is not a dtype models load in: use one "
                             f"of {', '.join(DTYPES)}")
    preset = getattr(args, "preset", None)
    if preset is not None and (args.matching, args.similarity) != ("paper", "paper"):
        raise UsageError(
            f"--preset {preset} sets the matching and the similarity itself; drop "
            f"--matching {args.matching} / --similarity {args.similarity}, or the preset"
        )


def _device_problem(device: str) -> str:
    """Why this machine cannot run on ``device`` ("" when it can); imports torch."""
    if device in ("auto", "cpu"):
        return ""
    import torch

    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        return "" if mps is not None and mps.is_available() else (
            "Apple's GPU (mps) is not available on this machine")
    if not torch.cuda.is_available():
        return ("CUDA is not available on this machine (torch.cuda.is_available() is False); "
                "use --device auto or cpu, or run on a GPU runner")
    index = int(device.split(":")[1]) if ":" in device else 0
    count = torch.cuda.device_count()
    if index >= count:
        return f"this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
    return ""


def _output_problem(path: Path) -> str:
    """Why ``path`` cannot be written as an output file ("" when it can): its folder must
    exist and take a new file, and the path must not be a folder."""

    if path.is_dir():
        return "it is a directory"
    folder = path.parent
    if not folder.exists():
        return f"its folder {folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    return unwritable(path) or ""


def _same_path(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _inputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The files a command reads, named as the command line gave them: task files, and model
    paths with the files of a model folder."""
    found = [(f"--task {task}", Path(task)) for task in args.task or [] if Path(task).is_file()]
    models = [getattr(args, name, None) for name in ("teacher", "student")]
    models += list(getattr(args, "students", None) or getattr(args, "candidates", None) or [])
    for model in filter(None, models):
        path = Path(model)
        if path.is_file():
            found.append((f"the model {model}", path))
        elif path.is_dir():
            found.append((f"the model folder {model}", path))
            found += [(f"the model file {child}", child) for child in path.iterdir()
                      if child.is_file()]
    return found


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path the command could not write at its end, after the analysis, or
    one that would overwrite an input or another output of the run."""
    outputs = [(option, Path(value)) for option, value in
               (("--json", getattr(args, "json", None)), ("--html", getattr(args, "html", None)))
               if value]
    for option, path in outputs:
        problem = _output_problem(path)
        if problem:
            raise UsageError(f"{option} {path}: cannot write it: {problem}; point it at a "
                             "writable file (checked before any model loads, so the analysis "
                             "does not end without its results)")
    for i, (option, path) in enumerate(outputs):
        for other, other_path in outputs[:i]:
            if _same_path(path, other_path):
                raise UsageError(f"{option} {path} is the same file as {other} {other_path}: "
                                 "one would overwrite the other; give each its own path")
        for what, source in _inputs(args):
            if _same_path(path, source):
                raise UsageError(f"{option} {path} is {what}, which this command reads: "
                                 "writing it would destroy an input; give another path")


def _choose_cache(args: argparse.Namespace, err: TextIO) -> None:
    """Settle ``args.cache_dir`` as the plugin settles ``--circuits-cache-dir``: an explicit
    directory that cannot hold the cache is a usage error; the default one degrades to no disk
    cache with one warning (results are then kept in memory for this command)."""

    if args.no_cache:
        return
    explicit = args.cache_dir is not None
    directory = Path(args.cache_dir) if explicit else DEFAULT_CACHE_DIR
    problem = directory_problem(directory)
    if problem is None:
        args.cache_dir = str(directory)
    elif explicit:
        raise UsageError(f"--cache-dir {directory} cannot hold the analysis cache ({problem}); "
                         "point it at a writable directory, or pass --no-cache")
    else:
        err.write(f"pytest-circuits: warning: the analysis cache {directory} cannot be used "
                  f"({problem}); running without the disk cache. Pass --cache-dir DIR or "
                  "--no-cache to silence this.\n")
        args.cache_dir = None


#: The command-line options that set a gate kind's threshold: (attribute, option, kind).
THRESHOLD_OPTIONS = (("min_retained", "--min-retained", "behavior_preserved"),
                     ("min_accuracy_retained", "--min-accuracy-retained", "behavior_preserved"))


def check_tasks(args: argparse.Namespace) -> None:
    """Refuse a ``--task`` that names no built-in task and no existing task file, before any
    model loads (:class:`UsageError`), with the built-in it was probably meant to be."""
    for task in getattr(args, "task", None) or []:
        problem = task_problem(task)
        if problem:
            raise UsageError(f"--task: {problem}")


def threshold_mistakes(args: argparse.Namespace) -> list[str]:
    """A warning for each threshold option whose value is valid but probably a mistake (a
    percentage written as a fraction...), by the gates' own rule (``Threshold.mistake``)."""
    found = []
    for attribute, option, kind in THRESHOLD_OPTIONS:
        value = getattr(args, attribute, None)
        if value is not None:
            text = KINDS[kind].threshold(attribute).mistake(
                value, f"pytest-circuits {args.command}", label=f"{option} {value:g}")
            found += [text] if text else []
    return found


def preflight(args: argparse.Namespace, err: TextIO) -> None:
    """Everything that can be refused before a model loads: arguments, task names, output
    paths, the cache directory and the device (:class:`UsageError`, exit 2); a threshold that is
    probably a mistake is a warning on ``err``."""
    check_arguments(args)
    check_tasks(args)
    for text in threshold_mistakes(args):
        err.write(f"pytest-circuits: warning: {text}\n")
    _check_outputs(args)
    if hasattr(args, "cache_dir"):
        _choose_cache(args, err)
    device = getattr(args, "device", None)
    if device is not None and (problem := _device_problem(device)):
        raise UsageError(f"--device {device}: {problem}")


# ----------------------------------------------------------------------------- calibration


def _round_up(value: float, step: float) -> float:
    """Round up to a multiple of ``step`` so a threshold never sits below what it came from."""
    return round(math.ceil(value / step - 1e-9) * step, 10)


def _round_down(value: float, step: float) -> float:
    return round(math.floor(value / step + 1e-9) * step, 10)


def severity_terms(report: Any) -> Any:
    """Each component's term of the severity score: the severity of its drop alone
    (:func:`metrics.severity_score` of one drop is its term). Severity is their mean, so a
    bootstrap of the mean is a bootstrap of severity."""
    import numpy as np


    b = report.brittleness
    return np.array([severity_score([drop], tolerance=b.tolerance, limit=b.limit, alpha=b.alpha)
                     for drop in report.sweep.clamped_drops], dtype=float)


def severity_interval(report: Any) -> tuple[float, float]:
    """95% bootstrap interval of a model's severity over its components (seed 42)."""
    from . import metrics

    return metrics.bootstrap_ci(severity_terms(report))


def alignment_interval(report: Any) -> tuple[float, float]:
    """95% bootstrap interval of the alignment score A over its matched pairs (A is the mean of
    the pairs' terms)."""
    from . import metrics

    return metrics.bootstrap_ci([p.contribution for p in report.alignment.pairs])


#: Resamples of the weighted score's bootstrap (each recomputes the score from its pairs).
WEIGHTED_RESAMPLES = 2000


def weighted_alignment_interval(report: Any) -> tuple[float, float]:
    """95% percentile bootstrap interval of the influence-weighted score A_w over its matched
    pairs (seed 42): A_w is not a mean of per-pair terms (each pair's share depends on every
    other pair's influence), so each resample of the pairs is scored again with the report's
    noise floor. A resample that no score can be taken of (every pair below the floor) is
    skipped."""
    import numpy as np

    from . import metrics

    pairs = report.alignment.pairs
    similarity = np.array([p.similarity for p in pairs], dtype=float)
    teacher = np.array([p.teacher_influence for p in pairs], dtype=float)
    student = np.array([p.student_influence for p in pairs], dtype=float)
    floor = report.fingerprint.noise_floor or 0.0
    rng = np.random.default_rng(42)
    scores = []
    for _ in range(WEIGHTED_RESAMPLES):
        pick = rng.integers(0, len(pairs), len(pairs))
        try:
            scores.append(metrics.weighted_alignment_score(similarity[pick], teacher[pick],
                                                           student[pick], floor))
        except ValueError:
            continue
    score = float(report.alignment.weighted_score)
    if not scores:
        return score, score
    low, high = np.quantile(scores, [0.025, 0.975])
    return float(low), float(high)


def _worst(report: Any, kind: str) -> tuple[str, float]:
    effects = [e for e in report.sweep.effects if (e.head is None) == (kind == "mlp")]
    if not effects:
        return "-", 0.0
    worst = max(effects, key=lambda e: e.drop)
    return worst.name, float(min(100.0, max(0.0, worst.drop)))


@dataclass(frozen=True)
class Calibration:
    """Thresholds for one task derived from the teacher's own measurements."""

    task: str
    teacher: str
    severity: float
    severity_ci: tuple[float, float]
    mean_drop: float
    mean_drop_ci: tuple[float, float]
    worst_head: tuple[str, float]
    worst_mlp: tuple[str, float]
    max_severity_increase: float
    max_head_drop: float | None  # None: the teacher's worst head already costs 100 points
    drop_margin: float
    #: the task as the command line gave it (a built-in name or a task file's path), which the
    #: calibrated gates name so they run as pasted; ``task`` is the name its reports carry
    source: str = ""

    @property
    def gate_task(self) -> str:
        return self.source or self.task

    @property
    def label(self) -> str:
        """The task for a reader: its name, and the file it came from when that differs."""
        return self.task if self.gate_task == self.task else f"{self.task} ({self.gate_task})"

    def head_rule(self) -> str:
        name, drop = self.worst_head
        if self.max_head_drop is None:
            return (f"none: the teacher's worst head {name} costs {drop:.1f} points, and "
                    f"{self.drop_margin:g} more reaches 100, so a single-head limit would "
                    "block nothing")
        return f"teacher's worst head {name} ({drop:.1f}) + {self.drop_margin:g} points"


def calibrate_teacher(report: Any, drop_margin: float = 10.0, source: str = "") -> Calibration:
    """Thresholds relative to the teacher on one task.

    ``max_severity_increase``: the upper end of the teacher's own 95% bootstrap interval of
    severity minus its severity (a student may be more brittle than its teacher by no more than
    the teacher's measurement spans). Single heads: no worse than the teacher's worst head plus
    ``drop_margin`` points. MLPs get no single-drop limit: in GPT-2-style models MLP0 usually
    flips the answer in the teacher itself. ``source`` is the task as given (see
    :attr:`Calibration.source`).
    """
    b = report.brittleness
    low, high = severity_interval(report)
    head = _worst(report, "head")
    limit = head[1] + drop_margin
    return Calibration(
        task=report.task, teacher=_name(report.model), severity=float(b.severity),
        severity_ci=(low, high), mean_drop=float(b.mean_drop),
        mean_drop_ci=tuple(b.mean_drop_ci), worst_head=head, worst_mlp=_worst(report, "mlp"),
        max_severity_increase=max(0.01, _round_up(high - b.severity, 0.01)),
        max_head_drop=_round_up(limit, 0.5) if limit < 100.0 else None,
        drop_margin=drop_margin, source=source,
    )


@dataclass
class Finding:
    """Something about a candidate on one task: ``blocking`` when a calibrated gate (or the
    behaviour floor) would fail it; otherwise a note (a discarded mechanism has no
    threshold in the calibrated block, but a reviewer should see it)."""

    task: str
    text: str
    blocking: bool = True


def findings(run: Run, teacher: str, student: str, report: Any, calibration: Calibration,
             min_retained: float,
             min_accuracy_retained: float = DEFAULT_MIN_ACCURACY_RETAINED) -> list[Finding]:
    """What the calibrated gates (the block ``calibration_yaml`` writes) would block for
    ``student`` on one task, each decided by the gate itself (``Run.gate``: the same checks,
    parity preflight, lost-behaviour rule and exact settling as under pytest), and the
    discarded mechanisms of its pair ``report`` as notes."""
    pair, task = run.pair(teacher, student), calibration.gate_task
    behaviour = run.gate("behavior_preserved", pair, task, min_retained=min_retained,
                         min_accuracy_retained=min_accuracy_retained)
    found = _blocking(
        calibration.task, behaviour,
        behavior_retained=lambda c: f"behaviour retained {c.value:.1f}% < {c.threshold:g}%",
        accuracy_retained=lambda c: (
            f"top-1 accuracy {c.value:.1f}% of the teacher's < {c.threshold:g}% (the student "
            f"names the answer on {_correct(report.student.performance)}, the teacher on "
            f"{_correct(report.teacher.performance)})"))
    found += _blocking(calibration.task, run.gate(
        "ablation_robust", pair, task, max_severity_increase=calibration.max_severity_increase),
        severity_increase=lambda c: (f"severity rises by {c.value:.3f} over the teacher > "
                                     f"{c.threshold:g}"))
    if calibration.max_head_drop is not None:
        heads = run.gate("ablation_robust", pair, task, components="heads",
                         max_single_drop=calibration.max_head_drop)
        worst = heads.blame[0].component if heads.blame else "-"
        found += _blocking(calibration.task, heads, max_single_drop=lambda c: (
            f"ablating head {worst} costs {c.value:.1f} points > {c.threshold:g} "
            f"({calibration.head_rule()})"))
    for d in report.discarded:
        found.append(Finding(report.task, f"teacher mechanism {d.teacher} discarded: {d.reason}",
                             blocking=False))
    return found


def _blocking(task: str, result: Any, **describe: Callable[[Any], str]) -> list[Finding]:
    """A finding per failed check of a gate ``result``: in the words ``describe`` gives for its
    metric, or naming the gate and check (a parity or lost-behaviour failure)."""

    return [
        Finding(task, describe[c.metric](c) if c.metric in describe else
                f"{result.gate}: {c.metric} {format_number(c.value)} is not {c.op} "
                f"{format_number(c.threshold)}")
        for c in result.checks if not c.passed
    ]


def _yaml_text(value: Any) -> str:
    return json.dumps(value)  # JSON strings and numbers are valid YAML scalars


_YAML_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"})


def _yaml_plain(text: str) -> str:
    """``text`` as a YAML string: bare when YAML reads it back as that string (``numerals``,
    ``tasks/mine.yaml``), quoted otherwise."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", text) and text.lower() not in _YAML_WORDS:
        return text
    return _yaml_text(text)


#: The analysis options a calibrated gate states, in this order, when its kind takes them.
CALIBRATED_OPTIONS = ("preset", "matching", "similarity", "ablation", "method", "margin")


def gate_options(kind: str, options: AnalysisOptions) -> dict[str, Any]:
    """The analysis options of ``options`` that a gate of ``kind`` takes, as its YAML keys:
    everything that produced the numbers a calibrated threshold came from, so the pasted gate
    measures the way its threshold was measured. A preset stands for its matching and
    similarity; a method left to the default rule (None) is left out, as the gates leave it."""
    accepted = KINDS[kind].analysis_options
    chosen: dict[str, Any] = {}
    for name in CALIBRATED_OPTIONS:
        value = getattr(options, name)
        if name not in accepted or value is None:
            continue
        if name in ("matching", "similarity") and options.preset is not None:
            continue  # the preset sets both (and refuses them beside it)
        chosen[name] = value
    return chosen


def _yaml_value(value: Any) -> str:
    if isinstance(value, str):
        return _yaml_plain(value)
    if isinstance(value, float) and float(f"{value:g}") == value:
        return f"{value:g}"  # 90, 0.65: as a person writes them
    return _yaml_text(value)


def calibration_yaml(
    teacher: str, students: Sequence[str], calibrations: Sequence[Calibration],
    options: AnalysisOptions, min_retained: float, min_score: dict[str, float],
    min_accuracy_retained: float | None = DEFAULT_MIN_ACCURACY_RETAINED,
    min_weighted_score: dict[str, float] | None = None,
) -> str:
    """A ready-to-paste ``circuits.yaml`` with the calibrated gates for every task and pair.

    Each gate states every option its numbers were measured with (``options``: the prompts,
    seed, preset or matching and similarity, ablation, sweep method and margin), so a gate
    pasted on its own into another file still measures as the calibration did."""
    min_weighted_score = min_weighted_score or {}
    lines = [
        f"# thresholds calibrated by `pytest-circuits calibrate` against the teacher {teacher}",
        "pairs:",
    ]
    names = students or ["./path/to/your/student"]
    pair_names = ["candidate"] if len(names) == 1 else [f"candidate{i + 1}"
                                                        for i in range(len(names))]
    for pair_name, student in zip(pair_names, names, strict=True):
        lines.append(f"  {pair_name}: {{teacher: {_yaml_text(teacher)}, "
                     f"student: {_yaml_text(student)}}}")
    lines.append("gates:")
    n_prompts = options.n_prompts or DEFAULT_N_PROMPTS
    for pair_name in pair_names:
        suffix = "" if len(pair_names) == 1 else f"-{pair_name}"
        for c in calibrations:
            def gate(name: str, kind: str, thresholds: dict[str, Any], comment: str,
                     pair_name: str = pair_name, c: Calibration = c, suffix: str = suffix
                     ) -> None:
                body = {**thresholds, **gate_options(kind, options)}
                mapping = ", ".join(f"{k}: {_yaml_value(v)}" for k, v in body.items())
                lines.extend([f"  - name: {_yaml_plain(f'{c.task}-{name}{suffix}')}",
                              f"    pair: {pair_name}", f"    task: {_yaml_plain(c.gate_task)}",
                              f"    n_prompts: {n_prompts}", f"    seed: {options.seed}",
                              f"    # {comment}", f"    {kind}: {{{mapping}}}"])

            behaviour: dict[str, Any] = {"min_retained": min_retained}
            if min_accuracy_retained is not None:
                behaviour["min_accuracy_retained"] = min_accuracy_retained
            gate("behaviour", "behavior_preserved", behaviour,
                 "percent of the teacher's clean logit difference and top-1 accuracy")
            low, high = c.severity_ci
            gate("severity", "ablation_robust",
                 {"max_severity_increase": c.max_severity_increase},
                 f"teacher severity {c.severity:.3f}, 95% CI {low:.3f}..{high:.3f}")
            if c.max_head_drop is not None:
                gate("no-critical-head", "ablation_robust",
                     {"components": "heads", "max_single_drop": c.max_head_drop},
                     c.head_rule())
            if c.gate_task in min_score:
                aligned: dict[str, Any] = {"min_score": min_score[c.gate_task]}
                what = "A"
                if c.gate_task in min_weighted_score:
                    aligned["min_weighted_score"] = min_weighted_score[c.gate_task]
                    what = "A and of the weighted A"
                gate("aligned", "circuit_aligned", aligned,
                     f"lower 95% bound of {what} of the candidates that pass the gates above")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- reading results


def _load_document(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read results file {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not JSON (not UTF-8 text: {exc.reason} at byte "
                         f"{exc.start}); give a file written by `pytest-circuits compare "
                         "--json` or `pytest --circuits-json`") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}); give a file "
                         "written by `pytest-circuits compare --json` or "
                         "`pytest --circuits-json`") from None
    except RecursionError:
        raise MalformedInputError(f"{path}: nested too deeply to be a results file") from None


#: Why a results file could not be turned into reports: the errors a damaged document raises
#: in the reports' ``from_dict`` (a key missing, a list where a mapping belongs...).
_DAMAGE = (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError,
           OverflowError)


def _report_items(path: str, data: Any) -> list[Any]:
    """The report mappings of a results document, in the shapes ``load_reports`` accepts."""
    if isinstance(data, dict) and data.get("format") == REPORTS_FORMAT:
        items = data.get("reports", [])
        if not isinstance(items, list):
            raise MalformedInputError(f"{path}: \"reports\" is {type(items).__name__}, not a "
                                      "list of reports")
        return items
    if isinstance(data, dict) and "results" in data:
        results = data["results"]
        if not isinstance(results, list):
            raise MalformedInputError(f"{path}: \"results\" is {type(results).__name__}, not a "
                                      "list of gate results")
        return [r["report"] for r in results if isinstance(r, dict) and r.get("report")]
    if isinstance(data, dict) and "kind" in data:
        return [data]
    if isinstance(data, list):
        return data
    raise UsageError(f"{path}: not a pytest-circuits results file (expected format "
                     f"{REPORTS_FORMAT!r}, a --circuits-json document or a report)")


def load_reports(path: str) -> list[Any]:
    """The typed reports in a results file: ``compare --json`` output, a ``--circuits-json``
    document (the reports its gates stored), one report, or a list of reports.

    A file that cannot be read, is not JSON or is not a results file is a :class:`UsageError`;
    one whose reports are damaged (a key missing, a wrong type, a number that is not finite or
    that its quantity cannot take) is a :class:`MalformedInputError` naming the report and the
    value, never a verdict computed from it.
    """

    data = _load_document(path)
    items = _report_items(path, data)
    reports = []
    for index, item in enumerate(items):
        where = f"{path}: report {index + 1} of {len(items)}"
        try:
            report = report_from_dict(item)
            problem = report_problem(report)
        except _DAMAGE as exc:
            raise MalformedInputError(
                f"{where} could not be read back ({type(exc).__name__}: {exc}); was it written "
                "by another version of pytest-circuits, or edited?") from None
        if problem:
            raise MalformedInputError(f"{where}: {problem}; a damaged results file cannot be "
                                      "compared: write it again")
        reports.append(report)
    if not reports:
        raise UsageError(f"{path}: holds no analysis report (gates like behavior_preserved "
                         "store none); write one with `pytest-circuits compare --json`")
    return reports


def _text_problem(value: Any, where: str) -> str:
    return "" if isinstance(value, str) else f"{where} is {value!r}, not a string"


def _number_problem(value: Any, where: str, gate: str = "", metric: str = "") -> str:
    """Why ``value`` cannot be the number at ``where`` ("" when it can); with a gate kind's
    ``metric``, also outside what that metric can take (:func:`baseline.value_problem`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{where} is {value!r}, not a number"
    if not math.isfinite(value):
        return f"{where} is {value!r}, not a finite number"
    if metric:

        problem = value_problem(gate, metric, value)
        if problem:
            return f"{where}: {problem}"
    return ""


def _model_problem(report: Any, where: str) -> str:
    b = report.brittleness
    problems = [
        _text_problem(report.task, f"{where}.task"),
        _number_problem(b.severity, f"{where}.brittleness.severity", "ablation_robust",
                        "severity"),
        _number_problem(b.worst_drop, f"{where}.brittleness.worst_drop", "ablation_robust",
                        "max_single_drop"),
        _number_problem(b.mean_drop, f"{where}.brittleness.mean_drop", "ablation_robust",
                        "mean_drop"),
        _text_problem(b.worst_component, f"{where}.brittleness.worst_component"),
    ]
    if not isinstance(report.sweep.effects, list):
        problems.append(f"{where}.sweep.effects is not a list")
    else:
        for i, e in enumerate(report.sweep.effects):
            problems += [_text_problem(e.name, f"{where}.sweep.effects[{i}].name"),
                         _number_problem(e.drop, f"{where}.sweep.effects[{i}].drop"),
                         _number_problem(e.influence, f"{where}.sweep.effects[{i}].influence")]
    return next((p for p in problems if p), "")


def report_problem(report: Any) -> str:
    """What in a typed report read back from a file ``diff`` could not use ("" when nothing):
    every name it keys by and every number it compares must be there, of the right type,
    finite and possible (a severity of 5 or an alignment of NaN is a damaged file)."""
    if not hasattr(report, "alignment"):
        return _model_problem(report, "model")
    a = report.alignment
    problems = [
        _text_problem(report.task, "task"),
        _model_problem(report.teacher, "teacher"),
        _model_problem(report.student, "student"),
        _number_problem(a.score, "alignment.score", "circuit_aligned", "alignment"),
        _number_problem(a.weighted_score, "alignment.weighted_score", "circuit_aligned",
                        "weighted_alignment"),
        _number_problem(report.behavior_retained, "behavior_retained", "behavior_preserved",
                        "behavior_retained"),
    ]
    for i, pair in enumerate(a.pairs):
        problems += [_text_problem(pair.teacher, f"alignment.pairs[{i}].teacher"),
                     _text_problem(pair.student, f"alignment.pairs[{i}].student"),
                     _number_problem(pair.similarity, f"alignment.pairs[{i}].similarity",
                                     "circuit_aligned", "mean_similarity")]
    if not isinstance(report.discarded, list):
        problems.append("discarded is not a list")
    else:
        problems += [_text_problem(d.teacher, f"discarded[{i}].teacher")
                     for i, d in enumerate(report.discarded)]
    return next((p for p in problems if p), "")


def _key(report: Any) -> tuple[str, ...]:
    if hasattr(report, "alignment"):
        return (_name(report.teacher.model), _name(report.student.model), report.task)
    return (_name(report.model), report.task)


def _label(key: tuple[str, ...]) -> str:
    return (f"{key[0]} -> {key[1]} on {key[2]}" if len(key) == 3 else f"{key[0]} on {key[1]}")


# ----------------------------------------------------------------------------- subcommands


def _correct(performance: Any) -> str:
    """How many prompts a model answers right: "21/32"."""
    n = performance.n_prompts
    return f"{round(performance.accuracy * n)}/{n}"


def accuracy_retained(report: Any) -> float:
    """The student's top-1 accuracy as a percentage of the teacher's (the behaviour gate's
    ``accuracy_retained``)."""
    return share_of_teacher(report.student.performance.accuracy,
                            report.teacher.performance.accuracy)


def _accuracy_cell(report: Any) -> str:
    """The student's top-1 accuracy and its share of the teacher's: "0/32 (0%)"."""
    return f"{_correct(report.student.performance)} ({accuracy_retained(report):.0f}%)"


def _answer_prob(performance: Any) -> str:
    value = getattr(performance, "answer_prob", None)
    return "-" if value is None else f"{value:.3f}"


def _print_pair(report: Any, out: TextIO) -> None:
    a, t, s = report.alignment, report.teacher.brittleness, report.student.brittleness
    d = report.brittleness_delta
    teacher, student = _name(report.teacher.model), _name(report.student.model)
    out.write(f"\n{teacher} -> {student} on task '{report.task}' "
              f"({report.student.performance.n_prompts} prompts, "
              f"{report.fingerprint.ablation} ablation)\n")
    out.write(f"  behaviour retained {report.behavior_retained:.2f}%   alignment A "
              f"{a.score:.4f} (mean similarity {a.mean_similarity:.4f}, influence term "
              f"{a.influence_term:+.4f})   weighted {a.weighted_score:.4f}   compression "
              f"{report.compression:.3f}\n")
    tp, sp = report.teacher.performance, report.student.performance
    out.write(f"  top-1 accuracy: teacher {_correct(tp)}, student {_correct(sp)} "
              f"({accuracy_retained(report):.1f}% of the teacher's)   answer probability: "
              f"teacher {_answer_prob(tp)}, student {_answer_prob(sp)}\n")
    rows = [
        ["mean drop [95% CI]",
         f"{t.mean_drop:.2f} [{t.mean_drop_ci[0]:.2f}..{t.mean_drop_ci[1]:.2f}]",
         f"{s.mean_drop:.2f} [{s.mean_drop_ci[0]:.2f}..{s.mean_drop_ci[1]:.2f}]",
         f"{d.mean_drop:+.2f}"],
        ["severity", f"{t.severity:.4f}", f"{s.severity:.4f}", f"{d.severity:+.4f}"],
        ["worst single drop", f"{t.worst_drop:.1f} ({t.worst_component})",
         f"{s.worst_drop:.1f} ({s.worst_component})", f"{d.worst_drop:+.1f}"],
        ["components above tolerance", str(t.count_above_tolerance),
         str(s.count_above_tolerance), f"{d.count_above_tolerance:+d}"],
        ["worst-5% mean", f"{t.worst5_mean:.2f}", f"{s.worst5_mean:.2f}",
         f"{d.worst5_mean:+.2f}"],
        ["Gini of drops", f"{t.gini:.3f}", f"{s.gini:.3f}", f"{d.gini:+.3f}"],
    ]
    out.write(_table(["metric", "teacher", "student", "student - teacher"], rows) + "\n")
    if report.compressed:
        out.write("  compression (one student component took over several teacher ones):\n")
        for name, absorbed in sorted(report.compressed.items(), key=lambda kv: -len(kv[1])):
            out.write(f"    {name} <- {', '.join(absorbed)}\n")
    dead = report.dead_matches
    if dead:
        by_student: dict[str, list[str]] = {}
        for p in dead:
            by_student.setdefault(p.student, []).append(p.teacher)
        out.write("  matched onto dead student components (ablating them costs < "
                  f"{report.settings.min_student_influence:g} points):\n")
        for name, absorbed in sorted(by_student.items()):
            out.write(f"    {name} <- {', '.join(absorbed)}\n")
    if report.discarded:
        out.write("  discarded teacher mechanisms:\n")
        for item in report.discarded:
            out.write(f"    {item.teacher} (influence {item.teacher_influence:.1f}): "
                      f"{item.reason}\n")
    else:
        out.write("  discarded teacher mechanisms: none\n")


def _write_outputs(args: argparse.Namespace, reports: list[Any], out: TextIO,
                   circuits: Sequence[Any] = ()) -> None:
    if args.json:

        document = {"format": REPORTS_FORMAT, "version": REPORTS_VERSION,
                    "reports": plain([r.to_dict() for r in reports])}
        if circuits:  # beside the reports: diff reads "reports" and nothing else
            document["circuits"] = plain([c.to_dict() for c in circuits])
        write_json_atomic(Path(args.json), document)
        out.write(f"\nwrote {len(reports)} report(s) to {args.json}\n")
    if args.html:

        write_html(args.html, [*reports, *circuits], title="pytest-circuits: " + ", ".join(
            sorted({f"{_key(r)[0]} -> {_key(r)[1]}" for r in reports})))
        out.write(f"wrote the HTML report to {args.html}\n")


def cmd_compare(args: argparse.Namespace, out: TextIO) -> int:
    tasks = args.task or ["numerals"]
    wanted = int(args.circuits) + int(args.roles)
    run = _run_from(args, steps=2 + len(tasks) * (1 + 2 * wanted))
    reports = [run.pair_report(args.teacher, args.student, task) for task in tasks]
    circuits = [run.circuits_report({"teacher": args.teacher, "student": args.student}, task,
                                    circuits=args.circuits, roles=args.roles,
                                    matching=report)
                for task, report in zip(tasks, reports, strict=True)] if wanted else []
    for i, report in enumerate(reports):
        _print_pair(report, out)
        if circuits:
            _print_circuits_report(circuits[i], out)
    _write_outputs(args, reports, out, circuits)
    return EXIT_OK


def _print_circuits_report(report: Any, out: TextIO) -> None:
    """The circuits and head roles of ``compare --circuits/--roles``."""
    names = report.names()
    if report.circuits:
        out.write("\ncircuits (iterative node pruning; faithfulness: the circuit alone, "
                  "completeness: 1 - what the rest keeps without it):\n")
        out.write(format_table(
            ["model", "T", "nodes", "heads", "MLPs", "faithfulness", "completeness",
             "worst node drop", "circuit"],
            [[f"{role} {c.model}", f"{c.threshold:g}", c.size, c.n_heads, c.n_mlps,
              c.faithfulness, c.completeness, f"{c.worst_node_drop:.1f}",
              " ".join(c.nodes) or "(empty)"]
             for role in report.model_roles() if (c := report.circuits.get(role))]) + "\n")
        sweep = [[f"{role} {c.model}", f"{p.threshold:g}", len(p.nodes), p.faithfulness,
                  p.jaccard] for role in report.model_roles()
                 if (c := report.circuits.get(role)) for p in c.stability]
        if sweep:
            out.write("threshold sweep:\n" + format_table(
                ["model", "T", "nodes", "faithfulness", "Jaccard vs the circuit"], sweep) + "\n")
    if not report.roles:
        return
    roles = [r for r in ROLES if any(r in x.scores for x in report.roles.values())]
    comparison = report.comparison
    matched = dict(report.matched)
    rows = []
    for role in roles:
        row = [role] + [", ".join(x.holders(role)) or f"- (best {x.best(role):.2f})"
                        for x in report.roles.values()]
        if comparison is not None:
            teacher = report.roles["teacher"]
            row.append(", ".join(f"{t}->{matched.get(t) or '-'}" for t in teacher.holders(role))
                       or "-")
            row.append("DISCARDED" if role in comparison.discarded else "-")
        rows.append(row)
    headers = ["role"] + [f"{role} {names[role]}" for role in report.roles]
    if comparison is not None:
        headers += ["teacher holder -> match", "discarded"]
    out.write("\nhead roles (holders: score >= the role's threshold):\n"
              + format_table(headers, rows) + "\n")
    for role in ROLES:
        for x in report.roles.values():
            if role in x.not_applicable:
                out.write(f"  {role} not measured on {model_name(x.model)}: "
                          f"{x.not_applicable[role]}\n")
                break
    if comparison is not None:
        for role, heads in comparison.discarded.items():
            out.write(f"  discarded: {role} (teacher {', '.join(heads)}; no student head holds "
                      "it)\n")
        for merged in comparison.merged:
            out.write(f"  merged: student {merged.student} holds {' + '.join(merged.roles)}, "
                      "which no teacher head holds together\n")


def cmd_calibrate(args: argparse.Namespace, out: TextIO) -> int:
    tasks = args.task or ["numerals"]
    run = _run_from(args, steps=(1 + len(args.students)) * (1 + len(tasks)))
    # keyed by the task as given: a task file's reports carry its name, not its path
    calibrations = [calibrate_teacher(run.model_report(args.teacher, task), args.drop_margin,
                                      source=task) for task in tasks]
    pairs = {(student, task): run.pair_report(args.teacher, student, task)
             for student in args.students for task in tasks}
    blocked = False
    min_score: dict[str, float] = {}
    min_weighted: dict[str, float] = {}
    # the weighted score is gated where the preset recommends it: with its noise floor it
    # sees a lost influential component that A averages away (docs/method.md)
    weighs = run.options.preset == "recommended"
    for c in calibrations:
        out.write(f"\nteacher {c.teacher} on task '{c.label}'\n")
        rows = [
            ["severity", _n(c.severity), f"{c.severity_ci[0]:.3f}..{c.severity_ci[1]:.3f}",
             f"max_severity_increase: {c.max_severity_increase:g}",
             "teacher's CI upper end - teacher's severity"],
            ["worst head drop", f"{c.worst_head[1]:.1f} ({c.worst_head[0]})", "-",
             "-" if c.max_head_drop is None
             else f"max_single_drop: {c.max_head_drop:g} (heads)", c.head_rule()],
            ["worst MLP drop", f"{c.worst_mlp[1]:.1f} ({c.worst_mlp[0]})", "-", "-",
             "no single-drop limit on MLPs: use max_severity_increase"
             if c.worst_mlp[1] >= 100 else "covered by max_severity_increase"],
            ["mean drop", f"{c.mean_drop:.2f}", f"{c.mean_drop_ci[0]:.2f}..{c.mean_drop_ci[1]:.2f}",
             "-", "context"],
        ]
        out.write(_table(["metric", "teacher", "95% CI", "suggested threshold", "rule"], rows)
                  + "\n")
        if not args.students:
            continue
        rows = []
        passing_lows: list[float] = []
        passing_weighted_lows: list[float] = []
        notes: list[tuple[str, Finding]] = []
        for student in args.students:
            report = pairs[(student, c.gate_task)]
            low, high = alignment_interval(report)
            weighted = f"{report.alignment.weighted_score:.3f}"
            if weighs:
                w_low, w_high = weighted_alignment_interval(report)
                weighted += f" [{w_low:.3f}..{w_high:.3f}]"
            found = findings(run, args.teacher, student, report, c, args.min_retained,
                             args.min_accuracy_retained)
            blocking = [f for f in found if f.blocking]
            blocked |= bool(blocking)
            if not blocking:
                passing_lows.append(low)
                if weighs:
                    passing_weighted_lows.append(w_low)
            notes.extend((student, f) for f in found)
            name, drop = _worst(report.student, "head")
            increase = report.student.brittleness.severity - report.teacher.brittleness.severity
            rows.append([student, f"{report.behavior_retained:.1f}%", _accuracy_cell(report),
                         f"{report.student.brittleness.severity:.3f} ({increase:+.3f})",
                         f"{drop:.1f} ({name})",
                         f"{report.alignment.score:.3f} [{low:.3f}..{high:.3f}]", weighted,
                         f"BLOCKED ({len(blocking)})" if blocking else "passes"])
        out.write("  candidates under these thresholds:\n")
        out.write(_table(["student", "behaviour", "top-1 accuracy", "severity (increase)",
                          "worst head", "A [95% CI]",
                          "weighted A [95% CI]" if weighs else "weighted A", "verdict"],
                         rows) + "\n")
        for student, f in notes:
            out.write(f"    {student}: {'BLOCKS' if f.blocking else 'note'}: {f.text}\n")
        if passing_lows:
            min_score[c.gate_task] = max(0.0, _round_down(min(passing_lows), 0.05))
        if passing_weighted_lows:
            min_weighted[c.gate_task] = max(0.0, _round_down(min(passing_weighted_lows), 0.05))
    out.write("\n# ---- paste into circuits.yaml ----\n")
    out.write(calibration_yaml(
        args.teacher, args.students, calibrations, run.options, args.min_retained, min_score,
        args.min_accuracy_retained, min_weighted))
    return EXIT_REGRESSION if (blocked and args.strict) else EXIT_OK


@dataclass
class Candidate:
    """One candidate's reports over the tasks, what would block it, and its ranking key."""

    source: str
    reports: list[Any]
    findings: list[Finding]

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.blocking]

    @property
    def discarded(self) -> int:
        return sum(len(r.discarded) for r in self.reports)

    @property
    def alignment(self) -> float:
        return sum(r.alignment.score for r in self.reports) / len(self.reports)

    @property
    def weighted(self) -> float:
        return sum(r.alignment.weighted_score for r in self.reports) / len(self.reports)

    @property
    def severity(self) -> float:
        return max(r.student.brittleness.severity for r in self.reports)

    @property
    def retained(self) -> float:
        return min(r.behavior_retained for r in self.reports)

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy kept, in percent of the teacher's: the lowest over the tasks."""
        return min(accuracy_retained(r) for r in self.reports)

    def sort_key(self) -> tuple[float, ...]:
        # fewest blocking findings first, then naming the answer as often as the teacher does
        # (a logit difference can hold while the model predicts some third token), then
        # computing most like the teacher, then robustness
        return (len(self.blocking), -self.accuracy, -self.alignment, -self.weighted,
                self.discarded, self.severity)


def rank_candidates(candidates: list[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=Candidate.sort_key)


def _why(better: Candidate, worse: Candidate) -> str:
    if len(better.blocking) != len(worse.blocking):
        return (f"{len(better.blocking)} blocking finding(s) against "
                f"{len(worse.blocking)}")
    if better.accuracy != worse.accuracy:
        return (f"top-1 accuracy {better.accuracy:.1f}% of the teacher's against "
                f"{worse.accuracy:.1f}%")
    if better.alignment != worse.alignment:
        return f"alignment {better.alignment:.3f} against {worse.alignment:.3f}"
    if better.weighted != worse.weighted:
        return f"weighted alignment {better.weighted:.3f} against {worse.weighted:.3f}"
    if better.discarded != worse.discarded:
        return f"{better.discarded} discarded mechanism(s) against {worse.discarded}"
    return f"severity {better.severity:.3f} against {worse.severity:.3f}"


def cmd_rank(args: argparse.Namespace, out: TextIO) -> int:
    tasks = args.task or ["numerals"]
    run = _run_from(args, steps=1 + len(args.candidates) * (1 + len(tasks)) + len(tasks))
    calibrations = [calibrate_teacher(run.model_report(args.teacher, task), args.drop_margin,
                                      source=task) for task in tasks]
    candidates = []
    for source in args.candidates:
        reports = [run.pair_report(args.teacher, source, task) for task in tasks]
        found = [f for r, c in zip(reports, calibrations, strict=True)
                 for f in findings(run, args.teacher, source, r, c, args.min_retained,
                                   args.min_accuracy_retained)]
        candidates.append(Candidate(source, reports, found))
    ranked = rank_candidates(candidates)
    rows = []
    for place, c in enumerate(ranked, 1):
        worst = max(c.reports, key=lambda r: r.student.brittleness.worst_drop)
        wb = worst.student.brittleness
        discarded = sorted({f"{d.teacher} ({r.task})" for r in c.reports for d in r.discarded})
        rows.append([str(place), c.source, f"{c.retained:.1f}%", f"{c.accuracy:.1f}%",
                     f"{c.alignment:.3f}",
                     f"{c.weighted:.3f}", f"{c.severity:.3f}",
                     f"{wb.worst_component} {wb.worst_drop:.0f} ({worst.task})",
                     ", ".join(discarded) or "none"])
    out.write(f"\ncandidates for teacher {args.teacher} on {', '.join(tasks)} "
              "(behaviour and accuracy: lowest over tasks; alignment: mean; severity: "
              "highest)\n")
    out.write(_table(["rank", "candidate", "behaviour kept", "accuracy kept", "alignment",
                      "weighted", "severity", "worst component", "discarded mechanisms"], rows)
              + "\n")
    out.write("\nwhy this order (fewest findings that thresholds calibrated on the teacher "
              "would block, then top-1 accuracy kept, alignment, weighted alignment, discarded "
              "mechanisms, severity):\n")
    for place, c in enumerate(ranked, 1):
        reason = "" if place == len(ranked) else f"; above {ranked[place].source}: " + _why(
            c, ranked[place])
        out.write(f"  {place}. {c.source}: "
                  + (f"{len(c.blocking)} blocking finding(s)" if c.blocking
                     else "passes every calibrated threshold") + reason + "\n")
        for f in c.findings:
            out.write(f"       - {f.task}: {'' if f.blocking else '(note) '}{f.text}\n")
    return EXIT_OK


@dataclass
class Change:
    """One measured quantity before and after, and whether it regressed beyond tolerance."""

    what: str
    before: float | str | None
    after: float | str | None
    regressed: bool = False
    note: str = ""
    #: an estimate's band reaches past the tolerance at one end and not at the other: neither
    #: a regression nor a pass (no estimate passes on its point value alone)
    undecided: bool = False

    @property
    def verdict(self) -> str:
        return "REGRESSED" if self.regressed else "UNDECIDED" if self.undecided else "ok"


def _cell(value: float | str | None) -> str:
    if isinstance(value, float):
        return _n(value)
    return "-" if value is None else str(value)


def _beyond(worse_by: float, tolerance: float) -> bool:
    """Whether a change ``worse_by`` in the worse direction exceeds ``tolerance``; a NaN on
    either side is a regression, never "ok" (NaN compares false with everything)."""
    return not worse_by <= tolerance


#: How ``diff`` says it placed two students of different depth through their matchings.
THROUGH_TEACHER = "teacher layers, through each file's matching"


@dataclass(frozen=True)
class LayerFrames:
    """Where each side's components stand for a component-by-component diff.

    ``old``/``new`` map a student's layer to a layer of the common frame: the teacher's layers
    when both are aligned through their matching, the old student's layers under a user's
    ``--layer-map``, the layer itself when both students have the same depth. ``how`` says which,
    for the output; ``None`` maps: the depths differ and nothing aligns them (the diff then
    compares no components).
    """

    old: dict[int, int] | None
    new: dict[int, int] | None
    how: str

    @property
    def by_index(self) -> bool:
        return self.how == "index"

    @property
    def through_teacher(self) -> bool:
        """Both sides are placed at the teacher layer their layers stand for."""
        return self.how == THROUGH_TEACHER


def _student(report: Any) -> Any:
    return report.student if hasattr(report, "alignment") else report


def layer_frames(old: Any, new: Any, layer_map: dict[int, int] | None = None) -> LayerFrames:
    """How ``diff`` lines up the layers of two results' students (see :class:`LayerFrames`):
    ``layer_map`` (new layer -> old layer) when given, else the index when both students have
    the same depth, else each student's layers aligned with the shared teacher's through its
    own matching (:func:`analysis.layers.align_layers`). A ``ValueError`` or ``TypeError`` says
    the reports cannot be aligned (a damaged file); a ``UsageError`` that ``layer_map`` does not
    fit."""

    n_old, n_new = depth(_student(old)), depth(_student(new))
    if layer_map is not None or n_old != n_new:
        _check_heads(old)
        _check_heads(new)
    if layer_map is not None:
        problem = layer_map_problem(layer_map, n_new, n_old, names=("new student",
                                                                     "old student"))
        if problem:
            raise UsageError(f"--layer-map {_ranges(layer_map)}: {problem}")
        return LayerFrames({layer: layer for layer in range(n_old)}, dict(layer_map),
                           "--layer-map")
    if n_old == n_new:
        same = {layer: layer for layer in range(n_old)}
        return LayerFrames(same, same, "index")
    if not (hasattr(old, "alignment") and hasattr(new, "alignment")):
        return LayerFrames(None, None, f"depths differ ({n_old} and {n_new} layers) and the "
                                       "files hold no matching to align them")
    frames = []
    for report in (old, new):
        n_student, n_teacher = depth(report.student), depth(report.teacher)
        frames.append({layer: layer for layer in range(n_student)} if n_student == n_teacher
                      else align_layers(report))
    return LayerFrames(frames[0], frames[1], THROUGH_TEACHER)


def _ranges(mapping: dict[int, int]) -> str:
    """``{0: 0, 1: 1, 2: 2, 3: 4, 4: 5}`` as ``0-2:0-2, 3-4:4-5`` (runs that both step by 1)."""
    runs: list[list[tuple[int, int]]] = []
    for source, target in sorted(mapping.items()):
        if runs and source == runs[-1][-1][0] + 1 and target == runs[-1][-1][1] + 1:
            runs[-1].append((source, target))
        else:
            runs.append([(source, target)])

    def span(first: int, last: int) -> str:
        return str(first) if first == last else f"{first}-{last}"

    return ", ".join(f"{span(run[0][0], run[-1][0])}:{span(run[0][1], run[-1][1])}"
                     for run in runs)


def _keyed(effects: Sequence[Any], frames: LayerFrames, frame: dict[int, int]
           ) -> dict[Any, Any]:
    """Each effect under its place: its name when the frames are the index, else (frame layer,
    how many of the side's earlier layers share that frame layer, head; -1 for the MLP)."""
    if frames.by_index:
        return {effect.name: effect for effect in effects}
    rank: dict[int, dict[int, int]] = {}
    keyed = {}
    for effect in effects:
        target = frame.get(effect.layer, -1 - effect.layer)  # unmapped: a place of its own
        seen = rank.setdefault(target, {})
        seen.setdefault(effect.layer, len(seen))
        keyed[(target, seen[effect.layer], -1 if effect.head is None else effect.head)] = effect
    return keyed


def _check_heads(report: Any) -> None:
    """A ``ValueError`` when a swept component's head is not a head number (or None for an
    MLP): aligning layers places components by layer and head."""
    for effect in _student(report).sweep.effects:
        head = effect.head
        if head is not None and (isinstance(head, bool) or not isinstance(head, int)):
            raise ValueError(f"component {effect.name!r} has head {head!r}, not a head number")


Interval = tuple[float, float]


def estimate_intervals(report: Any) -> dict[str, Interval]:
    """Where the summary values ``diff`` compares can lie while every estimate of the report's
    sweeps moves within its band (:mod:`analysis.bounds`), for those that rest on an estimate;
    empty for a report of exact (or settled) sweeps. Keys: the summary rows' names."""
    from .analysis.bounds import alignment_slack, brittleness_intervals, has_estimates

    student = _student(report)
    found: dict[str, Interval] = {}
    if has_estimates(student.sweep):
        intervals = brittleness_intervals(student.sweep, student.brittleness)
        found["severity"] = intervals["severity"]
        found["worst single drop"] = intervals["max_single_drop"]
        found["mean drop"] = intervals["mean_drop"]
    if hasattr(report, "alignment"):
        paper, weighted = alignment_slack(report)
        for name, value, slack in (("alignment A", report.alignment.score, paper),
                                   ("weighted alignment", report.alignment.weighted_score,
                                    weighted)):
            if slack:
                found[name] = (value - slack, value + slack)
    return found


def read_by_value(old: Any, new: Any) -> bool:
    """Whether two reports' estimates are one measurement, compared by value as the baseline
    does: the same sweep method of the same weights (both models of a pair)."""
    if old.fingerprint.method != new.fingerprint.method:
        return False
    sides = ("teacher", "student") if hasattr(old, "alignment") else (None,)
    for side in sides:
        a = getattr(old, side) if side else old
        b = getattr(new, side) if side else new
        if a.sweep.model.weights_sha256 != b.sweep.model.weights_sha256:
            return False
    return True


def _judged(what: str, before: float, after: float, tolerance: float, higher_is_worse: bool,
            bands: tuple[Interval | None, Interval | None], note: str = "") -> Change:
    """A summary row: regressed when worse by more than ``tolerance`` wherever the estimates
    lie in their ``bands`` (old, new; None for an exact value), undecided when only somewhere.
    """
    (b_lo, b_hi), (a_lo, a_hi) = (band or (value, value)
                                  for band, value in zip(bands, (before, after), strict=True))
    if higher_is_worse:
        least, most = a_lo - b_hi, a_hi - b_lo
    else:
        least, most = b_lo - a_hi, b_hi - a_lo
    regressed = _beyond(least, tolerance)
    undecided = not regressed and _beyond(most, tolerance)
    if undecided:
        note = (f"{note}; " if note else "") + (
            f"an estimate: {_n(b_lo)}..{_n(b_hi)} -> {_n(a_lo)}..{_n(a_hi)} within the bands, "
            "past the tolerance at one end; measure with --method exact")
    return Change(what, before, after, regressed, note, undecided)


def diff_reports(old: Any, new: Any, args: argparse.Namespace,
                 frames: LayerFrames | None = None) -> tuple[list[Change], list[Change]]:
    """(summary changes, component changes) from ``old`` to ``new``; regressions flagged (a
    value that is not a number regresses).

    Components are compared where they stand in ``frames`` (default :func:`layer_frames`, with
    ``args.layer_map``): when the students' depths differ, a student layer is compared with the
    other's layer that stands for the same teacher layer, never with the one of the same
    number, and a layer with no counterpart is listed once as removed (or added)."""
    summary: list[Change] = []
    old_student, new_student = _student(old), _student(new)
    ob, nb = old_student.brittleness, new_student.brittleness
    by_value = read_by_value(old, new)
    old_bands = {} if by_value else estimate_intervals(old)
    new_bands = {} if by_value else estimate_intervals(new)

    def bands(name: str) -> tuple[Interval | None, Interval | None]:
        return old_bands.get(name), new_bands.get(name)

    if hasattr(old, "alignment"):
        summary += [
            _judged("alignment A", old.alignment.score, new.alignment.score,
                    args.max_alignment_drop, False, bands("alignment A")),
            _judged("weighted alignment", old.alignment.weighted_score,
                    new.alignment.weighted_score, args.max_alignment_drop, False,
                    bands("weighted alignment")),
            Change("behaviour retained (%)", old.behavior_retained, new.behavior_retained,
                   _beyond(old.behavior_retained - new.behavior_retained,
                           args.max_retained_drop)),
        ]
        gone = sorted({d.teacher for d in new.discarded} - {d.teacher for d in old.discarded})
        summary.append(Change("discarded mechanisms", len(old.discarded), len(new.discarded),
                              bool(gone) and not args.allow_new_discards,
                              "newly discarded: " + ", ".join(gone) if gone else ""))
    summary += [
        _judged("severity", ob.severity, nb.severity, args.max_severity_increase, True,
                bands("severity")),
        _judged("worst single drop", ob.worst_drop, nb.worst_drop, args.max_drop_increase,
                True, bands("worst single drop"),
                f"{ob.worst_component} -> {nb.worst_component}"),
        Change("mean drop", ob.mean_drop, nb.mean_drop),
    ]
    if frames is None:
        frames = layer_frames(old, new, getattr(args, "layer_map", None))
    if frames.old is None or frames.new is None:
        return summary, []
    components: list[Change] = []
    before = _keyed(old_student.sweep.effects, frames, frames.old)
    after = _keyed(new_student.sweep.effects, frames, frames.new)
    old_match = ({p.teacher: p for p in old.alignment.pairs}
                 if hasattr(old, "alignment") else {})
    new_match = ({p.teacher: p for p in new.alignment.pairs}
                 if hasattr(new, "alignment") else {})
    whole_layers = _whole_layers(before, after, frames)
    listed: set[tuple[bool, int]] = set()
    for key in list(before) + [k for k in after if k not in before]:
        b, a = before.get(key), after.get(key)
        if b is None or a is None:
            only = b if a is None else a
            if not frames.by_index and only.layer in whole_layers[a is None]:
                if (a is None, only.layer) not in listed:  # once per layer, not per component
                    listed.add((a is None, only.layer))
                    components.append(_layer_change(only.layer, a is None, whole_layers,
                                                    frames))
                continue
            components.append(Change(f"student {only.name}", "absent" if b is None else b.drop,
                                     "absent" if a is None else a.drop, False,
                                     "new component" if b is None else "removed component"))
            continue
        change = a.influence - b.influence
        b_band = 0.0 if by_value or b.is_exact else (math.inf if b.bound is None else b.bound)
        a_band = 0.0 if by_value or a.is_exact else (math.inf if a.bound is None else a.bound)
        name = b.name if b.name == a.name else f"{b.name} -> {a.name}"
        judged = _judged(
            f"student {name} drop", b.drop, a.drop, args.max_drop_increase, True,
            ((b.drop - b_band, b.drop + b_band) if b_band else None,
             (a.drop - a_band, a.drop + a_band) if a_band else None),
            f"{'gained' if change > 0 else 'lost'} {abs(change):.1f} points of influence")
        # listed when the influence moved beyond the threshold wherever the estimates lie in
        # their bands (a NaN change is listed), or when an estimate's drop could regress
        moved = not abs(change) - (a_band + b_band) < args.influence_change
        if moved or (a_band + b_band > 0 and (judged.regressed or judged.undecided)):
            components.append(judged)
    old_place = {e.name: k for k, e in before.items()}
    new_place = {e.name: k for k, e in after.items()}
    old_layer = {e.name: e.layer for e in before.values()}
    rehomed: dict[int, list[tuple[Any, Any]]] = {}  # removed old layer -> its teachers' moves
    for teacher in list(old_match) + [t for t in new_match if t not in old_match]:
        b, a = old_match.get(teacher), new_match.get(teacher)
        moved = (b is None or a is None or
                 old_place.get(b.student, b.student) != new_place.get(a.student, a.student))
        if not moved:
            continue
        layer = old_layer.get(b.student) if b is not None and a is not None else None
        if not frames.by_index and layer in whole_layers[True]:
            # the old match's layer is gone: one line per layer, not one per component
            rehomed.setdefault(layer, []).append((b, a))  # type: ignore[arg-type]
            continue
        components.append(Change(
            f"teacher {teacher} match", b.student if b else None, a.student if a else None,
            False, f"similarity {_cell(b.similarity if b else None)} -> "
                   f"{_cell(a.similarity if a else None)}"))
    for layer, moves in sorted(rehomed.items()):
        homes = sorted({after[new_place[a.student]].layer for _, a in moves
                        if a.student in new_place})
        components.append(Change(
            f"teachers matched into old student layer {layer} ({len(moves)})",
            f"L{layer}", "L" + "/L".join(map(str, homes)) if homes else None, False,
            f"the layer is removed; now matched in new student layer(s) "
            f"{', '.join(map(str, homes)) or '-'}, "
            f"mean similarity {_cell(_mean(b.similarity for b, _ in moves))} -> "
            f"{_cell(_mean(a.similarity for _, a in moves))}"))
    return summary, components


def _mean(values: Any) -> float:
    numbers = [float(v) for v in values]
    return sum(numbers) / len(numbers) if numbers else float("nan")


def _whole_layers(before: dict[Any, Any], after: dict[Any, Any], frames: LayerFrames
                  ) -> dict[bool, dict[int, list[str]]]:
    """The layers one side has and the other has no counterpart of: {True: the old student's
    removed layers, False: the new student's added ones}, each with its components."""
    found: dict[bool, dict[int, list[str]]] = {True: {}, False: {}}
    if frames.by_index:  # the same layers on both sides: a missing component is listed alone
        return found
    for removed, mine, other in ((True, before, after), (False, after, before)):
        places = {(k[0], k[1]) for k in other}
        layers: dict[int, list[tuple[Any, Any]]] = {}
        for key, effect in mine.items():
            layers.setdefault(effect.layer, []).append((key, effect))
        for layer, items in layers.items():
            if all((key[0], key[1]) not in places for key, _ in items):
                found[removed][layer] = [effect.name for _, effect in items]
    return found


def _layer_change(layer: int, removed: bool, whole: dict[bool, dict[int, list[str]]],
                  frames: LayerFrames) -> Change:
    names = whole[removed][layer]
    side = "old" if removed else "new"
    frame = (frames.old if removed else frames.new) or {}
    where = (f"teacher layer {frame[layer]}" if frames.through_teacher and layer in frame
             else f"{side} student layer {layer}")
    shown = ", ".join(names) if len(names) <= 3 else f"{names[0]} .. {names[-1]}"
    return Change(
        f"student layer {layer} ({len(names)} components: {shown})",
        "present" if removed else "absent", "absent" if removed else "present", False,
        (f"removed: {where} has no counterpart in the new student" if removed
         else f"added: {where} has no counterpart in the old student"))


def pair_up(old: dict[tuple[str, ...], Any], new: dict[tuple[str, ...], Any]
            ) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Which report of ``old`` to compare with which of ``new``: the same pair and task, or
    else (two releases of one student usually live at different paths) the same teacher and
    task when each file has exactly one student for it."""
    matched = [(k, k) for k in old if k in new]
    rest_old = [k for k in old if k not in new]
    rest_new = [k for k in new if k not in old]

    def by_teacher(keys: list[tuple[str, ...]]) -> dict[tuple[str, str], list[tuple[str, ...]]]:
        groups: dict[tuple[str, str], list[tuple[str, ...]]] = {}
        for k in keys:
            if len(k) == 3:
                groups.setdefault((k[0], k[2]), []).append(k)
        return groups

    old_groups, new_groups = by_teacher(rest_old), by_teacher(rest_new)
    for group, keys in old_groups.items():
        if len(keys) == 1 and len(new_groups.get(group, [])) == 1:
            matched.append((keys[0], new_groups[group][0]))
    return matched


def _frames_of(old: Any, new: Any, args: argparse.Namespace) -> LayerFrames:
    """:func:`layer_frames` for ``cmd_diff``: a report whose layers or matching cannot be read
    is a damaged file (exit 3) naming both files, not an internal error."""
    try:
        return layer_frames(old, new, args.layer_map)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise MalformedInputError(
            f"{args.old} or {args.new}: the students' layers cannot be aligned ({exc}); a "
            "damaged results file cannot be compared: write it again") from None


def _frames_line(frames: LayerFrames) -> str:
    """How the two students' layers were lined up, for a diff of different depths."""
    if frames.old is None or frames.new is None:
        return (f"  {frames.how}: components are not compared; give --layer-map NEW:OLD,... "
                "to compare them\n")
    if frames.how == "--layer-map":
        return f"  layers lined up by --layer-map (new:old): {_ranges(frames.new)}\n"
    return (f"  layers lined up as {frames.how} (student layer:teacher layer): old "
            f"{_ranges(frames.old)}; new {_ranges(frames.new)}\n")


def _layer_map_argument(text: str) -> dict[int, int]:

    try:
        return parse_layer_map(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    old = {_key(r): r for r in load_reports(args.old)}
    new = {_key(r): r for r in load_reports(args.new)}
    matched = pair_up(old, new)
    if not matched:
        raise UsageError(
            f"{args.old} and {args.new} share no pair (or teacher) and task: {args.old} has "
            f"{', '.join(_label(k) for k in old)}; {args.new} has "
            f"{', '.join(_label(k) for k in new)}")
    regressions = undecided = 0
    for old_key, new_key in matched:
        label = _label(old_key) if old_key == new_key else (
            f"{_label(old_key)} -> student {new_key[1]}")

        # exact and auto measure the same quantities: an estimate is then read by its band
        current, stored = new[new_key].fingerprint.to_dict(), old[old_key].fingerprint.to_dict()
        ignore = ("method",) if switched_algorithm(current, stored) else ()
        differences = method_differences(current, stored, ignore=ignore)
        if differences:
            raise AnalysisError(
                f"{label} was measured differently in the two files ("
                + "; ".join(differences) + "): their numbers cannot be compared; measure both "
                "with the same settings")
        frames = _frames_of(old[old_key], new[new_key], args)
        summary, components = diff_reports(old[old_key], new[new_key], args, frames)
        out.write(f"\n{label}: {args.old} -> {args.new}\n")
        if not frames.by_index:
            out.write(_frames_line(frames))
        out.write(_table(["metric", "before", "after", "change", "verdict", "note"], [
            [c.what, _cell(c.before), _cell(c.after),
             _n(c.after - c.before) if isinstance(c.before, (int, float))
             and isinstance(c.after, (int, float)) else "-",
             c.verdict, c.note] for c in summary]) + "\n")
        if components:
            out.write("  component changes:\n")
            out.write(_table(["component", "before", "after", "verdict", "note"], [
                [c.what, _cell(c.before), _cell(c.after),
                 "changed" if c.verdict == "ok" else c.verdict, c.note]
                for c in components]) + "\n")
        else:
            out.write("  no component gained or lost influence beyond "
                      f"{args.influence_change:g} points or changed its match\n")
        regressions += sum(c.regressed for c in summary + components)
        undecided += sum(c.undecided for c in summary + components)
    used_old = {k for k, _ in matched}
    used_new = {k for _, k in matched}
    for key in old:
        if key not in used_old:
            out.write(f"\nonly in {args.old}: {_label(key)}\n")
    for key in new:
        if key not in used_new:
            out.write(f"\nonly in {args.new}: {_label(key)}\n")
    out.write(f"\n{regressions} regression(s) beyond tolerance\n")
    if undecided:
        out.write(f"{undecided} change(s) undecided: an estimate's band reaches past the "
                  "tolerance; no estimate passes on its point value (measure with --method "
                  "exact)\n")
    return EXIT_REGRESSION if regressions or undecided else EXIT_OK


# ----------------------------------------------------------------------------- the parser


def _analysis_options(parser: argparse.ArgumentParser) -> None:

    group = parser.add_argument_group("analysis settings (as in the pytest options)")
    group.add_argument("--task", action="append", metavar="TASK",
                       help=f"a built-in task ({', '.join(BUILTIN_TASKS)}) or a task file; "
                            "repeat for several (default: numerals)")
    group.add_argument("--n-prompts", type=int, default=None, metavar="N",
                       help="prompts per built-in task (default: the plugin's, 32)")
    group.add_argument("--seed", type=int, default=0, help="task and ablation seed (default 0)")
    group.add_argument("--ablation", choices=("mean", "zero", "resample"), default="mean")
    group.add_argument("--similarity", choices=SIMILARITIES, default="paper",
                       help="how MLPs (and, for cka, heads) are compared (default: paper)")
    group.add_argument("--matching", choices=("paper", "causal", "tie_aware"), default="paper",
                       help="paper: by similarity; causal: by ablation effect (any tokenizers); "
                            "tie_aware: by similarity, near-ties decided by effect")
    group.add_argument("--preset", choices=("paper", "recommended"), default=None,
                       help="recommended: tie-aware matching, subspace MLP similarity and a "
                            "3-point noise floor under the weighted score (for real models); "
                            "not combinable with --matching/--similarity")
    group.add_argument("--margin", type=float, default=0.1,
                       help="a model must reach this clean logit difference (default 0.1)")
    group.add_argument("--method", choices=("exact", "auto"), default=None,
                       help="sweep algorithm: exact, or auto (screen by attribution, measure "
                            "exactly what could change a verdict or the top 5) (default: as the "
                            "gates, auto where its predicted cost is below the exact sweep's or "
                            "for a model of 1,000 components or more, exact otherwise)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    group.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    group.add_argument("--cache-dir", default=None, metavar="DIR",
                       help="analysis cache shared with pytest (default: "
                            f"{DEFAULT_CACHE_DIR}; when it cannot be used, the command warns "
                            "and runs without it)")
    group.add_argument("--no-cache", action="store_true", help="recompute everything")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="no progress on stderr, the libraries' loading bars (transformers, "
                            "huggingface_hub, GGUF conversion) included")


def _threshold_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-retained", type=float, default=90.0, metavar="PERCENT",
                        help="behaviour floor: student clean logit difference in percent of "
                             "the teacher's (default 90; percent, so 90, not 0.9)")
    parser.add_argument("--min-accuracy-retained", type=float,
                        default=DEFAULT_MIN_ACCURACY_RETAINED, metavar="PERCENT",
                        help="behaviour floor: student top-1 accuracy in percent of the "
                             f"teacher's (default {DEFAULT_MIN_ACCURACY_RETAINED:g}; 0 checks "
                             "nothing)")
    parser.add_argument("--drop-margin", type=float, default=10.0, metavar="POINTS",
                        help="a single head may cost this many points more than the teacher's "
                             "worst head (default 10)")


#: What a model argument may be, for ``--help``.
MODEL_HELP = ("a model: a save_pretrained directory, a hub id (openai-community/gpt2), a "
              ".gguf file, or zoo:NAME for a bundled tiny model (zoo:tiny-teacher, "
              "zoo:tiny-student, zoo:tiny-student-brittle)")
STUDENTS_HELP = "candidate students, each a model as TEACHER is"


def cmd_circuit(args: argparse.Namespace, out: TextIO) -> int:
    """Discover each task's circuit of one model (iterative node pruning) and print it."""
    tasks = args.task or ["numerals"]
    run = _run_from(args, steps=1 + len(tasks) * (1 + int(args.roles)))
    results = []
    for task in tasks:
        model = run.model(args.model)
        from .analysis.circuits import circuit_result
        from .analysis.store import as_task

        built = as_task(task, run.options.n_prompts, run.options.seed, model)
        with run.progress.step(f"{task}: circuit of {args.model}"):
            results.append(circuit_result(
                model, built, threshold=args.threshold, ablation=args.ablation, seed=args.seed,
                edges=args.edges, stability=None if args.no_stability else args.stability,
                margin=args.margin))
    held = []
    if args.roles:
        from .analysis.roles import head_roles

        for task in tasks:
            with run.progress.step(f"{task}: head roles of {args.model}"):
                held.append(head_roles(run.model(args.model), task,
                                       n_prompts=run.options.n_prompts, seed=run.options.seed))
    for i, result in enumerate(results):
        _print_circuit(result, out)
        if held:
            _print_circuit_roles(result, held[i], out)
    if args.json:
        document: dict[str, Any] = {"circuits": [r.to_dict() for r in results]}
        if held:
            document["roles"] = [r.to_dict() for r in held]
        write_json_atomic(Path(args.json), plain(document))
        out.write(f"\nwrote {len(results)} circuit(s) to {args.json}\n")
    return EXIT_OK


def _print_circuit_roles(result: Any, roles: Any, out: TextIO) -> None:
    """The roles each head of the circuit holds (``circuit --roles``), with its scores."""
    measured = [r for r in ROLES if r in roles.scores]
    rows = [[head, ", ".join(r for r in measured if head in roles.holders(r)) or "-"]
            + [f"{roles.score(r, head):.2f}" for r in measured] for head in result.heads]
    out.write("\nroles of the circuit's heads (a head holds a role when its score reaches "
              "the threshold: " + ", ".join(f"{r} {roles.thresholds[r]:g}" for r in measured)
              + "):\n")
    out.write(format_table(["head", "roles held"] + measured, rows or [["-", "-"]
                                                                       + ["-"] * len(measured)])
              + "\n")
    others = {r: [h for h in roles.holders(r) if h not in result.heads] for r in measured}
    outside = [f"{r} {', '.join(hs)}" for r, hs in others.items() if hs]
    if outside:
        out.write("  held outside the circuit: " + "; ".join(outside) + "\n")
    for role, why in roles.not_applicable.items():
        out.write(f"  {role} not measured: {why}\n")


def _print_circuit(result: Any, out: TextIO) -> None:
    out.write(f"\n== circuit of {result.model} on task '{result.task}' (pruned at "
              f"T={result.threshold:g}, {result.ablation} ablation) ==\n")
    out.write(f"size: {result.size} of {result.n_components} components ({result.n_heads} heads, "
              f"{result.n_mlps} MLPs)\n")
    out.write(f"faithfulness: {result.faithfulness:.3f} (the circuit alone keeps "
              f"{100 * result.faithfulness:.1f}% of the full logit difference "
              f"{result.full_logit_diff:.3f})\n")
    out.write(f"completeness: {result.completeness:.3f} (with the circuit ablated the rest keeps "
              f"{100 * result.complement:.1f}%)\n")
    out.write(f"cost: {result.cost_fe:.1f} forward-pass equivalents, {result.passes} pruning "
              "passes\n\n")
    rows = [[layer, " ".join(f"{name} ({result.node_drops.get(name, float('nan')):.1f})"
                             for name in names)]
            for layer, names in sorted(result.by_layer().items())]
    out.write(format_table(["layer", "nodes (drop in points when removed alone)"], rows) + "\n")
    if result.stability:
        out.write("\nthreshold sweep:\n")
        out.write(format_table(
            ["T", "nodes", "heads", "MLPs", "faithfulness", f"Jaccard vs T={result.threshold:g}"],
            [[f"{p.threshold:g}", len(p.nodes), sum(not n.startswith("MLP") for n in p.nodes),
              sum(n.startswith("MLP") for n in p.nodes), p.faithfulness, p.jaccard]
             for p in result.stability]) + "\n")
    if result.edges is not None:
        out.write("\nedges (score: patched logit difference over the circuit's, kept below "
                  "0.8):\n")
        out.write(format_table(["sender", "receiver", "score"],
                               [[e.sender, e.receiver, e.score] for e in result.edges]
                               or [["-", "-", "-"]]) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-circuits",
        description="Compare distilled students with their teacher by how they compute: "
                    "ablation sweeps, circuit matching, alignment and brittleness.",
        epilog="Models: a save_pretrained directory, a hub id (openai-community/gpt2), a .gguf "
               "file (needs pip install 'pytest-circuits[gguf]') or zoo:NAME (zoo:tiny-teacher, "
               "zoo:tiny-student, zoo:tiny-student-brittle). "
               "Exit codes: 0 ok; 1 regression (diff) or blocked candidate (calibrate "
               "--strict); 2 usage error (checked before any model loads); 3 analysis "
               "refused, results not comparable, a damaged results file, or an internal "
               "error.",
    )
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of an error (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    compare = sub.add_parser(
        "compare", help="full analysis of one teacher-student pair",
        description="Sweep both models, match components and print alignment, brittleness, "
                    "compression and discarded mechanisms for each task.")
    compare.add_argument("teacher", metavar="TEACHER", help=MODEL_HELP)
    compare.add_argument("student", metavar="STUDENT", help=MODEL_HELP)
    compare.add_argument("--html", metavar="PATH", help="write the self-contained HTML report")
    compare.add_argument("--json", metavar="PATH", help="write the reports as JSON (for diff)")
    compare.add_argument("--circuits", action="store_true",
                         help="also discover both models' circuits (iterative node pruning at "
                              "T=0.2, with the threshold sweep; about 1.4 sweeps each)")
    compare.add_argument("--roles", action="store_true",
                         help="also measure both models' head roles and which teacher roles "
                              "the student discards or merges")
    _analysis_options(compare)
    compare.set_defaults(handler=cmd_compare)

    calibrate = sub.add_parser(
        "calibrate", help="thresholds relative to the teacher, as a circuits.yaml block",
        description="Measure the teacher (and candidate students) and print suggested gate "
                    "thresholds relative to the teacher with their bootstrap intervals, and a "
                    "ready-to-paste circuits.yaml.")
    calibrate.add_argument("teacher", metavar="TEACHER", help=MODEL_HELP)
    calibrate.add_argument("students", metavar="STUDENT", nargs="*",
                           help=STUDENTS_HELP)
    _threshold_options(calibrate)
    calibrate.add_argument("--strict", action="store_true",
                           help="exit 1 when a candidate would be blocked")
    _analysis_options(calibrate)
    calibrate.set_defaults(handler=cmd_calibrate)

    rank = sub.add_parser(
        "rank", help="rank distilled candidates by how they compute like the teacher",
        description="Analyse several candidates against one teacher and rank them: fewest "
                    "findings under thresholds calibrated on the teacher first, then "
                    "alignment, weighted alignment and severity. The reasons are printed.")
    rank.add_argument("teacher", metavar="TEACHER", help=MODEL_HELP)
    rank.add_argument("candidates", metavar="CANDIDATE", nargs="+",
                      help=STUDENTS_HELP)
    _threshold_options(rank)
    _analysis_options(rank)
    rank.set_defaults(handler=cmd_rank)

    diff = sub.add_parser(
        "diff", help="what changed between two results files",
        description="Compare two results files (compare --json or pytest --circuits-json) "
                    "pair by pair and component by component; exit 1 on a regression beyond "
                    "the tolerances.")
    diff.add_argument("old", metavar="A.json")
    diff.add_argument("new", metavar="B.json")
    diff.add_argument("--max-alignment-drop", type=float, default=0.02, metavar="X",
                      help="A or weighted A may fall by this much (default 0.02)")
    diff.add_argument("--max-severity-increase", type=float, default=0.02, metavar="X",
                      help="severity may rise by this much (default 0.02)")
    diff.add_argument("--max-drop-increase", type=float, default=10.0, metavar="POINTS",
                      help="the worst drop or a component's drop may rise by this many points "
                           "(default 10)")
    diff.add_argument("--max-retained-drop", type=float, default=2.0, metavar="POINTS",
                      help="behaviour retained may fall by this many percent (default 2)")
    diff.add_argument("--influence-change", type=float, default=5.0, metavar="POINTS",
                      help="list a component whose influence moved by at least this much "
                           "(default 5)")
    diff.add_argument("--allow-new-discards", action="store_true",
                      help="a newly discarded teacher mechanism is not a regression")
    diff.add_argument("--layer-map", type=_layer_map_argument, default=None,
                      metavar="NEW:OLD,...",
                      help="the old student's layer each layer of the new student stands for, "
                           "e.g. 0:0,1:1,2:2,3:3,4:5 for a copy without layer 4 (default: when "
                           "the students' depths differ, each file's matching aligns its "
                           "student's layers with the teacher's; the same depth: by index)")
    diff.set_defaults(handler=cmd_diff)

    circuit = sub.add_parser(
        "circuit", help="discover one model's circuit on a task (iterative node pruning)",
        description="Prune every head and MLP that the task does not need (backward, then "
                    "forward passes, until a pass removes nothing) and print the circuit: its "
                    "size, faithfulness (the circuit alone), completeness, its nodes by layer "
                    "with each node's drop, and the threshold sweep.")
    circuit.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    circuit.add_argument("--threshold", type=float, default=0.2, metavar="T",
                         help="a node is pruned while the rest keeps more than 1 - T of the full "
                              "logit difference (default 0.2, the paper's)")
    circuit.add_argument("--stability", type=float, nargs="+", metavar="T",
                         default=[0.10, 0.15, 0.20, 0.25, 0.30],
                         help="thresholds of the stability sweep (default 0.1 0.15 0.2 0.25 0.3)")
    circuit.add_argument("--no-stability", action="store_true", help="skip the threshold sweep")
    circuit.add_argument("--edges", action="store_true",
                         help="path-patch the edges between the circuit's nodes")
    circuit.add_argument("--roles", action="store_true",
                         help="also show the head roles each head of the circuit holds")
    circuit.add_argument("--json", metavar="PATH", help="write the circuits as JSON")
    _analysis_options(circuit)
    circuit.set_defaults(handler=cmd_circuit)
    return parser


def _analysis_errors() -> tuple[type[BaseException], ...]:

    return (CircuitsError,)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the error
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    try:
        preflight(args, err)
        return handler(args, out)
    except UsageError as exc:
        err.write(f"pytest-circuits: error: {exc}\n")
        return EXIT_USAGE
    except AnalysisError as exc:
        err.write(f"pytest-circuits: error: {exc}\n")
        return EXIT_ANALYSIS
    except Exception as exc:

        if args.traceback:
            raise
        if isinstance(exc, TaskError):
            err.write(f"pytest-circuits: error: {exc}\n")
            return EXIT_USAGE
        if isinstance(exc, _analysis_errors()):
            err.write(f"pytest-circuits: error: {exc}\n")
            return EXIT_ANALYSIS
        # not exit 1, which says "regression": a crash must never read as a verdict
        err.write(f"pytest-circuits: internal error: {type(exc).__name__}: {exc}; rerun with "
                  "--traceback and report it\n")
        return EXIT_ANALYSIS


if __name__ == "__main__":  # pragma: no cover - ``python -m pytest_circuits`` is the way in
    sys.exit(main())
