// Mutation testing of the emulated device (csrc/emu; test/emulator-mutation.test.ts): a textual
// mutation of a real kernel source, that one file recompiled with the emulator's own flags
// (build/cmake/compile_commands.json) and linked with every other object of the
// mla_cuda_emulator target (build/cmake/build.ninja) into a temporary addon, and a child
// process that runs one focused case of the op on it against the float64 reference.
// The same works on the ThreadSanitizer tree (build/sanitize-thread, TSAN_TREE): the mutant is
// then compiled -fsanitize=thread and the child's stderr carries TSan's reports (parseTsanReports).
import { execFile, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';

// ---- mutations --------------------------------------------------------------------------------

export type KernelFile = 'decode.cu' | 'decode_sm90.cu' | 'linear.cu' | 'prefill.cu';

/** One textual edit: `find` must occur exactly `count` times (default 1); occurrence `nth` is replaced. */
export interface Edit {
  find: string;
  replace: string;
  count?: number;
  nth?: number;
}

/**
 * How a mutant must be caught: an emulator fault whose message matches, a launch the emulated
 * runtime refuses (CUDA's launch rules) with a matching error, or a numeric failure.
 */
export type Detection = { fault: RegExp } | { launchRefused: RegExp } | { numeric: true };

export interface Mutant {
  /** Short id (temp directory name). */
  id: string;
  /** What the mutation does, in words. */
  title: string;
  file: KernelFile;
  edits: readonly Edit[];
  /** The harness case that exercises the mutated code. */
  run: HarnessCase;
  expect: Detection;
  /** Set where the emulator is known not to catch it: the gap, in words (tap `todo`). */
  todo?: string;
  /** A memory fault is caught by the signal handler, which knows the thread but not the line. */
  faultWithoutLine?: true;
  /**
   * Source text (once in the mutated source) of the statement the fault must name: its line is
   * checked in the fault's `file:line` (the site, where that is not the mutated line itself).
   */
  faultLine?: string;
  /**
   * Extra environment of the harness child, e.g. MLA_EMU_SHUFFLE=seed (the emulator runs the
   * threads of a block in a seeded random order) where the fixed order happens to hide the bug.
   */
  env?: Readonly<Record<string, string>>;
}

function occurrences(text: string, find: string): number[] {
  const at: number[] = [];
  if (find.length === 0) return at;
  for (let i = text.indexOf(find); i >= 0; i = text.indexOf(find, i + 1)) at.push(i);
  return at;
}

/**
 * The 1-based line of `text` in `source`, which must hold it exactly once (a mutant's expected
 * report line, named by its source text so that it follows edits of the kernel).
 */
export function lineOf(source: string, text: string, what: string): number {
  const at = occurrences(source, text);
  if (at.length !== 1) throw new Error(`${what}: ${JSON.stringify(text)} occurs ${at.length} time(s), expected 1: the kernel changed, update the mutant`);
  return source.slice(0, at[0]).split('\n').length;
}

/**
 * A kernel file as the mutants see it: its own `kernels/*_impl.cuh` headers (kernel code shared
 * with another op, e.g. decode.cu's with sparse.cu) inlined, so a mutation can reach them and the
 * recompiled copy still replaces the one object that includes them.
 */
export function kernelSource(root: string, file: KernelFile): string {
  const dir = join(root, 'csrc', 'kernels');
  return readFileSync(join(dir, file), 'utf8').replace(/^#include "kernels\/(\w+_impl\.cuh)"\n/gm,
    (_, header: string) => `${readFileSync(join(dir, header), 'utf8').replace(/^#pragma once\n/m, '')}\n`);
}

export interface Mutated {
  source: string;
  /** 1-based line of each edit (in the source as the earlier edits left it). */
  lines: number[];
}

/**
 * Applies a mutant's edits to the kernel source. Throws (naming the mutant and the text) when a
 * `find` text does not occur exactly the expected number of times, so a refactored kernel can
 * never turn a mutant silently into a no-op.
 */
export function applyEdits(source: string, m: Pick<Mutant, 'id' | 'file' | 'edits'>): Mutated {
  let out = source;
  const lines: number[] = [];
  for (const e of m.edits) {
    const at = occurrences(out, e.find);
    const want = e.count ?? 1;
    if (at.length !== want) {
      throw new Error(`mutant ${m.id}: ${JSON.stringify(e.find)} occurs ${at.length} time(s) in csrc/kernels/${m.file}, ` +
        `expected ${want}: the kernel changed, update the mutant's site`);
    }
    if (e.find === e.replace) throw new Error(`mutant ${m.id}: an edit that changes nothing`);
    const pos = at[e.nth ?? 0];
    if (pos === undefined) throw new Error(`mutant ${m.id}: occurrence ${e.nth ?? 0} of ${at.length}`);
    let same = 0;  // the edit's line is where find and replace first differ
    while (same < e.find.length && same < e.replace.length && e.find[same] === e.replace[same]) same++;
    lines.push(out.slice(0, pos + same).split('\n').length);
    out = out.slice(0, pos) + e.replace + out.slice(pos + e.find.length);
  }
  return { source: out, lines };
}

// ---- the emulator build tree ------------------------------------------------------------------

/** A CMake build tree of the emulator addon, and how to make one (for the skip reason). */
export interface EmulatorTree {
  /** Relative to the package root. */
  dir: string;
  /** The addon file the tree links (its build.ninja target's base name). */
  addonName: string;
  /** The command that builds the tree, quoted in skip reasons. */
  buildCommand: string;
  /** The -O level of the mutant objects, replacing the tree's (all of them); undefined keeps the tree's. */
  mutantOpt: string | undefined;
}

/**
 * Optimisation of the mutant objects. The harness cases run in well under a second either way
 * (the emulator's scheduler, compiled -O3 in the build's objects, dominates), while decode.cu and
 * linear.cu compile in ~2.5 s at -O0 against ~6 s at -O1 (2-core machine).
 */
export const MUTANT_OPT = '-O0';

/** The normal emulator (npm run build:native). */
export const EMULATOR_TREE: EmulatorTree = {
  dir: 'build/cmake',
  addonName: 'mla_cuda_emulator.node',
  buildCommand: 'npm run build:native, or cmake --build build/cmake --target mla_cuda_emulator',
  mutantOpt: MUTANT_OPT,
};

/**
 * The ThreadSanitizer emulator (cmake/emulator.cmake, MLA_EMU_SANITIZE=thread): only the kernel
 * wrappers are instrumented (-fsanitize=thread -O1 -g), the scheduler states CUDA's
 * happens-before edges (MLA_EMU_TSAN); the link has -fsanitize=thread. The mutants keep
 * -fsanitize=thread and -g but are -O0 like the normal tree's: decode.cu compiles in ~2.5 s
 * against ~8 s at -O1, and its harness case runs no slower (~3 s either way: the -O3 scheduler
 * and TSan's runtime dominate); every load and store then stays at its own source line.
 */
export const TSAN_TREE: EmulatorTree = {
  dir: 'build/sanitize-thread',
  addonName: 'mla_cuda_emulator_tsan.node',
  buildCommand: 'node node_modules/cmake-js/bin/cmake-js rebuild --out build/sanitize-thread --CDMLA_EMU_SANITIZE=thread --CDMLA_OUTPUT_DIR=$PWD/build/Sanitize',
  mutantOpt: MUTANT_OPT,
};

export interface EmulatorBuild {
  tree: EmulatorTree;
  /** The tree's directory: the compile commands' and link objects' working directory. */
  cwd: string;
  /** The emulator addon the build tree links (its existence is checked). */
  addon: string;
  /** Every object of the link, absolute, in link order. */
  objects: string[];
  linkFlags: string[];
  linkLibs: string[];
  /** argv of each kernel wrapper's compile, keyed by kernel file name. */
  compile: Map<string, { argv: string[]; object: string }>;
}

/** Splits a command line the way sh does for the quoting CMake writes (\" inside "…", '…'). */
export function splitCommand(cmd: string): string[] {
  const out: string[] = [];
  let cur = '';
  let has = false;
  let i = 0;
  while (i < cmd.length) {
    const c = cmd[i]!;
    if (c === ' ' || c === '\t' || c === '\n') {
      if (has) out.push(cur);
      cur = '';
      has = false;
      i++;
    } else if (c === '\\' && i + 1 < cmd.length) {
      cur += cmd[i + 1];
      has = true;
      i += 2;
    } else if (c === "'") {
      const end = cmd.indexOf("'", i + 1);
      if (end < 0) throw new Error(`unterminated ' in ${cmd}`);
      cur += cmd.slice(i + 1, end);
      has = true;
      i = end + 1;
    } else if (c === '"') {
      i++;
      while (i < cmd.length && cmd[i] !== '"') {
        if (cmd[i] === '\\' && i + 1 < cmd.length && '"\\$`'.includes(cmd[i + 1]!)) {
          cur += cmd[i + 1];
          i += 2;
        } else {
          cur += cmd[i];
          i++;
        }
      }
      if (i >= cmd.length) throw new Error(`unterminated " in ${cmd}`);
      has = true;
      i++;
    } else {
      cur += c;
      has = true;
      i++;
    }
  }
  if (has) out.push(cur);
  return out;
}

/** ninja's path list: spaces separate, `$ `, `$:` and `$$` escape. */
function splitNinjaPaths(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '$' && i + 1 < s.length) {
      cur += s[++i];
    } else if (c === ' ') {
      if (cur) out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  if (cur) out.push(cur);
  return out;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Reads a build tree's compile commands and link line of its emulator addon (the normal one
 * unless `tree` says otherwise). Returns the reason to skip (as a string) when this machine
 * cannot build mutants.
 */
export function locateEmulatorBuild(root: string, tree: EmulatorTree = EMULATOR_TREE): EmulatorBuild | string {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return `the emulated device is x86-64 Linux only (this is ${process.platform}/${process.arch})`;
  }
  const cwd = join(root, tree.dir);
  const ccPath = join(cwd, 'compile_commands.json');
  const ninjaPath = join(cwd, 'build.ninja');
  if (!existsSync(ccPath) || !existsSync(ninjaPath)) {
    return `no emulator build tree (${relative(root, ccPath)} / build.ninja missing): ${tree.buildCommand}`;
  }
  // The link: `build <dir>/<addon>: CXX_SHARED_LIBRARY_LINKER__… <objects> [| deps]`.
  const ninja = readFileSync(ninjaPath, 'utf8').split('\n');
  const linkRule = new RegExp(`[/ ]${escapeRegExp(tree.addonName)}: CXX_SHARED_LIBRARY_LINKER__`);
  const head = ninja.findIndex((l) => l.startsWith('build ') && linkRule.test(l));
  if (head < 0) return `${tree.dir}/build.ninja has no link of ${tree.addonName} (configured without the emulator?): ${tree.buildCommand}`;
  const line = ninja[head]!;
  const colon = line.indexOf(': CXX_SHARED_LIBRARY_LINKER__');
  const addon = splitNinjaPaths(line.slice('build '.length, colon))[0]!;
  const rest = line.slice(colon + 2).split(' | ')[0]!.split(' || ')[0]!;
  const objects = splitNinjaPaths(rest).slice(1).map((p) => (p.startsWith('/') ? p : join(cwd, p)));
  const vars = new Map<string, string>();
  for (let i = head + 1; i < ninja.length && ninja[i]!.startsWith('  '); i++) {
    const m = /^\s+(\w+) = (.*)$/.exec(ninja[i]!);
    if (m) vars.set(m[1]!, m[2]!);
  }
  const addonPath = addon.startsWith('/') ? addon : join(cwd, addon);
  if (!existsSync(addonPath)) return `the emulator addon is not built (${relative(root, addonPath)}): ${tree.buildCommand}`;
  const missing = objects.filter((o) => !existsSync(o));
  if (objects.length === 0 || missing.length > 0) {
    return `emulator objects missing (${missing.slice(0, 2).map((o) => relative(root, o)).join(', ')}…): ${tree.buildCommand}`;
  }
  const entries = JSON.parse(readFileSync(ccPath, 'utf8')) as Array<{ directory: string; file: string; command?: string; arguments?: string[]; output?: string }>;
  const compile = new Map<string, { argv: string[]; object: string }>();
  for (const e of entries) {
    const m = /[\\/]emu-sources[\\/](\w+)\.cc$/.exec(e.file);
    if (!m) continue;
    const argv = e.arguments ?? splitCommand(e.command ?? '');
    const oi = argv.indexOf('-o');
    const obj = oi >= 0 ? argv[oi + 1] : undefined;
    if (!obj) continue;
    const objAbs = obj.startsWith('/') ? obj : join(e.directory, obj);
    if (!objects.includes(objAbs)) continue;  // another target's wrapper (a sanitizer build)
    compile.set(`${m[1]!}.cu`, { argv, object: objAbs });
  }
  for (const k of ['decode.cu', 'decode_sm90.cu', 'linear.cu', 'prefill.cu']) {
    if (!compile.has(k)) return `${tree.dir}/compile_commands.json has no emulator compile of ${k} (reconfigure: ${tree.buildCommand})`;
  }
  const words = (k: string): string[] => splitCommand(vars.get(k) ?? '');
  return { tree, cwd, addon: addonPath, objects, linkFlags: words('LINK_FLAGS'), linkLibs: [...words('LINK_PATH'), ...words('LINK_LIBRARIES')], compile };
}

