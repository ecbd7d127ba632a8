/*
 * The key-order memo (see fabric/keymemo.h).
 */
#include "fabric/keymemo.h"

#include <stdlib.h>
#include <string.h>

#include "fabric/common.h"

int fab_keymemo_new(fab_keymemo **out, fab_keymemo_ref_fn retain, fab_keymemo_ref_fn release)
{
    fab_keymemo *m = calloc(1, sizeof(*m));
    *out = m;
    if (m == NULL)
        return FAB_ENOMEM;
    m->retain = retain;
    m->release = release;
    return FAB_OK;
}

static void shape_drop(fab_keymemo *m, fab_keymemo_shape *e)
{
    for (int i = 0; i < e->n; i++)
        if (m->release)
            m->release(e->keys[i]);
    e->n = 0;
}

void fab_keymemo_free(fab_keymemo *m)
{
    if (m == NULL)
        return;
    for (int s = 0; s < FAB_KEYMEMO_SHAPES; s++) {
        FAB_ASSERT(m->shape[s].pins == 0);
        shape_drop(m, &m->shape[s]);
    }
    free(m);
}

void fab_keymemo_shape_store(fab_keymemo *m, const void *const *keys, size_t stride, size_t n,
                             const fab_span *sorted)
{
    if (n < 2 || n > FAB_KEYMEMO_MAX_KEYS)
        return;
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += sorted[i].len;
    if (len > FAB_KEYMEMO_SHAPE_BYTES)
        return;
    fab_keymemo_shape *e = &m->shape[fab__keymemo_shape_slot(keys, stride, n)];
    if (e->pins)
        return; /* a map is being written from it (an enclosing one) */
    shape_drop(m, e);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        FAB_ASSERT(sorted[i].index < n);
        e->keys[i] = keys[stride * i];
        if (m->retain)
            m->retain(e->keys[i]);
        e->order[i] = (uint8_t)sorted[i].index;
        e->off[i] = (uint16_t)at;
        memcpy(e->bytes + at, sorted[i].p, sorted[i].len);
        at += sorted[i].len;
    }
    e->off[n] = (uint16_t)at;
    e->n = (uint8_t)n;
}

/* Samples every fourth byte: the encodings differ early (in their length
 * and first characters) far more often than late. */
static unsigned order_slot(const uint8_t *p, size_t len, size_t n)
{
    uint32_t h = 2166136261u ^ (uint32_t)n;
    for (size_t i = 0; i < len; i += 4)
        h = (h ^ p[i]) * 16777619u;
    return (h ^ (uint32_t)len) % FAB_KEYMEMO_ORDERS;
}

int fab_keymemo_order_find(const fab_keymemo *m, const uint8_t *bytes, size_t len, fab_span *spans,
                           size_t n)
{
    if (m == NULL || n < 2 || n > FAB_KEYMEMO_MAX_KEYS || len > FAB_KEYMEMO_ORDER_BYTES)
        return 0;
    unsigned slot = order_slot(bytes, len, n);
    if (m->order[slot].n != n || m->order[slot].len != len ||
        memcmp(m->order[slot].bytes, bytes, len) != 0)
        return 0;
    fab_span tmp[FAB_KEYMEMO_MAX_KEYS];
    for (size_t i = 0; i < n; i++)
        tmp[i] = spans[i];
    for (size_t i = 0; i < n; i++)
        spans[i] = tmp[m->order[slot].order[i]];
    return 1;
}

void fab_keymemo_order_store(fab_keymemo *m, const uint8_t *bytes, size_t len,
                             const fab_span *sorted, size_t n)
{
    if (n < 2 || n > FAB_KEYMEMO_MAX_KEYS || len > FAB_KEYMEMO_ORDER_BYTES)
        return;
    unsigned slot = order_slot(bytes, len, n);
    m->order[slot].n = (uint8_t)n;
    m->order[slot].len = (uint16_t)len;
    memcpy(m->order[slot].bytes, bytes, len);
    for (size_t i = 0; i < n; i++) {
        FAB_ASSERT(sorted[i].index < n);
        m->order[slot].order[i] = (uint8_t)sorted[i].index;
    }
}
