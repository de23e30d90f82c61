"""pi0 processing: env observations -> model inputs, and model actions -> env units.

- Images: uint8 [N, H, W, 3] -> [0, 1] -> resized with padding (aspect kept, bilinear, black borders centred) to
  the SigLIP input size -> [-1, 1] (x * 2 - 1). Cameras: main, then wrist (when the env has one), then
  `empty_cameras` all -1 images whose mask is False.
- Language: the task gets a trailing "\n" and is tokenised with BOS (id 2), right-padded with 0 to
  `tokenizer_max_length` (PaliGemma's convention). The real PaliGemma SentencePiece tokenizer loads from
  `policy.tokenizer`; without one, `WordHashTokenizer` serves tiny models (see its docstring).
- State and actions: mean/std normalisation (`policy.normalization: mean_std`, pi0's) or the 1st/99th percentiles
  mapped to [-1, 1] (`quantile`, pi0.5's); identity without `policy.norm_stats`. The state is zero-padded to
  `max_state_dim`; predicted actions are cut to the env's chunk C and action dims A, then un-normalised.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from envs.base import EnvSpec, Obs
from policies.pi0.configuration_pi0 import BOS_TOKEN_ID, PAD_TOKEN_ID, Pi0Config

NORM_EPS = 1e-6
WORD_HASH = (
    "word_hash"  # policy.tokenizer value that forces the built-in tokenizer (random-weight benchmarks)
)


# -- images --------------------------------------------------------------------------------------------------------
def resize_with_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> [N, 3, size, size]: scaled to fit (bilinear), zero-padded, centred."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    ratio = max(h / size, w / size)
    new_h, new_w = max(1, int(h / ratio)), max(1, int(w / ratio))
    resized = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    return F.pad(resized, (left, size - new_w - left, top, size - new_h - top), value=0.0)


def images_to_model(
    camera_images: list[torch.Tensor], size: int, empty_cameras: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, H, W, 3] per camera -> images [N, cams, 3, size, size] in [-1, 1] and masks [N, cams] bool.

    A pure function of its inputs: predict() and evaluate() both call it on the same stored uint8 frames.
    """
    out, masks = [], []
    for frames in camera_images:
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        out.append(resize_with_pad(x, size) * 2.0 - 1.0)
        masks.append(torch.ones(x.shape[0], dtype=torch.bool, device=x.device))
    n, device = camera_images[0].shape[0], camera_images[0].device
    for _ in range(empty_cameras):
        out.append(torch.full((n, 3, size, size), -1.0, device=device))
        masks.append(torch.zeros(n, dtype=torch.bool, device=device))
    return torch.stack(out, dim=1), torch.stack(masks, dim=1)


# -- tokenizers -----------------------------------------------------------------------------------------------------
class PromptTokenizer(Protocol):
    def token_ids(self, text: str) -> list[int]:
        """Ids of `text` without BOS."""


class WordHashTokenizer:
    """A deterministic tokenizer for tiny models that have no trained vocabulary.

    Lower-cased words, numbers and single punctuation or newline characters each become one token whose id is
    3 + (64-bit FNV-1a hash of the token) mod (vocab_size - 3); ids 0 (pad), 1 and 2 (BOS) are never produced.
    The same text gives the same ids in every process and on every machine (no Python hash seed involved).
    Different words can share an id when the vocabulary is small; the tests' instructions do not collide.
    """

    _TOKEN = re.compile(r"\w+|[^\w\s]|\n")

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 4:
            raise ValueError(f"WordHashTokenizer needs vocab_size >= 4, got {vocab_size}")
        self.vocab_size = vocab_size

    def token_ids(self, text: str) -> list[int]:
        return [3 + _fnv1a(tok) % (self.vocab_size - 3) for tok in self._TOKEN.findall(text.lower())]


