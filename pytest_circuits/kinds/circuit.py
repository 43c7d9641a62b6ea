"""The ``circuit_faithful`` gate: a model's circuit (iterative node pruning) is faithful and
small; in a pair, the student's circuit is not much smaller than its teacher's, nor each of its
nodes much more critical.

The circuit and its two ratios are those of
:class:`~pytest_circuits.results.CircuitResult`: faithfulness is the logit difference with only
the circuit kept over the full model's (the paper's "14 heads + 11 MLPs keep 81%").
"""

from __future__ import annotations

import math
from typing import Any

from ..config.options import DEFAULT_MARGIN
from ..errors import GateConfigError
from ..results import Blame, MetricCheck
from ..results.circuit import check_ablation, check_threshold
from ..tables import format_table
from .registry import GateKind, Metric, Threshold, Tolerance
from .runner import GateCall, Measurement, run_gate

#: The pruning threshold the gate discovers circuits at unless told otherwise (the paper's).
DEFAULT_PRUNE_THRESHOLD = 0.20
_GATE = "assert_circuit_faithful"
_PAIR_ONLY = ("max_circuit_ratio", "max_node_drop")


def assert_circuit_faithful(
    model_or_pair: Any,
    task: Any,
    *,
    min_faithfulness: float | None = None,
    max_nodes: float | None = None,
    max_circuit_ratio: float | None = None,
    max_node_drop: float | None = None,
    threshold: float = DEFAULT_PRUNE_THRESHOLD,
    ablation: str = "mean",
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = DEFAULT_MARGIN,
    baseline_tolerance: Tolerance = None,
) -> Any:
    """The checked model's circuit (found by pruning at ``threshold``, ``ablation`` ablation)
    keeps >= ``min_faithfulness`` of its full logit difference on its own and has at most
    ``max_nodes`` heads and MLPs. On a pair the student is checked, and also: its circuit is at
    most ``max_circuit_ratio`` times the teacher's in size, and its worst single-node drop (the
    points lost when its most critical node alone is removed from the circuit) exceeds the
    teacher's worst by at most ``max_node_drop`` points. Returns the checked model's
    :class:`~pytest_circuits.results.CircuitResult`."""
    __tracebackhide__ = True
    check_threshold(threshold, _GATE)
    check_ablation(ablation, _GATE)
    return run_gate(
        KIND, model_or_pair, task, min_faithfulness=min_faithfulness, max_nodes=max_nodes,
        max_circuit_ratio=max_circuit_ratio, max_node_drop=max_node_drop, threshold=threshold,
        ablation=ablation, n_prompts=n_prompts, seed=seed, margin=margin,
        baseline_tolerance=baseline_tolerance,
    )


def _check(call: GateCall) -> None:
    if call.pair is None:
        given = [name for name in _PAIR_ONLY if call.limits[name] is not None]
        if given:
            raise GateConfigError(
                f"{_GATE}: {', '.join(given)} compare a student's circuit with its teacher's, "
                f"but a single model ({call.model.name}) was given; pass a pair (teacher, "
                "student) or drop them")
    check_threshold(call.extra.get("threshold", DEFAULT_PRUNE_THRESHOLD), _GATE)


def _ratio(student: int, teacher: int) -> float:
    if teacher == 0:
        return 1.0 if student == 0 else math.inf
    return student / teacher


def _measure(call: GateCall, method: str | None) -> Measurement:
    from ..analysis.ablation import make_fingerprint
    from ..analysis.circuits import circuit_result
    from ..results.circuit_report import CircuitsReport

    options = call.options
    settings = dict(threshold=call.extra.get("threshold", DEFAULT_PRUNE_THRESHOLD),
                    ablation=options.ablation, seed=options.seed, stability=None,
                    margin=options.margin)
    checked = circuit_result(call.model, call.task, **settings)
    teacher = circuit_result(call.pair.teacher, call.task, **settings) if call.pair else None
    checks, values = _checks(call.limits, checked, teacher)
    blame = [Blame(name, None, {"node_drop": drop}) for name, drop in checked.critical_nodes(5)]
    roles = {"teacher": teacher, "student": checked} if teacher else {"model": checked}
    subject = call.pair.name if call.pair is not None else call.model.name
    fingerprint = make_fingerprint(call.model, call.task, analysis="circuit",
                                   ablation=options.ablation, method="prune",
                                   seed=options.seed).to_dict()
    return Measurement(
        value=checked,
        checks=checks,
        values=values,
        blame=blame,
        headline=(f"circuit faithfulness of {subject} on task '{call.task.name}' (pruning at "
                  f"T={checked.threshold:g}, {checked.ablation} ablation)"),
        details=lambda line: _details(roles),
        fingerprint=fingerprint,
        models={role: model.describe() for role, model in call.roles.items()},
        report=CircuitsReport(call.task.name, circuits=roles),
    )


