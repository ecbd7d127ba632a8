/*
 * fabric.EvalCassette: the CPython face of the ledger (csrc/ledger.c).
 *
 * The glue converts keys and values and maps errors; the ledger does the
 * rest. All ledger I/O and replay run with the GIL released; the ledger's
 * own mutex makes it thread-safe. A cassette counts the threads inside the
 * ledger (users) so that close() from one thread never frees the ledger
 * under another: the last user out finishes a deferred close.
 */
#include "glue.h"

#include <string.h>

#include <time.h>

#include "fabric/ledger.h"
#include "fabric/mpdec.h"

typedef struct {
    PyObject_HEAD
    fab_ledger *l;
    PyObject *path;      /* str */
    int mode;
    int durability;
    int closed;          /* close() was called */
    int users;           /* threads inside the ledger, GIL released */
} CassetteObject;

static const char *const durability_names[] = {"os", "fsync", "group"};

/* ======================================================================== */
/* Errors                                                                    */
/* ======================================================================== */

static int set_attr(PyObject *exc, const char *name, PyObject *value)
{
    if (value == NULL)
        return -1;
    int rc = PyObject_SetAttrString(exc, name, value);
    Py_DECREF(value);
    return rc;
}

/* Raises the exception for a ledger failure on path (a str). Returns NULL. */
static PyObject *raise_ledger(fab_state *st, PyObject *path, int rc, const fab_ledger_error *err)
{
    if (rc == FAB_ENOMEM)
        return PyErr_NoMemory();
    const char *msg = err && err->msg[0] ? err->msg : fab_strerror(rc);
    PyObject *type, *exc;
    switch (rc) {
    case FAB_EIO:
    case FAB_ESTATE:
    case FAB_ELOCKED:
    case FAB_EOVERFLOW: {
        int e = err && err->sys_errno ? err->sys_errno : EIO;
        if (rc == FAB_ESTATE && !(err && err->sys_errno))
            e = EBADF; /* read-only */
        type = st->exc[rc == FAB_ELOCKED ? FAB_PYEXC_LedgerLockedError : FAB_PYEXC_LedgerError];
        exc = PyObject_CallFunction(type, "isO", e, msg, path);
        break;
    }
    case FAB_EFORMAT:
    case FAB_ETRUNCATED:
    case FAB_EVERSION:
    case FAB_ECORRUPT:
        type = st->exc[rc == FAB_EVERSION   ? FAB_PYEXC_LedgerVersionError
                       : rc == FAB_ECORRUPT ? FAB_PYEXC_LedgerCorruptionError
                                            : FAB_PYEXC_LedgerFormatError];
        exc = PyObject_CallNoArgs(type);
        if (exc) {
            PyObject *text = err && err->has_offset && rc != FAB_ECORRUPT
                                 ? PyUnicode_FromFormat("%U: %s (at offset %llu)", path, msg,
                                                        (unsigned long long)err->offset)
                                 : PyUnicode_FromFormat("%U: %s", path, msg);
            PyObject *args = text ? PyTuple_Pack(1, text) : NULL;
            Py_XDECREF(text);
            if (args == NULL || PyObject_SetAttrString(exc, "args", args) < 0) {
                Py_XDECREF(args);
                Py_DECREF(exc);
                return NULL;
            }
            Py_DECREF(args);
        }
        break;
    case FAB_ERANGE:
    case FAB_EINVAL:
        PyErr_Format(PyExc_ValueError, "%U: %s", path, msg);
        return NULL;
    default:
        return fab_py_raise_code(st, rc, msg);
    }
    if (exc == NULL)
        return NULL;
    if (set_attr(exc, "path", Py_NewRef(path)) < 0 ||
        set_attr(exc, "offset", err && err->has_offset ? PyLong_FromUnsignedLongLong(err->offset)
                                                       : Py_NewRef(Py_None)) < 0 ||
        (rc == FAB_ELOCKED && set_attr(exc, "pid", PyLong_FromLong(err ? err->pid : 0)) < 0) ||
        (rc == FAB_EVERSION && set_attr(exc, "version", PyLong_FromLong(err ? err->version : 0)) < 0)) {
        Py_DECREF(exc);
        return NULL;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

/* ======================================================================== */
/* Helpers                                                                   */
/* ======================================================================== */

static fab_state *cassette_state(PyObject *self)
{
    return fab_state_from_type(Py_TYPE(self));
}

/* Enters the ledger: refuses a closed cassette, counts the user. */
static int enter(CassetteObject *c)
{
    if (c->closed || c->l == NULL) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed cassette");
        return -1;
    }
    c->users++;
    return 0;
}

static void leave(CassetteObject *c)
{
    if (--c->users == 0 && c->closed && c->l) {
        fab_ledger *l = c->l;
        c->l = NULL;
        Py_BEGIN_ALLOW_THREADS
        fab_ledger_close(l);
        Py_END_ALLOW_THREADS
    }
}

/* Reads a key: a ContentKey or any 32-byte buffer. */
static int get_key(PyObject *obj, uint8_t key[32])
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "a cassette key is a ContentKey or a 32-byte digest, not %s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (view.len != 32) {
        PyErr_Format(PyExc_ValueError, "a cassette key has 32 bytes, this one has %zd",
                     view.len);
        PyBuffer_Release(&view);
        return -1;
    }
    memcpy(key, view.buf, 32);
    PyBuffer_Release(&view);
    return 0;
}

/* get_key for the hot calls (record, get): a ContentKey's digest is read
 * in place, with no buffer export. */
static inline int read_key(fab_state *st, PyObject *obj, uint8_t key[32])
{
    const uint8_t *digest = fab_py_key_digest(st, obj);
    if (digest == NULL)
        return get_key(obj, key);
    memcpy(key, digest, 32);
    return 0;
}

static PyObject *make_key(fab_state *st, const uint8_t key[32])
{
    PyObject *digest = PyBytes_FromStringAndSize((const char *)key, 32);
    if (digest == NULL)
        return NULL;
    PyObject *k = PyObject_CallOneArg((PyObject *)st->ContentKey_Type, digest);
    Py_DECREF(digest);
    return k;
}

/* Decodes reply bytes from the ledger. They were written by canonical
 * encoding and are checksummed, so the limits only scale with the input. */
static PyObject *decode(fab_state *st, const fab_ledger_ref *ref)
{
    fab_mp_limits lim;
    fab_mp_limits_default(&lim);
    lim.max_str = lim.max_bin = lim.max_ext = UINT32_MAX;
    lim.max_depth = FAB_MAX_RECORD_DEPTH;
    return fab_py_decode_record(st, ref->data, ref->len, &lim, 0);
}

static int parse_choice(PyObject *obj, const char *what, const char *const *names, int n,
                        int *out)
{
    if (obj == NULL)
        return 0;
    if (PyUnicode_Check(obj)) {
        const char *s = PyUnicode_AsUTF8(obj);
        if (s == NULL)
            return -1;
        for (int i = 0; i < n; i++)
            if (strcmp(s, names[i]) == 0) {
                *out = i;
                return 0;
            }
    }
    PyObject *choices = PyUnicode_FromString("");
    for (int i = 0; choices && i < n; i++)
        Py_SETREF(choices, PyUnicode_FromFormat("%U%s\"%s\"", choices, i ? ", " : "", names[i]));
    if (choices)
        PyErr_Format(PyExc_ValueError, "%s must be one of %U, not %R", what, choices, obj);
    Py_XDECREF(choices);
    return -1;
}

/* ======================================================================== */
/* _LedgerView: a read-only buffer over the mapping                          */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    fab_lmap *map;
    const uint8_t *data;
    Py_ssize_t len;
} ViewObject;

static void View_dealloc(PyObject *self)
{
    ViewObject *v = (ViewObject *)self;
    PyTypeObject *tp = Py_TYPE(self);
    fab_lmap_release(v->map);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int View_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    ViewObject *v = (ViewObject *)self;
    return PyBuffer_FillInfo(view, self, (void *)v->data, v->len, 1, flags);
}

static PyType_Slot View_slots[] = {
    {Py_tp_doc, "The bytes of one reply inside a cassette's mapped ledger (read-only)."},
    {Py_tp_dealloc, View_dealloc},
    {Py_bf_getbuffer, View_getbuffer},
    {0, NULL},
};

