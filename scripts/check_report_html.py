"""Open a report page in headless Chromium: it loads with no errors, every image has a size.

    python scripts/check_report_html.py runs/default/report.html
    python scripts/check_report_html.py runs/default/report.html --screenshot shot.png \
        --top 0 --height 1800
    python scripts/check_report_html.py runs/default/report.html --screenshot gallery.png \
        --at gallery --height 1400

The page itself runs no JavaScript (its content security policy forbids scripts). The check
opens a copy of it whose policy also allows one inline script, injected first in ``<head>``:
it records every error event (a resource that fails to load, a script error) and every
content-security-policy violation (anything the page tries to load from outside the file),
and after the load event writes, into the DOM, each image's natural and rendered size. The
copy is printed with ``chromium --dump-dom``. Needs Debian's ``chromium``
(``bash scripts/setup.sh test`` installs it when run as root).

With ``--screenshot`` it also writes a PNG of the page (the original, not the copy): rows
``top .. top + height`` at ``--width`` CSS pixels, reduced to 256 colours to keep it small;
``--at ID`` starts it at the heading with that id instead (e.g. ``gallery``).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
"""Headless Chromium flags that work on a machine without a display or network."""

PROBE = """<script>
window.__errors = [];
addEventListener("error", e => __errors.push("error: " + (e.message ||
  (e.target && (e.target.tagName + " " + String(e.target.src || e.target.href).slice(0, 80))))),
  true);
addEventListener("securitypolicyviolation", e => __errors.push("csp: " + e.violatedDirective +
  " " + String(e.blockedURI).slice(0, 80)));
addEventListener("load", () => {
  const images = Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,
    natural: [i.naturalWidth, i.naturalHeight],
    shown: [i.getBoundingClientRect().width, i.getBoundingClientRect().height]}));
  const headings = Object.fromEntries(Array.from(document.querySelectorAll("h1, h2, h3"))
    .map(h => [h.id, h.getBoundingClientRect().top + scrollY]));
  const out = document.createElement("pre");
  out.id = "__check";
  out.textContent = JSON.stringify({errors: __errors, images: images, headings: headings});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    """The Chromium executable.

    Raises:
        FileNotFoundError: none on PATH.
    """
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise FileNotFoundError("needs Debian's chromium (apt-get install chromium)")


def _run(args: list[str], profile: str, timeout: float) -> str:
    done = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def check(page: str | Path, *, width: int = 1300, timeout: float = 120) -> dict:
    """Load ``page`` in headless Chromium with the probe script.

    Returns:
        ``{"errors": [...], "images": [{"alt", "complete", "natural": [w, h],
        "shown": [w, h]}, ...], "headings": {id: y}, "external": [...]}``; ``headings`` gives
        each heading's distance from the top of the page (CSS px, a window ``width`` wide),
        ``external`` every ``src`` / ``href`` of the page that is not a ``data:`` URI or an
        in-page ``#`` link.

    Raises:
        ValueError: the page has no content security policy to extend.
        RuntimeError: Chromium failed, or the probe wrote no result.
    """
    text = Path(page).read_text()
    external = [u for u in re.findall(r'(?:src|href)="([^"]*)"', text)
                if not u.startswith(("data:", "#"))]
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', text)
    if not csp:
        raise ValueError(f"{page}: no Content-Security-Policy meta tag")
    policy = csp.group(1) + "; script-src 'unsafe-inline'"
    probed = text.replace(csp.group(0), f'<meta http-equiv="Content-Security-Policy" '
                                        f'content="{policy}">' + PROBE, 1)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "page.html"
        copy.write_text(probed)
        dom = _run(["--virtual-time-budget=10000", f"--window-size={width},1000", "--dump-dom",
                    copy.as_uri()], str(Path(tmp) / "profile"), timeout)
    m = re.search(r'<pre id="__check">(.*?)</pre>', dom, re.S)
    if not m:
        raise RuntimeError(f"{page}: the probe wrote no result (DOM: {dom[-500:]!r})")
    result = json.loads(html.unescape(m.group(1)))
    result["external"] = external
    return result


def screenshot(page: str | Path, out: str | Path, *, width: int = 1300, top: int = 0,
               height: int = 1800, timeout: float = 120) -> Path:
    """A PNG of ``page``'s rows ``top .. top + height`` (CSS px), 256 colours."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.png"
        _run([f"--screenshot={full}", f"--window-size={width},{top + height}",
              Path(page).resolve().as_uri()], str(Path(tmp) / "profile"), timeout)
        image = Image.open(full).convert("RGB").crop((0, top, width, top + height))
    image.quantize(256).save(out, optimize=True)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("page")
    ap.add_argument("--screenshot")
    ap.add_argument("--width", type=int, default=1300)
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--height", type=int, default=1800)
    ap.add_argument("--at", help="start the screenshot at the heading with this id")
    args = ap.parse_args(argv)
    result = check(args.page, width=args.width)
    bad = [i for i in result["images"] if not (i["complete"] and min(i["natural"]) > 0
                                                  and min(i["shown"]) > 0)]
    print(f"{args.page}: {len(result['images'])} images, {len(bad)} without a size, "
          f"{len(result['errors'])} errors, {len(result['external'])} external references")
    for line in result["errors"] + [json.dumps(b) for b in bad] + result["external"]:
        print("  " + line)
    if args.screenshot:
        if args.at is not None and args.at not in result["headings"]:
            ap.error(f"--at {args.at!r}: no such heading; the page has {list(result['headings'])}")
        top = round(result["headings"][args.at]) - 10 if args.at is not None else args.top
        print(screenshot(args.page, args.screenshot, width=args.width, top=max(0, top),
                         height=args.height))
    return 1 if bad or result["errors"] or result["external"] else 0


if __name__ == "__main__":
    sys.exit(main())
