/*
 * fabric.unpack: untrusted msgpack bytes to Python values, over the core's
 * hardened reader (csrc/mpdec.c).
 *
 * Every length and count has been checked by the reader before an object is
 * made, so the memory used is bounded by the input size; recursion depth is
 * bounded by the reader's depth limit (at most FAB_MAX_DEPTH).
 */
#include "glue.h"

#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fabric/mpdec.h"

typedef struct dctx {
    fab_state *st;
    fab_mp_reader *r;
    size_t base; /* offset of r's buffer within the caller's stream */
    size_t nans; /* NaN floats decoded so far (a key holding one needs a byte check) */
    int vmode;   /* the value encoding (docs/spec/values.md): tags are read */
    PyObject **keys; /* KEY_CACHE recent short ASCII map keys, or NULL */
    uint64_t *key_tags; /* their tags */
} dctx;

/*
 * Map keys repeat (a list of records has the same few keys in every row, and
 * the replies of one op the same keys in every reply): the str objects of
 * short ASCII keys are remembered in a small table in the module state, kept
 * across decode calls, so a repeated key costs a probe of the table instead
 * of an allocation, a UTF-8 decode and a hash computation (a str keeps its
 * hash). The table is 4-way set associative (16 sets of 4), so
 * the dozen keys of one reply do not evict each other by a collision. Each
 * entry has a 64-bit tag: for a fixstr key of at most 7 bytes (most keys)
 * the encoded item itself, header and bytes, read as one word, so a tag
 * match is the key and nothing is hashed or compared byte by byte; for
 * longer keys a hash of the bytes, its low byte 0x01 (never a fixstr
 * header), and a probe compares bytes only on a tag match. Strings are
 * immutable, and a lookup or replacement runs no Python
 * code, so the GIL makes each one atomic; the table holds at most KEY_CACHE
 * strings of at most KEY_CACHE_LEN characters.
 */
#define KEY_CACHE 64
#define KEY_CACHE_WAYS 4
_Static_assert(KEY_CACHE == sizeof(((fab_state *)0)->key_cache) / sizeof(PyObject *),
               "the key cache's size");
_Static_assert(KEY_CACHE == sizeof(((fab_state *)0)->key_cache_tag) / sizeof(uint64_t),
               "the key cache's tags");
#define KEY_CACHE_LEN 32

/* Whether n bytes (at most KEY_CACHE_LEN) at a and b are equal: a few
 * possibly overlapping word compares, no call. */
static inline int same_short(const uint8_t *a, const uint8_t *b, uint32_t n)
{
    uint64_t x, y, u, v;
    if (n >= 8) {
        for (uint32_t i = 0; i + 8 < n; i += 8) {
            memcpy(&x, a + i, 8);
            memcpy(&y, b + i, 8);
            if (x != y)
                return 0;
        }
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, b + n - 8, 8);
        return x == y;
    }
    if (n >= 4) {
        uint32_t x4, y4, u4, v4;
        memcpy(&x4, a, 4);
        memcpy(&y4, b, 4);
        memcpy(&u4, a + n - 4, 4);
        memcpy(&v4, b + n - 4, 4);
        return x4 == y4 && u4 == v4;
    }
    if (n == 0)
        return 1;
    x = a[0], y = b[0], u = a[n - 1], v = b[n - 1];
    return x == y && u == v && a[n / 2] == b[n / 2];
}

/* The tag of a key of n bytes (at most KEY_CACHE_LEN) at p, hashed from
 * their first and last words and their length: low byte 0x01, so never 0
 * (an empty slot) nor a word tag. */
static inline uint64_t hash_tag(const uint8_t *p, uint32_t n)
{
    uint64_t a = 0, b = 0;
    if (n >= 8) {
        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
        if (n > 16) {
            uint64_t m;
            memcpy(&m, p + 8, 8);
            a ^= m * 0xff51afd7ed558ccdULL;
        }
    } else if (n >= 4) {
        uint32_t a4, b4;
        memcpy(&a4, p, 4);
        memcpy(&b4, p + n - 4, 4);
        a = a4;
        b = b4;
    } else if (n > 0) {
        a = (uint64_t)p[0] | (uint64_t)p[n / 2] << 8 | (uint64_t)p[n - 1] << 16;
    }
    uint64_t h = (a ^ (b * 0x9e3779b97f4a7c15ULL) ^ n) * 0xbf58476d1ce4e5b9ULL;
    return (h & ~(uint64_t)0xff) | 0x01;
}

/* The tag of a fixstr of n <= 7 bytes whose item (header and bytes) starts
 * at item, with avail bytes readable from there (at least n + 1): the item
 * as a little-endian word, the bytes after it masked off. Never 0 (the
 * header is 0xa0 | n). */
static inline uint64_t word_tag(const uint8_t *item, size_t n, size_t avail)
{
    uint64_t w = 0;
    if (avail >= 8) {
        w = fab_load_le64(item);
        if (n < 7)
            w &= ((uint64_t)1 << (8 * (n + 1))) - 1;
    } else {
        for (size_t i = 0; i <= n; i++)
            w |= (uint64_t)item[i] << (8 * i);
    }
    return w;
}

/* The first of a tag's set in the table. */
static inline size_t tag_set(uint64_t tag)
{
    return (size_t)((tag * 0x9e3779b97f4a7c15ULL) >> 60) * KEY_CACHE_WAYS;
}

/* The kept str of the short map key of len bytes at p (len <=
 * KEY_CACHE_LEN) tagged tag, a new reference, or NULL (no exception) when
 * the table does not hold it. */
static inline PyObject *find_key(dctx *d, uint64_t tag, const uint8_t *p, uint32_t len)
{
    size_t set = tag_set(tag);
    PyObject **slots = d->keys + set;
    uint64_t *tags = d->key_tags + set;
    int exact = (tag & 0xff) != 0x01; /* a word tag is the key itself */
    for (int i = 0; i < KEY_CACHE_WAYS; i++) {
        PyObject *k = slots[i];
        if (tags[i] == tag && k != NULL &&
            (exact || ((uint32_t)PyUnicode_GET_LENGTH(k) == len &&
                       same_short(PyUnicode_DATA(k), p, len))))
            return Py_NewRef(k);
    }
    return NULL;
}

/* Keeps k (a compact ASCII str of the bytes tagged tag) in the table: the
 * newest first, the oldest of its set dropped. */
