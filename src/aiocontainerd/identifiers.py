"""Validation of identifiers and labels, as containerd's ``pkg/identifiers`` and ``labels``.

An identifier (namespace, container ID, lease ID, snapshot key component) is
1 to 76 characters of ``[A-Za-z0-9]`` runs joined by single ``.``, ``_`` or ``-``.
A label's key plus value are at most 4096 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import InvalidArgument

MAX_IDENTIFIER_LENGTH = 76
MAX_LABEL_SIZE = 4096
_IDENTIFIER = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")


def validate(identifier: str) -> str:
    """Return ``identifier`` if valid; raise :class:`InvalidArgument` naming the rule broken."""
    if not identifier:
        raise InvalidArgument("identifier must not be empty")
    if len(identifier) > MAX_IDENTIFIER_LENGTH:
        raise InvalidArgument(
            f"identifier {identifier[:10] + '...'!r} greater than maximum length "
            f"({MAX_IDENTIFIER_LENGTH} characters)")
    if not _IDENTIFIER.match(identifier):
        raise InvalidArgument(
            f"identifier {identifier!r} must match {_IDENTIFIER.pattern}"
        )
    return identifier


def validate_labels(labels: Mapping[str, str]) -> None:
    """Raise :class:`InvalidArgument` for an empty key or a key+value over 4096 bytes."""
    for key, value in labels.items():
        if not key:
            raise InvalidArgument("label key must not be empty")
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_SIZE:
            shown = key if len(key) <= 10 else key[:10] + "..."
            raise InvalidArgument(f"label key and value length (key {shown!r}) "
                                  f"greater than maximum size ({MAX_LABEL_SIZE} bytes)")
