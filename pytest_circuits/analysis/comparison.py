"""Whole-model and teacher-student reports: brittleness, matching, alignment, fan-in, discards."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .. import metrics
from ..components import Component
from ..config.options import (  # noqa: F401 (the defaults are importable from here too)
    DEFAULT_INFLUENTIAL,
    DEFAULT_MIN_STUDENT_INFLUENCE,
    DEFAULT_NOISE_FLOOR,
    DEFAULT_TIE_MARGIN,
    DEFAULT_WEAK_SIMILARITY,
    DISCARD_Z,
    OUTPUT_TIE_MARGIN,
    PRESETS,
    AnalysisOptions,
)
from ..errors import IncompatiblePairError
from ..models import CircuitModel, ModelPair
from ..results.reports import (  # the report types' home (torch-free); importable from here too
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
from ..results.sweep import SweepResult
from ..tasks import Task, resolve_task
from .ablation import make_fingerprint, require_valid_task
from .matching import (
    Match,
    fan_in,
    match_by_effect,
    match_by_similarity,
    match_tie_aware,
)
from .similarity import similarity_matrices
from .store import (
    analysis_options,
    as_task,
    auto_thresholds,
    default_method,
    sweep_result,
    task_performance,
)

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
]

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


def model_report(model: CircuitModel, task: Task | str, options: AnalysisOptions | None = None,
                 **overrides: Any) -> ModelReport:
    """Sweep ``model`` on ``task`` and summarise its brittleness at ``options.tolerance``
    (keyword arguments are :class:`AnalysisOptions` fields; default: every component, exact).

    The sweep comes from the session/disk memo (``store.sweep_result``), so a model is swept
    once per task and settings however many reports, gates and pairs ask for it; the
    brittleness statistics are recomputed from it, which costs no forward pass. An auto sweep
    decides the options' thresholds plus the tolerance exactly.
    """
    options = analysis_options("model_report", options, overrides)
    task = as_task(task, options.n_prompts, options.seed, model)
    if options.method == "auto" or options.method is None:
        options = options.replace(thresholds=auto_thresholds(options, [options.tolerance]))
    return report_from_sweep(sweep_result(model, task, options), tolerance=options.tolerance)


def compare(
    pair: ModelPair,
    task: Task | str,
    options: AnalysisOptions | None = None,
    *,
    sweeps: tuple[SweepResult, SweepResult] | None = None,
    **overrides: Any,
) -> PairReport:
    """Measure how the student's mechanism relates to the teacher's on ``task``.

    Keyword arguments are :class:`AnalysisOptions` fields (default: the paper's method, exact
    sweeps). ``method`` is the sweep algorithm ("exact", "auto" or "attribution"), ``matching``
    how components are paired ("paper": attention/eigenvector similarity; "causal": ablation
    effect; "tie_aware": similarity, with candidates within ``tie_margin`` of the best treated
    as a tie decided by ablation effect and left out of fan-in), ``similarity`` what similarity
    means ("paper", "subspace": principal angles between MLP output subspaces, "cka", or
    "combined": subspace for MLPs, heads by attention pattern and by what they write) and
    ``direction`` which side picks its best partner ("teacher_to_student", the paper's v2
    convention, or "student_to_teacher"). ``noise_floor`` (points) leaves pairs below it on
    both sides out of the influence-weighted score. ``preset="recommended"`` sets matching,
    similarity, tie_margin and noise_floor to the combination docs/method.md recommends for
    real models. ``min_student_influence`` is the dead-component floor (see PairReport).
    ``sweeps`` (teacher's, student's) are sweeps already obtained for these options (the cached
    ``pair_report`` passes its auto sweeps); otherwise they come from the session/disk memo
    the gates use, so nothing is swept twice.

    Both models must perform the task (clean logit difference > ``margin``), otherwise
    ``InvalidTaskError`` names both numbers and nothing is scored.
    """
    options = analysis_options("compare", options, overrides).resolved()
    task = resolve_task(task)
    matching, similarity, direction = options.matching, options.similarity, options.direction
    tie_margin, noise_floor = options.tie_margin, options.noise_floor
    min_student_influence = options.min_student_influence
    if matching != "causal" and not pair.same_tokenizer:
        raise IncompatiblePairError(
            "teacher and student use different tokenizers, so their attention patterns cover "
            f"different positions and matching={matching!r} cannot compare them: use "
            "matching='causal', which pairs components by ablation effect"
        )
    require_valid_task(
        [task_performance(pair.teacher, task), task_performance(pair.student, task)],
        margin=options.margin,
    )
    settings = CompareSettings(
        tolerance=options.tolerance,
        influential=options.influential,
        weak_similarity=options.weak_similarity,
        min_student_influence=min_student_influence,
        margin=options.margin,
    )
    if sweeps is None:
        sweeps = tuple(sweep_result(model, task, options.replace(
            method=options.method or default_method(model, compare=True)))
            for model in (pair.teacher, pair.student))
    else:
        require_valid_task([s.performance for s in sweeps], margin=options.margin)
    teacher_report, student_report = (
        report_from_sweep(result, tolerance=options.tolerance) for result in sweeps
    )
    # plain floats, so the reports hold what JSON gives back
    t_infl = {e.name: e.influence for e in teacher_report.sweep.effects}
    s_infl = {e.name: e.influence for e in student_report.sweep.effects}
    t_drop = {e.name: e.drop for e in teacher_report.sweep.effects}
    s_drop = {e.name: e.drop for e in student_report.sweep.effects}
    t_se, s_se = (_stderrs(report.sweep) for report in (teacher_report, student_report))

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
        pair.student, task, analysis="compare", ablation=options.ablation,
        method=_compared_method(options, pair), seed=options.seed, similarity=similarity,
        matching=matching, direction=direction,
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
            pairs, t_infl, settings, s_infl if direction == "teacher_to_student" else None,
            teacher_stderr=t_se, student_stderr=s_se,
        ),
        fingerprint=fingerprint,
        settings=settings,
        ambiguous=ambiguous_groups(matches, pair, direction),
    )


def _stderrs(result: SweepResult) -> dict[str, float]:
    """Each component's standard error over prompts, in points: the exact sweep's own
    (``ComponentEffect.stderr``); for an auto sweep's estimate its bound read as
    ``DISCARD_Z`` standard errors; absent (0) when the sweep kept neither."""
    found = {}
    for e in result.effects:
        if e.stderr is not None:
            found[e.name] = e.stderr
        elif e.bound is not None:
            found[e.name] = e.bound / DISCARD_Z
    return found


def _compared_method(options: AnalysisOptions, pair: ModelPair) -> str:
    """The method a compared pair is recorded with: the options', else "auto" when the default
    rule sweeps either model with it."""
    if options.method is not None:
        return options.method
    return "auto" if "auto" in (default_method(pair.teacher, compare=True),
                                default_method(pair.student, compare=True)) else "exact"


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
    *,
    teacher_stderr: dict[str, float] | None = None,
    student_stderr: dict[str, float] | None = None,
) -> list[Discarded]:
    """Teacher components that lost their mechanism in the student, in teacher order.

    Each teacher component is judged by its counterpart: its most similar matched student
    component (with teacher-to-student matching, its only one). It is discarded when

    - the counterpart is dead (influence < ``min_student_influence``, the dead floor) and the
      teacher component clearly is not: its influence clears the floor by at least ``DISCARD_Z``
      combined standard errors, ``I_T - floor >= DISCARD_Z * sqrt(se_T^2 + se_S^2)`` (the
      sweeps' standard errors over prompts, ``teacher_stderr`` / ``student_stderr``; a
      component absent from them counts as exact). Two components that both sit near the
      floor (2.27 and 1.89 points, with standard errors near 1) are noise, not a lost
      mechanism; a dead teacher component matched onto a dead student one lost nothing;
    - it is influential (>= ``influential``) and the counterpart's similarity is below
      ``weak_similarity``;
    - it is influential and no student component chose it (student-to-teacher matching only);
    - (tie-aware matching, given ``student_influence``) its match was a tie decided by ablation
      effect, its most similar candidate is dead, and it clears the floor as in the first rule
      against that candidate: the component that kept its attention pattern does no work, and a
      similar one elsewhere was chosen for its effect (a pruned head whose pattern resembles a
      neighbour's).
    """
    floor = settings.min_student_influence
    t_se, s_se = teacher_stderr or {}, student_stderr or {}

    def clears_floor(teacher: str, influence: float, student: str) -> bool:
        margin = DISCARD_Z * math.hypot(t_se.get(teacher, 0.0), s_se.get(student, 0.0))
        return influence - floor >= margin

    def noise(teacher: str, influence: float, student: str, student_influence: float) -> str:
        if teacher not in t_se and student not in s_se:
            return ""
        return (f"; {teacher} costs {influence:.1f} ± {t_se.get(teacher, 0.0):.1f} and "
                f"{student} {student_influence:.1f} ± {s_se.get(student, 0.0):.1f} points "
                "(standard errors over prompts)")

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
            closest_influence < floor and clears_floor(teacher, influence, closest)
        ):
            reason = (
                f"its most similar counterpart {closest} is dead (ablation costs "
                f"{closest_influence:.1f} points, < {floor}); the tie with {p.student} "
                "was decided by ablation effect"
                + noise(teacher, influence, closest, closest_influence)
            )
            found.append(Discarded(
                teacher=teacher, teacher_influence=influence, student=closest,
                similarity=None, student_influence=closest_influence, reason=reason,
            ))
            continue
        if p.student_influence < floor and clears_floor(teacher, influence, p.student):
            reason = (
                f"matched onto a dead component: {p.student} costs only "
                f"{p.student_influence:.1f} points when ablated (< {floor})"
                + noise(teacher, influence, p.student, p.student_influence)
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
        margin = DEFAULT_TIE_MARGIN if tie_margin is None else tie_margin
        evidence: list[tuple[np.ndarray, float]] = []
        if which == "heads" and mats.head_pattern_similarity is not None and (
                mats.head_output_similarity is not None):
            # combined similarity: a tie on the pattern and within the output's noise is a tie
            evidence = [(mats.head_pattern_similarity, margin),
                        (mats.head_output_similarity, OUTPUT_TIE_MARGIN)]
        if matching == "paper":
            matches += match_by_similarity(matrix, teacher, student, direction)
        else:
            matches += match_tie_aware(
                matrix, teacher, student, values(0, teacher, drop), values(1, student, drop),
                direction, tie_margin=margin, effect_tolerance=effect_tolerance,
                evidence=evidence,
            )
    return matches
