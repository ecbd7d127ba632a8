/* The key-order memo: shapes found by key identity and orders found by
 * key bytes give back what was stored, pinned shapes are not replaced, and
 * every key retained is released exactly once. */
#include "check.h"
#include "fabric/keymemo.h"

/* Keys are the addresses of these cells; the cell counts its holds. */
static int cells[4096];
static long retains, releases;

static void retain(const void *key)
{
    ((int *)(uintptr_t)key)[0]++;
    retains++;
}

static void release(const void *key)
{
    int *c = (int *)(uintptr_t)key;
    CHECK(*c > 0); /* never released more often than retained */
    (*c)--;
    releases++;
}

static void reset_counts(void)
{
    memset(cells, 0, sizeof(cells));
    retains = releases = 0;
}

/* Lays out n keys as key, value pairs (stride 2), from cells[first]. */
static void pairs(const void **items, size_t n, size_t first)
{
    for (size_t i = 0; i < n; i++) {
        items[2 * i] = &cells[first + i];
        items[2 * i + 1] = NULL;
    }
}

/* Encodes n one-byte-long "keys" back to front into buf, as spans in map
 * order: key i is the fixstr of the letter 'a' + n - 1 - i. */
static size_t encode_keys(uint8_t *buf, fab_span *spans, size_t n)
{
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        spans[i].p = buf + at;
        spans[i].len = 2;
        spans[i].index = i;
        buf[at++] = 0xa1;
        buf[at++] = (uint8_t)('a' + n - 1 - i);
    }
    return at;
}

static void test_shape_round_trip(void)
{
    reset_counts();
    fab_keymemo *m = NULL;
    CHECK_EQ(fab_keymemo_new(&m, retain, release), FAB_OK);
    const void *items[2 * FAB_KEYMEMO_MAX_KEYS];
    for (size_t n = 2; n <= FAB_KEYMEMO_MAX_KEYS; n++) {
        pairs(items, n, 100 * n);
        CHECK(fab_keymemo_shape_find(m, items, 2, n) == NULL);
        uint8_t buf[64];
        fab_span spans[FAB_KEYMEMO_MAX_KEYS];
        encode_keys(buf, spans, n);
        CHECK_EQ(fab_canon_sort_spans(spans, n), FAB_OK);
        fab_keymemo_shape_store(m, items, 2, n, spans);
        fab_keymemo_shape *e = fab_keymemo_shape_find(m, items, 2, n);
        CHECK(e != NULL);
        if (e == NULL)
            continue;
        CHECK_EQ(e->pins, 1);
        /* The encodings come back sorted, with the map positions. */
        for (size_t i = 0; i < n; i++) {
            CHECK_EQ(e->order[i], n - 1 - i);
            CHECK_EQ(e->off[i + 1] - e->off[i], 2);
            CHECK_EQ(e->bytes[e->off[i] + 1], 'a' + i);
        }
        fab_keymemo_shape_unpin(e);
        CHECK_EQ(e->pins, 0);
        /* One key different, or the same keys in another order: a miss. */
        const void *saved = items[2 * (n - 1)];
        items[2 * (n - 1)] = &cells[4000];
        CHECK(fab_keymemo_shape_find(m, items, 2, n) == NULL);
        items[2 * (n - 1)] = items[0];
        items[0] = saved;
        CHECK(fab_keymemo_shape_find(m, items, 2, n) == NULL);
    }
    /* Sizes the memo does not hold, and no memo at all. */
    pairs(items, 2, 0);
    CHECK(fab_keymemo_shape_find(m, items, 2, 1) == NULL);
    CHECK(fab_keymemo_shape_find(m, items, 2, 0) == NULL);
    CHECK(fab_keymemo_shape_find(NULL, items, 2, 2) == NULL);
    fab_keymemo_free(m);
    fab_keymemo_free(NULL);
    CHECK_EQ(retains, releases);
    for (size_t i = 0; i < sizeof(cells) / sizeof(cells[0]); i++)
        CHECK_EQ(cells[i], 0);
}

