/*
 * The ledger's key -> offset index: an open-addressing hash table with
 * linear probing, 16 bytes per slot, load factor at most 3/4.
 *
 * A slot holds a 64-bit seeded hash of the full 32-byte key and a 64-bit
 * value (the ledger stores a record offset). The keys themselves are not
 * stored: a probe whose hash matches asks the caller's eq callback to
 * compare the full key against the record, so a hash collision costs a
 * compare and never a wrong answer. Not thread-safe: the ledger locks.
 */
#ifndef FABRIC_LINDEX_H
#define FABRIC_LINDEX_H

#include <stddef.h>
#include <stdint.h>

/* Returns 1 when the entry with value v has key key. */
typedef int (*fab_lindex_eq_fn)(void *ctx, uint64_t v, const uint8_t key[32]);

typedef struct fab_lindex_slot {
    uint64_t hash; /* 0 = empty */
    uint64_t value;
} fab_lindex_slot;

typedef struct fab_lindex {
    fab_lindex_slot *slots;
    size_t mask;  /* capacity - 1; capacity is a power of two */
    size_t count;
    uint64_t seed;
    fab_lindex_eq_fn eq;
    void *ctx;
} fab_lindex;

/* Initializes an empty index (no allocation until the first insert). */
void fab_lindex_init(fab_lindex *ix, fab_lindex_eq_fn eq, void *ctx);

/* Frees the slots. */
void fab_lindex_destroy(fab_lindex *ix);

/* The seeded hash of a key, never 0. */
uint64_t fab_lindex_hash(const fab_lindex *ix, const uint8_t key[32]);

/* Looks key up; 1 and *value when found, else 0. */
int fab_lindex_find(const fab_lindex *ix, const uint8_t key[32], uint64_t hash, uint64_t *value);

/* Inserts key -> value unless present. 1 inserted, 0 present (*existing set
 * when not NULL), FAB_ENOMEM (the index is unchanged). */
int fab_lindex_insert(fab_lindex *ix, const uint8_t key[32], uint64_t hash, uint64_t value,
                      uint64_t *existing);

/* Replaces the value of key when present: 1, else 0 (nothing changed).
 * The new value must name a record with the same key (eq compares it). */
int fab_lindex_set(fab_lindex *ix, const uint8_t key[32], uint64_t hash, uint64_t value);

/* Makes room for n entries in total, so that the next inserts up to n
 * cannot fail. 0 or FAB_ENOMEM / FAB_EOVERFLOW. */
int fab_lindex_reserve(fab_lindex *ix, size_t n);

/* Bytes of memory held. */
size_t fab_lindex_memory(const fab_lindex *ix);

#endif
