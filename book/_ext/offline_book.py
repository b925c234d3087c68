"""Sphinx extension: a built book that works offline and loads without errors in a browser.

It does four things, each checked page by page by `tools/book_check.py` in headless Chromium.

**MathJax ships with the book.**
Sphinx loads MathJax from a CDN by default; a book read without network then shows raw TeX.
The PyPI package `django-static-mathjax` (a pinned requirement) carries MathJax 3's `es5/`
bundle as plain static files; this extension points `mathjax_path` at a copy of that bundle
inside the book's `_static/` and copies the bundle there when the HTML build finishes. Only
`es5/` is copied (about 24 MB): the combined `tex-mml-chtml.js`, its fonts, and the extensions
MathJax loads on demand.

**Each inline script once.** sphinx-thebe registers its configuration script (`const
THEBE_JS_URL = ...`) once per environment update, so a page can carry it twice and the second
copy throws "Identifier 'THEBE_JS_URL' has already been declared". Duplicates are dropped.

**A valid theme mode.** pydata-sphinx-theme reads `default_mode` from the HTML context; left
empty, a reader's first visit logs "Got invalid theme mode". It is set to `auto` (the browser's
preference) unless the configuration names one.

**Code that fits the page.** `static/intasr_book.css` (added to every page) sets code cells
at a size where the notebooks' 88-character lines fit a 1280 px window, and wraps the lines of
parameter cells (papermill's injected values can be any length) instead of scrolling them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ENTRY = "mathjax/es5/tex-mml-chtml.js"   # relative to _static/ (Sphinx prefixes _static/)
STATIC = Path(__file__).resolve().parent / "static"
CSS = "intasr_book.css"                # in STATIC, copied to _static/ by Sphinx


def mathjax_bundle() -> Path:
    """The installed MathJax 3 `es5/` folder; a one-line error when the package is missing."""
    try:
        import mathjax   # the module of django-static-mathjax
    except ImportError as e:
        raise RuntimeError("offline_mathjax: the Python package django-static-mathjax is not installed "
                           "(`make setup` installs it from requirements.txt)") from e
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise RuntimeError(f"offline_mathjax: {es5}/tex-mml-chtml.js not found: the installed `mathjax` "
                           "module is not django-static-mathjax's MathJax 3 bundle")
    return es5


def _configure(app, config) -> None:
    mathjax_bundle()                      # fail at the start of the build, not after it
    config.mathjax_path = ENTRY
    config.html_context.setdefault("default_mode", "auto")
    config.html_static_path = [*config.html_static_path, str(STATIC)]


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # an inline script's file name is None when added, '' after a reload: both mean "no file"
        key = (getattr(script, "filename", None) or "",
               tuple(sorted((k, str(v)) for k, v in getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def _copy_bundle(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax" / "es5"
    shutil.copytree(mathjax_bundle(), target, dirs_exist_ok=True)


def setup(app):
    # after the user's config is read; priority > 500 so that it wins over any extension default
    app.connect("config-inited", _configure, priority=900)
    # early: a later listener may end the event by returning a template name (emit_firstresult)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=100)
    app.connect("build-finished", _copy_bundle)
    app.add_css_file(CSS)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
