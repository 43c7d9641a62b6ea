"""What the reports draw of circuits and head roles: one model's (or a pair's) circuits, roles,
role comparison and matched components on one task, as one typed, torch-free result.

The ``circuit_faithful`` and ``roles_preserved`` gates store it as their result's report, the CLI
``compare --circuits/--roles`` builds it, and the HTML page draws it. Its JSON form has no
``"kind"`` key (a gate result's report read back stays the plain data older releases wrote:
``report["circuits"]["student"]``); :func:`is_circuits_data` recognises it and
:func:`read_report` types any stored report again, this one included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..identity import model_name
from .circuit import CircuitResult
from .roles import RoleComparison, RoleResult

__all__ = ["CircuitsReport", "is_circuits_data", "read_report"]

#: The roles a model plays in a report, in display order.
MODEL_ROLES = ("teacher", "student", "model")


def is_circuits_data(data: Any) -> bool:
    """``data`` is a :meth:`CircuitsReport.to_dict` (a mapping without ``"kind"`` holding
    circuits or roles)."""
    return (isinstance(data, Mapping) and "kind" not in data
            and ("circuits" in data or "roles" in data))


@dataclass
class CircuitsReport:
    """Circuits and head roles of one model (role ``"model"``) or of a pair (``"teacher"`` and
    ``"student"``) on ``task``.

    ``matched`` holds the pair's teacher -> student component matching (``(teacher,
    student)`` names, the alignment's pairs) when one was measured, empty otherwise; ``pair``
    the pair report the matching came from (the roles gate's), when there is one.
    """

    task: str
    circuits: dict[str, CircuitResult] = field(default_factory=dict)
    roles: dict[str, RoleResult] = field(default_factory=dict)
    comparison: RoleComparison | None = None
    matched: tuple[tuple[str, str], ...] = ()
    pair: Any = None  # the PairReport the matching came from, when one was measured

    def __post_init__(self) -> None:
        for role in (*self.circuits, *self.roles):
            if role not in MODEL_ROLES:
                raise ValueError(f"CircuitsReport: model role {role!r} is not one of "
                                 f"{', '.join(MODEL_ROLES)}")

    @property
    def is_pair(self) -> bool:
        return "teacher" in self.circuits or "teacher" in self.roles

    def model_roles(self) -> list[str]:
        """The model roles present, in display order (teacher before student)."""
        present = {*self.circuits, *self.roles}
        return [r for r in MODEL_ROLES if r in present]

    def names(self) -> dict[str, str]:
        """Model role -> model name."""
        found: dict[str, str] = {}
        for role, roles in self.roles.items():
            found[role] = model_name(roles.model)
        for role, circuit in self.circuits.items():
            found.setdefault(role, circuit.model)
        return found

    @property
    def key(self) -> tuple[tuple[str, ...], str]:
        """Which models and task this report is about: what reports of one run merge on."""
        names = self.names()
        return tuple(names[r] for r in self.model_roles()), self.task

    def merged(self, other: CircuitsReport) -> CircuitsReport:
        """This report completed with ``other``'s parts (of the same models and task): the
        circuit gate brings circuits, the roles gate roles and the matching."""
        return CircuitsReport(
            task=self.task,
            circuits={**other.circuits, **self.circuits},
            roles={**other.roles, **self.roles},
            comparison=self.comparison or other.comparison,
            matched=self.matched or other.matched,
            pair=self.pair if self.pair is not None else other.pair,
        )

    def with_matching(self, pairs: Sequence[Any], pair: Any = None) -> CircuitsReport:
        """This report with the matching ``pairs`` (objects with ``teacher`` and ``student``:
        a PairReport's ``alignment.pairs``) when it has none yet."""
        if self.matched:
            return self
        matched = tuple((str(p.teacher), str(p.student)) for p in pairs)
        return CircuitsReport(self.task, dict(self.circuits), dict(self.roles), self.comparison,
                              matched, self.pair if self.pair is not None else pair)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "circuits": {r: c.to_dict() for r, c in self.circuits.items()},
            "roles": {r: x.to_dict() for r, x in self.roles.items()},
            "comparison": None if self.comparison is None else self.comparison.to_dict(),
            "matched": [list(p) for p in self.matched],
            "pair": None if self.pair is None else self.pair.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CircuitsReport:
        comparison = data.get("comparison")
        pair = data.get("pair")
        circuits = {r: CircuitResult.from_dict(c) for r, c in data.get("circuits", {}).items()}
        task = data.get("task") or next((c.task for c in circuits.values()), "")
        if pair is not None:
            from .reports import report_from_dict

            pair = report_from_dict(dict(pair))
        return cls(
            task=str(task),
            circuits=circuits,
            roles={r: RoleResult.from_dict(x) for r, x in data.get("roles", {}).items()},
            comparison=None if comparison is None else RoleComparison.from_dict(comparison),
            matched=tuple((str(t), str(s)) for t, s in data.get("matched", [])),
            pair=pair,
        )


def read_report(data: Mapping[str, Any]) -> Any:
    """Any report a gate result stores, as its typed class: a :class:`CircuitsReport` for the
    circuit and roles gates' data, a ModelReport or PairReport (``report_from_dict``, which
    raises ``ReportFormatError`` on anything else) otherwise."""
    if is_circuits_data(data):
        return CircuitsReport.from_dict(data)
    from .reports import report_from_dict

    return report_from_dict(dict(data))
