// Reliability (issue 16): the safetensors reader, the config parser and the weight loader under
// mutated files (truncations, flipped bytes, huge header lengths, negative / huge / overlapping /
// out-of-file offsets, wrong dtypes and shapes, random JSON values). Never a crash, never a read
// outside the file (every fs.readSync is checked against the file's size), and every refusal is an
// MlaError (ERR_FORMAT for a malformed file) naming the file, and the tensor where there is one.
// Also: loading one layer of a multi-GB sharded checkpoint (sparse files: no disk cost) keeps RSS
// bounded, since tensors are read by offset. No device needed.
//
// FUZZ_SEED / FUZZ_RUNS as in test/fuzz-ops.test.ts (`npm run fuzz`).
import t from 'tap';
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { fileURLToPath } from 'node:url';
import { MlaError, SafetensorsFile, loadMlaConfig, loadMlaWeights, mlaConfigFromHuggingFace } from '../lib/index.js';

const SEED = Number(process.env['FUZZ_SEED'] ?? 16);
const RUNS = Number(process.env['FUZZ_RUNS'] ?? 60);
const FIXTURE = fileURLToPath(new URL('./fixtures/mla-tiny.safetensors', import.meta.url));
const original = new Uint8Array(fs.readFileSync(FIXTURE));
const headerLen = Number(new DataView(original.buffer, original.byteOffset).getBigUint64(0, true));
const header = JSON.parse(new TextDecoder().decode(original.subarray(8, 8 + headerLen))) as Record<string, unknown>;
const tensorNames = Object.keys(header).filter((k) => k !== '__metadata__');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mla-fuzz-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

// Every read the library makes is checked: inside [0, size of the file it reads). The CommonJS
// fs object is patched and pushed into the ESM namespace the library imports.
const fsCjs = createRequire(import.meta.url)('node:fs') as typeof fs;
let reads = 0;
const realReadSync = fsCjs.readSync;
let outside: string[] = [];
fsCjs.readSync = ((fd: number, buffer: NodeJS.ArrayBufferView, offset: number, length: number, position: number | bigint | null) => {
  reads++;
  const size = fsCjs.fstatSync(fd).size;
  if (typeof position === 'number' && position + Math.min(length, Math.max(0, size - position)) > size) outside.push(`read at ${position} of a ${size}-byte file`);
  if (typeof position === 'number' && position < 0) outside.push(`read at negative offset ${position}`);
  return realReadSync(fd, buffer, offset, length, position);
}) as typeof fsCjs.readSync;
syncBuiltinESMExports();
t.teardown(() => {
  fsCjs.readSync = realReadSync;
  syncBuiltinESMExports();
});

let cases = 0;
const outcome = { loaded: 0, refused: 0 };

// Opens the file, reads every tensor, parses the config from its metadata and loads the layer.
function exercise(file: string, what: string): void {
  cases++;
  outside = [];
  const check = (err: unknown, stage: string, codes: readonly string[]): void => {
    if (!(err instanceof MlaError)) throw new Error(`${what}: ${stage} threw a non-MlaError: ${String(err)}`);
    if (!codes.includes(err.code)) throw new Error(`${what}: ${stage} threw ${err.code}: ${err.message}`);
    if (!err.message.includes(file)) throw new Error(`${what}: ${stage}: the message does not name the file: ${err.message}`);
    outcome.refused++;
  };
  let f: SafetensorsFile;
  try {
    f = SafetensorsFile.open(file);
  } catch (err) {
    check(err, 'open', ['ERR_FORMAT']);
    return;
  }
  try {
    for (const name of f.names()) {
      try {
        f.readFloat64(name);
        outcome.loaded++;
      } catch (err) {
        check(err, `read '${name}'`, ['ERR_FORMAT']);
        if (!(err as MlaError).message.includes(name)) throw new Error(`${what}: the error does not name tensor '${name}': ${(err as Error).message}`);
      }
    }
  } finally {
    f.close();
  }
  try {
    const cfg = loadMlaConfig(file);
    loadMlaWeights(file, cfg, { prefix: 'weights.' });
    outcome.loaded++;
  } catch (err) {
    // A weight of the wrong shape or dtype for the config, or one that is missing, is named as
    // such; non-finite values (flipped exponent bits) are ERR_RANGE naming the tensor.
    check(err, 'loadMlaConfig / loadMlaWeights', ['ERR_FORMAT', 'ERR_SHAPE', 'ERR_ARGUMENT', 'ERR_RANGE', 'ERR_DTYPE']);
  }
  if (outside.length) throw new Error(`${what}: ${outside.join('; ')}`);
}

