"""Static checks of the chapter notebooks (their execution is tested by `pytest --nbval notebooks/`)."""

import nbformat
import numpy as np
import pytest
from _scripts import ROOT, load_script

from diffusion_lib import viz
from diffusion_lib.course.notebook_rules import check_notebook, first_cell_source, notebook_paths

sync = load_script(ROOT / "scripts" / "sync_first_cell.py", "sync_first_cell").sync


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_notebook_follows_the_rules(path):
    assert check_notebook(path) == []


def test_there_are_notebooks():
    assert notebook_paths(), "no notebooks/NN_*.ipynb found"


def test_first_cell_does_nothing_off_colab():
    namespace = {}
    exec(compile(first_cell_source(), "_first_cell.py", "exec"), namespace)
    assert "subprocess" not in namespace  # the Colab branch did not run


def test_sync_inserts_and_repairs_the_setup_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "01_demo.ipynb"
    nbformat.write(nb, path)
    assert sync(path) is True
    cells = nbformat.read(path, as_version=4).cells
    assert [c.cell_type for c in cells] == ["markdown", "code", "code"]
    assert cells[1].source == first_cell_source() and cells[2].source == "x = 1"
    assert sync(path) is False  # already canonical: untouched

    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = "# an old set-up cell"
    nbformat.write(nb, path)
    assert sync(path) is True
    assert nbformat.read(path, as_version=4).cells[1].source == first_cell_source()


def test_check_reports_broken_rules(tmp_path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    params = nbformat.v4.new_code_cell("profile = get_profile()", metadata={"tags": ["parameters"]}, execution_count=1)
    noisy = nbformat.v4.new_code_cell("train()", execution_count=2)
    noisy.outputs = [nbformat.v4.new_output("stream", name="stderr", text="100%|██████████| 10/10 [00:01<00:00, 9.5it/s]")]
    broken = nbformat.v4.new_code_cell("1 / 0", execution_count=3)
    broken.outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="", traceback=[])]
    nb.cells = [nbformat.v4.new_code_cell("pass"), params, noisy, broken]
    path = tmp_path / "02_bad.ipynb"
    nbformat.write(nb, path)
    problems = "\n".join(check_notebook(path))
    assert "first code cell differs" in problems
    assert "cell 2 writes to stderr" in problems
    assert "cell 3 has an error output (ZeroDivisionError)" in problems

    noisy.source = "# NBVAL_IGNORE_OUTPUT\ntrain()"  # a marker readers would see
    nbformat.write(nb, path)
    assert "cell 2 has an nbval marker in its source" in "\n".join(check_notebook(path))

    noisy.source = "train()"
    noisy.metadata["tags"] = ["nbval-ignore-output"]
    noisy.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="saved /home/alice/runs/x.pt\n"))
    nbformat.write(nb, path)  # ignored by nbval, still shown in the book
    assert "cell 2 shows a path of this machine (/home/alice/runs/x.pt)" in "\n".join(check_notebook(path))

    noisy.outputs = [nbformat.v4.new_output("stream", name="stdout", text="loss 0.031\n")]  # marked: not compared
    nb.cells = [nbformat.v4.new_code_cell(first_cell_source(), metadata={"tags": ["setup", "hide-input"]}), params, noisy]
    shape = nbformat.v4.new_code_cell("x.shape", execution_count=4)
    shape.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "torch.Size([2, 3])"}, execution_count=4)]
    nb.cells.append(shape)
    nbformat.write(nb, path)
    assert check_notebook(path) == []


