"""Benchmarks: aiocontainerd against Debian's containerd 1.6, side by side on this machine.

Not part of the test suite (pytest skips this folder; nothing here asserts a
time). Run from the repo root::

    python -m tests.bench [--runs 10] [--json PATH] [--only TEXT] [--keep]
    tox -e bench -- --runs 10

How a run goes (see /work/shared/BENCHMARKING.md for why):

* every daemon start gets fresh ``root``/``state`` folders and its own socket
  under one temporary folder (``$TMPDIR/acbench-*``); nothing is deleted while
  the series runs, the whole folder goes at the end (``--keep`` keeps it,
  with each daemon's log);
* one unrecorded warm-up start of each daemon, then ``--runs`` rounds, each
  round starting aiocontainerd then containerd (A B A B ...), each stopped with
  SIGTERM once its scenarios are done;
* both are driven by the same client (:class:`aiocontainerd.Client`, or the
  real ``ctr`` through :meth:`~tests.bench.daemons.Running.ctr`);
* the table and ``tests/bench/results/latest.json`` (git-ignored) give per
  scenario the median (and other stats a scenario asks for) of each daemon and
  the ratio aiocontainerd/containerd: below 1 means aiocontainerd is better,
  except on rows marked "higher is better" (throughputs, MB/s), where above 1
  means aiocontainerd is better;
* what the whole series shares is set up once before the warm-up and torn down
  after the last round (:mod:`tests.bench.fixtures`): today a real
  ``docker-registry`` on loopback holding a 500 MiB, 7-layer gzip image and/or
  a 1.5 GB real-files image in gzip and zstd (built once, cached in
  ``tests/bench/results/cache/``), started only when a selected scenario needs it.

The pull scenarios (``--only fetch``; each run a fresh daemon that downloads
all ~317 MB compressed from that registry), three rows each from one
measurement: seconds (median, p90), MB/s = compressed bytes / seconds (median,
p10 = the slow tail; higher is better) and the daemon's peak VmRSS sampled
every 50 ms during the fetch (median, max):

* ``fetch 500 MB image, ctr content fetch``: the real ``ctr --debug content
  fetch --plain-http`` on both daemons (``--debug`` turns the progress display
  off, which rounds each fetch up to its 100 ms ticker and polls the daemon);
  ctr downloads, the daemon stores through Content.Write (1 MiB messages, one
  round trip each);
* ``fetch 500 MB image, daemon-side pull [containerd: ctr fetch]``:
  aiocontainerd pulls itself (``Client.images.pull`` if the client has it, else
  a raw Transfer.Transfer call OCIRegistry -> ImageStore without unpack; n/a if
  neither exists); containerd 1.6 has no Transfer service, so its column is its
  fastest equivalent, ``ctr content fetch``.

The pull+unpack scenarios (``--only unpack``) use a second image in the same
registry (fixture ``USR_IMAGE``, :mod:`tests.bench.usrimage`): 7 layers of this
host's real files (``/usr/bin``, ``/usr/lib/llvm-14``, ... ``/var/lib/dpkg``;
about 1.57 GB of tar, 52 000 entries), once gzip (level 6) and once zstd
(level 3), same diff IDs; built once (about a minute) and cached in
``tests/bench/results/cache/usr-*``. Each run is a fresh daemon that
downloads and unpacks everything into overlayfs. Four rows per measurement:
seconds (median, p90), MB/s of *uncompressed* bytes (higher is better),
daemon peak RSS, and the mounts found under the daemon's folder when the pull
returned (unmounted then; each daemon's ``TMPDIR`` is its run folder, so its
temporary apply mounts count too). After the clock stops, every layer's chain
ID must be a committed snapshot with the layer's inode count (Snapshots.Usage):

* ``pull+unpack 1 GB gzip image, ctr images pull`` and ``... zstd ...``: the
  real ``ctr --debug images pull --plain-http`` on both daemons (client-side
  fetch through Content.Write, then per layer Snapshots.Prepare, Diff.Apply,
  Snapshots.Commit);
* ``pull+unpack 1 GB gzip image, daemon-side pull [containerd: ctr images pull]``:
  aiocontainerd pulls and unpacks itself (``Client.images.pull(ref,
  plain_http=True, snapshotter="overlayfs")``, or the raw Transfer call with
  an ImageStore ``unpacks`` entry; n/a if the daemon does not unpack);
  containerd 1.6's column is ``ctr images pull`` again.

Adding a scenario (in :mod:`tests.bench.scenarios`)::

    async def pull_busybox(run: Running) -> float:
        \"\"\"Seconds for ``ctr images pull`` of busybox from the local registry.\"\"\"
        t0 = time.perf_counter()
        await run.ctr("images", "pull", REF)
        return time.perf_counter() - t0

    SCENARIOS.append(Scenario("pull busybox", "s", pull_busybox, group="images"))

A scenario is an ``async`` function given the :class:`~tests.bench.daemons.Running`
daemon (address, pid, folders, the time it answered, a client, ``fixtures``)
that returns one sample (a float in ``unit``), or raises
:class:`~tests.bench.scenarios.Unsupported` when that daemon cannot do it yet
(shown as ``n/a``). ``needs`` names the session fixtures it uses
(``run.fixtures``). One measurement can give several rows: the scenario stores
the extra values in ``run.recorded`` and later scenarios of its group with
``derived_from=<its name>`` return them (``higher_is_better=True`` marks a
throughput row); :class:`~tests.bench.daemons.PeakRSS` samples a daemon's
memory while a block runs. Scenarios with the same
``group`` share one daemon start per run and run in list order, so put a
scenario that needs an untouched daemon in a group of its own. ``stats``
chooses the rows it gets (``median``, ``p90``, ``p99``, ``mean``, ``min``,
``max``). A scenario that creates containers, mounts or processes must undo
them before returning: the harness only stops the daemon and its direct
children, and unmounts leftovers under its folder as a last resort (reported
as a warning).
"""
