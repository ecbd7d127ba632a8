/*
 * Placement objects in Python: PlacementResourceLimits, PlacementCapability,
 * ServerPlacementRequest and redact_placement (docs/spec/placement.md).
 *
 * The redaction rules are the core's (csrc/redact.c); this file walks a
 * Python value with the C API, asks the core about each string, and builds
 * the redacted copy. It runs no Python code of the user's: only builtin
 * containers, str, bytes-like objects and Secret are read.
 */
#include "glue.h"

#include <string.h>

#include "fabric/redact.h"

/* ======================================================================== */
/* PlacementResourceLimits: a tuple subclass, so it is keyable as an array   */
/* ======================================================================== */

#define PLIMIT_FIELDS(XX)                                  \
    XX(max_cpu_time_ms, "max-cpu-time-ms", 5000)           \
    XX(max_memory_bytes, "max-memory-bytes", 64u << 20)    \
    XX(max_frame_payload_bytes, "max-frame-payload-bytes", 1u << 20) \
    XX(max_stream_frames, "max-stream-frames", 1024)       \
    XX(max_duration_ms, "max-duration-ms", 60000)          \
    XX(max_rate_hz, "max-rate-hz", 120)                    \
    XX(max_inflight_work, "max-inflight-work", 64)         \
    XX(max_rss_bytes, "max-rss-bytes", 0) /* 0: unset (None) */

static const char *const plimit_names[] = {
#define PL_NAME(name, wire, def) #name,
    PLIMIT_FIELDS(PL_NAME)
#undef PL_NAME
    NULL,
};
static const char *const plimit_wire[] = {
#define PL_WIRE(name, wire, def) wire,
    PLIMIT_FIELDS(PL_WIRE)
#undef PL_WIRE
};
static const long long plimit_defaults[] = {
#define PL_DEF(name, wire, def) (long long)(def),
    PLIMIT_FIELDS(PL_DEF)
#undef PL_DEF
};
#define PLIMIT_COUNT ((int)(sizeof(plimit_wire) / sizeof(plimit_wire[0])))
#define PLIMIT_RSS (PLIMIT_COUNT - 1)

/* One limit's value: an int > 0 (bool refused), or for max_rss_bytes also
 * None. New reference or NULL. */
static PyObject *plimit_value(int i, PyObject *o)
{
    if (o == NULL) {
        if (plimit_defaults[i] == 0)
            return Py_NewRef(Py_None);
        return PyLong_FromLongLong(plimit_defaults[i]);
    }
    if (i == PLIMIT_RSS && o == Py_None)
        return Py_NewRef(Py_None);
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_Format(PyExc_TypeError, "PlacementResourceLimits.%s must be an int%s, not %s",
                     plimit_names[i], i == PLIMIT_RSS ? " or None" : "", Py_TYPE(o)->tp_name);
        return NULL;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    if (overflow > 0) {
        PyErr_Format(PyExc_ValueError, "PlacementResourceLimits.%s must be at most 2**63-1, "
                     "got %R", plimit_names[i], o);
        return NULL;
    }
    if (overflow < 0 || v <= 0) {
        PyErr_Format(PyExc_ValueError, "PlacementResourceLimits.%s must be > 0, got %R",
                     plimit_names[i], o);
        return NULL;
    }
    return PyLong_FromLongLong(v);
}

/* A new limits object of type tp from given[] (NULL entries: from base, a
 * limits tuple, or the defaults when base is NULL). */
static PyObject *plimits_make(PyTypeObject *tp, PyObject *const *given, PyObject *base)
{
    PyObject *items = PyTuple_New(PLIMIT_COUNT);
    if (items == NULL)
        return NULL;
    for (int i = 0; i < PLIMIT_COUNT; i++) {
        PyObject *v;
        if (given[i] == NULL && base != NULL)
            v = Py_NewRef(PyTuple_GET_ITEM(base, i));
        else
            v = plimit_value(i, given[i]);
        if (v == NULL) {
            Py_DECREF(items);
            return NULL;
        }
        PyTuple_SET_ITEM(items, i, v);
    }
    PyObject *args = PyTuple_Pack(1, items);
    Py_DECREF(items);
    if (args == NULL)
        return NULL;
    PyObject *self = PyTuple_Type.tp_new(tp, args, NULL);
    Py_DECREF(args);
    return self;
}

/* Fills given[] from keyword arguments only. 0 or -1. */
static int plimits_parse(const char *fname, PyObject *args, PyObject *kwargs, PyObject **given)
{
    for (int i = 0; i < PLIMIT_COUNT; i++)
        given[i] = NULL;
    if (args != NULL && PyTuple_GET_SIZE(args) > 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes keyword arguments only", fname);
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (kwargs && PyDict_Next(kwargs, &pos, &key, &value)) {
        int found = -1;
        for (int i = 0; i < PLIMIT_COUNT; i++)
            if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, plimit_names[i]) == 0)
                found = i;
        if (found < 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname,
                         key);
            return -1;
        }
        given[found] = value;
    }
    return 0;
}

