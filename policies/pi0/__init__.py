"""pi0 (`policy.name: pi0`): PaliGemma + a flow-matching action expert, with Flow-Noise and Flow-SDE PPO.

Importing this package registers the policy. See docs/policies.md ("pi0").
"""

from policies.pi0.configuration_pi0 import GemmaSize, Pi0Config, SiglipSize
from policies.pi0.modeling_pi0 import Pi0FlowModel, Pi0Inputs
from policies.pi0.policy_pi0 import Pi0Policy

__all__ = ["GemmaSize", "Pi0Config", "Pi0FlowModel", "Pi0Inputs", "Pi0Policy", "SiglipSize"]
