/*
 * EvalReply: the answer to an evaluation, an immutable record (value,
 * diagnostics, trace, key, source) that costs one allocation, so a cache
 * hit can be answered without running Python code. fabric.EvalReply
 * subclasses it with __slots__ = () to add its reprs; _set_reply_class
 * names that subclass, and every reply the glue builds (a hit, a reply
 * read from a cassette record) is of it.
 */
#include "glue.h"

#include <stddef.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *value;
    PyObject *diagnostics; /* tuple */
    PyObject *trace;
    PyObject *key;
    PyObject *source; /* str */
} ReplyObject;

/* A new reply of type tp (EvalReply or a subclass); borrows every argument. */
static PyObject *reply_make(PyTypeObject *tp, PyObject *value, PyObject *diags, PyObject *trace,
                            PyObject *key, PyObject *source)
{
    ReplyObject *r = (ReplyObject *)tp->tp_alloc(tp, 0);
    if (r == NULL)
        return NULL;
    r->value = Py_NewRef(value);
    r->diagnostics = Py_NewRef(diags);
    r->trace = Py_NewRef(trace);
    r->key = Py_NewRef(key);
    r->source = Py_NewRef(source);
    return (PyObject *)r;
}

/* diagnostics as a tuple (a list is copied, None is empty); new reference. */
static PyObject *as_diagnostics(fab_state *st, PyObject *d)
{
    if (d == NULL || d == Py_None)
        return Py_NewRef(st->empty_tuple);
    if (PyTuple_CheckExact(d))
        return Py_NewRef(d);
    if (PyList_CheckExact(d))
        return PyList_AsTuple(d);
    return PySequence_Tuple(d);
}

static PyObject *EvalReply_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"value", "diagnostics", "trace", "key", "source", NULL};
    PyObject *value, *diags = NULL, *trace = Py_None, *key = Py_None, *source = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOOU:EvalReply", kwlist, &value, &diags,
                                     &trace, &key, &source))
        return NULL;
    fab_state *st = fab_state_from_type(type);
    if (st == NULL)
        return NULL;
    PyObject *d = as_diagnostics(st, diags);
    if (d == NULL)
        return NULL;
    PyObject *r = reply_make(type, value, d, trace, key, source ? source : st->str_computed);
    Py_DECREF(d);
    return r;
}

static int EvalReply_traverse(ReplyObject *r, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(r));
    Py_VISIT(r->value);
    Py_VISIT(r->diagnostics);
    Py_VISIT(r->trace);
    Py_VISIT(r->key);
    Py_VISIT(r->source);
    return 0;
}

static int EvalReply_clear(ReplyObject *r)
{
    Py_CLEAR(r->value);
    Py_CLEAR(r->diagnostics);
    Py_CLEAR(r->trace);
    Py_CLEAR(r->key);
    Py_CLEAR(r->source);
    return 0;
}

static void EvalReply_dealloc(ReplyObject *r)
{
    PyTypeObject *tp = Py_TYPE(r);
    PyObject_GC_UnTrack(r);
    EvalReply_clear(r);
    tp->tp_free((PyObject *)r);
    Py_DECREF(tp);
}

