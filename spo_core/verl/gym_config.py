"""The ``spo_gym`` block of a verl config: which env the agent loop plays and its sandbox pool.

verl composes one config for every process; spo-gym reads its own top-level block from it::

    spo_gym:
      env: retool              # a registered env id, or its name ("retool" = spo_gym/ReTool-v0)
      env_kwargs: {}           # constructor arguments of the env (not ``pool``)
      max_turns: 8             # model turns per episode (capped by multi_turn.max_assistant_turns)
      sandbox_pool: 16         # warm containers per agent-loop worker process
      sandbox: {}              # further sandbox.SandboxConfig fields (memory_mb, docker_url, ...)

Every key is optional; a missing block means all defaults. The block also holds the settings of
spo-gym's other parts (the trainer's tracker, sampler, offline values, ...), read there. A
dataset row's ``extra_info.env`` names the env of that row and takes precedence over ``env``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pydantic
from omegaconf import DictConfig, OmegaConf

import envs
from sandbox import SandboxConfig

__all__ = ["BLOCK", "GymConfigError", "SPOGymConfig", "resolve_env_id"]

BLOCK = "spo_gym"
"""The top-level key of the block in the composed verl config."""

_ENV_NAME = re.compile(r"(?:(?P<namespace>[\w.-]+)/)?(?P<name>[\w.:]+?)(?:-v(?P<version>\d+))?")


class GymConfigError(ValueError):
    """A ``spo_gym`` block (or a row's env name) that cannot be used; the message names the key."""


def _frozen(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class SPOGymConfig:
    """The parsed ``spo_gym`` block (see the module docstring).

    Attributes:
        env: the default env of rows that name none (a registered id or an env name).
        env_kwargs: keyword arguments for the env's constructor.
        max_turns: model turns per episode.
        sandbox_pool: warm sandbox containers kept by each agent-loop worker process.
        sandbox: further :class:`sandbox.SandboxConfig` fields for that pool.
    """

    env: str = "retool"
    env_kwargs: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    max_turns: int = 8
    sandbox_pool: int = 16
    sandbox: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))

    def __post_init__(self) -> None:
        if not isinstance(self.env, str) or not self.env.strip():
            raise GymConfigError(f"{BLOCK}.env must be a non-empty string, got {self.env!r}")
        for name in ("max_turns", "sandbox_pool"):
            value = getattr(self, name)
            least = 1 if name == "max_turns" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise GymConfigError(f"{BLOCK}.{name} must be an integer >= {least}, got {value!r}")
        for name in ("env_kwargs", "sandbox"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise GymConfigError(f"{BLOCK}.{name} must be a mapping with string keys")
            object.__setattr__(self, name, _frozen(value))
        if "pool" in self.env_kwargs:
            raise GymConfigError(
                f"{BLOCK}.env_kwargs.pool: the agent loop gives the env its worker's pool; "
                f"size it with {BLOCK}.sandbox_pool and {BLOCK}.sandbox"
            )
        generation = self.env_kwargs.get("generation")
        if generation is not None and not isinstance(generation, Mapping):
            raise GymConfigError(f"{BLOCK}.env_kwargs.generation must be a mapping of overrides")
        if generation is not None and "max_turns" in generation:
            raise GymConfigError(
                f"{BLOCK}.env_kwargs.generation.max_turns: set {BLOCK}.max_turns instead"
            )
        if "warm" in self.sandbox:
            raise GymConfigError(f"{BLOCK}.sandbox.warm: set {BLOCK}.sandbox_pool instead")
        self.sandbox_config()  # a bad sandbox field fails here, not in the first episode

    @classmethod
    def from_verl(cls, config: DictConfig | Mapping[str, Any]) -> SPOGymConfig:
        """The block of a composed verl config (defaults for a missing block or key).

        Keys of the block that other parts read (the trainer's ``tracker``, ``sampler``,
        ``advantage_norm``, ...) are left to them.

        Raises:
            GymConfigError: a bad value of one of this class's keys.
        """
        block = config.get(BLOCK)
        if block is None:
            return cls()
        if isinstance(block, DictConfig):
            block = OmegaConf.to_container(block, resolve=True)
        if not isinstance(block, Mapping):
            raise GymConfigError(f"{BLOCK} must be a mapping, got {type(block).__name__}")
        # The block also holds other parts' settings (the trainer's tracker, sampler, ...).
        mine = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in block.items() if k in mine and v is not None})

    def sandbox_config(self) -> SandboxConfig:
        """The :class:`sandbox.SandboxConfig` of the worker's pool.

        Raises:
            GymConfigError: a field that ``SandboxConfig`` rejects.
        """
        try:
            config = SandboxConfig(**{**self.sandbox, "warm": self.sandbox_pool})
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise GymConfigError(f"{BLOCK}.sandbox: {problems}") from None
        if config.warm > config.max_containers:
            raise GymConfigError(
                f"{BLOCK}.sandbox_pool ({config.warm}) exceeds the pool's max_containers "
                f"({config.max_containers}); raise {BLOCK}.sandbox.max_containers"
            )
        return config


def resolve_env_id(name: str) -> str:
    """The registered env id ``name`` stands for.

    A full id (``spo_gym/ReTool-v0``) is returned as it is; an env name matches the registered
    ids of that name, case-insensitively, with or without namespace and version (``retool``,
    ``ReTool-v0``, ``spo_gym/retool``), the highest version winning.

    Raises:
        GymConfigError: no registered env, or envs of several namespaces, have that name.
    """
    registered = envs.list_envs()
    if name in registered:
        return name
    wanted = _ENV_NAME.fullmatch(name.strip())
    if wanted is None:
        raise GymConfigError(f"{name!r} is not an env id or name (e.g. retool, spo_gym/ReTool-v0)")
    matches: list[tuple[str, int, str]] = []
    for env_id in registered:
        parsed = _ENV_NAME.fullmatch(env_id)
        assert parsed is not None, env_id  # the registry only holds namespace/Name-vN ids
        if parsed["name"].lower() != wanted["name"].lower():
            continue
        if wanted["namespace"] and parsed["namespace"].lower() != wanted["namespace"].lower():
            continue
        if wanted["version"] and parsed["version"] != wanted["version"]:
            continue
        matches.append((parsed["namespace"], int(parsed["version"]), env_id))
    if not matches:
        raise GymConfigError(
            f"no registered env is named {name!r} (known: {', '.join(registered)})"
        )
    if len({namespace for namespace, _, _ in matches}) > 1:
        ids = ", ".join(env_id for _, _, env_id in matches)
        raise GymConfigError(f"env name {name!r} is ambiguous ({ids}); give the full id")
    return max(matches)[2]
