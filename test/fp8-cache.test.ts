// FP8 latent cache (DeepSeek-V3.2's 656-byte layout): the float64 quantizer and its edge cases
// (everywhere), then the kernels on the device (emulated in CI): appendLatent bit for bit against
// the reference quantizer, decode and prefill against the reference on the dequantized cache.
import t from 'tap';
import {
  bf16Encode,
  dequantizeFp8Cache,
  dequantizeFp8Row,
  e4m3Decode,
  e4m3Encode,
  fp8TileScale,
  quantizeFp8Cache,
  quantizeFp8Row,
  FP8_ROW_BYTES,
} from '../lib/reference/fp8.js';
import { randn, relError } from './helpers/gpu.js';

t.test('e4m3 encode: every byte round-trips, ties to even, negative zero, saturation, NaN', async (t) => {
  for (let b = 0; b < 256; b++) {
    const v = e4m3Decode(b);
    if (Number.isNaN(v)) {
      t.equal(b & 0x7f, 0x7f, `byte ${b} is NaN`);
      continue;
    }
    t.equal(e4m3Encode(v), b, `byte 0x${b.toString(16)} = ${v}`);
  }
  t.equal(e4m3Decode(0x7e), 448);
  t.equal(e4m3Decode(0x01), 2 ** -9);
  t.equal(e4m3Encode(-0), 0x80, 'negative zero keeps its sign');
  t.equal(e4m3Encode(0), 0x00);
  t.equal(e4m3Encode(-1e-30), 0x80, 'an underflow keeps its sign');
  t.equal(e4m3Encode(2 ** -10), 0x00, 'half the smallest subnormal ties to even (0)');
  t.equal(e4m3Encode(3 * 2 ** -10), 0x02, '1.5 subnormal steps ties to 2');
  t.equal(e4m3Encode(1 + 1 / 16), 0x38, '1 + half an ulp ties to 1.0 (even)');
  t.equal(e4m3Encode(1 + 3 / 16), 0x3a, '1 + 1.5 ulp ties to 1.25 (even)');
  t.equal(e4m3Encode(15.5 / 8 * 2 ** -6), 0x10, 'rounding carries into the exponent');
  t.equal(e4m3Encode(2 ** -6 * 0.9999), 0x08, 'just below the smallest normal rounds up to it');
  t.equal(e4m3Encode(448), 0x7e);
  t.equal(e4m3Encode(-448), 0xfe);
  t.equal(e4m3Encode(1000), 0x7e, 'saturates');
  t.equal(e4m3Encode(NaN) & 0x7f, 0x7f);
  t.equal(e4m3Encode(-Infinity), 0xff, 'infinity is the signed NaN (e4m3fn has no infinity)');
  t.equal(bf16Encode(1 + 2 ** -8), 0x3f80, 'bf16 ties to even');
  t.equal(bf16Encode(1 + 3 * 2 ** -8), 0x3f82);
  t.equal(bf16Encode(-0), 0x8000);
});

t.test('tile scale: power of two, 1e-4 floor, exact at the e4m3 limit', async (t) => {
  t.equal(fp8TileScale(0), 2 ** -13, 'amax 0: 1e-4 rounded up to 2^-13');
  t.equal(fp8TileScale(448), 1);
  t.equal(fp8TileScale(448 * (1 + 2 ** -52)), 2);
  t.equal(fp8TileScale(448 * 2 ** 5), 32);
  t.equal(fp8TileScale(447.9), 1);
  t.equal(fp8TileScale(224.0001), 1);
  t.equal(fp8TileScale(224), 0.5);
  t.equal(fp8TileScale(448 * 2 ** -14), 2 ** -13, 'below the floor');
});

function row576(seed: number, scale = 1): Float64Array {
  return Float64Array.from(randn(576, seed, scale));
}

