"""The architecture registry: every family resolves for its Hugging Face class, reads its shape
from the config, and turns the last block's output into the model's own logits.

Each family is a tiny random Hugging Face model built offline here (no bridge): the prediction
head an entry declares is checked against the model's full forward, which proves the BERT and
DistilBERT masked-LM heads before those families can be loaded end to end.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import pytest_circuits.architectures as registry
from pytest_circuits.architectures import (
    ARCHITECTURES,
    Architecture,
    ConfigKeys,
    Shape,
    architecture_for,
    architecture_named,
)
from pytest_circuits.errors import CircuitsError, UnsupportedArchitectureError

VOCAB = 50
SEQ = 7


def tiny_gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=32)
    )


def tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=6,  # deliberately not hidden_size / heads (4): the config key must win
            intermediate_size=32,
            max_position_embeddings=32,
            tie_word_embeddings=False,
        )
    )


def tiny_bert() -> Any:
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        )
    )


def tiny_distilbert() -> Any:
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    return DistilBertForMaskedLM(
        DistilBertConfig(
            vocab_size=VOCAB,
            dim=16,
            n_layers=2,
            n_heads=2,
            hidden_dim=32,
            max_position_embeddings=32,
        )
    )


BUILDERS: dict[str, Callable[[], Any]] = {
    "gpt2": tiny_gpt2,
    "llama": tiny_llama,
    "bert": tiny_bert,
    "distilbert": tiny_distilbert,
}
#: The shape each tiny model was built with, written out by hand.
SHAPES: dict[str, Shape] = {
    "gpt2": Shape(n_layers=2, n_heads=2, n_kv_heads=2, d_head=8, d_model=16, n_ctx=32),
    "llama": Shape(n_layers=2, n_heads=4, n_kv_heads=2, d_head=6, d_model=16, n_ctx=32),
    "bert": Shape(n_layers=2, n_heads=2, n_kv_heads=2, d_head=8, d_model=16, n_ctx=32),
    "distilbert": Shape(n_layers=2, n_heads=2, n_kv_heads=2, d_head=8, d_model=16, n_ctx=32),
}
CLASSES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "bert": "BertForMaskedLM",
    "distilbert": "DistilBertForMaskedLM",
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family_model(request: pytest.FixtureRequest) -> tuple[str, Any]:
    torch.manual_seed(0)
    model = BUILDERS[request.param]()
    model.eval()
    return request.param, model


def last_block_output(entry: Architecture, model: Any, tokens: torch.Tensor) -> tuple[Any, Any]:
    """(the residual leaving the last block, the model's own logits) from one plain forward."""
    seen: dict[str, torch.Tensor] = {}

    def keep(module: Any, args: Any, output: Any) -> None:
        seen["final"] = output[0] if isinstance(output, (tuple, list)) else output

    handle = entry.block_list(model)[-1].register_forward_hook(keep)
    try:
        with torch.no_grad():
            logits = model(tokens).logits
    finally:
        handle.remove()
    return seen["final"], logits


# --------------------------------------------------------------------------- the registry


def test_the_registry_holds_the_papers_families() -> None:
    assert sorted(ARCHITECTURES) == ["bert", "distilbert", "gpt2", "llama"]
    assert {f: e.kind for f, e in ARCHITECTURES.items()} == {
        "gpt2": "causal",
        "llama": "causal",
        "bert": "masked",
        "distilbert": "masked",
    }


def test_every_family_module_defines_exactly_its_entry() -> None:
    """A new family is one module: the registry finds it by its ARCHITECTURE, nothing else."""
    modules = [
        m.name
        for m in pkgutil.iter_modules(registry.__path__)
        if m.name != "base" and not m.name.startswith("_")  # _*: helpers such as adapters
    ]
    entries = [importlib.import_module(f"{registry.__name__}.{m}").ARCHITECTURE for m in modules]
    assert sorted(e.family for e in entries) == sorted(ARCHITECTURES)
    classes = [c for e in entries for c in e.hf_classes]
    assert len(classes) == len(set(classes)), "one Hugging Face class belongs to one family"


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_each_family_resolves_from_its_class_name(family: str) -> None:
    assert architecture_named(CLASSES[family]) is ARCHITECTURES[family]


def test_each_family_resolves_from_its_model(family_model: tuple[str, Any]) -> None:
    family, model = family_model
    assert architecture_for(model) is ARCHITECTURES[family]
    assert architecture_for(model).family == family


def test_a_config_resolves_from_its_architectures_list(family_model: tuple[str, Any]) -> None:
    family, model = family_model
    config = type(model.config)(**{**model.config.to_dict(), "architectures": [CLASSES[family]]})
    assert architecture_for(config) is ARCHITECTURES[family]


def test_a_model_whose_config_has_no_architectures_resolves_from_its_class() -> None:
    """GGUF-loaded models have config.architectures None; the class name still finds them."""
    model = tiny_gpt2()
    assert model.config.architectures is None
    assert architecture_for(model).family == "gpt2"


def test_a_model_class_wins_over_a_stale_architectures_list() -> None:
    """The class is what the modules really are (the prediction head is looked up on them)."""
    model = tiny_llama()
    model.config.architectures = ["GPT2LMHeadModel"]
    assert architecture_for(model).family == "llama"


def test_a_bare_config_without_architectures_falls_back_to_its_model_type() -> None:
    from transformers import DistilBertConfig, GPT2Config

    assert architecture_for(GPT2Config(n_layer=2)).family == "gpt2"
    assert architecture_for(DistilBertConfig()).family == "distilbert"


def test_an_unknown_model_names_it_and_the_supported_families() -> None:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    model = GPTNeoForCausalLM(
        GPTNeoConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_layers=1,
            attention_types=[[["global"], 1]],
            num_heads=2,
            max_position_embeddings=32,
        )
    )
    with pytest.raises(UnsupportedArchitectureError) as info:
        architecture_for(model, source="my-neo")
    message = str(info.value)
    assert message.startswith("my-neo: architecture 'GPTNeoForCausalLM' is not supported")
    assert "gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM)" in message
    assert "distilbert (DistilBertForMaskedLM)" in message
    assert "Known but not yet loadable" not in message  # every known family loads
    assert "pytest_circuits/architectures/" in message  # where a new family goes
    assert isinstance(info.value, CircuitsError)


