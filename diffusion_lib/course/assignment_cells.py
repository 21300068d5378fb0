"""The chapters' exercises in otter-grader's notebook format, read without importing otter.

A chapter with exercises has a raw ``# ASSIGNMENT CONFIG`` cell, and each exercise is a block of
cells between raw ``# BEGIN QUESTION`` and ``# END QUESTION`` cells (YAML after the first line:
``name``, ``points``), with ``# BEGIN SOLUTION`` / ``# END SOLUTION`` around the solution cells and
``# BEGIN TESTS`` / ``# END TESTS`` around the test cells (a test cell starting ``# HIDDEN`` is used
for grading only). ``otter assign`` turns them into a student and an autograder notebook
(scripts/make_assignments.py). The book shows the chapter itself, so its tags decide what readers
see (``exercise_problems``): the exercise text, the solutions folded under "Solution", never the
grading cells. A Markdown cell tagged ``exercises-link`` links the chapter's student version; the
assignments leave it out, as they leave out the solutions' "Solution" fold (``SOLUTION_TITLE``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

CONFIG = re.compile(r"#\s+assignment\s+config\b", re.IGNORECASE)
MARKER = re.compile(r"#\s+(begin|end)\s+(question|prompt|solution|tests)\b", re.IGNORECASE)
OTTER_FENCE = re.compile(r"^\s*```otter\s*$", re.MULTILINE)
REMOVE, HIDE_INPUT, LINK = "remove-cell", "hide-input", "exercises-link"
# A solution code cell starts with this line and has SOLUTION_METADATA: Colab shows it folded
# under "Solution" (Jupyter shows the line above the code), the book behind a "Show solution" toggle.
SOLUTION_TITLE = '#@title Solution { display-mode: "form" }'
SOLUTION_METADATA = {"cellView": "form", "mystnb": {"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"}}


@dataclass
class Question:
    name: str
    points: float | list | None
    solution_cells: list[int] = field(default_factory=list)
    test_cells: list[int] = field(default_factory=list)


def _first_line(cell) -> str:
    return cell.source.lstrip().split("\n", 1)[0]


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def is_config_cell(cell) -> bool:
    return cell.cell_type == "raw" and bool(CONFIG.match(_first_line(cell)))


def marker(cell) -> tuple[str, str] | None:
    """("begin" | "end", block type) for a raw otter boundary cell, else None."""
    match = MARKER.match(_first_line(cell)) if cell.cell_type == "raw" else None
    return (match.group(1).lower(), match.group(2).lower()) if match else None


def assignment_config(nb) -> dict | None:
    """The parsed ``# ASSIGNMENT CONFIG`` cell of ``nb``, or None when the notebook has none."""
    for cell in nb.cells:
        if is_config_cell(cell):
            return yaml.safe_load(cell.source.split("\n", 1)[1] if "\n" in cell.source else "") or {}
    return None


def questions(nb) -> list[Question]:
    """The questions of ``nb`` in order, with the indices of their solution and test cells."""
    found, stack = [], []
    for i, cell in enumerate(nb.cells):
        boundary = marker(cell)
        if boundary and boundary[0] == "begin":
            stack.append(boundary[1])
            if boundary[1] == "question":
                config = yaml.safe_load(cell.source.split("\n", 1)[1]) if "\n" in cell.source else {}
                found.append(Question(name=config.get("name"), points=config.get("points")))
        elif boundary:
            if stack and stack[-1] == boundary[1]:
                stack.pop()
        elif cell.cell_type == "code" and stack and found:
            if stack[-1] == "solution":
                found[-1].solution_cells.append(i)
            elif stack[-1] == "tests":
                found[-1].test_cells.append(i)
    return found


def exercise_problems(nb) -> list[str]:
    """How the otter cells of ``nb`` would leak into, or vanish from, the book, or grade wrongly
    (empty when fine).

    Config, boundary and test cells are tagged ``remove-cell``; solution code cells ``hide-input``
    (shown behind a toggle) and labelled "Solution" (``SOLUTION_TITLE``, ``SOLUTION_METADATA``); the
    question's own text is not removed; blocks are closed. Test cells are executed: otter takes the
    result a test expects from the test cell's saved output.
    """
    problems, stack = [], []
    for i, cell in enumerate(nb.cells):
        where, tags = f"cell {i}", _tags(cell)
        boundary = marker(cell)
        if cell.cell_type == "markdown" and OTTER_FENCE.search(cell.source):
            problems.append(f"{where}: write otter's markers as raw cells, not ```otter Markdown fences")
        if is_config_cell(cell) or boundary:
            if REMOVE not in tags:
                problems.append(f"{where} ({_first_line(cell)}) is a grading cell: tag it '{REMOVE}'")
            if boundary and boundary[0] == "begin":
                stack.append(boundary[1])
            elif boundary:
                if not stack or stack[-1] != boundary[1]:
                    problems.append(f"{where}: '{_first_line(cell)}' closes a block that is not open")
                else:
                    stack.pop()
            continue
        block = stack[-1] if stack else None
        if block == "tests" and REMOVE not in tags:
            problems.append(f"{where} is a test cell: tag it '{REMOVE}' so the book does not show it")
        if block == "tests" and cell.cell_type == "code" and cell.get("execution_count") is None:
            problems.append(f"{where} is a test cell without its output: otter takes the expected result "
                            "from it (run the notebook: make notebooks)")
        elif block == "solution" and cell.cell_type == "code":
            if REMOVE in tags or HIDE_INPUT not in tags:
                problems.append(f"{where} is a solution cell: tag it '{HIDE_INPUT}' (shown behind a toggle), not '{REMOVE}'")
            if _first_line(cell) != SOLUTION_TITLE or any(cell.metadata.get(k) != v for k, v in SOLUTION_METADATA.items()):
                problems.append(f"{where} is a solution cell: label it (first line {SOLUTION_TITLE!r}, "
                                f"metadata {SOLUTION_METADATA})")
        elif block == "solution" and cell.cell_type == "markdown" and "dropdown" not in cell.source:
            problems.append(f"{where} is a Markdown solution: put it in a dropdown (or a code cell tagged '{HIDE_INPUT}')")
        elif block in ("question", "prompt") and REMOVE in tags:
            problems.append(f"{where} is part of the exercise's text: do not tag it '{REMOVE}'")
    if stack:
        problems.append(f"unclosed otter block(s): {', '.join(stack)}")
    return problems
