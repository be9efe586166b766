"""The daemon's version, as reported by the Version service and build-info metric."""

from importlib import metadata

PACKAGE = "aiocontainerd"


def version() -> str:
    """The installed distribution's version (``0+unknown`` when not installed)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "0+unknown"


#: Revision reported next to the version; the package does not embed a VCS hash.
REVISION = "aiocontainerd"