static PyType_Spec View_spec = {
    .name = "fabric._LedgerView",
    .basicsize = sizeof(ViewObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = View_slots,
};

/* A memoryview over ref's bytes; takes over ref->map. */
static PyObject *make_view(fab_state *st, fab_ledger_ref *ref)
{
    ViewObject *v = PyObject_New(ViewObject, st->LedgerView_Type);
    if (v == NULL) {
        fab_lmap_release(ref->map);
        return NULL;
    }
    Py_INCREF(st->LedgerView_Type); /* heap type instances own a type reference */
    v->map = ref->map;
    v->data = ref->data;
    v->len = (Py_ssize_t)ref->len;
    ref->map = NULL;
    PyObject *mv = PyMemoryView_FromObject((PyObject *)v);
    Py_DECREF(v);
    return mv;
}

/* ======================================================================== */
/* Iterators and streams                                                     */
/* ======================================================================== */

enum { ITER_KEYS, ITER_ITEMS, ITER_REQUESTS };

typedef struct {
    PyObject_HEAD
    CassetteObject *c;
    fab_ledger_pos pos;
    int kind;
    PyObject *op; /* ITER_REQUESTS: the op's canonical str bytes, or NULL for all */
} IterObject;

/* The request bytes of a held key, 0 when it has none, -1 with an exception
 * (ref holds a mapping reference on 1). */
static int request_of(fab_state *st, CassetteObject *c, const uint8_t key[32],
                      fab_ledger_ref *ref)
{
    fab_ledger_error err = {0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ledger_request(c->l, key, 1, ref, &err);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        raise_ledger(st, c->path, rc, &err);
        return -1;
    }
    return rc;
}

/* Whether identity bytes (an array whose first two elements are the
 * scheme tag and the op, both str) name the op whose canonical str bytes
 * are op. */
static int names_op(const uint8_t *p, size_t n, const char *op, size_t oplen)
{
    size_t at;
    if (n >= 1 && p[0] >= 0x90 && p[0] <= 0x9f)
        at = 1;
    else if (n >= 3 && p[0] == 0xdc)
        at = 3;
    else
        return 0;
    if (at >= n)
        return 0;
    size_t tag;
    uint8_t b = p[at];
    if (b >= 0xa0 && b <= 0xbf)
        tag = 1 + (size_t)(b - 0xa0);
    else if (b == 0xd9 && at + 1 < n)
        tag = 2 + (size_t)p[at + 1];
    else
        return 0;
    at += tag;
    return at <= n && n - at >= oplen && memcmp(p + at, op, oplen) == 0;
}

typedef struct {
    PyObject_HEAD
    CassetteObject *c;
    fab_ledger_cursor cur;
    int done;
} StreamObject;

typedef struct {
    PyObject_HEAD
    CassetteObject *c;
    uint8_t key[32];
    uint64_t begin;
    uint64_t count;
    int state; /* 0 open, 1 closed, 2 aborted, 3 no-op (key already held) */
    fab_buf pending; /* items not written yet: [4-byte length][bytes]... */
    size_t n_pending;
} WriterObject;

/* A stream writer writes its items in batches of this many items or
 * bytes (spec: Streams), and before its END. */
#define WRITER_BATCH_ITEMS 1024
#define WRITER_BATCH_BYTES ((size_t)256 << 10)

static void child_dealloc(PyObject *self, CassetteObject *c)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(c);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static void Iter_dealloc(PyObject *self)
{
    Py_CLEAR(((IterObject *)self)->op);
    child_dealloc(self, ((IterObject *)self)->c);
}
static void Stream_dealloc(PyObject *self) { child_dealloc(self, ((StreamObject *)self)->c); }

/* A stream's lazy reader for a key known to be a committed stream. */
static PyObject *open_stream(CassetteObject *c, fab_state *st, const uint8_t key[32])
{
    StreamObject *s = PyObject_New(StreamObject, st->CassetteStream_Type);
    if (s == NULL)
        return NULL;
    Py_INCREF(st->CassetteStream_Type);
    s->c = (CassetteObject *)Py_NewRef(c);
    s->done = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ledger_stream_open(c->l, key, &s->cur);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        Py_DECREF(s);
        PyErr_SetString(PyExc_KeyError, "not a committed stream (the ledger changed meanwhile)");
        return NULL;
    }
    return (PyObject *)s;
}

/* The value of a committed record: the decoded reply, or a stream reader. */
static PyObject *value_of(CassetteObject *c, fab_state *st, const uint8_t key[32],
                          fab_ledger_ref *ref)
{
    if (ref->type == FAB_REC_STREAM_END)
        return open_stream(c, st, key);
    return decode(st, ref);
}

