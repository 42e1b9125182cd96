/*
 * csv-to-jsonl — turns a CSV stream with a header into JSON Lines, one object per record.
 *
 * Input: CSV read exactly as Python's csv.reader reads it (see pl_csv in pipeline_guest.h); the
 * first record is the header, blank lines are skipped.
 *
 * Config (a JSON object; every key optional):
 *   types             {column: "string" | "int" | "float" | "bool"}  how a column's values are
 *                     written (default "string")
 *   nulls             [column, ...]  columns whose empty values are written as null
 *   max_record_bytes  positive integer, default 67108864 (64 MiB)
 *
 * Output (port 0): per record, {"<header 1>":<value 1>,...} in header order, compact (no
 * spaces), '\n'-terminated. Names and string values are JSON strings escaped as Python's
 * json.dumps(s, ensure_ascii=False) does (see pl_json_put_string). Typed values:
 *   int    the value must be a JSON integer (-?(0|[1-9][0-9]*)): written as is
 *   float  the value must be a JSON number (an int, or with a fraction and/or exponent): as is
 *   bool   true or false in any letter case: written true or false
 * and in a `nulls` column an empty value is null whatever the type. A duplicate header name is
 * written twice (JSON readers keep the last one).
 *
 * Rejects (port 1): "line,reason,record" CSV exactly like csv-map's (pl_reject_csv_record).
 * Rejected: records with the wrong number of fields ("expected 4 fields, got 5"), records with
 * bytes that are not UTF-8 ("invalid UTF-8"), and values that are not of their column's type
 * ("column 'age' is not an int: \"x\"", at most 64 bytes of the value shown). Counters:
 * records_in counts data records; records_out the objects written; records_rejected the rejects.
 *
 * Errors: config mistakes fail pl_init; a column of types or nulls that is not in the header, or
 * a header name that is not UTF-8, fails the run at the header.
 */
#define PL_OUTPUTS "rejects=1"
#include "pipeline_guest.h"
#include "pl_helpers.h"

enum { T_STRING, T_INT, T_FLOAT, T_BOOL };
static const char *const TYPE_NAMES[] = {"string", "int", "float", "bool"};

/* The parsed config. */
static struct {
    pl_strs type_columns; /* with type_of: the declared types */
    uint8_t *type_of;
    pl_strs nulls;
} cfg;

/* Stream state. */
static struct {
    pl_csv csv;
    bool have_header;
    uint32_t ncols;
    pl_buf keys;       /* per column: "name": as JSON text, back to back */
    size_t *key_end;   /* end of each column's key in `keys` */
    pl_buf names;      /* the header names, back to back, for messages */
    size_t *name_end;  /* end of each name in `names` */
    uint8_t *type;     /* T_* per column */
    bool *null_empty;  /* per column: an empty value is null */
    bool any_typed;    /* some column is not a string */
    pl_buf reason;     /* scratch for reject reasons */
    pl_buf record;     /* scratch for a rejected record written as CSV */
    pl_json_stream js; /* scratch for number checks */
} g;

/* ---------------------------------------------------------------------------------------- */
/* Config                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static int read_types(pl_json *j) {
    static const char what[] = "an object mapping column names to \"string\", \"int\", \"float\" or \"bool\"";
    if (pl_json_peek(j) != PL_JSON_OBJECT || pl_json_enter(j)) return pl_config_type_error(j, "types", what);
    pl_str name;
    int more;
    while ((more = pl_json_next(j, &name)) > 0) {
        pl_str type;
        if (pl_json_peek(j) != PL_JSON_STRING || pl_json_string(j, &type)) {
            pl_str_free(&name);
            return pl_config_type_error(j, "types", what);
        }
        int t = -1;
        for (int i = 0; i < 4; i++)
            if (pl_str_eq(&type, TYPE_NAMES[i], strlen(TYPE_NAMES[i]))) t = i;
        if (t < 0) {
            pl_buf m = {0};
            pl_buf_puts(&m, "config.types: type of column '");
            pl_buf_put(&m, name.ptr, name.len);
            pl_buf_puts(&m, "' must be \"string\", \"int\", \"float\" or \"bool\" (got \"");
            pl_buf_put(&m, type.ptr, type.len);
            pl_buf_puts(&m, "\")");
            pl_str_free(&name);
            pl_str_free(&type);
            return pl_fail_buf(&m);
        }
        pl_str_free(&type);
        uint8_t *to = realloc(cfg.type_of, cfg.type_columns.n + 1);
        if (!to || !pl_strs_push(&cfg.type_columns, name)) return pl_fail_str("out of memory");
        cfg.type_of = to;
        cfg.type_of[cfg.type_columns.n - 1] = (uint8_t)t;
    }
    return more < 0 ? pl_json_fail(j, "config") : 0;
}

static int on_batch(void *ctx, const pl_csv_batch *b);

enum { KEY_TYPES, KEY_NULLS, KEY_MAX_RECORD_BYTES };

static int read_config(pl_json *j, int key) {
    switch (key) {
    case KEY_TYPES: return read_types(j);
    case KEY_NULLS: return pl_config_str_list(j, "nulls", &cfg.nulls);
    default: return pl_config_size(j, "max_record_bytes", 4294967296.0, &g.csv.max_record_bytes);
    }
}

static int pl_guest_init(const uint8_t *config, size_t len) {
    static const char *const keys[] = {"types", "nulls", "max_record_bytes", NULL};
    pl_csv_init(&g.csv, on_batch, NULL);
    return pl_config_read(config, len, keys, read_config);
}

/* ---------------------------------------------------------------------------------------- */
/* Header                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* Calls mark(i, arg) for every header column i named `name`; false if there is none. */
static bool mark_column(const pl_csv_record *h, const pl_str *name, void (*mark)(uint32_t, uint32_t), uint32_t arg) {
    bool found = false;
    for (uint32_t i = 0; i < h->count; i++)
        if (pl_str_eq(name, h->fields[i].ptr, h->fields[i].len)) {
            mark(i, arg);
            found = true;
        }
    return found;
}

