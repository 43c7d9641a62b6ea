"""Every zoo pair end to end: GPT-2 -> DistilGPT-2, BERT -> DistilBERT (masked), Llama ->
Minitron-Depth (grouped-query attention).

For each pair: it loads offline from ``zoo:NAME``; the bridge computes the plain Hugging Face
model's logits on the built-in tasks built for its tokenizer (the masked variants for BERT);
ablating a head equals zeroing that head's slice of the attention output projection in a plain
Hugging Face copy; ``compare`` reports the student's restructuring (fan-in, discarded teacher
mechanisms, higher severity) with the numbers the zoo README quotes. Then, as a new user would,
the release gates written for GPT-2 (``examples/test_release_gate.py``) run unchanged on the BERT
and Llama pairs through ``--circuits-teacher``/``--circuits-student``.

One model pair and one ``compare`` report per (pair, task) are shared by the whole module.
"""

from __future__ import annotations

import copy
import math
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import load_json, mean_logit_diff, output_projection, shared_run

from pytest_circuits.analysis import engine
from pytest_circuits.analysis.ablation import sweep
from pytest_circuits.analysis.cached import as_task
from pytest_circuits.analysis.comparison import PairReport, compare, find_discarded
from pytest_circuits.config.options import DISCARD_Z
from pytest_circuits.models import CircuitModel, ModelPair, load_pair
from pytest_circuits.parity import bridge_parity
from pytest_circuits.tasks import Task
from pytest_circuits.zoo import ZOO_DIR, ZOO_MODELS, load_manifest, zoo_path

#: family -> (teacher, student) zoo names.
PAIRS: dict[str, tuple[str, str]] = {
    "gpt2": ("tiny-teacher", "tiny-student"),
    "bert": ("tiny-bert-teacher", "tiny-distilbert-student"),
    "llama": ("tiny-llama-teacher", "tiny-llama-student-depth"),
}
TASKS = ("numerals", "numwords", "ioi")
N_PROMPTS = 16
SEED = 0
TOL = 1e-5  # float32: the engine and the plain model agree to a few 1e-7 on these logits

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "test_release_gate.py"


# --------------------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="module")
def pairs() -> Callable[[str], ModelPair]:
    """family -> its loaded zoo pair, loaded once per module with every socket refused, so a
    load that reached for the network (a hub lookup) would fail here rather than pass."""
    loaded: dict[str, ModelPair] = {}

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access during a zoo load")

    def get(family: str) -> ModelPair:
        if family not in loaded:
            teacher, student = PAIRS[family]
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(socket.socket, "connect", refuse)
                patch.setenv("HF_HUB_OFFLINE", "1")
                loaded[family] = load_pair(f"zoo:{teacher}", f"zoo:{student}", device="cpu")
        return loaded[family]

    return get


@pytest.fixture(scope="module")
def tasks(pairs: Callable[[str], ModelPair]) -> Callable[[str, str], Task]:
    """(family, task name) -> the built-in task as the gates' ``as_task`` builds it for the
    pair's teacher (the masked variant for BERT)."""
    built: dict[tuple[str, str], Task] = {}

    def get(family: str, name: str) -> Task:
        if (family, name) not in built:
            built[family, name] = as_task(name, N_PROMPTS, SEED, pairs(family).teacher)
        return built[family, name]

    return get


@pytest.fixture(scope="module")
def reports(
    pairs: Callable[[str], ModelPair], tasks: Callable[[str, str], Task]
) -> Callable[[str, str], PairReport]:
    """(family, task name) -> one ``compare`` report, shared by every test that reads it."""
    made: dict[tuple[str, str], PairReport] = {}

    def get(family: str, name: str) -> PairReport:
        if (family, name) not in made:
            made[family, name] = compare(pairs(family), tasks(family, name))
        return made[family, name]

    return get


# --------------------------------------------------------------------------- the zoo's names


