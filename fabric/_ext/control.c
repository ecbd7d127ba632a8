/*
 * StreamControl: the control plane of a remote stream, over the C control
 * codec (csrc/control.c, docs/spec/frames.md §6).
 *
 * The rules (operations, their fields, the fields' types and ranges, the
 * capability each operation needs) live in the core alone. A control made
 * locally is checked the way a received one is: its body {"op": op,
 * **fields} is encoded canonically and read back through
 * fab_control_decode(); a received one is read by fab_control_decode()
 * straight from the frame's payload. This file converts types and maps the
 * core's refusals to exceptions.
 */
#include "glue.h"

#include "fabric/control.h"
#include "fabric/crc32c.h"
#include "fabric/frame.h"
#include "fabric/mpdec.h"

typedef struct {
    PyObject_HEAD
    int op;             /* fab_control_op */
    uint64_t stream_id;
    PyObject *fields;   /* dict: field name -> value */
    PyObject *payload;  /* bytes: the canonical payload, or NULL until first needed */
    Py_hash_t hash;     /* -1 until computed */
} ControlObject;

/* ---- making ------------------------------------------------------------------ */

static int get_stream_id(PyObject *o, uint64_t *out)
{
    if (PyLong_Check(o) && !PyBool_Check(o)) {
        unsigned long long v = PyLong_AsUnsignedLongLong(o);
        if (!(v == (unsigned long long)-1 && PyErr_Occurred())) {
            *out = v;
            return 0;
        }
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
    }
    PyErr_Format(PyExc_ValueError, "stream_id must be an int in [0, 2**64), got %R", o);
    return -1;
}

/* The canonical payload of {"op": op, **fields}: a new bytes object, or NULL. */
static PyObject *encode_body(fab_state *st, PyObject *op, PyObject *fields)
{
    PyObject *body = PyDict_Copy(fields);
    if (body == NULL)
        return NULL;
    if (PyDict_SetItemString(body, "op", op) < 0) {
        Py_DECREF(body);
        return NULL;
    }
    fab_buf b;
    fab_buf_init(&b);
    fab_enc enc;
    fab_enc_init(&enc, fab_buf_sink, &b);
    int rc = fab_py_encode_value(st, &enc, body, "control");
    Py_DECREF(body);
    PyObject *out = rc < 0 ? NULL : PyBytes_FromStringAndSize((const char *)b.data, (Py_ssize_t)b.len);
    fab_buf_destroy(&b);
    return out;
}

static ControlObject *control_alloc(PyTypeObject *tp, int op, uint64_t sid, PyObject *fields,
                                    PyObject *payload)
{
    ControlObject *self = PyObject_GC_New(ControlObject, tp);
    if (self == NULL)
        return NULL;
    self->op = op;
    self->stream_id = sid;
    self->fields = Py_NewRef(fields);
    self->payload = Py_XNewRef(payload);
    self->hash = -1;
    PyObject_GC_Track(self);
    return self;
}

/* A control made locally: the fields are checked by the core's decoder on
 * their canonical encoding. fields: a dict (borrowed, copied). ValueError
 * for a control the rules refuse. */
static PyObject *control_make(fab_state *st, PyTypeObject *tp, PyObject *op, PyObject *sid_obj,
                              PyObject *fields)
{
    PyObject *payload = encode_body(st, op, fields);
    if (payload == NULL)
        return NULL;
    fab_control c;
    fab_control_error e;
    if (fab_control_decode(PyBytes_AS_STRING(payload), (size_t)PyBytes_GET_SIZE(payload), NULL,
                           &c, &e) != 0) {
        Py_DECREF(payload);
        PyErr_SetString(PyExc_ValueError, e.msg);
        return NULL;
    }
    uint64_t sid;
    PyObject *copy = NULL, *self = NULL;
    if (get_stream_id(sid_obj, &sid) == 0 && (copy = PyDict_Copy(fields)) != NULL)
        self = (PyObject *)control_alloc(tp, (int)c.op, sid, copy, payload);
    Py_XDECREF(copy);
    Py_DECREF(payload);
    return self;
}

static PyObject *ensure_payload(fab_state *st, ControlObject *self)
{
    if (self->payload == NULL) {
        PyObject *op = PyUnicode_FromString(fab_control_op_name(self->op));
        if (op == NULL)
            return NULL;
        self->payload = encode_body(st, op, self->fields);
        Py_DECREF(op);
    }
    return self->payload;
}

