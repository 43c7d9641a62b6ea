"""The ``pytest-circuits`` command: compare, calibrate, rank and diff distilled students.

It runs the same cached analysis entry points as the pytest gates (and, by default, shares
their on-disk cache in ``.pytest_cache/d/circuits``), so a number printed here is the number a
gate sees.

Exit codes: 0 success; 1 a regression (``diff``) or a candidate that fails the calibrated
thresholds when ``--strict`` is given; 2 a usage error (bad arguments, an unreadable or
unrecognised results file, an unknown task); 3 the analysis could not run or results cannot
be compared (a model that does not load, a task a model does not perform, an incompatible
pair, results measured with different methods).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import progress
from .errors import CircuitsError

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


# ----------------------------------------------------------------------------- output helpers


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    from .tables import format_table

    return format_table(headers, rows)


def _n(value: float | None, digits: int = 4) -> str:
    from .tables import format_number

    if value is None:
        return "-"
    return format_number(float(value)) if digits == 4 else f"{value:.{digits}f}"


def _name(model: Any) -> str:
    from .htmlreport.page import model_name

    return model_name(model)


class Progress:
    """A progress bar on stderr: one step per analysis, with the elapsed time of the current one.

    On a terminal the bar redraws in place (and ticks while a long sweep runs); elsewhere (CI
    logs, pipes) each step is one plain line, so logs stay readable.
    """

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(1, total)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.detail = ""  # the running sweep: "zoo:tiny-student 40/156 ablations"

    def components(self, model_name: str, done: int, total: int) -> None:
        """The sweep's callback (``pytest_circuits.progress``): the ticker draws it."""
        self.detail = f", {model_name} {done}/{total} ablations" if done < total else ""

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
    """What every subcommand shares: the analysis settings and how models are loaded."""

    tasks: list[str]
    n_prompts: int | None
    seed: int
    ablation: str
    similarity: str
    matching: str
    preset: str | None
    margin: float
    device: str
    dtype: str | None
    method: str | None = None  # None: auto from settings.AUTO_MIN_COMPONENTS components on
    progress: Progress = field(default_factory=lambda: Progress(1, enabled=False))
    _models: dict[str, Any] = field(default_factory=dict)

    def model(self, source: str) -> Any:
        if source not in self._models:
            from .models import load_model

            with self.progress.step(f"loading {source}"):
                self._models[source] = load_model(source, device=self.device, dtype=self.dtype)
        return self._models[source]

    def pair(self, teacher: str, student: str) -> Any:
        from .models import load_pair

        return load_pair(self.model(teacher), self.model(student))

    def pair_report(self, teacher: str, student: str, task: str) -> Any:
        from .analysis.cached import pair_report

        pair = self.pair(teacher, student)
        with self.progress.step(f"{task}: {teacher} -> {student}"):
            return pair_report(
                pair, task, ablation=self.ablation, similarity=self.similarity,
                matching=self.matching, preset=self.preset, n_prompts=self.n_prompts,
                seed=self.seed, margin=self.margin, method=self.method,
            )

    def model_report(self, source: str, task: str) -> Any:
        from .analysis.cached import model_report

        model = self.model(source)
        with self.progress.step(f"{task}: {source}"):
            return model_report(model, task, ablation=self.ablation, n_prompts=self.n_prompts,
                                seed=self.seed, margin=self.margin, method=self.method)


def _run_from(args: argparse.Namespace, steps: int) -> Run:
    from . import cache

    if args.no_cache:
        cache.configure(None, enabled=False)
    else:
        cache.configure(args.cache_dir, enabled=True)
    tasks = args.task or ["numerals"]
    if args.preset is not None and (args.matching, args.similarity) != ("paper", "paper"):
        raise UsageError(
            f"--preset {args.preset} sets the matching and the similarity itself; drop "
            f"--matching {args.matching} / --similarity {args.similarity}, or the preset"
        )
    return Run(
        tasks=tasks, n_prompts=args.n_prompts, seed=args.seed, ablation=args.ablation,
        similarity=args.similarity, matching=args.matching, preset=args.preset,
        margin=args.margin,
        device=args.device, dtype=args.dtype, method=args.method,
        progress=Progress(steps, enabled=not args.quiet),
    )


# ----------------------------------------------------------------------------- calibration


def _round_up(value: float, step: float) -> float:
    """Round up to a multiple of ``step`` so a threshold never sits below what it came from."""
    return round(math.ceil(value / step - 1e-9) * step, 10)


