"""Llama (3.x, Minitron, SmolLM2): causal, RMSNorm, rotary positions, grouped-query attention."""

from __future__ import annotations

from .base import Architecture, BlockLayout, ConfigKeys, TinyConfig, TinyModel, ZooRecipe

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
    tiny=TinyConfig(
        fixed=(
            ("rms_norm_eps", 1e-6),
            ("attention_dropout", 0.0),
            ("tie_word_embeddings", True),  # keeps the zoo small; Llama-3.1-8B unties them
        ),
        ffn_key="intermediate_size",
        ffn_ratio=(8, 3),  # SwiGLU's 8/3 d, rounded down to a multiple of 8, as Llama
        ffn_multiple=8,
        kv_group=2,  # grouped-query attention: 2 query heads per key/value head
    ),
    zoo=ZooRecipe(
        description="Llama (GQA, RoPE, RMSNorm, SwiGLU) -> Minitron-Depth student",
        teacher=TinyModel(
            "tiny-llama-teacher", layers=4, steps=4000, lr=3e-3,
            description=(
                "LlamaForCausalLM teacher, 4 layers x 4 query heads sharing 2 key/value heads "
                "(grouped-query attention), RoPE, RMSNorm, SwiGLU, d_model 128"
            ),
        ),
        students=(
            TinyModel(
                "tiny-llama-student-depth", layers=2, steps=1200, lr=3e-3,
                start="cheapest_block", stream_seed=1,
                description=(
                    "Minitron-Depth student: the Llama teacher without its cheapest block of 2 "
                    "layers (kept: 0 and 1), then distilled on the teacher's logits"
                ),
            ),
        ),
    ),
)
