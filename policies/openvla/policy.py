"""The OpenVLA policies: observations -> prompt + image -> action tokens -> env actions.

`OpenVLAPolicyBase` holds what OpenVLA and OpenVLA-OFT share: building the network from a released checkpoint
or from a preset, processing, the action-bin distribution, the value head, save/load in the released layout,
and `evaluate`. Both score the C x A action tokens of a chunk from one window of final hidden states: the
last prompt position (which predicts the first action token, and whose state feeds the value head) and the
C x A - 1 positions after it. They differ in what fills those positions and how attention runs:
- `OpenVLAPolicy` (autoregressive, causal attention): the sampled tokens, decoded one by one with a KV cache
  at rollout time and teacher-forced in one pass in `evaluate`;
- `OpenVLAOFTPolicy` (policies/openvla_oft): empty (zero) embeddings, all tokens in one pass.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from algorithms.schema import ConfigError
from envs.base import EnvSpec, Obs
from policies.base import (
    CONFIG_NAME,
    EvaluateOutput,
    Policy,
    PolicyOutput,
    _atomic_write,
    load_state_dict_strict,
    register_policy,
)
from policies.lora import apply_lora, fold_lora, has_lora, merged_state_dict, set_gradient_checkpointing
from policies.openvla.checkpoint import (
    copy_aux_files,
    read_state_dict,
    resolve_architecture,
    saved_lora_config,
    write_state_dict,
)
from policies.openvla.configuration_openvla import (
    OpenVLACheckpointConfig,
    OpenVLAConfig,
)
from policies.openvla.modeling_openvla import OpenVLAModel, ValueHead, new_cache, positions_from_mask
from policies.openvla.processing_openvla import (
    ActionBins,
    ByteTokenizer,
    OpenVLAProcessor,
    PromptEncoder,
    ProprioNormalizer,
    WordTokenizer,
    image_transform_for,
    load_tokenizer,
)
from policies.openvla.sampling import action_log_probs, entropy, gather_log_probs, sample_bins
from policies.supervised import masked_mean, token_cross_entropy

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Modules beside the released network, saved under their own names; a checkpoint without them leaves them fresh.
HEADS = ("value_head", "proprio_projector", "action_head", "action_std")
# Heads that map hidden states to actions: they train fully next to LoRA adapters, as the value head does.
ACTION_HEADS = ("action_head", "action_std")
HEAD_PREFIXES = tuple(name + "." for name in HEADS)
MAX_SHARD_BYTES = 5 * 2**30


class OpenVLAPolicyBase(Policy):
    """Shared by OpenVLA and OpenVLA-OFT (see the module docstring)."""

    config_class: ClassVar[type[OpenVLAConfig]] = OpenVLAConfig
    attention_is_causal: ClassVar[bool] = True

    def __init__(self, config: OpenVLAConfig, env_spec: EnvSpec, meta_device: bool = False) -> None:
        """Build the network `config` describes (from `config.pretrained`'s config.json when set) with random
        weights; `meta_device=True` allocates none (`from_config` then assigns the checkpoint's)."""
        super().__init__(config, env_spec)
        ckpt, self.source_dir = resolve_architecture(config, env_spec)
        self.num_images = num_images_in_input(config, ckpt, env_spec)
        with torch.device("meta") if meta_device else contextlib.nullcontext():
            self.model = OpenVLAModel(ckpt, config.attn_implementation)
        self.num_chunks, self.action_dim = config.num_action_chunks, env_spec.action_dim
        self.num_tokens = self.num_chunks * self.action_dim
        self.action_start, self.action_end = ckpt.action_vocab_start, ckpt.action_vocab_end
        if not 0 <= config.top_k <= ckpt.n_action_bins:
            raise ValueError(f"policy.top_k={config.top_k} exceeds the {ckpt.n_action_bins} action bins")
        value_outputs = self.num_chunks if config.value_granularity == "step" else 1
        self.value_head = (
            ValueHead(self.model.hidden_size, config.value_hidden_size, value_outputs)
            if config.add_value_head
            else None
        )
        self.proprio_projector = self.build_proprio_projector()
        self.action_head, self.action_std = self.build_action_head()
        self.processor = self._build_processor(ckpt)
        if not meta_device:
            self._finish_setup()

    def _build_processor(self, ckpt: OpenVLACheckpointConfig) -> OpenVLAProcessor:
        config = self.config
        tokenizer = load_tokenizer(config.tokenizer, self.source_dir)
        if isinstance(tokenizer, (ByteTokenizer, WordTokenizer)) and tokenizer.vocab_size > self.action_start:
            raise ValueError(f"the built-in tokenizer's {tokenizer.vocab_size} ids overlap the action tokens from "
                             f"{self.action_start}; this checkpoint needs its own tokenizer (policy.tokenizer)")  # fmt: skip
        key, stats = ckpt.action_stats(config.unnorm_key)
        if len(stats["q01"]) != self.action_dim:
            raise ValueError(
                f"the checkpoint's norm_stats[{key!r}] has {len(stats['q01'])} action dims but the env has "
                f"{self.action_dim}; pick the matching unnorm_key or an env with that action_dim"
            )
        num_towers = 2 if ckpt.use_fused_vision_backbone else 1
        towers = ckpt.timm_model_ids[:num_towers]
        images = image_transform_for(towers, ckpt.image_sizes[0], self.source_dir, config.center_crop)
        bins = ActionBins(ckpt.n_action_bins, stats["q01"], stats["q99"], stats["mask"])
        prompts = PromptEncoder(tokenizer, ckpt.pad_token_id, config.max_prompt_length)
        proprio = None
        if self.proprio_projector is not None:
            proprio_stats = ckpt.norm_stats[key].get("proprio") or {}
            proprio = ProprioNormalizer(
                self.env_spec.state_dim, proprio_stats.get("q01"), proprio_stats.get("q99")
            )
        return OpenVLAProcessor(prompts, images, bins, proprio, self.num_images)

    def build_proprio_projector(self) -> nn.Module | None:
        """The module that turns `inputs["proprio"]` into extra prefix embeddings; none for OpenVLA."""
        return None

    def build_action_head(self) -> tuple[nn.Module | None, nn.Module | None]:
        """(a head that decodes actions from the action window's hidden states, its noise); none for OpenVLA,
        whose actions are the language model's tokens."""
        return None, None

    def _finish_setup(self) -> None:
        """Weight dtype, LoRA and gradient checkpointing, once the weights are final."""
        self.model.to(DTYPES[self.config.dtype])
        if self.config.lora.enabled:
            heads = [name for name in ACTION_HEADS if getattr(self, name) is not None]
            lora = self.config.lora
            apply_lora(self, lora.replace(always_train=[*lora.always_train, *heads]))
        set_gradient_checkpointing(self, self.config.gradient_checkpointing)

    # -- released layout ------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: OpenVLAConfig, env_spec: EnvSpec) -> OpenVLAPolicyBase:
        """Build the policy; with `config.pretrained`, architecture and weights come from that checkpoint: the
        released openvla/openvla-7b layout (config.json + safetensors, sharded or not), a folder written by
        `save_pretrained`, or a runtime checkpoint's `policy/` folder."""
        if not config.pretrained:
            return cls(config, env_spec)
        policy = cls(config, env_spec, meta_device=True)  # no memory or init time for weights about to load
        policy.load_weights(config.pretrained)
        policy._finish_setup()
        return policy

    def load_weights(self, directory) -> None:
        """Load a checkpoint strictly; the value head and the proprio projector may be absent (released OpenVLA
        checkpoints have neither; OpenVLA-OFT ships its proprio projector in a separate file) and then stay fresh.

        Released and `save_pretrained` checkpoints name tensors as the released model does; runtime checkpoints
        (`policies.base.write_pretrained`) use this policy's own names, with LoRA adapters when it had them.
        Those load as they are into a policy with the same LoRA config, or folded into plain weights before LoRA.
        """
        source = str(directory)
        state = read_state_dict(directory, DTYPES[self.config.dtype])
        runtime_layout = any(k.startswith("model.") for k in state)
        if has_lora(self):
            if not runtime_layout:
                raise RuntimeError(f"{source}: a released-layout checkpoint loads before LoRA is applied; set "
                                   "policy.pretrained and build the policy with make_policy")  # fmt: skip
            load_state_dict_strict(self, state, source=source)
            return
        if runtime_layout:
            state = fold_lora(state, saved_lora_config(directory, self.config.lora))
            state = {k.removeprefix("model."): v for k, v in state.items()}
        model_state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
        on_meta = any(p.is_meta for p in self.model.parameters())  # from_config: take the tensors, else copy
        load_state_dict_strict(self.model, model_state, source=source, assign=on_meta)
        for name in HEADS:
            head_state = {k: v for k, v in state.items() if k.startswith(name + ".")}
            if getattr(self, name) is not None and head_state:
                load_state_dict_strict(nn.ModuleDict({name: getattr(self, name)}), head_state, source=source)
        rotary = self.model.language_model.model.rotary_emb
        if rotary.inv_freq.is_meta:  # a non-persistent buffer: not in checkpoints, recomputed
            self.model.language_model.model.rotary_emb = type(rotary)(config=self.model.language_model.config)
        left = [n for n, t in [*self.model.named_parameters(), *self.model.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"{source}: tensors not initialised by the checkpoint: {left[:5]}")

    def fsdp_units(self) -> list[nn.Module]:
        """The transformer blocks, each its own FSDP2 unit (the runtime shards them, then the policy)."""
        towers = [self.model.vision_backbone.featurizer, self.model.vision_backbone.fused_featurizer]
        blocks = [block for tower in towers if tower is not None for block in tower.blocks]
        return [*blocks, *self.model.language_model.model.layers]

    def save_pretrained(self, directory) -> None:
        """config.json (the released fields + this suite's policy config and env spec) and the weights under the
        released names (LoRA folded in), plus the value head and the checkpoint's tokenizer/preprocessor files."""
        state = merged_state_dict(self)
        out = {
            k.removeprefix("model."): v for k, v in state.items() if k.startswith(("model.", *HEAD_PREFIXES))
        }
        write_state_dict(directory, out, MAX_SHARD_BYTES)
        described = dataclasses.replace(self.model.checkpoint_config, num_images_in_input=self.num_images)
        meta = {
            **described.to_dict(),
            "torch_dtype": self.config.dtype,
            "policy": self.config.to_dict(),
            "env_spec": dataclasses.asdict(self.env_spec),
        }
        _atomic_write(Path(directory) / CONFIG_NAME, lambda p: p.write_text(json.dumps(meta, indent=2)))
        copy_aux_files(self.source_dir, directory)

    # -- the action distribution ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.projector.fc1.weight.device

    def action_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-probs [..., n_bins] over the action tokens from final hidden states [..., H]."""
        logits = self.model.logits(hidden)[..., self.action_start : self.action_end]
        return action_log_probs(logits, self.config.temperature, self.config.top_k)

    def values(self, prompt_hidden: torch.Tensor) -> torch.Tensor | None:
        """Values [B] (per chunk) or [B, C] (per step) from the last prompt position's hidden state [B, H]."""
        if self.value_head is None:
            return None
        values = self.value_head(prompt_hidden)
        return values.squeeze(-1) if self.config.value_granularity == "chunk" else values

    def embed_prefix(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix embeddings and mask (`OpenVLAModel.embed_prefix`), with the proprio token when there is one."""
        extra = None
        if self.proprio_projector is not None:
            extra = self.proprio_projector(inputs["proprio"])[:, None]
        return self.model.embed_prefix(
            inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], extra=extra
        )

    def score_window(self, inputs: dict[str, torch.Tensor], continuation: torch.Tensor) -> torch.Tensor:
        """Final hidden states [B, C*A, H] of the last prompt position and the C*A - 1 after it, for the prompt
        and image in `inputs` followed by the embeddings `continuation` [B, K, H]."""
        embeds, mask = self.embed_prefix(inputs)
        prompt_end = embeds.shape[1]
        embeds = torch.cat([embeds, continuation.to(embeds.dtype)], dim=1)
        mask = torch.cat([mask, mask.new_ones(continuation.shape[:2])], dim=1)
        mask_4d = None if self.attention_is_causal else bidirectional_mask(mask, embeds.dtype)
        hidden = self.model.decode(embeds, mask, positions_from_mask(mask), mask_4d=mask_4d)
        return hidden[:, prompt_end - 1 : prompt_end - 1 + self.num_tokens]

    @abc.abstractmethod
    def continuation(self, bins: torch.Tensor) -> torch.Tensor:
        """The embeddings [B, K, H] that follow the prompt when the action tokens `bins` [B, C*A] are scored."""

    @abc.abstractmethod
    def decode_actions(
        self, inputs: dict[str, torch.Tensor], greedy: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(bins [B, C*A], their log-probs [B, C*A], values) for a batch of prepared inputs."""

    # -- the policy interface -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, obs: Obs, mode: str = "train") -> PolicyOutput:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        inputs = self.processor(obs, self.device, DTYPES[self.config.dtype])
        bins, logprobs, values = self.decode_actions(inputs, greedy=mode == "eval")
        shape = (bins.shape[0], self.num_chunks, self.action_dim)
        actions = self.processor.bins.to_env_units(bins.reshape(shape)).float()
        forward_inputs = {**inputs, "action_tokens": bins.reshape(shape)}
        return PolicyOutput(actions, logprobs.reshape(shape), values, forward_inputs)

    def evaluate(self, forward_inputs: dict[str, torch.Tensor]) -> EvaluateOutput:
        inputs = {k: v.to(self.device) for k, v in forward_inputs.items()}
        bins = inputs["action_tokens"].reshape(inputs["action_tokens"].shape[0], self.num_tokens)
        window = self.score_window(inputs, self.continuation(bins))
        log_probs = self.action_log_probs(window)
        shape = (bins.shape[0], self.num_chunks, self.action_dim)
        values = self.values(window[:, 0])
        # Fresh tensors, not views: FSDP2 hooks the outputs for backward, and views of them are fragile.
        return EvaluateOutput(
            logprobs=gather_log_probs(log_probs, bins).reshape(shape).clone(),
            entropy=entropy(log_probs).reshape(shape).clone(),
            values=values.clone() if values is not None else None,
        )

    # -- supervised fine-tuning -----------------------------------------------------------------------------
    @property
    def action_horizon(self) -> int:
        return self.num_chunks

    def supervised_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the demo's action tokens (the C x A bins `ActionBins.token_index` makes of its actions)
        under the same scoring window as `evaluate`: teacher-forced for OpenVLA, one parallel pass for OFT.

        Over the action tokens only, at temperature 1 and without top-k: the distribution `predict` samples from
        is this one with the sampling settings applied. (OpenVLA's own fine-tuning takes the cross-entropy over
        the whole vocabulary; the two differ only by the probability left on non-action tokens, which rollouts
        never sample.) Also logs `token_accuracy`, the share of tokens whose argmax is the demo's bin."""
        actions = batch["actions"].to(self.device)
        if actions.shape[1:] != (self.num_chunks, self.action_dim):
            raise ValueError(
                f"demo actions {tuple(actions.shape)} do not fit the policy's chunk "
                f"[B, {self.num_chunks}, {self.action_dim}] (policy.num_action_chunks x the env's action dims)"
            )
        inputs = self.processor(batch, self.device, DTYPES[self.config.dtype])
        bins = self.processor.bins.token_index(actions)
        window = self.score_window(inputs, self.continuation(bins.reshape(bins.shape[0], self.num_tokens)))
        logits = self.model.logits(window)[..., self.action_start : self.action_end]
        log_probs = logits.float().log_softmax(dim=-1).reshape(*bins.shape, -1)
        mask = batch["action_mask"].to(self.device)
        accuracy = masked_mean((log_probs.argmax(dim=-1) == bins).float(), mask)
        return token_cross_entropy(log_probs, bins, mask), {"token_accuracy": float(accuracy)}


def num_images_in_input(config: OpenVLAConfig, ckpt: OpenVLACheckpointConfig, env_spec: EnvSpec) -> int:
    """The camera images per input: `policy.num_images_in_input`, else what the checkpoint records, else 1.

    An explicit value may differ from the checkpoint's (fine-tuning a one-image model with the wrist image is how
    OFT's LIBERO checkpoints were made from OpenVLA); it is logged. Two images need the env's wrist camera."""
    recorded = ckpt.num_images_in_input
    count = config.num_images_in_input or recorded or 1
    if recorded is not None and count != recorded:
        logger.warning(
            "policy.num_images_in_input=%d, but the checkpoint was trained with %d image(s) per input",
            count,
            recorded,
        )
    if count > 1 and not env_spec.has_wrist_image:
        raise ConfigError(
            f"policy.num_images_in_input={count} feeds main_images and wrist_images, but the env gives no "
            "wrist_images: render its wrist camera (LIBERO: env.wrist_image=true; ManiSkill: "
            "env.robot_uids=panda_wristcam) or set policy.num_images_in_input=1"
        )
    return count


def bidirectional_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An additive mask [B, 1, L, L] letting every position attend to every non-padding position."""
    keys = attention_mask.bool()[:, None, None, :]
    mask = torch.zeros(keys.shape, dtype=dtype, device=attention_mask.device)
    mask = mask.masked_fill(~keys, torch.finfo(dtype).min)
    return mask.expand(-1, -1, attention_mask.shape[1], -1)


@register_policy("openvla")
class OpenVLAPolicy(OpenVLAPolicyBase):
    """OpenVLA: C x A action tokens decoded autoregressively (KV cache), each sampled with temperature/top-k."""

    def continuation(self, bins: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(bins[:, :-1] + self.action_start)

    def decode_actions(self, inputs: dict[str, torch.Tensor], greedy: bool):
        embeds, mask = self.embed_prefix(inputs)
        cache = new_cache(self.model)
        positions = positions_from_mask(mask)
        hidden = self.model.decode(embeds, mask, positions, cache=cache)[:, -1]
        values = self.values(hidden)
        next_position = positions[:, -1:] + 1
        bins, logprobs = [], []
        for step in range(self.num_tokens):
            log_probs = self.action_log_probs(hidden)
            token = sample_bins(log_probs, greedy)
            bins.append(token)
            logprobs.append(gather_log_probs(log_probs, token))
            if step + 1 < self.num_tokens:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                token_embeds = self.model.embed_tokens(token[:, None] + self.action_start)
                hidden = self.model.decode(token_embeds, mask, next_position, cache=cache)[:, -1]
                next_position = next_position + 1
        return torch.stack(bins, dim=1), torch.stack(logprobs, dim=1), values
