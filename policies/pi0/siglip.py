"""The SigLIP vision tower of PaliGemma, with the parameter names of transformers' `SiglipVisionTransformer`.

Patch convolution, learned position embedding, pre-LN encoder blocks (GELU-tanh MLP), post-LayerNorm (eps
1e-6), no pooling head: the output is one token per patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from policies.pi0.configuration_pi0 import SiglipSize

LAYER_NORM_EPS = 1e-6


class SiglipEmbeddings(nn.Module):
    def __init__(self, size: SiglipSize) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, size.hidden_size, size.patch_size, stride=size.patch_size)
        self.position_embedding = nn.Embedding(size.num_patches, size.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, num_patches, hidden]."""
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))
        return patches.flatten(2).transpose(1, 2) + self.position_embedding.weight[None]


class SiglipAttention(nn.Module):
    def __init__(self, size: SiglipSize) -> None:
        super().__init__()
        hidden = size.hidden_size
        self.num_heads = size.num_heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            proj(x).view(b, n, self.num_heads, -1).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out)


class SiglipMLP(nn.Module):
    def __init__(self, size: SiglipSize) -> None:
        super().__init__()
        self.fc1 = nn.Linear(size.hidden_size, size.intermediate_size)
        self.fc2 = nn.Linear(size.intermediate_size, size.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, size: SiglipSize) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(size.hidden_size, eps=LAYER_NORM_EPS)
        self.self_attn = SiglipAttention(size)
        self.layer_norm2 = nn.LayerNorm(size.hidden_size, eps=LAYER_NORM_EPS)
        self.mlp = SiglipMLP(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, size: SiglipSize) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(size) for _ in range(size.num_layers))


class SiglipVisionModel(nn.Module):
    """`vision_model.*` of transformers' SiglipVisionModel without the pooling head."""

    def __init__(self, size: SiglipSize) -> None:
        super().__init__()
        self.embeddings = SiglipEmbeddings(size)
        self.encoder = SiglipEncoder(size)
        self.post_layernorm = nn.LayerNorm(size.hidden_size, eps=LAYER_NORM_EPS)
        self.gradient_checkpointing = False

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] in [-1, 1] -> patch features [B, (S / patch)^2, hidden]."""
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.post_layernorm(x)


class SiglipVisionTower(nn.Module):
    """Holds `vision_model`, so parameter names read `vision_tower.vision_model.*` as in PaliGemma."""

    def __init__(self, size: SiglipSize) -> None:
        super().__init__()
        self.vision_model = SiglipVisionModel(size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixels)
