"""The library versions sdlora supports, checked when a command starts.

The supported ranges are the ones in pyproject.toml (read back from the installed package's metadata, so there
is one list); constraints.txt pins the exact set the test suite passed with. pip enforces the ranges when it
installs, but a later `pip install -U transformers` in the same environment does not ask us: without this check
such an upgrade would surface as a broken feature at run time instead of one clear line at start.
"""

from __future__ import annotations

import importlib.metadata as metadata

from sdlora.errors import SdloraError


def unsupported_versions() -> list[str]:
    """'NAME VERSION (supported: RANGE)' for each installed requirement outside its supported range."""
    from packaging.requirements import Requirement

    try:
        requirements = metadata.requires("sdlora") or []
    except metadata.PackageNotFoundError:  # running from a source tree without an install: nothing to compare
        return []
    problems = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra, or another platform's requirement
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed (needed: {req.specifier or 'any version'})")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} (supported: {req.specifier})")
    return problems


def check_versions() -> None:
    problems = unsupported_versions()
    if problems:
        raise SdloraError(f"unsupported library versions: {'; '.join(problems)}; install the tested set with "
                          f"`pip install -e . -c constraints.txt` (or set SDLORA_SKIP_VERSION_CHECK=1 to try anyway)")
