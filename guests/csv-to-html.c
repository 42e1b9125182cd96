/*
 * csv-to-html — render a CSV with a header row as an HTML5 document holding one table.
 *
 * Input: CSV read exactly as Python's csv.reader reads it (pl_csv); the first record is the
 * header, blank lines are skipped.
 *
 * Config (a JSON object; every key optional):
 *   title     string; the document's <title> and an <h1> above the table (default: <title>
 *             "Report" and no <h1>)
 *   columns   [name, ...]  the columns to show, in this order (default: all, in header order);
 *             with duplicate header names, the first
 *   max_rows  non-negative integer: show at most this many rows, then a paragraph
 *             "N more rows not shown" (default: all rows)
 *
 * Output (port 0): "<!DOCTYPE html>", a <head> with the title and a small inline <style> meant
 * for printing (borders, a repeated header row on each page, no row split across pages), then
 * <table> with a <thead> row of <th> from the header and one <tbody> row of <td> per data row.
 * Every cell is HTML-escaped: & < > " ' become &amp; &lt; &gt; &quot; &#39;; other bytes
 * (line breaks too, shown by the style's pre-wrap) pass unchanged. A stream without a header
 * gives the document with an empty table.
 *
 * Rejects (port 1): rows whose field count differs from the header's ("expected 4 fields, got
 * 5"), as "line,reason,record" CSV exactly like csv-map's. Counters: records_in the data rows,
 * records_out the rows shown, records_rejected the rejects.
 *
 * Errors: an unknown or repeated config key, or a value of the wrong type, fails pl_init; a
 * column in `columns` that the header lacks fails at the header: "columns: column 'x' is not in
 * the header (columns: a, b, c)".
 */
#define PL_OUTPUTS "rejects=1"
#include "pipeline_guest.h"
#include "pl_helpers.h"

static struct {
    pl_str title;
    bool has_title, has_columns, has_max_rows;
    pl_strs columns;
    uint64_t max_rows;
} cfg;

static struct {
    pl_csv csv;
    bool have_header;
    uint32_t ncols; /* fields in the header */
    uint32_t nout;  /* columns shown */
    uint32_t *src;  /* header index of each shown column */
    uint64_t hidden;
    pl_buf reason, scratch;
} g;

/* ---------------------------------------------------------------------------------------- */
/* HTML                                                                                      */
/* ---------------------------------------------------------------------------------------- */

/* Longest entity a byte escapes to. */
#define ESC_MAX 6u

/* Writes the n bytes at p HTML-escaped at d (room for ESC_MAX * n bytes); returns the end. */
static uint8_t *escape_into(uint8_t *d, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const char *e;
        switch (p[i]) {
        case '&': e = "&amp;"; break;
        case '<': e = "&lt;"; break;
        case '>': e = "&gt;"; break;
        case '"': e = "&quot;"; break;
        case '\'': e = "&#39;"; break;
        default: *d++ = p[i]; continue;
        }
        size_t len = strlen(e);
        memcpy(d, e, len);
        d += len;
    }
    return d;
}

/* A text escapes in pieces of at most this many bytes (so that a piece fits the buffer). */
#define PIECE (PL_OUT_CAP / ESC_MAX - 16)

/* Writes the n bytes at p HTML-escaped (any size: a long text goes a piece at a time). */
static int put_escaped(pl_out *o, const uint8_t *p, size_t n) {
    while (n) {
        size_t k = n < PIECE ? n : PIECE;
        uint8_t *d = pl_out_reserve(o, k * ESC_MAX);
        if (!d) return -1;
        o->len = (uint32_t)(escape_into(d, p, k) - o->buf);
        p += k;
        n -= k;
    }
    return 0;
}

static int put(const char *s) { return pl_out_write(pl_port(0), s, strlen(s)); }

static const char STYLE[] =
    "<style>\n"
    "body{font-family:Helvetica,Arial,sans-serif;font-size:10pt;margin:1.5cm}\n"
    "h1{font-size:14pt}\n"
    "table{border-collapse:collapse;width:100%}\n"
    "th,td{border:1px solid #888;padding:2pt 4pt;text-align:left;vertical-align:top;white-space:pre-wrap}\n"
    "th{background:#eee}\n"
    "thead{display:table-header-group}\n"
    "tr{page-break-inside:avoid;break-inside:avoid}\n"
    "p.more{font-style:italic}\n"
    "</style>\n";

/* Everything up to the <tbody>; `header` is NULL for a stream without one. */
static int put_prologue(const pl_csv_record *header) {
    pl_out *o = pl_port(0);
    if (put("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>")) return -1;
    if (cfg.has_title ? put_escaped(o, (const uint8_t *)cfg.title.ptr, cfg.title.len) : put("Report")) return -1;
    if (put("</title>\n") || put(STYLE) || put("</head>\n<body>\n")) return -1;
    if (cfg.has_title && (put("<h1>") || put_escaped(o, (const uint8_t *)cfg.title.ptr, cfg.title.len) || put("</h1>\n")))
        return -1;
    if (put("<table>\n<thead>\n")) return -1;
    if (header) {
        if (put("<tr>")) return -1;
        for (uint32_t i = 0; i < g.nout; i++) {
            const pl_field *f = &header->fields[g.src[i]];
            if (put("<th>") || put_escaped(o, f->ptr, f->len) || put("</th>")) return -1;
        }
        if (put("</tr>\n")) return -1;
    }
    return put("</thead>\n<tbody>\n");
}

