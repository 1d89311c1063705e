#!/usr/bin/env bash
# Run a Milvus standalone server without Docker, from the PyPI package `milvus` (milvus-server 2.3.5,
# Linux x86_64; installed by `pip install -e '.[dev]'` or `pip install milvus`).
#
#   bash milvus/run-server.sh [DATA_DIR] [PORT]      # defaults: ./volumes/milvus-server 19530
#
# Runs in the foreground; Ctrl+C (SIGINT) stops it. For CI, background it and poll until a client
# answers (~10-15 s on 2 cores):  bash milvus/run-server.sh /tmp/milvus 19530 & ...
# Then: hnsel --milvus-uri http://127.0.0.1:PORT ...  (or HNSEL_MILVUS_URI).
#
# Two things the bare `milvus-server` does not do, done here (see milvus/COMPATIBILITY.md):
#   - its embedded etcd always listens on 2379/2380 whatever --etcd-port says, so a second server on
#     the machine dies; we give etcd its own ports through ETCD_CONFIG_PATH (ETCD_CLIENT_PORT and
#     ETCD_PEER_PORT, default PORT+1000 and PORT+1001);
#   - a --proxy-port already in use is silently replaced by the next free one; we refuse to start.
# The overrides in milvus/milvus.yaml are passed as --extra-config (keys the 2.3.5 template knows).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data_dir="$(mkdir -p "${1:-./volumes/milvus-server}" && cd "${1:-./volumes/milvus-server}" && pwd)"
port="${2:-19530}"
etcd_client_port="${ETCD_CLIENT_PORT:-$((port + 1000))}"
etcd_peer_port="${ETCD_PEER_PORT:-$((port + 1001))}"
overrides="${MILVUS_OVERRIDES:-$here/milvus.yaml}"
python="${PYTHON:-python3}"

server="$(command -v milvus-server || true)"
if [[ -z "$server" ]]; then
    echo "run-server.sh: milvus-server not found; pip install milvus (Linux x86_64), or activate .venv" >&2
    exit 1
fi

port_free() { "$python" -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }
for p in "$port" "$etcd_client_port" "$etcd_peer_port"; do
    if ! port_free "$p"; then
        echo "run-server.sh: port $p is in use; pick another PORT (or ETCD_CLIENT_PORT / ETCD_PEER_PORT)" >&2
        exit 1
    fi
done

cat > "$data_dir/embedEtcd.yaml" <<EOF
name: default
listen-client-urls: http://127.0.0.1:$etcd_client_port
advertise-client-urls: http://127.0.0.1:$etcd_client_port
listen-peer-urls: http://127.0.0.1:$etcd_peer_port
initial-advertise-peer-urls: http://127.0.0.1:$etcd_peer_port
initial-cluster: default=http://127.0.0.1:$etcd_peer_port
EOF
export ETCD_CONFIG_PATH="$data_dir/embedEtcd.yaml"

# milvus.yaml -> "--extra-config a.b.c=value" lines (nested maps of scalars, comments dropped).
mapfile -t extra < <("$python" - "$overrides" <<'PY'
import sys
path = []
for line in open(sys.argv[1], encoding="utf-8"):
    text = line.split(" #")[0].rstrip()
    if not text.strip() or text.lstrip().startswith("#"):
        continue
    depth = (len(text) - len(text.lstrip())) // 2
    key, _, value = text.strip().partition(":")
    path = path[:depth] + [key]
    if value.strip():
        print("--extra-config")
        print(".".join(path) + "=" + value.strip())
PY
)

echo "run-server.sh: Milvus on http://127.0.0.1:$port, data and logs in $data_dir (Ctrl+C stops it)"
exec "$server" --data "$data_dir" --proxy-port "$port" --etcd-port "$etcd_client_port" "${extra[@]}"