static PyObject *plimits_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *given[PLIMIT_COUNT];
    if (plimits_parse("PlacementResourceLimits", args, kwargs, given) < 0)
        return NULL;
    return plimits_make(type, given, NULL);
}

static void plimits_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyTuple_Type.tp_dealloc(self);
    Py_DECREF(tp);
}

static PyObject *plimits_repr(PyObject *self)
{
    PyObject *parts = PyList_New(0);
    if (parts == NULL)
        return NULL;
    for (int i = 0; i < PLIMIT_COUNT; i++) {
        PyObject *s = PyUnicode_FromFormat("%s=%R", plimit_names[i], PyTuple_GET_ITEM(self, i));
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
    PyObject *r = PyUnicode_FromFormat("PlacementResourceLimits(%U)", joined);
    Py_DECREF(joined);
    return r;
}

static PyObject *plimits_replace(PyObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *given[PLIMIT_COUNT];
    if (plimits_parse("replace", args, kwargs, given) < 0)
        return NULL;
    return plimits_make(Py_TYPE(self), given, self);
}

static PyObject *plimits_to_dict(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < PLIMIT_COUNT; i++)
        if (PyDict_SetItemString(d, plimit_names[i], PyTuple_GET_ITEM(self, i)) < 0)
            Py_CLEAR(d);
    return d;
}

/* The seed's expression form: every limit as a decimal string under its
 * wire name; an unset max_rss_bytes is left out. */
static PyObject *plimits_to_expr(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < PLIMIT_COUNT; i++) {
        PyObject *v = PyTuple_GET_ITEM(self, i);
        if (v == Py_None)
            continue;
        PyObject *s = PyObject_Str(v);
        if (s == NULL || PyDict_SetItemString(d, plimit_wire[i], s) < 0)
            Py_CLEAR(d);
        Py_XDECREF(s);
    }
    return d;
}

static PyObject *plimits_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return fab_py_reduce(self, plimits_to_dict(self, NULL));
}

static PyObject *plimits_unpickle(PyObject *cls, PyObject *fields)
{
    if (!PyDict_Check(fields)) {
        PyErr_Format(PyExc_TypeError, "PlacementResourceLimits._unpickle() takes a dict, not %s",
                     Py_TYPE(fields)->tp_name);
        return NULL;
    }
    PyObject *given[PLIMIT_COUNT];
    if (plimits_parse("PlacementResourceLimits", NULL, fields, given) < 0)
        return NULL;
    return plimits_make((PyTypeObject *)cls, given, NULL);
}

static PyObject *plimits_get(PyObject *self, void *closure)
{
    return Py_NewRef(PyTuple_GET_ITEM(self, (intptr_t)closure));
}

