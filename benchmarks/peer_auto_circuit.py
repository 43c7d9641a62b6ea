"""Our circuit discovery against the `auto-circuit` package on the zoo teacher (issue 20, "Peer").

Two halves in two virtual environments, because auto-circuit pins TransformerLens 2.x and numpy
1.26 while pytest-circuits runs on today's stack:

1. OUR half (this file, ``--ours OUT.json``, run with the project's Python): loads
   ``zoo:tiny-teacher``, builds the built-in task (numerals, 32 prompts by default), finds the
   circuit with ``discover_circuit`` (iterative node pruning, mean ablation, T = 0.20) when the
   checkout has it, else takes the node set given by ``--nodes``; measures that node set's
   faithfulness independently of the discovery (one full forward of the model with every head
   and MLP outside the set mean-ablated through the engine's hooks) and writes the node set,
   both faithfulness numbers, the prompts, their token ids and the clean logits to JSON.
2. The PEER half (``peer_auto_circuit_peer.py``, run with auto-circuit's venv): loads the same
   checkpoint into a TransformerLens ``HookedTransformer``, checks its clean logits against
   ours, measures OUR node set with auto-circuit's patching (node-level ablation: every edge
   leaving a node outside the set is patched with the token-wise mean over the corrupted prompts)
   and runs auto-circuit's ACDC and edge attribution patching (EAP) with that same ablation,
   then searches each one's edge count for the smallest circuit reaching our faithfulness.

The driver (no arguments) runs both halves in subprocesses and prints the table that
``benchmarks/README.md`` quotes::

    python benchmarks/peer_auto_circuit.py
    python benchmarks/peer_auto_circuit.py --peer-python /work/peer-venv/bin/python \\
        --task numerals --prompts 32 --json peer.json

Setting up the peer venv (python3.11, pins in ``benchmarks/peer-requirements.txt``)::

    python3.11 -m venv /work/peer-venv
    /work/peer-venv/bin/pip install -r benchmarks/peer-requirements.txt

The script benchmarks the checkout it lives in (it puts the checkout first on ``sys.path``), or
the one given by ``--checkout`` (e.g. a worktree with ``discover_circuit`` before it is merged).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_SCRIPT = HERE / "peer_auto_circuit_peer.py"
DEFAULT_PEER_PYTHON = "/work/peer-venv/bin/python"
#: The node set measured when the checkout has no ``discover_circuit`` (``--nodes`` overrides):
#: the circuit that discovery found on the teacher's numerals task at T = 0.20 (mean ablation,
#: 32 prompts), so the table reads the same either way.
FALLBACK_NODES = "L0H0,L0H1,MLP0,MLP1,MLP2"


# ----------------------------------------------------------------------------- our half


def _node_faithfulness(model: Any, task: Any, keep: set[str]) -> tuple[float, float]:
    """(mean logit difference with every head and MLP outside ``keep`` mean-ablated, full mean
    logit difference): one full forward with the engine's ablation values written into the
    ablated heads' z slices and MLP outputs, not the pruner's replays."""
    import torch

    from pytest_circuits.analysis import engine
    from pytest_circuits.components import all_components

    tensors = engine.task_tensors(model, task)
    ablated = [c for c in all_components(int(model.n_layers), int(model.n_heads))
               if c.name not in keep]
    by_hook: dict[str, list[tuple[Any, torch.Tensor | None]]] = {}
    for comp in ablated:
        value = engine.replacement(model, task, comp, "mean")
        by_hook.setdefault(engine.component_hook(comp, model), []).append((comp, value))

    def make(edits: list[tuple[Any, torch.Tensor | None]]) -> Any:
        def edit(act: torch.Tensor, hook: Any) -> torch.Tensor:
            out = act.clone()
            for comp, value in edits:
                target = out[:, :, comp.order] if comp.kind == "head" else out
                assert value is not None
                target.copy_(value.to(dtype=target.dtype).expand_as(target))
            return out

        return edit

    hooks = [(name, make(edits)) for name, edits in by_hook.items()]
    with torch.no_grad():
        capture = engine.run_capture(model, tensors.tokens, hooks=hooks)
        logits = engine.prediction_logits(model, capture.final, tensors.positions)
        clean = engine.run_capture(model, tensors.tokens)
        clean_logits = engine.prediction_logits(model, clean.final, tensors.positions)
    ablated_diff = engine.logit_differences(logits, tensors.correct, tensors.distractor)
    full_diff = engine.logit_differences(clean_logits, tensors.correct, tensors.distractor)
    return float(ablated_diff.double().mean()), float(full_diff.double().mean())


def run_ours(args: argparse.Namespace) -> None:
    """Our half: discovery (or the given node set), faithfulness, prompts and logits to JSON."""
    import torch

    torch.set_num_threads(args.threads)
    import pytest_circuits
    from pytest_circuits.analysis import engine
    from pytest_circuits.models import load_model
    from pytest_circuits.tasks.builtin import builtin_task
    from pytest_circuits.zoo import zoo_path

    model = load_model(f"zoo:{args.model}", device="cpu", dtype=torch.float32)
    task = builtin_task(args.task, args.prompts, seed=args.seed, tokenizer=model.tokenizer)
    tensors = engine.task_tensors(model, task)
    discovery: dict[str, Any] | None = None
    if args.nodes:
        nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
        source = "given (--nodes)"
    else:
        try:
            from pytest_circuits.analysis.circuits import discover_circuit
        except ImportError:
            discover_circuit = None
        if discover_circuit is None:
            nodes = FALLBACK_NODES.split(",")
            source = "fallback node set (this checkout has no discover_circuit)"
        else:
            started = time.perf_counter()
            found = discover_circuit(model, task, threshold=args.threshold, ablation="mean",
                                     seed=args.seed, stability=None)
            nodes = list(found.nodes)
            source = f"discover_circuit(threshold={args.threshold}, ablation='mean')"
            discovery = {
                "faithfulness": found.circuit_logit_diff / found.full_logit_diff,
                "circuit_logit_diff": found.circuit_logit_diff,
                "full_logit_diff": found.full_logit_diff,
                "cost_fe": found.cost_fe,
                "passes": found.passes,
                "seconds": time.perf_counter() - started,
            }
    circuit_diff, full_diff = _node_faithfulness(model, task, set(nodes))
    with torch.no_grad():
        capture = engine.run_capture(model, tensors.tokens)
        logits = engine.prediction_logits(model, capture.final, tensors.positions)
    out = {
        "checkout": str(Path(pytest_circuits.__file__).resolve().parent.parent),
        "model": args.model,
        "checkpoint": str(zoo_path(args.model)),
        "task": task.name,
        "n_prompts": task.n_prompts if hasattr(task, "n_prompts") else len(task.prompts),
        "seed": args.seed,
        "threshold": args.threshold,
        "ablation": "mean over the corrupted reference prompts, per position",
        "prompts": list(task.prompts),
        "corrupted": list(task.corrupted),
        "correct": list(task.correct),
        "distractors": list(task.distractors),
        "tokens": tensors.tokens.tolist(),
        "corrupted_tokens": tensors.corrupted.tolist(),
        "positions": tensors.positions.tolist(),
        "correct_ids": tensors.correct.tolist(),
        "distractor_ids": tensors.distractor.tolist(),
        "clean_logits": logits.double().tolist(),
        "n_layers": int(model.n_layers),
        "n_heads": int(model.n_heads),
        "nodes": nodes,
        "nodes_source": source,
        "discovery": discovery,
        "full_logit_diff": full_diff,
        "circuit_logit_diff": circuit_diff,
        "faithfulness": circuit_diff / full_diff,
    }
    Path(args.ours).write_text(json.dumps(out))


# ----------------------------------------------------------------------------- driver


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"{what} failed (exit {done.returncode}): {' '.join(command)}")
    print(f"# {what}: {time.perf_counter() - started:.1f} s", file=sys.stderr)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(ours: dict[str, Any], peer: dict[str, Any]) -> str:
    """The markdown table README.md quotes, from both halves' JSON."""
    check = peer["node_check"]
    lines = [
        f"model `zoo:{ours['model']}`, task `{ours['task']}` ({ours['n_prompts']} prompts, "
        f"seed {ours['seed']}), ablation: {ours['ablation']}",
        f"our node set ({ours['nodes_source']}): {', '.join(ours['nodes'])}",
        f"clean logits, TransformerLens {peer['versions']['transformer_lens']} vs ours: max "
        f"|diff| {peer['conversion']['max_abs_logit_diff_vs_ours']:.3g} (HF in the peer venv "
        f"vs ours: {peer['conversion']['max_abs_logit_diff_hf_vs_ours']:.3g}); full logit "
        f"difference ours {ours['full_logit_diff']:.6f}, TL {check['full_logit_diff']:.6f}",
        "",
        "| faithfulness of our node set | value |",
        "| --- | --- |",
    ]
    if ours.get("discovery"):
        lines.append(f"| ours, as discover_circuit reports it (pruner replays) | "
                     f"{_fmt(ours['discovery']['faithfulness'], 6)} |")
    lines += [
        f"| ours, one full forward with the engine's ablation hooks | "
        f"{_fmt(ours['faithfulness'], 6)} |",
        f"| auto-circuit, node ablation (patch every edge out of a dropped node) | "
        f"{_fmt(check['faithfulness'], 6)} |",
        f"| abs difference ours vs auto-circuit | "
        f"{abs(ours['faithfulness'] - check['faithfulness']):.2g} |",
        "",
        f"| circuit (target faithfulness >= {ours['faithfulness']:.4f}) | heads | MLPs | "
        "nodes | edges | faithfulness | found by |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in peer["rows"]:
        lines.append(
            f"| {row['name']} | {row['heads']} | {row['mlps']} | {row['heads'] + row['mlps']} | "
            f"{row['edges']} | {_fmt(row['faithfulness'])} | {row['how']} |")
    lines.append("")
    for row in peer["rows"]:
        if row.get("nodes"):
            lines.append(f"- {row['name']} uses: {', '.join(row['nodes'])}")
    levels = peer["sweeps"].get("auto-circuit ACDC", {})
    if levels:
        lines.append("- ACDC's tau levels (edges: faithfulness): " + ", ".join(
            f"{k}: {v:.3f}" for k, v in sorted(levels.items(), key=lambda kv: int(kv[0]))))
    lines.append(f"edges in auto-circuit's graph: {peer['graph']['edges']} "
                 f"({peer['graph']['srcs']} sources, {peer['graph']['dests']} destinations, q/k/v "
                 "inputs separate); times: " + ", ".join(
                     f"{k} {v:.1f} s" for k, v in peer["seconds"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", metavar="OUT.json", help="run only our half, writing OUT.json")
    parser.add_argument("--peer-python", default=os.environ.get("PEER_PYTHON",
                                                                DEFAULT_PEER_PYTHON))
    parser.add_argument("--checkout", default=str(ROOT),
                        help="the pytest-circuits checkout our half imports (default: this one)")
    parser.add_argument("--model", default="tiny-teacher")
    parser.add_argument("--task", default="numerals", choices=["numerals", "numwords", "ioi"])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.20)
    parser.add_argument("--nodes", default="",
                        help="comma-separated node set (L0H1,MLP2,...) instead of discovery")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="write both halves' results here")
    args = parser.parse_args(argv)
    if args.ours:
        run_ours(args)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        ours_path, peer_path = Path(tmp) / "ours.json", Path(tmp) / "peer.json"
        our_env = {**env, "PYTHONPATH": os.pathsep.join(
            [args.checkout, *filter(None, [env.get("PYTHONPATH")])])}
        # PYTHONPATH puts the checkout before any installed copy (the script's own folder,
        # first on sys.path, holds no package)
        command = [sys.executable, str(Path(__file__).resolve()), "--ours", str(ours_path),
                   "--model", args.model, "--task", args.task, "--prompts", str(args.prompts),
                   "--seed", str(args.seed), "--threshold", str(args.threshold),
                   "--threads", str(args.threads)]
        if args.nodes:
            command += ["--nodes", args.nodes]
        _run(command, our_env, "our half")
        peer_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        _run([args.peer_python, str(PEER_SCRIPT), str(ours_path), str(peer_path),
              "--threads", str(args.threads)], peer_env, "peer half (auto-circuit)")
        ours = json.loads(ours_path.read_text())
        peer = json.loads(peer_path.read_text())
    print(table(ours, peer))
    if args.json:
        for key in ("tokens", "corrupted_tokens", "clean_logits"):
            ours.pop(key, None)
        Path(args.json).write_text(json.dumps({"ours": ours, "peer": peer}, indent=1))


if __name__ == "__main__":
    main()
