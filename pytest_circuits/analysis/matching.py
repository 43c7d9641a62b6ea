"""Matching teacher components to student components: by similarity or by ablation effect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..components import Component

# the choices and defaults are defined with the analysis options; re-exported here
from ..config.options import (
    DEFAULT_DIRECTION,
    DEFAULT_MIN_STUDENT_INFLUENCE,
    DEFAULT_TIE_MARGIN,
    check_direction,
)
from ..errors import IncompatiblePairError


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
    evidence: Sequence[tuple[np.ndarray, float]] = (),
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

    ``evidence`` (``similarity="combined"``: the pattern and the output similarity the combined
    one averages, each [teacher, student] with its own margin) widens the ties: a partner also
    ties with the best when it is within each piece's margin of the best on that piece (a NaN,
    where a piece says nothing about a pair, counts as within). Two heads whose patterns tie and
    whose writes differ by less than the output's noise are not told apart by an average that
    happens to favour one.
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
    pieces = [(m if by_teacher else m.T, margin) for m, margin in evidence]
    for m, _ in pieces:
        if m.shape != score.shape:
            raise ValueError(f"evidence matrix shape {m.shape} does not match {score.shape}")
    matches = []
    for i, row in enumerate(score):
        within = row >= row.max() - tie_margin
        if pieces:
            best = int(np.argmax(row))
            alike = np.ones_like(within)
            for m, margin in pieces:
                near = m[i] >= m[i, best] - margin
                alike &= near | np.isnan(m[i]) | bool(np.isnan(m[i, best]))
            within |= alike
        candidates = np.flatnonzero(within)
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
