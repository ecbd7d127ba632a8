/*
 * libFuzzer target: fab_holdings_restore on arbitrary bytes (the holdings
 * section of a node snapshot, docs/spec/snapshot.md, is untrusted input).
 *
 * Checks the all-or-nothing contract (a failed restore leaves the index
 * empty) and that what an accepted snapshot writes back is a fixed point:
 * restored again, it writes the same bytes. (Not always the input: a
 * repeated fact is accepted and kept once.)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fabric/holdings.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    fab_holdings *h = NULL;
    if (fab_holdings_new(&h) != 0)
        return 0;
    /* A private copy of exactly len bytes, so ASan sees any over-read. */
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL) {
        fab_holdings_free(h);
        return 0;
    }
    if (len)
        memcpy(buf, data, len);
    int rc = fab_holdings_restore(h, buf, len);
    size_t n = fab_holdings_snapshot_size(h);
    if (rc == 0) {
        uint8_t *out = malloc(n ? n : 1);
        if (out != NULL) {
            fab_holdings_snapshot_write(h, out);
            fab_holdings *again = NULL;
            if (fab_holdings_new(&again) == 0) {
                if (fab_holdings_restore(again, out, n) != 0
                    || fab_holdings_snapshot_size(again) != n)
                    abort();
                uint8_t *out2 = malloc(n ? n : 1);
                if (out2 != NULL) {
                    fab_holdings_snapshot_write(again, out2);
                    if (memcmp(out, out2, n) != 0)
                        abort();
                    free(out2);
                }
                fab_holdings_free(again);
            }
            free(out);
        }
    } else {
        const uint8_t *k;
        uint32_t holder;
        if (fab_holdings_fact(h, 0, &k, &holder) == 0)
            abort(); /* a failed restore left a fact behind */
    }
    free(buf);
    fab_holdings_free(h);
    return 0;
}