static void keep_key(dctx *d, PyObject *k, uint64_t tag)
{
    size_t set = tag_set(tag);
    PyObject **slots = d->keys + set;
    uint64_t *tags = d->key_tags + set;
    Py_XDECREF(slots[KEY_CACHE_WAYS - 1]);
    for (int i = KEY_CACHE_WAYS - 1; i > 0; i--) {
        slots[i] = slots[i - 1];
        tags[i] = tags[i - 1];
    }
    slots[0] = Py_NewRef(k);
    tags[0] = tag;
}

/* The str of a short map key of len ASCII bytes the table does not hold
 * (tagged tag), made and kept. */
static PyObject *new_key(dctx *d, const uint8_t *p, uint32_t len, uint64_t tag)
{
    PyObject *k;
    if (len > 1) {
        k = PyUnicode_New((Py_ssize_t)len, 127);
        if (k != NULL)
            memcpy(PyUnicode_DATA(k), p, len);
    } else {
        /* CPython's shared empty and one-character strs. */
        k = len ? PyUnicode_FromOrdinal(p[0]) : PyUnicode_New(0, 0);
    }
    if (k != NULL)
        keep_key(d, k, tag);
    return k;
}

/* The str of a short map key (len <= KEY_CACHE_LEN, valid UTF-8) from the
 * table, or decoded and kept when it is ASCII. */
static PyObject *cached_key(dctx *d, const uint8_t *p, uint32_t len)
{
    uint64_t tag = hash_tag(p, len);
    PyObject *k = find_key(d, tag, p, len);
    if (k != NULL)
        return k;
    k = PyUnicode_DecodeUTF8((const char *)p, len, "strict");
    if (k != NULL && PyUnicode_IS_COMPACT_ASCII(k))
        keep_key(d, k, tag);
    return k;
}

static PyObject *dec_value(dctx *d, int in_key);
static PyObject *dec_error(dctx *d, size_t offset, const char *fmt, ...);

/*
 * Map keys and set members are checked as they are added.
 *
 * Hash floods: CPython's dict and set cost O(k^2) for k keys that share one
 * hash (every multiple of 2^61 - 1 hashes to 0), so a hostile map of n bytes
 * could cost O(n^2) with the GIL held. The hashes of the keys an attacker
 * can choose (anything but str and bytes, which CPython hashes with a
 * per-process secret) are counted in a table indexed by a seeded mix of the
 * hash, and the key that would make more than FAB_MAX_HASH_RUN keys share
 * one hash is refused before it is added: expected O(n) in all. Keys of
 * ordinary data share a hash by accident only.
 *
 * Duplicates are refused. Equal keys are caught by the dict or set itself;
 * a NaN is not equal to itself, so a key holding a NaN is compared by its
 * canonical encoding (one NaN) with the earlier keys that held one.
 */
#define FAB_MAX_HASH_RUN 8

typedef struct keycheck {
    struct hslot { Py_hash_t h; uint32_t count; } *t; /* lazily made */
    size_t cap;         /* slots in t: a power of two, at least twice the keys */
    uint32_t expected;  /* keys the container declares */
    PyObject *nan_keys; /* canonical bytes of the keys that held a NaN, or NULL */
    const char *what;   /* "map key" or "set member" */
    size_t at_abs;      /* the container's offset in the caller's stream */
} keycheck;

static void keycheck_init(keycheck *c, uint32_t expected, const char *what, size_t at_abs)
{
    memset(c, 0, sizeof(*c));
    c->expected = expected;
    c->what = what;
    c->at_abs = at_abs;
}

static void keycheck_destroy(keycheck *c)
{
    PyMem_Free(c->t);
    Py_XDECREF(c->nan_keys);
}

static uint64_t hash_seed(void)
{
    static uint64_t seed; /* per process; set once, under the GIL */
    if (seed == 0) {
        uint64_t s = 0;
        if (getentropy(&s, sizeof(s)) != 0)
            s = (uint64_t)(uintptr_t)&seed ^ (uint64_t)time(NULL);
        seed = s | 1;
    }
    return seed;
}

/* 0 if key may be added; -1 with an exception (a DecodeError naming the
 * duplicate or the flood, at offset `at` of d's reader) if not. held_nan:
 * the key holds a NaN. */
static int keycheck_add(dctx *d, keycheck *c, PyObject *key, size_t at, int held_nan)
{
    if (held_nan) {
        fab_buf buf;
        fab_enc enc;
        fab_buf_init(&buf);
        fab_enc_init(&enc, fab_buf_sink, &buf);
        if (fab_py_encode_value(d->st, &enc, key, "key") < 0) {
            fab_buf_destroy(&buf);
            return -1;
        }
        PyObject *b = PyBytes_FromStringAndSize((const char *)buf.data, (Py_ssize_t)buf.len);
        fab_buf_destroy(&buf);
        if (b == NULL)
            return -1;
        if (c->nan_keys == NULL && (c->nan_keys = PyList_New(0)) == NULL) {
            Py_DECREF(b);
            return -1;
        }
        int found = PySequence_Contains(c->nan_keys, b);
        if (found == 0 && PyList_Append(c->nan_keys, b) < 0)
            found = -1;
        Py_DECREF(b);
        if (found != 0) {
            if (found > 0)
                dec_error(d, at, "duplicate %s", c->what);
            return -1;
        }
    }
    if (PyUnicode_CheckExact(key) || PyBytes_CheckExact(key) || c->expected <= FAB_MAX_HASH_RUN)
        return 0; /* a secret-keyed hash, or too few keys for a flood */
    Py_hash_t h = PyObject_Hash(key);
    if (h == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            dec_error(d, at, "unhashable %s", c->what);
        }
        return -1;
    }
    if (c->t == NULL) {
        size_t cap = 16;
        while (cap < 2 * (size_t)c->expected)
            cap <<= 1;
        if ((c->t = PyMem_Calloc(cap, sizeof(*c->t))) == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        c->cap = cap;
    }
    size_t j = (size_t)fab__mix64((uint64_t)h ^ hash_seed()) & (c->cap - 1);
    while (c->t[j].count != 0 && c->t[j].h != h)
        j = (j + 1) & (c->cap - 1);
    c->t[j].h = h;
    if (++c->t[j].count > FAB_MAX_HASH_RUN) {
        dctx abs = {d->st, d->r, 0, 0, d->vmode, NULL, NULL};
        dec_error(&abs, c->at_abs, "more than %d %ss share one hash (refused: building it "
                  "would cost quadratic time)", FAB_MAX_HASH_RUN, c->what);
        return -1;
    }
    return 0;
}

