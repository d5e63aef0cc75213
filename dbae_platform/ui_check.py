"""The MLflow UI as a user lands on it, checked in a real headless browser (Debian's `chromium`).

    python -m dbae_platform.cli.ui_check --runs-dir runs --out build/ui-check

Serves the embedded store of `--runs-dir` with `dbae ui` on a free loopback port, then opens the newest sweep's pages
in headless Chromium and writes a screenshot of each: the experiment's runs table (`runs_table.png`), the parent
run's ablation table (`ablation_table.png`) and a child run's image grid (`image_grid.png`). Each page is also read
back as rendered HTML, and the check fails (exit 1) unless the runs table shows the sweep's parent run (its trials
nest under it), the ablation page shows the table with the swept key and the image page shows the image.
`make ui-check` runs it on the demo's runs.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@dataclass(frozen=True)
class Page:
    name: str  # the screenshot's stem
    url: str
    expect: tuple[str, ...]  # text the rendered page must contain


class UICheckError(RuntimeError):
    """A page did not show what it should."""


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pages(uri: str, ui: str) -> list[Page]:
    """The newest sweep's runs table, its parent run's ablation table and a child's newest image grid."""
    from dbae_platform import ablation
    from dbae_platform.tracking import child_runs, mlflow_client, ui_url

    client = mlflow_client(uri)
    sweeps = [e for e in client.search_experiments(order_by=["last_update_time DESC"]) if e.name.startswith("sweep/")]
    if not sweeps:
        raise LookupError(f"no sweep in the MLflow store {uri}: run one first (make demo)")
    parent = ablation.find_sweep(client, sweeps[0].name)
    exp_id, parent_id = parent.info.experiment_id, parent.info.run_id
    children = child_runs(client, parent_id)
    swept = json.loads(parent.data.tags.get("dbae.sweep.swept", "[]"))
    # The runs table nests the trials under their parent run (collapsed), so it shows the parent's name; the ablation
    # table's markdown is rendered as a table headed by the swept keys.
    out = [Page("runs_table", ui_url(uri, exp_id, ui=ui), (parent.info.run_name or parent_id,)),
           Page("ablation_table", ui_url(uri, exp_id, parent_id, ui=ui) + "/artifactPath/ablation/ablation.md",
                ("ablation.md", *swept[:1]))]
    for run in children:
        images = sorted(a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png"))
        if images:
            out.append(Page("image_grid", ui_url(uri, exp_id, run.info.run_id, ui=ui) + f"/artifactPath/{images[-1]}",
                            ("<img", images[-1].rsplit("/", 1)[-1])))
            break
    return out


def render(browser: str, url: str, png: Path, size: str = "1400,900", budget_ms: int = 20000) -> str:
    """Screenshot of `url` into `png` and its rendered HTML, each after `budget_ms` of the page's virtual time."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}",
             f"--virtual-time-budget={budget_ms}", "--no-first-run", "--disable-extensions"]
    with tempfile.TemporaryDirectory(prefix="dbae_ui_") as profile:
        subprocess.run([browser, *flags, f"--user-data-dir={profile}", f"--screenshot={png}", url],
                       capture_output=True, timeout=120, check=True)
        dom = subprocess.run([browser, *flags, f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    return dom


def _wait_for(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise UICheckError(f"the MLflow UI did not answer at {url} within {timeout:.0f} s") from None
            time.sleep(0.5)


def check(runs_dir: Path, out: Path, browser: str) -> list[Path]:
    """Serve `runs_dir` with `dbae ui`, screenshot each page into `out`; UICheckError when one lacks its content."""
    port = _free_port()
    ui = f"http://127.0.0.1:{port}"
    targets = pages(f"sqlite:///{runs_dir.resolve() / 'mlflow.db'}", ui)
    out.mkdir(parents=True, exist_ok=True)
    server_log = (out / "server.log").open("w")  # the UI server's own output, for when a page does not come
    server = subprocess.Popen([sys.executable, "-m", "dbae_platform.cli", "ui", "--runs-dir", str(runs_dir),
                               "--port", str(port)], stdout=server_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    written, missing = [], []
    try:
        _wait_for(ui + "/health", timeout=240)
        for page in targets:
            png = out / f"{page.name}.png"
            dom = render(browser, page.url, png)
            written.append(png)
            lacking = [text for text in page.expect if text not in dom]
            log.info("%s: %s -> %s%s", page.name, page.url, png, f" (lacks {lacking})" if lacking else "")
            if lacking:
                missing.append(f"{page.name} ({page.url}) lacks {', '.join(map(repr, lacking))}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    if missing:
        raise UICheckError("; ".join(missing))
    return written
