"""Package discovery: the core lives in src/, the plugins in top-level folders.

`cri/`, `snapshotters/` and `runtimes/` are subpackages of `aiocontainerd`
(``aiocontainerd.cri``, ...); pyproject's `package-dir` maps their folders and
this file lists their packages, which pyproject alone cannot discover.
"""

from setuptools import find_packages, setup

PLUGIN_FOLDERS = ("cri", "snapshotters", "runtimes")

packages = find_packages("src")
for folder in PLUGIN_FOLDERS:
    packages.append(f"aiocontainerd.{folder}")
    packages += [f"aiocontainerd.{folder}.{sub}" for sub in find_packages(folder)]

setup(packages=packages)
