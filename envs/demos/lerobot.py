"""The LeRobot dataset format, v3.0 (what lerobot 0.4 and later read), written and read with pyarrow.

The `lerobot` package cannot share the suite's venv (it pins torch < 2.11, torchvision, wandb < 0.25,
huggingface-hub < 0.36; docs/demos.md has the measurements), so the layout is written here and checked with
`lerobot.datasets.lerobot_dataset.LeRobotDataset` in a separate venv (scripts/check_lerobot_readable.py):

    meta/info.json                            codebase_version "v3.0", fps, features, paths, totals; the suite's
                                              DemoInfo under the extra key "inflow"
    meta/tasks.parquet                        task_index, indexed by the task string (pandas index)
    meta/episodes/chunk-000/file-000.parquet  one row per episode: length, its frame range, its data file,
                                              per-episode stats/..., and the suite's extras: seed, success
    meta/stats.json                           dataset statistics per feature
    data/chunk-XXX/file-YYY.parquet           one row per frame: observation.state, action,
                                              observation.images.main (PNG bytes, rgb only), timestamp,
                                              frame_index, episode_index, index, task_index

Images are stored as PNG inside the parquet files (LeRobot's "image" features), not as mp4 video: PNG is
lossless, so the stored images are exactly the env's, and a random frame decodes in well under a millisecond
where an mp4 frame needs a seek and the decoding of its group of pictures.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from envs.demos.dataset import DemoDataset, PngFrames
from envs.demos.info import DemoFormatError, DemoInfo
from envs.demos.stats import aggregate_stats, feature_stats, image_stats, to_json

CODEBASE_VERSION = "v3.0"
STATE, ACTION, MAIN_IMAGE = "observation.state", "action", "observation.images.main"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
CHUNKS_SIZE = 1000  # files per chunk folder, as LeRobot
DATA_FILE_MB = 100  # a data file is closed once it holds about this much, as LeRobot
INDEX_FEATURES = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}


def lerobot_features(info: DemoInfo) -> dict[str, dict]:
    """info.json's `features` for a dataset of `info`."""
    features = {
        STATE: {"dtype": "float32", "shape": [info.state_dim], "names": None},
        ACTION: {"dtype": "float32", "shape": [info.action_dim], "names": None},
    }
    if info.has_images:
        size = info.image_size
        features[MAIN_IMAGE] = {
            "dtype": "image",
            "shape": [size, size, 3],
            "names": ["height", "width", "channels"],
        }
    for name, dtype in INDEX_FEATURES.items():
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    return features


def _hf_features(features: dict[str, dict]) -> dict:
    """The Hugging Face `datasets` feature types of the data files (their schema's "huggingface" metadata)."""
    out = {}
    for key, ft in features.items():
        if ft["dtype"] == "image":
            out[key] = {"_type": "Image"}
        elif ft["shape"] == [1]:
            out[key] = {"dtype": ft["dtype"], "_type": "Value"}
        else:
            value = {"dtype": ft["dtype"], "_type": "Value"}
            out[key] = {"feature": value, "length": ft["shape"][0], "_type": "List"}
    return {"info": {"features": out}}


def _vector_column(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _tasks_table(tasks: list[str]) -> pa.Table:
    """meta/tasks.parquet as pandas writes a DataFrame indexed by the task strings (LeRobot reads it so)."""
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "__index_level_0__": pa.array(tasks, pa.string()),
        }
    )
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


