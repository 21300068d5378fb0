"""The rules every chapter notebook follows, shared by the sync, execute and check scripts and the tests.

- Its first code cell is the set-up cell, exactly ``notebooks/_first_cell.py``, tagged
  ``setup`` (how the sync script finds it) and ``hide-input`` (collapsed in the book).
- One code cell is tagged ``parameters`` and reads the profile with ``get_profile()``.
- It is committed executed in the cpu profile: no errors, every code cell run, under 3 MB.
- nbval (smoke profile) compares every output against those cpu outputs, so a cell whose output
  depends on the profile or the run carries nbval's cell tag ``nbval-ignore-output`` (or
  ``nbval-skip``): a tag, in the cell's metadata, not a comment a reader would see.
- No widget is saved, neither as an output nor as the notebook's widget state, and no progress bar
  (a tqdm widget or its text): the static book has no kernel to drive a widget, and a progress bar
  tells a reader nothing. Interactive figures are precomputed players (``viz.FramePlayer``).
- Its Markdown reads the same in the book, Jupyter and Colab: no MyST role (``{cite:t}`key```),
  directive (```` ```{note} ````) or target (``(label)=``), which only the book renders; cite with a
  Markdown link (scripts/plain_markup.py rewrites citations).
- Exercises (for otter-grader, in cell metadata): the book shows their text and, behind a toggle,
  their solutions, never the tests; no reader sees otter's markers (``assignment_cells.exercise_problems``).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from .assignment_cells import exercise_problems

# The repository (a clone, or an editable install): the chapters live beside the package.
ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
FIRST_CELL_FILE = NOTEBOOKS / "_first_cell.py"
SETUP_TAGS = ["setup", "hide-input"]
MAX_BYTES = 3 * 1024 * 1024
IGNORE_TAGS = ("nbval-ignore-output", "nbval-skip")
KERNEL_NAME = "python3"

# Output text that differs between runs or machines, allowed only in marked cells.
RUN_DEPENDENT = {
    "a memory address": re.compile(r" at 0x[0-9a-fA-F]{6,}"),
    "a progress bar or rate": re.compile(r"\d+(\.\d+)?\s?(it/s|s/it)|\|[#█▏▎▍▌▋▊▉ ]{5,}\|"),
    "an absolute path": re.compile(r"(^|[\s'\"(])/(home|root|tmp|work|usr|content|Users)/"),
}


# A folder of one machine (a user's, a temporary or a server's one): never in a committed output, marked or not,
# because the book shows every output. System folders such as /usr/share/... are the same everywhere.
MACHINE_PATH = re.compile(r"(^|[\s'\"(])/(home|root|tmp|work|content|Users)/[^\s'\")]*")

# MyST markup that the book renders and Jupyter and Colab show as it is written.
MYST_MARKUP = {
    "a MyST role": re.compile(r"(?<![\w\\`])\{[a-z][\w:+-]*\}`"),
    "a MyST directive": re.compile(r"^[ \t]*(`{3,}|~{3,}|:{3,})[ \t]*\{", re.MULTILINE),
    "a MyST target": re.compile(r"^[ \t]*\([\w.:-]+\)=[ \t]*$", re.MULTILINE),
    "a MyST equation label": re.compile(r"\$\$[ \t]*\([\w.:-]+\)"),
}
# A fenced block of code (not a directive): its text is shown as code everywhere.
CODE_BLOCK = re.compile(r"^[ \t]*(`{3,}|~{3,})(?![ \t]*\{).*?^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)


# A tqdm bar as text ("encode:  40%|████      | 4/10 [00:01<00:02, 3.1it/s]"): never in a committed output.
PROGRESS_BAR = re.compile(r"\d+%\|[^\n|]*\|\s*\d|\[\d+:\d{2}<(\d+:\d{2}|\?)")
WIDGET_MIME = "application/vnd.jupyter.widget"


def kernel_environment(profile: str) -> dict[str, str]:
    """The environment of a chapter's kernel, the same under nbval and when the outputs are committed."""
    return {
        "DIFFUSION_PROFILE": profile,
        # figures as inline PNG outputs even where MPLBACKEND=Agg is set for scripts
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "PYTHONHASHSEED": "0",
    }


