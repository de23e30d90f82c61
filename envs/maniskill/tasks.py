"""What the suite adds to ManiSkill's tasks: a language instruction per task and which cameras to show."""

from __future__ import annotations

import re

# Instructions describe what the task's success condition checks, with the colours the task draws.
INSTRUCTIONS = {
    "PushCube-v1": "push the blue cube to the red and white target",
    "PullCube-v1": "pull the blue cube back to the red and white target",
    "PickCube-v1": "pick up the red cube and move it to the goal position",
    "StackCube-v1": "stack the red cube on top of the green cube",
    "PokeCube-v1": "use the peg to push the red cube to the goal",
    "PlaceSphere-v1": "place the blue ball into the bin",
    "LiftPegUpright-v1": "lift the peg and stand it upright on the table",
    "PegInsertionSide-v1": "insert the peg into the hole in the box from the side",
    "PushT-v1": "push the T-shaped block onto the T-shaped target",
    "RollBall-v1": "roll the blue ball to the goal region",
    "StackPyramid-v1": "stack the three cubes into a pyramid",
    "PlugCharger-v1": "plug the charger into the wall receptacle",
    "PullCubeTool-v1": "use the tool to pull the blue cube closer",
    "PickCubeSO100-v1": "pick up the red cube and move it to the goal position",
}

MAIN_CAMERA = "base_camera"  # the tabletop tasks' fixed scene camera
WRIST_CAMERAS = ("hand_camera",)  # e.g. robot_uids=panda_wristcam


def instruction_for(task: str, override: str | None = None) -> str:
    """The language instruction of `task`: the override, the built-in one, or the task id in words."""
    if override:
        return override
    if task in INSTRUCTIONS:
        return INSTRUCTIONS[task]
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", task.split("-v")[0])
    return words.lower()
