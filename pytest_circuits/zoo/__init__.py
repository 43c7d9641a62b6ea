"""The bundled zoo: a tiny GPT-2 teacher and two distilled students trained on a toy language.

``zoo_path(name)`` gives a model's directory (an ordinary Hugging Face directory: config.json,
model.safetensors, tokenizer files) to load with ``AutoTokenizer``/``AutoModelForCausalLM`` or
TransformerLens. ``verify_zoo()`` checks every file against ``MANIFEST.json``. Rebuild with
``python -m pytest_circuits.zoo.train`` (see README.md). Imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import CircuitsError

__all__ = [
    "MANIFEST_PATH",
    "ZOO_DIR",
    "ZOO_MODELS",
    "ZooIntegrityError",
    "load_manifest",
    "verify_zoo",
    "zoo_path",
]

ZOO_DIR = Path(__file__).resolve().parent
MANIFEST_PATH = ZOO_DIR / "MANIFEST.json"
REBUILD_COMMAND = "python -m pytest_circuits.zoo.train"

ZOO_MODELS: dict[str, str] = {
    "tiny-teacher": (
        "GPT-2 teacher, 4 layers x 4 heads, d_model 128, trained on the toy language "
        "(numerals, numwords and IOI sentences plus filler)"
    ),
    "tiny-student": (
        "good candidate: GPT-2 with 2 layers x 4 heads, initialised from teacher layers 0 and 2, "
        "distilled on the teacher's logits (KL at T=2 plus a small hard-label term)"
    ),
    "tiny-student-brittle": (
        "release candidate the gates should block: the same student structurally head-pruned "
        "to one attention head per layer (the others zeroed and kept zero), then distilled"
    ),
}


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
