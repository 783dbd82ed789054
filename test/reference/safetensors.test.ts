import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  bf16ToFloat,
  buildSafetensors,
  decodeToFloat64,
  e4m3ToFloat,
  e5m2ToFloat,
  f16ToFloat,
  floatToBf16,
  floatToE4m3,
  floatToF16,
  MAX_HEADER_BYTES,
  SafetensorsError,
  SafetensorsFile,
  writeSafetensors,
  type SafetensorsDtype,
} from '../../lib/safetensors.js';
import { mulberry32, randnArray } from '../../lib/reference/util.js';

// Writes a file from a header object and a data section given as raw bytes.
function rawFile(file: string, header: unknown, data: Uint8Array, lengthOverride?: bigint): void {
  const body = new TextEncoder().encode(JSON.stringify(header));
  const lenBuf = new Uint8Array(8);
  new DataView(lenBuf.buffer).setBigUint64(0, lengthOverride ?? BigInt(body.length), true);
  fs.writeFileSync(file, Buffer.concat([lenBuf, body, data]));
}

interface Asserter {
  ok(v: unknown, msg: string): boolean;
  comment(...args: unknown[]): void;
}

// Asserts fn throws a SafetensorsError whose message matches, and shows it.
function expectError(t: Asserter, fn: () => unknown, pattern: RegExp, msg: string): void {
  try {
    fn();
    t.ok(false, `${msg}: did not throw`);
  } catch (e) {
    const ok = e instanceof SafetensorsError && pattern.test(e.message);
    t.ok(ok, `${msg}: ${(e as Error).message}`);
  }
}

t.test('round trip of every dtype', async (t) => {
  const dir = t.testdir();
  const file = path.join(dir, 'all.safetensors');
  const rng = mulberry32(11);
  const f64 = randnArray(12, rng);
  const exactSmall = [0, 1, -2, 0.5, -0.375, 3, 448, -448, 2 ** -9, 96];
  const ints = [0, 1, -1, 127, -128, 42, -7, 100];
  writeSafetensors(
    file,
    [
      ['f64', { dtype: 'F64', shape: [3, 4], data: f64 }],
      ['f32', { dtype: 'F32', shape: [12], data: Float32Array.from(f64) }],
      ['f16', { dtype: 'F16', shape: [10], data: exactSmall }],
      ['bf16', { dtype: 'BF16', shape: [2, 5], data: exactSmall }],
      ['e4m3', { dtype: 'F8_E4M3', shape: [10], data: exactSmall }],
      ['i64', { dtype: 'I64', shape: [8], data: ints }],
      ['i32', { dtype: 'I32', shape: [8], data: ints }],
      ['i16', { dtype: 'I16', shape: [8], data: ints }],
      ['i8', { dtype: 'I8', shape: [8], data: ints }],
      ['u8', { dtype: 'U8', shape: [4], data: [0, 1, 200, 255] }],
      ['bool', { dtype: 'BOOL', shape: [3], data: [1, 0, 1] }],
      ['empty', { dtype: 'F32', shape: [0, 5], data: [] }],
    ],
    { purpose: 'test', n: '12' },
  );
  const f = SafetensorsFile.open(file);
  t.teardown(() => f.close());
  t.same(f.metadata, { purpose: 'test', n: '12' });
  t.equal(f.tensors.size, 12);
  t.same(f.info('f64').shape, [3, 4]);
  t.equal(f.info('f64').dtype, 'F64');
  t.equal(f.dataStart % 8, 0, 'header padded to 8 bytes');
  t.same([...f.readFloat64('f64').data], [...f64]);
  t.same([...f.readFloat64('f32').data], [...Float32Array.from(f64)]);
  t.same([...f.readFloat32('f32').data], [...Float32Array.from(f64)]);
  t.same([...f.readFloat32('f64').data], [...Float32Array.from(f64)], 'F64 read as float32 rounds');
  for (const n of ['f16', 'bf16', 'e4m3']) t.same([...f.readFloat64(n).data], exactSmall, `${n} exact values`);
  for (const n of ['i64', 'i32', 'i16', 'i8']) t.same([...f.readFloat64(n).data], ints, `${n} values`);
  t.same([...f.readFloat64('u8').data], [0, 1, 200, 255]);
  t.same([...f.readFloat64('bool').data], [1, 0, 1]);
  t.same([...f.readFloat64('empty').data], []);
  const raw = f.read('i32');
  t.equal(raw.dtype, 'I32');
  t.equal(raw.data.length, 32);
});

