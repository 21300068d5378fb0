#!/usr/bin/env python
"""Write notebooks/_first_cell.py into every chapter notebook as its first code cell.

The set-up cell is found by its ``setup`` tag; a notebook without one gets it right after its title
(the first Markdown cell, when no code comes before it). Notebooks that already match are not rewritten.
Usage: python scripts/sync_first_cell.py [NOTEBOOK ...]   (default: every notebooks/NN_*.ipynb)
"""

import sys
from pathlib import Path

import nbformat

from diffusion_lib.course.notebook_rules import SETUP_TAGS, first_cell_source, notebook_paths


def sync(path: Path) -> bool:
    """Make the set-up cell of ``path`` canonical; return whether the file changed."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    setup = [c for c in nb.cells if c.cell_type == "code" and "setup" in c.metadata.get("tags", [])]
    for extra in setup[1:]:
        nb.cells.remove(extra)
    if setup:
        cell = setup[0]
        position = nb.cells.index(cell)
        nb.cells.remove(cell)
    else:
        cell = nbformat.v4.new_code_cell()
        position = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
        title = next((i for i, c in enumerate(nb.cells[:position]) if c.cell_type == "markdown"), None)
        position = position if title is None else title + 1
    cell.source = first_cell_source()
    cell.outputs = []
    cell.execution_count = None
    cell.metadata["tags"] = list(SETUP_TAGS)
    nb.cells.insert(position, cell)
    if nbformat.writes(nb) == before:
        return False
    nbformat.write(nb, path)
    return True


if __name__ == "__main__":
    for path in [Path(p) for p in sys.argv[1:]] or notebook_paths():
        if sync(path):
            print(f"updated {path}")
