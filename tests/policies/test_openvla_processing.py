"""OpenVLA processing and configuration: prompt, tokenizers, padding layout, images, action bins, config errors."""

from __future__ import annotations

import pytest
import torch
from openvla_common import env_spec, one_thread, tiny_policy  # noqa: F401

from algorithms.schema import ConfigError
from policies.base import PolicyConfig
from policies.openvla.configuration_openvla import OpenVLACheckpointConfig
from policies.openvla.processing_openvla import (
    ActionBins,
    ByteTokenizer,
    HFTokenizer,
    ImageTransform,
    PromptEncoder,
    load_tokenizer,
    openvla_prompt,
)
from policies.openvla.vision import vit_spec

pytest.importorskip("transformers")


def test_prompt_is_openvlas_with_the_instruction_lower_cased():
    assert openvla_prompt("Put The Cup In The Sink") == (
        "In: What action should the robot take to put the cup in the sink?\nOut:"
    )


def test_byte_tokenizer_and_left_padding_layout():
    tok = ByteTokenizer()
    assert tok.encode("Ab") == [1, 65 + 3, 98 + 3] and tok.decode(tok.encode("héllo")) == "héllo"
    short, long = tok.encode(openvla_prompt("a")), tok.encode(openvla_prompt("abc"))
    ids, mask = PromptEncoder(tok, pad_token_id=515, length=len(long))(["a", "abc"])
    assert ids.shape == (2, len(long)) and ids[1].tolist() == long
    pad = len(long) - len(short)
    assert (
        ids[0, 0].item() == 1
        and ids[0, 1 : 1 + pad].eq(515).all()
        and ids[0, 1 + pad :].tolist() == short[1:]
    )
    assert mask[0].tolist() == [1] + [0] * pad + [1] * (len(short) - 1) and mask[1].eq(1).all()
    ids, _ = PromptEncoder(tok, pad_token_id=515, length=len(long) + 5)(["abc"])
    assert ids.shape == (1, len(long) + 5) and ids[0, 1:6].eq(515).all()
    with pytest.raises(ValueError, match="'abc' has 51 tokens, more than policy.max_prompt_length=50"):
        PromptEncoder(tok, pad_token_id=515, length=len(long) - 1)(["a", "abc"])


def _save_tiny_hf_tokenizer(directory) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "▁In:": 4, "▁What": 5, "▁action": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(directory))


def test_checkpoint_tokenizer_is_used_when_present_and_gets_the_trailing_space_token(tmp_path):
    assert isinstance(load_tokenizer("auto", str(tmp_path)), ByteTokenizer)  # no tokenizer files: built-in
    _save_tiny_hf_tokenizer(tmp_path)
    tok = load_tokenizer("auto", str(tmp_path))
    assert isinstance(tok, HFTokenizer)
    ids = tok.encode(openvla_prompt("x"))
    assert ids[:3] == [1, 4, 5] and ids[-1] == 3  # BOS ... and the "▁" OpenVLA appends after "Out:"
    assert isinstance(load_tokenizer("builtin", str(tmp_path)), ByteTokenizer)
    with pytest.raises(FileNotFoundError, match="auto, builtin, word or a tokenizer folder"):
        load_tokenizer(str(tmp_path / "missing"), None)


