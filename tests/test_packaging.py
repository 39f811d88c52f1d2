"""A regular (non-editable) install carries every module of the package."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_module_of_the_package(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copytree(REPO / "sparsenet", source / "sparsenet", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("sparsenet-*.whl")
    packed = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "sparsenet").rglob("*.py")}
    assert modules - packed == set()
    assert "sparsenet/training_stage.py" in packed
