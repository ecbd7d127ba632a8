#include "fabric/enc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fabric/common.h"

/* ---- growable byte buffer ------------------------------------------------ */

void fab_buf_init(fab_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void fab_buf_destroy(fab_buf *b)
{
    free(b->data);
    fab_buf_init(b);
}

int fab_buf_reserve(fab_buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len)
        return FAB_EOVERFLOW;
    size_t need = b->len + extra;
    if (need <= b->cap)
        return FAB_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL)
        return FAB_ENOMEM;
    b->data = p;
    b->cap = cap;
    return FAB_OK;
}

int fab_buf_append(fab_buf *b, const void *data, size_t len)
{
    if (len == 0)
        return FAB_OK;
    int rc = fab_buf_reserve(b, len);
    if (rc != FAB_OK)
        return rc;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return FAB_OK;
}

int fab_buf_sink(void *ctx, const void *data, size_t len)
{
    return fab_buf_append(ctx, data, len);
}

/* ---- the writer ------------------------------------------------------------ */

void fab_enc_init(fab_enc *e, fab_sink_fn sink, void *ctx)
{
    e->sink = sink;
    e->ctx = ctx;
}

/* Writes one item made by a fab_put_* function. */
#define PUT(e, expr)                                                        \
    do {                                                                    \
        uint8_t put_buf_[FAB_PUT_MAX];                                      \
        uint8_t *p = put_buf_;                                              \
        size_t put_len_ = (expr);                                           \
        return (e)->sink((e)->ctx, put_buf_, put_len_);                     \
    } while (0)

int fab_enc_nil(fab_enc *e)
{
    PUT(e, fab_put_nil(p));
}

int fab_enc_bool(fab_enc *e, int value)
{
    PUT(e, fab_put_bool(p, value));
}

int fab_enc_int64(fab_enc *e, int64_t value)
{
    PUT(e, fab_put_int64(p, value));
}

int fab_enc_uint64(fab_enc *e, uint64_t value)
{
    PUT(e, fab_put_uint64(p, value));
}

int fab_enc_double(fab_enc *e, double value)
{
    PUT(e, fab_put_double(p, value));
}

int fab_enc_str_header(fab_enc *e, size_t len)
{
    if (len > UINT32_MAX)
        return FAB_ERANGE;
    PUT(e, fab_put_str_header(p, (uint32_t)len));
}

int fab_enc_str(fab_enc *e, const char *utf8, size_t len)
{
    int rc = fab_enc_str_header(e, len);
    if (rc == FAB_OK && len)
        rc = e->sink(e->ctx, utf8, len);
    return rc;
}

int fab_enc_bin_header(fab_enc *e, size_t len)
{
    if (len > UINT32_MAX)
        return FAB_ERANGE;
    PUT(e, fab_put_bin_header(p, (uint32_t)len));
}

int fab_enc_bin(fab_enc *e, const void *data, size_t len)
{
    int rc = fab_enc_bin_header(e, len);
    if (rc == FAB_OK && len)
        rc = e->sink(e->ctx, data, len);
    return rc;
}

int fab_enc_array_header(fab_enc *e, size_t count)
{
    if (count > UINT32_MAX)
        return FAB_ERANGE;
    PUT(e, fab_put_array_header(p, (uint32_t)count));
}

int fab_enc_map_header(fab_enc *e, size_t count)
{
    if (count > UINT32_MAX)
        return FAB_ERANGE;
    PUT(e, fab_put_map_header(p, (uint32_t)count));
}

int fab_enc_ext_header(fab_enc *e, int8_t type, size_t len)
{
    if (len > UINT32_MAX)
        return FAB_ERANGE;
    PUT(e, fab_put_ext_header(p, type, (uint32_t)len));
}

int fab_enc_ext(fab_enc *e, int8_t type, const void *data, size_t len)
{
    int rc = fab_enc_ext_header(e, type, len);
    if (rc == FAB_OK && len)
        rc = e->sink(e->ctx, data, len);
    return rc;
}

int fab_enc_raw(fab_enc *e, const void *data, size_t len)
{
    return len ? e->sink(e->ctx, data, len) : FAB_OK;
}

int fab_enc_bigint(fab_enc *e, const uint8_t *be, size_t len)
{
    if (len == 0)
        return FAB_EINVAL;
    /* Minimal: the first byte may not be a pure sign extension of the next. */
    if (len > 1 && ((be[0] == 0x00 && !(be[1] & 0x80)) ||
                    (be[0] == 0xff && (be[1] & 0x80))))
        return FAB_EINVAL;
    /* In range for the plain forms: up to 8 bytes signed, or 9 bytes that
     * are 0x00 followed by a uint64. */
    if (len <= 8 || (len == 9 && be[0] == 0x00))
        return FAB_ERANGE;
    return fab_enc_ext(e, FAB_EXT_BIGINT, be, len);
}

int fab_enc_secret(fab_enc *e)
{
    return fab_enc_ext_header(e, FAB_EXT_SECRET, 0);
}

/* ---- canonical ordering ------------------------------------------------------ */

/*
 * memcmp order with a proper prefix first. key8 holds the first 8 bytes
 * (zero-padded), so most comparisons of short keys end on one integer
 * compare. When key8 are equal and one span is at most 8 bytes long, that
 * span's bytes are a prefix of the other's (the padding matched real zero
 * bytes or more padding), so the lengths decide.
 */
static int span_cmp(const fab_span *x, const fab_span *y)
{
    if (x->key8 != y->key8)
        return x->key8 < y->key8 ? -1 : 1;
    size_t n = x->len < y->len ? x->len : y->len;
    if (n > 8) {
        int c = memcmp(x->p + 8, y->p + 8, n - 8);
        if (c)
            return c;
    }
    return (x->len > y->len) - (x->len < y->len);
}

static int span_qsort_cmp(const void *a, const void *b)
{
    return span_cmp(a, b);
}

static uint64_t first8(const uint8_t *p, size_t len)
{
    if (len >= 8)
        return fab_load_be64(p);
    uint8_t padded[8] = {0};
    memcpy(padded, p, len);
    return fab_load_be64(padded);
}

int fab_canon_sort_spans(fab_span *spans, size_t n)
{
    if (n < 2)
        return FAB_OK;
    for (size_t i = 0; i < n; i++)
        spans[i].key8 = first8(spans[i].p, spans[i].len);
    if (n <= 16) {
        /* Insertion sort of one-byte indices: the common case is a handful
         * of short keys. Moving whole spans instead costs a store-forwarding
         * stall per step (they are copied in pieces of unequal size). */
        uint8_t ord[16];
        fab_span tmp[16];
        for (size_t i = 0; i < n; i++)
            ord[i] = (uint8_t)i;
        for (size_t i = 1; i < n; i++) {
            uint8_t t = ord[i];
            size_t j = i;
            while (j > 0 && span_cmp(&spans[ord[j - 1]], &spans[t]) > 0) {
                ord[j] = ord[j - 1];
                j--;
            }
            ord[j] = t;
        }
        /* Element by element, so each later load matches an earlier store. */
        for (size_t i = 0; i < n; i++)
            tmp[i] = spans[i];
        for (size_t i = 0; i < n; i++)
            spans[i] = tmp[ord[i]];
    } else {
        qsort(spans, n, sizeof(*spans), span_qsort_cmp);
    }
    for (size_t i = 1; i < n; i++)
        if (span_cmp(&spans[i - 1], &spans[i]) == 0)
            return FAB_EDUPKEY;
    return FAB_OK;
}
