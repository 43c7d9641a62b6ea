"""The zoo's model families as declarative recipes: architecture, sizes, schedule, student start.

A family is a teacher recipe plus student recipes; ``train.py`` runs every recipe through the same
training loop and distillation loop, so adding a family means adding an :class:`Architecture`
(how to configure the HF class, where its blocks, head outputs and MLPs are) and the function
that builds a student from a trained teacher (which layers to keep, which heads to prune).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

__all__ = [
    "FAMILIES",
    "Architecture",
    "Family",
    "StudentRecipe",
    "StudentStart",
    "TeacherRecipe",
    "ZooConfig",
    "apply_masks",
    "get_module",
]

Objective = Literal["causal", "masked"]


@dataclass(frozen=True)
class ZooConfig:
    """Settings shared by every family; ``steps_scale`` multiplies every recipe's step count."""

    seed: int = 0
    steps_scale: float = 1.0
    batch_size: int = 32
    n_positions: int = 64
    d_model: int = 128
    n_heads: int = 4
    temperature: float = 2.0
    hard_label_weight: float = 0.2
    weight_decay: float = 0.01
    eval_prompts: int = 200
    #: Masked objective: BERT's 15% of tokens, except that ``answer_share`` of the documents
    #: mask only the word before their final "." (the task answer in task sentences) with a
    #: clean context, and ``truncate_share`` of those end at that [MASK] (no ". <eos>"), which
    #: is exactly the form ``encode_task(..., masked=True)`` evaluates.
    mask_rate: float = 0.15
    answer_share: float = 0.8
    truncate_share: float = 0.5

    def steps(self, base: int) -> int:
        return max(2, round(base * self.steps_scale))


@dataclass(frozen=True)
class Architecture:
    """How the zoo builds and reaches into one Hugging Face model class."""

    name: str
    model_class: type[PreTrainedModel]
    objective: Objective
    #: (zoo settings, tokenizer, number of layers) -> the HF config.
    make_config: Callable[[ZooConfig, PreTrainedTokenizerFast, int], PretrainedConfig]
    blocks: str  # dotted path of the ModuleList of transformer blocks
    head_input: str  # module in a block whose input is the heads' concatenated outputs (z)
    mlp: str  # module in a block whose output is the MLP's contribution
    #: parameter-name fragments that get no weight decay besides vectors (position tables)
    no_decay: tuple[str, ...] = ()

    def build(self, config: ZooConfig, tokenizer: PreTrainedTokenizerFast, layers: int) -> Any:
        return self.model_class(self.make_config(config, tokenizer, layers))

    def shape(self, model: torch.nn.Module) -> tuple[int, int, int]:
        """(layers, query heads, head dimension) of ``model``."""
        blocks = get_module(model, self.blocks)
        assert isinstance(blocks, torch.nn.ModuleList)
        n_heads = _config_value(model, ("n_head", "num_attention_heads", "n_heads"))
        d_model = _config_value(model, ("n_embd", "hidden_size", "dim"))
        return len(blocks), n_heads, d_model // n_heads


def _config_value(model: torch.nn.Module, keys: tuple[str, ...]) -> int:
    config = model.config  # type: ignore[union-attr]
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise AttributeError(f"{type(model).__name__} config has none of {keys}")


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """``root.a.b.0.c`` for ``path`` ``"a.b.0.c"``."""
    module = root
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)  # type: ignore[index]
    return module


@dataclass
class StudentStart:
    """A student before distillation, the pruning masks to hold, and what the init chose."""

    model: Any
    masks: dict[str, torch.Tensor] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


#: (teacher, zoo settings, tokenizer, held-out loss of a candidate model) -> the student's start.
StudentInit = Callable[
    [Any, ZooConfig, PreTrainedTokenizerFast, Callable[[Any], float]], StudentStart
]


@dataclass(frozen=True)
class TeacherRecipe:
    name: str
    architecture: Architecture
    layers: int
    steps: int
    lr: float


@dataclass(frozen=True)
class StudentRecipe:
    name: str
    architecture: Architecture
    layers: int
    init: StudentInit
    stream_seed: int  # which toy-language stream (and torch seed) its distillation draws
    steps: int
    lr: float


@dataclass(frozen=True)
class Family:
    name: str
    objective: Objective
    teacher: TeacherRecipe
    students: tuple[StudentRecipe, ...]
    description: str

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.teacher.name, *(s.name for s in self.students))


def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def alternate_layers(n_layers: int) -> list[int]:
    """Teacher layers 0, 2, 4, ...: how DistilGPT-2 and DistilBERT took their initial layers."""
    return list(range(0, n_layers, 2))


# ----------------------------------------------------------------------------- GPT-2


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


GPT2 = Architecture(
    name="gpt2",
    model_class=GPT2LMHeadModel,
    objective="causal",
    make_config=_gpt2_config,
    blocks="transformer.h",
    head_input="attn.c_proj",
    mlp="mlp",
    no_decay=("wpe",),
)