static PyObject *control_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    fab_state *st = fab_state_from_type(type);
    if (st == NULL)
        return NULL;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    PyObject *fields = kwargs ? PyDict_Copy(kwargs) : PyDict_New();
    if (fields == NULL)
        return NULL;
    PyObject *given[2] = {NULL, NULL};
    static const char *const names[2] = {"op", "stream_id"};
    PyObject *out = NULL;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "StreamControl() takes 2 positional arguments (%zd given)",
                     nargs);
        goto done;
    }
    for (int i = 0; i < 2; i++) {
        PyObject *kw = PyDict_GetItemString(fields, names[i]); /* borrowed */
        if (i < nargs && kw) {
            PyErr_Format(PyExc_TypeError, "StreamControl() got multiple values for argument '%s'",
                         names[i]);
            goto done;
        }
        given[i] = i < nargs ? Py_NewRef(PyTuple_GET_ITEM(args, i)) : Py_XNewRef(kw);
        if (given[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "StreamControl() missing required argument '%s'",
                         names[i]);
            goto done;
        }
        if (kw && PyDict_DelItemString(fields, names[i]) < 0)
            goto done;
    }
    out = control_make(st, type, given[0], given[1], fields);
done:
    Py_XDECREF(given[0]);
    Py_XDECREF(given[1]);
    Py_DECREF(fields);
    return out;
}

static int control_traverse(ControlObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->fields);
    return 0;
}

static int control_clear(ControlObject *self)
{
    Py_CLEAR(self->fields);
    Py_CLEAR(self->payload);
    return 0;
}

static void control_dealloc(ControlObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    control_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

/* ---- constructors, one per operation --------------------------------------- */

/* cls(op, stream_id, **{name: value for the given optional fields}); with
 * last_one, the last field is 1 when not given (next(limit=1),
 * fault(count=1)). */
static PyObject *construct(PyObject *cls, const char *op, PyObject *sid, const char *const *names,
                           PyObject *const *values, int n, int last_one)
{
    fab_state *st = fab_state_from_type((PyTypeObject *)cls);
    if (st == NULL)
        return NULL;
    PyObject *fields = PyDict_New(), *opname = PyUnicode_FromString(op), *one = NULL;
    PyObject *out = NULL;
    if (fields == NULL || opname == NULL)
        goto done;
    for (int i = 0; i < n; i++) {
        PyObject *v = values[i];
        if (v == NULL && last_one && i == n - 1 && (v = one = PyLong_FromLong(1)) == NULL)
            goto done;
        if (v && PyDict_SetItemString(fields, names[i], v) < 0)
            goto done;
    }
    out = control_make(st, (PyTypeObject *)cls, opname, sid, fields);
done:
    Py_XDECREF(fields);
    Py_XDECREF(opname);
    Py_XDECREF(one);
    return out;
}

#define CONSTRUCTOR(fn, opname, nparams, nrequired, last_one, ...)                       \
    static PyObject *fn(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,           \
                        PyObject *kwnames)                                                \
    {                                                                                     \
        static const char *const names[] = {"stream_id", __VA_ARGS__};                    \
        static const fab_py_params p = {#fn + 5, names, nparams, 0, nparams, nrequired};  \
        PyObject *a[nparams + 1] = {NULL};                                                \
        if (fab_py_parse(&p, args, nargs, kwnames, a) < 0)                                \
            return NULL;                                                                  \
        return construct(cls, opname, a[0], names + 1, a + 1, nparams - 1, last_one);     \
    }

CONSTRUCTOR(ctor_open, "open", 2, 1, 0, "metadata")
CONSTRUCTOR(ctor_next, "next", 2, 1, 1, "limit")
CONSTRUCTOR(ctor_push, "push", 2, 2, 0, "item")
CONSTRUCTOR(ctor_close, "close", 1, 1, 0, NULL)
CONSTRUCTOR(ctor_cancel, "cancel", 2, 1, 0, "reason")
CONSTRUCTOR(ctor_stats, "stats", 1, 1, 0, NULL)
CONSTRUCTOR(ctor_metadata, "metadata", 1, 1, 0, NULL)
CONSTRUCTOR(ctor_fault, "fault", 3, 2, 1, "kind", "count")

/* ---- capabilities ---------------------------------------------------------------- */

static int get_remote(PyObject *o, int *remote)
{
    if (o == NULL) {
        *remote = 1;
        return 0;
    }
    int v = PyObject_IsTrue(o);
    if (v < 0)
        return -1;
    *remote = v;
    return 0;
}

/* Checks grants (an iterable of str, not one str) for the op's capability
 * (and the remote one); raises CapabilityDenied naming the first lacking. */
static int check_grants(fab_state *st, ControlObject *self, PyObject *grants, int remote)
{
    if (PyUnicode_Check(grants)) {
        PyErr_SetString(PyExc_TypeError,
                        "grants must be an iterable of capability names, not one str");
        return -1;
    }
    PyObject *seq = PySequence_Fast(grants, "grants must be an iterable of capability names");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    const char **names = PyMem_Calloc((size_t)n + 1, sizeof(*names));
    size_t *lens = PyMem_Calloc((size_t)n + 1, sizeof(*lens));
    int rc = -1;
    if (names == NULL || lens == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *g = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(g))
            continue; /* never equal to a capability name */
        Py_ssize_t len;
        names[i] = PyUnicode_AsUTF8AndSize(g, &len);
        if (names[i] == NULL) {
            PyErr_Clear(); /* a lone surrogate: no capability name either */
            continue;
        }
        lens[i] = (size_t)len;
    }
    const char *missing = NULL;
    if (fab_control_check(self->op, names, lens, (size_t)n, remote, &missing) == 0) {
        rc = 0;
        goto done;
    }
    PyObject *exc = PyObject_CallFunction(
        st->exc[FAB_PYEXC_CapabilityDenied], "N",
        PyUnicode_FromFormat("StreamControl '%s' on stream %llu needs capability '%s', "
                             "which is not granted", fab_control_op_name(self->op),
                             (unsigned long long)self->stream_id, missing));
    if (exc == NULL)
        goto done;
    PyObject *cap = PyUnicode_FromString(missing);
    PyObject *op = PyUnicode_FromString(fab_control_op_name(self->op));
    if (cap && op && PyObject_SetAttrString(exc, "capability", cap) == 0 &&
        PyObject_SetAttrString(exc, "op", op) == 0)
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_XDECREF(cap);
    Py_XDECREF(op);
    Py_DECREF(exc);
done:
    PyMem_Free(names);
    PyMem_Free(lens);
    Py_DECREF(seq);
    return rc;
}

static PyObject *control_required(ControlObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"remote"};
    static const fab_py_params p = {"required_capabilities", names, 1, 0, 0, 0};
    PyObject *a[1] = {NULL};
    int remote;
    if (fab_py_parse(&p, args, nargs, kwnames, a) < 0 || get_remote(a[0], &remote) < 0)
        return NULL;
    const char *cap = fab_control_capability(self->op);
    return remote ? Py_BuildValue("(ss)", cap, FAB_CTL_REMOTE_CAPABILITY)
                  : Py_BuildValue("(s)", cap);
}

