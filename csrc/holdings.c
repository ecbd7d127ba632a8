/*
 * The holding index's fact store (see fabric/holdings.h).
 */
#include "fabric/holdings.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fabric/common.h"

#define KLEN FAB_HOLDINGS_KEY_LEN
#define MIN_SLOTS 64u
#define MIN_ITEMS 1024u
#define NONE 0xffffffffu

typedef struct fact {
    uint32_t key;    /* index into keys */
    uint32_t holder; /* holder id */
    uint32_t next;   /* the previous fact of the same key, or NONE */
} fact;

typedef struct holder {
    char *name;
    uint32_t len;
} holder;

struct fab_holdings {
    uint64_t seed;
    /* keys: each distinct key once, with its newest fact */
    uint8_t (*keys)[KLEN];
    uint32_t *head;
    size_t nkeys, kcap;
    uint32_t *slots; /* key index + 1; 0 = empty */
    /* The top byte of the hash of the key in each used slot: a probe reads
     * a key (a cache miss in a large store) only when its byte matches, so
     * adding a new key reads ~none of the keys on its probe chain. */
    uint8_t *tags;
    size_t mask; /* slot count - 1 (a power of two), or 0 before the first key */
    /* the log of facts, in learned order */
    fact *log;
    size_t nfacts, fcap;
    /* holders */
    holder *holders;
    size_t nholders, hcap;
    uint32_t *hslots; /* holder id + 1; 0 = empty */
    size_t hmask;
};

static uint64_t key_hash(const fab_holdings *h, const uint8_t *key)
{
    /* Keys are digests, but a peer may gossip any 32 bytes: every byte
     * counts, and the seed keeps crafted keys from sharing a probe chain
     * (see fab_lindex). */
    uint64_t w[4];
    memcpy(w, key, 32);
    return fab__mix64(fab__mix64(fab__mix64(fab__mix64(w[0] ^ h->seed) ^ w[1]) ^ w[2]) ^ w[3]);
}

static uint64_t name_hash(const fab_holdings *h, const char *s, size_t len)
{
    uint64_t x = h->seed ^ 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++)
        x = (x ^ (uint8_t)s[i]) * 0x100000001b3ULL;
    return fab__mix64(x);
}

int fab_holdings_new(fab_holdings **out)
{
    fab_holdings *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return FAB_ENOMEM;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    h->seed = fab__mix64((uint64_t)(uintptr_t)h ^ ((uint64_t)ts.tv_nsec << 20) ^
                         (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40));
    *out = h;
    return 0;
}

static void clear_all(fab_holdings *h)
{
    for (size_t i = 0; i < h->nholders; i++)
        free(h->holders[i].name);
    free(h->holders);
    free(h->hslots);
    free(h->keys);
    free(h->head);
    free(h->slots);
    free(h->tags);
    free(h->log);
    uint64_t seed = h->seed;
    memset(h, 0, sizeof(*h));
    h->seed = seed;
}

void fab_holdings_free(fab_holdings *h)
{
    if (h == NULL)
        return;
    clear_all(h);
    free(h);
}

/* Grows an array to hold at least need items (doubling). */
static int grow_array(void **p, size_t *cap, size_t need, size_t item)
{
    if (need <= *cap)
        return 0;
    if (need > FAB_HOLDINGS_MAX_COUNT)
        return FAB_EOVERFLOW;
    size_t c = *cap ? *cap : MIN_ITEMS;
    while (c < need)
        c *= 2;
    if (c > SIZE_MAX / item)
        return FAB_EOVERFLOW;
    void *n = realloc(*p, c * item);
    if (n == NULL)
        return FAB_ENOMEM;
    *p = n;
    *cap = c;
    return 0;
}

/* -- holders ------------------------------------------------------------- */

static uint32_t *holder_slot(const fab_holdings *h, const char *name, size_t len)
{
    for (size_t i = name_hash(h, name, len) & h->hmask;; i = (i + 1) & h->hmask) {
        uint32_t *s = &h->hslots[i];
        if (*s == 0)
            return s;
        const holder *o = &h->holders[*s - 1];
        if (o->len == len && memcmp(o->name, name, len) == 0)
            return s;
    }
}

