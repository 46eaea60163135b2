"""The FastAPI example's page in a real browser (headless Chromium, driven by Playwright
from `sse_page.mjs`): clicking the button queues a track, and the progress bar fills from
the server-sent events to 100 % and shows the job completed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from browser.server import serve_example

HERE = Path(__file__).parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = Path("/tmp/kerrera-fastapi-sse-page.png")


def _missing() -> str | None:
    """Why the browser test cannot run here, or None (.ci/run installs all of these)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (npm ci in tests/browser)"
    return None


def test_the_page_shows_a_tracks_progress_live_until_completed(dsn: str, prefix: str) -> None:
    reason = _missing()
    if reason is not None:
        print(f"skipping the browser test: {reason}")
        pytest.skip(reason)
    SCREENSHOT.unlink(missing_ok=True)  # so the check below sees this run's
    with serve_example(dsn, prefix, step=0.3) as server:
        run = subprocess.run(
            ["node", str(HERE / "sse_page.mjs"), server.url(), str(SCREENSHOT)],
            cwd=HERE, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert run.returncode == 0, f"{run.stderr}\n--- server log:\n{server.log}"
    page = json.loads(run.stdout.strip().splitlines()[-1])
    print("page:", page)
    assert page["problems"] == []
    assert page["state"] == "completed" and page["stateText"] == "completed"
    assert page["percentText"] == "100%" and page["valueNow"] == "100"
    assert page["width"] == "100%"
    assert page["title"].startswith("Browser track")
    # The bar moved through intermediate values: the progress was streamed, not read at
    # the end; the page opened one stream and closed it on the final event (an open
    # EventSource would reconnect to the ended stream).
    percents = page["percents"]
    assert percents == sorted(percents) and any(0 < p < 100 for p in percents), percents
    assert page["streams"] == 1 and page["stream"] == "closed"
    assert SCREENSHOT.exists()
