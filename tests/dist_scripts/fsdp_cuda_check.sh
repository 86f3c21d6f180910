#!/usr/bin/env bash
# CUDA check of the distributed monitor: DDP, FSDP2 (fully_shard) and FSDP1 with the models on the GPU.
#
# Run from the repository root on a machine with a GPU (the package need not be installed):
#     OUT=/some/dir bash tests/dist_scripts/fsdp_cuda_check.sh
# Two ranks share GPU 0 under gloo (NCCL refuses two ranks on one GPU); with >= 2 GPUs it also runs
# the same scenarios on NCCL, one GPU per rank. Results (rank JSONs, logs, versions) go to $OUT;
# check them here with the CI assertions:
#     TORCHHEALTH_DIST_RESULTS=$OUT/gloo python -m pytest -q tests/test_distributed.py
set -u
OUT=${OUT:-$PWD/cuda_check_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCHHEALTH_TEST_DEVICE=${TORCHHEALTH_TEST_DEVICE:-cuda}  # cpu: a dry run of this script
{
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'gpus', torch.cuda.device_count(), torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import importlib.util as u; print({m: bool(u.find_spec(m)) for m in ('pytest', 'tensorboard', 'lightning')})"
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"

run() {  # run <name> <backend> <nproc> [scenario ...]
  local name=$1 backend=$2 nproc=$3; shift 3
  mkdir -p "$OUT/$name"
  TORCHHEALTH_TEST_BACKEND=$backend timeout 240 python -m torch.distributed.run --standalone \
    --nproc_per_node="$nproc" tests/dist_scripts/monitor_worker.py "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $?"
}

SCENARIOS=${SCENARIOS:-}  # a subset, e.g. SCENARIOS="ddp_data raise": only those run, and only their tests
run gloo gloo 2 $SCENARIOS
if [ -z "$SCENARIOS" ] && { ! grep -q '"hsdp"' "$OUT/gloo/rank0.json" 2>/dev/null || grep -q '"error"' "$OUT/gloo/rank0.json"; }; then
  # something failed: run each scenario alone to see which ones work
  for s in $(python -c "from tests.dist_scripts.monitor_worker import SCENARIOS; print(*SCENARIOS)"); do
    run "gloo_$s" gloo 2 "$s"
  done
fi
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  run nccl nccl 2
fi
if python -c "import pytest" 2>/dev/null; then
  for d in "$OUT"/gloo "$OUT"/nccl; do
    if [ -f "$d/rank1.json" ]; then
      TORCHHEALTH_DIST_RESULTS=$d timeout 120 python -m pytest -q -p no:cacheprovider tests/test_distributed.py \
        -k "not without_a_process_group and not clean_name and not compiled and not without_loss${SCENARIOS:+ and not fsdp and not hsdp and not sharded and not wrapper_prefix}" \
        > "$d.pytest.txt" 2>&1
      echo "pytest $(basename "$d"): exit $? (see $d.pytest.txt)"
    fi
  done
fi
tail -n 5 "$OUT"/*.log
