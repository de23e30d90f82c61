"""The pi0 network: PaliGemma (SigLIP + Gemma) over images and language, a Gemma action expert over the state
and the noisy actions, trained by flow matching and sampled by Euler steps of its velocity field.

Module and parameter names follow the published PyTorch layout (LeRobot / openpi), so a released
model.safetensors loads with its names (minus LeRobot's leading `model.`):
  paligemma_with_expert.paligemma.model.{vision_tower.vision_model, multi_modal_projector.linear, language_model}
  paligemma_with_expert.gemma_expert.model.{layers, norm}
  state_proj, action_in_proj, action_out_proj, action_time_mlp_in, action_time_mlp_out

Sequence layout: prefix = [image tokens of each camera..., language tokens], suffix = [state token, C action
tokens]. Every token has an "ar" flag (0 for the prefix, 1 for the state token and the first action token, 0
for the rest); query i may attend key j when cumsum(ar)[j] <= cumsum(ar)[i] and both are valid. The prefix is
thus bidirectional and never sees the suffix; the state sees the prefix and itself; actions see everything.
Position ids count valid tokens (cumsum(valid) - 1).

Time convention (openpi's): t = 1 is noise, t = 0 the data; x_t = t * noise + (1 - t) * actions, and the
network predicts the velocity u_t = noise - actions.

`PaliGemmaFlowModel` is what pi0 and pi0.5 share (prefix, KV cache, joint pass, loss, sampling); a subclass
defines the suffix (`embed_suffix`) and how the expert is conditioned on time (`expert_condition`): pi0 mixes the
time embedding into every action token (`Pi0FlowModel`), pi0.5 feeds it to adaptive norms
(`policies.pi05.modeling_pi05.Pi05FlowModel`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from policies.pi0.configuration_pi0 import Pi0Config
from policies.pi0.gemma import GemmaModel, JointTransformer, KVCache
from policies.pi0.siglip import SiglipVisionTower


@dataclass
class Pi0Inputs:
    """Model inputs after processing (see processing_pi0.py)."""

    images: torch.Tensor  # [B, cams, 3, S, S] float in [-1, 1]
    image_masks: torch.Tensor  # [B, cams] bool; False: a missing camera
    lang_tokens: torch.Tensor  # [B, L] int64, right-padded
    lang_masks: torch.Tensor  # [B, L] bool
    state: torch.Tensor  # [B, max_state_dim] float, normalised and zero-padded


@dataclass
class PrefixCache:
    """The prefix pass, computed once per observation and reused by every denoising step."""

    kv: KVCache
    pad_masks: torch.Tensor  # [B, P] bool
    output: torch.Tensor  # [B, P, vlm width] the VLM's final-normed prefix output


def make_att_2d_masks(pad_masks: torch.Tensor, ar_mask: torch.Tensor) -> torch.Tensor:
    """bool [B, L, L]: query i sees key j when cumsum(ar)[j] <= cumsum(ar)[i] and both are valid."""
    cumsum = torch.cumsum(ar_mask.to(torch.int64).expand_as(pad_masks), dim=1)
    causal = cumsum[:, None, :] <= cumsum[:, :, None]
    return causal & pad_masks[:, None, :] & pad_masks[:, :, None]


def time_embedding(time: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """Sine-cosine embedding [B, dim] of scalar times [B], computed in float64 (as LeRobot/openpi do)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angles = (1.0 / period * 2 * math.pi)[None, :] * time[:, None].to(torch.float64)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class _Container(nn.Module):
    """A named level of the released parameter layout (e.g. `paligemma.model`)."""

    def __init__(self, **modules: nn.Module) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


