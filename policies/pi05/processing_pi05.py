"""pi0.5's prompt: the task and the normalised state as text (openpi's `PaligemmaTokenizer.tokenize` with a state).

The state, normalised so that its usual range is [-1, 1] (quantile normalisation), is cut into 256 equal bins;
each dimension becomes its bin index written as a number, so the prompt reads
"Task: pick up the red cube, State: 3 128 255 -1;\\nAction: ". Values below -1 give -1 and values from the last
bin edge (1 - 2/256) upwards give 255, as numpy's digitize does in openpi and LeRobot. The prompt is then
tokenised with BOS and right-padded like pi0's (`policies.pi0.processing_pi0.encode_prompts`).
"""

from __future__ import annotations

import torch

STATE_BINS = 256


def clean_task(task: str) -> str:
    """The task as openpi and LeRobot put it in the pi0.5 prompt: stripped, underscores and newlines as spaces."""
    return task.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: torch.Tensor) -> torch.Tensor:
    """Normalised states [N, D] -> bin indices [N, D] int64 in -1..255 (numpy.digitize over the 256 left edges of
    linspace(-1, 1, 257), minus 1; compared in float64 as numpy does)."""
    edges = torch.linspace(-1.0, 1.0, STATE_BINS + 1, dtype=torch.float64, device=state.device)[:-1]
    return torch.bucketize(state.double(), edges, right=True) - 1


def pi05_prompt(task: str, state_bins: list[int]) -> str:
    """The pi0.5 prompt for one task and its discretised state."""
    state = " ".join(str(b) for b in state_bins)
    return f"Task: {clean_task(task)}, State: {state};\nAction: "
