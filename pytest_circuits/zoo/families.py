"""The zoo's model families as recipes, read from the architecture registry.

Every fact about a family lives in its module in ``pytest_circuits/architectures/``: the Hugging
Face model class (and so its config class), causal or masked, the config keys of layers, heads,
width and context, where the blocks, the heads' output projection and the MLP are, the values of
a tiny model's config (``Architecture.tiny``) and, for a family the zoo trains, its recipe
(``Architecture.zoo``: the teacher, its students, their depths, schedules and starts). This
module turns those entries into what ``train.py`` runs (:class:`TinyArchitecture`,
:data:`FAMILIES`) and holds the code data cannot say: the ways a student starts from its trained
teacher (:data:`STUDENT_STARTS`), which a recipe names.

Adding a family the zoo trains is one module in ``pytest_circuits/architectures/`` with ``tiny``
and ``zoo`` filled in (and a start from :data:`STUDENT_STARTS`); nothing here changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedTokenizerFast

from ..architectures import ARCHITECTURES
from ..architectures import Architecture as RegistryEntry
from ..architectures.base import TinyModel
from . import zoo_families

__all__ = [
    "FAMILIES",
    "STUDENT_STARTS",
    "Architecture",
    "Family",
    "StudentRecipe",
    "StudentStart",
    "TeacherRecipe",
    "TinyArchitecture",
    "ZooConfig",
    "apply_masks",
    "distilbert_from_bert",
    "get_module",
    "keep_layers",
    "tiny_architecture",
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
class TinyArchitecture:
    """How the zoo builds and reaches into a model of one family: a view of its registry entry
    (``entry``), which states every fact; nothing is restated here."""

    entry: RegistryEntry

    def __post_init__(self) -> None:
        if self.entry.tiny is None or self.entry.layout is None:
            raise ValueError(
                f"{self.entry.family}: the zoo builds a family whose entry declares a tiny "
                "config (Architecture.tiny) and a block layout (Architecture.layout)"
            )

    @property
    def name(self) -> str:
        return self.entry.family

    @property
    def objective(self) -> Objective:
        return "causal" if self.entry.is_causal else "masked"

    @property
    def model_class(self) -> type[Any]:
        """The Hugging Face class the entry names first (``GPT2LMHeadModel``, ...)."""
        return getattr(transformers, self.entry.hf_classes[0])

    @property
    def config_class(self) -> type[PretrainedConfig]:
        return self.model_class.config_class

    @property
    def blocks(self) -> str:
        """Dotted path of the ModuleList of transformer blocks."""
        return self.entry.blocks

    @property
    def head_input(self) -> str:
        """Module in a block whose input is the heads' concatenated outputs (z)."""
        assert self.entry.layout is not None
        return self.entry.layout.attn_output

    @property
    def mlp(self) -> str:
        """Module in a block whose output is the MLP's contribution (before any residual add)."""
        assert self.entry.layout is not None
        return self.entry.layout.mlp[-1]

    @property
    def no_decay(self) -> tuple[str, ...]:
        """Parameter-name fragments that get no weight decay besides vectors."""
        assert self.entry.tiny is not None
        return self.entry.tiny.no_decay

    def make_config(
        self, config: ZooConfig, tokenizer: PreTrainedTokenizerFast, layers: int
    ) -> PretrainedConfig:
        """The Hugging Face config of a tiny model with ``layers`` blocks."""
        values = self.entry.tiny_config(
            vocab_size=len(tokenizer),
            layers=layers,
            n_heads=config.n_heads,
            d_model=config.d_model,
            n_ctx=config.n_positions,
            token_ids={
                "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
            },
        )
        return self.config_class(**values)

    def build(self, config: ZooConfig, tokenizer: PreTrainedTokenizerFast, layers: int) -> Any:
        return self.model_class(self.make_config(config, tokenizer, layers))

    def shape(self, model: torch.nn.Module) -> tuple[int, int, int]:
        """(layers, query heads, head dimension) of ``model``."""
        blocks = get_module(model, self.blocks)
        assert isinstance(blocks, torch.nn.ModuleList)
        shape = self.entry.shape(model.config)
        return len(blocks), shape.n_heads, shape.d_head


