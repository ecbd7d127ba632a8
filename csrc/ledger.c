/*
 * The cassette ledger (docs/spec/ledger.md): format, replay, appends with
 * three durability modes, streams and compaction.
 *
 * Locking: l->mu guards every field below it in struct fab_ledger. It is
 * released only around fdatasync, so concurrent appends can join one sync
 * (group commit). Records become visible to lookups when they are durable
 * per the mode: l->visible_end marks the durable prefix of the file.
 */
#include "fabric/ledger.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fabric/common.h"
#include "fabric/crc32c.h"
#include "fabric/lindex.h"

static const uint8_t FILE_MAGIC[8] = {0x89, 'F', 'A', 'B', 'L', 'D', 'G', '\n'};
static const uint8_t REC_MAGIC[4] = {0xe7, 'R', 'E', 'C'};

#define SEED_FILE 0x4C444752u /* "LDGR" */
#define SEED_BODY 0x424F4459u /* "BODY" */
#define SEED_HEAD 0x48445221u /* "HDR!" */

#define MIN_MAP ((size_t)64 << 20)
#define PROGRESS_STEP ((uint64_t)16 << 20)
#define SMALL_RECORD 16384
#define NONE UINT64_MAX

/* ======================================================================== */
/* Mappings                                                                  */
/* ======================================================================== */

struct fab_lmap {
    uint8_t *base;
    size_t len;
    atomic_long refs;
};

void fab_lmap_retain(fab_lmap *m)
{
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
}

void fab_lmap_release(fab_lmap *m)
{
    if (m == NULL)
        return;
    if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) {
        munmap(m->base, m->len);
        free(m);
    }
}

/* Maps len bytes of fd (more than the file holds is fine: only the part
 * inside the file is ever touched). */
static int lmap_new(int fd, size_t len, fab_lmap **out)
{
    long page = sysconf(_SC_PAGESIZE);
    len = (len + (size_t)page - 1) & ~((size_t)page - 1);
    fab_lmap *m = malloc(sizeof(*m));
    if (m == NULL)
        return FAB_ENOMEM;
    m->base = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    if (m->base == MAP_FAILED) {
        free(m);
        return FAB_ENOMEM;
    }
    m->len = len;
    atomic_init(&m->refs, 1);
    *out = m;
    return FAB_OK;
}

/* ======================================================================== */
/* The ledger object                                                         */
/* ======================================================================== */

typedef struct skip_region {
    uint64_t start, end;
} skip_region;

struct fab_ledger {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int fd;
    int lock_fd;
    char *path;
    int mode, durability, recover;
    fab_ledger_io io;
    uint8_t header[FAB_LEDGER_HEADER_SIZE];

    fab_lmap *map;
    uint64_t end;         /* where the next record goes / end of the replayed region */
    uint64_t visible_end; /* records below are durable per the mode and visible */
    int syncing;
    /* Group commit: a leader about to sync waits briefly for as many
     * records as the previous batch held (writers that were just woken are
     * on their way back with their next record), at most half the last
     * fdatasync's duration (gather_batch). */
    pthread_cond_t lead_cond;
    int leader_waiting;
    uint64_t sync_started_records; /* l->records when the last sync began */
    uint64_t last_batch;           /* records the last sync covered */
    uint64_t last_sync_ns;
    int failed;
    int failed_errno;
    size_t n_pending;     /* indexed records not visible yet */
    fab_lindex ix;
    skip_region *skips;   /* regions skipped by salvage, in order */
    size_t n_skips, cap_skips;

    uint64_t records, duplicates, torn_cut, torn_bytes, salvage_skips, salvage_bytes;
    uint64_t open_ns;
    uint64_t syncs;       /* fdatasync calls on the ledger fd since open */
};

static void set_err(fab_ledger_error *err, int code, int sys_errno, uint64_t offset,
                    int has_offset, const char *fmt, ...)
{
    if (err == NULL)
        return;
    err->code = code;
    err->sys_errno = sys_errno;
    err->offset = offset;
    err->has_offset = has_offset;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
}

static int sys_fail(fab_ledger_error *err, int e, const char *what)
{
    set_err(err, FAB_EIO, e, 0, 0, "%s: %s", what, strerror(e));
    return FAB_EIO;
}

static uint64_t now_ns(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static ssize_t default_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    return pwrite(fd, buf, len, off);
}
static int default_fdatasync(int fd) { return fdatasync(fd); }
static int default_ftruncate(int fd, off_t len) { return ftruncate(fd, len); }

static const fab_ledger_io default_io = {default_pwrite, default_fdatasync, default_ftruncate};

/* ======================================================================== */
/* Format                                                                    */
/* ======================================================================== */

void fab_ledger_make_header(uint8_t out[FAB_LEDGER_HEADER_SIZE], uint64_t created_ns,
                            const char *creator)
{
    memset(out, 0, FAB_LEDGER_HEADER_SIZE);
    memcpy(out, FILE_MAGIC, 8);
    out[8] = FAB_LEDGER_VERSION;
    out[10] = FAB_LEDGER_HEADER_SIZE;
    fab_store_le64(out + 16, created_ns);
    if (creator == NULL)
        creator = "stream-fabric";
    size_t n = strlen(creator);
    memcpy(out + 24, creator, n < FAB_LEDGER_CREATOR_LEN ? n : FAB_LEDGER_CREATOR_LEN);
    fab_store_le32(out + 60, fab_crc32c(SEED_FILE, out, 60));
}

static size_t rec_header(uint8_t out[FAB_LEDGER_REC_HEADER], int type, const uint8_t key[32],
                         const void *prefix, size_t plen, const void *data, size_t dlen)
{
    size_t n = plen + dlen;
    memcpy(out, REC_MAGIC, 4);
    out[4] = (uint8_t)type;
    out[5] = out[6] = out[7] = 0;
    fab_store_le32(out + 8, (uint32_t)n);
    uint32_t crc = fab_crc32c(SEED_BODY, key, 32);
    crc = fab_crc32c(crc, prefix, plen);
    crc = fab_crc32c(crc, data, dlen);
    fab_store_le32(out + 12, crc);
    fab_store_le32(out + 16, fab_crc32c(SEED_HEAD, out, 16));
    return FAB_LEDGER_REC_OVERHEAD + n;
}

size_t fab_ledger_make_rec_header(uint8_t out[FAB_LEDGER_REC_HEADER], int type,
                                  const uint8_t key[32], const void *payload, size_t len)
{
    return rec_header(out, type, key, NULL, 0, payload, len);
}

