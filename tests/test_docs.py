"""The repository's documents link only to what the repository has: a relative link in README.md
or docs/*.md names a file inside the checkout (never ``../shared/...``), and an anchor names a
heading of the page it points to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mlrollout

REPO = Path(mlrollout.__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

INLINE = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...


def links(text: str) -> list[str]:
    prose = FENCE.sub("", text)  # code blocks are examples, not links
    return INLINE.findall(prose) + REFERENCE.findall(prose)


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, - for spaces."""
    found = set()
    for line in FENCE.sub("", markdown).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_the_documents_exist():
    assert (REPO / "README.md").is_file()
    assert REPO / "docs" / "plan-format.md" in DOCUMENTS


def test_links_are_found_in_markdown_of_either_kind():
    text = (
        'see [a](docs/a.md) and [b](<b.md> "title"), ![image](x.png)\n'
        "[r]: ../r.md\n```\n[c](c.md)\n```\n"
    )
    assert links(text) == ["docs/a.md", "b.md", "../r.md"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_inside_the_repository(document: Path):
    text = document.read_text(encoding="utf-8")
    bad = []
    for link in links(text):
        if EXTERNAL.match(link):
            continue
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        if not path.is_relative_to(REPO):
            bad.append(f"{link}: outside the repository")
        elif not path.exists():
            bad.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text("utf-8")):
            bad.append(f"{link}: no heading #{anchor} in {path.relative_to(REPO)}")
    assert not bad, f"{document.relative_to(REPO)}: " + "; ".join(bad)
