"""The analysis entry points the gates use, memoised per session and on disk.

A result is keyed by the models' weight fingerprints, the task's fingerprint and every method
setting, so every gate, pair and direct call in a session shares one computation. The expensive
part, a model's ablation sweep, has its own entry ("sweep"), keyed by that model alone: the
teacher is swept once however many students are compared with it, and ``compare``,
``model_report`` and every gate obtain sweeps through :func:`sweep_result`.

The sweep algorithm is ``method``: "exact", "auto" (screened, then exact wherever a verdict
against ``thresholds`` could depend on the value) or None, which picks "auto" for a model of at
least ``settings.AUTO_MIN_COMPONENTS`` components and "exact" below. An auto sweep's key holds
its thresholds, so one made for other thresholds is never served to a gate whose verdict it
could not decide; an exact sweep already stored serves an auto request (it decides every
verdict), so a model is never swept twice for one task and settings.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .. import cache
from ..tasks import DEFAULT_N_PROMPTS
from .matching import DEFAULT_DIRECTION, DEFAULT_MIN_STUDENT_INFLUENCE


def as_pair(pair: Any) -> Any:
    from ..models import ModelPair, load_pair

    if isinstance(pair, ModelPair):
        return pair
    if isinstance(pair, (tuple, list)) and len(pair) == 2:
        return load_pair(pair[0], pair[1])
    raise TypeError(
        f"expected a ModelPair (the circuit_pair fixture or load_pair(teacher, student)), got "
        f"{type(pair).__name__}"
    )


def as_task(task: Any, n_prompts: int | None, seed: int | None, model: Any = None) -> Any:
    """Resolve what a user wrote into a Task, once, at the edge.

    A built-in name is built to fit ``model``'s tokenizer and kind (causal or masked) when a
    model is given (for a pair: the teacher; both share a vocabulary). ``n_prompts=None``
    means the default; 0 or a negative count is refused by ``resolve_task``, never replaced.
    """
    from ..tasks import resolve_task

    return resolve_task(
        task,
        n_prompts=DEFAULT_N_PROMPTS if n_prompts is None else n_prompts,
        seed=0 if seed is None else seed,
        tokenizer=getattr(model, "tokenizer", None),
        kind=getattr(model, "kind", None),
    )


def _model_parts(model: Any, task: Any) -> dict[str, Any]:
    """What identifies a model's run of a task: its weights, how it computes, the task."""
    return {
        "name": model.name,
        "model": model.weights_fingerprint,
        "task": task.fingerprint(),
        "dtype": model.dtype,
        "device": model.device_kind,
    }


def n_components(model: Any) -> int:
    """How many components (heads plus MLPs) a full sweep of ``model`` ablates."""
    return int(model.n_layers) * (int(model.n_heads) + 1)


def default_method(model: Any) -> str:
    """The sweep algorithm for ``method=None``: "auto" from ``settings.AUTO_MIN_COMPONENTS``
    components on (read at call time), "exact" below."""
    from .. import settings

    return "auto" if n_components(model) >= settings.AUTO_MIN_COMPONENTS else "exact"


def gate_thresholds(thresholds: Any = None) -> Any:
    """``thresholds`` (a GateThresholds, default: the default tolerance and top 5) in one
    spelling: each tuple sorted, repeats dropped, so the same cut points share one cache key."""
    from .ablation import GateThresholds, SweepConfigError

    if thresholds is None:
        thresholds = GateThresholds()
    if not isinstance(thresholds, GateThresholds):
        raise SweepConfigError(
            f"thresholds must be a GateThresholds, got {type(thresholds).__name__}; write "
            "thresholds=GateThresholds(drop=(20.0,), mean_drop=(2.0,))"
        )
    return GateThresholds(
        drop=tuple(sorted(set(thresholds.drop))),
        mean_drop=tuple(sorted(set(thresholds.mean_drop))),
        top_k=thresholds.top_k,
    )


def merged_thresholds(thresholds: Any, drop: Sequence[float] = ()) -> Any:
    """``thresholds`` with the extra single-component cut points ``drop`` added."""
    from .ablation import GateThresholds

    base = gate_thresholds(thresholds)
    return gate_thresholds(GateThresholds(drop=(*base.drop, *drop), mean_drop=base.mean_drop,
                                          top_k=base.top_k))


