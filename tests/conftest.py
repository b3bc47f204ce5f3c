"""Shared fixtures: every test works on its own copy of the project's data in a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Helpers shared by several test modules assert too: let pytest explain their failures.
pytest.register_assert_rewrite("tests.ops.lab_processes")

ROOT = Path(__file__).resolve().parent.parent

GIT_ENV = {
    "GIT_AUTHOR_NAME": "imaging tests", "GIT_AUTHOR_EMAIL": "tests@imaging.invalid",
    "GIT_COMMITTER_NAME": "imaging tests", "GIT_COMMITTER_EMAIL": "tests@imaging.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the project's inventory, releases and templates, committed in its own git repo,
    with the state folder (journal, store, lab) inside it. Environment variables point the tool there."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("instruments", "releases", "templates"):
        shutil.copytree(ROOT / name, root / name)
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "test fixture")
    monkeypatch.setenv("IMAGING_ROOT", str(root))
    for var in ("IMAGING_INVENTORY", "IMAGING_RELEASES", "IMAGING_TEMPLATES", "IMAGING_STATE", "IMAGING_LAB",
                "IMAGING_LAB_FAULTS"):
        monkeypatch.delenv(var, raising=False)
    return root


# Tests that build and read real VHDX images need Debian's qemu-utils, ntfs-3g and wimtools. `.ci/run`
# installs them, and under CI a missing tool is a failure; on a developer's machine without them those
# tests are skipped with the command that installs them.
IMAGE_TOOL_MODULES = {"test_vhdx.py", "test_build.py"}


def _missing_image_tools() -> str | None:
    from imaging.core.errors import ImagingError
    from imaging.images.tools import require_tools

    try:
        require_tools()
    except ImagingError as exc:
        return str(exc)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CI"):
        return
    missing = _missing_image_tools()
    if missing is None:
        return
    skip = pytest.mark.skip(reason=f"needs the image tools: {missing}")
    for item in items:
        if item.path.name in IMAGE_TOOL_MODULES:
            item.add_marker(skip)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root, on a machine with a closed network: no sandbox, and none of Chromium's own background connections.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    """Debian's headless Chromium driven by Playwright (never a browser Playwright downloads)."""
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()
