/**
 * The tables of `npm run bench` (run.ts): one figure per target and job, ratios between named pairs of targets,
 * and a run against an earlier run's saved results (results-<date>.json).
 *
 * The figure of a job is the unit it is judged by: MB/s (10^6 bytes per second) for the seq-* jobs, IOPS for the
 * other I/O jobs, operations (creates, stats, unlinks) per second for meta-*. A ratio divides two such figures of
 * the same job (for the fixed-block jobs the IOPS ratio and the MB/s ratio are the same number).
 */
import { readFileSync } from 'node:fs';
import { fmt } from './common.js';
import type { IoCounters } from './fio-targets.js';

export interface JobResult {
  mbs: number;
  iops: number;
}
/** a job's result, or why there is none: FAILED, HUNG, no target */
export type Cell = JobResult | string;
export type Row = Map<string, Cell>;

/** what results-<date>.json holds */
export interface SavedResults {
  started: string;
  host: string;
  version: string;
  quick: boolean;
  targets: { name: string; what: string }[];
  /** target name -> job -> result */
  rows: Record<string, Record<string, Cell>>;
}

export const unitOf = (job: string): string => (job.startsWith('seq-') ? 'MB/s' : job.startsWith('meta-') ? 'ops/s' : 'IOPS');

/** the figure a job is judged by (see unitOf), or undefined when the job has no result */
export function figure(job: string, c: Cell | undefined): number | undefined {
  if (c === undefined || typeof c === 'string') return undefined;
  const v = job.startsWith('seq-') ? c.mbs : c.iops;
  return Number.isFinite(v) ? v : undefined;
}

const formatFigure = (job: string, v: number): string => (job.startsWith('seq-') ? fmt(v, 1) : fmt(v));

function markdown(head: string[], lines: string[][]): string {
  return [
    `| ${head.join(' | ')} |`,
    `|${head.map((_, i) => (i ? '---:' : '---')).join('|')}|`,
    ...lines.map((l) => `| ${l.join(' | ')} |`),
  ].join('\n');
}

/** job, unit, then each target's figure */
export function figuresTable(jobs: string[], names: string[], rows: Map<string, Row>): string {
  return markdown(['job', 'unit', ...names], jobs.map((job) => [
    job, unitOf(job), ...names.map((n) => {
      const c = rows.get(n)?.get(job);
      const v = figure(job, c);
      return v !== undefined ? formatFigure(job, v) : typeof c === 'string' ? c : '-';
    }),
  ]));
}

/**
 * A ratio column: `num`'s figure over the denominator's. The denominator is one target, or, for `lowerOf`, the
 * lower of several targets' figures (the cell names which), only on the jobs in `jobs` when that is given.
 */
export interface RatioSpec {
  head: string;
  num: string;
  den: string[];
  jobs?: string[];
}

/** the ratio cell of one job: `-` when a side has no figure or the job is not the spec's */
function ratioCell(spec: RatioSpec, job: string, rows: Map<string, Row>): string {
  if (spec.jobs && !spec.jobs.includes(job)) return '-';
  const n = figure(job, rows.get(spec.num)?.get(job));
  const dens = spec.den.map((d) => ({ d, v: figure(job, rows.get(d)?.get(job)) }));
  if (n === undefined || dens.some((x) => x.v === undefined || x.v <= 0)) return '-';
  const low = dens.reduce((a, b) => (b.v! < a.v! ? b : a));
  return `${(n / low.v!).toFixed(2)}${spec.den.length > 1 ? ` (of ${low.d})` : ''}`;
}

export function ratioTable(jobs: string[], specs: RatioSpec[], rows: Map<string, Row>): string {
  return markdown(['job', ...specs.map((s) => s.head)], jobs.map((job) => [job, ...specs.map((s) => ratioCell(s, job, rows))]));
}

/** reads a results-<date>.json written by an earlier run */
export function loadResults(file: string): SavedResults {
  let r: SavedResults | undefined;
  try {
    r = JSON.parse(readFileSync(file, 'utf8')) as SavedResults;
  } catch (err) {
    throw new Error(`--compare ${file}: ${(err as Error).message}`);
  }
  if (!r || typeof r.rows !== 'object' || !Array.isArray(r.targets)) throw new Error(`--compare ${file}: not a bench results-<date>.json`);
  return r;
}

/** For each target in both runs: this run's figure, the earlier one's, and this over that. */
export function compareTable(jobs: string[], names: string[], rows: Map<string, Row>, then: SavedResults): string | undefined {
  const common = names.filter((n) => then.rows[n]);
  if (!common.length) return undefined;
  return markdown(['job', ...common.flatMap((n) => [`${n} now`, `${n} then`, 'now/then'])], jobs.map((job) => [
    job, ...common.flatMap((n) => {
      const a = figure(job, rows.get(n)?.get(job));
      const b = figure(job, then.rows[n]?.[job]);
      return [
        a === undefined ? '-' : formatFigure(job, a),
        b === undefined ? '-' : formatFigure(job, b),
        a !== undefined && b !== undefined && b > 0 ? (a / b).toFixed(2) : '-',
      ];
    }),
  ]));
}

/** per job and kvfs target: bytes sent per byte written, bytes fetched per byte returned */
export function ioTable(jobs: string[], ios: Map<string, Map<string, IoCounters>>): string {
  const names = [...ios.keys()];
  const per = (a: number, b: number): string => (b > 0 ? fmt(a / b, 2) : '-');
  return markdown(['job', ...names.flatMap((n) => [`${n} sent/written`, `${n} fetched/returned`])], jobs.map((job) => [
    job, ...names.flatMap((n) => {
      const c = ios.get(n)!.get(job);
      return c ? [per(c.bytesSent, c.bytesWritten), per(c.bytesFetched, c.bytesReturned)] : ['-', '-'];
    }),
  ]));
}
