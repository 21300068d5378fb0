#!/usr/bin/env python
"""Execute notebooks in place in one profile (default cpu), so the committed files carry real outputs.

Usage: python scripts/execute_notebooks.py [--profile cpu] NOTEBOOK [...]
The kernel runs in the notebook's folder with the same environment nbval gives it
(diffusion_lib.course.notebook_rules.kernel_environment), then the result is checked with scripts/check_notebooks.py.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from diffusion_lib.course.notebook_rules import KERNEL_NAME, check_notebook, kernel_environment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--profile", default="cpu", choices=("smoke", "cpu", "gpu"))
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = parser.parse_args()
    os.environ.update(kernel_environment(args.profile))
    failed = 0
    for path in args.notebooks:
        start = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb, timeout=args.timeout, kernel_name=KERNEL_NAME, record_timing=False,
            store_widget_state=False,  # no widget state in committed notebooks: the static book cannot run it
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
        nbformat.write(nb, path)
        problems = check_notebook(path)
        print(f"{path}: executed in the {args.profile} profile in {time.perf_counter() - start:.0f} s")
        for problem in problems:
            print(f"{path}: {problem}")
        failed |= bool(problems)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
