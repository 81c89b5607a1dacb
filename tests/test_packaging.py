"""Packaging test: build the wheel, install it into a fresh venv, use the CLI.

Takes roughly a minute (wheel build + venv creation). Everything runs in
subprocesses with ``cwd`` set to a temporary directory so that the repo
checkout is never on ``sys.path`` of the fresh interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600

# Printed by the fresh interpreter: where `graphgen` comes from, or NONE.
WHERE_IS_GRAPHGEN = (
    "import importlib.util as u; s = u.find_spec('graphgen'); "
    "print('NONE' if s is None else (s.origin or list(s.submodule_search_locations)[0]))"
)


def _env() -> dict[str, str]:
    """Subprocess environment without anything that could leak the repo in."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(var, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd],
        check=False,
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _venv_bin(venv: Path, name: str) -> Path:
    sub = "Scripts" if os.name == "nt" else "bin"
    exe = venv / sub / (name + (".exe" if os.name == "nt" else ""))
    return exe


def _outer_site_dirs() -> list[str]:
    """Site dirs of the running interpreter (where numpy, networkx... live)."""
    dirs: list[str] = []
    paths = sysconfig.get_paths()
    candidates = [paths.get("purelib"), paths.get("platlib"), *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    for d in candidates:
        if not d or not os.path.isdir(d):
            continue
        # Never put the repo checkout itself on the path.
        if Path(d).resolve() == REPO:
            continue
        if d not in dirs:
            dirs.append(d)
    return dirs


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outdir = tmp_path_factory.mktemp("wheelhouse")
    cwd = tmp_path_factory.mktemp("build-cwd")
    if _has("hatchling") and _has("build"):
        cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation"]
        cmd += ["--outdir", outdir, REPO]
        _run(cmd, cwd=cwd)
    elif _has("hatchling"):
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps"]
        cmd += ["--no-build-isolation", "-w", outdir, REPO]
        _run(cmd, cwd=cwd)
    else:
        # Isolated build: pip must fetch hatchling from an index.
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", outdir, REPO]
        proc = _run(cmd, cwd=cwd, check=False)
        if proc.returncode != 0:
            out = proc.stdout + proc.stderr
            if "hatchling" in out and (
                "No matching distribution" in out or "Could not find a version" in out
            ):
                pytest.skip(
                    "cannot build the wheel offline: hatchling is not installed "
                    "and pip could not fetch it (pip install hatchling build)"
                )
            pytest.fail(f"pip wheel failed ({proc.returncode}):\n{out}")
    wheels = sorted(outdir.glob("graphgen-*.whl"))
    assert len(wheels) == 1, f"expected exactly one wheel, got {wheels}"
    return wheels[0]


def test_wheel_contains_templates_and_schema(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    templates = [n for n in names if n.startswith("graphgen/templates/")]
    assert any(n.endswith(".j2") for n in templates), (
        f"no .j2 templates under graphgen/templates/ in {wheel.name}: {names}"
    )
    assert "graphgen/frontends/spec.schema.json" in names, names
    # the learner page's template, script and style sheet (inlined into each page)
    for asset in ("page.html.j2", "page.js", "page.css"):
        assert f"graphgen/templates/page/{asset}" in names, names
    assert "graphgen/__init__.py" in names, names
    assert "graphgen/cli.py" in names, names
    # Nothing from the repo root other than the package should leak in.
    top = {n.split("/", 1)[0] for n in names}
    extra = {t for t in top if t != "graphgen" and not t.endswith(".dist-info")}
    assert not extra, f"unexpected top-level entries in wheel: {extra}"


def test_wheel_installs_and_compiles_tiny(wheel: Path, tmp_path: Path) -> None:
    spec = REPO / "examples" / "tiny.yaml"
    assert spec.is_file(), f"missing example spec {spec}"

    # 1. Fresh venv (pip comes from the bundled ensurepip: no network).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    vpy = _venv_bin(venv, "python")
    vsite = _run(
        [vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=tmp_path,
    ).stdout.strip()
    vsite_path = Path(vsite).resolve()
    assert vsite_path.is_dir(), vsite

    # 2. Make the running environment's dependencies (numpy, networkx, ...)
    # visible via plain path lines. Paths added by a .pth are not scanned for
    # further .pth files, so an editable install's `_graphgen.pth` (pointing at
    # the repo) in the outer site-packages is NOT activated. They are also
    # appended after the venv's own site-packages, so the wheel wins.
    (vsite_path / "_outer_deps.pth").write_text(
        "".join(d + "\n" for d in _outer_site_dirs())
    )

    # 3. Before installing: graphgen must not resolve to the repo checkout.
    where = _run([vpy, "-c", WHERE_IS_GRAPHGEN], cwd=tmp_path).stdout.strip()
    if where != "NONE":
        assert Path(where).resolve() != (REPO / "graphgen").resolve(), (
            f"graphgen importable from the repo checkout before install: {where}"
        )

    # 4. Install the wheel without touching any index.
    _run(
        [vpy, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
        cwd=tmp_path,
    )
    where = _run([vpy, "-c", WHERE_IS_GRAPHGEN], cwd=tmp_path).stdout.strip()
    assert where != "NONE"
    assert Path(where).resolve().is_relative_to(vsite_path), (
        f"graphgen resolves to {where}, not the fresh venv's {vsite_path}"
    )
    # The shipped templates and schema are reachable from the installed package.
    pkg_dir = vsite_path / "graphgen"
    assert any((pkg_dir / "templates").rglob("*.j2"))
    assert (pkg_dir / "frontends" / "spec.schema.json").is_file()

    # 5. Console script compiles the tiny example.
    cli = _venv_bin(venv, "graphgen")
    assert cli.exists(), f"console script not installed: {cli}"
    out_py = tmp_path / "tiny_net.py"
    _run([cli, "compile", spec, "-o", out_py], cwd=tmp_path)
    assert out_py.is_file() and out_py.stat().st_size > 0

    # 6. The generated module imports in the fresh interpreter.
    _run([vpy, "-c", "import tiny_net"], cwd=tmp_path)
