"""Write ICC v2 matrix/TRC display profiles for tests (no profile files ship with the project).

Layout from the ICC specification ICC.1:2001-04 (version 2.4): a 128-byte header, a tag table,
then `desc` (textDescriptionType), `wtpt`/`rXYZ`/`gXYZ`/`bXYZ` (XYZType, s15Fixed16) and
`rTRC`/`gTRC`/`bTRC` (curveType with one gamma entry, u8Fixed8). Colorants are the RGB->XYZ
matrix of the primaries, Bradford-adapted from the white point to the D50 profile connection
space, as the specification requires.
"""

from __future__ import annotations

import struct

import numpy as np

D50 = np.array([0.9642, 1.0, 0.8249])
BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)
DISPLAY_P3 = {"r": (0.680, 0.320), "g": (0.265, 0.690), "b": (0.150, 0.060), "w": (0.3127, 0.3290)}
ADOBE_RGB = {"r": (0.640, 0.330), "g": (0.210, 0.710), "b": (0.150, 0.060), "w": (0.3127, 0.3290)}


def _xyz(xy):
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _s15(values) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def matrix_profile(primaries: dict, gamma: float, description: str) -> bytes:
    white = _xyz(primaries["w"])
    columns = np.stack([_xyz(primaries[c]) for c in "rgb"], axis=1)
    scale = np.linalg.solve(columns, white)
    to_xyz = columns * scale
    cone_src, cone_dst = BRADFORD @ white, BRADFORD @ D50
    adapt = np.linalg.inv(BRADFORD) @ np.diag(cone_dst / cone_src) @ BRADFORD
    adapted = adapt @ to_xyz
    ascii_text = description.encode() + b"\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text
    desc += struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))
    tags = [(b"desc", desc), (b"wtpt", b"XYZ \0\0\0\0" + _s15(D50))]
    tags += [
        (f"{c}XYZ".encode(), b"XYZ \0\0\0\0" + _s15(adapted[:, i])) for i, c in enumerate("rgb")
    ]
    tags += [(f"{c}TRC".encode(), curve) for c in "rgb"]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += _pad(data)
    size = offset + len(body)
    header = struct.pack(">I4sI4s4s4s", size, b"none", 0x02100000, b"mntr", b"RGB ", b"XYZ ")
    header += struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 4 + struct.pack(">I", 0)
    header += b"\0" * 8 + struct.pack(">II", 0, 0) + struct.pack(">I", 0) + _s15(D50)
    header += b"\0" * 4 + b"\0" * 16 + b"\0" * 28
    assert len(header) == 128, len(header)
    return header + table + body
