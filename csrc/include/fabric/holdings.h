/*
 * The holding index's fact store: a grow-only set of facts (key, holder),
 * "node holder holds the reply for the 32-byte content key key".
 *
 * Holders (node ids, UTF-8 names) are interned to small integers. Each
 * distinct key is stored once (32 bytes) in an open-addressing table with
 * linear probing (4-byte slots, each with a 1-byte tag from the key's hash
 * so a probe reads a key only when its tag matches; load at most 3/4,
 * seeded hash so crafted keys cannot pile into one probe chain). Every
 * fact is one 12-byte entry
 * of a log in the order the store learned it: a version is a position in
 * that log, and each key chains its facts through the log, so the holders
 * of a key are found without a second table.
 *
 * Snapshots are the canonical msgpack document of docs/spec/fabric-records.md
 * ("fabric.holding-index" version 1), written and read here without a
 * general decoder; fab_holdings_restore reads only that exact canonical
 * shape and answers FAB_EFORMAT for anything else (the caller may then fall
 * back to a general decoder for a precise message).
 *
 * Not thread-safe: the caller serializes every call on one store.
 */
#ifndef FABRIC_HOLDINGS_H
#define FABRIC_HOLDINGS_H

#include <stddef.h>
#include <stdint.h>

#include "fabric/error.h"

#define FAB_HOLDINGS_KEY_LEN 32
/* The longest holder name, in bytes. */
#define FAB_HOLDINGS_MAX_NAME 65535
/* At most this many facts, keys or holders in one store. */
#define FAB_HOLDINGS_MAX_COUNT 0xfffffff0u

typedef struct fab_holdings fab_holdings;

/* A new empty store in *out. 0 or FAB_ENOMEM. */
int fab_holdings_new(fab_holdings **out);

/* Frees a store (NULL is a no-op). */
void fab_holdings_free(fab_holdings *h);

/* The id of holder name (len bytes, 1..FAB_HOLDINGS_MAX_NAME), interning it
 * if new. 0, FAB_EINVAL (empty or too long), FAB_ENOMEM or FAB_EOVERFLOW. */
int fab_holdings_intern(fab_holdings *h, const char *name, size_t len, uint32_t *id);

/* The id of an interned holder: 0, or FAB_ENOTFOUND. */
int fab_holdings_holder_id(const fab_holdings *h, const char *name, size_t len, uint32_t *id);

/* The name of holder id (not NUL-terminated), or NULL for an unknown id. */
const char *fab_holdings_holder_name(const fab_holdings *h, uint32_t id, size_t *len);

/* Adds the fact (key, holder id). 1 new, 0 already known, FAB_EINVAL (unknown
 * holder id), FAB_ENOMEM or FAB_EOVERFLOW (the store is unchanged). */
int fab_holdings_add(fab_holdings *h, const uint8_t key[FAB_HOLDINGS_KEY_LEN], uint32_t holder);

/* Adds (keys[i], holder) for n keys packed 32 bytes apiece; *added counts
 * the new facts. All or nothing: room is made first, so 0, or FAB_EINVAL,
 * FAB_ENOMEM, FAB_EOVERFLOW with nothing added. */
int fab_holdings_add_many(fab_holdings *h, const uint8_t *keys, size_t n, uint32_t holder,
                          size_t *added);

/* Makes room for nkeys more keys and nfacts more facts. 0 or FAB_ENOMEM /
 * FAB_EOVERFLOW. */
int fab_holdings_reserve(fab_holdings *h, size_t nkeys, size_t nfacts);

/* 1 when the fact (key, holder) is known, else 0. */
int fab_holdings_has(const fab_holdings *h, const uint8_t key[FAB_HOLDINGS_KEY_LEN],
                     uint32_t holder);

/* Writes up to cap holder ids of key into out (most recently learned
 * first); returns how many holders key has in all (may exceed cap). */
size_t fab_holdings_holders_of(const fab_holdings *h, const uint8_t key[FAB_HOLDINGS_KEY_LEN],
                               uint32_t *out, size_t cap);

/* Counts: facts (= the version), distinct keys, interned holders. */
size_t fab_holdings_nfacts(const fab_holdings *h);
size_t fab_holdings_nkeys(const fab_holdings *h);
size_t fab_holdings_nholders(const fab_holdings *h);

/* Fact number i (0 <= i < nfacts, in learned order): its key (valid until
 * the next add) and holder id. 0 or FAB_ERANGE. */
int fab_holdings_fact(const fab_holdings *h, size_t i, const uint8_t **key, uint32_t *holder);

/* Key number i (0 <= i < nkeys, in the order first learned), or NULL. */
const uint8_t *fab_holdings_key(const fab_holdings *h, size_t i);

/* Adds every fact of src not known to dst, in src's order; *added counts
 * them. src == dst adds nothing. 0 or FAB_ENOMEM / FAB_EOVERFLOW (dst may
 * then hold a prefix of the new facts: each one is whole). */
int fab_holdings_merge(fab_holdings *dst, const fab_holdings *src, size_t *added);

/* Bytes of memory the store holds. */
size_t fab_holdings_memory(const fab_holdings *h);

/* The exact length of the snapshot (0 on overflow). */
size_t fab_holdings_snapshot_size(const fab_holdings *h);

/* Writes the snapshot into buf, which has fab_holdings_snapshot_size bytes. */
void fab_holdings_snapshot_write(const fab_holdings *h, uint8_t *buf);

/* Loads a snapshot into h, which must be empty (else FAB_ESTATE). All or
 * nothing: on failure h is left empty. 0, FAB_EFORMAT (not the canonical
 * version-1 shape: wrong spec or version, a bad fact, trailing bytes),
 * FAB_ETRUNCATED, FAB_EINVAL (an empty holder), FAB_EDUPKEY (a fact given
 * twice: dropping it would shift every later version by one), FAB_ENOMEM. */
int fab_holdings_restore(fab_holdings *h, const uint8_t *data, size_t len);

#endif
