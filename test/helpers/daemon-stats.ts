/** Figures of a live daemon for tests, through its control socket (bin/diag.ts daemonStats). */
import { daemonStats } from '../../bin/diag.js';

/**
 * The daemon's channel figures (`kvfs stats`'s channel part), once its control socket answers: it opens just
 * after the mount appears in the mount table, so a call right after mountKvfs may find it not there yet.
 */
export async function channelStats<T>(mnt: string): Promise<T> {
  for (let tries = 1; ; tries++) {
    try {
      return ((await daemonStats(mnt)) as unknown as { channel: T }).channel;
    } catch (e) {
      if (tries >= 100) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
