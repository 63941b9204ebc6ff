"""The web page at `/`: daemon/web served self-contained over HTTP, and its JavaScript checked against the real server.

No browser is needed. The page's pure helpers (`picamd` in daemon/web/page.js: multipart reader, frame
metadata, X-Motion and X-Detections parsing, the regions' outlines, the `region add` line, the stall
decision) run under node when it is installed, loaded from the file itself and fed with bytes captured
from a real /stream; the command line they build is sent to a real daemon's command port. Without node
those tests are skipped. Where Chromium is installed, the page also runs in it headless against a real
daemon, and what it drew over the image is read back from its DOM.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from browser import needs_chromium, page_dom
from daemon_proc import Daemon, replies, reply_json, wait_for
from images import decode_jpeg
from rigs import HttpRig, request
from stream_reader import split_parts, stream_bytes

from daemon import web
from daemon.capture.ring import FrameMeta
from daemon.web import build_page

pytestmark = pytest.mark.timeout(120)

W, H = 320, 240
MOTION = "press1=0.1234:RUNNING;door=0.0000:SETTLING"
PAGE_PATHS = {"stream", "meta", "health", "snapshot.jpg", "regions", "detections"}
WEB = Path(web.__file__).parent
PAGE_JS = WEB / "page.js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


def frame_meta(fid: int) -> FrameMeta:
    return FrameMeta(
        frame_id=fid,
        ts=time.time(),
        mono=time.monotonic(),
        dark_score=90.5,
        night=fid % 2 == 0,
        exposure_us=20000,
        gain=2.0,
        extra={"motion": MOTION, "motion_settling": True},
    )


@pytest.fixture(scope="module")
def rig():
    r = HttpRig(frame_size=(W, H), ring_size=(W // 2, H // 2), ring_slots=8, meta=frame_meta).start()
    yield r
    r.stop()


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.scripts: list[tuple[dict, str]] = []
        self.styles: list[str] = []
        self._in: tuple[str, dict, list[str]] | None = None
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        for name in ("src", "href", "action", "data", "poster"):
            if a.get(name) is not None:
                self.urls.append((tag, name, a[name]))
        if tag in ("script", "style"):
            self._in = (tag, a, [])

    def handle_data(self, data):
        if self._in is not None:
            self._in[2].append(data)

    def handle_endtag(self, tag):
        if self._in is not None and tag == self._in[0]:
            _, a, chunks = self._in
            if tag == "script":
                self.scripts.append((a, "".join(chunks)))
            else:
                self.styles.append("".join(chunks))
            self._in = None


def fetch_page(port: int) -> tuple[dict[str, str], str, PageParser]:
    status, headers, body = request(port, "/")
    assert status == 200
    page = body.decode("utf-8")
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return headers, page, parser


def csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


# --- served, self-contained, consistent -------------------------------------------------------------


def test_page_is_served_with_headers_that_allow_only_its_own_scripts(rig):
    headers, page, parser = fetch_page(rig.port)
    assert headers["content-type"] == "text/html; charset=utf-8" and headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    policy = dict(item.strip().split(" ", 1) for item in headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'" and policy["img-src"] == "'self' blob:"
    # A browser runs an inline script or style only when its hash is in the policy: every one must be there.
    assert len(parser.scripts) == 1 and len(parser.styles) == 1
    assert policy["script-src"].split() == [csp_hash(parser.scripts[0][1])]
    assert policy["style-src"].split() == [csp_hash(parser.styles[0])]
    # What runs is the package's files, whole: page.js and page.css inlined into index.html.
    assert parser.scripts[0][1].strip() == PAGE_JS.read_text().strip()
    assert parser.styles[0].strip() == (WEB / "page.css").read_text().strip()
    assert "page.js" not in page and "page.css" not in page

    assert request(rig.port, "/index.html")[2].decode() == page
    status, head_headers, body = request(rig.port, "/", method="HEAD")
    assert status == 200 and body == b"" and int(head_headers["content-length"]) == len(page.encode())
    assert head_headers["content-security-policy"] == headers["content-security-policy"]


def test_page_references_only_the_daemons_own_paths_and_each_one_answers(rig):
    _, page, parser = fetch_page(rig.port)
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    assert not [a for a, _ in parser.scripts if "src" in a], "no external scripts"
    # The empty icon: no /favicon.ico request.
    assert "link" not in parser.tags or all(v == "data:," for t, _, v in parser.urls if t == "link")
    linked = {v for t, _, v in parser.urls if t != "link"}
    fetched = set(re.findall(r'fetch\("([^"]+)"', page))
    assert linked <= PAGE_PATHS and fetched <= PAGE_PATHS
    assert {"stream", "snapshot.jpg", "health", "meta"} <= fetched | linked

    status, headers, body = request(rig.port, "/snapshot.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg" and int(headers["x-frame-id"]) >= 1
    assert decode_jpeg(body).shape == (H, W, 3)
    status, headers, body = request(rig.port, "/meta")
    assert status == 200 and json.loads(body)["motion"] == MOTION
    status, headers, body = request(rig.port, "/health")
    assert status == 200 and json.loads(body)["camera"]["frame_size"] == [W, H]
    status, headers, body = request(rig.port, "/regions")  # a server with no motion outlines nothing
    assert status == 200 and json.loads(body)["regions"] == []
    parts = split_parts(stream_bytes(rig.port, parts=2))
    assert all(decode_jpeg(jpeg).shape == (H, W, 3) for _, jpeg in parts)


def test_every_element_the_script_uses_is_in_the_page(rig):
    _, page, parser = fetch_page(rig.port)
    assert len(parser.ids) == len(set(parser.ids)), "duplicate element ids"
    ui = PAGE_JS.read_text()
    used = set(re.findall(r'\$\("([\w-]+)"\)', ui)) | set(re.findall(r'getElementById\("([\w-]+)"\)', ui))
    assert used, "the script looks elements up by id"
    assert used <= set(parser.ids), f"missing in the HTML: {sorted(used - set(parser.ids))}"
    for needed in ("stream", "sel", "cmd", "copy", "rname", "frame_id", "time", "dark_score", "night", "motion-rows"):
        assert needed in parser.ids
    assert 'src="stream"' in page  # the plain MJPEG <img> for browsers without JavaScript


def test_unknown_methods_and_paths_do_not_reach_the_page(rig):
    for method in ("POST", "PUT", "DELETE"):
        status, headers, body = request(rig.port, "/", method=method)
        assert status == 405 and headers["allow"] == "GET, HEAD" and b"<html" not in body
    status, _, body = request(rig.port, "/page")
    assert status == 404 and b"<html" not in body
    status, _, body = request(rig.port, "/?region=add&name=x")  # a query changes nothing: the same page
    assert status == 200 and body == request(rig.port, "/")[2]


# --- the page's JavaScript under node ----------------------------------------------------------------


def run_node(tmp_path: Path, program: str, stdin: bytes = b"") -> Any:
    """Runs `program` with daemon/web/page.js loaded (with no document it only defines `picamd`); returns what it prints as JSON."""
    script = tmp_path / "page_check.js"
    script.write_text(
        "const vm = require('vm');\n"
        f"const picamd = vm.runInThisContext(require('fs').readFileSync({json.dumps(str(PAGE_JS))}, 'utf8') + '\\n;picamd;');\n"
        "const input = require('fs').readFileSync(0);\n" + program
    )
    assert NODE is not None
    proc = subprocess.run([NODE, str(script)], input=stdin, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


@needs_node
def test_page_js_passes_node_check_and_loads_without_a_document(tmp_path):
    assert NODE is not None
    check = subprocess.run([NODE, "--check", str(PAGE_JS)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    helpers = run_node(tmp_path, "console.log(JSON.stringify(Object.keys(picamd).sort()));\n")
    assert helpers == sorted(
        [
            "boundaryOf",
            "MultipartReader",
            "frameFromHeaders",
            "frameFromMeta",
            "parseMotion",
            "nameProblem",
            "regionCommand",
            "stallAction",
            "formatDuration",
            "formatExposure",
            "healthSummary",
            "parseDetections",
            "peopleSummary",
            "regionOutlines",
        ]
    )


def test_the_loader_refuses_files_that_would_break_the_page():
    html = (WEB / "index.html").read_text()
    css, js = (WEB / "page.css").read_text(), PAGE_JS.read_text()
    assert build_page(html, css, js).body.count(b"<script>") == 1
    for bad_html, bad_css, bad_js, why in [
        (html, css + "</style><script>alert(1)", js, "page.css contains"),
        (html, css, js + "\n// </script>", "page.js contains"),
        (html.replace('<script src="page.js"></script>', ""), css, js, "reference page.js exactly once"),
        (html + '<link rel="stylesheet" href="page.css">', css, js, "reference page.css exactly once"),
    ]:
        with pytest.raises(ValueError, match=why):
            build_page(bad_html, bad_css, bad_js)


@needs_node
def test_multipart_reader_splits_the_real_stream_in_any_chunking(rig, tmp_path):
    body = stream_bytes(rig.port, parts=4)
    expected = split_parts(body)
    program = r"""
