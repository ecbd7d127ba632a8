/*
 * Content keys: the canonical encoding of Python values, Secret, ContentKey
 * and EvalRequest.
 *
 * The walker below turns Python objects into calls of the core's canonical
 * writer (csrc/enc.c). It runs no Python code of the user's: it reads
 * builtin types through the C API only, so a value cannot change under it,
 * except while the GIL is released to hash a large buffer; for that window
 * it holds strong references to everything it still has to visit and checks
 * container sizes again afterwards.
 */
#include "glue.h"

#include <string.h>

#include <structmember.h>

#include "fabric/enc.h"
#include "fabric/hash.h"

/* Buffers at least this large are hashed with the GIL released (CPython's
 * hashlib uses the same threshold). */
#define GIL_RELEASE_THRESHOLD 2048

#define KEY_SCHEME_TAG "fabric.key/1"

/* ======================================================================== */
/* The walker                                                                */
/* ======================================================================== */

/*
 * Where the walker's bytes go. The walker writes headers and scalars straight
 * into an output window with the core's fab_put_* functions (a call through
 * a sink per item costs more than the item). A window either grows (the
 * result of canonical_bytes, and the scratch space for map keys and set
 * members) or is flushed when full into a hasher or an fab_enc sink.
 */
typedef struct wout {
    uint8_t *data;
    size_t len;
    size_t cap;
    int heap;           /* data was malloc'd by us (else it is a fixed array) */
    int grow;           /* grow when full, instead of flushing */
    fab_sha256 *hasher; /* flush target, or NULL */
    fab_enc *enc;       /* flush target when there is no hasher */
} wout;

#define WALK_STAGE 8192   /* bytes staged before a flush to the hasher/sink */
#define WALK_SMALL 16     /* containers up to this size need no heap array */
#define WALK_SCRATCH 1024 /* scratch bytes before it moves to the heap */

typedef struct walker {
    fab_state *st;
    wout *out;       /* current target: &main, or &scratch inside keys/members */
    wout main;
    wout scratch;    /* a stack of regions, one per map or set being sorted */
    int depth;
    int borrowed;    /* items are visited through borrowed references */
    int restart;     /* a borrowed walk met what it cannot do: walk again owned */
    PyObject *stack[FAB_MAX_DEPTH]; /* containers being visited, for cycles */
    PyObject *err_type;             /* borrowed; set with err_msg */
    PyObject *err_msg;              /* what went wrong, without the path */
    PyObject *path;                 /* list of path segments, innermost first */
    uint8_t stage[WALK_STAGE];      /* main's memory until it needs more */
    uint8_t scratch_stage[WALK_SCRATCH]; /* scratch's memory until it needs more */
} walker;

static int enc_value(walker *w, PyObject *v);

/* A walker whose main output is flushed into hasher, or into enc, or (both
 * NULL) grows in memory. */
static void walker_init(walker *w, fab_state *st, fab_sha256 *hasher, fab_enc *enc)
{
    w->st = st;
    w->main = (wout){w->stage, 0, sizeof(w->stage), 0, hasher == NULL && enc == NULL, hasher, enc};
    w->scratch = (wout){w->scratch_stage, 0, sizeof(w->scratch_stage), 0, 1, NULL, NULL};
    w->out = &w->main;
    w->depth = 0;
    w->borrowed = 0;
    w->restart = 0;
    w->err_type = NULL;
    w->err_msg = NULL;
    w->path = NULL;
}

static void walker_destroy(walker *w)
{
    if (w->main.heap)
        PyMem_Free(w->main.data);
    if (w->scratch.heap)
        PyMem_Free(w->scratch.data);
    w->main.heap = 0;
    w->scratch.heap = 0;
}

/*
 * A walker is either owned (it holds a strong reference to every item it
 * still has to visit: safe while the GIL is released to hash a large buffer,
 * and while an error message calls a key's __repr__) or borrowed (it holds
 * none: faster, valid only while no Python code can run). A borrowed walk
 * gives up, with no exception set, at anything that could run Python code
 * or release the GIL (an error, a set, a foreign buffer, a large buffer to
 * hash); the caller then walks again, owned, from the start.
 */
static int give_up(walker *w)
{
    w->restart = 1;
    return -1;
}

/* Records an error at the current value; the path is added on the way out. */
static int fail(walker *w, PyObject *type, const char *fmt, ...)
{
    if (w->borrowed)
        return give_up(w); /* the owned walk says what went wrong, and where */
    va_list ap;
    va_start(ap, fmt);
    w->err_msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (w->err_msg == NULL)
        return -1; /* a MemoryError is already set */
    w->err_type = type;
    return -1;
}

static int fail_code(walker *w, int code)
{
    if (code == FAB_ENOMEM) {
        PyErr_NoMemory();
        return -1;
    }
    if (code == FAB_EDUPKEY)
        return fail(w, PyExc_ValueError,
                    "two distinct keys or members encode identically "
                    "(for example two NaN objects)");
    if (code == FAB_ERANGE)
        return fail(w, PyExc_ValueError, "value too large to encode (4 GiB limit)");
    return fail(w, w->st->exc[FAB_PYEXC_FabricError], "%s", fab_strerror(code));
}

/* Adds one path segment (a format string) as the error unwinds. */
static void add_segment(walker *w, const char *fmt, ...)
{
    if (w->err_type == NULL)
        return; /* an exception from the C API: passed through unchanged */
    if (w->path == NULL && (w->path = PyList_New(0)) == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    PyObject *seg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (seg) {
        PyList_Append(w->path, seg);
        Py_DECREF(seg);
    }
}

/* A short repr of a mapping key for error paths (never a Secret's value:
 * Secret's repr hides it). */
static PyObject *short_repr(PyObject *v)
{
    PyObject *r = PyObject_Repr(v);
    if (r == NULL) {
        PyErr_Clear();
        return PyUnicode_FromString("<key>");
    }
    if (PyUnicode_GET_LENGTH(r) > 40) {
        PyObject *cut = PyUnicode_Substring(r, 0, 37);
        Py_DECREF(r);
        if (cut == NULL)
            return NULL;
        r = PyUnicode_FromFormat("%U...", cut);
        Py_DECREF(cut);
    }
    return r;
}

/* Turns a walker error into a Python exception "root<path>: message". */
static int walker_raise(walker *w, const char *root)
{
    if (w->err_type == NULL) {
        Py_CLEAR(w->path);
        return -1;
    }
    PyObject *path = PyUnicode_FromString(root);
    if (path && w->path) {
        for (Py_ssize_t i = PyList_GET_SIZE(w->path) - 1; i >= 0 && path; i--) {
            PyObject *joined = PyUnicode_Concat(path, PyList_GET_ITEM(w->path, i));
            Py_SETREF(path, joined);
        }
    }
    if (path)
        PyErr_Format(w->err_type, "%U: %U", path, w->err_msg);
    Py_XDECREF(path);
    Py_CLEAR(w->err_msg);
    Py_CLEAR(w->path);
    w->err_type = NULL;
    return -1;
}

static int enter(walker *w, PyObject *container)
{
    for (int i = 0; i < w->depth; i++)
        if (w->stack[i] == container)
            return fail(w, PyExc_ValueError, "self-referencing container (a cycle) cannot be keyed");
    if (w->depth >= FAB_MAX_DEPTH)
        return fail(w, PyExc_ValueError, "nesting deeper than %d levels", FAB_MAX_DEPTH);
    w->stack[w->depth++] = container;
    return 0;
}

static void leave(walker *w)
{
    w->depth--;
}

static int check(walker *w, int rc)
{
    return rc == FAB_OK ? 0 : fail_code(w, rc);
}

/* Hands main's bytes to its hasher or sink. */
static int out_flush(walker *w, wout *o)
{
    int rc = FAB_OK;
    if (o->len) {
        if (o->hasher)
            rc = fab_sha256_update(o->hasher, o->data, o->len);
        else
            rc = o->enc->sink(o->enc->ctx, o->data, o->len);
        o->len = 0;
    }
    return check(w, rc);
}

/* Makes room for n more bytes in o: flushes or grows. */
static int out_room_slow(walker *w, wout *o, size_t n)
{
    if (!o->grow) {
        if (out_flush(w, o) < 0)
            return -1;
        if (n <= o->cap)
            return 0;
        /* A single write larger than the stage: switch to a heap stage. */
    }
    if (n > (size_t)PY_SSIZE_T_MAX - o->len) {
        PyErr_NoMemory();
        return -1;
    }
    size_t need = o->len + n, cap = o->cap ? o->cap : 256;
    while (cap < need)
        cap = cap > (size_t)PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    uint8_t *p;
    if (o->heap || o->data == NULL) {
        p = PyMem_Realloc(o->data, cap);
    } else {
        p = PyMem_Malloc(cap);
        if (p)
            memcpy(p, o->data, o->len);
    }
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->data = p;
    o->cap = cap;
    o->heap = 1;
    return 0;
}

static inline int room(walker *w, size_t n)
{
    wout *o = w->out;
    if (o->cap - o->len >= n)
        return 0;
    return out_room_slow(w, o, n);
}

/* Writes one item made by a fab_put_* call: PUT(w, fab_put_x(P, ...)). */
#define PUT(w, expr)                                    \
    do {                                                \
        if (room((w), FAB_PUT_MAX) < 0)                 \
            return -1;                                  \
        uint8_t *P = (w)->out->data + (w)->out->len;    \
        (w)->out->len += (expr);                        \
    } while (0)

/* Writes raw data. Runs of GIL_RELEASE_THRESHOLD bytes or more bypass the
 * stage: they are hashed with the GIL released, or passed to the sink. */
static int write_body(walker *w, const void *data, size_t len)
{
    wout *o = w->out;
    if (!o->grow && len >= GIL_RELEASE_THRESHOLD) {
        if (w->borrowed)
            return give_up(w);
        if (out_flush(w, o) < 0)
            return -1;
        int rc;
        if (o->hasher) {
            Py_BEGIN_ALLOW_THREADS
            rc = fab_sha256_update(o->hasher, data, len);
            Py_END_ALLOW_THREADS
        } else {
            rc = o->enc->sink(o->enc->ctx, data, len);
        }
        return check(w, rc);
    }
    if (room(w, len) < 0)
        return -1;
    fab_copy(o->data + o->len, data, len);
    o->len += len;
    return 0;
}

static int enc_str(walker *w, PyObject *v)
{
    Py_ssize_t n;
    const char *s;
    if (PyUnicode_IS_COMPACT_ASCII(v)) {
        /* ASCII is its own UTF-8. */
        s = (const char *)PyUnicode_DATA(v);
        n = PyUnicode_GET_LENGTH(v);
    } else {
        s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                PyErr_Clear();
                return fail(w, PyExc_ValueError,
                            "str contains a lone surrogate and is not valid UTF-8");
            }
            return -1;
        }
    }
    if ((size_t)n > UINT32_MAX)
        return fail_code(w, FAB_ERANGE);
    if (n < 256 && room(w, FAB_PUT_MAX + (size_t)n) == 0) {
        /* The common short string: header and bytes in one go. */
        wout *o = w->out;
        o->len += fab_put_str_header(o->data + o->len, (uint32_t)n);
        fab_copy(o->data + o->len, (const uint8_t *)s, (size_t)n);
        o->len += (size_t)n;
        return 0;
    }
    PUT(w, fab_put_str_header(P, (uint32_t)n));
    return write_body(w, s, (size_t)n);
}

