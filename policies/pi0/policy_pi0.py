"""The pi0 policy (`policy.name: pi0`): observations -> action chunks through a stochastic denoising chain.

predict(obs, mode):
  processing -> prefix pass (KV cache, once) -> K denoising steps of the action expert from noise x_0:
  - train + flow_noise: every step x_{k+1} ~ N(x_k + dt v_k, sigma_k^2), sigma_k from the noise head;
    logprobs = joint chain density per token [N, C, A];
  - train + flow_sde: one random step k* per env is an SDE step with the ODE's marginals, the others are Euler
    steps; logprobs = that step's transition density per token;
  - eval: Euler steps from an initial noise that is a function of the observation (`eval_noise`), so the
    action is deterministic; logprobs are 0.
  actions = x_K cut to [N, C, A] and un-normalised; values [N] from the value head.
  forward_inputs: the env's uint8 frames (resizing is redone in evaluate: storing 224x224 float pixels per
  camera would cost ~600 KB per sample), token ids and masks, normalised states, the chain x_0..x_K
  [N, K + 1, chunk_size, max_action_dim] and, for flow_sde, the stochastic step `sde_step` [N].
evaluate(forward_inputs): the same transitions recomputed on the stored chain -> logprobs, entropy [B, C, A],
  values [B].
"""

from __future__ import annotations

import hashlib

import torch

from envs.base import EnvSpec, Obs
from policies.base import EvaluateOutput, Mode, Policy, PolicyOutput, load_state_dict_strict, register_policy
from policies.lora import apply_lora, set_gradient_checkpointing
from policies.pi0.checkpoint import check_released_shapes, load_released_weights, read_checkpoint_info
from policies.pi0.configuration_pi0 import Pi0Config
from policies.pi0.flow_rl import (
    NoiseHead,
    ValueHead,
    chain_token_entropy,
    chain_token_logprob,
    denoise_times,
    gaussian_entropy,
    gaussian_logprob,
    noisy_step,
    sde_transition,
    stochastic_mask,
)
from policies.pi0.modeling_pi0 import PaliGemmaFlowModel, Pi0FlowModel, Pi0Inputs, PrefixCache
from policies.pi0.processing_pi0 import (
    Normalizer,
    camera_frames,
    encode_prompts,
    images_to_model,
    make_tokenizer,
    pi0_prompt,
)
from policies.supervised import masked_mean

NOISE_HEAD = "noise_head."


def observation_seeds(fi: dict[str, torch.Tensor], salt: int) -> list[int]:
    """One 63-bit seed per env from a hash of its processed observation (frames, tokens, state) and `salt`.

    Eval-mode noise drawn from these seeds makes the action a deterministic function of the observation while
    looking like an ordinary N(0, I) draw across observations (a shared or zero noise would be atypical)."""
    keys = sorted(k for k in ("main_images", "wrist_images", "lang_tokens", "states") if k in fi)
    rows = [t.detach().cpu().contiguous().view(t.shape[0], -1) for t in (fi[k] for k in keys)]
    seeds = []
    for i in range(rows[0].shape[0]):
        digest = hashlib.blake2b(salt.to_bytes(8, "little"), digest_size=8)
        for r in rows:
            digest.update(r[i].numpy().tobytes())
        seeds.append(int.from_bytes(digest.digest(), "little") >> 1)
    return seeds