/**
 * The kernel's compile with the source replaced by `src` (compiled as C++, so a .cu copy works
 * and its #include "kernels/…" resolve through the same -I csrc), the object by `obj`, and the
 * tree's mutantOpt (MUTANT_OPT for the normal tree) for the build's -O levels.
 */
export function mutantCompileArgv(build: EmulatorBuild, file: KernelFile, src: string, obj: string): string[] {
  const entry = build.compile.get(file);
  if (!entry) throw new Error(`no compile command for ${file}`);
  const opt = build.tree.mutantOpt;
  const argv = opt === undefined ? [...entry.argv] : entry.argv.map((a) => (/^-O[0-3sgz]?$/.test(a) ? opt : a));
  const oi = argv.indexOf('-o');
  const ci = argv.indexOf('-c');
  if (oi < 0 || ci < 0 || ci + 1 >= argv.length) throw new Error(`unexpected compile command for ${file}: ${argv.join(' ')}`);
  argv[oi + 1] = obj;
  argv.splice(ci, 2, '-x', 'c++', '-c', src);
  return argv;
}

export interface Timed<T> {
  value: T;
  ms: number;
}

function run(argv: string[], cwd: string, timeoutMs: number): Promise<Timed<{ ok: boolean; output: string }>> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { cwd, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ value: { ok: !err, output: `${stdout}${stderr}${err && !stderr ? String(err) : ''}` }, ms: performance.now() - t0 });
    });
  });
}