t.test('element conversions', async (t) => {
  // bf16: top half of float32.
  t.equal(bf16ToFloat(0x3f80), 1);
  t.equal(bf16ToFloat(0xc000), -2);
  t.equal(bf16ToFloat(0x7f80), Infinity);
  t.ok(Number.isNaN(bf16ToFloat(0x7fc0)));
  t.equal(bf16ToFloat(0x0001), 2 ** -133, 'bf16 subnormal');
  t.equal(floatToBf16(1 + 2 ** -8), 0x3f80, 'tie rounds to even (down)');
  t.equal(floatToBf16(1 + 3 * 2 ** -8), 0x3f82, 'tie rounds to even (up)');
  // f16
  t.equal(f16ToFloat(0x3c00), 1);
  t.equal(f16ToFloat(0x7bff), 65504);
  t.equal(f16ToFloat(0x0001), 2 ** -24, 'f16 smallest subnormal');
  t.equal(f16ToFloat(0xfc00), -Infinity);
  t.ok(Number.isNaN(f16ToFloat(0x7e00)));
  t.ok(Object.is(f16ToFloat(0x8000), -0));
  const f16Bad: number[] = [];
  for (let bits = 0; bits < 0x10000; bits++) {
    const v = f16ToFloat(bits);
    if (!Number.isNaN(v) && floatToF16(v) !== bits) f16Bad.push(bits);
  }
  t.same(f16Bad, [], 'every non-NaN f16 code round-trips');
  // e4m3fn: no inf, 0x7f/0xff NaN, max 448.
  t.equal(e4m3ToFloat(0x7e), 448, 'e4m3 max');
  t.equal(e4m3ToFloat(0xfe), -448);
  t.ok(Number.isNaN(e4m3ToFloat(0x7f)), '0x7f is NaN');
  t.ok(Number.isNaN(e4m3ToFloat(0xff)), '0xff is NaN');
  t.equal(e4m3ToFloat(0x78), 256, 'S.1111.000 is finite (no inf)');
  t.equal(e4m3ToFloat(0x01), 2 ** -9, 'e4m3 smallest subnormal');
  t.equal(e4m3ToFloat(0x08), 2 ** -6, 'e4m3 smallest normal');
  t.equal(e4m3ToFloat(0x38), 1);
  let finite = 0;
  const e4m3Bad: number[] = [];
  for (let c = 0; c < 256; c++) {
    const v = e4m3ToFloat(c);
    if (Number.isFinite(v)) {
      finite++;
      if (floatToE4m3(v) !== c) e4m3Bad.push(c);
    }
  }
  t.equal(finite, 254, 'e4m3 has 254 finite codes');
  t.same(e4m3Bad, [], 'every finite e4m3 code round-trips (signed zeros included)');
  t.equal(floatToE4m3(464), 0x7e, '464 ties to even (448)');
  t.equal(floatToE4m3(500), 0x7f, 'overflow becomes NaN');
  t.equal(floatToE4m3(-1e9), 0xff);
  // e5m2 has infinities.
  t.equal(e5m2ToFloat(0x7c), Infinity);
  t.equal(e5m2ToFloat(0x7b), 57344);
  t.ok(Number.isNaN(e5m2ToFloat(0x7d)));
  const bytes = new Uint8Array([0x38, 0x7e, 0x7f, 0xb8]);
  const dec = decodeToFloat64(bytes, 'F8_E4M3');
  t.same([dec[0], dec[1], dec[3]], [1, 448, -1]);
  t.ok(Number.isNaN(dec[2]!));
});