static PyObject *Iter_next(PyObject *self)
{
    IterObject *it = (IterObject *)self;
    CassetteObject *c = it->c;
    fab_state *st = cassette_state((PyObject *)c);
    if (st == NULL || enter(c) < 0)
        return NULL;
    uint8_t key[32];
    fab_ledger_ref ref;
    fab_ledger_error err = {0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ledger_next(c->l, &it->pos, key, 1, &ref, &err);
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (rc < 0)
        raise_ledger(st, c->path, rc, &err);
    while (rc == 1 && it->kind == ITER_REQUESTS) {
        fab_lmap_release(ref.map);
        fab_ledger_ref req;
        int got = request_of(st, c, key, &req);
        if (got < 0) {
            leave(c);
            return NULL;
        }
        if (got && (it->op == NULL ||
                    names_op(req.data, req.len, PyBytes_AS_STRING(it->op),
                             (size_t)PyBytes_GET_SIZE(it->op)))) {
            PyObject *k = make_key(st, key);
            PyObject *b = PyBytes_FromStringAndSize((const char *)req.data, (Py_ssize_t)req.len);
            fab_lmap_release(req.map);
            if (k && b)
                out = PyTuple_Pack(2, k, b);
            Py_XDECREF(k);
            Py_XDECREF(b);
            leave(c);
            return out;
        }
        if (got)
            fab_lmap_release(req.map);
        Py_BEGIN_ALLOW_THREADS
        rc = fab_ledger_next(c->l, &it->pos, key, 1, &ref, &err);
        Py_END_ALLOW_THREADS
        if (rc < 0)
            raise_ledger(st, c->path, rc, &err);
    }
    if (rc == 1) {
        PyObject *k = make_key(st, key);
        if (k && it->kind == ITER_KEYS) {
            out = k;
        } else if (k) {
            PyObject *v = value_of(c, st, key, &ref);
            if (v)
                out = PyTuple_Pack(2, k, v);
            Py_XDECREF(v);
            Py_DECREF(k);
        }
        fab_lmap_release(ref.map);
    }
    leave(c);
    return out; /* NULL without an exception: the end */
}

static PyType_Slot Iter_slots[] = {
    {Py_tp_doc, "Iterator over a cassette's keys or items, in ledger order."},
    {Py_tp_dealloc, Iter_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, Iter_next},
    {0, NULL},
};

static PyType_Spec Iter_spec = {
    .name = "fabric._CassetteIterator",
    .basicsize = sizeof(IterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Iter_slots,
};

/*
 * The step of iteration and next_raw(): the stream's next item into *item
 * (item->map a new reference) with the cassette entered, 1: the caller uses
 * it, then leave()s. 0 at the end, -1 with an exception set; both with the
 * cassette left and (unless it could not be entered) the stream done.
 */
static int stream_step(StreamObject *s, fab_state *st, fab_ledger_ref *item)
{
    CassetteObject *c = s->c;
    if (enter(c) < 0)
        return -1;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ledger_stream_next(c->l, &s->cur, 1, item);
    Py_END_ALLOW_THREADS
    if (rc == 1)
        return 1;
    s->done = 1;
    if (rc == FAB_ECORRUPT) {
        fab_ledger_error err = {0};
        snprintf(err.msg, sizeof(err.msg),
                 "the stream whose END record is at offset %llu promises %llu items "
                 "but has %llu", (unsigned long long)s->cur.end,
                 (unsigned long long)s->cur.count, (unsigned long long)s->cur.seen);
        err.has_offset = 1;
        err.offset = s->cur.end;
        raise_ledger(st, c->path, FAB_ECORRUPT, &err);
    } else if (rc < 0) {
        fab_ledger_error err = {0};
        snprintf(err.msg, sizeof(err.msg), "%s",
                 rc == FAB_ESTATE
                     ? "the ledger was replaced (compacted, restored) while this stream "
                       "was being read: get the stream again"
                     : "the ledger shrank while this stream was being read");
        err.sys_errno = rc == FAB_ESTATE ? ESTALE : EIO;
        raise_ledger(st, c->path, rc == FAB_ESTATE ? FAB_ESTATE : FAB_EIO, &err);
    }
    leave(c);
    return rc < 0 ? -1 : 0;
}

static PyObject *Stream_next(PyObject *self)
{
    StreamObject *s = (StreamObject *)self;
    if (s->done)
        return NULL;
    fab_state *st = cassette_state((PyObject *)s->c);
    fab_ledger_ref item;
    if (st == NULL || stream_step(s, st, &item) <= 0)
        return NULL; /* without an exception: the end */
    PyObject *out = decode(st, &item);
    fab_lmap_release(item.map);
    leave(s->c);
    return out;
}

/*
 * next_raw(): the next item's recorded bytes (the record's payload: the
 * value encoding of [tag, item]) as a read-only memoryview over the ledger's
 * mapping, no copy and no decode, with their CRC-32C derived from the
 * record's validated checksum (fab_ledger_ref_crc; None if it cannot be):
 * (view, crc), or None at the end. The same checks and errors as iteration
 * (records the ledger did not validate at open are validated before they
 * are returned). For a sender that forwards recorded items as they are; the
 * view keeps the mapping alive.
 */
static PyObject *Stream_next_raw(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    StreamObject *s = (StreamObject *)self;
    if (s->done)
        Py_RETURN_NONE;
    fab_state *st = cassette_state((PyObject *)s->c);
    if (st == NULL)
        return NULL;
    fab_ledger_ref item;
    int rc = stream_step(s, st, &item);
    if (rc <= 0)
        return rc < 0 ? NULL : Py_NewRef(Py_None);
    uint32_t crc = 0;
    int known = fab_ledger_ref_crc(&item, &crc) == FAB_OK;
    PyObject *out = NULL, *view = make_view(st, &item);
    if (view != NULL) {
        out = known ? Py_BuildValue("(Nk)", view, (unsigned long)crc)
                    : Py_BuildValue("(NO)", view, Py_None);
    }
    leave(s->c);
    return out;
}

static PyMethodDef Stream_methods[] = {
    {"next_raw", Stream_next_raw, METH_NOARGS,
     "next_raw($self, /)\n--\n\n"
     "The next item's recorded bytes (the value encoding of [tag, item]) as a\n"
     "read-only memoryview over the ledger's mapping and their CRC-32C, derived\n"
     "from the record's validated checksum (None if it cannot be): (view, crc);\n"
     "None at the end."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Stream_slots[] = {
    {Py_tp_doc, "The items of a streamed reply, read lazily from the ledger."},
    {Py_tp_methods, Stream_methods},
    {Py_tp_dealloc, Stream_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, Stream_next},
    {0, NULL},
};

static PyType_Spec Stream_spec = {
    .name = "fabric.CassetteStream",
    .basicsize = sizeof(StreamObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Stream_slots,
};

/* ---- stream writer ------------------------------------------------------------ */

static void Writer_dealloc(PyObject *self)
{
    fab_buf_destroy(&((WriterObject *)self)->pending);
    child_dealloc(self, ((WriterObject *)self)->c);
}

/* Writes the pending items (one append). 0, or -1 with an exception set:
 * then items of the stream are lost, so the writer is finished as
 * aborted (an ABORT is written if the ledger still takes one) and never
 * commits a stream with items missing. */
static int writer_flush(WriterObject *w, fab_state *st)
{
    if (w->n_pending == 0)
        return 0;
    CassetteObject *c = w->c;
    if (enter(c) < 0)
        return -1;
    fab_ledger_error err;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ledger_stream_append_batch(c->l, w->key, w->begin, w->pending.data,
                                        w->pending.len, &err);
    if (rc < 0) {
        fab_ledger_error err2;
        (void)fab_ledger_stream_abort(c->l, w->key, w->begin, &err2);
    }
    Py_END_ALLOW_THREADS
    leave(c);
    w->pending.len = 0;
    w->n_pending = 0;
    if (rc < 0) {
        w->state = 2;
        raise_ledger(st, c->path, rc, &err);
        return -1;
    }
    return 0;
}

static int writer_ready(WriterObject *w)
{
    if (w->state == 1 || w->state == 2) {
        PyErr_SetString(PyExc_ValueError, "the stream writer is already closed");
        return -1;
    }
    return 0;
}

static PyObject *Writer_append(PyObject *self, PyObject *item)
{
    WriterObject *w = (WriterObject *)self;
    if (writer_ready(w) < 0)
        return NULL;
    CassetteObject *c = w->c;
    fab_state *st = cassette_state((PyObject *)c);
    if (st == NULL)
        return NULL;
    /* The item goes to the pending batch, after a 4-byte length. */
    fab_buf *pending = &w->pending;
    size_t at = pending->len;
    if (fab_buf_append(pending, "\0\0\0\0", 4) < 0)
        return PyErr_NoMemory();
    fab_enc enc;
    fab_enc_init(&enc, fab_buf_sink, pending);
    int enc_rc = fab_py_encode_record(st, &enc, item, "item");
    if (enc_rc < 0 || w->state == 3 || pending->len - at - 4 > UINT32_MAX) {
        /* not kept: a bad item, or the key is held (the stream is a no-op) */
        pending->len = at;
        if (enc_rc < 0)
            return NULL;
        if (w->state == 3)
            Py_RETURN_NONE;
        PyErr_SetString(st->exc[FAB_PYEXC_LedgerError],
                        "a stream item is larger than the ledger's limit");
        return NULL;
    }
    fab_store_le32(pending->data + at, (uint32_t)(pending->len - at - 4));
    w->n_pending++;
    w->count++;
    if ((w->n_pending >= WRITER_BATCH_ITEMS || pending->len >= WRITER_BATCH_BYTES) &&
        writer_flush(w, st) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *writer_finish(WriterObject *w, int commit)
{
    if (writer_ready(w) < 0)
        return NULL;
    CassetteObject *c = w->c;
    if (w->state == 3) {
        w->state = commit ? 1 : 2;
        Py_RETURN_FALSE;
    }
    fab_state *st = cassette_state((PyObject *)c);
    if (st == NULL)
        return NULL;
    if (!commit) { /* an aborted stream's items are never read */
        w->pending.len = 0;
        w->n_pending = 0;
    }
    if (writer_flush(w, st) < 0) {
        w->state = 2;
        return NULL;
    }
    if (enter(c) < 0)
        return NULL;
    fab_ledger_error err;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = commit ? fab_ledger_stream_end(c->l, w->key, w->begin, w->count, &err)
                : fab_ledger_stream_abort(c->l, w->key, w->begin, &err);
    Py_END_ALLOW_THREADS
    leave(c);
    w->state = commit ? 1 : 2;
    if (rc < 0)
        return raise_ledger(st, c->path, rc, &err);
    return PyBool_FromLong(rc == 1);
}

static PyObject *Writer_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return writer_finish((WriterObject *)self, 1);
}

static PyObject *Writer_abort(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    WriterObject *w = (WriterObject *)self;
    if (w->state == 1 || w->state == 2)
        Py_RETURN_NONE; /* aborting a finished stream is harmless */
    PyObject *r = writer_finish(w, 0);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *Writer_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self);
}

static PyObject *Writer_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    WriterObject *w = (WriterObject *)self;
    if (w->state == 1 || w->state == 2)
        Py_RETURN_FALSE;
    int failed = nargs > 0 && args[0] != Py_None;
    PyObject *r = failed ? Writer_abort(self, NULL) : Writer_close(self, NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *Writer_get_held(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((WriterObject *)self)->state == 3);
}

static PyObject *Writer_get_count(PyObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(((WriterObject *)self)->count);
}

static PyMethodDef Writer_methods[] = {
    {"append", Writer_append, METH_O,
     "append($self, item, /)\n--\n\nRecords one item of the stream (a chunk record)."},
    {"close", Writer_close, METH_NOARGS,
     "close($self, /)\n--\n\nCommits the stream with a terminator record, durable per the "
     "cassette's mode. True when the stream now holds the key, False when the key was "
     "already held (first write wins)."},
    {"abort", Writer_abort, METH_NOARGS,
     "abort($self, /)\n--\n\nAbandons the stream: the key stays unheld."},
    {"__enter__", Writer_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Writer_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Writer_getset[] = {
    {"held", Writer_get_held, NULL,
     "True when the key was already held: appends are accepted and dropped.", NULL},
    {"count", Writer_get_count, NULL, "Items appended so far.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Writer_slots[] = {
    {Py_tp_doc, "Records a streamed reply item by item; see EvalCassette.record_stream."},
    {Py_tp_dealloc, Writer_dealloc},
    {Py_tp_methods, Writer_methods},
    {Py_tp_getset, Writer_getset},
    {0, NULL},
};

static PyType_Spec Writer_spec = {
    .name = "fabric.CassetteStreamWriter",
    .basicsize = sizeof(WriterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Writer_slots,
};

/* ======================================================================== */
/* EvalCassette                                                              */
/* ======================================================================== */

/* Calls the progress callable ctx(done, total) from a thread without the
 * GIL: 0, or -1 with its exception left set when stop, else written as
 * unraisable. */
static int call_progress(void *ctx, uint64_t done, uint64_t total, int stop)
{
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *r = PyObject_CallFunction((PyObject *)ctx, "KK", (unsigned long long)done,
                                        (unsigned long long)total);
    if (r == NULL && !stop)
        PyErr_WriteUnraisable((PyObject *)ctx);
    Py_XDECREF(r);
    PyGILState_Release(g);
    return r == NULL ? -1 : 0;
}

/* An open's replay reports progress; it cannot be stopped halfway. */
static void progress_cb(void *ctx, uint64_t done, uint64_t total)
{
    (void)call_progress(ctx, done, total, 0);
}

/* A compaction's: an exception in the callback (a KeyboardInterrupt
 * included) stops it, the ledger unchanged, and is raised by compact(). */
static int stop_cb(void *ctx, uint64_t done, uint64_t total)
{
    return call_progress(ctx, done, total, 1);
}

static PyObject *cassette_open(PyTypeObject *type, PyObject *path_arg, int mode, int durability,
                               int recover, PyObject *progress, uint64_t created_ns,
                               int exclusive, int checkpoint)
{
    fab_state *st = fab_state_from_type(type);
    if (st == NULL)
        return NULL;
    PyObject *fs = NULL, *path = NULL;
    if (!PyUnicode_FSConverter(path_arg, &fs))
        return NULL;
    if ((path = PyUnicode_DecodeFSDefault(PyBytes_AS_STRING(fs))) == NULL) {
        Py_DECREF(fs);
        return NULL;
    }
    fab_ledger_options opt = {0};
    opt.mode = mode;
    opt.durability = durability;
    opt.recover = recover;
    opt.created_ns = created_ns;
    opt.exclusive = exclusive;
    opt.no_checkpoint = !checkpoint;
    if (progress && progress != Py_None) {
        opt.progress = progress_cb;
        opt.progress_ctx = progress;
    }
    fab_ledger_error err;
    fab_ledger *l = NULL;
    int rc;
    const char *cpath = PyBytes_AS_STRING(fs);
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ledger_open(&l, cpath, &opt, &err);
    Py_END_ALLOW_THREADS
    Py_DECREF(fs);
    if (rc < 0) {
        raise_ledger(st, path, rc, &err);
        Py_DECREF(path);
        return NULL;
    }
    CassetteObject *c = (CassetteObject *)type->tp_alloc(type, 0);
    if (c == NULL) {
        fab_ledger_close(l);
        Py_DECREF(path);
        return NULL;
    }
    c->l = l;
    c->path = path;
    c->mode = mode;
    c->durability = durability;
    return (PyObject *)c;
}

static const char *const mode_names[] = {"r", "a"};
static const char *const recover_names[] = {"strict", "salvage"};

static PyObject *Cassette_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", "mode", "durability", "recover", "progress", "created_ns",
                             "exclusive", "checkpoint", NULL};
    PyObject *path, *mode_o = NULL, *dur_o = NULL, *rec_o = NULL, *progress = NULL;
    PyObject *created_o = NULL;
    unsigned long long created_ns = 0;
    int exclusive = 0, checkpoint = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OO$OOOpp:EvalCassette", kwlist, &path,
                                     &mode_o, &dur_o, &rec_o, &progress, &created_o,
                                     &exclusive, &checkpoint))
        return NULL;
    /* Not the "K" format: it wraps -1 and 2**70 into the header's 64 bits. */
    if (created_o != NULL) {
        if (!PyLong_Check(created_o) || PyBool_Check(created_o)) {
            PyErr_Format(PyExc_TypeError, "created_ns must be an int (nanoseconds since the "
                         "Unix epoch, 0 = now), not %.100s", Py_TYPE(created_o)->tp_name);
            return NULL;
        }
        created_ns = PyLong_AsUnsignedLongLong(created_o);
        if (created_ns == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                return NULL;
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "created_ns must be from 0 to 2**64 - 1 "
                         "(nanoseconds since the Unix epoch, 0 = now), not %R", created_o);
            return NULL;
        }
    }
    int mode = FAB_LEDGER_WRITE, dur = FAB_DUR_GROUP, rec = FAB_RECOVER_STRICT;
    if (parse_choice(mode_o, "mode", mode_names, 2, &mode) < 0 ||
        parse_choice(dur_o, "durability", durability_names, 3, &dur) < 0 ||
        parse_choice(rec_o, "recover", recover_names, 2, &rec) < 0)
        return NULL;
    if (progress && progress != Py_None && !PyCallable_Check(progress)) {
        PyErr_SetString(PyExc_TypeError, "progress must be a callable(done, total) or None");
        return NULL;
    }
    return cassette_open(type, path, mode, dur, rec, progress, created_ns, exclusive,
                         checkpoint);
}

static PyObject *Cassette_from_ledger(PyObject *cls, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", "recover", "progress", "checkpoint", NULL};
    PyObject *path, *rec_o = NULL, *progress = NULL;
    int checkpoint = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$OOp:from_ledger", kwlist, &path, &rec_o,
                                     &progress, &checkpoint))
        return NULL;
    int rec = FAB_RECOVER_STRICT;
    if (parse_choice(rec_o, "recover", recover_names, 2, &rec) < 0)
        return NULL;
    return cassette_open((PyTypeObject *)cls, path, FAB_LEDGER_READ, FAB_DUR_OS, rec, progress, 0,
                         0, checkpoint);
}

static void Cassette_dealloc(PyObject *self)
{
    CassetteObject *c = (CassetteObject *)self;
    PyTypeObject *tp = Py_TYPE(self);
    /* Children hold a reference, so nobody is inside the ledger now. */
    fab_ledger_close(c->l);
    Py_XDECREF(c->path);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* The request bytes of request= (None: NULL; an EvalRequest of key: its
 * identity bytes; else any bytes-like object, kept as given) as a new bytes
 * object in *out. -1 with an exception. */
static int request_arg(fab_state *st, PyObject *request, const uint8_t key[32], PyObject **out)
{
    *out = NULL;
    if (request == NULL || request == Py_None)
        return 0;
    const uint8_t *digest;
    if (PyObject_TypeCheck(request, st->EvalRequest_Type) &&
        fab_py_request_info(st, request, &digest, NULL, NULL) == 0 &&
        memcmp(digest, key, 32) != 0) {
        /* Kept beside the reply it would pass for that reply's request
         * (request_bytes(), a rekey moving the reply to its key). */
        PyObject *mine = fab_py_key_from_digest(st, digest);
        PyObject *given = fab_py_key_from_digest(st, key);
        if (mine && given)
            PyErr_Format(PyExc_ValueError, "request= is the request of %S, not of the key "
                         "given, %S", mine, given);
        Py_XDECREF(mine);
        Py_XDECREF(given);
        return -1;
    }
    if (PyObject_TypeCheck(request, st->EvalRequest_Type))
        *out = fab_py_request_identity(st, request);
    else if (PyObject_CheckBuffer(request) && !PyUnicode_Check(request))
        *out = PyBytes_FromObject(request);
    else
        PyErr_Format(PyExc_TypeError, "request must be an EvalRequest, bytes or None, not "
                     "%.100s", Py_TYPE(request)->tp_name);
    return *out == NULL ? -1 : 0;
}

/* Whether this thread is the process's only Python thread (one
 * interpreter, one thread state): then no other thread can be waiting for
 * the GIL, and a record keeps it through the ledger write rather than pay
 * for its release and retaking (about a tenth of a small record's time).
 * A thread that a C library attaches meanwhile waits for the write to
 * end, as it would for any C call. */
static int alone(void)
{
    PyThreadState *ts = PyThreadState_Get();
    PyInterpreterState *interp = PyInterpreterState_Head();
    PyThreadState *head = PyInterpreterState_ThreadHead(ts->interp);
    return interp == ts->interp && PyInterpreterState_Next(interp) == NULL && head == ts &&
           PyThreadState_Next(head) == NULL;
}

/* Records an encoded reply under key, expiring at expires_ns (0: never);
 * the GIL is held on entry and exit, released for the ledger write. 1
 * written, 0 held, -1 with an exception set. */
static int record_expiring(fab_state *st, CassetteObject *c, const uint8_t key[32],
                           const uint8_t *data, size_t len, uint64_t expires_ns, PyObject *req)
{
    if (enter(c) < 0)
        return -1;
    fab_ledger_error err;
    int rc;
    const char *rdata = req ? PyBytes_AS_STRING(req) : NULL;
    size_t rlen = req ? (size_t)PyBytes_GET_SIZE(req) : 0;
    if (alone()) {
        rc = fab_ledger_record_req(c->l, key, rdata, rlen, data, len, expires_ns, &err);
    } else {
        Py_BEGIN_ALLOW_THREADS
        rc = fab_ledger_record_req(c->l, key, rdata, rlen, data, len, expires_ns, &err);
        Py_END_ALLOW_THREADS
    }
    leave(c);
    if (rc < 0) {
        raise_ledger(st, c->path, rc, &err);
        return -1;
    }
    return rc;
}

/* One record() in progress: what fab_py_with_record hands the encoded
 * reply to (record_use), and what came of it. */
typedef struct record_job {
    fab_state *st;
    CassetteObject *c;
    const uint8_t *key;
    uint64_t expires_ns;
    PyObject *req;
    size_t nbytes; /* the encoded reply's size */
    int rc;        /* record_expiring's result */
} record_job;

static int record_use(void *ctx, const uint8_t *data, size_t len)
{
    record_job *j = ctx;
    j->nbytes = len;
    j->rc = record_expiring(j->st, j->c, j->key, data, len, j->expires_ns, j->req);
    return j->rc < 0 ? -1 : 0;
}

/* The expiry time of expire= (seconds from now, a positive number, or None
 * for never): 0 for never, else nanoseconds since the epoch; -1 with an
 * exception set. */
static int expiry_of(PyObject *expire, uint64_t *out)
{
    *out = 0;
    if (expire == NULL || expire == Py_None)
        return 0;
    if (PyBool_Check(expire) || !(PyLong_Check(expire) || PyFloat_Check(expire))) {
        PyErr_Format(PyExc_TypeError, "expire must be a number of seconds or None, not %.100s",
                     Py_TYPE(expire)->tp_name);
        return -1;
    }
    double secs = PyFloat_AsDouble(expire);
    if (secs == -1.0 && PyErr_Occurred())
        return -1;
    if (!(secs > 0) || secs > 1e11) { /* NaN too; 1e11 s is about 3,000 years */
        PyErr_Format(PyExc_ValueError, "expire must be a positive number of seconds, not %R",
                     expire);
        return -1;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *out = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + (uint64_t)(secs * 1e9);
    return 0;
}

static PyObject *Cassette_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    CassetteObject *c = (CassetteObject *)self;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "record() takes a key and a reply (%zd given)", nargs);
        return NULL;
    }
    PyObject *expire = NULL, *request = NULL;
    for (Py_ssize_t i = 0; kwnames && i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "expire") == 0) {
            expire = args[nargs + i];
        } else if (PyUnicode_Check(name) &&
                   PyUnicode_CompareWithASCIIString(name, "request") == 0) {
            request = args[nargs + i];
        } else {
            PyErr_Format(PyExc_TypeError, "record() got an unexpected keyword argument %R",
                         name);
            return NULL;
        }
    }
    uint64_t expires_ns;
    if (expiry_of(expire, &expires_ns) < 0)
        return NULL;
    fab_state *st = cassette_state(self);
    uint8_t key[32];
    PyObject *req;
    if (st == NULL || read_key(st, args[0], key) < 0 || request_arg(st, request, key, &req) < 0)
        return NULL;
    /* The key's index slot loads while the reply encodes. */
    if (c->l != NULL)
        fab_ledger_prefetch(c->l, key);
    /* The reply is encoded and written in one go: the ledger reads the
     * walker's bytes where they were made. */
    record_job job = {st, c, key, expires_ns, req, 0, -1};
    int rc = fab_py_with_record(st, args[1], "reply", record_use, &job);
    Py_XDECREF(req);
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(job.rc);
}

