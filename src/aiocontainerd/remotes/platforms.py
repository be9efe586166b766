"""Platforms: parse, format, normalise and match ``os/arch[/variant]`` as containerd does.

A :class:`Platform` is the OCI ``platform`` object (``os``, ``architecture``,
``variant``, ``os.version``, ``os.features``). Terms follow containerd's
``platforms`` package:

- *specifier*: the text form, ``linux/arm/v7``, ``linux/amd64``, ``arm64``
  (OS of the host), ``linux`` (architecture of the host), or with an OS version
  and features ``windows(10.0.17763+win32k)/amd64``.
- *normalise*: canonical spellings — ``x86_64`` → ``amd64``, ``aarch64`` →
  ``arm64``, ``arm64/v8`` → ``arm64``, ``arm`` → ``arm/v7``, ``armhf`` →
  ``arm/v7``, ``armel`` → ``arm/v6``, ``i386`` → ``386``, ``macos`` → ``darwin``.
- *matcher*: :meth:`MatchComparer.match` says whether an image for a platform
  runs here; :meth:`MatchComparer.less` orders two platforms best first.
  :func:`only` accepts what the platform can run, best first: ``arm/v7``
  accepts ``v7, v6, v5``; ``amd64/v3`` accepts ``v3, v2, v1, 386``; ``arm64``
  accepts ``arm64`` then ``arm/v8 … v5``. :func:`only_strict` accepts exactly
  one; :func:`ordered` a list in preference order; :func:`any_of` a set with no
  preference; :data:`ALL` everything ("all platforms").

Example::

    m = only(parse("linux/arm/v7"))
    m.match(parse("linux/arm/v6"))          # True
    m.sort([parse("linux/arm/v5"), parse("linux/arm/v7")])   # v7 first
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
import platform as _pyplatform
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from ..errors import InvalidArgument

T = TypeVar("T")
_SPECIFIER = re.compile(r"^[A-Za-z0-9_.-]+$")
_OS = re.compile(r"^([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?$")

KNOWN_OS = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js", "linux",
    "nacl", "netbsd", "openbsd", "plan9", "solaris", "windows", "zos"})
KNOWN_ARCH = frozenset({
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le", "loong64",
    "mips", "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc", "riscv", "riscv64",
    "s390", "s390x", "sparc", "sparc64", "wasm"})

# uname -m → GOARCH
_MACHINE = {
    "x86_64": "amd64", "amd64": "amd64", "i386": "386", "i486": "386", "i586": "386", "i686": "386",
    "aarch64": "arm64", "arm64": "arm64", "armv5tel": "arm", "armv6l": "arm", "armv7l": "arm",
    "armv8l": "arm", "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x",
    "riscv64": "riscv64", "loongarch64": "loong64", "mips64": "mips64", "mips": "mips",
}


@dataclasses.dataclass(frozen=True, order=True)
class Platform:
    """An OCI platform. ``os_features`` is kept as given (normalise sorts it)."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        return format_all(self)

    def to_json(self) -> dict[str, Any]:
        """The OCI JSON object (``os.version``/``os.features``/``variant`` only when set)."""
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Platform:
        """Build from the OCI JSON object. Raises InvalidArgument for a non-object or bad field."""
        if not isinstance(data, Mapping):
            raise InvalidArgument(f"platform must be an object, got {type(data).__name__}")
        features = data.get("os.features") or ()
        fields = {"os": data.get("os", ""), "architecture": data.get("architecture", ""),
                  "variant": data.get("variant", ""), "os_version": data.get("os.version", "")}
        for key, value in fields.items():
            if not isinstance(value, str):
                raise InvalidArgument(f"platform field {key!r} must be a string")
        if not isinstance(features, list | tuple) or not all(isinstance(f, str) for f in features):
            raise InvalidArgument("platform field 'os.features' must be a list of strings")
        return cls(os_features=tuple(features), **fields)


# -- host defaults -----------------------------------------------------------------------

def _host_os() -> str:
    name = os.uname().sysname.lower()
    return "darwin" if name == "darwin" else name


