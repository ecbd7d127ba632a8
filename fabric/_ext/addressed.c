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

#include <math.h>
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
/* Counters: the one implementation every fabric's stats() reads             */
/* ======================================================================== */

#define FAB_MAX_COUNTERS 16

typedef struct {
    PyObject_HEAD
    PyObject *names; /* tuple of interned str */
    unsigned long long v[FAB_MAX_COUNTERS]; /* changed under the GIL only */
} CountersObject;

static PyObject *Counters_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "_Counters(*names) takes no keyword arguments");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n > FAB_MAX_COUNTERS) {
        PyErr_Format(PyExc_ValueError, "at most %d counters", FAB_MAX_COUNTERS);
        return NULL;
    }
    PyObject *names = PyTuple_New(n);
    if (names == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(args, i);
        if (!PyUnicode_CheckExact(name)) {
            PyErr_Format(PyExc_TypeError, "a counter's name is a str, not %.100s",
                         Py_TYPE(name)->tp_name);
            Py_DECREF(names);
            return NULL;
        }
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name);
        PyTuple_SET_ITEM(names, i, name);
    }
    CountersObject *c = (CountersObject *)type->tp_alloc(type, 0);
    if (c == NULL) {
        Py_DECREF(names);
        return NULL;
    }
    c->names = names;
    return (PyObject *)c;
}

static void Counters_dealloc(CountersObject *c)
{
    PyTypeObject *tp = Py_TYPE(c);
    Py_XDECREF(c->names);
    tp->tp_free((PyObject *)c);
    Py_DECREF(tp);
}

/* The index of the counter called name, or -1 with KeyError. Names used in
 * the code are interned, so the pointer test finds them first. */
static int counter_index(CountersObject *c, PyObject *name)
{
    Py_ssize_t n = PyTuple_GET_SIZE(c->names);
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyTuple_GET_ITEM(c->names, i) == name)
            return (int)i;
    if (PyUnicode_Check(name))
        for (Py_ssize_t i = 0; i < n; i++)
            if (PyUnicode_Compare(PyTuple_GET_ITEM(c->names, i), name) == 0)
                return (int)i;
    PyErr_Format(PyExc_KeyError, "no counter %R", name);
    return -1;
}

static PyObject *Counters_add(CountersObject *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "add(name, n=1, /)");
        return NULL;
    }
    int i = counter_index(c, args[0]);
    if (i < 0)
        return NULL;
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
    c->v[i] += (unsigned long long)n;
    Py_RETURN_NONE;
}

static PyObject *Counters_items(CountersObject *c, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = PyTuple_GET_SIZE(c->names);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *pair = Py_BuildValue("(OK)", PyTuple_GET_ITEM(c->names, i), c->v[i]);
        if (pair == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, pair);
    }
    return out;
}

static PyObject *Counters_keys(CountersObject *c, PyObject *Py_UNUSED(ignored))
{
    return PySequence_List(c->names);
}

static PyObject *Counters_getitem(CountersObject *c, PyObject *name)
{
    int i = counter_index(c, name);
    return i < 0 ? NULL : PyLong_FromUnsignedLongLong(c->v[i]);
}

static Py_ssize_t Counters_len(CountersObject *c)
{
    return PyTuple_GET_SIZE(c->names);
}

static PyObject *Counters_iter(CountersObject *c)
{
    return PyObject_GetIter(c->names);
}

