"""Entry point of ``containerd-shim-aiorunc-v2`` (placeholder until the shim lands)."""

import sys


def main() -> None:
    sys.exit("containerd-shim-aiorunc-v2: not built yet")
