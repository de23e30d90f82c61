"""One LIBERO scene: LIBERO's own `OffScreenRenderEnv` for one task, reset to the benchmark's initial states.

An episode starts as in LIBERO's reference evaluations (OpenVLA, OpenVLA-OFT, openpi): `env.reset()`, then
`env.set_init_state(init_states[k])`, then `settle_steps` no-op steps (gripper open) while the objects come to
rest. The physics, the observations and the success check are LIBERO's.

`env.reset()` also places the fixtures (furniture without joints: cabinets, stoves, ...) at random, from
numpy's global RNG, and the initial states do not cover them (they hold joint positions and velocities only).
So that an initial-state id always gives the same scene, in any env and after any history, that reset runs
with numpy's global RNG seeded by the id (the caller's RNG state is restored afterwards).

Three things make an episode cheaper with the same result:
- a soft reset (`hard_reset=False`): the MuJoCo model is kept rather than rebuilt from XML (2-5 s on CPU);
  the fixed initial state then sets the whole simulator state anyway, and the one thing a soft reset would
  carry over (the gripper's command ramp, which robosuite keeps in its gripper model) is zeroed as a hard
  reset does,
- the cameras are off during the reset and the settle steps except the last one, so a reset renders once,
  not 2 + settle_steps times (rendering dominates on CPU),
- when the cameras come back on they are put in the sampling phase they would have had all along (robosuite
  samples a camera at one of the physics substeps of each control step, and which one depends on the history),
  so every image equals the one LIBERO's unmodified loop renders.
Several scenes can live in one process: each has its own OpenGL context, made current before it renders.
"""

from __future__ import annotations

import contextlib

import numpy as np

from envs.libero.config import LiberoConfig
from envs.libero.convert import MAIN_CAMERA, NO_OP_ACTION, WRIST_CAMERA, state_vector, upright
from envs.libero.tasks import LiberoTask

# a proprioceptive observable: always on, sampled at the same rate as the cameras, so its sampling phase is
# the one the cameras would have had if they had been on all along
_PHASE_REFERENCE = "robot0_joint_pos"


@contextlib.contextmanager
def seeded_numpy_global_rng(seed: int):
    """Run a block with numpy's global RNG seeded by `seed`, then restore the caller's RNG state."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


class LiberoSim:
    """A LIBERO scene for one task: `reset_to(k)` starts an episode from fixed initial state k, `step` acts."""

    def __init__(self, libero, task: LiberoTask, config: LiberoConfig) -> None:
        self.task = task
        self.settle_steps = config.settle_steps
        self.cameras = [MAIN_CAMERA] + ([WRIST_CAMERA] if config.wrist_image else [])
        self.env = libero.OffScreenRenderEnv(
            bddl_file_name=task.bddl_file,
            camera_names=self.cameras,
            camera_heights=config.image_size,
            camera_widths=config.image_size,
            hard_reset=False,
            ignore_done=True,  # episode ends are the env API's business (success, time limit)
        )
        robosuite_env = self.env.env
        self._observables = robosuite_env._observables
        self._camera_observables = [f"{c}_image" for c in self.cameras]
        reference = self._observables[_PHASE_REFERENCE]
        for name in self._camera_observables:
            if self._observables[name]._sampling_timestep != reference._sampling_timestep:
                raise RuntimeError(f"robosuite samples {name} and {_PHASE_REFERENCE} at different rates")
        if config.shadows:
            self.env.sim.model.light_castshadow[:] = 1
        self._release_context()  # robosuite left it current in this thread

    def _make_current(self) -> None:
        """Make this scene's OpenGL context current (robosuite renders into whichever context is current)."""
        self.env.sim._render_context_offscreen.gl_ctx.make_current()

    def _release_context(self) -> None:
        """Release this scene's EGL context from the calling thread: an EGL context is current in one thread at
        a time, and the methods of a threaded caller (a Ray actor with max_concurrency > 1) run in any thread
        of its pool, so the next call may come from another thread."""
        from robosuite.renderers.context import egl_context

        if isinstance(self.env.sim._render_context_offscreen.gl_ctx, egl_context.EGLGLContext):
            egl = egl_context.EGL
            egl.eglMakeCurrent(
                egl_context.EGL_DISPLAY, egl.EGL_NO_SURFACE, egl.EGL_NO_SURFACE, egl.EGL_NO_CONTEXT
            )

    @contextlib.contextmanager
    def _context(self):
        """This scene's OpenGL context, current in the calling thread while the block runs."""
        self._make_current()
        try:
            yield
        finally:
            self._release_context()

    def _cameras_off(self) -> None:
        for name in self._camera_observables:
            self.env.env.modify_observable(name, "enabled", False)

    def _cameras_on_in_phase(self) -> None:
        """Turn the cameras on with the sampling phase they would have had if never turned off."""
        reference = self._observables[_PHASE_REFERENCE]
        for name in self._camera_observables:
            camera = self._observables[name]
            camera.set_enabled(True)  # first: it resets the sampling clock
            camera._time_since_last_sample = reference._time_since_last_sample
            camera._sampled = reference._sampled
            camera._current_delay = reference._current_delay

    def reset_to(self, init_state_id: int) -> dict[str, np.ndarray]:
        """Start an episode from the benchmark's fixed initial state `init_state_id`; returns the row obs."""
        init_states = self.task.init_states
        if not 0 <= init_state_id < len(init_states):
            raise ValueError(
                f"{self.task.suite} task {self.task.task_id} has initial states 0..{len(init_states) - 1}, "
                f"not {init_state_id}"
            )
        with self._context():
            self._cameras_off()
            with seeded_numpy_global_rng(init_state_id):
                self.env.reset()
            for robot in self.env.robots:  # a hard reset rebuilds the gripper model, and with it this ramp
                robot.gripper.current_action = np.zeros(robot.gripper.dof)
            if self.settle_steps == 0:
                self._cameras_on_in_phase()
            raw = self.env.set_init_state(init_states[init_state_id])
            for k in range(self.settle_steps):
                if k == self.settle_steps - 1:
                    self._cameras_on_in_phase()
                raw, *_ = self.env.step(NO_OP_ACTION)
        return self.row(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool]:
        """One policy step (`action` [7], float64); returns the row obs, LIBERO's reward and its success flag."""
        with self._context():
            raw, reward, success, _ = self.env.step(action)
        return self.row(raw), float(reward), bool(success)

    def row(self, raw: dict) -> dict[str, np.ndarray]:
        """This scene's part of the contract: upright images and the 8-dim state."""
        row = {"main": upright(raw[f"{MAIN_CAMERA}_image"]), "state": state_vector(raw)}
        if WRIST_CAMERA in self.cameras:
            row["wrist"] = upright(raw[f"{WRIST_CAMERA}_image"])
        return row

    def close(self) -> None:
        self.env.close()
