"""``report.html``: self-contained, with its plots and key numbers; renders in a real browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pytest
from report_outputs import cnn_output, invoke

from sparsify_cli import tables
from sparsify_cli.exporters.artifact import LatencyRow

PNG = b"\x89PNG\r\n\x1a\n"


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_convert_writes_html_with_plots_and_numbers():
    out = cnn_output()
    page = (out / "report.html").read_text()
    report = json.loads((out / "report.json").read_text())
    images = _images(page)
    assert len(images) == 3 and all(img.startswith(PNG) and len(img) > 2000 for img in images)
    for alt in ("accuracy vs latency", "latency percentiles", "per-layer density"):
        assert f'alt="{alt}"' in page
    # offline: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page
    acc = report["accuracy"]
    assert f"{100 * acc['dense']:.2f}%" in page and f"{100 * acc['sparse_onnx']:.2f}%" in page
    art = report["artifacts"][0]["latency"][0]
    assert tables.ms(art["p50_ms"]) in page and tables.speedup(LatencyRow.from_dict(art)) in page
    assert "layer3.conv2" in page and "output head kept dense" in page
    # the headline says what ran and what it gained; the recipe is YAML
    assert "<section class='headline'>" in page and "<dd>magnitude</dd>" in page
    assert "<dd>2:4</dd>" in page and "best speed-up vs dense" in page
    assert "sparsify_recipe: 1" in page and "source: digits_cnn" in page
    assert "<td class=t>model.onnx</td><td class=t>onnx</td><td class=t>held</td>" in page


def test_every_value_is_escaped_and_details_shown():
    from sparsify_cli.html_report import render_html

    report = json.loads((cnn_output() / "report.json").read_text())
    report["input"]["path"] = "<script>alert(1)</script>"
    report["layers"][1]["name"] = "<img src=x onerror=alert(1)>"
    report["warnings"] = [{"kind": "k", "message": "<b>slow</b>", "option": "--x <y>"}]
    art = report["artifacts"][0]
    report["artifacts"].append(
        {
            **art,
            "format": "onnx-int8",
            "path": "model_int8.onnx",
            "sqnr_db": 34.6,
            "quantization": {"mode": "int8", "calib_rows": 256, "excluded": ["/fc/Gemm"]},
        }
    )
    report["artifacts"].append(
        {**art, "format": "condensed", "path": "c.onnx", "condensed_ops": "custom"}
        | {"kernels": "avx2", "layers_condensed": 0}
    )
    report["artifacts"].append(
        {**art, "format": "condensed", "path": "c2.onnx", "condensed_ops": "custom"}
        | {"kernels": "avx2", "layers_condensed": 2, "layers_dense_by_timing": 5}
    )
    page = render_html(report)
    assert "<script>" not in page and "<img src=x" not in page and "<b>slow</b>" not in page
    assert "&lt;script&gt;" in page and "--x &lt;y&gt;" in page
    assert "SQNR 34.6 dB" in page and "excluded (kept float): /fc/Gemm" in page
    assert "custom ops, avx2 kernels; 0 layers condensed" in page
    assert "2 layers condensed, 5 kept dense (faster dense, timed alone)" in page


def test_report_command_regenerates(tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(cnn_output(), out)
    (out / "report.html").unlink()
    result = invoke("report", str(out))
    assert result.exit_code == 0, result.output
    assert len(_images((out / "report.html").read_text())) == 3
    missing = invoke("report", str(tmp_path))
    assert missing.exit_code == 1 and "report.json" in missing.output


def test_no_accuracy_says_so(tmp_path):
    from sparsify_cli.html_report import render_html

    report = json.loads((cnn_output() / "report.json").read_text())
    report["accuracy"] = None
    for entry in (report["baseline"], *report["artifacts"]):
        entry["accuracy"] = None
    page = render_html(report)
    assert len(_images(page)) == 2 and "No accuracy plot" in page


CHECK_IMAGES = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 100).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
</script></body>"""


@pytest.mark.browser
def test_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium installed (apt-get install -y chromium)")
    page = (cnn_output() / "report.html").read_text().replace("</body>", CHECK_IMAGES)
    probe = tmp_path / "probe.html"
    probe.write_text(page)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert 'data-images="3/3"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            *flags,
            f"--screenshot={shot}",
            "--window-size=1100,2400",
            (cnn_output() / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 20_000
    # the screenshot shows a page, not a blank or an error: ink in the headline box and below
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1100, 2400)
    for top in (0, 300, 900):
        band = image.crop((0, top, 1100, top + 300))
        dark = sum(band.histogram()[:128])
        assert dark > 500, f"no text or plot near y={top}"
    keep = tmp_path.parent / "report_html_screenshot.png"  # for a person to look at
    shot.replace(keep)