def _checks(limits: dict[str, float | None], checked: Any, teacher: Any
            ) -> tuple[list[MetricCheck], dict[str, float]]:
    """The checks the thresholds ask for, and every value the gate reports."""
    values: dict[str, float] = {
        "faithfulness": checked.faithfulness,
        "completeness": checked.completeness,
        "nodes": float(checked.size),
        "circuit_heads": float(checked.n_heads),
        "circuit_mlps": float(checked.n_mlps),
        "worst_node_drop": checked.worst_node_drop,
    }
    checks: list[MetricCheck] = []
    t_faith = teacher.faithfulness if teacher else None
    t_size = float(teacher.size) if teacher else None
    if limits["min_faithfulness"] is not None:
        checks.append(MetricCheck("faithfulness", checked.faithfulness,
                                  limits["min_faithfulness"], ">=", t_faith))
    if limits["max_nodes"] is not None:
        checks.append(MetricCheck("nodes", float(checked.size), limits["max_nodes"], "<=",
                                  t_size))
    if teacher is None:
        return checks, values
    ratio = _ratio(checked.size, teacher.size)
    increase = checked.worst_node_drop - teacher.worst_node_drop
    values.update({
        "teacher_faithfulness": teacher.faithfulness,
        "teacher_nodes": float(teacher.size),
        "teacher_worst_node_drop": teacher.worst_node_drop,
        "circuit_ratio": ratio,
        "node_drop_increase": increase,
    })
    if limits["max_circuit_ratio"] is not None:
        checks.append(MetricCheck("circuit_ratio", ratio, limits["max_circuit_ratio"], "<="))
    if limits["max_node_drop"] is not None:
        checks.append(MetricCheck("node_drop_increase", increase, limits["max_node_drop"],
                                  "<=", teacher.worst_node_drop))
    return checks, values


def _details(roles: dict[str, Any]) -> str:
    table = format_table(
        ["model", "nodes", "heads", "MLPs", "faithfulness", "completeness", "worst drop",
         "most critical nodes"],
        [[f"{role} {r.model}", r.size, r.n_heads, r.n_mlps, r.faithfulness, r.completeness,
          r.worst_node_drop,
          ", ".join(f"{name} {drop:.1f}" for name, drop in r.critical_nodes(3)) or "-"]
         for role, r in roles.items()],
    )
    lines = [table, "  circuits:"]
    for role, r in roles.items():
        lines.append(f"    {role}: " + (" ".join(r.nodes) or "(empty)"))
    return "\n".join(lines)


KIND = GateKind(
    name="circuit_faithful",
    function=assert_circuit_faithful,
    meaning=("the model's circuit (iterative node pruning) keeps enough of its logit difference "
             "with only the circuit kept and is small enough; on a pair, the student's circuit "
             "is not much smaller than the teacher's nor its nodes much more critical"),
    thresholds=(
        Threshold("min_faithfulness", "faithfulness", ">=", "share", 0.0, 10.0),
        Threshold("max_nodes", "nodes", "<=", "count", 0.0, 1e6),
        Threshold("max_circuit_ratio", "circuit_ratio", "<=", "share", 0.0, 1e3),
        Threshold("max_node_drop", "node_drop_increase", "<=", "points", -1000.0, 1000.0),
    ),
    metrics=(
        Metric("faithfulness", "share", ">=", 0.05,
               meaning=("logit difference with only the circuit kept, over the full model's"
                        " (the checked model: the student of a pair)")),
        Metric("completeness", "share", ">=", 0.1,
               meaning="1 - (logit difference with the circuit ablated, over the full model's)"),
        Metric("nodes", "count", "<=", 2.0, meaning="heads and MLPs in the circuit"),
        Metric("circuit_heads", "count", None, meaning="heads in the circuit"),
        Metric("circuit_mlps", "count", None, meaning="MLPs in the circuit"),
        Metric("worst_node_drop", "points", "<=", 10.0,
               meaning="points lost when the circuit's most critical node alone is removed"),
        Metric("teacher_faithfulness", "share", None, meaning="the teacher's faithfulness"),
        Metric("teacher_nodes", "count", None, meaning="the teacher circuit's size"),
        Metric("teacher_worst_node_drop", "points", None,
               meaning="the teacher circuit's worst single-node drop"),
        Metric("circuit_ratio", "share", "<=", 0.25,
               meaning="student circuit size over the teacher's"),
        Metric("node_drop_increase", "points", "<=", 10.0,
               meaning="student worst single-node drop minus the teacher's"),
    ),
    options=("threshold", "ablation", "margin"),
    takes_model=True,
    measure=_measure,
    check=_check,
)