const crypto = require('crypto');
const results = [];
for (const sizes of [[1], [7, 13], [4096], [65536], [input.length]]) {
  const reader = new picamd.MultipartReader(picamd.boundaryOf('multipart/x-mixed-replace; boundary=frame'));
  const parts = [];
  for (let pos = 0, i = 0; pos < input.length; i++) {
    const n = sizes[i % sizes.length];
    parts.push(...reader.push(new Uint8Array(input.subarray(pos, pos + n))));
    pos += n;
  }
  results.push(parts.map((p) => ({headers: p.headers, sha: crypto.createHash('sha256').update(p.body).digest('hex'),
                                 fields: picamd.frameFromHeaders(p.headers)})));
}
console.log(JSON.stringify(results));
"""
    results = run_node(tmp_path, program, body)
    assert len(expected) >= 4
    for parts in results:  # the same parts however the bytes were cut
        assert len(parts) == len(expected)
        for got, (headers, jpeg) in zip(parts, expected, strict=True):
            assert got["sha"] == hashlib.sha256(jpeg).hexdigest()
            assert got["headers"] == headers
            fields = got["fields"]
            assert fields["frame_id"] == int(headers["x-frame-id"]) and fields["ts"] == float(headers["x-timestamp"])
            assert fields["dark_score"] == 90.5 and fields["night"] == (headers["x-night"] == "1")
            assert fields["exposure_us"] == 20000 and fields["gain"] == 2.0 and fields["motion"] == MOTION
            assert fields["other"] == {"motion-settling": "true"}
            assert fields["detections"] is None and fields["people"] is None  # no detector here


@needs_node
def test_multipart_reader_refuses_what_is_not_the_stream(tmp_path):
    program = r"""
