"""pi0 against the LeRobot-made tiny checkpoint in shared/fixtures/pi0-tiny (see its README).

Loads the released layout (sizes from config.json + tiny_overrides.json) and reproduces in fp32, atol 1e-5, the
intermediates (SigLIP, image/language/suffix embeddings, masks, positions), the velocity of the joint training
pass and of the KV-cache path, the flow-matching loss per element and the actions sampled from the stored noise.
"""

import numpy as np
import pytest
import torch

from envs.base import EnvSpec
from policies import make_policy
from policies.pi0 import Pi0Config, Pi0Inputs
from policies.pi0.checkpoint import read_checkpoint_info
from policies.pi0.flow_rl import denoise_times
from policies.pi0.modeling_pi0 import make_att_2d_masks
from policies.pi0.processing_pi0 import images_to_model
from tests.conftest import fixture_dir

ATOL = 1e-5


@pytest.fixture(scope="module")
def fx():
    path = fixture_dir("pi0-tiny")
    ref = {k: torch.from_numpy(v) for k, v in np.load(path / "reference.npz").items()}
    spec = EnvSpec(
        action_dim=8, action_low=(-1.0,) * 8, action_high=(1.0,) * 8, state_dim=8, image_size=(224, 224),
        has_wrist_image=False, max_episode_steps=10, num_initial_states=None,
    )  # fmt: skip
    policy = make_policy(Pi0Config(pretrained=str(path)), spec).eval()
    inputs = Pi0Inputs(
        images=ref["in_images"][:, None],
        image_masks=ref["in_img_masks"][:, None],
        lang_tokens=ref["in_lang_tokens"],
        lang_masks=ref["in_lang_masks"],
        state=ref["in_state"],
    )
    return policy, policy.model, inputs, ref


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


def test_sizes_come_from_the_checkpoint_and_its_overrides(fx):
    policy, _, _, _ = fx
    cfg = policy.config
    assert (cfg.vlm.width, cfg.vlm.depth, cfg.vlm.mlp_dim) == (64, 2, 128)
    assert (cfg.expert.width, cfg.expert.mlp_dim, cfg.expert.head_dim) == (32, 64, 16)
    assert (cfg.vision.hidden_size, cfg.vision.patch_size, cfg.vision.image_size) == (32, 14, 224)
    assert (cfg.vocab_size, cfg.chunk_size, cfg.max_action_dim, cfg.tokenizer_max_length) == (1024, 8, 8, 8)
    info = read_checkpoint_info(fixture_dir("pi0-tiny"))
    assert info.kind == "lerobot"


def test_image_processing_matches_the_module_input(fx):
    _, _, _, ref = fx
    images, masks = images_to_model([ref["in_pixels_uint8"]], 224, empty_cameras=0)
    _close(images[:, 0], ref["in_images"], atol=1e-6)
    assert masks.all()


@torch.no_grad()
def test_vision_and_embeddings(fx):
    _, model, inputs, ref = fx
    _close(model.vision_tower(ref["in_images"]), ref["out_siglip_last_hidden"])
    _close(model.embed_image(ref["in_images"]), ref["out_image_emb"])
    _close(model.language_model.embed(ref["in_lang_tokens"]), ref["out_lang_emb"])
    t = ref["in_time"]
    suffix, _, _ = model.embed_suffix(ref["in_state"], ref["out_x_t"], t)
    _close(suffix, ref["out_suffix_emb"])


@torch.no_grad()
def test_masks_and_positions(fx):
    _, model, inputs, ref = fx
    _, prefix_pad, prefix_ar = model.embed_prefix(inputs)
    _, suffix_pad, suffix_ar = model.embed_suffix(ref["in_state"], ref["out_x_t"], ref["in_time"])
    pad = torch.cat([prefix_pad, suffix_pad], dim=1)
    ar = torch.cat([prefix_ar, suffix_ar])[None].expand_as(pad)
    assert torch.equal(pad, ref["out_joint_pad_mask"])
    assert torch.equal(ar, ref["out_joint_ar_mask"])
    assert torch.equal(make_att_2d_masks(pad, ar), ref["out_joint_att_2d_mask"])
    assert torch.equal(torch.cumsum(pad, dim=1) - 1, ref["out_joint_position_ids"])


@torch.no_grad()
def test_velocity_training_path_and_kv_cache_path(fx):
    _, model, inputs, ref = fx
    t = ref["in_time"]
    x_t = t[:, None, None] * ref["in_noise"] + (1 - t[:, None, None]) * ref["in_actions"]
    _close(x_t, ref["out_x_t"])
    _close(model.joint_velocity(inputs, x_t, t), ref["out_v_t"])
    velocity, _ = model.denoise_step(model.prefix_pass(inputs), inputs.state, x_t, t)
    _close(velocity, ref["out_v_t_cached"])


@torch.no_grad()
def test_flow_matching_loss_per_element(fx):
    _, model, inputs, ref = fx
    loss = model.flow_matching_loss(inputs, ref["in_actions"], ref["in_noise"], ref["in_time"])
    torch.testing.assert_close(loss, ref["out_loss_elementwise"], rtol=1e-5, atol=ATOL)
    assert abs(loss.mean().item() - ref["out_loss_mean"].item()) < 1e-5


@torch.no_grad()
def test_sampled_actions_and_every_euler_step(fx):
    _, model, inputs, ref = fx
    times, dt = denoise_times(4)
    assert torch.equal(times, ref["out_sample_step_time"]) and dt == -0.25
    cache = model.prefix_pass(inputs)
    x = ref["in_noise"]
    for k, t in enumerate(times):
        _close(x, ref["out_sample_step_x_t"][k])
        v, _ = model.denoise_step(cache, inputs.state, x, t.expand(2))
        _close(v, ref["out_sample_step_v_t"][k])
        x = x + dt * v
    _close(x, ref["out_sample_actions"])
    _close(model.sample_actions(inputs, ref["in_noise"], num_steps=4), ref["out_sample_actions"])
