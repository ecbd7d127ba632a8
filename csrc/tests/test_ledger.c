/*
 * The cassette ledger: round trip, torn tails, exhaustive corruption,
 * fault injection of write / fdatasync / ftruncate, streams, locking,
 * group commit, reader refresh and compaction.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "fabric/common.h"
#include "fabric/crc32c.h"
#include "fabric/ledger.h"
#include "fabric/lindex.h"

static char tmpdir[] = "/tmp/fab-ledger-test-XXXXXX";

static void key_of(uint8_t key[32], unsigned i)
{
    /* Distinct, SHA-like keys without hashing: CRCs of the index. */
    for (unsigned w = 0; w < 8; w++) {
        uint32_t v = fab_crc32c(w * 7919u, &i, sizeof(i));
        memcpy(key + 4 * w, &v, 4);
    }
}

static size_t reply_of(uint8_t *buf, unsigned i)
{
    size_t n = 1 + (i * 37) % 300;
    buf[0] = 0xc4; /* msgpack bin8: any bytes are fine for the core */
    for (size_t j = 1; j < n; j++)
        buf[j] = (uint8_t)(i * 31 + j);
    return n;
}

static void path_for(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
    unlink(out);
    char lock[600];
    snprintf(lock, sizeof(lock), "%s.lock", out);
    unlink(lock);
}

static fab_ledger *open_ledger(const char *path, int mode, int dur, int recover,
                               const fab_ledger_io *io, int *rc_out, fab_ledger_error *err)
{
    fab_ledger_options opt = {0};
    opt.mode = mode;
    opt.durability = dur;
    opt.recover = recover;
    opt.created_ns = 1700000000000000000ull;
    opt.io = io;
    fab_ledger *l = NULL;
    fab_ledger_error e2;
    int rc = fab_ledger_open(&l, path, &opt, err ? err : &e2);
    if (rc_out)
        *rc_out = rc;
    return l;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    struct stat sb;
    fstat(fd, &sb);
    uint8_t *buf = malloc((size_t)sb.st_size + 1);
    *len = (size_t)pread(fd, buf, (size_t)sb.st_size, 0);
    close(fd);
    return buf;
}

static void write_file(const char *path, const uint8_t *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK_EQ(write(fd, data, len), (long long)len);
    close(fd);
}

/* ---- round trip ----------------------------------------------------------- */

static void test_round_trip(void)
{
    char path[512];
    path_for(path, sizeof(path), "rt.fabl");
    int rc;
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_FSYNC, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    uint8_t key[32], buf[400];
    for (unsigned i = 0; i < 100; i++) {
        key_of(key, i);
        size_t n = reply_of(buf, i);
        CHECK_EQ(fab_ledger_record(l, key, buf, n, NULL), 1);
    }
    /* First write wins: a second record of a held key writes nothing. */
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    uint64_t bytes = st.bytes;
    key_of(key, 5);
    CHECK_EQ(fab_ledger_record(l, key, "x", 1, NULL), 0);
    fab_ledger_get_stats(l, &st);
    CHECK_EQ(st.bytes, bytes);
    CHECK_EQ(fab_ledger_count(l), 100);
    fab_ledger_close(l);

    l = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    CHECK_EQ(fab_ledger_count(l), 100);
    for (unsigned i = 0; i < 100; i++) {
        key_of(key, i);
        size_t n = reply_of(buf, i);
        fab_ledger_ref ref;
        CHECK_EQ(fab_ledger_lookup(l, key, 1, &ref, NULL), 1);
        CHECK_EQ(ref.len, n);
        CHECK_MEM(ref.data, buf, n);
        fab_lmap_release(ref.map);
    }
    key_of(key, 1000);
    fab_ledger_ref ref;
    CHECK_EQ(fab_ledger_lookup(l, key, 0, &ref, NULL), 0);
    /* Iteration follows ledger order. */
    fab_ledger_pos pos = {0};
    unsigned i = 0;
    uint8_t got[32];
    while (fab_ledger_next(l, &pos, got, 0, &ref, NULL) == 1) {
        key_of(key, i++);
        CHECK_MEM(got, key, 32);
    }
    CHECK_EQ(i, 100);
    fab_ledger_get_stats(l, &st);
    CHECK_EQ(st.records, 100);
    CHECK_EQ(st.bytes, bytes);
    CHECK_EQ(st.created_ns, 1700000000000000000ull);
    CHECK(strcmp(st.creator, "stream-fabric") == 0);
    CHECK_EQ(fab_ledger_record(l, key, "x", 1, NULL), FAB_ESTATE);
    fab_ledger_close(l);
}

/* ---- torn tail at every offset of the last record --------------------------- */

static void test_torn_tail_every_offset(void)
{
    char path[512], copy[512];
    path_for(path, sizeof(path), "torn.fabl");
    path_for(copy, sizeof(copy), "torn-copy.fabl");
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    uint8_t key[32], buf[400];
    for (unsigned i = 0; i < 10; i++) {
        key_of(key, i);
        fab_ledger_record(l, key, buf, reply_of(buf, i), NULL);
    }
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    uint64_t last_start = st.bytes;
    key_of(key, 10);
    CHECK_EQ(fab_ledger_record(l, key, buf, reply_of(buf, 10), NULL), 1);
    fab_ledger_close(l);
    size_t len;
    uint8_t *img = read_file(path, &len);
    for (uint64_t cut = last_start; cut < len; cut++) {
        write_file(copy, img, (size_t)cut);
        int rc;
        l = open_ledger(copy, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        if (!l)
            continue;
        fab_ledger_get_stats(l, &st);
        CHECK_EQ(st.keys, 10);
        CHECK_EQ(st.torn_tails_cut, cut > last_start ? 1 : 0);
        CHECK_EQ(st.bytes, last_start);
        /* The cut is real: the file ends at the last good record, and
         * appending works again. */
        CHECK_EQ(fab_ledger_record(l, key, "\xc0", 1, NULL), 1);
        fab_ledger_close(l);
        struct stat sb;
        stat(copy, &sb);
        CHECK_EQ(sb.st_size, last_start + FAB_LEDGER_REC_OVERHEAD + 1);
    }
    free(img);
}

/* ---- exhaustive corruption (in memory: the scan is what open runs) ---------- */

typedef struct image {
    uint8_t *data;
    size_t len;
    uint64_t starts[1024]; /* record offsets */
    size_t n;
} image;

typedef struct collect {
    const image *orig;
    size_t got;
    int changed; /* a record that differs from the original at that offset */
} collect;

static int collect_rec(void *ctx, uint64_t off, int type, const uint8_t *key,
                       const uint8_t *payload, size_t len)
{
    collect *c = ctx;
    FAB_UNUSED(type);
    const uint8_t *o = c->orig->data + off;
    if (off + FAB_LEDGER_REC_OVERHEAD + len > c->orig->len ||
        memcmp(o + FAB_LEDGER_REC_HEADER, key, 32) != 0 ||
        memcmp(o + FAB_LEDGER_REC_OVERHEAD, payload, len) != 0 ||
        fab_load_le32(o + 8) != len)
        c->changed = 1;
    c->got++;
    return 0;
}

static size_t record_at(const image *im, uint64_t pos)
{
    size_t i = 0;
    while (i + 1 < im->n && im->starts[i + 1] <= pos)
        i++;
    return i;
}

/* Scans a modified image; checks the classification. Returns 1 when ok. */
static int check_variant(const image *im, const uint8_t *data, size_t len, uint64_t changed_at,
                         int truncated)
{
    collect c = {im, 0, 0};
    fab_ledger_scan_result res;
    fab_ledger_error err;
    int rc = fab_ledger_scan_mem(data, len, FAB_RECOVER_STRICT, collect_rec, &c, &res, &err);
    if (c.changed)
        return 0; /* a changed reply was returned */
    if (changed_at < FAB_LEDGER_HEADER_SIZE)
        return rc == FAB_EFORMAT || rc == FAB_EVERSION || rc == FAB_ETRUNCATED;
    size_t r = record_at(im, changed_at);
    if (truncated) {
        /* A cut at a record boundary leaves a clean, shorter ledger. */
        int boundary = im->starts[r] == changed_at;
        return rc == 0 && res.records == r &&
               res.torn_at == (boundary ? UINT64_MAX : im->starts[r]);
    }
    if (r == im->n - 1)
        return rc == 0 && res.torn_at == im->starts[r] && res.records == r;
    return rc == FAB_ECORRUPT && err.offset == im->starts[r] && err.has_offset;
}

static void build_image(image *im, const char *name)
{
    char path[512];
    path_for(path, sizeof(path), name);
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    uint8_t key[32], buf[400];
    fab_ledger_stats st;
    im->n = 0;
    for (unsigned i = 0;; i++) {
        fab_ledger_get_stats(l, &st);
        if (st.bytes >= 32768)
            break;
        key_of(key, i);
        im->starts[im->n++] = st.bytes;
        if (i % 40 == 7) {
            /* A small stream: BEGIN, two chunks, END (4 records). */
            uint64_t begin;
            fab_ledger_stream_begin(l, key, &begin, NULL);
            fab_ledger_get_stats(l, &st);
            im->starts[im->n++] = st.bytes;
            fab_ledger_stream_append(l, key, begin, "\x01", 1, NULL);
            fab_ledger_get_stats(l, &st);
            im->starts[im->n++] = st.bytes;
            fab_ledger_stream_append(l, key, begin, "\x02", 1, NULL);
            fab_ledger_get_stats(l, &st);
            im->starts[im->n++] = st.bytes;
            fab_ledger_stream_end(l, key, begin, 2, NULL);
            continue;
        }
        fab_ledger_record(l, key, buf, reply_of(buf, i), NULL);
    }
    fab_ledger_close(l);
    im->data = read_file(path, &im->len);
}

static void test_exhaustive_corruption(void)
{
    image im;
    build_image(&im, "corrupt.fabl");
    CHECK(im.len >= 32768);
    uint8_t *work = malloc(im.len);
    size_t bad = 0, variants = 0;
    for (size_t p = 0; p < im.len; p++) {
        for (int bit = 0; bit < 10; bit++) {
            memcpy(work, im.data, im.len);
            if (bit < 8)
                work[p] ^= (uint8_t)(1u << bit);  /* every bit flipped */
            else if (bit == 8)
                work[p] ^= 0xff;                  /* every byte overwritten */
            else
                work[p] = (uint8_t)(work[p] + 0x5b);
            variants++;
            if (!check_variant(&im, work, im.len, p, 0)) {
                if (bad++ < 5)
                    fprintf(stderr, "    corruption at byte %zu variant %d misclassified\n", p, bit);
            }
        }
        /* Truncation at every offset. */
        variants++;
        if (!check_variant(&im, im.data, p, p, 1)) {
            if (bad++ < 5)
                fprintf(stderr, "    truncation at %zu misclassified\n", p);
        }
    }
    /* Zero-filled regions never validate: zero the tail from each record
     * on. At a record's start that is the end of the records (the space a
     * writer reserves after them), not a torn tail; from inside a record
     * it is torn. */
    for (size_t r = 0; r < im.n; r++) {
        memcpy(work, im.data, im.len);
        memset(work + im.starts[r], 0, im.len - im.starts[r]);
        collect c = {&im, 0, 0};
        fab_ledger_scan_result res;
        CHECK_EQ(fab_ledger_scan_mem(work, im.len, 0, collect_rec, &c, &res, NULL), 0);
        CHECK_EQ(res.records, r);
        CHECK_EQ(res.torn_at, UINT64_MAX);
        CHECK_EQ(res.valid_end, im.starts[r]);
        memcpy(work, im.data, im.len);
        memset(work + im.starts[r] + 5, 0, im.len - im.starts[r] - 5);
        CHECK_EQ(fab_ledger_scan_mem(work, im.len, 0, NULL, NULL, &res, NULL), 0);
        CHECK_EQ(res.records, r);
        CHECK_EQ(res.torn_at, im.starts[r]);
    }
    printf("    %zu variants of a %zu-byte ledger (%zu records), %zu misclassified\n", variants,
           im.len, im.n, bad);
    CHECK_EQ(bad, 0);
    free(work);
    free(im.data);
}

static int stop_at_first(void *ctx, uint64_t done, uint64_t total)
{
    FAB_UNUSED(ctx);
    FAB_UNUSED(done);
    FAB_UNUSED(total);
    return 1;
}

/* A stream that lost a chunk to salvage is not held: its END commits
 * nothing, as a stream without one (docs/spec/ledger.md, Replay). */
static void test_salvage_stream(void)
{
    image im;
    build_image(&im, "salvage-stream.fabl");
    /* Records 7..10: key 7's BEGIN, two chunks, END. */
    char path[512];
    path_for(path, sizeof(path), "salvage-stream-clean.fabl");
    write_file(path, im.data, im.len);
    int rc;
    fab_ledger_error err;
    fab_ledger_stats clean;
    fab_ledger *l = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, &rc, &err);
    CHECK_EQ(rc, 0);
    fab_ledger_get_stats(l, &clean);
    fab_ledger_close(l);
    for (size_t broken = 7; broken <= 9; broken++) { /* the BEGIN, a chunk, the other */
        uint8_t *data = malloc(im.len);
        memcpy(data, im.data, im.len);
        data[im.starts[broken] + FAB_LEDGER_REC_HEADER] ^= 0x40; /* a byte of its key */
        path_for(path, sizeof(path), "salvage-stream2.fabl");
        write_file(path, data, im.len);
        l = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_SALVAGE, NULL, &rc, &err);
        CHECK_EQ(rc, 0);
        fab_ledger_stats st;
        fab_ledger_get_stats(l, &st);
        CHECK_EQ(st.salvage_skips, 1);
        CHECK_EQ(st.keys, clean.keys - 1);
        uint8_t key[32], got[32];
        key_of(key, 7);
        fab_ledger_ref ref;
        CHECK_EQ(fab_ledger_lookup(l, key, 0, &ref, NULL), 0);
        fab_ledger_cursor cur;
        CHECK_EQ(fab_ledger_stream_open(l, key, &cur), FAB_ENOTFOUND);
        fab_ledger_pos pos = {0};
        size_t n = 0;
        while (fab_ledger_next(l, &pos, got, 0, &ref, NULL) == 1) {
            CHECK(memcmp(got, key, 32) != 0);
            n++;
        }
        CHECK_EQ(n, st.keys);
        /* the next stream, whole, is held (key 47: records 47..50 after key 7's) */
        key_of(key, 47);
        CHECK_EQ(fab_ledger_stream_open(l, key, &cur), FAB_OK);
        fab_ledger_close(l);
        free(data);
    }
    free(im.data);
}

static void test_salvage(void)
{
    image im;
    build_image(&im, "salvage.fabl");
    /* Break the third record's body: strict refuses, salvage skips it. */
    uint64_t at = im.starts[2] + FAB_LEDGER_REC_OVERHEAD;
    im.data[at] ^= 0x40;
    char path[512];
    path_for(path, sizeof(path), "salvage2.fabl");
    write_file(path, im.data, im.len);
    int rc;
    fab_ledger_error err;
    fab_ledger *l = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, &rc, &err);
    CHECK_EQ(rc, FAB_ECORRUPT);
    CHECK_EQ(err.offset, im.starts[2]);
    CHECK(l == NULL);
    l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, FAB_RECOVER_SALVAGE, NULL, &rc, &err);
    CHECK_EQ(rc, 0);
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    CHECK_EQ(st.salvage_skips, 1);
    CHECK_EQ(st.salvage_bytes, im.starts[3] - im.starts[2]);
    CHECK_EQ(st.records, im.n - 1);
    uint8_t key[32], got[32];
    key_of(key, 2);
    fab_ledger_ref ref;
    CHECK_EQ(fab_ledger_lookup(l, key, 0, &ref, NULL), 0);
    /* Iteration steps over the skipped region. */
    fab_ledger_pos pos = {0};
    size_t n = 0;
    while (fab_ledger_next(l, &pos, got, 0, &ref, NULL) == 1)
        n++;
    CHECK_EQ(n, st.keys);
    /* Compaction drops the bad region; the result opens strictly. */
    char dest[512];
    path_for(dest, sizeof(dest), "salvage-compact.fabl");
    /* A progress callback that says stop: nothing written, dest absent. */
    CHECK_EQ(fab_ledger_compact(l, dest, stop_at_first, NULL, &err), FAB_ECANCELED);
    CHECK_EQ(access(dest, F_OK), -1);
    CHECK_EQ(fab_ledger_compact(l, dest, NULL, NULL, &err), 0);
    CHECK_EQ(fab_ledger_compact(l, path, NULL, NULL, &err), FAB_EINVAL);
    fab_ledger_close(l);
    l = open_ledger(dest, FAB_LEDGER_READ, 0, 0, NULL, &rc, &err);
    CHECK_EQ(rc, 0);
    fab_ledger_stats st2;
    fab_ledger_get_stats(l, &st2);
    CHECK_EQ(st2.keys, st.keys);
    CHECK_EQ(st2.salvage_skips, 0);
    fab_ledger_close(l);
    free(im.data);
}

