"""report.html opens offline in headless Chromium with its table and embedded plots."""

import re
import shutil
import subprocess

import pytest

from slimkit.pipeline import compress, parse_recipe


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(tiny, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it when run as root)")
    raw = tiny()
    raw["stages"][1]["prune"]["sensitivity"] = [0.5, 0.9]
    compress(parse_recipe(raw), tmp_path / "run", log=lambda s: None)
    report = tmp_path / "run" / "report.html"
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            report.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '<table id="stages">' in dom
    # One row per stage plus the input row.
    body = dom.split('<table id="stages">')[1].split("</table>")[0]
    assert body.count("<tr>") == 1 + 5
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', dom)
    assert {
        "accuracy vs bytes per stage",
        "per-layer sparsity and bits",
        "weight histograms before and after",
    } <= set(imgs)
    assert "lenet300" in dom  # the recipe is printed
