"""The causal LM policy: rollout log-probs equal the recomputed ones, response masks, greedy evaluation, the value
head, the Hugging Face layout (save, AutoModel/AutoTokenizer load, a Qwen2 checkpoint with a chat template)."""

from __future__ import annotations

import math

import pytest
import torch

from envs.math import math_env_spec
from policies import PolicyConfig, make_policy
from policies.causal_lm import build_char_tokenizer
from policies.causal_lm.modeling import response_mask, token_logprobs

PROMPTS = ["What is 1 + 2?", "What is 17 - 5?", "What is 3 * 4?", "Hi?"]  # different lengths: left padding
VOCAB = len(build_char_tokenizer())


def policy_for(length=6, vocab=VOCAB, **overrides):
    config = {"name": "causal_lm", "max_prompt_tokens": 24, "scratch": {"hidden_size": 32, "seed": 1}}
    config.update(overrides)
    return make_policy(PolicyConfig.from_dict(config, path="policy"), math_env_spec(10, length, vocab))


@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 1.0}, {"temperature": 0.7, "top_k": 5, "top_p": 0.9}],
    ids=["plain", "temperature-topk-topp"],
)
def test_rollout_logprobs_equal_recomputed_ones(sampling):
    torch.manual_seed(0)
    policy = policy_for(**sampling)
    out = policy.predict({"task_descriptions": PROMPTS * 2})
    assert out.actions.shape == out.logprobs.shape == out.logprob_mask.shape == (8, 1, 6)
    assert out.logprob_mask.any(-1).all()
    evaluated = policy.evaluate(out.forward_inputs)
    torch.testing.assert_close(evaluated.logprobs, out.logprobs, atol=1e-5, rtol=0)
    # a different batch (other rows, other order: other common padding) gives the same numbers
    rows = torch.tensor([5, 3, 0])
    again = policy.evaluate({k: v[rows] for k, v in out.forward_inputs.items()})
    torch.testing.assert_close(again.logprobs, out.logprobs[rows], atol=1e-5, rtol=0)
    assert (evaluated.entropy[out.logprob_mask] > 0).all() and (
        evaluated.entropy[~out.logprob_mask] == 0
    ).all()


def test_response_mask_padding_and_actions():
    torch.manual_seed(3)
    policy = policy_for(length=12)
    out = policy.predict({"task_descriptions": PROMPTS})
    mask, actions = out.logprob_mask[:, 0], out.actions[:, 0]
    eos = policy.tokenizer.eos_token_id
    for row in range(len(PROMPTS)):
        n = int(mask[row].sum())
        assert mask[row, :n].all() and not mask[row, n:].any()  # a prefix
        assert (actions[row, n:] == -1).all() and (actions[row, :n] >= 0).all()
        assert (out.logprobs[row, 0, n:] == 0).all()
        body = actions[row, :n].long()
        assert not (body[:-1] == eos).any()  # EOS can only be the last response token
    ids = torch.tensor([[5, 6, 2, 7], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert response_mask(ids, [2]).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_eval_mode_is_greedy_and_train_mode_samples():
    policy = policy_for(length=8, temperature=1.5)
    obs = {"task_descriptions": PROMPTS}
    first, second = policy.predict(obs, mode="eval"), policy.predict(obs, mode="eval")
    assert torch.equal(first.actions, second.actions)
    logits = policy.model(**_prompt_batch(policy, PROMPTS[:1])).logits[0, -1]
    assert int(first.actions[0, 0, 0]) == int(logits.argmax())
    torch.manual_seed(0)
    sampled = [policy.predict(obs).actions for _ in range(3)]
    assert not all(torch.equal(sampled[0], s) for s in sampled[1:])


def _prompt_batch(policy, prompts):
    ids, mask = policy.prompts.encode(prompts)
    return {
        "input_ids": ids,
        "attention_mask": mask.long(),
        "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0),
    }


def test_token_logprobs_and_entropy_by_hand():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]])
    logprobs, entropy = token_logprobs(logits, torch.tensor([[1, 0]]), temperature=2.0)
    assert logprobs[0, 0] == pytest.approx(-math.log(4))
    assert entropy[0, 0] == pytest.approx(math.log(4))
    p = torch.softmax(torch.tensor([1.0, 0, 0, 0]), 0)  # logits / T
    assert logprobs[0, 1] == pytest.approx(float(p[0].log()))
    assert entropy[0, 1] == pytest.approx(float(-(p * p.log()).sum()))


def test_value_head_values_gradients_and_parameter_groups():
    torch.manual_seed(0)
    policy = policy_for(value_head=True)
    torch.nn.init.normal_(policy.value_head.weight)
    out = policy.predict({"task_descriptions": PROMPTS})
    assert out.values.shape == (4,)
    evaluated = policy.evaluate(out.forward_inputs)
    torch.testing.assert_close(evaluated.values, out.values, atol=1e-5, rtol=0)
    (evaluated.values.sum() + evaluated.logprobs.sum()).backward()
    assert policy.value_head.weight.grad.abs().sum() > 0
    groups = policy.trainable_parameter_groups()
    assert [id(p) for p in groups["value"]] == [id(p) for p in policy.value_head.parameters()]
    assert len(groups["policy"]) == len(list(policy.model.parameters()))


