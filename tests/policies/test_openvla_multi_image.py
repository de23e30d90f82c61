"""OpenVLA / OpenVLA-OFT with two camera images (`policy.num_images_in_input: 2`, OFT's LIBERO checkpoints): the
third-person then the wrist image, stacked along the channel axis, each through the fused towers on its own, the
patches of both after BOS in that order; rollout and training agree; checkpoints record the count; OFT's
evaluation centre crop; errors that say which key to change."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from openvla_common import env_spec, observations, one_thread, tiny_policy  # noqa: F401

from algorithms.schema import ConfigError
from envs.base import EnvSpec
from policies.openvla.processing_openvla import center_crop

pytest.importorskip("transformers")

P = 4  # patches per 28 x 28 image


def wrist_env_spec() -> EnvSpec:
    return dataclasses.replace(env_spec(), has_wrist_image=True)


def wrist_obs(n: int = 3, seed: int = 0, image: int = 32) -> dict:
    obs = observations(n, image=image, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    obs["wrist_images"] = torch.randint(0, 256, obs["main_images"].shape, dtype=torch.uint8, generator=g)
    obs["states"] = torch.linspace(-1, 1, n * 4).reshape(n, 4)
    return obs


def two_image_policy(name: str = "openvla_oft", seed: int = 0, **overrides):
    return tiny_policy(name, seed=seed, spec=wrist_env_spec(), num_images_in_input=2, **overrides)


def test_two_images_give_twice_the_patches_third_person_then_wrist():
    policy = two_image_policy(use_proprio=True).eval()
    obs = wrist_obs()
    inputs = policy.processor(obs, policy.device, torch.float32)
    pixels = inputs["pixel_values"]
    assert pixels.shape == (3, 12, 28, 28)  # 2 images x (DINOv2 + SigLIP) x RGB
    assert torch.equal(pixels[:, :6], policy.processor.images(obs["main_images"]))
    assert torch.equal(pixels[:, 6:], policy.processor.images(obs["wrist_images"]))
    backbone, model = policy.model.vision_backbone, policy.model
    with torch.no_grad():
        embeds, mask = policy.embed_prefix(inputs)
        # OFT's backbone: split the channels per image (6 each), each image's 3 + 3 into the two towers
        per_image = [
            torch.cat([backbone.featurizer(image[:, :3]), backbone.fused_featurizer(image[:, 3:])], dim=2)
            for image in torch.split(pixels, [6, 6], dim=1)
        ]
        main, wrist = (model.projector(features) for features in per_image)
        proprio = policy.proprio_projector(inputs["proprio"])
    prompt = inputs["input_ids"].shape[1]
    assert embeds.shape[1] == 1 + 2 * P + 1 + prompt - 1 and mask.shape == embeds.shape[:2]
    torch.testing.assert_close(
        embeds[:, 1 : 1 + P], main
    )  # [BOS, main patches, wrist patches, proprio, text]
    torch.testing.assert_close(embeds[:, 1 + P : 1 + 2 * P], wrist)
    torch.testing.assert_close(embeds[:, 1 + 2 * P], proprio)
    torch.testing.assert_close(embeds[:, 2 + 2 * P :], model.embed_tokens(inputs["input_ids"][:, 1:]))
    # the same network fed one image: its patches are the first block
    single = tiny_policy("openvla_oft", spec=wrist_env_spec(), num_images_in_input=1, use_proprio=True)
    single.load_state_dict(policy.state_dict())
    with torch.no_grad():
        one, _ = single.embed_prefix(single.processor(obs, single.device, torch.float32))
    assert one.shape[1] == embeds.shape[1] - P
    torch.testing.assert_close(one[:, 1 : 1 + P], main)


@pytest.mark.parametrize(
    "name, settings",
    [("openvla", {}), ("openvla_oft", {}), ("openvla_oft", {"action_head": "l1", "use_proprio": True})],
)
def test_rollout_and_training_log_probs_agree_and_depend_on_the_wrist_image(name, settings):
    policy = two_image_policy(name, seed=1, **settings)
    obs = wrist_obs(4)
    torch.manual_seed(0)
    rollout = policy.predict(obs, "train")
    evaluated = policy.evaluate(rollout.forward_inputs)
    torch.testing.assert_close(evaluated.logprobs, rollout.logprobs, rtol=0, atol=1e-5)
    torch.testing.assert_close(evaluated.values, rollout.values, rtol=0, atol=1e-6)
    pixels = rollout.forward_inputs["pixel_values"]
    other_wrist = dict(rollout.forward_inputs, pixel_values=torch.cat([pixels[:, :6], -pixels[:, 6:]], 1))
    assert not torch.allclose(policy.evaluate(other_wrist).logprobs, evaluated.logprobs, atol=1e-4)


def test_supervised_loss_runs_through_the_same_preprocessing():
    """OFT's L1 loss on a demo batch with both images is the distance to what `predict` decodes from them."""
    policy = two_image_policy(action_head="l1")
    obs = wrist_obs(2)
    with torch.no_grad():
        head = policy.predict(obs, "eval").forward_inputs["actions"]  # normalised, [2, C, A]
    demo = policy.processor.bins.unnormalize(head.clamp(-0.9, 0.9) + 0.1).float()
    batch = {**obs, "actions": demo, "action_mask": torch.ones(2, 2, dtype=torch.bool)}
    loss, _ = policy.supervised_loss(batch)
    torch.testing.assert_close(loss, (head.clamp(-0.9, 0.9) + 0.1 - head).abs().mean(), rtol=1e-4, atol=1e-5)
    flipped, _ = policy.supervised_loss({**batch, "wrist_images": obs["wrist_images"].flip(1)})
    assert not torch.isclose(flipped, loss)


