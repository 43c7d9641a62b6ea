"""Matching teacher components to student components: by similarity or by ablation effect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..components import Component
from ..errors import IncompatiblePairError

MATCHINGS = ("paper", "causal")
#: Who picks: each teacher component picks its best student component (the paper's v2
#: convention, the default), or each student component picks its best teacher component (the
#: authors' earlier notebooks; every student component then counts once, which scores higher).
DIRECTIONS = ("teacher_to_student", "student_to_teacher")
DEFAULT_DIRECTION = "teacher_to_student"
#: The dead-component floor, in points of the clean metric: a student component whose ablation
#: costs less does no measurable work on the task, so matches onto it are not counted as
#: compression and its teacher partners are reported as discarded.
DEFAULT_MIN_STUDENT_INFLUENCE = 2.0


@dataclass(frozen=True)
class Match:
    """One teacher component and the student component it was matched to."""

    teacher: str
    student: str
    kind: str
    similarity: float


def check_direction(direction: str) -> str:
    """Return ``direction`` when it is one of :data:`DIRECTIONS`, else raise naming both."""
    if direction not in DIRECTIONS:
        raise IncompatiblePairError(
            f"direction={direction!r} is not a matching direction; use 'teacher_to_student' "
            "(each teacher component takes its most similar student component, the paper's "
            "convention) or 'student_to_teacher' (each student component takes its most "
            "similar teacher component)"
        )
    return direction


def _best_pairs(
    score: np.ndarray,
    teacher: Sequence[Component],
    student: Sequence[Component],
    direction: str,
    higher_is_better: bool,
) -> list[tuple[int, int]]:
    """(teacher index, student index) of each chooser's best partner; ties go to the lowest
    index. Teacher choosers come out in teacher order, student choosers in student order."""
    check_direction(direction)
    if score.shape != (len(teacher), len(student)):
        raise ValueError(
            f"score matrix shape {score.shape} does not match "
            f"{len(teacher)} teacher and {len(student)} student components"
        )
    pick = np.argmax if higher_is_better else np.argmin
    if direction == "teacher_to_student":
        return [(i, int(j)) for i, j in enumerate(pick(score, axis=1))]
    return [(int(i), j) for j, i in enumerate(pick(score, axis=0))]


def match_by_similarity(
    similarity: np.ndarray,
    teacher: Sequence[Component],
    student: Sequence[Component],
    direction: str = DEFAULT_DIRECTION,
) -> list[Match]:
    """The paper's (v2) matching: each teacher component takes its most similar student one.

    Many-to-one is allowed: several teacher components sharing one student component is the
    compression the paper reports. With ``direction="student_to_teacher"`` each student
    component takes its most similar teacher component instead. Ties go to the lowest index.
    """
    return [
        Match(teacher[i].name, student[j].name, teacher[i].kind, float(similarity[i, j]))
        for i, j in _best_pairs(similarity, teacher, student, direction, higher_is_better=True)
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
    direction: str = DEFAULT_DIRECTION,
) -> list[Match]:
    """Circuit Distillation's matching: nearest normalised ablation effect, same type.

    Works across tokenizers because it only needs each model's own task metric. The similarity
    of a pair is ``1 - |e_T - e_S|`` with ``e`` the influence divided by that model's largest.
    ``direction`` says which side picks, as in :func:`match_by_similarity`.
    """
    et = normalised_effects(np.asarray(teacher_influence, dtype=float))
    es = normalised_effects(np.asarray(student_influence, dtype=float))
    gaps = np.abs(et[:, None] - es[None, :])
    return [
        Match(teacher[i].name, student[j].name, teacher[i].kind, float(1.0 - gaps[i, j]))
        for i, j in _best_pairs(gaps, teacher, student, direction, higher_is_better=False)
    ]


def fan_in(matches: Sequence[Match]) -> dict[str, list[str]]:
    """Student component -> the teacher components matched to it (compression when > 1)."""
    grouped: dict[str, list[str]] = {}
    for m in matches:
        grouped.setdefault(m.student, []).append(m.teacher)
    return grouped
