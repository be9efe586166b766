"""Media types of OCI and Docker schema 2 content, and what each kind is.

The values are facts of the wire (OCI image-spec, Docker distribution,
containerd's ``core/images/mediatypes.go``). Docker schema 1
(``application/vnd.docker.distribution.manifest.v1+json`` / ``+prettyjws``)
is recognised only to be refused: :func:`check_not_schema1` raises
:class:`~aiocontainerd.errors.Unimplemented` "schema 1 manifests are not
supported", as containerd 2 does.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import Unimplemented

# OCI image-spec
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

# Docker image manifest v2, schema 2
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_PLUGIN_CONFIG = "application/vnd.docker.plugin.v1+json"

# Docker schema 1 (refused)
DOCKER_SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1_MANIFEST_UNSIGNED = "application/vnd.docker.distribution.manifest.v1+json"

IN_TOTO = "application/vnd.in-toto+json"
OCTET_STREAM = "application/octet-stream"

#: The Accept header containerd sends when resolving a reference (same order).
RESOLVE_ACCEPT = ", ".join([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"])

SCHEMA1_UNSUPPORTED = (
    "schema 1 manifests are not supported: media type "
    f"{DOCKER_SCHEMA1_MANIFEST!r} is no longer supported since containerd v2.0, "
    f"please rebuild the image as {DOCKER_MANIFEST!r} or {OCI_MANIFEST!r}")


def base(media_type: str) -> str:
    """The media type without parameters (``; charset=…``), stripped."""
    return media_type.split(";", 1)[0].strip()


def is_manifest(mt: str) -> bool:
    return mt in (OCI_MANIFEST, DOCKER_MANIFEST)


def is_index(mt: str) -> bool:
    return mt in (OCI_INDEX, DOCKER_MANIFEST_LIST)


def is_manifest_or_index(mt: str) -> bool:
    return is_manifest(mt) or is_index(mt)


def is_schema1(mt: str) -> bool:
    return mt in (DOCKER_SCHEMA1_MANIFEST, DOCKER_SCHEMA1_MANIFEST_UNSIGNED)


def is_config(mt: str) -> bool:
    return mt in (OCI_CONFIG, DOCKER_CONFIG)


def is_layer(mt: str) -> bool:
    """OCI layers of any compression (and ``+encrypted``), Docker rootfs diffs including foreign."""
    if mt.startswith("application/vnd.oci.image.layer."):
        return True
    return mt.split("+", 1)[0] in (DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_ZSTD,
                                   DOCKER_LAYER_FOREIGN, DOCKER_LAYER_FOREIGN_GZIP)


def is_non_distributable(mt: str) -> bool:
    """Foreign (Docker) or non-distributable (OCI) layers: the registry may not hold them."""
    return mt.startswith(("application/vnd.oci.image.layer.nondistributable.",
                          "application/vnd.docker.image.rootfs.foreign."))


def is_docker(mt: str) -> bool:
    return mt.startswith("application/vnd.docker.")


def compression(mt: str) -> str:
    """Compression of a layer media type: ``gzip``, ``zstd``, ``""`` (none), or ``unknown``.

    Uncompressed Docker layer types say ``unknown`` because Docker tools put
    compressed data under them; the unpacker must sniff. Wrapped types (an extra
    ``+suffix`` such as ``+encrypted``) say ``""``. Not a layer: ``ValueError``.
    """
    head, _, ext = mt.partition("+")
    suffixes = sorted(ext.split("+")) if ext else []
    if head in (DOCKER_LAYER, DOCKER_LAYER_FOREIGN):
        return "" if suffixes else "unknown"
    if head in (DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN_GZIP):
        return "" if suffixes else "gzip"
    if head == DOCKER_LAYER_ZSTD:
        return "" if suffixes else "zstd"
    if head in (OCI_LAYER, OCI_LAYER_NONDISTRIBUTABLE):
        if suffixes and suffixes[-1] in ("gzip", "zstd"):
            return suffixes[-1]
        return ""
    raise ValueError(f"unrecognised layer media type {mt!r}")


def check_not_schema1(media_type: str, body: bytes | None = None) -> None:
    """Raise Unimplemented (:data:`SCHEMA1_UNSUPPORTED`) for a schema 1 manifest.

    Looks at the media type and, when given, the body (``schemaVersion: 1`` or
    ``fsLayers``) — some registries serve schema 1 as ``text/plain`` or plain JSON.
    """
    if is_schema1(base(media_type)):
        raise Unimplemented(SCHEMA1_UNSUPPORTED)
    if body is not None:
        doc = _json_object(body)
        if doc is not None and (doc.get("schemaVersion") == 1 or "fsLayers" in doc):
            raise Unimplemented(SCHEMA1_UNSUPPORTED)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def sniff(body: bytes) -> str:
    """The manifest media type a JSON body declares or implies; ``""`` if it cannot tell.

    Used when a registry answers with ``application/octet-stream`` (the blob
    fallback) or no Content-Type: the ``mediaType`` field, else ``manifests``
    → OCI index, ``config``+``layers`` → OCI manifest.
    """
    doc = _json_object(body)
    if doc is None:
        return ""
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if doc.get("schemaVersion") == 1 or "fsLayers" in doc:
        return DOCKER_SCHEMA1_MANIFEST
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    return ""
