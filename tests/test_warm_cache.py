"""What a warm session reads from the analysis cache directory instead of recomputing: the
dequantised copy of a GGUF model (read back as the same model, rebuilt when damaged, never kept
without a cache directory) and the bridge-parity verdict (a failure stays a failure).

The GGUF tests stand a tiny saved Llama in for transformers' dequantiser (``_dequantise_gguf``),
so the cache's own logic runs in seconds; the real SmolLM2 GGUF is loaded through the cache
once, in the ``real`` tier (test_real_gguf_cache below).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pytest_circuits import cache, models, parity, warmcache
from pytest_circuits.cache import CacheWarning
from pytest_circuits.models import CircuitModel, load_model
from pytest_circuits.tasks import Task

#: Loading models (torch, transformers, TransformerLens) takes longer than the fast tier allows.
pytestmark = pytest.mark.slow

PROMPT = "When Mary and John went to the store , John gave a drink to"


@pytest.fixture
def cache_dir(tmp_path: Path, restore_cache_settings: None) -> Iterator[Path]:
    """A fresh analysis cache directory for this test (the session's settings restored after)."""
    directory = tmp_path / "cache"
    cache.configure(directory)
    yield directory
    cache.forget()


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    """A stand-in GGUF file: the magic, then bytes whose digest keys the dense copy."""
    path = tmp_path / "models" / "tiny.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return path


@pytest.fixture
def dequantised(monkeypatch: pytest.MonkeyPatch, llama_dir: Path) -> list[Path]:
    """Every dequantisation of a GGUF file, recorded; each reads the tiny Llama instead (as the
    real one would, as the model of ``gguf`` under its name, in the dtype asked for)."""
    calls: list[Path] = []

    def dequantise(gguf: Path, options: dict[str, Any]) -> CircuitModel:
        calls.append(gguf)
        model = load_model(llama_dir, device=options["device"], dtype=options["dtype"],
                           name=options["name"])
        model.source = str(gguf)
        return model

    monkeypatch.setattr(models, "_dequantise_gguf", dequantise)
    return calls


def logits(model: CircuitModel) -> Any:
    import torch

    tokens = model.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model.bridge(tokens)


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("gguf-*"))


def test_a_gguf_model_is_dequantised_once_and_read_back_as_the_same_model(
    cache_dir: Path, gguf: Path, dequantised: list[Path]
) -> None:
    import torch

    first = load_model(gguf, device="cpu")
    assert dequantised == [gguf]
    (entry,) = entries(cache_dir)
    files = sorted(p.name for p in entry.iterdir())
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert warmcache.MANIFEST in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".py"))]
    manifest = json.loads((entry / warmcache.MANIFEST).read_text())["body"]
    assert manifest["weights_sha256"] == first.weights_fingerprint
    assert manifest["tokenizer_sha256"] == first.tokenizer_digest

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        again = load_model(str(gguf), device="cpu")
    assert dequantised == [gguf]  # read from the copy, not dequantised again
    assert again.weights_fingerprint == first.weights_fingerprint
    assert again.tokenizer_digest == first.tokenizer_digest
    assert again.describe() == first.describe()  # name and source: the GGUF file, as given
    assert again.name == again.source == str(gguf)
    assert torch.equal(logits(again), logits(first))
    assert again.bridge is not first.bridge


def test_the_key_is_the_file_content_and_the_dtype_not_the_path(
    cache_dir: Path, gguf: Path, dequantised: list[Path], tmp_path: Path
) -> None:
    load_model(gguf, device="cpu")
    twin = tmp_path / "elsewhere.gguf"
    twin.write_bytes(gguf.read_bytes())
    assert load_model(twin, device="cpu").source == str(twin)
    assert dequantised == [gguf]  # the same bytes under another name: one dense copy
    load_model(gguf, device="cpu", dtype="bfloat16")
    assert dequantised == [gguf, gguf] and len(entries(cache_dir)) == 2
    gguf.write_bytes(gguf.read_bytes() + b"\0")  # another file at the same path
    load_model(gguf, device="cpu")
    assert dequantised == [gguf] * 3 and len(entries(cache_dir)) == 3


def _truncate_weights(entry: Path) -> None:
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def _flip_a_weight(entry: Path) -> None:
    """Same size, one byte of the tensor data changed: only the weights fingerprint sees it."""
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0x01  # the lowest mantissa byte of a float32: still finite
    weights.write_bytes(bytes(data))


