"""OpenVLA (openvla/openvla-7b architecture and checkpoint layout); importing this registers `openvla`."""

from policies.openvla.configuration_openvla import OpenVLACheckpointConfig, OpenVLAConfig
from policies.openvla.policy import OpenVLAPolicy, OpenVLAPolicyBase

__all__ = ["OpenVLACheckpointConfig", "OpenVLAConfig", "OpenVLAPolicy", "OpenVLAPolicyBase"]
