"""Screw-motion planning for ManiSkill's motion-planning solutions, without mplib.

ManiSkill's solutions (`mani_skill.examples.motionplanning.panda.solutions`) drive the robot through
`PandaArmMotionPlanningSolver`, which asks an `mplib.Planner` for screw motions to grasp and goal poses.
mplib (0.1.1, the version mani-skill 3.0.1 pins, and 0.2.1) is built against numpy 1: constructing a Planner
under numpy 2 crashes the process (a segfault in `mplib.pymp.ArticulatedModel`, ManiSkill issues #1100 and
#1359), and numpy 2 is required beside it here (jax, opencv). So `ScrewPlanner` implements the part of
`mplib.Planner` those solutions use, with mplib's algorithm on SAPIEN's own pinocchio model (the one ManiSkill's
trajectory conversion uses) and the same TOPP-RA time parameterisation (toppra):

  1. the target pose relative to the current end-effector pose, as a screw: twist * angle (exponential
     coordinates, in the robot's base frame);
  2. steps of `qpos_step` rad in joint space along pinv(J) @ twist until the twist is used up, checking joint
     limits (mplib also checks self-collisions and point clouds; the solutions of the cube tasks use neither,
     and every demo is kept only if the simulator says it succeeded);
  3. the joint path timed under joint velocity and acceleration limits, sampled every control step.

`screw_planning()` makes ManiSkill's solvers use it for the duration of a `with` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partialmethod

import numpy as np


class PlanningUnavailable(RuntimeError):
    """A solution asked for a planner feature this module does not provide (RRT, collision point clouds)."""


def _pose_matrix(pose7: np.ndarray) -> np.ndarray:
    """[x, y, z, qw, qx, qy, qz] -> 4x4 homogeneous transform."""
    from transforms3d.quaternions import quat2mat

    matrix = np.eye(4)
    matrix[:3, :3] = quat2mat(pose7[3:])
    matrix[:3, 3] = pose7[:3]
    return matrix


def screw_coordinates(relative: np.ndarray) -> np.ndarray | None:
    """The twist [v, w] * angle [6] whose exponential is the 4x4 transform `relative` (None for a half turn,
    where the rotation axis is ambiguous; a pure translation is a twist [p, 0])."""
    rotation, translation = relative[:3, :3], relative[:3, 3]
    cos = (np.trace(rotation) - 1) / 2
    if np.isclose(cos, 1):
        return np.concatenate([translation, np.zeros(3)])
    if np.isclose(cos, -1):
        return None
    theta = np.arccos(np.clip(cos, -1, 1))
    axis = np.array(
        [rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]]
    )
    axis /= 2 * np.sin(theta)
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    inv_left_jacobian = np.eye(3) / theta - 0.5 * skew + (1 / theta - 0.5 / np.tan(theta / 2)) * skew @ skew
    return np.concatenate([inv_left_jacobian @ translation, axis]) * theta


class ScrewPlanner:
    """`mplib.Planner`'s screw motions for one articulation: `plan_screw(target_pose, qpos, time_step=...)`.

    Args:
        robot: the ManiSkill articulation (single env) whose links and joints are planned.
        move_group: the link to move to the target pose (e.g. "panda_hand_tcp").
    """

    def __init__(self, robot, move_group: str) -> None:
        self.model = robot.create_pinocchio_model()
        link_names = [link.get_name() for link in robot.get_links()]
        self.ee_index = link_names.index(move_group)
        self.joint_limits = robot.get_qlimits()[0].cpu().numpy().astype(np.float64)  # [dof, 2]
        qpos = robot.get_qpos()[0].cpu().numpy().astype(np.float64)
        self.model.compute_full_jacobian(qpos)
        moving = np.abs(self.model.get_link_jacobian(self.ee_index, local=False)).sum(axis=0) > 0
        self.move_group_joint_indices = np.flatnonzero(moving)  # the joints between the base and the link
        n = len(self.move_group_joint_indices)
        self.joint_vel_limits = np.ones(n)  # mplib's defaults; ManiSkill's solver scales them by 0.9
        self.joint_acc_limits = np.ones(n)
        self.base_pose = np.eye(4)

    def set_base_pose(self, pose7: np.ndarray) -> None:
        """Where the robot's base is in the world: [x, y, z, qw, qx, qy, qz]."""
        self.base_pose = _pose_matrix(np.asarray(pose7, np.float64))

    def plan_screw(
        self,
        target_pose: np.ndarray,
        qpos: np.ndarray,
        qpos_step: float = 0.1,
        time_step: float = 0.1,
        use_point_cloud: bool = False,
        use_attach: bool = False,
        wrt_world: bool = True,
        verbose: bool = False,
    ) -> dict:
        """A screw motion of the move-group link to `target_pose` [7] from `qpos` [dof]: {"status": "Success",
        "position" [n, k], "velocity" [n, k], "time" [n], "duration"} for the k move-group joints, sampled
        every `time_step` seconds; or {"status": "screw plan failed"}."""
        if use_point_cloud or use_attach:
            raise PlanningUnavailable(
                "collision-aware screw planning (point clouds, attached tools) needs mplib"
            )
        qpos = np.asarray(qpos, np.float64).copy()
        target = _pose_matrix(np.asarray(target_pose, np.float64))
        if wrt_world:
            target = np.linalg.inv(self.base_pose) @ target
        self.model.compute_forward_kinematics(qpos)
        current = self.model.get_link_pose(self.ee_index).to_transformation_matrix()
        twist = screw_coordinates(target @ np.linalg.inv(current))
        if twist is None:
            return {"status": "screw plan failed"}
        joints = self.move_group_joint_indices
        path = [qpos[joints].copy()]
        while np.linalg.norm(twist) > 1e-9:
            self.model.compute_full_jacobian(qpos)
            jacobian = self.model.get_link_jacobian(self.ee_index, local=False)
            delta_q = np.linalg.pinv(jacobian) @ twist
            delta_q *= qpos_step / np.linalg.norm(delta_q)
            delta_twist = jacobian @ delta_q
            last = np.linalg.norm(delta_twist) > np.linalg.norm(twist)
            if last:  # the final, shorter step lands on the target
                ratio = np.linalg.norm(twist) / np.linalg.norm(delta_twist)
                delta_q, delta_twist = delta_q * ratio, delta_twist * ratio
            qpos += delta_q
            twist = twist - delta_twist
            within = np.all(qpos >= self.joint_limits[:, 0] - 1e-3) and np.all(
                qpos <= self.joint_limits[:, 1] + 1e-3
            )
            if np.linalg.norm(delta_twist) < 1e-4 or not within:
                return {"status": "screw plan failed"}
            path.append(qpos[joints].copy())
            if last:
                break
        return self.time_parameterize(np.stack(path), time_step)

    def time_parameterize(self, path: np.ndarray, time_step: float) -> dict:
        """TOPP-RA under the joint velocity/acceleration limits, sampled every `time_step` (as mplib's TOPP)."""
        import toppra
        import toppra.algorithm
        import toppra.constraint

        if len(path) < 2:
            return {
                "status": "Success",
                "time": np.zeros(1),
                "position": path,
                "velocity": path * 0,
                "duration": 0.0,
            }
        toppra.setup_logging("WARNING")
        spline = toppra.SplineInterpolator(np.linspace(0, 1, len(path)), path)
        constraints = [
            toppra.constraint.JointVelocityConstraint(np.asarray(self.joint_vel_limits)),
            toppra.constraint.JointAccelerationConstraint(np.asarray(self.joint_acc_limits)),
        ]
        trajectory = toppra.algorithm.TOPPRA(
            constraints, spline, parametrizer="ParametrizeConstAccel"
        ).compute_trajectory()
        if trajectory is None:
            return {"status": "screw plan failed (time parameterisation)"}
        times = np.linspace(0, trajectory.duration, int(trajectory.duration / time_step))
        return {
            "status": "Success",
            "time": times,
            "position": trajectory(times),
            "velocity": trajectory(times, 1),
            "duration": trajectory.duration,
        }

    def plan_qpos_to_pose(self, *args, **kwargs) -> dict:
        raise PlanningUnavailable(
            "sampling-based (RRT) planning needs mplib, which cannot run beside numpy 2"
        )

    def update_point_cloud(self, *args, **kwargs) -> None:
        raise PlanningUnavailable("collision point clouds need mplib, which cannot run beside numpy 2")


