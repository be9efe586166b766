"""``actr``: aiocontainerd's client CLI (verbs grow with each service).

    actr [--address A] [--namespace N] version
    actr namespaces create NAME [k=v ...] | ls [-q] | label NAME [k=v ...] | rm NAME ...
    actr plugins ls [FILTER ...]
    actr images pull REF [--platform P]... [--all-platforms] [--plain-http] [--user U[:P]]
                     [--snapshotter S] [--no-unpack]
                | mount REF DIR [--snapshotter S] [--rw] | unmount DIR
                | push REF [LOCAL] [--platform P]... [--plain-http] [--user U[:P]]
                | import FILE|- [--base-name B] [--all-platforms] [--platform P]
                | export FILE|- NAME ... [--platform P]... [--all-platforms]
                | ls [-q] [FILTER ...] | tag [--force] SRC DST ... | rm [--sync] NAME ...

Defaults: ``--address`` from ``$CONTAINERD_ADDRESS`` or aiocontainerd's socket,
``--namespace`` from ``$CONTAINERD_NAMESPACE`` or ``default``.
Errors print ``actr: <message>`` and exit 1. Transfers (pull, push, import,
export) run in the daemon through the Transfer service, as containerd 2.x's
``ctr`` does; their progress goes to stderr (bars per blob on a terminal).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from ..client import Client, _call
from ..client.images import Progress
from ..config import DEFAULT_ADDRESS
from ..errors import ContainerdError, NotFound
from ..services.context import NAMESPACE_HEADER


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = value
    return out


def _run(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Run an async command with a connected Client as its first argument."""

    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(obj: dict[str, str], *args: Any, **kwargs: Any) -> Any:
        async def go() -> Any:
            async with Client(obj["address"], namespace=obj["namespace"]) as client:
                return await fn(client, *args, **kwargs)

        try:
            return asyncio.run(go())
        except ContainerdError as e:
            raise click.ClickException(e.message) from None
        except BrokenPipeError:  # our output was closed (| head): not the daemon's fault
            sys.stderr.close()
            raise SystemExit(0) from None
        except (ConnectionError, FileNotFoundError) as e:
            raise click.ClickException(f"cannot connect to {obj['address']}: {e}") from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--address", "-a", envvar="CONTAINERD_ADDRESS", default=DEFAULT_ADDRESS,
              show_default=True, help="containerd API socket.")
@click.option("--namespace", "-n", envvar="CONTAINERD_NAMESPACE", default="default",
              show_default=True, help="Namespace of namespaced calls.")
@click.pass_context
def main(ctx: click.Context, address: str, namespace: str) -> None:
    """Client for aiocontainerd (and containerd)."""
    ctx.obj = {"address": address, "namespace": namespace}


@main.command()
@_run
async def version(client: Client) -> None:
    """Print the server's version and revision."""
    v = await client.version()
    s = await client.server()
    click.echo(f"Server:\n  Version:  {v.version}\n  Revision: {v.revision}\n  UUID: {s.uuid}")


@main.group(name="namespaces")
def namespaces() -> None:
    """Manage namespaces."""


main.add_command(namespaces, name="ns")


@namespaces.command("create")
@click.argument("name")
@click.argument("labels", nargs=-1)
@_run
async def ns_create(client: Client, name: str, labels: tuple[str, ...]) -> None:
    """Create NAME with labels k=v."""
    await client.namespaces.create(name, _labels(labels))


@namespaces.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="Print only names.")
@_run
async def ns_ls(client: Client, quiet: bool) -> None:
    """List namespaces and their labels."""
    items = await client.namespaces.list()
    if not quiet:
        click.echo(f"{'NAME':<20} LABELS")
    for ns in items:
        if quiet:
            click.echo(ns.name)
        else:
            labels = ",".join(f"{k}={v}" for k, v in sorted(ns.labels.items()))
            click.echo(f"{ns.name:<20} {labels}")


@namespaces.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1)
@_run
async def ns_label(client: Client, name: str, labels: tuple[str, ...]) -> None:
    """Set labels k=v on NAME (k= removes k)."""
    for key, value in _labels(labels).items():
        await client.namespaces.set_label(name, key, value)


