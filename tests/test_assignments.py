"""Classroom assignments: generated from every chapter with exercises (scripts/make_assignments.py),
run as a student would run them, and graded with `otter run` (scripts/grade_assignments.py).

For each chapter: (a) the student notebook, unchanged, runs without an error and its public checks
report failure at the stubs; (b) the solutions notebook gets full marks; (c) the student notebook
with the solutions filled in and one of them deliberately wrong loses exactly that question's
points. All runs are notebook executions in the smoke profile, two at a time (the machine has two
cores); they run once, in the module's fixture, and each test reads its result. The student
notebooks committed in exercises/ (the chapters link them on Colab) are the ones generated here.
"""

import ast
import multiprocessing
import os
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("otter", reason="otter-grader (requirements.txt) builds the assignments; Colab lacks it")
from _scripts import ROOT, load_script  # noqa: E402

from diffusion_lib.course.assignment_cells import (LINK, SOLUTION_METADATA, SOLUTION_TITLE,  # noqa: E402
                                                   exercise_problems, otter_notebook, questions)

grade_assignments = load_script(ROOT / "scripts" / "grade_assignments.py", "grade_assignments")
make_assignments = load_script(ROOT / "scripts" / "make_assignments.py", "make_assignments")
course_environment, grade = grade_assignments.course_environment, grade_assignments.grade
EXERCISES, colab_url = make_assignments.EXERCISES, make_assignments.colab_url
assignment_notebooks, make_assignment = make_assignments.assignment_notebooks, make_assignments.make_assignment

CHAPTERS = assignment_notebooks()
CHECK = re.compile(r'^grader\.check\("([^"]+)"\)$')
WRONG_HELPER = '''\
def _deliberately_wrong(answer):
    """The answer with every number in it shifted, as a slip in a formula would."""
    import functools
    import numbers

    if hasattr(answer, "dtype") and hasattr(answer, "shape"):  # a tensor or an array
        kind = str(answer.dtype)
        return ~answer if "bool" in kind else answer * 1.1 + 0.1 if ("float" in kind or "complex" in kind) else answer + 1
    if isinstance(answer, bool):
        return not answer
    if isinstance(answer, numbers.Integral):
        return answer + 1
    if isinstance(answer, numbers.Number):
        return answer * 1.1 + 0.1
    if isinstance(answer, (tuple, list)):
        return type(answer)(_deliberately_wrong(a) for a in answer)
    if isinstance(answer, dict):
        return {k: _deliberately_wrong(v) for k, v in answer.items()}
    if callable(answer):
        return functools.wraps(answer)(lambda *args, **kwargs: _deliberately_wrong(answer(*args, **kwargs)))
    return None

'''


def answer_cells(nb) -> dict[str, list[int]]:
    """Question name -> indices of its answer cells, from the student notebook's check cells."""
    found, pending = {}, []
    for i, cell in enumerate(nb.cells):
        if "otter_answer_cell" in cell.metadata.get("tags", []):
            pending.append(i)
        elif cell.cell_type == "code" and (match := CHECK.match(cell.source.strip())):
            found[match.group(1)], pending = pending, []
    return found


