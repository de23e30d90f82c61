"""Convert an openpi pi0 or pi0.5 JAX checkpoint (orbax, flax parameter tree) to the released PyTorch layout.

    pip install -e .[jax]
    python -m policies.pi0.convert_jax CHECKPOINT_DIR OUTPUT_DIR [--action-horizon 50] [--dtype float32]

CHECKPOINT_DIR is an openpi checkpoint folder (holding `params/`, e.g. .../checkpoints/pi0_libero) or its
`params/` folder. OUTPUT_DIR gets model.safetensors (LeRobot's names: `model.paligemma_with_expert.*`, ...), a
config.json in LeRobot's PI0Config or PI05Config format, a tiny_overrides.json when the sizes are not the released
variants' and, when the checkpoint has one under assets/, its norm_stats.json. Load it with
`policy.name=pi0` or `pi05` (the variant is printed) and `policy.pretrained=OUTPUT_DIR`.

openpi's tree (after orbax restore; a trailing "value" level of training checkpoints is dropped):
  PaliGemma/img: SigLIP (big_vision ViT, layers stacked on axis 0 under Transformer/encoderblock), head = the
    projector; PaliGemma/llm: Gemma with two experts, layers stacked on axis 0 under `layers`; the second expert's
    parameters carry the suffix `_1` (q_einsum_1, mlp_1, pre_attention_norm_1, final_norm_1, ...);
  state_proj, action_in_proj, action_out_proj, action_time_mlp_in, action_time_mlp_out: flax Dense (kernel, bias).
pi0.5 (told by `time_mlp_in`): time_mlp_in, time_mlp_out instead of state_proj and action_time_mlp_*, and the
expert's norms are adaptive: pre_attention_norm_1, pre_ffw_norm_1 and final_norm_1 hold `Dense_0` (kernel
[cond, 3 D], bias [3 D]: scale, shift, gate) instead of `scale`; they become `{input,post_attention}_layernorm.dense`
and `norm.dense` (openpi's convert_jax_model_to_pytorch.py names).
Einsum weights: q [N, D, H] ("BTD,NDH->BTNH"), kv [2, K, D, H], attention output [N, H, D], MLP gating
[2, D, M] (gate, up) and linear [M, D]; torch Linear weights are [out, in].
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.pi0.checkpoint import RELEASED_PROMPT_LENGTH
from policies.pi0.configuration_pi0 import (
    GEMMA_VARIANTS,
    PALIGEMMA_VOCAB_SIZE,
    SIGLIP_SO400M_224,
    GemmaSize,
    SiglipSize,
)

Tree = Mapping[str, Any]
_VISION = "paligemma_with_expert.paligemma.model.vision_tower.vision_model."
_PROJECTOR = "paligemma_with_expert.paligemma.model.multi_modal_projector.linear."
_TOWERS = (
    "paligemma_with_expert.paligemma.model.language_model.",
    "paligemma_with_expert.gemma_expert.model.",
)
# the flax Dense heads of each variant, under the same names in PyTorch
DENSE_HEADS = {
    "pi0": ("state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out"),
    "pi05": ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out"),
}


def _suffix(name: str, expert: int) -> str:
    return name if expert == 0 else f"{name}_{expert}"


def _t(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array, dtype=np.float32)))


def variant_of(params: Tree) -> str:
    """ "pi05" for a pi0.5 tree (its time MLP feeds adaRMS), else "pi0"."""
    return "pi05" if "time_mlp_in" in params else "pi0"


def strip_value_level(tree: Tree) -> Tree:
    """Drop the trailing {"value": array} level nnx training checkpoints add to every leaf."""
    if isinstance(tree, Mapping):
        if set(tree) == {"value"} and not isinstance(tree["value"], Mapping):
            return tree["value"]
        return {k: strip_value_level(v) for k, v in tree.items()}
    return tree


# -- architecture from shapes ----------------------------------------------------------------------------------------
def infer_gemma(llm: Tree, expert: int) -> GemmaSize:
    attn = llm["layers"]["attn"]
    mlp = llm["layers"][_suffix("mlp", expert)]
    if _suffix("qkv_einsum", expert) in attn:  # num_kv_heads == num_heads
        depth, _, heads, width, head_dim = np.shape(attn[_suffix("qkv_einsum", expert)]["w"])
        kv_heads = heads
    else:
        depth, heads, width, head_dim = np.shape(attn[_suffix("q_einsum", expert)]["w"])
        kv_heads = np.shape(attn[_suffix("kv_einsum", expert)]["w"])[2]
    mlp_dim = np.shape(mlp["gating_einsum"])[-1]
    return GemmaSize(
        width=int(width), depth=int(depth), mlp_dim=int(mlp_dim), num_heads=int(heads),
        num_kv_heads=int(kv_heads), head_dim=int(head_dim),
    )  # fmt: skip


def _vision_blocks(img: Tree) -> list[Tree]:
    """One parameter tree per SigLIP layer (scanned: sliced from the stacked tree; unscanned: encoderblock_i)."""
    encoder = img["Transformer"]
    if "encoderblock" in encoder:
        stacked = encoder["encoderblock"]
        depth = np.shape(stacked["LayerNorm_0"]["scale"])[0]

        def slice_i(tree: Tree, i: int) -> Tree:
            return {k: slice_i(v, i) if isinstance(v, Mapping) else v[i] for k, v in tree.items()}

        return [slice_i(stacked, i) for i in range(depth)]
    return [encoder[f"encoderblock_{i}"] for i in range(sum(k.startswith("encoderblock_") for k in encoder))]


def infer_vision(img: Tree) -> SiglipSize:
    patch, _, _, hidden = np.shape(img["embedding"]["kernel"])
    blocks = _vision_blocks(img)
    side = math.isqrt(int(np.shape(img["pos_embedding"])[1]))
    return SiglipSize(
        hidden_size=int(hidden),
        num_layers=len(blocks),
        num_heads=int(np.shape(blocks[0]["MultiHeadDotProductAttention_0"]["query"]["kernel"])[1]),
        intermediate_size=int(np.shape(blocks[0]["MlpBlock_0"]["Dense_0"]["kernel"])[1]),
        patch_size=int(patch),
        image_size=int(side * patch),
    )


# -- parameter mapping -----------------------------------------------------------------------------------------------
def _vision_state(img: Tree) -> dict[str, torch.Tensor]:
    out = {
        _VISION + "embeddings.patch_embedding.weight": _t(img["embedding"]["kernel"]).permute(3, 2, 0, 1),
        _VISION + "embeddings.patch_embedding.bias": _t(img["embedding"]["bias"]),
        _VISION + "embeddings.position_embedding.weight": _t(img["pos_embedding"])[0],
        _VISION + "post_layernorm.weight": _t(img["Transformer"]["encoder_norm"]["scale"]),
        _VISION + "post_layernorm.bias": _t(img["Transformer"]["encoder_norm"]["bias"]),
        _PROJECTOR + "weight": _t(img["head"]["kernel"]).T,
        _PROJECTOR + "bias": _t(img["head"]["bias"]),
    }
    for i, block in enumerate(_vision_blocks(img)):
        p = f"{_VISION}encoder.layers.{i}."
        attn = block["MultiHeadDotProductAttention_0"]
        for jax_name, torch_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            kernel = _t(attn[jax_name]["kernel"])  # [D, heads, head_dim]
            out[f"{p}self_attn.{torch_name}.weight"] = kernel.reshape(kernel.shape[0], -1).T
            out[f"{p}self_attn.{torch_name}.bias"] = _t(attn[jax_name]["bias"]).reshape(-1)
        kernel = _t(attn["out"]["kernel"])  # [heads, head_dim, D]
        out[f"{p}self_attn.out_proj.weight"] = kernel.reshape(-1, kernel.shape[-1]).T
        out[f"{p}self_attn.out_proj.bias"] = _t(attn["out"]["bias"])
        for k, name in ((0, "layer_norm1"), (1, "layer_norm2")):
            out[f"{p}{name}.weight"] = _t(block[f"LayerNorm_{k}"]["scale"])
            out[f"{p}{name}.bias"] = _t(block[f"LayerNorm_{k}"]["bias"])
        for k, name in ((0, "fc1"), (1, "fc2")):
            out[f"{p}mlp.{name}.weight"] = _t(block["MlpBlock_0"][f"Dense_{k}"]["kernel"]).T
            out[f"{p}mlp.{name}.bias"] = _t(block["MlpBlock_0"][f"Dense_{k}"]["bias"])
    return out


def _gemma_state(llm: Tree, expert: int) -> dict[str, torch.Tensor]:
    size, prefix, layers = infer_gemma(llm, expert), _TOWERS[expert], llm["layers"]
    attn = layers["attn"]
    if _suffix("qkv_einsum", expert) in attn:
        qkv = _t(attn[_suffix("qkv_einsum", expert)]["w"])  # [L, 3, N, D, H]
        q, kv = qkv[:, 0], qkv[:, 1:]
    else:
        q, kv = _t(attn[_suffix("q_einsum", expert)]["w"]), _t(attn[_suffix("kv_einsum", expert)]["w"])
    attn_out = _t(attn[_suffix("attn_vec_einsum", expert)]["w"])  # [L, N, H, D]
    mlp = layers[_suffix("mlp", expert)]
    gating, linear = _t(mlp["gating_einsum"]), _t(mlp["linear"])  # [L, 2, D, M], [L, M, D]
    pre_attn = _norm_state(layers[_suffix("pre_attention_norm", expert)])  # stacked over layers
    pre_ffw = _norm_state(layers[_suffix("pre_ffw_norm", expert)])
    out = {prefix + "norm." + k: v for k, v in _norm_state(llm[_suffix("final_norm", expert)]).items()}
    if expert == 0:
        out[prefix + "embed_tokens.weight"] = _t(llm["embedder"]["input_embedding"])
    for i in range(size.depth):
        p = f"{prefix}layers.{i}."
        out[p + "self_attn.q_proj.weight"] = q[i].permute(0, 2, 1).reshape(-1, size.width)  # [N*H, D]
        out[p + "self_attn.k_proj.weight"] = kv[i, 0].permute(0, 2, 1).reshape(-1, size.width)
        out[p + "self_attn.v_proj.weight"] = kv[i, 1].permute(0, 2, 1).reshape(-1, size.width)
        out[p + "self_attn.o_proj.weight"] = attn_out[i].reshape(-1, size.width).T
        out[p + "mlp.gate_proj.weight"] = gating[i, 0].T
        out[p + "mlp.up_proj.weight"] = gating[i, 1].T
        out[p + "mlp.down_proj.weight"] = linear[i].T
        out.update({f"{p}input_layernorm.{k}": v[i] for k, v in pre_attn.items()})
        out.update({f"{p}post_attention_layernorm.{k}": v[i] for k, v in pre_ffw.items()})
    return out


def _norm_state(norm: Tree) -> dict[str, torch.Tensor]:
    """An RMSNorm's tensors (with a leading layer axis when stacked): `scale` -> weight; adaRMS `Dense_0` (kernel
    [..., cond, 3 D]) -> dense.weight [..., 3 D, cond], dense.bias."""
    if "scale" in norm:
        return {"weight": _t(norm["scale"])}
    return {
        "dense.weight": _t(norm["Dense_0"]["kernel"]).transpose(-1, -2),
        "dense.bias": _t(norm["Dense_0"]["bias"]),
    }


def convert_params(params: Tree) -> dict[str, torch.Tensor]:
    """openpi's pi0 / pi0.5 parameter tree -> state dict of `Pi0FlowModel` / `Pi05FlowModel` (names without
    LeRobot's `model.`)."""
    params = strip_value_level(params)
    if "PaliGemma" not in params:
        raise ValueError(
            f"not a pi0 parameter tree: top-level keys are {sorted(params)}, expected PaliGemma, ..."
        )
    pg = params["PaliGemma"]
    state = {**_vision_state(pg["img"]), **_gemma_state(pg["llm"], 0), **_gemma_state(pg["llm"], 1)}
    for name in DENSE_HEADS[variant_of(params)]:
        state[f"{name}.weight"] = _t(params[name]["kernel"]).T
        state[f"{name}.bias"] = _t(params[name]["bias"])
    return {k: v.contiguous() for k, v in state.items()}


