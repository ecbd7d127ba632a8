/*
 * Ledger append micro-benchmark: 100-byte replies appended with durability
 * os by 1, 2 and 4 processes into one ledger (each opens it itself, all
 * start together), and the same with a 100-byte request before each reply
 * (REQUEST + REPLY in one append). Aggregate records/s (wall), best of
 * rounds, and the CPU time per record (user + system of the writers:
 * steadier than the wall time on a loaded machine), the writers' context
 * switches per record (voluntary: waits for the append lock in the
 * kernel), and the ratio of 2 processes' aggregate rate to 1 process's.
 * The C core's ceiling under bench/cassette.py's writer processes.
 *
 *   build/bench_ledger [records-per-process [rounds [cases]]]
 *
 * cases: a comma-separated subset of x1,1,2,4,r1,r2 (1 process
 * exclusive, 1, 2 and 4 processes, 1 and 2 processes with a request
 * before each reply); all by default. BENCH_PIN=1 pins writer i to CPU i
 * (mod the CPUs), BENCH_PIN=same every writer to CPU 0.
 */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fabric/ledger.h"

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now(void) { return clock_s(CLOCK_MONOTONIC); }

static void fill_keys(uint8_t *k, size_t n, unsigned seed)
{
    uint64_t x = 0x9E3779B97F4A7C15ull * (seed + 1);
    for (size_t i = 0; i < n * 32; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        k[i] = (uint8_t)x;
    }
}

/* One writer process: opens, says ready, waits for go, appends n records,
 * writes its seconds to out. */
static void writer(const char *path, int exclusive, int with_req, size_t n, unsigned seed,
                   int ready, int go, int out)
{
    uint8_t *keys = malloc(n * 32);
    if (keys == NULL)
        _exit(2);
    fill_keys(keys, n, seed);
    uint8_t value[100], req[100];
    memset(value, 'v', sizeof(value));
    memset(req, 'r', sizeof(req));
    fab_ledger_options o = {0};
    o.mode = FAB_LEDGER_WRITE;
    o.durability = FAB_DUR_OS;
    o.exclusive = exclusive;
    o.no_checkpoint = 1;
    fab_ledger *l;
    fab_ledger_error e;
    if (fab_ledger_open(&l, path, &o, &e) != 0) {
        fprintf(stderr, "open: %s\n", e.msg);
        _exit(2);
    }
    char c = 'r';
    if (write(ready, &c, 1) != 1 || read(go, &c, 1) != 1)
        _exit(2);
    double t = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    for (size_t i = 0; i < n; i++) {
        int rc = fab_ledger_record_req(l, keys + 32 * i, with_req ? req : NULL,
                                       with_req ? sizeof(req) : 0, value, sizeof(value), 0, &e);
        if (rc != 1) {
            fprintf(stderr, "record: %d %s\n", rc, e.msg);
            _exit(2);
        }
    }
    t = clock_s(CLOCK_PROCESS_CPUTIME_ID) - t;
    fab_ledger_close(l);
    if (write(out, &t, sizeof(t)) != sizeof(t))
        _exit(2);
    _exit(0);
}

/* Aggregate records/s of procs processes appending n records each;
 * *cpu the CPU seconds per record, *csw the writers' voluntary context
 * switches per record. */
