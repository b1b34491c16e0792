"""The benchmarks' bookkeeping (tools/bench.py): FLOP counting, summaries, merging, the command line.
Timings themselves are never asserted: they depend on the machine and its load."""
import json

import pytest

from meddialog.params import LoraParams
from tests.conftest import run_stage
from tools.bench import (
    Geometry,
    main,
    merge_results,
    model_geometry,
    parser,
    safetensors_shapes,
    sft_flops_per_token,
    summary,
)

# A two-layer Llama-like model: hidden 8, MLP 16, 2 query heads and 1 key/value head of dim 4, vocab 32.
TINY_SHAPES = {"model.embed_tokens.weight": [32, 8], "model.norm.weight": [8]}
for layer in range(2):
    prefix = f"model.layers.{layer}"
    TINY_SHAPES.update({f"{prefix}.self_attn.q_proj.weight": [8, 8], f"{prefix}.self_attn.k_proj.weight": [4, 8],
                        f"{prefix}.self_attn.v_proj.weight": [4, 8], f"{prefix}.self_attn.o_proj.weight": [8, 8],
                        f"{prefix}.mlp.gate_proj.weight": [16, 8], f"{prefix}.mlp.up_proj.weight": [16, 8],
                        f"{prefix}.mlp.down_proj.weight": [8, 16], f"{prefix}.input_layernorm.weight": [8]})
