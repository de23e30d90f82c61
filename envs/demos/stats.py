"""Feature statistics as LeRobot stores them (meta/stats.json and the episodes' `stats/...` columns).

Per feature: min, max, mean, std, count and the quantiles q01, q10, q50, q90, q99, each with the feature's shape
(images: per channel, shape [3, 1, 1], pixel values scaled to [0, 1]). Dataset statistics are aggregated from the
episodes' as LeRobot aggregates them: means weighted by frame count, the pooled variance, elementwise min/max,
and count-weighted averages of the quantiles (an approximation LeRobot makes as well).
"""

from __future__ import annotations

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics over the first axis of `values` [T, ...] (a vector feature [T, D] or scalars [T])."""
    x = values.reshape(len(values), -1) if values.ndim > 1 else values[:, None]
    data = x.astype(np.float64)
    stats = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": data.mean(axis=0),
        "std": data.std(axis=0),
        "count": np.array([len(values)], np.int64),
    }
    stats.update({name: np.quantile(data, q, axis=0) for name, q in QUANTILES.items()})
    return stats


def image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of uint8 images [T, H, W, 3], scaled to [0, 1], each of shape [3, 1, 1]."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    stats = feature_stats(pixels)
    stats["count"] = np.array([len(images)], np.int64)
    return {k: v if k == "count" else v.reshape(-1, 1, 1) for k, v in stats.items()}


def aggregate_stats(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feature's statistics over several episodes from each episode's statistics."""
    counts = np.array([float(s["count"][0]) for s in per_episode])
    weights = (counts / counts.sum()).reshape(-1, *([1] * np.ndim(per_episode[0]["mean"])))
    means = np.stack([s["mean"] for s in per_episode])
    mean = (weights * means).sum(axis=0)
    variance = (weights * (np.stack([s["std"] for s in per_episode]) ** 2 + (means - mean) ** 2)).sum(axis=0)
    stats = {
        "min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
        "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([int(counts.sum())], np.int64),
    }
    for name in QUANTILES:
        stats[name] = (weights * np.stack([s[name] for s in per_episode])).sum(axis=0)
    return stats


def to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict:
    """{feature: {stat: nested lists}} for json.dump."""
    return {key: {name: np.asarray(v).tolist() for name, v in s.items()} for key, s in stats.items()}
