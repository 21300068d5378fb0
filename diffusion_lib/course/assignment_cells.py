"""The chapters' exercises: their structure in cell metadata, and otter-grader's format built from it.

A chapter is read in the book, in Jupyter and on Colab, so its grading structure lives where no
reader sees it. The notebook's metadata ``assignment`` holds otter's assignment configuration (what
otter reads from a raw ``# ASSIGNMENT CONFIG`` cell), and every cell of an exercise has the cell
metadata ``exercise``::

    {"question": "q1_alpha_bar", "part": "text", "points": 1}   the question's first cell, with otter's
                                                                 settings for the question (points, ...)
    {"question": "q1_alpha_bar", "part": "text"}                 more of the question's text
    {"question": "q1_alpha_bar", "part": "solution"}             the solution
    {"question": "q1_alpha_bar", "part": "test"}                 a public test (the student's check)
    {"question": "q1_alpha_bar", "part": "hidden test"}          a test used for grading only

A question's cells are consecutive: its text, then its solution, then its tests.
``otter_notebook`` writes the same chapter in otter's own format, raw ``# BEGIN QUESTION`` /
``# BEGIN SOLUTION`` / ``# BEGIN TESTS`` cells and ``# HIDDEN`` tests, which ``otter assign`` turns
into a student and an autograder notebook (scripts/make_assignments.py).

The book shows the chapter itself, so its tags decide what readers see (``exercise_problems``): the
exercise text, the solutions folded under "Solution", never the tests. A Markdown cell tagged
``exercises-link`` links the chapter's student version; the assignments leave it out, as they leave
out the solutions' "Solution" fold (``SOLUTION_TITLE``).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field

import nbformat
import yaml

CONFIG_KEY, EXERCISE_KEY = "assignment", "exercise"
PARTS = ("text", "solution", "test", "hidden test")
# otter's block around each part (the text is the question's own block)
OTTER_BLOCK = {"text": None, "solution": "SOLUTION", "test": "TESTS", "hidden test": "TESTS"}
HIDDEN = "# HIDDEN"
# otter's markers, which a chapter must not show: its raw cells, Markdown fences and hidden-test comment
OTTER_CELL = re.compile(r"#\s+(assignment\s+config|(begin|end)\s+(question|prompt|solution|tests))\b", re.IGNORECASE)
OTTER_FENCE = re.compile(r"^\s*```otter\s*$", re.MULTILINE)
REMOVE, HIDE_INPUT, LINK = "remove-cell", "hide-input", "exercises-link"
# A solution code cell starts with this line and has SOLUTION_METADATA: Colab shows it folded
# under "Solution" (Jupyter shows the line above the code), the book behind a "Show solution" toggle.
SOLUTION_TITLE = '#@title Solution { display-mode: "form" }'
SOLUTION_METADATA = {"cellView": "form", "mystnb": {"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"}}


@dataclass
class Question:
    name: str
    settings: dict  # otter's settings for the question, e.g. points
    cells: list[int] = field(default_factory=list)
    solution_cells: list[int] = field(default_factory=list)
    test_cells: list[int] = field(default_factory=list)

    @property
    def points(self):
        return self.settings.get("points")


def _first_line(cell) -> str:
    return cell.source.lstrip().split("\n", 1)[0]


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def exercise(cell) -> dict | None:
    """The cell's ``exercise`` metadata (question and part), or None outside the exercises."""
    return cell.get("metadata", {}).get(EXERCISE_KEY)


def _plain(value):
    """``value`` (metadata: nbformat's nodes) as plain dicts and lists, for YAML."""
    return json.loads(json.dumps(value))


def assignment_config(nb) -> dict | None:
    """A copy of otter's assignment configuration of ``nb``, or None when the notebook has none."""
    config = nb.metadata.get(CONFIG_KEY)
    return _plain(config) if config is not None else None


def questions(nb) -> list[Question]:
    """The questions of ``nb`` in order, with the indices of their cells (all, solution, test)."""
    found: list[Question] = []
    for i, cell in enumerate(nb.cells):
        mark = exercise(cell)
        if not isinstance(mark, dict):
            continue
        if not found or found[-1].name != mark.get("question") or found[-1].cells[-1] != i - 1:
            settings = {k: _plain(v) for k, v in mark.items() if k not in ("question", "part")}
            found.append(Question(name=mark.get("question"), settings=settings))
        question = found[-1]
        question.cells.append(i)
        if mark.get("part") == "solution" and cell.cell_type == "code":
            question.solution_cells.append(i)
        elif mark.get("part") in ("test", "hidden test"):
            question.test_cells.append(i)
    return found


def _raw(source: str):
    return nbformat.v4.new_raw_cell(source)