/* ---- fault injection ---------------------------------------------------------- */

enum { F_WRITE, F_SYNC, F_TRUNC, F_FALLOC };
static struct {
    int kind;      /* which call fails */
    int nth;       /* the N-th call of that kind (1-based) fails */
    int err;       /* errno, or 0 for a short write followed by ENOSPC */
    int calls[4];
    int fired;
    int also_trunc; /* when a write fails, the truncate fails too */
    int short_pending;
} fault;

static ssize_t f_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    int n = ++fault.calls[F_WRITE];
    if (fault.short_pending) {
        fault.short_pending = 0;
        errno = ENOSPC;
        return -1;
    }
    if (fault.kind == F_WRITE && n == fault.nth) {
        fault.fired = 1;
        if (fault.err == 0 && len > 1) {
            fault.short_pending = 1;
            return pwrite(fd, buf, len / 2, off);
        }
        errno = fault.err ? fault.err : ENOSPC;
        return -1;
    }
    return pwrite(fd, buf, len, off);
}

static int f_fdatasync(int fd)
{
    int n = ++fault.calls[F_SYNC];
    if (fault.kind == F_SYNC && n == fault.nth) {
        fault.fired = 1;
        errno = fault.err;
        return -1;
    }
    return fdatasync(fd);
}

static int f_ftruncate(int fd, off_t len)
{
    int n = ++fault.calls[F_TRUNC];
    if ((fault.kind == F_TRUNC && n == fault.nth) || (fault.also_trunc && fault.fired)) {
        fault.fired = 1;
        errno = EIO;
        return -1;
    }
    return ftruncate(fd, len);
}

static int f_fallocate(int fd, off_t off, off_t len)
{
    int n = ++fault.calls[F_FALLOC];
    if (fault.kind == F_FALLOC && (n == fault.nth || fault.nth < 0)) {
        fault.fired = 1;
        errno = fault.err;
        return -1;
    }
    return fallocate(fd, 0, off, len);
}

/* Without fallocate every append is a pwrite; with it, appends go
 * through the mapping (spec: Appends through the mapping). */
static const fab_ledger_io fault_io = {f_pwrite, f_fdatasync, f_ftruncate, NULL};
static const fab_ledger_io fault_io_mapped = {f_pwrite, f_fdatasync, f_ftruncate, f_fallocate};

/* Runs one workload with the fault armed; checks what survives. Returns 1
 * while the fault fired (so the caller tries the next N). */
static int fault_round(int kind, int nth, int err, int also_trunc, int dur, int mapped)
{
    char path[512];
    path_for(path, sizeof(path), "fault.fabl");
    memset(&fault, 0, sizeof(fault));
    fault.kind = kind;
    fault.nth = nth;
    fault.err = err;
    fault.also_trunc = also_trunc;
    enum { N = 12 };
    int acked[N] = {0}, stream_acked = 0;
    int rc;
    fab_ledger_error e;
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, dur, 0,
                                mapped ? &fault_io_mapped : &fault_io, &rc, &e);
    uint8_t key[32], buf[400];
    if (l) {
        int sync_failed = 0;
        for (unsigned i = 0; i < N; i++) {
            key_of(key, i);
            size_t n = reply_of(buf, i);
            if (i == 6) {
                /* Make the reply large enough to take the two-write path. */
                static uint8_t big[20000];
                memset(big, 0x33, sizeof(big));
                rc = fab_ledger_record(l, key, big, sizeof(big), &e);
            } else if (i == 8) {
                uint64_t begin;
                rc = fab_ledger_stream_begin(l, key, &begin, &e);
                if (rc == 1)
                    rc = fab_ledger_stream_append(l, key, begin, "\x07", 1, &e);
                if (rc == 0)
                    rc = fab_ledger_stream_end(l, key, begin, 1, &e);
                stream_acked = rc == 1;
            } else {
                rc = fab_ledger_record(l, key, buf, n, &e);
            }
            if (rc == 1) {
                acked[i] = 1;
                CHECK(!sync_failed); /* no acknowledgement after an fdatasync failure */
            } else {
                CHECK(rc < 0);
                if (rc == FAB_EIO && kind == F_SYNC)
                    sync_failed = 1;
                if (sync_failed)
                    CHECK(rc == FAB_EIO || rc == FAB_ESTATE);
            }
        }
        if (sync_failed) {
            key_of(key, 99);
            CHECK_EQ(fab_ledger_record(l, key, "\xc0", 1, NULL), FAB_ESTATE);
        }
        fab_ledger_close(l);
    } else {
        CHECK(rc == FAB_EIO);
        CHECK(fault.fired);
    }
    /* Reopen with the real calls: it opens (a torn tail at most) and every
     * acknowledged record is there, byte for byte. */
    struct stat sb;
    if (stat(path, &sb) == 0) {
        fab_ledger *r = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_FSYNC, 0, NULL, &rc, &e);
        CHECK_EQ(rc, 0);
        if (r) {
            for (unsigned i = 0; i < N; i++) {
                if (!acked[i] || i == 8 || i == 6)
                    continue;
                key_of(key, i);
                size_t n = reply_of(buf, i);
                fab_ledger_ref ref;
                CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
                CHECK_EQ(ref.len, n);
                CHECK_MEM(ref.data, buf, n);
            }
            if (acked[6]) {
                key_of(key, 6);
                fab_ledger_ref ref;
                CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
                CHECK_EQ(ref.len, 20000);
            }
            if (stream_acked) {
                key_of(key, 8);
                fab_ledger_cursor c;
                fab_ledger_ref item;
                CHECK_EQ(fab_ledger_stream_open(r, key, &c), 0);
                CHECK_EQ(fab_ledger_stream_next(r, &c, 0, &item), 1);
                CHECK_EQ(fab_ledger_stream_next(r, &c, 0, &item), 0);
            }
            fab_ledger_close(r);
        }
    }
    return fault.fired;
}

static void test_fault_injection(void)
{
    static const struct {
        int kind, err, also_trunc, dur, mapped;
    } plans[] = {
        {F_WRITE, ENOSPC, 0, FAB_DUR_FSYNC, 0}, {F_WRITE, EIO, 0, FAB_DUR_FSYNC, 0},
        {F_WRITE, 0, 0, FAB_DUR_FSYNC, 0},      {F_WRITE, ENOSPC, 1, FAB_DUR_FSYNC, 0},
        {F_SYNC, EIO, 0, FAB_DUR_FSYNC, 0},     {F_SYNC, ENOSPC, 0, FAB_DUR_FSYNC, 0},
        {F_SYNC, EIO, 0, FAB_DUR_GROUP, 0},     {F_TRUNC, EIO, 0, FAB_DUR_FSYNC, 0},
        {F_WRITE, ENOSPC, 0, FAB_DUR_OS, 0},    {F_WRITE, 0, 1, FAB_DUR_OS, 0},
        /* through the mapping: the reservation, the sync, the trims fail */
        {F_FALLOC, ENOSPC, 0, FAB_DUR_FSYNC, 1}, {F_FALLOC, EIO, 0, FAB_DUR_FSYNC, 1},
        {F_FALLOC, EOPNOTSUPP, 0, FAB_DUR_OS, 1}, {F_SYNC, EIO, 0, FAB_DUR_FSYNC, 1},
        {F_SYNC, EIO, 0, FAB_DUR_GROUP, 1},     {F_TRUNC, EIO, 0, FAB_DUR_FSYNC, 1},
        {F_WRITE, ENOSPC, 0, FAB_DUR_OS, 1},
    };
    int rounds = 0;
    for (size_t p = 0; p < sizeof(plans) / sizeof(plans[0]); p++)
        for (int nth = 1; nth < 200; nth++) {
            rounds++;
            if (!fault_round(plans[p].kind, nth, plans[p].err, plans[p].also_trunc, plans[p].dur,
                             plans[p].mapped))
                break;
        }
    printf("    %d fault-injection rounds\n", rounds);
}

/* ---- streams, locking, group commit, refresh ------------------------------------ */

static void test_streams(void)
{
    char path[512];
    path_for(path, sizeof(path), "streams.fabl");
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_FSYNC, 0, NULL, NULL, NULL);
    uint8_t a[32], b[32], c[32];
    key_of(a, 1);
    key_of(b, 2);
    key_of(c, 3);
    uint64_t ba, bb, bc;
    CHECK_EQ(fab_ledger_stream_begin(l, a, &ba, NULL), 1);
    CHECK_EQ(fab_ledger_stream_begin(l, b, &bb, NULL), 1);
    CHECK_EQ(fab_ledger_stream_begin(l, c, &bc, NULL), 1);
    for (int i = 0; i < 5; i++) {
        uint8_t item = (uint8_t)i;
        CHECK_EQ(fab_ledger_stream_append(l, a, ba, &item, 1, NULL), 0);
        item = (uint8_t)(100 + i);
        CHECK_EQ(fab_ledger_stream_append(l, b, bb, &item, 1, NULL), 0);
    }
    CHECK_EQ(fab_ledger_stream_end(l, a, ba, 5, NULL), 1);
    CHECK_EQ(fab_ledger_stream_abort(l, b, bb, NULL), 0);
    /* c stays unterminated, as after a crash. A held key refuses a stream. */
    uint64_t again;
    CHECK_EQ(fab_ledger_stream_begin(l, a, &again, NULL), 0);
    fab_ledger_close(l);

    l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_FSYNC, 0, NULL, NULL, NULL);
    CHECK_EQ(fab_ledger_count(l), 1);
    fab_ledger_ref ref;
    CHECK_EQ(fab_ledger_lookup(l, b, 0, &ref, NULL), 0);
    CHECK_EQ(fab_ledger_lookup(l, c, 0, &ref, NULL), 0);
    fab_ledger_cursor cur;
    CHECK_EQ(fab_ledger_stream_open(l, b, &cur), FAB_ENOTFOUND);
    CHECK_EQ(fab_ledger_stream_open(l, a, &cur), 0);
    for (int i = 0; i < 5; i++) {
        CHECK_EQ(fab_ledger_stream_next(l, &cur, 1, &ref), 1);
        CHECK_EQ(ref.len, 1);
        CHECK_EQ(ref.data[0], i);
        fab_lmap_release(ref.map);
    }
    CHECK_EQ(fab_ledger_stream_next(l, &cur, 0, &ref), 0);
    /* A batch: many items in one append, read back one by one; a
     * malformed batch writes nothing. */
    uint8_t d[32], packed[64 * 8];
    key_of(d, 4);
    uint64_t bd;
    size_t plen = 0;
    for (uint32_t i = 0; i < 64; i++) {
        uint8_t item[3] = {0xcd, (uint8_t)(i >> 8), (uint8_t)i}; /* msgpack uint16 */
        uint32_t n3 = i % 2 ? 3 : 0;
        fab_store_le32(packed + plen, n3);
        memcpy(packed + plen + 4, item, n3);
        plen += 4 + n3;
    }
    CHECK_EQ(fab_ledger_stream_begin(l, d, &bd, NULL), 1);
    fab_ledger_stats before, after;
    fab_ledger_get_stats(l, &before);
    fab_ledger_error berr;
    CHECK_EQ(fab_ledger_stream_append_batch(l, d, bd, packed, plen - 1, &berr), FAB_EINVAL);
    CHECK_EQ(fab_ledger_stream_append_batch(l, d, bd, packed, 2, &berr), FAB_EINVAL);
    fab_ledger_get_stats(l, &after);
    CHECK_EQ(after.bytes, before.bytes);
    CHECK_EQ(fab_ledger_stream_append_batch(l, d, bd, packed, plen, NULL), 0);
    fab_ledger_get_stats(l, &after);
    CHECK_EQ(after.records, before.records + 64);
    CHECK_EQ(fab_ledger_stream_end(l, d, bd, 64, NULL), 1);
    CHECK_EQ(fab_ledger_stream_open(l, d, &cur), 0);
    for (uint32_t i = 0; i < 64; i++) {
        CHECK_EQ(fab_ledger_stream_next(l, &cur, 0, &ref), 1);
        CHECK_EQ(ref.len, i % 2 ? 3 : 0);
        if (i % 2)
            CHECK_EQ(ref.data[2], i);
    }
    CHECK_EQ(fab_ledger_stream_next(l, &cur, 0, &ref), 0);
    /* A reply beats a stream that ends later: the stream gives way. */
    CHECK_EQ(fab_ledger_stream_begin(l, c, &bc, NULL), 1);
    CHECK_EQ(fab_ledger_record(l, c, "\xc0", 1, NULL), 1);
    CHECK_EQ(fab_ledger_stream_end(l, c, bc, 0, NULL), 0);
    CHECK_EQ(fab_ledger_stream_open(l, c, &cur), FAB_ETYPE);
    /* Compaction keeps the stream, drops the rest. */
    char dest[512];
    path_for(dest, sizeof(dest), "streams-compact.fabl");
    CHECK_EQ(fab_ledger_compact(l, dest, NULL, NULL, NULL), 0);
    fab_ledger_close(l);
    l = open_ledger(dest, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    CHECK_EQ(st.keys, 3);
    CHECK_EQ(st.records, 5 + 2 + 1 + 64 + 2);
    CHECK_EQ(fab_ledger_stream_open(l, a, &cur), 0);
    int n = 0;
    while (fab_ledger_stream_next(l, &cur, 0, &ref) == 1)
        CHECK_EQ(ref.data[0], n++);
    CHECK_EQ(n, 5);
    fab_ledger_close(l);
}

static fab_ledger *open_exclusive(const char *path, int *rc, fab_ledger_error *err)
{
    fab_ledger_options opt = {0};
    opt.mode = FAB_LEDGER_WRITE;
    opt.exclusive = 1;
    fab_ledger *l = NULL;
    *rc = fab_ledger_open(&l, path, &opt, err);
    return l;
}

/* Two writer handles on one file (what two processes do): both append,
 * each sees the other's records without refresh, first write wins across
 * them, and an exclusive writer excludes every other writer. */
static void test_many_handles(void)
{
    char path[512];
    path_for(path, sizeof(path), "lock.fabl");
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    int rc;
    fab_ledger_error err;
    fab_ledger *l2 = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_FSYNC, 0, NULL, &rc, &err);
    CHECK_EQ(rc, 0);
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    uint8_t key[32];
    fab_ledger_ref ref;
    for (unsigned i = 0; i < 50; i++) {
        key_of(key, i);
        uint8_t v = (uint8_t)i;
        CHECK_EQ(fab_ledger_record(i % 2 ? l2 : l, key, &v, 1, NULL), 1);
        /* first write wins across handles: the other one's record is seen */
        CHECK_EQ(fab_ledger_record(i % 2 ? l : l2, key, "\xff", 1, NULL), 0);
    }
    for (unsigned i = 0; i < 50; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1); /* no refresh needed */
        CHECK_EQ(ref.data[0], i);
        CHECK_EQ(fab_ledger_lookup(l, key, 0, &ref, NULL), 1);
        CHECK_EQ(ref.data[0], i);
    }
    CHECK_EQ(fab_ledger_count(l), 50);
    CHECK_EQ(fab_ledger_count(l2), 50);
    CHECK_EQ(fab_ledger_refresh(r, NULL), 0);
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    CHECK_EQ(st.records, 50);
    CHECK_EQ(st.foreign_records, 25);
    CHECK(st.writers == 2 || st.writers == -1);
    /* exclusive: refused while others write, and refuses them */
    fab_ledger *x = open_exclusive(path, &rc, &err);
    CHECK(x == NULL);
    CHECK_EQ(rc, FAB_ELOCKED);
    fab_ledger_close(l);
    fab_ledger_close(l2);
    x = open_exclusive(path, &rc, &err);
    CHECK_EQ(rc, 0);
    l2 = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, &err);
    CHECK(l2 == NULL);
    CHECK_EQ(rc, FAB_ELOCKED);
    CHECK(err.pid == getpid() || err.pid == 0);
    CHECK(strstr(err.msg, "exclusively") != NULL);
    fab_ledger_close(x);
    l2 = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    fab_ledger_close(l2);
    fab_ledger_close(r);
}