int fab_holdings_holder_id(const fab_holdings *h, const char *name, size_t len, uint32_t *id)
{
    if (h->hslots == NULL)
        return FAB_ENOTFOUND;
    uint32_t *s = holder_slot(h, name, len);
    if (*s == 0)
        return FAB_ENOTFOUND;
    *id = *s - 1;
    return 0;
}

static int grow_hslots(fab_holdings *h)
{
    size_t n = h->hslots ? (h->hmask + 1) * 2 : MIN_SLOTS;
    uint32_t *slots = calloc(n, sizeof(uint32_t));
    if (slots == NULL)
        return FAB_ENOMEM;
    uint32_t *old = h->hslots;
    h->hslots = slots;
    h->hmask = n - 1;
    for (size_t i = 0; i < h->nholders; i++)
        *holder_slot(h, h->holders[i].name, h->holders[i].len) = (uint32_t)i + 1;
    free(old);
    return 0;
}

int fab_holdings_intern(fab_holdings *h, const char *name, size_t len, uint32_t *id)
{
    if (len == 0 || len > FAB_HOLDINGS_MAX_NAME)
        return FAB_EINVAL;
    if (fab_holdings_holder_id(h, name, len, id) == 0)
        return 0;
    int rc;
    if (h->hslots == NULL || (h->nholders + 1) * 4 > (h->hmask + 1) * 3)
        if ((rc = grow_hslots(h)) < 0)
            return rc;
    if ((rc = grow_array((void **)&h->holders, &h->hcap, h->nholders + 1, sizeof(holder))) < 0)
        return rc;
    char *copy = malloc(len);
    if (copy == NULL)
        return FAB_ENOMEM;
    memcpy(copy, name, len);
    h->holders[h->nholders] = (holder){copy, (uint32_t)len};
    *holder_slot(h, name, len) = (uint32_t)h->nholders + 1;
    *id = (uint32_t)h->nholders++;
    return 0;
}

const char *fab_holdings_holder_name(const fab_holdings *h, uint32_t id, size_t *len)
{
    if (id >= h->nholders)
        return NULL;
    *len = h->holders[id].len;
    return h->holders[id].name;
}

/* -- keys and facts --------------------------------------------------------- */

/* The slot of key (an index into slots and tags): holding its index + 1,
 * or the empty slot it would take; *tag is the byte its slot's tag holds. */
static size_t key_slot(const fab_holdings *h, const uint8_t *key, uint8_t *tag)
{
    uint64_t x = key_hash(h, key);
    uint8_t t = (uint8_t)(x >> 56); /* (the slot's index is from the low bits) */
    *tag = t;
    for (size_t i = x & h->mask;; i = (i + 1) & h->mask) {
        uint32_t s = h->slots[i];
        if (s == 0 || (h->tags[i] == t && memcmp(h->keys[s - 1], key, KLEN) == 0))
            return i;
    }
}

static int rehash(fab_holdings *h, size_t nkeys)
{
    size_t n = MIN_SLOTS;
    while (n / 4 * 3 < nkeys) {
        if (n > SIZE_MAX / 2 / sizeof(uint32_t))
            return FAB_EOVERFLOW;
        n *= 2;
    }
    if (h->slots != NULL && n <= h->mask + 1)
        return 0;
    uint32_t *slots = calloc(n, sizeof(uint32_t));
    uint8_t *tags = malloc(n); /* (read only where a slot is used) */
    if (slots == NULL || tags == NULL) {
        free(slots);
        free(tags);
        return FAB_ENOMEM;
    }
    free(h->slots);
    free(h->tags);
    h->slots = slots;
    h->tags = tags;
    h->mask = n - 1;
    for (size_t i = 0; i < h->nkeys; i++) {
        uint8_t tag;
        size_t j = key_slot(h, h->keys[i], &tag);
        slots[j] = (uint32_t)i + 1;
        tags[j] = tag;
    }
    return 0;
}

