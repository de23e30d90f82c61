"""The pi0.5 policy (`policy.name: pi05`): pi0's policy (`Pi0Policy`: processing, the stochastic denoising chain of
Flow-Noise or Flow-SDE, value head, checkpoints, LoRA, FSDP2 units) around the pi0.5 network, with the state
written into the prompt instead of fed to the expert. See policies/pi0/policy_pi0.py for predict/evaluate.
"""

from __future__ import annotations

import torch

from policies.base import register_policy
from policies.pi0.policy_pi0 import Pi0Policy
from policies.pi0.processing_pi0 import pi0_prompt
from policies.pi05.configuration_pi05 import Pi05Config
from policies.pi05.modeling_pi05 import Pi05FlowModel
from policies.pi05.processing_pi05 import clean_task, discretize_state, pi05_prompt


@register_policy("pi05")
class Pi05Policy(Pi0Policy):
    config_class = Pi05Config
    config: Pi05Config
    model_class = Pi05FlowModel

    def _prompts(self, tasks: list[str], states: torch.Tensor) -> list[str]:
        """'Task: ..., State: <bins>;\\nAction: ' from the normalised env state (its first state_dim entries, before
        padding); the task alone, in pi0's form, without `discrete_state_input`."""
        if not self.config.discrete_state_input:
            return [pi0_prompt(clean_task(task)) for task in tasks]
        bins = discretize_state(states[:, : self.normalizer.state_dim]).tolist()
        return [pi05_prompt(task, row) for task, row in zip(tasks, bins)]
