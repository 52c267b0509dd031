"""policy_loss: each clip branch by hand, a loop reference to 1e-6, padding invariance."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spo_core import LossConfig, policy_loss


def one_token(log_ratio: float, adv: float, **kwargs: object) -> float:
    logp = torch.tensor([[log_ratio]])
    out = policy_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kwargs)  # type: ignore[arg-type]
    return out.loss.item()


@pytest.mark.parametrize(
    ("ratio", "adv", "expected"),
    [
        (1.5, 1.0, -1.28),  # A > 0, r above 1 + ε_high = 1.28: clipped (clip-higher)
        (1.2, 1.0, -1.2),  # inside the band
        (0.5, 1.0, -0.5),  # A > 0, r below 1 − ε_low: the pessimistic unclipped term
        (0.5, -1.0, 0.8),  # A < 0, r below 0.8: clipped at 1 − ε_low
        (1.1, -1.0, 1.1),  # A < 0 inside the band
        (5.0, -1.0, 5.0),  # A < 0, r large but below c = 10: unclipped
        (20.0, -1.0, 10.0),  # dual-clip: −A·c
        (20.0, -0.5, 5.0),  # dual-clip scales with |A|
        (20.0, 1.0, -1.28),  # no dual-clip for A > 0
    ],
)
def test_clip_branches_by_hand(ratio: float, adv: float, expected: float) -> None:
    assert one_token(math.log(ratio), adv) == pytest.approx(expected, rel=1e-6)


def test_log_ratio_is_clamped_at_20() -> None:
    logp = torch.tensor([[60.0, -60.0]], requires_grad=True)
    out = policy_loss(logp, torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2))
    # token 0: r = e^20 → dual clip 10; token 1: r = e^−20 → clip at 0.8
    assert out.loss.item() == pytest.approx((10.0 + 0.8) / 2)
    out.loss.backward()
    assert torch.isfinite(logp.grad).all()
    assert out.metrics["approx_kl"] == pytest.approx(0.0)  # (−20 + 20) / 2
    assert out.metrics["dual_clip_frac"] == 0.5


def test_token_mean_over_the_mask() -> None:
    logp = torch.log(torch.tensor([[1.0, 1.1, 9.0], [1.2, 9.0, 9.0]]))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = policy_loss(logp, torch.zeros(2, 3), torch.tensor([1.0, -2.0]), mask)
    # three tokens: −1, −1.1, and 2·1.2 = 2.4; masked tokens (ratio 9) do not count
    assert out.loss.item() == pytest.approx((-1.0 - 1.1 + 2.4) / 3)


def test_gradient_flows_only_through_unclipped_tokens() -> None:
    logp = torch.log(torch.tensor([[1.1, 1.5]])).requires_grad_()
    out = policy_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    out.loss.backward()
    # d/dlogp of −A·r/2 is −A·r/2 for the unclipped token; 0 for the clipped one
    assert logp.grad[0].tolist() == pytest.approx([-1.1 / 2, 0.0])
    assert out.metrics["clip_frac"] == 0.5


def test_carried_over_episodes_get_the_truncated_importance_weight() -> None:
    logp = torch.zeros(3, 1)
    old = torch.zeros(3, 1)
    behaviour = torch.tensor([[-math.log(1.5)], [-math.log(3.0)], [-math.log(3.0)]])
    carried = torch.tensor([True, True, False])
    out = policy_loss(
        logp, old, torch.ones(3), torch.ones(3, 1), behaviour_logp=behaviour, carried=carried
    )
    # weights: 1.5, min(3, 2) = 2, and 1 for the on-policy episode; per-token loss −1 each
    assert out.loss.item() == pytest.approx(-(1.5 + 2.0 + 1.0) / 3)
    assert out.metrics["is_weight_mean"] == pytest.approx(1.75)
    assert out.metrics["is_truncated_frac"] == pytest.approx(0.5)
    assert out.metrics["carried_token_frac"] == pytest.approx(2 / 3)
    assert out.metrics["behaviour_mismatch"] == pytest.approx((math.log(1.5) + 2 * math.log(3)) / 3)


def test_behaviour_logp_alone_only_reports_the_mismatch() -> None:
    logp, old = torch.zeros(1, 2), torch.zeros(1, 2)
    plain = policy_loss(logp, old, torch.ones(1), torch.ones(1, 2))
    logged = policy_loss(
        logp, old, torch.ones(1), torch.ones(1, 2), behaviour_logp=torch.full((1, 2), -0.3)
    )
    assert logged.loss.item() == plain.loss.item()
    assert logged.metrics["behaviour_mismatch"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="behaviour"):
        policy_loss(logp, old, torch.ones(1), torch.ones(1, 2), carried=torch.tensor([True]))


Grid = list[list[float]]


def reference_loss(
    logp: Grid,
    old: Grid,
    adv: Grid,
    mask: Grid,
    behaviour: Grid,
    carried: list[bool],
    c: LossConfig,
) -> float:
    """Token by token, in float64 Python arithmetic, straight from SPO_SPEC §2 step 5."""
    total, count = 0.0, 0
    for i in range(len(logp)):
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            a = float(adv[i][t])
            lr = min(max(float(logp[i][t]) - float(old[i][t]), -20.0), 20.0)
            r = math.exp(lr)
            loss = max(-a * r, -a * min(max(r, 1 - c.clip_low), 1 + c.clip_high))
            if a < 0:
                loss = min(loss, -a * c.dual_clip)
            if carried[i]:
                gap = min(max(float(old[i][t]) - float(behaviour[i][t]), -20.0), 20.0)
                loss *= min(math.exp(gap), c.is_cap)
            total += loss
            count += 1
    return total / max(count, 1)


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_reference_on_random_tensors(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    b, t = 6, 17
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 5
    logp = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.6
    logp[0, :3] = old[0, :3] + torch.tensor([30.0, -30.0, 3.0], dtype=torch.float64)  # clamp, dual
    behaviour = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.8
    adv = torch.randn(b, generator=g, dtype=torch.float64)[:, None].expand(b, t).clone()
    adv[1] = torch.randn(t, generator=g, dtype=torch.float64)  # per-token advantages too
    mask = (torch.rand(b, t, generator=g) > 0.3).to(torch.float64)
    mask[0, :3] = 1.0
    carried = torch.rand(b, generator=g) > 0.5
    config = LossConfig()
    out = policy_loss(logp, old, adv, mask, config, behaviour, carried)
    expected = reference_loss(
        logp.tolist(),
        old.tolist(),
        adv.tolist(),
        mask.tolist(),
        behaviour.tolist(),
        carried.tolist(),
        config,
    )
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    out32 = policy_loss(
        logp.float(), old.float(), adv.float(), mask.float(), config, behaviour.float(), carried
    )
    assert out32.loss.item() == pytest.approx(expected, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8), st.floats(-50.0, 50.0))
def test_loss_and_gradient_are_invariant_to_padding(seed: int, pad: int, junk: float) -> None:
    g = torch.Generator().manual_seed(seed)
    b, t = 3, 5
    old = -torch.rand(b, t, generator=g) * 3
    logp = (old + torch.randn(b, t, generator=g)).requires_grad_()
    adv = torch.randn(b, generator=g)
    mask = (torch.rand(b, t, generator=g) > 0.2).float()
    behaviour = old + torch.randn(b, t, generator=g) * 0.5
    carried = torch.tensor([True, False, True])
    base = policy_loss(logp, old, adv, mask, behaviour_logp=behaviour, carried=carried)
    base.loss.backward()

    def padded(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.cat([x.detach(), torch.full((b, pad), value)], dim=1)

    logp_p = padded(logp, junk).requires_grad_()
    out = policy_loss(
        logp_p,
        padded(old, -junk),
        adv,
        padded(mask, 0.0),
        behaviour_logp=padded(behaviour, junk),
        carried=carried,
    )
    out.loss.backward()
    assert out.loss.item() == pytest.approx(base.loss.item(), abs=1e-6)
    assert torch.allclose(logp_p.grad[:, :t], logp.grad, atol=1e-7)
    assert float(logp_p.grad[:, t:].abs().sum()) == 0.0
    assert out.metrics == pytest.approx(base.metrics, abs=1e-6)


def test_empty_mask_gives_zero_loss() -> None:
    out = policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3))
    assert out.loss.item() == 0.0


def test_carried_flags_per_token_weight_only_the_old_tokens() -> None:
    # A weight update mid-episode: the first token came from the old policy, the second not.
    behaviour = torch.tensor([[-math.log(1.5), -math.log(3.0)]])
    flags = torch.tensor([[True, False]])
    out = policy_loss(
        torch.zeros(1, 2),
        torch.zeros(1, 2),
        torch.ones(1),
        torch.ones(1, 2),
        behaviour_logp=behaviour,
        carried=flags,
    )
    assert out.loss.item() == pytest.approx(-(1.5 + 1.0) / 2)
    assert out.metrics["carried_token_frac"] == pytest.approx(0.5)


def test_num_tokens_sets_the_denominator_so_micro_batches_add_up() -> None:
    gen = torch.Generator().manual_seed(3)
    logp = torch.randn(6, 5, generator=gen)
    old = logp + 0.2 * torch.randn(6, 5, generator=gen)
    adv = torch.randn(6, generator=gen)
    mask = (torch.rand(6, 5, generator=gen) > 0.3).float()
    whole = policy_loss(logp, old, adv, mask).loss
    total = float(mask.sum())
    parts = sum(
        policy_loss(logp[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2],
                    num_tokens=total).loss
        for i in range(0, 6, 2)
    )  # fmt: skip
    assert float(parts) == pytest.approx(float(whole), abs=1e-6)