PyObject *fab_py_decode_error(fab_state *st, size_t offset, const char *what)
{
    fab_py_err_info info = {.msg = what, .has_offset = 1, .offset = offset,
                            .exc = FAB_PYEXC_DecodeError};
    return fab_py_raise(st, FAB_EFORMAT, &info);
}

static PyObject *reader_error(dctx *d, int rc)
{
    if (rc == FAB_ESTATE)
        return fab_py_decode_error(d->st, d->base + d->r->len, "reader used after an error");
    return fab_py_decode_error(d->st, d->base + d->r->err_offset, d->r->err);
}

static PyObject *dec_error(dctx *d, size_t offset, const char *fmt, ...)
{
    char buf[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return fab_py_decode_error(d->st, d->base + offset, buf);
}

static PyObject *dec_set(dctx *d, const fab_mp_item *it)
{
    /* The payload is a msgpack array of the members, read with what is left
     * of the outer limits. */
    fab_mp_reader sub;
    fab_mp_limits lim = d->r->lim;
    if (d->r->depth >= lim.max_depth)
        return dec_error(d, it->offset, "nesting deeper than the limit of %u", lim.max_depth);
    lim.max_depth -= d->r->depth;
    lim.max_items -= d->r->items;
    if (lim.max_items == 0)
        return dec_error(d, it->offset, "more than %llu items (the limit)",
                         (unsigned long long)d->r->lim.max_items);
    size_t payload_off = (size_t)(it->v.s.p - d->r->data);
    if (fab_mp_reader_init(&sub, it->v.s.p, it->v.s.len, &lim) != FAB_OK)
        return dec_error(d, it->offset, "invalid limits");
    sub.tags = d->r->tags; /* read as the enclosing payload is */
    dctx sd = {d->st, &sub, d->base + payload_off, 0, d->vmode, d->keys, d->key_tags};
    fab_mp_item head;
    int rc = fab_mp_next(&sub, &head);
    if (rc != FAB_OK)
        return reader_error(&sd, rc);
    if (head.type != FAB_MP_ARRAY)
        return dec_error(d, it->offset, "set payload is not an array");
    PyObject *set = PySet_New(NULL);
    if (set == NULL)
        return NULL;
    keycheck kc;
    keycheck_init(&kc, head.v.count, "set member", d->base + it->offset);
    for (uint32_t i = 0; i < head.v.count; i++) {
        size_t at = sub.pos;
        size_t nans = sd.nans;
        PyObject *m = dec_value(&sd, 1);
        if (m == NULL)
            goto fail;
        if (keycheck_add(&sd, &kc, m, at, sd.nans != nans) < 0) {
            Py_DECREF(m);
            goto fail;
        }
        Py_ssize_t before = PySet_GET_SIZE(set);
        if (PySet_Add(set, m) < 0) {
            Py_DECREF(m);
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                dec_error(&sd, at, "unhashable set member");
            }
            goto fail;
        }
        Py_DECREF(m);
        if (PySet_GET_SIZE(set) == before) {
            dec_error(&sd, at, "duplicate set member");
            goto fail;
        }
    }
    if (sub.pos != sub.len) {
        dec_error(&sd, sub.pos, "%zu trailing bytes in a set payload", sub.len - sub.pos);
        goto fail;
    }
    d->r->items += sub.items;
    d->nans += sd.nans;
    keycheck_destroy(&kc);
    PyObject *fs = PyFrozenSet_New(set);
    Py_DECREF(set);
    return fs;
fail:
    keycheck_destroy(&kc);
    Py_DECREF(set);
    return NULL;
}

static PyObject *dec_timestamp(dctx *d, const fab_mp_item *it)
{
    const uint8_t *p = it->v.s.p;
    int64_t sec;
    uint32_t nsec;
    switch (it->v.s.len) {
    case 4:
        sec = fab_load_be32(p);
        nsec = 0;
        break;
    case 8: {
        uint64_t v = fab_load_be64(p);
        nsec = (uint32_t)(v >> 34);
        sec = (int64_t)(v & ((UINT64_C(1) << 34) - 1));
        break;
    }
    case 12: {
        nsec = fab_load_be32(p);
        uint64_t u = fab_load_be64(p + 4);
        memcpy(&sec, &u, 8);
        break;
    }
    default:
        return dec_error(d, it->offset, "timestamp extension of %u bytes (4, 8 or 12 expected)",
                         it->v.s.len);
    }
    if (nsec > 999999999u)
        return dec_error(d, it->offset, "timestamp nanoseconds %u out of range", nsec);
    PyObject *ts = PyStructSequence_New(d->st->Timestamp_Type);
    if (ts == NULL)
        return NULL;
    PyObject *s = PyLong_FromLongLong(sec), *n = PyLong_FromUnsignedLong(nsec);
    if (s == NULL || n == NULL) {
        Py_XDECREF(s);
        Py_XDECREF(n);
        Py_DECREF(ts);
        return NULL;
    }
    PyStructSequence_SetItem(ts, 0, s);
    PyStructSequence_SetItem(ts, 1, n);
    return ts;
}

/* ---- the value encoding's tags ------------------------------------------- */

/* Reads the item a tag announces; it must be of type want. 0 or -1. */
static int tagged_item(dctx *d, const fab_mp_item *tag, fab_mp_type want, const char *what,
                       fab_mp_item *it)
{
    int rc = fab_mp_next(d->r, it);
    if (rc != FAB_OK) {
        reader_error(d, rc);
        return -1;
    }
    if (it->type != want) {
        dec_error(d, tag->offset, "a %s tag not followed by %s", what,
                  want == FAB_MP_ARRAY ? "an array" : want == FAB_MP_BIN ? "a bin" : "a str");
        return -1;
    }
    return 0;
}

