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
    actr run [--rm] [-t] [-d] [--runtime R] [--mount M]... [--env K=V]... IMAGE ID [ARGS ...]
    actr tasks ls | ps ID | exec --exec-id E [-t] ID ARGS... | kill [-s SIG] [--all] ID
               | pause ID | resume ID | metrics ID | delete [-f] ID | start ID
    actr containers ls [-q] | info [--spec] ID | rm ID ...
    actr events [FILTER ...]

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
from grpclib.exceptions import ProtocolError, StreamTerminatedError

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


def _quiet_protocol_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: a peer that does not speak HTTP/2 gRPC makes the
    connection fail (reported once, as an error of the command), not a traceback."""
    if "data_received() call failed" in str(context.get("message", "")):
        return
    loop.default_exception_handler(context)


def _run(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Run an async command with a connected Client as its first argument."""

    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(obj: dict[str, str], *args: Any, **kwargs: Any) -> Any:
        async def go() -> Any:
            asyncio.get_running_loop().set_exception_handler(_quiet_protocol_errors)
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
        except (StreamTerminatedError, ProtocolError) as e:
            # something listens there, but not a gRPC server (a ttrpc socket, say)
            raise click.ClickException(
                f"{obj['address']} does not answer the containerd API (gRPC): {e}") from None

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
    for line in _tab(rows, 1):
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



# -- containers, tasks, events (client side of the runtime) ---------------------------------------

def _tab(rows: list[list[str]], pad: int = 4) -> list[str]:
    """Columns as Go's tabwriter with ``padding`` spaces (ctr's ``tabwriter.NewWriter(…, 4, ' ')``)."""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
    return ["".join(c.ljust(w + pad) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]


def _print_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=4, default=str))


class _ForwardSignals:
    """Forward SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1/2 to a process (ctr's ForwardAllSignals)."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")

    def __init__(self, process: Any) -> None:
        import signal

        self.loop = asyncio.get_running_loop()
        self.pending: set[asyncio.Future[None]] = set()
        self.installed = []
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self.loop.add_signal_handler(sig, self._forward, process, int(sig))
            self.installed.append(sig)

    def _forward(self, process: Any, sig: int) -> None:
        async def send() -> None:
            try:
                await process.kill(sig)
            except ContainerdError:
                pass
        future = asyncio.ensure_future(send())
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)

    def close(self) -> None:
        for sig in self.installed:
            self.loop.remove_signal_handler(sig)


class _Console:
    """The local terminal in raw mode while a TTY process runs; its size follows SIGWINCH."""

    def __init__(self) -> None:
        import termios
        import tty

        self.fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd)

    def size(self) -> tuple[int, int]:
        cols, rows = os.get_terminal_size(self.fd)
        return cols, rows

    async def follow_resize(self, process: Any) -> Callable[[], None]:
        import signal

        loop = asyncio.get_running_loop()
        pending: set[asyncio.Future[None]] = set()

        def resize() -> None:
            async def send() -> None:
                try:
                    await process.resize(*self.size())
                except (ContainerdError, OSError):
                    pass
            future = asyncio.ensure_future(send())
            pending.add(future)
            future.add_done_callback(pending.discard)

        with_size = self.size()
        try:
            await process.resize(*with_size)
        except ContainerdError:
            pass
        loop.add_signal_handler(signal.SIGWINCH, resize)
        return lambda: loop.remove_signal_handler(signal.SIGWINCH)

    def reset(self) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def _io_for(tty: bool, null_io: bool, log_uri: str, fifo_dir: str | None, detach: bool) -> Any:
    from ..client import cio

    if null_io:
        return cio.null_io
    if log_uri:
        return cio.log_uri(log_uri if "://" in log_uri else "file://" + os.path.abspath(log_uri))
    if detach:
        return cio.null_io
    return cio.with_stdio(terminal=tty, fifo_dir=fifo_dir)


async def _attach_and_wait(process: Any, tty: bool, console: _Console | None) -> int:
    """Start ``process`` (wait registered first), forward signals or resizes, return its exit code."""
    waiter = asyncio.ensure_future(process.wait())
    try:
        await process.start()
    except BaseException:
        waiter.cancel()
        raise
    undo: Callable[[], None]
    if tty and console is not None:
        undo = await console.follow_resize(process)
    else:
        undo = _ForwardSignals(process).close
    try:
        status = await waiter
    finally:
        undo()
    return status.code


async def _run_process(create: Callable[[], Awaitable[Any]], tty: bool, detach: bool) -> int:
    """Create a task or exec'd process with ``create`` and run it as ``ctr`` does.

    Detached: start it and return 0. Attached: the local terminal (TTY processes) is raw
    while it runs; start, wait, delete it and return its exit code.
    """
    console = _Console() if tty and not detach and sys.stdin.isatty() else None
    try:
        process = await create()
        if detach:
            await process.start()
            return 0
        try:
            return await _attach_and_wait(process, tty, console)
        finally:
            await process.delete(force=True)
    finally:
        if console is not None:
            console.reset()


@main.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--rm", is_flag=True, help="Remove the container when the task exits.")
@click.option("--tty", "-t", is_flag=True, help="Allocate a TTY for the container.")
@click.option("--detach", "-d", is_flag=True, help="Start the task and return.")
@click.option("--runtime", default="io.containerd.runc.v2", show_default=True, help="Runtime name.")
@click.option("--snapshotter", default="overlayfs", show_default=True, help="Snapshotter of the rootfs.")
@click.option("--mount", "mounts", multiple=True,
              help="Add a mount: type=bind,src=/h,dst=/c,options=rbind:ro (repeatable).")
@click.option("--env", "env", multiple=True, help="Set K=V in the environment (repeatable).")
@click.option("--label", "labels", multiple=True, help="Container label k=v (repeatable).")
@click.option("--cwd", default="", help="Working directory of the process.")
@click.option("--net-host", is_flag=True, help="Use the host's network namespace.")
@click.option("--privileged", is_flag=True, help="All capabilities, all devices, no masked paths.")
@click.option("--null-io", is_flag=True, help="Send the task's stdio to /dev/null.")
@click.option("--log-uri", default="", help="Log the task's output to a URI (file:///…, binary:///…).")
@click.option("--fifo-dir", default=None, help="Folder for the stdio FIFOs.")
@click.argument("image")
@click.argument("id")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@_run
async def run(client: Client, rm: bool, tty: bool, detach: bool, runtime: str, snapshotter: str,
              mounts: tuple[str, ...], env: tuple[str, ...], labels: tuple[str, ...], cwd: str,
              net_host: bool, privileged: bool, null_io: bool, log_uri: str, fifo_dir: str | None,
              image: str, id: str, args: tuple[str, ...]) -> None:
    """Run ID from IMAGE (as ``ctr run``); exits with the container's exit status."""
    if rm and detach:
        raise click.UsageError("flags --detach and --rm cannot be specified together")
    container = await client.containers.new_container(
        id, image, snapshotter=snapshotter, runtime=runtime, args=list(args) or None, env=env,
        mounts=mounts, tty=tty, labels=_labels(labels), cwd=cwd, net_host=net_host, privileged=privileged)
    try:
        code = await _run_process(
            lambda: container.new_task(_io_for(tty, null_io, log_uri, fifo_dir, detach)), tty, detach)
    finally:
        if rm:
            await container.delete()
    if code:
        raise SystemExit(code)


