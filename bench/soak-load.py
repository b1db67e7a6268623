#!/usr/bin/python3
"""
The soak's python processes (bench/soak.ts runs each as its own process, never in its own event loop).

  soak-load.py writer DIR STOPFILE SEED PREFIX ADOPT.json   files written, rewritten, truncated, deleted
  soak-load.py sqlite DB STOPFILE SEED                      transactions and PRAGMA integrity_check
  soak-load.py hold DIR STOPFILE                            holds DIR (its cwd) busy until STOPFILE exists
  soak-load.py mkbig DIR N                                  N empty files f0000000 ... (mknod(2))
  soak-load.py hash ROOT REL...                             prints {"REL": [size, sha256] | "error"}
  soak-load.py verify SPEC.json                             checks a ledger against the mount (below)

Lines on stdout, each flushed once the calls it reports have returned (times: ms since the epoch):
  W REL SIZE SHA256                 writer: REL was written and closed (fsynced first, or not) with this content
  D REL                             writer: REL was read back, matched, and unlinked
  X REL                             writer: a call on REL failed, so its content is unknown: it leaves the ledger
  B REL WHAT                        a read-back did not match what was written, or SQLite found damage
  C ROUND ROWS                      sqlite: transaction ROUND committed; the table then held ROWS rows
  E CALL ERRNO T_MS DUR_MS NAME     a call failed (ERRNO: its name, or the exception for SQLite)
  S {json}                          the last line: counts, the longest call per kind, calls over 1 s
Contract: a W line means every call on that file returned success (open, write, fsync, close); the file must
read back as SIZE bytes with SHA256 until a D or X line for it. The writer stops after its current operation
once STOPFILE exists (on local disk, never on the mount), and so does sqlite after its current transaction.

verify SPEC: {"root": MNT, "files": {REL: [size, sha256]}, "exact": [DIR...], "allow": [REL or DIR/...],
"big": {"dir": REL, "n": N} | null, "sqlite": {"rel": REL, "rows": N} | null}. Every ledger file is read
(after POSIX_FADV_DONTNEED) and hashed; under each "exact" directory no regular file may exist that the ledger
does not name ("allow" lists files whose content is unknown after a failed call); the big directory must
hold exactly f0000000..f{N-1}, all empty regular files; the SQLite database must pass PRAGMA
integrity_check, hold ROWS rows, and every row's payload must match its stored sha256.
"""
import errno
import hashlib
import json
import math
import os
import random
import sqlite3
import sys
import time

wall = lambda: int(time.time() * 1000)
stats = {'ops': {}, 'errors': 0, 'maxMs': {}, 'slow': []}
# E lines are the loads' (writer, sqlite); the checks print one JSON object and say what failed in it
report_calls = sys.argv[1] in ('writer', 'sqlite')


