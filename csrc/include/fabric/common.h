/*
 * Shared definitions of the fabric C core: assertions and small helpers.
 */
#ifndef FABRIC_COMMON_H
#define FABRIC_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "fabric/error.h"

/*
 * FAB_ASSERT states an invariant. In debug builds (FAB_DEBUG defined, as in
 * the C tests) a violation aborts with the location; in release builds it
 * compiles to nothing.
 */
#ifdef FAB_DEBUG
#include <stdio.h>
#include <stdlib.h>
#define FAB_ASSERT(cond)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__,     \
                    __LINE__, #cond);                                       \
            abort();                                                        \
        }                                                                   \
    } while (0)
#else
#define FAB_ASSERT(cond) ((void)0)
#endif

#define FAB_UNUSED(x) ((void)(x))

/* The finalizer of splitmix64: a bijection with good avalanche, the mixer of
 * the core's hash tables (holdings, the ledger index). */
static inline uint64_t fab__mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* Big-endian loads and stores, alignment-free. */
static inline void fab_store_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v;
}
static inline void fab_store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);  p[3] = (uint8_t)v;
}
static inline void fab_store_be64(uint8_t *p, uint64_t v)
{
    fab_store_be32(p, (uint32_t)(v >> 32)); fab_store_be32(p + 4, (uint32_t)v);
}
static inline uint16_t fab_load_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t fab_load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}
static inline uint64_t fab_load_be64(const uint8_t *p)
{
    return ((uint64_t)fab_load_be32(p) << 32) | fab_load_be32(p + 4);
}

/* Little-endian, for on-disk headers. */
static inline void fab_store_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void fab_store_le64(uint8_t *p, uint64_t v)
{
    fab_store_le32(p, (uint32_t)v); fab_store_le32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t fab_load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) |
           ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t fab_load_le64(const uint8_t *p)
{
    return (uint64_t)fab_load_le32(p) | ((uint64_t)fab_load_le32(p + 4) << 32);
}

#endif