def _round_down(value: float, step: float) -> float:
    return round(math.floor(value / step + 1e-9) * step, 10)


def severity_terms(report: Any) -> Any:
    """Each component's term of the severity score, ``max(0, (min(L, m_i) - T) / (L - T))**a``;
    severity is their mean, so a bootstrap of the mean is a bootstrap of severity."""
    import numpy as np

    b = report.brittleness
    drops = np.asarray(report.sweep.clamped_drops, dtype=float)
    return np.maximum(0.0, (np.minimum(b.limit, drops) - b.tolerance)
                      / (b.limit - b.tolerance)) ** b.alpha


def severity_interval(report: Any) -> tuple[float, float]:
    """95% bootstrap interval of a model's severity over its components (seed 42)."""
    from . import metrics

    return metrics.bootstrap_ci(severity_terms(report))


def alignment_interval(report: Any) -> tuple[float, float]:
    """95% bootstrap interval of the alignment score A over its matched pairs (A is the mean of
    the pairs' terms)."""
    from . import metrics

    return metrics.bootstrap_ci([p.contribution for p in report.alignment.pairs])


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

    def head_rule(self) -> str:
        name, drop = self.worst_head
        if self.max_head_drop is None:
            return (f"none: the teacher's worst head {name} costs {drop:.1f} points, and "
                    f"{self.drop_margin:g} more reaches 100, so a single-head limit would "
                    "block nothing")
        return f"teacher's worst head {name} ({drop:.1f}) + {self.drop_margin:g} points"


