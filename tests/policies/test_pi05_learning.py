"""Learning check (slow): PPO with Flow-Noise teaches tiny pi0.5 to use the image and the instruction.

The loop and the task are those of tiny pi0's check (test_pi0_learning.py, tests/policies/colour_targets_ppo.py):
red and green discs left and right of the cursor in random order, the instruction names one, touching the other
fails; a blind policy succeeds at most about half the time. Two settings differ, each measured as necessary
(docs/policies.md, "pi0.5 on the grounded task"):

- `adarms_gate_init=1` (configs/policy/pi05_tiny.yaml): with openpi's zero init every residual gate of the expert
  is closed, so the fresh policy's actions do not depend on the images at all;
- lr 1e-3 and 150 iterations instead of 3e-4 and 100: at pi0's settings tiny pi0.5 stays at blank-image level.
  Tiny pi0 gets a head start that pi0.5 lacks: its critic reads the suffix state token (a function of the
  observation alone) and its random init drifts the cursor to one side, so returns depend on the named side and
  the value loss trains the shared layers to find it; pi0.5's `expert` value head sees only noisy action tokens.
"""

import pytest
from colour_targets_ppo import ACTOR, ppo_on_colour_targets

from policies.pi05 import Pi05Config

ITERATIONS = 150  # ~3.6 minutes (one thread) at load ~1 on the 2-core machine
# measured (docs/policies.md): seed 0 0.28 -> 1.00, 0.53 on blank images (gates closed at init: 0.28 -> 0.47, 0.47);
# seed 1 0.58 -> 0.77 (0.47 blank), seed 2 0.23 -> 0.70 (0.19 blank); at 100 iterations seed 0 0.81, seed 1 0.47


@pytest.mark.slow
def test_ppo_teaches_tiny_pi05_flow_noise_to_find_the_named_colour():
    config = Pi05Config(
        chunk_size=4,
        max_state_dim=32,
        tokenizer_max_length=24,
        noise_std_min=0.2,
        noise_std_max=0.5,
        adarms_gate_init=1.0,
    )
    result = ppo_on_colour_targets(config, ITERATIONS, actor=ACTOR.replace(lr=1e-3))
    assert result["after"] >= 0.7, result
    assert result["after"] >= result["blank_images"] + 0.25, result  # blind: at most ~0.5
