/*
 * EvalRequest: an immutable evaluation request, keyed at construction.
 *
 * Its fields are checked and normalised here; the bytes of its identity are
 * written by the walker (walk.c) and its key is a ContentKey (key.c).
 */
#include "glue.h"

#include <string.h>

#include <structmember.h>

#include "fabric/enc.h"
#include "fabric/hash.h"

#define KEY_SCHEME_TAG "fabric.key/2"
/* A request's largest deadline, seconds (fabrics.NO_LIMIT: a wait past it is
 * past what the platform's clocks and waits take, threading.TIMEOUT_MAX). */
#define DEADLINE_MAX 1e9

/* ======================================================================== */
/* EvalRequest                                                               */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    PyObject *op;           /* str */
    PyObject *args;         /* tuple */
    PyObject *kwargs;       /* dict (private copy) */
    PyObject *version;      /* int or str */
    PyObject *capabilities; /* tuple of str, sorted, unique */
    PyObject *mode;         /* str */
    PyObject *answer_limit; /* None or int */
    PyObject *stream_buffer;/* None or int */
    PyObject *consistency;  /* str */
    PyObject *deadline;     /* None or float */
    PyObject *volatile_kwargs; /* dict (private copy): passed to the op, not keyed */
    PyObject *key;          /* ContentKey */
    char stream;
    char trace;
    char sharing;           /* SHARING_* */
    uint8_t digest[FAB_SHA256_LEN];
} EvalRequestObject;

enum {
    KW_OP, KW_ARGS, KW_KWARGS, KW_VERSION, KW_CAPS, KW_MODE, KW_ANSWER_LIMIT,
    KW_STREAM_BUFFER, KW_STREAM, KW_TRACE, KW_CONSISTENCY, KW_DEADLINE, KW_SHARING,
    KW_VOLATILE, KW_COUNT
};
_Static_assert(KW_COUNT <= sizeof(((fab_state *)0)->kw_names) / sizeof(PyObject *),
               "fab_state.kw_names holds every keyword");

static const char *const kw_strings[KW_COUNT] = {
    "op", "args", "kwargs", "version", "required_capabilities", "mode", "answer_limit",
    "stream_buffer", "stream", "trace", "consistency", "deadline", "sharing",
    "volatile_kwargs",
};

/* The sharing classes, by SHARING_* index, and their canonical encodings
 * (a fixstr each: 0xa0 | length, then the name). */
enum { SHARING_PURE, SHARING_RECORDED, SHARING_UNCACHEABLE, SHARING_COUNT };
static const char *const sharing_names[SHARING_COUNT] = {"pure", "recorded", "uncacheable"};
static const struct {
    uint8_t len;
    uint8_t bytes[12];
} sharing_enc[SHARING_COUNT] = {
    {5, "\xa4" "pure"}, {9, "\xa8" "recorded"}, {12, "\xab" "uncacheable"},
};

static const char *const consistency_values[] = {"local-first", "local-only", "no-home", NULL};

static int is_identifier_like(PyObject *s)
{
    /* [a-z][a-z0-9_.-]{0,63} */
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(s, &n);
    if (p == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (n < 1 || n > 64 || !(p[0] >= 'a' && p[0] <= 'z'))
        return 0;
    for (Py_ssize_t i = 1; i < n; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-'))
            return 0;
    }
    return 1;
}

/* None, or an int > 0 (bool refused). New reference or NULL. */
static PyObject *positive_int_or_none(PyObject *v, const char *name)
{
    if (v == NULL || v == Py_None)
        return Py_NewRef(Py_None);
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "EvalRequest %s must be None or an int, not %s",
                     name, Py_TYPE(v)->tp_name);
        return NULL;
    }
    int sign = _PyLong_Sign(v);
    if (sign <= 0) {
        PyErr_Format(PyExc_ValueError, "EvalRequest %s must be positive, got %R", name, v);
        return NULL;
    }
    return PyNumber_Index(v); /* a plain int, even for int subclasses */
}

static int bool_arg(PyObject *v, const char *name, char *out)
{
    if (v == NULL) {
        *out = 0;
        return 0;
    }
    if (v != Py_True && v != Py_False) {
        PyErr_Format(PyExc_TypeError, "EvalRequest %s must be True or False, not %.50R",
                     name, v);
        return -1;
    }
    *out = v == Py_True;
    return 0;
}

static PyObject *sorted_capabilities(PyObject *caps)
{
    if (caps == NULL)
        return PyTuple_New(0);
    if (PyUnicode_Check(caps) || PyBytes_Check(caps)) {
        PyErr_SetString(PyExc_TypeError,
                        "EvalRequest required_capabilities must be an iterable of str, "
                        "not a single string (wrap it in a tuple)");
        return NULL;
    }
    PyObject *list = PySequence_List(caps);
    if (list == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "EvalRequest required_capabilities must be an iterable of str, not %s",
                         Py_TYPE(caps)->tp_name);
        }
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(list, i);
        if (!PyUnicode_CheckExact(c) || PyUnicode_GET_LENGTH(c) == 0) {
            PyErr_Format(PyExc_TypeError,
                         "EvalRequest required_capabilities must hold non-empty str, "
                         "found %.50R", c);
            Py_DECREF(list);
            return NULL;
        }
    }
    /* Exact str only, so sorting and comparing run no user code. */
    if (PyList_Sort(list) < 0) {
        Py_DECREF(list);
        return NULL;
    }
    PyObject *t = PyTuple_New(n);
    if (t == NULL) {
        Py_DECREF(list);
        return NULL;
    }
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(list, i);
        if (m > 0 && PyUnicode_Compare(PyTuple_GET_ITEM(t, m - 1), c) == 0)
            continue; /* a duplicate of the previous one */
        PyTuple_SET_ITEM(t, m++, Py_NewRef(c));
    }
    Py_DECREF(list);
    if (m < n && _PyTuple_Resize(&t, m) < 0)
        return NULL;
    return t;
}

