"""One row schema: the same corpus through detect, score-dataset, the Python API and a server
gives the same columns and values (docs/rows.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import SERVER_KEY
from miragedet.apps.cli import app
from miragedet.data.synthetic_video import VideoSpec, make_frames, write_video
from miragedet.inference.rows import COLUMNS, columns, markdown_table

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _corpus(folder: Path) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "b.jpg")
    (folder / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    frames = make_frames(rng, VideoSpec("fake", frames=6))
    write_video(folder / "d.gif", frames)
    return sorted(str(p) for p in folder.iterdir())


def _same(a: dict, b: dict, where: str) -> None:
    assert list(a) == list(b), where
    for key in a:
        x, y = a[key], b[key]
        if key == "error":  # every surface says it failed; the server words it its own way
            assert (x is None) == (y is None), (where, key, x, y)
        elif isinstance(x, float):
            assert y == pytest.approx(x, abs=1e-5), (where, key)
        elif key == "regions" and x is not None:
            assert [r.get("t") for r in x] == [r.get("t") for r in y], where
            assert [r["p"] for r in y] == pytest.approx([r["p"] for r in x], abs=1e-5), where
        else:
            assert x == y, (where, key, x, y)


def test_every_surface_gives_the_same_row(served_checkpoint, server, tmp_path):
    from miragedet import Client, load_detector
    from miragedet.inference.score_dataset import read_scores, score_dataset

    paths = _corpus(tmp_path / "corpus")
    api = [p.to_dict() for p in load_detector(served_checkpoint).score(paths)]
    assert [r["path"] for r in api] == paths
    assert list(api[0]) == columns(["real", "fake"], provenance=True)
    assert api[2]["error"] and api[2]["fake_prob"] is None  # the broken JPEG
    assert api[3]["frames"] and api[0]["frames"] is None  # the GIF is a clip

    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(
        app, ["detect", *paths, "-m", str(served_checkpoint), "-o", str(out)]
    )
    assert result.exit_code == 1, result.output  # one input could not be read
    detect = [json.loads(line) for line in out.read_text().splitlines()]

    score_dataset(str(tmp_path / "corpus"), tmp_path / "shards", str(served_checkpoint),
                  engine="local")  # fmt: skip
    parquet = sorted(read_scores(tmp_path / "shards").to_pylist(), key=lambda r: r["path"])
    for row in parquet:
        row["regions"] = json.loads(row["regions"]) if row["regions"] else None

    served = [p.to_dict() for p in Client(server, SERVER_KEY).score(paths)]
    for surface, rows in (("detect", detect), ("score-dataset", parquet), ("server", served)):
        assert len(rows) == len(api), surface
        for want, got in zip(api, rows, strict=True):
            _same(want, got, f"{surface}: {want['path']}")


def test_the_columns_follow_the_options():
    base = columns(["real", "fake"])
    assert "provenance" not in base and "tiles" not in base and "p_real" not in base
    assert base[:3] == ["path", "fake_prob", "label"] and base[-1] == "regions"
    wide = columns(["real", "a", "b"], provenance=True, open_set=True, stability=True, tiles=True)
    assert {"p_real", "p_a", "p_b", "declares_ai", "unknown_generator", "stability_spread",
            "tile_max_fake_prob", "frames"} <= set(wide)  # fmt: skip
    assert len(wide) == len(COLUMNS) - 1 + 3  # p_{class} became three columns


def test_the_documented_columns_are_the_code_s():
    assert markdown_table() in (DOCS / "rows.md").read_text()


def test_tiles_and_stability_give_their_columns_on_every_surface(
    served_checkpoint, server, tmp_path
):
    from miragedet import Client, Stability, load_detector
    from miragedet.inference.score_dataset import read_scores, score_dataset

    folder = tmp_path / "stills"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(folder / name)
    paths = sorted(str(p) for p in folder.iterdir())
    options = {"view": "tiles", "max_tiles": 4, "stability": True, "provenance": False}
    api = [p.to_dict() for p in load_detector(served_checkpoint, **options).score(paths)]
    assert list(api[0]) == columns(["real", "fake"], stability=True, tiles=True)
    assert api[0]["tiles"] == 4 and api[0]["stability_spread"] is not None

    out = tmp_path / "rows.jsonl"
    args = ["detect", *paths, "-m", str(served_checkpoint), "-o", str(out), "--view", "tiles",
            "--max-tiles", "4", "--stability", "--no-provenance"]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    detect = [json.loads(line) for line in out.read_text().splitlines()]

    score_dataset(str(folder), tmp_path / "shards", str(served_checkpoint), engine="local",
                  **options)  # fmt: skip
    parquet = sorted(read_scores(tmp_path / "shards").to_pylist(), key=lambda r: r["path"])
    for row in parquet:
        row["regions"] = json.loads(row["regions"]) if row["regions"] else None

    client = Client(server, SERVER_KEY, view="tiles", max_tiles=4)
    served = [p.to_dict() for p in client.score(paths, provenance=False, stability=Stability())]
    for surface, rows in (("detect", detect), ("score-dataset", parquet), ("server", served)):
        for want, got in zip(api, rows, strict=True):
            _same(want, got, f"{surface}: {want['path']}")
