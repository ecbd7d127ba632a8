/*
 * The object walker: the canonical encoding of Python values
 * (docs/spec/content-key.md), into bytes, a sink, or a SHA-256 digest.
 *
 * The walker turns Python objects into calls of the core's canonical writer
 * (csrc/enc.c). It runs no Python code of the user's: it reads builtin types
 * through the C API only, so a value cannot change under it, except while
 * the GIL is released to hash a large buffer; for that window it holds
 * strong references to everything it still has to visit and checks
 * container sizes again afterwards.
 *
 * The whole walk stays in this one file so the compiler can inline the
 * dispatch (enc_value) into each container loop; request.c and the other
 * parts reach it through fab_py_encode_value, fab_py_encode_pieces and fab_py_digest_pieces.
 */
#include "glue.h"

#include <string.h>

#include "fabric/enc.h"
#include "fabric/hash.h"
#include "fabric/keymemo.h"
#include "fabric/mpdec.h"
#include "fabric/stage.h"

/* Buffers at least this large are hashed with the GIL released (CPython's
 * hashlib uses the same threshold). */
#define GIL_RELEASE_THRESHOLD 2048

/* ======================================================================== */
/* The walker                                                                */
/* ======================================================================== */

/*
 * Where the walker's bytes go: staged output windows (csrc/stage.c). The
 * walker writes headers and scalars straight into a window with the core's
 * fab_put_* functions (a call through a sink per item costs more than the
 * item). The main window is flushed into a hasher or a sink, or grows (the
 * result of canonical_bytes); the scratch window, for map keys and set
 * members being sorted, grows.
 */
typedef fab_stage wout;

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
    int vmode;       /* the value encoding (docs/spec/values.md), not the canonical one */
    int max_depth;   /* FAB_MAX_DEPTH, or FAB_MAX_RECORD_DEPTH for a cassette record */
    int read_limits; /* refuse what a reader with the default limits would refuse */
    int spot;        /* stop at a Secret or a subclass of a builtin container */
    int spotted;     /* spot stopped the walk (no error recorded) */
    uint64_t items;  /* msgpack items written so far (counted when read_limits) */
    PyObject *stack[FAB_MAX_RECORD_DEPTH]; /* containers being visited, for cycles */
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
    fab_stage_init(&w->main, w->stage, sizeof(w->stage), hasher, enc ? enc->sink : NULL,
                   enc ? enc->ctx : NULL);
    fab_stage_init(&w->scratch, w->scratch_stage, sizeof(w->scratch_stage), NULL, NULL, NULL);
    w->out = &w->main;
    w->depth = 0;
    w->borrowed = 0;
    w->restart = 0;
    w->vmode = 0;
    w->max_depth = FAB_MAX_DEPTH;
    w->read_limits = 0;
    w->spot = 0;
    w->spotted = 0;
    w->items = 1; /* the root */
    w->err_type = NULL;
    w->err_msg = NULL;
    w->path = NULL;
}

