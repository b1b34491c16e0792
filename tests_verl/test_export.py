"""The export: verl's model merger on a LoRA checkpoint, then our fix of the adapter it writes, and
the result loading through meddialog.modeling.loading like any adapter of this pipeline.

Training needs a GPU (verl 0.9.1 has no CPU platform), so the checkpoint is written here in the
layout verl's FSDPCheckpointManager saves for one rank: model_world_size_1_rank_0.pt (the peft
model's state dict), fsdp_config.json and huggingface/ (config and tokenizer), without the
lora_train_meta.json that checkpoints of verl <= 0.7 lack (the merger then writes lora_alpha 0).
"""
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

from meddialog.modeling.loading import load_model, model_chain
from meddialog.verl.export import export

LORA_TARGETS = ["q_proj", "v_proj"]


def test_exported_adapter_gets_our_alpha_and_loads_as_the_trained_policy(params, tiny_model_dir, tmp_path,
                                                                           monkeypatch, capfd):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = dataclasses.replace(params.lora, target_modules=LORA_TARGETS)
    torch.manual_seed(0)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=LORA_TARGETS))
    for name, weight in policy.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: a trained adapter's is not
            weight.data.normal_(std=0.5)
    write_fsdp_checkpoint(policy, tiny_model_dir, tmp_path / "checkpoints/global_step_3/actor")
    (tmp_path / "checkpoints/latest_checkpointed_iteration.txt").write_text("3")

    monkeypatch.chdir(tmp_path)  # the stage's working directory: `target` is relative to it
    target = Path("models/verl/grpo")
    target.mkdir(parents=True)
    (target / "model-00002-of-00002.safetensors").write_text("a previous export's shard")
    verl = dataclasses.replace(params.verl, python=sys.executable)  # this environment is verl's
    started_from = {"base_model": "models/base", "adapters": ["models/sft"]}
    adapter = export(dataclasses.replace(params, verl=verl, lora=lora), tmp_path, Path("checkpoints"), actor=True,
                     target=target, started_from=started_from)

    assert "falling back to lora_alpha=0" in capfd.readouterr().err  # verl's merger, before our fix
    assert json.loads((adapter / "adapter_config.json").read_text())["lora_alpha"] == lora.alpha
    assert not (target / "model-00002-of-00002.safetensors").exists()
    lineage = json.loads((adapter / "lineage.json").read_text())
    assert lineage["base_model"] == str(target) and lineage["adapters"] == []
    assert lineage["started_from"] == started_from

    base, adapters = model_chain(adapter)
    assert (base, adapters) == (target, (adapter,))
    loaded, _ = load_model(base, params.model, adapters)
    # The merger stores weights in bfloat16: compare with the policy rounded the same way.
    for weight in policy.parameters():
        weight.data = weight.data.bfloat16().float()
    tokens = torch.tensor([[1, 42, 7, 99, 5]])
    with torch.no_grad():
        assert torch.allclose(loaded(tokens).logits, policy(tokens).logits, atol=1e-4)


def write_fsdp_checkpoint(policy, model_dir: Path, out: Path) -> None:
    out.mkdir(parents=True)
    torch.save(policy.state_dict(), out / "model_world_size_1_rank_0.pt")
    (out / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    shutil.copytree(model_dir, out / "huggingface", ignore=shutil.ignore_patterns("*.safetensors"))
