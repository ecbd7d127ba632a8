/*
 * libFuzzer target for the ledger's replay: the input is a whole ledger
 * image (file header included).
 *
 * 1. fab_ledger_scan_mem (the scanner replay runs on) in strict and salvage
 *    modes: every record handed out lies inside the image, in order; strict
 *    success implies salvage success with the same records.
 * 2. fab_ledger_open in read mode on the same bytes held in a memfd (through
 *    /proc/self/fd), which replays into the index through the mapping: then
 *    every key found by iteration is found by lookup at the same record, and
 *    committed streams are read to their end.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fabric/ledger.h"

typedef struct seen {
    const uint8_t *data;
    size_t len;
    uint64_t last_end;
    uint64_t records;
} seen;

static int on_record(void *ctx, uint64_t offset, int type, const uint8_t *key,
                     const uint8_t *payload, size_t len)
{
    seen *s = ctx;
    if (offset < s->last_end || offset < FAB_LEDGER_HEADER_SIZE)
        abort(); /* records come in file order and never overlap */
    if ((type < FAB_REC_REPLY || type > FAB_REC_REQUEST) && type != FAB_REC_TOMBSTONE &&
        (type < FAB_REC_SKIPPABLE_MIN || type > FAB_REC_SKIPPABLE_MAX))
        abort();
    if (key != s->data + offset + FAB_LEDGER_REC_HEADER ||
        payload != key + FAB_LEDGER_KEY_LEN || offset + FAB_LEDGER_REC_OVERHEAD + len > s->len)
        abort();
    s->last_end = offset + FAB_LEDGER_REC_OVERHEAD + len;
    s->records++;
    return 0;
}

/* Returns the strict scan's verdict and record count. */
static int check_scan(const uint8_t *data, size_t size, uint64_t *records)
{
    seen strict = {data, size, 0, 0}, salvage = {data, size, 0, 0};
    fab_ledger_scan_result r1, r2;
    fab_ledger_error e1, e2;
    int rc1 = fab_ledger_scan_mem(data, size, FAB_RECOVER_STRICT, on_record, &strict, &r1, &e1);
    int rc2 = fab_ledger_scan_mem(data, size, FAB_RECOVER_SALVAGE, on_record, &salvage, &r2, &e2);
    if (rc1 == FAB_ECORRUPT && (!e1.has_offset || e1.offset >= size || r1.corrupt_at != e1.offset))
        abort(); /* corruption names a place inside the image */
    if (rc1 == 0) {
        if (rc2 != 0 || r2.records != r1.records || r2.valid_end != r1.valid_end ||
            strict.records != r1.records || r2.salvage_skips != 0)
            abort();
    }
    if (rc2 == 0 && (r2.valid_end > size || r2.records < (rc1 == 0 ? r1.records : 0)))
        abort();
    *records = r1.records;
    return rc1;
}

static int memfd = -1;

/* scan_rc/records: what the strict in-memory scan found; replay through
 * the file must agree. */
static void check_open(const uint8_t *data, size_t size, int scan_rc, uint64_t records)
{
    if (memfd < 0) {
        memfd = memfd_create("fuzz-ledger", MFD_CLOEXEC);
        if (memfd < 0)
            return;
    }
    if (ftruncate(memfd, 0) < 0 || (size && pwrite(memfd, data, size, 0) != (ssize_t)size))
        return;
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
    for (int recover = FAB_RECOVER_STRICT; recover <= FAB_RECOVER_SALVAGE; recover++) {
        fab_ledger_options opt = {0};
        opt.mode = FAB_LEDGER_READ;
        opt.recover = recover;
        fab_ledger *l;
        fab_ledger_error err;
        int rc = fab_ledger_open(&l, path, &opt, &err);
        if (recover == FAB_RECOVER_STRICT && (rc == 0) != (scan_rc == 0) && size > 0)
            abort(); /* the file replay and the memory scan disagree */
        if (rc != 0)
            continue;
        fab_ledger_stats st;
        fab_ledger_get_stats(l, &st);
        if (recover == FAB_RECOVER_STRICT && st.records != records)
            abort();
        fab_ledger_pos pos = {0};
        uint64_t n = 0;
        uint8_t key[32];
        fab_ledger_ref ref;
        while (fab_ledger_next(l, &pos, key, 1, &ref, NULL) == 1) {
            fab_ledger_ref again;
            if (fab_ledger_lookup(l, key, 0, &again, NULL) != 1 || again.offset != ref.offset)
                abort();
            if (ref.type == FAB_REC_REPLY && ref.offset + FAB_LEDGER_REC_OVERHEAD + ref.len > size)
                abort();
            if (ref.type == FAB_REC_STREAM_END) {
                fab_ledger_cursor c;
                if (fab_ledger_stream_open(l, key, &c) != 0)
                    abort();
                fab_ledger_ref item;
                int rc;
                while ((rc = fab_ledger_stream_next(l, &c, 0, &item)) == 1)
                    if (item.offset >= c.end)
                        abort();
                if (rc != 0 && rc != FAB_ECORRUPT)
                    abort();
            }
            fab_lmap_release(ref.map);
            n++;
        }
        if (n != fab_ledger_count(l))
            abort(); /* iteration yields every committed key once */
        fab_ledger_close(l);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t records = 0;
    int rc = check_scan(data, size, &records);
    check_open(data, size, rc, records);
    return 0;
}
