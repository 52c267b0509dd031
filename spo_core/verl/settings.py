"""The SPO trainer's settings, read from the composed verl config's top-level ``spo_gym`` block.

    spo_gym:
      offline_values: null      # an eval run's offline_values.jsonl (spo-gym eval -k 8)
      cold_start: false         # true: start every prompt at the tracker's prior instead
      advantage_norm: sequence  # sequence | token (SPO++: token-weighted)
      seed: 0                   # prompt sampler seed
      tracker: {}               # spo_core.config.TrackerConfig fields
      rho: {}                   # spo_core.config.RhoConfig fields (mode: constant)
      offline: {}               # spo_core.config.OfflineConfig fields
      sampler: {}               # spo_core.config.SamplerConfig fields

Keys the agent loop reads from the same block (env, max_turns, …) are left to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from omegaconf import DictConfig, OmegaConf

from spo_core.config import (
    AdvantageNorm,
    OfflineConfig,
    RhoConfig,
    SamplerConfig,
    TrackerConfig,
)

BLOCK: Final = "spo_gym"
_NORMS: Final = ("sequence", "token")


class SPOSettingsError(ValueError):
    """The ``spo_gym`` block of the config is not a valid SPO setting."""


def _section(cls: type[Any], raw: Any, name: str, defaults: dict[str, Any] | None = None) -> Any:
    values = dict(defaults or {})
    if raw is not None:
        if not isinstance(raw, dict):
            raise SPOSettingsError(f"{BLOCK}.{name} must be a mapping, got {raw!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SPOSettingsError(
                f"{BLOCK}.{name}: unknown setting {unknown[0]!r}; one of {', '.join(sorted(known))}"
            )
        values.update(raw)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise SPOSettingsError(f"{BLOCK}.{name}: {exc}") from exc


@dataclass(frozen=True)
class SPOSettings:
    """What the ``spo`` trainer mode needs beyond verl's own settings."""

    offline_values: Path | None = None
    cold_start: bool = False
    advantage_norm: AdvantageNorm = "sequence"
    seed: int = 0
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    # verl recomputes log-probs only for the batch being trained, never for a prompt's stored
    # response from its last visit, so ρ is SPO_SPEC §4's constant alternative.
    rho: RhoConfig = field(default_factory=lambda: RhoConfig(mode="constant"))
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    @classmethod
    def from_config(cls, config: DictConfig, check_files: bool = True) -> SPOSettings:
        """Read and check the ``spo_gym`` block (absent: every default, which needs offline
        values or ``cold_start``); ``check_files`` also checks that the offline values exist."""
        block = config.get(BLOCK, None)
        raw: dict[str, Any] = (
            OmegaConf.to_container(block, resolve=True)  # type: ignore[assignment]
            if block is not None
            else {}
        )
        norm = raw.get("advantage_norm", "sequence")
        if norm not in _NORMS:
            raise SPOSettingsError(f"{BLOCK}.advantage_norm={norm}: one of {', '.join(_NORMS)}")
        rho = _section(RhoConfig, raw.get("rho"), "rho", {"mode": "constant"})
        if rho.mode != "constant":
            raise SPOSettingsError(
                f"{BLOCK}.rho.mode must be constant on verl: the KL-adaptive ρ re-scores each "
                "prompt's stored last response, which verl's trainer never computes"
            )
        offline_values = raw.get("offline_values")
        cold_start = raw.get("cold_start", False)
        if not isinstance(cold_start, bool):
            raise SPOSettingsError(f"{BLOCK}.cold_start={cold_start}: must be true or false")
        if offline_values and cold_start:
            raise SPOSettingsError(
                f"{BLOCK}.offline_values and {BLOCK}.cold_start=true contradict each other: "
                "choose offline values or the no-offline-init ablation"
            )
        if not offline_values and not cold_start:
            raise SPOSettingsError(
                f"{BLOCK}.offline_values is unset: give an eval run's offline_values.jsonl of the "
                "training prompts (spo-gym eval --dataset <train.parquet> -k 8), or set "
                f"{BLOCK}.cold_start=true for the no-offline-init ablation"
            )
        path = Path(offline_values) if offline_values else None
        if check_files and path is not None and not path.is_file():
            raise SPOSettingsError(f"{BLOCK}.offline_values: no such file {path}")
        return cls(
            offline_values=path,
            cold_start=cold_start,
            advantage_norm=norm,
            seed=int(raw.get("seed", 0)),
            tracker=_section(TrackerConfig, raw.get("tracker"), "tracker"),
            rho=rho,
            offline=_section(OfflineConfig, raw.get("offline"), "offline"),
            sampler=_section(SamplerConfig, raw.get("sampler"), "sampler"),
        )