/* The identity of a request (the key's input) as the walker's pieces, into
 * p (11 of them; flags holds the last piece's bytes): their count. */
static size_t request_pieces(fab_state *st, EvalRequestObject *r, fab_py_piece p[11],
                             uint8_t flags[2 + sizeof(sharing_enc[0].bytes)])
{
    /* The array header (12 fields) and the scheme tag never change. */
    static const uint8_t prefix[] = "\x9c\xac" KEY_SCHEME_TAG;
    _Static_assert(sizeof(KEY_SCHEME_TAG) - 1 == 0xac - 0xa0, "tag length is in the header");
    /* Most requests leave kwargs, capabilities, mode and the two limits at
     * their defaults: those five fields are then one run of constant bytes
     * ({}, [], "eval", nil, nil), written after args. */
    static const uint8_t defaults[] = "\x80\x90\xa4" "eval" "\xc0\xc0";
    /* stream, trace and the sharing class: the array's last three fields. */
    fab_put_bool(flags, r->stream);
    fab_put_bool(flags + 1, r->trace);
    memcpy(flags + 2, sharing_enc[(int)r->sharing].bytes, sharing_enc[(int)r->sharing].len);
    size_t n = 0;
    p[n++] = (fab_py_piece){NULL, NULL, prefix, sizeof(prefix) - 1};
    p[n++] = (fab_py_piece){r->op, "op", NULL, 0};
    p[n++] = (fab_py_piece){r->version, "version", NULL, 0};
    p[n++] = (fab_py_piece){r->args, "args", NULL, 0};
    if (r->kwargs == st->empty_dict && PyTuple_GET_SIZE(r->capabilities) == 0 &&
        r->mode == st->str_eval && r->answer_limit == Py_None && r->stream_buffer == Py_None) {
        p[n++] = (fab_py_piece){NULL, NULL, defaults, sizeof(defaults) - 1};
    } else {
        p[n++] = (fab_py_piece){r->kwargs, "kwargs", NULL, 0};
        p[n++] = (fab_py_piece){r->capabilities, "required_capabilities", NULL, 0};
        p[n++] = (fab_py_piece){r->mode, "mode", NULL, 0};
        p[n++] = (fab_py_piece){r->answer_limit, "answer_limit", NULL, 0};
        p[n++] = (fab_py_piece){r->stream_buffer, "stream_buffer", NULL, 0};
    }
    p[n++] = (fab_py_piece){NULL, NULL, flags, 2 + (size_t)sharing_enc[(int)r->sharing].len};
    return n;
}

/* The request's digest into r->digest. */
static int request_digest(fab_state *st, EvalRequestObject *r)
{
    fab_py_piece p[11];
    uint8_t flags[2 + sizeof(sharing_enc[0].bytes)];
    size_t n = request_pieces(st, r, p, flags);
    return fab_py_digest_pieces(st, "request", p, n, r->digest);
}

static void EvalRequest_clear_fields(EvalRequestObject *r)
{
    Py_CLEAR(r->op);
    Py_CLEAR(r->args);
    Py_CLEAR(r->kwargs);
    Py_CLEAR(r->version);
    Py_CLEAR(r->capabilities);
    Py_CLEAR(r->mode);
    Py_CLEAR(r->answer_limit);
    Py_CLEAR(r->stream_buffer);
    Py_CLEAR(r->consistency);
    Py_CLEAR(r->deadline);
    Py_CLEAR(r->volatile_kwargs);
    Py_CLEAR(r->key);
}

/* A private copy of a keyword-argument mapping (None or empty: the shared
 * empty dict, never handed out). New reference or NULL. */
