"""The causal LM policy (`policy.name: causal_lm`): a Hugging Face causal LM that answers prompts.

predict(obs):  prompts (`obs["task_descriptions"]`) -> chat template + left padding -> `generate` (sampling in
               train mode, greedy in eval mode) -> actions = response token ids [N, 1, L] (float32, -1 after the
               response's end), logprobs [N, 1, L] recorded while sampling, logprob_mask [N, 1, L] (the response
               tokens up to and including EOS), values [N] (value head only), forward_inputs = {input_ids
               [N, P + L], attention_mask [N, P + L]} (prompt left-padded to P, response right-padded to L).
evaluate(forward_inputs): one forward pass -> logprobs, entropy [B, 1, L] (0 outside the response) and values [B].

L is the env's action_dim (`env.max_response_tokens`); P is `policy.max_prompt_tokens`. The value head reads the
hidden state of the last prompt token, so the critic values a prompt before any response token (a per-response
baseline, like the value head of OpenVLA before its first action token).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from envs.base import EnvSpec, Obs
from policies.base import EvaluateOutput, Policy, PolicyOutput, register_policy
from policies.causal_lm.config import CausalLMConfig
from policies.causal_lm.modeling import build_model, model_dir, response_mask, token_logprobs
from policies.causal_lm.processing import PromptEncoder, pad_token_id, trim_left_padding
from policies.causal_lm.sampling import LogprobRecorder, clean_generation_config, eos_token_ids

VALUE_HEAD_FILE = "value_head.safetensors"
PAD_ACTION = -1.0  # envs.math.PAD_ACTION
MAX_EXACT_FLOAT32_ID = 2**24


@register_policy("causal_lm")
class CausalLMPolicy(Policy):
    config_class = CausalLMConfig

    def __init__(self, config: CausalLMConfig, env_spec: EnvSpec) -> None:
        super().__init__(config, env_spec)
        self.model, self.tokenizer = build_model(config)
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.pad_id = pad_token_id(self.tokenizer)
        self.model.generation_config = clean_generation_config(self.tokenizer, self.eos_ids, self.pad_id)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.prompts = PromptEncoder(
            self.tokenizer, config.max_prompt_tokens, config.apply_chat_template, config.system_prompt
        )
        self.max_new_tokens = env_spec.action_dim
        self._check_vocabulary(env_spec)
        hidden = self.model.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1) if config.value_head else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
            if config.pretrained and (model_dir(config.pretrained) / VALUE_HEAD_FILE).is_file():
                self._load_value_head(model_dir(config.pretrained))

    def _check_vocabulary(self, env_spec: EnvSpec) -> None:
        vocab = len(self.tokenizer)
        if vocab > MAX_EXACT_FLOAT32_ID:
            raise ValueError(
                f"a vocabulary of {vocab} tokens does not fit float32 actions exactly (max 2**24)"
            )
        env_vocab = int(env_spec.action_high[0]) + 1
        if env_vocab != vocab:
            raise ValueError(
                f"the env decodes with a tokenizer of {env_vocab} tokens but the policy's has {vocab}: point "
                "env.tokenizer at the policy's model folder (policy.pretrained)"
            )

    @classmethod
    def from_config(cls, config: CausalLMConfig, env_spec: EnvSpec) -> CausalLMPolicy:
        return cls(config, env_spec)  # the weights come with the model folder

    def fsdp_units(self) -> list[nn.Module]:
        """The modules FSDP2 shards one by one: the transformer blocks (the classes the Hugging Face model names
        in `_no_split_modules`)."""
        names = set(getattr(self.model, "_no_split_modules", None) or [])
        return [m for m in self.model.modules() if type(m).__name__ in names]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- rollout --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, obs: Obs, mode: str = "train") -> PolicyOutput:
        prompt_ids, prompt_mask = self.prompts.encode(obs["task_descriptions"])
        responses, logprobs, generated = self._generate(prompt_ids, prompt_mask, sample=mode == "train")
        mask = response_mask(responses, self.eos_ids, generated)
        responses = responses.masked_fill(~mask, self.pad_id)
        values = self._values(prompt_ids, prompt_mask) if self.value_head is not None else None
        return PolicyOutput(
            actions=responses.float().masked_fill(~mask, PAD_ACTION)[:, None],
            logprobs=logprobs.masked_fill(~mask, 0.0)[:, None],
            values=values,
            forward_inputs={
                "input_ids": torch.cat([prompt_ids, responses], dim=1),
                "attention_mask": torch.cat([prompt_mask, mask], dim=1),
            },
            logprob_mask=mask[:, None],
        )

    def _generate(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sample: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Responses int64 [N, L] (pad after generate stopped), their log-probs fp32 [N, L], and which
        positions were generated, bool [N, L]."""
        from transformers import GenerationConfig, LogitsProcessorList

        ids, mask = trim_left_padding(prompt_ids, mask=prompt_mask)
        c = self.config
        sampling = {"temperature": c.temperature, "top_k": c.top_k, "top_p": c.top_p} if sample else {}
        settings = GenerationConfig(
            do_sample=sample,
            **sampling,
            max_new_tokens=self.max_new_tokens,
            num_beams=1,
            repetition_penalty=1.0,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        recorder = LogprobRecorder(c.temperature)
        was_training = self.model.training
        self.model.eval()
        try:
            sequences = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device).long(),
                generation_config=settings,
                logits_processor=LogitsProcessorList([recorder]),
            )
        finally:
            self.model.train(was_training)
        new = sequences[:, ids.shape[1] :].cpu()
        logprobs = recorder.finish(new[:, -1]).cpu()
        n, length = new.shape
        responses = torch.full((n, self.max_new_tokens), self.pad_id, dtype=torch.long)
        padded_logprobs = torch.zeros((n, self.max_new_tokens))
        generated = torch.zeros((n, self.max_new_tokens), dtype=torch.bool)
        responses[:, :length], padded_logprobs[:, :length], generated[:, :length] = new, logprobs, True
        return responses, padded_logprobs, generated

    def _values(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = trim_left_padding(prompt_ids, mask=prompt_mask)
        out = self._forward(ids.to(self.device), mask.to(self.device), logits_to_keep=1, hidden=True)
        return self._value_of(out.hidden_states[-1][:, -1]).cpu()

    # -- training -------------------------------------------------------------------------------------------
    def evaluate(self, forward_inputs: dict[str, torch.Tensor]) -> EvaluateOutput:
        logprobs, entropy, values = self.sequence_logprobs(forward_inputs, self.config.temperature)
        return EvaluateOutput(logprobs[:, None], entropy[:, None], values)

    def sequence_logprobs(
        self, forward_inputs: dict[str, torch.Tensor], temperature: float, with_entropy: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Log-probs and entropy [B, L] of the response tokens (0 outside the response) and values [B] (None
        without a value head), from `forward_inputs` as `predict` made them."""
        device = self.device
        ids, mask = trim_left_padding(
            forward_inputs["input_ids"].to(device), mask=forward_inputs["attention_mask"].to(device).bool()
        )
        length = self.max_new_tokens
        out = self._forward(ids, mask, logits_to_keep=length + 1, hidden=self.value_head is not None)
        logprobs, entropy = token_logprobs(out.logits[:, :-1], ids[:, -length:], temperature, with_entropy)
        valid = mask[:, -length:]
        logprobs = logprobs.masked_fill(~valid, 0.0)
        entropy = entropy.masked_fill(~valid, 0.0) if entropy is not None else None
        values = None
        if self.value_head is not None:
            values = self._value_of(out.hidden_states[-1][:, -(length + 1)])
        return logprobs, entropy, values

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, logits_to_keep: int, hidden: bool):
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.model(
            input_ids=ids,
            attention_mask=mask.long(),
            position_ids=positions,
            logits_to_keep=logits_to_keep,
            output_hidden_states=hidden,
            use_cache=False,
        )

    def _value_of(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    # -- Hugging Face layout --------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """The model and tokenizer in Hugging Face layout (+ value_head.safetensors), written to a temporary
        folder and moved into place file by file, so a crash leaves every old file whole."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".saving-") as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if self.value_head is not None:
                state = {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
                save_file(state, os.path.join(tmp, VALUE_HEAD_FILE))
            for name in os.listdir(tmp):
                os.replace(os.path.join(tmp, name), directory / name)

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Load weights from a Hugging Face folder (`save_pretrained`: the model, and the value head when this
        policy has one) or from the suite's layout (`policies.base.write_pretrained`: the runtime's
        checkpoints, whose config.json holds the policy config)."""
        import json

        from transformers import AutoModelForCausalLM

        from policies.base import CONFIG_NAME, load_state_dict_strict

        config_file = Path(directory) / CONFIG_NAME
        if config_file.is_file() and "policy" in json.loads(config_file.read_text()):
            return super().load_weights(directory)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=next(self.model.parameters()).dtype
        )
        load_state_dict_strict(self.model, loaded.state_dict(), source=str(directory))
        if self.value_head is not None:
            self._load_value_head(Path(directory))

    def _load_value_head(self, directory: Path) -> None:
        from safetensors.torch import load_file

        from policies.base import load_state_dict_strict

        path = directory / VALUE_HEAD_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no {VALUE_HEAD_FILE} in {directory}; this policy has policy.value_head=true"
            )
        load_state_dict_strict(self.value_head, load_file(str(path)), source=str(path))