static PyObject *Counters_repr(CountersObject *c)
{
    PyObject *items = Counters_items(c, NULL);
    if (items == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("_Counters(%R)", items);
    Py_DECREF(items);
    return r;
}

static PyMethodDef Counters_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Counters_add, METH_FASTCALL,
     "add($self, name, n=1, /)\n--\n\nAdd n (>= 0) to the counter called name."},
    {"items", (PyCFunction)Counters_items, METH_NOARGS,
     "items($self, /)\n--\n\nA list of (name, value) in the order the names were given."},
    {"keys", (PyCFunction)Counters_keys, METH_NOARGS,
     "keys($self, /)\n--\n\nThe counters' names, in order."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Counters_slots[] = {
    {Py_tp_doc, "_Counters(*names)\n--\n\n"
                "A fixed set of named counters that only grow (at most 16): add(name, n),\n"
                "c[name], items(). Every fabric keeps its stats() in one; changed under\n"
                "the GIL, so an add() from any thread is never lost."},
    {Py_tp_new, Counters_new},
    {Py_tp_dealloc, Counters_dealloc},
    {Py_tp_methods, Counters_methods},
    {Py_tp_repr, Counters_repr},
    {Py_tp_iter, Counters_iter},
    {Py_mp_subscript, Counters_getitem},
    {Py_mp_length, Counters_len},
    {0, NULL},
};

static PyType_Spec Counters_spec = {
    .name = "fabric._core._Counters",
    .basicsize = sizeof(CountersObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Counters_slots,
};

/* ======================================================================== */
/* The memo of held replies                                                  */
/* ======================================================================== */

/*
 * A hit decodes nothing when the reply is in the memo: a direct-mapped
 * table of REPLY_SLOTS entries, indexed by the key's digest (uniformly
 * random), holding the reply's parts as decoded once, with the stamp of
 * the record they were decoded from (its offset and the ledger's
 * generation). It is sound because a record never changes; but a key can
 * be deleted (or expire, or be evicted by a compaction) and recorded again,
 * so each hit asks the cassette where the key's record is now (a lookup,
 * no decode) and uses the memo only when that is the same record. A closed
 * cassette or one that lost the key answers as before. Only an EvalCassette
 * (exactly that type) is memoized: any other cassette is asked for the
 * reply on every hit.
 *
 * No caller ever gets an object another caller can reach: the memo keeps
 * its own copy and every hit gets fresh lists and dicts (thaw), sharing
 * only immutable leaves (str, bytes, int, float, bool, None, Ext,
 * Timestamp, REDACTED, and tuples of them). A reply holding any other
 * object, or more than REPLY_MAX_NODES objects, is not memoized (it is
 * decoded on every hit, as before).
 */
#define REPLY_SLOTS 256
#define REPLY_MAX_NODES 256
#define REPLY_MAX_DEPTH 16

typedef struct {
    uint8_t digest[FAB_SHA256_LEN];
    uint64_t stamp[2];               /* where the record was (fab_py_cassette_stamp) */
    PyObject *value, *diags, *trace; /* NULL: the slot is empty */
} reply_slot;

/*
 * The memo of held records' bytes (_lookup_record, a node's hit): the
 * bytes of a held reply's record ([value, list(diagnostics), trace],
 * fabric.replies.reply_record) as encode_held_reply writes them, in either
 * encoding a single reply travels in (canonical, or the value encoding for
 * a peer that announced "values": data[1]), kept for RECORD_SLOTS keys (direct-mapped by the digest), with their
 * record's stamp. Sound as the memo above is (each hit asks the cassette
 * whether the key's record is still the one stamped), and only for a reply the memo above
 * could keep (immutable leaves whose encoding cannot change: no object of
 * a registered type) whose record is at most RECORD_MAX_BYTES: at most
 * RECORD_SLOTS * RECORD_MAX_BYTES (4 MiB) of bytes. A hit decodes and
 * encodes nothing, and builds no reply.
 */
#define RECORD_SLOTS 4096
#define RECORD_MAX_BYTES 1024

typedef struct {
    uint8_t digest[FAB_SHA256_LEN];
    uint64_t stamp[2]; /* where the record was (fab_py_cassette_stamp) */
    PyObject *data[2]; /* bytes, canonical and value-encoded; NULL: not kept */
} record_slot;

/* 0: o is immutable (shared as is); 1: it holds lists or dicts (thawed on
 * each hit); -1: not memoizable. *budget counts objects down. */
static int frozen_kind(fab_state *st, PyObject *o, int depth, Py_ssize_t *budget)
{
    if (--*budget < 0 || depth > REPLY_MAX_DEPTH)
        return -1;
    PyTypeObject *t = Py_TYPE(o);
    if (o == Py_None || t == &PyUnicode_Type || t == &PyLong_Type || t == &PyFloat_Type ||
        t == &PyBool_Type || t == &PyBytes_Type || t == st->Ext_Type ||
        t == st->Timestamp_Type || o == st->redacted)
        return 0;
    int kind = 0;
    if (t == &PyTuple_Type || t == &PyList_Type) {
        for (Py_ssize_t i = 0; i < Py_SIZE(o); i++) {
            PyObject *x = t == &PyList_Type ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
            int k = frozen_kind(st, x, depth + 1, budget);
            if (k < 0)
                return -1;
            kind |= k;
        }
        return t == &PyList_Type ? 1 : kind;
    }
    if (t == &PyDict_Type) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(o, &pos, &k, &v)) {
            if (frozen_kind(st, k, depth + 1, budget) != 0)
                return -1;
            if (frozen_kind(st, v, depth + 1, budget) < 0)
                return -1;
        }
        return 1;
    }
    return -1;
}

/* A copy of o (of a kind frozen_kind accepted) with fresh lists and dicts;
 * immutable parts are shared. New reference. */
static PyObject *thaw(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyList_Type || t == &PyTuple_Type) {
        Py_ssize_t n = Py_SIZE(o);
        int list = t == &PyList_Type;
        PyObject *out = NULL;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *x = list ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
            PyObject *y = thaw(x);
            if (y == NULL) {
                Py_XDECREF(out);
                return NULL;
            }
            if (out == NULL && (list || y != x)) {
                /* the first part that needs a copy (a list copies at once) */
                out = list ? PyList_New(n) : PyTuple_New(n);
                if (out == NULL) {
                    Py_DECREF(y);
                    return NULL;
                }
                for (Py_ssize_t j = 0; j < i; j++) {
                    PyObject *z = Py_NewRef(list ? PyList_GET_ITEM(o, j) : PyTuple_GET_ITEM(o, j));
                    if (list)
                        PyList_SET_ITEM(out, j, z);
                    else
                        PyTuple_SET_ITEM(out, j, z);
                }
            }
            if (out == NULL) {
                Py_DECREF(y);
                continue;
            }
            if (list)
                PyList_SET_ITEM(out, i, y);
            else
                PyTuple_SET_ITEM(out, i, y);
        }
        return out != NULL ? out : (list ? PyList_New(0) : Py_NewRef(o));
    }
    if (t == &PyDict_Type) {
        PyObject *out = PyDict_New();
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (out != NULL && PyDict_Next(o, &pos, &k, &v)) {
            PyObject *y = thaw(v);
            if (y == NULL || PyDict_SetItem(out, k, y) < 0)
                Py_CLEAR(out);
            Py_XDECREF(y);
        }
        return out;
    }
    return Py_NewRef(o);
}

/* ======================================================================== */
/* The call memo: fab.call(op, *args, **kwargs) -> its request               */
/* ======================================================================== */

/*
 * fab.call(op, ...) builds a request (canonical encoding, SHA-256) on every
 * call. For an Op (exactly the class handed to __init__) called with
 * arguments whose equality means equal canonical bytes, the request is
 * kept: a direct-mapped table of CALL_SLOTS entries keyed by the op object,
 * the keyword names and the arguments. Such arguments are None, bool, int,
 * str and bytes (at most CALL_MAX_LEN long), float (compared bit for bit,
 * so 0.0 and -0.0 differ), and tuples of them; any other argument (a list,
 * a dict, ...) builds the request every time. A kept request is immutable,
 * and an Op's name, version and capabilities cannot change once made, so a
 * kept request is the one the op would build again.
 */
#define CALL_SLOTS 256
#define CALL_MAX_LEN 256
#define CALL_MAX_DEPTH 4

