"""The gates wired to what landed beside them: built-in tasks built for the model, the method
preset, models derived from a loaded model's hf_model, and the typed task adaptation."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from pytest_circuits import (  # noqa: E402
    assert_behavior_preserved,
    assert_bridge_parity,
    assert_circuit_aligned,
    assert_mechanism_preserved,
)
from pytest_circuits.errors import CircuitAssertionError, CircuitsError  # noqa: E402
from pytest_circuits.models import load_model, load_pair  # noqa: E402
from pytest_circuits.parity import ParityError, plain_hf_model  # noqa: E402
from pytest_circuits.recording import recording  # noqa: E402
from pytest_circuits.zoo import zoo_path  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bert_pair():
    return load_pair(load_model("zoo:tiny-bert-teacher", device="cpu"),
                     load_model("zoo:tiny-distilbert-student", device="cpu"))


@pytest.fixture(scope="module")
def gpt2_pair():
    return load_pair(load_model("zoo:tiny-teacher", device="cpu"),
                     load_model("zoo:tiny-student", device="cpu"))


def _recorded(gate, *args, **kwargs):
    """The one GateResult ``gate`` records (passed or failed) and its failure message."""
    results: list = []
    message = ""
    with recording(results.append):
        try:
            gate(*args, **kwargs)
        except CircuitAssertionError as exc:
            message = str(exc)
    assert len(results) == 1
    return results[0], message


# ----------------------------------------------------------------------------- built-in tasks


def test_a_gate_given_a_task_name_measures_the_masked_variant_on_a_bert_pair(bert_pair):
    from pytest_circuits.tasks import builtin_task

    teacher = bert_pair.teacher
    masked = builtin_task("numerals", n_prompts=8, seed=0, tokenizer=teacher.tokenizer,
                          kind=teacher.kind)
    assert all(teacher.tokenizer.mask_token in prompt for prompt in masked.prompts)
    result, _ = _recorded(assert_behavior_preserved, bert_pair, "numerals", min_retained=0.0,
                          n_prompts=8, seed=0)
    assert result.fingerprint["task_sha256"] == masked.fingerprint()
    causal = builtin_task("numerals", n_prompts=8, seed=0)
    assert result.fingerprint["task_sha256"] != causal.fingerprint()


def test_a_gate_on_the_gpt2_zoo_measures_the_paper_task_unchanged(gpt2_pair):
    from pytest_circuits.tasks import builtin_task

    result, _ = _recorded(assert_circuit_aligned, gpt2_pair, "numerals", min_score=0.0,
                          n_prompts=8, seed=0)
    assert result.fingerprint["task_sha256"] == builtin_task(
        "numerals", n_prompts=8, seed=0).fingerprint()
    assert "task_adaptation" not in result.fingerprint


# ----------------------------------------------------------------------------- preset


def test_the_recommended_preset_reaches_the_analysis_and_the_failure_message(gpt2_pair):
    result, message = _recorded(assert_circuit_aligned, gpt2_pair, "numerals", min_score=1.0,
                                preset="recommended", n_prompts=8, seed=0)
    assert result.fingerprint["matching"] == "tie_aware"
    # the recommended preset compares heads by pattern and output since issue 18 (was "subspace")
    assert result.fingerprint["similarity"] == "combined"
    assert result.fingerprint["noise_floor"] == 3.0
    assert "preset=recommended, matching=tie_aware, similarity=combined" in message
    paper, message = _recorded(assert_circuit_aligned, gpt2_pair, "numerals", min_score=1.0,
                               n_prompts=8, seed=0)
    assert paper.fingerprint["matching"] == "paper"
    assert "no preset, matching=paper, similarity=paper" in message
    assert paper.values["alignment"] != result.values["alignment"]


def test_mechanism_preserved_takes_the_preset(gpt2_pair):
    result, message = _recorded(assert_mechanism_preserved, gpt2_pair, "numerals",
                                components=["MLP0"], min_similarity=None, min_influence=100.0,
                                preset="recommended", n_prompts=8, seed=0)
    assert result.fingerprint["matching"] == "tie_aware"
    assert "parts: preset=recommended" in message


def test_a_preset_beside_a_conflicting_matching_is_refused_by_the_gate(gpt2_pair):
    with pytest.raises(CircuitsError, match=r"preset='recommended'.*matching='causal'"):
        assert_circuit_aligned(gpt2_pair, "numerals", min_score=0.0, preset="recommended",
                               matching="causal", n_prompts=8, seed=0)


def test_gate_files_accept_exactly_the_analysis_presets() -> None:
    from pytest_circuits.analysis.comparison import PRESETS
    from pytest_circuits.gatefile import CHOICES

    assert CHOICES["preset"] == tuple(PRESETS)


# ----------------------------------------------------------------------------- derived models


def _copy_of(model, name: str):
    """A model built the way tests/test_scores.py's _copy and test_compare.py's _clone_with do:
    from a deep copy of a loaded model's hf_model (the bridge's module tree and names)."""
    hf = copy.deepcopy(model.hf_model)
    with torch.no_grad():
        hf.transformer.h[0].mlp.c_fc.weight.mul_(1.01)  # an edited copy, as those helpers make
    return load_model(hf, tokenizer=zoo_path("tiny-teacher"), name=name, device="cpu")


def test_a_model_built_from_a_loaded_models_hf_model_has_plain_weight_names(gpt2_pair):
    before = gpt2_pair.teacher._hf_state["transformer.h.0.mlp.c_fc.weight"].clone()
    derived = _copy_of(gpt2_pair.teacher, "edited")
    assert set(derived._hf_state) == set(gpt2_pair.teacher._hf_state)
    assert not any("_original_component" in n for n in derived._hf_state)
    edited = derived._hf_state["transformer.h.0.mlp.c_fc.weight"]
    original = gpt2_pair.teacher._hf_state["transformer.h.0.mlp.c_fc.weight"]
    assert torch.allclose(edited, original * 1.01)
    assert plain_hf_model(derived) is not None
    assert torch.equal(original, before)  # the loaded model's own weights are untouched


def test_gates_run_on_a_model_built_from_a_loaded_models_hf_model(gpt2_pair):
    derived = _copy_of(gpt2_pair.teacher, "edited-teacher")
    parity = assert_bridge_parity(derived, "numerals", n_prompts=8, seed=0)
    assert parity.passed
    report = assert_circuit_aligned(load_pair(gpt2_pair.teacher, derived), "numerals",
                                    min_score=0.5, n_prompts=8, seed=0)
    assert report.alignment.score > 0.9  # a 1% edit of one MLP keeps the circuit


def test_plain_hf_model_names_a_key_mismatch_instead_of_a_raw_error(gpt2_pair):
    model = copy.copy(gpt2_pair.student)
    state = dict(model._hf_state)
    state["transformer.h.0.attn._original_component.c_attn.weight"] = state.pop(
        "transformer.h.0.attn.c_attn.weight")
    model._hf_state = state
    with pytest.raises(ParityError, match=r"1 missing, e.g. transformer.h.0.attn.c_attn.weight"
                                          r".*1 unexpected.*save_pretrained"):
        plain_hf_model(model)


PRESET_GATES = """\
pairs:
  good: {teacher: "zoo:tiny-teacher", student: "zoo:tiny-student"}