def _check_method(method: Any) -> str | None:
    from .ablation import METHODS, SweepConfigError

    if method is not None and method not in METHODS:
        raise SweepConfigError(
            f"method={method!r} is not one of {', '.join(repr(m) for m in METHODS)} (or None "
            "for the default: auto for a large model, exact below)"
        )
    return method


class _Absent(Exception):
    """Raised by the compute function of :func:`_stored`: nothing is stored under the key."""


def _stored(kind: str, parts: dict[str, Any]) -> Any:
    """The entry stored (in this session or on disk) under ``parts``, None when there is none;
    nothing is computed."""

    def absent() -> Any:
        raise _Absent

    try:
        return cache.cached(kind, parts, absent)
    except _Absent:
        return None


#: Sweeps a :func:`pair_report` has already obtained, by model, for the ``compare`` call it
#: runs: its sweeps come through :func:`sweep_result` with the report's own method and
#: thresholds (``compare`` knows neither), and are not swept again when the cache is off.
_planned: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "pytest_circuits_planned_sweeps", default=None
)


@contextmanager
def _using_sweeps(sweeps: dict[int, Any]) -> Iterator[None]:
    token = _planned.set(sweeps)
    try:
        yield
    finally:
        _planned.reset(token)


def task_performance(model: Any, task: Any) -> Any:
    """``ablation.task_performance`` (the clean run's metric) through the session/disk cache."""
    from . import ablation

    return cache.cached(
        "performance", _model_parts(model, task), lambda: ablation.task_performance(model, task)
    )


def sweep_result(
    model: Any,
    task: Any,
    *,
    components: str | Sequence[Any] = "all",
    ablation: str = "mean",
    method: str | None = "exact",
    seed: int = 0,
    margin: float = 0.1,
    thresholds: Any = None,
) -> Any:
    """``ablation.sweep`` through the session/disk cache: one sweep per weights, task and
    sweep settings.

    ``method=None`` is :func:`default_method`. An auto sweep is keyed by its ``thresholds`` too
    (a GateThresholds; default: the default tolerance and top 5), and an exact sweep already
    stored for the same model, task and settings is returned for an auto request instead (its
    ``fingerprint.method`` says "exact"). The margin is not part of the key: it does not change
    a sweep's numbers, only whether the task is valid for the model, and that is checked again
    on every call, so a stored sweep is never served to a caller whose margin refuses the task.
    """
    from . import ablation as sweeps

    planned = (_planned.get() or {}).get(id(model))
    if planned is not None:  # pair_report obtained it below, with its own method and thresholds
        sweeps.require_valid_task([planned.performance], margin=margin)
        return planned
    method = _check_method(method) or default_method(model)
    names = components if isinstance(components, str) else sorted(
        getattr(c, "name", c) for c in components
    )
    parts = {
        **_model_parts(model, task),
        "components": names,
        "ablation": ablation,
        "method": method,
        "seed": seed,
    }
    result = None
    if method == "auto":
        thresholds = gate_thresholds(thresholds)
        # an exact sweep decides every verdict: one already stored is never swept again
        result = _stored("sweep", {**parts, "method": "exact"})
        parts["thresholds"] = thresholds.to_dict()
    else:
        thresholds = None
    if result is None:
        result = cache.cached(
            "sweep",
            parts,
            lambda: sweeps.sweep(
                model, task, components=components, ablation=ablation, method=method,
                seed=seed, margin=margin, thresholds=thresholds,
            ),
        )
    sweeps.require_valid_task([result.performance], margin=margin)
    return result


