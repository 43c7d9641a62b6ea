"""The analysis entry points the gates use, memoised per session and on disk.

A result is keyed by the models' weight fingerprints, the task's fingerprint and every method
setting, so every gate, pair and direct call in a session shares one computation. The expensive
part, a model's ablation sweep, has its own entry ("sweep"), keyed by that model alone: the
teacher is swept once however many students are compared with it, and ``compare``,
``model_report`` and every gate obtain sweeps through :func:`sweep_result`.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    method: str = "exact",
    seed: int = 0,
    margin: float = 0.1,
) -> Any:
    """``ablation.sweep`` through the session/disk cache: one sweep per weights, task and
    sweep settings.

    The margin is not part of the key: it does not change a sweep's numbers, only whether the
    task is valid for the model, and that is checked again on every call, so a stored sweep is
    never served to a caller whose margin refuses the task.
    """
    from . import ablation as sweeps

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
    result = cache.cached(
        "sweep",
        parts,
        lambda: sweeps.sweep(
            model, task, components=components, ablation=ablation, method=method, seed=seed,
            margin=margin,
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
    method: str = "exact",
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

    ``method`` is the sweep algorithm, ``matching`` and ``direction`` how components are
    paired, ``min_student_influence`` the dead-component floor, ``tie_margin``, ``noise_floor``
    and ``preset`` as in ``compare``. The two sweeps inside come from :func:`sweep_result`, so
    they are shared with every other report on the same models.
    """
    from .comparison import compare, resolve_preset

    pair = as_pair(pair)
    task = as_task(task, n_prompts, seed, pair.teacher)
    # the preset is expanded first, so a preset and the options it stands for share an entry
    matching, similarity, tie_margin, noise_floor = resolve_preset(
        preset, matching, similarity, tie_margin, noise_floor
    )
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
        "method": method,
        "seed": seed,
        "margin": margin,
        "tolerance": tolerance,
        "dtype": pair.student.dtype,
        "device": pair.student.device_kind,
    }
    if tie_margin is not None or noise_floor:
        # only when used, so entries stored before these options existed keep their keys
        parts.update(tie_margin=tie_margin, noise_floor=noise_floor)
    return cache.cached(
        "pair",
        parts,
        lambda: compare(
            pair, task, ablation=ablation, similarity=similarity, matching=matching,
            direction=direction, method=method, seed=seed, margin=margin, tolerance=tolerance,
            min_student_influence=min_student_influence, tie_margin=tie_margin,
            noise_floor=noise_floor,
        ),
    )


def model_report(
    model: Any,
    task: Any,
    *,
    components: str | Sequence[str] = "all",
    ablation: str = "mean",
    method: str = "exact",
    n_prompts: int | None = None,
    seed: int = 0,
    margin: float = 0.1,
    tolerance: float = 20.0,
) -> Any:
    """A model's report from its memoised sweep (see :func:`sweep_result`); the brittleness
    statistics at ``tolerance`` are recomputed from it, which costs no forward pass."""
    from .comparison import report_from_sweep

    task = as_task(task, n_prompts, seed, model)
    result = sweep_result(
        model, task, components=components, ablation=ablation, method=method, seed=seed,
        margin=margin,
    )
    return report_from_sweep(result, tolerance=tolerance)
