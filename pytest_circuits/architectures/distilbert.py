"""DistilBERT (masked LM): BERT's student, six post-LayerNorm blocks and its own vocabulary head."""

from __future__ import annotations

from .base import Architecture, ConfigKeys

ARCHITECTURE = Architecture(
    family="distilbert",
    hf_classes=("DistilBertForMaskedLM",),
    kind="masked",
    model_types=("distilbert",),
    config_keys=ConfigKeys(
        n_layers="n_layers", n_heads="n_heads", d_model="dim", n_ctx="max_position_embeddings"
    ),
    blocks="distilbert.transformer.layer",
    prediction_head=("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
    bridge_adapter=None,
    supported=False,
    why=(
        "TransformerLens 4.3 has no DistilBERT adapter, so there is no bridge to hook; an adapter "
        "of our own is tracked in issue #8"
    ),
)
