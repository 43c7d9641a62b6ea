"""Train the bundled zoo (a tiny GPT-2 teacher and two distilled students) on a toy language.

Run ``python -m pytest_circuits.zoo.train --out DIR [--steps-scale F] [--seed 0]``. It writes
``DIR/models/<name>/`` (ordinary Hugging Face directories: config.json, model.safetensors,
tokenizer files) and ``DIR/MANIFEST.json`` (sha256 of every file plus the evaluation numbers),
then prints each model's accuracy, logit difference and single-component ablation drops.
Same seed, same machine -> same bytes (one thread, deterministic algorithms, no dropout).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import multiprocessing
import random
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from pytest_circuits.tasks import BUILTIN_TASKS, builtin_task, encode_task
from pytest_circuits.tasks.builtin import (
    IOI_NAMES,
    IOI_OBJECTS,
    IOI_PLACES,
    NUMBER_WORDS,
    NUMERAL_MEMBERS,
    NUMERAL_VERBS,
)

__all__ = [
    "EVAL_SEED",
    "MODEL_NAMES",
    "ZooConfig",
    "ablation_profile",
    "build_tokenizer",
    "evaluate",
    "main",
    "train_zoo",
]

MODEL_NAMES: tuple[str, ...] = ("tiny-teacher", "tiny-student", "tiny-student-brittle")
#: Seed of the held-out evaluation prompts (training prompts use ``TRAIN_TASK_SEED + seed``).
EVAL_SEED = 1234
N_EVAL = 200
TRAIN_TASK_SEED = 100_000
TRAIN_POOL = 30_000  # training prompts drawn per built-in task
_GROUP = 8  # batches drawn together and grouped by length

#: Share of task sentences in the toy language (the rest is filler).
MIXTURE: tuple[tuple[str, float], ...] = (("numerals", 0.15), ("numwords", 0.15), ("ioi", 0.5))
PREFIX_SHARE = 0.1  # documents with a filler sentence before the main sentence
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
_FILLER_WORDS = ("When", "and", "went", "to", "the", "gave", "a", "in", "saw", "has", "The",
                 "is", "here", "Then", "count", "after")
_PUNCTUATION = (".", ",", ":")


@dataclass(frozen=True)
class ZooConfig:
    """Sizes and schedules of the zoo; ``steps_scale`` multiplies every step count."""

    seed: int = 0
    steps_scale: float = 1.0
    batch_size: int = 32
    n_positions: int = 64
    d_model: int = 128
    teacher_layers: int = 4
    n_heads: int = 4
    teacher_steps: int = 2400
    student_steps: int = 800
    brittle_steps: int = 1600  # the pruned student needs longer (and a higher rate) to recover IOI
    teacher_lr: float = 5e-3
    student_lr: float = 2e-3
    brittle_lr: float = 4e-3
    temperature: float = 2.0
    hard_label_weight: float = 0.2
    weight_decay: float = 0.01
    eval_prompts: int = N_EVAL

    def steps(self, base: int) -> int:
        return max(2, round(base * self.steps_scale))


# ----------------------------------------------------------------------------- tokenizer


def build_vocab() -> list[str]:
    """The toy language's words, in a fixed order (specials first)."""
    words: list[str] = list(SPECIAL_TOKENS)
    groups = (
        _PUNCTUATION,
        tuple(str(n) for n in range(0, 21)),
        NUMBER_WORDS,
        NUMERAL_VERBS,
        NUMERAL_MEMBERS,
        IOI_NAMES,
        IOI_PLACES,
        IOI_OBJECTS,
        _FILLER_WORDS,
    )
    for group in groups:
        for word in group:
            if word not in words:
                words.append(word)
    return words


