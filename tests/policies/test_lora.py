"""LoRA and gradient-checkpointing helpers (policies/lora.py) on a tiny Llama with a value head."""

import pytest
import torch
from openvla_common import one_thread  # noqa: F401
from torch import nn

from algorithms.schema import ConfigError
from policies.lora import (
    LoraConfig,
    adapter_state_dict,
    apply_lora,
    merged_state_dict,
    set_gradient_checkpointing,
)

transformers = pytest.importorskip("transformers")


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
        self.language_model = transformers.LlamaForCausalLM(cfg)
        self.value_head = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.language_model(ids, output_hidden_states=True)
        return out.logits.logsumexp(-1).mean() + self.value_head(out.hidden_states[-1]).mean()


def _train_step(model: nn.Module) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(1))
    model(ids).backward()
    opt.step()


def test_lora_freezes_base_weights_and_trains_adapters_and_value_head():
    model = TinyLM()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraConfig(rank=4, alpha=8))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("value_head.") for n in trainable)
    assert any(n.startswith("value_head.") for n in trainable)

    for _ in range(2):  # lora_B starts at zero: a second step moves lora_A too
        _train_step(model)
    merged_names = merged_state_dict(model)
    frozen_now = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    for name, p in frozen_now.items():
        plain = name.replace(".base_layer", "")
        assert torch.equal(p, base[plain]), f"{name} changed although frozen"
    assert set(merged_names) == set(base)
    changed = [n for n in base if not torch.equal(merged_names[n], base[n])]
    assert any("q_proj" in n for n in changed) and any(n.startswith("value_head") for n in changed)
    assert not any("embed_tokens" in n or "lm_head" in n for n in changed)


def test_merged_state_dict_reproduces_the_lora_model():
    model = TinyLM()
    apply_lora(model, LoraConfig(rank=4, alpha=8))
    for _ in range(2):
        _train_step(model)
    plain = TinyLM()
    plain.load_state_dict(merged_state_dict(model))
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(model(ids), plain(ids), atol=1e-5)


def test_all_linear_skips_heads_and_adapter_state_dict_holds_only_trainables():
    model = apply_lora(TinyLM(), LoraConfig(rank=2, target_modules=["all-linear"]))
    names = [n for n, _ in model.named_parameters()]
    assert any("mlp.gate_proj.lora_A" in n for n in names)
    assert not any("lm_head.lora_" in n or "value_head.0.lora_" in n for n in names)
    sent = adapter_state_dict(model)
    assert sent and all(".lora_" in n or n.startswith("value_head.") for n in sent)


def test_unknown_target_modules_name_the_available_layers():
    with pytest.raises(ValueError, match="q_proj"):
        apply_lora(TinyLM(), LoraConfig(rank=2, target_modules=["query"]))
    with pytest.raises(ValueError, match="rank > 0"):
        apply_lora(TinyLM(), LoraConfig(rank=0))
    with pytest.raises(ConfigError, match="all-linear"):
        LoraConfig(rank=2, target_modules=["all-linear", "q_proj"])


def test_gradient_checkpointing_keeps_gradients_identical():
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(2))
    grads = []
    for enabled in (False, True):
        model = apply_lora(TinyLM(), LoraConfig(rank=4))
        set_gradient_checkpointing(model, enabled)
        model.train()
        assert model.language_model.model.gradient_checkpointing is enabled
        model(ids).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_fold_lora_of_a_saved_state_equals_the_merged_weights():
    from policies.lora import fold_lora

    config = LoraConfig(rank=4, alpha=8)
    model = apply_lora(TinyLM(), config)
    for _ in range(2):
        _train_step(model)
    folded = fold_lora(model.state_dict(), config)
    merged = merged_state_dict(model)
    assert folded.keys() == merged.keys()
    assert all(torch.allclose(folded[k], merged[k], atol=1e-6) for k in merged)
    plain = TinyLM().state_dict()
    assert fold_lora(plain, config) is plain