static int enc_bin(walker *w, const void *data, size_t n)
{
    if (n > UINT32_MAX)
        return fail_code(w, FAB_ERANGE);
    PUT(w, fab_put_bin_header(P, (uint32_t)n));
    return write_body(w, data, n);
}

static int enc_bigint(walker *w, PyObject *v)
{
    /* Bits of the magnitude plus one sign bit, rounded up to bytes. */
    size_t nbits = _PyLong_NumBits(v);
    if (nbits == (size_t)-1 && PyErr_Occurred())
        return -1;
    size_t nbytes = nbits / 8 + 1;
    uint8_t small[64];
    uint8_t *buf = nbytes <= sizeof(small) ? small : PyMem_Malloc(nbytes);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = -1;
    if (_PyLong_AsByteArray((PyLongObject *)v, buf, nbytes, 0, 1) < 0)
        goto done;
    /* Trim redundant sign-extension bytes to the minimal form. */
    size_t off = 0;
    while (nbytes - off > 1 &&
           ((buf[off] == 0x00 && !(buf[off + 1] & 0x80)) ||
            (buf[off] == 0xff && (buf[off + 1] & 0x80))))
        off++;
    /* The core checks the form and range; it writes into a small buffer
     * sink so its checks stay the one authority. */
    fab_buf tmp;
    fab_enc sub;
    fab_buf_init(&tmp);
    fab_enc_init(&sub, fab_buf_sink, &tmp);
    rc = check(w, fab_enc_bigint(&sub, buf + off, nbytes - off));
    if (rc == 0)
        rc = write_body(w, tmp.data, tmp.len);
    fab_buf_destroy(&tmp);
done:
    if (buf != small)
        PyMem_Free(buf);
    return rc;
}

/* The value of an int of at most one internal digit (|x| < 2**30), read
 * without a call: most ints in arguments are such. 1 when it is one. */
static inline int small_int(PyObject *v, long long *x)
{
#if PY_VERSION_HEX < 0x030C0000
    Py_ssize_t size = Py_SIZE(v);
    if (size < -1 || size > 1)
        return 0;
    *x = size == 0 ? 0 : (long long)size * (long long)((PyLongObject *)v)->ob_digit[0];
    return 1;
#else
    if (!PyUnstable_Long_IsCompact((PyLongObject *)v))
        return 0;
    *x = (long long)PyUnstable_Long_CompactValue((PyLongObject *)v);
    return 1;
#endif
}

static int enc_int(walker *w, PyObject *v)
{
    long long small;
    if (small_int(v, &small)) {
        PUT(w, fab_put_int64(P, (int64_t)small));
        return 0;
    }
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (!overflow) {
        PUT(w, fab_put_int64(P, (int64_t)x));
        return 0;
    }
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (!(u == (unsigned long long)-1 && PyErr_Occurred())) {
            PUT(w, fab_put_uint64(P, (uint64_t)u));
            return 0;
        }
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
    }
    return enc_bigint(w, v);
}

