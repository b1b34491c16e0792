"""Every relative link in README.md and docs/ leads somewhere: an existing file, and a heading when it names one.

The documentation is split over several pages that point at each other (figures live only in
docs/performance.md, the others link to them), so a renamed heading or a moved page would leave
dangling links that nothing else notices. Anchors follow GitHub's rule for heading ids.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) or [text](target "title"); the text may wrap onto the next line
LINK = re.compile(r"\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def doc_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans: links and headings are only read from prose."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's id for a heading: markup dropped, lower case, punctuation removed, spaces → hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The ids of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    ids = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.add(base if count == 0 else f"{base}-{count}")
    return ids


def broken_links(page: Path) -> list[str]:
    """One line per relative link of `page` that does not resolve."""
    problems = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            problems.append(f"{page.name}: {target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{page.name}: {target}: no heading #{anchor} in {destination.name}")
    return problems


@pytest.mark.parametrize("page", doc_pages(), ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path):
    assert broken_links(page) == []


def test_docs_pages_are_linked_from_the_readme():
    readme_targets = {target.partition("#")[0] for target in LINK.findall(prose((REPO / "README.md").read_text()))}
    unlinked = [page.name for page in doc_pages()[1:] if f"docs/{page.name}" not in readme_targets]
    assert unlinked == []


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Several GPUs: verl on Ray (step 5)\n## Notes\n## Notes\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#several-gpus-verl-on-ray-step-5) [dup](other.md#notes-1)\n"
                    "[gone](missing.md) [no heading](other.md#nowhere)\n"
                    "```\n[in code](missing.md)\n```\n`[in a span](missing.md)` [web](https://example.com/x)\n")
    assert broken_links(page) == ["page.md: missing.md: no such file",
                                  "page.md: other.md#nowhere: no heading #nowhere in other.md"]
