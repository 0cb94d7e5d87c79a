"""Check a built sdist and wheel: the license ships in both, and the metadata says what PyPI shows.

Usage: ``python scripts/check_dist.py DIST_DIR`` (``nox -s mindeps`` runs it on what ``uv build`` wrote).
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path


def check(dist: Path) -> list[str]:
    """Return the problems found in the one wheel and one sdist under ``dist`` (empty: all good)."""
    problems: list[str] = []
    wheels, sdists = sorted(dist.glob("ftkit-*.whl")), sorted(dist.glob("ftkit-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"expected one wheel and one sdist in {dist}, found {[p.name for p in [*wheels, *sdists]]}"]
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(wheel.read(metadata_name).decode("utf-8"))
        if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
            problems.append("the wheel has no .dist-info/licenses/LICENSE")
        for needed in ("ftkit/py.typed", "ftkit/components/chat_completion_pipeline-0.0.82.json"):
            if needed not in names:
                problems.append(f"the wheel lacks {needed}")
    if metadata.get("License-Expression") != "MIT":
        problems.append(f"License-Expression is {metadata.get('License-Expression')!r}, not 'MIT'")
    urls = {value.split(",", 1)[0] for value in metadata.get_all("Project-URL") or []}
    for label in ("Homepage", "Documentation", "Source", "Issues"):
        if label not in urls:
            problems.append(f"no Project-URL {label}")
    if "plots" not in (metadata.get_all("Provides-Extra") or []):
        problems.append("no plots extra")
    with tarfile.open(sdists[0]) as sdist:
        top = sdist.getnames()[0].split("/", 1)[0]
        for needed in ("LICENSE", "pyproject.toml", "README.md"):
            if f"{top}/{needed}" not in sdist.getnames():
                problems.append(f"the sdist lacks {needed}")
    return problems


if __name__ == "__main__":
    found = check(Path(sys.argv[1]))
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    print("dist ok" if not found else f"{len(found)} problem(s)")
    raise SystemExit(1 if found else 0)