/* Compaction in place while another handle has the ledger open: the other
 * handle's next append goes to the new file, never to the old inode. */
static void test_compact_in_place(void)
{
    char path[512];
    path_for(path, sizeof(path), "inplace.fabl");
    fab_ledger *a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    fab_ledger *b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    uint8_t key[32];
    for (unsigned i = 0; i < 20; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(a, key, "\x01", 1, NULL), 1);
        CHECK_EQ(fab_ledger_record(b, key, "\x02", 1, NULL), 0);
    }
    uint64_t begin;
    key_of(key, 999);
    CHECK_EQ(fab_ledger_stream_begin(b, key, &begin, NULL), 1); /* unfinished */
    struct stat before, after;
    CHECK_EQ(stat(path, &before), 0);
    CHECK_EQ(fab_ledger_compact(a, NULL, NULL, NULL, NULL), 0);
    CHECK_EQ(stat(path, &after), 0);
    CHECK(before.st_ino != after.st_ino);
    CHECK_EQ(fab_ledger_generation(a), 1);
    /* b's unfinished stream is gone with the old file: a clear refusal */
    fab_ledger_error err;
    CHECK_EQ(fab_ledger_stream_append(b, key, begin, "\x01", 1, &err), FAB_ESTATE);
    CHECK(strstr(err.msg, "compacted") != NULL);
    key_of(key, 100);
    CHECK_EQ(fab_ledger_record(b, key, "\x03", 1, NULL), 1);
    CHECK_EQ(fab_ledger_generation(b), 1);
    fab_ledger_ref ref;
    CHECK_EQ(fab_ledger_lookup(a, key, 0, &ref, NULL), 1); /* a sees b's record */
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1); /* the reader moved on a miss */
    CHECK_EQ(fab_ledger_generation(r), 1);
    fab_ledger_stats st;
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(st.keys, 21);
    CHECK_EQ(st.reloads, 1);
    fab_ledger_close(a);
    fab_ledger_close(b);
    fab_ledger_close(r);
    /* no temporary file is left behind */
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.compact.tmp.%ld", path, (long)getpid());
    CHECK(access(tmp, F_OK) != 0);
}

/* A compaction in place marks the file it replaced (its header's
 * `replaced` word, the header still valid): the other handles' next hit
 * moves, so a key deleted and compacted away is not served from the old
 * file, and their count is the new file's. */
static void test_compact_marks_replaced(void)
{
    char path[512];
    path_for(path, sizeof(path), "marked.fabl");
    fab_ledger *a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    uint8_t key[32];
    for (unsigned i = 0; i < 20; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(a, key, "\x01", 1, NULL), 1);
    }
    fab_ledger *b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    int old = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(old >= 0);
    fab_ledger_ref ref;
    key_of(key, 3);
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
    CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 1);
    CHECK_EQ(fab_ledger_delete(a, key, NULL), 1);
    CHECK_EQ(fab_ledger_compact(a, NULL, NULL, NULL, NULL), 0);
    uint8_t h[64];
    CHECK_EQ(pread(old, h, sizeof(h), 0), 64);
    CHECK_EQ(fab_load_le32(h + 56), 1);
    CHECK_EQ(fab_load_le32(h + 60), fab_crc32c(0x4C444752u, h, 60));
    close(old);
    /* hits, no miss and no refresh before */
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 0);
    CHECK_EQ(fab_ledger_generation(r), 1);
    CHECK_EQ(fab_ledger_count(b), 19);
    CHECK_EQ(fab_ledger_generation(b), 1);
    CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 0);
    fab_ledger_close(a);
    fab_ledger_close(b);
    fab_ledger_close(r);
}

/* A file that shrinks under an open handle: lookups move to what is
 * there now instead of touching the mapping beyond the end (SIGBUS). */
static void test_shrink(void)
{
    char path[512];
    path_for(path, sizeof(path), "shrink.fabl");
    fab_ledger *w = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    uint8_t key[32], buf[400];
    for (unsigned i = 0; i < 200; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(w, key, buf, reply_of(buf, i), NULL), 1);
    }
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    CHECK_EQ(truncate(path, FAB_LEDGER_HEADER_SIZE), 0);
    fab_ledger_ref ref;
    key_of(key, 150);
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 0);
    CHECK_EQ(fab_ledger_count(r), 0);
    CHECK_EQ(fab_ledger_lookup(w, key, 0, &ref, NULL), 0);
    /* the writer appends at the new end */
    CHECK_EQ(fab_ledger_record(w, key, "\x07", 1, NULL), 1);
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
    CHECK_EQ(ref.data[0], 7);
    /* shrunk below the header: a clear error, never a fault */
    CHECK_EQ(truncate(path, 10), 0);
    fab_ledger_error err;
    key_of(key, 3);
    int rc = fab_ledger_lookup(r, key, 0, &ref, &err);
    CHECK(rc == FAB_ETRUNCATED || rc == FAB_EFORMAT);
    fab_ledger_close(w);
    fab_ledger_close(r);
}

/* The hit's guard (no fstat per hit): a file shrunk by another program
 * between calls, even by one byte inside the last page, or down to a page
 * boundary, or a checkpoint file shrunk under its mapping, is found before
 * a wrong byte is returned or a page beyond the end is touched; a SIGBUS
 * that is not the guard's still kills the process. */
static void test_shrink_guard(void)
{
    char path[512], cpath[600];
    path_for(path, sizeof(path), "guard.fabl");
    snprintf(cpath, sizeof(cpath), "%s.ckpt", path);
    unlink(cpath);
    fab_ledger *w = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    uint8_t key[32], buf[400];
    const unsigned n = 3000;
    for (unsigned i = 0; i < n; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(w, key, buf, reply_of(buf, i), NULL), 1);
    }
    CHECK_EQ(fab_ledger_checkpoint(w, NULL), 0);
    fab_ledger_close(w);
    struct stat sb;
    CHECK_EQ(stat(path, &sb), 0);
    uint64_t size = (uint64_t)sb.st_size;
    fab_ledger_ref ref;
    fab_ledger_stats st;

    /* one byte off the last record: the hit of another key sees it */
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, NULL, NULL);
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(st.ckpt_state, FAB_CKPT_USED);
    key_of(key, 5);
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
    CHECK_EQ(truncate(path, (off_t)(size - 1)), 0);
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
    CHECK_EQ(ref.len, reply_of(buf, 5));
    CHECK_MEM(ref.data, buf, ref.len);
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(st.reloads, 1);
    CHECK_EQ(fab_ledger_count(r), n - 1); /* the last record is a torn tail now */
    key_of(key, n - 1);
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 0);

    /* down to a page boundary far below: the old last page is gone */
    CHECK_EQ(truncate(path, 65536), 0);
    key_of(key, 7);
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
    CHECK_MEM(ref.data, buf, reply_of(buf, 7));
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(st.reloads, 2);
    CHECK(fab_ledger_count(r) < n / 2);
    fab_ledger_close(r);

    /* the checkpoint shrunk under its mapping: rebuilt from the ledger */
    w = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    size_t have = fab_ledger_count(w);
    CHECK_EQ(fab_ledger_checkpoint(w, NULL), 0);
    fab_ledger_close(w);
    r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, NULL, NULL);
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(st.ckpt_state, FAB_CKPT_USED);
    CHECK_EQ(truncate(cpath, 4096), 0);
    for (unsigned i = 0; i < have; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
        CHECK_MEM(ref.data, buf, reply_of(buf, i));
    }
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(st.ckpt_state, FAB_CKPT_REBUILT);
    fab_ledger_close(r);

    /* any other SIGBUS goes to the handler before ours (here the
     * sanitizer's, which aborts) or the default action: the process dies */
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(path, O_RDWR);
        volatile uint8_t *m = mmap(NULL, 65536, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED || ftruncate(fd, 0) < 0)
            _exit(3);
        _exit(m[8192] + 4);
    }
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status) && (WTERMSIG(status) == SIGBUS || WTERMSIG(status) == SIGABRT));
}

static uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static size_t keys_of(fab_ledger *l)
{
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    CHECK_EQ(st.keys, fab_ledger_count(l));
    return fab_ledger_count(l);
}

static int held(fab_ledger *l, unsigned i)
{
    uint8_t key[32];
    fab_ledger_ref ref;
    key_of(key, i);
    return fab_ledger_lookup(l, key, 0, &ref, NULL);
}

/* Deleting, clearing and expiry (spec: Deleting and expiry): durable
 * tombstones over keys of the checkpoint and after it, seen by a reopen
 * (with the checkpoint, and a checkpoint written after them); a deleted
 * or expired key can be recorded again; a version 1 file is upgraded in
 * place by the first tombstone. */
static void test_delete(void)
{
    char path[512], cpath[600];
    path_for(path, sizeof(path), "delete.fabl");
    snprintf(cpath, sizeof(cpath), "%s.ckpt", path);
    unlink(cpath);
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_FSYNC, 0, NULL, NULL, NULL);
    uint8_t key[32], buf[400];
    for (unsigned i = 0; i < 120; i++) {
        if (i == 100)
            CHECK_EQ(fab_ledger_checkpoint(l, NULL), 0);
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(l, key, buf, reply_of(buf, i), NULL), 1);
    }
    fab_ledger_close(l);
    l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_FSYNC, 0, NULL, NULL, NULL);
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    CHECK_EQ(st.ckpt_state, FAB_CKPT_USED);
    key_of(key, 5);
    CHECK_EQ(fab_ledger_delete(l, key, NULL), 1); /* a key of the checkpoint */
    CHECK_EQ(fab_ledger_delete(l, key, NULL), 0);
    key_of(key, 110);
    CHECK_EQ(fab_ledger_delete(l, key, NULL), 1); /* a key after it */
    key_of(key, 500);
    CHECK_EQ(fab_ledger_delete(l, key, NULL), 0);
    CHECK_EQ(keys_of(l), 118);
    CHECK_EQ(held(l, 5), 0);
    CHECK_EQ(held(l, 110), 0);
    CHECK_EQ(held(l, 6), 1);
    /* another handle sees them at its next miss */
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    CHECK_EQ(keys_of(r), 118);
    CHECK_EQ(held(r, 5), 0);
    key_of(key, 5);
    CHECK_EQ(fab_ledger_record(l, key, "\x05", 1, NULL), 1); /* recorded again */
    CHECK_EQ(keys_of(l), 119);
    fab_ledger_ref ref;
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
    CHECK_EQ(ref.len, 1);
    CHECK_EQ(ref.data[0], 5);
    fab_ledger_close(r);
    /* a checkpoint written over tombstones and shadowed entries */
    CHECK_EQ(fab_ledger_checkpoint(l, NULL), 0);
    fab_ledger_close(l);
    for (int with_ckpt = 1; with_ckpt >= 0; with_ckpt--) {
        if (!with_ckpt)
            unlink(cpath);
        r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
        fab_ledger_get_stats(r, &st);
        CHECK_EQ(st.ckpt_state, with_ckpt ? FAB_CKPT_USED : FAB_CKPT_NONE);
        CHECK_EQ(keys_of(r), 119);
        CHECK_EQ(held(r, 110), 0);
        key_of(key, 5);
        CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
        CHECK_EQ(ref.data[0], 5);
        size_t n = 0;
        fab_ledger_pos pos = {0};
        uint8_t k[32];
        while (fab_ledger_next(r, &pos, k, 0, &ref, NULL) == 1)
            n++;
        CHECK_EQ(n, 119);
        fab_ledger_close(r);
    }

    /* expiry: an expired reply is not held and can be recorded again */
    l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    key_of(key, 200);
    CHECK_EQ(fab_ledger_record_ex(l, key, "\x01", 1, wall_ns() - 1, NULL), 1);
    CHECK_EQ(held(l, 200), 0);
    CHECK_EQ(fab_ledger_record_ex(l, key, "\x02", 1, wall_ns() + 3600000000000ull, NULL), 1);
    CHECK_EQ(fab_ledger_lookup(l, key, 0, &ref, NULL), 1);
    CHECK_EQ(ref.len, 1);
    CHECK_EQ(ref.data[0], 2);
    CHECK(ref.expires_ns > wall_ns());
    CHECK_EQ(fab_ledger_record(l, key, "\x03", 1, NULL), 0); /* held until it expires */
    fab_ledger_close(l);
    r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
    CHECK_EQ(ref.data[0], 2);
    fab_ledger_close(r);

    /* clear */
    l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_GROUP, 0, NULL, NULL, NULL);
    CHECK_EQ(fab_ledger_clear(l, NULL), 120);
    CHECK_EQ(keys_of(l), 0);
    CHECK_EQ(held(l, 7), 0);
    key_of(key, 7);
    CHECK_EQ(fab_ledger_record(l, key, "\x07", 1, NULL), 1);
    fab_ledger_close(l);
    r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    CHECK_EQ(keys_of(r), 1);
    CHECK_EQ(held(r, 7), 1);
    CHECK_EQ(held(r, 8), 0);
    fab_ledger_close(r);

    /* a version 1 file: written as version 1 until the first tombstone */
    path_for(path, sizeof(path), "v1.fabl");
    uint8_t h[64];
    fab_ledger_make_header(h, 1, NULL);
    h[8] = 1;
    fab_store_le32(h + 60, fab_crc32c(0x4C444752u, h, 60));
    write_file(path, h, 64);
    l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    CHECK(l != NULL);
    key_of(key, 1);
    CHECK_EQ(fab_ledger_record(l, key, "\x01", 1, NULL), 1);
    size_t len;
    uint8_t *img = read_file(path, &len);
    CHECK_EQ(img[8], 1);
    free(img);
    CHECK_EQ(fab_ledger_delete(l, key, NULL), 1);
    img = read_file(path, &len);
    CHECK_EQ(img[8], 2);
    fab_ledger_scan_result res;
    CHECK_EQ(fab_ledger_scan_mem(img, len, FAB_RECOVER_STRICT, NULL, NULL, &res, NULL), 0);
    CHECK_EQ(res.records, 2);
    free(img);
    fab_ledger_get_stats(l, &st);
    CHECK_EQ(st.version, 2);
    fab_ledger_close(l);
}

/* compact with max_bytes: the oldest keys go first, a stream whole, until
 * the copy fits; deleted and expired keys are dropped. */
