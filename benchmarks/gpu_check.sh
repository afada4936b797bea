#!/usr/bin/env bash
# The one prepared GPU check of cion (docs/gpu.md): run it unchanged on a GPU machine, under
# 8 minutes; it prints one table (and writes DIR/gpu_check.json with --out DIR).
#
#   benchmarks/gpu_check.sh [--out DIR]      # GPU: pre-training, fine-tuning, extraction, evaluation
#   benchmarks/gpu_check.sh --cpu-smoke      # any machine, seconds: tiny sizes, the same code paths
#
# Python: $PYTHON if set, else the repository's .venv, else python3 (it needs torch, timm and
# cion's dependencies; the repository root is put on PYTHONPATH).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$root"
echo "# cion gpu_check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"
# DataLoader workers hand batches over through shared memory: a small /dev/shm fails the loader rows
df -h /dev/shm 2>/dev/null | tail -n 1 | awk '{print "# /dev/shm: " $2 " total, " $4 " free"}' || true
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec "$py" benchmarks/gpu_check.py "$@"