/* Checks the file header. avail is how many bytes the file has. */
static int check_header(const uint8_t *h, uint64_t avail, fab_ledger_error *err)
{
    size_t m = avail < 8 ? (size_t)avail : 8;
    if (memcmp(h, FILE_MAGIC, m) != 0) {
        set_err(err, FAB_EFORMAT, 0, 0, 1, "not a cassette ledger (bad magic)");
        return FAB_EFORMAT;
    }
    if (avail < FAB_LEDGER_HEADER_SIZE) {
        set_err(err, FAB_ETRUNCATED, 0, avail, 1,
                "ledger header truncated: the file has %llu of %d header bytes",
                (unsigned long long)avail, FAB_LEDGER_HEADER_SIZE);
        return FAB_ETRUNCATED;
    }
    unsigned version = (unsigned)h[8] | ((unsigned)h[9] << 8);
    if (version > FAB_LEDGER_VERSION) {
        set_err(err, FAB_EVERSION, 0, 8, 1,
                "ledger format version %u is newer than this code reads (%d)", version,
                FAB_LEDGER_VERSION);
        if (err)
            err->version = (int)version;
        return FAB_EVERSION;
    }
    if (version == 0) {
        set_err(err, FAB_EFORMAT, 0, 8, 1, "ledger format version 0 is invalid");
        return FAB_EFORMAT;
    }
    if (fab_load_le32(h + 60) != fab_crc32c(SEED_FILE, h, 60)) {
        set_err(err, FAB_EFORMAT, 0, 60, 1, "ledger header checksum mismatch");
        return FAB_EFORMAT;
    }
    if (h[10] != FAB_LEDGER_HEADER_SIZE || h[11] != 0 || fab_load_le32(h + 12) != 0) {
        set_err(err, FAB_EFORMAT, 0, 10, 1, "ledger header has unknown size or flags");
        return FAB_EFORMAT;
    }
    return FAB_OK;
}

/* Payload length of the record whose (validated) header is at p. */
static inline size_t rec_payload_len(const uint8_t *p)
{
    return fab_load_le32(p + 8);
}

/*
 * Checks the record at off in base[0..len). Returns 1 when valid (*size
 * set), else 0; *claimed is set to the size its header claims when the
 * header alone is valid, else 0.
 */
static int rec_valid(const uint8_t *base, uint64_t len, uint64_t off, uint64_t *size,
                     uint64_t *claimed)
{
    *claimed = 0;
    if (off > len || len - off < FAB_LEDGER_REC_HEADER)
        return 0;
    const uint8_t *p = base + off;
    if (memcmp(p, REC_MAGIC, 4) != 0)
        return 0;
    if (fab_load_le32(p + 16) != fab_crc32c(SEED_HEAD, p, 16))
        return 0;
    int type = p[4];
    if (type < FAB_REC_REPLY || type > FAB_REC_STREAM_ABORT || p[5] || p[6] || p[7])
        return 0;
    uint64_t n = rec_payload_len(p);
    if (n > FAB_LEDGER_MAX_PAYLOAD)
        return 0;
    uint64_t total = FAB_LEDGER_REC_OVERHEAD + n;
    *claimed = total;
    if (len - off < total)
        return 0;
    if (fab_load_le32(p + 12) != fab_crc32c(SEED_BODY, p + FAB_LEDGER_REC_HEADER, 32 + n))
        return 0;
    /* Stream records must name an earlier BEGIN of the same key. */
    if (type != FAB_REC_REPLY) {
        size_t want = type == FAB_REC_STREAM_BEGIN ? 0
                      : type == FAB_REC_STREAM_END ? 16 : 8;
        if (type == FAB_REC_STREAM_CHUNK ? n < 8 : n != want)
            return 0;
        if (type != FAB_REC_STREAM_BEGIN) {
            uint64_t begin = fab_load_le64(p + FAB_LEDGER_REC_OVERHEAD);
            uint64_t bsize, bclaimed;
            if (begin < FAB_LEDGER_HEADER_SIZE || begin >= off ||
                off - begin < FAB_LEDGER_REC_OVERHEAD)
                return 0;
            const uint8_t *b = base + begin;
            if (memcmp(b, REC_MAGIC, 4) != 0 || b[4] != FAB_REC_STREAM_BEGIN ||
                memcmp(b + FAB_LEDGER_REC_HEADER, p + FAB_LEDGER_REC_HEADER, 32) != 0 ||
                !rec_valid(base, off, begin, &bsize, &bclaimed))
                return 0;
        }
    }
    *size = total;
    return 1;
}

/* The first offset >= from holding a valid record, or NONE. */
static uint64_t find_next_valid(const uint8_t *base, uint64_t len, uint64_t from)
{
    uint64_t size, claimed;
    while (from < len && len - from >= FAB_LEDGER_REC_OVERHEAD) {
        const uint8_t *q = memmem(base + from, (size_t)(len - from), REC_MAGIC, 4);
        if (q == NULL)
            return NONE;
        uint64_t off = (uint64_t)(q - base);
        if (rec_valid(base, len, off, &size, &claimed))
            return off;
        from = off + 1;
    }
    return NONE;
}

typedef struct scan_state {
    const uint8_t *base;
    uint64_t len;
    int recover;
    fab_ledger_record_fn fn;
    void *ctx;
    fab_ledger_progress_fn progress;
    void *progress_ctx;
    /* salvage regions are reported here when not NULL */
    int (*on_skip)(void *ctx, uint64_t start, uint64_t end);
    /* base is a file mapping: read it ahead and fill its page tables a
     * chunk at a time (one madvise per chunk instead of a page fault per
     * few pages) */
    int prefault;
} scan_state;

#define PREFAULT_CHUNK ((uint64_t)8 << 20)

/* Prefaults base[from, from + PREFAULT_CHUNK) of a file mapping (best
 * effort: errors, e.g. from kernels without MADV_POPULATE_READ, are
 * ignored and the pages fault in as they are touched). */
static void prefault(const scan_state *s, uint64_t from)
{
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t a = from & ~(page - 1);
    if (a >= s->len)
        return;
    uint64_t n = s->len - a < PREFAULT_CHUNK ? s->len - a : PREFAULT_CHUNK;
#ifdef MADV_POPULATE_READ
    (void)madvise((void *)(s->base + a), (size_t)n, MADV_POPULATE_READ);
#else
    (void)madvise((void *)(s->base + a), (size_t)n, MADV_WILLNEED);
#endif
}