/* record_use for fab_py_cassette_record: the key and request are read
 * once the reply has encoded (a bad reply is reported first, as before). */
typedef struct fabric_job {
    record_job job;
    PyObject *key, *request;
} fabric_job;

static int fabric_use(void *ctx, const uint8_t *data, size_t len)
{
    fabric_job *f = ctx;
    uint8_t k[32];
    f->job.nbytes = len;
    if (get_key(f->key, k) < 0 || request_arg(f->job.st, f->request, k, &f->job.req) < 0)
        return -1;
    f->job.key = k;
    int rc = record_use(&f->job, data, len);
    Py_CLEAR(f->job.req);
    return rc;
}

int fab_py_cassette_record(fab_state *st, PyObject *cassette, PyObject *key, PyObject *record,
                           PyObject *request, size_t *nbytes)
{
    if (Py_IS_TYPE(cassette, st->EvalCassette_Type)) {
        fabric_job f = {{st, (CassetteObject *)cassette, NULL, 0, NULL, 0, -1}, key, request};
        int rc = fab_py_with_record(st, record, "reply", fabric_use, &f);
        *nbytes = f.job.nbytes;
        return rc < 0 ? -1 : f.job.rc;
    }
    fab_buf buf;
    fab_buf_init(&buf);
    fab_enc enc;
    fab_enc_init(&enc, fab_buf_sink, &buf);
    if (fab_py_encode_record(st, &enc, record, "reply") < 0) {
        fab_buf_destroy(&buf);
        return -1;
    }
    *nbytes = buf.len;
    int rc;
    if (request != NULL && request != Py_None &&
               PyObject_TypeCheck(cassette, st->EvalCassette_Type)) {
        /* A subclass: its own record(), with the request. */
        PyObject *r = NULL, *meth = PyObject_GetAttrString(cassette, "record");
        PyObject *kw = meth ? Py_BuildValue("{sO}", "request", request) : NULL;
        PyObject *pos = kw ? PyTuple_Pack(2, key, record) : NULL;
        if (pos)
            r = PyObject_Call(meth, pos, kw);
        Py_XDECREF(pos);
        Py_XDECREF(kw);
        Py_XDECREF(meth);
        rc = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
    } else {
        /* Any other cassette (a stand-in): its own record(key, reply). */
        PyObject *r = PyObject_CallMethod(cassette, "record", "OO", key, record);
        rc = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
    }
    fab_buf_destroy(&buf);
    return rc;
}

