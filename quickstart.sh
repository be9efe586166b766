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
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done

run() { echo "\$ $*"; "$@"; echo; }
run ctr --address "$sock" version
run ctr --address "$sock" namespaces create demo team=quickstart
run ctr --address "$sock" namespaces label demo stage=1
run ctr --address "$sock" namespaces ls
run actr --address "$sock" namespaces ls
run ctr --address "$sock" plugins ls
run actr --address "$sock" version
echo "--- daemon log"
cat "$demo/daemon.log"
