/*
 * The cassette ledger: a crash-safe, append-only file of checksummed records
 * (docs/spec/ledger.md) with an in-memory key -> record index.
 *
 * Thread-safe: every function on a fab_ledger may be called from any thread;
 * a per-ledger mutex guards the state and is released during fdatasync so
 * concurrent records share one sync (group commit). The file is read through
 * a read-only shared mapping; fab_ledger_ref hands out pointers into it that
 * stay valid while the ref holds its mapping (fab_lmap_release).
 *
 * Many processes: any number of processes may open one ledger for writing
 * (unless one opened it exclusively). Appends are serialized by an OFD lock
 * on the ledger file itself, held only for the append; each appender first
 * replays what the others appended (spec: Concurrency). Lookups that miss
 * look at the file's tail before answering. A ledger that shrinks or is
 * replaced underneath is detected before the mapping is touched and the
 * ledger moves to the file now at its path (stats: reloads).
 *
 * Fork: after fork() the child's ledgers stop using the parent's file
 * descriptor and locks; the first append in the child reopens the path.
 */
#ifndef FABRIC_LEDGER_H
#define FABRIC_LEDGER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "fabric/error.h"

#define FAB_LEDGER_VERSION 2
#define FAB_LEDGER_HEADER_SIZE 64
#define FAB_LEDGER_REC_HEADER 20
#define FAB_LEDGER_KEY_LEN 32
#define FAB_LEDGER_REC_OVERHEAD (FAB_LEDGER_REC_HEADER + FAB_LEDGER_KEY_LEN)
#define FAB_LEDGER_MAX_PAYLOAD (((size_t)1 << 31) - FAB_LEDGER_REC_OVERHEAD)
#define FAB_LEDGER_CREATOR_LEN 32

enum fab_ledger_type {
    FAB_REC_REPLY = 1,
    FAB_REC_STREAM_BEGIN = 2,
    FAB_REC_STREAM_CHUNK = 3,
    FAB_REC_STREAM_END = 4,
    FAB_REC_STREAM_ABORT = 5,
    FAB_REC_REQUEST = 6,    /* v2: a request's canonical bytes (issue 10); skipped by replay */
    FAB_REC_TOMBSTONE = 9,  /* v2: ends the key's commit; with a zero key and payload {1}: clear */
};

/* The first and last skippable record types (v2): read past, never indexed. */
#define FAB_REC_SKIPPABLE_MIN 64
#define FAB_REC_SKIPPABLE_MAX 127

/* Record flags (v2). VALUE: the payload is in the value encoding (REPLY,
 * STREAM_CHUNK); EXPIRES: a REPLY's payload starts with its 8-byte expiry
 * time (nanoseconds since the Unix epoch), then the reply. */
#define FAB_REC_FLAG_VALUE 1
#define FAB_REC_FLAG_EXPIRES 2
/* REQUESTED (REPLY, STREAM_BEGIN): the record right before this one is the
 * key's REQUEST record, written in the same append. */
#define FAB_REC_FLAG_REQUESTED 4

enum fab_ledger_mode { FAB_LEDGER_READ = 0, FAB_LEDGER_WRITE = 1 };
enum fab_ledger_durability { FAB_DUR_OS = 0, FAB_DUR_FSYNC = 1, FAB_DUR_GROUP = 2 };
enum fab_ledger_recover { FAB_RECOVER_STRICT = 0, FAB_RECOVER_SALVAGE = 1 };

/*
 * The system calls that change the file, swappable so tests can make the
 * N-th call fail (fault injection). Each behaves like the libc function:
 * returns -1 with errno set on failure.
 *
 * fallocate reserves [off, off + len) of the file (extending it, like
 * fallocate(2) with mode 0). With it, a writer that appends under the lock
 * page or exclusively writes its records through a writable mapping of
 * space reserved ahead (spec: Appends through the mapping); NULL (every io
 * written before it existed) keeps every append a pwrite.
 */
typedef struct fab_ledger_io {
    ssize_t (*pwrite)(int fd, const void *buf, size_t len, off_t off);
    int (*fdatasync)(int fd);
    int (*ftruncate)(int fd, off_t len);
    int (*fallocate)(int fd, off_t off, off_t len);
} fab_ledger_io;

