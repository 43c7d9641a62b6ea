"""Counted matrix-multiply work of an exact sweep, in forward-pass equivalents.

A clock-timed FE moves with the machine's load (10 to 20 % within a run on the shared 2-core
machine); the FLOPs of the matrix products a sweep runs do not. This script counts them with
``torch.utils.flop_counter.FlopCounterMode`` for one plain forward and for a whole
``sweep(method="exact")`` (and, with ``--auto``, ``method="auto"``) of the random-weight shapes
of ``bench_sweep.py`` (same models, tasks and seeds), and prints the ratio. Element-wise work
(GELU, norms, softmax) and Python overhead are not counted; the clock figures of
``bench_sweep.py`` include them.

    python benchmarks/count_sweep_work.py                 # gpt2 and distilgpt2 shapes
    python benchmarks/count_sweep_work.py --models gpt2 --auto
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_sweep  # noqa: E402  (the shapes, tokenizer and task builder of the benchmark)


def counted(fn: object) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()  # type: ignore[operator]
    return int(counter.get_total_flops())


def count_model(shape: str, args: argparse.Namespace) -> dict[str, float]:
    from pytest_circuits.analysis import ablation, engine

    directory = Path(tempfile.mkdtemp(prefix="count-sweep-"))
    bench_sweep.write_tokenizer(directory)
    model = bench_sweep.build_model(shape, directory, "cpu", "float32", args.seed)
    task, clean = bench_sweep.random_task(model, args.prompts, args.seq, args.seed)
    forward = counted(lambda: model.bridge(clean))
    engine.model_cache(model).clear()
    exact = counted(lambda: ablation.sweep(model, task, method="exact", margin=0))
    row = {"forward_flops": float(forward), "exact_fe": exact / forward}
    if args.auto:
        engine.model_cache(model).clear()
        auto = counted(lambda: ablation.sweep(model, task, method="auto", margin=0))
        row["auto_fe"] = auto / forward
    return row


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,distilgpt2")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--seq", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auto", action="store_true", help="also count method='auto'")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"counted matmul work, {args.prompts} prompts x {args.seq} tokens, float32, mean "
          "ablation of every head and MLP (1 FE = the FLOPs of one plain forward)")
    for shape in [m for m in args.models.split(",") if m]:
        row = count_model(shape, args)
        parts = [f"{shape:<11} 1 FE = {row['forward_flops'] / 1e9:.1f} GFLOP",
                 f"exact {row['exact_fe']:.2f} FE"]
        if "auto_fe" in row:
            parts.append(f"auto {row['auto_fe']:.2f} FE")
        if shape == "gpt2":
            parts.append(f"target exact <= 50: {'met' if row['exact_fe'] <= 50 else 'MISSED'}")
        print("  ".join(parts), flush=True)


if __name__ == "__main__":
    main()