/* A set or frozenset: the members, checked as map keys are. */
static PyObject *dec_tagged_set(dctx *d, const fab_mp_item *tag, const fab_mp_item *it,
                                int frozen)
{
    PyObject *set = frozen ? PyFrozenSet_New(NULL) : PySet_New(NULL);
    if (set == NULL)
        return NULL;
    keycheck kc;
    keycheck_init(&kc, it->v.count, "set member", d->base + tag->offset);
    for (uint32_t i = 0; i < it->v.count; i++) {
        size_t at = d->r->pos;
        size_t nans = d->nans;
        PyObject *m = dec_value(d, 1);
        if (m == NULL)
            goto fail;
        if (keycheck_add(d, &kc, m, at, d->nans != nans) < 0) {
            Py_DECREF(m);
            goto fail;
        }
        Py_ssize_t before = PySet_GET_SIZE(set);
        int rc = PySet_Add(set, m);
        Py_DECREF(m);
        if (rc < 0) {
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                dec_error(d, at, "unhashable set member");
            }
            goto fail;
        }
        if (PySet_GET_SIZE(set) == before) {
            dec_error(d, at, "duplicate set member");
            goto fail;
        }
    }
    keycheck_destroy(&kc);
    return set;
fail:
    keycheck_destroy(&kc);
    Py_DECREF(set);
    return NULL;
}

/* Calls a registered type's from_data; a name this process does not know
 * makes an inert fabric.Opaque (data never chooses code to run). */
static PyObject *rebuild(dctx *d, const fab_mp_item *tag, PyObject *name, PyObject *data)
{
    fab_state *st = d->st;
    PyObject *entry = st->vt_by_name ? PyDict_GetItemWithError(st->vt_by_name, name) : NULL;
    if (entry == NULL) {
        if (PyErr_Occurred())
            return NULL;
        if (st->opaque_type == NULL)
            return dec_error(d, tag->offset, "a typed value with no type registry");
        return PyObject_CallFunctionObjArgs(st->opaque_type, name, data, NULL);
    }
    Py_INCREF(entry);
    PyObject *out = NULL;
    if (PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) == 4)
        out = PyObject_CallOneArg(PyTuple_GET_ITEM(entry, 3), data);
    else
        PyErr_SetString(PyExc_TypeError, "malformed type registry entry");
    Py_DECREF(entry);
    if (out == NULL && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
        PyObject *t, *val, *tb;
        PyErr_Fetch(&t, &val, &tb);
        PyErr_NormalizeException(&t, &val, &tb);
        PyObject *msg = val ? PyObject_Str(val) : NULL;
        const char *m = msg ? PyUnicode_AsUTF8(msg) : NULL;
        if (m == NULL)
            PyErr_Clear();
        const char *n = PyUnicode_AsUTF8(name);
        if (n == NULL)
            PyErr_Clear();
        dec_error(d, tag->offset, "cannot rebuild a %.60s value: %.80s", n ? n : "?",
                  m ? m : "?");
        Py_XDECREF(msg);
        if (val) {
            PyObject *t2, *v2, *tb2;
            PyErr_Fetch(&t2, &v2, &tb2);
            PyErr_NormalizeException(&t2, &v2, &tb2);
            PyException_SetCause(v2, Py_NewRef(val));
            PyErr_Restore(t2, v2, tb2);
        }
        Py_XDECREF(t);
        Py_XDECREF(val);
        Py_XDECREF(tb);
    }
    return out;
}

static PyObject *dec_tagged(dctx *d, const fab_mp_item *tag, int in_key)
{
    fab_mp_item it;
    int8_t code = tag->v.s.ext_type;
    switch (code) {
    case FAB_TAG_TUPLE: {
        if (tagged_item(d, tag, FAB_MP_ARRAY, "tuple", &it) < 0)
            return NULL;
        PyObject *t = PyTuple_New(it.v.count);
        if (t == NULL)
            return NULL;
        for (uint32_t i = 0; i < it.v.count; i++) {
            PyObject *x = dec_value(d, in_key);
            if (x == NULL) {
                Py_DECREF(t);
                return NULL;
            }
            PyTuple_SET_ITEM(t, i, x);
        }
        return t;
    }
    case FAB_TAG_SET:
    case FAB_TAG_FROZENSET:
        if (tagged_item(d, tag, FAB_MP_ARRAY, "set", &it) < 0)
            return NULL;
        if (code == FAB_TAG_SET && in_key)
            return dec_error(d, tag->offset, "a set cannot be a map key or set member");
        return dec_tagged_set(d, tag, &it, code == FAB_TAG_FROZENSET);
    case FAB_TAG_BYTEARRAY:
        if (tagged_item(d, tag, FAB_MP_BIN, "bytearray", &it) < 0)
            return NULL;
        if (in_key)
            return dec_error(d, tag->offset, "a bytearray cannot be a map key or set member");
        return PyByteArray_FromStringAndSize((const char *)it.v.s.p, it.v.s.len);
    case FAB_TAG_NDARRAY: {
        fab_mp_item f;
        if (tagged_item(d, tag, FAB_MP_ARRAY, "array", &it) < 0)
            return NULL;
        if (it.v.count < 2 || it.v.count > 66)
            return dec_error(d, tag->offset, "an array tag with %u fields (2 to 66 expected)",
                             it.v.count);
        if (tagged_item(d, tag, FAB_MP_STR, "array", &f) < 0)
            return NULL;
        PyObject *dtype = PyUnicode_DecodeUTF8((const char *)f.v.s.p, f.v.s.len, "strict");
        if (dtype == NULL)
            return NULL;
        if (tagged_item(d, tag, FAB_MP_BIN, "array", &f) < 0) {
            Py_DECREF(dtype);
            return NULL;
        }
        /* A bytearray, so the array built over it is writable without a copy. */
        PyObject *data = PyByteArray_FromStringAndSize((const char *)f.v.s.p, f.v.s.len);
        PyObject *shape = PyTuple_New(it.v.count - 2);
        PyObject *args = NULL, *out = NULL;
        if (data == NULL || shape == NULL)
            goto nd_done;
        for (uint32_t i = 0; i + 2 < it.v.count; i++) {
            fab_mp_item dim;
            int rc = fab_mp_next(d->r, &dim);
            if (rc != FAB_OK) {
                reader_error(d, rc);
                goto nd_done;
            }
            if (dim.type != FAB_MP_UINT) {
                dec_error(d, dim.offset, "an array dimension that is not a non-negative int");
                goto nd_done;
            }
            PyObject *n = PyLong_FromUnsignedLongLong(dim.v.u);
            if (n == NULL)
                goto nd_done;
            PyTuple_SET_ITEM(shape, i, n);
        }
        args = PyTuple_Pack(3, dtype, data, shape);
        if (args == NULL)
            goto nd_done;
        PyObject *name = PyUnicode_FromString("numpy.ndarray");
        if (name != NULL) {
            out = rebuild(d, tag, name, args);
            Py_DECREF(name);
        }
    nd_done:
        Py_XDECREF(args);
        Py_XDECREF(shape);
        Py_XDECREF(data);
        Py_DECREF(dtype);
        return out;
    }
    case FAB_TAG_TYPED: {
        fab_mp_item f;
        if (tagged_item(d, tag, FAB_MP_ARRAY, "typed value", &it) < 0)
            return NULL;
        if (it.v.count != 2)
            return dec_error(d, tag->offset, "a typed value of %u fields (2 expected)",
                             it.v.count);
        if (tagged_item(d, tag, FAB_MP_STR, "typed value", &f) < 0)
            return NULL;
        PyObject *name = PyUnicode_DecodeUTF8((const char *)f.v.s.p, f.v.s.len, "strict");
        if (name == NULL)
            return NULL;
        PyObject *data = dec_value(d, in_key);
        PyObject *out = data ? rebuild(d, tag, name, data) : NULL;
        Py_XDECREF(data);
        Py_DECREF(name);
        return out;
    }
    default:
        return dec_error(d, tag->offset, "unknown tag %d", code);
    }
}

