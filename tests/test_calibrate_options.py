"""Calibrated gates measure the way their thresholds were measured: the block ``calibrate``
prints states every option that produced its numbers, and under the recommended preset it gates
the weighted score too."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from pytest_circuits import cache
from pytest_circuits.cli import (
    EXIT_OK,
    Calibration,
    calibration_yaml,
    gate_options,
    main,
    weighted_alignment_interval,
)
from pytest_circuits.config.options import AnalysisOptions
from pytest_circuits.gatefile import load_gate_file
from pytest_circuits.kinds import KINDS
from pytest_circuits.kinds.runner import _read_call
from pytest_circuits.tasks import DEFAULT_N_PROMPTS

TEACHER, GOOD, BRITTLE = "zoo:tiny-teacher", "zoo:tiny-student", "zoo:tiny-student-brittle"

CALIBRATION = Calibration(
    task="numerals", teacher=TEACHER, severity=0.1, severity_ci=(0.0, 0.24), mean_drop=13.0,
    mean_drop_ci=(3.0, 27.0), worst_head=("L0H0", 88.0), worst_mlp=("MLP0", 100.0),
    max_severity_increase=0.14, max_head_drop=98.5, drop_margin=10.0, source="numerals")


def gate_run_options(spec: Any) -> AnalysisOptions:
    """The options the gate of ``spec`` measures with: the runner's own reading of its
    arguments (before any model loads)."""
    arguments = {**spec.arguments, "n_prompts": spec.n_prompts, "seed": spec.seed}
    arguments.pop("components", None)  # a selection, not how anything is measured
    return _read_call(KINDS[spec.kind], arguments).options


def fields(options: AnalysisOptions, kind: str) -> dict[str, Any]:
    """What of ``options`` reaches a gate of ``kind`` (the options it takes), resolved (a
    preset stands for its matching, similarity, tie margin and noise floor; no prompt count is
    the default one, which the block states)."""
    resolved = options.resolved()
    names = {"n_prompts", "seed", *KINDS[kind].analysis_options} - {"components"}
    chosen = {name: getattr(resolved, name) for name in sorted(names)}
    chosen["n_prompts"] = chosen["n_prompts"] or DEFAULT_N_PROMPTS
    return chosen


def load_block(tmp_path: Path, block: str) -> list[Any]:
    path = tmp_path / "circuits.yaml"
    path.write_text(block)
    return load_gate_file(path)


@pytest.mark.parametrize("options", [
    AnalysisOptions(preset="recommended", n_prompts=16, seed=3, ablation="zero", margin=0.25,
                    method="exact"),
    AnalysisOptions(matching="causal", similarity="cka", n_prompts=8, ablation="resample"),
    AnalysisOptions(),  # the defaults, method left to the gates' rule by size
], ids=["recommended", "causal-cka", "defaults"])
def test_every_calibrated_gate_measures_with_the_calibration_options(
        tmp_path: Path, options: AnalysisOptions) -> None:
    block = calibration_yaml(TEACHER, [GOOD], [CALIBRATION], options, 90.0,
                             {"numerals": 0.6}, 50.0, {"numerals": 0.45})
    specs = load_block(tmp_path, block)
    assert [s.kind for s in specs] == ["behavior_preserved", "ablation_robust",
                                       "ablation_robust", "circuit_aligned"]
    for spec in specs:
        assert fields(gate_run_options(spec), spec.kind) == fields(options, spec.kind), spec.name


def test_the_recommended_preset_is_pasted_with_the_weighted_score(tmp_path: Path) -> None:
    options = AnalysisOptions(preset="recommended", n_prompts=16)
    block = calibration_yaml(TEACHER, [GOOD], [CALIBRATION], options, 90.0,
                             {"numerals": 0.95}, 50.0, {"numerals": 0.85})
    aligned = next(g for g in yaml.safe_load(block)["gates"] if "circuit_aligned" in g)
    assert aligned["circuit_aligned"] == {"min_score": 0.95, "min_weighted_score": 0.85,
                                          "preset": "recommended", "ablation": "mean",
                                          "margin": 0.1}
    assert (aligned["n_prompts"], aligned["seed"]) == (16, 0)
    behaviour = next(g for g in yaml.safe_load(block)["gates"] if "behavior_preserved" in g)
    assert behaviour["behavior_preserved"] == {"min_retained": 90, "min_accuracy_retained": 50,
                                               "margin": 0.1}


def test_without_a_weighted_floor_the_aligned_gate_gates_a_alone() -> None:
    block = calibration_yaml(TEACHER, [GOOD], [CALIBRATION], AnalysisOptions(), 90.0,
                             {"numerals": 0.6})
    aligned = next(g for g in yaml.safe_load(block)["gates"] if "circuit_aligned" in g)
    assert aligned["circuit_aligned"] == {"min_score": 0.6, "matching": "paper",
                                          "similarity": "paper", "ablation": "mean",
                                          "margin": 0.1}


def test_a_preset_stands_for_its_matching_and_similarity() -> None:
    assert gate_options("circuit_aligned", AnalysisOptions(preset="recommended")) == {
        "preset": "recommended", "ablation": "mean", "margin": 0.1}
    assert gate_options("behavior_preserved", AnalysisOptions(method="auto")) == {"margin": 0.1}
    assert gate_options("ablation_robust", AnalysisOptions(method="auto", ablation="zero")) == {
        "ablation": "zero", "method": "auto", "margin": 0.1}


def _report(similarity: list[float], teacher: list[float], student: list[float],
            floor: float) -> Any:
    from pytest_circuits import metrics

    pairs = [SimpleNamespace(similarity=s, teacher_influence=t, student_influence=u)
             for s, t, u in zip(similarity, teacher, student, strict=True)]
    score = metrics.weighted_alignment_score(similarity, teacher, student, floor)
    return SimpleNamespace(alignment=SimpleNamespace(pairs=pairs, weighted_score=score),
                           fingerprint=SimpleNamespace(noise_floor=floor))


def test_the_weighted_interval_of_identical_models_is_exactly_one() -> None:
    influences = [40.0, 12.0, 5.0, 1.0, 0.5]
    report = _report([1.0] * 5, influences, influences, 3.0)
    assert weighted_alignment_interval(report) == (1.0, 1.0)


def test_the_weighted_interval_brackets_the_score_and_widens_with_a_lost_component() -> None:
    teacher = [40.0, 20.0, 12.0, 8.0, 6.0, 5.0, 4.0, 1.0]
    faithful = _report([0.98] * 8, teacher, [38.0, 21.0, 11.0, 8.5, 6.0, 4.5, 4.2, 1.1], 3.0)
    lost = _report([0.98] * 8, teacher, [0.0, 21.0, 11.0, 8.5, 6.0, 4.5, 4.2, 1.1], 3.0)
    for report in (faithful, lost):
        low, high = weighted_alignment_interval(report)
        assert low <= report.alignment.weighted_score <= high
    assert weighted_alignment_interval(lost)[0] < weighted_alignment_interval(faithful)[0] - 0.2


@pytest.fixture(autouse=True)
def _restore_cache_settings() -> Any:
    saved = dict(cache._settings)
    yield
    cache._settings.update(saved)


@pytest.mark.slow
def test_calibrate_with_the_recommended_preset_pastes_gates_that_measure_as_it_did(
        tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["calibrate", TEACHER, GOOD, BRITTLE, "--task", "numerals", "--n-prompts", "16",
            "--seed", "2", "--ablation", "zero", "--preset", "recommended", "--method",
            "exact", "--margin", "0.2", "-q", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv, out=out, err=err) == EXIT_OK, err.getvalue()
    text = out.getvalue()
    assert "weighted A [95% CI]" in text and "top-1 accuracy" in text
    block = text.split("# ---- paste into circuits.yaml ----\n", 1)[1]
    specs = load_block(tmp_path, block)
    run = AnalysisOptions(preset="recommended", n_prompts=16, seed=2, ablation="zero",
                          method="exact", margin=0.2)
    for spec in specs:
        assert fields(gate_run_options(spec), spec.kind) == fields(run, spec.kind), spec.name
    aligned = [s for s in specs if s.kind == "circuit_aligned"]
    assert aligned and all("min_weighted_score" in s.arguments for s in aligned)
    assert all(dataclasses.asdict(gate_run_options(s).resolved())["noise_floor"] == 3.0
               for s in aligned)
