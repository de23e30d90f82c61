"""OpenVLA-OFT configuration: OpenVLA's fields, with action chunks by default and the attention of the
parallel-decoding pass.

The variant is OFT's parallel decoding of discrete action tokens (256 bins, as RLinf and SimpleVLA-RL train it);
OFT's continuous L1-regression action head (`action_head--*.pt`) and FiLM are not part of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from algorithms.schema import param
from policies.openvla.configuration_openvla import OpenVLAConfig


@dataclass(frozen=True)
class OpenVLAOFTConfig(OpenVLAConfig):
    """OpenVLA-OFT with discrete action tokens: the OpenVLA network, all C x A action tokens decoded in parallel
    in one forward pass (not OFT's L1-regression head)."""

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
