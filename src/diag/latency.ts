/**
 * Request latencies per opcode, kept as counts in buckets of a quarter octave (each bucket's bound is 2^(1/4),
 * about 19%, above the last), so recording costs an increment and memory stays fixed whatever the load. A
 * percentile is the upper bound of the bucket it falls in (at most 19% high); the maximum is exact.
 */
const PER_OCTAVE = 4;
/** buckets cover 1 us up to 2^(BUCKETS/PER_OCTAVE) us (over an hour); longer ones count in the last */
const BUCKETS = 4 * 32;

export interface LatencySummary {
  /** microseconds */
  p50: number;
  p99: number;
  max: number;
  count: number;
}

class Histogram {
  readonly counts = new Float64Array(BUCKETS);
  count = 0;
  max = 0;

  record(us: number): void {
    const b = us <= 1 ? 0 : Math.min(BUCKETS - 1, Math.ceil(Math.log2(us) * PER_OCTAVE));
    this.counts[b]!++;
    this.count++;
    if (us > this.max) this.max = us;
  }

  /** the upper bound (us) of the bucket holding quantile q */
  quantile(q: number): number {
    const want = Math.max(1, Math.ceil(q * this.count));
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      seen += this.counts[b]!;
      if (seen >= want) return Math.min(this.max, 2 ** (b / PER_OCTAVE));
    }
    return this.max;
  }
}

export class Latencies {
  private readonly byOp = new Map<string, Histogram>();

  record(op: string, us: number): void {
    let h = this.byOp.get(op);
    if (!h) this.byOp.set(op, (h = new Histogram()));
    h.record(us);
  }

  summary(): Record<string, LatencySummary> {
    const out: Record<string, LatencySummary> = {};
    for (const [op, h] of this.byOp) {
      out[op] = { p50: round(h.quantile(0.5)), p99: round(h.quantile(0.99)), max: round(h.max), count: h.count };
    }
    return out;
  }
}

const round = (us: number) => Math.round(us * 10) / 10;
