// What a user of the published package gets: the packed tarball installed into a new project
// (CPU-only build, so it takes seconds, not minutes), on a pseudo-terminal as a person would
// run it. npm hides a dependency's build output; the progress must reach the terminal anyway,
// the intermediates must not stay in node_modules, and npm's script review must show the
// script that really runs.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../lib/native.js';

const work = mkdtempSync(join(tmpdir(), 'mla-cuda-install-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

const pack = spawnSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work],
  { cwd: packageRoot, encoding: 'utf8' });
t.equal(pack.status, 0, `npm pack: ${pack.stderr}`);
const tarball = join(work, (JSON.parse(pack.stdout) as Array<{ filename: string }>)[0]!.filename);
const project = join(work, 'project');
const installed = join(project, 'node_modules', 'mla-cuda');

t.test('npm install of the tarball: progress on the terminal, only the addon left behind', async (t) => {
  spawnSync('mkdir', ['-p', project]);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
  // `script` gives npm a controlling terminal; its log is what the user would have seen.
  const log = join(work, 'terminal.log');
  const cmd = `npm install --no-audit --no-fund --prefer-offline ${JSON.stringify(tarball)}`;
  const r = spawnSync('script', ['-qec', cmd, log], {
    cwd: project, encoding: 'utf8', timeout: 300_000,
    env: { ...process.env, MLA_CUDA_DISABLE: '1', MLA_CUDA_EMULATOR: '0', npm_config_loglevel: 'warn' },
  });
  const seen = spawnSync('cat', [log], { encoding: 'utf8' }).stdout.replace(/\r/g, '');
  t.equal(r.status, 0, 'install exits 0');
  if (r.status !== 0) t.comment(seen.slice(-3000));
  t.match(seen, /\[mla-cuda\] building the CPU-only addon \(MLA_CUDA_DISABLE is set\)/, 'what is being built');
  const units = seen.match(/\[mla-cuda\] compiling \[\d+\/\d+\] csrc\/\S+/g) ?? [];
  t.ok(units.length >= 5, `one line per compiled unit reached the terminal (${units.length})`);
  t.match(seen, /\[mla-cuda\] built the CPU-only addon in [\d.]+s because MLA_CUDA_DISABLE is set/);

  t.same(readdirSync(join(installed, 'build')), ['Release'], 'no CMake tree in node_modules');
  t.same(readdirSync(join(installed, 'build', 'Release')), ['mla_cuda.node'], 'only the addon');
  const tmpLeft = seen.match(/CMake intermediates go to (\S+)/)?.[1];
  t.ok(tmpLeft, 'the temporary build folder is named');
  if (tmpLeft) t.notOk(spawnSync('test', ['-e', tmpLeft]).status === 0, `${tmpLeft} was removed`);
});

const npmVersion = spawnSync('npm', ['--version'], { encoding: 'utf8' }).stdout.trim();
const hasInstallScripts = spawnSync('npm', ['install-scripts', '--help'], { encoding: 'utf8' }).status === 0;
t.test('npm install-scripts ls names the real install script', {
  skip: hasInstallScripts ? false : `npm ${npmVersion} has no install-scripts command (npm 11.19+)`,
}, async (t) => {
  const r = spawnSync('npm', ['install-scripts', 'ls'], { cwd: project, encoding: 'utf8' });
  t.match(r.stdout, /mla-cuda@\S+ \(install: node scripts\/build-native\.mjs/);
  t.notMatch(r.stdout, /node-gyp rebuild/, 'no synthetic node-gyp script (there is no binding.gyp)');
});

t.test('the installed package loads from ESM and from CommonJS', async (t) => {
  const esm = spawnSync(process.execPath, ['--input-type=module', '-e',
    "import { cuda } from 'mla-cuda'; console.log(cuda.info().build.compiledWithCuda)"], { cwd: project, encoding: 'utf8' });
  t.equal(esm.stdout.trim(), 'false', `ESM import: ${esm.stderr}`);
  // require(esm) is unflagged from Node 20.19 / 22.12; the README says so.
  const [major, minor] = process.versions.node.split('.').map(Number) as [number, number];
  if ((major === 20 && minor >= 19) || (major === 22 && minor >= 12) || major >= 23) {
    const cjs = spawnSync(process.execPath, ['-e', "console.log(typeof require('mla-cuda').MlaAttention)"],
      { cwd: project, encoding: 'utf8' });
    t.equal(cjs.stdout.trim(), 'function', `CommonJS require: ${cjs.stderr}`);
  }
});
