"""The MLflow UI as a user sees it: headless Chromium (Debian's package) on `lunartune ui`'s server.

Two stores: one built by hand with the MLflow client (build_sweep_store in test_ui.py: fast, exact
names and values), and the session's real tiny sweep (sweep_fixture.py) with a real `lunartune report`
logged to its parent run. Skips only when Chromium or playwright cannot be had; never downloads a
browser (no `playwright install`). Screenshots go to tmp_path; docs/img/ holds copies chosen by hand
for the README (docs/img/mlflow-ui-runs.png is the real sweep's runs page).
"""
from __future__ import annotations

import contextlib

import pytest

from browser_helpers import chromium_context, expand_parent, metric_chart, runs_url, tidy
from sweep_fixture import finished_sweep
from test_ui import EPOCHS, EXPERIMENT, TRIALS, build_sweep_store
from tuner.ui import running_mlflow_ui, sweep_links

pytestmark = pytest.mark.slow

TRIAL = "vgg11-t002"  # the trial whose page is checked (3 epochs of metrics)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as context:  # empty: no state between runs
        yield context


@pytest.fixture(scope="module")
def site(tmp_path_factory, browser_context):
    root = tmp_path_factory.mktemp("run")
    with contextlib.chdir(root):
        store = build_sweep_store(root)
    with running_mlflow_ui(store["paths"], 5000) as server:
        yield {**store, "url": server.url, "runs_url": runs_url(server.url, store["experiment_id"])}


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    yield page
    page.close()


def test_runs_table_lists_every_trial_under_the_parent(site, page, tmp_path):
    page.goto(site["runs_url"])
    expand_parent(page, "sweep-latest", TRIALS)
    assert page.get_by_role("link", name="sweep-old", exact=True).is_visible()
    tidy(page)
    page.screenshot(path=tmp_path / "runs.png")


def test_trial_page_charts_val_miou_per_epoch(site, page, tmp_path):
    page.goto(f"{site['runs_url']}/{site['trial_ids'][TRIAL]}")
    card = metric_chart(page, TRIAL, "val_miou")
    assert card.locator(".scatterlayer .point").count() == EPOCHS  # one point per epoch (step)
    tidy(page)
    card.scroll_into_view_if_needed()
    page.screenshot(path=tmp_path / "trial-metrics.png")


def test_parent_artifacts_include_the_report(site, page, tmp_path):
    page.goto(f"{site['runs_url']}/{site['parent_id']}/artifacts")
    page.get_by_text("report", exact=True).click()
    page.get_by_text("val_miou.png", exact=True).wait_for()
    page.get_by_text("report.md", exact=True).click()
    page.get_by_text("Best trial: vgg11-t002").wait_for()  # the preview shows the file's content
    tidy(page)
    page.screenshot(path=tmp_path / "report.png")


def test_printed_links_open_the_runs_table_and_the_latest_sweep(site, page):
    """The URLs `lunartune ui` prints: the runs table (not MLflow 3's GenAI overview) and the parent run."""
    runs_line, sweep_line = sweep_links(site["url"], EXPERIMENT)
    page.goto(runs_line.split()[-1])
    page.get_by_role("grid").get_by_role("link", name="sweep-latest", exact=True).wait_for()
    page.goto(sweep_line.split()[-1])
    page.get_by_role("heading", name="sweep-latest", exact=True).wait_for()
    page.get_by_role("tab", name="Artifacts").wait_for()


# ----------------------------------------------------------------------------- a real sweep + report

@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, scenes, local_ray):
    """The session's real tiny sweep, reported (so the parent run holds report/), with its trials as
    MLflow lists them: the children of the parent run."""
    from mlflow import MlflowClient

    from tuner.report import ReportConfig, report
    from tuner.tracking import PARENT_TAG

    sweep = finished_sweep(tmp_path_factory, scenes, "ui-browser")
    result = report(ReportConfig(experiment=sweep.experiment, out=tmp_path_factory.mktemp("report"), device="cpu"),
                    sweep.paths)
    assert result.parent_run_id == sweep.parent_run_id
    client = MlflowClient(tracking_uri=sweep.paths.tracking_uri)
    parent = client.get_run(sweep.parent_run_id)
    trials = client.search_runs([sweep.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{sweep.parent_run_id}'")
    assert len(trials) >= 2, [t.info.run_name for t in trials]
    return {"sweep": sweep, "parent_name": parent.info.run_name, "client": client,
            "trials": {t.info.run_name: t.info.run_id for t in trials}}


def test_real_sweep_in_the_ui_lists_trials_charts_val_miou_and_has_the_report(real_sweep, browser_context, tmp_path):
    sweep = real_sweep["sweep"]
    with running_mlflow_ui(sweep.paths, 5000) as server:
        table = runs_url(server.url, sweep.experiment_id)
        page = browser_context.new_page()
        try:
            page.goto(table)
            expand_parent(page, real_sweep["parent_name"], real_sweep["trials"])
            tidy(page)
            page.screenshot(path=tmp_path / "real-runs.png")

            # the trial with the most epochs (ASHA stops some after one: a lone point draws no line)
            history = {name: len(real_sweep["client"].get_metric_history(run_id, "val_miou"))
                       for name, run_id in real_sweep["trials"].items()}
            name = max(sorted(history), key=history.get)
            run_id, epochs = real_sweep["trials"][name], history[name]
            assert epochs >= 2, history
            page.goto(f"{table}/{run_id}")
            card = metric_chart(page, name, "val_miou")
            assert card.locator(".scatterlayer .point").count() == epochs
            tidy(page)
            card.scroll_into_view_if_needed()
            page.screenshot(path=tmp_path / "real-trial-metrics.png")

            page.goto(f"{table}/{sweep.parent_run_id}/artifacts")
            page.get_by_text("report", exact=True).click()
            page.get_by_text("curves.png", exact=True).wait_for()
            page.get_by_text("report.md", exact=True).click()
            page.get_by_text(f"Sweep report: {sweep.experiment}").wait_for()  # the preview shows report.md
            tidy(page)
            page.screenshot(path=tmp_path / "real-report.png")
        finally:
            page.close()