def _fnv1a(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class SentencePieceTokenizer:
    """PaliGemma's tokenizer.model (SentencePiece); BOS is added by `encode_prompts`."""

    def __init__(self, path: Path) -> None:
        try:
            import sentencepiece
        except ImportError as exc:
            raise ImportError("policy.tokenizer names a SentencePiece model: pip install -e .[vla]") from exc
        self.model = sentencepiece.SentencePieceProcessor(model_file=str(path))

    def token_ids(self, text: str) -> list[int]:
        return list(self.model.encode(text))


class HFTokenizer:
    """A Hugging Face tokenizer folder (e.g. google/paligemma-3b-pt-224 downloaded beforehand), read offline."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def make_tokenizer(config: Pi0Config) -> PromptTokenizer:
    if config.tokenizer == WORD_HASH:
        return WordHashTokenizer(config.vocab_size)
    if config.tokenizer is None:
        if config.vocab_size >= 100_000:
            raise ValueError(
                f"vocab_size={config.vocab_size} is a trained vocabulary (PaliGemma's); set policy.tokenizer to "
                "its tokenizer.model or tokenizer folder. The built-in word-hash tokenizer is for tiny models"
            )
        return WordHashTokenizer(config.vocab_size)
    path = Path(config.tokenizer)
    if path.is_file():
        return SentencePieceTokenizer(path)
    if path.is_dir():
        return HFTokenizer(path)
    raise FileNotFoundError(
        f"policy.tokenizer={config.tokenizer} is neither a tokenizer.model file nor a folder"
    )


def pi0_prompt(task: str) -> str:
    """pi0's prompt: the task and a "\\n" that marks the start of the answer."""
    return task if task.endswith("\n") else task + "\n"


def encode_prompts(
    tokenizer: PromptTokenizer, prompts: list[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids [N, max_length] int64 (BOS, the prompt, right-padded with 0, truncated) and masks [N, L] bool."""
    ids = torch.full((len(prompts), max_length), PAD_TOKEN_ID, dtype=torch.int64)
    masks = torch.zeros((len(prompts), max_length), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens = ([BOS_TOKEN_ID] + tokenizer.token_ids(prompt))[:max_length]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
        masks[row, : len(tokens)] = True
    return ids, masks


# -- normalisation --------------------------------------------------------------------------------------------------
NormMode = Literal["mean_std", "quantile"]
# the statistics each mode reads, as named in openpi's norm_stats.json and LeRobot's normalizer files
NORM_STATS: dict[str, tuple[str, str]] = {"mean_std": ("mean", "std"), "quantile": ("q01", "q99")}


def affine_from_stats(
    mode: NormMode, first: torch.Tensor, second: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Offset and scale with model units = (x - offset) / scale.

    mean_std: (x - mean) / (std + 1e-6); quantile: openpi's (x - q01) / (q99 - q01 + 1e-6) * 2 - 1, i.e. q01 -> -1 and
    q99 -> 1 (LeRobot adds no 1e-6: a relative difference of ~5e-7)."""
    if mode == "mean_std":
        return first, second + NORM_EPS
    half_range = (second - first + NORM_EPS) / 2
    return first + half_range, half_range


class Normalizer(torch.nn.Module):
    """States and actions to model units and back, as an affine map per dimension (buffers, not saved: they come from
    `policy.norm_stats` and `policy.normalization`)."""

    def __init__(self, config: Pi0Config, spec: EnvSpec) -> None:
        super().__init__()
        stats = read_norm_stats(Path(config.norm_stats), config.normalization) if config.norm_stats else {}
        for key, dim in (("state", spec.state_dim), ("actions", spec.action_dim)):
            offset, scale = torch.zeros(dim), torch.ones(dim)
            if key in stats:
                first, second = (
                    torch.tensor(stats[key][s], dtype=torch.float32) for s in NORM_STATS[config.normalization]
                )
                if len(first) < dim or len(second) < dim:
                    raise ValueError(
                        f"{config.norm_stats}: {key} statistics have {len(first)} dims but the env has {dim}; "
                        "the statistics belong to another robot or dataset"
                    )
                offset, scale = affine_from_stats(config.normalization, first[:dim], second[:dim])
            self.register_buffer(f"{key}_offset", offset, persistent=False)
            self.register_buffer(f"{key}_scale", scale, persistent=False)
        self.state_dim = spec.state_dim
        self.max_state_dim, self.max_action_dim = config.max_state_dim, config.max_action_dim
        if spec.state_dim > config.max_state_dim or spec.action_dim > config.max_action_dim:
            raise ValueError(
                f"the env has state_dim={spec.state_dim}, action_dim={spec.action_dim} but the model takes at most "
                f"max_state_dim={config.max_state_dim}, max_action_dim={config.max_action_dim}"
            )

    def states(self, states: torch.Tensor) -> torch.Tensor:
        """[N, D] env states -> [N, max_state_dim] normalised and zero-padded."""
        x = (states.float() - self.state_offset) / self.state_scale
        return F.pad(x, (0, self.max_state_dim - x.shape[-1]))

    def actions(self, actions: torch.Tensor, chunk: int) -> torch.Tensor:
        """Model actions [N, C_model, A_model] -> env units [N, chunk, A_env]."""
        x = actions[:, :chunk, : self.actions_offset.shape[0]]
        return x * self.actions_scale + self.actions_offset

    def model_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Env-unit actions [N, C, A_env] (demonstrations) -> model units [N, C, max_action_dim]: normalised and
        zero-padded, the inverse of `actions`."""
        x = (actions.float() - self.actions_offset) / self.actions_scale
        return F.pad(x, (0, self.max_action_dim - x.shape[-1]))


def read_norm_stats(path: Path, mode: NormMode = "mean_std") -> dict[str, dict[str, list[float]]]:
    """{"state": {stat: values}, "actions": {...}} with the statistics `mode` needs (mean and std, or q01 and q99),
    from openpi's norm_stats.json or LeRobot's normalizer safetensors (keys observation.state.<stat>,
    action.<stat>)."""
    if not path.is_file():
        raise FileNotFoundError(f"policy.norm_stats={path} does not exist")
    names = NORM_STATS[mode]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        t = load_file(str(path))
        pairs = {"state": "observation.state", "actions": "action"}
        missing = [f"{v}.{s}" for v in pairs.values() for s in names if f"{v}.{s}" not in t]
        if missing:
            raise ValueError(
                f"{path} lacks {missing}; expected LeRobot's normalizer processor file with {mode} statistics"
            )
        return {k: {s: t[f"{v}.{s}"].tolist() for s in names} for k, v in pairs.items()}
    data = json.loads(path.read_text())
    data = data.get("norm_stats", data)
    missing = [k for k in ("state", "actions") if k not in data]
    missing += [f"{k}.{s}" for k in ("state", "actions") if k in data for s in names if s not in data[k]]
    if missing:
        raise ValueError(
            f"{path} lacks {missing}; expected openpi's norm_stats.json layout with {mode} statistics"
        )
    return {k: {s: data[k][s] for s in names} for k in ("state", "actions")}


def camera_frames(obs: Obs, spec: EnvSpec) -> list[torch.Tensor]:
    """The env's uint8 frames per camera: main_images, then wrist_images when the env has them."""
    if "main_images" not in obs:
        raise ValueError("pi0 needs image observations (main_images); use an rgb observation mode of the env")
    frames = [obs["main_images"]]
    if spec.has_wrist_image:
        frames.append(obs["wrist_images"])
    return frames