static void test_compact_evict(void)
{
    char path[512], dest[512];
    path_for(path, sizeof(path), "evict.fabl");
    path_for(dest, sizeof(dest), "evict-out.fabl");
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    uint8_t key[32], buf[400];
    uint64_t begin;
    for (unsigned i = 0; i < 100; i++) {
        key_of(key, i);
        if (i % 10 == 3) { /* a stream of 5 items */
            CHECK_EQ(fab_ledger_stream_begin(l, key, &begin, NULL), 1);
            for (int j = 0; j < 5; j++)
                CHECK_EQ(fab_ledger_stream_append(l, key, begin, buf, 40, NULL), 0);
            CHECK_EQ(fab_ledger_stream_end(l, key, begin, 5, NULL), 1);
        } else {
            memset(buf, (int)i, 100);
            CHECK_EQ(fab_ledger_record(l, key, buf, 100, NULL), 1);
        }
    }
    key_of(key, 99);
    CHECK_EQ(fab_ledger_delete(l, key, NULL), 1);
    key_of(key, 98);
    CHECK_EQ(fab_ledger_delete(l, key, NULL), 1);
    key_of(key, 98);
    CHECK_EQ(fab_ledger_record_ex(l, key, buf, 100, wall_ns() - 1, NULL), 1);
    uint64_t evicted = 0;
    const uint64_t max = 4000;
    CHECK_EQ(fab_ledger_compact_ex(l, dest, max, NULL, NULL, &evicted, NULL), 0);
    fab_ledger_close(l);
    struct stat sb;
    CHECK_EQ(stat(dest, &sb), 0);
    CHECK((uint64_t)sb.st_size <= max);
    CHECK((uint64_t)sb.st_size > max - 400); /* no more left out than needed */
    l = open_ledger(dest, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    size_t kept = keys_of(l);
    CHECK_EQ(kept + evicted, 98);
    CHECK(evicted > 0);
    CHECK_EQ(held(l, 97), 1);
    CHECK_EQ(held(l, 0), 0);
    CHECK_EQ(held(l, 98), 0);
    CHECK_EQ(held(l, 99), 0);
    unsigned first = 98 - (unsigned)kept; /* everything from the first kept key on */
    for (unsigned i = first; i < 98; i++) {
        CHECK_EQ(held(l, i), 1);
        key_of(key, i);
        fab_ledger_cursor cur;
        if (i % 10 == 3) {
            CHECK_EQ(fab_ledger_stream_open(l, key, &cur), 0);
            fab_ledger_ref ref;
            int n = 0;
            while (fab_ledger_stream_next(l, &cur, 0, &ref) == 1)
                n++;
            CHECK_EQ(n, 5);
        }
    }
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    CHECK_EQ(st.version, 2);
    CHECK_EQ(st.tombstones, 0);
    fab_ledger_close(l);
    l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    fab_ledger_error err;
    CHECK_EQ(fab_ledger_compact_ex(l, dest, 10, NULL, NULL, NULL, &err), FAB_EINVAL);
    fab_ledger_close(l);
}

/* The checkpoint: open replays only what follows it; a corrupt byte
 * anywhere in it is detected (ignored at open, or the index rebuilt when a
 * page fails in use) and never yields a wrong reply; a stale one (the
 * ledger replaced by another with the same header) is ignored. */
static void test_checkpoint(void)
{
    char path[512], cpath[600];
    path_for(path, sizeof(path), "ckpt.fabl");
    snprintf(cpath, sizeof(cpath), "%s.ckpt", path);
    unlink(cpath);
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    uint8_t key[32], buf[400];
    const unsigned n = 150, m = 20;
    for (unsigned i = 0; i < n; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(l, key, buf, reply_of(buf, i), NULL), 1);
    }
    CHECK_EQ(fab_ledger_checkpoint(l, NULL), 0);
    for (unsigned i = n; i < n + m; i++) { /* after the checkpoint */
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(l, key, buf, reply_of(buf, i), NULL), 1);
    }
    fab_ledger_close(l);
    size_t clen;
    uint8_t *cimg = read_file(cpath, &clen);
    CHECK_EQ(clen, 4096 + 256 * 16 + 4);

    /* Opens path read-only; checks every key's reply; returns the state. */
    int states[4] = {0};
    for (size_t pos = 0; pos <= clen; pos++) {
        if (pos < clen) { /* pos == clen: the intact file, last */
            cimg[pos] ^= 0x21;
            write_file(cpath, cimg, clen);
            cimg[pos] ^= 0x21;
        } else {
            write_file(cpath, cimg, clen);
        }
        int rc;
        fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        for (unsigned i = 0; i < n + m; i++) {
            key_of(key, i);
            fab_ledger_ref ref;
            size_t want = reply_of(buf, i);
            CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
            CHECK_EQ(ref.len, want);
            CHECK(memcmp(ref.data, buf, want) == 0);
        }
        key_of(key, 100000);
        fab_ledger_ref ref;
        CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 0);
        fab_ledger_stats st;
        fab_ledger_get_stats(r, &st);
        CHECK_EQ(st.keys, n + m);
        states[st.ckpt_state]++;
        if (pos == clen) {
            CHECK_EQ(st.ckpt_state, FAB_CKPT_USED);
            CHECK_EQ(st.open_replayed, m); /* only what follows the checkpoint */
            CHECK_EQ(st.ckpt_keys, n);
        }
        fab_ledger_close(r);
    }
    CHECK(states[FAB_CKPT_IGNORED] > 0);
    CHECK(states[FAB_CKPT_REBUILT] > 0);
    printf("    checkpoint: %zu one-byte corruptions: %d ignored at open, %d rebuilt in use, "
           "%d used (bytes nothing reads)\n", clen, states[FAB_CKPT_IGNORED],
           states[FAB_CKPT_REBUILT], states[FAB_CKPT_USED] - 1);

    /* A record the checkpoint covers, corrupted in the ledger (outside the
     * sampled windows, so the checkpoint is used): a clear error, never
     * its bytes. */
    size_t len;
    uint8_t *img = read_file(path, &len);
    uint8_t *bad = malloc(len);
    memcpy(bad, img, len);
    uint64_t covered = fab_load_le64(cimg + 40), span = covered - 64, victim = 0, k = 0;
    for (uint64_t off = 64; off < covered && !victim; k++) {
        uint64_t size = FAB_LEDGER_REC_OVERHEAD + fab_load_le32(img + off + 8);
        uint64_t p = off + FAB_LEDGER_REC_OVERHEAD; /* its first payload byte */
        int sampled = 0;
        for (int w = 0; w < 16; w++) {
            uint64_t at = 64 + span * (uint64_t)w / 16;
            sampled |= p >= at && p < at + 512;
        }
        if (!sampled && k > 0)
            victim = off;
        else
            off += size;
    }
    CHECK(victim != 0);
    bad[victim + FAB_LEDGER_REC_OVERHEAD] ^= 0x01;
    write_file(path, bad, len);
    write_file(cpath, cimg, clen);
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    CHECK(r != NULL);
    fab_ledger_stats st;
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(st.ckpt_state, FAB_CKPT_USED);
    key_of(key, (unsigned)(k - 1));
    fab_ledger_ref ref;
    fab_ledger_error err;
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, &err), FAB_ECORRUPT);
    CHECK_EQ(err.offset, victim);
    /* iteration stops there with the same error instead of walking on */
    fab_ledger_pos pos = {0};
    uint8_t got[32];
    int rc;
    while ((rc = fab_ledger_next(r, &pos, got, 0, &ref, &err)) == 1)
        ;
    CHECK_EQ(rc, FAB_ECORRUPT);
    CHECK_EQ(err.offset, victim);
    fab_ledger_close(r);
    /* A different ledger with the same header (a restore): ignored. */
    write_file(path, img, len);
    l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    CHECK_EQ(fab_ledger_compact(l, NULL, NULL, NULL, NULL), 0); /* unlinks the checkpoint */
    fab_ledger_close(l);
    CHECK(access(cpath, F_OK) != 0);
    write_file(cpath, cimg, clen);
    key_of(key, 0);
    l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    fab_ledger_get_stats(l, &st);
    CHECK_EQ(st.ckpt_state, FAB_CKPT_USED); /* compaction of a clean ledger: same bytes */
    fab_ledger_close(l);
    /* now one with other content at the same length: drop a record */
    uint8_t *other = malloc(len);
    size_t first = FAB_LEDGER_REC_OVERHEAD + reply_of(buf, 0);
    memcpy(other, img, 64);
    memcpy(other + 64, img + 64 + first, len - 64 - first);
    write_file(path, other, len - first);
    r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(st.ckpt_state, FAB_CKPT_IGNORED);
    CHECK_EQ(st.keys, n + m - 1);
    fab_ledger_close(r);
    free(other);
    free(bad);
    free(img);
    free(cimg);
}

/* Replay keeps the first of two committed records of one key (first
 * write wins on replay): an index insert that overwrote would return the
 * second. Two records are written by hand after one written by the API. */
static void test_replay_keeps_first(void)
{
    char path[512];
    path_for(path, sizeof(path), "first.fabl");
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    uint8_t key[32], other[32];
    key_of(key, 7);
    key_of(other, 8);
    CHECK_EQ(fab_ledger_record(l, key, "\x01", 1, NULL), 1);
    CHECK_EQ(fab_ledger_record(l, other, "\x02", 1, NULL), 1);
    fab_ledger_close(l);
    int fd = open(path, O_WRONLY | O_APPEND);
    uint8_t rec[FAB_LEDGER_REC_OVERHEAD + 1];
    for (int i = 0; i < 2; i++) { /* a second and a third record for key */
        uint8_t v = (uint8_t)(0x10 + i);
        fab_ledger_make_rec_header(rec, FAB_REC_REPLY, key, &v, 1);
        memcpy(rec + FAB_LEDGER_REC_HEADER, key, 32);
        rec[FAB_LEDGER_REC_OVERHEAD] = v;
        CHECK_EQ(write(fd, rec, sizeof(rec)), (long long)sizeof(rec));
    }
    close(fd);
    for (int mode = FAB_LEDGER_READ; mode <= FAB_LEDGER_WRITE; mode++) {
        l = open_ledger(path, mode, FAB_DUR_OS, 0, NULL, NULL, NULL);
        fab_ledger_ref ref;
        CHECK_EQ(fab_ledger_lookup(l, key, 0, &ref, NULL), 1);
        CHECK_EQ(ref.data[0], 1);
        fab_ledger_stats st;
        fab_ledger_get_stats(l, &st);
        CHECK_EQ(st.keys, 2);
        CHECK_EQ(st.duplicates, 2);
        fab_ledger_close(l);
    }
}

/* A record whose fdatasync failed stays invisible: the count is unchanged
 * and the key cannot be looked up (moving the visible end before checking
 * the sync's result would show it). */
static int fail_sync(int fd)
{
    (void)fd;
    errno = EIO;
    return -1;
}

static void test_failed_sync_invisible(void)
{
    char path[512];
    path_for(path, sizeof(path), "nosync.fabl");
    fab_ledger_io io = {pwrite, fail_sync, ftruncate};
    for (int dur = FAB_DUR_FSYNC; dur <= FAB_DUR_GROUP; dur++) {
        unlink(path);
        fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
        uint8_t key[32];
        key_of(key, 1);
        CHECK_EQ(fab_ledger_record(l, key, "\x01", 1, NULL), 1);
        fab_ledger_close(l);
        l = open_ledger(path, FAB_LEDGER_WRITE, dur, 0, &io, NULL, NULL);
        key_of(key, 2);
        CHECK_EQ(fab_ledger_record(l, key, "\x02", 1, NULL), FAB_EIO);
        fab_ledger_ref ref;
        CHECK_EQ(fab_ledger_lookup(l, key, 0, &ref, NULL), 0);
        CHECK_EQ(fab_ledger_count(l), 1);
        fab_ledger_close(l);
    }
}

static void test_bad_files(void)
{
    char path[512];
    int rc;
    fab_ledger_error err;
    path_for(path, sizeof(path), "notledger");
    write_file(path, (const uint8_t *)"hello, this is not a ledger at all......", 40);
    CHECK(open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, &rc, &err) == NULL);
    CHECK_EQ(rc, FAB_EFORMAT);
    CHECK(open_ledger(path, FAB_LEDGER_WRITE, 0, 0, NULL, &rc, &err) == NULL);
    CHECK_EQ(rc, FAB_EFORMAT);
    uint8_t h[64];
    fab_ledger_make_header(h, 1, NULL);
    write_file(path, h, 30);
    CHECK(open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, &rc, &err) == NULL);
    CHECK_EQ(rc, FAB_ETRUNCATED);
    CHECK_EQ(err.offset, 30);
    h[8] = 3;
    write_file(path, h, 64);
    CHECK(open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, &rc, &err) == NULL);
    CHECK_EQ(rc, FAB_EVERSION);
    CHECK_EQ(err.version, 3);
    CHECK(open_ledger(tmpdir, FAB_LEDGER_READ, 0, 0, NULL, &rc, &err) == NULL);
    CHECK_EQ(rc, FAB_EIO);
    CHECK_EQ(err.sys_errno, EISDIR);
    path_for(path, sizeof(path), "missing.fabl");
    CHECK(open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, &rc, &err) == NULL);
    CHECK_EQ(rc, FAB_EIO);
    CHECK_EQ(err.sys_errno, ENOENT);
}

typedef struct {
    fab_ledger *l;
    unsigned base;
    int ok;
} worker;

static void *group_worker(void *arg)
{
    worker *w = arg;
    uint8_t key[32], buf[400];
    for (unsigned i = 0; i < 100; i++) {
        key_of(key, w->base + i);
        if (fab_ledger_record(w->l, key, buf, reply_of(buf, w->base + i), NULL) == 1)
            w->ok++;
    }
    return NULL;
}

