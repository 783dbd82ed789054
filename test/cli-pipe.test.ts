// The built CLI writing into a closed pipe (`mla-cuda demo | head -2`): every command ends
// quietly and promptly, with no EPIPE stack trace.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import type { Test } from 'tap';

const cli = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));
const skip = existsSync(cli) ? false : 'dist/ not built (npm run build)';
const LIMIT_MS = 60_000;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  firstLine: string;
}

/**
 * Runs the CLI with `stream` piped to a reader that closes it: after the first line
 * (`afterFirstLine`, like `head -1`) or before anything arrives. The other stream is read.
 */
function runClosed(args: string[], stream: 'stdout' | 'stderr', afterFirstLine: boolean): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: LIMIT_MS });
    const closed = child[stream];
    const other = stream === 'stdout' ? child.stderr : child.stdout;
    let otherText = '';
    other.setEncoding('utf8').on('data', (d: string) => void (otherText += d));
    let firstLine = '';
    if (afterFirstLine) {
      let seen = '';
      closed.setEncoding('utf8').on('data', (d: string) => {
        seen += d;
        const nl = seen.indexOf('\n');
        if (nl >= 0 && !closed.destroyed) {
          firstLine = seen.slice(0, nl);
          closed.destroy();
        }
      });
    } else {
      closed.destroy();
    }
    child.on('close', (code, signal) => resolve({ code, signal, stderr: stream === 'stdout' ? otherText : '', firstLine }));
  });
}

function quiet(t: Test, r: Run, what: string, codes: readonly number[]): void {
  t.equal(r.signal, null, `${what}: exits by itself within ${LIMIT_MS / 1000} s`);
  t.ok(r.code !== null && codes.includes(r.code), `${what}: exit code ${r.code} in [${codes.join(', ')}]`);
  t.notMatch(r.stderr, /EPIPE|Unhandled 'error' event|\n +at /, `${what}: no stack trace on stderr`);
}

t.test('stdout closed after the first line (`| head -1`): demo, doctor, info, help end quietly', { skip }, async (t) => {
  const demo = await runClosed(['demo'], 'stdout', true);
  t.match(demo.firstLine, /^backend: /);
  quiet(t, demo, 'demo', [0]);
  // These write everything at once, so the pipe may break before or after: either way, quietly.
  for (const [args, codes] of [[['doctor'], [0, 1]], [['info'], [0]], [['help'], [0]]] as const) {
    const r = await runClosed([...args], 'stdout', true);
    t.not(r.firstLine, '', `${args.join(' ')}: printed its first line`);
    quiet(t, r, args.join(' '), codes);
  }
});

t.test('stdout closed before any output: demo, doctor, info, help, --version end quietly', { skip }, async (t) => {
  // doctor keeps the exit code it decided (1 on a FAIL) when the pipe breaks after it.
  for (const [args, codes] of [[['demo'], [0]], [['doctor'], [0, 1]], [['info'], [0]], [['help'], [0]], [['--version'], [0]]] as const) {
    quiet(t, await runClosed([...args], 'stdout', false), args.join(' '), codes);
  }
});

t.test('stderr closed: a usage error still exits with its code, not a crash', { skip }, async (t) => {
  // The stack trace would go to the closed stderr; a crash shows as exit code 1 instead of 2.
  const r = await runClosed(['doctor', '--jsn'], 'stderr', false);
  t.equal(r.signal, null);
  t.ok(r.code === 2 || r.code === 0, `exit code ${r.code} (2: the usage error's, 0: ended at the broken pipe)`);
});