/* Replays base[start..len) (see the spec's Replay section). */
static int scan(const scan_state *s, uint64_t start, fab_ledger_scan_result *res,
                fab_ledger_error *err)
{
    uint64_t off = start, size, claimed, next_progress = start + PROGRESS_STEP;
    uint64_t next_prefault = start;
    res->torn_at = NONE;
    res->corrupt_at = NONE;
    if (s->prefault && s->len > start) {
        uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), a = start & ~(page - 1);
        (void)madvise((void *)(s->base + a), (size_t)(s->len - a), MADV_SEQUENTIAL);
    }
    while (off < s->len) {
        if (s->prefault && off >= next_prefault) {
            prefault(s, off);
            next_prefault = (off & ~(PREFAULT_CHUNK - 1)) + PREFAULT_CHUNK;
        }
        if (rec_valid(s->base, s->len, off, &size, &claimed)) {
            const uint8_t *p = s->base + off;
            if (s->fn) {
                int rc = s->fn(s->ctx, off, p[4], p + FAB_LEDGER_REC_HEADER,
                               p + FAB_LEDGER_REC_OVERHEAD, (size_t)(size - FAB_LEDGER_REC_OVERHEAD));
                if (rc < 0) {
                    set_err(err, rc, 0, off, 1, "replaying the record at offset %llu: %s",
                            (unsigned long long)off, fab_strerror(rc));
                    return rc;
                }
            }
            res->records++;
            off += size;
            if (s->progress && off >= next_progress) {
                s->progress(s->progress_ctx, off, s->len);
                next_progress = off + PROGRESS_STEP;
            }
            continue;
        }
        uint64_t from = off + 1;
        if (claimed && claimed <= s->len - off)
            from = off + claimed;
        else if (claimed)
            from = s->len;
        uint64_t next = find_next_valid(s->base, s->len, from);
        if (next == NONE) {
            res->torn_at = off;
            break;
        }
        if (s->recover != FAB_RECOVER_SALVAGE) {
            res->corrupt_at = off;
            res->valid_end = off;
            set_err(err, FAB_ECORRUPT, 0, off, 1,
                    "ledger corrupt at offset %llu: a bad record is followed by valid "
                    "records (open with recover=\"salvage\" to skip it)",
                    (unsigned long long)off);
            return FAB_ECORRUPT;
        }
        if (res->corrupt_at == NONE)
            res->corrupt_at = off;
        res->salvage_skips++;
        res->salvage_bytes += next - off;
        if (s->on_skip) {
            int rc = s->on_skip(s->ctx, off, next);
            if (rc < 0) {
                set_err(err, rc, 0, off, 1, "salvaging: %s", fab_strerror(rc));
                return rc;
            }
        }
        off = next;
    }
    res->valid_end = res->torn_at != NONE ? res->torn_at : off;
    return FAB_OK;
}

int fab_ledger_scan_mem(const uint8_t *data, size_t len, int recover, fab_ledger_record_fn fn,
                        void *ctx, fab_ledger_scan_result *res, fab_ledger_error *err)
{
    memset(res, 0, sizeof(*res));
    res->torn_at = res->corrupt_at = NONE;
    if (err)
        memset(err, 0, sizeof(*err));
    int rc = check_header(data, len, err);
    if (rc != FAB_OK)
        return rc;
    scan_state s = {data, len, recover, fn, ctx, NULL, NULL, NULL, 0};
    return scan(&s, FAB_LEDGER_HEADER_SIZE, res, err);
}

/* ======================================================================== */
/* Replay into the index                                                     */
/* ======================================================================== */

static int key_eq(void *ctx, uint64_t value, const uint8_t key[32])
{
    fab_ledger *l = ctx;
    return memcmp(l->map->base + value + FAB_LEDGER_REC_HEADER, key, 32) == 0;
}

/*
 * Replay state. Inserting a key into a large index is a cache miss on a
 * random slot, which dominates replay of small records; the records ahead
 * are already in the mapping, so their keys are hashed and their slots
 * prefetched PF_DEPTH records in advance (following the unvalidated length
 * fields: a wrong guess only wastes a prefetch, since the slot address is
 * masked into the table). The index is also sized once from an early
 * estimate instead of doubling its way up, rehashing every key each time.
 */
#define PF_DEPTH 8

typedef struct replay_ctx {
    fab_ledger *l;
    const uint8_t *base;
    uint64_t len, start;
    uint64_t pf;                 /* next offset to hash and prefetch */
    uint64_t ring_off[PF_DEPTH]; /* offsets hashed ahead, in order */
    uint64_t ring_hash[PF_DEPTH];
    unsigned head, n;
    uint64_t seen;               /* records replayed */
    int sized;                   /* the size estimate was made */
} replay_ctx;

/* The index hash of the key of the record at off, from the ring when it
 * was hashed ahead; then refills the ring. */
static uint64_t replay_hash(replay_ctx *r, uint64_t off, const uint8_t *key)
{
    fab_lindex *ix = &r->l->ix;
    uint64_t hash = 0;
    while (r->n && r->ring_off[r->head] <= off) {
        if (r->ring_off[r->head] == off)
            hash = r->ring_hash[r->head];
        r->head = (r->head + 1) % PF_DEPTH;
        r->n--;
    }
    if (hash == 0)
        hash = fab_lindex_hash(ix, key);
    if (r->n == 0 || r->pf <= off) { /* out of step (after a skipped region) */
        r->n = 0;
        r->pf = off + FAB_LEDGER_REC_OVERHEAD + rec_payload_len(r->base + off);
    }
    while (r->n < PF_DEPTH && r->pf < r->len && r->len - r->pf >= FAB_LEDGER_REC_OVERHEAD) {
        const uint8_t *p = r->base + r->pf;
        uint64_t h = fab_lindex_hash(ix, p + FAB_LEDGER_REC_HEADER);
        if (ix->slots)
            __builtin_prefetch(&ix->slots[(size_t)h & ix->mask], 1);
        unsigned tail = (r->head + r->n) % PF_DEPTH;
        r->ring_off[tail] = r->pf;
        r->ring_hash[tail] = h;
        r->n++;
        r->pf += FAB_LEDGER_REC_OVERHEAD + (uint64_t)rec_payload_len(p);
    }
    return hash;
}

/* Once a sixteenth of the bytes are replayed, sizes the index for the
 * records the rest of the file will hold at the same density. Best effort:
 * a failure leaves the index to grow as it goes. */
static void replay_estimate(replay_ctx *r, uint64_t off)
{
    uint64_t done = off - r->start, rest = r->len - off;
    if (r->sized || r->seen < 1024 || done < (r->len - r->start) / 16)
        return;
    r->sized = 1;
    double more = (double)r->seen * (double)rest / (double)done;
    double cap = (double)rest / FAB_LEDGER_REC_OVERHEAD;
    if (more > cap)
        more = cap;
    size_t want = r->l->ix.count + (size_t)(more * 1.02) + 16;
    (void)fab_lindex_reserve(&r->l->ix, want);
}

static int replay_record(void *ctx, uint64_t off, int type, const uint8_t *key,
                         const uint8_t *payload, size_t len)
{
    FAB_UNUSED(payload);
    FAB_UNUSED(len);
    replay_ctx *r = ctx;
    fab_ledger *l = r->l;
    r->seen++;
    if (!r->sized)
        replay_estimate(r, off);
    uint64_t hash = replay_hash(r, off, key);
    if (type != FAB_REC_REPLY && type != FAB_REC_STREAM_END)
        return FAB_OK;
    int rc = fab_lindex_insert(&l->ix, key, hash, off, NULL);
    if (rc < 0)
        return rc;
    if (rc == 0)
        l->duplicates++;
    return FAB_OK;
}

