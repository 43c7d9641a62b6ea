"""A TransformerLens 4 bridge adapter for DistilBERT, registered at runtime by pytest-circuits.

TransformerLens 4.3 adapts BERT but not DistilBERT. This module describes DistilBERT's module
tree in the same declarative form TransformerLens' own adapters use (a ``component_mapping`` from
bridge names to Hugging Face paths), so the bridge exposes the hook names every analysis reads:
``blocks.{i}.attn.hook_z`` ([batch, pos, head, d_head], the input of ``out_lin``),
``blocks.{i}.attn.hook_pattern`` and ``blocks.{i}.hook_mlp_out`` (the output of ``ffn``, before the
residual add and ``output_layer_norm``).

The family entry (``architectures/distilbert.py``) names this class in ``bridge_adapter_class``;
``load_model`` registers it with TransformerLens' public
``ArchitectureAdapterFactory.register_adapter`` (no fork, nothing in site-packages edited) before
it builds the bridge. The module imports torch and TransformerLens, so
the torch-free registry never imports it at import time (its name starts with ``_``, which the
family discovery skips).
"""

from __future__ import annotations

from typing import Any

from transformer_lens.conversion_utils.conversion_steps import RearrangeTensorConversion
from transformer_lens.conversion_utils.param_processing_conversion import (
    ParamProcessingConversion,
)
from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components import (
    AttentionBridge,
    BlockBridge,
    EmbeddingBridge,
    LinearBridge,
    MLPBridge,
    NormalizationBridge,
    PosEmbedBridge,
    UnembeddingBridge,
)


def _split_heads(pattern: str, n_heads: int) -> ParamProcessingConversion:
    return ParamProcessingConversion(
        tensor_conversion=RearrangeTensorConversion(pattern, h=n_heads)
    )


class DistilBertArchitectureAdapter(ArchitectureAdapter):
    """DistilBERT (``DistilBertForMaskedLM``) as a TransformerLens bridge.

    DistilBERT blocks are post-LayerNorm: ``x = sa_layer_norm(x + attention(x))`` then
    ``x = output_layer_norm(x + ffn(x))``. Unlike BERT, the attention module returns the output
    projection before the residual add, and the feed-forward network is one module (``ffn``), so
    ``hook_attn_out`` and ``hook_mlp_out`` are the sublayer outputs with no alias tricks.
    """

    supports_generation: bool = False

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.cfg.normalization_type = "LN"
        self.cfg.positional_embedding_type = "standard"
        self.cfg.final_rms = False
        self.cfg.gated_mlp = False
        self.cfg.attn_only = False
        # An encoder: every position attends to every other (padding is masked by HF itself).
        self.cfg.attention_dir = "bidirectional"
        # Folding a LayerNorm into the next sublayer assumes pre-LN blocks; DistilBERT's norms
        # sit after the residual add, so compatibility-mode folding would be wrong.
        self.supports_fold_ln = False

        n_heads = self.cfg.n_heads
        # Only read by compatibility-mode weight processing (pytest-circuits uses raw weights);
        # the layout is torch Linear's [out, in] with heads contiguous along the fused axis.
        self.weight_processing_conversions = {
            **{
                f"blocks.{{i}}.attn.{name}.weight": _split_heads(
                    "(h d_head) d_model -> h d_model d_head", n_heads
                )
                for name in ("q", "k", "v")
            },
            **{
                f"blocks.{{i}}.attn.{name}.bias": _split_heads("(h d_head) -> h d_head", n_heads)
                for name in ("q", "k", "v")
            },
            "blocks.{i}.attn.o.weight": _split_heads(
                "d_model (h d_head) -> h d_head d_model", n_heads
            ),
        }

        self.component_mapping = {
            "embed": EmbeddingBridge(name="distilbert.embeddings.word_embeddings"),
            "pos_embed": PosEmbedBridge(name="distilbert.embeddings.position_embeddings"),
            "embed_ln": NormalizationBridge(
                name="distilbert.embeddings.LayerNorm",
                config=self.cfg,
                use_native_layernorm_autograd=True,
            ),
            "blocks": BlockBridge(
                name="distilbert.transformer.layer",
                # In a post-LN block the residual stream between the sublayers is the output of
                # the first norm, not the input of the second (that one is ffn + residual).
                hook_alias_overrides={"hook_resid_mid": "ln1.hook_out"},
                submodules={
                    "attn": AttentionBridge(
                        name="attention",
                        config=self.cfg,
                        is_causal=False,
                        submodules={
                            "q": LinearBridge(name="q_lin"),
                            "k": LinearBridge(name="k_lin"),
                            "v": LinearBridge(name="v_lin"),
                            "o": LinearBridge(name="out_lin"),
                        },
                    ),
                    # Named ln1/ln2 as in TransformerLens' BERT adapter (the teacher's family),
                    # so teacher and student bridges name their norms alike.
                    "ln1": NormalizationBridge(
                        name="sa_layer_norm", config=self.cfg, use_native_layernorm_autograd=True
                    ),
                    "mlp": MLPBridge(
                        name="ffn",
                        config=self.cfg,
                        submodules={
                            "in": LinearBridge(name="lin1"),
                            "out": LinearBridge(name="lin2"),
                        },
                    ),
                    "ln2": NormalizationBridge(
                        name="output_layer_norm",
                        config=self.cfg,
                        use_native_layernorm_autograd=True,
                    ),
                },
            ),
            # The MLM head: vocab_transform, the activation (a function, not a bridged module),
            # vocab_layer_norm, vocab_projector. pytest-circuits reads logits through the whole
            # head (see architectures/distilbert.py), never through ln_final + unembed alone.
            "mlm_head": LinearBridge(name="vocab_transform"),
            "ln_final": NormalizationBridge(
                name="vocab_layer_norm", config=self.cfg, use_native_layernorm_autograd=True
            ),
            "unembed": UnembeddingBridge(name="vocab_projector"),
        }

    def prepare_model(self, hf_model: Any) -> None:
        """Record the feed-forward width: DistilBERT calls it ``hidden_dim``, which the generic
        config translation does not read (it would assume 4 * d_model)."""
        hidden_dim = getattr(getattr(hf_model, "config", None), "hidden_dim", None)
        if hidden_dim is not None:
            self.cfg.d_mlp = int(hidden_dim)

