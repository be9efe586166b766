"""``actr``: aiocontainerd's client CLI (verbs grow with each service).

    actr [--address A] [--namespace N] version
    actr namespaces create NAME [k=v ...] | ls [-q] | label NAME [k=v ...] | rm NAME ...
    actr plugins ls [FILTER ...]

Defaults: ``--address`` from ``$CONTAINERD_ADDRESS`` or aiocontainerd's socket,
``--namespace`` from ``$CONTAINERD_NAMESPACE`` or ``default``.
Errors print ``actr: <message>`` and exit 1.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from ..client import Client
from ..config import DEFAULT_ADDRESS
from ..errors import ContainerdError


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


if __name__ == "__main__":
    main()
