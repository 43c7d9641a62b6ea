"""Loading teachers and students as TransformerLens 4 bridges: ``load_model`` and ``load_pair``."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .architectures import Architecture, architecture_for, supported_labels
from .components import Component, all_components
from .dtypes import DTYPES, canonical_dtype
from .errors import (
    IncompatiblePairError,
    ModelLoadError,
    NonFiniteError,
    UnsupportedArchitectureError,
)
from .identity import ModelInfo

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model")


@dataclass(eq=False)
class CircuitModel:
    """A loaded model with what the analyses need to know about it.

    ``bridge`` is the TransformerLens 4 ``TransformerBridge`` (raw Hugging Face weights, no
    compatibility-mode processing); ``hf_model`` is the Hugging Face model inside it.
    ``architecture`` is the Hugging Face class name; ``arch`` is its family's registry entry
    (hook names, prediction head, causal or masked).
    """

    name: str
    bridge: Any
    tokenizer: Any
    architecture: str
    arch: Architecture
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    n_ctx: int
    n_params: int
    device: str
    dtype: str
    processing: str = "raw"
    source: str = ""
    _fingerprint: str | None = field(default=None, repr=False)
    _hf_state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def hf_model(self) -> Any:
        return self.bridge.original_model

    @property
    def family(self) -> str:
        return self.arch.family

    @property
    def kind(self) -> str:
        """``"causal"`` (predictions at the last position) or ``"masked"`` (at ``[MASK]``)."""
        return self.arch.kind

    @property
    def is_causal(self) -> bool:
        return self.arch.is_causal

    @property
    def is_masked(self) -> bool:
        return self.arch.is_masked

    @property
    def device_kind(self) -> str:
        return self.device.split(":")[0]

    @property
    def weights_fingerprint(self) -> str:
        """sha256 over the state dict (names, dtypes, shapes and bytes), computed once."""
        if self._fingerprint is None:
            state = self._hf_state if self._hf_state is not None else self.hf_model.state_dict()
            self._fingerprint = fingerprint_state_dict(state)
        return self._fingerprint

    def components(self, which: str = "all") -> list[Component]:
        return all_components(self.n_layers, self.n_heads, which)

    def describe(self) -> ModelInfo:
        """The model's identity, stored with every result (``.to_dict()`` for JSON)."""
        return ModelInfo(
            name=self.name,
            source=self.source,
            architecture=self.architecture,
            kind=self.kind,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_head=self.d_head,
            d_model=self.d_model,
            n_params=self.n_params,
            dtype=self.dtype,
            device_kind=self.device_kind,
            processing=self.processing,
            weights_sha256=self.weights_fingerprint,
            family=self.family,
            n_kv_heads=self.n_kv_heads,
        )

    def __repr__(self) -> str:
        return (
            f"CircuitModel({self.name!r}, {self.architecture}, {self.n_layers}x{self.n_heads}, "
            f"{self.n_params:,} params, {self.device}, {self.dtype})"
        )


@dataclass(eq=False)
class ModelPair:
    """A teacher and its distilled student, checked to be comparable."""

    teacher: CircuitModel
    student: CircuitModel
    same_tokenizer: bool = True

    @property
    def compression(self) -> float:
        """C = 1 - params_student / params_teacher."""
        return 1.0 - self.student.n_params / self.teacher.n_params

    @property
    def name(self) -> str:
        return f"{self.teacher.name} -> {self.student.name}"

    def __repr__(self) -> str:
        return f"ModelPair(teacher={self.teacher!r}, student={self.student!r})"


def fingerprint_state_dict(state: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(-1).view(_byte_dtype()).numpy().tobytes())
    return digest.hexdigest()


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} was requested but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); use device='auto' or 'cpu', or run on a "
            "GPU runner"
        )
    return device


def resolve_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None:
        return torch.float32
    canonical = canonical_dtype(str(dtype))
    if canonical is None:
        raise ModelLoadError(f"dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)}")
    return getattr(torch, canonical)


