"""The analysis entry points the gates use, memoised per session and on disk.

A result is keyed by the models' weight fingerprints, the task's fingerprint and every method
setting, so every gate, pair and direct call in a session shares one computation.
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


def as_task(task: Any, n_prompts: int | None, seed: int) -> Any:
    from ..tasks import resolve_task

    return resolve_task(task, n_prompts=n_prompts or DEFAULT_N_PROMPTS, seed=seed)


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
) -> Any:
    """``compare`` through the session/disk cache (keyed by weights, task and settings).

    ``method`` is the sweep algorithm, ``matching`` and ``direction`` how components are
    paired, ``min_student_influence`` the dead-component floor; see ``compare``.
    """
    from .compare import compare

    pair = as_pair(pair)
    task = as_task(task, n_prompts, seed)
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
    return cache.cached(
        "pair",
        parts,
        lambda: compare(
            pair, task, ablation=ablation, similarity=similarity, matching=matching,
            direction=direction, method=method, seed=seed, margin=margin, tolerance=tolerance,
            min_student_influence=min_student_influence,
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
    """``model_report`` through the session/disk cache."""
    from .compare import model_report as build

    task = as_task(task, n_prompts, seed)
    parts = {
        "name": model.name,
        "model": model.weights_fingerprint,
        "task": task.fingerprint(),
        "components": components if isinstance(components, str) else sorted(components),
        "ablation": ablation,
        "method": method,
        "seed": seed,
        "margin": margin,
        "tolerance": tolerance,
        "dtype": model.dtype,
        "device": model.device_kind,
    }
    return cache.cached(
        "model",
        parts,
        lambda: build(
            model, task, components=components, ablation=ablation, method=method, seed=seed,
            margin=margin, tolerance=tolerance,
        ),
    )