@register_policy("pi0")
class Pi0Policy(Policy):
    config_class = Pi0Config
    config: Pi0Config
    model_class: type[PaliGemmaFlowModel] = Pi0FlowModel

    def __init__(self, config: Pi0Config, env_spec: EnvSpec, released_weights: str | None = None) -> None:
        super().__init__(config, env_spec)
        self.model = self.model_class(config)
        if released_weights is not None:
            load_released_weights(self.model, released_weights)
        if config.dtype == "bfloat16":
            self.model.to(torch.bfloat16)
        value_width = config.expert.width if config.value_head == "expert" else config.vlm.width
        self.value_head = ValueHead(value_width, config.value_hidden)
        if config.rl_method == "flow_noise":
            self.noise_head = NoiseHead(
                config.expert.width, config.max_action_dim, config.noise_std_min, config.noise_std_max
            )
        self.normalizer = Normalizer(config, env_spec)
        self.tokenizer = make_tokenizer(config)
        self.chunk, self.action_dim = config.executed_chunk, env_spec.action_dim
        mask = stochastic_mask(config.chunk_size, config.max_action_dim, self.chunk, self.action_dim)
        self.register_buffer("noise_mask", mask, persistent=False)
        times, self.dt = denoise_times(config.num_steps)
        self.register_buffer("times", times, persistent=False)
        self._setup_training()

    @classmethod
    def from_config(cls, config: Pi0Config, env_spec: EnvSpec) -> Pi0Policy:
        """Build; with `pretrained`, the architecture comes from the checkpoint's own config."""
        if not config.pretrained:
            return cls(config, env_spec)
        info = read_checkpoint_info(config.pretrained, expected=config.name)
        config = config.replace(**info.architecture)
        if info.kind == "suite":
            policy = cls(config, env_spec)
            policy.load_weights(config.pretrained)
            return policy
        check_released_shapes(config, config.pretrained, cls.model_class)
        return cls(config, env_spec, released_weights=config.pretrained)

    def load_weights(self, directory) -> None:
        """Strict, except for the noise head, which exists only with rl_method=flow_noise (a checkpoint trained
        with the other method loads, and a missing noise head keeps its initialisation)."""
        from pathlib import Path

        from safetensors.torch import load_file

        path = Path(directory) / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"no model.safetensors in {directory}: not a checkpoint directory of this suite"
            )
        state = {k: v for k, v in load_file(str(path)).items() if not k.startswith(NOISE_HEAD)}
        if hasattr(self, "noise_head"):
            own = {k: v for k, v in load_file(str(path)).items() if k.startswith(NOISE_HEAD)}
            state.update(own or {k: v for k, v in self.state_dict().items() if k.startswith(NOISE_HEAD)})
        load_state_dict_strict(self, state, source=str(path))

    def fsdp_units(self) -> list[torch.nn.Module]:
        """FSDP2 units: every decoder layer of both Gemma towers and every SigLIP encoder layer."""
        pg = self.model.paligemma_with_expert
        towers = (pg.paligemma.model.language_model, pg.gemma_expert.model)
        return [layer for tower in towers for layer in tower.layers] + list(
            self.model.vision_tower.vision_model.encoder.layers
        )

    def _setup_training(self) -> None:
        cfg = self.config
        if cfg.lora.enabled:
            always = sorted({*cfg.lora.always_train, "value_head", "noise_head"})
            apply_lora(self, cfg.lora.replace(always_train=always))
        paligemma = self.model.paligemma_with_expert.paligemma.model
        frozen = [paligemma] if cfg.train_expert_only else []
        if cfg.freeze_vision:
            frozen += [paligemma.vision_tower, paligemma.multi_modal_projector]
        for module in frozen:
            module.requires_grad_(False)
        set_gradient_checkpointing(self, cfg.gradient_checkpointing)

    # -- inputs ----------------------------------------------------------------------------------------------------
    def _prompts(self, tasks: list[str], states: torch.Tensor) -> list[str]:
        """The language prompts for tasks and normalised states [N, max_state_dim] (pi0's ignore the state)."""
        return [pi0_prompt(task) for task in tasks]

    def _forward_inputs(self, obs: Obs) -> dict[str, torch.Tensor]:
        device = self.times.device
        frames = camera_frames(obs, self.env_spec)
        states = self.normalizer.states(obs["states"].to(device))
        prompts = self._prompts(list(obs["task_descriptions"]), states)
        ids, masks = encode_prompts(self.tokenizer, prompts, self.config.tokenizer_max_length)
        out = {
            "main_images": frames[0].to(device),
            "lang_tokens": ids.to(device),
            "lang_masks": masks.to(device),
            "states": states,
        }
        if len(frames) > 1:
            out["wrist_images"] = frames[1].to(device)
        return out

    def _model_inputs(self, fi: dict[str, torch.Tensor]) -> Pi0Inputs:
        frames = [fi["main_images"]] + ([fi["wrist_images"]] if "wrist_images" in fi else [])
        images, masks = images_to_model(frames, self.config.vision.image_size, self.config.empty_cameras)
        return Pi0Inputs(images, masks, fi["lang_tokens"], fi["lang_masks"], fi["states"])

    def _initial_noise(self, fi: dict[str, torch.Tensor], mode: Mode) -> torch.Tensor:
        n, device = fi["states"].shape[0], self.times.device
        shape = (self.config.chunk_size, self.config.max_action_dim)
        if mode == "train":
            return torch.randn((n, *shape), device=device)
        if self.config.eval_noise == "zero":
            return torch.zeros((n, *shape), device=device)
        if self.config.eval_noise == "fixed":
            g = torch.Generator().manual_seed(self.config.eval_seed)
            return torch.randn(shape, generator=g).to(device).expand(n, *shape).clone()
        seeds = observation_seeds(fi, self.config.eval_seed)
        rows = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(rows).to(device)

    def _vlm_trains(self) -> bool:
        return any(p.requires_grad for p in self.model.paligemma_with_expert.paligemma.parameters())

    def _prefix(self, inputs: Pi0Inputs) -> PrefixCache:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._vlm_trains()):
            return self.model.prefix_pass(inputs)

    def _values(self, cache: PrefixCache, first_step_out: torch.Tensor) -> torch.Tensor:
        if self.config.value_head == "vlm":
            return self.value_head(cache.output, cache.pad_masks)
        return self.value_head(first_step_out)

    def _step(self, cache: PrefixCache, state: torch.Tensor, x: torch.Tensor, t: torch.Tensor):
        """Velocity [B, C, A] and expert output at x, times t [B]."""
        return self.model.denoise_step(cache, state, x, t)

    # -- predict ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, obs: Obs, mode: Mode = "train") -> PolicyOutput:
        fi = self._forward_inputs(obs)
        inputs = self._model_inputs(fi)
        cache = self.model.prefix_pass(inputs)
        x0 = self._initial_noise(fi, mode)
        if mode == "eval":
            chain, logprobs, first_out = self._ode_chain(cache, inputs.state, x0)
        elif self.config.rl_method == "flow_noise":
            chain, logprobs, first_out = self._noise_chain(cache, inputs.state, x0)
        else:
            fi["sde_step"] = torch.randint(self.config.num_steps, (x0.shape[0],), device=x0.device)
            chain, logprobs, first_out = self._sde_chain(cache, inputs.state, x0, fi["sde_step"])
        fi["chain"] = chain
        actions = self.normalizer.actions(chain[:, -1], self.chunk)
        return PolicyOutput(actions, logprobs, self._values(cache, first_out), fi)

    def _ode_chain(self, cache: PrefixCache, state: torch.Tensor, x: torch.Tensor):
        """Deterministic Euler steps: chain [N, K + 1, ...], zero log-probs, the first step's expert output."""
        chain, first_out = [x], None
        for k in range(self.config.num_steps):
            v, out = self._step(cache, state, x, self.times[k].expand(x.shape[0]))
            first_out = out if k == 0 else first_out
            x = x + self.dt * v
            chain.append(x)
        zeros = torch.zeros(x.shape[0], self.chunk, self.action_dim, device=x.device)
        return torch.stack(chain, 1), zeros, first_out

    def _noise_chain(self, cache: PrefixCache, state: torch.Tensor, x: torch.Tensor):
        """Flow-Noise: every step Gaussian with the noise head's std; the joint chain log-prob per token."""
        chain, means, stds, first_out = [x], [], [], None
        for k in range(self.config.num_steps):
            v, out = self._step(cache, state, x, self.times[k].expand(x.shape[0]))
            first_out = out if k == 0 else first_out
            means.append(x + self.dt * v)
            stds.append(self.noise_head(out[:, -self.config.chunk_size :]))
            x = noisy_step(means[-1], stds[-1], self.noise_mask, None)
            chain.append(x)
        chain = torch.stack(chain, 1)
        logprobs = chain_token_logprob(
            chain, torch.stack(means, 1), torch.stack(stds, 1), self.chunk, self.action_dim
        )
        return chain, logprobs, first_out

    def _sde_chain(self, cache: PrefixCache, state: torch.Tensor, x: torch.Tensor, sde_step: torch.Tensor):
        """Flow-SDE: Euler steps except step sde_step[i] of row i, an SDE step whose density is the log-prob."""
        n = x.shape[0]
        chain, first_out = [x], None
        logprobs = torch.zeros(n, self.chunk, self.action_dim, device=x.device)
        for k in range(self.config.num_steps):
            t = self.times[k].expand(n)
            v, out = self._step(cache, state, x, t)
            first_out = out if k == 0 else first_out
            mean, std = sde_transition(x, v, t, self.dt, self.config.sde_noise_level)
            noisy = noisy_step(mean, std, self.noise_mask, None)
            here = sde_step == k
            x = torch.where(here[:, None, None], noisy, x + self.dt * v)
            step_logprob = gaussian_logprob(x, mean, std)[:, : self.chunk, : self.action_dim]
            logprobs = torch.where(here[:, None, None], step_logprob, logprobs)
            chain.append(x)
        return torch.stack(chain, 1), logprobs, first_out

    # -- supervised fine-tuning ------------------------------------------------------------------------------------
    @property
    def action_horizon(self) -> int:
        """The expert's whole chunk (chunk_size), as openpi trains it; the env executes the first action_chunk."""
        return self.config.chunk_size

    def supervised_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow matching (openpi's `compute_loss`): noise ~ N(0, I), t ~ Beta(1.5, 1) * 0.999 + 0.001, loss
        (u_t - v_t)^2 with u_t = noise - actions at x_t = t * noise + (1 - t) * actions; see `flow_matching_loss`."""
        n, device = batch["actions"].shape[0], self.times.device
        noise = torch.randn(n, self.config.chunk_size, self.config.max_action_dim, device=device)
        return self.flow_matching_loss(batch, noise, self.model.sample_time(n, device=device)), {}

    def flow_matching_loss(self, batch: dict, noise: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """The flow-matching loss of a demo batch for given noise [B, chunk_size, max_action_dim] and times [B].

        Demo actions are normalised and zero-padded as `predict` un-normalises them. The mean runs over the valid
        chunk steps and over all max_action_dim dims, padded ones included (openpi's mean over the last axis): the
        expert sees the padded dims of x_t as inputs, and training them keeps those inputs in distribution."""
        actions = batch["actions"].to(self.times.device)
        if actions.shape[1] != self.config.chunk_size:
            raise ValueError(
                f"demo action chunks have {actions.shape[1]} steps but {self.config.name} predicts chunk_size="
                f"{self.config.chunk_size}"
            )
        inputs = self._model_inputs(self._forward_inputs(batch))
        target = self.normalizer.model_actions(actions)
        per_element = self.model.flow_matching_loss(inputs, target, noise, time)
        return masked_mean(per_element, batch["action_mask"].to(per_element.device))

    # -- evaluate --------------------------------------------------------------------------------------------------
    def evaluate(self, forward_inputs: dict[str, torch.Tensor]) -> EvaluateOutput:
        inputs = self._model_inputs(forward_inputs)
        cache = self._prefix(inputs)
        logprobs, entropy, first_out = self._chain_logprobs(cache, forward_inputs)
        # fresh tensors, not views: FSDP2 hooks the outputs of the root unit for its backward
        return EvaluateOutput(logprobs.clone(), entropy.clone(), self._values(cache, first_out).clone())

    def _chain_logprobs(self, cache: PrefixCache, fi: dict[str, torch.Tensor]):
        """Log-probs and entropy [B, C, A] of the stored chain under the current weights, and the expert's output
        at the first step (the `expert` value head's input)."""
        chain, state = fi["chain"].float(), fi["states"]
        b = chain.shape[0]
        if self.config.rl_method == "flow_noise":
            means, stds, first_out = [], [], None
            for k in range(self.config.num_steps):
                v, out = self._step(cache, state, chain[:, k], self.times[k].expand(b))
                first_out = out if k == 0 else first_out
                means.append(chain[:, k] + self.dt * v)
                stds.append(self.noise_head(out[:, -self.config.chunk_size :]))
            means, stds = torch.stack(means, 1), torch.stack(stds, 1)
            logprobs = chain_token_logprob(chain, means, stds, self.chunk, self.action_dim)
            return logprobs, chain_token_entropy(stds, self.chunk, self.action_dim), first_out
        k = fi["sde_step"].long()
        rows = torch.arange(b, device=chain.device)
        x_k, t_k = chain[rows, k], self.times[k]
        v, out = self._step(cache, state, x_k, t_k)
        mean, std = sde_transition(x_k, v, t_k, self.dt, self.config.sde_noise_level)
        c, a = self.chunk, self.action_dim
        logprobs = gaussian_logprob(chain[rows, k + 1], mean, std)[:, :c, :a]
        entropy = gaussian_entropy(std)[:, :c, :a]
        if self.config.value_head == "expert":
            _, out = self._step(cache, state, chain[:, 0], self.times[0].expand(b))
        return logprobs, entropy, out
