/*
 * csv-map — select, rename, case-convert and filter the columns of a CSV stream.
 *
 * Input: CSV read exactly as Python's csv.reader reads it (see pl_csv in pipeline_guest.h); the
 * first record is the header, blank lines are skipped.
 *
 * Config (a JSON object; every key optional):
 *   select            [name, ...]  output columns, in this order (default: all, in header order)
 *   rename            {header name: new name}  applied to the selected columns
 *   upper, lower      [name, ...]  columns to upper-/lower-case: ASCII a-z <-> A-Z, and the
 *                     Latin-1 letters U+00E0..U+00FE <-> U+00C0..U+00DE but U+00F7/U+00D7 (the
 *                     division and multiplication signs); nothing else (not ß, ÿ, µ, nor any
 *                     letter outside Latin-1)
 *   filter            {"column": name, "op": "==" | "!=" | ">" | ">=" | "<" | "<=",
 *                      "value": number | string}
 *   max_record_bytes  positive integer, default 67108864 (64 MiB)
 *
 * Column names in upper, lower and filter.column are looked up among the output names (after
 * rename) first, then among the header names; filter may name a column that is not selected.
 * A name that resolves to nothing fails the first pl_process call (the one that sees the header),
 * as does a column in both upper and lower. With duplicate header names, select takes the first
 * one; rename, upper and lower apply to every output column with the name. An unknown or
 * repeated config key, a value of the wrong type, an empty select, or a filter op outside the six
 * fails pl_init.
 *
 * filter keeps the rows for which `field op value` holds. With a number value the field is parsed
 * as a decimal number (pl_parse_number) and both are compared as doubles; a field that is not a
 * number sends the row to the rejects. With a string value the comparison is bytewise
 * (lexicographic by unsigned bytes). The filter sees the field as read, before case mapping.
 *
 * Output (port 0): the header (output names), then each kept row's selected fields, ','
 * separated, one row per '\n'-terminated line. A field is quoted iff it contains ',', '"', CR or
 * LF, or it is a row's only field and empty. Rejects (port 1): a CSV file "line,reason,record",
 * started at the first reject: `line` is the physical line where the record starts, `record`
 * the record's original fields written as one CSV row. Rejected: rows whose field count differs
 * from the header's ("expected 4 fields, got 5"), and rows whose filter field is not a number
 * when the filter value is one ("column 'amount' is not a number: \"abc\"", showing at most 64
 * bytes of the value). Counters: records_in counts data records (not the header, not blank
 * lines); records_out the rows written to port 0; records_rejected those written to port 1.
 */
#include "pipeline_guest.h"

enum { OP_EQ, OP_NE, OP_GT, OP_GE, OP_LT, OP_LE };
enum { CASE_NONE, CASE_UPPER, CASE_LOWER };

static const char *const OP_NAMES[] = {"==", "!=", ">", ">=", "<", "<="};
#define N_OPS (sizeof OP_NAMES / sizeof OP_NAMES[0])

typedef struct str_list {
    pl_str *v;
    uint32_t n;
} str_list;

/* The parsed config. */
static struct {
    bool has_select, has_filter;
    str_list select, upper, lower;
    str_list rename_from, rename_to;
    pl_str filter_column;
    int filter_op;
    bool filter_numeric;
    double filter_number;
    pl_str filter_string;
} cfg;

/* Stream state. */
static struct {
    pl_csv csv;
    bool have_header;
    bool identity;       /* every column, in header order, unchanged */
    bool any_case;       /* some column is case-mapped */
    bool dup_select;     /* some column is output more than once */
    bool rejects_started;
    uint32_t ncols;      /* fields in the header */
    uint32_t nout;       /* output columns */
    uint32_t *src;       /* header index of each output column */
    uint8_t *casing;     /* CASE_* of each output column */
    uint32_t filter_src; /* header index of the filter column */
    pl_buf reason;       /* scratch for reject reasons */
    pl_buf scratch;      /* scratch for encoding rejected records and case-mapping huge fields */
} g;

