"""The page `dvc plots show` and `dvc plots diff` fill in, with Vega, Vega-Lite and vega-embed inlined.

    python -m tools.plots_template        # writes .venv/dvc-plots.html (`make setup` runs it)

DVC's default page loads those three libraries from a CDN, so without network the plots page
is blank. .dvc/config points `plots.html_template` at this file instead. The libraries come
from the pinned vl-convert-python wheel and the page is built at install time, next to the
packages it is built from, rather than committed: nobody edits or updates minified JavaScript
by hand, and a new pin rebuilds it.
"""
from __future__ import annotations

import logging
from pathlib import Path

from meddialog import cli
from meddialog.errors import UserError

log = logging.getLogger("plots_template")

OUT = Path(".venv/dvc-plots.html")
# DVC's built-in templates declare Vega-Lite v5 specs; 5.21 is the newest v5 in vl-convert 1.9.
VEGA_LITE = "v5.21"
# dvc-render replaces this placeholder with the plots. Its other placeholder, {scripts}, is left
# out on purpose: that is where it would insert the CDN <script> tags.
PLOTS_PLACEHOLDER = "{plot_divs}"


def page(bundle: str) -> str:
    """The HTML template around one JavaScript bundle that defines `vegaEmbed` on `window`."""
    if "</script" in bundle.lower():
        raise UserError("the vl-convert bundle contains '</script' and cannot be inlined; pin another version")
    # Inside a function, the bundle's top-level names stay out of the global scope where each plot's
    # inline script declares `var spec`; the bundle sets window.vegaEmbed itself.
    return ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>DVC Plot</title>\n"
            f"<script>(function () {{\n{bundle}\n}})();</script>\n"
            "<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n"
            f"{PLOTS_PLACEHOLDER}\n</body>\n</html>\n")


def main() -> None:
    try:
        import vl_convert
    except ImportError:
        raise UserError("vl-convert-python is not installed: pip install -r requirements.txt") from None
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(page(vl_convert.javascript_bundle(vl_version=VEGA_LITE)), encoding="utf-8")
    log.info("wrote %s (vl-convert %s, Vega-Lite %s)", OUT, vl_convert.__version__, VEGA_LITE)


if __name__ == "__main__":
    cli.run(main)