t.test('malformed files are rejected with clear errors', async (t) => {
  const dir = t.testdir();
  const p = (n: string): string => path.join(dir, n);
  const good = { a: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] } };

  fs.writeFileSync(p('short'), Buffer.from([1, 2, 3]));
  expectError(t, () => SafetensorsFile.open(p('short')), /short.*truncated file: 3 bytes/, 'shorter than the length field');

  fs.writeFileSync(p('empty'), Buffer.alloc(0));
  expectError(t, () => SafetensorsFile.open(p('empty')), /truncated/, 'empty file');

  rawFile(p('hdrlong'), good, new Uint8Array(24), 5000n);
  expectError(t, () => SafetensorsFile.open(p('hdrlong')), /hdrlong.*header length 5000 runs past the end/, 'header length larger than the file');

  rawFile(p('absurd'), good, new Uint8Array(24), BigInt(MAX_HEADER_BYTES) + 1n);
  expectError(t, () => SafetensorsFile.open(p('absurd')), /absurd/, 'header length > 100 MB');

  rawFile(p('huge'), good, new Uint8Array(24), 0xffffffffffffffffn);
  expectError(t, () => SafetensorsFile.open(p('huge')), /absurd/, 'header length 2^64 − 1');

  const garbage = new TextEncoder().encode('{"a": {"dtype": "F32",');
  const buf = Buffer.alloc(8 + garbage.length);
  buf.writeBigUInt64LE(BigInt(garbage.length));
  buf.set(garbage, 8);
  fs.writeFileSync(p('notjson'), buf);
  expectError(t, () => SafetensorsFile.open(p('notjson')), /notjson.*not valid UTF-8 JSON/, 'header not JSON');

  rawFile(p('array'), [1, 2], new Uint8Array(0));
  expectError(t, () => SafetensorsFile.open(p('array')), /not a JSON object/, 'header is an array');

  rawFile(p('oob'), { w: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] } }, new Uint8Array(20));
  expectError(t, () => SafetensorsFile.open(p('oob')), /oob \[tensor 'w'\].*out of range/, 'offsets past the end of the data (truncated data)');

  rawFile(p('size'), { w: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 20] } }, new Uint8Array(24));
  expectError(t, () => SafetensorsFile.open(p('size')), /\[tensor 'w'\].*span 20 bytes but F32\[2,3\] needs 24/, 'offsets not matching dtype × shape');

  rawFile(p('reversed'), { w: { dtype: 'U8', shape: [0], data_offsets: [8, 4] } }, new Uint8Array(24));
  expectError(t, () => SafetensorsFile.open(p('reversed')), /end before begin/, 'end before begin');

  rawFile(p('dtype'), { w: { dtype: 'F4', shape: [2], data_offsets: [0, 1] } }, new Uint8Array(1));
  expectError(t, () => SafetensorsFile.open(p('dtype')), /\[tensor 'w'\].*unknown dtype 'F4'/, 'unknown dtype');

  rawFile(p('shape'), { w: { dtype: 'F32', shape: [2, -1], data_offsets: [0, 8] } }, new Uint8Array(8));
  expectError(t, () => SafetensorsFile.open(p('shape')), /shape/, 'negative dimension');

  rawFile(p('meta'), { __metadata__: { n: 3 } }, new Uint8Array(0));
  expectError(t, () => SafetensorsFile.open(p('meta')), /__metadata__ value for 'n' is not a string/, 'non-string metadata');

  expectError(t, () => SafetensorsFile.open(p('missing')), /cannot open/, 'missing file');

  writeSafetensors(p('ok'), { x: { dtype: 'F32', shape: [1], data: [1] } });
  const f = SafetensorsFile.open(p('ok'));
  expectError(t, () => f.read('nope'), /ok \[tensor 'nope'\]: no such tensor/, 'unknown tensor name');
  f.close();
  t.ok(f.closed, 'closed after close()');
  expectError(t, () => f.read('x'), /closed/, 'read after close');
  f.close();

  // A file truncated after open (the header was fine then) fails on read.
  writeSafetensors(p('shrink'), { x: { dtype: 'F64', shape: [100], data: new Float64Array(100).fill(1) } });
  const g = SafetensorsFile.open(p('shrink'));
  fs.truncateSync(p('shrink'), g.dataStart + 10);
  expectError(t, () => g.read('x'), /\[tensor 'x'\].*truncated file/, 'data shorter than its header claims at read time');
  g.close();
});

