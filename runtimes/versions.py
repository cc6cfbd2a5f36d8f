"""Installed package versions from their metadata: nothing is imported to learn them."""

from __future__ import annotations

from importlib import metadata


def package_versions(*names: str) -> dict[str, str]:
    """``{distribution: version}`` for those of ``names`` that are installed, in the order given."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def package_version(*distributions: str) -> str | None:
    """The version of the first of ``distributions`` that is installed, or None."""
    return next(iter(package_versions(*distributions).values()), None)
