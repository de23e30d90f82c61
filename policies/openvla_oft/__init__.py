"""OpenVLA-OFT (parallel decoding of action chunks on the OpenVLA network); importing this registers
`openvla_oft`."""

from policies.openvla_oft.configuration_openvla_oft import OpenVLAOFTConfig
from policies.openvla_oft.modeling_openvla_oft import OpenVLAOFTPolicy

__all__ = ["OpenVLAOFTConfig", "OpenVLAOFTPolicy"]