def test_an_unknown_config_without_architectures_names_its_model_type() -> None:
    from transformers import GPTNeoConfig

    with pytest.raises(UnsupportedArchitectureError, match="model_type 'gpt_neo'"):
        architecture_for(GPTNeoConfig())


# --------------------------------------------------------------------------- the config keys


def test_each_family_reads_its_shape_from_the_config(family_model: tuple[str, Any]) -> None:
    family, model = family_model
    assert ARCHITECTURES[family].shape(model.config) == SHAPES[family]


def test_llama_records_how_many_key_value_heads_its_query_heads_share() -> None:
    config = tiny_llama().config
    shape = ARCHITECTURES["llama"].shape(config)
    assert (shape.n_heads, shape.n_kv_heads) == (4, 2)
    assert shape.d_head == config.head_dim == 6


def test_a_config_missing_a_shape_key_is_refused_naming_the_key() -> None:
    config = SimpleNamespace(n_layer=2, n_embd=16, n_positions=32)  # n_head missing
    with pytest.raises(UnsupportedArchitectureError, match="'n_head'"):
        ARCHITECTURES["gpt2"].shape(config)


# --------------------------------------------------------------------------- the prediction head


def test_prediction_logits_through_the_entry_are_the_models_own(
    family_model: tuple[str, Any],
) -> None:
    """At several positions per prompt, the declared head applied to the last block's output
    equals the model's full forward (causal: any position; masked: the [MASK] one in use)."""
    family, model = family_model
    entry = ARCHITECTURES[family]
    tokens = torch.randint(3, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(1))
    final, logits = last_block_output(entry, model, tokens)
    positions = torch.tensor([SEQ - 1, 2, 0])
    rows = final[torch.arange(3), positions]
    with torch.no_grad():
        got = entry.prediction_logits(model, rows)
    want = logits[torch.arange(3), positions]
    assert got.shape == (3, VOCAB)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("family", "final_norm", "unembed"),
    [
        ("bert", "cls.predictions.transform.LayerNorm", "cls.predictions.decoder"),
        ("distilbert", "vocab_layer_norm", "vocab_projector"),
    ],
)
def test_a_masked_head_is_not_just_a_final_norm_and_unembedding(
    family: str, final_norm: str, unembed: str
) -> None:
    """The trap the entry avoids: reading a masked LM's logits as ln_final + unembed (what the
    TransformerLens BERT mapping names) skips the transform dense and activation."""
    torch.manual_seed(0)
    model = BUILDERS[family]().eval()
    entry = ARCHITECTURES[family]
    tokens = torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(2))
    final, logits = last_block_output(entry, model, tokens)
    shortcut = Architecture(
        family=f"{family}-shortcut",
        hf_classes=("Nothing",),
        kind="masked",
        config_keys=entry.config_keys,
        blocks=entry.blocks,
        prediction_head=(final_norm, unembed),
        supported=False,
        why="test",
    )
    with torch.no_grad():
        wrong = shortcut.prediction_logits(model, final[:, 3])
        right = entry.prediction_logits(model, final[:, 3])
    torch.testing.assert_close(right, logits[:, 3], atol=1e-5, rtol=0)
    assert (wrong - logits[:, 3]).abs().max() > 1e-2


