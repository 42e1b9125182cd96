/*
 * pdf-inspect — pass a PDF through unchanged while checking it, and summarise it at the end.
 *
 * Output (port 0): the input, byte for byte.
 * Output "summary" (port 2): one JSON object, written at the end of the stream:
 *
 *   {"bytes":N,"version":"1.7","pages":K,"eof":true,"linearized":false,"object_streams":false}
 *
 *   bytes           input size
 *   version         the x.y of the %PDF-x.y header
 *   pages           the number of page objects: names /Type then /Page (not /Pages), with only
 *                   whitespace or comments between; null when it cannot be counted this way,
 *                   with "pages_note" saying why (the file has object streams, whose contents
 *                   are compressed, or no page object was found)
 *   eof             a %%EOF marker is in the last 1024 bytes (always true: without one the run
 *                   fails)
 *   linearized      a /Linearized name within 1024 bytes of the header (where the linearization
 *                   dictionary must be)
 *   object_streams  an /ObjStm name occurs (PDF 1.5 compressed object streams)
 *
 * Config: none (an empty object).
 *
 * Errors: "byte 0: not a PDF (no %PDF-x.y header in the first 1024 bytes)" as soon as 1024
 * bytes without the header have passed (or at the end of a shorter input), and "byte N:
 * truncated PDF (no %%EOF in the last 1024 bytes)" at the end, N being the input size.
 *
 * The scan is a small tokenizer that only tells names (/Name), comments (% to end of line) and
 * everything else apart; its state is a few bytes, so a name split across chunks is still seen.
 * Names in string literals or in uncompressed stream data are counted like any other (a page
 * count may be off for files that embed such text; compressed streams are noise to it and a
 * match there is very unlikely).
 */
#define PL_OUTPUTS "summary=2"
#define PL_OUTPUT_PORTS 3
#include "pipeline_guest.h"
#include "pl_helpers.h"

#define WINDOW 1024u  /* the header must start in the first WINDOW bytes, %%EOF in the last */
#define NAME_MAX 16u  /* longer names are none of those we look for */

enum { T_NORMAL, T_NAME, T_COMMENT };

static struct {
    uint64_t bytes;
    /* The first WINDOW + 16 bytes (enough for a header starting at byte WINDOW - 1). */
    uint8_t head[WINDOW + 16];
    bool header_checked;
    char version[8];
    uint64_t header_at;     /* offset of the %PDF- header */
    uint64_t linearized_at; /* offset of the first /Linearized name, UINT64_MAX if none */
    /* The last WINDOW bytes seen. */
    uint8_t tail[WINDOW];
    uint32_t tail_len;
    /* Tokenizer. */
    uint8_t state;
    bool after_type; /* the last token was the name /Type */
    uint8_t name_len;
    char name[NAME_MAX + 1]; /* the name being read (without '/'); name_len > NAME_MAX: too long */
    uint64_t pages;
    bool object_streams;
} g;

/* Byte classes of PDF syntax (ISO 32000 7.2.2): whitespace, delimiters, regular. */
enum { C_REGULAR, C_SPACE, C_DELIM };
static uint8_t cls[256];

static int pl_guest_init(const uint8_t *config, size_t len) {
    if (pl_config_none(config, len, "pdf-inspect")) return -1;
    static const char spaces[] = {0, '\t', '\n', '\f', '\r', ' '};
    static const char delims[] = "()<>[]{}/%";
    for (size_t i = 0; i < sizeof spaces; i++) cls[(uint8_t)spaces[i]] = C_SPACE;
    for (size_t i = 0; delims[i]; i++) cls[(uint8_t)delims[i]] = C_DELIM;
    g.linearized_at = UINT64_MAX;
    return 0;
}

static bool name_is(const char *s) { return g.name_len == strlen(s) && memcmp(g.name, s, g.name_len) == 0; }

/* A name token ended; `at` is the offset of its '/'. */
static void on_name(uint64_t at) {
    if (g.name_len > NAME_MAX) {
        g.after_type = false;
        return;
    }
    if (g.after_type && name_is("Page")) g.pages++;
    g.after_type = name_is("Type");
    if (name_is("ObjStm")) g.object_streams = true;
    if (name_is("Linearized") && at < g.linearized_at) g.linearized_at = at;
}

