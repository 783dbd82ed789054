#!/usr/bin/env bash
# Everything a lent GPU machine should check and time, in ONE device call of about 7.5 minutes.
# Prepare here first (no GPU; compiles the addon for sm_90, dist/, .gpu/, the FlashMLA anchor):
#
#   bash scripts/gpu-prepare.sh        # prints the exact run(command, carry, timeout_s) to use
#
# On the device (what gpu-prepare.sh prints):
#   export GPU_CHECK_T0=$(date +%s); source .gpu/setup.sh && bash scripts/gpu-check.sh all
#
# usage: bash scripts/gpu-check.sh [all | PHASE...]     (default all; `summary` reprints the table)
# Phases, each under its own `timeout`, budgets in seconds (sum 520; the deadline cuts the last):
#   env         20  nvidia-smi, the carried addon (build/gpu, sm_90) loads and sees the GPU, doctor;
#                   rebuilds on the device only when the carried addon cannot run there (+150)
#   hopper      20  scripts/hopper-smoke.mjs: small decodes (4 shapes) per main kernel against the
#                   float64 reference, the sm_90a one first used here, a wrong one localized by
#                   request / head group / V quarter; if it fails or hangs, the later
#                   phases test and time the portable kernel only (and this row says why)
#   tests      100  kernel tests on the GPU (MLA_CUDA_DEVICE=cuda: never the emulator): runtime,
#                   rope, rmsnorm, linear, decode, prefill, attention (v3slim incl. cache.latent/
#                   cache.rope), demo; a GPU test that skips for want of a device is a failure
#   demo        20  mla-cuda demo --backend gpu
#   primitives  30  PTX conformance (test/primitives.test.ts) on the GPU, and the emulated device
#                   compared with it bit for bit
#   memcheck    25  compute-sanitizer --tool memcheck over a short kernel subset (tap --grep)
#   racecheck   25  compute-sanitizer --tool racecheck, same subset (`sanitize` = both)
#   ceilings    35  bench/torch_ceilings.py (copy bandwidth, bf16 matmul rate)
#   flashmla    45  FlashMLA's own decode (.gpu/anchors/flashmla) at its grid: b128, s_q 1,2,
#                   h_q 16..128, s_k 4k..32k
#   decode     140  our decode at the same 32 shapes, portable and Hopper kernels (mla-cuda bench
#                   decode --grid decode.kernel=portable,hopper), then Hopper on a plan made once
#                   (--grid decode.plan=reuse: FlashMLA's `us` leaves its metadata out), an A/B of
#                   programmatic dependent launch (--grid decode.pdl=off,on) at 2 shapes, and one
#                   of the few-rows Hopper kernel against the 64-row one (hopper-wide) at 4
#   bench       60  the rest of `mla-cuda bench --quick` (prefill rope linear layer copy; layer at b 1, 8, 64 includes
#                   the step as a CUDA graph), then scripts/host-overhead.mjs (host µs per op)
# Not in `all` (a second call's, for tuning once the numbers are in):
#   profile     90  Nsight Compute (ncu --clock-control none) on one call (plan, main, combine) of each decode main
#                   kernel at H 128 and H 16 (s_q 1, s_k 8192, B 128): throughputs, pipe use,
#                   warp stalls; the table shows duration and SM / memory throughput per launch
# A global deadline (GPU_CHECK_DEADLINE, default 450 s after GPU_CHECK_T0, else after this
# script's start) shortens or skips what would run past it. The table comes last on stdout and
# in $OUT/summary.txt; $OUT also gets logs.tgz (every log, refreshed after each phase),
# torch-ceilings.json, flashmla.jsonl, decode.json, decode-reuse.json, bench-quick.json, roofline.svg (8 files).
# Where there is no GPU every phase fails at once with the reason (GPU_CHECK_NO_GATE=1 runs each
# phase's real commands anyway, to rehearse them). Exit 0 only when every phase passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check-$(printf %s "$OUT" | cksum | cut -d' ' -f1)}
T0=${GPU_CHECK_T0:-$(date +%s)}
RUN_ID=$(date +%s%N)
DEADLINE=${GPU_CHECK_DEADLINE:-450}
NO_GATE=${GPU_CHECK_NO_GATE:-0}
export MLA_CUDA_DEVICE=cuda CI=true
[[ -f .gpu/commit ]] && export MLA_CUDA_COMMIT=${MLA_CUDA_COMMIT:-$(cat .gpu/commit)}
TAP=$ROOT/node_modules/.bin/tap
NCPU=$(nproc 2>/dev/null || echo 4)
FLASHMLA=$ROOT/.gpu/anchors/flashmla/bench_flashmla.sh
HOPPER_KERNELS=all  # after a failed smoke: hopper-wide (the few-rows kernel failed) or portable

ALL_PHASES=(env hopper tests demo primitives memcheck racecheck ceilings flashmla decode bench)
TABLE_PHASES=("${ALL_PHASES[@]}" profile)
declare -A BUDGET=([env]=20 [hopper]=20 [tests]=100 [demo]=20 [primitives]=30 [memcheck]=25 [racecheck]=25
  [ceilings]=35 [flashmla]=45 [decode]=140 [bench]=60 [rebuild]=150 [profile]=90)
KERNEL_TESTS="test/runtime.test.ts test/rope.test.ts test/rmsnorm.test.ts test/linear.test.ts test/decode.test.ts test/prefill.test.ts test/attention.test.ts test/demo.test.ts test/graph.test.ts test/fp8-cache.test.ts"
# The sanitizer subset: one small subtest per kernel family (tap --grep on top-level subtests).
SAN_FILES="test/decode.test.ts test/prefill.test.ts test/linear.test.ts test/rmsnorm.test.ts test/rope.test.ts"
SAN_GREP='variable query lengths|reused workspace|odd sizes, tails|rmsNorm vs reference|appendLatent vs reference.appendLatent'
# FlashMLA's grid (bench_flashmla.sh's default); our decode runs the same shapes.
DECODE_GRID="--b 128 --h 16,32,64,128 --sq 1,2 --sk 4096,8192,16384,32768 --grid decode.kernel=portable,hopper"