static int enc_buffer(walker *w, PyObject *v)
{
    /* Exporters other than these two may run Python code. */
    if (w->borrowed && !PyByteArray_CheckExact(v) && !PyMemoryView_Check(v))
        return give_up(w);
    Py_buffer view;
    if (PyObject_GetBuffer(v, &view, PyBUF_SIMPLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            return fail(w, PyExc_TypeError,
                        "cannot key a non-contiguous buffer of type %s "
                        "(make a contiguous copy first)",
                        Py_TYPE(v)->tp_name);
        }
        return -1;
    }
    int rc = enc_bin(w, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return rc;
}

/*
 * Strong references to the items of a container, taken before any of them is
 * encoded: while the GIL is released to hash a large buffer, another thread
 * may change the container, and the walker must still own what it visits.
 */
typedef struct snapshot {
    PyObject **items;
    Py_ssize_t n;
    int owned;      /* items are strong references */
    PyObject *small[2 * WALK_SMALL];
} snapshot;

static int snapshot_alloc(walker *w, snapshot *s, Py_ssize_t n)
{
    s->n = 0;
    s->owned = !w->borrowed;
    if (n <= (Py_ssize_t)(sizeof(s->small) / sizeof(s->small[0]))) {
        s->items = s->small;
        return 0;
    }
    s->items = PyMem_New(PyObject *, (size_t)n);
    if (s->items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static inline void snapshot_add(snapshot *s, PyObject *item)
{
    if (s->owned)
        Py_INCREF(item);
    s->items[s->n++] = item;
}

static void snapshot_release(snapshot *s)
{
    if (s->owned)
        for (Py_ssize_t i = 0; i < s->n; i++)
            Py_DECREF(s->items[i]);
    if (s->items != s->small)
        PyMem_Free(s->items);
}

/* An empty container is one header byte. It cannot hold itself, so only
 * the depth limit could refuse it, as enter() would. */
static inline int empty_container(walker *w, Py_ssize_t n)
{
    return n == 0 && w->depth < FAB_MAX_DEPTH;
}

static int enc_sequence(walker *w, PyObject *v)
{
    int rc = -1;
    snapshot snap;
    /* A tuple cannot change: one reference to it holds its items. A list
     * is copied item by item. */
    int is_tuple = PyTuple_Check(v);
    Py_ssize_t n = is_tuple ? PyTuple_GET_SIZE(v) : PyList_GET_SIZE(v);
    if (empty_container(w, n)) {
        PUT(w, fab_put_array_header(P, 0));
        return 0;
    }
    if (enter(w, v) < 0)
        return -1;
    PyObject **items;
    if (is_tuple || w->borrowed) {
        /* Nothing to copy: a borrowed walk runs no Python code, so not even
         * a list can change under it. */
        if (snapshot_alloc(w, &snap, 1) < 0)
            goto out;
        snapshot_add(&snap, v);
        items = is_tuple ? ((PyTupleObject *)v)->ob_item : ((PyListObject *)v)->ob_item;
    } else {
        if (snapshot_alloc(w, &snap, n) < 0)
            goto out;
        for (Py_ssize_t i = 0; i < n; i++)
            snapshot_add(&snap, PyList_GET_ITEM(v, i));
        items = snap.items;
    }
    if ((size_t)n > UINT32_MAX) {
        fail_code(w, FAB_ERANGE);
        goto done;
    }
    if (room(w, FAB_PUT_MAX) < 0)
        goto done;
    w->out->len += fab_put_array_header(w->out->data + w->out->len, (uint32_t)n);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (enc_value(w, items[i]) < 0) {
            add_segment(w, "[%zd]", i);
            goto done;
        }
    }
    rc = 0;
done:
    snapshot_release(&snap);
out:
    leave(w);
    return rc;
}

/* Encodes one value onto the scratch stack (for sorting keys and members). */
static int enc_into_scratch(walker *w, PyObject *v)
{
    wout *saved = w->out;
    w->out = &w->scratch;
    int rc = enc_value(w, v);
    w->out = saved;
    return rc;
}

/*
 * Ends a sorted container whose keys or members occupied scratch from base.
 * When the container itself was being written onto scratch (it is part of
 * an enclosing key), its output follows the region: move it down.
 */
static void scratch_pop(walker *w, size_t base, size_t region_end)
{
    wout *s = &w->scratch;
    if (w->out == s) {
        size_t emitted = s->len - region_end;
        memmove(s->data + base, s->data + region_end, emitted);
        s->len = base + emitted;
    } else {
        s->len = base;
    }
}

/* Spans for up to WALK_SMALL entries live on the stack. */
typedef struct span_array {
    fab_span *spans;
    fab_span small[WALK_SMALL];
} span_array;

static int spans_alloc(span_array *a, Py_ssize_t n)
{
    if (n <= WALK_SMALL) {
        a->spans = a->small;
        return 0;
    }
    a->spans = PyMem_New(fab_span, (size_t)n);
    if (a->spans == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void spans_free(span_array *a)
{
    if (a->spans != a->small)
        PyMem_Free(a->spans);
}

/* Sorts the n spans encoded on scratch from base (offsets in .p until now)
 * and turns .p back into offsets afterwards, since scratch may still move. */
static int sort_scratch_spans(walker *w, fab_span *spans, Py_ssize_t n)
{
    uint8_t *data = w->scratch.data;
    for (Py_ssize_t i = 0; i < n; i++)
        spans[i].p = data + (uintptr_t)spans[i].p;
    int rc = fab_canon_sort_spans(spans, (size_t)n);
    for (Py_ssize_t i = 0; i < n; i++)
        spans[i].p = (const uint8_t *)(uintptr_t)(spans[i].p - data);
    return check(w, rc);
}

/*
 * Two memos of recent map key orders, so that the many dicts a program keys
 * with the same keys (rows of a table, one config shape per call) are
 * neither sorted nor, most of the time, even encoded again.
 *
 * Shapes: the keys themselves. A dict whose keys are, in its iteration
 * order, the very same str objects as a remembered dict's (compared by
 * identity) has the same key encodings and the same order: str objects are
 * immutable, and the memo holds strong references to the keys it remembers,
 * so an address cannot be reused by another string while it is remembered.
 * A hit writes the remembered encodings instead of encoding the keys; the
 * entry is pinned meanwhile, so values that are dicts themselves cannot
 * replace it.
 *
 * Orders: the key encodings. Encodings are self-delimiting, so equal bytes
 * for the same number of keys mean the same keys at the same offsets, and
 * the order (and the absence of duplicates) found once holds again. This
 * serves keys that are equal but not identical (parsed from JSON, say).
 *
 * Both are direct-mapped, bounded (SHAPE_ENTRIES and MEMO_ENTRIES entries of
 * at most WALK_SMALL keys) and read and written only while the GIL is held.
 * An order hit is copied out before any value is encoded; a pinned shape is
 * only read, by any thread, until its last user unpins it.
 */
#define MEMO_ENTRIES 16
#define MEMO_MAX_BYTES 160
#define SHAPE_BITS 6
#define SHAPE_ENTRIES (1 << SHAPE_BITS)
#define SHAPE_MAX_BYTES 256

struct fab_sort_memo {
    struct {
        uint16_t len;
        uint8_t n;
        uint8_t order[WALK_SMALL];
        uint8_t bytes[MEMO_MAX_BYTES];
    } e[MEMO_ENTRIES];
    struct shape {
        uint8_t n;
        uint32_t pins;                   /* dicts being written from it now */
        uint8_t order[WALK_SMALL];       /* dict positions, in encoded-key order */
        uint16_t off[WALK_SMALL + 1];    /* where each sorted key starts in bytes */
        PyObject *keys[WALK_SMALL];      /* strong references, in dict order */
        uint8_t bytes[SHAPE_MAX_BYTES];  /* the key encodings, sorted */
    } shape[SHAPE_ENTRIES];
};

static struct fab_sort_memo *sort_memo(walker *w)
{
    if (w->st->sort_memo == NULL)
        w->st->sort_memo = PyMem_Calloc(1, sizeof(struct fab_sort_memo));
    return w->st->sort_memo; /* NULL only under memory pressure: no memo then */
}

static void sort_memo_free(struct fab_sort_memo *m)
{
    if (m == NULL)
        return;
    for (int s = 0; s < SHAPE_ENTRIES; s++)
        for (int i = 0; i < m->shape[s].n; i++)
            Py_DECREF(m->shape[s].keys[i]);
    PyMem_Free(m);
}

/* items holds key, value, key, value...: the slot of the n keys' identities
 * (the first, middle and last key; a lookup compares all of them). */
static unsigned shape_slot(PyObject *const *items, Py_ssize_t n)
{
    uint64_t h = (uint64_t)n;
    h = (h ^ ((uint64_t)(uintptr_t)items[0] >> 4)) * 0x9E3779B97F4A7C15ull;
    h = (h ^ ((uint64_t)(uintptr_t)items[2 * (n / 2)] >> 4)) * 0x9E3779B97F4A7C15ull;
    h = (h ^ ((uint64_t)(uintptr_t)items[2 * (n - 1)] >> 4)) * 0x9E3779B97F4A7C15ull;
    return (unsigned)(h >> (64 - SHAPE_BITS));
}

/* The remembered shape of these keys, pinned (it is not replaced until
 * shape_unpin), or NULL. */
static struct shape *shape_find(walker *w, PyObject *const *items, Py_ssize_t n)
{
    struct fab_sort_memo *m = w->st->sort_memo;
    if (m == NULL || n < 2 || n > WALK_SMALL)
        return NULL;
    struct shape *e = &m->shape[shape_slot(items, n)];
    if (e->n != n)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (e->keys[i] != items[2 * i])
            return NULL;
    e->pins++;
    return e;
}

static void shape_unpin(struct shape *e)
{
    e->pins--;
}

/* Remembers the keys of a dict whose keys are all exact str, with their
 * sorted encodings (spans: offsets into scratch, sorted). */
static void shape_store(walker *w, PyObject *const *items, Py_ssize_t n, const fab_span *spans)
{
    if (n < 2 || n > WALK_SMALL)
        return;
    size_t len = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_CheckExact(items[2 * i]))
            return;
        len += spans[i].len;
    }
    struct fab_sort_memo *m;
    if (len > SHAPE_MAX_BYTES || (m = sort_memo(w)) == NULL)
        return;
    unsigned slot = shape_slot(items, n);
    if (m->shape[slot].pins)
        return; /* a dict is being written from it (an enclosing one) */
    /* The old entry's keys are exact str: dropping them runs no Python code. */
    for (int i = 0; i < m->shape[slot].n; i++)
        Py_DECREF(m->shape[slot].keys[i]);
    size_t at = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        m->shape[slot].keys[i] = Py_NewRef(items[2 * i]);
        m->shape[slot].order[i] = (uint8_t)spans[i].index;
        m->shape[slot].off[i] = (uint16_t)at;
        memcpy(m->shape[slot].bytes + at, w->scratch.data + (uintptr_t)spans[i].p, spans[i].len);
        at += spans[i].len;
    }
    m->shape[slot].off[n] = (uint16_t)at;
    m->shape[slot].n = (uint8_t)n;
}

static unsigned memo_slot(const uint8_t *p, size_t len, Py_ssize_t n)
{
    uint32_t h = 2166136261u ^ (uint32_t)n;
    for (size_t i = 0; i < len; i += 4)
        h = (h ^ p[i]) * 16777619u;
    return (h ^ (uint32_t)len) % MEMO_ENTRIES;
}

/* Orders spans (offsets into scratch, as left by the key loop) from the
 * memo when it knows these key bytes; 1 on a hit, 0 on a miss. */
static int memo_lookup(walker *w, fab_span *spans, Py_ssize_t n, size_t base, size_t end,
                       unsigned *slot)
{
    struct fab_sort_memo *m = w->st->sort_memo;
    size_t len = end - base;
    if (n < 2 || n > WALK_SMALL || len > MEMO_MAX_BYTES)
        return 0;
    const uint8_t *p = w->scratch.data + base;
    *slot = memo_slot(p, len, n);
    if (m == NULL || m->e[*slot].n != n || m->e[*slot].len != len ||
        memcmp(m->e[*slot].bytes, p, len) != 0)
        return 0;
    fab_span tmp[WALK_SMALL];
    for (Py_ssize_t i = 0; i < n; i++)
        tmp[i] = spans[i];
    for (Py_ssize_t i = 0; i < n; i++)
        spans[i] = tmp[m->e[*slot].order[i]];
    return 1;
}

static void memo_store(walker *w, const fab_span *sorted, Py_ssize_t n, size_t base, size_t end,
                       unsigned slot)
{
    size_t len = end - base;
    struct fab_sort_memo *m;
    if (n < 2 || n > WALK_SMALL || len > MEMO_MAX_BYTES || (m = sort_memo(w)) == NULL)
        return;
    m->e[slot].n = (uint8_t)n;
    m->e[slot].len = (uint16_t)len;
    memcpy(m->e[slot].bytes, w->scratch.data + base, len);
    for (Py_ssize_t i = 0; i < n; i++)
        m->e[slot].order[i] = (uint8_t)sorted[i].index;
}

/* Writes the common scalars inline, into room already made for
 * FAB_PUT_MAX bytes: 1 when v was one of them, 0 to leave it to enc_value. */
static inline int put_scalar(wout *o, PyObject *v)
{
    PyTypeObject *tp = Py_TYPE(v);
    long long x;
    uint8_t *p = o->data + o->len;
    if (tp == &PyLong_Type && small_int(v, &x))
        o->len += fab_put_int64(p, (int64_t)x);
    else if (tp == &PyFloat_Type)
        o->len += fab_put_double(p, PyFloat_AS_DOUBLE(v));
    else if (v == Py_None)
        o->len += fab_put_nil(p);
    else if (v == Py_True || v == Py_False)
        o->len += fab_put_bool(p, v == Py_True);
    else
        return 0;
    return 1;
}

/* The path segment of a dict entry that failed: "[key]" for its value,
 * "<key key>" for its key. */
static void entry_failed(walker *w, const char *fmt, PyObject *key)
{
    if (w->err_type) {
        PyObject *r = short_repr(key);
        if (r) {
            add_segment(w, fmt, r);
            Py_DECREF(r);
        }
    }
}

/* Writes one map entry: the key's klen encoded bytes at *base + off (read
 * after room is made, since *base may be scratch, which may move), then
 * the value. Inlined into both map loops: as a call it cost 5-7 % of
 * keying a small dict. */
static inline __attribute__((always_inline)) int
put_entry(walker *w, const uint8_t *const *base, size_t off, size_t klen, PyObject *key,
          PyObject *value)
{
    if (room(w, klen + FAB_PUT_MAX) < 0)
        return -1;
    wout *o = w->out;
    fab_copy(o->data + o->len, *base + off, klen);
    o->len += klen;
    if (!put_scalar(o, value) && enc_value(w, value) < 0) {
        entry_failed(w, "[%U]", key);
        return -1;
    }
    return 0;
}

/* Writes a dict whose keys a remembered shape knows: the key encodings are
 * copied from the shape (pinned by the caller), the values encoded. */
static int enc_dict_known(walker *w, PyObject *const *items, Py_ssize_t n, const struct shape *e)
{
    if (room(w, FAB_PUT_MAX) < 0)
        return -1;
    w->out->len += fab_put_map_header(w->out->data + w->out->len, (uint32_t)n);
    const uint8_t *bytes = e->bytes;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at = 2 * (Py_ssize_t)e->order[i];
        if (put_entry(w, &bytes, e->off[i], (size_t)(e->off[i + 1] - e->off[i]), items[at],
                      items[at + 1]) < 0)
            return -1;
    }
    return 0;
}

