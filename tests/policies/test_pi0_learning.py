"""Learning check (slow): tiny pi0 with Flow-Noise raises its success rate under PPO on colour_targets.

The whole path in one process: images + instruction -> tokens and SigLIP patches -> PaliGemma prefix -> the
action expert's stochastic denoising chain -> actions -> env; then GAE and the PPO update of the runtime's actor
(`embodied.training.ppo_update`, the same code the FSDP2 actor workers run). The settings are those of
configs/colour_targets_ppo_pi0.yaml (two coloured discs; the instruction names one). Success is measured with the
deterministic eval mode on 64 fixed initial states before and after training.
"""

import pytest
from colour_targets_ppo import ppo_on_colour_targets

from policies.pi0 import Pi0Config

ITERATIONS = 60  # ~2-3 minutes on an idle 2-core CPU


@pytest.mark.slow
def test_tiny_pi0_flow_noise_learns_colour_targets():
    config = Pi0Config(
        chunk_size=4, max_state_dim=32, tokenizer_max_length=12, noise_std_min=0.2, noise_std_max=0.5
    )
    result = ppo_on_colour_targets(config, ITERATIONS)
    assert result["after"] >= result["before"] + 0.2 and result["after"] >= 0.5, result
