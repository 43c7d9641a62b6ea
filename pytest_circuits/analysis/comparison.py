"""Whole-model and teacher-student reports: brittleness, matching, alignment, fan-in, discards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .. import metrics
from ..components import Component
from ..errors import IncompatiblePairError
from ..models import CircuitModel, ModelPair
from ..results.reports import (  # the report types' home (torch-free); importable from here too
    DEFAULT_INFLUENTIAL,
    DEFAULT_WEAK_SIMILARITY,
    Alignment,
    AmbiguousGroup,
    CompareSettings,
    Discarded,
    MatchedPair,
    ModelReport,
    PairReport,
    ReportFormatError,
    report_from_dict,
)
from ..results.sweep import DEFAULT_MARGIN, SweepResult
from ..tasks import Task, resolve_task
from .ablation import make_fingerprint, require_valid_task
from .matching import (
    DEFAULT_DIRECTION,
    DEFAULT_MIN_STUDENT_INFLUENCE,
    DEFAULT_TIE_MARGIN,
    MATCHINGS,
    Match,
    check_direction,
    fan_in,
    match_by_effect,
    match_by_similarity,
    match_tie_aware,
)
from .similarity import check_similarity, similarity_matrices

__all__ = [
    "DEFAULT_INFLUENTIAL",
    "DEFAULT_MIN_STUDENT_INFLUENCE",
    "DEFAULT_NOISE_FLOOR",
    "DEFAULT_WEAK_SIMILARITY",
    "PRESETS",
    "Alignment",
    "AmbiguousGroup",
    "CompareSettings",
    "Discarded",
    "MatchedPair",
    "ModelReport",
    "PairReport",
    "ReportFormatError",
    "compare",
    "model_report",
    "report_from_dict",
    "report_from_sweep",
    "resolve_preset",
]

#: The recommended noise floor of the influence-weighted score, in points: pairs whose
#: ablation costs less on both sides drop out (see metrics.weighted_alignment_score).
DEFAULT_NOISE_FLOOR = 3.0

#: Named combinations of method options. "paper" is the paper's method (the default);
#: "recommended" is what docs/method.md measured to give meaningful numbers on real models:
#: tie-aware matching, subspace similarity for MLPs and a noise floor under the weighted score.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"matching": "paper", "similarity": "paper", "tie_margin": None,
              "noise_floor": 0.0},
    "recommended": {"matching": "tie_aware", "similarity": "subspace",
                    "tie_margin": DEFAULT_TIE_MARGIN, "noise_floor": DEFAULT_NOISE_FLOOR},
}


def report_from_sweep(result: SweepResult, *, tolerance: float = 20.0) -> ModelReport:
    """A model's report from its sweep: the brittleness statistics at ``tolerance``."""
    return ModelReport(
        model=result.model,
        task=result.task,
        performance=result.performance,
        sweep=result,
        brittleness=result.brittleness(tolerance=tolerance),
        fingerprint=result.fingerprint,
    )


def model_report(
    model: CircuitModel,
    task: Task | str,
    *,
    components: str | Sequence[str] = "all",
    ablation: str = "mean",
    method: str = "exact",
    seed: int = 0,
    margin: float | None = DEFAULT_MARGIN,
    tolerance: float = 20.0,
) -> ModelReport:
    """Sweep ``model`` on ``task`` and summarise its brittleness.

    The sweep comes from the session/disk memo (``cached.sweep_result``), so a model is swept
    once per task and settings however many reports, gates and pairs ask for it.
    """
    from .cached import sweep_result

    result = sweep_result(
        model, resolve_task(task), components=components, ablation=ablation, method=method,
        seed=seed, margin=margin,
    )
    return report_from_sweep(result, tolerance=tolerance)