def architecture_files(params: Tree, action_horizon: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """LeRobot-style config.json and, for non-standard sizes, tiny_overrides.json contents."""
    params = strip_value_level(params)
    pg, variant = params["PaliGemma"], variant_of(params)
    vlm, expert, vision = infer_gemma(pg["llm"], 0), infer_gemma(pg["llm"], 1), infer_vision(pg["img"])
    action_dim = int(np.shape(params["action_in_proj"]["kernel"])[0])
    # pi0.5 has no state projection: its state goes into the prompt, padded like the actions
    state_dim = int(np.shape(params["state_proj"]["kernel"])[0]) if variant == "pi0" else action_dim
    norm = "MEAN_STD" if variant == "pi0" else "QUANTILES"  # openpi's defaults (use_quantile_norm for pi0.5)
    overrides: dict[str, Any] = {}
    names = []
    for role, size, standard in (
        ("paligemma_variant", vlm, "gemma_2b"),
        ("action_expert_variant", expert, "gemma_300m"),
    ):
        if size == GEMMA_VARIANTS[standard]:
            names.append(standard)
        else:
            names.append("custom")
            overrides[f"{role}_custom"] = size.to_dict()
    vocab = int(np.shape(pg["llm"]["embedder"]["input_embedding"])[0])
    if vocab != PALIGEMMA_VOCAB_SIZE:
        overrides["vocab_size"] = vocab
    if vision.replace(image_size=224) != SIGLIP_SO400M_224:
        overrides["siglip"] = {
            "hidden_size": vision.hidden_size, "num_hidden_layers": vision.num_layers,
            "num_attention_heads": vision.num_heads, "intermediate_size": vision.intermediate_size,
            "patch_size": vision.patch_size,
        }  # fmt: skip
        overrides["siglip_image_size"] = vision.image_size
    config = {
        "type": variant, "paligemma_variant": names[0], "action_expert_variant": names[1],
        "chunk_size": action_horizon, "n_action_steps": action_horizon,
        "max_state_dim": state_dim, "max_action_dim": action_dim, "num_inference_steps": 10,
        "tokenizer_max_length": RELEASED_PROMPT_LENGTH[variant], "min_period": 4e-3, "max_period": 4.0,
        "image_resolution": [vision.image_size, vision.image_size],
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": norm, "ACTION": norm},
    }  # fmt: skip
    return config, overrides


def restore_orbax(path: Path) -> Tree:
    """The `params` tree of an orbax PyTree checkpoint as numpy arrays."""
    import jax
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path)
        metadata = getattr(metadata, "item_metadata", metadata)
        item = {"params": metadata["params"]}
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray), item)
        restored = checkpointer.restore(
            path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args)
        )
    return restored["params"]


