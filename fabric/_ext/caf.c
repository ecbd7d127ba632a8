/*
 * EvalReply and the hit path of ContentAddressedFabric.
 *
 * ContentAddressedFabricCore is the C base of fabric.ContentAddressedFabric:
 * it owns the node id, the cassette, the default grants and the counters,
 * and runs evaluate()'s hit path here: the caller's grants against the
 * request's capabilities, request -> digest -> cassette lookup -> EvalReply,
 * with no Python frame in between. A miss goes to the subclass's _resolve
 * (holders, peers, home: Python objects behind the fabric interface), a
 * denial to its _deny (which words and raises CapabilityDenied), a stream
 * request to its _evaluate_stream.
 *
 * EvalReply is a small immutable record (value, diagnostics, trace, key,
 * source) so a hit costs one allocation; fabric.EvalReply subclasses it
 * with __slots__ = () to add its reprs, and _set_reply_class tells this
 * file to build hits of that subclass.
 */
#include "glue.h"

#include <stddef.h>
#include <structmember.h>
#include <time.h>

/* ======================================================================== */
/* EvalReply                                                                 */
/* ======================================================================== */

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
/* ContentAddressedFabricCore                                                */
/* ======================================================================== */

#define CAF_COUNTERS(XX)                                                        \
    XX(local_hits) XX(peer_hits) XX(home_computes) XX(failures) XX(denied)      \
    XX(bytes_recorded)

enum {
#define XX(name) CAF_##name,
    CAF_COUNTERS(XX)
#undef XX
    CAF_NCOUNTERS
};

static const char *const counter_names[CAF_NCOUNTERS] = {
#define XX(name) #name,
    CAF_COUNTERS(XX)
#undef XX
};

typedef struct {
    PyObject_HEAD
    PyObject *node;     /* str */
    PyObject *cassette; /* anything with get(key) */
    PyObject *grants;   /* frozenset: the default grants of callers */
    PyObject *home;     /* any fabric, or NULL/None */
    PyObject *holders;  /* a HoldingIndex, or NULL/None */
    PyObject *peers;    /* dict: node id -> ContentPeer, in the order added */
    PyObject *peer_timeout; /* seconds (a number) or NULL/None */
    unsigned long long counts[CAF_NCOUNTERS]; /* changed under the GIL only */
} CAFObject;

/* grants given as any iterable of str, as a frozenset; new reference. */
static PyObject *as_grants(PyObject *g)
{
    if (PyFrozenSet_CheckExact(g))
        return Py_NewRef(g);
    if (PyUnicode_Check(g) || PyBytes_Check(g)) {
        PyErr_SetString(PyExc_TypeError, "grants must be an iterable of capability names, "
                                         "not a single string (wrap it in a tuple)");
        return NULL;
    }
    return PyFrozenSet_New(g);
}

static int CAF_init(CAFObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"node", "cassette", "grants", NULL};
    PyObject *node, *cassette, *grants = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UO|O:ContentAddressedFabricCore", kwlist,
                                     &node, &cassette, &grants))
        return -1;
    if (PyUnicode_GET_LENGTH(node) == 0) {
        PyErr_SetString(PyExc_TypeError, "node must be a non-empty str");
        return -1;
    }
    PyObject *g = grants ? as_grants(grants) : PyFrozenSet_New(NULL);
    if (g == NULL)
        return -1;
    Py_XSETREF(self->node, Py_NewRef(node));
    Py_XSETREF(self->cassette, Py_NewRef(cassette));
    Py_XSETREF(self->grants, g);
    if (self->peers == NULL && (self->peers = PyDict_New()) == NULL)
        return -1;
    return 0;
}

static int CAF_traverse(CAFObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->node);
    Py_VISIT(self->cassette);
    Py_VISIT(self->grants);
    Py_VISIT(self->home);
    Py_VISIT(self->holders);
    Py_VISIT(self->peers);
    Py_VISIT(self->peer_timeout);
    return 0;
}

static int CAF_clear(CAFObject *self)
{
    Py_CLEAR(self->node);
    Py_CLEAR(self->cassette);
    Py_CLEAR(self->grants);
    Py_CLEAR(self->home);
    Py_CLEAR(self->holders);
    Py_CLEAR(self->peers);
    Py_CLEAR(self->peer_timeout);
    return 0;
}

static void CAF_dealloc(CAFObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    CAF_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int ready(CAFObject *self)
{
    if (self->cassette == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "ContentAddressedFabricCore.__init__ was not called");
        return -1;
    }
    return 0;
}

/* The grants of a call: the default when none (or None) were given. New
 * reference or NULL. */
static PyObject *call_grants(CAFObject *self, PyObject *grants)
{
    if (grants == NULL || grants == Py_None)
        return Py_NewRef(self->grants);
    return as_grants(grants);
}

enum { LOOKUP_ERROR = -1, LOOKUP_MISS = 0, LOOKUP_HIT = 1, LOOKUP_STREAM = 2 };

/* The hit path. On LOOKUP_HIT *out is the reply, on LOOKUP_MISS it is the
 * request's key (both new references); LOOKUP_STREAM leaves it NULL. */
