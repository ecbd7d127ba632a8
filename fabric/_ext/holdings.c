/*
 * _Holdings: the holding index's fact store (csrc/holdings.c) for
 * fabric.holders.HoldingIndex, which keeps the Python API and the local
 * health. This file converts keys and holder names and maps errors.
 *
 * Holder names are interned twice over: the core keeps their UTF-8 bytes
 * (for snapshots and merges), and this object keeps the str of each id
 * (names[id]) and id of each str (ids[name]) so a lookup from Python never
 * re-encodes a name. Every call runs under the GIL, which serializes them.
 */
#include "glue.h"

#include "fabric/holdings.h"

typedef struct {
    PyObject_HEAD
    fab_holdings *h;
    PyObject *names; /* list: str of each holder id */
    PyObject *ids;   /* dict: str -> int id */
} HoldingsObject;

static fab_state *hstate(PyObject *self) { return fab_state_from_type(Py_TYPE(self)); }

/* The 32-byte digest of a ContentKey into out; -1 with TypeError otherwise. */
static int digest_of(fab_state *st, PyObject *key, uint8_t out[32])
{
    if (!PyObject_TypeCheck(key, st->ContentKey_Type)) {
        PyErr_Format(PyExc_TypeError, "a holding fact's key is a ContentKey, not %s",
                     Py_TYPE(key)->tp_name);
        return -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(key, &view, PyBUF_SIMPLE) < 0)
        return -1;
    int ok = view.len == 32;
    if (ok)
        memcpy(out, view.buf, 32);
    PyBuffer_Release(&view);
    if (!ok) {
        PyErr_SetString(PyExc_TypeError, "a ContentKey without a 32-byte digest");
        return -1;
    }
    return 0;
}

static int check_holder(PyObject *holder)
{
    if (!PyUnicode_Check(holder) || PyUnicode_GET_LENGTH(holder) == 0) {
        PyObject *r = PyObject_Repr(holder);
        if (r != NULL) {
            PyErr_Format(PyExc_TypeError, "a holder is a non-empty node id str, not %U", r);
            Py_DECREF(r);
        }
        return -1;
    }
    return 0;
}

/* Appends to names / ids every holder the core interned that they lack. */
static int sync_names(HoldingsObject *self)
{
    size_t n = fab_holdings_nholders(self->h);
    for (size_t i = (size_t)PyList_GET_SIZE(self->names); i < n; i++) {
        size_t len;
        const char *s = fab_holdings_holder_name(self->h, (uint32_t)i, &len);
        PyObject *name = PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "strict");
        PyObject *id = name ? PyLong_FromSize_t(i) : NULL;
        int rc = id ? PyList_Append(self->names, name) : -1;
        if (rc == 0)
            rc = PyDict_SetItem(self->ids, name, id);
        Py_XDECREF(name);
        Py_XDECREF(id);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* The id of holder (a checked str): 1 found, 0 unknown (intern == 0), -1 error. */
static int holder_id(HoldingsObject *self, PyObject *holder, int intern, uint32_t *id)
{
    PyObject *v = PyDict_GetItemWithError(self->ids, holder);
    if (v != NULL) {
        *id = (uint32_t)PyLong_AsUnsignedLong(v);
        return 1;
    }
    if (PyErr_Occurred())
        return -1;
    if (!intern)
        return 0;
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(holder, &len);
    if (s == NULL)
        return -1;
    int rc = fab_holdings_intern(self->h, s, (size_t)len, id);
    if (rc < 0) {
        fab_py_raise_code(hstate((PyObject *)self), rc, "holder name");
        return -1;
    }
    return sync_names(self) < 0 ? -1 : 1;
}

static PyObject *Holdings_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "_Holdings() takes no arguments");
        return NULL;
    }
    HoldingsObject *self = (HoldingsObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->names = PyList_New(0);
    self->ids = PyDict_New();
    if (self->names == NULL || self->ids == NULL || fab_holdings_new(&self->h) < 0) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Holdings_dealloc(HoldingsObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    fab_holdings_free(self->h);
    Py_XDECREF(self->names);
    Py_XDECREF(self->ids);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *raise_core(PyObject *self, int rc, const char *context)
{
    return fab_py_raise_code(hstate(self), rc, context);
}

static PyObject *Holdings_add(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    HoldingsObject *self = (HoldingsObject *)op;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add(key, holder) takes 2 arguments");
        return NULL;
    }
    uint8_t key[32];
    uint32_t id;
    if (digest_of(hstate(op), args[0], key) < 0 || check_holder(args[1]) < 0 ||
        holder_id(self, args[1], 1, &id) < 0)
        return NULL;
    int rc = fab_holdings_add(self->h, key, id);
    if (rc < 0)
        return raise_core(op, rc, "holding fact");
    return PyBool_FromLong(rc);
}

static PyObject *Holdings_add_facts(PyObject *op, PyObject *facts)
{
    HoldingsObject *self = (HoldingsObject *)op;
    fab_state *st = hstate(op);
    PyObject *seq = PySequence_Fast(facts, "facts must be an iterable of (key, holder)");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    uint8_t *keys = PyMem_Malloc(n ? (size_t)n * 32 : 1);
    uint32_t *hids = PyMem_Malloc(n ? (size_t)n * sizeof(uint32_t) : 1);
    PyObject *out = NULL;
    if (keys == NULL || hids == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* Every fact is checked before any is added. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = items[i];
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 2) {
            PyErr_Format(PyExc_TypeError, "a holding fact is a (key, holder) tuple, not %s",
                         Py_TYPE(f)->tp_name);
            goto done;
        }
        if (digest_of(st, PyTuple_GET_ITEM(f, 0), keys + 32 * i) < 0 ||
            check_holder(PyTuple_GET_ITEM(f, 1)) < 0)
            goto done;
    }
    size_t added = 0;
    int rc = fab_holdings_reserve(self->h, (size_t)n, (size_t)n);
    if (rc < 0) {
        raise_core(op, rc, "holding facts");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (holder_id(self, PyTuple_GET_ITEM(items[i], 1), 1, &hids[i]) < 0)
            goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        rc = fab_holdings_add(self->h, keys + 32 * i, hids[i]); /* room made: cannot fail */
        if (rc < 0) {
            raise_core(op, rc, "holding fact");
            goto done;
        }
        added += (size_t)rc;
    }
    out = PyLong_FromSize_t(added);
done:
    PyMem_Free(keys);
    PyMem_Free(hids);
    Py_DECREF(seq);
    return out;
}

