"""pi0.5 configuration: pi0's fields (`Pi0Config`), with pi0.5's defaults and its state input.

The architecture of a released checkpoint is read from the checkpoint (LeRobot's PI05Config, openpi's converted
config.json, or this suite's own), as for pi0; see `policies.pi0.checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from algorithms.schema import param
from policies.pi0.configuration_pi0 import Pi0Config


@dataclass(frozen=True)
class Pi05Config(Pi0Config):
    """pi0.5: the pi0 network with adaRMS time conditioning in the action expert and the state as prompt tokens."""

    name: str = param("pi05", help="registered policy name")
    tokenizer_max_length: int = param(
        32, help="prompt tokens, the discretised state included (right-padded; 200 when released)", ge=2
    )
    normalization: Literal["mean_std", "quantile"] = param(
        "quantile",
        help="how norm_stats map states/actions to model units: quantile (q01 -> -1, q99 -> 1, pi0.5's; the state "
        "is then discretised over [-1, 1]) or mean_std; a LeRobot checkpoint's normalization_mapping overrides it",
    )
    discrete_state_input: bool = param(
        True,
        help="give the normalised state as 256-bin tokens in the prompt ('Task: ..., State: 12 200 ...;\\nAction: ', "
        "as openpi's pi05 models and LeRobot's PI05); false: the prompt is the task alone and the policy gets no "
        "state (openpi's pi05_libero was trained so)",
    )
    adarms_gate_init: float = param(
        0.0,
        help="random init only (loaded weights replace it): the bias of every residual gate of the expert's adaRMS "
        "norms. 0 (openpi's zero init) starts each attention and MLP branch of the expert closed, so the actions "
        "ignore the images and the prompt until the gates grow; 1 starts the expert as plain pre-norm layers",
    )