/* Looks key up with the GIL held: a hit is an fstat and a hash probe
 * under the ledger's mutex; a miss also looks at the file's tail and
 * replays what other processes appended since (or the file that replaced
 * this one). -1 with an exception. */
static int lookup(fab_state *st, CassetteObject *c, PyObject *key_obj, fab_ledger_ref *ref,
                  uint8_t key[32])
{
    if ((st ? read_key(st, key_obj, key) : get_key(key_obj, key)) < 0 || enter(c) < 0)
        return -1;
    fab_ledger_error err = {0};
    int found = fab_ledger_lookup(c->l, key, 1, ref, &err);
    leave(c);
    if (found < 0) {
        if (st == NULL)
            st = cassette_state((PyObject *)c);
        if (st)
            raise_ledger(st, c->path, found, &err);
        return -1;
    }
    return found;
}

/* The shared front of get/get_raw/get_stream: checks the (key[, default])
 * arguments and looks the key up. -1 with an exception, 0 when not held
 * (the caller returns the default), 1 when held (ref holds the mapping). */
static int lookup_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                       const char *name, fab_state **st, fab_ledger_ref *ref, uint8_t key[32])
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes a key and an optional default (%zd given)",
                     name, nargs);
        return -1;
    }
    *st = cassette_state(self);
    return *st ? lookup(*st, (CassetteObject *)self, args[0], ref, key) : -1;
}

static PyObject *Cassette_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CassetteObject *c = (CassetteObject *)self;
    fab_state *st;
    fab_ledger_ref ref;
    uint8_t key[32];
    int found = lookup_call(self, args, nargs, "get", &st, &ref, key);
    if (found < 0)
        return NULL;
    if (!found)
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    PyObject *v = value_of(c, st, key, &ref);
    fab_lmap_release(ref.map);
    return v;
}

int fab_py_cassette_stamp(fab_state *st, PyObject *cassette, PyObject *key, uint64_t stamp[2])
{
    fab_ledger_ref ref;
    uint8_t k[32];
    int found = lookup(st, (CassetteObject *)cassette, key, &ref, k);
    if (found == 1) {
        stamp[0] = ref.offset;
        stamp[1] = ref.gen;
        fab_lmap_release(ref.map);
    }
    return found;
}

PyObject *fab_py_cassette_get_stamped(fab_state *st, PyObject *cassette, PyObject *key,
                                      uint64_t stamp[2])
{
    fab_ledger_ref ref;
    uint8_t k[32];
    stamp[0] = stamp[1] = 0;
    int found = lookup(st, (CassetteObject *)cassette, key, &ref, k);
    if (found < 0)
        return NULL;
    if (!found)
        Py_RETURN_NONE;
    stamp[0] = ref.offset;
    stamp[1] = ref.gen;
    PyObject *v = value_of((CassetteObject *)cassette, st, k, &ref);
    fab_lmap_release(ref.map);
    return v;
}

static PyObject *Cassette_get_raw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    fab_state *st;
    fab_ledger_ref ref;
    uint8_t key[32];
    int found = lookup_call(self, args, nargs, "get_raw", &st, &ref, key);
    if (found < 0)
        return NULL;
    if (!found)
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    if (ref.type != FAB_REC_REPLY) {
        fab_lmap_release(ref.map);
        PyErr_SetString(PyExc_TypeError, "the key holds a streamed reply: use get_stream()");
        return NULL;
    }
    return make_view(st, &ref);
}

static int Cassette_contains(PyObject *self, PyObject *key_obj)
{
    fab_ledger_ref ref;
    uint8_t key[32];
    int found = lookup(NULL, (CassetteObject *)self, key_obj, &ref, key);
    if (found == 1)
        fab_lmap_release(ref.map);
    return found;
}

static Py_ssize_t Cassette_len(PyObject *self)
{
    CassetteObject *c = (CassetteObject *)self;
    if (enter(c) < 0)
        return -1;
    size_t n = fab_ledger_count(c->l);
    leave(c);
    return (Py_ssize_t)n;
}

static PyObject *make_iter(PyObject *self, int kind)
{
    CassetteObject *c = (CassetteObject *)self;
    fab_state *st = cassette_state(self);
    if (st == NULL || enter(c) < 0)
        return NULL;
    leave(c);
    IterObject *it = PyObject_New(IterObject, st->CassetteIter_Type);
    if (it == NULL)
        return NULL;
    Py_INCREF(st->CassetteIter_Type);
    it->c = (CassetteObject *)Py_NewRef(self);
    it->pos.off = it->pos.gen = 0;
    it->kind = kind;
    it->op = NULL;
    return (PyObject *)it;
}

static PyObject *Cassette_iter(PyObject *self) { return make_iter(self, ITER_KEYS); }

/* keys_packed(): every committed key's 32-byte digest, end to end, in ledger
 * order, as one bytes object; built without a Python object per key and
 * with the GIL released (what a node announces as its holdings at start). */
static PyObject *Cassette_keys_packed(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    CassetteObject *c = (CassetteObject *)self;
    fab_state *st = cassette_state(self);
    if (st == NULL || enter(c) < 0)
        return NULL;
    fab_buf buf;
    fab_buf_init(&buf);
    fab_ledger_pos pos = {0};
    fab_ledger_error err = {0};
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
    if (fab_buf_reserve(&buf, 32 * fab_ledger_count(c->l)) < 0)
        rc = FAB_ENOMEM;
    for (;;) {
        if (rc < 0)
            break;
        uint8_t key[32];
        fab_ledger_ref ref = {0};
        rc = fab_ledger_next(c->l, &pos, key, 0, &ref, &err);
        fab_lmap_release(ref.map);
        if (rc != 1)
            break; /* 0: the end, or an error */
        if (fab_buf_append(&buf, key, 32) < 0)
            rc = FAB_ENOMEM;
    }
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (rc == FAB_ENOMEM)
        PyErr_NoMemory();
    else if (rc < 0)
        raise_ledger(st, c->path, rc, &err);
    else
        out = PyBytes_FromStringAndSize((const char *)buf.data, (Py_ssize_t)buf.len);
    fab_buf_destroy(&buf);
    leave(c);
    return out;
}

