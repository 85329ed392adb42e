#!/usr/bin/env bash
# The GPU checks, in one go, on a machine with an NVIDIA GPU (from the repository root):
# the GPU tests and the GPU benchmark (`--only gpu`) of torch and JAX, each backend in turn.
#
#   OUT=gpu-out bash tools/gpu_check.sh        # logs and JSON land in $OUT
#
# It uses the machine's own python3 with torch, jax, flax and optax installed (d2lx from this checkout,
# through PYTHONPATH), so it needs no network. Each part has its own time limit, and a part that fails
# does not stop the next: the summary at the end says what ran.
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
summary=()

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv | tee "$out/machine.txt"
$py - <<'PY' 2>&1 | tee -a "$out/machine.txt"
import importlib
for name in ("numpy", "torch", "jax", "flax", "optax", "safetensors", "pytest", "hypothesis"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "missing:", exc)
PY

for b in torch jax; do
  D2LX_BACKEND=$b timeout "${TEST_LIMIT:-240}" $py -m pytest -q -p no:cacheprovider -m gpu -rs \
    tests/conformance/test_gpu.py tests/conformance/test_devices_and_errors.py tests/backends/test_torch_graphs.py \
    >"$out/tests-$b.log" 2>&1
  summary+=("tests $b: exit $? ($(tail -1 "$out/tests-$b.log"))")
done
for b in torch jax; do
  timeout "${BENCH_LIMIT:-300}" $py -m benchmarks --backend $b --only gpu --no-keras ${BENCH_ARGS:-} \
    --out "$out/$b.json" >"$out/bench-$b.log" 2>&1
  summary+=("bench $b: exit $?")
  tail -22 "$out/bench-$b.log"
done
for b in torch jax; do tail -25 "$out/tests-$b.log"; done
printf '%s\n' "${summary[@]}"
