"""The book's sources: notebooks, table of contents, config, paper data, and tools/run_notebooks.py.

Fast: no chapter is executed. The run_notebooks cache test executes a throwaway two-cell
notebook with papermill for real (a few seconds per run).
"""
import csv
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RUNNER = ROOT / "tools" / "run_notebooks.py"


def _load_runner():
    return load_script(RUNNER)


def _toc_files(entries):
    for entry in entries or []:
        if "file" in entry:
            yield entry["file"]
        for key in ("chapters", "sections", "parts"):
            yield from _toc_files(entry.get(key))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/NN_*.ipynb not found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_valid_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters', want exactly 1"
    assert tagged[0].cell_type == "code"
    assert nb.metadata["kernelspec"]["name"] == "intasr"
    # Sources are committed without outputs: the executed copies live in book/chapters/.
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"
    # papermill must understand every assignment in the parameters cell (one name per line).
    import papermill as pm

    declared = set(pm.inspect_notebook(str(path)))
    assigned = set(re.findall(r"^([A-Za-z_]\w*)\s*=", tagged[0].source, flags=re.M))
    assert assigned and assigned <= declared, f"{path.name}: papermill cannot parse {assigned - declared}"


def test_toc_chapters_exist():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
    root = toc["root"]
    assert (ROOT / f"{root}.md").is_file() or (ROOT / f"{root}.ipynb").is_file()
    files = list(_toc_files(toc.get("chapters")) if "chapters" in toc else _toc_files(toc.get("parts")))
    assert files, "_toc.yml lists no chapters"
    for f in files:
        if f.startswith("book/chapters/"):
            src = ROOT / "notebooks" / (f.removeprefix("book/chapters/") + ".ipynb")
            assert src.is_file(), f"_toc.yml: {f} has no source notebook {src.relative_to(ROOT)}"
        else:
            assert any((ROOT / (f + ext)).is_file() for ext in (".md", ".ipynb")), f"_toc.yml: {f} not found"
    # every source notebook is a chapter
    listed = {f.removeprefix("book/chapters/") for f in files}
    assert {p.stem for p in NOTEBOOKS} <= listed, "a notebook in notebooks/ is missing from _toc.yml"


def test_config_renders_stored_outputs_offline():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["only_build_toc_files"] is True
    for pattern in (".venv", "build", "lib", "tests", "notebooks"):
        assert pattern in cfg["exclude_patterns"]
    for bib in cfg.get("bibtex_bibfiles", []):
        assert (ROOT / bib).is_file()
    assert not cfg["launch_buttons"].get("binderhub_url") and not cfg["launch_buttons"].get("colab_url")
    assert not cfg["launch_buttons"].get("thebe")


def test_paper_results_tables():
    rows = list(csv.DictReader(open(ROOT / "data" / "paper_results.csv")))
    assert set(rows[0]) == {"table", "model", "method", "w_bits", "a_bits", "split", "wer", "size_mb", "bops_t",
                            "source"}

    def wer(table, model, method, w, split):
        hits = [r for r in rows if (r["table"], r["model"], r["method"], r["w_bits"], r["split"])
                == (str(table), model, method, str(w), split)]
        assert len(hits) == 1, (table, model, method, w, split)
        return float(hits[0]["wer"])

    assert wer(1, "QuartzNet15x5", "baseline", 32, "test-other") == 10.08
    assert wer(1, "QuartzNet15x5", "synthetic", 8, "test-other") == 10.37
    assert wer(1, "Conformer-Large", "synthetic", 6, "dev-clean") == 3.63
    assert wer(2, "QuartzNet15x5", "random", 8, "test-other") == 12.55
    assert wer(2, "QuartzNet15x5", "random", 6, "test-other") == 14.10
    # Table 1: 3 models x 3 settings x 4 splits; Table 2: 4 quantized rows x 4 splits + 2 baseline values
    assert sum(r["table"] == "1" for r in rows) == 36
    assert sum(r["table"] == "2" for r in rows) == 18
    # The text's deltas: random data costs 2.47 / 4.02 test-other points more than FP32 at W8A8 / W6A8.
    assert round(wer(2, "QuartzNet15x5", "random", 8, "test-other") - 10.08, 2) == 2.47
    assert round(wer(2, "QuartzNet15x5", "random", 6, "test-other") - 10.08, 2) == 4.02
    lat = list(csv.DictReader(open(ROOT / "data" / "paper_latency.csv")))
    assert any(r["metric"] == "speedup" and float(r["value"]) == 2.35 for r in lat)