#: The zoo's earlier name of :class:`TinyArchitecture`.
Architecture = TinyArchitecture


@functools.cache
def tiny_architecture(family: str) -> TinyArchitecture:
    """The zoo's view of the registry family ``family`` (``"gpt2"``, ``"distilbert"``, ...)."""
    return TinyArchitecture(ARCHITECTURES[family])


def _architecture_of(model: torch.nn.Module) -> TinyArchitecture:
    for entry in ARCHITECTURES.values():
        if type(model).__name__ in entry.hf_classes:
            return tiny_architecture(entry.family)
    raise TypeError(f"no registry family for {type(model).__name__}")


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
    architecture: TinyArchitecture
    layers: int
    steps: int
    lr: float


@dataclass(frozen=True)
class StudentRecipe:
    name: str
    architecture: TinyArchitecture
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


def keep_layers(
    teacher: Any, config: ZooConfig, tokenizer: PreTrainedTokenizerFast, layers: list[int]
) -> Any:
    """A model of the teacher's family with the teacher's blocks ``layers`` (in that order) and
    every other weight of the teacher (embeddings, final norm, head), the head re-tied.

    Generic over families: a block's weights are the teacher's under the block list path the
    registry names (``transformer.h.2.`` -> ``transformer.h.1.``).
    """
    arch = _architecture_of(teacher)
    student = arch.build(config, tokenizer, len(layers))
    source = teacher.state_dict()
    prefix = f"{arch.blocks}."
    weights: dict[str, torch.Tensor] = {}
    for key in student.state_dict():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            weights[key] = source[f"{prefix}{layers[int(index)]}.{rest}"]
        else:
            weights[key] = source[key]
    student.load_state_dict(weights)
    student.tie_weights()
    return student


def _teacher_layers(teacher: Any) -> int:
    return _architecture_of(teacher).shape(teacher)[0]


def _check_depth(layers: list[int], student_layers: int, start: str) -> None:
    if len(layers) != student_layers:
        raise ValueError(
            f"the start {start!r} keeps teacher layers {layers} but the recipe's student has "
            f"{student_layers} layers: fix the student's layers in its zoo recipe"
        )


# ----------------------------------------------------------------------------- student starts


def start_alternate_layers(
    teacher: Any, config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
    _loss: Callable[[Any], float], *, student_layers: int,
) -> StudentStart:
    """Teacher layers 0, 2, ... and every other teacher weight (DistilGPT-2's start)."""
    layers = alternate_layers(_teacher_layers(teacher))
    _check_depth(layers, student_layers, "alternate_layers")
    return StudentStart(keep_layers(teacher, config, tokenizer, layers))


def start_one_head_per_layer(
    teacher: Any, config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
    loss: Callable[[Any], float], *, student_layers: int,
) -> StudentStart:
    """The start of :func:`start_alternate_layers`, then pruned to one head per layer (GPT-2)."""
    start = start_alternate_layers(teacher, config, tokenizer, loss,
                                   student_layers=student_layers)
    masks, kept = prune_to_one_head(start.model)
    kept_heads = [f"L{layer}H{head}" for layer, head in enumerate(kept)]
    return StudentStart(start.model, masks, {"kept_heads": kept_heads})


def start_cheapest_block(
    teacher: Any, config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
    loss: Callable[[Any], float], *, student_layers: int,
) -> StudentStart:
    """Minitron-Depth: drop the contiguous block of layers whose removal costs the least LM loss.

    Minitron scores each contiguous block by the loss of the model without it and drops the
    cheapest (for Llama-3.1-8B a late block); the block is as long as the teacher is deeper
    than the student.
    """
    n_layers = _teacher_layers(teacher)
    n_drop = n_layers - student_layers
    if not 0 < n_drop < n_layers:
        raise ValueError(
            f"cheapest_block drops teacher layers, so the student needs fewer layers than the "
            f"teacher's {n_layers} and at least one, got {student_layers}"
        )
    losses: dict[int, float] = {}
    for first in range(n_layers - n_drop + 1):
        kept = [k for k in range(n_layers) if not first <= k < first + n_drop]
        losses[first] = loss(keep_layers(teacher, config, tokenizer, kept))
    first = min(losses, key=lambda k: (losses[k], k))
    kept = [k for k in range(n_layers) if not first <= k < first + n_drop]
    return StudentStart(
        keep_layers(teacher, config, tokenizer, kept),
        notes={
            "teacher_layers": kept,
            "dropped_block_loss": {
                f"{k}-{k + n_drop - 1}": round(v, 4) for k, v in losses.items()
            },
        },
    )


