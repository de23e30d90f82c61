"""OpenVLA-OFT: the C x A action tokens of a chunk decoded in parallel, in one forward pass.

The prompt (with the image patches after BOS, as in OpenVLA) is followed by C x A empty action slots whose input
embeddings are zero (OFT's "empty action embeddings"). With OFT's bidirectional attention every position sees
every non-padding position. Action token k is read, as in OpenVLA, from the position before its slot (the
last prompt position for the first token), so the scoring window is the same as OpenVLA's; each token is
sampled independently from its own distribution (temperature, top-k). The value head reads the last prompt
position. With `use_proprio`, the env state goes through OFT's proprio projector (Linear -> GELU -> Linear to the
language model's width) and enters as one more embedding right after the image patches, as in OFT; a released OFT
checkpoint keeps that projector in a separate `proprio_projector--<step>_checkpoint.pt`, read on load when the
weights lack it (`released_files.py`). Processing (prompt, images, bins) is OpenVLA's
(`policies/openvla/processing_openvla.py`).

Rollout and `evaluate` run the very same pass (the slots do not depend on the sampled tokens), so the
log-probs they compute agree to floating-point noise.

With `action_head: l1` the same window feeds OFT's L1-regression head instead of the language model head
(`action_head.py`): as in OFT's `predict_action`, the empty action slots are followed by the stop token `</s>`
(which the bidirectional pass attends to), and the head's normalised actions are un-normalised with the q01/q99
statistics. `predict(mode="eval")` returns them as they are (deterministic, as OFT evaluates); in train mode the
action is drawn from N(head output, exp(log_std)^2) per chunk step and action dim, and `forward_inputs["actions"]`
keeps the normalised sample whose log-density `evaluate` recomputes. The supervised loss is OFT's: the L1
distance between the head's output and the demonstration's normalised actions.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch
from torch import nn

from envs.base import Obs
from policies.base import EvaluateOutput, PolicyOutput, register_policy
from policies.openvla.policy import DTYPES, OpenVLAPolicyBase
from policies.openvla.sampling import gather_log_probs, sample_bins
from policies.openvla_oft.action_head import (
    ActionStd,
    L1RegressionActionHead,
    gaussian_entropy,
    gaussian_log_prob,
)
from policies.openvla_oft.configuration_openvla_oft import OpenVLAOFTConfig
from policies.openvla_oft.released_files import (
    checkpoint_has_module,
    load_released_action_head,
    load_released_proprio_projector,
    note_unused_action_head,
    pick_released_file,
)
from policies.supervised import action_l1

logger = logging.getLogger(__name__)


class ProprioProjector(nn.Module):
    """OFT's proprio projector: state [B, D] -> one embedding [B, H] (fc1 -> GELU -> fc2, OFT's names)."""

    def __init__(self, state_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(state_dim, hidden_size)
        self.act_fn1 = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(proprio.to(self.fc1.weight.dtype))))


@register_policy("openvla_oft")
class OpenVLAOFTPolicy(OpenVLAPolicyBase):
    config_class: ClassVar[type[OpenVLAOFTConfig]] = OpenVLAOFTConfig

    def build_proprio_projector(self) -> nn.Module | None:
        if not self.config.use_proprio:
            return None
        if self.env_spec.state_dim < 1:
            raise ValueError(
                "policy.use_proprio needs an env with states (env_spec.state_dim is 0); turn it off"
            )
        return ProprioProjector(self.env_spec.state_dim, self.model.hidden_size)

    def build_action_head(self) -> tuple[nn.Module | None, nn.Module | None]:
        if self.config.action_head == "discrete":
            return None, None
        hidden = self.model.hidden_size
        head = L1RegressionActionHead(hidden, hidden, self.action_dim)  # OFT: MLP width = the LLM's width
        return head, ActionStd(self.num_chunks, self.action_dim, self.config.init_log_std)

    def load_weights(self, directory) -> None:
        """OpenVLA's loading; then the modules OFT keeps beside the weights when the weights lack them: its
        `action_head--<step>_checkpoint.pt` (action_head: l1; an error when there is none) and
        `proprio_projector--<step>_checkpoint.pt` (or a warning that the projector starts untrained)."""
        super().load_weights(directory)
        self._load_released_action_head(directory)
        if self.proprio_projector is None or checkpoint_has_module(directory, "proprio_projector"):
            return
        path = pick_released_file(directory, "proprio_projector", self.config.proprio_projector_step)
        if path is None:
            logger.warning(
                "OpenVLA-OFT: %s has no proprio projector (neither in its weights nor as "
                "proprio_projector--<step>_checkpoint.pt): the projector starts untrained; copy OFT's file there "
                "if the checkpoint was fine-tuned with proprio",
                directory,
            )
            return
        load_released_proprio_projector(self.proprio_projector, path, self.env_spec.state_dim)

    def _load_released_action_head(self, directory) -> None:
        if self.action_head is None:
            note_unused_action_head(directory)
            return
        if checkpoint_has_module(directory, "action_head"):  # a checkpoint of this suite
            return
        path = pick_released_file(directory, "action_head", self.config.action_head_step)
        if path is None:
            raise FileNotFoundError(
                f"policy.action_head=l1, but {directory} has no action head (neither in its weights nor as OFT's "
                "action_head--<step>_checkpoint.pt): copy the released file there, or use action_head=discrete"
            )
        load_released_action_head(self.action_head, path, self.action_dim, self.model.hidden_size)

    @property
    def attention_is_causal(self) -> bool:
        return self.config.attention == "causal"

    def continuation(self, bins: torch.Tensor) -> torch.Tensor:
        return torch.zeros(bins.shape[0], self.num_tokens, self.model.hidden_size, device=bins.device)

    def decode_actions(self, inputs: dict[str, torch.Tensor], greedy: bool):
        batch = inputs["input_ids"].shape[0]
        slots = torch.zeros(batch, self.num_tokens, self.model.hidden_size, device=self.device)
        window = self.score_window(inputs, slots)
        log_probs = self.action_log_probs(window)
        bins = sample_bins(log_probs, greedy)
        return bins, gather_log_probs(log_probs, bins), self.values(window[:, 0])

    # -- action_head: l1 ------------------------------------------------------------------------------------
    def _head_window(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The action window [B, C*A, H] after the prompt, the empty action slots and `</s>`, as OFT runs it."""
        batch = inputs["input_ids"].shape[0]
        slots = torch.zeros(batch, self.num_tokens, self.model.hidden_size, device=self.device)
        stop = self.model.language_model.config.eos_token_id
        stop_embedding = self.model.embed_tokens(torch.full((batch, 1), stop, device=self.device))
        return self.score_window(inputs, torch.cat([slots, stop_embedding.to(slots.dtype)], dim=1))

    def predict(self, obs: Obs, mode: str = "train") -> PolicyOutput:
        if self.action_head is None:
            return super().predict(obs, mode)
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        with torch.no_grad():
            inputs = self.processor(obs, self.device, DTYPES[self.config.dtype])
            window = self._head_window(inputs)
            mean = self.action_head(window).float()
            log_std = self.action_std.log_std
            if mode == "eval":
                normalized = mean
            else:
                normalized = mean + torch.randn_like(mean) * log_std.float().exp()
            actions = self.processor.bins.unnormalize(normalized).float()
            low = torch.tensor(self.env_spec.action_low, device=actions.device)
            high = torch.tensor(self.env_spec.action_high, device=actions.device)
            return PolicyOutput(
                actions=torch.maximum(torch.minimum(actions, high), low),
                logprobs=gaussian_log_prob(normalized, mean, log_std),
                values=self.values(window[:, 0]),
                forward_inputs={**inputs, "actions": normalized},
            )

    def evaluate(self, forward_inputs: dict[str, torch.Tensor]) -> EvaluateOutput:
        if self.action_head is None:
            return super().evaluate(forward_inputs)
        inputs = {k: v.to(self.device) for k, v in forward_inputs.items()}
        window = self._head_window(inputs)
        mean = self.action_head(window)
        log_std = self.action_std.log_std
        values = self.values(window[:, 0])
        return EvaluateOutput(
            logprobs=gaussian_log_prob(inputs["actions"], mean, log_std),
            entropy=gaussian_entropy(log_std, mean.shape[0]),
            values=values.clone() if values is not None else None,
        )

    def supervised_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """OFT's L1 regression: mean |head output - demo action| over valid steps and action dims, both normalised
        (q01/q99 to [-1, 1], clipped, as OFT's data pipeline). The Gaussian's log_std is not trained by it (it
        keeps policy.init_log_std, the noise RL starts from)."""
        if self.action_head is None:
            return super().supervised_loss(batch)
        actions = batch["actions"].to(self.device)
        if actions.shape[1:] != (self.num_chunks, self.action_dim):
            raise ValueError(
                f"demo actions {tuple(actions.shape)} do not fit the policy's chunk "
                f"[B, {self.num_chunks}, {self.action_dim}] (policy.num_action_chunks x the env's action dims)"
            )
        inputs = self.processor(batch, self.device, DTYPES[self.config.dtype])
        mean = self.action_head(self._head_window(inputs)).float()
        target = self.processor.bins.normalize(actions)
        return action_l1(mean, target, batch["action_mask"].to(self.device)), {}
