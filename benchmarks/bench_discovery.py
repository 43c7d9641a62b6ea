"""What a circuit discovery (iterative node pruning) costs against an exact single-component sweep.

Measured in one run, per model: the exact sweep's wall time and its counted forward-pass
equivalents (FE: blocks run over the number of layers, plus the clean and reference runs, the
same count ``discover_circuit`` reports as ``cost_fe``), the discovery's wall time and counted
FE (one threshold, no stability sweep, no edges), and the ratios. The issue's bar: a whole
discovery of the GPT-2-small shape under 3x the exact sweep.

Models: GPT-2-small-shaped (12 layers x 12 heads, d_model 768, vocabulary 50257, random weights;
``bench_sweep.build_model``) on a task it is forced to do (its own highest and lowest logits are
the answers, ``bench_sweep.random_task``; margin 0, in this benchmark only), and the zoo teacher
on the built-in numerals and IOI tasks (default margin).

    python benchmarks/bench_discovery.py                     # CPU, 8 prompts x 24 tokens
    python benchmarks/bench_discovery.py --threads 1 --prompts 16 --json discovery.json
    python benchmarks/bench_discovery.py --device cuda --per-forward 13
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark this checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sweep import build_model, random_task, write_tokenizer  # noqa: E402


def sweep_fe(model: Any, task: Any, ablation: str = "mean") -> float:
    """The exact sweep's counted FE: clean run, reference run, each component replayed from its
    layer (the rule ``discover_circuit`` counts by)."""
    n_layers, n_heads = int(model.n_layers), int(model.n_heads)
    blocks = sum((n_layers - layer) * (n_heads + 1) for layer in range(n_layers))
    reference = len(task.corrupted) / len(task.prompts) if ablation != "zero" else 0.0
    return 1.0 + reference + blocks / n_layers


def one_fe_seconds(model: Any, task: Any, repeats: int = 3) -> float:
    """The median time of one plain forward of the task's prompts (no hooks, no grad)."""
    from pytest_circuits.analysis import engine

    tokens = engine.task_tensors(model, task).tokens
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model.bridge(tokens)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model: Any, task: Any, margin: float | None, per_forward: int | None,
            ablation: str) -> dict[str, Any]:
    from pytest_circuits.analysis import ablation as sweeps
    from pytest_circuits.analysis import engine
    from pytest_circuits.analysis.circuits import discover_circuit

    fe_time = one_fe_seconds(model, task)
    engine.model_cache(model).clear()
    start = time.perf_counter()
    sweeps.sweep(model, task, method="exact", ablation=ablation, margin=margin)
    sweep_seconds = time.perf_counter() - start
    engine.model_cache(model).clear()  # the discovery captures its own clean and reference runs
    start = time.perf_counter()
    found = discover_circuit(model, task, ablation=ablation, stability=None, margin=margin,
                             ablations_per_forward=per_forward)
    discovery_seconds = time.perf_counter() - start
    counted = sweep_fe(model, task, ablation)
    return {
        "model": model.name,
        "task": task.name,
        "prompts": len(task.prompts),
        "components": int(model.n_layers) * (int(model.n_heads) + 1),
        "one_fe_s": fe_time,
        "sweep_s": sweep_seconds,
        "sweep_fe_counted": counted,
        "sweep_fe_timed": sweep_seconds / fe_time,
        "discovery_s": discovery_seconds,
        "discovery_fe_counted": found.cost_fe,
        "discovery_fe_timed": discovery_seconds / fe_time,
        "ratio_fe": found.cost_fe / counted,
        "ratio_wall": discovery_seconds / sweep_seconds,
        "passes": found.passes,
        "nodes": len(found.nodes),
        "heads": found.n_heads,
        "mlps": found.n_mlps,
        "faithfulness": found.faithfulness,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seq", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ablation", default="mean")
    parser.add_argument("--per-forward", type=int, default=None,
                        help="candidates stacked per replay (default: 1 on CPU, 13 on CUDA)")
    parser.add_argument("--skip-zoo", action="store_true")
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    if not args.skip_gpt2:
        with tempfile.TemporaryDirectory() as directory:
            write_tokenizer(Path(directory))
            model = build_model("gpt2", Path(directory), args.device, "float32", args.seed)
            task, _ = random_task(model, args.prompts, args.seq, args.seed)
            rows.append(measure(model, task, 0.0, args.per_forward, args.ablation))
            del model
    if not args.skip_zoo:
        from pytest_circuits.models import load_model
        from pytest_circuits.tasks import builtin_task
        from pytest_circuits.zoo import zoo_path

        teacher = load_model(zoo_path("tiny-teacher"), device=args.device, name="tiny-teacher")
        for name in ("numerals", "ioi"):
            task = builtin_task(name, n_prompts=32, seed=args.seed)
            rows.append(measure(teacher, task, 0.1, args.per_forward, args.ablation))
    print(f"threads {torch.get_num_threads()}, device {args.device}, ablation {args.ablation}")
    header = ("model", "task", "comp", "1 FE s", "sweep s", "sweep FE", "disc s", "disc FE",
              "FE ratio", "wall ratio", "passes", "nodes (H+M)", "faith")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([
            r["model"], r["task"], str(r["components"]), f"{r['one_fe_s']:.3f}",
            f"{r['sweep_s']:.2f}", f"{r['sweep_fe_counted']:.1f}", f"{r['discovery_s']:.2f}",
            f"{r['discovery_fe_counted']:.1f}", f"{r['ratio_fe']:.2f}",
            f"{r['ratio_wall']:.2f}", str(r["passes"]),
            f"{r['nodes']} ({r['heads']}+{r['mlps']})", f"{r['faithfulness']:.3f}"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