def _setup_screw_planner(solver, speed: float) -> ScrewPlanner:
    """Stands in for `BaseMotionPlanningSolver.setup_planner`: the same settings, on a ScrewPlanner, with the
    joint velocity and acceleration limits scaled by `speed`."""
    planner = ScrewPlanner(solver.robot, solver.MOVE_GROUP)
    planner.set_base_pose(np.hstack([solver.base_pose.p, solver.base_pose.q]))
    planner.joint_vel_limits = planner.joint_vel_limits * solver.joint_vel_limits * speed
    planner.joint_acc_limits = planner.joint_acc_limits * solver.joint_acc_limits * speed
    return planner


@contextlib.contextmanager
def screw_planning(speed: float = 1.0) -> Iterator[None]:
    """Inside the block, ManiSkill's motion-planning solvers plan with `ScrewPlanner` instead of mplib; `speed`
    scales the joint velocity and acceleration limits the solvers set (1: ManiSkill's)."""
    from mani_skill.examples.motionplanning.base_motionplanner.motionplanner import BaseMotionPlanningSolver

    original = BaseMotionPlanningSolver.setup_planner
    BaseMotionPlanningSolver.setup_planner = partialmethod(_setup_screw_planner, speed=speed)
    try:
        yield
    finally:
        BaseMotionPlanningSolver.setup_planner = original
