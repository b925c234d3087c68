#!/usr/bin/env python
"""Open every page of the built book in headless Chromium and fail on what a reader would see broken.

    python tools/book_check.py build/book/_build/html          # every *.html under the folder
    python tools/book_check.py DIR --page book/chapters/02_quantization_basics.html

The folder is served from a localhost HTTP server; Chromium runs offline (every host name but
127.0.0.1 fails to resolve), so a page that needs the network fails here as it would for a
reader without one. A page fails when

* a formula is left untypeset: a Sphinx math element (`.math`) without MathJax output, or raw
  `\\(`, `\\[` or `$$` in the rendered text outside code;
* a request fails or an image does not display: a missing image, script or stylesheet (HTTP
  status >= 400, or a network error), or any request to a remote host;
* it logs a JavaScript error (an uncaught exception, `console.error`, or an error in the log);
* a code cell's code scrolls sideways in a 1280 px wide window: its `<pre>` is wider than its
  box (scrollWidth > clientWidth + 1). Cells collapsed in a closed `<details>` (hide-input) are
  not counted.

Chromium is driven through the DevTools protocol over a websocket (`websocket-client`), so no
browser driver is needed: the Debian package `chromium` is enough. Exit status: 0 when every page
is clean, 1 when a page has a problem (each is printed), 2 when the check cannot run (no
Chromium, no pages).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT_WIDTH = 1280   # px: a laptop screen; code cells must fit without a horizontal scroll
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-default-apps", "--disable-extensions", f"--window-size={VIEWPORT_WIDTH},900",
                  # offline: nothing but the local server resolves
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]

# Runs in the page once it has loaded: waits for MathJax's first typeset, then lists what is
# left untypeset. Text inside code (pre, code, script, style) and inside MathJax's own output
# is not prose.
INSPECT_JS = r"""
(async () => {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) {
    try { await mj.startup.promise; } catch (e) { return {error: "MathJax startup failed: " + e}; }
  }
  // every image loads, including lazy ones below the fold
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(img => {
    if (img.complete) return null;
    img.loading = "eager";
    return new Promise(done => { img.addEventListener("load", done); img.addEventListener("error", done);
                                 setTimeout(done, 10000); });
  }));
  const broken = imgs.filter(img => !img.complete || img.naturalWidth === 0).map(img => img.currentSrc || img.src);
  const maths = Array.from(document.querySelectorAll(".math"));
  const untypeset = maths.filter(el => !el.querySelector("mjx-container") && !el.closest("mjx-container"))
                         .map(el => el.textContent.trim().slice(0, 80));
  const raw = [];
  if (!document.body) return {maths: maths.length, untypeset: untypeset, raw: raw, broken: broken, wide: []};
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const skip = "pre, code, script, style, textarea, mjx-container, .highlight, .math";
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const p = n.parentElement;
    if (!p || p.closest(skip)) continue;
    const t = n.textContent;
    for (const token of ["\\(", "\\[", "$$"]) {
      const i = t.indexOf(token);
      if (i >= 0) { raw.push(t.slice(Math.max(0, i - 30), i + 50).replace(/\s+/g, " ").trim()); break; }
    }
  }
  // code that scrolls sideways at this viewport: a code cell's <pre> wider than its box
  // (a collapsed hide-input cell is out of sight until the reader opens it: not counted)
  const wide = Array.from(document.querySelectorAll(CODE_PRE))
    .filter(pre => !pre.closest("details:not([open])"))
    .filter(pre => pre.clientWidth > 0 && pre.scrollWidth > pre.clientWidth + 1)
    .map(pre => {
      const longest = pre.textContent.split("\n").reduce((a, b) => (b.length > a.length ? b : a), "");
      return {scroll: pre.scrollWidth, client: pre.clientWidth, line: longest.trim().slice(0, 60)};
    });
  return {maths: maths.length, untypeset: untypeset, raw: raw, broken: broken, wide: wide};
})()
"""


# the code of a code cell as myst-nb renders it (the input; outputs may be wide tables)
CODE_PRE_SELECTOR = "div.cell div.cell_input pre"
INSPECT_JS = INSPECT_JS.replace("CODE_PRE", json.dumps(CODE_PRE_SELECTOR))


def find_chromium(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if Path(explicit).is_file() or shutil.which(explicit) else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):   # the check reports failures itself
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class Browser:
    """One headless Chromium with one tab, driven over the DevTools protocol."""

    def __init__(self, executable: str, timeout: float = 60.0):
        import websocket   # websocket-client

        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="book_check_chromium_")
        self.proc = subprocess.Popen([executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-port=0", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise RuntimeError(f"{executable} did not start (exit status {self.proc.returncode})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
            tab = next(t for t in json.load(r) if t.get("type") == "page")
        self.ws = websocket.create_connection(tab["webSocketDebuggerUrl"], timeout=timeout,
                                              suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str) -> None:
        deadline = time.time() + self.timeout
        while not any(e["method"] == method for e in self.events):
            if time.time() > deadline:
                raise TimeoutError(f"no {method} within {self.timeout:.0f} s")
            self.events.append(json.loads(self.ws.recv()))

    def drain(self, quiet: float = 0.3) -> None:
        """Collect events until none arrives for `quiet` seconds (late requests, errors)."""
        self.ws.settimeout(quiet)
        try:
            while True:
                self.events.append(json.loads(self.ws.recv()))
        except Exception:   # websocket timeout: the page is quiet
            pass
        finally:
            self.ws.settimeout(self.timeout)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def _browser_favicon(event: dict, origin: str) -> bool:
    """Chromium asks for /favicon.ico on its own when a page names no icon: not the page's asset."""
    p = event.get("params", {})
    url = (p.get("request") or p.get("response") or p.get("entry") or {}).get("url", "")
    return url == origin + "favicon.ico"


