"""Registering and making tool envs, on top of gymnasium's registry.

Ids look like ``spo_gym/ReTool-v0``. :func:`register` writes to gymnasium's registry, so
``gymnasium.make("spo_gym/ReTool-v0")`` works for sync use (after ``import envs``). But
gymnasium ≥ 1.0 wraps what it makes and its wrappers no longer forward attributes, so the
async twins (``areset``, ``astep``…) would be out of reach; :func:`make` returns the env
itself.

Third-party packages add envs through the entry-point group ``spo_gym.envs``; they are
registered the first time :func:`make`, :func:`spec` or :func:`list_envs` runs (or on
:func:`load_plugins`). An entry point names either

- an env class — registered under the entry point's name::

      [project.entry-points."spo_gym.envs"]
      "calculator/Calculator-v0" = "calculator_env:CalculatorEnv"

- or a callable that registers its envs itself with :func:`register`::

      [project.entry-points."spo_gym.envs"]
      calculator = "calculator_env:register_envs"

A plugin that fails to load is reported (a warning, and :func:`plugin_errors`) and skipped;
it does not break the others; asking for one of its ids raises :class:`EnvNotFoundError`
naming the failed plugin.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import difflib
import inspect
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, cast

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec, load_env_creator

from envs.core import ToolEnv
from sandbox import SandboxPool

__all__ = [
    "ENTRY_POINT_GROUP",
    "EnvIdError",
    "EnvNotFoundError",
    "env_creator",
    "env_parameters",
    "env_source",
    "list_envs",
    "load_plugins",
    "make",
    "plugin_errors",
    "register",
    "spec",
]

ENTRY_POINT_GROUP = "spo_gym.envs"
_ID = re.compile(r"(?P<namespace>[\w.-]+)/(?P<name>[\w.:-]+)-v(?P<version>\d+)")


class EnvIdError(ValueError):
    """An env id that is not of the form ``namespace/Name-vN``."""


class EnvNotFoundError(LookupError):
    """No env is registered under an id; the message names close matches and any plugin of
    that namespace that failed to load."""


_sources: dict[str, str] = {}  # env id -> who registered it ("spo-gym" or a distribution)
_current_source = contextvars.ContextVar("spo_gym_env_source", default="spo-gym")
_plugin_errors: list[str] = []
_plugins_loaded = False
_plugins_lock = threading.Lock()


def register(
    id: str,
    entry_point: str | Callable[..., gym.Env[Any, Any]],
    *,
    kwargs: Mapping[str, Any] | None = None,
    **spec_fields: Any,
) -> None:
    """Registers a tool env with gymnasium's registry (and lists it in :func:`list_envs`).

    Args:
        id: ``namespace/Name-vN``.
        entry_point: ``"module:Class"`` (imported only when made) or a class/factory.
        kwargs: default constructor arguments; :func:`make` arguments override them.
        spec_fields: further :class:`gymnasium.envs.registration.EnvSpec` fields.

    Tool envs are registered ``nondeterministic``: the same seed and actions can give other
    timings, outputs or resource failures from the sandbox.
    """
    _check_id(id)
    spec_fields.setdefault("nondeterministic", True)
    gym.register(id=id, entry_point=entry_point, kwargs=dict(kwargs or {}), **spec_fields)
    _sources[id] = _current_source.get()


def make(id: str, **kwargs: Any) -> ToolEnv:
    """Creates the registered env ``id`` and returns it unwrapped.

    ``kwargs`` override the registered ones. The env's ``spec`` records the merged
    arguments except live resources (a ``pool``), so ``env.spec.make()`` works and builds an
    env on the default pool.

    Raises:
        EnvIdError: the id is not of the form ``namespace/Name-vN``.
        EnvNotFoundError: the id is not registered.
        TypeError: the id does not make a :class:`~envs.core.ToolEnv`.
    """
    env_spec = spec(id)
    merged = {**copy.deepcopy(env_spec.kwargs), **kwargs}
    env = env_creator(id)(**merged)
    if not isinstance(env, ToolEnv):
        env.close()
        raise TypeError(f"{id} makes a {type(env).__name__}, not a ToolEnv; use gymnasium.make")
    declared = {k: v for k, v in merged.items() if not isinstance(v, SandboxPool)}
    env.spec = dataclasses.replace(env_spec, kwargs=declared)
    return env


def spec(id: str) -> EnvSpec:
    """The registration of ``id`` (gymnasium's :class:`EnvSpec`), plugins included.

    Raises:
        EnvIdError: the id is not of the form ``namespace/Name-vN``.
        EnvNotFoundError: the id is not registered.
    """
    _check_id(id)
    load_plugins()
    if id not in gym.registry:
        raise EnvNotFoundError(_not_found(id))
    return gym.spec(id)


def env_creator(id: str) -> Callable[..., gym.Env[Any, Any]]:
    """What makes the env ``id``: its class or factory (imported if registered by name).

    Raises:
        EnvIdError, EnvNotFoundError: as :func:`spec`.
    """
    entry = spec(id).entry_point
    if callable(entry):
        return cast(Callable[..., gym.Env[Any, Any]], entry)
    return cast(Callable[..., gym.Env[Any, Any]], load_env_creator(str(entry)))


def env_parameters(id: str) -> frozenset[str]:
    """The keyword arguments the env ``id`` can be made with (its constructor's, and
    :class:`~envs.core.ToolEnv`'s when it forwards ``**kwargs``), so a front end passes an
    option only to envs that declare it.

    Raises:
        EnvIdError, EnvNotFoundError: as :func:`spec`.
    """
    names, forwards = _keywords(env_creator(id))
    return names | _keywords(ToolEnv)[0] if forwards else names


def _keywords(creator: Callable[..., Any]) -> tuple[frozenset[str], bool]:
    """A callable's keyword parameters, and whether it takes ``**kwargs``."""
    params = inspect.signature(creator).parameters.values()
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = frozenset(p.name for p in params if p.kind in named)
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def list_envs() -> list[str]:
    """Ids of the tool envs registered here and by installed plugins, sorted."""
    load_plugins()
    return sorted(i for i in _sources if i in gym.registry)


def env_source(id: str) -> str:
    """Who registered ``id``: "spo-gym" or the plugin's distribution name."""
    load_plugins()
    return _sources[id]


def plugin_errors() -> list[str]:
    """Plugins that failed to load, one message each."""
    load_plugins()
    return list(_plugin_errors)


def load_plugins(*, reload: bool = False) -> None:
    """Registers the envs of every ``spo_gym.envs`` entry point (once, unless ``reload``)."""
    global _plugins_loaded
    with _plugins_lock:
        if _plugins_loaded and not reload:
            return
        _plugins_loaded = True
        _plugin_errors.clear()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            source = ep.dist.name if ep.dist is not None else ep.value
            token = _current_source.set(source)
            try:
                _load_plugin(ep.name, ep.value, ep.load)
            except Exception as exc:  # a broken plugin must not take the others down
                message = f"{ep.name} = {ep.value} ({source}): {type(exc).__name__}: {exc}"
                _plugin_errors.append(message)
                warnings.warn(
                    f"spo_gym.envs plugin failed: {message}", RuntimeWarning, stacklevel=2
                )
            finally:
                _current_source.reset(token)


def _check_id(id: str) -> None:
    if not isinstance(id, str) or _ID.fullmatch(id) is None:
        raise EnvIdError(f"env id {id!r} must look like namespace/Name-vN (e.g. spo_gym/ReTool-v0)")


def _not_found(id: str) -> str:
    namespace = id.partition("/")[0]
    message = f"no env {id!r} is registered"
    close = difflib.get_close_matches(id, list_envs(), n=3)
    if close:
        message += f"; did you mean {', '.join(close)}?"
    elif not any(i.startswith(namespace + "/") for i in list_envs()):
        message += f"; no env of namespace {namespace!r} is installed"
    # A plugin registering by callable is named freely, so any failure may be the cause.
    failed = [e for e in _plugin_errors if e.startswith(namespace)] or list(_plugin_errors)
    if failed:
        message += f" (plugin failed to load: {failed[0]})"
    return message


def _load_plugin(name: str, value: str, load: Callable[[], Any]) -> None:
    target = load()
    if isinstance(target, type):
        if not issubclass(target, gym.Env):
            raise TypeError(f"{value} is a class but not a gymnasium.Env")
        register(name, value)
    elif callable(target):
        target()
    else:
        raise TypeError(f"{value} is neither an env class nor a callable that registers envs")


register("spo_gym/ReTool-v0", "envs.retool:ReToolEnv")
register(
    "spo_gym/ReToolNano-v0",
    "envs.retool:ReToolEnv",
    kwargs={
        # ReTool for character-level models with a context of a few hundred tokens: a short
        # system prompt, no demonstrations, and budgets that fit a whole episode in ~700
        # characters (prompt ~300, response <= 384).
        "system_template": "retool_nano_system.j2",
        "generation": {
            "max_turns": 3,
            "max_turn_tokens": 200,
            "max_episode_tokens": 384,
            "max_observation_chars": 160,
        },
    },
)
