#!/usr/bin/env python
"""Check the chapter notebooks against the rules in diffusion_lib/course/notebook_rules.py.

Usage: python scripts/check_notebooks.py [NOTEBOOK ...]   (default: every notebooks/NN_*.ipynb)
"""

import sys
from pathlib import Path

from diffusion_lib.course.notebook_rules import check_notebook, notebook_paths


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or notebook_paths()
    failed = 0
    for path in paths:
        for problem in check_notebook(path):
            print(f"{path}: {problem}")
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