# ---- bookkeeping ---------------------------------------------------------------------------------
now() { date +%s; }
elapsed() { echo $(( $(now) - T0 )); }
phase_start() { PHASE=$1; PSTART=$(now); printf '== %-10s start at %3ss (budget %ss)\n' "$1" "$(elapsed)" "${T:-?}"; }
# record PHASE STATUS DETAIL [MORE-FILE]: one row of the table (+ optional detail lines).
record() {
  local p=$1 st=$2 det=$3 more=${4:-}
  local secs=$(( $(now) - ${PSTART:-$(now)} ))
  mkdir -p "$WORK/state"
  printf '%s\t%s\t%s\t%s\t%s\n' "$st" "$secs" "${T:-0}" "$det" "$RUN_ID" > "$WORK/state/$p"
  if [[ -n $more && -s $more ]]; then head -8 "$more" | cut -c1-150 > "$WORK/state/$p.more"; else rm -f "$WORK/state/$p.more"; fi
  printf -- '-- %-10s %-7s %4ss  %s\n' "$p" "$st" "$secs" "$det"
  tar -C "$WORK" -czf "$OUT/logs.tgz" . 2>/dev/null
}
# plan PHASE: sets T, the phase's timeout (its budget, cut to the deadline); false if no time.
plan() {
  local b=${BUDGET[$1]} left=$(( DEADLINE - $(elapsed) - 3 ))
  (( left < b )) && b=$left
  T=$b
  if (( b < 8 )); then PSTART=$(now); T=0; record "$1" SKIP "no time left before the ${DEADLINE}s deadline"; return 1; fi
}
status_of() { # exit code → status word
  case $1 in 0) echo PASS ;; 124|137) echo TIMEOUT ;; *) echo FAIL ;; esac
}
tap_counts() { # the last "# { total: .., pass: .. }" of a tap log, as "total 10, pass 9, fail 1"
  grep -E '^# \{ *total' "$1" 2>/dev/null | tail -1 | sed -E 's/^# \{ *//; s/ *\}$//; s/: / /g'
}
tap_failures() { # failing subtests (deepest first lines), for the table's detail lines
  grep -E '^ *not ok ' "$1" 2>/dev/null | grep -v '# TODO' | sed -E 's/^ +//; s/ # time=.*//' | head -8
}
tap_to() { echo $(( T > 20 ? T - 8 : T )); }   # tap's own per-file timeout, inside ours
is_json() { node -e "JSON.parse(require('fs').readFileSync(process.argv[1],'utf8'))" "$1" 2>/dev/null; }

# gates: the GPU phases fail at once, with the reason, where there is no usable GPU
need_gpu() {   # our addon on a usable GPU
  [[ $NO_GATE == 1 || ${GPU_OK:-0} == 1 ]] && return 0
  PSTART=$(now); T=0; record "$1" FAIL "no usable GPU (env: ${GPU_WHY%%:*})"; return 1
}
need_visible() {   # a GPU that nvidia-smi lists (FlashMLA and PyTorch do not need our addon)
  [[ $NO_GATE == 1 || ${GPU_VISIBLE:-0} == 1 ]] && return 0
  PSTART=$(now); T=0; record "$1" FAIL "no GPU (${GPU_VIS_WHY:-env did not run})"; return 1
}