static int enc_dict(walker *w, PyObject *v)
{
    int rc = -1;
    snapshot snap;
    span_array sa;
    size_t base = w->scratch.len, region_end = base;
    Py_ssize_t n = PyDict_GET_SIZE(v);
    if (empty_container(w, n)) {
        PUT(w, fab_put_map_header(P, 0));
        return 0;
    }
    if (enter(w, v) < 0)
        return -1;
    if (snapshot_alloc(w, &snap, 2 * n) < 0)
        goto out;
    if (spans_alloc(&sa, n) < 0) {
        snapshot_release(&snap);
        goto out;
    }
    {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        if (snap.owned) {
            while (snap.n < 2 * n && PyDict_Next(v, &pos, &key, &value)) {
                snapshot_add(&snap, key);
                snapshot_add(&snap, value);
            }
        } else {
            PyObject **it = snap.items, **end = snap.items + 2 * n;
            while (it < end && PyDict_Next(v, &pos, &key, &value)) {
                it[0] = key;
                it[1] = value;
                it += 2;
            }
            snap.n = it - snap.items;
        }
    }
    n = snap.n / 2;
    struct shape *known = shape_find(w, snap.items, n);
    if (known) {
        /* Nothing goes onto scratch: region_end stays base. */
        rc = enc_dict_known(w, snap.items, n, known);
        shape_unpin(known);
        goto done;
    }
    fab_span *spans = sa.spans;
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t start = w->scratch.len;
        PyObject *key = snap.items[2 * i];
        if (enc_into_scratch(w, key) < 0) {
            entry_failed(w, "<key %U>", key);
            goto done;
        }
        /* Offsets for now: the scratch buffer may still move. */
        spans[i].p = (const uint8_t *)(uintptr_t)start;
        spans[i].len = w->scratch.len - start;
        spans[i].index = (size_t)i;
    }
    unsigned slot = 0;
    if (!memo_lookup(w, spans, n, base, w->scratch.len, &slot)) {
        if (sort_scratch_spans(w, spans, n) < 0)
            goto done;
        memo_store(w, spans, n, base, w->scratch.len, slot);
    }
    shape_store(w, snap.items, n, spans);
    region_end = w->scratch.len;
    if ((size_t)n > UINT32_MAX) {
        fail_code(w, FAB_ERANGE);
        goto done;
    }
    if (room(w, FAB_PUT_MAX) < 0)
        goto done;
    w->out->len += fab_put_map_header(w->out->data + w->out->len, (uint32_t)n);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at = 2 * (Py_ssize_t)spans[i].index;
        if (put_entry(w, (const uint8_t *const *)&w->scratch.data, (uintptr_t)spans[i].p,
                      spans[i].len, snap.items[at], snap.items[at + 1]) < 0)
            goto done;
    }
    rc = 0;
done:
    if (rc == 0) {
        if (region_end != base)
            scratch_pop(w, base, region_end);
    } else if (w->out != &w->scratch) {
        w->scratch.len = base;
    }
    spans_free(&sa);
    snapshot_release(&snap);
out:
    leave(w);
    return rc;
}

static int enc_set(walker *w, PyObject *v)
{
    int rc = -1;
    PyObject *members = NULL;
    span_array sa;
    sa.spans = sa.small;
    size_t base = w->scratch.len, region_end = base;
    if (w->borrowed)
        return give_up(w); /* the tuple below may start a collection */
    if (enter(w, v) < 0)
        return -1;
    members = PySequence_Tuple(v); /* iterating a set runs no user code */
    if (members == NULL)
        goto done;
    Py_ssize_t n = PyTuple_GET_SIZE(members);
    if (spans_alloc(&sa, n) < 0)
        goto done;
    fab_span *spans = sa.spans;
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t start = w->scratch.len;
        if (enc_into_scratch(w, PyTuple_GET_ITEM(members, i)) < 0) {
            add_segment(w, "<member>");
            goto done;
        }
        spans[i].p = (const uint8_t *)(uintptr_t)start;
        spans[i].len = w->scratch.len - start;
        spans[i].index = (size_t)i;
    }
    region_end = w->scratch.len;
    if (sort_scratch_spans(w, spans, n) < 0)
        goto done;
    uint8_t header[FAB_PUT_MAX];
    if ((size_t)n > UINT32_MAX) {
        fail_code(w, FAB_ERANGE);
        goto done;
    }
    size_t hlen = fab_put_array_header(header, (uint32_t)n);
    size_t payload = hlen + (region_end - base);
    if (payload > UINT32_MAX) {
        fail_code(w, FAB_ERANGE);
        goto done;
    }
    if (room(w, 2 * FAB_PUT_MAX + (region_end - base)) < 0)
        goto done;
    {
        /* Room is made: neither buffer moves below. */
        wout *o = w->out;
        o->len += fab_put_ext_header(o->data + o->len, FAB_EXT_SET, (uint32_t)payload);
        memcpy(o->data + o->len, header, hlen);
        o->len += hlen;
        for (Py_ssize_t i = 0; i < n; i++) {
            fab_copy(o->data + o->len, w->scratch.data + (uintptr_t)spans[i].p, spans[i].len);
            o->len += spans[i].len;
        }
    }
    rc = 0;
done:
    if (rc == 0)
        scratch_pop(w, base, region_end);
    else if (w->out != &w->scratch)
        w->scratch.len = base;
    spans_free(&sa);
    Py_XDECREF(members);
    leave(w);
    return rc;
}

/* The kinds enc_value does not dispatch itself: ints beyond one digit, the
 * scalars it had no room for, Secret, subclasses of the builtin kinds, sets
 * and buffers. Out of line, so that enc_value stays a few compares and a
 * tail call. */
static __attribute__((noinline)) int enc_other(walker *w, PyObject *v)
{
    PyTypeObject *tp = Py_TYPE(v);
    if (tp == &PyLong_Type)
        return enc_int(w, v);
    if (room(w, FAB_PUT_MAX) < 0)
        return -1;
    if (put_scalar(w->out, v))
        return 0; /* when enc_value found no room for it */
    if (tp == w->st->Secret_Type) {
        PUT(w, fab_put_ext_header(P, FAB_EXT_SECRET, 0));
        return 0;
    }
    /* Subclasses of the builtin kinds encode as their kind. */
    if (PyUnicode_Check(v))
        return enc_str(w, v);
    if (PyLong_Check(v))
        return enc_int(w, v);
    if (PyFloat_Check(v)) {
        PUT(w, fab_put_double(P, PyFloat_AS_DOUBLE(v)));
        return 0;
    }
    if (PyTuple_Check(v) || PyList_Check(v))
        return enc_sequence(w, v);
    if (PyDict_Check(v))
        return enc_dict(w, v);
    if (PyAnySet_Check(v))
        return enc_set(w, v);
    if (PyObject_CheckBuffer(v))
        return enc_buffer(w, v);
    return fail(w, PyExc_TypeError, "cannot key object of type %s", tp->tp_name);
}

static int enc_value(walker *w, PyObject *v)
{
    PyTypeObject *tp = Py_TYPE(v);
    if (tp == &PyUnicode_Type)
        return enc_str(w, v);
    if (tp == &PyDict_Type)
        return enc_dict(w, v);
    if (tp == &PyTuple_Type || tp == &PyList_Type)
        return enc_sequence(w, v);
    if (tp == &PyBytes_Type)
        return enc_bin(w, PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v));
    wout *o = w->out;
    if (o->cap - o->len >= FAB_PUT_MAX && put_scalar(o, v))
        return 0; /* None, bools, floats, ints of one digit */
    return enc_other(w, v);
}

/* A walker (about 10 KB, most of it the stage) lives on the C stack of
 * its caller: no allocation for a small value. */
int fab_py_encode_value(fab_state *st, fab_enc *enc, PyObject *value, const char *root)
{
    walker w;
    walker_init(&w, st, NULL, enc);
    int rc = enc_value(&w, value);
    if (rc < 0)
        walker_raise(&w, root);
    else if ((rc = out_flush(&w, &w.main)) < 0)
        walker_raise(&w, root);
    walker_destroy(&w);
    return rc;
}

/* Takes the state's spare hasher, or makes one. Under the GIL. */
static fab_sha256 *take_hasher(fab_state *st)
{
    fab_sha256 *h = st->spare_hasher;
    if (h) {
        st->spare_hasher = NULL;
        return h;
    }
    int rc = fab_sha256_new(&h);
    if (rc != FAB_OK) {
        fab_py_raise_code(st, rc, "creating a SHA-256 context");
        return NULL;
    }
    return h;
}

/* Returns a hasher for reuse. fab_sha256_final leaves it reset already;
 * an abandoned digest (dirty) is reset here. */
static void give_hasher(fab_state *st, fab_sha256 *h, int dirty)
{
    if (st->spare_hasher == NULL && (!dirty || fab_sha256_reset(h) == FAB_OK))
        st->spare_hasher = h;
    else
        fab_sha256_free(h);
}

/* ======================================================================== */
/* canonical_bytes                                                          */
/* ======================================================================== */

static PyObject *canonical_bytes(PyObject *module, PyObject *value)
{
    fab_state *st = fab_get_state(module);
    walker w;
    walker_init(&w, st, NULL, NULL);
    w.borrowed = 1;
    int rc = enc_value(&w, value);
    if (rc < 0 && w.restart) {
        walker_destroy(&w);
        walker_init(&w, st, NULL, NULL);
        rc = enc_value(&w, value);
    }
    PyObject *out = NULL;
    if (rc < 0)
        walker_raise(&w, "value");
    else
        out = PyBytes_FromStringAndSize((const char *)w.main.data, (Py_ssize_t)w.main.len);
    walker_destroy(&w);
    return out;
}

/* ======================================================================== */
/* Secret                                                                    */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    PyObject *value;
} SecretObject;

static PyObject *Secret_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *value;
    static char *kwlist[] = {"value", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Secret", kwlist, &value))
        return NULL;
    SecretObject *self = (SecretObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->value = Py_NewRef(value);
    return (PyObject *)self;
}

static int Secret_traverse(SecretObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->value);
    return 0;
}

static int Secret_clear(SecretObject *self)
{
    Py_CLEAR(self->value);
    return 0;
}

static void Secret_dealloc(SecretObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Secret_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *Secret_repr(PyObject *self)
{
    FAB_UNUSED(self);
    return PyUnicode_FromString("Secret('***')");
}

static PyObject *Secret_reveal(SecretObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self->value);
}

static PyObject *Secret_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    FAB_UNUSED(self);
    PyErr_SetString(PyExc_TypeError,
                    "a Secret cannot be pickled: its value would leave the process "
                    "(pass the secret to the worker another way)");
    return NULL;
}

