/*
 * Placement redaction rules (include/fabric/redact.h).
 *
 * Each rule is a list of markers. Matching is a naive scan: texts in
 * placement reports are short, and a scan that allocates nothing cannot
 * fail, which keeps the redactor total (it must answer for any bytes).
 */
#include "fabric/redact.h"

#include <string.h>

#include "fabric/common.h"

typedef struct marker {
    const char *text;
    size_t len;
} marker;

#define M(s) {s, sizeof(s) - 1}

/* Case-insensitive markers, by finding. Lower case: the text is folded. */
static const marker credential[] = {
    M("api_key"), M("apikey"), M("auth-token"), M("bearer "), M("credential"),
    M("password"), M("secret"), M("token="),
};
static const marker patch_bank[] = {
    M("patch-bank"), M("patch_bank"), M("sysex-bank"), M("sysex_bank"),
};
/* A host is one of these markers, not any dotted word: "v1.2" or
 * "model.bin" are not host names. */
static const marker host[] = {
    M("hostname="), M("host="), M("http://"), M("https://"), M("ws://"), M("wss://"),
    M(".local"), M(".lan"),
};
static const marker private_path[] = {
    M("/home/"), M("/users/"), M("\\users\\"), M("/private/"), M("private/"),
    M("private-path"),
};
/* Device markers match as written (case-sensitive): "ALSA" is a device,
 * "salsa" is not. */
static const marker device_anywhere[] = {
    M("/dev/"), M("hw:"), M("CoreAudio"), M("ALSA"), M("host-device"),
};
static const marker device_leading[] = {
    M("device/"), M("host/device"),
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static inline unsigned char fold(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

/* 1 if m occurs in text at position i (folded when ci). */
static int at(const char *text, size_t len, size_t i, const marker *m, int ci)
{
    if (m->len > len - i)
        return 0;
    for (size_t j = 0; j < m->len; j++) {
        unsigned char c = (unsigned char)text[i + j];
        if ((ci ? fold(c) : c) != (unsigned char)m->text[j])
            return 0;
    }
    return 1;
}

static int contains_any(const char *text, size_t len, const marker *ms, size_t n, int ci)
{
    for (size_t i = 0; i < len; i++)
        for (size_t k = 0; k < n; k++)
            if (at(text, len, i, &ms[k], ci))
                return 1;
    return 0;
}

static int starts_with_any(const char *text, size_t len, const marker *ms, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (at(text, len, 0, &ms[k], 0))
            return 1;
    return 0;
}

static int is_windows_drive(const char *text, size_t len)
{
    if (len < 3)
        return 0;
    unsigned char d = fold((unsigned char)text[0]);
    return d >= 'a' && d <= 'z' && text[1] == ':' && (text[2] == '\\' || text[2] == '/');
}

int fab_redact_mentions_device(const char *text, size_t len)
{
    if (len == 0)
        return 0;
    FAB_ASSERT(text != NULL);
    return contains_any(text, len, device_anywhere, COUNT(device_anywhere), 0) ||
           starts_with_any(text, len, device_leading, COUNT(device_leading));
}

int fab_redact_classify(const char *text, size_t len)
{
    if (len == 0)
        return FAB_REDACT_NONE;
    FAB_ASSERT(text != NULL);
    if (contains_any(text, len, credential, COUNT(credential), 1))
        return FAB_REDACT_CREDENTIAL;
    if (contains_any(text, len, patch_bank, COUNT(patch_bank), 1))
        return FAB_REDACT_PATCH_BANK;
    if (contains_any(text, len, host, COUNT(host), 1))
        return FAB_REDACT_HOST;
    if (text[0] == '~' || contains_any(text, len, private_path, COUNT(private_path), 1))
        return FAB_REDACT_PRIVATE_PATH;
    if (text[0] == '/' || is_windows_drive(text, len))
        return FAB_REDACT_ABSOLUTE_PATH;
    if (fab_redact_mentions_device(text, len))
        return FAB_REDACT_DEVICE;
    return FAB_REDACT_NONE;
}

const char *fab_redact_kind_name(int kind)
{
    switch (kind) {
    case FAB_REDACT_NONE:
        return "none";
#define FAB__REDACT_NAME(name, value, text) \
    case FAB_REDACT_##name:                 \
        return text;
        FAB_REDACT_KINDS(FAB__REDACT_NAME)
#undef FAB__REDACT_NAME
    default:
        return "unknown";
    }
}