# ---- env -----------------------------------------------------------------------------------------
probe() { # KEY<TAB>VALUE lines about the addon and the device (never hangs: timeout 20)
  timeout 20 node --input-type=module -e "
    const { cuda } = await import('./dist/index.js');
    const b = cuda.buildInfo(), s = cuda.deviceStatus();
    const p = (k, v) => console.log(k + '\t' + String(v ?? '').replace(/\s+/g, ' '));
    p('loaded', b.addonLoaded ? 1 : 0); p('addonError', b.addonError); p('cuda', b.compiledWithCuda ? 1 : 0);
    p('emulated', b.emulated ? 1 : 0); p('archs', b.cudaArchitectures); p('nvcc', b.nvccVersion);
    p('ok', s.ok ? 1 : 0); p('why', s.code + ': ' + s.message);
    p('driver', cuda.versionString(s.driverVersion)); p('runtime', cuda.versionString(s.runtimeVersion));
    if (s.ok) { const d = cuda.deviceInfo(0); p('name', d.name); p('cc', d.computeCapability);
      p('supported', d.supportedByBuild ? 1 : 0); p('sms', d.smCount); }
  " 2>&1
}
declare -A P
read_probe() {
  P=()
  local out k v
  out=$(probe); local rc=$?
  while IFS=$'\t' read -r k v; do [[ -n $k && $k != *' '* ]] && P[$k]=$v; done <<< "$out"
  if [[ $rc != 0 || -z ${P[loaded]:-} ]]; then P[loaded]=0; P[addonError]="probe failed (exit $rc): $(echo "$out" | grep -m1 -iE 'error|cannot' | cut -c1-160)"; fi
}
phase_env() {
  T=${BUDGET[env]}; phase_start env
  local notes=() smi
  if smi=$(timeout 10 nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1) \
      && [[ -n $smi ]]; then
    GPU_VISIBLE=1; GPU_CC=$(echo "$smi" | head -1 | cut -d, -f2 | tr -d ' .')
    timeout 10 nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
  else
    command -v nvidia-smi >/dev/null || smi="not found"
    GPU_VISIBLE=0; GPU_VIS_WHY="nvidia-smi: $(echo "${smi:-lists no GPU}" | head -1 | cut -c1-120)"
    echo "$GPU_VIS_WHY" > "$WORK/nvidia-smi.txt"
  fi
  { echo "node $(node --version 2>&1)"; nvcc --version 2>&1 | tail -1; compute-sanitizer --version 2>&1 | head -2;
    python3 --version 2>&1; uname -a; echo "commit ${MLA_CUDA_COMMIT:-?}"; } > "$WORK/versions.txt" 2>&1
  if ! command -v node >/dev/null; then
    GPU_OK=0; GPU_WHY="node not found: source .gpu/setup.sh first"; record env FAIL "$GPU_WHY"; return
  fi
  if [[ ! -f dist/cli/main.js ]]; then   # dist travels with the call; compile it only if it did not
    notes+=("dist/ missing: compiled on the device")
    timeout 90 "$ROOT/node_modules/.bin/tsc" -p tsconfig.build.json > "$WORK/tsc.log" 2>&1 || notes+=("tsc FAILED")
  fi
  # The addon built here for sm_90 (scripts/gpu-prepare.sh) is used when it travelled.
  if [[ -z ${MLA_CUDA_ADDON:-} && -f build/gpu/mla_cuda.node ]]; then
    export MLA_CUDA_ADDON=$ROOT/build/gpu/mla_cuda.node ADDON_FROM=carried
    [[ -f build/gpu/emulator/mla_cuda_emulator.node ]] && export MLA_CUDA_EMULATOR_ADDON=$ROOT/build/gpu/emulator/mla_cuda_emulator.node
  fi
  ADDON_FROM=${ADDON_FROM:-build/Release}
  read_probe
  # Fallback: rebuild on the device only when the carried addon cannot run on the GPU there.
  if [[ $GPU_VISIBLE == 1 ]] && [[ ${P[loaded]} != 1 || ${P[cuda]:-0} != 1 || ${P[supported]:-1} != 1 ]]; then
    local why="${P[addonError]:-}${P[archs]:+archs ${P[archs]}}"
    notes+=("carried addon unusable (${why:0:100}); rebuilt for sm_${GPU_CC:-90}")
    local bt=${BUDGET[rebuild]} left=$(( DEADLINE - $(elapsed) - 60 ))
    (( left < bt )) && bt=$left
    if (( bt > 30 )) && CUDAARCHS=${GPU_CC:-90} MLA_CUDA_EMULATOR=0 MLA_CUDA_OUT_DIR=$ROOT/build/device \
        CMAKE_BUILD_PARALLEL_LEVEL=$NCPU timeout -k 5 "$bt" node scripts/build-native.mjs > "$WORK/rebuild.log" 2>&1; then
      export MLA_CUDA_ADDON=$ROOT/build/device/mla_cuda.node; ADDON_FROM="rebuilt on the device"
      read_probe
    else
      notes+=("rebuild FAILED or no time (rebuild.log)")
    fi
  fi
  timeout 15 node dist/cli/main.js doctor > "$WORK/doctor.txt" 2>&1
  DEVICE_LINE="${P[name]:-no device} sm_${P[cc]:-?} ${P[sms]:+${P[sms]} SMs, }driver ${P[driver]:-?}; addon ${ADDON_FROM} (archs ${P[archs]:-?}); commit ${MLA_CUDA_COMMIT:-?}"
  if [[ ${P[loaded]} != 1 ]]; then GPU_OK=0; GPU_WHY="addon does not load: ${P[addonError]:-?}"
  elif [[ ${P[cuda]} != 1 ]]; then GPU_OK=0; GPU_WHY="the addon was built without CUDA"
  elif [[ ${P[emulated]} == 1 ]]; then GPU_OK=0; GPU_WHY="the emulated device is loaded, not the GPU"
  elif [[ ${P[ok]} != 1 ]]; then GPU_OK=0; GPU_WHY="${P[why]:-?}"
  elif [[ ${P[supported]} != 1 ]]; then GPU_OK=0; GPU_WHY="addon archs ${P[archs]} do not run on sm_${P[cc]}"
  else GPU_OK=1; GPU_WHY=""; fi
  GPU_WHY=${GPU_WHY:0:160}
  echo "$DEVICE_LINE" > "$WORK/state/device"
  local note; note=$(IFS=';'; echo "${notes[*]:-}")
  if [[ $GPU_OK == 1 ]]; then record env PASS "${P[name]} sm_${P[cc]}, addon ${ADDON_FROM} ${P[archs]}${note:+; $note}"
  else record env FAIL "$GPU_WHY${note:+; $note}"; fi
}

# ---- the sm_90a decode kernel, alone and first ---------------------------------------------------
# A misread wgmma/TMA rule can hang it (an mbarrier phase that never completes): seconds here,
# then every later phase runs the portable kernel only, instead of timing out one after another.
phase_hopper() {
  need_gpu hopper && plan hopper || return; phase_start hopper
  timeout -k 5 "$T" node scripts/hopper-smoke.mjs > "$WORK/hopper.txt" 2>&1
  local rc=$? fallback=portable last
  if [[ $rc == 2 ]]; then record hopper SKIP "$(tail -1 "$WORK/hopper.txt" | cut -c1-140)"; return; fi
  if [[ $rc != 0 ]]; then
    # The few-rows kernel wrong, or hung right after a good 64-row run: the 64-row one alone, in
    # a fresh process (a fault loses the context), and the later phases on it if it passes.
    last=$(tail -1 "$WORK/hopper.txt")
    if grep -q 'failed kernel: hopper)$' "$WORK/hopper.txt" || [[ $rc == 124 && $last == *" hopper-wide: out rel err"* && $last != *WRONG* ]]; then
      MLA_SMOKE_KERNELS=hopper-wide timeout -k 5 20 node scripts/hopper-smoke.mjs > "$WORK/hopper-wide.txt" 2>&1 && fallback=hopper-wide
    fi
    HOPPER_KERNELS=$fallback
    local ks=portable
    [[ $fallback == hopper-wide ]] && ks=portable,hopper-wide
    export MLA_CUDA_DECODE_KERNEL=$fallback MLA_TEST_DECODE_KERNELS=$ks
    DECODE_GRID=${DECODE_GRID/decode.kernel=portable,hopper/decode.kernel=$ks}
  fi
  # The summary line, and the first wrong case (hopper.txt in logs.tgz has the localization).
  local det; det="$(tail -1 "$WORK/hopper.txt"; grep -m1 -E 'WRONG|FAILED' "$WORK/hopper.txt")"
  det=$(tr '\n' ';' <<< "$det" | sed 's/;$//' | cut -c1-200)
  (( rc != 0 )) && det="$det; the later phases run the $fallback kernel (and the portable one)"
  record hopper "$(status_of $rc)" "${det:-no output (exit $rc)}"
}

