/*
 * SHA-256 from OpenSSL, behind an opaque handle.
 *
 * The algorithm is fetched once per process with EVP_MD_fetch (an implicit
 * fetch per call costs several times the hash of a short key). Digests run
 * through the fetched implementation's provider functions, or through EVP
 * when those cannot be found (see hash.c); either way a hasher's context is
 * re-initialised, not re-created, between digests.
 */
#ifndef FABRIC_HASH_H
#define FABRIC_HASH_H

#include <stddef.h>
#include <stdint.h>

#define FAB_SHA256_LEN 32

typedef struct fab_sha256 fab_sha256;

/*
 * Allocates a hasher, ready for fab_sha256_update. *out receives it; the
 * caller frees it with fab_sha256_free. Returns 0, FAB_ENOMEM or FAB_ECRYPTO.
 */
int fab_sha256_new(fab_sha256 **out);

/* Frees a hasher; NULL is a no-op. */
void fab_sha256_free(fab_sha256 *h);

/* Starts a new digest, discarding any data fed so far. 0 or FAB_ECRYPTO. */
int fab_sha256_reset(fab_sha256 *h);

/* Feeds len bytes. Thread-compatible: one thread per hasher at a time.
 * 0 or FAB_ECRYPTO. */
int fab_sha256_update(fab_sha256 *h, const void *data, size_t len);

/* Writes the 32-byte digest to out and resets the hasher for reuse.
 * 0 or FAB_ECRYPTO. */
int fab_sha256_final(fab_sha256 *h, uint8_t out[FAB_SHA256_LEN]);

/* Which path digests take: "provider" (the fetched implementation's own
 * functions), "evp", or "unavailable" (OpenSSL has no SHA-256). */
const char *fab_sha256_backend(void);

/* One-shot digest of a buffer. 0, FAB_ENOMEM or FAB_ECRYPTO. */
int fab_sha256_digest(const void *data, size_t len, uint8_t out[FAB_SHA256_LEN]);

/* HMAC-SHA256 (RFC 2104) of data under key (any length; a key longer than
 * the 64-byte block is hashed first). 0, FAB_ENOMEM or FAB_ECRYPTO. */
int fab_hmac_sha256(const void *key, size_t klen, const void *data, size_t len,
                    uint8_t out[FAB_SHA256_LEN]);

#endif