static double run(const char *path, int procs, int exclusive, int with_req, size_t n,
                  double *cpu, double *csw)
{
    unlink(path);
    int ready[2], go[2], out[2];
    if (pipe(ready) || pipe(go) || pipe(out))
        abort();
    for (int i = 0; i < procs; i++) {
        if (fork() == 0) {
            /* BENCH_PIN=1: writer i on CPU i (mod the CPUs), to tell the
             * critical section's cost (writers on CPUs of their own) from
             * the machine's other load; BENCH_PIN=same: all on CPU 0 */
            const char *pin = getenv("BENCH_PIN");
            if (pin != NULL) {
                cpu_set_t set;
                CPU_ZERO(&set);
                long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
                CPU_SET(strcmp(pin, "same") == 0 ? 0 : i % (ncpu > 0 ? ncpu : 1), &set);
                (void)sched_setaffinity(0, sizeof(set), &set);
            }
            writer(path, exclusive, with_req, n, (unsigned)i + 1, ready[1], go[0], out[1]);
        }
    }
    char c;
    for (int i = 0; i < procs; i++)
        if (read(ready[0], &c, 1) != 1)
            abort();
    double t = now();
    for (int i = 0; i < procs; i++)
        if (write(go[1], "g", 1) != 1)
            abort();
    double cpu_s = 0;
    for (int i = 0; i < procs; i++) {
        double s;
        if (read(out[0], &s, sizeof(s)) != sizeof(s))
            abort();
        cpu_s += s;
    }
    t = now() - t;
    *cpu = cpu_s / ((double)procs * (double)n);
    int ok = 1;
    long vcsw = 0;
    for (int i = 0; i < procs; i++) {
        int st;
        struct rusage ru;
        if (wait4(-1, &st, 0, &ru) < 0)
            abort();
        vcsw += ru.ru_nvcsw;
        ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    *csw = (double)vcsw / ((double)procs * (double)n);
    close(ready[0]); close(ready[1]); close(go[0]); close(go[1]); close(out[0]); close(out[1]);
    if (!ok)
        abort();
    /* every record there, once (a strict open validates the file) */
    fab_ledger_options o = {0};
    o.mode = FAB_LEDGER_READ;
    o.no_checkpoint = 1;
    fab_ledger *l;
    fab_ledger_error e;
    if (fab_ledger_open(&l, path, &o, &e) != 0) {
        fprintf(stderr, "reopen: %s\n", e.msg);
        abort();
    }
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    if (fab_ledger_count(l) != (size_t)procs * n || st.records != (uint64_t)procs * n * (with_req ? 2 : 1)) {
        fprintf(stderr, "%zu keys, %llu records after %d x %zu appends\n", fab_ledger_count(l),
                (unsigned long long)st.records, procs, n);
        abort();
    }
    fab_ledger_close(l);
    unlink(path);
    return (double)procs * (double)n / t;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? (size_t)atol(argv[1]) : 200000;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    const char *only = argc > 3 ? argv[3] : "x1,1,2,4,r1,r2";
    char path[64];
    snprintf(path, sizeof(path), "bench-ledger-%ld.fabl", (long)getpid());
    static const struct { const char *id, *name; int procs, exclusive, req; } cases[] = {
        {"x1", "1 process, exclusive", 1, 1, 0},
        {"1", "1 process", 1, 0, 0},
        {"2", "2 processes", 2, 0, 0},
        {"4", "4 processes", 4, 0, 0},
        {"r1", "1 process, request+reply", 1, 0, 1},
        {"r2", "2 processes, request+reply", 2, 0, 1},
    };
    enum { NC = sizeof(cases) / sizeof(cases[0]) };
    int want[NC];
    for (int i = 0; i < NC; i++) {
        size_t k = strlen(cases[i].id);
        want[i] = 0;
        for (const char *p = only; *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) {
            if (strncmp(p, cases[i].id, k) == 0 && (p[k] == ',' || p[k] == '\0'))
                want[i] = 1;
        }
    }
    double best[NC] = {0}, cpu[NC], csw[NC];
    for (int i = 0; i < NC; i++)
        cpu[i] = csw[i] = 1e9;
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < NC; i++) {
            if (!want[i])
                continue;
            double c, w;
            double v = run(path, cases[i].procs, cases[i].exclusive, cases[i].req, n, &c, &w);
            if (v > best[i])
                best[i] = v;
            if (c < cpu[i])
                cpu[i] = c;
            if (w < csw[i])
                csw[i] = w;
        }
    for (int i = 0; i < NC; i++)
        if (want[i])
            printf("ledger appends, 100 B, os, %-28s %9.0f records/s  %5.2f us CPU per record"
                   "  %6.3f waits per record\n",
                   cases[i].name, best[i], cpu[i] * 1e6, csw[i]);
    if (want[1] && want[2])
        printf("2 processes / 1 process: %.2fx\n", best[2] / best[1]);
    if (want[4] && want[5])
        printf("2 processes / 1 process, request+reply: %.2fx\n", best[5] / best[4]);
    return 0;
}
