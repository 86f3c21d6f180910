#!/usr/bin/env bash
# torchhealth CUDA checks (issue 4), for one machine with one GPU. Run from the repository root:
#
#     OUT=/some/folder bash benchmarks/cuda_check.sh
#
# 1. no-sync check: every unchecked step under torch.cuda.set_sync_debug_mode("error"), check
#    steps under "warn" with their synchronizations counted (one expected) -> $OUT/no_sync.md
# 2. overhead benchmark on the 24-layer MLP (width 1024; batch 512, and 2048 to show how the cost
#    shrinks once the GPU, not the launching CPU, is the bottleneck) and ResNet-50 (bf16, batch 64),
#    plain vs torchhealth vs the usual .item() patterns -> $OUT/overhead_cuda.md
# Logs go to $OUT/*.log, a one-screen summary to $OUT/summary.txt. Total time is capped under
# 6 minutes by per-part timeouts and time budgets. The package need not be installed.
# CHECK_DEVICE=cpu runs the same parts as a short dry run on the CPU (to test this script).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d -t torchhealth-cuda-XXXX)}
DEVICE=${CHECK_DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$SECONDS
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "[cuda_check $((SECONDS - START))s] $*" | tee -a "$SUMMARY"; }

say "output folder: $OUT, device: $DEVICE"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi unavailable"
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
  "$PY" -c 'import torchvision; print("torchvision", torchvision.__version__)' 2>&1 || echo "torchvision missing: ResNet-50 is skipped"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$SUMMARY"

if [ "$DEVICE" = cuda ]; then
  SYNC_ARGS=(--device cuda --models resnet50,mlp24 --steps 32)
  MLP_ARGS=(--device cuda --models mlp24,mlp24_b2048 --rounds 20 --budget-s 25)
  RESNET_ARGS=(--device cuda --models resnet50 --rounds 15 --warmup 1 --budget-s 110)
else
  SYNC_ARGS=(--device cpu --models mlp16 --steps 12)
  MLP_ARGS=(--device cpu --models mlp16 --rounds 2 --warmup 1 --block-steps 10)
  RESNET_ARGS=(--device cpu --models conv6 --rounds 2 --warmup 1 --block-steps 10)
fi

status=0
say "1/3 no-sync check (limit 70s)"
timeout 70 "$PY" benchmarks/no_sync_check.py "${SYNC_ARGS[@]}" --out "$OUT/no_sync.md" > "$OUT/no_sync.log" 2>&1
rc=$?; [ $rc -eq 0 ] || status=1
say "no-sync check exit code $rc ($( [ $rc -eq 0 ] && echo PASS || ([ $rc -eq 124 ] && echo TIMEOUT || echo FAIL) ))"
tail -n 30 "$OUT/no_sync.log"

say "2/3 overhead, MLP batch 512 and 2048 (limit 75s)"
timeout 75 "$PY" benchmarks/overhead.py "${MLP_ARGS[@]}" --out "$OUT/overhead_mlp.md" > "$OUT/overhead_mlp.log" 2>&1
rc=$?; [ $rc -eq 0 ] || status=1
say "overhead MLP exit code $rc"
tail -n 12 "$OUT/overhead_mlp.log"

say "3/3 overhead, ResNet-50 (limit 180s)"
timeout 180 "$PY" benchmarks/overhead.py "${RESNET_ARGS[@]}" --out "$OUT/overhead_resnet50.md" > "$OUT/overhead_resnet50.log" 2>&1
rc=$?; [ $rc -eq 0 ] || status=1
say "overhead ResNet-50 exit code $rc"
tail -n 12 "$OUT/overhead_resnet50.log"

cat "$OUT"/overhead_*.md > "$OUT/overhead_cuda.md" 2>/dev/null || true
say "done in $((SECONDS - START))s, overall $( [ $status -eq 0 ] && echo PASS || echo 'FAIL (see the logs)' ); files: $(ls "$OUT" | tr '\n' ' ')"
exit $status