def test_the_zoo_names_every_model_of_the_three_families() -> None:
    families = load_manifest()["families"]
    assert {f: tuple(families[f]["models"]) for f in ("bert", "llama")} == {
        "bert": PAIRS["bert"], "llama": PAIRS["llama"]}
    listed = [name for family in ("gpt2", "bert", "llama") for name in families[family]["models"]]
    # GPT-2 first (the names older code and docs list), then the newer families in order.
    assert list(ZOO_MODELS) == listed
    for name in ZOO_MODELS:
        assert zoo_path(name) == ZOO_DIR / "models" / name
    for name in PAIRS["bert"]:
        assert "[MASK]" in ZOO_MODELS[name]


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("family", PAIRS)
def test_the_pair_loads_offline_as_its_family(
    pairs: Callable[[str], ModelPair], family: str
) -> None:
    pair = pairs(family)
    teacher, student = pair.teacher, pair.student
    assert pair.same_tokenizer
    assert Path(teacher.source) == ZOO_DIR / "models" / PAIRS[family][0]
    assert Path(student.source) == ZOO_DIR / "models" / PAIRS[family][1]
    shapes = [(m.n_layers, m.n_heads, m.n_kv_heads, m.d_head) for m in (teacher, student)]
    kinds = {teacher.kind, student.kind}
    if family == "bert":
        assert (teacher.architecture, student.architecture) == (
            "BertForMaskedLM", "DistilBertForMaskedLM")
        assert kinds == {"masked"} and teacher.tokenizer.mask_token == "[MASK]"
        assert shapes == [(4, 4, 4, 32), (2, 4, 4, 32)]
    elif family == "llama":
        assert kinds == {"causal"}
        # grouped-query attention: 4 query heads share 2 key/value heads in both models
        assert shapes == [(4, 4, 2, 32), (2, 4, 2, 32)]
    else:
        assert kinds == {"causal"}
        assert shapes == [(4, 4, 4, 32), (2, 4, 4, 32)]


# --------------------------------------------------------------------------- bridge parity


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("family", PAIRS)
def test_bridge_parity_holds_on_the_builtin_tasks_built_for_the_tokenizer(
    pairs: Callable[[str], ModelPair], tasks: Callable[[str, str], Task], family: str, name: str
) -> None:
    task = tasks(family, name)
    if family == "bert":  # the masked variant, read at the [MASK] before the final "."
        assert task.adaptation is not None and task.adaptation.kind == "masked"
        assert all(p.endswith(" [MASK].") for p in task.prompts)
    else:
        assert all("[MASK]" not in p for p in task.prompts)
    pair = pairs(family)
    for model in (pair.teacher, pair.student):
        result = bridge_parity(model, task)
        assert result.passed, result.message()
        assert result.max_rel_diff < 1e-5  # measured: 0 to 2.4e-6 of the row's scale
        assert (result.n_prompts, result.vocab_size) == (
            N_PROMPTS, model.hf_model.config.vocab_size)
        assert result.worst_prompt in task.prompts


def test_masked_prompts_are_read_at_the_mask_not_the_last_token(
    pairs: Callable[[str], ModelPair], tasks: Callable[[str, str], Task]
) -> None:
    model = pairs("bert").teacher
    tensors = engine.task_tensors(model, tasks("bert", "numerals"))
    mask_id = model.tokenizer.mask_token_id
    rows = torch.arange(tensors.tokens.shape[0])
    assert (tensors.tokens[rows, tensors.positions] == mask_id).all()
    # "[MASK] ." (and, for BERT's tokenizer, no [SEP]): the mask is one before the end
    assert (tensors.positions == tensors.tokens.shape[1] - 2).all()


# --------------------------------------------------------------------------- exact ablation


def plain_copy(model: CircuitModel) -> Any:
    """The model's checkpoint loaded again as a plain Hugging Face model (the oracle: nothing of
    the bridge or the engine touches it)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if model.is_masked else AutoModelForCausalLM
    hf = auto.from_pretrained(model.source, attn_implementation="eager")
    hf.eval()
    return hf


def zero_head_output(hf: Any, family: str, layer: int, head: int, d_head: int) -> None:
    """Zero query head ``head``'s slice of layer ``layer``'s attention output projection: the
    weight edit that removes exactly that head's contribution to the residual stream."""
    cols = slice(head * d_head, (head + 1) * d_head)
    with torch.no_grad():
        if family == "gpt2":  # Conv1D stores [d_in, d_out]: the head's rows
            hf.transformer.h[layer].attn.c_proj.weight[cols, :] = 0.0
        elif family == "llama":  # o_proj is per query head even with shared key/values
            hf.model.layers[layer].self_attn.o_proj.weight[:, cols] = 0.0
        else:  # bert / distilbert: nn.Linear [d_out, d_in]
            output_projection(hf, family, layer).weight[:, cols] = 0.0


