"""scripts/check_dist.py, which `nox -s mindeps` runs on the built sdist and wheel, catches a missing LICENSE."""

from __future__ import annotations

import importlib.util
import io
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

METADATA = """Metadata-Version: 2.4
Name: ftkit
Version: 0.1.0
License-Expression: MIT
Project-URL: Homepage, https://example.org
Project-URL: Documentation, https://example.org/docs
Project-URL: Source, https://example.org/src
Project-URL: Issues, https://example.org/issues
Provides-Extra: local
Provides-Extra: plots
"""


def _check() -> Callable[[Path], list[str]]:
    spec = importlib.util.spec_from_file_location("check_dist", REPO / "scripts" / "check_dist.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    check: Callable[[Path], list[str]] = module.check
    return check


def _dist(tmp_path: Path, *, wheel_license: bool, sdist_license: bool) -> Path:
    with zipfile.ZipFile(tmp_path / "ftkit-0.1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("ftkit/py.typed", "")
        wheel.writestr("ftkit/components/chat_completion_pipeline-0.0.82.json", "{}")
        wheel.writestr("ftkit-0.1.0.dist-info/METADATA", METADATA)
        if wheel_license:
            wheel.writestr("ftkit-0.1.0.dist-info/licenses/LICENSE", "MIT")
    with tarfile.open(tmp_path / "ftkit-0.1.0.tar.gz", "w:gz") as sdist:
        for name in ["pyproject.toml", "README.md", *(["LICENSE"] if sdist_license else [])]:
            info = tarfile.TarInfo(f"ftkit-0.1.0/{name}")
            info.size = 1
            sdist.addfile(info, io.BytesIO(b"x"))
    return tmp_path


def test_a_complete_dist_passes(tmp_path: Path) -> None:
    check = _check()
    assert check(_dist(tmp_path, wheel_license=True, sdist_license=True)) == []


def test_a_missing_license_is_named(tmp_path: Path) -> None:
    check = _check()
    problems = check(_dist(tmp_path, wheel_license=False, sdist_license=False))
    assert problems == ["the wheel has no .dist-info/licenses/LICENSE", "the sdist lacks LICENSE"]
