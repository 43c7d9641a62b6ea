"""Matching teacher components to student components: by similarity or by ablation effect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..components import Component
from ..errors import IncompatiblePairError
from ..results.fingerprint import DEFAULT_DIRECTION
from ..results.reports import DEFAULT_MIN_STUDENT_INFLUENCE  # the dead-component floor

#: "paper": most similar component; "causal": nearest normalised ablation effect;
#: "tie_aware": most similar component, where candidates within ``tie_margin`` of the best are
#: an ambiguous set decided by ablation effect and left out of fan-in.
MATCHINGS = ("paper", "causal", "tie_aware")
#: Who picks: each teacher component picks its best student component (the paper's v2
#: convention, the default), or each student component picks its best teacher component (the
#: authors' earlier notebooks; every student component then counts once, which scores higher).
DIRECTIONS = ("teacher_to_student", "student_to_teacher")
#: Similarity margin of tie-aware matching: candidates this close to the best are a tie. Chosen
#: by measurement (docs/method.md): on SmolLM2-135M against its 4-bit copy, 0.02 puts a head's
#: own copy within the margin of its best match for 256 of 270 heads (204 are the strict best).
DEFAULT_TIE_MARGIN = 0.02


@dataclass(frozen=True)
class Match:
    """One teacher component and the student component it was matched to.

    ``candidates`` (tie-aware matching only) are the components the chooser could not tell
    apart: every one within the tie margin of its best similarity, the chosen one included, most
    similar first. A match with two or more candidates is ambiguous.
    """

    teacher: str
    student: str
    kind: str
    similarity: float
    candidates: tuple[str, ...] = ()

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1


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


def match_tie_aware(
    similarity: np.ndarray,
    teacher: Sequence[Component],
    student: Sequence[Component],
    teacher_drop: np.ndarray,
    student_drop: np.ndarray,
    direction: str = DEFAULT_DIRECTION,
    tie_margin: float = DEFAULT_TIE_MARGIN,
    effect_tolerance: float = DEFAULT_MIN_STUDENT_INFLUENCE,
) -> list[Match]:
    """Similarity matching that knows about ties, broken by ablation effect.

    Each chooser (teacher components with ``direction="teacher_to_student"``) takes as
    candidates every partner whose similarity is within ``tie_margin`` of its best. One
    candidate: the paper's match. Several: the match is ambiguous (left out of fan-in by
    ``compare``) and the tie is broken by ablation effect: the candidate whose signed drop (in
    points) is nearest the chooser's wins, candidates within ``effect_tolerance`` points of the
    nearest counting as equally near, and among those the most similar wins, then the lowest
    index. A chooser whose own drop is below ``effect_tolerance`` does no measurable work, so
    its effect says nothing and the most similar candidate wins (measured on SmolLM2-135M
    against its 4-bit copy: breaking idle heads' ties by effect maps 152 of 270 heads to
    themselves, by similarity 204). ``tie_margin = 0`` gives the paper's matching.

    Why: a real model has many heads with near-identical attention patterns (67 of SmolLM2's
    270 heads mostly attend to the first token), so "the most similar" among them is decided by
    rounding noise and the paper's fan-in reports compression that is not there.
    """
    if not tie_margin >= 0 or not np.isfinite(tie_margin):
        raise IncompatiblePairError(
            f"tie_margin={tie_margin!r}: it is the similarity difference below which two "
            f"candidates count as a tie, so it must be a finite number >= 0 (default "
            f"{DEFAULT_TIE_MARGIN}; 0 gives the paper's matching)"
        )
    check_direction(direction)
    if similarity.shape != (len(teacher), len(student)):
        raise ValueError(
            f"similarity matrix shape {similarity.shape} does not match "
            f"{len(teacher)} teacher and {len(student)} student components"
        )
    t_drop = np.asarray(teacher_drop, dtype=float)
    s_drop = np.asarray(student_drop, dtype=float)
    by_teacher = direction == "teacher_to_student"
    score = similarity if by_teacher else similarity.T
    chooser_drop, partner_drop = (t_drop, s_drop) if by_teacher else (s_drop, t_drop)
    partners = student if by_teacher else teacher
    matches = []
    for i, row in enumerate(score):
        candidates = np.flatnonzero(row >= row.max() - tie_margin)
        if len(candidates) > 1 and abs(chooser_drop[i]) >= effect_tolerance:
            gaps = np.abs(partner_drop[candidates] - chooser_drop[i])
            near = candidates[gaps <= gaps.min() + effect_tolerance]
            # argmax keeps the first (lowest index) of equally similar candidates
            j = int(near[np.argmax(row[near])])
        else:
            j = int(candidates[np.argmax(row[candidates])])
        # most similar first, so a report shows the closest candidate before the others
        ranked = candidates[np.argsort(-row[candidates], kind="stable")]
        named = tuple(partners[c].name for c in ranked) if len(candidates) > 1 else ()
        t_index, s_index = (i, j) if by_teacher else (j, i)
        matches.append(Match(
            teacher[t_index].name, student[s_index].name, teacher[t_index].kind,
            float(similarity[t_index, s_index]), named,
        ))
    return matches


def fan_in(matches: Sequence[Match]) -> dict[str, list[str]]:
    """Student component -> the teacher components matched to it (compression when > 1)."""
    grouped: dict[str, list[str]] = {}
    for m in matches:
        grouped.setdefault(m.student, []).append(m.teacher)
    return grouped
