"""The documentation site builds with mkdocs in strict mode: every page is in the nav, and
no link or anchor between pages is broken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _nav_pages(nav: list) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # mkdocs logs to stderr; in strict mode any warning (a broken link or anchor, a page
    # missing from the nav) aborts the build.
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["strict"] is True
    for page in _nav_pages(config["nav"]):
        built = site / ("index.html" if page == "index.md" else Path(page).with_suffix("") / "index.html")
        assert built.is_file(), f"{page} was not built"


def test_every_doc_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    pages = set(_nav_pages(config["nav"]))
    assert {p.name for p in (REPO / "docs").glob("*.md")} == pages
