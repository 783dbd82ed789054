// The README's code and examples/ must run as written. Every examples/*.mjs script runs under
// the real Node; every ```ts / ```js block of README.md is type-checked with the repo's
// TypeScript (strict, module nodenext) and run, in a throwaway ESM project whose
// node_modules/mla-cuda links to this checkout, i.e. the way a user's project imports it.
// A block that is deliberately not runnable says so with `<!-- not-run -->` on the line before
// its fence. Both run on whatever device the suite uses and, where that is the emulated device,
// again the way a user without a GPU runs them (MLA_CUDA_DEVICE=cuda: no device).

import t from 'tap';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cuda } from '../lib/index.js';
import { packageRoot } from '../lib/native.js';

const RUN_TIMEOUT_MS = 120_000;
const NOT_RUN = '<!-- not-run -->';
const examplesDir = path.join(packageRoot, 'examples');

// The device selections to run under: the suite's, plus a user's default where the suite's is
// the emulator (a real GPU would give the same device twice).
const suiteDevice = process.env['MLA_CUDA_DEVICE'] ?? 'cuda';
const devices = cuda.buildInfo().emulated && suiteDevice !== 'cuda' ? [suiteDevice, 'cuda'] : [suiteDevice];

// Children run as a user would: without tap's loaders and coverage hooks.
function childEnv(device: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, MLA_CUDA_DEVICE: device };
  delete env['NODE_OPTIONS'];
  delete env['NODE_V8_COVERAGE'];
  return env;
}

function runNode(args: string[], cwd: string, device: string): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, args, { cwd, env: childEnv(device), encoding: 'utf8', timeout: RUN_TIMEOUT_MS });
}

function describe(r: SpawnSyncReturns<string>): string {
  return `exit ${String(r.status)}${r.signal ? ` (${r.signal})` : ''}${r.error ? ` ${r.error.message}` : ''}\n` +
    `--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

if (!fs.existsSync(path.join(packageRoot, 'dist', 'index.js'))) {
  t.fail('dist/ is missing: run `npm run build` first (the examples import the built package)');
}
t.comment(`device selections: ${devices.join(', ')}`);

// What each script must print (beyond exiting with 0); any other script must print something.
const SANITY: Readonly<Record<string, RegExp>> = {
  'layer-fixture.mjs': /^ok: every output within \S+ of DeepSeek's/m,
  'kv-cache-size.mjs': /^DeepSeek-V3 \/ R1\s+128\s+1152\s+81920\s+71\.1×/m,
  'decode-bench.mjs': /needs a GPU|correctness only|TB\/s/,
};

const scripts = fs.readdirSync(examplesDir).filter((f) => f.endsWith('.mjs')).sort();

t.test('examples/', async (t) => {
  t.ok(scripts.length >= 3, `scripts: ${scripts.join(', ')}`);
  const readme = fs.readFileSync(path.join(examplesDir, 'README.md'), 'utf8');
  for (const s of scripts) t.ok(readme.includes(s), `examples/README.md describes ${s}`);
  for (const device of devices) {
    for (const s of scripts) {
      const r = runNode([path.join(examplesDir, s)], packageRoot, device);
      t.equal(r.status, 0, `${s} (MLA_CUDA_DEVICE=${device}) exits with 0`, { diagnostic: r.status !== 0, output: describe(r) });
      t.match(r.stdout, SANITY[s] ?? /\S/, `${s} (MLA_CUDA_DEVICE=${device}) prints its result`);
    }
  }
});

interface Block {
  lang: 'ts' | 'js';
  /** README line of the opening fence. */
  line: number;
  code: string;
}

/** The ```ts and ```js blocks of a markdown text, and the lines of those marked not-run. */
function codeBlocks(markdown: string): { blocks: Block[]; notRun: number[] } {
  const lines = markdown.split('\n');
  const blocks: Block[] = [];
  const notRun: number[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```\s*(\w*)/.exec(lines[i]!);
    if (!open) continue;
    let end = i + 1;
    while (end < lines.length && !/^```\s*$/.test(lines[end]!)) end++;
    const info = open[1]!.toLowerCase();
    const lang = ['ts', 'typescript', 'mts'].includes(info) ? 'ts' : ['js', 'javascript', 'mjs'].includes(info) ? 'js' : null;
    if (lang !== null) {
      if (lines[i - 1]?.trim() === NOT_RUN) notRun.push(i + 1);
      else blocks.push({ lang, line: i + 1, code: lines.slice(i + 1, end).join('\n') });
    }
    i = end;
  }
  return { blocks, notRun };
}

t.test('README.md code blocks compile and run', async (t) => {
  const { blocks, notRun } = codeBlocks(fs.readFileSync(path.join(packageRoot, 'README.md'), 'utf8'));
  t.ok(blocks.length >= 2, `${blocks.length} runnable blocks (lines ${blocks.map((b) => b.line).join(', ')})`);
  if (notRun.length > 0) t.comment(`marked ${NOT_RUN}: blocks at README.md lines ${notRun.join(', ')}`);

  // A user's ESM project: "type": "module", mla-cuda and @types/node from this checkout.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mla-cuda-readme-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'readme-blocks', private: true, type: 'module' }));
  fs.mkdirSync(path.join(dir, 'node_modules'));
  fs.symlinkSync(packageRoot, path.join(dir, 'node_modules', 'mla-cuda'), 'dir');
  fs.symlinkSync(path.join(packageRoot, 'node_modules', '@types'), path.join(dir, 'node_modules', '@types'), 'dir');
  // target es2022: Node 20 has no `using`, so tsc lowers it (and needs the esnext.disposable lib).
  fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      target: 'es2022',
      lib: ['es2022', 'esnext.disposable'],
      module: 'nodenext',
      moduleResolution: 'nodenext',
      strict: true,
      types: ['node'],
      rootDir: '.',
      outDir: 'out',
    },
    include: ['*.mts'],
  }));
  // `export {}` keeps a block without imports a module (top-level await needs one).
  const fileOf = (b: Block): string => `readme-L${b.line}.${b.lang === 'ts' ? 'mts' : 'mjs'}`;
  for (const b of blocks) fs.writeFileSync(path.join(dir, fileOf(b)), `${b.code}\nexport {};\n`);

  if (blocks.some((b) => b.lang === 'ts')) {
    const tsc = runNode([path.join(packageRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir, '--pretty', 'false'], dir, suiteDevice);
    // Point diagnostics at README lines: readme-L<fence>.mts(<line>,<col>) is README.md:<fence + line>.
    const diagnostics = `${tsc.stdout}${tsc.stderr}${tsc.error?.message ?? ''}`.replace(/readme-L(\d+)\.mts\((\d+),(\d+)\)/g, (_, fence: string, l: string, c: string) => `README.md:${Number(fence) + Number(l)}:${c}`);
    t.equal(tsc.status, 0, 'the ts blocks type-check (strict, module nodenext)', { diagnostic: tsc.status !== 0, output: diagnostics });
    if (tsc.status !== 0) return;
  }
  for (const device of devices) {
    for (const b of blocks) {
      const file = b.lang === 'ts' ? path.join(dir, 'out', fileOf(b).replace(/\.mts$/, '.mjs')) : path.join(dir, fileOf(b));
      const r = runNode([file], dir, device);
      const what = `README.md block at line ${b.line} (MLA_CUDA_DEVICE=${device})`;
      t.equal(r.status, 0, `${what} exits with 0`, { diagnostic: r.status !== 0, output: describe(r) });
      t.match(r.stdout, /\S/, `${what} prints something`);
    }
  }
});
