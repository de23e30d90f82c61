"""OpenVLA's vision towers: timm's ViT re-implemented with timm's parameter names and semantics.

Why not timm itself: timm imports torchvision, and PyPI's torchvision does not import beside the CPU torch this
project pins (installing timm pulls a different torch). The towers are small, so they are written here with the
exact parameter names of the timm models OpenVLA builds (`vit_large_patch14_reg4_dinov2.lvd142m`,
`vit_so400m_patch14_siglip_224/384`), which is what makes the released safetensors load strictly:

- `patch_embed.proj` (a conv with stride = patch size), `pos_embed`, optional `cls_token` / `reg_token`,
  `blocks.N.{norm1, attn.qkv, attn.proj, ls1.scale_factor, norm2, mlp.fc1, mlp.fc2, ls2.scale_factor}`, `norm`,
  and SigLIP's `attn_pool.*` (a latent-query attention-pool head OpenVLA never runs; kept so the checkpoint
  loads strictly).
- DINOv2 adds `pos_embed` to the patch tokens only, then prepends the CLS and 4 register tokens; SigLIP has no
  prefix tokens. LayerScale's parameter is `scale_factor` (OpenVLA renames timm's `gamma`).
- OpenVLA's features are the output of block `depth - 2` (timm's `get_intermediate_layers(n={depth - 2})`),
  prefix tokens dropped, no final norm. The blocks after it cannot change that output, so they are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class ViTSpec:
    """The architecture of one timm ViT as OpenVLA creates it (`num_classes=0`)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_size: int
    img_size: int
    class_token: bool
    reg_tokens: int
    layer_scale: bool
    attn_pool: bool
    act: str  # "gelu" (exact) or "gelu_tanh"

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)  # timm truncates, e.g. int(1152 * 3.7362) = 4304


_DINOV2_L = dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, patch_size=14, class_token=True,
                 reg_tokens=4, layer_scale=True, attn_pool=False, act="gelu")  # fmt: skip
_SIGLIP_SO400M = dict(embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362, patch_size=14, class_token=False,
                      reg_tokens=0, layer_scale=False, attn_pool=True, act="gelu")  # fmt: skip
