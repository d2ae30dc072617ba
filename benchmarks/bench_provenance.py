"""Cost of reading provenance beside the pixel score, per signal and in `detect`'s loop.

Writes photo-like JPEGs and PNGs of 1 and 4 MP carrying what real files carry (camera EXIF and an
XMP packet; the PNGs an AUTOMATIC1111 `parameters` chunk; one set of JPEGs signed with a C2PA
manifest), times each reader alone (C2PA, XMP, generator parameters, EXIF) and all of them
(`read_provenance`), then scores the same files with the Detector (defaults: reduced-scale
decode, --precision auto; batch 16)
with and without provenance: the overhead column is what `detect` pays for it by default. The
watermark column (off by default, `--watermarks`) is the decode and the watermark readers.
    python benchmarks/bench_provenance.py [--backbone vit-b-32] [--images 16]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from common import photo, save, table
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.inference.detector import Detector
from miragedet.provenance import parameters as generators
from miragedet.provenance import verdict as provenance
from miragedet.provenance.metadata import raw_exif as _raw_exif

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
SIZES = {1: (1152, 864), 4: (2304, 1728)}
XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    'syntax-ns#"><rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
    'xmp:CreatorTool="Adobe Lightroom 7.0"/></rdf:RDF></x:xmpmeta>'
)
PARAMETERS = (
    "a lighthouse at dusk\nNegative prompt: blurry\nSteps: 28, Sampler: Euler a, CFG scale: 7, "
    "Seed: 1, Size: 1024x1024, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Version: v1.10.1"
)


def _files(folder: Path, kind: str, mp: int, n: int) -> list[str]:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = "Canon", "Canon EOS R6", "Firmware 1.8"
    paths = []
    for i in range(n):
        image = photo(*SIZES[mp], seed=100 * mp + i)
        buf = io.BytesIO()
        if kind.startswith("JPEG"):
            image.save(buf, "JPEG", quality=90, exif=exif, xmp=XMP.encode())
            data = buf.getvalue()
            if kind == "JPEG+C2PA":
                from signing import sign_jpeg

                data = sign_jpeg(data)
        else:
            info = PngInfo()
            info.add_text("parameters", PARAMETERS)
            info.add_itxt("XML:com.adobe.xmp", XMP)
            image.save(buf, "PNG", pnginfo=info, compress_level=1)
            data = buf.getvalue()
        path = folder / f"{kind}-{mp}mp-{i}.{'png' if kind == 'PNG' else 'jpg'}"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def _per_image(fn, paths: list[str]) -> float:
    fn(paths[0])
    start = time.perf_counter()
    for p in paths:
        fn(p)
    return (time.perf_counter() - start) / len(paths) * 1000


def _signals() -> dict:
    def opened(p):
        return Image.open(p)

    return {
        "c2pa": lambda p: provenance.read_c2pa(Path(p).read_bytes(), opened(p).format),
        "xmp": lambda p: provenance.read_xmp(opened(p)),
        "parameters": lambda p: generators.read(dict(opened(p).info), _raw_exif(opened(p))),
        "exif": lambda p: provenance.read_exif(opened(p)),
        "all": provenance.read_provenance,
        "watermark": lambda p: provenance._watermarks(p, None),  # opt-in (--watermarks)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="vit-b-32")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--sizes", default="1,4")
    parser.add_argument("--out", default="bench_provenance.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    model = MiraGe(load_backbone(f"random:{args.backbone}"), ModelConfig.for_method("mirage"))
    detector = Detector(model, batch_size=16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("JPEG", "JPEG+C2PA", "PNG"):
            for mp in [int(s) for s in args.sizes.split(",")]:
                paths = _files(Path(tmp), kind, mp, args.images)
                row = {"files": kind, "megapixels": mp}
                for name, fn in _signals().items():
                    row[f"{name}_ms"] = _per_image(fn, paths)
                spent = {}
                for with_provenance in (False, True, False, True):  # alternate: drift cancels
                    start = time.perf_counter()
                    list(detector.iter_score(paths, provenance=with_provenance))
                    ms = (time.perf_counter() - start) / len(paths) * 1000
                    spent.setdefault(with_provenance, []).append(ms)
                row["detect_ms"] = float(np.median(spent[False]))
                row["detect_provenance_ms"] = float(np.median(spent[True]))
                row["overhead"] = row["detect_provenance_ms"] / row["detect_ms"] - 1
                rows.append(row)
                print(f"{kind} {mp} MP done", file=sys.stderr)
    print(
        f"provenance per image (ms, one thread) and detect's loop with it ({args.backbone}, "
        f"{detector.precision} ({detector.precision_reason}), batch 16, {args.images} images "
        "per row)"
    )
    table(
        rows,
        [
            ("files", "files", ""),
            ("megapixels", "MP", "d"),
            ("c2pa_ms", "C2PA", ".2f"),
            ("xmp_ms", "XMP", ".2f"),
            ("parameters_ms", "params", ".2f"),
            ("exif_ms", "EXIF", ".2f"),
            ("all_ms", "all", ".2f"),
            ("watermark_ms", "watermark", ".1f"),
            ("detect_ms", "detect ms/img", ".1f"),
            ("detect_provenance_ms", "+provenance", ".1f"),
            ("overhead", "overhead", ".1%"),
        ],
    )
    save(args.out, rows, backbone=args.backbone)


if __name__ == "__main__":
    main()
