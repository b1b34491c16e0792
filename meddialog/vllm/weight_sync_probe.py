"""Can the policy's weights be pushed into a running vLLM engine here, the way TRL's GRPO does it?

    .venv-vllm/bin/python meddialog/vllm/weight_sync_probe.py models/base

GRPO with `use_vllm` (colocate) starts vLLM inside the trainer's process (`LLM(...,
distributed_executor_backend="external_launcher")`) and, before each rollout, loads the merged
policy into it with `model_runner.model.load_weights([(name, tensor), ...])`
(trl/generation/vllm_generation.py, `sync_weights`). This script does exactly that with one
projection's own weights and prints one JSON line: {"synced": true} or the error it met. It is
run with vLLM's interpreter and imports nothing of this repository, which that environment lacks.

Why it exists: on vLLM's CPU build the sync fails (the CPU backend repacks every linear layer's
weight for oneDNN after loading and replaces the original with an empty tensor, so the parameter
TRL loads into has no `weight_loader`), which is why the grpo stage refuses `grpo.use_vllm` on the
CPU; tests/test_vllm.py runs this to show it, and will fail, telling us to lift the refusal, the
day a vLLM release can take the sync.
"""
import json
import os
import sys


def main() -> None:
    model_dir = sys.argv[1]
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": os.environ.get("MASTER_PORT", "29517")}.items():
        os.environ.setdefault(name, value)  # what TRL sets before starting vLLM in colocate mode
    from safetensors import safe_open
    from vllm import LLM

    llm = LLM(model=model_dir, distributed_executor_backend="external_launcher", enforce_eager=True, dtype="float32",
              max_model_len=256, max_num_seqs=4, seed=0)
    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as weights:
        name = next(n for n in weights.keys() if n.endswith("self_attn.o_proj.weight"))
        tensor = weights.get_tensor(name)
    runner = llm.llm_engine.model_executor.driver_worker.model_runner
    try:
        runner.model.load_weights([(name, tensor)])
        print(json.dumps({"synced": True, "tensor": name}))
    except Exception as err:  # the point is to report what happens, whatever it is
        print(json.dumps({"synced": False, "tensor": name, "error": f"{type(err).__name__}: {err}"}))


if __name__ == "__main__":
    main()
