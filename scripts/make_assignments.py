#!/usr/bin/env python
"""Generate the classroom assignments from the chapters' exercises with ``otter assign``.

For every chapter notebook with an assignment configuration (its exercises are described in cell
metadata: diffusion_lib/course/assignment_cells.py) this writes

    assignments/student/<chapter>/<chapter>.ipynb       solutions replaced by stubs, public checks
    assignments/student/<chapter>/tests/                the public tests (also inside the notebook)
    assignments/autograder/<chapter>/<chapter>.ipynb    the solutions, for the teacher
    assignments/autograder/<chapter>/<chapter>-autograder.zip   all tests, for `otter run`
    exercises/<chapter>.ipynb                           the student notebook, committed: the chapter's
                                                        "Open in Colab" link opens it (EXERCISES)

otter reads its own format, raw ``# BEGIN QUESTION`` cells and the like, which the chapters do not
show their readers: it gets a copy written in that format (``assignment_cells.otter_notebook``).
Offline, and nothing is executed (`otter assign --no-run-tests`): tests/test_assignments.py runs
the results in the smoke profile, as grading does (scripts/grade_assignments.py). Two things are
set for every chapter, whatever its config says: the tests go to files (``tests: files: true``),
which is what otter needs on Colab, and otter's first cell (``import otter`` above everything, no
install) is replaced by ours after the set-up cell: on Colab it installs otter-grader without its
dependencies (otter 7 asks for ipywidgets 8, which would replace Colab's ipywidgets 7), and
everywhere it writes the public tests missing from ``tests/``, so the notebook alone is enough: a
Colab runtime has nothing but the notebook.

The chapter's own presentation stays out of the assignments: the link to the student version
(the cell tagged ``exercises-link``) and the "Solution" fold and toggle of the solution cells.

Usage: python scripts/make_assignments.py [--out assignments] [--exercises exercises] [NOTEBOOK ...]
       (default: every notebooks/NN_*.ipynb that has an assignment config)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import shutil
import sys
import tempfile
from importlib.metadata import requires, version
from pathlib import Path

import nbformat
import yaml
from packaging.requirements import Requirement

from diffusion_lib.course.assignment_cells import (CONFIG_KEY, HIDE_INPUT, LINK, SOLUTION_METADATA, SOLUTION_TITLE,
                                                   assignment_config, otter_notebook, questions)
from diffusion_lib.course.notebook_rules import ROOT, notebook_paths

EXERCISES = ROOT / "exercises"


def otter_requirement(name: str) -> str:
    """otter-grader's own requirement on ``name``, e.g. 'wrapt<2.0.0,>=1.16.0'."""
    for line in requires("otter-grader"):
        requirement = Requirement(line)
        if requirement.name == name and requirement.marker is None:
            return f"{name}{requirement.specifier}"
    raise LookupError(f"otter-grader does not require {name}")


# What `import otter` needs on Colab besides what Colab has (pandas, nbconvert, ipywidgets 7, ...),
# installed with --no-deps. Pinned to the versions here: what Colab lacks. Otter's own ranges: what
# Colab has, so pip leaves Colab's copy alone.
COLAB_PACKAGES = [f"{name}=={version(name)}" for name in ("otter-grader", "fica", "python-frontmatter", "ipylab")]
COLAB_PACKAGES += [otter_requirement(name) for name in ("dill", "wrapt")]
FORCED_CONFIG = {"init_cell": True, "export_cell": False}
INIT_MARK = "# Initialize Otter"
INIT_CELL = '''\
#@title The exercises' checks (otter-grader): run this cell {{ display-mode: "form" }}
# Added by scripts/make_assignments.py. On Colab, install otter-grader without its dependencies,
# so that Colab's own packages stay as they are; then write this assignment's public tests next
# to the notebook where they are missing (a Colab runtime has only the notebook) and start otter.
import sys

if "google.colab" in sys.modules:
    import importlib
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", {packages}], check=True)
    importlib.invalidate_caches()

from pathlib import Path

OTTER_TESTS = {{
{tests}
}}
for _name, _text in OTTER_TESTS.items():
    _path = Path("tests", _name)
    if not _path.exists():  # never replace a test: when otter grades, tests/ holds the hidden ones too
        _path.parent.mkdir(exist_ok=True)
        _path.write_text(_text)

import otter

grader = otter.Notebook(tests_dir="tests")'''


def has_assignment(path: Path) -> bool:
    return assignment_config(nbformat.read(path, as_version=4)) is not None


def assignment_notebooks() -> list[Path]:
    return [p for p in notebook_paths() if has_assignment(p)]


def colab_url(path: Path) -> str:
    """The Colab address of ``path`` (in this repository) on the branch the book publishes."""
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    github = repository["url"].removeprefix("https://github.com/").rstrip("/")
    return f"https://colab.research.google.com/github/{github}/blob/{repository['branch']}/{path.relative_to(ROOT).as_posix()}"


