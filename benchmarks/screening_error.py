"""How far the attribution screen is from the exact sweep, and whether auto's bands held.

``sweep(method="auto")`` keeps a component's screened value when its band (``SCREEN_SAFETY``
times its layer's error rate times the head's prompt-mass scale, plus ``SCREEN_FLOOR``, in drop
points; see ``Screening``) keeps it clear of every threshold and of the top-k. Attribution is a
linear approximation, not a bound, so that rule is only as good as this measurement: on the zoo
and on random GPT-2 shapes, for every component auto left unconfirmed, how large its true error
was against the error its layer's rate predicts for it (``ratio``: rate x scale; must stay
below ``SCREEN_SAFETY``, with room to spare) and against its band (``err/band``: must stay below
1), and whether auto's verdicts and blamed components equal the exact sweep's. The band rule
itself was chosen offline with ``auto_bounds.py`` (also on SmolLM2).

Run ``python benchmarks/screening_error.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # measure the checkout even when it is not installed
    sys.path.insert(0, str(REPO_ROOT))

ZOO_MODELS = ("tiny-teacher", "tiny-student", "tiny-student-brittle")
ZOO_TASKS = ("numerals", "ioi")
ABLATIONS = ("mean", "zero", "resample")
#: Random GPT-2 shapes: (layers, heads, d_model, initializer_range). 0.02 is GPT-2's own
#: initialisation (small, nearly linear effects); 0.2 makes single ablations strongly nonlinear.
RANDOM_SHAPES = (
    (2, 4, 32, 0.02),
    (2, 4, 32, 0.2),
    (4, 4, 64, 0.02),
    (4, 4, 64, 0.2),
    (6, 8, 128, 0.02),
    (6, 8, 128, 0.1),
    (8, 12, 192, 0.02),
)
RANDOM_VOCAB = 1000
#: Verdicts compared between auto and exact: tolerances (severity, count above), mean-drop
#: limits, and the blamed top 5.
DROP_THRESHOLDS = (5.0, 20.0)
MEAN_DROP_LIMITS = (1.0, 2.0, 5.0)
TOP_K = 5


@dataclass
class Row:
    """One model, task and ablation: what auto confirmed and how its bands held."""

    label: str
    ablation: str
    n_components: int
    n_exact: int
    max_error: float  # largest |exact - screened| drop over all components, points
    max_ratio: float  # largest unconfirmed error / observed error of its layer
    max_over_band: float  # largest unconfirmed error / its band (the bound held when < 1)
    same_verdicts: bool
    max_confirmed_rel_diff: float


def random_gpt2(
    n_layer: int, n_head: int, d_model: int, init: float, seed: int, tokenizer_dir: Path
) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    from pytest_circuits.models import load_model

    config = GPT2Config(
        vocab_size=RANDOM_VOCAB, n_positions=64, n_embd=d_model, n_layer=n_layer, n_head=n_head,
        initializer_range=init, architectures=["GPT2LMHeadModel"], attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return load_model(
        GPT2LMHeadModel(config), tokenizer=tokenizer_dir, device="cpu",
        name=f"gpt2-{n_layer}x{n_head}x{d_model}-init{init}-seed{seed}",
    )


def write_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(RANDOM_VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="w0").save_pretrained(directory)


def random_task(model: Any, n_prompts: int, seq: int, seed: int) -> Any:
    """Random-token prompts whose answers are the model's own highest and lowest logits."""
    from pytest_circuits.tasks import Task

    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, RANDOM_VOCAB, (n_prompts, seq), generator=generator)
    corrupted = torch.randint(1, RANDOM_VOCAB, (n_prompts, seq), generator=generator)
    with torch.no_grad():
        last = model.bridge(clean)[:, -1, 1:].float()

    def words(row: Sequence[int]) -> str:
        return " ".join(f"w{i}" for i in row)

    return Task(
        name=f"random-{n_prompts}x{seq}-{seed}",
        prompts=[words(r) for r in clean.tolist()],
        correct=[f"w{i + 1}" for i in last.argmax(-1).tolist()],
        distractors=[f"w{i + 1}" for i in last.argmin(-1).tolist()],
        corrupted=[words(r) for r in corrupted.tolist()],
        position="last",
    )


def same_verdicts(exact: Any, auto: Any) -> bool:
    """Severity, worst drop and count at each tolerance, each mean-drop limit's verdict and
    the top 5 by drop and by influence: all equal."""
    for tolerance in DROP_THRESHOLDS:
        e, a = exact.brittleness(tolerance=tolerance), auto.brittleness(tolerance=tolerance)
        if (e.severity, e.worst_drop, e.count_above_tolerance) != (
            a.severity, a.worst_drop, a.count_above_tolerance
        ):
            return False
    e_mean = exact.brittleness().mean_drop
    a_mean = auto.brittleness().mean_drop
    if any((e_mean <= limit) != (a_mean <= limit) for limit in MEAN_DROP_LIMITS):
        return False
    if [x.name for x in exact.worst(TOP_K)] != [x.name for x in auto.worst(TOP_K)]:
        return False

    def top_influence(result: Any) -> list[str]:
        return [x.name for x in sorted(result.effects, key=lambda x: -x.influence)[:TOP_K]]

    return top_influence(exact) == top_influence(auto)


