"""A short run of benchmarks/bench_load.py: overload is answered with 503 + Retry-After, never
with another 5xx, and invalid uploads get their own 4xx without failing the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_load.py"


def test_load_smoke_run_has_no_5xx_and_sheds_load_with_retry_after(tmp_path):
    out = tmp_path / "load.json"
    command = [sys.executable, str(SCRIPT), "--clients", "16", "--duration", "8"]
    command += ["--max-queue", "8", "--max-batch", "4", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())["rows"][0]
    assert result["requests"] > 20
    assert result["server_errors"] == 0, result["status_counts"]
    assert result["503_total"] > 0, "16 clients against a queue of 8 images must overflow it"
    assert result["503_with_retry_after"] == result["503_total"]
    # a request whose images are all refused takes their status; anything else is 200 or 503
    assert set(result["status_counts"]) <= {"200", "413", "415", "422", "503"}
    items = result["item_status_counts"]
    assert int(items["200"]) > 0 and set(items) - {"200"} <= {"413", "415", "422"}
    assert len(set(items) - {"200"}) >= 2  # the invalid uploads were answered per image


def test_load_tool_refuses_to_flood_anything_but_loopback(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--url", "http://example.org", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0 and "loopback" in done.stderr
