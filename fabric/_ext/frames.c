/*
 * Frames in Python: Frame, FrameEncoder, FrameDecoder and StreamFrameLimits,
 * over the C frame codec (csrc/frame.c). The glue converts and maps errors;
 * the format and its checks live in the core.
 */
#include "glue.h"

#include "fabric/crc32c.h"
#include "fabric/frame.h"
#include "fabric/mpdec.h"

/* ======================================================================== */
/* Argument parsing for METH_FASTCALL | METH_KEYWORDS                       */
/* ======================================================================== */

/*
 * Fills out[0..n) from args/kwnames: names[0..npos) may come by position or
 * keyword, the rest only by keyword; out[i] stays NULL when not given. The
 * first nreq are required. 0 or -1 with TypeError.
 */
static int parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames, const char *const *names, int n, int npos,
                      int nreq, PyObject **out)
{
    for (int i = 0; i < n; i++)
        out[i] = NULL;
    if (nargs > npos) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d positional arguments (%zd given)",
                     fname, npos, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int found = -1;
        for (int i = 0; i < n; i++)
            if (PyUnicode_CompareWithASCIIString(name, names[i]) == 0) {
                found = i;
                break;
            }
        if (found < 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                         fname, name);
            return -1;
        }
        if (out[found] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                         fname, names[found]);
            return -1;
        }
        out[found] = args[nargs + k];
    }
    for (int i = 0; i < nreq; i++)
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname,
                         names[i]);
            return -1;
        }
    return 0;
}

/* An unsigned integer argument in [0, max], bools refused. 0 or -1. */
static int get_uint(PyObject *o, const char *what, uint64_t max, uint64_t *out)
{
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %s", what, Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            goto range;
        }
        if (u > max)
            goto range;
        *out = u;
        return 0;
    }
    if (overflow < 0 || v < 0 || (uint64_t)v > max)
        goto range;
    *out = (uint64_t)v;
    return 0;
range:
    PyErr_Format(PyExc_ValueError, "%s must be in [0, %llu], got %R", what,
                 (unsigned long long)max, o);
    return -1;
}

/* ======================================================================== */
/* FrameError                                                               */
/* ======================================================================== */

PyObject *fab_py_raise_frame_error(fab_state *st, const fab_frame_error *err)
{
    char msg[320];
    fab_frame_error_format(err, msg, sizeof(msg));
    fab_py_err_info info = {.msg = msg, .has_offset = 1, .offset = err->offset,
                            .violation = fab_frame_violation_name(err->violation),
                            .has_frame_offset = 1, .frame_offset = err->frame_offset,
                            .exc = FAB_PYEXC_FrameError};
    return fab_py_raise(st, err->code, &info);
}

/* A FrameError without a stream position (encoding side): .offset is None. */
static PyObject *raise_frame_error_at(fab_state *st, const char *violation, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *text = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    const char *msg = text ? PyUnicode_AsUTF8(text) : NULL;
    if (msg == NULL) {
        Py_XDECREF(text);
        return NULL;
    }
    fab_py_err_info info = {.msg = msg, .violation = violation, .exc = FAB_PYEXC_FrameError};
    fab_py_raise(st, FAB_EFORMAT, &info);
    Py_DECREF(text);
    return NULL;
}

/* ======================================================================== */
/* StreamFrameLimits                                                        */
/* ======================================================================== */

#define LIMIT_FIELDS(XX)                                                        \
    XX(max_frame_payload_bytes, 1u << 20, FAB_FRAME_FORMAT_MAX_PAYLOAD)         \
    XX(max_stream_frames,       1024,     UINT64_MAX)                           \
    XX(max_stream_bytes,        64u << 20, UINT64_MAX)                          \
    XX(max_inflight_frames,     64,       UINT64_MAX)                           \
    XX(max_duration_ms,         60000,    UINT64_MAX)                           \
    XX(max_rate_hz,             120,      UINT64_MAX)                           \
    XX(max_depth,               FAB_MAX_DEPTH, FAB_MAX_DEPTH)                   \
    XX(max_items,               1u << 20, UINT64_MAX)

static const char *const limit_names[] = {
#define LIMIT_NAME(name, def, max) #name,
    LIMIT_FIELDS(LIMIT_NAME)
#undef LIMIT_NAME
};
static const uint64_t limit_defaults[] = {
#define LIMIT_DEF(name, def, max) (uint64_t)(def),
    LIMIT_FIELDS(LIMIT_DEF)
#undef LIMIT_DEF
};
static const uint64_t limit_max[] = {
#define LIMIT_MAX(name, def, max) (uint64_t)(max),
    LIMIT_FIELDS(LIMIT_MAX)
#undef LIMIT_MAX
};
#define LIMIT_COUNT ((int)(sizeof(limit_names) / sizeof(limit_names[0])))

typedef struct {
    PyObject_HEAD
    unsigned long long v[LIMIT_COUNT]; /* in LIMIT_FIELDS order */
} LimitsObject;

/* Sets v[] from keyword arguments over the defaults in base. 0 or -1. */
static int limits_fill(unsigned long long *v, const unsigned long long *base,
                       PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                       const char *fname)
{
    PyObject *given[LIMIT_COUNT];
    if (parse_args(fname, args, nargs, kwnames, (const char *const *)limit_names,
                   LIMIT_COUNT, 0, 0, given) < 0)
        return -1;
    for (int i = 0; i < LIMIT_COUNT; i++) {
        v[i] = base[i];
        if (given[i] == NULL)
            continue;
        PyObject *o = given[i];
        if (!PyLong_Check(o) || PyBool_Check(o)) {
            PyErr_Format(PyExc_TypeError, "StreamFrameLimits.%s must be an int, not %s",
                         limit_names[i], Py_TYPE(o)->tp_name);
            return -1;
        }
        int overflow = 0;
        long long sv = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (sv == -1 && PyErr_Occurred())
            return -1;
        if (overflow < 0 || (overflow == 0 && sv <= 0)) {
            PyErr_Format(PyExc_ValueError, "StreamFrameLimits.%s must be positive, got %R",
                         limit_names[i], o);
            return -1;
        }
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if ((u == (unsigned long long)-1 && PyErr_Occurred()) || u > limit_max[i]) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "StreamFrameLimits.%s must be at most %llu, got %R",
                         limit_names[i], (unsigned long long)limit_max[i], o);
            return -1;
        }
        v[i] = u;
    }
    return 0;
}

static PyObject *limits_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames)
{
    unsigned long long defaults[LIMIT_COUNT], v[LIMIT_COUNT];
    for (int i = 0; i < LIMIT_COUNT; i++)
        defaults[i] = limit_defaults[i];
    if (limits_fill(v, defaults, args, PyVectorcall_NARGS(nargsf), kwnames,
                    "StreamFrameLimits") < 0)
        return NULL;
    PyTypeObject *tp = (PyTypeObject *)type;
    LimitsObject *self = (LimitsObject *)tp->tp_alloc(tp, 0);
    if (self == NULL)
        return NULL;
    memcpy(self->v, v, sizeof(v));
    return (PyObject *)self;
}

/* Calls a vectorcall constructor with tuple/dict arguments (the tp_new path,
 * reached by Type.__new__(Type, ...)). */
static PyObject *call_from_tuple(vectorcallfunc fn, PyTypeObject *type, PyObject *args,
                                 PyObject *kwargs)
{
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    Py_ssize_t nkw = kwargs ? PyDict_GET_SIZE(kwargs) : 0;
    PyObject **stack = PyMem_Malloc(sizeof(PyObject *) * (size_t)(nargs + nkw + 1));
    PyObject *kwnames = nkw ? PyTuple_New(nkw) : NULL;
    PyObject *res = NULL;
    if (stack == NULL || (nkw && kwnames == NULL)) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        stack[i] = PyTuple_GET_ITEM(args, i);
    Py_ssize_t pos = 0, k = 0;
    PyObject *key, *value;
    while (kwargs && PyDict_Next(kwargs, &pos, &key, &value)) {
        PyTuple_SET_ITEM(kwnames, k, Py_NewRef(key));
        stack[nargs + k] = value;
        k++;
    }
    res = fn((PyObject *)type, stack, (size_t)nargs, kwnames);
out:
    PyMem_Free(stack);
    Py_XDECREF(kwnames);
    return res;
}

static PyObject *limits_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return call_from_tuple(limits_vectorcall, type, args, kwargs);
}

