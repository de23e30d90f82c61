"""Options of the OpenVLA policies for models trained from scratch: OFT's proprio token (`use_proprio`), the
number of action bins (`action_bins`), the word tokenizer, and the tiny Llama's initialisation scale."""

from __future__ import annotations

import pytest
import torch
from openvla_common import env_spec, observations, one_thread, tiny_policy  # noqa: F401

from algorithms.schema import ConfigError
from policies.base import PolicyConfig
from policies.openvla.processing_openvla import ProprioNormalizer, WordTokenizer, openvla_prompt

pytest.importorskip("transformers")


def _obs_with_states(n: int = 4) -> dict:
    obs = observations(n)
    obs["states"] = torch.linspace(-1, 1, n * 4).reshape(n, 4)
    return obs


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_proprio_token_logprobs_match_evaluate_and_depend_on_the_state(mode):
    policy = tiny_policy("openvla_oft", use_proprio=True)
    obs = _obs_with_states()
    torch.manual_seed(1)
    out = policy.predict(obs, mode=mode)
    assert torch.equal(out.forward_inputs["proprio"], obs["states"])  # no proprio statistics: as they are
    again = policy.evaluate(out.forward_inputs)
    ratio = torch.exp(again.logprobs - out.logprobs)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5), (ratio - 1).abs().max()
    moved = dict(out.forward_inputs, proprio=out.forward_inputs["proprio"] + 1.0)
    assert not torch.allclose(policy.evaluate(moved).logprobs, again.logprobs)


def test_proprio_projector_saves_loads_and_is_optional_in_a_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file

    policy = tiny_policy("openvla_oft", use_proprio=True)
    policy.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert {"proprio_projector.fc1.weight", "proprio_projector.fc2.bias"} <= state.keys()
    loaded = tiny_policy("openvla_oft", use_proprio=True, pretrained=str(tmp_path))
    obs = _obs_with_states(3)
    assert torch.equal(policy.predict(obs, "eval").logprobs, loaded.predict(obs, "eval").logprobs)
    save_file({k: v for k, v in state.items() if not k.startswith("proprio_projector.")}, str(tmp_path / "model.safetensors"))  # fmt: skip
    fresh = tiny_policy("openvla_oft", seed=5, use_proprio=True, pretrained=str(tmp_path))
    assert not torch.equal(fresh.proprio_projector.fc1.weight, policy.proprio_projector.fc1.weight)
    assert torch.equal(fresh.model.projector.fc1.weight, policy.model.projector.fc1.weight)


def test_proprio_normaliser_uses_checkpoint_statistics():
    norm = ProprioNormalizer(2, q01=[0.0, -2.0], q99=[1.0, 2.0])
    out = norm(torch.tensor([[0.5, 2.0], [2.0, -4.0]]))
    assert torch.allclose(out, torch.tensor([[0.0, 1.0], [1.0, -1.0]]))  # mapped to [-1, 1] and clipped
    with pytest.raises(ValueError, match="states must be"):
        norm(torch.zeros(3, 4))


def test_action_bins_sets_the_vocabulary_and_the_actions():
    policy = tiny_policy("openvla_oft", action_bins=16)
    ckpt = policy.model.checkpoint_config
    assert ckpt.n_action_bins == 16 and policy.action_end - policy.action_start == 16
    assert policy.action_start == WordTokenizer.vocab_size  # the action tokens follow the 259 text ids
    out = policy.predict(observations(6), mode="train")
    assert int(out.forward_inputs["action_tokens"].max()) < 16
    centres = policy.processor.bins.normalized(torch.arange(16))
    assert (
        len(torch.unique(centres)) == 15
    )  # OpenVLA's convention: n - 1 bin centres, the last two tokens share one
    with pytest.raises(ConfigError, match="action_bins=16"):
        PolicyConfig.from_dict(
            {"name": "openvla", "architecture": "openvla-7b", "action_bins": 16}, path="policy"
        )


def test_word_tokenizer_gives_short_prompts_in_the_byte_vocabulary():
    tok = WordTokenizer()
    ids = tok.encode(openvla_prompt("move the cursor to the red target"))
    assert ids[0] == 1 and len(ids) == 21 and all(3 <= i < 259 for i in ids[1:])
    other = tok.encode(openvla_prompt("move the cursor to the blue target"))
    assert [i for i, (a, b) in enumerate(zip(ids, other)) if a != b] == [15]  # only the colour word differs
    policy = tiny_policy("openvla_oft", tokenizer="word", max_prompt_length=24)
    out = policy.predict(observations(2), mode="eval")
    assert out.forward_inputs["input_ids"].shape == (2, 24)


def test_tiny_llama_is_initialised_at_one_over_sqrt_width():
    policy = tiny_policy("openvla_oft")
    q = policy.model.language_model.model.layers[0].self_attn.q_proj.weight
    assert abs(q.std().item() - 64**-0.5) < 0.01