defaults: {n_prompts: 8, pair: good, task: numerals, preset: recommended}
gates:
  - name: aligned-recommended
    circuit_aligned: {min_score: 0.0}
  - name: mechanism-paper
    mechanism_preserved: {components: [MLP0], min_similarity: -1.0, min_influence: 0.0,
                          preset: paper}
  - name: behavior-untouched
    behavior_preserved: {min_retained: 0.0}
"""


def test_gate_files_pass_the_preset_to_the_gates_that_take_it(tmp_path) -> None:
    from pytest_circuits.gatefile import load_gate_file

    path = tmp_path / "circuits.yaml"
    path.write_text(PRESET_GATES)
    aligned, mechanism, behavior = load_gate_file(path)
    assert aligned.arguments["preset"] == "recommended"  # from defaults:
    assert mechanism.arguments["preset"] == "paper"  # the gate's own key wins
    assert "preset" not in behavior.arguments  # behavior_preserved has no method options


def test_an_unknown_preset_in_a_gate_file_is_refused_with_its_line(tmp_path) -> None:
    from pytest_circuits.gatefile import GateFileError, load_gate_file

    path = tmp_path / "circuits.yaml"
    path.write_text(PRESET_GATES.replace("preset: recommended", "preset: recomended"))
    with pytest.raises(GateFileError) as raised:
        load_gate_file(path)
    assert str(raised.value).startswith(f"{path}:3: ")
    assert ("preset 'recomended' is not one of paper, recommended (did you mean "
            "'recommended'?)") in str(raised.value)


def test_a_yaml_gate_runs_with_the_recommended_preset_on_the_zoo(tmp_path) -> None:
    from helpers import load_json, run_pytest

    (tmp_path / "circuits.yaml").write_text(PRESET_GATES)
    run = run_pytest(tmp_path, "-p", "no:cacheprovider", "--circuits-device=cpu",
                     "--circuits-json=out.json", "--circuits-cache-dir=cache")
    run.assert_outcomes(passed=3)
    results = {r["nodeid"].split("::")[-1]: r for r in load_json(tmp_path / "out.json")["results"]}
    assert results["aligned-recommended"]["fingerprint"]["matching"] == "tie_aware"
    # the recommended preset compares heads by pattern and output since issue 18 (was "subspace")
    assert results["aligned-recommended"]["fingerprint"]["similarity"] == "combined"
    assert results["mechanism-paper"]["fingerprint"]["matching"] == "paper"
