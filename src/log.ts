/**
 * The daemon's log. Where it goes decides its form: to a file (the background log, `--log-file`) one JSON line
 * per event (pino: level, time, pid, msg, and the event's fields), which log tools read; anywhere else (a
 * terminal, a pipe to a supervisor such as systemd, which stamps lines itself) the readable `kvfs: message`.
 * The level (error, warn, info, debug, trace; default info) can change at runtime (`kvfs log-level MOUNTPOINT
 * LEVEL`, through the control socket); at debug the native driver logs every FUSE request (session.ts).
 */
import { fstatSync } from 'node:fs';
import { destination, pino, type Logger } from 'pino';

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug', 'trace'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
const RANK: Record<LogLevel, number> = { error: 50, warn: 40, info: 30, debug: 20, trace: 10 };

let json: Logger | undefined;
let level: LogLevel = 'info';
let rank = RANK.info;

/** JSON lines when standard error is a regular file (the background log), readable lines otherwise */
export function configureLog(opts: { level?: LogLevel; json?: boolean } = {}): void {
  let toFile = opts.json;
  if (toFile === undefined) {
    try {
      toFile = fstatSync(2).isFile();
    } catch {
      toFile = false;
    }
  }
  json = toFile
    ? pino({
      level: 'trace', // the level is decided here (enabled), so that it can change at runtime without pino's
      base: { pid: process.pid },
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
    }, destination({ fd: 2, sync: true }))
    : undefined;
  if (opts.level) setLogLevel(opts.level);
}

export function setLogLevel(l: string): LogLevel {
  if (!(LOG_LEVELS as readonly string[]).includes(l)) {
    throw new RangeError(`unknown log level '${l.slice(0, 32)}': give one of ${LOG_LEVELS.join(', ')}`);
  }
  level = l as LogLevel;
  rank = RANK[level];
  return level;
}

export const logLevel = (): LogLevel => level;
export const logsJson = (): boolean => json !== undefined;

/** whether events of level l are logged now (a cheap test for callers that would build a costly message) */
export const logEnabled = (l: LogLevel): boolean => RANK[l] >= rank;

function emit(l: LogLevel, msg: string, fields?: Record<string, unknown>): void {
  if (RANK[l] < rank) return;
  if (json) {
    json[l](fields ?? {}, msg);
    return;
  }
  // readable: the message says it all (fields are for the JSON form's readers)
  console.error(`kvfs: ${msg}`);
}

export const log = {
  error: (msg: string, fields?: Record<string, unknown>) => emit('error', msg, fields),
  warn: (msg: string, fields?: Record<string, unknown>) => emit('warn', msg, fields),
  info: (msg: string, fields?: Record<string, unknown>) => emit('info', msg, fields),
  debug: (msg: string, fields?: Record<string, unknown>) => emit('debug', msg, fields),
  trace: (msg: string, fields?: Record<string, unknown>) => emit('trace', msg, fields),
};