def test_check_refuses_widgets_and_progress_bars_even_in_marked_cells(tmp_path):
    """The static book shows every output and runs no kernel: a saved widget is a gap, a progress bar noise."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    setup = nbformat.v4.new_code_cell(first_cell_source(), metadata={"tags": ["setup", "hide-input"]})
    params = nbformat.v4.new_code_cell("profile = get_profile()", metadata={"tags": ["parameters"]}, execution_count=1)
    params.outputs = [nbformat.v4.new_output("stream", name="stdout", text="cpu\n")]
    marked = {"tags": ["nbval-ignore-output"]}
    slider = nbformat.v4.new_code_cell("viz.slider(show, 't', range(10))", metadata=marked, execution_count=2)
    slider.outputs = [nbformat.v4.new_output("execute_result", execution_count=2, data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "interactive(children=(IntSlider(value=0),))"})]
    encode = nbformat.v4.new_code_cell("encode_dataset(images, vae)", metadata=marked, execution_count=3)
    encode.outputs = [nbformat.v4.new_output("stream", name="stderr",
                                             text="encode:  40%|████      | 4/10 [00:01<00:02, 3.1img/s]")]
    nb.cells = [setup, params, slider, encode]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2, "version_minor": 0}}
    path = tmp_path / "03_widgets.ipynb"
    nbformat.write(nb, path)
    problems = "\n".join(check_notebook(path))
    assert "saves widget state" in problems
    assert "cell 2 shows a widget (application/vnd.jupyter.widget-view+json)" in problems
    assert "cell 3 shows a progress bar" in problems

    player = viz.FramePlayer([np.zeros((4, 4), np.uint8)] * 2, ["t = 0", "t = 1"])
    slider.outputs = [nbformat.v4.new_output("execute_result", execution_count=2,
                                             data={"text/html": player.html, "text/plain": repr(player)})]
    encode.outputs = [nbformat.v4.new_output("stream", name="stdout", text="60,000 latents in 148.0 s\n")]
    del nb.metadata["widgets"]
    nbformat.write(nb, path)
    assert check_notebook(path) == []


def test_check_refuses_myst_markup_that_jupyter_and_colab_show_as_text(tmp_path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    setup = nbformat.v4.new_code_cell(first_cell_source(), metadata={"tags": ["setup", "hide-input"]})
    params = nbformat.v4.new_code_cell("profile = get_profile()", metadata={"tags": ["parameters"]}, execution_count=1)
    shape = nbformat.v4.new_code_cell("x.shape", execution_count=2)
    shape.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "torch.Size([2, 3])"}, execution_count=2)]
    plain = nbformat.v4.new_markdown_cell("As [Ho et al. (2020)](https://arxiv.org/abs/2006.11239) show, $\\hat{x}_0$ "
                                          "and `x[{i}]`.\n\n```python\nprint(f\"{cite:t}`{key}`\")\n```")
    nb.cells = [plain, setup, params, shape]
    path = tmp_path / "03_demo.ipynb"
    nbformat.write(nb, path)
    assert check_notebook(path) == []  # links, LaTeX and code (even code that writes a role) are fine

    myst = ["As {cite:t}`ho2020denoising` show.", "```{note}\nA note.\n```", ":::{dropdown} Solution\nx\n:::",
            "(models)=\n## Models", "$$x = 1$$ (eq-one)"]
    nb.cells[4:] = [nbformat.v4.new_markdown_cell(source) for source in myst]
    nbformat.write(nb, path)
    problems = check_notebook(path)
    assert [p.split(" (", 1)[0] for p in problems] == ["cell 4 has a MyST role", "cell 5 has a MyST directive",
                                                       "cell 6 has a MyST directive", "cell 7 has a MyST target",
                                                       "cell 8 has a MyST equation label"]
    assert "({cite:t}`)" in problems[0] and "Jupyter and Colab show as text" in problems[0]

def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` (``diffusion_lib.x.y``) names a module or an attribute reachable from one."""
    import importlib

    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for part in parts[k:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_every_library_name_a_chapter_mentions_exists(path):
    """Prose and code name the library's modules by their dotted paths; a move must update them."""
    import re

    names = {m.group(0) for cell in nbformat.read(path, as_version=4).cells
             for m in re.finditer(r"diffusion_lib(?:\.[A-Za-z_][A-Za-z0-9_]*)+", cell.source)}
    assert [n for n in sorted(names) if not _resolves(n)] == []
