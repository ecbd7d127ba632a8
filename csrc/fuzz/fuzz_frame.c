/*
 * libFuzzer target: the incremental frame decoder.
 *
 * The first input byte picks a piece size; the rest is fed in pieces of that
 * size and, separately, in one piece. Both must yield the same frames and the
 * same verdict (error code, violation and offset), every payload must match
 * its CRC, and the decoder's buffer must stay within fed bytes + 64 KiB.
 * A third run takes whole frames where they lie as the pieces arrive
 * (fab_frame_decoder_peek, then the frame alone): the same frames and
 * verdict, a cut frame left unconsumed instead of "truncated", and the
 * decoder allocates nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "fabric/crc32c.h"
#include "fabric/frame.h"

#define MAX_FRAMES 4096

typedef struct {
    int n;
    uint32_t crc[MAX_FRAMES];
    uint64_t offset[MAX_FRAMES];
    int rc;
    fab_frame_error err;
} outcome;

static void run(const uint8_t *data, size_t len, size_t piece, outcome *o)
{
    fab_frame_decoder d;
    fab_frame_decoder_init(&d, 4096); /* small, so length limits get hit */
    o->n = 0;
    o->rc = 0;
    size_t pos = 0;
    while (pos < len && o->rc >= 0) {
        size_t n = len - pos < piece ? len - pos : piece, off = 0;
        while (off < n) {
            size_t used;
            fab_frame f;
            int rc = fab_frame_decoder_next(&d, data + pos + off, n - off, &used, &f);
            if (rc < 0) {
                o->rc = rc;
                break;
            }
            off += used;
            if (d.pay_cap > d.offset + FAB_FRAME_GROW_MAX)
                abort();
            if (rc == FAB_FRAME_READY) {
                if (fab_crc32c(0, f.payload, f.h.payload_len) != f.h.payload_crc)
                    abort();
                if (o->n < MAX_FRAMES) {
                    o->crc[o->n] = f.h.payload_crc;
                    o->offset[o->n] = f.offset;
                }
                o->n++;
            }
        }
        pos += n;
    }
    if (o->rc >= 0)
        o->rc = fab_frame_decoder_finish(&d);
    o->err = d.err;
    char msg[256];
    if (o->rc < 0) {
        fab_frame_error_format(&d.err, msg, sizeof(msg));
        if (strstr(msg, "offset") == NULL)
            abort();
    }
    fab_frame_decoder_destroy(&d);
}

/* Whole frames only, as a reader with its own buffer takes them. o->rc is 1
 * when the input ends inside a frame (left unconsumed). */
static void run_whole(const uint8_t *data, size_t len, size_t piece, outcome *o)
{
    fab_frame_decoder d;
    fab_frame_decoder_init(&d, 4096);
    o->n = 0;
    o->rc = 0;
    size_t avail = 0, start = 0;
    while (avail < len && o->rc >= 0) {
        avail = len - avail < piece ? len : avail + piece;
        for (;;) {
            size_t total, used;
            fab_frame f;
            int rc = fab_frame_decoder_peek(&d, data + start, avail - start, &total);
            if (rc < 0) {
                o->rc = rc;
                break;
            }
            if (total == 0 || total > avail - start)
                break;
            if (fab_frame_decoder_next(&d, data + start, total, &used, &f) != FAB_FRAME_READY) {
                o->rc = d.err.code; /* the payload's checksum */
                break;
            }
            if (used != total || !f.payload_in_input || d.pay_cap != 0)
                abort();
            if (o->n < MAX_FRAMES) {
                o->crc[o->n] = f.h.payload_crc;
                o->offset[o->n] = f.offset;
            }
            o->n++;
            start += total;
            if (start == avail)
                break;
        }
    }
    if (o->rc >= 0)
        o->rc = start < len ? 1 : fab_frame_decoder_finish(&d);
    o->err = d.err;
    fab_frame_decoder_destroy(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t piece = (size_t)data[0] % 64 + 1;
    static outcome a, b;
    run(data + 1, size - 1, piece, &a);
    run(data + 1, size - 1, size, &b);
    if (a.n != b.n || a.rc != b.rc)
        abort();
    for (int i = 0; i < a.n && i < MAX_FRAMES; i++)
        if (a.crc[i] != b.crc[i] || a.offset[i] != b.offset[i])
            abort();
    if (a.rc < 0 && (a.err.offset != b.err.offset || a.err.violation != b.err.violation))
        abort();
    static outcome w;
    run_whole(data + 1, size - 1, piece, &w);
    if (w.n != b.n)
        abort();
    for (int i = 0; i < w.n && i < MAX_FRAMES; i++)
        if (w.crc[i] != b.crc[i] || w.offset[i] != b.offset[i])
            abort();
    if (b.rc < 0 && b.err.violation == FAB_FV_TRUNCATED) {
        if (w.rc != 1)
            abort();
    } else if (w.rc != b.rc ||
               (b.rc < 0 && (w.err.offset != b.err.offset || w.err.violation != b.err.violation))) {
        abort();
    }
    return 0;
}
