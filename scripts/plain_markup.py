#!/usr/bin/env python
"""Rewrite the chapters so that Jupyter and Colab readers see no markup meant for the book or the grader.

The chapters are read three ways: in the book (Sphinx and MyST: roles work, raw cells are hidden),
in Jupyter and on Colab (roles and raw cells are shown as text). This script rewrites, in place,
the Markdown sources and the cell metadata of notebooks/NN_*.ipynb (never outputs or code):

- otter-grader's raw cells (``# ASSIGNMENT CONFIG``, ``# BEGIN QUESTION`` ...) and the ``# HIDDEN``
  line of hidden tests become metadata (the format is described in
  diffusion_lib/course/assignment_cells.py); scripts/make_assignments.py rebuilds otter's cells
  from it for ``otter assign``;
- MyST citations ``{cite:t}`key``` and ``{cite:p}`key``` become Markdown links, "Ho et al. (2020)"
  and "(Ho et al., 2020)", to the paper's url, doi or arXiv page in book/references.bib (whose
  page in the book lists every entry);
- MyST targets ``(label)=`` above a heading are dropped, and a link ``[text](label)`` to one reads
  "text, under *Heading*".

What is left over is reported by the notebook rules (scripts/check_notebooks.py). The rewrite is
deterministic, and a notebook already rewritten is left as it is (the file is not written).

Usage: python scripts/plain_markup.py [NOTEBOOK ...]   (default: every notebooks/NN_*.ipynb)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
import yaml
from pybtex.database import parse_file
from pybtex.richtext import Text

from diffusion_lib.course.assignment_cells import CONFIG_KEY, EXERCISE_KEY, HIDDEN, OTTER_CELL
from diffusion_lib.course.notebook_rules import ROOT, notebook_paths

BIBLIOGRAPHY = ROOT / "book" / "references.bib"
CITE = re.compile(r"\{cite(?::(t|p))?\}`([^`]+)`")
TARGET = re.compile(r"^\(([\w.-]+)\)=[ \t]*\n(?=#+[ \t]+(.+)$)", re.MULTILINE)


def exercises_to_metadata(nb) -> bool:
    """Move otter's raw cells into metadata: the assignment configuration into the notebook's,
    each question's name and settings and each cell's part into the cells'. True if anything moved."""
    cells, question, settings, block, moved = [], None, {}, None, False
    for i, cell in enumerate(nb.cells):
        match = OTTER_CELL.match(cell.source.lstrip()) if cell.cell_type == "raw" else None
        if match:
            moved = True
            body = cell.source.split("\n", 1)[1] if "\n" in cell.source else ""
            begin, kind = (match.group(2) or "").lower(), (match.group(3) or "").lower()
            if not kind:
                nb.metadata[CONFIG_KEY] = yaml.safe_load(body) or {}
            elif kind == "prompt":
                raise ValueError(f"cell {i}: otter's prompt blocks are not supported; write the prompt as the question's text")
            elif kind == "question":
                settings = (yaml.safe_load(body) or {}) if begin == "begin" else {}
                question = settings.pop("name", None) if begin == "begin" else None
                if begin == "begin" and not question:
                    raise ValueError(f"cell {i}: a question without a name")
            else:
                block = kind if begin == "begin" else None
            continue
        if question:
            part = {None: "text", "solution": "solution", "tests": "test"}[block]
            if part == "test" and cell.source.split("\n", 1)[0].strip() == HIDDEN:
                part, cell.source = "hidden test", cell.source.split("\n", 1)[1] if "\n" in cell.source else ""
            cell.metadata[EXERCISE_KEY] = {"question": question, "part": part, **settings}
            settings = {}
        cells.append(cell)
    nb.cells = cells
    return moved


def _text(latex: str) -> str:
    return Text.from_latex(latex).render_as("text")


def references(path: Path = BIBLIOGRAPHY) -> dict[str, dict[str, str]]:
    """Every entry of the bibliography: its authors as the book's author-year style names them
    ("Ho", "Ho and Salimans", "Ho et al."), its year (with a, b, ... where two entries would read
    the same) and the address of the paper (url, else doi, else its arXiv page)."""
    entries = parse_file(str(path)).entries
    found = {}
    for key, entry in entries.items():
        names = [_text(" ".join(p.prelast_names + p.last_names)) for p in entry.persons.get("author", [])]
        authors = names[0] if len(names) == 1 else " and ".join(names) if len(names) == 2 else f"{names[0]} et al."
        fields = entry.fields
        if "url" in fields:
            url = fields["url"]
        elif "doi" in fields:
            url = f"https://doi.org/{fields['doi']}"
        elif "eprint" in fields and fields.get("archiveprefix", "").lower() == "arxiv":
            url = f"https://arxiv.org/abs/{fields['eprint']}"
        else:
            url = None
        found[key] = {"authors": authors, "year": fields.get("year", "n.d."), "url": url}
    same = {}
    for key in sorted(found):
        same.setdefault((found[key]["authors"], found[key]["year"]), []).append(key)
    for keys in same.values():
        for letter, key in zip("abcdefghijklmnopqrstuvwxyz", keys if len(keys) > 1 else []):
            found[key]["year"] += letter
    return found


def citation(kind: str | None, keys: str, bib: dict[str, dict[str, str]]) -> str:
    """A MyST citation of ``keys`` (comma-separated) as Markdown: "[Ho et al. (2020)](url)" for
    ``cite:t``, "([Ho et al., 2020](url))" for ``cite:p`` (and plain ``cite``)."""
    links = []
    for key in (k.strip() for k in keys.split(",")):
        if key not in bib:
            raise ValueError(f"citation key {key!r} is not in {BIBLIOGRAPHY.relative_to(ROOT)}")
        ref = bib[key]
        if not ref["url"]:
            raise ValueError(f"{key} in {BIBLIOGRAPHY.relative_to(ROOT)} has no url, doi or arXiv eprint: add one")
        text = f"{ref['authors']} ({ref['year']})" if kind == "t" else f"{ref['authors']}, {ref['year']}"
        links.append(f"[{text}]({ref['url']})")
    return ", ".join(links) if kind == "t" else f"({'; '.join(links)})"


def citations_to_links(nb, bib) -> bool:
    """Replace the MyST citations in the Markdown of ``nb`` by links. True if any was replaced."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "markdown" and CITE.search(cell.source):
            cell.source = CITE.sub(lambda m: citation(m.group(1), m.group(2), bib), cell.source)
            changed = True
    return changed


def targets_to_prose(nb) -> bool:
    """Drop the MyST targets above headings; a link to one names the heading. True if any was dropped."""
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    headings = {m.group(1): m.group(2).strip() for c in markdown for m in TARGET.finditer(c.source)}
    for cell in markdown:
        cell.source = TARGET.sub("", cell.source)
        for label, heading in headings.items():
            cell.source = re.sub(rf"\[([^\]]+)\]\(#?{re.escape(label)}\)", rf"\1, under *{heading}*", cell.source)
    return bool(headings)


def convert(path: Path, bib) -> bool:
    """Rewrite the notebook at ``path`` in place; True if it changed (else it is not written)."""
    nb = nbformat.read(path, as_version=4)
    changed = [exercises_to_metadata(nb), citations_to_links(nb, bib), targets_to_prose(nb)]
    if any(changed):
        nbformat.write(nb, path)
    return any(changed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    args = parser.parse_args(argv)
    bib = references()
    for path in args.notebooks or notebook_paths():
        print(f"{path}: {'rewritten' if convert(path, bib) else 'already plain'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
