"""The project's own promises: README commands, CI, pins, and no unsafe deserialisation."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks]


def test_ci_runs_exactly_the_readme_test_command():
    install_and_run, test_command = _readme_commands()[:2]
    assert "miragedet quickstart" in install_and_run
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_install_pins_the_cpu_torch_while_metadata_keeps_a_range():
    assert all("-c constraints.txt" in c for c in _readme_commands()[:2])
    pins = (REPO / "constraints.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", pins, re.M)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_dep = next(d for d in deps if d.startswith("torch"))
    assert "==" not in torch_dep and ">=" in torch_dep
    assert not any(d.startswith("torchvision") for d in deps)


def test_package_never_unpickles():
    unsafe = re.compile(r"\bpickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)")
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "src").rglob("*.py")
        if unsafe.search(p.read_text())
    ]
    assert offenders == []


def test_lint_and_format_are_clean():
    import subprocess
    import sys

    for args in (
        ["check", "src", "tests", "benchmarks"],
        ["format", "--check", "src", "tests", "benchmarks"],
    ):
        run = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout + run.stderr


def test_constraints_pin_every_direct_dependency_at_the_version_installed():
    """README command 1 and the test install use constraints.txt: with every direct dependency
    pinned there, both resolve the same versions (the suite runs what users install)."""
    import importlib.metadata

    root = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[name.strip().lower()] = version.strip()
    for dep in deps:
        name = re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower()
        assert name in pins, f"{name} is not pinned in constraints.txt"
        installed = importlib.metadata.version(name).split("+")[0]
        assert installed == pins[name], f"{name}: installed {installed}, pinned {pins[name]}"


def test_test_only_tools_live_in_their_own_environment():
    """A test tool whose pins would hold back a runtime dependency (openapi-python-client requires
    typer < 0.28) goes by scripts/setup-tests.sh into .test-tools/, never into a test extra."""
    tools = [
        line.split("==")[0].strip().lower()
        for line in (REPO / "scripts" / "test-tools.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "openapi-python-client" in tools
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    named = {
        re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() for ds in extras.values() for d in ds
    }
    assert not named & set(tools)
    assert "bash scripts/setup-tests.sh" in _readme_commands()[1]
