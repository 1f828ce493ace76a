"""The screenshots in docs/img, taken in headless Chromium: the HTML report's main table and
MLflow's compare view of the SSRL runs (switches against test EER).

Not part of the workflow or the tests; needs Playwright and a Chromium, e.g. on Debian:
    apt-get install chromium-headless-shell && pip install playwright
then, after `make report` and with `python -m ssrl mlflow-ui --results results` running:
    python docs/screenshots.py report results/report.html docs/img/report-main-table.png
    python docs/screenshots.py compare --experiment claims --out docs/img/mlflow-compare.png
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from pathlib import Path

CHROMIUM = "/usr/bin/chromium-headless-shell"
VIEWPORT = {"width": 1500, "height": 1000}


def report_table(page, html: Path, out: Path, table: str = "main results") -> None:
    """Open the report, go to Tables and show one table."""
    page.goto(Path(html).resolve().as_uri())
    page.wait_for_timeout(3000)
    page.get_by_text("Tables", exact=True).click()
    page.wait_for_timeout(1000)
    row = page.get_by_text(table, exact=True).locator("xpath=ancestor::tr[1]")
    row.locator("a").first.click()  # the eye icon: show the table
    page.wait_for_timeout(2500)
    page.screenshot(path=str(out))


def _choose(page, select, wanted: list[str]) -> None:
    """Empty an MLflow multi-select, then type each wanted item."""
    while select.locator("[class*='select-selection-item-remove']").count():
        select.locator("[class*='select-selection-item-remove']").first.click()
        page.wait_for_timeout(200)
    for item in wanted:
        select.click()
        page.keyboard.type(item)
        page.wait_for_timeout(400)
        page.keyboard.press("Enter")
        page.wait_for_timeout(400)
    page.keyboard.press("Escape")


def mlflow_compare(page, url: str, experiment: str, params: list[str], metrics: list[str],
                   out: Path, stage: str = "ssrl") -> None:
    """MLflow's compare view of every run of `stage`, parallel coordinates of params → metrics."""
    import mlflow

    client = mlflow.MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.stage = '{stage}'")
    query = urllib.parse.urlencode({"runs": json.dumps([r.info.run_id for r in runs]),
                                    "experiments": json.dumps([exp.experiment_id])})
    page.goto(f"{url}/#/compare-runs?{query}")
    page.wait_for_timeout(8000)
    selects = page.locator("[class*='select-selector']")
    _choose(page, selects.nth(0), params)
    _choose(page, selects.nth(1), metrics)
    page.mouse.click(5, 500)
    page.wait_for_timeout(2500)
    # the right-hand 390 px are the assistant chat pane
    page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": 1110, "height": 1000})


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    rep = sub.add_parser("report")
    rep.add_argument("html", type=Path)
    rep.add_argument("out", type=Path)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("--url", default="http://127.0.0.1:5000")
    cmp_.add_argument("--experiment", required=True)
    cmp_.add_argument("--params", default="ssrl.noisy_label_modeling,ssrl.queue_len,ssrl.ema,"
                      "ssrl.relabel,ssrl.nlm_label,ssrl.sinkhorn,ssrl.sinkhorn_input")
    cmp_.add_argument("--metrics", default="test/eer")
    cmp_.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        if a.what == "report":
            report_table(page, a.html, a.out)
        else:
            mlflow_compare(page, a.url, a.experiment, a.params.split(","),
                           a.metrics.split(","), a.out)
        browser.close()


if __name__ == "__main__":
    main()
