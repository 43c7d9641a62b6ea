"""What sharding an exact sweep over Ray actors buys, and what Ray costs, on this machine.

One run measures, on a GPT-2-small-shaped model (12 layers x 12 heads + 12 MLPs, d_model 768,
random weights, saved to a directory so the actors load it from its source; the task is built
from the model as in ``bench_sweep.py``):

* the in-process exact sweep (one torch thread), warm (clean run memoised);
* a local Ray instance started once (``ray.init``): its start time;
* the same sweep on 1 and on 2 actors (one thread each): the first sweep (actors start, load
  the model, capture the clean run) and a warm one (what every later gate pays);
* the speed-up of 2 actors over 1, and Ray's per-sweep overhead: the warm 1-actor sweep minus
  the in-process one (shipping jobs and results, scheduling, merging);
* the values' equality with the in-process sweep (they must be bit-identical);

then estimates, from the FE counted by ``count_sweep_work.py`` (0.47 FE per component) and the
measured per-sweep overhead, for an 8B and a 70B teacher on N GPUs. The speed-up needs a free
core per actor: on a machine whose cores other processes keep busy it reads low.

Run ``python benchmarks/bench_ray.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # benchmark the checkout even when it is not installed
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Counted work of an exact sweep per component, in forward-pass equivalents (README: 0.32 FE
#: on GPT-2-small, about 0.47 FE on models whose unembedding is a smaller share of a forward).
FE_PER_COMPONENT = 0.47
#: Sustained bf16 throughput assumed for one H200 (about 30 % of its dense peak).
GPU_FLOPS = 300e12
TOKENS = 32 * 40  # 32 prompts of about 40 tokens
#: (name, parameters, layers, heads, GPUs one bf16 copy needs, seconds to load one copy)
TEACHERS = (("Llama-3.1-8B", 8.0e9, 32, 32, 1, 30.0),
            ("a 70B teacher", 70.6e9, 80, 64, 2, 240.0))


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def estimates(overhead_share: float, gpus: Sequence[int]) -> list[dict]:
    """Sweep wall time per task for each teacher on each GPU count: one model copy per actor,
    the replays split evenly (they are independent: no traffic but jobs and values), each actor
    capturing the clean run once (1 FE), plus Ray's measured per-sweep overhead share."""
    rows = []
    for name, params, layers, heads, per_copy, load_s in TEACHERS:
        components = layers * (heads + 1)
        fe_seconds = 2 * params * TOKENS / GPU_FLOPS
        sweep_fe = components * FE_PER_COMPONENT
        one_copy = (sweep_fe + 1) * fe_seconds
        for n in gpus:
            actors = n // per_copy
            if actors < 1:
                continue
            sharded = (sweep_fe / actors + 1) * fe_seconds * (1 + overhead_share)
            rows.append({"teacher": name, "components": components, "gpus": n,
                         "actors": actors, "sweep_fe": round(sweep_fe),
                         "one_copy_s": round(one_copy), "sharded_s": round(sharded, 1),
                         "load_s": load_s})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-prompts", type=int, default=4)
    parser.add_argument("--seq", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2, help="warm sweeps timed (the least "
                        "counts: the machine's other load only ever adds time)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch

    torch.set_num_threads(1)
    import ray
    from bench_sweep import build_model, random_task, write_tokenizer

    from pytest_circuits.analysis import ablation
    from pytest_circuits.config import context
    from pytest_circuits.distributed import RayExecutor
    from pytest_circuits.models import load_model

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tokenizer"
        write_tokenizer(tok)
        built = build_model("gpt2", tok, "cpu", "float32", seed=0)
        saved = built.save_pretrained(Path(tmp) / "gpt2-shape")
        del built
        model = load_model(saved, device="cpu", name="gpt2-shape")
        task, _ = random_task(model, args.n_prompts, args.seq, seed=0)

        def sweep() -> Any:
            return ablation.sweep(model, task, method="exact", margin=0)

        out["local_first_s"], local = timed(sweep)
        out["local_s"] = min(timed(sweep)[0] for _ in range(args.repeats))
        out["components"] = len(local.effects)
        out["ray_start_s"], _ = timed(lambda: ray.init(address="local", num_cpus=2,
                                                       include_dashboard=False,
                                                       log_to_driver=False))
        for actors in (1, 2):
            executor = RayExecutor("local", actors=actors)
            with context.changed(executor=executor):
                first_s, first = timed(sweep)
                warm_s, warm = min((timed(sweep) for _ in range(args.repeats)),
                                   key=lambda pair: pair[0])
            same = all(a.ablated_metric == b.ablated_metric and a.stderr == b.stderr
                       for sharded in (first, warm)
                       for a, b in zip(local.effects, sharded.effects, strict=True))
            out[f"actors_{actors}"] = {"first_s": first_s, "warm_s": warm_s,
                                       "load_and_ship_s": executor.timings["ship"],
                                       "bit_identical": same, "ran_on": warm.fingerprint.ran_on}
            executor.close()
        ray.shutdown()

    one, two = out["actors_1"]["warm_s"], out["actors_2"]["warm_s"]
    out["speedup_2_over_1"] = one / two
    out["overhead_per_sweep_s"] = one - out["local_s"]
    share = max(0.0, out["overhead_per_sweep_s"]) / out["local_s"]
    out["load_average"] = os.getloadavg()
    out["estimates"] = estimates(share, (1, 2, 4, 8, 16, 32))

    print(f"GPT-2-small shape, {out['components']} components, {args.n_prompts} prompts x "
          f"{args.seq} tokens, CPU, 1 thread per process, {os.cpu_count()} cores, load average "
          f"{out['load_average'][0]:.1f}")
    print(f"  in process:      {out['local_s']:.2f} s (first {out['local_first_s']:.2f} s)")
    print(f"  ray.init:        {out['ray_start_s']:.2f} s")
    for actors in (1, 2):
        row = out[f"actors_{actors}"]
        print(f"  {actors} actor(s):      {row['warm_s']:.2f} s warm, first {row['first_s']:.2f} s "
              f"(load check/ship {row['load_and_ship_s']:.2f} s); bit-identical: "
              f"{row['bit_identical']}")
    print(f"  speed-up 2 over 1: {out['speedup_2_over_1']:.2f}x; Ray overhead per warm sweep: "
          f"{out['overhead_per_sweep_s']:.2f} s ({100 * share:.0f} % of the sweep)")
    print("estimates (bf16, 32 prompts x 40 tokens, 300 TFLOP/s per H200):")
    for row in out["estimates"]:
        print(f"  {row['teacher']:<14} {row['gpus']:>2} GPUs, {row['actors']:>2} actors: "
              f"{row['sharded_s']:>5} s per task (one copy {row['one_copy_s']} s, "
              f"{row['sweep_fe']} FE; load {row['load_s']:.0f} s per actor, once a session)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
