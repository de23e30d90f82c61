"""LIBERO's raw observations and action conventions <-> the suite's data contract (pure functions).

Actions: 7 numbers in [-1, 1] for robosuite's OSC_POSE controller, `[dx, dy, dz, droll, dpitch, dyaw, gripper]`:
an end-effector position and axis-angle rotation delta in the robot base frame (scaled by the controller to at
most 5 cm and 0.5 rad per step), then the gripper command, -1 = open, +1 = close (LIBERO's convention).

Policies trained on OpenVLA's LIBERO data (OpenVLA, OpenVLA-OFT) output the gripper as an opening in [0, 1]
(1 = open, 0 = closed); `gripper_from_opening` converts it, as their own LIBERO evaluations do.

States: `[eef_x, eef_y, eef_z, axis_angle (3), gripper finger qpos (2)]`, 8 numbers (the proprioception of
OpenVLA-OFT's and openpi's LIBERO policies). Images: MuJoCo renders them upside down (OpenGL's bottom-up
rows); every LIBERO-trained policy sees them rotated by 180 degrees, which is the upright view.
"""

from __future__ import annotations

import numpy as np
import torch

ACTION_DIM = 7
STATE_DIM = 8
GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0
NO_OP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, GRIPPER_OPEN)  # the settle action at each episode start

MAIN_CAMERA, WRIST_CAMERA = "agentview", "robot0_eye_in_hand"


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Unit quaternion(s) `[..., 4]` in robosuite's (x, y, z, w) order -> axis * angle `[..., 3]`, angle in [0, 2 pi].

    The identity (and anything within 1e-6 of it) maps to zeros.
    """
    quat = np.asarray(quat, dtype=np.float64)
    w = np.clip(quat[..., 3:4], -1.0, 1.0)
    sin_half = np.sqrt(1.0 - w * w)
    angle = 2.0 * np.arccos(w)
    safe = np.where(sin_half > 1e-6, sin_half, 1.0)
    return np.where(sin_half > 1e-6, quat[..., :3] * angle / safe, 0.0)


def upright(image: np.ndarray) -> np.ndarray:
    """A camera image as MuJoCo renders it -> the upright view (rotated by 180 degrees), contiguous."""
    return np.ascontiguousarray(image[::-1, ::-1])


def state_vector(raw_obs: dict) -> np.ndarray:
    """LIBERO's raw observation dict -> the 8-dim proprioceptive state (see the module docstring), float32."""
    return np.concatenate(
        [
            raw_obs["robot0_eef_pos"],
            quat_to_axis_angle(raw_obs["robot0_eef_quat"]),
            raw_obs["robot0_gripper_qpos"],
        ]
    ).astype(np.float32)


def gripper_from_opening(actions: torch.Tensor, binarize: bool = True) -> torch.Tensor:
    """Actions whose last entry is a gripper opening in [0, 1] (1 = open) -> LIBERO's -1 open / +1 close.

    `actions` [..., 7]; returns a new tensor. With `binarize`, the gripper is fully open or closed (sign of the
    command), as OpenVLA's and OpenVLA-OFT's LIBERO evaluations do; an opening of exactly 0.5 gives 0.
    """
    out = actions.clone()
    command = 1.0 - 2.0 * actions[..., -1]
    out[..., -1] = torch.sign(command) if binarize else command
    return out


def gripper_to_opening(actions: torch.Tensor) -> torch.Tensor:
    """The inverse of `gripper_from_opening` without binarizing: LIBERO's -1 open / +1 close -> opening in [0, 1]."""
    out = actions.clone()
    out[..., -1] = (1.0 - actions[..., -1]) / 2.0
    return out
