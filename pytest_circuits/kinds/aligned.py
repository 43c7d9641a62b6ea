"""The ``circuit_aligned`` gate: the student's circuit matches the teacher's (the paper's A)."""

from __future__ import annotations

from typing import Any

from ..config.options import DEFAULT_DIRECTION, DEFAULT_MARGIN, GateThresholds
from ..errors import CircuitAssertionError
from ..results import Blame, MetricCheck
from ..tables import format_table
from .registry import GateKind, Metric, Threshold, Tolerance
from .runner import GateCall, Measurement, run_gate
from .shared import measure_pair, method_settings, pair_headline, pair_models


def assert_circuit_aligned(
    pair: Any,
    task: Any,
    *,
    min_score: float,
    min_weighted_score: float | None = None,
    matching: str = "paper",
    direction: str = DEFAULT_DIRECTION,
    ablation: str = "mean",
    similarity: str = "paper",
    preset: str | None = None,
    method: str | None = None,
    n_prompts: int | None = None,
    seed: int | None = None,
    margin: float = DEFAULT_MARGIN,
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
    ``--circuits-method``, else auto for a model of ``AUTO_MIN_COMPONENTS`` components or
    more). Returns the PairReport.
    """
    __tracebackhide__ = True
    return run_gate(
        KIND, pair, task, min_score=min_score, min_weighted_score=min_weighted_score,
        matching=matching, direction=direction, ablation=ablation, similarity=similarity,
        preset=preset, method=method, n_prompts=n_prompts, seed=seed, margin=margin,
        baseline_tolerance=baseline_tolerance,
    )


#: How many times the gate measures the widest estimates exactly before it leaves an open
#: verdict to the runner's full exact sweep.
SETTLE_ROUNDS = 6


def _measure(call: GateCall, method: str | None) -> Measurement:
    from ..analysis.bounds import widest_estimates
    from ..analysis.cached import settle_pair

    # the score reads every influence; an auto sweep decides exactly compare's own cut points
    # (the tolerance and the influential level: pair_report adds them) and the top 5, and the
    # pair report settles the estimates its floors and ties read
    thresholds = GateThresholds(drop=(), top_k=5)
    settled: dict[str, None] = {}
    first_exact: int | None = None
    for _ in range(SETTLE_ROUNDS):
        report, sweeps, estimated = measure_pair(call, method, thresholds)
        a = report.alignment
        if not a.pairs:
            raise CircuitAssertionError("alignment was computed over zero matched components")
        checks = _checks(call, a)
        exact_now = sum(len(r.exact_names) for r in sweeps.values())
        first_exact = exact_now if first_exact is None else first_exact
        undecided = _open(report, checks) if estimated else []
        # a threshold inside the interval: measure the widest bands exactly and look again
        # (causal matching reads every influence: the runner's exact sweep settles it)
        if not undecided or report.fingerprint.matching == "causal" or not settle_pair(
                call.pair, call.task, call.options.replace(method=method, thresholds=thresholds),
                widest_estimates(report)):
            break
        settled.update(dict.fromkeys(undecided))
    weakest = a.weakest(5)
    values = {"alignment": a.score, "mean_similarity": a.mean_similarity,
              "influence_term": a.influence_term, "weighted_alignment": a.weighted_score,
              "n_pairs": float(len(a.pairs))}
    blame = [Blame(p.teacher, p.student, {
        "similarity": p.similarity, "teacher_share": p.teacher_share,
        "student_share": p.student_share, "contribution": p.contribution,
    }) for p in weakest]
    return Measurement(
        value=report, checks=checks, values=values, blame=blame,
        headline=pair_headline("circuit alignment", report),
        details=lambda line: _details(line, report, call.options.preset, weakest),
        fingerprint=report.fingerprint.to_dict(), models=pair_models(report), report=report,
        sweeps=sweeps, unsettled=undecided, task=report.task, settled=list(settled),
        settled_values=exact_now - (first_exact or 0),
    )


def _checks(call: GateCall, a: Any) -> list[MetricCheck]:
    checks = [MetricCheck("alignment", a.score, call.limits["min_score"], ">=")]
    if call.limits["min_weighted_score"] is not None:
        checks.append(MetricCheck("weighted_alignment", a.weighted_score,
                                  call.limits["min_weighted_score"], ">="))
    return checks


def _open(report: Any, checks: list[MetricCheck]) -> list[str]:
    """The checks whose threshold lies inside the score's interval over the bands."""
    from ..analysis.bounds import alignment_slack, unsettled

    a = report.alignment
    paper, weighted = alignment_slack(report)
    return unsettled(checks, {
        "alignment": (a.score - paper, a.score + paper),
        "weighted_alignment": (a.weighted_score - weighted, a.weighted_score + weighted),
    })


def _details(method_line: str, report: Any, preset: str | None, weakest: Any) -> str:
    a = report.alignment
    return (
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
    measure=_measure,
)
