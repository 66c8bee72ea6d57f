"""The README's links go somewhere: every ``#anchor`` names a heading (GitHub's slugs), and
every relative link names a file or folder of the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "README.md").read_text()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_in_page_links_name_headings() -> None:
    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", TEXT, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", TEXT)
    assert links and not [a for a in links if a not in anchors]


def test_relative_links_name_repository_files() -> None:
    targets = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", TEXT) if "://" not in t]
    assert targets and not [t for t in targets if not (ROOT / t).exists()]