@main.group()
def tasks() -> None:
    """Manage tasks (running containers)."""


main.add_command(tasks, name="task")
main.add_command(tasks, name="t")


@tasks.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="Print only task ids.")
@_run
async def tasks_ls(client: Client, quiet: bool) -> None:
    """List tasks: TASK, PID, STATUS."""
    items = await client.tasks.list()
    if quiet:
        for t in items:
            click.echo(t.id)
        return
    for line in _tab([["TASK", "PID", "STATUS"]] + [[t.id, str(t.pid), t.status] for t in items]):
        click.echo(line)


tasks.add_command(tasks_ls, name="list")


@tasks.command("ps")
@click.argument("id")
@_run
async def tasks_ps(client: Client, id: str) -> None:
    """The processes of task ID: PID, INFO."""
    task = await client.tasks.load(id)
    rows = [["PID", "INFO"]]
    for p in await task.pids():
        rows.append([str(p.pid), "-" if p.info is None else p.info.type_url])
    for line in _tab(rows, 4):
        click.echo(line)


@tasks.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--exec-id", required=True, help="Id of the new process.")
@click.option("--tty", "-t", is_flag=True, help="Allocate a TTY.")
@click.option("--detach", "-d", is_flag=True, help="Start the process and return.")
@click.option("--cwd", default="", help="Working directory of the process.")
@click.option("--env", "env", multiple=True, help="Set K=V in the environment (repeatable).")
@click.option("--user", "-u", default="", help="Run as UID[:GID].")
@click.option("--fifo-dir", default=None, help="Folder for the stdio FIFOs.")
@click.argument("id")
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
@_run
async def tasks_exec(client: Client, exec_id: str, tty: bool, detach: bool, cwd: str, env: tuple[str, ...],
                     user: str, fifo_dir: str | None, id: str, args: tuple[str, ...]) -> None:
    """Run ARGS in task ID (as ``ctr task exec``); exits with the process's exit status."""
    from .. import oci

    container = await client.containers.get(id)
    spec = await container.spec()
    process = dict(spec.get("process") or {})
    process["args"] = list(args)
    process["terminal"] = tty
    process.pop("consoleSize", None)
    if cwd:
        process["cwd"] = cwd
    if env:
        process["env"] = oci.replace_or_append_env(process.get("env") or [], env)
    if user:
        uid, _, gid = user.partition(":")
        process["user"] = {**process.get("user", {}), "uid": int(uid), "gid": int(gid or 0)}
    task = await client.tasks.load(id)
    code = await _run_process(
        lambda: task.exec(exec_id, process, _io_for(tty, False, "", fifo_dir, detach)), tty, detach)
    if code:
        raise SystemExit(code)


