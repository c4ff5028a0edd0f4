"""The HTML report in a real headless browser (Debian's ``chromium``, installed by
``make test`` through scripts/ensure-chromium.sh): no console errors, no failed
loads, every chart drawn with a non-empty area; the screenshot is kept in
``test-artifacts/finance-report.png``.

The report itself has no script. To observe the rendering, the test opens a copy
with a probe script at the top of ``<head>`` that records errors (resource loads,
script errors, ``console.error``) and, once loaded, the drawn size of every chart;
the result is read back from the dumped DOM. The unmodified report is opened too,
and Chromium's own console log must stay empty.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import TypedDict

from tests.finance.example import GRANTS, OPERATORS_TOML, REJECTIONS, make_ledger, run

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

PROBE = """<script>
window.__probe = {errors: []};
window.addEventListener("error", function (e) {
  var t = e.target || {};
  window.__probe.errors.push("load/script error: " + (t.src || t.href || e.message));
}, true);
var __err = console.error;
console.error = function () { window.__probe.errors.push("console.error: " +
  Array.prototype.join.call(arguments, " ")); __err.apply(console, arguments); };
window.addEventListener("load", function () {
  var charts = Array.prototype.map.call(document.querySelectorAll("figure.chart"),
    function (f) {
      var svg = f.querySelector("svg");
      var r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
      var shapes = svg ? svg.querySelectorAll("path, rect, line, text").length : 0;
      var box = svg ? svg.getBBox() : {width: 0, height: 0};
      return {id: f.id, width: r.width, height: r.height, shapes: shapes,
              drawn: box.width * box.height};
    });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({charts: charts, errors: window.__probe.errors});
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: run `make test` (scripts/ensure-chromium.sh)"
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                           "--enable-logging=stderr", "--v=0", "--no-first-run",
                           "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=120)


class Chart(TypedDict):
    id: str
    width: float
    height: float
    shapes: int
    drawn: float


class Probed(TypedDict):
    """What PROBE writes into the page."""

    charts: list[Chart]
    errors: list[str]


def probe(page: Path) -> Probed:
    probed = page.with_name("probed-" + page.name)
    text = page.read_text(encoding="utf-8")
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    r = chromium("--dump-dom", probed.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert m, r.stderr[-2000:]
    result: Probed = json.loads(m.group(1).replace("&quot;", '"')
                                          .replace("&amp;", "&"))
    return result


def console_lines(page: Path) -> list[str]:
    r = chromium("--dump-dom", page.as_uri())
    return [line for line in r.stderr.splitlines() if ":CONSOLE" in line]


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    ops = tmp_path / "operators.toml"
    ops.write_text(OPERATORS_TOML)
    led = make_ledger(tmp_path / "l.duckdb", GRANTS, REJECTIONS)
    r = run("report", "--ledger", str(led), "--out", str(tmp_path / "rp"), "--operators",
            str(ops))
    assert r.returncode == 0, r.stderr
    page = tmp_path / "rp" / "report.html"

    result = probe(page)
    assert result["errors"] == []
    charts = {c["id"]: c for c in result["charts"]}
    assert set(charts) == {"chart-budget", "chart-payout", "chart-rejections"}
    for c in charts.values():
        assert c["width"] > 300 and c["height"] > 100, c
        assert c["shapes"] > 10 and c["drawn"] > 10_000, c
    assert console_lines(page) == []

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "finance-report.png"
    shot.unlink(missing_ok=True)
    r2 = chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert shot.exists() and shot.stat().st_size > 50_000, r2.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The same checks on a broken page: a failed load, a console error, an empty chart."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
                   '<figure id="chart-empty" class="chart"><svg width="400" height="200">'
                   '</svg></figure><img src="missing.png">'
                   '<script>console.error("boom")</script></body></html>')
    result = probe(bad)
    errors = result["errors"]
    assert any("missing.png" in e for e in errors)
    assert any("console.error: boom" in e for e in errors)
    (chart,) = result["charts"]
    assert chart["drawn"] == 0 and chart["shapes"] == 0
    assert any("boom" in line for line in console_lines(bad))
