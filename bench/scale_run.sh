#!/usr/bin/env bash
# Search latency at scale, one machine: for each N, build a synthetic library of N clips, index it,
# time queries with every core, then time the query phase again pinned to 2 cores (taskset and
# 2 threads for OpenMP/BLAS; DuckDB uses SearchCfg.sql_threads = 2 in both runs). Each phase runs
# in its own process, so each prints its own peak memory.
#
#   bench/scale_run.sh DATA_DIR OUT_DIR N [N ...]
#   bench/scale_run.sh /data /tmp/results 10000000 1000000
#
# Writes OUT_DIR/{build,index,search-all,search-2cores}-N.json and logs to stdout.
# Env: QUERIES (200), QUERIES_2CORES (QUERIES), TEXT_MODEL (internvideo2-s2-1b: its text tower
# with random weights; timed in the all-cores run with all and with 2 threads), INDEX_ARGS (extra
# arguments of the index phase, e.g. "--factory IVF4096,PQ128 --no-gpu").
set -u
data=$1 out=$2
shift 2
mkdir -p "$data" "$out"
queries=${QUERIES:-200}
queries2=${QUERIES_2CORES:-$queries}
text_model=${TEXT_MODEL:-internvideo2-s2-1b}
here=$(cd "$(dirname "$0")" && pwd)
stamp() { echo "=== $(date +%T) $*"; }
for n in "$@"; do
    lib="$data/lib-$n"
    bench=(python3 "$here/search_latency.py" --n "$n" --library "$lib")
    stamp "N=$n build"
    "${bench[@]}" --phase build --json "$out/build-$n.json" || exit 1
    stamp "N=$n index"
    # shellcheck disable=SC2086
    "${bench[@]}" --phase index ${INDEX_ARGS:-} --json "$out/index-$n.json" || exit 1
    python3 -c "import json, sys; r = json.load(open('$out/index-$n.json'))['index']['recall_at_10']; sys.exit(r is None or r < 0.5)" \
        || { echo "index recall@10 under 0.5: not timing a broken index"; exit 1; }
    stamp "N=$n search, all $(nproc) cores"
    "${bench[@]}" --phase search --queries "$queries" --model "$text_model" --json "$out/search-all-$n.json"
    stamp "N=$n search, 2 cores"
    OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2 taskset -c 0,1 \
        "${bench[@]}" --phase search --queries "$queries2" --model '' --no-recall \
        --json "$out/search-2cores-$n.json"
    stamp "N=$n done"
done
