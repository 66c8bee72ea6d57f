"""The README's links go somewhere: every ``#anchor`` names a heading (GitHub's slugs), in the
README or in the document it links to, and every relative link names a file or folder of the
repository."""

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


def test_links_into_other_documents_name_their_headings() -> None:
    links = re.findall(r"\]\(([^)#:]+\.md)#([^)]+)\)", TEXT)
    assert links
    for path, anchor in links:
        headings = re.findall(r"^#+ (.*)$", (ROOT / path).read_text(), re.M)
        assert anchor in {slug(h) for h in headings}, f"{path}#{anchor}"
