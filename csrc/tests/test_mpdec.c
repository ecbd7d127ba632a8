/* Unit tests of the hardened msgpack reader. */
#include <string.h>

#include "check.h"
#include "fabric/mpdec.h"

static int validate_hex(const char *hex, const fab_mp_limits *lim, size_t *off)
{
    uint8_t buf[512];
    size_t n = check_unhex(hex, buf);
    char err[128];
    size_t o = 0;
    int rc = fab_mp_validate(buf, n, lim, err, sizeof(err), &o);
    if (off)
        *off = o;
    return rc;
}

static int validate_tagged_hex(const char *hex, size_t *off)
{
    uint8_t buf[2048];
    size_t n = check_unhex(hex, buf);
    char err[128];
    size_t o = 0;
    int rc = fab_mp_validate_tagged(buf, n, NULL, err, sizeof(err), &o);
    if (off)
        *off = o;
    return rc;
}

/* Tags (docs/spec/values.md) qualify the next item and are not children of
 * the enclosing container; the depth bookkeeping follows the real nesting. */
static void test_tags_are_prefixes(void)
{
    /* [1, (2,)]: an array of 2 holding 1, a tag, an array of 1. */
    CHECK_EQ(validate_tagged_hex("9201c700119102", NULL), FAB_OK);
    /* Without tag reading the same bytes have a trailing item. */
    CHECK_EQ(validate_hex("9201c700119102", NULL, NULL), FAB_EFORMAT);
    /* A root tag, a tagged map key, a tag before a tag. */
    CHECK_EQ(validate_tagged_hex("c700119100", NULL), FAB_OK);
    CHECK_EQ(validate_tagged_hex("81c70011920102a176", NULL), FAB_OK);
    CHECK_EQ(validate_tagged_hex("c70016c70011920102", NULL), FAB_OK);
    /* A tag must be followed by an item. */
    size_t off = 0;
    CHECK_EQ(validate_tagged_hex("c70011", &off), FAB_ETRUNCATED);
    CHECK_EQ(off, 3);
    CHECK_EQ(validate_tagged_hex("91c70011", NULL), FAB_ETRUNCATED);
    /* Other empty exts (the secret marker) are items as before. */
    CHECK_EQ(validate_tagged_hex("92c70003c70003", NULL), FAB_OK);
    /* Tuples nested 300 deep break the depth limit like arrays do. */
    char hex[300 * 8 + 3];
    for (int i = 0; i < 300; i++)
        memcpy(hex + 8 * i, "c7001191", 8);
    memcpy(hex + 2400, "c0", 3);
    CHECK_EQ(validate_tagged_hex(hex, NULL), FAB_EDEPTH);
    /* A record may nest one level more than a key: FAB_MAX_RECORD_DEPTH. */
    fab_mp_limits lim;
    fab_mp_limits_default(&lim);
    lim.max_depth = FAB_MAX_RECORD_DEPTH + 10;
    fab_mp_reader r;
    CHECK_EQ(fab_mp_reader_init(&r, "\x90", 1, &lim), FAB_OK);
    CHECK_EQ(r.lim.max_depth, FAB_MAX_RECORD_DEPTH);
}

static void test_accepts_every_form(void)
{
    /* Non-shortest forms a foreign encoder may send are accepted. */
    const char *ok[] = {
        "00", "7f", "e0", "c0", "c2", "c3", "cc00", "cd0000", "ce00000000",
        "cf0000000000000000", "d000", "d10000", "d200000000", "d30000000000000000",
        "ca3f800000", "cb3ff0000000000000", "a0", "d900", "da0000", "db00000000",
        "c400", "c50000", "c600000000", "90", "dc0000", "dd00000000", "80",
        "de0000", "df00000000", "d4ff00", "d5ff0000", "d6ff00000000",
        "d7ff0000000000000000", "d8ff00000000000000000000000000000000", "c700ff",
        "c80000ff", "c900000000ff", "92c0c0", "81a161c0", "a3e282ac",
        "f09f9880" /* not a str: a negative fixint then more: refused as trailing */,
    };
    for (size_t i = 0; i + 1 < sizeof(ok) / sizeof(ok[0]); i++) {
        int rc = validate_hex(ok[i], NULL, NULL);
        if (rc != FAB_OK)
            fprintf(stderr, "    refused %s: %d\n", ok[i], rc);
        CHECK_EQ(rc, FAB_OK);
    }
    CHECK_EQ(validate_hex("f09f9880", NULL, NULL), FAB_EFORMAT);
    CHECK_EQ(validate_hex("a4f09f9880", NULL, NULL), FAB_OK); /* U+1F600 */
}

