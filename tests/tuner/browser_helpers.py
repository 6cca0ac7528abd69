"""Headless Chromium (Debian's package) driven by playwright, and the MLflow UI page steps the browser
tests share. Not a test module: test_ui_browser.py imports it.

Never downloads a browser (no `playwright install`): without Chromium or playwright the tests skip.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # the UI's first load compiles a large bundle on two busy cores
VIEWPORT = {"width": 1280, "height": 720}


@contextlib.contextmanager
def chromium_context(profile: Path) -> Iterator[object]:
    """A persistent playwright context on an empty profile dir; skips the test without Chromium/playwright."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


def runs_url(base_url: str, experiment_id: str) -> str:
    """The runs table by explicit route (MLflow 3 otherwise opens a GenAI overview)."""
    return f"{base_url}/#/experiments/{experiment_id}/runs"


def tidy(page) -> None:
    """Close the GenAI assistant panel so screenshots show the runs, not an empty chat."""
    close = page.get_by_role("button", name="Close", exact=True)
    with contextlib.suppress(Exception):  # the panel may not be open in a fresh profile
        close.click(timeout=5_000)


def parent_cell(page, parent_name: str):
    """The runs-table cell of a parent run (its name link plus the expand button); waits for it."""
    cell = page.get_by_role("gridcell").filter(has=page.get_by_role("link", name=parent_name, exact=True))
    cell.wait_for()
    return cell


def expand_parent(page, parent_name: str, children) -> None:
    """Expand a parent run in the runs table and wait until each child run's name is listed."""
    cell = parent_cell(page, parent_name)
    for child in children:  # nested under the parent, so hidden until it is expanded
        assert page.get_by_role("link", name=child, exact=True).count() == 0, child
    cell.get_by_role("button").click()
    for child in children:
        page.get_by_role("link", name=child, exact=True).wait_for()


def metric_chart(page, trial_name: str, metric: str):
    """On a run page: open Model metrics and return the card charting `metric` once its line is drawn.

    The charts are filtered to `metric` first: a real trial logs a dozen metrics and the UI draws only the
    charts in view, so an unfiltered val_miou chart below the fold never gets a plot."""
    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_placeholder("Search metric charts").fill(metric)
    heading = page.get_by_role("heading", name=metric, exact=True)
    # The innermost element holding both the chart's title and its plot is the chart's card.
    card = page.locator("div").filter(has=heading).filter(has=page.locator(".js-plotly-plot")).last
    card.scroll_into_view_if_needed()
    card.get_by_text(f"{trial_name} ({metric})").wait_for()
    card.locator("path.js-line").first.wait_for()
    return card