static PyMethodDef Secret_methods[] = {
    {"reveal", (PyCFunction)Secret_reveal, METH_NOARGS,
     "reveal($self, /)\n--\n\nReturn the wrapped value."},
    {"__reduce__", Secret_reduce, METH_NOARGS, NULL},
    {"__reduce_ex__", (PyCFunction)Secret_reduce, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Secret_slots[] = {
    {Py_tp_doc, "Secret(value)\n--\n\n"
                "A sensitive argument. Its value never enters content-key bytes "
                "(a fixed marker does), frames, the ledger, logs, exception text "
                "or repr. Use .reveal() inside the op to read it."},
    {Py_tp_new, Secret_new},
    {Py_tp_traverse, Secret_traverse},
    {Py_tp_clear, Secret_clear},
    {Py_tp_dealloc, Secret_dealloc},
    {Py_tp_repr, Secret_repr},
    {Py_tp_str, Secret_repr},
    {Py_tp_methods, Secret_methods},
    {0, NULL},
};

static PyType_Spec Secret_spec = {
    .name = "fabric.Secret",
    .basicsize = sizeof(SecretObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Secret_slots,
};

/* ======================================================================== */
/* ContentKey                                                               */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    uint8_t digest[FAB_SHA256_LEN];
} ContentKeyObject;

static PyObject *key_from_digest(fab_state *st, const uint8_t *digest)
{
    /* Every field is set below: no need for tp_alloc's zeroing. */
    PyTypeObject *tp = st->ContentKey_Type;
    ContentKeyObject *k = PyObject_Malloc(sizeof(ContentKeyObject));
    if (k == NULL)
        return PyErr_NoMemory();
    PyObject_Init((PyObject *)k, tp);
    memcpy(k->digest, digest, FAB_SHA256_LEN);
    return (PyObject *)k;
}

static PyObject *ContentKey_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Py_buffer view;
    static char *kwlist[] = {"digest", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*:ContentKey", kwlist, &view))
        return NULL;
    if (view.len != FAB_SHA256_LEN) {
        PyErr_Format(PyExc_ValueError,
                     "ContentKey needs a %d-byte SHA-256 digest, got %zd bytes",
                     FAB_SHA256_LEN, view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    ContentKeyObject *k = (ContentKeyObject *)type->tp_alloc(type, 0);
    if (k)
        memcpy(k->digest, view.buf, FAB_SHA256_LEN);
    PyBuffer_Release(&view);
    return (PyObject *)k;
}

static void ContentKey_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *ContentKey_hexstr(ContentKeyObject *k, const char *prefix)
{
    static const char hexdigits[] = "0123456789abcdef";
    char buf[8 + 2 * FAB_SHA256_LEN];
    size_t p = strlen(prefix);
    memcpy(buf, prefix, p);
    for (int i = 0; i < FAB_SHA256_LEN; i++) {
        buf[p++] = hexdigits[k->digest[i] >> 4];
        buf[p++] = hexdigits[k->digest[i] & 15];
    }
    return PyUnicode_FromStringAndSize(buf, (Py_ssize_t)p);
}

static PyObject *ContentKey_str(PyObject *self)
{
    return ContentKey_hexstr((ContentKeyObject *)self, "sha256:");
}

static PyObject *ContentKey_repr(PyObject *self)
{
    PyObject *s = ContentKey_str(self);
    if (s == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("ContentKey.parse('%U')", s);
    Py_DECREF(s);
    return r;
}

static PyObject *ContentKey_get_hex(PyObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return ContentKey_hexstr((ContentKeyObject *)self, "");
}

static PyObject *ContentKey_get_digest(PyObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyBytes_FromStringAndSize((const char *)((ContentKeyObject *)self)->digest,
                                     FAB_SHA256_LEN);
}

static Py_hash_t ContentKey_hash(PyObject *self)
{
    /* The digest is uniformly distributed: its first bytes make a hash. */
    Py_hash_t h;
    memcpy(&h, ((ContentKeyObject *)self)->digest, sizeof(h));
    return h == -1 ? -2 : h;
}

static PyObject *ContentKey_richcompare(PyObject *a, PyObject *b, int op)
{
    fab_state *st = fab_state_from_type(Py_TYPE(a));
    if (st == NULL) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (!PyObject_TypeCheck(b, st->ContentKey_Type))
        Py_RETURN_NOTIMPLEMENTED;
    int c = memcmp(((ContentKeyObject *)a)->digest, ((ContentKeyObject *)b)->digest,
                   FAB_SHA256_LEN);
    Py_RETURN_RICHCOMPARE(c, 0, op);
}

static int ContentKey_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, self, ((ContentKeyObject *)self)->digest,
                             FAB_SHA256_LEN, 1, flags);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* upper case is refused: one spelling per key */
}

static PyObject *ContentKey_parse(PyObject *cls, PyObject *text)
{
    fab_state *st = fab_state_from_type((PyTypeObject *)cls);
    if (st == NULL)
        return NULL;
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "ContentKey.parse() takes a str, not %s",
                     Py_TYPE(text)->tp_name);
        return NULL;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    if (s == NULL)
        return NULL;
    uint8_t digest[FAB_SHA256_LEN];
    if (n != 7 + 2 * FAB_SHA256_LEN || memcmp(s, "sha256:", 7) != 0)
        goto bad;
    for (int i = 0; i < FAB_SHA256_LEN; i++) {
        int hi = hexval((unsigned char)s[7 + 2 * i]), lo = hexval((unsigned char)s[8 + 2 * i]);
        if (hi < 0 || lo < 0)
            goto bad;
        digest[i] = (uint8_t)(hi << 4 | lo);
    }
    return key_from_digest(st, digest);
bad:
    PyErr_Format(PyExc_ValueError,
                 "not a content key: %.80R (expected 'sha256:' and 64 lower-case hex digits)",
                 text);
    return NULL;
}

static PyObject *ContentKey_of(PyObject *cls, PyObject *request);

static PyObject *ContentKey_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *digest = ContentKey_get_digest(self, NULL);
    if (digest == NULL)
        return NULL;
    return Py_BuildValue("(O(N))", Py_TYPE(self), digest);
}

static PyObject *ContentKey_repr_html(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ContentKeyObject *k = (ContentKeyObject *)self;
    PyObject *full = ContentKey_str(self);
    if (full == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat(
        "<code title=\"%U\">sha256:%02x%02x%02x%02x%02x%02x&hellip;</code>", full,
        k->digest[0], k->digest[1], k->digest[2], k->digest[3], k->digest[4], k->digest[5]);
    Py_DECREF(full);
    return r;
}

static PyMethodDef ContentKey_methods[] = {
    {"of", ContentKey_of, METH_O | METH_CLASS,
     "of($cls, request, /)\n--\n\nThe content key of an EvalRequest."},
    {"parse", ContentKey_parse, METH_O | METH_CLASS,
     "parse($cls, text, /)\n--\n\nParse 'sha256:<64 hex digits>' back into a key."},
    {"__reduce__", ContentKey_reduce, METH_NOARGS, NULL},
    {"_repr_html_", ContentKey_repr_html, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ContentKey_getset[] = {
    {"digest", ContentKey_get_digest, NULL, "The 32 raw digest bytes.", NULL},
    {"hex", ContentKey_get_hex, NULL, "The digest as 64 lower-case hex digits.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot ContentKey_slots[] = {
    {Py_tp_doc, "ContentKey(digest)\n--\n\n"
                "A content key: the SHA-256 digest of a request's canonical identity. "
                "Hashable, ordered and compared by digest; str() is 'sha256:<hex>'; "
                "supports the buffer protocol (32 bytes)."},
    {Py_tp_new, ContentKey_new},
    {Py_tp_dealloc, ContentKey_dealloc},
    {Py_tp_repr, ContentKey_repr},
    {Py_tp_str, ContentKey_str},
    {Py_tp_hash, ContentKey_hash},
    {Py_tp_richcompare, ContentKey_richcompare},
    {Py_tp_methods, ContentKey_methods},
    {Py_tp_getset, ContentKey_getset},
    {Py_bf_getbuffer, ContentKey_getbuffer},
    {0, NULL},
};

static PyType_Spec ContentKey_spec = {
    .name = "fabric.ContentKey",
    .basicsize = sizeof(ContentKeyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = ContentKey_slots,
};

/* ======================================================================== */
/* EvalRequest                                                               */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    PyObject *op;           /* str */
    PyObject *args;         /* tuple */
    PyObject *kwargs;       /* dict (private copy) */
    PyObject *version;      /* int or str */
    PyObject *capabilities; /* tuple of str, sorted, unique */
    PyObject *mode;         /* str */
    PyObject *answer_limit; /* None or int */
    PyObject *stream_buffer;/* None or int */
    PyObject *consistency;  /* str */
    PyObject *deadline;     /* None or float */
    PyObject *key;          /* ContentKey */
    char stream;
    char trace;
    uint8_t digest[FAB_SHA256_LEN];
} EvalRequestObject;

enum {
    KW_OP, KW_ARGS, KW_KWARGS, KW_VERSION, KW_CAPS, KW_MODE, KW_ANSWER_LIMIT,
    KW_STREAM_BUFFER, KW_STREAM, KW_TRACE, KW_CONSISTENCY, KW_DEADLINE, KW_COUNT
};

static const char *const kw_strings[KW_COUNT] = {
    "op", "args", "kwargs", "version", "required_capabilities", "mode", "answer_limit",
    "stream_buffer", "stream", "trace", "consistency", "deadline",
};

static const char *const consistency_values[] = {"local-first", "local-only", "no-home", NULL};

static int is_identifier_like(PyObject *s)
{
    /* [a-z][a-z0-9_.-]{0,63} */
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(s, &n);
    if (p == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (n < 1 || n > 64 || !(p[0] >= 'a' && p[0] <= 'z'))
        return 0;
    for (Py_ssize_t i = 1; i < n; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-'))
            return 0;
    }
    return 1;
}

/* None, or an int > 0 (bool refused). New reference or NULL. */
static PyObject *positive_int_or_none(PyObject *v, const char *name)
{
    if (v == NULL || v == Py_None)
        return Py_NewRef(Py_None);
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "EvalRequest %s must be None or an int, not %s",
                     name, Py_TYPE(v)->tp_name);
        return NULL;
    }
    int sign = _PyLong_Sign(v);
    if (sign <= 0) {
        PyErr_Format(PyExc_ValueError, "EvalRequest %s must be positive, got %R", name, v);
        return NULL;
    }
    return PyNumber_Index(v); /* a plain int, even for int subclasses */
}

static int bool_arg(PyObject *v, const char *name, char *out)
{
    if (v == NULL) {
        *out = 0;
        return 0;
    }
    if (v != Py_True && v != Py_False) {
        PyErr_Format(PyExc_TypeError, "EvalRequest %s must be True or False, not %.50R",
                     name, v);
        return -1;
    }
    *out = v == Py_True;
    return 0;
}

static PyObject *sorted_capabilities(PyObject *caps)
{
    if (caps == NULL)
        return PyTuple_New(0);
    if (PyUnicode_Check(caps) || PyBytes_Check(caps)) {
        PyErr_SetString(PyExc_TypeError,
                        "EvalRequest required_capabilities must be an iterable of str, "
                        "not a single string (wrap it in a tuple)");
        return NULL;
    }
    PyObject *list = PySequence_List(caps);
    if (list == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "EvalRequest required_capabilities must be an iterable of str, not %s",
                         Py_TYPE(caps)->tp_name);
        }
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(list, i);
        if (!PyUnicode_CheckExact(c) || PyUnicode_GET_LENGTH(c) == 0) {
            PyErr_Format(PyExc_TypeError,
                         "EvalRequest required_capabilities must hold non-empty str, "
                         "found %.50R", c);
            Py_DECREF(list);
            return NULL;
        }
    }
    /* Exact str only, so sorting and comparing run no user code. */
    if (PyList_Sort(list) < 0) {
        Py_DECREF(list);
        return NULL;
    }
    PyObject *t = PyTuple_New(n);
    if (t == NULL) {
        Py_DECREF(list);
        return NULL;
    }
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(list, i);
        if (m > 0 && PyUnicode_Compare(PyTuple_GET_ITEM(t, m - 1), c) == 0)
            continue; /* a duplicate of the previous one */
        PyTuple_SET_ITEM(t, m++, Py_NewRef(c));
    }
    Py_DECREF(list);
    if (m < n && _PyTuple_Resize(&t, m) < 0)
        return NULL;
    return t;
}

/* Writes the identity of a request (the key's input) into w. On failure,
 * *root names the field the walker's error is about. */
static int request_walk(walker *w, EvalRequestObject *r, const char **root)
{
    /* The array header (11 fields) and the scheme tag never change. */
    static const uint8_t prefix[] = "\x9b\xac" KEY_SCHEME_TAG;
    _Static_assert(sizeof(KEY_SCHEME_TAG) - 1 == 0xac - 0xa0, "tag length is in the header");
    static const char *const names[] = {"op", "version", "args", "kwargs",
                                        "required_capabilities", "mode", "answer_limit",
                                        "stream_buffer"};
    PyObject *const fields[] = {r->op, r->version, r->args, r->kwargs,
                                r->capabilities, r->mode, r->answer_limit, r->stream_buffer};

    /* Most requests leave kwargs, capabilities, mode and the two limits at
     * their defaults: those five fields are then one run of constant bytes
     * ({}, [], "eval", nil, nil), written after args. */
    static const uint8_t defaults[] = "\x80\x90\xa4" "eval" "\xc0\xc0";
    const size_t after_args = 3, count = sizeof(fields) / sizeof(fields[0]);
    int default_tail = r->kwargs == w->st->empty_dict &&
                       PyTuple_GET_SIZE(r->capabilities) == 0 && r->mode == w->st->str_eval &&
                       r->answer_limit == Py_None && r->stream_buffer == Py_None;

    *root = "request";
    if (write_body(w, prefix, sizeof(prefix) - 1) < 0)
        return -1;
    for (size_t i = 0; i < count; i++) {
        if (i == after_args && default_tail) {
            *root = "request";
            if (write_body(w, defaults, sizeof(defaults) - 1) < 0)
                return -1;
            break;
        }
        *root = names[i];
        if (enc_value(w, fields[i]) < 0)
            return -1;
    }
    *root = "request";
    if (room(w, 2) < 0)
        return -1;
    w->out->len += fab_put_bool(w->out->data + w->out->len, r->stream);
    w->out->len += fab_put_bool(w->out->data + w->out->len, r->trace);
    return out_flush(w, &w->main);
}

/* Streams the identity of a request into a digest: a borrowed walk first,
 * an owned one when the borrowed walk gives up. */
static int request_digest(fab_state *st, EvalRequestObject *r)
{
    fab_sha256 *h = take_hasher(st);
    if (h == NULL)
        return -1;
    const char *root = "request";
    walker w;
    walker_init(&w, st, h, NULL);
    w.borrowed = 1;
    int rc = request_walk(&w, r, &root);
    if (rc < 0 && w.restart) {
        walker_destroy(&w);
        walker_init(&w, st, h, NULL);
        root = "request";
        rc = check(&w, fab_sha256_reset(h));
        if (rc == 0)
            rc = request_walk(&w, r, &root);
    }
    if (rc == 0 && check(&w, fab_sha256_final(h, r->digest)) < 0) {
        root = "request";
        rc = -1;
    }
    if (rc < 0)
        walker_raise(&w, root);
    walker_destroy(&w);
    give_hasher(st, h, rc != 0);
    return rc;
}

static void EvalRequest_clear_fields(EvalRequestObject *r)
{
    Py_CLEAR(r->op);
    Py_CLEAR(r->args);
    Py_CLEAR(r->kwargs);
    Py_CLEAR(r->version);
    Py_CLEAR(r->capabilities);
    Py_CLEAR(r->mode);
    Py_CLEAR(r->answer_limit);
    Py_CLEAR(r->stream_buffer);
    Py_CLEAR(r->consistency);
    Py_CLEAR(r->deadline);
    Py_CLEAR(r->key);
}

static PyObject *request_build(fab_state *st, PyObject *const *kw)
{
    PyTypeObject *tp = st->EvalRequest_Type;
    EvalRequestObject *r = (EvalRequestObject *)tp->tp_alloc(tp, 0);
    if (r == NULL)
        return NULL;
    PyObject *v;

    /* op */
    v = kw[KW_OP];
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "EvalRequest() missing required argument 'op'");
        goto fail;
    }
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "EvalRequest op must be a str, not %s", Py_TYPE(v)->tp_name);
        goto fail;
    }
    if (PyUnicode_GET_LENGTH(v) == 0) {
        PyErr_SetString(PyExc_ValueError, "EvalRequest op must not be empty");
        goto fail;
    }
    r->op = Py_NewRef(v);

    /* args */
    v = kw[KW_ARGS];
    if (v == NULL)
        r->args = Py_NewRef(st->empty_tuple);
    else if (PyTuple_CheckExact(v))
        r->args = Py_NewRef(v);
    else if (PyTuple_Check(v) || PyList_Check(v))
        r->args = PySequence_Tuple(v);
    else {
        PyErr_Format(PyExc_TypeError, "EvalRequest args must be a tuple or list, not %s",
                     Py_TYPE(v)->tp_name);
        goto fail;
    }
    if (r->args == NULL)
        goto fail;

    /* kwargs: a private copy, so later changes to the caller's dict do not
     * change a request whose key is already taken. */
    v = kw[KW_KWARGS];
    if (v == NULL || v == Py_None || (PyDict_Check(v) && PyDict_GET_SIZE(v) == 0)) {
        /* No keyword arguments: one shared empty dict, never handed out
         * (the kwargs getter returns a read-only proxy). */
        r->kwargs = Py_NewRef(st->empty_dict);
    } else if (PyDict_Check(v)) {
        r->kwargs = PyDict_Copy(v);
    } else if (PyMapping_Check(v) && !PySequence_Check(v)) {
        r->kwargs = PyDict_New();
        if (r->kwargs && PyDict_Merge(r->kwargs, v, 1) < 0)
            goto fail;
    } else {
        PyErr_Format(PyExc_TypeError, "EvalRequest kwargs must be None or a mapping, not %s",
                     Py_TYPE(v)->tp_name);
        goto fail;
    }
    if (r->kwargs == NULL)
        goto fail;
    {
        Py_ssize_t pos = 0;
        PyObject *k, *val;
        while (PyDict_Next(r->kwargs, &pos, &k, &val)) {
            if (!PyUnicode_Check(k)) {
                PyErr_Format(PyExc_TypeError, "EvalRequest kwargs keys must be str, found %.50R", k);
                goto fail;
            }
        }
    }

    /* version */
    v = kw[KW_VERSION];
    if (v == NULL) {
        r->version = PyLong_FromLong(0);
    } else if (PyLong_Check(v) && !PyBool_Check(v)) {
        if (_PyLong_Sign(v) < 0) {
            PyErr_Format(PyExc_ValueError, "EvalRequest version must be >= 0, got %R", v);
            goto fail;
        }
        r->version = PyNumber_Index(v);
    } else if (PyUnicode_Check(v) && PyUnicode_GET_LENGTH(v) > 0) {
        r->version = Py_NewRef(v);
    } else {
        PyErr_Format(PyExc_TypeError,
                     "EvalRequest version must be an int >= 0 or a non-empty str, not %.50R", v);
        goto fail;
    }
    if (r->version == NULL)
        goto fail;

    r->capabilities = sorted_capabilities(kw[KW_CAPS]);
    if (r->capabilities == NULL)
        goto fail;

    v = kw[KW_MODE];
    if (v == NULL) {
        r->mode = Py_NewRef(st->str_eval);
    } else if (PyUnicode_Check(v) && is_identifier_like(v)) {
        r->mode = Py_NewRef(v);
    } else if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "EvalRequest mode must be a str, not %s",
                     Py_TYPE(v)->tp_name);
        goto fail;
    } else {
        PyErr_Format(PyExc_ValueError,
                     "EvalRequest mode must be a lower-case name such as 'eval' "
                     "([a-z][a-z0-9_.-]*, at most 64 characters), got %.50R", v);
        goto fail;
    }

    if ((r->answer_limit = positive_int_or_none(kw[KW_ANSWER_LIMIT], "answer_limit")) == NULL)
        goto fail;
    if ((r->stream_buffer = positive_int_or_none(kw[KW_STREAM_BUFFER], "stream_buffer")) == NULL)
        goto fail;
    if (bool_arg(kw[KW_STREAM], "stream", &r->stream) < 0 ||
        bool_arg(kw[KW_TRACE], "trace", &r->trace) < 0)
        goto fail;

    v = kw[KW_CONSISTENCY];
    if (v == NULL) {
        r->consistency = Py_NewRef(st->str_local_first);
    } else {
        int ok = 0;
        if (PyUnicode_Check(v))
            for (int i = 0; consistency_values[i]; i++)
                if (PyUnicode_CompareWithASCIIString(v, consistency_values[i]) == 0)
                    ok = 1;
        if (!ok) {
            PyErr_Format(PyExc_ValueError,
                         "EvalRequest consistency must be 'local-first', 'local-only' or "
                         "'no-home', got %.50R", v);
            goto fail;
        }
        r->consistency = Py_NewRef(v);
    }

    v = kw[KW_DEADLINE];
    if (v == NULL || v == Py_None) {
        r->deadline = Py_NewRef(Py_None);
    } else {
        if (PyBool_Check(v) || !(PyLong_Check(v) || PyFloat_Check(v))) {
            PyErr_Format(PyExc_TypeError,
                         "EvalRequest deadline must be None or seconds as a number, not %s",
                         Py_TYPE(v)->tp_name);
            goto fail;
        }
        double d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                goto fail;
            PyErr_Clear(); /* an int beyond float range: refused below */
            d = Py_HUGE_VAL;
        }
        if (!(d > 0) || d == Py_HUGE_VAL) {
            PyErr_Format(PyExc_ValueError,
                         "EvalRequest deadline must be a positive, finite number of seconds, got %R", v);
            goto fail;
        }
        r->deadline = PyFloat_FromDouble(d);
        if (r->deadline == NULL)
            goto fail;
    }

    if (request_digest(st, r) < 0)
        goto fail;
    /* Made now, not on first access: every path through a fabric needs it,
     * and a plain member is the fastest attribute to read. */
    if ((r->key = key_from_digest(st, r->digest)) == NULL)
        goto fail;
    return (PyObject *)r;