def build_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: splits whitespace and punctuation, prepends ``<bos>``.

    ``" 5"`` encodes to the single token ``5`` (with ``add_special_tokens=False``).
    """
    vocab = {word: index for index, word in enumerate(build_vocab())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


# ----------------------------------------------------------------------------- toy language


@functools.lru_cache(maxsize=4)
def training_pools(seed: int) -> dict[str, tuple[str, ...]]:
    """Per built-in task, ``TRAIN_POOL`` completed training sentences (prompt + answer + ".").

    Drawn with ``builtin_task(name, seed=TRAIN_TASK_SEED + seed)``: other prompts than the
    held-out evaluation set (seed ``EVAL_SEED``) and the test suites' seeds.
    """
    pools = {}
    for name in BUILTIN_TASKS:
        task = builtin_task(name, n_prompts=TRAIN_POOL, seed=TRAIN_TASK_SEED + seed, n_reference=1)
        pools[name] = tuple(f"{p}{c}." for p, c in zip(task.prompts, task.correct, strict=True))
    return pools


class ToyLanguage:
    """Sentences of the toy language: the three task templates (with answers) plus filler."""

    def __init__(self, pool_seed: int, stream_seed: int) -> None:
        self.rng = random.Random(f"pytest-circuits-zoo/corpus/{pool_seed}/{stream_seed}")
        self.pools = training_pools(pool_seed)
        self.fillers: tuple[Callable[[random.Random], str], ...] = (
            _went, _went_pair, _uncounted_list, _short_list, _counting, _saw,
        )

    def sentence(self) -> str:
        rng = self.rng
        roll = rng.random()
        for name, share in MIXTURE:
            if roll < share:
                return rng.choice(self.pools[name])
            roll -= share
        return rng.choice(self.fillers)(rng)

    def document(self) -> str:
        """One training document: usually one sentence, sometimes a short filler before it."""
        if self.rng.random() < PREFIX_SHARE:
            return f"{self.rng.choice(self.fillers)(self.rng)} {self.sentence()}"
        return self.sentence()


def _went(rng: random.Random) -> str:
    return f"{rng.choice(IOI_NAMES)} went to the {rng.choice(IOI_PLACES)}."


def _went_pair(rng: random.Random) -> str:
    a, b = rng.sample(IOI_NAMES, 2)
    return f"{a} and {b} went to the {rng.choice(IOI_PLACES)}."


def _uncounted_list(rng: random.Random) -> str:
    members = rng.sample(NUMERAL_MEMBERS, rng.randint(2, 4))
    return " and ".join(members) + " is here."


def _short_list(rng: random.Random) -> str:
    verb = rng.choice(NUMERAL_VERBS)
    words = rng.random() < 0.5
    items = []
    for member in rng.sample(NUMERAL_MEMBERS, rng.randint(1, 2)):
        n = rng.randint(1, 12)
        items.append(f"{member} {verb} in {NUMBER_WORDS[n - 1] if words else n}.")
    return " ".join(items)


def _counting(rng: random.Random) -> str:
    start = rng.randint(1, 8)
    length = rng.randint(3, 5)
    if rng.random() < 0.5:
        return "count: " + " ".join(NUMBER_WORDS[start - 1 + k] for k in range(length)) + "."
    return "count: " + " ".join(str(start + k) for k in range(length)) + "."


def _saw(rng: random.Random) -> str:
    return f"{rng.choice(IOI_NAMES)} saw the {rng.choice(NUMERAL_MEMBERS)}."


def batches(
    language: ToyLanguage, tokenizer: PreTrainedTokenizerFast, batch_size: int, max_len: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (input_ids, attention_mask) batches of ``<bos> document <eos>``, right-padded.

    Documents are drawn ``_GROUP`` batches at a time and grouped by length (less padding), and
    the batches of a group come in a random order.
    """
    eos = tokenizer.eos_token_id
    while True:
        docs = [language.document() for _ in range(batch_size * _GROUP)]
        encoded = [ids[: max_len - 1] + [eos] for ids in tokenizer(docs)["input_ids"]]
        encoded.sort(key=len)
        order = list(range(_GROUP))
        language.rng.shuffle(order)
        for chunk in order:
            rows = encoded[chunk * batch_size : (chunk + 1) * batch_size]
            width = max(len(ids) for ids in rows)
            input_ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((batch_size, width), dtype=torch.long)
            for row, ids in enumerate(rows):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            yield input_ids, mask


# ----------------------------------------------------------------------------- training


def _schedule(step: int, total: int, base: float) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "wpe" in n]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


def _next_token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1))


