"""``aiocontainerd``: run the daemon, or print its default config.

    aiocontainerd [--config F] [--root D] [--state D] [--address A] [--log-level L]
    aiocontainerd config default
    aiocontainerd config validate F

Without ``--config``, ``/etc/aiocontainerd/config.toml`` is read if it exists
(containerd reads ``/etc/containerd/config.toml`` the same way). Flags override
the config file. SIGTERM and SIGINT stop the daemon cleanly.
Exit status: 0 after a clean stop, 1 when the config is invalid or start-up fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys

import click

from .. import builtins, log
from ..config import Config, ConfigError, dump, load
from ..daemon import Daemon, StartError
from ..metadata import SchemaError
from ..plugin import PluginError

logger = logging.getLogger("aiocontainerd")
DEFAULT_CONFIG = "/etc/aiocontainerd/config.toml"


async def _serve(config: Config) -> None:
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    try:
        await stop.wait()
        logger.info("received signal, shutting down")
    finally:
        await daemon.stop()
    logger.info("aiocontainerd stopped")


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
              help=f"TOML config file (containerd version-3 shape) [default: {DEFAULT_CONFIG} if it exists].")
@click.option("--root", help="Persistent data folder (overrides config 'root').")
@click.option("--state", help="Runtime state folder (overrides config 'state').")
@click.option("--address", "-a", help="gRPC unix socket path (overrides [grpc] address).")
@click.option("--log-level", "-l", type=click.Choice(sorted(log.LEVELS)),
              help="Log level (overrides [debug] level).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, root: str | None, state: str | None,
         address: str | None, log_level: str | None) -> None:
    """aiocontainerd: containerd re-made in Python on one asyncio event loop."""
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None and os.path.exists(DEFAULT_CONFIG):
        config_path = DEFAULT_CONFIG
    try:
        config = load(config_path, builtins.config_types())
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if root:
        config.root = root
    if state:
        config.state = state
    if address:
        config.grpc = dataclasses.replace(config.grpc, address=address)
    if log_level:
        config.debug = dataclasses.replace(config.debug, level=log_level)
    log.setup(config.debug.level, config.debug.format)
    try:
        asyncio.run(_serve(config))
    except (StartError, PluginError, SchemaError) as e:
        logger.critical(str(e))
        raise click.ClickException(str(e)) from None
    except Exception as e:  # a plugin's unexpected failure during start
        logger.critical("daemon failed", exc_info=True)
        raise click.ClickException(str(e)) from None


@main.group()
def config() -> None:
    """Configuration helpers."""


@config.command("default")
def config_default() -> None:
    """Print the complete default configuration as TOML."""
    click.echo(dump(Config(), builtins.config_types()), nl=False)


@config.command("validate")
@click.argument("path", type=click.Path(dir_okay=False))
def config_validate(path: str) -> None:
    """Check a config file (and its imports); print nothing and exit 0 when valid."""
    try:
        load(path, builtins.config_types())
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
