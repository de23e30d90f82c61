"""pi0.5 against the tiny checkpoint made with LeRobot 0.6.1's PI05 (tests/fixtures/pi05-tiny, see its README).

The fixture holds LeRobot's saved model, its pre/post-processor files (quantile statistics), a tiny tokenizer and
the reference outputs LeRobot computed in fp32. Reproduced here at atol 1e-5: the processing (quantile-normalised
state, the prompt with the discretised state, its token ids, the camera inputs), SigLIP, prefix and suffix
embeddings, the adaRMS condition, masks and positions, the joint pass's outputs of both towers, the velocity of
the training pass and of the KV-cache path, the loss per element, every Euler step, the sampled actions and,
through the whole policy, the env-unit actions LeRobot's post-processor gives.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from envs.base import EnvSpec
from policies import make_policy
from policies.pi0 import Pi0Inputs
from policies.pi0.checkpoint import read_checkpoint_info
from policies.pi0.flow_rl import denoise_times
from policies.pi0.modeling_pi0 import make_att_2d_masks
from policies.pi05 import Pi05Config

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pi05-tiny"
NORM_STATS = FIXTURE / "policy_preprocessor_step_3_normalizer_processor.safetensors"
ATOL = 1e-5
SPEC = EnvSpec(
    action_dim=7, action_low=(-1.0,) * 7, action_high=(1.0,) * 7, state_dim=6, image_size=(56, 56),
    has_wrist_image=True, max_episode_steps=10, num_initial_states=None,
)  # fmt: skip


@pytest.fixture(scope="module")
def fx():
    ref = {
        k: (torch.from_numpy(v) if v.dtype.kind != "U" else v)
        for k, v in np.load(FIXTURE / "reference.npz").items()
    }
    config = Pi05Config(
        pretrained=str(FIXTURE),
        tokenizer=str(FIXTURE / "tokenizer"),
        norm_stats=str(NORM_STATS),
        empty_cameras=1,
    )
    policy = make_policy(config, SPEC).eval()
    inputs = Pi0Inputs(
        images=ref["in_images"], image_masks=ref["in_img_masks"], lang_tokens=ref["in_lang_tokens"],
        lang_masks=ref["in_lang_masks"], state=torch.zeros(2, 8),
    )  # fmt: skip
    return policy, policy.model, inputs, ref


def _obs(ref) -> dict:
    return {
        "main_images": ref["in_frames_base_0_rgb"],
        "wrist_images": ref["in_frames_left_wrist_0_rgb"],
        "states": ref["in_state_raw"],
        "task_descriptions": ["pick up the red cube", "open the top drawer_of the cabinet"],
    }


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


def test_the_checkpoint_is_read_as_lerobot_pi05_with_its_sizes_and_quantile_normalisation(fx):
    policy, model, _, _ = fx
    info = read_checkpoint_info(FIXTURE, expected="pi05")
    assert (info.kind, info.variant, info.architecture["normalization"]) == ("lerobot", "pi05", "quantile")
    cfg = policy.config
    assert (cfg.vlm.width, cfg.expert.width, cfg.vision.image_size, cfg.vision.patch_size) == (64, 32, 56, 14)
    assert (cfg.vocab_size, cfg.chunk_size, cfg.max_action_dim, cfg.tokenizer_max_length) == (1024, 8, 8, 40)
    expert = model.paligemma_with_expert.gemma_expert.model
    assert expert.norm.adaptive and expert.layers[1].post_attention_layernorm.adaptive
    assert not model.language_model.layers[0].input_layernorm.adaptive
    assert not hasattr(model, "state_proj") and hasattr(model, "time_mlp_in")
    with pytest.raises(ValueError, match="set policy.name=pi05"):
        read_checkpoint_info(FIXTURE, expected="pi0")


def test_processing_matches_lerobots_normaliser_prompt_tokens_and_cameras(fx):
    policy, _, _, ref = fx
    fi = policy._forward_inputs(_obs(ref))
    _close(fi["states"][:, :6], ref["out_state_normalized"])
    states = policy.normalizer.states(ref["in_state_raw"])
    assert policy._prompts(_obs(ref)["task_descriptions"], states) == ref["in_prompts"].tolist()
    assert "State: -1 " in ref["in_prompts"][0] and " 255 " in ref["in_prompts"][1]  # both ends of the bins
    assert torch.equal(fi["lang_tokens"], ref["in_lang_tokens"])
    assert torch.equal(fi["lang_masks"], ref["in_lang_masks"])
    inputs = policy._model_inputs(fi)
    _close(inputs.images, ref["in_images"], atol=1e-6)
    assert torch.equal(inputs.image_masks, ref["in_img_masks"])


@torch.no_grad()
def test_vision_embeddings_and_the_adarms_condition(fx):
    _, model, inputs, ref = fx
    _close(model.vision_tower(ref["in_images"][:, 0]), ref["out_siglip_last_hidden"])
    prefix, _, _ = model.embed_prefix(inputs)
    _close(prefix, ref["out_prefix_emb"])
    suffix, _, _ = model.embed_suffix(inputs.state, ref["out_x_t"], ref["in_time"])
    _close(suffix, ref["out_suffix_emb"])
    _close(model.expert_condition(ref["in_time"]), ref["out_adarms_cond"])


@torch.no_grad()
def test_masks_positions_and_the_joint_pass_of_both_towers(fx):
    _, model, inputs, ref = fx
    prefix, prefix_pad, prefix_ar = model.embed_prefix(inputs)
    suffix, suffix_pad, suffix_ar = model.embed_suffix(inputs.state, ref["out_x_t"], ref["in_time"])
    pad = torch.cat([prefix_pad, suffix_pad], dim=1)
    ar = torch.cat([prefix_ar, suffix_ar])[None].expand_as(pad)
    mask, positions = make_att_2d_masks(pad, ar), torch.cumsum(pad, dim=1) - 1
    assert torch.equal(pad, ref["out_joint_pad_mask"]) and torch.equal(ar, ref["out_joint_ar_mask"])
    assert torch.equal(mask, ref["out_joint_att_2d_mask"])
    assert torch.equal(positions, ref["out_joint_position_ids"])
    conds = [None, model.expert_condition(ref["in_time"])]
    (prefix_out, suffix_out), _ = model.paligemma_with_expert.joint(
        [prefix, suffix], positions, mask, conds=conds
    )
    _close(prefix_out, ref["out_joint_prefix_out"])
    _close(suffix_out, ref["out_joint_suffix_out"])


@torch.no_grad()
def test_velocity_training_path_kv_cache_path_and_loss(fx):
    _, model, inputs, ref = fx
    t = ref["in_time"]
    _close(model.joint_velocity(inputs, ref["out_x_t"], t), ref["out_v_t"])
    velocity, _ = model.denoise_step(model.prefix_pass(inputs), inputs.state, ref["out_x_t"], t)
    _close(velocity, ref["out_v_t_cached"])
    loss = model.flow_matching_loss(inputs, ref["in_actions"], ref["in_noise"], t)
    torch.testing.assert_close(loss, ref["out_loss_elementwise"], rtol=1e-5, atol=ATOL)
    assert abs(loss.mean().item() - ref["out_loss_mean"].item()) < 1e-5


@torch.no_grad()
def test_every_euler_step_and_the_sampled_actions(fx):
    _, model, inputs, ref = fx
    times, dt = denoise_times(4)
    assert torch.equal(times, ref["out_sample_step_time"])
    cache, x = model.prefix_pass(inputs), ref["in_noise"]
    for k, t in enumerate(times):
        _close(x, ref["out_sample_step_x_t"][k])
        v, _ = model.denoise_step(cache, inputs.state, x, t.expand(2))
        _close(v, ref["out_sample_step_v_t"][k])
        x = x + dt * v
    _close(x, ref["out_sample_actions"])
    _close(model.sample_actions(inputs, ref["in_noise"], num_steps=4), ref["out_sample_actions"])


@torch.no_grad()
def test_the_whole_policy_gives_lerobots_env_unit_actions(fx, monkeypatch):
    """Frames, raw states and tasks in; actions out in env units: LeRobot's pre-processor, PI05 and post-processor
    against `predict(obs, "eval")` from the same initial noise."""
    policy, _, _, ref = fx
    monkeypatch.setattr(policy, "_initial_noise", lambda fi, mode: ref["in_noise"].clone())
    out = policy.predict(_obs(ref), mode="eval")
    _close(out.actions, ref["out_actions_env"])
