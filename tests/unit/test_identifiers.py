from __future__ import annotations

import pytest

from aiocontainerd import identifiers
from aiocontainerd.errors import InvalidArgument


@pytest.mark.parametrize("name", ["default", "k8s.io", "a", "a-b_c.d", "A1", "x" * 76])
def test_valid(name: str) -> None:
    assert identifiers.validate(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "a..b", "a b", "bad!", "é", "x" * 77, "a/b"])
def test_invalid(name: str) -> None:
    with pytest.raises(InvalidArgument):
        identifiers.validate(name)


def test_label_size_limit() -> None:
    identifiers.validate_labels({"k": "v" * 4095})
    with pytest.raises(InvalidArgument, match="maximum size"):
        identifiers.validate_labels({"k": "v" * 4096})
    with pytest.raises(InvalidArgument, match="empty"):
        identifiers.validate_labels({"": "v"})
