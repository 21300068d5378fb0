"""A page of the built book as a reader's browser shows it: headless Chromium (Debian's, driven by
playwright, which downloads no browser) at 1280 px, served from 127.0.0.1, nothing from the internet.

``check_page`` opens one page and returns what is wrong with it, by check:

- ``math``: raw TeX left in the text (``$…$``, ``\\(…\\)``), a math element MathJax did not typeset, or a
  TeX error MathJax rendered;
- ``broken_image``: an image of this site that did not load (naturalWidth 0);
- ``missing_file``: another file of this site the page asked for and did not get;
- ``js_error``: an uncaught exception or a console error;
- ``dead_player``: a ``diffusion_lib.viz.FramePlayer`` whose image and label do not change when its
  slider is moved with the keyboard;
- ``jumpy_player``: a player whose slider or button moves or changes size when its label changes (the
  slider would slip away from the reader's pointer during play);
- ``too_wide``: the page scrolls horizontally (wide tables may scroll inside their own box);
- ``wide_equation``: a display equation wider than its box, so that the reader sees it cut off at the
  right and must scroll inside it (a long one is split over lines, ``\\begin{aligned}``);
- ``machine_path``: an absolute path of somebody's machine in the text.

MathJax is the pinned npm copy scripts/install.sh puts in .cache/npm, served in place of the CDN URL the
pages name; every other request off 127.0.0.1 is refused and listed (``blocked``), and images from
other sites (the Colab badge) are not checked.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parents[1]
MATHJAX = ROOT / ".cache" / "npm" / "node_modules" / "mathjax"
WIDTH, HEIGHT = 1280, 900

# Somebody's machine: home folders, the scratch folder, this project's work folder. Not preceded by a
# word character or a dot, so URLs (https://example.org/tmp/...) and relative paths do not count.
MACHINE_PATH = re.compile(r"(?<![\w.~/-])(?:/(?:work|root|tmp)/|/home/\w+|/Users/\w+|[A-Z]:\\Users\\)")
# TeX a reader should never see: $…$, $$, \(, \), \[, \], \begin{
RAW_MATH = re.compile(r"\$\$|\$[^$\s][^$\n]*\$|\\[()\[\]]|\\begin\{")

# One pass over the page after MathJax has finished: the facts every check needs.
_INSPECT = """async () => {
  const wait = (promise, ms) => Promise.race([promise, new Promise(done => setTimeout(done, ms))]);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await wait(MathJax.startup.promise, 30000);
  const imgs = [...document.images];
  imgs.forEach(img => { img.loading = "eager"; });
  await Promise.all(imgs.map(img => img.complete ? null : wait(new Promise(done => {
    img.addEventListener("load", done); img.addEventListener("error", done); }), 10000)));
  // the text a reader reads, without code, printed output and typeset math
  const prose = document.body.cloneNode(true);
  prose.querySelectorAll("pre, code, script, style, textarea, mjx-container")
       .forEach(el => el.remove());
  const math = [...document.querySelectorAll(".math")];
  const page = document.scrollingElement;
  const tex = new Map();  // typeset element -> its TeX source, to name an equation in the report
  if (window.MathJax && MathJax.startup && MathJax.startup.document)
    for (const item of MathJax.startup.document.math) tex.set(item.typesetRoot, item.math.trim());
  return {
    prose: prose.innerText,
    text: document.body.innerText,
    math: math.length,
    untypeset: math.filter(el => !el.querySelector("mjx-container")).map(el => el.textContent.slice(0, 80)),
    tex_errors: [...document.querySelectorAll("mjx-merror")].map(el => el.getAttribute("data-mjx-error") || el.textContent),
    images: imgs.map(img => ({src: img.currentSrc || img.src, width: img.naturalWidth})),
    scroll_width: page.scrollWidth, client_width: page.clientWidth,
    players: document.querySelectorAll(".frame-player").length,
    wide_equations: [...document.querySelectorAll('mjx-container[display="true"]')]
      .filter(el => el.scrollWidth > el.clientWidth + 1)
      .map(el => ({hidden: el.scrollWidth - el.clientWidth, box: el.clientWidth, tex: (tex.get(el) || "").slice(0, 80)})),
  };
}"""

_FRAME = """root => ({src: root.querySelector("img") && root.querySelector("img").src,
               controls: [...root.querySelectorAll("button, input[type=range]")].map(el => {
                 const box = el.getBoundingClientRect();
                 return [el.tagName.toLowerCase(), Math.round(box.left + scrollX), Math.round(box.top + scrollY),
                         Math.round(box.width), Math.round(box.height)]; }),
               label: root.querySelector(".frame-player-label") && root.querySelector(".frame-player-label").textContent,
               value: root.querySelector("input[type=range]") && root.querySelector("input[type=range]").value,
               max: root.querySelector("input[type=range]") && root.querySelector("input[type=range]").max})"""

_IMAGE_LOADED = """async root => { const img = root.querySelector("img");
  try { await img.decode(); } catch (e) {} return img.naturalWidth; }"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def mathjax_version() -> str | None:
    package = MATHJAX / "package.json"
    return json.loads(package.read_text())["version"] if package.is_file() else None


