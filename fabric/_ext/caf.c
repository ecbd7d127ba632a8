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
    return 0;
}

static int CAF_traverse(CAFObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->node);
    Py_VISIT(self->cassette);
    Py_VISIT(self->grants);
    return 0;
}

static int CAF_clear(CAFObject *self)
{
    Py_CLEAR(self->node);
    Py_CLEAR(self->cassette);
    Py_CLEAR(self->grants);
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
    case LOOKUP_MISS: {
        PyObject *argv[] = {(PyObject *)self, request, g, out};
        result = PyObject_VectorcallMethod(st->str_resolve, argv,
                                           4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(out);
        break;
    }
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
    {"_count", (PyCFunction)(void (*)(void))CAF_count, METH_FASTCALL,
     "_count($self, name, n=1, /)\n--\n\nAdd n to a counter."},
    {"stats", (PyCFunction)CAF_stats, METH_NOARGS,
     "stats($self, /)\n--\n\nCounters: local_hits, peer_hits, home_computes, failures,\n"
     "denied, bytes_recorded."},
    {NULL, NULL, 0, NULL},
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
    st->reply_class = Py_NewRef((PyObject *)st->EvalReply_Type);
    if ((st->str_get = PyUnicode_InternFromString("get")) == NULL ||
        (st->str_local = PyUnicode_InternFromString("local")) == NULL ||
        (st->str_computed = PyUnicode_InternFromString("computed")) == NULL ||
        (st->str_resolve = PyUnicode_InternFromString("_resolve")) == NULL ||
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
    return 0;
}

void fab_py_caf_clear(fab_state *st)
{
    Py_CLEAR(st->EvalReply_Type);
    Py_CLEAR(st->CAFCore_Type);
    Py_CLEAR(st->reply_class);
    Py_CLEAR(st->str_get);
    Py_CLEAR(st->str_local);
    Py_CLEAR(st->str_computed);
    Py_CLEAR(st->str_resolve);
    Py_CLEAR(st->str_deny);
    Py_CLEAR(st->str_evaluate_stream);
    Py_CLEAR(st->str_check_grants);
}
