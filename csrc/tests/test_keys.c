/* Unit tests of the canonical writer and SHA-256. */
#include <math.h>
#include <msgpack.h>

#include "check.h"
#include "fabric/enc.h"
#include "fabric/error.h"
#include "fabric/hash.h"

static fab_buf out;
static fab_enc enc;

static void reset(void)
{
    fab_buf_destroy(&out);
    fab_buf_init(&out);
    fab_enc_init(&enc, fab_buf_sink, &out);
}

static int expect_hex(const char *hex)
{
    uint8_t want[64];
    size_t n = check_unhex(hex, want);
    int ok = n == out.len && memcmp(want, out.data, n) == 0;
    if (!ok) {
        fprintf(stderr, "    want %s got ", hex);
        for (size_t i = 0; i < out.len; i++)
            fprintf(stderr, "%02x", out.data[i]);
        fprintf(stderr, "\n");
    }
    reset();
    return ok;
}

static void test_ints_shortest(void)
{
    reset();
    fab_enc_int64(&enc, 0);           CHECK(expect_hex("00"));
    fab_enc_int64(&enc, 127);         CHECK(expect_hex("7f"));
    fab_enc_int64(&enc, 128);         CHECK(expect_hex("cc80"));
    fab_enc_int64(&enc, 256);         CHECK(expect_hex("cd0100"));
    fab_enc_int64(&enc, 65536);       CHECK(expect_hex("ce00010000"));
    fab_enc_int64(&enc, 1LL << 32);   CHECK(expect_hex("cf0000000100000000"));
    fab_enc_int64(&enc, -1);          CHECK(expect_hex("ff"));
    fab_enc_int64(&enc, -32);         CHECK(expect_hex("e0"));
    fab_enc_int64(&enc, -33);         CHECK(expect_hex("d0df"));
    fab_enc_int64(&enc, -129);        CHECK(expect_hex("d1ff7f"));
    fab_enc_int64(&enc, INT64_MIN);   CHECK(expect_hex("d38000000000000000"));
    fab_enc_uint64(&enc, UINT64_MAX); CHECK(expect_hex("cfffffffffffffffff"));
    fab_enc_uint64(&enc, 5);          CHECK(expect_hex("05"));
}

static void test_floats(void)
{
    reset();
    fab_enc_double(&enc, 1.0);        CHECK(expect_hex("cb3ff0000000000000"));
    fab_enc_double(&enc, 0.0);        CHECK(expect_hex("cb0000000000000000"));
    fab_enc_double(&enc, -0.0);       CHECK(expect_hex("cb8000000000000000"));
    fab_enc_double(&enc, NAN);        CHECK(expect_hex("cb7ff8000000000000"));
    fab_enc_double(&enc, -NAN);       CHECK(expect_hex("cb7ff8000000000000"));
    double odd_nan;
    uint64_t bits = UINT64_C(0x7ff0000000000001);
    memcpy(&odd_nan, &bits, 8);
    fab_enc_double(&enc, odd_nan);    CHECK(expect_hex("cb7ff8000000000000"));
    fab_enc_double(&enc, INFINITY);   CHECK(expect_hex("cb7ff0000000000000"));
}

static void test_scalars_and_headers(void)
{
    reset();
    fab_enc_nil(&enc);                CHECK(expect_hex("c0"));
    fab_enc_bool(&enc, 1);            CHECK(expect_hex("c3"));
    fab_enc_bool(&enc, 0);            CHECK(expect_hex("c2"));
    fab_enc_str(&enc, "a", 1);        CHECK(expect_hex("a161"));
    fab_enc_str(&enc, "", 0);         CHECK(expect_hex("a0"));
    fab_enc_str_header(&enc, 31);     CHECK(expect_hex("bf"));
    fab_enc_str_header(&enc, 32);     CHECK(expect_hex("d920"));
    fab_enc_str_header(&enc, 256);    CHECK(expect_hex("da0100"));
    fab_enc_str_header(&enc, 65536);  CHECK(expect_hex("db00010000"));
    fab_enc_bin(&enc, "\x01", 1);     CHECK(expect_hex("c40101"));
    fab_enc_bin_header(&enc, 256);    CHECK(expect_hex("c50100"));
    fab_enc_array_header(&enc, 15);   CHECK(expect_hex("9f"));
    fab_enc_array_header(&enc, 16);   CHECK(expect_hex("dc0010"));
    fab_enc_map_header(&enc, 0);      CHECK(expect_hex("80"));
    fab_enc_map_header(&enc, 65536);  CHECK(expect_hex("df00010000"));
    fab_enc_secret(&enc);             CHECK(expect_hex("c70003"));
    fab_enc_ext(&enc, FAB_EXT_SET, "\x90", 1); CHECK(expect_hex("d40290"));
    CHECK_EQ(fab_enc_str_header(&enc, (size_t)UINT32_MAX + 1), FAB_ERANGE);
    reset();
}