def train_teacher(
    config: ZooConfig, tokenizer: PreTrainedTokenizerFast, log: Callable[[str], None]
) -> GPT2LMHeadModel:
    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(_gpt2_config(config, tokenizer, config.teacher_layers))
    total = config.steps(config.teacher_steps)
    language = ToyLanguage(config.seed, 0)
    stream = batches(language, tokenizer, config.batch_size, config.n_positions)
    optimizer = _optimizer(model, config.teacher_lr, config.weight_decay)
    model.train()
    for step in range(total):
        ids, mask = next(stream)
        for group in optimizer.param_groups:
            group["lr"] = _schedule(step, total, config.teacher_lr)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = _next_token_loss(logits, ids, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 400 == 0 or step == total - 1:
            log(f"  teacher step {step + 1}/{total} loss {loss.item():.4f}")
    model.eval()
    return model


def _gpt2_config(config: ZooConfig, tokenizer: PreTrainedTokenizerFast, layers: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.d_model,
        n_layer=layers,
        n_head=config.n_heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def teacher_layers(config: ZooConfig) -> list[int]:
    """The teacher layers a student starts from: 0, 2, 4, ... (as DistilGPT-2 was made)."""
    return list(range(0, config.teacher_layers, 2))


def init_student(
    teacher: GPT2LMHeadModel, config: ZooConfig, tokenizer: PreTrainedTokenizerFast
) -> GPT2LMHeadModel:
    """Half the layers, initialised from teacher layers 0, 2, ... and the teacher's embeddings."""
    layers = teacher_layers(config)
    student = GPT2LMHeadModel(_gpt2_config(config, tokenizer, len(layers)))
    student.transformer.wte.load_state_dict(teacher.transformer.wte.state_dict())
    student.transformer.wpe.load_state_dict(teacher.transformer.wpe.state_dict())
    student.transformer.ln_f.load_state_dict(teacher.transformer.ln_f.state_dict())
    for target, source in enumerate(layers):
        student.transformer.h[target].load_state_dict(teacher.transformer.h[source].state_dict())
    student.tie_weights()
    return student


def prune_to_one_head(model: GPT2LMHeadModel) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Structured head pruning: keep each layer's largest-norm head, zero the others.

    A head's norm is ||W_V columns||_F * ||W_O rows||_F (magnitude pruning of the OV circuit).
    Returns the 0/1 masks of every pruned parameter and the kept head per layer.
    """
    d_model = model.config.n_embd
    n_heads = model.config.n_head
    d_head = d_model // n_heads
    masks: dict[str, torch.Tensor] = {}
    kept: list[int] = []
    with torch.no_grad():
        for index, block in enumerate(model.transformer.h):
            attn = block.attn
            w_qkv, w_o = attn.c_attn.weight, attn.c_proj.weight
            scores = []
            for head in range(n_heads):
                cols = slice(2 * d_model + head * d_head, 2 * d_model + (head + 1) * d_head)
                rows = slice(head * d_head, (head + 1) * d_head)
                scores.append(float(w_qkv[:, cols].norm() * w_o[rows, :].norm()))
            keep = max(range(n_heads), key=lambda h: scores[h])
            kept.append(keep)
            qkv_mask = torch.zeros(3 * d_model)
            o_mask = torch.zeros(d_model)
            for part in range(3):
                start = part * d_model + keep * d_head
                qkv_mask[start : start + d_head] = 1
            o_mask[keep * d_head : (keep + 1) * d_head] = 1
            prefix = f"transformer.h.{index}.attn"
            masks[f"{prefix}.c_attn.weight"] = qkv_mask.expand_as(w_qkv).clone()
            masks[f"{prefix}.c_attn.bias"] = qkv_mask.clone()
            masks[f"{prefix}.c_proj.weight"] = o_mask[:, None].expand_as(w_o).clone()
        _apply_masks(model, masks)
    return masks, kept


def _apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def distil(
    student: GPT2LMHeadModel,
    teacher: GPT2LMHeadModel,
    config: ZooConfig,
    tokenizer: PreTrainedTokenizerFast,
    stream_seed: int,
    log: Callable[[str], None],
    label: str,
    masks: dict[str, torch.Tensor] | None = None,
    steps: int | None = None,
    lr: float | None = None,
) -> GPT2LMHeadModel:
    """KL(teacher || student) at temperature T (scaled by T^2) plus a small hard-label term."""
    torch.manual_seed(config.seed * 1000 + stream_seed)
    total = config.steps(config.student_steps if steps is None else steps)
    base_lr = config.student_lr if lr is None else lr
    language = ToyLanguage(config.seed, stream_seed)
    stream = batches(language, tokenizer, config.batch_size, config.n_positions)
    optimizer = _optimizer(student, base_lr, config.weight_decay)
    params = dict(student.named_parameters())
    temp = config.temperature
    teacher.eval()
    student.train()
    for step in range(total):
        ids, mask = next(stream)
        for group in optimizer.param_groups:
            group["lr"] = _schedule(step, total, base_lr)
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits
        logits = student(input_ids=ids, attention_mask=mask).logits
        keep = mask.bool()
        kl = F.kl_div(
            F.log_softmax(logits[keep] / temp, dim=-1),
            F.log_softmax(teacher_logits[keep] / temp, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        loss = temp**2 * kl + config.hard_label_weight * _next_token_loss(logits, ids, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if masks:
            for name, m in masks.items():
                params[name].grad.mul_(m)
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        if masks:
            _apply_masks(student, masks)
        if step % 400 == 0 or step == total - 1:
            log(f"  {label} step {step + 1}/{total} loss {loss.item():.4f}")
    student.eval()
    return student


# ----------------------------------------------------------------------------- evaluation


def _task_tensors(name: str, tokenizer: Any, n: int, seed: int) -> dict[str, torch.Tensor]:
    encoded = encode_task(builtin_task(name, n_prompts=n, seed=seed), tokenizer)
    return {
        "tokens": torch.tensor(encoded.tokens),
        "positions": torch.tensor(encoded.positions),
        "correct": torch.tensor(encoded.correct_ids),
        "distractor": torch.tensor(encoded.distractor_ids),
    }


@torch.no_grad()
def _task_scores(model: GPT2LMHeadModel, data: dict[str, torch.Tensor]) -> dict[str, float]:
    logits = model(input_ids=data["tokens"]).logits
    rows = torch.arange(logits.size(0))
    final = logits[rows, data["positions"]]
    diff = final[rows, data["correct"]] - final[rows, data["distractor"]]
    return {
        "accuracy": float((final.argmax(-1) == data["correct"]).float().mean()),
        "pairwise_accuracy": float((diff > 0).float().mean()),
        "logit_diff": float(diff.mean()),
    }


def evaluate(
    model: GPT2LMHeadModel, tokenizer: Any, n: int = N_EVAL, seed: int = EVAL_SEED
) -> dict[str, dict[str, float]]:
    """Per built-in task: top-1 accuracy, share with logit diff > 0, mean logit difference."""
    model.eval()
    return {
        name: _task_scores(model, _task_tensors(name, tokenizer, n, seed)) for name in BUILTIN_TASKS
    }


def _components(model: GPT2LMHeadModel) -> list[tuple[str, int, int | None]]:
    out: list[tuple[str, int, int | None]] = []
    for layer in range(model.config.n_layer):
        out += [(f"L{layer}H{head}", layer, head) for head in range(model.config.n_head)]
        out.append((f"MLP{layer}", layer, None))
    return out


def ablation_profile(
    model: GPT2LMHeadModel, tokenizer: Any, n: int = 100, seed: int = EVAL_SEED
) -> dict[str, dict[str, Any]]:
    """Zero-ablate each head (its z before W_O) and each MLP; drop = 100 - retained (%)."""
    d_head = model.config.n_embd // model.config.n_head
    result: dict[str, dict[str, Any]] = {}
    for name in BUILTIN_TASKS:
        data = _task_tensors(name, tokenizer, n, seed)
        clean = _task_scores(model, data)["logit_diff"]
        drops: dict[str, float] = {}
        for label, layer, head in _components(model):
            block = model.transformer.h[layer]
            if head is None:
                handle = block.mlp.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
            else:
                def zero_head(_module: Any, args: tuple[Any, ...], h: int = head) -> Any:
                    z = args[0].clone()
                    z[..., h * d_head : (h + 1) * d_head] = 0
                    return (z, *args[1:])

                handle = block.attn.c_proj.register_forward_pre_hook(zero_head)
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


def _save(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.iterdir():
        if stale.is_file():
            stale.unlink()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _make_student(
    kind: str,
    teacher: GPT2LMHeadModel,
    config: ZooConfig,
    tokenizer: PreTrainedTokenizerFast,
    log: Callable[[str], None],
) -> tuple[GPT2LMHeadModel, list[int]]:
    """Distil ``tiny-student`` or ``tiny-student-brittle`` (kept heads listed for the latter)."""
    student = init_student(teacher, config, tokenizer)
    if kind == "tiny-student":
        log("distilling tiny-student")
        return distil(student, teacher, config, tokenizer, 1, log, "student"), []
    log("pruning to one head per layer and distilling tiny-student-brittle")
    masks, kept = prune_to_one_head(student)
    student = distil(
        student, teacher, config, tokenizer, 2, log, "brittle", masks,
        steps=config.brittle_steps, lr=config.brittle_lr,
    )
    return student, kept


def _print(line: str) -> None:
    print(line, flush=True)


def _student_job(
    kind: str, teacher_state: dict[str, torch.Tensor], config: ZooConfig
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Worker-process entry point: rebuild the teacher and distil one student."""
    _deterministic()
    tokenizer = build_tokenizer(config.n_positions)
    teacher = GPT2LMHeadModel(_gpt2_config(config, tokenizer, config.teacher_layers))
    teacher.load_state_dict(teacher_state)
    teacher.eval()
    student, kept = _make_student(kind, teacher, config, tokenizer, _print)
    return {k: v.clone() for k, v in student.state_dict().items()}, kept


def _deterministic() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    hf_logging.disable_progress_bar()


def train_zoo(
    out: Path, config: ZooConfig, log: Callable[[str], None] = print, jobs: int = 1
) -> dict[str, Any]:
    """Train and save the three models under ``out/models`` and write ``out/MANIFEST.json``.

    ``jobs=2`` distils the two students in two worker processes (same results, less wall time).
    """
    _deterministic()
    started = time.perf_counter()
    tokenizer = build_tokenizer(config.n_positions)
    log(f"vocabulary: {len(tokenizer)} words; training the teacher")
    teacher = train_teacher(config, tokenizer, log)
    kinds = ("tiny-student", "tiny-student-brittle")
    results: dict[str, tuple[GPT2LMHeadModel, list[int]]] = {}
    if jobs > 1:
        # Each student is single-threaded and seeded on its own: same bytes as sequential runs.
        log(f"distilling {' and '.join(kinds)} in {min(jobs, 2)} processes")
        state = {k: v.clone() for k, v in teacher.state_dict().items()}
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, 2), mp_context=context) as pool:
            futures = {kind: pool.submit(_student_job, kind, state, config) for kind in kinds}
            for kind, future in futures.items():
                student_state, kept_heads = future.result()
                n_layer = len(teacher_layers(config))
                model = GPT2LMHeadModel(_gpt2_config(config, tokenizer, n_layer))
                model.load_state_dict(student_state)
                model.eval()
                results[kind] = (model, kept_heads)
    else:
        for kind in kinds:
            results[kind] = _make_student(kind, teacher, config, tokenizer, log)
    student, _ = results["tiny-student"]
    brittle, kept = results["tiny-student-brittle"]
    trained = {"tiny-teacher": teacher, "tiny-student": student, "tiny-student-brittle": brittle}
    train_seconds = time.perf_counter() - started

    models_dir = out / "models"
    metrics: dict[str, Any] = {}
    for name, model in trained.items():
        _save(model, tokenizer, models_dir / name)
        metrics[name] = {
            "n_layer": model.config.n_layer,
            "n_head": model.config.n_head,
            "params": sum(p.numel() for p in model.parameters()),
            "tasks": _round(evaluate(model, tokenizer, config.eval_prompts)),
            "ablation": _round(
                {t: {k: v for k, v in row.items() if k != "drops"}
                 for t, row in ablation_profile(
                     model, tokenizer, min(100, config.eval_prompts)).items()}
            ),
        }
    metrics["tiny-student-brittle"]["kept_heads"] = [f"L{i}H{h}" for i, h in enumerate(kept)]
    files = {
        path.relative_to(out).as_posix(): _sha256(path)
        for path in sorted(models_dir.rglob("*"))
        if path.is_file()
    }
    manifest = {
        "version": 1,
        "seed": config.seed,
        "steps_scale": config.steps_scale,
        "eval": {"seed": EVAL_SEED, "n_prompts": config.eval_prompts},
        "torch": torch.__version__.split("+")[0],
        "files": files,
        "metrics": metrics,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _report(metrics, config.eval_prompts, log)
    total_bytes = sum((out / rel).stat().st_size for rel in files)
    log(f"training {train_seconds:.0f} s, total {time.perf_counter() - started:.0f} s; "
        f"artifacts {total_bytes / 1e6:.2f} MB in {models_dir}")
    return manifest


def _report(metrics: dict[str, Any], n_eval: int, log: Callable[[str], None]) -> None:
    log("")
    log(f"held-out prompts: builtin_task(name, n_prompts={n_eval}, seed={EVAL_SEED}); "
        "acc = top-1 is the answer, pair = logit diff > 0; drops in % of the clean logit diff "
        "under zero ablation")
    header = (f"{'model':<22}{'task':<10}{'acc':>7}{'pair':>7}{'logit diff':>12}"
              f"{'worst head':>18}{'worst MLP':>16}{'mean drop':>11}")
    log(header)
    for name in MODEL_NAMES:
        for task in BUILTIN_TASKS:
            s = metrics[name]["tasks"][task]
            a = metrics[name]["ablation"][task]
            log(f"{name:<22}{task:<10}{100 * s['accuracy']:>6.1f}%"
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
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every step count (0.01 for a seconds-long smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-prompts", type=int, default=N_EVAL,
                        help=f"held-out prompts per task for the report (default {N_EVAL})")
    parser.add_argument("--jobs", type=int, default=2,
                        help="processes for the two students (default 2; 1 = sequential)")
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
    train_zoo(args.out, config, log=_print, jobs=args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
