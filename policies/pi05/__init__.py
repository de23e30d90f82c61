"""pi0.5 (`policy.name: pi05`): pi0's PaliGemma + action expert, with the expert conditioned on the flow time through
adaptive RMSNorm and the state given as discretised tokens in the prompt; Flow-Noise and Flow-SDE PPO as for pi0.

Importing this package registers the policy. See docs/policies.md ("pi0.5").
"""

from policies.pi05.configuration_pi05 import Pi05Config
from policies.pi05.modeling_pi05 import Pi05FlowModel
from policies.pi05.policy_pi05 import Pi05Policy

__all__ = ["Pi05Config", "Pi05FlowModel", "Pi05Policy"]