def pair_report(
    pair: Any,
    task: Any,
    *,
    ablation: str = "mean",
    similarity: str = "paper",
    matching: str = "paper",
    method: str | None = "exact",
    thresholds: Any = None,
    n_prompts: int | None = None,
    seed: int = 0,
    margin: float = 0.1,
    tolerance: float = 20.0,
    direction: str = DEFAULT_DIRECTION,
    min_student_influence: float = DEFAULT_MIN_STUDENT_INFLUENCE,
    tie_margin: float | None = None,
    noise_floor: float = 0.0,
    preset: str | None = None,
) -> Any:
    """``compare`` through the session/disk cache (keyed by weights, task and settings).

    ``method`` is the sweep algorithm ("exact", "auto", or None: :func:`default_method` for
    each model), ``matching`` and ``direction`` how components are paired,
    ``min_student_influence`` the dead-component floor, ``tie_margin``, ``noise_floor`` and
    ``preset`` as in ``compare``. An auto sweep respects ``thresholds`` (the gate's) plus the
    cut points compare itself reads: ``tolerance``, its "influential" level, the dead-component
    floor and the noise floor. The two sweeps come from :func:`sweep_result`, so they are shared
    with every other report on the same models, and an exact sweep already stored serves an
    auto request; when both sweeps turn out exact the report is the exact one.
    """
    from .ablation import require_valid_task
    from .comparison import DEFAULT_INFLUENTIAL, compare, resolve_preset

    pair = as_pair(pair)
    task = as_task(task, n_prompts, seed, pair.teacher)
    # the preset is expanded first, so a preset and the options it stands for share an entry
    matching, similarity, tie_margin, noise_floor = resolve_preset(
        preset, matching, similarity, tie_margin, noise_floor
    )
    _check_method(method)
    methods = [method or default_method(m) for m in (pair.teacher, pair.student)]
    sweeps: dict[int, Any] = {}
    if "auto" in methods:
        cut_points = [tolerance, DEFAULT_INFLUENTIAL, min_student_influence]
        if noise_floor:
            cut_points.append(noise_floor)
        thresholds = merged_thresholds(thresholds, cut_points)
        # both models must do the task before either is swept (compare's own check, first)
        require_valid_task(
            [task_performance(pair.teacher, task), task_performance(pair.student, task)],
            margin=margin,
        )
        for model, chosen in zip((pair.teacher, pair.student), methods, strict=True):
            sweeps[id(model)] = sweep_result(
                model, task, ablation=ablation, method=chosen, seed=seed, margin=margin,
                thresholds=thresholds,
            )
        if all(r.fingerprint.method == "exact" for r in sweeps.values()):
            methods = ["exact", "exact"]  # exact sweeps were stored: the exact report is this
    compared = "auto" if "auto" in methods else methods[0]
    parts = {
        "names": [pair.teacher.name, pair.student.name],
        "teacher": pair.teacher.weights_fingerprint,
        "student": pair.student.weights_fingerprint,
        "task": task.fingerprint(),
        "ablation": ablation,
        "similarity": similarity,
        "matching": matching,
        "direction": direction,
        "min_student_influence": min_student_influence,
        "method": compared,
        "seed": seed,
        "margin": margin,
        "tolerance": tolerance,
        "dtype": pair.student.dtype,
        "device": pair.student.device_kind,
    }
    if tie_margin is not None or noise_floor:
        # only when used, so entries stored before these options existed keep their keys
        parts.update(tie_margin=tie_margin, noise_floor=noise_floor)
    if compared == "auto":
        parts.update(sweep_methods=methods, thresholds=thresholds.to_dict())
    else:
        sweeps = {}  # compare finds the exact sweeps in the cache (or sweeps them)

    def run() -> Any:
        with _using_sweeps(sweeps):
            return compare(
                pair, task, ablation=ablation, similarity=similarity, matching=matching,
                direction=direction, method=compared, seed=seed, margin=margin,
                tolerance=tolerance, min_student_influence=min_student_influence,
                tie_margin=tie_margin, noise_floor=noise_floor,
            )

    return cache.cached("pair", parts, run)


def model_report(
    model: Any,
    task: Any,
    *,
    components: str | Sequence[str] = "all",
    ablation: str = "mean",
    method: str | None = "exact",
    thresholds: Any = None,
    n_prompts: int | None = None,
    seed: int = 0,
    margin: float = 0.1,
    tolerance: float = 20.0,
) -> Any:
    """A model's report from its memoised sweep (see :func:`sweep_result`); the brittleness
    statistics at ``tolerance`` are recomputed from it, which costs no forward pass. An auto
    sweep respects ``thresholds`` plus ``tolerance``."""
    from .comparison import report_from_sweep

    task = as_task(task, n_prompts, seed, model)
    if (_check_method(method) or default_method(model)) == "auto":
        thresholds = merged_thresholds(thresholds, [tolerance])
    result = sweep_result(
        model, task, components=components, ablation=ablation, method=method, seed=seed,
        margin=margin, thresholds=thresholds,
    )
    return report_from_sweep(result, tolerance=tolerance)