static PyObject *add_packed(HoldingsObject *self, const uint8_t *keys, size_t n, PyObject *holder)
{
    uint32_t id;
    if (check_holder(holder) < 0 || holder_id(self, holder, 1, &id) < 0)
        return NULL;
    size_t added;
    int rc = fab_holdings_add_many(self->h, keys, n, id, &added);
    if (rc < 0)
        return raise_core((PyObject *)self, rc, "holding facts");
    return PyLong_FromSize_t(added);
}

static PyObject *Holdings_add_keys(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add_keys(keys, holder) takes 2 arguments");
        return NULL;
    }
    if (check_holder(args[1]) < 0)
        return NULL;
    fab_state *st = hstate(op);
    PyObject *it = PyObject_GetIter(args[0]);
    if (it == NULL)
        return NULL;
    size_t n = 0, cap = 4096;
    uint8_t *keys = PyMem_Malloc(cap * 32);
    PyObject *item, *out = NULL;
    if (keys == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    while ((item = PyIter_Next(it)) != NULL) {
        if (n == cap) {
            uint8_t *more = cap < PY_SSIZE_T_MAX / 64 ? PyMem_Realloc(keys, cap * 64) : NULL;
            if (more == NULL) {
                Py_DECREF(item);
                PyErr_NoMemory();
                goto done;
            }
            keys = more;
            cap *= 2;
        }
        int rc = digest_of(st, item, keys + 32 * n);
        Py_DECREF(item);
        if (rc < 0)
            goto done;
        n++;
    }
    if (!PyErr_Occurred())
        out = add_packed((HoldingsObject *)op, keys, n, args[1]);
done:
    PyMem_Free(keys);
    Py_DECREF(it);
    return out;
}

static PyObject *Holdings_add_packed(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add_packed(keys, holder) takes 2 arguments");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = NULL;
    if (view.len % 32 != 0)
        PyErr_Format(PyExc_ValueError, "packed keys: %zd bytes is not a multiple of 32", view.len);
    else
        out = add_packed((HoldingsObject *)op, view.buf, (size_t)view.len / 32, args[1]);
    PyBuffer_Release(&view);
    return out;
}

