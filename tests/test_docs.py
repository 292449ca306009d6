"""The repository stands alone: the README is what a newcomer needs first (at most 250 lines), the reference
material lives in docs/, and every document the code, the tests or the docs cite is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")  # a Markdown link to a page
# the project's notebook lives outside the repository; what the code cites from it must be in docs/
NOTEBOOK = ("design.md", "field-notes.md", "style.md", "seed-chapter.txt")


def _sources() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "edgekit").rglob("*.py")),
            *sorted((ROOT / "tests").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the reference material belongs in docs/"


def test_every_linked_page_exists():
    broken = sorted(f"{src.relative_to(ROOT)} links {name}" for src in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
                    for name in LINK.findall(src.read_text())
                    if not name.startswith("http") and not (src.parent / name).is_file())
    assert not broken, broken


def test_what_the_code_cites_from_the_notebook_is_in_docs():
    here = Path(__file__).resolve()
    outside = sorted(f"{src.relative_to(ROOT)} cites {name}" for src in _sources() if src != here
                     for name in NOTEBOOK if name in src.read_text() and not (ROOT / "docs" / name).is_file())
    assert not outside, outside
    assert not [src for src in _sources() if src != here and "../shared" in src.read_text()]


def test_the_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md")
    assert pages and not [p for p in pages if p not in index], "docs/README.md does not link every page"