static PyObject *kwargs_copy(fab_state *st, PyObject *v, const char *name)
{
    PyObject *d;
    if (v == NULL || v == Py_None || (PyDict_Check(v) && PyDict_GET_SIZE(v) == 0)) {
        return Py_NewRef(st->empty_dict);
    } else if (PyDict_Check(v)) {
        d = PyDict_Copy(v);
    } else if (PyMapping_Check(v) && !PySequence_Check(v)) {
        d = PyDict_New();
        if (d && PyDict_Merge(d, v, 1) < 0)
            Py_CLEAR(d);
    } else {
        PyErr_Format(PyExc_TypeError, "EvalRequest %s must be None or a mapping, not %s",
                     name, Py_TYPE(v)->tp_name);
        return NULL;
    }
    if (d == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *k, *val;
    while (PyDict_Next(d, &pos, &k, &val)) {
        if (!PyUnicode_Check(k)) {
            PyErr_Format(PyExc_TypeError, "EvalRequest %s keys must be str, found %.50R", name,
                         k);
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

static PyObject *request_build(fab_state *st, PyObject *const *kw)
{
    PyTypeObject *tp = st->EvalRequest_Type;
    EvalRequestObject *r = (EvalRequestObject *)tp->tp_alloc(tp, 0);
    if (r == NULL)
        return NULL;
    PyObject *v;

    /* op */
    v = kw[KW_OP];
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "EvalRequest() missing required argument 'op'");
        goto fail;
    }
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "EvalRequest op must be a str, not %s", Py_TYPE(v)->tp_name);
        goto fail;
    }
    if (PyUnicode_GET_LENGTH(v) == 0) {
        PyErr_SetString(PyExc_ValueError, "EvalRequest op must not be empty");
        goto fail;
    }
    r->op = Py_NewRef(v);

    /* args */
    v = kw[KW_ARGS];
    if (v == NULL)
        r->args = Py_NewRef(st->empty_tuple);
    else if (PyTuple_CheckExact(v))
        r->args = Py_NewRef(v);
    else if (PyTuple_Check(v) || PyList_Check(v))
        r->args = PySequence_Tuple(v);
    else {
        PyErr_Format(PyExc_TypeError, "EvalRequest args must be a tuple or list, not %s",
                     Py_TYPE(v)->tp_name);
        goto fail;
    }
    if (r->args == NULL)
        goto fail;

    /* kwargs: a private copy, so later changes to the caller's dict do not
     * change a request whose key is already taken. */
    if ((r->kwargs = kwargs_copy(st, kw[KW_KWARGS], "kwargs")) == NULL)
        goto fail;

    /* version */
    v = kw[KW_VERSION];
    if (v == NULL) {
        r->version = PyLong_FromLong(0);
    } else if (PyLong_Check(v) && !PyBool_Check(v)) {
        if (_PyLong_Sign(v) < 0) {
            PyErr_Format(PyExc_ValueError, "EvalRequest version must be >= 0, got %R", v);
            goto fail;
        }
        r->version = PyNumber_Index(v);
    } else if (PyUnicode_Check(v) && PyUnicode_GET_LENGTH(v) > 0) {
        r->version = Py_NewRef(v);
    } else {
        PyErr_Format(PyExc_TypeError,
                     "EvalRequest version must be an int >= 0 or a non-empty str, not %.50R", v);
        goto fail;
    }
    if (r->version == NULL)
        goto fail;

    r->capabilities = sorted_capabilities(kw[KW_CAPS]);
    if (r->capabilities == NULL)
        goto fail;

    v = kw[KW_MODE];
    if (v == NULL) {
        r->mode = Py_NewRef(st->str_eval);
    } else if (PyUnicode_Check(v) && is_identifier_like(v)) {
        r->mode = Py_NewRef(v);
    } else if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "EvalRequest mode must be a str, not %s",
                     Py_TYPE(v)->tp_name);
        goto fail;
    } else {
        PyErr_Format(PyExc_ValueError,
                     "EvalRequest mode must be a lower-case name such as 'eval' "
                     "([a-z][a-z0-9_.-]*, at most 64 characters), got %.50R", v);
        goto fail;
    }

    if ((r->answer_limit = positive_int_or_none(kw[KW_ANSWER_LIMIT], "answer_limit")) == NULL)
        goto fail;
    if ((r->stream_buffer = positive_int_or_none(kw[KW_STREAM_BUFFER], "stream_buffer")) == NULL)
        goto fail;
    if (bool_arg(kw[KW_STREAM], "stream", &r->stream) < 0 ||
        bool_arg(kw[KW_TRACE], "trace", &r->trace) < 0)
        goto fail;

    v = kw[KW_CONSISTENCY];
    if (v == NULL) {
        r->consistency = Py_NewRef(st->str_local_first);
    } else {
        int ok = 0;
        if (PyUnicode_Check(v))
            for (int i = 0; consistency_values[i]; i++)
                if (PyUnicode_CompareWithASCIIString(v, consistency_values[i]) == 0)
                    ok = 1;
        if (!ok) {
            PyErr_Format(PyExc_ValueError,
                         "EvalRequest consistency must be 'local-first', 'local-only' or "
                         "'no-home', got %.50R", v);
            goto fail;
        }
        r->consistency = Py_NewRef(v);
    }

    v = kw[KW_DEADLINE];
    if (v == NULL || v == Py_None) {
        r->deadline = Py_NewRef(Py_None);
    } else {
        if (PyBool_Check(v) || !(PyLong_Check(v) || PyFloat_Check(v))) {
            PyErr_Format(PyExc_TypeError,
                         "EvalRequest deadline must be None or seconds as a number, not %s",
                         Py_TYPE(v)->tp_name);
            goto fail;
        }
        double d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                goto fail;
            PyErr_Clear(); /* an int beyond float range: refused below */
            d = Py_HUGE_VAL;
        }
        if (!(d > 0) || d == Py_HUGE_VAL) {
            PyErr_Format(PyExc_ValueError,
                         "EvalRequest deadline must be a positive, finite number of seconds, got %R", v);
            goto fail;
        }
        if (d > DEADLINE_MAX) { /* a wait that long is past the platform clock's range */
            PyErr_Format(PyExc_ValueError,
                         "EvalRequest deadline must be at most 1e9 seconds (about 31 years; "
                         "None for no deadline), got %R", v);
            goto fail;
        }
        r->deadline = PyFloat_FromDouble(d);
        if (r->deadline == NULL)
            goto fail;
    }

    v = kw[KW_SHARING];
    if (v == NULL) {
        r->sharing = SHARING_PURE;
    } else {
        int found = -1;
        if (PyUnicode_Check(v))
            for (int i = 0; i < SHARING_COUNT; i++)
                if (PyUnicode_CompareWithASCIIString(v, sharing_names[i]) == 0)
                    found = i;
        if (found < 0) {
            PyErr_Format(PyUnicode_Check(v) ? PyExc_ValueError : PyExc_TypeError,
                         "EvalRequest sharing must be 'pure', 'recorded' or 'uncacheable', "
                         "got %.50R", v);
            goto fail;
        }
        r->sharing = (char)found;
    }

    /* Volatile keyword arguments: passed to the op, never keyed. A name may
     * not be in both. */
    if ((r->volatile_kwargs = kwargs_copy(st, kw[KW_VOLATILE], "volatile_kwargs")) == NULL)
        goto fail;
    if (r->volatile_kwargs != st->empty_dict && PyDict_GET_SIZE(r->kwargs)) {
        Py_ssize_t pos = 0;
        PyObject *k, *val;
        while (PyDict_Next(r->volatile_kwargs, &pos, &k, &val)) {
            int in = PyDict_Contains(r->kwargs, k);
            if (in < 0)
                goto fail;
            if (in) {
                PyErr_Format(PyExc_TypeError,
                             "EvalRequest keyword argument %R is in both kwargs and "
                             "volatile_kwargs", k);
                goto fail;
            }
        }
    }

    if (request_digest(st, r) < 0)
        goto fail;
    /* Made now, not on first access: every path through a fabric needs it,
     * and a plain member is the fastest attribute to read. */
    if ((r->key = fab_py_key_from_digest(st, r->digest)) == NULL)
        goto fail;
    return (PyObject *)r;
