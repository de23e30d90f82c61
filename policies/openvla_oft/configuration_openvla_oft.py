"""OpenVLA-OFT configuration: OpenVLA's fields, with action chunks by default and the attention of the
parallel-decoding pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from algorithms.schema import param
from policies.openvla.configuration_openvla import OpenVLAConfig


@dataclass(frozen=True)
class OpenVLAOFTConfig(OpenVLAConfig):
    """OpenVLA-OFT: the OpenVLA network, all C x A action tokens decoded in parallel in one forward pass."""

    name: str = param("openvla_oft", help="registered policy name")
    num_action_chunks: int = param(8, help="action chunk length C: C x A tokens decoded in one pass", ge=1)
    attention: Literal["bidirectional", "causal"] = param(
        "bidirectional", help="attention of the parallel pass: bidirectional (as OFT trains it) or causal"
    )
    use_proprio: bool = param(
        False,
        help="feed the env's state (obs states) as one token after the image patches, through OFT's proprio "
        "projector (normalised with the checkpoint's proprio q01/q99 when it has them)",
    )