typedef struct {
    Py_hash_t hash;
    PyObject *entry; /* (op, request, kwnames or None, arg0, arg1, ...) or NULL */
} call_slot;

/* A hash of a memoizable argument, or -1 if it is not one. */
static Py_hash_t arg_hash(PyObject *o, int depth)
{
    PyTypeObject *t = Py_TYPE(o);
    Py_uhash_t h = (Py_uhash_t)(uintptr_t)t * 0x9E3779B97F4A7C15ULL;
    if (o == Py_None || t == &PyBool_Type)
        return (Py_hash_t)(h ^ (Py_uhash_t)(uintptr_t)o);
    if (t == &PyLong_Type || t == &PyFloat_Type ||
        ((t == &PyUnicode_Type || t == &PyBytes_Type) && Py_SIZE(o) <= CALL_MAX_LEN &&
         (t != &PyUnicode_Type || PyUnicode_GET_LENGTH(o) <= CALL_MAX_LEN))) {
        Py_hash_t x = PyObject_Hash(o);
        if (x == -1) {
            PyErr_Clear();
            return -1;
        }
        h ^= (Py_uhash_t)x;
        return (Py_hash_t)(h == (Py_uhash_t)-1 ? 7 : h);
    }
    if (t == &PyTuple_Type && depth < CALL_MAX_DEPTH && PyTuple_GET_SIZE(o) <= 16) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(o); i++) {
            Py_hash_t x = arg_hash(PyTuple_GET_ITEM(o, i), depth + 1);
            if (x == -1)
                return -1;
            h = (h ^ (Py_uhash_t)x) * 1099511628211ULL;
        }
        return (Py_hash_t)(h == (Py_uhash_t)-1 ? 7 : h);
    }
    return -1;
}

/* Whether two memoizable arguments have the same canonical bytes (1/0). */
static int arg_same(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    PyTypeObject *t = Py_TYPE(a);
    if (t != Py_TYPE(b))
        return 0;
    if (t == &PyFloat_Type) {
        double x = PyFloat_AS_DOUBLE(a), y = PyFloat_AS_DOUBLE(b);
        return memcmp(&x, &y, sizeof x) == 0;
    }
    if (t == &PyTuple_Type) {
        if (PyTuple_GET_SIZE(a) != PyTuple_GET_SIZE(b))
            return 0;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(a); i++)
            if (!arg_same(PyTuple_GET_ITEM(a, i), PyTuple_GET_ITEM(b, i)))
                return 0;
        return 1;
    }
    /* int, str, bytes (None and bool are singletons): equal means same bytes */
    int eq = PyObject_RichCompareBool(a, b, Py_EQ);
    if (eq < 0) {
        PyErr_Clear();
        return 0;
    }
    return eq;
}

static int names_same(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    if (a == Py_None || b == NULL || PyTuple_GET_SIZE(a) != PyTuple_GET_SIZE(b))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(a); i++) {
        PyObject *x = PyTuple_GET_ITEM(a, i), *y = PyTuple_GET_ITEM(b, i);
        if (x != y && PyUnicode_Compare(x, y) != 0)
            return 0;
    }
    return 1;
}

/* The hash of a call (op, args[1..n), kwnames), or -1 if one of its
 * arguments is not memoizable. */
static Py_hash_t call_hash(PyObject *const *args, Py_ssize_t n, PyObject *kwnames)
{
    Py_uhash_t h = (Py_uhash_t)(uintptr_t)args[0] * 0x100000001B3ULL;
    for (Py_ssize_t i = 1; i < n; i++) {
        Py_hash_t x = arg_hash(args[i], 0);
        if (x == -1)
            return -1;
        h = (h ^ (Py_uhash_t)x) * 1099511628211ULL + (Py_uhash_t)i;
    }
    if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++)
            h = (h ^ (Py_uhash_t)PyObject_Hash(PyTuple_GET_ITEM(kwnames, i))) * 31;
    }
    return (Py_hash_t)(h == (Py_uhash_t)-1 ? 7 : h);
}

/* ======================================================================== */
/* ContentAddressedFabricCore                                                */
/* ======================================================================== */

/* The counters of a ContentAddressedFabric, in this order. */
static const char *const counter_names[] = {
    "local_hits", "peer_hits", "home_computes", "failures", "denied", "bytes_recorded",
};
enum { CAF_local_hits, CAF_peer_hits, CAF_home_computes, CAF_failures, CAF_denied,
       CAF_bytes_recorded };

typedef struct {
    PyObject_HEAD
    PyObject *node;     /* str */
    PyObject *cassette; /* the cassette (an EvalCassette, or anything with its interface) */
    PyObject *get;      /* callable: key -> reply record or None (the cassette's get) */
    PyObject *miss;     /* callable: (fabric, request, grants, timeout) -> reply */
    PyObject *grants;   /* frozenset: the default grants of callers */
    CountersObject *stats;
    /* call(): the Op class, Op.request, and the general call (Python) */
    PyObject *op_class, *request_of, *general_call;
    reply_slot *replies;   /* REPLY_SLOTS, made on first use */
    record_slot *records;  /* RECORD_SLOTS, made on first use */
    call_slot *calls;      /* CALL_SLOTS, made on first use */
} CAFObject;

static void memo_clear(CAFObject *self)
{
    if (self->replies != NULL) {
        reply_slot *r = self->replies;
        self->replies = NULL;
        for (int i = 0; i < REPLY_SLOTS; i++) {
            Py_XDECREF(r[i].value);
            Py_XDECREF(r[i].diags);
            Py_XDECREF(r[i].trace);
        }
        PyMem_Free(r);
    }
    if (self->records != NULL) {
        record_slot *r = self->records;
        self->records = NULL;
        for (int i = 0; i < RECORD_SLOTS; i++) {
            Py_XDECREF(r[i].data[0]);
            Py_XDECREF(r[i].data[1]);
        }
        PyMem_Free(r);
    }
    if (self->calls != NULL) {
        call_slot *c = self->calls;
        self->calls = NULL;
        for (int i = 0; i < CALL_SLOTS; i++)
            Py_XDECREF(c[i].entry);
        PyMem_Free(c);
    }
}

