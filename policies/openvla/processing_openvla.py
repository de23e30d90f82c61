"""OpenVLA processing: the prompt, tokenizers, image transforms and the 256-bin action (de)tokenisation.

Tokenizers
- A checkpoint that ships a tokenizer (the released one has Llama-2's SentencePiece files) is read with
  transformers' AutoTokenizer. As in the official `predict_action`, the SentencePiece "empty" token `▁`
  (id 29871 for Llama-2) is appended when the prompt does not already end with it.
- `ByteTokenizer` is the built-in tokenizer of the tiny models, which must work offline without any
  tokenizer file: UTF-8 bytes map to ids 3..258, with 0 = unknown, 1 = BOS, 2 = EOS (Llama's special ids).
  Its vocabulary (259 ids) sits below the action tokens of a tiny model, which take the next ids.
  `WordTokenizer` (`policy.tokenizer: word`) has the same vocabulary but one id per word: 4x shorter prompts.

Prompt batches are laid out `[BOS, pad, ..., pad, text...]` with attention mask 0 on the pads: the model inserts
the image patches right after the first token (as OpenVLA does), every row's prompt ends at the same index, and
position ids from the mask's cumulative sum make a padded row compute exactly what it would alone.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def openvla_prompt(instruction: str) -> str:
    return PROMPT.format(instruction=instruction.lower())


class PromptTokenizer(Protocol):
    bos_token_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, starting with BOS."""


class ByteTokenizer:
    """The built-in tokenizer of tiny test models: one id per UTF-8 byte (see the module docstring)."""

    bos_token_id = 1
    eos_token_id = 2
    vocab_size = 259
    _offset = 3

    def encode(self, text: str) -> list[int]:
        return [self.bos_token_id] + [b + self._offset for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - self._offset for i in ids if i >= self._offset).decode("utf-8", errors="replace")


class WordTokenizer:
    """A built-in tokenizer for tiny models with the same 259-id vocabulary as `ByteTokenizer`: one id per word,
    number or punctuation mark (pi0's `WordHashTokenizer`: a stable hash into ids 3..258), after BOS. OpenVLA's
    prompt becomes ~20 tokens instead of ~80 bytes, about what Llama-2's tokenizer makes of it."""

    bos_token_id = 1
    eos_token_id = 2
    vocab_size = 259

    def __init__(self) -> None:
        from policies.pi0.processing_pi0 import WordHashTokenizer

        self._words = WordHashTokenizer(self.vocab_size)

    def encode(self, text: str) -> list[int]:
        return [self.bos_token_id, *self._words.token_ids(text)]


class HFTokenizer:
    """A checkpoint's own tokenizer (transformers' AutoTokenizer), with OpenVLA's trailing `▁` convention."""

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(path))
        self.bos_token_id = int(self._tok.bos_token_id)
        self.vocab_size = len(self._tok)
        space = self._tok.convert_tokens_to_ids("▁")
        self._space_id = space if isinstance(space, int) and space != self._tok.unk_token_id else None

    def encode(self, text: str) -> list[int]:
        ids = list(self._tok(text, add_special_tokens=True)["input_ids"])
        if self._space_id is not None and ids[-1] != self._space_id:
            ids.append(self._space_id)
        return ids


BUILTIN_TOKENIZERS = {"builtin": ByteTokenizer, "word": WordTokenizer}


def load_tokenizer(spec: str, checkpoint_dir: str | None) -> PromptTokenizer:
    """`spec`: "auto" (the checkpoint's tokenizer when it has one, else the byte tokenizer), "builtin" (bytes),
    "word" (`WordTokenizer`), or a path."""
    if spec in BUILTIN_TOKENIZERS:
        return BUILTIN_TOKENIZERS[spec]()
    if spec == "auto":
        if checkpoint_dir and any((Path(checkpoint_dir) / f).is_file() for f in _TOKENIZER_FILES):
            return HFTokenizer(checkpoint_dir)
        return ByteTokenizer()
    if not Path(spec).is_dir():
        raise FileNotFoundError(
            f"policy.tokenizer={spec!r} is not a directory; use auto, builtin, word or a tokenizer folder"
        )
    return HFTokenizer(spec)


