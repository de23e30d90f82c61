"""OpenVLA-OFT's released side files: the proprio projector read from `proprio_projector--<step>_checkpoint.pt`
(OFT's torch.save of a DDP-wrapped module's state dict) when the safetensors weights lack it."""

from __future__ import annotations

import logging

import pytest
import torch
from openvla_common import observations, one_thread, tiny_policy  # noqa: F401

from policies.openvla_oft.released_files import pick_released_file, read_released_state

pytest.importorskip("transformers")

LOGGER = "policies.openvla_oft"


def _obs(n: int = 3) -> dict:
    obs = observations(n)
    obs["states"] = torch.linspace(-1, 1, n * 4).reshape(n, 4)
    return obs


def _released_layout(policy, directory, step: int = 123, ddp: bool = True) -> None:
    """Save `policy` in our layout, then move its projector out of the safetensors into OFT's side file."""
    from safetensors.torch import load_file, save_file

    policy.save_pretrained(directory)
    state = load_file(str(directory / "model.safetensors"))
    kept = {k: v for k, v in state.items() if not k.startswith("proprio_projector.")}
    assert len(kept) == len(state) - 4  # fc1/fc2 weight and bias
    save_file(kept, str(directory / "model.safetensors"))
    prefix = "module." if ddp else ""
    projector = {prefix + k: v.clone() for k, v in policy.proprio_projector.state_dict().items()}
    torch.save(projector, directory / f"proprio_projector--{step}_checkpoint.pt")


def test_released_projector_file_loads_and_round_trips_exactly(tmp_path):
    from safetensors.torch import load_file

    policy = tiny_policy("openvla_oft", use_proprio=True)
    released = tmp_path / "released"
    _released_layout(policy, released)
    loaded = tiny_policy("openvla_oft", seed=5, use_proprio=True, pretrained=str(released))
    for name, tensor in policy.proprio_projector.state_dict().items():
        assert torch.equal(loaded.proprio_projector.state_dict()[name], tensor), name
    obs = _obs()
    expected = policy.predict(obs, "eval")
    got = loaded.predict(obs, "eval")
    assert torch.equal(got.logprobs, expected.logprobs) and torch.equal(got.actions, expected.actions)

    ours = tmp_path / "ours"
    loaded.save_pretrained(ours)  # our layout: the projector inside the safetensors, no side file
    assert "proprio_projector.fc1.weight" in load_file(str(ours / "model.safetensors"))
    assert not list(ours.glob("*.pt"))
    again = tiny_policy("openvla_oft", seed=7, use_proprio=True, pretrained=str(ours))
    assert torch.equal(again.predict(obs, "eval").logprobs, expected.logprobs)


def test_highest_step_is_read_unless_the_config_names_one(tmp_path):
    policy = tiny_policy("openvla_oft", use_proprio=True)
    _released_layout(policy, tmp_path, step=123)
    zeros = {k: torch.zeros_like(v) for k, v in policy.proprio_projector.state_dict().items()}
    torch.save(zeros, tmp_path / "proprio_projector--100_checkpoint.pt")  # older, and without DDP's prefix
    highest = tiny_policy("openvla_oft", use_proprio=True, pretrained=str(tmp_path))
    assert torch.equal(highest.proprio_projector.fc1.weight, policy.proprio_projector.fc1.weight)
    named = tiny_policy("openvla_oft", use_proprio=True, proprio_projector_step=100, pretrained=str(tmp_path))
    assert not named.proprio_projector.fc1.weight.any() and not named.proprio_projector.fc2.bias.any()
    with pytest.raises(FileNotFoundError, match=r"no proprio_projector--7_checkpoint\.pt"):
        tiny_policy("openvla_oft", use_proprio=True, proprio_projector_step=7, pretrained=str(tmp_path))


def test_file_choice_and_ddp_prefix(tmp_path):
    assert pick_released_file(tmp_path, "proprio_projector", None) is None
    weights = {"module.fc1.weight": torch.ones(2, 3), "fc2.bias": torch.zeros(2)}
    torch.save(weights, tmp_path / "proprio_projector--latest_checkpoint.pt")
    latest = pick_released_file(tmp_path, "proprio_projector", None)
    assert latest.name == "proprio_projector--latest_checkpoint.pt"
    assert sorted(read_released_state(latest)) == ["fc1.weight", "fc2.bias"]
    torch.save(weights, tmp_path / "proprio_projector--5_checkpoint.pt")
    with pytest.raises(ValueError, match="not all name a step"):
        pick_released_file(tmp_path, "proprio_projector", None)
    assert pick_released_file(tmp_path, "proprio_projector", 5).name == "proprio_projector--5_checkpoint.pt"


def test_shape_mismatch_names_the_parameter_and_both_shapes(tmp_path):
    policy = tiny_policy("openvla_oft", use_proprio=True)
    _released_layout(policy, tmp_path)
    path = tmp_path / "proprio_projector--123_checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["module.fc1.weight"] = torch.zeros(64, 8)  # OFT's LIBERO proprio_dim, the env here has 4
    torch.save(state, path)
    message = r"'proprio_projector\.fc1\.weight' has shape \(64, 8\) in the file but \(64, 4\) in the model"
    with pytest.raises(ValueError, match=message):
        tiny_policy("openvla_oft", use_proprio=True, pretrained=str(tmp_path))


def test_missing_projector_warns_and_action_head_is_noted(tmp_path, caplog):
    policy = tiny_policy("openvla_oft", use_proprio=True)
    _released_layout(policy, tmp_path)
    (tmp_path / "proprio_projector--123_checkpoint.pt").unlink()
    torch.save({"module.model.fc1.weight": torch.zeros(1)}, tmp_path / "action_head--123_checkpoint.pt")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        fresh = tiny_policy("openvla_oft", seed=5, use_proprio=True, pretrained=str(tmp_path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("projector starts untrained" in m for m in warnings), warnings
    assert any("action_head--123_checkpoint.pt" in m and "is ignored" in m for m in warnings), warnings
    assert not torch.equal(fresh.proprio_projector.fc1.weight, policy.proprio_projector.fc1.weight)
    assert torch.equal(fresh.model.projector.fc1.weight, policy.model.projector.fc1.weight)
