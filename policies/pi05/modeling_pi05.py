"""The pi0.5 network: pi0's PaliGemma prefix and action expert, with two differences (openpi's `Pi0` with
`pi05=True`, LeRobot's `PI05Pytorch`):

- time conditioning: the sine-cosine time embedding goes through an MLP (`time_mlp_in` -> swish -> `time_mlp_out`
  -> swish) to a condition [B, W_expert] that drives every adaptive RMSNorm of the expert (scale, shift and the
  gate of each residual branch; `policies.pi0.gemma.RMSNorm`); the action tokens are `action_in_proj(x_t)` alone;
- no state token: the suffix is the C action tokens (ar flag 1 on the first), the state being part of the prompt.

Parameter names follow the released PyTorch layout: `time_mlp_in`, `time_mlp_out`, `action_in_proj`,
`action_out_proj`, and `gemma_expert.model.layers.{i}.{input,post_attention}_layernorm.dense`, `norm.dense`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from policies.pi0.modeling_pi0 import PaliGemmaFlowModel, time_embedding
from policies.pi05.configuration_pi05 import Pi05Config


class Pi05FlowModel(PaliGemmaFlowModel):
    """pi0.5: the suffix holds the action tokens only; the expert's norms are conditioned on the flow time."""

    def __init__(self, config: Pi05Config) -> None:
        super().__init__(config, expert_cond_dim=config.expert.width)
        width = config.expert.width
        self.action_in_proj = nn.Linear(config.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, config.max_action_dim)
        self.time_mlp_in = nn.Linear(width, width)
        self.time_mlp_out = nn.Linear(width, width)
        self._init_gates(config.adarms_gate_init)

    def _init_gates(self, bias: float) -> None:
        """Set the gate part of every residual-feeding adaRMS norm's bias (the final norm has no gate)."""
        for layer in self.paligemma_with_expert.gemma_expert.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                with torch.no_grad():
                    norm.dense.bias.chunk(3)[2].fill_(bias)

    def embed_suffix(
        self, state: torch.Tensor, x_t: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Suffix embeddings [B, C, W_expert] of the noisy actions [B, C, A] (the state is in the prompt)."""
        embs = self.action_in_proj(x_t.to(self.dtype))
        b, n = embs.shape[:2]
        pad = torch.ones(b, n, dtype=torch.bool, device=embs.device)
        ar = torch.zeros(n, dtype=torch.bool, device=embs.device)
        ar[0] = True  # the action tokens open a block the prefix cannot see
        return embs, pad, ar

    def expert_condition(self, time: torch.Tensor) -> torch.Tensor:
        """adaRMS condition [B, W_expert] at times [B]: swish(time_mlp_out(swish(time_mlp_in(emb(t)))))."""
        temb = time_embedding(time, self.config.expert.width, self.config.min_period, self.config.max_period)
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb.to(self.dtype)))))