static void test_group_commit(void)
{
    char path[512];
    path_for(path, sizeof(path), "group.fabl");
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_GROUP, 0, NULL, NULL, NULL);
    pthread_t t[4];
    worker w[4];
    for (int i = 0; i < 4; i++) {
        /* Workers 0 and 1 record the same keys: first write wins. */
        w[i] = (worker){l, (unsigned)(i == 1 ? 0 : i * 1000), 0};
        pthread_create(&t[i], NULL, group_worker, &w[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ(w[0].ok + w[1].ok, 100);
    CHECK_EQ(fab_ledger_count(l), 300);
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    CHECK_EQ(st.records, 300);
    fab_ledger_close(l);
    l = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    CHECK_EQ(fab_ledger_count(l), 300);
    fab_ledger_close(l);
}

static void test_index_many(void)
{
    char path[512];
    path_for(path, sizeof(path), "many.fabl");
    fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    uint8_t key[32];
    for (unsigned i = 0; i < 50000; i++) {
        key_of(key, i);
        fab_ledger_prefetch(l, key); /* an empty index first, then one that grows */
        fab_ledger_record(l, key, &i, sizeof(i), NULL);
    }
    fab_ledger_close(l);
    l = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
    CHECK_EQ(fab_ledger_count(l), 50000);
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    CHECK(st.index_bytes <= 64 * 50000);
    for (unsigned i = 0; i < 50000; i += 7) {
        key_of(key, i);
        fab_ledger_ref ref;
        CHECK_EQ(fab_ledger_lookup(l, key, 0, &ref, NULL), 1);
        CHECK_MEM(ref.data, &i, sizeof(i));
    }
    fab_ledger_close(l);
}


/* REQUEST records: written right before their REPLY / BEGIN in one append,
 * found again by key, kept by replay and compaction, first write wins. */
static void test_requests(void)
{
    char path[512];
    path_for(path, sizeof(path), "requests.fabl");
    fab_ledger *a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    uint8_t key[32];
    fab_ledger_ref ref;
    struct stat sb;
    key_of(key, 1);
    CHECK_EQ(fab_ledger_record_req(a, key, "req-one", 7, "\x01", 1, 0, NULL), 1);
    fab_ledger_stats st0;
    fab_ledger_get_stats(a, &st0);
    CHECK_EQ(st0.bytes, 64 + 52 + 7 + 52 + 1);
    CHECK_EQ(stat(path, &sb), 0);
    off_t size = sb.st_size; /* the records and the space reserved after them */
    CHECK_EQ((uint64_t)size, st0.bytes + st0.reserved_bytes);
    /* held: neither a second REQUEST nor a REPLY */
    CHECK_EQ(fab_ledger_record_req(a, key, "req-two", 7, "\x02", 1, 0, NULL), 0);
    CHECK_EQ(stat(path, &sb), 0);
    CHECK_EQ(sb.st_size, size);
    CHECK_EQ(fab_ledger_request(a, key, 0, &ref, NULL), 1);
    CHECK_EQ(ref.len, 7);
    CHECK(memcmp(ref.data, "req-one", 7) == 0);
    CHECK_EQ(ref.type, FAB_REC_REQUEST);
    CHECK_EQ(fab_ledger_lookup(a, key, 0, &ref, NULL), 1);
    CHECK_EQ(ref.len, 1);
    CHECK_EQ(ref.data[0], 1);
    /* without request bytes: none found */
    key_of(key, 2);
    CHECK_EQ(fab_ledger_record(a, key, "\x03", 1, NULL), 1);
    CHECK_EQ(fab_ledger_request(a, key, 0, &ref, NULL), 0);
    /* an empty request, a reply too long for the one buffer */
    key_of(key, 3);
    size_t big = 300 * 1024;
    uint8_t *data = malloc(big);
    CHECK(data != NULL);
    memset(data, 0xab, big);
    CHECK_EQ(fab_ledger_record_req(a, key, "", 0, data, big, 0, NULL), 1);
    CHECK_EQ(fab_ledger_request(a, key, 0, &ref, NULL), 1);
    CHECK_EQ(ref.len, 0);
    /* a request whose bytes look like records (magic, REQUEST type) */
    key_of(key, 4);
    uint8_t tricky[200];
    for (size_t i = 0; i < sizeof(tricky); i += 4)
        memcpy(tricky + i, "\xe7REC", 4);
    tricky[4] = FAB_REC_REQUEST;
    CHECK_EQ(fab_ledger_record_req(a, key, tricky, sizeof(tricky), "\x04", 1, 0, NULL), 1);
    /* a stream with its request; an aborted one first */
    uint64_t begin;
    key_of(key, 5);
    CHECK_EQ(fab_ledger_stream_begin_req(a, key, "aborted", 7, &begin, NULL), 1);
    CHECK_EQ(fab_ledger_stream_abort(a, key, begin, NULL), 0);
    CHECK_EQ(fab_ledger_request(a, key, 0, &ref, NULL), 0);
    CHECK_EQ(fab_ledger_stream_begin_req(a, key, "streamed", 8, &begin, NULL), 1);
    CHECK_EQ(fab_ledger_stream_append(a, key, begin, "\x05", 1, NULL), 0);
    CHECK_EQ(fab_ledger_stream_end(a, key, begin, 1, NULL), 1);
    /* everything again after a reopen (replay) and after a compaction */
    for (int round = 0; round < 2; round++) {
        fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, 0, NULL, NULL, NULL);
        key_of(key, 1);
        CHECK_EQ(fab_ledger_request(r, key, 1, &ref, NULL), 1);
        CHECK_EQ(ref.len, 7);
        CHECK(memcmp(ref.data, "req-one", 7) == 0);
        fab_lmap_release(ref.map);
        key_of(key, 2);
        CHECK_EQ(fab_ledger_request(r, key, 0, &ref, NULL), 0);
        key_of(key, 3);
        CHECK_EQ(fab_ledger_request(r, key, 0, &ref, NULL), 1);
        CHECK_EQ(ref.len, 0);
        CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
        CHECK_EQ(ref.len, big);
        CHECK(ref.data[big - 1] == 0xab);
        key_of(key, 4);
        CHECK_EQ(fab_ledger_request(r, key, 0, &ref, NULL), 1);
        CHECK_EQ(ref.len, sizeof(tricky));
        CHECK(memcmp(ref.data, tricky, sizeof(tricky)) == 0);
        key_of(key, 5);
        CHECK_EQ(fab_ledger_request(r, key, 0, &ref, NULL), 1);
        CHECK_EQ(ref.len, 8);
        CHECK(memcmp(ref.data, "streamed", 8) == 0);
        key_of(key, 6);
        CHECK_EQ(fab_ledger_request(r, key, 0, &ref, NULL), 0);
        fab_ledger_close(r);
        if (round == 0)
            CHECK_EQ(fab_ledger_compact(a, NULL, NULL, NULL, NULL), 0);
    }
    free(data);
    fab_ledger_close(a);
}

/* ---- the append lock page ------------------------------------------------ */


/* Makes dir (a mkdtemp template) and has the lock pages made there
 * (FABRIC_LEDGER_LOCK_DIR) instead of beside the other tests' and users'. */
static void lockdir_use(char *dir)
{
    CHECK(mkdtemp(dir) != NULL);
    setenv("FABRIC_LEDGER_LOCK_DIR", dir, 1);
}

/* Undoes lockdir_use: the default folder again, dir and its pages removed. */
static void lockdir_drop(const char *dir)
{
    unsetenv("FABRIC_LEDGER_LOCK_DIR");
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_EQ(system(cmd), 0);
}

/* A writer SIGKILLed while it holds the append lock (the test hook stops it
 * inside the lock at its n-th append, before its write or after half of
 * it, and says so on a pipe): the next writer gets the lock (EOWNERDEAD),
 * cuts the torn record, appends; nothing acknowledged is lost. Then a
 * writer that cannot use the lock page is refused while lock page writers
 * are open, and works alone with the OFD lock. */
static void test_lock_page(void)
{
    char path[512];
    uint8_t key[32], buf[400];
    fab_ledger_ref ref;
    fab_ledger_stats st;
    int rc;
    fab_ledger_error err;
    /* A lock directory of its own: a writer opening elsewhere on this
     * machine sweeps unused lock files (the dead holder's is one). */
    char lockdir[] = "/dev/shm/fab-ledger-test-XXXXXX";
    lockdir_use(lockdir);
    for (int torn = 0; torn < 2; torn++) {
        path_for(path, sizeof(path), torn ? "held-torn.fabl" : "held.fabl");
        int p[2];
        CHECK_EQ(pipe(p), 0);
        const unsigned n = 30;
        pid_t pid = fork();
        if (pid == 0) {
            char hold[64];
            snprintf(hold, sizeof(hold), "%u:%d%s", n, p[1], torn ? ":torn" : "");
            setenv("FABRIC_LEDGER_TEST_HOLD", hold, 1);
            fab_ledger *w = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
            if (w == NULL)
                _exit(3);
            for (unsigned i = 0; i < n; i++) { /* the n-th never returns */
                key_of(key, i);
                if (fab_ledger_record(w, key, buf, reply_of(buf, i), NULL) != 1)
                    _exit(4);
            }
            _exit(5);
        }
        close(p[1]);
        char c = 0;
        CHECK_EQ(read(p[0], &c, 1), 1); /* inside the lock, n - 1 acknowledged */
        CHECK_EQ(c, 'H');
        close(p[0]);
        CHECK_EQ(kill(pid, SIGKILL), 0);
        int status;
        CHECK_EQ(waitpid(pid, &status, 0), pid);
        CHECK(WIFSIGNALED(status));
        fab_ledger *w = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        key_of(key, 1000);
        CHECK_EQ(fab_ledger_record(w, key, "\xc3", 1, NULL), 1);
        fab_ledger_get_stats(w, &st);
        CHECK_EQ(st.append_lock, 2);
        CHECK_EQ(st.owner_dead, 1);
        CHECK_EQ(st.torn_tails_cut, (uint64_t)torn);
        fab_ledger_close(w);
        fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        CHECK_EQ(fab_ledger_count(r), n);
        for (unsigned i = 0; i + 1 < n; i++) {
            key_of(key, i);
            CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
            CHECK_MEM(ref.data, buf, reply_of(buf, i));
        }
        key_of(key, n - 1);
        CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 0);
        fab_ledger_close(r);
    }

    /* the lock page and the OFD lock never serve one ledger at once */
    path_for(path, sizeof(path), "mix.fabl");
    fab_ledger *a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    setenv("FABRIC_LEDGER_LOCK_DIR", "", 1);
    fab_ledger *b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, &err);
    CHECK(b == NULL);
    CHECK_EQ(rc, FAB_ELOCKED);
    CHECK(strstr(err.msg, "lock file") != NULL);
    fab_ledger_close(a);
    b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    setenv("FABRIC_LEDGER_LOCK_DIR", lockdir, 1);
    a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    fab_ledger_get_stats(a, &st);
    CHECK_EQ(st.append_lock, 1); /* fell back to b's OFD lock */
    for (unsigned i = 0; i < 40; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(i % 2 ? a : b, key, buf, reply_of(buf, i), NULL), 1);
        CHECK_EQ(fab_ledger_record(i % 2 ? b : a, key, "\xc3", 1, NULL), 0);
    }
    fab_ledger_close(a);
    fab_ledger_close(b);
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    CHECK_EQ(fab_ledger_count(r), 40);
    fab_ledger_close(r);
    lockdir_drop(lockdir);
}

/* The others' records that a writer replays under the append lock before
 * its own record have their index entries made after the lock (deferred):
 * first write wins all the same (the deferred records are looked at), every
 * record is found afterwards, a tombstone among them comes after them, and
 * more of them than the deferral holds keep their order. A handle's first
 * append replays what others appended since it opened under the lock. */
static void test_deferred_index(void)
{
    char path[512];
    path_for(path, sizeof(path), "deferred.fabl");
    int rc;
    uint8_t key[32], buf[400];
    fab_ledger_ref ref;
    fab_ledger_stats st;
    fab_ledger *a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    /* the key another handle recorded since, among 3 */
    fab_ledger *b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    for (unsigned i = 0; i < 3; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, i), NULL), 1);
    }
    key_of(key, 1);
    CHECK_EQ(fab_ledger_record(b, key, "\xc3", 1, NULL), 0); /* held: nothing written */
    for (unsigned i = 0; i < 3; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 1);
        CHECK_MEM(ref.data, buf, reply_of(buf, i));
    }
    fab_ledger_get_stats(b, &st);
    CHECK_EQ(st.records, 3);
    CHECK_EQ(st.duplicates, 0);
    fab_ledger_close(b);
    /* the last of them, and the first */
    for (unsigned first = 0; first < 2; first++) {
        b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        unsigned base = 10 + 10 * first;
        for (unsigned i = base; i < base + 5; i++) {
            key_of(key, i);
            CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, i), NULL), 1);
        }
        key_of(key, first ? base : base + 4);
        CHECK_EQ(fab_ledger_record(b, key, "\xc3", 1, NULL), 0);
        CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 1);
        CHECK_MEM(ref.data, buf, reply_of(buf, first ? base : base + 4));
        fab_ledger_close(b);
    }
    /* a tombstone after deferred records, and a record after it */
    b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    key_of(key, 100);
    CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, 100), NULL), 1);
    key_of(key, 0);
    CHECK_EQ(fab_ledger_delete(a, key, NULL), 1);
    key_of(key, 101);
    CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, 101), NULL), 1);
    key_of(key, 102);
    CHECK_EQ(fab_ledger_record(b, key, buf, reply_of(buf, 102), NULL), 1);
    key_of(key, 0);
    CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 0);
    for (unsigned i = 100; i < 103; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 1);
        CHECK_MEM(ref.data, buf, reply_of(buf, i));
    }
    fab_ledger_close(b);
    /* more than the deferral holds (64), after a key a third handle
     * recorded first; one of them recorded again */
    b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    fab_ledger *c = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    key_of(key, 200);
    CHECK_EQ(fab_ledger_record(c, key, buf, reply_of(buf, 200), NULL), 1);
    for (unsigned i = 200; i < 400; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, i), NULL), i == 200 ? 0 : 1);
    }
    CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, 400), NULL), 0);
    key_of(key, 390);
    CHECK_EQ(fab_ledger_record(b, key, "\xc3", 1, NULL), 0);
    key_of(key, 500);
    CHECK_EQ(fab_ledger_record(b, key, buf, reply_of(buf, 500), NULL), 1);
    for (unsigned i = 200; i < 400; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 1);
        CHECK_MEM(ref.data, buf, reply_of(buf, i));
    }
    fab_ledger_get_stats(b, &st);
    CHECK_EQ(st.duplicates, 0);
    fab_ledger_close(b);
    fab_ledger_close(c);
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    /* 3 + 10 + 100..102 + 200 + 500, key 0 deleted */
    CHECK_EQ(fab_ledger_count(r), 3 + 10 + 3 + 200 + 1 - 1);
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(st.duplicates, 0); /* nothing was written twice */
    fab_ledger_close(r);
    /* a key recorded and then deleted among them, and a clear after
     * others: each tombstone ends what came before it */
    b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    key_of(key, 600);
    CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, 600), NULL), 1);
    CHECK_EQ(fab_ledger_delete(a, key, NULL), 1);
    key_of(key, 601);
    CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, 601), NULL), 1);
    key_of(key, 603);
    CHECK_EQ(fab_ledger_record(b, key, buf, reply_of(buf, 603), NULL), 1);
    key_of(key, 600);
    CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 0);
    key_of(key, 601);
    CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 1);
    fab_ledger_close(b);
    b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    key_of(key, 604);
    CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, 604), NULL), 1);
    CHECK(fab_ledger_clear(a, NULL) > 200);
    key_of(key, 605);
    CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, 605), NULL), 1);
    key_of(key, 606);
    CHECK_EQ(fab_ledger_record(b, key, buf, reply_of(buf, 606), NULL), 1);
    static const unsigned gone[] = {1, 390, 601, 603, 604};
    for (unsigned i = 0; i < sizeof(gone) / sizeof(gone[0]); i++) {
        key_of(key, gone[i]);
        CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 0);
    }
    for (unsigned i = 605; i < 607; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 1);
    }
    CHECK_EQ(fab_ledger_count(b), 2);
    fab_ledger_close(b);
    fab_ledger_close(a);
}

/* The pages of checkpoint slots that a key's probe reads (from its home
 * slot to the first empty one), as a bit set (at most 64 pages). */
static uint64_t probe_pages(const uint8_t *cimg, const uint8_t key[32])
{
    fab_lindex ix;
    memset(&ix, 0, sizeof(ix));
    ix.seed = fab_load_le64(cimg + 16);
    uint64_t cap = fab_load_le64(cimg + 24), pages = 0;
    const uint8_t *slots = cimg + 4096;
    for (uint64_t i = fab_lindex_hash(&ix, key) & (cap - 1);; i = (i + 1) & (cap - 1)) {
        pages |= 1ull << (i * 16 / 4096);
        if (fab_load_le64(slots + i * 16) == 0)
            return pages;
    }
}

/* The deferred index entries of another writer's records meet a page of
 * the checkpoint that fails its checksum: the index is rebuilt from the
 * ledger, with a new seed, and the record just appended is indexed under
 * its key's new hash (an entry under the old one would count the key twice
 * and never be found by it). The appender's own key probes only intact
 * pages; the other writer opened before the checkpoint. */
static void test_deferred_reseed(void)
{
    char path[512], cpath[600];
    path_for(path, sizeof(path), "reseed.fabl");
    snprintf(cpath, sizeof(cpath), "%s.ckpt", path);
    unlink(cpath);
    int rc;
    uint8_t key[32], buf[400];
    const unsigned n = 1000;
    fab_ledger *w = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    for (unsigned i = 0; i < n; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(w, key, buf, reply_of(buf, i), NULL), 1);
    }
    fab_ledger *b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    CHECK_EQ(fab_ledger_checkpoint(w, NULL), 0);
    fab_ledger_close(w);
    size_t clen;
    uint8_t *cimg = read_file(cpath, &clen);
    uint64_t cap = fab_load_le64(cimg + 24), npages = cap * 16 / 4096;
    CHECK(npages >= 4 && npages <= 64);
    CHECK_EQ(clen, 4096 + cap * 16 + npages * 4);
    /* b's new key z, and a's new key y whose probe pages are not z's */
    uint8_t z[32], y[32];
    key_of(z, 5000);
    uint64_t zp = probe_pages(cimg, z), yp = zp;
    unsigned yi = 6000;
    for (; yi < 7000 && (yp & zp) != 0; yi++) {
        key_of(y, yi);
        yp = probe_pages(cimg, y);
    }
    CHECK((yp & zp) == 0);
    /* z's pages fail their checksums (the slots stay as they were) */
    for (uint64_t pg = 0; pg < npages; pg++) {
        if (zp & (1ull << pg))
            cimg[4096 + cap * 16 + pg * 4] ^= 0x01;
    }
    write_file(cpath, cimg, clen);
    fab_ledger *a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    fab_ledger_stats st;
    fab_ledger_get_stats(a, &st);
    CHECK_EQ(st.ckpt_state, FAB_CKPT_USED);
    CHECK_EQ(st.ckpt_keys, n);
    CHECK_EQ(fab_ledger_record(b, z, "\xc3", 1, NULL), 1);
    /* a catches up with z before its lock, defers z's entry, appends y,
     * then meets z's pages making z's entry */
    CHECK_EQ(fab_ledger_record(a, y, buf, reply_of(buf, yi), NULL), 1);
    fab_ledger_get_stats(a, &st);
    CHECK_EQ(st.ckpt_state, FAB_CKPT_REBUILT);
    CHECK_EQ(st.keys, n + 2);
    CHECK_EQ(fab_ledger_count(a), n + 2);
    fab_ledger_ref ref;
    CHECK_EQ(fab_ledger_lookup(a, y, 0, &ref, NULL), 1);
    CHECK_MEM(ref.data, buf, reply_of(buf, yi));
    CHECK_EQ(fab_ledger_lookup(a, z, 0, &ref, NULL), 1);
    CHECK_MEM(ref.data, "\xc3", 1);
    CHECK_EQ(fab_ledger_record(a, y, "\xc3", 1, NULL), 0); /* held: found by its new hash */
    fab_ledger_get_stats(a, &st);
    CHECK_EQ(st.keys, n + 2);
    CHECK_EQ(st.duplicates, 0);
    fab_ledger_close(a);
    fab_ledger_close(b);
    unlink(cpath);
    free(cimg);
}

