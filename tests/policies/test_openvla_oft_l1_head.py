"""OpenVLA-OFT's continuous action head (`policy.action_head: l1`): OFT's released `action_head--<step>_checkpoint.pt`
loads (the parameter names and shapes of OFT's `L1RegressionActionHead`, DDP's `module.` prefix), eval actions are
the head's output, deterministic; the Gaussian's log-probs agree between rollout and training and PPO's first
ratio is 1; the supervised loss is OFT's L1 regression."""

from __future__ import annotations

import pytest
import torch
from openvla_common import env_spec, observations, one_thread, tiny_policy  # noqa: F401

from algorithms.config import AlgorithmConfig
from embodied.config import ActorConfig
from embodied.training import Collectives, build_optimizer, minibatch_step
from embodied.trajectory import TrainBatch

pytest.importorskip("transformers")

A, C = 3, 2  # env_spec's action dims, tiny_policy's chunk


def l1_policy(seed: int = 0, **overrides):
    return tiny_policy("openvla_oft", seed=seed, action_head="l1", **overrides)


def published_names_and_shapes(action_dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """OFT's `L1RegressionActionHead(input_dim=H, hidden_dim=H, action_dim=A)` state dict, saved from DDP: an
    MLPResNet of 2 blocks on the A*H hidden states of each chunk step."""
    names = {
        "module.model.layer_norm1.weight": (action_dim * hidden,),
        "module.model.layer_norm1.bias": (action_dim * hidden,),
        "module.model.fc1.weight": (hidden, action_dim * hidden),
        "module.model.fc1.bias": (hidden,),
        "module.model.layer_norm2.weight": (hidden,),
        "module.model.layer_norm2.bias": (hidden,),
        "module.model.fc2.weight": (action_dim, hidden),
        "module.model.fc2.bias": (action_dim,),
    }
    for block in range(2):
        prefix = f"module.model.mlp_resnet_blocks.{block}.ffn"
        names |= {
            f"{prefix}.0.weight": (hidden,),  # LayerNorm
            f"{prefix}.0.bias": (hidden,),
            f"{prefix}.1.weight": (hidden, hidden),  # Linear (then ReLU)
            f"{prefix}.1.bias": (hidden,),
        }
    return names


def released_layout(directory, hidden: int, step: int = 50000, seed: int = 0) -> dict[str, torch.Tensor]:
    """A released OFT folder: the network's weights (safetensors, no action head) and OFT's action head file, a
    state dict with the published names and shapes and random values. Returns the file's state dict."""
    from safetensors.torch import load_file

    tiny_policy("openvla_oft", seed=seed).save_pretrained(directory)  # a discrete checkpoint: no head inside
    assert not any(k.startswith("action_head.") for k in load_file(str(directory / "model.safetensors")))
    g = torch.Generator().manual_seed(seed)
    state = {
        name: torch.randn(shape, generator=g) * 0.1
        for name, shape in published_names_and_shapes(A, hidden).items()
    }
    torch.save(state, directory / f"action_head--{step}_checkpoint.pt")
    return state


def test_released_action_head_loads_with_the_published_names_and_shapes(tmp_path):
    hidden = l1_policy().model.hidden_size
    state = released_layout(tmp_path, hidden)
    policy = l1_policy(seed=3, pretrained=str(tmp_path))
    own = policy.action_head.state_dict()
    assert set(own) == {k.removeprefix("module.") for k in state}  # every published parameter, nothing else
    for name, tensor in state.items():
        assert torch.equal(own[name.removeprefix("module.")], tensor), name
    # the highest step unless one is named; a missing step and a missing file are errors that say what to do
    zeros = {k: torch.zeros_like(v) for k, v in state.items()}
    torch.save(zeros, tmp_path / "action_head--100_checkpoint.pt")
    assert torch.equal(
        l1_policy(pretrained=str(tmp_path)).action_head.model.fc2.bias, state["module.model.fc2.bias"]
    )
    assert not l1_policy(pretrained=str(tmp_path), action_head_step=100).action_head.model.fc2.bias.any()
    with pytest.raises(
        FileNotFoundError, match=r"no action_head--7_checkpoint\.pt .* policy\.action_head_step"
    ):
        l1_policy(pretrained=str(tmp_path), action_head_step=7)
    for path in tmp_path.glob("action_head--*.pt"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="has no action head"):
        l1_policy(pretrained=str(tmp_path))


def test_a_fine_tuned_release_unnormalises_with_its_dataset_statistics(tmp_path):
    """OFT's evaluation reads the un-normalisation statistics from dataset_statistics.json beside the weights."""
    import json

    released_layout(tmp_path, l1_policy().model.hidden_size)
    stats = {"q01": [-0.5, 0.0, 1.0], "q99": [0.5, 2.0, 3.0], "mask": [True, True, False]}
    (tmp_path / "dataset_statistics.json").write_text(
        json.dumps({"libero_spatial_no_noops": {"action": stats}})
    )
    policy = l1_policy(pretrained=str(tmp_path), unnorm_key="libero_spatial_no_noops")
    normalized = torch.tensor([[-1.0, 0.0, 0.25]])
    torch.testing.assert_close(
        policy.processor.bins.unnormalize(normalized).float(), torch.tensor([[-0.5, 1.0, 0.25]])
    )


def test_a_file_of_another_shape_names_the_parameter(tmp_path):
    hidden = l1_policy().model.hidden_size
    state = released_layout(tmp_path, hidden)
    state["module.model.fc1.weight"] = torch.zeros(hidden, 7 * hidden)  # OFT's LIBERO action dims: 7
    torch.save(state, tmp_path / "action_head--50000_checkpoint.pt")
    message = rf"'action_head\.model\.fc1\.weight' has shape \({hidden}, {7 * hidden}\) in the file but \({hidden}, {A * hidden}\)"
    with pytest.raises(ValueError, match=message):
        l1_policy(pretrained=str(tmp_path))


def test_eval_actions_are_the_head_output_on_the_window_regrouped_per_chunk_step():
    policy = l1_policy().eval()
    obs = observations(3)
    first, second = policy.predict(obs, "eval"), policy.predict(obs, "eval")
    assert torch.equal(first.actions, second.actions) and first.actions.shape == (3, C, A)
    inputs = policy.processor(obs, policy.device, torch.float32)
    with torch.no_grad():
        window = policy._head_window(inputs)  # [B, C*A, H]: chunk step c reads positions c*A .. c*A + A - 1
        per_step = torch.stack(
            [policy.action_head.model(window[:, c * A : (c + 1) * A].flatten(1)) for c in range(C)], 1
        )
    expected = policy.processor.bins.unnormalize(per_step).float()
    low, high = torch.tensor(policy.env_spec.action_low), torch.tensor(policy.env_spec.action_high)
    torch.testing.assert_close(first.actions, torch.maximum(torch.minimum(expected, high), low))
    torch.testing.assert_close(first.forward_inputs["actions"], per_step)


def test_the_stop_token_after_the_action_slots_is_attended_to():
    """As OFT's predict_action, `</s>` follows the empty slots; with bidirectional attention the window sees it."""
    policy = l1_policy().eval()
    obs = observations(2)
    before = policy.predict(obs, "eval").forward_inputs["actions"]
    with torch.no_grad():
        policy.model.language_model.get_input_embeddings().weight[
            policy.model.language_model.config.eos_token_id
        ] += 1.0
    assert not torch.allclose(policy.predict(obs, "eval").forward_inputs["actions"], before)


def test_rollout_and_training_log_probs_agree_and_the_first_ratio_is_one():
    policy = l1_policy(seed=1)
    obs = observations(4)
    torch.manual_seed(0)
    rollout = policy.predict(obs, "train")
    assert rollout.logprobs.shape == (4, C, A) and rollout.values.shape == (4,)
    assert not torch.equal(
        rollout.forward_inputs["actions"], policy.predict(obs, "eval").forward_inputs["actions"]
    )
    evaluated = policy.evaluate(rollout.forward_inputs)
    torch.testing.assert_close(evaluated.logprobs, rollout.logprobs, rtol=0, atol=1e-6)
    torch.testing.assert_close(evaluated.values, rollout.values, rtol=0, atol=1e-6)
    sigma = policy.action_std.log_std.exp()
    torch.testing.assert_close(evaluated.entropy[0], 0.5 * torch.log(2 * torch.pi * torch.e * sigma**2))

    algorithm = AlgorithmConfig(logprob_granularity="action", value_loss_type="plain")
    actor = ActorConfig(update_epochs=1, num_minibatches=1, target_kl=None)
    batch = TrainBatch(
        forward_inputs=rollout.forward_inputs,
        old_logprobs=rollout.logprobs,
        advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]),
        mask=torch.ones(4, C, dtype=torch.bool),
        returns=torch.zeros(4),
        old_values=rollout.values,
    )
    head_before = policy.action_head.model.fc2.weight.detach().clone()
    std_before = policy.action_std.log_std.detach().clone()
    metrics, applied = minibatch_step(
        policy, build_optimizer(policy, actor), batch, actor, algorithm, Collectives()
    )
    assert applied and abs(metrics["ratio_mean"] - 1) < 1e-6 and abs(metrics["approx_kl"]) < 1e-6
    assert not torch.equal(policy.action_head.model.fc2.weight, head_before)  # the head trains
    assert not torch.equal(policy.action_std.log_std, std_before)  # and so does the Gaussian's std