def unlabel_solution(cell) -> None:
    """The solution cell without the chapter's "Solution" fold: the student's answer cell is open."""
    if cell.source.split("\n", 1)[0] == SOLUTION_TITLE:
        cell.source = cell.source.split("\n", 1)[1] if "\n" in cell.source else ""
    for key in SOLUTION_METADATA:
        cell.metadata.pop(key, None)
    tags = cell.metadata.get("tags", [])
    if HIDE_INPUT in tags:
        tags.remove(HIDE_INPUT)


def master_copy(path: Path, folder: Path) -> Path:
    """A copy of the chapter in ``folder`` in otter's format, with the settings the assignments need,
    without the chapter's link to its student version and the fold of its solutions."""
    nb = nbformat.read(path, as_version=4)
    for question in questions(nb):
        for i in question.solution_cells:
            unlabel_solution(nb.cells[i])
    nb.cells = [c for c in nb.cells if LINK not in c.metadata.get("tags", [])]
    config = assignment_config(nb)
    config.update(FORCED_CONFIG)
    config["tests"] = {**(config.get("tests") or {}), "files": True}
    config.setdefault("generate", True)
    nb.metadata[CONFIG_KEY] = config
    copy = folder / path.name
    nbformat.write(otter_notebook(nb), copy)
    return copy


def _literal(text: str) -> str:
    if "'''" in text or text.endswith("\\"):
        return repr(text)
    return "r'''" + text + "'''"


def init_cell(tests_dir: Path):
    tests = "\n".join(f"    {p.name!r}: {_literal(p.read_text())}," for p in sorted(tests_dir.glob("*.py")))
    packages = ", ".join(f'"{p}"' for p in COLAB_PACKAGES)
    cell = nbformat.v4.new_code_cell(INIT_CELL.format(packages=packages, tests=tests))
    cell.metadata = {"cellView": "form", "deletable": False, "editable": False, "tags": ["otter-init"]}
    return cell


def finish_notebook(path: Path, student: bool) -> None:
    """Put our init cell after the set-up cell (instead of otter's, above it)."""
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if not (c.cell_type == "code" and c.source.startswith(INIT_MARK))]
    setup = next((i for i, c in enumerate(nb.cells) if "setup" in c.metadata.get("tags", [])), -1)
    nb.cells.insert(setup + 1, init_cell(path.parent / "tests"))
    if student:
        nb.metadata.pop("widgets", None)  # the cpu run's widget state; the student version has no outputs
    for i, cell in enumerate(nb.cells):
        if "id" in cell:  # otter gives its new cells random ids; these stay the same when regenerated
            cell.id = hashlib.sha1(f"{i}\n{cell.source}".encode()).hexdigest()[:8]
    nbformat.write(nb, path)


def make_assignment(path: Path, out: Path) -> dict[str, Path]:
    """Generate the student and autograder versions of chapter ``path`` under ``out``."""
    from otter.assign import main as otter_assign

    chapter = path.stem
    student, autograder = out / "student" / chapter, out / "autograder" / chapter
    with tempfile.TemporaryDirectory() as tmp:
        master, result = master_copy(path, Path(tmp)), Path(tmp) / "result"
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                otter_assign(str(master), str(result), no_run_tests=True, no_pdfs=True)
        except Exception as error:
            raise RuntimeError(f"otter assign failed on {path.name}: {error}\n{log.getvalue()}") from error
        for folder in (student, autograder):
            shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(result / "student", student)
        shutil.copytree(result / "autograder", autograder)
    (zip_path,) = autograder.glob(f"{chapter}-autograder_*.zip")
    zip_path = zip_path.rename(autograder / f"{chapter}-autograder.zip")  # no timestamp
    finish_notebook(student / path.name, student=True)
    finish_notebook(autograder / path.name, student=False)
    return {"student": student / path.name, "autograder": autograder / path.name, "zip": zip_path}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter with an assignment config")
    parser.add_argument("--out", type=Path, default=ROOT / "assignments", help="default: assignments/")
    parser.add_argument("--exercises", type=Path, default=EXERCISES,
                        help="where the student notebooks are copied to (default: exercises/, committed)")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or assignment_notebooks()
    for path in paths:
        if not has_assignment(path):
            print(f"{path.name}: no assignment configuration (notebook metadata 'assignment'), skipped")
            continue
        made = make_assignment(path, args.out.resolve())
        args.exercises.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made["student"], args.exercises / made["student"].name)
        print(f"{path.stem}: {made['student'].relative_to(args.out.resolve().parent)}, "
              f"{made['zip'].relative_to(args.out.resolve().parent)}, {args.exercises / made['student'].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
