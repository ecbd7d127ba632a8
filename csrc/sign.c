/*
 * Ed25519 signatures through OpenSSL's EVP interface (see fabric/sign.h).
 */
#include "fabric/sign.h"

#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "fabric/error.h"

/* An OpenSSL failure: its error queue is cleared so it does not leak into
 * the next, unrelated call. */
static int crypto_fail(void)
{
    ERR_clear_error();
    return FAB_ECRYPTO;
}

static int public_of(EVP_PKEY *pk, uint8_t out[FAB_ED25519_PUBLIC_LEN])
{
    size_t n = FAB_ED25519_PUBLIC_LEN;
    if (EVP_PKEY_get_raw_public_key(pk, out, &n) != 1 || n != FAB_ED25519_PUBLIC_LEN)
        return crypto_fail();
    return FAB_OK;
}

int fab_ed25519_generate(uint8_t seed[FAB_ED25519_SEED_LEN],
                         uint8_t public_key[FAB_ED25519_PUBLIC_LEN])
{
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    int rc = FAB_OK;
    if (ctx == NULL || EVP_PKEY_keygen_init(ctx) != 1 || EVP_PKEY_keygen(ctx, &pk) != 1) {
        rc = crypto_fail();
        goto done;
    }
    size_t n = FAB_ED25519_SEED_LEN;
    if (EVP_PKEY_get_raw_private_key(pk, seed, &n) != 1 || n != FAB_ED25519_SEED_LEN) {
        rc = crypto_fail();
        goto done;
    }
    rc = public_of(pk, public_key);
done:
    EVP_PKEY_free(pk);
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

static int private_key(const uint8_t seed[FAB_ED25519_SEED_LEN], EVP_PKEY **out)
{
    *out = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, FAB_ED25519_SEED_LEN);
    return *out != NULL ? FAB_OK : crypto_fail();
}

int fab_ed25519_public(const uint8_t seed[FAB_ED25519_SEED_LEN],
                       uint8_t public_key[FAB_ED25519_PUBLIC_LEN])
{
    EVP_PKEY *pk;
    int rc = private_key(seed, &pk);
    if (rc == FAB_OK)
        rc = public_of(pk, public_key);
    EVP_PKEY_free(pk);
    return rc;
}

struct fab_ed25519_signer {
    EVP_PKEY *pk; /* only read once made: OpenSSL allows concurrent signing */
};

int fab_ed25519_signer_new(const uint8_t seed[FAB_ED25519_SEED_LEN], fab_ed25519_signer **out)
{
    fab_ed25519_signer *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return FAB_ENOMEM;
    int rc = private_key(seed, &s->pk);
    if (rc != FAB_OK) {
        free(s);
        return rc;
    }
    *out = s;
    return FAB_OK;
}

void fab_ed25519_signer_free(fab_ed25519_signer *s)
{
    if (s == NULL)
        return;
    EVP_PKEY_free(s->pk);
    free(s);
}

int fab_ed25519_signer_public(const fab_ed25519_signer *s,
                              uint8_t public_key[FAB_ED25519_PUBLIC_LEN])
{
    return public_of(s->pk, public_key);
}

int fab_ed25519_signer_sign(const fab_ed25519_signer *s, const void *msg, size_t len,
                            uint8_t sig[FAB_ED25519_SIG_LEN])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return FAB_ENOMEM;
    int rc = FAB_OK;
    size_t n = FAB_ED25519_SIG_LEN;
    if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, s->pk) != 1 ||
        EVP_DigestSign(ctx, sig, &n, msg, len) != 1 || n != FAB_ED25519_SIG_LEN)
        rc = crypto_fail();
    EVP_MD_CTX_free(ctx);
    return rc;
}

int fab_ed25519_sign(const uint8_t seed[FAB_ED25519_SEED_LEN], const void *msg, size_t len,
                     uint8_t sig[FAB_ED25519_SIG_LEN])
{
    fab_ed25519_signer *s;
    int rc = fab_ed25519_signer_new(seed, &s);
    if (rc != FAB_OK)
        return rc;
    rc = fab_ed25519_signer_sign(s, msg, len, sig);
    fab_ed25519_signer_free(s);
    return rc;
}

int fab_ed25519_verify(const uint8_t public_key[FAB_ED25519_PUBLIC_LEN], const void *msg,
                       size_t len, const uint8_t sig[FAB_ED25519_SIG_LEN])
{
    EVP_PKEY *pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, public_key,
                                               FAB_ED25519_PUBLIC_LEN);
    if (pk == NULL) { /* 32 bytes OpenSSL will not take as a key: not valid */
        ERR_clear_error();
        return FAB_ECORRUPT;
    }
    int rc = FAB_OK;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        rc = FAB_ENOMEM;
    } else if (EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pk) != 1) {
        rc = crypto_fail();
    } else {
        /* 1 valid, 0 a bad signature; anything else (a public key that is
         * not a point decodes here in some versions) is not valid either. */
        int ok = EVP_DigestVerify(ctx, sig, FAB_ED25519_SIG_LEN, msg, len);
        if (ok != 1) {
            ERR_clear_error();
            rc = FAB_ECORRUPT;
        }
    }
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pk);
    return rc;
}
