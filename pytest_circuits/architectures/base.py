"""The declarative record each model family fills in (``Architecture``) and what it derives.

A family module states facts: which Hugging Face classes it covers, whether it is causal or
masked, where its config keeps the shape, which Hugging Face modules turn the last block's output
into prediction logits, the bridge hook names the engine patches, and what TransformerLens needs to
boot it. Nothing here imports torch, so the registry is cheap to import and to list in messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedArchitectureError
from ..identity import MODEL_KINDS


@dataclass(frozen=True)
class HookNames:
    """Hook-point templates on the TransformerLens 4 bridge (``{layer}`` counts from 0).

    The defaults are the names the bridge gives every family it adapts; a family whose bridge
    names differ overrides them here rather than in the engine.
    """

    z: str = "blocks.{layer}.attn.hook_z"  # [batch, pos, head, d_head], before W_O
    pattern: str = "blocks.{layer}.attn.hook_pattern"  # [batch, head, query, key]
    mlp_out: str = "blocks.{layer}.hook_mlp_out"  # [batch, pos, d_model]
    attn_out: str = "blocks.{layer}.hook_attn_out"  # [batch, pos, d_model]

    def z_hook(self, layer: int) -> str:
        return self.z.format(layer=layer)

    def pattern_hook(self, layer: int) -> str:
        return self.pattern.format(layer=layer)

    def mlp_out_hook(self, layer: int) -> str:
        return self.mlp_out.format(layer=layer)

    def attn_out_hook(self, layer: int) -> str:
        return self.attn_out.format(layer=layer)


#: The bridge's own names, shared by every family registered today.
BRIDGE_HOOKS = HookNames()


@dataclass(frozen=True)
class BlockLayout:
    """How one block's sublayers meet the residual stream, as module paths inside the block (the
    Hugging Face layer, e.g. ``attn.c_proj`` inside ``transformer.h[i]``).

    The engine's replay reads this to start after an ablated component instead of re-running its
    layer's attention: a head's ablation only changes ``z``, so the layer resumes at the output
    projection; an MLP's ablation only changes the MLP output, so it resumes at the residual add.
    With ``pre`` the residual is whatever the model stores between blocks, ``mid`` after
    attention and ``post`` after the MLP:

    * pre-norm (``mlp_norm`` set; GPT-2, Llama):
      ``mid = attn_output(z) + pre``, ``post = mid + mlp(mlp_norm(mid))``;
    * post-norm (``attn_norm`` and ``out_norm`` set; BERT, DistilBERT):
      ``mid = attn_norm(attn_output(z) + pre)``, ``post = out_norm(mlp(mid) + mid)``.

    Dropout between these modules is not listed: analyses run in eval mode, where it is the
    identity.
    """

    #: the output projection: z with heads concatenated ([..., n_heads * d_head]) in, the
    #: attention sublayer's output out; its input is what ``HookNames.z`` reads, per head
    attn_output: str
    #: modules applied in order to the MLP's input; the last one's output is ``HookNames.mlp_out``
    mlp: tuple[str, ...]
    #: pre-norm: the norm between the residual stream and the MLP
    mlp_norm: str | None = None
    #: post-norm: the norm applied after the attention sublayer's residual add
    attn_norm: str | None = None
    #: post-norm: the norm applied after the MLP's residual add (the block's output)
    out_norm: str | None = None

    def __post_init__(self) -> None:
        if not self.mlp:
            raise ValueError("BlockLayout.mlp must name at least one module")
        pre = self.mlp_norm is not None
        post = self.attn_norm is not None and self.out_norm is not None
        half_post = (self.attn_norm is None) != (self.out_norm is None)
        if pre == post or half_post:
            raise ValueError(
                "BlockLayout is pre-norm (mlp_norm) or post-norm (attn_norm and out_norm), "
                "exactly one of them"
            )

    @property
    def post_norm(self) -> bool:
        return self.attn_norm is not None


@dataclass(frozen=True)
class ConfigKeys:
    """Where a family's Hugging Face config keeps the model's shape (attribute names)."""

    n_layers: str
    n_heads: str
    d_model: str
    n_ctx: str
    #: key-value heads under grouped-query attention; None: every query head has its own K and V
    n_kv_heads: str | None = None
    #: explicit head width; None (or a config value of None): d_model // n_heads
    d_head: str | None = None


@dataclass(frozen=True)
class Shape:
    """A model's shape as read from its config through a family's ``ConfigKeys``."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    n_ctx: int