export interface BuiltAddon {
  /** The linked addon, or undefined when compile or link failed (see `log`). */
  addon: string | undefined;
  log: string;
  compileMs: number;
  linkMs: number;
}

/** Writes `source` as dir/<file>, compiles it with the kernel's flags and links dir/mutant.node. */
export async function buildMutantAddon(build: EmulatorBuild, file: KernelFile, source: string, dir: string): Promise<BuiltAddon> {
  mkdirSync(dir, { recursive: true });
  const src = join(dir, file);
  const obj = join(dir, `${file}.o`);
  const addon = join(dir, 'mutant.node');
  writeFileSync(src, source);
  const entry = build.compile.get(file)!;
  const cc = await run(mutantCompileArgv(build, file, src, obj), build.cwd, 300_000);
  if (!cc.value.ok) return { addon: undefined, log: `compile failed:\n${cc.value.output}`, compileMs: cc.ms, linkMs: 0 };
  const objects = build.objects.map((o) => (o === entry.object ? obj : o));
  const linkArgv = [entry.argv[0]!, '-fPIC', '-shared', ...build.linkFlags, '-o', addon, ...objects, ...build.linkLibs];
  const ln = await run(linkArgv, build.cwd, 120_000);
  if (!ln.value.ok) return { addon: undefined, log: `link failed:\n${ln.value.output}`, compileMs: cc.ms, linkMs: ln.ms };
  return { addon, log: '', compileMs: cc.ms, linkMs: ln.ms };
}