function writeCase(bytes: Uint8Array): string {
  const file = path.join(dir, `case-${cases % 8}.safetensors`);
  fs.writeFileSync(file, bytes);
  return file;
}

function withHeader(h: Record<string, unknown>, data: Uint8Array, lenOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(h));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lenOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}
const data = original.subarray(8 + headerLen);

const hostileNumber = fc.oneof(
  fc.integer({ min: -5, max: data.length + 5 }),
  fc.constantFrom(-1, 0.5, 2 ** 53, 2 ** 64, -(2 ** 63), Number.MAX_VALUE, 1e308),
  fc.constantFrom('12', null, true, [], {}),
);

t.test('safetensors: truncated files and flipped bytes', async (t) => {
  fc.assert(fc.property(fc.integer({ min: 0, max: original.length }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { maxLength: 6 }), fc.boolean(),
    (cut, flips, inHeader) => {
      const bytes = original.slice(0, cut === original.length ? original.length : cut);
      for (const [at, mask] of flips) {
        const span = inHeader ? Math.min(bytes.length, 8 + headerLen) : bytes.length;
        if (span > 0) bytes[at % span]! ^= mask;
      }
      exercise(writeCase(bytes), `cut ${cut}, flips ${JSON.stringify(flips)}`);
    }), { seed: SEED, numRuns: RUNS * 4 });
  t.pass(`${cases} files`);
});

t.test('safetensors: hostile header lengths, offsets, dtypes and shapes', async (t) => {
  fc.assert(fc.property(
    fc.constantFrom(...tensorNames), fc.constantFrom('data_offsets', 'dtype', 'shape', 'header length', 'drop', 'duplicate offsets'),
    hostileNumber, hostileNumber, fc.constantFrom('F8_E4M3', 'I64', 'F64', 'BF16', 'bf16', 'Q4', '', 'F32'),
    (name, field, a, b, dtype) => {
      const h = structuredClone(header);
      const entry = h[name] as Record<string, unknown>;
      let len: bigint | undefined;
      if (field === 'data_offsets') entry['data_offsets'] = [a, b];
      else if (field === 'dtype') entry['dtype'] = dtype;
      else if (field === 'shape') entry['shape'] = [a, b];
      else if (field === 'drop') delete h[name];
      else if (field === 'duplicate offsets') {
        const other = h[tensorNames[(tensorNames.indexOf(name) + 1) % tensorNames.length]!] as Record<string, unknown>;
        entry['data_offsets'] = other['data_offsets'];
      } else len = typeof a === 'number' && a >= 0 ? BigInt(Math.min(Math.floor(a), 2 ** 62)) * 1024n : 0xffffffffffffffffn;
      exercise(writeCase(withHeader(h, data, len)), `${name}.${field} = ${JSON.stringify([a, b, dtype])}`);
    }), { seed: SEED, numRuns: RUNS * 3 });
  t.pass(`${cases} files`);
});

t.test('config.json: random values in every field', async (t) => {
  const base = JSON.parse((header['__metadata__'] as Record<string, string>)['config']!) as Record<string, unknown>;
  const file = path.join(dir, 'config.json');
  fc.assert(fc.property(fc.constantFrom(...Object.keys(base), 'rope_scaling', 'extra'), fc.jsonValue({ maxDepth: 2 }), fc.boolean(), (key, value, asText) => {
    cases++;
    const cfg: Record<string, unknown> = { ...base, [key]: value };
    const text = asText ? JSON.stringify(cfg).slice(0, Math.max(1, JSON.stringify(cfg).length - 3)) : JSON.stringify(cfg);
    fs.writeFileSync(file, text);
    try {
      const c = loadMlaConfig(file);
      // Whatever was accepted is a usable geometry.
      if (!(Number.isSafeInteger(c.hiddenSize) && c.hiddenSize > 0 && Number.isSafeInteger(c.numHeads) && c.numHeads > 0)) throw new Error(`accepted ${key} = ${JSON.stringify(value)} as ${JSON.stringify(c)}`);
      mlaConfigFromHuggingFace(cfg);
      outcome.loaded++;
    } catch (err) {
      if (!(err instanceof MlaError) || err.code !== 'ERR_FORMAT' || !err.message.includes(file)) throw new Error(`${key} = ${JSON.stringify(value)}: ${String(err)}`);
      outcome.refused++;
    }
  }), { seed: SEED, numRuns: RUNS * 3 });
  t.pass(`${cases} files`);
});