def _host_arch() -> str:
    machine = _pyplatform.machine().lower()
    return _MACHINE.get(machine, machine)


def _cpuinfo(field: str) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() == field.lower():
                    return value.strip()
    except OSError:
        pass
    return ""


@functools.cache
def _host_variant() -> str:
    """The CPU variant on arm hosts (``v8``, ``v7``, ``v6``…), ``""`` elsewhere."""
    arch = _host_arch()
    if arch not in ("arm", "arm64"):
        return ""
    variant = _cpuinfo("Cpu architecture")
    if not variant:
        machine = _pyplatform.machine().lower()
        if machine == "aarch64":
            variant = "8"
        elif machine.startswith("armv") and len(machine) >= 5:
            variant = machine[4]
    if arch == "arm" and variant == "7" and _cpuinfo("model name").lower().startswith("armv6-compatible"):
        variant = "6"
    variant = variant.lower()
    for canon, spellings in (("v8", ("8", "aarch64")), ("v7", ("7", "7m")), ("v6", ("6", "6tej")),
                             ("v5", ("5", "5t", "5te", "5tej")), ("v4", ("4", "4t")), ("v3", ("3",))):
        if variant in spellings or (canon == "v7" and re.fullmatch(r"\?\(1[2-7]\)", variant)):
            return canon
    return "unknown"


def default() -> Platform:
    """The platform of this host, e.g. ``linux/amd64`` or ``linux/arm64/v8``."""
    return Platform(_host_os(), _host_arch(), _host_variant())


def default_string() -> str:
    """:func:`default` formatted, e.g. ``"linux/amd64"``."""
    return format_all(default())


# -- normalise, parse, format -------------------------------------------------------------

def normalize_os(name: str) -> str:
    if not name:
        return _host_os()
    name = name.lower()
    return "darwin" if name == "macos" else name


def normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    """Canonical ``(architecture, variant)`` as containerd spells them."""
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
        return "arm", variant
    return arch, variant


def normalize(p: Platform) -> Platform:
    """Canonical spellings; OS features sorted and de-duplicated."""
    arch, variant = normalize_arch(p.architecture, p.variant)
    return Platform(normalize_os(p.os), arch, variant, p.os_version,
                    tuple(sorted(set(p.os_features))))


def _decode_option(value: str) -> str:
    return urllib.parse.unquote(value, errors="strict") if "%" in value else value


def _encode_option(value: str) -> str:
    return (value.replace("%", "%25").replace("+", "%2B").replace("(", "%28")
            .replace(")", "%29").replace("/", "%2F"))


def parse(specifier: str) -> Platform:
    """Parse a specifier (see the module doc). Raises InvalidArgument.

    As containerd: ``linux/arm`` keeps no variant (``v7`` is implied),
    ``linux/arm64/v8`` keeps ``v8`` (normalisation drops it), a lone OS takes the
    host's architecture and a lone architecture the host's OS.
    """
    if "*" in specifier:
        raise InvalidArgument(f"{specifier!r}: wildcards not yet supported")
    parts = specifier.split("/", 3)
    m = _OS.match(parts[0])
    if not m:
        raise InvalidArgument(f"{parts[0]!r} is an invalid OS component of {specifier!r}")
    os_name = normalize_os(m.group(1))
    try:
        os_version = _decode_option(m.group(2) or "")
        features = tuple(_decode_option(f) for f in (m.group(3) or "").split("+")[1:] if f)
    except UnicodeDecodeError:
        raise InvalidArgument(f"{specifier!r}: invalid escape in OS version or features") from None
    for part in parts[1:]:
        if not _SPECIFIER.match(part):
            raise InvalidArgument(f"{part!r} is an invalid component of {specifier!r}")
    if len(parts) == 1:
        if os_name in KNOWN_OS:
            arch = _host_arch()
            variant = _host_variant() if arch == "arm" and _host_variant() != "v7" else ""
            return Platform(os_name, arch, variant, os_version, features)
        arch, variant = normalize_arch(parts[0], "")
        if arch == "arm" and variant == "v7":
            variant = ""
        if arch in KNOWN_ARCH:
            return Platform(_host_os(), arch, variant)
        raise InvalidArgument(f"{specifier!r}: unknown operating system or architecture")
    if len(parts) == 2:
        arch, variant = normalize_arch(parts[1], "")
        if arch == "arm" and variant == "v7":
            variant = ""
        return Platform(os_name, arch, variant, os_version, features)
    if len(parts) == 3:
        arch, variant = normalize_arch(parts[1], parts[2])
        if arch == "arm64" and not variant:
            variant = "v8"
        return Platform(os_name, arch, variant, os_version, features)
    raise InvalidArgument(f"{specifier!r}: cannot parse platform specifier")