# ---- tests ---------------------------------------------------------------------------------------
phase_tests() {
  need_gpu tests && plan tests || return; phase_start tests
  [[ -x $TAP ]] || { record tests FAIL "tap not found ($TAP): source .gpu/setup.sh first"; return; }
  local jobs=$(( NCPU < 8 ? NCPU : 8 ))
  timeout -k 5 "$T" "$TAP" --reporter=tap --disable-coverage --jobs="$jobs" --timeout=$(tap_to) $KERNEL_TESTS \
    > "$WORK/tests.log" 2>&1
  local rc=$? st counts nogpu
  st=$(status_of $rc); counts=$(tap_counts "$WORK/tests.log")
  nogpu=$(grep -c '# SKIP no usable CUDA device' "$WORK/tests.log")
  (( nogpu > 0 )) && [[ $st == PASS ]] && st=FAIL
  tap_failures "$WORK/tests.log" > "$WORK/tests.failures"
  for f in $KERNEL_TESTS; do   # files a timeout cut short
    grep -qE "^(not )?ok [0-9]+ - $f" "$WORK/tests.log" || echo "unfinished: $f" >> "$WORK/tests.failures"
  done
  local ongpu; ongpu=$(grep -c '# kernel tests run on GPU' "$WORK/tests.log")
  record tests "$st" "${counts:-no tap summary (exit $rc)}; files on the GPU $ongpu; GPU tests skipped for want of a device: $nogpu" "$WORK/tests.failures"
}

phase_demo() {
  need_gpu demo && plan demo || return; phase_start demo
  timeout -k 5 "$T" node dist/cli/main.js demo --backend gpu > "$WORK/demo.txt" 2>&1
  local rc=$?
  grep -E '^(prefill|decode) ' "$WORK/demo.txt" > "$WORK/demo.steps"
  record demo "$(status_of $rc)" "$(grep -vE '^\s*$' "$WORK/demo.txt" | tail -1 | cut -c1-140)" "$WORK/demo.steps"
}

# ---- PTX conformance: the GPU, and the emulated device against it, bit for bit ------------------
phase_primitives() {
  need_gpu primitives && plan primitives || return; phase_start primitives
  rm -f "$WORK"/primitives-*.json
  local emu=${MLA_CUDA_EMULATOR_ADDON:-$ROOT/build/Release/emulator/mla_cuda_emulator.node} erc=none
  if [[ -f $emu ]]; then   # the emulated run needs no GPU: alongside the GPU run
    ( MLA_CUDA_DEVICE=emulator MLA_PRIMITIVES_DUMP="$WORK/primitives-emu.json" timeout -k 5 "$T" \
        "$TAP" --reporter=tap --disable-coverage --timeout=$(tap_to) test/primitives.test.ts > "$WORK/primitives-emu.log" 2>&1
      echo $? > "$WORK/primitives-emu.rc" ) &
  fi
  MLA_CUDA_DEVICE=cuda MLA_PRIMITIVES_DUMP="$WORK/primitives-gpu.json" timeout -k 5 "$T" \
    "$TAP" --reporter=tap --disable-coverage --timeout=$(tap_to) test/primitives.test.ts > "$WORK/primitives-gpu.log" 2>&1
  local rc=$?
  wait
  [[ -f $WORK/primitives-emu.rc ]] && erc=$(cat "$WORK/primitives-emu.rc")
  local st counts cmp
  st=$(status_of $rc); counts=$(tap_counts "$WORK/primitives-gpu.log")
  tap_failures "$WORK/primitives-gpu.log" > "$WORK/primitives.failures"
  if [[ ! -s $WORK/primitives-gpu.json ]]; then
    cmp="no GPU dump to compare"; st=FAIL
  elif [[ ! -f $emu ]]; then
    cmp="no emulator addon: GPU only"
  elif [[ ! -s $WORK/primitives-emu.json ]]; then
    cmp="emulator run wrote no dump (exit $erc)"; st=FAIL
  elif cmp -s "$WORK/primitives-gpu.json" "$WORK/primitives-emu.json"; then
    cmp="emulator = GPU bit for bit"
  else
    local n; n=$(diff "$WORK/primitives-gpu.json" "$WORK/primitives-emu.json" | grep -c '^<')
    cmp="emulator DIFFERS from the GPU in $n outputs"; st=FAIL
    diff "$WORK/primitives-gpu.json" "$WORK/primitives-emu.json" | grep '^<' | cut -d'"' -f2 | head -6 | sed 's/^/differs: /' >> "$WORK/primitives.failures"
  fi
  record primitives "$st" "GPU ${counts:-no tap summary (exit $rc)}; $cmp" "$WORK/primitives.failures"
}

