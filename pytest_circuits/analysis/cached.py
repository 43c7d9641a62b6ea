"""The analyses the gates and the CLI read, memoised per session and on disk.

A compared pair is keyed by both models' weights, the task and every option that changes its
numbers (:data:`config.options.PAIR_KEY_FIELDS`); its two sweeps come from ``store`` and are
shared with every other report on the same models. A model's report is recomputed from its
stored sweep, which costs no forward pass.
"""

from __future__ import annotations

from typing import Any

from .. import cache
from ..config.options import PAIR_KEY_FIELDS, AnalysisOptions
from .ablation import require_valid_task
from .comparison import compare, model_report
from .store import (
    analysis_options,
    as_pair,
    as_task,
    auto_thresholds,
    default_method,
    n_components,
    sweep_result,
    task_performance,
)

__all__ = ["as_pair", "as_task", "compare", "default_method", "model_report", "n_components",
           "pair_report", "sweep_result", "task_performance"]


def pair_report(pair: Any, task: Any, options: AnalysisOptions | None = None,
                **overrides: Any) -> Any:
    """``compare`` through the session/disk cache (keyed by weights, task and options; keyword
    arguments are :class:`AnalysisOptions` fields, default exact).

    ``method`` None picks each model's default (``store.default_method``). An auto sweep decides
    exactly the options' ``thresholds`` plus the cut points compare itself reads: the
    tolerance, its "influential" level, the dead-component floor and the noise floor. When both
    sweeps turn out exact (an exact sweep stored serves an auto request) the report is the exact
    one.
    """
    options = analysis_options("pair_report", options, overrides)
    pair = as_pair(pair)
    task = as_task(task, options.n_prompts, options.seed, pair.teacher)
    # the preset is expanded first, so a preset and the options it stands for share an entry
    options = options.resolved()
    methods = [options.method or default_method(m) for m in (pair.teacher, pair.student)]
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
        "names": [pair.teacher.name, pair.student.name],
        "teacher": pair.teacher.weights_fingerprint,
        "student": pair.student.weights_fingerprint,
        "task": task.fingerprint(),
        **options.key(PAIR_KEY_FIELDS),
        "method": compared,
        "dtype": pair.student.dtype,
        "device": pair.student.device_kind,
    }
    if compared == "auto":
        parts.update(sweep_methods=methods, thresholds=thresholds.to_dict())
    else:
        sweeps = None  # compare finds the exact sweeps in the cache (or sweeps them)
    measured = options.replace(method=compared)
    return cache.cached("pair", parts, lambda: compare(pair, task, measured, sweeps=sweeps))
