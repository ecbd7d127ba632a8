/*
 * ContentKey (a request's SHA-256 identity) and Secret (an argument whose
 * value never enters a key).
 */
#include "glue.h"

#include <string.h>

#include "fabric/hash.h"

/* ======================================================================== */
/* Secret                                                                    */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    PyObject *value;
    int commit; /* keyed by HMAC of the value under the commitment key */
} SecretObject;

static PyObject *Secret_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *value;
    int commit = 0;
    static char *kwlist[] = {"value", "commit", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$p:Secret", kwlist, &value, &commit))
        return NULL;
    SecretObject *self = (SecretObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->value = Py_NewRef(value);
    self->commit = commit;
    return (PyObject *)self;
}

PyObject *fab_py_secret_value(PyObject *secret, int *commit)
{
    SecretObject *s = (SecretObject *)secret;
    *commit = s->commit;
    return s->value;
}

static PyObject *Secret_get_commit(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((SecretObject *)self)->commit);
}

static PyGetSetDef Secret_getset[] = {
    {"commit", Secret_get_commit, NULL,
     "True when the key carries HMAC-SHA256 of the value under the commitment key.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static int Secret_traverse(SecretObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->value);
    return 0;
}

static int Secret_clear(SecretObject *self)
{
    Py_CLEAR(self->value);
    return 0;
}

static void Secret_dealloc(SecretObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Secret_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *Secret_repr(PyObject *self)
{
    FAB_UNUSED(self);
    return PyUnicode_FromString("Secret('***')");
}

static PyObject *Secret_reveal(SecretObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self->value);
}

static PyObject *Secret_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    FAB_UNUSED(self);
    PyErr_SetString(PyExc_TypeError,
                    "a Secret cannot be pickled: its value would leave the process "
                    "(pass the secret to the worker another way)");
    return NULL;
}

/* For notebooks: the same redacted text as repr, never the value. */
static PyObject *Secret_repr_html(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *text = Secret_repr(self);
    if (text == NULL)
        return NULL;
    PyObject *out = fab_py_html_code(text, "a Secret: its value is never shown");
    Py_DECREF(text);
    return out;
}

