"""Head roles as plain typed data: what each attention head does (previous-token, duplicate-token,
induction, similar-member detection, mover, inhibition), and how a student's roles compare with
its teacher's (kept, discarded, merged). Torch-free; ``analysis.roles`` measures them.

Every role has a score in [0, 1] per head and a threshold: a head *holds* a role when its score
reaches the threshold. A head may hold several roles. The scores are defined in
``pytest_circuits.analysis.roles`` (and in GATES.md, section ``roles_preserved``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config.options import closest
from ..errors import GateConfigError
from ..identity import ModelInfo

__all__ = [
    "ROLES",
    "ROLE_SPECS",
    "KeptRole",
    "MergedHead",
    "RoleComparison",
    "RoleResult",
    "RoleSpec",
    "check_roles",
    "compare_roles",
]


@dataclass(frozen=True)
class RoleSpec:
    """One role: its name, the threshold a head's score must reach to hold it, where it is
    measured ("task": the task's prompts; "repeated": the built-in repeated random-token
    sequences) and what it means."""

    name: str
    threshold: float
    measured_on: str
    meaning: str


#: Every role, in report order, with its documented threshold.
ROLE_SPECS: dict[str, RoleSpec] = {spec.name: spec for spec in (
    RoleSpec("previous_token", 0.5, "task",
             "each position attends to the position before it"),
    RoleSpec("duplicate_token", 0.5, "repeated",
             "a repeated token attends to its earlier occurrence"),
    RoleSpec("induction", 0.5, "repeated",
             "a repeated token attends to the token after its earlier occurrence"),
    RoleSpec("similar_member", 0.4, "task",
             "a list member attends to the earlier members of its kind (answer-vocabulary "
             "slots: the earlier numbers of a numbered list, the earlier names of IOI)"),
    RoleSpec("mover", 0.3, "task",
             "the prediction position attends to the answer's source and the head's direct "
             "write raises the answer's logit"),
    RoleSpec("inhibition", 0.3, "task",
             "the prediction position attends to the repeated subject (IOI's S2) and the "
             "head's direct write lowers the subject's logit"),
)}

#: Role names in report order.
ROLES: tuple[str, ...] = tuple(ROLE_SPECS)


def check_roles(roles: Any, where: str) -> tuple[str, ...]:
    """``roles`` ("all", one name or a list of names) as role names in report order; a
    :class:`GateConfigError` naming the unknown one (with a did-you-mean) otherwise."""
    if roles == "all":
        return ROLES
    names = [roles] if isinstance(roles, str) else roles
    if not isinstance(names, (list, tuple)) or not names:
        raise GateConfigError(
            f"{where}: roles={roles!r} must be 'all' or a non-empty list of role names from "
            f"{', '.join(ROLES)}"
        )
    for name in names:
        if name not in ROLE_SPECS:
            raise GateConfigError(
                f"{where}: {name!r} is not a head role{closest(name, ROLES)}; the roles are "
                f"{', '.join(ROLES)} (or 'all')"
            )
    return tuple(r for r in ROLES if r in names)


@dataclass
class RoleResult:
    """One model's head roles on one task.

    ``scores[role]`` holds one score per head, in the order of ``heads`` (``L{layer}H{head}``).
    A role the task does not have (inhibition without a repeated subject) is absent from
    ``scores`` and listed in ``not_applicable`` with the reason.
    """

    model: ModelInfo
    task: str
    heads: tuple[str, ...]
    scores: dict[str, tuple[float, ...]]
    thresholds: dict[str, float]
    not_applicable: dict[str, str] = field(default_factory=dict)
    n_prompts: int = 0
    n_repeated: int = 0  # repeated random-token sequences measured

    def score(self, role: str, head: str) -> float:
        return self.scores[role][self.heads.index(head)]

    def holders(self, role: str) -> list[str]:
        """The heads holding ``role`` (score >= its threshold), in model order."""
        if role not in self.scores:
            return []
        threshold = self.thresholds[role]
        return [h for h, s in zip(self.heads, self.scores[role], strict=True) if s >= threshold]

    def roles_of(self, head: str) -> list[str]:
        """The roles ``head`` holds, in report order."""
        return [r for r in self.scores if head in self.holders(r)]

    @property
    def held(self) -> dict[str, list[str]]:
        """Every role held by at least one head -> its holders."""
        return {r: hs for r in self.scores if (hs := self.holders(r))}

    def best(self, role: str) -> float:
        """The highest score any head reaches on ``role`` (0 for a role not measured)."""
        return max(self.scores.get(role, (0.0,)), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "roles",
            "model": self.model.to_dict(),
            "task": self.task,
            "heads": list(self.heads),
            "scores": {r: list(v) for r, v in self.scores.items()},
            "thresholds": dict(self.thresholds),
            "not_applicable": dict(self.not_applicable),
            "n_prompts": self.n_prompts,
            "n_repeated": self.n_repeated,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoleResult:
        return cls(
            model=ModelInfo.from_dict(data["model"]),
            task=data["task"],
            heads=tuple(data["heads"]),
            scores={r: tuple(float(x) for x in v) for r, v in data["scores"].items()},
            thresholds={r: float(t) for r, t in data["thresholds"].items()},
            not_applicable=dict(data.get("not_applicable", {})),
            n_prompts=int(data.get("n_prompts", 0)),
            n_repeated=int(data.get("n_repeated", 0)),
        )


@dataclass(frozen=True)
class KeptRole:
    """A teacher head holding a role and its matched student head (None: unmatched), and
    whether that student head holds the same role."""

    role: str
    teacher: str
    student: str | None
    student_holds: bool

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "teacher": self.teacher, "student": self.student,
                "student_holds": self.student_holds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeptRole:
        student = data.get("student")
        return cls(role=str(data["role"]), teacher=str(data["teacher"]),
                   student=None if student is None else str(student),
                   student_holds=bool(data["student_holds"]))


@dataclass(frozen=True)
class MergedHead:
    """A student head holding two or more teacher roles that no single teacher head holds
    together (the "one-man band"), with the teacher heads that hold them."""

    student: str
    roles: tuple[str, ...]
    teacher_heads: dict[str, tuple[str, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {"student": self.student, "roles": list(self.roles),
                "teacher_heads": {r: list(h) for r, h in self.teacher_heads.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MergedHead:
        return cls(student=str(data["student"]), roles=tuple(data["roles"]),
                   teacher_heads={r: tuple(h) for r, h in data["teacher_heads"].items()})


@dataclass
class RoleComparison:
    """A teacher's and a student's head roles on one task, compared.

    ``discarded`` maps each teacher role no student head holds to the teacher heads holding it;
    ``merged`` lists the student heads holding several teacher roles; ``kept`` pairs each
    teacher role-holder with its matched student head."""

    roles: tuple[str, ...]  # the roles compared
    teacher_held: dict[str, list[str]]
    student_held: dict[str, list[str]]
    discarded: dict[str, list[str]]
    merged: list[MergedHead]
    kept: list[KeptRole]

    @property
    def preserved(self) -> list[str]:
        """Teacher roles some student head holds."""
        return [r for r in self.teacher_held if r not in self.discarded]

    def to_dict(self) -> dict[str, Any]:
        return {
            "roles": list(self.roles),
            "teacher_held": self.teacher_held,
            "student_held": self.student_held,
            "discarded": self.discarded,
            "merged": [m.to_dict() for m in self.merged],
            "kept": [k.to_dict() for k in self.kept],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoleComparison:
        def held(name: str) -> dict[str, list[str]]:
            return {r: list(h) for r, h in data.get(name, {}).items()}

        return cls(
            roles=tuple(data["roles"]),
            teacher_held=held("teacher_held"),
            student_held=held("student_held"),
            discarded=held("discarded"),
            merged=[MergedHead.from_dict(m) for m in data.get("merged", [])],
            kept=[KeptRole.from_dict(k) for k in data.get("kept", [])],
        )


def compare_roles(teacher: RoleResult, student: RoleResult,
                  alignment_pairs: Sequence[Any] = (),
                  roles: Sequence[str] | None = None) -> RoleComparison:
    """Compare a teacher's roles with its student's.

    - a teacher role (held by at least one teacher head) that no student head holds is
      **discarded**;
    - a student head that holds two or more teacher roles that no single teacher head holds
      together is a **merged** role (several teacher heads' jobs in one student head);
    - otherwise each teacher role-holder keeps its matched counterpart: the student head the
      alignment matched it to (``alignment_pairs``: objects with ``teacher`` and ``student``,
      a PairReport's ``alignment.pairs``), with whether that head holds the same role.

    ``roles`` restricts the comparison (default: every role both results measured).
    """
    names = tuple(roles) if roles is not None else tuple(
        r for r in teacher.scores if r in student.scores)
    teacher_held = {r: teacher.holders(r) for r in names if teacher.holders(r)}
    student_held = {r: student.holders(r) for r in names if student.holders(r)}
    discarded = {r: hs for r, hs in teacher_held.items() if r not in student_held}
    merged: list[MergedHead] = []
    for head in student.heads:
        held = tuple(r for r in names if r in teacher_held and head in student_held.get(r, ()))
        if len(held) < 2:
            continue
        together = any(all(t in teacher_held[r] for r in held) for t in teacher.heads)
        if not together:
            merged.append(MergedHead(head, held, {r: tuple(teacher_held[r]) for r in held}))
    matched = {p.teacher: p.student for p in alignment_pairs}
    kept = [KeptRole(r, t, matched.get(t), matched.get(t) in student_held.get(r, ()))
            for r, hs in teacher_held.items() for t in hs]
    return RoleComparison(names, teacher_held, student_held, discarded, merged, kept)