const out = {};
const attempt = (name, bytes, boundary = 'frame') => {
  try { out[name] = {parts: new picamd.MultipartReader(boundary).push(bytes).length}; }
  catch (e) { out[name] = {error: e.message}; }
};
const text = (s) => new Uint8Array(Buffer.from(s, 'latin1'));
attempt('html page', text('<html><body>not a stream</body></html>\r\n\r\n'));
attempt('other boundary', text('--other\r\nContent-Length: 1\r\n\r\nx'));
attempt('no length', text('--frame\r\nContent-Type: image/jpeg\r\n\r\n'));
attempt('negative length', text('--frame\r\nContent-Length: -5\r\n\r\n'));
attempt('endless headers', text('--frame\r\nX-A: ' + 'a'.repeat(70000)));
attempt('half a part', text('--frame\r\nContent-Length: 10\r\n\r\n12345'));
out.boundaries = [picamd.boundaryOf('multipart/x-mixed-replace; boundary=frame'),
                  picamd.boundaryOf('multipart/x-mixed-replace;boundary="a b"'), picamd.boundaryOf('image/jpeg'), picamd.boundaryOf(null)];
console.log(JSON.stringify(out));
"""
    out = run_node(tmp_path, program)
    assert "no boundary line" in out["html page"]["error"] and "no boundary line" in out["other boundary"]["error"]
    assert "Content-Length" in out["no length"]["error"] and "Content-Length" in out["negative length"]["error"]
    assert out["endless headers"]["error"] == "part headers too long"
    assert out["half a part"] == {"parts": 0}  # waits for the rest
    assert out["boundaries"] == ["frame", "a b", None, None]


@needs_node
def test_region_command_line_and_every_refusal(tmp_path):
    cases = [
        # rect (fractions of the image), frame size, name, min, names taken
        ("plain", [0.64, 0.30, 0.94, 0.56], [1024, 768], "press1", "", []),
        ("min fraction", [0.1, 0.1, 0.5, 0.5], [640, 480], " door ", "0.05", ["press1"]),
        ("min pixels", [0, 0, 1, 1], [640, 480], "all", "300", []),
        ("min normalised", [0, 0, 0.5, 0.5], [640, 480], "a", "1e-1", []),
        ("no frame size", [0.1, 0.1, 0.5, 0.5], None, "a", "", []),
        ("too small", [0.5, 0.5, 0.501, 0.9], [640, 480], "a", "", []),
        ("empty name", [0.1, 0.1, 0.5, 0.5], [640, 480], "  ", "", []),
        ("space", [0.1, 0.1, 0.5, 0.5], [640, 480], "press 1", "", []),
        ("equals", [0.1, 0.1, 0.5, 0.5], [640, 480], "a=b", "", []),
        ("semicolon", [0.1, 0.1, 0.5, 0.5], [640, 480], "a;b", "", []),
        ("colon", [0.1, 0.1, 0.5, 0.5], [640, 480], "a:b", "", []),
        ("comma", [0.1, 0.1, 0.5, 0.5], [640, 480], "a,b", "", []),
        ("quote", [0.1, 0.1, 0.5, 0.5], [640, 480], 'a"b', "", []),
        ("backslash", [0.1, 0.1, 0.5, 0.5], [640, 480], "a\\b", "", []),
        ("tab", [0.1, 0.1, 0.5, 0.5], [640, 480], "a\tb", "", []),
        ("zero width space", [0.1, 0.1, 0.5, 0.5], [640, 480], "a\u200bb", "", []),
        ("too long", [0.1, 0.1, 0.5, 0.5], [640, 480], "r" * 65, "", []),
        ("taken", [0.1, 0.1, 0.5, 0.5], [640, 480], "press1", "", ["press1"]),
        ("min zero", [0.1, 0.1, 0.5, 0.5], [640, 480], "a", "0", []),
        ("min negative", [0.1, 0.1, 0.5, 0.5], [640, 480], "a", "-3", []),
        ("min text", [0.1, 0.1, 0.5, 0.5], [640, 480], "a", "lots", []),
        ("min hex", [0.1, 0.1, 0.5, 0.5], [640, 480], "a", "0x10", []),
        ("min infinite", [0.1, 0.1, 0.5, 0.5], [640, 480], "a", "1e999", []),
        ("min fractional pixels", [0.1, 0.1, 0.5, 0.5], [640, 480], "a", "2.5", []),
    ]
    program = (
        "const cases = JSON.parse(input);\nconsole.log(JSON.stringify(Object.fromEntries(cases.map(([label, ...args]) =>\n"
        "  [label, picamd.regionCommand(...args, 'http://127.0.0.1:8080')]))));\n"
    )
    out = run_node(tmp_path, program, json.dumps(cases).encode())

    assert out["plain"]["command"] == "region add press1 655 230 308 200" and out["plain"]["error"] == ""
    assert out["plain"]["fractions"] == "0.6400 0.3000 0.3000 0.2600"
    assert out["plain"]["pixels"] == {"x": 655, "y": 230, "w": 308, "h": 200, "frameWidth": 1024, "frameHeight": 768}
    assert (
        out["plain"]["calibrate"] == ".venv/bin/python tools/calibrate.py --url http://127.0.0.1:8080 --name press1 --rect 655 230 308 200"
    )
    assert out["min fraction"]["command"] == "region add door 64 48 256 192 0.05"
    assert out["min pixels"]["command"] == "region add all 0 0 640 480 300"
    assert out["min normalised"]["command"] == "region add a 0 0 320 240 0.1"

    refused = {
        "no frame size": "waiting for the first frame",
        "too small": "larger rectangle",
        "empty name": "give the region a name",
        "space": "cannot contain",
        "equals": "cannot contain",
        "semicolon": "cannot contain",
        "colon": "cannot contain",
        "comma": "cannot contain",
        "quote": "cannot contain",
        "backslash": "cannot contain",
        "tab": "cannot contain",
        "zero width space": "cannot contain",
        "too long": "longer than 64",
        "taken": "exists already",
        "min zero": "above 0",
        "min negative": "above 0",
        "min text": "above 0",
        "min hex": "above 0",
        "min infinite": "above 0",
        "min fractional pixels": "whole number",
    }
    for label, why in refused.items():
        assert why in out[label]["error"], (label, out[label])
        assert out[label]["command"] == "" and out[label]["calibrate"] == "", label  # nothing to copy or send


@needs_node
def test_stall_decisions_and_formatting(tmp_path):
    program = r"""
