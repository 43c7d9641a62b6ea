"""Whole-model and teacher-student reports: brittleness, matching, alignment, fan-in, discards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import metrics
from ..components import Component
from ..errors import IncompatiblePairError
from ..models import CircuitModel, ModelPair
from ..tasks import Task, resolve_task
from .ablation import (
    DEFAULT_MARGIN,
    SweepResult,
    TaskPerformance,
    make_fingerprint,
    require_valid_task,
    sweep,
    task_performance,
)
from .fingerprint import MethodFingerprint
from .matching import MATCHINGS, Match, fan_in, match_by_effect, match_by_similarity
from .similarity import SIMILARITIES, similarity_matrices

#: A teacher component whose ablation costs at least this many points is "influential".
DEFAULT_INFLUENTIAL = 10.0
#: A match weaker than this similarity does not count as a counterpart.
DEFAULT_WEAK_SIMILARITY = 0.5
#: A counterpart whose ablation costs less than this many points carries no influence.
DEFAULT_MIN_STUDENT_INFLUENCE = 2.0


@dataclass
class ModelReport:
    """One model's sweep and brittleness on one task."""

    model: dict[str, Any]
    task: str
    performance: TaskPerformance
    sweep: SweepResult
    brittleness: metrics.BrittlenessSummary
    fingerprint: MethodFingerprint

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": self.task,
            "performance": asdict(self.performance),
            "sweep": self.sweep.to_dict(),
            "brittleness": asdict(self.brittleness),
            "fingerprint": self.fingerprint.to_dict(),
        }


@dataclass(frozen=True)
class MatchedPair:
    """A matched teacher/student pair with what the alignment score saw of it."""

    teacher: str
    student: str
    kind: str
    similarity: float
    teacher_influence: float
    student_influence: float
    teacher_share: float
    student_share: float

    @property
    def contribution(self) -> float:
        """This pair's term in the paper's A: S_i * (1 - |share_S - share_T|)."""
        return self.similarity * (1.0 - abs(self.student_share - self.teacher_share))


@dataclass(frozen=True)
class Alignment:
    """The paper's alignment score with its two parts, and the influence-weighted variant."""

    score: float
    mean_similarity: float
    influence_term: float
    weighted_score: float
    pairs: tuple[MatchedPair, ...]

    def weakest(self, k: int = 5) -> list[MatchedPair]:
        """The pairs that pull the score down most (lowest contribution)."""
        return sorted(self.pairs, key=lambda p: p.contribution)[:k]


@dataclass(frozen=True)
class Discarded:
    """An influential teacher component without an influential, similar student counterpart."""

    teacher: str
    teacher_influence: float
    student: str
    similarity: float
    student_influence: float
    reason: str


@dataclass
class PairReport:
    """Everything ``compare`` measured for a teacher-student pair on one task."""

    teacher: ModelReport
    student: ModelReport
    task: str
    alignment: Alignment
    brittleness_delta: metrics.BrittlenessDelta
    compression: float
    fan_in: dict[str, list[str]]
    discarded: list[Discarded]
    fingerprint: MethodFingerprint
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def compressed(self) -> dict[str, list[str]]:
        """Student components that took over two or more teacher components."""
        return {s: t for s, t in self.fan_in.items() if len(t) > 1}

    @property
    def behavior_retained(self) -> float:
        """Student clean metric as a percentage of the teacher's."""
        return metrics.retained(
            self.teacher.performance.mean_logit_diff, self.student.performance.mean_logit_diff
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "teacher": self.teacher.to_dict(),
            "student": self.student.to_dict(),
            "alignment": {
                **{k: v for k, v in asdict(self.alignment).items() if k != "pairs"},
                "pairs": [
                    {**asdict(p), "contribution": p.contribution} for p in self.alignment.pairs
                ],
            },
            "brittleness_delta": asdict(self.brittleness_delta),
            "compression": self.compression,
            "behavior_retained": self.behavior_retained,
            "fan_in": self.fan_in,
            "discarded": [asdict(d) for d in self.discarded],
            "fingerprint": self.fingerprint.to_dict(),
            "settings": self.settings,
        }


def model_report(
    model: CircuitModel,
    task: Task | str,
    *,
    components: str | Sequence[str] = "all",
    ablation: str = "mean",
    method: str = "exact",
    seed: int = 0,
    margin: float = DEFAULT_MARGIN,
    tolerance: float = 20.0,
) -> ModelReport:
    """Sweep ``model`` on ``task`` and summarise its brittleness."""
    task = resolve_task(task)
    result = sweep(
        model, task, components=components, ablation=ablation, method=method, seed=seed,
        margin=margin,
    )
    return ModelReport(
        model=result.model,
        task=task.name,
        performance=result.performance,
        sweep=result,
        brittleness=result.brittleness(tolerance=tolerance),
        fingerprint=result.fingerprint,
    )


