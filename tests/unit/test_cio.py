"""Client-side task I/O: FIFO sets and copying, with a fake shim on the other ends."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from aiocontainerd.client import cio
from aiocontainerd.errors import InvalidArgument


def test_fifo_set_layout(tmp_path: Path) -> None:
    fifos = cio.new_fifo_set("c1", fifo_dir=str(tmp_path))
    c = fifos.config
    assert Path(c.stdin).name == "c1-stdin" and Path(c.stdout).name == "c1-stdout"
    assert Path(c.stderr).name == "c1-stderr"
    assert os.path.dirname(c.stdin) == fifos.dir and os.path.dirname(fifos.dir) == str(tmp_path)
    for path in (c.stdin, c.stdout, c.stderr):
        assert stat.S_ISFIFO(os.stat(path).st_mode)
    fifos.remove()
    assert not os.path.exists(fifos.dir)
    tty = cio.new_fifo_set("c2", stdin=False, terminal=True, fifo_dir=str(tmp_path))
    assert (tty.config.stdin, tty.config.stderr, tty.config.terminal) == ("", "", True)
    tty.remove()


async def test_null_io_and_log_uri() -> None:
    io = await cio.null_io("x")
    assert io.config == cio.Config()
    io = await cio.log_uri("file:///var/log/x.log")("x")
    assert io.config.stdout == io.config.stderr == "file:///var/log/x.log"
    with pytest.raises(InvalidArgument):
        cio.log_uri("relative.log")


def _shim_side(config: cio.Config, out: bytes, err: bytes) -> bytes:
    """What a shim does: open its ends (stdin for reading, outputs for writing), copy, close."""
    fin = os.open(config.stdin, os.O_RDONLY)
    fout = os.open(config.stdout, os.O_WRONLY)
    ferr = os.open(config.stderr, os.O_WRONLY)
    os.write(fout, out)
    os.write(ferr, err)
    os.close(fout)
    os.close(ferr)
    got = b""
    while chunk := os.read(fin, 4096):
        got += chunk
    os.close(fin)
    return got


async def test_streams_are_copied_both_ways(tmp_path: Path) -> None:
    out, err = bytearray(), []

    async def on_err(data: bytes) -> None:
        err.append(data)

    big = os.urandom(300_000)
    io = await cio.with_streams(stdin=big, stdout=out.extend, stderr=on_err, fifo_dir=str(tmp_path))("p1")
    got = await asyncio.wait_for(asyncio.to_thread(_shim_side, io.config, b"hello", b"oops"), 10)
    await asyncio.wait_for(io.wait(), 10)
    assert io.stdin_done is not None
    await asyncio.wait_for(io.stdin_done, 10)
    assert got == big
    assert bytes(out) == b"hello" and b"".join(err) == b"oops"
    await io.close()
    assert os.listdir(tmp_path) == []


async def test_output_without_sink_is_drained_and_cancel_releases(tmp_path: Path) -> None:
    io = await cio.with_streams(stdout=bytearray().extend, fifo_dir=str(tmp_path))("p2")
    assert io.config.stdin == "" and io.config.stderr  # both outputs exist for the shim
    # the shim never opens its ends (the task was not created): cancel, close, nothing hangs
    await asyncio.wait_for(io.cancel(), 10)
    await asyncio.wait_for(io.wait(), 10)
    await asyncio.wait_for(io.close(), 10)
    assert os.listdir(tmp_path) == []


async def test_stdin_from_a_stream_reader(tmp_path: Path) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"abc")
    reader.feed_eof()
    io = await cio.with_streams(stdin=reader, stdout=bytearray().extend, fifo_dir=str(tmp_path))("p3")
    got = await asyncio.wait_for(asyncio.to_thread(_shim_side, io.config, b"", b""), 10)
    assert got == b"abc"
    await io.close()
