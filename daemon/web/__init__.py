"""The web page: `index.html`, `page.css` and `page.js`, shipped inside the package.

They stay real files, edited and checked as what they are; the HTTP server
reads them once when it is built and serves the page from memory. The style
and the script are inlined into the HTML there, so the page is one request:
it loads as fast as one round trip allows, needs nothing but the camera, and
takes one client slot (`http.max_clients`) rather than three. Its
Content-Security-Policy lets the browser run exactly that style and script
(by hash) and talk to this server only.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["Page", "build_page", "load_page", "read"]

#: The tags in index.html that the loader replaces by the files' contents.
STYLE_TAG = '<link rel="stylesheet" href="page.css">'
SCRIPT_TAG = '<script src="page.js"></script>'


@dataclass(frozen=True)
class Page:
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...]


def read(name: str) -> str:
    """One of the page's files, as text."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def load_page() -> Page:
    return build_page(read("index.html"), read("page.css"), read("page.js"))


def build_page(html: str, css: str, js: str) -> Page:
    """index.html with page.css and page.js inlined, and the headers that go with it."""
    # Text that would end the inline element early would break the page, and the hashes with it.
    if re.search(r"</style", css, re.I):
        raise ValueError("page.css contains '</style'")
    if re.search(r"</script|<!--", js, re.I):
        raise ValueError("page.js contains '</script' or '<!--'")
    for tag, name in ((STYLE_TAG, "page.css"), (SCRIPT_TAG, "page.js")):
        if html.count(tag) != 1:
            raise ValueError(f"index.html must reference {name} exactly once, as {tag}")
    style, script = f"<style>\n{css}</style>", f"<script>\n{js}</script>"
    page = html.replace(STYLE_TAG, style).replace(SCRIPT_TAG, script)
    return Page(page.encode("utf-8"), "text/html; charset=utf-8", _headers(page))


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _headers(page: str) -> tuple[tuple[str, str], ...]:
    """The page's security headers: its own inline scripts and style (by hash) and requests to this server only."""
    scripts = " ".join(_digest(t) for t in re.findall(r"<script[^>]*>(.*?)</script>", page, re.S))
    styles = " ".join(_digest(t) for t in re.findall(r"<style[^>]*>(.*?)</style>", page, re.S))
    policy = (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; img-src 'self' blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'"
    )
    return (("Content-Security-Policy", policy), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
