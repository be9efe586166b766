"""Image references as the CRI plugin reads them (docker's ``distribution/reference`` rules).

containerd's CRI normalises every name a kubelet sends with ``ParseDockerRef``
and lists what it stores with ``ParseAnyReference``; these are the same rules
over our :mod:`aiocontainerd.remotes.reference` parser:

==========================================  ==============================================
``normalize(x)`` (``ParseDockerRef``)
==========================================  ==============================================
``busybox``                                 ``docker.io/library/busybox:latest``
``busybox:1.36``                            ``docker.io/library/busybox:1.36``
``localhost:5000/x``                        ``localhost:5000/x:latest``
``quay.io/a/b@sha256:…``                    ``quay.io/a/b@sha256:…`` (no tag added)
``quay.io/a/b:v1@sha256:…``                 ``quay.io/a/b@sha256:…`` (the digest wins, tag dropped)
``sha256:…`` / 64 hex digits / ``Busybox``  InvalidArgument
==========================================  ==============================================

An *image ID* is the digest of the image's config (``sha256:<64 hex>``); the
names stored for an image are its ID, its repo tags (``name:tag``) and repo
digests (``name@sha256:<manifest or index digest>``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aiocontainerd.errors import InvalidArgument
from aiocontainerd.remotes import reference
from aiocontainerd.remotes.reference import Reference

_HEX64 = re.compile(r"^[a-f0-9]{64}$")
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128})$")


def is_digest(text: str) -> bool:
    """Whether ``text`` is a whole digest (``sha256:<64 hex>``, sha384, sha512): an image ID."""
    return bool(_DIGEST.match(text))


def parse_docker_ref(ref: str) -> Reference:
    """``ParseDockerRef``: normalised, ``:latest`` added, a tag beside a digest dropped.

    Raises InvalidArgument (empty, upper case, a bare 64-hex ID, ``sha256:…``, bad syntax).
    """
    if is_digest(ref):
        raise InvalidArgument(f"invalid reference format {ref!r}: an image ID is not a repository name")
    parsed = reference.parse(ref)
    if parsed.digest and parsed.tag:
        parsed = Reference(parsed.domain, parsed.path, "", parsed.digest)
    return parsed


def normalize(ref: str) -> str:
    """The string of :func:`parse_docker_ref` (what containerd's CRI stores as the image name)."""
    return str(parse_docker_ref(ref))


def parse_any(text: str) -> Reference | None:
    """``ParseAnyReference`` for a stored name: the named reference, or None for an image ID
    (``sha256:…``, 64 hex digits) or anything that does not parse. No ``:latest`` is added."""
    if is_digest(text) or _HEX64.match(text):
        return None
    try:
        return reference.parse(text, default_tag=False)
    except InvalidArgument:
        return None


def repo_digest_and_tag(ref: Reference, digest: str) -> tuple[str, str]:
    """``(repo digest, repo tag)`` of a pulled reference whose target has ``digest``.

    A tag reference gives ``name:tag`` and ``name@<digest>``; a digest reference
    gives itself as the repo digest and no tag (``""``) — containerd's
    ``GetRepoDigestAndTag``.
    """
    if ref.digest:
        return str(Reference(ref.domain, ref.path, "", ref.digest)), ""
    return f"{ref.name}@{digest}", str(ref)


def _rank(ref: Reference) -> int:
    if ref.tag:
        return 1 if ref.digest else 0
    return 2 if ref.digest else 3


def sort_references(names: Iterable[str]) -> list[str]:
    """Names in docker's ``reference.Sort`` order: tagged, tagged+digested, digested, then
    everything else (image IDs, names without tag or digest, junk); alphabetical within each."""
    ranked: list[tuple[int, str]] = []
    for name in names:
        parsed = parse_any(name)
        ranked.append((4, name) if parsed is None else (_rank(parsed), str(parsed)))
    return [name for _, name in sorted(ranked)]


def split_references(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(repo tags, repo digests)`` among stored names (``ParseImageReferences``).

    A name with a digest (with or without a tag) is a repo digest, one with only
    a tag a repo tag; image IDs and bare names are neither. Each list is sorted
    as :func:`sort_references` orders it.
    """
    tags: list[str] = []
    digests: list[str] = []
    for name in sort_references(names):
        parsed = parse_any(name)
        if parsed is None:
            continue
        if parsed.digest:
            digests.append(str(parsed))
        elif parsed.tag:
            tags.append(str(parsed))
    return tags, digests
