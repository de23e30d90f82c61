"""Demonstrations: written in the LeRobot dataset format (v3.0), read back for supervised fine-tuning.

    from envs.demos import open_demos, DemoWriter, DemoInfo

    with DemoWriter(path, DemoInfo(env_id="PushCube-v1", obs_mode="state", ...)) as writer:
        writer.add_episode(states=..., actions=..., task="push the cube ...", seed=0, success=True)
    demos = open_demos(path)            # a LeRobot folder, or a ManiSkill .h5 trajectory file
    batch = demos.frames(np.array([0, 5, 9]))   # states, actions, main_images, task_descriptions, ...

Only numpy, pyarrow and pillow (h5py for .h5 files): no simulator, torch or Ray is needed to read demos.
scripts/collect_demos.py makes them with ManiSkill's motion planners (envs/maniskill/demos.py).
"""

from __future__ import annotations

from pathlib import Path

from envs.demos.dataset import DemoDataset
from envs.demos.info import DemoFormatError, DemoInfo
from envs.demos.lerobot import DemoWriter, read_lerobot
from envs.demos.maniskill_h5 import read_maniskill_h5


def open_demos(path: str | Path) -> DemoDataset:
    """The demonstrations at `path`: a LeRobot v3.0 dataset folder or a ManiSkill trajectory file (.h5)."""
    path = Path(path)
    if path.is_dir():
        return read_lerobot(path)
    if path.suffix in (".h5", ".hdf5") and path.is_file():
        return read_maniskill_h5(path)
    what = "does not exist" if not path.exists() else "is neither a folder nor an .h5 file"
    raise DemoFormatError(
        f"{path} {what}; demonstrations are a LeRobot dataset folder (scripts/collect_demos.py writes them) "
        "or a ManiSkill trajectory file (.h5 with its .json)"
    )


__all__ = ["DemoDataset", "DemoFormatError", "DemoInfo", "DemoWriter", "open_demos"]
