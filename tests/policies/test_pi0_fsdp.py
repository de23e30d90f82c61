"""pi0 and pi0.5 under FSDP2 (two gloo ranks on CPU, every decoder and encoder layer its own unit, as the actor runs
it): evaluate gives the unsharded policy's log-probs, values and gradients, with and without gradient checkpointing
(pi0.5: its adaptive norms' modulation is computed inside the sharded layers)."""

import json

import torch
import torch.multiprocessing as mp

CASES = (("pi0", False), ("pi0", True), ("pi05", True))


def _rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from embodied.fsdp import init_process_group

    torch.set_num_threads(1)
    init_process_group("127.0.0.1", port, rank, 2, "cpu")
    results = {f"{name}, checkpointing={c}": _compare(name, c) for name, c in CASES}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def _compare(name: str, checkpointing: bool) -> dict[str, float]:
    from embodied.fsdp import shard
    from envs.base import make_env
    from envs.colour_targets import ColourTargetsConfig
    from policies import make_policy
    from policies.base import PolicyConfig

    env = make_env(ColourTargetsConfig(num_envs=4))
    obs = env.reset(seed=0)
    torch.manual_seed(0)
    config = PolicyConfig.subclass_for(name)(chunk_size=4)
    sharded = make_policy(config.replace(gradient_checkpointing=checkpointing), env.spec)
    with torch.no_grad():
        for p in sharded.parameters():
            p.add_(
                0.05 * torch.randn_like(p)
            )  # off the zero initialisation of the heads and adaRMS modulations
    plain = make_policy(config, env.spec)
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
    results = json.loads(out.read_text())
    assert len(results) == len(CASES)
    for case, result in results.items():
        assert result["logprob_err"] < 1e-5 and result["value_err"] < 1e-5, case
        assert result["grad_err"] < 1e-4, case