def measure(model: Any, task: Any, label: str, ablation: str, margin: float) -> Row:
    from pytest_circuits.analysis.ablation import GateThresholds, sweep

    exact = sweep(model, task, ablation=ablation, method="exact", margin=margin)
    screen = sweep(model, task, ablation=ablation, method="attribution", margin=margin)
    auto = sweep(
        model, task, ablation=ablation, method="auto", margin=margin,
        thresholds=GateThresholds(drop=DROP_THRESHOLDS, mean_drop=MEAN_DROP_LIMITS, top_k=TOP_K),
    )
    assert auto.screening is not None
    scales = dict(auto.screening.scales)
    max_ratio = max_over_band = max_rel = 0.0
    for e, s, a in zip(exact.effects, screen.effects, auto.effects, strict=True):
        if a.method == "exact":
            rel = abs(a.ablated_metric - e.ablated_metric) / max(abs(e.ablated_metric), 1e-12)
            max_rel = max(max_rel, rel)
            continue
        error = abs(e.drop - s.drop)
        layer_error = auto.screening.error_rate(e.layer) * scales.get(e.name, 1.0)
        max_ratio = max(max_ratio, error / layer_error if layer_error > 0 else 0.0)
        max_over_band = max(max_over_band, error / a.bound if a.bound else np.inf)
    return Row(
        label=label,
        ablation=ablation,
        n_components=len(exact.effects),
        n_exact=len(auto.exact_names),
        max_error=float(np.max(np.abs(exact.drops - screen.drops))),
        max_ratio=max_ratio,
        max_over_band=max_over_band,
        same_verdicts=same_verdicts(exact, auto),
        max_confirmed_rel_diff=max_rel,
    )


def run(args: argparse.Namespace) -> list[Row]:
    from pytest_circuits.models import load_model
    from pytest_circuits.tasks import builtin_task

    rows: list[Row] = []
    if not args.skip_zoo:
        for name in ZOO_MODELS:
            model = load_model(f"zoo:{name}", device="cpu")
            for task_name in ZOO_TASKS:
                task = builtin_task(task_name, n_prompts=args.prompts)
                for ablation in ABLATIONS:
                    rows.append(measure(model, task, f"zoo:{name}/{task_name}", ablation, 0.1))
                    print(format_row(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        write_tokenizer(Path(scratch))
        for n_layer, n_head, d_model, init in RANDOM_SHAPES:
            for seed in range(args.seeds):
                model = random_gpt2(n_layer, n_head, d_model, init, seed, Path(scratch))
                task = random_task(model, args.prompts, args.seq, seed)
                for ablation in ABLATIONS:
                    rows.append(measure(model, task, model.name, ablation, 0.0))
                    print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: Row) -> str:
    return (
        f"{row.label:<40} {row.ablation:<8} {row.n_exact:>4}/{row.n_components:<4} "
        f"{row.max_error:>9.2f} {row.max_ratio:>6.2f} {row.max_over_band:>8.2f} "
        f"{'yes' if row.same_verdicts else 'NO':>5} {row.max_confirmed_rel_diff:>9.1e}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    from pytest_circuits.analysis.ablation import SCREEN_FLOOR, SCREEN_SAFETY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="random models per shape")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per task")
    parser.add_argument("--seq", type=int, default=12, help="tokens per random prompt")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--skip-zoo", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(
        f"SCREEN_SAFETY {SCREEN_SAFETY}, SCREEN_FLOOR {SCREEN_FLOOR} points; "
        f"{args.threads} torch thread(s)"
    )
    print(
        f"{'model / task':<40} {'ablation':<8} {'exact':>9} {'max err':>9} {'ratio':>6} "
        f"{'err/band':>8} {'same':>5} {'conf diff':>9}"
    )
    rows = run(args)
    unconfirmed = [r for r in rows if r.n_exact < r.n_components]
    print(
        f"\n{len(rows)} sweeps, {sum(r.same_verdicts for r in rows)} with auto's verdicts and "
        f"top {TOP_K} equal to exact; {len(unconfirmed)} left components unconfirmed; "
        f"largest unconfirmed error / observed layer error "
        f"{max((r.max_ratio for r in rows), default=0.0):.3f}; largest error / band "
        f"{max((r.max_over_band for r in rows), default=0.0):.3f}; exact components measured "
        f"{sum(r.n_exact for r in rows)} of {sum(r.n_components for r in rows)}; largest "
        f"confirmed-vs-exact relative difference "
        f"{max((r.max_confirmed_rel_diff for r in rows), default=0.0):.1e} "
        f"({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
