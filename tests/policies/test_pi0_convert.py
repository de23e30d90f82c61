"""The openpi JAX -> PyTorch converter (policies/pi0/convert_jax.py) on tiny pi0 and pi0.5 parameter trees.

The test builds openpi's tree from a random tiny PyTorch model, first checking with jax.numpy that every tensor
has openpi's meaning (the einsums of openpi's gemma.py and big_vision's ViT applied to the tree give what the
PyTorch layers give; for pi0.5 also the adaptive RMSNorm's Dense_0: scale, shift, gate), then saves it with orbax,
converts it and loads the result as a policy: the weights and the sampled actions equal the original model's.
"""

import json

import numpy as np
import pytest
import torch

from envs.base import EnvSpec
from policies import make_policy
from policies.pi0 import GemmaSize, Pi0Config, Pi0FlowModel, SiglipSize
from policies.pi0.convert_jax import DENSE_HEADS, convert_checkpoint, convert_params
from policies.pi0.modeling_pi0 import PaliGemmaFlowModel, Pi0Inputs
from policies.pi05 import Pi05Config, Pi05FlowModel

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
ocp = pytest.importorskip("orbax.checkpoint")

CONFIG = Pi0Config(
    vlm=GemmaSize(width=32, depth=2, mlp_dim=48, num_heads=4, num_kv_heads=1, head_dim=8),
    expert=GemmaSize(width=16, depth=2, mlp_dim=24, num_heads=4, num_kv_heads=1, head_dim=8),
    vision=SiglipSize(
        hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24, patch_size=4, image_size=16
    ),
    vocab_size=50,
    chunk_size=5,
    max_state_dim=6,
    max_action_dim=6,
)
ARCH = ("vlm", "expert", "vision", "vocab_size", "chunk_size", "max_state_dim", "max_action_dim")
SPEC = EnvSpec(
    action_dim=6, action_low=(-1.0,) * 6, action_high=(1.0,) * 6, state_dim=6, image_size=(16, 16),
    has_wrist_image=False, max_episode_steps=10, num_initial_states=None,
)  # fmt: skip


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


VARIANTS = {"pi0": (Pi0Config, Pi0FlowModel), "pi05": (Pi05Config, Pi05FlowModel)}


def _tiny_model(variant: str = "pi0") -> PaliGemmaFlowModel:
    config_class, model_class = VARIANTS[variant]
    torch.manual_seed(0)
    model = model_class(config_class(**{f: getattr(CONFIG, f) for f in ARCH}))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return model


def _gemma_tree(tower, size: GemmaSize, suffix: str) -> dict:
    n, h, d = size.num_heads, size.head_dim, size.width
    layers = tower.layers
    stack = lambda f: np.stack([f(layer) for layer in layers])  # noqa: E731
    attn = {
        f"q_einsum{suffix}": {
            "w": stack(lambda ly: _np(ly.self_attn.q_proj.weight.view(n, h, d).permute(0, 2, 1)))
        },
        f"kv_einsum{suffix}": {
            "w": stack(
                lambda ly: np.stack(
                    [
                        _np(p.weight.view(size.num_kv_heads, h, d).permute(0, 2, 1))
                        for p in (ly.self_attn.k_proj, ly.self_attn.v_proj)
                    ]
                )
            )
        },
        f"attn_vec_einsum{suffix}": {
            "w": stack(lambda ly: _np(ly.self_attn.o_proj.weight.T.reshape(n, h, d)))
        },
    }
    mlp = {
        "gating_einsum": stack(
            lambda ly: np.stack([_np(ly.mlp.gate_proj.weight.T), _np(ly.mlp.up_proj.weight.T)])
        ),
        "linear": stack(lambda ly: _np(ly.mlp.down_proj.weight.T)),
    }
    norms = {
        f"pre_attention_norm{suffix}": _norm_tree([ly.input_layernorm for ly in layers]),
        f"pre_ffw_norm{suffix}": _norm_tree([ly.post_attention_layernorm for ly in layers]),
    }
    return {"attn": attn, f"mlp{suffix}": mlp, **norms}


