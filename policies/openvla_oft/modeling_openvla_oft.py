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
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch
from torch import nn

from policies.base import register_policy
from policies.openvla.policy import OpenVLAPolicyBase
from policies.openvla.sampling import gather_log_probs, sample_bins
from policies.openvla_oft.configuration_openvla_oft import OpenVLAOFTConfig
from policies.openvla_oft.released_files import (
    checkpoint_has_module,
    load_released_proprio_projector,
    note_unused_action_head,
    pick_released_file,
)

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

    def load_weights(self, directory) -> None:
        """OpenVLA's loading; then, when the weights lack the proprio projector, OFT's released
        `proprio_projector--<step>_checkpoint.pt` beside them, or a warning that the projector starts untrained."""
        super().load_weights(directory)
        note_unused_action_head(directory)
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
