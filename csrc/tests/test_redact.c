/* Placement redaction rules: each marker of each finding, the order of the
 * findings, case folding where the rules fold and not where they don't,
 * leading-only rules, and texts that must pass (dotted words are not hosts). */
#include "check.h"
#include "fabric/redact.h"

static int kind(const char *s)
{
    return fab_redact_classify(s, strlen(s));
}

static void test_credentials(void)
{
    const char *yes[] = {"api_key=1", "my APIKEY", "auth-token x", "Bearer abc", "credentials",
                         "PassWord", "the secret", "token=abc123", NULL};
    for (const char **s = yes; *s; s++)
        CHECK_EQ(kind(*s), FAB_REDACT_CREDENTIAL);
    CHECK_EQ(kind("token"), FAB_REDACT_NONE);   /* only "token=" */
    CHECK_EQ(kind("bearer"), FAB_REDACT_NONE);  /* only "bearer " */
}

static void test_patch_bank(void)
{
    const char *yes[] = {"patch-bank 3", "PATCH_BANK", "sysex-bank", "a sysex_bank", NULL};
    for (const char **s = yes; *s; s++)
        CHECK_EQ(kind(*s), FAB_REDACT_PATCH_BANK);
}

static void test_hosts(void)
{
    const char *yes[] = {"hostname=a", "host=studio.local", "HTTP://x", "https://x.org",
                         "ws://h", "wss://h", "studio.local", "box.LAN", NULL};
    for (const char **s = yes; *s; s++)
        CHECK_EQ(kind(*s), FAB_REDACT_HOST);
    /* A dotted word is not a host name. */
    CHECK_EQ(kind("model.bin"), FAB_REDACT_NONE);
    CHECK_EQ(kind("v1.2.3"), FAB_REDACT_NONE);
    CHECK_EQ(kind("example.com"), FAB_REDACT_NONE);
}

static void test_paths(void)
{
    const char *priv[] = {"/home/ann/x", "C:/Users/ann/", "C:\\Users\\ann", "x/private/y",
                          "private/x", "private-path=session.sim", "~/notes", "~", NULL};
    for (const char **s = priv; *s; s++)
        CHECK_EQ(kind(*s), FAB_REDACT_PRIVATE_PATH);
    const char *abs[] = {"/etc/passwd", "/", "C:\\tmp", "d:/data", NULL};
    for (const char **s = abs; *s; s++)
        CHECK_EQ(kind(*s), FAB_REDACT_ABSOLUTE_PATH);
    CHECK_EQ(kind("relative/path.txt"), FAB_REDACT_NONE);
    CHECK_EQ(kind("a ~ b"), FAB_REDACT_NONE);  /* ~ only when leading */
    CHECK_EQ(kind("x/etc"), FAB_REDACT_NONE);  /* / only when leading */
    CHECK_EQ(kind("1:/x"), FAB_REDACT_NONE);   /* a drive is a letter */
}

static void test_devices(void)
{
    const char *yes[] = {"hw:0,0", "host-device CoreAudio Built-in Output", "ALSA default",
                         "device/mic", "host/device/1", "use /dev/snd", NULL};
    for (const char **s = yes; *s; s++) {
        CHECK(fab_redact_mentions_device(*s, strlen(*s)));
        CHECK(kind(*s) != FAB_REDACT_NONE);
    }
    CHECK_EQ(kind("hw:0"), FAB_REDACT_DEVICE);
    /* Device markers are case-sensitive and some are leading only. */
    CHECK_EQ(kind("salsa"), FAB_REDACT_NONE);
    CHECK_EQ(kind("coreaudio"), FAB_REDACT_NONE);
    CHECK_EQ(kind("my device/x"), FAB_REDACT_NONE);
    CHECK(!fab_redact_mentions_device("salsa", 5));
    /* /dev/ leading is an absolute path first, and still a device mention. */
    CHECK_EQ(kind("/dev/snd"), FAB_REDACT_ABSOLUTE_PATH);
    CHECK(fab_redact_mentions_device("/dev/snd", 8));
}

static void test_order_and_edges(void)
{
    /* The first finding in the fixed order wins. */
    CHECK_EQ(kind("https://user:password@host"), FAB_REDACT_CREDENTIAL);
    CHECK_EQ(kind("/home/x/patch-bank"), FAB_REDACT_PATCH_BANK);
    CHECK_EQ(fab_redact_classify(NULL, 0), FAB_REDACT_NONE);
    CHECK_EQ(kind(""), FAB_REDACT_NONE);
    CHECK_EQ(kind("plain words"), FAB_REDACT_NONE);
    /* A marker cut by the end of the text does not match, and NUL bytes are
     * ordinary bytes. */
    CHECK_EQ(fab_redact_classify("host", 4), FAB_REDACT_NONE);
    CHECK_EQ(fab_redact_classify("a\0token=", 8), FAB_REDACT_CREDENTIAL);
    /* Non-ASCII bytes are not folded into ASCII. */
    CHECK_EQ(kind("\xc3\x9f" "ecret"), FAB_REDACT_NONE);
    CHECK(strcmp(fab_redact_kind_name(FAB_REDACT_HOST), "host") == 0);
    CHECK(strcmp(fab_redact_kind_name(0), "none") == 0);
    CHECK(strcmp(fab_redact_kind_name(99), "unknown") == 0);
}

int main(void)
{
    static const check_case cases[] = {
        {"credentials", test_credentials},
        {"patch_bank", test_patch_bank},
        {"hosts", test_hosts},
        {"paths", test_paths},
        {"devices", test_devices},
        {"order_and_edges", test_order_and_edges},
        {NULL, NULL},
    };
    return check_run("redact", cases);
}