def defined_names(source: str) -> list[str]:
    """The names a cell defines at top level (functions, classes, assigned variables)."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def submission_with_one_wrong_answer(student: Path, solutions: Path, out: Path) -> tuple[Path, str]:
    """The student notebook with every answer cell filled from the solutions, the first question's
    answer made deliberately wrong (its names rebound to versions whose numbers are shifted)."""
    nb, solved = nbformat.read(student, as_version=4), nbformat.read(solutions, as_version=4)
    assert len(nb.cells) == len(solved.cells), "student and solutions notebooks should have the same cells"
    answers = answer_cells(nb)
    for cells in answers.values():
        for i in cells:
            nb.cells[i].source = solved.cells[i].source
    wrong = next(q for q, cells in answers.items() if cells)
    for i in answers[wrong]:
        names = defined_names(nb.cells[i].source)
        assert names, f"cannot make {wrong} wrong automatically: its answer cell {i} defines no name"
        rebind = "".join(f"\n{name} = _deliberately_wrong({name})" for name in names)
        nb.cells[i].source = WRONG_HELPER + nb.cells[i].source + "\n" + rebind
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / student.name)
    return out / student.name, wrong


def grade_in_worker(notebook: Path, autograder_zip: Path):
    # A spawned worker finds this module's functions by name (tests/ is on its path), not the script's.
    return grade(notebook, autograder_zip)


def run_as_student(notebook: Path, folder: Path):
    """Execute a copy of ``notebook`` alone in ``folder`` (as on Colab: no tests/ beside it)."""
    from nbclient import NotebookClient

    folder.mkdir(parents=True)
    nb = nbformat.read(notebook, as_version=4)
    with course_environment("smoke"):
        NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(folder)}}).execute()
    return nb


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Every chapter's assignment files (seconds: nothing is executed)."""
    out, made = tmp_path_factory.mktemp("assignments"), {}
    for path in CHAPTERS:
        try:
            made[path.stem] = make_assignment(path, out)
        except Exception as error:  # noqa: BLE001  (reported by the chapter's tests)
            made[path.stem] = error
    return out, made


def files(generated, chapter):
    made = generated[1][chapter]
    if isinstance(made, Exception):
        pytest.fail(f"otter assign failed on {chapter}: {made!r}")
    return made


@pytest.fixture(scope="module")
def assignments(generated):
    """Run (a), (b) and (c) for every chapter, two at a time."""
    out, made = generated
    futures, results = {}, {}
    # Two processes that each import otter and nbclient once; each run starts its own kernel, with
    # one thread (two kernels with two threads each on two cores waste time waiting for each other).
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with pytest.MonkeyPatch.context() as patch, \
            ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for name, value in threads.items():
            patch.setenv(name, value)
        for chapter, chapter_files in made.items():
            if isinstance(chapter_files, Exception):
                continue
            futures[chapter, "student"] = pool.submit(run_as_student, chapter_files["student"], out / "student_run" / chapter)
            futures[chapter, "solutions"] = pool.submit(grade_in_worker, chapter_files["autograder"], chapter_files["zip"])
            try:
                wrong_nb, chapter_files["wrong_question"] = submission_with_one_wrong_answer(
                    chapter_files["student"], chapter_files["autograder"], out / "wrong" / chapter)
                futures[chapter, "wrong"] = pool.submit(grade_in_worker, wrong_nb, chapter_files["zip"])
            except Exception as error:  # noqa: BLE001  (reported by the test that reads it)
                results[chapter, "wrong"] = error
    for key, future in futures.items():
        try:
            results[key] = future.result()
        except Exception as error:  # noqa: BLE001  (reported by the test that reads it)
            results[key] = error
    return made, results


def result(assignments, chapter, kind):
    if isinstance(assignments[0][chapter], Exception):
        pytest.fail(f"otter assign failed on {chapter}: {assignments[0][chapter]!r}")
    value = assignments[1][chapter, kind]
    if isinstance(value, Exception):
        pytest.fail(f"{kind} run of {chapter} failed: {value}")
    return value