def test_run_notebooks_help():
    out = subprocess.run([sys.executable, str(RUNNER), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--only", "--profile", "--force", "-p"):
        assert flag in out.stdout


def _tiny_notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "intasr", "display_name": "intasr", "language": "python"}
    params = nbformat.v4.new_code_cell("value = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


def _executed_value(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)   # normalizes multi-line text fields
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])).strip()


def test_run_notebooks_caches_forces_and_writes_atomically(tmp_path, capsys):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("intasr")
    except NoSuchKernel:
        pytest.skip("Jupyter kernel 'intasr' not installed (make setup installs it)")
    runner = _load_runner()
    nb_dir, out_dir, fail_dir = tmp_path / "nb", tmp_path / "out", tmp_path / "failures"
    nb_dir.mkdir()
    dep = tmp_path / "dep.py"
    dep.write_text("# a library source\n")
    old = time.time() - 100
    os.utime(dep, (old, old))
    nb = nb_dir / "01_tiny.ipynb"
    _tiny_notebook(nb, "print('value', value)")
    os.utime(nb, (old, old))
    out = out_dir / "01_tiny.ipynb"
    base = ["--notebooks-dir", str(nb_dir), "--out-dir", str(out_dir), "--failures-dir", str(fail_dir),
            "--deps", str(dep), "--cwd", str(tmp_path)]

    def run(*extra):
        code = runner.main([*base, *extra])
        return code, capsys.readouterr().out

    code, log = run()
    assert code == 0, log
    assert _executed_value(out) == "value 1"
    assert sorted(p.name for p in out_dir.iterdir()) == ["01_tiny.ipynb"]  # no temp file left behind
    first = out.stat().st_mtime

    code, log = run()                                  # nothing changed: cached
    assert code == 0 and "up to date" in log and out.stat().st_mtime == first

    code, log = run("-p", "value", "2")                # a parameter changed: rerun
    assert code == 0 and "parameters changed" in log and _executed_value(out) == "value 2"
    code, log = run("-p", "value", "2")
    assert "up to date" in log

    new = time.time() + 5                              # a dependency changed: rerun
    os.utime(dep, (new, new))
    code, log = run("-p", "value", "2")
    assert code == 0 and "dep.py" in log and "running" in log
    os.utime(dep, (old, old))

    code, log = run("-p", "value", "2", "--force")     # --force reruns an up-to-date notebook
    assert code == 0 and "running (--force)" in log

    code, log = run("-p", "nonexistent", "1")          # unknown parameter: usage error
    assert code == 2

    # A failing run exits 1, names the notebook, and leaves the previous executed copy intact.
    before = out.read_bytes()
    _tiny_notebook(nb, "raise RuntimeError('boom')")
    code, log = run("-p", "value", "2", "--only", "01")
    assert code == 1 and "01_tiny.ipynb" in log and "boom" in log
    assert out.read_bytes() == before
    assert (fail_dir / "01_tiny.ipynb").is_file()
    assert sorted(p.name for p in out_dir.iterdir()) == ["01_tiny.ipynb"]

    assert run("--only", "99")[0] == 2                 # --only with no match is an error


# --- tools/book_check.py: the built book in headless Chromium -------------------------------------

CHECKER = ROOT / "tools" / "book_check.py"


def _load_checker():
    return load_script(CHECKER)


def _mathjax_es5():
    """MathJax 3's es5 bundle as the book ships it (book/_ext/offline_book.py), or skip."""
    mod = load_script(ROOT / "book" / "_ext" / "offline_book.py")
    try:
        return mod.mathjax_bundle()
    except RuntimeError as e:
        pytest.skip(str(e))


