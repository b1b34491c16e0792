"""Is this environment ready for the GPU recipe? Prints what it found; fails with one line if not.

    python -m tools.gpu_check          # after the CUDA install of docs/scaling.md, "GPU install"

Checks, in order, stopping at the first that fails: torch is a CUDA build and sees a GPU; bfloat16 is
supported on it; bitsandbytes loads its CUDA library (not the CPU one) and runs an NF4 matmul on the
GPU; flash-attn, if installed, imports (only verl's `flash_attention_2` setting uses it).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util

from meddialog import cli
from meddialog.errors import UserError

INSTALL_HINT = "see docs/scaling.md, GPU install"


def cuda_summary() -> dict[str, str]:
    """torch's CUDA build and the visible GPUs; a UserError saying why there is none."""
    import torch

    if torch.version.cuda is None:
        raise UserError(f"torch {torch.__version__} is a CPU-only build: install its CUDA build ({INSTALL_HINT})")
    if not torch.cuda.is_available():
        raise UserError(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: check the driver "
                        "(`nvidia-smi`) and CUDA_VISIBLE_DEVICES")
    gpus = [f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))}, "
            f"{torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)" for i in range(torch.cuda.device_count())]
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": "; ".join(gpus)}


def bf16_summary() -> dict[str, str]:
    import torch

    if not torch.cuda.is_bf16_supported():
        raise UserError(f"{torch.cuda.get_device_name()} does not support bfloat16 (the recipe's compute dtype): "
                        "use an Ampere or newer GPU")
    return {"bf16": "supported"}


def bitsandbytes_summary() -> dict[str, str]:
    """bitsandbytes' loaded library must be its CUDA one, and NF4 must run on the GPU."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"bitsandbytes is not installed (`pip install bitsandbytes==0.50.2`, {INSTALL_HINT})")
    import torch
    from bitsandbytes import cextension
    from bitsandbytes.nn import Linear4bit

    library = getattr(getattr(cextension.lib, "_lib", None), "_name", None)
    if cextension.BNB_BACKEND != "CUDA" or not library or "cuda" not in str(library):
        raise UserError(f"bitsandbytes loaded {library or 'no native library'} for backend {cextension.BNB_BACKEND}, "
                        f"not its CUDA library: reinstall bitsandbytes==0.50.2 after the CUDA torch ({INSTALL_HINT})")
    layer = Linear4bit(64, 64, compute_dtype=torch.bfloat16, quant_type="nf4").cuda()
    out = layer(torch.randn(2, 64, device="cuda", dtype=torch.bfloat16))
    if not torch.isfinite(out).all():
        raise UserError("bitsandbytes' NF4 matmul on the GPU returned non-finite values")
    return {"bitsandbytes": importlib.metadata.version("bitsandbytes"), "bitsandbytes_library": str(library),
            "nf4_matmul": "ok"}


def flash_attn_summary() -> dict[str, str]:
    if importlib.util.find_spec("flash_attn") is None:
        return {"flash_attn": "not installed (needed only for verl.attn_implementation=flash_attention_2)"}
    try:
        import flash_attn
    except Exception as err:  # noqa: BLE001 - a broken build fails in many ways; the message is what matters
        raise UserError(f"flash-attn is installed but does not import ({type(err).__name__}: {err}): "
                        "rebuild it against this torch or uninstall it") from None
    return {"flash_attn": flash_attn.__version__}


def check() -> dict[str, str]:
    found: dict[str, str] = {}
    for step in (cuda_summary, bf16_summary, bitsandbytes_summary, flash_attn_summary):
        found.update(step())
    return found


def main() -> None:
    for key, value in check().items():
        print(f"{key:>22}  {value}")
    print("gpu-check: ready for the GPU recipe")


if __name__ == "__main__":
    cli.run(main)
