"""The trust_remote_code gate: a model directory that ships its own model code (config.json's auto_map, a
model_type transformers does not know) runs that code only when model.trust_remote_code is true. The code
here touches a marker file when it is imported, so the test sees whether it ran."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_stage, set_params

CONFIGURATION = '''from pathlib import Path

Path({marker!r}).touch()  # an absolute path: transformers imports a copy of this file from its modules cache

from transformers import LlamaConfig


class CustomConfig(LlamaConfig):
    model_type = "meddialog-custom"
'''
MODELING = '''from transformers import LlamaForCausalLM

from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
'''


@pytest.fixture
def custom_code_model(tiny_model_dir, tmp_path) -> Path:
    model = shutil.copytree(tiny_model_dir, tmp_path / "custom")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="meddialog-custom", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "configuration_custom.py").write_text(CONFIGURATION.format(marker=str(model / "code-ran")))
    (model / "modeling_custom.py").write_text(MODELING)
    return model


def test_custom_code_is_refused_in_one_line_unless_a_param_opts_in(project, custom_code_model):
    set_params(project, **{"model.name": str(custom_code_model)})
    result = run_stage("base_model", project)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "ships its own model code" in line and "model.trust_remote_code: true" in line, line
    assert not (custom_code_model / "code-ran").exists()
    assert not (project / "models" / "base").exists()


@pytest.mark.slow
def test_with_the_param_the_code_runs_and_the_base_is_built(project, custom_code_model, tmp_path):
    set_params(project, **{"model.name": str(custom_code_model), "model.trust_remote_code": True})
    result = run_stage("base_model", project, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (custom_code_model / "code-ran").exists()
    assert (project / "models" / "base" / "model.safetensors").is_file()
    assert json.loads((project / "models" / "base" / "source.json").read_text())["trust_remote_code"] is True
