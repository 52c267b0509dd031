"""PPO-Clip policy loss with clip-higher, dual-clip and decoupled importance weights (§2 step 5).

Per token, with r = exp(clamp(logπ − logπ_old, −20, 20)) and advantage Ã:

    ℓ = max(−Ã·r, −Ã·clip(r, 1 − ε_low, 1 + ε_high))          (PPO-Clip, clip-higher)
    ℓ = min(ℓ, −Ã·c)                       where Ã < 0         (dual-clip, c = 10)
    ℓ = w·ℓ,  w = min(π_old / π_behaviour, 2)  on carried-over tokens, else w = 1

and the loss is the token mean of ℓ over the mask (no KL term, no entropy bonus). With
micro-batch accumulation the mean's denominator is the whole mini-batch's token count
(``num_tokens``), so the micro-batch losses add up to one token mean over the mini-batch. π_old is the
learner's recomputation before the update; for an episode carried over from an older policy,
π_behaviour is what the sampler recorded, and the truncated weight w corrects for the gap
("decoupled PPO": the clip trusts π_old, the weight accounts for who actually sampled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spo_core.config import LossConfig

_DEFAULT_LOSS = LossConfig()  # frozen, so sharing one default instance is safe


@dataclass(frozen=True)
class PolicyLoss:
    loss: torch.Tensor  # scalar, differentiable in logp
    metrics: dict[str, float]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1.0))


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: LossConfig = _DEFAULT_LOSS,
    behaviour_logp: torch.Tensor | None = None,
    carried: torch.Tensor | None = None,
    num_tokens: float | None = None,
) -> PolicyLoss:
    """Token-mean PPO-Clip loss over ``mask`` (1 on model tokens), shapes [B, T].

    ``advantages`` is [B, T] or one value per episode, [B]. ``behaviour_logp`` are the sampler's
    log-probs; given alone they only feed the ``behaviour_mismatch`` metric (the mean |Δ| between
    rollout and recomputed log-probs, which exposes sampler/trainer numeric mismatch).
    ``carried`` marks what an older policy version sampled — whole episodes ([B] bool) or single
    tokens ([B, T] bool, when a weight update landed mid-episode); those tokens get the
    truncated importance weight, which needs ``behaviour_logp``. ``num_tokens`` is the
    denominator of the token mean (default: the tokens under ``mask``); a micro-batch passes its
    mini-batch's token count, as verl's ``agg_loss`` does with ``batch_num_tokens``.

    Metrics: ``clip_frac`` (tokens where the clipped term is taken), ``dual_clip_frac``,
    ``approx_kl`` (mean of logπ_old − logπ), ``behaviour_mismatch``, and for carried tokens
    ``is_weight_mean`` and ``is_truncated_frac``.
    """
    m = mask.to(logp.dtype)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    adv = adv.to(logp.dtype).expand_as(logp)
    log_ratio = (logp - old_logp).clamp(-config.log_ratio_clamp, config.log_ratio_clamp)
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - config.clip_low, 1.0 + config.clip_high)
    ppo = torch.maximum(unclipped, clipped)
    dual = torch.minimum(ppo, -adv * config.dual_clip)
    per_token = torch.where(adv < 0, dual, ppo)

    metrics: dict[str, float] = {}
    if carried is not None:
        if behaviour_logp is None:
            raise ValueError("carried-over episodes need their behaviour log-probs")
        gap = (old_logp - behaviour_logp).detach()
        raw_weight = gap.clamp(-config.log_ratio_clamp, config.log_ratio_clamp).exp()
        weight = raw_weight.clamp(max=config.is_cap)
        flags = carried.to(torch.bool)
        carried_tokens = (flags[:, None] if flags.dim() == 1 else flags).expand_as(logp)
        per_token = torch.where(carried_tokens, weight * per_token, per_token)
        cm = m * carried_tokens.to(m.dtype)
        metrics["carried_token_frac"] = float(cm.sum() / m.sum().clamp(min=1.0))
        metrics["is_weight_mean"] = _masked_mean(weight, cm)
        metrics["is_truncated_frac"] = _masked_mean((raw_weight > config.is_cap).to(m.dtype), cm)

    denominator = m.sum().clamp(min=1.0) if num_tokens is None else max(float(num_tokens), 1.0)
    loss = (per_token * m).sum() / denominator

    with torch.no_grad():
        metrics["clip_frac"] = _masked_mean((clipped > unclipped).to(m.dtype), m)
        dual_active = (adv < 0) & (ppo > -adv * config.dual_clip)
        metrics["dual_clip_frac"] = _masked_mean(dual_active.to(m.dtype), m)
        metrics["approx_kl"] = _masked_mean(-log_ratio, m)
        if behaviour_logp is not None:
            metrics["behaviour_mismatch"] = _masked_mean((behaviour_logp - old_logp).abs(), m)
    return PolicyLoss(loss=loss, metrics=metrics)