def compare(
    pair: ModelPair,
    task: Task | str,
    *,
    ablation: str = "mean",
    similarity: str = "paper",
    matching: str = "paper",
    method: str = "exact",
    seed: int = 0,
    margin: float = DEFAULT_MARGIN,
    tolerance: float = 20.0,
    influential: float = DEFAULT_INFLUENTIAL,
    weak_similarity: float = DEFAULT_WEAK_SIMILARITY,
    min_student_influence: float = DEFAULT_MIN_STUDENT_INFLUENCE,
) -> PairReport:
    """Measure how the student's mechanism relates to the teacher's on ``task``.

    Both models must perform the task (clean logit difference > ``margin``), otherwise
    ``InvalidTaskError`` names both numbers and nothing is scored.
    """
    task = resolve_task(task)
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity={similarity!r} is not one of {', '.join(SIMILARITIES)}")
    if matching not in MATCHINGS:
        raise ValueError(f"matching={matching!r} is not one of {', '.join(MATCHINGS)}")
    if matching == "paper" and not pair.same_tokenizer:
        raise IncompatiblePairError(
            "teacher and student use different tokenizers, so their attention patterns cover "
            "different positions: use matching='causal', which pairs components by ablation "
            "effect"
        )
    require_valid_task(
        [task_performance(pair.teacher, task), task_performance(pair.student, task)],
        margin=margin,
    )
    reports = [
        model_report(
            m, task, ablation=ablation, method=method, seed=seed, margin=margin,
            tolerance=tolerance,
        )
        for m in (pair.teacher, pair.student)
    ]
    teacher_report, student_report = reports
    t_infl = dict(zip(teacher_report.sweep.names, teacher_report.sweep.influences, strict=True))
    s_infl = dict(zip(student_report.sweep.names, student_report.sweep.influences, strict=True))

    matches = _match(pair, task, similarity, matching, t_infl, s_infl)
    sims = np.array([m.similarity for m in matches])
    ti = np.array([t_infl[m.teacher] for m in matches])
    si = np.array([s_infl[m.student] for m in matches])
    parts = metrics.alignment_parts(sims, ti, si)
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
    discarded = [
        Discarded(
            teacher=p.teacher,
            teacher_influence=p.teacher_influence,
            student=p.student,
            similarity=p.similarity,
            student_influence=p.student_influence,
            reason=(
                f"best match {p.student} has similarity {p.similarity:.2f} < {weak_similarity}"
                if p.similarity < weak_similarity
                else f"best match {p.student} costs only {p.student_influence:.1f} points "
                f"when ablated (< {min_student_influence})"
            ),
        )
        for p in pairs
        if p.teacher_influence >= influential
        and (p.similarity < weak_similarity or p.student_influence < min_student_influence)
    ]
    compression = pair.compression
    delta = metrics.brittleness_delta(
        teacher_report.brittleness, student_report.brittleness, compression
    )
    fingerprint = make_fingerprint(
        pair.student, task, analysis="compare", ablation=ablation, method=method, seed=seed,
        similarity=similarity, matching=matching,
    )
    return PairReport(
        teacher=teacher_report,
        student=student_report,
        task=task.name,
        alignment=alignment,
        brittleness_delta=delta,
        compression=compression,
        fan_in=fan_in(matches),
        discarded=discarded,
        fingerprint=fingerprint,
        settings={
            "tolerance": tolerance,
            "influential": influential,
            "weak_similarity": weak_similarity,
            "min_student_influence": min_student_influence,
            "margin": margin,
        },
    )


def _match(
    pair: ModelPair,
    task: Task,
    similarity: str,
    matching: str,
    t_infl: dict[str, float],
    s_infl: dict[str, float],
) -> list[Match]:
    t_heads = [c for c in pair.teacher.components("heads")]
    s_heads = [c for c in pair.student.components("heads")]
    t_mlps = [c for c in pair.teacher.components("mlps")]
    s_mlps = [c for c in pair.student.components("mlps")]
    if matching == "paper":
        mats = similarity_matrices(pair.teacher, pair.student, task, similarity)
        return match_by_similarity(mats.heads, t_heads, s_heads) + match_by_similarity(
            mats.mlps, t_mlps, s_mlps
        )

    def effects(comps: list[Component], infl: dict[str, float]) -> np.ndarray:
        return np.array([infl[c.name] for c in comps])

    return match_by_effect(
        effects(t_heads, t_infl), effects(s_heads, s_infl), t_heads, s_heads
    ) + match_by_effect(effects(t_mlps, t_infl), effects(s_mlps, s_infl), t_mlps, s_mlps)
