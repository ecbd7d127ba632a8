/*
 * The cassette ledger (docs/spec/ledger.md): format, replay, appends with
 * three durability modes, streams and compaction.
 *
 * Locking: l->mu guards every field below it in struct fab_ledger. It is
 * released only around fdatasync, so concurrent appends can join one sync
 * (group commit). Records become visible to lookups when they are durable
 * per the mode: l->visible_end marks the durable prefix of the file.
 *
 * Between processes (spec: Concurrency): open file description (OFD) locks
 * on two bytes far beyond any real end of the ledger file. LOCK_WRITERS:
 * every writer holds a shared lock for the life of its handle, an exclusive
 * writer an exclusive one. LOCK_APPEND: held exclusively for one append
 * (under l->mu, never across fdatasync); the holder re-reads the file's end
 * and replays what others appended before it writes. OFD locks belong to
 * the open file, not the process, so two handles of one process exclude
 * each other like two processes do, and closing one never drops the
 * other's lock. A forked child shares its parent's open files (and so
 * their locks): the pthread_atfork child handler marks every ledger, and
 * the child's first append reopens the path.
 *
 * Writers under the lock page, and exclusive writers, copy their records
 * into a writable shared mapping of space reserved ahead with fallocate
 * (put_locked; spec: Appends through the mapping): the file ends with
 * zeros after the records, a zero magic at a record boundary ends them,
 * and the last writer to close trims the zeros.
 */
#include "fabric/ledger.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "fabric/common.h"
#include "fabric/crc32c.h"
#include "fabric/lindex.h"

static const uint8_t FILE_MAGIC[8] = {0x89, 'F', 'A', 'B', 'L', 'D', 'G', '\n'};
static const uint8_t REC_MAGIC[4] = {0xe7, 'R', 'E', 'C'};

#define SEED_FILE 0x4C444752u /* "LDGR" */
/* The header's `replaced` word (spec: File header): changed in a file
 * that a compaction replaced, so that every handle of it notices at its
 * next call (sentinel_read). */
#define HDR_REPLACED 56
#define SEED_BODY 0x424F4459u /* "BODY" */
#define SEED_HEAD 0x48445221u /* "HDR!" */

#define MIN_MAP ((size_t)64 << 20)
#define PROGRESS_STEP ((uint64_t)16 << 20)
#define SMALL_RECORD 16384
#define NONE UINT64_MAX

/* The lock bytes (see the top of this file and the spec). */
#define LOCK_APPEND ((off_t)1 << 62)
#define LOCK_WRITERS (LOCK_APPEND + 1)
/* A classic (per-process) POSIX lock, only a hint for people: it makes
 * each writer process and its pid visible in /proc/locks (OFD locks show
 * no pid there). It vanishes when the process closes any descriptor of
 * the file, so nothing relies on it. */
#define LOCK_PID (LOCK_APPEND + 2)
/* Compaction copies this many bytes between progress reports, letting
 * other threads in. */
#define COMPACT_STEP ((uint64_t)4 << 20)
/* A writer with the lock page that was the last to append skips the
 * fstat for this long after its last one (a file renamed over the ledger
 * by another program is noticed within it). */
#define LOOK_EVERY_NS 1000000u
/* A writer retries this often when the file keeps being replaced. */
#define MAX_MOVES 100
/* At most this many of the others' records have their index entries
 * deferred past the append lock (see defer_ok). */
#define DEFER_MAX 64
/* A catch-up of at most this many bytes before the append lock leaves the
 * clock read before it fresh enough for the look at the file's age (tens
 * of microseconds against 1 ms). */
#define FRESH_CATCH_UP ((uint64_t)64 << 10)

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
 * inside the file is ever touched), writable for a writer (appends through
 * the mapping). */
static int lmap_new(int fd, size_t len, int writable, fab_lmap **out)
{
    long page = sysconf(_SC_PAGESIZE);
    len = (len + (size_t)page - 1) & ~((size_t)page - 1);
    fab_lmap *m = malloc(sizeof(*m));
    if (m == NULL)
        return FAB_ENOMEM;
    m->base = mmap(NULL, len, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
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

/* A checkpoint file, mapped read-only (spec: Checkpoint). */
typedef struct ckpt {
    uint8_t *base;        /* the whole file, or NULL when none is used */
    size_t len;
    const fab_lindex_slot *slots;
    uint64_t mask, count, covered, records, duplicates;
    const uint8_t *page_crcs;
    uint8_t *verified;    /* one bit per page of slots, checked once */
    int bad;              /* a page failed its checksum: rebuild */
} ckpt;

/* The append lock page (see its section below). */
#define LOCK_IDENT ((off_t)1 << 61)
#define IDENT_BITS 40
#define SHL_HEAD 4096
/* The key filter after the header (spec: The lock page, The key filter):
 * 2 MiB, 2^24 bits; allocated in the tmpfs (fallocate) when it is first
 * used, never touched before (a page a tmpfs cannot allocate is SIGBUS). */
#define SHL_FILTER_BITS ((uint64_t)1 << 24)
#define SHL_FILTER_WORDS (SHL_FILTER_BITS / 64)
#define SHL_SIZE (SHL_HEAD + SHL_FILTER_BITS / 8)
#define SHL_VERSION 3
/* filter_base when the filter is not valid */
#define FILTER_INVALID UINT64_MAX
/* Bits per key, all in one 512-bit block (one cache line). */
#define FILTER_K 6
/* Keys added since filter_base above which the filter counts as
 * saturated: with k = 6 bits of m = 2^24, n keys leave a false positive
 * rate of about (1 - e^(-6n/m))^6: 0.0005% at 200,000 keys, 0.8% at
 * n = m / 10 = 1,677,721 (somewhat more with the bits in one block, which
 * some blocks fill faster than others: still well under 5%). */
#define FILTER_SATURATED (SHL_FILTER_BITS / 10)
/* The page's layout depends on the C library's pthread_mutex_t: the
 * library's name is part of the file name, so a process of another C
 * library makes another file (and writer_identity refuses the mix). */
#ifdef __GLIBC__
#define SHL_LIBC "glibc"
#else
#define SHL_LIBC "libc"
#endif
static const uint8_t SHL_MAGIC[8] = {0x89, 'F', 'A', 'B', 'L', 'C', 'K', '\n'};

_Static_assert(sizeof(pthread_mutex_t) <= 64, "the lock page's mutex ends before its opens");

/* The end hint's offset, in the mutex's cache line after the mutex, when
 * the C library's pthread_mutex_t leaves room for it (spec: The lock
 * page). */
#define SHL_HINT_AT 120

typedef struct shl_page {
    uint8_t magic[8];
    uint32_t version;
    uint32_t mutex_size;   /* sizeof(pthread_mutex_t) of the creator */
    uint64_t id;           /* the lock identity, 1 .. 2^40 - 1 */
    uint64_t dev, ino;     /* the ledger file it serves */
    _Atomic uint64_t end;  /* the ledger's end after the last append under the mutex; 0 unknown */
    _Atomic uint64_t owner_dead; /* holders found dead (EOWNERDEAD) */
    _Atomic uint64_t reserved; /* the file is at least this long (space reserved
                                * after end, zero); 0 unknown. Valid with end. */
    pthread_mutex_t mu;    /* at offset 64 */
    uint8_t pad_[128 - 64 - sizeof(pthread_mutex_t)];
    _Atomic uint64_t opens; /* at offset 128: the opens of the page, each handle's
                             * populate phase (populate_ahead); a hint */
    /* The key filter (version 3; spec: The key filter). Under the mutex,
     * except for an appender's look before it (a hint). */
    _Atomic uint64_t filter_base; /* at 136: the filter holds the keys of every
                                   * commit and tombstone appended at or after
                                   * this offset; FILTER_INVALID: none */
    _Atomic uint64_t filter_keys; /* at 144: keys added since filter_base */
    _Atomic uint64_t clears;      /* at 152: clears appended under the mutex */
} shl_page;

_Static_assert(sizeof(shl_page) <= SHL_HEAD, "the lock page's header fits in its page");
_Static_assert(SHL_HINT_AT % 8 == 0 && SHL_HINT_AT + 8 <= 128, "the end hint is in the mutex's line");
_Static_assert(offsetof(shl_page, end) == 40 && offsetof(shl_page, reserved) == 56 &&
                   offsetof(shl_page, mu) == 64 && offsetof(shl_page, opens) == 128 &&
                   offsetof(shl_page, filter_base) == 136 &&
                   offsetof(shl_page, filter_keys) == 144 && offsetof(shl_page, clears) == 152,
               "the lock page's layout is the spec's");

/* One handle's hold on a lock file. */
typedef struct shl {
    int fd;                /* -1: none (OFD lock, or exclusive) */
    shl_page *p;
    uint64_t id;
    uint64_t nth;          /* this open's number (the page's opens before it) */
    int inherited;         /* a forked child's copy of its parent's: never removes the file */
    uint64_t filter_retry; /* the key filter's space could not be allocated: not
                            * tried again before the ledger's end reaches this */
} shl;

struct fab_ledger {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    fab_ledger *reg_prev, *reg_next; /* the process's open ledgers (fork) */
    int fd;
    char *path;
    int mode, durability, recover, exclusive;
    fab_ledger_io io;
    uint8_t header[FAB_LEDGER_HEADER_SIZE];
    dev_t dev;            /* of fd */
    ino_t ino;
    int forked;           /* fd and its locks are the parent's (after fork) */
    int append_locked;    /* 1: LOCK_APPEND held; 2: the lock page's mutex held */
    int append_ok;        /* begin_append succeeded: end_append publishes l->end */
    int append_fresh;     /* begin_append found nothing new: the index is unchanged */
    /* The others' records replayed under the append lock for a record
     * (defer_ok) have their index entries made after the lock is released
     * (spec: Seeing the others' records): def_off holds the offsets of
     * the n_def commits (REPLY, END) replayed but not indexed yet, in
     * order. Under l->mu, always empty when l->mu is released. */
    int defer_ok;         /* fab_ledger_record_req's begin_append: defer */
    int defer_ix;         /* replay_record defers (begin_append's replays) */
    unsigned n_def;
    uint64_t def_off[DEFER_MAX];
    /* their keys' index hashes under the seed def_seed, made (and their
     * slots prefetched) when they were replayed, so that the slots are in
     * the cache by the time the entries are made */
    uint64_t def_hash[DEFER_MAX];
    uint64_t def_seed;
    /* The lazy catch-up (spec: The key filter): an append whose key the
     * lock page's filter says nobody committed or deleted since this
     * handle's replayed end goes at the page's end without replaying the
     * others' records before it. Then [lazy_from, end) holds records this
     * handle has not replayed, among them its own (indexed at once);
     * lazy_from is NONE when everything below end is replayed. A replay
     * starts at lazy_from and sees the gap_records own records again
     * (replay_commit keeps their entries). */
    uint64_t lazy_from;
    uint64_t gap_records;
    uint64_t seen_clears; /* the page's clears when this handle was last caught up
                           * under the mutex (NONE: unknown) */
    const uint8_t *lazy_key; /* fab_ledger_record_req's key, for begin_append */
    int filter_seen;         /* the key filter could rule keys out for this handle at
                              * its last append under the mutex (filter_usable): a
                              * hint, so that the next append reads none of the page
                              * before it takes the mutex */
    uint64_t lazy_appends;   /* appends that took the lazy path (a statistic) */
    uint64_t spin_ns;     /* spinning for the lock page's mutex (shl_lock) */
    uint64_t looked_ns;   /* CLOCK_MONOTONIC of the last append that fstat'ed the file */
    shl sh;               /* the append lock page, or fd -1 (OFD lock, exclusive, reader) */
    uint64_t owner_dead;  /* lock page holders this handle found dead */
    /* Appends through the mapping (spec: Appends through the mapping):
     * under the append lock, the file is known to be at least reserved
     * bytes long, zero after end. no_reserve: fallocate is not supported
     * here (or the io has none): every append is a pwrite. */
    uint64_t reserved;
    int no_reserve;
    int mapped_appends;   /* the last append went through the mapping */
    /* populate_ahead: [0, populated) of populated_map is faulted in for
     * writing (as far as this handle knows) */
    const fab_lmap *populated_map;
    uint64_t populated;
    int no_populate;      /* the kernel has no MADV_POPULATE_WRITE */
    int opened;           /* fab_ledger_open succeeded */
    /* Test hook (FABRIC_LEDGER_TEST_HOLD="N:FD[:torn]"): at the N-th
     * record append, inside the append lock, write (torn: half the
     * record, then) one byte to FD and wait for ever. */
    uint64_t hold_n;
    int hold_fd, hold_torn;
    uint64_t gen;         /* incremented at each move to another file */
    uint64_t scanned_size; /* file size at the last replay */
    uint64_t reloads, foreign_records, leftovers_removed;
    ckpt ck;              /* the mapped checkpoint, when one is used */
    int use_ckpt;         /* read (and write) checkpoints */
    int ckpt_state;       /* enum fab_ledger_ckpt_state */
    uint64_t ckpt_written;
    uint64_t last_rec;    /* offset of the last valid record, or 0 */
    uint64_t open_replayed; /* records replayed at open (not from the checkpoint) */
    uint64_t lazy_end;    /* records below were not validated at open (checkpoint) */
    /* The mapping guard (spec: Files that change underneath): the 8 bytes
     * at sent_at, which end with the last non-zero byte of the last page
     * of [0, end), read sent_val while the file still holds everything
     * indexed. sent_ok 0: no such byte in that page (an fstat instead). */
    uint64_t sent_at, sent_val;
    int sent_ok;

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
    /* Index entries that hold no key: tombstones in ix, and checkpoint
     * entries that an entry of ix shadows (spec: Deleting). */
    uint64_t tomb, shadow;
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

/*
 * open(2) of a path that ought to name a regular file (the ledger, its
 * checkpoint), never waiting on one that does not: a FIFO opened for
 * reading blocks until a writer opens it, forever when none comes. With
 * O_NONBLOCK the open returns at once and the caller's fstat refuses (or
 * ignores) what is not a regular file; the flag is cleared again so the
 * descriptor has the flags asked for. Returns the fd, or -1 (errno).
 */
static int open_file(const char *path, int flags)
{
    int fd = open(path, flags | O_NONBLOCK);
    if (fd >= 0) {
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    }
    return fd;
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
static int default_fallocate(int fd, off_t off, off_t len) { return fallocate(fd, 0, off, len); }

static const fab_ledger_io default_io = {default_pwrite, default_fdatasync, default_ftruncate,
                                         default_fallocate};

/* ======================================================================== */
/* Locks between processes                                                   */
/* ======================================================================== */

/* An OFD lock on one byte at at: type F_RDLCK, F_WRLCK or F_UNLCK; wait
 * 1 blocks until granted; wait 2 takes a classic POSIX lock instead (no
 * waiting). 0 or -1 with errno (EAGAIN: held by another). */
static int ofd_lock(int fd, short type, off_t at, int wait)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = at;
    fl.l_len = 1;
    int rc;
    do
        rc = fcntl(fd, wait == 2 ? F_SETLK : wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl);
    while (rc < 0 && errno == EINTR);
    if (rc < 0 && errno == EACCES)
        errno = EAGAIN;
    return rc;
}

/*
 * Reads /proc/locks (Linux) for the file dev/ino: returns how many OFD
 * locks are held on byte LOCK_WRITERS (writer handles, in any process) and
 * sets *pid to the pid of a process holding an exclusive classic lock on
 * LOCK_PID (0 when none or unknown). -1 when /proc/locks cannot be read.
 */
static int lock_holders(dev_t dev, ino_t ino, long *pid)
{
    *pid = 0;
    FILE *f = fopen("/proc/locks", "re");
    if (f == NULL)
        return -1;
    char line[256];
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        char kind[16], adv[16], rw[16], start[32];
        long p;
        unsigned maj, min;
        unsigned long long inode;
        /* "1: OFDLCK ADVISORY  WRITE -1 08:01:5678 4611686018427387905 ..." */
        char *s = strchr(line, ':');
        if (s == NULL || strstr(line, "->") != NULL) /* a waiter, not a holder */
            continue;
        if (sscanf(s + 1, "%15s %15s %15s %ld %x:%x:%llu %31s", kind, adv, rw, &p, &maj, &min,
                   &inode, start) != 8)
            continue;
        if ((dev_t)makedev(maj, min) != dev || (ino_t)inode != ino)
            continue;
        long long at = strtoll(start, NULL, 10);
        if (strcmp(kind, "OFDLCK") == 0 && at == (long long)LOCK_WRITERS)
            n++;
        else if (strcmp(kind, "POSIX") == 0 && at == (long long)LOCK_PID &&
                 strcmp(rw, "WRITE") == 0)
            *pid = p;
    }
    fclose(f);
    return n;
}

/* ======================================================================== */
/* The append lock page (spec: Concurrency)                                  */
/* ======================================================================== */

/*
 * A writer that is not exclusive serializes its appends with a robust,
 * process-shared pthread mutex in a 4 KiB lock file in /dev/shm (or
 * $FABRIC_LEDGER_LOCK_DIR), one per ledger file (device and inode), not
 * beside the ledger. Uncontended it costs two atomic operations instead of
 * two fcntl calls; a holder killed by SIGKILL leaves the mutex to the next
 * locker with EOWNERDEAD (the kernel walks the dead thread's robust list),
 * which repairs the tail as any appender does and marks it consistent.
 * The page also holds the ledger's end after the last append under the
 * mutex: a writer that finds it equal to its own end knows that nobody
 * appended since its last look and skips the fstat.
 *
 * Where the lock file cannot be used (no such directory, another user's
 * file, a different layout), the writer falls back to the OFD lock on
 * LOCK_APPEND. The two must never be mixed on one ledger: every writer
 * holds a shared OFD lock on the byte LOCK_IDENT + its lock identity (the
 * page's random id, or 0 for the OFD lock) for its life, and at open
 * checks that no other identity is held (writer_identity).
 */

static const char *shl_dir(void)
{
    const char *d = getenv("FABRIC_LEDGER_LOCK_DIR");
    return d ? d : "/dev/shm";
}

static void shl_name(char *out, size_t n, const char *dir, dev_t dev, ino_t ino)
{
    snprintf(out, n, "%s/fabric-ledger-%llx-%llx.%s.lock", dir, (unsigned long long)dev,
             (unsigned long long)ino, SHL_LIBC);
}

static uint64_t shl_random_id(void)
{
    uint64_t v = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
            v = 0;
        close(fd);
    }
    v ^= now_ns(CLOCK_MONOTONIC) * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid() << 20;
    v &= ((uint64_t)1 << IDENT_BITS) - 1;
    return v ? v : 1;
}

/* Makes an initialized lock file under name (a new file linked there
 * only once complete, so nobody maps a half-made page). 0, or -1 when it
 * cannot (errno EEXIST: someone else made it first). */
static int shl_create(const char *name, const char *dir, const struct stat *ledger)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", name, (long)getpid());
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    FAB_UNUSED(dir);
    if (fd < 0)
        return -1;
    int ok = 0;
    shl_page *p = MAP_FAILED;
    /* Readable and writable as the ledger is by its owner's group (and
     * always by its creator). */
    (void)fchmod(fd, (ledger->st_mode & 0660) | 0600);
    /* The header's page allocated before it is written through the
     * mapping (a full tmpfs: an error here, not SIGBUS there); the filter's
     * only when it is first used (filter_settle). */
    if (ftruncate(fd, SHL_SIZE) == 0 && fallocate(fd, 0, 0, SHL_HEAD) == 0 &&
        (p = mmap(NULL, SHL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) != MAP_FAILED) {
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        if (pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) == 0 &&
            pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) == 0 &&
            pthread_mutex_init(&p->mu, &a) == 0) {
            memcpy(p->magic, SHL_MAGIC, 8);
            p->version = SHL_VERSION;
            p->mutex_size = (uint32_t)sizeof(pthread_mutex_t);
            p->id = shl_random_id();
            p->dev = (uint64_t)ledger->st_dev;
            p->ino = (uint64_t)ledger->st_ino;
            atomic_store(&p->end, 0);
            atomic_store(&p->filter_base, FILTER_INVALID);
            ok = link(tmp, name) == 0;
        }
        pthread_mutexattr_destroy(&a);
        munmap(p, SHL_SIZE);
    }
    int e = errno;
    unlink(tmp);
    close(fd);
    errno = e;
    return ok ? 0 : -1;
}

/*
 * Removes the lock files in dir that nobody uses (every user holds a
 * shared lock on byte 0): left by a last writer killed while open. Run
 * when a lock file is created, so they never pile up. Best effort.
 */
static void shl_sweep(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    DIR *dp = fdopendir(dfd);
    if (dp == NULL) {
        close(dfd);
        return;
    }
    static const char suffix[] = "." SHL_LIBC ".lock";
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "fabric-ledger-", 14) != 0 || n < sizeof(suffix) ||
            strcmp(e->d_name + n - (sizeof(suffix) - 1), suffix) != 0)
            continue;
        int fd = openat(dirfd(dp), e->d_name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            continue;
        struct stat a, b;
        if (ofd_lock(fd, F_WRLCK, 0, 0) == 0 && fstat(fd, &a) == 0 &&
            fstatat(dirfd(dp), e->d_name, &b, AT_SYMLINK_NOFOLLOW) == 0 &&
            a.st_ino == b.st_ino && a.st_uid == geteuid())
            unlinkat(dirfd(dp), e->d_name, 0);
        close(fd);
    }
    closedir(dp);
}

/*
 * Opens (creating it when missing) the lock file of the ledger file sb
 * describes and maps it. 0 and *out filled, or -1 when this process cannot
 * use one (the caller then uses the OFD lock).
 */
static void prefetchw_probe(void);

static int shl_open(const struct stat *ledger, shl *out)
{
    prefetchw_probe();
    memset(out, 0, sizeof(*out));
    out->fd = -1;
    const char *dir = shl_dir();
    struct statfs fs;
    /* Only in a tmpfs, which a reboot empties: a robust mutex whose owner
     * died with the machine (no thread exit to mark it) stays locked. */
    if (dir[0] == '\0' || statfs(dir, &fs) < 0 || (unsigned long)fs.f_type != 0x01021994UL)
        return -1;
    char name[4096];
    shl_name(name, sizeof(name), dir, ledger->st_dev, ledger->st_ino);
    for (int attempt = 0; attempt < 8; attempt++) {
        int fd = open(name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            if (errno != ENOENT)
                return -1;
            shl_sweep(dir);
            if (shl_create(name, dir, ledger) < 0 && errno != EEXIST)
                return -1;
            continue;
        }
        /* Users hold a shared lock on its byte 0 for as long as they use
         * it; the last one out removes it under an exclusive one (shl_close). */
        struct stat a, b;
        if (ofd_lock(fd, F_RDLCK, 0, 1) < 0 || fstat(fd, &a) < 0) {
            close(fd);
            return -1;
        }
        if (stat(name, &b) < 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
            close(fd); /* removed by the last user meanwhile: again */
            continue;
        }
        /* Only a lock file of this user or of the ledger's owner: anyone
         * else could hold the mutex for ever. */
        if (!S_ISREG(a.st_mode) || a.st_size != SHL_SIZE ||
            (a.st_uid != geteuid() && a.st_uid != ledger->st_uid)) {
            close(fd);
            return -1;
        }
        shl_page *p = mmap(NULL, SHL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            close(fd);
            return -1;
        }
        if (memcmp(p->magic, SHL_MAGIC, 8) != 0 || p->version != SHL_VERSION ||
            p->mutex_size != sizeof(pthread_mutex_t) || p->dev != (uint64_t)ledger->st_dev ||
            p->ino != (uint64_t)ledger->st_ino || p->id == 0 ||
            p->id >= ((uint64_t)1 << IDENT_BITS)) {
            munmap(p, SHL_SIZE);
            close(fd);
            return -1;
        }
        /* A page nobody else uses may be a leftover of a file whose inode
         * number this ledger reuses (its last user killed): forget what it
         * says of the file (0 is always safe: unknown, look at the file). */
        struct flock fl;
        memset(&fl, 0, sizeof(fl));
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_len = 1;
        if (fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_UNLCK) {
            atomic_store(&p->end, 0);
            atomic_store(&p->reserved, 0);
            atomic_store(&p->filter_base, FILTER_INVALID);
        }
        out->fd = fd;
        out->p = p;
        out->id = p->id;
        out->nth = atomic_fetch_add_explicit(&p->opens, 1, memory_order_relaxed);
        return 0;
    }
    return -1;
}

/* Stops using a lock file; the last user (unlink 1, and no other shared
 * lock on it) removes it. */
static void shl_close(shl *s, int unlink_last)
{
    if (s->fd < 0)
        return;
    if (unlink_last && !s->inherited && ofd_lock(s->fd, F_WRLCK, 0, 0) == 0) {
        char name[4096];
        struct stat a, b;
        shl_name(name, sizeof(name), shl_dir(), (dev_t)s->p->dev, (ino_t)s->p->ino);
        if (fstat(s->fd, &a) == 0 && stat(name, &b) == 0 && a.st_ino == b.st_ino &&
            a.st_dev == b.st_dev)
            unlink(name);
    }
    munmap(s->p, SHL_SIZE);
    close(s->fd);
    memset(s, 0, sizeof(*s));
    s->fd = -1;
}

