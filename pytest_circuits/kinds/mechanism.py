"""The ``mechanism_preserved`` gate: named teacher components keep an influential counterpart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import GateConfigError
from ..recording import Blame, MetricCheck
from ..tables import format_table
from .finish import (
    Tolerance,
    bridges_match,
    check_margin,
    finish,
    has_estimates,
    headline,
    matching_reads_influences,
    method_settings,
    model_name,
    pair_result,
    read_baseline_tolerance,
    record_method,
    require_gpu,
    student_must_do_task,
    sweep_method,
    task_options,
)
from .registry import GateKind, Metric, Threshold


def assert_mechanism_preserved(
    pair: Any,
    task: Any,
    *,
    components: Sequence[str],
    min_similarity: float | None = 0.5,
    min_influence: float | None = 2.0,
    matching: str = "paper",
    direction: str = "teacher_to_student",
    similarity: str = "paper",
    ablation: str = "mean",
    preset: str | None = None,
    method: str | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = 0.1,
    baseline_tolerance: Tolerance = None,
) -> Any:
    """Named teacher components (say a "similar member" head) keep an influential student
    counterpart: the matched student component has similarity >= ``min_similarity`` and its
    ablation costs >= ``min_influence`` points. ``matching`` and ``direction`` pair the
    components as in :func:`assert_circuit_aligned`. ``method`` is the sweep algorithm as there:
    "exact", "auto" (every influence that could cross ``min_influence`` is measured exactly) or
    None (the run's ``--circuits-method``, else the default by size). Returns the PairReport."""
    __tracebackhide__ = True
    from ..analysis.cached import as_pair, as_task, pair_report
    from ..components import Component

    if isinstance(components, str) or not components:
        raise GateConfigError(
            f"assert_mechanism_preserved: components={components!r} must be a non-empty list "
            "of teacher component names, e.g. ['L1H2', 'MLP0']"
        )
    limits = KIND.read_thresholds({"min_similarity": min_similarity,
                                   "min_influence": min_influence})
    gate = KIND.function_name
    n_prompts, seed = task_options(n_prompts, seed, gate)
    margin = check_margin(margin, gate)
    read_baseline_tolerance(baseline_tolerance, f"{gate}: baseline_tolerance", KIND)
    requested, origin = sweep_method(method, gate)
    names = [Component.parse(c).name for c in components]
    pair = as_pair(pair)
    require_gpu(gate, pair.teacher, pair.student)
    task = as_task(task, n_prompts, seed, pair.teacher)
    subject = f"{pair.teacher.name} -> {pair.student.name}"
    bridges_match(KIND, task, subject, {"teacher": pair.teacher, "student": pair.student},
                  seed=seed)
    from ..analysis.ablation import GateThresholds

    # an auto sweep decides exactly the influence floor and the 5 most influential components
    # (pair_report adds compare's own cut points: tolerance, influential, dead floor)
    floor = () if limits["min_influence"] is None else (limits["min_influence"],)
    thresholds = GateThresholds(drop=floor, top_k=5)

    def measure(method: str | None) -> Any:
        with student_must_do_task(KIND, pair, task, subject, margin=margin, seed=seed):
            return pair_report(
                pair, task, ablation=ablation, similarity=similarity, matching=matching,
                direction=direction, seed=seed, margin=margin, preset=preset, method=method,
                thresholds=thresholds,
            )

    report = measure(requested)
    undecided: list[str] = []
    if has_estimates(report.teacher.sweep, report.student.sweep):
        undecided = _undecided(report, names, limits)
        if undecided:  # settled by the exact sweeps, never by an estimate
            report = measure("exact")
    by_teacher = {p.teacher: p for p in report.alignment.pairs}
    missing = [n for n in names if n not in by_teacher]
    if missing:
        raise GateConfigError(
            f"assert_mechanism_preserved: teacher components {', '.join(missing)} have no "
            f"matched pair in {model_name(report.teacher.model)} (it has {len(by_teacher)} "
            f"matched components, e.g. {', '.join(sorted(by_teacher)[:4])}); name components "
            "that exist"
        )
    checks: list[MetricCheck] = []
    values: dict[str, float] = {}
    for name in names:
        p = by_teacher[name]
        if limits["min_similarity"] is not None:
            checks.append(MetricCheck(f"{name}.similarity", p.similarity,
                                      limits["min_similarity"], ">="))
        if limits["min_influence"] is not None:
            checks.append(MetricCheck(f"{name}.student_influence", p.student_influence,
                                      limits["min_influence"], ">=", p.teacher_influence))
        values[f"{name}.similarity"] = p.similarity
        values[f"{name}.student_influence"] = p.student_influence
    pairs = [by_teacher[name] for name in names]
    blame = [Blame(p.teacher, p.student, {"similarity": p.similarity,
                                          "student_influence": p.student_influence})
             for p in pairs]
    result = pair_result(KIND, report, checks, values, blame, baseline_tolerance)
    method_line = record_method(result, requested, origin,
                                {"teacher": report.teacher.sweep, "student": report.student.sweep},
                                undecided)
    details = (f"  parts: {method_settings(preset, report)}\n  {method_line}\n"
               "  counterparts:\n") + format_table(
        ["teacher", "teacher infl", "student match", "similarity", "student infl"],
        [[p.teacher, p.teacher_influence, p.student, p.similarity, p.student_influence]
         for p in pairs],
    )
    finish(result, headline("mechanism preservation", report), details, task=task)
    return report


def _undecided(report: Any, names: Sequence[str], limits: dict[str, Any]) -> list[str]:
    """The checks an auto sweep's estimates could decide: every check when the matching reads
    influences (causal or tie-aware matching could pair other components), else each named
    component's student influence whose band reaches ``min_influence``."""
    if matching_reads_influences(report):
        return ["the matching (it reads influences)"]
    floor = limits["min_influence"]
    if floor is None:
        return []
    bands = {e.name: e for e in report.student.sweep.effects}
    undecided = []
    for pair in report.alignment.pairs:
        effect = bands.get(pair.student)
        if pair.teacher not in names or effect is None or effect.is_exact:
            continue
        band = float("inf") if effect.bound is None else effect.bound
        low, high = pair.student_influence - band, pair.student_influence + band
        if not (low >= floor or high < floor):
            undecided.append(f"{pair.teacher}.student_influence")
    return undecided


KIND = GateKind(
    name="mechanism_preserved",
    function=assert_mechanism_preserved,
    meaning="named teacher components keep a similar, influential student counterpart",
    thresholds=(
        Threshold("min_similarity", "similarity", ">=", "similarity", -1.0, 1.0, default=0.5),
        Threshold("min_influence", "student_influence", ">=", "points", 0.0, 100.0,
                  default=2.0),
    ),
    metrics=(
        Metric("similarity", "similarity", ">=", 0.02, per_component=True,
               meaning="similarity of the component's matched student counterpart"),
        Metric("student_influence", "points", ">=", 2.0, per_component=True,
               meaning="the drop the counterpart's ablation causes"),
    ),
    options=("matching", "direction", "similarity", "ablation", "margin", "preset", "method"),
    required=("components",),
)
