"""The OpenVLA network: vision backbone -> projector -> Llama, with the released checkpoint's parameter names.

`OpenVLAModel` takes tensors only (token ids, attention masks, pixel values); the policies in `policy.py`
(autoregressive OpenVLA) and `policies/openvla_oft` (parallel decoding) turn env observations into those tensors
and tokens back into actions. Parameter names are those of `OpenVLAForActionPrediction`:
`vision_backbone.{featurizer,fused_featurizer}.*`, `projector.fc1/fc2/fc3.*`, `language_model.model.*`,
`language_model.lm_head.weight`.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from policies.openvla.configuration_openvla import OpenVLACheckpointConfig
from policies.openvla.vision import VisionBackbone


class Projector(nn.Module):
    """OpenVLA's projector: fc1 -> GELU -> fc2 -> GELU -> fc3 (fused backbone, "fused-gelu-mlp") or
    fc1 -> GELU -> fc2 (single backbone, "gelu-mlp")."""

    def __init__(self, fused: bool, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fused = fused
        width = 4 * vision_dim if fused else llm_dim
        self.fc1 = nn.Linear(vision_dim, width)
        self.fc2 = nn.Linear(width, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim) if fused else None
        self.act = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act(self.fc1(features)))
        return self.fc3(self.act(x)) if self.fc3 is not None else x


def _cache_keyword() -> str:
    """transformers >= 5.24 calls the KV cache argument `cache`; earlier versions `past_key_values`."""
    from transformers.models.llama.modeling_llama import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


class OpenVLAModel(nn.Module):
    """Vision backbone, projector and Llama language model (`LlamaForCausalLM`)."""

    def __init__(self, checkpoint_config: OpenVLACheckpointConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.checkpoint_config = checkpoint_config
        self.vision_backbone = VisionBackbone(checkpoint_config.vit_specs())
        llama_config = LlamaConfig(
            **checkpoint_config.llama_kwargs(), attn_implementation=attn_implementation
        )
        self.projector = Projector(
            checkpoint_config.use_fused_vision_backbone,
            self.vision_backbone.embed_dim,
            llama_config.hidden_size,
        )
        self.language_model = LlamaForCausalLM(llama_config)
        self._cache_kw = _cache_keyword()

    @property
    def hidden_size(self) -> int:
        return self.language_model.config.hidden_size

    @property
    def num_patches(self) -> int:
        return self.vision_backbone.num_patches

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(ids)

    def embed_prefix(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [B, 1 + P + E + T - 1, H] with the projected patches right after the first token, followed
        by the `extra` embeddings [B, E, H] when given (OpenVLA-OFT's proprio token), and the matching
        attention mask."""
        dtype = self.projector.fc1.weight.dtype
        patches = self.projector(self.vision_backbone(pixel_values.to(dtype)))
        if extra is not None:
            patches = torch.cat([patches, extra.to(patches.dtype)], dim=1)
        text = self.embed_tokens(input_ids)
        embeds = torch.cat([text[:, :1], patches.to(text.dtype), text[:, 1:]], dim=1)
        ones = attention_mask.new_ones(patches.shape[:2])
        mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        return embeds, mask

    def decode(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: object | None = None,
        mask_4d: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Llama's final hidden states [B, L, H] (after its last norm) for `embeds` [B, L, H].

        `attention_mask` [B, past + L] is the padding mask; `mask_4d` [B, 1, L, past + L] (additive) replaces
        the causal mask built from it. `cache` (a transformers Cache) is extended in place.
        """
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        out = self.language_model.model(
            inputs_embeds=embeds,
            attention_mask=mask_4d if mask_4d is not None else attention_mask,
            position_ids=position_ids,
            **kwargs,
        )
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.lm_head(hidden)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """Full-vocabulary logits [B, 1 + P + T - 1, V], as `OpenVLAForActionPrediction.forward` returns."""
        embeds, mask = self.embed_prefix(input_ids, attention_mask, pixel_values)
        return self.logits(self.decode(embeds, mask, positions_from_mask(mask)))


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, L] that skip masked (padding) slots: a padded row computes what it would alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def new_cache(model: OpenVLAModel) -> object:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.language_model.config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


class ValueHead(nn.Module):
    """Values [..., outputs] from hidden states [..., H]: Linear -> GELU -> Linear, in the head's own dtype
    (float32 by default, whatever the language model's dtype). The last layer starts at zero."""

    def __init__(self, hidden_size: int, width: int, outputs: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(width, outputs)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden.to(self.fc1.weight.dtype))))