static PyObject *dec_complex(dctx *d, const fab_mp_item *it)
{
    if (it->v.s.len != 16)
        return dec_error(d, it->offset, "a complex of %u bytes (16 expected)", it->v.s.len);
    uint64_t re = fab_load_be64(it->v.s.p), im = fab_load_be64(it->v.s.p + 8);
    double x, y;
    memcpy(&x, &re, 8);
    memcpy(&y, &im, 8);
    if (x != x || y != y)
        d->nans++; /* a key holding it is compared by its canonical bytes */
    return PyComplex_FromDoubles(x, y);
}

static PyObject *dec_ext(dctx *d, const fab_mp_item *it, int in_key)
{
    if (d->vmode) {
        int8_t code = it->v.s.ext_type;
        if (code == FAB_EXT_COMPLEX)
            return dec_complex(d, it);
        if (code >= FAB_TAG_TUPLE && code <= FAB_TAG_TYPED) {
            if (it->v.s.len != 0)
                return dec_error(d, it->offset, "a tag with a payload");
            return dec_tagged(d, it, in_key);
        }
    }
    switch (it->v.s.ext_type) {
    case FAB_EXT_BIGINT:
        if (it->v.s.len == 0)
            return dec_error(d, it->offset, "empty big-integer extension");
        return _PyLong_FromByteArray(it->v.s.p, it->v.s.len, 0, 1);
    case FAB_EXT_SET:
        return dec_set(d, it);
    case FAB_EXT_SECRET:
        if (it->v.s.len != 0)
            return dec_error(d, it->offset, "secret marker with a payload");
        return Py_NewRef(d->st->redacted);
    case -1:
        return dec_timestamp(d, it);
    default: {
        PyObject *ext = PyStructSequence_New(d->st->Ext_Type);
        if (ext == NULL)
            return NULL;
        PyObject *code = PyLong_FromLong(it->v.s.ext_type);
        PyObject *data = PyBytes_FromStringAndSize((const char *)it->v.s.p, it->v.s.len);
        if (code == NULL || data == NULL) {
            Py_XDECREF(code);
            Py_XDECREF(data);
            Py_DECREF(ext);
            return NULL;
        }
        PyStructSequence_SetItem(ext, 0, code);
        PyStructSequence_SetItem(ext, 1, data);
        return ext;
    }
    }
}

/* Whether n bytes are all ASCII: words (the last one overlapping), or
 * for fewer than 4 bytes each of them. */
static inline int all_ascii(const uint8_t *p, size_t n)
{
    uint64_t acc = 0, w;
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&w, p + i, 8);
            acc |= w;
        }
        memcpy(&w, p + n - 8, 8);
        acc |= w;
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + n - 4, 4);
        acc = a | b;
    } else if (n > 0) {
        acc = (uint64_t)(p[0] | p[n / 2] | p[n - 1]);
    }
    return (acc & 0x8080808080808080ULL) == 0;
}

/* Moves the reader past a scalar of `used` bytes at `start` as fab_mp_next
 * would: one more item, no tag pending, and each container the scalar was
 * the last child of closed (a scalar opens nothing). */
static inline void took_scalar(fab_mp_reader *r, size_t start, size_t used)
{
    r->pos = start + used;
    r->items++;
    r->after_tag = 0;
    uint32_t depth = r->depth;
    if (depth > 0 && --r->remaining[depth - 1] == 0) {
        do
            depth--;
        while (depth > 0 && r->remaining[depth - 1] == 0);
        r->depth = depth;
    }
}

/*
 * The common scalars read inline and made into their objects in one
 * dispatch on the type byte: positive and negative fixints, nil, bools,
 * float64, the integer forms, short ASCII strs (fixstr and str8: a map key
 * from the key table when it is there) and bin8. Each is read exactly as
 * fab_mp_next would read it (the same checks, the same effect on the
 * reader: its position, item count and the containers it closes), and only
 * when it is well formed, within the limits and wholly present; anything
 * else, including every error, is left to fab_mp_next (0 returned, the
 * reader untouched). 1 when the item was read: *out is its object, or NULL
 * with an exception when making that failed.
 */