t.test('data_offsets must tile the data section: no overlap, no gap', async (t) => {
  const dir = t.testdir();
  const p = (n: string): string => path.join(dir, n);
  const f32 = (begin: number, end: number): unknown => ({ dtype: 'F32', shape: [(end - begin) / 4], data_offsets: [begin, end] });
  const rejects = (name: string, header: unknown, dataBytes: number, pattern: RegExp, msg: string): void => {
    rawFile(p(name), header, new Uint8Array(dataBytes));
    try {
      SafetensorsFile.open(p(name)).close();
      t.fail(`${msg}: loaded`);
    } catch (e) {
      t.ok(e instanceof SafetensorsError && e.code === 'ERR_FORMAT', `${msg}: ERR_FORMAT`);
      t.match((e as Error).message, new RegExp(`^${p(name).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `), `${msg}: names the file`);
      t.match((e as Error).message, pattern, `${msg}: ${(e as Error).message}`);
    }
  };
  rejects('overlap', { a: f32(0, 8), b: f32(4, 12) }, 12, /overlap: tensor 'a' \[0, 8\) and tensor 'b' \[4, 12\) share bytes \[4, 8\)/, 'overlapping tensors');
  rejects('same', { a: f32(0, 8), b: f32(0, 8) }, 8, /overlap: tensor 'a' \[0, 8\) and tensor 'b' \[0, 8\)/, 'two tensors on the same bytes');
  rejects('inside', { big: f32(0, 16), small: f32(4, 8), z: f32(16, 16) }, 16, /overlap: tensor 'big' .* and tensor 'small'/, 'a tensor inside another');
  rejects('gap', { a: f32(0, 8), b: f32(12, 20) }, 20, /gap of 4 bytes \[8, 12\) between tensor 'a' \[0, 8\) and tensor 'b' \[12, 20\)/, 'a gap between two tensors');
  rejects('lead', { a: f32(4, 12) }, 12, /gap of 4 bytes \[0, 4\) between start of data and tensor 'a'/, 'a gap before the first tensor');
  rejects('tail', { a: f32(0, 8) }, 12, /gap of 4 bytes \[8, 12\) between tensor 'a' \[0, 8\) and end of data/, 'bytes after the last tensor');
  rejects('nothing', {}, 8, /gap of 8 bytes \[0, 8\) between start of data and end of data/, 'data but no tensors');
  // Header order is free; only the sorted ranges must tile. Empty tensors may sit anywhere on a boundary.
  rawFile(p('unordered'), { b: f32(8, 16), e0: f32(0, 0), a: f32(0, 8), e1: f32(16, 16) }, new Uint8Array(16));
  const f = SafetensorsFile.open(p('unordered'));
  t.same(f.names().sort(), ['a', 'b', 'e0', 'e1'], 'out-of-order header with empty tensors on boundaries loads');
  f.close();
  rawFile(p('empty-data'), { __metadata__: { k: 'v' } }, new Uint8Array(0));
  SafetensorsFile.open(p('empty-data')).close();
  t.pass('no tensors and no data is a valid file');
});

