"""How fast SFT mini-batches come out of a demonstration dataset: `frames(random indices)`.

    python scripts/bench_demos.py /work/demos/pushcube_rgb --batch 64 --batches 50

Measured in one run, on the same random batches:
  gather      numpy fancy indexing of states/actions/images already in memory (the floor)
  cold        `open_demos(path).frames(batch)` on a freshly opened dataset: PNG frames decoded on first use
  warm        the same dataset once every frame was decoded (the cache SFT runs from after its first epoch)
  mp4-seq     the same images written as one H.264 mp4 (as a video-backed LeRobot dataset stores them) and
              decoded front to back, per batch-sized run of frames (the cost of filling a decoded cache)
  mp4-seek    random frames of that mp4 read one by one with imageio-ffmpeg (a seek each; 2 batches only)
Prints milliseconds per batch of --batch frames and each against `gather` (rgb datasets; --no-mp4 skips mp4).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def per_batch_ms(function, batches: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for indices in batches:
        function(indices)
    return 1000 * (time.perf_counter() - start) / len(batches)


def write_mp4(images: np.ndarray, fps: int, folder: str) -> str:
    """The frames `images` [N, H, W, 3] as one H.264 mp4 in `folder`."""
    import imageio.v2 as imageio

    path = os.path.join(folder, "frames.mp4")
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
        for image in images:
            writer.append_data(image)
    return path


def mp4_ms(path: str, batches: list[np.ndarray]) -> tuple[float, float]:
    """(sequential decoding, random seeks) in ms per batch of len(batches[0]) frames."""
    import imageio.v2 as imageio

    start = time.perf_counter()
    with imageio.get_reader(path, "ffmpeg") as reader:
        decoded = sum(1 for _ in reader)
    sequential = 1000 * (time.perf_counter() - start) / decoded * len(batches[0])
    with imageio.get_reader(path, "ffmpeg") as reader:
        seek = per_batch_ms(lambda indices: [reader.get_data(int(i)) for i in indices], batches[:2])
    return sequential, seek


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path, help="a dataset folder written by scripts/collect_demos.py")
    parser.add_argument("--batch", type=int, default=64, help="frames per batch")
    parser.add_argument("--batches", type=int, default=50, help="random batches timed per kind")
    parser.add_argument("--no-mp4", dest="mp4", action="store_false", help="skip the mp4 comparison")
    args = parser.parse_args()
    from envs.demos import open_demos

    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    start = time.perf_counter()
    demos = open_demos(args.dataset)
    print(f"{demos}: opened in {time.perf_counter() - start:.2f} s")
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, demos.num_frames, args.batch) for _ in range(args.batches)]
    everything = np.arange(demos.num_frames)
    images = demos.frames(everything)["main_images"] if demos.info.has_images else None
    states, actions = demos.states.copy(), demos.actions.copy()

    def gather(indices):
        return states[indices], actions[indices], None if images is None else images[indices]

    results = {"gather": per_batch_ms(gather, batches)}
    fresh = open_demos(args.dataset)
    results["cold"] = per_batch_ms(fresh.frames, batches)
    results["warm"] = per_batch_ms(demos.frames, batches)
    if images is not None and args.mp4:
        with tempfile.TemporaryDirectory() as folder:
            path = write_mp4(images, demos.info.fps, folder)
            results["mp4-seq"], results["mp4-seek"] = mp4_ms(path, batches)
    for kind, ms in results.items():
        print(f"  {kind:7s} {ms:9.3f} ms per batch of {args.batch}   {ms / results['gather']:8.1f}x gather")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
