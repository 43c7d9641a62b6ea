"""The auto-circuit half of ``peer_auto_circuit.py``: run in auto-circuit's own venv
(``benchmarks/peer-requirements.txt``), never in the project's; imports nothing of
pytest-circuits.

    peer_auto_circuit_peer.py OURS.json OUT.json [--threads 1]

Reads our half's JSON (the checkpoint, the prompts as token ids, our clean logits and our node
set with its faithfulness) and writes:

- ``conversion``: the checkpoint loaded with transformers, converted with TransformerLens'
  ``convert_gpt2_weights`` into a ``HookedTransformer`` with no weight processing (no LayerNorm
  folding, no centring), and the largest absolute difference of its clean logits at the
  prediction position from ours (and of the peer venv's transformers from ours).
- ``node_check``: our node set measured by auto-circuit. Its factorized graph has one source per
  head output, per MLP output and the embeddings, one destination per head's q/k/v input, per MLP
  input and the final residual. Node ablation of a component is patching every edge leaving it
  with the token-wise mean of its output over the corrupted prompts
  (``AblationType.TOKENWISE_MEAN_CORRUPT``): what our mean ablation writes, since a head's
  output is its z times W_O and the mean commutes with that linear map.
- ``rows``: the sizes at our faithfulness. auto-circuit's ACDC and edge attribution patching
  score every edge; a circuit of k edges keeps the k best-scored edges and patches the rest
  (``run_circuits``, ``PatchType.TREE_PATCH``, the same mean ablation); the smallest k whose
  faithfulness (mean logit difference over the full model's) reaches ours is reported, with the
  heads and MLPs that circuit uses (a component counts when a kept edge leaves it on a path of
  kept edges to the output).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# torch 2.13 no longer exposes ``torch.optim.adam`` (``torch.optim`` deletes the submodule's name
# after importing it), and auto-circuit reaches for ``t.optim.adam.Adam`` in its training-based
# algorithms (none used here): put the submodule back, with Adam on it. A runtime shim, not an
# edit of site-packages.
_adam = importlib.import_module("torch.optim.adam")
if not hasattr(_adam, "Adam"):
    _adam.Adam = torch.optim.Adam  # type: ignore[attr-defined]
if not hasattr(torch.optim, "adam"):
    torch.optim.adam = _adam  # type: ignore[attr-defined]

import auto_circuit.prune_algos.ACDC as acdc_module  # noqa: E402
from auto_circuit.data import PromptDataLoader, PromptDataset  # noqa: E402
from auto_circuit.prune import run_circuits  # noqa: E402
from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores  # noqa: E402
from auto_circuit.types import AblationType, PatchType  # noqa: E402
from auto_circuit.utils.ablation_activations import src_ablations  # noqa: E402
from auto_circuit.utils.graph_utils import patch_mode, patchable_model  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402
from transformer_lens.pretrained.weight_conversions.gpt2 import (  # noqa: E402
    convert_gpt2_weights,
)

MEAN = AblationType.TOKENWISE_MEAN_CORRUPT


def load_hooked(checkpoint: str) -> tuple[HookedTransformer, Any]:
    """The HF checkpoint as an unprocessed HookedTransformer (and the HF model itself)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(checkpoint, torch_dtype=torch.float32).eval()
    c = hf.config
    if c.model_type != "gpt2":
        raise SystemExit(f"{checkpoint}: model_type {c.model_type!r}; this script converts "
                         "GPT-2 checkpoints only")
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions,
        act_fn=c.activation_function, normalization_type="LN", eps=c.layer_norm_epsilon,
        positional_embedding_type="standard", default_prepend_bos=False, dtype=torch.float32,
        device="cpu")
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
        center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    model.eval()
    return model, hf


def live_nodes(kept: set[Any], n_layers: int) -> set[str]:
    """Components (auto-circuit src names 'A1.2', 'MLP 3') with a kept edge on a kept path to
    the output: a component whose every outgoing edge is patched adds nothing but its mean."""
    live: set[str] = set()
    reached = {"Resid End"}
    # destinations of a component: its q/k/v inputs ("A1.2.Q") or its MLP input ("MLP 3")
    changed = True
    while changed:
        changed = False
        for edge in kept:
            dest = edge.dest.name
            owner = dest.rsplit(".", 1)[0] if dest.startswith("A") else dest
            if (owner in reached or dest in reached) and edge.src.name != "Resid Start":
                if edge.src.name not in live:
                    live.add(edge.src.name)
                    reached.add(edge.src.name)
                    changed = True
    return live


def size_of(live: set[str]) -> tuple[int, int]:
    heads = sum(1 for n in live if n.startswith("A"))
    return heads, len(live) - heads