class Projector(nn.Module):
    def __init__(self, vision_width: int, vlm_width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(vision_width, vlm_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class PaliGemmaWithExpert(nn.Module):
    """SigLIP, the projector and PaliGemma's Gemma, beside the action expert (adaptive norms with `expert_cond_dim`)."""

    def __init__(self, config: Pi0Config, expert_cond_dim: int | None = None) -> None:
        super().__init__()
        language_model = GemmaModel(config.vlm, config.vocab_size)
        expert_model = GemmaModel(config.expert, None, cond_dim=expert_cond_dim)
        core = _Container(
            vision_tower=SiglipVisionTower(config.vision),
            multi_modal_projector=Projector(config.vision.hidden_size, config.vlm.width),
            language_model=language_model,
        )
        self.paligemma = _Container(model=core)
        self.gemma_expert = _Container(model=expert_model)
        self.joint = JointTransformer([language_model, expert_model])


class PaliGemmaFlowModel(nn.Module):
    """`embed_prefix`, the prefix KV cache, velocities, the flow-matching loss and sampling. Subclasses register
    `action_in_proj` / `action_out_proj` and their time heads, and define `embed_suffix` and `expert_condition`."""

    action_in_proj: nn.Linear
    action_out_proj: nn.Linear

    def __init__(self, config: Pi0Config, expert_cond_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.paligemma_with_expert = PaliGemmaWithExpert(config, expert_cond_dim)

    # -- parts of the released layout ---------------------------------------------------------------------------
    @property
    def vision_tower(self) -> SiglipVisionTower:
        return self.paligemma_with_expert.paligemma.model.vision_tower

    @property
    def projector(self) -> Projector:
        return self.paligemma_with_expert.paligemma.model.multi_modal_projector

    @property
    def language_model(self) -> GemmaModel:
        return self.paligemma_with_expert.paligemma.model.language_model

    @property
    def dtype(self) -> torch.dtype:
        return self.action_in_proj.weight.dtype

    # -- embeddings ----------------------------------------------------------------------------------------------
    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [-1, 1] -> image tokens [B, patches, vlm width] (projected, not rescaled)."""
        return self.projector(self.vision_tower(pixels))

    def embed_prefix(self, inputs: Pi0Inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefix embeddings [B, P, W], valid mask [B, P] and ar flags [P] (all 0)."""
        tokens, masks = [], []
        for cam in range(inputs.images.shape[1]):
            emb = self.embed_image(inputs.images[:, cam])
            tokens.append(emb)
            masks.append(inputs.image_masks[:, cam, None].expand(-1, emb.shape[1]))
        tokens.append(self.language_model.embed(inputs.lang_tokens))
        masks.append(inputs.lang_masks)
        embs, pad = torch.cat(tokens, dim=1), torch.cat(masks, dim=1)
        return embs, pad, torch.zeros(embs.shape[1], dtype=torch.bool, device=embs.device)

    def embed_suffix(
        self, state: torch.Tensor, x_t: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Suffix embeddings [B, S_suffix, W_expert], valid mask and ar flags for state [B, max_state_dim], noisy
        actions [B, C, A] at times [B]."""
        raise NotImplementedError

    def expert_condition(self, time: torch.Tensor) -> torch.Tensor | None:
        """The condition [B, cond_dim] of the expert's adaptive norms at times [B]; None without them."""
        return None

    # -- the two execution paths -------------------------------------------------------------------------------
    def prefix_pass(self, inputs: Pi0Inputs) -> PrefixCache:
        """Run the VLM over the prefix once; its keys/values serve every denoising step."""
        embs, pad, ar = self.embed_prefix(inputs)
        positions = torch.cumsum(pad, dim=1) - 1
        (out, _), kv = self.paligemma_with_expert.joint([embs, None], positions, make_att_2d_masks(pad, ar))
        return PrefixCache(kv=kv, pad_masks=pad, output=out)

    def denoise_step(
        self, cache: PrefixCache, state: torch.Tensor, x_t: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity v_t [B, C, A] (float32) at x_t, times [B], and the expert's output [B, 1 + C, W_expert]."""
        embs, pad, ar = self.embed_suffix(state, x_t, time)
        b, n = pad.shape
        prefix_cols = cache.pad_masks[:, None, :].expand(b, n, -1)
        mask = torch.cat([prefix_cols, make_att_2d_masks(pad, ar)], dim=2)
        positions = cache.pad_masks.sum(dim=1, keepdim=True) + torch.cumsum(pad, dim=1) - 1
        conds = [None, self.expert_condition(time)]
        (_, out), _ = self.paligemma_with_expert.joint(
            [None, embs], positions, mask, cache=cache.kv, conds=conds
        )
        velocity = self.action_out_proj(out[:, -self.config.chunk_size :])
        return velocity.float(), out

    def joint_velocity(self, inputs: Pi0Inputs, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """The training path: prefix and suffix in one pass. Velocity [B, C, A] float32."""
        prefix, prefix_pad, prefix_ar = self.embed_prefix(inputs)
        suffix, suffix_pad, suffix_ar = self.embed_suffix(inputs.state, x_t, time)
        pad = torch.cat([prefix_pad, suffix_pad], dim=1)
        mask = make_att_2d_masks(pad, torch.cat([prefix_ar, suffix_ar]))
        positions = torch.cumsum(pad, dim=1) - 1
        conds = [None, self.expert_condition(time)]
        (_, out), _ = self.paligemma_with_expert.joint([prefix, suffix], positions, mask, conds=conds)
        return self.action_out_proj(out[:, -self.config.chunk_size :]).float()

    # -- flow matching -----------------------------------------------------------------------------------------
    def flow_matching_loss(
        self, inputs: Pi0Inputs, actions: torch.Tensor, noise: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        """Per-element loss (u_t - v_t)^2 [B, C, A] for normalised, padded actions; t=1 noise, t=0 data."""
        t = time[:, None, None]
        x_t = t * noise + (1 - t) * actions
        u_t = noise - actions
        return (u_t - self.joint_velocity(inputs, x_t, time)) ** 2

    @staticmethod
    def sample_time(
        batch: int, generator: torch.Generator | None = None, device: str = "cpu"
    ) -> torch.Tensor:
        """Training times: Beta(1.5, 1) * 0.999 + 0.001 (more weight near t = 1, the noisy end)."""
        u = torch.rand(batch, generator=generator, device=device)
        return u ** (1 / 1.5) * 0.999 + 0.001  # inverse CDF of Beta(1.5, 1)

    @torch.no_grad()
    def sample_actions(self, inputs: Pi0Inputs, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
        """Deterministic Euler integration of the velocity from `noise` at t = 1 down to t = 0."""
        from policies.pi0.flow_rl import denoise_times

        cache = self.prefix_pass(inputs)
        times, dt = denoise_times(num_steps)
        x = noise.float()
        for t in times.tolist():
            v, _ = self.denoise_step(cache, inputs.state, x, torch.full((x.shape[0],), t, device=x.device))
            x = x + dt * v
        return x


class Pi0FlowModel(PaliGemmaFlowModel):
    """pi0: a state token opens the suffix; each action token is an MLP of [action embedding, time embedding]."""

    def __init__(self, config: Pi0Config) -> None:
        super().__init__(config)
        width = config.expert.width
        self.state_proj = nn.Linear(config.max_state_dim, width)
        self.action_in_proj = nn.Linear(config.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, config.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)

    def embed_suffix(
        self, state: torch.Tensor, x_t: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Suffix embeddings [B, 1 + C, W_expert] for state [B, S], noisy actions [B, C, A] at times [B]."""
        dtype = self.dtype
        state_emb = self.state_proj(state.to(dtype))[:, None]
        action_emb = self.action_in_proj(x_t.to(dtype))
        temb = time_embedding(time, action_emb.shape[-1], self.config.min_period, self.config.max_period)
        temb = temb.to(dtype)[:, None].expand_as(action_emb)
        mixed = self.action_time_mlp_out(
            F.silu(self.action_time_mlp_in(torch.cat([action_emb, temb], dim=-1)))
        )
        embs = torch.cat([state_emb, mixed], dim=1)
        b, n = embs.shape[:2]
        pad = torch.ones(b, n, dtype=torch.bool, device=embs.device)
        ar = torch.zeros(n, dtype=torch.bool, device=embs.device)
        ar[:2] = True  # the state token and the first action token open new attention blocks
        return embs, pad, ar
