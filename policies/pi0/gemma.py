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

pi0.5's action expert conditions on the flow time through adaptive RMSNorm (openpi's `RMSNorm(x, cond)`): a tower
built with `cond_dim` has, in place of each norm's weight, a dense layer from the condition [B, cond_dim] to a
scale, shift and gate [B, width] each; the norm returns norm(x) * (1 + scale) + shift, and the residual branch
the norm feeds is multiplied by the gate (x + gate * attention(...), x + gate * mlp(...)).
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
    """Gemma's RMSNorm (`weight`, scale 1 + w); with `cond_dim`, the adaptive RMSNorm of pi0.5's expert (`dense`:
    condition -> scale, shift, gate; zero-initialised, as openpi's, so a fresh one is the plain norm with its
    residual branch gated off)."""

    def __init__(self, dim: int, cond_dim: int | None = None) -> None:
        super().__init__()
        if cond_dim is None:
            self.weight = nn.Parameter(torch.zeros(dim))
        else:
            self.dense = nn.Linear(cond_dim, 3 * dim)
            nn.init.zeros_(self.dense.weight)
            nn.init.zeros_(self.dense.bias)

    @property
    def adaptive(self) -> bool:
        return hasattr(self, "dense")

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scale, shift and gate [B, 1, dim] for a condition [B, cond_dim]."""
        scale, shift, gate = self.dense(cond)[:, None].chunk(3, dim=-1)
        return scale, shift, gate

    def gate(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """The residual gate [B, 1, dim] of an adaptive norm; None for a plain one."""
        return self.modulation(cond)[2] if self.adaptive else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + RMS_NORM_EPS)
        if not self.adaptive:
            return (h * (1.0 + self.weight.float())).to(x.dtype)
        if cond is None:
            raise ValueError("an adaptive RMSNorm (adaRMS) needs its condition (the expert's time embedding)")
        scale, shift, _ = self.modulation(cond)
        return (h * (1.0 + scale.float()) + shift.float()).to(x.dtype)


def gated(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """The residual x + branch, or x + branch * gate after an adaptive norm."""
    return x + branch if gate is None else x + branch * gate


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
    def __init__(self, size: GemmaSize, cond_dim: int | None = None) -> None:
        super().__init__()
        self.size = size
        self.input_layernorm = RMSNorm(size.width, cond_dim)
        self.self_attn = GemmaAttention(size)
        self.post_attention_layernorm = RMSNorm(size.width, cond_dim)
        self.mlp = GemmaMLP(size)

    def forward(
        self, x: torch.Tensor, attended: torch.Tensor | None = None, cond: torch.Tensor | None = None
    ):
        """Either half of the layer around the joint attention: `layer(x)` -> q, k, v of this tower's tokens;
        `layer(x, attended)` -> the layer's output. `cond` [B, cond_dim] conditions adaptive norms. (Both go
        through `__call__`, so FSDP2 can shard a layer.)"""
        return self.qkv(x, cond) if attended is None else self.finish(x, attended, cond)

    def qkv(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projections [B, L, heads * D], [B, L, kv_heads * D] x 2 of this tower's normalised tokens (flat: fresh
        tensors, not views, as FSDP2 wants a unit's outputs)."""
        h = self.input_layernorm(x, cond)
        return self.self_attn.q_proj(h), self.self_attn.k_proj(h), self.self_attn.v_proj(h)

    def finish(
        self, x: torch.Tensor, attended: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Output projection, (gated) residual, MLP and (gated) residual for this tower's tokens."""
        x = gated(x, self.self_attn.o_proj(attended), self.input_layernorm.gate(cond))
        return gated(
            x, self.mlp(self.post_attention_layernorm(x, cond)), self.post_attention_layernorm.gate(cond)
        )


class GemmaModel(nn.Module):
    """A Gemma tower: `embed_tokens` (VLM only), `layers.{i}`, final `norm`; with `cond_dim`, every norm is
    adaptive (pi0.5's expert)."""

    def __init__(self, size: GemmaSize, vocab_size: int | None, cond_dim: int | None = None) -> None:
        super().__init__()
        self.size = size
        if vocab_size is not None:
            self.embed_tokens = nn.Embedding(vocab_size, size.width)
        self.layers = nn.ModuleList(GemmaDecoderLayer(size, cond_dim) for _ in range(size.depth))
        self.norm = RMSNorm(size.width, cond_dim)

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
    conds: list[torch.Tensor | None],
) -> tuple[list[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]:
    """One layer of both towers. `hidden[i]` is tower i's tokens (None: tower i has none in this call), `conds[i]`
    the condition of its adaptive norms (None: plain norms).

    `cache` holds keys/values of earlier tokens (the prefix) that the queries may also attend to; `mask`
    [B, L, S] covers cached keys first, then this call's tokens. Returns the new hidden states and this call's
    keys/values (after rotary), which become the cache of a prefix pass.
    """
    head_dim = layers[0].size.head_dim
    parts = [layer(h, cond=c) for layer, h, c in zip(layers, hidden, conds) if h is not None]
    q, k, v = (torch.cat(t, dim=1).unflatten(-1, (-1, head_dim)) for t in zip(*parts))
    q, k = rotary(q, positions), rotary(k, positions)
    new_kv = (k, v)
    if cache is not None:
        k, v = torch.cat([cache[0], k], dim=1), torch.cat([cache[1], v], dim=1)
    attended = attention(q, k, v, mask)
    out: list[torch.Tensor | None] = []
    start = 0
    for layer, h, c in zip(layers, hidden, conds):
        if h is None:
            out.append(None)
            continue
        end = start + h.shape[1]
        out.append(layer(h, attended[:, start:end].to(h.dtype), c))
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
        conds: list[torch.Tensor | None] | None = None,
    ) -> tuple[list[torch.Tensor | None], KVCache]:
        """Final-normed outputs per tower, and the keys/values of every layer (the prefix cache). `conds[i]`
        [B, cond_dim] conditions tower i's adaptive norms (None: no tower has any)."""
        conds = conds if conds is not None else [None] * len(self._towers)
        kv: KVCache = []
        for i in range(len(self._towers[0].layers)):
            layers = [t.layers[i] for t in self._towers]
            layer_cache = cache[i] if cache is not None else None
            if self.gradient_checkpointing and torch.is_grad_enabled():
                hidden, layer_kv = checkpoint(
                    joint_layer, layers, hidden, positions, mask, layer_cache, conds, use_reentrant=False
                )
            else:
                hidden, layer_kv = joint_layer(layers, hidden, positions, mask, layer_cache, conds)
            kv.append(layer_kv)
        normed = [t.norm(h, c) if h is not None else None for t, h, c in zip(self._towers, hidden, conds)]
        return normed, kv
