"""`dvc plots show` / `dvc plots diff` on the committed histories and scores: the three charts,
with axis titles, in a page that loads no script from the network."""
import json
import re
import shutil
import subprocess

import pytest

from meddialog.evaluation.report import comparison_plot_csv
from tests.conftest import REPO, run_stage, sh
from tools.plots_template import page

# Enough of the checkout for DVC to collect the plots: the pipeline, its config and templates, metrics.
PLOT_FILES = (".gitignore", ".dvc", "dvc.yaml", "dvc.lock", "params.yaml", "metrics")
CHARTS = ("sft_loss", "grpo_rewards", "model_comparison", "evaluation")


@pytest.fixture
def plots_repo(tmp_path):
    """The committed plot files in a new git repository, with the page template built as `make setup` does."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", *PLOT_FILES], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "scratch"]):
        assert sh(*cmd, cwd=tmp_path).returncode == 0
    built = run_stage("tools.plots_template", tmp_path)
    assert built.returncode == 0, built.stderr
    return tmp_path


def specs(html: str) -> dict[str, dict]:
    """Each chart's Vega-Lite spec by div id, as dvc-render writes them (`var spec = {...};`)."""
    found = re.findall(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (\{.*?\});\n', html)
    return {div: json.loads(spec) for div, spec in found}


def axis_titles(spec: dict) -> tuple:
    encoding = spec.get("spec", spec)["encoding"]  # a faceted chart keeps its encoding one level down
    return encoding["x"].get("title"), encoding["y"].get("title")


def assert_offline(html: str) -> None:
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)
    assert not re.search(r"""\bsrc\s*=\s*["']?(?:https?:)?//""", html, re.I)
    assert "cdn.jsdelivr" not in html
    assert "window.vegaEmbed" in html  # the library is inlined instead


def test_show_draws_the_three_charts_with_axis_titles_and_no_remote_script(plots_repo):
    result = sh("dvc", "plots", "show", "-o", "out", cwd=plots_repo)
    assert result.returncode == 0, result.stdout + result.stderr
    html = (plots_repo / "out" / "index.html").read_text()
    assert_offline(html)
    charts = specs(html)
    assert set(charts) == set(CHARTS)  # and no default chart of a stray plots entry
    for name in CHARTS:
        x_title, y_title = axis_titles(charts[name])
        assert x_title and y_title and charts[name]["title"]["text"], name
    assert {row["field"] for row in charts["sft_loss"]["data"]["values"]} == {"loss", "eval_loss"}
    components = {row["component"] for row in charts["grpo_rewards"]["data"]["values"]}
    assert components == {"total", "similarity", "length", "coherence", "quality", "safety"}  # the weighted ones
    assert charts["grpo_rewards"]["encoding"]["color"]["field"] == "component"
    bars = {(row["model"], row["metric"]) for row in charts["model_comparison"]["data"]["values"]}
    assert bars == {(m, k) for m in ("baseline", "sft", "grpo") for k in ("ROUGE-L", "BLEU-4", "similarity")}


def test_diff_puts_both_revisions_in_each_chart(plots_repo):
    csv = plots_repo / "metrics" / "comparison_plot.csv"
    csv.write_text(re.sub(r"^sft,ROUGE-L,.*$", "sft,ROUGE-L,0.3", csv.read_text(), flags=re.M))
    result = sh("dvc", "plots", "diff", "HEAD", "-o", "out", cwd=plots_repo)
    assert result.returncode == 0, result.stdout + result.stderr
    html = (plots_repo / "out" / "index.html").read_text()
    assert_offline(html)
    charts = specs(html)
    for name in CHARTS:
        assert {row["rev"] for row in charts[name]["data"]["values"]} == {"HEAD", "workspace"}, name


def test_template_has_the_plots_placeholder_and_not_the_cdn_one():
    html = page("window.vegaEmbed = function () {};")
    assert html.count("{plot_divs}") == 1
    assert "{scripts}" not in html  # where dvc-render would insert its CDN <script src> tags


def test_committed_bar_chart_data_matches_the_committed_scores():
    metrics = REPO / "metrics"
    results = {name: json.loads((metrics / f"{name}.json").read_text()) for name in ("baseline", "sft", "grpo")}
    assert (metrics / "comparison_plot.csv").read_text() == comparison_plot_csv(results)
    assert comparison_plot_csv(results).splitlines()[:2] == ["model,metric,value", "baseline,ROUGE-L,0.127469"]


def test_reward_chart_data_is_the_history_in_long_form(tmp_path):
    """Every non-blank reward cell of the history is one row of the chart's data, under its component's name
    (the total as `total`), and a component the registry does not know is no column to look for."""
    import csv

    from meddialog.training.rewards import COMPONENTS
    from stages.grpo import write_reward_series

    out = tmp_path / "rewards.csv"
    write_reward_series(REPO / "metrics" / "grpo_history.csv", out)
    with (REPO / "metrics" / "grpo_history.csv").open() as f:
        history = list(csv.DictReader(f))
    with out.open() as f:
        series = list(csv.DictReader(f))
    expected = [(row["step"], name, row[column]) for row in history
                for name, column in [("total", "reward"), *((n, f"reward_{n}") for n in COMPONENTS)] if row[column]]
    assert [(r["step"], r["component"], r["reward"]) for r in series] == expected and expected
    assert (REPO / "metrics" / "grpo_rewards.csv").read_text() == out.read_text()  # the committed chart data