// ---- the package's JS for the children --------------------------------------------------------

function newestMtime(dir: string, ext: string, out: Map<string, number>, base = dir): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newestMtime(p, ext, out, base);
    else if (e.name.endsWith(ext) && !e.name.endsWith('.d.ts')) out.set(relative(base, p).slice(0, -ext.length), statSync(p).mtimeMs);
  }
}

/** Why dist/ cannot serve the children (a lib/*.ts newer than its .js, or missing), or undefined. */
export function distStaleness(root: string): string | undefined {
  const dist = join(root, 'dist');
  if (!existsSync(join(dist, 'index.js'))) return 'dist/ is not built';
  const ts = new Map<string, number>();
  const js = new Map<string, number>();
  newestMtime(join(root, 'lib'), '.ts', ts);
  newestMtime(dist, '.js', js);
  for (const [name, mtime] of ts) {
    const built = js.get(name);
    if (built === undefined) return `dist/${name}.js is missing`;
    if (built < mtime) return `lib/${name}.ts is newer than dist/${name}.js`;
  }
  return undefined;
}

/**
 * A directory with the package's compiled JS: dist/ when it is current, else a private tsc build
 * into `scratch` (dist/ itself is left alone: others may be building it).
 */
export async function packageJs(root: string, scratch: string): Promise<Timed<{ dir: string; why: string | undefined; usable: boolean; log: string }>> {
  const why = distStaleness(root);
  if (why === undefined) return { value: { dir: join(root, 'dist'), why, usable: true, log: '' }, ms: 0 };
  const out = join(scratch, 'dist');
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = await run([process.execPath, tsc, '-p', join(root, 'tsconfig.build.json'), '--outDir', out, '--declaration', 'false', '--declarationMap', 'false', '--sourceMap', 'false'], root, 300_000);
  // tsc emits despite type errors (someone's edit in progress): usable if the JS is there.
  const usable = existsSync(join(out, 'index.js'));
  // ES modules outside the package: node needs the package's "type" next to them.
  if (usable) writeFileSync(join(out, 'package.json'), '{ "type": "module" }\n');
  return { value: { dir: out, why, usable, log: r.value.ok ? '' : r.value.output }, ms: r.ms };
}

