#!/usr/bin/env node
// The `mla-cuda` command. Subcommands live in their own modules and are imported only when
// chosen, so one that fails to load (or a missing native addon) cannot break the others.
// Adding a subcommand is one entry in COMMANDS.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { packageInfo } from '../bench/report.js';

/** A subcommand: runs with the arguments after its name and resolves to the exit code. */
export type CommandRun = (argv: readonly string[]) => Promise<number>;

export interface Command {
  summary: string;
  run: CommandRun;
}

export const COMMANDS: Record<string, Command> = {
  bench: { summary: 'time the kernels, report TB/s, TFLOP/s and a roofline (needs a GPU)', run: async (a) => (await import('./bench.js')).runBench(a) },
  doctor: { summary: 'check Node, the addon build, the driver and the GPUs, with fixes', run: async (a) => (await import('./doctor.js')).runDoctor(a) },
  info: { summary: 'print build, device status and devices as JSON', run: async (a) => (await import('./doctor.js')).runInfo(a) },
  demo: { summary: 'run the bundled DeepSeek layer fixture and compare with DeepSeek\'s reference outputs', run: async (a) => (await import('./demo.js')).runDemo([...a]) },
  help: { summary: 'show this help (help <command>: that command\'s flags)', run: async (a) => helpFor(a[0]) },
};

export function helpText(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  return [
    `mla-cuda ${packageInfo().version}: CUDA kernels for DeepSeek Multi-head Latent Attention`,
    '',
    'usage: mla-cuda <command> [flags]     (mla-cuda <command> --help for its flags)',
    '',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    `  ${'--version'.padEnd(width)}  print the package version`,
    '',
  ].join('\n');
}

async function helpFor(name: string | undefined): Promise<number> {
  const cmd = name !== undefined && name !== 'help' && Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  return cmd ? cmd.run(['--help']) : printHelp();
}

function printHelp(): number {
  process.stdout.write(helpText());
  return 0;
}

/** Dispatches argv (without node and the script); resolves to the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h') return printHelp();
  if (name === '--version' || name === '-v') {
    process.stdout.write(`${packageInfo().version}\n`);
    return 0;
  }
  const cmd = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!cmd) {
    process.stderr.write(`mla-cuda: unknown command "${name}"\n\n${helpText()}`);
    return 1;
  }
  return cmd.run(rest);
}

/** True when this file is the process's entry (also through the npm bin symlink). */
function isEntryPoint(): boolean {
  const arg = process.argv[1];
  if (!arg) return false;
  try {
    return realpathSync(arg) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

/**
 * A reader that stops early (`mla-cuda demo | head -2`) closes the pipe: the next write fails
 * with EPIPE, which Node reports as an unhandled 'error' event with a stack trace. Nobody is
 * left to read the output, so end quietly, as `cat` or `ls` do; other write errors stay fatal.
 */
function exitQuietlyOnClosedPipe(stream: NodeJS.WriteStream): void {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    process.exit(); // with the exit code already decided, if any, else 0
  });
}

if (isEntryPoint()) {
  exitQuietlyOnClosedPipe(process.stdout);
  exitQuietlyOnClosedPipe(process.stderr);
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`mla-cuda: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
