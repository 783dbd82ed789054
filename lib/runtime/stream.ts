import { MlaError } from '../errors.js';
import { native } from '../native.js';
import type { NativeEvent, NativeStream } from '../native.js';

/** A CUDA stream: launches on one stream run in order; different streams may overlap. */
export class Stream {
  #s: NativeStream | undefined;

  constructor() {
    this.#s = new (native().Stream)();
  }

  get disposed(): boolean {
    return this.#s === undefined;
  }

  /** @internal */
  nativeHandle(): NativeStream {
    if (!this.#s) throw new MlaError('ERR_DISPOSED', '`stream` was disposed');
    return this.#s;
  }

  /** Blocks until all queued work is done. */
  synchronize(): void {
    this.nativeHandle().synchronize();
  }

  /** Resolves when all queued work is done, without blocking the event loop. */
  synchronizeAsync(): Promise<void> {
    return this.nativeHandle().synchronizeAsync();
  }

  /** True when all queued work is done. */
  query(): boolean {
    return this.nativeHandle().query();
  }

  /** Later work on this stream waits for `event`. */
  waitEvent(event: Event): void {
    this.nativeHandle().waitEvent(event.nativeHandle());
  }

  dispose(): void {
    this.#s?.destroy();
    this.#s = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** A marker in a stream, for ordering and timing. */
export class Event {
  #e: NativeEvent | undefined;

  constructor() {
    this.#e = new (native().Event)();
  }

  get disposed(): boolean {
    return this.#e === undefined;
  }

  /** @internal */
  nativeHandle(): NativeEvent {
    if (!this.#e) throw new MlaError('ERR_DISPOSED', '`event` was disposed');
    return this.#e;
  }

  /** Records the event on `stream` (default stream when omitted). */
  record(stream?: Stream): this {
    const h = this.nativeHandle();
    if (stream) h.record(stream.nativeHandle());
    else h.record();
    return this;
  }

  synchronize(): void {
    this.nativeHandle().synchronize();
  }

  query(): boolean {
    return this.nativeHandle().query();
  }

  /** Milliseconds from this event to `end` (both recorded; waits for `end`). */
  elapsedMs(end: Event): number {
    end.synchronize();
    return this.nativeHandle().elapsedMs(end.nativeHandle());
  }

  dispose(): void {
    this.#e?.destroy();
    this.#e = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
