"""The built wheel, installed (not editable) in a fresh venv, is the whole product.

The wheel must carry the four packages and the seven mode files, and nothing of the old layout
(top-level ``store``, ``engine``, ``cli``). Installed without the checkout on any path, from a
directory holding files named like those old modules, ``results-store modes`` and a one-day
backtest must run and write their Delta tables.

The fresh venv does not download the project's dependencies: a ``.pth`` line appends the dev
venv's site-packages to its ``sys.path``. A path line only extends ``sys.path`` (the dev venv's own
``.pth`` files, among them the editable install's finder, are not run), and the new venv's
site-packages comes first, so the project itself is imported from the wheel; the test checks it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "results_store", "tasks", "flows")
OLD_TOP_LEVEL = ("store", "engine", "cli")
MODE_FILES = {
    "btc_basis.yaml",
    "eth_basis.yaml",
    "eth_leveraged.yaml",
    "eth_staking_only.yaml",
    "pure_lending.yaml",
    "usdt_market_neutral.yaml",
    "usdt_market_neutral_no_leverage.yaml",
}
# Top-level entries of the checkout that are not source (and may be large or in use).
_NOT_SOURCE = {".git", ".venv", "build", "dist", "data", ".prefect", ".pytest_cache", ".ruff_cache",
               ".mypy_cache", ".import_linter_cache"}


def _run(cmd: list[str | Path], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, and fail the test with its output if it fails or overruns."""
    try:
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        # Output caught at a timeout is bytes even with text=True.
        out, err = (b.decode(errors="replace") if isinstance(b, bytes) else b for b in (exc.stdout, exc.stderr))
        pytest.fail(f"{cmd} did not finish in {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    assert done.returncode == 0, f"{cmd} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def _ignore_non_source(directory: str, names: list[str]) -> set[str]:
    ignored = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(directory) == ROOT:
        ignored |= _NOT_SOURCE & set(names)
    return ignored


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline from a copy of the working tree.

    Building in a copy keeps setuptools' ``build/`` and ``*.egg-info`` out of the checkout.
    ``--no-build-isolation`` uses the dev venv's setuptools (the test extra requires one that
    builds wheels by itself), so nothing is downloaded.
    """
    root = tmp_path_factory.mktemp("wheel")
    source, out = root / "source", root / "dist"
    shutil.copytree(ROOT, source, ignore=_ignore_non_source, symlinks=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
          "--disable-pip-version-check", "-q", "-w", out, source], timeout=300)
    (built,) = out.glob("results_store-*.whl")
    return built


def test_the_wheel_holds_the_four_packages_and_the_mode_files_and_no_old_layout(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {n.removeprefix("schemas/mode_files/") for n in names
            if n.startswith("schemas/mode_files/") and n.endswith(".yaml")} == MODE_FILES
    assert {p.name for p in (ROOT / "schemas" / "mode_files").glob("*.yaml")} == MODE_FILES
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names, f"package {package} is missing from {wheel.name}"
    top_level = {n.split("/", 1)[0] for n in names}
    for old in OLD_TOP_LEVEL:
        assert old not in top_level and f"{old}.py" not in top_level, f"old top-level {old} is in {wheel.name}"
    assert "results-store = results_store.cli.main:main" in entry_points


def _clean_env(tmp_path: Path, venv: Path) -> dict[str, str]:
    """The environment of a user's shell: no test-session Prefect, store or Python path settings.

    conftest.py's configure_prefect() put the session's PREFECT_* (its PREFECT_HOME among them)
    into os.environ, and the flow tests' harness runs its own server: the child must use neither,
    so every PREFECT_* goes and the CLI's own configure_prefect() sets its defaults again.
    PREFECT_API_URL stays unset: the backtest runs against Prefect's ephemeral server.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "BASIS_", "RESULTS_STORE_", "PIP_"))
           and k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "DO_NOT_TRACK"}}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["BASIS_DATA_DIR"] = str(tmp_path / "basis-data")
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["COLUMNS"] = "200"  # rich would cut the longest mode name at 80 columns
    return env


def test_the_installed_wheel_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = _clean_env(tmp_path, venv)
    _run([sys.executable, "-m", "venv", venv], timeout=300, env=env)
    python = venv / "bin" / "python"
    # Install before the dev venv is on the new venv's path, so pip sees only the new venv.
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir", "-q", wheel],
         timeout=300, env=env)
    site_packages = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              timeout=60, env=env).stdout.strip())
    dev_paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "_dev_venv_dependencies.pth").write_text("".join(f"{p}\n" for p in dev_paths))

    # Outside the checkout, next to files named like the old top-level modules.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert not elsewhere.resolve().is_relative_to(ROOT)
    for old in OLD_TOP_LEVEL:
        (elsewhere / f"{old}.py").write_text('raise SystemExit("shadowed")\n')

    # `python -c` puts the current directory first on sys.path: importing every module of the four
    # packages from here would run a shadow file if anything still imported store, engine or cli.
    where = _run([python, "-c", (
        "import importlib, json, pkgutil, sys\n"
        f"packages = {list(PACKAGES)!r}\n"
        "files = {}\n"
        "for name in packages:\n"
        "    package = importlib.import_module(name)\n"
        "    files[name] = package.__file__\n"
        "    for info in pkgutil.walk_packages(package.__path__, name + '.'):\n"
        "        files[info.name] = importlib.import_module(info.name).__file__\n"
        "import prefect\n"
        "files['prefect'] = prefect.__file__\n"
        "print(json.dumps(files))\n"
    )], timeout=300, cwd=elsewhere, env=env)
    files = {name: Path(path) for name, path in json.loads(where.stdout).items()}
    for name, path in files.items():
        if name == "prefect":
            assert any(path.is_relative_to(p) for p in dev_paths), f"prefect from {path}, not the dev venv"
        else:
            assert path.is_relative_to(site_packages), f"{name} imported from {path}, not the new venv"
    assert "results_store.cli.main" in files

    cli = venv / "bin" / "results-store"
    modes = _run([cli, "modes"], timeout=300, cwd=elsewhere, env=env)
    for mode_file in MODE_FILES:
        assert mode_file.removesuffix(".yaml") in modes.stdout, modes.stdout

    data_dir = tmp_path / "backtest-data"
    _run([cli, "backtest", "--mode", "usdt_market_neutral", "--start", "2024-01-01", "--end", "2024-01-02",
          "--freq", "1min", "--data-dir", data_dir], timeout=900, cwd=elsewhere, env=env)
    assert list(data_dir.glob("**/balance_sheet/_delta_log")), f"no balance_sheet Delta table under {data_dir}"
