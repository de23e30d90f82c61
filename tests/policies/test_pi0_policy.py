"""The pi0 policy: rollout/evaluate log-prob agreement, determinism, checkpoints, LoRA, freezing, processing."""

import json
import shutil

import pytest
import torch

from envs.base import make_env, select_obs
from envs.colour_targets import ColourTargetsConfig
from policies import make_policy, policy_registry
from policies.base import read_saved_config
from policies.lora import LoraConfig
from policies.pi0 import Pi0Config, Pi0Policy
from policies.pi0.checkpoint import canonical_state_dict, check_released_shapes, read_checkpoint_info
from policies.pi0.processing_pi0 import (
    Normalizer,
    WordHashTokenizer,
    encode_prompts,
    pi0_prompt,
    read_norm_stats,
    resize_with_pad,
)
from tests.conftest import fixture_dir

METHODS = ("flow_noise", "flow_sde")


@pytest.fixture(scope="module")
def env_and_obs():
    env = make_env(ColourTargetsConfig(num_envs=5))
    obs = env.reset(seed=3)
    yield env.spec, obs
    env.close()


def _policy(spec, **kwargs) -> Pi0Policy:
    torch.manual_seed(0)
    return make_policy(Pi0Config(action_chunk=4, **kwargs), spec)


def test_registered_under_pi0():
    assert policy_registry.get("pi0") is Pi0Policy


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value_head", ["expert", "vlm"])
def test_rollout_logprobs_equal_recomputed_ones(env_and_obs, method, value_head):
    spec, obs = env_and_obs
    policy = _policy(spec, rl_method=method, value_head=value_head)
    out = policy.predict(obs, mode="train")
    n, c, a = 5, 4, spec.action_dim
    assert out.actions.shape == out.logprobs.shape == (n, c, a) and out.values.shape == (n,)
    assert out.forward_inputs["chain"].shape == (n, policy.config.num_steps + 1, 8, 8)
    ev = policy.evaluate(out.forward_inputs)
    ratio = torch.exp(ev.logprobs - out.logprobs)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
    torch.testing.assert_close(ev.values, out.values, atol=1e-6, rtol=0)
    assert ev.entropy.shape == (n, c, a) and torch.isfinite(ev.entropy).all()
    rows = torch.tensor([3, 0, 4])  # a different minibatch: same log-probs up to float rounding
    sub = policy.evaluate({k: v[rows] for k, v in out.forward_inputs.items()})
    assert torch.allclose(
        torch.exp(sub.logprobs - out.logprobs[rows]), torch.ones(3, c, a), atol=1e-5, rtol=0
    )


def test_flow_sde_stores_one_step_per_env_and_only_it_is_stochastic(env_and_obs):
    spec, obs = env_and_obs
    policy = _policy(spec, rl_method="flow_sde")
    fi = policy.predict(obs, mode="train").forward_inputs
    steps = fi["sde_step"]
    assert steps.shape == (5,) and ((steps >= 0) & (steps < policy.config.num_steps)).all()
    chain = fi["chain"]
    with torch.no_grad():
        cache = policy.model.prefix_pass(policy._model_inputs(fi))
        for k in range(policy.config.num_steps):
            v, _ = policy.model.denoise_step(cache, fi["states"], chain[:, k], policy.times[k].expand(5))
            euler = chain[:, k] + policy.dt * v
            deterministic = (steps != k)[:, None, None]
            assert torch.equal(torch.where(deterministic, euler, chain[:, k + 1]), chain[:, k + 1])
            if (steps == k).any():
                assert not torch.allclose(euler[steps == k], chain[:, k + 1][steps == k])


