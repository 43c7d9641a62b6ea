"""The options object and the one gate runner: defaults defined once, every value checked once
(and named as coming from the gate that got it), cache keys derived from the options, and the
rules every gate kind shares applied by the runner, not by each kind."""

from __future__ import annotations

import ast
import copy
import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_circuits import kinds
from pytest_circuits.config.options import (
    PAIR_KEY_FIELDS,
    AnalysisOptions,
)
from pytest_circuits.errors import CircuitAssertionError, GateConfigError
from pytest_circuits.kinds import KINDS
from pytest_circuits.models import CircuitModel, load_model, load_pair
from pytest_circuits.recording import GateResult, recording
from pytest_circuits.tasks import builtin_task
from pytest_circuits.zoo import zoo_path

# ----------------------------------------------------------------------------- the options


def test_every_gate_signature_default_is_the_options_default() -> None:
    defaults = AnalysisOptions()
    seen = 0
    for kind in KINDS.values():
        for name, parameter in inspect.signature(kind.function).parameters.items():
            if name in kind.analysis_options and parameter.default is not inspect.Parameter.empty:
                assert parameter.default == getattr(defaults, name), (kind.name, name)
                seen += 1
    assert seen >= 15  # margin, tolerance, matching, direction... across the six kinds


@pytest.mark.parametrize(("changes", "message"), [
    ({"margin": float("nan")}, "margin=nan must be a finite number >= 0"),
    ({"margin": -1.0}, "margin=-1.0 must be a finite number >= 0"),
    ({"tolerance": 100.0}, r"tolerance=100.0 must be a number in \[0, 100\)"),
    ({"tolerance": float("inf")}, "tolerance=inf must be a number"),
    ({"method": "paper"}, "method='paper' is not a sweep method"),
    ({"preset": "fast"}, "preset='fast' is not a preset"),
    ({"preset": []}, r"preset=\[\] is not a preset"),  # unhashable: was a raw TypeError
    ({"ablation": "half"}, "ablation='half' is not an ablation"),
    ({"matching": "causl"}, "matching='causl' is not a matching .did you mean 'causal'"),
    ({"n_prompts": 0}, "n_prompts=0 must be a whole number >= 1"),
    ({"seed": -1}, "seed=-1 must be a whole number >= 0"),
    ({"noise_floor": float("nan")}, "noise_floor=nan"),
    ({"noise_floor": -1.0}, "noise_floor=-1.0"),
    ({"tie_margin": 0.1}, "tie_margin=0.1 only applies to matching='tie_aware'"),
    ({"matching": "tie_aware", "tie_margin": float("nan")}, "tie_margin=nan must be a finite"),
    ({"influential": 1e308}, "influential=1e\\+308 must be a number in"),
    ({"components": []}, r"components=\[\] must be 'all'"),
    ({"preset": "recommended", "matching": "causal"},
     "preset='recommended' sets matching and similarity itself"),
    ({"colour": "red"}, "'colour' is not an analysis option"),
])
def test_a_bad_option_is_refused_naming_who_got_it(changes: dict[str, Any], message: str
                                                   ) -> None:
    with pytest.raises(GateConfigError, match=f"^assert_x: {message}"):
        AnalysisOptions.of("assert_x", **changes)


def test_a_preset_and_the_options_it_stands_for_share_one_key() -> None:
    preset = AnalysisOptions(preset="recommended").resolved()
    # the recommended preset compares heads by pattern and output since issue 18 (was "subspace")
    spelled = AnalysisOptions(matching="tie_aware", similarity="combined", tie_margin=0.02,
                              noise_floor=3.0).resolved()
    assert preset.key(PAIR_KEY_FIELDS) == spelled.key(PAIR_KEY_FIELDS)
    assert preset.key(PAIR_KEY_FIELDS)["noise_floor"] == 3.0
    assert preset.key(PAIR_KEY_FIELDS)["matching"] == "tie_aware"


def test_late_fields_enter_a_key_only_when_set_so_older_entries_keep_theirs() -> None:
    plain = AnalysisOptions().key(PAIR_KEY_FIELDS)
    assert set(plain) == {"ablation", "similarity", "matching", "direction",
                          "min_student_influence", "seed", "margin", "tolerance"}
    assert AnalysisOptions(influential=15).key(PAIR_KEY_FIELDS)["influential"] == 15.0


