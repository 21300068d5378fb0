#!/usr/bin/env python
"""Exit 0 when every requirement in the given requirements files is installed in a matching version.

A second of metadata look-ups instead of pip's resolver, so `make test` is quick when nothing changed.
Only direct requirements are checked; pip installed their dependencies the first time.
Usage: python scripts/requirements_satisfied.py requirements.txt [...]
"""

import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement


def missing(path: str) -> list[str]:
    unmet = []
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            unmet.append(f"{requirement} (not installed)")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(f"{requirement} (installed {installed})")
    return unmet


if __name__ == "__main__":
    unmet = [item for path in sys.argv[1:] for item in missing(path)]
    for item in unmet:
        print(f"unmet: {item}")
    sys.exit(1 if unmet else 0)
