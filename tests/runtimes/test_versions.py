"""Package versions come from installed metadata, first installed distribution first."""

from __future__ import annotations

from importlib import metadata

from runtimes.versions import package_version, package_versions

ABSENT = "no-such-distribution-for-this-test"


def test_package_versions_lists_only_installed_ones_in_order():
    assert package_versions(ABSENT, "pytest", "numpy") == {"pytest": metadata.version("pytest"), "numpy": metadata.version("numpy")}
    assert list(package_versions("numpy", "pytest")) == ["numpy", "pytest"]


def test_package_version_is_the_first_installed_distribution():
    assert package_version(ABSENT, "numpy", "pytest") == metadata.version("numpy")
    assert package_version(ABSENT) is None