def _norm_tree(norms: list) -> dict:
    """openpi's RMSNorm parameters stacked over layers: `scale` [L, D], or adaRMS `Dense_0` (flax Dense: kernel
    [L, cond, 3 D], bias [L, 3 D])."""
    if not norms[0].adaptive:
        return {"scale": np.stack([_np(n.weight) for n in norms])}
    return {"Dense_0": {"kernel": np.stack([_np(n.dense.weight.T) for n in norms]),
                        "bias": np.stack([_np(n.dense.bias) for n in norms])}}  # fmt: skip


def _first(tree: dict) -> dict:
    return jax.tree.map(lambda a: a[0], tree)


def _vision_tree(vision) -> dict:
    heads, hidden = CONFIG.vision.num_heads, CONFIG.vision.hidden_size
    layers = vision.encoder.layers
    stack = lambda f: np.stack([f(layer) for layer in layers])  # noqa: E731

    def dense_general(proj):
        return {"kernel": stack(lambda ly: _np(proj(ly).weight.T.reshape(hidden, heads, -1))),
                "bias": stack(lambda ly: _np(proj(ly).bias.reshape(heads, -1)))}  # fmt: skip

    block = {
        "LayerNorm_0": {"scale": stack(lambda ly: _np(ly.layer_norm1.weight)), "bias": stack(lambda ly: _np(ly.layer_norm1.bias))},
        "LayerNorm_1": {"scale": stack(lambda ly: _np(ly.layer_norm2.weight)), "bias": stack(lambda ly: _np(ly.layer_norm2.bias))},
        "MlpBlock_0": {
            f"Dense_{i}": {"kernel": stack(lambda ly, i=i: _np(getattr(ly.mlp, f"fc{i + 1}").weight.T)),
                           "bias": stack(lambda ly, i=i: _np(getattr(ly.mlp, f"fc{i + 1}").bias))}
            for i in (0, 1)
        },
        "MultiHeadDotProductAttention_0": {
            "query": dense_general(lambda ly: ly.self_attn.q_proj),
            "key": dense_general(lambda ly: ly.self_attn.k_proj),
            "value": dense_general(lambda ly: ly.self_attn.v_proj),
            "out": {"kernel": stack(lambda ly: _np(ly.self_attn.out_proj.weight.T.reshape(heads, -1, hidden))),
                    "bias": stack(lambda ly: _np(ly.self_attn.out_proj.bias))},
        },
    }  # fmt: skip
    return {
        "embedding": {"kernel": _np(vision.embeddings.patch_embedding.weight.permute(2, 3, 1, 0)),
                      "bias": _np(vision.embeddings.patch_embedding.bias)},
        "pos_embedding": _np(vision.embeddings.position_embedding.weight)[None],
        "Transformer": {"encoderblock": block, "encoder_norm": {"scale": _np(vision.post_layernorm.weight),
                                                                "bias": _np(vision.post_layernorm.bias)}},
    }  # fmt: skip


def openpi_tree(model: PaliGemmaFlowModel) -> dict:
    """The parameter tree openpi's Pi0 (pi05=True for a `Pi05FlowModel`) would hold for `model`'s weights."""
    vlm = model.language_model
    expert = model.paligemma_with_expert.gemma_expert.model
    layers = _gemma_tree(vlm, CONFIG.vlm, "")
    expert_layers = _gemma_tree(expert, CONFIG.expert, "_1")
    layers["attn"].update(expert_layers.pop("attn"))
    layers.update(expert_layers)
    img = _vision_tree(model.vision_tower.vision_model)
    img["head"] = {"kernel": _np(model.projector.linear.weight.T), "bias": _np(model.projector.linear.bias)}
    llm = {
        "embedder": {"input_embedding": _np(vlm.embed_tokens.weight)},
        "layers": layers,
        "final_norm": _first(_norm_tree([vlm.norm])),
        "final_norm_1": _first(_norm_tree([expert.norm])),
    }
    tree = {"PaliGemma": {"img": img, "llm": llm}}
    for name in DENSE_HEADS["pi05" if isinstance(model, Pi05FlowModel) else "pi0"]:
        linear = getattr(model, name)
        tree[name] = {"kernel": _np(linear.weight.T), "bias": _np(linear.bias)}
    return tree


