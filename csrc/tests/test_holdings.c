/* The holding index's fact store: interning, grow-only facts, holders of a
 * key, merge, and snapshots (golden bytes, round trip, every truncation and
 * refusal leaving the store empty). */
#include "check.h"
#include "fabric/holdings.h"

static void key_of(uint32_t i, uint8_t out[32])
{
    /* Distinct keys, spread like digests would not be: a worst case for
     * any hash that looked only at the first bytes. */
    memset(out, 0, 32);
    out[28] = (uint8_t)(i >> 24);
    out[29] = (uint8_t)(i >> 16);
    out[30] = (uint8_t)(i >> 8);
    out[31] = (uint8_t)i;
}

static void test_intern(void)
{
    fab_holdings *h;
    CHECK_EQ(fab_holdings_new(&h), 0);
    uint32_t a, b, a2;
    CHECK_EQ(fab_holdings_intern(h, "a", 1, &a), 0);
    CHECK_EQ(fab_holdings_intern(h, "bb", 2, &b), 0);
    CHECK_EQ(fab_holdings_intern(h, "a", 1, &a2), 0);
    CHECK_EQ(a, a2);
    CHECK(a != b);
    CHECK_EQ(fab_holdings_intern(h, "", 0, &a2), FAB_EINVAL);
    CHECK_EQ(fab_holdings_holder_id(h, "zz", 2, &a2), FAB_ENOTFOUND);
    size_t len;
    const char *name = fab_holdings_holder_name(h, b, &len);
    CHECK(name != NULL && len == 2 && memcmp(name, "bb", 2) == 0);
    CHECK(fab_holdings_holder_name(h, 99, &len) == NULL);
    /* many holders: the name table grows */
    char buf[16];
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(buf, sizeof buf, "node-%d", i);
        uint32_t id;
        CHECK_EQ(fab_holdings_intern(h, buf, (size_t)n, &id), 0);
        CHECK_EQ(id, (uint32_t)i + 2);
    }
    CHECK_EQ(fab_holdings_nholders(h), 1002);
    CHECK_EQ(fab_holdings_holder_id(h, "node-500", 8, &a2), 0);
    CHECK_EQ(a2, 502);
    fab_holdings_free(h);
}

static void test_facts(void)
{
    fab_holdings *h;
    CHECK_EQ(fab_holdings_new(&h), 0);
    uint32_t a, b;
    fab_holdings_intern(h, "a", 1, &a);
    fab_holdings_intern(h, "b", 1, &b);
    uint8_t k[32];
    CHECK_EQ(fab_holdings_add(h, k, 7), FAB_EINVAL);
    for (uint32_t i = 0; i < 5000; i++) {
        key_of(i, k);
        CHECK_EQ(fab_holdings_add(h, k, a), 1);
    }
    for (uint32_t i = 0; i < 5000; i += 2) {
        key_of(i, k);
        CHECK_EQ(fab_holdings_add(h, k, b), 1);
        CHECK_EQ(fab_holdings_add(h, k, a), 0);
    }
    CHECK_EQ(fab_holdings_nfacts(h), 7500);
    CHECK_EQ(fab_holdings_nkeys(h), 5000);
    key_of(4, k);
    uint32_t out[4];
    CHECK_EQ(fab_holdings_holders_of(h, k, out, 4), 2);
    CHECK_EQ(out[0], b); /* newest first */
    CHECK_EQ(out[1], a);
    CHECK_EQ(fab_holdings_holders_of(h, k, out, 1), 2);
    CHECK(fab_holdings_has(h, k, a) && fab_holdings_has(h, k, b));
    key_of(5, k);
    CHECK(fab_holdings_has(h, k, a) && !fab_holdings_has(h, k, b));
    key_of(999999, k);
    CHECK_EQ(fab_holdings_holders_of(h, k, out, 4), 0);
    CHECK(!fab_holdings_has(h, k, a));
    const uint8_t *fk;
    uint32_t holder;
    CHECK_EQ(fab_holdings_fact(h, 5000, &fk, &holder), 0);
    key_of(0, k);
    CHECK_MEM(fk, k, 32);
    CHECK_EQ(holder, b);
    CHECK_EQ(fab_holdings_fact(h, 7500, &fk, &holder), FAB_ERANGE);
    CHECK(fab_holdings_key(h, 4999) != NULL && fab_holdings_key(h, 5000) == NULL);
    CHECK(fab_holdings_memory(h) > 7500 * 12);
    fab_holdings_free(h);
}

