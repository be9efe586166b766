"""CRI ``runtime.v1.ImageService`` over the core image stores (containerd's ``internal/cri/server/images``).

State: the images of the metadata store's ``k8s.io`` namespace. A CRI image
is every image record whose target (index or manifest) leads, for the host
platform, to the same config: the *image ID* ``sha256:<config digest>``.
Its references are the names of those records: the ID itself, repo tags
(``docker.io/library/busybox:latest``) and repo digests
(``docker.io/library/busybox@sha256:<manifest or index digest>``). Records
made by other clients in ``k8s.io`` (``ctr -n k8s.io images pull``) count
too, as containerd's CRI adopts them. What a target leads to (ID, chain ID,
size, config) is read from the content store once per target digest and kept,
content being immutable.

RPCs (``api.proto`` of cri-api; containerd's behaviour):

- ``PullImage(image, auth, sandbox_config)`` → ``image_ref`` = image ID.
  The reference is normalised (``busybox`` → ``docker.io/library/busybox:latest``;
  a tag beside a digest is dropped), pulled for the host platform into
  ``k8s.io`` with the CRI's own registry settings (``registry.config_path``
  ``hosts.toml`` tree, ``registry.headers``), credentials from the request's
  ``AuthConfig`` — ``username``/``password``, ``auth`` (base64 ``user:pass``),
  ``identity_token`` (a refresh token); only for the host named by
  ``server_address`` when that is set; else ``registry.configs."<host>".auth``
  (``registry_token`` is not supported, as in containerd, and is ignored) —
  and unpacked into the snapshotter (``containerd.snapshotter``, or the runtime
  handler's from ``image.runtime_handler`` or the sandbox annotation
  ``io.containerd.cri.runtime-handler``). Then the ID, the repo tag and the
  repo digest are created (or moved) as image records labelled
  ``io.cri-containerd.image=managed``; the sandbox image also
  ``io.cri-containerd.pinned=pinned``. A pull whose downloads make no progress
  for ``image_pull_progress_timeout`` is cancelled (Canceled). Errors keep the
  core's codes (InvalidArgument for a bad reference, NotFound, FailedPrecondition
  for refused credentials, Unavailable), messages prefixed
  ``failed to pull and unpack image "<ref>": ``.
- ``ImageStatus(image, verbose)`` → ``image`` (None when the reference or ID —
  whole, or a unique hex prefix — is unknown: an empty response, not an
  error), ``info`` when verbose: ``{"info": JSON {"chainID", "imageSpec"}}``,
  ``imageSpec`` shaped as Go's ``imagespec.Image`` marshals it.
- ``ListImages(filter)`` → every image; with ``filter.image.image`` only the
  one it resolves to (containerd ignores the filter; kubelet sends none).
- ``RemoveImage(image)`` → every reference still pointing at that image is
  deleted (then garbage is collected); an unknown image is success (idempotent).
- ``ImageFsInfo()`` → ``image_filesystems``: the snapshotter's usage first
  (``fs_id.mountpoint`` its folder ``<root>/io.containerd.snapshotter.v1.<name>``,
  ``used_bytes``/``inodes_used`` summed over the ``k8s.io`` snapshots),
  other snapshotters holding ``k8s.io`` snapshots after it, and the content
  store (``<root>/io.containerd.content.v1.content``: blob bytes and count).

``Image`` messages: ``id``, ``repo_tags``, ``repo_digests`` (docker's
reference sort order), ``size`` (index + manifest + config + layers as their
descriptors declare them), ``uid`` (the config's numeric ``User``, before any
``:group``) or ``username`` (a non-numeric one), ``pinned``.

Metrics (the daemon's ``/v1/metrics``), containerd's names:
``containerd_cri_sandboxed_image_pulls_total{status=success|failure}``,
``containerd_cri_sandboxed_in_progress_image_pulls_total``,
``containerd_cri_sandboxed_image_pulling_throughput_mibps``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.errors import (
    AlreadyExists,
    Canceled,
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from aiocontainerd.metadata.images import Image
from aiocontainerd.plugin import SNAPSHOTTER
from aiocontainerd.snapshots import Kind
from aiocontainerd.types import Descriptor as CoreDescriptor

from .config import CRIConfig
from .reference import is_digest, normalize, parse_docker_ref, repo_digest_and_tag, split_references

if TYPE_CHECKING:
    from aiocontainerd.events import Exchange
    from aiocontainerd.images.pull import Progress
    from aiocontainerd.images.service import ImageService as CoreImageService
    from aiocontainerd.metadata.plugin import Metadata
    from aiocontainerd.metrics import Counter, Gauge, Histogram, Metrics

log = logging.getLogger(__name__)

NAMESPACE = "k8s.io"
IMAGE_LABEL = "io.cri-containerd.image"
IMAGE_LABEL_VALUE = "managed"
PINNED_LABEL = "io.cri-containerd.pinned"
PINNED_LABEL_VALUE = "pinned"
RUNTIME_HANDLER_ANNOTATION = "io.containerd.cri.runtime-handler"
CONTENT_PLUGIN_FOLDER = "io.containerd.content.v1.content"
_HEX_PREFIX = re.compile(r"^(?:sha256:)?[a-f0-9]+$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
#: Go's imagespec.ImageConfig fields in marshal order (all omitempty)
_CONFIG_KEYS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
                "StopSignal", "ArgsEscaped")
_HISTORY_KEYS = ("created", "created_by", "author", "comment", "empty_layer")


# -- what one target leads to ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TargetInfo:
    """What an image target (index or manifest) holds for the host platform.

    ``id``: the config digest (the image ID); ``chain_id``: of all its layers
    (``""`` without layers); ``size``: declared sizes of the index(es), manifest,
    config and layers; ``config``: the config JSON object; ``manifest``: the
    platform manifest's descriptor; ``layers``: the layer descriptors.
    """

    id: str
    chain_id: str
    size: int
    config: Mapping[str, Any]
    manifest: CoreDescriptor
    layers: tuple[CoreDescriptor, ...]


@dataclasses.dataclass
class CRIImage:
    """One CRI image: its ID, every record name that leads to it, what its target holds."""

    id: str
    references: list[str]
    info: TargetInfo
    pinned: bool = False

    @property
    def chain_id(self) -> str:
        return self.info.chain_id

    @property
    def config(self) -> Mapping[str, Any]:
        return self.info.config

    @property
    def repo_tags(self) -> list[str]:
        return split_references(self.references)[0]

    @property
    def repo_digests(self) -> list[str]:
        return split_references(self.references)[1]

    def to_cri(self) -> api.Image:
        """The ``runtime.v1.Image`` message (containerd's ``toCRIImage``)."""
        tags, digests = split_references(self.references)
        uid, username = user_of(self.info.config)
        return api.Image(id=self.id, repo_tags=tags, repo_digests=digests, size=self.info.size,
                         uid=api.Int64Value(value=uid) if uid is not None else None,
                         username=username, pinned=self.pinned)


def user_of(config: Mapping[str, Any]) -> tuple[int | None, str]:
    """``(uid, "")`` for a numeric image ``User`` (``"1000"``, ``"1000:50"``), ``(None, name)``
    for a name (``"www-data:1004"`` → ``www-data``), ``(None, "")`` when unset."""
    inner = config.get("config") or {}
    user = inner.get("User", "") if isinstance(inner, dict) else ""
    if not isinstance(user, str) or not user:
        return None, ""
    user = user.split(":", 1)[0]
    if _INTEGER.match(user):
        value = int(user)
        if -(1 << 63) <= value < (1 << 63):
            return value, ""
    return None, user


def image_spec(config: Mapping[str, Any]) -> dict[str, Any]:
    """The image config as Go's ``imagespec.Image`` marshals it: known fields only, in its order,
    empty optional ones left out (``architecture``, ``os``, ``config``, ``rootfs`` always there)."""
    out: dict[str, Any] = {}

    def put(key: str, always: bool = False, default: Any = "") -> None:
        value = config.get(key, default)
        if always or value not in ("", None, [], {}):
            out[key] = value if value is not None else default

    put("created")
    put("author")
    put("architecture", True)
    put("os", True)
    put("os.version")
    put("os.features")
    put("variant")
    inner = config.get("config") or {}
    out["config"] = {k: inner[k] for k in _CONFIG_KEYS
                     if isinstance(inner, dict) and inner.get(k) not in (None, "", [], {}, False)}
    rootfs = config.get("rootfs") or {}
    out["rootfs"] = {"type": rootfs.get("type", ""), "diff_ids": rootfs.get("diff_ids")} \
        if isinstance(rootfs, dict) else {"type": "", "diff_ids": None}
    history = config.get("history")
    if isinstance(history, list) and history:
        out["history"] = [{k: h[k] for k in _HISTORY_KEYS if isinstance(h, dict) and h.get(k)}
                          for h in history]
    return out


def verbose_info(image: CRIImage) -> dict[str, str]:
    """ImageStatus's verbose ``info`` map: ``{"info": '{"chainID": …, "imageSpec": {…}}'}``."""
    body = {"chainID": image.chain_id, "imageSpec": image_spec(image.config)}
    return {"info": json.dumps(body, separators=(",", ":"))}


# -- credentials ---------------------------------------------------------------------------------

def _auth_host(address: str) -> str:
    """The host of an ``AuthConfig.server_address`` (a URL or a bare ``host[:port]``)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    return rest.split("/", 1)[0].lower()


_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


def _same_host(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a == b or (a in _HUB and b in _HUB)


def parse_auth(auth: api.AuthConfig | None, host: str) -> tuple[str, str] | None:
    """Credentials ``(username, secret)`` for ``host`` from a CRI ``AuthConfig`` (``ParseAuth``).

    ``server_address`` set and naming another host → None. Then: ``username``
    (with ``password``); ``identity_token`` (``("", token)``: a refresh token);
    ``auth`` (base64 ``user:password``; NULs trimmed from the password).
    ``registry_token`` is not supported (None, as containerd). Raises
    InvalidArgument for an ``auth`` that is not base64 of ``user:password``.
    """
    if auth is None:
        return None
    if auth.server_address and not _same_host(_auth_host(auth.server_address), host):
        return None
    if auth.username:
        return auth.username, auth.password
    if auth.identity_token:
        return "", auth.identity_token
    if auth.auth:
        try:
            decoded = base64.b64decode(auth.auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidArgument("auth config: 'auth' is not base64") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise InvalidArgument("auth config: invalid decoded auth (no ':' between user and password)")
        return user, password.strip("\x00")
    if auth.registry_token:
        log.info("registry_token credentials are not supported; pulling anonymously",
                 extra={"fields": {"host": host}})
    return None


# -- metrics -------------------------------------------------------------------------------------

class _PullMetrics:
    """containerd's CRI image pull figures, as plain :mod:`aiocontainerd.metrics` families
    (recording them loads no prometheus_client); all None without daemon metrics."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.pulls: Counter | None = None
        self.in_progress: Gauge | None = None
        self.throughput: Histogram | None = None
        if metrics is None:
            return
        prefix = "containerd_cri_sandboxed_"
        self.pulls = metrics.counter(prefix + "image_pulls", "succeeded and failed counters", ("status",))
        self.in_progress = metrics.gauge(prefix + "in_progress_image_pulls_total", "in progress pulls")
        self.throughput = metrics.histogram(
            prefix + "image_pulling_throughput_mibps",
            "image pull throughput in MiB/s (fetched bytes / pull duration; cached layers excluded)",
            buckets=(0.1, 1, 10, 25, 75, 150, 300, 500, 1000, 2000, 4000))


# -- the service -------------------------------------------------------------------------------

class _Watch:
    """Progress of one pull: bytes fetched, blobs in flight, when anything last moved."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.fetched: dict[str, int] = {}
        self.pending: set[str] = set()

    def __call__(self, p: Progress) -> None:
        self.last = self.loop.time()
        if p.status in ("waiting", "downloading"):
            self.pending.add(p.key)
            if p.status == "downloading":
                self.fetched[p.key] = p.offset
        else:
            self.pending.discard(p.key)
            if p.status == "done" and p.key in self.fetched:
                self.fetched[p.key] = p.total

    @property
    def bytes(self) -> int:
        return sum(self.fetched.values())


class CRIImageService(api.ImageServiceBase):
    """``runtime.v1.ImageService`` (see the module doc), and the image calls the runtime side uses:
    :meth:`pull`, :meth:`resolve`, :meth:`get`, :meth:`list`."""

    def __init__(self, config: CRIConfig, *, metadata: Metadata, transfer: CoreImageService | None,
                 events: Exchange | None, root: Path | str, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metadata = metadata
        self.transfer = transfer
        self.events = events
        #: the daemon's root: snapshotters and the content store have their folders there
        self.root = Path(root)
        self._targets: dict[str, TargetInfo] = {}
        self._usage: dict[tuple[str, str, int], tuple[int, int]] = {}
        self._fs_lock = asyncio.Lock()
        self._metrics = _PullMetrics(metrics)

    # -- the index ---------------------------------------------------------------------------

    async def target_info(self, target: CoreDescriptor) -> TargetInfo:
        """What ``target`` holds for the host platform (cached per digest).

        Raises NotFound (content missing, no manifest for the platform),
        InvalidArgument (not an image, malformed manifest or config).
        """
        cached = self._targets.get(target.digest)
        if cached is not None:
            return cached
        from aiocontainerd.images.unpack import chain_ids  # with the remotes: not for an idle daemon
        from aiocontainerd.remotes import limits, platforms
        from aiocontainerd.remotes import mediatypes as mt
        from aiocontainerd.remotes.descriptor import Descriptor

        content = self.metadata.content
        matcher = platforms.default_matcher()
        desc = Descriptor(target.media_type, target.digest, target.size)
        size = 0
        for _ in range(limits.DEFAULT_MAX_DEPTH):
            size += desc.size
            if mt.is_manifest(desc.media_type):
                break
            if not mt.is_index(desc.media_type):
                raise InvalidArgument(f"{desc.digest}: {desc.media_type} is not an image")
            kids = limits.children(desc, await content.read_all(NAMESPACE, desc.digest))
            best = matcher.select([k for k in kids if content.has(NAMESPACE, k.digest)], limit=1)
            if not best:
                raise NotFound(f"image {target.digest}: no manifest for {platforms.default_string()}")
            desc = best[0]
        else:
            raise InvalidArgument(f"image {target.digest}: indexes nested too deep")
        manifest = desc
        kids = limits.children(manifest, await content.read_all(NAMESPACE, manifest.digest))
        if not kids:
            raise InvalidArgument(f"manifest {manifest.digest} has no config")
        config_desc, layers = kids[0], kids[1:]
        try:
            config = json.loads(await content.read_all(NAMESPACE, config_desc.digest))
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument(f"image config {config_desc.digest} is not JSON") from None
        if not isinstance(config, dict):
            raise InvalidArgument(f"image config {config_desc.digest} is not a JSON object")
        rootfs = config.get("rootfs") or {}
        diff_ids = [str(d) for d in (rootfs.get("diff_ids") or [])] if isinstance(rootfs, dict) else []
        chains = chain_ids(diff_ids)
        size += config_desc.size + sum(layer.size for layer in layers)
        info = TargetInfo(
            id=config_desc.digest, chain_id=chains[-1] if chains else "", size=size, config=config,
            manifest=CoreDescriptor(manifest.media_type, manifest.digest, manifest.size),
            layers=tuple(CoreDescriptor(x.media_type, x.digest, x.size) for x in layers))
        self._targets[target.digest] = info
        return info

    def _pinned_name(self, name: str) -> bool:
        return name == self.config.sandbox_image_ref

    async def list(self) -> list[CRIImage]:
        """Every CRI image in ``k8s.io`` (records whose content cannot be read are left out)."""
        by_id: dict[str, CRIImage] = {}
        seen: set[str] = set()
        for record in self.metadata.images.list(NAMESPACE):
            seen.add(record.target.digest)
            try:
                info = await self.target_info(record.target)
            except ContainerdError as e:
                log.debug("image left out of the CRI list",
                          extra={"fields": {"name": record.name, "error": e.message}})
                continue
            image = by_id.get(info.id)
            if image is None:
                image = by_id[info.id] = CRIImage(info.id, [], info)
            image.references.append(record.name)
            if record.labels.get(PINNED_LABEL) == PINNED_LABEL_VALUE or self._pinned_name(record.name):
                image.pinned = True
        for digest in set(self._targets) - seen:  # targets no record names any more
            del self._targets[digest]
        for image in by_id.values():
            image.references.sort()
        return sorted(by_id.values(), key=lambda i: i.id)

    async def get(self, image_id: str) -> CRIImage:
        """The image with ID ``image_id`` (a whole digest, or a unique hex prefix of one, with or
        without ``sha256:``). Raises NotFound, InvalidArgument (an ambiguous prefix)."""
        images = await self.list()
        exact = [i for i in images if i.id == image_id]
        if exact:
            return exact[0]
        if is_digest(image_id) or not _HEX_PREFIX.match(image_id):
            raise NotFound(f"image {image_id!r}: not found")
        prefix = image_id if image_id.startswith("sha256:") else "sha256:" + image_id
        found = [i for i in images if i.id.startswith(prefix)]
        if not found:
            raise NotFound(f"image {image_id!r}: not found")
        if len(found) > 1:
            raise InvalidArgument(f"image ID prefix {image_id!r} is ambiguous")
        return found[0]

    async def resolve(self, ref_or_id: str) -> CRIImage:
        """The image a reference (normalised) or an image ID (or unique prefix) names
        (containerd's ``LocalResolve``). Raises NotFound, InvalidArgument (ambiguous prefix)."""
        if not ref_or_id:
            raise NotFound("image reference must not be empty")
        image_id = ref_or_id
        if not is_digest(ref_or_id):
            try:
                record = self.metadata.images.get(NAMESPACE, normalize(ref_or_id))
                image_id = (await self.target_info(record.target)).id
            except (InvalidArgument, NotFound):
                pass
        return await self.get(image_id)

    # -- pull ----------------------------------------------------------------------------------

    def labels_for(self, name: str) -> dict[str, str]:
        """The labels CRI puts on the records of a pulled ``name`` (``getLabels``)."""
        labels = {IMAGE_LABEL: IMAGE_LABEL_VALUE}
        if self._pinned_name(name):
            labels[PINNED_LABEL] = PINNED_LABEL_VALUE
        return labels

    def _credentials(self, auth: api.AuthConfig | None) -> Any:
        configs = self.config.registry.configs

        def lookup(host: str) -> tuple[str, str] | None:
            if auth is not None:
                return parse_auth(auth, host)
            for key, value in configs.items():
                if _same_host(_auth_host(key), host):
                    a = value.auth
                    return parse_auth(api.AuthConfig(username=a.username, password=a.password,
                                                     auth=a.auth, identity_token=a.identitytoken), host)
            return None

        return lookup

    def snapshotter_for(self, image: api.ImageSpec | None,
                        sandbox_config: api.PodSandboxConfig | None) -> str:
        """The snapshotter an image is unpacked into for this request's runtime handler."""
        handler = image.runtime_handler if image is not None else ""
        if not handler and sandbox_config is not None:
            handler = sandbox_config.annotations.get(RUNTIME_HANDLER_ANNOTATION, "")
        if handler and handler not in self.config.containerd.runtimes:
            handler = ""
        return self.config.snapshotter_for(handler)

    async def pull(self, ref: str, *, auth: api.AuthConfig | None = None, snapshotter: str = "") -> str:
        """Pull and unpack ``ref``, record its ID, repo tag and repo digest; returns the image ID.

        See the module doc for credentials, labels, errors.
        """
        if not ref:
            raise InvalidArgument("image reference must be set")
        named = parse_docker_ref(ref)
        name = str(named)
        snapshotter = snapshotter or self.config.snapshotter
        if snapshotter not in self.metadata.snapshotters:
            raise FailedPrecondition(f"snapshotter {snapshotter!r} is not loaded")
        if self.transfer is None or self.transfer.diff is None:
            raise FailedPrecondition("cannot unpack images: the diff service is not loaded")
        m = self._metrics
        if m.in_progress is not None:
            m.in_progress.inc()
        started = time.monotonic()
        watch = _Watch()
        try:
            image = await self._pull(name, auth, snapshotter, watch)
        except BaseException:
            if m.pulls is not None:
                m.pulls.labels("failure").inc()
            raise
        finally:
            if m.in_progress is not None:
                m.in_progress.dec()
        info = await self.target_info(image.target)
        labels = self.labels_for(name)
        repo_digest, repo_tag = repo_digest_and_tag(named, image.target.digest)
        for record in (info.id, repo_tag, repo_digest):
            if record:
                await self._create_or_update(record, image.target, labels)
        if m.pulls is not None and m.throughput is not None:
            m.pulls.labels("success").inc()
            elapsed = time.monotonic() - started
            if watch.bytes and elapsed > 0:
                m.throughput.observe(watch.bytes / (1 << 20) / elapsed)
        log.info("pulled image", extra={"fields": {"ref": ref, "id": info.id, "repo_tag": repo_tag,
                                                   "repo_digest": repo_digest, "size": info.size}})
        return info.id

    async def _pull(self, name: str, auth: api.AuthConfig | None, snapshotter: str,
                    watch: _Watch) -> Image:
        from aiocontainerd.images.pull import PullOptions
        from aiocontainerd.images.pull import pull as core_pull
        from aiocontainerd.remotes import Hosts, Resolver

        registry = self.config.registry
        headers = {k: ", ".join(v) for k, v in registry.headers.items()}
        options = PullOptions(max_concurrent=self.config.max_concurrent_downloads, snapshotter=snapshotter)
        assert self.transfer is not None
        timeout = self.config.image_pull_progress_timeout_seconds
        try:
            async with Resolver(Hosts(registry.config_path or None), self._credentials(auth),
                                headers=headers) as resolver:
                task = asyncio.ensure_future(core_pull(
                    name, resolver=resolver, metadata=self.metadata, namespace=NAMESPACE,
                    options=options, progress=watch, diff=self.transfer.diff))
                try:
                    wait = timeout if timeout > 0 else None
                    while True:
                        done, _ = await asyncio.wait({task}, timeout=wait)
                        if done:
                            break
                        idle = watch.loop.time() - watch.last
                        if watch.pending and idle >= timeout:
                            raise Canceled(f"no progress for {self.config.image_pull_progress_timeout} "
                                           "while downloading: cancelled")
                        wait = max(timeout - idle, 0.1) if watch.pending else timeout
                finally:
                    if not task.done():  # cancelled by the watchdog, or with the caller
                        task.cancel()
                        with contextlib.suppress(BaseException):
                            await task
                image = task.result()
        except ContainerdError as e:
            raise type(e)(f"failed to pull and unpack image {name!r}: {e.message}") from None
        self.transfer.stored(NAMESPACE, image)
        return image

    async def _create_or_update(self, name: str, target: CoreDescriptor, labels: dict[str, str]) -> None:
        """Create record ``name`` → ``target`` with ``labels``, or move an existing one there and
        add the CRI labels it lacks (``createOrUpdateImageReference``)."""
        from aiocontainerd.api.containerd.services.images import v1 as images_api

        store = self.metadata.images
        try:
            created = await store.create(NAMESPACE, Image(name, target, dict(labels)))
            self._publish("/images/create", images_api.ImageCreate(name=name, labels=dict(created.labels)))
            return
        except AlreadyExists:
            pass
        old = store.get(NAMESPACE, name)
        paths = ["target"]
        if old.labels.get(IMAGE_LABEL) != labels.get(IMAGE_LABEL):
            paths.append(f"labels.{IMAGE_LABEL}")
        pinned = labels.get(PINNED_LABEL) == PINNED_LABEL_VALUE
        if pinned and old.labels.get(PINNED_LABEL) != PINNED_LABEL_VALUE:
            paths.append(f"labels.{PINNED_LABEL}")
        if old.target.digest == target.digest and len(paths) < 2:
            return
        updated = await store.update(NAMESPACE, Image(name, target, dict(labels)), paths)
        self._publish("/images/update", images_api.ImageUpdate(name=name, labels=dict(updated.labels)))

    def _publish(self, topic: str, event: Any) -> None:
        if self.events is not None:
            self.events.publish(NAMESPACE, topic, event)

    # -- remove --------------------------------------------------------------------------------

    async def remove(self, ref_or_id: str) -> None:
        """Delete every record naming the image ``ref_or_id`` resolves to, then collect garbage.

        An unknown image is no error. A record moved to another image meanwhile is left alone.
        """
        from aiocontainerd.api.containerd.services.images import v1 as images_api

        try:
            image = await self.resolve(ref_or_id)
        except NotFound:
            return
        removed = False
        for name in image.references:
            try:
                record = self.metadata.images.get(NAMESPACE, name)
                if (await self.target_info(record.target)).id != image.id:
                    continue
                await self.metadata.images.delete(NAMESPACE, name, record.target.digest)
            except (NotFound, FailedPrecondition):
                continue
            removed = True
            self._publish("/images/delete", images_api.ImageDelete(name=name))
        if removed:
            await self.metadata.collect()

    # -- filesystem usage ----------------------------------------------------------------------

    def snapshotter_root(self, name: str) -> str:
        """The folder of snapshotter ``name`` (``<root>/io.containerd.snapshotter.v1.<name>``)."""
        return str(self.root / f"{SNAPSHOTTER}.{name}")

    async def _snapshot_usage(self, name: str) -> tuple[int, int, int]:
        """``(bytes, inodes, count)`` of ``k8s.io``'s snapshots in snapshotter ``name``.

        Committed snapshots never change: their usage is kept; active ones are measured each time.
        """
        sn = self.metadata.snapshotters[name]
        infos = sn.walk(NAMESPACE)
        size = inodes = 0
        live: set[tuple[str, str, int]] = set()
        for info in infos:
            key = (name, info.name, info.created_at)
            cached = self._usage.get(key) if info.kind == Kind.COMMITTED else None
            if cached is None:
                try:
                    u = await sn.usage(NAMESPACE, info.name)
                except (NotFound, InvalidArgument):
                    continue
                cached = (u.size, u.inodes)
                if info.kind == Kind.COMMITTED:
                    self._usage[key] = cached
            live.add(key)
            size += cached[0]
            inodes += cached[1]
        for key in [k for k in self._usage if k[0] == name and k not in live]:
            del self._usage[key]
        return size, inodes, len(infos)

    async def fs_usage(self) -> list[api.FilesystemUsage]:
        """The ``image_filesystems`` of ImageFsInfo (see the module doc)."""
        async with self._fs_lock:
            now = time.time_ns()

            def usage(mountpoint: str, used: int, inodes: int) -> api.FilesystemUsage:
                return api.FilesystemUsage(timestamp=now,
                                           fs_id=api.FilesystemIdentifier(mountpoint=mountpoint),
                                           used_bytes=api.UInt64Value(value=used),
                                           inodes_used=api.UInt64Value(value=inodes))

            out: list[api.FilesystemUsage] = []
            default = self.config.snapshotter
            names = [default, *sorted(n for n in self.metadata.snapshotters if n != default)]
            for name in names:
                if name not in self.metadata.snapshotters:
                    out.append(usage(self.snapshotter_root(name), 0, 0))
                    continue
                size, inodes, count = await self._snapshot_usage(name)
                if name == default or count:
                    out.append(usage(self.snapshotter_root(name), size, inodes))
            blobs = self.metadata.content.list(NAMESPACE)
            out.append(usage(str(self.root / CONTENT_PLUGIN_FOLDER), sum(b.size for b in blobs), len(blobs)))
            return out

    # -- RPCs ----------------------------------------------------------------------------------

    async def list_images(self, message: api.ListImagesRequest) -> api.ListImagesResponse:
        wanted = message.filter.image.image if message.filter and message.filter.image else ""
        if wanted:
            try:
                images = [await self.resolve(wanted)]
            except NotFound:
                images = []
        else:
            images = await self.list()
        return api.ListImagesResponse(images=[i.to_cri() for i in images])

    async def image_status(self, message: api.ImageStatusRequest) -> api.ImageStatusResponse:
        ref = message.image.image if message.image is not None else ""
        try:
            image = await self.resolve(ref)
        except NotFound:
            return api.ImageStatusResponse()
        return api.ImageStatusResponse(image=image.to_cri(),
                                       info=verbose_info(image) if message.verbose else {})

    async def pull_image(self, message: api.PullImageRequest) -> api.PullImageResponse:
        if message.image is None or not message.image.image:
            raise InvalidArgument("image spec must be set with the image to pull")
        snapshotter = self.snapshotter_for(message.image, message.sandbox_config)
        image_id = await self.pull(message.image.image, auth=message.auth, snapshotter=snapshotter)
        return api.PullImageResponse(image_ref=image_id)

    async def remove_image(self, message: api.RemoveImageRequest) -> api.RemoveImageResponse:
        await self.remove(message.image.image if message.image is not None else "")
        return api.RemoveImageResponse()

    async def image_fs_info(self, message: api.ImageFsInfoRequest) -> api.ImageFsInfoResponse:
        return api.ImageFsInfoResponse(image_filesystems=await self.fs_usage())
