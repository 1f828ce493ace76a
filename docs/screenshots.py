"""The screenshots in docs/img, taken in headless Chromium: the HTML report's main table and
MLflow's compare view of the SSRL runs (switches against test EER).

Not part of the workflow or the tests; needs Playwright and a Chromium, e.g. on Debian:
    apt-get install chromium-headless-shell && pip install playwright
then, after `make report` and with `python -m ssrl mlflow-ui --results results` running:
    python docs/screenshots.py report results/report.html docs/img/report-main-table.png
    python docs/screenshots.py compare --experiment claims --out docs/img/mlflow-compare.png

The two links `ssrl mlflow-ui` prints (the systems by test EER; the SSRL variants charted)
need no clicks, so they are shot with the plain Chromium command line (`apt-get install
chromium`; no Playwright): this starts `ssrl mlflow-ui` on a free local port, shoots each link,
and stops the server again:
    .venv/bin/python docs/screenshots.py views --results results --out-dir docs/img
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ASSISTANT_PX = 580  # MLflow 3 opens its assistant chat pane on the right on a first visit


def mlflow_views(results: Path, out_dir: Path, chromium: str, size: str = "2300,1000",
                 wait_ms: int = 20000) -> list[Path]:
    """Start `ssrl mlflow-ui` on a free port, shoot every link it prints
    (`mlflow-<view>.png`, the assistant pane cut off), stop the server. Returns the files
    written."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "ssrl", "mlflow-ui", "--results",
                               str(results), "--port", str(port)], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    links: dict[str, str] = {}
    shots = []
    try:
        for line in server.stdout:
            if m := re.match(r"\s+(systems by test EER|SSRL variants charted):\s+(\S+)", line):
                links["systems" if m[1].startswith("systems") else "ssrl"] = m[2]
            if len(links) == 2:
                break
        # keep reading what the server prints, so that a full pipe never blocks it
        threading.Thread(target=server.stdout.read, daemon=True).start()
        for _ in range(120):  # the UI answers once its workers are up
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        for name, url in links.items():
            out = Path(out_dir) / f"mlflow-{name}.png"
            subprocess.run([chromium, "--headless", "--no-sandbox", "--hide-scrollbars",
                            f"--window-size={size}", f"--virtual-time-budget={wait_ms}",
                            f"--screenshot={out.resolve()}", url], check=True,
                           capture_output=True, timeout=180)
            from PIL import Image  # matplotlib's dependency

            with Image.open(out) as img:
                img.load()
            img.crop((0, 0, img.width - ASSISTANT_PX, img.height)).save(out)
            print(f"{out}: {url}")
            shots.append(out)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers, nothing else
        server.wait(timeout=60)
    return shots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    views = sub.add_parser("views", help="the two links `ssrl mlflow-ui` prints")
    views.add_argument("--results", type=Path, default=Path("results"),
                       help="the folder holding mlflow.db")
    views.add_argument("--out-dir", type=Path, default=Path("docs/img"))
    views.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
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
    if a.what == "views":
        mlflow_views(a.results, a.out_dir, a.chromium)
        return
    from playwright.sync_api import sync_playwright

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
