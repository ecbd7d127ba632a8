/*
 * The key-order memo: remembered orders of map keys, so that the many maps
 * a program keys with the same keys (rows of a table, one config shape per
 * call) are neither sorted nor, most of the time, even encoded again.
 *
 * Shapes: the keys themselves, by identity. A map whose keys are, in its
 * iteration order, the very same key objects as a remembered map's (opaque
 * pointers compared for equality) has the same key encodings and the same
 * order, provided the caller's key objects are immutable and stay alive
 * while remembered: the memo calls retain on each key it stores and release
 * on each it drops, so an address cannot be reused while it is remembered.
 * A hit gives the remembered encodings in canonical order; the entry is
 * pinned meanwhile, so nested maps cannot replace it.
 *
 * Orders: the key encodings. Encodings are self-delimiting, so equal bytes
 * for the same number of keys mean the same keys at the same offsets, and
 * the order (and the absence of duplicates) found once holds again. This
 * serves keys that are equal but not identical (parsed from JSON, say).
 *
 * Both tables are direct-mapped and bounded. The memo is not thread-safe:
 * its user serializes every call (the glue holds the GIL). A pinned shape
 * is only read until its last user unpins it.
 */
#ifndef FABRIC_KEYMEMO_H
#define FABRIC_KEYMEMO_H

#include <stddef.h>
#include <stdint.h>

#include "fabric/enc.h"

#define FAB_KEYMEMO_MAX_KEYS 16    /* maps of 2..16 keys are remembered */
#define FAB_KEYMEMO_ORDERS 16      /* entries of the order table */
#define FAB_KEYMEMO_ORDER_BYTES 160
#define FAB_KEYMEMO_SHAPE_BITS 6
#define FAB_KEYMEMO_SHAPES (1 << FAB_KEYMEMO_SHAPE_BITS)
#define FAB_KEYMEMO_SHAPE_BYTES 256

/* Takes or drops the caller's hold on a remembered key. */
typedef void (*fab_keymemo_ref_fn)(const void *key);

typedef struct fab_keymemo_shape {
    uint8_t n;                                 /* keys; 0 = empty */
    uint32_t pins;                             /* users reading it now */
    uint8_t order[FAB_KEYMEMO_MAX_KEYS];       /* map positions, in canonical order */
    uint16_t off[FAB_KEYMEMO_MAX_KEYS + 1];    /* where each sorted key starts in bytes */
    const void *keys[FAB_KEYMEMO_MAX_KEYS];    /* retained, in map order */
    uint8_t bytes[FAB_KEYMEMO_SHAPE_BYTES];    /* the key encodings, sorted */
} fab_keymemo_shape;

/* The fields are private to keymemo.c and the inline functions below. */
typedef struct fab_keymemo {
    struct {
        uint16_t len;
        uint8_t n;
        uint8_t order[FAB_KEYMEMO_MAX_KEYS];
        uint8_t bytes[FAB_KEYMEMO_ORDER_BYTES];
    } order[FAB_KEYMEMO_ORDERS];
    fab_keymemo_shape shape[FAB_KEYMEMO_SHAPES];
    fab_keymemo_ref_fn retain, release;
} fab_keymemo;

/* Allocates an empty memo into *out; retain and release (either may be
 * NULL) are called for each key stored and dropped. 0 or FAB_ENOMEM. */
int fab_keymemo_new(fab_keymemo **out, fab_keymemo_ref_fn retain, fab_keymemo_ref_fn release);

/* Releases every remembered key and frees the memo; NULL is a no-op. No
 * shape may be pinned. */
void fab_keymemo_free(fab_keymemo *m);

/* The table slot of n keys at keys[0], keys[stride], ...: a hash of the
 * first, middle and last key's identity. */
static inline unsigned fab__keymemo_shape_slot(const void *const *keys, size_t stride, size_t n)
{
    uint64_t h = (uint64_t)n;
    h = (h ^ ((uint64_t)(uintptr_t)keys[0] >> 4)) * 0x9E3779B97F4A7C15ull;
    h = (h ^ ((uint64_t)(uintptr_t)keys[stride * (n / 2)] >> 4)) * 0x9E3779B97F4A7C15ull;
    h = (h ^ ((uint64_t)(uintptr_t)keys[stride * (n - 1)] >> 4)) * 0x9E3779B97F4A7C15ull;
    return (unsigned)(h >> (64 - FAB_KEYMEMO_SHAPE_BITS));
}

/*
 * The remembered shape of the n keys at keys[0], keys[stride], ... (a map's
 * iteration order; stride 2 walks key, value pairs), pinned until
 * fab_keymemo_shape_unpin, or NULL. m may be NULL. Inline: it runs for
 * every map a key is made of.
 */
static inline fab_keymemo_shape *fab_keymemo_shape_find(fab_keymemo *m, const void *const *keys,
                                                        size_t stride, size_t n)
{
    if (m == NULL || n < 2 || n > FAB_KEYMEMO_MAX_KEYS)
        return NULL;
    fab_keymemo_shape *e = &m->shape[fab__keymemo_shape_slot(keys, stride, n)];
    if (e->n != n)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (e->keys[i] != keys[stride * i])
            return NULL;
    e->pins++;
    return e;
}

static inline void fab_keymemo_shape_unpin(fab_keymemo_shape *e)
{
    e->pins--;
}

/*
 * Remembers the shape of the n keys at keys[0], keys[stride], ... whose
 * encodings are sorted[0..n) in canonical order (sorted[i].index: the key's
 * map position; .p points at its encoding). Does nothing when the keys do
 * not fit, or when their slot is pinned. Replacing an entry releases its
 * keys before the new ones are retained.
 */
void fab_keymemo_shape_store(fab_keymemo *m, const void *const *keys, size_t stride, size_t n,
                             const fab_span *sorted);

/*
 * Orders spans[0..n) (the key encodings laid end to end in bytes[0..len),
 * in map order) into canonical order when the memo knows these bytes: 1 on
 * a hit, 0 on a miss (spans untouched). m may be NULL.
 */
int fab_keymemo_order_find(const fab_keymemo *m, const uint8_t *bytes, size_t len, fab_span *spans,
                           size_t n);

/* Remembers the canonical order of the key encodings bytes[0..len), given
 * as sorted[0..n) (sorted[i].index: map positions). Does nothing when they
 * do not fit. */
void fab_keymemo_order_store(fab_keymemo *m, const uint8_t *bytes, size_t len,
                             const fab_span *sorted, size_t n);

#endif
