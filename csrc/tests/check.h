/*
 * A minimal test harness for the C core: CHECK macros and a runner that
 * prints "N passed, N failed" and exits non-zero on any failure.
 */
#ifndef FABRIC_TESTS_CHECK_H
#define FABRIC_TESTS_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures;
static int check_current_failed;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "    %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            check_current_failed = 1;                                            \
        }                                                                        \
    } while (0)

#define CHECK_EQ(a, b)                                                           \
    do {                                                                         \
        long long a_ = (long long)(a), b_ = (long long)(b);                      \
        if (a_ != b_) {                                                          \
            fprintf(stderr, "    %s:%d: CHECK_EQ(%s, %s) failed: %lld != %lld\n", \
                    __FILE__, __LINE__, #a, #b, a_, b_);                        \
            check_current_failed = 1;                                            \
        }                                                                        \
    } while (0)

#define CHECK_MEM(a, b, n)                                                       \
    do {                                                                         \
        if (memcmp((a), (b), (n)) != 0) {                                        \
            fprintf(stderr, "    %s:%d: CHECK_MEM(%s, %s) failed\n", __FILE__, __LINE__, #a, #b); \
            check_current_failed = 1;                                            \
        }                                                                        \
    } while (0)

typedef struct {
    const char *name;
    void (*fn)(void);
} check_case;

static inline int check_run(const char *suite, const check_case *cases)
{
    int passed = 0;
    const char *only = getenv("CHECK_ONLY"); /* run the cases whose name holds it */
    for (const check_case *c = cases; c->name; c++) {
        if (only && *only && strstr(c->name, only) == NULL)
            continue;
        check_current_failed = 0;
        c->fn();
        if (check_current_failed) {
            fprintf(stderr, "  FAIL %s.%s\n", suite, c->name);
            check_failures++;
        } else {
            passed++;
        }
    }
    printf("%s: %d passed, %d failed\n", suite, passed, check_failures);
    return check_failures ? 1 : 0;
}

/* Hex string to bytes; returns the length. */
static inline size_t check_unhex(const char *hex, uint8_t *out)
{
    size_t n = 0;
    while (hex[0] && hex[1]) {
        unsigned v;
        sscanf(hex, "%2x", &v);
        out[n++] = (uint8_t)v;
        hex += 2;
    }
    return n;
}

#endif
