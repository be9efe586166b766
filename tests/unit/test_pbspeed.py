"""The betterproto2 encoder speed fix (src/aiocontainerd/pbspeed.py) changes no byte.

Every generated message class under ``aiocontainerd.api`` is encoded three ways —
empty, every field explicitly at its default, every field set — with betterproto2's
own ``_get_field_default`` and with the replacement; the bytes (and ``is_set``)
must be identical.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
import warnings

import betterproto2
import pytest

import aiocontainerd.api
from aiocontainerd import pbspeed

B = betterproto2


def _message_classes() -> list[type[betterproto2.Message]]:
    out = []
    for info in pkgutil.walk_packages(aiocontainerd.api.__path__, "aiocontainerd.api."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, betterproto2.Message)
                    and obj is not betterproto2.Message and obj.__module__ == info.name):
                out.append(obj)
    return sorted(set(out), key=lambda c: (c.__module__, c.__qualname__))


CLASSES = _message_classes()

_SCALARS = {
    B.TYPE_BOOL: True, B.TYPE_INT32: -7, B.TYPE_INT64: 1 << 40, B.TYPE_UINT32: 7,
    B.TYPE_UINT64: 1 << 50, B.TYPE_SINT32: -3, B.TYPE_SINT64: -(1 << 40), B.TYPE_FLOAT: 1.5,
    B.TYPE_DOUBLE: 2.25, B.TYPE_FIXED32: 9, B.TYPE_SFIXED32: -9, B.TYPE_FIXED64: 11,
    B.TYPE_SFIXED64: -11, B.TYPE_STRING: "x/ÿ", B.TYPE_BYTES: b"\x00\x01",
}


def _value(cls: type[betterproto2.Message], name: str, proto_type: str, depth: int, key: str = ""):
    if proto_type in _SCALARS:
        return _SCALARS[proto_type]
    target = cls._betterproto.cls_by_field[key or name]
    if proto_type == B.TYPE_ENUM:
        members = list(target)
        return members[-1] if members else None
    if proto_type == B.TYPE_MESSAGE:
        if depth > 2:
            return None
        return _filled(target, depth + 1)
    return None


def _filled(cls: type[betterproto2.Message], depth: int = 0) -> betterproto2.Message | None:
    kwargs = {}
    groups = set()
    for name, meta in cls._betterproto.meta_by_field_name.items():
        if meta.group:
            if meta.group in groups:
                continue
            groups.add(meta.group)
        if meta.map_meta:
            k = _SCALARS.get(meta.map_meta[0].proto_type, "k")
            v = _value(cls, name, meta.map_meta[1].proto_type, depth, key=f"{name}.value")
            if v is None:
                continue
            kwargs[name] = {k: v}
            continue
        v = _value(cls, name, meta.proto_type, depth)
        if v is None:
            continue
        kwargs[name] = [v, v] if meta.repeated else v
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return cls(**kwargs)
    except Exception:
        return None


def _defaults(cls: type[betterproto2.Message]) -> betterproto2.Message | None:
    kwargs = {}
    for name, meta in cls._betterproto.meta_by_field_name.items():
        if meta.group or meta.optional:
            continue
        value = cls._betterproto.default_gen[name]()
        if isinstance(value, (enum.Enum, int, float, str, bytes, list, dict)):
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except Exception:
        return None


def _encode(msg: betterproto2.Message) -> tuple[bytes, tuple[bool, ...]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return bytes(msg), tuple(msg.is_set(n) for n in type(msg)._betterproto.meta_by_field_name)


def test_there_are_messages_to_check() -> None:
    assert len(CLASSES) > 100


def _id(cls: type) -> str:
    return f"{cls.__module__[len('aiocontainerd.api.'):]}.{cls.__qualname__}"


@pytest.mark.parametrize("cls", CLASSES, ids=_id)
def test_identical_encoding(cls: type[betterproto2.Message]) -> None:
    samples = [m for m in (cls(), _defaults(cls), _filled(cls)) if m is not None]
    try:
        pbspeed.restore()
        expected = [_encode(m) for m in samples]
        pbspeed.apply()
        got = [_encode(m) for m in samples]
        got_again = [_encode(m) for m in samples]   # from the per-class cache now
    finally:
        pbspeed.apply()
    assert got == expected
    assert got_again == expected


def test_mutable_defaults_are_fresh() -> None:
    from aiocontainerd.api.containerd.task import v2 as taskapi

    pbspeed.apply()
    msg = taskapi.CreateTaskRequest()
    a = msg._get_field_default("rootfs")
    a.append(1)
    assert msg._get_field_default("rootfs") == []
    assert msg._get_field_default("id") == ""


@pytest.mark.parametrize("cls", CLASSES, ids=_id)
def test_cached_type_hints_are_betterproto2s(cls: type[betterproto2.Message]) -> None:
    try:
        pbspeed.restore()
        expected = cls._type_hints()
        pbspeed.apply()
        got, again = cls._type_hints(), cls._type_hints()
    finally:
        pbspeed.apply()
    assert got == expected and again is got


def test_to_dict_is_unchanged() -> None:
    from aiocontainerd.api.runtime import v1 as api

    msg = _filled(api.ContainerStatus)
    assert msg is not None
    try:
        pbspeed.restore()
        expected = msg.to_dict()
        pbspeed.apply()
        got = msg.to_dict()
    finally:
        pbspeed.apply()
    assert got == expected