const s = picamd.stallAction;
console.log(JSON.stringify({
  stall: [
    s(1, 0.1, null, 5), s(3.9, 0, null, 5), s(20, 10, null, 5),
    s(5, 0.1, null, 5),
    s(5, 0.1, {reachable: false}, 5),
    s(5, 0.1, {reachable: true, frameId: 9}, 5),
    s(13, 0.1, {reachable: true, frameId: 9}, 5),
    s(13, 0.1, {reachable: true, frameId: 5}, 5),
    s(13, 0.1, {reachable: true, frameId: null}, 5),
    s(13, 0.1, {reachable: true, frameId: 9}, null),
    s(13, 0.1, {reachable: true, frameId: 2}, 500),
    s(26, 10, {reachable: true, frameId: 9}, 5), s(31, 10, {reachable: true, frameId: 9}, 5),
  ],
  motion: [picamd.parseMotion('press1=0.1234:RUNNING;door=0.0000:deep_sleep'), picamd.parseMotion(''),
           picamd.parseMotion(null), picamd.parseMotion({press1: 1}), picamd.parseMotion('garbage'),
           picamd.parseMotion('a=1e-05:STOPPED')],
  durations: [0, 59.9, 60, 3599, 3600, 86399, 90061, -1, NaN].map(picamd.formatDuration),
  exposures: [null, 250, 10000, 333333, 1000000, 112000000].map(picamd.formatExposure),
  meta: picamd.frameFromMeta({frame_id: 7, ts: 1.5, dark_score: 3, night: true, exposure_us: null, gain: null,
                              motion: 'a=0.5000:RUNNING', motion_settling: true, note: 'x'}),
}));
"""
    out = run_node(tmp_path, program)
    assert out["stall"] == [
        "live",
        "live",
        "live",
        "probe",
        "down",
        "waiting",
        "reconnect",
        "waiting",
        "waiting",
        "waiting",
        "reconnect",
        "waiting",
        "reconnect",
    ]
    assert out["motion"] == [
        [{"name": "press1", "fraction": 0.1234, "state": "RUNNING"}, {"name": "door", "fraction": 0, "state": "DEEP_SLEEP"}],
        None,
        None,
        None,
        None,
        [{"name": "a", "fraction": 1e-05, "state": "STOPPED"}],
    ]
    assert out["durations"] == ["0 s", "59 s", "1 min 00 s", "59 min 59 s", "1 h 00 min", "23 h 59 min", "1 d 1 h", "-", "-"]
    assert out["exposures"] == [None, "250 \u00b5s", "10.0 ms", "333 ms", "1.00 s", "112 s"]
    assert out["meta"] == {
        "frame_id": 7,
        "ts": 1.5,
        "dark_score": 3,
        "night": True,
        "exposure_us": None,
        "gain": None,
        "motion": "a=0.5000:RUNNING",
        "detections": None,
        "people": None,
        "other": {"motion-settling": "true", "note": "x"},
    }


@needs_node
def test_detections_people_and_region_outlines_for_drawing(tmp_path):
    # X-Detections as the daemon sends it: frame 41 at 640x480, two people in a group and a cup; one malformed entry.
    tag = {
        "f": 41,
        "t": 1.5,
        "s": [640, 480],
        "g": [[0, 1]],
        "d": [
            [64, 48, 192, 432, 0.91, "person", 3],
            [320, 96, 448, 480, 0.77, "person", 4],
            [500, 400, 540, 440, 0.55, "cup", 0],
            [10, 10, 5, 5, 0.9, "person", 9],
        ],
    }
    program = (
        "const [tag, regions] = JSON.parse(input);\nconsole.log(JSON.stringify({\n"
        "  parsed: picamd.parseDetections(JSON.stringify(tag)),\n"
        "  fromHeaders: picamd.frameFromHeaders({'x-frame-id': '42', 'x-detections': JSON.stringify(tag), 'x-people': '2'}),\n"
        "  fromMeta: picamd.frameFromMeta({frame_id: 42, detections: tag, people: 2}),\n"
        "  bad: [picamd.parseDetections('not json'), picamd.parseDetections('{\"d\": []}'), picamd.parseDetections(null),\n"
        "        picamd.parseDetections({s: [0, 0], d: []})],\n"
        "  summaries: [picamd.peopleSummary(2, picamd.parseDetections(tag)),\n"
        "              picamd.peopleSummary(3, picamd.parseDetections(tag)),\n"
        "              picamd.peopleSummary(1, null), picamd.peopleSummary(0, picamd.parseDetections({s: [1, 1], d: []})),\n"
        "              picamd.peopleSummary(null, null)],\n"
        "  outlines: picamd.regionOutlines(regions, {press1: 'RUNNING'}),\n"
        "  noOutlines: [picamd.regionOutlines(null), picamd.regionOutlines({frame: null, regions: []})],\n"
        "}));\n"
    )
    regions = {
        "frame": [640, 480],
        "regions": [
            {"name": "press1", "points": [[384, 144], [576, 144], [576, 288], [384, 288]], "state": "STOPPED"},
            {"name": "tri", "points": [[64, 48], [192, 48], [128, 192]], "state": "DEEP_SLEEP"},
            {"name": "broken", "points": [[1, 2]]},
        ],
    }
    out = run_node(tmp_path, program, json.dumps([tag, regions]).encode())
    parsed = out["parsed"]
    assert parsed["frameId"] == 41 and parsed["groups"] == [[0, 1]]
    assert len(parsed["boxes"]) == 3  # the box with x2 < x1 is left out
    first = parsed["boxes"][0]
    assert first["x"] == pytest.approx(0.1) and first["y"] == pytest.approx(0.1) and first["w"] == pytest.approx(0.2)
    assert first["h"] == pytest.approx(0.8) and first["text"] == "person #3 0.91" and first["group"] == 1 and first["track"] == 3
    assert parsed["boxes"][2]["text"] == "cup 0.55" and parsed["boxes"][2]["group"] == 0
    assert out["fromHeaders"]["people"] == 2 and out["fromHeaders"]["detections"] == parsed and out["fromHeaders"]["other"] == {}
    assert out["fromMeta"]["people"] == 2 and out["fromMeta"]["detections"] == parsed and out["fromMeta"]["other"] == {}
    assert out["bad"] == [None, None, None, None]
    assert out["summaries"] == [
        "2 people in view: 1 group of 2",
        "3 people in view: 1 group of 2, 1 alone",
        "1 person in view",
        "no one in view",
        "no detection result (detection is off, or nothing has been computed yet)",
    ]
    assert out["outlines"] == [
        {"name": "press1", "points": [[0.6, 0.3], [0.9, 0.3], [0.9, 0.6], [0.6, 0.6]], "state": "RUNNING"},  # the frame's state wins
        {"name": "tri", "points": [[0.1, 0.1], [0.3, 0.1], [0.2, 0.4]], "state": "DEEP_SLEEP"},
    ]
    assert out["noOutlines"] == [[], []]


# --- against the real daemon ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("page-daemon")
    d = Daemon(workdir, {"motion.regions": [{"name": "machine", "rect": [0.6, 0.3, 0.3, 0.3]}]}).start()
    yield d
    d.stop()


def test_the_daemon_serves_what_the_page_reads(daemon):
    status, headers, body = daemon.http("/")
    assert status == 200 and "Content-Security-Policy" in headers and PAGE_JS.read_bytes() in body
    health = json.loads(daemon.http("/health")[2])
    # The fields the page shows or computes with, from the real health report.
    assert health["camera"]["frame_size"] == [640, 480] and health["camera"]["state"] == "ok"
    assert health["clients"]["control"]["port"] == daemon.control_port
    assert health["status"] in ("ok", "degraded") and isinstance(health["degraded"], list)
    assert all(name in health["components"] and "state" in health["components"][name] for name in health["degraded"])
    assert health["night"]["mode"] in ("auto", "day", "night")
    region = health["motion"]["regions"]["machine"]
    assert region["state"] in ("UNKNOWN", "RUNNING", "STOPPED", "DEEP_SLEEP") and region["in_state_s"] >= 0
    meta = json.loads(daemon.http("/meta")[2])
    assert isinstance(meta["frame_id"], int) and re.fullmatch(r"machine=\d\.\d{4}:[A-Z_]+", meta["motion"])
    status, headers, jpeg = daemon.http("/snapshot.jpg")
    assert status == 200 and int(headers["X-Frame-Id"]) >= 1
    assert decode_jpeg(jpeg).shape == (480, 640, 3)
    # The outlines the page draws, in full-frame pixels: the region given in fractions, as the camera measures it.
    outlines = json.loads(daemon.http("/regions")[2])
    assert outlines["frame"] == [640, 480]
    machine = next(r for r in outlines["regions"] if r["name"] == "machine")
    assert machine["points"] == [[384, 144], [576, 144], [576, 288], [384, 288]] and machine["bbox"] == [384, 144, 192, 144]
    assert machine["state"] in ("UNKNOWN", "RUNNING", "STOPPED", "DEEP_SLEEP", "SETTLING")


@needs_chromium
def test_in_chromium_the_page_shows_frames_and_outlines_the_regions(daemon):
    dom = page_dom(daemon.http_port)
    parser = PageParser()
    parser.feed(dom)
    marks = dom[dom.index('id="region-marks"') : dom.index('id="box-marks"')]
    polygons = re.findall(r'<polygon points="([^"]+)" class="([A-Z_]+)"', marks)
    assert ("0.6,0.3 0.9,0.3 0.9,0.6 0.6,0.6", polygons[0][1]) in polygons, marks
    assert re.search(r'<span class="region"[^>]*left: 60%; top: 30%;[^>]*>machine [A-Z_]+</span>', dom)
    frame_id = re.search(r'id="frame_id" class="num">(\d+)<', dom)
    assert frame_id and int(frame_id.group(1)) >= 1, "no frame was shown"
    assert 'id="people" class="num">no detection result' in dom  # detection is off here


@needs_node
def test_the_line_the_page_builds_is_accepted_by_the_command_port(daemon, tmp_path):
    health = json.loads(daemon.http("/health")[2])
    taken = list(health["motion"]["regions"])
    program = (
        "const [rect, size, name, min, taken] = JSON.parse(input);\n"
        "console.log(JSON.stringify(picamd.regionCommand(rect, size, name, min, taken, 'x')));\n"
    )

    def build(rect, name, min_text=""):
        return run_node(tmp_path, program, json.dumps([rect, health["camera"]["frame_size"], name, min_text, taken]).encode())

    out = build([0.05, 0.1, 0.25, 0.7], "door", "0.1")
    assert out["error"] == "" and out["command"] == "region add door 32 48 128 288 0.1"
    reply = replies(daemon.cmd(out["command"]))[0]
    assert reply.startswith("OK region door added"), reply
    regions = {r["name"]: r for r in reply_json(replies(daemon.cmd("regions"))[0])["regions"]}
    assert regions["door"]["rect"] == [32, 48, 128, 288] and regions["door"]["min_fraction"] == 0.1
    assert wait_for(lambda: "door=" in json.loads(daemon.http("/meta")[2]).get("motion", ""), timeout=20)

    # A name the daemon already has: the page refuses to build the line, and the daemon would refuse it too.
    refused = build([0.5, 0.5, 0.9, 0.9], "machine")
    assert refused["command"] == "" and "exists already" in refused["error"]
    assert replies(daemon.cmd("region add machine 320 240 256 192"))[0].startswith("ERR")
    regions_after = {r["name"]: r for r in reply_json(replies(daemon.cmd("regions"))[0])["regions"]}
    assert regions_after["machine"]["rect"] == [0.6, 0.3, 0.3, 0.3]  # unchanged