def convert_checkpoint(
    checkpoint: Path, output: Path, action_horizon: int = 50, dtype: str = "float32"
) -> str:
    """Read an openpi checkpoint folder and write the PyTorch layout into `output`; returns the variant (the
    policy.name to load it with)."""
    from safetensors.torch import save_file

    params_dir = checkpoint / "params" if (checkpoint / "params").is_dir() else checkpoint
    params = restore_orbax(params_dir.resolve())
    state = convert_params(params)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    output.mkdir(parents=True, exist_ok=True)
    save_file({f"model.{k}": v.to(torch_dtype) for k, v in state.items()}, str(output / "model.safetensors"))
    config, overrides = architecture_files(params, action_horizon)
    (output / "config.json").write_text(json.dumps(config, indent=2))
    if overrides:
        (output / "tiny_overrides.json").write_text(json.dumps(overrides, indent=2))
    stats = sorted(params_dir.parent.glob("assets/**/norm_stats.json"))
    if stats:
        shutil.copy(stats[0], output / "norm_stats.json")
    return config["type"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint", type=Path, help="openpi checkpoint folder (with params/) or params/ itself"
    )
    parser.add_argument("output", type=Path, help="folder for model.safetensors + config.json")
    parser.add_argument(
        "--action-horizon", type=int, default=50, help="chunk size the checkpoint was trained with"
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)
    variant = convert_checkpoint(args.checkpoint, args.output, args.action_horizon, args.dtype)
    print(f"wrote {args.output}; load it with policy.name={variant} policy.pretrained={args.output}")


if __name__ == "__main__":
    main()
