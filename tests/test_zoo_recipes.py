"""The zoo reads its families from the architecture registry: every fact (classes, config keys,
blocks, hook points, tiny config values, recipes) comes from ``pytest_circuits/architectures/``,
so a family the zoo trains is one module there and nothing in the zoo changes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from pytest_circuits import zoo
from pytest_circuits.architectures import ARCHITECTURES, TinyModel, ZooRecipe
from pytest_circuits.zoo import families
from pytest_circuits.zoo.families import FAMILIES, STUDENT_STARTS, ZooConfig, tiny_architecture
from pytest_circuits.zoo.language import build_masked_tokenizer, build_tokenizer

SMALL = ZooConfig(d_model=32, n_heads=4, n_positions=32)


def test_every_zoo_recipe_reads_its_architecture_from_the_registry() -> None:
    assert list(FAMILIES) == list(zoo.ZOO_ORDER)
    for name, family in FAMILIES.items():
        entry = ARCHITECTURES[name]
        assert family.teacher.architecture.entry is entry
        assert family.objective == entry.kind
        assert family.description == entry.zoo.description  # type: ignore[union-attr]
        for recipe in family.students:
            assert recipe.architecture.objective == entry.kind
    student = FAMILIES["bert"].students[0].architecture
    assert student.entry is ARCHITECTURES["distilbert"]
    assert (student.model_class.__name__, student.config_class.__name__) == (
        "DistilBertForMaskedLM", "DistilBertConfig")
    assert (student.blocks, student.head_input, student.mlp) == (
        "distilbert.transformer.layer", "attention.out_lin", "ffn")


@pytest.mark.parametrize("family", ["gpt2", "bert", "distilbert", "llama"])
def test_a_tiny_config_sets_the_shape_under_the_familys_own_keys(family: str) -> None:
    arch = tiny_architecture(family)
    tokenizer = build_masked_tokenizer(32) if arch.objective == "masked" else build_tokenizer(32)
    config = arch.make_config(SMALL, tokenizer, 3)
    shape = arch.entry.shape(config)
    assert (shape.n_layers, shape.n_heads, shape.d_model, shape.n_ctx) == (3, 4, 32, 32)
    assert config.vocab_size == len(tokenizer)
    assert config.pad_token_id == tokenizer.pad_token_id
    tiny = arch.entry.tiny
    assert tiny is not None
    for key, value in tiny.fixed:
        assert getattr(config, key) == value
    if family == "llama":  # 8/3 of the width, rounded down to a multiple of 8; 2 queries per KV
        assert (config.intermediate_size, shape.n_kv_heads) == (80, 2)


@pytest.fixture
def new_family(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A family module that only exists as a registry entry with a zoo recipe (a GPT-2 under
    another name, so its classes exist)."""
    entry = dataclasses.replace(
        ARCHITECTURES["gpt2"],
        family="newfamily",
        zoo=ZooRecipe(
            description="a new family",
            teacher=TinyModel("tiny-new-teacher", layers=4, steps=2, lr=1e-3,
                              description="its teacher"),
            students=(TinyModel("tiny-new-student", layers=2, steps=2, lr=1e-3,
                                start="alternate_layers", stream_seed=1,
                                description="its student"),),
        ),
    )
    monkeypatch.setitem(ARCHITECTURES, "newfamily", entry)
    families.tiny_architecture.cache_clear()
    yield entry
    families.tiny_architecture.cache_clear()


def test_a_new_family_module_with_a_recipe_is_a_zoo_family_with_no_zoo_edit(
    new_family: Any,
) -> None:
    assert [e.family for e in zoo.zoo_families()] == [*zoo.ZOO_ORDER, "newfamily"]
    assert list(zoo._zoo_models())[-2:] == ["tiny-new-teacher", "tiny-new-student"]
    family = families._family(new_family)
    assert family.model_names == ("tiny-new-teacher", "tiny-new-student")
    tokenizer = build_tokenizer(32)
    torch.manual_seed(0)
    teacher = family.teacher.architecture.build(SMALL, tokenizer, family.teacher.layers)
    start = family.students[0].init(teacher, SMALL, tokenizer, lambda m: 0.0)
    student = start.model
    assert family.students[0].architecture.shape(student) == (2, 4, 8)
    # the generic start kept teacher blocks 0 and 2 and every other teacher weight
    kept = {0: 0, 1: 2}
    for name, tensor in student.state_dict().items():
        source = name
        if name.startswith("transformer.h."):
            index, rest = name[len("transformer.h."):].split(".", 1)
            source = f"transformer.h.{kept[int(index)]}.{rest}"
        assert torch.equal(tensor, teacher.state_dict()[source]), name
    assert student.lm_head.weight.data_ptr() == student.transformer.wte.weight.data_ptr()


def test_a_recipe_naming_an_unknown_start_or_a_wrong_depth_is_refused(new_family: Any) -> None:
    bad = dataclasses.replace(new_family, zoo=dataclasses.replace(
        new_family.zoo, students=(dataclasses.replace(new_family.zoo.students[0],
                                                      start="magic"),)))
    with pytest.raises(ValueError, match=f"names the start 'magic'; the zoo knows "
                                         f"{', '.join(STUDENT_STARTS)}"):
        families._family(bad)
    deep = dataclasses.replace(new_family, zoo=dataclasses.replace(
        new_family.zoo, students=(dataclasses.replace(new_family.zoo.students[0], layers=3),)))
    family = families._family(deep)
    tokenizer = build_tokenizer(32)
    teacher = family.teacher.architecture.build(SMALL, tokenizer, 4)
    with pytest.raises(ValueError, match=r"keeps teacher layers \[0, 2\] but the recipe's "
                                         r"student has 3 layers"):
        family.students[0].init(teacher, SMALL, tokenizer, lambda m: 0.0)