def start_distilbert_from_bert(
    teacher: Any, config: ZooConfig, tokenizer: PreTrainedTokenizerFast,
    _loss: Callable[[Any], float], *, student_layers: int,
) -> StudentStart:
    """A DistilBERT from BERT teacher layers 0, 2, ... (DistilBERT's own start)."""
    layers = alternate_layers(_teacher_layers(teacher))
    _check_depth(layers, student_layers, "distilbert_from_bert")
    return StudentStart(
        distilbert_from_bert(teacher, config, tokenizer, layers),
        notes={"teacher_layers": layers},
    )


#: The ways a student starts from its trained teacher, by the name a recipe's ``start`` gives.
STUDENT_STARTS: dict[str, Callable[..., StudentStart]] = {
    "alternate_layers": start_alternate_layers,
    "one_head_per_layer": start_one_head_per_layer,
    "cheapest_block": start_cheapest_block,
    "distilbert_from_bert": start_distilbert_from_bert,
}


def prune_to_one_head(model: Any) -> tuple[dict[str, torch.Tensor], list[int]]:
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



# ----------------------------------------------------------------------------- BERT -> DistilBERT


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
    teacher: Any, config: ZooConfig, tokenizer: PreTrainedTokenizerFast, layers: list[int],
) -> Any:
    """A DistilBERT whose blocks are the BERT blocks ``layers``, mapped name by name.

    DistilBERT has no token-type embeddings; every zoo input has token type 0, so type 0's
    vector is folded into the position table and the map is exact: with every layer kept the
    DistilBERT computes the BERT's logits.
    """
    student = tiny_architecture("distilbert").build(config, tokenizer, len(layers))
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


# ----------------------------------------------------------------------------- the recipes


def _student(teacher: RegistryEntry, tiny: TinyModel) -> StudentRecipe:
    start = STUDENT_STARTS.get(tiny.start or "")
    if start is None:
        raise ValueError(
            f"zoo student {tiny.name!r} (pytest_circuits/architectures/{teacher.family}.py) "
            f"names the start {tiny.start!r}; the zoo knows {', '.join(STUDENT_STARTS)}"
        )
    family = tiny.family or teacher.family
    if ARCHITECTURES[family].kind != teacher.kind:
        raise ValueError(
            f"zoo student {tiny.name!r} is {ARCHITECTURES[family].kind} but its teacher is "
            f"{teacher.kind}: distillation compares predictions read at the same positions"
        )
    return StudentRecipe(
        tiny.name,
        tiny_architecture(family),
        tiny.layers,
        functools.partial(start, student_layers=tiny.layers),
        stream_seed=tiny.stream_seed,
        steps=tiny.steps,
        lr=tiny.lr,
    )


def _family(entry: RegistryEntry) -> Family:
    recipe = entry.zoo
    assert recipe is not None
    teacher = recipe.teacher
    return Family(
        name=entry.family,
        objective=tiny_architecture(entry.family).objective,
        description=recipe.description,
        teacher=TeacherRecipe(teacher.name, tiny_architecture(entry.family), teacher.layers,
                              steps=teacher.steps, lr=teacher.lr),
        students=tuple(_student(entry, tiny) for tiny in recipe.students),
    )


#: Every family the zoo trains, in zoo order (``pytest_circuits.zoo.ZOO_ORDER``): one per
#: registry entry with a zoo recipe.
FAMILIES: dict[str, Family] = {entry.family: _family(entry) for entry in zoo_families()}
