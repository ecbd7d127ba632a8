/* Ed25519: the RFC 8032 section 7.1 test vectors (public key from seed,
 * signature, verification), refusals of every flipped bit, generated keys,
 * and a public key that is not a point. */
#include "check.h"
#include "fabric/error.h"
#include "fabric/sign.h"

static void unhex(const char *hex, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

static const struct vector {
    const char *seed, *public_key, *msg, *sig;
} rfc8032[] = {
    {"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"},
    {"4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"},
    {"c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"},
};

/* Vector v's seed, public key, signature and message (at most 8 bytes);
 * returns the message's length. */
static size_t vector_bytes(size_t v, uint8_t seed[32], uint8_t pub[32], uint8_t sig[64],
                           uint8_t msg[8])
{
    size_t mlen = strlen(rfc8032[v].msg) / 2;
    unhex(rfc8032[v].seed, seed, 32);
    unhex(rfc8032[v].public_key, pub, 32);
    unhex(rfc8032[v].sig, sig, 64);
    unhex(rfc8032[v].msg, msg, mlen);
    return mlen;
}

static void test_rfc8032_vectors(void)
{
    for (size_t v = 0; v < sizeof(rfc8032) / sizeof(rfc8032[0]); v++) {
        uint8_t seed[32], pub[32], want[64], msg[8], got_pub[32], sig[64];
        size_t mlen = vector_bytes(v, seed, pub, want, msg);
        CHECK_EQ(fab_ed25519_public(seed, got_pub), FAB_OK);
        CHECK_MEM(got_pub, pub, 32);
        CHECK_EQ(fab_ed25519_sign(seed, msg, mlen, sig), FAB_OK);
        CHECK_MEM(sig, want, 64); /* Ed25519 is deterministic */
        CHECK_EQ(fab_ed25519_verify(pub, msg, mlen, sig), FAB_OK);
    }
}

static void test_every_flipped_bit_is_refused(void)
{
    uint8_t seed[32], pub[32], sig[64], msg[2];
    unhex(rfc8032[2].seed, seed, 32);
    unhex(rfc8032[2].public_key, pub, 32);
    unhex(rfc8032[2].sig, sig, 64);
    unhex(rfc8032[2].msg, msg, 2);
    for (size_t bit = 0; bit < 64 * 8; bit++) {
        sig[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        CHECK_EQ(fab_ed25519_verify(pub, msg, 2, sig), FAB_ECORRUPT);
        sig[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    for (size_t bit = 0; bit < 16; bit++) {
        msg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        CHECK_EQ(fab_ed25519_verify(pub, msg, 2, sig), FAB_ECORRUPT);
        msg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    for (size_t bit = 0; bit < 32 * 8; bit++) {
        pub[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        CHECK_EQ(fab_ed25519_verify(pub, msg, 2, sig), FAB_ECORRUPT);
        pub[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    /* one message longer or shorter */
    CHECK_EQ(fab_ed25519_verify(pub, msg, 1, sig), FAB_ECORRUPT);
    CHECK_EQ(fab_ed25519_verify(pub, msg, 2, sig), FAB_OK);
}

static void test_generated_keys_sign_and_verify(void)
{
    uint8_t s1[32], p1[32], s2[32], p2[32], again[32], sig[64];
    static const char text[] = "fabric.claim";
    CHECK_EQ(fab_ed25519_generate(s1, p1), FAB_OK);
    CHECK_EQ(fab_ed25519_generate(s2, p2), FAB_OK);
    CHECK(memcmp(s1, s2, 32) != 0);
    CHECK_EQ(fab_ed25519_public(s1, again), FAB_OK);
    CHECK_MEM(again, p1, 32);
    CHECK_EQ(fab_ed25519_sign(s1, text, sizeof text - 1, sig), FAB_OK);
    CHECK_EQ(fab_ed25519_verify(p1, text, sizeof text - 1, sig), FAB_OK);
    CHECK_EQ(fab_ed25519_verify(p2, text, sizeof text - 1, sig), FAB_ECORRUPT);
    /* a large message (Ed25519 hashes it whole) */
    size_t big = 1 << 20;
    uint8_t *m = calloc(1, big);
    CHECK_EQ(fab_ed25519_sign(s2, m, big, sig), FAB_OK);
    CHECK_EQ(fab_ed25519_verify(p2, m, big, sig), FAB_OK);
    m[big - 1] = 1;
    CHECK_EQ(fab_ed25519_verify(p2, m, big, sig), FAB_ECORRUPT);
    free(m);
}

static void test_a_signer_signs_as_the_one_shot_calls(void)
{
    for (size_t v = 0; v < sizeof(rfc8032) / sizeof(rfc8032[0]); v++) {
        uint8_t seed[32], pub[32], want[64], msg[8], got_pub[32], sig[64];
        size_t mlen = vector_bytes(v, seed, pub, want, msg);
        fab_ed25519_signer *s = NULL;
        CHECK_EQ(fab_ed25519_signer_new(seed, &s), FAB_OK);
        CHECK_EQ(fab_ed25519_signer_public(s, got_pub), FAB_OK);
        CHECK_MEM(got_pub, pub, 32);
        for (int again = 0; again < 3; again++) { /* reused */
            CHECK_EQ(fab_ed25519_signer_sign(s, msg, mlen, sig), FAB_OK);
            CHECK_MEM(sig, want, 64);
        }
        fab_ed25519_signer_free(s);
    }
    fab_ed25519_signer_free(NULL);
}

static void test_a_public_key_that_is_not_a_point(void)
{
    /* y = 2 is not the y of a curve point; all-ones is y >= p. Neither
     * verifies anything. */
    uint8_t bad[32] = {2}, ones[32], sig[64], seed[32];
    memset(ones, 0xff, 32);
    unhex(rfc8032[0].seed, seed, 32);
    CHECK_EQ(fab_ed25519_sign(seed, "", 0, sig), FAB_OK);
    CHECK_EQ(fab_ed25519_verify(bad, "", 0, sig), FAB_ECORRUPT);
    CHECK_EQ(fab_ed25519_verify(ones, "", 0, sig), FAB_ECORRUPT);
}

int main(void)
{
    static const check_case cases[] = {
        {"rfc8032_vectors", test_rfc8032_vectors},
        {"every_flipped_bit_is_refused", test_every_flipped_bit_is_refused},
        {"generated_keys_sign_and_verify", test_generated_keys_sign_and_verify},
        {"a_signer_signs_as_the_one_shot_calls", test_a_signer_signs_as_the_one_shot_calls},
        {"a_public_key_that_is_not_a_point", test_a_public_key_that_is_not_a_point},
        {NULL, NULL},
    };
    return check_run("sign", cases);
}