class DemoWriter:
    """Writes episodes into a new LeRobot v3.0 dataset folder; `close()` (or leaving a `with` block) finishes it.

    Frames go to the data files as each episode is added; the metadata (info.json last) is written by `close()`,
    so a folder without meta/info.json is an unfinished dataset. Leaving a `with` block on an error still closes,
    keeping the episodes already added.
    """

    def __init__(self, path: str | Path, info: DemoInfo) -> None:
        self.root = Path(path)
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise DemoFormatError(
                f"{self.root} already exists and is not an empty folder; pass a new folder (or delete that one)"
            )
        self.info = info
        self.features = lerobot_features(info)
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []
        self.episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self.num_frames = 0
        self._file = (0, 0)  # (chunk, file) index of the data file being written
        self._file_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._closed = False
        self.root.mkdir(parents=True, exist_ok=True)

    def add_episode(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        main_images: np.ndarray | None = None,
        task: str | None = None,
        seed: int = -1,
        success: bool = True,
    ) -> None:
        """Append one episode of T frames: states float32 [T, D], actions float32 [T, A] (the action taken in
        each frame's observation), main_images uint8 [T, H, W, 3] (rgb datasets), its instruction `task`
        (default: the dataset's), the env's reset `seed` and whether the episode succeeded."""
        if self._closed:
            raise DemoFormatError(f"the dataset {self.root} is closed; open a new DemoWriter to add episodes")
        states, actions = self._checked(states, actions, main_images)
        task = task if task is not None else self.info.instruction
        if not task:
            raise DemoFormatError(
                "add_episode needs a task (the language instruction), or DemoInfo.instruction"
            )
        t = len(states)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        episode_index = len(self.episodes)
        frame_index = np.arange(t, dtype=np.int64)
        columns = {
            STATE: _vector_column(states),
            ACTION: _vector_column(actions),
            "timestamp": pa.array((frame_index / self.info.fps).astype(np.float32)),
            "frame_index": pa.array(frame_index),
            "episode_index": pa.array(np.full(t, episode_index, np.int64)),
            "index": pa.array(np.arange(self.num_frames, self.num_frames + t, dtype=np.int64)),
            "task_index": pa.array(np.full(t, task_index, np.int64)),
        }
        stats = {STATE: feature_stats(states), ACTION: feature_stats(actions)}
        if main_images is not None:
            encoded = [_png(image) for image in main_images]
            image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            columns[MAIN_IMAGE] = pa.array([{"bytes": b, "path": None} for b in encoded], image_type)
            stats[MAIN_IMAGE] = image_stats(main_images)
        for name in INDEX_FEATURES:
            stats[name] = feature_stats(columns[name].to_numpy())
        table = pa.table({key: columns[key] for key in self.features})
        self._write(table)
        self.episodes.append(
            {
                "episode_index": episode_index,
                "tasks": [task],
                "length": t,
                "data/chunk_index": self._file[0],
                "data/file_index": self._file[1],
                "dataset_from_index": self.num_frames,
                "dataset_to_index": self.num_frames + t,
                "seed": int(seed),
                "success": bool(success),
            }
        )
        self.episode_stats.append(stats)
        self.num_frames += t

    def _checked(self, states, actions, main_images) -> tuple[np.ndarray, np.ndarray]:
        states, actions = np.asarray(states, np.float32), np.asarray(actions, np.float32)
        info = self.info
        if states.ndim != 2 or states.shape[1] != info.state_dim or len(states) == 0:
            raise DemoFormatError(f"states must be float32 [T>0, {info.state_dim}], got shape {states.shape}")
        if actions.shape != (len(states), info.action_dim):
            raise DemoFormatError(
                f"actions must be float32 [{len(states)}, {info.action_dim}] (one per frame), got {actions.shape}"
            )
        if info.has_images:
            expected = (len(states), info.image_size, info.image_size, 3)
            if main_images is None or main_images.shape != expected or main_images.dtype != np.uint8:
                got = None if main_images is None else f"{main_images.dtype} {main_images.shape}"
                raise DemoFormatError(
                    f"main_images must be uint8 {list(expected)} for this rgb dataset, got {got}"
                )
        elif main_images is not None:
            raise DemoFormatError("main_images given for a state dataset (DemoInfo.image_size is None)")
        if not (np.isfinite(states).all() and np.isfinite(actions).all()):
            raise DemoFormatError("states and actions must be finite (found NaN or inf)")
        return states, actions

    def _write(self, table: pa.Table) -> None:
        if self._writer is not None and self._file_bytes >= DATA_FILE_MB * 2**20:
            self._writer.close()
            self._writer, self._file_bytes = None, 0
            chunk, file = self._file
            self._file = (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)
        if self._writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self._file[0], file_index=self._file[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            schema = table.schema.with_metadata({b"huggingface": json.dumps(_hf_features(self.features))})
            self._writer = pq.ParquetWriter(path, schema, compression="snappy")
        self._writer.write_table(table.replace_schema_metadata(self._writer.schema.metadata))
        self._file_bytes += table.nbytes

    def close(self) -> None:
        """Finish the dataset: episodes, tasks, statistics, then info.json. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if not self.episodes:
            return  # nothing was added: leave no half dataset that readers would take as valid
        meta = self.root / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        rows = [
            {
                **episode,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
                **self._flat_stats(stats),
            }
            for episode, stats in zip(self.episodes, self.episode_stats)
        ]
        pq.write_table(pa.Table.from_pylist(rows), self.root / EPISODES_PATH)
        pq.write_table(_tasks_table(list(self.tasks)), meta / "tasks.parquet")
        totals = {key: aggregate_stats([s[key] for s in self.episode_stats]) for key in self.episode_stats[0]}
        (meta / "stats.json").write_text(json.dumps(to_json(totals), indent=2))
        (meta / "info.json").write_text(json.dumps(self._info_json(), indent=2))

    @staticmethod
    def _flat_stats(stats: dict[str, dict[str, np.ndarray]]) -> dict:
        return {f"stats/{key}/{name}": v.tolist() for key, s in stats.items() for name, v in s.items()}

    def _info_json(self) -> dict:
        n = len(self.episodes)
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": None,
            "total_episodes": n,
            "total_frames": self.num_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILE_MB,
            "video_files_size_in_mb": 200,
            "fps": self.info.fps,
            "splits": {"train": f"0:{n}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": self.features,
            "inflow": self.info.to_dict(),
        }

    def __enter__(self) -> DemoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _numpy_column(table: pa.Table, key: str, width: int | None) -> np.ndarray:
    """A data column as numpy: [N] for scalars, [N, width] for vectors (fixed-size or plain lists)."""
    column = table.column(key).combine_chunks()
    if width is None:
        return column.to_numpy(zero_copy_only=False)
    values = column.flatten().to_numpy(zero_copy_only=False)
    if values.size != len(table) * width:
        raise DemoFormatError(f"column {key!r}: rows are not all of length {width}")
    return values.reshape(len(table), width)


def _info_from_features(info_json: dict, tasks: list[str]) -> DemoInfo:
    """DemoInfo of a LeRobot dataset written by other tools (no "inflow" key): what the features say."""
    features = info_json["features"]
    cameras = [k for k, ft in features.items() if ft["dtype"] == "image"]
    return DemoInfo(
        env_id=info_json.get("robot_type") or "unknown",
        obs_mode="rgb" if cameras else "state",
        control_mode="unknown",
        fps=int(info_json["fps"]),
        state_dim=int(features[STATE]["shape"][0]),
        action_dim=int(features[ACTION]["shape"][0]),
        image_size=int(features[cameras[0]]["shape"][0]) if cameras else None,
        instruction=tasks[0] if tasks else "",
        source="lerobot dataset",
    )


def read_lerobot(root: str | Path) -> DemoDataset:
    """A LeRobot v3.0 dataset folder (as `DemoWriter` writes it, or any with observation.state and action)."""
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DemoFormatError(
            f"{root} has no meta/info.json: not a LeRobot dataset, or one whose writer was not closed"
        )
    info_json = json.loads(info_path.read_text())
    version = info_json.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DemoFormatError(
            f"{root} is a LeRobot dataset of format {version}; this reader reads {CODEBASE_VERSION} (convert it with "
            "lerobot's lerobot.datasets.v30.convert_dataset_v21_to_v30)"
        )
    features = info_json["features"]
    missing = [k for k in (STATE, ACTION) if k not in features]
    videos = [k for k, ft in features.items() if ft["dtype"] == "video"]
    if missing or videos:
        raise DemoFormatError(
            f"{root}: "
            + (f"no {missing} feature(s)" if missing else f"video features {videos} (mp4)")
            + f"; this reader needs {STATE!r}, {ACTION!r} and images stored as 'image' features"
        )
    tasks_table = pq.read_table(root / "meta" / "tasks.parquet")
    task_column = "task" if "task" in tasks_table.column_names else "__index_level_0__"
    task_order = np.argsort(tasks_table.column("task_index").to_numpy())
    tasks = [tasks_table.column(task_column).to_pylist()[i] for i in task_order]
    info = (
        DemoInfo.from_dict(info_json["inflow"])
        if "inflow" in info_json
        else _info_from_features(info_json, tasks)
    )

    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DemoFormatError(f"{root}/data holds no chunk-*/file-*.parquet files")
    cameras = [k for k, ft in features.items() if ft["dtype"] == "image"]
    table = pa.concat_tables(
        [pq.read_table(f, columns=[STATE, ACTION, *cameras, *INDEX_FEATURES]) for f in files]
    )
    table = table.sort_by("index")
    episodes = pq.read_table(root / EPISODES_PATH).sort_by("episode_index").to_pydict()
    main_images = None
    if cameras:
        images = table.column(cameras[0]).combine_chunks()
        encoded = images.field("bytes").to_pylist()
        paths = images.field("path").to_pylist()
        encoded = [b if b is not None else (root / p).read_bytes() for b, p in zip(encoded, paths)]
        main_images = PngFrames(encoded, info.image_size, info.image_size)
    n_episodes = len(episodes["episode_index"])
    return DemoDataset(
        info=info,
        states=_numpy_column(table, STATE, info.state_dim),
        actions=_numpy_column(table, ACTION, info.action_dim),
        episode_index=_numpy_column(table, "episode_index", None),
        frame_index=_numpy_column(table, "frame_index", None),
        task_index=_numpy_column(table, "task_index", None),
        tasks=tasks,
        episode_seeds=episodes.get("seed", [-1] * n_episodes),
        episode_success=episodes.get("success", [True] * n_episodes),
        main_images=main_images,
    )