def calibrate_teacher(report: Any, drop_margin: float = 10.0) -> Calibration:
    """Thresholds relative to the teacher on one task.

    ``max_severity_increase``: the upper end of the teacher's own 95% bootstrap interval of
    severity minus its severity (a student may be more brittle than its teacher by no more than
    the teacher's measurement spans). Single heads: no worse than the teacher's worst head plus
    ``drop_margin`` points. MLPs get no single-drop limit: in GPT-2-style models MLP0 usually
    flips the answer in the teacher itself.
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
        drop_margin=drop_margin,
    )


@dataclass
class Finding:
    """Something about a candidate on one task: ``blocking`` when a calibrated gate (or the
    behaviour floor) would fail it; otherwise a note (a discarded mechanism has no
    threshold in the calibrated block, but a reviewer should see it)."""

    task: str
    text: str
    blocking: bool = True


def findings(report: Any, calibration: Calibration, min_retained: float) -> list[Finding]:
    """What the calibrated gates (and the behaviour floor) would block in this pair report."""
    found = []
    if report.behavior_retained < min_retained:
        found.append(Finding(report.task, f"behaviour retained {report.behavior_retained:.1f}% "
                                          f"< {min_retained:g}%"))
    increase = report.student.brittleness.severity - report.teacher.brittleness.severity
    if increase > calibration.max_severity_increase:
        found.append(Finding(report.task, f"severity rises by {increase:.3f} over the teacher "
                                          f"> {calibration.max_severity_increase:g}"))
    name, drop = _worst(report.student, "head")
    if calibration.max_head_drop is not None and drop > calibration.max_head_drop:
        found.append(Finding(report.task, f"ablating head {name} costs {drop:.1f} points > "
                                          f"{calibration.max_head_drop:g} "
                                          f"({calibration.head_rule()})"))
    for d in report.discarded:
        found.append(Finding(report.task, f"teacher mechanism {d.teacher} discarded: {d.reason}",
                             blocking=False))
    return found


def _yaml_text(value: Any) -> str:
    return json.dumps(value)  # JSON strings and numbers are valid YAML scalars


def calibration_yaml(
    teacher: str, students: Sequence[str], calibrations: Sequence[Calibration],
    min_retained: float, min_score: dict[str, float], n_prompts: int | None, seed: int,
    ablation: str,
) -> str:
    """A ready-to-paste ``circuits.yaml`` with the calibrated gates for every task and pair."""
    from .tasks import DEFAULT_N_PROMPTS

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
    lines += ["defaults:", f"  n_prompts: {n_prompts or DEFAULT_N_PROMPTS}", f"  seed: {seed}",
              f"  ablation: {ablation}", "gates:"]
    for pair_name in pair_names:
        suffix = "" if len(pair_names) == 1 else f"-{pair_name}"
        for c in calibrations:
            def gate(name: str, body: str, comment: str, pair_name: str = pair_name,
                     c: Calibration = c, suffix: str = suffix) -> None:
                lines.extend([f"  - name: {c.task}-{name}{suffix}", f"    pair: {pair_name}",
                              f"    task: {c.task}", f"    {body}  # {comment}"])

            gate("behaviour", f"behavior_preserved: {{min_retained: {min_retained:g}}}",
                 "percent of the teacher's clean logit difference")
            low, high = c.severity_ci
            gate("severity", f"ablation_robust: {{max_severity_increase: "
                             f"{c.max_severity_increase:g}}}",
                 f"teacher severity {c.severity:.3f}, 95% CI {low:.3f}..{high:.3f}")
            if c.max_head_drop is not None:
                gate("no-critical-head", f"ablation_robust: {{components: heads, "
                                         f"max_single_drop: {c.max_head_drop:g}}}",
                     c.head_rule())
            if c.task in min_score:
                gate("aligned", f"circuit_aligned: {{min_score: {min_score[c.task]:g}}}",
                     "lower 95% bound of A of the candidates that pass the gates above")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- reading results


def _load_document(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read results file {path!r}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}); give a file "
                         "written by `pytest-circuits compare --json` or "
                         "`pytest --circuits-json`") from None


def load_reports(path: str) -> list[Any]:
    """The typed reports in a results file: ``compare --json`` output, a ``--circuits-json``
    document (the reports its gates stored), one report, or a list of reports."""
    from .results import report_from_dict

    data = _load_document(path)
    if isinstance(data, dict) and data.get("format") == REPORTS_FORMAT:
        items = data.get("reports", [])
    elif isinstance(data, dict) and "results" in data:
        items = [r.get("report") for r in data["results"] if isinstance(r, dict)]
        items = [r for r in items if r]
    elif isinstance(data, dict) and "kind" in data:
        items = [data]
    elif isinstance(data, list):
        items = data
    else:
        raise UsageError(f"{path}: not a pytest-circuits results file (expected format "
                         f"{REPORTS_FORMAT!r}, a --circuits-json document or a report)")
    try:
        reports = [report_from_dict(item) for item in items]
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{path}: a report could not be read back ({exc}); was it written "
                         "by another version of pytest-circuits?") from None
    if not reports:
        raise UsageError(f"{path}: holds no analysis report (gates like behavior_preserved "
                         "store none); write one with `pytest-circuits compare --json`")
    return reports


def _key(report: Any) -> tuple[str, ...]:
    if hasattr(report, "alignment"):
        return (_name(report.teacher.model), _name(report.student.model), report.task)
    return (_name(report.model), report.task)


def _label(key: tuple[str, ...]) -> str:
    return (f"{key[0]} -> {key[1]} on {key[2]}" if len(key) == 3 else f"{key[0]} on {key[1]}")


# ----------------------------------------------------------------------------- subcommands


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


def _write_outputs(args: argparse.Namespace, reports: list[Any], out: TextIO) -> None:
    if args.json:
        from .output import plain, write_json_atomic

        document = {"format": REPORTS_FORMAT, "version": REPORTS_VERSION,
                    "reports": plain([r.to_dict() for r in reports])}
        write_json_atomic(Path(args.json), document)
        out.write(f"\nwrote {len(reports)} report(s) to {args.json}\n")
    if args.html:
        from .htmlreport import write_html

        write_html(args.html, reports, title="pytest-circuits: " + ", ".join(
            sorted({f"{_key(r)[0]} -> {_key(r)[1]}" for r in reports})))
        out.write(f"wrote the HTML report to {args.html}\n")


def cmd_compare(args: argparse.Namespace, out: TextIO) -> int:
    tasks = args.task or ["numerals"]
    run = _run_from(args, steps=2 + len(tasks))
    reports = [run.pair_report(args.teacher, args.student, task) for task in tasks]
    for report in reports:
        _print_pair(report, out)
    _write_outputs(args, reports, out)
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace, out: TextIO) -> int:
    tasks = args.task or ["numerals"]
    run = _run_from(args, steps=(1 + len(args.students)) * (1 + len(tasks)))
    calibrations = [calibrate_teacher(run.model_report(args.teacher, task), args.drop_margin)
                    for task in tasks]
    pairs = {(student, task): run.pair_report(args.teacher, student, task)
             for student in args.students for task in tasks}
    blocked = False
    min_score: dict[str, float] = {}
    for c in calibrations:
        out.write(f"\nteacher {c.teacher} on task '{c.task}'\n")
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
        passing_lows = []
        notes: list[tuple[str, Finding]] = []
        for student in args.students:
            report = pairs[(student, c.task)]
            low, high = alignment_interval(report)
            found = findings(report, c, args.min_retained)
            blocking = [f for f in found if f.blocking]
            blocked |= bool(blocking)
            if not blocking:
                passing_lows.append(low)
            notes.extend((student, f) for f in found)
            name, drop = _worst(report.student, "head")
            increase = report.student.brittleness.severity - report.teacher.brittleness.severity
            rows.append([student, f"{report.behavior_retained:.1f}%",
                         f"{report.student.brittleness.severity:.3f} ({increase:+.3f})",
                         f"{drop:.1f} ({name})",
                         f"{report.alignment.score:.3f} [{low:.3f}..{high:.3f}]",
                         f"BLOCKED ({len(blocking)})" if blocking else "passes"])
        out.write("  candidates under these thresholds:\n")
        out.write(_table(["student", "behaviour", "severity (increase)", "worst head",
                          "A [95% CI]", "verdict"], rows) + "\n")
        for student, f in notes:
            out.write(f"    {student}: {'BLOCKS' if f.blocking else 'note'}: {f.text}\n")
        if passing_lows:
            min_score[c.task] = max(0.0, _round_down(min(passing_lows), 0.05))
    out.write("\n# ---- paste into circuits.yaml ----\n")
    out.write(calibration_yaml(
        args.teacher, args.students, calibrations, args.min_retained, min_score,
        args.n_prompts, args.seed, args.ablation))
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

    def sort_key(self) -> tuple[float, ...]:
        # fewest blocking findings first, then computing most like the teacher, then robustness
        return (len(self.blocking), -self.alignment, -self.weighted, self.discarded,
                self.severity)


def rank_candidates(candidates: list[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=Candidate.sort_key)


def _why(better: Candidate, worse: Candidate) -> str:
    if len(better.blocking) != len(worse.blocking):
        return (f"{len(better.blocking)} blocking finding(s) against "
                f"{len(worse.blocking)}")
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
    calibrations = {task: calibrate_teacher(run.model_report(args.teacher, task),
                                            args.drop_margin) for task in tasks}
    candidates = []
    for source in args.candidates:
        reports = [run.pair_report(args.teacher, source, task) for task in tasks]
        found = [f for r in reports for f in findings(r, calibrations[r.task],
                                                      args.min_retained)]
        candidates.append(Candidate(source, reports, found))
    ranked = rank_candidates(candidates)
    rows = []
    for place, c in enumerate(ranked, 1):
        worst = max(c.reports, key=lambda r: r.student.brittleness.worst_drop)
        wb = worst.student.brittleness
        discarded = sorted({f"{d.teacher} ({r.task})" for r in c.reports for d in r.discarded})
        rows.append([str(place), c.source, f"{c.retained:.1f}%", f"{c.alignment:.3f}",
                     f"{c.weighted:.3f}", f"{c.severity:.3f}",
                     f"{wb.worst_component} {wb.worst_drop:.0f} ({worst.task})",
                     ", ".join(discarded) or "none"])
    out.write(f"\ncandidates for teacher {args.teacher} on {', '.join(tasks)} "
              "(behaviour: lowest over tasks; alignment: mean; severity: highest)\n")
    out.write(_table(["rank", "candidate", "behaviour kept", "alignment", "weighted",
                      "severity", "worst component", "discarded mechanisms"], rows) + "\n")
    out.write("\nwhy this order (fewest findings that thresholds calibrated on the teacher "
              "would block, then alignment, weighted alignment, discarded mechanisms, "
              "severity):\n")
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


def _cell(value: float | str | None) -> str:
    if isinstance(value, float):
        return _n(value)
    return "-" if value is None else str(value)


def diff_reports(old: Any, new: Any, args: argparse.Namespace) -> tuple[list[Change],
                                                                        list[Change]]:
    """(summary changes, component changes) from ``old`` to ``new``; regressions flagged."""
    summary: list[Change] = []
    old_student = old.student if hasattr(old, "alignment") else old
    new_student = new.student if hasattr(new, "alignment") else new
    ob, nb = old_student.brittleness, new_student.brittleness
    if hasattr(old, "alignment"):
        summary += [
            Change("alignment A", old.alignment.score, new.alignment.score,
                   old.alignment.score - new.alignment.score > args.max_alignment_drop),
            Change("weighted alignment", old.alignment.weighted_score,
                   new.alignment.weighted_score,
                   old.alignment.weighted_score - new.alignment.weighted_score
                   > args.max_alignment_drop),
            Change("behaviour retained (%)", old.behavior_retained, new.behavior_retained,
                   old.behavior_retained - new.behavior_retained > args.max_retained_drop),
        ]
        gone = sorted({d.teacher for d in new.discarded} - {d.teacher for d in old.discarded})
        summary.append(Change("discarded mechanisms", len(old.discarded), len(new.discarded),
                              bool(gone) and not args.allow_new_discards,
                              "newly discarded: " + ", ".join(gone) if gone else ""))
    summary += [
        Change("severity", ob.severity, nb.severity,
               nb.severity - ob.severity > args.max_severity_increase),
        Change("worst single drop", ob.worst_drop, nb.worst_drop,
               nb.worst_drop - ob.worst_drop > args.max_drop_increase,
               f"{ob.worst_component} -> {nb.worst_component}"),
        Change("mean drop", ob.mean_drop, nb.mean_drop),
    ]
    components: list[Change] = []
    before = {e.name: e for e in old_student.sweep.effects}
    after = {e.name: e for e in new_student.sweep.effects}
    old_match = ({p.teacher: p for p in old.alignment.pairs}
                 if hasattr(old, "alignment") else {})
    new_match = ({p.teacher: p for p in new.alignment.pairs}
                 if hasattr(new, "alignment") else {})
    for name in list(before) + [n for n in after if n not in before]:
        b, a = before.get(name), after.get(name)
        if b is None or a is None:
            components.append(Change(f"student {name}", "absent" if b is None else b.drop,
                                     "absent" if a is None else a.drop, False,
                                     "new component" if b is None else "removed component"))
            continue
        change = a.influence - b.influence
        if abs(change) >= args.influence_change:
            grew = a.drop - b.drop
            components.append(Change(
                f"student {name} drop", b.drop, a.drop, grew > args.max_drop_increase,
                f"{'gained' if change > 0 else 'lost'} {abs(change):.1f} points of influence"))
    for teacher in list(old_match) + [t for t in new_match if t not in old_match]:
        b, a = old_match.get(teacher), new_match.get(teacher)
        if b is None or a is None or b.student != a.student:
            components.append(Change(
                f"teacher {teacher} match", b.student if b else None, a.student if a else None,
                False, f"similarity {_cell(b.similarity if b else None)} -> "
                       f"{_cell(a.similarity if a else None)}"))
    return summary, components


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


def cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    old = {_key(r): r for r in load_reports(args.old)}
    new = {_key(r): r for r in load_reports(args.new)}
    matched = pair_up(old, new)
    if not matched:
        raise UsageError(
            f"{args.old} and {args.new} share no pair (or teacher) and task: {args.old} has "
            f"{', '.join(_label(k) for k in old)}; {args.new} has "
            f"{', '.join(_label(k) for k in new)}")
    regressions = 0
    for old_key, new_key in matched:
        label = _label(old_key) if old_key == new_key else (
            f"{_label(old_key)} -> student {new_key[1]}")
        from .baseline import method_differences

        differences = method_differences(new[new_key].fingerprint.to_dict(),
                                         old[old_key].fingerprint.to_dict())
        if differences:
            raise AnalysisError(
                f"{label} was measured differently in the two files ("
                + "; ".join(differences) + "): their numbers cannot be compared; measure both "
                "with the same settings")
        summary, components = diff_reports(old[old_key], new[new_key], args)
        out.write(f"\n{label}: {args.old} -> {args.new}\n")
        out.write(_table(["metric", "before", "after", "change", "verdict", "note"], [
            [c.what, _cell(c.before), _cell(c.after),
             _n(c.after - c.before) if isinstance(c.before, (int, float))
             and isinstance(c.after, (int, float)) else "-",
             "REGRESSED" if c.regressed else "ok", c.note] for c in summary]) + "\n")
        if components:
            out.write("  component changes:\n")
            out.write(_table(["component", "before", "after", "verdict", "note"], [
                [c.what, _cell(c.before), _cell(c.after),
                 "REGRESSED" if c.regressed else "changed", c.note] for c in components]) + "\n")
        else:
            out.write("  no component gained or lost influence beyond "
                      f"{args.influence_change:g} points or changed its match\n")
        regressions += sum(c.regressed for c in summary + components)
    used_old = {k for k, _ in matched}
    used_new = {k for _, k in matched}
    for key in old:
        if key not in used_old:
            out.write(f"\nonly in {args.old}: {_label(key)}\n")
    for key in new:
        if key not in used_new:
            out.write(f"\nonly in {args.new}: {_label(key)}\n")
    out.write(f"\n{regressions} regression(s) beyond tolerance\n")
    return EXIT_REGRESSION if regressions else EXIT_OK


# ----------------------------------------------------------------------------- the parser


def _analysis_options(parser: argparse.ArgumentParser) -> None:
    from .tasks import BUILTIN_TASKS

    group = parser.add_argument_group("analysis settings (as in the pytest options)")
    group.add_argument("--task", action="append", metavar="TASK",
                       help=f"a built-in task ({', '.join(BUILTIN_TASKS)}) or a task file; "
                            "repeat for several (default: numerals)")
    group.add_argument("--n-prompts", type=int, default=None, metavar="N",
                       help="prompts per built-in task (default: the plugin's, 32)")
    group.add_argument("--seed", type=int, default=0, help="task and ablation seed (default 0)")
    group.add_argument("--ablation", choices=("mean", "zero", "resample"), default="mean")
    group.add_argument("--similarity", choices=("paper", "subspace", "cka"), default="paper",
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
                            "gates, auto for a model of 1,000 components or more, exact below)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    group.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    group.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), metavar="DIR",
                       help="analysis cache shared with pytest (default: %(default)s)")
    group.add_argument("--no-cache", action="store_true", help="recompute everything")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _threshold_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-retained", type=float, default=90.0, metavar="PERCENT",
                        help="behaviour floor: student clean metric in percent of the "
                             "teacher's (default 90)")
    parser.add_argument("--drop-margin", type=float, default=10.0, metavar="POINTS",
                        help="a single head may cost this many points more than the teacher's "
                             "worst head (default 10)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-circuits",
        description="Compare distilled students with their teacher by how they compute: "
                    "ablation sweeps, circuit matching, alignment and brittleness.",
        epilog="Models: a hub id (openai-community/gpt2), a save_pretrained directory, or "
               "zoo:NAME (zoo:tiny-teacher, zoo:tiny-student, zoo:tiny-student-brittle). "
               "Exit codes: 0 ok; 1 regression (diff) or blocked candidate (calibrate "
               "--strict); 2 usage error; 3 analysis refused or results not comparable.",
    )
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of an error (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    compare = sub.add_parser(
        "compare", help="full analysis of one teacher-student pair",
        description="Sweep both models, match components and print alignment, brittleness, "
                    "compression and discarded mechanisms for each task.")
    compare.add_argument("teacher", metavar="TEACHER")
    compare.add_argument("student", metavar="STUDENT")
    compare.add_argument("--html", metavar="PATH", help="write the self-contained HTML report")
    compare.add_argument("--json", metavar="PATH", help="write the reports as JSON (for diff)")
    _analysis_options(compare)
    compare.set_defaults(handler=cmd_compare)

    calibrate = sub.add_parser(
        "calibrate", help="thresholds relative to the teacher, as a circuits.yaml block",
        description="Measure the teacher (and candidate students) and print suggested gate "
                    "thresholds relative to the teacher with their bootstrap intervals, and a "
                    "ready-to-paste circuits.yaml.")
    calibrate.add_argument("teacher", metavar="TEACHER")
    calibrate.add_argument("students", metavar="STUDENT", nargs="*")
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
    rank.add_argument("teacher", metavar="TEACHER")
    rank.add_argument("candidates", metavar="CANDIDATE", nargs="+")
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
    diff.set_defaults(handler=cmd_diff)
    return parser


def _analysis_errors() -> tuple[type[BaseException], ...]:
    from .errors import CircuitsError

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
    if getattr(args, "n_prompts", None) is not None and args.n_prompts < 1:
        err.write(f"pytest-circuits: error: --n-prompts must be at least 1, got "
                  f"{args.n_prompts}\n")
        return EXIT_USAGE
    try:
        return handler(args, out)
    except UsageError as exc:
        err.write(f"pytest-circuits: error: {exc}\n")
        return EXIT_USAGE
    except AnalysisError as exc:
        err.write(f"pytest-circuits: error: {exc}\n")
        return EXIT_ANALYSIS
    except Exception as exc:
        from .tasks.task import TaskError

        if args.traceback:
            raise
        if isinstance(exc, TaskError):
            err.write(f"pytest-circuits: error: {exc}\n")
            return EXIT_USAGE
        if isinstance(exc, _analysis_errors()):
            err.write(f"pytest-circuits: error: {exc}\n")
            return EXIT_ANALYSIS
        raise


if __name__ == "__main__":  # pragma: no cover - ``python -m pytest_circuits`` is the way in
    sys.exit(main())