fail:
    Py_DECREF(r);
    return NULL;
}

static PyObject *EvalRequest_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf,
                                        PyObject *kwnames)
{
    fab_state *st = fab_state_from_type((PyTypeObject *)type);
    if (st == NULL)
        return NULL;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *kw[KW_COUNT] = {NULL};
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError,
                     "EvalRequest() takes at most 3 positional arguments (op, args, kwargs), "
                     "%zd given", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        kw[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int slot = -1;
        for (int j = 0; j < KW_COUNT; j++)
            if (name == st->kw_names[j]) {
                slot = j;
                break;
            }
        if (slot < 0)
            for (int j = 0; j < KW_COUNT; j++)
                if (PyUnicode_Compare(name, st->kw_names[j]) == 0) {
                    slot = j;
                    break;
                }
        if (slot < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "EvalRequest() got an unexpected keyword argument %R",
                         name);
            return NULL;
        }
        if (kw[slot] != NULL) {
            PyErr_Format(PyExc_TypeError, "EvalRequest() got multiple values for argument %R",
                         name);
            return NULL;
        }
        kw[slot] = args[nargs + i];
    }
    return request_build(st, kw);
}

static PyObject *EvalRequest_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    /* The slow path, for callers that do not use vectorcall. */
    PyObject *names = NULL, *result = NULL;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    Py_ssize_t nkw = kwargs ? PyDict_GET_SIZE(kwargs) : 0;
    PyObject **stack = PyMem_Malloc(sizeof(PyObject *) * (size_t)(nargs + nkw + 1));
    if (stack == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < nargs; i++)
        stack[i] = PyTuple_GET_ITEM(args, i);
    if (nkw) {
        names = PyTuple_New(nkw);
        if (names == NULL)
            goto done;
        Py_ssize_t pos = 0, i = 0;
        PyObject *k, *v;
        while (PyDict_Next(kwargs, &pos, &k, &v)) {
            PyTuple_SET_ITEM(names, i, Py_NewRef(k));
            stack[nargs + i] = v;
            i++;
        }
    }
    result = EvalRequest_vectorcall((PyObject *)type, stack, (size_t)nargs, names);
done:
    Py_XDECREF(names);
    PyMem_Free(stack);
    return result;
}

static int EvalRequest_traverse(EvalRequestObject *r, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(r));
    Py_VISIT(r->args);
    Py_VISIT(r->kwargs);
    Py_VISIT(r->volatile_kwargs);
    return 0;
}

static int EvalRequest_clear(EvalRequestObject *r)
{
    EvalRequest_clear_fields(r);
    return 0;
}

static void EvalRequest_dealloc(EvalRequestObject *r)
{
    PyTypeObject *tp = Py_TYPE(r);
    PyObject_GC_UnTrack(r);
    EvalRequest_clear_fields(r);
    tp->tp_free(r);
    Py_DECREF(tp);
}

/* A new reference to the request's key. */
static PyObject *request_key(EvalRequestObject *r)
{
    if (r->key == NULL) { /* cleared by the collector */
        PyErr_SetString(PyExc_AttributeError, "EvalRequest has no key (it was cleared)");
        return NULL;
    }
    return Py_NewRef(r->key);
}

/* The module's interned str of the request's sharing class: read on every
 * miss, made once (new reference, or NULL with an exception). */
static PyObject *sharing_str(EvalRequestObject *r)
{
    fab_state *st = fab_state_from_type(Py_TYPE(r));
    return st ? Py_NewRef(st->str_sharing[(int)r->sharing]) : NULL;
}

/* EvalRequest_get_<name>: the getter that returns expr (of r). */
#define GETTER(name, expr)                                                       \
    static PyObject *EvalRequest_get_##name(EvalRequestObject *r, void *closure) \
    {                                                                            \
        FAB_UNUSED(closure);                                                     \
        return expr;                                                             \
    }
GETTER(stream, PyBool_FromLong(r->stream))
GETTER(trace, PyBool_FromLong(r->trace))
GETTER(kwargs, PyDictProxy_New(r->kwargs))
GETTER(volatile, PyDictProxy_New(r->volatile_kwargs))
GETTER(sharing, sharing_str(r))
GETTER(caps, Py_NewRef(r->capabilities))
#undef GETTER

/* The fields that are plain objects are members: the interpreter reads
 * them without a call. */