static PyObject *Holdings_has(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    HoldingsObject *self = (HoldingsObject *)op;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "has(key, holder) takes 2 arguments");
        return NULL;
    }
    uint8_t key[32];
    uint32_t id;
    if (!PyObject_TypeCheck(args[0], hstate(op)->ContentKey_Type) || !PyUnicode_Check(args[1]))
        Py_RETURN_FALSE;
    if (digest_of(hstate(op), args[0], key) < 0)
        return NULL;
    int found = holder_id(self, args[1], 0, &id);
    if (found < 0)
        return NULL;
    return PyBool_FromLong(found && fab_holdings_has(self->h, key, id));
}

static PyObject *Holdings_holders_of(PyObject *op, PyObject *key)
{
    HoldingsObject *self = (HoldingsObject *)op;
    uint8_t k[32];
    if (digest_of(hstate(op), key, k) < 0)
        return NULL;
    uint32_t few[16];
    uint32_t *ids = few;
    size_t n = fab_holdings_holders_of(self->h, k, few, 16);
    if (n > 16) {
        if ((ids = PyMem_Malloc(n * sizeof(uint32_t))) == NULL)
            return PyErr_NoMemory();
        fab_holdings_holders_of(self->h, k, ids, n);
    }
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out && i < n; i++)
        PyList_SET_ITEM(out, (Py_ssize_t)i, Py_NewRef(PyList_GET_ITEM(self->names, ids[i])));
    if (ids != few)
        PyMem_Free(ids);
    return out;
}

static PyObject *Holdings_keys(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    HoldingsObject *self = (HoldingsObject *)op;
    size_t n = fab_holdings_nkeys(self->h);
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "keys([limit]) takes at most 1 argument");
        return NULL;
    }
    if (nargs == 1) {
        Py_ssize_t limit = PyLong_AsSsize_t(args[0]);
        if (limit == -1 && PyErr_Occurred())
            return NULL;
        if (limit >= 0 && (size_t)limit < n)
            n = (size_t)limit;
    }
    fab_state *st = hstate(op);
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out && i < n; i++) {
        PyObject *k = fab_py_key_from_digest(st, fab_holdings_key(self->h, i));
        if (k == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, k);
    }
    return out;
}

static PyObject *Holdings_facts(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    HoldingsObject *self = (HoldingsObject *)op;
    size_t start = 0, end = fab_holdings_nfacts(self->h);
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "facts([start]) takes at most 1 argument");
        return NULL;
    }
    if (nargs == 1) {
        Py_ssize_t s = PyLong_AsSsize_t(args[0]);
        if (s == -1 && PyErr_Occurred())
            return NULL;
        if (s < 0 || (size_t)s > end) {
            PyErr_Format(PyExc_ValueError, "facts: start %zd is outside 0..%zu", s, end);
            return NULL;
        }
        start = (size_t)s;
    }
    fab_state *st = hstate(op);
    PyObject *out = PyTuple_New((Py_ssize_t)(end - start));
    /* Facts of one key in a row share one ContentKey object. */
    const uint8_t *prev = NULL;
    PyObject *prev_key = NULL;
    for (size_t i = start; out && i < end; i++) {
        const uint8_t *k;
        uint32_t hid;
        fab_holdings_fact(self->h, i, &k, &hid);
        if (k != prev) {
            Py_XDECREF(prev_key);
            prev_key = fab_py_key_from_digest(st, k);
            prev = k;
            if (prev_key == NULL) {
                Py_CLEAR(out);
                break;
            }
        }
        PyObject *t = PyTuple_Pack(2, prev_key, PyList_GET_ITEM(self->names, hid));
        if (t == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, (Py_ssize_t)(i - start), t);
    }
    Py_XDECREF(prev_key);
    return out;
}

static PyObject *Holdings_holder_names(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyList_GetSlice(((HoldingsObject *)op)->names, 0, PY_SSIZE_T_MAX);
}

static PyObject *Holdings_merge(PyObject *op, PyObject *other)
{
    HoldingsObject *self = (HoldingsObject *)op;
    if (Py_TYPE(other) != Py_TYPE(op)) {
        PyErr_Format(PyExc_TypeError, "can only merge a _Holdings, not %s",
                     Py_TYPE(other)->tp_name);
        return NULL;
    }
    size_t added;
    int rc = fab_holdings_merge(self->h, ((HoldingsObject *)other)->h, &added);
    if (sync_names(self) < 0)
        return NULL;
    if (rc < 0)
        return raise_core(op, rc, "holding index merge");
    return PyLong_FromSize_t(added);
}