static void test_add_many_and_merge(void)
{
    fab_holdings *x, *y;
    CHECK_EQ(fab_holdings_new(&x), 0);
    CHECK_EQ(fab_holdings_new(&y), 0);
    uint32_t xa, yb, ya;
    fab_holdings_intern(x, "a", 1, &xa);
    fab_holdings_intern(y, "b", 1, &yb);
    fab_holdings_intern(y, "a", 1, &ya);
    uint8_t keys[100 * 32];
    for (uint32_t i = 0; i < 100; i++)
        key_of(i, keys + 32 * i);
    size_t added;
    CHECK_EQ(fab_holdings_add_many(x, keys, 100, xa, &added), 0);
    CHECK_EQ(added, 100);
    CHECK_EQ(fab_holdings_add_many(x, keys, 50, xa, &added), 0);
    CHECK_EQ(added, 0);
    CHECK_EQ(fab_holdings_add_many(x, keys, 1, 5, &added), FAB_EINVAL);
    CHECK_EQ(fab_holdings_add_many(y, keys + 50 * 32, 50, yb, &added), 0);
    CHECK_EQ(fab_holdings_add_many(y, keys, 10, ya, &added), 0); /* known to x already */
    CHECK_EQ(fab_holdings_merge(x, y, &added), 0);
    CHECK_EQ(added, 50);
    CHECK_EQ(fab_holdings_merge(x, y, &added), 0);
    CHECK_EQ(added, 0);
    CHECK_EQ(fab_holdings_merge(x, x, &added), 0);
    CHECK_EQ(added, 0);
    CHECK_EQ(fab_holdings_nfacts(x), 150);
    uint32_t xb;
    CHECK_EQ(fab_holdings_holder_id(x, "b", 1, &xb), 0);
    CHECK(fab_holdings_has(x, keys + 60 * 32, xb));
    fab_holdings_free(x);
    fab_holdings_free(y);
}

static const uint8_t GOLDEN[] =
    "\x83\xa4spec\xb4" "fabric.holding-index\xa5" "facts\x91\x92\xc4\x20"
    "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
    "\xa1" "a\xa7version\x01";

static uint8_t *snap(const fab_holdings *h, size_t *len)
{
    *len = fab_holdings_snapshot_size(h);
    uint8_t *buf = malloc(*len);
    fab_holdings_snapshot_write(h, buf);
    return buf;
}

static void test_snapshot_golden(void)
{
    fab_holdings *h;
    fab_holdings_new(&h);
    uint32_t a;
    fab_holdings_intern(h, "a", 1, &a);
    uint8_t k[32] = {0};
    fab_holdings_add(h, k, a);
    size_t len;
    uint8_t *buf = snap(h, &len);
    CHECK_EQ(len, sizeof(GOLDEN) - 1);
    CHECK_MEM(buf, GOLDEN, len);
    free(buf);
    fab_holdings_free(h);
}

static void test_snapshot_round_trip_and_refusals(void)
{
    fab_holdings *h;
    fab_holdings_new(&h);
    /* names of every str header length: fixstr, str8, str16 */
    static char longname[300];
    memset(longname, 'x', sizeof longname);
    uint32_t ids[3];
    fab_holdings_intern(h, "n", 1, &ids[0]);
    fab_holdings_intern(h, longname, 40, &ids[1]);
    fab_holdings_intern(h, longname, 300, &ids[2]);
    uint8_t k[32];
    for (uint32_t i = 0; i < 70000; i++) { /* an array32 header */
        key_of(i % 30000, k);
        fab_holdings_add(h, k, ids[i % 3]);
    }
    size_t len;
    uint8_t *buf = snap(h, &len);
    fab_holdings *back;
    fab_holdings_new(&back);
    CHECK_EQ(fab_holdings_restore(back, buf, len), 0);
    CHECK_EQ(fab_holdings_nfacts(back), fab_holdings_nfacts(h));
    CHECK_EQ(fab_holdings_nkeys(back), fab_holdings_nkeys(h));
    size_t len2;
    uint8_t *buf2 = snap(back, &len2);
    CHECK_EQ(len2, len);
    CHECK_MEM(buf2, buf, len);
    free(buf2);
    CHECK_EQ(fab_holdings_restore(back, buf, len), FAB_ESTATE); /* not empty */
    fab_holdings_free(back);

    /* Every truncation is refused and leaves the store empty. */
    fab_holdings *t;
    fab_holdings_new(&t);
    for (size_t cut = 0; cut < len; cut += (cut < 200 ? 1 : 997)) {
        int rc = fab_holdings_restore(t, buf, cut);
        CHECK(rc == FAB_ETRUNCATED || rc == FAB_EFORMAT);
        CHECK_EQ(fab_holdings_nfacts(t), 0);
        CHECK_EQ(fab_holdings_nholders(t), 0);
    }
    /* Trailing bytes, another version, a bad fact, an empty holder. */
    uint8_t *more = malloc(len + 1);
    memcpy(more, buf, len);
    more[len] = 0;
    CHECK_EQ(fab_holdings_restore(t, more, len + 1), FAB_EFORMAT);
    more[len - 1] = 2;
    CHECK_EQ(fab_holdings_restore(t, more, len), FAB_EFORMAT);
    free(more);
    uint8_t g[sizeof(GOLDEN)];
    memcpy(g, GOLDEN, sizeof g);
    g[sizeof(GOLDEN) - 1 - 11] = 0xa0; /* the holder "a" made empty */
    CHECK_EQ(fab_holdings_restore(t, g, sizeof(GOLDEN) - 1), FAB_EINVAL);
    memcpy(g, GOLDEN, sizeof g);
    g[36] = 0x1f; /* key length 31 */
    CHECK_EQ(fab_holdings_restore(t, g, sizeof(GOLDEN) - 1), FAB_EFORMAT);
    /* A count far beyond the input is refused before any allocation. */
    uint8_t huge[] = "\x83\xa4spec\xb4" "fabric.holding-index\xa5" "facts\xdd\xff\xff\xff\xf0";
    CHECK_EQ(fab_holdings_restore(t, huge, sizeof(huge) - 1), FAB_ETRUNCATED);
    CHECK_EQ(fab_holdings_nfacts(t), 0);
    free(buf);
    fab_holdings_free(t);
    fab_holdings_free(h);
}