def ours_to_src(name: str) -> str:
    """'L1H2' -> 'A1.2', 'MLP3' -> 'MLP 3' (auto-circuit's node names)."""
    if name.startswith("MLP"):
        return f"MLP {int(name[3:])}"
    layer, head = name[1:].split("H")
    return f"A{int(layer)}.{int(head)}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ours")
    parser.add_argument("out")
    parser.add_argument("--threads", type=int, default=1)
    # KL thresholds around where ACDC's circuits cross our faithfulness on the zoo teacher;
    # auto-circuit's default grid (1..9 x 1e-5..1e-2) costs 20 passes over every edge
    parser.add_argument("--acdc-bases", default="1,3",
                        help="ACDC tau = base * 10**exp for every base and exponent given")
    parser.add_argument("--acdc-exps", default="-3,-2,-1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds: dict[str, float] = {}
    ours = json.loads(Path(args.ours).read_text())

    started = time.perf_counter()
    tl_model, hf = load_hooked(ours["checkpoint"])
    tokens = torch.tensor(ours["tokens"])
    corrupted = torch.tensor(ours["corrupted_tokens"])
    positions = torch.tensor(ours["positions"])
    correct = torch.tensor(ours["correct_ids"])
    distractor = torch.tensor(ours["distractor_ids"])
    n, seq = tokens.shape
    if corrupted.shape != tokens.shape or not bool((positions == seq - 1).all()):
        raise SystemExit("auto-circuit reads the last position and pairs each clean prompt with "
                         "one corrupted prompt: the task must have as many corrupted prompts as "
                         f"prompts and answer at the last token (got {tuple(corrupted.shape)} vs "
                         f"{tuple(tokens.shape)}, positions {sorted(set(positions.tolist()))})")
    rows = torch.arange(n)
    ours_logits = torch.tensor(ours["clean_logits"], dtype=torch.float64)
    with torch.no_grad():
        tl_logits = tl_model(tokens)[rows, positions].double()
        hf_logits = hf(tokens).logits[rows, positions].double()
    conversion = {
        "max_abs_logit_diff_vs_ours": float((tl_logits - ours_logits).abs().max()),
        "max_abs_logit_diff_hf_vs_ours": float((hf_logits - ours_logits).abs().max()),
        "max_abs_logit_diff_tl_vs_hf": float((tl_logits - hf_logits).abs().max()),
        "max_abs_logit": float(ours_logits.abs().max()),
    }
    tl_model.set_use_attn_result(True)
    tl_model.set_use_split_qkv_input(True)
    tl_model.set_use_hook_mlp_in(True)
    model = patchable_model(tl_model, factorized=True, slice_output="last_seq", seq_len=None,
                            separate_qkv=True, device=torch.device("cpu"))
    dataset = PromptDataset(tokens, corrupted, [c.view(1) for c in correct],
                            [d.view(1) for d in distractor])
    loader = PromptDataLoader(dataset, seq_len=None, diverge_idx=0, batch_size=n, shuffle=False)
    batch = next(iter(loader))
    mean_outs = src_ablations(model, loader, MEAN)
    with torch.inference_mode():
        full = float(batch_diff(model(batch.clean)[model.out_slice], batch))
    seconds["load and convert"] = time.perf_counter() - started

    # (a) our node set, node-level ablation through auto-circuit's patching
    keep = {ours_to_src(name) for name in ours["nodes"]}
    unknown = keep - {s.name for s in model.srcs}
    if unknown:
        raise SystemExit(f"our nodes {sorted(unknown)} are not auto-circuit sources")
    dropped = [e for e in model.edges if e.src.name != "Resid Start" and e.src.name not in keep]
    with patch_mode(model, mean_outs, edges=dropped), torch.inference_mode():
        circuit = float(batch_diff(model(batch.clean)[model.out_slice], batch))
    # the same node set as an edge circuit: edges between kept nodes, the embeddings and output
    inside = keep | {"Resid Start"}
    our_edges = {e for e in model.edges if e.src.name in inside and (
        e.dest.name == "Resid End" or _owner(e.dest.name) in keep)}
    edge_faith = tree_faithfulness(model, loader, model.circuit_prune_scores(edges=our_edges),
                                   [len(our_edges)], full)
    node_check = {
        "full_logit_diff": full,
        "circuit_logit_diff": circuit,
        "faithfulness": circuit / full,
        "edges": len(our_edges),
        "edge_circuit_faithfulness": edge_faith[len(our_edges)],
    }
    target = ours["faithfulness"]
    heads, mlps = size_of(live_nodes(our_edges, tl_model.cfg.n_layers))
    result_rows = [{
        "name": (f"ours: iterative node pruning (T = {ours['threshold']:.2f})"
                 if ours.get("discovery") else f"ours: {ours['nodes_source']}"),
        "heads": sum(1 for x in ours["nodes"] if not x.startswith("MLP")),
        "mlps": sum(1 for x in ours["nodes"] if x.startswith("MLP")),
        "edges": len(our_edges),
        "faithfulness": node_check["faithfulness"],
        "how": "node set; edges = auto-circuit edges among its nodes",
        "live_heads": heads, "live_mlps": mlps,
    }]
    all_counts = list(range(0, len(model.edges) + 1))

    # (b) ACDC (KL target) with the same mean ablation for the patched edges
    started = time.perf_counter()
    original = acdc_module.src_ablations

    def mean_for_corrupt(m: Any, sample: Any, ablation_type: Any = AblationType.RESAMPLE) -> Any:
        # ACDC patches with the corrupted batch's own activations (resample); ours is the
        # token-wise mean over the corrupted prompts, so that is what it gets
        if isinstance(sample, torch.Tensor) and torch.equal(sample, corrupted):
            return mean_outs
        return original(m, sample, ablation_type)

    acdc_module.src_ablations = mean_for_corrupt
    try:
        exps = [int(x) for x in args.acdc_exps.split(",")]
        bases = [int(x) for x in args.acdc_bases.split(",")]
        acdc_scores = acdc_module.acdc_prune_scores(model, loader, None, tao_exps=exps,
                                                    tao_bases=bases)
    finally:
        acdc_module.src_ablations = original
    seconds["ACDC"] = time.perf_counter() - started
    started = time.perf_counter()
    eap_scores = mask_gradient_prune_scores(model, loader, None, grad_function="logit",
                                            answer_function="avg_diff", mask_val=0.0,
                                            ablation_type=MEAN, clean_corrupt=None)
    seconds["EAP"] = time.perf_counter() - started
    sweeps: dict[str, dict[int, float]] = {}
    # ACDC gives every edge pruned at tau the score tau (kept edges inf): its circuits are the
    # tau levels, one edge count each; EAP ranks every edge, so every count is a circuit
    flat = torch.cat([v.flatten() for v in acdc_scores.values()]).abs()
    acdc_counts = sorted({int((flat >= v).sum()) for v in flat.unique().tolist()})
    for name, scores, counts, how in (
        ("auto-circuit ACDC", acdc_scores, acdc_counts,
         "smallest tau-level circuit reaching ours"),
        ("auto-circuit EAP", eap_scores, all_counts, "smallest top-k edge count reaching ours"),
    ):
        started = time.perf_counter()
        faith = tree_faithfulness(model, loader, scores, counts, full)
        seconds[f"{name} sweep"] = time.perf_counter() - started
        sweeps[name] = {int(k): v for k, v in faith.items()}
        reaching = sorted(k for k, v in faith.items() if v >= target)
        if not reaching:
            best = max(faith, key=lambda k: faith[k])
            result_rows.append({"name": name, "heads": 0, "mlps": 0, "edges": best,
                                "faithfulness": faith[best],
                                "how": f"never reaches ours; best at {best} edges"})
            continue
        k = reaching[0]
        kept = kept_edges(model, scores, k)
        heads, mlps = size_of(live_nodes(kept, tl_model.cfg.n_layers))
        result_rows.append({"name": name, "heads": heads, "mlps": mlps, "edges": len(kept),
                            "faithfulness": faith[k], "how": how,
                            "nodes": sorted(live_nodes(kept, tl_model.cfg.n_layers))})
    graph = {"edges": len(model.edges), "srcs": len(model.srcs), "dests": len(model.dests)}
    versions = {p: metadata.version(p) for p in
                ("auto-circuit", "transformer-lens", "torch", "transformers", "numpy")}
    versions["transformer_lens"] = versions["transformer-lens"]
    Path(args.out).write_text(json.dumps({
        "conversion": conversion, "node_check": node_check, "rows": result_rows,
        "graph": graph, "versions": versions, "seconds": seconds, "sweeps": sweeps,
        "python": sys.version.split()[0],
    }))


def _owner(dest: str) -> str:
    return dest.rsplit(".", 1)[0] if dest.startswith("A") else dest


def batch_diff(logits: torch.Tensor, batch: Any) -> torch.Tensor:
    """Mean over prompts of correct minus distractor logit (float64)."""
    from auto_circuit.utils.tensor_ops import batch_answer_diffs

    return batch_answer_diffs(logits, batch).double().mean()


def tree_faithfulness(model: Any, loader: Any, scores: Any, counts: list[int],
                      full: float) -> dict[int, float]:
    """Faithfulness of the top-k-edge circuits (everything else patched with the mean) per
    edge count that auto-circuit could realise (tied scores merge counts)."""
    outs = run_circuits(model, loader, counts, scores, patch_type=PatchType.TREE_PATCH,
                        ablation_type=MEAN)
    batch = next(iter(loader))
    return {int(k): float(batch_diff(v[batch.key], batch)) / full for k, v in outs.items()}


def kept_edges(model: Any, scores: Any, count: int) -> set[Any]:
    """The edges ``run_circuits`` keeps for ``count``: scores at or above its threshold."""
    from auto_circuit.utils.tensor_ops import desc_prune_scores, prune_scores_threshold

    threshold = prune_scores_threshold(desc_prune_scores(scores), count)
    return {e for e in model.edges if bool(e.prune_score(scores).abs() >= threshold)}


if __name__ == "__main__":
    main()