static void set_type(uint32_t column, uint32_t type) {
    g.type[column] = (uint8_t)type;
    g.any_typed |= type != T_STRING;
}
static void set_null(uint32_t column, uint32_t unused) {
    (void)unused;
    g.null_empty[column] = true;
}

/* Writes each name's JSON key text into g.keys, once. */
static int on_header(const pl_csv_record *h) {
    g.have_header = true;
    g.ncols = h->count;
    g.key_end = calloc(h->count, sizeof *g.key_end);
    g.name_end = calloc(h->count, sizeof *g.name_end);
    g.type = calloc(h->count, 1);
    g.null_empty = calloc(h->count, sizeof *g.null_empty);
    if (!g.key_end || !g.name_end || !g.type || !g.null_empty) return pl_fail_str("out of memory");
    for (uint32_t i = 0; i < cfg.type_columns.n; i++)
        if (!mark_column(h, &cfg.type_columns.v[i], set_type, cfg.type_of[i]))
            return pl_fail_not_in_header("types", &cfg.type_columns.v[i], h);
    for (uint32_t i = 0; i < cfg.nulls.n; i++)
        if (!mark_column(h, &cfg.nulls.v[i], set_null, 0)) return pl_fail_not_in_header("nulls", &cfg.nulls.v[i], h);
    for (uint32_t i = 0; i < h->count; i++) {
        const pl_field *f = &h->fields[i];
        if (!pl_utf8_valid(f->ptr, f->len)) {
            pl_buf m = {0};
            pl_buf_puts(&m, "header: the name of column ");
            pl_buf_put_u64(&m, i + 1);
            pl_buf_puts(&m, " is not valid UTF-8");
            return pl_fail_buf(&m);
        }
        pl_json_buf_string(&g.keys, f->ptr, f->len);
        pl_buf_putc(&g.keys, ':');
        g.key_end[i] = g.keys.len;
        pl_buf_put(&g.names, f->ptr, f->len);
        g.name_end[i] = g.names.len;
    }
    return g.keys.oom || g.names.oom ? pl_fail_str("out of memory") : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Records                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* True if the value is a JSON number (an integer if `integer`), with nothing around it. */
static bool is_number(const uint8_t *p, size_t n, bool integer) {
    if (!n || !(p[0] == '-' || (uint8_t)(p[0] - '0') < 10) || (uint8_t)(p[n - 1] - '0') >= 10) return false;
    if (integer)
        for (size_t i = 0; i < n; i++)
            if (p[i] == '.' || (p[i] | 0x20) == 'e') return false;
    return pl_json_compact(&g.js, p, n, NULL) == 0;
}

/* 1 for "true", 0 for "false" (any letter case), -1 otherwise. */
static int parse_bool(const uint8_t *p, size_t n) {
    static const char t[] = "true", f[] = "false";
    size_t i = 0;
    if (n == 4)
        while (i < 4 && (p[i] | 0x20) == t[i]) i++;
    if (n == 4 && i == 4) return 1;
    if (n == 5)
        while (i < 5 && (p[i] | 0x20) == f[i]) i++;
    return n == 5 && i == 5 ? 0 : -1;
}

/* Checks the row's values against the column types; fills g.reason for the first bad one. */
static bool typed_ok(const pl_csv_batch *b, const pl_csv_row *r) {
    for (uint32_t i = 0; i < r->count; i++) {
        const uint8_t t = g.type[i];
        if (t == T_STRING) continue;
        const pl_field f = pl_csv_value(b, r, i);
        if (f.len == 0 && g.null_empty[i]) continue;
        if (t == T_BOOL ? parse_bool(f.ptr, f.len) >= 0 : is_number(f.ptr, f.len, t == T_INT)) continue;
        pl_buf *m = &g.reason;
        m->len = 0;
        pl_buf_puts(m, "column '");
        const size_t name = i ? g.name_end[i - 1] : 0;
        pl_buf_put(m, g.names.data + name, g.name_end[i] - name);
        pl_buf_puts(m, t == T_INT ? "' is not an int: " : t == T_FLOAT ? "' is not a float: " : "' is not a bool: ");
        pl_reject_put_value(m, f.ptr, f.len);
        return false;
    }
    return true;
}

/* Writes column i's value at d, which has room for 6 * len + 5 bytes; returns the end. */
static uint8_t *value_into(uint8_t *d, const pl_field *f, uint32_t i) {
    if (f->len == 0 && g.null_empty[i]) {
        memcpy(d, "null", 4);
        return d + 4;
    }
    switch (g.type[i]) {
    case T_BOOL:
        /* parse_bool accepted it: true or false. */
        memcpy(d, parse_bool(f->ptr, f->len) ? "true" : "false", 5);
        return d + 4 + (f->len == 5);
    case T_STRING:
        *d++ = '"';
        d = pl_json_escape_into(d, f->ptr, f->len);
        *d++ = '"';
        return d;
    default: pl_copy(d, f->ptr, f->len); return d + f->len;
    }
}

static int write_object(const pl_csv_batch *b, const pl_csv_row *r) {
    pl_out *o = pl_port(0);
    size_t key = 0;
    for (uint32_t i = 0; i < r->count; i++) {
        const pl_field f = pl_csv_value(b, r, i);
        const size_t key_len = g.key_end[i] - key;
        /* Room for the '{' or ',', the key and the value with every byte escaped to six. */
        const size_t need = 1 + key_len + 6 * (uint64_t)f.len + 5;
        if (need <= PL_OUT_CAP) {
            uint8_t *d = pl_out_reserve(o, need);
            if (!d) return -1;
            *d++ = i ? ',' : '{';
            pl_copy(d, g.keys.data + key, key_len);
            o->len = (uint32_t)(value_into(d + key_len, &f, i) - o->buf);
        } else if (pl_out_putc(o, i ? ',' : '{') || pl_out_write(o, g.keys.data + key, key_len) ||
                   (g.type[i] == T_STRING ? pl_json_put_string(o, f.ptr, f.len) : pl_out_write(o, f.ptr, f.len))) {
            return -1; /* a huge string or number */
        }
        key = g.key_end[i];
    }
    return pl_out_write(o, "}\n", 2); /* a record has at least one field */
}

/* True if every field of the row is UTF-8. */
static bool row_utf8(const pl_csv_batch *b, const pl_csv_row *r) {
    /* Fields are the record's bytes without some ASCII quotes: if those are valid UTF-8, so is
     * every field (the converse does not hold: "ab\xc3"\xa9 is the field abé). */
    if (pl_utf8_valid(b->data + r->start, pl_csv_field_end(b, r, r->count - 1) - r->start)) return true;
    for (uint32_t i = 0; i < r->count; i++) {
        const pl_field f = pl_csv_value(b, r, i);
        if (!pl_utf8_valid(f.ptr, f.len)) return false;
    }
    return true;
}

static int on_row(const pl_csv_batch *b, const pl_csv_row *r) {
    pl_stats.records_in++;
    pl_buf *m = &g.reason;
    if (r->count != g.ncols) return pl_reject_field_count(b, r, g.ncols, m, &g.record);
    if (!row_utf8(b, r)) {
        m->len = 0;
        pl_buf_puts(m, "invalid UTF-8");
        return pl_reject_csv_row(b, r, m, &g.record);
    }
    if (g.any_typed && !typed_ok(b, r)) return pl_reject_csv_row(b, r, m, &g.record);
    pl_stats.records_out++;
    return write_object(b, r);
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

static int pl_guest_finish(void) { return pl_csv_finish(&g.csv); }