/* ---------------------------------------------------------------------------------------- */
/* Config                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* "config.<key>: expected <what>", or the JSON syntax error if that is why the type is off. */
static int type_error(const pl_json *j, const char *key, const char *what) {
    if (j->error) return pl_json_fail(j, "config");
    pl_buf m = {0};
    pl_buf_puts(&m, "config.");
    pl_buf_puts(&m, key);
    pl_buf_puts(&m, ": expected ");
    pl_buf_puts(&m, what);
    return pl_fail_buf(&m);
}

static int unknown_key(const char *where, const pl_str *key, const char *known) {
    pl_buf m = {0};
    pl_buf_puts(&m, where);
    pl_buf_puts(&m, ": unknown key '");
    pl_buf_put(&m, key->ptr, key->len);
    pl_buf_puts(&m, "' (known: ");
    pl_buf_puts(&m, known);
    pl_buf_puts(&m, ")");
    return pl_fail_buf(&m);
}

static bool push_str(str_list *l, pl_str s) {
    pl_str *v = realloc(l->v, (l->n + 1) * sizeof *v);
    if (!v) return false;
    l->v = v;
    l->v[l->n++] = s;
    return true;
}

static int read_str_list(pl_json *j, const char *key, str_list *out) {
    static const char what[] = "a list of strings";
    if (pl_json_peek(j) != PL_JSON_ARRAY || pl_json_enter(j)) return type_error(j, key, what);
    int more;
    while ((more = pl_json_next(j, NULL)) > 0) {
        pl_str s;
        if (pl_json_peek(j) != PL_JSON_STRING || pl_json_string(j, &s)) return type_error(j, key, what);
        if (!push_str(out, s)) return pl_fail_str("out of memory");
    }
    return more < 0 ? pl_json_fail(j, "config") : 0;
}

static int read_rename(pl_json *j) {
    static const char what[] = "an object mapping column names to new names";
    if (pl_json_peek(j) != PL_JSON_OBJECT || pl_json_enter(j)) return type_error(j, "rename", what);
    pl_str key;
    int more;
    while ((more = pl_json_next(j, &key)) > 0) {
        pl_str to;
        if (pl_json_peek(j) != PL_JSON_STRING || pl_json_string(j, &to)) {
            pl_str_free(&key);
            return type_error(j, "rename", what);
        }
        if (!push_str(&cfg.rename_from, key) || !push_str(&cfg.rename_to, to))
            return pl_fail_str("out of memory");
    }
    return more < 0 ? pl_json_fail(j, "config") : 0;
}

static int read_filter(pl_json *j) {
    if (pl_json_peek(j) != PL_JSON_OBJECT || pl_json_enter(j))
        return type_error(j, "filter", "an object {\"column\": ..., \"op\": ..., \"value\": ...}");
    bool has_column = false, has_op = false, has_value = false;
    pl_str key;
    int more;
    while ((more = pl_json_next(j, &key)) > 0) {
        int rc = 0;
        if (pl_str_eq(&key, "column", 6) && !has_column) {
            has_column = true;
            if (pl_json_peek(j) != PL_JSON_STRING || pl_json_string(j, &cfg.filter_column))
                rc = type_error(j, "filter.column", "a string");
        } else if (pl_str_eq(&key, "op", 2) && !has_op) {
            has_op = true;
            pl_str op;
            if (pl_json_peek(j) != PL_JSON_STRING || pl_json_string(j, &op)) {
                rc = type_error(j, "filter.op", "one of ==, !=, >, >=, <, <=");
            } else {
                cfg.filter_op = -1;
                for (size_t i = 0; i < N_OPS; i++)
                    if (pl_str_eq(&op, OP_NAMES[i], strlen(OP_NAMES[i]))) cfg.filter_op = (int)i;
                if (cfg.filter_op < 0) {
                    pl_buf m = {0};
                    pl_buf_puts(&m, "config.filter.op: expected one of ==, !=, >, >=, <, <= (got '");
                    pl_buf_put(&m, op.ptr, op.len);
                    pl_buf_puts(&m, "')");
                    rc = pl_fail_buf(&m);
                }
                pl_str_free(&op);
            }
        } else if (pl_str_eq(&key, "value", 5) && !has_value) {
            has_value = true;
            pl_json_type t = pl_json_peek(j);
            if (t == PL_JSON_NUMBER && pl_json_number(j, &cfg.filter_number) == 0)
                cfg.filter_numeric = true;
            else if (!(t == PL_JSON_STRING && pl_json_string(j, &cfg.filter_string) == 0))
                rc = type_error(j, "filter.value", "a number or a string");
        } else if (pl_str_eq(&key, "column", 6) || pl_str_eq(&key, "op", 2) ||
                   pl_str_eq(&key, "value", 5)) {
            pl_buf m = {0};
            pl_buf_puts(&m, "config.filter: duplicate key '");
            pl_buf_put(&m, key.ptr, key.len);
            pl_buf_puts(&m, "'");
            rc = pl_fail_buf(&m);
        } else {
            rc = unknown_key("config.filter", &key, "column, op, value");
        }
        pl_str_free(&key);
        if (rc) return rc;
    }
    if (more < 0) return pl_json_fail(j, "config");
    const char *missing = !has_column ? "column" : !has_op ? "op" : !has_value ? "value" : NULL;
    if (missing) {
        pl_buf m = {0};
        pl_buf_puts(&m, "config.filter: missing '");
        pl_buf_puts(&m, missing);
        pl_buf_puts(&m, "'");
        return pl_fail_buf(&m);
    }
    cfg.has_filter = true;
    return 0;
}