def test_a_missing_head_module_names_the_path_and_the_family_file() -> None:
    from transformers import GPT2Config, GPT2Model

    body_only = GPT2Model(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB))
    with pytest.raises(UnsupportedArchitectureError) as info:
        ARCHITECTURES["gpt2"].prediction_logits(body_only, torch.zeros(1, 16))
    message = str(info.value)
    assert "'transformer.ln_f'" in message
    assert "pytest_circuits/architectures/" in message


# --------------------------------------------------------------------------- entries as data


def test_hook_names_are_the_bridge_names_per_layer() -> None:
    hooks = ARCHITECTURES["llama"].hooks
    assert hooks.z_hook(3) == "blocks.3.attn.hook_z"
    assert hooks.pattern_hook(0) == "blocks.0.attn.hook_pattern"
    assert hooks.mlp_out_hook(11) == "blocks.11.hook_mlp_out"
    assert hooks.attn_out_hook(2) == "blocks.2.hook_attn_out"


def test_an_unsupported_entry_refuses_to_load_with_its_reason() -> None:
    entry = Architecture(
        family="toy",
        hf_classes=("ToyForMaskedLM",),
        kind="masked",
        config_keys=ConfigKeys(n_layers="a", n_heads="b", d_model="c", n_ctx="d"),
        blocks="toy.layers",
        prediction_head=("head",),
        supported=False,
        why="no bridge adapter for toys yet",
    )
    with pytest.raises(UnsupportedArchitectureError) as info:
        entry.require_supported("some/model", registry.supported_labels())
    message = str(info.value)
    assert message.startswith("some/model: architecture 'ToyForMaskedLM' is not supported yet")
    assert "(no bridge adapter for toys yet)" in message
    assert "gpt2 (GPT2LMHeadModel)" in message


def test_every_family_of_the_paper_is_supported() -> None:
    assert all(entry.supported for entry in ARCHITECTURES.values())
    labels = registry.supported_labels()
    for family in ("gpt2", "llama", "bert", "distilbert"):
        assert ARCHITECTURES[family].label in labels


def test_distilbert_names_the_adapter_pytest_circuits_ships() -> None:
    """TransformerLens has no DistilBERT adapter: the entry points at ours, which is a
    TransformerLens ArchitectureAdapter importable from the path it names."""
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter

    entry = ARCHITECTURES["distilbert"]
    assert entry.bridge_adapter == "DistilBertForMaskedLM"
    module, _, name = (entry.bridge_adapter_class or "").partition(":")
    adapter = getattr(importlib.import_module(module), name)
    assert issubclass(adapter, ArchitectureAdapter)
    assert ARCHITECTURES["bert"].bridge_adapter_class is None  # TransformerLens' own


def test_supported_families_pass_require_supported() -> None:
    for family in ("gpt2", "llama", "bert", "distilbert"):
        ARCHITECTURES[family].require_supported("x", registry.supported_labels())


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"kind": "seq2seq"}, "kind 'seq2seq'"),
        ({"hf_classes": ()}, "at least one HF class"),
        ({"prediction_head": ()}, "at least one module"),
        ({"supported": False, "why": ""}, "must say why"),
        ({"bridge_adapter": None}, "needs a bridge_adapter"),
        ({"bridge_adapter_class": "toy.Adapter"}, "'module:Class'"),
    ],
)
def test_a_malformed_entry_fails_when_it_is_written(changes: dict[str, Any], problem: str) -> None:
    fields: dict[str, Any] = dict(
        family="toy",
        hf_classes=("ToyForCausalLM",),
        kind="causal",
        config_keys=ConfigKeys(n_layers="a", n_heads="b", d_model="c", n_ctx="d"),
        blocks="model.layers",
        prediction_head=("lm_head",),
        bridge_adapter="ToyForCausalLM",
    )
    fields.update(changes)
    with pytest.raises(ValueError, match=problem):
        Architecture(**fields)


def test_entries_are_frozen() -> None:
    with pytest.raises(AttributeError):
        ARCHITECTURES["gpt2"].kind = "masked"  # type: ignore[misc]
