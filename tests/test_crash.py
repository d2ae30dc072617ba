"""Crash safety: SIGKILL at random moments loses and repeats nothing.

Training killed again and again (mid-step, mid-checkpoint) and resumed each time ends with the
same parameters as a run never interrupted; `detect` killed mid-way and resumed writes every
row exactly once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from miragedet.data.synthetic import write_layout
from miragedet.model.mirage import load_pretrained

TRAIN = ["--backbone", "tiny", "--batch-size", "16", "--epochs", "3", "--depth", "2"]
TRAIN += ["--bank-size", "24", "--workers", "0", "--lr", "0.05", "--log-every", "1"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def _lines(path) -> int:
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


HANG = 900  # seconds: only a hung child takes this long, however slow and busy the machine


def _run_or_kill(command, ready, delay: float) -> bool:
    """Start ``command``; SIGKILL it ``delay`` s after ``ready()`` holds. True if it was killed,
    False if it finished first. There is no time limit on reaching ``ready``: a slow machine
    only makes the wait longer (a child still running after HANG seconds is a hang: fail)."""
    proc = subprocess.Popen(
        command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    started = time.monotonic()
    while not ready() and proc.poll() is None:
        if time.monotonic() - started > HANG:
            proc.kill()
            raise AssertionError(f"{command[3]} hung: no progress in {HANG} s")
        time.sleep(0.01)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def _target(done: int, total: int, rng: random.Random) -> int:
    """A kill point a random fraction (15-50%) of the remaining work ahead, at least one unit:
    each kill leaves a fixed share of the job done, so the number of kills follows from the work,
    not from how fast the machine runs it."""
    return done + max(1, round(rng.uniform(0.15, 0.5) * (total - done)))


def test_training_killed_at_random_points_ends_like_an_uninterrupted_run(tmp_path):
    data = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=32)
    base = [sys.executable, "-m", "miragedet", "train", str(data), *TRAIN, "--save-every", "1"]
    done = subprocess.run([*base, "-o", str(tmp_path / "clean")], env=_env(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    run = tmp_path / "killed"
    log = run / "log.jsonl"
    rng = random.Random(1)
    command = [*base, "-o", str(run), "--resume"]
    kills = 0
    # kill once a random share of the remaining steps is logged, plus a random fraction of a step
    # (mid-step or mid-checkpoint); after 8 kills the last run is left to finish
    while kills < 8:
        target = _target(_lines(log), 12, rng)
        if not _run_or_kill(command, lambda t=target: _lines(log) >= t, rng.uniform(0, 0.05)):
            break
        kills += 1
        # whatever moment the kill hit, the checkpoint on disk is whole and loads
        if (run / "last").exists():
            load_pretrained(run / "last")
    else:
        done = subprocess.run(command, env=_env(), capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert kills >= 3
    clean = load_file(str(tmp_path / "clean" / "last" / "model.safetensors"))
    resumed = load_file(str(run / "last" / "model.safetensors"))
    assert set(clean) == set(resumed)
    for key in clean:
        torch.testing.assert_close(resumed[key], clean[key], atol=1e-6, rtol=1e-5)
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    # each resume started from the last step saved: at most one step per kill was done twice
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert sorted(set(steps)) == list(range(1, 13)) and len(steps) <= 12 + kills
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_detect_killed_and_resumed_writes_every_row_once(served_checkpoint, tmp_path):
    root = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=600)
    out = tmp_path / "rows.jsonl"
    command = [sys.executable, "-m", "miragedet", "detect", str(root), "-m"]
    command += [str(served_checkpoint), "-f", "jsonl", "-o", str(out), "--batch-size", "8"]
    rng = random.Random(2)
    kills = 0
    # kill once a random share of the remaining rows is written; after 6 kills (about 90% of the
    # rows written by then) the last run is left to finish
    while kills < 6:
        args = command + (["--resume"] if kills else [])
        target = _target(_lines(out), 1200, rng)
        if not _run_or_kill(args, lambda t=target: _lines(out) >= t, rng.uniform(0, 0.02)):
            break
        kills += 1
    else:
        done = subprocess.run([*command, "--resume"], env=_env(), capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert kills >= 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 1200
    assert all(r["error"] is None and 0 <= r["fake_prob"] <= 1 for r in rows)