// ---- the child: one harness case on one addon -------------------------------------------------

export type HarnessCase = 'decode' | 'decode-hopper' | 'decode-narrow' | 'linear' | 'prefill' | 'merge' | 'linear-skinny';
/** The cases the default mode's control runs (each mutant names its own). */
export const HARNESS_CASES: readonly HarnessCase[] = ['decode', 'decode-hopper', 'decode-narrow', 'linear', 'prefill', 'merge'];
/**
 * The TSan mode's control: also linear's skinny kernel (M <= 16), whose only shared memory is the
 * static `red` array of the cross-warp split-K reduction, a plain-access race site that no
 * emulator fault can see and that the default mode's tiled `linear` case does not reach.
 */
export const TSAN_HARNESS_CASES: readonly HarnessCase[] = [...HARNESS_CASES, 'linear-skinny'];

export interface HarnessResult {
  case: HarnessCase;
  /** The child's stderr (set by runHarness, not by the child): TSan's reports go there. */
  stderr?: string;
  /** The op threw an MlaError from an emulator fault ("faulted on the emulated device"). */
  faulted: boolean;
  /** Anything else went wrong (a harness bug, not a detection). */
  errored: boolean;
  message: string;
  /** Within the op's test tolerance. */
  pass: boolean;
  /** The headline error (relative error of out; see detail). */
  relError: number;
  detail: string;
  ms: number;
}

/**
 * The child's program. It runs as plain JS (its source text goes to a temp .mjs), so it must be
 * self-contained: no reference to anything outside this function but its type annotations.
 * Cases follow the ops' own tests (test/decode.test.ts, linear, prefill) at small sizes.
 */