/* A holder of the lock page's mutex SIGKILLed while another writer waits
 * for it, spinning (the spin's bound made longer than the test) or
 * blocked at once (bound 0): the waiter gets the mutex (EOWNERDEAD, from
 * pthread_mutex_trylock or pthread_mutex_lock), cuts the torn record and
 * appends; nothing acknowledged is lost. */
static void test_lock_dead_while_waiting(void)
{
    char path[512];
    uint8_t key[32], buf[400];
    fab_ledger_ref ref;
    int rc;
    char lockdir[] = "/dev/shm/fab-ledger-test-XXXXXX";
    lockdir_use(lockdir);
    static const char *spins[] = {"60000000000", "0"};
    for (int k = 0; k < 2; k++) {
        path_for(path, sizeof(path), k ? "dead-block.fabl" : "dead-spin.fabl");
        const unsigned n = 10;
        /* the waiter opens first (an open that finds a torn tail takes
         * the lock to cut it), then the holder stops inside the lock,
         * then the waiter records */
        int hp[2], wp[2], gp[2];
        CHECK_EQ(pipe(hp), 0);
        CHECK_EQ(pipe(wp), 0);
        CHECK_EQ(pipe(gp), 0);
        char c = 0;
        pid_t waiter = fork();
        if (waiter == 0) {
            setenv("FABRIC_LEDGER_TEST_SPIN_NS", spins[k], 1);
            fab_ledger *w = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
            if (w == NULL)
                _exit(3);
            if (write(wp[1], "O", 1) != 1 || read(gp[0], &c, 1) != 1 ||
                write(wp[1], "W", 1) != 1) /* about to wait for the lock */
                _exit(4);
            key_of(key, 1000);
            if (fab_ledger_record(w, key, "\xc3", 1, NULL) != 1)
                _exit(5);
            fab_ledger_stats st;
            fab_ledger_get_stats(w, &st);
            fab_ledger_close(w);
            _exit(st.owner_dead == 1 && st.torn_tails_cut == 1 ? 0 : 6);
        }
        close(wp[1]);
        close(gp[0]);
        CHECK_EQ(read(wp[0], &c, 1), 1); /* opened */
        pid_t holder = fork();
        if (holder == 0) {
            char hold[64];
            snprintf(hold, sizeof(hold), "%u:%d:torn", n, hp[1]);
            setenv("FABRIC_LEDGER_TEST_HOLD", hold, 1);
            fab_ledger *w = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
            if (w == NULL)
                _exit(3);
            for (unsigned i = 0; i < n; i++) { /* the n-th never returns */
                key_of(key, i);
                if (fab_ledger_record(w, key, buf, reply_of(buf, i), NULL) != 1)
                    _exit(4);
            }
            _exit(5);
        }
        close(hp[1]);
        CHECK_EQ(read(hp[0], &c, 1), 1); /* inside the lock, n - 1 acknowledged */
        close(hp[0]);
        CHECK_EQ(write(gp[1], "G", 1), 1);
        close(gp[1]);
        CHECK_EQ(read(wp[0], &c, 1), 1);
        close(wp[0]);
        CHECK_EQ(kill(holder, SIGKILL), 0);
        int status;
        CHECK_EQ(waitpid(holder, &status, 0), holder);
        CHECK(WIFSIGNALED(status));
        CHECK_EQ(waitpid(waiter, &status, 0), waiter);
        CHECK(WIFEXITED(status));
        CHECK_EQ(WEXITSTATUS(status), 0);
        fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        CHECK_EQ(fab_ledger_count(r), n);
        for (unsigned i = 0; i + 1 < n; i++) {
            key_of(key, i);
            CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
            CHECK_MEM(ref.data, buf, reply_of(buf, i));
        }
        key_of(key, 1000);
        CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
        fab_ledger_close(r);
    }
    lockdir_drop(lockdir);
}

/* Appends through the mapping (spec: Appends through the mapping): space
 * reserved ahead reads as the end of the records (strict), a reader sees
 * records appended into it, a dead writer's unfinished append (a zero
 * magic, then its bytes, even a reply holding ledger bytes) is a torn tail
 * that the next writer cuts, zeros followed by a valid record are
 * corruption, a full disk fails at the reservation, a file system without
 * fallocate gets pwrite, and the last writer to close trims the tail. */
static size_t make_record(uint8_t *out, unsigned k, const void *payload, size_t n)
{
    uint8_t key[32];
    key_of(key, k);
    fab_ledger_make_rec_header(out, FAB_REC_REPLY, key, payload, n);
    memcpy(out + FAB_LEDGER_REC_HEADER, key, 32);
    memcpy(out + FAB_LEDGER_REC_OVERHEAD, payload, n);
    return FAB_LEDGER_REC_OVERHEAD + n;
}

/* Faulting in ahead (spec: Appends through the mapping): under the lock
 * page with durability os, an append leaves at least 256 KiB reserved
 * past the end, which the writer faults in for writing after the mutex
 * (MADV_POPULATE_WRITE) while another handle (its own mapping, as another
 * process's) stores its records into the same pages: both write 1.2 MiB
 * of records at once, across several windows and reservations; every
 * record is then found by both, byte for byte, and a strict open finds
 * them all and nothing torn. An exclusive writer and one with fsync
 * reserve nothing ahead (a sync would write the zeros faulted in). */
typedef struct ahead_worker {
    fab_ledger *l;
    unsigned first, n;
    int failed;
} ahead_worker;

static void *ahead_work(void *arg)
{
    ahead_worker *w = arg;
    uint8_t key[32], buf[400];
    for (unsigned i = w->first; i < w->first + w->n; i++) {
        key_of(key, i);
        if (fab_ledger_record(w->l, key, buf, reply_of(buf, i), NULL) != 1)
            w->failed++;
    }
    return NULL;
}

static void test_fault_in_ahead(void)
{
    char path[512];
    uint8_t key[32], buf[400];
    fab_ledger_ref ref;
    fab_ledger_stats st;
    int rc;
    char lockdir[] = "/dev/shm/fab-ledger-ahead-XXXXXX";
    lockdir_use(lockdir);
    path_for(path, sizeof(path), "ahead.fabl");
    enum { PER = 4000 };
    ahead_worker w[2];
    pthread_t t[2];
    for (unsigned i = 0; i < 2; i++) {
        w[i].l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        w[i].first = i * PER;
        w[i].n = PER;
        w[i].failed = 0;
    }
    for (unsigned i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, ahead_work, &w[i]), 0);
    for (unsigned i = 0; i < 2; i++) {
        CHECK_EQ(pthread_join(t[i], NULL), 0);
        CHECK_EQ(w[i].failed, 0);
    }
    /* one more append each: the reservation ahead after it */
    for (unsigned i = 0; i < 2; i++) {
        key_of(key, 2 * PER + i);
        CHECK_EQ(fab_ledger_record(w[i].l, key, buf, reply_of(buf, 2 * PER + i), NULL), 1);
        fab_ledger_get_stats(w[i].l, &st);
        CHECK_EQ(st.append_lock, 2);
        CHECK_EQ(st.mapped_appends, 1);
        CHECK(st.reserved_bytes >= (256u << 10));
    }
    CHECK(st.bytes > (1u << 20));
    for (unsigned h = 0; h < 2; h++) {
        for (unsigned i = 0; i < 2 * PER + 2; i++) {
            key_of(key, i);
            CHECK_EQ(fab_ledger_lookup(w[h].l, key, 0, &ref, NULL), 1);
            CHECK_EQ(ref.len, reply_of(buf, i));
            CHECK_MEM(ref.data, buf, ref.len);
        }
        CHECK_EQ(fab_ledger_count(w[h].l), 2 * PER + 2);
    }
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    CHECK_EQ(fab_ledger_count(r), 2 * PER + 2);
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(st.torn_bytes, 0);
    CHECK_EQ(st.duplicates, 0);
    fab_ledger_close(r);
    fab_ledger_close(w[0].l);
    fab_ledger_close(w[1].l);

    /* nothing ahead for an exclusive writer, or with fsync */
    for (unsigned mode = 0; mode < 2; mode++) {
        path_for(path, sizeof(path), "ahead.fabl");
        fab_ledger *l = mode == 0 ? open_exclusive(path, &rc, NULL)
                                  : open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_FSYNC, 0, NULL,
                                                &rc, NULL);
        CHECK_EQ(rc, 0);
        key_of(key, 1);
        CHECK_EQ(fab_ledger_record(l, key, buf, reply_of(buf, 1), NULL), 1);
        fab_ledger_get_stats(l, &st);
        CHECK_EQ(st.append_lock, mode == 0 ? 0 : 2);
        CHECK_EQ(st.mapped_appends, 1);
        CHECK(st.reserved_bytes > 0 && st.reserved_bytes < (256u << 10));
        fab_ledger_close(l);
    }
    unlink(path);
    lockdir_drop(lockdir);
}

static void test_reserved_tail(void)
{
    char path[512];
    uint8_t key[32], buf[400];
    fab_ledger_ref ref;
    fab_ledger_stats st;
    fab_ledger_error err;
    struct stat sb;
    int rc;
    char lockdir[] = "/dev/shm/fab-ledger-tail-XXXXXX";
    lockdir_use(lockdir);
    path_for(path, sizeof(path), "tail.fabl");
    fab_ledger *w = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    for (unsigned i = 0; i < 50; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(w, key, buf, reply_of(buf, i), NULL), 1);
    }
    fab_ledger_get_stats(w, &st);
    CHECK_EQ(st.append_lock, 2);
    CHECK_EQ(st.mapped_appends, 1);
    CHECK(st.reserved_bytes > 0);
    CHECK_EQ(stat(path, &sb), 0);
    CHECK_EQ((uint64_t)sb.st_size, st.bytes + st.reserved_bytes);

    /* a strict open: the zero tail is the end of the records, not torn */
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    CHECK_EQ(fab_ledger_count(r), 50);
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(st.torn_bytes, 0);
    /* records appended into the tail (the file does not grow) are seen */
    key_of(key, 50);
    CHECK_EQ(fab_ledger_record(w, key, buf, reply_of(buf, 50), NULL), 1);
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
    CHECK_EQ(ref.len, reply_of(buf, 50));
    CHECK_MEM(ref.data, buf, ref.len);
    CHECK_EQ(stat(path, &sb), 0);
    fab_ledger_get_stats(w, &st);
    CHECK_EQ((uint64_t)sb.st_size, st.bytes + st.reserved_bytes);
    uint64_t end = st.bytes;

    /* a dead writer's unfinished append: every byte but the magic, its
     * reply a whole valid record (ledger bytes), which must not pass for
     * a record after a gap */
    uint8_t inner[64], outer[256];
    size_t ni = make_record(inner, 60, "in", 2);
    size_t no = make_record(outer, 51, inner, ni);
    memset(outer, 0, 4);
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    CHECK_EQ(pwrite(fd, outer, no, (off_t)end), (ssize_t)no);
    fab_ledger *r2 = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, &err);
    CHECK_EQ(rc, 0);
    CHECK_EQ(fab_ledger_count(r2), 51);
    fab_ledger_get_stats(r2, &st);
    CHECK(st.torn_bytes > 0);
    fab_ledger_close(r2);
    /* the next writer cuts it when it opens (a lock holder in doubt) */
    fab_ledger *w2 = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    fab_ledger_get_stats(w2, &st);
    CHECK_EQ(st.torn_tails_cut, 1);
    key_of(key, 52);
    CHECK_EQ(fab_ledger_record(w, key, buf, reply_of(buf, 52), NULL), 1);
    key_of(key, 53);
    CHECK_EQ(fab_ledger_record(w2, key, buf, reply_of(buf, 53), NULL), 1);
    fab_ledger_close(w2);
    CHECK_EQ(stat(path, &sb), 0);
    CHECK((uint64_t)sb.st_size > end); /* w still open: its tail stays */
    fab_ledger_close(w);
    fab_ledger_close(r);
    r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    CHECK_EQ(fab_ledger_count(r), 53);
    key_of(key, 51);
    CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 0);
    fab_ledger_get_stats(r, &st);
    CHECK_EQ(stat(path, &sb), 0);
    CHECK_EQ((uint64_t)sb.st_size, st.bytes); /* the last to close trimmed it */
    CHECK_EQ(st.reserved_bytes, 0);
    end = st.bytes;
    fab_ledger_close(r);

    /* zeros, then a valid record: corruption, at the zeros */
    uint8_t zeros[100] = {0};
    CHECK_EQ(pwrite(fd, zeros, sizeof(zeros), (off_t)end), (ssize_t)sizeof(zeros));
    ni = make_record(inner, 61, "late", 4);
    CHECK_EQ(pwrite(fd, inner, ni, (off_t)end + 100), (ssize_t)ni);
    r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, &err);
    CHECK_EQ(rc, FAB_ECORRUPT);
    CHECK_EQ(err.offset, end);
    r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_SALVAGE, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    CHECK_EQ(fab_ledger_count(r), 54);
    fab_ledger_close(r);
    CHECK_EQ(ftruncate(fd, (off_t)end), 0);
    close(fd);

    /* a full disk: the reservation fails, nothing is written, the ledger
     * goes on once there is room */
    memset(&fault, 0, sizeof(fault));
    fault.kind = F_FALLOC;
    fault.nth = -1;
    fault.err = ENOSPC;
    fab_ledger *x = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_FSYNC, 0, &fault_io_mapped, &rc,
                                NULL);
    CHECK_EQ(rc, 0);
    key_of(key, 70);
    CHECK_EQ(fab_ledger_record(x, key, buf, reply_of(buf, 70), &err), FAB_EIO);
    CHECK_EQ(err.sys_errno, ENOSPC);
    CHECK(strstr(err.msg, "reserving space") != NULL);
    CHECK_EQ(fab_ledger_lookup(x, key, 0, &ref, NULL), 0);
    CHECK_EQ(stat(path, &sb), 0);
    CHECK_EQ((uint64_t)sb.st_size, end);
    fault.kind = -1;
    CHECK_EQ(fab_ledger_record(x, key, buf, reply_of(buf, 70), NULL), 1);
    fab_ledger_get_stats(x, &st);
    CHECK_EQ(st.mapped_appends, 1);
    CHECK_EQ(st.failed, 0);
    fab_ledger_close(x);
    /* a file system without fallocate: pwrite */
    memset(&fault, 0, sizeof(fault));
    fault.kind = F_FALLOC;
    fault.nth = -1;
    fault.err = EOPNOTSUPP;
    x = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, &fault_io_mapped, &rc, NULL);
    CHECK_EQ(rc, 0);
    key_of(key, 71);
    CHECK_EQ(fab_ledger_record(x, key, buf, reply_of(buf, 71), NULL), 1);
    fab_ledger_get_stats(x, &st);
    CHECK_EQ(st.mapped_appends, 0);
    CHECK_EQ(st.reserved_bytes, 0);
    fab_ledger_close(x);

    /* an exclusive writer whose reserved space another program cut (to
     * the page after the records): the store faults in the guard, and the
     * space is reserved and the record stored again */
    x = open_exclusive(path, &rc, &err);
    CHECK_EQ(rc, 0);
    key_of(key, 72);
    CHECK_EQ(fab_ledger_record(x, key, buf, reply_of(buf, 72), NULL), 1);
    fab_ledger_get_stats(x, &st);
    CHECK_EQ(st.mapped_appends, 1);
    CHECK_EQ(truncate(path, (off_t)((st.bytes + 4095) & ~(uint64_t)4095)), 0);
    static uint8_t big[9000];
    memset(big, 0x5a, sizeof(big));
    key_of(key, 73);
    CHECK_EQ(fab_ledger_record(x, key, big, sizeof(big), NULL), 1);
    fab_ledger_close(x);
    r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    CHECK_EQ(fab_ledger_count(r), 57);
    for (unsigned i = 70; i < 74; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
    }
    CHECK_EQ(ref.len, sizeof(big));
    CHECK_MEM(ref.data, big, sizeof(big));
    fab_ledger_close(r);
    lockdir_drop(lockdir);
}