int fab_holdings_reserve(fab_holdings *h, size_t nkeys, size_t nfacts)
{
    if (nkeys > FAB_HOLDINGS_MAX_COUNT - h->nkeys || nfacts > FAB_HOLDINGS_MAX_COUNT - h->nfacts)
        return FAB_EOVERFLOW;
    size_t kneed = h->nkeys + nkeys;
    int rc;
    if ((rc = rehash(h, kneed)) < 0)
        return rc;
    size_t kcap = h->kcap;
    if ((rc = grow_array((void **)&h->keys, &kcap, kneed, KLEN)) < 0)
        return rc;
    size_t kcap2 = h->kcap;
    if ((rc = grow_array((void **)&h->head, &kcap2, kneed, sizeof(uint32_t))) < 0)
        return rc;
    /* Both arrays now hold at least kneed (the first may be larger if the
     * second failed earlier: keep the smaller as the shared capacity). */
    h->kcap = kcap < kcap2 ? kcap : kcap2;
    return grow_array((void **)&h->log, &h->fcap, h->nfacts + nfacts, sizeof(fact));
}

/* Adds with room already made: never fails. */
static int add_reserved(fab_holdings *h, const uint8_t *key, uint32_t holder)
{
    uint8_t tag;
    size_t i = key_slot(h, key, &tag);
    uint32_t *s = &h->slots[i];
    uint32_t k;
    if (*s == 0) {
        k = (uint32_t)h->nkeys++;
        memcpy(h->keys[k], key, KLEN);
        h->head[k] = NONE;
        *s = k + 1;
        h->tags[i] = tag;
    } else {
        k = *s - 1;
        for (uint32_t f = h->head[k]; f != NONE; f = h->log[f].next)
            if (h->log[f].holder == holder)
                return 0;
    }
    uint32_t f = (uint32_t)h->nfacts++;
    h->log[f] = (fact){k, holder, h->head[k]};
    h->head[k] = f;
    return 1;
}

static int room_for_one(fab_holdings *h)
{
    if (h->nkeys < h->kcap && h->nfacts < h->fcap && h->slots != NULL &&
        (h->nkeys + 1) * 4 <= (h->mask + 1) * 3)
        return 0;
    return fab_holdings_reserve(h, 1, 1);
}

int fab_holdings_add(fab_holdings *h, const uint8_t key[KLEN], uint32_t holder)
{
    if (holder >= h->nholders)
        return FAB_EINVAL;
    int rc = room_for_one(h);
    if (rc < 0)
        return rc;
    return add_reserved(h, key, holder);
}

int fab_holdings_add_many(fab_holdings *h, const uint8_t *keys, size_t n, uint32_t holder,
                          size_t *added)
{
    *added = 0;
    if (holder >= h->nholders)
        return FAB_EINVAL;
    int rc = fab_holdings_reserve(h, n, n);
    if (rc < 0)
        return rc;
    size_t a = 0;
    for (size_t i = 0; i < n; i++)
        a += (size_t)add_reserved(h, keys + i * KLEN, holder);
    *added = a;
    return 0;
}

int fab_holdings_has(const fab_holdings *h, const uint8_t key[KLEN], uint32_t holder)
{
    if (h->slots == NULL)
        return 0;
    uint8_t tag;
    uint32_t s = h->slots[key_slot(h, key, &tag)];
    if (s == 0)
        return 0;
    for (uint32_t f = h->head[s - 1]; f != NONE; f = h->log[f].next)
        if (h->log[f].holder == holder)
            return 1;
    return 0;
}

size_t fab_holdings_holders_of(const fab_holdings *h, const uint8_t key[KLEN], uint32_t *out,
                               size_t cap)
{
    if (h->slots == NULL)
        return 0;
    uint8_t tag;
    uint32_t s = h->slots[key_slot(h, key, &tag)];
    if (s == 0)
        return 0;
    size_t n = 0;
    for (uint32_t f = h->head[s - 1]; f != NONE; f = h->log[f].next, n++)
        if (n < cap)
            out[n] = h->log[f].holder;
    return n;
}

size_t fab_holdings_nfacts(const fab_holdings *h) { return h->nfacts; }
size_t fab_holdings_nkeys(const fab_holdings *h) { return h->nkeys; }
size_t fab_holdings_nholders(const fab_holdings *h) { return h->nholders; }

int fab_holdings_fact(const fab_holdings *h, size_t i, const uint8_t **key, uint32_t *holder)
{
    if (i >= h->nfacts)
        return FAB_ERANGE;
    *key = h->keys[h->log[i].key];
    *holder = h->log[i].holder;
    return 0;
}

const uint8_t *fab_holdings_key(const fab_holdings *h, size_t i)
{
    return i < h->nkeys ? h->keys[i] : NULL;
}

