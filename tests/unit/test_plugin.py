from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aiocontainerd.plugin import InitContext, PluginError, PluginSet, Registration, SkipPlugin, order

calls: list[str] = []


def reg(type_: str, id_: str, *requires: str, fail: BaseException | None = None) -> Registration:
    async def init(ctx: InitContext) -> object:
        calls.append(ctx.registration.uri)
        if fail is not None:
            raise fail
        deps = {t: ctx.get_all(t) for t in requires if t != "*"}
        return {"uri": ctx.registration.uri, "deps": deps}

    return Registration(type_, id_, init, requires=tuple(requires))


async def init_all(regs, tmp_path: Path, **kw) -> PluginSet:
    calls.clear()
    ps = PluginSet()
    await ps.init_all(regs, configs=lambda r: None, root=tmp_path / "root",
                      state=tmp_path / "state", properties={}, **kw)
    return ps


def test_order_puts_requirements_first() -> None:
    regs = [reg("t.grpc", "a", "t.meta", "t.snap"), reg("t.snap", "x", "t.meta"),
            reg("t.meta", "m"), reg("t.last", "z", "*")]
    uris = [r.uri for r in order(regs)]
    assert uris.index("t.meta.m") < uris.index("t.snap.x") < uris.index("t.grpc.a")
    assert uris[-1] == "t.last.z"


def test_cycle_is_an_error() -> None:
    with pytest.raises(PluginError, match="cycle"):
        order([reg("t.a", "1", "t.b"), reg("t.b", "1", "t.a")])


async def test_failure_is_recorded_and_others_continue(tmp_path: Path) -> None:
    ps = await init_all([reg("t.meta", "m"), reg("t.bad", "b", fail=RuntimeError("boom")),
                         reg("t.grpc", "g", "t.meta", "t.bad")], tmp_path)
    bad = ps.get("t.bad.b")
    assert not bad.ok and str(bad.error) == "boom"
    good = ps.get("t.grpc.g")
    assert good.ok
    assert good.instance["deps"] == {"t.meta": {"m": ps.get("t.meta.m").instance}, "t.bad": {}}


async def test_required_failure_stops_start(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"required plugin t\.bad\.b failed.*boom"):
        await init_all([reg("t.bad", "b", fail=RuntimeError("boom"))], tmp_path, required=["t.bad.b"])


async def test_required_but_missing_or_disabled(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="not registered"):
        await init_all([reg("t.a", "1")], tmp_path, required=["t.nope.x"])
    with pytest.raises(PluginError, match="disabled"):
        await init_all([reg("t.a", "1")], tmp_path, required=["t.a.1"], disabled=["t.a.1"])


async def test_disabled_and_skipped(tmp_path: Path) -> None:
    ps = await init_all([reg("t.a", "1"), reg("t.b", "2", fail=SkipPlugin("not on linux"))],
                        tmp_path, disabled=["t.a.1"])
    assert calls == ["t.b.2"]
    assert [p.registration.uri for p in ps] == ["t.b.2"]
    assert ps.get("t.b.2").skipped


async def test_get_requires_declaration(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    async def sneaky(ctx: InitContext) -> object:
        seen["value"] = ctx.get("t.meta")
        return object()

    ps = await init_all([reg("t.meta", "m"), Registration("t.x", "y", sneaky)], tmp_path)
    assert "does not declare" in str(ps.get("t.x.y").error)


async def test_context_folders_and_config(tmp_path: Path) -> None:
    @dataclasses.dataclass
    class Conf:
        size: int = 3

    got: dict[str, object] = {}

    async def init(ctx: InitContext) -> object:
        got.update(root=ctx.root, state=ctx.state, config=ctx.config)
        return object()

    r = Registration("io.x.v1", "p", init, config=Conf)
    ps = PluginSet()
    await ps.init_all([r], configs=lambda r: Conf(7), root=tmp_path / "r", state=tmp_path / "s",
                      properties={})
    assert got == {"root": tmp_path / "r" / "io.x.v1.p", "state": tmp_path / "s" / "io.x.v1.p",
                   "config": Conf(7)}