# A page as Sphinx writes math: inline \( \) and display \[ \] inside elements of class "math".
MATH_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8">{head}</head><body>
<p>Inline <span class="math notranslate nohighlight">\\(q = \\mathrm{{round}}(x / S)\\)</span> and display:</p>
<div class="math notranslate nohighlight">\\[ y = \\frac{{a}}{{b}} \\]</div>
{extra}
</body></html>"""


def test_book_check_passes_a_clean_page_and_fails_a_broken_one(tmp_path):
    checker = _load_checker()
    if checker.find_chromium(os.environ.get("CHROMIUM")) is None:
        pytest.skip("Chromium not installed (Debian: apt-get install -y chromium)")
    es5 = _mathjax_es5()
    site = tmp_path / "html"
    (site / "_static" / "mathjax").mkdir(parents=True)
    (site / "_static" / "mathjax" / "es5").symlink_to(es5, target_is_directory=True)
    mathjax = '<script defer src="_static/mathjax/es5/tex-mml-chtml.js"></script>'
    (site / "clean.html").write_text(MATH_PAGE.format(head=mathjax, extra="<pre>\\(code is not math\\)</pre>"))
    # broken: MathJax from a CDN (offline: fails), a missing image, a script error, raw TeX in prose
    broken = MATH_PAGE.format(
        head='<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>',
        extra='<img src="figures/missing.png"><script>undefined_function()</script><p>raw $$x^2$$ here</p>')
    (site / "broken.html").write_text(broken)

    def run(page):
        out = io.StringIO()
        code = checker.check(site, [page], timeout=60, out=out)
        return code, out.getvalue()

    code, log = run("clean.html")
    assert code == 0, log
    assert "ok   clean.html (2 formulas" in log

    code, log = run("broken.html")
    assert code == 1, log
    assert "FAIL broken.html" in log
    assert "formula left untypeset: '\\\\(q = \\\\mathrm{round}(x / S)\\\\)'" in log
    assert "raw TeX in the page text" in log and "$$x^2$$" in log
    assert "fetches a remote resource: https://cdn.jsdelivr.net/" in log
    assert "HTTP 404" in log and "figures/missing.png" in log
    assert "image not shown: http://127.0.0.1:" in log
    assert "JavaScript error: ReferenceError: undefined_function is not defined" in log

    assert checker.main([str(tmp_path / "nowhere")]) == 2


def _code_cell(code: str, tags: tuple[str, ...] = ()) -> str:
    """A code cell as myst-nb writes it: its tags become tag_<name> classes."""
    classes = " ".join(["cell", *(f"tag_{t}" for t in tags)])
    return (f'<div class="{classes} docutils container"><div class="cell_input docutils container">'
            f'<div class="highlight-ipython3 notranslate"><div class="highlight"><pre>{code}</pre>'
            f"</div></div></div></div>")


def test_book_check_fails_code_that_scrolls_sideways(tmp_path):
    """At 1280 px a code cell must not scroll: with the book's CSS an 88-character line fits a
    cell as wide as the theme's (672 px), a long parameter line wraps, a collapsed cell is not
    counted; without the CSS the same 88 characters scroll."""
    checker = _load_checker()
    if checker.find_chromium(os.environ.get("CHROMIUM")) is None:
        pytest.skip("Chromium not installed (Debian: apt-get install -y chromium)")
    site = tmp_path / "html"
    (site / "_static").mkdir(parents=True)
    css = ROOT / "book" / "_ext" / "static" / "intasr_book.css"
    (site / "_static" / css.name).write_bytes(css.read_bytes())
    line = "x = " + "a" * (PAGE_WIDTH - 4)
    long_path = "model_path = '" + "/very/long/folder" * 12 + "/model.nemo'"
    cells = (_code_cell(line) + _code_cell(long_path, ("parameters",))
             + _code_cell("y = " + "b" * 200, ("injected-parameters",))
             + f"<details><summary>show code</summary>{_code_cell('z = ' + 'c' * 200)}</details>")

    def page(name, with_css, body):
        link = f'<link rel="stylesheet" href="_static/{css.name}">' if with_css else ""
        (site / name).write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8">{link}</head>'
                                 f'<body><article style="width: 672px">{body}</article></body></html>')

    page("fits.html", True, cells)
    page("no_css.html", False, _code_cell(line))
    page("too_long.html", True, _code_cell("w = " + "d" * 120))

    def run(name):
        out = io.StringIO()
        return checker.check(site, [name], timeout=60, out=out), out.getvalue()

    code, log = run("fits.html")
    assert code == 0, log
    for name in ("no_css.html", "too_long.html"):
        code, log = run(name)
        assert code == 1 and f"FAIL {name}" in log, log
        assert "code scrolls sideways at 1280 px" in log and "672 px box" in log, log


def test_book_config_ships_mathjax_offline():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["sphinx"]["local_extensions"] == {"offline_book": "book/_ext"}
    assert "mathjax_path" not in cfg["sphinx"].get("config", {}), "offline_book sets mathjax_path"
    es5 = _mathjax_es5()
    assert (es5 / "tex-mml-chtml.js").stat().st_size > 500_000
    assert any((es5 / "output" / "chtml" / "fonts" / "woff-v2").glob("MathJax_Main-Regular.woff"))


# --- pages that read as a course --------------------------------------------------------------------

PAGE_WIDTH = 88   # characters of code that fit the page at 1280 px without a horizontal scroll
HIDDEN = {"hide-input", "remove-input", "remove-cell"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_opens_with_what_a_reader_needs(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    need = nb.cells[1]
    assert need.cell_type == "markdown" and "{admonition} What you need" in need.source, \
        f"{path.name}: the cell after the title should be the 'What you need' admonition"
    for item in ("**Time and hardware**", "**Data**", "**Before this chapter**"):
        assert item in need.source, f"{path.name}: 'What you need' lacks {item}"
    # the time quoted is the page's own, measured in the run (glued by a removed cell)
    assert "{glue:text}`runtime_min`" in need.source
    assert any('glue("runtime_min"' in c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_ends_with_exercises_and_folded_solutions(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "markdown" and "## Exercises" in c.source]
    assert len(cells) == 1, f"{path.name}: one '## Exercises' section"
    text = cells[0].source[cells[0].source.index("## Exercises"):]
    exercises = re.findall(r"^\d\. \*\*", text, flags=re.M)
    solutions = re.findall(r":::\{admonition\} Solution\n\s*:class: dropdown", text)
    assert 2 <= len(exercises) <= 4, f"{path.name}: {len(exercises)} exercises, want 2-4"
    assert len(solutions) == len(exercises), f"{path.name}: every exercise needs a collapsed solution"
    # nothing but the run-time cell comes after the exercises
    after = nb.cells[nb.cells.index(cells[0]) + 1:]
    assert all("remove-cell" in c.metadata.get("tags", []) for c in after), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_visible_code_fits_the_page(path):
    nb = nbformat.read(path, as_version=4)
    long = [(i, line) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and not HIDDEN & set(c.metadata.get("tags", [])) for line in c.source.splitlines()
            if len(line) > PAGE_WIDTH]
    assert not long, f"{path.name}: visible code lines over {PAGE_WIDTH} characters: {long[:3]}"
    # the imports are plumbing: collapsed
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "import" in first_code.source and HIDDEN & set(first_code.metadata.get("tags", []))


def _paper_values():
    rows = list(csv.DictReader(open(ROOT / "data" / "paper_results.csv")))
    fp32 = {(r["table"], r["model"], r["split"]): float(r["wer"]) for r in rows if r["method"] == "baseline"}
    values = {r["wer"] for r in rows if r["wer"]}
    # the degradations the paper's text quotes for QuartzNet-15x5 on test-other (+0.29, +2.47, ...)
    # are as typed as the WERs; smaller differences would match unrelated numbers (a learning rate)
    values |= {f"{float(r['wer']) - fp32[(r['table'], r['model'], r['split'])]:.2f}" for r in rows
               if r["wer"] and r["model"] == "QuartzNet15x5" and r["split"] == "test-other"
               and r["method"] != "baseline"}
    return {v for v in values if re.fullmatch(r"\d+\.\d\d", v) and float(v) >= 0.25}


@pytest.mark.parametrize("path", [*NOTEBOOKS, ROOT / "book" / "intro.md"],
                         ids=[*(p.stem for p in NOTEBOOKS), "intro"])
def test_paper_numbers_are_read_from_data_not_typed(path):
    """Prose and code take the paper's WERs (and their differences) from data/paper_results.csv."""
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
        texts = [(i, c.source) for i, c in enumerate(nb.cells) if "parameters" not in c.metadata.get("tags", [])]
    else:
        texts = [(0, path.read_text())]
    values = _paper_values()
    assert "10.08" in values and "0.29" in values and "2.47" in values   # the check itself can see them
    typed = [(i, m.group(0)) for i, text in texts
             for m in re.finditer(r"(?<![\d.])\d+\.\d\d(?![\d])", text) if m.group(0) in values]
    assert not typed, f"{path.name}: paper numbers typed instead of read from data/: {typed[:5]}"


HIDDEN_TAGS = {"hide-input", "remove-input", "hide-cell", "remove-cell"}


def _code_cells(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            lines = [line for line in cell.source.splitlines() if line.strip()]
            yield bool(HIDDEN_TAGS & set(cell.get("metadata", {}).get("tags", []))), lines


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_reads_prose_first(path):
    """A visible code cell is short and calls the library (at most 15 non-blank lines); a hidden
    one only glues or plots (at most 30): the computing lives in lib/, with its tests."""
    long_ = [(hidden, len(lines), lines[0][:60]) for hidden, lines in _code_cells(path)
             if len(lines) > (30 if hidden else 15)]
    assert not long_, f"{path.name}: cells over the limit (hidden?, lines, first line): {long_}"
