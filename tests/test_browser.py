"""The built book in a real browser: every page opened in headless Chromium at 1280 px (tests/_browser.py
says what is checked), and each check shown to fail on a small page with exactly that fault.

Needs Debian's chromium, playwright and MathJax in .cache/npm, all put there by scripts/install.sh
(`make install`); skipped, saying which is missing, where they are not. Besides passing or failing it
leaves, in _build/browser/ (git-ignored), report.json (per page: interactive players, math elements,
images, refused requests, seconds) and full-page 1280-px screenshots of chapters 01, 05, 08 and the
results page.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _browser import ROOT, Browser, chromium, launch, mathjax_version
from _http_server import FolderServer

OUT = ROOT / "_build" / "browser"
SCREENSHOTS = {"notebooks/01_forward_process.html", "notebooks/05_ddim.html",
               "notebooks/08_classifier_free_guidance.html", "book/results.html"}


def _skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (`pip install -r requirements.txt`, or `make install`)"
    if chromium() is None:
        return "no chromium on PATH (`make install` runs `apt-get install chromium` as root)"
    if mathjax_version() is None:
        return "no MathJax in .cache/npm (`make install` runs `npm install --prefix .cache/npm mathjax@3.2.2`)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=f"browser test skipped: {_skip_reason()}")


def _jupyter_book() -> str:
    return shutil.which("jupyter-book") or str(Path(sys.executable).with_name("jupyter-book"))


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """The book built as `make book` builds it (-W -n: any warning fails), into a fresh folder."""
    out = tmp_path_factory.mktemp("book")
    start = time.perf_counter()
    done = subprocess.run([_jupyter_book(), "build", str(ROOT), "-W", "-n", "--keep-going", "--path-output", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"the book does not build cleanly:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out / "_build" / "html", time.perf_counter() - start


@pytest.fixture(scope="module")
def chromium_browser():
    with launch() as browser:
        yield browser


@pytest.fixture(scope="module")
def site(book, chromium_browser):
    with FolderServer(book[0]) as server:
        browser = Browser(chromium_browser, server.url)
        try:
            yield book[0], server.url, browser
        finally:
            browser.close()


def test_every_page_of_the_book_reads_cleanly_in_chromium(book, site):
    html, url, browser = site
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html") if "_static" not in p.parts)
    assert {"book/results.html", "notebooks/01_forward_process.html"} <= set(pages)
    named = re.search(r'src="(https://cdn\.jsdelivr\.net/npm/mathjax@[^/"]+/)', (html / "book/notation.html").read_text())
    assert named and named.group(1) == browser.mathjax_url, (
        f"the pages load MathJax from {named and named.group(1)} but the test serves {browser.mathjax_url}: "
        "keep _config.yml's mathjax_path and MATHJAX_VERSION in scripts/install.sh the same")
    report, failures, start = {}, [], time.perf_counter()
    for page in pages:
        page_start = time.perf_counter()
        shot = OUT / "screenshots" / page.replace("/", "_").replace(".html", ".png") if page in SCREENSHOTS else None
        problems, info = browser.check_page(url + page, screenshot=shot)
        report[page] = {**info, "problems": problems, "seconds": round(time.perf_counter() - page_start, 2)}
        failures += [f"{page}: {check}: {found}" for check, found in problems.items()]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.json").write_text(json.dumps(
        {"build_seconds": round(book[1], 1), "browser_seconds": round(time.perf_counter() - start, 1),
         "mathjax": mathjax_version(), "width": 1280, "pages": report}, indent=1) + "\n")
    assert not failures, "what a reader would meet:\n" + "\n".join(failures)
    assert sum(r["math"] for r in report.values()) > 0, "no typeset math found on any page"


# ------------------------------------------------------------------------------------------ the checks fail
def _player_html() -> str:
    from diffusion_lib.viz import FramePlayer

    frames = [np.roll(np.arange(64, dtype=np.uint8).reshape(8, 8), i, axis=1) for i in range(3)]
    return FramePlayer(frames, ["t = 0", "t = 1", "t = 2, a label much longer than the others"],
                       title="three frames").html


def _page(body: str, mathjax: str) -> str:
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>synthetic</title>'
            f'<script defer src="https://cdn.jsdelivr.net/npm/mathjax@{mathjax}/es5/tex-mml-chtml.js"></script>'
            f'</head><body style="margin:0">{body}</body></html>')


# A page with a little of everything the book has, each working: typeset math (a display equation that fits its
# box), an image, a player, a wide table in its own scrolling box.
GOOD = ('<p>The mean <span class="math">\\(\\sqrt{\\bar\\alpha_t}\\, x_0\\)</span>.</p>'
        '<div class="math" style="max-width:400px">\\[x_t = \\sqrt{\\bar\\alpha_t}\\, x_0 + \\sqrt{1 - \\bar\\alpha_t}\\, \\varepsilon\\]</div>'
        '<img src="grid.png" alt="grid">{player}'
        '<div style="overflow-x:auto"><table><tr><td style="min-width:3000px">a wide table</td></tr></table></div>')
FAULTS = {
    "raw_math": ("math", "<p>the mean $\\mu$ of the data</p>"),
    "tex_error": ("math", '<p><span class="math">\\(\\frac{1}\\)</span></p>'),
    "broken_image": ("broken_image", '<img src="no_such_image.png" alt="gone">'),
    "missing_script": ("missing_file", '<script src="no_such_script.js"></script>'),
    "dead_slider": ("dead_player", "{dead_player}"),
    "jumpy_slider": ("jumpy_player", "{jumpy_player}"),
    "machine_path": ("machine_path", "<p>saved to /work/main/checkpoints/fashion_cfg.pt</p>"),
    "home_path": ("machine_path", "<pre>/home/alice/diffusion/runs/a</pre>"),
    "uncaught_error": ("js_error", "<script>undefined_function()</script>"),
    "console_error": ("js_error", '<script>console.error("something broke")</script>'),
    "too_wide": ("too_wide", '<div style="width:2000px">a figure wider than the window</div>'),
    # as the book's theme shows one: cut off at the right, scrolling inside its own box
    "wide_equation": ("wide_equation", '<style>mjx-container[display="true"] { overflow-x: auto }</style>'
                      '<div class="math" style="max-width:400px">\\[' + " + ".join(f"x_{{{i}}}" for i in range(40))
                      + '\\]</div>'),
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, chromium_browser):
    from PIL import Image

    folder = tmp_path_factory.mktemp("synthetic")
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(folder / "grid.png")
    player, other = _player_html(), _player_html()
    # the player whose script does nothing: its markup and frames without the script that moves them
    dead = re.sub(r"<script>.*?</script>", "", other, flags=re.S)
    assert dead != other
    # the player with its label back inside the slider's row, and no stylesheet: the slider's width follows
    # the label's length
    source = _player_html()
    jumpy = re.sub(r'(<input [^>]*>)</div>(<div class="frame-player-label"[^>]*>[^<]*</div>)', r"\1\2</div>", source)
    assert jumpy != source
    good = GOOD.replace("{player}", player)
    version = mathjax_version()
    (folder / "good.html").write_text(_page(good, version))
    for name, (_, fault) in FAULTS.items():
        fault = fault.replace("{dead_player}", dead).replace("{jumpy_player}", jumpy)
        (folder / f"{name}.html").write_text(_page(good + fault, version))
    with FolderServer(folder) as server:
        browser = Browser(chromium_browser, server.url)
        try:
            yield server.url, browser
        finally:
            browser.close()


def test_a_page_with_everything_working_passes(synthetic):
    url, browser = synthetic
    problems, info = browser.check_page(url + "good.html")
    assert problems == {}
    assert info["players"] == 1 and info["math"] == 2 and info["images"] == 2


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_check_fails_on_its_own_fault(synthetic, name):
    url, browser = synthetic
    problems, _ = browser.check_page(url + f"{name}.html")
    assert set(problems) == {FAULTS[name][0]}, problems
