"""Whole-model and teacher-student reports (brittleness, matching, alignment, fan-in, discards)
as plain typed data: torch-free, each with ``to_dict``/``from_dict`` for results files, baselines
and the cache. ``analysis.comparison`` computes them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .. import metrics

# the defaults are defined with the analysis options
from ..config.options import (
    DEFAULT_INFLUENTIAL,
    DEFAULT_MIN_STUDENT_INFLUENCE,
    DEFAULT_WEAK_SIMILARITY,
)
from ..errors import CircuitsError
from ..identity import ModelInfo
from .fingerprint import MethodFingerprint
from .sweep import DEFAULT_MARGIN, SweepResult, TaskPerformance

__all__ = [
    "DEFAULT_INFLUENTIAL",
    "DEFAULT_MIN_STUDENT_INFLUENCE",
    "DEFAULT_WEAK_SIMILARITY",
    "Alignment",
    "AmbiguousGroup",
    "CompareSettings",
    "Discarded",
    "MatchedPair",
    "ModelReport",
    "PairReport",
    "ReportFormatError",
    "report_from_dict",
]

class ReportFormatError(CircuitsError, ValueError):
    """A results document is not a report this version can read back."""


@dataclass
class ModelReport:
    """One model's sweep and brittleness on one task."""

    model: ModelInfo
    task: str
    performance: TaskPerformance
    sweep: SweepResult
    brittleness: metrics.BrittlenessSummary
    fingerprint: MethodFingerprint

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data with ``"kind": "model"`` (see :func:`report_from_dict`)."""
        return {
            "kind": "model",
            "model": self.model.to_dict(),
            "task": self.task,
            "performance": self.performance.to_dict(),
            "sweep": self.sweep.to_dict(),
            "brittleness": self.brittleness.to_dict(),
            "fingerprint": self.fingerprint.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelReport:
        _require_kind(data, "model")
        return cls(
            model=ModelInfo.from_dict(data["model"]),
            task=data["task"],
            performance=TaskPerformance.from_dict(data["performance"]),
            sweep=SweepResult.from_dict(data["sweep"]),
            brittleness=metrics.BrittlenessSummary.from_dict(data["brittleness"]),
            fingerprint=MethodFingerprint.from_dict(data["fingerprint"]),
        )


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
    #: tie-aware matching: the chooser's candidates within the tie margin (empty: unambiguous)
    candidates: tuple[str, ...] = ()

    @property
    def contribution(self) -> float:
        """This pair's term in the paper's A: S_i * (1 - |share_S - share_T|)."""
        return self.similarity * (1.0 - abs(self.student_share - self.teacher_share))

    @property
    def ambiguous(self) -> bool:
        """The chooser had two or more candidates within the tie margin."""
        return len(self.candidates) > 1

    def to_dict(self) -> dict[str, Any]:
        """The fields plus the derived ``contribution``, for readers of the JSON."""
        return {**asdict(self), "candidates": list(self.candidates),
                "contribution": self.contribution}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MatchedPair:
        values = {k: v for k, v in data.items() if k != "contribution"}
        values["candidates"] = tuple(values.get("candidates", ()))  # JSON has no tuples
        return cls(**values)


@dataclass(frozen=True)
class AmbiguousGroup:
    """Components of one type that tie-aware matching could not tell apart.

    Every chooser in the group had two or more candidates within the tie margin, and the
    choosers are linked by shared candidates (heads that all attend to the first token, say).
    ``teachers`` and ``students`` list the group's components on each side, in model order.
    Their matches were decided by ablation effect and are left out of fan-in.
    """

    kind: str
    teachers: tuple[str, ...]
    students: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "teachers": list(self.teachers),
                "students": list(self.students)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AmbiguousGroup:
        return cls(kind=data["kind"], teachers=tuple(data["teachers"]),
                   students=tuple(data["students"]))


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "mean_similarity": self.mean_similarity,
            "influence_term": self.influence_term,
            "weighted_score": self.weighted_score,
            "pairs": [p.to_dict() for p in self.pairs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alignment:
        return cls(
            score=data["score"],
            mean_similarity=data["mean_similarity"],
            influence_term=data["influence_term"],
            weighted_score=data["weighted_score"],
            pairs=tuple(MatchedPair.from_dict(p) for p in data["pairs"]),
        )


@dataclass(frozen=True)
class Discarded:
    """An influential teacher component without an influential, similar student counterpart.

    ``student`` is the counterpart that was judged (the teacher component's most similar
    student component among its matches); it is None, with ``similarity`` and
    ``student_influence``, when matching student to teacher left the teacher component
    unchosen.
    """

    teacher: str
    teacher_influence: float
    student: str | None
    similarity: float | None
    student_influence: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Discarded:
        return cls(**data)


@dataclass(frozen=True)
class CompareSettings:
    """The thresholds ``compare`` judged with (the method itself is in the fingerprint).

    ``min_student_influence`` is the dead-component floor: a component whose ablation costs
    fewer points than this does no measurable work on the task.
    """

    tolerance: float = 20.0
    influential: float = DEFAULT_INFLUENTIAL
    weak_similarity: float = DEFAULT_WEAK_SIMILARITY
    min_student_influence: float = DEFAULT_MIN_STUDENT_INFLUENCE
    margin: float | None = DEFAULT_MARGIN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareSettings:
        return cls(**data)


@dataclass
class PairReport:
    """Everything ``compare`` measured for a teacher-student pair on one task.

    ``fan_in_all`` maps every matched student component to the teacher components matched to
    it; ``fan_in`` leaves out dead student components (influence below
    ``settings.min_student_influence``), because a component that does no work on the task
    cannot be doing the work of several teacher components, and ambiguous matches (tie-aware
    matching), because a tie is no evidence of compression. ``dead_matches`` lists the dead
    pairs, ``ambiguous`` the groups of components tie-aware matching could not tell apart.
    """

    teacher: ModelReport
    student: ModelReport
    task: str
    alignment: Alignment
    brittleness_delta: metrics.BrittlenessDelta
    compression: float
    fan_in: dict[str, list[str]]
    fan_in_all: dict[str, list[str]]
    discarded: list[Discarded]
    fingerprint: MethodFingerprint
    settings: CompareSettings
    ambiguous: list[AmbiguousGroup] = field(default_factory=list)

    @property
    def compressed(self) -> dict[str, list[str]]:
        """Live student components that took over two or more teacher components
        (unambiguous matches only)."""
        return {s: t for s, t in self.fan_in.items() if len(t) > 1}

    @property
    def dead_matches(self) -> list[MatchedPair]:
        """Matched pairs whose student component is dead (left out of ``fan_in``)."""
        floor = self.settings.min_student_influence
        return [p for p in self.alignment.pairs if p.student_influence < floor]

    @property
    def behavior_retained(self) -> float:
        """Student clean metric as a percentage of the teacher's."""
        return metrics.retained(
            self.teacher.performance.mean_logit_diff, self.student.performance.mean_logit_diff
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data with ``"kind": "pair"``; ``behavior_retained`` is included for
        readers of the file and recomputed, not read, by :meth:`from_dict`."""
        return {
            "kind": "pair",
            "task": self.task,
            "teacher": self.teacher.to_dict(),
            "student": self.student.to_dict(),
            "alignment": self.alignment.to_dict(),
            "brittleness_delta": self.brittleness_delta.to_dict(),
            "compression": self.compression,
            "behavior_retained": self.behavior_retained,
            "fan_in": self.fan_in,
            "fan_in_all": self.fan_in_all,
            "discarded": [d.to_dict() for d in self.discarded],
            "fingerprint": self.fingerprint.to_dict(),
            "settings": self.settings.to_dict(),
            "ambiguous": [g.to_dict() for g in self.ambiguous],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairReport:
        _require_kind(data, "pair")
        return cls(
            teacher=ModelReport.from_dict(data["teacher"]),
            student=ModelReport.from_dict(data["student"]),
            task=data["task"],
            alignment=Alignment.from_dict(data["alignment"]),
            brittleness_delta=metrics.BrittlenessDelta.from_dict(data["brittleness_delta"]),
            compression=data["compression"],
            fan_in={s: list(t) for s, t in data["fan_in"].items()},
            fan_in_all={s: list(t) for s, t in data["fan_in_all"].items()},
            discarded=[Discarded.from_dict(d) for d in data["discarded"]],
            fingerprint=MethodFingerprint.from_dict(data["fingerprint"]),
            settings=CompareSettings.from_dict(data["settings"]),
            ambiguous=[AmbiguousGroup.from_dict(g) for g in data.get("ambiguous", [])],
        )


_REPORT_KINDS: dict[str, type[ModelReport] | type[PairReport]] = {
    "model": ModelReport,
    "pair": PairReport,
}


def _require_kind(data: Any, kind: str) -> None:
    if not isinstance(data, dict) or data.get("kind") != kind:
        seen = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise ReportFormatError(
            f"expected a {kind} report (a mapping with \"kind\": \"{kind}\"), got kind "
            f"{seen!r}; read results with report_from_dict, which picks the type by kind"
        )


def report_from_dict(data: dict[str, Any]) -> ModelReport | PairReport:
    """Turn a report's ``to_dict()`` (e.g. read back from a results JSON) into the typed report,
    choosing ModelReport or PairReport by its ``"kind"``."""
    kind = data.get("kind") if isinstance(data, dict) else None
    report_type = _REPORT_KINDS.get(kind) if isinstance(kind, str) else None
    if report_type is None:
        raise ReportFormatError(
            f"cannot read a report of kind {kind!r}: expected a mapping whose \"kind\" is one "
            f"of {', '.join(repr(k) for k in _REPORT_KINDS)}, as ModelReport.to_dict and "
            "PairReport.to_dict write; the file may come from another tool or a newer release"
        )
    return report_type.from_dict(data)