def _hub_cache_dir(cache_dir: str | os.PathLike[str] | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _check_local_dir(path: Path, *, need_tokenizer: bool) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model directory {str(path)!r} has no config.json: save the model there with "
            "model.save_pretrained(directory)"
        )
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise ModelLoadError(
            f"model directory {str(path)!r} has no weights (looked for "
            f"{', '.join(_WEIGHT_FILES)}): save them with model.save_pretrained(directory)"
        )
    if need_tokenizer and not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"model directory {str(path)!r} has no tokenizer files (looked for "
            f"{', '.join(_TOKENIZER_FILES)}): save them with tokenizer.save_pretrained(directory)"
            " or pass tokenizer=<directory with the tokenizer files>"
        )


def _loadable_architecture(model_or_config: Any, source: str) -> tuple[str, Architecture]:
    """The HF class name and registry entry of a model or config; refuses unsupported ones."""
    entry = architecture_for(model_or_config, source=source)
    entry.require_supported(source, supported_labels())
    if hasattr(model_or_config, "model_type") and not hasattr(model_or_config, "config"):
        declared = list(getattr(model_or_config, "architectures", None) or [])
    else:
        declared = [type(model_or_config).__name__]
    name = next((n for n in declared if n in entry.hf_classes), entry.hf_classes[0])
    return name, entry


def _describe_position(tensor: Any, flat_index: int) -> str:
    if tensor.dim() == 0:
        return ""
    if tensor.dim() == 1:
        return f" (first at index {flat_index})"
    return f" (first at row {flat_index // (tensor.numel() // tensor.shape[0])})"


def check_finite_weights(hf_model: Any, model_name: str) -> None:
    """Refuse a model with a NaN or infinite parameter or buffer, naming the tensor.

    A NaN in an embedding row that a task never reads leaves every logit difference finite, so
    every gate would pass on a broken checkpoint; one ``isfinite().all()`` per tensor is cheap.
    """
    import torch

    named = list(hf_model.named_parameters()) + list(hf_model.named_buffers())
    for tensor_name, tensor in named:
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
            continue
        data = tensor.detach()
        nans = int(torch.isnan(data).sum())
        infs = int(torch.isinf(data).sum())
        counts = [
            f"{n} {what} value{'s' if n > 1 else ''}"
            for n, what in ((nans, "NaN"), (infs, "infinite"))
            if n
        ]
        first = int(torch.nonzero(~torch.isfinite(data.reshape(-1)))[0])
        hint = ""
        if data.dtype == torch.float16 and not nans:
            hint = (
                " If the checkpoint is finite in float32, the float16 cast overflowed (float16 "
                "stops at 65504): load with dtype='bfloat16' or 'float32'."
            )
        raise NonFiniteError(
            f"{model_name}: {tensor_name} has {' and '.join(counts)}"
            f"{_describe_position(data, first)}; the checkpoint is corrupted (a diverged training "
            "run or a damaged file), and every gate measured on it would be meaningless. "
            "Re-download or re-export the checkpoint, and check the run that produced it for "
            f"NaN losses.{hint}"
        )


def _check_shape_against_bridge(entry: Architecture, shape: Any, cfg: Any, source: str) -> None:
    """The family's config keys must give the shape TransformerLens built; a mismatch means the
    entry reads the wrong keys, and every component name would point at the wrong unit."""
    ours = {
        "n_layers": shape.n_layers,
        "n_heads": shape.n_heads,
        "d_head": shape.d_head,
        "d_model": shape.d_model,
    }
    bridge = {key: int(getattr(cfg, key)) for key in ours}
    if ours != bridge:
        raise UnsupportedArchitectureError(
            f"{source}: the {entry.family} family reads the shape {ours} from the config but "
            f"TransformerLens built {bridge}; fix config_keys in "
            f"pytest_circuits/architectures/{entry.family}.py"
        )