static int lookup(fab_state *st, CAFObject *self, PyObject *request, PyObject *g, PyObject **out)
{
    const uint8_t *digest;
    PyObject *caps;
    int stream;
    *out = NULL;
    if (fab_py_request_info(st, request, &digest, &caps, &stream) < 0)
        return LOOKUP_ERROR;
    /* A hit still checks the caller's grants: caching never weakens policy. */
    Py_ssize_t ncaps = PyTuple_GET_SIZE(caps);
    for (Py_ssize_t i = 0; i < ncaps; i++) {
        int has = PySet_Contains(g, PyTuple_GET_ITEM(caps, i));
        if (has < 0)
            return LOOKUP_ERROR;
        if (!has) {
            PyObject *argv[] = {(PyObject *)self, request, g};
            PyObject *r = PyObject_VectorcallMethod(st->str_deny, argv,
                                                    3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (r != NULL) {
                Py_DECREF(r);
                PyErr_Format(st->exc[FAB_PYEXC_CapabilityDenied],
                             "%R requires capabilities not granted to the caller", request);
            }
            return LOOKUP_ERROR;
        }
    }
    if (stream)
        return LOOKUP_STREAM;
    PyObject *key = fab_py_request_key(st, request);
    if (key == NULL)
        return LOOKUP_ERROR;
    PyObject *argv[] = {self->cassette, key};
    PyObject *rec = PyObject_VectorcallMethod(st->str_get, argv,
                                              2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (rec == NULL) {
        Py_DECREF(key);
        return LOOKUP_ERROR;
    }
    if (rec == Py_None) {
        Py_DECREF(rec);
        *out = key;
        return LOOKUP_MISS;
    }
    /* A reply record is [value, diagnostics, trace] (fabric.fabrics.reply_record). */
    PyObject *value, *diags, *trace;
    if (PyList_CheckExact(rec) && PyList_GET_SIZE(rec) == 3) {
        value = PyList_GET_ITEM(rec, 0);
        diags = PyList_GET_ITEM(rec, 1);
        trace = PyList_GET_ITEM(rec, 2);
    } else if (PyTuple_CheckExact(rec) && PyTuple_GET_SIZE(rec) == 3) {
        value = PyTuple_GET_ITEM(rec, 0);
        diags = PyTuple_GET_ITEM(rec, 1);
        trace = PyTuple_GET_ITEM(rec, 2);
    } else {
        PyErr_Format(st->exc[FAB_PYEXC_FabricError],
                     "cassette record for %S is not a reply record [value, diagnostics, trace]",
                     key);
        Py_DECREF(rec);
        Py_DECREF(key);
        return LOOKUP_ERROR;
    }
    PyObject *d = as_diagnostics(st, diags);
    PyObject *reply = NULL;
    if (d != NULL) {
        reply = reply_make((PyTypeObject *)st->reply_class, value, d, trace, key, st->str_local);
        Py_DECREF(d);
    }
    Py_DECREF(rec);
    Py_DECREF(key);
    if (reply == NULL)
        return LOOKUP_ERROR;
    self->counts[CAF_local_hits]++;
    *out = reply;
    return LOOKUP_HIT;
}

/* Parses (request, /, *, grants=None) from a vectorcall. 0 or -1. */
static int parse_request_grants(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames, PyObject **request, PyObject **grants)
{
    *grants = NULL;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes 1 positional argument (request), %zd given",
                     fname, nargs);
        return -1;
    }
    *request = args[0];
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            if (PyUnicode_CompareWithASCIIString(name, "grants") != 0) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R",
                             fname, name);
                return -1;
            }
            *grants = args[nargs + i];
        }
    }
    return 0;
}

/* ======================================================================== */
/* Resolution: the miss path                                                 */
/* ======================================================================== */

/*
 * A miss is resolved by asking, in order: the announced holders of the key
 * (healthy first, then the ones that failed), the other peers (healthy
 * first), then home; the first success is recorded in the local cassette
 * and announced in the holding index. Errors are never recorded. Each
 * source is any Python object with the fabric interface.
 *
 * A Resolution object is that order and its bookkeeping: which source is
 * next, the steps taken (for explain), each peer's answer (for
 * NoHolderError.attempts), the deadline, the counters and the trail. The
 * synchronous evaluate() drives it entirely here (resolve()); the Python
 * async twin and streams drive the same object through its methods
 * (next / failed / accept / started / abort), awaiting or streaming from
 * each source themselves, so the order and the recording stay in one place.
 */

enum {
    N_holders_of, N_failures, N_mark_failed, N_mark_ok, N_announce, N_evaluate, N_call_within,
    N_remember_trail, N_deadline, N_consistency, N_op, N_value, N_diagnostics, N_trace, N_key,
    N_with_source, N_add_note, N_attempts, N_node, N_serve, N_not_held, N_holder, N_peer,
    N_home, N_policy, N_local_only, N_no_home, N_hit, N_computed, N_streaming, N_dash,
    N_peer_hits, N_home_computes, N_why_no_home, N_why_request_no_home, N_peers_not_asked,
    N_KW_GRANTS, /* the kwnames tuple ("grants",) */
    N_COUNT
};

static const char *const name_text[N_KW_GRANTS] = {
    "holders_of", "failures", "mark_failed", "mark_ok", "announce", "evaluate", "_call_within",
    "_remember_trail", "deadline", "consistency", "op", "value", "diagnostics", "trace", "key",
    "_with_source", "add_note", "attempts", "node", "serve", "not held", "holder", "peer",
    "home", "policy", "local-only", "no-home", "hit", "computed", "streaming", "-",
    "peer_hits", "home_computes", "no home", "request is no-home", "peers and home not asked",
};

#define NAME(st, i) PyTuple_GET_ITEM((st)->caf_names, (i))

enum { RES_FRESH, RES_OPEN, RES_ASKING, RES_ACCEPTING, RES_DONE };

typedef struct {
    PyObject_HEAD
    CAFObject *fab;
    PyObject *request;
    PyObject *grants;   /* frozenset */
    PyObject *key;      /* ContentKey */
    PyObject *order;    /* list of (node, serve, announced), built on the first next() */
    PyObject *steps;    /* list of (stage, target, outcome) */
    PyObject *attempts; /* list of (node, exception) */
    Py_ssize_t idx;     /* the next entry of order to ask */
    Py_ssize_t cur;     /* the entry being asked, or -1 for home */
    double t_end;       /* CLOCK_MONOTONIC seconds, when has_deadline */
    int has_deadline;
    int no_home;
    int state;
} ResObject;

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The raised exception (normalized, traceback attached); new reference. */
static PyObject *fetch_exc(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL && v != NULL)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(tb);
    Py_XDECREF(t);
    return v;
#endif
}