@namespaces.command("rm")
@click.argument("names", nargs=-1, required=True)
@_run
async def ns_rm(client: Client, names: tuple[str, ...]) -> None:
    """Remove empty namespaces."""
    for name in names:
        await client.namespaces.delete(name)
        click.echo(name)


@main.group()
def plugins() -> None:
    """Inspect the daemon's plugins."""


@plugins.command("ls")
@click.argument("filters", nargs=-1)
@_run
async def plugins_ls(client: Client, filters: tuple[str, ...]) -> None:
    """List plugins, their platforms and status (filters: containerd syntax)."""
    items = await client.plugins(filters)
    click.echo(f"{'TYPE':<30} {'ID':<22} {'PLATFORMS':<14} STATUS")
    for p in items:
        click.echo(f"{p.type:<30} {p.id:<22} {','.join(p.platforms) or '-':<14} {p.status}")



# -- images -------------------------------------------------------------------------------------

def human_bytes(n: float) -> str:
    """Bytes as ctr prints them (``progress.Bytes``): ``714.0 B``, ``2.1 MiB``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:02.1f} {units[i]}"


def _table(rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell plus one space (ctr's tabwriter)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [" ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _display_name(name: str) -> str:
    """``layer-sha256:<hex>`` as ``layer (<12 hex>)``, as ctr shows blob refs."""
    parts = []
    for part in name.split("-"):
        if part.startswith("sha256:") and len(part) == 71:
            part = f"({part[7:19]})"
        parts.append(part)
    return " ".join(parts)


class _ProgressView:
    """Transfer progress on stderr, with ``rich``: on a terminal, one bar per blob indented
    under its manifest or index and status lines above; otherwise one line per status and per
    finished blob."""

    FINAL = ("complete", "already exists", "extracted")
    HEADERS = ("fetching image content", "pushing content", "pushed content", "saved")

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, TextColumn
        from rich.progress import Progress as Bars

        self.console = Console(stderr=True, highlight=False)
        self.live = self.console.is_terminal
        self.bars = Bars(TextColumn("{task.description}"), TextColumn("{task.fields[event]:<14}"),
                         BarColumn(bar_width=30), DownloadColumn(binary_units=True),
                         console=self.console, transient=False, disable=not self.live)
        self.tasks: dict[str, Any] = {}
        self.parents: dict[str, tuple[str, ...]] = {}
        self.roots: set[str] = set()

    def __enter__(self) -> _ProgressView:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def _depth(self, name: str, seen: frozenset[str] = frozenset()) -> int:
        parents = [p for p in self.parents.get(name, ()) if p in self.parents and p not in seen]
        if not parents:
            return 0
        return 1 + max(self._depth(p, seen | {name}) for p in parents)

    def _label(self, name: str) -> str:
        label = "  " * self._depth(name) + _display_name(name)
        return f"{label:<40.40}"

    def __call__(self, p: Progress) -> None:
        if not p.name:
            self.console.print(p.event)
            return
        if p.event in self.HEADERS or p.desc is None:
            self.roots.add(p.name)
            self.console.print(f"{p.name}: {p.event}")
            return
        known = p.name in self.parents
        self.parents[p.name] = tuple(x for x in p.parents if x not in self.roots)
        final = p.event in self.FINAL
        if not self.live:
            if final:
                self.console.print(f"{self._label(p.name)} {p.event:<14} {human_bytes(p.total)}")
            return
        if not known:
            for name, task in self.tasks.items():  # a parent may arrive after its children
                self.bars.update(task, description=self._label(name))
            self.tasks[p.name] = self.bars.add_task(self._label(p.name), total=p.total or None,
                                                    event=p.event)
        self.bars.update(self.tasks[p.name], completed=p.total if final else p.progress,
                         total=p.total or None, event=p.event)


def _credentials(user: str | None) -> tuple[str, str] | None:
    """``--user name[:secret]`` (the secret is asked for when missing), as ctr takes it."""
    if not user:
        return None
    name, sep, secret = user.partition(":")
    if not sep:
        secret = click.prompt("Password", hide_input=True, err=True)
    return name, secret


@main.group()
def images() -> None:
    """Pull, push, import, export and manage images (done by the daemon)."""


main.add_command(images, name="image")
main.add_command(images, name="i")


@images.command("pull")
@click.argument("ref")
@click.option("--platform", "platforms", multiple=True, help="Pull content for PLATFORM (repeatable).")
@click.option("--all-platforms", is_flag=True, help="Pull content for every platform.")
@click.option("--plain-http", is_flag=True, help="Talk to the registry over plain HTTP.")
@click.option("--user", "-u", help="Registry credentials, USER[:PASSWORD].")
@click.option("--snapshotter", default="overlayfs", show_default=True,
              help="Unpack into this snapshotter.")
@click.option("--no-unpack", is_flag=True, help="Fetch the content only.")
@_run
async def images_pull(client: Client, ref: str, platforms: tuple[str, ...], all_platforms: bool,
                      plain_http: bool, user: str | None, snapshotter: str, no_unpack: bool) -> None:
    """Pull REF into the daemon (and unpack it), then print its digest."""
    if platforms and all_platforms:
        raise click.UsageError("cannot specify both --platform and --all-platforms")
    with _ProgressView() as view:
        image = await client.images.pull(ref, platforms=platforms, all_platforms=all_platforms,
                                         plain_http=plain_http, credentials=_credentials(user),
                                         progress=view, snapshotter="" if no_unpack else snapshotter)
    click.echo(f"image: {image.name}")
    click.echo(f"digest: {image.target.digest}")


@images.command("mount")
@click.argument("ref")
@click.argument("target", type=click.Path(file_okay=False))
@click.option("--snapshotter", default="overlayfs", show_default=True, help="Snapshotter to use.")
@click.option("--platform", default="", help="Mount this platform's layers (default: the host's).")
@click.option("--rw", is_flag=True, help="A writable snapshot instead of a read-only view.")
@_run
async def images_mount(client: Client, ref: str, target: str, snapshotter: str, platform: str,
                       rw: bool) -> None:
    """Mount the unpacked image REF on TARGET (the snapshot key is TARGET's absolute path)."""
    from ..api.containerd.services.snapshots import v1 as snapshots_api
    from ..client.images import image_chain_id
    from ..mount import Mount
    from ..mount.mounting import mount_all

    target = os.path.abspath(target)  # noqa: ASYNC240 - a CLI, not the daemon's loop
    chain = await image_chain_id(client.images, ref, platform)
    stub = snapshots_api.SnapshotsStub(client._channel, metadata={NAMESPACE_HEADER: client.namespace})
    labels = {"containerd.io/gc.root": "actr images mount"}  # kept until unmount removes it
    if rw:
        reply = await _call(stub.prepare(snapshots_api.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=target, parent=chain, labels=labels)))
    else:
        reply = await _call(stub.view(snapshots_api.ViewSnapshotRequest(
            snapshotter=snapshotter, key=target, parent=chain, labels=labels)))
    os.makedirs(target, exist_ok=True)
    mounts = [Mount(m.type, m.source, tuple(m.options), m.target) for m in reply.mounts]
    try:
        await mount_all(mounts, target)
    except OSError:
        await _call(stub.remove(snapshots_api.RemoveSnapshotRequest(snapshotter=snapshotter, key=target)))
        raise
    click.echo(target)


