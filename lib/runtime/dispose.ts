// Freeing device buffers on the error paths of ops and benchmark cases, in one place so every
// op frees the same way: what the call allocated goes, what the caller passed in stays.

/** Anything that holds device memory until disposed (tensors, workspaces, tables). */
export interface Disposable {
  dispose(): void;
}

/** Frees every entry, newest first (later buffers may be views or users of earlier ones). */
export function disposeAll(list: ReadonlyArray<Disposable | undefined>): void {
  for (let i = list.length - 1; i >= 0; i--) list[i]?.dispose();
}

/**
 * After a failed call: frees each output in `made` whose key the caller left out of `given`
 * (the op allocated it, and nobody else holds it); outputs the caller passed in are theirs.
 */
export function disposeUnlessGiven<K extends string>(made: Partial<Record<K, Disposable | undefined>>, given: Partial<Record<K, unknown>>): void {
  for (const key of Object.keys(made) as K[]) {
    if (given[key] === undefined) made[key]?.dispose();
  }
}
