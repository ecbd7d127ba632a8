#include "fabric/hash.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_dispatch.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>

#include "fabric/error.h"

/*
 * The algorithm is fetched once with EVP_MD_fetch. Digests then run through
 * the fetched implementation's own dispatch functions (provider-digest(7)):
 * the provider that EVP chose, with its context made once per hasher and
 * re-initialised per digest. EVP_DigestInit_ex2 frees and allocates that
 * context on every reuse, and its wrappers cost about 20 ns a digest (a
 * third of hashing a one-block key). When the fetched provider does not
 * offer exactly one matching implementation with the five functions needed
 * (an engine, a provider we cannot see into), digests go through EVP.
 * Building with FAB_SHA256_EVP_ONLY forces EVP, so the tests cover both.
 */
typedef struct direct_md {
    void *provctx;
    OSSL_FUNC_digest_newctx_fn *newctx;
    OSSL_FUNC_digest_freectx_fn *freectx;
    OSSL_FUNC_digest_init_fn *init;
    OSSL_FUNC_digest_update_fn *update;
    OSSL_FUNC_digest_final_fn *final;
} direct_md;

struct fab_sha256 {
    EVP_MD_CTX *ctx; /* the EVP path: a context, or NULL */
    void *algctx;    /* the direct path: the provider's context, or NULL */
};

static EVP_MD *sha256_md;
static direct_md direct;
static int have_direct;
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

/* The dispatch table's functions, when it has all five. */
static int take_dispatch(const OSSL_DISPATCH *d, direct_md *out)
{
    memset(out, 0, sizeof(*out));
    for (; d->function_id != 0; d++) {
        switch (d->function_id) {
        case OSSL_FUNC_DIGEST_NEWCTX: out->newctx = OSSL_FUNC_digest_newctx(d); break;
        case OSSL_FUNC_DIGEST_FREECTX: out->freectx = OSSL_FUNC_digest_freectx(d); break;
        case OSSL_FUNC_DIGEST_INIT: out->init = OSSL_FUNC_digest_init(d); break;
        case OSSL_FUNC_DIGEST_UPDATE: out->update = OSSL_FUNC_digest_update(d); break;
        case OSSL_FUNC_DIGEST_FINAL: out->final = OSSL_FUNC_digest_final(d); break;
        default: break;
        }
    }
    return out->newctx && out->freectx && out->init && out->update && out->final;
}

/* Whether an algorithm's names ("SHA2-256:SHA-256:...") name md. */
static int names_md(const char *names, const EVP_MD *m)
{
    char first[64];
    size_t n = strcspn(names, ":");
    if (n == 0 || n >= sizeof(first))
        return 0;
    memcpy(first, names, n);
    first[n] = '\0';
    return EVP_MD_is_a(m, first);
}

/* Finds the fetched implementation in its provider's digest table. */
static void resolve_direct(const EVP_MD *m)
{
    const OSSL_PROVIDER *prov = EVP_MD_get0_provider(m);
    if (prov == NULL)
        return;
    int no_store = 0, matches = 0;
    const OSSL_ALGORITHM *algs = OSSL_PROVIDER_query_operation(prov, OSSL_OP_DIGEST, &no_store);
    if (algs == NULL)
        return;
    direct_md found;
    for (const OSSL_ALGORITHM *a = algs; a->algorithm_names != NULL; a++) {
        if (names_md(a->algorithm_names, m)) {
            matches++;
            if (!take_dispatch(a->implementation, &found))
                matches = 2; /* incomplete: do not use it */
        }
    }
    OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_DIGEST, algs);
    /* More than one implementation: which one EVP chose is not known. */
    if (matches != 1)
        return;
    found.provctx = OSSL_PROVIDER_get0_provider_ctx(prov);
    direct = found;
    have_direct = 1;
}

static void fetch_md(void)
{
    /* An explicit fetch is resolved once. The method holds its provider,
     * and it is never freed, so the dispatch functions stay valid for the
     * life of the process. */
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#ifdef FAB_SHA256_EVP_ONLY
    (void)resolve_direct;
#else
    if (sha256_md != NULL)
        resolve_direct(sha256_md);
#endif
    ERR_clear_error();
}

static const EVP_MD *md(void)
{
    pthread_once(&md_once, fetch_md);
    return sha256_md;
}

