"""Gemma towers and the joint attention that lets the action expert read the PaliGemma prefix.

pi0 runs two Gemma towers of equal depth side by side: the VLM (PaliGemma's language model) over the prefix
tokens (images, language) and the action expert over the suffix tokens (state, noisy actions). In every layer
each tower normalises its own tokens and projects them with its own q/k/v weights; attention then runs once over
the concatenated sequence, and each tower applies its own output projection, residual and MLP to its tokens.
(openpi: `gemma.Module` with two configs; LeRobot: `PaliGemmaWithExpertModel`.)

Conventions that the released weights need: RMSNorm scales by (1 + w) in float32 (eps 1e-6), the gated MLP
uses GELU-tanh, rotary embeddings use theta 10000 in the half-rotation layout, attention logits are scaled by
head_dim^-0.5 and masked by adding -2.3819763e38 (so a fully padded query row is uniform, never NaN), softmax
runs in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from policies.pi0.configuration_pi0 import GemmaSize

RMS_NORM_EPS = 1e-6
ROPE_THETA = 10_000.0
MASK_VALUE = -2.3819763e38  # big_vision / openpi's "big_neg"

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [B, S, kv_heads, head_dim]


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + RMS_NORM_EPS)
        return (h * (1.0 + self.weight.float())).to(x.dtype)


class GemmaAttention(nn.Module):
    """Only the projections: attention itself runs jointly over both towers (`joint_layer`)."""

    def __init__(self, size: GemmaSize) -> None:
        super().__init__()
        self.q_proj = nn.Linear(size.width, size.num_heads * size.head_dim, bias=False)
        self.k_proj = nn.Linear(size.width, size.num_kv_heads * size.head_dim, bias=False)
        self.v_proj = nn.Linear(size.width, size.num_kv_heads * size.head_dim, bias=False)
        self.o_proj = nn.Linear(size.num_heads * size.head_dim, size.width, bias=False)


class GemmaMLP(nn.Module):
    def __init__(self, size: GemmaSize) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(size.width, size.mlp_dim, bias=False)
        self.up_proj = nn.Linear(size.width, size.mlp_dim, bias=False)
        self.down_proj = nn.Linear(size.mlp_dim, size.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class GemmaDecoderLayer(nn.Module):
    def __init__(self, size: GemmaSize) -> None:
        super().__init__()
        self.size = size
        self.input_layernorm = RMSNorm(size.width)
        self.self_attn = GemmaAttention(size)
        self.post_attention_layernorm = RMSNorm(size.width)
        self.mlp = GemmaMLP(size)

    def forward(self, x: torch.Tensor, attended: torch.Tensor | None = None):
        """Either half of the layer around the joint attention: `layer(x)` -> q, k, v of this tower's tokens;
        `layer(x, attended)` -> the layer's output. (Both go through `__call__`, so FSDP2 can shard a layer.)"""
        return self.qkv(x) if attended is None else self.finish(x, attended)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projections [B, L, heads * D], [B, L, kv_heads * D] x 2 of this tower's normalised tokens (flat: fresh
        tensors, not views, as FSDP2 wants a unit's outputs)."""
        h = self.input_layernorm(x)
        return self.self_attn.q_proj(h), self.self_attn.k_proj(h), self.self_attn.v_proj(h)

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Output projection, residual, MLP and residual for this tower's tokens."""
        x = x + self.self_attn.o_proj(attended)
        return x + self.mlp(self.post_attention_layernorm(x))


class GemmaModel(nn.Module):
    """A Gemma tower: `embed_tokens` (VLM only), `layers.{i}`, final `norm`."""

    def __init__(self, size: GemmaSize, vocab_size: int | None) -> None:
        super().__init__()
        self.size = size
        if vocab_size is not None:
            self.embed_tokens = nn.Embedding(vocab_size, size.width)
        self.layers = nn.ModuleList(GemmaDecoderLayer(size) for _ in range(size.depth))
        self.norm = RMSNorm(size.width)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings times sqrt(width), as Gemma scales them."""
        emb = self.embed_tokens(token_ids)
        return emb * torch.tensor(self.size.width**0.5, dtype=emb.dtype)


def rotary(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, L, H, D] by positions [B, L] (half-rotation layout, theta 10000, angles in float32)."""
    d = x.shape[-1]
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, d, 2, dtype=torch.int64, device=x.device).float() / d))
    angles = positions.float()[..., None] * inv_freq  # [B, L, D/2]
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention: q [B, L, H, D], k/v [B, S, KV, D], mask bool [B, L, S] -> [B, L, H * D]."""
    b, n, heads, d = q.shape
    groups = heads // k.shape[2]
    q = q.transpose(1, 2)  # [B, H, L, D]
    k = k.transpose(1, 2).repeat_interleave(groups, dim=1)
    v = v.transpose(1, 2).repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * d**-0.5
    bias = torch.where(mask[:, None], 0.0, MASK_VALUE).to(scores.dtype)
    probs = torch.softmax(scores + bias, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(probs, v).transpose(1, 2).reshape(b, n, heads * d)


def joint_layer(
    layers: list[GemmaDecoderLayer],
    hidden: list[torch.Tensor | None],
    positions: torch.Tensor,
    mask: torch.Tensor,
    cache: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[list[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]:
    """One layer of both towers. `hidden[i]` is tower i's tokens (None: tower i has none in this call).

    `cache` holds keys/values of earlier tokens (the prefix) that the queries may also attend to; `mask`
    [B, L, S] covers cached keys first, then this call's tokens. Returns the new hidden states and this call's
    keys/values (after rotary), which become the cache of a prefix pass.
    """
    head_dim = layers[0].size.head_dim
    parts = [layer(h) for layer, h in zip(layers, hidden) if h is not None]
    q, k, v = (torch.cat(t, dim=1).unflatten(-1, (-1, head_dim)) for t in zip(*parts))
    q, k = rotary(q, positions), rotary(k, positions)
    new_kv = (k, v)
    if cache is not None:
        k, v = torch.cat([cache[0], k], dim=1), torch.cat([cache[1], v], dim=1)
    attended = attention(q, k, v, mask)
    out: list[torch.Tensor | None] = []
    start = 0
    for layer, h in zip(layers, hidden):
        if h is None:
            out.append(None)
            continue
        end = start + h.shape[1]
        out.append(layer(h, attended[:, start:end].to(h.dtype)))
        start = end
    return out, new_kv


class JointTransformer(nn.Module):
    """Runs the VLM tower and the expert tower layer by layer through `joint_layer`."""

    def __init__(self, towers: list[GemmaModel]) -> None:
        super().__init__()
        self._towers = towers  # registered by their owners under the released names; not submodules here
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden: list[torch.Tensor | None],
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None = None,
    ) -> tuple[list[torch.Tensor | None], KVCache]:
        """Final-normed outputs per tower, and the keys/values of every layer (the prefix cache)."""
        kv: KVCache = []
        for i in range(len(self._towers[0].layers)):
            layers = [t.layers[i] for t in self._towers]
            layer_cache = cache[i] if cache is not None else None
            if self.gradient_checkpointing and torch.is_grad_enabled():
                hidden, layer_kv = checkpoint(
                    joint_layer, layers, hidden, positions, mask, layer_cache, use_reentrant=False
                )
            else:
                hidden, layer_kv = joint_layer(layers, hidden, positions, mask, layer_cache)
            kv.append(layer_kv)
        return [t.norm(h) if h is not None else None for t, h in zip(self._towers, hidden)], kv
