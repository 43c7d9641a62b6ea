"""Matching teacher components to student components: by similarity or by ablation effect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..components import Component

MATCHINGS = ("paper", "causal")


@dataclass(frozen=True)
class Match:
    """One teacher component and the student component it was matched to."""

    teacher: str
    student: str
    kind: str
    similarity: float


def match_by_similarity(
    similarity: np.ndarray, teacher: Sequence[Component], student: Sequence[Component]
) -> list[Match]:
    """The paper's (v2) matching: each teacher component takes its most similar student one.

    Many-to-one is allowed: several teacher components sharing one student component is the
    compression the paper reports. Ties go to the lowest student index.
    """
    if similarity.shape != (len(teacher), len(student)):
        raise ValueError(
            f"similarity matrix shape {similarity.shape} does not match "
            f"{len(teacher)} teacher and {len(student)} student components"
        )
    best = similarity.argmax(axis=1)
    return [
        Match(t.name, student[int(j)].name, t.kind, float(similarity[i, int(j)]))
        for i, (t, j) in enumerate(zip(teacher, best, strict=True))
    ]


def normalised_effects(influences: np.ndarray) -> np.ndarray:
    """Influences scaled by the model's largest one, so models of any size share a [0, 1] scale."""
    top = float(np.max(influences)) if len(influences) else 0.0
    if top <= 0:
        return np.zeros_like(influences, dtype=float)
    return np.asarray(influences, dtype=float) / top


def match_by_effect(
    teacher_influence: np.ndarray,
    student_influence: np.ndarray,
    teacher: Sequence[Component],
    student: Sequence[Component],
) -> list[Match]:
    """Circuit Distillation's matching: nearest normalised ablation effect, same type.

    Works across tokenizers because it only needs each model's own task metric. The similarity
    of a pair is ``1 - |e_T - e_S|`` with ``e`` the influence divided by that model's largest.
    """
    et = normalised_effects(np.asarray(teacher_influence, dtype=float))
    es = normalised_effects(np.asarray(student_influence, dtype=float))
    gaps = np.abs(et[:, None] - es[None, :])
    best = gaps.argmin(axis=1)
    return [
        Match(t.name, student[int(j)].name, t.kind, float(1.0 - gaps[i, int(j)]))
        for i, (t, j) in enumerate(zip(teacher, best, strict=True))
    ]


def fan_in(matches: Sequence[Match]) -> dict[str, list[str]]:
    """Student component -> the teacher components matched to it (compression when > 1)."""
    grouped: dict[str, list[str]] = {}
    for m in matches:
        grouped.setdefault(m.student, []).append(m.teacher)
    return grouped
