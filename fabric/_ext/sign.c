/*
 * Ed25519 (csrc/sign.c) for fabric.claims: module functions over raw bytes,
 * and Ed25519Signer, a key made once for a node that signs every reply.
 * Keys and signatures are bytes of fixed lengths; a wrong length is a
 * ValueError naming what and how long. Signing and verifying run without
 * the GIL (the buffers are held by their views).
 */
#include "glue.h"

#include "fabric/sign.h"

/* A buffer of exactly n bytes, or -1 with ValueError / TypeError. */
static int exact(PyObject *obj, Py_buffer *view, Py_ssize_t n, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (n >= 0 && view->len != n) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd bytes, not %zd", what, n, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *failed(PyObject *module, int rc, const char *context)
{
    return fab_py_raise_code(fab_get_state(module), rc, context);
}

static PyObject *sign_generate(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    uint8_t seed[FAB_ED25519_SEED_LEN], pub[FAB_ED25519_PUBLIC_LEN];
    int rc = fab_ed25519_generate(seed, pub);
    if (rc < 0)
        return failed(module, rc, "Ed25519 key generation");
    PyObject *out = Py_BuildValue("(y#y#)", (const char *)seed, (Py_ssize_t)sizeof seed,
                                  (const char *)pub, (Py_ssize_t)sizeof pub);
    memset(seed, 0, sizeof seed);
    return out;
}

static PyObject *sign_public(PyObject *module, PyObject *seed)
{
    Py_buffer s;
    if (exact(seed, &s, FAB_ED25519_SEED_LEN, "an Ed25519 private key (seed)") < 0)
        return NULL;
    uint8_t pub[FAB_ED25519_PUBLIC_LEN];
    int rc = fab_ed25519_public(s.buf, pub);
    PyBuffer_Release(&s);
    if (rc < 0)
        return failed(module, rc, "Ed25519 public key");
    return PyBytes_FromStringAndSize((const char *)pub, sizeof pub);
}

static PyObject *sign_sign(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "ed25519_sign(seed, message) takes 2 arguments");
        return NULL;
    }
    Py_buffer s, m;
    if (exact(args[0], &s, FAB_ED25519_SEED_LEN, "an Ed25519 private key (seed)") < 0)
        return NULL;
    if (exact(args[1], &m, -1, "the message") < 0) {
        PyBuffer_Release(&s);
        return NULL;
    }
    uint8_t sig[FAB_ED25519_SIG_LEN];
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ed25519_sign(s.buf, m.buf, (size_t)m.len, sig);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&s);
    PyBuffer_Release(&m);
    if (rc < 0)
        return failed(module, rc, "Ed25519 signing");
    return PyBytes_FromStringAndSize((const char *)sig, sizeof sig);
}

static PyObject *sign_verify(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "ed25519_verify(public_key, message, signature) takes 3 arguments");
        return NULL;
    }
    Py_buffer p, m, s;
    if (exact(args[0], &p, FAB_ED25519_PUBLIC_LEN, "an Ed25519 public key") < 0)
        return NULL;
    if (exact(args[1], &m, -1, "the message") < 0) {
        PyBuffer_Release(&p);
        return NULL;
    }
    if (exact(args[2], &s, FAB_ED25519_SIG_LEN, "an Ed25519 signature") < 0) {
        PyBuffer_Release(&p);
        PyBuffer_Release(&m);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ed25519_verify(p.buf, m.buf, (size_t)m.len, s.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&p);
    PyBuffer_Release(&m);
    PyBuffer_Release(&s);
    if (rc == FAB_ECORRUPT)
        Py_RETURN_FALSE;
    if (rc < 0)
        return failed(module, rc, "Ed25519 verification");
    Py_RETURN_TRUE;
}

/* Ed25519Signer: a seed's key made once (making it costs about a signature). */
typedef struct {
    PyObject_HEAD
    fab_ed25519_signer *s;
} SignerObject;

