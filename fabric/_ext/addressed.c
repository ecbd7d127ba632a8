/*
 * The hit path of ContentAddressedFabric, and the grants helpers every
 * fabric shares.
 *
 * ContentAddressedFabricCore is the C base of fabric.ContentAddressedFabric.
 * It holds the node id, the cassette, the callers' default grants and the
 * counters, and answers evaluate() when the reply is held here: the
 * caller's grants against the request's capabilities, request -> key ->
 * cassette lookup -> EvalReply, with no Python frame in between.
 *
 * Everything else is Python (fabric.resolving): on a miss (or a stream
 * request) evaluate() calls the `miss` callable its creator handed to
 * __init__, with (fabric, request, grants, timeout), and returns what that
 * returns. The lookup, too, is a callable handed over (the cassette's get).
 * This file never looks a Python function or method up by name: it calls
 * only what it was given.
 */
#include "glue.h"

#include <stddef.h>
#include <structmember.h>

/* ======================================================================== */
/* Grants                                                                    */
/* ======================================================================== */

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

/* The grants of a call: dflt when none (or None) were given. New reference. */
static PyObject *call_grants(PyObject *grants, PyObject *dflt)
{
    if (grants == NULL || grants == Py_None)
        return Py_NewRef(dflt);
    return as_grants(grants);
}

/* Appends to missing each name of caps (a sequence of str) not in g and
 * not already there. 0 or -1. */
static int add_missing(PyObject *missing, PyObject *caps, PyObject *g)
{
    PyObject *fast = PySequence_Fast(caps, "capabilities must be a sequence of str");
    if (fast == NULL)
        return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast) && rc == 0; i++) {
        PyObject *cap = PySequence_Fast_GET_ITEM(fast, i);
        int has = PySet_Contains(g, cap);
        if (has == 0)
            has = PySequence_Contains(missing, cap);
        rc = has < 0 ? -1 : has ? 0 : PyList_Append(missing, cap);
    }
    Py_DECREF(fast);
    return rc;
}

/* Raises CapabilityDenied unless g (a frozenset) covers the request's
 * declared capabilities (caps, its sorted tuple) and extra (may be NULL).
 * `where` names the fabric (a str, or NULL to make one from node). 0 or -1. */
static int check_caps(fab_state *st, PyObject *request, PyObject *caps, PyObject *extra,
                      PyObject *g, PyObject *where, PyObject *node)
{
    Py_ssize_t n = PyTuple_GET_SIZE(caps);
    int all = 1;
    for (Py_ssize_t i = 0; i < n && all; i++) {
        all = PySet_Contains(g, PyTuple_GET_ITEM(caps, i));
        if (all < 0)
            return -1;
    }
    if (all && (extra == NULL || PyObject_Length(extra) == 0)) {
        if (PyErr_Occurred())
            return -1;
        return 0;
    }
    /* The slow path: name what is missing, sorted, in the message. */
    PyObject *missing = PyList_New(0), *sep = NULL, *joined = NULL, *op = NULL, *w = NULL;
    int rc = -1;
    if (missing == NULL || add_missing(missing, caps, g) < 0 ||
        (extra != NULL && add_missing(missing, extra, g) < 0) || PyList_Sort(missing) < 0)
        goto done;
    if (PyList_GET_SIZE(missing) == 0) {
        rc = 0;
        goto done;
    }
    if ((sep = PyUnicode_FromString(", ")) == NULL ||
        (joined = PyUnicode_Join(sep, missing)) == NULL ||
        (op = PyObject_GetAttrString(request, "op")) == NULL)
        goto done;
    w = where ? Py_NewRef(where) : PyUnicode_FromFormat("ContentAddressedFabric %R", node);
    if (w != NULL)
        PyErr_Format(st->exc[FAB_PYEXC_CapabilityDenied],
                     "%U: %R requires capabilities %U not granted to the caller", w, op, joined);
done:
    Py_XDECREF(missing);
    Py_XDECREF(sep);
    Py_XDECREF(joined);
    Py_XDECREF(op);
    Py_XDECREF(w);
    return rc;
}

static PyObject *grants_normalize(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    FAB_UNUSED(module);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_as_grants(grants, default, /)");
        return NULL;
    }
    return call_grants(args[0], args[1]);
}