static int CAF_init(CAFObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"node", "cassette", "lookup", "miss", "grants", "op_class",
                             "request_of", "general_call", NULL};
    PyObject *node, *cassette, *get, *miss, *grants = NULL, *op_class = NULL,
             *request_of = NULL, *general_call = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UOOO|O$OOO:ContentAddressedFabricCore",
                                     kwlist, &node, &cassette, &get, &miss, &grants,
                                     &op_class, &request_of, &general_call))
        return -1;
    if (PyUnicode_GET_LENGTH(node) == 0) {
        PyErr_SetString(PyExc_TypeError, "node must be a non-empty str");
        return -1;
    }
    if (!PyCallable_Check(get) || !PyCallable_Check(miss)) {
        PyErr_SetString(PyExc_TypeError, "lookup and miss must be callables");
        return -1;
    }
    if (op_class == Py_None)
        op_class = NULL;
    if (request_of == Py_None)
        request_of = NULL;
    if (general_call == Py_None)
        general_call = NULL;
    if ((op_class != NULL && !PyType_Check(op_class)) ||
        (request_of != NULL && !PyCallable_Check(request_of)) ||
        (general_call != NULL && !PyCallable_Check(general_call))) {
        PyErr_SetString(PyExc_TypeError, "op_class must be a class, request_of and "
                                         "general_call callables");
        return -1;
    }
    PyObject *g = grants ? as_grants(grants) : PyFrozenSet_New(NULL);
    if (g == NULL)
        return -1;
    fab_state *st = fab_state_from_type(Py_TYPE(self));
    PyObject *names = st ? Py_BuildValue("(ssssss)", counter_names[0], counter_names[1],
                                         counter_names[2], counter_names[3], counter_names[4],
                                         counter_names[5])
                         : NULL;
    PyObject *stats = names ? Counters_new(st->Counters_Type, names, NULL) : NULL;
    Py_XDECREF(names);
    if (stats == NULL) {
        Py_DECREF(g);
        return -1;
    }
    memo_clear(self);
    Py_XSETREF(self->node, Py_NewRef(node));
    Py_XSETREF(self->cassette, Py_NewRef(cassette));
    Py_XSETREF(self->get, Py_NewRef(get));
    Py_XSETREF(self->miss, Py_NewRef(miss));
    Py_XSETREF(self->grants, g);
    Py_XSETREF(self->stats, (CountersObject *)stats);
    Py_XSETREF(self->op_class, Py_XNewRef(op_class));
    Py_XSETREF(self->request_of, Py_XNewRef(request_of));
    Py_XSETREF(self->general_call, Py_XNewRef(general_call));
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
    Py_VISIT(self->stats);
    Py_VISIT(self->op_class);
    Py_VISIT(self->request_of);
    Py_VISIT(self->general_call);
    if (self->replies != NULL)
        for (int i = 0; i < REPLY_SLOTS; i++) {
            Py_VISIT(self->replies[i].value);
            Py_VISIT(self->replies[i].diags);
            Py_VISIT(self->replies[i].trace);
        }
    if (self->calls != NULL)
        for (int i = 0; i < CALL_SLOTS; i++)
            Py_VISIT(self->calls[i].entry);
    return 0;
}

static int CAF_clear(CAFObject *self)
{
    memo_clear(self);
    Py_CLEAR(self->node);
    Py_CLEAR(self->cassette);
    Py_CLEAR(self->get);
    Py_CLEAR(self->miss);
    Py_CLEAR(self->grants);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->op_class);
    Py_CLEAR(self->request_of);
    Py_CLEAR(self->general_call);
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
 * counted. *stream is the request's stream flag, *digest its digest. 0 or -1. */
static int check(fab_state *st, CAFObject *self, PyObject *request, PyObject *g, int *stream,
                 const uint8_t **digest)
{
    PyObject *caps;
    if (fab_py_request_info(st, request, digest, &caps, stream) < 0)
        return -1;
    if (check_caps(st, request, caps, NULL, g, NULL, self->node) < 0) {
        if (PyErr_ExceptionMatches(st->exc[FAB_PYEXC_CapabilityDenied]))
            self->stats->v[CAF_denied]++;
        return -1;
    }
    return 0;
}

/* Whether the fabric's cassette still holds the request's key at the
 * record stamped (a memo entry is still good). 1, 0, -1. */
static int memo_still(fab_state *st, CAFObject *self, PyObject *request, const uint64_t stamp[2])
{
    PyObject *key = fab_py_request_key(st, request);
    if (key == NULL)
        return -1;
    uint64_t now[2];
    int has = Py_IS_TYPE(self->cassette, st->EvalCassette_Type)
                  ? fab_py_cassette_stamp(st, self->cassette, key, now) : 0;
    Py_DECREF(key);
    return has < 0 ? -1 : has && now[0] == stamp[0] && now[1] == stamp[1];
}

static Py_ssize_t reply_slot_of(const uint8_t *digest)
{
    return (Py_ssize_t)(((unsigned)digest[0] | (unsigned)digest[1] << 8) % REPLY_SLOTS);
}

/* Keeps the parts of a reply just decoded for key (digest) in the memo, if
 * they are memoizable; the memo's copy is its own. Never fails (a reply
 * that cannot be kept is simply not kept). */