def family_of(model: CircuitModel) -> str:
    return {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama", "BertForMaskedLM": "bert",
            "DistilBertForMaskedLM": "distilbert"}[model.architecture]


@pytest.mark.slow
@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("family", PAIRS)
def test_ablating_a_head_equals_zeroing_its_output_projection_slice(
    pairs: Callable[[str], ModelPair], tasks: Callable[[str, str], Task], family: str, role: str
) -> None:
    """Every head of the model, zero ablation in the engine against the weight edit on a plain
    Hugging Face model, on the task built for its tokenizer."""
    model: CircuitModel = getattr(pairs(family), role)
    task = tasks(family, "numerals")
    tensors = engine.task_tensors(model, task)
    names = [f"L{layer}H{head}" for layer in range(model.n_layers)
             for head in range(model.n_heads)]
    result = sweep(model, task, ablation="zero", components=names)
    oracle = plain_copy(model)
    shifts: list[float] = []
    for layer in range(model.n_layers):
        for head in range(model.n_heads):
            edited = copy.deepcopy(oracle)
            zero_head_output(edited, family_of(model), layer, head, model.d_head)
            with torch.no_grad():
                logits = edited(tensors.tokens).logits
            want = mean_logit_diff(logits, tensors.positions, tensors.correct, tensors.distractor)
            got = result.effect(f"L{layer}H{head}").ablated_metric
            assert got == pytest.approx(want, abs=1e-4), f"{model.name} L{layer}H{head}"
            shifts.append(abs(got - result.clean_metric))
    # The edits did real work (a head that moves the metric by over a logit), so the agreement
    # is not that of two no-ops.
    assert max(shifts) > 1.0


# --------------------------------------------------------------------------- compare

#: Measured with n_prompts=16, seed 0, mean ablation, the paper's matching (the zoo README's
#: table): behaviour retained %, A, weighted A, teacher severity, student severity.
MEASURED: dict[tuple[str, str], tuple[float, float, float, float, float]] = {
    ("gpt2", "numerals"): (98.12, 0.7076, 0.7377, 0.0986, 0.2099),
    ("gpt2", "numwords"): (98.41, 0.6802, 0.6412, 0.1113, 0.2285),
    ("gpt2", "ioi"): (96.03, 0.6922, 0.9262, 0.0900, 0.1923),
    ("bert", "numerals"): (100.70, 0.4310, 0.2138, 0.0049, 0.0172),
    ("bert", "numwords"): (101.18, 0.4201, 0.2114, 0.0102, 0.0372),
    ("bert", "ioi"): (100.39, 0.5911, 0.2854, 0.0323, 0.0844),
    ("llama", "numerals"): (98.94, 0.5264, 0.3553, 0.0935, 0.1800),
    ("llama", "numwords"): (97.34, 0.5205, 0.4375, 0.1149, 0.2014),
    ("llama", "ioi"): (91.99, 0.6199, 0.3744, 0.1188, 0.3721),
}

#: The one (pair, task) where no live student component absorbs two teacher components: on
#: GPT-2 IOI every teacher component that shares a student partner shares a dead one (ablating
#: it costs < 2 points), which ``fan_in`` leaves out by design.
NO_LIVE_FAN_IN = {("gpt2", "ioi")}
#: The one (pair, task) that discards nothing since discards are decided above the sweeps' noise
#: (issue 18): on GPT-2 IOI the dead floor alone discarded L3H0 (4.6 +- 2.5 points onto L1H1,
#: 0.2 +- 1.0) and MLP1-MLP3 (2.6 to 4.3 points, standard errors 2.0 to 3.5, onto MLP1, 1.4 +-
#: 4.6), every one within two combined standard errors of the floor.
ONLY_NOISE_DISCARDED = {("gpt2", "ioi")}