@tasks.command("start")
@click.option("--null-io", is_flag=True, help="Send the task's stdio to /dev/null.")
@click.option("--detach", "-d", is_flag=True, help="Start the task and return.")
@click.argument("id")
@_run
async def tasks_start(client: Client, null_io: bool, detach: bool, id: str) -> None:
    """Create and start the task of container ID."""
    container = await client.containers.get(id)
    spec = await container.spec()
    tty = bool((spec.get("process") or {}).get("terminal"))
    code = await _run_process(
        lambda: container.new_task(_io_for(tty, null_io, "", None, detach)), tty, detach)
    if code:
        raise SystemExit(code)


@tasks.command("kill")
@click.option("--signal", "-s", "sig", default="SIGTERM", show_default=True, help="Signal to send.")
@click.option("--all", "-a", "all_", is_flag=True, help="Send it to every process of the task.")
@click.option("--exec-id", default="", help="Signal this exec'd process instead.")
@click.argument("ids", nargs=-1, required=True)
@_run
async def tasks_kill(client: Client, sig: str, all_: bool, exec_id: str, ids: tuple[str, ...]) -> None:
    """Signal the tasks IDS."""
    from ..client.tasks import _signal

    try:
        number = _signal(sig)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if all_ and exec_id:
        raise click.UsageError("specify an exec-id or --all, not both")
    for id in ids:
        task = await client.tasks.load(id)
        process = await task.load_process(exec_id) if exec_id else task
        await process.kill(number, all=all_)


@tasks.command("pause")
@click.argument("id")
@_run
async def tasks_pause(client: Client, id: str) -> None:
    """Freeze task ID."""
    await (await client.tasks.load(id)).pause()


@tasks.command("resume")
@click.argument("id")
@_run
async def tasks_resume(client: Client, id: str) -> None:
    """Thaw task ID."""
    await (await client.tasks.load(id)).resume()


def _metric_rows(data: Any) -> list[list[str]]:
    """ctr's METRIC/VALUE rows for cgroup v1 or v2 metrics."""
    def get(obj: Any, *path: str) -> Any:
        for name in path:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj

    rows: list[list[str]] = []

    def add(name: str, *path: str) -> None:
        value = get(data, *path)
        if value is not None:
            rows.append([name, f"[{' '.join(map(str, value))}]" if isinstance(value, list) else str(value)])

    if get(data, "memory", "usage") is not None and not isinstance(get(data, "memory", "usage"), int):
        add("memory.usage_in_bytes", "memory", "usage", "usage")
        add("memory.limit_in_bytes", "memory", "usage", "limit")
        add("memory.stat.cache", "memory", "total_cache")
        add("cpuacct.usage", "cpu", "usage", "total")
        add("cpuacct.usage_percpu", "cpu", "usage", "per_cpu")
        add("pids.current", "pids", "current")
        add("pids.limit", "pids", "limit")
    else:
        add("pids.current", "pids", "current")
        add("pids.limit", "pids", "limit")
        for name in ("usage_usec", "user_usec", "system_usec", "nr_periods", "nr_throttled",
                     "throttled_usec"):
            add(f"cpu.{name}", "cpu", name)
        add("memory.usage", "memory", "usage")
        add("memory.usage_limit", "memory", "usage_limit")
        add("memory.swap_usage", "memory", "swap_usage")
        add("memory.swap_limit", "memory", "swap_limit")
    return rows


