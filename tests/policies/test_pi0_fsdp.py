"""pi0 under FSDP2 (two gloo ranks on CPU, every decoder and encoder layer its own unit, as the actor runs it):
evaluate gives the unsharded policy's log-probs, values and gradients, with and without gradient checkpointing."""

import json

import torch
import torch.multiprocessing as mp


def _rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from embodied.fsdp import init_process_group

    torch.set_num_threads(1)
    init_process_group("127.0.0.1", port, rank, 2, "cpu")
    results = {str(c): _compare(c) for c in (False, True)}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def _compare(checkpointing: bool) -> dict[str, float]:
    from embodied.fsdp import shard
    from envs.base import make_env
    from envs.colour_targets import ColourTargetsConfig
    from policies import make_policy
    from policies.pi0 import Pi0Config

    env = make_env(ColourTargetsConfig(num_envs=4))
    obs = env.reset(seed=0)
    torch.manual_seed(0)
    sharded = make_policy(Pi0Config(chunk_size=4, gradient_checkpointing=checkpointing), env.spec)
    plain = make_policy(Pi0Config(chunk_size=4), env.spec)
    plain.load_state_dict(sharded.state_dict())
    torch.manual_seed(1)
    fi = plain.predict(obs).forward_inputs
    ref = plain.evaluate(fi)
    (ref.logprobs.sum() + ref.values.sum()).backward()
    shard(sharded, "cpu", "fp32", reshard_after_forward=True)
    got = sharded.evaluate(fi)
    (got.logprobs.sum() + got.values.sum()).backward()
    grad_err = 0.0
    for p, q in zip(sharded.parameters(), plain.parameters()):
        if q.grad is not None:
            grad_err = max(grad_err, (p.grad.full_tensor() - q.grad).abs().max().item())
    env.close()
    return {
        "logprob_err": (got.logprobs - ref.logprobs).abs().max().item(),
        "value_err": (got.values - ref.values).abs().max().item(),
        "grad_err": grad_err,
    }


def test_fsdp2_sharded_evaluate_matches_the_plain_policy(tmp_path):
    from embodied.fsdp import free_port

    out = tmp_path / "result.json"
    mp.spawn(_rank, args=(free_port(), str(out)), nprocs=2)
    for checkpointing, result in json.loads(out.read_text()).items():
        assert result["logprob_err"] < 1e-5 and result["value_err"] < 1e-5, checkpointing
        assert result["grad_err"] < 1e-4, checkpointing
