/*
 * Placement redaction: which texts must never leave a placement report.
 *
 * A placement report (what a placed op was asked to do, and what it gave
 * back) is framed, recorded and logged; before that, every string in it is
 * classified here and a string with any finding is replaced *whole* by
 * FAB_REDACT_TEXT (never masked in part: the rest of a string that held a
 * credential is not trusted either). The rules are docs/spec/placement.md's;
 * this file is their one implementation.
 */
#ifndef FABRIC_REDACT_H
#define FABRIC_REDACT_H

#include <stddef.h>

/* What a text was found to hold; 0 = nothing. Checked in this order, and
 * the first that matches is the answer. */
#define FAB_REDACT_KINDS(XX)                                        \
    XX(CREDENTIAL, 1, "credential")                                 \
    XX(PATCH_BANK, 2, "patch-bank")                                 \
    XX(HOST, 3, "host")                                             \
    XX(PRIVATE_PATH, 4, "private-path")                             \
    XX(ABSOLUTE_PATH, 5, "absolute-path")                           \
    XX(DEVICE, 6, "host-device")

enum fab_redact_kind {
    FAB_REDACT_NONE = 0,
#define FAB__REDACT_ENUM(name, value, text) FAB_REDACT_##name = (value),
    FAB_REDACT_KINDS(FAB__REDACT_ENUM)
#undef FAB__REDACT_ENUM
};

/* What replaces a string with a finding. */
#define FAB_REDACT_TEXT "[redacted placement data]"
/* What replaces a byte string longer than FAB_REDACT_MAX_BINARY. */
#define FAB_REDACT_PAYLOAD "[redacted placement payload]"
/* The longest byte string a report keeps: 256 KiB. */
#define FAB_REDACT_MAX_BINARY ((size_t)256 * 1024)

/*
 * The finding in text[0..len) (any bytes; not NUL-terminated; NULL only with
 * len 0): a FAB_REDACT_* kind, or FAB_REDACT_NONE. Never fails; reads only
 * text. The five findings match ASCII case-insensitively, anywhere unless
 * the rule says "leading"; the device markers match as written.
 */
int fab_redact_classify(const char *text, size_t len);

/*
 * 1 if text[0..len) mentions a host device (the DEVICE rule alone, whatever
 * else it holds): a placement that does needs the stream.host.device
 * capability. Never fails.
 */
int fab_redact_mentions_device(const char *text, size_t len);

/* The name of a kind ("credential", ...), "none" for 0, "unknown" otherwise.
 * Never NULL. */
const char *fab_redact_kind_name(int kind);

#endif