# ---- compute-sanitizer ---------------------------------------------------------------------------
phase_sanitizer() { # memcheck | racecheck
  local tool=$1
  need_gpu "$tool" && plan "$tool" || return; phase_start "$tool"
  if ! command -v compute-sanitizer >/dev/null; then record "$tool" SKIP "compute-sanitizer is not installed"; return; fi
  if [[ -f $WORK/sanitizer-refused ]]; then record "$tool" SKIP "not run: $(cat "$WORK/sanitizer-refused")"; return; fi
  local log=$WORK/sanitizer-$tool.log
  timeout -k 5 "$T" compute-sanitizer --tool "$tool" --target-processes all --print-limit 10 \
    "$TAP" --reporter=tap --disable-coverage --jobs=5 --timeout=$(tap_to) --grep="$SAN_GREP" $SAN_FILES > "$log" 2>&1
  local rc=$? st errors procs counts refused
  st=$(status_of $rc)
  errors=$(grep -oE 'ERROR SUMMARY: [0-9]+' "$log" | awk '{s += $3} END {print s + 0}')
  procs=$(grep -c 'ERROR SUMMARY' "$log")
  counts=$(tap_counts "$log")
  refused=$(grep -m1 -iE 'Device not supported|Internal Sanitizer Error|Sanitizer is not supported|Unable to (initialize|connect)|error 999|unknown error' "$log" | sed 's/^=* *//' | cut -c1-120)
  {
    # racecheck: which kernels the reports name (the conformance kernel's named-barrier and
    # mbarrier hand-overs are two kernels, mbarrierKernel<0> and <1>, to tell the tool's view apart).
    [[ $tool == racecheck ]] && grep -E 'Race reported between' "$log" | grep -oE '[A-Za-z0-9_]+Kernel(<[^>]*>)?\(' | sed 's/($//' \
      | sort | uniq -c | sort -rn | awk '{printf "%s%s x%s", (NR > 1 ? ", " : "reports by kernel: "), $2, $1} END {if (NR) print ""}'
    grep -E '^=+ +(Invalid|Race|Error|Warning|.*[Hh]azard|Program hit|Uninitialized|Address)' "$log" \
      | sed -E 's/^=+ +//; s/0x[0-9a-f]+/0x../g' | sort | uniq -c | sort -rn | head -6
  } > "$WORK/$tool.summary"
  if [[ -n $refused && $errors == 0 ]]; then
    echo "$tool refused: $refused" > "$WORK/sanitizer-refused"
    record "$tool" SKIP "the sanitizer refused this machine: $refused"; return
  fi
  local ran nogpu note=""
  ran=$(grep -E '^# \{ *total' "$log" | tail -1 | grep -oE 'pass: [0-9]+' | grep -oE '[0-9]+')
  nogpu=$(grep -c '# SKIP no usable CUDA device' "$log")
  (( errors > 0 )) && st=FAIL
  [[ $procs == 0 ]] && { st=FAIL; note="; no ERROR SUMMARY: the sanitizer did not finish"; }
  [[ ${ran:-0} == 0 || $nogpu -gt 0 ]] && { st=FAIL; note="$note; the subset did not run on the GPU ($nogpu GPU skips)"; }
  record "$tool" "$st" "$errors errors in $procs processes; subset ${counts:-no tap summary (exit $rc)}$note" "$WORK/$tool.summary"
}

# ---- timings: ceilings, FlashMLA, our decode on its shapes, the rest ----------------------------
phase_ceilings() {
  need_visible ceilings && plan ceilings || return; phase_start ceilings
  rm -f "$OUT/torch-ceilings.json"
  PYTHONUNBUFFERED=1 timeout -k 5 "$T" python3 bench/torch_ceilings.py > "$WORK/torch-ceilings.json" 2> "$WORK/torch-ceilings.err"
  local rc=$?
  if [[ $rc == 0 ]] && is_json "$WORK/torch-ceilings.json"; then
    cp "$WORK/torch-ceilings.json" "$OUT/torch-ceilings.json"
    record ceilings PASS "$(node -e "const c=require('$OUT/torch-ceilings.json'); console.log('copy ' + c.bandwidthTBs.toFixed(2) + ' TB/s, bf16 matmul ' + c.matmulTFlops.toFixed(0) + ' TFLOP/s (torch ' + c.torch + ')')")"
  else
    record ceilings "$(status_of $(( rc == 0 ? 1 : rc )))" "torch_ceilings.py exit $rc: $(grep -vE '^\s*$' "$WORK/torch-ceilings.err" | tail -1 | cut -c1-120)"
  fi
}

phase_flashmla() {
  need_visible flashmla && plan flashmla || return; phase_start flashmla
  [[ -f $FLASHMLA ]] || { record flashmla FAIL "anchor not carried ($FLASHMLA): run scripts/gpu-prepare.sh, carry .gpu"; return; }
  rm -f "$OUT/flashmla.jsonl"
  chmod +x "${FLASHMLA%/*}/bench_flashmla" 2>/dev/null   # in case the transfer dropped the mode
  timeout -k 5 "$T" bash "$FLASHMLA" "$OUT/flashmla.jsonl" > "$WORK/flashmla.log" 2>&1
  local rc=$? st checks pass perf
  st=$(status_of $rc)
  checks=$(grep -c '"check"' "$OUT/flashmla.jsonl" 2>/dev/null); pass=$(grep -c '"pass":true' "$OUT/flashmla.jsonl" 2>/dev/null)
  perf=$(grep -c '"us":' "$OUT/flashmla.jsonl" 2>/dev/null); perf=${perf:-0}
  local why=""
  case $rc in 1) why="; a correctness check FAILED" ;; 3) why="; no CUDA device" ;; 4) why="; not an sm_90 GPU" ;; 0|124|137) ;; *) why="; exit $rc" ;; esac
  grep -iE 'error|fail|device' "$WORK/flashmla.log" | head -3 > "$WORK/flashmla.notes"
  record flashmla "$st" "checks ${pass:-0}/${checks:-0} pass, $perf/32 shapes timed$why" "$WORK/flashmla.notes"
}