/* Called during replay with bytes done and total, about every 16 MiB. */
typedef void (*fab_ledger_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/* Called during a compaction with bytes done and total; a non-zero return
 * stops the compaction (FAB_ECANCELED, the ledger unchanged). */
typedef int (*fab_ledger_stop_fn)(void *ctx, uint64_t done, uint64_t total);

typedef struct fab_ledger_options {
    int mode;              /* FAB_LEDGER_READ or FAB_LEDGER_WRITE */
    int durability;        /* enum fab_ledger_durability */
    int recover;           /* enum fab_ledger_recover */
    uint64_t created_ns;   /* creation time for a new ledger; 0 = now */
    const char *creator;   /* creator text for a new ledger; NULL = "stream-fabric" */
    const fab_ledger_io *io; /* NULL = the libc calls */
    fab_ledger_progress_fn progress; /* may be NULL */
    void *progress_ctx;
    int exclusive;         /* writer: refuse other writers (FAB_ELOCKED) while open */
    int no_checkpoint;     /* neither use nor write the checkpoint (a full replay) */
} fab_ledger_options;

/* What became of the checkpoint beside the ledger (spec: Checkpoint). */
enum fab_ledger_ckpt_state {
    FAB_CKPT_NONE = 0,     /* none there (or checkpoints off) */
    FAB_CKPT_USED = 1,     /* open replayed only the records after it */
    FAB_CKPT_IGNORED = 2,  /* there, but stale, torn or not this ledger's: full replay */
    FAB_CKPT_REBUILT = 3,  /* a page failed its checksum in use: index rebuilt from the ledger */
};

/* Everything known about a failure, for precise messages. */
typedef struct fab_ledger_error {
    int code;          /* the FAB_E* code returned */
    int sys_errno;     /* errno of a failed system call, else 0 */
    int has_offset;    /* 1 when offset names a place in the file */
    uint64_t offset;
    long pid;          /* FAB_ELOCKED: the holder's pid, 0 when unknown */
    int version;       /* FAB_EVERSION: the file's version */
    char msg[200];
} fab_ledger_error;

/* A shared mapping of the ledger file, reference counted. */
typedef struct fab_lmap fab_lmap;

/* Takes another reference to m. */
void fab_lmap_retain(fab_lmap *m);
/* Drops a reference; the mapping is unmapped with the last. NULL is a no-op. */
void fab_lmap_release(fab_lmap *m);

/* A committed reply or stream item found in the ledger. */
typedef struct fab_ledger_ref {
    fab_lmap *map;        /* a reference the caller releases, or NULL */
    const uint8_t *data;  /* the reply bytes (canonical msgpack) */
    size_t len;
    uint64_t offset;      /* offset of the committing record */
    int type;             /* FAB_REC_REPLY or FAB_REC_STREAM_END */
    int flags;            /* the record's flags (FAB_REC_FLAG_*) */
    uint64_t expires_ns;  /* a REPLY's expiry time, 0 when it has none */
    uint64_t gen;         /* the ledger's generation when found: with offset,
                             names this record (a key deleted and recorded
                             again, or a move to a compacted file, gives
                             another offset or generation) */
} fab_ledger_ref;

typedef struct fab_ledger_stats {
    uint64_t records;        /* valid records in the file */
    uint64_t keys;           /* committed keys */
    uint64_t bytes;          /* length of the valid region, header included */
    uint64_t duplicates;     /* committing records of keys already held */
    uint64_t torn_tails_cut; /* torn tails cut (writer) or pending (reader) */
    uint64_t torn_bytes;
    uint64_t salvage_skips;
    uint64_t salvage_bytes;
    uint64_t open_ns;        /* time spent opening and replaying */
    uint64_t index_bytes;    /* memory of the index */
    uint64_t syncs;          /* fdatasync calls on the ledger since open (group commit: records/syncs = batch size) */
    uint64_t created_ns;
    uint64_t reloads;        /* moves to a replaced file, or re-replays after a shrink */
    uint64_t foreign_records; /* records replayed that other handles appended after open */
    uint64_t leftovers_removed; /* temporary files of dead processes removed */
    int ckpt_state;          /* enum fab_ledger_ckpt_state */
    uint64_t ckpt_covered;   /* ledger bytes the checkpoint in use covers, 0 without */
    uint64_t ckpt_keys;
    uint64_t ckpt_written;   /* checkpoints written by this handle */
    uint64_t open_replayed;  /* records open replayed from the ledger itself */
    uint64_t tombstones;     /* keys deleted whose tombstone is indexed */
    int writers;             /* handles (any process) open for writing, from /proc/locks; -1 unknown */
    int exclusive;
    int version;
    int failed;              /* 1 after an fdatasync failure: appends refused */
    int append_lock;         /* how appends are serialized: 0 none (reader, exclusive writer),
                              * 1 the OFD lock on the ledger, 2 the lock page's robust mutex */
    uint64_t owner_dead;     /* lock page holders this handle found dead and recovered from */
    uint64_t lazy_appends;   /* appends that went past others' records not replayed (the lock
                              * page's key filter; spec: The key filter) */
    uint64_t reserved_bytes; /* zero bytes reserved after the valid region (file size - bytes) */
    int mapped_appends;      /* 1: this handle appends through the mapping (spec: Appends) */
    char creator[FAB_LEDGER_CREATOR_LEN + 1];
} fab_ledger_stats;

typedef struct fab_ledger fab_ledger;

/*
 * Opens (FAB_LEDGER_WRITE: creates when missing) the ledger at path and
 * replays it. On success *out owns the ledger (fab_ledger_close). A writer
 * removes temporary files that dead processes left beside path. Returns 0,
 * FAB_ENOMEM, FAB_EIO (err->sys_errno says why), FAB_ELOCKED (an exclusive
 * writer holds it, or opt->exclusive and other writers do; err->pid when known),
 * FAB_EFORMAT / FAB_ETRUNCATED (not a ledger; err->offset), FAB_EVERSION,
 * FAB_ECORRUPT (err->offset of the bad record) or FAB_EINVAL.
 */
int fab_ledger_open(fab_ledger **out, const char *path, const fab_ledger_options *opt,
                    fab_ledger_error *err);

/* Closes the file, releases the lock and the ledger's mapping reference and
 * frees the ledger. Mappings still referenced by refs stay valid. NULL ok. */
void fab_ledger_close(fab_ledger *l);

/*
 * Appends a REPLY record for key unless the key is already held. Returns 1
 * when written (and durable per the durability mode), 0 when the key was
 * already held (nothing written), FAB_ESTATE (read-only, or refused after an
 * fdatasync failure), FAB_ERANGE (payload too large) or FAB_EIO.
 */
int fab_ledger_record(fab_ledger *l, const uint8_t key[32], const void *data, size_t len,
                      fab_ledger_error *err);

/*
 * fab_ledger_record with an expiry time (nanoseconds since the Unix epoch,
 * CLOCK_REALTIME; 0 = never): the reply is not held from that time on (a
 * get misses, compaction drops it, the key can be recorded again).
 */
int fab_ledger_record_ex(fab_ledger *l, const uint8_t key[32], const void *data, size_t len,
                         uint64_t expires_ns, fab_ledger_error *err);

/*
 * fab_ledger_record_ex that also stores the request's canonical bytes
 * (req, rlen; NULL or 0 = none) in a REQUEST record written right before
 * the REPLY, in the same append (one lock, one pwrite). Nothing is written
 * when the key is held (first write wins for both).
 */
int fab_ledger_record_req(fab_ledger *l, const uint8_t key[32], const void *req, size_t rlen,
                          const void *data, size_t len, uint64_t expires_ns,
                          fab_ledger_error *err);

/* Deletes key (a durable TOMBSTONE record, synced per the durability
 * mode): 1 when it was held, 0 when not (nothing written), or an error as
 * fab_ledger_record. The key can be recorded again. */
int fab_ledger_delete(fab_ledger *l, const uint8_t key[32], fab_ledger_error *err);

/* Deletes every key recorded so far (one TOMBSTONE record with a zero key
 * and payload {1}). Returns the number of keys that were held (>= 0,
 * saturated at INT32_MAX) or an error. */
int fab_ledger_clear(fab_ledger *l, fab_ledger_error *err);

/*
 * Finds the committed record of key. Returns 1 and fills *ref, 0 when not
 * held, or a negative code (FAB_EIO, FAB_ECORRUPT...) when the file shrank
 * or was replaced and the new one cannot be read. Before touching the
 * mapping it checks that the file has not shrunk; on a miss it replays
 * records other processes appended and moves to a replaced file. With
 * want_map, ref->map is a new reference that keeps ref->data valid until
 * released; without it ref->map is NULL and ref->data is only valid until
 * the ledger is closed or moves. For a stream ref->type is END and
 * ref->data/len are empty.
 */
int fab_ledger_lookup(fab_ledger *l, const uint8_t key[32], int want_map, fab_ledger_ref *ref,
                      fab_ledger_error *err);

/* A hint that key is about to be looked up or recorded: starts loading
 * its index slot into the cache. Takes no lock and reads nothing. */
void fab_ledger_prefetch(const fab_ledger *l, const uint8_t key[32]);

/* Number of committed keys. */
size_t fab_ledger_count(fab_ledger *l);

/* A position in the ledger for fab_ledger_next; zero-initialize to start. */
typedef struct fab_ledger_pos {
    uint64_t off;
    uint64_t gen;  /* the ledger's generation when the iteration started */
} fab_ledger_pos;

/*
 * Iteration in ledger order. Each call that returns 1 fills key and ref
 * (ref->map is a new reference when want_map) and advances *pos; 0 at the
 * end; FAB_ESTATE when the ledger moved to another file (replaced or
 * shrunk) since the iteration started.
 */
int fab_ledger_next(fab_ledger *l, fab_ledger_pos *pos, uint8_t key[32], int want_map,
                    fab_ledger_ref *ref, fab_ledger_error *err);

/* Statistics. */
void fab_ledger_get_stats(fab_ledger *l, fab_ledger_stats *st);

/* fdatasync of everything written. 0, FAB_EIO (appends refused after) or FAB_ESTATE. */
int fab_ledger_sync(fab_ledger *l, fab_ledger_error *err);

/* Replays records other handles appended since the last replay, and moves
 * to the file now at the ledger's path when it was replaced (compaction, a
 * restore) or shrank. Returns the number of records replayed (after a move,
 * every record of the new file), or FAB_ECORRUPT / FAB_EIO / FAB_EFORMAT. */
int fab_ledger_refresh(fab_ledger *l, fab_ledger_error *err);

/* Writes a checkpoint of the index beside the ledger now (PATH.ckpt; spec:
 * Checkpoint). 0, FAB_ESTATE (salvaged ledger, records waiting for their
 * sync, or checkpoints off), FAB_EIO or FAB_ENOMEM. */
int fab_ledger_checkpoint(fab_ledger *l, fab_ledger_error *err);

/* The ledger's generation: incremented each time it moves to another file. */
uint64_t fab_ledger_generation(fab_ledger *l);

/*
 * Writes the committed records to dest atomically (spec: Compaction); dest
 * NULL compacts in place (a writer only), replacing the ledger's file while
 * other processes keep appending. A temporary file DEST.compact.tmp.PID is
 * written, synced and renamed. progress (may be NULL) is called without any
 * lock held with bytes done and total; when it returns non-zero the
 * compaction stops, the temporary file is removed and the ledger and dest
 * are left as they were (FAB_ECANCELED). dest must not be the ledger
 * itself (FAB_EINVAL). 0, FAB_EIO, FAB_ENOMEM, FAB_ESTATE (the ledger moved
 * meanwhile; try again), FAB_ECANCELED or FAB_EINVAL.
 */
int fab_ledger_compact(fab_ledger *l, const char *dest, fab_ledger_stop_fn progress,
                       void *progress_ctx, fab_ledger_error *err);

/* fab_ledger_compact keeping at most max_bytes (0 = no limit): the oldest
 * recorded replies and streams (ledger order) are left out until the rest
 * fits; a stream is kept or left out whole. Records appended by others
 * during the compaction are kept and may exceed the limit. *evicted (may
 * be NULL) is set to the number of keys left out. */
int fab_ledger_compact_ex(fab_ledger *l, const char *dest, uint64_t max_bytes,
                          fab_ledger_stop_fn progress, void *progress_ctx,
                          uint64_t *evicted, fab_ledger_error *err);

/* ---- streams ------------------------------------------------------------ */

/* Starts a stream for key: 1 and *begin set when started, 0 when the key is
 * already held (nothing written), or an error as fab_ledger_record. */
int fab_ledger_stream_begin(fab_ledger *l, const uint8_t key[32], uint64_t *begin,
                            fab_ledger_error *err);
/* fab_ledger_stream_begin with the request's canonical bytes, written in a
 * REQUEST record right before the BEGIN (as fab_ledger_record_req). */
int fab_ledger_stream_begin_req(fab_ledger *l, const uint8_t key[32], const void *req,
                                size_t rlen, uint64_t *begin, fab_ledger_error *err);

/* The request bytes recorded for key's commit in force: 1 with ref->data,
 * ref->len the REQUEST payload (ref->offset its record, ref->type
 * FAB_REC_REQUEST; ref->map a reference when want_map), 0 when the key is
 * not held or was recorded without them, or an error. */
int fab_ledger_request(fab_ledger *l, const uint8_t key[32], int want_map, fab_ledger_ref *ref,
                       fab_ledger_error *err);
/* Appends one item (canonical msgpack). 0 or an error; FAB_ESTATE when the
 * ledger moved to another file (a compaction) since the stream began: the
 * stream is lost and must be recorded again. */
int fab_ledger_stream_append(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                             const void *data, size_t len, fab_ledger_error *err);
/* Appends a batch of items with one write under one append lock: packed
 * holds each item (canonical msgpack) as a 4-byte little-endian length and
 * its bytes, back to back (len bytes in all). 0 or an error as
 * fab_ledger_stream_append; FAB_EINVAL when packed is malformed (nothing
 * written). */
int fab_ledger_stream_append_batch(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                                   const void *packed, size_t len, fab_ledger_error *err);
/* Commits the stream (durable per mode). 1 when it now holds the key, 0 when
 * another record committed the key first (an ABORT is written), or an error. */
int fab_ledger_stream_end(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                          uint64_t count, fab_ledger_error *err);
/* Abandons the stream (writes an ABORT record). 0 or an error. */
int fab_ledger_stream_abort(fab_ledger *l, const uint8_t key[32], uint64_t begin,
                            fab_ledger_error *err);

/* A position inside a committed stream, for reading it item by item. */
typedef struct fab_ledger_cursor {
    uint64_t begin;   /* offset of the BEGIN record */
    uint64_t end;     /* offset of the END record */
    uint64_t pos;     /* next offset to look at */
    uint64_t count;   /* items promised by the END record */
    uint64_t seen;
    uint64_t gen;     /* the ledger's generation when opened */
} fab_ledger_cursor;

/* Positions c at the start of key's committed stream. 0, FAB_ENOTFOUND (not
 * held), FAB_ETYPE (held as a single reply). */
int fab_ledger_stream_open(fab_ledger *l, const uint8_t key[32], fab_ledger_cursor *c);

/*
 * The next item of the stream: 1 and *item filled (item->map a new reference
 * when want_map), 0 after the last item, FAB_ECORRUPT when the stream's
 * records disagree with its END record, FAB_ESTATE when the ledger moved to
 * another file since the cursor was opened, FAB_EIO when the file shrank.
 */
int fab_ledger_stream_next(fab_ledger *l, fab_ledger_cursor *c, int want_map,
                           fab_ledger_ref *item);

/*
 * The CRC-32C (fab_crc32c(0, ...)) of ref->data[0..len), derived from its
 * record's body checksum and the record's bytes before it, without reading
 * ref->data: for a sender whose frame CRC covers the same bytes. The ledger
 * validated that checksum (at open, on write, or in the read that filled
 * ref), so the CRC is that of the bytes as recorded: a later change to them
 * makes the receiver's check fail. ref must hold its mapping (want_map) and
 * end where its record ends (a stream item, a reply); FAB_EINVAL otherwise.
 */
int fab_ledger_ref_crc(const fab_ledger_ref *ref, uint32_t *crc);

/* ---- in-memory scanning, for tests and tools ---------------------------- */

/* What a replay of a byte image found. */
typedef struct fab_ledger_scan_result {
    uint64_t valid_end;   /* end of the last accepted record */
    uint64_t records;
    uint64_t torn_at;     /* offset of a torn tail, or UINT64_MAX */
    uint64_t corrupt_at;  /* first corruption (strict: the error), or UINT64_MAX */
    uint64_t salvage_skips;
    uint64_t salvage_bytes;
} fab_ledger_scan_result;

/* Called for each valid record found by fab_ledger_scan_mem. */
typedef int (*fab_ledger_record_fn)(void *ctx, uint64_t offset, int type,
                                    const uint8_t *key, const uint8_t *payload, size_t len);

/*
 * Validates a whole ledger image in memory (header included), calling fn for
 * each valid record in order. Returns 0 (a torn tail is not an error),
 * FAB_EFORMAT/FAB_ETRUNCATED/FAB_EVERSION for the header, FAB_ECORRUPT (strict;
 * err->offset), or fn's error.
 */
int fab_ledger_scan_mem(const uint8_t *data, size_t len, int recover, fab_ledger_record_fn fn,
                        void *ctx, fab_ledger_scan_result *res, fab_ledger_error *err);

/* 1 when a file system of this statfs f_type shares files between hosts
 * (NFS, SMB/CIFS, NCP, Coda, GPFS, Lustre, 9p, FUSE, AFS, CephFS): locks
 * there are unreliable, several writers are refused (spec: Network file
 * systems). 0 otherwise. */
int fab_ledger_fs_is_network(unsigned long f_type);

/* Builds the 64-byte file header (for tests and tools). */
void fab_ledger_make_header(uint8_t out[FAB_LEDGER_HEADER_SIZE], uint64_t created_ns,
                            const char *creator);

/* Builds the 20-byte record header for key and payload; returns the record size. */
size_t fab_ledger_make_rec_header(uint8_t out[FAB_LEDGER_REC_HEADER], int type,
                                  const uint8_t key[32], const void *payload, size_t len);

#endif