static PyObject *grants_check(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    fab_state *st = fab_get_state(module);
    PyObject *caps;
    if (nargs < 3 || nargs > 4 || !PyFrozenSet_Check(args[1]) || !PyUnicode_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "_check_grants(request, grants: frozenset, where: str, extra=(), /)");
        return NULL;
    }
    if (fab_py_request_info(st, args[0], NULL, &caps, NULL) < 0 ||
        check_caps(st, args[0], caps, nargs == 4 ? args[3] : NULL, args[1], args[2], NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

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
    PyObject *cassette; /* the cassette (an EvalCassette, or anything with its interface) */
    PyObject *get;      /* callable: key -> reply record or None (the cassette's get) */
    PyObject *miss;     /* callable: (fabric, request, grants, timeout) -> reply */
    PyObject *grants;   /* frozenset: the default grants of callers */
    unsigned long long counts[CAF_NCOUNTERS]; /* changed under the GIL only */
} CAFObject;

static int CAF_init(CAFObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"node", "cassette", "lookup", "miss", "grants", NULL};
    PyObject *node, *cassette, *get, *miss, *grants = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UOOO|O:ContentAddressedFabricCore", kwlist,
                                     &node, &cassette, &get, &miss, &grants))
        return -1;
    if (PyUnicode_GET_LENGTH(node) == 0) {
        PyErr_SetString(PyExc_TypeError, "node must be a non-empty str");
        return -1;
    }
    if (!PyCallable_Check(get) || !PyCallable_Check(miss)) {
        PyErr_SetString(PyExc_TypeError, "lookup and miss must be callables");
        return -1;
    }
    PyObject *g = grants ? as_grants(grants) : PyFrozenSet_New(NULL);
    if (g == NULL)
        return -1;
    Py_XSETREF(self->node, Py_NewRef(node));
    Py_XSETREF(self->cassette, Py_NewRef(cassette));
    Py_XSETREF(self->get, Py_NewRef(get));
    Py_XSETREF(self->miss, Py_NewRef(miss));
    Py_XSETREF(self->grants, g);
    return 0;
}

static int CAF_traverse(CAFObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->node);
    Py_VISIT(self->cassette);
    Py_VISIT(self->get);
    Py_VISIT(self->miss);
    Py_VISIT(self->grants);
    return 0;
}

static int CAF_clear(CAFObject *self)
{
    Py_CLEAR(self->node);
    Py_CLEAR(self->cassette);
    Py_CLEAR(self->get);
    Py_CLEAR(self->miss);
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

/* The caller's grants against the request's capabilities; a denial is
 * counted. *stream is the request's stream flag. 0 or -1. */
static int check(fab_state *st, CAFObject *self, PyObject *request, PyObject *g, int *stream)
{
    PyObject *caps;
    if (fab_py_request_info(st, request, NULL, &caps, stream) < 0)
        return -1;
    if (check_caps(st, request, caps, NULL, g, NULL, self->node) < 0) {
        if (PyErr_ExceptionMatches(st->exc[FAB_PYEXC_CapabilityDenied]))
            self->counts[CAF_denied]++;
        return -1;
    }
    return 0;
}

/* The hit path: a new reference to the held reply, Py_None on a miss or
 * for a stream request (a borrowed-then-increfed None), NULL on error. */
static PyObject *lookup(fab_state *st, CAFObject *self, PyObject *request, PyObject *g)
{
    int stream;
    /* A hit still checks the caller's grants: caching never weakens policy. */
    if (check(st, self, request, g, &stream) < 0)
        return NULL;
    if (stream)
        Py_RETURN_NONE;
    PyObject *key = fab_py_request_key(st, request);
    if (key == NULL)
        return NULL;
    PyObject *rec = PyObject_Vectorcall(self->get, &key, 1, NULL);
    PyObject *reply = rec;
    if (rec != NULL && rec != Py_None) {
        reply = fab_py_reply_from_record(st, rec, key, st->str_local);
        Py_DECREF(rec);
        if (reply != NULL)
            self->counts[CAF_local_hits]++;
    }
    Py_DECREF(key);
    return reply;
}

/* Parses (request, /, *, grants=None[, timeout=None]) from a vectorcall:
 * the keywords allowed are the first `nkw` of grants, timeout. 0 or -1. */
static int parse_call(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames, int nkw, PyObject **request, PyObject **grants,
                      PyObject **timeout)
{
    static const char *const names[] = {"grants", "timeout"};
    PyObject **outs[] = {grants, timeout};
    *grants = NULL;
    *timeout = Py_None;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes 1 positional argument (request), %zd given",
                     fname, nargs);
        return -1;
    }
    *request = args[0];
    Py_ssize_t n = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int j = 0;
        while (j < nkw && PyUnicode_CompareWithASCIIString(name, names[j]) != 0)
            j++;
        if (j == nkw) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname,
                         name);
            return -1;
        }
        *outs[j] = args[nargs + i];
    }
    return 0;
}

