"""The flow-policy likelihood math (policies/pi0/flow_rl.py) on small cases with known answers."""

import functools
import math

import pytest
import torch

from policies.pi0.flow_rl import (
    NoiseHead,
    chain_token_entropy,
    chain_token_logprob,
    denoise_times,
    gaussian_logprob,
    noisy_step,
    sde_transition,
    stochastic_mask,
)


def test_denoise_times_accumulate_in_float32():
    times, dt = denoise_times(10)
    assert times.dtype == torch.float32 and times[0] == 1.0 and dt == pytest.approx(-0.1)
    t = torch.tensor(1.0)
    for k in range(10):
        assert times[k] == t  # bit-exact float32 accumulation, as LeRobot/openpi sample
        t = t + torch.tensor(-0.1)


def test_flow_noise_chain_density_equals_the_joint_gaussian():
    """With a linear velocity v(x) = W x + b the chain x_0 .. x_K is jointly Gaussian: z = M eps + c. Its density
    from MultivariateNormal must equal the per-token chain log-prob summed over tokens."""
    torch.manual_seed(0)
    c, a, steps = 2, 2, 3
    d = c * a
    w, b = 0.3 * torch.randn(d, d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    stds = 0.1 + torch.rand(steps, d, dtype=torch.float64)
    _, dt = denoise_times(steps)
    step = torch.eye(d, dtype=torch.float64) + dt * w  # x_{k+1} = step x_k + dt b + std_k xi_k
    size = (steps + 1) * d
    m, offset = torch.zeros(size, size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
    m[:d, :d] = torch.eye(d, dtype=torch.float64)
    for k in range(steps):
        rows, prev = slice((k + 1) * d, (k + 2) * d), slice(k * d, (k + 1) * d)
        m[rows] = step @ m[prev]
        m[rows, rows] = torch.diag(stds[k])
        offset[rows] = step @ offset[prev] + dt * b
    joint = torch.distributions.MultivariateNormal(offset, scale_tril=torch.linalg.cholesky(m @ m.T))
    z = joint.sample()
    chain = z.view(1, steps + 1, c, a)
    flat = chain.view(1, steps + 1, d)
    means = (flat[:, :-1] + dt * (flat[:, :-1] @ w.T + b)).view(1, steps, c, a)
    per_token = chain_token_logprob(chain, means, stds.view(1, steps, c, a), c, a)
    assert per_token.shape == (1, c, a)
    torch.testing.assert_close(per_token.sum(), joint.log_prob(z), rtol=1e-10, atol=1e-10)


def test_flow_noise_entropy_is_the_sum_of_gaussian_entropies():
    stds = torch.tensor([[[[0.5]], [[2.0]]]])  # [B=1, K=2, C=1, A=1]
    expected = sum(0.5 * math.log(2 * math.pi * math.e * s**2) for s in (1.0, 0.5, 2.0))
    assert chain_token_entropy(stds, 1, 1).item() == pytest.approx(expected)


def test_noise_only_on_executed_steps_and_env_dims():
    mask = stochastic_mask(chunk_size=4, action_dim=3, executed=2, env_action_dim=2)
    mean = torch.zeros(5, 4, 3)
    x = noisy_step(mean, torch.ones_like(mean), mask, torch.Generator().manual_seed(0))
    assert (x[:, :2, :2] != 0).all() and (x[:, 2:] == 0).all() and (x[:, :, 2] == 0).all()


def test_noise_head_bounds_and_start():
    head = NoiseHead(width=6, action_dim=3, std_min=0.1, std_max=0.3)
    std = head(torch.randn(2, 4, 6))
    assert torch.allclose(std, torch.full_like(std, 0.2))  # zero-initialised: the middle of the range
    torch.nn.init.normal_(head.proj.weight, std=100.0)
    std = head(torch.randn(2, 4, 6))
    assert (std >= 0.1).all() and (std <= 0.3).all()


# -- Flow-SDE: same marginals as the ODE ---------------------------------------------------------------------------
DATA_MEAN, DATA_STD = 1.5, 0.5


def gaussian_data_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact flow-matching velocity E[noise - a | x_t = x] when a ~ N(DATA_MEAN, DATA_STD^2)."""
    t = t[:, None, None]
    mean_t, var_t = (1 - t) * DATA_MEAN, t**2 + (1 - t) ** 2 * DATA_STD**2
    z = (x - mean_t) / var_t
    return t * z - (DATA_MEAN + (1 - t) * DATA_STD**2 * z)


@functools.cache
def _sample(n: int, steps: int, sde_steps: str, noise_level: float = 0.5) -> list[torch.Tensor]:
    """x_t at every grid time; `sde_steps`: none (ODE), all, or one (a random step per sample)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 1, generator=gen, dtype=torch.float64)
    times, dt = denoise_times(steps)
    times = times.double()
    chosen = torch.randint(steps, (n,), generator=gen)
    mask = torch.ones(1, 1, dtype=torch.bool)
    marginals = [x]
    for k in range(steps):
        t = times[k].expand(n)
        v = gaussian_data_velocity(x, t)
        mean, std = sde_transition(x, v, t, dt, noise_level)
        noisy = noisy_step(mean, std, mask, gen)
        stochastic = {"none": torch.zeros(n, dtype=torch.bool), "all": torch.ones(n, dtype=torch.bool)}.get(
            sde_steps, chosen == k
        )
        x = torch.where(stochastic[:, None, None], noisy, x + dt * v)
        marginals.append(x)
    return marginals


@pytest.mark.parametrize("sde_steps, rel", [("all", 0.05), ("one", 0.03)])
def test_flow_sde_has_the_marginals_of_the_ode(sde_steps, rel):
    """Sample mean and variance at several times match the ODE's and the exact p_t, with every step stochastic
    and with one random step per sample (what rollouts do). Euler-Maruyama converges slowly near t = 1, where
    g(t) is large: with all 200 steps stochastic the variance is ~2 % high (below Monte-Carlo noise at 1000
    steps), while a drift without the 1/t of the score, or with half the correction, is 10-60 % off."""
    steps, n = 200, 30_000  # below torch's intra-op grain size: one thread, fast on a busy machine
    ode, sde = _sample(n, steps, "none"), _sample(n, steps, sde_steps)
    times, _ = denoise_times(steps)
    for k in (steps // 4, steps // 2, 3 * steps // 4, steps):
        t = times[k].item() if k < steps else 0.0
        mean_t, var_t = (1 - t) * DATA_MEAN, t**2 + (1 - t) ** 2 * DATA_STD**2
        for x in (ode[k], sde[k]):
            assert x.mean().item() == pytest.approx(mean_t, abs=0.02)
            assert x.var().item() == pytest.approx(var_t, rel=rel)
        assert sde[k].mean().item() == pytest.approx(ode[k].mean().item(), abs=0.02)
        assert sde[k].var().item() == pytest.approx(ode[k].var().item(), rel=rel)
    assert not torch.allclose(ode[-1], sde[-1])  # the SDE really is stochastic


def test_sde_transition_is_finite_at_t_one_and_has_the_stated_density():
    x, v = torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    mean, std = sde_transition(x, v, torch.ones(3), -0.25, 0.5)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()
    y = mean + std * torch.randn_like(mean)
    expected = torch.distributions.Normal(mean, std).log_prob(y)
    torch.testing.assert_close(gaussian_logprob(y, mean, std), expected)
