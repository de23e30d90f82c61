"""The openvla-tiny fixture (made with the official OpenVLA classes, see its README) loads strictly into this
suite's OpenVLA and reproduces the official features, logits, greedy action tokens and un-normalised actions.

This is the evidence that released openvla/openvla-7b checkpoints load and behave as the official model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from openvla_common import one_thread  # noqa: F401

from envs.base import EnvSpec
from policies import make_policy
from policies.base import PolicyConfig
from tests.conftest import fixture_dir

pytest.importorskip("transformers")
ATOL = 1e-4


@pytest.fixture(scope="module")
def fixture():
    directory = fixture_dir("openvla-tiny")
    spec = EnvSpec(
        action_dim=7,
        action_low=(-1.0,) * 7,
        action_high=(1.0,) * 7,
        state_dim=8,
        image_size=(224, 224),
        has_wrist_image=False,
        max_episode_steps=10,
        num_initial_states=None,
    )
    config = PolicyConfig.from_dict(
        {"name": "openvla", "pretrained": str(directory), "unnorm_key": "bridge_orig"}, path="policy"
    )
    policy = make_policy(
        config, spec
    ).eval()  # loads strictly: any missing/unexpected/misshapen tensor raises
    return policy, dict(np.load(directory / "reference.npz"))


def test_fixture_loads_every_tensor_of_the_checkpoint(fixture):
    from safetensors import safe_open

    policy, _ = fixture
    with safe_open(str(fixture_dir("openvla-tiny") / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert len(names) == 130
    assert names == set(policy.model.state_dict())
    assert sum(p.numel() for p in policy.model.parameters()) == 4_451_276


@torch.no_grad()
def test_fixture_features_and_logits(fixture):
    policy, ref = fixture
    model = policy.model
    pixels = torch.from_numpy(ref["pixel_values"])
    patches = model.vision_backbone(pixels)
    assert torch.allclose(patches, torch.from_numpy(ref["patch_features"]), atol=ATOL)
    projected = model.projector(patches)
    assert torch.allclose(projected, torch.from_numpy(ref["projector_features"]), atol=ATOL)
    ids, mask = torch.from_numpy(ref["input_ids"]), torch.from_numpy(ref["attention_mask"])
    logits = model(ids, mask, pixels)
    assert logits.shape == (2, 268, 32064)
    positions = torch.from_numpy(ref["text_positions"])
    assert torch.allclose(logits[:, positions], torch.from_numpy(ref["logits_at_text_positions"]), atol=ATOL)
    start, end = ref["action_token_id_range"].tolist()
    assert (policy.action_start, policy.action_end) == (start, end)
    assert torch.allclose(
        logits[:, -1, start:end], torch.from_numpy(ref["last_logits_action_vocab"]), atol=ATOL
    )


@torch.no_grad()
def test_fixture_greedy_action_tokens_and_actions(fixture):
    policy, ref = fixture
    inputs = {
        "input_ids": torch.from_numpy(ref["predict_action_input_ids"]),
        "attention_mask": torch.ones(1, 12, dtype=torch.long),
        "pixel_values": torch.from_numpy(ref["pixel_values"][:1]),
    }
    bins, _, _ = policy.decode_actions(inputs, greedy=True)  # the KV-cache decoding used in rollouts
    assert (bins[0] + policy.action_start).tolist() == ref["predict_action_token_ids"].tolist()
    actions = policy.processor.bins.to_env_units(bins[0])
    np.testing.assert_allclose(actions.numpy(), ref["predict_action_actions"], rtol=1e-9, atol=1e-12)
    # The teacher-forced pass of `evaluate` sees the logits of every greedy step.
    window = policy.score_window(inputs, policy.continuation(bins))
    step_logits = policy.model.logits(window)[0]
    assert torch.allclose(step_logits, torch.from_numpy(ref["predict_action_step_logits"]), atol=ATOL)


def test_fixture_keeps_the_gripper_dimension_normalised(fixture):
    policy, _ = fixture
    bins = policy.processor.bins
    assert bins.mask.tolist() == [True] * 6 + [False]
    index = torch.tensor([0, 255, 128, 0, 0, 0, 127])
    actions = bins.to_env_units(index)
    # Token index 0 (id 31744) is clipped to bin 254, the highest centre; index 255 (id 31999) is bin 0.
    assert actions[0].item() == pytest.approx(
        0.5 * (bins.bin_centers[254].item() + 1) * (0.0283 + 0.0287) - 0.0287
    )
    assert actions[1].item() == pytest.approx(
        0.5 * (bins.bin_centers[0].item() + 1) * (0.0409 + 0.0417) - 0.0417
    )
    assert actions[6].item() == pytest.approx(bins.bin_centers[128].item())