/*
 * The key filter (spec: The key filter): a Bloom filter of 2^24 bits
 * after the page's header, six bits per key taken from the key itself (a
 * SHA-256), all in one 64-byte block (one cache line, one miss): the
 * block is the key's first 64-bit word (little-endian) modulo 2^15, the
 * bits in it the six 9-bit fields of its second word, lowest first. Every
 * holder of the mutex adds the key of every commit (REPLY, STREAM_END)
 * and tombstone it appends before writing it, and counts its clears in
 * the page's clears. So when filter_base <= h and one of a key's bits is
 * clear, no record in [h, end) commits or deletes it. Its words are read
 * and written relaxed: under the mutex, except for an appender's look
 * before it, a hint only.
 */
static inline _Atomic uint64_t *shl_filter(shl_page *p)
{
    return (_Atomic uint64_t *)(void *)((uint8_t *)p + SHL_HEAD);
}

static inline void filter_bits(const uint8_t key[32], uint64_t b[FILTER_K])
{
    uint64_t block = (fab_load_le64(key) & (SHL_FILTER_BITS / 512 - 1)) * 512;
    uint64_t w = fab_load_le64(key + 8);
    for (int i = 0; i < FILTER_K; i++)
        b[i] = block + ((w >> (9 * i)) & 511);
}

/* Adds key before its record is written. Under the mutex. A holder killed
 * after this leaves false positives only. */
static void filter_add(shl_page *p, const uint8_t key[32])
{
    uint64_t keys = atomic_load_explicit(&p->filter_keys, memory_order_relaxed);
    if (atomic_load_explicit(&p->filter_base, memory_order_relaxed) == FILTER_INVALID ||
        keys > FILTER_SATURATED) /* unused until it is emptied again */
        return;
    /* counted first: a filter with a count of 0 has no bit set */
    atomic_store_explicit(&p->filter_keys, keys + 1, memory_order_relaxed);
    uint64_t b[FILTER_K];
    filter_bits(key, b);
    _Atomic uint64_t *f = shl_filter(p);
    for (int i = 0; i < FILTER_K; i++) {
        uint64_t w = atomic_load_explicit(&f[b[i] >> 6], memory_order_relaxed);
        uint64_t bit = (uint64_t)1 << (b[i] & 63);
        if (!(w & bit))
            atomic_store_explicit(&f[b[i] >> 6], w | bit, memory_order_relaxed);
    }
}

/* The filter's part of one append's records (buf: whole records, the last
 * one's payload perhaps going on elsewhere): their commits' and
 * tombstones' keys, and their clears. Under the mutex, before they are
 * written. */
static void filter_records(shl_page *p, const uint8_t *buf, size_t blen)
{
    for (size_t pos = 0; pos + FAB_LEDGER_REC_OVERHEAD <= blen;
         pos += FAB_LEDGER_REC_OVERHEAD + fab_load_le32(buf + pos + 8)) {
        int type = buf[pos + 4];
        if (type == FAB_REC_TOMBSTONE && fab_load_le32(buf + pos + 8) == 1)
            atomic_store_explicit(&p->clears,
                                  atomic_load_explicit(&p->clears, memory_order_relaxed) + 1,
                                  memory_order_relaxed);
        else if (type == FAB_REC_REPLY || type == FAB_REC_STREAM_END ||
                 type == FAB_REC_TOMBSTONE)
            filter_add(p, buf + pos + FAB_LEDGER_REC_HEADER);
    }
}

/* 1 when the filter can tell about the records at or after h: it is
 * valid, based at or before h, not saturated, and no clear was appended
 * since this handle last caught up under the mutex (seen_clears). Under
 * the mutex (before it: a hint). */
static int filter_usable(const shl_page *p, uint64_t seen_clears, uint64_t h)
{
    shl_page *q = (shl_page *)p;
    uint64_t base = atomic_load_explicit(&q->filter_base, memory_order_relaxed);
    return !(base == FILTER_INVALID || base > h || seen_clears == NONE ||
             atomic_load_explicit(&q->clears, memory_order_relaxed) != seen_clears ||
             atomic_load_explicit(&q->filter_keys, memory_order_relaxed) > FILTER_SATURATED);
}

/* 1 when the filter tells that no record at or after h commits or deletes
 * key and that no clear was appended since this handle last caught up
 * under the mutex (seen_clears): it is usable (filter_usable) and one of
 * key's bits is clear. Under the mutex (before it: a hint). */
static int filter_absent(const shl_page *p, uint64_t seen_clears, const uint8_t key[32],
                         uint64_t h)
{
    shl_page *q = (shl_page *)p;
    if (!filter_usable(p, seen_clears, h))
        return 0;
    uint64_t b[FILTER_K];
    filter_bits(key, b);
    _Atomic uint64_t *f = shl_filter(q);
    for (int i = 0; i < FILTER_K; i++)
        if (!((atomic_load_explicit(&f[b[i] >> 6], memory_order_relaxed) >> (b[i] & 63)) & 1))
            return 1;
    return 0;
}

/* The filter's validity ends (a dead holder, a failed append, a
 * compaction: the page's end goes to 0). Under the mutex. */
static void filter_invalidate(shl_page *p)
{
    atomic_store_explicit(&p->filter_base, FILTER_INVALID, memory_order_relaxed);
}

/*
 * After a full catch-up under the mutex (everything below end replayed,
 * end the end of the records): a filter that is not valid, or saturated,
 * is emptied (its pages given back to the tmpfs, else zeroed) and based
 * at end, when the catch-up met another writer's records (others): a
 * writer alone never looks at the filter, and does not keep one (a
 * cache miss per append). Returns the page's clears, which the handle
 * now has seen.
 */
static uint64_t filter_settle(shl *sh, uint64_t end, int others)
{
    shl_page *p = sh->p;
    uint64_t base = atomic_load_explicit(&p->filter_base, memory_order_relaxed);
    uint64_t keys = atomic_load_explicit(&p->filter_keys, memory_order_relaxed);
    if (others && (base == FILTER_INVALID || keys > FILTER_SATURATED) &&
        end >= sh->filter_retry) {
        filter_invalidate(p);
        /* The filter's pages are allocated before it is used (a tmpfs file
         * made by ftruncate is a hole: a write into it on a full tmpfs is
         * SIGBUS, a fault no caller could handle), and stay allocated while
         * the file lives, so a reader of a valid filter never faults a page
         * in. A full tmpfs leaves the filter invalid (every append catches
         * up, as without one); this handle tries again 1 MiB of records
         * later, not at every append. */
        if (fallocate(sh->fd, 0, SHL_HEAD, SHL_FILTER_BITS / 8) < 0) {
            sh->filter_retry = end + ((uint64_t)1 << 20);
            return atomic_load_explicit(&p->clears, memory_order_relaxed);
        }
        if (keys != 0)
            memset((void *)shl_filter(p), 0, SHL_FILTER_BITS / 8);
        atomic_store_explicit(&p->filter_keys, 0, memory_order_relaxed);
        atomic_store_explicit(&p->filter_base, end, memory_order_relaxed);
    }
    return atomic_load_explicit(&p->clears, memory_order_relaxed);
}

/*
 * Takes the page's mutex. Under contention glibc's robust mutex spins
 * not at all: the waiter sleeps in futex_wait and the holder pays a
 * futex_wake at its unlock, a few microseconds of system calls and
 * context switches against an append of about one. So a waiter first
 * spins, for at most LOCK_SPIN_NS, reading the mutex's word (glibc: the
 * owner's thread id, 0 when free; one cache line read, no write, while
 * the holder works) and trying the lock when it looks free or its owner
 * died; then it blocks as before. Returns what pthread_mutex_trylock or
 * pthread_mutex_lock returned: 0, EOWNERDEAD (the lock is held, its
 * previous holder died: the caller repairs), or an error.
 */
#ifndef LOCK_SPIN_NS
#define LOCK_SPIN_NS 20000u
#endif

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/*
 * A handoff of the lock page's mutex between processes on two CPUs moves
 * every cache line the append touches from the last holder's CPU to the
 * next one's, each a miss that costs as much as the rest of the append
 * (about 250 ns between the two CPUs of the machine in docs/benchmarks.md)
 * and, taken one after another as the code meets them, most of the time
 * the mutex is held. So the waiter fetches them for writing all at once,
 * when it sees the mutex free and before it takes it (they are the last
 * holder's no longer): the page's end and filter words, the key's filter
 * block, the sentinel, and the first lines after the ledger's end as the
 * page's end hint tells it (the last holder's end, in the mutex's own
 * cache line, which the waiter has then: spec, The lock page). A prefetch
 * never faults and changes nothing but the cache, so a stale hint, or a
 * line beyond the file, costs a wasted fetch at most.
 */
typedef struct shl_hot {
    const void *line[4];  /* lines fetched for writing; NULL: none */
    const uint8_t *base;  /* the ledger's mapping, for the lines at the end hint; NULL: none */
    uint64_t len;         /* the mapping's length */
} shl_hot;

/* The lines after the end hint that are fetched: a small append's. */
#define SHL_HOT_SPAN 192

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
/* 1 when the CPU has PREFETCHW (CPUID 0x80000001, ECX bit 8), 0 when not,
 * -1 before the first look (shl_open). */
static _Atomic int have_prefetchw = -1;

static void prefetchw_probe(void)
{
    unsigned a, b, c, d;
    if (atomic_load_explicit(&have_prefetchw, memory_order_relaxed) < 0)
        atomic_store_explicit(&have_prefetchw,
                              __get_cpuid(0x80000001u, &a, &b, &c, &d) && (c & (1u << 8)),
                              memory_order_relaxed);
}
#else
static void prefetchw_probe(void)
{
}
#endif

/* Fetches p's cache line for writing (for reading where the CPU has no
 * such prefetch). */
static inline void prefetch_w(const void *p)
{
#if defined(__x86_64__) || defined(__i386__)
    if (atomic_load_explicit(&have_prefetchw, memory_order_relaxed) > 0)
        __asm__ __volatile__("prefetchw %0" ::"m"(*(const char *)p));
    else
        __builtin_prefetch(p, 1);
#else
    __builtin_prefetch(p, 1);
#endif
}

/* The page's end hint, or NULL when the mutex leaves no room for it. */
static inline _Atomic uint64_t *shl_end_hint(shl_page *p)
{
    return sizeof(pthread_mutex_t) + 64 <= SHL_HINT_AT
               ? (_Atomic uint64_t *)(void *)((uint8_t *)p + SHL_HINT_AT)
               : NULL;
}

/* Fetches hot's lines (see shl_hot). Only once the mutex is seen free:
 * before, they are its holder's. */
static inline void shl_fetch(shl_page *p, const shl_hot *hot)
{
    for (int i = 0; i < 4; i++)
        if (hot->line[i] != NULL)
            prefetch_w(hot->line[i]);
    _Atomic uint64_t *hint = shl_end_hint(p);
    if (hot->base == NULL || hint == NULL)
        return;
    uint64_t e = atomic_load_explicit(hint, memory_order_relaxed);
    if (e != 0 && e <= hot->len && hot->len - e >= SHL_HOT_SPAN)
        for (uint64_t o = 0; o < SHL_HOT_SPAN; o += 64)
            prefetch_w(hot->base + e + o);
}

static inline int shl_maybe_free(pthread_mutex_t *mu);

/* pthread_mutex_trylock, hot's lines fetched first when the mutex looks
 * free (its line fetched for writing first: one miss, not a read and
 * then the trylock's write). */
static inline int shl_trylock(shl_page *p, const shl_hot *hot)
{
    if (hot != NULL) {
        prefetch_w(&p->mu);
        if (shl_maybe_free(&p->mu))
            shl_fetch(p, hot);
    }
    return pthread_mutex_trylock(&p->mu);
}

/* 1 when the mutex may be free (or its owner dead): worth a trylock. */
static inline int shl_maybe_free(pthread_mutex_t *mu)
{
#ifdef __GLIBC__
    /* The robust futex word: the owner's tid in its low 30 bits,
     * FUTEX_OWNER_DIED (0x40000000) and FUTEX_WAITERS above. */
    return (__atomic_load_n(&mu->__data.__lock, __ATOMIC_RELAXED) & 0x3fffffff) == 0;
#else
    (void)mu;
    return 1;
#endif
}

/* A wait for the lock page's mutex lasts at most this long before it looks
 * again (shl_wait). */
#define SHL_WAIT_NS 20000000L

/*
 * Blocks for the lock page's mutex: 0, EOWNERDEAD, or an error. An unlock
 * wakes one waiter; a waiter killed after that wake-up and before it took
 * the mutex takes the wake-up with it, and when another process took the
 * mutex meanwhile (uncontended, so it will wake nobody) the kernel wakes
 * no one else either: the other waiters would sleep until someone else
 * contends. So a wait is bounded and tried again.
 */
static int shl_wait(shl_page *p)
{
    int r;
    do {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += SHL_WAIT_NS;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        r = pthread_mutex_timedlock(&p->mu, &ts);
    } while (r == ETIMEDOUT);
    return r;
}

static int shl_lock(shl_page *p, uint64_t spin_ns, const shl_hot *hot, int *waited)
{
    int r = shl_trylock(p, hot);
    *waited = r == EBUSY;
    if (r != EBUSY || spin_ns == 0)
        return r != EBUSY ? r : shl_wait(p);
    /* The spin's clock starts at its 32nd poll: most waits (another
     * writer's critical section, a few hundred cycles) end before it, and
     * read no clock. */
    uint64_t t0 = 0;
    for (unsigned i = 1;; i++) {
        cpu_relax();
        if (shl_maybe_free(&p->mu) && (r = shl_trylock(p, hot)) != EBUSY) {
            *waited = t0 != 0;
            return r;
        }
        if ((i & 31) == 0) {
            uint64_t t = now_ns(CLOCK_MONOTONIC);
            if (t0 == 0)
                t0 = t;
            else if (t - t0 >= spin_ns)
                break;
        }
    }
    return shl_wait(p);
}

/*
 * Declares fd's writer's lock identity (the lock page's id, 0 for the OFD
 * lock) with a shared OFD lock on LOCK_IDENT + id, held for the life of
 * the open file, then looks for any other identity held by another
 * writer. 0 when none; 1 when there is one. Taking one's own lock before
 * looking at the others' (both ways) means that of two writers with
 * different identities, at least one sees the other.
 */
static int writer_identity(int fd, uint64_t id, int *err_out)
{
    *err_out = 0;
    if (ofd_lock(fd, F_RDLCK, LOCK_IDENT + (off_t)id, 0) < 0) {
        *err_out = errno;
        return -1;
    }
    struct flock fl;
    off_t ranges[2][2] = {{LOCK_IDENT, (off_t)id},
                          {LOCK_IDENT + (off_t)id + 1, ((off_t)1 << IDENT_BITS) - (off_t)id - 1}};
    for (int i = 0; i < 2; i++) {
        if (ranges[i][1] <= 0)
            continue;
        memset(&fl, 0, sizeof(fl));
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = ranges[i][0];
        fl.l_len = ranges[i][1];
        if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
            *err_out = errno;
            return -1;
        }
        if (fl.l_type != F_UNLCK)
            return 1;
    }
    return 0;
}

/* ======================================================================== */
/* The process's open ledgers, for fork                                      */
/* ======================================================================== */

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static fab_ledger *reg_head;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

/* Before fork: no ledger is inside a critical section when the child is
 * made (a thread in fdatasync holds no mutex). */
static void atfork_prepare(void)
{
    pthread_mutex_lock(&reg_mu);
    for (fab_ledger *l = reg_head; l; l = l->reg_next)
        pthread_mutex_lock(&l->mu);
}

static void atfork_parent(void)
{
    for (fab_ledger *l = reg_head; l; l = l->reg_next)
        pthread_mutex_unlock(&l->mu);
    pthread_mutex_unlock(&reg_mu);
}

/* In the child, only the forking thread exists: nobody is syncing or
 * waiting, and the file descriptors (with their locks) are the parent's. */
static void atfork_child(void)
{
    for (fab_ledger *l = reg_head; l; l = l->reg_next) {
        l->forked = 1;
        l->append_locked = 0;
        l->sh.inherited = 1;
        l->syncing = 0;
        l->leader_waiting = 0;
        l->n_pending = 0;
        if (l->visible_end < l->end)
            l->visible_end = l->end; /* the parent makes its own records durable */
        pthread_cond_init(&l->cond, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&l->lead_cond, &ca);
        pthread_condattr_destroy(&ca);
        pthread_mutex_unlock(&l->mu);
    }
    pthread_mutex_unlock(&reg_mu);
}

