"""Platforms: parse, format, normalise, match and order like containerd/platforms."""

from __future__ import annotations

import pytest

from aiocontainerd.errors import InvalidArgument
from aiocontainerd.remotes import platforms
from aiocontainerd.remotes.platforms import Platform, format_all, normalize, only, parse

P = Platform


@pytest.mark.parametrize(("spec", "expected"), [
    ("linux/amd64", P("linux", "amd64")),
    ("linux/x86_64", P("linux", "amd64")),
    ("Linux/AMD64", P("linux", "amd64")),
    ("linux/amd64/v3", P("linux", "amd64", "v3")),
    ("linux/amd64/v1", P("linux", "amd64")),
    ("linux/arm", P("linux", "arm")),
    ("linux/arm/v7", P("linux", "arm", "v7")),
    ("linux/arm/7", P("linux", "arm", "v7")),
    ("linux/armhf", P("linux", "arm")),  # v7 implied, as containerd
    ("linux/armel", P("linux", "arm", "v6")),
    ("linux/arm/v6", P("linux", "arm", "v6")),
    ("linux/arm64", P("linux", "arm64")),
    ("linux/aarch64", P("linux", "arm64")),
    ("linux/arm64/v8", P("linux", "arm64", "v8")),
    ("linux/arm64/v9.0", P("linux", "arm64", "v9")),
    ("linux/i386", P("linux", "386")),
    ("macos/arm64", P("darwin", "arm64")),
    ("windows(10.0.17763)/amd64", P("windows", "amd64", "", "10.0.17763")),
    ("windows(10.0.17763+win32k)/amd64", P("windows", "amd64", "", "10.0.17763", ("win32k",))),
    ("linux(+a+b)/amd64", P("linux", "amd64", "", "", ("a", "b"))),
])
def test_parse(spec: str, expected: Platform) -> None:
    assert parse(spec) == expected


def test_parse_single_component_uses_host() -> None:
    host = platforms.default()
    assert parse("linux").os == "linux" and parse("linux").architecture == host.architecture
    p = parse("arm64")
    assert p.os == host.os and p.architecture == "arm64"


@pytest.mark.parametrize("spec", ["linux/*", "", "linux/amd64/v3/x", "lin ux/amd64", "linux/am d64",
                                  "nosuchthing"])
def test_parse_invalid(spec: str) -> None:
    with pytest.raises(InvalidArgument):
        parse(spec)


@pytest.mark.parametrize(("p", "text"), [
    (P("linux", "arm", "v7"), "linux/arm/v7"),
    (P("linux", "amd64"), "linux/amd64"),
    (P("", "amd64"), "unknown"),
    (P("windows", "amd64", "", "10.0.17763", ("win32k",)), "windows(10.0.17763+win32k)/amd64"),
    (P("linux", "amd64", "", "", ("b", "a", "a")), "linux(+a+b)/amd64"),
])
def test_format(p: Platform, text: str) -> None:
    assert format_all(p) == text
    assert platforms.format(p) == (text.split("(")[0] + text[text.index(")") + 1:] if "(" in text else text)
    if p.os:
        assert parse(text) == normalize(p) or parse(text).os_features == tuple(sorted(set(p.os_features)))


def test_normalize() -> None:
    assert normalize(P("linux", "arm")) == P("linux", "arm", "v7")
    assert normalize(P("linux", "arm64", "v8")) == P("linux", "arm64")
    assert normalize(P("linux", "aarch64", "8")) == P("linux", "arm64")
    assert normalize(P("linux", "x86_64", "v1")) == P("linux", "amd64")
    assert normalize(P("", "amd64")).os == platforms.default().os


def test_json_round_trip() -> None:
    p = P("windows", "amd64", "", "10.0", ("win32k",))
    assert p.to_json() == {"architecture": "amd64", "os": "windows", "os.version": "10.0",
                           "os.features": ["win32k"]}
    assert Platform.from_json(p.to_json()) == p
    assert Platform.from_json({"os": "linux", "architecture": "arm", "variant": "v7"}).variant == "v7"
    with pytest.raises(InvalidArgument):
        Platform.from_json({"os": 1})
    with pytest.raises(InvalidArgument):
        Platform.from_json([])


def test_arm_v7_accepts_older_best_first() -> None:
    m = only(parse("linux/arm/v7"))
    for v in ("v7", "v6", "v5"):
        assert m.match(P("linux", "arm", v))
    assert m.match(P("linux", "arm"))  # no variant means v7
    assert not m.match(P("linux", "arm", "v8"))
    assert not m.match(P("linux", "arm64"))
    assert not m.match(P("windows", "arm", "v7"))
    got = m.sort([P("linux", "arm", "v5"), P("linux", "amd64"), P("linux", "arm", "v7"),
                  P("linux", "arm", "v6")])
    assert [p.variant for p in got[:3]] == ["v7", "v6", "v5"]
    assert got[3].architecture == "amd64"