@pytest.mark.parametrize("method", METHODS)
def test_eval_mode_is_deterministic_and_train_mode_is_not(env_and_obs, method):
    spec, obs = env_and_obs
    policy = _policy(spec, rl_method=method)
    first, second = policy.predict(obs, mode="eval"), policy.predict(obs, mode="eval")
    assert torch.equal(first.actions, second.actions) and torch.equal(first.logprobs, torch.zeros(5, 4, 2))
    order = [
        4,
        2,
        0,
        1,
        3,
    ]  # the action is a function of the env's own observation, not of its batch position
    torch.testing.assert_close(
        policy.predict(select_obs(obs, order), mode="eval").actions, first.actions[order]
    )
    noise = first.forward_inputs["chain"][:, 0]
    assert not torch.allclose(noise[0], noise[1]) and noise.std() == pytest.approx(1.0, abs=0.2)
    assert not torch.equal(policy.predict(obs).actions, policy.predict(obs).actions)
    for mode in ("zero", "fixed"):
        other = _policy(spec, rl_method=method, eval_noise=mode)
        assert torch.equal(other.predict(obs, mode="eval").actions, other.predict(obs, mode="eval").actions)


@pytest.mark.parametrize("method", METHODS)
def test_logprobs_depend_on_the_weights_and_train_them(env_and_obs, method):
    spec, obs = env_and_obs
    policy = _policy(spec, rl_method=method)
    out = policy.predict(obs)
    ev = policy.evaluate(out.forward_inputs)
    (ev.logprobs.sum() + ev.values.sum()).backward()
    expert_grad = policy.model.paligemma_with_expert.gemma_expert.model.layers[0].mlp.up_proj.weight.grad
    vision_grad = policy.model.vision_tower.vision_model.embeddings.patch_embedding.weight.grad
    assert expert_grad.abs().sum() > 0 and vision_grad.abs().sum() > 0
    assert policy.value_head.net[0].weight.grad is not None
    if method == "flow_noise":
        assert policy.noise_head.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        policy.model.action_out_proj.bias.add_(0.05)
    moved = policy.evaluate(out.forward_inputs).logprobs
    assert (moved - out.logprobs).abs().max() > 1e-3


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_save_load_round_trip_is_exact(env_and_obs, tmp_path, lora_rank):
    spec, obs = env_and_obs
    config = Pi0Config(action_chunk=4, lora=LoraConfig(rank=lora_rank))
    torch.manual_seed(0)
    policy = make_policy(config, spec)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))  # move LoRA and heads away from their zero initialisation
    policy.save_pretrained(tmp_path)
    saved, saved_spec = read_saved_config(tmp_path)
    assert saved["name"] == "pi0" and saved_spec == spec
    loaded = make_policy(config.replace(pretrained=str(tmp_path)), spec)
    own, other = policy.state_dict(), loaded.state_dict()
    assert own.keys() == other.keys() and all(torch.equal(own[k], other[k]) for k in own)
    assert torch.equal(policy.predict(obs, mode="eval").actions, loaded.predict(obs, mode="eval").actions)


def test_a_checkpoint_of_other_sizes_fails_naming_the_first_mismatch(env_and_obs, tmp_path):
    spec, _ = env_and_obs
    _policy(spec).save_pretrained(tmp_path)
    other = _policy(spec, expert=Pi0Config().expert.replace(mlp_dim=48))
    with pytest.raises(
        ValueError, match=r"gemma_expert\.model\.layers\.0\.mlp\.down_proj\.weight.*\(32, 64\).*\(32, 48\)"
    ):
        other.load_weights(tmp_path)


def test_released_layout_loads_strictly_and_names_a_mismatch(env_and_obs, tmp_path):
    spec, _ = env_and_obs
    src = fixture_dir("pi0-tiny")
    for name in ("config.json", "model.safetensors", "tiny_overrides.json"):
        shutil.copy(src / name, tmp_path / name)
    overrides = json.loads((tmp_path / "tiny_overrides.json").read_text())
    overrides["action_expert_variant_gemma_300m"]["mlp_dim"] = 48
    (tmp_path / "tiny_overrides.json").write_text(json.dumps(overrides))
    config = Pi0Config(pretrained=str(tmp_path)).replace(**read_checkpoint_info(tmp_path).architecture)
    with pytest.raises(
        ValueError, match=r"gemma_expert\.model\.layers\.0\.mlp\.down_proj\.weight.*\(32, 64\)"
    ):
        check_released_shapes(config, tmp_path)
    (tmp_path / "tiny_overrides.json").unlink()  # without overrides: gemma_2b sizes, caught before allocating
    config = Pi0Config(pretrained=str(tmp_path)).replace(**read_checkpoint_info(tmp_path).architecture)
    with pytest.raises(
        ValueError, match=r"'action_in_proj.bias' has shape \(32,\) in the checkpoint but \(1024,\)"
    ):
        check_released_shapes(config, tmp_path)