@tasks.command("metrics")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.argument("id")
@_run
async def tasks_metrics(client: Client, fmt: str, id: str) -> None:
    """Cgroup metrics of task ID (as ``ctr task metrics``)."""
    import contextlib
    import datetime

    from ..client.events import decode

    with contextlib.suppress(ImportError):  # registers the cgroup metrics types for decode
        from ..api.io.containerd.cgroups import v1 as _v1  # noqa: F401
        from ..api.io.containerd.cgroups import v2 as _v2  # noqa: F401
    task = await client.tasks.load(id)
    metric = await task.metrics()
    data = decode(metric.data)
    if fmt == "json":
        from ..api.google import protobuf as pb

        _print_json(data.to_dict() if data is not None and not isinstance(data, pb.Any) else
                    {"type_url": getattr(data, "type_url", "")})
        return
    ts = metric.timestamp
    when = "" if ts is None else (datetime.datetime.fromtimestamp(ts.seconds, datetime.UTC)
                                  .strftime("%Y-%m-%d %H:%M:%S") + f".{ts.nanos:09d} +0000 UTC")
    for line in _tab([["ID", "TIMESTAMP"], [metric.id, when]]):
        click.echo(line)
    click.echo("")
    for line in _tab([["METRIC", "VALUE"], *_metric_rows(data)]):
        click.echo(line)


@tasks.command("delete")
@click.option("--force", "-f", is_flag=True, help="Kill the task first.")
@click.option("--exec-id", default="", help="Delete this exec'd process instead.")
@click.argument("ids", nargs=-1, required=True)
@_run
async def tasks_delete(client: Client, force: bool, exec_id: str, ids: tuple[str, ...]) -> None:
    """Delete stopped tasks (or one exec'd process); prints nothing, like ctr."""
    for id in ids:
        task = await client.tasks.load(id)
        process = await task.load_process(exec_id) if exec_id else task
        await process.delete(force=force)


tasks.add_command(tasks_delete, name="rm")


@main.group()
def containers() -> None:
    """Manage container records."""


main.add_command(containers, name="container")
main.add_command(containers, name="c")


@containers.command("ls")
@click.option("--quiet", "-q", is_flag=True, help="Print only container ids.")
@click.argument("filters", nargs=-1)
@_run
async def containers_ls(client: Client, quiet: bool, filters: tuple[str, ...]) -> None:
    """List containers: CONTAINER, IMAGE, RUNTIME."""
    items = await client.containers.list(*filters)
    if quiet:
        for c in items:
            click.echo(c.id)
        return
    rows = [["CONTAINER", "IMAGE", "RUNTIME"]]
    rows += [[c.id, c.record.image or "-", c.record.runtime] for c in items]
    for line in _tab(rows):
        click.echo(line)


containers.add_command(containers_ls, name="list")


@containers.command("info")
@click.option("--spec", "spec_only", is_flag=True, help="Only print the runtime spec.")
@click.argument("id")
@_run
async def containers_info(client: Client, spec_only: bool, id: str) -> None:
    """The record of container ID as JSON (spec decoded)."""
    info = await client.containers.info(id)
    if spec_only:
        _print_json(info.spec)
        return
    _print_json(info.to_json())


@containers.command("rm")
@click.option("--keep-snapshot", is_flag=True, help="Keep the container's snapshot.")
@click.argument("ids", nargs=-1, required=True)
@_run
async def containers_rm(client: Client, keep_snapshot: bool, ids: tuple[str, ...]) -> None:
    """Delete containers (and their snapshots); a stopped or created task is deleted first."""
    failed = False
    for id in ids:
        try:
            container = await client.containers.get(id)
            try:
                task = await container.task()
            except NotFound:
                task = None
            if task is not None:
                status = await task.status()
                if status.status not in ("STOPPED", "CREATED"):
                    raise ContainerdError(f"cannot delete a non stopped container: {status.status.lower()}")
                await task.delete(force=status.status == "CREATED")
            await container.delete(cleanup_snapshot=not keep_snapshot)
        except ContainerdError as e:
            failed = True
            click.echo(f"actr: failed to delete container {id!r}: {e.message}", err=True)
    if failed:
        raise SystemExit(1)


containers.add_command(containers_rm, name="delete")


@main.command()
@click.argument("filters", nargs=-1)
@_run
async def events(client: Client, filters: tuple[str, ...]) -> None:
    """Print events as they happen: TIMESTAMP NAMESPACE TOPIC EVENT-JSON (as ``ctr events``)."""
    import json

    from ..api.google import protobuf as pb

    async with client.events.subscribe(*filters) as stream:
        async for e in stream:
            if e.event is None or isinstance(e.event, pb.Any):
                body = "{}" if e.event is None else json.dumps({"type_url": e.event.type_url})
            else:
                try:
                    body = json.dumps(e.event.to_dict(), separators=(",", ":"))
                except TypeError:   # it holds an Any of a type this client does not know
                    body = json.dumps({"event": type(e.event).__name__})
            when = e.timestamp.strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC") if e.timestamp else ""
            click.echo(f"{when} {e.namespace} {e.topic} {body}")


if __name__ == "__main__":
    main()