static inline __attribute__((always_inline)) int fast_value(dctx *d, int in_key, PyObject **out)
{
    fab_mp_reader *r = d->r;
    size_t start = r->pos;
    if (start >= r->len || r->items >= r->lim.max_items)
        return 0;
    size_t left = r->len - start - 1; /* bytes after the type byte */
    const uint8_t *p = r->data + start;
    uint8_t c = p[0];
    size_t used = 1;
    PyObject *o;
    if (c <= 0x7f) {
        o = PyLong_FromLong(c);
    } else if (c >= 0xe0) {
        o = PyLong_FromLong((int8_t)c);
    } else if ((c & 0xe0) == 0xa0 || c == 0xd9) {
        size_t n = c == 0xd9 ? (left >= 1 ? p[1] : SIZE_MAX) : (size_t)(c & 0x1f);
        size_t head = c == 0xd9 ? 2 : 1;
        if (n > r->lim.max_str || n > left + 1 - head)
            return 0;
        const uint8_t *s = p + head;
        uint64_t tag = 0;
        if (in_key && d->keys && n <= KEY_CACHE_LEN)
            tag = head == 1 && n < 8 ? word_tag(p, n, left + 1) : hash_tag(s, (uint32_t)n);
        /* A key the table holds is ASCII (its bytes are a kept str's). */
        if (tag != 0 && (o = find_key(d, tag, s, (uint32_t)n)) != NULL) {
            /* found */
        } else if (!all_ascii(s, n)) {
            return 0; /* UTF-8 to validate: fab_mp_next */
        } else if (tag != 0) {
            o = new_key(d, s, (uint32_t)n, tag);
        } else if (n > 1) {
            o = PyUnicode_New((Py_ssize_t)n, 127);
            if (o != NULL)
                memcpy(PyUnicode_DATA(o), s, n);
        } else {
            /* CPython's shared empty and one-character strs. */
            o = n ? PyUnicode_FromOrdinal(s[0]) : PyUnicode_New(0, 0);
        }
        used = head + n;
    } else if (c == 0xc0) {
        o = Py_NewRef(Py_None);
    } else if (c == 0xc2 || c == 0xc3) {
        o = Py_NewRef(c == 0xc3 ? Py_True : Py_False);
    } else if (c == 0xcb) {
        if (left < 8)
            return 0;
        uint64_t bits = fab_load_be64(p + 1);
        double f;
        memcpy(&f, &bits, 8);
        if (f != f)
            d->nans++;
        o = PyFloat_FromDouble(f);
        used = 9;
    } else if (c >= 0xcc && c <= 0xd3) {
        size_t n = (size_t)1 << ((c - 0xcc) & 3);
        if (left < n)
            return 0;
        uint64_t u = 0;
        for (size_t i = 1; i <= n; i++)
            u = (u << 8) | p[i];
        if (c <= 0xcf) {
            o = PyLong_FromUnsignedLongLong(u);
        } else {
            int64_t v;
            if (n == 1) v = (int8_t)u;
            else if (n == 2) v = (int16_t)u;
            else if (n == 4) v = (int32_t)u;
            else memcpy(&v, &u, 8);
            o = PyLong_FromLongLong(v);
        }
        used = 1 + n;
    } else if (c == 0xc4) {
        if (left < 1 || p[1] > r->lim.max_bin || p[1] > left - 1)
            return 0;
        o = PyBytes_FromStringAndSize((const char *)p + 2, p[1]);
        used = 2 + (size_t)p[1];
    } else {
        return 0;
    }
    took_scalar(r, start, used);
    *out = o;
    return 1;
}

/* An item's object: the common scalars inline, the rest through the
 * core's reader. */
static PyObject *dec_value(dctx *d, int in_key)
{
    PyObject *o;
    if (fast_value(d, in_key, &o))
        return o;
    fab_mp_item it;
    int rc = fab_mp_next(d->r, &it);
    if (rc != FAB_OK)
        return reader_error(d, rc);
    switch (it.type) {
    case FAB_MP_NIL:
        Py_RETURN_NONE;
    case FAB_MP_BOOL:
        return PyBool_FromLong(it.v.b);
    case FAB_MP_INT:
        return PyLong_FromLongLong(it.v.i);
    case FAB_MP_UINT:
        return PyLong_FromUnsignedLongLong(it.v.u);
    case FAB_MP_FLOAT:
        if (it.v.f != it.v.f)
            d->nans++;
        return PyFloat_FromDouble(it.v.f);
    case FAB_MP_STR:
        if (in_key && d->keys && it.v.s.len <= KEY_CACHE_LEN)
            return cached_key(d, it.v.s.p, it.v.s.len);
        return PyUnicode_DecodeUTF8((const char *)it.v.s.p, it.v.s.len, "strict");
    case FAB_MP_BIN:
        return PyBytes_FromStringAndSize((const char *)it.v.s.p, it.v.s.len);
    case FAB_MP_EXT:
        return dec_ext(d, &it, in_key);
    case FAB_MP_ARRAY: {
        /* Arrays in a key position come back as tuples so they can be keys
         * (the canonical encoding maps tuple and list alike to an array). */
        PyObject *seq = in_key ? PyTuple_New(it.v.count) : PyList_New(it.v.count);
        if (seq == NULL)
            return NULL;
        for (uint32_t i = 0; i < it.v.count; i++) {
            PyObject *x;
            if (!fast_value(d, in_key, &x))
                x = dec_value(d, in_key);
            if (x == NULL) {
                Py_DECREF(seq);
                return NULL;
            }
            if (in_key)
                PyTuple_SET_ITEM(seq, i, x);
            else
                PyList_SET_ITEM(seq, i, x);
        }
        return seq;
    }
    case FAB_MP_MAP: {
        if (in_key)
            return dec_error(d, it.offset, "a map cannot be a map key or set member");
        /* Sized for its entries, so a 6-key row is not resized while it is
         * filled (CPython caps the presize, so a hostile count costs
         * nothing ahead of the entries that back it). */
        PyObject *dict = _PyDict_NewPresized((Py_ssize_t)it.v.count);
        if (dict == NULL)
            return NULL;
        keycheck kc;
        keycheck_init(&kc, it.v.count, "map key", d->base + it.offset);
        for (uint32_t i = 0; i < it.v.count; i++) {
            size_t at = d->r->pos;
            size_t nans = d->nans;
            PyObject *k, *v;
            if (!fast_value(d, 1, &k))
                k = dec_value(d, 1);
            if (k == NULL)
                goto map_fail;
            /* (A str key without a NaN needs no check: inline.) */
            if ((d->nans != nans || !PyUnicode_CheckExact(k)) &&
                keycheck_add(d, &kc, k, at, d->nans != nans) < 0) {
                Py_DECREF(k);
                goto map_fail;
            }
            if (!fast_value(d, 0, &v))
                v = dec_value(d, 0);
            if (v == NULL) {
                Py_DECREF(k);
                goto map_fail;
            }
            Py_ssize_t before = PyDict_GET_SIZE(dict);
            rc = PyDict_SetItem(dict, k, v);
            Py_DECREF(k);
            Py_DECREF(v);
            if (rc < 0) {
                if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                    PyErr_Clear();
                    dec_error(d, at, "unhashable map key");
                }
                goto map_fail;
            }
            if (PyDict_GET_SIZE(dict) == before) {
                dec_error(d, at, "duplicate map key");
                goto map_fail;
            }
        }
        keycheck_destroy(&kc);
        return dict;
    map_fail:
        keycheck_destroy(&kc);
        Py_DECREF(dict);
        return NULL;
    }
    }
    return dec_error(d, it.offset, "unknown item");
}

