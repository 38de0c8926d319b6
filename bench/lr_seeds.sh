#!/usr/bin/env bash
# The learning-rate sweep of the default bundle repeated over fine-tuning seeds, on one GPU (the project's lent GPU
# machine), and every (mode, lr, seed) set of vectors scored on validation (bench/seed_study.py: addition, agreement,
# ξ).  One shard per (mode, lr), concurrently: `python -m arith lr-sweep --seeds … --device cuda --vectors`, then
# `bench.seed_study` on the vectors that shard wrote.  Results: $OUT/results.tgz (sweep_<mode>_<lr>.json, written when
# a shard's sweep ends, and study_<mode>_<lr>.json, rewritten after every complete vector set; the archive is refreshed
# at every poll) and $OUT/lr_seeds.log.  Everything stops at $DEADLINE seconds.  Combine the shards afterwards on any
# machine; --no-train fails, naming them, if runs are missing instead of training them there:
#
#   python -m arith lr-sweep --bundle precomputed/default --modes full attn --lrs 3e-4 1e-3 3e-3 --seeds 0 1 2 \
#       --previous sweep_*.json --no-train --json
#   python -m bench.seed_study --summarize study_*.json
#
# On the device machine, .devpack/ (in .gitignore; name it in the device tool's carry) carries what its image lacks:
# fonts.tar.xz (the Debian fonts the renderers read, see the README) and the wheels of open_clip_torch, ftfy, wcwidth.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lr_seeds}
DEADLINE=${DEADLINE:-470}
PY=${PY:-python3}
# $MODES, $LRS, $SEEDS: the shards (SHARD_SEEDS=1: one per seed too); $DEVICE (default cuda); $SWEEP_ARGS and
# $STUDY_ARGS: more lr-sweep / seed_study arguments (e.g. --steps 2; --split test)
MODES=${MODES:-"full attn"}
LRS=${LRS:-"3e-4 1e-3 3e-3"}
SEEDS=${SEEDS:-"0 1 2"}
START=$(date +%s)
W=/tmp/lr_seeds_work
rm -rf "$W"  # nothing from an earlier run on the same machine is packed or scored
mkdir -p "$OUT" "$W/json" "$W/logs"
export ARITH_DATA_CACHE=${ARITH_DATA_CACHE:-/tmp/arith-data} PYTHONPATH=. PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/lr_seeds.log"; }
pack() { tar czf "$OUT/results.tgz.part" --exclude='*.part' --exclude='*.tmp' -C "$W/json" . \
  && mv "$OUT/results.tgz.part" "$OUT/results.tgz"; }

if [ -d .devpack ]; then
  [ -f .devpack/fonts.tar.xz ] && tar xJf .devpack/fonts.tar.xz -C /
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devpack/*.whl \
    && export PYTHONPATH=.:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee -a "$OUT/lr_seeds.log"

log "drawing the eight tasks' training splits (the bundle carries validation and test)"
$PY - <<'EOF' 2>>"$W/logs/data.err"
import json
from multiprocessing import get_context

plan = json.load(open("precomputed/default/manifest.json"))["plan"]

def job(t):
    from arith.data import get_task
    get_task(t).load("train", n=plan["train_n"], seed=plan["seed"], root=plan["data_root"])
    return t

with get_context("fork").Pool(8) as p:
    print(list(p.imap_unordered(job, plan["tasks"])), flush=True)
EOF
log "data ready (rc $?)"

# one shard per (mode, lr), or per (mode, lr, seed) with SHARD_SEEDS=1
if [ -n "${SHARD_SEEDS:-}" ]; then GROUPS_=($SEEDS); else GROUPS_=("$SEEDS"); fi
for mode in $MODES; do
  for lr in $LRS; do
   for group in "${GROUPS_[@]}"; do
    left=$(( DEADLINE - ($(date +%s) - START) ))
    tag="${mode}_${lr}${SHARD_SEEDS:+_seed$group}"
    sets="${mode}_lr$($PY -c "print(f'{float(\"$lr\"):g}')")_seed${SHARD_SEEDS:+$group}*"
    [ "$left" -gt 0 ] || { log "deadline reached before $tag started"; break 3; }
    # shellcheck disable=SC2086  # word splitting of $group, $SWEEP_ARGS and $STUDY_ARGS is intended
    (timeout "$left" $PY -m arith lr-sweep --bundle precomputed/default --modes "$mode" --lrs "$lr" --seeds $group \
        --device "${DEVICE:-cuda}" --vectors "$W/vec" ${SWEEP_ARGS:-} --json >"$W/json/sweep_$tag.json.part" 2>"$W/logs/sweep_$tag.err" \
      && mv "$W/json/sweep_$tag.json.part" "$W/json/sweep_$tag.json"
     log "$tag: sweep ended (rc $?)"
     left=$(( DEADLINE - ($(date +%s) - START) ))
     [ "$left" -gt 0 ] || { log "$tag: no time left for the study"; exit 0; }
     # scores every complete vector set the shard wrote, also when its sweep was cut short
     timeout "$left" $PY -m bench.seed_study --bundle precomputed/default --vectors "$W/vec" --device "${DEVICE:-cuda}" \
        --only "$sets" --json "$W/json/study_$tag.json" ${STUDY_ARGS:-} \
        >>"$OUT/lr_seeds.log" 2>"$W/logs/study_$tag.err"
     log "$tag: study done (rc $?)") &
   done
  done
done
while [ -n "$(jobs -r)" ]; do
  sleep "${POLL:-15}"
  pack
  log "running: $(jobs -r | wc -l); $(ls "$W/vec" 2>/dev/null | wc -l) vector sets; $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"
done
wait
pack
log "done"
for f in "$W"/logs/*.err; do
  echo "--- $(basename "$f"): $(tail -c 300 "$f" | tr '\r' '\n' | grep -v '^\s*$' | tail -n 2)"
done | tee -a "$OUT/lr_seeds.log"
