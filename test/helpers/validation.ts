// Shared by the validation tests: the one check every bad-input case makes.
import { MlaError } from '../../lib/index.js';
import type { DType } from '../../lib/dtype.js';
import { contiguousStrides, type TensorMeta } from '../../lib/runtime/tensor.js';

/** A TensorMeta with an element offset (checkRowAlignment reads it where a view starts mid-row). */
export interface MetaWithOffset extends TensorMeta {
  offset?: number;
}

/**
 * A tensor stand-in for the validation tests: the ops validate metadata only, so no device is
 * needed. Strides default to contiguous; `offset` is set only when given (absent = at element 0).
 */
export function meta(
  shape: number[],
  dtype: DType = 'bf16',
  strides: number[] = contiguousStrides(shape),
  extra: { disposed?: boolean; offset?: number } = {},
): MetaWithOffset {
  return { shape, strides, dtype, disposed: extra.disposed ?? false, ...(extra.offset === undefined ? {} : { offset: extra.offset }) };
}

/** The assertions used here (structural, so any tap Test fits). */
export interface Asserts {
  ok(v: unknown, msg: string): unknown;
  equal(a: unknown, b: unknown, msg: string): unknown;
  match(a: unknown, b: string | RegExp, msg: string): unknown;
  fail(msg: string): unknown;
}

/** fn must throw an MlaError with `code` whose message names `arg` in backticks. */
export function throwsNaming(t: Asserts, fn: () => unknown, code: string, arg: string, what = arg): void {
  try {
    fn();
    t.fail(`${what}: expected ${code} naming \`${arg}\``);
  } catch (err) {
    t.ok(err instanceof MlaError, `${what}: MlaError (${String(err)})`);
    t.equal((err as MlaError).code, code, `${what}: code ${code} (${(err as Error).message})`);
    t.match((err as Error).message, `\`${arg}\``, `${what}: message names \`${arg}\``);
  }
}

/** fn (sync or async) must fail with an MlaError of `code` whose message matches `pattern`. */
export async function rejects(t: Asserts, fn: () => unknown, code: string, pattern: RegExp): Promise<void> {
  try {
    await fn();
    t.fail(`expected ${code}`);
  } catch (err) {
    t.ok(err instanceof MlaError, 'is an MlaError');
    t.equal((err as MlaError).code, code, `code ${code}`);
    t.match((err as MlaError).message, pattern, `message matches ${pattern}`);
  }
}