def test_equal_values_spelled_differently_make_one_key() -> None:
    assert (AnalysisOptions(tolerance=20, margin=1).key(PAIR_KEY_FIELDS)
            == AnalysisOptions(tolerance=20.0, margin=1.0).key(PAIR_KEY_FIELDS))
    assert (AnalysisOptions(components=["MLP0", "L0H1"]).key(("components",))
            == AnalysisOptions(components=("L0H1", "MLP0")).key(("components",)))


def test_resolving_is_idempotent_and_fills_the_tie_margin() -> None:
    options = AnalysisOptions(matching="tie_aware").resolved()
    assert options.tie_margin == 0.02
    assert options.resolved() == options


# ----------------------------------------------------------------------------- the runner


class ReachedModel(AssertionError):
    """What :class:`Untouchable` raises when a gate reads its model."""


class Untouchable:
    """A stand-in that fails any use: a gate refused at its edge never reads its model."""

    def __getattr__(self, name: str) -> Any:
        raise ReachedModel(f"the gate read .{name} of its model before refusing the call")


@pytest.mark.parametrize("call", [
    lambda m: kinds.assert_ablation_robust(m, "numerals", max_severity=0.5, tolerance=100),
    lambda m: kinds.assert_circuit_aligned(m, "numerals", min_score=0.5, matching="causl"),
    lambda m: kinds.assert_mechanism_preserved(m, "numerals", components=["L0H0"],
                                               preset="fast"),
    lambda m: kinds.assert_behavior_preserved(m, "numerals", min_retained=90, margin=math.nan),
    lambda m: kinds.assert_shift_robust(m, "numerals", shift="longer", max_gap=10,
                                        max_examples=10**9),
    lambda m: kinds.assert_bridge_parity(m, "numerals", atol=-1.0),
])
def test_every_kind_refuses_a_bad_argument_before_reading_its_model(call: Any) -> None:
    with pytest.raises(GateConfigError):
        call(Untouchable())


HOSTILE = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10**12, 10**12), st.sampled_from([1e308, -1e308, 10**9, -1, 0, 100, 101]),
    st.text(max_size=6), st.lists(st.text(max_size=4), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(sorted(KINDS)), data=st.data())
