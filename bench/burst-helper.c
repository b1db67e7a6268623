/* burst-helper: the file-tree work of the memory-burst bench (bench/burst.ts), in processes of its own.
 *   burst-helper create   ROOT NDIRS PERDIR NPROC          mkdir ROOT/dNN, then create every file (O_CREAT|O_EXCL)
 *   burst-helper stat     ROOT NDIRS PERDIR NPROC          stat() every file once
 *   burst-helper statloop ROOT NDIRS PERDIR NPROC SECONDS  NPROC processes stat() random files until the time is up
 * Files are ROOT/dNN/fNNNNNN: file i is in directory i / PERDIR. The work is split over NPROC forked processes.
 * Output, one line on stdout: "ops N errors E seconds S"; the first error of each process goes to stderr.
 * Exit status: 0 when every operation succeeded and every process exited normally, 1 otherwise, 2 for usage.
 * Build: cc -O2 -Wall -o burst-helper burst-helper.c */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct { volatile uint64_t ops, errors; } counts;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void file_path(char *buf, size_t n, const char *root, long i, long perdir) {
  snprintf(buf, n, "%s/d%02ld/f%06ld", root, i / perdir, i);
}

static void report_first(counts *c, const char *what, const char *path) {
  if (c->errors++ == 0) fprintf(stderr, "burst-helper: %s %s: %s\n", what, path, strerror(errno));
}

static void work(const char *mode, const char *root, long total, long perdir, long k, long nproc, double until, counts *c) {
  char p[4096];
  struct stat st;
  if (!strcmp(mode, "statloop")) {
    uint64_t x = 88172645463325252ull ^ (uint64_t)(k + 1) * 0x9E3779B97F4A7C15ull;
    while (now() < until) {
      for (int j = 0; j < 64; j++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        file_path(p, sizeof p, root, (long)(x % (uint64_t)total), perdir);
        if (stat(p, &st)) report_first(c, "stat", p); else c->ops++;
      }
    }
    return;
  }
  for (long i = total * k / nproc, end = total * (k + 1) / nproc; i < end; i++) {
    file_path(p, sizeof p, root, i, perdir);
    if (!strcmp(mode, "create")) {
      int fd = open(p, O_CREAT | O_EXCL | O_WRONLY, 0644);
      if (fd < 0 || close(fd)) report_first(c, "create", p); else c->ops++;
    } else {
      if (stat(p, &st)) report_first(c, "stat", p); else c->ops++;
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 6 || (strcmp(argv[1], "create") && strcmp(argv[1], "stat") && strcmp(argv[1], "statloop")) ||
      (!strcmp(argv[1], "statloop") && argc < 7)) {
    fprintf(stderr, "usage: burst-helper create|stat ROOT NDIRS PERDIR NPROC | statloop ROOT NDIRS PERDIR NPROC SECONDS\n");
    return 2;
  }
  const char *mode = argv[1], *root = argv[2];
  long ndirs = atol(argv[3]), perdir = atol(argv[4]), nproc = atol(argv[5]);
  double secs = argc > 6 ? atof(argv[6]) : 0;
  if (ndirs <= 0 || perdir <= 0 || nproc <= 0 || ndirs > 100) { fprintf(stderr, "burst-helper: bad numbers\n"); return 2; }
  long total = ndirs * perdir;
  if (!strcmp(mode, "create")) {
    char p[4096];
    for (long d = 0; d < ndirs; d++) {
      snprintf(p, sizeof p, "%s/d%02ld", root, d);
      if (mkdir(p, 0755) && errno != EEXIST) { fprintf(stderr, "burst-helper: mkdir %s: %s\n", p, strerror(errno)); return 1; }
    }
  }
  counts *c = mmap(NULL, nproc * sizeof *c, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (c == MAP_FAILED) { perror("burst-helper: mmap"); return 1; }
  double t0 = now(), until = t0 + secs;
  for (long k = 0; k < nproc; k++) {
    pid_t pid = fork();
    if (pid < 0) { perror("burst-helper: fork"); return 1; }
    if (pid == 0) { work(mode, root, total, perdir, k, nproc, until, &c[k]); _exit(0); }
  }
  int bad = 0, status;
  while (wait(&status) > 0) if (!WIFEXITED(status) || WEXITSTATUS(status)) bad++;
  uint64_t ops = 0, errors = 0;
  for (long k = 0; k < nproc; k++) { ops += c[k].ops; errors += c[k].errors; }
  printf("ops %llu errors %llu seconds %.3f\n", (unsigned long long)ops, (unsigned long long)errors, now() - t0);
  if (bad) fprintf(stderr, "burst-helper: %d process(es) did not exit normally\n", bad);
  return errors || bad ? 1 : 0;
}
