/*
 * A staged output window: the buffer the canonical walker writes items into
 * before they reach their destination.
 *
 * Writers put items straight into the window (fab_put_* at data + len, after
 * fab_stage_room), which costs less than a sink call per item. A window
 * either grows when full (an in-memory result, or scratch space for keys
 * being sorted) or is flushed when full into its target: a SHA-256 hasher
 * or a sink. The window's first memory is the caller's (a fixed array on
 * its stack); it moves to the heap only when one write needs more.
 */
#ifndef FABRIC_STAGE_H
#define FABRIC_STAGE_H

#include <stddef.h>
#include <stdint.h>

#include "fabric/enc.h"
#include "fabric/hash.h"

/* Writes of at least this many bytes bypass a flushing window: the staged
 * bytes are flushed, then the data goes to the target without a copy. */
#define FAB_STAGE_DIRECT 2048

typedef struct fab_stage {
    uint8_t *data;      /* the window: the caller's memory, or the heap */
    size_t len;         /* bytes staged */
    size_t cap;         /* bytes data can hold */
    int heap;           /* data was allocated here (freed by fab_stage_destroy) */
    int grow;           /* grow when full, instead of flushing */
    fab_sha256 *hasher; /* flush target, or NULL */
    fab_sink_fn sink;   /* flush target when there is no hasher */
    void *ctx;          /* the sink's context */
} fab_stage;

/*
 * Starts a window over the caller's memory mem[0..cap) (mem may be NULL when
 * cap is 0). Its bytes are flushed into hasher (borrowed), else into sink
 * with ctx; with neither, the window grows and its bytes stay in data.
 * No allocation; cannot fail.
 */
void fab_stage_init(fab_stage *s, uint8_t *mem, size_t cap, fab_sha256 *hasher,
                    fab_sink_fn sink, void *ctx);

/* Frees the heap memory the window may have moved to; the caller's memory
 * is left alone. The window is then empty over no memory. */
void fab_stage_destroy(fab_stage *s);

/* Hands the staged bytes to the target and empties the window. A growing
 * window keeps its bytes (there is no target): 0. Otherwise 0 or the
 * target's code (FAB_ECRYPTO from the hasher, anything from a sink); the
 * window is emptied either way. */
int fab_stage_flush(fab_stage *s);

/* The slow half of fab_stage_room. 0, FAB_ENOMEM, FAB_EOVERFLOW, or a
 * flush's code. */
int fab__stage_room_slow(fab_stage *s, size_t n);

/*
 * Makes room for n more bytes at data + len: flushes a flushing window, or
 * grows (moving data, so pointers into the window are invalidated; offsets
 * stay valid). 0, FAB_ENOMEM, FAB_EOVERFLOW, or a flush's code.
 */
static inline int fab_stage_room(fab_stage *s, size_t n)
{
    if (s->cap - s->len >= n)
        return 0;
    return fab__stage_room_slow(s, n);
}

/*
 * Appends len bytes. In a flushing window, runs of FAB_STAGE_DIRECT bytes
 * or more are passed to the target directly after a flush. Touches nothing
 * but the window, data and the target: it may run without any lock the
 * caller holds for other state. 0 or the codes of fab_stage_room.
 */
int fab_stage_write(fab_stage *s, const void *data, size_t len);

#endif