def test_fuzzed_gate_arguments_are_refused_at_the_edge_or_are_all_finite(name: str,
                                                                         data: Any) -> None:
    kind = KINDS[name]
    keywords = [p.name for p in inspect.signature(kind.function).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    required = {p.name: 0.5 for p in inspect.signature(kind.function).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty}
    required.update({"shift": "longer"} if "shift" in required else {})
    required.update({"components": ["L0H0"]} if name == "mechanism_preserved" else {})
    given_values = data.draw(st.dictionaries(st.sampled_from(keywords), HOSTILE, max_size=4))
    try:
        kind.function(Untouchable(), "numerals", **{**required, **given_values})
    except GateConfigError:
        return  # refused at the edge, with the project's error
    except ReachedModel:
        pass
    except TypeError as exc:  # a pair gate handed something that is not a pair
        assert "expected a ModelPair" in str(exc), exc
    # it got past every check: no NaN or infinity passed for a number (a huge finite margin
    # is allowed: the task guard then refuses the model by name)
    for value in given_values.values():
        assert not (isinstance(value, float) and not math.isfinite(value)), given_values


def test_a_shift_search_is_bounded_and_says_by_how_much() -> None:
    with pytest.raises(GateConfigError, match="at most 10,000"):
        kinds.assert_shift_robust(Untouchable(), "numerals", shift="longer", max_gap=10,
                                  max_examples=10_001)


@pytest.fixture(scope="module")
def teacher() -> CircuitModel:
    return load_model("zoo:tiny-teacher", device="cpu")


def _headless(model: CircuitModel) -> CircuitModel:
    """``model`` with every attention head's output projection zeroed: it no longer does the
    task (its clean logit difference falls to about 0)."""
    hf = copy.deepcopy(model.hf_model)
    with torch.no_grad():
        for block in hf.transformer.h:
            block.attn.c_proj.weight.zero_()
    return load_model(hf, tokenizer=zoo_path("tiny-teacher"), name="headless")


def test_a_student_that_lost_the_task_fails_the_behaviour_gate_whatever_min_retained(
        teacher: CircuitModel) -> None:
    task = builtin_task("numerals", n_prompts=8)
    pair = load_pair(teacher, _headless(teacher))
    seen: list[GateResult] = []
    with recording(seen.append), pytest.raises(CircuitAssertionError, match="behaviour lost"):
        kinds.assert_behavior_preserved(pair, task, min_retained=0)
    (result,) = seen
    assert result.gate == "behavior_preserved" and not result.passed
    assert result.values["student_logit_diff"] <= 0.1 < result.values["teacher_logit_diff"]
    assert result.checks[0].metric == "student_logit_diff"


def test_a_search_leaves_nothing_of_its_throwaway_tasks_in_the_model_memo(
        teacher: CircuitModel) -> None:
    from pytest_circuits.analysis.engine import model_cache
    from pytest_circuits.kinds.shift import _performance

    task = builtin_task("numerals", n_prompts=3, seed=11)
    before = set(model_cache(teacher))
    performance = _performance(teacher, task)
    assert math.isfinite(performance.mean_logit_diff)
    after = set(model_cache(teacher))
    assert not [k for k in after - before if task.fingerprint() in k]


# ----------------------------------------------------------------------------- the shape


KIND_MODULES = sorted(
    p for p in (Path(kinds.__file__).parent).glob("*.py")
    if p.stem not in ("__init__", "registry", "runner", "shared")
)


@pytest.mark.parametrize("path", KIND_MODULES, ids=lambda p: p.stem)
def test_a_kind_module_holds_only_short_functions_and_no_gate_sequence(path: Path) -> None:
    tree = ast.parse(path.read_text())
    lengths = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef)}
    assert lengths and max(lengths.values()) <= 50, lengths
    source = path.read_text()
    for shared_step in ("read_baseline_tolerance(", "require_gpu(", "bridges_match(",
                        "task_options(", "record(", "finish("):
        assert shared_step not in source, f"{path.stem} repeats the runner's {shared_step}"
    assert "KIND = GateKind(" in source and "measure=_measure" in source


# ----------------------------------------------------------------------------- shared results


@pytest.fixture
def memory_cache() -> Any:
    from pytest_circuits import cache
    from pytest_circuits.config import context

    with context.changed(cache=context.CacheStore()):
        cache.configure(None, enabled=True)
        yield cache


def test_a_component_subset_is_read_from_a_stored_sweep_of_every_component(
        teacher: CircuitModel, memory_cache: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_circuits.analysis import ablation
    from pytest_circuits.analysis.store import sweep_result

    task = builtin_task("numerals", n_prompts=4)
    full = sweep_result(teacher, task)

    def no_sweep(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("swept again although every component's value was stored")

    monkeypatch.setattr(ablation, "sweep", no_sweep)
    heads = sweep_result(teacher, task, components="heads")
    expected = [e for e in full.effects if e.kind == "head"]
    assert heads.effects == expected and len(expected) == teacher.n_layers * teacher.n_heads
    picked = sweep_result(teacher, task, components=["MLP1", "L0H2"])
    assert [e.name for e in picked.effects] == ["L0H2", "MLP1"]  # model order, as a sweep gives
    assert picked.effects[0] == next(e for e in full.effects if e.name == "L0H2")


def test_evaluate_returns_a_failed_verdict_instead_of_raising(teacher: CircuitModel,
                                                              memory_cache: Any) -> None:
    from pytest_circuits.kinds.runner import evaluate

    task = builtin_task("numerals", n_prompts=4)
    failed = evaluate(KINDS["ablation_robust"], teacher, task, max_single_drop=1.0)
    assert not failed.passed and failed.checks[0].metric == "max_single_drop"
    # the clamped worst drop (the paper's m_i in [0, 100]) of the blamed components
    assert failed.checks[0].value == min(100.0, max(b.scores["drop"] for b in failed.blame))
    passed = evaluate(KINDS["ablation_robust"], teacher, task, max_single_drop=100.0)
    assert passed.passed and passed.values == failed.values  # one sweep, two verdicts