def test_some_chapters_have_exercises():
    assert CHAPTERS, "no notebook has an assignment configuration (notebook metadata 'assignment')"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_exercise_cells_are_tagged_for_the_book_and_run(path):
    assert exercise_problems(nbformat.read(path, as_version=4)) == []


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_student_notebook_is_set_up_for_colab(generated, path):
    nb = nbformat.read(files(generated, path.stem)["student"], as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "setup" in code[0].metadata["tags"], "the course's set-up cell must stay the first code cell"
    assert "otter-init" in code[1].metadata["tags"] and "import otter" in code[1].source
    assert not any("import otter" in c.source for c in code[2:]), "otter is imported once, after the set-up cell"
    assert "--no-deps" in code[1].source and "otter-grader==" in code[1].source
    text = nbformat.writes(nb)
    assert "# HIDDEN" not in text, "hidden tests must not reach students"
    assert SOLUTION_TITLE.split(" {")[0] not in text and LINK not in text, "the chapter's own presentation stays out"
    names = {q.name for q in questions(nbformat.read(path, as_version=4))}
    assert set(answer_cells(nb)) == names, "every question needs a public check (grader.check cell)"


def comparable(nb) -> list[dict]:
    """The cells of a student notebook, without the versions in the otter cell's pip line (those of
    the otter-grader that generated it; the cell itself is checked above)."""
    cells = []
    for cell in nb.cells:
        cell = dict(cell)
        if "otter-init" in cell["metadata"].get("tags", []):
            cell["source"] = "\n".join(re.sub(r"(==|>=|<=|<|>)[0-9][\w.]*", r"\1*", line) if "--no-deps" in line else line
                                       for line in cell["source"].split("\n"))
        cells.append(cell)
    return cells


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_the_committed_student_notebook_is_the_generated_one(generated, path):
    committed = EXERCISES / f"{path.stem}.ipynb"
    regenerate = f"regenerate it: python scripts/make_assignments.py {path.relative_to(ROOT)}"
    assert committed.is_file(), f"{committed.relative_to(ROOT)} is missing: {regenerate}"
    new = comparable(nbformat.read(files(generated, path.stem)["student"], as_version=4))
    old = comparable(nbformat.read(committed, as_version=4))
    differ = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    assert old == new, (f"{committed.relative_to(ROOT)} differs from what {path.name} makes, from cell {differ} "
                        f"({len(old)} cells committed, {len(new)} generated): {regenerate}")


def test_the_exercises_folder_holds_a_student_notebook_per_chapter_and_nothing_else():
    assert sorted(p.name for p in EXERCISES.glob("*.ipynb")) == sorted(p.name for p in CHAPTERS)


def test_the_teachers_page_gives_the_student_link():
    url = colab_url(EXERCISES / "<chapter>.ipynb")
    assert url in (ROOT / "book" / "teachers.md").read_text(), f"book/teachers.md should give {url}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_the_chapter_links_its_student_version_on_colab(path):
    nb = nbformat.read(path, as_version=4)
    links = [i for i, c in enumerate(nb.cells) if LINK in c.metadata.get("tags", [])]
    first_question = questions(nb)[0].cells[0]
    url = colab_url(EXERCISES / path.name)
    assert re.fullmatch(rf"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w.-]+/exercises/{path.name}", url)
    assert len(links) == 1 and links[0] < first_question, f"one cell tagged '{LINK}', above the exercises"
    assert f"]({url})" in nb.cells[links[0]].source, f"the link should be {url}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_a_student_notebook_runs_and_its_checks_fail_at_the_stubs(assignments, path):
    nb = result(assignments, path.stem, "student")
    errors = [f"cell {i}: {o.ename}: {o.evalue}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert errors == [], "the student notebook must run to the end with its stubs"
    checks = {CHECK.match(c.source.strip()).group(1): "\n".join(str(o.get("data", {}).get("text/plain", o.get("text", "")))
                                                                for o in c.outputs)
              for c in nb.cells if c.cell_type == "code" and CHECK.match(c.source.strip())}
    passed = [q for q, text in checks.items() if "Test case failed" not in text or "All test cases passed" in text]
    assert checks and passed == [], f"public checks that do not report failure at the stub: {passed}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_b_solutions_get_full_marks(assignments, path):
    scores = result(assignments, path.stem, "solutions")
    lost = {q: s.report for q, s in scores.items() if s.score != s.possible}
    assert scores and not lost, "\n\n".join(lost.values())


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_c_one_wrong_answer_loses_exactly_its_points(assignments, path):
    scores = result(assignments, path.stem, "wrong")
    wrong = assignments[0][path.stem]["wrong_question"]
    unexpected = {q: s.report for q, s in scores.items() if s.score != (0 if q == wrong else s.possible)}
    assert wrong in scores and not unexpected, f"deliberately wrong: {wrong}\n" + "\n\n".join(unexpected.values())
    solutions = result(assignments, path.stem, "solutions")
    assert {q: s.hidden_tests for q, s in scores.items()} == {q: s.hidden_tests for q, s in solutions.items()}, \
        "a submission made from the student notebook must be graded with the hidden tests too"


COLAB_SHELL = """
from IPython.core.interactiveshell import InteractiveShell


class Shell(InteractiveShell):
    \"\"\"Stands in for Colab's shell: otter recognises Colab by the shell's module.\"\"\"
"""
ON_COLAB = """
import subprocess, sys
import google.colab
from google.colab._shell import Shell

pip = []
subprocess.run = lambda args, **kwargs: pip.append(args)  # installing is Colab's part, not this test's
shell = Shell.instance()
shell.run_cell(open("init_cell.py").read()).raise_error()
print("pip:", *pip[0][3:])
print("interpreter:", shell.ev("grader.interpreter"))
print(shell.ev("grader.check(%r)"))
"""


def test_init_cell_on_colab(generated, tmp_path):
    """The student notebook's otter cell as Colab runs it: alone (no tests/ beside it), in Colab's
    shell, which otter recognises; the install leaves Colab's packages alone (--no-deps)."""
    chapter = CHAPTERS[0].stem
    student = nbformat.read(files(generated, chapter)["student"], as_version=4)
    (tmp_path / "init_cell.py").write_text(next(c.source for c in student.cells if "otter-init" in c.metadata.get("tags", [])))
    (tmp_path / "google" / "colab").mkdir(parents=True)
    (tmp_path / "google" / "__init__.py").write_text("")
    (tmp_path / "google" / "colab" / "__init__.py").write_text("")
    (tmp_path / "google" / "colab" / "_shell.py").write_text(COLAB_SHELL)
    question, *_, graded = answer_cells(student)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / f"{graded}.py").write_text("test = {}  # where otter's grading puts the hidden tests")
    run = subprocess.run([sys.executable, "-c", ON_COLAB % question], cwd=tmp_path, capture_output=True, text=True, check=False,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert run.returncode == 0, run.stderr
    assert "pip: install -q --no-deps otter-grader==" in run.stdout
    assert "interpreter: IPythonInterpreter.COLAB" in run.stdout
    assert "Test case failed" in run.stdout  # nothing is defined: the check runs and fails, without an error
    tests = files(generated, chapter)["student"].parent / "tests"
    written = {p.name: p.read_text() for p in (tmp_path / "tests").glob("*.py")}
    assert written.pop(f"{graded}.py").startswith("test = {}"), "the cell replaced a test it found (grading's hidden tests)"
    assert written == {p.name: p.read_text() for p in tests.glob("*.py") if p.stem != graded}


def _cell(kind, source, tags=(), question=None, part=None, **settings):
    new = {"raw": nbformat.v4.new_raw_cell, "code": nbformat.v4.new_code_cell,
           "markdown": nbformat.v4.new_markdown_cell}[kind]
    made = new(source, metadata={"tags": list(tags)})
    if question:
        made.metadata["exercise"] = {"question": question, "part": part, **settings}
    if kind == "code":
        made.execution_count = 1
    return made


def _exercise_notebook():
    """A chapter with one exercise, in the course's format (exercise structure in metadata)."""
    remove = ["remove-cell"]
    cells = [
        _cell("markdown", "# Demo"),
        _cell("markdown", "**Exercise 1.** Write `f`.", (), "q1", "text", points=1),
        _cell("code", f"{SOLUTION_TITLE}\ndef f():\n    return 1  # SOLUTION", ["hide-input"], "q1", "solution"),
        _cell("code", "f() == 1", remove, "q1", "test"),
        _cell("code", "f() + 1 == 2", remove, "q1", "hidden test"),
        _cell("markdown", "## Summary"),
    ]
    cells[2].metadata.update(SOLUTION_METADATA)
    return nbformat.v4.new_notebook(cells=cells, metadata={"assignment": {"name": "demo", "init_cell": True}})


def test_otter_notebook_writes_otter_format_from_the_metadata():
    nb = _exercise_notebook()
    assert exercise_problems(nb) == []
    assert [(q.name, q.points, q.cells, q.solution_cells, q.test_cells) for q in questions(nb)] == [("q1", 1, [1, 2, 3, 4], [2], [3, 4])]
    otter = otter_notebook(nb)
    assert [c.source.split("\n")[0] if c.cell_type == "raw" else c.source for c in otter.cells] == [
        "# ASSIGNMENT CONFIG", "# Demo", "# BEGIN QUESTION", "**Exercise 1.** Write `f`.", "# BEGIN SOLUTION", nb.cells[2].source,
        "# END SOLUTION", "# BEGIN TESTS", "f() == 1", "# HIDDEN\nf() + 1 == 2", "# END TESTS", "# END QUESTION", "## Summary"]
    assert otter.cells[0].source == "# ASSIGNMENT CONFIG\nname: demo\ninit_cell: true"
    assert otter.cells[2].source == "# BEGIN QUESTION\nname: q1\npoints: 1"
    assert "assignment" not in otter.metadata and not any("exercise" in c.metadata for c in otter.cells)
    assert "exercise" in nb.cells[1].metadata, "the chapter itself is left as it is"


def test_plain_markup_moves_otter_cells_into_metadata_and_back():
    plain_markup = load_script(ROOT / "scripts" / "plain_markup.py", "plain_markup")
    otter = otter_notebook(_exercise_notebook())
    nb = nbformat.reads(nbformat.writes(otter), as_version=4)
    assert plain_markup.exercises_to_metadata(nb) is True
    assert [(c.source, c.metadata.get("exercise")) for c in nb.cells] == [
        (c.source, c.metadata.get("exercise")) for c in _exercise_notebook().cells]
    assert nb.metadata["assignment"] == {"name": "demo", "init_cell": True}
    assert plain_markup.exercises_to_metadata(nb) is False  # nothing left to move
    assert [c.source for c in otter_notebook(nb).cells] == [c.source for c in otter.cells]


def test_exercise_problems_finds_grader_markup_and_cells_the_book_would_show():
    nb = _exercise_notebook()
    nb.cells[1].metadata["tags"] = ["remove-cell"]  # the exercise's text removed from the book
    nb.cells[2].metadata["tags"] = []               # a solution shown without a toggle
    nb.cells[2].source = nb.cells[2].source.split("\n", 1)[1]  # nor the word Solution above it
    nb.cells[4].metadata["tags"] = ["hide-input"]   # a hidden test behind a toggle
    nb.cells[3].execution_count = None              # a test without the output otter takes as expected
    nb.cells.insert(2, _cell("raw", "# BEGIN SOLUTION"))  # otter's marker, which Jupyter shows
    nb.cells.append(_cell("code", "# HIDDEN\nf() == 1", ["remove-cell"]))
    nb.cells.append(_cell("code", "f() == 1", ["remove-cell"], "q1", "test"))  # q1 again, after other cells
    nb.cells.append(_cell("markdown", "More text", (), "q2", "solution", points=2))  # settings away from the text
    problems = "\n".join(exercise_problems(nb))
    for expected in ("cell 1 is part of the exercise's text", "cell 2 is otter's '# BEGIN SOLUTION' cell",
                     "cell 3 is a solution cell: tag it", "cell 3 is a solution cell: label it",
                     "cell 4 is a test cell without its output", "cell 5 is a test cell: tag it",
                     "cell 7 starts with '# HIDDEN'", "question q1: its cells must be consecutive",
                     "question q2: its first cell (cell 9) must be its text", "cell 9 is a Markdown solution"):
        assert expected in problems
    nb.cells.append(_cell("code", "x", (), "q3", "tests"))
    assert "metadata 'exercise' must be" in "\n".join(exercise_problems(nb))
    del nb.metadata["assignment"]
    nb.cells.pop()
    assert "the notebook has exercises but no assignment configuration" in "\n".join(exercise_problems(nb))
