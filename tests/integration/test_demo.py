"""`cdc demo` end to end, short: CI exercises the main job on every landing, and scrapes its
metrics endpoint while it runs (as an operator would with curl)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.fix_cli import clean_env


def _applied(body: str) -> float:
    for family in text_string_to_metric_families(body):
        if family.name == "cdc_changes_applied":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    return 0.0


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: str = response.read().decode()
    return body


def test_demo_runs_end_to_end_with_a_clean_verify_and_serves_metrics(dbs, tmp_path):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_DATA_DIR": str(tmp_path / "data")}
    lines: list[str] = []
    scrapes: list[str] = []
    stderr: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "cdc", "demo", "--scale", "tiny", "--duration", "5", "--rate", "60"],
        env=clean_env(env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        errors = child.stderr
        drain_stderr = threading.Thread(target=lambda: stderr.extend(errors), daemon=True)
        drain_stderr.start()
        for line in child.stdout:
            lines.append(line)
            if match := re.match(r"metrics on (http://\S+/metrics)", line):
                url = match.group(1)
            if line.startswith("[5/7]"):  # the snapshot is applied; the 5 s live sync begins
                scrapes.append(_scrape(url))
                time.sleep(3.5)  # well inside the live sync
                scrapes.append(_scrape(url))
        returncode = child.wait(timeout=300)
        drain_stderr.join(timeout=10)
    output = "".join(lines)
    assert returncode == 0, output[-3000:] + "".join(stderr)[-3000:]
    assert "[7/7] verify:" in output
    assert " 0 differences" in output
    assert "demo finished" in output
    assert len(scrapes) == 2
    snapshot_applied, live_applied = (_applied(body) for body in scrapes)
    rows = int(re.search(r"\[3/7\] generated ([\d,]+) rows", output).group(1).replace(",", ""))
    assert snapshot_applied >= rows  # every generated row went through the applier
    assert live_applied > snapshot_applied  # and the live workload's changes after them
    assert "cdc_outbox_backlog_changes" in scrapes[1]