@contextlib.contextmanager
def launch():
    """Debian's headless Chromium under playwright (one per process: playwright's sync API allows one)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium())
        try:
            yield browser
        finally:
            browser.close()


class Browser:
    """A window of ``launch()``'s Chromium, 1280 × 900, that sees only ``site`` (a ``http://127.0.0.1:PORT/``
    URL) and MathJax."""

    def __init__(self, chromium_browser, site: str):
        self.site = site
        self.mathjax_url = f"https://cdn.jsdelivr.net/npm/mathjax@{mathjax_version()}/"
        self._context = chromium_browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
        self._context.route("**/*", self._route)
        self.blocked: list[str] = []

    def _route(self, route):
        from playwright.sync_api import Error

        url = route.request.url
        local = MATHJAX / url[len(self.mathjax_url):].split("?")[0] if url.startswith(self.mathjax_url) else None
        try:
            if url.startswith(self.site):
                route.continue_()
            elif local is not None and local.is_file():
                route.fulfill(path=local)
            else:
                self.blocked.append(url)
                route.abort()
        except Error:  # the page was closed while its request waited
            pass

    def close(self):
        self._context.close()

    def check_page(self, url: str, screenshot: Path | None = None) -> tuple[dict[str, list[str]], dict]:
        """Problems by check (only the checks that failed) and what was seen (players, math, images)."""
        page = self._context.new_page()
        page.set_default_timeout(60_000)
        errors, missing = [], []
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        # a request that fails is reported once, by the image or missing-file check, not again as a console error
        page.on("console", lambda msg: errors.append(f"console: {msg.text}")
                if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)

        def note_failure(request, status):
            if request.url.startswith(self.site) and request.resource_type != "image" \
                    and not request.url.endswith("/favicon.ico"):
                missing.append(f"{request.url[len(self.site):]} ({status})")

        page.on("requestfailed", lambda request: note_failure(request, request.failure))
        page.on("response", lambda response: note_failure(response.request, response.status)
                if response.status >= 400 else None)
        blocked_before = len(self.blocked)
        try:
            page.goto(url, wait_until="load")
            if re.search(r'http-equiv="refresh"', urlopen(url).read().decode(), re.I):  # a redirect: where it leads
                page.wait_for_url(lambda landed: landed != url)
                page.wait_for_load_state("load")
            seen, landed = page.evaluate(_INSPECT), page.url
            problems = {
                "math": ([f"raw TeX: {m.group(0)!r} in …{seen['prose'][max(0, m.start() - 40):m.end() + 40]!r}…"
                          for m in RAW_MATH.finditer(seen["prose"])]
                         + [f"not typeset: {text!r}" for text in seen["untypeset"]]
                         + [f"TeX error: {text!r}" for text in seen["tex_errors"]]),
                "broken_image": [image["src"][:100] for image in seen["images"]
                                 if image["width"] == 0 and not self._foreign(image["src"])],
                "missing_file": missing,
                **dict(zip(("dead_player", "jumpy_player"), self._move_players(page))),
                "too_wide": ([f"the page is {seen['scroll_width']} px wide in a {seen['client_width']} px window"]
                             if seen["scroll_width"] > seen["client_width"] else []),
                "wide_equation": [f"{eq['hidden']} px of a {eq['box']} px display equation hidden: {eq['tex']!r}"
                                  for eq in seen["wide_equations"]],
                "machine_path": [f"{m.group(0)!r} in …{seen['text'][max(0, m.start() - 40):m.end() + 60]!r}…"
                                 for m in MACHINE_PATH.finditer(seen["text"])],
                "js_error": errors,
            }
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=screenshot, full_page=True)
        finally:
            page.close()
        info = {"players": seen["players"], "math": seen["math"], "images": len(seen["images"]),
                **({"redirects_to": landed[len(self.site):]} if landed != url else {}),
                "blocked": sorted(set(self.blocked[blocked_before:]))}
        return {check: found for check, found in problems.items() if found}, info

    def _foreign(self, src: str) -> bool:
        return not (src.startswith(self.site) or src.startswith("data:"))

    @staticmethod
    def _move_players(page) -> tuple[list[str], list[str]]:
        """Move every player's slider with the keyboard (End, or Home when it already shows the last
        frame): a working player shows another image, another label, and the new image loads (else it is
        dead), and its button and slider stay where they were (else it is jumpy)."""
        dead, jumpy = [], []
        players = page.locator(".frame-player")
        for i in range(players.count()):
            player = players.nth(i)
            before = player.evaluate(_FRAME)
            name = f"player {i + 1} ({player.get_attribute('id')})"
            if before["value"] is None or before["src"] is None or before["label"] is None:
                dead.append(f"{name}: no slider, image or label")
                continue
            if int(before["max"]) < 1:
                dead.append(f"{name}: a single frame")
                continue
            player.locator("input[type=range]").press("Home" if before["value"] == before["max"] else "End")
            after = player.evaluate(_FRAME)
            if after["value"] == before["value"]:
                dead.append(f"{name}: the slider did not move")
            elif after["src"] == before["src"] or after["label"] == before["label"]:
                dead.append(f"{name}: slider moved from {before['value']} to {after['value']} but the "
                            + ("image" if after["src"] == before["src"] else "label") + " stayed the same")
            elif player.evaluate(_IMAGE_LOADED) == 0:
                dead.append(f"{name}: frame {after['value']} did not load")
            if after["value"] != before["value"] and after["controls"] != before["controls"]:
                jumpy.append(f"{name}: from label {before['label']!r} to {after['label']!r} the controls "
                             f"(element, left, top, width, height) went from {before['controls']} to {after['controls']}")
        return dead, jumpy
