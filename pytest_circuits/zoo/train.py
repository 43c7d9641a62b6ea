"""Train the bundled zoo (three teacher/student families) on a toy language, reproducibly.

Run ``python -m pytest_circuits.zoo.train --out DIR [--family gpt2 bert llama] [--steps-scale F]
[--seed 0]``. Every family in ``families.FAMILIES`` goes through one training loop (the teacher)
and one distillation loop (each student), with a causal or masked objective. It writes
``DIR/models/<name>/`` (ordinary Hugging Face directories: config.json, model.safetensors,
tokenizer files) and ``DIR/MANIFEST.json`` (sha256 of every file plus the evaluation numbers;
entries of families not rebuilt are kept), then prints each model's accuracy, logit difference
and single-component ablation drops. Same seed, same machine -> same bytes (one thread,
deterministic algorithms, no dropout).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from pytest_circuits.tasks import BUILTIN_TASKS, builtin_task, encode_task
from pytest_circuits.zoo.families import (
    FAMILIES,
    Architecture,
    Family,
    StudentRecipe,
    ZooConfig,
    apply_masks,
    get_module,
)
from pytest_circuits.zoo.language import (
    ToyLanguage,
    batches,
    build_masked_tokenizer,
    build_tokenizer,
)

__all__ = [
    "EVAL_SEED",
    "FAMILIES",
    "MODEL_NAMES",
    "ZooConfig",
    "ablation_profile",
    "build_masked_tokenizer",
    "build_tokenizer",
    "evaluate",
    "main",
    "train_zoo",
]

#: Every zoo model, family by family (teacher first).
MODEL_NAMES: tuple[str, ...] = tuple(n for f in FAMILIES.values() for n in f.model_names)
#: Seed of the held-out evaluation prompts (training prompts use ``TRAIN_TASK_SEED + seed``).
EVAL_SEED = 1234
N_EVAL = 200
_LOSS_STREAM = 999  # toy-language stream of the held-out batches that score layer drops
_LOSS_BATCHES = 4
_PROBE_PROMPTS = 50  # held-out prompts per task for the accuracy lines of the training log


# ----------------------------------------------------------------------------- objectives


@dataclass
class Batch:
    """One training batch as a model sees it, and what its predictions are scored against.

    Causal: ``targets`` are the input ids themselves (the loss shifts them by one) and every
    real token is scored. Masked: ``targets`` hold the original id at masked positions and
    -100 elsewhere, and only the masked positions are scored.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    scored: torch.Tensor  # bool [batch, position]: positions whose predictions are distilled


def causal_batch(ids: torch.Tensor, mask: torch.Tensor) -> Batch:
    return Batch(ids, mask, ids, mask.bool())


def masked_batch(
    ids: torch.Tensor,
    mask: torch.Tensor,
    tokenizer: PreTrainedTokenizerFast,
    config: ZooConfig,
    generator: torch.Generator,
) -> Batch:
    """BERT-style masking, with a share of documents masking their answer word.

    In ``config.answer_share`` of the documents only the word before the final "." is masked
    (always with [MASK], the context left clean): in a task sentence that is the answer, so the
    masked model learns the tasks as ``encode_task(..., masked=True)`` asks them. Of those,
    ``config.truncate_share`` end at the [MASK], exactly the evaluated form. The other
    documents get ``config.mask_rate`` of their words selected, 80% -> [MASK], 10% -> a random
    word, 10% unchanged.
    """
    ids, mask = ids.clone(), mask.clone()
    n_docs, width = ids.shape
    mask_id = tokenizer.mask_token_id
    lengths = mask.sum(1)
    answer_doc = torch.rand(n_docs, generator=generator) < config.answer_share
    truncate = torch.rand(n_docs, generator=generator) < config.truncate_share
    pick = torch.rand(n_docs, width, generator=generator) < config.mask_rate
    how = torch.rand(n_docs, width, generator=generator)
    random_words = torch.randint(4, mask_id, (n_docs, width), generator=generator)
    words = mask.bool() & (ids != tokenizer.bos_token_id) & (ids != tokenizer.eos_token_id)
    # documents are "<bos> ... answer . <eos>": the answer sits 3 before the end
    answer_pos = lengths - 3
    positions = torch.arange(width)[None, :]
    is_answer = (positions == answer_pos[:, None]) & answer_doc[:, None]
    selected = torch.where(answer_doc[:, None], is_answer, pick & words)
    targets = torch.where(selected, ids, torch.full_like(ids, -100))
    to_mask = is_answer | (selected & (how < 0.8))
    to_random = selected & ~is_answer & (how >= 0.8) & (how < 0.9)
    ids = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    ids = torch.where(to_random, random_words, ids)
    cut = (answer_doc & truncate)[:, None] & (positions > answer_pos[:, None])
    ids = ids.masked_fill(cut, tokenizer.pad_token_id)
    mask = mask.masked_fill(cut, 0)
    return Batch(ids, mask, targets, targets != -100)