export async function harnessMain(jsDir: string, which: string): Promise<void> {
  const lib: typeof import('../../lib/index.js') = await import(`${jsDir}/index.js`);
  const ref: typeof import('../../lib/reference/index.js') = await import(`${jsDir}/reference/index.js`);
  const util: typeof import('../../lib/reference/util.js') = await import(`${jsDir}/reference/util.js`);
  const { DeviceTensor } = lib;
  type Tensor = import('../../lib/index.js').DeviceTensor;
  const owned: Tensor[] = [];
  const randn = (n: number, seed: number, s = 1): Float32Array => Float32Array.from(util.randnArray(n, util.mulberry32(seed), s));
  const up = (data: Float32Array | Int32Array, shape: number[], dtype: 'bf16' | 'f16' | 'f32' | 'i32'): Tensor => {
    const x = DeviceTensor.fromArray(data, shape, dtype);
    owned.push(x);
    return x;
  };
  const keep = (x: Tensor): Tensor => {
    owned.push(x);
    return x;
  };
  // What the device holds after rounding to the dtype: the reference's inputs.
  const seen = (x: Tensor): Float64Array => Float64Array.from(x.toFloat32Sync());
  const poisoned = (shape: number[], dtype: 'bf16' | 'f16' | 'f32'): Tensor => keep(DeviceTensor.empty(shape, dtype).fill(Number.NaN));
  // y = x·Wᵀ, f32 out, against the float64 reference (the linear cases differ only in shape).
  const linearCase = (M: number, N: number, K: number, seed: number): Verdict => {
    const x = up(randn(M * K, seed), [M, K], 'bf16');
    const w = up(randn(N * K, seed + 1, 1 / Math.sqrt(K)), [N, K], 'bf16');
    const y = poisoned([M, N], 'f32');
    lib.linear(x, w, { out: y });
    const e = util.relError(y.toFloat32Sync(), ref.linear(seen(x), M, K, seen(w), N));
    return { pass: e < 1e-4, relError: e, detail: `rel err ${e.toExponential(2)} (tol 1e-4)` };
  };
  type Verdict = { pass: boolean; relError: number; detail: string };
  const decodeCase = (kernel: 'portable' | 'hopper' | 'hopper-wide', nanUnused: boolean): Verdict => {
    const B = 3, H = 16, ps = 64, D = 576, DV = 512, sQ = 2, seqLens = [300, 257, 320];
    const { table, maxPages, numPages } = ref.shuffledBlockTable(seqLens, ps, util.mulberry32(5));
    const tokens = B * sQ;
    const q = up(randn(tokens * H * D, 6, 0.5), [tokens, H, D], 'bf16');
    const data = randn(numPages * ps * D, 7);
    const clean = up(data, [numPages, ps, D], 'bf16');
    let cache = clean;
    if (nanUnused) {
      const used = new Uint8Array(numPages * ps);
      seqLens.forEach((L, b) => {
        for (let k = 0; k < L; k++) used[table[b * maxPages + Math.floor(k / ps)]! * ps + (k % ps)] = 1;
      });
      const poison = Float32Array.from(data);
      for (let row = 0; row < numPages * ps; row++) if (!used[row]) poison.fill(Number.NaN, row * D, (row + 1) * D);
      cache = up(poison, [numPages, ps, D], 'bf16');
    }
    const scale = 0.1352337788608801;
    // The reference reads only the rows below each length: the clean copy's (the same values).
    const want = ref.decode({ q: seen(q), cache: seen(clean), pageSize: ps, blockTable: table, seqLens, qSeqLens: sQ, numHeads: H, dimLatent: DV, headDim: D, scale, causal: true });
    const out = poisoned([tokens, H, DV], 'bf16');
    const lse = poisoned([tokens, H], 'f32');
    lib.decode({ q, cache, blockTable: up(table, [B, maxPages], 'i32'), seqLens: up(Int32Array.from(seqLens), [B], 'i32'), scale, causal: true, out, lse, kernel });
    const e = util.relError(out.toFloat32Sync(), want.out);
    const l = lse.toFloat32Sync();
    let lseBad = 0;
    for (let i = 0; i < want.lse.length; i++) {
      const w = want.lse[i]!;
      if (!(Math.abs(l[i]! - w) <= 2e-3 + 2e-3 * Math.abs(w))) lseBad++;
    }
    return { pass: e < 1e-2 && lseBad === 0, relError: e, detail: `out rel err ${e.toExponential(2)} (tol 1e-2), ${lseBad} lse mismatches` };
  };

  const cases: Record<string, () => Verdict> = {
    // test/decode.test.ts's pattern: shuffled pages, s_q = 2, causal; 3 requests of ~300 keys
    // split over several parts (combine kernel included).
    // The portable kernel (decode.cu's mutants): on the emulated sm_90 decode would take the Hopper path.
    decode: () => decodeCase('portable', false),
    // The same on the sm_90a 64-row kernel (decode_sm90.cu's mutants: wgmma, TMA, mbarrier),
    // forced (s_q·H = 32 would take the few-rows one), with every cache row no request reads (a
    // partial last page's rows past L, the unused pages) NaN, as in test/decode.test.ts's "NaN
    // past the lengths": a kernel that lets them reach P·V fails.
    'decode-hopper': () => decodeCase('hopper-wide', true),
    // The same on the sm_90a few-rows kernel (32 rows: its NR = 32 instance).
    'decode-narrow': () => decodeCase('hopper', true),
    // Tiled kernel (M > 16) with split-K (2 output tiles << SM count: 8 splits) and a K that is
    // no multiple of the 32-wide k-tile; f32 out.
    linear: () => linearCase(40, 256, 2040, 11),
    // The skinny kernel (M <= 16): K = 1000 is 16 chunks of 64, so 8 warps split each CTA's K
    // range (KW = 8, reduced through shared memory) and the CTAs split K again (workspace and
    // splitKReduce); N = 200 leaves a partial column block; rows 5-15 of the mma are padding.
    'linear-skinny': () => linearCase(5, 200, 1000, 21),
    // test/prefill.test.ts's kernel-alone case, smaller: a request with cached prefix (diagonal
    // offset) and one without; several 64-key tiles per CTA.
    prefill: () => {
      const Hh = 2, qLens = [70, 130], kLens = [200, 130];
      const Tq = 200, Tk = 330;
      const q = up(randn(Tq * Hh * 192, 7), [Tq, Hh, 192], 'bf16');
      const kn = up(randn(Tk * Hh * 128, 8), [Tk, Hh, 128], 'bf16');
      const kr = up(randn(Tk * 64, 9), [Tk, 64], 'bf16');
      const v = up(randn(Tk * Hh * 128, 10), [Tk, Hh, 128], 'bf16');
      const knS = seen(kn), krS = seen(kr);
      const k = new Float64Array(Tk * Hh * 192);
      for (let i = 0; i < Tk; i++) {
        for (let h = 0; h < Hh; h++) {
          k.set(knS.subarray((i * Hh + h) * 128, (i * Hh + h + 1) * 128), (i * Hh + h) * 192);
          k.set(krS.subarray(i * 64, (i + 1) * 64), (i * Hh + h) * 192 + 128);
        }
      }
      const scale = 0.08;
      const want = ref.mhaVarlen({ q: seen(q), k, v: seen(v), qSeqLens: qLens, kvSeqLens: kLens, numHeads: Hh, headDimQk: 192, headDimV: 128, scale, causal: true });
      const out = poisoned([Tq, Hh, 128], 'bf16');
      const lse = poisoned([Tq, Hh], 'f32');
      lib.prefillAttention({ q, kNope: kn, kRope: kr, v, qSeqLens: qLens, kvSeqLens: Int32Array.from(kLens), scale, out, lse });
      const eo = util.relError(out.toFloat32Sync(), want.out);
      const el = util.relError(lse.toFloat32Sync(), want.lse);
      return { pass: eo < 1e-2 && el < 1e-2, relError: eo, detail: `out rel err ${eo.toExponential(2)}, lse rel err ${el.toExponential(2)} (tol 1e-2)` };
    },
    // test/prefill.test.ts's mergeAttnStates vs float64.
    merge: () => {
      const R = 37, Hh = 3, D = 128;
      const out = up(randn(R * Hh * D, 11), [R, Hh, D], 'bf16');
      const part = up(randn(R * Hh * D, 12), [R, Hh, D], 'bf16');
      const lse = up(randn(R * Hh, 13, 3), [R, Hh], 'f32');
      const plse = up(randn(R * Hh, 14, 3), [R, Hh], 'f32');
      const o1 = seen(out), o2 = seen(part), l1 = seen(lse), l2 = seen(plse);
      const wantO = new Float64Array(R * Hh * D);
      const wantL = new Float64Array(R * Hh);
      for (let i = 0; i < R * Hh; i++) {
        const m = Math.max(l1[i]!, l2[i]!);
        const w1 = Math.exp(l1[i]! - m), w2 = Math.exp(l2[i]! - m);
        for (let d = 0; d < D; d++) wantO[i * D + d] = (o1[i * D + d]! * w1 + o2[i * D + d]! * w2) / (w1 + w2);
        wantL[i] = m + Math.log(w1 + w2);
      }
      lib.mergeAttnStates({ out, lse, part, partLse: plse });
      const eo = util.relError(out.toFloat32Sync(), wantO);
      const el = util.relError(lse.toFloat32Sync(), wantL);
      return { pass: eo < 1e-2 && el < 1e-5, relError: eo, detail: `out rel err ${eo.toExponential(2)} (tol 1e-2), lse rel err ${el.toExponential(2)} (tol 1e-5)` };
    },
  };

  const t0 = performance.now();
  const result = { case: which, faulted: false, errored: false, message: '', pass: false, relError: Number.NaN, detail: '', ms: 0 };
  try {
    const fn = cases[which];
    if (!fn) throw new Error(`unknown harness case ${which}`);
    if (!lib.cuda.buildInfo().emulated) {
      const st = lib.cuda.deviceStatus();
      throw new Error(`not running on the emulated device (${st.code}: ${st.message})`);
    }
    Object.assign(result, fn());
  } catch (err) {
    result.message = err instanceof Error ? err.message : String(err);
    const code = err instanceof lib.MlaError ? err.code : '';
    result.faulted = code === 'ERR_CUDA' && result.message.includes('faulted on the emulated device');
    result.errored = !result.faulted;
  } finally {
    for (const x of owned) {
      try {
        x.dispose();
      } catch {
        // after a fault the device is unusable; the result is what matters
      }
    }
  }
  result.ms = performance.now() - t0;
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

/** Writes the child program (harnessMain's own source) into dir; returns its path. */
export function writeHarness(dir: string): string {
  const path = join(dir, 'harness.mjs');
  writeFileSync(path, `// generated by test/helpers/mutants.ts\nconst main = ${harnessMain.toString()};\nawait main(process.argv[2], process.argv[3]);\n`);
  return path;
}

/**
 * Runs one harness case in a child on `addon` (MLA_CUDA_DEVICE=emulator), with `extraEnv` on top
 * (tsanChildEnv's LD_PRELOAD: only the child may preload libtsan, never tap itself).
 */
export function runHarness(harness: string, jsDir: string, addon: string, which: HarnessCase, timeoutMs = 90_000,
  extraEnv: Readonly<Record<string, string>> = {}): Promise<HarnessResult> {
  // A clean environment: not tap's loaders and coverage hooks (NODE_OPTIONS), no device choice
  // inherited from the parent.
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || k === 'NODE_OPTIONS' || k.startsWith('TAP') || k.startsWith('_TAPJS') || k.startsWith('MLA_')) continue;
    env[k] = v;
  }
  env['MLA_CUDA_DEVICE'] = 'emulator';
  env['MLA_CUDA_EMULATOR_ADDON'] = addon;
  Object.assign(env, extraEnv);
  const t0 = performance.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [harness, jsDir, which], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const line = stdout.trim().split('\n').pop() ?? '';
      try {
        resolve({ ...(JSON.parse(line) as HarnessResult), stderr });
      } catch {
        resolve({
          case: which, stderr, faulted: false, errored: true, pass: false, relError: Number.NaN, detail: '', ms: performance.now() - t0,
          message: `harness child exited ${signal ?? code} without a result${signal === 'SIGKILL' ? ` (killed after ${timeoutMs} ms)` : ''}: ${stderr.slice(-2000)}${stdout.slice(-500)}`,
        });
      }
    });
  });
}

