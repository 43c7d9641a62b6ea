"""The ``roles_preserved`` gate: every named teacher head role has a student head holding it."""

from __future__ import annotations

from typing import Any

from ..config.options import DEFAULT_DIRECTION, DEFAULT_MARGIN, GateThresholds
from ..errors import GateConfigError
from ..results import Blame, MetricCheck
from ..results.roles import check_roles
from ..tables import format_table
from .registry import GateKind, Metric, Threshold, Tolerance
from .runner import GateCall, Measurement, run_gate
from .shared import measure_pair, method_settings, pair_headline, pair_models


def assert_roles_preserved(
    pair: Any,
    task: Any,
    *,
    roles: Any = "all",
    role_thresholds: dict[str, float] | None = None,
    max_merged: float | None = None,
    matching: str = "paper",
    direction: str = DEFAULT_DIRECTION,
    similarity: str = "paper",
    ablation: str = "mean",
    preset: str | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = DEFAULT_MARGIN,
    baseline_tolerance: Tolerance = None,
) -> Any:
    """Every teacher head role in ``roles`` ("all": every role the teacher holds on the task;
    or a list of names: previous_token, duplicate_token, induction, similar_member, mover,
    inhibition) has a student head holding it (its score reaches the role's threshold; the
    documented thresholds unless ``role_thresholds`` gives others, e.g. ``{"mover": 0.25}``).

    A role no student head holds is *discarded* and fails the gate, naming the teacher heads
    that held it; a student head holding two or more teacher roles that no teacher head holds
    together is *merged* (reported; ``max_merged`` also bounds how many there may be). Each
    teacher role-holder is shown with its matched student head (``matching``, ``direction``,
    ``similarity``, ``preset`` as in :func:`assert_circuit_aligned`). Returns the
    :class:`RoleComparison`.
    """
    __tracebackhide__ = True
    check_roles(roles, "assert_roles_preserved")  # before any model loads
    read_role_thresholds(role_thresholds)
    return run_gate(
        KIND, pair, task, roles=roles, role_thresholds=role_thresholds, max_merged=max_merged,
        matching=matching, direction=direction, similarity=similarity, ablation=ablation,
        preset=preset, n_prompts=n_prompts, seed=seed, margin=margin,
        baseline_tolerance=baseline_tolerance,
    )


