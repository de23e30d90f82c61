"""The typed run configuration: one frozen dataclass per YAML section, validated at start-up.

    run:        name, output folder, seed, budget (env steps), when to stop
    env:        the env type's own config (`envs`; subclass chosen by env.name); num_envs is the global batch
    policy:     the policy's own config (`policies`; subclass chosen by policy.name)
    algorithm:  advantage estimator and loss (`algorithms.config.AlgorithmConfig`)
    rollout:    chunk steps per rollout epoch, pipeline stages
    actor:      optimiser, epochs, mini-/micro-batches, clipping, FSDP2 settings
    cluster:    Ray address, slots, component placement
    eval, checkpoint, logger
    resume:     null | auto | a checkpoint or run folder

Workers receive their own section only (an env worker gets `env` and `rollout`, an actor worker `actor`,
`algorithm` and `policy`). `python -m embodied.train describe` prints every key with its help line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from algorithms.config import AlgorithmConfig
from algorithms.schema import Config, ConfigError, param
from envs.base import EnvConfig
from policies.base import PolicyConfig

COMPONENTS = ("env", "rollout", "actor")


@dataclass(frozen=True)
class RunSection(Config):
    """What this run is called, where it writes, and how long it trains."""

    name: str = param("run", help="run name; the run folder is <output_dir>/<name>/<timestamp>")
    output_dir: str = param("runs", help="folder of all runs (relative paths: to the repository root)")
    seed: int = param(0, help="seed of the policy init, action sampling and minibatch order", ge=0)
    total_env_steps: int = param(200_000, help="stop after this many env steps (all envs together)", ge=1)
    stop_at_eval_success: float | None = param(
        None,
        help="stop early once the periodic eval's success_once reaches this; null: never",
        ge=0.0,
        le=1.0,
    )
    log_every: int = param(1, help="log metrics and print progress every this many iterations", ge=1)
    on_nonfinite: Literal["stop", "skip"] = param(
        "stop",
        help="a NaN/inf in an env observation, the loss or the gradients: stop the run (its last checkpoint "
        "stays), or skip the update it would spoil (embodied/nonfinite.py); non-finite weights always stop",
    )


@dataclass(frozen=True)
class RolloutConfig(Config):
    """How the env and rollout workers collect one rollout epoch."""

    num_steps: int = param(50, help="chunk steps per env per rollout epoch (T)", ge=1)
    pipeline_stages: int = param(
        1,
        help="parts each env worker splits its envs into: inference on part k overlaps simulation of part k+1",
        ge=1,
    )
    reset_every_epoch: bool = param(
        False, help="reset all envs at the start of every rollout epoch (GRPO: one episode per env)"
    )
    channel_timeout_s: float = param(
        600.0, help="seconds a worker waits for a message before it reports its peer as stuck", gt=0
    )


@dataclass(frozen=True)
class ActorConfig(Config):
    """How the actor workers train (FSDP2 over the actor's slots)."""

    lr: float = param(3e-4, help="learning rate of the policy parameters", gt=0.0)
    value_lr: float | None = param(None, help="learning rate of the value head; null: the same as lr", gt=0.0)
    lr_schedule: Literal["constant", "linear"] = param(
        "constant",
        help="constant; linear: both learning rates decay linearly to 0 at run.total_env_steps (CleanRL's "
        "anneal_lr; keeps PPO from drifting once most episodes succeed)",
    )
    adam_eps: float = param(1e-5, help="Adam epsilon", gt=0.0)
    adam_betas: tuple[float, float] = param((0.9, 0.999), help="Adam betas")
    weight_decay: float = param(0.0, help="AdamW weight decay", ge=0.0)
    update_epochs: int = param(8, help="passes over each rollout's data", ge=1)
    num_minibatches: int = param(
        4, help="optimizer steps per epoch (the batch is split into this many)", ge=1
    )
    micro_batch_size: int | None = param(
        None, help="samples per forward/backward (gradients accumulate over a minibatch); null: the minibatch"
    )
    max_grad_norm: float | None = param(
        0.5, help="clip the global gradient norm to this; null: no clipping", gt=0
    )
    target_kl: float | None = param(
        0.1, help="stop the update epochs of an iteration once approx_kl exceeds this; null: never", gt=0
    )
    critic_warmup_iterations: int = param(
        0,
        help="the run's first N updates train the value head only (the policy's weights stay as they are), so "
        "that PPO's first policy steps use advantages of a critic fitted to the starting policy: for RL from a "
        "supervised (SFT) checkpoint, whose value head starts untrained; 0: off",
        ge=0,
    )
    demos: str | None = param(
        None,
        help="demonstrations (a LeRobot dataset folder or a ManiSkill .h5) for a behaviour-cloning term in every "
        "RL mini-batch: RL with demonstrations, DAPG-style (embodied/demo_term.py); null: off",
    )
    demo_coef: float = param(
        1.0,
        help="weight of the demonstrations' supervised loss at the first update (with actor.demos)",
        ge=0.0,
    )
    demo_coef_decay: float = param(
        1.0,
        help="the weight is demo_coef * demo_coef_decay**k at the run's k-th update (1: constant)",
        gt=0.0,
        le=1.0,
    )
    demo_batch_size: int = param(256, help="demonstration frames per mini-batch step (per actor rank)", ge=1)
    bootstrap_on_termination: bool = param(
        False,
        help="bootstrap terminated episodes from their final observation's value, like truncated ones "
        "(ManiSkill's PPO baseline: a success state keeps its value)",
    )
    precision: Literal["fp32", "bf16"] = param(
        "fp32", help="training compute dtype: fp32 | bf16 (bf16 mixed precision, GPU only; slower on CPU)"
    )
    reshard_after_forward: bool = param(
        True, help="FSDP2: free the gathered parameters after the forward pass (saves memory, costs a gather)"
    )
    offload: Literal["auto", "on", "off"] = param(
        "auto",
        help="move weights and optimizer state to CPU while idle: auto = when collocated with rollout on a GPU",
    )

    def check(self) -> None:
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"{{section}}micro_batch_size={self.micro_batch_size} must be >= 1 (or null)")


