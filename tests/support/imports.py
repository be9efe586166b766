"""Which modules a fresh interpreter loads: keeps the small processes (shim, logger) small."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable

_PROBE = ("\nimport json as _j, sys as _s; _n = _j.loads(_s.argv[1]); "
          "print(_j.dumps([m for m in _s.modules if any(m == n or m.startswith(n + '.') for n in _n)]))")


def loaded(code: str, modules: Iterable[str]) -> list[str]:
    """Runs ``code`` in a new ``python -c`` and returns the entries of its ``sys.modules`` that are
    one of ``modules`` or inside one (``pkg.sub``); raises if the code fails."""
    out = subprocess.run([sys.executable, "-c", code + _PROBE, json.dumps(list(modules))],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])