static PyObject *Signer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *seed;
    if ((kwds && PyDict_GET_SIZE(kwds)) || !PyArg_ParseTuple(args, "O:Ed25519Signer", &seed))
        return NULL;
    Py_buffer s;
    if (exact(seed, &s, FAB_ED25519_SEED_LEN, "an Ed25519 private key (seed)") < 0)
        return NULL;
    fab_ed25519_signer *signer = NULL;
    int rc = fab_ed25519_signer_new(s.buf, &signer);
    PyBuffer_Release(&s);
    if (rc < 0)
        return fab_py_raise_code(fab_state_from_type(type), rc, "Ed25519 key");
    SignerObject *self = (SignerObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        fab_ed25519_signer_free(signer);
        return NULL;
    }
    self->s = signer;
    return (PyObject *)self;
}

static void Signer_dealloc(SignerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    fab_ed25519_signer_free(self->s);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *Signer_sign(PyObject *op, PyObject *message)
{
    SignerObject *self = (SignerObject *)op;
    Py_buffer m;
    if (exact(message, &m, -1, "the message") < 0)
        return NULL;
    uint8_t sig[FAB_ED25519_SIG_LEN];
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fab_ed25519_signer_sign(self->s, m.buf, (size_t)m.len, sig);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&m);
    if (rc < 0)
        return fab_py_raise_code(fab_state_from_type(Py_TYPE(op)), rc, "Ed25519 signing");
    return PyBytes_FromStringAndSize((const char *)sig, sizeof sig);
}

static PyObject *Signer_public_key(PyObject *op, void *Py_UNUSED(closure))
{
    uint8_t pub[FAB_ED25519_PUBLIC_LEN];
    int rc = fab_ed25519_signer_public(((SignerObject *)op)->s, pub);
    if (rc < 0)
        return fab_py_raise_code(fab_state_from_type(Py_TYPE(op)), rc, "Ed25519 public key");
    return PyBytes_FromStringAndSize((const char *)pub, sizeof pub);
}

static PyObject *Signer_repr(PyObject *Py_UNUSED(op))
{
    return PyUnicode_FromString("<Ed25519Signer>"); /* never the key */
}

static PyMethodDef Signer_methods[] = {
    {"sign", Signer_sign, METH_O,
     "sign($self, message, /)\n--\n\nThe 64-byte Ed25519 signature of message (thread-safe)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Signer_getset[] = {
    {"public_key", Signer_public_key, NULL, "The 32-byte public key.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Signer_slots[] = {
    {Py_tp_doc, "Ed25519Signer(seed, /)\n--\n\nAn Ed25519 private key (its 32-byte seed) made "
                "once, for signing many messages."},
    {Py_tp_new, Signer_new},
    {Py_tp_dealloc, Signer_dealloc},
    {Py_tp_repr, Signer_repr},
    {Py_tp_methods, Signer_methods},
    {Py_tp_getset, Signer_getset},
    {0, NULL},
};

static PyType_Spec Signer_spec = {
    .name = "fabric._core.Ed25519Signer",
    .basicsize = sizeof(SignerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Signer_slots,
};

static PyMethodDef sign_functions[] = {
    {"ed25519_generate", sign_generate, METH_NOARGS,
     "ed25519_generate()\n--\n\nA new Ed25519 key pair: (32-byte seed, 32-byte public key)."},
    {"ed25519_public", sign_public, METH_O,
     "ed25519_public(seed, /)\n--\n\nThe 32-byte public key of a 32-byte seed."},
    {"ed25519_sign", (PyCFunction)(void (*)(void))sign_sign, METH_FASTCALL,
     "ed25519_sign(seed, message, /)\n--\n\nThe 64-byte Ed25519 signature (RFC 8032) of "
     "message under seed."},
    {"ed25519_verify", (PyCFunction)(void (*)(void))sign_verify, METH_FASTCALL,
     "ed25519_verify(public_key, message, signature, /)\n--\n\nWhether signature is "
     "public_key's Ed25519 signature of message\n(False also for a public key that is "
     "not a curve point)."},
    {NULL, NULL, 0, NULL},
};

int fab_py_sign_exec(PyObject *module, fab_state *Py_UNUSED(st))
{
    if (PyModule_AddFunctions(module, sign_functions) < 0)
        return -1;
    /* Kept alive by the module attribute and by its instances: nothing in
     * the state to traverse or clear. */
    PyTypeObject *tp = fab_py_add_type(module, &Signer_spec, NULL);
    if (tp == NULL)
        return -1;
    Py_DECREF(tp);
    return 0;
}