def test_save_and_load_in_hugging_face_layout(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    policy = policy_for(value_head=True)
    torch.nn.init.normal_(policy.value_head.weight)
    policy.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "value_head.safetensors"} <= {
        p.name for p in tmp_path.iterdir()
    }
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("12")["input_ids"] == policy.tokenizer("12")["input_ids"]
    batch = _prompt_batch(policy, PROMPTS)
    torch.testing.assert_close(hf_model(**batch).logits, policy.model(**batch).logits)
    loaded = policy_for(value_head=True, pretrained=str(tmp_path))
    out = policy.predict({"task_descriptions": PROMPTS})
    other = loaded.evaluate(out.forward_inputs)
    torch.testing.assert_close(other.logprobs, out.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(other.values, out.values)
    fresh = policy_for(value_head=True)
    fresh.load_weights(tmp_path)
    torch.testing.assert_close(fresh.evaluate(out.forward_inputs).logprobs, out.logprobs, atol=1e-5, rtol=0)


def test_runtime_checkpoints_in_the_suite_layout_load_too(tmp_path):
    from policies.base import write_pretrained

    torch.manual_seed(0)
    policy = policy_for(value_head=True)
    torch.nn.init.normal_(policy.value_head.weight)
    write_pretrained(tmp_path, policy.config, policy.env_spec, policy.state_dict())  # tied embeddings inside
    fresh = policy_for(value_head=True)
    fresh.load_weights(tmp_path)
    out = policy.predict({"task_descriptions": PROMPTS})
    evaluated = fresh.evaluate(out.forward_inputs)
    torch.testing.assert_close(evaluated.logprobs, out.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(evaluated.values, out.values)


def test_a_qwen2_checkpoint_with_a_chat_template_loads_from_a_local_folder(tmp_path):
    """The path real checkpoints take: AutoModelForCausalLM + AutoTokenizer from disk, the chat template applied,
    every end-of-turn id of the generation config ending a response."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_char_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # make <|im_end|> likely, so some responses end with it
        model.lm_head.weight[im_end] = (
            model.lm_head.weight[im_end] * 0 + 0.5 * model.model.embed_tokens.weight.std()
        )
    model.generation_config = GenerationConfig(
        eos_token_id=[im_end, tokenizer.eos_token_id],
        do_sample=True,
        top_k=3,
        temperature=9.0,
        repetition_penalty=2.0,
    )
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    policy = policy_for(
        vocab=len(tokenizer),
        length=10,
        pretrained=str(tmp_path),
        max_prompt_tokens=48,
        system_prompt="Brief.",
    )
    assert type(policy.model).__name__ == "Qwen2ForCausalLM"
    assert im_end in policy.eos_ids and policy.tokenizer.eos_token_id in policy.eos_ids
    settings = policy.model.generation_config  # the checkpoint's sampling settings do not leak in
    assert settings.top_k is None and settings.temperature is None and settings.repetition_penalty is None
    # (AutoTokenizer picks Qwen2Tokenizer for a qwen2 folder, whose byte-level pre-tokenizer drops the spaces of
    # this character vocabulary: the texts here have none)
    ids, mask = policy.prompts.encode(["2+2?"])
    assert (
        policy.tokenizer.decode(ids[0][mask[0]]) == "<system>Brief.<|im_end|><user>2+2?<|im_end|><assistant>"
    )
    torch.manual_seed(0)
    out = policy.predict({"task_descriptions": PROMPTS * 4})
    torch.testing.assert_close(policy.evaluate(out.forward_inputs).logprobs, out.logprobs, atol=1e-5, rtol=0)
    lengths = out.logprob_mask[:, 0].sum(-1)
    ended = out.actions[torch.arange(16), 0, (lengths - 1).clamp(min=0)] == im_end
    assert ended.any() and (lengths[ended] < 10).all()  # <|im_end|> ends a response


def test_errors_a_user_can_act_on(tmp_path):
    with pytest.raises(ValueError, match="more than policy.max_prompt_tokens=24"):
        policy_for().predict({"task_descriptions": ["x" * 30]})
    with pytest.raises(ValueError, match="point env.tokenizer at the policy's model folder"):
        policy_for(vocab=VOCAB + 5)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        policy_for(pretrained=str(tmp_path))


def test_fsdp2_sharded_evaluate_matches_and_units_are_the_decoder_layers(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    torch.manual_seed(0)
    policy = policy_for(value_head=True)
    units = policy.fsdp_units()
    assert [type(u).__name__ for u in units] == ["LlamaDecoderLayer"] * 2
    out = policy.predict({"task_descriptions": PROMPTS})
    expected = policy.evaluate(out.forward_inputs)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        for unit in units:
            fully_shard(unit, mesh=mesh)
        fully_shard(policy, mesh=mesh)
        register_fsdp_forward_method(policy, "evaluate")
        sharded = policy.evaluate(out.forward_inputs)
        (sharded.logprobs.sum() + sharded.values.sum()).backward()
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(sharded.logprobs, expected.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(sharded.values, expected.values, atol=1e-5, rtol=0)