def test_supervised_loss_is_the_l1_distance_of_normalised_actions():
    policy = l1_policy()
    obs = observations(2)
    with torch.no_grad():
        head = policy.predict(obs, "eval").forward_inputs["actions"]  # normalised, [2, C, A]
    demo = policy.processor.bins.unnormalize(head.clamp(-0.9, 0.9) + 0.1).float()  # 0.1 off on every dim
    batch = {**obs, "actions": demo, "action_mask": torch.tensor([[True, True], [True, False]])}
    loss, _ = policy.supervised_loss(batch)
    expected = (head.clamp(-0.9, 0.9) + 0.1 - head).abs()[torch.tensor([[True, True], [True, False]])].mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    loss.backward()
    assert policy.action_head.model.fc1.weight.grad.abs().sum() > 0 and policy.action_std.log_std.grad is None


def test_lora_trains_the_action_head_and_its_std_fully():
    policy = l1_policy(lora={"rank": 4})
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert {n for n, _ in policy.action_head.named_parameters(prefix="action_head")} <= trainable
    assert "action_std.log_std" in trainable
    assert not policy.model.language_model.lm_head.weight.requires_grad


def test_own_checkpoints_keep_the_head_and_std_inside(tmp_path):
    from safetensors.torch import load_file

    policy = l1_policy()
    with torch.no_grad():
        policy.action_std.log_std.fill_(-1.0)
    policy.save_pretrained(tmp_path)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert "action_head.model.fc1.weight" in names and "action_std.log_std" in names
    again = l1_policy(seed=9, pretrained=str(tmp_path))
    obs = observations(2)
    assert torch.equal(again.predict(obs, "eval").actions, policy.predict(obs, "eval").actions)
    assert torch.equal(again.action_std.log_std, policy.action_std.log_std)