_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def _hub_error(source: str, cache_dir: Any, exc: BaseException) -> ModelLoadError:
    offline = _offline()
    advice = (
        "Offline mode only reads the cache: download the model once on a machine with network "
        f"(huggingface-cli download {source}) into that cache, or pass a local directory."
        if offline
        else "Check the id and the network, or pass a local directory."
    )
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return ModelLoadError(
        f"model {source!r} could not be loaded from the Hugging Face hub or its cache (cache "
        f"directory: {_hub_cache_dir(cache_dir)}; HF_HUB_OFFLINE={'1' if offline else 'unset'})"
        f". {advice} ({type(exc).__name__}: {first_line})"
    )


def _resolve_hub(source: str, revision: str | None, cache_dir: Any) -> str:
    """The local snapshot directory of a hub model: from the cache, downloaded if allowed.

    Everything afterwards loads from that directory, so the model, its tokenizer and
    TransformerLens all read the same files and nothing asks the network twice.
    """
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            source, revision=revision, cache_dir=cache_dir, allow_patterns=_HUB_PATTERNS
        )
        if not any((Path(folder) / name).is_file() for name in _WEIGHT_FILES):
            # older repositories ship only PyTorch pickles
            folder = snapshot_download(
                source, revision=revision, cache_dir=cache_dir,
                allow_patterns=_HUB_PATTERNS + ["pytorch_model*.bin"],
            )
    except Exception as exc:  # hub errors are many types (offline, 404, gated, network)
        raise _hub_error(source, cache_dir, exc) from exc
    return str(folder)