/* Raises exc again (steals the reference). */
static void restore_exc(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

static int is_none(PyObject *o) { return o == NULL || o == Py_None; }

/* Appends (stage, target, outcome) to the steps; steals outcome (NULL: an
 * error is already set). */
static int append_step(ResObject *res, PyObject *stage, PyObject *target, PyObject *outcome)
{
    if (outcome == NULL)
        return -1;
    PyObject *t = PyTuple_Pack(3, stage, target, outcome);
    Py_DECREF(outcome);
    if (t == NULL)
        return -1;
    int rc = PyList_Append(res->steps, t);
    Py_DECREF(t);
    return rc;
}

/* What a source answered, for explain and NoHolderError: "not held", or
 * "<type name>: <message>". New reference. */
static PyObject *describe_answer(fab_state *st, PyObject *exc)
{
    if (PyObject_TypeCheck(exc, (PyTypeObject *)st->exc[FAB_PYEXC_ContentNotHeld]))
        return Py_NewRef(NAME(st, N_not_held));
    PyObject *name = PyType_GetName(Py_TYPE(exc));
    if (name == NULL)
        return NULL;
    PyObject *s = PyUnicode_FromFormat("%U: %S", name, exc);
    Py_DECREF(name);
    return s;
}

/* "; no peer was asked" or "; peers asked: a: not held; b: ...". */
static PyObject *attempts_text(fab_state *st, PyObject *attempts)
{
    Py_ssize_t n = PyList_GET_SIZE(attempts);
    if (n == 0)
        return PyUnicode_FromString("; no peer was asked");
    PyObject *parts = PyList_New(n);
    if (parts == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyList_GET_ITEM(attempts, i);
        PyObject *d = describe_answer(st, PyTuple_GET_ITEM(a, 1));
        PyObject *s = d ? PyUnicode_FromFormat("%U: %U", PyTuple_GET_ITEM(a, 0), d) : NULL;
        Py_XDECREF(d);
        if (s == NULL) {
            Py_DECREF(parts);
            return NULL;
        }
        PyList_SET_ITEM(parts, i, s);
    }
    PyObject *sep = PyUnicode_FromString("; ");
    PyObject *joined = sep ? PyUnicode_Join(sep, parts) : NULL;
    Py_XDECREF(sep);
    Py_DECREF(parts);
    if (joined == NULL)
        return NULL;
    PyObject *out = PyUnicode_FromFormat("; peers asked: %U", joined);
    Py_DECREF(joined);
    return out;
}

/* Raises exc_type(msg + attempts text) with .attempts = a copy of the
 * attempts list. Steals msg. Returns -1. */
static int raise_with_attempts(fab_state *st, ResObject *res, int exc_index, PyObject *msg)
{
    if (msg == NULL)
        return -1;
    PyObject *tail = attempts_text(st, res->attempts);
    PyObject *full = tail ? PyUnicode_Concat(msg, tail) : NULL;
    Py_XDECREF(tail);
    Py_DECREF(msg);
    if (full == NULL)
        return -1;
    PyObject *exc = PyObject_CallOneArg(st->exc[exc_index], full);
    Py_DECREF(full);
    if (exc == NULL)
        return -1;
    PyObject *copy = PyList_GetSlice(res->attempts, 0, PyList_GET_SIZE(res->attempts));
    if (copy == NULL || PyObject_SetAttr(exc, NAME(st, N_attempts), copy) < 0) {
        Py_XDECREF(copy);
        Py_DECREF(exc);
        return -1;
    }
    Py_DECREF(copy);
    restore_exc(exc);
    return -1;
}

static int remember_trail(fab_state *st, ResObject *res, PyObject *source)
{
    PyObject *argv[] = {(PyObject *)res->fab, res->key, source, res->steps};
    PyObject *r = PyObject_VectorcallMethod(NAME(st, N_remember_trail), argv,
                                            4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* The resolution failed: count it and remember its trail, keeping the
 * exception being raised (if any). Does nothing once finished. */
static void finalize_fail(fab_state *st, ResObject *res)
{
    if (res->state == RES_DONE)
        return;
    res->state = RES_DONE;
    res->fab->counts[CAF_failures]++;
    PyObject *exc = PyErr_Occurred() ? fetch_exc() : NULL;
    if (remember_trail(st, res, Py_None) < 0)
        PyErr_WriteUnraisable((PyObject *)res->fab);
    if (exc != NULL)
        restore_exc(exc);
}

static int finalize_ok(fab_state *st, ResObject *res, PyObject *source)
{
    res->state = RES_DONE;
    return remember_trail(st, res, source);
}

/* Calls holders.<method>(arg) (nothing when there is no index); new
 * reference, Py_None for no index, NULL on error. */
static PyObject *holders_call(fab_state *st, ResObject *res, int method, PyObject *arg)
{
    PyObject *h = res->fab->holders;
    if (is_none(h))
        Py_RETURN_NONE;
    PyObject *argv[] = {h, arg};
    return PyObject_VectorcallMethod(NAME(st, method), argv, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

static int holders_do(fab_state *st, ResObject *res, int method, PyObject *arg)
{
    PyObject *r = holders_call(st, res, method, arg);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* The order in which to ask the peers for key: announced holders (as the
 * index sorts them: healthy first), then the other peers in the order
 * given, the ones that failed before last. A list of (node, serve,
 * announced); new reference. */
static PyObject *peer_order(fab_state *st, CAFObject *fab, PyObject *key)
{
    PyObject *order = PyList_New(0), *seen = PySet_New(NULL), *items = NULL, *late = NULL;
    PyObject *announced = NULL;
    if (order == NULL || seen == NULL)
        goto fail;
    if (fab->peers == NULL || PyDict_GET_SIZE(fab->peers) == 0) {
        Py_DECREF(seen);
        return order;
    }
    /* A snapshot: the index's methods are Python code that may add peers. */
    if ((items = PyDict_Items(fab->peers)) == NULL || (late = PyList_New(0)) == NULL)
        goto fail;
    if (!is_none(fab->holders)) {
        PyObject *argv[] = {fab->holders, key};
        announced = PyObject_VectorcallMethod(NAME(st, N_holders_of), argv,
                                              2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (announced == NULL)
            goto fail;
        PyObject *fast = PySequence_Fast(announced, "holders_of() must return a sequence");
        if (fast == NULL)
            goto fail;
        Py_SETREF(announced, fast);
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(announced); i++) {
            PyObject *h = PySequence_Fast_GET_ITEM(announced, i);
            PyObject *peer = NULL;
            for (Py_ssize_t j = 0; j < PyList_GET_SIZE(items) && peer == NULL; j++) {
                PyObject *kv = PyList_GET_ITEM(items, j);
                int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(kv, 0), h, Py_EQ);
                if (eq < 0)
                    goto fail;
                if (eq)
                    peer = PyTuple_GET_ITEM(kv, 1);
            }
            if (peer == NULL)
                continue;
            int dup = PySet_Contains(seen, h);
            if (dup < 0)
                goto fail;
            if (dup)
                continue;
            PyObject *serve = PyObject_GetAttr(peer, NAME(st, N_serve));
            PyObject *t = serve ? PyTuple_Pack(3, h, serve, Py_True) : NULL;
            Py_XDECREF(serve);
            int rc = t ? PyList_Append(order, t) : -1;
            Py_XDECREF(t);
            if (rc < 0 || PySet_Add(seen, h) < 0)
                goto fail;
        }
    }
    for (Py_ssize_t j = 0; j < PyList_GET_SIZE(items); j++) {
        PyObject *kv = PyList_GET_ITEM(items, j);
        PyObject *name = PyTuple_GET_ITEM(kv, 0);
        int in = PySet_Contains(seen, name);
        if (in < 0)
            goto fail;
        if (in)
            continue;
        int failed = 0;
        if (!is_none(fab->holders)) {
            PyObject *argv[] = {fab->holders, name};
            PyObject *n = PyObject_VectorcallMethod(NAME(st, N_failures), argv,
                                                    2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (n == NULL)
                goto fail;
            failed = PyObject_IsTrue(n);
            Py_DECREF(n);
            if (failed < 0)
                goto fail;
        }
        PyObject *serve = PyObject_GetAttr(PyTuple_GET_ITEM(kv, 1), NAME(st, N_serve));
        PyObject *t = serve ? PyTuple_Pack(3, name, serve, Py_False) : NULL;
        Py_XDECREF(serve);
        int rc = t ? PyList_Append(failed ? late : order, t) : -1;
        Py_XDECREF(t);
        if (rc < 0)
            goto fail;
    }
    if (PyList_SetSlice(order, PyList_GET_SIZE(order), PyList_GET_SIZE(order), late) < 0)
        goto fail;
    Py_DECREF(seen);
    Py_DECREF(items);
    Py_DECREF(late);
    Py_XDECREF(announced);
    return order;
fail:
    Py_XDECREF(order);
    Py_XDECREF(seen);
    Py_XDECREF(items);
    Py_XDECREF(late);
    Py_XDECREF(announced);
    return NULL;
}

static ResObject *res_create(fab_state *st, CAFObject *fab, PyObject *request, PyObject *g,
                             PyObject *key)
{
    ResObject *res = PyObject_GC_New(ResObject, st->Resolution_Type);
    if (res == NULL)
        return NULL;
    res->fab = (CAFObject *)Py_NewRef((PyObject *)fab);
    res->request = Py_NewRef(request);
    res->grants = Py_NewRef(g);
    res->key = Py_NewRef(key);
    res->order = NULL;
    res->steps = PyList_New(0);
    res->attempts = PyList_New(0);
    res->idx = 0;
    res->cur = -1;
    res->t_end = 0;
    res->has_deadline = 0;
    res->no_home = 0;
    res->state = RES_FRESH;
    PyObject_GC_Track(res);
    if (res->steps == NULL || res->attempts == NULL ||
        append_step(res, st->str_local, fab->node, Py_NewRef(NAME(st, N_not_held))) < 0) {
        Py_DECREF(res);
        return NULL;
    }
    return res;
}

/* Seconds left before the deadline (*left, when *has); past it, raises
 * DeadlineExceeded with the attempts so far. */
static int res_remaining(fab_state *st, ResObject *res, double *left, int *has)
{
    *has = res->has_deadline;
    if (!res->has_deadline)
        return 0;
    *left = res->t_end - mono_now();
    if (*left > 0)
        return 0;
    return raise_with_attempts(
        st, res, FAB_PYEXC_DeadlineExceeded,
        PyUnicode_FromFormat("the request's deadline passed while resolving %S", res->key));
}

static int res_check_state(ResObject *res, int want, const char *what)
{
    if (res->state == want || (want == RES_OPEN && res->state == RES_FRESH))
        return 0;
    PyErr_Format(PyExc_RuntimeError, "Resolution.%s(): %s", what,
                 res->state == RES_DONE     ? "the resolution is finished"
                 : res->state == RES_ASKING ? "a source is being asked (call failed() or accept())"
                                            : "no source is being asked (call next() first)");
    return -1;
}

static int equals_name(fab_state *st, PyObject *s, int name)
{
    return PyUnicode_Check(s) && PyUnicode_Compare(s, NAME(st, name)) == 0;
}

static int res_start(fab_state *st, ResObject *res)
{
    PyObject *cons = PyObject_GetAttr(res->request, NAME(st, N_consistency));
    if (cons == NULL)
        return -1;
    int local_only = equals_name(st, cons, N_local_only);
    res->no_home = equals_name(st, cons, N_no_home);
    Py_DECREF(cons);
    if (local_only) {
        if (append_step(res, NAME(st, N_policy), NAME(st, N_local_only),
                        Py_NewRef(NAME(st, N_peers_not_asked))) < 0)
            return -1;
        PyErr_Format(st->exc[FAB_PYEXC_ContentNotHeld],
                     "node %R does not hold %S and the request is local-only", res->fab->node,
                     res->key);
        return -1;
    }
    PyObject *d = PyObject_GetAttr(res->request, NAME(st, N_deadline));
    if (d == NULL)
        return -1;
    if (d != Py_None) {
        double secs = PyFloat_AsDouble(d);
        if (secs == -1.0 && PyErr_Occurred()) {
            Py_DECREF(d);
            return -1;
        }
        res->t_end = mono_now() + secs;
        res->has_deadline = 1;
    }
    Py_DECREF(d);
    if ((res->order = peer_order(st, res->fab, res->key)) == NULL)
        return -1;
    res->state = RES_OPEN;
    return 0;
}

/* The next source to ask: *target (a fabric), *what ("peer 'x'" or "home")
 * and *timeout (seconds as a float, or None), all new references. On the
 * final error (local-only, NoHolderError, the deadline) the resolution is
 * finished, counted and remembered, and -1 returned. */
static int res_next(fab_state *st, ResObject *res, PyObject **target, PyObject **what,
                    PyObject **timeout)
{
    if (res_check_state(res, RES_OPEN, "next") < 0)
        return -1;
    if (res->state == RES_FRESH && res_start(st, res) < 0)
        goto fail;
    double left = 0;
    int has = 0;
    if (res->idx < PyList_GET_SIZE(res->order)) {
        if (res_remaining(st, res, &left, &has) < 0)
            goto fail;
        PyObject *entry = PyList_GET_ITEM(res->order, res->idx);
        PyObject *pt = res->fab->peer_timeout;
        double t = left;
        if (!is_none(pt)) {
            double p = PyFloat_AsDouble(pt);
            if (p == -1.0 && PyErr_Occurred())
                goto fail;
            t = has && left < p ? left : p;
            has = 1;
        }
        *timeout = has ? PyFloat_FromDouble(t) : Py_NewRef(Py_None);
        *what = PyUnicode_FromFormat("peer %R", PyTuple_GET_ITEM(entry, 0));
        if (*timeout == NULL || *what == NULL) {
            Py_CLEAR(*timeout);
            Py_CLEAR(*what);
            goto fail;
        }
        *target = Py_NewRef(PyTuple_GET_ITEM(entry, 1));
        res->cur = res->idx++;
        res->state = RES_ASKING;
        return 0;
    }
    PyObject *home = res->fab->home;
    if (is_none(home) || res->no_home) {
        PyObject *why = NAME(st, is_none(home) ? N_why_no_home : N_why_request_no_home);
        if (append_step(res, NAME(st, N_home), NAME(st, N_dash), Py_NewRef(why)) < 0)
            goto fail;
        PyObject *op = PyObject_GetAttr(res->request, NAME(st, N_op));
        if (op == NULL)
            goto fail;
        raise_with_attempts(st, res, FAB_PYEXC_NoHolderError,
                            PyUnicode_FromFormat("no holder answered for %S (%R) and %U",
                                                 res->key, op, why));
        Py_DECREF(op);
        goto fail;
    }
    if (res_remaining(st, res, &left, &has) < 0)
        goto fail;
    *timeout = has ? PyFloat_FromDouble(left) : Py_NewRef(Py_None);
    if (*timeout == NULL)
        goto fail;
    *what = Py_NewRef(NAME(st, N_home));
    *target = Py_NewRef(home);
    res->cur = -1;
    res->state = RES_ASKING;
    return 0;
fail:
    finalize_fail(st, res);
    return -1;
}

/* The source being asked raised exc (an Exception). A peer's answer is
 * noted and 0 returned: ask the next. Home's ends the resolution: the
 * peers' answers are added as a note, and 1 returned: raise exc. */
static int res_failed(fab_state *st, ResObject *res, PyObject *exc)
{
    if (res_check_state(res, RES_ASKING, "failed") < 0)
        return -1;
    if (!PyExceptionInstance_Check(exc)) {
        PyErr_SetString(PyExc_TypeError, "Resolution.failed() takes an exception instance");
        return -1;
    }
    if (res->cur < 0) {
        if (append_step(res, NAME(st, N_home), NAME(st, N_home), describe_answer(st, exc)) < 0)
            goto fail;
        if (PyList_GET_SIZE(res->attempts) > 0) {
            PyObject *tail = attempts_text(st, res->attempts);
            PyObject *note = tail ? PyUnicode_FromFormat("peers asked first:%U", tail) : NULL;
            Py_XDECREF(tail);
            if (note == NULL)
                goto fail;
            PyObject *argv[] = {exc, note};
            PyObject *r = PyObject_VectorcallMethod(NAME(st, N_add_note), argv,
                                                    2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_DECREF(note);
            if (r == NULL)
                goto fail;
            Py_DECREF(r);
        }
        finalize_fail(st, res);
        return 1;
    }
    PyObject *entry = PyList_GET_ITEM(res->order, res->cur);
    PyObject *name = PyTuple_GET_ITEM(entry, 0);
    int announced = PyTuple_GET_ITEM(entry, 2) == Py_True;
    PyObject *a = PyTuple_Pack(2, name, exc);
    int rc = a ? PyList_Append(res->attempts, a) : -1;
    Py_XDECREF(a);
    if (rc < 0 || append_step(res, NAME(st, announced ? N_holder : N_peer), name,
                              describe_answer(st, exc)) < 0)
        goto fail;
    /* A peer that is not an announced holder may simply not hold the key;
     * an announced holder that does not (stale), or any peer that errs or
     * times out, goes to the back of the queue next time. */
    if (announced ||
        !(PyObject_TypeCheck(exc, (PyTypeObject *)st->exc[FAB_PYEXC_ContentNotHeld]) ||
          PyObject_TypeCheck(exc, (PyTypeObject *)st->exc[FAB_PYEXC_CapabilityDenied]))) {
        if (holders_do(st, res, N_mark_failed, name) < 0)
            goto fail;
    }
    res->state = RES_OPEN;
    return 0;
fail:
    finalize_fail(st, res);
    return -1;
}

/* Records reply as held: [value, diagnostics, trace] into the cassette,
 * its bytes counted, this node announced as a holder. */
static int hold(fab_state *st, ResObject *res, PyObject *reply)
{
    PyObject *value, *diags, *trace;
    if (PyObject_TypeCheck(reply, st->EvalReply_Type)) {
        ReplyObject *r = (ReplyObject *)reply;
        value = Py_NewRef(r->value);
        diags = Py_NewRef(r->diagnostics);
        trace = Py_NewRef(r->trace);
    } else {
        value = PyObject_GetAttr(reply, NAME(st, N_value));
        diags = value ? PyObject_GetAttr(reply, NAME(st, N_diagnostics)) : NULL;
        trace = diags ? PyObject_GetAttr(reply, NAME(st, N_trace)) : NULL;
        if (trace == NULL) {
            Py_XDECREF(value);
            Py_XDECREF(diags);
            return -1;
        }
    }
    PyObject *dl = PySequence_List(diags);
    Py_DECREF(diags);
    if (dl == NULL) {
        Py_DECREF(value);
        Py_DECREF(trace);
        return -1;
    }
    PyObject *record = PyList_New(3);
    if (record == NULL) {
        Py_DECREF(value);
        Py_DECREF(dl);
        Py_DECREF(trace);
        return -1;
    }
    PyList_SET_ITEM(record, 0, value);
    PyList_SET_ITEM(record, 1, dl);
    PyList_SET_ITEM(record, 2, trace);
    size_t nbytes = 0;
    int rc = fab_py_cassette_record(st, res->fab->cassette, res->key, record, &nbytes);
    Py_DECREF(record);
    if (rc < 0)
        return -1;
    res->fab->counts[CAF_bytes_recorded] += nbytes;
    PyObject *h = res->fab->holders;
    if (is_none(h))
        return 0;
    PyObject *argv[] = {h, res->key, res->fab->node};
    PyObject *r = PyObject_VectorcallMethod(NAME(st, N_announce), argv,
                                            3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static PyObject *with_source(fab_state *st, PyObject *reply, PyObject *source)
{
    if (PyObject_TypeCheck(reply, st->EvalReply_Type)) {
        ReplyObject *r = (ReplyObject *)reply;
        return reply_make(Py_TYPE(reply), r->value, r->diagnostics, r->trace, r->key, source);
    }
    PyObject *argv[] = {reply, source};
    return PyObject_VectorcallMethod(NAME(st, N_with_source), argv,
                                     2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* The source being asked answered reply. A peer's reply for another key is
 * refused like a failed answer (Py_None: ask the next). Otherwise the reply
 * is held, counted and returned with its source (new reference). */
static PyObject *res_accept(fab_state *st, ResObject *res, PyObject *reply)
{
    if (res_check_state(res, RES_ASKING, "accept") < 0)
        return NULL;
    PyObject *source = NULL, *out = NULL;
    if (res->cur >= 0) {
        PyObject *entry = PyList_GET_ITEM(res->order, res->cur);
        PyObject *name = PyTuple_GET_ITEM(entry, 0);
        int announced = PyTuple_GET_ITEM(entry, 2) == Py_True;
        PyObject *rkey = PyObject_GetAttr(reply, NAME(st, N_key));
        if (rkey == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                goto fail;
            PyErr_Clear();
        }
        int ok = PyObject_TypeCheck(reply, (PyTypeObject *)st->reply_class);
        if (ok && !is_none(rkey)) {
            int eq = PyObject_RichCompareBool(rkey, res->key, Py_EQ);
            if (eq < 0) {
                Py_XDECREF(rkey);
                goto fail;
            }
            ok = eq;
        }
        if (!ok) {
            PyObject *exc = PyObject_CallFunction(
                st->exc[FAB_PYEXC_RemoteError], "N",
                PyUnicode_FromFormat("peer %R answered with a reply for another key (%S)", name,
                                     rkey ? rkey : Py_None));
            Py_XDECREF(rkey);
            if (exc == NULL || PyObject_SetAttr(exc, NAME(st, N_node), name) < 0) {
                Py_XDECREF(exc);
                goto fail;
            }
            int rc = res_failed(st, res, exc);
            Py_DECREF(exc);
            return rc < 0 ? NULL : Py_NewRef(Py_None);
        }
        Py_XDECREF(rkey);
        res->state = RES_ACCEPTING;
        if (holders_do(st, res, N_mark_ok, name) < 0 || hold(st, res, reply) < 0)
            goto fail;
        res->fab->counts[CAF_peer_hits]++;
        if (append_step(res, NAME(st, announced ? N_holder : N_peer), name,
                        Py_NewRef(NAME(st, N_hit))) < 0)
            goto fail;
        source = PyUnicode_FromFormat("peer:%U", name);
    } else {
        res->state = RES_ACCEPTING;
        if (hold(st, res, reply) < 0)
            goto fail;
        res->fab->counts[CAF_home_computes]++;
        if (append_step(res, NAME(st, N_home), NAME(st, N_home),
                        Py_NewRef(NAME(st, N_computed))) < 0)
            goto fail;
        source = Py_NewRef(NAME(st, N_home));
    }
    if (source == NULL || (out = with_source(st, reply, source)) == NULL)
        goto fail;
    if (finalize_ok(st, res, source) < 0) {
        Py_CLEAR(out);
    }
    Py_DECREF(source);
    return out;
fail:
    Py_XDECREF(source);
    finalize_fail(st, res);
    return NULL;
}

/* The source being asked started a stream (its first item, or its end, has
 * come): (source, counter name, peer node or None); the resolution is done.
 * The stream's frames are recorded by the caller as they pass. */
static PyObject *res_started(fab_state *st, ResObject *res)
{
    if (res_check_state(res, RES_ASKING, "started") < 0)
        return NULL;
    res->state = RES_ACCEPTING;
    PyObject *source = NULL, *out = NULL;
    PyObject *streaming = NAME(st, N_streaming);
    if (res->cur >= 0) {
        PyObject *entry = PyList_GET_ITEM(res->order, res->cur);
        PyObject *name = PyTuple_GET_ITEM(entry, 0);
        int announced = PyTuple_GET_ITEM(entry, 2) == Py_True;
        if (append_step(res, NAME(st, announced ? N_holder : N_peer), name,
                        Py_NewRef(streaming)) < 0)
            goto fail;
        if (holders_do(st, res, N_mark_ok, name) < 0)
            goto fail;
        if ((source = PyUnicode_FromFormat("peer:%U", name)) == NULL)
            goto fail;
        out = PyTuple_Pack(3, source, NAME(st, N_peer_hits), name);
    } else {
        if (append_step(res, NAME(st, N_home), NAME(st, N_home), Py_NewRef(streaming)) < 0)
            goto fail;
        source = Py_NewRef(NAME(st, N_home));
        out = PyTuple_Pack(3, source, NAME(st, N_home_computes), Py_None);
    }
    if (out == NULL)
        goto fail;
    if (finalize_ok(st, res, source) < 0)
        Py_CLEAR(out);
    Py_DECREF(source);
    return out;
fail:
    Py_XDECREF(source);
    finalize_fail(st, res);
    return NULL;
}

/* Calls target.evaluate(request, grants=g), through self._call_within when
 * a timeout applies (a worker thread, so a hung peer cannot hang us). */
static PyObject *call_source(fab_state *st, CAFObject *self, PyObject *target, PyObject *what,
                             PyObject *timeout, PyObject *request, PyObject *g)
{
    PyObject *kw = NAME(st, N_KW_GRANTS);
    if (timeout == Py_None) {
        PyObject *argv[] = {target, request, g};
        return PyObject_VectorcallMethod(NAME(st, N_evaluate), argv,
                                         2 | PY_VECTORCALL_ARGUMENTS_OFFSET, kw);
    }
    PyObject *fn = PyObject_GetAttr(target, NAME(st, N_evaluate));
    if (fn == NULL)
        return NULL;
    PyObject *argv[] = {(PyObject *)self, fn, timeout, what, request, g};
    PyObject *r = PyObject_VectorcallMethod(NAME(st, N_call_within), argv,
                                            5 | PY_VECTORCALL_ARGUMENTS_OFFSET, kw);
    Py_DECREF(fn);
    return r;
}

/* The whole miss path of evaluate(): asks each source in order, here. */
static PyObject *resolve(fab_state *st, CAFObject *self, PyObject *request, PyObject *g,
                         PyObject *key)
{
    ResObject *res = res_create(st, self, request, g, key);
    if (res == NULL)
        return NULL;
    PyObject *result = NULL;
    for (;;) {
        PyObject *target, *what, *timeout;
        if (res_next(st, res, &target, &what, &timeout) < 0)
            break;
        PyObject *reply = call_source(st, self, target, what, timeout, request, g);
        Py_DECREF(target);
        Py_DECREF(what);
        Py_DECREF(timeout);
        if (reply == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                finalize_fail(st, res); /* KeyboardInterrupt and the like */
                break;
            }
            PyObject *exc = fetch_exc();
            int rc = res_failed(st, res, exc);
            if (rc == 1) {
                restore_exc(exc);
                break;
            }
            Py_DECREF(exc);
            if (rc < 0)
                break;
            continue;
        }
        PyObject *out = res_accept(st, res, reply);
        Py_DECREF(reply);
        if (out == NULL)
            break;
        if (out != Py_None) {
            result = out;
            break;
        }
        Py_DECREF(out);
    }
    Py_DECREF(res);
    return result;
}

/* -- the Resolution type, for the Python drivers (async, streams) --------- */

static fab_state *res_state(PyObject *self)
{
    return fab_state_from_type(Py_TYPE(self));
}

static PyObject *Res_next(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    fab_state *st = res_state(self);
    PyObject *target, *what, *timeout;
    if (st == NULL || res_next(st, (ResObject *)self, &target, &what, &timeout) < 0)
        return NULL;
    PyObject *t = PyTuple_Pack(3, target, what, timeout);
    Py_DECREF(target);
    Py_DECREF(what);
    Py_DECREF(timeout);
    return t;
}

static PyObject *Res_failed(PyObject *self, PyObject *exc)
{
    fab_state *st = res_state(self);
    int rc = st ? res_failed(st, (ResObject *)self, exc) : -1;
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc);
}

static PyObject *Res_accept(PyObject *self, PyObject *reply)
{
    fab_state *st = res_state(self);
    return st ? res_accept(st, (ResObject *)self, reply) : NULL;
}

static PyObject *Res_started(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    fab_state *st = res_state(self);
    return st ? res_started(st, (ResObject *)self) : NULL;
}

static PyObject *Res_abort(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ResObject *res = (ResObject *)self;
    fab_state *st = res_state(self);
    if (st == NULL)
        return NULL;
    /* While accept() records on another thread, that call finishes it. */
    if (res->state != RES_ACCEPTING)
        finalize_fail(st, res);
    Py_RETURN_NONE;
}

static PyObject *Res_remaining(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ResObject *res = (ResObject *)self;
    if (!res->has_deadline)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(res->t_end - mono_now());
}

static PyObject *Res_get_steps(PyObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(((ResObject *)self)->steps);
}

static PyObject *Res_get_attempts(PyObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(((ResObject *)self)->attempts);
}

static int Res_traverse(ResObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->fab);
    Py_VISIT(self->request);
    Py_VISIT(self->grants);
    Py_VISIT(self->key);
    Py_VISIT(self->order);
    Py_VISIT(self->steps);
    Py_VISIT(self->attempts);
    return 0;
}

static int Res_clear(ResObject *self)
{
    Py_CLEAR(self->fab);
    Py_CLEAR(self->request);
    Py_CLEAR(self->grants);
    Py_CLEAR(self->key);
    Py_CLEAR(self->order);
    Py_CLEAR(self->steps);
    Py_CLEAR(self->attempts);
    return 0;
}

static void Res_dealloc(ResObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Res_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyMethodDef Res_methods[] = {
    {"next", Res_next, METH_NOARGS,
     "next($self, /)\n--\n\n(target, what, timeout): the next source to ask. Raises the final\n"
     "error (ContentNotHeld for local-only, NoHolderError, DeadlineExceeded)."},
    {"failed", Res_failed, METH_O,
     "failed($self, exc, /)\n--\n\nThe source asked raised exc. False: ask the next; True: it\n"
     "was home, re-raise exc (the peers' answers are added as a note)."},
    {"accept", Res_accept, METH_O,
     "accept($self, reply, /)\n--\n\nThe source asked answered: the reply, held and announced,\n"
     "with its source; None if a peer's reply was refused (ask the next)."},
    {"started", Res_started, METH_NOARGS,
     "started($self, /)\n--\n\nThe source asked started a stream: (source, counter, node)."},
    {"abort", Res_abort, METH_NOARGS,
     "abort($self, /)\n--\n\nThe caller gave up (an error of its own): count a failure."},
    {"remaining", Res_remaining, METH_NOARGS,
     "remaining($self, /)\n--\n\nSeconds left before the request's deadline, or None."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Res_getset[] = {
    {"steps", Res_get_steps, NULL, "(stage, target, outcome) so far.", NULL},
    {"attempts", Res_get_attempts, NULL, "(node, exception) of every peer asked so far.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Res_slots[] = {
    {Py_tp_doc, "One miss being resolved (made by ContentAddressedFabric._resolution)."},
    {Py_tp_dealloc, Res_dealloc},
    {Py_tp_traverse, Res_traverse},
    {Py_tp_clear, Res_clear},
    {Py_tp_methods, Res_methods},
    {Py_tp_getset, Res_getset},
    {0, NULL},
};

static PyType_Spec Res_spec = {
    .name = "fabric._core._Resolution",
    .basicsize = sizeof(ResObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Res_slots,
};

static PyObject *CAF_evaluate(CAFObject *self, PyTypeObject *defining_class,
                              PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    fab_state *st = PyType_GetModuleState(defining_class);
    PyObject *request, *grants, *out = NULL, *result = NULL;
    if (ready(self) < 0 ||
        parse_request_grants("evaluate", args, PyVectorcall_NARGS(nargsf), kwnames, &request,
                             &grants) < 0)
        return NULL;
    PyObject *g = call_grants(self, grants);
    if (g == NULL)
        return NULL;
    switch (lookup(st, self, request, g, &out)) {
    case LOOKUP_HIT:
        result = out;
        break;
    case LOOKUP_MISS:
        result = resolve(st, self, request, g, out);
        Py_DECREF(out);
        break;
    case LOOKUP_STREAM: {
        PyObject *argv[] = {(PyObject *)self, request, g};
        result = PyObject_VectorcallMethod(st->str_evaluate_stream, argv,
                                           3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        break;
    }
    default:
        break;
    }
    Py_DECREF(g);
    return result;
}

static PyObject *CAF_lookup(CAFObject *self, PyTypeObject *defining_class,
                            PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    fab_state *st = PyType_GetModuleState(defining_class);
    PyObject *request, *grants, *out = NULL;
    if (ready(self) < 0 ||
        parse_request_grants("_lookup", args, PyVectorcall_NARGS(nargsf), kwnames, &request,
                             &grants) < 0)
        return NULL;
    PyObject *g = call_grants(self, grants);
    if (g == NULL)
        return NULL;
    int rc = lookup(st, self, request, g, &out);
    Py_DECREF(g);
    switch (rc) {
    case LOOKUP_HIT:
        return out;
    case LOOKUP_MISS:
        Py_DECREF(out);
        Py_RETURN_NONE;
    case LOOKUP_STREAM:
        Py_RETURN_NONE;
    default:
        return NULL;
    }
}

static PyObject *CAF_resolution(CAFObject *self, PyTypeObject *defining_class,
                                PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    fab_state *st = PyType_GetModuleState(defining_class);
    PyObject *request, *grants;
    if (ready(self) < 0 ||
        parse_request_grants("_resolution", args, PyVectorcall_NARGS(nargsf), kwnames, &request,
                             &grants) < 0)
        return NULL;
    PyObject *g = call_grants(self, grants);
    if (g == NULL)
        return NULL;
    PyObject *key = fab_py_request_key(st, request);
    PyObject *res = key ? (PyObject *)res_create(st, self, request, g, key) : NULL;
    Py_XDECREF(key);
    Py_DECREF(g);
    return res;
}

static PyObject *CAF_order(CAFObject *self, PyTypeObject *defining_class, PyObject *const *args,
                           Py_ssize_t nargsf, PyObject *kwnames)
{
    fab_state *st = PyType_GetModuleState(defining_class);
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "_order(key, /)");
        return NULL;
    }
    return peer_order(st, self, args[0]);
}

static PyObject *CAF_count(CAFObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "_count(name: str, n: int = 1)");
        return NULL;
    }
    long long n = 1;
    if (nargs == 2) {
        n = PyLong_AsLongLong(args[1]);
        if (n == -1 && PyErr_Occurred())
            return NULL;
        if (n < 0) {
            PyErr_SetString(PyExc_ValueError, "counters only grow");
            return NULL;
        }
    }
    for (int i = 0; i < CAF_NCOUNTERS; i++) {
        if (PyUnicode_CompareWithASCIIString(args[0], counter_names[i]) == 0) {
            self->counts[i] += (unsigned long long)n;
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_KeyError, "no counter %R", args[0]);
    return NULL;
}

static PyObject *CAF_stats(CAFObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (int i = 0; i < CAF_NCOUNTERS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(self->counts[i]);
        if (v == NULL || PyDict_SetItemString(d, counter_names[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *CAF_get_node(CAFObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return Py_NewRef(self->node ? self->node : Py_None);
}

static PyObject *CAF_get_cassette(CAFObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return Py_NewRef(self->cassette ? self->cassette : Py_None);
}

static PyObject *CAF_get_grants(CAFObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return Py_NewRef(self->grants ? self->grants : Py_None);
}

static int CAF_set_grants(CAFObject *self, PyObject *value, void *closure)
{
    FAB_UNUSED(closure);
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "grants cannot be deleted");
        return -1;
    }
    PyObject *g = as_grants(value);
    if (g == NULL)
        return -1;
    Py_XSETREF(self->grants, g);
    return 0;
}

static PyGetSetDef CAF_getset[] = {
    {"node", (getter)CAF_get_node, NULL, "This node's id.", NULL},
    {"cassette", (getter)CAF_get_cassette, NULL, "The local cassette.", NULL},
    {"grants", (getter)CAF_get_grants, (setter)CAF_set_grants,
     "Default grants of callers that pass none (a frozenset).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef CAF_methods[] = {
    {"evaluate", (PyCFunction)(void (*)(void))CAF_evaluate,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "evaluate($self, request, /, *, grants=None)\n--\n\n"
     "Resolve the request: a local hit (checked against the caller's grants)\n"
     "is answered here; a miss goes to holders, peers, then home."},
    {"_lookup", (PyCFunction)(void (*)(void))CAF_lookup,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "_lookup($self, request, /, *, grants=None)\n--\n\n"
     "The local hit for request, or None (grants are checked first)."},
    {"_resolution", (PyCFunction)(void (*)(void))CAF_resolution,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "_resolution($self, request, /, *, grants=None)\n--\n\n"
     "A _Resolution of request's miss: the order of sources and its bookkeeping."},
    {"_order", (PyCFunction)(void (*)(void))CAF_order, METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "_order($self, key, /)\n--\n\nThe peers in the order a miss of key asks them: a list of\n"
     "(node, serve, announced)."},
    {"_count", (PyCFunction)(void (*)(void))CAF_count, METH_FASTCALL,
     "_count($self, name, n=1, /)\n--\n\nAdd n to a counter."},
    {"stats", (PyCFunction)CAF_stats, METH_NOARGS,
     "stats($self, /)\n--\n\nCounters: local_hits, peer_hits, home_computes, failures,\n"
     "denied, bytes_recorded."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef CAF_members[] = {
    {"home", T_OBJECT, offsetof(CAFObject, home), 0,
     "The fabric that computes what no peer holds (None: fail closed)."},
    {"holders", T_OBJECT, offsetof(CAFObject, holders), 0,
     "The HoldingIndex: who holds which key (announced to on every success)."},
    {"peer_timeout", T_OBJECT, offsetof(CAFObject, peer_timeout), 0,
     "Seconds each peer call may take (None: no limit)."},
    {"_peers", T_OBJECT, offsetof(CAFObject, peers), READONLY,
     "dict: node id -> ContentPeer, in the order added."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot CAF_slots[] = {
    {Py_tp_doc, "ContentAddressedFabricCore(node, cassette, grants=frozenset())\n--\n\n"
                "The C base of fabric.ContentAddressedFabric: the local hit path."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, CAF_init},
    {Py_tp_dealloc, CAF_dealloc},
    {Py_tp_traverse, CAF_traverse},
    {Py_tp_clear, CAF_clear},
    {Py_tp_methods, CAF_methods},
    {Py_tp_getset, CAF_getset},
    {Py_tp_members, CAF_members},
    {0, NULL},
};

static PyType_Spec CAF_spec = {
    .name = "fabric._core.ContentAddressedFabricCore",
    .basicsize = sizeof(CAFObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = CAF_slots,
};

/* ======================================================================== */
/* Module part                                                               */
/* ======================================================================== */

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

static PyMethodDef caf_functions[] = {
    {"_set_reply_class", set_reply_class, METH_O,
     "_set_reply_class(cls, /)\n--\n\nMake local hits instances of cls (an EvalReply "
     "subclass with __slots__ = ())."},
    {NULL, NULL, 0, NULL},
};

int fab_py_caf_exec(PyObject *module, fab_state *st)
{
    if (PyModule_AddFunctions(module, caf_functions) < 0)
        return -1;
    if ((st->EvalReply_Type = fab_py_add_type(module, &EvalReply_spec, NULL)) == NULL)
        return -1;
    if ((st->CAFCore_Type = fab_py_add_type(module, &CAF_spec, NULL)) == NULL)
        return -1;
    if ((st->Resolution_Type = fab_py_add_type(module, &Res_spec, NULL)) == NULL)
        return -1;
    if ((st->caf_names = PyTuple_New(N_COUNT)) == NULL)
        return -1;
    for (int i = 0; i < N_KW_GRANTS; i++) {
        PyObject *s = PyUnicode_InternFromString(name_text[i]);
        if (s == NULL)
            return -1;
        PyTuple_SET_ITEM(st->caf_names, i, s);
    }
    PyObject *kw = Py_BuildValue("(s)", "grants");
    if (kw == NULL)
        return -1;
    PyTuple_SET_ITEM(st->caf_names, N_KW_GRANTS, kw);
    st->reply_class = Py_NewRef((PyObject *)st->EvalReply_Type);
    if ((st->str_get = PyUnicode_InternFromString("get")) == NULL ||
        (st->str_local = PyUnicode_InternFromString("local")) == NULL ||
        (st->str_computed = PyUnicode_InternFromString("computed")) == NULL ||
        (st->str_deny = PyUnicode_InternFromString("_deny")) == NULL ||
        (st->str_evaluate_stream = PyUnicode_InternFromString("_evaluate_stream")) == NULL ||
        (st->str_check_grants = PyUnicode_InternFromString("_grants")) == NULL)
        return -1;
    return 0;
}

int fab_py_caf_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->EvalReply_Type);
    Py_VISIT(st->CAFCore_Type);
    Py_VISIT(st->reply_class);
    Py_VISIT(st->Resolution_Type);
    Py_VISIT(st->caf_names);
    return 0;
}

void fab_py_caf_clear(fab_state *st)
{
    Py_CLEAR(st->EvalReply_Type);
    Py_CLEAR(st->CAFCore_Type);
    Py_CLEAR(st->reply_class);
    Py_CLEAR(st->Resolution_Type);
    Py_CLEAR(st->caf_names);
    Py_CLEAR(st->str_get);
    Py_CLEAR(st->str_local);
    Py_CLEAR(st->str_computed);
    Py_CLEAR(st->str_deny);
    Py_CLEAR(st->str_evaluate_stream);
    Py_CLEAR(st->str_check_grants);
}
