"""DistilBERT (masked LM): BERT's student, post-LayerNorm blocks and its own vocabulary head."""

from __future__ import annotations

from .base import Architecture, BlockLayout, ConfigKeys, TinyConfig

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
    # TransformerBlock: sa_layer_norm(out_lin(z) + x), then output_layer_norm(ffn(.) + .).
    layout=BlockLayout(
        attn_output="attention.out_lin",
        mlp=("ffn",),
        attn_norm="sa_layer_norm",
        out_norm="output_layer_norm",
    ),
    # TransformerLens 4.3 has no DistilBERT adapter: pytest-circuits ships one and registers it
    # under the Hugging Face class name when a DistilBERT loads.
    bridge_adapter="DistilBertForMaskedLM",
    bridge_adapter_class=(
        "pytest_circuits.architectures._distilbert_adapter:DistilBertArchitectureAdapter"
    ),
    notes=(
        "hook_z is the input of attention.out_lin (per head), hook_mlp_out the output of ffn, "
        "both before the residual add and LayerNorm",
    ),
    # The zoo's DistilBERT is the BERT teacher's student (architectures/bert.py's zoo recipe).
    tiny=TinyConfig(
        fixed=(
            ("dropout", 0.0),
            ("attention_dropout", 0.0),
            ("activation", "gelu"),
            ("tie_word_embeddings", True),
        ),
        ffn_key="hidden_dim",
        no_decay=("position_embeddings",),
    ),
)
