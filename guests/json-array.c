/*
 * json-array — streams the elements of a top-level JSON array out as JSON Lines.
 *
 * Input: one JSON document (RFC 8259; a leading UTF-8 BOM is dropped) whose top-level value is
 * an array, of any size. Output (port 0): each element on a line of its own, in compact form:
 * the element's bytes without insignificant whitespace, so numbers and strings (escapes
 * included) keep their original text. An empty array gives no output.
 *
 * Memory stays constant: the guest holds the array's structure and at most one element (its
 * compact form), fed through the SDK's streaming scanner (pl_json_stream). An element whose
 * bytes in the input, from its first to its last byte, exceed max_element_bytes fails the run.
 *
 * Config (a JSON object; every key optional):
 *   max_element_bytes  positive integer, default 67108864 (64 MiB)
 *
 * The input is a document, not a sequence of records: anything wrong with it fails the run with
 * a message naming the byte offset (counted from the start of the input, BOM included) - no
 * rejects. Counters: records_in and records_out both count the elements.
 */
/* No outputs besides main (an empty declaration: a job may not route rejects to it), and only
 * port 0's output buffer. */
#define PL_OUTPUTS ""
#define PL_OUTPUT_PORTS 1
#include "pipeline_guest.h"

/* Where the reader is in the top-level array. */
enum {
    TOP_START,    /* before the array: whitespace, then '[' */
    TOP_FIRST,    /* right after '[': an element or ']' */
    TOP_ELEMENT,  /* in an element (g.scan reads it) */
    TOP_AFTER,    /* after an element: ',' or ']' */
    TOP_NEXT,     /* after ',': an element */
    TOP_END,      /* after ']': whitespace only */
};

static struct {
    uint64_t max_element_bytes;
    uint64_t offset;        /* input offset of the next byte */
    uint64_t element_start; /* input offset of the element being read */
    uint8_t top;            /* TOP_* */
    uint8_t bom;            /* pl__bom_skip state */
    pl_json_stream scan;
    pl_buf element; /* the element's compact form so far */
} g = {.max_element_bytes = 64u << 20};

static int read_config(pl_json *j, int key) {
    (void)key; /* the only one */
    return pl_config_size(j, "max_element_bytes", 4294967296.0, &g.max_element_bytes);
}

static int pl_guest_init(const uint8_t *config, size_t len) {
    static const char *const keys[] = {"max_element_bytes", NULL};
    return pl_config_read(config, len, keys, read_config);
}

/* "invalid JSON at byte N: <what>"; returns -1. */
static int syntax_error(uint64_t at, const char *what) {
    pl_buf m = {0};
    pl_buf_puts(&m, "invalid JSON at byte ");
    pl_buf_put_u64(&m, at);
    pl_buf_puts(&m, ": ");
    pl_buf_puts(&m, what);
    return pl_fail_buf(&m);
}

static int too_big(void) {
    pl_buf m = {0};
    pl_buf_puts(&m, "the element at byte ");
    pl_buf_put_u64(&m, g.element_start);
    pl_buf_puts(&m, " exceeds max_element_bytes (");
    pl_buf_put_u64(&m, g.max_element_bytes);
    pl_buf_puts(&m, ") at byte ");
    pl_buf_put_u64(&m, g.element_start + g.max_element_bytes);
    pl_buf_puts(&m, "; raise max_element_bytes in the stage config");
    return pl_fail_buf(&m);
}

/* Writes the element read and goes on after it. */
static int element_done(void) {
    if (g.element.oom) return pl_fail_str("out of memory");
    pl_stats.records_in++;
    pl_stats.records_out++;
    pl_out *o = pl_port(0);
    int rc = pl_out_write(o, g.element.data, g.element.len) || pl_out_putc(o, '\n');
    g.element.len = 0;
    g.top = TOP_AFTER;
    return rc;
}

/* Reads element bytes from d; returns how many it consumed, or -1. */
static int64_t element_bytes(const uint8_t *d, size_t n) {
    /* Never take more than one byte past the limit, so the held element stays within it. */
    uint64_t room = g.max_element_bytes - (g.scan.offset - g.element_start) + 1;
    size_t used = pl_json_stream_feed(&g.scan, d, n < room ? n : (size_t)room, &g.element);
    if (g.scan.error) return syntax_error(g.scan.error_at, g.scan.error);
    if (g.scan.offset - g.element_start > g.max_element_bytes) return too_big();
    if (g.scan.done && element_done()) return -1;
    return (int64_t)used;
}

static int process(const uint8_t *d, size_t n) {
    const uint8_t *p = d, *const end = d + n;
    while (p < end) {
        const uint8_t c = *p;
        const uint64_t at = g.offset + (uint64_t)(p - d);
        if (g.top == TOP_ELEMENT) {
            int64_t used = element_bytes(p, (size_t)(end - p));
            if (used < 0) return -1;
            p += used;
            continue;
        }
        p++;
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
        switch (g.top) {
        case TOP_START:
            if (c != '[') {
                pl_buf m = {0};
                pl_buf_puts(&m, "the document is not a JSON array: it starts with '");
                pl_buf_putc(&m, c < 0x20 || c >= 0x7F ? '?' : c);
                pl_buf_puts(&m, "' at byte ");
                pl_buf_put_u64(&m, at);
                return pl_fail_buf(&m);
            }
            g.top = TOP_FIRST;
            break;
        case TOP_AFTER:
            if (c == ',')
                g.top = TOP_NEXT;
            else if (c == ']')
                g.top = TOP_END;
            else
                return syntax_error(at, "expected ',' or ']'");
            break;
        case TOP_END: return syntax_error(at, "unexpected data after the JSON value");
        default: /* TOP_FIRST, TOP_NEXT */
            if (c == ']' && g.top == TOP_FIRST) {
                g.top = TOP_END;
                break;
            }
            /* The first byte of an element: the scanner reads it from here. */
            p--;
            g.top = TOP_ELEMENT;
            g.element_start = at;
            pl_json_stream_init(&g.scan, at);
        }
    }
    g.offset += n;
    return 0;
}

static int pl_guest_process(const uint8_t *data, size_t len) {
    if (g.bom < 3) {
        size_t replay, used = pl__bom_skip(&g.bom, data, len, &replay);
        /* Bytes taken for a BOM that was not one are data: the stream's first bytes. */
        g.offset = g.offset + used - replay;
        if (replay && process(pl__bom_bytes, replay)) return -1;
        data += used;
        len -= used;
    }
    return process(data, len);
}

static int pl_guest_finish(void) {
    size_t replay = pl__bom_end(&g.bom);
    if (replay) {
        g.offset -= replay;
        if (process(pl__bom_bytes, replay)) return -1;
    }
    if (g.top == TOP_ELEMENT) {
        /* A number element ends only here; the array is unterminated all the same. */
        if (pl_json_stream_end(&g.scan)) return syntax_error(g.scan.error_at, g.scan.error);
        if (element_done()) return -1;
    }
    if (g.top == TOP_START) return pl_fail_str("the document is empty: expected a JSON array");
    if (g.top != TOP_END) return syntax_error(g.offset, "unexpected end of JSON");
    return 0;
}