ceiling_args() { # the best ceilings file there is: PyTorch's, else an earlier report
  if [[ -s $OUT/torch-ceilings.json ]]; then echo "--ceilings-file $OUT/torch-ceilings.json"
  elif [[ -n ${1:-} && -s $1 ]] && is_json "$1"; then echo "--ceilings-file $1"; fi
}
bench_counts() { # JSON report → "N cases, E errors"; else the progress lines of the log
  if [[ -s $1 ]] && is_json "$1"; then
    node -e "const r=require('$1').results; const e=r.filter(x=>x.error); console.log(r.length+' cases, '+e.length+' errors'+(e.length?' (first: '+e[0].name+': '+String(e[0].error).slice(0,80)+')':''))"
  else
    local last; last=$(grep -m1 '^mla-cuda bench:' "$2" || grep -vE '^\s*$' "$2" | tail -1)
    echo "no JSON report; $(grep -cE '^\[[0-9]+/[0-9]+\] .*µs' "$2") cases timed; ${last:0:120}"
  fi
}
phase_decode() {
  need_gpu decode && plan decode || return; phase_start decode
  rm -f "$OUT/decode.json"
  timeout -k 5 "$T" node dist/cli/main.js bench decode $DECODE_GRID $(ceiling_args) --json "$OUT/decode.json" > "$WORK/decode.txt" 2>&1
  local rc=$?
  # FlashMLA's `us` leaves its scheduler metadata out (made once per shape): the same calls on a
  # plan made once (decode's plan 'reuse'), Hopper kernel (portable if Hopper failed its smoke).
  local reuse=${DECODE_GRID/decode.kernel=portable,/decode.kernel=} left
  rm -f "$OUT/decode-reuse.json"
  left=$(( T - ($(now) - PSTART) ))
  if (( left > 15 )); then
    timeout -k 5 "$left" node dist/cli/main.js bench decode $reuse --grid decode.plan=reuse $(ceiling_args) --json "$OUT/decode-reuse.json" > "$WORK/decode-reuse.txt" 2>&1
    local rc2=$?
    (( rc == 0 )) && rc=$rc2
  fi
  # Programmatic dependent launch of main and combine (MLA_CUDA_PDL, off by default until
  # measured): H 16 and 128, s_k 4096, plan reused, off and on (decode-pdl.json in logs.tgz).
  rm -f "$WORK/decode.notes"
  left=$(( T - ($(now) - PSTART) ))
  if (( left > 10 )); then
    timeout -k 5 "$left" node dist/cli/main.js bench decode --b 128 --h 16,128 --sq 1 --sk 4096 --grid "decode.kernel=${reuse##*decode.kernel=}" \
      --grid decode.plan=reuse --grid decode.pdl=off,on $(ceiling_args) --json "$WORK/decode-pdl.json" > "$WORK/decode-pdl.txt" 2>&1
    node -e '
      const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).results.filter((c) => c.run);
      for (const h of [16, 128]) {
        const us = (p) => r.find((c) => c.params.h === h && c.params.pdl === p)?.run.us.median;
        const off = us(false), on = us(true);
        if (off && on) console.log(`pdl h${h}: ${off.toFixed(1)} us off, ${on.toFixed(1)} us on (${(on - off).toFixed(1)})`);
      }
    ' "$WORK/decode-pdl.json" > "$WORK/decode.notes" 2>/dev/null
  fi
  # The Hopper path's few-rows kernel (its choice for s_q·H <= 32, not yet measured) against its
  # 64-row kernel forced ('hopper-wide') in one call: H 16, s_q 1 and 2, s_k 4k and 32k, plan
  # reused; main kernel and whole call (decode-rows.json in logs.tgz).
  left=$(( T - ($(now) - PSTART) ))
  if [[ $HOPPER_KERNELS == all ]] && (( left > 10 )); then
    timeout -k 5 "$left" node dist/cli/main.js bench decode --b 128 --h 16 --sq 1,2 --sk 4096,32768 --grid decode.kernel=hopper,hopper-wide \
      --grid decode.plan=reuse $(ceiling_args) --json "$WORK/decode-rows.json" > "$WORK/decode-rows.txt" 2>&1
    node -e '
      const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).results.filter((c) => c.run);
      const f = (c) => c ? `${c.run.us.median.toFixed(1)} us (${c.run.pctBandwidth.toFixed(0)} % of copy), main ${c.main ? c.main.us.median.toFixed(1) : "?"} us` : "-";
      for (const sq of [1, 2]) for (const sk of [4096, 32768]) {
        const at = (k) => r.find((c) => c.params.sq === sq && c.params.sk === sk && c.params.kernel === k);
        if (at("hopper") || at("hopper-wide")) console.log(`h16 sq${sq} sk${sk}: few-rows ${f(at("hopper"))}; 64-row ${f(at("hopper-wide"))}`);
      }
    ' "$WORK/decode-rows.json" >> "$WORK/decode.notes" 2>/dev/null
  fi
  record decode "$(status_of $rc)" "$(bench_counts "$OUT/decode.json" "$WORK/decode.txt"); plan reused: $(bench_counts "$OUT/decode-reuse.json" "$WORK/decode-reuse.txt")" "$WORK/decode.notes"
}
phase_bench() {
  need_gpu bench && plan bench || return; phase_start bench
  rm -f "$OUT/bench-quick.json" "$OUT/roofline.svg"
  # The layer at batch 1, 8 and 64 (issue 17): eager step vs graph, device µs and host µs per step.
  timeout -k 5 "$T" node dist/cli/main.js bench prefill rope linear layer copy --quick --grid layer.b=1,8,64 \
    $(ceiling_args "$OUT/decode.json") --json "$OUT/bench-quick.json" --svg "$OUT/roofline.svg" > "$WORK/bench.txt" 2>&1
  local rc=$?
  # Host cost per op, eager step vs graph launch (issue 17); a few seconds, logged in logs.tgz.
  timeout -k 5 60 node scripts/host-overhead.mjs --json "$WORK/host-overhead.json" > "$WORK/host-overhead.txt" 2>&1
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    for (const c of r.results.filter((c) => c.suite === "layer" && c.run && ["step", "graph"].includes(c.params.stage)))
      console.log(`${c.name}: ${c.run.us.median.toFixed(1)} us device, ${c.hostUs ? c.hostUs.median.toFixed(1) : "-"} us host per call (${c.hold ?? "-"})`);
  ' "$OUT/bench-quick.json" > "$WORK/bench.notes" 2>/dev/null
  record bench "$(status_of $rc)" "$(bench_counts "$OUT/bench-quick.json" "$WORK/bench.txt")" "$WORK/bench.notes"
}