static PyObject *Cassette_items(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return make_iter(self, ITER_ITEMS);
}

static PyObject *Cassette_requests(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"op", NULL};
    PyObject *op = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:requests", names, &op))
        return NULL;
    PyObject *enc = NULL;
    if (op != Py_None) {
        if (!PyUnicode_Check(op)) {
            PyErr_Format(PyExc_TypeError, "requests(): op must be a str or None, not %.100s",
                         Py_TYPE(op)->tp_name);
            return NULL;
        }
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(op, &n);
        if (u == NULL)
            return NULL;
        /* the msgpack str header of the canonical encoding, then the UTF-8 */
        uint8_t h[5];
        size_t hl;
        if (n < 32) {
            h[0] = (uint8_t)(0xa0 | n);
            hl = 1;
        } else if (n < 256) {
            h[0] = 0xd9;
            h[1] = (uint8_t)n;
            hl = 2;
        } else if (n < 65536) {
            h[0] = 0xda;
            h[1] = (uint8_t)(n >> 8);
            h[2] = (uint8_t)n;
            hl = 3;
        } else {
            h[0] = 0xdb;
            h[1] = (uint8_t)((uint64_t)n >> 24);
            h[2] = (uint8_t)(n >> 16);
            h[3] = (uint8_t)(n >> 8);
            h[4] = (uint8_t)n;
            hl = 5;
        }
        if ((enc = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)hl + n)) == NULL)
            return NULL;
        memcpy(PyBytes_AS_STRING(enc), h, hl);
        memcpy(PyBytes_AS_STRING(enc) + hl, u, (size_t)n);
    }
    IterObject *it = (IterObject *)make_iter(self, ITER_REQUESTS);
    if (it == NULL) {
        Py_XDECREF(enc);
        return NULL;
    }
    it->op = enc;
    return (PyObject *)it;
}

static PyObject *Cassette_request_bytes(PyObject *self, PyObject *key_obj)
{
    CassetteObject *c = (CassetteObject *)self;
    fab_state *st = cassette_state(self);
    uint8_t key[32];
    if (st == NULL || get_key(key_obj, key) < 0 || enter(c) < 0)
        return NULL;
    fab_ledger_ref ref;
    int got = request_of(st, c, key, &ref);
    leave(c);
    if (got <= 0)
        return got < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *out = PyBytes_FromStringAndSize((const char *)ref.data, (Py_ssize_t)ref.len);
    fab_lmap_release(ref.map);
    return out;
}


static PyObject *Cassette_record_stream(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"", "request", NULL};
    PyObject *key_obj, *request = Py_None, *req;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$O:record_stream", names, &key_obj,
                                     &request))
        return NULL;
    CassetteObject *c = (CassetteObject *)self;
    fab_state *st = cassette_state(self);
    uint8_t key[32];
    if (st == NULL || get_key(key_obj, key) < 0 || request_arg(st, request, key, &req) < 0)
        return NULL;
    if (enter(c) < 0) {
        Py_XDECREF(req);
        return NULL;
    }
    fab_ledger_error err;
    uint64_t begin = 0;
    int rc;
    const char *rdata = req ? PyBytes_AS_STRING(req) : NULL;
    size_t rlen = req ? (size_t)PyBytes_GET_SIZE(req) : 0;
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ledger_stream_begin_req(c->l, key, rdata, rlen, &begin, &err);
    Py_END_ALLOW_THREADS
    leave(c);
    Py_XDECREF(req);
    if (rc < 0)
        return raise_ledger(st, c->path, rc, &err);
    WriterObject *w = PyObject_New(WriterObject, st->CassetteWriter_Type);
    if (w == NULL)
        return NULL;
    Py_INCREF(st->CassetteWriter_Type);
    w->c = (CassetteObject *)Py_NewRef(self);
    memcpy(w->key, key, 32);
    w->begin = begin;
    w->count = 0;
    w->state = rc == 1 ? 0 : 3;
    fab_buf_init(&w->pending);
    w->n_pending = 0;
    return (PyObject *)w;
}

static PyObject *Cassette_get_stream(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    CassetteObject *c = (CassetteObject *)self;
    fab_state *st;
    fab_ledger_ref ref;
    uint8_t key[32];
    int found = lookup_call(self, args, nargs, "get_stream", &st, &ref, key);
    if (found < 0)
        return NULL;
    if (!found)
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    fab_lmap_release(ref.map);
    if (ref.type != FAB_REC_STREAM_END) {
        PyErr_SetString(PyExc_TypeError, "the key holds a single reply: use get()");
        return NULL;
    }
    if (enter(c) < 0)
        return NULL;
    PyObject *s = open_stream(c, st, key);
    leave(c);
    return s;
}

static int dict_set_u64(PyObject *d, const char *name, uint64_t v)
{
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    int rc = o ? PyDict_SetItemString(d, name, o) : -1;
    Py_XDECREF(o);
    return rc;
}