# more slots (GPUs, or CPUs without GPUs) than a cluster this runs on has: one worker per slot of a slot set
# means that a slot count is a count of processes, and slot sets are expanded to lists
MAX_SLOTS = 1 << 16


@dataclass(frozen=True)
class ClusterConfig(Config):
    """Where the workers run: the Ray cluster and which resource slots each component uses."""

    address: str | None = param(
        None,
        help="Ray address of an existing cluster (e.g. 10.0.0.1:6379 or auto); null: start Ray in-process",
    )
    num_cpus: int | None = param(
        None, help="CPUs of an in-process Ray; null: all of this machine's", ge=1, le=MAX_SLOTS
    )
    num_slots: int | None = param(
        None,
        help="resource slots: null = the GPUs, or the CPUs on a machine without GPUs",
        ge=1,
        le=MAX_SLOTS,
    )
    component_placement: dict[str, str | int] | None = param(
        factory=lambda: {"env": "all", "rollout": "all", "actor": "all"},
        help="slots of env, rollout and actor: 'all', '0-3', '0,2' or '1'; one worker per slot; null with auto",
    )
    auto: bool = param(
        False,
        help="profile the run's workers at start-up and run the placement, slot count and rollout.pipeline_stages "
        "the cost model predicts fastest (cluster=auto; needs component_placement and num_slots null)",
    )
    online_scaling: bool = param(
        False,
        help="each update also trains on the slots rollout freed (its workers there join as data-parallel "
        "ranks, or as threads, see scaling_cores_as), which return to rollout with the new weights",
    )
    scaling_cores_as: Literal["ranks", "threads"] = param(
        "ranks",
        help="online scaling without GPUs: the freed cores train as extra gloo ranks (the rollout workers "
        "there) or as extra threads of the actor rank",
    )
    pin_cpus: bool = param(True, help="without GPUs, pin each worker to the CPU cores of its slot")
    startup_timeout_s: float = param(120.0, help="seconds to wait for Ray to place the workers", gt=0)
    temp_dir: str | None = param(None, help="Ray session folder of an in-process Ray; null: Ray's default")
    listen: Literal["localhost", "network"] = param(
        "localhost",
        help="an in-process Ray's ports (GCS, raylet, workers, agents, dashboard): localhost = 127.0.0.1 only; "
        "network = this machine's address, reachable by other machines (protected by Ray's token auth)",
    )
    dashboard: bool = param(False, help="start Ray's dashboard (in-process Ray; listening as cluster.listen)")

    def check(self) -> None:
        if self.auto:
            given = {"component_placement": self.component_placement, "num_slots": self.num_slots}
            fixed = {k: v for k, v in given.items() if v is not None}
            if fixed:
                key, value = next(iter(fixed.items()))
                value = str(value).replace("{", "{{").replace("}", "}}")  # the message is a format template
                raise ConfigError(
                    f"{{section}}auto=true chooses the placement itself, but {{section}}{key}={value} fixes it: "
                    f"drop one of them (cluster=auto alone, or a fixed placement without auto)",
                    "",
                )
            return
        if self.component_placement is None:
            raise ConfigError(
                "{section}component_placement is null: give env, rollout and actor a set of slots each (e.g. "
                "'all'), or let the placement be chosen with {section}auto=true (cluster=auto)",
                "",
            )
        unknown = [k for k in self.component_placement if k not in COMPONENTS]
        if unknown:
            from algorithms.registry import did_you_mean

            raise ConfigError(
                f"{{section}}component_placement has an unknown component {unknown[0]!r}."
                f"{did_you_mean(unknown[0], list(COMPONENTS))} Components: {', '.join(COMPONENTS)}",
                "",
            )
        missing = [c for c in COMPONENTS if c not in self.component_placement]
        if missing:
            raise ConfigError(
                f"{{section}}component_placement lacks {missing[0]!r}: give env, rollout and actor a set of "
                "slots each (e.g. 'all')"
            )


