"""Session-wide tiny models: built and saved once, loaded once, shared read-only by the tests.

Tests must not change these models' weights; a test that needs edited weights copies the plain
Hugging Face oracle (``copy.deepcopy(gpt2_hf)``) or saves and loads its own model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import load_plain_hf, preferred_task, save_tiny_gpt2, save_tiny_llama, smollm2_gguf

from pytest_circuits.models import CircuitModel, load_model
from pytest_circuits.tasks import Task


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random GPT-2 (2 layers, 4 heads, d_model 32) with a word-level tokenizer."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), seed=0)


@pytest.fixture(scope="session")
def gpt2_student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny GPT-2 with the same tokenizer and one layer: a 'student' of ``gpt2_dir``."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2-student"), seed=1, n_layer=1)


@pytest.fixture(scope="session")
def gpt2_smooth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 with GPT-2's own small initialisation (std 0.02): single ablations move the
    metric a little, the regime in which first-order attribution should track exact ablation."""
    return save_tiny_gpt2(
        tmp_path_factory.mktemp("tiny-gpt2-smooth"), seed=0, initializer_range=0.02
    )


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random Llama with grouped-query attention (4 query heads, 2 kv heads)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def gpt2(gpt2_dir: Path) -> CircuitModel:
    return load_model(gpt2_dir, device="cpu")


@pytest.fixture(scope="session")
def llama(llama_dir: Path) -> CircuitModel:
    return load_model(llama_dir, device="cpu")


@pytest.fixture(scope="session")
def gpt2_hf(gpt2_dir: Path) -> Any:
    """The same GPT-2 as a plain Hugging Face model that no bridge has touched (the oracle)."""
    return load_plain_hf(gpt2_dir)


@pytest.fixture(scope="session")
def llama_hf(llama_dir: Path) -> Any:
    return load_plain_hf(llama_dir)


@pytest.fixture(scope="session")
def gpt2_task(gpt2: CircuitModel, gpt2_hf: Any) -> Task:
    """A task the random GPT-2 performs (clean logit difference well above the 0.1 margin)."""
    return preferred_task(gpt2_hf, gpt2.tokenizer, name="tiny-ioi-gpt2")


@pytest.fixture(scope="session")
def llama_task(llama: CircuitModel, llama_hf: Any) -> Task:
    return preferred_task(llama_hf, llama.tokenizer, name="tiny-ioi-llama")


@pytest.fixture(scope="session")
def gpt2_smooth(gpt2_smooth_dir: Path) -> CircuitModel:
    return load_model(gpt2_smooth_dir, device="cpu")


@pytest.fixture(scope="session")
def gpt2_smooth_task(gpt2_smooth: CircuitModel, gpt2_smooth_dir: Path) -> Task:
    return preferred_task(load_plain_hf(gpt2_smooth_dir), gpt2_smooth.tokenizer, name="smooth")


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SmolLM2-135M's BPE tokenizer, read once from the GGUF file and saved to a directory (a
    tokenizer TransformerLens and the tasks can load like any other)."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    loaded = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    directory = tmp_path_factory.mktemp("smollm2-tokenizer")
    loaded.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="session")
def smollm2_model() -> CircuitModel:
    """SmolLM2-135M-Instruct from its GGUF file (the default dtype, float32 for a GGUF file, as
    test_real_model checks; one torch thread), loaded once for the real tier's modules that only
    read it (about 25 s a load). Tests copy its ``hf_model`` to edit weights; one that changes
    it in place restores it (test_real_model)."""
    import torch

    torch.set_num_threads(1)  # on a shared 2-core runner more threads only add contention
    return load_model(smollm2_gguf(), device="cpu")


@pytest.fixture
def restore_cache_settings() -> Iterator[None]:
    """The command configures the process-wide analysis cache; give the next test it back."""
    from pytest_circuits import cache

    saved = dict(cache._settings)
    yield
    cache._settings.update(saved)
