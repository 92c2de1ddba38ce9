"""The MLflow dashboard as a reviewer sees it, in a real (headless) Chromium.

A tracking server on a loopback port it binds itself, a 2-job sweep into it, then the
link the sweep printed opened in Debian's Chromium driven by Playwright, with no click:
the prepared view (app/views.py) must show the readable run names, an image grid with
one final image per run (and its progress), the content-vs-style scatter with one point
per run and the loss curves, in that order; its table view the swept key, both
distances and the time beside a name column wide enough for the names. Should MLflow's
UI ignore or misread the view's state, these fail. A run's own link must open on its
image. Screenshots are kept in the test's tmp dir (paths printed: pytest -s).
Nothing is skipped: without Chromium or Playwright the test fails saying what to install
(CI installs both).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import PROJECT

from style_exp.app.sweeps import sweep_id
from style_exp.cluster import server as team_server

CHROMIUM = Path("/usr/bin/chromium")
# As root in CI: no sandbox; no background connections (the network is closed here).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
NAMES = [f"grace_hopper x night_swirls · style_weight={w}" for w in (50, 5000)]


def _require_browser():
    """Playwright's sync API, failing (not skipping) when the browser stack is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("playwright is missing: pip install -r requirements-dev.txt")
    return sync_api


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


@pytest.fixture
def server(tmp_path):
    """``mlflow server`` (SQLite, artifacts served) on 127.0.0.1; stopped afterwards.

    Port 0: the server binds a free port itself and logs it (no probe-then-bind race).
    """
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = tmp_path / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", "0",
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{team_server.bound_port(process, log_path, wait_s=90)}"
        _wait_for(f"{url}/health", 90)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its workers: its own group
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_dashboard_shows_named_runs_and_their_images(server, tmp_path):
    sync_api = _require_browser()
    done = subprocess.run(
        [sys.executable, str(PROJECT / "run.py"), "-m", "loss.style_weight=50,5000", "size=32",
         "iterations=4", "tracking.checkpoint_every=2", f"tracking.uri={server}",
         f"hydra.sweep.dir={tmp_path / 'sweep'}", "progress=false"],
        cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
        text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # The summary the sweep prints last (callbacks.py): its id and run count, the
    # command comparing it on this server, then the link opened below.
    lines = done.stdout.splitlines()
    sweep = sweep_id(tmp_path / "sweep")
    header = lines.index(f"Sweep {sweep}: 2 runs")
    compare_line, dashboard_line = (line.split(maxsplit=1) for line in lines[header + 1:header + 3])
    assert compare_line == ["compare",
                            f"python -m style_exp.compare --sweep {sweep} --tracking-uri {server}"]
    assert dashboard_line[0] == "dashboard"
    link = dashboard_line[1]
    assert link.startswith(f"{server}/#/experiments/")
    assert f"viewStateShareKey=sweep-{sweep}" in link
    run_links = [line.split()[1] for line in lines if line.startswith("  dashboard  ")][:2]

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(30_000)
        sync_api.expect.set_options(timeout=30_000)  # not 5 s: the machine may be busy
        page.goto(link)  # what the sweep printed; nothing is clicked from here on
        for name in NAMES:
            sync_api.expect(page.get_by_text(name, exact=True).first).to_be_visible()
        cards = page.get_by_test_id("experiment-view-compare-runs-card")
        # The prepared charts, in order: every run's final image (its progress beside it) ...
        grid = cards.nth(0)
        sync_api.expect(grid.get_by_text("Image grid", exact=True)).to_be_visible()
        outputs = grid.locator("img[src*='images%2Foutput%2Bstep%2B0']")
        sync_api.expect(outputs).to_have_count(len(NAMES))
        for image in outputs.element_handles():
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image)
        sync_api.expect(grid.locator("img[src*='images%2Fprogress%2Bstep%2B0']")).to_have_count(
            len(NAMES))
        _screenshot(page, tmp_path / "image_grid.png")
        # ... then the trade-off: one point per run (scrolled to, as a reviewer would).
        page.get_by_test_id("experiment-view-compare-runs-chart-area").hover()
        page.mouse.wheel(0, 700)
        scatter = cards.nth(1)
        sync_api.expect(scatter.get_by_text(
            "quality/content_distance vs. quality/style_distance")).to_be_visible()
        sync_api.expect(scatter.locator(".scatterlayer .point")).to_have_count(len(NAMES))
        sync_api.expect(cards.nth(2).get_by_text("loss/total vs", exact=False)).to_be_visible()
        _screenshot(page, tmp_path / "tradeoff.png")

        # The table view, on a full-HD screen: the table renders only the columns in sight,
        # and MLflow's assistant panel (opened once by the browser, not by the view) takes
        # a quarter of the width.
        page = browser.new_page(viewport={"width": 1920, "height": 900})  # a fresh load
        page.goto(link.replace("compareRunsMode=CHART", "compareRunsMode=TABLE"))
        name_column = page.locator("[col-id='attributes.`Run Name`']").first
        for header in ("sweep.loss.style_weight", "quality/content_distance",
                       "quality/style_distance", "time/total_s"):
            sync_api.expect(page.get_by_text(header, exact=True).first).to_be_visible()
        assert name_column.bounding_box()["width"] >= 7 * max(map(len, NAMES))
        assert page.get_by_text("Token Usage").count() == 0  # not the GenAI overview
        _screenshot(page, tmp_path / "runs_table.png")

        page.goto(run_links[0])  # a run's own link: its page, on its final image
        image = page.locator("img[src^='blob:']").first  # the artifact's preview
        sync_api.expect(image).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=image.element_handle())
        _screenshot(page, tmp_path / "run_image.png")
        browser.close()


def _screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    keep = os.environ.get("STYLE_EXP_SCREENSHOTS")  # a folder to copy them to, if set
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, keep)
