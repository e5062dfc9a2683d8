"""The lesion report as a radiologist sees it: rendered by a real browser (Debian's headless
Chromium), the release status and the lesion finding must be visible text, the status at the top
of the page. Skipped only when ``chromium`` is not installed (``.ci/run`` installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import ellipse

from models import report as R
from models.descriptors import describe
from models.verdict import governing_note, lesion_at_click, release_statement

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
PROBE = """<script>
const banner = document.getElementById('release-status').getBoundingClientRect();
const out = document.createElement('pre');
out.id = 'probe';
out.textContent = JSON.stringify({text: document.body.innerText, bannerTop: banner.top,
  bannerHeight: banner.height});
document.body.appendChild(out);
</script>"""
"""Appended to a copy of the page: ``innerText`` holds only what is rendered visibly."""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1000,1400", *args],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def _rendered(page: Path) -> dict:
    import json

    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = _chromium("--dump-dom", probe.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:]
    import html

    return json.loads(html.unescape(found.group(1)))


def _reports(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    mask = np.zeros((256, 320), dtype=bool)
    rr, cc = ellipse(120, 160, 30, 50, shape=mask.shape)
    mask[rr, cc] = True
    image = np.clip(rng.normal(120, 12, mask.shape) - 80 * mask, 0, 255).astype(np.uint8)
    status, statement = release_statement("1.4.0")
    signed = {
        "case_id": "case-0001", "lesion_found": True, "finding": "lesion found at the click",
        "malignancy_probability": 0.06, "suggestion": "possibly benign", "birads": "4A",
        "birads_note": governing_note("benign", "4A", 0.06, "high-specificity", 0.3),
        "descriptors": describe(image, mask), "mode": "high-specificity",
        "model_version": "1.4.0", "release_status": status, "release_statement": statement,
        "latency_ms": 31.0,
    }  # fmt: skip
    check = lesion_at_click(np.zeros_like(mask), (20, 20))
    status, statement = release_statement(None)
    candidate = {
        **signed, "case_id": "case-0002", "lesion_found": False, "finding": check.finding,
        "malignancy_probability": None, "suggestion": None, "birads": None, "birads_note": None,
        "descriptors": None, "release_status": status, "release_statement": statement,
    }  # fmt: skip
    return {
        "signed": R.write_lesion_report(
            tmp_path / "signed", image=image, mask=mask, seed=(160, 120), result=signed
        )["html"],
        "candidate": R.write_lesion_report(
            tmp_path / "candidate", image=image, mask=np.zeros_like(mask), seed=(20, 20),
            result=candidate,
        )["html"],
    }  # fmt: skip


def test_chromium_shows_the_release_status_first_and_the_finding(tmp_path):
    pages = _reports(tmp_path)
    signed = _rendered(pages["signed"])
    assert "Model: signed release 1.4.0" in signed["text"]
    assert "Lesion found\tyes" in signed["text"] and "possibly benign" in signed["text"]
    assert "The BI-RADS category governs: 4A means suspicious" in signed["text"]
    candidate = _rendered(pages["candidate"])
    assert "Model: unreleased candidate: not for clinical use" in candidate["text"]
    assert "No lesion found at the click" in candidate["text"]
    assert "Lesion found\tno" in candidate["text"]
    assert "Probability of malignancy" not in candidate["text"]
    for shown in (signed, candidate):  # directly under the title, not below the fold
        assert 0 < shown["bannerTop"] < 150 and shown["bannerHeight"] > 20
    for name, page in pages.items():
        shot = tmp_path / f"{name}.png"
        done = _chromium(f"--screenshot={shot}", page.as_uri())
        assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]
