/*
 * The staged output window (see fabric/stage.h).
 */
#include "fabric/stage.h"

#include <stdlib.h>
#include <string.h>

#include "fabric/common.h"

void fab_stage_init(fab_stage *s, uint8_t *mem, size_t cap, fab_sha256 *hasher,
                    fab_sink_fn sink, void *ctx)
{
    FAB_ASSERT(mem != NULL || cap == 0);
    s->data = mem;
    s->len = 0;
    s->cap = cap;
    s->heap = 0;
    s->grow = hasher == NULL && sink == NULL;
    s->hasher = hasher;
    s->sink = sink;
    s->ctx = ctx;
}

void fab_stage_destroy(fab_stage *s)
{
    if (s->heap)
        free(s->data);
    s->data = NULL;
    s->len = 0;
    s->cap = 0;
    s->heap = 0;
}

int fab_stage_flush(fab_stage *s)
{
    int rc = FAB_OK;
    if (s->grow || s->len == 0)
        return FAB_OK;
    if (s->hasher)
        rc = fab_sha256_update(s->hasher, s->data, s->len);
    else
        rc = s->sink(s->ctx, s->data, s->len);
    s->len = 0;
    return rc;
}

int fab__stage_room_slow(fab_stage *s, size_t n)
{
    if (!s->grow) {
        int rc = fab_stage_flush(s);
        if (rc != FAB_OK)
            return rc;
        if (n <= s->cap)
            return FAB_OK;
        /* A single write larger than the window: move it to the heap. */
    }
    if (n > SIZE_MAX / 2 - s->len)
        return FAB_EOVERFLOW;
    size_t need = s->len + n, cap = s->cap ? s->cap : 256;
    while (cap < need)
        cap *= 2; /* need <= SIZE_MAX / 2: cannot overflow */
    uint8_t *p;
    if (s->heap) {
        p = realloc(s->data, cap);
    } else {
        p = malloc(cap);
        if (p && s->len)
            memcpy(p, s->data, s->len);
    }
    if (p == NULL)
        return FAB_ENOMEM;
    s->data = p;
    s->cap = cap;
    s->heap = 1;
    return FAB_OK;
}

int fab_stage_write(fab_stage *s, const void *data, size_t len)
{
    int rc;
    if (!s->grow && len >= FAB_STAGE_DIRECT) {
        if ((rc = fab_stage_flush(s)) != FAB_OK)
            return rc;
        return s->hasher ? fab_sha256_update(s->hasher, data, len) : s->sink(s->ctx, data, len);
    }
    if ((rc = fab_stage_room(s, len)) != FAB_OK)
        return rc;
    if (len)
        fab_copy(s->data + s->len, data, len);
    s->len += len;
    return FAB_OK;
}