static void limits_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *limits_repr(LimitsObject *self)
{
    PyObject *parts = PyList_New(0);
    if (parts == NULL)
        return NULL;
    for (int i = 0; i < LIMIT_COUNT; i++) {
        PyObject *s = PyUnicode_FromFormat("%s=%llu", limit_names[i], self->v[i]);
        if (s == NULL || PyList_Append(parts, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(parts);
            return NULL;
        }
        Py_DECREF(s);
    }
    PyObject *sep = PyUnicode_FromString(", ");
    PyObject *joined = sep ? PyUnicode_Join(sep, parts) : NULL;
    Py_XDECREF(sep);
    Py_DECREF(parts);
    if (joined == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("StreamFrameLimits(%U)", joined);
    Py_DECREF(joined);
    return r;
}

static PyObject *limits_richcompare(PyObject *a, PyObject *b, int op)
{
    if (Py_TYPE(a) != Py_TYPE(b) || (op != Py_EQ && op != Py_NE))
        Py_RETURN_NOTIMPLEMENTED;
    int eq = memcmp(((LimitsObject *)a)->v, ((LimitsObject *)b)->v,
                    sizeof(((LimitsObject *)a)->v)) == 0;
    if (op == Py_EQ ? eq : !eq)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static Py_hash_t limits_hash(LimitsObject *self)
{
    Py_uhash_t h = 0x345678u;
    for (int i = 0; i < LIMIT_COUNT; i++)
        h = (h ^ (Py_uhash_t)self->v[i]) * 1000003u;
    if (h == (Py_uhash_t)-1)
        h = 2;
    return (Py_hash_t)h;
}

static PyObject *limits_replace(LimitsObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    unsigned long long v[LIMIT_COUNT];
    if (limits_fill(v, self->v, args, nargs, kwnames, "replace") < 0)
        return NULL;
    PyTypeObject *tp = Py_TYPE(self);
    LimitsObject *out = (LimitsObject *)tp->tp_alloc(tp, 0);
    if (out == NULL)
        return NULL;
    memcpy(out->v, v, sizeof(v));
    return (PyObject *)out;
}

static PyObject *limits_to_dict(LimitsObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < LIMIT_COUNT; i++) {
        PyObject *n = PyLong_FromUnsignedLongLong(self->v[i]);
        if (n == NULL || PyDict_SetItemString(d, limit_names[i], n) < 0) {
            Py_XDECREF(n);
            Py_CLEAR(d);
            break;
        }
        Py_DECREF(n);
    }
    return d;
}

static PyObject *limits_reduce(LimitsObject *self, PyObject *Py_UNUSED(ignored))
{
    return fab_py_reduce((PyObject *)self, limits_to_dict(self, NULL));
}

/* StreamFrameLimits(**fields), for pickle. */
static PyObject *limits_unpickle(PyObject *cls, PyObject *fields)
{
    if (!PyDict_Check(fields)) {
        PyErr_Format(PyExc_TypeError, "StreamFrameLimits._unpickle() takes a dict, not %s",
                     Py_TYPE(fields)->tp_name);
        return NULL;
    }
    PyObject *none = PyTuple_New(0);
    if (none == NULL)
        return NULL;
    PyObject *r = PyObject_Call(cls, none, fields);
    Py_DECREF(none);
    return r;
}

static PyMethodDef limits_methods[] = {
    {"replace", (PyCFunction)(void (*)(void))limits_replace, METH_FASTCALL | METH_KEYWORDS,
     "replace($self, /, **changes)\n--\n\nA copy with the given limits changed (validated)."},
    {"to_dict", (PyCFunction)limits_to_dict, METH_NOARGS,
     "to_dict($self, /)\n--\n\nThe limits as a dict of name to int."},
    {"__reduce__", (PyCFunction)limits_reduce, METH_NOARGS, NULL},
    {"_unpickle", limits_unpickle, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyObject *limits_get(LimitsObject *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->v[(intptr_t)closure]);
}

static PyGetSetDef limits_getset[] = {
    {"max_frame_payload_bytes", (getter)limits_get, NULL, NULL, (void *)(intptr_t)0},
    {"max_stream_frames", (getter)limits_get, NULL, NULL, (void *)(intptr_t)1},
    {"max_stream_bytes", (getter)limits_get, NULL, NULL, (void *)(intptr_t)2},
    {"max_inflight_frames", (getter)limits_get, NULL, NULL, (void *)(intptr_t)3},
    {"max_duration_ms", (getter)limits_get, NULL, NULL, (void *)(intptr_t)4},
    {"max_rate_hz", (getter)limits_get, NULL, NULL, (void *)(intptr_t)5},
    {"max_depth", (getter)limits_get, NULL, NULL, (void *)(intptr_t)6},
    {"max_items", (getter)limits_get, NULL, NULL, (void *)(intptr_t)7},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot limits_slots[] = {
    {Py_tp_doc,
     "StreamFrameLimits(*, max_frame_payload_bytes=1048576, max_stream_frames=1024, "
     "max_stream_bytes=67108864, max_inflight_frames=64, max_duration_ms=60000, "
     "max_rate_hz=120, max_depth=256, max_items=1048576)\n--\n\n"
     "The limits that bound one stream: payload bytes per frame, data frames and\n"
     "payload bytes per stream, frames in flight (the credit window), duration,\n"
     "rate (frames per second, with a burst of one second's worth) and the decode\n"
     "depth and item count of a payload. Every limit must be a positive int;\n"
     "immutable, hashable; ``replace(**changes)`` makes a changed copy."},
    {Py_tp_new, limits_new},
    {Py_tp_dealloc, limits_dealloc},
    {Py_tp_repr, limits_repr},
    {Py_tp_richcompare, limits_richcompare},
    {Py_tp_hash, limits_hash},
    {Py_tp_methods, limits_methods},
    {Py_tp_getset, limits_getset},
    {0, NULL},
};

static PyType_Spec limits_spec = {
    .name = "fabric.StreamFrameLimits",
    .basicsize = sizeof(LimitsObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = limits_slots,
};

/* The limits object given, or the defaults for None. New reference or NULL. */
static PyObject *limits_or_default(fab_state *st, PyObject *limits)
{
    if (limits == NULL || limits == Py_None)
        return Py_NewRef(st->default_limits);
    if (!PyObject_TypeCheck(limits, st->StreamFrameLimits_Type)) {
        PyErr_Format(PyExc_TypeError, "limits must be a StreamFrameLimits or None, not %s",
                     Py_TYPE(limits)->tp_name);
        return NULL;
    }
    return Py_NewRef(limits);
}

enum { L_PAYLOAD = 0, L_FRAMES, L_BYTES, L_INFLIGHT, L_DURATION, L_RATE, L_DEPTH, L_ITEMS };

uint64_t fab_py_limit(PyObject *limits, int which)
{
    return ((LimitsObject *)limits)->v[which];
}

/* ======================================================================== */
/* Frame                                                                    */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    PyObject *owner; /* a bytes object holding the payload */
    const uint8_t *ptr;
    Py_ssize_t len;
    long long offset; /* stream offset of the frame, -1 when built locally */
    uint64_t stream_id;
    uint64_t seq;
    uint32_t payload_crc; /* the header's, checked against the payload (crc_known) */
    uint16_t flags;
    uint8_t kind;
    uint8_t crc_known;    /* a decoded frame (offset >= 0): payload_crc is its payload's */
} FrameObject;

static PyObject *frame_make(fab_state *st, const fab_frame_header *h, PyObject *owner,
                            const uint8_t *ptr, Py_ssize_t len, long long offset)
{
    PyTypeObject *tp = st->Frame_Type;
    FrameObject *f = PyObject_New(FrameObject, tp);
    if (f == NULL)
        return NULL;
    f->owner = Py_NewRef(owner);
    f->ptr = ptr;
    f->len = len;
    f->offset = offset;
    f->stream_id = h->stream_id;
    f->seq = h->seq;
    f->payload_crc = h->payload_crc;
    f->crc_known = offset >= 0;
    f->flags = h->flags;
    f->kind = h->kind;
    return (PyObject *)f;
}

/* Checks kind/flags/stream_id/seq arguments into h. 0 or -1. */
static int header_args(fab_state *st, PyObject *kind, PyObject *stream_id, PyObject *seq,
                       PyObject *flags, fab_frame_header *h)
{
    uint64_t v;
    memset(h, 0, sizeof(*h));
    if (get_uint(kind, "kind", 255, &v) < 0)
        return -1;
    if (fab_frame_kind_name((int)v) == NULL) {
        raise_frame_error_at(st, "unknown-kind", "unknown frame kind %llu",
                             (unsigned long long)v);
        return -1;
    }
    h->kind = (uint8_t)v;
    if (stream_id && get_uint(stream_id, "stream_id", UINT64_MAX, &h->stream_id) < 0)
        return -1;
    if (seq && get_uint(seq, "seq", UINT64_MAX, &h->seq) < 0)
        return -1;
    if (flags) {
        if (get_uint(flags, "flags", 0xffff, &v) < 0)
            return -1;
        if (v & ~FAB_FRAME_FLAGS_KNOWN) {
            raise_frame_error_at(st, "reserved-flags",
                                 "reserved flag bits 0x%04x set",
                                 (unsigned)(v & ~FAB_FRAME_FLAGS_KNOWN));
            return -1;
        }
        h->flags = (uint16_t)v;
    }
    return 0;
}

/* kind, payload, stream_id, seq, flags: Frame() and FrameEncoder.encode. */
static const char *const header_kw[] = {"kind", "payload", "stream_id", "seq", "flags"};

/*
 * The opening of each call that takes a frame's header fields (Frame(), and
 * FrameEncoder's encode, encode_value, encode_many and header): parses the
 * arguments into a[0..n) (names: kind, what the payload comes from,
 * stream_id, seq, flags, then any others; the first two by position or
 * keyword, the first nreq required) and checks the header fields into h.
 * The module state of tp, or NULL with an exception set.
 */
static fab_state *header_call(PyTypeObject *tp, const char *fname, PyObject *const *args,
                              Py_ssize_t nargs, PyObject *kwnames, const char *const *names,
                              int n, int nreq, PyObject **a, fab_frame_header *h)
{
    fab_state *st = fab_state_from_type(tp);
    if (st == NULL || parse_args(fname, args, nargs, kwnames, names, n, 2, nreq, a) < 0 ||
        header_args(st, a[0], a[2], a[3], a[4], h) < 0)
        return NULL;
    return st;
}

/* A bytes object holding payload: the object itself when it is bytes, else a
 * copy of its buffer. New reference or NULL. */
static PyObject *payload_bytes(PyObject *payload)
{
    if (payload == NULL)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (PyBytes_CheckExact(payload))
        return Py_NewRef(payload);
    if (!PyObject_CheckBuffer(payload) || PyUnicode_Check(payload)) {
        PyErr_Format(PyExc_TypeError, "payload must be a bytes-like object, not %s",
                     Py_TYPE(payload)->tp_name);
        return NULL;
    }
    return PyBytes_FromObject(payload);
}

static PyObject *frame_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    PyObject *a[5];
    fab_frame_header h;
    fab_state *st = header_call((PyTypeObject *)type, "Frame", args, PyVectorcall_NARGS(nargsf),
                                kwnames, header_kw, 5, 1, a, &h);
    if (st == NULL)
        return NULL;
    PyObject *owner = payload_bytes(a[1]);
    if (owner == NULL)
        return NULL;
    if ((size_t)PyBytes_GET_SIZE(owner) > FAB_FRAME_FORMAT_MAX_PAYLOAD) {
        Py_DECREF(owner);
        return raise_frame_error_at(st, "payload-too-large",
                                    "payload of %zd bytes does not fit a frame",
                                    PyBytes_GET_SIZE(owner));
    }
    PyObject *f = frame_make(st, &h, owner, (const uint8_t *)PyBytes_AS_STRING(owner),
                             PyBytes_GET_SIZE(owner), -1);
    Py_DECREF(owner);
    return f;
}

static PyObject *frame_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return call_from_tuple(frame_vectorcall, type, args, kwargs);
}

static void frame_dealloc(FrameObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(self->owner);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static int frame_getbuffer(FrameObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, (void *)self->ptr, self->len, 1, flags);
}

static PyObject *frame_get_payload(FrameObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyMemoryView_FromObject((PyObject *)self);
}

static PyObject *frame_get_kind(FrameObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyLong_FromLong(self->kind);
}

static PyObject *frame_get_kind_name(FrameObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyUnicode_FromString(fab_frame_kind_name(self->kind));
}

static PyObject *frame_get_flags(FrameObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyLong_FromLong(self->flags);
}

static PyObject *frame_get_stream_id(FrameObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyLong_FromUnsignedLongLong(self->stream_id);
}

static PyObject *frame_get_seq(FrameObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyLong_FromUnsignedLongLong(self->seq);
}

static PyObject *frame_get_offset(FrameObject *self, void *closure)
{
    FAB_UNUSED(closure);
    if (self->offset < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(self->offset);
}

static PyObject *frame_get_payload_offset(FrameObject *self, void *closure)
{
    FAB_UNUSED(closure);
    if (self->offset < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(self->offset + FAB_FRAME_HEADER_LEN);
}

static PyObject *frame_get_is_diagnostic(FrameObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyBool_FromLong((self->flags & FAB_FRAME_FLAG_DIAGNOSTIC) != 0);
}

static PyObject *frame_get_size(FrameObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyLong_FromSsize_t(self->len + FAB_FRAME_HEADER_LEN);
}

static fab_frame_header frame_header(const FrameObject *self)
{
    fab_frame_header h = {0};
    h.kind = self->kind;
    h.flags = self->flags;
    h.stream_id = self->stream_id;
    h.seq = self->seq;
    return h;
}

static PyObject *frame_encode(FrameObject *self, PyObject *Py_UNUSED(ignored))
{
    fab_frame_header h = frame_header(self);
    PyObject *out = PyBytes_FromStringAndSize(NULL, FAB_FRAME_HEADER_LEN + self->len);
    if (out == NULL)
        return NULL;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    int rc = fab_frame_header_write(p, &h, self->ptr, (size_t)self->len);
    if (rc != FAB_OK) {
        Py_DECREF(out);
        return fab_py_raise_code(fab_state_from_type(Py_TYPE(self)), rc, "encoding a frame");
    }
    memcpy(p + FAB_FRAME_HEADER_LEN, self->ptr, (size_t)self->len);
    return out;
}

static PyObject *frame_repr(FrameObject *self)
{
    return PyUnicode_FromFormat("Frame(%s, stream_id=%llu, seq=%llu, flags=%u, payload=%zd bytes)",
                                fab_frame_kind_name(self->kind),
                                (unsigned long long)self->stream_id,
                                (unsigned long long)self->seq, (unsigned)self->flags, self->len);
}

static PyObject *frame_richcompare(PyObject *a, PyObject *b, int op)
{
    if (Py_TYPE(a) != Py_TYPE(b) || (op != Py_EQ && op != Py_NE))
        Py_RETURN_NOTIMPLEMENTED;
    FrameObject *x = (FrameObject *)a, *y = (FrameObject *)b;
    int eq = x->kind == y->kind && x->flags == y->flags && x->stream_id == y->stream_id &&
             x->seq == y->seq && x->len == y->len && memcmp(x->ptr, y->ptr, (size_t)x->len) == 0;
    if (op == Py_EQ ? eq : !eq)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static PyObject *frame_from_bytes(PyObject *module, PyObject *data);

static PyObject *frame_reduce(FrameObject *self, PyObject *Py_UNUSED(ignored))
{
    /* Keyword-only fields cannot travel in a positional call, so a frame
     * pickles as its wire bytes. */
    return fab_py_reduce((PyObject *)self, frame_encode(self, NULL));
}

/* One whole encoded frame back to a Frame, for pickle. */
static PyObject *frame_unpickle(PyObject *cls, PyObject *data)
{
    PyObject *module = PyType_GetModuleByDef((PyTypeObject *)cls, &fab_module_def);
    return module ? frame_from_bytes(module, data) : NULL;
}

/* Decode limits from a StreamFrameLimits (its max_depth and max_items, the
 * reader's defaults for the rest, each string or blob also bounded by the
 * frame payload limit), or from anything fabric.unpack accepts. 0 or -1. */
static int payload_limits(fab_state *st, PyObject *limits, fab_mp_limits *lim)
{
    if (limits == NULL || limits == Py_None)
        limits = st->default_limits;
    if (!PyObject_TypeCheck(limits, st->StreamFrameLimits_Type))
        return fab_py_limits_from_object(limits, lim);
    fab_mp_limits_default(lim);
    uint64_t depth = fab_py_limit(limits, L_DEPTH), items = fab_py_limit(limits, L_ITEMS);
    uint64_t payload = fab_py_limit(limits, L_PAYLOAD);
    lim->max_depth = (uint32_t)(depth < FAB_MAX_DEPTH ? depth : FAB_MAX_DEPTH);
    lim->max_items = items;
    if (payload < lim->max_str)
        lim->max_str = lim->max_bin = lim->max_ext = (uint32_t)payload;
    return 0;
}

static PyObject *frame_decode_payload(FrameObject *self, PyObject *const *args,
                                      Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const kw[] = {"limits"};
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    PyObject *a[1];
    fab_mp_limits lim;
    if (st == NULL || parse_args("decode_payload", args, nargs, kwnames, kw, 1, 1, 0, a) < 0 ||
        payload_limits(st, a[0], &lim) < 0)
        return NULL;
    size_t base = self->offset < 0 ? 0 : (size_t)self->offset + FAB_FRAME_HEADER_LEN;
    return fab_py_decode_record(st, self->ptr, (size_t)self->len, &lim, base);
}

static PyGetSetDef frame_getset[] = {
    {"kind", (getter)frame_get_kind, NULL, "The frame kind (an int; see FrameKind).", NULL},
    {"kind_name", (getter)frame_get_kind_name, NULL, "The kind's wire name, e.g. 'STREAM_CHUNK'.", NULL},
    {"flags", (getter)frame_get_flags, NULL, "The flag bits.", NULL},
    {"stream_id", (getter)frame_get_stream_id, NULL, "The stream id (u64).", NULL},
    {"seq", (getter)frame_get_seq, NULL, "The sequence number (u64).", NULL},
    {"payload", (getter)frame_get_payload, NULL,
     "The payload as a read-only memoryview (zero-copy: it may share the bytes\n"
     "fed to the decoder; bytes(frame.payload) detaches a copy).", NULL},
    {"offset", (getter)frame_get_offset, NULL,
     "Stream offset of the frame's first byte (None for a frame built locally).", NULL},
    {"payload_offset", (getter)frame_get_payload_offset, NULL,
     "Stream offset of the payload's first byte (None for a frame built locally).", NULL},
    {"is_diagnostic", (getter)frame_get_is_diagnostic, NULL,
     "True when the DIAGNOSTIC flag is set.", NULL},
    {"size", (getter)frame_get_size, NULL, "Encoded size in bytes (header + payload).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef frame_methods[] = {
    {"encode", (PyCFunction)frame_encode, METH_NOARGS,
     "encode($self, /)\n--\n\nThe frame's wire bytes (header + payload)."},
    {"decode_payload", (PyCFunction)(void (*)(void))frame_decode_payload,
     METH_FASTCALL | METH_KEYWORDS,
     "decode_payload($self, /, limits=None)\n--\n\n"
     "The payload decoded by the hardened msgpack decoder (fabric.unpack), under\n"
     "limits: a StreamFrameLimits (its max_depth and max_items; default\n"
     "StreamFrameLimits()) or any limits fabric.unpack accepts. Raises\n"
     "DecodeError whose .offset counts from the start of the stream."},
    {"__reduce__", (PyCFunction)frame_reduce, METH_NOARGS, NULL},
    {"_unpickle", frame_unpickle, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot frame_slots[] = {
    {Py_tp_doc, "Frame(kind, payload=b'', *, stream_id=0, seq=0, flags=0)\n--\n\n"
                "One frame: kind, flags, stream id, sequence number and a msgpack\n"
                "payload (docs/spec/frames.md). Frames from a FrameDecoder share the\n"
                "decoder's input bytes where they can (zero-copy). Supports the buffer\n"
                "protocol over the payload."},
    {Py_tp_new, frame_new},
    {Py_tp_dealloc, frame_dealloc},
    {Py_tp_repr, frame_repr},
    {Py_tp_richcompare, frame_richcompare},
    {Py_tp_getset, frame_getset},
    {Py_tp_methods, frame_methods},
    {Py_bf_getbuffer, frame_getbuffer},
    {0, NULL},
};

static PyType_Spec frame_spec = {
    .name = "fabric.Frame",
    .basicsize = sizeof(FrameObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = frame_slots,
};

/* ======================================================================== */
/* FrameEncoder                                                             */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    PyObject *limits;
    uint64_t max_payload;
    int values; /* a single reply's record in the value encoding (HELLO cap "values") */
} EncoderObject;

static PyObject *encoder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"limits", NULL};
    PyObject *limits = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:FrameEncoder", kwlist, &limits))
        return NULL;
    fab_state *st = fab_state_from_type(type);
    if (st == NULL || (limits = limits_or_default(st, limits)) == NULL)
        return NULL;
    EncoderObject *self = (EncoderObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(limits);
        return NULL;
    }
    self->limits = limits;
    self->max_payload = fab_py_limit(limits, L_PAYLOAD);
    return (PyObject *)self;
}

static void encoder_dealloc(EncoderObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(self->limits);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static int check_size(fab_state *st, uint64_t max, size_t len)
{
    if (len > max) {
        raise_frame_error_at(st, "payload-too-large",
                             "payload of %zu bytes exceeds max_frame_payload_bytes=%llu",
                             len, (unsigned long long)max);
        return -1;
    }
    return 0;
}

static PyObject *encoder_encode(EncoderObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    PyObject *a[5];
    fab_frame_header h;
    fab_state *st =
        header_call(Py_TYPE(self), "encode", args, nargs, kwnames, header_kw, 5, 1, a, &h);
    if (st == NULL)
        return NULL;
    Py_buffer view = {0};
    if (a[1] && PyObject_GetBuffer(a[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = NULL;
    if (check_size(st, self->max_payload, (size_t)view.len) < 0)
        goto done;
    out = PyBytes_FromStringAndSize(NULL, FAB_FRAME_HEADER_LEN + view.len);
    if (out == NULL)
        goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    fab_frame_header_write(p, &h, view.buf, (size_t)view.len);
    if (view.len)
        memcpy(p + FAB_FRAME_HEADER_LEN, view.buf, (size_t)view.len);
done:
    if (a[1])
        PyBuffer_Release(&view);
    return out;
}

/* encode_control(stream_id, payload): encode(CONTROL, payload,
 * stream_id=stream_id) with positional arguments only (payload: bytes), for
 * a caller that sends one per call (the async client's open). */
static PyObject *encoder_encode_control(EncoderObject *self, PyObject *const *args,
                                        Py_ssize_t nargs)
{
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    if (st == NULL)
        return NULL;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "encode_control() takes 2 positional arguments "
                     "(%zd given)", nargs);
        return NULL;
    }
    fab_frame_header h = {0};
    h.kind = FAB_FRAME_CONTROL;
    if (get_uint(args[0], "stream_id", UINT64_MAX, &h.stream_id) < 0)
        return NULL;
    if (!PyBytes_Check(args[1])) {
        PyErr_Format(PyExc_TypeError, "encode_control: payload must be bytes, not %.100s",
                     Py_TYPE(args[1])->tp_name);
        return NULL;
    }
    size_t len = (size_t)PyBytes_GET_SIZE(args[1]);
    if (check_size(st, self->max_payload, len) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(FAB_FRAME_HEADER_LEN + len));
    if (out == NULL)
        return NULL;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    fab_frame_header_write(p, &h, PyBytes_AS_STRING(args[1]), len);
    memcpy(p + FAB_FRAME_HEADER_LEN, PyBytes_AS_STRING(args[1]), len);
    return out;
}

/* The canonical encoding of value (typed: the value encoding of a stream
 * item) into buf after a reserved header. 0 or -1. */
static int encode_value_frame(fab_state *st, uint64_t max, fab_buf *buf,
                              const fab_frame_header *h, PyObject *value, int typed)
{
    size_t start = buf->len;
    fab_enc enc;
    uint8_t zero[FAB_FRAME_HEADER_LEN] = {0};
    if (fab_buf_append(buf, zero, sizeof(zero)) != FAB_OK) {
        PyErr_NoMemory();
        return -1;
    }
    fab_enc_init(&enc, fab_buf_sink, buf);
    if ((typed ? fab_py_encode_item(st, &enc, value, "item")
               : fab_py_encode_value(st, &enc, value, "payload")) < 0)
        return -1;
    size_t plen = buf->len - start - FAB_FRAME_HEADER_LEN;
    if (check_size(st, max, plen) < 0)
        return -1;
    fab_frame_header_write(buf->data + start, h, buf->data + start + FAB_FRAME_HEADER_LEN, plen);
    return 0;
}

static PyObject *encode_one_value(EncoderObject *self, const char *name, int typed,
                                  PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const kw[] = {"kind", "value", "stream_id", "seq", "flags"};
    PyObject *a[5];
    fab_frame_header h;
    fab_state *st = header_call(Py_TYPE(self), name, args, nargs, kwnames, kw, 5, 2, a, &h);
    if (st == NULL)
        return NULL;
    fab_buf buf;
    fab_buf_init(&buf);
    PyObject *out = NULL;
    if (encode_value_frame(st, self->max_payload, &buf, &h, a[1], typed) == 0)
        out = PyBytes_FromStringAndSize((const char *)buf.data, (Py_ssize_t)buf.len);
    fab_buf_destroy(&buf);
    return out;
}

static PyObject *encoder_encode_value(EncoderObject *self, PyObject *const *args,
                                      Py_ssize_t nargs, PyObject *kwnames)
{
    return encode_one_value(self, "encode_value", 0, args, nargs, kwnames);
}

static PyObject *encoder_encode_item(EncoderObject *self, PyObject *const *args,
                                     Py_ssize_t nargs, PyObject *kwnames)
{
    return encode_one_value(self, "encode_item", 1, args, nargs, kwnames);
}

/*
 * encode_reply(stream_id, start, data, end): a one-chunk reply's three
 * frames in one bytes object: STREAM_START (seq 0) with payload start,
 * STREAM_CHUNK (seq 1) whose payload is the value encoding of data (a
 * bytes object: what encode_value(STREAM_CHUNK, data) writes), STREAM_END
 * (seq 2) with payload end. The same bytes as the three encode calls joined.
 */
static PyObject *encoder_encode_reply(EncoderObject *self, PyObject *const *args,
                                      Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const kw[] = {"stream_id", "start", "data", "end"};
    PyObject *a[4];
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    if (st == NULL || parse_args("encode_reply", args, nargs, kwnames, kw, 4, 4, 4, a) < 0)
        return NULL;
    fab_frame_header h = {0};
    uint64_t sid;
    if (get_uint(a[0], "stream_id", UINT64_MAX, &sid) < 0)
        return NULL;
    if (!PyBytes_Check(a[1]) || !PyBytes_Check(a[2]) || !PyBytes_Check(a[3])) {
        PyErr_SetString(PyExc_TypeError, "encode_reply: start, data and end must be bytes");
        return NULL;
    }
    size_t slen = (size_t)PyBytes_GET_SIZE(a[1]), elen = (size_t)PyBytes_GET_SIZE(a[3]);
    if (check_size(st, self->max_payload, slen) < 0 ||
        check_size(st, self->max_payload, elen) < 0)
        return NULL;
    h.stream_id = sid;
    fab_buf buf;
    fab_buf_init(&buf);
    PyObject *out = NULL;
    uint8_t *p;
    h.kind = FAB_FRAME_STREAM_START;
    h.seq = 0;
    if (fab_buf_reserve(&buf, 3 * FAB_FRAME_HEADER_LEN + slen + elen +
                        (size_t)PyBytes_GET_SIZE(a[2]) + 16) != FAB_OK) {
        PyErr_NoMemory();
        goto done;
    }
    p = buf.data;
    fab_frame_header_write(p, &h, PyBytes_AS_STRING(a[1]), slen);
    memcpy(p + FAB_FRAME_HEADER_LEN, PyBytes_AS_STRING(a[1]), slen);
    buf.len = FAB_FRAME_HEADER_LEN + slen;
    h.kind = FAB_FRAME_STREAM_CHUNK;
    h.seq = 1;
    if (encode_value_frame(st, self->max_payload, &buf, &h, a[2], 0) < 0)
        goto done;
    h.kind = FAB_FRAME_STREAM_END;
    h.seq = 2;
    size_t at = buf.len;
    if (fab_buf_reserve(&buf, FAB_FRAME_HEADER_LEN + elen) != FAB_OK) {
        PyErr_NoMemory();
        goto done;
    }
    p = buf.data + at;
    fab_frame_header_write(p, &h, PyBytes_AS_STRING(a[3]), elen);
    memcpy(p + FAB_FRAME_HEADER_LEN, PyBytes_AS_STRING(a[3]), elen);
    buf.len = at + FAB_FRAME_HEADER_LEN + elen;
    out = PyBytes_FromStringAndSize((const char *)buf.data, (Py_ssize_t)buf.len);
done:
    fab_buf_destroy(&buf);
    return out;
}

static PyObject *encoder_encode_many(EncoderObject *self, PyObject *const *args,
                                     Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const kw[] = {"kind", "payloads", "stream_id", "first_seq", "flags"};
    PyObject *a[5];
    fab_frame_header h;
    fab_state *st =
        header_call(Py_TYPE(self), "encode_many", args, nargs, kwnames, kw, 5, 2, a, &h);
    if (st == NULL)
        return NULL;
    PyObject *seq = PySequence_Fast(a[1], "payloads must be an iterable of bytes-like objects");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    size_t total = 0;
    PyObject *out = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(items[i])) {
            PyErr_Format(PyExc_TypeError, "payloads[%zd] must be bytes, not %s", i,
                         Py_TYPE(items[i])->tp_name);
            goto done;
        }
        size_t len = (size_t)PyBytes_GET_SIZE(items[i]);
        if (check_size(st, self->max_payload, len) < 0)
            goto done;
        total += FAB_FRAME_HEADER_LEN + len;
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL)
        goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t len = (size_t)PyBytes_GET_SIZE(items[i]);
        const char *src = PyBytes_AS_STRING(items[i]);
        fab_frame_header_write(p, &h, src, len);
        memcpy(p + FAB_FRAME_HEADER_LEN, src, len);
        p += FAB_FRAME_HEADER_LEN + len;
        h.seq++;
    }
done:
    Py_DECREF(seq);
    return out;
}

/*
 * header(kind, parts, *, stream_id=0, seq=0, flags=0, crc_of=None): the
 * 36-byte header of a frame whose payload is the concatenation of parts
 * (bytes-like objects), the CRC computed over each part where it lies: the
 * caller sends the header and the parts as they are (scatter-gather),
 * nothing is assembled. crc_of = (whole, crc): the last part lies at the end
 * of whole, whose CRC-32C is crc (a checksum validated already, e.g. a
 * ledger record's): the last part's CRC follows from crc and whole's bytes
 * before it (fab_crc32c_shift), its own bytes are not read.
 */
static PyObject *encoder_header(EncoderObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    static const char *const kw[] = {"kind", "parts", "stream_id", "seq", "flags", "crc_of"};
    PyObject *a[6];
    fab_frame_header h;
    fab_state *st = header_call(Py_TYPE(self), "header", args, nargs, kwnames, kw, 6, 2, a, &h);
    if (st == NULL)
        return NULL;
    PyObject *seq = PySequence_Fast(a[1], "parts must be a sequence of bytes-like objects");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), got = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_buffer views[8], whole = {0};
    int have_whole = 0;
    uint64_t known = 0;
    PyObject *out = NULL;
    if (n > 8) {
        PyErr_Format(PyExc_ValueError, "parts holds %zd buffers; at most 8", n);
        goto done;
    }
    size_t total = 0;
    for (; got < n; got++) {
        if (PyUnicode_Check(items[got]) ||
            PyObject_GetBuffer(items[got], &views[got], PyBUF_SIMPLE) < 0) {
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError, "parts[%zd] must be a bytes-like object, not %s",
                             got, Py_TYPE(items[got])->tp_name);
            }
            goto done;
        }
        total += (size_t)views[got].len;
    }
    if (check_size(st, self->max_payload, total) < 0)
        goto done;
    if (a[5] != NULL && a[5] != Py_None) {
        PyObject *w = NULL, *c = NULL;
        if (!PyTuple_Check(a[5]) || PyTuple_GET_SIZE(a[5]) != 2 || n == 0) {
            PyErr_SetString(PyExc_TypeError, "crc_of must be a (whole, crc) tuple, with parts");
            goto done;
        }
        w = PyTuple_GET_ITEM(a[5], 0);
        c = PyTuple_GET_ITEM(a[5], 1);
        if (get_uint(c, "crc_of's crc", UINT32_MAX, &known) < 0 ||
            PyObject_GetBuffer(w, &whole, PyBUF_SIMPLE) < 0)
            goto done;
        have_whole = 1;
        const uint8_t *wb = whole.buf, *lb = views[n - 1].buf;
        size_t wl = (size_t)whole.len, ll = (size_t)views[n - 1].len;
        if (ll > wl || lb != wb + (wl - ll)) {
            PyErr_SetString(PyExc_ValueError, "crc_of: the last part does not lie at the "
                                              "end of whole");
            goto done;
        }
    }
    uint32_t crc = 0;
    Py_BEGIN_ALLOW_THREADS /* the views hold their exporters' buffers fixed */
    Py_ssize_t last = have_whole ? n - 1 : n;
    for (Py_ssize_t i = 0; i < last; i++)
        crc = fab_crc32c(crc, views[i].buf, (size_t)views[i].len);
    if (have_whole) {
        /* crc(whole) = crc(tail) ^ shift(crc(head), |tail|), and the same to
         * append the tail to the parts before it */
        size_t ll = (size_t)views[n - 1].len, hl = (size_t)whole.len - ll;
        uint32_t head = fab_crc32c(0, whole.buf, hl);
        uint32_t tail = (uint32_t)known ^ fab_crc32c_shift(head, ll);
        crc = tail ^ fab_crc32c_shift(crc, ll);
    }
    Py_END_ALLOW_THREADS
    out = PyBytes_FromStringAndSize(NULL, FAB_FRAME_HEADER_LEN);
    if (out != NULL)
        fab_frame_header_write_crc((uint8_t *)PyBytes_AS_STRING(out), &h, total, crc);
done:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    if (have_whole)
        PyBuffer_Release(&whole);
    Py_DECREF(seq);
    return out;
}

/*
 * encode_held_reply(stream_id, start, reply, limit): encode_reply(stream_id,
 * start, data, end) for an EvalReply whose record fits one chunk: data is
 * the record's canonical bytes (canonical_bytes([reply.value,
 * list(reply.diagnostics), reply.trace]), fabric.replies.reply_record), or
 * its value encoding (encode_value of it) when self.values, and
 * end the canonical STREAM_END payload of one chunk of len(data) bytes
 * ({"bytes": n, "chunks": 1, "truncated": false}). None when len(data) >
 * limit (the caller splits the record over several chunks). The same bytes
 * as those calls made one by one; one C call for a node's usual reply.
 */
/* The END payload of one chunk of n bytes at p (room for 32 bytes): its
 * length. Canonical: the keys in order, n in its shortest form. */
static size_t put_end1(uint8_t *p, uint64_t n)
{
    size_t k = fab_put_map_header(p, 3);
    k += fab_put_str_header(p + k, 5);
    memcpy(p + k, "bytes", 5);
    k += 5;
    k += fab_put_uint64(p + k, n);
    k += fab_put_str_header(p + k, 6);
    memcpy(p + k, "chunks", 6);
    k += 6;
    k += fab_put_uint64(p + k, 1);
    k += fab_put_str_header(p + k, 9);
    memcpy(p + k, "truncated", 9);
    k += 9;
    return k + fab_put_bool(p + k, 0);
}

/* The sizes of a held reply's three frames (encode_held_reply of a record's
 * dn bytes, dn <= UINT32_MAX, after a START payload of slen bytes): the
 * CHUNK's bin header and payload length, the END payload, the total. */
typedef struct {
    uint8_t bh[FAB_PUT_MAX], end[40]; /* (put_end1 of a u32: at most 31 bytes) */
    size_t bhl, plen, elen, total;
} held_layout;

static void held_layout_of(held_layout *l, size_t slen, size_t dn)
{
    l->bhl = fab_put_bin_header(l->bh, (uint32_t)dn);
    l->plen = l->bhl + dn;
    l->elen = put_end1(l->end, (uint64_t)dn);
    l->total = fab_frame_size(slen) + fab_frame_size(l->plen) + fab_frame_size(l->elen);
}

/* Writes the three frames laid out by l at p (l->total bytes): START with
 * start (slen bytes), CHUNK with the record's data (dn bytes), END. h has
 * the stream id. */
static void held_reply_put(uint8_t *p, const held_layout *l, fab_frame_header *h,
                           const void *start, size_t slen, const void *data, size_t dn)
{
    h->kind = FAB_FRAME_STREAM_START;
    h->seq = 0;
    memcpy(p + FAB_FRAME_HEADER_LEN, start, slen);
    fab_frame_header_write(p, h, p + FAB_FRAME_HEADER_LEN, slen);
    p += fab_frame_size(slen);
    uint8_t *payload = p + FAB_FRAME_HEADER_LEN;
    memcpy(payload, l->bh, l->bhl);
    memcpy(payload + l->bhl, data, dn);
    h->kind = FAB_FRAME_STREAM_CHUNK;
    h->seq = 1;
    fab_frame_header_write(p, h, payload, l->plen);
    p += fab_frame_size(l->plen);
    memcpy(p + FAB_FRAME_HEADER_LEN, l->end, l->elen);
    h->kind = FAB_FRAME_STREAM_END;
    h->seq = 2;
    fab_frame_header_write(p, h, p + FAB_FRAME_HEADER_LEN, l->elen);
}

/* encode_held_reply of a record's bytes (data): the three frames written
 * straight into the bytes object returned (their size is known first), or
 * None over limit. h has the stream id. */
static PyObject *held_reply_of_bytes(fab_state *st, EncoderObject *self, fab_frame_header *h,
                                     PyObject *start, PyObject *data, uint64_t limit)
{
    size_t slen = (size_t)PyBytes_GET_SIZE(start), dn = (size_t)PyBytes_GET_SIZE(data);
    if ((uint64_t)dn > limit || (uint64_t)dn > UINT32_MAX)
        Py_RETURN_NONE;
    held_layout l;
    held_layout_of(&l, slen, dn);
    if (check_size(st, self->max_payload, l.plen) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)l.total);
    if (out == NULL)
        return NULL;
    held_reply_put((uint8_t *)PyBytes_AS_STRING(out), &l, h, PyBytes_AS_STRING(start), slen,
                   PyBytes_AS_STRING(data), dn);
    return out;
}

static PyObject *encoder_encode_held_reply(EncoderObject *self, PyObject *const *args,
                                           Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const kw[] = {"stream_id", "start", "reply", "limit"};
    PyObject *a[4];
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    if (st == NULL ||
        parse_args("encode_held_reply", args, nargs, kwnames, kw, 4, 4, 4, a) < 0)
        return NULL;
    uint64_t sid, limit;
    if (get_uint(a[0], "stream_id", UINT64_MAX, &sid) < 0 ||
        get_uint(a[3], "limit", UINT64_MAX, &limit) < 0)
        return NULL;
    if (!PyBytes_Check(a[1])) {
        PyErr_SetString(PyExc_TypeError, "encode_held_reply: start must be bytes");
        return NULL;
    }
    size_t slen = (size_t)PyBytes_GET_SIZE(a[1]);
    if (check_size(st, self->max_payload, slen) < 0)
        return NULL;
    /* reply: an EvalReply, or its record's bytes as they are
     * (ContentAddressedFabric._lookup_record) */
    PyObject *rec = NULL;
    if (!PyBytes_CheckExact(a[2])) {
        if ((rec = fab_py_reply_record(st, a[2])) == NULL)
            return NULL;
    }
    fab_frame_header h = {0};
    h.stream_id = sid;
    if (rec == NULL)
        return held_reply_of_bytes(st, self, &h, a[1], a[2], limit);
    fab_buf buf;
    fab_buf_init(&buf);
    PyObject *out = NULL;
    /* START, then CHUNK's header and room for the longest bin header (5):
     * the record is encoded in place after it, its bin header written when
     * its length is known (and the record moved down to meet a shorter one) */
    size_t at = FAB_FRAME_HEADER_LEN + slen, data_at = at + FAB_FRAME_HEADER_LEN + 5;
    if (fab_buf_reserve(&buf, data_at + 256) != FAB_OK) {
        PyErr_NoMemory();
        goto done;
    }
    h.kind = FAB_FRAME_STREAM_START;
    h.seq = 0;
    fab_frame_header_write(buf.data, &h, PyBytes_AS_STRING(a[1]), slen);
    memcpy(buf.data + FAB_FRAME_HEADER_LEN, PyBytes_AS_STRING(a[1]), slen);
    buf.len = data_at;
    if (rec == NULL) {
        size_t dn = (size_t)PyBytes_GET_SIZE(a[2]);
        if ((uint64_t)dn > limit) {
            out = Py_NewRef(Py_None);
            goto done;
        }
        if (fab_buf_reserve(&buf, dn) != FAB_OK) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(buf.data + data_at, PyBytes_AS_STRING(a[2]), dn);
        buf.len = data_at + dn;
    } else {
        fab_enc enc;
        fab_enc_init(&enc, fab_buf_sink, &buf);
        if ((self->values ? fab_py_encode_item(st, &enc, rec, "reply")
                          : fab_py_encode_value(st, &enc, rec, "reply")) < 0)
            goto done;
    }
    size_t n = buf.len - data_at;
    if ((uint64_t)n > limit || (uint64_t)n > UINT32_MAX) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    uint8_t bh[FAB_PUT_MAX];
    size_t bhl = fab_put_bin_header(bh, (uint32_t)n);
    uint8_t *payload = buf.data + at + FAB_FRAME_HEADER_LEN;
    if (bhl < 5)
        memmove(payload + bhl, payload + 5, n);
    memcpy(payload, bh, bhl);
    size_t plen = bhl + n;
    if (check_size(st, self->max_payload, plen) < 0)
        goto done;
    h.kind = FAB_FRAME_STREAM_CHUNK;
    h.seq = 1;
    fab_frame_header_write(buf.data + at, &h, payload, plen);
    buf.len = at += FAB_FRAME_HEADER_LEN + plen;
    if (fab_buf_reserve(&buf, FAB_FRAME_HEADER_LEN + 32) != FAB_OK) {
        PyErr_NoMemory();
        goto done;
    }
    payload = buf.data + at + FAB_FRAME_HEADER_LEN;
    plen = put_end1(payload, (uint64_t)n);
    h.kind = FAB_FRAME_STREAM_END;
    h.seq = 2;
    fab_frame_header_write(buf.data + at, &h, payload, plen);
    buf.len = at + FAB_FRAME_HEADER_LEN + plen;
    out = PyBytes_FromStringAndSize((const char *)buf.data, (Py_ssize_t)buf.len);
done:
    Py_XDECREF(rec);
    fab_buf_destroy(&buf);
    return out;
}

static PyObject *encoder_get_limits(EncoderObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return Py_NewRef(self->limits);
}

static PyMethodDef encoder_methods[] = {
    {"encode_reply", (PyCFunction)(void (*)(void))encoder_encode_reply,
     METH_FASTCALL | METH_KEYWORDS,
     "encode_reply($self, stream_id, start, data, end, /)\n--\n\n"
     "A one-chunk reply's frames in one bytes object: STREAM_START (seq 0,\n"
     "payload start), STREAM_CHUNK (seq 1, payload the value encoding of the\n"
     "bytes data, as encode_value writes it) and STREAM_END (seq 2, payload\n"
     "end): the three encode calls joined, in one call."},
    {"encode", (PyCFunction)(void (*)(void))encoder_encode, METH_FASTCALL | METH_KEYWORDS,
     "encode($self, /, kind, payload=b'', *, stream_id=0, seq=0, flags=0)\n--\n\n"
     "The wire bytes of one frame carrying payload (any bytes-like object).\n"
     "A payload above limits.max_frame_payload_bytes raises FrameError."},
    {"encode_control", (PyCFunction)(void (*)(void))encoder_encode_control, METH_FASTCALL,
     "encode_control($self, stream_id, payload, /)\n--\n\n"
     "encode(FrameKind.CONTROL, payload, stream_id=stream_id), payload bytes."},
    {"encode_value", (PyCFunction)(void (*)(void))encoder_encode_value,
     METH_FASTCALL | METH_KEYWORDS,
     "encode_value($self, /, kind, value, *, stream_id=0, seq=0, flags=0)\n--\n\n"
     "One frame whose payload is the canonical msgpack encoding of value."},
    {"encode_item", (PyCFunction)(void (*)(void))encoder_encode_item,
     METH_FASTCALL | METH_KEYWORDS,
     "encode_item($self, /, kind, value, *, stream_id=0, seq=0, flags=0)\n--\n\n"
     "One frame whose payload is the value encoding of value (fabric.encode_value:\n"
     "a stream item keeps its types), packed straight into the frame."},
    {"header", (PyCFunction)(void (*)(void))encoder_header, METH_FASTCALL | METH_KEYWORDS,
     "header($self, /, kind, parts, *, stream_id=0, seq=0, flags=0, crc_of=None)\n--\n\n"
     "The 36-byte header of a frame whose payload is the concatenation of\n"
     "parts (a sequence of at most 8 bytes-like objects), its CRC computed\n"
     "over each part in place: send the header, then the parts as they are.\n"
     "crc_of=(whole, crc): the last part lies at the end of whole, whose\n"
     "CRC-32C (already validated) is crc: the last part's CRC is derived from\n"
     "it, its bytes are not read. A payload above\n"
     "limits.max_frame_payload_bytes raises FrameError."},
    {"encode_many", (PyCFunction)(void (*)(void))encoder_encode_many,
     METH_FASTCALL | METH_KEYWORDS,
     "encode_many($self, /, kind, payloads, *, stream_id=0, first_seq=0, flags=0)\n--\n\n"
     "The concatenated wire bytes of one frame per bytes payload, with\n"
     "consecutive sequence numbers from first_seq (batching for throughput)."},
    {"encode_held_reply", (PyCFunction)(void (*)(void))encoder_encode_held_reply,
     METH_FASTCALL | METH_KEYWORDS,
     "encode_held_reply($self, stream_id, start, reply, limit, /)\n--\n\n"
     "encode_reply(stream_id, start, data, end) for an EvalReply, in one call:\n"
     "data is the canonical encoding of its record ([value, diagnostics,\n"
     "trace]), or its value encoding when self.values is True, end the\n"
     "STREAM_END payload of one chunk of len(data) bytes.\n"
     "reply may also be those record bytes themselves (bytes: written as\n"
     "they are, ContentAddressedFabric._lookup_record).\n"
     "None when len(data) > limit (it takes several chunks)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *encoder_get_values(EncoderObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->values);
}

static int encoder_set_values(EncoderObject *self, PyObject *value, void *closure)
{
    (void)closure;
    int v = value == NULL ? 0 : PyObject_IsTrue(value);
    if (v < 0)
        return -1;
    self->values = v;
    return 0;
}

static PyGetSetDef encoder_getset[] = {
    {"limits", (getter)encoder_get_limits, NULL, "The StreamFrameLimits in force.", NULL},
    {"values", (getter)encoder_get_values, (setter)encoder_set_values,
     "Whether encode_held_reply (and FrameDecoder.serve_hits, with this\n"
     "encoder) writes a single reply's record in the value encoding (prefix\n"
     "c1 01, docs/spec/values.md) instead of the canonical one: for a peer\n"
     "that announced the HELLO capability \"values\". False by default.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot encoder_slots[] = {
    {Py_tp_doc, "FrameEncoder(limits=None)\n--\n\n"
                "Encodes frames (docs/spec/frames.md), refusing payloads above\n"
                "limits.max_frame_payload_bytes (default StreamFrameLimits())."},
    {Py_tp_new, encoder_new},
    {Py_tp_dealloc, encoder_dealloc},
    {Py_tp_methods, encoder_methods},
    {Py_tp_getset, encoder_getset},
    {0, NULL},
};

static PyType_Spec encoder_spec = {
    .name = "fabric.FrameEncoder",
    .basicsize = sizeof(EncoderObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = encoder_slots,
};

/* ======================================================================== */
/* FrameDecoder                                                             */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    PyObject *limits;
    PyObject *ready; /* list of decoded frames; ready[head:] not yet taken */
    Py_ssize_t head;
    fab_frame_decoder dec;
    /* feed_reply's last START and END payloads (bytes or NULL): the same
     * bytes again are this object again (no new bytes, its hash kept) */
    PyObject *last_start, *last_end;
} DecoderObject;

static PyObject *decoder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"limits", NULL};
    PyObject *limits = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:FrameDecoder", kwlist, &limits))
        return NULL;
    fab_state *st = fab_state_from_type(type);
    if (st == NULL || (limits = limits_or_default(st, limits)) == NULL)
        return NULL;
    DecoderObject *self = (DecoderObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(limits);
        return NULL;
    }
    self->limits = limits;
    fab_frame_decoder_init(&self->dec, (uint32_t)fab_py_limit(limits, L_PAYLOAD));
    if ((self->ready = PyList_New(0)) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void decoder_dealloc(DecoderObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(self->limits);
    Py_XDECREF(self->ready);
    Py_XDECREF(self->last_start);
    Py_XDECREF(self->last_end);
    fab_frame_decoder_destroy(&self->dec);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/*
 * The opening of feed() and feed_whole(): data's buffer into view, and the
 * queue compacted before it grows (taken frames are dropped). The module
 * state, or NULL with an exception set and view not held.
 */
static fab_state *decoder_begin(DecoderObject *self, PyObject *data, Py_buffer *view)
{
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    if (st == NULL || PyObject_GetBuffer(data, view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (self->head > 0 && self->head * 2 >= PyList_GET_SIZE(self->ready)) {
        if (PyList_SetSlice(self->ready, 0, self->head, NULL) < 0) {
            PyBuffer_Release(view);
            return NULL;
        }
        self->head = 0;
    }
    return st;
}

/* Queues the decoded frame f, its payload at payload inside owner. 0 or -1. */
static int decoder_queue(fab_state *st, DecoderObject *self, const fab_frame *f,
                         PyObject *owner, const uint8_t *payload)
{
    PyObject *frame = frame_make(st, &f->h, owner, payload, f->h.payload_len,
                                 (long long)f->offset);
    if (frame == NULL)
        return -1;
    int err = PyList_Append(self->ready, frame);
    Py_DECREF(frame);
    return err;
}

/* Queues the decoded frame f of feed()'s data: its payload a view of data
 * when it lies in it and zero_copy (data is bytes), else a copy. 0 or -1. */
static int decoder_queue_input(fab_state *st, DecoderObject *self, const fab_frame *f,
                               PyObject *data, int zero_copy)
{
    if (f->payload_in_input && zero_copy)
        return decoder_queue(st, self, f, data, f->payload);
    PyObject *owner = PyBytes_FromStringAndSize((const char *)f->payload, f->h.payload_len);
    if (owner == NULL)
        return -1;
    int err = decoder_queue(st, self, f, owner, (const uint8_t *)PyBytes_AS_STRING(owner));
    Py_DECREF(owner);
    return err;
}

/*
 * The loop of feed() over p[0:len], data's bytes (len may be less than
 * data's length: then the payloads are copied). With index (feed_open):
 * when nothing was queued before and p[0:len] is exactly one whole CONTROL
 * frame whose payload is filed in index (fab_py_open_entry, by the
 * header's CRC, checked against the payload by the decoder), that frame is
 * not queued: (frame, entry) is returned, the frame's payload a view of
 * entry's bytes (no copy). Otherwise the count of frames queued (feed), or
 * None (feed_open).
 */
static PyObject *decoder_feed_bytes(DecoderObject *self, fab_state *st, PyObject *data,
                                    const uint8_t *p, size_t len, int zero_copy,
                                    PyObject *index)
{
    size_t pos = 0;
    Py_ssize_t before = PyList_GET_SIZE(self->ready);
    int alone = index != NULL && self->head == before;
    for (;;) {
        size_t used;
        fab_frame f;
        int rc = fab_frame_decoder_next(&self->dec, p + pos, len - pos, &used, &f);
        pos += used;
        if (rc == FAB_FRAME_CONTINUE)
            break;
        if (rc < 0) {
            fab_py_raise_frame_error(st, &self->dec.err);
            return NULL;
        }
        if (alone && pos == len && used == len && f.payload_in_input &&
            f.h.kind == FAB_FRAME_CONTROL) {
            PyObject *e = fab_py_open_entry(index, f.h.payload_crc, f.payload, f.h.payload_len);
            if (e != NULL) {
                PyObject *owner = PyTuple_GET_ITEM(e, 0);
                PyObject *frame = frame_make(st, &f.h, owner,
                                             (const uint8_t *)PyBytes_AS_STRING(owner),
                                             f.h.payload_len, (long long)f.offset);
                if (frame == NULL)
                    return NULL;
                PyObject *res = PyTuple_Pack(2, frame, e);
                Py_DECREF(frame);
                return res;
            }
            if (PyErr_Occurred())
                return NULL;
        }
        if (decoder_queue_input(st, self, &f, data, zero_copy) < 0)
            return NULL;
        if (pos == len)
            break;
    }
    if (index != NULL)
        Py_RETURN_NONE;
    return PyLong_FromSsize_t(PyList_GET_SIZE(self->ready) - before);
}

/* The nbytes argument of feed_open and feed_reply: its value, -1 for None
 * or absent (the whole of data), or -2 with an exception set. */
static Py_ssize_t nbytes_arg(const char *fname, PyObject *arg)
{
    if (arg == NULL || arg == Py_None)
        return -1;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return -2;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "%s: nbytes must be >= 0, not %zd", fname, n);
        return -2;
    }
    return n;
}

/* The length of view to decode: nbytes (>= 0) when it is at most view's
 * length, the whole for -1; -2 with ValueError when nbytes is longer. */
static Py_ssize_t nbytes_of(const char *fname, const Py_buffer *view, Py_ssize_t nbytes)
{
    if (nbytes < 0)
        return view->len;
    if (nbytes > view->len) {
        PyErr_Format(PyExc_ValueError, "%s: nbytes must be in [0, %zd], not %zd", fname,
                     view->len, nbytes);
        return -2;
    }
    return nbytes;
}

/* feed(data[:nbytes]) (nbytes -1: the whole), or with index feed_open's. */
static PyObject *decoder_feed_part(DecoderObject *self, const char *fname, PyObject *data,
                                   Py_ssize_t nbytes, PyObject *index)
{
    Py_buffer view;
    fab_state *st = decoder_begin(self, data, &view);
    if (st == NULL)
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t n = nbytes_of(fname, &view, nbytes);
    if (n >= 0)
        res = decoder_feed_bytes(self, st, data, view.buf, (size_t)n, PyBytes_CheckExact(data),
                                 index);
    PyBuffer_Release(&view);
    return res;
}

static PyObject *decoder_feed(DecoderObject *self, PyObject *data)
{
    return decoder_feed_part(self, "feed", data, -1, NULL);
}

/*
 * feed_open(data, nbytes, index): feed(data[:nbytes]) without the slice,
 * except for a node's usual read: when nothing is queued and those bytes
 * are exactly one whole CONTROL frame whose payload index (a dict) has
 * filed under its CRC-32C (as _known_open finds it), the frame is not
 * queued and (frame, entry) is returned, the frame's payload a view of
 * entry's first item. Otherwise None, the frames queued as feed queues
 * them. Bad input raises FrameError as feed() does.
 */
static PyObject *decoder_feed_open(DecoderObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "feed_open() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyDict_Check(args[2])) {
        PyErr_Format(PyExc_TypeError, "feed_open: index must be a dict, not %.100s",
                     Py_TYPE(args[2])->tp_name);
        return NULL;
    }
    if (args[1] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "feed_open: nbytes must be an int, not None");
        return NULL;
    }
    Py_ssize_t n = nbytes_arg("feed_open", args[1]);
    return n < -1 ? NULL : decoder_feed_part(self, "feed_open", args[0], n, args[2]);
}

/*
 * serve_hits: a node's read callback's held hits in one call
 * (fabric/node/server.py, _ConnProtocol.buffer_updated). The arguments:
 * the read (data, nbytes), the node's index of parsed opens (index: CRC-32C
 * -> (payload, (parsed, route)), as _known_open reads it), the
 * connection's checked routes (routes: route -> (fabric, grants, usual)),
 * its encoder, a reply's START payload (start), the largest record a hit
 * writes (limit), its running requests (tasks: a dict by stream id, or
 * None), how many frames may be answered (budget: the frame rate's
 * window) and the output's size past which no more are (room).
 */
typedef struct {
    fab_state *st;
    PyObject *index, *routes, *tasks, *start;
    EncoderObject *enc;
    uint64_t limit;
    fab_buf out;
} hit_batch;

/* The frame f answered into b->out when it is a held hit: an open on a
 * stream id other than 0 and not running, filed in the index with a route
 * the connection checked whose fabric answers it in C (usual: True), its
 * record bytes of at most limit. 1: answered; 0: not such an open (f is to
 * be queued); 2: such an open whose lookup gave something else, *pending
 * (frame, entry, result: the reply, None, or the Exception it raised);
 * -1 on an error. */
static int serve_hit(hit_batch *b, const fab_frame *f, PyObject **pending)
{
    fab_state *st = b->st;
    if (f->h.kind != FAB_FRAME_CONTROL || f->h.stream_id == 0)
        return 0;
    PyObject *e = fab_py_open_entry(b->index, f->h.payload_crc, f->payload, f->h.payload_len);
    if (e == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *seen = PyTuple_GET_SIZE(e) == 2 ? PyTuple_GET_ITEM(e, 1) : NULL;
    if (seen == NULL || !PyTuple_CheckExact(seen) || PyTuple_GET_SIZE(seen) != 2)
        return 0;
    PyObject *parsed = PyTuple_GET_ITEM(seen, 0), *route = PyTuple_GET_ITEM(seen, 1);
    if (route == Py_None || !PyTuple_CheckExact(parsed) || PyTuple_GET_SIZE(parsed) < 1)
        return 0;
    PyObject *routed = PyDict_GetItemWithError(b->routes, route); /* borrowed */
    if (routed == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_CheckExact(routed) || PyTuple_GET_SIZE(routed) != 3 ||
        PyTuple_GET_ITEM(routed, 2) != Py_True ||
        !PyObject_TypeCheck(PyTuple_GET_ITEM(routed, 0), st->CAFCore_Type))
        return 0;
    if (b->tasks != Py_None && PyDict_GET_SIZE(b->tasks) > 0) {
        PyObject *sid = PyLong_FromUnsignedLongLong(f->h.stream_id);
        int running = sid == NULL ? -1 : PyDict_Contains(b->tasks, sid);
        Py_XDECREF(sid);
        if (running != 0)
            return running < 0 ? -1 : 0;
    }
    /* (held while the lookup runs: nothing it calls may free them under us) */
    Py_INCREF(e);
    Py_INCREF(routed);
    int rc = -1;
    PyObject *rec = fab_py_caf_record(st, PyTuple_GET_ITEM(routed, 0),
                                      PyTuple_GET_ITEM(parsed, 0), PyTuple_GET_ITEM(routed, 1),
                                      b->limit, b->enc->values);
    if (rec == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            goto done;
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL)
            PyException_SetTraceback(value, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        rec = value;
    }
    size_t slen = (size_t)PyBytes_GET_SIZE(b->start);
    if (PyBytes_CheckExact(rec) && (uint64_t)PyBytes_GET_SIZE(rec) <= b->limit &&
        (uint64_t)PyBytes_GET_SIZE(rec) <= UINT32_MAX && slen <= b->enc->max_payload) {
        size_t dn = (size_t)PyBytes_GET_SIZE(rec);
        held_layout l;
        held_layout_of(&l, slen, dn);
        if (l.plen <= b->enc->max_payload) {
            if (fab_buf_reserve(&b->out, l.total) != FAB_OK) {
                PyErr_NoMemory();
                goto done;
            }
            fab_frame_header h = {0};
            h.stream_id = f->h.stream_id;
            held_reply_put(b->out.data + b->out.len, &l, &h, PyBytes_AS_STRING(b->start), slen,
                           PyBytes_AS_STRING(rec), dn);
            b->out.len += l.total;
            rc = 1;
            goto done;
        }
    }
    /* the caller's Python path writes (or refuses) it, as encode_held_reply does */
    PyObject *owner = PyTuple_GET_ITEM(e, 0);
    PyObject *frame = frame_make(st, &f->h, owner, (const uint8_t *)PyBytes_AS_STRING(owner),
                                 f->h.payload_len, (long long)f->offset);
    if (frame != NULL) {
        *pending = PyTuple_Pack(3, frame, e, rec);
        Py_DECREF(frame);
        rc = *pending == NULL ? -1 : 2;
    }
done:
    Py_XDECREF(rec);
    Py_DECREF(routed);
    Py_DECREF(e);
    return rc;
}

/* The exception set, fetched: its value, normalized (new reference). */
static PyObject *fetch_error(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

static PyObject *decoder_serve_hits(DecoderObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "serve_hits() takes 10 arguments (%zd given)", nargs);
        return NULL;
    }
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    if (st == NULL)
        return NULL;
    hit_batch b = {.st = st, .index = args[2], .routes = args[3], .start = args[5],
                   .tasks = args[7]};
    if (!PyDict_Check(b.index) || !PyDict_Check(b.routes) ||
        !(b.tasks == Py_None || PyDict_Check(b.tasks))) {
        PyErr_SetString(PyExc_TypeError,
                        "serve_hits: index and routes must be dicts, tasks a dict or None");
        return NULL;
    }
    if (!Py_IS_TYPE(args[4], st->FrameEncoder_Type) || !PyBytes_CheckExact(b.start)) {
        PyErr_SetString(PyExc_TypeError,
                        "serve_hits: encoder must be a FrameEncoder, start bytes");
        return NULL;
    }
    b.enc = (EncoderObject *)args[4];
    if (args[1] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "serve_hits: nbytes must be an int, not None");
        return NULL;
    }
    Py_ssize_t nbytes = nbytes_arg("serve_hits", args[1]);
    if (nbytes < -1 || get_uint(args[6], "limit", UINT64_MAX, &b.limit) < 0)
        return NULL;
    Py_ssize_t budget = PyLong_AsSsize_t(args[8]), room = PyLong_AsSsize_t(args[9]);
    if ((budget == -1 || room == -1) && PyErr_Occurred())
        return NULL;
    PyObject *data = args[0];
    Py_buffer view;
    if (decoder_begin(self, data, &view) == NULL)
        return NULL;
    PyObject *res = NULL, *pending = NULL, *error = NULL;
    Py_ssize_t served = 0;
    fab_buf_init(&b.out);
    Py_ssize_t n = nbytes_of("serve_hits", &view, nbytes);
    if (n < 0)
        goto failed;
    const uint8_t *p = view.buf;
    size_t len = (size_t)n, pos = 0;
    int zero_copy = PyBytes_CheckExact(data);
    /* answered in turn while nothing waits before them (frames queued
     * earlier come first) */
    int answer = self->head == PyList_GET_SIZE(self->ready);
    while (answer && pos < len && served < budget && (Py_ssize_t)b.out.len < room) {
        size_t used;
        fab_frame f;
        int rc = fab_frame_decoder_next(&self->dec, p + pos, len - pos, &used, &f);
        pos += used;
        if (rc == FAB_FRAME_CONTINUE)
            break;
        if (rc < 0) {
            fab_py_raise_frame_error(st, &self->dec.err);
            goto failed;
        }
        rc = serve_hit(&b, &f, &pending);
        if (rc < 0 || (rc == 0 && decoder_queue_input(st, self, &f, data, zero_copy) < 0))
            goto failed;
        if (rc != 1)
            break;
        served++;
    }
    if (pos < len) { /* the rest, queued in order as feed() queues it */
        PyObject *count = decoder_feed_bytes(self, st, data, p + pos, len - pos, zero_copy, NULL);
        if (count == NULL)
            goto failed;
        Py_DECREF(count);
    }
    goto build;
failed:
    /* after answers (or a pending open): they go out first, the error after them */
    if (served == 0 && pending == NULL)
        goto done;
    if ((error = fetch_error()) == NULL)
        goto done;
build:
    /* (out, answered, rest): rest None when the read is done (nothing queued,
     * nothing pending, no error), else (pending, error) */
    if ((res = PyTuple_New(3)) == NULL)
        goto done;
    PyObject *out = PyBytes_FromStringAndSize((const char *)b.out.data, (Py_ssize_t)b.out.len);
    PyObject *count = PyLong_FromSsize_t(served);
    PyObject *rest = pending == NULL && error == NULL &&
                             self->head == PyList_GET_SIZE(self->ready)
                         ? Py_NewRef(Py_None)
                         : PyTuple_Pack(2, pending ? pending : Py_None, error ? error : Py_None);
    PyTuple_SET_ITEM(res, 0, out);
    PyTuple_SET_ITEM(res, 1, count);
    PyTuple_SET_ITEM(res, 2, rest);
    if (out == NULL || count == NULL || rest == NULL)
        Py_CLEAR(res);
done:
    Py_XDECREF(pending);
    Py_XDECREF(error);
    fab_buf_destroy(&b.out);
    PyBuffer_Release(&view);
    return res;
}

/*
 * feed_whole(data): queues the whole frames at the start of data and returns
 * how many bytes they took; an incomplete frame after them is left (its
 * header, as far as it goes, checked already). The queued frames' payloads
 * are views of data (any bytes-like object), never copies: the caller keeps
 * data unchanged while it uses them, and passes what was left again with
 * more bytes after it. For a reader that keeps a frame's bytes in its own
 * buffer until the frame is whole; not to be mixed with a feed() that left a
 * partial frame (ValueError).
 */
static PyObject *decoder_feed_whole(DecoderObject *self, PyObject *data)
{
    Py_buffer view;
    fab_state *st = decoder_begin(self, data, &view);
    if (st == NULL)
        return NULL;
    const uint8_t *p = view.buf;
    size_t len = (size_t)view.len, pos = 0;
    PyObject *res = NULL;
    while (pos < len) {
        size_t total, used;
        fab_frame f;
        int rc = fab_frame_decoder_peek(&self->dec, p + pos, len - pos, &total);
        if (rc == FAB_ESTATE) {
            PyErr_SetString(PyExc_ValueError,
                            "feed_whole() after a feed() that left part of a frame");
            goto done;
        }
        if (rc < 0) {
            fab_py_raise_frame_error(st, &self->dec.err);
            goto done;
        }
        if (total == 0 || total > len - pos)
            break;
        rc = fab_frame_decoder_next(&self->dec, p + pos, total, &used, &f);
        if (rc < 0) {
            fab_py_raise_frame_error(st, &self->dec.err);
            goto done;
        }
        FAB_ASSERT(rc == FAB_FRAME_READY && used == total && f.payload_in_input);
        pos += total;
        if (decoder_queue(st, self, &f, data, f.payload) < 0)
            goto done;
    }
    res = PyLong_FromSize_t(pos);
done:
    PyBuffer_Release(&view);
    return res;
}

static PyObject *decoder_iternext(DecoderObject *self)
{
    if (self->head >= PyList_GET_SIZE(self->ready))
        return NULL;
    PyObject *f = PyList_GET_ITEM(self->ready, self->head);
    /* Drop the list's reference so a taken frame lives only as long as the
     * caller keeps it. */
    PyList_SET_ITEM(self->ready, self->head, Py_NewRef(Py_None));
    self->head++;
    if (self->head == PyList_GET_SIZE(self->ready)) {
        if (PyList_SetSlice(self->ready, 0, self->head, NULL) < 0) {
            Py_DECREF(f);
            return NULL;
        }
        self->head = 0;
    }
    return f;
}

/*
 * take_reply(limits=None): when the next three queued frames are one
 * stream's STREAM_START (seq 0), a STREAM_CHUNK (seq 1, no flags) whose
 * payload decodes (under limits, as Frame.decode_payload) to a bytes object,
 * and a STREAM_END (seq 2), all on one stream id other than 0: takes them
 * and returns (stream_id, start, start_payload, data, end, end_payload),
 * start and end the Frame objects, their payloads as bytes, data the
 * chunk's bytes. Otherwise None, and nothing is taken (the frames are
 * iterated as usual). A chunk payload that does not decode raises as
 * decode_payload does, nothing taken. What the frames say (which call,
 * what the END accounts for) is the caller's to check.
 */
static PyObject *payload_of(FrameObject *f)
{
    if (PyBytes_CheckExact(f->owner) && PyBytes_GET_SIZE(f->owner) == f->len &&
        (const uint8_t *)PyBytes_AS_STRING(f->owner) == f->ptr)
        return Py_NewRef(f->owner);
    return PyBytes_FromStringAndSize((const char *)f->ptr, f->len);
}

static PyObject *decoder_take_reply(DecoderObject *self, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const kw[] = {"limits"};
    PyObject *a[1];
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    if (st == NULL || parse_args("take_reply", args, nargs, kwnames, kw, 1, 1, 0, a) < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(self->ready);
    if (n - self->head < 3)
        Py_RETURN_NONE;
    FrameObject *s0 = (FrameObject *)PyList_GET_ITEM(self->ready, self->head);
    FrameObject *c1 = (FrameObject *)PyList_GET_ITEM(self->ready, self->head + 1);
    FrameObject *e2 = (FrameObject *)PyList_GET_ITEM(self->ready, self->head + 2);
    if (s0->kind != FAB_FRAME_STREAM_START || s0->seq != 0 || s0->stream_id == 0 ||
        c1->kind != FAB_FRAME_STREAM_CHUNK || c1->seq != 1 || c1->flags != 0 ||
        c1->stream_id != s0->stream_id || e2->kind != FAB_FRAME_STREAM_END ||
        e2->seq != 2 || e2->stream_id != s0->stream_id)
        Py_RETURN_NONE;
    fab_mp_limits lim;
    if (payload_limits(st, a[0], &lim) < 0)
        return NULL;
    size_t base = c1->offset < 0 ? 0 : (size_t)c1->offset + FAB_FRAME_HEADER_LEN;
    PyObject *data = fab_py_decode_record(st, c1->ptr, (size_t)c1->len, &lim, base);
    if (data == NULL)
        return NULL;
    if (!PyBytes_CheckExact(data)) {
        Py_DECREF(data);
        Py_RETURN_NONE;
    }
    PyObject *sp = payload_of(s0), *ep = sp ? payload_of(e2) : NULL;
    PyObject *sid = ep ? PyLong_FromUnsignedLongLong(s0->stream_id) : NULL;
    PyObject *out = NULL;
    if (sid != NULL)
        out = PyTuple_Pack(6, sid, (PyObject *)s0, sp, data, (PyObject *)e2, ep);
    Py_XDECREF(sid);
    Py_XDECREF(sp);
    Py_XDECREF(ep);
    Py_DECREF(data);
    if (out == NULL)
        return NULL;
    /* taken: the list lets go of the three (the tuple holds them) */
    for (int i = 0; i < 3; i++)
        PyList_SET_ITEM(self->ready, self->head + i, Py_NewRef(Py_None));
    /* the references the list held (replaced by None above) */
    Py_DECREF(s0);
    Py_DECREF(c1);
    Py_DECREF(e2);
    self->head += 3;
    if (self->head == PyList_GET_SIZE(self->ready)) {
        if (PyList_SetSlice(self->ready, 0, self->head, NULL) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        self->head = 0;
    }
    return out;
}

/*
 * feed_reply(data, limits=None): feed(data), then take_reply(limits), in one
 * call and with the same result, the same frames left queued and the same
 * errors. When nothing is queued and no partial frame is held, the frames
 * of data are decoded first (a FrameError leaves those before it queued, as
 * feed does) and, when the first three are the usual reply
 * (fab_frame_is_reply) whose chunk decodes to bytes, those three are never
 * queued: no Frame for the chunk, no copy of its payload besides its bytes;
 * the START's and END's payloads are the objects of the last call when
 * their bytes are the same.
 */
static PyObject *cached_payload(PyObject **slot, const fab_frame *f)
{
    PyObject *b = *slot;
    if (b != NULL && (size_t)PyBytes_GET_SIZE(b) == f->h.payload_len &&
        memcmp(PyBytes_AS_STRING(b), f->payload, f->h.payload_len) == 0)
        return Py_NewRef(b);
    b = PyBytes_FromStringAndSize((const char *)f->payload, f->h.payload_len);
    if (b != NULL)
        Py_XSETREF(*slot, Py_NewRef(b));
    return b;
}

/* Queues frames fs[i..n) of data (owner: data when bytes, else a copy). */
static int queue_from(fab_state *st, DecoderObject *self, PyObject *data, const fab_frame *fs,
                      size_t i, size_t n)
{
    int zero_copy = PyBytes_CheckExact(data);
    for (; i < n; i++) {
        const fab_frame *f = &fs[i];
        int err;
        if (zero_copy) {
            err = decoder_queue(st, self, f, data, f->payload);
        } else {
            PyObject *owner = PyBytes_FromStringAndSize((const char *)f->payload,
                                                        f->h.payload_len);
            if (owner == NULL)
                return -1;
            err = decoder_queue(st, self, f, owner, (const uint8_t *)PyBytes_AS_STRING(owner));
            Py_DECREF(owner);
        }
        if (err < 0)
            return -1;
    }
    return 0;
}

/* Queues frames fs[0..n) of data with an exception set: the exception
 * stays (or, when queueing fails, the queueing's own error replaces it). */
static void queue_keeping_error(fab_state *st, DecoderObject *self, PyObject *data,
                                const fab_frame *fs, size_t n)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (queue_from(st, self, data, fs, 0, n) < 0) {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
    } else {
        PyErr_Restore(et, ev, tb);
    }
}

static PyObject *decoder_feed_reply(DecoderObject *self, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const kw[] = {"data", "limits", "nbytes"};
    PyObject *a[3];
    if (parse_args("feed_reply", args, nargs, kwnames, kw, 3, 3, 1, a) < 0)
        return NULL;
    Py_ssize_t nbytes = nbytes_arg("feed_reply", a[2]);
    if (nbytes < -1)
        return NULL;
    if (self->head < PyList_GET_SIZE(self->ready) || fab_frame_decoder_partial(&self->dec)) {
        /* the frames before come first */
        PyObject *n = decoder_feed_part(self, "feed_reply", a[0], nbytes, NULL);
        if (n == NULL)
            return NULL;
        Py_DECREF(n);
        PyObject *targs[1] = {a[1]};
        return decoder_take_reply(self, targs, a[1] ? 1 : 0, NULL);
    }
    Py_buffer view;
    fab_state *st = decoder_begin(self, a[0], &view);
    if (st == NULL)
        return NULL;
    Py_ssize_t whole = nbytes_of("feed_reply", &view, nbytes);
    if (whole < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const uint8_t *p = view.buf;
    size_t len = (size_t)whole, pos = 0, n = 0, cap = 8;
    fab_frame local[8], *fs = local;
    PyObject *res = NULL;
    int failed = 0;
    while (pos < len) { /* every frame of data first, as feed() */
        size_t used;
        if (n == cap) {
            fab_frame *more = PyMem_Malloc(2 * cap * sizeof(fab_frame));
            if (more == NULL) {
                PyErr_NoMemory();
                failed = 1;
                break;
            }
            memcpy(more, fs, n * sizeof(fab_frame));
            if (fs != local)
                PyMem_Free(fs);
            fs = more;
            cap *= 2;
        }
        int rc = fab_frame_decoder_next(&self->dec, p + pos, len - pos, &used, &fs[n]);
        pos += used;
        if (rc == FAB_FRAME_CONTINUE)
            break;
        if (rc < 0) {
            fab_py_raise_frame_error(st, &self->dec.err);
            failed = 1;
            break;
        }
        FAB_ASSERT(fs[n].payload_in_input); /* begun at a frame boundary */
        n++;
    }
    if (failed) { /* those before stay queued, as feed() leaves them */
        queue_keeping_error(st, self, a[0], fs, n);
        goto done;
    }
    size_t taken = 0;
    if (n >= 3 && fab_frame_is_reply(&fs[0].h, &fs[1].h, &fs[2].h)) {
        fab_mp_limits lim;
        if (payload_limits(st, a[1], &lim) < 0)
            goto done;
        PyObject *data = fab_py_decode_record(
            st, fs[1].payload, fs[1].h.payload_len, &lim,
            (size_t)fs[1].offset + FAB_FRAME_HEADER_LEN);
        if (data == NULL) { /* as take_reply raises: nothing taken */
            queue_keeping_error(st, self, a[0], fs, n);
            goto done;
        }
        if (PyBytes_CheckExact(data)) {
            PyObject *sp = cached_payload(&self->last_start, &fs[0]);
            PyObject *ep = sp ? cached_payload(&self->last_end, &fs[2]) : NULL;
            PyObject *sf = ep ? frame_make(st, &fs[0].h, sp, (const uint8_t *)PyBytes_AS_STRING(sp),
                                           PyBytes_GET_SIZE(sp), (long long)fs[0].offset)
                              : NULL;
            PyObject *ef = sf ? frame_make(st, &fs[2].h, ep, (const uint8_t *)PyBytes_AS_STRING(ep),
                                           PyBytes_GET_SIZE(ep), (long long)fs[2].offset)
                              : NULL;
            PyObject *sid = ef ? PyLong_FromUnsignedLongLong(fs[0].h.stream_id) : NULL;
            if (sid != NULL)
                res = PyTuple_Pack(6, sid, sf, sp, data, ef, ep);
            Py_XDECREF(sid);
            Py_XDECREF(sf);
            Py_XDECREF(ef);
            Py_XDECREF(sp);
            Py_XDECREF(ep);
            Py_DECREF(data);
            if (res == NULL)
                goto done;
            taken = 3;
        } else {
            Py_DECREF(data);
        }
    }
    if (queue_from(st, self, a[0], fs, taken, n) < 0) {
        Py_CLEAR(res);
        goto done;
    }
    if (res == NULL)
        res = Py_NewRef(Py_None);
done:
    if (fs != local)
        PyMem_Free(fs);
    PyBuffer_Release(&view);
    return res;
}

static PyObject *decoder_finish(DecoderObject *self, PyObject *Py_UNUSED(ignored))
{
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    if (fab_frame_decoder_finish(&self->dec) != FAB_OK)
        return fab_py_raise_frame_error(st, &self->dec.err);
    Py_RETURN_NONE;
}

static PyObject *decoder_get_offset(DecoderObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyLong_FromUnsignedLongLong(self->dec.offset);
}

static PyObject *decoder_get_pending(DecoderObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyLong_FromSsize_t(PyList_GET_SIZE(self->ready) - self->head);
}

static PyObject *decoder_get_partial(DecoderObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyBool_FromLong(fab_frame_decoder_partial(&self->dec));
}

static PyObject *decoder_get_capacity(DecoderObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyLong_FromSize_t(self->dec.pay_cap);
}

static PyObject *decoder_get_limits(DecoderObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return Py_NewRef(self->limits);
}

static PyMethodDef decoder_methods[] = {
    {"feed", (PyCFunction)decoder_feed, METH_O,
     "feed($self, data, /)\n--\n\n"
     "Decode the frames completed by data (any bytes-like object, any split of\n"
     "the stream) and queue them for iteration; returns how many were queued.\n"
     "Bad input raises FrameError with .offset (stream offset of the bad field),\n"
     ".frame_offset and .violation; frames completed before it stay queued, and\n"
     "the decoder stays failed. Payloads of frames that lie wholly inside a bytes\n"
     "object share it (zero-copy); other inputs are copied."},
    {"feed_open", (PyCFunction)(void (*)(void))decoder_feed_open, METH_FASTCALL,
     "feed_open($self, data, nbytes, index, /)\n--\n\n"
     "feed(data[:nbytes]) without the slice; but when nothing is queued and\n"
     "those bytes are exactly one whole CONTROL frame whose payload index (a\n"
     "dict) files under its CRC-32C as _known_open finds it, that frame is not\n"
     "queued: returns (frame, entry), the frame's payload a view of entry's\n"
     "bytes. Otherwise None, the frames queued as feed queues them."},
    {"serve_hits", (PyCFunction)(void (*)(void))decoder_serve_hits, METH_FASTCALL,
     "serve_hits($self, data, nbytes, index, routes, encoder, start, limit, tasks,\n"
     "           budget, room, /)\n--\n\n"
     "A node's held hits at the head of a read, answered in one call. Decodes\n"
     "data[:nbytes] as feed() does; while nothing is queued, each whole frame\n"
     "that is a CONTROL frame on a stream id other than 0 and not in tasks (a\n"
     "dict, or None), whose payload index files as _known_open finds it, with\n"
     "an entry (parsed, route) whose route routes (a dict) maps to (fabric,\n"
     "grants, True), fabric a ContentAddressedFabricCore, is looked up as\n"
     "fabric._lookup_record(parsed[0], limit, grants=grants) does; its record's\n"
     "bytes (at most limit) are answered: encoder.encode_held_reply(stream id,\n"
     "start, record, limit) appended to the output. At most budget frames are\n"
     "answered, none once the output has room bytes. The first frame not\n"
     "answered and every one after it are queued as feed() queues them, in\n"
     "order, but a known open whose lookup gave anything else (the reply,\n"
     "None, or the Exception it raised), which is returned instead.\n"
     "Returns (out, answered, rest): rest None when nothing is left (nothing\n"
     "queued or pending), else (pending, error): pending None or (frame,\n"
     "entry, result), error None or what bad input raised after answers or a\n"
     "pending open (the decoder stays failed); with neither, bad input raises."},
    {"feed_whole", (PyCFunction)decoder_feed_whole, METH_O,
     "feed_whole($self, data, /)\n--\n\n"
     "Queue the whole frames at the start of data and return how many bytes\n"
     "they took; an incomplete frame after them is left (its header checked as\n"
     "far as it goes). Their payloads are views of data, never copies: keep\n"
     "data unchanged while the frames are used, and pass what was left again\n"
     "with more bytes after it. Bad input raises FrameError as feed() does."},
    {"take_reply", (PyCFunction)(void (*)(void))decoder_take_reply,
     METH_FASTCALL | METH_KEYWORDS,
     "take_reply($self, /, limits=None)\n--\n\n"
     "When the next three queued frames are one stream's STREAM_START (seq 0),\n"
     "STREAM_CHUNK (seq 1, no flags, its payload decoding to bytes under limits)\n"
     "and STREAM_END (seq 2) on a stream id other than 0: takes them and returns\n"
     "(stream_id, start, start_payload, data, end, end_payload) (the START and\n"
     "END frames, their payloads as bytes, the chunk's bytes); else None with\n"
     "nothing taken. A chunk that does not decode raises as decode_payload."},
    {"feed_reply", (PyCFunction)(void (*)(void))decoder_feed_reply,
     METH_FASTCALL | METH_KEYWORDS,
     "feed_reply($self, /, data, limits=None, nbytes=None)\n--\n\n"
     "feed(data), then take_reply(limits), in one call: the same result, the\n"
     "same frames left queued, the same errors. The usual reply's frames, when\n"
     "they are the first whole frames of data and nothing was queued or held\n"
     "before, are never queued (no Frame for the chunk). nbytes: only\n"
     "data[:nbytes] is fed (no slice made; ValueError past data's end)."},
    {"finish", (PyCFunction)decoder_finish, METH_NOARGS,
     "finish($self, /)\n--\n\n"
     "Declare the end of the stream: raises FrameError (violation 'truncated')\n"
     "when it ends inside a frame."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef decoder_getset[] = {
    {"offset", (getter)decoder_get_offset, NULL, "Bytes consumed so far.", NULL},
    {"pending", (getter)decoder_get_pending, NULL, "Frames decoded and not yet taken.", NULL},
    {"partial", (getter)decoder_get_partial, NULL, "True while part of a frame is buffered.", NULL},
    {"limits", (getter)decoder_get_limits, NULL, "The StreamFrameLimits in force.", NULL},
    {"_buffer_capacity", (getter)decoder_get_capacity, NULL,
     "Bytes the C decoder holds allocated for a partial payload (for tests).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot decoder_slots[] = {
    {Py_tp_doc, "FrameDecoder(limits=None)\n--\n\n"
                "Incremental frame decoder: feed(bytes), then iterate to take the\n"
                "decoded frames. Correct for any split of the stream; refuses a\n"
                "declared payload above limits.max_frame_payload_bytes before\n"
                "allocating, and buffers no more than the bytes fed plus 64 KiB."},
    {Py_tp_new, decoder_new},
    {Py_tp_dealloc, decoder_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, decoder_iternext},
    {Py_tp_methods, decoder_methods},
    {Py_tp_getset, decoder_getset},
    {0, NULL},
};

static PyType_Spec decoder_spec = {
    .name = "fabric.FrameDecoder",
    .basicsize = sizeof(DecoderObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = decoder_slots,
};

/* ======================================================================== */
/* Module part                                                              */
/* ======================================================================== */

static PyObject *frame_from_bytes(PyObject *module, PyObject *data)
{
    fab_state *st = fab_get_state(module);
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    fab_frame_decoder dec;
    fab_frame_decoder_init(&dec, FAB_FRAME_FORMAT_MAX_PAYLOAD);
    size_t used;
    fab_frame f;
    PyObject *res = NULL;
    int rc = fab_frame_decoder_next(&dec, view.buf, (size_t)view.len, &used, &f);
    if (rc == FAB_FRAME_CONTINUE)
        rc = fab_frame_decoder_finish(&dec);
    if (rc < 0) {
        fab_py_raise_frame_error(st, &dec.err);
    } else if (used != (size_t)view.len) {
        PyErr_Format(st->exc[FAB_PYEXC_FrameError], "%zd bytes after the frame at offset %zu",
                     view.len - (Py_ssize_t)used, used);
    } else {
        PyObject *owner = PyBytes_FromStringAndSize((const char *)f.payload, f.h.payload_len);
        if (owner) {
            res = frame_make(st, &f.h, owner, (const uint8_t *)PyBytes_AS_STRING(owner),
                             f.h.payload_len, -1);
            Py_DECREF(owner);
        }
    }
    fab_frame_decoder_destroy(&dec);
    PyBuffer_Release(&view);
    return res;
}

static PyObject *payload_violation(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    fab_state *st = fab_get_state(module);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_payload_violation(data, limits)");
        return NULL;
    }
    fab_mp_limits lim;
    if (payload_limits(st, args[1], &lim) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    char err[160];
    size_t off = 0;
    /* A value-encoded payload (docs/spec/values.md) is checked after its prefix. */
    size_t skip = 0;
    int rc = fab_value_prefix(view.buf, (size_t)view.len, &skip, err, sizeof(err), &off);
    if (rc == FAB_OK) {
        rc = (skip ? fab_mp_validate_tagged : fab_mp_validate)(
            (const uint8_t *)view.buf + skip, (size_t)view.len - skip, &lim, err, sizeof(err),
            &off);
        off += skip;
    }
    PyBuffer_Release(&view);
    if (rc == FAB_OK)
        Py_RETURN_NONE;
    const char *which = rc == FAB_EDEPTH ? "max_depth" : rc == FAB_ELIMIT ? "limit" : "format";
    return Py_BuildValue("(sns)", which, (Py_ssize_t)off, err);
}

static PyMethodDef frames_functions[] = {
    {"_payload_violation", (PyCFunction)(void (*)(void))payload_violation, METH_FASTCALL,
     "_payload_violation(data, limits, /)\n--\n\n"
     "None when data is one msgpack value within limits, else (which, offset,\n"
     "message) with which 'max_depth', 'limit' or 'format'."},
    {"_frame_from_bytes", frame_from_bytes, METH_O,
     "_frame_from_bytes(data, /)\n--\n\nOne whole encoded frame back to a Frame (for pickle)."},
    {NULL, NULL, 0, NULL},
};

int fab_py_frames_exec(PyObject *module, fab_state *st)
{
    if (PyModule_AddFunctions(module, frames_functions) < 0)
        return -1;
    if ((st->StreamFrameLimits_Type = fab_py_add_type(module, &limits_spec, NULL)) == NULL ||
        (st->Frame_Type = fab_py_add_type(module, &frame_spec, NULL)) == NULL ||
        (st->FrameEncoder_Type = fab_py_add_type(module, &encoder_spec, NULL)) == NULL ||
        (st->FrameDecoder_Type = fab_py_add_type(module, &decoder_spec, NULL)) == NULL)
        return -1;
    st->StreamFrameLimits_Type->tp_vectorcall = limits_vectorcall;
    st->Frame_Type->tp_vectorcall = frame_vectorcall;
    st->default_limits = limits_vectorcall((PyObject *)st->StreamFrameLimits_Type, NULL, 0, NULL);
    if (st->default_limits == NULL)
        return -1;
    PyObject *kinds = PyDict_New();
    if (kinds == NULL)
        return -1;
#define FAB__KIND_ADD(name, value, text)                                       \
    {                                                                          \
        PyObject *v = PyLong_FromLong(value);                                  \
        if (v == NULL || PyDict_SetItemString(kinds, text, v) < 0) {           \
            Py_XDECREF(v);                                                     \
            Py_DECREF(kinds);                                                  \
            return -1;                                                         \
        }                                                                      \
        Py_DECREF(v);                                                          \
    }
    FAB_FRAME_KINDS(FAB__KIND_ADD)
#undef FAB__KIND_ADD
    int added = PyModule_AddObjectRef(module, "FRAME_KINDS", kinds);
    Py_DECREF(kinds);
    if (added < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "FRAME_HEADER_LEN", FAB_FRAME_HEADER_LEN) < 0 ||
        PyModule_AddIntConstant(module, "FRAME_VERSION", FAB_FRAME_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "FRAME_FLAG_DIAGNOSTIC", FAB_FRAME_FLAG_DIAGNOSTIC) < 0)
        return -1;
    return 0;
}

int fab_py_frames_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->StreamFrameLimits_Type);
    Py_VISIT(st->Frame_Type);
    Py_VISIT(st->FrameEncoder_Type);
    Py_VISIT(st->FrameDecoder_Type);
    Py_VISIT(st->default_limits);
    return 0;
}

void fab_py_frames_clear(fab_state *st)
{
    Py_CLEAR(st->StreamFrameLimits_Type);
    Py_CLEAR(st->Frame_Type);
    Py_CLEAR(st->FrameEncoder_Type);
    Py_CLEAR(st->FrameDecoder_Type);
    Py_CLEAR(st->default_limits);
}

/* ======================================================================== */
/* For other parts (control.c)                                              */
/* ======================================================================== */

int fab_py_frame_view(fab_state *st, PyObject *obj, fab_py_frame_info *out)
{
    if (!PyObject_TypeCheck(obj, st->Frame_Type))
        return -1;
    const FrameObject *f = (const FrameObject *)obj;
    out->payload = f->ptr;
    out->len = (size_t)f->len;
    out->offset = f->offset;
    out->stream_id = f->stream_id;
    out->kind = f->kind;
    out->payload_crc = f->payload_crc;
    out->crc_known = f->crc_known;
    return 0;
}

PyObject *fab_py_frame_new(fab_state *st, uint8_t kind, uint64_t stream_id, PyObject *seq,
                           PyObject *payload)
{
    fab_frame_header h;
    memset(&h, 0, sizeof(h));
    h.kind = kind;
    h.stream_id = stream_id;
    if (seq && get_uint(seq, "seq", UINT64_MAX, &h.seq) < 0)
        return NULL;
    if ((size_t)PyBytes_GET_SIZE(payload) > FAB_FRAME_FORMAT_MAX_PAYLOAD)
        return raise_frame_error_at(st, "payload-too-large",
                                    "payload of %zd bytes does not fit a frame",
                                    PyBytes_GET_SIZE(payload));
    return frame_make(st, &h, payload, (const uint8_t *)PyBytes_AS_STRING(payload),
                      PyBytes_GET_SIZE(payload), -1);
}

int fab_py_payload_limits(fab_state *st, PyObject *limits, fab_mp_limits *lim)
{
    return payload_limits(st, limits, lim);
}