static void memo_keep(fab_state *st, CAFObject *self, const uint8_t *digest, PyObject *reply,
                      const uint64_t stamp[2])
{
    PyObject *value, *diags, *trace;
    Py_ssize_t budget = REPLY_MAX_NODES;
    if (fab_py_reply_parts(st, reply, &value, &diags, &trace) < 0 ||
        frozen_kind(st, value, 0, &budget) < 0 || frozen_kind(st, diags, 0, &budget) < 0 ||
        frozen_kind(st, trace, 0, &budget) < 0)
        goto done;
    if (self->replies == NULL &&
        (self->replies = PyMem_Calloc(REPLY_SLOTS, sizeof(reply_slot))) == NULL)
        goto done;
    PyObject *v = thaw(value), *d = thaw(diags), *t = thaw(trace);
    if (v == NULL || d == NULL || t == NULL) {
        Py_XDECREF(v);
        Py_XDECREF(d);
        Py_XDECREF(t);
        goto done;
    }
    reply_slot *s = &self->replies[reply_slot_of(digest)];
    PyObject *ov = s->value, *od = s->diags, *ot = s->trace;
    memcpy(s->digest, digest, FAB_SHA256_LEN);
    s->stamp[0] = stamp[0];
    s->stamp[1] = stamp[1];
    s->value = v;
    s->diags = d;
    s->trace = t;
    Py_XDECREF(ov);
    Py_XDECREF(od);
    Py_XDECREF(ot);
done:
    PyErr_Clear();
}

/* The hit path for a checked, non-stream request: a new reference to the
 * held reply, Py_None (new reference) on a miss, NULL on error. *stamped
 * (when not NULL) is set to 1 when the reply came from an EvalCassette
 * record whose stamp is in stamp (it may be memoized), else 0. */
static PyObject *held(fab_state *st, CAFObject *self, PyObject *request, const uint8_t *digest,
                      uint64_t stamp[2], int *stamped)
{
    PyObject *key = fab_py_request_key(st, request);
    if (key == NULL)
        return NULL;
    if (stamped != NULL)
        *stamped = 0;
    PyObject *reply = NULL, *rec;
    if (!Py_IS_TYPE(self->cassette, st->EvalCassette_Type)) {
        /* Another cassette: asked every time, nothing memoized. */
        rec = PyObject_Vectorcall(self->get, &key, 1, NULL);
        reply = rec;
        if (rec != NULL && rec != Py_None) {
            reply = fab_py_reply_from_record(st, rec, key, st->str_local);
            Py_DECREF(rec);
            if (reply != NULL)
                self->stats->v[CAF_local_hits]++;
        }
        goto done;
    }
    reply_slot *s = self->replies ? &self->replies[reply_slot_of(digest)] : NULL;
    if (s != NULL && s->value != NULL && memcmp(s->digest, digest, FAB_SHA256_LEN) == 0) {
        /* In the memo: the cassette still holds that record? (no decode) */
        uint64_t now[2];
        int has = fab_py_cassette_stamp(st, self->cassette, key, now);
        if (has < 0)
            goto done;
        if (has && now[0] == s->stamp[0] && now[1] == s->stamp[1]) {
            PyObject *v = thaw(s->value), *d = thaw(s->diags), *t = thaw(s->trace);
            if (v != NULL && d != NULL && t != NULL)
                reply = fab_py_reply_make(st, v, d, t, key, st->str_local);
            Py_XDECREF(v);
            Py_XDECREF(d);
            Py_XDECREF(t);
            if (reply != NULL) {
                self->stats->v[CAF_local_hits]++;
                if (stamped != NULL) {
                    stamp[0] = now[0];
                    stamp[1] = now[1];
                    *stamped = 1;
                }
            }
            goto done;
        }
    }
    uint64_t at[2];
    rec = fab_py_cassette_get_stamped(st, self->cassette, key, at);
    reply = rec;
    if (rec != NULL && rec != Py_None) {
        reply = fab_py_reply_from_record(st, rec, key, st->str_local);
        Py_DECREF(rec);
        if (reply != NULL) {
            self->stats->v[CAF_local_hits]++;
            memo_keep(st, self, digest, reply, at);
            if (stamped != NULL) {
                stamp[0] = at[0];
                stamp[1] = at[1];
                *stamped = 1;
            }
        }
    }
done:
    Py_DECREF(key);
    return reply;
}

/* The hit path: grants, then the held reply; Py_None (new reference) on a
 * miss or for a stream request, NULL on error. */
static PyObject *lookup(fab_state *st, CAFObject *self, PyObject *request, PyObject *g)
{
    int stream;
    const uint8_t *digest;
    /* A hit still checks the caller's grants: caching never weakens policy. */
    if (check(st, self, request, g, &stream, &digest) < 0)
        return NULL;
    /* A stream, or an uncacheable reply (never held: even a record planted
     * by hand under its key is not served), is resolved by the miss path. */
    if (stream || fab_py_request_uncacheable(request))
        Py_RETURN_NONE;
    return held(st, self, request, digest, NULL, NULL);
}

/* The bytes of reply's record ([value, list(diagnostics), trace]) in the
 * canonical encoding, or the value encoding (prefix included) when values:
 * what encode_held_reply writes for it. New reference. */
static PyObject *record_bytes(fab_state *st, PyObject *reply, int values)
{
    PyObject *rec = fab_py_reply_record(st, reply);
    if (rec == NULL)
        return NULL;
    fab_buf buf;
    fab_buf_init(&buf);
    fab_enc enc;
    fab_enc_init(&enc, fab_buf_sink, &buf);
    PyObject *out = NULL;
    if ((values ? fab_py_encode_item(st, &enc, rec, "reply")
                : fab_py_encode_value(st, &enc, rec, "reply")) == 0)
        out = PyBytes_FromStringAndSize((const char *)buf.data, (Py_ssize_t)buf.len);
    fab_buf_destroy(&buf);
    Py_DECREF(rec);
    return out;
}

static Py_ssize_t record_slot_of(const uint8_t *digest)
{
    return (Py_ssize_t)(((unsigned)digest[2] | (unsigned)digest[3] << 8) % RECORD_SLOTS);
}

/* Keeps data (reply's record bytes) for key (digest) when the memo of
 * replies could keep reply and data is small enough. Never fails. */
