"""Loss aggregation modes, log-prob granularity and the combined `compute_loss`."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.config import AlgorithmConfig
from algorithms.granularity import align_to, reduce_logprobs
from algorithms.masked import aggregate_loss, aggregation_count, masked_whiten
from algorithms.objective import LossInputs, compute_loss, loss_denominators

D = torch.float64


def test_aggregation_modes_hand_computed():
    # Two responses of 3 and 1 valid tokens: losses [1, 2, 3] and [4] (the zeros are padding).
    # token-mean = (1+2+3+4) / 4 = 2.5; seq-mean-token-sum = (6 + 4) / 2 = 5; seq-mean-token-mean = (2 + 4) / 2 = 3
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert aggregate_loss(loss, mask, "token-mean").item() == pytest.approx(2.5)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx(5.0)
    assert aggregate_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx(3.0)
    # A response with no valid token is left out of the sequence means (not counted as a 0).
    loss3 = torch.cat([loss, torch.tensor([[7.0, 7.0, 7.0]])])
    mask3 = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)])
    assert aggregate_loss(loss3, mask3, "seq-mean-token-mean").item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(loss, mask, "token-sum")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=5), st.integers(0, 2**31 - 1))
def test_token_mean_and_sequence_mean_on_ragged_lengths(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    loss = torch.randn(len(lengths), width, generator=g, dtype=D)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    tok = aggregate_loss(loss, mask, "token-mean")
    seq = aggregate_loss(loss, mask, "seq-mean-token-mean")
    seq_sum = aggregate_loss(loss, mask, "seq-mean-token-sum")
    means = torch.stack([loss[i, :n].mean() for i, n in enumerate(lengths)])
    sums = torch.stack([loss[i, :n].sum() for i, n in enumerate(lengths)])
    lens = torch.tensor(lengths, dtype=D)
    # token-mean weighs each sequence by its length; seq-mean-token-mean weighs all sequences equally.
    torch.testing.assert_close(tok, (means * lens).sum() / lens.sum())
    torch.testing.assert_close(seq, means.mean())
    torch.testing.assert_close(seq_sum, sums.mean())
    if len(set(lengths)) == 1:
        torch.testing.assert_close(tok, seq)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(2, 8),
    st.integers(1, 4),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]),
)
def test_micro_batches_with_shared_denominator_add_up_to_the_batch(batch, width, seed, mode):
    g = torch.Generator().manual_seed(seed)
    loss = torch.randn(batch, width, generator=g, dtype=D)
    mask = torch.rand(batch, width, generator=g) < 0.7
    split = batch // 2
    parts = [(loss[:split], mask[:split]), (loss[split:], mask[split:])]
    total = sum(aggregation_count(x, m, mode) for x, m in parts)
    summed = sum(aggregate_loss(x, m, mode, denominator=total) for x, m in parts)
    torch.testing.assert_close(summed, aggregate_loss(loss, mask, mode))


def test_reduce_logprobs_hand_computed():
    # One sample, C=2 steps of A=2 dims: [[1, 2], [3, 4]]; the env finished after step 0 (step 1 masked).
    lp = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    step_mask = torch.tensor([[True, False]])
    token, tmask = reduce_logprobs(lp, step_mask, "token")
    torch.testing.assert_close(token, torch.tensor([[[1.0, 2.0], [0.0, 0.0]]]))
    assert tmask.tolist() == [[[True, True], [False, False]]]
    action, amask = reduce_logprobs(lp, step_mask, "action")  # sum over A: 1+2 = 3; step 1 dropped
    torch.testing.assert_close(action, torch.tensor([[3.0, 0.0]]))
    assert amask.tolist() == [[True, False]]
    chunk, cmask = reduce_logprobs(lp, step_mask, "chunk")  # sum over valid steps: 3
    torch.testing.assert_close(chunk, torch.tensor([3.0]))
    assert cmask.tolist() == [True]
    # LLM log-probs [B, L]: token and action leave them, chunk sums the response: 1 + 2 = 3 (3 is padding).
    llm, llm_mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[True, True, False]])
    assert reduce_logprobs(llm, llm_mask, "action")[0].tolist() == [[1.0, 2.0, 0.0]]
    assert reduce_logprobs(llm, llm_mask, "chunk")[0].tolist() == [3.0]


def test_align_advantages():
    like = torch.zeros(2, 3, 4)
    adv = torch.tensor([1.0, 2.0])
    assert align_to(adv, like, "advantages")[1, 2, 3] == 2.0
    with pytest.raises(ValueError, match="granularity token or action"):
        align_to(torch.zeros(2, 3), torch.zeros(2), "advantages")


def embodied_batch(seed, batch=6, chunk=3, dims=2, with_values=True):
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(batch, chunk, dims, generator=g, dtype=D) * 0.3 - 1.0).requires_grad_()
    step_mask = torch.rand(batch, chunk, generator=g) < 0.8
    step_mask[:, 0] = True
    values = torch.randn(batch, generator=g, dtype=D).requires_grad_() if with_values else None
    return LossInputs(
        logprobs=lp,
        old_logprobs=lp.detach() + 0.2 * torch.randn(batch, chunk, dims, generator=g, dtype=D),
        advantages=torch.randn(batch, generator=g, dtype=D),
        mask=step_mask,
        entropy=torch.rand(batch, chunk, dims, generator=g, dtype=D).requires_grad_(),
        ref_logprobs=lp.detach() + 0.1 * torch.randn(batch, chunk, dims, generator=g, dtype=D),
        values=values,
        old_values=None if values is None else values.detach() + 0.1,
        returns=None if values is None else torch.randn(batch, generator=g, dtype=D),
    )


def test_chunk_granularity_ratio_is_the_product_of_token_ratios():
    inputs = embodied_batch(0)
    _, m_chunk = compute_loss(inputs, AlgorithmConfig(logprob_granularity="chunk", clip_ratio_high=100.0))
    diff = torch.where(
        inputs.mask[..., None], inputs.logprobs.detach() - inputs.old_logprobs, torch.zeros(())
    )
    product = diff.sum(dim=(1, 2)).exp()
    assert m_chunk["ratio_mean"].item() == pytest.approx(product.mean().item())


def test_compute_loss_sums_its_terms():
    # total = pg + value_coef * value_loss - entropy_coef * entropy + kl_coef * kl, each from its own metric
    config = AlgorithmConfig(
        value_coef=0.7, entropy_coef=0.01, kl_coef=0.05, logprob_granularity="action", value_loss_type="huber"
    )
    loss, m = compute_loss(embodied_batch(1), config)
    expected = m["pg_loss"] + 0.7 * m["value_loss"] - 0.01 * m["entropy"] + 0.05 * m["kl_loss"]
    assert loss.item() == pytest.approx(expected.item())
    assert m["loss"].item() == pytest.approx(loss.item())
    for key in (
        "approx_kl",
        "clip_fraction_low",
        "clip_fraction_high",
        "dual_clip_fraction",
        "ratio_mean",
        "ratio_max",
        "entropy",
        "value_loss",
        "explained_variance",
        "kl_loss",
    ):
        assert key in m and m[key].ndim == 0 and not m[key].requires_grad


def test_compute_loss_micro_batches_add_up():
    config = AlgorithmConfig(entropy_coef=0.01, kl_coef=0.1, loss_agg_mode="seq-mean-token-mean")
    full = embodied_batch(2, batch=8)
    whole, _ = compute_loss(full, config)

    def part(sl):
        return LossInputs(
            full.logprobs[sl],
            full.old_logprobs[sl],
            full.advantages[sl],
            full.mask[sl],
            full.entropy[sl],
            full.ref_logprobs[sl],
            full.values[sl],
            full.old_values[sl],
            full.returns[sl],
        )

    parts = [part(slice(0, 3)), part(slice(3, 8))]
    total = loss_denominators(parts[0], config) + loss_denominators(parts[1], config)
    summed = sum(compute_loss(p, config, total)[0] for p in parts)
    assert summed.item() == pytest.approx(whole.item())


def test_compute_loss_errors():
    with pytest.raises(ValueError, match="ref_logprobs"):
        inputs = embodied_batch(3)
        inputs.ref_logprobs = None
        compute_loss(inputs, AlgorithmConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="returns"):
        LossInputs(torch.zeros(2), torch.zeros(2), torch.zeros(2), values=torch.zeros(2))
    with pytest.raises(ValueError, match="granularity token or action"):
        inputs = embodied_batch(4)
        inputs.advantages = torch.zeros(6, 3, dtype=D)  # per-step advantages cannot drive one chunk ratio
        compute_loss(inputs, AlgorithmConfig(logprob_granularity="chunk"))


def test_llm_batch_token_level():
    # Two responses of lengths 2 and 1, on-policy (ratio 1), advantages +1 and -2, token-mean:
    # pg = (-1 - 1 + 2) / 3 = 0; seq-mean-token-mean: ((-1 - 1)/2 + 2) / 2 = 0.5.
    lp = torch.zeros(2, 3, dtype=D, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    inputs = LossInputs(lp, torch.zeros(2, 3, dtype=D), torch.tensor([1.0, -2.0], dtype=D), mask)
    assert compute_loss(inputs, AlgorithmConfig())[0].item() == pytest.approx(0.0)
    assert compute_loss(inputs, AlgorithmConfig(loss_agg_mode="seq-mean-token-mean"))[
        0
    ].item() == pytest.approx(0.5)


def test_masked_whiten_ignores_invalid():
    x = torch.tensor([1.0, 3.0, 1000.0], dtype=D)
    out = masked_whiten(x, torch.tensor([True, True, False]))
    torch.testing.assert_close(out, torch.tensor([-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0], dtype=D))
