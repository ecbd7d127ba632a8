/*
 * Ed25519 (csrc/sign.c) for fabric.claims: module functions over raw bytes.
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
    return PyModule_AddFunctions(module, sign_functions);
}