@dataclass(frozen=True)
class EvalConfig(Config):
    """Periodic evaluation: deterministic actions from fixed initial states."""

    every_n_iterations: int = param(5, help="evaluate every this many iterations; 0: only at the end", ge=0)
    num_episodes: int = param(
        64,
        help="episodes per task per evaluation (single-task envs: per evaluation), in rounds of the envs",
        ge=1,
    )
    first_initial_state: int = param(
        1_000_000,
        help="each task's fixed initial states are ids first_initial_state + 0 .. num_episodes - 1",
        ge=0,
    )
    min_train_success: float | None = param(
        None,
        help="skip periodic evaluations while the training episodes' success_once is below this; null: never skip",
        ge=0.0,
        le=1.0,
    )
    at_end: bool = param(True, help="also evaluate after the last iteration")
    video: bool = param(True, help="record eval videos (envs with image observations only)")
    video_envs: int = param(4, help="envs of the first round that are recorded (one grid video)", ge=1)
    video_mode: Literal["grid", "episodes"] = param(
        "grid", help="grid: one grid mp4 of the first video_envs envs; episodes: one mp4 per episode"
    )
    tasks_per_pass: int | None = param(
        None,
        help="eval_policy.sh: evaluate the env's tasks this many at a time, each pass with fresh workers "
        "holding only the envs of its tasks (so suites whose scenes need much memory fit); null: all at once",
        ge=1,
    )


@dataclass(frozen=True)
class CheckpointConfig(Config):
    """Atomic checkpoints: weights, optimizer, RNG states, counters and the config."""

    every_n_iterations: int = param(10, help="save every this many iterations; 0: only at the end", ge=0)
    keep: int = param(2, help="checkpoints kept (older ones are deleted)", ge=1)
    at_end: bool = param(True, help="also save after the last iteration")


@dataclass(frozen=True)
class WandbConfig(Config):
    """Weights & Biases tracking."""

    mode: Literal["auto", "offline", "online", "disabled"] = param(
        "auto", help="auto: online when WANDB_API_KEY is set, otherwise offline"
    )
    project: str = param("inflow", help="W&B project")
    entity: str | None = param(None, help="W&B entity (team or user); null: the default")


@dataclass(frozen=True)
class LoggerConfig(Config):
    """Console, TensorBoard (always) and W&B."""

    console: Literal["auto", "rich", "plain"] = param(
        "auto", help="progress display: rich bar on a terminal, plain lines otherwise"
    )
    wandb: WandbConfig = param(factory=WandbConfig, help="Weights & Biases settings")


@dataclass(frozen=True)
class TrainConfig(Config):
    """A whole training run."""

    env: EnvConfig = param(help="the env (env.name selects the env type and its keys)")
    policy: PolicyConfig = param(help="the policy (policy.name selects the policy and its keys)")
    run: RunSection = param(factory=RunSection, help="name, folder, seed and budget of the run")
    algorithm: AlgorithmConfig = param(factory=AlgorithmConfig, help="advantage estimator and loss")
    rollout: RolloutConfig = param(factory=RolloutConfig, help="rollout epochs and pipelining")
    actor: ActorConfig = param(factory=ActorConfig, help="optimisation on the actor workers")
    cluster: ClusterConfig = param(factory=ClusterConfig, help="Ray cluster and component placement")
    eval: EvalConfig = param(factory=EvalConfig, help="periodic deterministic evaluation")
    checkpoint: CheckpointConfig = param(factory=CheckpointConfig, help="atomic checkpoints")
    logger: LoggerConfig = param(factory=LoggerConfig, help="console, TensorBoard and W&B")
    resume: str | None = param(
        None, help="null: a new run; auto: continue the newest run of this name; or a checkpoint/run folder"
    )

    def check(self) -> None:
        groups_refresh = self.env.group_size >= 2 and self.rollout.reset_every_epoch
        if self.algorithm.dynamic_sampling and not groups_refresh:
            raise ConfigError(
                f"algorithm.dynamic_sampling compares the outcomes of groups of envs that start from one initial "
                f"state, and each generation round needs fresh ones: set env.group_size >= 2 (it is "
                f"{self.env.group_size}) and rollout.reset_every_epoch=true (it is "
                f"{str(self.rollout.reset_every_epoch).lower()})"
            )