def test_arm6_does_not_accept_v7() -> None:
    m = only(parse("linux/arm/v6"))
    assert m.match(P("linux", "arm", "v5")) and not m.match(P("linux", "arm", "v7"))


def test_amd64_variants() -> None:
    m = only(parse("linux/amd64/v3"))
    for v in ("v3", "v2", "", "v1"):
        assert m.match(P("linux", "amd64", v))
    assert not m.match(P("linux", "amd64", "v4"))
    assert m.match(P("linux", "386"))
    best_first = [P("linux", "amd64", "v3"), P("linux", "amd64", "v2"), P("linux", "amd64"),
                  P("linux", "386")]
    assert m.sort(reversed(best_first)) == best_first
    plain = only(parse("linux/amd64"))
    assert plain.match(P("linux", "amd64")) and not plain.match(P("linux", "amd64", "v2"))


def test_arm64_v8_normalisation_and_fallback_to_arm() -> None:
    m = only(parse("linux/arm64"))
    assert m.match(P("linux", "arm64")) and m.match(P("linux", "arm64", "v8"))
    assert m.match(P("linux", "aarch64"))
    assert m.match(P("linux", "arm", "v7"))  # 32-bit arm runs on arm64
    assert not m.match(P("linux", "arm64", "v8.1"))
    got = m.sort([P("linux", "arm", "v7"), P("linux", "arm64", "v8")])
    assert got[0].architecture == "arm64"
    v9 = only(parse("linux/arm64/v9"))
    assert v9.match(P("linux", "arm64", "v8.5")) and v9.match(P("linux", "arm64"))
    assert not v9.match(P("linux", "arm64", "v9.1"))


def test_strict_ordered_any_all() -> None:
    strict = platforms.only_strict(parse("linux/arm/v7"))
    assert strict.match(P("linux", "arm")) and not strict.match(P("linux", "arm", "v6"))
    ordered = platforms.ordered(parse("linux/arm64"), parse("linux/amd64"))
    assert ordered.sort([P("linux", "amd64"), P("linux", "arm64")])[0].architecture == "arm64"
    anyp = platforms.any_of(parse("linux/arm64"), parse("linux/amd64"))
    assert anyp.match(P("linux", "amd64")) and not anyp.match(P("linux", "s390x"))
    items = [P("linux", "amd64"), P("linux", "arm64")]
    assert anyp.sort(items) == items  # no preference: stable
    assert platforms.ALL.match(P("plan9", "mips")) and platforms.ALL.sort(items) == items


def test_os_features_prefer_more() -> None:
    m = only(P("windows", "amd64", "", "", ("win32k",)))
    assert m.match(P("windows", "amd64"))
    assert m.match(P("windows", "amd64", "", "", ("win32k",)))
    assert not m.match(P("windows", "amd64", "", "", ("other",)))
    got = m.sort([P("windows", "amd64"), P("windows", "amd64", "", "", ("win32k",))])
    assert got[0].os_features == ("win32k",)


def test_default_and_matcher_for() -> None:
    host = platforms.default()
    assert host.os == "linux" and host.architecture
    assert platforms.default_string().startswith("linux/")
    assert platforms.default_matcher().match(host)
    assert platforms.matcher_for([], all_platforms=True) is platforms.ALL
    assert platforms.matcher_for(["linux/arm/v7"]).match(P("linux", "arm", "v6"))
    assert platforms.matcher_for(["linux/arm64", "linux/amd64"]).match(P("linux", "amd64"))
    assert platforms.matcher_for([]).match(host)


def test_select_index_entries() -> None:
    from aiocontainerd.remotes.descriptor import Descriptor

    def d(n: int, p: Platform | None) -> Descriptor:
        return Descriptor("application/vnd.oci.image.manifest.v1+json", f"sha256:{n:064x}", 1, platform=p)

    entries = [d(1, P("linux", "amd64")), d(2, None), d(3, P("linux", "arm", "v6")),
               d(4, P("linux", "arm", "v7")), d(5, P("linux", "arm64"))]
    m = only(parse("linux/arm/v7"))
    assert [e.digest[-1] for e in m.select(entries)] == ["4", "3", "2"]
    assert [e.digest[-1] for e in m.select(entries, limit=1)] == ["4"]
    assert [e.digest[-1] for e in platforms.ALL.select(entries)] == ["1", "3", "4", "5", "2"]
    assert only(parse("linux/s390x")).select(entries[:1]) == []
