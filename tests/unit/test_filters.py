from __future__ import annotations

import pytest

from aiocontainerd import filters
from aiocontainerd.errors import InvalidArgument

OBJ = {("id",): "redis", ("image",): "docker.io/library/redis:7",
       ("labels", "a.b/c"): "x y", ("labels", "tier"): "db", ("runtime", "name"): "io.containerd.runc.v2"}


def field(path) -> str | None:
    return OBJ.get(tuple(path))


@pytest.mark.parametrize(("text", "expected"), [
    ("id==redis", True),
    ("id==nginx", False),
    ("id!=nginx", True),
    ("id~=^re", True),
    ("id~=^nginx", False),
    ("labels.tier", True),
    ("labels.missing", False),
    ('labels."a.b/c"=="x y"', True),
    ("labels.`a.b/c`~=x", True),
    ("labels.'a.b/c'!='x y'", False),
    ("id==redis,labels.tier==db", True),
    ("id==redis,labels.tier==web", False),
    ("runtime.name==io.containerd.runc.v2", True),
    (" id == redis ", True),
    ("labels.missing!=x", True),
])
def test_single_filter(text: str, expected: bool) -> None:
    assert filters.parse([text]).match(field) is expected


def test_alternatives_are_ored_and_empty_matches_all() -> None:
    assert filters.parse(["id==nginx", "labels.tier==db"]).match(field)
    assert not filters.parse(["id==nginx", "labels.tier==web"]).match(field)
    assert filters.parse([]).match(field)
    assert filters.parse([""]).match(field)


@pytest.mark.parametrize("text", ["==x", "id==", 'id=="open', "id~=(", "id==a b", "1d==x", "id==a,,"])
def test_syntax_errors_are_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument, match="filter"):
        filters.parse([text])