def gpt2_student(
    teacher: GPT2LMHeadModel, config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
    _loss: Callable[[Any], float],
) -> StudentStart:
    """Half the layers, initialised from teacher layers 0, 2, ... and the teacher's embeddings."""
    layers = alternate_layers(teacher.config.n_layer)
    student = GPT2LMHeadModel(_gpt2_config(config, tokenizer, len(layers)))
    student.transformer.wte.load_state_dict(teacher.transformer.wte.state_dict())
    student.transformer.wpe.load_state_dict(teacher.transformer.wpe.state_dict())
    student.transformer.ln_f.load_state_dict(teacher.transformer.ln_f.state_dict())
    for target, source in enumerate(layers):
        student.transformer.h[target].load_state_dict(teacher.transformer.h[source].state_dict())
    student.tie_weights()
    return StudentStart(student)


def gpt2_brittle_student(
    teacher: GPT2LMHeadModel, config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
    loss: Callable[[Any], float],
) -> StudentStart:
    """The same start as :func:`gpt2_student`, then pruned to one head per layer."""
    start = gpt2_student(teacher, config, tokenizer, loss)
    masks, kept = prune_to_one_head(start.model)
    kept_heads = [f"L{layer}H{head}" for layer, head in enumerate(kept)]
    return StudentStart(start.model, masks, {"kept_heads": kept_heads})


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
        apply_masks(model, masks)
    return masks, kept


# ----------------------------------------------------------------------------- BERT / DistilBERT


def _bert_config(config: ZooConfig, tokenizer: PreTrainedTokenizerFast, layers: int) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.d_model,
        num_hidden_layers=layers,
        num_attention_heads=config.n_heads,
        intermediate_size=4 * config.d_model,
        max_position_embeddings=config.n_positions,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


def _distilbert_config(
    config: ZooConfig, tokenizer: PreTrainedTokenizerFast, layers: int
) -> DistilBertConfig:
    return DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=config.d_model,
        n_layers=layers,
        n_heads=config.n_heads,
        hidden_dim=4 * config.d_model,
        max_position_embeddings=config.n_positions,
        dropout=0.0,
        attention_dropout=0.0,
        activation="gelu",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


BERT = Architecture(
    name="bert",
    model_class=BertForMaskedLM,
    objective="masked",
    make_config=_bert_config,
    blocks="bert.encoder.layer",
    head_input="attention.output.dense",
    mlp="output.dense",  # post-LN: the MLP's write, before the residual add and LayerNorm
    no_decay=("position_embeddings", "token_type_embeddings"),
)
DISTILBERT = Architecture(
    name="distilbert",
    model_class=DistilBertForMaskedLM,
    objective="masked",
    make_config=_distilbert_config,
    blocks="distilbert.transformer.layer",
    head_input="attention.out_lin",
    mlp="ffn",
    no_decay=("position_embeddings",),
)

#: DistilBERT block module <- BERT block module (same shapes, same computation).
BERT_TO_DISTILBERT_BLOCK: tuple[tuple[str, str], ...] = (
    ("attention.q_lin", "attention.self.query"),
    ("attention.k_lin", "attention.self.key"),
    ("attention.v_lin", "attention.self.value"),
    ("attention.out_lin", "attention.output.dense"),
    ("sa_layer_norm", "attention.output.LayerNorm"),
    ("ffn.lin1", "intermediate.dense"),
    ("ffn.lin2", "output.dense"),
    ("output_layer_norm", "output.LayerNorm"),
)


def distilbert_from_bert(
    teacher: BertForMaskedLM, config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
    layers: list[int],
) -> DistilBertForMaskedLM:
    """A DistilBERT whose blocks are the BERT blocks ``layers``, mapped name by name.

    DistilBERT has no token-type embeddings; every zoo input has token type 0, so type 0's
    vector is folded into the position table and the map is exact: with every layer kept the
    DistilBERT computes the BERT's logits.
    """
    student = DistilBertForMaskedLM(_distilbert_config(config, tokenizer, len(layers)))
    source, target = teacher.bert, student.distilbert
    with torch.no_grad():
        target.embeddings.word_embeddings.weight.copy_(source.embeddings.word_embeddings.weight)
        target.embeddings.position_embeddings.weight.copy_(
            source.embeddings.position_embeddings.weight
            + source.embeddings.token_type_embeddings.weight[0]
        )
        target.embeddings.LayerNorm.load_state_dict(source.embeddings.LayerNorm.state_dict())
        for index, layer in enumerate(layers):
            for student_name, teacher_name in BERT_TO_DISTILBERT_BLOCK:
                get_module(target.transformer.layer[index], student_name).load_state_dict(
                    get_module(source.encoder.layer[layer], teacher_name).state_dict()
                )
        head = teacher.cls.predictions
        student.vocab_transform.load_state_dict(head.transform.dense.state_dict())
        student.vocab_layer_norm.load_state_dict(head.transform.LayerNorm.state_dict())
        student.vocab_projector.bias.copy_(head.bias)
    student.tie_weights()
    return student


