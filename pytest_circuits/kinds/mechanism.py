"""The ``mechanism_preserved`` gate: named teacher components keep an influential counterpart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..components import Component
from ..config.options import DEFAULT_DIRECTION, DEFAULT_MARGIN, GateThresholds
from ..errors import GateConfigError
from ..identity import model_name
from ..results import Blame, MetricCheck
from ..tables import format_table
from .registry import GateKind, Metric, Threshold, Tolerance
from .runner import GateCall, Measurement, run_gate
from .shared import measure_pair, method_settings, pair_headline, pair_models


def assert_mechanism_preserved(
    pair: Any,
    task: Any,
    *,
    components: Sequence[str],
    min_similarity: float | None = 0.5,
    min_influence: float | None = 2.0,
    matching: str = "paper",
    direction: str = DEFAULT_DIRECTION,
    similarity: str = "paper",
    ablation: str = "mean",
    preset: str | None = None,
    method: str | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = DEFAULT_MARGIN,
    baseline_tolerance: Tolerance = None,
) -> Any:
    """Named teacher components (say a "similar member" head) keep an influential student
    counterpart: the matched student component has similarity >= ``min_similarity`` and its
    ablation costs >= ``min_influence`` points. ``matching`` and ``direction`` pair the
    components as in :func:`assert_circuit_aligned`. ``method`` is the sweep algorithm as there:
    "exact", "auto" (every influence that could cross ``min_influence`` is measured exactly) or
    None (the run's ``--circuits-method``, else the default by size). Returns the PairReport."""
    __tracebackhide__ = True
    if isinstance(components, str) or not components:
        raise GateConfigError(
            f"assert_mechanism_preserved: components={components!r} must be a non-empty list "
            "of teacher component names, e.g. ['L1H2', 'MLP0']"
        )
    return run_gate(
        KIND, pair, task, names=components, min_similarity=min_similarity,
        min_influence=min_influence, matching=matching, direction=direction,
        similarity=similarity, ablation=ablation, preset=preset, method=method,
        n_prompts=n_prompts, seed=seed, margin=margin, baseline_tolerance=baseline_tolerance,
    )


def _measure(call: GateCall, method: str | None) -> Measurement:

    names = [Component.parse(c).name for c in call.extra["names"]]
    floor = call.limits["min_influence"]
    # an auto sweep decides exactly the influence floor and the 5 most influential components
    # (pair_report adds compare's own cut points: tolerance, influential, dead floor)
    report, sweeps, estimated = measure_pair(
        call, method, GateThresholds(drop=() if floor is None else (floor,), top_k=5))
    undecided = _undecided(report, names, floor) if estimated else []
    by_teacher = {p.teacher: p for p in report.alignment.pairs}
    missing = [n for n in names if n not in by_teacher]
    if missing and not undecided:
        raise GateConfigError(
            f"assert_mechanism_preserved: teacher components {', '.join(missing)} have no "
            f"matched pair in {model_name(report.teacher.model)} (it has {len(by_teacher)} "
            f"matched components, e.g. {', '.join(sorted(by_teacher)[:4])}); name components "
            "that exist"
        )
    pairs = [by_teacher[name] for name in names if name in by_teacher]
    checks: list[MetricCheck] = []
    values: dict[str, float] = {}
    for p in pairs:
        if call.limits["min_similarity"] is not None:
            checks.append(MetricCheck(f"{p.teacher}.similarity", p.similarity,
                                      call.limits["min_similarity"], ">="))
        if floor is not None:
            checks.append(MetricCheck(f"{p.teacher}.student_influence", p.student_influence,
                                      floor, ">=", p.teacher_influence))
        values[f"{p.teacher}.similarity"] = p.similarity
        values[f"{p.teacher}.student_influence"] = p.student_influence
    return Measurement(
        value=report, checks=checks, values=values,
        blame=[Blame(p.teacher, p.student, {"similarity": p.similarity,
                                            "student_influence": p.student_influence})
               for p in pairs],
        headline=pair_headline("mechanism preservation", report),
        details=lambda line: _details(line, report, call.options.preset, pairs),
        fingerprint=report.fingerprint.to_dict(), models=pair_models(report), report=report,
        sweeps=sweeps, unsettled=undecided, task=report.task,
    )


def _undecided(report: Any, names: Sequence[str], floor: float | None) -> list[str]:
    """The checks an auto sweep's estimates could decide: every check when the matching reads
    influences (causal or tie-aware matching could pair other components), else each named
    component's student influence whose band reaches ``min_influence``."""
    from ..analysis.bounds import matching_reads_influences

    if matching_reads_influences(report):
        return ["the matching (it reads influences)"]
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


def _details(method_line: str, report: Any, preset: str | None, pairs: Sequence[Any]) -> str:
    return (f"  parts: {method_settings(preset, report)}\n  {method_line}\n"
            "  counterparts:\n") + format_table(
        ["teacher", "teacher infl", "student match", "similarity", "student infl"],
        [[p.teacher, p.teacher_influence, p.student, p.similarity, p.student_influence]
         for p in pairs],
    )


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
    measure=_measure,
)
