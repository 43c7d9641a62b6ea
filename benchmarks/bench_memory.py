"""Memory against the number of prompts: does peak memory stay flat as a task grows (issue 11)?

For each prompt count N (``--prompts 256,2000,10000``) the script runs, each in a fresh
subprocess so each has its own peak resident set size (``resource.getrusage(RUSAGE_SELF)
.ru_maxrss``):

* ``compare``: ``pytest_circuits.compare(load_pair(teacher, student), task)`` with its defaults
  (mean ablation, the paper's similarity and matching): both models' task performance, both
  exact sweeps, the similarity matrices;
* ``sweep mean``: ``sweep(student, task, ablation="mean")`` (exact);
* ``sweep resample``: ``sweep(student, task, ablation="resample")`` (exact).

The sweeps run on the student by default (``--sweep-model teacher`` for the teacher, about
three times slower), which keeps the default run under about 10 minutes on a shared 2-core
machine; the teacher's mean sweep is inside ``compare`` anyway.

The models are the bundled zoo pair ``zoo:tiny-teacher`` / ``zoo:tiny-student``, the task
``builtin_task("numerals", n_prompts=N)`` (as many corrupted reference prompts as prompts, the
default). Each child first loads the models and builds the task, records its RSS then
(``base``), runs its phase and records the peak and the wall time of the phase alone.

The table gives, per N and phase, the peak RSS, the peak above the base, the wall time and the
ratio peak(N) / peak(smallest N), against the target "flat: <= 1.25x". The prompts are run in
chunks of ``engine.PROMPT_BATCH`` (256 unless ``PYTEST_CIRCUITS_PROMPT_BATCH`` says otherwise),
so with everything chunked the ratio should stay near 1.

Run ``python benchmarks/bench_memory.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("compare", "sweep mean", "sweep resample")
TARGET = 1.25
TEACHER, STUDENT = "zoo:tiny-teacher", "zoo:tiny-student"


def _rss_mb() -> float:
    """Peak RSS of this process so far, in MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _current_rss_mb() -> float:
    """Current RSS in MB (Linux /proc; the peak so far elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _rss_mb()


def child(n_prompts: int, phase: str, threads: int, sweep_model: str) -> dict[str, Any]:
    """Run one phase on N prompts in this (fresh) process and measure it."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))  # the checkout this script lives in, installed or not
    import pytest_circuits
    from pytest_circuits.analysis import engine

    teacher = pytest_circuits.load_model(TEACHER)
    student = pytest_circuits.load_model(STUDENT)
    task = pytest_circuits.builtin_task("numerals", n_prompts=n_prompts)
    base = _current_rss_mb()
    start = time.perf_counter()
    if phase == "compare":
        report = pytest_circuits.compare(pytest_circuits.load_pair(teacher, student), task)
        check = float(report.alignment.score)
    else:
        ablation = phase.split()[1]
        model = teacher if sweep_model == "teacher" else student
        result = pytest_circuits.sweep(model, task, ablation=ablation)
        check = float(result.clean_metric)
    seconds = time.perf_counter() - start
    return {
        "n_prompts": n_prompts,
        "phase": phase,
        "sweep_model": sweep_model,
        "threads": torch.get_num_threads(),
        "prompt_batch": engine.PROMPT_BATCH,
        "base_mb": base,
        "peak_mb": _rss_mb(),
        "seconds": seconds,
        "value": check,
        "module": pytest_circuits.__file__,
    }


def _run_child(n_prompts: int, phase: str, threads: int, sweep_model: str) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n_prompts),
           "--phase", phase, "--threads", str(threads), "--sweep-model", sweep_model]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"the {phase!r} run on {n_prompts} prompts failed:\n{done.stderr[-4000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict[str, Any]]) -> str:
    first = min(r["n_prompts"] for r in rows)
    smallest = {r["phase"]: r["peak_mb"] for r in rows if r["n_prompts"] == first}
    lines = [
        f"{'phase':<15} {'prompts':>8} {'base MB':>8} {'peak MB':>8} {'above base':>10} "
        f"{'seconds':>8} {'peak/peak(' + str(first) + ')':>16}  flat: <= {TARGET}x",
    ]
    for phase in PHASES:
        for r in sorted((r for r in rows if r["phase"] == phase), key=lambda r: r["n_prompts"]):
            ratio = r["peak_mb"] / smallest[phase]
            verdict = "yes" if ratio <= TARGET else "NO"
            lines.append(
                f"{phase:<15} {r['n_prompts']:>8} {r['base_mb']:>8.0f} {r['peak_mb']:>8.0f} "
                f"{r['peak_mb'] - r['base_mb']:>10.0f} {r['seconds']:>8.1f} {ratio:>15.2f}x  "
                f"{verdict}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", default="256,2000,10000",
                        help="comma-separated prompt counts (default 256,2000,10000); the "
                             "smallest is the reference of the ratio")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated phases to run (default: {', '.join(PHASES)})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op CPU threads in each child (default 1)")
    parser.add_argument("--sweep-model", choices=("student", "teacher"), default="student",
                        help="the model the two sweep phases ablate (default student)")
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.phase, args.threads, args.sweep_model)))
        return 0
    counts = sorted({int(x) for x in args.prompts.split(",") if x.strip()})
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown or not counts:
        parser.error(f"unknown phases {sorted(unknown)}; use {', '.join(PHASES)}" if unknown
                     else "--prompts names no prompt count")
    rows = []
    for n in counts:
        for phase in phases:
            row = _run_child(n, phase, args.threads, args.sweep_model)
            rows.append(row)
            print(f"  {phase} on {n} prompts: peak {row['peak_mb']:.0f} MB, "
                  f"{row['seconds']:.1f} s", file=sys.stderr, flush=True)
    print(f"zoo pair {TEACHER} / {STUDENT}, task numerals, sweeps on the {args.sweep_model}, "
          f"PROMPT_BATCH {rows[0]['prompt_batch']}, {rows[0]['threads']} thread(s), "
          f"{rows[0]['module']}")
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