def redirect_target(path: Path) -> str | None:
    """The target of a redirect-only page (`<meta http-equiv="Refresh" content="0; url=...">`)."""
    head = path.read_text(encoding="utf-8", errors="replace")[:2000]
    m = re.search(r'<meta\s+http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', head, flags=re.I)
    return m.group(1) if m else None


def page_problems(browser: Browser, url: str, origin: str) -> tuple[list[str], int]:
    """Load one page: every problem a reader would meet (one line each), and its formula count."""
    browser.events = []
    browser.call("Page.navigate", url=url)
    browser.wait_for("Page.loadEventFired")
    result = browser.call("Runtime.evaluate", expression=INSPECT_JS, awaitPromise=True, returnByValue=True,
                          timeout=int(browser.timeout * 1000))
    browser.drain()
    problems = []
    value = result.get("result", {}).get("value") or {}
    if "exceptionDetails" in result:
        problems.append(f"page inspection failed: {result['exceptionDetails'].get('text')}")
    if value.get("error"):
        problems.append(value["error"])
    for tex in value.get("untypeset", []):
        problems.append(f"formula left untypeset: {tex!r}")
    for text in value.get("raw", []):
        problems.append(f"raw TeX in the page text: {text!r}")
    for src in value.get("broken", []):
        problems.append(f"image not shown: {src}")
    for w in value.get("wide", []):
        problems.append(f"code scrolls sideways at {VIEWPORT_WIDTH} px ({w['scroll']} px of code in a "
                        f"{w['client']} px box): {w['line']!r}")
    requests: dict[str, str] = {}
    for e in browser.events:
        method, p = e["method"], e.get("params", {})
        if _browser_favicon(e, origin):
            continue
        if method == "Network.requestWillBeSent":
            req_url = p["request"]["url"]
            requests[p["requestId"]] = req_url
            if not req_url.startswith((origin, "data:", "blob:", "about:")):
                problems.append(f"fetches a remote resource: {req_url}")
        elif method == "Network.responseReceived" and p["response"]["status"] >= 400:
            problems.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            problems.append(f"request failed ({p.get('errorText')}): {requests.get(p['requestId'], '?')}")
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            problems.append(f"JavaScript error: {d.get('exception', {}).get('description') or d.get('text')}"
                            .splitlines()[0])
        elif method == "Runtime.consoleAPICalled" and p.get("type") == "error":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            problems.append(f"console.error: {args}"[:200])
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            entry = p["entry"]
            problems.append(f"error in the log: {entry.get('text')} {entry.get('url', '')}".strip()[:200])
    # a 404 shows up as a response and in the log: each line once
    return list(dict.fromkeys(problems)), int(value.get("maths", 0))


def html_pages(root: Path) -> list[Path]:
    skip = {"_sources", "_static", "_images"}
    return sorted(p for p in root.rglob("*.html") if not skip & set(p.relative_to(root).parts))


def check(root: Path, pages: list[str] | None = None, chromium: str | None = None,
          timeout: float = 60.0, out=sys.stdout) -> int:
    root = root.resolve()
    executable = find_chromium(chromium)
    if executable is None:
        print("book_check: error: Chromium not found (Debian: `apt-get install -y chromium`)", file=sys.stderr)
        return 2
    paths = [root / p for p in pages] if pages else html_pages(root)
    if not paths:
        print(f"book_check: error: no HTML pages under {root} (build the book first)", file=sys.stderr)
        return 2
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"book_check: error: {missing[0]}: no such page", file=sys.stderr)
        return 2
    server, origin = serve(root)
    browser = Browser(executable, timeout=timeout)
    bad = 0
    try:
        for path in paths:
            rel = path.relative_to(root).as_posix()
            t0 = time.perf_counter()
            target, maths = redirect_target(path), 0
            if target is not None:   # a redirect: its target is a page of its own, checked there
                exists = (path.parent / target.split("#")[0]).is_file()
                problems = [] if exists else [f"redirects to a missing page: {target}"]
            else:
                problems, maths = page_problems(browser, origin + rel, origin)
            bad += bool(problems)
            what = f"redirect to {target}" if target is not None else f"{maths} formulas"
            print(f"{'FAIL' if problems else 'ok  '} {rel} ({what}, {time.perf_counter() - t0:.1f} s)", file=out)
            for problem in problems:
                print(f"     {problem}", file=out)
    finally:
        browser.close()
        server.shutdown()
    print(f"book_check: {len(paths) - bad} of {len(paths)} pages clean", file=out)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("html_dir", type=Path, help="the built book's HTML folder (build/book/_build/html)")
    p.add_argument("--page", action="append", help="check only this page (relative path; repeatable)")
    p.add_argument("--chromium", default=os.environ.get("CHROMIUM"),
                   help="browser executable (default: chromium on PATH, or $CHROMIUM)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per page before giving up (default 60)")
    args = p.parse_args(argv)
    if not args.html_dir.is_dir():
        print(f"book_check: error: {args.html_dir}: no such folder (build the book first)", file=sys.stderr)
        return 2
    return check(args.html_dir, args.page, args.chromium, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