static PyObject *EvalReply_richcompare(PyObject *a, PyObject *b, int op)
{
    fab_state *st = fab_state_from_type(Py_TYPE(a));
    if (st == NULL)
        return NULL;
    if ((op != Py_EQ && op != Py_NE) || !PyObject_TypeCheck(b, st->EvalReply_Type))
        Py_RETURN_NOTIMPLEMENTED;
    /* The source says where a reply came from on one call; it is not part
     * of the answer. */
    ReplyObject *x = (ReplyObject *)a, *y = (ReplyObject *)b;
    PyObject *const xs[] = {x->key, x->value, x->diagnostics, x->trace};
    PyObject *const ys[] = {y->key, y->value, y->diagnostics, y->trace};
    int eq = 1;
    for (int i = 0; i < 4 && eq; i++) {
        eq = PyObject_RichCompareBool(xs[i], ys[i], Py_EQ);
        if (eq < 0)
            return NULL;
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static PyObject *EvalReply_with_source(PyObject *self, PyObject *source)
{
    if (!PyUnicode_Check(source)) {
        PyErr_Format(PyExc_TypeError, "source must be a str, not %.100s",
                     Py_TYPE(source)->tp_name);
        return NULL;
    }
    ReplyObject *r = (ReplyObject *)self;
    return reply_make(Py_TYPE(self), r->value, r->diagnostics, r->trace, r->key, source);
}

static PyObject *EvalReply_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ReplyObject *r = (ReplyObject *)self;
    return Py_BuildValue("O(OOOOO)", (PyObject *)Py_TYPE(self), r->value, r->diagnostics,
                         r->trace, r->key, r->source);
}

static PyMethodDef EvalReply_methods[] = {
    {"_with_source", EvalReply_with_source, METH_O,
     "_with_source($self, source, /)\n--\n\nThe same reply with another source."},
    {"__reduce__", EvalReply_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef EvalReply_members[] = {
    {"value", T_OBJECT, offsetof(ReplyObject, value), READONLY,
     "What the op returned (a stream op's items as a list)."},
    {"diagnostics", T_OBJECT, offsetof(ReplyObject, diagnostics), READONLY,
     "Diagnostics attached by the op (a tuple of dicts with kind and message)."},
    {"trace", T_OBJECT, offsetof(ReplyObject, trace), READONLY,
     "The trace steps when the request asked for one, else None."},
    {"key", T_OBJECT, offsetof(ReplyObject, key), READONLY, "The request's ContentKey."},
    {"source", T_OBJECT, offsetof(ReplyObject, source), READONLY,
     "Where the reply came from on this call: local, peer:<node>, home, ..."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot EvalReply_slots[] = {
    {Py_tp_doc, "EvalReply(value, diagnostics=(), trace=None, key=None, source='computed')\n--\n\n"
                "The answer to an evaluation (immutable). Equal replies have equal value,\n"
                "diagnostics, trace and key; the source is not compared."},
    {Py_tp_new, EvalReply_new},
    {Py_tp_dealloc, EvalReply_dealloc},
    {Py_tp_traverse, EvalReply_traverse},
    {Py_tp_clear, EvalReply_clear},
    {Py_tp_richcompare, EvalReply_richcompare},
    {Py_tp_hash, PyObject_HashNotImplemented},
    {Py_tp_methods, EvalReply_methods},
    {Py_tp_members, EvalReply_members},
    {0, NULL},
};

static PyType_Spec EvalReply_spec = {
    .name = "fabric._core.EvalReply",
    .basicsize = sizeof(ReplyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = EvalReply_slots,
};

/* ======================================================================== */
/* Streams: the C base of EvalStream, and the replay of recorded frames      */
/* ======================================================================== */

/*
 * _Replay(frames, key): the events of a recorded stream, from the frames a
 * cassette's get_stream gives ([tag, payload] each); FabricError for a
 * frame that is not one, naming its index. The one check of recorded
 * frames (fabric.replies' _replay_events is this).
 */
typedef struct {
    PyObject_HEAD
    PyObject *frames; /* iterator */
    PyObject *key;
    Py_ssize_t index;
} ReplayObject;

/* The next recorded frame of r, checked: 1 with *frame (a new reference to
 * the [tag, payload] list or tuple), *tag (0 or 1) and *payload (borrowed
 * from *frame); 0 at the end (no exception unless the frames' iterator
 * failed); -1 with FabricError for a frame that is not [tag, payload]. */
static int replay_pull(ReplayObject *r, PyObject **frame, long *tag, PyObject **payload)
{
    if (r->frames == NULL)
        return 0;
    PyObject *f = Py_TYPE(r->frames)->tp_iternext(r->frames);
    if (f == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *t = NULL, *p = NULL;
    if (PyList_Check(f) && PyList_GET_SIZE(f) == 2) {
        t = PyList_GET_ITEM(f, 0);
        p = PyList_GET_ITEM(f, 1);
    } else if (PyTuple_Check(f) && PyTuple_GET_SIZE(f) == 2) {
        t = PyTuple_GET_ITEM(f, 0);
        p = PyTuple_GET_ITEM(f, 1);
    }
    long v = t != NULL && PyLong_CheckExact(t) ? PyLong_AsLong(t) : -1;
    if (v != 0 && v != 1) {
        PyErr_Clear();
        Py_DECREF(f);
        fab_state *st = fab_state_from_type(Py_TYPE(r));
        if (st != NULL)
            PyErr_Format(st->exc[FAB_PYEXC_FabricError],
                         "recorded stream %S: frame %zd is not [tag, payload]", r->key, r->index);
        return -1;
    }
    r->index++;
    *frame = f;
    *tag = v;
    *payload = p;
    return 1;
}

static PyObject *Replay_next(ReplayObject *r);

/*
 * _EventStream(events, key, source="computed") is the base of
 * fabric.EvalStream: next() pulls (tag, payload) events from `events` and
 * gives the items (tag 0), appending diagnostics (tag 1) to .diagnostics on
 * the way, with no Python frame per item. Everything else of EvalStream
 * (close, iter_events, the reprs) is Python.
 */
typedef struct {
    PyObject_HEAD
    PyObject *events;      /* iterator of (tag, payload) */
    PyObject *key;
    PyObject *source;
    PyObject *diagnostics; /* list */
    Py_ssize_t items_seen;
    char done;
    PyObject *dict;
    PyObject *weakrefs;
} EventStreamObject;

static int EventStream_init(EventStreamObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"events", "key", "source", NULL};
    PyObject *events, *key, *source = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|U:EvalStream", kwlist, &events, &key,
                                     &source))
        return -1;
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    if (st == NULL)
        return -1;
    PyObject *it = PyObject_GetIter(events), *diags = PyList_New(0);
    if (it == NULL || diags == NULL) {
        Py_XDECREF(it);
        Py_XDECREF(diags);
        return -1;
    }
    Py_XSETREF(self->events, it);
    Py_XSETREF(self->key, Py_NewRef(key));
    Py_XSETREF(self->source, Py_NewRef(source ? source : st->str_computed));
    Py_XSETREF(self->diagnostics, diags);
    self->items_seen = 0;
    self->done = 0;
    return 0;
}

static int EventStream_traverse(EventStreamObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->events);
    Py_VISIT(self->key);
    Py_VISIT(self->source);
    Py_VISIT(self->diagnostics);
    Py_VISIT(self->dict);
    return 0;
}

static int EventStream_clear(EventStreamObject *self)
{
    Py_CLEAR(self->events);
    Py_CLEAR(self->key);
    Py_CLEAR(self->source);
    Py_CLEAR(self->diagnostics);
    Py_CLEAR(self->dict);
    return 0;
}

static void EventStream_dealloc(EventStreamObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    EventStream_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *EventStream_next(EventStreamObject *self)
{
    if (self->events == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "EvalStream.__init__ was not called");
        return NULL;
    }
    iternextfunc next = Py_TYPE(self->events)->tp_iternext;
    if (next == (iternextfunc)Replay_next) {
        /* A recorded stream: the frames are taken apart here, with no
         * (tag, payload) tuple made per item. */
        ReplayObject *r = (ReplayObject *)self->events;
        for (;;) {
            PyObject *frame, *payload;
            long tag;
            int rc = replay_pull(r, &frame, &tag, &payload);
            if (rc <= 0) {
                if (rc == 0 && (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_StopIteration))) {
                    PyErr_Clear();
                    self->done = 1;
                }
                return NULL;
            }
            if (tag == 0) {
                Py_INCREF(payload);
                Py_DECREF(frame);
                self->items_seen++;
                return payload;
            }
            rc = PyList_Append(self->diagnostics, payload);
            Py_DECREF(frame);
            if (rc < 0)
                return NULL;
        }
    }
    for (;;) {
        PyObject *ev = next(self->events);
        if (ev == NULL) {
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_StopIteration)) {
                PyErr_Clear();
                self->done = 1;
            }
            return NULL;
        }
        PyObject *tag, *payload;
        if (PyTuple_CheckExact(ev) && PyTuple_GET_SIZE(ev) == 2) {
            tag = PyTuple_GET_ITEM(ev, 0);
            payload = PyTuple_GET_ITEM(ev, 1);
        } else if (PyList_CheckExact(ev) && PyList_GET_SIZE(ev) == 2) {
            tag = PyList_GET_ITEM(ev, 0);
            payload = PyList_GET_ITEM(ev, 1);
        } else {
            Py_DECREF(ev);
            PyErr_SetString(PyExc_TypeError, "a stream event is a (tag, payload) pair");
            return NULL;
        }
        long t = PyLong_Check(tag) ? PyLong_AsLong(tag) : -1;
        if (t == 0) {
            Py_INCREF(payload);
            Py_DECREF(ev);
            self->items_seen++;
            return payload;
        }
        int rc = PyList_Append(self->diagnostics, payload);
        Py_DECREF(ev);
        if (rc < 0)
            return NULL;
    }
}