def otter_notebook(nb):
    """A copy of ``nb`` in otter-grader's format: the configuration and the blocks of each question
    as raw cells, hidden tests starting ``# HIDDEN``, without this module's metadata."""
    out = copy.deepcopy(nb)
    config = out.metadata.pop(CONFIG_KEY, None)
    cells, question, block = [], None, None
    for cell in out.cells + [None]:  # None closes the last question
        mark = cell.metadata.pop(EXERCISE_KEY, None) if cell is not None else None
        name, part = (mark["question"], mark["part"]) if mark else (None, None)
        if block and (name != question or OTTER_BLOCK[part] != block):
            cells.append(_raw(f"# END {block}"))
            block = None
        if question and name != question:
            cells.append(_raw("# END QUESTION"))
            question = None
        if cell is None:
            break
        if name and question is None:
            settings = {"name": name, **{k: _plain(v) for k, v in mark.items() if k not in ("question", "part")}}
            cells.append(_raw("# BEGIN QUESTION\n" + yaml.safe_dump(settings, sort_keys=False).rstrip("\n")))
            question = name
        if name and OTTER_BLOCK[part] and block is None:
            block = OTTER_BLOCK[part]
            cells.append(_raw(f"# BEGIN {block}"))
        if part == "hidden test":
            cell.source = f"{HIDDEN}\n{cell.source}"
        cells.append(cell)
    if config is not None:
        cells.insert(0, _raw("# ASSIGNMENT CONFIG\n" + yaml.safe_dump(_plain(config), sort_keys=False).rstrip("\n")))
    out.cells = cells
    return out


def _structure_problems(nb) -> list[str]:
    """Where the ``exercise`` metadata of ``nb`` does not describe well-formed questions."""
    problems, seen = [], set()
    marked = [(i, exercise(c)) for i, c in enumerate(nb.cells) if exercise(c) is not None]
    for i, mark in marked:
        if not (isinstance(mark, dict) and isinstance(mark.get("question"), str) and mark.get("part") in PARTS):
            problems.append(f"cell {i}: metadata '{EXERCISE_KEY}' must be {{'question': NAME, 'part': one of {PARTS}}}, "
                            f"not {mark!r}")
    if problems:
        return problems
    if marked and assignment_config(nb) is None:
        problems.append(f"the notebook has exercises but no assignment configuration (notebook metadata '{CONFIG_KEY}')")
    for question in questions(nb):
        if question.name in seen:
            problems.append(f"question {question.name}: its cells must be consecutive (again at cell {question.cells[0]})")
        seen.add(question.name)
        parts = [exercise(nb.cells[i])["part"] for i in question.cells]
        order = [PARTS.index(p) if p != "hidden test" else PARTS.index("test") for p in parts]
        if parts[0] != "text":
            problems.append(f"question {question.name}: its first cell (cell {question.cells[0]}) must be its text")
        if order != sorted(order):
            problems.append(f"question {question.name}: its parts must come in the order text, solution, tests, not {parts}")
        for i in question.cells[1:]:
            extra = sorted(set(exercise(nb.cells[i])) - {"question", "part"})
            if extra:
                problems.append(f"cell {i}: the settings {extra} of question {question.name} belong on its first cell "
                                f"(cell {question.cells[0]})")
    return problems


def exercise_problems(nb) -> list[str]:
    """How the exercises of ``nb`` would show grading markup to readers, leak into or vanish from
    the book, or grade wrongly (empty when fine).

    No otter marker is visible: no raw marker cell, no ```otter fence, no ``# HIDDEN`` line (the
    structure is in metadata). Test cells are tagged ``remove-cell``; solution code cells
    ``hide-input`` (shown behind a toggle) and labelled "Solution" (``SOLUTION_TITLE``,
    ``SOLUTION_METADATA``); the question's own text is not removed. Test cells are executed: otter
    takes the result a test expects from the test cell's saved output.
    """
    problems = []
    for i, cell in enumerate(nb.cells):
        where, tags, mark = f"cell {i}", _tags(cell), exercise(cell)
        if cell.cell_type in ("raw", "markdown") and OTTER_CELL.match(_first_line(cell)):
            problems.append(f"{where} is otter's '{_first_line(cell)}' cell, which Jupyter and Colab show: put the "
                            f"structure in metadata (scripts/plain_markup.py converts it)")
        if cell.cell_type == "markdown" and OTTER_FENCE.search(cell.source):
            problems.append(f"{where}: otter's markers go into cell metadata ('{EXERCISE_KEY}'), not ```otter fences")
        if cell.cell_type == "code" and _first_line(cell) == HIDDEN:
            problems.append(f"{where} starts with '{HIDDEN}', which readers see: give it the metadata part 'hidden test' instead")
        part = mark.get("part") if isinstance(mark, dict) else None
        if part in ("test", "hidden test"):
            if REMOVE not in tags:
                problems.append(f"{where} is a test cell: tag it '{REMOVE}' so the book does not show it")
            if cell.cell_type != "code":
                problems.append(f"{where} is a test cell: make it a code cell")
            elif cell.get("execution_count") is None:
                problems.append(f"{where} is a test cell without its output: otter takes the expected result "
                                "from it (run the notebook: make notebooks)")
        elif part == "solution" and cell.cell_type == "code":
            if REMOVE in tags or HIDE_INPUT not in tags:
                problems.append(f"{where} is a solution cell: tag it '{HIDE_INPUT}' (shown behind a toggle), not '{REMOVE}'")
            if _first_line(cell) != SOLUTION_TITLE or any(cell.metadata.get(k) != v for k, v in SOLUTION_METADATA.items()):
                problems.append(f"{where} is a solution cell: label it (first line {SOLUTION_TITLE!r}, "
                                f"metadata {SOLUTION_METADATA})")
        elif part == "solution" and cell.cell_type == "markdown" and "<details" not in cell.source:
            problems.append(f"{where} is a Markdown solution: fold it in <details><summary>Solution</summary> … </details> "
                            f"(or a code cell tagged '{HIDE_INPUT}')")
        elif part == "text" and REMOVE in tags:
            problems.append(f"{where} is part of the exercise's text: do not tag it '{REMOVE}'")
    return problems + _structure_problems(nb)