# One call (plan, main kernel, combine) per kernel and shape under Nsight Compute: the first
# three matching launches are the bench's check (a small decode), skipped; the next three are the
# setup's full call. --no-hold: ncu serializes launches, so a held stream would wait out its hold.
phase_profile() {
  need_gpu profile && plan profile || return; phase_start profile
  command -v ncu > /dev/null || { record profile FAIL "ncu is not on the PATH"; return; }
  local kernels="hopper portable" rc=0 h k log det=()
  [[ $HOPPER_KERNELS == portable ]] && kernels=portable   # the hopper phase failed
  [[ $HOPPER_KERNELS == hopper-wide ]] && kernels="hopper-wide portable"
  for k in $kernels; do
    for h in 128 16; do
      log="$WORK/profile-$k-h$h.txt"
      timeout -k 5 $(( T / 4 )) ncu --clock-control none \
        -k "regex:$([[ $k == hopper* ]] && echo 'decodeMainSm90Kernel|decodeNarrowSm90Kernel' || echo decodeMainKernel)|decodePlanKernel|decodeCombineKernel" \
        --launch-skip 3 --launch-count 3 --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        --section WarpStateStats --section Occupancy --section LaunchStats \
        node dist/cli/main.js bench decode --b 128 --h $h --sq 1 --sk 8192 --grid decode.kernel=$k --warmup 1 --repeats 2 \
        --max-instances 1 --no-hold --bandwidth-tbs 3 --matmul-tflops 700 > "$log" 2>&1
      local r=$?; (( r != 0 )) && rc=$r
      det+=("$k h$h: $(awk '
        / Context [0-9]+, Stream / { n = ($0 ~ /decodePlanKernel/) ? "plan" : ($0 ~ /decodeCombineKernel/) ? "combine" : "main" }
        /^ *Duration / { d[n] = $NF " " $(NF-1) }
        /Compute \(SM\) Throughput/ { c[n] = $NF "%" }
        /^ *Memory Throughput / && $(NF-1) == "%" { m[n] = $NF "%" }
        END { if (!("main" in d)) { print "no report"; exit }
              printf "main %s (SM %s, mem %s), plan %s, combine %s\n", d["main"], c["main"], m["main"], ("plan" in d) ? d["plan"] : "-", ("combine" in d) ? d["combine"] : "-" }' "$log")")
    done
  done
  printf '%s\n' "${det[@]}" > "$WORK/profile.notes"
  record profile "$(status_of $rc)" "ncu, one call (plan, main, combine) per kernel and shape (logs: profile-*.txt)" "$WORK/profile.notes"
}

# ---- the comparison and the table ------------------------------------------------------------------
compare_decode() { # ours vs FlashMLA on the shapes both timed; headline rows, all rows to a file
  [[ -s $OUT/flashmla.jsonl ]] || return 0
  node - "$OUT/flashmla.jsonl" "$OUT/decode.json" "$WORK/decode.txt" "$WORK/decode-vs-flashmla.txt" "$OUT/decode-reuse.json" <<'JS' 2>&1
const fs = require('fs');
const [fm, ours, oursLog, full, oursReuse] = process.argv.slice(2);
const key = (b, sq, h, sk) => `b${b} sq${sq} h${h} sk${sk}`;
const theirs = new Map();
for (const line of fs.readFileSync(fm, 'utf8').split('\n')) {
  try { const r = JSON.parse(line); if (r.us !== undefined) theirs.set(key(r.b, r.s_q, r.h_q, r.s_k), r); } catch {}
}
// Ours per kernel (portable, hopper; 'auto' when the grid did not name one). After a failed
// smoke the Hopper column is the 64-row kernel's (hopper-wide).
const mine = { portable: new Map(), hopper: new Map(), auto: new Map() };
mine['hopper-wide'] = mine.hopper;
try {
  for (const r of JSON.parse(fs.readFileSync(ours, 'utf8')).results) {
    if (r.run) mine[r.params.kernel ?? 'auto']?.set(key(r.params.b, r.params.sq, r.params.h, r.params.sk), { us: r.run.us.median, main: r.main?.us.median, tbps: r.run.tbps });
  }
} catch {
  // no report (timed out?): the progress lines "[i/n] decode b128 h16 sq1 sk4096 bf16 hopper: 123 µs"
  try {
    for (const m of fs.readFileSync(oursLog, 'utf8').matchAll(/decode b(\d+) h(\d+) sq(\d+) sk(\d+) bf16( portable| hopper| hopper-wide)?: ([\d.]+) µs/g)) {
      mine[(m[5] ?? ' auto').trim()].set(key(m[1], m[3], m[2], m[4]), { us: Number(m[6]) });
    }
  } catch {}
}
// The calls on a plan made once (any kernel the reuse run timed), like FlashMLA's `us`.
const reused = new Map();
try {
  for (const r of JSON.parse(fs.readFileSync(oursReuse, 'utf8')).results) {
    if (r.run) reused.set(key(r.params.b, r.params.sq, r.params.h, r.params.sk), r.run.us.median);
  }
} catch {}
const f = (x, d = 1) => (x === undefined || x === null ? '-' : x.toFixed(d));
const rows = [];
for (const [k, t] of theirs) {
  const p = mine.portable.get(k) ?? mine.auto.get(k), h = mine.hopper.get(k), u = reused.get(k);
  if (!p && !h) continue;
  rows.push({ k, t, p, h, u, rp: p ? p.us / t.us : undefined, rh: h ? h.us / t.us : undefined, ru: u !== undefined ? u / t.us : undefined });
}
if (rows.length === 0) { console.log(`decode vs FlashMLA: no shape timed by both (FlashMLA ${theirs.size}, ours ${mine.portable.size + mine.hopper.size + mine.auto.size})`); process.exit(0); }
const head = 'shape                    portable us  hopper us  reused us  FlashMLA us  port/FM  hop/FM  reu/FM | hopper TB/s  FM TB/s';
const line = (x) => `${x.k.padEnd(24)} ${f(x.p?.us).padStart(11)} ${f(x.h?.us).padStart(10)} ${f(x.u).padStart(10)} ${f(x.t.us).padStart(12)} ${f(x.rp, 2).padStart(8)} ${f(x.rh, 2).padStart(7)} ${f(x.ru, 2).padStart(7)} | ${f(x.h?.tbps, 2).padStart(11)} ${f(x.t.gbps / 1000, 2).padStart(8)}`;
const gm = (xs) => Math.exp(xs.reduce((a, b) => a + Math.log(b), 0) / xs.length);
const sum = (name, xs) => xs.length ? `${name}/FlashMLA geomean ${gm(xs).toFixed(2)} (best ${Math.min(...xs).toFixed(2)}, worst ${Math.max(...xs).toFixed(2)})` : `${name}: none timed`;
const summary = `all ${rows.length} shapes: ${sum('portable', rows.flatMap((x) => x.rp ?? []))}; ${sum('hopper', rows.flatMap((x) => x.rh ?? []))}; ${sum('plan reused', rows.flatMap((x) => x.ru ?? []))}; ratio > 1 = ours slower`;
fs.writeFileSync(full, [head, ...rows.map(line), summary].join('\n') + '\n');
const headline = rows.filter((x) => /h(16|128) /.test(x.k) && /sk(4096|32768)$/.test(x.k));
console.log(`decode vs FlashMLA (same GPU, same call; b128, page 64, bf16, causal; us = whole call incl. combine; reused = our call on a plan made once, as FlashMLA's us leaves its metadata out):`);
console.log(head);
for (const x of headline.length ? headline : rows.slice(0, 8)) console.log(line(x));
console.log(summary);
JS
}
print_table() {
  local p st secs bud det rid total=0 bad=0 n=0
  {
    echo
    echo "==================== gpu-check summary ===================="
    echo "device: $(cat "$WORK/state/device" 2>/dev/null || echo '?')"
    printf '%-10s %-7s %9s  %s\n' phase status 'time/bud' detail
    for p in "${TABLE_PHASES[@]}"; do
      [[ -f $WORK/state/$p ]] || continue
      IFS=$'\t' read -r st secs bud det rid < "$WORK/state/$p"
      [[ $rid == "$RUN_ID" ]] || det="(earlier invocation) $det"
      [[ $bud == 0 ]] && bud=- || bud=${bud}s
      printf '%-10s %-7s %9s  %s\n' "$p" "$st" "${secs}s/${bud}" "$det"
      [[ -f $WORK/state/$p.more ]] && sed 's/^/             | /' "$WORK/state/$p.more"
      n=$((n + 1)); total=$((total + secs))
      [[ $st == PASS ]] || bad=$((bad + 1))
    done
    compare_decode
    echo "phases: $n run, $((n - bad)) passed, $bad not; ${total}s in phases, $(elapsed)s since start (deadline ${DEADLINE}s)"
    echo "files under \$OUT: $( (cd "$OUT" && ls; echo summary.txt) | sort -u | tr '\n' ' ')"
    if (( bad == 0 && n > 0 )); then echo "GPU CHECK: PASS"; else echo "GPU CHECK: NOT PASSED ($bad of $n phases)"; fi
  } > "$WORK/summary.txt"
  cp "$WORK/summary.txt" "$OUT/summary.txt"
  tar -C "$WORK" -czf "$OUT/logs.tgz" . 2>/dev/null
  cat "$WORK/summary.txt"
  (( bad == 0 && n > 0 ))
}

# ---- main ----------------------------------------------------------------------------------------
phases=("$@")
[[ ${#phases[@]} == 0 ]] && phases=(all)
todo=()
for ph in "${phases[@]}"; do
  case $ph in
    all) todo+=("${ALL_PHASES[@]}") ;;
    sanitize) todo+=(memcheck racecheck) ;;
    env|hopper|tests|demo|primitives|memcheck|racecheck|ceilings|flashmla|decode|bench|profile|summary) todo+=("$ph") ;;
    -h|--help|help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown phase $ph (all, env, hopper, tests, demo, primitives, sanitize, memcheck, racecheck, ceilings, flashmla, decode, bench, profile, summary)"; exit 2 ;;
  esac
done
if [[ " ${phases[*]} " == *" all "* ]]; then rm -rf "$WORK"; rm -f "$OUT"/{summary.txt,logs.tgz,torch-ceilings.json,flashmla.jsonl,decode.json,decode-reuse.json,bench-quick.json,roofline.svg}; fi
mkdir -p "$WORK/state"
echo "gpu-check: OUT=$OUT, logs in $WORK, deadline ${DEADLINE}s after $(date -u -d "@$T0" +%H:%M:%S 2>/dev/null || echo "$T0") (now +$(elapsed)s)"
if [[ " ${todo[*]} " != " summary " ]]; then
  # env first, always: the other phases need its findings (the addon to use, whether a GPU is there)
  phase_env
fi
for ph in "${todo[@]}"; do
  case $ph in
    env|summary) ;;
    hopper) phase_hopper ;;
    tests) phase_tests ;;
    demo) phase_demo ;;
    primitives) phase_primitives ;;
    memcheck|racecheck) phase_sanitizer "$ph" ;;
    ceilings) phase_ceilings ;;
    flashmla) phase_flashmla ;;
    decode) phase_decode ;;
    bench) phase_bench ;;
    profile) phase_profile ;;
  esac
done
print_table