@dataclass(frozen=True)
class TinyConfig:
    """How the bundled zoo configures a tiny model of the family, beyond its shape.

    The zoo fills the shape keys of ``config_keys`` from its own settings (layers, heads, width,
    context) and the vocabulary size and special token ids from its tokenizer; these are the
    family's other config values, as data.
    """

    #: (config key, value) pairs set as they are: dropout off, activation, norm epsilon, ...
    fixed: tuple[tuple[str, Any], ...] = ()
    #: config key of the feed-forward width, if the family has one the zoo sets; the width is
    #: ``d_model * ffn_ratio[0] // ffn_ratio[1]`` rounded down to a multiple of ``ffn_multiple``
    ffn_key: str | None = None
    ffn_ratio: tuple[int, int] = (4, 1)
    ffn_multiple: int = 1
    #: query heads per key/value head (grouped-query attention; sets ``config_keys.n_kv_heads``)
    kv_group: int = 1
    #: parameter-name fragments that get no weight decay (position tables), besides vectors
    no_decay: tuple[str, ...] = ()

    def ffn_width(self, d_model: int) -> int:
        num, den = self.ffn_ratio
        return d_model * num // den // self.ffn_multiple * self.ffn_multiple


@dataclass(frozen=True)
class TinyModel:
    """One bundled zoo model: its name, depth and training schedule (and, for a student, how it
    starts from the trained teacher)."""

    name: str
    layers: int
    steps: int
    lr: float
    #: what ``ZOO_MODELS`` says of it
    description: str
    #: students only: a start the zoo defines (``pytest_circuits/zoo/families.py``,
    #: ``STUDENT_STARTS``): ``alternate_layers``, ``one_head_per_layer``, ``cheapest_block``,
    #: ``distilbert_from_bert``
    start: str | None = None
    #: students only: which toy-language stream (and torch seed) its distillation draws
    stream_seed: int = 0
    #: the student's family when it is not the teacher's (a BERT teacher's DistilBERT student)
    family: str | None = None


@dataclass(frozen=True)
class ZooRecipe:
    """A teacher of this family and its students, as ``python -m pytest_circuits.zoo.train``
    trains them into the bundled zoo (``--family`` takes the family's name)."""

    description: str
    teacher: TinyModel
    students: tuple[TinyModel, ...]

    def __post_init__(self) -> None:
        if self.teacher.start is not None or any(s.start is None for s in self.students):
            raise ValueError(
                f"zoo recipe {self.teacher.name!r}: the teacher trains from scratch (no start) "
                "and every student names its start"
            )


