/*
 * Error codes of the fabric C core.
 *
 * Every public function returns an int: 0 (FAB_OK) on success or a negative
 * FAB_E* code. The table below is the single source of the enum, of
 * fab_err_name() and of fab_strerror(); add a code by adding one line.
 */
#ifndef FABRIC_ERROR_H
#define FABRIC_ERROR_H

#define FAB_ERRNO_MAP(XX)                                                   \
    XX(NOMEM,     -1,  "out of memory")                                     \
    XX(INVAL,     -2,  "invalid argument")                                  \
    XX(TYPE,      -3,  "value of an unsupported type")                      \
    XX(DEPTH,     -4,  "nesting deeper than the limit")                     \
    XX(RANGE,     -5,  "value out of range")                                \
    XX(UTF8,      -6,  "invalid UTF-8")                                     \
    XX(CRYPTO,    -7,  "OpenSSL failure")                                   \
    XX(IO,        -8,  "input/output error")                                \
    XX(TRUNCATED, -9,  "input ends too early")                              \
    XX(CORRUPT,   -10, "checksum mismatch or corrupt data")                 \
    XX(LIMIT,     -11, "a configured limit was exceeded")                   \
    XX(FORMAT,    -12, "malformed input")                                   \
    XX(VERSION,   -13, "unsupported format version")                        \
    XX(LOCKED,    -14, "held by another process")                           \
    XX(EXISTS,    -15, "already exists")                                    \
    XX(NOTFOUND,  -16, "not found")                                         \
    XX(STATE,     -17, "operation not allowed in the current state")        \
    XX(OVERFLOW,  -18, "size computation overflowed")                       \
    XX(DUPKEY,    -19, "duplicate key after canonical encoding")            \
    XX(CANCELED,  -20, "stopped by the caller")

enum fab_err {
    FAB_OK = 0,
#define FAB__ERR_ENUM(name, value, text) FAB_E##name = (value),
    FAB_ERRNO_MAP(FAB__ERR_ENUM)
#undef FAB__ERR_ENUM
};

/* The symbolic name of a code ("FAB_ENOMEM"), or "FAB_UNKNOWN". Never NULL. */
const char *fab_err_name(int code);

/* A short English description of a code. Never NULL. */
const char *fab_strerror(int code);

#endif
