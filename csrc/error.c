#include "fabric/error.h"

const char *fab_err_name(int code)
{
    switch (code) {
    case FAB_OK: return "FAB_OK";
#define FAB__ERR_NAME(name, value, text) case FAB_E##name: return "FAB_E" #name;
    FAB_ERRNO_MAP(FAB__ERR_NAME)
#undef FAB__ERR_NAME
    default: return "FAB_UNKNOWN";
    }
}

const char *fab_strerror(int code)
{
    switch (code) {
    case FAB_OK: return "success";
#define FAB__ERR_TEXT(name, value, text) case FAB_E##name: return text;
    FAB_ERRNO_MAP(FAB__ERR_TEXT)
#undef FAB__ERR_TEXT
    default: return "unknown error";
    }
}
