/*
 * libFuzzer target: the C path a received CONTROL frame takes before the
 * Python control plane (fabric/control.py) sees it: the frame decoder, then a
 * pull-parse of the payload under the default stream limits that checks the
 * control shape (a map of str keys, an "op" naming one of the eight
 * operations, every key known). Must never crash, leak or read out of bounds,
 * and must give the same verdict for the frame fed whole or byte by byte.
 */
#include <stdlib.h>
#include <string.h>

#include "fabric/frame.h"
#include "fabric/mpdec.h"

static const char *const ops[] = {"open", "next", "push", "close", "cancel", "stats",
                                  "metadata", "fault", NULL};
static const char *const fields[] = {"op", "metadata", "limit", "item", "reason", "kind",
                                     "count", NULL};

static int known(const char *const *names, const uint8_t *p, uint32_t len)
{
    for (int i = 0; names[i]; i++)
        if (strlen(names[i]) == len && memcmp(names[i], p, len) == 0)
            return 1;
    return 0;
}

/* 0 for a well-shaped control payload, else -1. */
static int check_control(const uint8_t *p, size_t len)
{
    fab_mp_limits lim;
    fab_mp_limits_default(&lim);
    lim.max_depth = 64;
    if (fab_mp_validate(p, len, &lim, NULL, 0, NULL) != 0)
        return -1;
    fab_mp_reader r;
    fab_mp_item it;
    fab_mp_reader_init(&r, p, len, &lim);
    if (fab_mp_next(&r, &it) != 0 || it.type != FAB_MP_MAP)
        return -1;
    uint32_t pairs = it.v.count;
    int have_op = 0;
    for (uint32_t i = 0; i < pairs; i++) {
        if (fab_mp_next(&r, &it) != 0 || it.type != FAB_MP_STR ||
            !known(fields, it.v.s.p, it.v.s.len))
            return -1;
        int is_op = it.v.s.len == 2 && memcmp(it.v.s.p, "op", 2) == 0;
        /* Skip the value: read items until its container closes. */
        uint32_t depth0 = r.depth;
        if (fab_mp_next(&r, &it) != 0)
            return -1;
        if (is_op) {
            if (it.type != FAB_MP_STR || !known(ops, it.v.s.p, it.v.s.len))
                return -1;
            have_op = 1;
        }
        while (r.depth > depth0)
            if (fab_mp_next(&r, &it) != 0)
                return -1;
    }
    return have_op ? 0 : -1;
}

static long long decode(const uint8_t *data, size_t size, size_t piece)
{
    fab_frame_decoder d;
    fab_frame_decoder_init(&d, 0);
    unsigned verdict = 0; /* a base-3 digit per CONTROL frame, wrapping */
    int rc = 0;
    size_t pos = 0;
    while (pos < size && rc >= 0) {
        size_t n = size - pos < piece ? size - pos : piece, off = 0;
        while (off < n) {
            size_t used;
            fab_frame f;
            rc = fab_frame_decoder_next(&d, data + pos + off, n - off, &used, &f);
            if (rc < 0)
                break;
            off += used;
            if (rc == FAB_FRAME_READY && f.h.kind == FAB_FRAME_CONTROL)
                verdict = verdict * 3u + (check_control(f.payload, f.h.payload_len) == 0 ? 1u : 2u);
        }
        pos += n;
    }
    fab_frame_decoder_destroy(&d);
    return rc < 0 ? rc : (long long)verdict;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (decode(data, size, size ? size : 1) != decode(data, size, 1))
        abort();
    /* The raw input as a control payload, too. */
    check_control(data, size);
    return 0;
}