@dataclass(frozen=True)
class Architecture:
    """Everything pytest-circuits knows about one model family, as data.

    ``prediction_head`` lists Hugging Face module paths applied in order to the residual stream
    leaving the last block (one row per prompt) to give vocabulary logits; ``blocks`` is the path
    of the block list whose last output that residual is. When ``supported`` is False, ``why``
    says what is missing and loading refuses with it.
    """

    family: str
    hf_classes: tuple[str, ...]
    kind: str
    config_keys: ConfigKeys
    blocks: str
    prediction_head: tuple[str, ...]
    #: ``config.model_type`` values, used only when a config has no ``architectures`` list
    model_types: tuple[str, ...] = ()
    hooks: HookNames = BRIDGE_HOOKS
    #: how a block's sublayers meet the residual stream; None: the engine replays whole blocks
    #: (slower, equally exact), which is all a family without a declared layout gets
    layout: BlockLayout | None = None
    #: the TransformerLens 4 adapter key to boot the bridge with (None: TransformerLens has none)
    bridge_adapter: str | None = None
    #: ``"module:Class"`` of an adapter pytest-circuits ships for a family TransformerLens lacks;
    #: registered with TransformerLens under ``bridge_adapter`` when a model of the family loads
    bridge_adapter_class: str | None = None
    supported: bool = True
    why: str = ""
    notes: tuple[str, ...] = field(default=())
    #: how the bundled zoo configures a tiny model of the family (None: the zoo builds none)
    tiny: TinyConfig | None = None
    #: the zoo pair this family's teacher heads (None: the zoo trains no teacher of it)
    zoo: ZooRecipe | None = None

    def __post_init__(self) -> None:
        # A malformed entry is a programming error in a family module: fail at import, loudly.
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"{self.family}: kind {self.kind!r} is not one of {MODEL_KINDS}")
        if not self.hf_classes:
            raise ValueError(f"{self.family}: an architecture must cover at least one HF class")
        if not self.prediction_head:
            raise ValueError(f"{self.family}: prediction_head must name at least one module")
        if not self.supported and not self.why:
            raise ValueError(f"{self.family}: an unsupported architecture must say why")
        if self.supported and self.bridge_adapter is None:
            raise ValueError(f"{self.family}: a supported architecture needs a bridge_adapter")
        if self.zoo is not None and self.tiny is None:
            raise ValueError(f"{self.family}: a zoo recipe needs the family's tiny config")
        if self.tiny is not None and self.tiny.kv_group > 1 and self.config_keys.n_kv_heads is None:
            raise ValueError(f"{self.family}: kv_group needs config_keys.n_kv_heads")
        if self.bridge_adapter_class is not None and (
            self.bridge_adapter is None or ":" not in self.bridge_adapter_class
        ):
            raise ValueError(
                f"{self.family}: bridge_adapter_class must read 'module:Class' and needs the "
                "bridge_adapter key it is registered under"
            )

    @property
    def is_causal(self) -> bool:
        return self.kind == "causal"

    @property
    def is_masked(self) -> bool:
        return self.kind == "masked"

    @property
    def label(self) -> str:
        """How messages name the family: ``gpt2 (GPT2LMHeadModel)``."""
        return f"{self.family} ({', '.join(self.hf_classes)})"

    def tiny_config(
        self, *, vocab_size: int, layers: int, n_heads: int, d_model: int, n_ctx: int,
        token_ids: dict[str, int | None],
    ) -> dict[str, Any]:
        """The keyword arguments of the family's Hugging Face config for a tiny model of this
        shape: the shape under ``config_keys``' names, then ``tiny``'s values. ``token_ids``
        (``pad_token_id``, ``bos_token_id``, ...) come from the tokenizer."""
        if self.tiny is None:
            raise UnsupportedArchitectureError(
                f"{self.family}: the family declares no tiny config (Architecture.tiny), so "
                "the zoo cannot build a model of it"
            )
        keys, tiny = self.config_keys, self.tiny
        values: dict[str, Any] = {
            "vocab_size": vocab_size,
            keys.n_layers: layers,
            keys.n_heads: n_heads,
            keys.d_model: d_model,
            keys.n_ctx: n_ctx,
        }
        if keys.n_kv_heads is not None:
            values[keys.n_kv_heads] = n_heads // tiny.kv_group
        if tiny.ffn_key is not None:
            values[tiny.ffn_key] = tiny.ffn_width(d_model)
        values.update(tiny.fixed)
        values.update(token_ids)
        return values

    def shape(self, config: Any) -> Shape:
        """The model's shape from its Hugging Face config, through ``config_keys``."""
        keys = self.config_keys
        n_layers = _config_int(config, keys.n_layers, self.family)
        n_heads = _config_int(config, keys.n_heads, self.family)
        d_model = _config_int(config, keys.d_model, self.family)
        n_ctx = _config_int(config, keys.n_ctx, self.family)
        n_kv_heads = n_heads
        if keys.n_kv_heads is not None and getattr(config, keys.n_kv_heads, None) is not None:
            n_kv_heads = _config_int(config, keys.n_kv_heads, self.family)
        d_head = d_model // n_heads
        if keys.d_head is not None and getattr(config, keys.d_head, None) is not None:
            d_head = _config_int(config, keys.d_head, self.family)
        return Shape(
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            d_head=d_head,
            d_model=d_model,
            n_ctx=n_ctx,
        )

    def prediction_modules(self, hf_model: Any) -> list[Callable[[Any], Any]]:
        """The modules of ``prediction_head``, resolved on ``hf_model`` (bridged or not)."""
        return [resolve_module(hf_model, path, self.family) for path in self.prediction_head]

    def prediction_logits(self, hf_model: Any, rows: Any) -> Any:
        """Logits for residual rows leaving the last block: the family's head, module by module.

        ``rows`` is [n, d_model] (or any leading shape); only these rows are unembedded, which is
        what keeps the engine's ablated replays cheap.
        """
        hidden = rows
        for module in self.prediction_modules(hf_model):
            hidden = module(hidden)
        return hidden

    def block_list(self, hf_model: Any) -> Any:
        return resolve_module(hf_model, self.blocks, self.family)

    def require_supported(self, source: str, supported_labels: str) -> None:
        """Raise ``UnsupportedArchitectureError`` (naming ``why``) unless this family loads."""
        if self.supported:
            return
        raise UnsupportedArchitectureError(
            f"{source}: architecture {self.hf_classes[0]!r} is not supported yet ({self.why}). "
            f"Supported families: {supported_labels}."
        )


def _config_int(config: Any, key: str, family: str) -> int:
    value = getattr(config, key, None)
    if value is None:
        raise UnsupportedArchitectureError(
            f"{family}: the config ({type(config).__name__}) has no {key!r}, which this family "
            "reads its shape from; the checkpoint's config.json is incomplete or belongs to "
            "another architecture"
        )
    return int(value)


def resolve_module(root: Any, path: str, family: str) -> Any:
    """``root.a.b.c`` for the dotted ``path``, with an error naming the missing step."""
    current = root
    walked: list[str] = []
    for step in path.split("."):
        if not hasattr(current, step):
            where = ".".join(walked) or type(root).__name__
            raise UnsupportedArchitectureError(
                f"{family}: {type(root).__name__} has no module {path!r} ({where!r} has no "
                f"{step!r}); the model is not the class this family describes, or its Hugging "
                "Face implementation changed: update the family module in "
                "pytest_circuits/architectures/"
            )
        current = getattr(current, step)
        walked.append(step)
    return current
