"""Dataset layouts: found, labelled, refused with a useful message; bad files listed, not fatal."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from miragedet.data.layouts import LayoutError, detect_layout, find_images
from miragedet.data.synthetic import write_layout


def _labels_by_folder(image_set):
    return {(s.subset, s.path.split("/")[-2], s.label) for s in image_set.samples}


def test_genimage_layout_and_splits(tmp_path):
    write_layout(tmp_path, "genimage", ("grid-2", "grid-4"), n_per_class=3)
    val = find_images(tmp_path)
    assert val.layout == "genimage" and val.subsets == ["grid-2", "grid-4"]
    assert _labels_by_folder(val) == {
        ("grid-2", "nature", 0),
        ("grid-2", "ai", 1),
        ("grid-4", "nature", 0),
        ("grid-4", "ai", 1),
    }
    assert all("/val/" in s.path for s in val.samples) and len(val.samples) == 12
    train = find_images(tmp_path, split="train")
    assert all("/train/" in s.path for s in train.samples)
    assert val.counts() == {"grid-2": {"real": 3, "fake": 3}, "grid-4": {"real": 3, "fake": 3}}


def test_genimage_release_nesting_and_single_subset_root(tmp_path):
    for split in ("train", "val"):
        for cls in ("ai", "nature"):
            folder = tmp_path / "Midjourney" / "imagenet_midjourney" / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(folder / "a.png")
    found = find_images(tmp_path)
    assert found.layout == "genimage" and found.subsets == ["Midjourney"]
    one = find_images(tmp_path / "Midjourney" / "imagenet_midjourney", layout="genimage")
    assert one.subsets == ["imagenet_midjourney"] and len(one.samples) == 2


def test_ufd_layout_with_and_without_categories(tmp_path):
    write_layout(tmp_path, "ufd", ("grid-2",), n_per_class=2)
    for category in ("car", "cat"):
        write_layout(tmp_path / "progan" / category, "chameleon", n_per_class=2)
    found = find_images(tmp_path)
    assert found.layout == "ufd" and found.subsets == ["grid-2", "progan"]
    assert found.counts()["progan"] == {"real": 4, "fake": 4}
    assert {s.label for s in found.samples if "/0_real/" in s.path} == {0}
    assert {s.label for s in found.samples if "/1_fake/" in s.path} == {1}


def test_chameleon_layout(tmp_path):
    write_layout(tmp_path / "Chameleon", "chameleon", n_per_class=4)
    found = find_images(tmp_path / "Chameleon")
    assert found.layout == "chameleon" and found.subsets == ["Chameleon"]
    assert found.counts() == {"Chameleon": {"real": 4, "fake": 4}}


def test_generic_layout_puts_real_first(tmp_path):
    write_layout(tmp_path, "generic", ("grid-2", "grid-4"), n_per_class=2)
    found = find_images(tmp_path)
    assert found.layout == "generic" and found.classes == ["real", "grid-2", "grid-4"]
    assert _labels_by_folder(found) == {
        (tmp_path.name, "real", 0),
        (tmp_path.name, "grid-2", 1),
        (tmp_path.name, "grid-4", 2),
    }
    ordered = find_images(tmp_path, classes=["real", "grid-4", "grid-2"])
    assert {s.label for s in ordered.samples if "/grid-4/" in s.path} == {1}


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_with_names_or_indices(tmp_path, kind):
    paths = write_layout(tmp_path / "imgs", "chameleon", n_per_class=2)
    rows = [{"path": f"imgs/0_real/0000{i}.png", "label": "real", "subset": "a"} for i in (0, 2)]
    rows += [{"path": f"imgs/1_fake/0000{i}.png", "label": "fake", "subset": "b"} for i in (1, 3)]
    manifest = tmp_path / f"list.{kind}"
    if kind == "csv":
        manifest.write_text(
            "path,label,subset\n"
            + "".join(f"{r['path']},{r['label']},{r['subset']}\n" for r in rows)
        )
    else:
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert paths.exists() and detect_layout(manifest) == "manifest"
    found = find_images(manifest)
    assert found.classes == ["real", "fake"] and found.subsets == ["a", "b"]
    assert [s.label for s in found.samples] == [0, 0, 1, 1]
    assert all((tmp_path / "imgs").as_posix() in s.path for s in found.samples)


def test_unknown_layout_says_what_was_expected_and_found(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(LayoutError) as err:
        find_images(tmp_path)
    message = str(err.value)
    assert "genimage: <root>/<subset>/{train,val}/{ai,nature}/*" in message
    assert "readme.txt" in message and "stuff/" in message


def test_explicit_layout_that_does_not_match(tmp_path):
    write_layout(tmp_path, "ufd", ("grid-2",), n_per_class=1)
    with pytest.raises(LayoutError, match="does not have the genimage layout"):
        find_images(tmp_path, layout="genimage")
    with pytest.raises(LayoutError, match="unknown layout"):
        find_images(tmp_path, layout="imagenet")


def test_non_images_are_listed_at_listing_time(tmp_path):
    write_layout(tmp_path, "chameleon", n_per_class=3)
    (tmp_path / "0_real" / "notes.txt").write_text("not an image")
    (tmp_path / "1_fake" / ".DS_Store").write_text("hidden")
    # an image is found by its content whatever its name says
    first = sorted((tmp_path / "1_fake").glob("*.png"))[0]
    (tmp_path / "1_fake" / "download").write_bytes(first.read_bytes())
    found = find_images(tmp_path)
    assert len(found.samples) == 7
    assert str(tmp_path / "1_fake" / "download") in [s.path for s in found.samples]
    assert found.skipped == [
        (str(tmp_path / "0_real" / "notes.txt"), "not an image"),
        (str(tmp_path / "1_fake" / ".DS_Store"), "hidden"),
    ]
