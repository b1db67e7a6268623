/**
 * Request latencies per opcode, kept as counts in buckets of a quarter octave (each bucket's bound is 2^(1/4),
 * about 19%, above the last), so recording costs an increment and an add, and memory stays fixed whatever the
 * load. A percentile is the upper bound of the bucket it falls in (at most 19% high); the maximum and the sum are
 * exact. The summary also gives cumulative counts at whole octaves (LATENCY_BOUNDS_US), which are exact too: the
 * quarter-octave bucket b holds values up to 2^(b/4) us and above 2^((b-1)/4) us, so it is within 2^k us exactly
 * when b <= 4k.
 */
const PER_OCTAVE = 4;
/** buckets cover 1 us up to 2^(BUCKETS/PER_OCTAVE) us (over an hour); longer ones count in the last */
const BUCKETS = 4 * 32;

/** the upper bounds (us) of LatencySummary.buckets: 2^0, 2^1, ..., 2^25 us (1 us to about 33.6 s) */
export const LATENCY_BOUNDS_US: readonly number[] = Object.freeze(Array.from({ length: 26 }, (_, k) => 2 ** k));

export interface LatencySummary {
  /** microseconds: the upper bound of the bucket holding the median, capped at max */
  p50: number;
  /** microseconds: the same for the 99th percentile */
  p99: number;
  /** microseconds: the longest request, exact */
  max: number;
  /** requests recorded */
  count: number;
  /** microseconds: all recorded latencies added up, rounded to 0.1 */
  sum: number;
  /**
   * cumulative: buckets[i] is how many requests took at most LATENCY_BOUNDS_US[i] us (one number per bound,
   * never decreasing); longer requests are in count only
   */
  buckets: number[];
}

class Histogram {
  readonly counts = new Float64Array(BUCKETS);
  count = 0;
  sum = 0;
  max = 0;

  record(us: number): void {
    const b = us <= 1 ? 0 : Math.min(BUCKETS - 1, Math.ceil(Math.log2(us) * PER_OCTAVE));
    this.counts[b]!++;
    this.count++;
    this.sum += us;
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

  /** cumulative counts at LATENCY_BOUNDS_US: bound 2^k takes the buckets b <= PER_OCTAVE * k */
  cumulative(): number[] {
    const out: number[] = [];
    let seen = 0;
    let b = 0;
    for (let k = 0; k < LATENCY_BOUNDS_US.length; k++) {
      for (; b <= PER_OCTAVE * k && b < BUCKETS; b++) seen += this.counts[b]!;
      out.push(seen);
    }
    return out;
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
      out[op] = {
        p50: round(h.quantile(0.5)), p99: round(h.quantile(0.99)), max: round(h.max), count: h.count,
        sum: round(h.sum), buckets: h.cumulative(),
      };
    }
    return out;
  }
}

const round = (us: number) => Math.round(us * 10) / 10;