static void test_refusals_with_offsets(void)
{
    size_t off;
    CHECK_EQ(validate_hex("", NULL, &off), FAB_ETRUNCATED);
    CHECK_EQ(validate_hex("c1", NULL, &off), FAB_EFORMAT);
    CHECK_EQ(off, 0);
    CHECK_EQ(validate_hex("9201c1", NULL, &off), FAB_EFORMAT);
    CHECK_EQ(off, 2);
    CHECK_EQ(validate_hex("dbffffffff", NULL, &off), FAB_ELIMIT);
    CHECK_EQ(validate_hex("db00000010", NULL, &off), FAB_ETRUNCATED);
    CHECK_EQ(validate_hex("dd00100000", NULL, &off), FAB_ETRUNCATED);
    CHECK_EQ(validate_hex("9101", NULL, &off), FAB_OK);
    CHECK_EQ(validate_hex("910101", NULL, &off), FAB_EFORMAT); /* trailing */
    CHECK_EQ(off, 2);
    CHECK_EQ(validate_hex("a1c3", NULL, &off), FAB_EUTF8);     /* truncated sequence */
    CHECK_EQ(validate_hex("a3eda080", NULL, &off), FAB_EUTF8); /* surrogate */
    CHECK_EQ(validate_hex("a2c0af", NULL, &off), FAB_EUTF8);   /* overlong */
    CHECK_EQ(validate_hex("a4f4908080", NULL, &off), FAB_EUTF8); /* > U+10FFFF */
    CHECK_EQ(validate_hex("cd00", NULL, &off), FAB_ETRUNCATED);
    CHECK_EQ(validate_hex("d5", NULL, &off), FAB_ETRUNCATED);
}

static void test_limits_at_boundaries(void)
{
    fab_mp_limits lim;
    fab_mp_limits_default(&lim);
    lim.max_array = 2;
    CHECK_EQ(validate_hex("920102", &lim, NULL), FAB_OK);
    CHECK_EQ(validate_hex("93010203", &lim, NULL), FAB_ELIMIT);
    fab_mp_limits_default(&lim);
    lim.max_str = 3;
    CHECK_EQ(validate_hex("a3616263", &lim, NULL), FAB_OK);
    CHECK_EQ(validate_hex("a461626364", &lim, NULL), FAB_ELIMIT);
    fab_mp_limits_default(&lim);
    lim.max_depth = 2;
    CHECK_EQ(validate_hex("919101", &lim, NULL), FAB_OK);
    CHECK_EQ(validate_hex("91919101", &lim, NULL), FAB_EDEPTH);
    CHECK_EQ(validate_hex("919190", &lim, NULL), FAB_OK); /* an empty array opens nothing */
    fab_mp_limits_default(&lim);
    lim.max_items = 3;
    CHECK_EQ(validate_hex("920102", &lim, NULL), FAB_OK);
    CHECK_EQ(validate_hex("93010203", &lim, NULL), FAB_ELIMIT);
    lim.max_items = 0;
    fab_mp_reader r;
    CHECK_EQ(fab_mp_reader_init(&r, "", 0, &lim), FAB_EINVAL);
}

static void test_nesting_bookkeeping(void)
{
    /* [[1, [2]], {a: [3]}, 4] read item by item closes every container. */
    uint8_t buf[64];
    size_t n = check_unhex("939201910281a161910304", buf);
    fab_mp_reader r;
    fab_mp_item it;
    CHECK_EQ(fab_mp_reader_init(&r, buf, n, NULL), FAB_OK);
    int count = 0;
    while (r.pos < r.len) {
        CHECK_EQ(fab_mp_next(&r, &it), FAB_OK);
        count++;
    }
    CHECK_EQ(count, 10);
    CHECK(fab_mp_complete(&r));
    /* After an error, the reader stays failed. */
    CHECK_EQ(fab_mp_reader_init(&r, "\xc1\x00", 2, NULL), FAB_OK);
    CHECK_EQ(fab_mp_next(&r, &it), FAB_EFORMAT);
    CHECK_EQ(fab_mp_next(&r, &it), FAB_ESTATE);
}