static void reg_init(void)
{
    (void)pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static void reg_add(fab_ledger *l)
{
    pthread_once(&reg_once, reg_init);
    pthread_mutex_lock(&reg_mu);
    l->reg_prev = NULL;
    l->reg_next = reg_head;
    if (reg_head)
        reg_head->reg_prev = l;
    reg_head = l;
    pthread_mutex_unlock(&reg_mu);
}

static void reg_remove(fab_ledger *l)
{
    pthread_mutex_lock(&reg_mu);
    if (l->reg_prev)
        l->reg_prev->reg_next = l->reg_next;
    else if (reg_head == l)
        reg_head = l->reg_next;
    if (l->reg_next)
        l->reg_next->reg_prev = l->reg_prev;
    l->reg_prev = l->reg_next = NULL;
    pthread_mutex_unlock(&reg_mu);
}

/* ======================================================================== */
/* Guarded reads of the mappings                                             */
/* ======================================================================== */

/*
 * A page of a file mapping that lies wholly beyond the file's end faults
 * with SIGBUS. A few reads that must survive a file shrunk by another
 * program (the guard's sentinel, the checkpoint's slots) run between
 * bus_enter and bus_leave: a SIGBUS raised in that window in that thread
 * jumps back to the sigsetjmp before it, and the caller treats the file as
 * changed. The handler is installed once, at the first open, and passes
 * every other SIGBUS on to the handler it replaced (or the default
 * action). See the spec: Files that change underneath.
 */
typedef struct bus_guard {
    sigjmp_buf jb;
} bus_guard;

static __thread bus_guard *tl_bus __attribute__((tls_model("initial-exec")));
static struct sigaction bus_prev;
static pthread_once_t bus_once = PTHREAD_ONCE_INIT;
static uint64_t page_size = 4096;

static void bus_handler(int sig, siginfo_t *si, void *uc)
{
    bus_guard *g = tl_bus;
    if (g != NULL) {
        tl_bus = NULL;
        siglongjmp(g->jb, 1);
    }
    if (bus_prev.sa_flags & SA_SIGINFO) {
        if (bus_prev.sa_sigaction != NULL) {
            bus_prev.sa_sigaction(sig, si, uc);
            return;
        }
    } else if (bus_prev.sa_handler != SIG_DFL && bus_prev.sa_handler != SIG_IGN) {
        bus_prev.sa_handler(sig);
        return;
    }
    /* The default action: die of SIGBUS, as without this handler. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, NULL);
    raise(SIGBUS);
}

static void bus_install(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    if (ps > 0)
        page_size = (uint64_t)ps;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = bus_handler;
    sigemptyset(&sa.sa_mask);
    /* SA_NODEFER: SIGBUS stays unblocked after the jump out of the handler */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    if (sigaction(SIGBUS, &sa, &bus_prev) < 0)
        memset(&bus_prev, 0, sizeof(bus_prev));
}

static inline void bus_enter(bus_guard *g)
{
    tl_bus = g;
    atomic_signal_fence(memory_order_seq_cst);
}

static inline void bus_leave(void)
{
    atomic_signal_fence(memory_order_seq_cst);
    tl_bus = NULL;
}

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

static size_t rec_header_f(uint8_t out[FAB_LEDGER_REC_HEADER], int type, int flags,
                           const uint8_t key[32], const void *prefix, size_t plen,
                           const void *data, size_t dlen)
{
    size_t n = plen + dlen;
    memcpy(out, REC_MAGIC, 4);
    out[4] = (uint8_t)type;
    out[5] = (uint8_t)flags;
    out[6] = out[7] = 0;
    fab_store_le32(out + 8, (uint32_t)n);
    uint32_t crc = fab_crc32c(SEED_BODY, key, 32);
    crc = fab_crc32c(crc, prefix, plen);
    crc = fab_crc32c(crc, data, dlen);
    fab_store_le32(out + 12, crc);
    fab_store_le32(out + 16, fab_crc32c(SEED_HEAD, out, 16));
    return FAB_LEDGER_REC_OVERHEAD + n;
}

static size_t rec_header(uint8_t out[FAB_LEDGER_REC_HEADER], int type, const uint8_t key[32],
                         const void *prefix, size_t plen, const void *data, size_t dlen)
{
    return rec_header_f(out, type, 0, key, prefix, plen, data, dlen);
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
    /* A record appended through the mapping gets its magic last, with a
     * release store (put_mapped): seen, the rest is seen too. */
    atomic_thread_fence(memory_order_acquire);
    if (fab_load_le32(p + 16) != fab_crc32c(SEED_HEAD, p, 16))
        return 0;
    int type = p[4], flags = p[5];
    if (p[6] || p[7])
        return 0;
    int skippable = type >= FAB_REC_SKIPPABLE_MIN && type <= FAB_REC_SKIPPABLE_MAX;
    if (!skippable && (type < FAB_REC_REPLY || type > FAB_REC_REQUEST) &&
        type != FAB_REC_TOMBSTONE)
        return 0;
    int allowed = type == FAB_REC_REPLY ? FAB_REC_FLAG_VALUE | FAB_REC_FLAG_EXPIRES |
                                              FAB_REC_FLAG_REQUESTED
                  : type == FAB_REC_STREAM_BEGIN ? FAB_REC_FLAG_REQUESTED
                  : type == FAB_REC_STREAM_CHUNK ? FAB_REC_FLAG_VALUE
                  : skippable ? 0xff : 0;
    if (flags & ~allowed)
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
    if (type == FAB_REC_REPLY && (flags & FAB_REC_FLAG_EXPIRES) && n < 8)
        return 0;
    if (type == FAB_REC_TOMBSTONE && n != 0) {
        /* a clear: payload {1} and a zero key */
        static const uint8_t zero[32];
        if (n != 1 || p[FAB_LEDGER_REC_OVERHEAD] != 1 ||
            memcmp(p + FAB_LEDGER_REC_HEADER, zero, 32) != 0)
            return 0;
    }
    /* Stream records must name an earlier BEGIN of the same key. */
    if (type >= FAB_REC_STREAM_BEGIN && type <= FAB_REC_STREAM_ABORT) {
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

/* 1 when the 4 bytes at off (fewer at the end of base[0..len)) are zero:
 * no record starts there; the file's reserved tail, or an append through
 * the mapping that has not stored its magic yet. */
static int zero_magic(const uint8_t *base, uint64_t len, uint64_t off)
{
    uint64_t n = len - off < 4 ? len - off : 4;
    for (uint64_t i = 0; i < n; i++)
        if (base[off + i] != 0)
            return 0;
    return 1;
}

/* 1 when base[from..to) is all zero. */
static int all_zero(const uint8_t *base, uint64_t from, uint64_t to)
{
    static const uint8_t zero[4096];
    while (from < to) {
        uint64_t n = to - from < sizeof(zero) ? to - from : sizeof(zero);
        if (memcmp(base + from, zero, (size_t)n) != 0)
            return 0;
        from += n;
    }
    return 1;
}

/*
 * From off, where a zero magic stood: walks over the records of an
 * unfinished append through the mapping (a zero magic, then a header that
 * is valid with the magic put back, whose claimed extent lies in the file;
 * the records of one append get their magics last, first to last). A
 * record whose magic is there by now counts alike: a live writer may be
 * storing the magics while this looks. Returns where the search for a
 * following valid record starts: after the last of them, else off + 1 (a
 * reply holding ledger bytes cannot fake a record).
 */
static uint64_t skip_unfinished(const uint8_t *base, uint64_t len, uint64_t off)
{
    uint64_t at = off;
    while (len - at >= FAB_LEDGER_REC_OVERHEAD &&
           (zero_magic(base, len, at) || memcmp(base + at, REC_MAGIC, 4) == 0)) {
        uint8_t h[16];
        memcpy(h, REC_MAGIC, 4);
        memcpy(h + 4, base + at + 4, 12);
        if (fab_load_le32(base + at + 16) != fab_crc32c(SEED_HEAD, h, 16))
            break;
        uint64_t total = FAB_LEDGER_REC_OVERHEAD + (uint64_t)fab_load_le32(h + 8);
        if (fab_load_le32(h + 8) > FAB_LEDGER_MAX_PAYLOAD || len - at < total)
            break;
        at += total;
    }
    return at > off ? at : off + 1;
}

typedef struct scan_state {
    const uint8_t *base;
    uint64_t len;
    int recover;
    /* Stop at a zero magic without looking at what follows (a catch-up
     * with the file: the tail is known clean, or a reader, which ignores
     * what lies after the last record anyway). 0: look (open, a writer in
     * doubt), telling a zero tail from a torn append and corruption. */
    int quick;
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

/*
 * After a zero magic at off: *next is the first valid record after the
 * unfinished append there (if any; NONE otherwise), *clean 1 when
 * everything from off on is zero. Under the SIGBUS guard: the last writer
 * to close trims the reserved tail (fab_ledger_close), perhaps while this
 * looks at it; -1 then (the records end at off).
 */
static __attribute__((noinline)) void look_after_zero_in(const scan_state *s, uint64_t off,
                                                         uint64_t *next, int *clean)
{
    *next = find_next_valid(s->base, s->len, skip_unfinished(s->base, s->len, off));
    *clean = *next == NONE && all_zero(s->base, off, s->len);
}

static int look_after_zero(const scan_state *s, uint64_t off, uint64_t *next, int *clean)
{
    bus_guard g;
    if (sigsetjmp(g.jb, 0) != 0)
        return -1;
    bus_enter(&g);
    look_after_zero_in(s, off, next, clean);
    bus_leave();
    return 0;
}

#define PREFAULT_CHUNK ((uint64_t)8 << 20)
/* A replay of less than this reads through page faults (see replay_scan). */
#define PREFAULT_MIN ((uint64_t)1 << 20)

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
    uint64_t off = start, size, claimed, next_prefault = start + PREFAULT_MIN;
    uint64_t next_progress = start + PROGRESS_STEP, looked_again = NONE;
    res->torn_at = NONE;
    res->corrupt_at = NONE;
    while (off < s->len) {
        /* Prefaulting starts once PREFAULT_MIN bytes of records are read:
         * the file's size, which bounds the scan, may be mostly space
         * reserved for appends (zeros), and a writer catching up with a
         * few records would fault it all in (under the append lock). */
        if (s->prefault && off >= next_prefault) {
            if (next_prefault == start + PREFAULT_MIN) {
                uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), a = off & ~(page - 1);
                (void)madvise((void *)(s->base + a), (size_t)(s->len - a), MADV_SEQUENTIAL);
            }
            prefault(s, off);
            next_prefault = (off & ~(PREFAULT_CHUNK - 1)) + PREFAULT_CHUNK;
        }
        /* An invalid record whose magic is there when looked at again was
         * being appended through the mapping while this looked (its magic
         * is stored last): valid now. */
        int zero = 0;
        if (rec_valid(s->base, s->len, off, &size, &claimed) ||
            (!(zero = zero_magic(s->base, s->len, off)) &&
             rec_valid(s->base, s->len, off, &size, &claimed))) {
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
        uint64_t from = off + 1, next;
        if (zero) {
            int clean;
            if (s->quick || look_after_zero(s, off, &next, &clean) < 0)
                break; /* the end of the records (res->valid_end = off) */
            if (next == NONE) {
                if (!clean) /* all zero: the reserved tail, not torn */
                    res->torn_at = off;
                break;
            }
        } else {
            if (claimed && claimed <= s->len - off)
                from = off + claimed;
            else if (claimed)
                from = s->len;
            next = find_next_valid(s->base, s->len, from);
            if (next == NONE) {
                res->torn_at = off;
                break;
            }
        }
        /* A valid record after a bad one. The bad one may be an append in
         * progress in another process when this looked at it, finished
         * since (and followed by the next append): look at it once more.
         * A record stays valid once written whole, and a later append
         * starts after it is, so a record that became valid was being
         * appended; one still bad is corruption. */
        if (looked_again != off) {
            looked_again = off;
            continue;
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
    scan_state s = {data, len, recover, 0, fn, ctx, NULL, NULL, NULL, 0};
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

static int ckpt_find(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t *off);
static char *path_with(const char *path, const char *suffix);
static int write_all(const fab_ledger_io *io, int fd, const void *buf, size_t len, uint64_t off);

/* Looks key up in the checkpoint and in the index of the records after
 * it (one seed for both). On a corrupt checkpoint page, l->ck.bad is set
 * and the answer is "absent": callers rebuild (find_key). */
static int ix_find(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t *off)
{
    if (fab_lindex_find(&l->ix, key, hash, off))
        return 1;
    return l->ck.base != NULL && ckpt_find(l, key, hash, off) == 1;
}

/*
 * Replay state. Inserting a key into a large index is a cache miss on a
 * random slot, which dominates replay of small records; the records ahead
 * are already in the mapping, so their keys are hashed and their slots
 * prefetched PF_DEPTH records in advance (following the unvalidated length
 * fields: a wrong guess only wastes a prefetch, since the slot address is
 * masked into the table). A hash made ahead is used only for the key it
 * was made from: the bytes ahead may change before the replay gets there
 * (past the last record lie the reserved zeros, where another process's
 * append through the mapping lands while an unlocked replay runs), and a
 * key indexed under another key's hash is never found again. The index is
 * also sized once from an early estimate instead of doubling its way up,
 * rehashing every key each time.
 */
#define PF_DEPTH 8

typedef struct replay_ctx {
    fab_ledger *l;
    const uint8_t *base;
    uint64_t len, start;
    uint64_t pf;                 /* next offset to hash and prefetch */
    uint64_t ring_off[PF_DEPTH]; /* offsets hashed ahead, in order */
    uint64_t ring_hash[PF_DEPTH];
    uint8_t ring_key[PF_DEPTH][32]; /* the bytes each was made from */
    unsigned head, n;
    uint64_t seen;               /* records replayed */
    int sized;                   /* the size estimate was made */
} replay_ctx;

/* The index hash of the key of the record at off (validated), from the
 * ring when it was hashed ahead from the same bytes; then refills the
 * ring. */
static uint64_t replay_hash(replay_ctx *r, uint64_t off, const uint8_t *key)
{
    fab_lindex *ix = &r->l->ix;
    uint64_t hash = 0;
    while (r->n && r->ring_off[r->head] <= off) {
        if (r->ring_off[r->head] == off && memcmp(r->ring_key[r->head], key, 32) == 0)
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
        unsigned tail = (r->head + r->n) % PF_DEPTH;
        /* hashed from a copy: the mapping may change under the hash */
        memcpy(r->ring_key[tail], p + FAB_LEDGER_REC_HEADER, 32);
        uint64_t h = fab_lindex_hash(ix, r->ring_key[tail]);
        if (ix->slots)
            __builtin_prefetch(&ix->slots[(size_t)h & ix->mask], 1);
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

/* ---- the index's entries (spec: Deleting and expiry) ------------------ */

static uint64_t realtime_ns(void) { return now_ns(CLOCK_REALTIME); }

/* 1 when the record at off (validated) is a REPLY whose expiry has passed. */
static int rec_expired(const fab_ledger *l, uint64_t off)
{
    const uint8_t *p = l->map->base + off;
    if (p[4] != FAB_REC_REPLY || !(p[5] & FAB_REC_FLAG_EXPIRES))
        return 0;
    return realtime_ns() >= fab_load_le64(p + FAB_LEDGER_REC_OVERHEAD);
}

/* 1 when the record at off (validated) is a commit in force: a REPLY or a
 * stream END, not expired. */
static int rec_live(const fab_ledger *l, uint64_t off)
{
    int t = l->map->base[off + 4];
    return (t == FAB_REC_REPLY || t == FAB_REC_STREAM_END) && !rec_expired(l, off);
}

static int check_lazy(fab_ledger *l, uint64_t off, fab_ledger_error *err);
static void ckpt_drop(ckpt *c);

/* The entry deciding key: 1 and *at (validated; *in_ix says where), 0
 * when none, or FAB_ECORRUPT (a corrupt checkpoint page or record). */
static int index_entry(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t *at,
                       int *in_ix)
{
    *in_ix = 0;
    if (fab_lindex_find(&l->ix, key, hash, at)) {
        *in_ix = 1;
        return 1;
    }
    if (l->ck.base == NULL)
        return 0;
    if (ckpt_find(l, key, hash, at) != 1)
        return l->ck.bad ? FAB_ECORRUPT : 0;
    return check_lazy(l, *at, NULL) == FAB_OK ? 1 : FAB_ECORRUPT;
}

/* A new entry for key (absent from ix); shadows is 1 when it shadows a
 * checkpoint entry. */
static int index_insert(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t off,
                        int shadows)
{
    int rc = fab_lindex_insert(&l->ix, key, hash, off, NULL);
    if (rc < 0)
        return rc;
    if (shadows)
        l->shadow++;
    return FAB_OK;
}

/* The commit at off decides key, whose entry (a tombstone or an expired
 * commit; in ix or else in the checkpoint) it replaces. */
static int index_commit(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t off,
                        int in_ix)
{
    if (!in_ix)
        return index_insert(l, key, hash, off, 1);
    uint64_t at;
    if (fab_lindex_find(&l->ix, key, hash, &at) && l->map->base[at + 4] == FAB_REC_TOMBSTONE)
        l->tomb--;
    fab_lindex_set(&l->ix, key, hash, off);
    return FAB_OK;
}

/* The tombstone at off ends key's commit (in ix or else in the checkpoint). */
static int index_tombstone(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t off,
                           int in_ix)
{
    int rc = in_ix ? (fab_lindex_set(&l->ix, key, hash, off), FAB_OK)
                   : index_insert(l, key, hash, off, 1);
    if (rc == FAB_OK)
        l->tomb++;
    return rc;
}

/* A clear: every entry goes (the checkpoint too; its seed stays). */
static void index_clear(fab_ledger *l)
{
    uint64_t seed = l->ix.seed;
    fab_lindex_eq_fn eq = l->ix.eq;
    void *ctx = l->ix.ctx;
    fab_lindex_destroy(&l->ix);
    fab_lindex_init(&l->ix, eq, ctx);
    l->ix.seed = seed;
    if (l->ck.base)
        ckpt_drop(&l->ck);
    l->tomb = l->shadow = 0;
    l->n_pending = 0; /* records waiting for their sync were before it */
}

/* Keys held by the index (expired ones included until compacted). */
static uint64_t index_keys(const fab_ledger *l)
{
    uint64_t n = l->ix.count + (l->ck.base ? l->ck.count : 0);
    uint64_t dead = l->tomb + l->shadow + l->n_pending;
    return n > dead ? n - dead : 0;
}

/* The index entry of the commit (REPLY or END) at off, replayed: the
 * first commit in force wins. */
static int replay_commit(fab_ledger *l, uint64_t off, const uint8_t *key, uint64_t hash)
{
    uint64_t at;
    int in_ix = 0;
    int found = index_entry(l, key, hash, &at, &in_ix);
    if (found < 0)
        return found;
    if (!found)
        return index_insert(l, key, hash, off, 0);
    if (at == off) /* this handle's own, appended lazily: seen again (replay_scan) */
        return FAB_OK;
    if (l->map->base[at + 4] != FAB_REC_TOMBSTONE && !rec_expired(l, at)) {
        l->duplicates++; /* first write wins */
        return FAB_OK;
    }
    return index_commit(l, key, hash, off, in_ix); /* after a delete or an expiry */
}

/* Makes the deferred index entries, in order (their slots prefetched
 * first). 0 or an error (the entries not made yet are kept). */
static int defer_index(fab_ledger *l)
{
    uint64_t *hash = l->def_hash;
    if (l->def_seed != l->ix.seed) { /* re-seeded since (a rebuild) */
        for (unsigned i = 0; i < l->n_def; i++)
            hash[i] = fab_lindex_hash(&l->ix,
                                      l->map->base + l->def_off[i] + FAB_LEDGER_REC_HEADER);
        l->def_seed = l->ix.seed;
    }
    for (unsigned i = 0; l->ix.slots && i < l->n_def; i++)
        __builtin_prefetch(&l->ix.slots[(size_t)hash[i] & l->ix.mask], 1);
    unsigned done = 0;
    int rc = FAB_OK;
    for (; done < l->n_def; done++) {
        uint64_t off = l->def_off[done];
        rc = replay_commit(l, off, l->map->base + off + FAB_LEDGER_REC_HEADER, hash[done]);
        if (rc < 0)
            break;
    }
    l->n_def -= done;
    memmove(l->def_off, l->def_off + done, l->n_def * sizeof(l->def_off[0]));
    memmove(l->def_hash, l->def_hash + done, l->n_def * sizeof(l->def_hash[0]));
    return rc;
}

/* Moves pos past a salvage-skipped region that starts there. Under the lock. */
static uint64_t skip_bad(const fab_ledger *l, uint64_t pos)
{
    for (size_t i = 0; i < l->n_skips; i++)
        if (l->skips[i].start == pos)
            return l->skips[i].end;
    return pos;
}

/*
 * 1 when salvage cut the stream whose STREAM_END record is at end_off short
 * (payload: the END's, its BEGIN's offset then its item count): a skipped
 * region holds its BEGIN, or lies between its BEGIN and its END and took
 * some of its chunks with it. Such an END commits nothing, as a stream
 * without its END (docs/spec/ledger.md, Replay). 0 without a skipped region
 * there: a stream's chunks lie between its BEGIN and its END. During the
 * replay, whose scan validated every record outside the skipped regions
 * below end_off.
 */
static int salvage_cut_stream(const fab_ledger *l, uint64_t end_off, const uint8_t *payload)
{
    uint64_t begin = fab_load_le64(payload), count = fab_load_le64(payload + 8);
    int cut = 0;
    for (size_t i = 0; i < l->n_skips; i++) {
        if (l->skips[i].start <= begin && begin < l->skips[i].end)
            return 1; /* its BEGIN is gone */
        if (l->skips[i].end > begin && l->skips[i].start < end_off)
            cut = 1;
    }
    if (!cut)
        return 0;
    uint64_t seen = 0, pos = begin;
    while ((pos = skip_bad(l, pos)) < end_off) {
        const uint8_t *p = l->map->base + pos;
        if (p[4] == FAB_REC_STREAM_CHUNK && fab_load_le64(p + FAB_LEDGER_REC_OVERHEAD) == begin)
            seen++;
        pos += FAB_LEDGER_REC_OVERHEAD + rec_payload_len(p);
    }
    return seen != count;
}

static int replay_record(void *ctx, uint64_t off, int type, const uint8_t *key,
                         const uint8_t *payload, size_t len)
{
    replay_ctx *r = ctx;
    fab_ledger *l = r->l;
    r->seen++;
    if (!r->sized)
        replay_estimate(r, off);
    if (type == FAB_REC_STREAM_END && l->n_skips && salvage_cut_stream(l, off, payload)) {
        l->last_rec = off; /* a record all the same, never held */
        return FAB_OK;
    }
    if (l->defer_ix && type != FAB_REC_TOMBSTONE) {
        l->last_rec = off;
        if (type != FAB_REC_REPLY && type != FAB_REC_STREAM_END)
            return FAB_OK;
        int rc = l->n_def == DEFER_MAX ? defer_index(l) : FAB_OK;
        /* room for every deferred entry and the appender's own: making
         * them cannot fail for want of memory */
        if (rc == FAB_OK)
            rc = fab_lindex_reserve(&l->ix, l->ix.count + l->n_def + 2);
        if (rc != FAB_OK)
            return rc;
        if (l->n_def == 0 || l->def_seed != l->ix.seed) {
            for (unsigned i = 0; i < l->n_def; i++)
                l->def_hash[i] = fab_lindex_hash(
                    &l->ix, l->map->base + l->def_off[i] + FAB_LEDGER_REC_HEADER);
            l->def_seed = l->ix.seed;
        }
        uint64_t hash = fab_lindex_hash(&l->ix, key); /* a validated record's */
        if (l->ix.slots)
            __builtin_prefetch(&l->ix.slots[(size_t)hash & l->ix.mask], 1);
        l->def_hash[l->n_def] = hash;
        l->def_off[l->n_def++] = off;
        return FAB_OK;
    }
    if (l->n_def) { /* a tombstone comes after the deferred commits */
        int rc = defer_index(l);
        if (rc < 0)
            return rc;
    }
    uint64_t hash = replay_hash(r, off, key);
    l->last_rec = off;
    if (type == FAB_REC_TOMBSTONE && len == 1) { /* a clear */
        index_clear(l);
        return FAB_OK;
    }
    if (type != FAB_REC_REPLY && type != FAB_REC_STREAM_END && type != FAB_REC_TOMBSTONE)
        return FAB_OK;
    if (type == FAB_REC_TOMBSTONE) {
        uint64_t at;
        int in_ix = 0;
        int found = index_entry(l, key, hash, &at, &in_ix);
        if (found < 0)
            return found;
        /* ends a commit in force or expired; nothing to end otherwise */
        if (found && l->map->base[at + 4] != FAB_REC_TOMBSTONE)
            return index_tombstone(l, key, hash, off, in_ix);
        return FAB_OK;
    }
    return replay_commit(l, off, key, hash);
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

/*
 * The mapping guard's sentinel for [0, l->end): the 8 bytes that end with
 * the last non-zero byte of the last page of that range. If the file
 * shrinks below that byte, reading it faults (its page is beyond the end)
 * or reads zero (the end's page): either way it differs; if the file
 * shrinks only above it, every byte below l->end still reads as it was
 * (the bytes cut were zeros, and no page below l->end lies wholly beyond
 * the new end), so nothing indexed changed. Called when the file is known
 * to hold [0, end): just replayed or written. Under the lock.
 */
static void sentinel_set(fab_ledger *l)
{
    l->sent_ok = 0;
    if (l->map == NULL || l->end < 8)
        return;
    const uint8_t *b = l->map->base;
    uint64_t lo = (l->end - 1) & ~(page_size - 1);
    for (uint64_t z = l->end; z > lo; z--) {
        if (b[z - 1] != 0) {
            l->sent_at = z >= 8 ? z - 8 : 0;
            memcpy(&l->sent_val, b + l->sent_at, 8);
            l->sent_ok = 1;
            return;
        }
    }
}

/* sentinel_set after an append, from the bytes just written (tail: the n
 * bytes that end at l->end), without reading them back through the
 * mapping (which would fault a new page in for every few records). The
 * same bytes, so the same sentinel; when the sentinel would need bytes
 * before tail, sentinel_set. */
static void sentinel_written(fab_ledger *l, const uint8_t *tail, size_t n)
{
    uint64_t end = l->end;
    if (l->map == NULL || end < 8 || n > end) {
        sentinel_set(l);
        return;
    }
    uint64_t lo = (end - 1) & ~(page_size - 1), start = end - n;
    for (uint64_t z = end; z > lo && z > start; z--) {
        if (tail[z - 1 - start] != 0) {
            if (z < 8 || z - 8 < start)
                break;
            l->sent_at = z - 8;
            memcpy(&l->sent_val, tail + (z - 8 - start), 8);
            l->sent_ok = 1;
#ifdef FAB_DEBUG
            uint64_t at = l->sent_at, val = l->sent_val;
            sentinel_set(l); /* the tests check that both agree */
            FAB_ASSERT(l->sent_ok && l->sent_at == at && l->sent_val == val);
#endif
            return;
        }
    }
    sentinel_set(l);
}

/* 1 when the sentinel reads as it was and the header's `replaced` word
 * as it was when the handle read the header (a compaction that renamed a
 * new file over this one changes it: mark_replaced), 0 when either
 * differs, -1 when reading faulted (a page beyond the file's end). Under
 * the lock. */
static int sentinel_read(const fab_ledger *l)
{
    bus_guard g;
    if (sigsetjmp(g.jb, 0) != 0)
        return -1;
    bus_enter(&g);
    uint64_t v;
    uint32_t m;
    memcpy(&v, l->map->base + l->sent_at, 8);
    memcpy(&m, l->map->base + HDR_REPLACED, 4);
    bus_leave();
    uint32_t was;
    memcpy(&was, l->header + HDR_REPLACED, 4);
    return v == l->sent_val && m == was;
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
    int rc = lmap_new(l->fd, len, l->mode == FAB_LEDGER_WRITE, &m);
    if (rc != FAB_OK)
        return sys_fail(err, errno ? errno : ENOMEM, "mapping the ledger");
    fab_lmap_release(l->map);
    l->map = m;
    l->populated = 0;
    return FAB_OK;
}

/* Replays [l->end, size) into the index. Under the lock (or before sharing). */
static int replay_scan(fab_ledger *l, uint64_t size, int quick, fab_ledger_progress_fn progress,
                       void *pctx, fab_ledger_scan_result *res, fab_ledger_error *err)
{
    memset(res, 0, sizeof(*res));
    int rc = ensure_map(l, size, err);
    if (rc != FAB_OK)
        return rc;
    /* After lazy appends, from the first record not replayed: this
     * handle's own records after it are seen again, and counted once. */
    uint64_t top = l->end, own = 0;
    if (l->lazy_from != NONE) {
        l->end = l->lazy_from;
        own = l->gap_records;
        l->lazy_from = NONE;
        l->gap_records = 0;
    }
    replay_ctx r = {.l = l, .base = l->map->base, .len = size, .start = l->end};
    scan_state s = {l->map->base, size, l->recover, quick, replay_record, &r, progress, pctx,
                    replay_skip, 0};
    /* Prefaulting costs two madvise calls: worth it for an open, not for
     * the few records another writer appended since this one looked. */
    s.prefault = size > l->end && size - l->end >= PREFAULT_MIN;
    rc = scan(&s, l->end, res, err);
    if (rc != FAB_OK) {
        if (l->end < top) { /* nothing changed: the gap stays to replay */
            l->lazy_from = l->end;
            l->gap_records = own;
            l->end = top;
        }
        return rc;
    }
    FAB_ASSERT(res->valid_end >= top || own == 0 || l->recover != FAB_RECOVER_STRICT);
    /* (a scan that stopped short of the handle's own records, on damage a
     * recover mode other than strict passes over, met fewer than them) */
    l->records += res->records > own ? res->records - own : 0;
    l->salvage_skips += res->salvage_skips;
    l->salvage_bytes += res->salvage_bytes;
    l->end = res->valid_end;
    sentinel_set(l);
    /* Records of this process still waiting for their sync stay invisible;
     * the sync that makes them visible covers everything before it. */
    if (l->n_pending == 0)
        l->visible_end = l->end;
    l->torn_bytes = res->torn_at != NONE ? size - res->torn_at : 0;
    l->scanned_size = size;
    return FAB_OK;
}

/* ======================================================================== */
/* Checkpoint (spec: Checkpoint)                                             */
/* ======================================================================== */

static uint16_t fab_load_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static void fab_store_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static const uint8_t CKPT_MAGIC[8] = {0x89, 'F', 'A', 'B', 'C', 'K', 'P', '\n'};
#define CKPT_VERSION 1
#define CKPT_HEAD 4096
#define CKPT_PAGE 4096
#define CKPT_MIN_CAP 256      /* slots: a whole number of pages */
#define CKPT_SAMPLES 16
#define CKPT_SAMPLE_LEN 512
#define SEED_CKPT 0x434B5054u  /* "CKPT" */
#define SEED_CKPT_PAGE 0x50414745u /* "PAGE" */
/* A handle that replayed at least this many records at open writes a
 * checkpoint (best effort). */
#define CKPT_AUTO 65536

static void ckpt_drop(ckpt *c)
{
    if (c->base)
        munmap(c->base, c->len);
    free(c->verified);
    int bad = c->bad;
    memset(c, 0, sizeof(*c));
    c->bad = bad;
}

/* CRC32C of CKPT_SAMPLES windows spread evenly over [64, covered) of the
 * ledger: ties a checkpoint to the ledger's content at a few page reads. */
static uint32_t ckpt_samples(const uint8_t *base, uint64_t covered)
{
    uint32_t crc = SEED_CKPT;
    uint64_t span = covered - FAB_LEDGER_HEADER_SIZE;
    for (int i = 0; i < CKPT_SAMPLES; i++) {
        uint64_t at = FAB_LEDGER_HEADER_SIZE + span * (uint64_t)i / CKPT_SAMPLES;
        uint64_t n = covered - at < CKPT_SAMPLE_LEN ? covered - at : CKPT_SAMPLE_LEN;
        crc = fab_crc32c(crc, base + at, (size_t)n);
    }
    return crc;
}

/* Checks the page of slots holding slot i once. 0, or -1 (l->ck.bad). */
static int ckpt_page_ok(ckpt *c, uint64_t i)
{
    uint64_t page = i * sizeof(fab_lindex_slot) / CKPT_PAGE;
    if (c->verified[page >> 3] & (1u << (page & 7)))
        return 0;
    const uint8_t *p = (const uint8_t *)c->slots + page * CKPT_PAGE;
    if (fab_crc32c(SEED_CKPT_PAGE, p, CKPT_PAGE) != fab_load_le32(c->page_crcs + 4 * page)) {
        c->bad = 1;
        return -1;
    }
    c->verified[page >> 3] |= (uint8_t)(1u << (page & 7));
    return 0;
}

static int ckpt_probe(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t *off);

/* Probes the checkpoint: 1 and *off when found, 0 when absent or when a
 * page is corrupt (then l->ck.bad is set). The checkpoint file may have
 * been shrunk by another program: a probe that faults counts as a
 * corrupt page (the index is rebuilt from the ledger). */
static int ckpt_find(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t *off)
{
    bus_guard g;
    if (sigsetjmp(g.jb, 0) != 0) {
        l->ck.bad = 1;
        return 0;
    }
    bus_enter(&g);
    int found = ckpt_probe(l, key, hash, off);
    bus_leave();
    return found;
}

static int ckpt_probe(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t *off)
{
    ckpt *c = &l->ck;
    for (uint64_t i = hash & c->mask, n = 0; n <= c->mask; i = (i + 1) & c->mask, n++) {
        if (ckpt_page_ok(c, i) < 0)
            return 0;
        const fab_lindex_slot *sl = &c->slots[i];
        if (sl->hash == 0)
            return 0;
        if (sl->hash == hash) {
            if (sl->value < FAB_LEDGER_HEADER_SIZE || sl->value >= c->covered ||
                c->covered - sl->value < FAB_LEDGER_REC_OVERHEAD) {
                c->bad = 1;
                return 0;
            }
            if (key_eq(l, sl->value, key)) {
                *off = sl->value;
                return 1;
            }
        }
    }
    return 0;
}

static char *ckpt_path_of(const char *path)
{
    return path_with(path, ".ckpt");
}

/*
 * Checks a checkpoint's header h (its file fsize bytes) against the
 * ledger's first size bytes (l->header, mapped): 0 when it describes a
 * prefix of them, -1 when not.
 */
static int ckpt_head_ok(const fab_ledger *l, const uint8_t h[CKPT_HEAD], uint64_t fsize,
                        uint64_t size)
{
    if (fsize < CKPT_HEAD || memcmp(h, CKPT_MAGIC, 8) != 0 ||
        fab_load_le16(h + 8) != CKPT_VERSION || fab_load_le32(h + 12) != CKPT_PAGE ||
        fab_load_le32(h + CKPT_HEAD - 4) != fab_crc32c(SEED_CKPT, h, CKPT_HEAD - 4))
        return -1;
    uint64_t cap = fab_load_le64(h + 24), count = fab_load_le64(h + 32);
    uint64_t covered = fab_load_le64(h + 40), last = fab_load_le64(h + 128);
    if (cap < CKPT_MIN_CAP || (cap & (cap - 1)) || cap > ((uint64_t)1 << 40) ||
        count > cap / 4 * 3 || covered > size || covered < FAB_LEDGER_HEADER_SIZE ||
        memcmp(h + 64, l->header, FAB_LEDGER_HEADER_SIZE) != 0)
        return -1;
    uint64_t pages = cap * sizeof(fab_lindex_slot) / CKPT_PAGE;
    if (fsize != CKPT_HEAD + cap * sizeof(fab_lindex_slot) + 4 * pages)
        return -1;
    /* The last record it covers must end exactly at covered, byte for
     * byte as then, and the sampled windows must match. */
    const uint8_t *base = l->map->base;
    if (covered > FAB_LEDGER_HEADER_SIZE) {
        if (last < FAB_LEDGER_HEADER_SIZE || last >= covered ||
            covered - last < FAB_LEDGER_REC_OVERHEAD ||
            memcmp(base + last, h + 136, FAB_LEDGER_REC_HEADER) != 0 ||
            last + FAB_LEDGER_REC_OVERHEAD + rec_payload_len(base + last) != covered ||
            fab_load_le32(base + last + 16) != fab_crc32c(SEED_HEAD, base + last, 16))
            return -1;
        if (ckpt_samples(base, covered) != fab_load_le32(h + 156))
            return -1;
    }
    return 0;
}

/* Opens the checkpoint beside the ledger and reads its header: the fd (its
 * size in *fsize), or -1 when there is none (errno) or it is too short. */
static int ckpt_open_head(const fab_ledger *l, uint8_t h[CKPT_HEAD], uint64_t *fsize)
{
    char *cp = ckpt_path_of(l->path);
    if (cp == NULL)
        return -1;
    int fd = open_file(cp, O_RDONLY | O_CLOEXEC);
    free(cp);
    if (fd < 0)
        return -1;
    struct stat sb;
    *fsize = 0;
    if (fstat(fd, &sb) == 0 && (uint64_t)sb.st_size >= CKPT_HEAD &&
        pread(fd, h, CKPT_HEAD, 0) == CKPT_HEAD)
        *fsize = (uint64_t)sb.st_size;
    else
        memset(h, 0, CKPT_HEAD); /* fails every check */
    return fd;
}

/*
 * Maps the checkpoint beside the ledger when it describes a prefix of the
 * file (l->header, size bytes, mapped): sets l->ck and prepares the
 * replay of the rest. Anything wrong: no checkpoint (ckpt_state says why).
 */
static void ckpt_load(fab_ledger *l, uint64_t size)
{
    uint8_t h[CKPT_HEAD];
    uint64_t fsize = 0;
    int fd = ckpt_open_head(l, h, &fsize);
    if (fd < 0) {
        l->ckpt_state = FAB_CKPT_NONE;
        return;
    }
    l->ckpt_state = FAB_CKPT_IGNORED;
    if (ckpt_head_ok(l, h, fsize, size) != 0)
        goto out;
    uint64_t cap = fab_load_le64(h + 24), count = fab_load_le64(h + 32);
    uint64_t covered = fab_load_le64(h + 40), last = fab_load_le64(h + 128);
    uint64_t pages = cap * sizeof(fab_lindex_slot) / CKPT_PAGE;
    uint64_t want = fsize;
    uint8_t *m = mmap(NULL, (size_t)want, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        goto out;
    uint8_t *verified = calloc((size_t)(pages + 7) / 8, 1);
    if (verified == NULL) {
        munmap(m, (size_t)want);
        goto out;
    }
    (void)madvise(m, (size_t)want, MADV_RANDOM);
    ckpt *c = &l->ck;
    c->base = m;
    c->len = (size_t)want;
    c->slots = (const fab_lindex_slot *)(m + CKPT_HEAD);
    c->mask = cap - 1;
    c->count = count;
    c->covered = covered;
    c->records = fab_load_le64(h + 48);
    c->duplicates = fab_load_le64(h + 56);
    c->page_crcs = m + CKPT_HEAD + cap * sizeof(fab_lindex_slot);
    c->verified = verified;
    c->bad = 0;
    /* the records after it go to an index with the same seed */
    l->ix.seed = fab_load_le64(h + 16);
    l->end = l->visible_end = covered;
    l->sent_ok = 0;
    l->records = c->records;
    l->duplicates = c->duplicates;
    l->last_rec = covered > FAB_LEDGER_HEADER_SIZE ? last : 0;
    l->lazy_end = covered;
    l->ckpt_state = FAB_CKPT_USED;
out:
    close(fd);
}

/* Raw insert of a (hash, offset) slot into a table known not to hold the
 * key (no compare). */
static void slot_put(fab_lindex_slot *slots, uint64_t mask, uint64_t hash, uint64_t value)
{
    uint64_t i = hash & mask;
    while (slots[i].hash != 0)
        i = (i + 1) & mask;
    slots[i].hash = hash;
    slots[i].value = value;
}

/*
 * Writes a checkpoint of everything replayed (the checkpoint in use and
 * the index after it) beside the ledger: a temporary file renamed over
 * PATH.ckpt. Not synced: a torn one fails its checksums and is rebuilt.
 * Under the lock. 0, or an error (the ledger is unaffected).
 */
static int fill_gap_locked(fab_ledger *l, fab_ledger_error *err);

static int ckpt_write_locked(fab_ledger *l, fab_ledger_error *err)
{
    int gap = fill_gap_locked(l, err); /* a checkpoint covers everything before its end */
    if (gap != FAB_OK)
        return gap;
    if (!l->use_ckpt || l->n_skips || l->n_pending || l->end != l->visible_end ||
        l->ck.bad) {
        set_err(err, FAB_ESTATE, 0, 0, 0,
                "no checkpoint now: the ledger was salvaged, has records waiting for their "
                "sync, or checkpoints are off");
        return FAB_ESTATE;
    }
    /* Entries of ix shadow the checkpoint's (a delete, a re-record); the
     * tombstones themselves are left out: the merged table has nothing
     * for them to shadow. */
    uint64_t count = l->ix.count + (l->ck.base ? l->ck.count : 0);
    uint64_t cap = CKPT_MIN_CAP;
    while (cap / 4 * 3 < count + 1)
        cap *= 2;
    uint64_t pages = cap * sizeof(fab_lindex_slot) / CKPT_PAGE;
    size_t total = (size_t)(CKPT_HEAD + cap * sizeof(fab_lindex_slot) + 4 * pages);
    uint8_t *buf = calloc(1, total);
    if (buf == NULL)
        return FAB_ENOMEM;
    fab_lindex_slot *slots = (fab_lindex_slot *)(buf + CKPT_HEAD);
    int rc = FAB_OK;
    uint64_t written = 0;
    if (l->ck.base) {
        for (uint64_t i = 0; i <= l->ck.mask; i++) {
            if (ckpt_page_ok(&l->ck, i) < 0) {
                rc = FAB_ECORRUPT;
                set_err(err, rc, 0, 0, 0, "the checkpoint in use is corrupt");
                goto out;
            }
            const fab_lindex_slot *sl = &l->ck.slots[i];
            uint64_t at;
            if (sl->hash == 0)
                continue;
            if (sl->value < FAB_LEDGER_HEADER_SIZE || sl->value >= l->ck.covered) {
                rc = FAB_ECORRUPT;
                set_err(err, rc, 0, 0, 0, "the checkpoint in use is corrupt");
                goto out;
            }
            if (l->shadow &&
                fab_lindex_find(&l->ix, l->map->base + sl->value + FAB_LEDGER_REC_HEADER,
                                sl->hash, &at))
                continue;
            slot_put(slots, cap - 1, sl->hash, sl->value);
            written++;
        }
    }
    for (size_t i = 0; l->ix.slots && i <= l->ix.mask; i++) {
        const fab_lindex_slot *sl = &l->ix.slots[i];
        if (sl->hash && l->map->base[sl->value + 4] != FAB_REC_TOMBSTONE) {
            slot_put(slots, cap - 1, sl->hash, sl->value);
            written++;
        }
    }
    count = written;
    uint8_t *h = buf;
    memcpy(h, CKPT_MAGIC, 8);
    fab_store_le16(h + 8, CKPT_VERSION);
    fab_store_le32(h + 12, CKPT_PAGE);
    fab_store_le64(h + 16, l->ix.seed);
    fab_store_le64(h + 24, cap);
    fab_store_le64(h + 32, count);
    fab_store_le64(h + 40, l->end);
    fab_store_le64(h + 48, l->records);
    fab_store_le64(h + 56, l->duplicates);
    memcpy(h + 64, l->header, FAB_LEDGER_HEADER_SIZE);
    if (l->end > FAB_LEDGER_HEADER_SIZE) {
        fab_store_le64(h + 128, l->last_rec);
        memcpy(h + 136, l->map->base + l->last_rec, FAB_LEDGER_REC_HEADER);
        fab_store_le32(h + 156, ckpt_samples(l->map->base, l->end));
    }
    fab_store_le32(h + CKPT_HEAD - 4, fab_crc32c(SEED_CKPT, h, CKPT_HEAD - 4));
    uint8_t *crcs = buf + CKPT_HEAD + cap * sizeof(fab_lindex_slot);
    for (uint64_t p = 0; p < pages; p++)
        fab_store_le32(crcs + 4 * p, fab_crc32c(SEED_CKPT_PAGE, (uint8_t *)slots + p * CKPT_PAGE,
                                                CKPT_PAGE));
    char *cp = ckpt_path_of(l->path);
    char suffix[48];
    snprintf(suffix, sizeof(suffix), ".tmp.%ld", (long)getpid());
    char *tmp = cp ? path_with(cp, suffix) : NULL;
    if (tmp == NULL) {
        free(cp);
        rc = FAB_ENOMEM;
        goto out;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int e = fd < 0 ? errno : 0;
    if (fd >= 0) {
        (void)ofd_lock(fd, F_WRLCK, 0, 0);
        e = write_all(&default_io, fd, buf, total, 0);
        close(fd);
        if (e == 0 && rename(tmp, cp) < 0)
            e = errno;
        if (e)
            unlink(tmp);
    }
    free(tmp);
    free(cp);
    if (e)
        rc = sys_fail(err, e, "writing the ledger's checkpoint");
    else
        l->ckpt_written++;
out:
    free(buf);
    return rc;
}

static int replaced(const fab_ledger *l);

/*
 * Best effort, when a writer closes and after a compaction: writes a
 * checkpoint when the next open would otherwise replay CKPT_AUTO records or
 * more, counted from the checkpoint on disk that describes this handle's
 * view (from the start without one). A checkpoint on disk that covers more
 * than this handle has replayed, or a path now naming another file, is
 * left alone. Under the lock.
 */
static void ckpt_auto_locked(fab_ledger *l)
{
    if (!l->use_ckpt || l->forked || l->failed || l->fd < 0 || l->map == NULL || replaced(l))
        return;
    uint8_t h[CKPT_HEAD];
    uint64_t fsize = 0, covered_records = 0;
    int fd = ckpt_open_head(l, h, &fsize);
    if (fd >= 0) {
        close(fd);
        if (fab_load_le64(h + 40) > l->end && memcmp(h + 64, l->header, 64) == 0 &&
            fab_load_le32(h + CKPT_HEAD - 4) == fab_crc32c(SEED_CKPT, h, CKPT_HEAD - 4))
            return; /* another handle saw more */
        if (ckpt_head_ok(l, h, fsize, l->end) == 0)
            covered_records = fab_load_le64(h + 48);
    }
    if (l->records >= covered_records + CKPT_AUTO)
        (void)ckpt_write_locked(l, NULL);
}

/* Forgets the checkpoint (found corrupt) and rebuilds the index from the
 * whole ledger. The file and its offsets stay: cursors stay valid. */
static int rebuild_locked(fab_ledger *l, fab_ledger_scan_result *res, fab_ledger_error *err)
{
    ckpt_drop(&l->ck);
    l->ck.bad = 0;
    l->lazy_end = 0;
    l->ckpt_state = FAB_CKPT_REBUILT;
    fab_lindex_eq_fn eq = l->ix.eq;
    void *ctx = l->ix.ctx;
    fab_lindex_destroy(&l->ix);
    fab_lindex_init(&l->ix, eq, ctx);
    l->end = FAB_LEDGER_HEADER_SIZE;
    l->sent_ok = 0;
    l->tomb = l->shadow = 0;
    l->records = l->duplicates = l->last_rec = 0;
    l->salvage_skips = l->salvage_bytes = 0;
    l->n_skips = 0;
    l->n_def = 0; /* replayed again */
    l->lazy_from = NONE; /* the whole file, this handle's records with it */
    l->gap_records = 0;
    uint64_t size = l->scanned_size;
    struct stat sb;
    if (fstat(l->fd, &sb) == 0)
        size = (uint64_t)sb.st_size;
    fab_ledger_scan_result mine;
    return replay_scan(l, size, 0, NULL, NULL, res ? res : &mine, err);
}

/* Replays [l->end, size) into the index (spec: Replay). A corrupt
 * checkpoint page met on the way drops the checkpoint and replays the
 * whole file instead. Under the lock (or before sharing). */
static int replay(fab_ledger *l, uint64_t size, int quick, fab_ledger_progress_fn progress,
                  void *pctx, fab_ledger_scan_result *res, fab_ledger_error *err)
{
    int rc = replay_scan(l, size, quick, progress, pctx, res, err);
    if (rc == FAB_OK || !l->ck.bad)
        return rc;
    return rebuild_locked(l, res, err);
}

/* ix_find, rebuilding first when the checkpoint turned out corrupt. */
static int find_key(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t *off,
                    fab_ledger_error *err)
{
    int found = ix_find(l, key, hash, off);
    if (!l->ck.bad)
        return found;
    int rc = rebuild_locked(l, NULL, err);
    if (rc < 0)
        return rc;
    return fab_lindex_find(&l->ix, key, fab_lindex_hash(&l->ix, key), off);
}

/* ======================================================================== */
/* Following the file: others' appends, shrinking, replacement               */
/* ======================================================================== */

static int check_header(const uint8_t *h, uint64_t avail, fab_ledger_error *err);
static int take_writer_lock(fab_ledger *l, int fd, const struct stat *sb, shl *sh,
                            fab_ledger_error *err);

/* The state that belongs to one file, saved while a reload builds the next. */
typedef struct file_view {
    int fd;
    dev_t dev;
    ino_t ino;
    fab_lmap *map;
    fab_lindex ix;
    uint64_t end, visible_end, scanned_size, reserved;
    skip_region *skips;
    size_t n_skips, cap_skips;
    uint64_t records, duplicates, torn_bytes, salvage_skips, salvage_bytes;
    size_t n_pending;
    uint64_t tomb, shadow;
    ckpt ck;
    uint64_t lazy_end, last_rec;
    uint64_t lazy_from, gap_records, seen_clears;
    uint64_t sent_at, sent_val;
    int sent_ok;
    shl sh;
    uint8_t header[FAB_LEDGER_HEADER_SIZE];
} file_view;

static void view_take(fab_ledger *l, file_view *v)
{
    v->fd = l->fd;
    v->dev = l->dev;
    v->ino = l->ino;
    v->map = l->map;
    v->ix = l->ix;
    v->end = l->end;
    v->visible_end = l->visible_end;
    v->scanned_size = l->scanned_size;
    v->reserved = l->reserved;
    v->skips = l->skips;
    v->n_skips = l->n_skips;
    v->cap_skips = l->cap_skips;
    v->records = l->records;
    v->duplicates = l->duplicates;
    v->torn_bytes = l->torn_bytes;
    v->salvage_skips = l->salvage_skips;
    v->salvage_bytes = l->salvage_bytes;
    v->n_pending = l->n_pending;
    v->tomb = l->tomb;
    v->shadow = l->shadow;
    v->ck = l->ck;
    v->lazy_end = l->lazy_end;
    v->last_rec = l->last_rec;
    v->lazy_from = l->lazy_from;
    v->gap_records = l->gap_records;
    v->seen_clears = l->seen_clears;
    v->sent_at = l->sent_at;
    v->sent_val = l->sent_val;
    v->sent_ok = l->sent_ok;
    v->sh = l->sh;
    memcpy(v->header, l->header, sizeof(v->header));
}

static void view_put(fab_ledger *l, const file_view *v)
{
    l->fd = v->fd;
    l->dev = v->dev;
    l->ino = v->ino;
    l->map = v->map;
    l->ix = v->ix;
    l->end = v->end;
    l->visible_end = v->visible_end;
    l->scanned_size = v->scanned_size;
    l->reserved = v->reserved;
    l->skips = v->skips;
    l->n_skips = v->n_skips;
    l->cap_skips = v->cap_skips;
    l->records = v->records;
    l->duplicates = v->duplicates;
    l->torn_bytes = v->torn_bytes;
    l->salvage_skips = v->salvage_skips;
    l->salvage_bytes = v->salvage_bytes;
    l->n_pending = v->n_pending;
    l->tomb = v->tomb;
    l->shadow = v->shadow;
    l->ck = v->ck;
    l->lazy_end = v->lazy_end;
    l->last_rec = v->last_rec;
    l->lazy_from = v->lazy_from;
    l->gap_records = v->gap_records;
    l->seen_clears = v->seen_clears;
    l->sent_at = v->sent_at;
    l->sent_val = v->sent_val;
    l->sent_ok = v->sent_ok;
    l->sh = v->sh;
    memcpy(l->header, v->header, sizeof(l->header));
}

static void view_free(file_view *v)
{
    if (v->fd >= 0)
        close(v->fd); /* drops this handle's OFD locks on the old file */
    shl_close(&v->sh, 1);
    fab_lmap_release(v->map);
    fab_lindex_destroy(&v->ix);
    free(v->skips);
    ckpt_drop(&v->ck);
}

/*
 * Moves the ledger to the file now at its path: a fresh replay of that file
 * (the same inode when the file shrank: its content may be anything now).
 * On failure the ledger keeps its current file. Waits for syncs in flight,
 * which use the old descriptor. Under the lock. Returns the records of the
 * new file (>= 0) or an error.
 */
static int reload_locked(fab_ledger *l, fab_ledger_error *err)
{
    while (l->syncing)
        pthread_cond_wait(&l->cond, &l->mu);
    int writer = l->mode == FAB_LEDGER_WRITE;
    int fd = open_file(l->path, (writer ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        return sys_fail(err, errno, "reopening the ledger, which was replaced or shrank");
    struct stat sb;
    uint8_t h[FAB_LEDGER_HEADER_SIZE];
    ssize_t got;
    int rc;
    if (fstat(fd, &sb) < 0 || (got = pread(fd, h, sizeof(h), 0)) < 0) {
        rc = sys_fail(err, errno, "reading the replaced ledger");
        close(fd);
        return rc;
    }
    if ((rc = check_header(h, (uint64_t)got, err)) != FAB_OK) {
        close(fd);
        return rc;
    }
    shl nsh = {.fd = -1};
    if (writer && (rc = take_writer_lock(l, fd, &sb, &nsh, err)) != FAB_OK) {
        close(fd);
        return rc;
    }
    file_view old;
    view_take(l, &old);
    l->fd = fd;
    l->sh = nsh;
    l->dev = sb.st_dev;
    l->ino = sb.st_ino;
    l->map = NULL;
    fab_lindex_init(&l->ix, old.ix.eq, old.ix.ctx);
    l->end = l->visible_end = FAB_LEDGER_HEADER_SIZE;
    l->lazy_from = NONE;
    l->gap_records = 0;
    l->seen_clears = NONE; /* another lock page */
    l->sent_ok = 0;
    l->scanned_size = 0;
    l->skips = NULL;
    l->n_skips = l->cap_skips = 0;
    l->records = l->duplicates = l->torn_bytes = l->salvage_skips = l->salvage_bytes = 0;
    l->n_pending = 0;
    l->tomb = l->shadow = 0;
    memset(&l->ck, 0, sizeof(l->ck));
    l->lazy_end = l->last_rec = 0;
    memcpy(l->header, h, sizeof(h));
    l->reserved = (uint64_t)sb.st_size;
    fab_ledger_scan_result res;
    rc = replay(l, (uint64_t)sb.st_size, 0, NULL, NULL, &res, err);
    if (rc != FAB_OK) {
        file_view fresh;
        view_take(l, &fresh);
        view_put(l, &old);
        view_free(&fresh);
        return rc;
    }
    view_free(&old);
    l->gen++;
    l->reloads++;
    l->looked_ns = 0; /* the first append to this file looks at it (fstat) */
    return (int)(l->records > INT32_MAX ? INT32_MAX : l->records);
}

/* 1 when the ledger's path names another file than the one open (a
 * compaction or a restore renamed a new file there), else 0. A path that
 * no longer exists keeps the open file. */
static int replaced(const fab_ledger *l)
{
    struct stat ps;
    return stat(l->path, &ps) == 0 && (ps.st_dev != l->dev || ps.st_ino != l->ino);
}

/*
 * After a compaction renamed a new file over the path and synced the
 * directory: when the open file has no name left (a second hard link
 * keeps it a ledger that others may still open: left alone), adds 1 to
 * its header's `replaced` word (and rewrites the header checksum, so the
 * file stays valid), one pwrite of 8 bytes. Every handle of the old file
 * compares that word at each call that reads the mapping (sentinel_read)
 * and moves to the file at the path. Best effort: a failure leaves the
 * others to find the new file at their next miss, append or refresh().
 */
static void mark_replaced(fab_ledger *l)
{
    struct stat sb;
    uint8_t h[FAB_LEDGER_HEADER_SIZE];
    if (fstat(l->fd, &sb) < 0 || sb.st_nlink != 0 ||
        pread(l->fd, h, sizeof(h), 0) != (ssize_t)sizeof(h) || check_header(h, sizeof(h), NULL))
        return;
    fab_store_le32(h + HDR_REPLACED, fab_load_le32(h + HDR_REPLACED) + 1);
    fab_store_le32(h + 60, fab_crc32c(SEED_FILE, h, 60));
    (void)write_all(&l->io, l->fd, h + HDR_REPLACED, 8, HDR_REPLACED);
}

/* 1 when the file has a non-zero byte where the next record would start
 * (the file is known to extend past l->end): read under the SIGBUS guard,
 * a fault is "no". Under the lock. */
static int record_at_end(fab_ledger *l)
{
    if (ensure_map(l, l->end + 1, NULL) != FAB_OK)
        return 1;
    bus_guard g;
    if (sigsetjmp(g.jb, 0) != 0)
        return 0;
    bus_enter(&g);
    int nz = l->map->base[l->end] != 0;
    bus_leave();
    return nz;
}

/*
 * Catches up with the file: moves to a replaced or shrunk file (check_path
 * 1: stat the path; 2: only when the open file has no name left, which a
 * rename over it causes; 0: never), else replays what others appended since the last replay (stopping
 * before a torn tail, which may be an append in progress). Under the lock.
 * Returns the records replayed (>= 0) or an error.
 */
static int catch_up_locked(fab_ledger *l, int check_path, fab_ledger_error *err)
{
    struct stat sb;
    if (fstat(l->fd, &sb) < 0)
        return sys_fail(err, errno, "examining the ledger");
    uint64_t size = (uint64_t)sb.st_size;
    /* check_path 2 (a miss): only when the open file lost its name */
    if (size < l->end || (l->sent_ok && sentinel_read(l) != 1) ||
        (check_path == 1 && replaced(l)) ||
        (check_path == 2 && sb.st_nlink == 0 && replaced(l)))
        return reload_locked(l, err);
    if (size <= l->end && l->lazy_from == NONE)
        return 0;
    /* A file with a reserved tail (spec: Appends through the mapping) does
     * not grow with each append: a record after the end shows in its
     * first byte. A torn tail seen before (size unchanged) is not read
     * again. The records before this handle's lazy appends are. */
    if (size == l->scanned_size && l->lazy_from == NONE &&
        (l->torn_bytes != 0 || !record_at_end(l)))
        return 0;
    uint64_t before = l->records;
    fab_ledger_scan_result res;
    int rc = replay(l, size, 1, NULL, NULL, &res, err);
    if (rc != FAB_OK)
        return rc;
    l->foreign_records += l->records - before;
    return (int)(l->records - before > INT32_MAX ? INT32_MAX : l->records - before);
}

/* Before reading the mapping: the file must still hold everything indexed
 * (a shrunk file would fault with SIGBUS). Moves to the file as it is now
 * when it shrank, its indexed bytes changed, or a compaction replaced it
 * (its header's `replaced` word changed). The sentinel answers
 * without a system call; only a ledger whose last page has no non-zero
 * byte pays an fstat (and a stat of the path when the file lost its
 * name). Under the lock. 0 or an error. */
static int check_size_locked(fab_ledger *l, fab_ledger_error *err)
{
    if (l->sent_ok) {
        if (sentinel_read(l) == 1)
            return FAB_OK;
        int rc = reload_locked(l, err);
        return rc < 0 ? rc : FAB_OK;
    }
    struct stat sb;
    if (fstat(l->fd, &sb) < 0)
        return sys_fail(err, errno, "examining the ledger");
    if ((uint64_t)sb.st_size >= l->end && !(sb.st_nlink == 0 && replaced(l)))
        return FAB_OK;
    int rc = reload_locked(l, err);
    return rc < 0 ? rc : FAB_OK;
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

int fab_ledger_fs_is_network(unsigned long f_type)
{
    switch (f_type) {
    case 0x6969UL:     /* NFS */
    case 0x517BUL:     /* SMB */
    case 0xFF534D42UL: /* CIFS */
    case 0xFE534D42UL: /* SMB2 */
    case 0x564c:       /* NCP */
    case 0x73757245UL: /* Coda */
    case 0x47504653UL: /* GPFS */
    case 0x0BD00BD0UL: /* Lustre */
    case 0x01021997UL: /* 9p (v9fs: WSL, virtio-9p, QEMU shares) */
    case 0x65735546UL: /* FUSE (sshfs, s3fs, rclone, GlusterFS...) */
    case 0x5346414FUL: /* AFS (kernel kAFS and OpenAFS) */
    case 0x6B414653UL: /* AFS (kAFS dynamic root) */
    case 0x00C36400UL: /* CephFS */
        return 1;
    default:
        return 0;
    }
}

/* 1 when fd is on a network file system, where locks are unreliable. */
static int on_network_fs(int fd)
{
    struct statfs fs;
    if (fstatfs(fd, &fs) < 0)
        return 0;
    return fab_ledger_fs_is_network((unsigned long)fs.f_type);
}

/*
 * Takes the writers' lock on fd (the file sb describes): shared, or
 * exclusive for an exclusive writer. FAB_ELOCKED (err->pid when known) when
 * it conflicts.
 */
static int take_append_identity(fab_ledger *l, int fd, const struct stat *sb, shl *sh,
                                fab_ledger_error *err);

static int take_writer_lock(fab_ledger *l, int fd, const struct stat *sb, shl *sh,
                            fab_ledger_error *err)
{
    memset(sh, 0, sizeof(*sh));
    sh->fd = -1;
    if (!l->exclusive && on_network_fs(fd)) {
        set_err(err, FAB_EIO, ENOLCK, 0, 0,
                "the ledger is on a network file system, where locks between hosts are "
                "unreliable: several writers are refused; open it with exclusive=True from "
                "one host");
        return FAB_EIO;
    }
    if (ofd_lock(fd, l->exclusive ? F_WRLCK : F_RDLCK, LOCK_WRITERS, 0) == 0) {
        (void)ofd_lock(fd, l->exclusive ? F_WRLCK : F_RDLCK, LOCK_PID, 2);
        return take_append_identity(l, fd, sb, sh, err);
    }
    if (errno != EAGAIN)
        return sys_fail(err, errno, "locking the ledger");
    long pid = 0;
    (void)lock_holders(sb->st_dev, sb->st_ino, &pid);
    if (l->exclusive)
        set_err(err, FAB_ELOCKED, EWOULDBLOCK, 0, 0,
                pid ? "the ledger is open for writing by another process (pid %ld); "
                      "exclusive=True needs it to be the only writer"
                    : "the ledger is open for writing by other handles; exclusive=True "
                      "needs it to be the only writer",
                pid);
    else
        set_err(err, FAB_ELOCKED, EWOULDBLOCK, 0, 0,
                "the ledger is open exclusively for writing by another %s (pid %ld)",
                pid == (long)getpid() ? "handle of this process" : "process", pid);
    if (err)
        err->pid = pid;
    return FAB_ELOCKED;
}

/*
 * Chooses how the writer on fd (the file sb describes; its WRITERS lock
 * held) serializes its appends: the lock page when it can use one and
 * every other writer uses the same, else the OFD lock on LOCK_APPEND.
 * Refused (FAB_ELOCKED) when other writers use a lock page this process
 * cannot use: mixing the two would let two appends run at once. An
 * exclusive writer needs neither. *sh filled (fd -1: the OFD lock).
 */
static int take_append_identity(fab_ledger *l, int fd, const struct stat *sb, shl *sh,
                                fab_ledger_error *err)
{
    if (l->exclusive)
        return FAB_OK;
    int e, r;
    if (shl_open(sb, sh) == 0) {
        if ((r = writer_identity(fd, sh->id, &e)) == 0)
            return FAB_OK;
        (void)ofd_lock(fd, F_UNLCK, LOCK_IDENT + (off_t)sh->id, 0);
        shl_close(sh, 1);
        if (r < 0)
            return sys_fail(err, e, "locking the ledger");
    }
    if ((r = writer_identity(fd, 0, &e)) == 0)
        return FAB_OK;
    (void)ofd_lock(fd, F_UNLCK, LOCK_IDENT, 0);
    if (r < 0)
        return sys_fail(err, e, "locking the ledger");
    set_err(err, FAB_ELOCKED, EWOULDBLOCK, 0, 0,
            "other writers of the ledger lock its appends through a lock file that this "
            "process cannot use (in %s: another user's, or another FABRIC_LEDGER_LOCK_DIR "
            "or /dev/shm); open it for writing from processes that share one",
            shl_dir());
    return FAB_ELOCKED;
}

/*
 * Removes the temporary files that dead processes left beside path: a
 * killed compaction's PATH.compact.tmp.PID, a killed creation's
 * PATH.tmp.PID and a killed checkpoint's PATH.ckpt.tmp.PID. A file is removed only when its pid is not a live process
 * and nobody holds a lock on it (a live compaction locks its file).
 * Best effort; returns how many were removed.
 */
static int remove_leftovers(const char *path)
{
    char *d = strdup(path), *b = strdup(path);
    int removed = 0;
    if (d == NULL || b == NULL)
        goto out;
    const char *dir = dirname(d), *base = basename(b);
    size_t blen = strlen(base);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        goto out;
    DIR *dp = fdopendir(dfd);
    if (dp == NULL) {
        close(dfd);
        goto out;
    }
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        const char *name = e->d_name;
        if (strncmp(name, base, blen) != 0)
            continue;
        const char *rest = name + blen;
        if (strncmp(rest, ".compact.tmp.", 13) == 0)
            rest += 13;
        else if (strncmp(rest, ".ckpt.tmp.", 10) == 0)
            rest += 10;
        else if (strncmp(rest, ".tmp.", 5) == 0)
            rest += 5;
        else
            continue;
        char *endp;
        errno = 0;
        long pid = strtol(rest, &endp, 10);
        if (*rest == '\0' || *endp != '\0' || errno || pid <= 0 || pid == (long)getpid())
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue; /* alive (or not ours to judge) */
        int fd = openat(dirfd(dp), name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            continue;
        struct flock fl;
        memset(&fl, 0, sizeof(fl));
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        if (fcntl(fd, F_OFD_SETLK, &fl) == 0 && unlinkat(dirfd(dp), name, 0) == 0)
            removed++;
        close(fd);
    }
    closedir(dp);
out:
    free(d);
    free(b);
    return removed;
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
    (void)ofd_lock(fd, F_WRLCK, 0, 0); /* in use: not a leftover */
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
        if (e == EEXIST && !replace)
            e = 0; /* another process created it first: open theirs */
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

static int begin_append(fab_ledger *l, fab_ledger_error *err);
static void end_append(fab_ledger *l);
static void populate_ahead(fab_ledger *l);
static int miss_look_by_page(fab_ledger *l, uint64_t now, fab_ledger_error *err);

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
    pthread_once(&bus_once, bus_install);
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
    l->fd = -1;
    l->sh.fd = -1;
    l->lazy_from = NONE;
    l->seen_clears = NONE;
    l->mode = opt->mode;
    l->durability = opt->durability;
    l->recover = opt->recover;
    l->exclusive = opt->mode == FAB_LEDGER_WRITE && opt->exclusive;
    l->use_ckpt = !opt->no_checkpoint && opt->recover == FAB_RECOVER_STRICT;
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
    if (writer)
        l->leftovers_removed = (uint64_t)remove_leftovers(path);
    /* Test hook (FABRIC_LEDGER_TEST_SPIN_NS): the bound of the spin for
     * the lock page's mutex, in ns (0: block at once). */
    const char *spin = getenv("FABRIC_LEDGER_TEST_SPIN_NS");
    char *spin_end = NULL;
    unsigned long long spin_ns = spin ? strtoull(spin, &spin_end, 10) : LOCK_SPIN_NS;
    l->spin_ns = spin && (spin_end == spin || *spin_end) ? LOCK_SPIN_NS : spin_ns;
    const char *hold = writer ? getenv("FABRIC_LEDGER_TEST_HOLD") : NULL;
    if (hold != NULL) {
        unsigned long long n = 0;
        int fd = -1, pos = 0;
        if (sscanf(hold, "%llu:%d%n", &n, &fd, &pos) == 2 && fd >= 0) {
            l->hold_n = n;
            l->hold_fd = fd;
            l->hold_torn = strcmp(hold + pos, ":torn") == 0;
        }
    }
    for (int attempt = 0;; attempt++) {
        if (attempt >= MAX_MOVES) {
            set_err(err, FAB_EIO, EAGAIN, 0, 0, "the ledger kept being replaced while opening");
            rc = FAB_EIO;
            goto fail;
        }
        l->fd = open_file(path, (writer ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        if (l->fd < 0) {
            if (errno == ENOENT && writer && attempt < 3) {
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
        l->dev = sb.st_dev;
        l->ino = sb.st_ino;
        if (sb.st_size == 0 && writer) {
            /* An empty file (made by mkstemp, touch...) becomes a new ledger,
             * renamed over it by whoever holds its append lock first; the
             * others find the path replaced and open the new file. */
            int made = 0;
            if (ofd_lock(l->fd, F_WRLCK, LOCK_APPEND, 1) < 0) {
                rc = sys_fail(err, errno, "locking the ledger");
                goto fail;
            }
            if (fstat(l->fd, &sb) == 0 && sb.st_size == 0 && !replaced(l)) {
                rc = create_ledger(l, opt, 1, err);
                made = 1;
            }
            (void)ofd_lock(l->fd, F_UNLCK, LOCK_APPEND, 0);
            close(l->fd);
            l->fd = -1;
            if (made && rc != FAB_OK)
                goto fail;
            continue;
        }
        if (writer && (rc = take_writer_lock(l, l->fd, &sb, &l->sh, err)) != FAB_OK)
            goto fail;
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
        l->end = l->visible_end = FAB_LEDGER_HEADER_SIZE;
        if ((rc = ensure_map(l, (uint64_t)sb.st_size, err)) != FAB_OK)
            goto fail;
        if (l->use_ckpt)
            ckpt_load(l, (uint64_t)sb.st_size);
        uint64_t from_ckpt = l->records;
        if ((rc = replay(l, (uint64_t)sb.st_size, 0, opt->progress, opt->progress_ctx, &res, err)) != FAB_OK)
            goto fail;
        l->open_replayed = l->ck.base ? l->records - from_ckpt : l->records;
        l->reserved = (uint64_t)sb.st_size; /* an exclusive writer's; the others' come from the lock page */
        if (res.torn_at != NONE && writer) {
            /* Cut it now, under the append lock (it may also be another
             * writer's append in progress: then it is complete by the
             * time we hold the lock, and replayed instead). */
            pthread_mutex_lock(&l->mu);
            rc = begin_append(l, err);
            if (rc == FAB_OK)
                end_append(l);
            pthread_mutex_unlock(&l->mu);
            if (rc != FAB_OK)
                goto fail;
        }
        if (opt->progress)
            opt->progress(opt->progress_ctx, (uint64_t)sb.st_size, (uint64_t)sb.st_size);
        break;
    }
    if (l->use_ckpt && l->open_replayed >= CKPT_AUTO) {
        /* Best effort: a read-only directory, a full disk only cost the
         * next open its time. */
        pthread_mutex_lock(&l->mu);
        (void)ckpt_write_locked(l, NULL);
        pthread_mutex_unlock(&l->mu);
    }
    l->open_ns = now_ns(CLOCK_MONOTONIC) - t0;
    l->opened = 1;
    reg_add(l);
    *out = l;
    return FAB_OK;
fail:
    if (err && err->code == 0)
        set_err(err, rc, 0, 0, 0, "%s", fab_strerror(rc));
    fab_ledger_close(l);
    return rc;
}

/* 1 when a writer handle other than l's open file holds WRITERS. */
static int other_writers(const fab_ledger *l)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = LOCK_WRITERS;
    fl.l_len = 1;
    return fcntl(l->fd, F_OFD_GETLK, &fl) < 0 || fl.l_type != F_UNLCK;
}

/*
 * The last writer to close trims the space reserved after the records
 * (spec: Appends through the mapping), under the append lock, so a closed
 * ledger ends with its last record. Best effort: a tail left (a failure, a
 * writer killed while open) is read as the end of the records.
 */
static void trim_at_close(fab_ledger *l)
{
    if (!l->opened || l->mode != FAB_LEDGER_WRITE || l->fd < 0 || l->forked || l->failed)
        return;
    pthread_mutex_lock(&l->mu);
    struct stat sb;
    fab_ledger_error e;
    if (fstat(l->fd, &sb) == 0 && (uint64_t)sb.st_size > l->end &&
        (l->exclusive || !other_writers(l)) && begin_append(l, &e) == FAB_OK) {
        if (fstat(l->fd, &sb) == 0 && (uint64_t)sb.st_size > l->end &&
            (l->exclusive || !other_writers(l)) &&
            l->io.ftruncate(l->fd, (off_t)l->end) == 0) {
            l->reserved = l->end;
            l->scanned_size = l->end;
        }
        end_append(l);
    }
    pthread_mutex_unlock(&l->mu);
}

void fab_ledger_close(fab_ledger *l)
{
    if (l == NULL)
        return;
    reg_remove(l);
    if (l->opened && l->mode == FAB_LEDGER_WRITE) {
        pthread_mutex_lock(&l->mu);
        ckpt_auto_locked(l); /* spec: Checkpoint, Writing */
        pthread_mutex_unlock(&l->mu);
    }
    trim_at_close(l);
    if (l->fd >= 0)
        close(l->fd); /* releases this handle's OFD locks */
    shl_close(&l->sh, 1);
    fab_lmap_release(l->map);
    fab_lindex_destroy(&l->ix);
    ckpt_drop(&l->ck);
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
 * In a forked child: stops using the parent's open file (and its locks) by
 * opening the path again. A replaced file is moved to. Under the lock.
 */
static int after_fork_locked(fab_ledger *l, fab_ledger_error *err)
{
    int fd = open(l->path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return sys_fail(err, errno, "reopening the ledger in a forked child");
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        int rc = sys_fail(err, errno, "examining the ledger");
        close(fd);
        return rc;
    }
    if (sb.st_dev != l->dev || sb.st_ino != l->ino) {
        close(fd);
        int rc = reload_locked(l, err); /* takes its own locks on a new descriptor */
        if (rc >= 0)
            l->forked = 0;
        return rc < 0 ? rc : FAB_OK;
    }
    shl nsh;
    int rc = take_writer_lock(l, fd, &sb, &nsh, err);
    if (rc != FAB_OK) {
        close(fd);
        return rc;
    }
    close(l->fd); /* the parent's locks stay with the parent's descriptor */
    shl_close(&l->sh, 0); /* the parent's lock page stays the parent's */
    l->fd = fd;
    l->sh = nsh;
    l->seen_clears = NONE;
    l->forked = 0;
    return FAB_OK;
}

/*
 * Replays the records others appended up to pend, the end the lock page
 * published (under the lock page's mutex): 1 when done, 0 when the file
 * does not hold them as the page says (the caller then looks at the file
 * with fstat), or an error. The last byte is read under the SIGBUS guard
 * first: a file shrunk below it by another program faults there, not in
 * the replay.
 */
static int catch_up_to(fab_ledger *l, uint64_t pend, fab_ledger_error *err)
{
    int rc = ensure_map(l, pend, err);
    if (rc != FAB_OK)
        return rc;
    bus_guard g;
    if (sigsetjmp(g.jb, 0) != 0)
        return 0;
    bus_enter(&g);
    volatile uint8_t last = l->map->base[pend - 1];
    bus_leave();
    FAB_UNUSED(last);
    uint64_t before = l->records;
    fab_ledger_scan_result res;
    if ((rc = replay(l, pend, 1, NULL, NULL, &res, err)) != FAB_OK)
        return rc;
    l->foreign_records += l->records - before;
    return res.torn_at == NONE && l->end == pend;
}

/* 1 when one of the deferred commits is key's. */
static int defer_holds(const fab_ledger *l, const uint8_t key[32])
{
    for (unsigned i = 0; i < l->n_def; i++)
        if (memcmp(l->map->base + l->def_off[i] + FAB_LEDGER_REC_HEADER, key, 32) == 0)
            return 1;
    return 0;
}

/*
 * Makes the deferred index entries (defer_ok). When that fails (a corrupt
 * checkpoint page or record met on the way), the index is rebuilt from
 * the file, as a replay does. 0 done, 1 rebuilt (the index has a new
 * seed: hashes are computed again), or an error.
 */
static int defer_settle(fab_ledger *l, fab_ledger_error *err)
{
    if (l->n_def == 0 || defer_index(l) == FAB_OK)
        return 0;
    int rc = rebuild_locked(l, NULL, err);
    return rc < 0 ? rc : 1;
}

/*
 * Takes the append lock and brings the ledger up to the file's end: moves
 * to a replaced or shrunk file, replays records other writers appended,
 * and cuts a torn tail (nobody else can be appending: a torn record under
 * the lock is a dead writer's). Under l->mu; on success the append lock is
 * held until end_append. An exclusive writer needs no lock.
 */
static int begin_append(fab_ledger *l, fab_ledger_error *err)
{
    int rc = refuse(l, err);
    if (rc != FAB_OK)
        return rc;
    if (l->forked && (rc = after_fork_locked(l, err)) != FAB_OK)
        return rc;
    int changed = 0; /* the index changed here (a catch-up, a move): not fresh */
    uint64_t foreign0 = l->foreign_records; /* others' records met (filter_settle) */
    for (int moves = 0;; moves++) {
        if (moves >= MAX_MOVES) {
            set_err(err, FAB_EIO, EAGAIN, 0, 0, "the ledger kept being replaced");
            return FAB_EIO;
        }
        l->append_ok = 0;
        l->append_fresh = 0;
        /* doubt: a writer may have died inside an append through the
         * mapping, leaving an unfinished record after a zero magic; the
         * replay below then looks past a zero magic (and cuts what it
         * finds) instead of stopping there. */
        int doubt = l->torn_bytes != 0;
        if (l->sh.p != NULL) {
            /* One clock read per append, before the mutex and out of the
             * others' way, for step 2's look at the file's age: read again
             * after a wait for the mutex or a long catch-up (spec: An
             * append, step 2). */
            uint64_t t = now_ns(CLOCK_MONOTONIC), at = l->end;
            int stale = 0;
            /* Others' records published since this handle last looked are
             * replayed before the mutex is taken, as a miss does, so that
             * under it only what was appended meanwhile is; unless the
             * key filter will likely let the append go without them (a
             * look without the mutex: a hint, decided under it). */
            uint64_t pe = l->lazy_key != NULL && l->filter_seen
                              ? 0 /* the filter decides under the mutex (filter_seen) */
                              : atomic_load_explicit(&l->sh.p->end, memory_order_relaxed);
            if ((pe > l->end || (pe == l->end && l->lazy_from != NONE)) &&
                !(l->lazy_key != NULL &&
                  filter_absent(l->sh.p, l->seen_clears, l->lazy_key,
                                l->lazy_from != NONE ? l->lazy_from : l->end))) {
                /* a record's: their index entries after the lock too */
                l->defer_ix = l->defer_ok;
                rc = miss_look_by_page(l, t, err);
                l->defer_ix = 0;
                if (rc < 0)
                    return rc;
                changed |= rc != 0;
                stale = l->end - at > FRESH_CATCH_UP;
            }
            doubt |= l->torn_bytes != 0; /* the catch-up may find a torn tail */
            int r = EBUSY;
            /* the lines the append touches first, fetched when the mutex
             * is seen free (shl_hot) */
            shl_hot hot = {{&l->sh.p->end, &l->sh.p->filter_keys, NULL, NULL},
                           l->map != NULL ? l->map->base : NULL,
                           l->map != NULL ? l->map->len : 0};
            if (l->lazy_key != NULL && l->filter_seen) /* the key's filter block */
                hot.line[2] = shl_filter(l->sh.p) +
                              (fab_load_le64(l->lazy_key) & (SHL_FILTER_BITS / 512 - 1)) * 8;
            if (l->sent_ok && l->map != NULL)
                hot.line[3] = l->map->base + l->sent_at;
            if (l->n_def && (r = shl_trylock(l->sh.p, &hot)) == EBUSY) {
                /* Held by another writer: make the deferred entries while
                 * it appends, rather than spin and make them after. */
                if ((rc = defer_settle(l, err)) < 0)
                    return rc;
            }
            int waited = 0;
            if (r == EBUSY)
                r = shl_lock(l->sh.p, l->spin_ns, &hot, &waited);
            stale |= waited;
            if (r == EOWNERDEAD) {
                /* Its holder died inside an append, after the end the
                 * page holds: set it to 0, so that the check below looks
                 * at the file, replays and cuts a torn record (and a miss
                 * looks at the file too). */
                atomic_store(&l->sh.p->end, 0);
                filter_invalidate(l->sh.p);
                atomic_fetch_add(&l->sh.p->owner_dead, 1);
                l->owner_dead++;
                r = pthread_mutex_consistent(&l->sh.p->mu);
                if (r != 0) {
                    pthread_mutex_unlock(&l->sh.p->mu);
                    return sys_fail(err, r, "recovering the ledger's append lock");
                }
            } else if (r != 0) {
                return sys_fail(err, r, "locking the ledger for an append");
            }
            l->append_locked = 2;
            /* The file still holds what this handle indexed, it saw no
             * torn tail then, it looked at the file less than 1 ms ago,
             * and the others' appends since end where the page says (each
             * written whole under this lock): no fstat needed. */
            if (stale)
                t = now_ns(CLOCK_MONOTONIC);
            uint64_t pend = atomic_load_explicit(&l->sh.p->end, memory_order_relaxed);
            uint64_t pres = atomic_load_explicit(&l->sh.p->reserved, memory_order_relaxed);
            doubt |= pend == 0;
            int fresh = t - l->looked_ns < LOOK_EVERY_NS;
            /* The lazy catch-up (spec: The key filter): nobody committed
             * or deleted the key, nor cleared, since this handle's
             * replayed end: the others' records before the page's end
             * are not replayed, the append goes after them. */
            int lazy = l->lazy_key != NULL && pend != 0 && pend >= l->end &&
                       (pend > l->end || l->lazy_from != NONE) && l->torn_bytes == 0 &&
                       filter_absent(l->sh.p, l->seen_clears, l->lazy_key,
                                     l->lazy_from != NONE ? l->lazy_from : l->end);
            if (lazy && !fresh && l->sent_ok && sentinel_read(l) == 1) {
                /* the look at the file of step 3 (its fstat), without the
                 * replay that would follow it */
                struct stat sb;
                if (fstat(l->fd, &sb) == 0 && (uint64_t)sb.st_size >= pend &&
                    !(sb.st_nlink == 0 && replaced(l))) {
                    l->looked_ns = now_ns(CLOCK_MONOTONIC);
                    fresh = 1;
                }
            }
            if (pend >= l->end && l->torn_bytes == 0 && fresh && l->sent_ok &&
                sentinel_read(l) == 1) {
                /* the page's reserved size goes with its end; 0: unknown,
                 * the file holds at least what it indexes */
                l->reserved = pres > pend ? pres : pend;
                if (lazy) {
                    if (pend > l->end) {
                        if (l->lazy_from == NONE)
                            l->lazy_from = l->end;
                        l->end = pend;
                    }
                    l->lazy_appends++;
                    l->append_ok = 1;
                    l->append_fresh = !changed;
                    return FAB_OK;
                }
                if (pend == l->end && l->lazy_from == NONE) { /* nobody appended since */
                    l->seen_clears = filter_settle(&l->sh, l->end, l->foreign_records != foreign0);
                    l->append_ok = 1;
                    l->append_fresh = !changed;
                    return FAB_OK;
                }
                l->defer_ix = l->defer_ok;
                rc = catch_up_to(l, pend, err);
                l->defer_ix = 0;
                if (rc < 0) {
                    end_append(l);
                    return rc;
                }
                if (rc == 1) {
                    l->seen_clears = filter_settle(&l->sh, l->end, l->foreign_records != foreign0);
                    l->append_ok = 1;
                    return FAB_OK;
                }
                if (l->n_def && (rc = defer_settle(l, err)) < 0) {
                    end_append(l);
                    return rc;
                }
            }
            /* The page's end stays as it was while the lock is held: the
             * records below it are whole, and this append goes after it.
             * end_append publishes the new end, or 0 when the file is in
             * doubt. The entries deferred before the lock are made before
             * the file is looked at (it may have moved). */
            if (l->n_def && (rc = defer_settle(l, err)) < 0) {
                end_append(l);
                return rc;
            }
        } else if (!l->exclusive) {
            if (ofd_lock(l->fd, F_WRLCK, LOCK_APPEND, 1) < 0)
                return sys_fail(err, errno, "locking the ledger for an append");
            l->append_locked = 1;
        } else if (l->sent_ok && l->torn_bytes == 0 && sentinel_read(l) == 1) {
            /* The only writer: nobody else appends; the sentinel tells
             * that the file still holds what this handle indexed (and
             * l->reserved is what it left). */
            l->append_ok = 1;
            l->append_fresh = !changed;
            return FAB_OK;
        }
        struct stat sb;
        if (fstat(l->fd, &sb) < 0) {
            rc = sys_fail(err, errno, "examining the ledger");
            end_append(l);
            return rc;
        }
        l->looked_ns = now_ns(CLOCK_MONOTONIC);
        uint64_t size = (uint64_t)sb.st_size;
        /* A file renamed over ours (a compaction, a restore) leaves ours
         * with no name: one fstat tells, no path lookup per append. */
        if (size < l->end || (!l->exclusive && sb.st_nlink == 0 && replaced(l))) {
            end_append(l);
            if ((rc = reload_locked(l, err)) < 0)
                return rc;
            changed = 1;
            continue;
        }
        l->reserved = size;
        if (size > l->end || l->lazy_from != NONE) {
            uint64_t before = l->records;
            fab_ledger_scan_result res;
            l->defer_ix = l->defer_ok;
            rc = replay(l, size, !doubt, NULL, NULL, &res, err);
            l->defer_ix = 0;
            if (rc != FAB_OK) {
                end_append(l);
                return rc;
            }
            l->foreign_records += l->records - before;
            if (res.torn_at != NONE) {
                if (l->io.ftruncate(l->fd, (off_t)res.torn_at) < 0) {
                    rc = sys_fail(err, errno, "cutting the ledger's torn tail");
                    end_append(l);
                    return rc;
                }
                l->torn_cut++;
                l->torn_bytes = 0;
                l->scanned_size = res.torn_at;
                l->reserved = res.torn_at;
            }
        }
        /* everything below the end is replayed now */
        if (l->append_locked == 2 && l->lazy_from == NONE)
            l->seen_clears = filter_settle(&l->sh, l->end, l->foreign_records != foreign0);
        l->append_ok = 1;
        return FAB_OK;
    }
}

/* Releases the append lock. With the lock page, publishes the ledger's
 * end (and the size reserved after it) for the next holder, unless the
 * append left the file in doubt (a failed begin_append, a failed write not
 * cut back, a compaction's rename): then the page gets 0 and the next
 * holder looks at the file. */
static void end_append(fab_ledger *l)
{
    if (l->append_locked == 2) {
        l->filter_seen = filter_usable(l->sh.p, l->seen_clears,
                                       l->lazy_from != NONE ? l->lazy_from : l->end);
        if (l->append_ok && !l->failed) {
            atomic_store_explicit(&l->sh.p->reserved, l->reserved, memory_order_relaxed);
            /* Release: a miss, and an appender before it takes the mutex,
             * read the end without the mutex (miss_look_by_page) and then
             * the records below it. */
            atomic_store_explicit(&l->sh.p->end, l->end, memory_order_release);
            /* where the next holder will write, for its shl_fetch: in the
             * mutex's line, which the unlock writes next */
            _Atomic uint64_t *hint = shl_end_hint(l->sh.p);
            if (hint != NULL)
                atomic_store_explicit(hint, l->end, memory_order_relaxed);
        } else {
            filter_invalidate(l->sh.p);
            atomic_store_explicit(&l->sh.p->end, 0, memory_order_release);
        }
        pthread_mutex_unlock(&l->sh.p->mu);
        populate_ahead(l);
    } else if (l->append_locked == 1) {
        (void)ofd_lock(l->fd, F_UNLCK, LOCK_APPEND, 0);
    }
    l->append_locked = 0;
    l->append_ok = 0;
}

/*
 * Under the lock page, with durability os, the space reserved reaches at
 * least this far past the end of the records, and populate_ahead faults
 * it in (spec: Appends through the mapping).
 */
#define POPULATE_AHEAD ((uint64_t)256 << 10)

/*
 * The handle's populate phase, in [0, POPULATE_AHEAD / 2) and page
 * aligned: the lock page's n-th open gets n's lowest 8 bits reversed as a
 * fraction of the step (0, 1/2, 1/4, 3/4, 1/8, ...), so that any two of the
 * first few writers of a ledger are far apart.
 */
static uint64_t populate_phase(const fab_ledger *l)
{
    unsigned n = (unsigned)(l->sh.nth & 255), r = 0;
    for (int i = 0; i < 8; i++)
        r = (r << 1) | ((n >> i) & 1);
    uint64_t pages = POPULATE_AHEAD / 2 / page_size;
    return (uint64_t)r * pages / 256 * page_size;
}

static int populating(const fab_ledger *l)
{
#ifdef MADV_POPULATE_WRITE
    return l->durability == FAB_DUR_OS && l->append_locked == 2 && !l->no_populate;
#else
    (void)l;
    return 0;
#endif
}

/*
 * A store into a page of the mapping that this process has not written
 * yet takes a write fault (the file system marks the page dirty; a page
 * not in the page cache yet is read or zeroed first): about 4 us here,
 * once per 4 KiB, that is 0.15 us per 100-byte record, and up to 0.3 ms
 * for the first page after a reservation. Under the lock page the other
 * writers wait for it. So, with durability os, after releasing the lock
 * the next pages of the space reserved, up to POPULATE_AHEAD past the end
 * (which reserve_locked keeps reserved), are faulted in for writing with
 * MADV_POPULATE_WRITE: the kernel's write fault without a store, the
 * bytes left as they are (another writer may be storing into them). Not
 * with fsync or group: a sync cleans the pages again, and the zeros
 * faulted in ahead would be written with it. Best effort: a failure (the
 * file cut meanwhile, an old kernel) leaves the faults to the stores.
 *
 * Each call faults in up to a point of the handle's own grid, every
 * POPULATE_AHEAD / 2 from its phase (populate_phase), rather than at a
 * fixed distance from the end: writers appending in turn have the same end,
 * and without phases they all crossed the same point together and faulted
 * in the same new pages at once, each waiting for the page cache pages
 * another was making, while nobody appended (2 writers: 13,000-15,000
 * cycles per page, 0.004 sleeps per record). With phases half a step apart,
 * one makes the new pages while the other appends, and the other then
 * maps pages already made.
 */
static void populate_ahead(fab_ledger *l)
{
#ifdef MADV_POPULATE_WRITE
    if (l->durability != FAB_DUR_OS || !l->mapped_appends || l->map == NULL || l->no_populate)
        return;
    if (l->populated_map != l->map) {
        l->populated_map = l->map;
        l->populated = 0;
    }
    if (l->populated >= l->end + POPULATE_AHEAD / 2)
        return;
    uint64_t from = l->end & ~(page_size - 1);
    /* the last grid point at most POPULATE_AHEAD past the end: more than
     * POPULATE_AHEAD / 2 past it */
    uint64_t step = POPULATE_AHEAD / 2, phase = populate_phase(l);
    uint64_t to = (l->end + POPULATE_AHEAD - phase) / step * step + phase;
    if (from < l->populated)
        from = l->populated;
    if (to > (l->reserved & ~(page_size - 1)))
        to = l->reserved & ~(page_size - 1);
    if (to > (l->map->len & ~(page_size - 1)))
        to = l->map->len & ~(page_size - 1);
    if (to <= from)
        return;
    if (madvise(l->map->base + from, (size_t)(to - from), MADV_POPULATE_WRITE) < 0 &&
        (errno == EINVAL || errno == ENOSYS))
        l->no_populate = 1;
    l->populated = to;
#else
    l->no_populate = 1;
#endif
}

/* The test hook (FABRIC_LEDGER_TEST_HOLD): 1 at the chosen append, which
 * then writes half of its bytes (torn) and calls hold_wait. */
static int hold_here(fab_ledger *l)
{
    return l->hold_n != 0 && --l->hold_n == 0;
}

/* Writes one byte to the test's pipe and waits to be killed. */
static void hold_wait(fab_ledger *l)
{
    char c = 'H';
    (void)!write(l->hold_fd, &c, 1);
    for (;;)
        pause();
}

/* Reservations grow the file by an eighth of the ledger, within these
 * bounds (spec: Appends through the mapping). */
#define RESERVE_MIN ((uint64_t)64 << 10)
#define RESERVE_MAX ((uint64_t)8 << 20)

/*
 * Makes sure the file is at least need bytes long, zero after l->end, by
 * reserving space ahead with fallocate; when it is shorter than need +
 * ahead, reserves anew (a full disk then only fails when need does not
 * fit). Under the append lock. 0 done; 1 when the file system (or the io)
 * cannot reserve: the append is a pwrite, as every later one of this
 * handle; or an error (a full disk: ENOSPC, nothing written).
 */
static int reserve_locked(fab_ledger *l, uint64_t need, uint64_t ahead, fab_ledger_error *err)
{
    if (need + ahead <= l->reserved)
        return 0;
    uint64_t chunk = l->end / 8;
    chunk = chunk < RESERVE_MIN ? RESERVE_MIN : chunk > RESERVE_MAX ? RESERVE_MAX : chunk;
    uint64_t target = (need + ahead + chunk + page_size - 1) & ~(page_size - 1);
    uint64_t from = l->reserved > l->end ? l->reserved : l->end;
    for (;;) {
        if (l->io.fallocate(l->fd, (off_t)from, (off_t)(target - from)) == 0)
            break;
        int e = errno;
        if (e == EINTR)
            continue;
        if (e == EOPNOTSUPP || e == ENOSYS) {
            l->no_reserve = 1;
            return 1;
        }
        if ((e == ENOSPC || e == EDQUOT) && target > need) {
            if (need <= l->reserved)
                return 0; /* the append fits; nothing more ahead for now */
            target = need; /* room for this append alone, then */
            continue;
        }
        return sys_fail(err, e, "reserving space in the ledger for an append");
    }
    l->reserved = target;
    return 0;
}

/* Copies n bytes forward (a piece at a time, so an append killed midway
 * has written a prefix, give or take a piece). */
static void copy_forward(uint8_t *dst, const uint8_t *src, size_t n)
{
    while (n > 0) {
        size_t k = n < 4096 ? n : 4096;
        memcpy(dst, src, k);
        dst += k;
        src += k;
        n -= k;
    }
}

/* Copies the first n bytes of the records in buf to dst, every record's
 * 4-byte magic left zero. */
static void copy_records(uint8_t *dst, const uint8_t *buf, size_t blen, size_t n)
{
    size_t pos = 0;
    while (pos < n) {
        size_t next = pos + FAB_LEDGER_REC_OVERHEAD + fab_load_le32(buf + pos + 8);
        size_t to = next < n ? next : n;
        if (pos + 4 < to)
            copy_forward(dst + pos + 4, buf + pos + 4, to - pos - 4);
        pos = next;
        if (pos >= blen)
            break;
    }
}

/* put_locked's stores through the mapping (see there). */
static __attribute__((noinline)) void store_records(uint8_t *dst, const uint8_t *buf,
                                                    size_t blen, const void *data, size_t dlen)
{
    copy_records(dst, buf, blen, blen);
    if (dlen)
        copy_forward(dst + blen, data, dlen);
    for (size_t pos = 0; pos < blen;
         pos += FAB_LEDGER_REC_OVERHEAD + fab_load_le32(buf + pos + 8)) {
        atomic_thread_fence(memory_order_release);
        memcpy(dst + pos, REC_MAGIC, 4);
    }
}

/* store_records under the SIGBUS guard: 0, or -1 when a store faulted
 * (the file is shorter than the space reserved: cut by another program). */
static int store_guarded(uint8_t *dst, const uint8_t *buf, size_t blen, const void *data,
                         size_t dlen)
{
    bus_guard g;
    if (sigsetjmp(g.jb, 0) != 0)
        return -1;
    bus_enter(&g);
    store_records(dst, buf, blen, data, dlen);
    bus_leave();
    return 0;
}

/*
 * Writes the records of one append at off: buf[0..blen) (whole records,
 * except that the last record's payload may go on in data[0..dlen)). With
 * the lock page or exclusively, and space reserved, through the mapping:
 * every byte but the records' magics, then a release fence, then the
 * magics, first to last, so that a record is never seen (by a reader, or
 * after a SIGKILL) with a magic before its bytes; an append cut short
 * leaves a zero magic where it began (spec: Appends through the mapping).
 * Else with pwrite. On failure the file is cut back to off (when even
 * that fails the ledger refuses appends). Under the append lock.
 */
static int put_locked(fab_ledger *l, uint64_t off, const uint8_t *buf, size_t blen,
                      const void *data, size_t dlen, fab_ledger_error *err)
{
    uint64_t total = (uint64_t)blen + dlen;
    int rc;
    if (l->append_locked == 2)
        filter_records(l->sh.p, buf, blen); /* before the record is written */
    int mapped = l->io.fallocate != NULL && !l->no_reserve &&
                 (l->exclusive || l->append_locked == 2);
    uint64_t ahead = populating(l) ? POPULATE_AHEAD : 0;
    if (mapped && (rc = reserve_locked(l, off + total, ahead, err)) != 0) {
        if (rc < 0)
            return rc;
        mapped = 0;
    }
    l->mapped_appends = mapped;
    if (mapped) {
        if ((rc = ensure_map(l, off + total, err)) != FAB_OK)
            return rc;
        uint8_t *dst = l->map->base + off;
        if (hold_here(l)) {
            if (l->hold_torn)
                copy_records(dst, buf, blen, blen / 2);
            hold_wait(l);
        }
        if (store_guarded(dst, buf, blen, data, dlen) == 0)
            return FAB_OK;
        /* The file is shorter than the space this handle knew reserved:
         * cut by another program above the records. Reserve again and
         * store again (over the same bytes). */
        l->reserved = l->end;
        if ((rc = reserve_locked(l, off + total, 0, err)) == 0 &&
            store_guarded(dst, buf, blen, data, dlen) == 0)
            return FAB_OK;
        /* The page keeps end 0: the next holder looks at the file. */
        l->append_ok = 0;
        l->reserved = l->end;
        if (rc < 0)
            return rc;
        set_err(err, FAB_EIO, EIO, off, 1,
                "the ledger file was truncated by another program during an append");
        return FAB_EIO;
    }
    if (hold_here(l)) {
        if (l->hold_torn && blen > 1)
            (void)write_all(&l->io, l->fd, buf, blen / 2, off);
        hold_wait(l);
    }
    int e = write_all(&l->io, l->fd, buf, blen, off);
    if (e == 0 && dlen)
        e = write_all(&l->io, l->fd, data, dlen, off + blen);
    if (e != 0) {
        if (l->io.ftruncate(l->fd, (off_t)off) < 0) {
            l->failed = 1;
            l->failed_errno = e;
        } else if (l->reserved > off) {
            l->reserved = off;
        }
        return sys_fail(err, e, "appending to the ledger");
    }
    return FAB_OK;
}

/*
 * FAB_ERANGE (err set) when a record would be larger than the ledger's
 * limit: the REQUEST's rlen bytes (when req is not NULL), or the reply's
 * payload, a prefix of plen bytes and dlen of data; else FAB_OK.
 */
static int check_sizes(const void *req, size_t rlen, size_t plen, size_t dlen,
                       fab_ledger_error *err)
{
    if (req != NULL && rlen > FAB_LEDGER_MAX_PAYLOAD) {
        set_err(err, FAB_ERANGE, 0, 0, 0, "a request of %zu bytes is larger than the "
                "ledger's limit of %zu bytes", rlen, (size_t)FAB_LEDGER_MAX_PAYLOAD);
        return FAB_ERANGE;
    }
    if (dlen > FAB_LEDGER_MAX_PAYLOAD - plen) {
        set_err(err, FAB_ERANGE, 0, 0, 0, "a reply of %zu bytes is larger than the ledger's "
                "limit of %zu bytes", dlen, (size_t)FAB_LEDGER_MAX_PAYLOAD - plen);
        return FAB_ERANGE;
    }
    return FAB_OK;
}

/*
 * Writes one record at l->end. Under the lock. On failure the file is cut
 * back to where it was; if even that fails the ledger refuses appends.
 */
static int append_locked_f(fab_ledger *l, int type, int flags, const uint8_t key[32],
                           const void *prefix, size_t plen, const void *data, size_t dlen,
                           uint64_t *off_out, fab_ledger_error *err)
{
    int rc = refuse(l, err);
    if (rc != FAB_OK)
        return rc;
    if ((rc = check_sizes(NULL, 0, plen, dlen, err)) != FAB_OK)
        return rc;
    uint64_t off = l->end;
    uint64_t total = FAB_LEDGER_REC_OVERHEAD + plen + dlen;
    if ((rc = ensure_map(l, off + total, err)) != FAB_OK)
        return rc;
    uint8_t small[SMALL_RECORD];
    uint8_t *h = small;
    rec_header_f(h, type, flags, key, prefix, plen, data, dlen);
    memcpy(h + FAB_LEDGER_REC_HEADER, key, 32);
    if (plen)
        memcpy(h + FAB_LEDGER_REC_OVERHEAD, prefix, plen);
    if (total <= SMALL_RECORD) {
        if (dlen)
            memcpy(h + FAB_LEDGER_REC_OVERHEAD + plen, data, dlen);
        rc = put_locked(l, off, h, (size_t)total, NULL, 0, err);
    } else {
        rc = put_locked(l, off, h, FAB_LEDGER_REC_OVERHEAD + plen, data, dlen, err);
    }
    if (rc != FAB_OK)
        return rc;
    l->end = off + total;
    if (total <= SMALL_RECORD)
        sentinel_written(l, h, (size_t)total);
    else
        sentinel_written(l, data, dlen);
    l->last_rec = off;
    l->records++;
    if (l->lazy_from != NONE)
        l->gap_records++;
    if (l->leader_waiting)
        pthread_cond_signal(&l->lead_cond);
    if (l->durability == FAB_DUR_OS)
        l->visible_end = l->end;
    *off_out = off;
    return FAB_OK;
}

static int append_locked(fab_ledger *l, int type, const uint8_t key[32], const void *prefix,
                         size_t plen, const void *data, size_t dlen, uint64_t *off_out,
                         fab_ledger_error *err)
{
    return append_locked_f(l, type, 0, key, prefix, plen, data, dlen, off_out, err);
}

static int upgrade_locked(fab_ledger *l, fab_ledger_error *err);

/* The largest record body copied into the one buffer of a request append;
 * a longer reply is written by a second pwrite right after it. */
#define REQ_INLINE_MAX (256u * 1024u)

/*
 * Writes key's REQUEST record (req, rlen) and right after it the record
 * of type (flagged REQUESTED), as append_locked_f, in one pwrite (two when
 * the reply is longer than REQ_INLINE_MAX). *off_out is the second
 * record's offset. Without req (NULL), append_locked_f alone.
 */
static int append_req_locked(fab_ledger *l, const void *req, size_t rlen, int type, int flags,
                             const uint8_t key[32], const void *prefix, size_t plen,
                             const void *data, size_t dlen, uint64_t *off_out,
                             fab_ledger_error *err)
{
    if (req == NULL)
        return append_locked_f(l, type, flags, key, prefix, plen, data, dlen, off_out, err);
    int rc = refuse(l, err);
    if (rc != FAB_OK)
        return rc;
    if ((rc = check_sizes(req, rlen, plen, dlen, err)) != FAB_OK)
        return rc;
    if ((rc = upgrade_locked(l, err)) != FAB_OK) /* version 1 knows no REQUEST */
        return rc;
    flags |= FAB_REC_FLAG_REQUESTED;
    uint64_t start = l->end;
    uint64_t rtotal = FAB_LEDGER_REC_OVERHEAD + (uint64_t)rlen;
    uint64_t off = start + rtotal;
    uint64_t total = FAB_LEDGER_REC_OVERHEAD + plen + dlen;
    if ((rc = ensure_map(l, off + total, err)) != FAB_OK)
        return rc;
    int inline_data = dlen <= REQ_INLINE_MAX;
    size_t blen = (size_t)rtotal + FAB_LEDGER_REC_OVERHEAD + plen + (inline_data ? dlen : 0);
    uint8_t *b = malloc(blen);
    if (b == NULL) {
        set_err(err, FAB_ENOMEM, 0, 0, 0, "out of memory for a ledger append");
        return FAB_ENOMEM;
    }
    rec_header_f(b, FAB_REC_REQUEST, 0, key, NULL, 0, req, rlen);
    memcpy(b + FAB_LEDGER_REC_HEADER, key, 32);
    if (rlen)
        memcpy(b + FAB_LEDGER_REC_OVERHEAD, req, rlen);
    uint8_t *h = b + rtotal;
    rec_header_f(h, type, flags, key, prefix, plen, data, dlen);
    memcpy(h + FAB_LEDGER_REC_HEADER, key, 32);
    if (plen)
        memcpy(h + FAB_LEDGER_REC_OVERHEAD, prefix, plen);
    if (inline_data && dlen)
        memcpy(h + FAB_LEDGER_REC_OVERHEAD + plen, data, dlen);
    rc = put_locked(l, start, b, blen, inline_data ? NULL : data, inline_data ? 0 : dlen, err);
    if (rc != FAB_OK) {
        free(b);
        return rc;
    }
    l->end = off + total;
    if (inline_data)
        sentinel_written(l, b, blen);
    else
        sentinel_written(l, data, dlen);
    free(b);
    l->last_rec = off;
    l->records += 2;
    if (l->lazy_from != NONE)
        l->gap_records += 2;
    if (l->leader_waiting)
        pthread_cond_signal(&l->lead_cond);
    if (l->durability == FAB_DUR_OS)
        l->visible_end = l->end;
    *off_out = off;
    return FAB_OK;
}

/*
 * A REPLY (after its REQUEST, when there is one) made before the append
 * lock is taken: a record's bytes do not depend on where it goes, so only
 * the copy into the file is left for under the lock. buf holds whole
 * records, except that the REPLY's payload may go on in data[0..dlen)
 * (not copied).
 */
typedef struct built_reply {
    uint8_t *buf;       /* small, or malloc'ed */
    size_t blen;
    const void *data;
    size_t dlen;
    uint64_t total;     /* blen + dlen */
    uint64_t reply_at;  /* the REPLY's offset from the start */
    unsigned nrec;
    int has_req;
    uint8_t small[SMALL_RECORD];
} built_reply;

static void built_free(built_reply *b)
{
    if (b->buf != b->small)
        free(b->buf);
    b->buf = b->small;
}

/* Builds key's REPLY (prefix, data) with flags, after its REQUEST (req,
 * rlen) when req is not NULL (the REPLY then flagged REQUESTED); as
 * append_locked_f and append_req_locked did under the lock. */
static int build_reply(built_reply *b, const void *req, size_t rlen, int flags,
                       const uint8_t key[32], const void *prefix, size_t plen, const void *data,
                       size_t dlen, fab_ledger_error *err)
{
    b->buf = b->small;
    b->has_req = req != NULL;
    int rc = check_sizes(req, rlen, plen, dlen, err);
    if (rc != FAB_OK)
        return rc;
    uint64_t rtotal = req != NULL ? FAB_LEDGER_REC_OVERHEAD + (uint64_t)rlen : 0;
    uint64_t total = FAB_LEDGER_REC_OVERHEAD + plen + dlen;
    int inline_data = req != NULL ? dlen <= REQ_INLINE_MAX : total <= SMALL_RECORD;
    size_t blen = (size_t)rtotal + FAB_LEDGER_REC_OVERHEAD + plen + (inline_data ? dlen : 0);
    if (blen > SMALL_RECORD && (b->buf = malloc(blen)) == NULL) {
        b->buf = b->small;
        set_err(err, FAB_ENOMEM, 0, 0, 0, "out of memory for a ledger append");
        return FAB_ENOMEM;
    }
    if (req != NULL) {
        rec_header_f(b->buf, FAB_REC_REQUEST, 0, key, NULL, 0, req, rlen);
        memcpy(b->buf + FAB_LEDGER_REC_HEADER, key, 32);
        if (rlen)
            memcpy(b->buf + FAB_LEDGER_REC_OVERHEAD, req, rlen);
        flags |= FAB_REC_FLAG_REQUESTED;
    }
    uint8_t *h = b->buf + rtotal;
    rec_header_f(h, FAB_REC_REPLY, flags, key, prefix, plen, data, dlen);
    memcpy(h + FAB_LEDGER_REC_HEADER, key, 32);
    if (plen)
        memcpy(h + FAB_LEDGER_REC_OVERHEAD, prefix, plen);
    if (inline_data && dlen)
        memcpy(h + FAB_LEDGER_REC_OVERHEAD + plen, data, dlen);
    b->blen = blen;
    b->data = inline_data ? NULL : data;
    b->dlen = inline_data ? 0 : dlen;
    b->total = rtotal + total;
    b->reply_at = rtotal;
    b->nrec = req != NULL ? 2 : 1;
    return FAB_OK;
}

/* Writes the records b holds at l->end, as append_req_locked. *off_out is
 * the REPLY's offset. Under the lock. */
static int put_built_locked(fab_ledger *l, const built_reply *b, uint64_t *off_out,
                            fab_ledger_error *err)
{
    int rc = refuse(l, err);
    if (rc != FAB_OK)
        return rc;
    if (b->has_req && (rc = upgrade_locked(l, err)) != FAB_OK) /* version 1 knows no REQUEST */
        return rc;
    uint64_t start = l->end;
    if ((rc = ensure_map(l, start + b->total, err)) != FAB_OK)
        return rc;
    rc = put_locked(l, start, b->buf, b->blen, b->data, b->dlen, err);
    if (rc != FAB_OK)
        return rc;
    l->end = start + b->total;
    if (b->dlen)
        sentinel_written(l, b->data, b->dlen);
    else
        sentinel_written(l, b->buf, b->blen);
    l->last_rec = start + b->reply_at;
    l->records += b->nrec;
    if (l->lazy_from != NONE)
        l->gap_records += b->nrec;
    if (l->leader_waiting)
        pthread_cond_signal(&l->lead_cond);
    if (l->durability == FAB_DUR_OS)
        l->visible_end = l->end;
    *off_out = start + b->reply_at;
    return FAB_OK;
}

/*
 * Before the first record a version 1 reader does not know (a tombstone,
 * an expiring reply), a version 1 ledger's header is rewritten in place
 * as version 2 (one 64-byte pwrite; spec: Versions). Under the append lock.
 */
static int upgrade_locked(fab_ledger *l, fab_ledger_error *err)
{
    if (l->header[8] >= 2)
        return FAB_OK;
    uint8_t h[FAB_LEDGER_HEADER_SIZE];
    if (pread(l->fd, h, sizeof(h), 0) != (ssize_t)sizeof(h))
        return sys_fail(err, errno ? errno : EIO, "reading the ledger header");
    if (h[8] < 2) {
        h[8] = 2;
        h[9] = 0;
        fab_store_le32(h + 60, fab_crc32c(SEED_FILE, h, 60));
        int e = write_all(&l->io, l->fd, h, sizeof(h), 0);
        if (e != 0)
            return sys_fail(err, e, "upgrading the ledger header to version 2");
    }
    memcpy(l->header, h, sizeof(h));
    sentinel_set(l); /* it may lie in the header */
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
 * released during fdatasync. When the ledger moves to another file
 * meanwhile (generation gen changed), the compaction that replaced it
 * copied and synced the record: done. */
static int make_durable(fab_ledger *l, uint64_t upto, fab_ledger_error *err)
{
    uint64_t gen = l->gen;
    if (l->durability == FAB_DUR_OS) {
        if (l->visible_end < upto)
            l->visible_end = upto;
        return FAB_OK;
    }
    while (l->gen == gen && l->visible_end < upto) {
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
        int fd = l->fd; /* a reload waits for syncing == 0 before closing it */
        l->sync_started_records = l->records;
        l->syncs++;
        pthread_mutex_unlock(&l->mu);
        uint64_t t0 = now_ns(CLOCK_MONOTONIC);
        int rc = l->io.fdatasync(fd);
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
        if (l->gen == gen && l->visible_end < target)
            l->visible_end = target;
        pthread_cond_broadcast(&l->cond);
    }
    return FAB_OK;
}

/* Commits key at the record just written at off (REPLY or END): indexes it
 * and waits for its durability. */
static int commit_locked(fab_ledger *l, const uint8_t key[32], uint64_t hash, uint64_t off,
                         fab_ledger_error *err)
{
    /* The key holds no commit in force: none, a tombstone or an expired
     * one (room was reserved). */
    uint64_t at;
    int in_ix = 0;
    int found = index_entry(l, key, hash, &at, &in_ix);
    int ins = found > 0 ? index_commit(l, key, hash, off, in_ix)
                        : index_insert(l, key, hash, off, 0);
    FAB_ASSERT(ins == FAB_OK);
    FAB_UNUSED(ins);
    if (l->durability == FAB_DUR_OS)
        return FAB_OK;
    uint64_t gen = l->gen;
    l->n_pending++;
    int rc = make_durable(l, off + 1, err);
    if (rc == FAB_OK && l->gen == gen)
        l->n_pending -= l->n_pending > 0; /* a record whose sync failed stays pending: never counted (a clear meanwhile reset it) */
    return rc;
}

/* When key is already indexed: 1 (held, waiting for it to be durable), or
 * an error when that durability failed; 0 when absent. */
static int held_locked(fab_ledger *l, const uint8_t key[32], uint64_t hash,
                       fab_ledger_error *err)
{
    uint64_t off;
    int found = find_key(l, key, hash, &off, err);
    if (found <= 0)
        return found;
    if (check_lazy(l, off, err) != FAB_OK)
        return FAB_ECORRUPT;
    if (!rec_live(l, off))
        return 0; /* deleted or expired */
    int rc = make_durable(l, off + 1, err);
    return rc < 0 ? rc : 1;
}

/* Whether key holds a commit in force (no waiting); a negative code when
 * rebuilding after a corrupt checkpoint failed or its record is bad. */
static int indexed(fab_ledger *l, const uint8_t key[32], uint64_t hash)
{
    uint64_t off;
    int found = find_key(l, key, hash, &off, NULL);
    if (found <= 0)
        return found;
    if (check_lazy(l, off, NULL) != FAB_OK)
        return FAB_ECORRUPT;
    return rec_live(l, off);
}

/*
 * 1 when a key this handle holds may have been deleted by records it has
 * not replayed (spec: The key filter): others appended since it last
 * looked, and the key filter cannot tell that none of their records
 * deletes it (a tombstone of its key, a clear). Under the lock.
 */
static int held_in_doubt(fab_ledger *l, const uint8_t key[32])
{
    if (l->sh.p == NULL)
        return 0; /* a fork child reads the page it inherited: the same file */
    uint64_t pe = atomic_load_explicit(&l->sh.p->end, memory_order_relaxed);
    if (pe == l->end && l->lazy_from == NONE)
        return 0; /* nobody appended since: the index is the file's */
    return !filter_absent(l->sh.p, l->seen_clears, key,
                          l->lazy_from != NONE ? l->lazy_from : l->end);
}

int fab_ledger_record(fab_ledger *l, const uint8_t key[32], const void *data, size_t len,
                      fab_ledger_error *err)
{
    return fab_ledger_record_ex(l, key, data, len, 0, err);
}

int fab_ledger_record_ex(fab_ledger *l, const uint8_t key[32], const void *data, size_t len,
                         uint64_t expires_ns, fab_ledger_error *err)
{
    return fab_ledger_record_req(l, key, NULL, 0, data, len, expires_ns, err);
}

int fab_ledger_record_req(fab_ledger *l, const uint8_t key[32], const void *req, size_t rlen,
                          const void *data, size_t len, uint64_t expires_ns,
                          fab_ledger_error *err)
{
    built_reply bb, *b = &bb;
    bb.buf = bb.small;
    pthread_mutex_lock(&l->mu);
    if (l->sh.p != NULL && l->filter_seen) /* the key's filter block: a miss, while the reply is built */
        __builtin_prefetch((const void *)(shl_filter(l->sh.p) +
                                          (fab_load_le64(key) & (SHL_FILTER_BITS / 512 - 1)) * 8));
    uint64_t seed = l->ix.seed, hash = fab_lindex_hash(&l->ix, key), off = 0;
    int rc = refuse(l, err);
    if (rc == FAB_OK)
        rc = held_locked(l, key, hash, err);
    if (rc == 1 && held_in_doubt(l, key)) {
        /* Held as far as this handle has replayed, but the records after
         * that may delete it: caught up as a miss is, then looked at again. */
        uint64_t now = now_ns(CLOCK_MONOTONIC);
        rc = miss_look_by_page(l, now, err);
        if (rc == 2 && (rc = catch_up_locked(l, 2, err)) >= 0)
            l->looked_ns = now;
        if (rc >= 0) {
            seed = l->ix.seed;
            hash = fab_lindex_hash(&l->ix, key);
            rc = held_locked(l, key, hash, err);
        }
    }
    if (rc != 0) { /* held (1: nothing to write) or an error */
        rc = rc == 1 ? 0 : rc;
        goto out;
    }
    uint8_t expiry[8];
    fab_store_le64(expiry, expires_ns);
    if ((rc = build_reply(b, req, rlen, expires_ns ? FAB_REC_FLAG_EXPIRES : 0, key, expiry,
                          expires_ns ? 8 : 0, data, len, err)) != FAB_OK)
        goto out;
    /* The index grows (a rehash of every entry) here rather than under
     * the append lock, where the other writers would wait for it: room
     * for this record and the others' that the lock's catch-up may defer
     * (failing here is not an error: the reservation under the lock
     * reports it). */
    (void)fab_lindex_reserve(&l->ix, l->ix.count + 2 * DEFER_MAX + 2);
    l->defer_ok = 1; /* the others' records: index entries after the lock */
    l->lazy_key = key; /* and perhaps none of them (the key filter) */
    rc = begin_append(l, err);
    l->lazy_key = NULL;
    l->defer_ok = 0;
    if (rc != FAB_OK)
        goto out;
    /* Another writer recorded it first (when begin_append replayed nothing,
     * the index is as held_locked saw it: no second probe). The others'
     * records whose entries are deferred are looked at directly: when one
     * is key's, they are indexed now. */
    if (!l->append_fresh && l->n_def && defer_holds(l, key) && (rc = defer_settle(l, err)) < 0) {
        end_append(l);
        goto out;
    }
    if (l->ix.seed != seed) /* a move (or a rebuild) re-seeds the index */
        hash = fab_lindex_hash(&l->ix, key);
    if (!l->append_fresh && indexed(l, key, hash)) {
        end_append(l);
        /* the index whole before held_locked may wait (releasing l->mu) */
        if ((rc = defer_settle(l, err)) >= 0) {
            rc = held_locked(l, key, fab_lindex_hash(&l->ix, key), err);
            rc = rc == 1 ? 0 : rc;
        }
        goto out;
    }
    if ((rc = fab_lindex_reserve(&l->ix, l->ix.count + l->n_def + 1)) != FAB_OK) {
        end_append(l);
        set_err(err, rc, 0, 0, 0, "growing the ledger index: %s", fab_strerror(rc));
        goto out;
    }
    if (expires_ns && (rc = upgrade_locked(l, err)) != FAB_OK) {
        end_append(l);
        goto out;
    }
    rc = put_built_locked(l, b, &off, err);
    end_append(l);
    /* the others' records first, then this one (commit_locked may wait,
     * releasing l->mu) */
    int frc = defer_settle(l, rc == FAB_OK ? err : NULL);
    if (rc != FAB_OK)
        goto out;
    if ((rc = frc) < 0)
        goto out;
    rc = commit_locked(l, key, frc == 1 ? fab_lindex_hash(&l->ix, key) : hash, off, err);
    if (rc == FAB_OK)
        rc = 1;
out:
    if (l->n_def) { /* an error on the way: the index is made whole all the same */
        int e = defer_settle(l, rc < 0 ? NULL : err);
        if (e < 0 && rc >= 0)
            rc = e;
    }
    pthread_mutex_unlock(&l->mu);
    built_free(b);
    return rc;
}

/* Waits until the record at off is durable per the mode (a tombstone). */
static int settle_locked(fab_ledger *l, uint64_t off, fab_ledger_error *err)
{
    if (l->durability == FAB_DUR_OS)
        return FAB_OK;
    return make_durable(l, off + 1, err);
}

int fab_ledger_delete(fab_ledger *l, const uint8_t key[32], fab_ledger_error *err)
{
    pthread_mutex_lock(&l->mu);
    int rc = begin_append(l, err);
    if (rc != FAB_OK)
        goto out;
    uint64_t hash = fab_lindex_hash(&l->ix, key), at, off;
    int in_ix = 0;
    int found = find_key(l, key, hash, &at, err); /* rebuilds a bad checkpoint */
    if (found >= 0)
        found = index_entry(l, key, hash, &at, &in_ix);
    if (found < 0) {
        end_append(l);
        rc = found;
        set_err(err, rc, 0, 0, 0, "looking up the key to delete: %s", fab_strerror(rc));
        goto out;
    }
    if (!found || l->map->base[at + 4] == FAB_REC_TOMBSTONE) {
        end_append(l);
        rc = 0; /* not held: nothing to write */
        goto out;
    }
    int live = rec_live(l, at);
    if ((rc = fab_lindex_reserve(&l->ix, l->ix.count + 1)) != FAB_OK) {
        end_append(l);
        set_err(err, rc, 0, 0, 0, "growing the ledger index: %s", fab_strerror(rc));
        goto out;
    }
    if ((rc = upgrade_locked(l, err)) == FAB_OK)
        rc = append_locked(l, FAB_REC_TOMBSTONE, key, NULL, 0, NULL, 0, &off, err);
    end_append(l);
    if (rc != FAB_OK)
        goto out;
    rc = index_tombstone(l, key, hash, off, in_ix);
    FAB_ASSERT(rc == FAB_OK); /* room was reserved */
    rc = settle_locked(l, off, err);
    if (rc == FAB_OK)
        rc = live;
out:
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int fab_ledger_clear(fab_ledger *l, fab_ledger_error *err)
{
    static const uint8_t zero[32];
    static const uint8_t one = 1;
    pthread_mutex_lock(&l->mu);
    uint64_t off;
    int rc = begin_append(l, err);
    if (rc != FAB_OK)
        goto out;
    uint64_t held = index_keys(l);
    if ((rc = upgrade_locked(l, err)) == FAB_OK)
        rc = append_locked(l, FAB_REC_TOMBSTONE, zero, NULL, 0, &one, 1, &off, err);
    end_append(l);
    if (rc != FAB_OK)
        goto out;
    index_clear(l);
    rc = settle_locked(l, off, err);
    if (rc == FAB_OK)
        rc = held > INT32_MAX ? INT32_MAX : (int)held;
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
    return fab_ledger_stream_begin_req(l, key, NULL, 0, begin, err);
}

int fab_ledger_stream_begin_req(fab_ledger *l, const uint8_t key[32], const void *req,
                                size_t rlen, uint64_t *begin, fab_ledger_error *err)
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
    if ((rc = begin_append(l, err)) != FAB_OK)
        goto out;
    hash = fab_lindex_hash(&l->ix, key);
    if (!l->append_fresh && indexed(l, key, hash)) {
        end_append(l);
        rc = held_locked(l, key, hash, err);
        rc = rc == 1 ? 0 : rc;
        goto out;
    }
    rc = append_req_locked(l, req, rlen, FAB_REC_STREAM_BEGIN, 0, key, NULL, 0, NULL, 0, begin,
                           err);
    end_append(l);
    if (rc == FAB_OK)
        rc = 1;
out:
    pthread_mutex_unlock(&l->mu);
    return rc;
}

/* Whether begin is still this stream's BEGIN record in the file the ledger
 * has open (a compaction that replaced the file drops unfinished streams). */
static int stream_alive(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                        fab_ledger_error *err)
{
    if (begin >= FAB_LEDGER_HEADER_SIZE && begin < l->end &&
        l->end - begin >= FAB_LEDGER_REC_OVERHEAD) {
        const uint8_t *p = l->map->base + begin;
        if (memcmp(p, REC_MAGIC, 4) == 0 && p[4] == FAB_REC_STREAM_BEGIN &&
            memcmp(p + FAB_LEDGER_REC_HEADER, key, 32) == 0)
            return 1;
    }
    set_err(err, FAB_ESTATE, 0, begin, 1,
            "the ledger was compacted or replaced while this stream was being recorded: "
            "the stream is lost, record it again");
    return 0;
}

/* Appends a record of the stream at begin (CHUNK or ABORT). */
static int stream_record(fab_ledger *l, int type, const uint8_t key[32], uint64_t begin,
                         const void *data, size_t len, fab_ledger_error *err)
{
    uint8_t prefix[8];
    fab_store_le64(prefix, begin);
    uint64_t off;
    pthread_mutex_lock(&l->mu);
    int rc = begin_append(l, err);
    if (rc == FAB_OK) {
        if (stream_alive(l, key, begin, err))
            rc = append_locked(l, type, key, prefix, 8, data, len, &off, err);
        else
            rc = type == FAB_REC_STREAM_ABORT ? FAB_OK : FAB_ESTATE;
        end_append(l);
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int fab_ledger_stream_append(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                             const void *data, size_t len, fab_ledger_error *err)
{
    return stream_record(l, FAB_REC_STREAM_CHUNK, key, begin, data, len, err);
}

/*
 * Writes the CHUNK records of n items packed as [4-byte length][bytes]...
 * with one pwrite, under one append lock. Under the lock, the append lock
 * held. Like append_locked: on failure the file is cut back.
 */
static int append_chunks_locked(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                                const uint8_t *packed, size_t len, fab_ledger_error *err)
{
    int rc = refuse(l, err);
    if (rc != FAB_OK)
        return rc;
    uint64_t total = 0, n = 0;
    for (size_t at = 0; at < len; n++) {
        if (len - at < 4) {
            set_err(err, FAB_EINVAL, 0, 0, 0, "a packed batch of stream items is malformed");
            return FAB_EINVAL;
        }
        size_t dlen = fab_load_le32(packed + at);
        if (dlen > len - at - 4) {
            set_err(err, FAB_EINVAL, 0, 0, 0, "a packed batch of stream items is malformed");
            return FAB_EINVAL;
        }
        if (dlen > FAB_LEDGER_MAX_PAYLOAD - 8) {
            set_err(err, FAB_ERANGE, 0, 0, 0, "a stream item of %zu bytes is larger than the "
                    "ledger's limit of %zu bytes", dlen, (size_t)FAB_LEDGER_MAX_PAYLOAD - 8);
            return FAB_ERANGE;
        }
        total += FAB_LEDGER_REC_OVERHEAD + 8 + dlen;
        at += 4 + dlen;
    }
    if (n == 0)
        return FAB_OK;
    if (total > SIZE_MAX / 2) {
        set_err(err, FAB_ERANGE, 0, 0, 0, "a batch of stream items is too large");
        return FAB_ERANGE;
    }
    uint64_t off = l->end;
    if ((rc = ensure_map(l, off + total, err)) != FAB_OK)
        return rc;
    uint8_t *buf = malloc((size_t)total);
    if (buf == NULL) {
        set_err(err, FAB_ENOMEM, 0, 0, 0, "no memory for a batch of stream items");
        return FAB_ENOMEM;
    }
    uint8_t prefix[8];
    fab_store_le64(prefix, begin);
    uint64_t pos = 0, last = off;
    for (size_t at = 0; at < len;) {
        size_t dlen = fab_load_le32(packed + at);
        const uint8_t *data = packed + at + 4;
        uint8_t *h = buf + pos;
        last = off + pos;
        rec_header(h, FAB_REC_STREAM_CHUNK, key, prefix, 8, data, dlen);
        memcpy(h + FAB_LEDGER_REC_HEADER, key, 32);
        memcpy(h + FAB_LEDGER_REC_OVERHEAD, prefix, 8);
        memcpy(h + FAB_LEDGER_REC_OVERHEAD + 8, data, dlen);
        pos += FAB_LEDGER_REC_OVERHEAD + 8 + dlen;
        at += 4 + dlen;
    }
    rc = put_locked(l, off, buf, (size_t)total, NULL, 0, err);
    if (rc != FAB_OK) {
        free(buf);
        return rc;
    }
    l->end = off + total;
    sentinel_written(l, buf, (size_t)total);
    free(buf);
    l->last_rec = last;
    l->records += n;
    if (l->lazy_from != NONE)
        l->gap_records += n;
    if (l->leader_waiting)
        pthread_cond_signal(&l->lead_cond);
    if (l->durability == FAB_DUR_OS)
        l->visible_end = l->end;
    return FAB_OK;
}

int fab_ledger_stream_append_batch(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                                   const void *packed, size_t len, fab_ledger_error *err)
{
    if (len == 0)
        return FAB_OK;
    pthread_mutex_lock(&l->mu);
    int rc = begin_append(l, err);
    if (rc == FAB_OK) {
        if (stream_alive(l, key, begin, err))
            rc = append_chunks_locked(l, key, begin, packed, len, err);
        else
            rc = FAB_ESTATE;
        end_append(l);
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int fab_ledger_stream_abort(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                            fab_ledger_error *err)
{
    return stream_record(l, FAB_REC_STREAM_ABORT, key, begin, NULL, 0, err);
}

int fab_ledger_stream_end(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                          uint64_t count, fab_ledger_error *err)
{
    uint8_t prefix[16];
    fab_store_le64(prefix, begin);
    fab_store_le64(prefix + 8, count);
    uint64_t off;
    pthread_mutex_lock(&l->mu);
    int rc = begin_append(l, err);
    if (rc != FAB_OK)
        goto out;
    if (!stream_alive(l, key, begin, err)) {
        end_append(l);
        rc = FAB_ESTATE;
        goto out;
    }
    uint64_t hash = fab_lindex_hash(&l->ix, key);
    if (indexed(l, key, hash)) {
        /* Another record committed the key first: this stream gives way. */
        rc = append_locked(l, FAB_REC_STREAM_ABORT, key, prefix, 8, NULL, 0, &off, err);
        end_append(l);
        goto out;
    }
    if ((rc = fab_lindex_reserve(&l->ix, l->ix.count + 1)) != FAB_OK) {
        end_append(l);
        set_err(err, rc, 0, 0, 0, "growing the ledger index: %s", fab_strerror(rc));
        goto out;
    }
    rc = append_locked(l, FAB_REC_STREAM_END, key, prefix, 16, NULL, 0, &off, err);
    end_append(l);
    if (rc != FAB_OK)
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
    ref->gen = l->gen;
    ref->type = p[4];
    ref->flags = p[5];
    ref->expires_ns = 0;
    if (ref->type == FAB_REC_REPLY) {
        ref->data = p + FAB_LEDGER_REC_OVERHEAD;
        ref->len = rec_payload_len(p);
        if (ref->flags & FAB_REC_FLAG_EXPIRES) {
            ref->expires_ns = fab_load_le64(ref->data);
            ref->data += 8;
            ref->len -= 8;
        }
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

/* A lookup in the index of what is visible. Under the lock. */
static int find_visible(fab_ledger *l, const uint8_t key[32], uint64_t *off)
{
    return find_key(l, key, fab_lindex_hash(&l->ix, key), off, NULL) == 1 &&
           *off < l->visible_end;
}

/* The error of a bad record at off that the checkpoint names. */
static int lazy_bad(fab_ledger_error *err, uint64_t off)
{
    set_err(err, FAB_ECORRUPT, 0, off, 1,
            "ledger corrupt at offset %llu: the record the checkpoint names there is bad "
            "(open with recover=\"salvage\" to skip it)",
            (unsigned long long)off);
    return FAB_ECORRUPT;
}

/* A record below lazy_end was not validated at open (it came from the
 * checkpoint): validate it the first time... every time it is read (the
 * CRC of a small reply costs tens of nanoseconds). 0 or FAB_ECORRUPT. */
static int check_lazy(fab_ledger *l, uint64_t off, fab_ledger_error *err)
{
    uint64_t size, claimed;
    if (off >= l->lazy_end || rec_valid(l->map->base, l->end, off, &size, &claimed))
        return FAB_OK;
    return lazy_bad(err, off);
}

/* The visible commit in force of key: 1 and *off, 0 (none, deleted or
 * expired) or FAB_ECORRUPT. Under the lock, the mapping checked. */
static int find_live(fab_ledger *l, const uint8_t key[32], uint64_t *off, fab_ledger_error *err)
{
    if (!find_visible(l, key, off))
        return 0;
    if (check_lazy(l, *off, err) != FAB_OK)
        return FAB_ECORRUPT;
    return rec_live(l, *off);
}

/*
 * Without the lock: the index may be growing or replaced by another thread
 * meanwhile, so its fields are read relaxed and may be stale or mixed (the
 * slot address then is wrong, even freed or outside the table). That is
 * harmless for a prefetch, which never faults (x86 PREFETCH, ARM PRFM):
 * the address is never dereferenced.
 */
void fab_ledger_prefetch(const fab_ledger *l, const uint8_t key[32])
{
    fab_lindex ix = {0};
    ix.slots = __atomic_load_n(&l->ix.slots, __ATOMIC_RELAXED);
    ix.mask = __atomic_load_n(&l->ix.mask, __ATOMIC_RELAXED);
    ix.seed = __atomic_load_n(&l->ix.seed, __ATOMIC_RELAXED);
    if (ix.slots != NULL) {
        size_t i = (size_t)fab_lindex_hash(&ix, key) & ix.mask;
        __builtin_prefetch((const void *)((uintptr_t)ix.slots + i * sizeof(fab_lindex_slot)));
    }
}

/*
 * A miss's look at the file without a system call, through the append
 * lock page (spec: Seeing the others' records): when this handle looked
 * at the file (fstat) less than 1 ms ago, saw no torn tail then, the
 * sentinel reads as it was and the page's end equals the handle's, nobody
 * appended since: 0. When the page's end is larger, the others' records
 * (each written whole under the page's mutex before its end was
 * published) end there: they are replayed up to it, 1 when that worked.
 * 2 when the page cannot answer (no page, an end of 0 after a failed
 * append, a dead holder or a compaction, a look too old, a torn or
 * faulting tail): the caller fstat's. Under the lock. An append under way
 * in another process leaves the page's end as it was until it returns
 * (it publishes its end before it releases the mutex), so a record is
 * found by the first miss after its append returned.
 *
 * The page's end is read without its mutex: the bytes below a published
 * end are only ever read (appends go after it, a compaction renames a new
 * file over the path and leaves the end 0), and the replay checks every
 * record's checksums, falling back to the fstat when it meets anything
 * but whole records up to the end. begin_append uses it too, before it
 * takes the mutex.
 */
static int miss_look_by_page(fab_ledger *l, uint64_t now, fab_ledger_error *err)
{
    if (l->sh.p == NULL || l->forked || !l->sent_ok || l->scanned_size > l->end)
        return 2;
    uint64_t pend = atomic_load_explicit(&l->sh.p->end, memory_order_acquire);
    if (pend < l->end || pend == 0 || now - l->looked_ns >= LOOK_EVERY_NS ||
        sentinel_read(l) != 1)
        return 2;
    if (pend == l->end && l->lazy_from == NONE)
        return 0;
    int rc = catch_up_to(l, pend, err);
    return rc < 0 ? rc : rc == 1 ? 1 : 2;
}

int fab_ledger_lookup(fab_ledger *l, const uint8_t key[32], int want_map, fab_ledger_ref *ref,
                      fab_ledger_error *err)
{
    pthread_mutex_lock(&l->mu);
    uint64_t off;
    /* The index compares the full key against the mapping: check first
     * that the file still holds it. */
    int found = check_size_locked(l, err);
    if (found == FAB_OK) {
        found = find_live(l, key, &off, err);
        if (found == 0) {
            /* A miss looks at the file: others' appends, a replacement;
             * through the lock page when it can tell, else by fstat. */
            int rc = miss_look_by_page(l, now_ns(CLOCK_MONOTONIC), err);
            if (rc == 2) {
                rc = catch_up_locked(l, 2, err);
                if (rc >= 0)
                    l->looked_ns = now_ns(CLOCK_MONOTONIC);
            }
            found = rc < 0 ? rc : rc > 0 ? find_live(l, key, &off, err) : 0;
        }
    }
    if (found == 1)
        fill_ref(l, off, want_map, ref);
    pthread_mutex_unlock(&l->mu);
    return found;
}

/*
 * The offset of the REQUEST record right before the record at off when it
 * is flagged REQUESTED, else NONE. The REQUEST ends where off starts and
 * its length is unknown, so this looks back for its header: the nearest
 * valid REQUEST of the same key ending exactly at off. A request's bytes
 * cannot hold such a record of their own key (the key is a hash of those
 * bytes), so the first found is the one. Costs a look at each byte of the
 * request. Under the lock.
 */
static uint64_t request_before(fab_ledger *l, uint64_t off)
{
    const uint8_t *base = l->map->base, *p = base + off;
    if (p[4] == FAB_REC_STREAM_END)
        p = base + (off = fab_load_le64(p + FAB_LEDGER_REC_OVERHEAD));
    if (!(p[5] & FAB_REC_FLAG_REQUESTED) || off < FAB_LEDGER_HEADER_SIZE + FAB_LEDGER_REC_OVERHEAD)
        return NONE;
    uint64_t lowest = off - FAB_LEDGER_REC_OVERHEAD - FAB_LEDGER_MAX_PAYLOAD;
    if (off < FAB_LEDGER_REC_OVERHEAD + FAB_LEDGER_MAX_PAYLOAD + FAB_LEDGER_HEADER_SIZE)
        lowest = FAB_LEDGER_HEADER_SIZE;
    for (uint64_t at = off - FAB_LEDGER_REC_OVERHEAD + 1; at-- > lowest;) {
        const uint8_t *q = base + at;
        if (q[0] != REC_MAGIC[0] || memcmp(q, REC_MAGIC, 4) != 0 || q[4] != FAB_REC_REQUEST ||
            rec_payload_len(q) != off - at - FAB_LEDGER_REC_OVERHEAD ||
            memcmp(q + FAB_LEDGER_REC_HEADER, p + FAB_LEDGER_REC_HEADER, 32) != 0)
            continue;
        uint64_t size, claimed;
        if (rec_valid(base, off, at, &size, &claimed))
            return at;
    }
    return NONE;
}

int fab_ledger_request(fab_ledger *l, const uint8_t key[32], int want_map, fab_ledger_ref *ref,
                       fab_ledger_error *err)
{
    fab_ledger_ref c;
    int found = fab_ledger_lookup(l, key, 0, &c, err);
    if (found != 1)
        return found;
    pthread_mutex_lock(&l->mu);
    found = 0;
    /* The mapping may have moved since the lookup: look again under the lock. */
    uint64_t off;
    if (find_live(l, key, &off, NULL) == 1) {
        uint64_t at = request_before(l, off);
        if (at != NONE) {
            const uint8_t *q = l->map->base + at;
            ref->offset = at;
            ref->gen = l->gen;
            ref->type = FAB_REC_REQUEST;
            ref->flags = q[5];
            ref->expires_ns = 0;
            ref->data = q + FAB_LEDGER_REC_OVERHEAD;
            ref->len = (size_t)rec_payload_len(q);
            ref->map = NULL;
            if (want_map) {
                fab_lmap_retain(l->map);
                ref->map = l->map;
            }
            found = 1;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return found;
}

int fab_ledger_checkpoint(fab_ledger *l, fab_ledger_error *err)
{
    pthread_mutex_lock(&l->mu);
    int rc = ckpt_write_locked(l, err);
    pthread_mutex_unlock(&l->mu);
    return rc;
}

uint64_t fab_ledger_generation(fab_ledger *l)
{
    pthread_mutex_lock(&l->mu);
    uint64_t g = l->gen;
    pthread_mutex_unlock(&l->mu);
    return g;
}

/* Replays the others' records that this handle's lazy appends went past
 * (spec: The key filter), so that its view is again a prefix of the file.
 * Under the lock. 0 or an error. */
static int fill_gap_locked(fab_ledger *l, fab_ledger_error *err)
{
    if (l->lazy_from == NONE)
        return FAB_OK;
    uint64_t before = l->records;
    fab_ledger_scan_result res;
    int rc = replay(l, l->end, 1, NULL, NULL, &res, err);
    if (rc == FAB_OK)
        l->foreign_records += l->records - before;
    return rc;
}

size_t fab_ledger_count(fab_ledger *l)
{
    pthread_mutex_lock(&l->mu);
    (void)check_size_locked(l, NULL); /* a compacted file: count the new one */
    (void)fill_gap_locked(l, NULL); /* else the count is this handle's view */
    size_t n = (size_t)index_keys(l);
    pthread_mutex_unlock(&l->mu);
    return n;
}


/* The next record at or after *pos below visible_end; 1, 0 at the end, or
 * FAB_ECORRUPT (a record named by the checkpoint is bad: err, when not NULL,
 * says where). */
static int next_record(fab_ledger *l, uint64_t *pos, const uint8_t **rec, uint64_t *size,
                       fab_ledger_error *err)
{
    if (*pos < FAB_LEDGER_HEADER_SIZE)
        *pos = FAB_LEDGER_HEADER_SIZE;
    if (l->n_skips)
        *pos = skip_bad(l, *pos);
    if (*pos >= l->visible_end)
        return 0;
    if (*pos < l->lazy_end && check_lazy(l, *pos, err) != FAB_OK)
        return FAB_ECORRUPT; /* never walk by an unvalidated length */
    const uint8_t *p = l->map->base + *pos;
    *rec = p;
    *size = FAB_LEDGER_REC_OVERHEAD + rec_payload_len(p);
    return 1;
}

int fab_ledger_next(fab_ledger *l, fab_ledger_pos *pos, uint8_t key[32], int want_map,
                    fab_ledger_ref *ref, fab_ledger_error *err)
{
    int rc = 0;
    pthread_mutex_lock(&l->mu);
    if ((rc = check_size_locked(l, err)) != FAB_OK)
        goto out;
    if (pos->off == 0) /* a new iteration starts on the file as it is now (moved to, if any) */
        pos->gen = l->gen;
    if (pos->off == 0 && (rc = fill_gap_locked(l, err)) != FAB_OK)
        goto out;
    if (pos->gen != l->gen) {
        set_err(err, FAB_ESTATE, 0, 0, 0,
                "the ledger was replaced or shrank during the iteration");
        rc = FAB_ESTATE;
        goto out;
    }
    const uint8_t *p;
    uint64_t size;
    int more;
    while ((more = next_record(l, &pos->off, &p, &size, err)) > 0) {
        uint64_t off = pos->off, at;
        pos->off += size;
        if (p[4] != FAB_REC_REPLY && p[4] != FAB_REC_STREAM_END)
            continue;
        const uint8_t *k = p + FAB_LEDGER_REC_HEADER;
        if (find_key(l, k, fab_lindex_hash(&l->ix, k), &at, NULL) == 1 && at == off &&
            rec_live(l, off)) {
            memcpy(key, k, 32);
            fill_ref(l, off, want_map, ref);
            rc = 1;
            break;
        }
    }
    if (more < 0)
        rc = FAB_ECORRUPT; /* err says where and why (check_lazy) */
out:
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int fab_ledger_stream_open(fab_ledger *l, const uint8_t key[32], fab_ledger_cursor *c)
{
    pthread_mutex_lock(&l->mu);
    uint64_t off;
    int rc = check_size_locked(l, NULL);
    if (rc == FAB_OK) {
        int found = find_live(l, key, &off, NULL);
        rc = found < 0 ? found : found == 0 ? FAB_ENOTFOUND : FAB_OK;
    }
    if (rc == FAB_OK && l->map->base[off + 4] != FAB_REC_STREAM_END)
        rc = FAB_ETYPE;
    if (rc == FAB_OK) {
        const uint8_t *payload = l->map->base + off + FAB_LEDGER_REC_OVERHEAD;
        c->begin = fab_load_le64(payload);
        c->count = fab_load_le64(payload + 8);
        c->end = off;
        c->pos = c->begin + FAB_LEDGER_REC_OVERHEAD;
        c->seen = 0;
        c->gen = l->gen;
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int fab_ledger_stream_next(fab_ledger *l, fab_ledger_cursor *c, int want_map,
                           fab_ledger_ref *item)
{
    int rc = 0;
    pthread_mutex_lock(&l->mu);
    if (check_size_locked(l, NULL) != FAB_OK) {
        rc = FAB_EIO;
        goto out;
    }
    if (c->gen != l->gen) {
        rc = FAB_ESTATE;
        goto out;
    }
    const uint8_t *p;
    uint64_t size;
    while (c->pos < c->end && next_record(l, &c->pos, &p, &size, NULL) > 0) {
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
out:
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int fab_ledger_ref_crc(const fab_ledger_ref *ref, uint32_t *crc)
{
    if (ref->map == NULL)
        return FAB_EINVAL;
    const uint8_t *rec = ref->map->base + ref->offset;
    const uint8_t *body = rec + FAB_LEDGER_REC_HEADER; /* key, then payload */
    const uint8_t *end = rec + FAB_LEDGER_REC_OVERHEAD + rec_payload_len(rec);
    if (ref->data < body || ref->data > end || (size_t)(end - ref->data) != ref->len)
        return FAB_EINVAL;
    uint32_t head = fab_crc32c(SEED_BODY, body, (size_t)(ref->data - body));
    *crc = fab_load_le32(rec + 12) ^ fab_crc32c_shift(head, ref->len);
    return FAB_OK;
}

void fab_ledger_get_stats(fab_ledger *l, fab_ledger_stats *st)
{
    memset(st, 0, sizeof(*st));
    pthread_mutex_lock(&l->mu);
    (void)check_size_locked(l, NULL); /* a compacted file: describe the new one */
    (void)fill_gap_locked(l, NULL); /* the counts of a view that is a prefix of the file */
    st->records = l->records;
    st->keys = index_keys(l);
    st->tombstones = l->tomb;
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
    st->reloads = l->reloads;
    st->foreign_records = l->foreign_records;
    st->leftovers_removed = l->leftovers_removed;
    st->exclusive = l->exclusive;
    st->append_lock = l->mode != FAB_LEDGER_WRITE || l->exclusive ? 0 : l->sh.p ? 2 : 1;
    st->owner_dead = l->owner_dead;
    st->lazy_appends = l->lazy_appends;
    st->mapped_appends = l->mapped_appends;
    struct stat sb;
    if (l->fd >= 0 && fstat(l->fd, &sb) == 0 && (uint64_t)sb.st_size > l->end)
        st->reserved_bytes = (uint64_t)sb.st_size - l->end;
    st->ckpt_state = l->ckpt_state;
    st->ckpt_covered = l->ck.base ? l->ck.covered : 0;
    st->ckpt_keys = l->ck.base ? l->ck.count : 0;
    st->ckpt_written = l->ckpt_written;
    st->open_replayed = l->open_replayed;
    memcpy(st->creator, l->header + 24, FAB_LEDGER_CREATOR_LEN);
    dev_t dev = l->dev;
    ino_t ino = l->ino;
    pthread_mutex_unlock(&l->mu);
    long pid;
    st->writers = lock_holders(dev, ino, &pid);
}

int fab_ledger_refresh(fab_ledger *l, fab_ledger_error *err)
{
    pthread_mutex_lock(&l->mu);
    int rc = catch_up_locked(l, 1, err);
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
    uint64_t bad;  /* 1 + the offset of a bad record the checkpoint names (e is EIO) */
    int dry;       /* count the bytes only (sizing for eviction) */
    int phase2;    /* copy every tombstone: it may end a commit already copied */
    uint64_t evict_left; /* leave out the oldest keys until this many bytes were left out */
    uint64_t evicted;    /* keys left out */
} out_file;

static void out_flush(out_file *o)
{
    if (o->dry)
        return;
    if (o->e == 0 && o->used)
        o->e = write_all(o->io, o->fd, o->buf, o->used, o->off);
    o->off += o->used;
    o->used = 0;
}

static void out_write(out_file *o, const void *data, size_t len)
{
    if (len == 0)
        return;
    if (o->dry) {
        o->off += len;
        return;
    }
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

static void out_record_f(out_file *o, int type, int flags, const uint8_t key[32],
                         const void *prefix, size_t plen, const void *data, size_t dlen)
{
    uint8_t h[FAB_LEDGER_REC_OVERHEAD];
    if (o->dry) {
        o->off += sizeof(h) + plen + dlen;
        return;
    }
    rec_header_f(h, type, flags, key, prefix, plen, data, dlen);
    memcpy(h + FAB_LEDGER_REC_HEADER, key, 32);
    out_write(o, h, sizeof(h));
    out_write(o, prefix, plen);
    out_write(o, data, dlen);
}

static void out_record(out_file *o, int type, const uint8_t key[32], const void *prefix,
                       size_t plen, const void *data, size_t dlen)
{
    out_record_f(o, type, 0, key, prefix, plen, data, dlen);
}

static void copy_stream(fab_ledger *l, out_file *o, const uint8_t *k, const uint8_t *p,
                        uint64_t off);

/*
 * Writes the keys committed in [*pos, limit), in ledger order, to o,
 * stopping after about COMPACT_STEP bytes of the source; advances *pos.
 * Under the lock. Returns 1 when [*pos, limit) is done.
 */
static int compact_range(fab_ledger *l, out_file *o, uint64_t *pos, uint64_t limit)
{
    uint64_t size, at, stop = *pos + COMPACT_STEP;
    const uint8_t *p;
    while (o->e == 0 && *pos < limit && *pos < stop) {
        uint64_t end_was = l->visible_end;
        l->visible_end = limit; /* next_record stops at visible_end */
        int more = next_record(l, pos, &p, &size, NULL);
        l->visible_end = end_was;
        if (more < 0) { /* a bad record the checkpoint names: never copy garbage */
            o->e = EIO;
            o->bad = *pos + 1;
        }
        if (more <= 0)
            break;
        uint64_t off = *pos;
        *pos += size;
        if (p[4] == FAB_REC_TOMBSTONE) {
            if (o->phase2)
                out_write(o, p, (size_t)size);
            continue;
        }
        if (p[4] != FAB_REC_REPLY && p[4] != FAB_REC_STREAM_END)
            continue;
        const uint8_t *k = p + FAB_LEDGER_REC_HEADER;
        if (find_key(l, k, fab_lindex_hash(&l->ix, k), &at, NULL) != 1 || at != off ||
            !rec_live(l, off))
            continue; /* a duplicate, deleted or expired */
        if (o->evict_left) { /* the oldest keys go first, a stream whole */
            uint64_t usize = size;
            if (p[4] == FAB_REC_STREAM_END) {
                out_file d = {.dry = 1};
                copy_stream(l, &d, k, p, off);
                usize = d.off;
            }
            o->evict_left = usize >= o->evict_left ? 0 : o->evict_left - usize;
            o->evicted++;
            continue;
        }
        if (p[4] == FAB_REC_REPLY) {
            uint64_t req = request_before(l, off);
            if (req != NONE) /* its REQUEST goes with it, right before */
                out_write(o, l->map->base + req, (size_t)(off - req));
            /* a REPLY holds no offsets: copy verbatim (a lost REQUEST: unflagged) */
            if (req == NONE && (p[5] & FAB_REC_FLAG_REQUESTED))
                out_record_f(o, FAB_REC_REPLY, p[5] & ~FAB_REC_FLAG_REQUESTED, k, NULL, 0,
                             p + FAB_LEDGER_REC_OVERHEAD,
                             (size_t)(size - FAB_LEDGER_REC_OVERHEAD));
            else
                out_write(o, p, (size_t)size);
            continue;
        }
        copy_stream(l, o, k, p, off);
    }
    return o->e != 0 || *pos >= limit;
}

/* Writes the stream whose END record p is at off: BEGIN, its chunks with
 * the new BEGIN offset, END. Under the lock. */
static void copy_stream(fab_ledger *l, out_file *o, const uint8_t *k, const uint8_t *p,
                        uint64_t off)
{
    {
        uint64_t begin = fab_load_le64(p + FAB_LEDGER_REC_OVERHEAD);
        uint64_t count = fab_load_le64(p + FAB_LEDGER_REC_OVERHEAD + 8);
        uint8_t prefix[16];
        fab_store_le64(prefix, out_pos(o));
        fab_store_le64(prefix + 8, count);
        uint64_t req = request_before(l, off);
        if (req != NONE) { /* the REQUEST right before the BEGIN */
            out_write(o, l->map->base + req, (size_t)(begin - req));
            fab_store_le64(prefix, out_pos(o));
        }
        out_record_f(o, FAB_REC_STREAM_BEGIN, req != NONE ? FAB_REC_FLAG_REQUESTED : 0, k, NULL,
                     0, NULL, 0);
        uint64_t cpos = begin + FAB_LEDGER_REC_OVERHEAD, csize;
        const uint8_t *c;
        while (cpos < off) {
            uint64_t end_was2 = l->visible_end;
            l->visible_end = off;
            int ok = next_record(l, &cpos, &c, &csize, NULL);
            l->visible_end = end_was2;
            if (ok < 0) {
                o->e = EIO;
                o->bad = cpos + 1;
            }
            if (ok <= 0)
                break;
            cpos += csize;
            if (c[4] != FAB_REC_STREAM_CHUNK || fab_load_le64(c + FAB_LEDGER_REC_OVERHEAD) != begin)
                continue;
            out_record_f(o, FAB_REC_STREAM_CHUNK, c[5], k, prefix, 8,
                         c + FAB_LEDGER_REC_OVERHEAD + 8,
                         (size_t)(csize - FAB_LEDGER_REC_OVERHEAD - 8));
        }
        out_record(o, FAB_REC_STREAM_END, k, prefix, 16, NULL, 0);
    }
}

static int compact_moved(fab_ledger_error *err)
{
    set_err(err, FAB_ESTATE, 0, 0, 0,
            "the ledger was replaced or shrank during the compaction; try again");
    return FAB_ESTATE;
}

int fab_ledger_compact(fab_ledger *l, const char *dest, fab_ledger_stop_fn progress,
                       void *progress_ctx, fab_ledger_error *err)
{
    return fab_ledger_compact_ex(l, dest, 0, progress, progress_ctx, NULL, err);
}

int fab_ledger_compact_ex(fab_ledger *l, const char *dest, uint64_t max_bytes,
                          fab_ledger_stop_fn progress, void *progress_ctx,
                          uint64_t *evicted, fab_ledger_error *err)
{
    if (evicted)
        *evicted = 0;
    if (max_bytes && max_bytes < FAB_LEDGER_HEADER_SIZE) {
        set_err(err, FAB_EINVAL, 0, 0, 0, "max_bytes must be at least the %d-byte header",
                FAB_LEDGER_HEADER_SIZE);
        return FAB_EINVAL;
    }
    int inplace = dest == NULL;
    if (inplace && l->mode != FAB_LEDGER_WRITE) {
        set_err(err, FAB_EINVAL, 0, 0, 0,
                "compacting a ledger in place needs it open for writing");
        return FAB_EINVAL;
    }
    struct stat a, b;
    if (!inplace && stat(dest, &b) == 0 && fstat(l->fd, &a) == 0 && a.st_dev == b.st_dev &&
        a.st_ino == b.st_ino) {
        set_err(err, FAB_EINVAL, 0, 0, 0, "cannot compact a ledger onto itself");
        return FAB_EINVAL;
    }
    const char *target = inplace ? l->path : dest;
    l->leftovers_removed += (uint64_t)remove_leftovers(target);
    char suffix[48];
    snprintf(suffix, sizeof(suffix), ".compact.tmp.%ld", (long)getpid());
    char *tmp = path_with(target, suffix);
    if (tmp == NULL)
        return FAB_ENOMEM;
    int rc = FAB_OK, e = 0, locked = 0, mu_held = 0;
    uint64_t gen = 0, pos = 0, total = 0;
    const char *what = "creating the compacted ledger";
    out_file o = {&l->io, -1, 0, NULL, 0, (size_t)1 << 20, 0};
    if ((o.buf = malloc(o.cap)) == NULL) {
        free(tmp);
        return FAB_ENOMEM;
    }
    o.fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (o.fd < 0) {
        e = errno;
        goto done;
    }
    (void)ofd_lock(o.fd, F_WRLCK, 0, 0); /* in use: not a leftover */

    /* Phase 1: copy what is there now, a step at a time, without the
     * append lock: other writers keep appending. */
    pthread_mutex_lock(&l->mu);
    mu_held = 1;
    if ((rc = catch_up_locked(l, 1, err)) < 0)
        goto done;
    rc = FAB_OK;
    gen = l->gen;
    total = l->end;
    if (max_bytes) {
        /* Sizing: what would be kept; the oldest keys go until it fits. */
        out_file d = {.dry = 1, .off = FAB_LEDGER_HEADER_SIZE};
        uint64_t dpos = 0;
        while (!compact_range(l, &d, &dpos, total))
            ;
        if (d.e) {
            e = d.e;
            o.bad = d.bad;
            what = "reading the ledger to compact";
            goto done;
        }
        o.evict_left = d.off > max_bytes ? d.off - max_bytes : 0;
    }
    /* The copy is version 2: it may hold tombstones and expiring replies. */
    uint8_t h2[FAB_LEDGER_HEADER_SIZE];
    memcpy(h2, l->header, sizeof(h2));
    h2[8] = FAB_LEDGER_VERSION;
    h2[9] = 0;
    fab_store_le32(h2 + 60, fab_crc32c(SEED_FILE, h2, 60));
    out_write(&o, h2, FAB_LEDGER_HEADER_SIZE);
    for (;;) {
        int finished = compact_range(l, &o, &pos, total);
        pthread_mutex_unlock(&l->mu);
        mu_held = 0;
        if (progress && progress(progress_ctx, pos, total)) {
            set_err(err, FAB_ECANCELED, 0, 0, 0, "the compaction was stopped by its caller");
            rc = FAB_ECANCELED;
            goto done;
        }
        what = "writing the compacted ledger";
        if ((e = o.e) != 0)
            goto done;
        pthread_mutex_lock(&l->mu);
        mu_held = 1;
        if (l->gen != gen) {
            rc = compact_moved(err);
            goto done;
        }
        if (finished)
            break;
    }
    /* Phase 2: under the append lock (in place), copy what was appended
     * meanwhile, then sync and rename while still holding it: a writer
     * that gets the lock next finds the path replaced and moves. */
    if (inplace) {
        if ((rc = begin_append(l, err)) != FAB_OK)
            goto done;
        locked = 1;
    } else if ((rc = catch_up_locked(l, 0, err)) < 0) {
        goto done;
    }
    rc = FAB_OK;
    if (l->gen != gen) {
        rc = compact_moved(err);
        goto done;
    }
    total = l->end;
    o.phase2 = 1;
    o.evict_left = 0;
    while (!compact_range(l, &o, &pos, total))
        ;
    if (evicted)
        *evicted = o.evicted;
    out_flush(&o);
    if ((e = o.e) != 0)
        goto done;
    what = "syncing the compacted ledger";
    if (l->io.fdatasync(o.fd) < 0) {
        e = errno;
        goto done;
    }
    what = "renaming the compacted ledger";
    if (rename(tmp, target) < 0) {
        e = errno;
        goto done;
    }
    if (locked) /* the next holder must look at the file: it has no name left */
        l->append_ok = 0;
    if (inplace) { /* the checkpoint describes the old file */
        char *cp = ckpt_path_of(target);
        if (cp)
            unlink(cp);
        free(cp);
    }
    what = "syncing the compacted ledger's directory";
    e = fsync_dir_of(target);
    if (inplace && e == 0) /* never before the rename is durable */
        mark_replaced(l);
    if (locked) {
        end_append(l);
        locked = 0;
        if (e == 0 && reload_locked(l, err) < 0)
            e = 0; /* the next operation retries the move */
        else if (e == 0)
            ckpt_auto_locked(l); /* this handle now reads the new file */
    }
done:
    if (locked)
        end_append(l);
    if (mu_held)
        pthread_mutex_unlock(&l->mu);
    if (o.fd >= 0)
        close(o.fd);
    if (e) {
        unlink(tmp);
        /* Not an EIO "writing the compacted ledger": the source is corrupt. */
        rc = o.bad ? lazy_bad(err, o.bad - 1) : sys_fail(err, e, what);
    } else if (rc != FAB_OK) {
        unlink(tmp);
    } else {
        if (!inplace && l->use_ckpt) {
            /* Its open writes the copy's checkpoint when it replays
             * CKPT_AUTO records or more (best effort). */
            fab_ledger_options ro = {0};
            fab_ledger *d = NULL;
            if (fab_ledger_open(&d, dest, &ro, NULL) == FAB_OK)
                fab_ledger_close(d);
        }
        if (progress)
            (void)progress(progress_ctx, total, total); /* done: nothing to stop */
    }
    free(o.buf);
    free(tmp);
    return rc;
}