def parse_all(specifiers: Iterable[str]) -> list[Platform]:
    return [parse(s) for s in specifiers]


def format(p: Platform) -> str:
    """``os/arch[/variant]`` (``unknown`` without an OS)."""
    if not p.os:
        return "unknown"
    return "/".join(x for x in (p.os, p.architecture, p.variant) if x)


def format_all(p: Platform) -> str:
    """Like :func:`format`, with ``(os.version+features)`` after the OS when set."""
    if not p.os:
        return "unknown"
    head = p.os
    features = "+".join(_encode_option(f) for f in sorted(set(p.os_features)) if f)
    if p.os_version or features:
        head += "(" + _encode_option(p.os_version) + ("+" + features if features else "") + ")"
    return "/".join(x for x in (head, p.architecture, p.variant) if x)


# -- matching -----------------------------------------------------------------------------

def _features_subset(wanted: Sequence[str], have: Sequence[str]) -> bool:
    return set(wanted) <= set(have)


class _Exact:
    """Matches one normalised platform (OS version must be equal when both set)."""

    def __init__(self, p: Platform) -> None:
        self.p = normalize(p)

    def match(self, other: Platform) -> bool:
        n = normalize(other)
        if (self.p.os, self.p.architecture, self.p.variant) != (n.os, n.architecture, n.variant):
            return False
        if self.p.os == "windows" and n.os_version and self.p.os_version:
            # build number prefix (major.minor.build) must agree
            if self.p.os_version.split(".")[:3] != n.os_version.split(".")[:3]:
                return False
        return _features_subset(n.os_features, self.p.os_features)


class MatchComparer:
    """Decides whether a platform is acceptable and orders acceptable ones best first."""

    def match(self, p: Platform) -> bool:
        raise NotImplementedError

    def less(self, a: Platform, b: Platform) -> bool:
        """True when ``a`` is preferred to ``b``."""
        raise NotImplementedError

    def sort(self, items: Iterable[Platform]) -> list[Platform]:
        """``items`` ordered best first (stable for equal preference)."""
        return sorted(items, key=functools.cmp_to_key(self._cmp))

    def _cmp(self, a: Platform, b: Platform) -> int:
        return -1 if self.less(a, b) else 1 if self.less(b, a) else 0

    def select(self, items: Iterable[T], limit: int = 0,
               key: Callable[[T], Platform | None] = operator.attrgetter("platform")) -> list[T]:
        """The entries of an index a pull should take, best first (containerd's
        FilterPlatforms + LimitManifests).

        ``items`` are descriptors (or anything ``key`` maps to a platform). Entries
        whose platform does not match are dropped; entries without a platform are
        kept, after the others; equal preference keeps the index order. ``limit``
        > 0 keeps that many.
        """
        kept = [i for i in items if key(i) is None or self.match(key(i))]  # type: ignore[arg-type]

        def cmp(a: T, b: T) -> int:
            pa, pb = key(a), key(b)
            if pa is None or pb is None:
                return (pa is None) - (pb is None)
            return self._cmp(pa, pb)

        kept.sort(key=functools.cmp_to_key(cmp))
        return kept[:limit] if limit > 0 else kept


