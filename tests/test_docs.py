"""The course site: it builds with `mkdocs build --strict`, and a chapter renders in a real browser.

The browser test serves the built site on localhost and opens a chapter in headless Chromium (Debian's
`chromium` package; `.ci/run` installs it). It checks that MathJax typeset the math, that the browser
fetched the chapter's figure, and keeps a screenshot under the temp folder for people to look at.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from grader.harness.course import existing_modules

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(tempfile.gettempdir()) / "llmlab-artifacts"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_site_builds_strict_with_every_chapter_and_figure(site):
    modules = existing_modules()
    assert modules
    for module in modules:
        page = site / module.chapter.removeprefix("docs/").removesuffix(".md") / "index.html"
        assert page.is_file(), f"no page for {module.name}'s chapter"
        html = page.read_text()
        figures = re.findall(r'src="(\.\./figures/[^"]+\.png)"', html)
        assert figures, f"the chapter of {module.name} shows no figure from docs/figures/"
        for figure in figures:
            assert (page.parent / figure).resolve().is_file(), f"{module.name}: {figure} was not drawn"
    for guide in ("instructors", "harness", "contract"):
        assert (site / guide / "index.html").is_file()


def test_each_chapter_shows_the_signatures_of_its_stub(site):
    for module in existing_modules():
        html = (site / module.name / "index.html").read_text()
        assert "What you write" in html, module.name
        assert "NotImplementedYet" not in html


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[tuple[str, int]] = []

    def log_request(self, code="-", size="-"):
        self.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, *args):
        pass


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium; .ci/run does)")
def test_a_chapter_renders_in_chromium_with_math_and_figures(site, tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(site))
    _QuietHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/01_rmsnorm/"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "01_rmsnorm.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000"]
    try:
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
        fetched = dict(_QuietHandler.requests)  # the first visit: nothing cached yet
        subprocess.run([*flags, f"--screenshot={screenshot}", "--window-size=1280,2200", url],
                       capture_output=True, text=True, timeout=180)
    finally:
        server.shutdown()
    assert "<mjx-container" in dom, "MathJax did not typeset the chapter's math"
    assert "\\(" not in re.sub(r"<script.*?</script>", "", dom, flags=re.S), "raw TeX is left on the page"
    figures = [path for path in fetched if path.endswith(".png") and "/figures/" in path]
    assert figures and all(fetched[p] == 200 for p in figures), f"figures not loaded: {fetched}"
    assert fetched.get("/javascripts/mathjax/tex-svg.js") == 200
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    print(f"screenshot of the rendered chapter: {screenshot}")


def test_no_heading_holds_math():
    """The table of contents shows headings as plain text: math in a heading appears there as raw LaTeX."""
    for chapter in sorted((ROOT / "docs").glob("*.md")):
        in_code = False
        for number, line in enumerate(chapter.read_text().splitlines(), start=1):
            in_code = not in_code if line.startswith("```") else in_code
            if not in_code and line.startswith("#"):
                assert "$" not in line and "\\(" not in line, f"{chapter.name}:{number}: math in a heading: {line}"


def test_math_in_tables_keeps_its_size(site):
    """Material shrinks every svg to its box; the site's stylesheet exempts MathJax's, so formulas in table cells stay legible."""
    css = (ROOT / "docs" / "stylesheets" / "extra.css").read_text()
    assert "mjx-container" in css and "max-width: none" in css
    assert "stylesheets/extra.css" in (site / "02_rope" / "index.html").read_text()


def test_the_contract_page_lists_every_function_of_every_module(site):
    """docs/contract.md is generated from the stubs: every function a stub asks for, with its docstring."""
    from grader.harness.loader import functions_still_to_write
    from grader.publish.contract import stub_of

    html = (site / "contract" / "index.html").read_text()
    for module in existing_modules():
        assert module.name in html
        for name in functions_still_to_write(stub_of(module)):
            assert name.rsplit(".", 1)[-1] in html, f"the contract page lacks {module.name}'s {name}"


def test_what_you_write_comes_from_the_reference_not_the_learners_file(tmp_path):
    """A learner who finished a module still sees its "What you write" section: it is built from the stub the
    reference generates, never from exercises/ (a course folder without exercises/ builds the same section)."""
    import shutil

    from grader.publish.contract import stub_of, what_you_write

    for module in existing_modules():
        (tmp_path / "solutions" / module.name).mkdir(parents=True)
        shutil.copyfile(ROOT / "solutions" / module.name / module.file, tmp_path / "solutions" / module.name / module.file)
        section = what_you_write(module, stub_of(module, tmp_path))
        assert section == what_you_write(module, stub_of(module))
        assert "def " in section or "class " in section
        assert "NotImplementedYet" not in section and "BEGIN SOLUTION" not in section


def test_the_docs_point_only_inside_the_repository():
    """The contract lives in the stubs' docstrings and docs/contract.md: no page points to a file outside the repository."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "AGENTS.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text and "/work/" not in text, f"{page.name} points outside the repository"
    assert "docs/contract.md" in (ROOT / "CONTRIBUTING.md").read_text()
