/*
 * Ed25519 signatures (RFC 8032, "pure" Ed25519) from OpenSSL libcrypto.
 *
 * Keys are raw bytes: a private key is its 32-byte seed (RFC 8032 section
 * 5.1.5), a public key the 32-byte encoded point. Signing and verifying go
 * through EVP_DigestSign / EVP_DigestVerify with no message digest (Ed25519
 * hashes the message itself). The one-shot calls make and free their own
 * EVP_PKEY; a signer keeps one (making it from a seed derives the public
 * key, about as costly as a signature), for a node that signs every reply.
 * Everything here is thread-safe: a signer is read-only once made.
 */
#ifndef FABRIC_SIGN_H
#define FABRIC_SIGN_H

#include <stddef.h>
#include <stdint.h>

#define FAB_ED25519_SEED_LEN 32
#define FAB_ED25519_PUBLIC_LEN 32
#define FAB_ED25519_SIG_LEN 64

/* A new key pair from OpenSSL's random generator: its seed and public key.
 * 0, FAB_ENOMEM or FAB_ECRYPTO. */
int fab_ed25519_generate(uint8_t seed[FAB_ED25519_SEED_LEN],
                         uint8_t public_key[FAB_ED25519_PUBLIC_LEN]);

/* The public key of a seed. 0, FAB_ENOMEM or FAB_ECRYPTO. */
int fab_ed25519_public(const uint8_t seed[FAB_ED25519_SEED_LEN],
                       uint8_t public_key[FAB_ED25519_PUBLIC_LEN]);

/* The signature of len bytes of msg under seed. 0, FAB_ENOMEM or FAB_ECRYPTO. */
int fab_ed25519_sign(const uint8_t seed[FAB_ED25519_SEED_LEN], const void *msg, size_t len,
                     uint8_t sig[FAB_ED25519_SIG_LEN]);

/* Whether sig is public_key's signature of msg: 0 when it is, FAB_ECORRUPT
 * when it is not (a bad signature, or a public key that is not a point),
 * FAB_ENOMEM or FAB_ECRYPTO when the check could not run. */
int fab_ed25519_verify(const uint8_t public_key[FAB_ED25519_PUBLIC_LEN], const void *msg,
                       size_t len, const uint8_t sig[FAB_ED25519_SIG_LEN]);

/* A signer: the seed's key, made once. */
typedef struct fab_ed25519_signer fab_ed25519_signer;

/* A signer for seed in *out (free it with fab_ed25519_signer_free).
 * 0, FAB_ENOMEM or FAB_ECRYPTO. */
int fab_ed25519_signer_new(const uint8_t seed[FAB_ED25519_SEED_LEN], fab_ed25519_signer **out);

/* Frees a signer; NULL is a no-op. */
void fab_ed25519_signer_free(fab_ed25519_signer *s);

/* The signer's public key. 0 or FAB_ECRYPTO. */
int fab_ed25519_signer_public(const fab_ed25519_signer *s,
                              uint8_t public_key[FAB_ED25519_PUBLIC_LEN]);

/* fab_ed25519_sign with the signer's key; several threads may sign with one
 * signer at once. 0, FAB_ENOMEM or FAB_ECRYPTO. */
int fab_ed25519_signer_sign(const fab_ed25519_signer *s, const void *msg, size_t len,
                            uint8_t sig[FAB_ED25519_SIG_LEN]);

#endif