/* ---------------------------------------------------------------------------------------- */
/* Config                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static int on_batch(void *ctx, const pl_csv_batch *b);

static int pl_guest_init(const uint8_t *config, size_t len) {
    static const char known[] = "title, columns, max_rows";
    pl_csv_init(&g.csv, on_batch, NULL);
    pl_json j;
    int rc = pl_config_open(&j, config, len);
    if (rc) return rc < 0 ? -1 : 0;
    pl_str key;
    int more;
    while ((more = pl_json_next(&j, &key)) > 0) {
        bool *seen = NULL;
        if (pl_str_eq(&key, "title", 5)) {
            seen = &cfg.has_title;
            if (pl_json_peek(&j) != PL_JSON_STRING || pl_json_string(&j, &cfg.title))
                rc = pl_config_type_error(&j, "title", "a string");
        } else if (pl_str_eq(&key, "columns", 7)) {
            seen = &cfg.has_columns;
            rc = pl_config_str_list(&j, "columns", &cfg.columns);
            if (!rc && !cfg.columns.n) rc = pl_fail_str("config.columns: expected at least one column");
        } else if (pl_str_eq(&key, "max_rows", 8)) {
            seen = &cfg.has_max_rows;
            double v;
            if (pl_json_peek(&j) != PL_JSON_NUMBER || pl_json_number(&j, &v) || !(v >= 0 && v <= 9e15) ||
                v != (double)(uint64_t)v)
                rc = pl_config_type_error(&j, "max_rows", "a non-negative integer");
            else
                cfg.max_rows = (uint64_t)v;
        } else {
            rc = pl_config_unknown_key("config", &key, known);
        }
        if (!rc && seen && *seen) rc = pl_config_duplicate_key("config", &key);
        if (seen) *seen = true;
        pl_str_free(&key);
        if (rc) return rc;
    }
    if (more < 0 || pl_json_done(&j)) return pl_json_fail(&j, "config");
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Records                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static int on_header(const pl_csv_record *h) {
    g.have_header = true;
    g.ncols = h->count;
    g.nout = cfg.has_columns ? cfg.columns.n : h->count;
    g.src = malloc(((size_t)g.nout + 1) * sizeof *g.src);
    if (!g.src) return pl_fail_str("out of memory");
    for (uint32_t i = 0; i < g.nout; i++) {
        if (!cfg.has_columns) {
            g.src[i] = i;
            continue;
        }
        const pl_str *name = &cfg.columns.v[i];
        uint32_t k = 0;
        while (k < h->count && !(h->fields[k].len == name->len && memcmp(h->fields[k].ptr, name->ptr, name->len) == 0))
            k++;
        if (k == h->count) return pl_fail_not_in_header("columns", name, h);
        g.src[i] = k;
    }
    return put_prologue(h);
}

static int on_row(const pl_csv_batch *b, const pl_csv_row *r) {
    pl_stats.records_in++;
    if (r->count != g.ncols) return pl_reject_field_count(b, r, g.ncols, &g.reason, &g.scratch);
    if (cfg.has_max_rows && pl_stats.records_out >= cfg.max_rows) {
        g.hidden++;
        return 0;
    }
    pl_stats.records_out++;
    pl_out *o = pl_port(0);
    if (put("<tr>")) return -1;
    for (uint32_t i = 0; i < g.nout; i++) {
        const pl_field f = pl_csv_value(b, r, g.src[i]);
        if (f.len > PIECE) {
            if (put("<td>") || put_escaped(o, f.ptr, f.len) || put("</td>")) return -1;
            continue;
        }
        /* The common case: the whole cell in one reservation. */
        uint8_t *d = pl_out_reserve(o, f.len * ESC_MAX + 9);
        if (!d) return -1;
        memcpy(d, "<td>", 4);
        d = escape_into(d + 4, f.ptr, f.len);
        memcpy(d, "</td>", 5);
        o->len = (uint32_t)(d + 5 - o->buf);
    }
    return put("</tr>\n");
}

/* The first record is the header: cut it whole, once. */
__attribute__((noinline)) static int read_header(const pl_csv_batch *b, const pl_csv_row *r) {
    pl_csv_record h;
    return pl_csv_record_of(b, r, &h) || on_header(&h);
}

static int on_batch(void *ctx, const pl_csv_batch *b) {
    (void)ctx;
    uint32_t k = 0;
    if (!g.have_header && read_header(b, &b->rows[k++])) return -1;
    for (; k < b->count; k++)
        if (on_row(b, &b->rows[k])) return -1;
    return 0;
}

static int pl_guest_process(const uint8_t *data, size_t len) { return pl_csv_feed(&g.csv, data, len); }

static int pl_guest_finish(void) {
    if (pl_csv_finish(&g.csv)) return -1;
    if (!g.have_header && put_prologue(NULL)) return -1;
    if (put("</tbody>\n</table>\n")) return -1;
    if (g.hidden) {
        pl_buf m = {0};
        pl_buf_puts(&m, "<p class=\"more\">");
        pl_buf_put_u64(&m, g.hidden);
        pl_buf_puts(&m, g.hidden == 1 ? " more row not shown</p>\n" : " more rows not shown</p>\n");
        if (m.oom) return pl_fail_str("out of memory");
        int rc = pl_out_write(pl_port(0), m.data, m.len);
        pl_buf_free(&m);
        if (rc) return -1;
    }
    return put("</body>\n</html>\n");
}
