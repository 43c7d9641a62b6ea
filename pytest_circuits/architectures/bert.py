"""BERT (masked LM): bidirectional post-LayerNorm blocks, predictions read at the [MASK] token."""

from __future__ import annotations

from .base import Architecture, BlockLayout, ConfigKeys, TinyConfig, TinyModel, ZooRecipe

ARCHITECTURE = Architecture(
    family="bert",
    hf_classes=("BertForMaskedLM",),
    kind="masked",
    model_types=("bert",),
    config_keys=ConfigKeys(
        n_layers="num_hidden_layers",
        n_heads="num_attention_heads",
        d_model="hidden_size",
        n_ctx="max_position_embeddings",
    ),
    blocks="bert.encoder.layer",
    # The MLM head: transform dense, activation, LayerNorm, then the decoder (with its own bias).
    # TransformerLens maps only ln_final and unembed for it; reading logits as those two would
    # skip the dense layer and the activation.
    prediction_head=(
        "cls.predictions.transform.dense",
        "cls.predictions.transform.transform_act_fn",
        "cls.predictions.transform.LayerNorm",
        "cls.predictions.decoder",
    ),
    # BertSelfOutput: LayerNorm(dense(z) + input); BertOutput: LayerNorm(dense(intermediate(.))
    # + attention output). hook_mlp_out is output.dense's output, the last module of ``mlp``.
    layout=BlockLayout(
        attn_output="attention.output.dense",
        mlp=("intermediate", "output.dense"),
        attn_norm="attention.output.LayerNorm",
        out_norm="output.LayerNorm",
    ),
    bridge_adapter="BertForMaskedLM",
    notes=(
        "TransformerLens' own BERT adapter: hook_z is the input of attention.output.dense (per "
        "head), hook_mlp_out is aliased to the output of output.dense (before the residual add "
        "and LayerNorm), and attention is bidirectional",
        "hook_attn_out is the attention module's output, which in BERT already includes the "
        "residual add and LayerNorm: head effects are read through hook_z, never hook_attn_out",
    ),
    tiny=TinyConfig(
        fixed=(
            ("hidden_dropout_prob", 0.0),
            ("attention_probs_dropout_prob", 0.0),
            ("tie_word_embeddings", True),
        ),
        ffn_key="intermediate_size",
        no_decay=("position_embeddings", "token_type_embeddings"),
    ),
    # The two zoo masked LMs answer at [MASK]: built-in tasks built for their tokenizer are the
    # masked variants ("... Sun done in [MASK].").
    zoo=ZooRecipe(
        description="BERT -> DistilBERT (masked LM; student from alternate teacher layers)",
        teacher=TinyModel(
            "tiny-bert-teacher", layers=4, steps=4000, lr=3e-3,
            description=(
                "masked-LM teacher: BertForMaskedLM, 4 layers x 4 heads, d_model 128, answers "
                "at [MASK]"
            ),
        ),
        students=(
            TinyModel(
                "tiny-distilbert-student", layers=2, steps=1200, lr=3e-3,
                start="distilbert_from_bert", stream_seed=1, family="distilbert",
                description=(
                    "DistilBertForMaskedLM, 2 layers x 4 heads, from BERT teacher layers 0 and "
                    "2, distilled on the teacher's MLM logits; answers at [MASK]"
                ),
            ),
        ),
    ),
)
