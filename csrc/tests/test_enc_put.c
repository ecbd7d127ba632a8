/*
 * The in-memory writers (fab_put_*) against msgpack-c's packer, which picks
 * the shortest forms too: for every boundary value and a sweep of others,
 * both must produce the same bytes. ext headers are compared for every
 * length class.
 */
#include <msgpack.h>

#include "check.h"
#include "fabric/enc.h"
#include "fabric/error.h"

typedef struct {
    uint8_t data[64];
    size_t len;
} small_buf;

static int small_write(void *ctx, const char *buf, size_t len)
{
    small_buf *b = ctx;
    if (b->len + len > sizeof(b->data))
        return -1;
    memcpy(b->data + b->len, buf, len);
    b->len += len;
    return 0;
}

#define SAME(put_expr, pack_stmt)                                 \
    do {                                                          \
        uint8_t p[FAB_PUT_MAX + 8];                               \
        small_buf b = {{0}, 0};                                   \
        msgpack_packer pk = {&b, small_write};                    \
        size_t got_ = (put_expr);                                 \
        pack_stmt;                                                \
        CHECK(got_ <= FAB_PUT_MAX);                               \
        CHECK_EQ(got_, b.len);                                    \
        CHECK_MEM(p, b.data, got_);                               \
    } while (0)

static const int64_t edges[] = {
    0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 4294967295LL, 4294967296LL,
    INT64_MAX, -1, -31, -32, -33, -127, -128, -129, -32767, -32768, -32769,
    INT32_MIN, (int64_t)INT32_MIN - 1, INT64_MIN, INT64_MIN + 1,
};

static void test_ints_match_msgpack_c(void)
{
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
        for (int d = -2; d <= 2; d++) {
            int64_t v = edges[i];
            if ((d < 0 && v < INT64_MIN - d) || (d > 0 && v > INT64_MAX - d))
                continue;
            v += d;
            SAME(fab_put_int64(p, v), msgpack_pack_int64(&pk, v));
            SAME(fab_put_uint64(p, (uint64_t)v), msgpack_pack_uint64(&pk, (uint64_t)v));
        }
    /* A multiplicative sweep over the whole range. */
    for (uint64_t u = 1; u != 0 && u < UINT64_MAX / 3; u = u * 3 + 1) {
        SAME(fab_put_uint64(p, u), msgpack_pack_uint64(&pk, u));
        SAME(fab_put_int64(p, -(int64_t)u), msgpack_pack_int64(&pk, -(int64_t)u));
    }
    SAME(fab_put_uint64(p, UINT64_MAX), msgpack_pack_uint64(&pk, UINT64_MAX));
}

static void test_headers_match_msgpack_c(void)
{
    static const uint32_t lens[] = {0, 1, 2, 3, 4, 5, 8, 15, 16, 17, 31, 32, 33, 255, 256,
                                    65535, 65536, 1u << 24, UINT32_MAX};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        uint32_t n = lens[i];
        SAME(fab_put_str_header(p, n), msgpack_pack_str(&pk, n));
        SAME(fab_put_bin_header(p, n), msgpack_pack_bin(&pk, n));
        SAME(fab_put_array_header(p, n), msgpack_pack_array(&pk, n));
        SAME(fab_put_map_header(p, n), msgpack_pack_map(&pk, n));
        SAME(fab_put_ext_header(p, 2, n), msgpack_pack_ext(&pk, n, 2));
        SAME(fab_put_ext_header(p, -5, n), msgpack_pack_ext(&pk, n, -5));
    }
}

static void test_scalars_match_msgpack_c(void)
{
    SAME(fab_put_nil(p), msgpack_pack_nil(&pk));
    SAME(fab_put_bool(p, 1), msgpack_pack_true(&pk));
    SAME(fab_put_bool(p, 0), msgpack_pack_false(&pk));
    static const double ds[] = {0.0, -0.0, 1.5, -2.25, 1e300, 5e-324, HUGE_VAL, -HUGE_VAL};
    for (size_t i = 0; i < sizeof(ds) / sizeof(ds[0]); i++)
        SAME(fab_put_double(p, ds[i]), msgpack_pack_double(&pk, ds[i]));
    /* Every NaN is the one canonical NaN (msgpack-c would keep the payload). */
    uint8_t p[FAB_PUT_MAX];
    static const uint8_t nan[9] = {0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0};
    CHECK_EQ(fab_put_double(p, -NAN), 9);
    CHECK_MEM(p, nan, 9);
}

/* The canonical sort against a plain memcmp order, on random short spans
 * over a tiny alphabet (so prefixes, zero bytes and ties are common). */
static int ref_cmp(const fab_span *x, const fab_span *y)
{
    size_t n = x->len < y->len ? x->len : y->len;
    int c = n ? memcmp(x->p, y->p, n) : 0;
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static void test_sort_spans_random(void)
{
    static const uint8_t alphabet[] = {0x00, 0x01, 0x7f, 0x80, 0xff};
    uint8_t pool[40][20];
    uint64_t seed = 88172645463325252ULL;
    for (int round = 0; round < 3000; round++) {
        size_t n = 1 + (size_t)(round % 40);
        fab_span spans[40];
        for (size_t i = 0; i < n; i++) {
            seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
            size_t len = (size_t)(seed % 20);
            for (size_t k = 0; k < len; k++)
                pool[i][k] = alphabet[(seed >> (8 + 3 * k)) % 5];
            spans[i] = (fab_span){pool[i], len, i, 0};
        }
        int dup = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < i; j++)
                dup |= ref_cmp(&spans[i], &spans[j]) == 0;
        int rc = fab_canon_sort_spans(spans, n);
        CHECK_EQ(rc, dup ? FAB_EDUPKEY : FAB_OK);
        for (size_t i = 1; i < n; i++)
            CHECK(ref_cmp(&spans[i - 1], &spans[i]) <= 0);
    }
}

/* fab_copy writes exactly n bytes, equal to the source, for every length
 * and alignment (the buffers are heap blocks, so ASan sees any overrun). */
static void test_copy_every_length(void)
{
    for (size_t n = 0; n <= 100; n++) {
        for (size_t skew = 0; skew < 8; skew++) {
            uint8_t *src = malloc(n + skew + 1), *dst = malloc(n + skew + 2);
            CHECK(src != NULL && dst != NULL);
            if (src == NULL || dst == NULL) {
                free(src);
                free(dst);
                return;
            }
            for (size_t i = 0; i < n + skew + 1; i++)
                src[i] = (uint8_t)(i * 37 + n);
            memset(dst, 0xA5, n + skew + 2);
            fab_copy(dst + skew, src + skew, n);
            CHECK(n == 0 || memcmp(dst + skew, src + skew, n) == 0);
            for (size_t i = 0; i < skew; i++)
                CHECK_EQ(dst[i], 0xA5);
            CHECK_EQ(dst[skew + n], 0xA5);
            CHECK_EQ(dst[skew + n + 1], 0xA5);
            free(src);
            free(dst);
        }
    }
}

int main(void)
{
    static const check_case cases[] = {
        {"ints_match_msgpack_c", test_ints_match_msgpack_c},
        {"headers_match_msgpack_c", test_headers_match_msgpack_c},
        {"scalars_match_msgpack_c", test_scalars_match_msgpack_c},
        {"sort_spans_random", test_sort_spans_random},
        {"copy_every_length", test_copy_every_length},
        {NULL, NULL},
    };
    return check_run("enc_put", cases);
}