@images.command("unmount")
@click.argument("target", type=click.Path(file_okay=False))
@click.option("--snapshotter", default="overlayfs", show_default=True, help="Snapshotter used.")
@_run
async def images_unmount(client: Client, target: str, snapshotter: str) -> None:
    """Unmount TARGET and remove its snapshot."""
    from ..api.containerd.services.snapshots import v1 as snapshots_api
    from ..mount.mounting import is_mountpoint, unmount

    target = os.path.abspath(target)  # noqa: ASYNC240 - a CLI, not the daemon's loop
    if is_mountpoint(target):
        await unmount(target, recursive=True)
    stub = snapshots_api.SnapshotsStub(client._channel, metadata={NAMESPACE_HEADER: client.namespace})
    await _call(stub.remove(snapshots_api.RemoveSnapshotRequest(snapshotter=snapshotter, key=target)))
    click.echo(target)


@images.command("push")
@click.argument("ref")
@click.argument("local", required=False)
@click.option("--platform", "platforms", multiple=True, help="Push only PLATFORM's manifests.")
@click.option("--plain-http", is_flag=True, help="Talk to the registry over plain HTTP.")
@click.option("--user", "-u", help="Registry credentials, USER[:PASSWORD].")
@_run
async def images_push(client: Client, ref: str, local: str | None, platforms: tuple[str, ...],
                      plain_http: bool, user: str | None) -> None:
    """Push the image LOCAL (default: REF) to REF."""
    image = await client.images.get(local or ref)
    with _ProgressView() as view:
        await client.images.push(local or ref, ref, platforms=platforms, plain_http=plain_http,
                                 credentials=_credentials(user), progress=view)
    click.echo(f"pushed: {ref}")
    click.echo(f"digest: {image.target.digest}")