def _edit_config(entry: Path) -> None:
    """A hand edit of the same length (the normalisation epsilon): only its digest tells."""
    config = entry / "config.json"
    text = config.read_text()
    assert '"rms_norm_eps": 1e-06' in text
    config.write_text(text.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-01'))


def _forge_the_digest(entry: Path) -> None:
    """A consistent manifest (checksum recomputed) claiming another GGUF file's digest."""
    manifest = entry / warmcache.MANIFEST
    body = json.loads(manifest.read_text())["body"]
    body["parts"]["gguf_sha256"] = "0" * 64
    manifest.write_bytes(warmcache._sealed(body))


def _plant_a_pickle(entry: Path) -> None:
    (entry / "pytorch_model.bin").write_bytes(b"not a safe file")


def _tamper_the_manifest(entry: Path) -> None:
    manifest = entry / warmcache.MANIFEST
    manifest.write_text(manifest.read_text().replace('"size":', '"size": 1 +', 1))


def _swap_the_tokenizer(entry: Path) -> None:
    """The tokenizer changed and the manifest resealed to match the file (so only the
    tokenizer digest of the loaded model can tell)."""
    from tokenizers import Tokenizer

    path = entry / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.add_tokens(["zebra-unseen"])
    tokenizer.save(str(path))
    manifest = entry / warmcache.MANIFEST
    body = json.loads(manifest.read_text())["body"]
    body["files"]["tokenizer.json"] = {"size": path.stat().st_size,
                                       "sha256": warmcache.file_sha256(path)}
    manifest.write_bytes(warmcache._sealed(body))


@pytest.mark.parametrize("damage, problem", [
    (_truncate_weights, "bytes, the manifest says"),
    (_flip_a_weight, "its weights differ"),
    (_edit_config, "config.json changed after it was written"),
    (_forge_the_digest, "stored parts"),
    (_plant_a_pickle, "unlisted: ['pytorch_model.bin']"),
    (_tamper_the_manifest, "not JSON"),
    (_swap_the_tokenizer, "its tokenizer differ"),
])
def test_a_damaged_copy_is_reported_and_rebuilt_from_the_gguf_file(
    cache_dir: Path, gguf: Path, dequantised: list[Path], damage: Any, problem: str
) -> None:
    import torch

    first = load_model(gguf, device="cpu")
    (entry,) = entries(cache_dir)
    damage(entry)
    with pytest.warns(CacheWarning, match="was not used") as caught:
        rebuilt = load_model(gguf, device="cpu")
    assert problem in str(caught[0].message) and "rebuilt from the GGUF file" in str(
        caught[0].message)
    assert dequantised == [gguf, gguf]  # dequantised again, never read from the damaged copy
    assert rebuilt.weights_fingerprint == first.weights_fingerprint
    assert rebuilt.tokenizer_digest == first.tokenizer_digest
    assert torch.equal(logits(rebuilt), logits(first))
    # the copy was rebuilt: the next load reads it, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        third = load_model(gguf, device="cpu")
    assert dequantised == [gguf, gguf] and third.weights_fingerprint == first.weights_fingerprint


def test_a_killed_writer_leaves_no_entry_and_the_next_session_builds_it(
    cache_dir: Path, gguf: Path, dequantised: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = CircuitModel.save_pretrained

    def killed(self: CircuitModel, directory: Any) -> Path:
        real_save(self, directory)
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # the writer dies after the weights, before the manifest

    monkeypatch.setattr(CircuitModel, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        load_model(gguf, device="cpu")
    assert entries(cache_dir) == []  # only a hidden temporary directory is left
    (leftover,) = cache_dir.glob(".gguf-*.tmp")
    monkeypatch.setattr(CircuitModel, "save_pretrained", real_save)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        model = load_model(gguf, device="cpu")
    assert dequantised == [gguf, gguf] and len(entries(cache_dir)) == 1
    old = leftover.stat().st_mtime - 2 * warmcache.STALE_SECONDS
    os.utime(leftover, (old, old))
    gguf.write_bytes(gguf.read_bytes() + b"\0")  # another key: a leftover of another key stays
    load_model(gguf, device="cpu")
    assert leftover.exists() and len(entries(cache_dir)) == 2
    assert model.source == str(gguf)


def test_a_stale_temporary_directory_of_the_same_key_is_removed(
    cache_dir: Path, gguf: Path, dequantised: list[Path]
) -> None:
    load_model(gguf, device="cpu")
    (entry,) = entries(cache_dir)
    stale = cache_dir / f".{entry.name}.1-dead.tmp"
    fresh = cache_dir / f".{entry.name}.2-live.tmp"
    for leftover in (stale, fresh):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"half")
    old = stale.stat().st_mtime - 2 * warmcache.STALE_SECONDS
    os.utime(stale, (old, old))
    _flip_a_weight(entry)
    with pytest.warns(CacheWarning):
        load_model(gguf, device="cpu")  # a rebuild writes the key again
    assert not stale.exists() and fresh.exists()  # a writer still at work is left alone


def test_an_entry_another_process_completed_meanwhile_is_kept(
    cache_dir: Path, gguf: Path, dequantised: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    load_model(gguf, device="cpu")
    (entry,) = entries(cache_dir)
    theirs = cache_dir.parent / "theirs"
    shutil.copytree(entry, theirs)
    shutil.rmtree(entry)
    real_save = CircuitModel.save_pretrained

    def racing(self: CircuitModel, directory: Any) -> Path:
        shutil.copytree(theirs, entry)  # the other writer's rename lands first
        return real_save(self, directory)

    monkeypatch.setattr(CircuitModel, "save_pretrained", racing)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        load_model(gguf, device="cpu")
    assert entries(cache_dir) == [entry] and list(cache_dir.glob(".gguf-*")) == []
    monkeypatch.setattr(CircuitModel, "save_pretrained", real_save)
    load_model(gguf, device="cpu")
    assert dequantised == [gguf, gguf]  # the kept entry is read


def test_a_copy_that_cannot_be_written_warns_and_the_model_still_loads(
    cache_dir: Path, gguf: Path, dequantised: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: CircuitModel, directory: Any) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CircuitModel, "save_pretrained", refuse)
    with pytest.warns(CacheWarning, match="could not be kept in the analysis cache"):
        model = load_model(gguf, device="cpu")
    assert model.source == str(gguf) and entries(cache_dir) == []
    assert list(cache_dir.glob(".gguf-*")) == []  # the half-written directory is gone


@pytest.mark.parametrize("settings", [{"directory": None}, {"enabled": False}])
def test_without_a_cache_directory_a_gguf_file_is_read_by_transformers_every_time(
    tmp_path: Path, gguf: Path, dequantised: list[Path], restore_cache_settings: None,
    settings: dict[str, Any],
) -> None:
    """As before the copy existed: transformers' GGUF reader reads the file on every load (the
    stand-in file is no GGUF it can parse, so each load reaches it and fails there), and no
    dense copy is written or looked for."""
    directory = tmp_path / "cache"
    cache.configure(settings.get("directory", directory), enabled=settings.get("enabled", True))
    try:
        for _ in range(2):
            with pytest.raises(models.ModelLoadError, match="reading its metadata"):
                load_model(gguf, device="cpu")
    finally:
        cache.forget()
    assert dequantised == []
    assert not directory.exists() or list(directory.iterdir()) == []


# ----------------------------------------------------------------------------- parity


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models whose parity was measured (both models run), by name."""
    calls: list[str] = []
    real = parity._measure

    def counting(model: CircuitModel, task: Task, *args: Any) -> parity.ParityResult:
        calls.append(model.name)
        return real(model, task, *args)

    monkeypatch.setattr(parity, "_measure", counting)
    return calls


def fresh(model: CircuitModel, name: str) -> CircuitModel:
    """The same loaded model with an empty per-model memo: what a new session holds."""
    clone = copy.copy(model)
    clone.name = name
    return clone


def test_a_parity_verdict_is_stored_and_read_by_a_later_session(
    cache_dir: Path, gpt2: CircuitModel, gpt2_task: Task, counted: list[str]
) -> None:
    first = parity.ensure_bridge_parity(fresh(gpt2, "a"), gpt2_task)
    assert counted == ["a"] and first.passed and first.model == "a"
    (record,) = cache_dir.glob(f"{parity.PARITY_RECORD}-*.json")
    later = parity.ensure_bridge_parity(fresh(gpt2, "b"), gpt2_task)
    assert counted == ["a"]  # read from the record: no forward run
    assert later.model == "b" and later.task == gpt2_task.name
    assert {**later.to_dict(), "model": "a"} == first.to_dict()
    # another task, or other tolerances, is another verdict
    other = dataclasses.replace(gpt2_task, name="other", prompts=gpt2_task.prompts[:2],
                                correct=gpt2_task.correct[:2],
                                distractors=gpt2_task.distractors[:2],
                                corrupted=gpt2_task.corrupted[:2])
    parity.ensure_bridge_parity(fresh(gpt2, "c"), other)
    assert counted == ["a", "c"]
    loose = parity.bridge_parity(fresh(gpt2, "c2"), gpt2_task, rtol=0.5, use_cache=True)
    assert counted == ["a", "c", "c2"] and loose.rtol == 0.5
    # a direct call measures unless asked to use the cache
    parity.bridge_parity(fresh(gpt2, "direct"), gpt2_task)
    assert counted == ["a", "c", "c2", "direct"]
    # a damaged record is recomputed (with a warning) and rewritten
    record.write_text(record.read_text().replace('"passed":true', '"passed":false'))
    with pytest.warns(CacheWarning, match="checksum mismatch"):
        assert parity.ensure_bridge_parity(fresh(gpt2, "d"), gpt2_task).passed
    assert counted == ["a", "c", "c2", "direct", "d"]
    assert parity.ensure_bridge_parity(fresh(gpt2, "e"), gpt2_task).passed
    assert counted == ["a", "c", "c2", "direct", "d"]


def test_a_stored_failure_still_fails_in_a_later_session(
    cache_dir: Path, tmp_path: Path, counted: list[str]
) -> None:
    """A model whose own logits are not finite on some prompts (an infinite embedding row, set
    before its weights were fingerprinted) fails the preflight; a later session reads that
    failure and fails the same way, without running the models."""
    import torch
    from helpers import save_tiny_gpt2

    from pytest_circuits.tasks import builtin_task

    model = load_model(save_tiny_gpt2(tmp_path / "untied", tie_word_embeddings=False),
                       device="cpu", name="broken")
    task = builtin_task("ioi", n_prompts=16, seed=0)
    token = model.tokenizer.convert_tokens_to_ids("Ryan")
    with torch.no_grad():
        model.hf_model.transformer.wte.weight[token] = float("inf")
    with pytest.raises(parity.BridgeParityError) as first:
        parity.ensure_bridge_parity(model, task)
    assert counted == ["broken"] and first.value.result.plain_nonfinite
    with pytest.raises(parity.BridgeParityError) as later:
        parity.ensure_bridge_parity(fresh(model, "broken again"), task)
    assert counted == ["broken"]  # read, not measured
    # the same result, NaN where the fresh one had NaN (compared as JSON text)
    assert json.dumps({**later.value.result.to_dict(), "model": "broken"}, sort_keys=True) == (
        json.dumps(first.value.result.to_dict(), sort_keys=True))
    assert str(later.value).startswith("broken again: non-finite logits")
    assert "the model (not the bridge) is broken" in str(later.value)


def test_a_model_with_hooks_is_always_measured_and_never_stored(
    cache_dir: Path, gpt2_dir: Path, gpt2_task: Task, counted: list[str]
) -> None:
    healthy = load_model(gpt2_dir, device="cpu", name="healthy")
    assert parity.ensure_bridge_parity(healthy, gpt2_task).passed
    assert counted == ["healthy"]
    faulty = load_model(gpt2_dir, device="cpu", name="faulty")  # the same weights
    handle = faulty.hf_model.lm_head.register_forward_hook(lambda mod, args, out: out + 1e-2)
    try:
        assert parity.runtime_hooks(faulty) and not parity.runtime_hooks(healthy)
        with pytest.raises(parity.BridgeParityError) as caught:
            parity.ensure_bridge_parity(faulty, gpt2_task)
        with pytest.raises(parity.BridgeParityError):
            parity.ensure_bridge_parity(fresh(faulty, "faulty again"), gpt2_task)
    finally:
        handle.remove()
    assert counted == ["healthy", "faulty", "faulty again"]
    assert caught.value.result.max_abs_diff == pytest.approx(1e-2, rel=1e-3)
    assert len(list(cache_dir.glob(f"{parity.PARITY_RECORD}-*.json"))) == 1
    # the hook removed: the model's stored pass applies again
    assert parity.ensure_bridge_parity(fresh(faulty, "mended"), gpt2_task).passed
    assert counted == ["healthy", "faulty", "faulty again"]


def test_a_hook_added_through_transformer_lens_counts_as_a_hook(
    cache_dir: Path, gpt2_dir: Path, gpt2_task: Task, counted: list[str]
) -> None:
    healthy = load_model(gpt2_dir, device="cpu", name="healthy")
    assert parity.ensure_bridge_parity(healthy, gpt2_task).passed
    faulty = load_model(gpt2_dir, device="cpu", name="faulty")  # the same weights
    point = faulty.bridge.blocks[0].hook_out

    def nudge(value: Any, hook: Any) -> Any:
        return value + 1.0

    point.add_hook(nudge)  # wrapped by TransformerLens in a closure of its own module
    try:
        found = parity.runtime_hooks(faulty)
        assert any(entry[2].endswith("nudge") for entry in found), found
        parity.ensure_bridge_parity(faulty, gpt2_task)  # measured, not the stored pass
        parity.ensure_bridge_parity(fresh(faulty, "faulty again"), gpt2_task)
    finally:
        point.remove_hooks()
    assert counted == ["healthy", "faulty", "faulty again"]
    assert len(list(cache_dir.glob(f"{parity.PARITY_RECORD}-*.json"))) == 1  # never stored


def test_transformers_own_capture_hooks_do_not_stop_the_verdict_being_stored(
    cache_dir: Path, gpt2_dir: Path, gpt2_task: Task, counted: list[str]
) -> None:
    # a forward asking for attention weights leaves transformers' capture hooks on the modules
    # (the session's shared model gets them from other tests); they change no output
    model = load_model(gpt2_dir, device="cpu", name="looked-at")
    with torch.no_grad():
        model.hf_model(torch.tensor([[1, 2, 3]]), output_attentions=True)
    assert sum(len(m._forward_hooks) for m in model.hf_model.modules()) > 0
    assert parity.runtime_hooks(model) == []
    assert parity.ensure_bridge_parity(model, gpt2_task).passed
    assert len(list(cache_dir.glob(f"{parity.PARITY_RECORD}-*.json"))) == 1
    assert parity.ensure_bridge_parity(fresh(model, "again"), gpt2_task).passed
    assert counted == ["looked-at"]  # the second session read the stored verdict


def test_a_record_with_wrong_fields_is_recomputed(
    cache_dir: Path, gpt2: CircuitModel, gpt2_task: Task, counted: list[str]
) -> None:
    first = parity.ensure_bridge_parity(fresh(gpt2, "a"), gpt2_task)
    parts = parity.parity_key_parts(gpt2, gpt2_task)
    forged = {**first.to_dict(), "max_rel_diff": "tiny"}  # a consistent record, wrong types
    warmcache.write_record(parity.PARITY_RECORD, parts, forged)
    assert parity.ensure_bridge_parity(fresh(gpt2, "b"), gpt2_task).max_rel_diff == (
        first.max_rel_diff)
    assert counted == ["a", "b"]


def test_without_a_cache_directory_parity_runs_in_every_session(
    gpt2: CircuitModel, gpt2_task: Task, counted: list[str], restore_cache_settings: None,
    tmp_path: Path,
) -> None:
    cache.configure(None)
    try:
        parity.ensure_bridge_parity(fresh(gpt2, "a"), gpt2_task)
        parity.ensure_bridge_parity(fresh(gpt2, "b"), gpt2_task)
        cache.configure(tmp_path / "off", enabled=False)
        parity.ensure_bridge_parity(fresh(gpt2, "c"), gpt2_task)
        parity.ensure_bridge_parity(fresh(gpt2, "d"), gpt2_task)
    finally:
        cache.forget()
    assert counted == ["a", "b", "c", "d"]
    assert not (tmp_path / "off").exists() or list((tmp_path / "off").iterdir()) == []


# ----------------------------------------------------------------------------- real


@pytest.mark.real
def test_real_gguf_cache(cache_dir: Path) -> None:
    """SmolLM2-135M's GGUF file: the warm load reads the dense copy and is the same model
    (weights fingerprint, tokenizer digest, description, logits), without the GGUF reader."""
    import time

    import torch
    from helpers import smollm2_gguf

    path = smollm2_gguf()
    torch.set_num_threads(1)
    start = time.perf_counter()
    cold = load_model(path, device="cpu")
    cold_seconds = time.perf_counter() - start
    start = time.perf_counter()
    warm = load_model(path, device="cpu")
    warm_seconds = time.perf_counter() - start
    assert len(entries(cache_dir)) == 1
    assert warm.weights_fingerprint == cold.weights_fingerprint
    assert warm.tokenizer_digest == cold.tokenizer_digest
    assert warm.describe() == cold.describe() and warm.source == str(path)
    # the config as the GGUF file gives it: no architectures list (the family is found by class)
    assert warm.hf_model.config.architectures == cold.hf_model.config.architectures is None
    assert torch.equal(logits(warm), logits(cold))
    assert warm_seconds < cold_seconds / 2, (cold_seconds, warm_seconds)