static PyMethodDef Secret_methods[] = {
    {"reveal", (PyCFunction)Secret_reveal, METH_NOARGS,
     "reveal($self, /)\n--\n\nReturn the wrapped value."},
    {"__reduce__", Secret_reduce, METH_NOARGS, NULL},
    {"__reduce_ex__", (PyCFunction)Secret_reduce, METH_O, NULL},
    {"_repr_html_", Secret_repr_html, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Secret_slots[] = {
    {Py_tp_doc, "Secret(value, *, commit=False)\n--\n\n"
                "A sensitive argument. Its value never enters content-key bytes, "
                "frames, the ledger, logs, exception text or repr. By default a fixed "
                "marker stands in the key, so requests that differ only in the "
                "secret share a key; with commit=True the key carries HMAC-SHA256 of "
                "the value under the commitment key (fabric.set_commit_key, "
                "FABRIC_COMMIT_KEY or FABRIC_COMMIT_KEY_FILE), so keys differ per "
                "secret. Use .reveal() inside the op to read it."},
    {Py_tp_new, Secret_new},
    {Py_tp_traverse, Secret_traverse},
    {Py_tp_clear, Secret_clear},
    {Py_tp_dealloc, Secret_dealloc},
    {Py_tp_repr, Secret_repr},
    {Py_tp_str, Secret_repr},
    {Py_tp_methods, Secret_methods},
    {Py_tp_getset, Secret_getset},
    {0, NULL},
};

static PyType_Spec Secret_spec = {
    .name = "fabric.Secret",
    .basicsize = sizeof(SecretObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Secret_slots,
};

/* ======================================================================== */
/* ContentKey                                                               */
/* ======================================================================== */

typedef struct {
    PyObject_HEAD
    uint8_t digest[FAB_SHA256_LEN];
} ContentKeyObject;

PyObject *fab_py_key_from_digest(fab_state *st, const uint8_t *digest)
{
    /* Every field is set below: no need for tp_alloc's zeroing. */
    PyTypeObject *tp = st->ContentKey_Type;
    ContentKeyObject *k = PyObject_Malloc(sizeof(ContentKeyObject));
    if (k == NULL)
        return PyErr_NoMemory();
    PyObject_Init((PyObject *)k, tp);
    memcpy(k->digest, digest, FAB_SHA256_LEN);
    return (PyObject *)k;
}

const uint8_t *fab_py_key_digest(fab_state *st, PyObject *obj)
{
    return Py_IS_TYPE(obj, st->ContentKey_Type) ? ((ContentKeyObject *)obj)->digest : NULL;
}

static PyObject *ContentKey_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Py_buffer view;
    static char *kwlist[] = {"digest", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*:ContentKey", kwlist, &view))
        return NULL;
    if (view.len != FAB_SHA256_LEN) {
        PyErr_Format(PyExc_ValueError,
                     "ContentKey needs a %d-byte SHA-256 digest, got %zd bytes",
                     FAB_SHA256_LEN, view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    ContentKeyObject *k = (ContentKeyObject *)type->tp_alloc(type, 0);
    if (k)
        memcpy(k->digest, view.buf, FAB_SHA256_LEN);
    PyBuffer_Release(&view);
    return (PyObject *)k;
}

/* ContentKey(digest) with one positional bytes of the right length (what
 * a cassette user writes for every fresh key): no argument parsing and no
 * buffer export. Anything else takes the general constructor. */
static PyObject *ContentKey_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf,
                                       PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 1 && kwnames == NULL && PyBytes_CheckExact(args[0]) &&
        PyBytes_GET_SIZE(args[0]) == FAB_SHA256_LEN) {
        fab_state *st = fab_state_from_type((PyTypeObject *)type);
        if (st == NULL)
            return NULL;
        return fab_py_key_from_digest(st, (const uint8_t *)PyBytes_AS_STRING(args[0]));
    }
    PyObject *tuple = PyTuple_New(nargs);
    if (tuple == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++)
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    PyObject *kw = NULL;
    if (kwnames != NULL) {
        if ((kw = PyDict_New()) == NULL) {
            Py_DECREF(tuple);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++)
            if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                Py_DECREF(tuple);
                Py_DECREF(kw);
                return NULL;
            }
    }
    PyObject *out = ContentKey_new((PyTypeObject *)type, tuple, kw);
    Py_DECREF(tuple);
    Py_XDECREF(kw);
    return out;
}

static void ContentKey_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *ContentKey_hexstr(ContentKeyObject *k, const char *prefix)
{
    static const char hexdigits[] = "0123456789abcdef";
    char buf[8 + 2 * FAB_SHA256_LEN];
    size_t p = strlen(prefix);
    memcpy(buf, prefix, p);
    for (int i = 0; i < FAB_SHA256_LEN; i++) {
        buf[p++] = hexdigits[k->digest[i] >> 4];
        buf[p++] = hexdigits[k->digest[i] & 15];
    }
    return PyUnicode_FromStringAndSize(buf, (Py_ssize_t)p);
}

static PyObject *ContentKey_str(PyObject *self)
{
    return ContentKey_hexstr((ContentKeyObject *)self, "sha256:");
}

static PyObject *ContentKey_repr(PyObject *self)
{
    PyObject *s = ContentKey_str(self);
    if (s == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("ContentKey.parse('%U')", s);
    Py_DECREF(s);
    return r;
}

static PyObject *ContentKey_get_hex(PyObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return ContentKey_hexstr((ContentKeyObject *)self, "");
}

static PyObject *ContentKey_get_digest(PyObject *self, void *closure)
{
    FAB_UNUSED(closure);
    return PyBytes_FromStringAndSize((const char *)((ContentKeyObject *)self)->digest,
                                     FAB_SHA256_LEN);
}

static Py_hash_t ContentKey_hash(PyObject *self)
{
    /* The digest is uniformly distributed: its first bytes make a hash. */
    Py_hash_t h;
    memcpy(&h, ((ContentKeyObject *)self)->digest, sizeof(h));
    return h == -1 ? -2 : h;
}

static PyObject *ContentKey_richcompare(PyObject *a, PyObject *b, int op)
{
    fab_state *st = fab_state_from_type(Py_TYPE(a));
    if (st == NULL) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (!PyObject_TypeCheck(b, st->ContentKey_Type))
        Py_RETURN_NOTIMPLEMENTED;
    int c = memcmp(((ContentKeyObject *)a)->digest, ((ContentKeyObject *)b)->digest,
                   FAB_SHA256_LEN);
    Py_RETURN_RICHCOMPARE(c, 0, op);
}

static int ContentKey_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, self, ((ContentKeyObject *)self)->digest,
                             FAB_SHA256_LEN, 1, flags);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* upper case is refused: one spelling per key */
}

static PyObject *ContentKey_parse(PyObject *cls, PyObject *text)
{
    fab_state *st = fab_state_from_type((PyTypeObject *)cls);
    if (st == NULL)
        return NULL;
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "ContentKey.parse() takes a str, not %s",
                     Py_TYPE(text)->tp_name);
        return NULL;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    if (s == NULL)
        return NULL;
    uint8_t digest[FAB_SHA256_LEN];
    if (n != 7 + 2 * FAB_SHA256_LEN || memcmp(s, "sha256:", 7) != 0)
        goto bad;
    for (int i = 0; i < FAB_SHA256_LEN; i++) {
        int hi = hexval((unsigned char)s[7 + 2 * i]), lo = hexval((unsigned char)s[8 + 2 * i]);
        if (hi < 0 || lo < 0)
            goto bad;
        digest[i] = (uint8_t)(hi << 4 | lo);
    }
    return fab_py_key_from_digest(st, digest);
bad:
    PyErr_Format(PyExc_ValueError,
                 "not a content key: %.80R (expected 'sha256:' and 64 lower-case hex digits)",
                 text);
    return NULL;
}

