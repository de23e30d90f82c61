"""What a demonstration dataset holds: the env it came from and the shapes of its observations and actions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

OBS_MODES = ("state", "rgb")


class DemoFormatError(ValueError):
    """A dataset folder or file that cannot be read (or written) as demonstrations; the message says why."""


@dataclass(frozen=True)
class DemoInfo:
    """The env a demonstration dataset was recorded in, as the policy saw it.

    `states` are the env's `states` vector [state_dim]; `main_images` (rgb only) are uint8
    [image_size, image_size, 3]; `actions` [action_dim] are in the env's units for `control_mode`.
    """

    env_id: str
    obs_mode: str
    control_mode: str
    fps: int
    state_dim: int
    action_dim: int
    image_size: int | None = None
    instruction: str = ""
    source: str = (
        ""  # how the demos were made, e.g. "maniskill motion planning (pd_joint_pos) -> pd_joint_delta_pos"
    )

    def __post_init__(self) -> None:
        if self.obs_mode not in OBS_MODES:
            raise DemoFormatError(
                f"DemoInfo.obs_mode={self.obs_mode!r}; expected one of {', '.join(OBS_MODES)}"
            )
        if (self.obs_mode == "rgb") != (self.image_size is not None):
            raise DemoFormatError(
                f"DemoInfo.image_size={self.image_size!r} with obs_mode={self.obs_mode!r}: rgb datasets need an "
                "image size, state datasets have none"
            )
        for name in ("fps", "state_dim", "action_dim"):
            if getattr(self, name) < 1:
                raise DemoFormatError(f"DemoInfo.{name}={getattr(self, name)!r} must be at least 1")

    @property
    def has_images(self) -> bool:
        return self.image_size is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