@pytest.mark.slow
@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("family", PAIRS)
def test_compare_gives_a_full_report_with_the_measured_numbers(
    pairs: Callable[[str], ModelPair],
    tasks: Callable[[str, str], Task],
    reports: Callable[[str, str], PairReport],
    family: str,
    name: str,
) -> None:
    report = reports(family, name)
    pair = pairs(family)
    per_model = [m.n_layers * (m.n_heads + 1) for m in (pair.teacher, pair.student)]
    assert [len(r.sweep.effects) for r in (report.teacher, report.student)] == per_model
    # teacher_to_student: every teacher component is matched to one student component
    assert len(report.alignment.pairs) == per_model[0]
    assert report.fingerprint.task_sha256 == tasks(family, name).fingerprint()
    retained, score, weighted, t_sev, s_sev = MEASURED[family, name]
    assert report.behavior_retained == pytest.approx(retained, abs=0.01)
    assert report.alignment.score == pytest.approx(score, abs=1e-4)
    assert report.alignment.weighted_score == pytest.approx(weighted, abs=1e-4)
    assert report.teacher.brittleness.severity == pytest.approx(t_sev, abs=1e-4)
    assert report.student.brittleness.severity == pytest.approx(s_sev, abs=1e-4)
    # compression is the share of the teacher's parameters the student dropped
    assert report.compression == pytest.approx(1 - pair.student.n_params / pair.teacher.n_params)


@pytest.mark.slow
@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("family", PAIRS)
def test_the_students_restructuring_shows(
    reports: Callable[[str, str], PairReport], family: str, name: str
) -> None:
    """Fan-in, discarded teacher mechanisms and a more fragile student, on every pair and task
    (one documented exception for fan-in)."""
    report = reports(family, name)
    floor = report.settings.min_student_influence
    if (family, name) in NO_LIVE_FAN_IN:
        assert report.compressed == {}
        shared = {s: t for s, t in report.fan_in_all.items() if len(t) > 1}
        assert shared and all(report.student.sweep.effect(s).influence < floor for s in shared)
    else:
        assert report.compressed, "no student component absorbed two teacher components"
        for student, teachers in report.compressed.items():
            assert len(set(teachers)) >= 2
            assert report.student.sweep.effect(student).influence >= floor
    # Every pair discards something, and says why (a weak best match or a dead partner); where
    # only noise crossed the floor, the floor alone would discard, and nothing is discarded.
    settings = report.settings
    if (family, name) in ONLY_NOISE_DISCARDED:
        assert report.discarded == []
        teacher = {e.name: e for e in report.teacher.sweep.effects}
        student = {e.name: e for e in report.student.sweep.effects}
        by_floor = find_discarded(report.alignment.pairs, {n: e.influence for n, e in
                                                           teacher.items()}, settings)
        assert by_floor
        for item in by_floor:
            assert item.student is not None
            se = (teacher[item.teacher].stderr or 0.0, student[item.student].stderr or 0.0)
            assert item.teacher_influence - floor < DISCARD_Z * math.hypot(*se)
    else:
        assert report.discarded
    for item in report.discarded:
        assert item.student is not None and item.similarity is not None
        if "dead component" in item.reason:  # absorbed by a student component doing no work
            assert item.student_influence is not None and item.student_influence < floor
            assert item.teacher_influence >= floor
        else:  # an influential mechanism whose best student match does not resemble it
            assert item.teacher_influence >= settings.influential
            assert item.similarity < settings.weak_similarity
    # The smaller student carries the task on fewer components: single ablations hurt more.
    assert report.student.brittleness.severity > report.teacher.brittleness.severity
    assert report.brittleness_delta.severity > 0


# --------------------------------------------------------------------------- the GPT-2 gates


def gpt2_gates_unchanged() -> str:
    """examples/test_release_gate.py with its ``@GOOD`` marker lines removed, so the good
    candidate's gates (thresholds and all) take the pair from --circuits-teacher/-student."""
    text = EXAMPLE.read_text(encoding="utf-8")
    assert text.count("@GOOD\n") == 3, "the example's structure changed: update this test"
    return text.replace("@GOOD\n", "")


#: A gate given the task by NAME (no circuit_task fixture): it must build the same task for the
#: pair's tokenizer as the fixture does.
BY_NAME = """\
from pytest_circuits import assert_behavior_preserved


def test_good_candidate_by_task_name(circuit_pair):
    assert_behavior_preserved(circuit_pair, "numerals", min_retained=80.0)
"""


def run_gates(tmp_path_factory: pytest.TempPathFactory, family: str
              ) -> tuple[Path, pytest.RunResult]:
    teacher, student = PAIRS[family]
    files = {"test_gate.py": gpt2_gates_unchanged(), "test_by_name.py": BY_NAME}
    return shared_run(
        tmp_path_factory, f"gpt2-gates-on-{family}", files,
        "-p", "no:cacheprovider", "-k", "good_candidate",
        f"--circuits-teacher=zoo:{teacher}", f"--circuits-student=zoo:{student}",
        f"--circuits-n-prompts={N_PROMPTS}", "--circuits-device=cpu", "--circuits-no-cache",
        "--circuits-json=out.json",
    )