static PyObject *ContentKey_of(PyObject *cls, PyObject *request);

static PyObject *ContentKey_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *digest = ContentKey_get_digest(self, NULL);
    if (digest == NULL)
        return NULL;
    return Py_BuildValue("(O(N))", Py_TYPE(self), digest);
}

static PyObject *ContentKey_repr_html(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ContentKeyObject *k = (ContentKeyObject *)self;
    PyObject *full = ContentKey_str(self);
    if (full == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat(
        "<code title=\"%U\">sha256:%02x%02x%02x%02x%02x%02x&hellip;</code>", full,
        k->digest[0], k->digest[1], k->digest[2], k->digest[3], k->digest[4], k->digest[5]);
    Py_DECREF(full);
    return r;
}

static PyMethodDef ContentKey_methods[] = {
    {"of", ContentKey_of, METH_O | METH_CLASS,
     "of($cls, request, /)\n--\n\nThe content key of an EvalRequest."},
    {"parse", ContentKey_parse, METH_O | METH_CLASS,
     "parse($cls, text, /)\n--\n\nParse 'sha256:<64 hex digits>' back into a key."},
    {"__reduce__", ContentKey_reduce, METH_NOARGS, NULL},
    {"_repr_html_", ContentKey_repr_html, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ContentKey_getset[] = {
    {"digest", ContentKey_get_digest, NULL, "The 32 raw digest bytes.", NULL},
    {"hex", ContentKey_get_hex, NULL, "The digest as 64 lower-case hex digits.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot ContentKey_slots[] = {
    {Py_tp_doc, "ContentKey(digest)\n--\n\n"
                "A content key: the SHA-256 digest of a request's canonical identity. "
                "Hashable, ordered and compared by digest; str() is 'sha256:<hex>'; "
                "supports the buffer protocol (32 bytes)."},
    {Py_tp_new, ContentKey_new},
    {Py_tp_dealloc, ContentKey_dealloc},
    {Py_tp_repr, ContentKey_repr},
    {Py_tp_str, ContentKey_str},
    {Py_tp_hash, ContentKey_hash},
    {Py_tp_richcompare, ContentKey_richcompare},
    {Py_tp_methods, ContentKey_methods},
    {Py_tp_getset, ContentKey_getset},
    {Py_bf_getbuffer, ContentKey_getbuffer},
    {0, NULL},
};

static PyType_Spec ContentKey_spec = {
    .name = "fabric.ContentKey",
    .basicsize = sizeof(ContentKeyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = ContentKey_slots,
};

static PyObject *ContentKey_of(PyObject *cls, PyObject *request)
{
    fab_state *st = fab_state_from_type((PyTypeObject *)cls);
    if (st == NULL)
        return NULL;
    if (!PyObject_TypeCheck(request, st->EvalRequest_Type)) {
        PyErr_Format(PyExc_TypeError, "ContentKey.of() takes an EvalRequest, not %s",
                     Py_TYPE(request)->tp_name);
        return NULL;
    }
    return fab_py_request_key(st, request);
}

/* ======================================================================== */
/* Module part                                                              */
/* ======================================================================== */

int fab_py_key_exec(PyObject *module, fab_state *st)
{
    if ((st->Secret_Type = fab_py_add_type(module, &Secret_spec, NULL)) == NULL)
        return -1;
    if ((st->ContentKey_Type = fab_py_add_type(module, &ContentKey_spec, NULL)) == NULL)
        return -1;
    /* Calling the type goes straight to the vectorcall constructor. */
    st->ContentKey_Type->tp_vectorcall = ContentKey_vectorcall;
    return 0;
}

int fab_py_key_traverse(fab_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->Secret_Type);
    Py_VISIT(st->ContentKey_Type);
    return 0;
}

void fab_py_key_clear(fab_state *st)
{
    Py_CLEAR(st->Secret_Type);
    Py_CLEAR(st->ContentKey_Type);
}
