"""PPO / PG actor losses, value losses and KL estimators: hand-computed cases and gradient properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.kl import kl_penalty
from algorithms.losses import pg_actor_loss, ppo_actor_loss, value_loss

D = torch.float64


def logprobs_for(ratios):
    """Log-probs whose ratio to old log-probs of 0 are `ratios`, as a leaf tensor with grad."""
    return torch.tensor([math.log(r) for r in ratios], dtype=D, requires_grad=True)


def test_ppo_hand_computed_with_clip_higher_and_dual_clip():
    # clip_ratio_low 0.2 -> lower bound 0.8, clip_ratio_high 0.3 -> upper bound 1.3, dual clip c = 3.
    # per entry l = max(-A r, -A clip(r)); for A < 0 additionally min(l, -A c):
    #   A=+1 r=0.5: max(-0.5, -0.8) = -0.5       A=+1 r=1.0: -1.0
    #   A=+1 r=1.5: max(-1.5, -1.3) = -1.3 (high clip)   A=+1 r=2.0: -1.3 (high clip)
    #   A=-1 r=0.5: max(0.5, 0.8) = 0.8 (low clip)       A=-1 r=1.5: max(1.5, 1.3) = 1.5
    #   A=-1 r=4.0: max(4.0, 1.3) = 4.0 -> min(4.0, 3.0) = 3.0 (dual clip)
    # token-mean: (-0.5 - 1 - 1.3 - 1.3 + 0.8 + 1.5 + 3.0) / 7 = 1.2 / 7
    ratios = [0.5, 1.0, 1.5, 2.0, 0.5, 1.5, 4.0]
    adv = torch.tensor([1, 1, 1, 1, -1, -1, -1], dtype=D)
    lp = logprobs_for(ratios)
    loss, m = ppo_actor_loss(
        lp, torch.zeros(7, dtype=D), adv, None, clip_ratio_low=0.2, clip_ratio_high=0.3, clip_ratio_c=3.0
    )
    assert loss.item() == pytest.approx(1.2 / 7)
    assert m["clip_fraction_high"].item() == pytest.approx(2 / 7)  # r = 1.5, 2.0 with A > 0
    assert m["clip_fraction_low"].item() == pytest.approx(1 / 7)  # r = 0.5 with A < 0
    assert m["dual_clip_fraction"].item() == pytest.approx(1 / 7)  # r = 4 with A < 0
    assert m["ratio_mean"].item() == pytest.approx(sum(ratios) / 7)
    assert m["ratio_max"].item() == pytest.approx(4.0)
    # approx_kl = mean((r - 1) - log r)
    assert m["approx_kl"].item() == pytest.approx(sum((r - 1) - math.log(r) for r in ratios) / 7)
    # Without dual clip the last entry is 4.0: (-1.8 + 4.0 ... ) -> (1.2 - 3.0 + 4.0) / 7 = 2.2 / 7
    loss, m = ppo_actor_loss(lp, torch.zeros(7, dtype=D), adv, None, clip_ratio_low=0.2, clip_ratio_high=0.3)
    assert loss.item() == pytest.approx(2.2 / 7)
    assert m["dual_clip_fraction"].item() == 0
    # Gradients d l / d log pi = -A r where unclipped, 0 where clipped: entries 0, 1, 5 only (over 7).
    loss.backward()
    expected = [-0.5, -1.0, 0.0, 0.0, 0.0, 1.5, 4.0]
    torch.testing.assert_close(lp.grad, torch.tensor(expected, dtype=D) / 7)


def test_pg_loss_hand_computed():
    # l = -A r: ratios 0.5 and 2 with A = 2 and -1 -> (-1 + 2) / 2 = 0.5; gradient -A r / 2 = [-0.5, 1].
    lp = logprobs_for([0.5, 2.0])
    loss, m = pg_actor_loss(lp, torch.zeros(2, dtype=D), torch.tensor([2.0, -1.0], dtype=D), None)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([-0.5, 1.0], dtype=D))
    assert m["clip_fraction_high"].item() == 0


cases = st.tuples(
    st.integers(1, 30),
    st.integers(0, 2**31 - 1),
    st.floats(0.05, 0.5),
    st.floats(0.05, 0.5),
    st.one_of(st.none(), st.floats(1.5, 5.0)),
)


@settings(max_examples=60, deadline=None)
@given(cases)
def test_ppo_gradient_is_zero_where_clipped_on_the_side_the_advantage_pushes(case):
    n, seed, low, high, dual = case
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(n, generator=g, dtype=D) * 0.7).requires_grad_()
    old = torch.zeros(n, dtype=D)
    adv = torch.randn(n, generator=g, dtype=D)
    loss, _ = ppo_actor_loss(lp, old, adv, None, clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=dual)
    loss.backward()
    r = lp.detach().exp()
    eps = 1e-9
    clipped_high = (adv > 0) & (r > 1 + high + eps)
    clipped_low = (adv < 0) & (r < 1 - low - eps)
    dual_on = (adv < 0) & (r > dual + eps) if dual is not None else torch.zeros(n, dtype=torch.bool)
    zero = clipped_high | clipped_low | dual_on
    assert (lp.grad[zero] == 0).all()
    # Elsewhere (away from the boundaries) the gradient is the unclipped one, -A r / n.
    inside = ~zero & ((r - (1 + high)).abs() > 1e-6) & ((r - (1 - low)).abs() > 1e-6) & (adv != 0)
    if dual is not None:
        inside &= (r - dual).abs() > 1e-6
    torch.testing.assert_close(lp.grad[inside], (-adv * r / n)[inside])


def test_masked_entries_are_removed_exactly_even_with_nan():
    # Entries with mask False carry NaN: the loss and gradients equal those of the valid subset.
    lp = torch.tensor([0.1, float("nan"), -0.2, float("nan")], dtype=D, requires_grad=True)
    old = torch.tensor([0.0, float("nan"), 0.0, 1.0], dtype=D)
    adv = torch.tensor([1.0, 5.0, -1.0, float("nan")], dtype=D)
    mask = torch.tensor([True, False, True, False])
    loss, m = ppo_actor_loss(lp, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0)
    loss.backward()
    sub = torch.tensor([0.1, -0.2], dtype=D, requires_grad=True)
    ref, ref_m = ppo_actor_loss(
        sub,
        torch.zeros(2, dtype=D),
        torch.tensor([1.0, -1.0], dtype=D),
        None,
        clip_ratio_low=0.2,
        clip_ratio_high=0.2,
        clip_ratio_c=3.0,
    )
    ref.backward()
    assert loss.item() == pytest.approx(ref.item())
    torch.testing.assert_close(lp.grad[mask], sub.grad)
    assert (lp.grad[~mask] == 0).all()
    for key in ("approx_kl", "ratio_mean", "ratio_max"):
        assert m[key].item() == pytest.approx(ref_m[key].item())


def test_value_loss_hand_computed():
    v = torch.tensor([1.0, 2.0], dtype=D, requires_grad=True)
    ret = torch.tensor([0.0, 4.0], dtype=D)
    # plain: 0.5 * (1^2 + 2^2) / 2 = 1.25
    loss, m = value_loss(v, ret, None, loss_type="plain")
    assert loss.item() == pytest.approx(1.25)
    # huber, delta 1: |e| = 1 -> 0.5; |e| = 2 -> 1 * (2 - 0.5) = 1.5; mean 1.0
    loss, _ = value_loss(v, ret, None, loss_type="huber", huber_delta=1.0)
    assert loss.item() == pytest.approx(1.0)
    # clipped, old values 1.5 and 2.5, clip 0.2: V_clip = 1.3, 2.3; squared errors unclipped 1, 4,
    # clipped 1.69, 2.89 -> max 1.69, 4 -> 0.5 * 5.69 / 2 = 1.4225. Entry 0 takes the clipped branch, whose
    # value does not move with V: gradient 0 there; entry 1: (V - R) / 2 = -1.
    loss, m = value_loss(
        v, ret, None, old_values=torch.tensor([1.5, 2.5], dtype=D), loss_type="clipped", value_clip=0.2
    )
    assert loss.item() == pytest.approx(1.4225)
    assert m["value_clip_fraction"].item() == pytest.approx(0.5)
    loss.backward()
    torch.testing.assert_close(v.grad, torch.tensor([0.0, -1.0], dtype=D))
    with pytest.raises(ValueError, match="old_values"):
        value_loss(v, ret, None, loss_type="clipped")


def test_explained_variance_and_value_mask():
    ret = torch.tensor([1.0, 2.0, 3.0, 4.0, 99.0], dtype=D)
    mask = torch.tensor([True, True, True, True, False])
    _, m = value_loss(ret.clone(), ret, mask)  # perfect critic
    assert m["explained_variance"].item() == pytest.approx(1.0)
    assert m["value_loss"].item() == 0
    # A constant critic at the mean (2.5) explains nothing: Var[R - 2.5] = Var[R].
    _, m = value_loss(torch.full((5,), 2.5, dtype=D), ret, mask)
    assert m["explained_variance"].item() == pytest.approx(0.0)
    # value loss over valid entries only: 0.5 * (1.5^2 + 0.5^2 + 0.5^2 + 1.5^2) / 4 = 0.625
    assert m["value_loss"].item() == pytest.approx(0.625)


def test_kl_estimators_hand_computed():
    # log pi = 0, log pi_ref = log 0.5: log_ratio = ln 2 = 0.693147
    # k1 = 0.693147, k2 = 0.5 * ln(2)^2 = 0.240227, k3 = exp(-ln 2) - 1 + ln 2 = 0.5 - 1 + 0.693147 = 0.193147
    lp, ref = torch.zeros(1, dtype=D), torch.full((1,), math.log(0.5), dtype=D)
    ln2 = math.log(2)
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(ln2)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5 * ln2**2)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(0.5 - 1 + ln2)
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(lp, ref, "k4")


def test_kl_estimators_k1_k3_are_unbiased_and_k2_k3_nonnegative():
    # pi = [0.7, 0.2, 0.1], pi_ref = [0.4, 0.4, 0.2]; true KL(pi || ref) = sum pi log(pi / ref).
    pi, ref = torch.tensor([0.7, 0.2, 0.1], dtype=D), torch.tensor([0.4, 0.4, 0.2], dtype=D)
    true_kl = (pi * (pi / ref).log()).sum().item()
    samples = torch.multinomial(pi, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, lref = pi.log()[samples], ref.log()[samples]
    for est in ("k1", "k3"):
        assert kl_penalty(lp, lref, est).mean().item() == pytest.approx(true_kl, abs=5e-3)
    for est in ("k2", "k3"):
        assert (kl_penalty(lp, lref, est) >= 0).all()
        assert (kl_penalty(lp, lp, est) == 0).all()
