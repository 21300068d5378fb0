"""scripts/plain_markup.py: the chapters without MyST or otter markup, for Jupyter and Colab readers."""

import nbformat
import pytest
from _scripts import ROOT, load_script

pytest.importorskip("pybtex", reason="pybtex (with jupyter-book) reads book/references.bib")
plain_markup = load_script(ROOT / "scripts" / "plain_markup.py", "plain_markup")

BIB = r"""
@inproceedings{ho2020denoising,
  author = {Ho, Jonathan and Jain, Ajay and Abbeel, Pieter},
  title = {Denoising Diffusion Probabilistic Models}, year = {2020},
  eprint = {2006.11239}, archiveprefix = {arXiv},
}
@misc{ho2022classifier,
  author = {Ho, Jonathan and Salimans, Tim}, title = {Classifier-Free Diffusion Guidance}, year = {2022},
  doi = {10.48550/arXiv.2207.12598},
}
@inproceedings{binkowski2018demystifying,
  author = {Bi{\'n}kowski, Miko{\l}aj}, title = {Demystifying {MMD} {GANs}}, year = {2018},
  url = {https://openreview.net/forum?id=r1lUOzWCW},
}
@misc{lu2022dpm, author = {Lu, Cheng and Zhou, Yuhao and Bao, Fan}, title = {A}, year = {2022}, eprint = {2206.00927}, archiveprefix = {arXiv}}
@misc{lu2022dpmpp, author = {Lu, Cheng and Zhou, Yuhao and Bao, Fan}, title = {B}, year = {2022}, eprint = {2211.01095}, archiveprefix = {arXiv}}
@techreport{nowhere2009, author = {Nobody, A.}, title = {Offline}, year = {2009}}
"""


@pytest.fixture
def bib(tmp_path):
    path = tmp_path / "references.bib"
    path.write_text(BIB)
    return plain_markup.references(path)


def test_citations_read_as_the_books_author_year_style_and_link_the_paper(bib):
    cite = plain_markup.citation
    assert cite("t", "ho2020denoising", bib) == "[Ho et al. (2020)](https://arxiv.org/abs/2006.11239)"
    assert cite("p", "ho2022classifier", bib) == "([Ho and Salimans, 2022](https://doi.org/10.48550/arXiv.2207.12598))"
    assert cite(None, "binkowski2018demystifying", bib) == "([Bińkowski, 2018](https://openreview.net/forum?id=r1lUOzWCW))"
    assert cite("p", "lu2022dpm, lu2022dpmpp", bib) == ("([Lu et al., 2022a](https://arxiv.org/abs/2206.00927); "
                                                        "[Lu et al., 2022b](https://arxiv.org/abs/2211.01095))")
    with pytest.raises(ValueError, match="nowhere2009 in book/references.bib has no url, doi or arXiv eprint"):
        cite("t", "nowhere2009", bib)
    with pytest.raises(ValueError, match="'missing2020' is not in"):
        cite("t", "missing2020", bib)


def test_every_bibliography_entry_has_an_address():
    assert [key for key, ref in plain_markup.references().items() if not ref["url"]] == []


def test_a_chapter_is_rewritten_once_and_then_left_alone(tmp_path, bib):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("As {cite:t}`ho2020denoising` show (see [below](models)), guidance "
                                      "{cite:p}`ho2022classifier` helps."),
        nbformat.v4.new_code_cell("x = '{cite:t}`ho2020denoising`'"),  # code is never touched
        nbformat.v4.new_markdown_cell("(models)=\n## Where models live\n\nText."),
    ])
    path = tmp_path / "01_demo.ipynb"
    nbformat.write(nb, path)
    assert plain_markup.convert(path, bib) is True
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].source == ("As [Ho et al. (2020)](https://arxiv.org/abs/2006.11239) show (see below, under *Where models "
                               "live*), guidance ([Ho and Salimans, 2022](https://doi.org/10.48550/arXiv.2207.12598)) helps.")
    assert cells[1].source == nb.cells[1].source
    assert cells[2].source == "## Where models live\n\nText."
    written = path.read_bytes()
    assert plain_markup.convert(path, bib) is False
    assert path.read_bytes() == written