static void record_keep(fab_state *st, CAFObject *self, const uint8_t *digest, PyObject *reply,
                        PyObject *data, int values, const uint64_t stamp[2])
{
    PyObject *value, *diags, *trace;
    Py_ssize_t budget = REPLY_MAX_NODES;
    if (PyBytes_GET_SIZE(data) > RECORD_MAX_BYTES ||
        fab_py_reply_parts(st, reply, &value, &diags, &trace) < 0 ||
        frozen_kind(st, value, 0, &budget) < 0 || frozen_kind(st, diags, 0, &budget) < 0 ||
        frozen_kind(st, trace, 0, &budget) < 0)
        goto done;
    if (self->records == NULL &&
        (self->records = PyMem_Calloc(RECORD_SLOTS, sizeof(record_slot))) == NULL)
        goto done;
    record_slot *s = &self->records[record_slot_of(digest)];
    if (memcmp(s->digest, digest, FAB_SHA256_LEN) != 0 || s->stamp[0] != stamp[0] ||
        s->stamp[1] != stamp[1]) {
        /* another record: the other encoding's bytes are not its own */
        Py_CLEAR(s->data[!values]);
        memcpy(s->digest, digest, FAB_SHA256_LEN);
        s->stamp[0] = stamp[0];
        s->stamp[1] = stamp[1];
    }
    Py_XSETREF(s->data[values], Py_NewRef(data));
done:
    PyErr_Clear();
}

/* _lookup_record: the held reply's record bytes (at most limit of them;
 * canonical, or the value encoding when values), else the reply itself
 * (its record is longer), Py_None when not held or a stream; grants
 * checked first, the hit counted, as lookup(). */
static PyObject *lookup_record(fab_state *st, CAFObject *self, PyObject *request, PyObject *g,
                               uint64_t limit, int values)
{
    int stream;
    const uint8_t *digest;
    if (check(st, self, request, g, &stream, &digest) < 0)
        return NULL;
    if (stream || fab_py_request_uncacheable(request))
        Py_RETURN_NONE;
    record_slot *s = self->records ? &self->records[record_slot_of(digest)] : NULL;
    PyObject *kept = s != NULL ? s->data[values] : NULL;
    if (kept != NULL && memcmp(s->digest, digest, FAB_SHA256_LEN) == 0 &&
        (uint64_t)PyBytes_GET_SIZE(kept) <= limit) {
        /* In the memo: the cassette still holds that record? (no decode) */
        int has = memo_still(st, self, request, s->stamp);
        if (has < 0)
            return NULL;
        if (has) {
            self->stats->v[CAF_local_hits]++;
            return Py_NewRef(kept);
        }
    }
    uint64_t stamp[2];
    int stamped;
    PyObject *reply = held(st, self, request, digest, stamp, &stamped);
    if (reply == NULL || reply == Py_None)
        return reply;
    PyObject *data = record_bytes(st, reply, values);
    if (data == NULL) {
        Py_DECREF(reply);
        return NULL;
    }
    if (stamped)
        record_keep(st, self, digest, reply, data, values, stamp);
    if ((uint64_t)PyBytes_GET_SIZE(data) > limit) {
        Py_DECREF(data);
        return reply;
    }
    Py_DECREF(reply);
    return data;
}

/* A node's hit answered in C (FrameDecoder.serve_hits): fabric (a
 * ContentAddressedFabricCore) ._lookup_record(request, limit, grants=g,
 * values=values). */
PyObject *fab_py_caf_record(fab_state *st, PyObject *fabric, PyObject *request, PyObject *g,
                            uint64_t limit, int values)
{
    CAFObject *self = (CAFObject *)fabric;
    if (ready(self) < 0 || (g = call_grants(g, self->grants)) == NULL)
        return NULL;
    PyObject *out = lookup_record(st, self, request, g, limit, values);
    Py_DECREF(g);
    return out;
}

static const char *const call_names[] = {"request", "grants", "timeout"};
static const fab_py_params evaluate_params = {"evaluate", call_names, 3, 1, 1, 1};
static const fab_py_params lookup_params = {"_lookup", call_names, 2, 1, 1, 1};
static const fab_py_params check_params = {"_check", call_names, 2, 1, 1, 1};

/* evaluate()'s timeout: None or seconds >= 0, refused with the messages the
 * Python fabrics give (fabrics._check_timeout), on a hit as on a miss. */
static int check_timeout(PyObject *t)
{
    if (t == Py_None)
        return 0;
    if (PyBool_Check(t) || !(PyLong_Check(t) || PyFloat_Check(t))) {
        PyErr_Format(PyExc_TypeError, "timeout must be a number of seconds or None, not %.100s",
                     Py_TYPE(t)->tp_name);
        return -1;
    }
    double v = PyFloat_AsDouble(t);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(v) || v < 0) {
        PyErr_Format(PyExc_ValueError, "timeout must be >= 0 seconds or None, not %R", t);
        return -1;
    }
    return 0;
}

static PyObject *CAF_evaluate(CAFObject *self, PyTypeObject *defining_class,
                              PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    fab_state *st = PyType_GetModuleState(defining_class);
    PyObject *a[3] = {NULL, Py_None, Py_None};
    if (ready(self) < 0 || fab_py_parse(&evaluate_params, args, nargsf, kwnames, a) < 0 ||
        check_timeout(a[2]) < 0)
        return NULL;
    PyObject *g = call_grants(a[1], self->grants);
    if (g == NULL)
        return NULL;
    PyObject *reply = lookup(st, self, a[0], g);
    if (reply == Py_None) {
        /* The miss leaves C: the resolution is the Python code handed to us. */
        Py_DECREF(reply);
        PyObject *argv[] = {(PyObject *)self, a[0], g, a[2]};
        reply = PyObject_Vectorcall(self->miss, argv, 4, NULL);
    }
    Py_DECREF(g);
    return reply;
}

static const char *const record_names[] = {"request", "limit", "grants", "values"};
static const fab_py_params lookup_record_params = {"_lookup_record", record_names, 4, 2, 2, 2};