static int replay_skip(void *ctx, uint64_t start, uint64_t end)
{
    fab_ledger *l = ((replay_ctx *)ctx)->l;
    if (l->n_skips == l->cap_skips) {
        size_t cap = l->cap_skips ? l->cap_skips * 2 : 8;
        skip_region *r = realloc(l->skips, cap * sizeof(*r));
        if (r == NULL)
            return FAB_ENOMEM;
        l->skips = r;
        l->cap_skips = cap;
    }
    l->skips[l->n_skips].start = start;
    l->skips[l->n_skips].end = end;
    l->n_skips++;
    return FAB_OK;
}

/* Makes the mapping cover at least need bytes. Under the lock. */
static int ensure_map(fab_ledger *l, uint64_t need, fab_ledger_error *err)
{
    if (l->map && need <= l->map->len)
        return FAB_OK;
    size_t len = MIN_MAP;
    while (len < need * 2) {
        if (len > SIZE_MAX / 2) {
            set_err(err, FAB_EOVERFLOW, 0, 0, 0, "ledger too large to map");
            return FAB_EOVERFLOW;
        }
        len *= 2;
    }
    fab_lmap *m;
    int rc = lmap_new(l->fd, len, &m);
    if (rc != FAB_OK)
        return sys_fail(err, errno ? errno : ENOMEM, "mapping the ledger");
    fab_lmap_release(l->map);
    l->map = m;
    return FAB_OK;
}

/* Replays [l->end, size) into the index. Under the lock (or before sharing). */
static int replay(fab_ledger *l, uint64_t size, fab_ledger_progress_fn progress, void *pctx,
                  fab_ledger_scan_result *res, fab_ledger_error *err)
{
    memset(res, 0, sizeof(*res));
    int rc = ensure_map(l, size, err);
    if (rc != FAB_OK)
        return rc;
    replay_ctx r = {.l = l, .base = l->map->base, .len = size, .start = l->end};
    scan_state s = {l->map->base, size, l->recover, replay_record, &r, progress, pctx, replay_skip};
    s.prefault = 1;
    rc = scan(&s, l->end, res, err);
    if (rc != FAB_OK)
        return rc;
    l->records += res->records;
    l->salvage_skips += res->salvage_skips;
    l->salvage_bytes += res->salvage_bytes;
    l->end = l->visible_end = res->valid_end;
    l->torn_bytes = res->torn_at != NONE ? size - res->torn_at : 0;
    return FAB_OK;
}

/* ======================================================================== */
/* Open and close                                                            */
/* ======================================================================== */

static char *path_with(const char *path, const char *suffix)
{
    size_t a = strlen(path), b = strlen(suffix);
    char *s = malloc(a + b + 1);
    if (s) {
        memcpy(s, path, a);
        memcpy(s + a, suffix, b + 1);
    }
    return s;
}

static int fsync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (copy == NULL)
        return ENOMEM;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return errno;
    int rc = fsync(fd) < 0 ? errno : 0;
    close(fd);
    return rc;
}

static int write_all(const fab_ledger_io *io, int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t w = io->pwrite(fd, p, len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno ? errno : EIO;
        }
        if (w == 0)
            return ENOSPC;
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* Takes the writer lock PATH.lock and records our pid in it. */
static int take_lock(fab_ledger *l, fab_ledger_error *err)
{
    char *lpath = path_with(l->path, ".lock");
    if (lpath == NULL)
        return FAB_ENOMEM;
    int fd = open(lpath, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    int e = errno;
    free(lpath);
    if (fd < 0)
        return sys_fail(err, e, "opening the ledger's lock file");
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        e = errno;
        if (e != EWOULDBLOCK) {
            close(fd);
            return sys_fail(err, e, "locking the ledger");
        }
        /* The holder writes its pid right after locking; give it a moment. */
        long pid = 0;
        for (int tries = 0; tries < 50 && pid == 0; tries++) {
            char buf[32] = {0};
            ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
            if (n > 0)
                pid = strtol(buf, NULL, 10);
            if (pid == 0) {
                struct timespec ts = {0, 2000000};
                nanosleep(&ts, NULL);
            }
        }
        close(fd);
        set_err(err, FAB_ELOCKED, EWOULDBLOCK, 0, 0,
                "the ledger is open for writing by another process (pid %ld)", pid);
        if (err)
            err->pid = pid;
        return FAB_ELOCKED;
    }
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
        e = errno;
        close(fd);
        return sys_fail(err, e, "writing the ledger's lock file");
    }
    l->lock_fd = fd;
    return FAB_OK;
}

/* Creates a new ledger at l->path atomically (spec: File header). */
static int create_ledger(fab_ledger *l, const fab_ledger_options *opt, int replace,
                         fab_ledger_error *err)
{
    char suffix[48];
    snprintf(suffix, sizeof(suffix), ".tmp.%ld", (long)getpid());
    char *tmp = path_with(l->path, suffix);
    if (tmp == NULL)
        return FAB_ENOMEM;
    int rc = FAB_OK, e = 0;
    const char *what = "creating the ledger";
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        e = errno;
        goto done;
    }
    uint8_t h[FAB_LEDGER_HEADER_SIZE];
    fab_ledger_make_header(h, opt->created_ns ? opt->created_ns : now_ns(CLOCK_REALTIME),
                           opt->creator);
    what = "writing the ledger header";
    if ((e = write_all(&l->io, fd, h, sizeof(h), 0)) != 0)
        goto done;
    what = "syncing the new ledger";
    if (l->io.fdatasync(fd) < 0) {
        e = errno;
        goto done;
    }
    what = "naming the new ledger";
    if (replace ? rename(tmp, l->path) < 0 : link(tmp, l->path) < 0) {
        e = errno;
        goto done;
    }
    what = "syncing the ledger's directory";
    e = fsync_dir_of(l->path);
done:
    if (fd >= 0)
        close(fd);
    unlink(tmp); /* after link(), or a leftover after a failure */
    free(tmp);
    if (e)
        rc = sys_fail(err, e, what);
    return rc;
}