def objective_loss(objective: str, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Hard-label cross-entropy: next token (causal) or the masked words (masked)."""
    if objective == "causal":
        return _next_token_loss(logits, batch.targets, batch.attention_mask)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.targets.reshape(-1))


def _next_token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1))


def batch_stream(
    family: Family, config: ZooConfig, tokenizer: PreTrainedTokenizerFast, stream_seed: int
) -> Iterator[Batch]:
    """Endless training batches of the toy-language stream ``stream_seed`` for ``family``."""
    language = ToyLanguage(config.seed, stream_seed)
    raw = batches(language, tokenizer, config.batch_size, config.n_positions)
    if family.objective == "causal":
        for ids, mask in raw:
            yield causal_batch(ids, mask)
        return
    # Masking draws from its own generator: the text stream stays the causal families' stream.
    generator = torch.Generator().manual_seed(config.seed * 1000 + stream_seed)
    for ids, mask in raw:
        yield masked_batch(ids, mask, tokenizer, config, generator)


def family_tokenizer(family: Family, config: ZooConfig) -> PreTrainedTokenizerFast:
    if family.objective == "masked":
        return build_masked_tokenizer(config.n_positions)
    return build_tokenizer(config.n_positions)


# ----------------------------------------------------------------------------- training


def _schedule(step: int, total: int, base: float) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(
    model: torch.nn.Module, architecture: Architecture, lr: float, weight_decay: float
) -> torch.optim.AdamW:
    def decays(name: str, param: torch.Tensor) -> bool:
        return param.dim() >= 2 and not any(part in name for part in architecture.no_decay)

    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if decays(n, p)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


def fit(
    model: torch.nn.Module,
    architecture: Architecture,
    stream: Iterator[Batch],
    loss_of: Callable[[torch.nn.Module, Batch], torch.Tensor],
    total: int,
    lr: float,
    config: ZooConfig,
    log: Callable[[str], None],
    label: str,
    masks: dict[str, torch.Tensor] | None = None,
    probe: Callable[[torch.nn.Module], str] | None = None,
) -> None:
    """The one optimisation loop: AdamW, warm-up + cosine schedule, clipping at 1.0.

    ``masks`` (pruned parameters) are applied to the gradients and re-applied to the weights
    after every step, so pruned weights stay exactly zero.
    """
    optimizer = _optimizer(model, architecture, lr, config.weight_decay)
    params = dict(model.named_parameters())
    model.train()
    for step in range(total):
        batch = next(stream)
        for group in optimizer.param_groups:
            group["lr"] = _schedule(step, total, lr)
        loss = loss_of(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if masks:
            for name, m in masks.items():
                params[name].grad.mul_(m)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if masks:
            apply_masks(model, masks)
        if step % 400 == 0 or step == total - 1:
            extra = ""
            if probe is not None and step > 0:
                extra = "  " + probe(model)
                model.train()
            log(f"  {label} step {step + 1}/{total} loss {loss.item():.4f}{extra}")
    model.eval()


def _logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def train_teacher(
    family: Family, config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
    log: Callable[[str], None],
) -> Any:
    """The family's teacher, trained from scratch on the hard-label objective."""
    recipe = family.teacher
    torch.manual_seed(config.seed)
    model = recipe.architecture.build(config, tokenizer, recipe.layers)
    stream = batch_stream(family, config, tokenizer, 0)

    def loss_of(m: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return objective_loss(family.objective, _logits(m, batch), batch)

    fit(model, recipe.architecture, stream, loss_of, config.steps(recipe.steps), recipe.lr,
        config, log, recipe.name, probe=_probe(family, tokenizer))
    return model


def distil(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    family: Family,
    recipe: StudentRecipe,
    config: ZooConfig,
    tokenizer: PreTrainedTokenizerFast,
    log: Callable[[str], None],
    masks: dict[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """KL(teacher || student) at temperature T (scaled by T^2) over the scored positions, plus
    a small hard-label term."""
    torch.manual_seed(config.seed * 1000 + recipe.stream_seed)
    stream = batch_stream(family, config, tokenizer, recipe.stream_seed)
    temp = config.temperature
    teacher.eval()

    def loss_of(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = _logits(teacher, batch)
        logits = _logits(model, batch)
        keep = batch.scored
        kl = F.kl_div(
            F.log_softmax(logits[keep] / temp, dim=-1),
            F.log_softmax(teacher_logits[keep] / temp, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        hard = objective_loss(family.objective, logits, batch)
        return temp**2 * kl + config.hard_label_weight * hard

    fit(student, recipe.architecture, stream, loss_of, config.steps(recipe.steps), recipe.lr,
        config, log, recipe.name, masks=masks, probe=_probe(family, tokenizer))
    return student


@torch.no_grad()
def held_out_loss(
    model: torch.nn.Module, family: Family, config: ZooConfig, tokenizer: PreTrainedTokenizerFast
) -> float:
    """Mean hard-label loss on a few batches of a stream no model trains on."""
    model.eval()
    stream = batch_stream(family, config, tokenizer, _LOSS_STREAM)
    losses = []
    for _ in range(_LOSS_BATCHES):
        batch = next(stream)
        losses.append(float(objective_loss(family.objective, _logits(model, batch), batch)))
    return sum(losses) / len(losses)


def make_student(
    family: Family,
    recipe: StudentRecipe,
    teacher: torch.nn.Module,
    config: ZooConfig,
    tokenizer: PreTrainedTokenizerFast,
    log: Callable[[str], None],
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Initialise ``recipe``'s student from the teacher and distil it; returns (model, notes)."""
    torch.manual_seed(config.seed * 1000 + recipe.stream_seed)
    start = recipe.init(
        teacher, config, tokenizer, lambda m: held_out_loss(m, family, config, tokenizer)
    )
    log(f"distilling {recipe.name} ({', '.join(f'{k}={v}' for k, v in start.notes.items())})")
    student = distil(start.model, teacher, family, recipe, config, tokenizer, log, start.masks)
    return student, start.notes


# ----------------------------------------------------------------------------- evaluation


def _task_tensors(
    name: str, tokenizer: Any, n: int, seed: int, masked: bool = False
) -> dict[str, torch.Tensor]:
    encoded = encode_task(builtin_task(name, n_prompts=n, seed=seed), tokenizer, masked=masked)
    return {
        "tokens": torch.tensor(encoded.tokens),
        "positions": torch.tensor(encoded.positions),
        "correct": torch.tensor(encoded.correct_ids),
        "distractor": torch.tensor(encoded.distractor_ids),
    }


@torch.no_grad()
def _task_scores(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> dict[str, float]:
    logits = model(input_ids=data["tokens"]).logits
    rows = torch.arange(logits.size(0))
    final = logits[rows, data["positions"]]
    diff = final[rows, data["correct"]] - final[rows, data["distractor"]]
    return {
        "accuracy": float((final.argmax(-1) == data["correct"]).float().mean()),
        "pairwise_accuracy": float((diff > 0).float().mean()),
        "logit_diff": float(diff.mean()),
    }


def _is_masked(tokenizer: Any) -> bool:
    return getattr(tokenizer, "mask_token", None) is not None


def evaluate(
    model: torch.nn.Module, tokenizer: Any, n: int = N_EVAL, seed: int = EVAL_SEED
) -> dict[str, dict[str, float]]:
    """Per built-in task: top-1 accuracy, share with logit diff > 0, mean logit difference.

    Causal models are read at the last position; masked ones (a tokenizer with a mask token)
    at the ``[MASK]`` appended to each prompt.
    """
    model.eval()
    masked = _is_masked(tokenizer)
    return {
        name: _task_scores(model, _task_tensors(name, tokenizer, n, seed, masked))
        for name in BUILTIN_TASKS
    }


def _probe(family: Family, tokenizer: Any) -> Callable[[torch.nn.Module], str]:
    """Training-log accuracies: shows when a task emerges (IOI is the slow one)."""

    def probe(model: torch.nn.Module) -> str:
        scores = evaluate(model, tokenizer, _PROBE_PROMPTS)
        return " ".join(f"{t} {100 * s['accuracy']:.0f}%" for t, s in scores.items())

    return probe


def ablation_profile(
    model: torch.nn.Module,
    tokenizer: Any,
    n: int = 100,
    seed: int = EVAL_SEED,
    architecture: Architecture | None = None,
) -> dict[str, dict[str, Any]]:
    """Zero-ablate each head (its z before W_O) and each MLP; drop = 100 - retained (%).

    ``architecture`` says where a block's heads and MLP are (default: found by model class).
    """
    arch = architecture or _architecture_of(model)
    n_layers, n_heads, d_head = arch.shape(model)
    blocks = get_module(model, arch.blocks)
    masked = _is_masked(tokenizer)
    components: list[tuple[str, int, int | None]] = []
    for layer in range(n_layers):
        components += [(f"L{layer}H{head}", layer, head) for head in range(n_heads)]
        components.append((f"MLP{layer}", layer, None))
    result: dict[str, dict[str, Any]] = {}
    for name in BUILTIN_TASKS:
        data = _task_tensors(name, tokenizer, n, seed, masked)
        clean = _task_scores(model, data)["logit_diff"]
        drops: dict[str, float] = {}
        for label, layer, head in components:
            block = blocks[layer]  # type: ignore[index]
            if head is None:
                handle = get_module(block, arch.mlp).register_forward_hook(
                    lambda _m, _i, out: torch.zeros_like(out)
                )
            else:
                def zero_head(_module: Any, args: tuple[Any, ...], h: int = head) -> Any:
                    z = args[0].clone()
                    z[..., h * d_head : (h + 1) * d_head] = 0
                    return (z, *args[1:])

                handle = get_module(block, arch.head_input).register_forward_pre_hook(zero_head)
            try:
                ablated = _task_scores(model, data)["logit_diff"]
            finally:
                handle.remove()
            drops[label] = 100.0 - 100.0 * ablated / clean
        clamped = [min(100.0, max(0.0, d)) for d in drops.values()]
        heads = {k: v for k, v in drops.items() if k.startswith("L")}
        mlps = {k: v for k, v in drops.items() if k.startswith("MLP")}
        worst_head = max(heads, key=lambda k: heads[k])
        worst_mlp = max(mlps, key=lambda k: mlps[k])
        result[name] = {
            "clean_logit_diff": clean,
            "worst_head": worst_head,
            "worst_head_drop": heads[worst_head],
            "worst_mlp": worst_mlp,
            "worst_mlp_drop": mlps[worst_mlp],
            "mean_drop": sum(clamped) / len(clamped),
            "n_over_20": sum(d > 20.0 for d in clamped),
            "n_components": len(clamped),
            "drops": drops,
        }
    return result


def _architecture_of(model: torch.nn.Module) -> Architecture:
    for family in FAMILIES.values():
        for recipe in (family.teacher, *family.students):
            if isinstance(model, recipe.architecture.model_class):
                return recipe.architecture
    raise TypeError(f"no zoo architecture for {type(model).__name__}")


# ----------------------------------------------------------------------------- output


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def _save(model: Any, tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.iterdir():
        if stale.is_file():
            stale.unlink()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _print(line: str) -> None:
    print(line, flush=True)


def _deterministic() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    hf_logging.disable_progress_bar()


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _rebuild(
    architecture: Architecture, layers: int, state: dict[str, torch.Tensor],
    config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
) -> Any:
    model = architecture.build(config, tokenizer, layers)
    model.load_state_dict(state)
    model.eval()
    return model


def _teacher_job(family_name: str, config: ZooConfig) -> dict[str, torch.Tensor]:
    """Worker-process entry point: train one family's teacher."""
    _deterministic()
    family = FAMILIES[family_name]
    return _state(train_teacher(family, config, family_tokenizer(family, config), _print))


def _student_job(
    family_name: str, student_name: str, teacher_state: dict[str, torch.Tensor],
    config: ZooConfig,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Worker-process entry point: rebuild the teacher and distil one student."""
    _deterministic()
    family = FAMILIES[family_name]
    tokenizer = family_tokenizer(family, config)
    teacher = _rebuild(family.teacher.architecture, family.teacher.layers, teacher_state,
                       config, tokenizer)
    recipe = next(s for s in family.students if s.name == student_name)
    student, notes = make_student(family, recipe, teacher, config, tokenizer, _print)
    return _state(student), notes


def _train_families(
    families: list[Family], config: ZooConfig, log: Callable[[str], None], jobs: int
) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every model of ``families``: name -> (trained model, notes of its initialisation)."""
    trained: dict[str, tuple[Any, dict[str, Any]]] = {}
    if jobs <= 1:
        for family in families:
            tokenizer = family_tokenizer(family, config)
            log(f"[{family.name}] vocabulary: {len(tokenizer)} words; training "
                f"{family.teacher.name}")
            teacher = train_teacher(family, config, tokenizer, log)
            trained[family.teacher.name] = (teacher, {})
            for recipe in family.students:
                trained[recipe.name] = make_student(family, recipe, teacher, config, tokenizer,
                                                    log)
        return trained
    # Every job is single-threaded and seeded on its own: the same bytes as a sequential run.
    log(f"training {len(families)} families in {jobs} processes")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        teachers = {f.name: pool.submit(_teacher_job, f.name, config) for f in families}
        students: dict[str, Future[tuple[dict[str, torch.Tensor], dict[str, Any]]]] = {}
        for family in families:
            tokenizer = family_tokenizer(family, config)
            state = teachers[family.name].result()
            trained[family.teacher.name] = (
                _rebuild(family.teacher.architecture, family.teacher.layers, state, config,
                         tokenizer), {})
            for recipe in family.students:
                students[recipe.name] = pool.submit(
                    _student_job, family.name, recipe.name, state, config
                )
        for family in families:
            tokenizer = family_tokenizer(family, config)
            for recipe in family.students:
                state, notes = students[recipe.name].result()
                trained[recipe.name] = (
                    _rebuild(recipe.architecture, recipe.layers, state, config, tokenizer), notes
                )
    return trained


def train_zoo(
    out: Path,
    config: ZooConfig,
    log: Callable[[str], None] = print,
    jobs: int = 1,
    families: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Train and save ``families`` (default: all) under ``out/models``; write ``out/MANIFEST.json``.

    Entries of models not rebuilt are kept from an existing manifest when their files are still
    there. ``jobs=2`` trains in two worker processes (same results, less wall time).
    """
    _deterministic()
    started = time.perf_counter()
    chosen = [FAMILIES[name] for name in (families or tuple(FAMILIES))]
    trained = _train_families(chosen, config, log, jobs)
    train_seconds = time.perf_counter() - started

    models_dir = out / "models"
    metrics: dict[str, Any] = {}
    for family in chosen:
        tokenizer = family_tokenizer(family, config)
        for recipe in (family.teacher, *family.students):
            model, notes = trained[recipe.name]
            _save(model, tokenizer, models_dir / recipe.name)
            n_layers, n_heads, _ = recipe.architecture.shape(model)
            metrics[recipe.name] = {
                "n_layer": n_layers,
                "n_head": n_heads,
                "params": sum(p.numel() for p in model.parameters()),
                "tasks": _round(evaluate(model, tokenizer, config.eval_prompts)),
                "ablation": _round(
                    {t: {k: v for k, v in row.items() if k != "drops"}
                     for t, row in ablation_profile(
                         model, tokenizer, min(100, config.eval_prompts),
                         architecture=recipe.architecture).items()}
                ),
                **notes,
            }
    manifest = _merge_manifest(out, chosen, metrics, config, train_seconds)
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _report(metrics, config.eval_prompts, log)
    total_bytes = sum((out / rel).stat().st_size for rel in manifest["files"])
    log(f"training {train_seconds:.0f} s, total {time.perf_counter() - started:.0f} s; "
        f"artifacts {total_bytes / 1e6:.2f} MB in {models_dir}")
    return manifest


def _merge_manifest(
    out: Path, chosen: list[Family], metrics: dict[str, Any], config: ZooConfig,
    train_seconds: float,
) -> dict[str, Any]:
    """This run's entries over those of an existing manifest whose models are still on disk."""
    previous: dict[str, Any] = {}
    if (out / "MANIFEST.json").is_file():
        previous = json.loads((out / "MANIFEST.json").read_text())
    rebuilt = {name for family in chosen for name in family.model_names}
    kept = {name for name in previous.get("metrics", {})
            if name not in rebuilt and (out / "models" / name).is_dir()}
    files = {rel: digest for rel, digest in previous.get("files", {}).items()
             if Path(rel).parts[1] in kept}
    models_dir = out / "models"
    for name in sorted(rebuilt):
        for path in sorted((models_dir / name).rglob("*")):
            if path.is_file():
                files[path.relative_to(out).as_posix()] = _sha256(path)
    all_metrics = {name: previous["metrics"][name] for name in kept}
    all_metrics.update(metrics)
    family_info = {k: v for k, v in previous.get("families", {}).items()
                   if k not in {f.name for f in chosen}}
    for family in chosen:
        family_info[family.name] = {
            "description": family.description,
            "objective": family.objective,
            "models": list(family.model_names),
            "seed": config.seed,
            "steps_scale": config.steps_scale,
        }
    return {
        "version": 1,
        "seed": config.seed,
        "steps_scale": config.steps_scale,
        "eval": {"seed": EVAL_SEED, "n_prompts": config.eval_prompts},
        "torch": torch.__version__.split("+")[0],
        "families": family_info,
        "files": dict(sorted(files.items())),
        "metrics": all_metrics,
        "last_build_seconds": round(train_seconds, 1),
    }


def _report(metrics: dict[str, Any], n_eval: int, log: Callable[[str], None]) -> None:
    log("")
    log(f"held-out prompts: builtin_task(name, n_prompts={n_eval}, seed={EVAL_SEED}); "
        "acc = top-1 is the answer, pair = logit diff > 0; drops in % of the clean logit diff "
        "under zero ablation")
    header = (f"{'model':<26}{'task':<10}{'acc':>7}{'pair':>7}{'logit diff':>12}"
              f"{'worst head':>18}{'worst MLP':>16}{'mean drop':>11}")
    log(header)
    for name in [n for n in MODEL_NAMES if n in metrics]:
        for task in BUILTIN_TASKS:
            s = metrics[name]["tasks"][task]
            a = metrics[name]["ablation"][task]
            log(f"{name:<26}{task:<10}{100 * s['accuracy']:>6.1f}%"
                f"{100 * s['pairwise_accuracy']:>6.1f}%{s['logit_diff']:>12.2f}"
                f"{a['worst_head']:>9} {a['worst_head_drop']:>7.1f}%"
                f"{a['worst_mlp']:>7} {a['worst_mlp_drop']:>7.1f}%{a['mean_drop']:>10.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_circuits.zoo.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent,
        help="output directory (default: the package's zoo directory)",
    )
    parser.add_argument("--family", nargs="+", choices=tuple(FAMILIES), default=None,
                        help="rebuild only these families (default: all); the manifest keeps "
                             "the others' entries")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every step count (0.01 for a seconds-long smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-prompts", type=int, default=N_EVAL,
                        help=f"held-out prompts per task for the report (default {N_EVAL})")
    parser.add_argument("--jobs", type=int, default=2,
                        help="worker processes (default 2; 1 = sequential, same bytes)")
    args = parser.parse_args(argv)
    if args.steps_scale <= 0:
        parser.error("--steps-scale must be positive")
    if args.eval_prompts < 1:
        parser.error("--eval-prompts must be positive")
    if args.jobs < 1:
        parser.error("--jobs must be positive")
    config = ZooConfig(
        seed=args.seed, steps_scale=args.steps_scale, eval_prompts=args.eval_prompts
    )
    args.out.mkdir(parents=True, exist_ok=True)
    families = tuple(dict.fromkeys(args.family)) if args.family else None
    train_zoo(args.out, config, log=_print, jobs=args.jobs, families=families)
    return 0


if __name__ == "__main__":
    sys.exit(main())