# The timm model ids OpenVLA's released backbones use (timm's defaults: exact GELU, LayerNorm eps 1e-6, qkv bias).
TIMM_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vit_large_patch14_reg4_dinov2.lvd142m": _DINOV2_L,
    "vit_large_patch14_reg4_dinov2": _DINOV2_L,
    "vit_so400m_patch14_siglip_224": _SIGLIP_SO400M,
    "vit_so400m_patch14_siglip_384": _SIGLIP_SO400M,
}
# Keyword arguments a checkpoint's `timm_model_kwargs` may pass to `timm.create_model`, as ViTSpec fields.
_TIMM_KWARGS = {"embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "reg_tokens", "class_token"}
_ACT_LAYERS = {None: None, "gelu": "gelu", "gelu_tanh": "gelu_tanh", "gelu-pytorch-tanh": "gelu_tanh"}


def vit_spec(timm_id: str, img_size: int, kwargs: dict[str, Any] | None, act_override: str | None) -> ViTSpec:
    """The spec of `timm.create_model(timm_id, img_size=img_size, act_layer=act_override, **kwargs)`."""
    if timm_id not in TIMM_ARCHITECTURES:
        raise ValueError(
            f"unknown vision backbone {timm_id!r} in config.json timm_model_ids; this OpenVLA supports "
            f"{', '.join(TIMM_ARCHITECTURES)}"
        )
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - _TIMM_KWARGS)
    if unknown:
        raise ValueError(
            f"timm_model_kwargs for {timm_id} has unsupported keys {unknown}; known: {sorted(_TIMM_KWARGS)}"
        )
    if act_override not in _ACT_LAYERS:
        raise ValueError(f"timm_override_act_layers value {act_override!r} is not one of {list(_ACT_LAYERS)}")
    spec = ViTSpec(img_size=img_size, **TIMM_ARCHITECTURES[timm_id])
    spec = replace(spec, **kwargs)
    if act_override:
        spec = replace(spec, act=_ACT_LAYERS[act_override])
    if spec.img_size % spec.patch_size:
        raise ValueError(f"image size {img_size} is not a multiple of the patch size {spec.patch_size}")
    return spec


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class PatchEmbed(nn.Module):
    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, spec.embed_dim, kernel_size=spec.patch_size, stride=spec.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, P, D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if act == "gelu_tanh" else "none")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        d = spec.embed_dim
        self.norm1 = _layer_norm(d)
        self.attn = Attention(d, spec.num_heads)
        self.ls1 = LayerScale(d) if spec.layer_scale else nn.Identity()
        self.norm2 = _layer_norm(d)
        self.mlp = Mlp(d, spec.mlp_hidden, spec.act)
        self.ls2 = LayerScale(d) if spec.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPoolLatent(nn.Module):
    """SigLIP's "map" head: one latent query attends over the tokens, then an MLP. Unused by OpenVLA."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        d = spec.embed_dim
        self.num_heads = spec.num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, d))
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.norm = _layer_norm(d)
        self.mlp = Mlp(d, spec.mlp_hidden, spec.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads
        q = self.q(self.latent.expand(b, -1, -1)).reshape(b, 1, h, d // h).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, d))
        out = out + self.mlp(self.norm(out))
        return out[:, 0]


class TimmViT(nn.Module):
    """A timm VisionTransformer (global pool off) whose forward returns OpenVLA's patch features."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.spec = spec
        d = spec.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if spec.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, spec.reg_tokens, d)) if spec.reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_patches, d))
        self.patch_embed = PatchEmbed(spec)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = _layer_norm(d)
        self.attn_pool = AttentionPoolLatent(spec) if spec.attn_pool else None
        self.gradient_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        """Random init of a tower trained from scratch (released weights replace all of it). The position
        embedding is drawn at std 0.5, not timm's 0.02: at 0.02 a fresh tower barely tells patches apart by
        position, and a tiny VLA trained from scratch by RL cannot learn where things are."""
        nn.init.normal_(self.pos_embed, std=0.5)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for p in (self.cls_token, self.reg_token):
            if p is not None:
                nn.init.normal_(p, std=1e-6)
        if self.attn_pool is not None:
            nn.init.trunc_normal_(self.attn_pool.latent, std=self.spec.embed_dim**-0.5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] (normalised) -> features of block depth-2 [B, num_patches, D]."""
        x = self.patch_embed(pixels) + self.pos_embed
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        x = torch.cat([*prefix, x], dim=1)
        for block in self.blocks[: max(self.spec.depth - 1, 1)]:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x[:, self.spec.num_prefix_tokens :]


class VisionBackbone(nn.Module):
    """OpenVLA's (fused) backbone: channels 0-2 go to `featurizer`, 3-5 to `fused_featurizer`; features are
    concatenated along the feature axis ([B, P, D1 + D2]).

    Several images (OpenVLA-OFT's `num_images_in_input`) come stacked along the channel axis, each with its own
    `num_channels` (6 fused: main image's 0-5, wrist image's 6-11); as in OFT's backbone every image goes through
    the towers on its own and the patches of all images are concatenated along the patch axis, image after image
    ([B, I * P, D])."""

    def __init__(self, specs: list[ViTSpec]) -> None:
        super().__init__()
        self.featurizer = TimmViT(specs[0])
        self.fused_featurizer = TimmViT(specs[1]) if len(specs) > 1 else None
        if self.fused_featurizer is not None and specs[0].num_patches != specs[1].num_patches:
            raise ValueError(
                f"fused towers disagree on the patch grid: {specs[0].num_patches} vs {specs[1].num_patches}"
            )

    @property
    def embed_dim(self) -> int:
        dims = self.featurizer.spec.embed_dim
        return dims + (self.fused_featurizer.spec.embed_dim if self.fused_featurizer is not None else 0)

    @property
    def num_patches(self) -> int:
        return self.featurizer.spec.num_patches

    @property
    def num_channels(self) -> int:
        return 6 if self.fused_featurizer is not None else 3

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, I * num_channels, S, S] (I images) -> patch features [B, I * P, D]."""
        batch, channels, height, width = pixel_values.shape
        if channels % self.num_channels:
            raise ValueError(
                f"pixel_values have {channels} channels, not a whole number of images of {self.num_channels}"
            )
        images = channels // self.num_channels
        # the images of a row go through the towers as extra batch rows: one call, the same per-image features
        features = self._features(pixel_values.reshape(batch * images, self.num_channels, height, width))
        return features.reshape(batch, images * features.shape[1], features.shape[2])

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, num_channels, S, S] -> [B, P, D] for one image per row."""
        if self.fused_featurizer is None:
            return self.featurizer(pixel_values)
        img, img_fused = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(img), self.fused_featurizer(img_fused)], dim=2)
