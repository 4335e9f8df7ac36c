"""Open a basinscope HTML report in headless Chromium and report what rendered.

Test helper (not part of the package)::

    from browser import check_report, chromium_path

    result = check_report(tmp_path / "report.html")
    assert result["console_errors"] == []
    assert all(f["ok"] for f in result["figures"])

How it works: the report is copied, alone, into a temporary directory (so anything it
references beside itself is missing, as it would be when mailed around) with two small
scripts added to the copy -- the user's file is never touched:

* at the top of ``<head>``: hooks ``window.onerror`` (uncaught exceptions and failed
  ``<script>``/``<img>``/``<link>`` loads), ``unhandledrejection`` and ``console.error``;
* at the end of ``<body>``: after ``load``, polls every figure until all have rendered
  (or a few virtual seconds pass) and writes the results as JSON into ``<pre id=...>``.

Chromium then loads the copy with ``--dump-dom`` under a ``--virtual-time-budget`` (timers
are fast-forwarded, so waiting costs no wall time), with all host names resolving to
nothing (the report must work offline), and the JSON is read back from the dumped DOM.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_FLAGS", "ChromiumError", "check_report", "chromium_path"]

#: Command-line names tried, in order, after the ``BASINSCOPE_CHROMIUM`` environment variable.
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")

#: Flags for a headless run in a CI container (often as root, with a small /dev/shm, no
#: GPU, no D-Bus, no network). ``--user-data-dir`` and the page-specific flags are added
#: by :func:`check_report`.
CHROMIUM_FLAGS = (
    "--headless",  # the new headless mode (the only one in current Chromium)
    "--no-sandbox",  # the setuid/namespace sandbox is unavailable when running as root
    "--disable-gpu",  # no GPU in CI: no hardware GL, no GPU rasterisation
    # WebGL (plotly 3D surfaces) on the CPU: ANGLE's SwiftShader backend, opted in
    # explicitly. Without the opt-in Chromium still falls back to SwiftShader but logs a
    # deprecation message to the page console, and newer versions refuse WebGL.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-dev-shm-usage",  # Docker's 64 MB /dev/shm crashes renderers; use /tmp
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-component-update",
    "--disable-background-networking",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-breakpad",
    "--mute-audio",
    "--hide-scrollbars",
    "--password-store=basic",  # no keyring/D-Bus lookups
    "--use-mock-keychain",
    # Offline: every host name fails to resolve, so a report that fetches anything (a CDN
    # plotly.js, a web font) fails to load it, and the failure shows up as an error.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
    "--window-size=1280,1024",
)

PROBE_ID = "__basinscope_probe"

# Installed first in <head>, before any of the report's scripts run, on one line so that
# line numbers in error messages still match the report. The capture-phase "error"
# listener also sees failed <script>/<img>/<link> loads. getContext is wrapped so WebGL
# frames stay readable after compositing (plotly creates its gl3d contexts without
# preserveDrawingBuffer), letting the probe check that a 3D figure painted pixels.
_HEAD_HOOKS = """<script>(function () {
  var errors = (window.__basinscopeErrors = []);
  function str(a) {
    try {
      if (a instanceof Error) return a.stack || String(a);
      if (a !== null && typeof a === "object") return JSON.stringify(a);
      return String(a);
    } catch (e) { return String(a); }
  }
  window.addEventListener("error", function (ev) {
    var t = ev.target;
    if (t && t !== window && t.tagName) {
      var url = String(t.src || t.href || "");
      errors.push("failed to load <" + t.tagName.toLowerCase() + "> " +
                  (url.length > 120 ? url.slice(0, 120) + "..." : url));
      return;
    }
    errors.push("Uncaught " + (ev.error ? str(ev.error) : ev.message) +
                " (" + ev.filename + ":" + ev.lineno + ":" + ev.colno + ")");
  }, true);
  window.addEventListener("unhandledrejection", function (ev) {
    errors.push("Uncaught (in promise) " + str(ev.reason));
  });
  var getContext = HTMLCanvasElement.prototype.getContext;
  HTMLCanvasElement.prototype.getContext = function (type, attrs) {
    if (/webgl/i.test(String(type))) attrs = Object.assign({}, attrs, {preserveDrawingBuffer: true});
    return getContext.call(this, type, attrs);
  };
  var original = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.map.call(arguments, str).join(" "));
    return original.apply(console, arguments);
  };
})();</script>"""
_HEAD_HOOKS = " ".join(line.strip() for line in _HEAD_HOOKS.splitlines())

# Appended at the end of <body>; %(probe_id)s and %(wait_ms)d are filled in.
_TAIL_PROBE = """<script>(function () {
  var GL_TYPES = ["surface", "mesh3d", "scatter3d", "cone", "streamtube", "isosurface",
                  "volume", "scattergl", "splom", "scatterpolargl", "parcoords"];
  function size(el) { var r = el.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; }
  function painted(canvas) {
    // Fraction of sampled pixels that are not fully transparent (WebGL read back via 2D).
    try {
      var w = Math.min(canvas.width, 200), h = Math.min(canvas.height, 200);
      if (!w || !h) return 0;
      var c = document.createElement("canvas"); c.width = w; c.height = h;
      var ctx = c.getContext("2d", {willReadFrequently: true});
      ctx.drawImage(canvas, 0, 0, w, h);
      var d = ctx.getImageData(0, 0, w, h).data, n = 0;
      for (var i = 3; i < d.length; i += 4) if (d[i] !== 0) n++;
      return n / (w * h);
    } catch (e) { return -1; }
  }
  function staticFig(f) {
    var img = f.querySelector("img");
    if (!img) return {ok: false, detail: "no <img>"};
    var ok = img.complete && img.naturalWidth > 0 && img.naturalHeight > 0;
    return {ok: ok, detail: {complete: img.complete, natural_size: [img.naturalWidth, img.naturalHeight],
                             src: String(img.getAttribute("src") || "").slice(0, 40)}};
  }
  function interactiveFig(f) {
    var p = f.querySelector(".plotly-graph-div, .js-plotly-plot");
    if (!p) return {ok: false, detail: "no plotly div"};
    var types = (p.data || []).map(function (t) { return t.type || "scatter"; });
    var gl = types.some(function (t) { return GL_TYPES.indexOf(t) >= 0; });
    var canvases = Array.prototype.filter.call(p.querySelectorAll("canvas"), function (c) {
      return c.width > 0 && c.height > 0 && size(c)[0] > 0 && size(c)[1] > 0;
    });
    var paint = canvases.map(painted);
    var d = {
      plotly: p.classList.contains("js-plotly-plot"),
      size: size(p),
      main_svg: p.querySelectorAll("svg.main-svg").length,
      svg_traces: p.querySelectorAll("svg.main-svg g.trace").length,
      trace_types: types,
      webgl: gl,
      canvases: canvases.map(function (c) { return [c.width, c.height]; }),
      canvas_painted: paint,
      no_webgl_message: !!p.querySelector(".no-webgl")
    };
    var ok = d.plotly && d.size[0] > 0 && d.size[1] > 0 && d.main_svg > 0 && types.length > 0 && !d.no_webgl_message;
    if (gl) ok = ok && paint.some(function (x) { return x > 0; });
    else ok = ok && d.svg_traces > 0;
    return {ok: ok, detail: d};
  }
  function collect() {
    var figs = Array.prototype.map.call(document.querySelectorAll("figure"), function (f, i) {
      var kind = f.classList.contains("static") ? "static"
               : f.classList.contains("interactive") ? "interactive" : "unknown";
      var r = kind === "static" ? staticFig(f) : kind === "interactive" ? interactiveFig(f)
            : {ok: false, detail: "figure has neither class 'static' nor 'interactive'"};
      return {id: f.id || "#" + (i + 1), kind: kind, ok: r.ok, detail: r.detail};
    });
    return figs;
  }
  function report(figs, waited) {
    var pre = document.createElement("pre");
    pre.id = "%(probe_id)s";
    pre.style.display = "none";
    pre.textContent = JSON.stringify({figures: figs, console_errors: window.__basinscopeErrors || [],
                                      waited_ms: waited});
    document.body.appendChild(pre);
  }
  window.addEventListener("load", function () {
    var start = Date.now(), stable = 0;
    (function poll() {
      var figs;
      try { figs = collect(); } catch (e) { figs = [{id: "?", kind: "unknown", ok: false, detail: "probe failed: " + e}]; }
      stable = figs.every(function (f) { return f.ok; }) ? stable + 1 : 0;
      var waited = Date.now() - start;
      if (stable >= 3 || waited >= %(wait_ms)d) report(figs, waited);
      else setTimeout(poll, 100);
    })();
  });
})();</script>"""


class ChromiumError(RuntimeError):
    """Chromium is missing, failed, timed out, or the page never reported back."""


def chromium_path() -> str | None:
    """The Chromium binary: ``$BASINSCOPE_CHROMIUM``, else the first of
    ``chromium``, ``chromium-browser``, ``google-chrome`` on ``PATH``; ``None`` if none."""
    env = os.environ.get("BASINSCOPE_CHROMIUM")
    if env:
        found = shutil.which(env)
        return found if found else (env if Path(env).is_file() else None)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _instrument(page: str, wait_ms: int) -> str:
    """The report with the error hooks first in <head> and the probe last in <body>."""
    tail = _TAIL_PROBE % {"probe_id": PROBE_ID, "wait_ms": wait_ms}
    head = re.search(r"<head\b[^>]*>", page, flags=re.IGNORECASE)
    if head:
        page = page[: head.end()] + _HEAD_HOOKS + page[head.end() :]
    else:  # no <head>: the parser puts leading scripts into an implied one
        doctype = re.match(r"\s*<!doctype[^>]*>", page, flags=re.IGNORECASE)
        cut = doctype.end() if doctype else 0
        page = page[:cut] + _HEAD_HOOKS + page[cut:]
    end = page.lower().rfind("</body>")
    return page[:end] + tail + page[end:] if end >= 0 else page + tail


def _run(cmd: list[str], timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Own process group, so that on a timeout the whole browser (zygote, renderer, GPU
    # process) is killed, not just the launcher.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise ChromiumError(f"Chromium did not finish within {timeout:g} s\n{_tail(err)}") from None
    finally:
        if proc.poll() is None:  # pragma: no cover - only on unexpected exceptions
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _tail(text: str, n: int = 25) -> str:
    lines = [ln for ln in (text or "").splitlines() if "dbus" not in ln.lower()]
    return "\n".join(lines[-n:])


def check_report(
    html_path: str | os.PathLike[str],
    *,
    timeout: float = 60,
    wait_ms: int = 5000,
    chromium: str | None = None,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Render ``html_path`` in headless Chromium, offline, and say what worked.

    Returns ``{"console_errors": [str, ...], "figures": [{"id", "kind", "ok", "detail"},
    ...], "n_figures": int}``. ``console_errors`` holds uncaught exceptions (including
    syntax errors and rejected promises), ``console.error`` calls and failed resource
    loads. A ``static`` figure is ok when its ``<img>`` decoded to a non-zero natural
    size; an ``interactive`` one when plotly rendered it (``js-plotly-plot`` with a
    non-zero ``svg.main-svg`` holding the traces, or for WebGL traces such as 3D
    surfaces a canvas with painted pixels). ``wait_ms`` is how long (virtual time) the
    probe waits for figures to render before reporting; ``timeout`` is the wall-clock
    limit for Chromium; ``chromium`` overrides :func:`chromium_path` and ``extra_args``
    are appended to :data:`CHROMIUM_FLAGS`. Raises :class:`ChromiumError` if Chromium is
    missing, fails or times out, and ``FileNotFoundError`` if the report does not exist.
    """
    src = Path(html_path)
    page = src.read_text(encoding="utf-8", errors="surrogateescape")
    binary = chromium or chromium_path()
    if binary is None:
        raise ChromiumError(
            "Chromium not found: set BASINSCOPE_CHROMIUM or put one of "
            + ", ".join(CANDIDATES)
            + " on PATH (Debian: apt-get install chromium)"
        )
    with tempfile.TemporaryDirectory(prefix="basinscope-browser-") as tmp:
        tmpdir = Path(tmp)
        page_path = tmpdir / "page" / "report.html"
        page_path.parent.mkdir()
        page_path.write_text(_instrument(page, wait_ms), encoding="utf-8", errors="surrogateescape")
        cmd = [
            binary,
            *CHROMIUM_FLAGS,
            *extra_args,
            f"--user-data-dir={tmpdir / 'profile'}",
            f"--crash-dumps-dir={tmpdir / 'crashes'}",
            "--enable-logging=stderr",
            "--v=0",
            f"--virtual-time-budget={wait_ms + 10_000}",
            "--dump-dom",
            page_path.as_uri(),
        ]
        env = {**os.environ, "HOME": str(tmpdir)}  # keep ~/.config, ~/.cache untouched
        try:
            proc = _run(cmd, timeout, env)
        except FileNotFoundError as exc:
            raise ChromiumError(f"Chromium not runnable: {binary}: {exc}") from exc
    match = re.search(rf'<pre id="{PROBE_ID}"[^>]*>(.*?)</pre>', proc.stdout, flags=re.DOTALL)
    if match is None:
        raise ChromiumError(
            f"the page never reported back (Chromium exit code {proc.returncode}, "
            f"{len(proc.stdout)} bytes of DOM)\n{_tail(proc.stderr)}"
        )
    result = json.loads(html.unescape(match.group(1)))
    uri = page_path.as_uri()
    return {
        "console_errors": [e.replace(uri, str(src.resolve())) for e in result["console_errors"]],
        "figures": result["figures"],
        "n_figures": len(result["figures"]),
    }
