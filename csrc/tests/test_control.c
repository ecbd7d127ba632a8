/* Unit tests of the control codec (csrc/control.c). */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "fabric/control.h"

static int decode_hex(const char *hex, fab_control *c, fab_control_error *e)
{
    static uint8_t buf[512];
    size_t n = check_unhex(hex, buf);
    return fab_control_decode(buf, n, NULL, c, e);
}

/* The golden vector of docs/spec/frames.md §7: next(limit=4). */
static void test_golden_next(void)
{
    fab_control c = {.op = FAB_CTL_NEXT, .present = FAB_CTL_F_LIMIT, .limit = 4};
    fab_buf b;
    fab_buf_init(&b);
    CHECK_EQ(fab_control_encode(&c, &b), FAB_OK);
    uint8_t want[32];
    size_t n = check_unhex("82a26f70a46e657874a56c696d697404", want);
    CHECK_EQ(b.len, n);
    CHECK_MEM(b.data, want, n);
    fab_control d;
    CHECK_EQ(fab_control_decode(b.data, b.len, NULL, &d, NULL), FAB_OK);
    CHECK_EQ(d.op, FAB_CTL_NEXT);
    CHECK_EQ(d.present, FAB_CTL_F_LIMIT);
    CHECK_EQ(d.limit, 4);
    fab_buf_destroy(&b);
}

/* Every operation with every field it allows encodes canonically (keys in
 * encoded-byte order) and decodes back to the same struct. */
static void test_round_trip_every_op(void)
{
    static const uint8_t item[] = {0x92, 0x01, 0xa1, 'x'};     /* [1, "x"] */
    static const uint8_t meta[] = {0x81, 0xa1, 'w', 0xcd, 0x02, 0x80}; /* {"w": 640} */
    fab_control cs[] = {
        {.op = FAB_CTL_OPEN},
        {.op = FAB_CTL_OPEN, .present = FAB_CTL_F_METADATA, .metadata = meta,
         .metadata_len = sizeof(meta)},
        {.op = FAB_CTL_NEXT, .present = FAB_CTL_F_LIMIT, .limit = 1ull << 40},
        {.op = FAB_CTL_PUSH, .present = FAB_CTL_F_ITEM, .item = item, .item_len = sizeof(item)},
        {.op = FAB_CTL_CLOSE},
        {.op = FAB_CTL_CANCEL},
        {.op = FAB_CTL_CANCEL, .present = FAB_CTL_F_REASON, .reason = (const uint8_t *)"stop",
         .reason_len = 4},
        {.op = FAB_CTL_CANCEL, .present = FAB_CTL_F_REASON, .reason = NULL, .reason_len = 0},
        {.op = FAB_CTL_STATS},
        {.op = FAB_CTL_METADATA},
        {.op = FAB_CTL_FAULT, .present = FAB_CTL_F_KIND | FAB_CTL_F_COUNT, .fault = 8,
         .count = 3},
    };
    for (size_t i = 0; i < sizeof(cs) / sizeof(cs[0]); i++) {
        fab_buf b;
        fab_buf_init(&b);
        CHECK_EQ(fab_control_encode(&cs[i], &b), FAB_OK);
        fab_control d;
        fab_control_error e;
        CHECK_EQ(fab_control_decode(b.data, b.len, NULL, &d, &e), FAB_OK);
        CHECK_EQ(d.op, cs[i].op);
        CHECK_EQ(d.present, cs[i].present);
        CHECK_EQ(d.limit, cs[i].limit);
        CHECK_EQ(d.count, cs[i].count);
        if (cs[i].present & FAB_CTL_F_KIND)
            CHECK_EQ(d.fault, cs[i].fault);
        CHECK_EQ(d.item_len, cs[i].item_len);
        if (d.item_len)
            CHECK_MEM(d.item, cs[i].item, d.item_len);
        CHECK_EQ(d.metadata_len, cs[i].metadata_len);
        if (d.metadata_len)
            CHECK_MEM(d.metadata, cs[i].metadata, d.metadata_len);
        CHECK_EQ(d.reason_len, cs[i].reason_len);
        if (d.reason_len)
            CHECK_MEM(d.reason, cs[i].reason, d.reason_len);
        /* Every strict prefix is refused as msgpack, never accepted. */
        for (size_t k = 0; k < b.len; k++) {
            CHECK(fab_control_decode(b.data, k, NULL, &d, &e) < 0);
            CHECK_EQ(e.msgpack, 1);
        }
        fab_buf_destroy(&b);
    }
    /* fault: "kind" (4 bytes) sorts before "count" (5). */
    fab_buf b;
    fab_buf_init(&b);
    CHECK_EQ(fab_control_encode(&cs[10], &b), FAB_OK);
    uint8_t want[64];
    size_t n = check_unhex("83a26f70a56661756c74a46b696e64b3756e737570706f727465642d70726f66696c65"
                           "a5636f756e7403", want);
    CHECK_EQ(b.len, n);
    CHECK_MEM(b.data, want, n);
    fab_buf_destroy(&b);
}

