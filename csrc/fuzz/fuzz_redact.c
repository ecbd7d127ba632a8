/*
 * libFuzzer target: the placement redaction rules on arbitrary bytes.
 *
 * The classifier must answer for any text (it sees whatever an op was given
 * or returned). Checks that it returns a known kind, that a device mention
 * is always some finding (so it is redacted), and that a leading slash is
 * always one.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fabric/redact.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    /* A private copy of exactly len bytes, so ASan sees any over-read. */
    char *text = malloc(len ? len : 1);
    if (text == NULL)
        return 0;
    if (len)
        memcpy(text, data, len);
    int kind = fab_redact_classify(len ? text : NULL, len);
    if (kind < FAB_REDACT_NONE || kind > FAB_REDACT_DEVICE)
        abort();
    if (strcmp(fab_redact_kind_name(kind), "unknown") == 0)
        abort();
    if (fab_redact_mentions_device(len ? text : NULL, len) && kind == FAB_REDACT_NONE)
        abort();
    if (len && text[0] == '/' && kind == FAB_REDACT_NONE)
        abort();
    free(text);
    return 0;
}