def resolve_preset(
    preset: str | None,
    matching: str,
    similarity: str,
    tie_margin: float | None,
    noise_floor: float,
) -> tuple[str, str, float | None, float]:
    """(matching, similarity, tie_margin, noise_floor) after applying ``preset``.

    A preset sets all four; combining it with a non-default ``matching`` or ``similarity`` is
    refused rather than silently overridden. Without a preset, ``tie_margin`` defaults to
    ``DEFAULT_TIE_MARGIN`` for tie-aware matching and means nothing for the others.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise IncompatiblePairError(
                f"preset={preset!r} is not a preset; use 'recommended' (tie-aware matching, "
                "subspace MLP similarity, a 3-point noise floor under the weighted score) or "
                "'paper' (the paper's method, the default)"
            )
        chosen = [f"{name}={value!r}" for name, value in
                  (("matching", matching), ("similarity", similarity)) if value != "paper"]
        if chosen:
            raise IncompatiblePairError(
                f"preset={preset!r} sets matching and similarity itself, but "
                f"{' and '.join(chosen)} was also given; pass either the preset or the options"
            )
        values = PRESETS[preset]
        return (values["matching"], values["similarity"], values["tie_margin"],
                values["noise_floor"])
    if matching not in MATCHINGS:
        raise IncompatiblePairError(
            f"matching={matching!r} is not a matching; use one of {', '.join(MATCHINGS)}"
        )
    check_similarity(similarity)
    if matching == "tie_aware":
        tie_margin = DEFAULT_TIE_MARGIN if tie_margin is None else float(tie_margin)
    elif tie_margin is not None:
        raise IncompatiblePairError(
            f"tie_margin={tie_margin!r} only applies to matching='tie_aware' (matching is "
            f"{matching!r}); drop it, or choose matching='tie_aware'"
        )
    if not noise_floor >= 0:
        raise IncompatiblePairError(
            f"noise_floor={noise_floor!r}: it is the influence, in points, below which a pair "
            "drops out of the weighted score on both sides, so it must be >= 0 (0 keeps all)"
        )
    return matching, similarity, tie_margin, float(noise_floor)


def compare(
    pair: ModelPair,
    task: Task | str,
    *,
    ablation: str = "mean",
    similarity: str = "paper",
    matching: str = "paper",
    direction: str = DEFAULT_DIRECTION,
    method: str = "exact",
    seed: int = 0,
    margin: float | None = DEFAULT_MARGIN,
    tolerance: float = 20.0,
    influential: float = DEFAULT_INFLUENTIAL,
    weak_similarity: float = DEFAULT_WEAK_SIMILARITY,
    min_student_influence: float = DEFAULT_MIN_STUDENT_INFLUENCE,
    tie_margin: float | None = None,
    noise_floor: float = 0.0,
    preset: str | None = None,
) -> PairReport:
    """Measure how the student's mechanism relates to the teacher's on ``task``.

    ``method`` is the sweep algorithm ("exact" or "attribution"), ``matching`` how components
    are paired ("paper": attention/eigenvector similarity; "causal": ablation effect;
    "tie_aware": similarity, with candidates within ``tie_margin`` of the best treated as a tie
    decided by ablation effect and left out of fan-in), ``similarity`` what similarity means
    ("paper", "subspace": principal angles between MLP output subspaces, or "cka") and
    ``direction`` which side picks its best partner ("teacher_to_student", the paper's v2
    convention, or "student_to_teacher"). ``noise_floor`` (points) leaves pairs below it on
    both sides out of the influence-weighted score. ``preset="recommended"`` sets matching,
    similarity, tie_margin and noise_floor to the combination docs/method.md recommends for
    real models. ``min_student_influence`` is the dead-component floor (see PairReport).

    Both models must perform the task (clean logit difference > ``margin``), otherwise
    ``InvalidTaskError`` names both numbers and nothing is scored. Each side's sweep comes from
    the same session/disk memo the gates use, so nothing is swept twice.
    """
    from .cached import sweep_result, task_performance

    task = resolve_task(task)
    matching, similarity, tie_margin, noise_floor = resolve_preset(
        preset, matching, similarity, tie_margin, noise_floor
    )
    check_direction(direction)
    if matching != "causal" and not pair.same_tokenizer:
        raise IncompatiblePairError(
            "teacher and student use different tokenizers, so their attention patterns cover "
            f"different positions and matching={matching!r} cannot compare them: use "
            "matching='causal', which pairs components by ablation effect"
        )
    require_valid_task(
        [task_performance(pair.teacher, task), task_performance(pair.student, task)],
        margin=margin,
    )
    settings = CompareSettings(
        tolerance=tolerance,
        influential=influential,
        weak_similarity=weak_similarity,
        min_student_influence=min_student_influence,
        margin=margin,
    )
    teacher_report, student_report = (
        report_from_sweep(
            sweep_result(m, task, ablation=ablation, method=method, seed=seed, margin=margin),
            tolerance=tolerance,
        )
        for m in (pair.teacher, pair.student)
    )
    # plain floats, so the reports hold what JSON gives back
    t_infl = {e.name: e.influence for e in teacher_report.sweep.effects}
    s_infl = {e.name: e.influence for e in student_report.sweep.effects}
    t_drop = {e.name: e.drop for e in teacher_report.sweep.effects}
    s_drop = {e.name: e.drop for e in student_report.sweep.effects}

    matches = _match(
        pair, task, similarity, matching, direction, (t_infl, s_infl), (t_drop, s_drop),
        tie_margin, min_student_influence,
    )
    sims = np.array([m.similarity for m in matches])
    ti = np.array([t_infl[m.teacher] for m in matches])
    si = np.array([s_infl[m.student] for m in matches])
    parts = metrics.alignment_parts(sims, ti, si, noise_floor=noise_floor)
    pairs = tuple(
        MatchedPair(
            teacher=m.teacher,
            student=m.student,
            kind=m.kind,
            similarity=m.similarity,
            teacher_influence=float(ti[i]),
            student_influence=float(si[i]),
            teacher_share=float(parts.teacher_share[i]),
            student_share=float(parts.student_share[i]),
            candidates=m.candidates,
        )
        for i, m in enumerate(matches)
    )
    alignment = Alignment(
        score=parts.score,
        mean_similarity=parts.mean_similarity,
        influence_term=parts.influence_term,
        weighted_score=parts.weighted_score,
        pairs=pairs,
    )
    counted = [
        m for m in matches if s_infl[m.student] >= min_student_influence and not m.ambiguous
    ]
    compression = pair.compression
    delta = metrics.brittleness_delta(
        teacher_report.brittleness, student_report.brittleness, compression
    )
    fingerprint = make_fingerprint(
        pair.student, task, analysis="compare", ablation=ablation, method=method, seed=seed,
        similarity=similarity, matching=matching, direction=direction,
    )
    fingerprint = replace(
        fingerprint, tie_margin=tie_margin, noise_floor=noise_floor if noise_floor > 0 else None
    )
    return PairReport(
        teacher=teacher_report,
        student=student_report,
        task=task.name,
        alignment=alignment,
        brittleness_delta=delta,
        compression=compression,
        fan_in=fan_in(counted),
        fan_in_all=fan_in(matches),
        discarded=find_discarded(
            pairs, t_infl, settings, s_infl if direction == "teacher_to_student" else None
        ),
        fingerprint=fingerprint,
        settings=settings,
        ambiguous=ambiguous_groups(matches, pair, direction),
    )


def ambiguous_groups(
    matches: Sequence[Match], pair: ModelPair, direction: str
) -> list[AmbiguousGroup]:
    """Ambiguous choosers linked by shared candidates, one group per connected set."""
    by_teacher = direction == "teacher_to_student"
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]  # path halving keeps the trees flat
            node = parent[node]
        return node

    for m in matches:
        if not m.ambiguous:
            continue
        chooser = ("teacher", m.teacher) if by_teacher else ("student", m.student)
        side = "student" if by_teacher else "teacher"
        for candidate in m.candidates:
            parent[root((side, candidate))] = root(chooser)
    groups: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for node in list(parent):
        groups.setdefault(root(node), set()).add(node)
    order = {
        "teacher": {c.name: i for i, c in enumerate(pair.teacher.components())},
        "student": {c.name: i for i, c in enumerate(pair.student.components())},
    }

    def names(members: set[tuple[str, str]], side: str) -> tuple[str, ...]:
        return tuple(sorted((n for s, n in members if s == side), key=order[side].__getitem__))

    found = [
        AmbiguousGroup(
            kind=Component.parse(next(iter(members))[1]).kind,
            teachers=names(members, "teacher"),
            students=names(members, "student"),
        )
        for members in groups.values()
    ]
    return sorted(found, key=lambda g: (g.kind != "head", order["teacher"].get(
        g.teachers[0], 0) if g.teachers else 0))


def find_discarded(
    pairs: Sequence[MatchedPair],
    teacher_influence: dict[str, float],
    settings: CompareSettings,
    student_influence: dict[str, float] | None = None,
) -> list[Discarded]:
    """Teacher components that lost their mechanism in the student, in teacher order.

    Each teacher component is judged by its counterpart: its most similar matched student
    component (with teacher-to-student matching, its only one). It is discarded when

    - the counterpart is dead (influence < ``min_student_influence``) while the teacher
      component itself is not: the match was absorbed by a component that does no work. A dead
      teacher component matched onto a dead student one lost nothing and is not listed;
    - it is influential (>= ``influential``) and the counterpart's similarity is below
      ``weak_similarity``;
    - it is influential and no student component chose it (student-to-teacher matching only);
    - (tie-aware matching, given ``student_influence``) it is not dead, its match was a tie
      decided by ablation effect, and its most similar candidate is dead: the component that
      kept its attention pattern does no work, and a similar one elsewhere was chosen for its
      effect (a pruned head whose pattern resembles a neighbour's).
    """
    floor = settings.min_student_influence
    by_teacher: dict[str, list[MatchedPair]] = {}
    for p in pairs:
        by_teacher.setdefault(p.teacher, []).append(p)
    # in match order (as the pairs list them), then any teacher component nobody chose
    unchosen = [t for t in teacher_influence if t not in by_teacher]
    found = []
    for teacher in [*by_teacher, *unchosen]:
        influence = teacher_influence[teacher]
        matched = by_teacher.get(teacher)
        if not matched:
            if influence >= settings.influential:
                found.append(Discarded(
                    teacher=teacher, teacher_influence=influence, student=None,
                    similarity=None, student_influence=None,
                    reason="no student component has it as its most similar teacher component",
                ))
            continue
        p = max(matched, key=lambda m: m.similarity)  # first of equals, as max keeps it
        closest = p.candidates[0] if p.ambiguous and p.candidates[0] != p.student else None
        closest_influence = (student_influence or {}).get(closest or "")
        if closest is not None and closest_influence is not None and (
            closest_influence < floor <= influence
        ):
            reason = (
                f"its most similar counterpart {closest} is dead (ablation costs "
                f"{closest_influence:.1f} points, < {floor}); the tie with {p.student} "
                "was decided by ablation effect"
            )
            found.append(Discarded(
                teacher=teacher, teacher_influence=influence, student=closest,
                similarity=None, student_influence=closest_influence, reason=reason,
            ))
            continue
        if p.student_influence < floor <= influence:
            reason = (
                f"matched onto a dead component: {p.student} costs only "
                f"{p.student_influence:.1f} points when ablated (< {floor})"
            )
        elif influence >= settings.influential and p.similarity < settings.weak_similarity:
            reason = (
                f"best match {p.student} has similarity {p.similarity:.2f} < "
                f"{settings.weak_similarity}"
            )
        else:
            continue
        found.append(Discarded(
            teacher=teacher, teacher_influence=influence, student=p.student,
            similarity=p.similarity, student_influence=p.student_influence, reason=reason,
        ))
    return found


def _match(
    pair: ModelPair,
    task: Task,
    similarity: str,
    matching: str,
    direction: str,
    influence: tuple[dict[str, float], dict[str, float]],
    drop: tuple[dict[str, float], dict[str, float]],
    tie_margin: float | None,
    effect_tolerance: float,
) -> list[Match]:
    matches: list[Match] = []
    mats = similarity_matrices(pair.teacher, pair.student, task, similarity) if (
        matching != "causal") else None
    for which in ("heads", "mlps"):
        teacher = pair.teacher.components(which)
        student = pair.student.components(which)

        def values(side: int, comps: Sequence[Component], by: tuple[dict[str, float], ...]
                   ) -> np.ndarray:
            return np.array([by[side][c.name] for c in comps])

        if mats is None:
            matches += match_by_effect(
                values(0, teacher, influence), values(1, student, influence), teacher, student,
                direction,
            )
            continue
        matrix = mats.heads if which == "heads" else mats.mlps
        if matching == "paper":
            matches += match_by_similarity(matrix, teacher, student, direction)
        else:
            matches += match_tie_aware(
                matrix, teacher, student, values(0, teacher, drop), values(1, student, drop),
                direction, tie_margin=DEFAULT_TIE_MARGIN if tie_margin is None else tie_margin,
                effect_tolerance=effect_tolerance,
            )
    return matches