t.test('file descriptors are closed, also through Symbol.dispose', async (t) => {
  const dir = t.testdir();
  const file = path.join(dir, 'd.safetensors');
  writeSafetensors(file, { x: { dtype: 'F32', shape: [2], data: [1, 2] } });
  const fdCount = (): number => fs.readdirSync('/proc/self/fd').length;
  const before = fdCount();
  let allClosed = true;
  for (let i = 0; i < 50; i++) {
    const f = SafetensorsFile.open(file);
    f[Symbol.dispose]();
    allClosed &&= f.closed;
  }
  t.ok(allClosed, 'Symbol.dispose closes');
  let escaped: SafetensorsFile | null = null;
  {
    using g = SafetensorsFile.open(file);
    escaped = g;
    t.same([...g.readFloat64('x').data], [1, 2]);
  }
  t.ok(escaped.closed, 'a `using` binding is closed at the end of its block');
  for (let i = 0; i < 50; i++) {
    try {
      SafetensorsFile.open(path.join(dir, 'none'));
    } catch {
      // expected
    }
  }
  fs.writeFileSync(path.join(dir, 'bad'), Buffer.from([9, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
  for (let i = 0; i < 50; i++) {
    try {
      SafetensorsFile.open(path.join(dir, 'bad'));
    } catch {
      // expected: not JSON; the descriptor must still be closed
    }
  }
  t.equal(fdCount(), before, 'no descriptor leaked');
});

t.test('a large file is read tensor by tensor, never whole', async (t) => {
  const dir = t.testdir();
  const file = path.join(dir, 'big.safetensors');
  const bigN = 16 * 1024 * 1024; // 64 MiB of F32
  const big = new Float32Array(bigN);
  for (let i = 0; i < bigN; i += 4096) big[i] = i;
  const small = [1.5, -2.25, 3];
  writeSafetensors(file, [
    ['big', { dtype: 'F32', shape: [4096, 4096], data: new Uint8Array(big.buffer) }],
    ['small', { dtype: 'F32', shape: [3], data: small }],
  ]);
  const size = fs.statSync(file).size;
  t.ok(size > 64 * 1024 * 1024, `file is ${(size / 2 ** 20).toFixed(1)} MiB`);
  const f = SafetensorsFile.open(file);
  t.teardown(() => f.close());
  t.equal(f.bytesRead, f.dataStart, 'open reads only the length and the header');
  const before = f.bytesRead;
  const s = f.readFloat64('small');
  t.same([...s.data], small);
  t.equal(f.bytesRead - before, 12, 'read(small) reads exactly its 12 bytes');
  // Independent check that the bytes came from the right offset: the tensor
  // sits after 64 MiB, so reading from the start of the file could not produce it.
  t.equal(f.info('small').fileOffset, f.dataStart + bigN * 4);
  const b = f.readFloat32('big');
  t.equal(b.data.length, bigN);
  t.equal(b.data[4096 * 100], 4096 * 100);
  t.equal(f.bytesRead - before, 12 + bigN * 4);
});

t.test('fixture headers parse', async (t) => {
  const file = new URL('../fixtures/mla-tiny.safetensors', import.meta.url);
  const f = SafetensorsFile.open(file.pathname);
  t.teardown(() => f.close());
  t.equal(f.info('weights.kv_b_proj.weight').dtype, 'BF16');
  t.same(f.info('weights.kv_b_proj.weight').shape, [132, 32]);
  t.same(f.info('cache.latent').shape, [2, 10, 32]);
  t.match(f.metadata['source'], /DeepSeek-V3 inference\/model\.py/);
  const dtypes = new Set<SafetensorsDtype>([...f.tensors.values()].map((i) => i.dtype));
  t.same([...dtypes].sort(), ['BF16', 'F32']);
  const { header } = buildSafetensors({ a: { dtype: 'U8', shape: [1], data: [7] } });
  t.equal(header.length % 8, 0);
});