static int read_max_record_bytes(pl_json *j) {
    double v;
    /* Up to 2^32: a record never holds more than the 32-bit address space anyway. */
    if (pl_json_peek(j) != PL_JSON_NUMBER || pl_json_number(j, &v) || !(v >= 1 && v <= 4294967296.0) ||
        v != (double)(uint64_t)v)
        return type_error(j, "max_record_bytes", "a positive integer");
    g.csv.max_record_bytes = (uint64_t)v;
    return 0;
}

static int on_record(void *ctx, const pl_csv_record *rec);

static int pl_guest_init(const uint8_t *config, size_t len) {
    static const char known[] = "select, rename, upper, lower, filter, max_record_bytes";
    pl_csv_init(&g.csv, on_record, NULL);
    pl_json j;
    pl_json_init(&j, config, len);
    /* An empty config is the empty object. */
    pl_json_type t = PL_JSON_OBJECT;
    for (size_t i = 0; i < len && t == PL_JSON_OBJECT; i++)
        if (config[i] != ' ' && config[i] != '\t' && config[i] != '\n' && config[i] != '\r')
            t = PL_JSON_INVALID;
    if (t == PL_JSON_OBJECT) return 0;
    if (pl_json_peek(&j) != PL_JSON_OBJECT || pl_json_enter(&j)) {
        if (j.error) return pl_json_fail(&j, "config");
        return pl_fail_str("config: expected a JSON object");
    }
    unsigned seen = 0; /* bit per known key, to refuse duplicates */
    pl_str key;
    int more;
    while ((more = pl_json_next(&j, &key)) > 0) {
        int rc, bit;
        if (pl_str_eq(&key, "select", 6)) {
            bit = 1;
            rc = read_str_list(&j, "select", &cfg.select);
            if (!rc && cfg.select.n == 0) rc = pl_fail_str("config.select: expected at least one column");
            cfg.has_select = true;
        } else if (pl_str_eq(&key, "rename", 6)) {
            bit = 2;
            rc = read_rename(&j);
        } else if (pl_str_eq(&key, "upper", 5)) {
            bit = 4;
            rc = read_str_list(&j, "upper", &cfg.upper);
        } else if (pl_str_eq(&key, "lower", 5)) {
            bit = 8;
            rc = read_str_list(&j, "lower", &cfg.lower);
        } else if (pl_str_eq(&key, "filter", 6)) {
            bit = 16;
            rc = read_filter(&j);
        } else if (pl_str_eq(&key, "max_record_bytes", 16)) {
            bit = 32;
            rc = read_max_record_bytes(&j);
        } else {
            rc = unknown_key("config", &key, known);
            pl_str_free(&key);
            return rc;
        }
        if (!rc && (seen & (unsigned)bit)) {
            pl_buf m = {0};
            pl_buf_puts(&m, "config: duplicate key '");
            pl_buf_put(&m, key.ptr, key.len);
            pl_buf_puts(&m, "'");
            rc = pl_fail_buf(&m);
        }
        seen |= (unsigned)bit;
        pl_str_free(&key);
        if (rc) return rc;
    }
    if (more < 0 || pl_json_done(&j)) return pl_json_fail(&j, "config");
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Header                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static bool field_is(const pl_field *f, const pl_str *s) {
    return f->len == s->len && memcmp(f->ptr, s->ptr, s->len) == 0;
}

/* Index of the first header field named `name`, or -1. */
static int64_t header_index(const pl_csv_record *h, const pl_str *name) {
    for (uint32_t i = 0; i < h->count; i++)
        if (field_is(&h->fields[i], name)) return i;
    return -1;
}

/* Appends "name, name, ..." (capped around 1000 bytes). */
static void put_names(pl_buf *m, const pl_field *f, uint32_t n, const uint32_t *index) {
    for (uint32_t i = 0; i < n; i++) {
        const pl_field *x = &f[index ? index[i] : i];
        if (i) pl_buf_puts(m, ", ");
        if (m->len > 1000) {
            pl_buf_puts(m, "...");
            return;
        }
        pl_buf_put(m, x->ptr, x->len);
    }
}

/* "<what>: column '<name>' is not in the header (columns: ...)" or, if the header has it but it
 * is not an output column, "... is not selected (selected: ...)". */
static int column_error(const char *what, const pl_str *name, const pl_csv_record *h) {
    pl_buf m = {0};
    pl_buf_puts(&m, what);
    pl_buf_puts(&m, ": column '");
    pl_buf_put(&m, name->ptr, name->len);
    if (header_index(h, name) >= 0) {
        pl_buf_puts(&m, "' is not selected (selected: ");
        put_names(&m, h->fields, g.nout, g.src);
    } else {
        pl_buf_puts(&m, "' is not in the header (columns: ");
        put_names(&m, h->fields, h->count, NULL);
    }
    pl_buf_puts(&m, ")");
    return pl_fail_buf(&m);
}

/* The output name of column i: its new name if renamed, else its header name. */
static pl_field out_name(const pl_csv_record *h, const int32_t *renamed, uint32_t i) {
    if (renamed[i] >= 0) {
        const pl_str *s = &cfg.rename_to.v[renamed[i]];
        return (pl_field){(const uint8_t *)s->ptr, s->len, 0};
    }
    return h->fields[g.src[i]];
}

/* Marks the output columns `name` designates in upper or lower; false if it designates none.
 * Output names take precedence over header names. */
static bool mark_case(const pl_csv_record *h, const int32_t *renamed, const pl_str *name, uint8_t *mark) {
    bool found = false;
    for (uint32_t i = 0; i < g.nout; i++) {
        pl_field f = out_name(h, renamed, i);
        if (field_is(&f, name)) mark[i] = found = true;
    }
    if (found) return true;
    for (uint32_t i = 0; i < g.nout; i++)
        if (field_is(&h->fields[g.src[i]], name)) mark[i] = found = true;
    return found;
}

__attribute__((noinline)) static int on_header(const pl_csv_record *h) {
    /* A record has at least one field and select at least one name: nout >= 1. */
    g.have_header = true;
    g.ncols = h->count;
    g.nout = cfg.has_select ? cfg.select.n : h->count;
    g.src = malloc(g.nout * sizeof *g.src);
    g.casing = calloc(g.nout, 1);
    int32_t *renamed = malloc(g.nout * sizeof *renamed);
    uint8_t *mark = malloc(g.nout);
    if (!g.src || !g.casing || !renamed || !mark) return pl_fail_str("out of memory");
    int rc = 0;

    for (uint32_t i = 0; i < g.nout && !rc; i++) {
        renamed[i] = -1;
        if (!cfg.has_select) {
            g.src[i] = i;
            continue;
        }
        int64_t k = header_index(h, &cfg.select.v[i]);
        if (k < 0) rc = column_error("select", &cfg.select.v[i], h);
        g.src[i] = (uint32_t)k;
    }

    for (uint32_t r = 0; r < cfg.rename_from.n && !rc; r++) {
        bool found = false;
        for (uint32_t i = 0; i < g.nout; i++) {
            if (field_is(&h->fields[g.src[i]], &cfg.rename_from.v[r])) {
                renamed[i] = (int32_t)r;
                found = true;
            }
        }
        if (!found) rc = column_error("rename", &cfg.rename_from.v[r], h);
    }

    const struct {
        const str_list *names;
        const char *what;
        uint8_t casing;
    } cases[] = {{&cfg.upper, "upper", CASE_UPPER}, {&cfg.lower, "lower", CASE_LOWER}};
    for (int c = 0; c < 2 && !rc; c++) {
        for (uint32_t n = 0; n < cases[c].names->n && !rc; n++) {
            const pl_str *name = &cases[c].names->v[n];
            memset(mark, 0, g.nout);
            if (!mark_case(h, renamed, name, mark)) {
                rc = column_error(cases[c].what, name, h);
                break;
            }
            for (uint32_t i = 0; i < g.nout && !rc; i++) {
                if (!mark[i]) continue;
                if (g.casing[i] && g.casing[i] != cases[c].casing) {
                    pl_buf m = {0};
                    pl_buf_puts(&m, "lower: column '");
                    pl_buf_put(&m, name->ptr, name->len);
                    pl_buf_puts(&m, "' is also in upper");
                    rc = pl_fail_buf(&m);
                }
                g.casing[i] = cases[c].casing;
            }
        }
    }

    if (cfg.has_filter && !rc) {
        int64_t k = -1;
        for (uint32_t i = 0; i < g.nout && k < 0; i++) {
            pl_field f = out_name(h, renamed, i);
            if (field_is(&f, &cfg.filter_column)) k = g.src[i];
        }
        if (k < 0) k = header_index(h, &cfg.filter_column);
        if (k < 0) {
            pl_buf m = {0};
            pl_buf_puts(&m, "filter: column '");
            pl_buf_put(&m, cfg.filter_column.ptr, cfg.filter_column.len);
            pl_buf_puts(&m, "' is not in the header (columns: ");
            put_names(&m, h->fields, h->count, NULL);
            pl_buf_puts(&m, ")");
            rc = pl_fail_buf(&m);
        }
        g.filter_src = (uint32_t)k;
    }

    if (!rc) {
        g.identity = g.nout == g.ncols;
        for (uint32_t i = 0; i < g.nout; i++) {
            g.identity &= g.src[i] == i && g.casing[i] == CASE_NONE;
            g.any_case |= g.casing[i] != CASE_NONE;
            for (uint32_t k = 0; k < i; k++) g.dup_select |= g.src[k] == g.src[i];
        }
        pl_out *o = pl_port(0);
        for (uint32_t i = 0; i < g.nout && !rc; i++) {
            pl_field f = out_name(h, renamed, i);
            bool quote = pl_csv_needs_quoting(f.ptr, f.len) || (g.nout == 1 && f.len == 0);
            rc = (i && pl_out_putc(o, ',')) || pl_csv_put_field(o, f.ptr, f.len, quote);
        }
        if (!rc) rc = pl_out_putc(o, '\n');
    }
    free(renamed);
    free(mark);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Rows                                                                                      */
/* ---------------------------------------------------------------------------------------- */

/* Writes the reject row for `rec` with the reason in g.reason. */
__attribute__((noinline)) static int reject(const pl_csv_record *rec) {
    pl_stats.records_rejected++;
    pl_out *o = pl_port(1);
    if (!g.rejects_started) {
        g.rejects_started = true;
        if (pl_out_write(o, "line,reason,record\n", 19)) return -1;
    }
    pl_buf *s = &g.scratch;
    s->len = 0;
    pl_buf_put_u64(s, rec->line);
    pl_buf_putc(s, ',');
    if (s->oom || g.reason.oom) return pl_fail_str("out of memory");
    if (pl_out_write(o, s->data, s->len) ||
        pl_csv_put_field(o, g.reason.data, g.reason.len, pl_csv_needs_quoting(g.reason.data, g.reason.len)) ||
        pl_out_putc(o, ','))
        return -1;
    /* The record as one CSV row (same quoting as the main output), then as one field. */
    s->len = 0;
    for (uint32_t i = 0; i < rec->count; i++) {
        const pl_field *f = &rec->fields[i];
        if (i) pl_buf_putc(s, ',');
        if ((f->flags & PL_FIELD_NEEDS_QUOTING) || (rec->count == 1 && f->len == 0)) {
            if (!pl_buf_reserve(s, 2 * f->len + 2)) break;
            s->len = (size_t)(pl_csv_quote_into(s->data + s->len, f->ptr, f->len) - s->data);
        } else {
            pl_buf_put(s, f->ptr, f->len);
        }
    }
    if (s->oom) return pl_fail_str("out of memory");
    if (pl_csv_put_field(o, s->data, s->len, pl_csv_needs_quoting(s->data, s->len))) return -1;
    return pl_out_putc(o, '\n');
}

/* Reason for a filter field that is not a number; shows at most ~64 bytes of it. */
__attribute__((noinline)) static void not_a_number(const pl_field *f) {
    pl_buf *m = &g.reason;
    m->len = 0;
    pl_buf_puts(m, "column '");
    pl_buf_put(m, cfg.filter_column.ptr, cfg.filter_column.len);
    pl_buf_puts(m, "' is not a number: \"");
    size_t n = f->len;
    if (n > 64) {
        n = 64;
        while (n && (f->ptr[n] & 0xC0) == 0x80) n--; /* cut at a UTF-8 character boundary */
    }
    pl_buf_put(m, f->ptr, n);
    pl_buf_puts(m, n < f->len ? "...\"" : "\"");
}

/* 1: the row passes the filter; 0: it does not; -1: it is not a number (reason in g.reason). */
static int filter_row(const pl_csv_record *rec) {
    const pl_field *f = &rec->fields[g.filter_src];
    int cmp;
    if (cfg.filter_numeric) {
        double v;
        if (!pl_parse_number(f->ptr, f->len, &v)) {
            not_a_number(f);
            return -1;
        }
        cmp = (v > cfg.filter_number) - (v < cfg.filter_number);
    } else {
        size_t n = f->len < cfg.filter_string.len ? f->len : cfg.filter_string.len;
        cmp = memcmp(f->ptr, cfg.filter_string.ptr, n);
        if (!cmp) cmp = (f->len > cfg.filter_string.len) - (f->len < cfg.filter_string.len);
    }
    switch (cfg.filter_op) {
    case OP_EQ: return cmp == 0;
    case OP_NE: return cmp != 0;
    case OP_GT: return cmp > 0;
    case OP_GE: return cmp >= 0;
    case OP_LT: return cmp < 0;
    default: return cmp <= 0;
    }
}

/* Writes a field too large for the output buffer (quoting it as needed, case-mapped). */
__attribute__((noinline)) static int write_big_field(pl_out *o, const pl_field *f, uint8_t casing, bool quote) {
    const uint8_t *p = f->ptr;
    if (casing != CASE_NONE) {
        g.scratch.len = 0;
        pl_buf_put(&g.scratch, f->ptr, f->len);
        if (g.scratch.oom) return pl_fail_str("out of memory");
        (casing == CASE_UPPER ? pl_upper : pl_lower)(g.scratch.data, f->len);
        p = g.scratch.data;
    }
    return pl_csv_put_field(o, p, f->len, quote);
}

/* Writes the row field by field, checking for room before each one (any field size). */
__attribute__((noinline)) static int write_row_checked(const pl_csv_record *rec) {
    pl_out *o = pl_port(0);
    const uint32_t nout = g.nout;
    for (uint32_t i = 0; i < nout; i++) {
        const pl_field *f = &rec->fields[g.src[i]];
        const size_t n = f->len;
        const bool quote = (f->flags & PL_FIELD_NEEDS_QUOTING) || (nout == 1 && n == 0);
        const uint8_t sep = i + 1 < nout ? ',' : '\n';
        /* Room for the field, quoted with every byte doubled at worst, and the separator. */
        const size_t need = quote ? 2 * n + 3 : n + 1;
        if (need > PL_OUT_CAP - o->len) {
            if (need > PL_OUT_CAP) {
                if (write_big_field(o, f, g.casing[i], quote) || pl_out_putc(o, sep)) return -1;
                continue;
            }
            if (pl_out_flush(o)) return -1;
        }
        uint8_t *start = o->buf + o->len, *d = start;
        if (quote) {
            d = pl_csv_quote_into(d, f->ptr, n);
        } else {
            pl_copy(d, f->ptr, n);
            d += n;
        }
        if (g.casing[i] != CASE_NONE) (g.casing[i] == CASE_UPPER ? pl_upper : pl_lower)(start, (size_t)(d - start));
        *d++ = sep;
        o->len = (uint32_t)(d - o->buf);
    }
    return 0;
}

static int write_row(const pl_csv_record *rec) {
    const uint32_t nout = g.nout;
    /* Fast path for a record that lies in the chunk: its fields are disjoint parts of raw_len
     * bytes, so unless a column is selected twice the row needs at most 2 * raw_len + 3 * nout
     * bytes (every byte a doubled quote, two quotes and a separator per field). Reserve that
     * once, then write without checks. */
    if (!rec->raw || g.dup_select || rec->raw_len > (PL_OUT_CAP - 3 * (size_t)nout) / 2)
        return write_row_checked(rec);
    pl_out *o = pl_port(0);
    uint8_t *d = pl_out_reserve(o, 2 * rec->raw_len + 3 * (size_t)nout);
    if (!d) return -1;
    if (g.identity && !rec->flags) {
        /* Nothing to select, quote or map: the record's own bytes are the output. */
        pl_copy_over(d, rec->raw, rec->raw_len);
        d += rec->raw_len;
    } else if (!(rec->flags & PL_FIELD_NEEDS_QUOTING) && !g.any_case && nout > 1) {
        for (uint32_t i = 0; i < nout; i++) {
            const pl_field *f = &rec->fields[g.src[i]];
            pl_copy_over(d, f->ptr, f->len);
            d += f->len;
            *d++ = ',';
        }
        d--;
    } else {
        for (uint32_t i = 0; i < nout; i++) {
            const pl_field *f = &rec->fields[g.src[i]];
            uint8_t *start = d;
            if ((f->flags & PL_FIELD_NEEDS_QUOTING) || (nout == 1 && f->len == 0)) {
                d = pl_csv_quote_into(d, f->ptr, f->len);
            } else {
                pl_copy_over(d, f->ptr, f->len);
                d += f->len;
            }
            if (g.casing[i] != CASE_NONE) pl_case_map_padded(start, (size_t)(d - start), g.casing[i] == CASE_UPPER);
            *d++ = ',';
        }
        d--;
    }
    *d++ = '\n';
    o->len = (uint32_t)(d - o->buf);
    return 0;
}

static int on_row(const pl_csv_record *rec) {
    pl_stats.records_in++;
    if (rec->count != g.ncols) {
        pl_buf *m = &g.reason;
        m->len = 0;
        pl_buf_puts(m, "expected ");
        pl_buf_put_u64(m, g.ncols);
        pl_buf_puts(m, g.ncols == 1 ? " field, got " : " fields, got ");
        pl_buf_put_u64(m, rec->count);
        return reject(rec);
    }
    if (cfg.has_filter) {
        int keep = filter_row(rec);
        if (keep < 0) return reject(rec);
        if (!keep) return 0;
    }
    pl_stats.records_out++;
    return write_row(rec);
}

static int on_record(void *ctx, const pl_csv_record *rec) {
    (void)ctx;
    return g.have_header ? on_row(rec) : on_header(rec);
}

static int pl_guest_process(const uint8_t *data, size_t len) { return pl_csv_feed(&g.csv, data, len); }

static int pl_guest_finish(void) { return pl_csv_finish(&g.csv); }