static void test_bigint(void)
{
    reset();
    /* 2^64 = 01 00..00 (9 bytes) as two's complement. */
    uint8_t two64[9] = {0x01, 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK_EQ(fab_enc_bigint(&enc, two64, 9), FAB_OK);
    CHECK(expect_hex("c70901010000000000000000"));
    /* -2^63-1 = ff 7f ff .. ff (9 bytes). */
    uint8_t m[9] = {0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    CHECK_EQ(fab_enc_bigint(&enc, m, 9), FAB_OK);
    CHECK(expect_hex("c70901ff7fffffffffffffff"));
    /* Values that fit the plain forms, or are not minimal, are refused. */
    uint8_t u64max[9] = {0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    CHECK_EQ(fab_enc_bigint(&enc, u64max, 9), FAB_ERANGE);
    uint8_t padded[10] = {0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK_EQ(fab_enc_bigint(&enc, padded, 10), FAB_EINVAL);
    CHECK_EQ(out.len, 0);
}

/* The range boundary: every minimal form of 1..8 bytes fits int64 (or, as
 * 00 + uint64, 9 bytes) and is refused with FAB_ERANGE; 9 bytes that are not
 * 00 + uint64 and anything longer are big integers. */
static void test_bigint_boundary(void)
{
    reset();
    for (size_t len = 1; len <= 8; len++) {
        uint8_t pos[8] = {0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}; /* max int<len> */
        uint8_t neg[8] = {0x80, 0, 0, 0, 0, 0, 0, 0};                      /* min int<len> */
        CHECK_EQ(fab_enc_bigint(&enc, pos, len), FAB_ERANGE);
        CHECK_EQ(fab_enc_bigint(&enc, neg, len), FAB_ERANGE);
    }
    uint8_t one[1] = {0x05};
    CHECK_EQ(fab_enc_bigint(&enc, one, 1), FAB_ERANGE);
    CHECK_EQ(out.len, 0);
    /* -2^64 = ff 00 .. 00: 9 bytes, not 00 + uint64, so a big integer. */
    uint8_t mneg[9] = {0xff, 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK_EQ(fab_enc_bigint(&enc, mneg, 9), FAB_OK);
    CHECK(expect_hex("c70901ff0000000000000000"));
    uint8_t ten[10] = {0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK_EQ(fab_enc_bigint(&enc, ten, 10), FAB_OK);
    CHECK(expect_hex("c70a0101000000000000000000"));
}

static void test_sort_spans(void)
{
    const uint8_t a[] = {0xa1, 'b'}, b[] = {0xa1, 'a'}, c[] = {0xa2, 'a', 'a'}, d[] = {0xa1};
    fab_span s[4] = {{a, 2, 0}, {b, 2, 1}, {c, 3, 2}, {d, 1, 3}};
    CHECK_EQ(fab_canon_sort_spans(s, 4), FAB_OK);
    CHECK_EQ(s[0].index, 3); /* a proper prefix sorts first */
    CHECK_EQ(s[1].index, 1);
    CHECK_EQ(s[2].index, 0);
    CHECK_EQ(s[3].index, 2);
    fab_span dup[2] = {{a, 2, 0}, {a, 2, 1}};
    CHECK_EQ(fab_canon_sort_spans(dup, 2), FAB_EDUPKEY);
    /* The qsort path, above 16 spans. */
    uint8_t keys[40];
    fab_span many[40];
    for (int i = 0; i < 40; i++) {
        keys[i] = (uint8_t)(39 - i);
        many[i] = (fab_span){&keys[i], 1, (size_t)i};
    }
    CHECK_EQ(fab_canon_sort_spans(many, 40), FAB_OK);
    for (int i = 0; i < 40; i++)
        CHECK_EQ(many[i].p[0], i);
}

/* Differential: what the writer produces, msgpack-c's unpacker reads back. */
static void test_msgpack_c_reads_back(void)
{
    reset();
    fab_enc_array_header(&enc, 6);
    fab_enc_int64(&enc, -70000);
    fab_enc_uint64(&enc, UINT64_MAX);
    fab_enc_double(&enc, 2.5);
    fab_enc_str(&enc, "hello", 5);
    fab_enc_map_header(&enc, 1);
    fab_enc_str(&enc, "k", 1);
    fab_enc_nil(&enc);
    fab_enc_bin(&enc, "\x00\x01", 2);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    CHECK_EQ(msgpack_unpack_next(&u, (const char *)out.data, out.len, &off), MSGPACK_UNPACK_SUCCESS);
    CHECK_EQ(off, out.len);
    msgpack_object o = u.data;
    CHECK_EQ(o.type, MSGPACK_OBJECT_ARRAY);
    CHECK_EQ(o.via.array.size, 6);
    CHECK_EQ(o.via.array.ptr[0].via.i64, -70000);
    CHECK(o.via.array.ptr[1].via.u64 == UINT64_MAX);
    CHECK(o.via.array.ptr[2].via.f64 == 2.5);
    CHECK_EQ(o.via.array.ptr[3].via.str.size, 5);
    CHECK_EQ(o.via.array.ptr[4].via.map.size, 1);
    CHECK_EQ(o.via.array.ptr[5].type, MSGPACK_OBJECT_BIN);
    msgpack_unpacked_destroy(&u);
    reset();
}

static void hex_digest(const char *msg, size_t len, const char *want)
{
    uint8_t d[32], w[32];
    check_unhex(want, w);
    CHECK_EQ(fab_sha256_digest(msg, len, d), FAB_OK);
    CHECK_MEM(d, w, 32);
}

/* FIPS 180-2 known answers. */
static void test_sha256_known_answers(void)
{
    hex_digest("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    hex_digest("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_digest(m, strlen(m), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *million = malloc(1000000);
    memset(million, 'a', 1000000);
    hex_digest(million, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(million);
}

/* The fast path is the one in use, and the fallback is the one forced. */
/* RFC 4231 test cases 1, 2 and 6 (a key longer than the block). */
static void test_hmac_sha256(void)
{
    uint8_t out[FAB_SHA256_LEN], want[FAB_SHA256_LEN];
    uint8_t key1[20], key6[131];
    memset(key1, 0x0b, sizeof(key1));
    memset(key6, 0xaa, sizeof(key6));
    CHECK_EQ(fab_hmac_sha256(key1, sizeof(key1), "Hi There", 8, out), FAB_OK);
    check_unhex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7", want);
    CHECK(memcmp(out, want, 32) == 0);
    CHECK_EQ(fab_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, out), FAB_OK);
    check_unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", want);
    CHECK(memcmp(out, want, 32) == 0);
    const char *m6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    CHECK_EQ(fab_hmac_sha256(key6, sizeof(key6), m6, strlen(m6), out), FAB_OK);
    check_unhex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54", want);
    CHECK(memcmp(out, want, 32) == 0);
}

static void test_sha256_backend(void)
{
#ifdef FAB_SHA256_EVP_ONLY
    CHECK(strcmp(fab_sha256_backend(), "evp") == 0);
#else
    CHECK(strcmp(fab_sha256_backend(), "provider") == 0);
#endif
}

static void test_hasher_reuse(void)
{
    fab_sha256 *h = NULL;
    CHECK_EQ(fab_sha256_new(&h), FAB_OK);
    uint8_t data[10000], want[32], got[32];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 31 + 7);
    CHECK_EQ(fab_sha256_digest(data, sizeof(data), want), FAB_OK);
    /* A reset discards what was fed. */
    CHECK_EQ(fab_sha256_update(h, "junk", 4), FAB_OK);
    CHECK_EQ(fab_sha256_reset(h), FAB_OK);
    CHECK_EQ(fab_sha256_update(h, data, sizeof(data)), FAB_OK);
    CHECK_EQ(fab_sha256_final(h, got), FAB_OK);
    CHECK_MEM(got, want, 32);
    fab_sha256_free(h);
    fab_sha256_free(NULL);
}

static void test_error_table(void)
{
    CHECK(strcmp(fab_err_name(FAB_ENOMEM), "FAB_ENOMEM") == 0);
    CHECK(strcmp(fab_strerror(FAB_OK), "success") == 0);
    CHECK(strcmp(fab_err_name(12345), "FAB_UNKNOWN") == 0);
}

int main(void)
{
    static const check_case cases[] = {
        {"ints_shortest", test_ints_shortest},
        {"floats", test_floats},
        {"scalars_and_headers", test_scalars_and_headers},
        {"bigint", test_bigint},
        {"bigint_boundary", test_bigint_boundary},
        {"sort_spans", test_sort_spans},
        {"msgpack_c_reads_back", test_msgpack_c_reads_back},
        {"sha256_known_answers", test_sha256_known_answers},
        {"sha256_backend", test_sha256_backend},
        {"hmac_sha256", test_hmac_sha256},
        {"hasher_reuse", test_hasher_reuse},
        {"error_table", test_error_table},
        {NULL, NULL},
    };
    int rc = check_run("keys", cases);
    fab_buf_destroy(&out);
    return rc;
}
