"""Our policy loss equals verl 0.9.1's ``compute_policy_loss_vanilla`` on the same tensors.

verl is configured as SPO runs it: clip 0.2 / 0.28 (clip-higher), dual-clip c = 10 (verl's
default is 3.0), token-mean aggregation with ``global_batch_info`` of data-parallel size 1 and
the mini-batch's token count, and the truncated importance weights of carried-over tokens
passed as ``rollout_is_weights``.
"""

from __future__ import annotations

import pytest
import torch
from verl.trainer.ppo import core_algos
from verl.workers.config import ActorConfig

from spo_core.config import LossConfig
from spo_core.losses import policy_loss

OURS = LossConfig(clip_low=0.2, clip_high=0.28, dual_clip=10.0, is_cap=2.0)


def verl_config(batch_num_tokens: float) -> ActorConfig:
    config = ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=10.0,
        ppo_mini_batch_size=8,
        ppo_micro_batch_size_per_gpu=2,
        use_dynamic_bsz=False,
    )
    config.global_batch_info["dp_size"] = 1
    config.global_batch_info["batch_num_tokens"] = batch_num_tokens
    return config


def tensors(seed: int, rows: int = 8, width: int = 12) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, width, generator=gen, dtype=torch.float64) * 3
    # Ratios from ~0.5 to ~2, so every clip branch (low, high, dual) is taken somewhere.
    logp = old + torch.randn(rows, width, generator=gen, dtype=torch.float64) * 0.5
    logp[:, 2] += 3.0  # ratios near 20: the dual clip's branch where Ã < 0
    behaviour = old + torch.randn(rows, width, generator=gen, dtype=torch.float64) * 0.8
    adv = torch.randn(rows, generator=gen, dtype=torch.float64) * 2
    lengths = torch.randint(1, width + 1, (rows,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).double()
    mask[:, 1::5] = 0  # tool-output tokens inside the response
    carried = torch.rand(rows, width, generator=gen) < 0.4
    return {
        "logp": logp,
        "old": old,
        "behaviour": behaviour,
        "adv": adv,
        "mask": mask,
        "carried": carried,
    }


def verl_weights(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a verl run passes as ``rollout_is_weights``: the truncated π_old/π_behaviour on
    carried-over tokens, 1 elsewhere."""
    weight = (t["old"] - t["behaviour"]).clamp(-20, 20).exp().clamp(max=OURS.is_cap)
    return torch.where(t["carried"], weight, torch.ones_like(weight))


def verl_loss(t: dict[str, torch.Tensor], rows: slice, num_tokens: float) -> torch.Tensor:
    loss, _ = core_algos.compute_policy_loss_vanilla(
        old_log_prob=t["old"][rows],
        log_prob=t["logp"][rows],
        advantages=t["adv"][rows, None].expand_as(t["logp"][rows]),
        response_mask=t["mask"][rows],
        loss_agg_mode="token-mean",
        config=verl_config(num_tokens),
        rollout_is_weights=verl_weights(t)[rows],
    )
    return loss


def our_loss(t: dict[str, torch.Tensor], rows: slice, num_tokens: float) -> torch.Tensor:
    return policy_loss(
        t["logp"][rows],
        t["old"][rows],
        t["adv"][rows],
        t["mask"][rows],
        OURS,
        behaviour_logp=t["behaviour"][rows],
        carried=t["carried"][rows],
        num_tokens=num_tokens,
    ).loss


@pytest.mark.parametrize("seed", range(5))
def test_mini_batch_loss_equals_verls(seed: int) -> None:
    t = tensors(seed)
    n_tokens = float(t["mask"].sum())
    ours, theirs = our_loss(t, slice(None), n_tokens), verl_loss(t, slice(None), n_tokens)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_micro_batched_accumulation_equals_verls_and_one_mini_batch(seed: int) -> None:
    t = tensors(seed)
    t["logp"].requires_grad_(True)
    n_tokens = float(t["mask"].sum())
    whole = our_loss(t, slice(None), n_tokens)
    (grad_whole,) = torch.autograd.grad(whole, t["logp"])
    ours = [our_loss(t, slice(i, i + 2), n_tokens) for i in range(0, 8, 2)]
    theirs = [verl_loss(t, slice(i, i + 2), n_tokens) for i in range(0, 8, 2)]
    (grad_ours,) = torch.autograd.grad(sum(ours), t["logp"])
    (grad_theirs,) = torch.autograd.grad(sum(theirs), t["logp"])
    assert float(sum(ours).detach()) == pytest.approx(float(whole.detach()), rel=1e-12, abs=1e-12)
    for a, b in zip(ours, theirs, strict=True):
        assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=0, atol=1e-15)
    torch.testing.assert_close(grad_ours, grad_whole, rtol=0, atol=1e-15)


def test_every_clip_branch_is_exercised() -> None:
    """The parity above would be weak if the tensors never reached a clip: check they do."""
    t = tensors(0)
    ratio = (t["logp"] - t["old"]).exp()
    on = t["mask"] > 0
    pos, neg = (t["adv"] > 0)[:, None] & on, (t["adv"] < 0)[:, None] & on
    assert (pos & (ratio > 1.28)).any() and (neg & (ratio < 0.8)).any()
    assert (neg & (ratio > 10)).any() and (pos & (ratio > 10)).any()
    assert (t["carried"] & on & ((t["old"] - t["behaviour"]).exp() > 2)).any()