static void walker_destroy(walker *w)
{
    fab_stage_destroy(&w->main);
    fab_stage_destroy(&w->scratch);
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
    if (code == FAB_ENOMEM || code == FAB_EOVERFLOW) {
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
    if (path && PyUnicode_GET_LENGTH(path) > 200) {
        /* At most 200 characters: the start (the root) and the innermost
         * segments, which say where to look. */
        Py_ssize_t n = PyUnicode_GET_LENGTH(path);
        PyObject *head = PyUnicode_Substring(path, 0, 60);
        PyObject *tail = PyUnicode_Substring(path, n - 137, n);
        Py_SETREF(path, head && tail ? PyUnicode_FromFormat("%U...%U", head, tail) : NULL);
        Py_XDECREF(head);
        Py_XDECREF(tail);
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
    if (w->depth >= w->max_depth)
        return fail(w, PyExc_ValueError, "nesting deeper than %d levels", w->max_depth);
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

static int out_flush(walker *w, wout *o)
{
    return check(w, fab_stage_flush(o));
}

static inline int room(walker *w, size_t n)
{
    wout *o = w->out;
    if (o->cap - o->len >= n)
        return 0;
    return check(w, fab__stage_room_slow(o, n));
}

/* Writes one item made by a fab_put_* call: PUT(w, fab_put_x(P, ...)). */
#define PUT(w, expr)                                    \
    do {                                                \
        if (room((w), FAB_PUT_MAX) < 0)                 \
            return -1;                                  \
        uint8_t *P = (w)->out->data + (w)->out->len;    \
        (w)->out->len += (expr);                        \
    } while (0)

_Static_assert(GIL_RELEASE_THRESHOLD >= FAB_STAGE_DIRECT,
               "a run hashed with the GIL released bypasses the stage");

/* Writes raw data. Runs of GIL_RELEASE_THRESHOLD bytes or more bypass the
 * stage: they are hashed with the GIL released, or passed to the sink. */
static int write_body(walker *w, const void *data, size_t len)
{
    wout *o = w->out;
    if (!o->grow && len >= GIL_RELEASE_THRESHOLD) {
        if (w->borrowed)
            return give_up(w);
        int rc;
        if (o->hasher) {
            /* The stage and its hasher are the walker's own: no Python
             * object is touched in here. */
            Py_BEGIN_ALLOW_THREADS
            rc = fab_stage_write(o, data, len);
            Py_END_ALLOW_THREADS
        } else {
            rc = fab_stage_write(o, data, len);
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
    return n == 0 && w->depth < w->max_depth;
}

/* The read limits of a cassette (the decoder's defaults), checked as a
 * value is encoded for one, so that what record() acknowledges get() reads
 * back: entries per container and items in all. Tags count as the items
 * they are. */
#define READ_MAX_ENTRIES (UINT32_C(1) << 24)
#define READ_MAX_ITEMS (UINT64_C(64) << 20)

static int count_items(walker *w, Py_ssize_t entries, uint64_t per_entry, uint64_t extra)
{
    if (!w->read_limits)
        return 0;
    if ((uint64_t)entries > READ_MAX_ENTRIES)
        return fail(w, PyExc_ValueError,
                    "a container of %zd entries is more than the %u a cassette reads back",
                    entries, (unsigned)READ_MAX_ENTRIES);
    w->items += (uint64_t)entries * per_entry + extra;
    if (w->items > READ_MAX_ITEMS)
        return fail(w, PyExc_ValueError,
                    "the value holds more than the %llu items a cassette reads back",
                    (unsigned long long)READ_MAX_ITEMS);
    return 0;
}

/* Writes a tag (an empty ext that says how to read the next item). */
static inline int put_tag(walker *w, int8_t tag)
{
    if (room(w, 3) < 0)
        return -1;
    uint8_t *p = w->out->data + w->out->len;
    p[0] = 0xc7;
    p[1] = 0;
    p[2] = (uint8_t)tag;
    w->out->len += 3;
    return 0;
}

/* Writes a str of at most SHORT_STR ASCII characters (most map keys, many
 * short values) inline, into room already made for FAB_PUT_MAX + SHORT_STR
 * bytes: 1 when v was one, 0 to leave it to enc_value (as enc_str would
 * write it: ASCII is its own UTF-8). */
#define SHORT_STR 31
static inline int put_short_str(wout *o, PyObject *v)
{
    if (!Py_IS_TYPE(v, &PyUnicode_Type) || !PyUnicode_IS_COMPACT_ASCII(v))
        return 0;
    size_t n = (size_t)PyUnicode_GET_LENGTH(v);
    if (n > SHORT_STR)
        return 0;
    o->len += fab_put_str_header(o->data + o->len, (uint32_t)n);
    fab_copy(o->data + o->len, (const uint8_t *)PyUnicode_DATA(v), n);
    o->len += n;
    return 1;
}

static int enc_sequence(walker *w, PyObject *v)
{
    int rc = -1;
    snapshot snap;
    /* A tuple cannot change: one reference to it holds its items. A list
     * is copied item by item. */
    int is_tuple = PyTuple_Check(v);
    Py_ssize_t n = is_tuple ? PyTuple_GET_SIZE(v) : PyList_GET_SIZE(v);
    if (w->vmode) {
        if (is_tuple && put_tag(w, FAB_TAG_TUPLE) < 0)
            return -1;
        if (count_items(w, n, 1, is_tuple) < 0)
            return -1;
    }
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
        if (room(w, FAB_PUT_MAX + SHORT_STR) < 0)
            goto done;
        if (put_short_str(w->out, items[i]))
            continue;
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
 * The key-order memo (csrc/keymemo.c) remembers the order of the keys of
 * recent small dicts, by the key objects' identity and by their encodings.
 * The keys it remembers by identity are exact str: immutable, and held by a
 * strong reference while remembered, so their address names them. Dropping
 * one runs no Python code. The memo is used only while the GIL is held.
 */
static void retain_key(const void *key)
{
    Py_INCREF((PyObject *)(uintptr_t)key);
}

static void release_key(const void *key)
{
    Py_DECREF((PyObject *)(uintptr_t)key);
}

/* The state's memo, made on first use; NULL under memory pressure (no memo
 * then). */
static fab_keymemo *key_memo(walker *w)
{
    if (w->st->key_memo == NULL && fab_keymemo_new(&w->st->key_memo, retain_key, release_key) < 0)
        return NULL;
    return w->st->key_memo;
}

/* items holds key, value, key, value...: the shape of a dict's keys,
 * pinned, or NULL. The snapshot's PyObject pointers are read as opaque
 * identities (any object pointer converts to and from void *). */
static inline fab_keymemo_shape *shape_find(walker *w, PyObject *const *items, Py_ssize_t n)
{
    return fab_keymemo_shape_find(w->st->key_memo, (const void *const *)items, 2, (size_t)n);
}

static int keys_exact_str(PyObject *const *items, Py_ssize_t n)
{
    if (n > FAB_KEYMEMO_MAX_KEYS)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!PyUnicode_CheckExact(items[2 * i]))
            return 0;
    return 1;
}

/* Puts the spans of a dict's n keys (offsets into scratch from base, as
 * the key loop left them) into canonical order, from the memo or by
 * sorting, and remembers the order and the shape. The spans are offsets
 * again afterwards, since scratch may still move. */
static int order_keys(walker *w, PyObject *const *items, fab_span *spans, Py_ssize_t n,
                      size_t base)
{
    uint8_t *data = w->scratch.data;
    const uint8_t *bytes = data + base;
    size_t len = w->scratch.len - base;
    for (Py_ssize_t i = 0; i < n; i++)
        spans[i].p = data + (uintptr_t)spans[i].p;
    int rc = FAB_OK;
    fab_keymemo *m = w->st->key_memo;
    if (!fab_keymemo_order_find(m, bytes, len, spans, (size_t)n)) {
        rc = fab_canon_sort_spans(spans, (size_t)n);
        if (rc == FAB_OK && (m = key_memo(w)) != NULL)
            fab_keymemo_order_store(m, bytes, len, spans, (size_t)n);
    }
    if (rc == FAB_OK && m != NULL && keys_exact_str(items, n))
        fab_keymemo_shape_store(m, (const void *const *)items, 2, (size_t)n, spans);
    for (Py_ssize_t i = 0; i < n; i++)
        spans[i].p = (const uint8_t *)(uintptr_t)(spans[i].p - data);
    return check(w, rc);
}

/* Writes the common scalars inline, into room already made for
 * FAB_PUT_MAX bytes: 1 when v was one of them, 0 to leave it to enc_value. */
static inline int put_scalar(wout *o, PyObject *v, int vmode)
{
    PyTypeObject *tp = Py_TYPE(v);
    long long x;
    uint8_t *p = o->data + o->len;
    if (tp == &PyLong_Type && small_int(v, &x))
        o->len += fab_put_int64(p, (int64_t)x);
    else if (tp == &PyFloat_Type)
        o->len += vmode ? fab_put_double_raw(p, PyFloat_AS_DOUBLE(v))
                        : fab_put_double(p, PyFloat_AS_DOUBLE(v));
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
    if (!put_scalar(o, value, w->vmode) && enc_value(w, value) < 0) {
        entry_failed(w, "[%U]", key);
        return -1;
    }
    return 0;
}

/* Writes a dict whose keys a remembered shape knows: the key encodings are
 * copied from the shape (pinned by the caller), the values encoded. */
static int enc_dict_known(walker *w, PyObject *const *items, Py_ssize_t n, const fab_keymemo_shape *e)
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

/* A dict in the value encoding: a map in insertion order. */
static int enc_dict_value(walker *w, PyObject *v)
{
    Py_ssize_t n = PyDict_GET_SIZE(v);
    if ((size_t)n > UINT32_MAX)
        return fail_code(w, FAB_ERANGE);
    if (count_items(w, n, 2, 0) < 0)
        return -1;
    if (empty_container(w, n)) {
        PUT(w, fab_put_map_header(P, 0));
        return 0;
    }
    if (enter(w, v) < 0)
        return -1;
    int rc = -1;
    if (w->borrowed) {
        /* A borrowed walk runs no Python code: the dict cannot change
         * under it, so its entries are encoded where they are. */
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        if (room(w, FAB_PUT_MAX) < 0)
            goto out;
        w->out->len += fab_put_map_header(w->out->data + w->out->len, (uint32_t)n);
        while (PyDict_Next(v, &pos, &key, &value)) {
            if (room(w, FAB_PUT_MAX + SHORT_STR) < 0 ||
                (!put_short_str(w->out, key) && enc_value(w, key) < 0) ||
                room(w, FAB_PUT_MAX + SHORT_STR) < 0 ||
                (!put_scalar(w->out, value, 1) && !put_short_str(w->out, value) &&
                 enc_value(w, value) < 0))
                goto out; /* (a borrowed failure has no path to add) */
        }
        rc = 0;
        goto out;
    }
    snapshot snap;
    if (snapshot_alloc(w, &snap, 2 * n) < 0)
        goto out;
    {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (snap.n < 2 * n && PyDict_Next(v, &pos, &key, &value)) {
            snapshot_add(&snap, key);
            snapshot_add(&snap, value);
        }
    }
    n = snap.n / 2;
    if (room(w, FAB_PUT_MAX) < 0)
        goto done;
    w->out->len += fab_put_map_header(w->out->data + w->out->len, (uint32_t)n);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = snap.items[2 * i], *value = snap.items[2 * i + 1];
        if (enc_value(w, key) < 0) {
            entry_failed(w, "<key %U>", key);
            goto done;
        }
        if (room(w, FAB_PUT_MAX) < 0)
            goto done;
        if (!put_scalar(w->out, value, 1) && enc_value(w, value) < 0) {
            entry_failed(w, "[%U]", key);
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

static int enc_dict(walker *w, PyObject *v)
{
    if (w->vmode)
        return enc_dict_value(w, v);
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
    fab_keymemo_shape *known = shape_find(w, snap.items, n);
    if (known) {
        /* Nothing goes onto scratch: region_end stays base. */
        rc = enc_dict_known(w, snap.items, n, known);
        fab_keymemo_shape_unpin(known);
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
    if (order_keys(w, snap.items, spans, n, base) < 0)
        goto done;
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

/* A set in the value encoding: a tag, then its members in iteration order. */
static int enc_set_value(walker *w, PyObject *v)
{
    if (w->borrowed)
        return give_up(w); /* the tuple below may start a collection */
    if (put_tag(w, PyFrozenSet_Check(v) ? FAB_TAG_FROZENSET : FAB_TAG_SET) < 0)
        return -1;
    if (enter(w, v) < 0)
        return -1;
    int rc = -1;
    PyObject *members = PySequence_Tuple(v); /* iterating a set runs no user code */
    if (members == NULL)
        goto out;
    Py_ssize_t n = PyTuple_GET_SIZE(members);
    if ((size_t)n > UINT32_MAX) {
        fail_code(w, FAB_ERANGE);
        goto out;
    }
    if (count_items(w, n, 1, 1) < 0 || room(w, FAB_PUT_MAX) < 0)
        goto out;
    w->out->len += fab_put_array_header(w->out->data + w->out->len, (uint32_t)n);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (enc_value(w, PyTuple_GET_ITEM(members, i)) < 0) {
            add_segment(w, "<member>");
            goto out;
        }
    }
    rc = 0;
out:
    Py_XDECREF(members);
    leave(w);
    return rc;
}

static int enc_set(walker *w, PyObject *v)
{
    if (w->vmode)
        return enc_set_value(w, v);
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

/* ------------------------------------------------------------------------ */
/* complex, numpy arrays (through the buffer protocol) and registered types */
/* ------------------------------------------------------------------------ */

static int enc_complex(walker *w, PyObject *v)
{
    Py_complex c = PyComplex_AsCComplex(v);
    if (c.real == -1.0 && PyErr_Occurred())
        return -1;
    if (room(w, 18) < 0)
        return -1;
    uint8_t *p = w->out->data + w->out->len;
    p[0] = 0xd8; /* fixext16 */
    p[1] = FAB_EXT_COMPLEX;
    uint8_t tmp[9];
    /* The canonical form has one NaN, as for floats; a value keeps its bits. */
    (w->vmode ? fab_put_double_raw : fab_put_double)(tmp, c.real);
    memcpy(p + 2, tmp + 1, 8);
    (w->vmode ? fab_put_double_raw : fab_put_double)(tmp, c.imag);
    memcpy(p + 10, tmp + 1, 8);
    w->out->len += 18;
    return 0;
}

/* Registry entries (fabric/values.py): (kind, name, to_data, from_data). */
#define KIND_ADAPTER 0 /* to_data(v) is encoded under the type's name */
#define KIND_NDARRAY 1 /* read through the buffer protocol, else to_data(v) gives
                        * (dtype str, data buffer, shape tuple) */
#define KIND_OPAQUE  2 /* to_data(v) gives (name, data): an Opaque passed on */

/*
 * What the registry says about a type: 1 with a new reference to its entry,
 * 0 when it has none (the builtin kinds decide), -1 on error or refusal.
 * A type the registry does not know is shown to the hook once (it may
 * register the type, say numpy's, or return a refusal message); the answer
 * is kept in the registry.
 */
static int lookup_type(walker *w, PyTypeObject *tp, PyObject **entry)
{
    fab_state *st = w->st;
    if (st->vt_by_type == NULL)
        return 0;
    if (w->borrowed)
        return give_up(w); /* adapters and hooks run Python code */
    PyObject *e = PyDict_GetItemWithError(st->vt_by_type, (PyObject *)tp);
    if (e != NULL) {
        Py_INCREF(e);
    } else {
        if (PyErr_Occurred())
            return -1;
        if (st->vt_hook == NULL)
            return 0;
        e = PyObject_CallOneArg(st->vt_hook, (PyObject *)tp);
        if (e == NULL)
            return -1;
        if (PyDict_SetItem(st->vt_by_type, (PyObject *)tp, e) < 0) {
            Py_DECREF(e);
            return -1;
        }
    }
    if (e == Py_None) {
        Py_DECREF(e);
        return 0;
    }
    if (PyUnicode_Check(e)) {
        fail(w, PyExc_TypeError, "%U", e);
        Py_DECREF(e);
        return -1;
    }
    if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 4 || !PyLong_Check(PyTuple_GET_ITEM(e, 0)) ||
        !PyUnicode_CheckExact(PyTuple_GET_ITEM(e, 1))) {
        Py_DECREF(e);
        return fail(w, PyExc_TypeError, "malformed type registry entry for %s", tp->tp_name);
    }
    *entry = e;
    return 1;
}

/* The numpy dtype string ("<f8", "|b1", ">c16") of a buffer's struct format
 * and item size, for the item kinds that have one; 0 for any other format
 * (strings, records, objects), which goes through the type's adapter. */
static int dtype_of(const char *fmt, Py_ssize_t itemsize, char out[16])
{
    if (fmt == NULL || itemsize <= 0 || itemsize > 64)
        return 0;
    char order = '@';
    if (*fmt && strchr("@=<>!", *fmt))
        order = *fmt++;
    char kind;
    if (*fmt == 'Z') {
        fmt++;
        if (*fmt == '\0' || !strchr("efdg", *fmt))
            return 0;
        kind = 'c';
        fmt++;
    } else {
        switch (*fmt++) {
        case '?': kind = 'b'; break;
        case 'b': case 'h': case 'i': case 'l': case 'q': case 'n': kind = 'i'; break;
        case 'B': case 'H': case 'I': case 'L': case 'Q': case 'N': kind = 'u'; break;
        case 'e': case 'f': case 'd': case 'g': kind = 'f'; break;
        default: return 0;
        }
    }
    if (*fmt != '\0')
        return 0;
    char bo;
    static const uint16_t one = 1;
    int little = *(const uint8_t *)&one == 1;
    if (itemsize == 1)
        bo = '|';
    else if (order == '>' || order == '!')
        bo = '>';
    else if (order == '<')
        bo = '<';
    else
        bo = little ? '<' : '>';
    snprintf(out, 16, "%c%c%zd", bo, kind, itemsize);
    return 1;
}

/* tag, [dtype, data, dim0, dim1, ...]: one level of nesting. */
static int write_ndarray(walker *w, const char *dtype, size_t dlen, const void *data, size_t len,
                         int ndim, const Py_ssize_t *shape)
{
    if (w->depth >= w->max_depth)
        return fail(w, PyExc_ValueError, "nesting deeper than %d levels", w->max_depth);
    if (len > UINT32_MAX)
        return fail_code(w, FAB_ERANGE);
    if (count_items(w, 2 + ndim, 1, 1) < 0 || put_tag(w, FAB_TAG_NDARRAY) < 0)
        return -1;
    if (room(w, 2 * FAB_PUT_MAX + dlen) < 0)
        return -1;
    wout *o = w->out;
    o->len += fab_put_array_header(o->data + o->len, (uint32_t)(2 + ndim));
    o->len += fab_put_str_header(o->data + o->len, (uint32_t)dlen);
    memcpy(o->data + o->len, dtype, dlen);
    o->len += dlen;
    if (enc_bin(w, data, len) < 0)
        return -1;
    for (int i = 0; i < ndim; i++)
        PUT(w, fab_put_uint64(P, (uint64_t)shape[i]));
    return 0;
}

/* Runs to_data(v) of an entry; a TypeError or ValueError it raises becomes
 * the walker's error at the current path. New reference or NULL. */
static PyObject *call_to_data(walker *w, PyObject *entry, PyObject *v)
{
    PyObject *data = PyObject_CallOneArg(PyTuple_GET_ITEM(entry, 2), v);
    if (data == NULL && (PyErr_ExceptionMatches(PyExc_TypeError) ||
                         PyErr_ExceptionMatches(PyExc_ValueError))) {
        PyObject *t, *val, *tb;
        PyErr_Fetch(&t, &val, &tb);
        PyErr_NormalizeException(&t, &val, &tb);
        PyObject *type = PyErr_GivenExceptionMatches(t, PyExc_TypeError) ? PyExc_TypeError
                                                                          : PyExc_ValueError;
        fail(w, type, "%S", val);
        Py_XDECREF(t);
        Py_XDECREF(val);
        Py_XDECREF(tb);
    }
    return data;
}

static int enc_ndarray(walker *w, PyObject *v, PyObject *entry)
{
    Py_buffer view;
    char dtype[16];
    if (PyObject_GetBuffer(v, &view, PyBUF_RECORDS_RO) == 0) {
        if (view.ndim <= 64 && dtype_of(view.format, view.itemsize, dtype)) {
            int rc;
            if (PyBuffer_IsContiguous(&view, 'C')) {
                rc = write_ndarray(w, dtype, strlen(dtype), view.buf, (size_t)view.len, view.ndim,
                                   view.shape);
            } else {
                /* Fortran-ordered or strided: the C-ordered copy, so that an
                 * array keys and travels like its C-ordered equal. */
                void *copy = PyMem_Malloc(view.len ? (size_t)view.len : 1);
                if (copy == NULL) {
                    PyBuffer_Release(&view);
                    PyErr_NoMemory();
                    return -1;
                }
                rc = PyBuffer_ToContiguous(copy, &view, view.len, 'C');
                if (rc == 0)
                    rc = write_ndarray(w, dtype, strlen(dtype), copy, (size_t)view.len,
                                       view.ndim, view.shape);
                PyMem_Free(copy);
            }
            PyBuffer_Release(&view);
            return rc;
        }
        PyBuffer_Release(&view);
    } else if (PyErr_ExceptionMatches(PyExc_BufferError) ||
               PyErr_ExceptionMatches(PyExc_ValueError) ||
               PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear(); /* no buffer for this dtype: the adapter says */
    } else {
        return -1;
    }
    /* The adapter: (dtype str, data buffer, shape tuple). */
    PyObject *t = call_to_data(w, entry, v);
    if (t == NULL)
        return -1;
    int rc = -1;
    Py_ssize_t shape[64];
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(t, 0)) || !PyTuple_Check(PyTuple_GET_ITEM(t, 2)) ||
        PyTuple_GET_SIZE(PyTuple_GET_ITEM(t, 2)) > 64) {
        fail(w, PyExc_TypeError, "the array adapter must return (dtype, data, shape)");
        goto done;
    }
    PyObject *shp = PyTuple_GET_ITEM(t, 2);
    int ndim = (int)PyTuple_GET_SIZE(shp);
    for (int i = 0; i < ndim; i++) {
        shape[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shp, i));
        if (shape[i] < 0) {
            if (!PyErr_Occurred())
                fail(w, PyExc_ValueError, "negative dimension");
            goto done;
        }
    }
    Py_ssize_t dlen;
    const char *ds = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(t, 0), &dlen);
    if (ds == NULL)
        goto done;
    Py_buffer data;
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(t, 1), &data, PyBUF_SIMPLE) < 0)
        goto done;
    rc = write_ndarray(w, ds, (size_t)dlen, data.buf, (size_t)data.len, ndim, shape);
    PyBuffer_Release(&data);
done:
    Py_DECREF(t);
    return rc;
}

/* tag, [name, to_data(v)]: a registered type (or an Opaque passed on). */
static int enc_typed(walker *w, PyObject *v, PyObject *entry, long kind)
{
    if (enter(w, v) < 0) /* the [name, data] level; to_data may give v back */
        return -1;
    int rc = -1;
    PyObject *name = PyTuple_GET_ITEM(entry, 1), *data = call_to_data(w, entry, v);
    if (data == NULL)
        goto out;
    if (kind == KIND_OPAQUE) {
        if (!PyTuple_Check(data) || PyTuple_GET_SIZE(data) != 2 ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(data, 0))) {
            fail(w, PyExc_TypeError, "malformed Opaque");
            goto out;
        }
        name = PyTuple_GET_ITEM(data, 0);
        Py_SETREF(data, Py_NewRef(PyTuple_GET_ITEM(data, 1)));
    }
    Py_INCREF(name);
    if (count_items(w, 2, 1, 1) == 0 && put_tag(w, FAB_TAG_TYPED) == 0 &&
        room(w, FAB_PUT_MAX) == 0) {
        w->out->len += fab_put_array_header(w->out->data + w->out->len, 2);
        if (enc_str(w, name) == 0 && enc_value(w, data) == 0)
            rc = 0;
        else
            add_segment(w, "<%U data>", name);
    }
    Py_DECREF(name);
out:
    Py_XDECREF(data);
    leave(w);
    return rc;
}

/* Secret(commit=True) in a key: ext 4 holding HMAC-SHA256 of the value's
 * canonical bytes under the commitment key. An error inside the value says
 * nothing about it (its path could show a dict key of the secret). */
static int enc_committed(walker *w, PyObject *secret)
{
    if (w->borrowed)
        return give_up(w);
    fab_state *st = w->st;
    if (st->commit_key == NULL)
        return fail(w, PyExc_ValueError,
                    "a Secret(commit=True) needs a commitment key: set FABRIC_COMMIT_KEY "
                    "or FABRIC_COMMIT_KEY_FILE, or call fabric.set_commit_key()");
    int commit;
    PyObject *value = Py_NewRef(fab_py_secret_value(secret, &commit));
    PyObject *key = Py_NewRef(st->commit_key);
    walker *inner = PyMem_Malloc(sizeof(walker));
    int rc = -1;
    if (inner == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    walker_init(inner, st, NULL, NULL);
    if (enc_value(inner, value) < 0) {
        PyObject *type = inner->err_type;
        Py_CLEAR(inner->err_msg);
        Py_CLEAR(inner->path);
        if (type != NULL)
            fail(w, type, "the value of a committed Secret cannot be keyed");
        walker_destroy(inner);
        goto out;
    }
    uint8_t mac[FAB_SHA256_LEN];
    int code = fab_hmac_sha256(PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key),
                               inner->main.data, inner->main.len, mac);
    memset(inner->main.data, 0, inner->main.len);
    walker_destroy(inner);
    if (check(w, code) < 0 || room(w, 3 + FAB_SHA256_LEN) < 0)
        goto out;
    uint8_t *p = w->out->data + w->out->len;
    p += fab_put_ext_header(p, FAB_EXT_COMMITTED, FAB_SHA256_LEN);
    memcpy(p, mac, FAB_SHA256_LEN);
    w->out->len = (size_t)(p + FAB_SHA256_LEN - w->out->data);
    rc = 0;
out:
    PyMem_Free(inner);
    Py_DECREF(key);
    Py_DECREF(value);
    return rc;
}

/*
 * What fab_py_pieces_bytes_plain stops at (w->spot): where a walk for
 * Secrets as fabric.values.walk makes it (every item of a list, tuple, set,
 * frozenset or dict, subclasses too, through their iteration) could see
 * other items than this walk, which reads the items a container holds: a
 * registered subclass (its adapter's data is walked instead), a dict
 * subclass (walk calls its items()), and a subclass with an iterator of its
 * own. A subclass that iterates as its kind (SecretRef, a namedtuple not
 * registered) is walked here as its kind, item by item.
 */
static int spotted(walker *w)
{
    w->spotted = 1; /* no error recorded: the caller's own check decides */
    return -1;
}

static int container_kind(PyObject *v)
{
    return PyTuple_Check(v) || PyList_Check(v) || PyDict_Check(v) || PyAnySet_Check(v);
}

/* A subclass of tuple, list, set or frozenset that iterates otherwise than
 * its kind, or a dict subclass (v is not of an exact builtin type). */
static int own_items(PyObject *v)
{
    PyTypeObject *tp = Py_TYPE(v);
    if (PyTuple_Check(v))
        return tp->tp_iter != PyTuple_Type.tp_iter;
    if (PyList_Check(v))
        return tp->tp_iter != PyList_Type.tp_iter;
    if (PyFrozenSet_Check(v))
        return tp->tp_iter != PyFrozenSet_Type.tp_iter;
    if (PyAnySet_Check(v))
        return tp->tp_iter != PySet_Type.tp_iter;
    return PyDict_Check(v);
}

static int enc_entry(walker *w, PyObject *v, PyObject *entry)
{
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(entry, 0));
    if (kind == KIND_NDARRAY)
        return enc_ndarray(w, v, entry);
    return enc_typed(w, v, entry, kind);
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
    if (put_scalar(w->out, v, w->vmode))
        return 0; /* when enc_value found no room for it */
    if (w->spot && tp == w->st->Secret_Type)
        return spotted(w);
    if (tp == w->st->Secret_Type || v == w->st->redacted) {
        int commit = 0;
        if (tp == w->st->Secret_Type && !w->vmode)
            fab_py_secret_value(v, &commit);
        if (commit)
            return enc_committed(w, v);
        PUT(w, fab_put_ext_header(P, FAB_EXT_SECRET, 0));
        return 0;
    }
    if (tp == &PyComplex_Type)
        return enc_complex(w, v);
    if (tp == &PyByteArray_Type) {
        if (w->vmode && (put_tag(w, FAB_TAG_BYTEARRAY) < 0 || count_items(w, 0, 0, 1) < 0))
            return -1;
        return enc_buffer(w, v);
    }
    if (tp != &PyMemoryView_Type) {
        PyObject *entry = NULL;
        int found = lookup_type(w, tp, &entry);
        if (found < 0)
            return -1;
        if (found && w->spot && container_kind(v)) {
            Py_DECREF(entry); /* a registered container: its items as its adapter says */
            return spotted(w);
        }
        if (found) {
            int rc = enc_entry(w, v, entry);
            Py_DECREF(entry);
            return rc;
        }
    }
    /* Subclasses of the builtin kinds encode as their kind. */
    if (w->spot && own_items(v))
        return spotted(w);
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
    if (PyComplex_Check(v))
        return enc_complex(w, v);
    if (PyObject_CheckBuffer(v))
        return enc_buffer(w, v); /* any other buffer is bytes */
    return fail(w, PyExc_TypeError,
                "cannot %s object of type %.100s (register it with fabric.register_type)",
                w->vmode ? "encode" : "key", tp->tp_name);
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
    if (o->cap - o->len >= FAB_PUT_MAX && put_scalar(o, v, w->vmode))
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

/* Sets a walker up for the value encoding and writes the payload prefix. */
static int value_walker(walker *w, int max_depth)
{
    w->vmode = 1;
    w->read_limits = 1;
    w->max_depth = max_depth;
    if (room(w, 2) < 0)
        return -1;
    w->out->data[w->out->len++] = FAB_VALUE_MAGIC;
    w->out->data[w->out->len++] = FAB_VALUE_VERSION;
    return 0;
}

/* The owned walk of a record, straight into enc's sink (so a large body
 * is not copied twice): what a borrowed walk that gave up falls back to.
 * 0, or -1 with the exception raised. */
static int encode_record_owned(walker *w, fab_state *st, fab_enc *enc, PyObject *value,
                               const char *root, int max_depth)
{
    walker_init(w, st, NULL, enc);
    int rc = value_walker(w, max_depth);
    if (rc == 0)
        rc = enc_value(w, value);
    if (rc == 0)
        rc = out_flush(w, &w->main);
    if (rc < 0)
        walker_raise(w, root);
    walker_destroy(w);
    return rc;
}

int fab_py_encode_record(fab_state *st, fab_enc *enc, PyObject *value, const char *root)
{
    walker w;
    /* A borrowed walk in memory first, handed over in one piece; when it
     * gives up (a registered type, an array, a large buffer), an owned walk
     * straight into the sink. */
    walker_init(&w, st, NULL, NULL);
    w.borrowed = 1;
    int rc = value_walker(&w, FAB_MAX_RECORD_DEPTH);
    if (rc == 0)
        rc = enc_value(&w, value);
    if (rc < 0 && w.restart) {
        walker_destroy(&w);
        return encode_record_owned(&w, st, enc, value, root, FAB_MAX_RECORD_DEPTH);
    }
    if (rc == 0)
        rc = check(&w, enc->sink(enc->ctx, w.main.data, w.main.len));
    if (rc < 0)
        walker_raise(&w, root);
    walker_destroy(&w);
    return rc;
}

int fab_py_encode_item(fab_state *st, fab_enc *enc, PyObject *value, const char *root)
{
    walker w;
    return encode_record_owned(&w, st, enc, value, root, FAB_MAX_DEPTH);
}

int fab_py_with_record(fab_state *st, PyObject *value, const char *root,
                       int (*use)(void *ctx, const uint8_t *data, size_t len), void *ctx)
{
    walker w;
    /* The borrowed walk's bytes are handed to use() where they lie, in the
     * walker's stage (on this C stack for a small value): no copy. */
    walker_init(&w, st, NULL, NULL);
    w.borrowed = 1;
    int rc = value_walker(&w, FAB_MAX_RECORD_DEPTH);
    if (rc == 0)
        rc = enc_value(&w, value);
    if (rc == 0) {
        rc = use(ctx, w.main.data, w.main.len);
        walker_destroy(&w);
        return rc;
    }
    if (!w.restart) {
        walker_raise(&w, root);
        walker_destroy(&w);
        return -1;
    }
    walker_destroy(&w);
    fab_buf buf;
    fab_enc enc;
    fab_buf_init(&buf);
    fab_enc_init(&enc, fab_buf_sink, &buf);
    rc = encode_record_owned(&w, st, &enc, value, root, FAB_MAX_RECORD_DEPTH);
    if (rc == 0)
        rc = use(ctx, buf.data, buf.len);
    fab_buf_destroy(&buf);
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

static PyObject *encode_value(PyObject *module, PyObject *value)
{
    fab_state *st = fab_get_state(module);
    walker w;
    walker_init(&w, st, NULL, NULL);
    w.borrowed = 1;
    int rc = value_walker(&w, FAB_MAX_DEPTH);
    if (rc == 0)
        rc = enc_value(&w, value);
    if (rc < 0 && w.restart) {
        walker_destroy(&w);
        walker_init(&w, st, NULL, NULL);
        rc = value_walker(&w, FAB_MAX_DEPTH);
        if (rc == 0)
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

static PyObject *set_commit_key(PyObject *module, PyObject *key)
{
    fab_state *st = fab_get_state(module);
    if (key == Py_None) {
        Py_CLEAR(st->commit_key);
        Py_RETURN_NONE;
    }
    if (!PyBytes_CheckExact(key) || PyBytes_GET_SIZE(key) < 16) {
        PyErr_SetString(PyExc_ValueError, "a commitment key is bytes of at least 16 bytes");
        return NULL;
    }
    Py_XSETREF(st->commit_key, Py_NewRef(key));
    Py_RETURN_NONE;
}

static PyObject *install_values(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_CheckExact(args[0]) || !PyDict_CheckExact(args[1]) ||
        !PyCallable_Check(args[2]) || !PyType_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "_install_values(by_type: dict, by_name: dict, hook, opaque_type)");
        return NULL;
    }
    fab_state *st = fab_get_state(module);
    Py_XSETREF(st->vt_by_type, Py_NewRef(args[0]));
    Py_XSETREF(st->vt_by_name, Py_NewRef(args[1]));
    Py_XSETREF(st->vt_hook, Py_NewRef(args[2]));
    Py_XSETREF(st->opaque_type, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

/* ======================================================================== */
/* Digests of a sequence of pieces (a request's identity)                    */
/* ======================================================================== */

static int walk_pieces(walker *w, const fab_py_piece *pieces, size_t n, const char *whole,
                       const char **root)
{
    for (size_t i = 0; i < n; i++) {
        const fab_py_piece *pc = &pieces[i];
        int rc;
        if (pc->value != NULL) {
            rc = enc_value(w, pc->value);
        } else {
            wout *o = w->out;
            if (o->cap - o->len >= pc->len && pc->len < GIL_RELEASE_THRESHOLD) {
                fab_copy(o->data + o->len, pc->bytes, pc->len); /* a key: inline */
                o->len += pc->len;
                continue;
            }
            rc = write_body(w, pc->bytes, pc->len);
        }
        if (rc < 0) {
            *root = pc->root ? pc->root : whole; /* (read only to name a failure) */
            return -1;
        }
    }
    *root = whole;
    return out_flush(w, &w->main);
}

int fab_py_encode_pieces(fab_state *st, fab_enc *enc, const char *whole,
                         const fab_py_piece *pieces, size_t n)
{
    const char *root = whole;
    walker w;
    walker_init(&w, st, NULL, enc);
    int rc = walk_pieces(&w, pieces, n, whole, &root);
    if (rc < 0)
        walker_raise(&w, root);
    walker_destroy(&w);
    return rc;
}

/* The pieces' canonical bytes as a new bytes object (a borrowed walk first,
 * as canonical_bytes), or None when the walk met a fabric.Secret or a
 * subclass of tuple, list, dict, set or frozenset: what a caller that must
 * look for Secrets the way fabric.values.walk does checks itself. */
PyObject *fab_py_pieces_bytes_plain(fab_state *st, const char *whole, const fab_py_piece *pieces,
                                    size_t n)
{
    const char *root = whole;
    walker w;
    walker_init(&w, st, NULL, NULL);
    w.borrowed = 1;
    w.spot = 1;
    int rc = walk_pieces(&w, pieces, n, whole, &root);
    if (rc < 0 && w.restart && !w.spotted) {
        walker_destroy(&w);
        walker_init(&w, st, NULL, NULL);
        w.spot = 1;
        root = whole;
        rc = walk_pieces(&w, pieces, n, whole, &root);
    }
    PyObject *out = NULL;
    if (rc < 0 && w.spotted && w.err_type == NULL && !PyErr_Occurred()) {
        Py_CLEAR(w.path);
        out = Py_NewRef(Py_None);
    } else if (rc < 0) {
        walker_raise(&w, root);
    } else {
        out = PyBytes_FromStringAndSize((const char *)w.main.data, (Py_ssize_t)w.main.len);
    }
    walker_destroy(&w);
    return out;
}

/* A borrowed walk first, an owned one when the borrowed walk gives up. */
int fab_py_digest_pieces(fab_state *st, const char *whole, const fab_py_piece *pieces, size_t n,
                         uint8_t out[FAB_SHA256_LEN])
{
    fab_sha256 *h = take_hasher(st);
    if (h == NULL)
        return -1;
    const char *root = whole;
    walker w;
    walker_init(&w, st, h, NULL);
    w.borrowed = 1;
    int rc = walk_pieces(&w, pieces, n, whole, &root);
    if (rc < 0 && w.restart) {
        walker_destroy(&w);
        walker_init(&w, st, h, NULL);
        root = whole;
        rc = check(&w, fab_sha256_reset(h));
        if (rc == 0)
            rc = walk_pieces(&w, pieces, n, whole, &root);
    }
    if (rc == 0 && check(&w, fab_sha256_final(h, out)) < 0) {
        root = whole;
        rc = -1;
    }
    if (rc < 0)
        walker_raise(&w, root);
    walker_destroy(&w);
    give_hasher(st, h, rc != 0);
    return rc;
}

/* ======================================================================== */
/* Module part                                                              */
/* ======================================================================== */

static PyMethodDef walk_functions[] = {
    {"canonical_bytes", canonical_bytes, METH_O,
     "canonical_bytes(value, /)\n--\n\n"
     "The canonical msgpack encoding of value (docs/spec/content-key.md)."},
    {"encode_value", encode_value, METH_O,
     "encode_value(value, /)\n--\n\n"
     "The value encoding of value (docs/spec/values.md): decode_value gives back an\n"
     "equal value of the same type, recursively."},
    {"_set_commit_key", set_commit_key, METH_O,
     "_set_commit_key(key, /)\n--\n\n"
     "Internal: the commitment key of Secret(commit=True) (bytes), or None."},
    {"_install_values", (PyCFunction)(void (*)(void))install_values, METH_FASTCALL,
     "_install_values(by_type, by_name, hook, opaque_type, /)\n--\n\n"
     "Internal: hands the type registry of fabric.values to the extension."},
    {NULL, NULL, 0, NULL},
};

int fab_py_walk_exec(PyObject *module, fab_state *st)
{
    FAB_UNUSED(st);
    return PyModule_AddFunctions(module, walk_functions);
}

int fab_py_walk_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->vt_by_type);
    Py_VISIT(st->vt_by_name);
    Py_VISIT(st->vt_hook);
    Py_VISIT(st->opaque_type);
    return 0;
}

void fab_py_walk_clear(fab_state *st)
{
    Py_CLEAR(st->vt_by_type);
    Py_CLEAR(st->vt_by_name);
    Py_CLEAR(st->vt_hook);
    Py_CLEAR(st->opaque_type);
    Py_CLEAR(st->commit_key);
    fab_sha256_free(st->spare_hasher);
    st->spare_hasher = NULL;
    fab_keymemo_free(st->key_memo);
    st->key_memo = NULL;
}