/* A replay hashes the keys of the records ahead of the one it is at (to
 * prefetch their index slots). Past the last record lie the reserved
 * zeros, where another process's append through the mapping may land
 * while the replay runs (a compaction's first pass, a reader's miss): the
 * hash made ahead from the bytes there before the append must not be the
 * one the record is indexed under, or the key is never found again (and a
 * compaction leaves it out). The open's progress callback, called at the
 * end of the records, stores a record there as such an append would. */
typedef struct {
    int fd;
    uint64_t at;
    const uint8_t *rec;
    size_t n;
    int stored;
} append_beside;

static void store_at_progress(void *ctx, uint64_t done, uint64_t total)
{
    append_beside *a = ctx;
    FAB_UNUSED(total);
    if (!a->stored && done == a->at) {
        CHECK_EQ(pwrite(a->fd, a->rec, a->n, (off_t)a->at), (long long)a->n);
        a->stored = 1;
    }
}

static void test_replay_beside_an_append(void)
{
    char path[512];
    path_for(path, sizeof(path), "beside.fabl");
    /* 16 records of 1 MiB: the replay's first progress call (every 16 MiB)
     * comes right after the last, at the end of the records */
    size_t plen = (size_t)1 << 20, rlen = FAB_LEDGER_REC_OVERHEAD + plen;
    size_t end = FAB_LEDGER_HEADER_SIZE + 16 * rlen;
    uint8_t *img = calloc(1, end), *payload = malloc(plen);
    fab_ledger_make_header(img, 1700000000000000000ull, "test");
    for (unsigned i = 0; i < 16; i++) {
        memset(payload, (int)(0x41 + i), plen);
        make_record(img + FAB_LEDGER_HEADER_SIZE + i * rlen, 900 + i, payload, plen);
    }
    write_file(path, img, end);
    CHECK_EQ(truncate(path, (off_t)(end + 65536)), 0); /* a reserved tail */
    uint8_t rec[FAB_LEDGER_REC_OVERHEAD + 100];
    memset(payload, 0x7a, 100);
    append_beside a = {open(path, O_RDWR), end, rec, make_record(rec, 916, payload, 100), 0};
    fab_ledger_options opt = {0};
    opt.mode = FAB_LEDGER_READ;
    opt.recover = FAB_RECOVER_STRICT;
    opt.progress = store_at_progress;
    opt.progress_ctx = &a;
    fab_ledger *l = NULL;
    CHECK_EQ(fab_ledger_open(&l, path, &opt, NULL), 0);
    CHECK_EQ(a.stored, 1);
    CHECK_EQ(fab_ledger_count(l), 17);
    uint8_t key[32];
    fab_ledger_ref ref;
    for (unsigned i = 900; i <= 916; i++) {
        key_of(key, i);
        memset(&ref, 0, sizeof(ref));
        CHECK_EQ(fab_ledger_lookup(l, key, 1, &ref, NULL), 1);
        if (i == 916 && ref.map != NULL) {
            CHECK_EQ(ref.len, 100);
            CHECK_MEM(ref.data, payload, 100);
        }
        fab_lmap_release(ref.map);
    }
    fab_ledger_close(l);
    close(a.fd);
    free(img);
    free(payload);
    unlink(path);
}

/* Writer processes appending through the mapping while another compacts
 * in place again and again, one writer SIGKILLed midway: every record a
 * writer was told is recorded is in the ledger afterwards, once, and it
 * opens strictly. Small files and many compactions, so that the
 * compaction's unlocked first pass often replays up to an append in
 * progress. FABRIC_LEDGER_STRESS_ROUNDS rounds (2; more for a soak). */
enum { STRESS_WRITERS = 3, STRESS_RECORDS = 4000, STRESS_COMPACTIONS = 8 };

static void stress_writer(const char *path, unsigned serial, int out)
{
    fab_ledger *w = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    if (w == NULL)
        _exit(2);
    uint8_t key[32], buf[400];
    /* the victim (serial 1) has no end of its own: killed while appending */
    unsigned n = serial == 1 ? 1u << 20 : STRESS_RECORDS;
    for (unsigned i = 0; i < n; i++) {
        unsigned k = serial << 20 | i;
        key_of(key, k);
        if (fab_ledger_record(w, key, buf, reply_of(buf, k), NULL) != 1)
            _exit(3);
        if (write(out, &k, sizeof(k)) != (ssize_t)sizeof(k))
            _exit(4);
    }
    fab_ledger_close(w);
    _exit(0);
}

/* Compacts in place until told to stop (its pipe closed), at least
 * STRESS_COMPACTIONS times; writes the count to out. */
static void stress_compactor(const char *path, int stop, int out)
{
    fab_ledger *c = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
    if (c == NULL)
        _exit(2);
    struct pollfd pf = {stop, POLLIN, 0};
    unsigned n = 0;
    while (n < STRESS_COMPACTIONS || poll(&pf, 1, 0) == 0) {
        if (fab_ledger_compact(c, NULL, NULL, NULL, NULL) != FAB_OK)
            _exit(3);
        n++;
    }
    fab_ledger_close(c);
    if (write(out, &n, sizeof(n)) != (ssize_t)sizeof(n))
        _exit(4);
    _exit(0);
}

static void test_writers_and_compactions(void)
{
    char path[512];
    char lockdir[] = "/dev/shm/fab-ledger-stress-XXXXXX";
    lockdir_use(lockdir);
    const char *env = getenv("FABRIC_LEDGER_STRESS_ROUNDS");
    int rounds = env ? atoi(env) : 2;
    /* room for every key a round can acknowledge */
    unsigned *acked = malloc(((1u << 20) + STRESS_WRITERS * STRESS_RECORDS) * sizeof(unsigned));
    CHECK(acked != NULL);
    if (acked == NULL)
        return;
    unsigned long long total_acked = 0, lost = 0, total_compactions = 0;
    for (int round = 0; round < rounds; round++) {
        path_for(path, sizeof(path), "stress.fabl");
        int rc;
        fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        fab_ledger_close(l);
        pid_t pids[STRESS_WRITERS + 1];
        struct pollfd fds[STRESS_WRITERS];
        size_t got[STRESS_WRITERS] = {0}, n = 0;
        for (unsigned w = 0; w < STRESS_WRITERS; w++) {
            int p[2];
            CHECK_EQ(pipe(p), 0);
            if ((pids[w] = fork()) == 0) {
                close(p[0]);
                stress_writer(path, w + 1, p[1]);
            }
            close(p[1]);
            fds[w].fd = p[0];
            fds[w].events = POLLIN;
        }
        int stop[2], count[2];
        CHECK_EQ(pipe(stop), 0);
        CHECK_EQ(pipe(count), 0);
        if ((pids[STRESS_WRITERS] = fork()) == 0) {
            close(stop[1]);
            close(count[0]);
            for (unsigned w = 0; w < STRESS_WRITERS; w++)
                close(fds[w].fd);
            stress_compactor(path, stop[0], count[1]);
        }
        close(stop[0]);
        close(count[1]);
        /* writer 0 is the victim: killed once it acknowledged half */
        int open_pipes = STRESS_WRITERS, killed = 0;
        unsigned partial[STRESS_WRITERS] = {0};
        size_t have[STRESS_WRITERS] = {0};
        while (open_pipes > 0) {
            CHECK(poll(fds, STRESS_WRITERS, -1) > 0);
            for (unsigned w = 0; w < STRESS_WRITERS; w++) {
                if (fds[w].fd < 0 || !(fds[w].revents & (POLLIN | POLLHUP)))
                    continue;
                uint8_t *dst = (uint8_t *)&partial[w] + have[w];
                ssize_t r = read(fds[w].fd, dst, sizeof(unsigned) - have[w]);
                if (r <= 0) { /* EOF; a key cut short by the kill was never acknowledged */
                    close(fds[w].fd);
                    fds[w].fd = -1;
                    open_pipes--;
                    continue;
                }
                have[w] += (size_t)r;
                if (have[w] < sizeof(unsigned))
                    continue;
                have[w] = 0;
                acked[n++] = partial[w];
                if (++got[w] == STRESS_RECORDS / 2 && w == 0) {
                    kill(pids[0], SIGKILL);
                    killed = 1;
                }
            }
            if (stop[1] >= 0 && got[1] == STRESS_RECORDS && got[2] == STRESS_RECORDS) {
                close(stop[1]); /* the compactor ran while they appended */
                stop[1] = -1;
            }
        }
        if (stop[1] >= 0)
            close(stop[1]);
        unsigned compactions = 0;
        CHECK_EQ(read(count[0], &compactions, sizeof(compactions)), (long long)sizeof(compactions));
        close(count[0]);
        total_compactions += compactions;
        for (unsigned i = 0; i <= STRESS_WRITERS; i++) {
            int status;
            CHECK_EQ(waitpid(pids[i], &status, 0), pids[i]);
            if (i == 0)
                CHECK(killed && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
            else
                CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        for (unsigned w = 1; w < STRESS_WRITERS; w++)
            CHECK_EQ(got[w], STRESS_RECORDS);
        l = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        if (l == NULL)
            break;
        uint8_t key[32];
        fab_ledger_ref ref;
        for (size_t i = 0; i < n; i++) {
            key_of(key, acked[i]);
            lost += fab_ledger_lookup(l, key, 0, &ref, NULL) != 1;
        }
        fab_ledger_stats st;
        fab_ledger_get_stats(l, &st);
        CHECK_EQ(st.duplicates, 0);
        /* the victim's last record may be there without its acknowledgement */
        CHECK(fab_ledger_count(l) == n || fab_ledger_count(l) == n + 1);
        fab_ledger_close(l);
        total_acked += n;
    }
    CHECK_EQ(lost, 0);
    printf("    %d rounds of %d writers (one killed), %llu compactions: %llu acknowledged, "
           "%llu lost\n", rounds, STRESS_WRITERS, total_compactions, total_acked, lost);
    free(acked);
    lockdir_drop(lockdir);
}

/* A reader catching up (refresh) again and again while another process
 * appends through the mapping: every record it replays is found by its
 * key (the keys the iteration yields, which looks each record's key up,
 * are as many as the index holds). FABRIC_LEDGER_STRESS_ROUNDS rounds. */
static void test_reader_beside_appends(void)
{
    char path[512];
    char lockdir[] = "/dev/shm/fab-ledger-beside-XXXXXX";
    lockdir_use(lockdir);
    const char *env = getenv("FABRIC_LEDGER_STRESS_ROUNDS");
    int rounds = env ? atoi(env) : 2;
    unsigned long long refreshes = 0, missing = 0;
    for (int round = 0; round < rounds; round++) {
        path_for(path, sizeof(path), "beside-live.fabl");
        int rc;
        fab_ledger *l = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        fab_ledger_close(l);
        l = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        int p[2];
        CHECK_EQ(pipe(p), 0);
        pid_t pid = fork();
        if (pid == 0) {
            close(p[0]);
            fab_ledger *w = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
            uint8_t key[32], buf[400];
            for (unsigned i = 0; w != NULL && i < 20000; i++) {
                key_of(key, 5000000 + i);
                if (fab_ledger_record(w, key, buf, reply_of(buf, i), NULL) != 1)
                    _exit(3);
            }
            _exit(w == NULL ? 2 : 0); /* no close: no trim, the zeros stay */
        }
        close(p[1]);
        fab_ledger_pos pos = {0};
        uint8_t key[32];
        fab_ledger_ref ref;
        size_t yielded = 0;
        struct pollfd pf = {p[0], POLLIN, 0};
        for (int last = 0; !last;) {
            last = poll(&pf, 1, 0) != 0; /* the writer exited: one more look */
            CHECK(fab_ledger_refresh(l, NULL) >= 0);
            refreshes++;
            while (fab_ledger_next(l, &pos, key, 0, &ref, NULL) == 1)
                yielded++;
            if (yielded != fab_ledger_count(l)) {
                missing += fab_ledger_count(l) - yielded;
                yielded = fab_ledger_count(l);
            }
        }
        close(p[0]);
        int status;
        CHECK_EQ(waitpid(pid, &status, 0), pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        CHECK_EQ(fab_ledger_count(l), 20000);
        fab_ledger_close(l);
    }
    CHECK_EQ(missing, 0);
    printf("    %d rounds: %llu refreshes beside the appends, %llu records not found by key\n",
           rounds, refreshes, missing);
    lockdir_drop(lockdir);
}

/* ---- the lock page's key filter (spec: The key filter) ------------------ */

/* The lock page of the ledger at path, mapped (writable: a test may play
 * another holder), in lockdir; NULL when there is none. */
typedef struct test_page {
    uint8_t *p;
    size_t len;
} test_page;

#define TP_END 40
#define TP_FILTER_BASE 136
#define TP_FILTER_KEYS 144
#define TP_CLEARS 152

static int page_map(test_page *tp, const char *path, const char *lockdir)
{
    struct stat sb;
    char name[700];
    if (stat(path, &sb) != 0)
        return -1;
    snprintf(name, sizeof(name), "%s/fabric-ledger-%llx-%llx.glibc.lock", lockdir,
             (unsigned long long)sb.st_dev, (unsigned long long)sb.st_ino);
    int fd = open(name, O_RDWR);
    if (fd < 0)
        return -1;
    struct stat ps;
    CHECK_EQ(fstat(fd, &ps), 0);
    tp->len = (size_t)ps.st_size;
    tp->p = mmap(NULL, tp->len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    CHECK(tp->p != MAP_FAILED);
    return 0;
}

static uint64_t page_u64(const test_page *tp, size_t at)
{
    return __atomic_load_n((const uint64_t *)(const void *)(tp->p + at), __ATOMIC_SEQ_CST);
}

static void page_unmap(test_page *tp)
{
    munmap(tp->p, tp->len);
}

static uint64_t lazy_of(fab_ledger *l)
{
    fab_ledger_stats st;
    fab_ledger_get_stats(l, &st);
    return st.lazy_appends;
}

/* The records and duplicates a strict open of path finds. */
static void strict_count(const char *path, uint64_t *records, uint64_t *dups, size_t *keys)
{
    int rc;
    fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    fab_ledger_stats st;
    fab_ledger_get_stats(r, &st);
    *records = st.records;
    *dups = st.duplicates;
    *keys = fab_ledger_count(r);
    fab_ledger_close(r);
}

typedef struct race_worker {
    fab_ledger *l;
    unsigned first, n;
    int reverse;
    unsigned won;
    int failed;
} race_worker;

static void *race_work(void *arg)
{
    race_worker *w = arg;
    uint8_t key[32], buf[400];
    for (unsigned j = 0; j < w->n; j++) {
        unsigned i = w->first + (w->reverse ? w->n - 1 - j : j);
        key_of(key, i);
        int rc = fab_ledger_record(w->l, key, buf, reply_of(buf, i), NULL);
        if (rc == 1)
            w->won++;
        else if (rc != 0)
            w->failed++;
    }
    return NULL;
}

/* Two writer handles (two open files, as two processes) under one lock
 * page: once both appended, the filter is valid and their appends of new
 * keys go past the other's records without replaying them (lazy); an
 * append of a key the other recorded is not lazy (the filter has it) and
 * writes nothing: first write wins, sequentially and with both racing over
 * the same keys; each finds the other's keys at a miss; a strict open
 * finds every key once. A fresh page has no valid filter; a handle whose
 * replayed end is below the filter's base takes the full catch-up. */
static void test_key_filter_lazy(void)
{
    char path[512];
    uint8_t key[32], buf[400];
    fab_ledger_ref ref;
    fab_ledger_stats st;
    int rc;
    char lockdir[] = "/dev/shm/fab-ledger-test-XXXXXX";
    lockdir_use(lockdir);
    path_for(path, sizeof(path), "filter.fabl");
    fab_ledger *a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    fab_ledger *b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    test_page tp;
    CHECK_EQ(page_map(&tp, path, lockdir), 0);
    CHECK_EQ(tp.len, 4096 + ((size_t)2 << 20));
    CHECK_EQ(page_u64(&tp, TP_FILTER_BASE), UINT64_MAX); /* fresh: no filter */
    /* a writer alone keeps no filter */
    for (unsigned i = 0; i < 10; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, i), NULL), 1);
    }
    CHECK_EQ(page_u64(&tp, TP_FILTER_BASE), UINT64_MAX);
    unsigned n = 10;
    for (unsigned i = 10; i < 400; i++, n++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(i % 2 ? a : b, key, buf, reply_of(buf, i), NULL), 1);
    }
    CHECK(page_u64(&tp, TP_FILTER_BASE) != UINT64_MAX);
    CHECK(page_u64(&tp, TP_FILTER_KEYS) > 300);
    CHECK(lazy_of(a) > 150 && lazy_of(b) > 150);
    /* first write wins: b's append of a's key is not lazy, writes nothing */
    for (unsigned i = 1000; i < 1200; i++, n++) {
        key_of(key, i);
        fab_ledger *w = i % 2 ? a : b, *o = i % 2 ? b : a;
        CHECK_EQ(fab_ledger_record(w, key, buf, reply_of(buf, i), NULL), 1);
        uint64_t lz = lazy_of(o);
        CHECK_EQ(fab_ledger_record(o, key, "\xc3", 1, NULL), 0);
        CHECK_EQ(lazy_of(o), lz);
        CHECK_EQ(fab_ledger_lookup(o, key, 0, &ref, NULL), 1);
        CHECK_MEM(ref.data, buf, reply_of(buf, i));
    }
    /* both racing over the same keys, in opposite orders */
    for (int round = 0; round < 3; round++) {
        race_worker wa = {a, 2000 + 1000 * (unsigned)round, 1000, 0, 0, 0};
        race_worker wb = {b, 2000 + 1000 * (unsigned)round, 1000, round != 1, 0, 0};
        pthread_t ta, tb;
        CHECK_EQ(pthread_create(&ta, NULL, race_work, &wa), 0);
        CHECK_EQ(pthread_create(&tb, NULL, race_work, &wb), 0);
        CHECK_EQ(pthread_join(ta, NULL), 0);
        CHECK_EQ(pthread_join(tb, NULL), 0);
        CHECK_EQ(wa.failed + wb.failed, 0);
        CHECK_EQ(wa.won + wb.won, 1000); /* exactly one record per key */
        n += 1000;
    }
    /* each finds the other's keys (a miss catches up) */
    for (unsigned i = 10; i < 400; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_lookup(i % 2 ? b : a, key, 0, &ref, NULL), 1);
        CHECK_MEM(ref.data, buf, reply_of(buf, i));
    }
    /* a handle whose replayed end is below the filter's base (another
     * holder emptied it since) catches up in full */
    key_of(key, 6000);
    CHECK_EQ(fab_ledger_record(b, key, buf, reply_of(buf, 6000), NULL), 1);
    n++;
    fab_ledger_get_stats(a, &st);
    uint64_t lz = st.lazy_appends, foreign = st.foreign_records;
    __atomic_store_n((uint64_t *)(void *)(tp.p + TP_FILTER_BASE), page_u64(&tp, TP_END),
                     __ATOMIC_SEQ_CST);
    key_of(key, 6001);
    CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, 6001), NULL), 1);
    n++;
    fab_ledger_get_stats(a, &st);
    CHECK_EQ(st.lazy_appends, lz);
    CHECK(st.foreign_records > foreign);
    key_of(key, 6002); /* and then it is lazy again */
    CHECK_EQ(fab_ledger_record(b, key, buf, reply_of(buf, 6002), NULL), 1);
    key_of(key, 6003);
    CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, 6003), NULL), 1);
    n += 2;
    CHECK_EQ(lazy_of(a), lz + 1);
    /* the count replays what a skipped first (a's last append was the
     * page's last: nothing after it) */
    CHECK_EQ(fab_ledger_count(a), n);
    /* a refresh replays what a skipped, its own records again: counted once */
    CHECK(fab_ledger_refresh(a, NULL) >= 0);
    CHECK(fab_ledger_refresh(b, NULL) >= 0);
    fab_ledger_get_stats(a, &st);
    CHECK_EQ(st.records, n);
    CHECK_EQ(st.duplicates, 0);
    CHECK_EQ(fab_ledger_count(a), n);
    CHECK_EQ(fab_ledger_count(b), n);
    page_unmap(&tp);
    fab_ledger_close(a);
    fab_ledger_close(b);
    uint64_t records, dups;
    size_t keys;
    strict_count(path, &records, &dups, &keys);
    CHECK_EQ(records, n);
    CHECK_EQ(dups, 0);
    CHECK_EQ(keys, n);
    lockdir_drop(lockdir);
}

