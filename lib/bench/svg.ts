// A standalone SVG roofline: log-log arithmetic intensity (FLOP/byte) against TFLOP/s, with
// the memory-bandwidth slope and the matmul ceiling, one colour per suite. Written by hand
// so the package needs no plotting dependency.
import type { BenchReport } from './report.js';
import { fmtNum } from './report.js';

const W = 960;
const H = 620;
const M = { left: 84, right: 230, top: 64, bottom: 72 };
const PW = W - M.left - M.right;
const PH = H - M.top - M.bottom;

const SUITE_COLORS: Record<string, string> = {
  decode: '#1f77b4', prefill: '#ff7f0e', rope: '#2ca02c', linear: '#d62728', layer: '#9467bd', copy: '#8c564b',
};
const EXTRA_COLORS = ['#e377c2', '#17becf', '#bcbd22', '#7f7f7f'];

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/** Tick label of a power of ten: 0.01, 0.1, 1, 10, ..., 1e+5 beyond. */
export function decadeLabel(e: number): string {
  if (e >= -3 && e <= 4) return String(Number((10 ** e).toFixed(Math.max(0, -e))));
  return `1e${e}`;
}

/** Approximate width of one 9 px label character; enough to keep labels from overlapping. */
const LABEL_CHAR_W = 5.2;
const LABEL_H = 10;

interface Box {
  x: number;
  y: number;
  w: number;
}

function overlaps(a: Box, b: Box): boolean {
  return a.x < b.x + b.w && b.x < a.x + a.w && Math.abs(a.y - b.y) < LABEL_H;
}

/** First free spot for a label at (x, y) baseline, moving down then up a line at a time; null when crowded. */
function placeLabel(x: number, y: number, w: number, placed: Box[]): Box | null {
  for (const dy of [0, LABEL_H, -LABEL_H, 2 * LABEL_H, -2 * LABEL_H]) {
    const box = { x, y: y + dy, w };
    if (box.y < M.top + LABEL_H || box.y > M.top + PH - 2) continue;
    if (!placed.some((b) => overlaps(b, box))) {
      placed.push(box);
      return box;
    }
  }
  return null;
}

interface Point {
  suite: string;
  label: string;
  x: number;
  y: number;
  main: boolean;
}

function decadeRange(values: readonly number[], fallback: [number, number]): [number, number] {
  const v = values.filter((x) => x > 0 && Number.isFinite(x));
  if (v.length === 0) return fallback;
  let lo = Math.floor(Math.log10(Math.min(...v) / 1.3));
  let hi = Math.ceil(Math.log10(Math.max(...v) * 1.3));
  if (hi - lo < 2) [lo, hi] = [lo - 1, hi + 1];
  return [lo, hi];
}

export function suiteColor(suite: string, order: readonly string[]): string {
  return SUITE_COLORS[suite] ?? EXTRA_COLORS[Math.max(0, order.indexOf(suite)) % EXTRA_COLORS.length]!;
}