@torch.no_grad()
def test_the_tree_has_openpi_semantics():
    """openpi's einsums on the tree reproduce the PyTorch layers (so the tree is what openpi would hold)."""
    model, rng = _tiny_model(), np.random.default_rng(0)
    tree = openpi_tree(model)
    layer, attn = model.language_model.layers[1], tree["PaliGemma"]["llm"]["layers"]["attn"]
    x = rng.standard_normal((2, 3, CONFIG.vlm.width)).astype(np.float32)
    xt = torch.from_numpy(x)
    q = jnp.einsum("BTD,NDH->BTNH", x, attn["q_einsum"]["w"][1])
    np.testing.assert_allclose(q, _np(layer.self_attn.q_proj(xt).view(2, 3, 4, 8)), atol=1e-5)
    k, v = jnp.einsum("BSD,2KDH->2BSKH", x, attn["kv_einsum"]["w"][1])
    np.testing.assert_allclose(k, _np(layer.self_attn.k_proj(xt).view(2, 3, 1, 8)), atol=1e-5)
    np.testing.assert_allclose(v, _np(layer.self_attn.v_proj(xt).view(2, 3, 1, 8)), atol=1e-5)
    enc = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    out = jnp.einsum("BTNH,NHD->BTD", enc, attn["attn_vec_einsum"]["w"][1])
    np.testing.assert_allclose(
        out, _np(layer.self_attn.o_proj(torch.from_numpy(enc).reshape(2, 3, 32))), atol=1e-5
    )
    mlp = tree["PaliGemma"]["llm"]["layers"]["mlp"]
    gated = jax.nn.gelu(x @ mlp["gating_einsum"][1][0]) * (x @ mlp["gating_einsum"][1][1])
    np.testing.assert_allclose(gated @ mlp["linear"][1], _np(layer.mlp(xt)), atol=1e-5)
    img = tree["PaliGemma"]["img"]
    pixels = rng.standard_normal((1, 16, 16, 3)).astype(np.float32)
    patches = (
        jax.lax.conv_general_dilated(
            pixels, img["embedding"]["kernel"], (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + img["embedding"]["bias"]
    )
    torch_patches = model.vision_tower.vision_model.embeddings.patch_embedding(
        torch.from_numpy(pixels).permute(0, 3, 1, 2)
    )
    np.testing.assert_allclose(patches, _np(torch_patches.permute(0, 2, 3, 1)), atol=1e-5)
    vit_attn = img["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_0"]
    y = rng.standard_normal((2, 5, 16)).astype(np.float32)
    vq = jnp.einsum("...d,dnh->...nh", y, vit_attn["query"]["kernel"][0]) + vit_attn["query"]["bias"][0]
    siglip = model.vision_tower.vision_model.encoder.layers[0].self_attn
    np.testing.assert_allclose(vq, _np(siglip.q_proj(torch.from_numpy(y)).view(2, 5, 2, 8)), atol=1e-5)
    vo = (
        jnp.einsum("...nh,nhd->...d", y.reshape(2, 5, 2, 8), vit_attn["out"]["kernel"][0])
        + vit_attn["out"]["bias"][0]
    )
    np.testing.assert_allclose(vo, _np(siglip.out_proj(torch.from_numpy(y))), atol=1e-5)


@torch.no_grad()
def test_the_adarms_tree_has_openpi_semantics():
    """openpi's adaptive RMSNorm on the tree: modulation = Dense_0(cond), split into scale, shift, gate; the output is
    norm(x) * (1 + scale) + shift. The converted dense layer gives the same."""
    model, rng = _tiny_model("pi05"), np.random.default_rng(0)
    norm = model.paligemma_with_expert.gemma_expert.model.layers[1].post_attention_layernorm
    with torch.no_grad():
        norm.dense.weight.normal_()
        norm.dense.bias.normal_()
    dense = openpi_tree(model)["PaliGemma"]["llm"]["layers"]["pre_ffw_norm_1"]["Dense_0"]
    x = rng.standard_normal((2, 3, CONFIG.expert.width)).astype(np.float32)
    cond = rng.standard_normal((2, CONFIG.expert.width)).astype(np.float32)
    modulation = cond @ dense["kernel"][1] + dense["bias"][1]
    scale, shift, gate = jnp.split(modulation[:, None, :], 3, axis=-1)
    normed = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6)
    expected = normed * (1 + scale) + shift
    np.testing.assert_allclose(expected, _np(norm(torch.from_numpy(x), torch.from_numpy(cond))), atol=1e-5)
    np.testing.assert_allclose(gate, _np(norm.gate(torch.from_numpy(cond))), atol=1e-5)
    state = convert_params(openpi_tree(model))
    name = "paligemma_with_expert.gemma_expert.model.layers.1.post_attention_layernorm.dense.weight"
    assert torch.equal(state[name], norm.dense.weight)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_orbax_checkpoint_converts_to_a_loadable_policy_with_equal_outputs(tmp_path, variant):
    model = _tiny_model(variant)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # adaRMS modulations start at zero: make them count
    ckpt = tmp_path / f"{variant}_tiny"
    with ocp.PyTreeCheckpointer() as checkpointer:
        # openpi training checkpoints wrap every leaf in {"value": ...}; released ones do not: cover the former
        wrapped = jax.tree.map(lambda a: {"value": a}, openpi_tree(model))
        checkpointer.save((ckpt / "params").resolve(), {"params": wrapped})
    identity = {"mean": [0.0] * 6, "std": [1.0] * 6, "q01": [-1.0] * 6, "q99": [1.0] * 6}
    stats = {"norm_stats": {"state": identity, "actions": identity}}
    (ckpt / "assets" / "robot").mkdir(parents=True)
    (ckpt / "assets" / "robot" / "norm_stats.json").write_text(json.dumps(stats))

    out = tmp_path / "converted"
    assert convert_checkpoint(ckpt, out, action_horizon=CONFIG.chunk_size) == variant
    config = json.loads((out / "config.json").read_text())
    assert config["type"] == variant and config["chunk_size"] == 5 and (out / "norm_stats.json").is_file()

    config_class = VARIANTS[variant][0]
    policy = make_policy(config_class(pretrained=str(out), norm_stats=str(out / "norm_stats.json")), SPEC)
    for field in ARCH:
        assert getattr(policy.config, field) == getattr(CONFIG, field), field
    assert policy.config.normalization == ("quantile" if variant == "pi05" else "mean_std")
    own, converted = model.state_dict(), policy.model.state_dict()
    assert own.keys() == converted.keys()
    assert all(torch.equal(own[k], converted[k]) for k in own)

    torch.manual_seed(1)
    inputs = Pi0Inputs(
        images=torch.rand(2, 1, 3, 16, 16) * 2 - 1,
        image_masks=torch.ones(2, 1, dtype=torch.bool),
        lang_tokens=torch.randint(0, 50, (2, 7)),
        lang_masks=torch.ones(2, 7, dtype=torch.bool),
        state=torch.randn(2, 6),
    )
    noise = torch.randn(2, 5, 6)
    torch.testing.assert_close(
        policy.model.sample_actions(inputs, noise, 3), model.sample_actions(inputs, noise, 3), rtol=0, atol=0
    )


def test_equal_query_and_kv_heads_use_the_fused_qkv_einsum():
    model = _tiny_model()
    tree = openpi_tree(model)
    attn = tree["PaliGemma"]["llm"]["layers"]["attn"]
    q, kv = attn.pop("q_einsum"), attn.pop("kv_einsum")
    # num_kv_heads == num_heads in openpi stores [L, 3, N, D, H]; emulate it with the one kv head repeated
    kv_rep = np.repeat(kv["w"], CONFIG.vlm.num_heads, axis=2)
    attn["qkv_einsum"] = {"w": np.concatenate([q["w"][:, None], kv_rep], axis=1)}
    state = convert_params(tree)
    prefix = "paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn."
    assert torch.equal(
        state[prefix + "q_proj.weight"], model.language_model.layers[0].self_attn.q_proj.weight
    )
    assert state[prefix + "k_proj.weight"].shape == (CONFIG.vlm.num_heads * 8, 32)
    torch.testing.assert_close(
        state[prefix + "k_proj.weight"][:8],
        model.language_model.layers[0].self_attn.k_proj.weight,
        rtol=0,
        atol=0,
    )