static PyObject *Holdings_snapshot(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    HoldingsObject *self = (HoldingsObject *)op;
    size_t len = fab_holdings_snapshot_size(self->h);
    if (len == 0 || len > PY_SSIZE_T_MAX)
        return raise_core(op, FAB_EOVERFLOW, "holding index snapshot");
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (out != NULL)
        fab_holdings_snapshot_write(self->h, (uint8_t *)PyBytes_AS_STRING(out));
    return out;
}

static PyObject *Holdings_restore(PyObject *op, PyObject *data)
{
    HoldingsObject *self = (HoldingsObject *)op;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = fab_holdings_restore(self->h, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (rc == FAB_EDUPKEY) {
        PyErr_SetString(PyExc_ValueError, "holding index snapshot: a fact appears twice "
                                          "(every later version would shift by one)");
        return NULL;
    }
    if (rc < 0)
        return raise_core(op, rc, "holding index snapshot");
    if (sync_names(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Holdings_memory(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSize_t(fab_holdings_memory(((HoldingsObject *)op)->h));
}

static PyObject *Holdings_nkeys(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(fab_holdings_nkeys(((HoldingsObject *)op)->h));
}

static Py_ssize_t Holdings_len(PyObject *op)
{
    return (Py_ssize_t)fab_holdings_nfacts(((HoldingsObject *)op)->h);
}

static PyMethodDef Holdings_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Holdings_add, METH_FASTCALL,
     "add(key, holder) -> bool: adds one fact; True if it is new."},
    {"add_facts", Holdings_add_facts, METH_O,
     "add_facts(facts) -> int: adds (key, holder) tuples, all checked first; how many were new."},
    {"add_keys", (PyCFunction)(void (*)(void))Holdings_add_keys, METH_FASTCALL,
     "add_keys(keys, holder) -> int: adds (key, holder) for every ContentKey of an iterable."},
    {"add_packed", (PyCFunction)(void (*)(void))Holdings_add_packed, METH_FASTCALL,
     "add_packed(digests, holder) -> int: adds (key, holder) for 32-byte digests packed end to end."},
    {"has", (PyCFunction)(void (*)(void))Holdings_has, METH_FASTCALL,
     "has(key, holder) -> bool: whether the fact is known."},
    {"holders_of", Holdings_holders_of, METH_O,
     "holders_of(key) -> list[str]: the holders of key, most recently learned first."},
    {"keys", (PyCFunction)(void (*)(void))Holdings_keys, METH_FASTCALL,
     "keys([limit]) -> list[ContentKey]: keys in the order first learned (at most limit)."},
    {"facts", (PyCFunction)(void (*)(void))Holdings_facts, METH_FASTCALL,
     "facts([start]) -> tuple: the facts from version start on, in learned order."},
    {"holder_names", Holdings_holder_names, METH_NOARGS,
     "holder_names() -> list[str]: every holder, by id."},
    {"merge", Holdings_merge, METH_O,
     "merge(other) -> int: adds every fact of another _Holdings; how many were new."},
    {"snapshot", Holdings_snapshot, METH_NOARGS,
     "snapshot() -> bytes: the canonical snapshot document."},
    {"restore", Holdings_restore, METH_O,
     "restore(data): loads a canonical snapshot into this empty store (all or nothing)."},
    {"memory", Holdings_memory, METH_NOARGS, "memory() -> int: bytes held by the core."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Holdings_getset[] = {
    {"nkeys", Holdings_nkeys, NULL, "Distinct keys.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Holdings_slots[] = {
    {Py_tp_doc, "The holding index's fact store (internal to fabric.holders)."},
    {Py_tp_new, Holdings_new},
    {Py_tp_dealloc, Holdings_dealloc},
    {Py_tp_methods, Holdings_methods},
    {Py_tp_getset, Holdings_getset},
    {Py_sq_length, Holdings_len},
    {0, NULL},
};

static PyType_Spec Holdings_spec = {
    .name = "fabric._core._Holdings",
    .basicsize = sizeof(HoldingsObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Holdings_slots,
};

int fab_py_holdings_exec(PyObject *module, fab_state *st)
{
    st->Holdings_Type = fab_py_add_type(module, &Holdings_spec, NULL);
    return st->Holdings_Type == NULL ? -1 : 0;
}

int fab_py_holdings_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->Holdings_Type);
    return 0;
}

void fab_py_holdings_clear(fab_state *st)
{
    Py_CLEAR(st->Holdings_Type);
}