static PyMemberDef EventStream_members[] = {
    {"_events", T_OBJECT, offsetof(EventStreamObject, events), READONLY,
     "The (tag, payload) events still to come."},
    {"key", T_OBJECT, offsetof(EventStreamObject, key), 0, "The request's ContentKey."},
    {"source", T_OBJECT, offsetof(EventStreamObject, source), 0,
     "Where the stream comes from (local, peer:<node>, home, computed, ...)."},
    {"diagnostics", T_OBJECT, offsetof(EventStreamObject, diagnostics), READONLY,
     "Diagnostics seen so far, in order (a list)."},
    {"items_seen", T_PYSSIZET, offsetof(EventStreamObject, items_seen), 0,
     "Items given so far."},
    {"done", T_BOOL, offsetof(EventStreamObject, done), 0, "Whether the stream ended."},
    {"__dictoffset__", T_PYSSIZET, offsetof(EventStreamObject, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(EventStreamObject, weakrefs), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot EventStream_slots[] = {
    {Py_tp_doc, "_EventStream(events, key, source='computed')\n--\n\n"
                "The C base of fabric.EvalStream (use that class)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, EventStream_init},
    {Py_tp_dealloc, EventStream_dealloc},
    {Py_tp_traverse, EventStream_traverse},
    {Py_tp_clear, EventStream_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, EventStream_next},
    {Py_tp_members, EventStream_members},
    {0, NULL},
};

static PyType_Spec EventStream_spec = {
    .name = "fabric._core._EventStream",
    .basicsize = sizeof(EventStreamObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = EventStream_slots,
};


static PyObject *Replay_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"frames", "key", NULL};
    PyObject *frames, *key;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:_Replay", kwlist, &frames, &key))
        return NULL;
    PyObject *it = PyObject_GetIter(frames);
    if (it == NULL)
        return NULL;
    ReplayObject *r = (ReplayObject *)type->tp_alloc(type, 0);
    if (r == NULL) {
        Py_DECREF(it);
        return NULL;
    }
    r->frames = it;
    r->key = Py_NewRef(key);
    return (PyObject *)r;
}

static int Replay_traverse(ReplayObject *r, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(r));
    Py_VISIT(r->frames);
    Py_VISIT(r->key);
    return 0;
}

static int Replay_clear(ReplayObject *r)
{
    Py_CLEAR(r->frames);
    Py_CLEAR(r->key);
    return 0;
}

static void Replay_dealloc(ReplayObject *r)
{
    PyTypeObject *tp = Py_TYPE(r);
    PyObject_GC_UnTrack(r);
    Replay_clear(r);
    tp->tp_free((PyObject *)r);
    Py_DECREF(tp);
}

static PyObject *Replay_next(ReplayObject *r)
{
    PyObject *frame, *payload;
    long tag;
    if (replay_pull(r, &frame, &tag, &payload) <= 0)
        return NULL;
    PyObject *ev = PyTuple_Pack(2, PyTuple_Check(frame) ? PyTuple_GET_ITEM(frame, 0)
                                                        : PyList_GET_ITEM(frame, 0), payload);
    Py_DECREF(frame);
    return ev;
}

static PyObject *Replay_close(ReplayObject *r, PyObject *Py_UNUSED(ignored))
{
    /* Let go of the frames (and the cassette's mapping they hold). */
    Py_CLEAR(r->frames);
    Py_RETURN_NONE;
}

static PyMethodDef Replay_methods[] = {
    {"close", (PyCFunction)Replay_close, METH_NOARGS,
     "close($self, /)\n--\n\nStop: no more events."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Replay_slots[] = {
    {Py_tp_doc, "_Replay(frames, key)\n--\n\nThe (tag, payload) events of recorded frames."},
    {Py_tp_new, Replay_new},
    {Py_tp_dealloc, Replay_dealloc},
    {Py_tp_traverse, Replay_traverse},
    {Py_tp_clear, Replay_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, Replay_next},
    {Py_tp_methods, Replay_methods},
    {0, NULL},
};

static PyType_Spec Replay_spec = {
    .name = "fabric._core._Replay",
    .basicsize = sizeof(ReplayObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Replay_slots,
};

/* ======================================================================== */
/* Reply records                                                             */
/* ======================================================================== */

PyObject *fab_py_reply_from_record(fab_state *st, PyObject *record, PyObject *key,
                                   PyObject *source)
{
    /* A reply record is [value, diagnostics, trace] (fabric.replies' reply_record). */
    PyObject *value, *diags, *trace;
    if (PyList_CheckExact(record) && PyList_GET_SIZE(record) == 3) {
        value = PyList_GET_ITEM(record, 0);
        diags = PyList_GET_ITEM(record, 1);
        trace = PyList_GET_ITEM(record, 2);
    } else if (PyTuple_CheckExact(record) && PyTuple_GET_SIZE(record) == 3) {
        value = PyTuple_GET_ITEM(record, 0);
        diags = PyTuple_GET_ITEM(record, 1);
        trace = PyTuple_GET_ITEM(record, 2);
    } else {
        PyErr_Format(st->exc[FAB_PYEXC_FabricError],
                     "cassette record for %S is not a reply record [value, diagnostics, trace]",
                     key);
        return NULL;
    }
    PyObject *d = as_diagnostics(st, diags);
    if (d == NULL)
        return NULL;
    PyObject *reply = reply_make((PyTypeObject *)st->reply_class, value, d, trace, key, source);
    Py_DECREF(d);
    return reply;
}

PyObject *fab_py_reply_make(fab_state *st, PyObject *value, PyObject *diags, PyObject *trace,
                            PyObject *key, PyObject *source)
{
    return reply_make((PyTypeObject *)st->reply_class, value, diags, trace, key, source);
}

int fab_py_reply_parts(fab_state *st, PyObject *reply, PyObject **value, PyObject **diags,
                       PyObject **trace)
{
    if (!PyObject_TypeCheck(reply, st->EvalReply_Type)) {
        PyErr_Format(PyExc_TypeError, "expected an EvalReply, not %.100s",
                     Py_TYPE(reply)->tp_name);
        return -1;
    }
    ReplyObject *r = (ReplyObject *)reply;
    *value = r->value;
    *diags = r->diagnostics;
    *trace = r->trace;
    return 0;
}

PyObject *fab_py_reply_record(fab_state *st, PyObject *reply)
{
    PyObject *value, *diags, *trace;
    if (fab_py_reply_parts(st, reply, &value, &diags, &trace) < 0)
        return NULL;
    PyObject *dl = PySequence_List(diags);
    PyObject *rec = dl ? PyList_New(3) : NULL;
    if (rec == NULL) {
        Py_XDECREF(dl);
        return NULL;
    }
    PyList_SET_ITEM(rec, 0, Py_NewRef(value));
    PyList_SET_ITEM(rec, 1, dl);
    PyList_SET_ITEM(rec, 2, Py_NewRef(trace));
    return rec;
}

PyObject *fab_py_reply_value(fab_state *st, PyObject *reply)
{
    PyObject *value, *diags, *trace;
    if (fab_py_reply_parts(st, reply, &value, &diags, &trace) < 0)
        return NULL;
    return Py_NewRef(value);
}

static const char *const from_record_names[] = {"record", "key", "source"};
static const fab_py_params from_record_params = {"_reply_from_record", from_record_names, 3,
                                                  3, 3, 3};

static PyObject *reply_from_record(PyObject *module, PyObject *const *args, Py_ssize_t nargsf,
                                   PyObject *kwnames)
{
    PyObject *a[3] = {NULL, NULL, NULL};
    if (fab_py_parse(&from_record_params, args, nargsf, kwnames, a) < 0)
        return NULL;
    if (!PyUnicode_Check(a[2])) {
        PyErr_Format(PyExc_TypeError, "_reply_from_record(): source must be a str, not %.100s",
                     Py_TYPE(a[2])->tp_name);
        return NULL;
    }
    return fab_py_reply_from_record(fab_get_state(module), a[0], a[1], a[2]);
}

/* _reply(value, diagnostics, trace, key, source): a reply of the reply
 * class, without EvalReply()'s keyword parsing (the fabrics' hot paths). */
static const char *const reply_names[] = {"value", "diagnostics", "trace", "key", "source"};
static const fab_py_params reply_params = {"_reply", reply_names, 5, 5, 5, 5};

static PyObject *reply_new_fast(PyObject *module, PyObject *const *args, Py_ssize_t nargsf,
                                PyObject *kwnames)
{
    PyObject *a[5] = {NULL, NULL, NULL, NULL, NULL};
    if (fab_py_parse(&reply_params, args, nargsf, kwnames, a) < 0)
        return NULL;
    if (!PyUnicode_Check(a[4])) {
        PyErr_Format(PyExc_TypeError, "_reply(): source must be a str, not %.100s",
                     Py_TYPE(a[4])->tp_name);
        return NULL;
    }
    fab_state *st = fab_get_state(module);
    PyObject *d = as_diagnostics(st, a[1]);
    if (d == NULL)
        return NULL;
    PyObject *r = reply_make((PyTypeObject *)st->reply_class, a[0], d, a[2], a[3], a[4]);
    Py_DECREF(d);
    return r;
}

static PyObject *set_reply_class(PyObject *module, PyObject *cls)
{
    fab_state *st = fab_get_state(module);
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, st->EvalReply_Type)) {
        PyErr_SetString(PyExc_TypeError, "the reply class must subclass _core.EvalReply");
        return NULL;
    }
    if (((PyTypeObject *)cls)->tp_basicsize != st->EvalReply_Type->tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "the reply class must declare __slots__ = ()");
        return NULL;
    }
    Py_XSETREF(st->reply_class, Py_NewRef(cls));
    Py_RETURN_NONE;
}

static PyMethodDef reply_functions[] = {
    {"_set_reply_class", set_reply_class, METH_O,
     "_set_reply_class(cls, /)\n--\n\nMake the replies the glue builds instances of cls (an\n"
     "EvalReply subclass with __slots__ = ())."},
    {"_reply", (PyCFunction)(void (*)(void))reply_new_fast, METH_FASTCALL | METH_KEYWORDS,
     "_reply(value, diagnostics, trace, key, source, /)\n--\n\nEvalReply(value, diagnostics, "
     "trace, key, source), without keyword\nparsing (diagnostics: any iterable, None for "
     "none)."},
    {"_reply_from_record", (PyCFunction)(void (*)(void))reply_from_record,
     METH_FASTCALL | METH_KEYWORDS,
     "_reply_from_record(record, key, source, /)\n--\n\nThe reply a cassette record "
     "[value, diagnostics, trace] holds;\nFabricError if it is not such a record."},
    {NULL, NULL, 0, NULL},
};

int fab_py_reply_exec(PyObject *module, fab_state *st)
{
    if (PyModule_AddFunctions(module, reply_functions) < 0)
        return -1;
    if ((st->EvalReply_Type = fab_py_add_type(module, &EvalReply_spec, NULL)) == NULL)
        return -1;
    st->reply_class = Py_NewRef((PyObject *)st->EvalReply_Type);
    if ((st->EventStream_Type = fab_py_add_type(module, &EventStream_spec, NULL)) == NULL ||
        (st->Replay_Type = fab_py_add_type(module, &Replay_spec, NULL)) == NULL)
        return -1;
    if ((st->str_computed = PyUnicode_InternFromString("computed")) == NULL)
        return -1;
    return 0;
}

int fab_py_reply_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->EvalReply_Type);
    Py_VISIT(st->reply_class);
    Py_VISIT(st->EventStream_Type);
    Py_VISIT(st->Replay_Type);
    return 0;
}

void fab_py_reply_clear(fab_state *st)
{
    Py_CLEAR(st->EvalReply_Type);
    Py_CLEAR(st->reply_class);
    Py_CLEAR(st->EventStream_Type);
    Py_CLEAR(st->Replay_Type);
    Py_CLEAR(st->str_computed);
}
