#!/usr/bin/env bash
# The GPU checks, in one run on the project's lent GPU machine (see BENCHMARKS.md, *GPU*):
#   1. bench/gpu_check.py: fine-tuning cost per mode and slider latency of a ViT-B/32-sized encoder (random weights);
#   2. bench/slider.py on the embedded default with θ0 on the GPU (what the app does on a GPU machine):
#      $OUT/slider-gpu.json;
#   3. the embedded default's precomputed results recomputed on the GPU (`python -m arith precompute --device cuda` on
#      a copy of the bundle), packed as $OUT/precompute_gpu.tgz, to be compared here with the CPU's by
#      `python -m bench.compare_results precomputed/default DIR` once unpacked over a copy of the bundle;
#   4. bench/gpu_build_check.py: build-bundle with a ViT-B-32 (random weights) on two generated data sets, and the
#      invariants of what it wrote: $OUT/gpu-build.json;
#   5. bench/merge_methods.py: TIES and per-task λ through the Explorer on the default, $OUT/methods-cuda.json, to be
#      compared here with `python -m bench.merge_methods --compare FILE`.
# $STEPS picks some of them (default "check slider precompute build methods").
# Logs: $OUT/gpu_verify.log.  Each step is stopped, and the later ones skipped, once $DEADLINE seconds have passed.
#
#   OUT=/tmp/gpu_verify bash bench/gpu_verify.sh
#   DEVICE=cpu GPU_CHECK_ARGS="--tiny" SLIDER_ARGS="--sets 3" BUILD_CHECK_ARGS="--model-config tiny --steps 2" BUNDLE=/tmp/quick OUT=/tmp/gv bash bench/gpu_verify.sh   # a CPU smoke run
#
# On the device machine, .devpack/ (in .gitignore; name it in the device tool's carry) carries the wheels its image
# lacks: open_clip_torch, ftfy and wcwidth.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_verify}
DEVICE=${DEVICE:-cuda}
BUNDLE=${BUNDLE:-precomputed/default}
DEADLINE=${DEADLINE:-420}
STEPS=${STEPS:-"check slider precompute build methods"}
PY=${PY:-python3}
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
LOG="$OUT/gpu_verify.log"
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }

if [ -d .devpack ] && ls .devpack/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devpack/*.whl \
    && export PYTHONPATH=.:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$LOG"
$PY -c "import torch, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'open_clip', open_clip.__version__)" 2>&1 | tee -a "$LOG"

# run STEP's command with what is left of $DEADLINE (skipped when nothing is), logging its exit status
step() {
  local name=$1 l
  shift
  l=$(left)
  if [ "$l" -le 0 ]; then log "$name: skipped, past the deadline"; return 1; fi
  log "$name: start"
  timeout -k 10 "$l" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  log "$name: exit $rc"
  return "$rc"
}

# shellcheck disable=SC2086  # GPU_CHECK_ARGS, SLIDER_ARGS and BUILD_CHECK_ARGS are lists of arguments
want check && step gpu_check $PY bench/gpu_check.py --device "$DEVICE" ${GPU_CHECK_ARGS:-} --json "$OUT/gpu-check.json"
# shellcheck disable=SC2086
want slider && step "slider on $DEVICE" $PY -m bench.slider --bundle "$BUNDLE" --device "$DEVICE" ${SLIDER_ARGS:-} \
  --json "$OUT/slider-gpu.json"
if want precompute; then
  W=/tmp/gpu_verify_bundle
  rm -rf "$W" && cp -r "$BUNDLE" "$W"
  # stdout is the command's JSON; its log lines (stderr) go to the log
  if step "precompute on $DEVICE" sh -c "$PY -m arith precompute --bundle $W --device $DEVICE --json >$OUT/precompute.json"; then
    tar czf "$OUT/precompute_gpu.tgz" -C "$W" manifest.json results cache
  fi
fi
# shellcheck disable=SC2086
want build && step "build check on $DEVICE" $PY bench/gpu_build_check.py --device "$DEVICE" ${BUILD_CHECK_ARGS:-} \
  --json "$OUT/gpu-build.json"
want methods && step "merge methods on $DEVICE" $PY -m bench.merge_methods --bundle "$BUNDLE" --device "$DEVICE" \
  --json "$OUT/methods-$DEVICE.json"
log "done"