@pytest.fixture(scope="module", params=["bert", "llama"])
def gate_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[str, dict[str, dict[str, Any]], pytest.RunResult]]:
    family: str = request.param
    directory, run = run_gates(tmp_path_factory, family)
    yield family, checks_by_test(load_json(directory / "out.json")), run


def checks_by_test(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """test name -> {"verdicts": {metric: verdict}, "values": {metric: value}, "results": [...]}
    (a test with two gate calls has two results)."""
    found: dict[str, dict[str, Any]] = {}
    for result in document["results"]:
        entry = found.setdefault(
            result["nodeid"].split("::")[-1], {"verdicts": {}, "values": {}, "results": []})
        entry["results"].append(result)
        for check in result["checks"]:
            entry["verdicts"][check["metric"]] = result["verdict"]
            entry["values"][check["metric"]] = check["value"]
    return found


@pytest.mark.slow
def test_the_gpt2_gates_run_unchanged_and_block_only_on_alignment(
    gate_run: tuple[str, dict[str, dict[str, Any]], pytest.RunResult],
    reports: Callable[[str, str], PairReport],
) -> None:
    """Both newer students keep the behaviour and pass GPT-2's robustness thresholds, and both
    fail GPT-2's alignment threshold (A >= 0.65): their restructuring is larger than the GPT-2
    student's (A 0.71 on numerals)."""
    family, by_test, run = gate_run
    run.assert_outcomes(passed=3, failed=1, deselected=3)
    assert set(by_test) == {"test_good_candidate_still_does_the_task",
                            "test_good_candidate_keeps_the_teachers_circuit",
                            "test_good_candidate_has_no_single_point_of_failure",
                            "test_good_candidate_by_task_name"}
    behaviour = by_test["test_good_candidate_still_does_the_task"]
    aligned = by_test["test_good_candidate_keeps_the_teachers_circuit"]
    robust = by_test["test_good_candidate_has_no_single_point_of_failure"]
    # the behaviour gate also checks top-1 accuracy against the teacher's (default 50%)
    assert behaviour["verdicts"] == {"behavior_retained": "PASS", "accuracy_retained": "PASS"}
    assert behaviour["values"]["behavior_retained"] >= 80.0
    assert behaviour["values"]["accuracy_retained"] >= 50.0
    assert aligned["verdicts"] == {"alignment": "FAIL"}
    assert aligned["values"]["alignment"] < 0.65
    assert robust["verdicts"] == {"severity": "PASS", "max_single_drop": "PASS"}
    assert robust["values"]["severity"] <= 0.25 and robust["values"]["max_single_drop"] <= 95.0
    # The plugin measured the very task compare() used in-process (for BERT: the masked
    # variant), so its numbers are the in-process report's.
    report = reports(family, "numerals")
    assert aligned["values"]["alignment"] == pytest.approx(report.alignment.score, abs=1e-6)
    for entry in (behaviour, by_test["test_good_candidate_by_task_name"]):
        assert entry["values"]["behavior_retained"] == pytest.approx(
            report.behavior_retained, abs=1e-6)
    assert robust["values"]["severity"] == pytest.approx(
        report.student.brittleness.severity, abs=1e-6)
    for entry in by_test.values():
        for result in entry["results"]:
            assert result["fingerprint"]["n_prompts"] == N_PROMPTS
            assert result["fingerprint"]["task_sha256"] == report.fingerprint.task_sha256


@pytest.mark.slow
def test_the_bert_gate_results_carry_the_masked_task(
    tmp_path_factory: pytest.TempPathFactory, tasks: Callable[[str, str], Task]
) -> None:
    """Every BERT gate, from the circuit_task fixture or from the task's name, ran the masked
    variant ('... done in [MASK].') and says so in the results file."""
    directory, _ = run_gates(tmp_path_factory, "bert")
    masked = tasks("bert", "numerals")
    unmasked = as_task("numerals", N_PROMPTS, SEED)  # what a tokenizer-blind build gives
    assert masked.fingerprint() != unmasked.fingerprint()
    results = load_json(directory / "out.json")["results"]
    assert len(results) == 5
    for result in results:
        assert result["fingerprint"]["task_sha256"] == masked.fingerprint(), result["nodeid"]
        assert "[MASK]" in result["fingerprint"]["task_adaptation"]
