"""Reading and writing weights in the Hugging Face layout of the released checkpoints.

The released `openvla/openvla-7b` stores bf16 weights in shards (`model-0000K-of-0000N.safetensors`) listed by
`model.safetensors.index.json`; small checkpoints are one `model.safetensors`. Both are read; writing shards
when the weights exceed `max_shard_bytes`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from policies.base import WEIGHTS_NAME, _atomic_write

INDEX_NAME = "model.safetensors.index.json"
# Files next to the weights that describe how to use them; copied when a loaded checkpoint is saved again.
AUX_FILES = (
    "generation_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer.model",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "dataset_statistics.json",
)  # fmt: skip


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
