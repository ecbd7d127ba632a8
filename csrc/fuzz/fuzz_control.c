/*
 * libFuzzer target: the path a received CONTROL frame takes, all of it in
 * the C core: the frame decoder, then the control codec (csrc/control.c)
 * under the default stream limits. Must never crash, leak or read out of
 * bounds; must give the same verdict for the frame fed whole or byte by
 * byte; an accepted control must encode, and its encoding decode to the same
 * control (the round trip the Python StreamControl relies on).
 */
#include <stdlib.h>
#include <string.h>

#include "fabric/control.h"
#include "fabric/frame.h"
#include "fabric/mpdec.h"

static void same(const fab_control *a, const fab_control *b)
{
    if (a->op != b->op || a->present != b->present || a->limit != b->limit ||
        a->count != b->count || ((a->present & FAB_CTL_F_KIND) && a->fault != b->fault) ||
        a->reason_len != b->reason_len || a->item_len != b->item_len ||
        a->metadata_len != b->metadata_len ||
        (a->reason_len && memcmp(a->reason, b->reason, a->reason_len) != 0))
        abort();
}

/* The node's request open read in one pass (fab_control_open_read): when
 * it accepts, the payload is a control open, and every span it gives is one
 * whole value inside the payload. */
static void check_open(const uint8_t *p, size_t len, const fab_mp_limits *lim, int control_rc,
                       const fab_control *c)
{
    fab_control_open o;
    fab_control_error err;
    int rc = fab_control_open_read(p, len, lim, &o, &err);
    if (rc > 0 || (rc < 0 && err.msg[0] == '\0') || (rc < 0 && err.offset > len))
        abort();
    if (rc < 0)
        return;
    if (control_rc != 0 || c->op != FAB_CTL_OPEN || c->tagged || o.want < 0 || o.want > 1 ||
        o.scope < 0 || o.scope > 1)
        abort();
    for (int i = 0; i < FAB_OPEN_NFIELDS + FAB_OPEN_REQUEST_NFIELDS; i++) {
        const fab_open_span *s = i < FAB_OPEN_NFIELDS ? &o.meta[i]
                                                      : &o.request[i - FAB_OPEN_NFIELDS];
        if (s->p < p || s->len == 0 || s->p + s->len > p + len ||
            fab_mp_validate(s->p, s->len, lim, NULL, 0, NULL) != 0)
            abort();
    }
}

/* 0 for an accepted control payload, else the code. */
static int check_control(const uint8_t *p, size_t len)
{
    fab_mp_limits lim;
    fab_mp_limits_default(&lim);
    lim.max_depth = 64;
    {
        fab_control c0;
        check_open(p, len, &lim, fab_control_decode(p, len, &lim, &c0, NULL), &c0);
    }
    fab_control c;
    fab_control_error err;
    int rc = fab_control_decode(p, len, &lim, &c, &err);
    if (rc > 0 || (rc < 0 && err.msg[0] == '\0') || (rc < 0 && err.offset > len))
        abort();
    if (rc < 0)
        return rc;
    if ((c.item && (c.item < p || c.item + c.item_len > p + len)) ||
        (c.metadata && (c.metadata < p || c.metadata + c.metadata_len > p + len)))
        abort();
    /* Every op has a capability; the encoder takes what the decoder gave.
     * In the value encoding an item may carry tags, which only tagged
     * payloads may hold, so only plain payloads are re-read. */
    if (fab_control_capability(c.op) == NULL)
        abort();
    fab_buf b;
    fab_buf_init(&b);
    if (fab_control_encode(&c, &b) != 0)
        abort();
    if (!c.tagged) {
        fab_control d;
        if (fab_control_decode(b.data, b.len, &lim, &d, NULL) != 0)
            abort();
        same(&c, &d);
    }
    fab_buf_destroy(&b);
    return 0;
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
