"""The package's shape: the layer contract between passes, exporters and the CLI; a command
line that answers ``--help`` without torch; plain ``pytest`` collection; one import root in the
installed distribution."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXPORTERS_MAY_USE = {"atomic", "errors", "inputs", "manifest", "pattern"}
"""The light modules of passes that exporters read (files, errors, the manifest, the pattern
and input descriptions); never a pass, training or the registry."""


def _imports(folder: Path) -> list[tuple[str, int, str]]:
    """``(file, line, imported module)`` for every import in ``folder``, lazy ones included."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(path.name, node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found += [(path.name, node.lineno, node.module)]
                found += [(path.name, node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _owned(module: str) -> str | None:
    """The project layer a module name belongs to: passes, exporters, samples or cli."""
    parts = module.split(".")
    if parts[0] != "sparsify_cli":
        return None
    if len(parts) > 1 and parts[1] in ("passes", "exporters", "samples"):
        return parts[1]
    return "cli"


def test_passes_import_neither_exporters_nor_the_cli():
    bad = [
        f"{f}:{line} imports {mod}"
        for f, line, mod in _imports(ROOT / "passes")
        if _owned(mod) not in (None, "passes")
    ]
    assert bad == []


def test_exporters_use_only_the_light_modules_of_passes_and_never_the_cli():
    bad = []
    for f, line, mod in _imports(ROOT / "exporters"):
        layer = _owned(mod)
        if layer in ("cli", "samples"):
            bad.append(f"{f}:{line} imports {mod}")
        if layer == "passes" and mod != "sparsify_cli.passes":
            if mod.split(".")[2] not in EXPORTERS_MAY_USE:
                bad.append(f"{f}:{line} imports {mod}")
    assert bad == []


def test_the_contract_test_sees_a_violation(tmp_path):
    """The scanner itself: a lazy import inside a function is found."""
    (tmp_path / "x.py").write_text("def f():\n    from sparsify_cli.exporters import runtime\n")
    assert ("x.py", 2, "sparsify_cli.exporters") in _imports(tmp_path)


def _run(code: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.mark.parametrize("argv", [["--help"], ["convrt"], ["convert", "--help"]])
def test_help_and_typos_do_not_import_torch(argv):
    """Regression: every command, even a typo, paid 3-4 s importing torch."""
    code = (
        "import sys\nfrom sparsify_cli.app import app\n"
        f"try:\n    app({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib') "
        "if m in sys.modules)\nprint('HEAVY', heavy)\n"
    )
    out = _run(code)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_sparsify_help_time_is_printed_and_small():
    exe = Path(sys.executable).with_name("sparsify")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sparsify_cli"]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([*cmd, "--help"], capture_output=True, check=True, timeout=60)
        times.append(time.perf_counter() - start)
    print(f"sparsify --help: best {min(times):.3f} s of {len(times)}")
    assert min(times) < 5.0  # < 1 s on an idle 2-core machine; generous for a loaded one


def test_verify_loads_no_pass_or_training_module():
    """Regression: ``exporters.verify`` pulled in 15 pass modules (training and MaxQ too)."""
    code = (
        "import sys\nimport sparsify_cli.exporters.verify\n"
        "print('PASSES', sorted(m.rsplit('.', 1)[1] for m in sys.modules "
        "if m.startswith('sparsify_cli.passes.')))\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    loaded = set(eval(out.stdout.split("PASSES", 1)[1]))
    assert loaded <= EXPORTERS_MAY_USE, loaded - EXPORTERS_MAY_USE


def test_plain_pytest_collects_every_test_file():
    """Regression: plain ``pytest`` (IDEs, most users) failed to collect three files."""
    exe = Path(sys.executable).with_name("pytest")
    if not exe.exists():
        pytest.skip("no pytest executable beside this interpreter")
    out = subprocess.run(
        [str(exe), "--collect-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "error" not in out.stdout.lower().splitlines()[-1]
    collected = {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}
    files = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")}
    assert files <= collected, files - collected


SOURCES = ("passes", "exporters", "samples", "sparsify_cli", "csrc")
SOURCE_FILES = ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``pip install .`` would install, built from a copy of the sources with no C++
    compiler (the native extension is optional, so the build still succeeds)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in SOURCE_FILES:
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist)],
        capture_output=True, text=True, cwd=src, timeout=300,
        env={**os.environ, "CC": "/bin/false", "CXX": "/bin/false"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return next(dist.glob("*.whl"))


def test_the_wheel_installs_one_import_root(wheel):
    """Regression: ``passes``, ``exporters`` and ``samples`` were top-level packages (a user's
    ``samples`` broke ``--arch``; PyPI's ``exporters`` would overwrite files)."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        top_level = zf.read(info).decode().split()
    roots = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert roots == {"sparsify_cli"} and top_level == ["sparsify_cli"]
    assert "sparsify_cli/passes/registry.py" in names
    assert any(n.startswith("sparsify_cli/samples/") and n.endswith(".pt") for n in names)


@pytest.mark.slow  # a pip install and a whole convert from the install; run with -m slow
def test_installed_wheel_runs_convert_and_import_passes_fails(wheel, tmp_path):
    """``pip install`` of the wheel (into a folder, dependencies from this environment): from a
    neutral folder ``import passes`` fails, and ``sparsify convert`` works from the install."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    env = {"PYTHONPATH": str(target)}
    for name in ("passes", "exporters", "samples"):
        out = _run(f"import {name}", cwd=work, **env)
        assert "ModuleNotFoundError" in out.stderr, name
    code = (
        "import sys, sparsify_cli\nprint('FROM', sparsify_cli.__file__)\n"
        "from sparsify_cli.app import app\nsys.argv = ['sparsify', *sys.argv[1:]]\n"
        "app(['convert', 'digits_cnn', '--out', 'o', '--bench-seconds', '0.05', "
        "'--batch-sizes', '1', '--quiet'])\n"
    )
    out = _run(code, cwd=work, **env)
    assert f"FROM {target}" in out.stdout, out.stdout + out.stderr
    assert (work / "o" / "report.json").is_file(), out.stdout[-2000:] + out.stderr[-2000:]


def test_a_users_samples_and_passes_modules_do_not_shadow_ours(tmp_path):
    """Regression: a ``samples`` package or ``passes.py`` in the working folder replaced ours
    under ``python -m sparsify_cli`` (the README's torchrun form), breaking every run."""
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "__init__.py").write_text("raise RuntimeError('user samples ran')\n")
    for name in ("passes", "exporters"):
        (tmp_path / f"{name}.py").write_text(f"raise RuntimeError('user {name} ran')\n")
    out = subprocess.run(
        [sys.executable, "-m", "sparsify_cli", "convert", "digits_cnn", "--out", "o",
         "--bench-seconds", "0.05", "--batch-sizes", "1", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "user" not in out.stderr and (tmp_path / "o" / "report.json").is_file()