class _Ordered(MatchComparer):
    def __init__(self, platforms: Iterable[Platform]) -> None:
        self.platforms = [normalize(p) for p in platforms]
        self.matchers = [_Exact(p) for p in self.platforms]

    def __repr__(self) -> str:
        return f"ordered({', '.join(format_all(p) for p in self.platforms)})"

    def match(self, p: Platform) -> bool:
        return any(m.match(p) for m in self.matchers)

    def less(self, a: Platform, b: Platform) -> bool:
        for m in self.matchers:
            am, bm = m.match(a), m.match(b)
            if am and not bm:
                return True
            if am or bm:
                return am and bm and len(a.os_features) > len(b.os_features)
        if a.os_features or b.os_features:
            return self.less(dataclasses.replace(a, os_features=()),
                             dataclasses.replace(b, os_features=()))
        return False


class _Any(_Ordered):
    def __repr__(self) -> str:
        return f"any_of({', '.join(format_all(p) for p in self.platforms)})"

    def less(self, a: Platform, b: Platform) -> bool:
        am, bm = self.match(a), self.match(b)
        if am and bm:
            return len(a.os_features) > len(b.os_features)
        return am and not bm


class _All(MatchComparer):
    def __repr__(self) -> str:
        return "ALL"

    def match(self, p: Platform) -> bool:
        return True

    def less(self, a: Platform, b: Platform) -> bool:
        return False


#: Matches every platform, with no preference ("all platforms").
ALL: MatchComparer = _All()

_ARM64_VERSIONS: dict[str, list[tuple[int, int]]] = {
    **{f"v8.{i}": [(8, i)] for i in range(10)}, "v8": [(8, 0)],
    **{f"v9.{i}": [(9, i), (8, min(i + 5, 9))] for i in range(8)}, "v9": [(9, 0), (8, 5)],
}


def compatible(p: Platform) -> list[Platform]:
    """The platforms ``p`` can run, best first (containerd's platform vector)."""
    p = normalize(p)
    out = [p]
    if p.architecture == "amd64":
        m = re.fullmatch(r"v(\d+)", p.variant)
        if m and int(m.group(1)) > 1:
            out += [dataclasses.replace(p, variant=f"v{v}") for v in range(int(m.group(1)) - 1, 0, -1)]
        out.append(dataclasses.replace(p, architecture="386", variant=""))
    elif p.architecture == "arm":
        m = re.fullmatch(r"v(\d+)", p.variant)
        if m and int(m.group(1)) > 5:
            out += [dataclasses.replace(p, variant=f"v{v}") for v in range(int(m.group(1)) - 1, 4, -1)]
    elif p.architecture == "arm64":
        variant = p.variant or "v8"
        out = []
        for major, top in _ARM64_VERSIONS.get(variant, []):
            for minor in range(top, -1, -1):
                out.append(dataclasses.replace(p, variant=f"v{major}" + (f".{minor}" if minor else "")))
        if variant.startswith(("v8", "v9")):
            variant = "v8"
        out += compatible(dataclasses.replace(p, architecture="arm", variant=variant))
    return out


def only(p: Platform) -> MatchComparer:
    """``p`` and what it can run, best first (see :func:`compatible`)."""
    return _Ordered(compatible(p))


def only_strict(p: Platform) -> MatchComparer:
    """Exactly ``p`` (after normalisation)."""
    return _Ordered([p])


def ordered(*platforms: Platform) -> MatchComparer:
    """Any of ``platforms``, earlier ones preferred."""
    return _Ordered(platforms)


def any_of(*platforms: Platform) -> MatchComparer:
    """Any of ``platforms``, no preference among them."""
    return _Any(platforms)


def default_matcher() -> MatchComparer:
    """:func:`only` of the host's :func:`default` platform."""
    return only(default())


def matcher_for(specifiers: Sequence[str], all_platforms: bool = False) -> MatchComparer:
    """The comparer a pull uses: :data:`ALL`, the host default (no specifiers), or :func:`ordered`."""
    if all_platforms:
        return ALL
    if not specifiers:
        return default_matcher()
    if len(specifiers) == 1:
        return only(parse(specifiers[0]))
    return ordered(*parse_all(specifiers))