def test_checkpoints_record_the_image_count_and_round_trip(tmp_path):
    from policies.base import write_pretrained

    policy = two_image_policy(action_head="l1", use_proprio=True)
    policy.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["num_images_in_input"] == 2
    obs = wrist_obs(2)
    expected = policy.predict(obs, "eval")
    loaded = tiny_policy(  # num_images_in_input null: the checkpoint's
        "openvla_oft",
        seed=7,
        spec=wrist_env_spec(),
        action_head="l1",
        use_proprio=True,
        pretrained=str(tmp_path / "saved"),
    )
    assert loaded.num_images == 2
    assert torch.equal(loaded.predict(obs, "eval").actions, expected.actions)
    # a runtime checkpoint (the actor's state dict under the policy's names) trained from that folder
    write_pretrained(tmp_path / "runtime", loaded.config, wrist_env_spec(), loaded.state_dict())
    again = tiny_policy(
        "openvla_oft",
        seed=8,
        spec=wrist_env_spec(),
        action_head="l1",
        use_proprio=True,
        pretrained=str(tmp_path / "runtime"),
    )
    assert again.num_images == 2
    assert torch.equal(again.predict(obs, "eval").actions, expected.actions)
    # a released-layout config.json without the key (OpenVLA's, OFT's): one image unless the config says two
    meta = json.loads((tmp_path / "saved" / "config.json").read_text())
    del meta["num_images_in_input"], meta["policy"]
    (tmp_path / "saved" / "config.json").write_text(json.dumps(meta))
    kwargs = dict(
        spec=wrist_env_spec(), action_head="l1", use_proprio=True, pretrained=str(tmp_path / "saved")
    )
    assert tiny_policy("openvla_oft", **kwargs).num_images == 1
    explicit = tiny_policy("openvla_oft", num_images_in_input=2, **kwargs)
    assert torch.equal(explicit.predict(obs, "eval").actions, expected.actions)


def test_two_images_without_a_wrist_camera_say_which_keys_to_change():
    with pytest.raises(ConfigError, match=r"policy\.num_images_in_input=2 .* no wrist_images: .*env\.wrist_image=true.*"
                       r"env\.robot_uids=panda_wristcam.* policy\.num_images_in_input=1"):  # fmt: skip
        tiny_policy("openvla_oft", num_images_in_input=2)  # env_spec(): no wrist camera
    policy = two_image_policy()
    obs = wrist_obs(2)
    del obs["wrist_images"]
    with pytest.raises(
        KeyError, match=r"reads main_images and wrist_images .* no wrist_images: .*env\.wrist_image"
    ):
        policy.predict(obs, "eval")
    with pytest.raises(ConfigError, match="num_images_in_input"):
        tiny_policy("openvla_oft", num_images_in_input=3)


def test_center_crop_samples_the_central_ninety_percent_bilinearly():
    """On a linear ramp bilinear sampling is exact: output column j reads input column
    x1 (W - 1) + j (x2 - x1), with x1 = (1 - sqrt(0.9)) / 2, x2 = 1 - x1 (TF crop_and_resize's coordinates);
    the uint8 conversion is TF's floor(v * 255.5)."""
    w = 28
    ramp = torch.arange(w, dtype=torch.float32) * 9.0  # 0 .. 243
    images = ramp.expand(1, 3, w, w).clone()
    out = center_crop(images)
    x1 = (1 - math.sqrt(0.9)) / 2
    coords = x1 * (w - 1) + torch.arange(w, dtype=torch.float64) * (1 - 2 * x1)
    expected = torch.floor(coords * 9.0 / 255.0 * 255.5)
    assert torch.equal(out[0, 0, 5], expected.float()) and torch.equal(
        out[0, :, :, 3], out[0, :, :1, 3].expand(3, w)
    )
    flat = torch.full((2, 3, w, w), 200.0)
    assert torch.equal(center_crop(flat), torch.full_like(flat, 200.0))  # floor(200 / 255 * 255.5) = 200
    # the policy crops every image before normalising it
    policy = two_image_policy(center_crop=True)
    obs = wrist_obs(1, image=28)  # the policy's size: no resize before the crop
    pixels = policy.processor(obs, policy.device, torch.float32)["pixel_values"]
    plain = two_image_policy(center_crop=False).processor.images
    assert not torch.allclose(pixels[:, :6], plain(obs["main_images"]))
    cropped = center_crop(obs["wrist_images"].permute(0, 3, 1, 2).float())
    as_image = cropped.permute(0, 2, 3, 1).to(torch.uint8)
    torch.testing.assert_close(pixels[:, 6:], plain(as_image))