int fab_ledger_open(fab_ledger **out, const char *path, const fab_ledger_options *opt,
                    fab_ledger_error *err)
{
    static const fab_ledger_options defaults = {0};
    if (opt == NULL)
        opt = &defaults;
    if (err)
        memset(err, 0, sizeof(*err));
    *out = NULL;
    uint64_t t0 = now_ns(CLOCK_MONOTONIC);
    if ((opt->mode != FAB_LEDGER_READ && opt->mode != FAB_LEDGER_WRITE) ||
        opt->durability < FAB_DUR_OS || opt->durability > FAB_DUR_GROUP ||
        (opt->recover != FAB_RECOVER_STRICT && opt->recover != FAB_RECOVER_SALVAGE)) {
        set_err(err, FAB_EINVAL, 0, 0, 0, "invalid ledger options");
        return FAB_EINVAL;
    }
    fab_ledger *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return FAB_ENOMEM;
    int rc = FAB_OK;
    l->fd = l->lock_fd = -1;
    l->mode = opt->mode;
    l->durability = opt->durability;
    l->recover = opt->recover;
    l->io = opt->io ? *opt->io : default_io;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cond, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->lead_cond, &ca);
    pthread_condattr_destroy(&ca);
    fab_lindex_init(&l->ix, key_eq, l);
    if ((l->path = strdup(path)) == NULL) {
        rc = FAB_ENOMEM;
        goto fail;
    }
    int writer = opt->mode == FAB_LEDGER_WRITE;
    if (writer && (rc = take_lock(l, err)) != FAB_OK)
        goto fail;
    for (int attempt = 0;; attempt++) {
        l->fd = open(path, (writer ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        if (l->fd < 0) {
            if (errno == ENOENT && writer && attempt == 0) {
                if ((rc = create_ledger(l, opt, 0, err)) != FAB_OK)
                    goto fail;
                continue;
            }
            rc = sys_fail(err, errno, writer ? "opening the ledger for writing"
                                             : "opening the ledger");
            goto fail;
        }
        struct stat sb;
        if (fstat(l->fd, &sb) < 0) {
            rc = sys_fail(err, errno, "examining the ledger");
            goto fail;
        }
        if (S_ISDIR(sb.st_mode)) {
            rc = sys_fail(err, EISDIR, "opening the ledger");
            goto fail;
        }
        if (!S_ISREG(sb.st_mode)) {
            set_err(err, FAB_EFORMAT, 0, 0, 1, "not a cassette ledger (not a regular file)");
            rc = FAB_EFORMAT;
            goto fail;
        }
        if (sb.st_size == 0 && writer && attempt == 0) {
            /* An empty file (made by mkstemp, touch...) becomes a new ledger. */
            close(l->fd);
            l->fd = -1;
            if ((rc = create_ledger(l, opt, 1, err)) != FAB_OK)
                goto fail;
            continue;
        }
        ssize_t got = pread(l->fd, l->header, sizeof(l->header), 0);
        if (got < 0) {
            rc = sys_fail(err, errno, "reading the ledger header");
            goto fail;
        }
        if (got < (ssize_t)sizeof(l->header) && (uint64_t)got < (uint64_t)sb.st_size)
            got = 0; /* a file changing under us: report as truncated below */
        if ((rc = check_header(l->header, (uint64_t)got, err)) != FAB_OK)
            goto fail;
        fab_ledger_scan_result res;
        l->end = FAB_LEDGER_HEADER_SIZE;
        if ((rc = replay(l, (uint64_t)sb.st_size, opt->progress, opt->progress_ctx, &res, err)) != FAB_OK)
            goto fail;
        if (res.torn_at != NONE && writer) {
            if (l->io.ftruncate(l->fd, (off_t)res.torn_at) < 0 || l->io.fdatasync(l->fd) < 0) {
                rc = sys_fail(err, errno, "cutting the ledger's torn tail");
                goto fail;
            }
            l->torn_cut = 1;
        }
        if (opt->progress)
            opt->progress(opt->progress_ctx, (uint64_t)sb.st_size, (uint64_t)sb.st_size);
        break;
    }
    l->open_ns = now_ns(CLOCK_MONOTONIC) - t0;
    *out = l;
    return FAB_OK;
fail:
    if (err && err->code == 0)
        set_err(err, rc, 0, 0, 0, "%s", fab_strerror(rc));
    fab_ledger_close(l);
    return rc;
}

void fab_ledger_close(fab_ledger *l)
{
    if (l == NULL)
        return;
    if (l->fd >= 0)
        close(l->fd);
    if (l->lock_fd >= 0)
        close(l->lock_fd); /* releases the flock */
    fab_lmap_release(l->map);
    fab_lindex_destroy(&l->ix);
    free(l->skips);
    free(l->path);
    pthread_cond_destroy(&l->cond);
    pthread_cond_destroy(&l->lead_cond);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* ======================================================================== */
/* Appends                                                                   */
/* ======================================================================== */

static int refuse(fab_ledger *l, fab_ledger_error *err)
{
    if (l->mode != FAB_LEDGER_WRITE) {
        set_err(err, FAB_ESTATE, 0, 0, 0, "the cassette is open read-only");
        return FAB_ESTATE;
    }
    if (l->failed) {
        set_err(err, FAB_ESTATE, l->failed_errno ? l->failed_errno : EIO, 0, 0,
                "appends refused after an earlier write or fdatasync failure (%s); "
                "reopen the cassette",
                strerror(l->failed_errno ? l->failed_errno : EIO));
        return FAB_ESTATE;
    }
    return FAB_OK;
}

/*
 * Writes one record at l->end. Under the lock. On failure the file is cut
 * back to where it was; if even that fails the ledger refuses appends.
 */
static int append_locked(fab_ledger *l, int type, const uint8_t key[32], const void *prefix,
                         size_t plen, const void *data, size_t dlen, uint64_t *off_out,
                         fab_ledger_error *err)
{
    int rc = refuse(l, err);
    if (rc != FAB_OK)
        return rc;
    if (dlen > FAB_LEDGER_MAX_PAYLOAD - plen) {
        set_err(err, FAB_ERANGE, 0, 0, 0, "a reply of %zu bytes is larger than the ledger's "
                "limit of %zu bytes", dlen, (size_t)FAB_LEDGER_MAX_PAYLOAD - plen);
        return FAB_ERANGE;
    }
    uint64_t off = l->end;
    uint64_t total = FAB_LEDGER_REC_OVERHEAD + plen + dlen;
    if ((rc = ensure_map(l, off + total, err)) != FAB_OK)
        return rc;
    uint8_t small[SMALL_RECORD];
    uint8_t *h = small;
    rec_header(h, type, key, prefix, plen, data, dlen);
    memcpy(h + FAB_LEDGER_REC_HEADER, key, 32);
    if (plen)
        memcpy(h + FAB_LEDGER_REC_OVERHEAD, prefix, plen);
    int e;
    if (total <= SMALL_RECORD) {
        if (dlen)
            memcpy(h + FAB_LEDGER_REC_OVERHEAD + plen, data, dlen);
        e = write_all(&l->io, l->fd, h, (size_t)total, off);
    } else {
        e = write_all(&l->io, l->fd, h, FAB_LEDGER_REC_OVERHEAD + plen, off);
        if (e == 0)
            e = write_all(&l->io, l->fd, data, dlen, off + FAB_LEDGER_REC_OVERHEAD + plen);
    }
    if (e != 0) {
        if (l->io.ftruncate(l->fd, (off_t)off) < 0) {
            l->failed = 1;
            l->failed_errno = e;
        }
        return sys_fail(err, e, "appending to the ledger");
    }
    l->end = off + total;
    l->records++;
    if (l->leader_waiting)
        pthread_cond_signal(&l->lead_cond);
    if (l->durability == FAB_DUR_OS)
        l->visible_end = l->end;
    *off_out = off;
    return FAB_OK;
}

/*
 * Group commit leader, before its fdatasync: when the previous batch held
 * more than one record and the previous fdatasync took at least 50 us (a
 * real flush), waits (lock released) until as many records are written or
 * half the previous fdatasync's time (at most 1 ms) has passed.
 * Without it, the first writer back after a sync would sync alone while
 * the others queue behind it, halving the batch. Under the lock.
 */
static void gather_batch(fab_ledger *l)
{
    if (l->last_batch <= 1 || l->last_sync_ns < 50000)
        return; /* one writer, or a sync too cheap (tmpfs, cache) to be worth waiting */
    uint64_t wait = l->last_sync_ns / 2;
    if (wait > 1000000)
        wait = 1000000;
    uint64_t deadline = now_ns(CLOCK_MONOTONIC) + wait;
    struct timespec ts = {(time_t)(deadline / 1000000000u), (long)(deadline % 1000000000u)};
    l->leader_waiting = 1;
    while (!l->failed && l->records - l->sync_started_records < l->last_batch) {
        if (pthread_cond_timedwait(&l->lead_cond, &l->mu, &ts) == ETIMEDOUT)
            break;
    }
    l->leader_waiting = 0;
}

/* Waits until the file is durable up to upto (per the mode). Under the lock,
 * released during fdatasync. */
static int make_durable(fab_ledger *l, uint64_t upto, fab_ledger_error *err)
{
    if (l->durability == FAB_DUR_OS) {
        if (l->visible_end < upto)
            l->visible_end = upto;
        return FAB_OK;
    }
    while (l->visible_end < upto) {
        if (l->failed)
            return refuse(l, err);
        if (l->durability == FAB_DUR_GROUP && l->syncing) {
            pthread_cond_wait(&l->cond, &l->mu);
            continue;
        }
        l->syncing++;
        if (l->durability == FAB_DUR_GROUP)
            gather_batch(l);
        uint64_t target = l->end;
        uint64_t batch = l->records - l->sync_started_records;
        l->sync_started_records = l->records;
        l->syncs++;
        pthread_mutex_unlock(&l->mu);
        uint64_t t0 = now_ns(CLOCK_MONOTONIC);
        int rc = l->io.fdatasync(l->fd);
        int e = errno;
        uint64_t t1 = now_ns(CLOCK_MONOTONIC);
        pthread_mutex_lock(&l->mu);
        l->syncing--;
        l->last_batch = batch;
        l->last_sync_ns = t1 - t0;
        if (rc < 0) {
            l->failed = 1;
            l->failed_errno = e;
            pthread_cond_broadcast(&l->cond);
            return sys_fail(err, e, "fdatasync of the ledger");
        }
        if (l->visible_end < target)
            l->visible_end = target;
        pthread_cond_broadcast(&l->cond);
    }
    return FAB_OK;
}

/* Commits key at the record just written at off (REPLY or END). */
static int commit_locked(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t off,
                         fab_ledger_error *err)
{
    int ins = fab_lindex_insert(&l->ix, key, hash, off, NULL);
    FAB_ASSERT(ins == 1); /* room was reserved and the key was absent */
    FAB_UNUSED(ins);
    if (l->durability == FAB_DUR_OS)
        return FAB_OK;
    l->n_pending++;
    int rc = make_durable(l, off + 1, err);
    if (rc == FAB_OK)
        l->n_pending--;
    return rc;
}

/* When key is already indexed: 1 (held, waiting for it to be durable), or
 * an error when that durability failed; 0 when absent. */
static int held_locked(fab_ledger *l, const uint8_t key[32], uint64_t hash,
                       fab_ledger_error *err)
{
    uint64_t off;
    if (!fab_lindex_find(&l->ix, key, hash, &off))
        return 0;
    int rc = make_durable(l, off + 1, err);
    return rc < 0 ? rc : 1;
}

int fab_ledger_record(fab_ledger *l, const uint8_t key[32], const void *data, size_t len,
                      fab_ledger_error *err)
{
    pthread_mutex_lock(&l->mu);
    uint64_t hash = fab_lindex_hash(&l->ix, key), off;
    int rc = refuse(l, err);
    if (rc == FAB_OK)
        rc = held_locked(l, key, hash, err);
    if (rc != 0) { /* held (1: nothing to write) or an error */
        rc = rc == 1 ? 0 : rc;
        goto out;
    }
    if ((rc = fab_lindex_reserve(&l->ix, l->ix.count + 1)) != FAB_OK) {
        set_err(err, rc, 0, 0, 0, "growing the ledger index: %s", fab_strerror(rc));
        goto out;
    }
    if ((rc = append_locked(l, FAB_REC_REPLY, key, NULL, 0, data, len, &off, err)) != FAB_OK)
        goto out;
    rc = commit_locked(l, key, hash, off, err);
    if (rc == FAB_OK)
        rc = 1;
out:
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int fab_ledger_sync(fab_ledger *l, fab_ledger_error *err)
{
    pthread_mutex_lock(&l->mu);
    int rc = refuse(l, err);
    if (rc == FAB_OK) {
        l->syncs++;
        if (l->io.fdatasync(l->fd) < 0) {
            l->failed = 1;
            l->failed_errno = errno;
            rc = sys_fail(err, l->failed_errno, "fdatasync of the ledger");
        }
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

/* ======================================================================== */
/* Streams                                                                   */
/* ======================================================================== */

int fab_ledger_stream_begin(fab_ledger *l, const uint8_t key[32], uint64_t *begin,
                            fab_ledger_error *err)
{
    pthread_mutex_lock(&l->mu);
    uint64_t hash = fab_lindex_hash(&l->ix, key);
    int rc = refuse(l, err);
    if (rc == FAB_OK)
        rc = held_locked(l, key, hash, err);
    if (rc != 0) {
        rc = rc == 1 ? 0 : rc;
        goto out;
    }
    rc = append_locked(l, FAB_REC_STREAM_BEGIN, key, NULL, 0, NULL, 0, begin, err);
    if (rc == FAB_OK)
        rc = 1;
out:
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int fab_ledger_stream_append(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                             const void *data, size_t len, fab_ledger_error *err)
{
    uint8_t prefix[8];
    fab_store_le64(prefix, begin);
    uint64_t off;
    pthread_mutex_lock(&l->mu);
    int rc = append_locked(l, FAB_REC_STREAM_CHUNK, key, prefix, 8, data, len, &off, err);
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int fab_ledger_stream_abort(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                            fab_ledger_error *err)
{
    uint8_t prefix[8];
    fab_store_le64(prefix, begin);
    uint64_t off;
    pthread_mutex_lock(&l->mu);
    int rc = append_locked(l, FAB_REC_STREAM_ABORT, key, prefix, 8, NULL, 0, &off, err);
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int fab_ledger_stream_end(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                          uint64_t count, fab_ledger_error *err)
{
    uint8_t prefix[16];
    fab_store_le64(prefix, begin);
    fab_store_le64(prefix + 8, count);
    uint64_t off;
    pthread_mutex_lock(&l->mu);
    uint64_t hash = fab_lindex_hash(&l->ix, key), existing;
    int rc = refuse(l, err);
    if (rc != FAB_OK)
        goto out;
    if (fab_lindex_find(&l->ix, key, hash, &existing)) {
        /* Another record committed the key first: this stream gives way. */
        rc = append_locked(l, FAB_REC_STREAM_ABORT, key, prefix, 8, NULL, 0, &off, err);
        goto out;
    }
    if ((rc = fab_lindex_reserve(&l->ix, l->ix.count + 1)) != FAB_OK) {
        set_err(err, rc, 0, 0, 0, "growing the ledger index: %s", fab_strerror(rc));
        goto out;
    }
    if ((rc = append_locked(l, FAB_REC_STREAM_END, key, prefix, 16, NULL, 0, &off, err)) != FAB_OK)
        goto out;
    rc = commit_locked(l, key, hash, off, err);
    if (rc == FAB_OK)
        rc = 1;
out:
    pthread_mutex_unlock(&l->mu);
    return rc;
}

/* ======================================================================== */
/* Reading                                                                   */
/* ======================================================================== */

static void fill_ref(fab_ledger *l, uint64_t off, int want_map, fab_ledger_ref *ref)
{
    const uint8_t *p = l->map->base + off;
    ref->offset = off;
    ref->type = p[4];
    if (ref->type == FAB_REC_REPLY) {
        ref->data = p + FAB_LEDGER_REC_OVERHEAD;
        ref->len = rec_payload_len(p);
    } else {
        ref->data = p + FAB_LEDGER_REC_OVERHEAD;
        ref->len = 0;
    }
    ref->map = NULL;
    if (want_map) {
        fab_lmap_retain(l->map);
        ref->map = l->map;
    }
}

int fab_ledger_lookup(fab_ledger *l, const uint8_t key[32], int want_map, fab_ledger_ref *ref)
{
    pthread_mutex_lock(&l->mu);
    uint64_t off;
    int found = fab_lindex_find(&l->ix, key, fab_lindex_hash(&l->ix, key), &off) &&
                off < l->visible_end;
    if (found)
        fill_ref(l, off, want_map, ref);
    pthread_mutex_unlock(&l->mu);
    return found;
}

size_t fab_ledger_count(fab_ledger *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = l->ix.count - l->n_pending;
    pthread_mutex_unlock(&l->mu);
    return n;
}

/* Moves pos past a salvage-skipped region that starts there. Under the lock. */
static uint64_t skip_bad(const fab_ledger *l, uint64_t pos)
{
    for (size_t i = 0; i < l->n_skips; i++)
        if (l->skips[i].start == pos)
            return l->skips[i].end;
    return pos;
}

/* The next record at or after *pos below visible_end; 1 or 0 at the end. */
static int next_record(fab_ledger *l, uint64_t *pos, const uint8_t **rec, uint64_t *size)
{
    if (*pos < FAB_LEDGER_HEADER_SIZE)
        *pos = FAB_LEDGER_HEADER_SIZE;
    if (l->n_skips)
        *pos = skip_bad(l, *pos);
    if (*pos >= l->visible_end)
        return 0;
    const uint8_t *p = l->map->base + *pos;
    *rec = p;
    *size = FAB_LEDGER_REC_OVERHEAD + rec_payload_len(p);
    return 1;
}

int fab_ledger_next(fab_ledger *l, uint64_t *pos, uint8_t key[32], int want_map,
                    fab_ledger_ref *ref)
{
    int rc = 0;
    pthread_mutex_lock(&l->mu);
    const uint8_t *p;
    uint64_t size;
    while (next_record(l, pos, &p, &size)) {
        uint64_t off = *pos, at;
        *pos += size;
        if (p[4] != FAB_REC_REPLY && p[4] != FAB_REC_STREAM_END)
            continue;
        const uint8_t *k = p + FAB_LEDGER_REC_HEADER;
        if (fab_lindex_find(&l->ix, k, fab_lindex_hash(&l->ix, k), &at) && at == off) {
            memcpy(key, k, 32);
            fill_ref(l, off, want_map, ref);
            rc = 1;
            break;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int fab_ledger_stream_open(fab_ledger *l, const uint8_t key[32], fab_ledger_cursor *c)
{
    fab_ledger_ref ref;
    if (!fab_ledger_lookup(l, key, 0, &ref))
        return FAB_ENOTFOUND;
    if (ref.type != FAB_REC_STREAM_END)
        return FAB_ETYPE;
    const uint8_t *payload = ref.data;
    c->begin = fab_load_le64(payload);
    c->count = fab_load_le64(payload + 8);
    c->end = ref.offset;
    c->pos = c->begin + FAB_LEDGER_REC_OVERHEAD;
    c->seen = 0;
    return FAB_OK;
}

int fab_ledger_stream_next(fab_ledger *l, fab_ledger_cursor *c, int want_map,
                           fab_ledger_ref *item)
{
    int rc = 0;
    pthread_mutex_lock(&l->mu);
    const uint8_t *p;
    uint64_t size;
    while (c->pos < c->end && next_record(l, &c->pos, &p, &size)) {
        uint64_t off = c->pos;
        c->pos += size;
        if (p[4] != FAB_REC_STREAM_CHUNK ||
            fab_load_le64(p + FAB_LEDGER_REC_OVERHEAD) != c->begin)
            continue;
        fill_ref(l, off, want_map, item);
        item->data = p + FAB_LEDGER_REC_OVERHEAD + 8;
        item->len = (size_t)(size - FAB_LEDGER_REC_OVERHEAD - 8);
        c->seen++;
        rc = 1;
        break;
    }
    if (rc == 0 && c->seen != c->count)
        rc = FAB_ECORRUPT;
    pthread_mutex_unlock(&l->mu);
    return rc;
}

void fab_ledger_get_stats(fab_ledger *l, fab_ledger_stats *st)
{
    memset(st, 0, sizeof(*st));
    pthread_mutex_lock(&l->mu);
    st->records = l->records;
    st->keys = l->ix.count - l->n_pending;
    st->bytes = l->end;
    st->duplicates = l->duplicates;
    st->torn_tails_cut = l->torn_cut;
    st->torn_bytes = l->torn_bytes;
    st->salvage_skips = l->salvage_skips;
    st->salvage_bytes = l->salvage_bytes;
    st->open_ns = l->open_ns;
    st->index_bytes = fab_lindex_memory(&l->ix);
    st->syncs = l->syncs;
    st->created_ns = fab_load_le64(l->header + 16);
    st->version = l->header[8] | (l->header[9] << 8);
    st->failed = l->failed;
    memcpy(st->creator, l->header + 24, FAB_LEDGER_CREATOR_LEN);
    pthread_mutex_unlock(&l->mu);
}

int fab_ledger_refresh(fab_ledger *l, fab_ledger_error *err)
{
    if (l->mode == FAB_LEDGER_WRITE)
        return 0;
    pthread_mutex_lock(&l->mu);
    int rc;
    struct stat sb;
    if (fstat(l->fd, &sb) < 0) {
        rc = sys_fail(err, errno, "examining the ledger");
        goto out;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size <= l->end) {
        rc = 0;
        goto out;
    }
    uint64_t before = l->records;
    fab_ledger_scan_result res;
    rc = replay(l, size, NULL, NULL, &res, err);
    if (rc == FAB_OK)
        rc = (int)(l->records - before > INT32_MAX ? INT32_MAX : l->records - before);
out:
    pthread_mutex_unlock(&l->mu);
    return rc;
}

/* ======================================================================== */
/* Compaction                                                                */
/* ======================================================================== */

typedef struct out_file {
    const fab_ledger_io *io;
    int fd;
    uint64_t off;  /* file offset of buf[0] */
    uint8_t *buf;
    size_t used, cap;
    int e;         /* first errno */
} out_file;

static void out_flush(out_file *o)
{
    if (o->e == 0 && o->used)
        o->e = write_all(o->io, o->fd, o->buf, o->used, o->off);
    o->off += o->used;
    o->used = 0;
}

static void out_write(out_file *o, const void *data, size_t len)
{
    if (len == 0)
        return;
    if (len >= o->cap) {
        out_flush(o);
        if (o->e == 0)
            o->e = write_all(o->io, o->fd, data, len, o->off);
        o->off += len;
        return;
    }
    if (o->used + len > o->cap)
        out_flush(o);
    memcpy(o->buf + o->used, data, len);
    o->used += len;
}

static uint64_t out_pos(const out_file *o)
{
    return o->off + o->used;
}

static void out_record(out_file *o, int type, const uint8_t key[32], const void *prefix,
                       size_t plen, const void *data, size_t dlen)
{
    uint8_t h[FAB_LEDGER_REC_OVERHEAD];
    rec_header(h, type, key, prefix, plen, data, dlen);
    memcpy(h + FAB_LEDGER_REC_HEADER, key, 32);
    out_write(o, h, sizeof(h));
    out_write(o, prefix, plen);
    out_write(o, data, dlen);
}

/* Writes every committed key, in ledger order, to o. Under the lock. */
static void compact_into(fab_ledger *l, out_file *o)
{
    out_write(o, l->header, FAB_LEDGER_HEADER_SIZE);
    uint64_t pos = 0, size, at;
    const uint8_t *p;
    while (o->e == 0 && next_record(l, &pos, &p, &size)) {
        uint64_t off = pos;
        pos += size;
        if (p[4] != FAB_REC_REPLY && p[4] != FAB_REC_STREAM_END)
            continue;
        const uint8_t *k = p + FAB_LEDGER_REC_HEADER;
        if (!fab_lindex_find(&l->ix, k, fab_lindex_hash(&l->ix, k), &at) || at != off)
            continue;
        if (p[4] == FAB_REC_REPLY) {
            out_write(o, p, (size_t)size); /* a REPLY holds no offsets: copy verbatim */
            continue;
        }
        /* A stream: BEGIN, its chunks with the new BEGIN offset, END. */
        uint64_t begin = fab_load_le64(p + FAB_LEDGER_REC_OVERHEAD);
        uint64_t count = fab_load_le64(p + FAB_LEDGER_REC_OVERHEAD + 8);
        uint8_t prefix[16];
        fab_store_le64(prefix, out_pos(o));
        fab_store_le64(prefix + 8, count);
        out_record(o, FAB_REC_STREAM_BEGIN, k, NULL, 0, NULL, 0);
        uint64_t cpos = begin + FAB_LEDGER_REC_OVERHEAD, csize;
        const uint8_t *c;
        while (cpos < off && next_record(l, &cpos, &c, &csize)) {
            uint64_t here = cpos;
            cpos += csize;
            FAB_UNUSED(here);
            if (c[4] != FAB_REC_STREAM_CHUNK || fab_load_le64(c + FAB_LEDGER_REC_OVERHEAD) != begin)
                continue;
            out_record(o, FAB_REC_STREAM_CHUNK, k, prefix, 8, c + FAB_LEDGER_REC_OVERHEAD + 8,
                       (size_t)(csize - FAB_LEDGER_REC_OVERHEAD - 8));
        }
        out_record(o, FAB_REC_STREAM_END, k, prefix, 16, NULL, 0);
    }
    out_flush(o);
}

int fab_ledger_compact(fab_ledger *l, const char *dest, fab_ledger_error *err)
{
    struct stat a, b;
    if (stat(dest, &b) == 0 && fstat(l->fd, &a) == 0 && a.st_dev == b.st_dev &&
        a.st_ino == b.st_ino) {
        set_err(err, FAB_EINVAL, 0, 0, 0, "cannot compact a ledger onto itself");
        return FAB_EINVAL;
    }
    char suffix[48];
    snprintf(suffix, sizeof(suffix), ".tmp.%ld", (long)getpid());
    char *tmp = path_with(dest, suffix);
    if (tmp == NULL)
        return FAB_ENOMEM;
    int rc = FAB_OK, e = 0;
    const char *what = "creating the compacted ledger";
    out_file o = {&l->io, -1, 0, NULL, 0, (size_t)1 << 20, 0};
    if ((o.buf = malloc(o.cap)) == NULL) {
        free(tmp);
        return FAB_ENOMEM;
    }
    o.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (o.fd < 0) {
        e = errno;
        goto done;
    }
    pthread_mutex_lock(&l->mu);
    compact_into(l, &o);
    pthread_mutex_unlock(&l->mu);
    what = "writing the compacted ledger";
    if ((e = o.e) != 0)
        goto done;
    what = "syncing the compacted ledger";
    if (l->io.fdatasync(o.fd) < 0) {
        e = errno;
        goto done;
    }
    what = "renaming the compacted ledger";
    if (rename(tmp, dest) < 0) {
        e = errno;
        goto done;
    }
    what = "syncing the compacted ledger's directory";
    e = fsync_dir_of(dest);
done:
    if (o.fd >= 0)
        close(o.fd);
    if (e) {
        unlink(tmp);
        rc = sys_fail(err, e, what);
    }
    free(o.buf);
    free(tmp);
    return rc;
}