static PyObject *control_check(ControlObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    static const char *const names[] = {"grants", "remote"};
    static const fab_py_params p = {"check", names, 2, 0, 1, 1};
    PyObject *a[2] = {NULL, NULL};
    int remote;
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    if (st == NULL || fab_py_parse(&p, args, nargs, kwnames, a) < 0 ||
        get_remote(a[1], &remote) < 0 || check_grants(st, self, a[0], remote) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- frames ---------------------------------------------------------------------- */

static PyObject *control_to_payload(ControlObject *self, PyObject *Py_UNUSED(ignored))
{
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    PyObject *p = st ? ensure_payload(st, self) : NULL;
    return Py_XNewRef(p);
}

static PyObject *control_to_frame(ControlObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"grants", "seq"};
    static const fab_py_params p = {"to_frame", names, 2, 0, 1, 1};
    PyObject *a[2] = {NULL, NULL};
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    if (st == NULL || fab_py_parse(&p, args, nargs, kwnames, a) < 0 ||
        check_grants(st, self, a[0], 1) < 0)
        return NULL;
    PyObject *payload = ensure_payload(st, self);
    if (payload == NULL)
        return NULL;
    return fab_py_frame_new(st, FAB_FRAME_CONTROL, self->stream_id, a[1], payload);
}

/* A FrameError about a received control, at the payload's offset. */
static PyObject *control_error(fab_state *st, const fab_py_frame_info *f, const char *msg,
                               size_t at)
{
    uint64_t base = f->offset < 0 ? 0 : (uint64_t)f->offset + FAB_FRAME_HEADER_LEN;
    char text[320];
    if (at == (size_t)-1)
        snprintf(text, sizeof(text), "%s (payload at offset %llu)", msg,
                 (unsigned long long)base);
    else
        snprintf(text, sizeof(text), "%s (payload at offset %llu; byte %zu of the payload)", msg,
                 (unsigned long long)base, at);
    fab_py_err_info info = {.msg = text, .has_offset = 1, .offset = base,
                            .violation = "control", .has_frame_offset = f->offset >= 0,
                            .frame_offset = f->offset < 0 ? 0 : (uint64_t)f->offset,
                            .exc = FAB_PYEXC_FrameError};
    return fab_py_raise(st, FAB_EFORMAT, &info);
}

/* The Python value of a field of a decoded control; new reference. */
static PyObject *field_value(fab_state *st, const fab_control *c, unsigned bit,
                             const fab_py_frame_info *f, const fab_mp_limits *lim, size_t base)
{
    const uint8_t *p = NULL;
    size_t n = 0;
    switch (bit) {
    case FAB_CTL_F_LIMIT: return PyLong_FromUnsignedLongLong(c->limit);
    case FAB_CTL_F_COUNT: return PyLong_FromUnsignedLongLong(c->count);
    case FAB_CTL_F_KIND: return PyUnicode_FromString(fab_control_fault_name(c->fault));
    case FAB_CTL_F_REASON:
        return PyUnicode_DecodeUTF8((const char *)c->reason, (Py_ssize_t)c->reason_len, "strict");
    case FAB_CTL_F_ITEM: p = c->item; n = c->item_len; break;
    case FAB_CTL_F_METADATA: p = c->metadata; n = c->metadata_len; break;
    }
    size_t at = base + (size_t)(p - f->payload);
    return c->tagged ? fab_py_decode_tagged(st, p, n, lim, at) : fab_py_decode(st, p, n, lim, at);
}

static PyObject *control_from_frame(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    static const char *const names[] = {"frame", "grants", "limits"};
    static const fab_py_params p = {"from_frame", names, 3, 0, 2, 2};
    PyObject *a[3] = {NULL, NULL, NULL};
    fab_state *st = fab_state_from_type((PyTypeObject *)cls);
    if (st == NULL || fab_py_parse(&p, args, nargs, kwnames, a) < 0)
        return NULL;
    fab_py_frame_info f;
    if (fab_py_frame_view(st, a[0], &f) < 0)
        return PyErr_Format(PyExc_TypeError, "from_frame() takes a Frame, not %s",
                            Py_TYPE(a[0])->tp_name);
    if (f.kind != FAB_FRAME_CONTROL) {
        char msg[80];
        snprintf(msg, sizeof(msg), "a %s frame is not a control", fab_frame_kind_name(f.kind));
        return control_error(st, &f, msg, (size_t)-1);
    }
    fab_mp_limits lim;
    if (fab_py_payload_limits(st, a[2], &lim) < 0)
        return NULL;
    size_t base = f.offset < 0 ? 0 : (size_t)f.offset + FAB_FRAME_HEADER_LEN;
    fab_control c;
    fab_control_error e;
    int rc = fab_control_decode(f.payload, f.len, &lim, &c, &e);
    if (rc == FAB_ENOMEM)
        return PyErr_NoMemory();
    if (rc != 0 && e.msgpack)
        return fab_py_decode_error(st, base + e.offset, e.msg);
    if (rc != 0)
        return control_error(st, &f, e.msg, e.offset);
    PyObject *fields = PyDict_New();
    if (fields == NULL)
        return NULL;
    for (int k = 0; k < FAB_CTL_NFIELDS; k++) {
        unsigned bit = 1u << k;
        if (!(c.present & bit))
            continue;
        PyObject *v = field_value(st, &c, bit, &f, &lim, base);
        if (v == NULL || PyDict_SetItemString(fields, fab_control_field_name(bit), v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(fields);
            return NULL;
        }
        Py_DECREF(v);
    }
    ControlObject *self = control_alloc((PyTypeObject *)cls, (int)c.op, f.stream_id, fields, NULL);
    Py_DECREF(fields);
    if (self && check_grants(st, self, a[1], 1) < 0)
        Py_CLEAR(self);
    return (PyObject *)self;
}

/* StreamControl.read_open(payload, *, limits=None): the node protocol's
 * request open read in one pass (fab_control_open_read): a tuple of the
 * request's 13 fields, then key, want, scope, grants, timeout, via, each
 * decoded; None for any payload it does not read (the node's general path,
 * from_frame and check_open, reads those and says what is wrong). */
static PyObject *control_read_open(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    static const char *const names[] = {"payload", "limits"};
    static const fab_py_params p = {"read_open", names, 2, 1, 1, 1};
    PyObject *a[2] = {NULL, NULL};
    fab_state *st = fab_state_from_type((PyTypeObject *)cls);
    if (st == NULL || fab_py_parse(&p, args, nargs, kwnames, a) < 0)
        return NULL;
    if (!PyBytes_Check(a[0]))
        return PyErr_Format(PyExc_TypeError, "read_open() takes the payload as bytes, not %s",
                            Py_TYPE(a[0])->tp_name);
    fab_mp_limits lim;
    if (fab_py_payload_limits(st, a[1], &lim) < 0)
        return NULL;
    const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(a[0]);
    fab_control_open o;
    int rc = fab_control_open_read(data, (size_t)PyBytes_GET_SIZE(a[0]), &lim, &o, NULL);
    if (rc == FAB_ENOMEM)
        return PyErr_NoMemory();
    if (rc != 0)
        Py_RETURN_NONE;
    enum { NREQ = FAB_OPEN_REQUEST_NFIELDS, N = NREQ + FAB_OPEN_NFIELDS - 1 };
    PyObject *out = PyTuple_New(N);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < N; i++) {
        const fab_open_span *sp = i < NREQ ? &o.request[i] : &o.meta[i - NREQ + 1];
        PyObject *v = fab_py_decode(st, sp->p, sp->len, &lim, (size_t)(sp->p - data));
        if (v == NULL) {
            Py_DECREF(out);
            if (!PyErr_ExceptionMatches(PyExc_ValueError))
                return NULL;
            PyErr_Clear(); /* e.g. a map key the decoder refuses: the general path says */
            Py_RETURN_NONE;
        }
        PyTuple_SET_ITEM(out, i, v);
    }
    return out;
}

/* ---- the rest of the Python face ------------------------------------------------ */

static PyObject *control_get_op(ControlObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyUnicode_FromString(fab_control_op_name(self->op));
}

static PyObject *control_get_stream_id(ControlObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyLong_FromUnsignedLongLong(self->stream_id);
}

static PyObject *control_get_fields(ControlObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyDict_Copy(self->fields);
}

/* __getattr__: a field by name (ctl.limit, ctl.item...), else AttributeError. */
static PyObject *control_getattr(ControlObject *self, PyObject *name)
{
    PyObject *v = PyDict_GetItemWithError(self->fields, name);
    if (v != NULL)
        return Py_NewRef(v);
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_AttributeError, "'StreamControl' object has no attribute %R", name);
    return NULL;
}

