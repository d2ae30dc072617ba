"""Untrusted model files: only safetensors and JSON are read; nothing in the package unpickles."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from miragedet import MiraGe, ModelConfig
from miragedet.model.checkpoint import CheckpointError
from miragedet.model.mirage import load_pretrained

PACKAGE = Path(__file__).parents[1] / "src" / "miragedet"


def _unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            for name in names:
                if name.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle", "marshal"):
                    found.append(f"import {name} (line {node.lineno})")
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if func in ("eval", "exec"):
            found.append(f"{func}() (line {node.lineno})")
        if func.endswith("torch.load") and keywords.get("weights_only") != "True":
            found.append(f"torch.load without weights_only=True (line {node.lineno})")
        if func in ("np.load", "numpy.load") and keywords.get("allow_pickle") == "True":
            found.append(f"np.load(allow_pickle=True) (line {node.lineno})")
        if func.endswith("yaml.load") or func.endswith("yaml.unsafe_load"):
            found.append(f"{func} (use yaml.safe_load) (line {node.lineno})")
        if keywords.get("trust_remote_code") == "True":
            found.append(f"trust_remote_code=True (line {node.lineno})")
    return found


def test_the_scan_finds_what_it_looks_for():
    bad = "import pickle\nimport torch, yaml\ntorch.load(f)\nyaml.load(s)\neval('1')\n"
    assert len(_unsafe_calls(ast.parse(bad))) == 4
    assert _unsafe_calls(ast.parse("torch.load(f, weights_only=True)\nyaml.safe_load(s)")) == []


def test_no_module_of_the_package_loads_unsafely():
    problems = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found = _unsafe_calls(ast.parse(path.read_text(), filename=str(path)))
        if found:
            problems[str(path.relative_to(PACKAGE))] = found
    assert problems == {}


@pytest.fixture
def checkpoint(tiny, tmp_path):
    path = tmp_path / "ckpt"
    MiraGe(tiny, ModelConfig.for_method("mirage", depth=2)).save_pretrained(str(path))
    return path


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/miragedet-was-unpickled"),))


def test_a_pickle_posing_as_weights_is_refused_and_never_run(checkpoint):
    marker = Path("/tmp/miragedet-was-unpickled")
    marker.unlink(missing_ok=True)
    (checkpoint / "model.safetensors").write_bytes(pickle.dumps({"w": _Boom()}))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_pretrained(checkpoint)
    torch.save({"w": torch.zeros(2)}, checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_pretrained(checkpoint)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "header", "empty"])
def test_damaged_weights_are_refused_with_a_clear_message(checkpoint, damage):
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {"truncated": data[: len(data) // 2], "header": b"\xff" * 8 + data[8:], "empty": b""}[
            damage
        ]
    )
    with pytest.raises(CheckpointError, match="safetensors"):
        load_pretrained(checkpoint)


def test_config_that_is_not_a_mapping_or_names_unknown_method_is_refused(checkpoint):
    config = checkpoint / "config.json"
    config.write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError):
        load_pretrained(checkpoint)
    config.write_text('{"model": {"method": "os.system"}}')
    with pytest.raises(CheckpointError):
        load_pretrained(checkpoint)