// Two shards of ~3 GB each (sparse: holes read as zeros), 62 layers' attention weights plus a
// large expert tensor per layer; loading layer 60 reads its ~11 MB of tensors by offset.
t.test('loading one layer of a multi-GB sharded checkpoint keeps RSS bounded', async (t) => {
  const cfgJson = { hidden_size: 1024, num_attention_heads: 8, q_lora_rank: 384, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128 };
  const cfg = mlaConfigFromHuggingFace(cfgJson);
  const H = 8, hid = 1024, qr = 384, C = 512, N = 128, R = 64, V = 128;
  const shapes: [string, number[]][] = [
    ['q_a_proj', [qr, hid]], ['q_a_layernorm', [qr]], ['q_b_proj', [H * (N + R), qr]], ['kv_a_proj_with_mqa', [C + R, hid]],
    ['kv_a_layernorm', [C]], ['kv_b_proj', [H * (N + V), C]], ['o_proj', [hid, H * V]],
  ];
  const ckpt = path.join(dir, 'sharded');
  fs.mkdirSync(ckpt);
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (const [s, layers] of [[0, [0, 31]], [1, [31, 62]]] as const) {
    const shard = `model-0000${s + 1}-of-00002.safetensors`;
    const h: Record<string, unknown> = {};
    let off = 0;
    for (let l = layers[0]; l < layers[1]; l++) {
      for (const [name, shape] of shapes) {
        const bytes = shape.reduce((a, b) => a * b, 1) * 2;
        h[`model.layers.${l}.self_attn.${name}.weight`] = { dtype: 'BF16', shape, data_offsets: [off, off + bytes] };
        weightMap[`model.layers.${l}.self_attn.${name}.weight`] = shard;
        off += bytes;
      }
      const expert = 2048 * 45056; // ~90 MB of bf16 per layer that the loader must never touch
      h[`model.layers.${l}.mlp.experts.weight`] = { dtype: 'BF16', shape: [2048, 45056], data_offsets: [off, off + expert * 2] };
      weightMap[`model.layers.${l}.mlp.experts.weight`] = shard;
      off += expert * 2;
    }
    const json = new TextEncoder().encode(JSON.stringify(h));
    const fd = fs.openSync(path.join(ckpt, shard), 'w');
    const lenBuf = new Uint8Array(8);
    new DataView(lenBuf.buffer).setBigUint64(0, BigInt(json.length), true);
    fs.writeSync(fd, lenBuf, 0, 8, 0);
    fs.writeSync(fd, json, 0, json.length, 8);
    fs.ftruncateSync(fd, 8 + json.length + off); // a hole: costs no disk
    fs.closeSync(fd);
    total += 8 + json.length + off;
  }
  fs.writeFileSync(path.join(ckpt, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }));
  fs.writeFileSync(path.join(ckpt, 'config.json'), JSON.stringify(cfgJson));
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const rss0 = process.memoryUsage().rss;
  outside = [];
  const w = loadMlaWeights(ckpt, loadMlaConfig(ckpt), { layer: 60 });
  const grew = (process.memoryUsage().rss - rss0) / 2 ** 20;
  const layerMb = shapes.reduce((a, [, s]) => a + s.reduce((x, y) => x * y, 1) * 4, 0) / 2 ** 20; // float32 on the host
  t.same(outside, [], 'no read outside a shard');
  t.equal(w.oProj.shape[0], hid, 'the layer loaded');
  t.ok(grew < layerMb + 64, `checkpoint ${(total / 2 ** 30).toFixed(1)} GB in 2 shards: RSS grew ${grew.toFixed(1)} MB loading layer 60 (${layerMb.toFixed(1)} MB of float32 weights; bound ${(layerMb + 64).toFixed(0)} MB)`);
});

t.test('format fuzz cases run', async (t) => {
  t.comment(`format fuzz: ${cases} files, seed ${SEED}: ${outcome.loaded} loads checked, ${outcome.refused} refused with a typed error naming the file, 0 crashes, 0 reads outside a file`);
  t.ok(reads > cases, `every file was read through the checked fs.readSync (${reads} reads)`);
});