/* Attributes first, then the fields (a C type's __getattr__ is not called
 * by itself: this slot is what calls it). */
static PyObject *control_getattro(ControlObject *self, PyObject *name)
{
    PyObject *v = PyObject_GenericGetAttr((PyObject *)self, name);
    if (v != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return v;
    PyErr_Clear();
    return control_getattr(self, name);
}

static int control_setattro(ControlObject *self, PyObject *name, PyObject *value)
{
    FAB_UNUSED(self);
    FAB_UNUSED(name);
    FAB_UNUSED(value);
    PyErr_SetString(PyExc_AttributeError, "StreamControl is immutable");
    return -1;
}

static PyObject *control_richcompare(PyObject *a, PyObject *b, int cmp)
{
    fab_state *st = fab_state_from_type(Py_TYPE(a));
    if (st == NULL)
        return NULL;
    if ((cmp != Py_EQ && cmp != Py_NE) || !PyObject_TypeCheck(b, st->StreamControl_Type))
        Py_RETURN_NOTIMPLEMENTED;
    ControlObject *x = (ControlObject *)a, *y = (ControlObject *)b;
    int eq = x->op == y->op && x->stream_id == y->stream_id;
    if (eq) {
        PyObject *px = ensure_payload(st, x), *py = ensure_payload(st, y);
        if (px == NULL || py == NULL)
            return NULL;
        eq = PyBytes_GET_SIZE(px) == PyBytes_GET_SIZE(py) &&
             memcmp(PyBytes_AS_STRING(px), PyBytes_AS_STRING(py), (size_t)PyBytes_GET_SIZE(px)) == 0;
    }
    return PyBool_FromLong(cmp == Py_EQ ? eq : !eq);
}

static Py_hash_t control_hash(ControlObject *self)
{
    if (self->hash != -1)
        return self->hash;
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    PyObject *payload = st ? ensure_payload(st, self) : NULL;
    if (payload == NULL)
        return -1;
    PyObject *t = Py_BuildValue("(iKO)", self->op, (unsigned long long)self->stream_id, payload);
    if (t == NULL)
        return -1;
    self->hash = PyObject_Hash(t);
    Py_DECREF(t);
    return self->hash;
}

static PyObject *control_repr(ControlObject *self)
{
    PyObject *items = PyDict_Items(self->fields);
    if (items == NULL || PyList_Sort(items) < 0) {
        Py_XDECREF(items);
        return NULL;
    }
    PyObject *parts = PyUnicode_FromFormat("StreamControl('%s', %llu",
                                           fab_control_op_name(self->op),
                                           (unsigned long long)self->stream_id);
    for (Py_ssize_t i = 0; parts && i < PyList_GET_SIZE(items); i++) {
        PyObject *kv = PyList_GET_ITEM(items, i);
        PyObject *s = PyUnicode_FromFormat(", %U=%R", PyTuple_GET_ITEM(kv, 0),
                                           PyTuple_GET_ITEM(kv, 1));
        PyObject *joined = s ? PyUnicode_Concat(parts, s) : NULL;
        Py_XDECREF(s);
        Py_SETREF(parts, joined);
    }
    Py_DECREF(items);
    if (parts == NULL)
        return NULL;
    PyObject *close = PyUnicode_FromString(")");
    PyObject *out = close ? PyUnicode_Concat(parts, close) : NULL;
    Py_XDECREF(close);
    Py_DECREF(parts);
    return out;
}

static PyObject *control_reduce(ControlObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *state = Py_BuildValue("(sKN)", fab_control_op_name(self->op),
                                    (unsigned long long)self->stream_id,
                                    PyDict_Copy(self->fields));
    return fab_py_reduce((PyObject *)self, state);
}

static PyObject *control_unpickle(PyObject *cls, PyObject *state)
{
    fab_state *st = fab_state_from_type((PyTypeObject *)cls);
    if (st == NULL)
        return NULL;
    if (!PyTuple_Check(state) || PyTuple_GET_SIZE(state) != 3 ||
        !PyDict_Check(PyTuple_GET_ITEM(state, 2)))
        return PyErr_Format(PyExc_TypeError, "bad StreamControl pickle state");
    return control_make(st, (PyTypeObject *)cls, PyTuple_GET_ITEM(state, 0),
                        PyTuple_GET_ITEM(state, 1), PyTuple_GET_ITEM(state, 2));
}

#define FASTKW (METH_FASTCALL | METH_KEYWORDS)
#define CTOR(name, fn, sig, doc)                                                           \
    {name, (PyCFunction)(void (*)(void))fn, FASTKW | METH_CLASS, name sig "\n--\n\n" doc}

static PyMethodDef control_methods[] = {
    CTOR("open", ctor_open, "($type, /, stream_id, metadata=None)",
         "Open the stream (``stream.open``), optionally with metadata (a dict)."),
    CTOR("next", ctor_next, "($type, /, stream_id, limit=1)",
         "Ask for up to ``limit`` more items (``stream.read``)."),
    CTOR("push", ctor_push, "($type, /, stream_id, item)",
         "Push one item into the stream (``stream.push``)."),
    CTOR("close", ctor_close, "($type, /, stream_id)",
         "Close the stream after what is in flight (``stream.cancel``)."),
    CTOR("cancel", ctor_cancel, "($type, /, stream_id, reason=None)",
         "Cancel the stream now (``stream.cancel``)."),
    CTOR("stats", ctor_stats, "($type, /, stream_id)",
         "Ask for the stream's statistics (``stream.stats``)."),
    CTOR("metadata", ctor_metadata, "($type, /, stream_id)",
         "Ask for the stream's metadata (``stream.stats``)."),
    CTOR("fault", ctor_fault, "($type, /, stream_id, kind, count=1)",
         "Inject ``count`` faults of ``kind`` (one of FAULT_KINDS; ``stream.stats``)."),
    CTOR("from_frame", control_from_frame, "($type, /, frame, grants, *, limits=None)",
         "Decode and check a received CONTROL frame.\n\n"
         "Raises FrameError for a frame that is not CONTROL, a payload that is\n"
         "not a map of known fields for a known operation; DecodeError for a\n"
         "payload that is not valid msgpack within limits; CapabilityDenied\n"
         "when grants lack the operation's capability or stream.remote.network."),
    CTOR("read_open", control_read_open, "($type, /, payload, *, limits=None)",
         "A node request's open read in one pass, or None.\n\n"
         "payload is a CONTROL frame's payload (bytes). For an ``open`` whose\n"
         "metadata has the node protocol's shape (docs/spec/protocol.md section\n"
         "2: exactly its seven fields, want, scope, timeout, grants and via of\n"
         "their types, a request map of exactly its thirteen fields with args an\n"
         "array and kwargs a map), a tuple of the request's fields (op, args,\n"
         "kwargs, version, caps, mode, answer_limit, stream_buffer, stream,\n"
         "trace, sharing, consistency, deadline) then key, want, scope, grants,\n"
         "timeout and via, decoded under limits as from_frame decodes them.\n"
         "None for any other payload, which from_frame and the node's checks\n"
         "read and refuse with the reason. No capability is checked here."),
    {"required_capabilities", (PyCFunction)(void (*)(void))control_required, FASTKW,
     "required_capabilities($self, /, *, remote=True)\n--\n\n"
     "The capabilities this operation needs (remote use adds\n"
     "``stream.remote.network``)."},
    {"check", (PyCFunction)(void (*)(void))control_check, FASTKW,
     "check($self, /, grants, *, remote=True)\n--\n\n"
     "Raise CapabilityDenied naming the first missing capability, if grants\n"
     "lack one."},
    {"to_payload", (PyCFunction)control_to_payload, METH_NOARGS,
     "to_payload($self, /)\n--\n\nThe canonical msgpack payload of the CONTROL frame."},
    {"to_frame", (PyCFunction)(void (*)(void))control_to_frame, FASTKW,
     "to_frame($self, /, grants, *, seq=0)\n--\n\n"
     "The CONTROL frame, after checking grants (the operation's capability\n"
     "and ``stream.remote.network``)."},
    {"__getattr__", (PyCFunction)control_getattr, METH_O,
     "__getattr__($self, name, /)\n--\n\nA field of the operation by name (ctl.limit)."},
    {"__reduce__", (PyCFunction)control_reduce, METH_NOARGS, NULL},
    {"_unpickle", (PyCFunction)control_unpickle, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef control_getset[] = {
    {"op", (getter)control_get_op, NULL, "The operation name.", NULL},
    {"stream_id", (getter)control_get_stream_id, NULL,
     "The stream the operation applies to.", NULL},
    {"fields", (getter)control_get_fields, NULL, "A copy of the operation's fields.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot control_slots[] = {
    {Py_tp_doc,
     "StreamControl(op, stream_id, **fields)\n--\n\n"
     "One control operation on a stream: ``op``, ``stream_id`` and ``fields``.\n\n"
     "Build with the class methods (``StreamControl.next(7, limit=16)``) or\n"
     "``StreamControl(op, stream_id, **fields)``; the fields are checked by the\n"
     "C core's control codec either way, and encoded when the control is made.\n"
     "Immutable and comparable; fields are also attributes (``ctl.limit``)."},
    {Py_tp_new, control_new},
    {Py_tp_dealloc, control_dealloc},
    {Py_tp_traverse, control_traverse},
    {Py_tp_clear, control_clear},
    {Py_tp_getattro, control_getattro},
    {Py_tp_setattro, control_setattro},
    {Py_tp_richcompare, control_richcompare},
    {Py_tp_hash, control_hash},
    {Py_tp_repr, control_repr},
    {Py_tp_methods, control_methods},
    {Py_tp_getset, control_getset},
    {0, NULL},
};

static PyType_Spec control_spec = {
    .name = "fabric.StreamControl",
    .basicsize = sizeof(ControlObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = control_slots,
};

/* ======================================================================== */
/* A node's index of the opens it parsed, by the CRC-32C of their payloads  */
/* ======================================================================== */

/* _open_crc(data): the CRC-32C of a bytes-like object, as an int: the key
 * under which a node files an open's payload for _known_open. */
static PyObject *open_crc(PyObject *module, PyObject *data)
{
    FAB_UNUSED(module);
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t crc = fab_crc32c(0, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(crc);
}

/* The entry of index (a dict) filed under crc (the CRC-32C of payload,
 * _open_crc) when it is a tuple whose first item is a bytes object equal to
 * payload: borrowed. NULL with no exception when there is none, NULL with
 * one on an error. */
PyObject *fab_py_open_entry(PyObject *index, uint32_t crc, const uint8_t *payload, size_t len)
{
    PyObject *key = PyLong_FromUnsignedLong(crc);
    if (key == NULL)
        return NULL;
    PyObject *e = PyDict_GetItemWithError(index, key); /* borrowed */
    Py_DECREF(key);
    if (e != NULL && PyTuple_Check(e) && PyTuple_GET_SIZE(e) > 0) {
        PyObject *b = PyTuple_GET_ITEM(e, 0);
        if (PyBytes_Check(b) && (size_t)PyBytes_GET_SIZE(b) == len &&
            (len == 0 || memcmp(PyBytes_AS_STRING(b), payload, len) == 0))
            return e;
    }
    return NULL;
}

/* _known_open(frame, index): the entry of index (a dict) filed under the
 * CRC-32C of frame's payload (_open_crc) when that entry is a tuple whose
 * first item is a bytes object equal to the payload, else None: a frame's
 * payload looked up among those seen before without copying it or hashing
 * it as bytes (a decoded frame's CRC is its header's, checked against the
 * payload: not computed again). TypeError when frame is not a Frame or
 * index not a dict. */
static PyObject *known_open(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    fab_state *st = fab_get_state(module);
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "_known_open() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    fab_py_frame_info fi;
    if (fab_py_frame_view(st, args[0], &fi) < 0) {
        PyErr_Format(PyExc_TypeError, "_known_open: frame must be a Frame, not %.100s",
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    if (!PyDict_Check(args[1])) {
        PyErr_Format(PyExc_TypeError, "_known_open: index must be a dict, not %.100s",
                     Py_TYPE(args[1])->tp_name);
        return NULL;
    }
    uint32_t crc = fi.crc_known ? fi.payload_crc : fab_crc32c(0, fi.payload, fi.len);
    PyObject *e = fab_py_open_entry(args[1], crc, fi.payload, fi.len);
    if (e == NULL)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    return Py_NewRef(e);
}

static PyMethodDef control_functions[] = {
    {"_open_crc", open_crc, METH_O,
     "_open_crc(data, /)\n--\n\nThe CRC-32C of data (bytes-like), the key _known_open looks up."},
    {"_known_open", (PyCFunction)(void (*)(void))known_open, METH_FASTCALL,
     "_known_open(frame, index, /)\n--\n\n"
     "index[_open_crc(frame's payload)] when it is a tuple whose first item\n"
     "is bytes equal to the payload, else None."},
    {NULL, NULL, 0, NULL},
};

int fab_py_control_exec(PyObject *module, fab_state *st)
{
    if (PyModule_AddFunctions(module, control_functions) < 0)
        return -1;
    st->StreamControl_Type = fab_py_add_type(module, &control_spec, NULL);
    if (st->StreamControl_Type == NULL)
        return -1;
    PyObject *caps = PyDict_New(), *faults = PyTuple_New(FAB_CTL_NFAULTS);
    int rc = -1;
    if (caps == NULL || faults == NULL)
        goto done;
    for (int op = 0; op < FAB_CTL_NOPS; op++) {
        PyObject *v = PyUnicode_FromString(fab_control_capability(op));
        if (v == NULL || PyDict_SetItemString(caps, fab_control_op_name(op), v) < 0) {
            Py_XDECREF(v);
            goto done;
        }
        Py_DECREF(v);
    }
    for (int i = 0; i < FAB_CTL_NFAULTS; i++) {
        PyObject *v = PyUnicode_FromString(fab_control_fault_name(i));
        if (v == NULL)
            goto done;
        PyTuple_SET_ITEM(faults, i, v);
    }
    if (PyModule_AddObjectRef(module, "CONTROL_CAPABILITIES", caps) == 0 &&
        PyModule_AddObjectRef(module, "FAULT_KINDS", faults) == 0 &&
        PyModule_AddStringConstant(module, "REMOTE_CAPABILITY", FAB_CTL_REMOTE_CAPABILITY) == 0)
        rc = 0;
done:
    Py_XDECREF(caps);
    Py_XDECREF(faults);
    return rc;
}

int fab_py_control_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->StreamControl_Type);
    return 0;
}

void fab_py_control_clear(fab_state *st)
{
    Py_CLEAR(st->StreamControl_Type);
}
