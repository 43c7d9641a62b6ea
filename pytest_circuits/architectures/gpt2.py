"""GPT-2 (and DistilGPT-2, the same Hugging Face class): causal, pre-LayerNorm, tied unembedding."""

from __future__ import annotations

from .base import Architecture, BlockLayout, ConfigKeys

ARCHITECTURE = Architecture(
    family="gpt2",
    hf_classes=("GPT2LMHeadModel",),
    kind="causal",
    model_types=("gpt2",),
    config_keys=ConfigKeys(
        n_layers="n_layer", n_heads="n_head", d_model="n_embd", n_ctx="n_positions"
    ),
    blocks="transformer.h",
    # The last block leaves the residual un-normalised: the final LayerNorm, then the unembedding.
    prediction_head=("transformer.ln_f", "lm_head"),
    # GPT2Block: attn_output + residual, then residual + mlp(ln_2(.)).
    layout=BlockLayout(attn_output="attn.c_proj", mlp=("mlp",), mlp_norm="ln_2"),
    bridge_adapter="GPT2LMHeadModel",
    notes=(
        "q, k and v are one fused Conv1D (c_attn); the bridge splits them, so hook_z is still "
        "per head",
    ),
)
