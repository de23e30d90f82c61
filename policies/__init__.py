"""Policies behind one interface: small Gaussian MLP/CNN policies, OpenVLA, OpenVLA-OFT, pi0, pi0.5, causal LMs."""

from policies.base import (
    EvaluateOutput,
    Policy,
    PolicyConfig,
    PolicyOutput,
    make_policy,
    policy_registry,
    register_policy,
)

# Policies register when their module is imported; announcing them here keeps `import policies` light.
policy_registry.register_lazy("mlp", "policies.gaussian")
policy_registry.register_lazy("cnn", "policies.gaussian")
policy_registry.register_lazy("openvla", "policies.openvla", extra="vla")
policy_registry.register_lazy("openvla_oft", "policies.openvla_oft", extra="vla")
policy_registry.register_lazy("pi0", "policies.pi0", extra="vla")
policy_registry.register_lazy("pi05", "policies.pi05", extra="vla")
policy_registry.register_lazy("causal_lm", "policies.causal_lm", extra="llm")

__all__ = [
    "EvaluateOutput", "Policy", "PolicyConfig", "PolicyOutput", "make_policy", "policy_registry", "register_policy",
]