t.test('quantize / dequantize one row: layout offsets, scales, error bound', async (t) => {
  const row = row576(1, 3);
  row.fill(0, 128, 256); // tile 1: amax 0
  row[300] = 448 * 4; // tile 2 at the limit: its scale is 4 and this value is 0x7e
  row[301] = -0;
  const bytes = new Uint8Array(FP8_ROW_BYTES);
  quantizeFp8Row(row, 0, bytes, 0);
  const dv = new DataView(bytes.buffer);
  t.equal(dv.getFloat32(512 + 4, true), 2 ** -13, 'amax-0 tile scale');
  t.equal(dv.getFloat32(512 + 8, true), 4, 'scale of the tile at the limit');
  t.equal(bytes[300], 0x7e);
  t.equal(bytes[301], 0x80, 'negative zero');
  for (let i = 128; i < 256; i++) if (bytes[i] !== 0) t.fail(`amax-0 tile byte ${i} = ${bytes[i]}`);
  const back = new Float64Array(576);
  dequantizeFp8Row(bytes, 0, back, 0);
  t.ok(Object.is(back[301], -0), 'negative zero reads back as -0');
  t.equal(back[300], 448 * 4);
  for (let tile = 0; tile < 4; tile++) {
    const s = dv.getFloat32(512 + 4 * tile, true);
    for (let i = tile * 128; i < tile * 128 + 128; i++) {
      // RNE in e4m3: |err| ≤ half an ulp (2^-4 relative for normals, 2^-10·s for subnormals).
      const bound = Math.max(Math.abs(row[i]!) * 2 ** -4, 2 ** -10 * s);
      if (Math.abs(back[i]! - row[i]!) > bound) t.fail(`value ${i}: ${row[i]} -> ${back[i]}`);
    }
  }
  for (let i = 512; i < 576; i++) if (Math.abs(back[i]! - row[i]!) > Math.abs(row[i]!) * 2 ** -8) t.fail(`rope ${i}`);
  const err = relError(back, row);
  t.ok(err < 0.04, `row rel err ${err.toExponential(2)}`);
});

t.test('non-finite values: NaN / Inf stored as e4m3 NaN, the tile scale from the finite values', async (t) => {
  const row = row576(2);
  row[5] = NaN;
  row[6] = -Infinity;
  row[520] = Infinity;
  const bytes = new Uint8Array(FP8_ROW_BYTES);
  quantizeFp8Row(row, 0, bytes, 0);
  t.equal(bytes[5]! & 0x7f, 0x7f);
  t.equal(bytes[6], 0xff);
  let amax = 0;
  for (let i = 0; i < 128; i++) if (Number.isFinite(row[i]!)) amax = Math.max(amax, Math.abs(row[i]!));
  t.equal(new DataView(bytes.buffer).getFloat32(512, true), fp8TileScale(amax));
  const back = new Float64Array(576);
  dequantizeFp8Row(bytes, 0, back, 0);
  t.ok(Number.isNaN(back[5]!) && Number.isNaN(back[6]!));
  t.equal(back[520], Infinity, 'a bf16 rope value keeps its infinity');
});

t.test('paged cache with a page stride above pageSize·656', async (t) => {
  const numPages = 3, pageSize = 2, pageStride = pageSize * FP8_ROW_BYTES + 48;
  const cache = Float64Array.from(randn(numPages * pageSize * 576, 3, 2));
  const bytes = quantizeFp8Cache(cache, { numPages, pageSize, pageStride });
  t.equal(bytes.length, numPages * pageStride);
  const back = dequantizeFp8Cache(bytes, { numPages, pageSize, pageStride });
  t.ok(relError(back, cache) < 0.04);
  const tight = dequantizeFp8Cache(quantizeFp8Cache(cache, { numPages, pageSize }), { numPages, pageSize });
  t.same(Array.from(tight), Array.from(back), 'the stride changes only where rows are');
  t.throws(() => dequantizeFp8Cache(bytes, { numPages, pageSize, pageStride: 100 }), { code: 'ERR_SHAPE' });
});