class PromptEncoder:
    """Instructions -> prompt ids `[BOS, pads, text]` left-padded to `length`, and their attention mask.

    The length is fixed so that the inputs of successive rollout steps stack into one trajectory tensor.
    """

    def __init__(self, tokenizer: PromptTokenizer, pad_token_id: int, length: int) -> None:
        self.tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        self.length = length
        self._encode = lru_cache(maxsize=4096)(lambda text: tuple(tokenizer.encode(openvla_prompt(text))))

    def __call__(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self._encode(text) for text in instructions]
        length = self.length
        longest = max(range(len(rows)), key=lambda i: len(rows[i]))
        if len(rows[longest]) > length:
            raise ValueError(
                f"the prompt of {instructions[longest]!r} has {len(rows[longest])} tokens, more than "
                f"policy.max_prompt_length={length}; raise it"
            )
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, 0], mask[i, 0] = row[0], 1
            if len(row) > 1:
                ids[i, length - len(row) + 1 :] = torch.tensor(row[1:])
                mask[i, length - len(row) + 1 :] = 1
        return ids, mask


class ImageTransform:
    """uint8 images [N, H, W, 3] -> `pixel_values` [N, 3 x towers, S, S]: resized (bicubic, antialiased, rounded
    to uint8 like the official PIL path), with `center_crop` cropped to OFT's central 90% (`center_crop`), and
    normalised once per tower with that tower's mean and std."""

    def __init__(
        self,
        size: int,
        means: list[tuple[float, ...]],
        stds: list[tuple[float, ...]],
        center_crop: bool = False,
    ) -> None:
        self.size = size
        self.center_crop = center_crop
        mean = torch.tensor([m for tower in means for m in tower], dtype=torch.float32)
        std = torch.tensor([s for tower in stds for s in tower], dtype=torch.float32)
        self.mean, self.std, self.towers = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), len(means)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3]; got {images.dtype} {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False
            )
            x = x.round().clamp(0, 255)
        if self.center_crop:
            x = center_crop(x)
        x = (x / 255.0).repeat(1, self.towers, 1, 1)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


CROP_AREA = 0.9  # OFT's (and OpenVLA's) evaluation crop: random crops of 90% of the area in training


