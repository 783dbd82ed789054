import { checkInteger } from '../check.js';
import { MlaError } from '../errors.js';
import { native } from '../native.js';
import type { NativeEvent, NativeGraph, NativeStream } from '../native.js';

// Captures in progress on this thread (each worker_thread loads its own copy of this module,
// matching CUDA's thread-local capture mode).
let captures = 0;

/** True while this thread is capturing a CUDA graph on some stream. */
export function capturing(): boolean {
  return captures > 0;
}

/**
 * Throws unless capture is off: during a capture, a host copy, a synchronisation or a device
 * allocation cannot become part of the graph, and CUDA would invalidate the capture.
 */
export function refuseDuringCapture(what: string, fix: string): void {
  if (captures > 0) throw new MlaError('ERR_ARGUMENT', `${what} is not allowed while a CUDA graph is being captured: ${fix}`);
}

/**
 * The native handle for an op's `stream` option: undefined (or null) is the legacy default
 * stream; anything but a live Stream throws ERR_ARGUMENT / ERR_DISPOSED naming `op`'s `stream`.
 */
export function nativeStream(op: string, stream: unknown): NativeStream | undefined {
  if (stream === undefined || stream === null) return undefined;
  if (!(stream instanceof Stream)) throw new MlaError('ERR_ARGUMENT', `${op}: \`stream\` must be a Stream`);
  if (stream.disposed) throw new MlaError('ERR_DISPOSED', `${op}: \`stream\` was disposed`);
  return stream.nativeHandle();
}

/** A CUDA stream: launches on one stream run in order; different streams may overlap. */
export class Stream {
  #s: NativeStream | undefined;
  #capturing = false;

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
    refuseDuringCapture('Stream.synchronize', 'synchronize after endCapture()');
    this.nativeHandle().synchronize();
  }

  /** Resolves when all queued work is done, without blocking the event loop. */
  synchronizeAsync(): Promise<void> {
    // Like every async method: a disposed stream is a rejected promise, not a synchronous throw.
    if (!this.#s) return Promise.reject(new MlaError('ERR_DISPOSED', 'Stream.synchronizeAsync: `stream` was disposed'));
    return this.#s.synchronizeAsync();
  }

  /** True when all queued work is done. */
  query(): boolean {
    return this.nativeHandle().query();
  }

  /** Later work on this stream waits for `event`. */
  waitEvent(event: Event): void {
    this.nativeHandle().waitEvent(event.nativeHandle());
  }

  /**
   * For benchmarks: holds this stream on the device until release(), so the work queued
   * meanwhile then runs back to back, and events recorded between it time the device alone
   * rather than the host's cost of queuing it (nvbench's blocking kernel). One stream per
   * process is held at a time. The hold ends by itself after `timeoutMs` (default 2000), so a
   * host that never releases cannot hang the device; queue at most a few hundred launches under
   * it, since a full launch queue blocks the host until then. Returns false where nothing can
   * hold: the emulated device runs each launch as it is made.
   */
  hold(opts: { timeoutMs?: number } = {}): boolean {
    refuseDuringCapture('Stream.hold', 'hold the stream before or after the capture');
    const timeoutMs = checkInteger('Stream.hold', 'timeoutMs', opts.timeoutMs ?? 2000, 1, 600_000);
    return this.nativeHandle().hold(timeoutMs);
  }

  /** Ends hold(): true when the hold lasted until now, false when its timeout had ended it. */
  release(): boolean {
    return this.nativeHandle().release();
  }

  /** True while this stream records a graph (between beginCapture and endCapture). */
  get isCapturing(): boolean {
    return this.#capturing;
  }

  /**
   * Starts recording: ops launched on this stream are captured into a graph instead of run,
   * until endCapture(). Allocate every buffer first and pass it as `out` / `workspace`, and set
   * `checkIndices: false`: copies to or from the host, synchronisation and allocations throw
   * (ERR_ARGUMENT) while a capture is active. Frees are held back until the capture ends.
   */
  beginCapture(): void {
    const s = this.nativeHandle();
    if (this.#capturing) throw new MlaError('ERR_ARGUMENT', 'Stream.beginCapture: this stream is already capturing');
    s.beginCapture();
    this.#capturing = true;
    captures++;
  }

  /**
   * Ends the capture. Without an argument: a new CudaGraph of what was recorded. With `graph`:
   * updates it in place when the recorded work has the same shape (the same kernels in the
   * same order; arguments, pointers and sizes may change) and returns true; returns false,
   * leaving `graph` unchanged, when it does not. The capture ends even when this throws.
   */
  endCapture(): CudaGraph;
  endCapture(graph: CudaGraph): boolean;
  endCapture(graph?: CudaGraph): CudaGraph | boolean {
    const s = this.nativeHandle();
    if (!this.#capturing) throw new MlaError('ERR_ARGUMENT', 'Stream.endCapture: this stream is not capturing (call beginCapture first)');
    const into = graph?.nativeHandle();
    this.#capturing = false;
    captures--;
    return into === undefined ? new CudaGraph(s.endCapture()) : s.endCapture(into);
  }

  /** Captures what `record` launches on this stream into a new graph (ends the capture on a throw). */
  capture(record: () => void): CudaGraph {
    this.beginCapture();
    recordInto(this, record);
    return this.endCapture();
  }

  dispose(): void {
    if (this.#capturing) {
      this.#capturing = false;
      captures--;
    }
    this.#s?.destroy();
    this.#s = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

// Runs `record` inside the capture open on `stream`; a throw ends and drops the capture first.
function recordInto(stream: Stream, record: () => void): void {
  try {
    record();
  } catch (err) {
    try {
      stream.endCapture().dispose();
    } catch {
      // the capture may be invalid already; the first error is the one to report
    }
    throw err;
  }
}

/**
 * An instantiated CUDA graph (Stream.endCapture / Stream.capture): launch() replays every
 * captured launch and device copy with one call and no JavaScript or validation in between.
 * It reads and writes the very buffers the capture used: keep them alive and update their
 * contents (not their identity) between launches.
 */
export class CudaGraph {
  #g: NativeGraph | undefined;

  /** @internal Made by Stream.endCapture. */
  constructor(g: NativeGraph) {
    this.#g = g;
  }

  get disposed(): boolean {
    return this.#g === undefined;
  }

  /** @internal */
  nativeHandle(): NativeGraph {
    if (!this.#g) throw new MlaError('ERR_DISPOSED', '`graph` was disposed');
    return this.#g;
  }

  /** Replays the graph on `stream`, after the work already queued there. */
  launch(stream: Stream): void {
    if (!(stream instanceof Stream)) throw new MlaError('ERR_ARGUMENT', 'CudaGraph.launch: `stream` must be a Stream');
    this.nativeHandle().launch(stream.nativeHandle());
  }

  /**
   * Re-records `record` on `stream` and updates this graph in place when the work has the same
   * shape; returns false (graph unchanged) when it does not, so the caller captures anew.
   */
  update(stream: Stream, record: () => void): boolean {
    this.nativeHandle();
    stream.beginCapture();
    recordInto(stream, record);
    return stream.endCapture(this);
  }

  dispose(): void {
    this.#g?.destroy();
    this.#g = undefined;
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
    refuseDuringCapture('Event.synchronize', 'synchronize after endCapture()');
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