def read_role_thresholds(value: Any) -> dict[str, float]:
    """``role_thresholds`` validated: a mapping of role names to numbers in [0, 1]."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise GateConfigError(
            f"assert_roles_preserved: role_thresholds={value!r} must be a non-empty mapping of "
            "role names to scores in [0, 1], e.g. {'mover': 0.25}"
        )
    out = {}
    for role, number in value.items():
        check_roles([role], "assert_roles_preserved: role_thresholds")
        if (isinstance(number, bool) or not isinstance(number, (int, float))
                or not 0.0 <= float(number) <= 1.0):
            raise GateConfigError(
                f"assert_roles_preserved: role_thresholds[{role!r}]={number!r} must be a score "
                "in [0, 1] (a head holds the role when its score reaches it)"
            )
        out[role] = float(number)
    return out


def _with_thresholds(result: Any, thresholds: dict[str, float]) -> Any:
    import dataclasses

    chosen = {r: thresholds.get(r, t) for r, t in result.thresholds.items()}
    return dataclasses.replace(result, thresholds=chosen)


def _held_roles(call: GateCall, asked: Any, names: tuple[str, ...], teacher: Any
                ) -> tuple[str, ...]:
    """The roles the gate checks: with "all" every role the teacher holds; a named role the
    teacher does not hold (or no role at all) is an error naming its best score."""
    held = teacher.held
    if asked == "all":
        names = tuple(r for r in names if r in held)
        if not names:
            raise GateConfigError(
                f"assert_roles_preserved: the teacher {call.pair.teacher.name} holds no head "
                f"role on task '{call.task.name}' (best scores: "
                + ", ".join(f"{r} {teacher.best(r):.2f}" for r in teacher.scores)
                + "), so there is nothing to preserve; gate another task or name roles it holds"
            )
    else:
        missing = [r for r in names if r not in held]
        if missing:
            why = [f"{r}: {teacher.not_applicable[r]}" if r in teacher.not_applicable else
                   f"{r}: best teacher score {teacher.best(r):.2f} < threshold "
                   f"{teacher.thresholds[r]:g}" for r in missing]
            raise GateConfigError(
                f"assert_roles_preserved: the teacher {call.pair.teacher.name} holds no "
                f"{', '.join(missing)} head on task '{call.task.name}' ({'; '.join(why)}); "
                "name roles it holds, or roles='all' (every role it holds)"
            )
    return names


def _measure(call: GateCall, method: str | None) -> Measurement:
    from ..analysis.bounds import matching_reads_influences
    from ..analysis.roles import head_roles
    from ..results.circuit_report import CircuitsReport
    from ..results.roles import compare_roles

    asked = call.extra["roles"]
    names = check_roles(asked, "assert_roles_preserved")
    chosen = read_role_thresholds(call.extra.get("role_thresholds"))
    teacher = _with_thresholds(
        head_roles(call.pair.teacher, call.task, roles=names, seed=call.options.seed), chosen)
    student = _with_thresholds(
        head_roles(call.pair.student, call.task, roles=names, seed=call.options.seed), chosen)
    names = _held_roles(call, asked, names, teacher)
    report, sweeps, estimated = measure_pair(call, method, GateThresholds(drop=(), top_k=5))
    comparison = compare_roles(teacher, student, report.alignment.pairs, roles=names)
    checks = [MetricCheck(f"{r}.role_score", student.best(r), teacher.thresholds[r], ">=",
                          teacher.best(r)) for r in names]
    if call.limits["max_merged"] is not None:
        checks.append(MetricCheck("merged_heads", float(len(comparison.merged)),
                                  call.limits["max_merged"], "<="))
    values = {f"{r}.role_score": student.best(r) for r in names}
    values["discarded_roles"] = float(len(comparison.discarded))
    values["merged_heads"] = float(len(comparison.merged))
    blame = [Blame(k.teacher, k.student, {
        "teacher_score": teacher.score(k.role, k.teacher),
        "student_score": student.score(k.role, k.student) if k.student else 0.0})
        for k in comparison.kept if k.role in comparison.discarded]
    undecided = (["the matching (it reads influences)"]
                 if estimated and matching_reads_influences(report) else [])
    return Measurement(
        value=comparison, checks=checks, values=values, blame=blame,
        headline=pair_headline("role preservation", report),
        details=lambda line: _details(line, call.options.preset, report, comparison,
                                      teacher, student),
        fingerprint=report.fingerprint.to_dict(), models=pair_models(report),
        report=CircuitsReport(report.task, roles={"teacher": teacher, "student": student},
                              comparison=comparison).with_matching(report.alignment.pairs,
                                                                   report),
        sweeps=sweeps, unsettled=undecided, task=report.task,
    )


def _details(method_line: str, preset: str | None, report: Any, comparison: Any,
             teacher: Any, student: Any) -> str:
    lines = [f"  parts: {method_settings(preset, report)}", f"  {method_line}"]
    for role, heads in comparison.discarded.items():
        lines.append(f"  discarded: {role} (teacher {', '.join(heads)}; best student head "
                     f"{student.best(role):.2f} < {student.thresholds[role]:g})")
    for merged in comparison.merged:
        held_by = "; ".join(f"{r}: {', '.join(h)}" for r, h in merged.teacher_heads.items())
        lines.append(f"  merged: student {merged.student} holds {' + '.join(merged.roles)} "
                     f"(teacher {held_by})")
    table = format_table(
        ["role", "teacher head", "score", "student match", "match score", "match holds"],
        [[k.role, k.teacher, teacher.score(k.role, k.teacher), k.student or "-",
          student.score(k.role, k.student) if k.student else None,
          "yes" if k.student_holds else "no"] for k in comparison.kept])
    return "\n".join(lines) + "\n  role holders:\n" + table


KIND = GateKind(
    name="roles_preserved",
    function=assert_roles_preserved,
    meaning="every named teacher head role (previous-token, duplicate-token, induction, "
            "similar-member, mover, inhibition) has a student head holding it",
    thresholds=(
        Threshold("max_merged", "merged_heads", "<=", "count", 0.0, 1e6),
    ),
    metrics=(
        Metric("role_score", "score", ">=", 0.05, per_component=True,
               meaning="per role (ROLE.role_score): the best student head's score on a "
                       "teacher role; checked against the role's threshold"),
        Metric("discarded_roles", "count", "<=", 0.0,
               meaning="teacher roles no student head holds"),
        Metric("merged_heads", "count", "<=", 0.0,
               meaning="student heads holding two or more teacher roles no teacher head "
                       "holds together"),
    ),
    options=("roles", "role_thresholds", "matching", "direction", "similarity", "ablation",
             "margin", "preset"),
    default_check="that every named teacher role has a student head holding it",
    measure=_measure,
)