static PyMethodDef plimits_methods[] = {
    {"replace", (PyCFunction)(void (*)(void))plimits_replace, METH_VARARGS | METH_KEYWORDS,
     "replace($self, /, **changes)\n--\n\nA copy with the given limits changed (validated)."},
    {"to_dict", plimits_to_dict, METH_NOARGS,
     "to_dict($self, /)\n--\n\nThe limits as a dict of field name to value."},
    {"to_expr", plimits_to_expr, METH_NOARGS,
     "to_expr($self, /)\n--\n\nThe limits as placement reports show them: a dict of wire\n"
     "name (max-cpu-time-ms, ...) to decimal string; an unset max_rss_bytes is left out."},
    {"__reduce__", plimits_reduce, METH_NOARGS, NULL},
    {"_unpickle", plimits_unpickle, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef plimits_getset[] = {
    {"max_cpu_time_ms", plimits_get, NULL, "CPU time of the op, in ms (RLIMIT_CPU).",
     (void *)(intptr_t)0},
    {"max_memory_bytes", plimits_get, NULL,
     "Accounted bytes of every frame payload the placement emits (not process memory).",
     (void *)(intptr_t)1},
    {"max_frame_payload_bytes", plimits_get, NULL, "Largest payload of one frame.",
     (void *)(intptr_t)2},
    {"max_stream_frames", plimits_get, NULL, "Data frames (report, result, chunks).",
     (void *)(intptr_t)3},
    {"max_duration_ms", plimits_get, NULL, "Wall-clock time; past it the worker is killed.",
     (void *)(intptr_t)4},
    {"max_rate_hz", plimits_get, NULL, "Frames per second the stream may carry.",
     (void *)(intptr_t)5},
    {"max_inflight_work", plimits_get, NULL,
     "Every frame, the start frame included; also the bounded buffer's size.",
     (void *)(intptr_t)6},
    {"max_rss_bytes", plimits_get, NULL,
     "Resident memory of the worker process, or None (unset: not enforced).",
     (void *)(intptr_t)7},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot plimits_slots[] = {
    {Py_tp_doc,
     "PlacementResourceLimits(*, max_cpu_time_ms=5000, max_memory_bytes=67108864, "
     "max_frame_payload_bytes=1048576, max_stream_frames=1024, max_duration_ms=60000, "
     "max_rate_hz=120, max_inflight_work=64, max_rss_bytes=None)\n--\n\n"
     "The limits a placed op runs under. Every limit is an int > 0; max_rss_bytes\n"
     "may also be None (the default: worker memory is not bounded). Immutable and\n"
     "keyable: it is a tuple of its eight fields, so it can be an EvalRequest\n"
     "argument. max_memory_bytes is the accounted sum of the payloads the\n"
     "placement emits, as in the seed; max_rss_bytes is the worker's memory."},
    {Py_tp_new, plimits_new},
    {Py_tp_dealloc, plimits_dealloc},
    {Py_tp_repr, plimits_repr},
    {Py_tp_methods, plimits_methods},
    {Py_tp_getset, plimits_getset},
    {0, NULL},
};

static PyType_Spec plimits_spec = {
    .name = "fabric.PlacementResourceLimits",
    .basicsize = 0,
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = plimits_slots,
};

/* ======================================================================== */
/* PlacementCapability                                                        */
/* ======================================================================== */

/* The four names, in the seed's order (pinned by a test). */
static const char *const capability_attrs[] = {
    "RUN_NODE_ON_SERVER", "RUN_NODE_ON_LAN_PEER", "REMOTE_RENDER", "HOST_DEVICE",
};
static const char *const capability_names[] = {
    "stream.placement.run-node-on-server", "stream.placement.run-node-on-lan-peer",
    "stream.remote.render", "stream.host.device",
};
#define CAP_COUNT 4
#define CAP_NETWORK "stream.remote.network"
#define CAP_PREVIEW "stream.remote.preview"

static PyObject *capability_names_fn(PyObject *Py_UNUSED(cls), PyObject *Py_UNUSED(ignored))
{
    PyObject *t = PyTuple_New(CAP_COUNT);
    for (int i = 0; t && i < CAP_COUNT; i++) {
        PyObject *s = PyUnicode_FromString(capability_names[i]);
        if (s == NULL) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

static PyMethodDef capability_methods[] = {
    {"names", capability_names_fn, METH_NOARGS | METH_CLASS,
     "names($cls, /)\n--\n\nThe four placement capability names, in their fixed order."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot capability_slots[] = {
    {Py_tp_doc,
     "The placement capabilities, as plain str constants usable as grants:\n"
     "RUN_NODE_ON_SERVER ('stream.placement.run-node-on-server'),\n"
     "RUN_NODE_ON_LAN_PEER ('stream.placement.run-node-on-lan-peer', declared, not\n"
     "used by server placement), REMOTE_RENDER ('stream.remote.render') and\n"
     "HOST_DEVICE ('stream.host.device'). names() gives the four in this order."},
    {Py_tp_methods, capability_methods},
    {0, NULL},
};

static PyType_Spec capability_spec = {
    .name = "fabric.PlacementCapability",
    .basicsize = sizeof(PyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = capability_slots,
};

/* ======================================================================== */
/* Redaction                                                                  */
/* ======================================================================== */

typedef struct redactor {
    fab_state *st;
    int depth;
} redactor;

static PyObject *redact(redactor *r, PyObject *v);

static PyObject *redacted_text(redactor *r)
{
    return Py_NewRef(r->st->placement_text);
}

static PyObject *redact_str(redactor *r, PyObject *v)
{
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(v, &n);
    if (p == NULL) {
        /* Not UTF-8 (a lone surrogate): nothing to read it by, so it goes. */
        PyErr_Clear();
        return redacted_text(r);
    }
    if (fab_redact_classify(p, (size_t)n) != FAB_REDACT_NONE)
        return redacted_text(r);
    if (PyUnicode_CheckExact(v))
        return Py_NewRef(v);
    return PyUnicode_FromStringAndSize(p, n);
}

static PyObject *redact_buffer(redactor *r, PyObject *v)
{
    if (PyBytes_CheckExact(v)) {
        if ((size_t)PyBytes_GET_SIZE(v) > FAB_REDACT_MAX_BINARY)
            return Py_NewRef(r->st->placement_payload);
        return Py_NewRef(v);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(v, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "redact_placement: cannot read a non-contiguous buffer "
                     "of type %s (make a contiguous copy first)", Py_TYPE(v)->tp_name);
        return NULL;
    }
    PyObject *out;
    if ((size_t)view.len > FAB_REDACT_MAX_BINARY)
        out = Py_NewRef(r->st->placement_payload);
    else
        out = PyBytes_FromStringAndSize(view.buf, view.len);
    PyBuffer_Release(&view);
    return out;
}

static PyObject *redact_sequence(redactor *r, PyObject *v)
{
    int is_list = PyList_Check(v);
    Py_ssize_t n = is_list ? PyList_GET_SIZE(v) : PyTuple_GET_SIZE(v);
    PyObject *out = is_list ? PyList_New(n) : PyTuple_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* A list cannot change under the walk (it runs no Python code), but
         * the size is checked again all the same. */
        if (is_list && i >= PyList_GET_SIZE(v)) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_RuntimeError, "redact_placement: a list changed size");
            return NULL;
        }
        PyObject *item = Py_NewRef(is_list ? PyList_GET_ITEM(v, i) : PyTuple_GET_ITEM(v, i));
        PyObject *x = redact(r, item);
        Py_DECREF(item);
        if (x == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        if (is_list)
            PyList_SET_ITEM(out, i, x);
        else
            PyTuple_SET_ITEM(out, i, x);
    }
    return out;
}

/* A dict entry whose str key has a finding is redacted whole: its key
 * becomes the placeholder (numbered from the second on, so no entry is
 * lost) and its value the placeholder too, since a key such as "password"
 * says what its value is. */
static PyObject *redact_dict(redactor *r, PyObject *v)
{
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    Py_ssize_t pos = 0, hidden = 0;
    PyObject *key, *value;
    while (PyDict_Next(v, &pos, &key, &value)) {
        Py_INCREF(key);
        Py_INCREF(value);
        PyObject *k = NULL, *x = NULL;
        int whole = 0;
        if (PyUnicode_Check(key)) {
            Py_ssize_t n;
            const char *p = PyUnicode_AsUTF8AndSize(key, &n);
            if (p == NULL)
                PyErr_Clear();
            whole = p == NULL || fab_redact_classify(p, (size_t)n) != FAB_REDACT_NONE;
        }
        if (whole) {
            hidden++;
            k = hidden == 1 ? redacted_text(r)
                            : PyUnicode_FromFormat("%U #%zd", r->st->placement_text, hidden);
            x = k ? redacted_text(r) : NULL;
        } else {
            k = redact(r, key);
            x = k ? redact(r, value) : NULL;
        }
        Py_DECREF(key);
        Py_DECREF(value);
        int rc = (k && x) ? PyDict_SetItem(out, k, x) : -1;
        Py_XDECREF(k);
        Py_XDECREF(x);
        if (rc < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static PyObject *redact_set(redactor *r, PyObject *v)
{
    PyObject *out = PyFrozenSet_Check(v) ? PyFrozenSet_New(NULL) : PySet_New(NULL);
    PyObject *it = out ? PyObject_GetIter(v) : NULL;
    if (it == NULL) {
        Py_XDECREF(out);
        return NULL;
    }
    PyObject *m;
    while ((m = PyIter_Next(it)) != NULL) {
        PyObject *x = redact(r, m);
        Py_DECREF(m);
        if (x == NULL || PySet_Add(out, x) < 0) {
            Py_XDECREF(x);
            Py_DECREF(it);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(x);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *redact(redactor *r, PyObject *v)
{
    PyTypeObject *tp = Py_TYPE(v);
    if (v == Py_None || PyBool_Check(v) || PyLong_Check(v) || PyFloat_Check(v))
        return Py_NewRef(v);
    if (PyUnicode_Check(v))
        return redact_str(r, v);
    if (tp == r->st->Secret_Type)
        return redacted_text(r);
    if (tp == r->st->PlacementResourceLimits_Type)
        return Py_NewRef(v); /* numbers and None only */
    if (PyBytes_Check(v) || PyByteArray_Check(v) || PyMemoryView_Check(v))
        return redact_buffer(r, v);
    if (!(PyList_Check(v) || PyTuple_Check(v) || PyDict_Check(v) || PyAnySet_Check(v))) {
        if (PyObject_CheckBuffer(v))
            return redact_buffer(r, v);
        PyErr_Format(PyExc_TypeError,
                     "redact_placement: cannot redact object of type %s (placement data is "
                     "None, bool, int, float, str, bytes-like, list, tuple, dict, set, "
                     "Secret and PlacementResourceLimits)", tp->tp_name);
        return NULL;
    }
    if (r->depth >= FAB_MAX_DEPTH) {
        PyErr_Format(PyExc_ValueError, "redact_placement: nesting deeper than %d levels "
                     "(or a container that contains itself)", FAB_MAX_DEPTH);
        return NULL;
    }
    r->depth++;
    PyObject *out;
    if (PyList_Check(v) || PyTuple_Check(v))
        out = redact_sequence(r, v);
    else if (PyDict_Check(v))
        out = redact_dict(r, v);
    else
        out = redact_set(r, v);
    r->depth--;
    return out;
}

static PyObject *redact_placement(PyObject *module, PyObject *value)
{
    redactor r = {fab_get_state(module), 0};
    return redact(&r, value);
}

/* 1 if any str in v (dict keys included) mentions a host device, 0 if
 * none, -1 on error (too deep). */
static int mentions_device(PyObject *v, int depth)
{
    if (PyUnicode_Check(v)) {
        Py_ssize_t n;
        const char *p = PyUnicode_AsUTF8AndSize(v, &n);
        if (p == NULL) {
            PyErr_Clear();
            return 0;
        }
        return fab_redact_mentions_device(p, (size_t)n);
    }
    if (!(PyList_Check(v) || PyTuple_Check(v) || PyDict_Check(v) || PyAnySet_Check(v)))
        return 0;
    if (depth >= FAB_MAX_DEPTH) {
        PyErr_Format(PyExc_ValueError, "placement data nests deeper than %d levels",
                     FAB_MAX_DEPTH);
        return -1;
    }
    int found = 0;
    if (PyDict_Check(v)) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (!found && PyDict_Next(v, &pos, &key, &value)) {
            Py_INCREF(key);
            Py_INCREF(value);
            found = mentions_device(key, depth + 1);
            if (found == 0)
                found = mentions_device(value, depth + 1);
            Py_DECREF(key);
            Py_DECREF(value);
        }
        return found;
    }
    PyObject *it = PyObject_GetIter(v);
    if (it == NULL)
        return -1;
    PyObject *m;
    while (!found && (m = PyIter_Next(it)) != NULL) {
        found = mentions_device(m, depth + 1);
        Py_DECREF(m);
    }
    Py_DECREF(it);
    if (found == 0 && PyErr_Occurred())
        return -1;
    return found;
}

static PyObject *mentions_host_device(PyObject *Py_UNUSED(module), PyObject *value)
{
    int rc = mentions_device(value, 0);
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc);
}

/* ======================================================================== */
/* ServerPlacementRequest                                                     */
/* ======================================================================== */

/* Output profiles a placement may declare, with their latency class. */
static const struct profile {
    const char *name;
    const char *latency;
} profiles[] = {
    {"stream/profile/server-buffered-preview", "buffered-preview"},
    {"stream/profile/server-render-return", "offline-render"},
    {"stream/profile/interactive", "interactive"},
    {"stream/profile/realtime", "realtime"},
    {"stream/profile/sample-exact", "sample-exact"},
};
#define PROFILE_PREVIEW 0
#define PROFILE_RENDER 1
#define NPROFILES ((int)(sizeof(profiles) / sizeof(profiles[0])))

typedef struct {
    PyObject_HEAD
    PyObject *fragment; /* EvalRequest */
    PyObject *report;   /* the planner's report, as given */
    PyObject *limits;   /* PlacementResourceLimits */
    int profile;        /* index into profiles */
    char pinned;
    char device;        /* the fragment or the report mentions a host device */
} SPRObject;

static int spr_traverse(SPRObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->fragment);
    Py_VISIT(self->report);
    Py_VISIT(self->limits);
    return 0;
}

static int spr_clear(SPRObject *self)
{
    Py_CLEAR(self->fragment);
    Py_CLEAR(self->report);
    Py_CLEAR(self->limits);
    return 0;
}

static void spr_dealloc(SPRObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    spr_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* Does the fragment (op, args, kwargs) or the report mention a host device? */
static int spr_uses_device(PyObject *fragment, PyObject *report)
{
    static const char *const fields[] = {"op", "args"};
    for (int i = 0; i < 2; i++) {
        PyObject *f = PyObject_GetAttrString(fragment, fields[i]);
        if (f == NULL)
            return -1;
        int rc = mentions_device(f, 0);
        Py_DECREF(f);
        if (rc != 0)
            return rc;
    }
    /* kwargs is a read-only view of a dict: its keys and values through
     * the mapping slots. */
    PyObject *kw = PyObject_GetAttrString(fragment, "kwargs");
    PyObject *it = kw ? PyObject_GetIter(kw) : NULL;
    int rc = it ? 0 : -1;
    PyObject *k;
    while (rc == 0 && it && (k = PyIter_Next(it)) != NULL) {
        PyObject *v = PyObject_GetItem(kw, k);
        rc = v ? mentions_device(k, 0) : -1;
        if (rc == 0)
            rc = mentions_device(v, 0);
        Py_XDECREF(v);
        Py_DECREF(k);
    }
    if (rc == 0 && PyErr_Occurred())
        rc = -1;
    Py_XDECREF(it);
    Py_XDECREF(kw);
    if (rc != 0)
        return rc;
    return mentions_device(report, 0);
}

static PyObject *spr_make(PyTypeObject *tp, PyObject *fragment, PyObject *profile_obj,
                          int profile, PyObject *report, int pinned, PyObject *limits)
{
    fab_state *st = fab_state_from_type(tp);
    if (st == NULL)
        return NULL;
    if (fab_py_request_info(st, fragment, NULL, NULL, NULL) < 0) {
        PyErr_Format(PyExc_TypeError, "ServerPlacementRequest fragment must be an EvalRequest "
                     "for a registered op (placement never ships code), not %s",
                     Py_TYPE(fragment)->tp_name);
        return NULL;
    }
    if (profile < 0) {
        if (!PyUnicode_Check(profile_obj)) {
            PyErr_Format(PyExc_TypeError, "ServerPlacementRequest profile must be a str, not %s",
                         Py_TYPE(profile_obj)->tp_name);
            return NULL;
        }
        for (int i = 0; i < NPROFILES; i++)
            if (PyUnicode_CompareWithASCIIString(profile_obj, profiles[i].name) == 0)
                profile = i;
        if (profile < 0) {
            PyErr_Format(PyExc_ValueError, "ServerPlacementRequest profile %R is not known "
                         "(known: stream/profile/server-buffered-preview, "
                         "stream/profile/server-render-return, stream/profile/interactive, "
                         "stream/profile/realtime, stream/profile/sample-exact)", profile_obj);
            return NULL;
        }
    }
    if (limits == NULL || limits == Py_None) {
        PyObject *given[PLIMIT_COUNT] = {NULL};
        limits = plimits_make(st->PlacementResourceLimits_Type, given, NULL);
        if (limits == NULL)
            return NULL;
    } else if (!PyObject_TypeCheck(limits, st->PlacementResourceLimits_Type)) {
        PyErr_Format(PyExc_TypeError, "ServerPlacementRequest resource_limits must be a "
                     "PlacementResourceLimits, not %s", Py_TYPE(limits)->tp_name);
        return NULL;
    } else {
        Py_INCREF(limits);
    }
    if (report == NULL)
        report = Py_None;
    /* The report must be placement data: refused now, not when it is framed. */
    redactor r = {st, 0};
    PyObject *check = redact(&r, report);
    if (check == NULL) {
        Py_DECREF(limits);
        return NULL;
    }
    Py_DECREF(check);
    int device = spr_uses_device(fragment, report);
    if (device < 0) {
        Py_DECREF(limits);
        return NULL;
    }
    SPRObject *self = (SPRObject *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        Py_DECREF(limits);
        return NULL;
    }
    self->fragment = Py_NewRef(fragment);
    self->report = Py_NewRef(report);
    self->limits = limits;
    self->profile = profile;
    self->pinned = (char)pinned;
    self->device = (char)device;
    return (PyObject *)self;
}

static PyObject *spr_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"fragment", "profile", "report", "realtime_pinned", "resource_limits",
                         NULL};
    PyObject *fragment, *profile, *report = Py_None, *limits = Py_None;
    int pinned = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$OOpO:ServerPlacementRequest", kw,
                                     &fragment, &profile, &report, &pinned, &limits))
        return NULL;
    return spr_make(type, fragment, profile, -1, report, pinned, limits);
}

/* ServerPlacementRequest(..., profile=<fixed>): the two seed constructors. */
static PyObject *spr_with_profile(PyObject *cls, PyObject *args, PyObject *kwargs, int profile,
                                  const char *fname)
{
    static char *kw[] = {"fragment", "report", "realtime_pinned", "resource_limits", NULL};
    PyObject *fragment, *report = Py_None, *limits = Py_None;
    int pinned = 0;
    char fmt[64];
    snprintf(fmt, sizeof(fmt), "O|$OpO:%s", fname);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, fmt, kw, &fragment, &report, &pinned,
                                     &limits))
        return NULL;
    return spr_make((PyTypeObject *)cls, fragment, NULL, profile, report, pinned, limits);
}

static PyObject *spr_buffered_preview(PyObject *cls, PyObject *args, PyObject *kwargs)
{
    return spr_with_profile(cls, args, kwargs, PROFILE_PREVIEW, "buffered_preview");
}

static PyObject *spr_render_return(PyObject *cls, PyObject *args, PyObject *kwargs)
{
    return spr_with_profile(cls, args, kwargs, PROFILE_RENDER, "render_return");
}

static PyObject *spr_with_realtime_pin(SPRObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kw[] = {"pinned", NULL};
    int pinned = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p:with_realtime_pin", kw, &pinned))
        return NULL;
    return spr_make(Py_TYPE(self), self->fragment, NULL, self->profile, self->report, pinned,
                    self->limits);
}

static PyObject *spr_with_resource_limits(SPRObject *self, PyObject *limits)
{
    return spr_make(Py_TYPE(self), self->fragment, NULL, self->profile, self->report,
                    self->pinned, limits);
}

/* The capabilities this placement needs, sorted and unique. */
static PyObject *spr_required(SPRObject *self, void *Py_UNUSED(closure))
{
    const char *caps[4];
    int n = 0;
    caps[n++] = capability_names[0]; /* run-node-on-server */
    caps[n++] = CAP_NETWORK;
    if (self->profile == PROFILE_PREVIEW)
        caps[n++] = CAP_PREVIEW;
    else if (self->profile == PROFILE_RENDER)
        caps[n++] = capability_names[2];
    if (self->device)
        caps[n++] = capability_names[3];
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        PyObject *s = PyUnicode_FromString(caps[i]);
        if (s == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, s);
    }
    if (list == NULL || PyList_Sort(list) < 0) {
        Py_XDECREF(list);
        return NULL;
    }
    PyObject *t = PyList_AsTuple(list);
    Py_DECREF(list);
    return t;
}

static PyObject *spr_get_fragment(SPRObject *self, void *Py_UNUSED(c)) { return Py_NewRef(self->fragment); }
static PyObject *spr_get_report(SPRObject *self, void *Py_UNUSED(c)) { return Py_NewRef(self->report); }
static PyObject *spr_get_limits(SPRObject *self, void *Py_UNUSED(c)) { return Py_NewRef(self->limits); }
static PyObject *spr_get_pinned(SPRObject *self, void *Py_UNUSED(c)) { return PyBool_FromLong(self->pinned); }
static PyObject *spr_get_device(SPRObject *self, void *Py_UNUSED(c)) { return PyBool_FromLong(self->device); }

static PyObject *spr_get_profile(SPRObject *self, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(profiles[self->profile].name);
}

static PyObject *spr_get_latency(SPRObject *self, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(profiles[self->profile].latency);
}

static PyObject *spr_repr(SPRObject *self)
{
    /* The report is never shown: it may hold what redaction hides. */
    PyObject *op = PyObject_GetAttrString(self->fragment, "op");
    if (op == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("ServerPlacementRequest(op=%R, profile='%s'%s)", op,
                                       profiles[self->profile].name,
                                       self->pinned ? ", realtime_pinned=True" : "");
    Py_DECREF(op);
    return r;
}

static PyObject *spr_reduce(SPRObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = Py_BuildValue("{sOsssOsOsO}", "fragment", self->fragment, "profile",
                                profiles[self->profile].name, "report", self->report,
                                "realtime_pinned", self->pinned ? Py_True : Py_False,
                                "resource_limits", self->limits);
    return fab_py_reduce((PyObject *)self, d);
}

static PyObject *spr_unpickle(PyObject *cls, PyObject *fields)
{
    if (!PyDict_Check(fields)) {
        PyErr_SetString(PyExc_TypeError, "ServerPlacementRequest._unpickle() takes a dict");
        return NULL;
    }
    PyObject *fragment = PyDict_GetItemString(fields, "fragment");
    if (fragment == NULL) {
        PyErr_SetString(PyExc_TypeError, "ServerPlacementRequest._unpickle(): no fragment");
        return NULL;
    }
    PyObject *args = PyTuple_Pack(1, fragment);
    PyObject *kw = args ? PyDict_Copy(fields) : NULL;
    PyObject *r = NULL;
    if (kw && PyDict_DelItemString(kw, "fragment") == 0)
        r = PyObject_Call(cls, args, kw);
    Py_XDECREF(args);
    Py_XDECREF(kw);
    return r;
}

static PyMethodDef spr_methods[] = {
    {"buffered_preview", (PyCFunction)(void (*)(void))spr_buffered_preview,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "buffered_preview($cls, fragment, /, *, report=None, realtime_pinned=False, "
     "resource_limits=None)\n--\n\n"
     "A placement whose output profile is stream/profile/server-buffered-preview\n"
     "(latency buffered-preview: remote, bounded, preview, lossy)."},
    {"render_return", (PyCFunction)(void (*)(void))spr_render_return,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "render_return($cls, fragment, /, *, report=None, realtime_pinned=False, "
     "resource_limits=None)\n--\n\n"
     "A placement whose output profile is stream/profile/server-render-return\n"
     "(latency offline-render: remote, bounded, deterministic, replayable, resumable)."},
    {"with_realtime_pin", (PyCFunction)(void (*)(void))spr_with_realtime_pin,
     METH_VARARGS | METH_KEYWORDS,
     "with_realtime_pin($self, /, pinned=True)\n--\n\nA copy pinned to realtime (or not)."},
    {"with_resource_limits", (PyCFunction)spr_with_resource_limits, METH_O,
     "with_resource_limits($self, limits, /)\n--\n\nA copy with other limits."},
    {"__reduce__", (PyCFunction)spr_reduce, METH_NOARGS, NULL},
    {"_unpickle", spr_unpickle, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef spr_getset[] = {
    {"fragment", (getter)spr_get_fragment, NULL, "The EvalRequest placed.", NULL},
    {"report", (getter)spr_get_report, NULL,
     "The planner's report, as given (frames carry it redacted).", NULL},
    {"resource_limits", (getter)spr_get_limits, NULL, "The PlacementResourceLimits.", NULL},
    {"realtime_pinned", (getter)spr_get_pinned, NULL,
     "True: the op must run in realtime, which no server placement can do.", NULL},
    {"profile", (getter)spr_get_profile, NULL, "The declared output profile.", NULL},
    {"declared_latency", (getter)spr_get_latency, NULL,
     "The profile's latency class (buffered-preview, offline-render, interactive, "
     "realtime, sample-exact).", NULL},
    {"uses_host_device", (getter)spr_get_device, NULL,
     "True when the fragment or the report mentions a host device.", NULL},
    {"required_capabilities", (getter)spr_required, NULL,
     "The capabilities the placement needs, sorted: run-node-on-server,\n"
     "stream.remote.network, stream.remote.preview or stream.remote.render by\n"
     "latency, and stream.host.device when a host device is mentioned.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot spr_slots[] = {
    {Py_tp_doc,
     "ServerPlacementRequest(fragment, *, profile, report=None, realtime_pinned=False, "
     "resource_limits=None)\n--\n\n"
     "A request to run a fragment (an EvalRequest for a registered op: placement\n"
     "never ships code) on a server site under resource limits. profile is the\n"
     "declared output profile; report is the planner's report (placement data:\n"
     "framed only after redact_placement). Immutable; buffered_preview() and\n"
     "render_return() fix the profile, with_realtime_pin() and\n"
     "with_resource_limits() make changed copies."},
    {Py_tp_new, spr_new},
    {Py_tp_dealloc, spr_dealloc},
    {Py_tp_traverse, spr_traverse},
    {Py_tp_clear, spr_clear},
    {Py_tp_repr, spr_repr},
    {Py_tp_methods, spr_methods},
    {Py_tp_getset, spr_getset},
    {0, NULL},
};

static PyType_Spec spr_spec = {
    .name = "fabric.ServerPlacementRequest",
    .basicsize = sizeof(SPRObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = spr_slots,
};

/* ======================================================================== */
/* Module part                                                                */
/* ======================================================================== */

static PyMethodDef placement_functions[] = {
    {"redact_placement", redact_placement, METH_O,
     "redact_placement(value, /)\n--\n\n"
     "A copy of placement data safe to frame, record or log, with the same shape.\n"
     "A str holding a credential, a host marker (host=, https://, .local, ...), a\n"
     "private or absolute path or a host-device marker is replaced whole by\n"
     "'[redacted placement data]'; a dict entry whose key is such a str is\n"
     "redacted whole (key and value); a byte string over 256 KiB becomes\n"
     "'[redacted placement payload]'; every Secret becomes the placeholder.\n"
     "Other values are kept. TypeError for anything that is not placement data."},
    {"_mentions_host_device", mentions_host_device, METH_O,
     "_mentions_host_device(value, /)\n--\n\nTrue if a str in value mentions a host device."},
    {NULL, NULL, 0, NULL},
};

int fab_py_placement_exec(PyObject *module, fab_state *st)
{
    PyObject *base = (PyObject *)&PyTuple_Type;
    if ((st->PlacementResourceLimits_Type = fab_py_add_type(module, &plimits_spec, base)) == NULL)
        return -1;
    if ((st->PlacementCapability_Type = fab_py_add_type(module, &capability_spec, NULL)) == NULL)
        return -1;
    PyObject *dict = st->PlacementCapability_Type->tp_dict;
    for (int i = 0; i < CAP_COUNT; i++) {
        PyObject *s = PyUnicode_InternFromString(capability_names[i]);
        if (s == NULL || PyDict_SetItemString(dict, capability_attrs[i], s) < 0) {
            Py_XDECREF(s);
            return -1;
        }
        Py_DECREF(s);
    }
    PyType_Modified(st->PlacementCapability_Type);
    if ((st->ServerPlacementRequest_Type = fab_py_add_type(module, &spr_spec, NULL)) == NULL)
        return -1;
    st->placement_text = PyUnicode_InternFromString(FAB_REDACT_TEXT);
    st->placement_payload = PyUnicode_InternFromString(FAB_REDACT_PAYLOAD);
    if (st->placement_text == NULL || st->placement_payload == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "PLACEMENT_REDACTED_TEXT", st->placement_text) < 0 ||
        PyModule_AddObjectRef(module, "PLACEMENT_REDACTED_PAYLOAD", st->placement_payload) < 0 ||
        PyModule_AddIntConstant(module, "PLACEMENT_MAX_BINARY_BYTES",
                                (long)FAB_REDACT_MAX_BINARY) < 0)
        return -1;
    return PyModule_AddFunctions(module, placement_functions);
}

int fab_py_placement_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->PlacementResourceLimits_Type);
    Py_VISIT(st->PlacementCapability_Type);
    Py_VISIT(st->ServerPlacementRequest_Type);
    Py_VISIT(st->placement_text);
    Py_VISIT(st->placement_payload);
    return 0;
}

void fab_py_placement_clear(fab_state *st)
{
    Py_CLEAR(st->PlacementResourceLimits_Type);
    Py_CLEAR(st->PlacementCapability_Type);
    Py_CLEAR(st->ServerPlacementRequest_Type);
    Py_CLEAR(st->placement_text);
    Py_CLEAR(st->placement_payload);
}
