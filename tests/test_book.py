"""The book's table of contents and configuration (the build itself is `make book`)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def resolve(entry):
    matches = [p for p in (ROOT / f"{entry}{ext}" for ext in (".md", ".ipynb")) if p.exists()]
    assert len(matches) == 1, f"_toc.yml entry {entry!r} should match exactly one .md or .ipynb file"
    return matches[0]


def test_toc_lists_existing_files_and_every_chapter():
    listed = {resolve(entry) for entry in toc_files()}
    chapters = set((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert chapters <= listed, f"chapters missing from _toc.yml: {sorted(p.name for p in chapters - listed)}"


def test_config_shows_committed_outputs_and_links_the_repository():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True
    assert config["repository"]["url"].startswith("https://github.com/")
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert all((ROOT / bib).exists() for bib in config["bibtex_bibfiles"])


def test_references_page_lists_every_entry():
    """The chapters link the papers they cite (Jupyter and Colab show MyST citations as text), so
    their works reach the references page only through `:all:`."""
    page = (ROOT / "book" / "references.md").read_text()
    assert "```{bibliography}\n:all:\n```" in page