// ---- ThreadSanitizer ---------------------------------------------------------------------------

/**
 * The child environment that loads a TSan-built addon into a plain node: libtsan preloaded (the
 * runtime must be first in the process; node itself is not built with it), reports for code
 * outside instrumented modules (node, V8) ignored, and every report printed rather than the first
 * ending the process. Returns the reason to skip when the compiler has no libtsan.
 */
export function tsanChildEnv(build: EmulatorBuild): Record<string, string> | string {
  const cxx = build.compile.get('decode.cu')?.argv[0] ?? 'g++';
  let lib = '';
  try {
    lib = execFileSync(cxx, ['-print-file-name=libtsan.so'], { encoding: 'utf8' }).trim();
  } catch (err) {
    return `${cxx} -print-file-name=libtsan.so failed: ${err instanceof Error ? err.message : String(err)}`;
  }
  // Unknown to the compiler, the name comes back bare.
  if (!lib.startsWith('/') || !existsSync(lib)) return `${cxx} has no libtsan.so (${lib || 'nothing printed'})`;
  return { LD_PRELOAD: lib, TSAN_OPTIONS: 'ignore_noninstrumented_modules=1 halt_on_error=0' };
}

export interface TsanFrame {
  fn: string;
  /** Source file and line where the symbolizer knew them. */
  file: string | undefined;
  line: number | undefined;
  /** The frame as printed, without its `#n`. */
  text: string;
}

