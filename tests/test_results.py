"""Typed analysis results survive JSON: every report type round-trips field by field (NaN and
infinities included, tuples staying tuples), and report_from_dict picks the type by "kind"."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_circuits.analysis import engine
from pytest_circuits.analysis.ablation import (
    ComponentEffect,
    SweepResult,
    TaskPerformance,
)
from pytest_circuits.analysis.ablation import (
    measure_task_performance as task_performance,
)
from pytest_circuits.analysis.comparison import (
    Alignment,
    AmbiguousGroup,
    CompareSettings,
    Discarded,
    MatchedPair,
    ModelReport,
    PairReport,
    ReportFormatError,
    compare,
    report_from_dict,
)
from pytest_circuits.analysis.fingerprint import MethodFingerprint
from pytest_circuits.errors import CircuitsError, NonFiniteError
from pytest_circuits.identity import ModelInfo
from pytest_circuits.metrics import BrittlenessDelta, BrittlenessSummary
from pytest_circuits.models import load_model, load_pair
from pytest_circuits.tasks import builtin_task
from pytest_circuits.zoo import zoo_path

ROUND_TRIPS = settings(max_examples=40, deadline=None)


def through_json(data: dict[str, Any]) -> Any:
    """What a reader of the results file gets back (Python's json keeps NaN and Infinity)."""
    return json.loads(json.dumps(data))


def assert_same(expected: Any, actual: Any, where: str = "report") -> None:
    """Field-by-field equality in which NaN equals NaN and a tuple never equals a list."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
    if dataclasses.is_dataclass(expected):
        for f in dataclasses.fields(expected):
            assert_same(getattr(expected, f.name), getattr(actual, f.name), f"{where}.{f.name}")
    elif isinstance(expected, float):
        assert (math.isnan(expected) and math.isnan(actual)) or expected == actual, where
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    else:
        assert actual == expected, where


# --------------------------------------------------------------------------- strategies

numbers = st.floats(allow_nan=True, allow_infinity=True)
names = st.sampled_from(["L0H0", "L0H1", "L1H3", "MLP0", "MLP1"])
text = st.text(st.characters(codec="utf-8"), max_size=12)

model_infos = st.builds(
    ModelInfo,
    name=text, source=text, architecture=text, kind=st.sampled_from(["causal", "masked"]),
    n_layers=st.integers(1, 48), n_heads=st.integers(1, 64), d_head=st.integers(1, 256),
    d_model=st.integers(1, 8192), n_params=st.integers(1, 10**10), dtype=text,
    device_kind=text, processing=text, weights_sha256=text, family=text,
    n_kv_heads=st.none() | st.integers(1, 64),
)
fingerprints = st.builds(
    MethodFingerprint,
    analysis=text, ablation=text, method=text, task=text, task_sha256=text,
    n_prompts=st.integers(1, 1000), n_reference=st.integers(1, 1000),
    seed=st.integers(0, 2**31), dtype=text, similarity=text, matching=text,
    direction=st.sampled_from(["", "teacher_to_student", "student_to_teacher"]),
    device_kind=text, versions=st.dictionaries(text, text, max_size=3),
    tie_margin=st.none() | numbers, noise_floor=st.none() | numbers,
)
effects = st.builds(
    ComponentEffect,
    name=names, kind=st.sampled_from(["head", "mlp"]), layer=st.integers(0, 11),
    head=st.none() | st.integers(0, 11), ablated_metric=numbers, retained=numbers,
    drop=numbers, influence=numbers, method=st.sampled_from(["exact", "attribution"]),
)
performances = st.builds(
    TaskPerformance,
    model=text, task=text, mean_logit_diff=numbers,
    per_prompt=st.lists(numbers, max_size=5).map(tuple), accuracy=numbers,
    pairwise_accuracy=numbers,
)
sweeps = st.builds(
    SweepResult,
    model=model_infos, task=text, clean_metric=numbers, performance=performances,
    effects=st.lists(effects, max_size=4), fingerprint=fingerprints,
    confirm_top_k=st.none() | st.integers(0, 10),
)
summaries = st.builds(
    BrittlenessSummary,
    n_components=st.integers(1, 500), mean_drop=numbers,
    mean_drop_ci=st.tuples(numbers, numbers), severity=numbers, worst_drop=numbers,
    worst_component=names, count_above_tolerance=st.integers(0, 500), worst5_mean=numbers,
    gini=numbers, tolerance=numbers, limit=numbers, alpha=numbers,
)
deltas = st.builds(
    BrittlenessDelta,
    compression=numbers, mean_drop=numbers, severity=numbers, worst_drop=numbers,
    worst5_mean=numbers, gini=numbers, count_above_tolerance=st.integers(-500, 500),
    mean_drop_per_compression=st.none() | numbers,
    severity_per_compression=st.none() | numbers,
    worst_drop_per_compression=st.none() | numbers,
    worst5_mean_per_compression=st.none() | numbers,
    gini_per_compression=st.none() | numbers,
    count_above_tolerance_per_compression=st.none() | numbers,
)
model_reports = st.builds(
    ModelReport,
    model=model_infos, task=text, performance=performances, sweep=sweeps,
    brittleness=summaries, fingerprint=fingerprints,
)
matched_pairs = st.builds(
    MatchedPair,
    teacher=names, student=names, kind=st.sampled_from(["head", "mlp"]), similarity=numbers,
    teacher_influence=numbers, student_influence=numbers, teacher_share=numbers,
    student_share=numbers, candidates=st.lists(names, max_size=3).map(tuple),
)
ambiguous_groups = st.builds(
    AmbiguousGroup,
    kind=st.sampled_from(["head", "mlp"]), teachers=st.lists(names, max_size=3).map(tuple),
    students=st.lists(names, max_size=3).map(tuple),
)
alignments = st.builds(
    Alignment,
    score=numbers, mean_similarity=numbers, influence_term=numbers, weighted_score=numbers,
    pairs=st.lists(matched_pairs, max_size=4).map(tuple),
)
discards = st.builds(
    Discarded,
    teacher=names, teacher_influence=numbers, student=st.none() | names,
    similarity=st.none() | numbers, student_influence=st.none() | numbers, reason=text,
)
# compare refuses a model that does not perform the task, so a pair report's clean metrics are
# positive and finite (behavior_retained, written into the JSON, divides by the teacher's)
performing_reports = st.builds(
    ModelReport,
    model=model_infos, task=text,
    performance=st.builds(
        TaskPerformance,
        model=text, task=text, mean_logit_diff=st.floats(0.1, 1e6),
        per_prompt=st.lists(numbers, max_size=5).map(tuple), accuracy=numbers,
        pairwise_accuracy=numbers,
    ),
    sweep=sweeps, brittleness=summaries, fingerprint=fingerprints,
)
fan_ins = st.dictionaries(names, st.lists(names, min_size=1, max_size=3), max_size=3)
pair_reports = st.builds(
    PairReport,
    teacher=performing_reports, student=performing_reports, task=text, alignment=alignments,
    brittleness_delta=deltas, compression=numbers, fan_in=fan_ins, fan_in_all=fan_ins,
    discarded=st.lists(discards, max_size=3), fingerprint=fingerprints,
    settings=st.builds(
        CompareSettings, tolerance=numbers, influential=numbers, weak_similarity=numbers,
        min_student_influence=numbers, margin=numbers,
    ),
    ambiguous=st.lists(ambiguous_groups, max_size=2),
)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        (ComponentEffect, effects),
        (TaskPerformance, performances),
        (SweepResult, sweeps),
        (BrittlenessSummary, summaries),
        (BrittlenessDelta, deltas),
        (MatchedPair, matched_pairs),
        (Alignment, alignments),
        (Discarded, discards),
        (AmbiguousGroup, ambiguous_groups),
        (MethodFingerprint, fingerprints),
        (ModelReport, model_reports),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_every_result_type_round_trips_through_json(cls: type, values: Any) -> None:
    @ROUND_TRIPS
    @given(values)
    def check(value: Any) -> None:
        assert_same(value, cls.from_dict(through_json(value.to_dict())))

    check()


@ROUND_TRIPS
@given(pair_reports)
def test_pair_report_round_trips_through_json_and_report_from_dict(report: PairReport) -> None:
    data = through_json(report.to_dict())
    assert data["kind"] == "pair"
    assert_same(report, PairReport.from_dict(data))
    assert_same(report, report_from_dict(data))


@ROUND_TRIPS
@given(model_reports)
def test_report_from_dict_reads_a_model_report_by_its_kind(report: ModelReport) -> None:
    data = through_json(report.to_dict())
    assert data["kind"] == "model"
    assert_same(report, report_from_dict(data))


def test_round_trip_keeps_nan_and_infinities_as_such() -> None:
    perf = TaskPerformance("m", "t", math.nan, (math.inf, -math.inf, 1.5), 1.0, 1.0)
    back = TaskPerformance.from_dict(through_json(perf.to_dict()))
    assert math.isnan(back.mean_logit_diff)
    assert back.per_prompt[:2] == (math.inf, -math.inf)
    assert isinstance(back.per_prompt, tuple)


@pytest.fixture(scope="module")
def zoo_report() -> PairReport:
    pair = load_pair("zoo:tiny-teacher", "zoo:tiny-student")
    return compare(pair, builtin_task("numerals", n_prompts=8, seed=3))


def test_a_real_pair_report_round_trips_with_typed_parts(zoo_report: PairReport) -> None:
    back = report_from_dict(through_json(zoo_report.to_dict()))
    assert_same(zoo_report, back)
    assert isinstance(back, PairReport)
    assert isinstance(back.teacher.model, ModelInfo)
    assert back.teacher.model.name == "zoo:tiny-teacher"
    assert back.fingerprint.direction == "teacher_to_student"
    assert back.fingerprint.matching == "paper"
    assert back.fingerprint.method == "exact"
    # the derived numbers read the same from the copy
    assert back.behavior_retained == zoo_report.behavior_retained
    assert back.compressed == zoo_report.compressed
    assert back.dead_matches == zoo_report.dead_matches
    assert back.alignment.weakest(3) == zoo_report.alignment.weakest(3)


def test_report_top_level_layout(zoo_report: PairReport) -> None:
    data = zoo_report.to_dict()
    assert list(data) == [
        "kind", "task", "teacher", "student", "alignment", "brittleness_delta", "compression",
        "behavior_retained", "fan_in", "fan_in_all", "discarded", "fingerprint", "settings",
        "ambiguous",
    ]
    assert list(data["student"]) == [
        "kind", "model", "task", "performance", "sweep", "brittleness", "fingerprint",
    ]
    pair = data["alignment"]["pairs"][0]
    assert pair["contribution"] == pytest.approx(
        pair["similarity"] * (1 - abs(pair["student_share"] - pair["teacher_share"]))
    )


@pytest.fixture(scope="module")
def zoo_recommended_report() -> PairReport:
    pair = load_pair("zoo:tiny-teacher", "zoo:tiny-student")
    return compare(pair, builtin_task("numerals", n_prompts=8, seed=3), preset="recommended")


def test_a_tie_aware_report_round_trips_with_candidates_and_groups(
    zoo_recommended_report: PairReport,
) -> None:
    report = zoo_recommended_report
    back = report_from_dict(through_json(report.to_dict()))
    assert_same(report, back)
    assert back.fingerprint.matching == "tie_aware"
    # the recommended preset compares heads by pattern and output since issue 18 (was "subspace")
    assert back.fingerprint.similarity == "combined"
    assert back.fingerprint.tie_margin == 0.02
    assert back.fingerprint.noise_floor == 3.0
    assert [p.ambiguous for p in back.alignment.pairs] == [
        p.ambiguous for p in report.alignment.pairs
    ]


def test_a_report_written_before_ties_existed_still_reads() -> None:
    pair = MatchedPair("L0H0", "L0H1", "head", 0.9, 10.0, 8.0, 0.5, 0.4)
    old = {k: v for k, v in pair.to_dict().items() if k != "candidates"}
    assert MatchedPair.from_dict(old) == pair
    assert not MatchedPair.from_dict(old).ambiguous


def test_unused_new_method_fields_leave_the_fingerprint_key_as_it_was() -> None:
    base = MethodFingerprint("compare", "mean", "exact", "t", "abc", 8, 8, 0, "float32",
                             "paper", "paper", "teacher_to_student")
    # the key of this fingerprint before tie_margin and noise_floor were added
    assert base.key() == "5383ecb85f8b0ee0"
    tied = dataclasses.replace(base, matching="tie_aware", tie_margin=0.02)
    assert tied.key() != dataclasses.replace(base, matching="tie_aware").key()


def test_report_from_dict_refuses_an_unknown_kind_and_names_it() -> None:
    with pytest.raises(ReportFormatError, match="'html'.*'model', 'pair'") as caught:
        report_from_dict({"kind": "html"})
    assert isinstance(caught.value, CircuitsError)
    with pytest.raises(ReportFormatError, match="None"):
        report_from_dict({"task": "numerals"})


def test_a_model_report_is_not_read_as_a_pair_report(zoo_report: PairReport) -> None:
    with pytest.raises(ReportFormatError, match="expected a pair report.*'model'"):
        PairReport.from_dict(zoo_report.teacher.to_dict())


# --------------------------------------------------------------------------- clean-run check


def test_clean_run_refuses_a_non_finite_logit_outside_the_answer_tokens() -> None:
    """A vocabulary entry that no prompt or answer uses overflows to infinity; the answers'
    logit difference would stay finite, but the clean run must still be refused."""
    teacher = load_model("zoo:tiny-teacher")
    task = builtin_task("numerals", n_prompts=8, seed=7)
    tensors = engine.task_tensors(teacher, task)
    used = {int(i) for t in (tensors.tokens, tensors.corrupted, tensors.correct,
                             tensors.distractor) for i in t.flatten()}
    hf = copy.deepcopy(teacher.hf_model)
    unused = max(set(range(hf.transformer.wte.weight.shape[0])) - used)
    with torch.no_grad():
        # finite weights (the loader accepts them) whose logit overflows float32
        hf.transformer.wte.weight[unused] = 3e38
    broken = load_model(hf, tokenizer=zoo_path("tiny-teacher"), name="overflowing")
    with pytest.raises(NonFiniteError, match="overflowing.*non-finite logits"):
        task_performance(broken, task)