static void test_shape_limits_and_pins(void)
{
    reset_counts();
    fab_keymemo *m = NULL;
    CHECK_EQ(fab_keymemo_new(&m, retain, release), FAB_OK);
    const void *items[2 * (FAB_KEYMEMO_MAX_KEYS + 1)];
    uint8_t buf[4096];
    fab_span spans[FAB_KEYMEMO_MAX_KEYS + 1];

    /* Too many keys, or key encodings too long: not remembered. */
    pairs(items, FAB_KEYMEMO_MAX_KEYS + 1, 0);
    encode_keys(buf, spans, FAB_KEYMEMO_MAX_KEYS + 1);
    fab_keymemo_shape_store(m, items, 2, FAB_KEYMEMO_MAX_KEYS + 1, spans);
    CHECK_EQ(retains, 0);
    pairs(items, 2, 50);
    encode_keys(buf, spans, 2);
    spans[0].len = FAB_KEYMEMO_SHAPE_BYTES; /* 2 more than fit */
    fab_keymemo_shape_store(m, items, 2, 2, spans);
    CHECK_EQ(retains, 0);
    CHECK(fab_keymemo_shape_find(m, items, 2, 2) == NULL);

    /* A pinned entry is not replaced; once unpinned it is. Storing the
     * same keys again releases the old holds first. */
    encode_keys(buf, spans, 2);
    fab_keymemo_shape_store(m, items, 2, 2, spans);
    CHECK_EQ(cells[50], 1);
    fab_keymemo_shape *e = fab_keymemo_shape_find(m, items, 2, 2);
    CHECK(e != NULL);
    fab_keymemo_shape_store(m, items, 2, 2, spans);
    CHECK_EQ(cells[50], 1);
    CHECK_EQ(retains, 2);
    if (e)
        fab_keymemo_shape_unpin(e);
    fab_keymemo_shape_store(m, items, 2, 2, spans);
    CHECK_EQ(cells[50], 1);
    CHECK_EQ(retains, 4);
    CHECK_EQ(releases, 2);

    /* Many shapes through a bounded table: evictions release, and at the
     * end every hold is given back. */
    for (size_t first = 0; first + 3 < 4000; first += 3) {
        pairs(items, 3, first);
        encode_keys(buf, spans, 3);
        fab_keymemo_shape_store(m, items, 2, 3, spans);
    }
    CHECK(retains - releases <= 2L * FAB_KEYMEMO_SHAPES * 3);
    fab_keymemo_free(m);
    CHECK_EQ(retains, releases);
    for (size_t i = 0; i < sizeof(cells) / sizeof(cells[0]); i++)
        CHECK_EQ(cells[i], 0);
}

static void test_orders(void)
{
    fab_keymemo *m = NULL;
    CHECK_EQ(fab_keymemo_new(&m, NULL, NULL), FAB_OK);
    for (size_t n = 2; n <= FAB_KEYMEMO_MAX_KEYS; n++) {
        uint8_t buf[64];
        fab_span spans[FAB_KEYMEMO_MAX_KEYS], sorted[FAB_KEYMEMO_MAX_KEYS];
        size_t len = encode_keys(buf, spans, n);
        CHECK_EQ(fab_keymemo_order_find(m, buf, len, spans, n), 0);
        CHECK_EQ(fab_keymemo_order_find(NULL, buf, len, spans, n), 0);
        memcpy(sorted, spans, sizeof(spans[0]) * n);
        CHECK_EQ(fab_canon_sort_spans(sorted, n), FAB_OK);
        fab_keymemo_order_store(m, buf, len, sorted, n);
        /* The same bytes in another buffer (equal keys, not identical). */
        uint8_t copy[64];
        fab_span again[FAB_KEYMEMO_MAX_KEYS];
        encode_keys(copy, again, n);
        CHECK_EQ(fab_keymemo_order_find(m, copy, len, again, n), 1);
        for (size_t i = 0; i < n; i++) {
            CHECK_EQ(again[i].index, sorted[i].index);
            CHECK(again[i].p == copy + (sorted[i].p - buf));
        }
        /* One byte different: a miss, spans untouched. */
        copy[len - 1] ^= 0x20;
        encode_keys(buf, again, n);
        CHECK_EQ(fab_keymemo_order_find(m, copy, len, again, n), 0);
        for (size_t i = 0; i < n; i++)
            CHECK_EQ(again[i].index, i);
    }
    /* Encodings longer than an entry holds are not remembered. */
    static uint8_t big[FAB_KEYMEMO_ORDER_BYTES + 2];
    fab_span two[2] = {{big, 1, 1, 0}, {big + 1, sizeof(big) - 1, 0, 0}};
    fab_keymemo_order_store(m, big, sizeof(big), two, 2);
    fab_span probe[2] = {{big, 1, 0, 0}, {big + 1, sizeof(big) - 1, 1, 0}};
    CHECK_EQ(fab_keymemo_order_find(m, big, sizeof(big), probe, 2), 0);
    fab_keymemo_free(m);
}

int main(void)
{
    static const check_case cases[] = {
        {"shape_round_trip", test_shape_round_trip},
        {"shape_limits_and_pins", test_shape_limits_and_pins},
        {"orders", test_orders},
        {NULL, NULL},
    };
    return check_run("keymemo", cases);
}