static PyMemberDef EvalRequest_members[] = {
    {"op", T_OBJECT_EX, offsetof(EvalRequestObject, op), READONLY,
     "The operation's registered name."},
    {"args", T_OBJECT_EX, offsetof(EvalRequestObject, args), READONLY,
     "Positional arguments (a tuple)."},
    {"version", T_OBJECT_EX, offsetof(EvalRequestObject, version), READONLY,
     "The op's version (int or str)."},
    {"mode", T_OBJECT_EX, offsetof(EvalRequestObject, mode), READONLY,
     "Evaluation mode, 'eval' by default."},
    {"answer_limit", T_OBJECT_EX, offsetof(EvalRequestObject, answer_limit), READONLY,
     "Most items a streamed answer may carry, or None."},
    {"stream_buffer", T_OBJECT_EX, offsetof(EvalRequestObject, stream_buffer), READONLY,
     "Items buffered ahead of a streaming consumer, or None."},
    {"consistency", T_OBJECT_EX, offsetof(EvalRequestObject, consistency), READONLY,
     "Routing policy (not part of the key)."},
    {"deadline", T_OBJECT_EX, offsetof(EvalRequestObject, deadline), READONLY,
     "Seconds the caller will wait, or None (not part of the key)."},
    {"key", T_OBJECT_EX, offsetof(EvalRequestObject, key), READONLY, "The request's ContentKey."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef EvalRequest_getset[] = {
    {"kwargs", (getter)EvalRequest_get_kwargs, NULL, "Keyword arguments (read-only mapping).", NULL},
    {"required_capabilities", (getter)EvalRequest_get_caps, NULL,
     "Capabilities the caller must hold, sorted and de-duplicated.", NULL},
    {"stream", (getter)EvalRequest_get_stream, NULL, "True for a streamed reply.", NULL},
    {"trace", (getter)EvalRequest_get_trace, NULL, "True to collect a trace.", NULL},
    {"sharing", (getter)EvalRequest_get_sharing, NULL,
     "The op's sharing class: 'pure', 'recorded' or 'uncacheable' (part of the key).", NULL},
    {"volatile_kwargs", (getter)EvalRequest_get_volatile, NULL,
     "Keyword arguments passed to the op but not part of the key (read-only mapping).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static Py_hash_t EvalRequest_hash(EvalRequestObject *r)
{
    Py_hash_t h;
    memcpy(&h, r->digest, sizeof(h));
    return h == -1 ? -2 : h;
}

static PyObject *EvalRequest_richcompare(PyObject *a, PyObject *b, int op)
{
    if (Py_TYPE(a) != Py_TYPE(b) || (op != Py_EQ && op != Py_NE))
        Py_RETURN_NOTIMPLEMENTED;
    /* Two requests are equal when they ask for the same work: the same key
     * and the same routing policy. */
    EvalRequestObject *x = (EvalRequestObject *)a, *y = (EvalRequestObject *)b;
    int eq = memcmp(x->digest, y->digest, FAB_SHA256_LEN) == 0;
    if (eq) {
        int c = PyObject_RichCompareBool(x->consistency, y->consistency, Py_EQ);
        if (c < 0)
            return NULL;
        int d = PyObject_RichCompareBool(x->deadline, y->deadline, Py_EQ);
        if (d < 0)
            return NULL;
        eq = c && d;
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

/* repr(v), cut to at most max characters. */
static PyObject *cut_repr(PyObject *v, Py_ssize_t max)
{
    PyObject *r = PyObject_Repr(v);
    if (r == NULL || PyUnicode_GET_LENGTH(r) <= max)
        return r;
    PyObject *cut = PyUnicode_Substring(r, 0, max - 3);
    Py_DECREF(r);
    if (cut == NULL)
        return NULL;
    r = PyUnicode_FromFormat("%U...", cut);
    Py_DECREF(cut);
    return r;
}

static PyObject *EvalRequest_repr(EvalRequestObject *r)
{
    PyObject *parts = PyList_New(0), *s = NULL, *sep = NULL, *out = NULL;
    if (parts == NULL)
        return NULL;
#define ADD(fmt, ...)                                                  \
    do {                                                               \
        PyObject *t_ = PyUnicode_FromFormat(fmt, __VA_ARGS__);         \
        if (t_ == NULL || PyList_Append(parts, t_) < 0) {              \
            Py_XDECREF(t_);                                            \
            goto done;                                                 \
        }                                                              \
        Py_DECREF(t_);                                                 \
    } while (0)
/* name=repr(v), cut to 120 characters, when size (v's) is not 0. */
#define ADD_CUT(name, v, size)                                         \
    do {                                                               \
        if (size) {                                                    \
            if ((s = cut_repr(v, 120)) == NULL)                        \
                goto done;                                             \
            ADD(name "=%U", s);                                        \
            Py_CLEAR(s);                                               \
        }                                                              \
    } while (0)
    ADD("%R", r->op);
    ADD_CUT("args", r->args, PyTuple_GET_SIZE(r->args));
    ADD_CUT("kwargs", r->kwargs, PyDict_GET_SIZE(r->kwargs));
    ADD("version=%R", r->version);
    if (PyTuple_GET_SIZE(r->capabilities))
        ADD("required_capabilities=%R", r->capabilities);
    if (PyUnicode_CompareWithASCIIString(r->mode, "eval") != 0)
        ADD("mode=%R", r->mode);
    if (r->answer_limit != Py_None)
        ADD("answer_limit=%R", r->answer_limit);
    if (r->stream_buffer != Py_None)
        ADD("stream_buffer=%R", r->stream_buffer);
    if (r->stream)
        ADD("%s", "stream=True");
    if (r->trace)
        ADD("%s", "trace=True");
    if (r->sharing != SHARING_PURE)
        ADD("sharing='%s'", sharing_names[(int)r->sharing]);
    ADD_CUT("volatile_kwargs", r->volatile_kwargs, PyDict_GET_SIZE(r->volatile_kwargs));
    if (PyUnicode_CompareWithASCIIString(r->consistency, "local-first") != 0)
        ADD("consistency=%R", r->consistency);
    if (r->deadline != Py_None)
        ADD("deadline=%R", r->deadline);
    ADD("key=sha256:%02x%02x%02x%02x%02x%02x...", r->digest[0], r->digest[1], r->digest[2],
        r->digest[3], r->digest[4], r->digest[5]);
#undef ADD_CUT
#undef ADD
    sep = PyUnicode_FromString(", ");
    if (sep == NULL)
        goto done;
    s = PyUnicode_Join(sep, parts);
    if (s == NULL)
        goto done;
    out = PyUnicode_FromFormat("EvalRequest(%U)", s);
done:
    Py_XDECREF(s);
    Py_XDECREF(sep);
    Py_DECREF(parts);
    return out;
}

/* The bytes the key hashes, written from the same pieces in one pass. */
static PyObject *EvalRequest_identity_bytes(EvalRequestObject *r, PyObject *Py_UNUSED(ignored))
{
    fab_state *st = fab_state_from_type(Py_TYPE(r));
    if (st == NULL)
        return NULL;
    fab_py_piece p[11];
    uint8_t flags[2 + sizeof(sharing_enc[0].bytes)];
    size_t n = request_pieces(st, r, p, flags);
    fab_buf buf;
    fab_enc enc;
    fab_buf_init(&buf);
    fab_enc_init(&enc, fab_buf_sink, &buf);
    PyObject *out = NULL;
    if (fab_py_encode_pieces(st, &enc, "request", p, n) == 0)
        out = PyBytes_FromStringAndSize((const char *)buf.data, (Py_ssize_t)buf.len);
    fab_buf_destroy(&buf);
    return out;
}

static PyObject *EvalRequest_replace(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                     PyObject *kwnames)
{
    EvalRequestObject *r = (EvalRequestObject *)self;
    fab_state *st = fab_state_from_type(Py_TYPE(r));
    if (st == NULL)
        return NULL;
    if (nargs) {
        PyErr_SetString(PyExc_TypeError, "EvalRequest.replace() takes keyword arguments only");
        return NULL;
    }
    PyObject *kw[KW_COUNT];
    PyObject *owned[3] = {NULL, NULL, NULL};
    PyObject *result = NULL;
    _Static_assert(KW_COUNT == 14, "replace() sets every field");
    kw[KW_OP] = r->op;
    kw[KW_ARGS] = r->args;
    kw[KW_KWARGS] = r->kwargs;
    kw[KW_VERSION] = r->version;
    kw[KW_CAPS] = r->capabilities;
    kw[KW_MODE] = r->mode;
    kw[KW_ANSWER_LIMIT] = r->answer_limit;
    kw[KW_STREAM_BUFFER] = r->stream_buffer;
    kw[KW_STREAM] = owned[0] = PyBool_FromLong(r->stream);
    kw[KW_TRACE] = owned[1] = PyBool_FromLong(r->trace);
    kw[KW_CONSISTENCY] = r->consistency;
    kw[KW_DEADLINE] = r->deadline;
    kw[KW_SHARING] = owned[2] = PyUnicode_InternFromString(sharing_names[(int)r->sharing]);
    kw[KW_VOLATILE] = r->volatile_kwargs;
    if (owned[0] == NULL || owned[1] == NULL || owned[2] == NULL)
        goto done;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int slot = -1;
        for (int j = 0; j < KW_COUNT; j++)
            if (PyUnicode_Compare(name, st->kw_names[j]) == 0)
                slot = j;
        if (slot < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "replace() got an unexpected keyword argument %R", name);
            goto done;
        }
        kw[slot] = args[i];
    }
    result = request_build(st, kw);
done:
    Py_XDECREF(owned[0]);
    Py_XDECREF(owned[1]);
    Py_XDECREF(owned[2]);
    return result;
}

static PyObject *EvalRequest_reduce(EvalRequestObject *r, PyObject *Py_UNUSED(ignored))
{
    /* Every field by name: keyword-only ones do not fit a positional call. */
    return fab_py_reduce((PyObject *)r, Py_BuildValue(
        "{sOsOsOsOsOsOsOsOsOsOsOsOsssO}", "op", r->op, "args", r->args, "kwargs", r->kwargs,
        "version", r->version, "required_capabilities", r->capabilities, "mode", r->mode,
        "answer_limit", r->answer_limit, "stream_buffer", r->stream_buffer, "stream",
        r->stream ? Py_True : Py_False, "trace", r->trace ? Py_True : Py_False,
        "consistency", r->consistency, "deadline", r->deadline, "sharing",
        sharing_names[(int)r->sharing], "volatile_kwargs", r->volatile_kwargs));
}

/* The request whose fields __reduce__ gave, checked again as if new. */
static PyObject *EvalRequest_unpickle(PyObject *cls, PyObject *fields)
{
    fab_state *st = fab_state_from_type((PyTypeObject *)cls);
    if (st == NULL)
        return NULL;
    if (!PyDict_Check(fields)) {
        PyErr_Format(PyExc_TypeError, "EvalRequest._unpickle() takes a dict, not %s",
                     Py_TYPE(fields)->tp_name);
        return NULL;
    }
    PyObject *kw[KW_COUNT];
    for (int i = 0; i < KW_COUNT; i++)
        kw[i] = PyDict_GetItemWithError(fields, st->kw_names[i]);
    if (PyErr_Occurred())
        return NULL;
    return request_build(st, kw);
}

/* For notebooks: the repr (arguments cut, secrets redacted as in repr) and
 * the key, bounded whatever the arguments' size. */
static PyObject *EvalRequest_repr_html(EvalRequestObject *r, PyObject *Py_UNUSED(ignored))
{
    PyObject *text = EvalRequest_repr(r), *code = NULL, *key = NULL, *key_text = NULL;
    PyObject *out = NULL;
    if (text == NULL || (code = fab_py_html_code(text, NULL)) == NULL ||
        (key = request_key(r)) == NULL || (key_text = PyObject_Str(key)) == NULL)
        goto done;
    out = PyUnicode_FromFormat("<b>EvalRequest</b> %U<br><small>key <code>%U</code></small>",
                               code, key_text);
done:
    Py_XDECREF(text);
    Py_XDECREF(code);
    Py_XDECREF(key);
    Py_XDECREF(key_text);
    return out;
}

static PyMethodDef EvalRequest_methods[] = {
    {"identity_bytes", (PyCFunction)EvalRequest_identity_bytes, METH_NOARGS,
     "identity_bytes($self, /)\n--\n\n"
     "The canonical msgpack bytes whose SHA-256 is the content key."},
    {"replace", (PyCFunction)(void (*)(void))EvalRequest_replace, METH_FASTCALL | METH_KEYWORDS,
     "replace($self, /, **changes)\n--\n\nA copy of the request with some fields changed."},
    {"__reduce__", (PyCFunction)EvalRequest_reduce, METH_NOARGS, NULL},
    {"_unpickle", EvalRequest_unpickle, METH_O | METH_CLASS, NULL},
    {"_repr_html_", (PyCFunction)EvalRequest_repr_html, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot EvalRequest_slots[] = {
    {Py_tp_doc,
     "EvalRequest(op, args=(), kwargs=None, *, version=0, required_capabilities=(), "
     "mode='eval', answer_limit=None, stream_buffer=None, stream=False, trace=False, "
     "consistency='local-first', deadline=None, sharing='pure', volatile_kwargs=None)\n"
     "--\n\n"
     "An immutable evaluation request. Its content key (.key) is computed at "
     "construction from the identity fields (sharing included); consistency and "
     "deadline are routing policy and volatile_kwargs are passed to the op without "
     "being keyed: none of the three changes the key."},
    {Py_tp_new, EvalRequest_new},
    {Py_tp_dealloc, EvalRequest_dealloc},
    {Py_tp_traverse, EvalRequest_traverse},
    {Py_tp_clear, EvalRequest_clear},
    {Py_tp_repr, EvalRequest_repr},
    {Py_tp_hash, EvalRequest_hash},
    {Py_tp_richcompare, EvalRequest_richcompare},
    {Py_tp_members, EvalRequest_members},
    {Py_tp_getset, EvalRequest_getset},
    {Py_tp_methods, EvalRequest_methods},
    {0, NULL},
};

static PyType_Spec EvalRequest_spec = {
    .name = "fabric.EvalRequest",
    .basicsize = sizeof(EvalRequestObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = EvalRequest_slots,
};

/* ======================================================================== */
/* The payload of a network open (docs/spec/protocol.md)                    */
/* ======================================================================== */

/* v's items if they are all exact str, as a new reference: a tuple or list
 * as it is; a frozenset or set (sort) as a sorted list. NULL with no
 * exception for anything else. */
static PyObject *str_items(PyObject *v, int sort)
{
    PyObject *seq;
    if (PyTuple_CheckExact(v) || PyList_CheckExact(v)) {
        if (sort && PySequence_Fast_GET_SIZE(v) > 1)
            return NULL; /* only sets are sorted here */
        seq = Py_NewRef(v);
    } else if (sort && (PyFrozenSet_CheckExact(v) || PySet_CheckExact(v))) {
        if (PySet_GET_SIZE(v) == 0)
            return PyTuple_New(0);
        if ((seq = PySequence_List(v)) == NULL) {
            PyErr_Clear();
            return NULL;
        }
    } else {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_CheckExact(items[i])) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    /* exact str only: the sort runs no user code */
    if (sort && PyList_CheckExact(seq) && PyList_Sort(seq) < 0) {
        PyErr_Clear();
        Py_DECREF(seq);
        return NULL;
    }
    return seq;
}

#define K(lit) (const uint8_t *)(lit), sizeof(lit) - 1
#define M(r) "value['metadata']" r

/* _open_payload(request, want, scope, grants, timeout, via): the canonical
 * bytes of {"op": "open", "metadata": {"request": <the request map>, "key":
 * digest, "want", "scope", "grants": sorted, "timeout", "via"}} written
 * from the request's fields in one walk: the bytes protocol.open_payload
 * builds through dicts. None (build it that way, after the Secret check)
 * when an argument holds a fabric.Secret or a subclass of a builtin
 * container, or when want, scope, grants or via are not of the plain types
 * the client passes. */
static PyObject *open_payload(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "_open_payload(request, want, scope, grants, timeout, via) takes 6 "
                        "positional arguments");
        return NULL;
    }
    fab_state *st = fab_get_state(module);
    PyObject *req = args[0], *want = args[1], *scope = args[2], *timeout = args[4];
    if (Py_TYPE(req) != st->EvalRequest_Type) {
        PyErr_Format(PyExc_TypeError, "expected an EvalRequest, not %.100s",
                     Py_TYPE(req)->tp_name);
        return NULL;
    }
    EvalRequestObject *r = (EvalRequestObject *)req;
    if (!PyUnicode_CheckExact(want) || !PyUnicode_CheckExact(scope) || r->key == NULL ||
        r->op == NULL || r->args == NULL || r->kwargs == NULL || r->version == NULL ||
        r->capabilities == NULL || r->mode == NULL || r->answer_limit == NULL ||
        r->stream_buffer == NULL || r->consistency == NULL || r->deadline == NULL)
        Py_RETURN_NONE; /* (a request cleared by the collector has no fields) */
    PyObject *grants = str_items(args[3], 1);
    if (grants == NULL)
        Py_RETURN_NONE;
    PyObject *via = str_items(args[5], 0);
    if (via == NULL) {
        Py_DECREF(grants);
        Py_RETURN_NONE;
    }
    uint8_t trace[1], stream[1];
    fab_put_bool(trace, r->trace);
    fab_put_bool(stream, r->stream);
    /* The maps' keys in canonical order (shorter encodings first). */
    const fab_py_piece p[] = {
        {NULL, NULL, K("\x82\xa2" "op" "\xa4" "open" "\xa8" "metadata" "\x87\xa3" "key"
                       "\xc4\x20")},
        {NULL, NULL, r->digest, FAB_SHA256_LEN},
        {NULL, NULL, K("\xa3" "via")},
        {via, M("['via']"), NULL, 0},
        {NULL, NULL, K("\xa4" "want")},
        {want, M("['want']"), NULL, 0},
        {NULL, NULL, K("\xa5" "scope")},
        {scope, M("['scope']"), NULL, 0},
        {NULL, NULL, K("\xa6" "grants")},
        {grants, M("['grants']"), NULL, 0},
        {NULL, NULL, K("\xa7" "request" "\x8d\xa2" "op")},
        {r->op, M("['request']['op']"), NULL, 0},
        {NULL, NULL, K("\xa4" "args")},
        {r->args, M("['request']['args']"), NULL, 0},
        {NULL, NULL, K("\xa4" "caps")},
        {r->capabilities, M("['request']['caps']"), NULL, 0},
        {NULL, NULL, K("\xa4" "mode")},
        {r->mode, M("['request']['mode']"), NULL, 0},
        {NULL, NULL, K("\xa5" "trace")},
        {NULL, NULL, trace, 1},
        {NULL, NULL, K("\xa6" "kwargs")},
        {r->kwargs, M("['request']['kwargs']"), NULL, 0},
        {NULL, NULL, K("\xa6" "stream")},
        {NULL, NULL, stream, 1},
        {NULL, NULL, K("\xa7" "sharing")},
        {NULL, NULL, sharing_enc[(int)r->sharing].bytes, sharing_enc[(int)r->sharing].len},
        {NULL, NULL, K("\xa7" "version")},
        {r->version, M("['request']['version']"), NULL, 0},
        {NULL, NULL, K("\xa8" "deadline")},
        {r->deadline, M("['request']['deadline']"), NULL, 0},
        {NULL, NULL, K("\xab" "consistency")},
        {r->consistency, M("['request']['consistency']"), NULL, 0},
        {NULL, NULL, K("\xac" "answer_limit")},
        {r->answer_limit, M("['request']['answer_limit']"), NULL, 0},
        {NULL, NULL, K("\xad" "stream_buffer")},
        {r->stream_buffer, M("['request']['stream_buffer']"), NULL, 0},
        {NULL, NULL, K("\xa7" "timeout")},
        {timeout, M("['timeout']"), NULL, 0},
    };
    PyObject *out = fab_py_pieces_bytes_plain(st, "value", p, sizeof(p) / sizeof(p[0]));
    Py_DECREF(grants);
    Py_DECREF(via);
    return out;
}

#undef M
#undef K

static PyMethodDef request_functions[] = {
    {"_open_payload", (PyCFunction)(void (*)(void))open_payload, METH_FASTCALL,
     "_open_payload(request, want, scope, grants, timeout, via, /)\n--\n\n"
     "Internal: the payload of the CONTROL open that carries request (the bytes\n"
     "fabric.node.protocol.open_payload builds), or None when the request holds\n"
     "a fabric.Secret or a subclass of a builtin container, or an argument is not\n"
     "of the plain type the client passes (then build it that way, after the\n"
     "Secret check)."},
    {NULL, NULL, 0, NULL},
};

/* ======================================================================== */
/* Module part                                                              */
/* ======================================================================== */

int fab_py_request_exec(PyObject *module, fab_state *st)
{
    if (PyModule_AddFunctions(module, request_functions) < 0)
        return -1;

    if ((st->EvalRequest_Type = fab_py_add_type(module, &EvalRequest_spec, NULL)) == NULL)
        return -1;
    /* Calling the type goes straight to the vectorcall constructor. */
    st->EvalRequest_Type->tp_vectorcall = EvalRequest_vectorcall;
    if ((st->str_eval = PyUnicode_InternFromString("eval")) == NULL ||
        (st->str_local_first = PyUnicode_InternFromString("local-first")) == NULL ||
        (st->empty_tuple = PyTuple_New(0)) == NULL ||
        (st->empty_dict = PyDict_New()) == NULL)
        return -1;
    for (int i = 0; i < KW_COUNT; i++)
        if ((st->kw_names[i] = PyUnicode_InternFromString(kw_strings[i])) == NULL)
            return -1;
    _Static_assert(SHARING_COUNT == sizeof(st->str_sharing) / sizeof(st->str_sharing[0]),
                   "one str per sharing class");
    for (int i = 0; i < SHARING_COUNT; i++)
        if ((st->str_sharing[i] = PyUnicode_InternFromString(sharing_names[i])) == NULL)
            return -1;
    if (PyModule_AddStringConstant(module, "KEY_SCHEME", KEY_SCHEME_TAG) < 0)
        return -1;
    return 0;
}

int fab_py_request_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->EvalRequest_Type);
    Py_VISIT(st->empty_dict);
    return 0;
}

void fab_py_request_clear(fab_state *st)
{
    Py_CLEAR(st->EvalRequest_Type);
    Py_CLEAR(st->str_eval);
    Py_CLEAR(st->str_local_first);
    Py_CLEAR(st->empty_tuple);
    Py_CLEAR(st->empty_dict);
    for (int i = 0; i < KW_COUNT; i++)
        Py_CLEAR(st->kw_names[i]);
    for (int i = 0; i < SHARING_COUNT; i++)
        Py_CLEAR(st->str_sharing[i]);
}

/* ======================================================================== */
/* Accessors for other parts of the glue                                     */
/* ======================================================================== */

int fab_py_request_info(fab_state *st, PyObject *req, const uint8_t **digest, PyObject **caps,
                        int *stream)
{
    if (!PyObject_TypeCheck(req, st->EvalRequest_Type)) {
        PyErr_Format(PyExc_TypeError, "expected an EvalRequest, not %.100s",
                     Py_TYPE(req)->tp_name);
        return -1;
    }
    EvalRequestObject *r = (EvalRequestObject *)req;
    if (digest)
        *digest = r->digest;
    if (caps)
        *caps = r->capabilities;
    if (stream)
        *stream = r->stream;
    return 0;
}

PyObject *fab_py_request_key(fab_state *st, PyObject *req)
{
    if (!PyObject_TypeCheck(req, st->EvalRequest_Type)) {
        PyErr_Format(PyExc_TypeError, "expected an EvalRequest, not %.100s",
                     Py_TYPE(req)->tp_name);
        return NULL;
    }
    return request_key((EvalRequestObject *)req);
}

int fab_py_request_uncacheable(PyObject *req)
{
    /* req was checked to be an EvalRequest by fab_py_request_info. */
    return ((EvalRequestObject *)req)->sharing == SHARING_UNCACHEABLE;
}

PyObject *fab_py_request_identity(fab_state *st, PyObject *req)
{
    if (fab_py_request_info(st, req, NULL, NULL, NULL) < 0)
        return NULL;
    return EvalRequest_identity_bytes((EvalRequestObject *)req, NULL);
}