@images.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="Print only image names.")
@click.argument("filters", nargs=-1)
@_run
async def images_ls(client: Client, quiet: bool, filters: tuple[str, ...]) -> None:
    """List images, optionally filtered (containerd syntax: name~=busybox)."""
    items = await client.images.list(filters)
    if quiet:
        for image in items:
            click.echo(image.name)
        return
    rows = [["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]]
    for image in items:
        try:
            size = await client.images.size(image)
        except ContainerdError:
            size = 0
        found = await client.images.platforms(image)
        labels = ",".join(f"{k}={v}" for k, v in sorted(image.labels.items())) or "-"
        rows.append([image.name, image.target.media_type, image.target.digest, human_bytes(size),
                     ",".join(found) or "-", labels])
    for line in _table(rows):
        click.echo(line)


@images.command("tag")
@click.option("--force", is_flag=True, help="Replace existing images of those names.")
@click.argument("source")
@click.argument("targets", nargs=-1, required=True)
@_run
async def images_tag(client: Client, force: bool, source: str, targets: tuple[str, ...]) -> None:
    """Name SOURCE's target TARGET too."""
    for target in targets:
        await client.images.tag(source, target, force=force)
        click.echo(target)


@images.command("rm")
@click.option("--sync", is_flag=True, help="Remove the content the images held before returning.")
@click.argument("names", nargs=-1, required=True)
@_run
async def images_rm(client: Client, sync: bool, names: tuple[str, ...]) -> None:
    """Remove images by name."""
    missing = []
    for name in names:
        try:
            await client.images.delete(name, sync=sync)
        except NotFound:
            missing.append(name)
            click.echo(f"actr: {name}: image not found", err=True)
            continue
        click.echo(name)
    if missing:
        raise SystemExit(1)


@images.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--base-name", default="", help="Name tag-only images of the archive BASE-NAME:<tag>.")
@click.option("--all-platforms", is_flag=True, help="Import content for every platform.")
@click.option("--platform", default="", help="Import content for PLATFORM.")
@_run
async def images_import(client: Client, file: str, base_name: str, all_platforms: bool,
                        platform: str) -> None:
    """Import an OCI layout or docker save tar (FILE, or - for stdin)."""
    source: Any = sys.stdin.buffer if file == "-" else file
    with _ProgressView() as view:
        saved = await client.images.import_archive(
            source, base_name=base_name, all_platforms=all_platforms,
            platforms=[platform] if platform else (), progress=view)
    for image in saved:
        click.echo(f"{image.name} {image.target.digest}")


@images.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.argument("names", nargs=-1, required=True)
@click.option("--platform", "platforms", multiple=True, help="Export PLATFORM's content (repeatable).")
@click.option("--all-platforms", is_flag=True, help="Export content for every platform.")
@_run
async def images_export(client: Client, file: str, names: tuple[str, ...],
                        platforms: tuple[str, ...], all_platforms: bool) -> None:
    """Export images as an OCI layout tar to FILE (- for stdout)."""
    out: Any = sys.stdout.buffer if file == "-" else file
    await client.images.export_archive(out, names, platforms=platforms, all_platforms=all_platforms)


if __name__ == "__main__":
    main()
