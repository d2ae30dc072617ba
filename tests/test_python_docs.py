"""docs/python.md's examples run as they stand, in order, in an empty folder (the public API in
two tiers: docs say what the code does)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def test_the_python_page_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 2  # one per tier
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "not a recognised image format" in printed  # the bad input's row
    assert (tmp_path / "run" / "last" / "adapt_memory.safetensors").is_file()
    assert namespace["adapted"].saved
    assert (tmp_path / "run+stripes" / "config.json").is_file()
