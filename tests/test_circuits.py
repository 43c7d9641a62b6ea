"""Circuit discovery by iterative node pruning: a planted circuit recovered exactly, its ratios
checked by hand on a plain Hugging Face model, the stacked/speculative discovery against a plain
one-candidate-at-a-time pruner, thresholds, edges, the result's round trip and the cache.

The references here run the plain Hugging Face model with PyTorch hooks on the attention's output
projection (a head's slice of its input is that head's z) and on each MLP, never the engine."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from helpers import ANSWER_NAMES, ioi_prompt, load_plain_hf, save_tiny_gpt2  # noqa: E402

from pytest_circuits.analysis import circuits  # noqa: E402
from pytest_circuits.analysis.circuits import (  # noqa: E402
    backward_order,
    circuit_result,
    discover_circuit,
    forward_order,
)
from pytest_circuits.components import Component  # noqa: E402
from pytest_circuits.errors import GateConfigError  # noqa: E402
from pytest_circuits.models import CircuitModel, load_model  # noqa: E402
from pytest_circuits.results import CircuitResult  # noqa: E402
from pytest_circuits.tasks import Task, builtin_task, encode_task  # noqa: E402
from pytest_circuits.zoo import zoo_path  # noqa: E402

N_HEADS, D_HEAD = 4, 8
PLANTED = (Component.head_at(0, 1), Component.head_at(1, 2))


# ----------------------------------------------------------------------------- plain references


class Plain:
    """The plain HF model on a task, with mean (or zero) ablation of any set of components."""

    def __init__(self, hf: Any, tokenizer: Any, task: Task, ablation: str = "mean") -> None:
        self.hf = hf
        encoded = encode_task(task, tokenizer)
        self.tokens = torch.tensor(encoded.tokens)
        self.corrupted = torch.tensor(encoded.corrupted_tokens)
        self.positions = torch.tensor(encoded.positions)
        self.correct = torch.tensor(encoded.correct_ids)
        self.distractor = torch.tensor(encoded.distractor_ids)
        self.ablation = ablation
        self.d_head = hf.config.n_embd // hf.config.n_head
        self.z_means: dict[int, torch.Tensor] = {}
        self.mlp_means: dict[int, torch.Tensor] = {}
        captured: dict[tuple[str, int], torch.Tensor] = {}
        handles = []
        for layer, block in enumerate(hf.transformer.h):
            handles.append(block.attn.c_proj.register_forward_pre_hook(
                lambda m, args, layer=layer: captured.__setitem__(("z", layer), args[0])))
            handles.append(block.mlp.register_forward_hook(
                lambda m, args, out, layer=layer: captured.__setitem__(("mlp", layer), out)))
        with torch.no_grad():
            hf(self.corrupted)
        for handle in handles:
            handle.remove()
        for (what, layer), value in captured.items():
            (self.z_means if what == "z" else self.mlp_means)[layer] = value.mean(0)

    def logits(self, ablated: Any = ()) -> torch.Tensor:
        """Last-position logits [n, vocab] with ``ablated`` components ablated."""
        handles = []
        heads: dict[int, list[int]] = {}
        for comp in ablated:
            if comp.kind == "head":
                heads.setdefault(comp.layer, []).append(comp.order)
            else:
                block = self.hf.transformer.h[comp.layer]
                mean = self.mlp_means[comp.layer]

                def mlp_hook(m: Any, args: Any, out: Any, mean: Any = mean) -> Any:
                    return torch.zeros_like(out) if self.ablation == "zero" else \
                        mean.expand_as(out).clone()

                handles.append(block.mlp.register_forward_hook(mlp_hook))
        for layer, orders in heads.items():
            mean = self.z_means[layer]

            def z_hook(m: Any, args: Any, orders: Any = orders, mean: Any = mean) -> Any:
                z = args[0].clone()
                for h in orders:
                    cut = slice(h * self.d_head, (h + 1) * self.d_head)
                    z[:, :, cut] = 0.0 if self.ablation == "zero" else mean[:, cut]
                return (z,)

            handles.append(self.hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(
                z_hook))
        try:
            with torch.no_grad():
                out = self.hf(self.tokens).logits
        finally:
            for handle in handles:
                handle.remove()
        return out[torch.arange(out.shape[0]), self.positions]

    def metric(self, ablated: Any = ()) -> float:
        logits = self.logits(ablated)
        rows = torch.arange(logits.shape[0])
        return float((logits[rows, self.correct] - logits[rows, self.distractor]).double().mean())


def plain(hf: Any, tokenizer: Any, task: Task, ablation: str = "mean") -> Plain:
    return Plain(hf, tokenizer, task, ablation)


def reference_pruning(reference: Plain, n_layers: int, n_heads: int, threshold: float
                      ) -> tuple[list[Component], dict[Component, float], float]:
    """Iterative node pruning, one candidate and one full forward at a time: the circuit, each
    node's metric when removed alone from it, and the circuit's metric."""
    full = reference.metric()
    keep = (1 - threshold) * full
    removed: list[Component] = []
    orders = [backward_order(n_layers, n_heads), forward_order(n_layers, n_heads)]
    passes = 0
    last: dict[Component, float] = {}
    while True:
        dropped = 0
        last = {}
        for comp in orders[passes % 2]:
            if comp in removed:
                continue
            metric = reference.metric([*removed, comp])
            if metric > keep:
                removed.append(comp)
                dropped += 1
            else:
                last[comp] = metric
        passes += 1
        if dropped == 0:
            break
    circuit = [c for c in forward_order(n_layers, n_heads) if c not in removed]
    return circuit, last, reference.metric(removed)


# ----------------------------------------------------------------------------- the planted model


def _plant(directory: Path) -> tuple[Any, Any, Task]:
    """A tiny GPT-2 whose only live components are the heads of PLANTED (every other head's
    rows of the output projection and every MLP's output projection are zero; the planted heads'
    rows are scaled up), on an IOI-shaped task whose answers are chosen, per prompt, as the
    pair of names both planted heads push hardest (by the plain model)."""
    from transformers import AutoTokenizer

    save_tiny_gpt2(directory, seed=3)
    hf = load_plain_hf(directory)
    with torch.no_grad():
        for layer, block in enumerate(hf.transformer.h):
            weight = block.attn.c_proj.weight  # Conv1D: [n_heads * d_head, d_model]
            for head in range(N_HEADS):
                rows = weight[head * D_HEAD:(head + 1) * D_HEAD]
                if Component.head_at(layer, head) in PLANTED:
                    rows.mul_(6.0)
                else:
                    rows.zero_()
            block.mlp.c_proj.weight.zero_()
    hf.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    names = list(ANSWER_NAMES)
    pairs = [(names[i], names[(i + 3) % 12]) for i in range(6)]
    prompts = tuple(ioi_prompt(a, b, b if i % 2 == 0 else a) for i, (a, b) in enumerate(pairs))
    corrupted = tuple(ioi_prompt(a, b, c) for a, b, c in
                      [("Kate", "Peter", "Kate"), ("Emily", "Jack", "Jack"),
                       ("Laura", "Michael", "Laura"), ("Rachel", "Ryan", "Ryan")])
    draft = Task(name="planted", prompts=prompts, correct=(" " + names[0],) * 6,
                 distractors=(" " + names[1],) * 6, corrupted=corrupted)
    reference = plain(hf, tokenizer, draft)
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(n) for n in names])
    clean = reference.logits()[:, ids]
    without = [reference.logits([c])[:, ids] for c in PLANTED]
    correct, distractors = [], []
    for p in range(len(prompts)):
        diff = clean[p][:, None] - clean[p][None, :]  # [correct, distractor]
        lost = torch.stack([diff - (w[p][:, None] - w[p][None, :]) for w in without])
        score = torch.where(diff > 0, lost.min(0).values, torch.tensor(-1e9))
        best = int(score.argmax())
        correct.append(" " + names[best // len(names)])
        distractors.append(" " + names[best % len(names)])
    task = Task(name="planted", prompts=prompts, correct=tuple(correct),
                distractors=tuple(distractors), corrupted=corrupted)
    return hf, tokenizer, task


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[CircuitModel, Plain, Task]:
    directory = tmp_path_factory.mktemp("planted")
    hf, tokenizer, task = _plant(directory)
    return load_model(directory, device="cpu"), plain(hf, tokenizer, task), task


@pytest.fixture(scope="module")
def teacher() -> CircuitModel:
    return load_model(zoo_path("tiny-teacher"), device="cpu", name="tiny-teacher")


@pytest.fixture(scope="module")
def teacher_plain() -> Any:
    from transformers import AutoTokenizer

    path = zoo_path("tiny-teacher")
    return load_plain_hf(path), AutoTokenizer.from_pretrained(path)


# ----------------------------------------------------------------------------- planted circuit


def test_the_planted_heads_each_carry_more_than_the_threshold(planted: Any) -> None:
    # the construction's premise, by the plain model: without either planted head the model
    # keeps less than 80% of its logit difference; without any other component, all of it
    _, reference, _ = planted
    full = reference.metric()
    assert full > 0.5
    for head in PLANTED:
        assert reference.metric([head]) < 0.75 * full, head
    dead = [c for c in forward_order(2, N_HEADS) if c not in PLANTED]
    assert reference.metric(dead) == pytest.approx(full, rel=1e-5)


def test_discovery_recovers_exactly_the_planted_heads(planted: Any) -> None:
    model, reference, task = planted
    result = discover_circuit(model, task, stability=None)
    assert result.nodes == ("L0H1", "L1H2")
    assert (result.n_heads, result.n_mlps, result.size) == (2, 0, 2)
    # hand-checked ratios: everything outside the circuit is dead, so the circuit alone keeps
    # all of it; the complement is the plain model with both planted heads mean-ablated
    full = reference.metric()
    assert result.full_logit_diff == pytest.approx(full, rel=1e-5)
    assert result.faithfulness == pytest.approx(1.0, abs=1e-5)
    complement = reference.metric(PLANTED) / full
    assert result.complement == pytest.approx(complement, abs=1e-5)
    assert result.completeness == pytest.approx(1 - complement, abs=1e-5)
    for head in PLANTED:
        drop = 100 * (full - reference.metric([head])) / full
        assert result.node_drops[head.name] == pytest.approx(drop, abs=1e-3)
        assert drop > 20
    # the first (backward) pass removes all 8 dead components, the second removes nothing
    assert result.passes == 2


def test_zero_ablation_finds_the_same_planted_circuit(planted: Any) -> None:
    model, _, task = planted
    result = discover_circuit(model, task, ablation="zero", stability=None)
    assert result.nodes == ("L0H1", "L1H2")


# ----------------------------------------------------------------------------- against the plain
# pruner on the zoo teacher


@pytest.mark.parametrize("task_name", ["numerals", "ioi"])
def test_stacked_speculative_discovery_equals_one_candidate_at_a_time(
        teacher: CircuitModel, teacher_plain: Any, task_name: str) -> None:
    task = builtin_task(task_name, n_prompts=12, seed=0)
    hf, tokenizer = teacher_plain
    reference = plain(hf, tokenizer, task)
    expected, metrics, circuit_metric = reference_pruning(reference, 4, 4, 0.20)
    full = reference.metric()
    costs = []
    for per_forward in (1, 5):
        result = discover_circuit(teacher, task, stability=None,
                                  ablations_per_forward=per_forward)
        costs.append(result.cost_fe)
        assert result.nodes == tuple(c.name for c in expected), per_forward
        assert result.faithfulness == pytest.approx(circuit_metric / full, abs=1e-4)
        for comp in expected:
            drop = 100 * (circuit_metric - metrics[comp]) / full
            assert result.node_drops[comp.name] == pytest.approx(drop, abs=1e-2)
        complement = reference.metric(expected) / full
        assert result.complement == pytest.approx(complement, abs=1e-4)
    # speculation costs extra copies (wrong guesses are measured again), never other decisions
    assert costs[1] >= costs[0]


def test_the_orders_are_backward_mlp_first_and_forward_heads_first() -> None:
    assert [c.name for c in backward_order(2, 2)] == ["MLP1", "L1H0", "L1H1", "MLP0", "L0H0",
                                                      "L0H1"]
    assert [c.name for c in forward_order(2, 2)] == ["L0H0", "L0H1", "MLP0", "L1H0", "L1H1",
                                                     "MLP1"]


# ----------------------------------------------------------------------------- thresholds


def test_each_threshold_keeps_its_share_and_looser_ones_prune_more(
        teacher: CircuitModel) -> None:
    task = builtin_task("numerals", n_prompts=16, seed=0)
    levels = (0.05, 0.1, 0.2, 0.3, 0.5)
    result = discover_circuit(teacher, task, stability=levels)
    points = {p.threshold: p for p in result.stability}
    assert tuple(sorted(points)) == levels
    for level, point in points.items():
        assert point.faithfulness > 1 - level  # pruning never goes below its own bar
    assert points[0.2].nodes == result.nodes and points[0.2].jaccard == 1.0
    assert all(0.0 <= p.jaccard <= 1.0 for p in result.stability)
    sizes = [len(points[t].nodes) for t in levels]
    # greedy pruning is not monotone in T step by step (on these 16 prompts the sizes at
    # 0.1, 0.15, 0.2, 0.25, 0.3 are 6, 5, 6, 5, 4), but across the range it prunes more
    assert sizes[0] > sizes[-1] and sizes[0] >= sizes[2] >= sizes[-1]
    assert points[0.05].faithfulness > 0.95 and points[0.5].faithfulness > 0.5


def test_heads_only_pruning_keeps_every_mlp(teacher: CircuitModel) -> None:
    result = discover_circuit(teacher, "numerals", candidates="heads", stability=None)
    assert result.mlps == ("MLP0", "MLP1", "MLP2", "MLP3")
    assert set(result.node_drops) == set(result.nodes)


@pytest.mark.parametrize("bad", [float("nan"), 0, 0.0, 1, 1.5, -0.2, float("inf"), "0.2",
                                 True, None])
def test_a_bad_threshold_is_refused_naming_the_fix(teacher: CircuitModel, bad: Any) -> None:
    with pytest.raises(GateConfigError, match=r"strictly between 0 and 1.*threshold=0\.2"):
        discover_circuit(teacher, "numerals", threshold=bad)
    with pytest.raises(GateConfigError, match="strictly between 0 and 1"):
        discover_circuit(teacher, "numerals", stability=(0.1, bad))


def test_an_unknown_ablation_is_refused_naming_the_choices(teacher: CircuitModel) -> None:
    with pytest.raises(GateConfigError, match=r"ablation='median'.*'mean'.*'zero'.*'resample'"):
        discover_circuit(teacher, "numerals", ablation="median")
    with pytest.raises(GateConfigError, match="candidates='mlps'"):
        discover_circuit(teacher, "numerals", candidates="mlps")


# ----------------------------------------------------------------------------- edges


def test_an_edge_into_the_logits_alone_is_the_senders_own_ablation(
        teacher: CircuitModel, monkeypatch: pytest.MonkeyPatch) -> None:
    # with every edge kept, a sender that no later circuit node reads reaches the logits only,
    # so patching it into the final residual is ablating it: its node drop
    task = builtin_task("numerals", n_prompts=16, seed=0)
    kept = discover_circuit(teacher, task, edges=True, stability=None)
    assert kept.edges is not None and len(kept.edges) >= 1
    bar = circuits.EDGE_THRESHOLD
    assert bar == 0.8 and all(e.score < bar for e in kept.edges)
    monkeypatch.setattr(circuits, "EDGE_THRESHOLD", math.inf)
    result = discover_circuit(teacher, task, edges=True, stability=None)
    assert result.edges is not None and result.nodes == kept.nodes
    scores = {(e.sender, e.receiver): e.score for e in result.edges}
    nodes = [Component.parse(n) for n in result.nodes]
    last = max(nodes, key=lambda c: (c.layer, c.order))
    expected = 1 - result.node_drops[last.name] * result.full_logit_diff / (
        100 * result.circuit_logit_diff)
    assert scores[(last.name, "logits")] == pytest.approx(expected, abs=1e-4)
    # every sender has a logits edge, and a receiver always sits after its sender
    assert {s for s, r in scores if r == "logits"} == set(result.nodes)
    for sender, receiver in scores:
        if receiver != "logits":
            a, b = Component.parse(sender), Component.parse(receiver)
            assert (b.layer, b.kind == "mlp") > (a.layer, a.kind == "mlp")
    # the kept edges are those of the full set below the threshold, with the same scores
    assert {(e.sender, e.receiver): e.score for e in kept.edges} == pytest.approx(
        {k: v for k, v in scores.items() if v < bar})


# ----------------------------------------------------------------------------- the result


def test_the_result_round_trips_through_json(teacher: CircuitModel) -> None:
    result = discover_circuit(teacher, builtin_task("ioi", n_prompts=16, seed=0), edges=True,
                              stability=(0.2, 0.3))
    data = json.loads(json.dumps(result.to_dict()))
    again = CircuitResult.from_dict(data)
    assert again == result
    assert again.to_dict() == result.to_dict()
    assert data["faithfulness"] == pytest.approx(result.circuit_logit_diff /
                                                 result.full_logit_diff)
    assert data["completeness"] == pytest.approx(1 - data["complement"])
    assert data["n_heads"] + data["n_mlps"] == len(data["nodes"])
    assert result.cost_fe > 1 and result.fingerprint["analysis"] == "circuit"


def test_the_cached_wrapper_serves_memory_and_disk(teacher: CircuitModel, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_circuits import cache
    from pytest_circuits.config import context

    calls = []
    real = circuits.discover_circuit
    monkeypatch.setattr(circuits, "discover_circuit",
                        lambda *a, **k: calls.append(k) or real(*a, **k))
    with context.changed(cache=context.CacheStore()):
        cache.configure(tmp_path, enabled=True)
        first = circuit_result(teacher, "numerals", stability=None)
        again = circuit_result(teacher, "numerals", stability=None)
        other = circuit_result(teacher, "numerals", stability=None, threshold=0.3)
        assert len(calls) == 2 and again is first and other.threshold == 0.3
    with context.changed(cache=context.CacheStore()):  # a new session: read from disk
        cache.configure(tmp_path, enabled=True)
        stored = circuit_result(teacher, "numerals", stability=None)
    assert len(calls) == 2
    assert stored == first


# ----------------------------------------------------------------------------- the real model


@pytest.mark.slow
@pytest.mark.real
def test_smollm2_has_a_faithful_ioi_circuit() -> None:
    from helpers import smollm2_gguf

    pairs = (("Mary", "John"), ("Tom", "Anna"), ("James", "Sarah"), ("Paul", "Mark"))
    task = Task(
        name="smollm2-ioi-4",
        prompts=tuple(f"When {a} and {b} went to the store, {b} gave a drink to"
                      for a, b in pairs),
        correct=tuple(" " + a for a, _ in pairs),
        distractors=tuple(" " + b for _, b in pairs),
        corrupted=tuple(f"When {a} and {b} went to the store, {a} gave a drink to"
                        for a, b in pairs),
    )
    model = load_model(smollm2_gguf(), device="cpu")
    started = time.perf_counter()
    result = discover_circuit(model, task, candidates="heads", stability=None)
    seconds = time.perf_counter() - started
    print(f"SmolLM2-135M IOI circuit (heads pruned, MLPs kept): {' '.join(result.heads)}: "
          f"{result.n_heads} heads of 270, faithfulness {result.faithfulness:.3f}, "
          f"{result.cost_fe:.0f} FE, {seconds:.0f} s")
    assert result.faithfulness >= 0.8
    assert 0 < result.n_heads < 270