def _load_config(location: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read the config in {location!r}: {exc}") from exc


def load_model(
    source: Any,
    *,
    device: str | None = "auto",
    dtype: Any = None,
    revision: str | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> CircuitModel:
    """Load a model for circuit analysis.

    ``source`` may be a hub id (``"openai-community/gpt2"``; the Hugging Face cache and
    ``HF_HUB_OFFLINE`` are honoured), a local Hugging Face directory, ``"zoo:NAME"`` for the
    bundled tiny models, or an already-built Hugging Face model together with ``tokenizer``
    (a directory the tokenizer was saved to). Weights stay raw (no TransformerLens processing).
    """
    from transformers import AutoTokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)

    hf_model = None
    if not isinstance(source, (str, os.PathLike)):
        if not hasattr(source, "config") or not hasattr(source, "state_dict"):
            raise ModelLoadError(
                f"cannot load a model from {type(source).__name__}: pass a hub id, a local "
                "directory, 'zoo:NAME', or a Hugging Face model with tokenizer=<directory>"
            )
        if tokenizer is None:
            raise ModelLoadError(
                "an in-memory Hugging Face model needs tokenizer=<directory>: TransformerLens "
                "only accepts a tokenizer loaded from disk (tokenizer.save_pretrained(dir))"
            )
        hf_model = source
        config = source.config
        label = name or getattr(config, "_name_or_path", None) or type(source).__name__
        location = None
        arch_name, entry = _loadable_architecture(source, label)
    else:
        text = os.fspath(source)
        if text.startswith("zoo:"):
            from .zoo import zoo_path

            try:
                location = str(zoo_path(text[4:]))
            except ValueError as exc:
                raise ModelLoadError(str(exc)) from exc
        elif Path(text).expanduser().exists() or text.startswith((".", "/", "~")):
            location = str(Path(text).expanduser())
        else:
            location = _resolve_hub(text, revision, cache_dir)
        _check_local_dir(Path(location), need_tokenizer=tokenizer is None)
        label = name or text
        config = _load_config(location)
        arch_name, entry = _loadable_architecture(config, label)

    tok_source = os.fspath(tokenizer) if tokenizer is not None else location
    try:
        tok = AutoTokenizer.from_pretrained(tok_source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{label}: the tokenizer could not be loaded from {tok_source!r} ({exc}); save it "
            "with tokenizer.save_pretrained(directory) or pass tokenizer=<directory>"
        ) from exc

    if hf_model is None:
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        auto = AutoModelForCausalLM if entry.is_causal else AutoModelForMaskedLM
        try:
            hf_model = auto.from_pretrained(
                location,
                dtype=torch_dtype,
                attn_implementation="eager",
                trust_remote_code=False,
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{label}: the weights could not be loaded ({exc})") from exc
    hf_model = hf_model.to(device=torch_device, dtype=torch_dtype)
    hf_model.eval()
    for param in hf_model.parameters():
        param.requires_grad_(False)
    # After the cast (a float16 cast can overflow) and before the bridge renames the tensors.
    check_finite_weights(hf_model, label)
    shape = entry.shape(hf_model.config)

    # Count and fingerprint the Hugging Face weights before the bridge wraps the modules (it
    # adds split q/k/v views of fused weights that are not parameters of the model).
    unique = {id(p): p for p in hf_model.parameters()}
    n_params = sum(p.numel() for p in unique.values())
    hf_state = dict(hf_model.state_dict())

    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        location or label,
        hf_model=hf_model,
        tokenizer=tok,
        device=torch_device,
        dtype=torch_dtype,
        trust_remote_code=False,
        # The adapter our registry chose, also for configs without an architectures list
        # (GGUF-loaded models), where TransformerLens would otherwise guess from model_type.
        hf_config_overrides={"architectures": [entry.bridge_adapter]},
    )
    bridge.eval()
    _check_shape_against_bridge(entry, shape, bridge.cfg, label)
    return CircuitModel(
        name=label,
        bridge=bridge,
        tokenizer=tok,
        architecture=arch_name,
        arch=entry,
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        n_kv_heads=shape.n_kv_heads,
        d_head=shape.d_head,
        d_model=shape.d_model,
        n_ctx=shape.n_ctx,
        n_params=int(n_params),
        device=str(torch_device),
        dtype=str(torch_dtype).replace("torch.", ""),
        source=str(location or label),
        _hf_state=hf_state,
    )


def load_pair(
    teacher: Any,
    student: Any,
    *,
    allow_different_tokenizers: bool = False,
    **kwargs: Any,
) -> ModelPair:
    """Load (or accept already-loaded) teacher and student and check they can be compared.

    Checks: same tokenizer vocabulary (attention-pattern similarity compares the same token
    positions), the same weight processing, one device and one dtype. Keyword arguments go to
    :func:`load_model` for both.
    """
    t = teacher if isinstance(teacher, CircuitModel) else load_model(teacher, **kwargs)
    s = student if isinstance(student, CircuitModel) else load_model(student, **kwargs)
    if t.processing != s.processing:
        raise IncompatiblePairError(
            f"teacher {t.name} uses {t.processing!r} weights but student {s.name} uses "
            f"{s.processing!r}: load both the same way (pytest-circuits uses raw weights)"
        )
    if t.device != s.device:
        raise IncompatiblePairError(
            f"teacher is on {t.device} but student is on {s.device}: load both with the same "
            "device="
        )
    if t.dtype != s.dtype:
        raise IncompatiblePairError(
            f"teacher is {t.dtype} but student is {s.dtype}: load both with the same dtype="
        )
    same = t.tokenizer.get_vocab() == s.tokenizer.get_vocab()
    if not same and not allow_different_tokenizers:
        tv, sv = t.tokenizer.get_vocab(), s.tokenizer.get_vocab()
        differing = len(set(tv.items()) ^ set(sv.items()))
        raise IncompatiblePairError(
            f"teacher {t.name} and student {s.name} have different tokenizers (vocabulary "
            f"sizes {len(tv)} and {len(sv)}, {differing} entries differ). Attention-pattern "
            "similarity (similarity='paper') compares the same token positions, so it needs "
            "one tokenizer. Matching by ablation effect still works across tokenizers: load "
            "with allow_different_tokenizers=True and compare with matching='causal'."
        )
    return ModelPair(teacher=t, student=s, same_tokenizer=same)