/* Feeds `n` bytes starting at input offset `base` to the tokenizer. */
static void scan(const uint8_t *d, size_t n, uint64_t base) {
    for (size_t i = 0; i < n; i++) {
        if (g.state == T_COMMENT) {
            while (i < n && d[i] != '\n' && d[i] != '\r') i++;
            if (i < n) g.state = T_NORMAL;
            continue;
        }
        if (g.state == T_NAME) {
            const uint8_t c = d[i];
            if (cls[c] == C_REGULAR) {
                if (g.name_len <= NAME_MAX) g.name[g.name_len++] = (char)c;
                continue;
            }
            /* Its '/' is name_len + 1 bytes back (exact for the short names looked for). */
            on_name(base + i - g.name_len - 1);
            g.state = T_NORMAL;
        }
        /* T_NORMAL. Between names, only '/' and '%' matter, unless /Type was just seen: then any
         * other token ends the chance of a /Page. */
        if (!g.after_type) {
            while (i < n && d[i] != '/' && d[i] != '%') i++;
            if (i == n) return;
        }
        const uint8_t x = d[i];
        if (x == '/') {
            g.state = T_NAME;
            g.name_len = 0;
        } else if (x == '%') {
            g.state = T_COMMENT;
        } else if (cls[x] != C_SPACE) {
            g.after_type = false;
        }
    }
}

/* Finds "%PDF-x.y" starting in the first WINDOW bytes of head[0, n); sets g.version. */
static bool find_header(size_t n) {
    for (size_t i = 0; i < WINDOW && i + 8 <= n; i++) {
        const uint8_t *p = g.head + i;
        if (memcmp(p, "%PDF-", 5) || (uint8_t)(p[5] - '0') > 9 || p[6] != '.' || (uint8_t)(p[7] - '0') > 9) continue;
        size_t k = 0;
        for (const uint8_t *v = p + 5; v < g.head + n && k < sizeof g.version - 1 && (*v == '.' || (uint8_t)(*v - '0') <= 9); v++)
            g.version[k++] = (char)*v;
        g.version[k] = 0;
        g.header_at = i;
        return true;
    }
    return false;
}

static int check_header(void) {
    size_t n = g.bytes < sizeof g.head ? (size_t)g.bytes : sizeof g.head;
    g.header_checked = true;
    if (find_header(n)) return 0;
    return pl_fail_str("byte 0: not a PDF (no %PDF-x.y header in the first 1024 bytes)");
}

static int pl_guest_process(const uint8_t *data, size_t len) {
    if (pl_out_write(pl_port(0), data, len)) return -1;
    if (g.bytes < sizeof g.head) {
        size_t k = sizeof g.head - (size_t)g.bytes;
        if (k > len) k = len;
        memcpy(g.head + g.bytes, data, k);
    }
    /* Keep the last WINDOW bytes. */
    if (len >= WINDOW) {
        memcpy(g.tail, data + len - WINDOW, WINDOW);
        g.tail_len = WINDOW;
    } else {
        uint32_t keep = g.tail_len + len > WINDOW ? WINDOW - (uint32_t)len : g.tail_len;
        memmove(g.tail, g.tail + g.tail_len - keep, keep);
        memcpy(g.tail + keep, data, len);
        g.tail_len = keep + (uint32_t)len;
    }
    scan(data, len, g.bytes);
    g.bytes += len;
    if (!g.header_checked && g.bytes >= sizeof g.head) return check_header();
    return 0;
}

static bool tail_has_eof(void) {
    for (uint32_t i = 0; i + 5 <= g.tail_len; i++)
        if (memcmp(g.tail + i, "%%EOF", 5) == 0) return true;
    return false;
}

static int pl_guest_finish(void) {
    if (!g.header_checked && check_header()) return -1;
    if (!tail_has_eof()) {
        pl_buf m = {0};
        pl_buf_puts(&m, "byte ");
        pl_buf_put_u64(&m, g.bytes);
        pl_buf_puts(&m, ": truncated PDF (no %%EOF in the last 1024 bytes)");
        return pl_fail_buf(&m);
    }
    if (g.state == T_NAME) on_name(g.bytes - g.name_len - 1);
    pl_buf s = {0};
    pl_buf_puts(&s, "{\"bytes\":");
    pl_buf_put_u64(&s, g.bytes);
    pl_buf_puts(&s, ",\"version\":\"");
    pl_buf_puts(&s, g.version);
    pl_buf_puts(&s, "\",\"pages\":");
    if (g.object_streams || g.pages == 0) {
        pl_buf_puts(&s, g.object_streams ? "null,\"pages_note\":\"the file has object streams (/ObjStm): page objects "
                                           "may be compressed and cannot be counted\""
                                         : "null,\"pages_note\":\"no page objects (/Type /Page) found\"");
    } else {
        pl_buf_put_u64(&s, g.pages);
    }
    pl_buf_puts(&s, ",\"eof\":true,\"linearized\":");
    pl_buf_puts(&s, g.linearized_at - g.header_at < WINDOW ? "true" : "false");
    pl_buf_puts(&s, ",\"object_streams\":");
    pl_buf_puts(&s, g.object_streams ? "true" : "false");
    pl_buf_puts(&s, "}\n");
    if (s.oom) {
        pl_buf_free(&s);
        return pl_fail_str("out of memory");
    }
    int rc = pl_out_write(pl_port(2), s.data, s.len);
    pl_buf_free(&s);
    return rc;
}
