"""OpenVLA-OFT configuration: OpenVLA's fields, with action chunks by default, the attention of the
parallel-decoding pass, and the action head.

`action_head: discrete` (default) decodes the 256-bin action tokens in parallel (as RLinf and SimpleVLA-RL train
OFT); `action_head: l1` decodes with OFT's continuous L1-regression head, as the released checkpoints do
(`action_head--<step>_checkpoint.pt`), with a learned Gaussian around it for RL. FiLM is not part of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from algorithms.schema import param
from policies.openvla.configuration_openvla import OpenVLAConfig


@dataclass(frozen=True)
class OpenVLAOFTConfig(OpenVLAConfig):
    """OpenVLA-OFT: the OpenVLA network, all C x A action positions decoded in parallel in one forward pass, into
    discrete action tokens or (action_head: l1) continuous actions."""

    name: str = param("openvla_oft", help="registered policy name")
    num_action_chunks: int = param(8, help="action chunk length C: C x A tokens decoded in one pass", ge=1)
    attention: Literal["bidirectional", "causal"] = param(
        "bidirectional", help="attention of the parallel pass: bidirectional (as OFT trains it) or causal"
    )
    use_proprio: bool = param(
        False,
        help="feed the env's state (obs states) as one token after the image patches, through OFT's proprio "
        "projector (normalised with the checkpoint's proprio q01/q99 when it has them); a checkpoint whose weights "
        "lack the projector gets it from OFT's released proprio_projector--<step>_checkpoint.pt beside them",
    )
    proprio_projector_step: int | None = param(
        None,
        help="training step of the released proprio_projector--<step>_checkpoint.pt to read (null: the highest "
        "step in the checkpoint folder)",
        ge=0,
    )
    action_head: Literal["discrete", "l1"] = param(
        "discrete",
        help="discrete: 256-bin action tokens from the language model head; l1: OFT's L1-regression MLP head on "
        "the action positions' hidden states (released OFT checkpoints; read from action_head--<step>_checkpoint.pt "
        "when the weights lack it), its output the mean of a Gaussian with a learned std for RL, the action itself "
        "in eval",
    )
    action_head_step: int | None = param(
        None,
        help="action_head: l1: training step of the released action_head--<step>_checkpoint.pt to read (null: the "
        "highest step in the checkpoint folder)",
        ge=0,
    )
    init_log_std: float = param(
        -2.0,
        help="action_head: l1: initial log standard deviation of the Gaussian around the head's normalised actions "
        "([-1, 1] is the q01..q99 range of each action dim); learned by RL",
        ge=-10.0,
        le=2.0,
    )