const char *fab_sha256_backend(void)
{
    if (md() == NULL)
        return "unavailable";
    return have_direct ? "provider" : "evp";
}

static int crypto_fail(void)
{
    ERR_clear_error();
    return FAB_ECRYPTO;
}

int fab_sha256_new(fab_sha256 **out)
{
    int rc = FAB_ENOMEM;
    fab_sha256 *h = calloc(1, sizeof(*h));
    if (h == NULL)
        goto done;
    if (md() == NULL) {
        rc = crypto_fail();
        goto done;
    }
    if (have_direct) {
        h->algctx = direct.newctx(direct.provctx);
        if (h->algctx == NULL)
            goto done;
    } else {
        h->ctx = EVP_MD_CTX_new();
        if (h->ctx == NULL)
            goto done;
    }
    if (fab_sha256_reset(h) != FAB_OK) {
        rc = crypto_fail();
        goto done;
    }
    *out = h;
    h = NULL;
    rc = FAB_OK;
done:
    fab_sha256_free(h);
    return rc;
}

void fab_sha256_free(fab_sha256 *h)
{
    if (h == NULL)
        return;
    if (h->algctx != NULL)
        direct.freectx(h->algctx);
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

int fab_sha256_reset(fab_sha256 *h)
{
    int ok = h->algctx != NULL ? direct.init(h->algctx, NULL)
                               : EVP_DigestInit_ex2(h->ctx, md(), NULL);
    return ok == 1 ? FAB_OK : crypto_fail();
}

int fab_sha256_update(fab_sha256 *h, const void *data, size_t len)
{
    if (len == 0)
        return FAB_OK;
    int ok = h->algctx != NULL ? direct.update(h->algctx, data, len)
                               : EVP_DigestUpdate(h->ctx, data, len);
    return ok == 1 ? FAB_OK : crypto_fail();
}

int fab_sha256_final(fab_sha256 *h, uint8_t out[FAB_SHA256_LEN])
{
    int ok;
    size_t n = 0;
    if (h->algctx != NULL) {
        ok = direct.final(h->algctx, out, &n, FAB_SHA256_LEN);
    } else {
        unsigned int u = 0;
        ok = EVP_DigestFinal_ex(h->ctx, out, &u);
        n = u;
    }
    if (ok != 1 || n != FAB_SHA256_LEN)
        return crypto_fail();
    return fab_sha256_reset(h);
}

int fab_sha256_digest(const void *data, size_t len, uint8_t out[FAB_SHA256_LEN])
{
    fab_sha256 *h = NULL;
    int rc = fab_sha256_new(&h);
    if (rc == FAB_OK)
        rc = fab_sha256_update(h, data, len);
    if (rc == FAB_OK)
        rc = fab_sha256_final(h, out);
    fab_sha256_free(h);
    return rc;
}

int fab_hmac_sha256(const void *key, size_t klen, const void *data, size_t len,
                    uint8_t out[FAB_SHA256_LEN])
{
    uint8_t k[64] = {0}, pad[64], inner[FAB_SHA256_LEN];
    int rc = FAB_OK;
    if (klen > sizeof(k))
        rc = fab_sha256_digest(key, klen, k);
    else if (klen)
        memcpy(k, key, klen);
    fab_sha256 *h = NULL;
    if (rc == FAB_OK)
        rc = fab_sha256_new(&h);
    for (size_t i = 0; i < sizeof(pad); i++)
        pad[i] = k[i] ^ 0x36;
    if (rc == FAB_OK)
        rc = fab_sha256_update(h, pad, sizeof(pad));
    if (rc == FAB_OK)
        rc = fab_sha256_update(h, data, len);
    if (rc == FAB_OK)
        rc = fab_sha256_final(h, inner);
    for (size_t i = 0; i < sizeof(pad); i++)
        pad[i] = k[i] ^ 0x5c;
    if (rc == FAB_OK)
        rc = fab_sha256_update(h, pad, sizeof(pad));
    if (rc == FAB_OK)
        rc = fab_sha256_update(h, inner, sizeof(inner));
    if (rc == FAB_OK)
        rc = fab_sha256_final(h, out);
    fab_sha256_free(h);
    memset(k, 0, sizeof(k));
    memset(pad, 0, sizeof(pad));
    return rc;
}
