"""Offline study of ``sweep(method="auto")``'s bands: collect once, evaluate band rules in seconds.

``collect`` runs, for each model, task and ablation, the exact sweep, the attribution screen, the
joint ablation of each layer's heads, and cheap per-component quantities from the screen's own
forward and backward pass that could predict how far the screen is off (``|attribution|``, the
norm of the ablation's change of the head's z, the gradient norm, the absolute attribution mass
summed per prompt and per position), and writes them to one JSON file per case (``--out``,
``/tmp/auto_bounds`` by default). Cases: the zoo (3 models x numerals, ioi x mean, zero,
resample), random GPT-2 shapes (those of ``screening_error.py``, and the GPT-2-small shape of
``bench_sweep.py``) and SmolLM2-135M-Instruct on IOI (``--smollm2``; an exact sweep of it takes
minutes on a CPU).

``evaluate`` replays auto's confirmation loop on the saved data, with the rule in
``pytest_circuits.analysis.ablation`` (``_AutoState``, fed the saved exact values instead of
measurements), for a grid of safety factors: per case how many values it measured, whether
every estimate it kept lies within its band (largest error / band), and whether its verdicts and
top 5 equal the exact sweep's. Costs are counted, not timed: an exact value of layer ``l`` of
``L`` costs about ``(L - l) / L`` FE, the screen 3 FE and each layer's joint replay likewise.

    python benchmarks/auto_bounds.py collect [--smollm2] [--skip-zoo] [--skip-random]
    python benchmarks/auto_bounds.py evaluate [--safety 2,3,4,6]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(path) not in sys.path:  # measure the checkout even when it is not installed
        sys.path.insert(0, str(path))

DEFAULT_OUT = Path("/tmp/auto_bounds")
ZOO_MODELS = ("tiny-teacher", "tiny-student", "tiny-student-brittle")
ZOO_TASKS = ("numerals", "ioi")
ABLATIONS = ("mean", "zero", "resample")
#: The random GPT-2 shapes of tests/test_sweep_auto.py (``helpers.save_tiny_gpt2``).
TEST_SHAPES = (
    dict(seed=0),
    dict(seed=1, n_layer=3, n_head=4, n_embd=32, initializer_range=0.05),
    dict(seed=2, n_layer=4, n_head=8, n_embd=64, initializer_range=0.02),
    dict(seed=3, n_layer=3, n_head=8, n_embd=64, initializer_range=0.02),
    dict(seed=4, n_layer=3, n_head=8, n_embd=64, initializer_range=0.02),
)


# --------------------------------------------------------------------------- collection


def head_features(
    model: Any, task: Any, components: Sequence[Any], ablation: str, seed: int
) -> dict[str, dict[str, float]]:
    """Per component, from one forward and backward pass over the whole task (in drop points
    where the quantity is on the metric's scale): the screen's linear term ``lin``, the absolute
    attribution mass per position ``mass_pos`` and per prompt ``mass_prompt``, the norms of the
    ablation's change ``dz`` (RMS per prompt), of the gradient ``grad`` and of the activation
    ``act``."""
    from pytest_circuits.analysis import engine

    tensors = engine.task_tensors(model, task)
    layers = sorted({c.layer for c in components})
    names = [engine.z_hook(i, model) for i in layers] + [
        engine.mlp_out_hook(i, model) for i in layers
    ]
    capture = engine.run_capture(model, tensors.tokens, cache_names=names, track_grad=True)
    with torch.enable_grad():
        logits = engine.prediction_logits(model, capture.final, tensors.positions)
        diffs = engine.logit_differences(logits, tensors.correct, tensors.distractor)
        diffs.mean().backward()
    clean = float(diffs.detach().double().mean())
    points = 100.0 / clean
    n = tensors.n_prompts
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for comp in components:
            act = capture.cache[engine.component_hook(comp, model)]
            grad = act.grad
            if comp.kind == "head":
                act, grad = act[:, :, comp.order], grad[:, :, comp.order]
            value = engine.replacement(model, task, comp, ablation, seed=seed)
            target = torch.zeros_like(act) if value is None else value.to(act.dtype).expand_as(act)
            delta = (target - act).double()
            g = grad.double()
            per_pos = (delta * g).sum(-1)  # [batch, seq]
            out[comp.name] = {
                "lin": float(-per_pos.sum() * points),
                "mass_pos": float(per_pos.abs().sum() * points),
                "mass_prompt": float(per_pos.sum(-1).abs().sum() * points),
                "dz": float(delta.norm() / math.sqrt(n)),
                "grad": float(g.norm() * math.sqrt(n)),
                "act": float(act.double().norm() / math.sqrt(n)),
            }
    return out


def collect_case(model: Any, task: Any, label: str, ablation: str, margin: float,
                 out: Path, seed: int = 0) -> None:
    from pytest_circuits.analysis.ablation import (
        _attribution_metrics,
        _joint_head_metrics,
        sweep,
    )

    path = out / f"{label.replace('/', '_').replace(':', '_')}-{ablation}.json"
    if path.exists():
        print(f"{path.name}: already collected", flush=True)
        return
    started = time.perf_counter()
    exact = sweep(model, task, ablation=ablation, method="exact", margin=margin, seed=seed)
    exact_s = time.perf_counter() - started
    components = model.components("all")
    _, screened = _attribution_metrics(model, task, components, ablation, seed)
    heads: dict[int, list[Any]] = {}
    for comp in components:
        if comp.kind == "head":
            heads.setdefault(comp.layer, []).append(comp)
    joint = _joint_head_metrics(model, task, heads, ablation, seed)
    features = head_features(model, task, components, ablation, seed)
    data = {
        "label": label,
        "ablation": ablation,
        "n_layers": model.n_layers,
        "n_heads": model.n_heads,
        "clean": exact.clean_metric,
        "exact_seconds": exact_s,
        "components": [
            {
                "name": c.name,
                "kind": c.kind,
                "layer": c.layer,
                "exact": exact.effect(c.name).ablated_metric,
                "screened": screened[c],
                **features[c.name],
            }
            for c in components
        ],
        "joint": {str(layer): value for layer, value in joint.items()},
    }
    path.write_text(json.dumps(data))
    print(f"{path.name}: {len(components)} components, exact sweep {exact_s:.0f} s", flush=True)


def collect(args: argparse.Namespace) -> None:
    from screening_error import RANDOM_SHAPES, random_gpt2, random_task, write_tokenizer

    from pytest_circuits.models import load_model
    from pytest_circuits.tasks import builtin_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_zoo:
        for name in ZOO_MODELS:
            model = load_model(f"zoo:{name}", device="cpu")
            for task_name in ZOO_TASKS:
                task = builtin_task(task_name, n_prompts=24)
                for ablation in ABLATIONS:
                    collect_case(model, task, f"zoo-{name}-{task_name}", ablation, 0.1, out)
    if not args.skip_random:
        with tempfile.TemporaryDirectory() as scratch:
            write_tokenizer(Path(scratch))
            for n_layer, n_head, d_model, init in RANDOM_SHAPES:
                for seed in range(args.seeds):
                    model = random_gpt2(n_layer, n_head, d_model, init, seed, Path(scratch))
                    task = random_task(model, 16, 12, seed)
                    for ablation in ABLATIONS:
                        collect_case(model, task, model.name, ablation, 0.0, out)
    if args.test_shapes:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from helpers import load_plain_hf, preferred_task, save_tiny_gpt2

        for i, shape in enumerate(TEST_SHAPES):
            with tempfile.TemporaryDirectory() as scratch:
                directory = save_tiny_gpt2(Path(scratch), **shape)
                model = load_model(directory, device="cpu")
                task = preferred_task(load_plain_hf(directory), model.tokenizer, name="auto")
                for ablation in ABLATIONS:
                    collect_case(model, task, f"test-shape{i}", ablation, 0.1, out)
    if args.gpt2_small:
        import bench_sweep

        with tempfile.TemporaryDirectory() as scratch:
            bench_sweep.write_tokenizer(Path(scratch))
            model = bench_sweep.build_model("gpt2", Path(scratch), "cpu", "float32", 0)
        task, _ = bench_sweep.random_task(model, 32, 24, 0)
        collect_case(model, task, "gpt2-small-shape", "mean", 0.0, out)
    if args.smollm2:
        import bench_sweep

        model = bench_sweep.load_smollm2("cpu", "float32")
        for spec in args.smollm2.split(","):
            ablation, seed = spec.split(":")
            task = bench_sweep.ioi_task(model, 32, int(seed))
            collect_case(model, task, f"smollm2-ioi32-seed{seed}", ablation, 0.1, out)


# --------------------------------------------------------------------------- evaluation


def load_cases(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


#: The two kinds of gate an auto sweep serves: the defaults (tolerance 20, top 5) and everything
#: a gate can ask (bench_sweep.py's and screening_error.py's thresholds).
THRESHOLD_SETS = {
    "default": dict(drop=(20.0,), mean_drop=(), top_k=5),
    "full": dict(drop=(5.0, 20.0), mean_drop=(1.0, 2.0, 5.0), top_k=5),
}
PREDICTORS = ("one", "abs_s", "dz", "dz2", "dzg", "mass_pos", "mass_prompt", "sqrt_mass")


def predictor(row: dict[str, Any], name: str) -> float:
    if name == "one":
        return 1.0
    if name == "abs_s":
        return abs(row["lin"])
    if name == "dz2":
        return row["dz"] ** 2
    if name == "dzg":
        return row["dz"] * row["grad"]
    if name == "sqrt_mass":
        return math.sqrt(row["mass_pos"])
    return float(row[name])


def make_rule(beta: float) -> type:
    """The shipped ``_AutoState``, or (``beta`` > 0) a variant whose band also grows with
    ``beta`` times the size of the screened drop."""
    from pytest_circuits.analysis.ablation import _AutoState

    if not beta:
        return _AutoState

    class Rule(_AutoState):  # type: ignore[misc, valid-type]
        def band(self, comp: Any) -> float:
            return super().band(comp) + beta * abs(self.screened_drop[comp])

    return Rule


def simulate(case: dict[str, Any], rule: type, predictor_name: str, safety: float,
             floor: float, limits: dict[str, Any], model_share: float,
             eps: float | None = None) -> dict[str, Any]:
    """Auto's confirmation loop (the shipped ``_confirm``) on one saved case, measuring from the
    saved exact values; the heads' scales are ``predictor_name`` plus ``eps`` of its mean (the
    shipped ``_head_scales`` for the prompt mass)."""
    from pytest_circuits import metrics
    from pytest_circuits.analysis import ablation
    from pytest_circuits.analysis.ablation import GateThresholds, _confirm
    from pytest_circuits.components import Component

    eps = ablation.SCREEN_MASS_EPS if eps is None else eps
    clean = case["clean"]
    rows = {Component.parse(r["name"]): r for r in case["components"]}
    comps = sorted(rows)
    drop = {c: 100.0 - 100.0 * rows[c]["exact"] / clean for c in comps}
    screened = {c: 100.0 - 100.0 * rows[c]["screened"] / clean for c in comps}
    heads = [c for c in comps if c.kind == "head"]
    raw = {c: predictor(rows[c], predictor_name) for c in heads}
    mean_raw = sum(raw.values()) / max(len(raw), 1)
    scale = {c: raw[c] + eps * mean_raw if predictor_name != "one" else 1.0 for c in heads}
    thresholds = GateThresholds(**limits)
    state = rule(clean=clean, components=comps, screened_drop=screened, thresholds=thresholds,
                 safety=safety, floor=floor, scale=scale, model_share=model_share,
                 n_layers=case["n_layers"])
    joint = {int(layer): 100.0 - 100.0 * value / clean for layer, value in case["joint"].items()}
    rounds = _confirm(state, joint, lambda pending: {c: rows[c]["exact"] for c in pending})
    over = []
    for c in comps:
        if c not in state.exact:
            over.append((abs(drop[c] - screened[c]) / state.band(c), c.name, screened[c],
                         drop[c], state.band(c)))
    final = [drop[c] if c in state.exact else screened[c] for c in comps]
    exact_all = [drop[c] for c in comps]
    n_layers = case["n_layers"]
    cost = 3.0 + sum((n_layers - layer) / n_layers for layer in joint)
    cost += sum((n_layers - c.layer) / n_layers for c in state.exact)
    return {
        "n": len(comps),
        "n_exact": len(state.exact),
        "cost": cost,
        "worst": max(over, default=(0.0, "", 0.0, 0.0, 0.0)),
        "outside": sum(1 for o in over if o[0] > 1.0),
        "same": same_verdicts([c.name for c in comps], exact_all, final, limits, metrics),
        "rounds": rounds,
        "label": case["label"] + "/" + case["ablation"],
    }


def same_verdicts(names: list[str], exact: list[float], auto: list[float],
                  limits: dict[str, Any], metrics: Any) -> bool:
    import numpy as np

    e, a = np.array(exact), np.array(auto)
    ec, ac = np.clip(e, 0, 100), np.clip(a, 0, 100)
    for t in limits["drop"]:
        if metrics.severity_score(ec, tolerance=t) != metrics.severity_score(ac, tolerance=t):
            return False
        if metrics.count_above(ec, tolerance=t) != metrics.count_above(ac, tolerance=t):
            return False
    for limit in limits["mean_drop"]:
        if (ec.mean() <= limit) != (ac.mean() <= limit):
            return False
    k = limits["top_k"]
    if list(np.argsort(-e, kind="stable")[:k]) != list(np.argsort(-a, kind="stable")[:k]):
        return False
    return list(np.argsort(-np.abs(e), kind="stable")[:k]) == list(
        np.argsort(-np.abs(a), kind="stable")[:k]
    )


def group(label: str) -> str:
    if label.startswith("smollm2"):
        return "smollm2"
    if label.startswith("gpt2-small"):
        return "gpt2-small"
    return "zoo+random"


def evaluate(args: argparse.Namespace) -> None:
    cases = load_cases(Path(args.out))
    print(f"{len(cases)} cases from {args.out}")
    for case in cases:  # the features' linear term is the screen's own estimate
        for r in case["components"]:
            s = 100.0 - 100.0 * r["screened"] / case["clean"]
            assert abs(s - r["lin"]) <= 1e-3 * max(1.0, abs(s)), (case["label"], r["name"])
    rules = [tuple(r.split(":")) for r in args.rules.split(",")]
    safeties = [float(x) for x in args.safety.split(",")]
    groups = ("zoo+random", "gpt2-small", "smollm2")
    header = f"{'rule':<34} {'safety':>6} " + " ".join(
        f"{g + '/' + t:>26}" for g in groups for t in THRESHOLD_SETS
    )
    print(header)
    print(" " * 42 + " ".join(f"{'exact cost out worst same':>26}" for _ in groups
                                for _ in THRESHOLD_SETS))
    for rule_spec in rules:
        defaults = ("mass_prompt", "0.25", "0")
        pred, share, beta = rule_spec + defaults[len(rule_spec):]
        rule = make_rule(float(beta))
        for safety in safeties:
            cells, worst_all = [], (0.0,)
            for g in groups:
                for tname, limits in THRESHOLD_SETS.items():
                    results = [
                        simulate(c, rule, pred, safety, args.floor, limits, float(share))
                        for c in cases if group(c["label"]) == g
                    ]
                    if not results:
                        cells.append(f"{'-':>26}")
                        continue
                    n_exact = sum(r["n_exact"] for r in results)
                    n = sum(r["n"] for r in results)
                    cost = sum(r["cost"] for r in results) / len(results)
                    outside = sum(r["outside"] for r in results)
                    worst = max(r["worst"] for r in results)
                    worst_all = max(worst_all, worst + (g, tname))
                    same = sum(r["same"] for r in results)
                    if args.verbose and g != "zoo+random":
                        for r in results:
                            print(f"      {r['label']:<40} {tname:<8} {r['n_exact']:>4}/{r['n']:<4}"
                                  f" cost {r['cost']:6.1f} outside {r['outside']} worst "
                                  f"{r['worst'][0]:.2f} {r['worst'][1]} same {r['same']}")
                    cells.append(f"{n_exact:>5}/{n:<5}{cost:>5.1f} {outside:>3} {worst[0]:>5.2f}"
                                 f" {same:>2}/{len(results):<2}")
            print(f"{':'.join(rule_spec):<34} {safety:>6} " + " ".join(cells), flush=True)
            if args.verbose:
                print("      worst:", worst_all)


# --------------------------------------------------------------------------- the shipped rule, run


def run_auto(args: argparse.Namespace) -> None:
    """``sweep(method="auto")`` itself on the GPT-2-small shape and SmolLM2 (``--cases``), timed
    in FE on the CPU clock like ``bench_sweep.py`` (median of plain forwards before and after),
    for the default and the full thresholds, checked against the collected exact sweep: every
    kept estimate within its band, the verdicts and top 5 the exact sweep's."""
    import statistics

    import bench_sweep
    import numpy as np

    from pytest_circuits import metrics
    from pytest_circuits.analysis import engine
    from pytest_circuits.analysis.ablation import GateThresholds, sweep

    bench_sweep.use_clock("cpu")
    out = Path(args.out)
    smollm2 = None
    for spec in args.cases.split(","):
        if spec == "gpt2-small":
            with tempfile.TemporaryDirectory() as scratch:
                bench_sweep.write_tokenizer(Path(scratch))
                model = bench_sweep.build_model("gpt2", Path(scratch), "cpu", "float32", 0)
            task, _ = bench_sweep.random_task(model, 32, 24, 0)
            label, ablation, margin = "gpt2-small-shape", "mean", 0.0
        else:
            ablation, seed = spec.split(":")
            if smollm2 is None:
                smollm2 = bench_sweep.load_smollm2("cpu", "float32")
            model = smollm2
            task = bench_sweep.ioi_task(model, 32, int(seed))
            label, margin = f"smollm2-ioi32-seed{seed}", 0.1
        saved = json.loads((out / f"{label}-{ablation}.json").read_text())
        exact = {r["name"]: r for r in saved["components"]}
        tokens = engine.task_tensors(model, task).tokens
        samples = bench_sweep.forward_equivalent(model, tokens, 5)
        for tname, limits in THRESHOLD_SETS.items():
            engine.model_cache(model).clear()  # the clean run and the means are timed too
            thresholds = GateThresholds(**limits)

            def auto_sweep(model: Any = model, task: Any = task, ablation: str = ablation,
                           margin: float = margin, thresholds: Any = thresholds) -> Any:
                return sweep(model, task, method="auto", ablation=ablation, margin=margin,
                             thresholds=thresholds)

            seconds, auto = bench_sweep.timed("cpu", auto_sweep)
            samples += bench_sweep.forward_equivalent(model, tokens, 5, warm_up=False)
            fe = statistics.median(samples)
            clean = auto.clean_metric
            # the sweep's own arithmetic, so that equal values give equal drops bit for bit
            values = np.array([exact[e.name]["exact"] for e in auto.effects])
            exact_drops = list(100.0 - metrics.retained(clean, values))
            over = [
                (abs(e.drop - d) / e.bound, e.name)
                for e, d in zip(auto.effects, exact_drops, strict=True)
                if e.bound is not None
            ]
            outside = [o for o in over if o[0] > 1.0]
            same = same_verdicts(auto.names, exact_drops, list(auto.drops), limits, metrics)
            confirmed_equal = all(
                e.ablated_metric == exact[e.name]["exact"] for e in auto.effects if e.is_exact
            )
            if not same:
                for t in limits["drop"]:
                    ec, ac = np.clip(exact_drops, 0, 100), np.clip(auto.drops, 0, 100)
                    print("  severity", t, metrics.severity_score(ec, tolerance=t),
                          metrics.severity_score(ac, tolerance=t), "count",
                          metrics.count_above(ec, tolerance=t),
                          metrics.count_above(ac, tolerance=t))
                print("  mean", float(np.clip(exact_drops, 0, 100).mean()),
                      float(np.clip(auto.drops, 0, 100).mean()))
                print("  top", [auto.names[i] for i in np.argsort(-np.array(exact_drops))[:5]],
                      [auto.names[i] for i in np.argsort(-auto.drops)[:5]])
            print(f"{label}/{ablation} {tname}: {seconds / fe:.1f} FE (1 FE {fe:.3f} s), "
                  f"{len(auto.exact_names)}/{len(auto.effects)} exact, {len(outside)} estimates "
                  f"outside their bands, worst error/band {max(over, default=(0.0, ''))}, "
                  f"same verdicts and top {limits['top_k']}: {same}, confirmed values equal "
                  f"the exact sweep's: {confirmed_equal}, rounds {auto.screening.rounds}",
                  flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--out", default=str(DEFAULT_OUT))
    c.add_argument("--seeds", type=int, default=2, help="random models per shape")
    c.add_argument("--skip-zoo", action="store_true")
    c.add_argument("--skip-random", action="store_true")
    c.add_argument("--test-shapes", action="store_true", help="tests/test_sweep_auto.py's")
    c.add_argument("--gpt2-small", action="store_true", help="the GPT-2-small shape (minutes)")
    c.add_argument("--smollm2", default="",
                   help="comma-separated ablation:seed IOI cases of SmolLM2, e.g. mean:0,mean:1")
    e = sub.add_parser("evaluate")
    e.add_argument("--out", default=str(DEFAULT_OUT))
    e.add_argument("--rules", default="mass_prompt:0.25:0",
                   help="comma-separated predictor[:model_share[:beta]] (predictors: "
                        f"{', '.join(PREDICTORS)}; the shipped rule: mass_prompt with "
                        "SCREEN_MODEL_SHARE, beta 0)")
    e.add_argument("--safety", default="2,4,8")
    e.add_argument("--floor", type=float, default=0.25)
    e.add_argument("-v", "--verbose", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("--out", default=str(DEFAULT_OUT))
    r.add_argument("--cases", default="gpt2-small,mean:0,mean:1",
                   help="comma-separated: gpt2-small and SmolLM2 ablation:seed cases")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "collect":
        collect(args)
    elif args.command == "run":
        run_auto(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