fail:
    Py_DECREF(r);
    return NULL;
}

static PyObject *EvalRequest_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf,
                                        PyObject *kwnames)
{
    fab_state *st = fab_state_from_type((PyTypeObject *)type);
    if (st == NULL)
        return NULL;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *kw[KW_COUNT] = {NULL};
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError,
                     "EvalRequest() takes at most 3 positional arguments (op, args, kwargs), "
                     "%zd given", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        kw[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int slot = -1;
        for (int j = 0; j < KW_COUNT; j++)
            if (name == st->kw_names[j]) {
                slot = j;
                break;
            }
        if (slot < 0)
            for (int j = 0; j < KW_COUNT; j++)
                if (PyUnicode_Compare(name, st->kw_names[j]) == 0) {
                    slot = j;
                    break;
                }
        if (slot < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "EvalRequest() got an unexpected keyword argument %R",
                         name);
            return NULL;
        }
        if (kw[slot] != NULL) {
            PyErr_Format(PyExc_TypeError, "EvalRequest() got multiple values for argument %R",
                         name);
            return NULL;
        }
        kw[slot] = args[nargs + i];
    }
    return request_build(st, kw);
}

static PyObject *EvalRequest_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    /* The slow path, for callers that do not use vectorcall. */
    PyObject *names = NULL, *result = NULL;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    Py_ssize_t nkw = kwargs ? PyDict_GET_SIZE(kwargs) : 0;
    PyObject **stack = PyMem_Malloc(sizeof(PyObject *) * (size_t)(nargs + nkw + 1));
    if (stack == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < nargs; i++)
        stack[i] = PyTuple_GET_ITEM(args, i);
    if (nkw) {
        names = PyTuple_New(nkw);
        if (names == NULL)
            goto done;
        Py_ssize_t pos = 0, i = 0;
        PyObject *k, *v;
        while (PyDict_Next(kwargs, &pos, &k, &v)) {
            PyTuple_SET_ITEM(names, i, Py_NewRef(k));
            stack[nargs + i] = v;
            i++;
        }
    }
    result = EvalRequest_vectorcall((PyObject *)type, stack, (size_t)nargs, names);