def test_older_transformers_names_are_read():
    w = torch.zeros(1)
    old = {
        "model.paligemma_with_expert.paligemma.language_model.model.layers.0.mlp.up_proj.weight": w,
        "model.paligemma_with_expert.paligemma.language_model.lm_head.weight": w,
        "model.paligemma_with_expert.paligemma.vision_tower.vision_model.post_layernorm.bias": w,
        "model.paligemma_with_expert.paligemma.multi_modal_projector.linear.bias": w,
        "model.paligemma_with_expert.gemma_expert.lm_head.weight": w,
        "model.state_proj.bias": w,
    }
    assert set(canonical_state_dict(old)) == {
        "paligemma_with_expert.paligemma.model.language_model.layers.0.mlp.up_proj.weight",
        "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight",  # tied: read from lm_head
        "paligemma_with_expert.paligemma.model.vision_tower.vision_model.post_layernorm.bias",
        "paligemma_with_expert.paligemma.model.multi_modal_projector.linear.bias",
        "state_proj.bias",
    }


def test_lora_freezes_base_weights_and_trains_adapters_and_heads(env_and_obs):
    spec, obs = env_and_obs
    policy = _policy(spec, lora=LoraConfig(rank=2, alpha=4))
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert any(".lora_" in n for n in trainable)
    assert all(".lora_" in n or n.startswith(("value_head.", "noise_head.")) for n in trainable)
    assert {"noise_head.proj.weight", "value_head.net.0.weight"} <= trainable
    base = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    out = policy.predict(obs)
    for _ in range(2):
        ev = policy.evaluate(out.forward_inputs)
        opt.zero_grad()
        (ev.logprobs.mean() + ev.values.mean()).backward()
        opt.step()
    assert all(torch.equal(p, base[n]) for n, p in policy.named_parameters() if n in base)
    assert (policy.evaluate(out.forward_inputs).logprobs - out.logprobs).abs().max() > 0


def test_train_expert_only_freezes_the_vlm(env_and_obs):
    spec, obs = env_and_obs
    policy = _policy(spec, train_expert_only=True, value_head="vlm")
    vlm = policy.model.paligemma_with_expert.paligemma
    assert not any(p.requires_grad for p in vlm.parameters())
    assert all(p.requires_grad for p in policy.model.paligemma_with_expert.gemma_expert.parameters())
    ev = policy.evaluate(policy.predict(obs).forward_inputs)
    (ev.logprobs.sum() + ev.values.sum()).backward()
    assert all(p.grad is None for p in vlm.parameters())
    assert policy.value_head.net[2].weight.grad.abs().sum() > 0  # (the last layer starts at zero)
    assert policy.model.action_in_proj.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients(env_and_obs):
    spec, obs = env_and_obs
    grads = []
    for checkpointing in (False, True):
        policy = _policy(spec, gradient_checkpointing=checkpointing)
        assert policy.model.paligemma_with_expert.joint.gradient_checkpointing is checkpointing
        torch.manual_seed(5)
        out = policy.predict(obs)
        ev = policy.evaluate(out.forward_inputs)
        (ev.logprobs.sum() + ev.values.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_bfloat16_weights_give_finite_actions_and_float32_logprobs(env_and_obs):
    spec, obs = env_and_obs
    policy = _policy(spec, dtype="bfloat16")
    assert policy.model.action_in_proj.weight.dtype == torch.bfloat16
    out = policy.predict(obs)
    assert out.logprobs.dtype == torch.float32 and torch.isfinite(out.actions).all()
    ratio = torch.exp(policy.evaluate(out.forward_inputs).logprobs - out.logprobs)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)