export interface TsanAccess {
  /** `Write of size 4 at 0x… by thread T3`, `Previous read of size 16 …`. */
  what: string;
  frames: TsanFrame[];
}

export interface TsanReport {
  /** `data race`, `heap-use-after-free`, … (the WARNING line's kind). */
  kind: string;
  /** The conflicting accesses, current first (a data race has two). */
  accesses: TsanAccess[];
  text: string;
}

const TSAN_WARNING = /^WARNING: ThreadSanitizer: (.+?)(?: \(pid=\d+\))?$/;
const TSAN_ACCESS = /^ {2}((?:Previous )?(?:[Aa]tomic )?(?:[Rr]ead|[Ww]rite) of size \d+ .*?)(?: \(mutexes: .*\))?:$/;
const TSAN_FRAME_LINE = /^ {4}#\d+ (.*)$/;
// `fn path:line[:col] (module+0x…)`; the function name itself may contain spaces.
const TSAN_LOCATION = /^(.*?) (\S+?):(\d+)(?::\d+)? \([^()]*\)$/;

/** TSan's reports in a process's stderr, in order (halt_on_error=0 prints them all). */
export function parseTsanReports(stderr: string): TsanReport[] {
  const reports: TsanReport[] = [];
  let cur: TsanReport | undefined;
  let access: TsanAccess | undefined;
  for (const line of stderr.split('\n')) {
    const w = TSAN_WARNING.exec(line);
    if (w) {
      cur = { kind: w[1]!, accesses: [], text: line };
      reports.push(cur);
      access = undefined;
      continue;
    }
    if (!cur) continue;
    if (line.startsWith('==================')) {  // the report's closing rule
      cur = undefined;
      access = undefined;
      continue;
    }
    cur.text += `\n${line}`;
    const a = TSAN_ACCESS.exec(line);
    if (a) {
      access = { what: a[1]!, frames: [] };
      cur.accesses.push(access);
      continue;
    }
    const f = TSAN_FRAME_LINE.exec(line);
    if (f && access) {
      const loc = TSAN_LOCATION.exec(f[1]!);
      access.frames.push(loc ? { fn: loc[1]!, file: loc[2]!, line: Number(loc[3]), text: f[1]! } : { fn: f[1]!, file: undefined, line: undefined, text: f[1]! });
      continue;
    }
    // Anything else at the section level (Location is…, Thread T1 … created by…) ends the access.
    if (/^ {2}\S/.test(line)) access = undefined;
  }
  return reports;
}

/** A concurrency limit: at most `n` of the queued jobs run at once, in queue order. */
export function limiter(n: number): <T>(job: () => Promise<T>) => Promise<T> {
  let active = 0;
  const queue: Array<() => void> = [];
  const next = (): void => {
    if (active >= n) return;
    const start = queue.shift();
    if (start) {
      active++;
      start();
    }
  };
  return <T>(job: () => Promise<T>): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      queue.push(() => {
        job().then(resolve, reject).finally(() => {
          active--;
          next();
        });
      });
      next();
    });
}
