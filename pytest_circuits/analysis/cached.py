"""The analyses the gates and the CLI read, memoised per session and on disk.

A compared pair is keyed by both models' content (weights fingerprint and tokenizer digest,
never their names or paths), the task and every option that changes its numbers
(:data:`config.options.PAIR_KEY_FIELDS`); its two sweeps come from ``store`` and are shared with
every other report on the same models. A report served for models loaded under other names is
relabelled with the asking pair's own (:func:`relabelled_pair`). A model's report is recomputed
from its stored sweep, which costs no forward pass.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

from .. import cache
from ..config.options import PAIR_KEY_FIELDS, AnalysisOptions
from .ablation import require_valid_task
from .bounds import compare_needs
from .comparison import compare, model_report
from .store import (
    analysis_options,
    as_pair,
    as_task,
    auto_thresholds,
    default_method,
    n_components,
    relabelled,
    settle_sweep,
    sweep_result,
    task_performance,
)

__all__ = ["as_pair", "as_task", "compare", "default_method", "model_report", "n_components",
           "pair_report", "settle_pair", "sweep_result", "task_performance"]


def pair_report(pair: Any, task: Any, options: AnalysisOptions | None = None,
                **overrides: Any) -> Any:
    """``compare`` through the session/disk cache (keyed by weights, task and options; keyword
    arguments are :class:`AnalysisOptions` fields, default exact).

    ``method`` None picks each model's default for a comparison (``store.default_method`` with
    ``compare=True``). An auto sweep decides exactly the options' ``thresholds`` plus the
    tolerance and the "influential" level; then every estimate one of compare's decisions at
    the dead floor, the noise floor, a tie or fan-in reads while its band allows either answer
    is measured exactly (``bounds.compare_needs``), round by round, until none is open. When both
    sweeps turn out exact (an exact sweep stored serves an auto request) the report is the exact
    one.
    """
    options = analysis_options("pair_report", options, overrides)
    pair = as_pair(pair)
    task = as_task(task, options.n_prompts, options.seed, pair.teacher)
    # the preset is expanded first, so a preset and the options it stands for share an entry
    options = options.resolved()
    methods = [options.method or default_method(m, compare=True)
               for m in (pair.teacher, pair.student)]
    sweeps = None
    thresholds = None
    if "auto" in methods:
        thresholds = auto_thresholds(options, options.drop_cut_points)
        # both models must do the task before either is swept (compare's own check, first)
        require_valid_task(
            [task_performance(pair.teacher, task), task_performance(pair.student, task)],
            margin=options.margin,
        )
        sweeps = tuple(
            sweep_result(model, task, options.replace(method=chosen, thresholds=thresholds))
            for model, chosen in zip((pair.teacher, pair.student), methods, strict=True)
        )
        if all(r.fingerprint.method == "exact" for r in sweeps):
            methods = ["exact", "exact"]  # exact sweeps were stored: the exact report is this
    compared = "auto" if "auto" in methods else methods[0]
    parts = {
        "teacher": pair.teacher.weights_fingerprint,
        "student": pair.student.weights_fingerprint,
        "tokenizers": [pair.teacher.tokenizer_digest, pair.student.tokenizer_digest],
        "task": task.fingerprint(),
        **options.key(PAIR_KEY_FIELDS),
        "method": compared,
        "dtype": pair.student.dtype,
        "device": pair.student.device_kind,
    }
    measured = options.replace(method=compared)
    if compared != "auto":
        # compare finds the exact sweeps in the cache (or sweeps them)
        report = cache.cached("pair", parts, lambda: compare(pair, task, measured))
        return relabelled_pair(report, pair)
    parts.update(sweep_methods=methods, thresholds=thresholds.to_dict())
    sweep_options = [options.replace(method=chosen, thresholds=thresholds) for chosen in methods]
    for round_ in range(PAIR_SETTLE_ROUNDS + 1):
        # keyed by which values the sweeps hold exactly: a report is never served over sweeps
        # settled further since (a gate measured more of them), and a warm run, whose stored
        # sweeps are the settled ones, finds the settled report at once
        keyed = {**parts, "exact": [exact_digest(r) for r in sweeps]}
        report = cache.cached("pair", keyed, functools.partial(
            compare, pair, task, measured, sweeps=sweeps))
        needs = compare_needs(report)
        if not needs:
            return relabelled_pair(report, pair)
        if round_ == PAIR_SETTLE_ROUNDS - 1:
            # settling keeps moving the decisions (a tie now goes elsewhere, onto another
            # estimate): measure every estimate, and the report is the exact one
            needs = {side: set(r.estimated_names)
                     for side, r in zip(("teacher", "student"), sweeps, strict=True)}
        # an estimate decides a tie, a floor or a discarded component: measure it exactly
        sweeps = tuple(
            settle_sweep(model, task, chosen, needs.get(side, ()), base=r)
            if needs.get(side) else r
            for model, chosen, side, r in zip((pair.teacher, pair.student), sweep_options,
                                             ("teacher", "student"), sweeps, strict=True)
        )
    raise AssertionError("unreachable: the last round settles every estimate")


#: Rounds of settling a pair report's open decisions before every estimate is measured.
PAIR_SETTLE_ROUNDS = 8


def settle_pair(pair: Any, task: Any, options: AnalysisOptions, names: Any) -> bool:
    """Measure exactly the estimates ``names`` ({"teacher": [...], "student": [...]}) in the
    sweeps :func:`pair_report` reads for ``options``, in their place in the cache, so the next
    ``pair_report`` reads them exact. What a gate does when the bands of a few estimates are
    all that keep its verdict open. False when none of them was an estimate."""
    if not cache.store().enabled:
        return False  # nothing settled could be kept for the next report to read
    options = analysis_options("settle_pair", options, {})
    pair = as_pair(pair)
    task = as_task(task, options.n_prompts, options.seed, pair.teacher)
    options = options.resolved()
    thresholds = auto_thresholds(options, options.drop_cut_points)
    progressed = False
    for model, side in ((pair.teacher, "teacher"), (pair.student, "student")):
        wanted = set(names.get(side, ()))
        if not wanted:
            continue
        chosen = options.replace(method=options.method or default_method(model, compare=True),
                                 thresholds=thresholds)
        before = sweep_result(model, task, chosen)
        if any(e.name in wanted and not e.is_exact for e in before.effects):
            settle_sweep(model, task, chosen, wanted)
            progressed = True
    return progressed


def exact_digest(sweep: Any) -> str:
    """A short digest of which components ``sweep`` holds exactly and of every value and band
    it holds: a report is keyed by the sweeps it was computed from."""
    text = ";".join(f"{e.name},{e.method},{e.drop!r},{e.bound!r}" for e in sweep.effects)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def relabelled_pair(report: Any, pair: Any) -> Any:
    """``report`` (a PairReport from the cache) named as ``pair``'s models are: the teacher's
    and student's ModelReports (and their sweeps) carry the asking models' names and sources.
    Nothing else in a pair report names a model, and nothing is copied when the names agree."""
    teacher = relabelled(report.teacher, pair.teacher)
    student = relabelled(report.student, pair.student)
    if teacher is report.teacher and student is report.student:
        return report
    return dataclasses.replace(report, teacher=teacher, student=student)