static PyObject *CAF_evaluate(CAFObject *self, PyTypeObject *defining_class,
                              PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    fab_state *st = PyType_GetModuleState(defining_class);
    PyObject *request, *grants, *timeout;
    if (ready(self) < 0 || parse_call("evaluate", args, PyVectorcall_NARGS(nargsf), kwnames, 2,
                                      &request, &grants, &timeout) < 0)
        return NULL;
    PyObject *g = call_grants(grants, self->grants);
    if (g == NULL)
        return NULL;
    PyObject *reply = lookup(st, self, request, g);
    if (reply == Py_None) {
        /* The miss leaves C: the resolution is the Python code handed to us. */
        Py_DECREF(reply);
        PyObject *argv[] = {(PyObject *)self, request, g, timeout};
        reply = PyObject_Vectorcall(self->miss, argv, 4, NULL);
    }
    Py_DECREF(g);
    return reply;
}

static PyObject *CAF_lookup(CAFObject *self, PyTypeObject *defining_class,
                            PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    fab_state *st = PyType_GetModuleState(defining_class);
    PyObject *request, *grants, *timeout;
    if (ready(self) < 0 || parse_call("_lookup", args, PyVectorcall_NARGS(nargsf), kwnames, 1,
                                      &request, &grants, &timeout) < 0)
        return NULL;
    PyObject *g = call_grants(grants, self->grants);
    if (g == NULL)
        return NULL;
    PyObject *reply = lookup(st, self, request, g);
    Py_DECREF(g);
    return reply;
}

static PyObject *CAF_check(CAFObject *self, PyTypeObject *defining_class,
                           PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    fab_state *st = PyType_GetModuleState(defining_class);
    PyObject *request, *grants, *timeout;
    int stream;
    if (ready(self) < 0 || parse_call("_check", args, PyVectorcall_NARGS(nargsf), kwnames, 1,
                                      &request, &grants, &timeout) < 0)
        return NULL;
    PyObject *g = call_grants(grants, self->grants);
    if (g != NULL && check(st, self, request, g, &stream) < 0)
        Py_CLEAR(g);
    return g;
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
     "evaluate($self, request, /, *, grants=None, timeout=None)\n--\n\n"
     "The reply to request: from this node's cassette when held there (after\n"
     "checking grants against the request's capabilities), else from the\n"
     "holders, the other peers, then home; recorded and announced here.\n"
     "timeout (seconds) bounds the whole call, like the request's deadline.\n"
     "Raises CapabilityDenied, NoHolderError, DeadlineExceeded, or home's error."},
    {"_lookup", (PyCFunction)(void (*)(void))CAF_lookup,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "_lookup($self, request, /, *, grants=None)\n--\n\n"
     "The local hit for request, or None (grants are checked first)."},
    {"_check", (PyCFunction)(void (*)(void))CAF_check,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "_check($self, request, /, *, grants=None)\n--\n\n"
     "The caller's grants (a frozenset) once checked against the request's\n"
     "capabilities; CapabilityDenied (counted) if they fall short."},
    {"_count", (PyCFunction)(void (*)(void))CAF_count, METH_FASTCALL,
     "_count($self, name, n=1, /)\n--\n\nAdd n to a counter."},
    {"stats", (PyCFunction)CAF_stats, METH_NOARGS,
     "stats($self, /)\n--\n\nCounters: local_hits, peer_hits, home_computes, failures,\n"
     "denied, bytes_recorded."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot CAF_slots[] = {
    {Py_tp_doc, "ContentAddressedFabricCore(node, cassette, lookup, miss, grants=frozenset())\n"
                "--\n\n"
                "The C base of fabric.ContentAddressedFabric (use that class): answers\n"
                "evaluate() from the cassette (lookup(key) -> record or None) and hands a\n"
                "miss to miss(fabric, request, grants, timeout)."},
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

static PyMethodDef addressed_functions[] = {
    {"_as_grants", (PyCFunction)(void (*)(void))grants_normalize, METH_FASTCALL,
     "_as_grants(grants, default, /)\n--\n\nThe grants of a call as a frozenset: default "
     "when grants is None;\nTypeError for a single str."},
    {"_check_grants", (PyCFunction)(void (*)(void))grants_check, METH_FASTCALL,
     "_check_grants(request, grants, where, extra=(), /)\n--\n\n"
     "Raise CapabilityDenied unless grants (a frozenset) cover what the request\n"
     "declares and extra (e.g. an op's own capabilities); where names the fabric."},
    {NULL, NULL, 0, NULL},
};

int fab_py_addressed_exec(PyObject *module, fab_state *st)
{
    if (PyModule_AddFunctions(module, addressed_functions) < 0)
        return -1;
    if ((st->CAFCore_Type = fab_py_add_type(module, &CAF_spec, NULL)) == NULL)
        return -1;
    if ((st->str_local = PyUnicode_InternFromString("local")) == NULL)
        return -1;
    return 0;
}

int fab_py_addressed_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->CAFCore_Type);
    return 0;
}

void fab_py_addressed_clear(fab_state *st)
{
    Py_CLEAR(st->CAFCore_Type);
    Py_CLEAR(st->str_local);
}