def test_image_transform_resizes_and_normalises_per_tower():
    transform = ImageTransform(
        28, [(0.485, 0.456, 0.406), (0.5, 0.5, 0.5)], [(0.229, 0.224, 0.225), (0.5,) * 3]
    )
    images = torch.full((2, 64, 48, 3), 128, dtype=torch.uint8)
    out = transform(images)
    assert out.shape == (2, 6, 28, 28)
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406, 0.5, 0.5, 0.5])) / torch.tensor(
        [0.229, 0.224, 0.225, 0.5, 0.5, 0.5]
    )
    assert torch.allclose(out[0, :, 5, 7], expected, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        transform(images.float())


def test_action_bins_follow_openvlas_decoding():
    bins = ActionBins(256, q01=[-2.0, 0.0], q99=[2.0, 1.0], mask=[True, False])
    centres = bins.bin_centers
    assert centres.shape == (255,) and centres[0].item() == pytest.approx(-1 + 1 / 255)
    index = torch.tensor([[0, 0], [255, 255], [127, 127]])
    actions = bins.to_env_units(index)
    # index j -> bin clip(255 - j, 0, 254); masked dims: 0.5 (x + 1)(q99 - q01) + q01; unmasked stay normalised.
    assert actions[0].tolist() == pytest.approx([2 * centres[254].item(), centres[254].item()])
    assert actions[1].tolist() == pytest.approx([2 * centres[0].item(), centres[0].item()])
    assert actions[2].tolist() == pytest.approx([2 * centres[128].item(), centres[128].item()])


def test_checkpoint_config_reads_released_fields_with_official_defaults():
    released = {
        "text_config": {
            "model_type": "llama",
            "pad_token_id": 32000,
            "vocab_size": 32064,
            "torch_dtype": "bfloat16",
        },
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        "image_sizes": [224, 224],
        "norm_stats": {
            "a": {"action": {"q01": [0.0], "q99": [1.0]}},
            "b": {"action": {"q01": [0.0], "q99": [2.0]}},
        },
        "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig"},
        "n_action_bins": 256,
        "pad_to_multiple_of": 64,
    }
    ckpt = OpenVLACheckpointConfig.from_dict(released)
    llama = ckpt.llama_kwargs()
    assert (llama["hidden_size"], llama["num_hidden_layers"], llama["rms_norm_eps"]) == (4096, 32, 1e-6)
    assert "torch_dtype" not in llama and (ckpt.action_vocab_start, ckpt.action_vocab_end) == (31744, 32000)
    dino, siglip = ckpt.vit_specs()
    assert (dino.embed_dim, dino.depth, dino.num_prefix_tokens, dino.num_patches) == (1024, 24, 5, 256)
    assert (siglip.embed_dim, siglip.depth, siglip.mlp_hidden, siglip.num_prefix_tokens) == (
        1152,
        27,
        4304,
        0,
    )
    assert ckpt.to_dict()["auto_map"] == released["auto_map"] and "timm_model_kwargs" not in ckpt.to_dict()
    with pytest.raises(ConfigError, match="unnorm_key is required.*a, b"):
        ckpt.action_stats(None)
    with pytest.raises(ConfigError, match="'c' is not in the checkpoint's norm_stats; known keys: a, b"):
        ckpt.action_stats("c")
    assert ckpt.action_stats("b")[1]["mask"] == [True]


def test_config_errors_say_what_to_change():
    with pytest.raises(ConfigError, match="image_size=30 must be a multiple of the patch size 14"):
        PolicyConfig.from_dict({"name": "openvla", "image_size": 30}, path="policy")
    with pytest.raises(ConfigError, match="policy.attention"):
        PolicyConfig.from_dict({"name": "openvla_oft", "attention": "full"}, path="policy")
    with pytest.raises(ValueError, match="top_k=300 exceeds the 256 action bins"):
        tiny_policy("openvla", top_k=300)
    with pytest.raises(ValueError, match="unknown vision backbone 'vit_tiny'"):
        vit_spec("vit_tiny", 224, None, None)
    with pytest.raises(ValueError, match="unsupported keys \\['depht'\\]"):
        vit_spec("vit_so400m_patch14_siglip_224", 224, {"depht": 2}, None)


def test_env_action_dim_must_match_the_checkpoint_statistics(tmp_path):
    tiny_policy("openvla", spec=env_spec(action_dim=3)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="norm_stats\\['env'\\] has 3 action dims but the env has 2"):
        tiny_policy("openvla", spec=env_spec(action_dim=2), pretrained=str(tmp_path))


def test_observations_without_images_are_refused():
    policy = tiny_policy("openvla_oft")
    with pytest.raises(KeyError, match="main_images"):
        policy.predict({"states": torch.zeros(2, 4), "task_descriptions": ["a", "b"]})


def test_fresh_towers_tell_patches_apart_by_position():
    """On a uniform image every patch has the same content, so what differs between patch features is position.
    A fresh tower must carry that (its pos_embed is drawn at std 0.5; at timm's 0.02 a tiny VLA trained from
    scratch could not tell left from right)."""
    torch.manual_seed(0)
    policy = tiny_policy("openvla_oft")
    pixels = policy.processor.images(torch.full((1, 28, 28, 3), 90, dtype=torch.uint8))
    with torch.no_grad():
        features = policy.model.vision_backbone(pixels)[0]  # [4 patches, 80]
    spread = (features - features.mean(0)).norm(dim=-1).mean()
    assert spread > 0.3 * features.norm(dim=-1).mean()