PyObject *fab_py_decode(fab_state *st, const uint8_t *data, size_t len,
                        const fab_mp_limits *limits, size_t base_offset)
{
    fab_mp_reader r;
    if (fab_mp_reader_init(&r, data, len, limits) != FAB_OK) {
        PyErr_SetString(PyExc_ValueError, "decode limits must all be positive");
        return NULL;
    }
    dctx d = {st, &r, base_offset, 0, 0, st->key_cache, st->key_cache_tag};
    if (len == 0)
        return fab_py_decode_error(st, base_offset, "empty input (no value)");
    PyObject *v = dec_value(&d, 0);
    if (v && r.pos != r.len) {
        Py_DECREF(v);
        return dec_error(&d, r.pos, "%zu trailing bytes after the value", r.len - r.pos);
    }
    return v;
}

PyObject *fab_py_decode_record(fab_state *st, const uint8_t *data, size_t len,
                               const fab_mp_limits *limits, size_t base_offset)
{
    char msg[96];
    size_t body = 0, at = 0;
    if (fab_value_prefix(data, len, &body, msg, sizeof(msg), &at) != FAB_OK)
        return fab_py_decode_error(st, base_offset + at, msg);
    if (body == 0)
        return fab_py_decode(st, data, len, limits, base_offset);
    if (len == body)
        return fab_py_decode_error(st, base_offset + body,
                                   "no value after the value encoding's prefix c1 01");
    return fab_py_decode_tagged(st, data + body, len - body, limits, base_offset + body);
}

PyObject *fab_py_decode_tagged(fab_state *st, const uint8_t *data, size_t len,
                               const fab_mp_limits *limits, size_t base_offset)
{
    fab_mp_reader r;
    if (fab_mp_reader_init(&r, data, len, limits) != FAB_OK) {
        PyErr_SetString(PyExc_ValueError, "decode limits must all be positive");
        return NULL;
    }
    fab_mp_reader_tags(&r);
    dctx d = {st, &r, base_offset, 0, 1, st->key_cache, st->key_cache_tag};
    if (len == 0)
        return fab_py_decode_error(st, base_offset, "empty input (no value)");
    PyObject *v = dec_value(&d, 0);
    if (v && r.pos != r.len) {
        Py_DECREF(v);
        return dec_error(&d, r.pos, "%zu trailing bytes after the value", r.len - r.pos);
    }
    return v;
}

/* Reads one limit attribute when the object has it (*found is set then).
 * 0, or -1 on error. */
static int limit_attr(PyObject *obj, const char *name, uint64_t max, uint64_t *out, int *found)
{
    PyObject *v = PyObject_GetAttrString(obj, name);
    if (v == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    *found = 1;
    if (v == Py_None) {
        Py_DECREF(v);
        return 0;
    }
    unsigned long long x = 0;
    int bad = !PyLong_Check(v);
    if (!bad) {
        x = PyLong_AsUnsignedLongLong(v);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            bad = 1;
        }
    }
    if (bad || x == 0) {
        PyErr_Format(PyExc_ValueError, "decode limit %s must be a positive int, got %.50R",
                     name, v);
        Py_DECREF(v);
        return -1;
    }
    Py_DECREF(v);
    *out = x > max ? max : x;
    return 0;
}

int fab_py_limits_from_object(PyObject *obj, fab_mp_limits *lim)
{
    fab_mp_limits_default(lim);
    if (obj == NULL || obj == Py_None)
        return 0;
    static const char *const known[] = {"max_depth", "max_str", "max_bin", "max_ext",
                                        "max_array", "max_map", "max_items", NULL};
    PyObject *ns = NULL;
    if (PyDict_Check(obj)) {
        /* A plain dict of limits: every key must be a known limit. */
        Py_ssize_t pos = 0;
        PyObject *k, *val;
        while (PyDict_Next(obj, &pos, &k, &val)) {
            int ok = 0;
            for (int i = 0; known[i]; i++)
                if (PyUnicode_Check(k) && PyUnicode_CompareWithASCIIString(k, known[i]) == 0)
                    ok = 1;
            if (!ok) {
                PyErr_Format(PyExc_ValueError, "unknown decode limit %.50R (known: max_depth, "
                             "max_str, max_bin, max_ext, max_array, max_map, max_items)", k);
                return -1;
            }
        }
        PyObject *types = PyImport_ImportModule("types");
        if (types == NULL)
            return -1;
        PyObject *cls = PyObject_GetAttrString(types, "SimpleNamespace");
        Py_DECREF(types);
        if (cls == NULL)
            return -1;
        PyObject *empty = PyTuple_New(0);
        ns = empty ? PyObject_Call(cls, empty, obj) : NULL;
        Py_XDECREF(empty);
        Py_DECREF(cls);
        if (ns == NULL)
            return -1;
        obj = ns;
    }
    uint64_t v;
    int found = 0;
#define ONE(field, name, max)                                   \
    v = lim->field;                                             \
    if (limit_attr(obj, name, max, &v, &found) < 0) {           \
        Py_XDECREF(ns);                                         \
        return -1;                                              \
    }                                                           \
    lim->field = (__typeof__(lim->field))v;
    ONE(max_depth, "max_depth", FAB_MAX_DEPTH)
    ONE(max_str, "max_str", UINT32_MAX)
    ONE(max_bin, "max_bin", UINT32_MAX)
    ONE(max_ext, "max_ext", UINT32_MAX)
    ONE(max_array, "max_array", UINT32_MAX)
    ONE(max_map, "max_map", UINT32_MAX)
    ONE(max_items, "max_items", UINT64_MAX)
#undef ONE
    if (!found && ns == NULL) {
        /* An int, a str, an object whose names are all misspelt: no limit
         * it meant would be applied, silently. (A dict, even {}, is read.) */
        PyErr_Format(PyExc_TypeError, "limits must be None, a dict of decode limits or an "
                     "object with some of their names as attributes (max_depth, max_str, "
                     "max_bin, max_ext, max_array, max_map, max_items), not %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_XDECREF(ns);
    return 0;
}

static PyObject *unpack_impl(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames, int values);

static PyObject *unpack(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    return unpack_impl(module, args, nargs, kwnames, 0);
}

static PyObject *decode_value(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    return unpack_impl(module, args, nargs, kwnames, 1);
}

static PyObject *decode_canonical(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    return unpack_impl(module, args, nargs, kwnames, 2);
}

static PyObject *unpack_impl(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames, int values)
{
    static const char *const names[] = {"data", "limits", NULL};
    PyObject *data = NULL, *limits = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "unpack() takes at most 2 arguments");
        return NULL;
    }
    if (nargs > 0)
        data = args[0];
    if (nargs > 1)
        limits = args[1];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(name, names[0]) == 0 && data == NULL)
            data = args[nargs + i];
        else if (PyUnicode_CompareWithASCIIString(name, names[1]) == 0 && nargs < 2)
            limits = args[nargs + i];
        else {
            PyErr_Format(PyExc_TypeError, "unpack() got an unexpected keyword argument %R", name);
            return NULL;
        }
    }
    if (data == NULL) {
        PyErr_SetString(PyExc_TypeError, "unpack() missing required argument 'data'");
        return NULL;
    }
    fab_state *st = fab_get_state(module);
    fab_mp_limits lim;
    if (fab_py_limits_from_object(limits, &lim) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = values == 2 ? fab_py_decode_tagged(st, view.buf, (size_t)view.len, &lim, 0)
                    : values ? fab_py_decode_record(st, view.buf, (size_t)view.len, &lim, 0)
                             : fab_py_decode(st, view.buf, (size_t)view.len, &lim, 0);
    PyBuffer_Release(&view);
    return out;
}