# -- processing ----------------------------------------------------------------------------------------------------
def test_word_hash_tokenizer_is_deterministic_and_tells_colours_apart():
    tok = WordHashTokenizer(1024)
    ids = {c: tok.token_ids(c)[0] for c in ("red", "green", "blue", "yellow", "magenta", "cyan")}
    assert len(set(ids.values())) == 6 and all(3 <= i < 1024 for i in ids.values())
    assert tok.token_ids("Move to the RED target.\n") == tok.token_ids("move to the red target .\n")
    assert WordHashTokenizer(1024).token_ids("red") == [ids["red"]]
    ids_, masks = encode_prompts(
        tok, [pi0_prompt(t) for t in ("go red", "a b c d e f g h i j")], max_length=6
    )
    assert (
        ids_[0, 0] == 2 and masks[0].tolist() == [True] * 4 + [False] * 2 and ids_[0, 4:].tolist() == [0, 0]
    )
    assert masks[1].all() and ids_[1, 0] == 2  # truncated to max_length, BOS kept


def test_sentencepiece_tokenizer_is_used_when_given(tmp_path, env_and_obs):
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"move the cursor to the {c} target" for c in ("red", "green", "blue")) * 20)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=20, hard_vocab_limit=False, bos_id=2, pad_id=0, unk_id=1,
        eos_id=-1, minloglevel=2,
    )  # fmt: skip
    spec, obs = env_and_obs
    policy = _policy(spec, tokenizer=str(tmp_path / "sp.model"))
    expected = [2] + spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model")).encode(
        obs["task_descriptions"][0] + "\n"
    )
    ids = policy.predict(obs).forward_inputs["lang_tokens"][0]
    assert ids[: len(expected)].tolist() == expected[: policy.config.tokenizer_max_length]


def test_a_trained_vocabulary_without_a_tokenizer_is_refused(env_and_obs):
    spec, _ = env_and_obs
    with pytest.raises(ValueError, match="set policy.tokenizer"):
        _policy(spec, vocab_size=257_152)


def test_resize_with_pad_keeps_the_aspect_ratio():
    img = torch.ones(1, 3, 20, 40)
    out = resize_with_pad(img, 32)
    assert out.shape == (1, 3, 32, 32)
    assert (
        torch.all(out[..., 8:24, :] == 1)
        and torch.all(out[..., :8, :] == 0)
        and torch.all(out[..., 24:, :] == 0)
    )


def test_norm_stats_from_openpi_and_lerobot_files(tmp_path, env_and_obs):
    spec, _ = env_and_obs
    stats = {
        "state": {"mean": [1.0, 2.0, 9.0], "std": [2.0, 4.0, 1.0]},
        "actions": {"mean": [0.5, -0.5], "std": [2.0, 3.0]},
    }
    (tmp_path / "norm_stats.json").write_text(json.dumps({"norm_stats": stats}))
    from safetensors.torch import save_file

    save_file(
        {
            "observation.state.mean": torch.tensor([1.0, 2.0]),
            "observation.state.std": torch.tensor([2.0, 4.0]),
            "action.mean": torch.tensor([0.5, -0.5]),
            "action.std": torch.tensor([2.0, 3.0]),
        },
        str(tmp_path / "normalizer.safetensors"),
    )
    for name in ("norm_stats.json", "normalizer.safetensors"):
        norm = Normalizer(Pi0Config(norm_stats=str(tmp_path / name)), spec)
        states = norm.states(torch.tensor([[3.0, 6.0]]))
        torch.testing.assert_close(states, torch.tensor([[1.0, 1.0, 0, 0, 0, 0, 0, 0]]), atol=1e-5, rtol=0)
        actions = norm.actions(torch.ones(1, 8, 8), chunk=3)
        assert actions.shape == (1, 3, 2)
        torch.testing.assert_close(actions[0, 0], torch.tensor([2.5, 2.5]), atol=1e-5, rtol=0)
    assert read_norm_stats(tmp_path / "norm_stats.json")["state"]["mean"] == [1.0, 2.0, 9.0]
    (tmp_path / "bad.json").write_text(json.dumps({"state": stats["state"]}))
    with pytest.raises(ValueError, match="lacks \\['actions'\\]"):
        read_norm_stats(tmp_path / "bad.json")
