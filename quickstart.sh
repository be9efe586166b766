#!/usr/bin/env bash
# Quick start (Debian 12, as root): install, start aiocontainerd, and drive it with the
# real `ctr` (from Debian's containerd package) and our `actr`. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")"
bash .ci/install
export PATH="$PWD/.venv/bin:$PATH"

demo=$(mktemp -d /tmp/aiocontainerd-quickstart.XXXXXX)
sock="$demo/state/aiocontainerd.sock"
aiocontainerd --root "$demo/root" --state "$demo/state" --address "$sock" \
  >"$demo/daemon.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$demo"' EXIT
for _ in $(seq 400); do [ -S "$sock" ] && break; sleep 0.05; done   # the path appears once the daemon serves

run() { echo "\$ $*"; "$@"; echo; }
run ctr --address "$sock" version
run ctr --address "$sock" namespaces create demo team=quickstart
run ctr --address "$sock" namespaces label demo stage=1
run ctr --address "$sock" namespaces ls
run actr --address "$sock" namespaces ls
run ctr --address "$sock" plugins ls
run actr --address "$sock" version

# an image: busybox-static packed as an OCI image (the test suite's builder), imported by ctr,
# unpacked into overlayfs and mounted read-only; then removed with its snapshots
python -c 'import sys; from tests.support.images import busybox_image, oci_layout_tar
sys.stdout.buffer.write(oci_layout_tar(busybox_image(2), "1", image_name="example.com/busybox:1"))' \
  > "$demo/busybox.tar"
run ctr --address "$sock" images import "$demo/busybox.tar"
run ctr --address "$sock" images ls
snap=$(actr --address "$sock" images mount example.com/busybox:1 "$demo/rootfs")
run ls "$snap" "$snap/bin"
echo "\$ $snap/bin/busybox echo hello from the image"; "$snap/bin/busybox" echo hello from the image; echo
run ctr --address "$sock" snapshots --snapshotter overlayfs tree
run actr --address "$sock" images unmount "$demo/rootfs"
run ctr --address "$sock" images rm --sync example.com/busybox:1
echo "--- daemon log"
cat "$demo/daemon.log"
