"""ManiSkill's own trajectory files: `<name>.h5` with `<name>.json` beside it, as its RecordEpisode wrapper, its
motion-planning scripts and `mani_skill.trajectory.replay_trajectory` write them.

The .json holds `env_info` (env_id, env_kwargs with obs_mode and control_mode) and one entry per episode
(episode_id, episode_seed, reset_kwargs, control_mode, elapsed_steps, success). The .h5 holds one group
`traj_<episode_id>` per episode with `actions` [T, A], `success` [T] and, unless recorded with obs_mode none,
`obs` with T + 1 observations: a [T + 1, D] array in state mode, a group (agent, extra, sensor_data) otherwise.
The suite's `states` are that state vector (state mode) or agent and extra flattened in stored order (rgb
mode, as the ManiSkill env of the suite flattens them), `main_images` the base camera's rgb.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from envs.demos.dataset import DemoDataset
from envs.demos.info import DemoFormatError, DemoInfo

MAIN_CAMERA = "base_camera"
STATE_MODES = ("state", "state_dict")
IMAGE_MODES = ("rgb", "rgbd", "rgb+depth")


def _flatten(node) -> np.ndarray:
    """An h5 group of per-step arrays [T, ...] -> float32 [T, D], leaves in stored order (ManiSkill's
    flatten_state_dict on a batch)."""
    import h5py

    if isinstance(node, h5py.Dataset):
        data = node[()]
        return data.reshape(len(data), -1).astype(np.float32)
    parts = [_flatten(node[key]) for key in node]
    parts = [p for p in parts if p.shape[1] > 0]
    return np.concatenate(parts, axis=1) if parts else np.zeros((0, 0), np.float32)


def _episode_obs(group, obs_mode: str, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(states [T+1, D], main_images [T+1, H, W, 3] or None) of one trajectory group."""
    if "obs" not in group:
        raise DemoFormatError(
            f"{path} holds no observations (recorded with obs_mode=none); replay it with observations first: "
            f"python -m mani_skill.trajectory.replay_trajectory --traj-path {path} --obs-mode state "
            "(or rgb), or collect demos with scripts/collect_demos.py"
        )
    obs = group["obs"]
    if obs_mode == "state":
        return obs[()].astype(np.float32), None
    if obs_mode == "state_dict":
        return _flatten(obs), None
    states = np.concatenate([_flatten(obs["agent"]), _flatten(obs["extra"])], axis=1)
    sensors = obs["sensor_data"]
    if MAIN_CAMERA not in sensors or "rgb" not in sensors[MAIN_CAMERA]:
        raise DemoFormatError(f"{path}: no sensor_data/{MAIN_CAMERA}/rgb (cameras: {list(sensors)})")
    return states, sensors[MAIN_CAMERA]["rgb"][()][..., :3]


def read_maniskill_h5(path: str | Path) -> DemoDataset:
    """A ManiSkill trajectory file (.h5, with its .json) as demonstrations in the suite's observation format."""
    try:
        import h5py
    except ImportError as exc:
        raise DemoFormatError("reading ManiSkill .h5 files needs h5py: pip install -e .[maniskill]") from exc
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise DemoFormatError(
            f"{path}: its metadata {meta_path.name} is missing (ManiSkill writes both files)"
        )
    meta = json.loads(meta_path.read_text())
    env_info = meta.get("env_info") or {}
    kwargs = env_info.get("env_kwargs") or {}
    episodes = meta.get("episodes") or []
    obs_mode = kwargs.get("obs_mode", "state")
    if obs_mode not in STATE_MODES + IMAGE_MODES:
        raise DemoFormatError(
            f"{path}: obs_mode {obs_mode!r}; readable are {', '.join(STATE_MODES + IMAGE_MODES)} (replay it with "
            "mani_skill.trajectory.replay_trajectory --obs-mode state or rgb)"
        )
    if not episodes:
        raise DemoFormatError(f"{meta_path} lists no episodes")
    states, actions, images, episode_index, seeds, success = [], [], [], [], [], []
    with h5py.File(path, "r") as f:
        for episode in episodes:
            group = f[f"traj_{episode['episode_id']}"]
            ep_actions = group["actions"][()].astype(np.float32)
            ep_states, ep_images = _episode_obs(group, obs_mode, path)
            t = len(ep_actions)
            if t == 0:
                continue  # an episode reset before any action (ManiSkill's own cleaning drops these too)
            states.append(ep_states[:t])
            actions.append(ep_actions)
            if ep_images is not None:
                images.append(ep_images[:t])
            episode_index.append(np.full(t, len(seeds), np.int64))
            reset_seed = (episode.get("reset_kwargs") or {}).get("seed")
            seeds.append(int(episode.get("episode_seed", reset_seed if reset_seed is not None else -1)))
            success.append(
                bool(episode.get("success", group["success"][-1] if "success" in group else False))
            )
    env_id = env_info.get("env_id", "unknown")
    from envs.maniskill.tasks import instruction_for

    image_size = int(images[0].shape[1]) if images else None
    info = DemoInfo(
        env_id=env_id,
        obs_mode="rgb" if images else "state",
        control_mode=kwargs.get("control_mode") or episodes[0].get("control_mode", "unknown"),
        fps=int((kwargs.get("sim_config") or {}).get("control_freq", 20)),
        state_dim=int(states[0].shape[1]),
        action_dim=int(actions[0].shape[1]),
        image_size=image_size,
        instruction=instruction_for(env_id),
        source=f"maniskill trajectory file ({meta.get('source_type') or 'unknown source'})",
    )
    if images and any(im.shape[1] != im.shape[2] for im in images):
        raise DemoFormatError(f"{path}: images of shape {images[0].shape[1:]}; the suite uses square images")
    episode_index = np.concatenate(episode_index)
    return DemoDataset(
        info=info,
        states=np.concatenate(states),
        actions=np.concatenate(actions),
        episode_index=episode_index,
        frame_index=np.concatenate([np.arange(len(a)) for a in actions]),
        task_index=np.zeros(len(episode_index), np.int64),
        tasks=[info.instruction],
        episode_seeds=seeds,
        episode_success=success,
        main_images=np.concatenate(images) if images else None,
    )