/* Everything the canonical writer emits, the reader accepts. */
static void test_reads_what_enc_writes(void)
{
    fab_buf b;
    fab_enc e;
    fab_buf_init(&b);
    fab_enc_init(&e, fab_buf_sink, &b);
    fab_enc_array_header(&e, 5);
    fab_enc_int64(&e, INT64_MIN);
    fab_enc_uint64(&e, UINT64_MAX);
    fab_enc_str(&e, "\xc3\xa9t\xc3\xa9", 5);
    uint8_t big[9] = {0x01, 0, 0, 0, 0, 0, 0, 0, 0};
    fab_enc_bigint(&e, big, 9);
    fab_enc_secret(&e);
    fab_mp_reader r;
    fab_mp_item it;
    CHECK_EQ(fab_mp_reader_init(&r, b.data, b.len, NULL), FAB_OK);
    CHECK_EQ(fab_mp_next(&r, &it), FAB_OK);
    CHECK_EQ(it.type, FAB_MP_ARRAY);
    CHECK_EQ(fab_mp_next(&r, &it), FAB_OK);
    CHECK(it.type == FAB_MP_INT && it.v.i == INT64_MIN);
    CHECK_EQ(fab_mp_next(&r, &it), FAB_OK);
    CHECK(it.type == FAB_MP_UINT && it.v.u == UINT64_MAX);
    CHECK_EQ(fab_mp_next(&r, &it), FAB_OK);
    CHECK(it.type == FAB_MP_STR && it.v.s.len == 5);
    CHECK_EQ(fab_mp_next(&r, &it), FAB_OK);
    CHECK(it.type == FAB_MP_EXT && it.v.s.ext_type == FAB_EXT_BIGINT && it.v.s.len == 9);
    CHECK_EQ(fab_mp_next(&r, &it), FAB_OK);
    CHECK(it.type == FAB_MP_EXT && it.v.s.ext_type == FAB_EXT_SECRET && it.v.s.len == 0);
    CHECK(fab_mp_complete(&r));
    CHECK_EQ(r.pos, b.len);
    fab_buf_destroy(&b);
}

static void test_value_prefix(void)
{
    /* c1 01 starts a body; no c1: plain msgpack; c1 alone or with another
     * version byte: FAB_EVERSION, named, at offset 1 (the version byte's). */
    static const struct {
        const char *bytes;
        size_t len;
        int rc;
        size_t body;
        const char *says;
    } cases[] = {
        {"\xc1\x01\x90", 3, FAB_OK, 2, NULL},
        {"\x90", 1, FAB_OK, 0, NULL},
        {"", 0, FAB_OK, 0, NULL},
        {"\xc1", 1, FAB_EVERSION, 0, "missing version byte"},
        {"\xc1\x02\x90", 3, FAB_EVERSION, 0, "unknown value encoding version 2 (this reader"},
        {"\xc1\x00", 2, FAB_EVERSION, 0, "unknown value encoding version 0 "},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[96] = "";
        size_t body = 99, off = 99;
        CHECK_EQ(fab_value_prefix(cases[i].bytes, cases[i].len, &body, err, sizeof(err), &off),
                 cases[i].rc);
        CHECK_EQ(body, cases[i].body);
        CHECK_EQ(off, cases[i].rc ? (size_t)1 : (size_t)99);
        CHECK(cases[i].says == NULL || strstr(err, cases[i].says) != NULL);
    }
    size_t body;  /* err and err_offset may be NULL */
    CHECK_EQ(fab_value_prefix("\xc1", 1, &body, NULL, 0, NULL), FAB_EVERSION);
}

int main(void)
{
    static const check_case cases[] = {
        {"accepts_every_form", test_accepts_every_form},
        {"tags_are_prefixes", test_tags_are_prefixes},
        {"refusals_with_offsets", test_refusals_with_offsets},
        {"limits_at_boundaries", test_limits_at_boundaries},
        {"nesting_bookkeeping", test_nesting_bookkeeping},
        {"reads_what_enc_writes", test_reads_what_enc_writes},
        {"value_prefix", test_value_prefix},
        {NULL, NULL},
    };
    return check_run("mpdec", cases);
}