def notebook_paths() -> list[Path]:
    """The chapter notebooks: notebooks/NN_name.ipynb."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def first_cell_source() -> str:
    return FIRST_CELL_FILE.read_text().strip("\n")


def is_marked(cell) -> bool:
    return any(tag in IGNORE_TAGS for tag in cell.metadata.get("tags", []))


def output_text(output) -> str:
    if output.output_type == "stream":
        return output.text
    data = output.get("data", {})
    return "\n".join(str(data[k]) for k in ("text/plain", "text/html", "text/markdown") if k in data)


def check_notebook(path: Path) -> list[str]:
    """Every rule the notebook at ``path`` breaks, as readable lines (empty when it is fine)."""
    problems = []
    if path.stat().st_size >= MAX_BYTES:
        problems.append(f"{path.stat().st_size / 2**20:.1f} MB; keep notebooks under 3 MB (smaller figures)")
    nb = nbformat.read(path, as_version=4)
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as error:
        problems.append(f"invalid notebook: {error.message}")
    if "widgets" in nb.metadata:
        problems.append("the notebook saves widget state (metadata 'widgets'), which the static book cannot run: "
                        "show a viz.FramePlayer instead of a widget and execute with scripts/execute_notebooks.py")
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel != KERNEL_NAME:
        problems.append(f"kernelspec name is {kernel!r}; use {KERNEL_NAME!r}")

    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if not code:
        return problems + ["no code cells"]
    first = code[0][1]
    if first.source.strip("\n") != first_cell_source():
        problems.append("first code cell differs from notebooks/_first_cell.py: run scripts/sync_first_cell.py")
    if first.outputs:
        problems.append("the set-up cell has outputs; off Colab it must print nothing")
    if sorted(first.metadata.get("tags", [])) != sorted(SETUP_TAGS):
        problems.append(f"the set-up cell's tags must be {SETUP_TAGS}: run scripts/sync_first_cell.py")

    parameters = [c for _, c in code if "parameters" in c.metadata.get("tags", [])]
    if len(parameters) != 1:
        problems.append(f"{len(parameters)} cells tagged 'parameters'; exactly one must read the profile")
    elif "get_profile()" not in parameters[0].source:
        problems.append("the 'parameters' cell must read the profile with get_profile()")

    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            text = CODE_BLOCK.sub("", cell.source)
            for name, rx in MYST_MARKUP.items():
                found = rx.search(text)
                if found:
                    problems.append(f"cell {i} has {name} ({found.group(0).strip()}), which Jupyter and Colab show as "
                                    f"text: write plain Markdown, e.g. a link to cite (scripts/plain_markup.py rewrites citations and targets)")

    compared = 0
    for i, cell in code:
        where = f"cell {i}"
        if cell.source.rstrip().endswith(";"):
            problems.append(f"{where} ends with ';', which nbval ignores: assign the value instead (fig = ...)")
        if any(o.output_type == "execute_result" and str(o.data.get("text/plain", "")).startswith("<Figure")
               for o in cell.outputs):
            problems.append(f"{where} leaves a figure as its value, so it is shown twice: assign it (fig = ...)")
        if "NBVAL_" in cell.source:
            problems.append(f"{where} has an nbval marker in its source, which readers see: remove it and tag "
                            f"the cell 'nbval-ignore-output' (or 'nbval-skip') instead")
        if cell.execution_count is None and cell is not first:
            problems.append(f"{where} was not executed; commit notebooks run with `make notebooks`")
        for output in cell.outputs:
            if output.output_type == "error":
                problems.append(f"{where} has an error output ({output.get('ename')})")
            widget = next((k for k in output.get("data", {}) if k.startswith(WIDGET_MIME)), None)
            if widget:
                problems.append(f"{where} shows a widget ({widget}), a gap in the static book: show a "
                                f"viz.FramePlayer, and pass progress=False to what draws a progress bar")
            elif PROGRESS_BAR.search(output_text(output)):
                problems.append(f"{where} shows a progress bar: pass progress=False (or progress=profile == 'gpu')")
            path = MACHINE_PATH.search(output_text(output))
            if path:
                problems.append(f"{where} shows a path of this machine ({path.group(0).strip()}): print it "
                                f"relative to the repository or under ~")
        if cell.outputs and not is_marked(cell):
            compared += 1
            for output in cell.outputs:
                reason = None
                if output.output_type == "stream" and output.name == "stderr":
                    reason = "writes to stderr (warnings, progress bars)"
                else:
                    text = output_text(output)
                    reason = next((f"shows {name}" for name, rx in RUN_DEPENDENT.items() if rx.search(text)), None)
                if reason:
                    problems.append(f"{where} {reason} but is not tagged 'nbval-ignore-output'")
                    break
    if compared == 0:
        problems.append("no cell's output is compared by nbval; keep some deterministic cells unmarked")
    return problems + [f"exercises: {problem}" for problem in exercise_problems(nb)]