TINY_CONFIG = {"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 2, "tie_word_embeddings": True}
PER_LAYER = 8 * 8 + 4 * 8 + 4 * 8 + 8 * 8 + 3 * 16 * 8  # 576 weights in matmuls per layer


def test_tied_head_counts_once_and_the_embedding_lookup_not_at_all():
    geometry = model_geometry(TINY_SHAPES, TINY_CONFIG, LoraParams(r=2, target_modules=["q_proj"]))
    assert geometry.matmul_params == 2 * PER_LAYER + 32 * 8
    assert geometry.attention_width == 2 * 2 * 4  # layers × heads × head dim (hidden / heads)


def test_untied_head_is_counted_as_stored():
    shapes = {**TINY_SHAPES, "lm_head.weight": [32, 8]}
    geometry = model_geometry(shapes, {**TINY_CONFIG, "tie_word_embeddings": False}, LoraParams(target_modules=["no_such_module"]))
    assert geometry.matmul_params == 2 * PER_LAYER + 32 * 8
    assert geometry.lora_params == 0


def test_lora_params_are_rank_times_in_plus_out_on_target_modules_only():
    geometry = model_geometry(TINY_SHAPES, TINY_CONFIG, LoraParams(r=2, target_modules=["q_proj", "down_proj"]))
    assert geometry.lora_params == 2 * (2 * (8 + 8) + 2 * (16 + 8))


def test_flops_per_token_formula():
    no_attention = Geometry(matmul_params=1000, lora_params=0, attention_width=0)
    assert sft_flops_per_token(no_attention, 100, gradient_checkpointing=False) == 4 * 1000  # forward 2N + backward 2N
    assert sft_flops_per_token(no_attention, 100, gradient_checkpointing=True) == 6 * 1000   # + the forward again
    lora_only = Geometry(matmul_params=0, lora_params=10, attention_width=0)
    assert sft_flops_per_token(lora_only, 100, gradient_checkpointing=False) == 6 * 10     # adapters train fully
    attention_only = Geometry(matmul_params=0, lora_params=0, attention_width=3)
    # causal: a sequence of 9 tokens sees (9 + 1) / 2 = 5 keys per query; 2 matmuls × 2 FLOPs, ×3 with the backward
    assert sft_flops_per_token(attention_only, 9, gradient_checkpointing=False) == 3 * 2 * 2 * 3 * 5


def test_safetensors_header_is_read_without_loading_weights(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({"a.weight": torch.zeros(3, 2), "b.bias": torch.zeros(5)}, str(tmp_path / "model.safetensors"))
    assert safetensors_shapes(tmp_path) == {"a.weight": [3, 2], "b.bias": [5]}


@pytest.mark.slow
def test_embedded_model_counts_match_a_hand_count(embedded_base_dir):
    """On the embedded SmolLM2-135M as the base_model stage writes it (a session fixture, so CI runs it too)."""
    config = json.loads((embedded_base_dir / "config.json").read_text())
    geometry = model_geometry(safetensors_shapes(embedded_base_dir), config, LoraParams(
        r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    # per layer: q, o 576², k, v 576×192, gate, up, down 576×1536; 30 layers; tied head 49152×576
    assert geometry.matmul_params == 30 * (2 * 576 ** 2 + 2 * 576 * 192 + 3 * 576 * 1536) + 49152 * 576
    assert geometry.lora_params == 30 * 16 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    assert geometry.attention_width == 30 * 9 * 64


def test_summary_is_median_min_max():
    assert summary("x.s", [3.0, 1.0, 2.0]) == {"x.s": 2.0, "x.s_min": 1.0, "x.s_max": 3.0}


def test_results_merge_into_the_existing_file(tmp_path):
    out = tmp_path / "metrics/bench.json"
    merge_results(out, {"a": 1.0, "b": 2.0})
    merge_results(out, {"b": 3.1234567, "c": 4})
    assert json.loads(out.read_text()) == {"a": 1.0, "b": 3.123457, "c": 4.0}


def test_all_takes_every_parts_options_and_each_part_only_its_own():
    args = parser().parse_args(["all", "--repeats", "2", "--prompts", "4", "--sft-steps", "3", "--grpo-steps", "2",
                                "--full-repro-runs", "1", "--noop-runs", "2", "--skip-full-repro"])
    assert (args.repeats, args.prompts, args.sft_steps, args.grpo_steps, args.skip_full_repro) == (2, 4, 3, 2, True)
    with pytest.raises(SystemExit):
        parser().parse_args(["sft", "--noop-runs", "2"])
    with pytest.raises(SystemExit):
        parser().parse_args(["matmul", "--repeats", "0"])


@pytest.mark.slow
def test_matmul_part_writes_its_keys(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["matmul", "--repeats", "1", "--out", str(out)])
    results = json.loads(out.read_text())
    assert set(results) == {"matmul.gflops", "matmul.gflops_min", "matmul.gflops_max", "matmul.size", "matmul.threads"}
    assert results["matmul.gflops"] > 0 and "matmul.gflops" in capsys.readouterr().out


def test_missing_model_is_one_line_naming_the_stage_to_run(project):
    result = run_stage("tools.bench", project, "grpo", "--repeats", "1")
    assert result.returncode == 1 and result.stderr == "error: models/base not found: run `dvc repro base_model` first\n"


def test_generation_part_runs_the_params_recipe_and_checks_texts(tiny_project):
    """The batch size and answer length default to params.yaml's generation section (4 and 8 tokens
    in tiny_project), and the part completes only when batched and one-at-a-time greedy texts agree."""
    result = run_stage("tools.bench", tiny_project, "generation", "--repeats", "2", "--prompts", "6")
    assert result.returncode == 0, result.stderr
    results = json.loads((tiny_project / "metrics/bench.json").read_text())
    assert (results["generation.prompts"], results["generation.batch_size"], results["generation.max_new_tokens"]) \
        == (6, 4, 8)
    assert "6 prompts, batch size 4, 8 new tokens, 2 repeats (identical greedy outputs)" in result.stdout
    for key in ("generation.batched_tokens_per_s", "generation.loop_tokens_per_s", "generation.speedup"):
        assert 0 < results[f"{key}_min"] <= results[key] <= results[f"{key}_max"]
    # each ratio is of the two runs of one repeat, so with 2 repeats the median is their mean
    ratios = [results["generation.speedup_min"], results["generation.speedup_max"]]
    assert results["generation.speedup"] == pytest.approx(sum(ratios) / 2, rel=1e-5)
