"""The ``circuit_aligned`` gate: the student's circuit matches the teacher's (the paper's A)."""

from __future__ import annotations

from typing import Any

from ..errors import CircuitAssertionError
from ..recording import Blame, MetricCheck
from ..tables import format_table
from .finish import (
    Tolerance,
    alignment_slack,
    bridges_match,
    check_margin,
    finish,
    has_estimates,
    headline,
    method_settings,
    pair_result,
    read_baseline_tolerance,
    record_method,
    require_gpu,
    student_must_do_task,
    sweep_method,
    task_options,
    unsettled,
)
from .registry import GateKind, Metric, Threshold


def assert_circuit_aligned(
    pair: Any,
    task: Any,
    *,
    min_score: float,
    min_weighted_score: float | None = None,
    matching: str = "paper",
    direction: str = "teacher_to_student",
    ablation: str = "mean",
    similarity: str = "paper",
    preset: str | None = None,
    method: str | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = 0.1,
    baseline_tolerance: Tolerance = None,
) -> Any:
    """The student's circuit matches the teacher's: alignment score A >= ``min_score``.

    ``matching`` pairs components: "paper" (most similar component) or "causal" (nearest
    ablation effect); ``direction`` says who picks ("teacher_to_student", the paper's, or
    "student_to_teacher"). ``min_weighted_score`` also gates the influence-weighted variant,
    which drops when an influential teacher component's counterpart carries no influence.
    ``method`` is the sweep algorithm: "exact", "auto" (screen by attribution, then measure
    exactly every component whose influence could cross compare's cut points or be among the 5
    largest; the score itself reads the rest as bounded estimates) or None (the run's
    ``--circuits-method``, else auto for a model of ``settings.AUTO_MIN_COMPONENTS`` components
    or more). Returns the PairReport.
    """
    __tracebackhide__ = True
    from ..analysis.cached import as_pair, as_task, pair_report

    limits = KIND.read_thresholds(
        {"min_score": min_score, "min_weighted_score": min_weighted_score}
    )
    gate = KIND.function_name
    n_prompts, seed = task_options(n_prompts, seed, gate)
    margin = check_margin(margin, gate)
    read_baseline_tolerance(baseline_tolerance, f"{gate}: baseline_tolerance", KIND)
    requested, origin = sweep_method(method, gate)
    pair = as_pair(pair)
    require_gpu(gate, pair.teacher, pair.student)
    task = as_task(task, n_prompts, seed, pair.teacher)
    subject = f"{pair.teacher.name} -> {pair.student.name}"
    bridges_match(KIND, task, subject, {"teacher": pair.teacher, "student": pair.student},
                  seed=seed)
    from ..analysis.ablation import GateThresholds

    # the score reads every influence; an auto sweep decides exactly compare's own cut points
    # (tolerance, influential, dead floor, noise floor: pair_report adds them) and the top 5
    thresholds = GateThresholds(drop=(), top_k=5)

    def measure(method: str | None) -> Any:
        with student_must_do_task(KIND, pair, task, subject, margin=margin, seed=seed):
            return pair_report(
                pair, task, ablation=ablation, similarity=similarity, matching=matching,
                direction=direction, seed=seed, margin=margin, preset=preset, method=method,
                thresholds=thresholds,
            )

    report = measure(requested)
    checks = _checks(report, limits)
    undecided: list[str] = []
    if has_estimates(report.teacher.sweep, report.student.sweep):
        # the score reads every matched influence: a verdict that the estimates' bands could
        # flip is settled by the exact sweeps (see finish.alignment_slack)
        paper, weighted = alignment_slack(report)
        a = report.alignment
        undecided = unsettled(checks, {
            "alignment": (a.score - paper, a.score + paper),
            "weighted_alignment": (a.weighted_score - weighted, a.weighted_score + weighted),
        })
        if undecided:
            report = measure("exact")
            checks = _checks(report, limits)
    a = report.alignment
    values = {
        "alignment": a.score,
        "mean_similarity": a.mean_similarity,
        "influence_term": a.influence_term,
        "weighted_alignment": a.weighted_score,
        "n_pairs": float(len(a.pairs)),
    }
    weakest = a.weakest(5)
    blame = [
        Blame(p.teacher, p.student, {
            "similarity": p.similarity, "teacher_share": p.teacher_share,
            "student_share": p.student_share, "contribution": p.contribution,
        })
        for p in weakest
    ]
    result = pair_result(KIND, report, checks, values, blame, baseline_tolerance)
    method_line = record_method(result, requested, origin,
                                {"teacher": report.teacher.sweep, "student": report.student.sweep},
                                undecided)
    details = (
        f"  parts: mean similarity {a.mean_similarity:.4f}, influence term "
        f"{a.influence_term:+.4f}, weighted variant {a.weighted_score:.4f} "
        f"({len(a.pairs)} matched pairs, {method_settings(preset, report)})\n"
        f"  {method_line}\n"
        "  pairs that pull the score down most:\n"
        + format_table(
            ["teacher", "student", "similarity", "teacher share", "student share", "term"],
            [[p.teacher, p.student, p.similarity, p.teacher_share, p.student_share,
              p.contribution] for p in weakest],
        )
    )
    finish(result, headline("circuit alignment", report), details, task=task)
    return report


def _checks(report: Any, limits: dict[str, Any]) -> list[MetricCheck]:
    a = report.alignment
    if not a.pairs:
        raise CircuitAssertionError("alignment was computed over zero matched components")
    checks = [MetricCheck("alignment", a.score, limits["min_score"], ">=")]
    if limits["min_weighted_score"] is not None:
        checks.append(MetricCheck("weighted_alignment", a.weighted_score,
                                  limits["min_weighted_score"], ">="))
    return checks


KIND = GateKind(
    name="circuit_aligned",
    function=assert_circuit_aligned,
    meaning="the student's circuit matches the teacher's: the paper's alignment score A",
    thresholds=(
        Threshold("min_score", "alignment", ">=", "score", 0.0, 1.0, required=True),
        Threshold("min_weighted_score", "weighted_alignment", ">=", "score", 0.0, 1.0),
    ),
    metrics=(
        Metric("alignment", "score", ">=", 0.02,
               meaning="A: mean similarity of matched pairs weighted by influence agreement"),
        Metric("mean_similarity", "similarity", ">=", 0.02,
               meaning="mean similarity of the matched pairs"),
        Metric("influence_term", "score difference", None,
               meaning="how much influence disagreement moves A"),
        Metric("weighted_alignment", "score", ">=", 0.02,
               meaning="the influence-weighted variant of A"),
        Metric("n_pairs", "count", None, meaning="matched teacher/student pairs"),
    ),
    options=("matching", "direction", "ablation", "similarity", "margin", "preset", "method"),
)