def center_crop(images: torch.Tensor, area: float = CROP_AREA) -> torch.Tensor:
    """Integer-valued images [N, 3, H, W] in 0..255 -> the central crop of `area` of the image (sqrt(area) of
    each side) resized back to [N, 3, H, W], integer-valued, as OFT's `center_crop_image` makes it.

    OFT crops with TensorFlow (`tf.image.crop_and_resize` of the box (1 - sqrt(area)) / 2 .. (1 + sqrt(area)) / 2
    on the image as float32 in [0, 1], bilinear) and converts back to uint8 with `convert_image_dtype`
    (floor(x * 255.5)). The sampling is TF's: output pixel i reads input coordinate
    y1 (H - 1) + i (y2 - y1)(H - 1) / (H - 1), interpolated between its floor and ceil pixels, rows after columns;
    the arithmetic follows TF's float32 order."""
    n, c, height, width = images.shape
    side = torch.tensor(area, dtype=torch.float32).sqrt()
    start = (1.0 - side) / 2.0
    end = start + side
    x = images.float() * (1.0 / 255.0)

    def sample(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = (end - start) * (size - 1) / (size - 1)
        coord = start * (size - 1) + torch.arange(size, dtype=torch.float32) * scale
        low, high = coord.floor().long(), coord.ceil().long()
        return low.to(x.device), high.to(x.device), (coord - low).to(x.device)

    (y_low, y_high, y_lerp), (x_low, x_high, x_lerp) = sample(height), sample(width)

    def along_x(rows: torch.Tensor) -> torch.Tensor:
        left, right = rows[..., x_low], rows[..., x_high]
        return left + (right - left) * x_lerp

    top, bottom = along_x(x[:, :, y_low, :]), along_x(x[:, :, y_high, :])
    crop = (top + (bottom - top) * y_lerp[:, None]).clamp(0.0, 1.0)
    return (crop * 255.5).floor().clamp(max=255.0)


def image_transform_for(
    timm_ids: list[str], size: int, checkpoint_dir: str | None, center_crop: bool = False
) -> ImageTransform:
    """The checkpoint's preprocessor_config.json means/stds when present, else timm's for each tower."""
    path = Path(checkpoint_dir) / "preprocessor_config.json" if checkpoint_dir else None
    if path is not None and path.is_file():
        cfg = json.loads(path.read_text())
        if "means" in cfg and "stds" in cfg:
            means, stds = [tuple(m) for m in cfg["means"]], [tuple(s) for s in cfg["stds"]]
            return ImageTransform(size, means, stds, center_crop)
    means = [SIGLIP_MEAN if "siglip" in t else IMAGENET_MEAN for t in timm_ids]
    stds = [SIGLIP_STD if "siglip" in t else IMAGENET_STD for t in timm_ids]
    return ImageTransform(size, means, stds, center_crop)


class ActionBins:
    """OpenVLA's action tokens: `n_bins` ids ending at `vocab_end` (the tokenizer's vocabulary size).

    Action token j (id = vocab_end - n_bins + j) is bin `clip(n_bins - 1 - j, 0, n_bins - 2)`, whose centre is
    the normalised action in [-1, 1]; dims with mask True are then un-normalised with the dataset's q01/q99.
    """

    def __init__(self, n_bins: int, q01: list[float], q99: list[float], mask: list[bool]) -> None:
        bins = np.linspace(-1.0, 1.0, n_bins)
        self.n_bins = n_bins
        self.edges = torch.tensor(bins, dtype=torch.float64)
        self.bin_centers = torch.tensor((bins[:-1] + bins[1:]) / 2.0, dtype=torch.float64)
        self.q01 = torch.tensor(q01, dtype=torch.float64)
        self.q99 = torch.tensor(q99, dtype=torch.float64)
        self.mask = torch.tensor(mask, dtype=torch.bool)

    @property
    def action_dim(self) -> int:
        return len(self.q01)

    def normalized(self, token_index: torch.Tensor) -> torch.Tensor:
        """Action-token indices (0..n_bins-1) -> normalised actions in [-1, 1] (float64)."""
        bin_index = (self.n_bins - 1 - token_index).clamp(0, self.n_bins - 2)
        return self.bin_centers.to(token_index.device)[bin_index]

    def to_env_units(self, token_index: torch.Tensor) -> torch.Tensor:
        """Action-token indices [..., A] -> un-normalised actions [..., A] (float64)."""
        return self.unnormalize(self.normalized(token_index))

    def unnormalize(self, norm: torch.Tensor) -> torch.Tensor:
        """Normalised actions [..., A] (q01 -> -1, q99 -> 1 on dims with mask True) -> env units (float64)."""
        norm = norm.double()
        q01, q99, mask = (t.to(norm.device) for t in (self.q01, self.q99, self.mask))
        return torch.where(mask, 0.5 * (norm + 1.0) * (q99 - q01) + q01, norm)

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        """Env-unit actions [..., A] -> normalised actions clipped to [-1, 1] (float64), as OFT's data pipeline
        (BOUNDS_Q99) gives its demonstrations to the model."""
        a = actions.double()
        q01, q99, mask = (t.to(a.device) for t in (self.q01, self.q99, self.mask))
        return torch.where(mask, 2.0 * (a - q01) / (q99 - q01 + 1e-8) - 1.0, a).clamp(-1.0, 1.0)

    def token_index(self, actions: torch.Tensor) -> torch.Tensor:
        """Env-unit actions [..., A] -> action-token indices [..., A] int64: the tokens a demonstration is trained
        on. As OpenVLA's ActionTokenizer: normalised with q01/q99 (dims with mask True), clipped to [-1, 1],
        binned with `np.digitize` on the bin edges (d in 1..n_bins), token index n_bins - d; `to_env_units` of
        the result is the action to within a bin."""
        norm = self.normalize(actions)
        return self.n_bins - torch.bucketize(norm, self.edges.to(norm.device), right=True)


class ProprioNormalizer:
    """OpenVLA-OFT's proprio input: env `states` [N, D] -> float32 [N, D], mapped to [-1, 1] with the checkpoint's
    q01/q99 proprio statistics (and clipped) when it has them, passed through unchanged otherwise."""

    def __init__(self, dim: int, q01: list[float] | None = None, q99: list[float] | None = None) -> None:
        self.dim = dim
        if q01 is not None and (len(q01) != dim or q99 is None or len(q99) != dim):
            raise ValueError(
                f"the checkpoint's proprio statistics have {len(q01)} dims but the env state has {dim}"
            )
        self.q01 = torch.tensor(q01, dtype=torch.float32) if q01 is not None else None
        self.q99 = torch.tensor(q99, dtype=torch.float32) if q99 is not None else None

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        if states.dim() != 2 or states.shape[1] != self.dim:
            raise ValueError(
                f"states must be [N, {self.dim}] for the proprio projector; got {tuple(states.shape)}"
            )
        x = states.float()
        if self.q01 is None:
            return x
        q01, q99 = self.q01.to(x.device), self.q99.to(x.device)
        return (2.0 * (x - q01) / (q99 - q01).clamp_min(1e-8) - 1.0).clamp(-1.0, 1.0)


# The observation's camera images in the order OFT stacks them: the third-person image, then the wrist image.
CAMERAS = ("main_images", "wrist_images")
NO_CAMERA_HELP = {
    "main_images": "use an rgb obs mode of the env",
    "wrist_images": "render the env's wrist camera (LIBERO: env.wrist_image=true; ManiSkill: "
    "env.robot_uids=panda_wristcam), or feed the main image only (policy.num_images_in_input=1)",
}


class OpenVLAProcessor:
    """Env observations -> model inputs (`input_ids`, `attention_mask`, `pixel_values`, and `proprio` with a
    proprio normaliser); bins -> env actions.

    `pixel_values` [N, I x 3 x towers, S, S] stacks the `num_images` first `CAMERAS` along the channel axis, each
    transformed on its own, as OFT's `get_vla_action` concatenates the processor's outputs."""

    def __init__(
        self,
        prompts: PromptEncoder,
        images: ImageTransform,
        bins: ActionBins,
        proprio: ProprioNormalizer | None = None,
        num_images: int = 1,
    ) -> None:
        self.tokenizer = prompts.tokenizer
        self.prompts = prompts
        self.images = images
        self.bins = bins
        self.proprio = proprio
        self.cameras = CAMERAS[:num_images]

    def __call__(self, obs: dict, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        for camera in self.cameras:
            if camera not in obs:
                raise KeyError(
                    f"this OpenVLA policy reads {' and '.join(self.cameras)} (policy.num_images_in_input="
                    f"{len(self.cameras)}) but the observation has no {camera}: {NO_CAMERA_HELP[camera]}"
                )
        input_ids, attention_mask = self.prompts(list(obs["task_descriptions"]))
        pixel_values = torch.cat([self.images(obs[camera].to(device)) for camera in self.cameras], dim=1)
        inputs = {
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "pixel_values": pixel_values.to(dtype),
        }
        if self.proprio is not None:
            inputs["proprio"] = self.proprio(obs["states"].to(device))
        return inputs
