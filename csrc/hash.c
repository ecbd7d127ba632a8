#include "fabric/hash.h"

#include <pthread.h>
#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "fabric/error.h"

struct fab_sha256 {
    EVP_MD_CTX *ctx;
};

static EVP_MD *sha256_md;
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

static void fetch_md(void)
{
    /* An explicit fetch is resolved once; the provider keeps it alive for
     * the life of the process, so it is never freed. */
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const EVP_MD *md(void)
{
    pthread_once(&md_once, fetch_md);
    return sha256_md;
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
    h->ctx = EVP_MD_CTX_new();
    if (h->ctx == NULL)
        goto done;
    if (md() == NULL || EVP_DigestInit_ex2(h->ctx, md(), NULL) != 1) {
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
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

int fab_sha256_reset(fab_sha256 *h)
{
    if (EVP_DigestInit_ex2(h->ctx, md(), NULL) != 1)
        return crypto_fail();
    return FAB_OK;
}

int fab_sha256_update(fab_sha256 *h, const void *data, size_t len)
{
    if (len == 0)
        return FAB_OK;
    if (EVP_DigestUpdate(h->ctx, data, len) != 1)
        return crypto_fail();
    return FAB_OK;
}

int fab_sha256_final(fab_sha256 *h, uint8_t out[FAB_SHA256_LEN])
{
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(h->ctx, out, &n) != 1 || n != FAB_SHA256_LEN)
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