/** The SVG document for a report (results without FLOPs, e.g. copy, cannot be placed and are counted in a note). */
export function rooflineSvg(r: BenchReport): string {
  const { bandwidthTBs: bw, matmulTFlops: mm } = r.ceilings;
  const points: Point[] = [];
  let unplaced = 0;
  for (const res of r.results) {
    if (!res.run) continue;
    if (!(res.flops > 0 && res.intensity > 0 && res.run.tflops > 0)) {
      unplaced++;
      continue;
    }
    points.push({ suite: res.suite, label: res.name, x: res.intensity, y: res.run.tflops, main: false });
    if (res.main && res.main.tflops > 0) points.push({ suite: res.suite, label: `${res.name} (main)`, x: res.intensity, y: res.main.tflops, main: true });
  }
  const ridge = bw && mm ? mm / bw : null;
  const [x0, x1] = decadeRange([...points.map((p) => p.x), ...(ridge ? [ridge / 4, ridge * 4] : [])], [-1, 3]);
  const [y0, y1] = decadeRange([...points.map((p) => p.y), ...(mm ? [mm] : []), ...(bw && !mm ? [bw * 10 ** x1] : [])], [-1, 3]);
  const sx = (x: number): number => M.left + ((Math.log10(x) - x0) / (x1 - x0)) * PW;
  const sy = (y: number): number => M.top + PH - ((Math.log10(y) - y0) / (y1 - y0)) * PH;
  const f = (n: number): string => n.toFixed(1);
  const out: string[] = [];
  out.push(`<?xml version="1.0" encoding="UTF-8"?>`);
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  const d = r.meta.device;
  const title = `mla-cuda roofline: ${d ? `${d.name} (sm_${d.computeCapability.replace('.', '')})` : 'no device'}`;
  out.push(`<title>${escapeXml(title)}</title>`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text class="title" x="${W / 2 - M.right / 2 + M.left / 2}" y="28" text-anchor="middle" font-size="17" font-weight="bold">${escapeXml(title)}</text>`);
  out.push(`<text x="${W / 2 - M.right / 2 + M.left / 2}" y="47" text-anchor="middle" fill="#555">${escapeXml(`mla-cuda ${r.meta.package.version}, commit ${r.meta.commit?.slice(0, 12) ?? 'unknown'}, ${r.meta.date.slice(0, 10)}; median of ${r.meta.settings.repeats} runs`)}</text>`);
  out.push(`<defs><clipPath id="plot"><rect x="${M.left}" y="${M.top}" width="${PW}" height="${PH}"/></clipPath></defs>`);
  // Grid and ticks.
  out.push(`<g class="axes" stroke="#000" fill="none">`);
  for (let e = x0; e <= x1; e++) {
    const px = f(sx(10 ** e));
    out.push(`<line x1="${px}" y1="${M.top}" x2="${px}" y2="${M.top + PH}" stroke="#e4e4e4"/>`);
    out.push(`<line class="tick" x1="${px}" y1="${M.top + PH}" x2="${px}" y2="${M.top + PH + 6}"/>`);
    for (let k = 2; k < 10 && e < x1; k++) out.push(`<line x1="${f(sx(k * 10 ** e))}" y1="${M.top + PH}" x2="${f(sx(k * 10 ** e))}" y2="${M.top + PH + 3}"/>`);
  }
  for (let e = y0; e <= y1; e++) {
    const py = f(sy(10 ** e));
    out.push(`<line x1="${M.left}" y1="${py}" x2="${M.left + PW}" y2="${py}" stroke="#e4e4e4"/>`);
    out.push(`<line class="tick" x1="${M.left - 6}" y1="${py}" x2="${M.left}" y2="${py}"/>`);
    for (let k = 2; k < 10 && e < y1; k++) out.push(`<line x1="${M.left - 3}" y1="${f(sy(k * 10 ** e))}" x2="${M.left}" y2="${f(sy(k * 10 ** e))}"/>`);
  }
  out.push(`<rect x="${M.left}" y="${M.top}" width="${PW}" height="${PH}"/>`);
  out.push(`</g>`);
  out.push(`<g class="tick-labels" fill="#000">`);
  for (let e = x0; e <= x1; e++) out.push(`<text x="${f(sx(10 ** e))}" y="${M.top + PH + 20}" text-anchor="middle">${decadeLabel(e)}</text>`);
  for (let e = y0; e <= y1; e++) out.push(`<text x="${M.left - 10}" y="${f(sy(10 ** e) + 4)}" text-anchor="end">${decadeLabel(e)}</text>`);
  out.push(`</g>`);
  out.push(`<text class="axis-label" x="${M.left + PW / 2}" y="${H - 24}" text-anchor="middle" font-size="13">arithmetic intensity (FLOP/byte)</text>`);
  out.push(`<text class="axis-label" transform="translate(24 ${M.top + PH / 2}) rotate(-90)" text-anchor="middle" font-size="13">TFLOP/s</text>`);
  // Ceilings.
  out.push(`<g clip-path="url(#plot)" fill="none" stroke-width="2.5">`);
  const xl = 10 ** x0;
  const xr = 10 ** x1;
  if (bw) {
    const xe = ridge ?? xr;
    out.push(`<line class="ceiling-bandwidth" x1="${f(sx(xl))}" y1="${f(sy(bw * xl))}" x2="${f(sx(xe))}" y2="${f(sy(bw * xe))}" stroke="#333"/>`);
  }
  if (mm) {
    const xs = ridge ?? xl;
    out.push(`<line class="ceiling-matmul" x1="${f(sx(xs))}" y1="${f(sy(mm))}" x2="${f(sx(xr))}" y2="${f(sy(mm))}" stroke="#333" stroke-dasharray="${bw ? 'none' : '6 4'}"/>`);
  }
  if (ridge) out.push(`<line class="ridge" x1="${f(sx(ridge))}" y1="${f(sy(mm!))}" x2="${f(sx(ridge))}" y2="${M.top + PH}" stroke="#999" stroke-width="1" stroke-dasharray="3 3"/>`);
  out.push(`</g>`);
  if (bw) {
    // On the slope, a quarter of the way up the plot, turned to run along it.
    const yl = Math.min(10 ** (y0 + 0.25 * (y1 - y0)), mm ?? Infinity);
    const xl2 = Math.min(Math.max(yl / bw, 10 ** (x0 + 0.2)), ridge ?? 10 ** x1);
    const angle = (-Math.atan2(PH / (y1 - y0), PW / (x1 - x0)) * 180) / Math.PI;
    out.push(`<text class="ceiling-label" transform="translate(${f(sx(xl2) - 6)} ${f(sy(bw * xl2) - 6)}) rotate(${angle.toFixed(1)})" fill="#333">${escapeXml(`${fmtNum(bw)} TB/s`)}</text>`);
  }
  if (mm) out.push(`<text class="ceiling-label" x="${M.left + PW - 4}" y="${f(sy(mm) - 7)}" text-anchor="end" fill="#333">${escapeXml(`${fmtNum(mm)} TFLOP/s matmul`)}</text>`);
  // Points.
  const suites = [...new Set(r.results.map((x) => x.suite))];
  out.push(`<g class="points" clip-path="url(#plot)" font-size="9">`);
  // Markers are obstacles too, so a label never covers another point.
  const placed: Box[] = points.map((p) => ({ x: sx(p.x) - 5, y: sy(p.y) + 3, w: 10 }));
  let hidden = 0;
  for (const p of points) {
    const c = suiteColor(p.suite, suites);
    const [cx, cy] = [f(sx(p.x)), f(sy(p.y))];
    const tip = `${p.suite} ${p.label}: ${fmtNum(p.y)} TFLOP/s at ${fmtNum(p.x)} FLOP/B`;
    out.push(`<circle class="point" data-suite="${escapeXml(p.suite)}" cx="${cx}" cy="${cy}" r="4.5" fill="${p.main ? 'white' : c}" stroke="${c}" stroke-width="1.5"><title>${escapeXml(tip)}</title></circle>`);
    if (p.main) continue;
    const at = placeLabel(sx(p.x) + 7, sy(p.y) + 3, p.label.length * LABEL_CHAR_W, placed);
    if (at) out.push(`<text class="point-label" x="${f(at.x)}" y="${f(at.y)}" fill="${c}">${escapeXml(p.label)}</text>`);
    else hidden++;
  }
  out.push(`</g>`);
  // Legend.
  const lx = M.left + PW + 24;
  let ly = M.top + 8;
  out.push(`<g class="legend">`);
  out.push(`<text x="${lx}" y="${ly}" font-weight="bold">suites</text>`);
  for (const s of suites) {
    ly += 20;
    out.push(`<circle cx="${lx + 6}" cy="${ly - 4}" r="5" fill="${suiteColor(s, suites)}"/><text x="${lx + 18}" y="${ly}">${escapeXml(s)}</text>`);
  }
  ly += 20;
  out.push(`<circle cx="${lx + 6}" cy="${ly - 4}" r="4.5" fill="white" stroke="#555" stroke-width="1.5"/><text x="${lx + 18}" y="${ly}">main kernel only</text>`);
  ly += 28;
  out.push(`<text x="${lx}" y="${ly}" font-weight="bold">ceilings</text>`);
  ly += 20;
  out.push(`<line x1="${lx}" y1="${ly - 4}" x2="${lx + 14}" y2="${ly - 12}" stroke="#333" stroke-width="2.5"/><text x="${lx + 18}" y="${ly}">${escapeXml(bw ? `bandwidth ${fmtNum(bw)} TB/s` : 'bandwidth unknown')}</text>`);
  ly += 20;
  out.push(`<line x1="${lx}" y1="${ly - 4}" x2="${lx + 14}" y2="${ly - 4}" stroke="#333" stroke-width="2.5"/><text x="${lx + 18}" y="${ly}">${escapeXml(mm ? `matmul ${fmtNum(mm)} TFLOP/s` : 'matmul unknown')}</text>`);
  if (ridge) {
    ly += 20;
    out.push(`<text x="${lx}" y="${ly}" fill="#555">${escapeXml(`ridge at ${fmtNum(ridge)} FLOP/B`)}</text>`);
  }
  if (hidden > 0) {
    ly += 28;
    out.push(`<text class="note" x="${lx}" y="${ly}" fill="#555" font-size="10">${escapeXml(`${hidden} crowded label(s) left out;`)}</text>`);
    out.push(`<text class="note" x="${lx}" y="${ly + 14}" fill="#555" font-size="10">hover a point for its case</text>`);
    ly += 14;
  }
  if (unplaced > 0) {
    ly += 28;
    out.push(`<text class="note" x="${lx}" y="${ly}" fill="#555" font-size="10">${escapeXml(`${unplaced} result(s) with 0 FLOP`)}</text>`);
    out.push(`<text class="note" x="${lx}" y="${ly + 14}" fill="#555" font-size="10">(e.g. copy) not placed;</text>`);
    out.push(`<text class="note" x="${lx}" y="${ly + 28}" fill="#555" font-size="10">see the table / JSON</text>`);
  }
  out.push(`</g>`);
  out.push(`</svg>`);
  return `${out.join('\n')}\n`;
}