done:
    Py_XDECREF(names);
    PyMem_Free(stack);
    return result;
}

static int EvalRequest_traverse(EvalRequestObject *r, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(r));
    Py_VISIT(r->args);
    Py_VISIT(r->kwargs);
    return 0;
}

static int EvalRequest_clear(EvalRequestObject *r)
{
    EvalRequest_clear_fields(r);
    return 0;
}

static void EvalRequest_dealloc(EvalRequestObject *r)
{
    PyTypeObject *tp = Py_TYPE(r);
    PyObject_GC_UnTrack(r);
    EvalRequest_clear_fields(r);
    tp->tp_free(r);
    Py_DECREF(tp);
}

/* A new reference to the request's key. */
static PyObject *request_key(EvalRequestObject *r)
{
    if (r->key == NULL) { /* cleared by the collector */
        PyErr_SetString(PyExc_AttributeError, "EvalRequest has no key (it was cleared)");
        return NULL;
    }
    return Py_NewRef(r->key);
}

static PyObject *EvalRequest_get_stream(EvalRequestObject *r, void *closure)
{
    FAB_UNUSED(closure);
    return PyBool_FromLong(r->stream);
}

static PyObject *EvalRequest_get_trace(EvalRequestObject *r, void *closure)
{
    FAB_UNUSED(closure);
    return PyBool_FromLong(r->trace);
}

static PyObject *EvalRequest_get_kwargs(EvalRequestObject *r, void *closure)
{
    FAB_UNUSED(closure);
    return PyDictProxy_New(r->kwargs);
}

static PyObject *EvalRequest_get_caps(EvalRequestObject *r, void *closure)
{
    FAB_UNUSED(closure);
    return Py_NewRef(r->capabilities);
}

/* The fields that are plain objects are members: the interpreter reads
 * them without a call. */
