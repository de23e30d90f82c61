"""Which architecture a checkpoint describes, and reading and writing its weights.

Three kinds of folders hold OpenVLA weights:
- the released `openvla/openvla-7b` layout: config.json with OpenVLA's fields, bf16 weights in shards
  (`model-0000K-of-0000N.safetensors`) listed by `model.safetensors.index.json` (small ones: one
  `model.safetensors`), tokenizer and preprocessor files;
- `save_pretrained` of this suite: the same layout, plus this suite's `policy` and `env_spec` in config.json;
- a runtime checkpoint's `policy/` folder (`policies.base.write_pretrained`, from FSDP shards): config.json holds
  only `policy` and `env_spec`, the weights carry the policy's own parameter names. Its architecture is that of
  the checkpoint it was trained from (`policy.pretrained`), or the one built from scratch for its env spec.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from envs.base import EnvSpec
from policies.base import CONFIG_NAME, WEIGHTS_NAME, PolicyConfig, _atomic_write, read_saved_config
from policies.lora import LoraConfig
from policies.openvla.configuration_openvla import (
    OpenVLACheckpointConfig,
    OpenVLAConfig,
    openvla_7b_checkpoint_config,
    tiny_checkpoint_config,
)
from policies.openvla.processing_openvla import ByteTokenizer

INDEX_NAME = "model.safetensors.index.json"
# A fine-tuning run's dataset statistics beside the weights (OpenVLA's and OFT's fine-tuning scripts write it;
# OFT's evaluation reads the un-normalisation statistics from it rather than from config.json).
DATASET_STATISTICS = "dataset_statistics.json"
# Files next to the weights that describe how to use them; copied when a loaded checkpoint is saved again.
AUX_FILES = (
    "generation_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer.model",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", DATASET_STATISTICS,
)  # fmt: skip

DEFAULT_IMAGE_SIZE = {"tiny": 56, "openvla-7b": 224}


def fresh_checkpoint_config(config: OpenVLAConfig, env_spec: EnvSpec) -> OpenVLACheckpointConfig:
    """The checkpoint config of a model built from scratch for `env_spec`: its action bounds are the norm stats."""
    stats = {"action": {"q01": list(env_spec.action_low), "q99": list(env_spec.action_high),
                        "mask": [True] * env_spec.action_dim}}  # fmt: skip
    size = config.image_size or DEFAULT_IMAGE_SIZE[config.architecture]
    if config.architecture == "openvla-7b":
        return openvla_7b_checkpoint_config(size, {"env": stats})
    text_vocab = ByteTokenizer.vocab_size + config.action_bins  # bytes, then the action tokens
    tiny = tiny_checkpoint_config(
        size, vocab_size=text_vocab + 64, pad_token_id=text_vocab, norm_stats={"env": stats}
    )
    return dataclasses.replace(tiny, n_action_bins=config.action_bins)


def resolve_architecture(
    config: OpenVLAConfig, env_spec: EnvSpec
) -> tuple[OpenVLACheckpointConfig, str | None]:
    """(the checkpoint config of the model `config` describes, the folder of the OpenVLA checkpoint it comes from
    or None for a model built from scratch). The folder also provides the tokenizer and image statistics."""
    if not config.pretrained:
        return fresh_checkpoint_config(config, env_spec), None
    return _architecture_of(Path(config.pretrained), [])


def _architecture_of(directory: Path, seen: list[str]) -> tuple[OpenVLACheckpointConfig, str | None]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no {CONFIG_NAME}; point policy.pretrained at an OpenVLA checkpoint"
        )
    meta = json.loads(path.read_text())
    if "text_config" in meta:
        # a fine-tuned release (OpenVLA-OFT's) keeps its datasets' statistics beside config.json, as OFT reads them
        stats_file = directory / DATASET_STATISTICS
        if stats_file.is_file():
            meta["norm_stats"] = {**meta.get("norm_stats", {}), **json.loads(stats_file.read_text())}
        return OpenVLACheckpointConfig.from_dict(meta), str(directory)
    if "policy" not in meta:
        raise ValueError(f"{path} describes neither an OpenVLA checkpoint nor a checkpoint of this suite")
    saved_dict, saved_spec = read_saved_config(directory)
    saved = PolicyConfig.from_dict(saved_dict, path=f"{path}: policy")
    if not isinstance(saved, OpenVLAConfig):
        raise ValueError(f"{directory} holds a {saved.name!r} policy, not an OpenVLA one")
    if not saved.pretrained:
        ckpt, source = fresh_checkpoint_config(saved, saved_spec), None
    elif saved.pretrained in seen or not Path(saved.pretrained, CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{directory} was trained from {saved.pretrained}, whose config.json describes the architecture and "
            "tokenizer, but it is not there; copy that checkpoint back to that path"
        )
    else:
        ckpt, source = _architecture_of(Path(saved.pretrained), [*seen, str(directory)])
    if (
        saved.num_images_in_input is not None
    ):  # what this checkpoint was trained with, over what it started from
        ckpt = dataclasses.replace(ckpt, num_images_in_input=saved.num_images_in_input)
    return ckpt, source


def saved_lora_config(directory: str | Path, default: LoraConfig) -> LoraConfig:
    """The LoRA config a runtime checkpoint was trained with (from its config.json), else `default`."""
    meta = json.loads((Path(directory) / CONFIG_NAME).read_text())
    if "policy" not in meta or "lora" not in meta["policy"]:
        return default
    return LoraConfig.from_dict(meta["policy"]["lora"], path="policy.lora")


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (shards in index order, or the single file)."""
    directory = Path(directory)
    index = directory / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [directory / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(
                f"{index} lists shards that are missing: {', '.join(absent)}; download them again"
            )
        return files
    single = directory / WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"{directory} has neither {WEIGHTS_NAME} nor {INDEX_NAME}: not a checkpoint directory"
    )


def read_state_dict(directory: str | Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint, floating-point ones cast to `dtype`."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        for name, tensor in load_file(str(path)).items():
            state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return state


def write_state_dict(directory: str | Path, state: dict[str, torch.Tensor], max_shard_bytes: int) -> None:
    """Write `state` as one model.safetensors, or as shards plus an index when it exceeds `max_shard_bytes`.

    Files are replaced atomically; weight files of an earlier save that the new one does not use are removed.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        names = [WEIGHTS_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        _atomic_write(directory / name, lambda p, s=shard: save_file(s, str(p), metadata={"format": "pt"}))
    for old in list(directory.glob("model-*-of-*.safetensors")) + [directory / WEIGHTS_NAME]:
        if old.name not in names and old.is_file():
            old.unlink()
    index = directory / INDEX_NAME
    if len(shards) == 1:
        index.unlink(missing_ok=True)
        return
    total = sum(t.numel() * t.element_size() for t in state.values())
    weight_map = {k: name for name, shard in zip(names, shards) for k in shard}
    body = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    _atomic_write(index, lambda p: p.write_text(body))


def copy_aux_files(source: str | Path | None, directory: str | Path) -> None:
    """Copy the tokenizer/preprocessor files of checkpoint `source` into `directory` (when they differ)."""
    if not source or Path(source).resolve() == Path(directory).resolve():
        return
    for name in AUX_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(directory) / name)
