#!/usr/bin/env bash
# Everything a lent GPU machine should check, in phases that each fit one device call
# (10 minutes). Logs and JSON go under $OUT, which the device tool brings back.
#
#   here:   npm install && ../shared/gpu/pack.sh
#   device: source .gpu/setup.sh && bash scripts/gpu-check.sh build test     (carry .gpu)
#           source .gpu/setup.sh && bash scripts/gpu-check.sh build sanitize
#           source .gpu/setup.sh && bash scripts/gpu-check.sh build bench
#
# Phases: build (rebuild the addon for this GPU's architecture, compile the TypeScript),
# test (the whole suite; GPU tests no longer skip), sanitize (compute-sanitizer memcheck and
# racecheck over the kernel tests), bench (ceilings, PyTorch baselines, every suite, roofline).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
export CUDAARCHS=${CUDAARCHS:-${arch:-90}}
export MLA_CUDA_COMMIT=${MLA_CUDA_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
step() { echo "== $* ($(date -u +%H:%M:%S))"; }
KERNEL_TESTS="test/runtime.test.ts test/rope.test.ts test/rmsnorm.test.ts test/linear.test.ts test/decode.test.ts test/prefill.test.ts"

for phase in "$@"; do
  case $phase in
    build)
      step "build for sm_$CUDAARCHS"
      nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
      MLA_CUDA_PTXAS_VERBOSE=1 node scripts/build-native.mjs > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
      grep -E "spill|Used [0-9]+ registers" "$OUT/build.log" | sort | uniq -c | sort -rn | head -5
      npx tsc -p tsconfig.build.json || exit 1
      node dist/cli/main.js doctor | tee "$OUT/doctor.txt"
      ;;
    test)
      step "tests"
      timeout 540 npx tap --reporter=tap $KERNEL_TESTS test/attention.test.ts test/demo.test.ts > "$OUT/test.log" 2>&1
      echo "tap exit $?"; grep -E "^# \{|^not ok" "$OUT/test.log" | tail -20
      node dist/cli/main.js demo --backend gpu > "$OUT/demo.txt" 2>&1; tail -12 "$OUT/demo.txt"
      # PTX conformance: the GPU against the ISA, then the emulated device against the GPU, bit for bit.
      step "primitives: GPU"
      rm -f "$OUT"/primitives-*.json
      MLA_CUDA_DEVICE=cuda MLA_PRIMITIVES_DUMP="$OUT/primitives-gpu.json" timeout 120 \
        npx tap --reporter=tap --disable-coverage test/primitives.test.ts > "$OUT/primitives-gpu.log" 2>&1
      echo "tap exit $?"; grep -E "^# \{|^ *not ok|zero result" "$OUT/primitives-gpu.log" | grep -v "# TODO" | tail -20
      if [ ! -f "$OUT/primitives-gpu.json" ]; then
        echo "primitives: the GPU run wrote no dump (see $OUT/primitives-gpu.log); nothing to compare"
      elif [ -f build/Release/emulator/mla_cuda_emulator.node ]; then
        step "primitives: emulated device"
        MLA_CUDA_DEVICE=emulator MLA_PRIMITIVES_DUMP="$OUT/primitives-emu.json" timeout 120 \
          npx tap --reporter=tap --disable-coverage test/primitives.test.ts > "$OUT/primitives-emu.log" 2>&1
        echo "tap exit $?"; grep -E "^# \{" "$OUT/primitives-emu.log"
        if cmp "$OUT/primitives-gpu.json" "$OUT/primitives-emu.json"; then
          echo "primitives: emulator matches the GPU bit for bit"
        else
          echo "primitives: emulator DIFFERS from the GPU in $(diff "$OUT/primitives-gpu.json" "$OUT/primitives-emu.json" | grep -c '^<') outputs:"
          diff "$OUT/primitives-gpu.json" "$OUT/primitives-emu.json" | grep '^<' | cut -d'"' -f2 | head -20
        fi
      else
        echo "primitives: no emulator addon here (build/Release/emulator/mla_cuda_emulator.node); GPU run only"
      fi
      ;;
    sanitize)
      for tool in memcheck racecheck; do
        step "compute-sanitizer $tool"
        timeout 270 compute-sanitizer --tool "$tool" --target-processes all --print-limit 20 \
          npx tap --reporter=tap --timeout=260 test/decode.test.ts test/prefill.test.ts test/linear.test.ts test/rope.test.ts \
          > "$OUT/sanitizer-$tool.log" 2>&1
        echo "exit $?"; grep -E "ERROR SUMMARY|Invalid|Race|hazard" "$OUT/sanitizer-$tool.log" | sort | uniq -c | head -10
      done
      ;;
    bench)
      step "PyTorch ceilings and SDPA baseline"
      python3 bench/torch_ceilings.py > "$OUT/torch-ceilings.json" 2> "$OUT/torch-ceilings.err"; cat "$OUT/torch-ceilings.json"
      timeout 120 python3 bench/sdpa_baseline.py > "$OUT/sdpa-baseline.txt" 2>&1; tail -8 "$OUT/sdpa-baseline.txt"
      step "mla-cuda bench"
      stem="$(date -u +%Y-%m-%d)-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-')"
      timeout 420 node dist/cli/main.js bench ${BENCH_ARGS:---quick} --ceilings-file "$OUT/torch-ceilings.json" \
        --json "$OUT/$stem.json" --svg "$OUT/$stem.svg" 2>&1 | tee "$OUT/bench.txt" | tail -40
      ;;
    *) echo "unknown phase $phase (build, test, sanitize, bench)"; exit 2 ;;
  esac
done