/* A key a handle holds from before the filter's base, deleted (or
 * cleared) by the other handle in records the first has not replayed
 * (its appends in between are lazy): recording it again appends it,
 * because the filter has the tombstone's key (the clear's count moved);
 * the first handle's view and a strict open agree afterwards. */
static void test_key_filter_deletes(void)
{
    char path[512];
    uint8_t key[32], buf[400];
    fab_ledger_ref ref;
    int rc;
    char lockdir[] = "/dev/shm/fab-ledger-test-XXXXXX";
    lockdir_use(lockdir);
    for (int clear = 0; clear < 2; clear++) {
        path_for(path, sizeof(path), clear ? "filter-clear.fabl" : "filter-delete.fabl");
        fab_ledger *a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        key_of(key, 7000); /* before any filter */
        CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, 7000), NULL), 1);
        fab_ledger *b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        for (unsigned i = 0; i < 20; i++) {
            key_of(key, i);
            CHECK_EQ(fab_ledger_record(i % 2 ? a : b, key, buf, reply_of(buf, i), NULL), 1);
        }
        uint64_t lz = lazy_of(a);
        CHECK(lz > 0);
        key_of(key, 7000);
        if (clear)
            CHECK_EQ(fab_ledger_clear(b, NULL), 21);
        else
            CHECK_EQ(fab_ledger_delete(b, key, NULL), 1);
        if (!clear) { /* a's next append of another key is lazy: the tombstone not replayed */
            key_of(key, 100);
            CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, 100), NULL), 1);
            CHECK_EQ(lazy_of(a), lz + 1);
        }
        key_of(key, 7000);
        CHECK_EQ(fab_ledger_record(a, key, "\xc3", 1, NULL), 1); /* appended again */
        CHECK_EQ(fab_ledger_lookup(a, key, 0, &ref, NULL), 1);
        CHECK_EQ(ref.len, 1);
        CHECK(fab_ledger_refresh(a, NULL) >= 0);
        CHECK_EQ(fab_ledger_lookup(a, key, 0, &ref, NULL), 1);
        CHECK_EQ(ref.len, 1);
        CHECK_EQ(fab_ledger_lookup(b, key, 0, &ref, NULL), 1);
        CHECK_EQ(ref.len, 1);
        size_t held = clear ? 1 : 22;
        CHECK_EQ(fab_ledger_count(a), held);
        CHECK_EQ(fab_ledger_count(b), held);
        fab_ledger_close(a);
        fab_ledger_close(b);
        fab_ledger *r = open_ledger(path, FAB_LEDGER_READ, 0, FAB_RECOVER_STRICT, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        CHECK_EQ(fab_ledger_count(r), held);
        CHECK_EQ(fab_ledger_lookup(r, key, 0, &ref, NULL), 1);
        CHECK_EQ(ref.len, 1);
        fab_ledger_close(r);
    }
    lockdir_drop(lockdir);
}

/* A holder killed inside an append after it added its key to the filter
 * (the test hook stops it there, its record half written or not at all):
 * the next holder finds it dead, the filter is not valid until a holder
 * caught up in full empties it again; the dead writer's key is recorded
 * once by the survivor, nothing acknowledged is lost or doubled. A page
 * left by a killed last user is reset when the next writer opens it. */
static void test_key_filter_killed(void)
{
    char path[512];
    uint8_t key[32], buf[400];
    fab_ledger_ref ref;
    int rc;
    char lockdir[] = "/dev/shm/fab-ledger-test-XXXXXX";
    lockdir_use(lockdir);
    for (int torn = 0; torn < 2; torn++) {
        path_for(path, sizeof(path), torn ? "filter-held-torn.fabl" : "filter-held.fabl");
        fab_ledger *a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
        CHECK_EQ(rc, 0);
        int p[2], g[2];
        CHECK_EQ(pipe(p), 0);
        CHECK_EQ(pipe(g), 0);
        const unsigned n = 40; /* the child's second handle stops at its n-th */
        pid_t pid = fork();
        if (pid == 0) {
            fab_ledger *w1 = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
            char hold[64];
            snprintf(hold, sizeof(hold), "%u:%d%s", n, p[1], torn ? ":torn" : "");
            setenv("FABRIC_LEDGER_TEST_HOLD", hold, 1);
            fab_ledger *w2 = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
            if (w1 == NULL || w2 == NULL)
                _exit(3);
            for (unsigned i = 0;; i++) { /* w2's n-th never returns */
                key_of(key, i);
                if (fab_ledger_record(i % 2 ? w2 : w1, key, buf, reply_of(buf, i), NULL) != 1)
                    _exit(4);
            }
        }
        close(p[1]);
        char c = 0;
        CHECK_EQ(read(p[0], &c, 1), 1); /* inside the lock: keys 0 .. 2n - 2 acknowledged */
        CHECK_EQ(c, 'H');
        close(p[0]);
        close(g[0]);
        close(g[1]);
        test_page tp;
        CHECK_EQ(page_map(&tp, path, lockdir), 0);
        CHECK(page_u64(&tp, TP_FILTER_BASE) != UINT64_MAX); /* the child's handles kept one */
        uint64_t keys_before = page_u64(&tp, TP_FILTER_KEYS);
        CHECK_EQ(kill(pid, SIGKILL), 0);
        int status;
        CHECK_EQ(waitpid(pid, &status, 0), pid);
        CHECK(WIFSIGNALED(status));
        CHECK(keys_before >= 2 * n - 1); /* the held key's bits were set */
        unsigned held = 2 * n - 1;       /* w2's n-th: key 2n - 1 */
        key_of(key, held);
        CHECK_EQ(fab_ledger_record(a, key, buf, reply_of(buf, held), NULL), 1);
        fab_ledger_stats st;
        fab_ledger_get_stats(a, &st);
        CHECK_EQ(st.owner_dead, 1);
        CHECK_EQ(st.torn_tails_cut, (uint64_t)torn);
        /* a caught up in full on the others' records: the filter anew */
        CHECK(page_u64(&tp, TP_FILTER_BASE) != UINT64_MAX);
        CHECK(page_u64(&tp, TP_FILTER_KEYS) <= 1);
        for (unsigned i = 0; i < held; i++) { /* every acknowledged one is there */
            key_of(key, i);
            CHECK_EQ(fab_ledger_record(a, key, "\xc3", 1, NULL), 0);
            CHECK_EQ(fab_ledger_lookup(a, key, 0, &ref, NULL), 1);
            CHECK_MEM(ref.data, buf, reply_of(buf, i));
        }
        page_unmap(&tp);
        fab_ledger_close(a);
        uint64_t records, dups;
        size_t keys;
        strict_count(path, &records, &dups, &keys);
        CHECK_EQ(keys, held + 1);
        CHECK_EQ(records, held + 1);
        CHECK_EQ(dups, 0);
    }

    /* a page left by a killed last user, with a filter: reset at the next
     * open (its file may be another's by now), rebuilt by two writers */
    path_for(path, sizeof(path), "filter-leftover.fabl");
    int p[2];
    CHECK_EQ(pipe(p), 0);
    pid_t pid = fork();
    if (pid == 0) {
        fab_ledger *w1 = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
        fab_ledger *w2 = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, NULL, NULL);
        if (w1 == NULL || w2 == NULL)
            _exit(3);
        for (unsigned i = 0; i < 50; i++) {
            key_of(key, i);
            if (fab_ledger_record(i % 2 ? w2 : w1, key, buf, reply_of(buf, i), NULL) != 1)
                _exit(4);
        }
        if (write(p[1], "R", 1) != 1)
            _exit(5);
        for (;;)
            pause();
    }
    close(p[1]);
    char c = 0;
    CHECK_EQ(read(p[0], &c, 1), 1);
    close(p[0]);
    test_page tp;
    CHECK_EQ(page_map(&tp, path, lockdir), 0);
    CHECK(page_u64(&tp, TP_FILTER_BASE) != UINT64_MAX);
    CHECK_EQ(kill(pid, SIGKILL), 0);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    fab_ledger *a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    CHECK_EQ(page_u64(&tp, TP_FILTER_BASE), UINT64_MAX);
    CHECK_EQ(page_u64(&tp, TP_END), 0);
    fab_ledger *b = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    for (unsigned i = 100; i < 140; i++) {
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(i % 2 ? a : b, key, buf, reply_of(buf, i), NULL), 1);
    }
    CHECK(page_u64(&tp, TP_FILTER_BASE) != UINT64_MAX);
    CHECK(lazy_of(a) > 0 && lazy_of(b) > 0);
    for (unsigned i = 0; i < 50; i++) { /* the dead writer's records: held */
        key_of(key, i);
        CHECK_EQ(fab_ledger_record(i % 2 ? a : b, key, "\xc3", 1, NULL), 0);
    }
    page_unmap(&tp);
    fab_ledger_close(a);
    fab_ledger_close(b);
    uint64_t records, dups;
    size_t keys;
    strict_count(path, &records, &dups, &keys);
    CHECK_EQ(keys, 90);
    CHECK_EQ(dups, 0);

    /* a lock file of the earlier version (4096 bytes) is not used: the
     * writer appends under the OFD lock instead */
    path_for(path, sizeof(path), "filter-v2.fabl");
    a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    fab_ledger_close(a);
    struct stat sb;
    CHECK_EQ(stat(path, &sb), 0);
    char name[700];
    snprintf(name, sizeof(name), "%s/fabric-ledger-%llx-%llx.glibc.lock", lockdir,
             (unsigned long long)sb.st_dev, (unsigned long long)sb.st_ino);
    int fd = open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0);
    uint8_t v2[4096] = {0x89, 'F', 'A', 'B', 'L', 'C', 'K', '\n', 2};
    CHECK_EQ(write(fd, v2, sizeof(v2)), (ssize_t)sizeof(v2));
    a = open_ledger(path, FAB_LEDGER_WRITE, FAB_DUR_OS, 0, NULL, &rc, NULL);
    CHECK_EQ(rc, 0);
    fab_ledger_stats st;
    fab_ledger_get_stats(a, &st);
    CHECK_EQ(st.append_lock, 1);
    key_of(key, 1);
    CHECK_EQ(fab_ledger_record(a, key, "\xc3", 1, NULL), 1);
    fab_ledger_close(a);
    close(fd);
    unlink(name);
    lockdir_drop(lockdir);
}

int main(void)
{
    static const check_case cases[] = {
        {"round_trip", test_round_trip},
        {"torn_tail_every_offset", test_torn_tail_every_offset},
        {"exhaustive_corruption", test_exhaustive_corruption},
        {"salvage", test_salvage},
        {"salvage_stream", test_salvage_stream},
        {"fault_injection", test_fault_injection},
        {"streams", test_streams},
        {"many_handles", test_many_handles},
        {"compact_in_place", test_compact_in_place},
        {"compact_marks_replaced", test_compact_marks_replaced},
        {"shrink", test_shrink},
        {"shrink_guard", test_shrink_guard},
        {"delete", test_delete},
        {"compact_evict", test_compact_evict},
        {"checkpoint", test_checkpoint},
        {"replay_keeps_first", test_replay_keeps_first},
        {"failed_sync_invisible", test_failed_sync_invisible},
        {"bad_files", test_bad_files},
        {"group_commit", test_group_commit},
        {"index_many", test_index_many},
        {"requests", test_requests},
        {"lock_page", test_lock_page},
        {"deferred_index", test_deferred_index},
        {"deferred_reseed", test_deferred_reseed},
        {"lock_dead_while_waiting", test_lock_dead_while_waiting},
        {"reserved_tail", test_reserved_tail},
        {"fault_in_ahead", test_fault_in_ahead},
        {"replay_beside_an_append", test_replay_beside_an_append},
        {"writers_and_compactions", test_writers_and_compactions},
        {"reader_beside_appends", test_reader_beside_appends},
        {"key_filter_lazy", test_key_filter_lazy},
        {"key_filter_deletes", test_key_filter_deletes},
        {"key_filter_killed", test_key_filter_killed},
        {NULL, NULL},
    };
    if (mkdtemp(tmpdir) == NULL)
        return 1;
    int rc = check_run("ledger", cases);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        rc = 1;
    return rc;
}
