/*
 * libFuzzer target: the hardened msgpack reader on frame payloads.
 *
 * Walks every item under the default limits and under small ones, as plain
 * msgpack and with the value encoding's tags; checks that fab_mp_validate
 * (and fab_mp_validate_tagged) agrees with the walk, that string items are valid UTF-8 and
 * lie inside the input, and that errors carry an offset inside the input.
 */
#include <stdlib.h>

#include "fabric/mpdec.h"

static int walk(const uint8_t *data, size_t len, const fab_mp_limits *lim, int tags)
{
    fab_mp_reader r;
    if (fab_mp_reader_init(&r, data, len, lim) != 0)
        abort();
    if (tags)
        fab_mp_reader_tags(&r);
    fab_mp_item it;
    int rc;
    do {
        rc = fab_mp_next(&r, &it);
        if (rc < 0) {
            if (r.err_offset > len)
                abort();
            return rc;
        }
        if (it.offset >= len)
            abort();
        if (it.type == FAB_MP_STR || it.type == FAB_MP_BIN || it.type == FAB_MP_EXT) {
            if (it.v.s.len && (it.v.s.p < data || it.v.s.p + it.v.s.len > data + len))
                abort();
            if (it.type == FAB_MP_STR && !fab_utf8_valid(it.v.s.p, it.v.s.len))
                abort();
        }
    } while (!fab_mp_complete(&r));
    return r.pos == len ? 0 : 1; /* 1: trailing bytes */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fab_mp_limits lim;
    fab_mp_limits_default(&lim);
    char err[128];
    size_t off;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            lim.max_depth = 3;
            lim.max_str = lim.max_bin = lim.max_ext = 8;
            lim.max_array = lim.max_map = 4;
            lim.max_items = 16;
        }
        int walked = size ? walk(data, size, &lim, 0) : -1;
        int rc = fab_mp_validate(data, size, &lim, err, sizeof(err), &off);
        if ((walked == 0) != (rc == 0))
            abort();
        if (rc != 0 && off > size)
            abort();
        /* The body of a value-encoded payload: tags read as prefixes. */
        walked = size ? walk(data, size, &lim, 1) : -1;
        rc = fab_mp_validate_tagged(data, size, &lim, err, sizeof(err), &off);
        if ((walked == 0) != (rc == 0))
            abort();
        if (rc != 0 && off > size)
            abort();
    }
    return 0;
}