/* ---- Ext, Timestamp and the REDACTED sentinel ------------------------------ */

static PyStructSequence_Field ext_fields[] = {
    {"code", "The extension type code (-128..127)."},
    {"data", "The extension payload."},
    {NULL, NULL},
};

static PyStructSequence_Desc ext_desc = {
    "fabric.Ext",
    "A msgpack extension value of a type fabric does not interpret.",
    ext_fields,
    2,
};

static PyStructSequence_Field ts_fields[] = {
    {"seconds", "Seconds since the Unix epoch (may be negative)."},
    {"nanoseconds", "Nanoseconds within the second (0..999999999)."},
    {NULL, NULL},
};

static PyStructSequence_Desc ts_desc = {
    "fabric.Timestamp",
    "A msgpack timestamp (extension -1), exact to the nanosecond.",
    ts_fields,
    2,
};

static PyObject *Redacted_repr(PyObject *self)
{
    FAB_UNUSED(self);
    return PyUnicode_FromString("fabric.REDACTED");
}

static PyType_Slot Redacted_slots[] = {
    {Py_tp_doc, "The place of a Secret in decoded data: its value never travels."},
    {Py_tp_repr, Redacted_repr},
    {0, NULL},
};

static PyType_Spec Redacted_spec = {
    .name = "fabric.Redacted",
    .basicsize = sizeof(PyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Redacted_slots,
};

static PyMethodDef unpack_functions[] = {
    {"unpack", (PyCFunction)(void (*)(void))unpack, METH_FASTCALL | METH_KEYWORDS,
     "unpack(data, limits=None)\n--\n\n"
     "Decode one msgpack value from untrusted bytes under limits (an object with "
     "any of max_depth, max_str, max_bin, max_ext, max_array, max_map, max_items; "
     "None for the defaults). Raises DecodeError (a ValueError) with .offset."},
    {"decode_value", (PyCFunction)(void (*)(void))decode_value, METH_FASTCALL | METH_KEYWORDS,
     "decode_value(data, limits=None)\n--\n\n"
     "Decode a value from untrusted bytes: the value encoding (docs/spec/values.md)\n"
     "when data starts with its prefix, else one msgpack value as unpack does.\n"
     "Registered types are rebuilt by their from_data; a type name this process has\n"
     "not registered comes back as an inert fabric.Opaque. Raises DecodeError."},
    {"_decode_canonical", (PyCFunction)(void (*)(void))decode_canonical,
     METH_FASTCALL | METH_KEYWORDS,
     "_decode_canonical(data, limits=None)\n--\n\n"
     "Decode the canonical encoding (docs/spec/content-key.md) from untrusted bytes,\n"
     "its tags included: a registered type (tag 22), a complex, a timestamp come back\n"
     "as decode_value rebuilds them (unpack would take a tag for an ext item). The\n"
     "reader of a single reply's record over the node protocol. Raises DecodeError."},
    {NULL, NULL, 0, NULL},
};

int fab_py_unpack_exec(PyObject *module, fab_state *st)
{
    if (PyModule_AddFunctions(module, unpack_functions) < 0)
        return -1;
    st->Ext_Type = PyStructSequence_NewType(&ext_desc);
    if (st->Ext_Type == NULL || PyModule_AddObjectRef(module, "Ext", (PyObject *)st->Ext_Type) < 0)
        return -1;
    st->Timestamp_Type = PyStructSequence_NewType(&ts_desc);
    if (st->Timestamp_Type == NULL ||
        PyModule_AddObjectRef(module, "Timestamp", (PyObject *)st->Timestamp_Type) < 0)
        return -1;
    PyTypeObject *rt = fab_py_add_type(module, &Redacted_spec, NULL);
    if (rt == NULL)
        return -1;
    st->redacted = PyObject_New(PyObject, rt);
    Py_DECREF(rt); /* the instance keeps its type alive */
    if (st->redacted == NULL || PyModule_AddObjectRef(module, "REDACTED", st->redacted) < 0)
        return -1;
    fab_mp_limits d;
    fab_mp_limits_default(&d);
    PyObject *defaults = Py_BuildValue(
        "{sIsIsIsIsIsIsK}", "max_depth", d.max_depth, "max_str", d.max_str, "max_bin",
        d.max_bin, "max_ext", d.max_ext, "max_array", d.max_array, "max_map", d.max_map,
        "max_items", (unsigned long long)d.max_items);
    if (defaults == NULL)
        return -1;
    int rc = PyModule_AddObjectRef(module, "DEFAULT_DECODE_LIMITS", defaults);
    Py_DECREF(defaults);
    if (rc < 0)
        return -1;
    return 0;
}

int fab_py_unpack_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->Ext_Type);
    Py_VISIT(st->Timestamp_Type);
    Py_VISIT(st->redacted);
    for (int i = 0; i < KEY_CACHE; i++)
        Py_VISIT(st->key_cache[i]);
    return 0;
}

void fab_py_unpack_clear(fab_state *st)
{
    Py_CLEAR(st->Ext_Type);
    Py_CLEAR(st->Timestamp_Type);
    Py_CLEAR(st->redacted);
    for (int i = 0; i < KEY_CACHE; i++) {
        Py_CLEAR(st->key_cache[i]);
        st->key_cache_tag[i] = 0;
    }
}