def distilbert_student(
    teacher: BertForMaskedLM, config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
    _loss: Callable[[Any], float],
) -> StudentStart:
    layers = alternate_layers(teacher.config.num_hidden_layers)
    return StudentStart(
        distilbert_from_bert(teacher, config, tokenizer, layers),
        notes={"teacher_layers": layers},
    )


# ----------------------------------------------------------------------------- Llama (GQA)


def _llama_config(
    config: ZooConfig, tokenizer: PreTrainedTokenizerFast, layers: int
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.d_model,
        intermediate_size=(8 * config.d_model) // 3 // 8 * 8,  # SwiGLU's 8/3 d, as Llama
        num_hidden_layers=layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads // 2,  # grouped-query attention: 2 queries per KV head
        max_position_embeddings=config.n_positions,
        rms_norm_eps=1e-6,
        attention_dropout=0.0,
        tie_word_embeddings=True,  # keeps the zoo small; Llama-3.1-8B unties them
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


LLAMA = Architecture(
    name="llama",
    model_class=LlamaForCausalLM,
    objective="causal",
    make_config=_llama_config,
    blocks="model.layers",
    head_input="self_attn.o_proj",
    mlp="mlp",
)


def llama_keep_layers(
    teacher: LlamaForCausalLM, config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
    layers: list[int],
) -> LlamaForCausalLM:
    """The teacher with only ``layers`` (embeddings, final norm and tied head kept)."""
    student = LlamaForCausalLM(_llama_config(config, tokenizer, len(layers)))
    with torch.no_grad():
        student.model.embed_tokens.load_state_dict(teacher.model.embed_tokens.state_dict())
        student.model.norm.load_state_dict(teacher.model.norm.state_dict())
        for index, layer in enumerate(layers):
            student.model.layers[index].load_state_dict(teacher.model.layers[layer].state_dict())
    student.tie_weights()
    return student


def llama_depth_student(
    teacher: LlamaForCausalLM, config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
    loss: Callable[[Any], float],
) -> StudentStart:
    """Minitron-Depth: drop the contiguous block of layers whose removal costs the least LM loss.

    Minitron scores each contiguous block by the loss of the model without it and drops the
    cheapest (for Llama-3.1-8B a late block); here the teacher's 4 layers lose 2.
    """
    n_layers = teacher.config.num_hidden_layers
    n_drop = n_layers // 2
    losses: dict[int, float] = {}
    for first in range(n_layers - n_drop + 1):
        kept = [k for k in range(n_layers) if not first <= k < first + n_drop]
        losses[first] = loss(llama_keep_layers(teacher, config, tokenizer, kept))
    first = min(losses, key=lambda k: (losses[k], k))
    kept = [k for k in range(n_layers) if not first <= k < first + n_drop]
    return StudentStart(
        llama_keep_layers(teacher, config, tokenizer, kept),
        notes={
            "teacher_layers": kept,
            "dropped_block_loss": {
                f"{k}-{k + n_drop - 1}": round(v, 4) for k, v in losses.items()
            },
        },
    )


# ----------------------------------------------------------------------------- the recipes


FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        name="gpt2",
        objective="causal",
        description="GPT-2 -> DistilGPT-2-style student, and a head-pruned brittle student",
        teacher=TeacherRecipe("tiny-teacher", GPT2, layers=4, steps=2400, lr=5e-3),
        students=(
            StudentRecipe("tiny-student", GPT2, 2, gpt2_student, stream_seed=1,
                          steps=800, lr=2e-3),
            # The pruned student needs longer (and a higher rate) to recover IOI.
            StudentRecipe("tiny-student-brittle", GPT2, 2, gpt2_brittle_student, stream_seed=2,
                          steps=1600, lr=4e-3),
        ),
    ),
    "bert": Family(
        name="bert",
        objective="masked",
        description="BERT -> DistilBERT (masked LM; student from alternate teacher layers)",
        teacher=TeacherRecipe("tiny-bert-teacher", BERT, layers=4, steps=4000, lr=3e-3),
        students=(
            StudentRecipe("tiny-distilbert-student", DISTILBERT, 2, distilbert_student,
                          stream_seed=1, steps=1200, lr=3e-3),
        ),
    ),
    "llama": Family(
        name="llama",
        objective="causal",
        description="Llama (GQA, RoPE, RMSNorm, SwiGLU) -> Minitron-Depth student",
        teacher=TeacherRecipe("tiny-llama-teacher", LLAMA, layers=4, steps=4000, lr=3e-3),
        students=(
            StudentRecipe("tiny-llama-student-depth", LLAMA, 2, llama_depth_student,
                          stream_seed=1, steps=1200, lr=3e-3),
        ),
    ),
}