def out(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def count(kind, n=1):
    stats['ops'][kind] = stats['ops'].get(kind, 0) + n


def err_name(e):
    if isinstance(e, OSError) and e.errno is not None:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__ + ':' + str(e).replace(' ', '_')[:80]


def timed(kind, name, fn, *a):
    """calls fn(*a); records its duration; an exception is reported (E line) and raised again"""
    w0, t0 = wall(), time.monotonic()
    try:
        return fn(*a)
    except (OSError, sqlite3.Error) as e:
        stats['errors'] += 1
        if report_calls:
            out('E %s %s %d %d %s' % (kind, err_name(e), w0, round((time.monotonic() - t0) * 1000), name))
        raise
    finally:
        ms = (time.monotonic() - t0) * 1000
        if ms > stats['maxMs'].get(kind, 0):
            stats['maxMs'][kind] = round(ms, 1)
        if ms > 1000 and len(stats['slow']) < 200:
            stats['slow'].append([kind, w0, round(ms)])


def sha(b):
    return hashlib.sha256(b).hexdigest()


def read_all(path, drop=True):
    fd = timed('open', path, os.open, path, os.O_RDONLY)
    try:
        if drop:
            timed('fadvise', path, os.posix_fadvise, fd, 0, 0, os.POSIX_FADV_DONTNEED)
        parts = []
        while True:
            b = timed('read', path, os.read, fd, 1 << 20)
            if not b:
                break
            parts.append(b)
        return b''.join(parts)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def write_all(fd, name, data):
    v = memoryview(data)
    while v:
        n = min(len(v), random.randint(4096, 1 << 20))
        v = v[timed('write', name, os.write, fd, v[:n]):]


# ------------------------------------------------------------------------------------------------ writer

def writer(d, stop, seed, prefix, adopt_file):
    rnd = random.Random(seed)
    random.seed(seed + 1)
    live = {}  # rel -> bytearray: what each file holds
    next_id = [0]
    MAX_LIVE = 24

    def path(rel):
        return os.path.join(d, rel)

    def lost(rel):
        """a call on rel failed: its content is unknown"""
        live.pop(rel, None)
        out('X ' + rel)
        try:
            os.unlink(path(rel))
        except OSError:
            pass

    def close_quietly(fd):
        try:
            os.close(fd)
        except OSError:
            pass

    def finish(rel, fd, data, sync):
        p = path(rel)
        try:
            if sync:
                timed('fsync', p, os.fsync, fd)
        except OSError:
            close_quietly(fd)
            raise
        timed('close', p, os.close, fd)
        live[rel] = data
        out('W %s %d %s' % (rel, len(data), sha(data)))

    def new_name():
        next_id[0] += 1
        return '%s-%06d' % (prefix, next_id[0] - 1)

    def create(rel):
        size = int(math.exp(rnd.uniform(math.log(1024), math.log(2 << 20))))
        data = bytearray(rnd.randbytes(size))
        fd = timed('open', path(rel), os.open, path(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, path(rel), data)
        except OSError:
            close_quietly(fd)
            raise
        finish(rel, fd, data, rnd.random() < 0.5)
        count('create')

    def rewrite(rel):
        data = bytearray(live[rel])
        off = rnd.randint(0, len(data))
        piece = rnd.randbytes(rnd.randint(1, 300_000))
        fd = timed('open', path(rel), os.open, path(rel), os.O_WRONLY)
        try:
            v, at = memoryview(piece), off
            while v:
                n = timed('pwrite', path(rel), os.pwrite, fd, v, at)
                v, at = v[n:], at + n
        except OSError:
            close_quietly(fd)
            raise
        data[off:off + len(piece)] = piece
        finish(rel, fd, data, rnd.random() < 0.5)
        count('rewrite')

    def truncate(rel):
        data = live[rel]
        size = rnd.randint(0, len(data) + 100_000)
        fd = timed('open', path(rel), os.open, path(rel), os.O_WRONLY)
        try:
            timed('ftruncate', path(rel), os.ftruncate, fd, size)
        except OSError:
            close_quietly(fd)
            raise
        data = bytearray(data[:size]) + bytearray(max(0, size - len(data)))
        finish(rel, fd, data, rnd.random() < 0.5)
        count('truncate')

    def delete(rel):
        got = read_all(path(rel))
        if got != live[rel]:
            out('B %s read %d bytes sha256 %s, expected %d bytes sha256 %s' % (rel, len(got), sha(got), len(live[rel]), sha(live[rel])))
            live.pop(rel)
            return
        timed('unlink', path(rel), os.unlink, path(rel))
        live.pop(rel)
        out('D ' + rel)
        count('delete')

    # files of an earlier writer on this directory: read back, and taken over when they match
    with open(adopt_file) as f:
        for rel, size, want in json.load(f):
            try:
                got = read_all(path(rel))
            except OSError:
                lost(rel)
                continue
            if len(got) != size or sha(got) != want:
                out('B %s read %d bytes sha256 %s, expected %d bytes sha256 %s' % (rel, len(got), sha(got), size, want))
                continue
            live[rel] = bytearray(got)
            count('adopt')

    while not os.path.exists(stop):
        r = rnd.random()
        rel = rnd.choice(sorted(live)) if live else None
        try:
            if rel is None or r < 0.45:
                rel = new_name()
                create(rel)
            elif r < 0.70:
                rewrite(rel)
            elif r < 0.80:
                truncate(rel)
            else:
                delete(rel)
            while len(live) > MAX_LIVE:
                rel = min(live)
                delete(rel)
        except OSError:
            if rel is not None:
                lost(rel)
            time.sleep(0.05)
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------ sqlite

def sqlite(db, stop, seed):
    rnd = random.Random(seed)
    con = timed('connect', db, sqlite3.connect, db, 60, 0, None)  # timeout 60 s, autocommit: explicit BEGIN
    ex = lambda sql, *a: timed('execute', db, con.execute, sql, *a)
    ex('PRAGMA synchronous=FULL')
    ex('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, round INTEGER, payload BLOB, sha TEXT)')
    rnd_round = ex('SELECT coalesce(max(round), 0) FROM t').fetchone()[0]
    while not os.path.exists(stop):
        rnd_round += 1
        try:
            ex('BEGIN IMMEDIATE')
            try:
                for _ in range(40):
                    p = rnd.randbytes(rnd.randint(64, 8192))
                    ex('INSERT INTO t (round, payload, sha) VALUES (?, ?, ?)', (rnd_round, p, sha(p)))
                ex('DELETE FROM t WHERE round <= ?', (rnd_round - 30,))
                ex('COMMIT')
            except sqlite3.Error:
                try:
                    con.execute('ROLLBACK')
                except sqlite3.Error:
                    pass
                raise
            rows = ex('SELECT count(*) FROM t').fetchone()[0]
            out('C %d %d' % (rnd_round, rows))
            count('transaction')
            res = ex('PRAGMA integrity_check').fetchall()
            count('integrity_check')
            if res != [('ok',)]:
                out('B %s integrity_check: %s' % (os.path.basename(db), ' / '.join(str(r[0]) for r in res[:5])))
        except sqlite3.Error:
            time.sleep(0.1)
        time.sleep(0.05)
    timed('close', db, con.close)


def sqlite_check(db, rows):
    """integrity_check, the row count, and every payload against its sha256"""
    res = {'integrity': None, 'rows': None, 'bad': []}
    try:
        con = sqlite3.connect(db, 60)
        res['integrity'] = ' / '.join(str(r[0]) for r in con.execute('PRAGMA integrity_check').fetchall()[:5])
        n = 0
        for i, p, h in con.execute('SELECT id, payload, sha FROM t'):
            n += 1
            if sha(p) != h and len(res['bad']) < 20:
                res['bad'].append('row %d: payload sha256 %s, stored %s' % (i, sha(p), h))
        res['rows'] = n
        con.close()
    except (OSError, sqlite3.Error) as e:
        res['bad'].append('%s: %s' % (os.path.basename(db), err_name(e)))
    if rows is not None and res['rows'] != rows:
        res['bad'].append('%d rows, the last commit left %d' % (res['rows'] or 0, rows))
    if res['integrity'] != 'ok':
        res['bad'].append('integrity_check: %s' % res['integrity'])
    return res


# ------------------------------------------------------------------------------------------------ checks

def verify(spec_file):
    with open(spec_file) as f:
        spec = json.load(f)
    root = spec['root']
    res = {'files': 0, 'bytes': 0, 'mismatched': [], 'missing': [], 'extra': [], 'big': None, 'sqlite': None}
    for rel, (size, want) in sorted(spec['files'].items()):
        try:
            got = read_all(os.path.join(root, rel))
        except OSError as e:
            (res['missing'] if e.errno == errno.ENOENT else res['mismatched']).append('%s: %s' % (rel, err_name(e)))
            continue
        res['files'] += 1
        res['bytes'] += len(got)
        if len(got) != size or sha(got) != want:
            res['mismatched'].append('%s: read %d bytes sha256 %s, expected %d bytes sha256 %s' % (rel, len(got), sha(got), size, want))
    allow = spec.get('allow', [])
    allowed = lambda rel: any(rel == a or (a.endswith('/') and rel.startswith(a)) for a in allow)
    for top in spec.get('exact', []):
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for n in names:
                rel = os.path.relpath(os.path.join(dirpath, n), root)
                if rel not in spec['files'] and not allowed(rel):
                    res['extra'].append(rel)
    big = spec.get('big')
    if big:
        want = set('f%07d' % i for i in range(big['n']))
        bad, seen = [], 0
        try:
            with os.scandir(os.path.join(root, big['dir'])) as it:
                for e in it:
                    seen += 1
                    st = e.stat(follow_symlinks=False)
                    if e.name not in want or not e.is_file(follow_symlinks=False) or st.st_size != 0:
                        bad.append('%s (size %d)' % (e.name, st.st_size))
                    want.discard(e.name)
        except OSError as e:
            bad.append('%s: %s' % (big['dir'], err_name(e)))
        res['big'] = {'entries': seen, 'bad': bad[:20], 'missing': len(want)}
    if spec.get('sqlite'):
        s = spec['sqlite']
        res['sqlite'] = sqlite_check(os.path.join(root, s['rel']), s['rows'])
    out(json.dumps(res))


def hash_files(root, rels):
    res = {}
    for rel in rels:
        try:
            b = read_all(os.path.join(root, rel), drop=False)
            res[rel] = [len(b), sha(b)]
        except OSError as e:
            res[rel] = err_name(e)
    out(json.dumps(res))


def mkbig(d, n):
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        os.mknod(os.path.join(d, 'f%07d' % i), 0o100644)
    out(json.dumps({'created': n}))


def hold(d, stop):
    os.chdir(d)
    fd = os.open('.', os.O_RDONLY)
    out('H %d' % os.getpid())
    while not os.path.exists(stop):
        time.sleep(0.05)
    os.close(fd)


def main():
    role, a = sys.argv[1], sys.argv[2:]
    try:
        if role == 'writer':
            writer(a[0], a[1], int(a[2]), a[3], a[4])
        elif role == 'sqlite':
            sqlite(a[0], a[1], int(a[2]))
        elif role == 'hold':
            hold(a[0], a[1])
        elif role == 'mkbig':
            mkbig(a[0], int(a[1]))
        elif role == 'hash':
            hash_files(a[0], a[1:])
        elif role == 'verify':
            verify(a[0])
        else:
            sys.exit('unknown role ' + role)
    finally:
        if role in ('writer', 'sqlite'):
            out('S ' + json.dumps(stats))


main()