int fab_holdings_merge(fab_holdings *dst, const fab_holdings *src, size_t *added)
{
    *added = 0;
    if (dst == src || src->nfacts == 0)
        return 0;
    /* src's holder ids in dst's numbering */
    uint32_t *map = malloc(src->nholders * sizeof(uint32_t));
    if (map == NULL)
        return FAB_ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < src->nholders && rc == 0; i++)
        rc = fab_holdings_intern(dst, src->holders[i].name, src->holders[i].len, &map[i]);
    if (rc == 0)
        rc = fab_holdings_reserve(dst, src->nkeys, src->nfacts);
    if (rc == 0) {
        size_t a = 0;
        for (size_t i = 0; i < src->nfacts; i++)
            a += (size_t)add_reserved(dst, src->keys[src->log[i].key], map[src->log[i].holder]);
        *added = a;
    }
    free(map);
    return rc;
}

size_t fab_holdings_memory(const fab_holdings *h)
{
    size_t m = sizeof(*h);
    m += h->kcap * (KLEN + sizeof(uint32_t));
    m += h->slots ? (h->mask + 1) * (sizeof(uint32_t) + 1) : 0; /* slots and tags */
    m += h->fcap * sizeof(fact);
    m += h->hcap * sizeof(holder);
    m += h->hslots ? (h->hmask + 1) * sizeof(uint32_t) : 0;
    for (size_t i = 0; i < h->nholders; i++)
        m += h->holders[i].len;
    return m;
}

/* -- snapshots --------------------------------------------------------------- */

/* The canonical msgpack document, by its fixed parts:
 *   83 a4"spec" b4"fabric.holding-index" a5"facts" <array n>
 *      n x (92 c4 20 <32 bytes> <str holder>)
 *   a7"version" 01                                                          */
static const uint8_t SNAP_HEAD[] = "\x83\xa4spec\xb4" "fabric.holding-index\xa5" "facts";
#define SNAP_HEAD_LEN (sizeof(SNAP_HEAD) - 1)
static const uint8_t SNAP_TAIL[] = "\xa7version\x01";
#define SNAP_TAIL_LEN (sizeof(SNAP_TAIL) - 1)

static size_t str_header_len(size_t len)
{
    return len < 32 ? 1 : len < 256 ? 2 : 3;
}

static size_t array_header_len(size_t n)
{
    return n < 16 ? 1 : n < 65536 ? 3 : 5;
}

size_t fab_holdings_snapshot_size(const fab_holdings *h)
{
    /* per fact: 92 c4 20 + key + the holder's str */
    size_t total = SNAP_HEAD_LEN + array_header_len(h->nfacts) + SNAP_TAIL_LEN;
    size_t *per = NULL;
    /* Sum by holder: count facts per holder without an allocation per fact. */
    if (h->nholders) {
        per = calloc(h->nholders, sizeof(size_t));
        if (per == NULL)
            return 0;
        for (size_t i = 0; i < h->nfacts; i++)
            per[h->log[i].holder]++;
    }
    for (size_t i = 0; i < h->nholders; i++) {
        size_t one = 3 + KLEN + str_header_len(h->holders[i].len) + h->holders[i].len;
        if (per[i] && one > (SIZE_MAX - total) / per[i]) {
            free(per);
            return 0;
        }
        total += one * per[i];
    }
    free(per);
    return total;
}

static uint8_t *put_str(uint8_t *p, const char *s, size_t len)
{
    if (len < 32) {
        *p++ = (uint8_t)(0xa0 | len);
    } else if (len < 256) {
        *p++ = 0xd9;
        *p++ = (uint8_t)len;
    } else {
        *p++ = 0xda;
        fab_store_be16(p, (uint16_t)len);
        p += 2;
    }
    memcpy(p, s, len);
    return p + len;
}

void fab_holdings_snapshot_write(const fab_holdings *h, uint8_t *buf)
{
    uint8_t *p = buf;
    memcpy(p, SNAP_HEAD, SNAP_HEAD_LEN);
    p += SNAP_HEAD_LEN;
    size_t n = h->nfacts;
    if (n < 16) {
        *p++ = (uint8_t)(0x90 | n);
    } else if (n < 65536) {
        *p++ = 0xdc;
        fab_store_be16(p, (uint16_t)n);
        p += 2;
    } else {
        *p++ = 0xdd;
        fab_store_be32(p, (uint32_t)n);
        p += 4;
    }
    for (size_t i = 0; i < n; i++) {
        const fact *f = &h->log[i];
        const holder *o = &h->holders[f->holder];
        *p++ = 0x92;
        *p++ = 0xc4;
        *p++ = KLEN;
        memcpy(p, h->keys[f->key], KLEN);
        p += KLEN;
        p = put_str(p, o->name, o->len);
    }
    memcpy(p, SNAP_TAIL, SNAP_TAIL_LEN);
}

