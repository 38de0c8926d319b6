#!/usr/bin/env bash
# Several variants of the default's pre-trained base, scored on validation by bench/base_probe.py, concurrently on
# one GPU (the project's lent GPU machine; see docs/default-bundle.md, *A stronger base*).  Each variant pre-trains its
# θ0, fine-tunes the eight tasks (attn, then full, at lr 1e-3) and writes $OUT/<tag>.json;
# $OUT/sweep.log gathers their summary lines.  Everything stops at $DEADLINE seconds; a variant cut short keeps the
# runs it finished.
#
#   OUT=/tmp/base_sweep bash bench/base_sweep.sh
#
# On the device machine, .devpack/ (in .gitignore; name it in the device tool's carry) carries what its image lacks: fonts.tar.xz (the Debian fonts the
# renderers read, see the README) and the wheels of open_clip_torch, ftfy and wcwidth.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/base_sweep}
DEADLINE=${DEADLINE:-520}
PY=${PY:-python3}
START=$(date +%s)
mkdir -p "$OUT" /tmp/base_sweep_logs
export ARITH_DATA_CACHE=${ARITH_DATA_CACHE:-/tmp/arith-data} PYTHONPATH=. PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/sweep.log"; }

if [ -d .devpack ]; then
  [ -f .devpack/fonts.tar.xz ] && tar xJf .devpack/fonts.tar.xz -C /
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devpack/*.whl \
    && export PYTHONPATH=.:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee -a "$OUT/sweep.log"

# tag | pre-training overrides (PretrainConfig fields; the study ran when the default was width 80, 8,000 steps,
# 96,000 images, and "ref" pins that).
# $VARIANTS (one "tag|overrides" per line) replaces the list; $RUNS the probe's (mode, lr) runs (default: attn and
# full at 1e-3, the build's lr when the study ran); $PROBE_ARGS adds arguments to every probe (e.g. --xi).
if [ -n "${VARIANTS:-}" ]; then mapfile -t VARIANTS <<<"$VARIANTS"; else VARIANTS=(
  "ref|steps=8000"
  "steps12k|steps=12000"
  "steps16k|steps=16000"
  "steps16k-pool192k|steps=16000 pool=192000"
  "steps24k|steps=24000"
  "width128|width=128 head_width=32"
  "steps32k|steps=32000"
); fi

log "drawing the source pool and the task splits (a variant with another pool draws its own)"
$PY - <<'EOF' 2>>/tmp/base_sweep_logs/data.err
from multiprocessing import get_context

def job(j):
    import arith.default.tasks as T
    from arith.data import get_task
    if j[0] == "pool":
        T.source_pool(j[1], seed=0, rich=True)
    else:
        get_task(j[1]).load(j[2], n=j[3], seed=0)
    return j

jobs = [("pool", 96_000)] + [("task", t, s, n) for t in
        ("digits", "street", "letters", "shapes", "textures", "signs", "terrain", "scenes")
        for s, n in (("train", 6000), ("val", 256))]
with get_context("fork").Pool(12) as p:
    for j in p.imap_unordered(job, jobs):
        print(j, flush=True)
EOF
log "data ready (rc $?)"

for v in "${VARIANTS[@]}"; do
  tag=${v%%|*}; sets=${v#*|}
  left=$(( DEADLINE - ($(date +%s) - START) ))
  [ "$left" -gt 0 ] || { log "deadline reached before $tag started"; break; }
  # shellcheck disable=SC2086  # word splitting of the overrides is intended
  timeout "$left" $PY -m bench.base_probe --device "${DEVICE:-cuda}" --runs ${RUNS:-attn=1e-3 full=1e-3} --tag "$tag" \
    --json "$OUT/$tag.json" ${sets:+--set $sets} ${PROBE_ARGS:-} >>"$OUT/sweep.log" 2>"/tmp/base_sweep_logs/$tag.err" &
done
while [ -n "$(jobs -r)" ]; do
  sleep "${POLL:-60}"
  log "running: $(jobs -r | wc -l); $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"
done
wait
log "done"
for v in "${VARIANTS[@]}"; do
  tag=${v%%|*}
  echo "--- $tag: $(tail -c 400 "/tmp/base_sweep_logs/$tag.err" | tr '\r' '\n' | grep -v '^\s*$' | tail -n 3)"
done | tee -a "$OUT/sweep.log"
grep -h "single" "$OUT/sweep.log"
