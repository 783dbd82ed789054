#!/usr/bin/env bash
# Prepares, on this machine (no GPU needed), everything one device call of scripts/gpu-check.sh
# needs, and prints the exact device-tool `run` invocation. Compiling here costs no device time.
#
#   bash scripts/gpu-prepare.sh [--force]      (after npm install; --force rebuilds the addon)
#
# 1. the addon for sm_90 only (CUDAARCHS=90) and the emulated-device addon, into build/gpu/
#    (its own CMake tree build/gpu/cmake, so build/Release and build/cmake, which other work
#    here uses, stay as they are); skipped when newer than every native source;
# 2. dist/ (tsc -p tsconfig.build.json);
# 3. .gpu/ (Node binary + node_modules, ../shared/gpu/pack.sh) when missing or stale;
# 4. FlashMLA's prebuilt decode benchmark copied to .gpu/anchors/flashmla (the device does not
#    get ../shared), and the commit to .gpu/commit (the device gets no .git);
# 5. checks: what travels stays under 64 MiB, gpu-check.sh reads nothing from ../shared, the
#    addon is sm_90 and loads here; then prints the invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${MLA_SHARED_DIR:-$ROOT/../shared}
force=0
[[ ${1:-} == --force ]] && force=1
say() { echo "[gpu-prepare] $*"; }
die() { echo "[gpu-prepare] ERROR: $*" >&2; exit 1; }
[[ -d node_modules ]] || die "run npm install first"

# ---- 1. the addons, sm_90 only ----------------------------------------------------------------
OUTDIR=$ROOT/build/gpu
addon=$OUTDIR/mla_cuda.node
emu=$OUTDIR/emulator/mla_cuda_emulator.node
stale=1
if [[ $force == 0 && -f $addon && -f $emu ]]; then
  newer=$(find csrc cmake CMakeLists.txt scripts/build-native.mjs package.json -newer "$addon" -type f 2>/dev/null | head -1)
  archs=$(node -e "try{process.stdout.write(require('$addon').buildInfo().cudaArchitectures)}catch(e){}" 2>/dev/null || true)
  if [[ -z $newer && $archs == 90* ]]; then stale=0; say "addon is current (sm $archs): $addon"; fi
fi
if [[ $stale == 1 ]]; then
  say "building the addon for sm_90 only into build/gpu (1-2 min on 2 cores)..."
  t=$(date +%s)
  CUDAARCHS=90 MLA_CUDA_REQUIRE=1 MLA_CUDA_OUT_DIR=$OUTDIR node scripts/build-native.mjs > build/gpu-build.log 2>&1 \
    || { tail -30 build/gpu-build.log; die "native build failed (build/gpu-build.log)"; }
  say "built in $(( $(date +%s) - t ))s: $(grep -E 'built .*(with CUDA|emulated)' build/gpu-build.log | sed 's/^\[mla-cuda\] //' | tr '\n' ';')"
fi
[[ -f $addon ]] || die "no $addon after the build"
[[ -f $emu ]] || say "WARNING: no emulated-device addon ($emu): the PTX conformance comparison will be GPU-only"
archs=$(node -e "process.stdout.write(require('$addon').buildInfo().cudaArchitectures)")
[[ $archs == 90* ]] || die "the addon's architectures are '$archs', expected sm_90 only"
glibc=$(objdump -T "$addon" "$emu" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)

# ---- 2. dist -------------------------------------------------------------------------------------
say "compiling the TypeScript (dist/)..."
npx tsc -p tsconfig.build.json || die "tsc failed"

# ---- 3. .gpu: node + node_modules ---------------------------------------------------------------
# pack.sh records /.gpu/ in .git/info/exclude and needs that folder (.gitignore has .gpu/ too).
mkdir -p "$(git rev-parse --git-path info)"
[[ -x $SHARED/gpu/pack.sh ]] || die "$SHARED/gpu/pack.sh not found (set MLA_SHARED_DIR)"
"$SHARED/gpu/pack.sh"
[[ -f .gpu/bundle.tar.xz && -f .gpu/setup.sh ]] || die ".gpu is incomplete"
rm -rf .gpu/bin   # an unpacked node here would travel twice

# ---- 4. anchors and commit ---------------------------------------------------------------------
rm -rf .gpu/anchors/flashmla
mkdir -p .gpu/anchors
cp -r "$SHARED/anchors/flashmla" .gpu/anchors/flashmla
chmod -R u+w .gpu/anchors
rm -rf .gpu/anchors/flashmla/src .gpu/anchors/flashmla/build   # sources of a rebuild, if any
[[ -x .gpu/anchors/flashmla/bench_flashmla && -f .gpu/anchors/flashmla/bench_flashmla.sh ]] || die "FlashMLA anchor incomplete"
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]] && commit="$commit-dirty"
echo "$commit" > .gpu/commit

# ---- 5. checks -----------------------------------------------------------------------------------
CARRY=(.gpu dist build/gpu/mla_cuda.node build/gpu/emulator/mla_cuda_emulator.node)
[[ -f $emu ]] || CARRY=(.gpu dist build/gpu/mla_cuda.node)
tree_bytes=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
carry_bytes=$(du -sb "${CARRY[@]}" | awk '{s+=$1} END {print s+0}')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
total=$((tree_bytes + carry_bytes))
say "sizes: working tree (tracked + untracked, not ignored) $(mib "$tree_bytes") MiB; carried $(mib "$carry_bytes") MiB:"
du -sb "${CARRY[@]}" | awk '{printf "[gpu-prepare]     %7.1f MiB  %s\n", $1 / 1048576, $2}'
say "total that travels: $(mib "$total") MiB of 64 MiB"
(( total < 62 * 1048576 )) || die "over the 64 MiB limit (keep 2 MiB of margin)"
if grep -nE '\.\./shared|/work/shared' scripts/gpu-check.sh | grep -v '^[0-9]*:#' ; then
  die "scripts/gpu-check.sh refers to ../shared at run time (the device does not get it)"
fi
say "gpu-check.sh reads nothing from ../shared; the anchors travel in .gpu/anchors/flashmla"
say "addon: sm $archs, needs up to ${glibc:-?} (FlashMLA's binary needs GLIBC_2.34); commit $commit"
bash -n scripts/gpu-check.sh || die "scripts/gpu-check.sh has a syntax error"

# ---- the invocation ------------------------------------------------------------------------------
cmd='export GPU_CHECK_T0=$(date +%s); source .gpu/setup.sh && bash scripts/gpu-check.sh all'
carry_json=$(printf '"%s", ' "${CARRY[@]}"); carry_json="[${carry_json%, }]"
cat <<EOF
[gpu-prepare] ready. One device call (about 7.5 min; the script stops itself by 450 s after GPU_CHECK_T0):
  run(
    command:   $cmd
    carry:     $carry_json
    timeout_s: 500
  )
[gpu-prepare] the table is printed last; under \$OUT: summary.txt, logs.tgz, torch-ceilings.json,
[gpu-prepare] flashmla.jsonl, decode.json, decode-reuse.json, bench-quick.json, roofline.svg (8 files).
EOF
