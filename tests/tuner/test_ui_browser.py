"""The MLflow UI as a user sees it: headless Chromium (Debian's package) on `lunartune ui`'s server.

Skips only when Chromium or playwright cannot be had; never downloads a browser (no `playwright
install`). Screenshots go to tmp_path; docs/img/ holds a copy chosen by hand for the README.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from test_ui import EPOCHS, EXPERIMENT, TRIALS, build_sweep_store
from tuner.ui import running_mlflow_ui, sweep_links

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # the UI's first load compiles a large bundle on two busy cores
TRIAL = "vgg11-t002"  # the trial whose page is checked (3 epochs of metrics)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")  # empty user data dir: no state between runs
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 720})
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, browser_context):
    root = tmp_path_factory.mktemp("run")
    with contextlib.chdir(root):
        store = build_sweep_store(root)
    with running_mlflow_ui(store["paths"], 5000) as server:
        runs_url = f"{server.url}/#/experiments/{store['experiment_id']}/runs"
        yield {**store, "url": server.url, "runs_url": runs_url}


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    yield page
    page.close()


def _tidy(page) -> None:
    """Close the GenAI assistant panel so screenshots show the runs, not an empty chat."""
    close = page.get_by_role("button", name="Close", exact=True)
    with contextlib.suppress(Exception):  # the panel may not be open in a fresh profile
        close.click(timeout=5_000)


def test_runs_table_lists_every_trial_under_the_parent(site, page, tmp_path):
    page.goto(site["runs_url"])
    parent_cell = page.get_by_role("gridcell").filter(has=page.get_by_role("link", name="sweep-latest", exact=True))
    parent_cell.wait_for()
    for trial in TRIALS:  # nested under the parent, so hidden until it is expanded
        assert page.get_by_role("link", name=trial, exact=True).count() == 0
    parent_cell.get_by_role("button").click()
    for trial in TRIALS:
        page.get_by_role("link", name=trial, exact=True).wait_for()
    assert page.get_by_role("link", name="sweep-old", exact=True).is_visible()
    _tidy(page)
    page.screenshot(path=tmp_path / "runs.png")


def test_trial_page_charts_val_miou_per_epoch(site, page, tmp_path):
    page.goto(f"{site['runs_url']}/{site['trial_ids'][TRIAL]}")
    page.get_by_role("tab", name="Model metrics").click()
    heading = page.get_by_role("heading", name="val_miou", exact=True)
    # The innermost element holding both the chart's title and its plot is the chart's card.
    card = page.locator("div").filter(has=heading).filter(has=page.locator(".js-plotly-plot")).last
    card.get_by_text(f"{TRIAL} (val_miou)").wait_for()
    card.locator("path.js-line").first.wait_for()
    assert card.locator(".scatterlayer .point").count() == EPOCHS  # one point per epoch (step)
    _tidy(page)
    card.scroll_into_view_if_needed()
    page.screenshot(path=tmp_path / "trial-metrics.png")


def test_parent_artifacts_include_the_report(site, page, tmp_path):
    page.goto(f"{site['runs_url']}/{site['parent_id']}/artifacts")
    page.get_by_text("report", exact=True).click()
    page.get_by_text("val_miou.png", exact=True).wait_for()
    page.get_by_text("report.md", exact=True).click()
    page.get_by_text("Best trial: vgg11-t002").wait_for()  # the preview shows the file's content
    _tidy(page)
    page.screenshot(path=tmp_path / "report.png")


def test_printed_links_open_the_runs_table_and_the_latest_sweep(site, page):
    """The URLs `lunartune ui` prints: the runs table (not MLflow 3's GenAI overview) and the parent run."""
    runs_line, sweep_line = sweep_links(site["url"], EXPERIMENT)
    page.goto(runs_line.split()[-1])
    page.get_by_role("grid").get_by_role("link", name="sweep-latest", exact=True).wait_for()
    page.goto(sweep_line.split()[-1])
    page.get_by_role("heading", name="sweep-latest", exact=True).wait_for()
    page.get_by_role("tab", name="Artifacts").wait_for()
