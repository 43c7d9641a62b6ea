"""The bundled zoo: tiny models of the paper's three teacher/student families, trained offline
on one toy language (numerals, numwords and IOI sentences; see README.md here).

- GPT-2 -> DistilGPT-2: ``tiny-teacher`` (4 layers), ``tiny-student`` (2 layers made from the
  teacher's layers 0 and 2, distilled) and ``tiny-student-brittle`` (the same student
  head-pruned to one head per layer, then distilled: the candidate the gates should block).
- BERT -> DistilBERT (masked LMs): ``tiny-bert-teacher`` (``BertForMaskedLM``) and
  ``tiny-distilbert-student`` (``DistilBertForMaskedLM`` from alternate teacher layers). They
  answer at a ``[MASK]`` token, not after the last one: their tokenizer has a mask token, so
  built-in tasks built for it are the masked variants (``... Sun done in [MASK].``).
- Llama -> Llama-Minitron-Depth (grouped-query attention, RoPE, RMSNorm):
  ``tiny-llama-teacher`` (4 layers, 4 query heads sharing 2 key/value heads) and
  ``tiny-llama-student-depth`` (its cheapest 2-layer block dropped, then distilled).

``zoo_path(name)`` gives a model's directory (an ordinary Hugging Face directory: config.json,
model.safetensors, tokenizer files) to load with ``AutoTokenizer`` and
``AutoModelForCausalLM``/``AutoModelForMaskedLM``, or as ``load_model("zoo:NAME")``.
``verify_zoo()`` checks every file against ``MANIFEST.json``. The models and their recipes
are declared in the families' modules in ``pytest_circuits/architectures/``
(``Architecture.zoo``). Rebuild with ``python -m pytest_circuits.zoo.train`` (see README.md).
Imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..architectures import ARCHITECTURES, Architecture
from ..errors import CircuitsError

__all__ = [
    "MANIFEST_PATH",
    "ZOO_DIR",
    "ZOO_MODELS",
    "ZOO_ORDER",
    "ZooIntegrityError",
    "load_manifest",
    "verify_zoo",
    "zoo_families",
    "zoo_path",
]

ZOO_DIR = Path(__file__).resolve().parent
MANIFEST_PATH = ZOO_DIR / "MANIFEST.json"
REBUILD_COMMAND = "python -m pytest_circuits.zoo.train"

#: The bundled families in the order they joined the zoo (older names first in every listing);
#: a family added later sorts after them by name.
ZOO_ORDER: tuple[str, ...] = ("gpt2", "bert", "llama")


def zoo_families() -> list[Architecture]:
    """The registry entries whose module carries a zoo recipe (``Architecture.zoo``), in zoo
    order: the families ``python -m pytest_circuits.zoo.train`` trains."""
    found = [entry for entry in ARCHITECTURES.values() if entry.zoo is not None]
    rank = {family: index for index, family in enumerate(ZOO_ORDER)}
    return sorted(found, key=lambda e: (rank.get(e.family, len(rank)), e.family))


def _zoo_models() -> dict[str, str]:
    models: dict[str, str] = {}
    for entry in zoo_families():
        assert entry.zoo is not None
        for tiny in (entry.zoo.teacher, *entry.zoo.students):
            if tiny.name in models:
                raise ValueError(f"zoo model {tiny.name!r} is named by two recipes")
            models[tiny.name] = tiny.description
    return models


#: Every zoo model and what it is, family by family (teacher first): the ``description`` of
#: each ``TinyModel`` of the recipes in ``pytest_circuits/architectures/``.
ZOO_MODELS: dict[str, str] = _zoo_models()


class ZooIntegrityError(CircuitsError, RuntimeError):
    """A zoo file is missing, unlisted or differs from MANIFEST.json."""


def zoo_path(name: str) -> Path:
    """The directory of the zoo model ``name`` (one of :data:`ZOO_MODELS`)."""
    if name not in ZOO_MODELS:
        raise ValueError(
            f"Unknown zoo model {name!r}; the zoo has: {', '.join(ZOO_MODELS)}"
        )
    path = ZOO_DIR / "models" / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"Zoo model {name!r} is missing at {path}; the package was installed without its "
            f"model files. Reinstall pytest-circuits or rebuild with `{REBUILD_COMMAND}`"
        )
    return path


def load_manifest(root: str | Path | None = None) -> dict[str, Any]:
    """The parsed ``MANIFEST.json`` of the zoo at ``root`` (default: the bundled zoo)."""
    path = Path(root) / "MANIFEST.json" if root is not None else MANIFEST_PATH
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZooIntegrityError(
            f"{path} is missing; rebuild the zoo with `{REBUILD_COMMAND}`"
        ) from None
    except json.JSONDecodeError as exc:
        raise ZooIntegrityError(f"{path} is not valid JSON ({exc})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_zoo(root: str | Path | None = None) -> None:
    """Check every zoo file's sha256 against MANIFEST.json; raise ZooIntegrityError naming the
    missing, changed or unlisted files."""
    base = Path(root) if root is not None else ZOO_DIR
    manifest = load_manifest(base)
    files: dict[str, str] = manifest.get("files", {})
    if not files:
        raise ZooIntegrityError(f"{base / 'MANIFEST.json'} lists no files")
    problems: list[str] = []
    for relative, expected in sorted(files.items()):
        path = base / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
            continue
        actual = _sha256(path)
        if actual != expected:
            problems.append(
                f"{relative}: sha256 {actual[:12]}... but the manifest says {expected[:12]}..."
            )
    models = base / "models"
    if models.is_dir():
        for path in sorted(models.rglob("*")):
            relative = path.relative_to(base).as_posix()
            if path.is_file() and relative not in files:
                problems.append(f"{relative}: not in the manifest")
    if problems:
        raise ZooIntegrityError(
            f"Zoo at {base} does not match its manifest:\n  " + "\n  ".join(problems)
            + f"\nReinstall pytest-circuits, or rebuild the zoo with `{REBUILD_COMMAND}` "
            "(and commit the new MANIFEST.json)"
        )