/* _lookup_record's limit argument: an int >= 0 (beyond UINT64_MAX counts as it). */
static int record_limit(PyObject *arg, uint64_t *out)
{
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "_lookup_record(): limit must be an int, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return -1;
    }
    unsigned long long limit = PyLong_AsUnsignedLongLong(arg);
    if (limit == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        if (_PyLong_Sign(arg) < 0) {
            PyErr_SetString(PyExc_ValueError, "_lookup_record(): limit must be >= 0");
            return -1;
        }
        limit = UINT64_MAX;
    }
    *out = (uint64_t)limit;
    return 0;
}

/* _lookup (record 0) and _lookup_record (record 1): the arguments are
 * (request, [limit,] *, grants=None), read in that order. */
static PyObject *lookup_call(CAFObject *self, PyTypeObject *defining_class, int record,
                             PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    fab_state *st = PyType_GetModuleState(defining_class);
    PyObject *a[4] = {NULL, record ? NULL : Py_None, Py_None, Py_False};
    uint64_t limit = 0;
    if (ready(self) < 0 ||
        fab_py_parse(record ? &lookup_record_params : &lookup_params, args, nargsf, kwnames,
                     a) < 0 ||
        (record && record_limit(a[1], &limit) < 0))
        return NULL;
    PyObject *g = call_grants(a[record ? 2 : 1], self->grants);
    if (g == NULL)
        return NULL;
    int values = record ? PyObject_IsTrue(a[3]) : 0;
    if (values < 0) {
        Py_DECREF(g);
        return NULL;
    }
    PyObject *out = record ? lookup_record(st, self, a[0], g, limit, values)
                           : lookup(st, self, a[0], g);
    Py_DECREF(g);
    return out;
}

static PyObject *CAF_lookup(CAFObject *self, PyTypeObject *defining_class,
                            PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    return lookup_call(self, defining_class, 0, args, nargsf, kwnames);
}

static PyObject *CAF_lookup_record(CAFObject *self, PyTypeObject *defining_class,
                                   PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    return lookup_call(self, defining_class, 1, args, nargsf, kwnames);
}

static PyObject *CAF_check(CAFObject *self, PyTypeObject *defining_class,
                           PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    fab_state *st = PyType_GetModuleState(defining_class);
    PyObject *a[2] = {NULL, Py_None};
    int stream;
    if (ready(self) < 0 || fab_py_parse(&check_params, args, nargsf, kwnames, a) < 0)
        return NULL;
    PyObject *g = call_grants(a[1], self->grants);
    if (g != NULL && check(st, self, a[0], g, &stream, NULL) < 0)
        Py_CLEAR(g);
    return g;
}

/* The request for op(*args, **kwargs) (args[0] is the op): from the call
 * memo, else built by request_of (Op.request) and kept. New reference. */
static PyObject *call_request(CAFObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0, n = nargs + nkw;
    Py_hash_t h = call_hash(args, n, kwnames);
    call_slot *s = NULL;
    if (h != -1 && self->calls != NULL) {
        s = &self->calls[(Py_uhash_t)h % CALL_SLOTS];
        PyObject *e = s->entry;
        if (e != NULL && s->hash == h && PyTuple_GET_SIZE(e) == n + 2 &&
            PyTuple_GET_ITEM(e, 0) == args[0] &&
            names_same(PyTuple_GET_ITEM(e, 2), kwnames)) {
            Py_ssize_t i = 1;
            while (i < n && arg_same(PyTuple_GET_ITEM(e, i + 2), args[i]))
                i++;
            if (i == n)
                return Py_NewRef(PyTuple_GET_ITEM(e, 1));
        }
    }
    PyObject *request = PyObject_Vectorcall(self->request_of, args, nargs, kwnames);
    if (request == NULL || h == -1)
        return request;
    if (self->calls == NULL && (self->calls = PyMem_Calloc(CALL_SLOTS, sizeof(call_slot))) == NULL)
        return request;
    PyObject *e = PyTuple_New(n + 2);
    if (e == NULL) {
        PyErr_Clear();
        return request;
    }
    PyTuple_SET_ITEM(e, 0, Py_NewRef(args[0]));
    PyTuple_SET_ITEM(e, 1, Py_NewRef(request));
    PyTuple_SET_ITEM(e, 2, Py_NewRef(kwnames ? kwnames : Py_None));
    for (Py_ssize_t i = 1; i < n; i++)
        PyTuple_SET_ITEM(e, i + 2, Py_NewRef(args[i]));
    s = &self->calls[(Py_uhash_t)h % CALL_SLOTS];
    s->hash = h;
    Py_XSETREF(s->entry, e);
    return request;
}