/* Each refusal: its code, whether msgpack or shape, the field and offset. */
static void test_refusals(void)
{
    static const struct {
        const char *hex;
        int code;
        int msgpack;
        const char *field;
        size_t offset;
        const char *in_msg;
    } cases[] = {
        {"", FAB_ETRUNCATED, 1, "", 0, "empty"},
        {"c1", FAB_EVERSION, 1, "", 1, "missing version byte"},
        {"c102", FAB_EVERSION, 1, "", 1, "unknown value encoding version 2"},
        {"c101", FAB_ETRUNCATED, 1, "", 2, "no value after the value encoding's prefix"},
        {"c1ff81", FAB_EVERSION, 1, "", 1, "unknown value encoding version 255 (this"},
        {"82a26f70", FAB_ETRUNCATED, 1, "", 0, "map declares 2"},
        {"82a26f70a5636c6f7365a178c1", FAB_EFORMAT, 1, "", 12, ""},      /* c1 inside */
        {"81a26f70a5636c6f7365c0", FAB_EFORMAT, 1, "", 10, "trailing"},  /* trailing byte */
        {"c0", FAB_ETYPE, 0, "", 0, "must be a map, got nil"},
        {"9100", FAB_ETYPE, 0, "", 0, "got an array"},
        {"80", FAB_EFORMAT, 0, "op", 0, "no 'op'"},
        {"810101", FAB_ETYPE, 0, "", 1, "field name 1 is not a str"},
        {"81a26f7001", FAB_EFORMAT, 0, "op", 4, "unknown control operation 1"},
        {"81a26f70a3626f6f", FAB_EFORMAT, 0, "op", 4, "unknown control operation 'boo'"},
        {"81a26f70a46e657874", FAB_EFORMAT, 0, "limit", 0, "missing its field 'limit'"},
        {"82a26f70a46e657874a56c696d697400", FAB_ERANGE, 0, "limit", 15, "positive int, got 0"},
        {"82a26f70a46e657874a56c696d6974ff", FAB_ERANGE, 0, "limit", 15, "got -1"},
        {"82a26f70a46e657874a56c696d6974c3", FAB_ETYPE, 0, "limit", 15, "got true"},
        {"82a26f70a46e657874a56c696d6974a131", FAB_ETYPE, 0, "limit", 15, "got '1'"},
        {"82a26f70a46e657874a56c696d6974cb3ff0000000000000", FAB_ETYPE, 0, "limit", 15,
         "a float"},
        {"83a26f70a46e657874a56c696d697401a17802", FAB_EFORMAT, 0, "x", 16,
         "control 'next' has an unknown field 'x'"},
        {"82a26f70a5636c6f7365a56c696d697401", FAB_EFORMAT, 0, "limit", 10,
         "'close' has an unknown field 'limit'"},
        {"82a26f70a663616e63656ca6726561736f6e01", FAB_ETYPE, 0, "reason", 18, "must be a str"},
        {"82a26f70a46f70656ea86d657461646174619100", FAB_ETYPE, 0, "metadata", 18,
         "must be a map"},
        {"83a26f70a56661756c74a46b696e64a46f6f7073a5636f756e7401", FAB_ERANGE, 0, "kind", 15,
         "one of drop"},
        {"82a26f70a56661756c74a46b696e64a464726f70", FAB_EFORMAT, 0, "count", 0,
         "missing its field 'count'"},
        {"82a26f70a5636c6f7365a26f70a5636c6f7365", FAB_EFORMAT, 0, "op", 10, "appears twice"},
        /* A non-str key is refused before anything else. */
        {"82a26f70a3626f6f0101", FAB_ETYPE, 0, "", 8, "not a str"},
        /* The value encoding: a tag before the payload map, before the op. */
        {"c101c7001181a26f70a5636c6f7365", FAB_ETYPE, 0, "", 2, "a tagged value"},
        {"c10181a26f70c70011a5636c6f7365", FAB_EFORMAT, 0, "op", 6, "a tagged value"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fab_control c;
        fab_control_error e;
        int rc = decode_hex(cases[i].hex, &c, &e);
        if (rc != cases[i].code || e.msgpack != cases[i].msgpack ||
            strcmp(e.field, cases[i].field) != 0 || e.offset != cases[i].offset ||
            strstr(e.msg, cases[i].in_msg) == NULL) {
            fprintf(stderr, "    case %zu (%s): rc %d msgpack %d field '%s' offset %zu: %s\n", i,
                    cases[i].hex, rc, e.msgpack, e.field, e.offset, e.msg);
            check_current_failed = 1;
        }
    }
}

/* A tagged item (the value encoding) keeps its tag in the item's span. */
static void test_tagged_item_span(void)
{
    fab_control c;
    fab_control_error e;
    /* c1 01 {"op": "push", "item": <tuple tag> [1]} */
    CHECK_EQ(decode_hex("c10182a26f70a470757368a46974656dc700119101", &c, &e), FAB_OK);
    CHECK_EQ(c.op, FAB_CTL_PUSH);
    CHECK_EQ(c.tagged, 1);
    CHECK_EQ(c.item_len, 5);
    CHECK_EQ(c.item[0], 0xc7);
    CHECK_EQ(c.item[4], 0x01);
}

static void test_limits_apply(void)
{
    uint8_t buf[64];
    size_t n = check_unhex("82a26f70a470757368a46974656d91919191c0", buf);
    fab_mp_limits lim;
    fab_mp_limits_default(&lim);
    lim.max_depth = 3;
    fab_control c;
    fab_control_error e;
    CHECK_EQ(fab_control_decode(buf, n, &lim, &c, &e), FAB_EDEPTH);
    CHECK_EQ(e.msgpack, 1);
    CHECK_EQ(e.offset, 16);
    lim.max_depth = 5;
    CHECK_EQ(fab_control_decode(buf, n, &lim, &c, &e), FAB_OK);
    CHECK_EQ(c.item_len, 5);
}

static void test_capabilities(void)
{
    static const char *const names[] = {"stream.open", "stream.read", "stream.push",
                                        "stream.cancel", "stream.cancel", "stream.stats",
                                        "stream.stats", "stream.stats"};
    const char *grants[3];
    size_t lens[3];
    const char *missing = "x";
    for (int op = 0; op < FAB_CTL_NOPS; op++) {
        CHECK(strcmp(fab_control_capability(op), names[op]) == 0);
        grants[0] = names[op];
        grants[1] = NULL;
        grants[2] = FAB_CTL_REMOTE_CAPABILITY;
        for (int i = 0; i < 3; i++)
            lens[i] = grants[i] ? strlen(grants[i]) : 0;
        CHECK_EQ(fab_control_check(op, grants, lens, 3, 1, &missing), FAB_OK);
        CHECK(missing == NULL);
        CHECK_EQ(fab_control_check(op, grants + 1, lens + 1, 2, 1, &missing), FAB_ENOTFOUND);
        CHECK(strcmp(missing, names[op]) == 0);
        CHECK_EQ(fab_control_check(op, grants, lens, 2, 1, &missing), FAB_ENOTFOUND);
        CHECK(strcmp(missing, FAB_CTL_REMOTE_CAPABILITY) == 0);
        CHECK_EQ(fab_control_check(op, grants, lens, 2, 0, &missing), FAB_OK);
        /* A prefix of the name is not the name. */
        lens[0] -= 1;
        CHECK_EQ(fab_control_check(op, grants, lens, 3, 1, &missing), FAB_ENOTFOUND);
    }
    CHECK_EQ(fab_control_check(FAB_CTL_NOPS, grants, lens, 3, 1, &missing), FAB_EINVAL);
    CHECK_EQ(fab_control_op_lookup("fault", 5), FAB_CTL_FAULT);
    CHECK_EQ(fab_control_op_lookup("faul", 4), -1);
    CHECK(fab_control_op_name(FAB_CTL_NOPS) == NULL);
    CHECK(fab_control_fault_name(FAB_CTL_NFAULTS) == NULL);
}

static void test_encoder_refuses_broken_structs(void)
{
    static const uint8_t item[] = {0x01};
    fab_control bad[] = {
        {.op = FAB_CTL_NOPS},
        {.op = FAB_CTL_NEXT},                                            /* no limit */
        {.op = FAB_CTL_NEXT, .present = FAB_CTL_F_LIMIT, .limit = 0},
        {.op = FAB_CTL_CLOSE, .present = FAB_CTL_F_ITEM, .item = item, .item_len = 1},
        {.op = FAB_CTL_PUSH, .present = FAB_CTL_F_ITEM},                 /* no bytes */
        {.op = FAB_CTL_FAULT, .present = FAB_CTL_F_KIND | FAB_CTL_F_COUNT, .fault = 9,
         .count = 1},
        {.op = FAB_CTL_CANCEL, .present = FAB_CTL_F_REASON, .reason = (const uint8_t *)"\xff",
         .reason_len = 1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        fab_buf b;
        fab_buf_init(&b);
        CHECK_EQ(fab_control_encode(&bad[i], &b), FAB_EINVAL);
        CHECK_EQ(b.len, 0);
        fab_buf_destroy(&b);
    }
}

/* ---- the node protocol's request open ------------------------------------------------ */

/* An open of the node protocol, with one thing changed by variant (0: none). */
enum {
    V_NONE, V_WANT, V_SCOPE, V_TIMEOUT_ZERO, V_TIMEOUT_NEG, V_TIMEOUT_BOOL, V_TIMEOUT_NAN,
    V_GRANTS_INT, V_GRANTS_MAP, V_VIA_17, V_DROP_VIA, V_EXTRA, V_DUP_WANT, V_ARGS_MAP,
    V_KWARGS_ARRAY, V_REQ_DROP, V_REQ_DUP, V_OP_NEXT, V_NO_META, V_META_ARRAY,
    V_TIMEOUT_FLOAT, V_TIMEOUT_INT, V_VIA_16, V_NVARIANTS
};

static void put_str(fab_enc *e, const char *s) { CHECK_EQ(fab_enc_str(e, s, strlen(s)), 0); }

static void build_open(fab_buf *b, int v)
{
    fab_enc e;
    fab_enc_init(&e, fab_buf_sink, b);
    if (v == V_OP_NEXT) {
        CHECK_EQ(fab_enc_map_header(&e, 2), 0);
        put_str(&e, "op");
        put_str(&e, "next");
        put_str(&e, "limit");
        CHECK_EQ(fab_enc_uint64(&e, 1), 0);
        return;
    }
    CHECK_EQ(fab_enc_map_header(&e, v == V_NO_META ? 1 : 2), 0);
    put_str(&e, "op");
    put_str(&e, "open");
    if (v == V_NO_META)
        return;
    put_str(&e, "metadata");
    if (v == V_META_ARRAY) {
        CHECK_EQ(fab_enc_array_header(&e, 0), 0);
        return;
    }
    int n = 7 + (v == V_EXTRA || v == V_DUP_WANT) - (v == V_DROP_VIA);
    CHECK_EQ(fab_enc_map_header(&e, (size_t)n), 0);
    put_str(&e, "want");
    put_str(&e, v == V_WANT ? "values" : "value");
    if (v == V_DUP_WANT) {
        put_str(&e, "want");
        put_str(&e, "stream");
    }
    put_str(&e, "scope");
    put_str(&e, v == V_SCOPE ? "HELD" : "compute");
    put_str(&e, "timeout");
    switch (v) {
    case V_TIMEOUT_ZERO: CHECK_EQ(fab_enc_uint64(&e, 0), 0); break;
    case V_TIMEOUT_NEG: CHECK_EQ(fab_enc_int64(&e, -1), 0); break;
    case V_TIMEOUT_BOOL: CHECK_EQ(fab_enc_bool(&e, 1), 0); break;
    case V_TIMEOUT_NAN: CHECK_EQ(fab_enc_double(&e, 0.0 / 0.0), 0); break;
    case V_TIMEOUT_FLOAT: CHECK_EQ(fab_enc_double(&e, 0.25), 0); break;
    case V_TIMEOUT_INT: CHECK_EQ(fab_enc_uint64(&e, 30), 0); break;
    default: CHECK_EQ(fab_enc_nil(&e), 0);
    }
    put_str(&e, "grants");
    CHECK_EQ(fab_enc_array_header(&e, 2), 0);
    put_str(&e, "a");
    if (v == V_GRANTS_INT)
        CHECK_EQ(fab_enc_uint64(&e, 1), 0);
    else if (v == V_GRANTS_MAP)
        CHECK_EQ(fab_enc_map_header(&e, 0), 0);
    else
        put_str(&e, "node.compute");
    if (v != V_DROP_VIA) {
        put_str(&e, "via");
        size_t k = v == V_VIA_17 ? 17 : v == V_VIA_16 ? 16 : 1;
        CHECK_EQ(fab_enc_array_header(&e, k), 0);
        for (size_t i = 0; i < k; i++)
            put_str(&e, "n1");
    }
    if (v == V_EXTRA) {
        put_str(&e, "extra");
        CHECK_EQ(fab_enc_nil(&e), 0);
    }
    put_str(&e, "key");
    uint8_t key[32] = {7};
    CHECK_EQ(fab_enc_bin(&e, key, sizeof(key)), 0);
    put_str(&e, "request");
    int rn = 13 - (v == V_REQ_DROP) + (v == V_REQ_DUP);
    CHECK_EQ(fab_enc_map_header(&e, (size_t)rn), 0);
    for (int i = 0; i < 13; i++) {
        const char *name = fab_open_request_field(i);
        if (v == V_REQ_DROP && i == 12)
            continue;
        put_str(&e, name);
        if (i == 1 && v != V_ARGS_MAP) { /* args: [1, [2, 3]] */
            CHECK_EQ(fab_enc_array_header(&e, 2), 0);
            CHECK_EQ(fab_enc_uint64(&e, 1), 0);
            CHECK_EQ(fab_enc_array_header(&e, 2), 0);
            CHECK_EQ(fab_enc_uint64(&e, 2), 0);
            CHECK_EQ(fab_enc_uint64(&e, 3), 0);
        } else if ((i == 2 && v != V_KWARGS_ARRAY) || (i == 1 && v == V_ARGS_MAP)) {
            CHECK_EQ(fab_enc_map_header(&e, 1), 0);
            put_str(&e, "k");
            put_str(&e, "v");
        } else if (i == 2) {
            CHECK_EQ(fab_enc_array_header(&e, 0), 0);
        } else {
            put_str(&e, name); /* any value: the node's checks read them */
        }
    }
    if (v == V_REQ_DUP) {
        put_str(&e, "op");
        put_str(&e, "x");
    }
}

static void test_open_read(void)
{
    for (int v = 0; v < V_NVARIANTS; v++) {
        fab_buf b;
        fab_buf_init(&b);
        build_open(&b, v);
        fab_control_open o;
        fab_control_error err;
        int rc = fab_control_open_read(b.data, b.len, NULL, &o, &err);
        int good = v == V_NONE || v == V_TIMEOUT_FLOAT || v == V_TIMEOUT_INT || v == V_VIA_16;
        if (good != (rc == 0))
            fprintf(stderr, "variant %d: rc %d (%s)\n", v, rc, err.msg);
        CHECK_EQ(rc == 0, good);
        if (!good) {
            CHECK(err.msg[0] != '\0');
            CHECK(err.offset <= b.len);
        } else {
            CHECK_EQ(o.want, 0);
            CHECK_EQ(o.scope, 1);
            for (int f = 0; f < FAB_OPEN_NFIELDS; f++)
                CHECK(o.meta[f].p >= b.data && o.meta[f].p + o.meta[f].len <= b.data + b.len);
            CHECK_EQ(o.meta[FAB_OPEN_KEY].len, 34);
            CHECK_EQ(o.meta[FAB_OPEN_KEY].p[0], 0xc4);
            CHECK_EQ(o.meta[FAB_OPEN_KEY].p[2], 7);
            CHECK_EQ(o.request[1].len, 5); /* [1, [2, 3]] */
            CHECK_EQ(o.request[1].p[0], 0x92);
            CHECK_EQ(o.request[12].len, 9); /* "deadline" */
            CHECK_MEM(o.request[12].p + 1, "deadline", 8);
            CHECK(o.meta[FAB_OPEN_REQUEST].p < o.request[0].p);
            /* every prefix is refused (never read past the end) */
            for (size_t k = 0; k < b.len; k++)
                CHECK(fab_control_open_read(b.data, k, NULL, &o, NULL) < 0);
        }
        fab_buf_destroy(&b);
    }
    CHECK(strcmp(fab_open_field(FAB_OPEN_VIA), "via") == 0);
    CHECK(fab_open_field(FAB_OPEN_NFIELDS) == NULL);
    CHECK(fab_open_request_field(FAB_OPEN_REQUEST_NFIELDS) == NULL);
    /* a payload in the value encoding is not read here */
    fab_control_open o;
    CHECK_EQ(fab_control_open_read("\xc1\x01\x81\xa2op\xa4open", 11, NULL, &o, NULL),
             FAB_EVERSION);
}

/* The first place of key (a str's encoded bytes) in b, renamed to other (as long). */
static size_t rename_key(fab_buf *b, const char *key, const char *other)
{
    size_t n = strlen(key);
    for (size_t i = 0; i + n <= b->len; i++)
        if (memcmp(b->data + i, key, n) == 0) {
            memcpy(b->data + i, other, n);
            return i;
        }
    CHECK(0);
    return 0;
}

/* A key unknown or repeated where the count of keys is right: refused at the
 * key, for each of the open's three maps (the top, metadata, request). */
#define META_KEY "open metadata has a field that is unknown or repeated"
#define REQUEST_KEY "the request has a field that is unknown or repeated"
static void test_open_read_keys(void)
{
    static const struct {
        const char *key, *other, *field, *msg;
    } cases[] = {
        {"\xa8metadata", "\xa8metadatx", "", "a request open is a map {op, metadata}"},
        {"\xa2op", "\xa2ox", "", "a request open is a map {op, metadata}"},
        {"\xa3via", "\xa3vib", "metadata", META_KEY},
        {"\xa3key", "\xa3via", "metadata", META_KEY},
        {"\xa4mode", "\xa4" "args", "request", REQUEST_KEY},
        {"\xa4mode", "\xa4mod_", "request", REQUEST_KEY},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fab_buf b;
        fab_buf_init(&b);
        build_open(&b, V_NONE);
        size_t at = rename_key(&b, cases[i].key, cases[i].other);
        fab_control_open o;
        fab_control_error err;
        CHECK_EQ(fab_control_open_read(b.data, b.len, NULL, &o, &err), FAB_EFORMAT);
        CHECK_EQ(err.msgpack, 0);
        CHECK_EQ(err.offset, at);
        CHECK(strcmp(err.field, cases[i].field) == 0);
        CHECK(strcmp(err.msg, cases[i].msg) == 0);
        CHECK_EQ(o.want, -1);
        fab_buf_destroy(&b);
    }
}

int main(void)
{
    static const check_case cases[] = {
        {"golden_next", test_golden_next},
        {"round_trip_every_op", test_round_trip_every_op},
        {"refusals", test_refusals},
        {"tagged_item_span", test_tagged_item_span},
        {"limits_apply", test_limits_apply},
        {"capabilities", test_capabilities},
        {"encoder_refuses_broken_structs", test_encoder_refuses_broken_structs},
        {"open_read", test_open_read},
        {"open_read_keys", test_open_read_keys},
        {NULL, NULL},
    };
    return check_run("control", cases);
}
