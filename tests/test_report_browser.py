"""report.html as a reader sees it: rendered by a headless Chromium, the page shows its tables and every embedded
figure. Runs where Chromium is installed (Debian: `apt-get install chromium`); elsewhere it is skipped, saying so.
With LETHE_SCREENSHOTS=DIR the screenshots are kept there."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")


def screenshot(page: Path, png: Path, tmp: Path, width: int = 1200, height: int = 2400) -> None:
    """Chromium's own rendering of ``page`` (no network: the report is self-contained)."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp / 'profile'}", f"--window-size={width},{height}", f"--screenshot={png}",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and png.exists(), done.stderr[-2000:]


def coloured_share(png: Path) -> tuple[float, float, tuple[int, int]]:
    """(share of strongly coloured pixels, share of non-white pixels, size): plot lines and markers are coloured,
    text and table rules are grey."""
    import numpy as np
    from PIL import Image

    img = Image.open(png).convert("RGB")
    rgb = np.asarray(img).astype(int)
    coloured = float(((rgb.max(-1) - rgb.min(-1)) > 60).mean())
    inked = float((rgb.min(-1) < 235).mean())
    return coloured, inked, img.size


def test_the_report_renders_its_tables_and_figures_in_a_browser(tokenizer, smoke_data, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    from lethe.cli.commands import main
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "m")
    (tmp_path / "f.json").write_text(json.dumps([r.to_dict() for r in smoke_data.forget(10)]))
    (tmp_path / "r.json").write_text(json.dumps([r.to_dict() for r in smoke_data.retain(10)]))
    for name, method in (("ga", "GA+GD"), ("npo", "NPO+GD")):
        with pytest.raises(SystemExit) as e:
            main(["--quiet", "unlearn", "--model", str(tmp_path / "m"), "--forget", str(tmp_path / "f.json"),
                  "--retain", str(tmp_path / "r.json"), "--method", method, "--epochs", "3", "--lr", "1e-3",
                  "--max-new-tokens", "3", "--out", str(tmp_path / name)])
        assert e.value.code == 0, capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "report", str(tmp_path / "ga"), str(tmp_path / "npo"), "--out", str(tmp_path / "rep")])
    assert e.value.code == 0, capsys.readouterr().err
    page = tmp_path / "rep" / "report.html"
    html = page.read_text()
    assert html.count("data:image/png;base64") >= 1

    screenshot(page, tmp_path / "report.png", tmp_path)
    coloured, inked, size = coloured_share(tmp_path / "report.png")
    assert size == (1200, 2400)
    assert inked > 0.02  # text and tables drawn, not a blank page

    # the same page without its figures: what the figures add is what the browser drew from them
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'<img [^>]*src="data:image/png;base64,[^"]*"[^>]*>', "", html))
    screenshot(bare, tmp_path / "bare.png", tmp_path)
    coloured_bare, _, _ = coloured_share(tmp_path / "bare.png")
    assert coloured > 0.0005 and coloured > 5 * coloured_bare, (coloured, coloured_bare)

    keep = os.environ.get("LETHE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "report.png", Path(keep) / "report-unlearn-runs.png")
