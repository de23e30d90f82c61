"""Shared test setup: markers, the fixtures folder, and one thread per test process."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Tiny checkpoints made with the official implementations of the models we re-implement (read-only).
FIXTURES = Path(os.environ.get("INFLOW_FIXTURES", REPO.parent / "shared" / "fixtures"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def fixture_dir(name: str) -> Path:
    """The shared fixture folder `name`, or skip when neither INFLOW_FIXTURES nor ../shared/fixtures has it."""
    path = FIXTURES / name
    if not path.is_dir():
        pytest.skip(
            f"fixture {name} not found under {FIXTURES} (set INFLOW_FIXTURES to the shared/fixtures folder)"
        )
    return path


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service():
    """A test that runs W&B in this process leaves WANDB_SERVICE (this process's wandb-core) in os.environ, and
    every run a later test starts as a subprocess would attach to that service instead of starting its own: a
    SIGKILLed run's stream then stays open there and its resume is refused the same run id."""
    yield
    os.environ.pop("WANDB_SERVICE", None)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