/* Regression: a snapshot naming one fact twice was loaded with the copy
 * dropped, so every later fact's version was one less than the writer's. */
static void test_restore_refuses_a_duplicated_fact(void)
{
    fab_holdings *h;
    fab_holdings_new(&h);
    uint32_t a;
    fab_holdings_intern(h, "a", 1, &a);
    uint8_t k[32];
    for (uint32_t i = 0; i < 3; i++) {
        key_of(i, k);
        fab_holdings_add(h, k, a);
    }
    size_t len;
    uint8_t *buf = snap(h, &len);
    /* Each fact is 92 c4 20 <key> a1 'a'; the 9-byte tail follows the
     * last. Fact 1 written again over fact 2: facts 0, 1, 1. */
    const size_t fact_len = 3 + 32 + 2;
    const uint8_t *facts = buf + (len - 9 - 3 * fact_len);
    CHECK_EQ(facts[-1], 0x93);
    uint8_t *dup = malloc(len);
    memcpy(dup, buf, len);
    memcpy(dup + (facts - buf) + 2 * fact_len, facts + fact_len, fact_len);
    fab_holdings *t;
    fab_holdings_new(&t);
    CHECK_EQ(fab_holdings_restore(t, dup, len), FAB_EDUPKEY);
    CHECK_EQ(fab_holdings_nfacts(t), 0); /* all or nothing */
    CHECK_EQ(fab_holdings_nkeys(t), 0);
    CHECK_EQ(fab_holdings_nholders(t), 0);
    /* The emptied store still takes the original. */
    CHECK_EQ(fab_holdings_restore(t, buf, len), 0);
    CHECK_EQ(fab_holdings_nfacts(t), 3);
    free(dup);
    free(buf);
    fab_holdings_free(t);
    fab_holdings_free(h);
}

/* A store grown through many rehashes finds each key it holds and none it
 * does not. A probe compares a key only when its slot's tag (a byte of the
 * hash) matches: with 300,000 keys, thousands of probes meet a slot whose
 * tag matches and whose key does not, and must walk on past it. */
static void test_many_keys_tags(void)
{
    fab_holdings *h;
    CHECK_EQ(fab_holdings_new(&h), 0);
    uint32_t a;
    CHECK_EQ(fab_holdings_intern(h, "a", 1, &a), 0);
    uint8_t k[32];
    const uint32_t n = 300000;
    for (uint32_t i = 0; i < n; i++) {
        key_of(i, k);
        CHECK_EQ(fab_holdings_add(h, k, a), 1);
    }
    CHECK_EQ(fab_holdings_nkeys(h), n);
    size_t found = 0, absent = 0;
    for (uint32_t i = 0; i < n; i++) {
        key_of(i, k);
        found += (size_t)fab_holdings_has(h, k, a);
        CHECK_EQ(fab_holdings_add(h, k, a), 0); /* already there: no second key */
        k[0] = 1;                               /* a key it never saw */
        absent += (size_t)!fab_holdings_has(h, k, a);
        uint32_t out[1];
        CHECK_EQ(fab_holdings_holders_of(h, k, out, 1), 0);
    }
    CHECK_EQ(found, n);
    CHECK_EQ(absent, n);
    CHECK_EQ(fab_holdings_nkeys(h), n);
    CHECK_EQ(fab_holdings_nfacts(h), n);
    fab_holdings_free(h);
}

int main(void)
{
    static const check_case cases[] = {
        {"intern", test_intern},
        {"facts", test_facts},
        {"add_many_and_merge", test_add_many_and_merge},
        {"snapshot_golden", test_snapshot_golden},
        {"snapshot_round_trip_and_refusals", test_snapshot_round_trip_and_refusals},
        {"restore_refuses_a_duplicated_fact", test_restore_refuses_a_duplicated_fact},
        {"many_keys_tags", test_many_keys_tags},
        {NULL, NULL},
    };
    return check_run("holdings", cases);
}
