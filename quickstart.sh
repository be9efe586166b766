#!/usr/bin/env bash
# Quick start (Debian 12, as root): install, start aiocontainerd, build a real image from
# Debian's busybox-static, serve it from a real docker-registry on loopback, pull it with
# `actr` and run containers from it (with `actr` and the real `ctr`). Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")"
bash .ci/install
export PATH="$PWD/.venv/bin:$PATH"

demo=$(mktemp -d /tmp/aiocontainerd-quickstart.XXXXXX)
sock="$demo/state/aiocontainerd.sock"
daemon="" registry=""
finish() {
  set +e
  [ -n "$registry" ] && kill "$registry" 2>/dev/null && wait "$registry" 2>/dev/null
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  # anything still running from this demo (a shim the daemon left behind) is reported and stopped
  for p in $(grep -l -s -F "$demo" /proc/[0-9]*/cmdline | cut -d/ -f3); do
    line=$({ tr '\0' ' ' </proc/"$p"/cmdline; } 2>/dev/null | cut -c1-120) || continue
    [ -n "$line" ] && [ "$p" != "$$" ] || continue
    echo "warning: still running after the daemon stopped, killed: $p $line" >&2
    kill -9 "$p" 2>/dev/null || true
  done
  grep -F " $demo/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
  rm -rf "$demo"
  return 0
}
trap finish EXIT

aiocontainerd --root "$demo/root" --state "$demo/state" --address "$sock" \
  >"$demo/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 400); do [ -S "$sock" ] && break; sleep 0.05; done   # the path appears once the daemon serves

run() { echo "\$ $*"; "$@"; echo; }
run ctr --address "$sock" version
run ctr --address "$sock" namespaces create demo team=quickstart
run ctr --address "$sock" namespaces label demo stage=1
run ctr --address "$sock" namespaces ls
run ctr --address "$sock" plugins ls
run actr --address "$sock" version

# a real registry (Debian's docker-registry) on a free loopback port, storage in the demo folder
port=$(python -c 'from tests.support.registry import free_port; print(free_port())')
python -c 'import sys; from tests.support.registry import Registry
print(Registry(sys.argv[1]).config(int(sys.argv[2])), end="")' "$demo/registry" "$port" > "$demo/registry.yml"
mkdir -p "$demo/registry/data"
docker-registry serve "$demo/registry.yml" >"$demo/registry.log" 2>&1 &
registry=$!
python -c 'import sys, time, urllib.request
for _ in range(400):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1); break
    except OSError:
        time.sleep(0.05)' "http://127.0.0.1:$port/v2/"

# an image: Debian's busybox-static packed as a one-layer OCI image (the test suite's builder),
# pushed to that registry, pulled and unpacked by the daemon (`actr images pull`)
img="127.0.0.1:$port/demo/busybox:1"
echo "\$ # build busybox-static into an OCI image and push it to $img"
python -c 'import asyncio, sys; from tests.support.images import busybox_image, push
asyncio.run(push(sys.argv[1], "demo/busybox", "1", busybox_image()))' "127.0.0.1:$port"
echo
run actr --address "$sock" images pull --plain-http "$img"
run ctr --address "$sock" images ls
run ctr --address "$sock" snapshots --snapshotter overlayfs tree

# containers: our shim (containerd-shim-aiorunc-v2) runs them with runc
run actr --address "$sock" run --rm "$img" demo echo hello from aiocontainerd
run ctr --address "$sock" run --rm "$img" demo-ctr sh -c 'echo hello from the real ctr on $(cat /etc/platform)'
run actr --address "$sock" run -d "$img" demo-bg sleep 1000
run ctr --address "$sock" tasks ls
run ctr --address "$sock" tasks exec --exec-id ps1 demo-bg ps
run ctr --address "$sock" tasks kill --signal SIGKILL demo-bg
for _ in $(seq 100); do ctr --address "$sock" tasks ls | grep -q 'demo-bg.*STOPPED' && break; sleep 0.05; done
run ctr --address "$sock" tasks delete demo-bg
run ctr --address "$sock" containers rm demo-bg

# the image's root filesystem, mounted read-only from its snapshot; then everything removed
snap=$(actr --address "$sock" images mount "$img" "$demo/rootfs")
run ls "$snap" "$snap/bin"
run actr --address "$sock" images unmount "$demo/rootfs"
run ctr --address "$sock" images rm --sync "$img"
run ctr --address "$sock" containers ls
echo "--- daemon log"
cat "$demo/daemon.log"
