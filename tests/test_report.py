from __future__ import annotations

import html
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from rich.console import Console

from slm.errors import SlmError
from slm.report.html import write_report
from slm.run import Run
from slm.train.loop import train


@pytest.fixture
def two_runs(tiny_cfg, tmp_path: Path) -> list[Path]:
    paths = []
    for i, lr in enumerate((1e-2, 3e-3)):
        cfg = tiny_cfg.model_copy(deep=True)
        cfg.train.lr = lr
        train(cfg, Run(tmp_path / f"run{i}"), console=Console(quiet=True), progress=False)
        paths.append(tmp_path / f"run{i}")
    (paths[0] / "samples.md").write_text("# Samples\n\nTo be <or> not")
    return paths


def test_report_is_self_contained_with_plots_and_tables(two_runs: list[Path], tmp_path: Path):
    out = write_report(two_runs, tmp_path / "r.html")
    page = out.read_text()
    assert page.count("<svg") == 5  # loss, val bpb, lr, throughput, grad norm
    # Nothing is fetched when the page opens: no scripts, stylesheets, images or fonts from elsewhere.
    for needle in ("<script", "<link", 'src="http', "@import", "url(http"):
        assert needle not in page
    assert "run0" in page and "run1" in page
    assert "To be &lt;or&gt; not" in page  # samples are escaped, not injected
    assert "[train]" in page and "val bits-per-byte" in page
    single = write_report([two_runs[0]])
    assert single == two_runs[0] / "report.html"
    assert "model FLOPs utilisation" not in page and "MFU" in page  # no peak known on a CPU: a column of dashes


def test_report_plots_mfu_where_the_run_knows_its_device_peak(tiny_cfg, tmp_path: Path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.peak_tflops = 0.5
    train(cfg, Run(tmp_path / "run"), console=Console(quiet=True), progress=False)
    page = write_report([tmp_path / "run"]).read_text()
    assert page.count("<svg") == 6 and "model FLOPs utilisation" in page
    mfu = json.loads((tmp_path / "run/summary.json").read_text())["mfu"]
    assert f"<td>{mfu:.1%}</td>" in page


def test_report_refuses_non_runs(tmp_path: Path):
    with pytest.raises(SlmError, match="not a run folder"):
        write_report([tmp_path])


# Measured in the browser after layout: every plot's box lies inside its grid cell, cells do not overlap,
# and nothing is wider than the window. The result is written into the DOM that --dump-dom prints.
LAYOUT_PROBE = """<script>
addEventListener("load", () => {
  const bad = [];
  const cells = [...document.querySelectorAll(".plot")];
  cells.forEach((c, i) => {
    const box = c.getBoundingClientRect(), svg = c.querySelector("svg").getBoundingClientRect();
    if (svg.left < box.left - 0.5 || svg.right > box.right + 0.5) bad.push("plot " + i + " overflows its cell");
    if (svg.width < 200) bad.push("plot " + i + " is " + svg.width + " px wide");
    cells.slice(i + 1).forEach((d, j) => {
      const o = d.getBoundingClientRect();
      if (box.left < o.right - 0.5 && o.left < box.right - 0.5 && box.top < o.bottom - 0.5 && o.top < box.bottom - 0.5)
        bad.push("plots " + i + " and " + (i + j + 1) + " overlap");
    });
  });
  if (document.documentElement.scrollWidth > innerWidth) bad.push("page wider than the window");
  const out = document.createElement("pre");
  out.id = "layout";
  out.textContent = JSON.stringify({bad, cells: cells.length, width: innerWidth});
  document.body.append(out);
});
</script>"""


def chromium_flags() -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tempfile.mkdtemp()}",
    ]


def test_report_renders_samples_as_markdown_and_skips_lone_points(two_runs: list[Path], tmp_path: Path):
    (two_runs[1] / "samples.md").write_text("# Samples\n\n## Prompt 1\n\n```\nTo be <b>bold</b>\n```\n")
    page = write_report([two_runs[1]], tmp_path / "r.html").read_text()
    assert "<h2>Prompt 1</h2>" in page and "<pre><code>To be &lt;b&gt;bold&lt;/b&gt;" in page
    assert '<svg width="' not in page  # plots scale to their cell
    # A run evaluated once: no plot of a lone validation dot, a line that says where the value is.
    run = Run(two_runs[1])
    rows = run.metrics()
    kept = [m for m in rows if "val_bpb" not in m] + [next(m for m in rows if "val_bpb" in m)]
    run.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))
    page = write_report([two_runs[1]], tmp_path / "one.html").read_text()
    assert "One validation evaluation per run" in page and page.count("<svg") == 4


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 1920])
def test_report_layout_in_headless_chromium(two_runs: list[Path], tmp_path: Path, width: int):
    browser = shutil.which("chromium")
    assert browser, "install Debian's chromium to run this check (apt-get install chromium)"
    out = write_report(two_runs, tmp_path / "r.html")
    probe = tmp_path / "probe.html"
    probe.write_text(out.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    dom = subprocess.run(
        [browser, *chromium_flags(), f"--window-size={width},2000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert dom.count("<svg") == 5 and dom.count("<table") >= 2
    layout = json.loads(html.unescape(dom.split('<pre id="layout">')[1].split("</pre>")[0]))
    assert layout["cells"] == 5 and layout["width"] == width
    assert layout["bad"] == []
    shot = tmp_path / f"r{width}.png"
    subprocess.run(
        [browser, *chromium_flags(), f"--window-size={width},2400", f"--screenshot={shot}", out.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 20_000  # a blank page is a few kB; plots and tables make it far larger