static PyObject *Cassette_stats(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    CassetteObject *c = (CassetteObject *)self;
    if (enter(c) < 0)
        return NULL;
    fab_ledger_stats s;
    fab_ledger_get_stats(c->l, &s);
    leave(c);
    double per_key = s.keys ? (double)s.index_bytes / (double)s.keys : 0.0;
    PyObject *d = Py_BuildValue(
        "{s:O,s:s,s:s,s:i,s:K,s:s,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:d,s:K,s:d,s:K,s:O}",
        "path", c->path, "mode", mode_names[c->mode], "durability",
        c->mode == FAB_LEDGER_WRITE ? durability_names[c->durability] : "none", "version",
        s.version, "created_ns", (unsigned long long)s.created_ns, "creator", s.creator,
        "records", (unsigned long long)s.records, "keys", (unsigned long long)s.keys, "bytes",
        (unsigned long long)s.bytes, "duplicates", (unsigned long long)s.duplicates,
        "torn_tails_cut", (unsigned long long)s.torn_tails_cut, "torn_bytes",
        (unsigned long long)s.torn_bytes, "salvage_skips", (unsigned long long)s.salvage_skips,
        "salvage_bytes", (unsigned long long)s.salvage_bytes, "open_seconds",
        (double)s.open_ns / 1e9, "index_bytes", (unsigned long long)s.index_bytes,
        "index_bytes_per_key", per_key, "syncs",
        (unsigned long long)s.syncs, "failed", s.failed ? Py_True : Py_False);
    if (d == NULL)
        return NULL;
    PyObject *w = s.writers < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(s.writers);
    PyObject *r = w ? PyLong_FromUnsignedLongLong(s.reloads) : NULL;
    PyObject *fr = r ? PyLong_FromUnsignedLongLong(s.foreign_records) : NULL;
    PyObject *lr = fr ? PyLong_FromUnsignedLongLong(s.leftovers_removed) : NULL;
    int bad = lr == NULL || PyDict_SetItemString(d, "writers", w) < 0 ||
              PyDict_SetItemString(d, "reloads", r) < 0 ||
              PyDict_SetItemString(d, "foreign_records", fr) < 0 ||
              PyDict_SetItemString(d, "leftovers_removed", lr) < 0 ||
              dict_set_u64(d, "tombstones", s.tombstones) < 0 ||
              PyDict_SetItemString(d, "exclusive", s.exclusive ? Py_True : Py_False) < 0 ||
              dict_set_u64(d, "lock_owners_dead", s.owner_dead) < 0 ||
              dict_set_u64(d, "lazy_appends", s.lazy_appends) < 0 ||
              dict_set_u64(d, "reserved_bytes", s.reserved_bytes) < 0 ||
              PyDict_SetItemString(d, "mapped_appends", s.mapped_appends ? Py_True : Py_False) < 0;
    static const char *const lock_names[] = {"none", "ofd", "mutex"};
    PyObject *al = bad ? NULL : PyUnicode_FromString(lock_names[s.append_lock % 3]);
    bad = bad || al == NULL || PyDict_SetItemString(d, "append_lock", al) < 0;
    Py_XDECREF(al);
    static const char *const ckpt_names[] = {"none", "used", "ignored", "rebuilt"};
    PyObject *ck = bad ? NULL : Py_BuildValue(
        "{s:s,s:K,s:K,s:K}", "state", ckpt_names[s.ckpt_state & 3], "covered_bytes",
        (unsigned long long)s.ckpt_covered, "keys", (unsigned long long)s.ckpt_keys, "written",
        (unsigned long long)s.ckpt_written);
    PyObject *orp = ck ? PyLong_FromUnsignedLongLong(s.open_replayed) : NULL;
    bad = bad || orp == NULL || PyDict_SetItemString(d, "checkpoint", ck) < 0 ||
          PyDict_SetItemString(d, "open_replayed", orp) < 0;
    Py_XDECREF(ck);
    Py_XDECREF(orp);
    Py_XDECREF(w);
    Py_XDECREF(r);
    Py_XDECREF(fr);
    Py_XDECREF(lr);
    if (bad) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static int no_ledger_op(fab_ledger *l, fab_ledger_error *err)
{
    FAB_UNUSED(l);
    FAB_UNUSED(err);
    return 0;
}

/* op(ledger, &err) on the cassette, entered, without the GIL: its result
 * (>= 0), or -1 with the exception set (a closed cassette's, or the
 * ledger's error). */
static int call_ledger(PyObject *self, int (*op)(fab_ledger *, fab_ledger_error *))
{
    CassetteObject *c = (CassetteObject *)self;
    fab_state *st = cassette_state(self);
    if (st == NULL || enter(c) < 0)
        return -1;
    fab_ledger_error err;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = op(c->l, &err);
    Py_END_ALLOW_THREADS
    leave(c);
    if (rc < 0) {
        raise_ledger(st, c->path, rc, &err);
        return -1;
    }
    return rc;
}

static PyObject *Cassette_sync(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    int writer = ((CassetteObject *)self)->mode == FAB_LEDGER_WRITE; /* (set at open) */
    if (call_ledger(self, writer ? fab_ledger_sync : no_ledger_op) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Cassette_flush(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    CassetteObject *c = (CassetteObject *)self;
    if (enter(c) < 0)
        return NULL;
    leave(c);
    Py_RETURN_NONE; /* every record is handed to the OS before record() returns */
}

static PyObject *Cassette_refresh(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    int rc = call_ledger(self, fab_ledger_refresh);
    return rc < 0 ? NULL : PyLong_FromLong(rc);
}

static PyObject *Cassette_compact(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    CassetteObject *c = (CassetteObject *)self;
    fab_state *st = cassette_state(self);
    if (st == NULL)
        return NULL;
    PyObject *dest_arg = NULL, *progress = NULL, *max_obj = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "compact() takes at most one positional argument "
                     "(%zd given)", nargs);
        return NULL;
    }
    if (nargs == 1)
        dest_arg = args[0];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "progress") == 0) {
            progress = args[nargs + i];
        } else if (PyUnicode_Check(name) &&
                   PyUnicode_CompareWithASCIIString(name, "max_bytes") == 0) {
            max_obj = args[nargs + i];
        } else {
            PyErr_Format(PyExc_TypeError, "compact() got an unexpected keyword argument %R",
                         name);
            return NULL;
        }
    }
    if (progress == Py_None)
        progress = NULL;
    unsigned long long max_bytes = 0;
    if (max_obj && max_obj != Py_None) {
        if (!PyLong_Check(max_obj) || PyBool_Check(max_obj)) {
            PyErr_Format(PyExc_TypeError, "max_bytes must be an int or None, not %.100s",
                         Py_TYPE(max_obj)->tp_name);
            return NULL;
        }
        max_bytes = PyLong_AsUnsignedLongLong(max_obj);
        int negative = 0;
        if (max_bytes == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                return NULL;
            /* Beyond 64 bits is more than any file: no limit. */
            PyErr_Clear();
            negative = _PyLong_Sign(max_obj) < 0;
        }
        if (negative || max_bytes < FAB_LEDGER_HEADER_SIZE) {
            PyErr_Format(PyExc_ValueError, "max_bytes must be at least %d (the ledger header), "
                         "not %R", FAB_LEDGER_HEADER_SIZE, max_obj);
            return NULL;
        }
    }
    if (progress && !PyCallable_Check(progress)) {
        PyErr_SetString(PyExc_TypeError, "progress must be a callable(done, total) or None");
        return NULL;
    }
    PyObject *fs = NULL;
    if (dest_arg && dest_arg != Py_None && !PyUnicode_FSConverter(dest_arg, &fs))
        return NULL;
    if (enter(c) < 0) {
        Py_XDECREF(fs);
        return NULL;
    }
    fab_ledger_error err;
    int rc;
    const char *dest = fs ? PyBytes_AS_STRING(fs) : NULL;
    uint64_t evicted = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ledger_compact_ex(c->l, dest, max_bytes, progress ? stop_cb : NULL, progress,
                               &evicted, &err);
    Py_END_ALLOW_THREADS
    leave(c);
    if (PyErr_Occurred()) { /* a KeyboardInterrupt... in the progress callback */
        Py_XDECREF(fs);
        return NULL;
    }
    if (rc < 0) {
        /* A corrupt record is in the source, whatever the destination. */
        PyObject *dp = dest && rc != FAB_ECORRUPT ? PyUnicode_DecodeFSDefault(dest)
                                                  : Py_NewRef(c->path);
        Py_XDECREF(fs);
        if (dp) {
            raise_ledger(st, dp, rc, &err);
            Py_DECREF(dp);
        }
        return NULL;
    }
    Py_XDECREF(fs);
    return PyLong_FromUnsignedLongLong(evicted);
}

static PyObject *Cassette_delete(PyObject *self, PyObject *key_obj)
{
    CassetteObject *c = (CassetteObject *)self;
    fab_state *st = cassette_state(self);
    uint8_t key[32];
    if (st == NULL || get_key(key_obj, key) < 0 || enter(c) < 0)
        return NULL;
    fab_ledger_error err;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ledger_delete(c->l, key, &err);
    Py_END_ALLOW_THREADS
    leave(c);
    if (rc < 0)
        return raise_ledger(st, c->path, rc, &err);
    return PyBool_FromLong(rc);
}

static PyObject *Cassette_clear(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    int rc = call_ledger(self, fab_ledger_clear);
    return rc < 0 ? NULL : PyLong_FromLong(rc);
}

