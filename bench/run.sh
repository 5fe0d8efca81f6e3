#!/usr/bin/env bash
# Every benchmark, one after the other, each printing its ratios against baselines measured in
# the same run (`make bench`). Loopback only; about 14 minutes on 2 cores. Results are also
# appended to var/bench/results.jsonl. Options for one benchmark: python -m bench.<name> --help
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

"$PY" -m pip install -q -r requirements-dev.txt -r bench/requirements.txt
if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q wrk >/dev/null
    else
        echo "bench: wrk is missing; install it (sudo apt-get install wrk)" >&2
        exit 1
    fi
fi

mkdir -p var/bench
rm -f var/bench/results.jsonl
echo "bench: $(date -u +%FT%TZ) on $(nproc) cores, $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
"$PY" -m bench.intake "$@" 2> >(grep -v ' INFO ' >&2)
"$PY" -m bench.stages 2> >(grep -v ' INFO \|event=startup' >&2)
"$PY" -m bench.stages --server 2> >(grep -v ' INFO \|event=startup' >&2)
"$PY" -m bench.delivery 2> >(grep -v ' INFO ' >&2)
"$PY" -m bench.workers 2> >(grep -v ' INFO ' >&2)
"$PY" -m bench.wechat_latency 2> >(grep -v ' INFO ' >&2)
"$PY" -m bench.memory 2> >(grep -v ' INFO ' >&2)
"$PY" -m bench.storm 2> >(grep -v ' INFO ' >&2)
"$PY" -m bench.frontdoor 2> >(grep -v ' INFO ' >&2)
echo "bench: done; results in var/bench/results.jsonl"
