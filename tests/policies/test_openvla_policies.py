"""The policy interface of OpenVLA and OpenVLA-OFT on tiny random models: log-prob consistency between rollout
and training, determinism, padding, save/load round trips, strict loading, LoRA, gradient checkpointing."""

from __future__ import annotations

import json

import pytest
import torch
from openvla_common import POLICY_NAMES, env_spec, observations, one_thread, tiny_policy  # noqa: F401

from policies import make_policy, policy_registry
from policies.base import EvaluateOutput, PolicyConfig

pytest.importorskip("transformers")

SETTINGS = [
    {},
    {"temperature": 0.7, "top_k": 20},
    {"value_granularity": "step", "temperature": 1.6},
]


def _randomize_value_head(policy) -> None:
    with torch.no_grad():
        policy.value_head.fc2.weight.normal_(0, 1.0)
        policy.value_head.fc2.bias.normal_(0, 1.0)


@pytest.mark.parametrize("name", POLICY_NAMES)
@pytest.mark.parametrize("settings", SETTINGS, ids=["default", "temp_topk", "step_values"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_rollout_logprobs_match_evaluate(name, settings, mode):
    policy = tiny_policy(name, **settings)
    _randomize_value_head(policy)
    torch.manual_seed(1)
    out = policy.predict(observations(5), mode=mode)
    n, c, a = 5, policy.config.num_action_chunks, 3
    assert out.actions.shape == (n, c, a) and out.actions.dtype == torch.float32
    assert out.logprobs.shape == (n, c, a)
    values_shape = (n, c) if settings.get("value_granularity") == "step" else (n,)
    assert out.values.shape == values_shape
    assert out.forward_inputs["action_tokens"].shape == (n, c, a)
    assert out.forward_inputs["input_ids"].shape == (n, policy.config.max_prompt_length)  # stacks over steps

    again: EvaluateOutput = policy.evaluate(out.forward_inputs)
    ratio = torch.exp(again.logprobs - out.logprobs)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5), (ratio - 1).abs().max()
    assert torch.allclose(again.values, out.values, atol=1e-5)
    assert again.entropy.shape == (n, c, a) and bool((again.entropy > 0).all())
    if settings.get("top_k"):
        assert bool((again.entropy <= torch.log(torch.tensor(20.0)) + 1e-4).all())


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_actions_lie_on_bin_centres_within_the_env_bounds(name):
    policy = tiny_policy(name, temperature=3.0)
    spec = env_spec()
    out = policy.predict(observations(8))
    low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
    assert bool(((out.actions >= low) & (out.actions <= high)).all())
    bins = out.forward_inputs["action_tokens"]
    expected = policy.processor.bins.to_env_units(bins).float()
    assert torch.equal(out.actions, expected)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_eval_mode_is_deterministic_and_independent_of_padding(name):
    policy = tiny_policy(name)
    _randomize_value_head(policy)
    obs = observations(4)  # instructions of different lengths: rows are left-padded in the batch
    first, second = policy.predict(obs, mode="eval"), policy.predict(obs, mode="eval")
    assert torch.equal(first.actions, second.actions) and torch.equal(first.logprobs, second.logprobs)
    for i in range(4):
        alone = policy.predict({k: v[i : i + 1] for k, v in obs.items()}, mode="eval")
        assert torch.equal(alone.forward_inputs["action_tokens"][0], first.forward_inputs["action_tokens"][i])
        assert torch.allclose(alone.logprobs[0], first.logprobs[i], atol=1e-5)
        assert torch.allclose(alone.values[0], first.values[i], atol=1e-5)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_train_mode_samples_from_the_global_rng(name):
    policy = tiny_policy(name, temperature=5.0)
    obs = observations(6)
    torch.manual_seed(3)
    a = policy.predict(obs).forward_inputs["action_tokens"]
    torch.manual_seed(3)
    b = policy.predict(obs).forward_inputs["action_tokens"]
    c = policy.predict(obs).forward_inputs["action_tokens"]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_save_load_round_trip_is_exact(name, tmp_path):
    policy = tiny_policy(name)
    _randomize_value_head(policy)
    policy.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["timm_model_ids"][0].startswith("vit_large_patch14_reg4_dinov2")
    assert saved["policy"]["name"] == name and "norm_stats" in saved
    loaded = make_policy(policy.config.replace(pretrained=str(tmp_path)), env_spec())
    own, other = policy.state_dict(), loaded.state_dict()
    assert own.keys() == other.keys() and all(torch.equal(own[k], other[k]) for k in own)
    obs = observations(3)
    a, b = policy.predict(obs, mode="eval"), loaded.predict(obs, mode="eval")
    assert torch.equal(a.actions, b.actions) and torch.equal(a.logprobs, b.logprobs)
    assert torch.equal(a.values, b.values)


def test_saved_names_are_the_released_ones(tmp_path):
    from safetensors import safe_open

    tiny_policy("openvla").save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    prefixes = {n.split(".")[0] for n in names}
    assert prefixes == {"vision_backbone", "projector", "language_model", "value_head"}
    assert "language_model.lm_head.weight" in names
    assert "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in names
    assert "vision_backbone.fused_featurizer.attn_pool.latent" in names


def test_mismatching_checkpoint_names_the_first_bad_parameter(tmp_path):
    tiny_policy("openvla").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["timm_model_kwargs"][0]["embed_dim"] = 16  # the config no longer matches the weights
    (tmp_path / "config.json").write_text(json.dumps(config))
    # Tensors are checked in the file's (sorted) order: language_model.* still fits, the projector is first.
    with pytest.raises(
        ValueError, match=r"'projector\.fc1\.bias' has shape \(320,\) in the checkpoint but \(256,\)"
    ):
        tiny_policy("openvla", pretrained=str(tmp_path))


def test_value_head_shape_mismatch_is_named(tmp_path):
    tiny_policy("openvla_oft").save_pretrained(tmp_path)  # chunk values: fc2 has 1 output
    with pytest.raises(
        ValueError, match=r"'value_head\.fc2\.bias' has shape \(1,\) in the checkpoint but \(2,\)"
    ):
        tiny_policy("openvla_oft", pretrained=str(tmp_path), value_granularity="step")


def test_released_checkpoint_without_value_head_loads_and_missing_tensors_fail(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_policy("openvla").save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    save_file(
        {k: v for k, v in state.items() if not k.startswith("value_head.")},
        str(tmp_path / "model.safetensors"),
    )
    policy = tiny_policy("openvla", pretrained=str(tmp_path))
    assert policy.value_head is not None  # freshly initialised
    del state["projector.fc3.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks parameter 'projector.fc3.bias'"):
        tiny_policy("openvla", pretrained=str(tmp_path))


def test_sharded_checkpoints_round_trip(tmp_path, monkeypatch):
    import policies.openvla.policy as module

    monkeypatch.setattr(module, "MAX_SHARD_BYTES", 200_000)
    policy = tiny_policy("openvla")
    policy.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    loaded = make_policy(policy.config.replace(pretrained=str(tmp_path), dtype="bfloat16"), env_spec())
    assert loaded.model.language_model.lm_head.weight.dtype == torch.bfloat16
    assert loaded.value_head.fc1.weight.dtype == torch.float32
    ref = policy.model.language_model.lm_head.weight.to(torch.bfloat16)
    assert torch.equal(loaded.model.language_model.lm_head.weight, ref)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_lora_trains_adapters_and_value_head_only(name, tmp_path):
    policy = tiny_policy(name, lora={"rank": 4, "target_modules": ["all-linear"]})
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    assert any("vision_backbone" in n for n in frozen) and any("lm_head" in n for n in frozen)
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    out = policy.predict(observations(4))
    for _ in range(2):
        ev = policy.evaluate(out.forward_inputs)
        (-(ev.logprobs.sum()) + ev.values.square().sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    for n, p in policy.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} changed under LoRA"
    groups = policy.trainable_parameter_groups()
    assert groups["value"] and groups["policy"]
    # The saved checkpoint folds the adapters in and loads without LoRA, with the same behaviour.
    policy.save_pretrained(tmp_path)
    plain = make_policy(policy.config.replace(pretrained=str(tmp_path), lora={"rank": 0}), env_spec())
    obs = observations(3)
    a, b = policy.evaluate(out.forward_inputs), plain.evaluate(out.forward_inputs)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)
    assert torch.equal(policy.predict(obs, "eval").actions, plain.predict(obs, "eval").actions)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_gradient_checkpointing_gives_the_same_gradients(name):
    grads = []
    for enabled in (False, True):
        policy = tiny_policy(name, gradient_checkpointing=enabled)
        _randomize_value_head(policy)
        torch.manual_seed(0)
        out = policy.predict(observations(3))
        policy.train()
        ev = policy.evaluate(out.forward_inputs)
        (ev.logprobs.sum() + ev.values.sum() + ev.entropy.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    assert grads[0].shape == grads[1].shape
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_registry_builds_both_policies_from_plain_config_trees():
    assert {"openvla", "openvla_oft"} <= set(policy_registry.names())
    for name in POLICY_NAMES:
        config = PolicyConfig.from_dict({"name": name, "top_k": 5}, path="policy")
        assert type(config).__name__.lower().replace("config", "") == name.replace("_", "")
        assert policy_registry.get(name).config_class is type(config)


def test_oft_causal_and_bidirectional_attention_differ_only_in_the_mask():
    bidir = tiny_policy("openvla_oft", seed=4)
    causal = tiny_policy("openvla_oft", seed=4, attention="causal")
    obs = observations(2)
    out = bidir.predict(obs, "eval")
    a, b = bidir.evaluate(out.forward_inputs), causal.evaluate(out.forward_inputs)
    # The first token is read at the last prompt position: with the causal mask it cannot see the action slots.
    assert not torch.allclose(a.logprobs, b.logprobs, atol=1e-4)
    causal_out = causal.predict(obs, "eval")
    again = causal.evaluate(causal_out.forward_inputs)
    assert torch.allclose(again.logprobs, causal_out.logprobs, atol=1e-5)


@pytest.mark.parametrize("lora", [0, 4])
def test_runtime_checkpoints_load_for_evaluation_and_as_pretrained(lora, tmp_path):
    """The runtime writes the actor's gathered state dict with `write_pretrained` (the policy's own parameter
    names, LoRA included); eval-only rollout workers call `load_weights` on a policy built from the same config,
    and `policy.pretrained` may point at such a folder."""
    from policies.base import write_pretrained

    policy = tiny_policy("openvla_oft", lora={"rank": lora, "target_modules": ["all-linear"]})
    _randomize_value_head(policy)
    if lora:
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)  # adapters that changed the function
    write_pretrained(tmp_path, policy.config, env_spec(), policy.state_dict())
    obs = observations(3)
    expected = policy.predict(obs, mode="eval")

    same = tiny_policy("openvla_oft", seed=9, lora={"rank": lora, "target_modules": ["all-linear"]})
    weight = same.model.projector.fc1.weight
    same.load_weights(tmp_path)  # what an eval-only rollout worker does (its policy may sit on a GPU)
    assert same.model.projector.fc1.weight is weight  # copied into place, not replaced by CPU tensors
    assert torch.equal(
        same.predict(obs, "eval").forward_inputs["action_tokens"], expected.forward_inputs["action_tokens"]
    )

    continued = make_policy(policy.config.replace(pretrained=str(tmp_path)), env_spec())
    again = continued.evaluate(
        expected.forward_inputs
    )  # adapters folded into the weights: float rounding only
    assert torch.allclose(again.logprobs, expected.logprobs, atol=1e-5)
    assert torch.allclose(again.values, expected.values, rtol=1e-4, atol=1e-5)


def _fsdp_rank(rank: int, world: int, port: int) -> None:
    from embodied import fsdp

    torch.set_num_threads(1)
    fsdp.init_process_group("127.0.0.1", port, rank, world, "cpu")
    reference = tiny_policy("openvla_oft", lora={"rank": 4})
    sharded = fsdp.shard(tiny_policy("openvla_oft", lora={"rank": 4}), "cpu", "fp32", True)
    out = reference.predict(observations(4))
    ev = sharded.evaluate(out.forward_inputs)
    assert torch.allclose(ev.logprobs, reference.evaluate(out.forward_inputs).logprobs, atol=1e-5)
    (ev.logprobs.sum() + ev.values.sum()).backward()
    state = fsdp.full_state_dict(sharded)
    if rank == 0:
        own = reference.state_dict()
        assert state.keys() == own.keys() and all(torch.equal(state[k], own[k]) for k in own)
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and transformers: ~40 s on a loaded 2-core machine
def test_fsdp2_shards_the_transformer_blocks_and_gathers_the_full_state():
    pytest.importorskip("ray")  # embodied's FSDP helpers live with the runtime
    import torch.multiprocessing as mp

    from embodied.fsdp import free_port

    policy = tiny_policy("openvla_oft")
    units = policy.fsdp_units()
    assert len(units) == 3 + 3 + 2  # DINOv2 and SigLIP blocks, Llama layers
    mp.spawn(_fsdp_rank, args=(2, free_port()), nprocs=2)