static PyMemberDef EvalRequest_members[] = {
    {"op", T_OBJECT_EX, offsetof(EvalRequestObject, op), READONLY,
     "The operation's registered name."},
    {"args", T_OBJECT_EX, offsetof(EvalRequestObject, args), READONLY,
     "Positional arguments (a tuple)."},
    {"version", T_OBJECT_EX, offsetof(EvalRequestObject, version), READONLY,
     "The op's version (int or str)."},
    {"mode", T_OBJECT_EX, offsetof(EvalRequestObject, mode), READONLY,
     "Evaluation mode, 'eval' by default."},
    {"answer_limit", T_OBJECT_EX, offsetof(EvalRequestObject, answer_limit), READONLY,
     "Most items a streamed answer may carry, or None."},
    {"stream_buffer", T_OBJECT_EX, offsetof(EvalRequestObject, stream_buffer), READONLY,
     "Items buffered ahead of a streaming consumer, or None."},
    {"consistency", T_OBJECT_EX, offsetof(EvalRequestObject, consistency), READONLY,
     "Routing policy (not part of the key)."},
    {"deadline", T_OBJECT_EX, offsetof(EvalRequestObject, deadline), READONLY,
     "Seconds the caller will wait, or None (not part of the key)."},
    {"key", T_OBJECT_EX, offsetof(EvalRequestObject, key), READONLY, "The request's ContentKey."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef EvalRequest_getset[] = {
    {"kwargs", (getter)EvalRequest_get_kwargs, NULL, "Keyword arguments (read-only mapping).", NULL},
    {"required_capabilities", (getter)EvalRequest_get_caps, NULL,
     "Capabilities the caller must hold, sorted and de-duplicated.", NULL},
    {"stream", (getter)EvalRequest_get_stream, NULL, "True for a streamed reply.", NULL},
    {"trace", (getter)EvalRequest_get_trace, NULL, "True to collect a trace.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static Py_hash_t EvalRequest_hash(EvalRequestObject *r)
{
    Py_hash_t h;
    memcpy(&h, r->digest, sizeof(h));
    return h == -1 ? -2 : h;
}

static PyObject *EvalRequest_richcompare(PyObject *a, PyObject *b, int op)
{
    if (Py_TYPE(a) != Py_TYPE(b) || (op != Py_EQ && op != Py_NE))
        Py_RETURN_NOTIMPLEMENTED;
    /* Two requests are equal when they ask for the same work: the same key
     * and the same routing policy. */
    EvalRequestObject *x = (EvalRequestObject *)a, *y = (EvalRequestObject *)b;
    int eq = memcmp(x->digest, y->digest, FAB_SHA256_LEN) == 0;
    if (eq) {
        int c = PyObject_RichCompareBool(x->consistency, y->consistency, Py_EQ);
        if (c < 0)
            return NULL;
        int d = PyObject_RichCompareBool(x->deadline, y->deadline, Py_EQ);
        if (d < 0)
            return NULL;
        eq = c && d;
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

/* repr(v), cut to at most max characters. */
static PyObject *cut_repr(PyObject *v, Py_ssize_t max)
{
    PyObject *r = PyObject_Repr(v);
    if (r == NULL || PyUnicode_GET_LENGTH(r) <= max)
        return r;
    PyObject *cut = PyUnicode_Substring(r, 0, max - 3);
    Py_DECREF(r);
    if (cut == NULL)
        return NULL;
    r = PyUnicode_FromFormat("%U...", cut);
    Py_DECREF(cut);
    return r;
}

static PyObject *EvalRequest_repr(EvalRequestObject *r)
{
    PyObject *parts = PyList_New(0), *s = NULL, *sep = NULL, *out = NULL;
    if (parts == NULL)
        return NULL;
#define ADD(fmt, ...)                                                  \
    do {                                                               \
        PyObject *t_ = PyUnicode_FromFormat(fmt, __VA_ARGS__);         \
        if (t_ == NULL || PyList_Append(parts, t_) < 0) {              \
            Py_XDECREF(t_);                                            \
            goto done;                                                 \
        }                                                              \
        Py_DECREF(t_);                                                 \
    } while (0)
    ADD("%R", r->op);
    if (PyTuple_GET_SIZE(r->args)) {
        s = cut_repr(r->args, 120);
        if (s == NULL)
            goto done;
        ADD("args=%U", s);
        Py_CLEAR(s);
    }
    if (PyDict_GET_SIZE(r->kwargs)) {
        s = cut_repr(r->kwargs, 120);
        if (s == NULL)
            goto done;
        ADD("kwargs=%U", s);
        Py_CLEAR(s);
    }
    ADD("version=%R", r->version);
    if (PyTuple_GET_SIZE(r->capabilities))
        ADD("required_capabilities=%R", r->capabilities);
    if (PyUnicode_CompareWithASCIIString(r->mode, "eval") != 0)
        ADD("mode=%R", r->mode);
    if (r->answer_limit != Py_None)
        ADD("answer_limit=%R", r->answer_limit);
    if (r->stream_buffer != Py_None)
        ADD("stream_buffer=%R", r->stream_buffer);
    if (r->stream)
        ADD("%s", "stream=True");
    if (r->trace)
        ADD("%s", "trace=True");
    if (PyUnicode_CompareWithASCIIString(r->consistency, "local-first") != 0)
        ADD("consistency=%R", r->consistency);
    if (r->deadline != Py_None)
        ADD("deadline=%R", r->deadline);
    ADD("key=sha256:%02x%02x%02x%02x%02x%02x...", r->digest[0], r->digest[1], r->digest[2],
        r->digest[3], r->digest[4], r->digest[5]);
#undef ADD
    sep = PyUnicode_FromString(", ");
    if (sep == NULL)
        goto done;
    s = PyUnicode_Join(sep, parts);
    if (s == NULL)
        goto done;
    out = PyUnicode_FromFormat("EvalRequest(%U)", s);
done:
    Py_XDECREF(s);
    Py_XDECREF(sep);
    Py_DECREF(parts);
    return out;
}

static PyObject *EvalRequest_identity_bytes(EvalRequestObject *r, PyObject *Py_UNUSED(ignored))
{
    fab_state *st = fab_state_from_type(Py_TYPE(r));
    if (st == NULL)
        return NULL;
    PyObject *fields = Py_BuildValue("[sOOOOOOOOOO]", KEY_SCHEME_TAG, r->op, r->version,
                                     r->args, r->kwargs, r->capabilities, r->mode,
                                     r->answer_limit, r->stream_buffer,
                                     r->stream ? Py_True : Py_False,
                                     r->trace ? Py_True : Py_False);
    if (fields == NULL)
        return NULL;
    fab_buf buf;
    fab_enc enc;
    fab_buf_init(&buf);
    fab_enc_init(&enc, fab_buf_sink, &buf);
    PyObject *out = NULL;
    if (fab_py_encode_value(st, &enc, fields, "request") == 0)
        out = PyBytes_FromStringAndSize((const char *)buf.data, (Py_ssize_t)buf.len);
    fab_buf_destroy(&buf);
    Py_DECREF(fields);
    return out;
}

static PyObject *EvalRequest_replace(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                     PyObject *kwnames)
{
    EvalRequestObject *r = (EvalRequestObject *)self;
    fab_state *st = fab_state_from_type(Py_TYPE(r));
    if (st == NULL)
        return NULL;
    if (nargs) {
        PyErr_SetString(PyExc_TypeError, "EvalRequest.replace() takes keyword arguments only");
        return NULL;
    }
    PyObject *kw[KW_COUNT];
    PyObject *owned[3] = {NULL, NULL, NULL};
    kw[KW_OP] = r->op;
    kw[KW_ARGS] = r->args;
    kw[KW_KWARGS] = r->kwargs;
    kw[KW_VERSION] = r->version;
    kw[KW_CAPS] = r->capabilities;
    kw[KW_MODE] = r->mode;
    kw[KW_ANSWER_LIMIT] = r->answer_limit;
    kw[KW_STREAM_BUFFER] = r->stream_buffer;
    kw[KW_STREAM] = owned[0] = PyBool_FromLong(r->stream);
    kw[KW_TRACE] = owned[1] = PyBool_FromLong(r->trace);
    kw[KW_CONSISTENCY] = r->consistency;
    kw[KW_DEADLINE] = r->deadline;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int slot = -1;
        for (int j = 0; j < KW_COUNT; j++)
            if (PyUnicode_Compare(name, st->kw_names[j]) == 0)
                slot = j;
        if (slot < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "replace() got an unexpected keyword argument %R", name);
            goto done;
        }
        kw[slot] = args[i];
    }
    result = request_build(st, kw);
done:
    Py_XDECREF(owned[0]);
    Py_XDECREF(owned[1]);
    return result;
}

static PyObject *EvalRequest_reduce(EvalRequestObject *r, PyObject *Py_UNUSED(ignored))
{
    /* Pickled as a call with every field by keyword (through the Python
     * helper fabric._rebuild_request, since keyword-only arguments do not fit
     * __reduce__'s positional call). */
    PyObject *mod = PyImport_ImportModule("fabric._pickle");
    if (mod == NULL)
        return NULL;
    PyObject *fn = PyObject_GetAttrString(mod, "rebuild_request");
    Py_DECREF(mod);
    if (fn == NULL)
        return NULL;
    PyObject *kwargs = Py_BuildValue(
        "{sOsOsOsOsOsOsOsOsOsOsOsO}", "op", r->op, "args", r->args, "kwargs", r->kwargs,
        "version", r->version, "required_capabilities", r->capabilities, "mode", r->mode,
        "answer_limit", r->answer_limit, "stream_buffer", r->stream_buffer, "stream",
        r->stream ? Py_True : Py_False, "trace", r->trace ? Py_True : Py_False,
        "consistency", r->consistency, "deadline", r->deadline);
    if (kwargs == NULL) {
        Py_DECREF(fn);
        return NULL;
    }
    return Py_BuildValue("(N(N))", fn, kwargs);
}

static PyMethodDef EvalRequest_methods[] = {
    {"identity_bytes", (PyCFunction)EvalRequest_identity_bytes, METH_NOARGS,
     "identity_bytes($self, /)\n--\n\n"
     "The canonical msgpack bytes whose SHA-256 is the content key."},
    {"replace", (PyCFunction)(void (*)(void))EvalRequest_replace, METH_FASTCALL | METH_KEYWORDS,
     "replace($self, /, **changes)\n--\n\nA copy of the request with some fields changed."},
    {"__reduce__", (PyCFunction)EvalRequest_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot EvalRequest_slots[] = {
    {Py_tp_doc,
     "EvalRequest(op, args=(), kwargs=None, *, version=0, required_capabilities=(), "
     "mode='eval', answer_limit=None, stream_buffer=None, stream=False, trace=False, "
     "consistency='local-first', deadline=None)\n--\n\n"
     "An immutable evaluation request. Its content key (.key) is computed at "
     "construction from the identity fields; consistency and deadline are routing "
     "policy and do not change it."},
    {Py_tp_new, EvalRequest_new},
    {Py_tp_dealloc, EvalRequest_dealloc},
    {Py_tp_traverse, EvalRequest_traverse},
    {Py_tp_clear, EvalRequest_clear},
    {Py_tp_repr, EvalRequest_repr},
    {Py_tp_hash, EvalRequest_hash},
    {Py_tp_richcompare, EvalRequest_richcompare},
    {Py_tp_members, EvalRequest_members},
    {Py_tp_getset, EvalRequest_getset},
    {Py_tp_methods, EvalRequest_methods},
    {0, NULL},
};

static PyType_Spec EvalRequest_spec = {
    .name = "fabric.EvalRequest",
    .basicsize = sizeof(EvalRequestObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = EvalRequest_slots,
};

static PyObject *ContentKey_of(PyObject *cls, PyObject *request)
{
    fab_state *st = fab_state_from_type((PyTypeObject *)cls);
    if (st == NULL)
        return NULL;
    if (!PyObject_TypeCheck(request, st->EvalRequest_Type)) {
        PyErr_Format(PyExc_TypeError, "ContentKey.of() takes an EvalRequest, not %s",
                     Py_TYPE(request)->tp_name);
        return NULL;
    }
    return request_key((EvalRequestObject *)request);
}

/* ======================================================================== */
/* Module part                                                              */
/* ======================================================================== */

static PyMethodDef keys_functions[] = {
    {"canonical_bytes", canonical_bytes, METH_O,
     "canonical_bytes(value, /)\n--\n\n"
     "The canonical msgpack encoding of value (docs/spec/content-key.md)."},
    {NULL, NULL, 0, NULL},
};

int fab_py_keys_exec(PyObject *module, fab_state *st)
{
    if (PyModule_AddFunctions(module, keys_functions) < 0)
        return -1;
    if ((st->Secret_Type = fab_py_add_type(module, &Secret_spec, NULL)) == NULL)
        return -1;
    if ((st->ContentKey_Type = fab_py_add_type(module, &ContentKey_spec, NULL)) == NULL)
        return -1;
    if ((st->EvalRequest_Type = fab_py_add_type(module, &EvalRequest_spec, NULL)) == NULL)
        return -1;
    /* Calling the type goes straight to the vectorcall constructor. */
    st->EvalRequest_Type->tp_vectorcall = EvalRequest_vectorcall;
    if ((st->str_eval = PyUnicode_InternFromString("eval")) == NULL ||
        (st->str_local_first = PyUnicode_InternFromString("local-first")) == NULL ||
        (st->empty_tuple = PyTuple_New(0)) == NULL ||
        (st->empty_dict = PyDict_New()) == NULL)
        return -1;
    for (int i = 0; i < KW_COUNT; i++)
        if ((st->kw_names[i] = PyUnicode_InternFromString(kw_strings[i])) == NULL)
            return -1;
    if (PyModule_AddStringConstant(module, "KEY_SCHEME", KEY_SCHEME_TAG) < 0)
        return -1;
    return 0;
}

int fab_py_keys_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->Secret_Type);
    Py_VISIT(st->ContentKey_Type);
    Py_VISIT(st->EvalRequest_Type);
    Py_VISIT(st->empty_dict);
    return 0;
}

void fab_py_keys_clear(fab_state *st)
{
    Py_CLEAR(st->Secret_Type);
    Py_CLEAR(st->ContentKey_Type);
    Py_CLEAR(st->EvalRequest_Type);
    Py_CLEAR(st->str_eval);
    Py_CLEAR(st->str_local_first);
    Py_CLEAR(st->empty_tuple);
    Py_CLEAR(st->empty_dict);
    for (int i = 0; i < KW_COUNT; i++)
        Py_CLEAR(st->kw_names[i]);
    fab_sha256_free(st->spare_hasher);
    st->spare_hasher = NULL;
    sort_memo_free(st->sort_memo);
    st->sort_memo = NULL;
}

/* ======================================================================== */
/* Accessors for other parts of the glue                                     */
/* ======================================================================== */

int fab_py_request_info(fab_state *st, PyObject *req, const uint8_t **digest, PyObject **caps,
                        int *stream)
{
    if (!PyObject_TypeCheck(req, st->EvalRequest_Type)) {
        PyErr_Format(PyExc_TypeError, "expected an EvalRequest, not %.100s",
                     Py_TYPE(req)->tp_name);
        return -1;
    }
    EvalRequestObject *r = (EvalRequestObject *)req;
    if (digest)
        *digest = r->digest;
    if (caps)
        *caps = r->capabilities;
    if (stream)
        *stream = r->stream;
    return 0;
}

PyObject *fab_py_request_key(fab_state *st, PyObject *req)
{
    if (!PyObject_TypeCheck(req, st->EvalRequest_Type)) {
        PyErr_Format(PyExc_TypeError, "expected an EvalRequest, not %.100s",
                     Py_TYPE(req)->tp_name);
        return NULL;
    }
    return request_key((EvalRequestObject *)req);
}