static PyObject *Cassette_checkpoint(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (call_ledger(self, fab_ledger_checkpoint) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Cassette_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    CassetteObject *c = (CassetteObject *)self;
    if (c->closed)
        Py_RETURN_NONE;
    c->closed = 1;
    if (c->users == 0 && c->l) {
        fab_ledger *l = c->l;
        c->l = NULL;
        Py_BEGIN_ALLOW_THREADS
        fab_ledger_close(l);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static PyObject *Cassette_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    CassetteObject *c = (CassetteObject *)self;
    if (enter(c) < 0)
        return NULL;
    leave(c);
    return Py_NewRef(self);
}

static PyObject *Cassette_exit(PyObject *self, PyObject *const *Py_UNUSED(args),
                               Py_ssize_t Py_UNUSED(nargs))
{
    PyObject *r = Cassette_close(self, NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *Cassette_repr(PyObject *self)
{
    CassetteObject *c = (CassetteObject *)self;
    if (c->closed)
        return PyUnicode_FromFormat("<EvalCassette %R closed>", c->path);
    return PyUnicode_FromFormat("<EvalCassette %R mode=%s durability=%s keys=%zd>", c->path,
                                mode_names[c->mode],
                                c->mode == FAB_LEDGER_WRITE ? durability_names[c->durability]
                                                            : "none",
                                (Py_ssize_t)fab_ledger_count(c->l));
}

static PyObject *Cassette_get_path(PyObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(((CassetteObject *)self)->path);
}

static PyObject *Cassette_get_closed(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((CassetteObject *)self)->closed);
}

static PyObject *Cassette_get_mode(PyObject *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(mode_names[((CassetteObject *)self)->mode]);
}

static PyObject *Cassette_get_durability(PyObject *self, void *Py_UNUSED(closure))
{
    CassetteObject *c = (CassetteObject *)self;
    if (c->mode != FAB_LEDGER_WRITE)
        Py_RETURN_NONE;
    return PyUnicode_FromString(durability_names[c->durability]);
}

static PyMethodDef Cassette_methods[] = {
    {"keys_packed", Cassette_keys_packed, METH_NOARGS,
     "keys_packed($self, /)\n--\n\n"
     "Every committed key's 32-byte digest, end to end, in ledger order, as one bytes "
     "object (len(result) == 32 * len(self)): a whole store's keys without a ContentKey "
     "per key, for announcing a node's holdings."},
    {"record", (PyCFunction)(void (*)(void))Cassette_record, METH_FASTCALL | METH_KEYWORDS,
     "record($self, key, reply, /, *, expire=None, request=None)\n--\n\n"
     "Records reply (any value canonical_bytes accepts) for key (a ContentKey). Returns True "
     "once written (and durable per the durability mode), False when the key was already "
     "held: first write wins and nothing is written. expire: seconds after which the reply "
     "is no longer held (get misses, compaction drops it, the key can be recorded again). "
     "request: the request's identity bytes (or the EvalRequest), stored beside the reply "
     "in the same append (request_bytes() gives them back)."},
    {"delete", Cassette_delete, METH_O,
     "delete($self, key, /)\n--\n\n"
     "Deletes key: writes a durable tombstone (synced per the durability mode) and returns "
     "True when it was held, False when not (nothing written). This handle sees it at once, "
     "other handles and processes at their next miss or refresh(); a get() there that hits "
     "before may still return the reply, until a compaction drops the key (then at their "
     "next call). The key can be recorded again."},
    {"clear", Cassette_clear, METH_NOARGS,
     "clear($self, /)\n--\n\n"
     "Deletes every key recorded so far (one durable record); returns how many were held. "
     "Seen by others as delete() is. The file shrinks at the next compact()."},
    {"get", (PyCFunction)(void (*)(void))Cassette_get, METH_FASTCALL,
     "get($self, key, default=None, /)\n--\n\n"
     "The decoded reply held for key, or default. A streamed reply comes back as a lazy "
     "CassetteStream."},
    {"get_raw", (PyCFunction)(void (*)(void))Cassette_get_raw, METH_FASTCALL,
     "get_raw($self, key, default=None, /)\n--\n\n"
     "The reply's canonical msgpack bytes as a read-only memoryview into the mapped ledger "
     "(no copy), or default. The view stays valid after the cassette is closed."},
    {"items", Cassette_items, METH_NOARGS,
     "items($self, /)\n--\n\nIterates (key, reply) pairs in ledger order."},
    {"requests", (PyCFunction)(void (*)(void))Cassette_requests, METH_VARARGS | METH_KEYWORDS,
     "requests($self, /, op=None)\n--\n\nIterates (key, request bytes) of the held keys "
     "recorded with their request, in ledger order; with op, only those whose identity "
     "bytes name that op (the second element of the identity array)."},
    {"request_bytes", Cassette_request_bytes, METH_O,
     "request_bytes($self, key, /)\n--\n\nThe identity bytes of the request recorded "
     "with key's reply, or None (not held, or recorded without them)."},
    {"record_stream", (PyCFunction)(void (*)(void))Cassette_record_stream,
     METH_VARARGS | METH_KEYWORDS,
     "record_stream($self, key, /, *, request=None)\n--\n\n"
     "request: as for record(), stored before the stream's first record. "
     "A CassetteStreamWriter recording a streamed reply for key: append(item) per item, then "
     "close() to commit (or abort()). Used as a context manager it commits on success and "
     "aborts on an exception. When the key is already held the writer drops everything "
     "(writer.held is True)."},
    {"get_stream", (PyCFunction)(void (*)(void))Cassette_get_stream, METH_FASTCALL,
     "get_stream($self, key, default=None, /)\n--\n\n"
     "A lazy iterator over the items of key's committed stream, or default."},
    {"stats", Cassette_stats, METH_NOARGS,
     "stats($self, /)\n--\n\nA dict: records, keys, bytes, duplicates, torn_tails_cut, "
     "torn_bytes, salvage_skips, salvage_bytes, open_seconds, index_bytes, "
     "syncs (fdatasync calls since open), ..."},
    {"sync", Cassette_sync, METH_NOARGS,
     "sync($self, /)\n--\n\nfdatasync of the ledger (useful with durability=\"os\")."},
    {"flush", Cassette_flush, METH_NOARGS,
     "flush($self, /)\n--\n\nNothing to do: records reach the OS before record() returns."},
    {"refresh", Cassette_refresh, METH_NOARGS,
     "refresh($self, /)\n--\n\nReplays records other handles and processes appended "
     "since the last look and returns how many it found. When the file at the path was "
     "replaced (a compaction, a restore) or shrank, moves to it and returns the number of "
     "records it holds (stats()[\"reloads\"] counts the moves). A get() that misses does the "
     "same by itself."},
    {"compact", (PyCFunction)(void (*)(void))Cassette_compact, METH_FASTCALL | METH_KEYWORDS,
     "compact($self, dest=None, /, *, progress=None, max_bytes=None)\n--\n\nWrites the held "
     "replies and "
     "streams, without torn, duplicate or bad records, to dest atomically (temporary file "
     "DEST.compact.tmp.PID, fsync, rename, fsync of the directory). dest must not be this "
     "ledger. Without dest (a writer only) the ledger is compacted in place: other processes "
     "may keep it open and appending; they move to the new file at their next call that "
     "reads it (get, a hit as well as a miss, len(), stats(), a new iteration; an iteration "
     "begun before raises LedgerError) or append. Leftover temporary files of dead processes are removed first. "
     "progress: callable(done, total), called as source bytes are copied; an exception it "
     "raises (KeyboardInterrupt included) stops the compaction, the ledger and dest left as "
     "they were, and is raised here. max_bytes: keep "
     "at most that many bytes, leaving out the oldest recorded replies and streams first (a "
     "stream whole); records others append meanwhile are kept. Deleted and expired replies "
     "are always left out. Returns the number of keys left out to fit max_bytes."},
    {"checkpoint", Cassette_checkpoint, METH_NOARGS,
     "checkpoint($self, /)\n--\n\nWrites a checkpoint of the index beside the ledger "
     "(PATH.ckpt, docs/spec/ledger.md), so that the next open replays only the records "
     "appended after it. An open that replays 65,536 records or more writes one by itself. "
     "Safe to delete at any time; a stale or damaged one is detected and ignored."},
    {"close", Cassette_close, METH_NOARGS,
     "close($self, /)\n--\n\nCloses the ledger (and releases its locks)."},
    {"from_ledger", (PyCFunction)(void (*)(void))Cassette_from_ledger,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "from_ledger($cls, path, *, recover='strict', progress=None, checkpoint=True)\n--\n\n"
     "Opens the ledger at path for replay (read-only, mode=\"r\")."},
    {"__enter__", Cassette_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Cassette_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Cassette_getset[] = {
    {"path", Cassette_get_path, NULL, "The ledger's path.", NULL},
    {"closed", Cassette_get_closed, NULL, "True after close().", NULL},
    {"mode", Cassette_get_mode, NULL, "\"a\" (writer) or \"r\" (reader).", NULL},
    {"durability", Cassette_get_durability, NULL,
     "The writer's durability mode. With \"fsync\" and \"group\" a record is invisible "
     "through this handle until synced; another process's miss or refresh() may find it "
     "before its fdatasync (docs/spec/ledger.md, Appends and durability).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Cassette_slots[] = {
    {Py_tp_doc,
     "EvalCassette(path, mode='a', durability='group', *, recover='strict', progress=None, "
     "created_ns=0, exclusive=False, checkpoint=True)\n--\n\n"
     "A durable, crash-safe record of evaluation replies keyed by ContentKey, kept in an "
     "append-only ledger file (docs/spec/ledger.md).\n\n"
     "mode: \"a\" opens for appending (creating the file), \"r\" for reading. Any number of "
     "processes (and handles in one process) may append to one ledger at once: each append "
     "takes a lock on the file for its own duration, first write wins across them, and a "
     "get() that misses looks for records the others appended. exclusive=True refuses other "
     "writers (LedgerLockedError) while this handle is open. After os.fork() the child's "
     "first append reopens the file: it never writes through the parent's descriptor or "
     "lock. durability: \"fsync\" (fdatasync before record() returns), "
     "\"group\" (concurrent records share one fdatasync; still durable on return) or \"os\"; "
     "with \"fsync\" and \"group\" a record is invisible through this handle until synced, "
     "but another process's miss or refresh() may find it before its fdatasync. len() and "
     "iteration count this handle's view: other processes' records from its last miss or "
     "refresh(). "
     "recover: \"strict\" refuses a corrupt ledger with LedgerCorruptionError, \"salvage\" "
     "skips bad records. progress: callable(done, total) during replay. created_ns: the "
     "creation time written into a new ledger (0 = now), for reproducible files. "
     "checkpoint: use (and write) the index checkpoint PATH.ckpt so that open replays only "
     "the records after it (an open that replayed 65,536 records or more, a writer closing "
     "with that many beyond PATH.ckpt and a compaction write one, best effort); False "
     "replays (and checks) the whole ledger."},
    {Py_tp_new, Cassette_new},
    {Py_tp_dealloc, Cassette_dealloc},
    {Py_tp_repr, Cassette_repr},
    {Py_tp_iter, Cassette_iter},
    {Py_tp_methods, Cassette_methods},
    {Py_tp_getset, Cassette_getset},
    {Py_sq_contains, Cassette_contains},
    {Py_sq_length, Cassette_len},
    {Py_mp_length, Cassette_len},
    {0, NULL},
};

static PyType_Spec Cassette_spec = {
    .name = "fabric.EvalCassette",
    .basicsize = sizeof(CassetteObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Cassette_slots,
};

/* ======================================================================== */
/* Module part                                                              */
/* ======================================================================== */

int fab_py_cassette_exec(PyObject *module, fab_state *st)
{
    if ((st->EvalCassette_Type = fab_py_add_type(module, &Cassette_spec, NULL)) == NULL ||
        (st->CassetteIter_Type = fab_py_add_type(module, &Iter_spec, NULL)) == NULL ||
        (st->CassetteStream_Type = fab_py_add_type(module, &Stream_spec, NULL)) == NULL ||
        (st->CassetteWriter_Type = fab_py_add_type(module, &Writer_spec, NULL)) == NULL ||
        (st->LedgerView_Type = fab_py_add_type(module, &View_spec, NULL)) == NULL)
        return -1;
    if (PyModule_AddIntConstant(module, "LEDGER_VERSION", FAB_LEDGER_VERSION) < 0)
        return -1;
    return 0;
}

int fab_py_cassette_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->EvalCassette_Type);
    Py_VISIT(st->CassetteIter_Type);
    Py_VISIT(st->CassetteStream_Type);
    Py_VISIT(st->CassetteWriter_Type);
    Py_VISIT(st->LedgerView_Type);
    return 0;
}

void fab_py_cassette_clear(fab_state *st)
{
    Py_CLEAR(st->EvalCassette_Type);
    Py_CLEAR(st->CassetteIter_Type);
    Py_CLEAR(st->CassetteStream_Type);
    Py_CLEAR(st->CassetteWriter_Type);
    Py_CLEAR(st->LedgerView_Type);
}
