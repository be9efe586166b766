"""Image references: parse and normalise as docker and containerd do.

A reference is ``[domain/]path[:tag][@digest]``. :func:`parse` normalises the
familiar forms the way docker (``distribution/reference``) does:

=====================================  =============================================
``busybox``                            ``docker.io/library/busybox:latest``
``user/app:1``                         ``docker.io/user/app:1``
``index.docker.io/library/busybox``    ``docker.io/library/busybox:latest``
``localhost/app``                      ``localhost/app:latest``
``127.0.0.1:5000/app@sha256:…``        ``127.0.0.1:5000/app@sha256:…`` (no tag added)
``host/app:v1@sha256:…``               tag and digest both kept; the digest decides
=====================================  =============================================

The first component is a domain when it contains ``.`` or ``:``, is
``localhost``, or has upper-case letters; otherwise the name is on Docker Hub.
Path components are lower-case ``[a-z0-9]`` separated by ``.``, ``_``,
``__`` or dashes; a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; the whole
name is at most 255 characters. Anything else raises
:class:`~aiocontainerd.errors.InvalidArgument`.

:func:`registry_host` maps a domain to the host actually contacted
(``docker.io`` → ``registry-1.docker.io``).
"""

from __future__ import annotations

import dataclasses
import re

from ..errors import InvalidArgument
from .descriptor import validate_digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DEFAULT_REGISTRY_HOST = "registry-1.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE = re.compile(rf"^((?:{_DOMAIN}/)?{_PATH})(?::({_TAG}))?(?:@({_DIGEST}))?$", re.ASCII)
_NAME = re.compile(rf"^(?:({_DOMAIN})/)?({_PATH})$", re.ASCII)
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$", re.ASCII)
_IDENTIFIER = re.compile(r"^[a-f0-9]{64}$")


@dataclasses.dataclass(frozen=True)
class Reference:
    """A normalised reference: ``domain/path`` plus a tag, a digest, or both."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``domain/path`` (containerd's *locator*), e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """containerd's *object*: ``tag``, ``tag@digest`` or ``@digest``."""
        return self.tag + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def familiar(self) -> str:
        """The short form docker prints: ``busybox:latest``, ``user/app:1``, ``host:5000/app``."""
        domain, path = self.domain, self.path
        out = path
        if domain == DEFAULT_DOMAIN:
            rest = path.removeprefix(OFFICIAL_REPO_PREFIX)
            if path.startswith(OFFICIAL_REPO_PREFIX) and "/" not in rest:
                out = rest
        else:
            out = f"{domain}/{path}"
        return out + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def with_tag(self, tag: str) -> Reference:
        if not re.fullmatch(_TAG, tag, re.ASCII):
            raise InvalidArgument(f"invalid tag format {tag!r}")
        return dataclasses.replace(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        return dataclasses.replace(self, digest=validate_digest(digest))

    @property
    def hostname(self) -> str:
        """The domain without its port (``127.0.0.1`` for ``127.0.0.1:5000``)."""
        host = self.domain
        if host.startswith("["):
            return host[1:host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host


def split_docker_domain(name: str) -> tuple[str, str]:
    """``(domain, path)`` of a familiar name, adding ``docker.io`` and ``library/`` as docker does."""
    first, sep, rest = name.partition("/")
    if not sep:
        domain, path = DEFAULT_DOMAIN, name
    elif first == "localhost":
        domain, path = first, rest
    elif first == LEGACY_DEFAULT_DOMAIN:
        domain, path = DEFAULT_DOMAIN, rest
    elif "." in first or ":" in first or first.lower() != first:
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def parse(ref: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``ref`` (see the module doc). Raises InvalidArgument.

    ``default_tag``: add ``:latest`` when neither tag nor digest is given
    (a bare name is otherwise an error, since there is nothing to resolve).
    """
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("invalid reference format: repository name must have at least one component")
    if "://" in ref:
        raise InvalidArgument(f"invalid reference format {ref!r}: a reference has no URL scheme")
    if _IDENTIFIER.match(ref):
        raise InvalidArgument(
            f"invalid repository name ({ref}), cannot specify 64-byte hexadecimal strings")
    domain, remainder = split_docker_domain(ref)
    remote = remainder.split("@", 1)[0].split(":", 1)[0]
    if remote.lower() != remote:
        raise InvalidArgument(f"invalid reference format: repository name ({remote}) must be lowercase")
    full = f"{domain}/{remainder}"
    m = _REFERENCE.match(full)
    if not m:
        raise InvalidArgument(f"invalid reference format {ref!r}")
    name, tag, digest = m.group(1), m.group(2) or "", m.group(3) or ""
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidArgument(
            f"invalid reference {ref!r}: repository name must not be more than "
            f"{NAME_TOTAL_LENGTH_MAX} characters")
    nm = _NAME.match(name)
    if not nm or not nm.group(1):  # cannot happen: split_docker_domain always yields a domain
        raise InvalidArgument(f"invalid reference format {ref!r}")
    if digest:
        validate_digest(digest)
    if not tag and not digest:
        if not default_tag:
            raise InvalidArgument(f"reference {ref!r}: a tag or digest is required")
        tag = DEFAULT_TAG
    return Reference(nm.group(1), nm.group(2), tag, digest)


def registry_host(domain: str) -> str:
    """The host serving ``domain``'s registry API (``docker.io`` → ``registry-1.docker.io``)."""
    if not _DOMAIN_RE.match(domain):
        raise InvalidArgument(f"invalid registry domain {domain!r}")
    return DEFAULT_REGISTRY_HOST if domain == DEFAULT_DOMAIN else domain


def repository_scope(ref: Reference, push: bool = False) -> str:
    """The token scope for ``ref``'s repository: ``repository:<path>:pull[,push]``."""
    return f"repository:{ref.path}:pull" + (",push" if push else "")
