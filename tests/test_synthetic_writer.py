"""The synthetic sets' threaded writer: the same pixels, names and counts as the serial
generator, whatever the threads, and PNGs that decode to exactly what was rendered."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from miragedet.data.synthetic import (
    GENERATORS,
    SEEN,
    make_image,
    make_set,
    write_layout,
)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def test_pixels_are_those_of_the_seed_as_before():
    """The images the 0.1 generator drew for these seeds (quickstart figures rest on them)."""
    digest = hashlib.sha256()
    images, labels = make_set(3, 20, SEEN, seed=0)
    assert labels == [0, 1] * 3
    for image in images:
        digest.update(np.asarray(image).tobytes())
    rng = np.random.default_rng(1)
    for name in (None, "stripes-3", "chroma-2", "grid-4"):
        digest.update(np.asarray(make_image(rng, 24, name and GENERATORS[name])).tobytes())
    digest.update(np.asarray(make_image(rng, 24, SEEN, (8, 4, 12))).tobytes())
    assert digest.hexdigest() == "5ccfd9780289af5793e1f464aa7e01b545352b36eb0d27f041d17c81972e3a67"


@pytest.mark.parametrize("workers", [0, 3])
def test_genimage_matches_the_serial_generator(tmp_path, workers):
    generators = ("grid-2", "stripes-3")
    root = write_layout(tmp_path, "genimage", generators, n_per_class=5, size=24, seed=7,
                        workers=workers)  # fmt: skip
    for g, name in enumerate(generators):
        for s, split in enumerate(("train", "val")):
            images, labels = make_set(5, 24, GENERATORS[name], seed=7 + 10 * g + s)
            for label, folder in enumerate(("nature", "ai")):
                files = sorted((root / name / split / folder).iterdir())
                expected = [i for i, lab in enumerate(labels) if lab == label]
                assert [f.name for f in files] == [f"{i:05d}.png" for i in expected]
                for f, i in zip(files, expected, strict=True):
                    assert np.array_equal(pixels(f), np.asarray(images[i])), f
    assert len(list(root.rglob("*.png"))) == 2 * 2 * 2 * 5


def test_generic_matches_the_serial_generator(tmp_path):
    root = write_layout(tmp_path, "generic", ("grid-4", "chroma-2"), n_per_class=6, size=19,
                        seed=3, workers=4)  # fmt: skip
    assert sorted(p.name for p in root.iterdir()) == ["chroma-2", "grid-4", "real"]
    expected: dict[str, list[np.ndarray]] = {"real": [], "grid-4": [], "chroma-2": []}
    for g, name in enumerate(("grid-4", "chroma-2")):
        rng = np.random.default_rng(3 + 10 * g)
        for _ in range(6):
            expected[name].append(np.asarray(make_image(rng, 19, GENERATORS[name])))
            if g == 0:
                expected["real"].append(np.asarray(make_image(rng, 19, None)))
    for folder, arrays in expected.items():
        files = sorted((root / folder).iterdir())
        assert [f.name for f in files] == [f"{i:05d}.png" for i in range(6)]
        for f, array in zip(files, arrays, strict=True):
            assert np.array_equal(pixels(f), array), f


def test_threads_do_not_change_the_files(tmp_path):
    serial = write_layout(tmp_path / "a", "ufd", ("grid-2",), n_per_class=12, size=16, workers=0)
    threaded = write_layout(tmp_path / "b", "ufd", ("grid-2",), n_per_class=12, size=16, workers=4)
    files = sorted(p.relative_to(serial) for p in serial.rglob("*.png"))
    assert files == sorted(p.relative_to(threaded) for p in threaded.rglob("*.png"))
    assert len(files) == 24
    for rel in files:
        assert (serial / rel).read_bytes() == (threaded / rel).read_bytes(), rel


def test_a_worker_error_is_raised(tmp_path):
    with pytest.raises(ValueError, match="unknown file extension"):
        write_layout(tmp_path, "ufd", ("grid-2",), n_per_class=20, size=8, fmt="nope", workers=2)


def test_other_formats_and_bad_layouts(tmp_path):
    root = write_layout(tmp_path / "j", "chameleon", ("grid-2",), n_per_class=2, size=16,
                        fmt="bmp")  # fmt: skip
    images, _ = make_set(2, 16, SEEN, seed=0)
    assert np.array_equal(pixels(root / "1_fake" / "00003.bmp"), np.asarray(images[3]))
    with pytest.raises(ValueError, match="unknown layout"):
        write_layout(tmp_path / "x", "nope", ("grid-2",), n_per_class=2)
    with pytest.raises(ValueError, match="unknown generators"):
        write_layout(tmp_path / "x", "ufd", ("grid-9",), n_per_class=2)
    assert not (tmp_path / "x").exists()
