/*
 * The ledger's open-addressing index (see fabric/lindex.h).
 */
#include "fabric/lindex.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fabric/common.h"

#define MIN_CAPACITY 64

/*
 * A table of at least HUGE_TABLE bytes is mapped on its own, aligned to
 * and in multiples of 2 MiB, and asked for transparent huge pages: every
 * probe of a large index is a random access (a cache miss), and with 4 KiB
 * pages also a TLB miss and a page walk (a 16 MiB table spans 4096 pages;
 * 8 huge ones). Where the kernel gives none, it is an ordinary mapping.
 * Smaller tables come from malloc.
 */
#define HUGE_TABLE ((size_t)2 << 20)

static size_t table_bytes(size_t cap) { return cap * sizeof(fab_lindex_slot); }

static fab_lindex_slot *table_alloc(size_t cap)
{
    size_t n = table_bytes(cap);
    if (n < HUGE_TABLE)
        return calloc(cap, sizeof(fab_lindex_slot));
    /* n is a power of two times 16 >= 2 MiB: a multiple of 2 MiB */
    uint8_t *m = mmap(NULL, n + HUGE_TABLE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    uintptr_t a = ((uintptr_t)m + HUGE_TABLE - 1) & ~(uintptr_t)(HUGE_TABLE - 1);
    size_t lead = (size_t)(a - (uintptr_t)m);
    if (lead)
        munmap(m, lead);
    if (HUGE_TABLE - lead)
        munmap((uint8_t *)a + n, HUGE_TABLE - lead);
#ifdef MADV_HUGEPAGE
    (void)madvise((void *)a, n, MADV_HUGEPAGE);
#endif
    return (fab_lindex_slot *)a; /* zero, as calloc's */
}

static void table_free(fab_lindex_slot *slots, size_t cap)
{
    if (slots == NULL)
        return;
    if (table_bytes(cap) < HUGE_TABLE)
        free(slots);
    else
        munmap(slots, table_bytes(cap));
}

void fab_lindex_init(fab_lindex *ix, fab_lindex_eq_fn eq, void *ctx)
{
    memset(ix, 0, sizeof(*ix));
    ix->eq = eq;
    ix->ctx = ctx;
    /*
     * A per-index seed so a crafted ledger cannot pile its keys into one
     * probe chain. It needs to be unpredictable to the file's author, not
     * cryptographic: address-space layout, time and pid are enough.
     */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ix->seed = fab__mix64((uint64_t)(uintptr_t)ix ^ ((uint64_t)ts.tv_nsec << 20) ^
                          (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40));
}

void fab_lindex_destroy(fab_lindex *ix)
{
    table_free(ix->slots, ix->slots ? ix->mask + 1 : 0);
    ix->slots = NULL;
    ix->mask = 0;
    ix->count = 0;
}

uint64_t fab_lindex_hash(const fab_lindex *ix, const uint8_t key[32])
{
    uint64_t h = ix->seed;
    for (int i = 0; i < 4; i++) {
        uint64_t w;
        memcpy(&w, key + 8 * i, 8);
        h = fab__mix64(h ^ w) + (uint64_t)i;
    }
    return h ? h : 1;
}

int fab_lindex_find(const fab_lindex *ix, const uint8_t key[32], uint64_t hash, uint64_t *value)
{
    if (ix->slots == NULL)
        return 0;
    for (size_t i = (size_t)hash & ix->mask;; i = (i + 1) & ix->mask) {
        const fab_lindex_slot *s = &ix->slots[i];
        if (s->hash == 0)
            return 0;
        if (s->hash == hash && ix->eq(ix->ctx, s->value, key)) {
            *value = s->value;
            return 1;
        }
    }
}

int fab_lindex_set(fab_lindex *ix, const uint8_t key[32], uint64_t hash, uint64_t value)
{
    if (ix->slots == NULL)
        return 0;
    for (size_t i = (size_t)hash & ix->mask;; i = (i + 1) & ix->mask) {
        fab_lindex_slot *s = &ix->slots[i];
        if (s->hash == 0)
            return 0;
        if (s->hash == hash && ix->eq(ix->ctx, s->value, key)) {
            s->value = value;
            return 1;
        }
    }
}

static int grow(fab_lindex *ix)
{
    size_t cap = ix->slots ? (ix->mask + 1) * 2 : MIN_CAPACITY;
    if (cap == 0 || cap > SIZE_MAX / sizeof(fab_lindex_slot))
        return FAB_EOVERFLOW;
    fab_lindex_slot *slots = table_alloc(cap);
    if (slots == NULL)
        return FAB_ENOMEM;
    size_t mask = cap - 1;
    if (ix->slots) {
        for (size_t j = 0; j <= ix->mask; j++) {
            fab_lindex_slot s = ix->slots[j];
            if (s.hash == 0)
                continue;
            size_t i = (size_t)s.hash & mask;
            while (slots[i].hash != 0)
                i = (i + 1) & mask;
            slots[i] = s;
        }
        table_free(ix->slots, ix->mask + 1);
    }
    ix->slots = slots;
    ix->mask = mask;
    return FAB_OK;
}

int fab_lindex_insert(fab_lindex *ix, const uint8_t key[32], uint64_t hash, uint64_t value,
                      uint64_t *existing)
{
    FAB_ASSERT(hash != 0);
    /* Grow first so a failed allocation leaves the index unchanged. */
    int rc = fab_lindex_reserve(ix, ix->count + 1);
    if (rc != FAB_OK)
        return rc;
    size_t i = (size_t)hash & ix->mask;
    for (;; i = (i + 1) & ix->mask) {
        fab_lindex_slot *s = &ix->slots[i];
        if (s->hash == 0)
            break;
        if (s->hash == hash && ix->eq(ix->ctx, s->value, key)) {
            if (existing)
                *existing = s->value;
            return 0;
        }
    }
    ix->slots[i].hash = hash;
    ix->slots[i].value = value;
    ix->count++;
    return 1;
}

int fab_lindex_reserve(fab_lindex *ix, size_t n)
{
    while (ix->slots == NULL || n * 4 > (ix->mask + 1) * 3) {
        if (n > SIZE_MAX / 8)
            return FAB_EOVERFLOW;
        int rc = grow(ix);
        if (rc != FAB_OK)
            return rc;
    }
    return FAB_OK;
}

size_t fab_lindex_memory(const fab_lindex *ix)
{
    return ix->slots ? (ix->mask + 1) * sizeof(fab_lindex_slot) : 0;
}