static PyObject *CAF_call(CAFObject *self, PyTypeObject *defining_class, PyObject *const *args,
                          Py_ssize_t nargsf, PyObject *kwnames)
{
    fab_state *st = PyType_GetModuleState(defining_class);
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (ready(self) < 0)
        return NULL;
    if (nargs >= 1 && self->op_class != NULL && self->request_of != NULL &&
        Py_IS_TYPE(args[0], (PyTypeObject *)self->op_class)) {
        PyObject *request = call_request(self, args, nargs, kwnames);
        if (request == NULL)
            return NULL;
        int stream;
        const uint8_t *digest;
        PyObject *reply = NULL;
        if (check(st, self, request, self->grants, &stream, &digest) < 0) {
            Py_DECREF(request);
            return NULL;
        }
        if (!stream) {
            /* In the reply memo and still held: the value alone, no reply.
             * An uncacheable request is never a hit (the miss path computes). */
            int cacheable = !fab_py_request_uncacheable(request);
            reply_slot *s = self->replies && cacheable
                                ? &self->replies[reply_slot_of(digest)] : NULL;
            if (s != NULL && s->value != NULL && memcmp(s->digest, digest, FAB_SHA256_LEN) == 0) {
                int has = memo_still(st, self, request, s->stamp);
                if (has < 0) {
                    Py_DECREF(request);
                    return NULL;
                }
                if (has) {
                    Py_DECREF(request);
                    self->stats->v[CAF_local_hits]++;
                    return thaw(s->value);
                }
            }
            reply = cacheable ? held(st, self, request, digest, NULL, NULL)
                              : Py_NewRef(Py_None);
            if (reply == Py_None) {
                Py_DECREF(reply);
                PyObject *argv[] = {(PyObject *)self, request, self->grants, Py_None};
                reply = PyObject_Vectorcall(self->miss, argv, 4, NULL);
            }
            Py_DECREF(request);
            if (reply == NULL)
                return NULL;
            PyObject *value = fab_py_reply_value(st, reply);
            Py_DECREF(reply);
            return value;
        }
        Py_DECREF(request); /* a stream: the general call makes its EvalStream */
    }
    if (self->general_call == NULL) {
        PyErr_SetString(PyExc_TypeError, "call(): no general_call was given to __init__");
        return NULL;
    }
    /* The general call (Python), as self.call(*args, **kwargs) would run it. */
    PyObject *small[8], **argv = small;
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    if (total + 1 > 8 && (argv = PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *))) == NULL)
        return PyErr_NoMemory();
    argv[0] = (PyObject *)self;
    memcpy(argv + 1, args, (size_t)total * sizeof(PyObject *));
    PyObject *out = PyObject_Vectorcall(self->general_call, argv, nargs + 1, kwnames);
    if (argv != small)
        PyMem_Free(argv);
    return out;
}

/* _hold(key, reply, request=None): records the reply ([value, diagnostics,
 * trace]) in the cassette, with the request's identity bytes beside it, and
 * counts its canonical bytes in bytes_recorded. */
static PyObject *CAF_hold(CAFObject *self, PyTypeObject *defining_class, PyObject *const *args,
                          Py_ssize_t nargsf, PyObject *kwnames)
{
    static const char *const names[] = {"key", "reply", "request"};
    static const fab_py_params params = {"_hold", names, 3, 2, 3, 2};
    fab_state *st = PyType_GetModuleState(defining_class);
    PyObject *a[3] = {NULL, NULL, Py_None}, *record;
    if (ready(self) < 0 || fab_py_parse(&params, args, nargsf, kwnames, a) < 0 ||
        (record = fab_py_reply_record(st, a[1])) == NULL)
        return NULL;
    size_t nbytes = 0;
    int rc = fab_py_cassette_record(st, self->cassette, a[0], record, a[2], &nbytes);
    Py_DECREF(record);
    if (rc < 0)
        return NULL;
    self->stats->v[CAF_bytes_recorded] += nbytes;
    Py_RETURN_NONE;
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

static PyObject *CAF_get_stats(CAFObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return Py_NewRef(self->stats ? (PyObject *)self->stats : Py_None);
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
    {"_stats", (getter)CAF_get_stats, NULL,
     "The counters (a _Counters: local_hits, peer_hits, home_computes, failures, denied,\n"
     "bytes_recorded).", NULL},
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
    {"call", (PyCFunction)(void (*)(void))CAF_call,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "call($self, op, /, *args, **kwargs)\n--\n\n"
     "Evaluate op(*args, **kwargs) through this fabric in one line: the value\n"
     "for an ordinary op, an EvalStream for a stream op (see EvalFabric.call)."},
    {"_hold", (PyCFunction)(void (*)(void))CAF_hold, METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "_hold($self, key, reply, /, request=None)\n--\n\nRecord reply under key in the cassette (as [value,\n"
     "diagnostics, trace]) and count its bytes in bytes_recorded."},
    {"_lookup", (PyCFunction)(void (*)(void))CAF_lookup,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "_lookup($self, request, /, *, grants=None)\n--\n\n"
     "The local hit for request, or None (grants are checked first)."},
    {"_lookup_record", (PyCFunction)(void (*)(void))CAF_lookup_record,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "_lookup_record($self, request, limit, /, *, grants=None, values=False)\n--\n\n"
     "The local hit for request as its record's bytes ([value,\n"
     "list(diagnostics), trace], as FrameEncoder.encode_held_reply writes\n"
     "them: canonical, or the value encoding when values) when they are at\n"
     "most limit bytes, else the reply itself; None when not held (grants\n"
     "are checked first, the hit counted as _lookup's)."},
    {"_check", (PyCFunction)(void (*)(void))CAF_check,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "_check($self, request, /, *, grants=None)\n--\n\n"
     "The caller's grants (a frozenset) once checked against the request's\n"
     "capabilities; CapabilityDenied (counted) if they fall short."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot CAF_slots[] = {
    {Py_tp_doc, "ContentAddressedFabricCore(node, cassette, lookup, miss, grants=frozenset(), *,\n"
                "                           op_class=None, request_of=None, general_call=None)\n"
                "--\n\n"
                "The C base of fabric.ContentAddressedFabric (use that class): answers\n"
                "evaluate() from the cassette (lookup(key) -> record or None) and hands a\n"
                "miss to miss(fabric, request, grants, timeout). call(op, ...) builds an\n"
                "op_class's request with request_of(op, ...) and anything else with\n"
                "general_call(fabric, op, ...)."},
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
    if ((st->Counters_Type = fab_py_add_type(module, &Counters_spec, NULL)) == NULL)
        return -1;
    if ((st->CAFCore_Type = fab_py_add_type(module, &CAF_spec, NULL)) == NULL)
        return -1;
    if ((st->str_local = PyUnicode_InternFromString("local")) == NULL)
        return -1;
    return 0;
}

int fab_py_addressed_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->Counters_Type);
    Py_VISIT(st->CAFCore_Type);
    return 0;
}

void fab_py_addressed_clear(fab_state *st)
{
    Py_CLEAR(st->Counters_Type);
    Py_CLEAR(st->CAFCore_Type);
    Py_CLEAR(st->str_local);
}
