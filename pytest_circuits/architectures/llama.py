"""Llama (3.x, Minitron, SmolLM2): causal, RMSNorm, rotary positions, grouped-query attention."""

from __future__ import annotations

from .base import Architecture, BlockLayout, ConfigKeys

ARCHITECTURE = Architecture(
    family="llama",
    hf_classes=("LlamaForCausalLM",),
    kind="causal",
    model_types=("llama",),
    config_keys=ConfigKeys(
        n_layers="num_hidden_layers",
        n_heads="num_attention_heads",
        d_model="hidden_size",
        n_ctx="max_position_embeddings",
        # Several query heads share one key/value head; components stay per query head, because
        # hook_z holds one slice per query head.
        n_kv_heads="num_key_value_heads",
        # Some checkpoints set head_dim independently of hidden_size / heads.
        d_head="head_dim",
    ),
    blocks="model.layers",
    prediction_head=("model.norm", "lm_head"),
    # LlamaDecoderLayer: residual + o_proj(z), then residual + mlp(post_attention_layernorm(.)).
    layout=BlockLayout(
        attn_output="self_attn.o_proj", mlp=("mlp",), mlp_norm="post_attention_layernorm"
    ),
    bridge_adapter="LlamaForCausalLM",
    notes=(
        "each block is called with rotary position embeddings as a keyword argument; the "
        "engine's replay passes the recorded ones back unchanged",
    ),
)
