"""GPT-2 (and DistilGPT-2, the same Hugging Face class): causal, pre-LayerNorm, tied unembedding."""

from __future__ import annotations

from .base import Architecture, BlockLayout, ConfigKeys, TinyConfig, TinyModel, ZooRecipe

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
    # The zoo's tiny GPT-2s: no dropout (training is deterministic), no decay on positions.
    tiny=TinyConfig(
        fixed=(("resid_pdrop", 0.0), ("embd_pdrop", 0.0), ("attn_pdrop", 0.0)),
        no_decay=("wpe",),
    ),
    zoo=ZooRecipe(
        description="GPT-2 -> DistilGPT-2-style student, and a head-pruned brittle student",
        teacher=TinyModel(
            "tiny-teacher", layers=4, steps=2400, lr=5e-3,
            description=(
                "GPT-2 teacher, 4 layers x 4 heads, d_model 128, trained on the toy language "
                "(numerals, numwords and IOI sentences plus filler)"
            ),
        ),
        students=(
            TinyModel(
                "tiny-student", layers=2, steps=800, lr=2e-3, start="alternate_layers",
                stream_seed=1,
                description=(
                    "good candidate: GPT-2 with 2 layers x 4 heads, initialised from teacher "
                    "layers 0 and 2, distilled on the teacher's logits (KL at T=2 plus a small "
                    "hard-label term)"
                ),
            ),
            # The pruned student needs longer (and a higher rate) to recover IOI.
            TinyModel(
                "tiny-student-brittle", layers=2, steps=1600, lr=4e-3,
                start="one_head_per_layer", stream_seed=2,
                description=(
                    "release candidate the gates should block: the same student structurally "
                    "head-pruned to one attention head per layer (the others zeroed and kept "
                    "zero), then distilled"
                ),
            ),
        ),
    ),
)