typedef struct reader {
    const uint8_t *p, *end;
} reader;

static int need(const reader *r, size_t n)
{
    return (size_t)(r->end - r->p) >= n ? 0 : FAB_ETRUNCATED;
}

static int read_restore(fab_holdings *h, reader *r)
{
    int rc;
    if ((rc = need(r, SNAP_HEAD_LEN + 1)) < 0)
        return rc;
    if (memcmp(r->p, SNAP_HEAD, SNAP_HEAD_LEN) != 0)
        return FAB_EFORMAT;
    r->p += SNAP_HEAD_LEN;
    uint8_t t = *r->p++;
    size_t n;
    if ((t & 0xf0) == 0x90) {
        n = t & 0x0f;
    } else if (t == 0xdc) {
        if ((rc = need(r, 2)) < 0)
            return rc;
        n = fab_load_be16(r->p);
        r->p += 2;
    } else if (t == 0xdd) {
        if ((rc = need(r, 4)) < 0)
            return rc;
        n = fab_load_be32(r->p);
        r->p += 4;
    } else {
        return FAB_EFORMAT;
    }
    /* Each fact takes at least 37 bytes: a count the input cannot hold is
     * refused before any room is made for it. */
    if (n > (size_t)(r->end - r->p) / (4 + KLEN + 1))
        return FAB_ETRUNCATED;
    if ((rc = fab_holdings_reserve(h, n, n)) < 0)
        return rc;
    uint32_t last = NONE;
    const uint8_t *last_name = NULL;
    size_t last_len = 0;
    for (size_t i = 0; i < n; i++) {
        if ((rc = need(r, 3 + KLEN + 1)) < 0)
            return rc;
        if (r->p[0] != 0x92 || r->p[1] != 0xc4 || r->p[2] != KLEN)
            return FAB_EFORMAT;
        const uint8_t *key = r->p + 3;
        r->p += 3 + KLEN;
        t = *r->p++;
        size_t len;
        if ((t & 0xe0) == 0xa0) {
            len = t & 0x1f;
        } else if (t == 0xd9) {
            if ((rc = need(r, 1)) < 0)
                return rc;
            len = *r->p++;
            if (len < 32)
                return FAB_EFORMAT; /* not the shortest form */
        } else if (t == 0xda) {
            if ((rc = need(r, 2)) < 0)
                return rc;
            len = fab_load_be16(r->p);
            r->p += 2;
            if (len < 256)
                return FAB_EFORMAT;
        } else {
            return FAB_EFORMAT;
        }
        if (len == 0)
            return FAB_EINVAL;
        if ((rc = need(r, len)) < 0)
            return rc;
        const uint8_t *name = r->p;
        r->p += len;
        /* Runs of one holder are the common case: skip the lookup. */
        if (last == NONE || len != last_len || memcmp(name, last_name, len) != 0) {
            if ((rc = fab_holdings_intern(h, (const char *)name, len, &last)) < 0)
                return rc;
            last_name = name;
            last_len = len;
        }
        /* A fact twice would be dropped, and every version after it would
         * then be one less than the writer's: refuse it. */
        if (!add_reserved(h, key, last))
            return FAB_EDUPKEY;
    }
    if ((rc = need(r, SNAP_TAIL_LEN)) < 0)
        return rc;
    if (memcmp(r->p, SNAP_TAIL, SNAP_TAIL_LEN) != 0)
        return FAB_EFORMAT;
    r->p += SNAP_TAIL_LEN;
    return r->p == r->end ? 0 : FAB_EFORMAT;
}

int fab_holdings_restore(fab_holdings *h, const uint8_t *data, size_t len)
{
    if (h->nfacts || h->nholders || h->nkeys)
        return FAB_ESTATE;
    reader r = {data, data + len};
    int rc = read_restore(h, &r);
    if (rc < 0)
        clear_all(h);
    return rc;
}
