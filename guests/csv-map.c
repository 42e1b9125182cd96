/*
 * csv-map — select, rename, trim, default, validate, filter and case-convert the columns of a
 * CSV stream.
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
 *   trim              [name, ...]  strip leading and trailing spaces and tabs
 *   default           {name: string}  the value of an empty field
 *   required          [name, ...]  an empty field sends the row to the rejects
 *   types             {name: "int" | "float" | "date"}  a non-empty field must be one (below)
 *   filter            a condition {"column": name, "op": "==" | "!=" | ">" | ">=" | "<" | "<=",
 *                     "value": number | string}, or {"all": [filter, ...]} (every member holds)
 *                     or {"any": [filter, ...]} (some member holds); groups nest to any depth
 *                     the JSON reader allows and must not be empty
 *   max_record_bytes  positive integer, default 67108864 (64 MiB)
 *
 * Column names in every key but select and rename are looked up among the output names (after
 * rename) first, then among the header names; trim, default, required, types and filter may name
 * a column that is not selected, upper and lower may not. A name that resolves to nothing fails
 * the first pl_process call (the one that sees the header), as do a column in both upper and
 * lower and a column given two defaults. With duplicate header names, select takes the first one;
 * rename, upper and lower apply to every output column with the name. An unknown or repeated
 * config key, a value of the wrong type, an empty select or filter group, a filter op outside the
 * six, or an unknown type fails pl_init.
 *
 * Each row, after the field count check, goes through these steps in order; all but the last see
 * the fields of the header columns (so a column selected twice is treated once):
 *   1. trim     the named fields lose leading and trailing ' ' and '\t';
 *   2. default  a named field that is empty (after trim) takes the default value;
 *   3. required a named field that is still empty rejects the row ("column 'x' is empty");
 *   4. types    a non-empty field must parse as its type, or the row is rejected: int = optional
 *               spaces/tabs, sign, digits, spaces/tabs, within int64 (pl_parse_int64); float =
 *               the decimal numbers of pl_parse_number; date = YYYY-MM-DD, a real date in
 *               0001..9999 (pl_parse_date). Empty fields pass: use required to refuse them.
 *               Reason: "column 'when' is not a date: \"2024-02-30\"" (or "an int", "a float");
 *   5. filter   keeps the rows for which it holds (below);
 *   6. output   the selected fields, case-mapped.
 * Steps 3 and 4 check required columns first, then typed ones, each in config order, and report
 * the first failure. A rejected row is written as read, before trim and default.
 *
 * A filter condition holds when `field op value` does. With a number value the field is parsed as
 * a decimal number (pl_parse_number) and both are compared as doubles; with a string value the
 * comparison is bytewise (lexicographic by unsigned bytes). A field that is not a number where a
 * condition compares it with a number rejects the row wherever the condition sits in the filter,
 * even inside an "any" that another member already satisfies (or an "all" that another member
 * already fails): bad data is never dropped silently and the outcome does not depend on the
 * order of the members. The reason names the first such condition in config order.
 *
 * Output (port 0): the header (output names), then each kept row's selected fields, ','
 * separated, one row per '\n'-terminated line. A field is quoted iff it contains ',', '"', CR or
 * LF, or it is a row's only field and empty. Rejects (port 1): a CSV file "line,reason,record",
 * started at the first reject: `line` is the physical line where the record starts, `record`
 * the record's original fields written as one CSV row. Rejected: rows whose field count differs
 * from the header's ("expected 4 fields, got 5"), rows failing required or types, and rows whose
 * filter field is not a number when the condition's value is one ("column 'amount' is not a
 * number: \"abc\""). Reasons show at most 64 bytes of a value. Counters: records_in counts data
 * records (not the header, not blank lines); records_out the rows written to port 0;
 * records_rejected those written to port 1.
 */
#include "pipeline_guest.h"
#include "pl_helpers.h"

enum { OP_EQ, OP_NE, OP_GT, OP_GE, OP_LT, OP_LE };
enum { CASE_NONE, CASE_UPPER, CASE_LOWER };
enum { NODE_COND, NODE_ALL, NODE_ANY };
/* Column checks (steps 3 and 4), indexing CHECK_NAMES and CHECK_WHAT. */
enum { CHECK_INT, CHECK_FLOAT, CHECK_DATE, CHECK_REQUIRED };

static const char *const OP_NAMES[] = {"==", "!=", ">", ">=", "<", "<="};
#define N_OPS (sizeof OP_NAMES / sizeof OP_NAMES[0])
static const char *const CHECK_NAMES[] = {"int", "float", "date"};
#define N_TYPES (sizeof CHECK_NAMES / sizeof CHECK_NAMES[0])
static const char *const CHECK_WHAT[] = {"is not an int", "is not a float", "is not a date", "is empty"};

/* The outcomes each op accepts, bit cmp + 1 (less, equal, greater): a shift, not a switch. */
static const uint8_t ACCEPT[N_OPS] = {2, 5, 4, 6, 1, 3};

/* A filter node: a condition, or an all/any group of nodes. */
typedef struct node {
    uint8_t kind; /* NODE_* */
    /* NODE_COND */
    uint8_t op;
    bool numeric;
    pl_str column;
    double number;
    pl_str string;
    uint32_t src; /* header index of the column, set at the header */
    /* NODE_ALL, NODE_ANY */
    uint32_t n;
    struct node *members;
} node;

/* A column check: `name` resolved to header index `src` at the header. */
typedef struct check {
    uint32_t src;
    uint8_t kind; /* CHECK_* */
    const pl_str *name;
} check;

/* A default: the value given to header column `src` when empty. */
typedef struct fill {
    uint32_t src;
    pl_field value; /* malloc'd with PL_PAD readable bytes after it, as pl_field requires */
} fill;

/* The parsed config. */
static struct {
    bool has_select, has_filter;
    pl_strs select, upper, lower, trim, required;
    pl_strs rename_from, rename_to;
    pl_strs default_of, default_value;
    pl_strs typed; /* column names of types, with their CHECK_* in type_of */
    uint8_t *type_of;
    node filter;
} cfg;

/* A run of output columns that are consecutive header columns (src, src + 1, ...): in a row
 * without quotes their output is the row's raw bytes from the first one's start to the last
 * one's end, copied at once. */
typedef struct run {
    uint32_t out;    /* first output column */
    uint32_t n;      /* columns */
    uint32_t src;    /* header index of the first */
    uint32_t ncased; /* columns of the run that are case-mapped: */
    uint32_t *cased; /*   their output indexes */
} run;

/* The common shape, chosen at the header: no trim, default, required or types; a filter that is
 * absent or one condition with a number; two or more output columns that are consecutive header
 * columns, each once. fast_rows then writes a row as one copy of its raw bytes (case-mapped in
 * place), without the generic steps' dispatch. */
static struct {
    bool on;
    bool filter;        /* the filter is one numeric condition: */
    uint32_t fsrc;      /*   header index of its column */
    /* The condition on a plain decimal (pl_parse_decimal8: -(neg) mant / 10^frac) without
     * floating point: its double is below the condition's number iff mant < below[neg][frac],
     * above it iff mant >= above[neg][frac] (for neg, compared with minus the number); bit
     * (mant >= below) + (mant >= above) of accept[neg] says whether the row is kept. */
    uint32_t below[2][8], above[2][8];
    uint8_t accept[2];
    uint32_t first;     /* header index of the first output column */
    uint32_t last;      /* of the last */
    uint32_t ncased;
    uint32_t *cased;    /* header indexes of the case-mapped output columns */
    uint8_t *upper;     /* each: upper (1) or lower (0) */
} fast;

/* Stream state. */
static struct {
    pl_csv csv;
    bool have_header;
    bool rows_checked;   /* every row goes through write_row_checked (see on_header) */
    uint32_t ncols;      /* fields in the header */
    uint32_t nout;       /* output columns */
    uint32_t *src;       /* header index of each output column */
    uint8_t *casing;     /* CASE_* of each output column */
    uint32_t nruns;
    run *runs;           /* the output columns as runs, in order */
    size_t fast_raw_max; /* write_row's fast path takes records of at most this many raw bytes */
    size_t fill_room;    /* extra output bytes defaults can add to a row, at most */
    uint32_t ntrim, nfill, ncheck;
    uint32_t *trim;      /* header indexes of the trimmed columns */
    fill *fill;          /* defaults */
    check *check;        /* required columns, then typed ones */
    pl_field *work;      /* a row's fields after trim and default (see trim_and_fill), ncols */
    pl_buf reason;       /* scratch for reject reasons */
    pl_buf scratch;      /* scratch for encoding rejected records and case-mapping huge fields */
} g;

/* A data row on its way through the steps: where its fields are in the batch, and its fields
 * after trim and default when those steps apply (NULL: the batch's fields as they are). Out-of-line
 * functions take its three members (ROW_ARGS): a pointer to it, or a copy, would keep the hot
 * path's row in memory. */
typedef struct row {
    const pl_csv_batch *b;
    const pl_csv_row *r;
    const pl_field *fixed;
} row;
#define ROW_PARAMS const pl_csv_batch *b, const pl_csv_row *r, const pl_field *fixed
#define ROW_ARGS(w) (w)->b, (w)->r, (w)->fixed

/* The value of header column i of the row, for reading (see pl_csv_value). */
static inline pl_field col_value(const row *w, uint32_t i) {
    return w->fixed ? w->fixed[i] : pl_csv_value(w->b, w->r, i);
}

/* The value of header column i of the row, for writing (see pl_csv_field). */
static inline pl_field col_field(const row *w, uint32_t i) {
    return w->fixed ? w->fixed[i] : pl_csv_field(w->b, w->r, i);
}

/* ---------------------------------------------------------------------------------------- */
/* Config                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static int read_types(pl_json *j) {
    pl_strs names = {0};
    static const char what[] = "an object mapping column names to int, float or date";
    int rc = pl_config_str_map(j, "types", what, &cfg.typed, &names);
    if (!rc && !(cfg.type_of = malloc(cfg.typed.n))) rc = pl_fail_str("out of memory");
    for (uint32_t i = 0; i < names.n && !rc; i++) {
        cfg.type_of[i] = N_TYPES;
        for (uint8_t t = 0; t < N_TYPES; t++)
            if (pl_str_eq(&names.v[i], CHECK_NAMES[t], strlen(CHECK_NAMES[t]))) cfg.type_of[i] = t;
        if (cfg.type_of[i] == N_TYPES) {
            pl_buf m = {0};
            pl_buf_puts(&m, "config.types: unknown type '");
            pl_buf_put(&m, names.v[i].ptr, names.v[i].len);
            pl_buf_puts(&m, "' for column '");
            pl_buf_put(&m, cfg.typed.v[i].ptr, cfg.typed.v[i].len);
            pl_buf_puts(&m, "' (known: int, float, date)");
            rc = pl_fail_buf(&m);
        }
    }
    for (uint32_t i = 0; i < names.n; i++) pl_str_free(&names.v[i]);
    free(names.v);
    return rc;
}

/* ---- filter ---- */

/* The keys of a filter node; KEY_* are their bits. */
static const char *const NODE_KEYS[] = {"column", "op", "value", "all", "any"};
enum { KEY_COLUMN = 1, KEY_OP = 2, KEY_VALUE = 4, KEY_ALL = 8, KEY_ANY = 16 };

/* `path` + `suffix` as a C string, valid until `path` changes; `path` itself is left as it was.
 * A filter node's path names it in messages: "filter", "filter.all[2]", "filter.all[2].any[0]". */
static const char *at(pl_buf *path, const char *suffix) {
    const size_t n = path->len;
    pl_buf_puts(path, suffix);
    pl_buf_putc(path, 0);
    path->len = n;
    return path->oom ? "filter" : (const char *)path->data;
}

/* Fails with "config.<path>: <a>'<name>'<b>" (no name part if name is NULL). */
static int node_error(pl_buf *path, const char *a, const pl_str *name, const char *b) {
    pl_buf m = {0};
    pl_buf_puts(&m, "config.");
    pl_buf_puts(&m, at(path, ": "));
    pl_buf_puts(&m, a);
    if (name) {
        pl_buf_putc(&m, '\'');
        pl_buf_put(&m, name->ptr, name->len);
        pl_buf_putc(&m, '\'');
    }
    pl_buf_puts(&m, b);
    return pl_fail_buf(&m);
}

static int read_op(pl_json *j, pl_buf *path, node *c) {
    static const char what[] = "one of ==, !=, >, >=, <, <=";
    pl_str op;
    if (pl_json_peek(j) != PL_JSON_STRING || pl_json_string(j, &op))
        return pl_config_type_error(j, at(path, ".op"), what);
    int found = -1;
    for (size_t i = 0; i < N_OPS; i++)
        if (pl_str_eq(&op, OP_NAMES[i], strlen(OP_NAMES[i]))) found = (int)i;
    c->op = (uint8_t)found;
    int rc = 0;
    if (found < 0) {
        pl_buf m = {0};
        pl_buf_puts(&m, "config.");
        pl_buf_puts(&m, at(path, ".op: expected "));
        pl_buf_puts(&m, what);
        pl_buf_puts(&m, " (got '");
        pl_buf_put(&m, op.ptr, op.len);
        pl_buf_puts(&m, "')");
        rc = pl_fail_buf(&m);
    }
    pl_str_free(&op);
    return rc;
}

static int read_node(pl_json *j, pl_buf *path, node *c);

/* The members of an all/any group; `path` names the group's list ("filter.all"). */
static int read_group(pl_json *j, pl_buf *path, node *c) {
    static const char what[] = "a non-empty list of conditions";
    if (pl_json_peek(j) != PL_JSON_ARRAY || pl_json_enter(j)) return pl_config_type_error(j, at(path, ""), what);
    int more;
    while ((more = pl_json_next(j, NULL)) > 0) {
        node *m = realloc(c->members, (c->n + 1) * sizeof *m);
        if (!m) return pl_fail_str("out of memory");
        c->members = m;
        m[c->n] = (node){0};
        const size_t n = path->len;
        pl_buf_putc(path, '[');
        pl_buf_put_u64(path, c->n);
        pl_buf_putc(path, ']');
        int rc = read_node(j, path, &m[c->n++]);
        path->len = n;
        if (rc) return rc;
    }
    if (more < 0) return pl_json_fail(j, "config");
    return c->n ? 0 : pl_config_type_error(j, at(path, ""), what);
}

static int read_node(pl_json *j, pl_buf *path, node *c) {
    static const char what[] =
        "an object {\"column\": ..., \"op\": ..., \"value\": ...}, {\"all\": [...]} or {\"any\": [...]}";
    if (pl_json_peek(j) != PL_JSON_OBJECT || pl_json_enter(j)) return pl_config_type_error(j, at(path, ""), what);
    unsigned seen = 0;
    pl_str key;
    int more;
    while ((more = pl_json_next(j, &key)) > 0) {
        unsigned bit = 0;
        for (unsigned i = 0; i < sizeof NODE_KEYS / sizeof NODE_KEYS[0]; i++)
            if (pl_str_eq(&key, NODE_KEYS[i], strlen(NODE_KEYS[i]))) bit = 1u << i;
        int rc = 0;
        if (!bit) {
            rc = node_error(path, "unknown key ", &key, " (known: column, op, value, all, any)");
        } else if (seen & bit) {
            rc = node_error(path, "duplicate key ", &key, "");
        } else if (bit == KEY_COLUMN) {
            if (pl_json_peek(j) != PL_JSON_STRING || pl_json_string(j, &c->column))
                rc = pl_config_type_error(j, at(path, ".column"), "a string");
        } else if (bit == KEY_OP) {
            rc = read_op(j, path, c);
        } else if (bit == KEY_VALUE) {
            pl_json_type t = pl_json_peek(j);
            if (t == PL_JSON_NUMBER && pl_json_number(j, &c->number) == 0)
                c->numeric = true;
            else if (!(t == PL_JSON_STRING && pl_json_string(j, &c->string) == 0))
                rc = pl_config_type_error(j, at(path, ".value"), "a number or a string");
        } else {
            const size_t n = path->len;
            pl_buf_putc(path, '.');
            pl_buf_put(path, key.ptr, key.len);
            c->kind = bit == KEY_ALL ? NODE_ALL : NODE_ANY;
            rc = read_group(j, path, c);
            path->len = n;
        }
        seen |= bit;
        pl_str_free(&key);
        if (rc) return rc;
    }
    if (more < 0) return pl_json_fail(j, "config");
    if (seen & (KEY_ALL | KEY_ANY)) {
        if (seen == KEY_ALL || seen == KEY_ANY) return 0;
        return node_error(path, "expected either column, op and value or one of all, any", NULL, "");
    }
    for (unsigned i = 0; i < 3; i++) { /* column, op, value */
        if (seen & 1u << i) continue;
        const pl_str name = {(char *)NODE_KEYS[i], strlen(NODE_KEYS[i])};
        return node_error(path, "missing ", &name, "");
    }
    return 0;
}

static int read_filter(pl_json *j) {
    pl_buf path = {0};
    pl_buf_puts(&path, "filter");
    int rc = read_node(j, &path, &cfg.filter);
    pl_buf_free(&path);
    cfg.has_filter = true;
    return rc;
}

/* The config keys, in the order an unknown key's message lists them. */
enum { K_SELECT, K_RENAME, K_UPPER, K_LOWER, K_TRIM, K_DEFAULT, K_REQUIRED, K_TYPES, K_FILTER, K_MAX_RECORD_BYTES };
static const char *const KEYS[] = {"select",   "rename", "upper",  "lower",            "trim", "default",
                                   "required", "types",  "filter", "max_record_bytes", NULL};

static int read_key(pl_json *j, int k) {
    switch (k) {
    case K_SELECT:
        cfg.has_select = true;
        if (pl_config_str_list(j, "select", &cfg.select)) return -1;
        return cfg.select.n ? 0 : pl_fail_str("config.select: expected at least one column");
    case K_RENAME:
        return pl_config_str_map(j, "rename", "an object mapping column names to new names", &cfg.rename_from,
                                 &cfg.rename_to);
    case K_UPPER: return pl_config_str_list(j, "upper", &cfg.upper);
    case K_LOWER: return pl_config_str_list(j, "lower", &cfg.lower);
    case K_TRIM: return pl_config_str_list(j, "trim", &cfg.trim);
    case K_DEFAULT:
        return pl_config_str_map(j, "default", "an object mapping column names to strings", &cfg.default_of,
                                 &cfg.default_value);
    case K_REQUIRED: return pl_config_str_list(j, "required", &cfg.required);
    case K_TYPES: return read_types(j);
    case K_FILTER: return read_filter(j);
    default: /* Up to 2^32: a record never holds more than the 32-bit address space anyway. */
        return pl_config_size(j, "max_record_bytes", 4294967296.0, &g.csv.max_record_bytes);
    }
}

static int on_batch(void *ctx, const pl_csv_batch *b);

static int pl_guest_init(const uint8_t *config, size_t len) {
    pl_csv_init(&g.csv, on_batch, NULL);
    return pl_config_read(config, len, KEYS, read_key);
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

/* The header index of the column `name` designates in trim, default, required, types or filter:
 * the first output column with that output name, else the first header column with that name. */
static int resolve(const pl_csv_record *h, const int32_t *renamed, const pl_str *name, const char *what,
                   uint32_t *src) {
    for (uint32_t i = 0; i < g.nout; i++) {
        pl_field f = out_name(h, renamed, i);
        if (field_is(&f, name)) {
            *src = g.src[i];
            return 0;
        }
    }
    int64_t k = header_index(h, name);
    if (k < 0) return column_error(what, name, h);
    *src = (uint32_t)k;
    return 0;
}

static int resolve_filter(const pl_csv_record *h, const int32_t *renamed, node *c) {
    if (c->kind == NODE_COND) return resolve(h, renamed, &c->column, "filter", &c->src);
    for (uint32_t i = 0; i < c->n; i++)
        if (resolve_filter(h, renamed, &c->members[i])) return -1;
    return 0;
}

/* Steps 1-4 of each row: trim, default, required and types, resolved against the header.
 * `seen` is scratch of g.ncols bytes. */
static int resolve_row_steps(const pl_csv_record *h, const int32_t *renamed, uint8_t *seen) {
    g.trim = malloc(cfg.trim.n * sizeof *g.trim);
    g.fill = malloc(cfg.default_of.n * sizeof *g.fill);
    g.check = malloc((cfg.required.n + cfg.typed.n) * sizeof *g.check);
    g.work = malloc(g.ncols * sizeof *g.work);
    if (!g.trim || !g.fill || !g.check || !g.work) return pl_fail_str("out of memory");
    uint32_t src;
    memset(seen, 0, g.ncols);
    for (uint32_t i = 0; i < cfg.trim.n; i++) {
        if (resolve(h, renamed, &cfg.trim.v[i], "trim", &src)) return -1;
        if (!seen[src]) g.trim[g.ntrim++] = src; /* trim each column once */
        seen[src] = 1;
    }
    memset(seen, 0, g.ncols);
    for (uint32_t i = 0; i < cfg.default_of.n; i++) {
        const pl_str *name = &cfg.default_of.v[i], *value = &cfg.default_value.v[i];
        if (resolve(h, renamed, name, "default", &src)) return -1;
        if (seen[src]) {
            pl_buf m = {0};
            pl_buf_puts(&m, "default: column '");
            pl_buf_put(&m, name->ptr, name->len);
            pl_buf_puts(&m, "' already has a default");
            return pl_fail_buf(&m);
        }
        seen[src] = 1;
        uint8_t *copy = calloc(value->len + PL_PAD, 1);
        if (!copy) return pl_fail_str("out of memory");
        memcpy(copy, value->ptr, value->len);
        uint32_t flags = pl_csv_needs_quoting(copy, value->len) ? PL_FIELD_NEEDS_QUOTING : 0;
        g.fill[g.nfill++] = (fill){src, {copy, value->len, flags}};
        g.fill_room += 2 * value->len; /* quoted with every byte doubled, at worst */
    }
    for (uint32_t i = 0; i < cfg.required.n; i++) {
        if (resolve(h, renamed, &cfg.required.v[i], "required", &src)) return -1;
        g.check[g.ncheck++] = (check){src, CHECK_REQUIRED, &cfg.required.v[i]};
    }
    for (uint32_t i = 0; i < cfg.typed.n; i++) {
        if (resolve(h, renamed, &cfg.typed.v[i], "types", &src)) return -1;
        g.check[g.ncheck++] = (check){src, cfg.type_of[i], &cfg.typed.v[i]};
    }
    return 0;
}

/* Cuts the output columns into runs (see run). */
static int make_runs(void) {
    g.runs = malloc(g.nout * sizeof *g.runs);
    uint32_t *cased = malloc(g.nout * sizeof *cased);
    if (!g.runs || !cased) return pl_fail_str("out of memory");
    for (uint32_t i = 0; i < g.nout; i++) {
        const run *last = g.nruns ? &g.runs[g.nruns - 1] : NULL;
        if (!last || g.src[i] != last->src + last->n) g.runs[g.nruns++] = (run){i, 0, g.src[i], 0, cased};
        run *u = &g.runs[g.nruns - 1];
        u->n++;
        if (g.casing[i] != CASE_NONE) u->cased[u->ncased++] = i;
        cased += g.casing[i] != CASE_NONE;
    }
    return 0;
}

/* The least mant < 10^8 whose value as pl_parse_decimal8 gives it, (double)mant / 10^frac, is at
 * least `value` (above it if `strict`), or 10^8. That value grows with mant, so this is a
 * bisection; it computes the value exactly as a parse does, so comparing mant with the result
 * is comparing the doubles. */
static uint32_t least_mant(double value, unsigned frac, bool strict) {
    uint32_t lo = 0, hi = 100000000;
    while (lo < hi) {
        const uint32_t mid = lo + (hi - lo) / 2;
        const double v = (double)mid / pl__pow10[frac];
        if (strict ? v > value : v >= value) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

/* Sets up fast (see there) if the config and header have its shape; after make_runs and
 * rows_checked. */
static int choose_fast(void) {
    const node *c = &cfg.filter;
    if (g.rows_checked || g.ntrim || g.nfill || g.ncheck || g.nout < 2 || g.nruns != 1) return 0;
    if (cfg.has_filter && !(c->kind == NODE_COND && c->numeric)) return 0;
    const run *u = &g.runs[0];
    fast.cased = malloc(u->ncased * sizeof *fast.cased);
    fast.upper = malloc(u->ncased);
    if (u->ncased && (!fast.cased || !fast.upper)) return pl_fail_str("out of memory");
    for (uint32_t i = 0; i < u->ncased; i++) {
        fast.cased[i] = g.src[u->cased[i]];
        fast.upper[i] = g.casing[u->cased[i]] == CASE_UPPER;
    }
    fast.ncased = u->ncased;
    fast.first = u->src;
    fast.last = u->src + u->n - 1;
    fast.filter = cfg.has_filter;
    if (fast.filter) {
        fast.fsrc = c->src;
        for (int neg = 0; neg < 2; neg++) {
            for (unsigned frac = 0; frac < 8; frac++) {
                fast.below[neg][frac] = least_mant(neg ? -c->number : c->number, frac, false);
                fast.above[neg][frac] = least_mant(neg ? -c->number : c->number, frac, true);
            }
        }
        /* ACCEPT's bits are (less, equal, greater); -x < -v iff x > v: mirrored for neg. */
        const uint8_t a = ACCEPT[c->op];
        fast.accept[0] = a;
        fast.accept[1] = (uint8_t)((a & 2) | (a >> 2 & 1) | (a << 2 & 4));
    }
    fast.on = true;
    return 0;
}

__attribute__((noinline)) static int on_header(const pl_csv_record *h) {
    /* A record has at least one field and select at least one name: nout >= 1. */
    g.have_header = true;
    g.ncols = h->count;
    g.nout = cfg.has_select ? cfg.select.n : h->count;
    g.src = malloc(g.nout * sizeof *g.src);
    g.casing = calloc(g.nout, 1);
    int32_t *renamed = malloc(g.nout * sizeof *renamed);
    uint8_t *mark = malloc(g.nout), *mark_cols = malloc(g.ncols);
    if (!g.src || !g.casing || !renamed || !mark || !mark_cols) return pl_fail_str("out of memory");
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
        const pl_strs *names;
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

    if (cfg.has_filter && !rc) rc = resolve_filter(h, renamed, &cfg.filter);
    if (!rc) rc = resolve_row_steps(h, renamed, mark_cols);

    if (!rc) rc = make_runs();
    if (!rc) {
        bool dup_select = false;
        for (uint32_t i = 0; i < g.nout; i++)
            for (uint32_t k = 0; k < i; k++) dup_select |= g.src[k] == g.src[i];
        /* write_row's fast path bounds a row's output by its raw size (see there); that bound
         * needs each column output once and room to spare in the output buffer. */
        const size_t fixed = 3 * (size_t)g.nout + g.fill_room;
        g.rows_checked = dup_select || fixed > PL_OUT_CAP / 2;
        g.fast_raw_max = g.rows_checked ? 0 : (PL_OUT_CAP - fixed) / 2;
        pl_out *o = pl_port(0);
        for (uint32_t i = 0; i < g.nout && !rc; i++) {
            pl_field f = out_name(h, renamed, i);
            bool quote = pl_csv_needs_quoting(f.ptr, f.len) || (g.nout == 1 && f.len == 0);
            rc = (i && pl_out_putc(o, ',')) || pl_csv_put_field(o, f.ptr, f.len, quote);
        }
        if (!rc) rc = pl_out_putc(o, '\n');
    }
    if (!rc) rc = choose_fast();
    free(renamed);
    free(mark);
    free(mark_cols);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Rows                                                                                      */
/* ---------------------------------------------------------------------------------------- */

/* Writes the reject row for the row (its original fields) with the reason in g.reason. */
__attribute__((noinline)) static int reject(const pl_csv_batch *b, const pl_csv_row *r) {
    return pl_reject_csv_row(b, r, &g.reason, &g.scratch);
}

/* Sets the reject reason "column '<name>' <what>", then ": \"<value>\"" if `value` is not NULL,
 * showing at most ~64 bytes of the len bytes at value. */
__attribute__((noinline)) static void bad_field(const pl_str *name, const char *what, const uint8_t *value, size_t len) {
    pl_buf *m = &g.reason;
    m->len = 0;
    pl_buf_puts(m, "column '");
    pl_buf_put(m, name->ptr, name->len);
    pl_buf_puts(m, "' ");
    pl_buf_puts(m, what);
    if (!value) return;
    pl_buf_puts(m, ": ");
    pl_reject_put_value(m, value, len);
}

/* Steps 1 and 2: the row's fields trimmed and defaulted, in g.work (the batch is unchanged, for
 * the rejects). Trimming drops only spaces and tabs, so a field's flags stay right. Kept out of
 * line (as check_row) so that rows of configs without these steps stay fast. */
__attribute__((noinline)) static const pl_field *trim_and_fill(const pl_csv_batch *b, const pl_csv_row *r) {
    pl_field *f = g.work;
    for (uint32_t i = 0; i < g.ncols; i++) f[i] = pl_csv_field(b, r, i);
    for (uint32_t i = 0; i < g.ntrim; i++) {
        pl_field *x = &f[g.trim[i]];
        while (x->len && (x->ptr[0] == ' ' || x->ptr[0] == '\t')) {
            x->ptr++;
            x->len--;
        }
        while (x->len && (x->ptr[x->len - 1] == ' ' || x->ptr[x->len - 1] == '\t')) x->len--;
    }
    for (uint32_t i = 0; i < g.nfill; i++) {
        pl_field *x = &f[g.fill[i].src];
        if (!x->len) *x = g.fill[i].value;
    }
    return f;
}

/* Steps 3 and 4: 0 if the row passes required and types, else -1 (reason in g.reason). */
__attribute__((noinline)) static int check_row(ROW_PARAMS) {
    const row w = {b, r, fixed};
    for (uint32_t i = 0; i < g.ncheck; i++) {
        const check *c = &g.check[i];
        const pl_field f = col_value(&w, c->src);
        double number;
        int64_t integer;
        pl_date date;
        bool ok;
        if (!f.len) ok = c->kind != CHECK_REQUIRED; /* types let empty fields pass */
        else if (c->kind == CHECK_INT) ok = pl_parse_int64(f.ptr, f.len, &integer);
        else if (c->kind == CHECK_FLOAT) ok = pl_parse_number_padded(f.ptr, f.len, &number);
        else if (c->kind == CHECK_DATE) ok = pl_parse_date(f.ptr, f.len, &date);
        else ok = true; /* required, and not empty */
        if (!ok) {
            bad_field(c->name, CHECK_WHAT[c->kind], c->kind == CHECK_REQUIRED ? NULL : f.ptr, f.len);
            return -1;
        }
    }
    return 0;
}

/* 1: the condition holds; 0: it does not; -1: its field is not a number (reason in g.reason). */
__attribute__((always_inline)) static inline int test_cond(const node *c, const row *w) {
    const pl_field f = col_value(w, c->src);
    int cmp;
    if (c->numeric) {
        double v;
        if (!pl_parse_number_padded(f.ptr, f.len, &v)) {
            bad_field(&c->column, "is not a number", f.ptr, f.len);
            return -1;
        }
        cmp = (v > c->number) - (v < c->number);
    } else {
        size_t n = f.len < c->string.len ? f.len : c->string.len;
        cmp = memcmp(f.ptr, c->string.ptr, n);
        cmp = cmp ? (cmp > 0) - (cmp < 0) : (f.len > c->string.len) - (f.len < c->string.len);
    }
    return ACCEPT[c->op] >> (cmp + 1) & 1;
}

static int filter_group(const node *c, ROW_PARAMS);

/* 1: the row passes the filter node; 0: it does not; -1: reject it (reason in g.reason). */
__attribute__((always_inline)) static inline int filter_row(const node *c, const row *w) {
    /* A condition is tested here so that a single-condition filter inlines into on_row. */
    return c->kind == NODE_COND ? test_cond(c, w) : filter_group(c, ROW_ARGS(w));
}

__attribute__((noinline)) static int filter_group(const node *c, ROW_PARAMS) {
    const row w = {b, r, fixed};
    /* No short cut once the outcome is known: a non-number in any condition rejects the row. */
    const bool all = c->kind == NODE_ALL;
    int keep = all;
    for (uint32_t i = 0; i < c->n; i++) {
        const int k = filter_row(&c->members[i], &w);
        if (k < 0) return -1;
        keep = all ? keep & k : keep | k;
    }
    return keep;
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
__attribute__((noinline)) static int write_row_checked(ROW_PARAMS) {
    const row w = {b, r, fixed};
    pl_out *o = pl_port(0);
    const uint32_t nout = g.nout;
    for (uint32_t i = 0; i < nout; i++) {
        const pl_field f = col_field(&w, g.src[i]);
        const size_t n = f.len;
        const bool quote = (f.flags & PL_FIELD_NEEDS_QUOTING) || (nout == 1 && n == 0);
        const uint8_t sep = i + 1 < nout ? ',' : '\n';
        /* Room for the field, quoted with every byte doubled at worst, and the separator. */
        const size_t need = quote ? 2 * n + 3 : n + 1;
        if (need > PL_OUT_CAP - o->len) {
            if (need > PL_OUT_CAP) {
                if (write_big_field(o, &f, g.casing[i], quote) || pl_out_putc(o, sep)) return -1;
                continue;
            }
            if (pl_out_flush(o)) return -1;
        }
        uint8_t *start = o->buf + o->len, *d = start;
        if (quote) {
            d = pl_csv_quote_into(d, f.ptr, n);
        } else {
            pl_copy(d, f.ptr, n);
            d += n;
        }
        if (g.casing[i] != CASE_NONE) (g.casing[i] == CASE_UPPER ? pl_upper : pl_lower)(start, (size_t)(d - start));
        *d++ = sep;
        o->len = (uint32_t)(d - o->buf);
    }
    return 0;
}

/* Writes output columns [from, to) at d, each followed by ','; returns the end. Room enough. */
__attribute__((noinline)) static uint8_t *write_fields(uint8_t *d, ROW_PARAMS, uint32_t from, uint32_t to) {
    const row w = {b, r, fixed};
    for (uint32_t i = from; i < to; i++) {
        const pl_field f = col_field(&w, g.src[i]);
        uint8_t *start = d;
        if ((f.flags & PL_FIELD_NEEDS_QUOTING) || (g.nout == 1 && f.len == 0)) {
            d = pl_csv_quote_into_padded(d, f.ptr, f.len);
        } else {
            pl_copy_over(d, f.ptr, f.len);
            d += f.len;
        }
        if (g.casing[i] != CASE_NONE) pl_case_map_padded(start, (size_t)(d - start), g.casing[i] == CASE_UPPER);
        *d++ = ',';
    }
    return d;
}

/* Writes the first k (>= 1) columns of run u at d as the row's raw bytes, case-mapped, then ',';
 * returns the end. Only for columns without a '"': then no field needs quoting (a ',' or line
 * break would have ended it), so the output is the raw bytes, separators included. */
__attribute__((always_inline)) static inline uint8_t *copy_raw(uint8_t *d, const row *w, const run *u, uint32_t k) {
    const pl_csv_batch *b = w->b;
    const pl_csv_row *r = w->r;
    const uint32_t begin = pl_csv_field_begin(b, r, u->src), end = pl_csv_field_end(b, r, u->src + k - 1);
    pl_copy_over(d, b->data + begin, end - begin);
    for (uint32_t c = 0; c < u->ncased && u->cased[c] < u->out + k; c++) {
        const uint32_t i = u->cased[c], src = g.src[i];
        const uint32_t fb = pl_csv_field_begin(b, r, src), fe = pl_csv_field_end(b, r, src);
        pl_case_map_padded(d + (fb - begin), fe - fb, g.casing[i] == CASE_UPPER);
    }
    d += end - begin;
    *d++ = ',';
    return d;
}

/* write_run for a run whose raw bytes hold a '"' (or a lone output column, which is "" when
 * empty): the columns before the quote's go raw, the others field by field. */
__attribute__((noinline)) static uint8_t *write_run_quoted(uint8_t *d, ROW_PARAMS, const run *u) {
    const row w = {b, r, fixed};
    uint32_t k = 0;
    while (g.nout > 1 && k < u->n && pl_csv_field_end(b, r, u->src + k) <= r->quote) k++;
    if (k) d = copy_raw(d, &w, u, k);
    return write_fields(d, ROW_ARGS(&w), u->out + k, u->out + u->n);
}

/* Writes the run's columns at d, each followed by ','; returns the end. Room enough. */
static uint8_t *write_run(uint8_t *d, const row *w, const run *u) {
    if (w->r->quote < pl_csv_field_end(w->b, w->r, u->src + u->n - 1) || g.nout == 1)
        return write_run_quoted(d, ROW_ARGS(w), u);
    return copy_raw(d, w, u, u->n);
}

static int write_row(const row *w) {
    /* Fast path for a row of at most fast_raw_max raw bytes: its fields are disjoint parts of
     * them (or defaults), so unless a column is selected twice the row needs at most
     * 2 * raw + 3 * nout + fill_room bytes (every byte a doubled quote, two quotes and a
     * separator per field). Reserve that once, then write without checks. */
    const pl_csv_row *r = w->r;
    const size_t raw = pl_csv_field_end(w->b, r, r->count - 1) - r->start;
    if (g.rows_checked || raw > g.fast_raw_max) return write_row_checked(ROW_ARGS(w));
    pl_out *o = pl_port(0);
    uint8_t *d = pl_out_reserve(o, 2 * raw + 3 * (size_t)g.nout + g.fill_room);
    if (!d) return -1;
    if (w->fixed) {
        d = write_fields(d, ROW_ARGS(w), 0, g.nout);
    } else {
        for (uint32_t k = 0; k < g.nruns; k++) d = write_run(d, w, &g.runs[k]);
    }
    d[-1] = '\n';
    o->len = (uint32_t)(d - o->buf);
    return 0;
}

static int on_row(const pl_csv_batch *b, const pl_csv_row *r) {
    pl_stats.records_in++;
    if (r->count != g.ncols) return pl_reject_field_count(b, r, g.ncols, &g.reason, &g.scratch);
    const row w = {b, r, g.ntrim || g.nfill ? trim_and_fill(b, r) : NULL};
    if (g.ncheck && check_row(ROW_ARGS(&w))) return reject(b, r);
    if (cfg.has_filter) {
        int keep = filter_row(&cfg.filter, &w);
        if (keep < 0) return reject(b, r);
        if (!keep) return 0;
    }
    pl_stats.records_out++;
    return write_row(&w);
}

/* True if the raw field [s, s + n), which starts with '"', is also its output: a value that needs
 * quoting (pl_csv_field's PL_FIELD_NEEDS_QUOTING), quoted as pl_csv_quote_into quotes it (every
 * '"' doubled, nothing after the closing quote). Then fast_rows can copy it raw. */
__attribute__((noinline)) static bool raw_is_output(const uint8_t *s, size_t n) {
    if (n < 2 || s[n - 1] != '"') return false;
#ifdef __wasm_simd128__
    if (n - 2 <= 16) { /* the usual short value, in one vector (the field has PL_PAD bytes after it) */
        const v128_t v = wasm_v128_load(s + 1);
        const uint32_t within = (1u << (n - 2)) - 1;
        const v128_t sep = wasm_v128_or(wasm_i8x16_eq(v, wasm_i8x16_splat(',')),
                                        wasm_v128_or(wasm_i8x16_eq(v, wasm_i8x16_splat('\r')), wasm_i8x16_eq(v, wasm_i8x16_splat('\n'))));
        uint32_t q = (uint32_t)wasm_i8x16_bitmask(wasm_i8x16_eq(v, wasm_i8x16_splat('"'))) & within;
        if (!q) return ((uint32_t)wasm_i8x16_bitmask(sep) & within) != 0;
        while (q) { /* '""' pairs, from the left */
            const uint32_t pair = 3u << __builtin_ctz(q);
            if ((q & pair) != pair) return false;
            q &= ~pair;
        }
        return true;
    }
#endif
    const uint8_t *p = s + 1, *const end = s + n - 1, *q;
    bool quotes = false;
    for (; (q = pl_memchr(p, '"', (size_t)(end - p))); p = q + 2) {
        if (q + 1 == end || q[1] != '"') return false; /* a closing quote before the last byte */
        quotes = true;
    }
    return quotes || pl__csv_special(s + 1, n - 2);
}

/* True if the raw bytes of the output columns of row r, which hold its first '"', are also their
 * output (see raw_is_output): fields before the quote are; a quoted one must be written back as
 * it is, and one not quoted must not hold a '"' (x"y is written "x""y"). */
__attribute__((noinline)) static bool raw_quoted_ok(const pl_csv_batch *b, const pl_csv_row *r) {
    /* From the last column back to the one holding the quote (the row's first): the others come
     * before it. */
    for (uint32_t i = fast.last + 1; i-- > fast.first && pl_csv_field_end(b, r, i) > r->quote;) {
        const uint32_t begin = pl_csv_field_begin(b, r, i), end = pl_csv_field_end(b, r, i);
        const uint8_t *s = b->data + begin;
        if (begin < end && *s == '"' ? !raw_is_output(s, end - begin) : pl_csv_has_quote(s, end - begin)) return false;
    }
    return true;
}

/* Case-maps fast.cased[c] of a row whose raw bytes from offset `begin` on were copied to d; e are
 * the row's field ends, `start` its first byte. */
__attribute__((always_inline)) static inline void case_map_col(uint8_t *d, uint32_t begin, const uint32_t *e, uint32_t start,
                                                               uint32_t c) {
    const uint32_t i = fast.cased[c], fb = i ? e[i - 1] + 1 : start;
    pl_case_map_padded(d + (fb - begin), e[i] - fb, fast.upper[c]);
}

/* Rows k, k + 1, ... of the batch in the common shape (see fast): each kept row is its output
 * columns' raw bytes, copied at once and case-mapped in place. Returns the index of the first
 * row it leaves to on_row (b->count if none): a wrong field count, a filter field that is quoted
 * or not a plain decimal of pl_parse_decimal8 (on_row parses it in full, and rejects it if it is
 * no number), raw bytes that are not their output, or a row the output buffer has no room for
 * (on_row flushes). */
__attribute__((noinline)) static uint32_t fast_rows(const pl_csv_batch *b, uint32_t k) {
    const uint8_t *const data = b->data;
    const uint32_t *const ends = b->ends;
    /* Locals, not fast's fields: the compiler must assume the output writes change those. */
    const uint32_t ncols = g.ncols, first = fast.first, last = fast.last, fsrc = fast.fsrc, ncased = fast.ncased;
    const bool filter = fast.filter;
    pl_out *const o = pl_port(0);
    const uint32_t from = k;
    uint32_t len = o->len, out = 0;
    for (; k < b->count; k++) {
        const pl_csv_row *r = &b->rows[k];
        if (r->count != ncols) break;
        const uint32_t *e = ends + r->first;
        if (filter) {
            const uint32_t fb = fsrc ? e[fsrc - 1] + 1 : r->start, fe = e[fsrc];
            uint64_t mant;
            unsigned frac;
            bool neg;
            if ((r->quote < fe && data[fb] == '"') || !pl_parse_decimal8(data + fb, fe - fb, &mant, &frac, &neg)) break;
            const unsigned at = (mant >= fast.below[neg][frac]) + (mant >= fast.above[neg][frac]);
            if (!(fast.accept[neg] >> at & 1)) continue;
        }
        const uint32_t begin = first ? e[first - 1] + 1 : r->start, end = e[last], n = end - begin;
        if ((r->quote < end && !raw_quoted_ok(b, r)) || n >= PL_OUT_CAP - len) break;
        uint8_t *d = o->buf + len;
        pl_copy_over(d, data + begin, n);
        if (ncased) { /* the first one outside the loop: a loop iteration costs an interruption check */
            case_map_col(d, begin, e, r->start, 0);
            for (uint32_t c = 1; c < ncased; c++) case_map_col(d, begin, e, r->start, c);
        }
        d[n] = '\n';
        len += n + 1;
        out++;
    }
    /* pl_out_reserve's bookkeeping: the bytes written past len lie within PL_OUT_SLACK. */
    o->len = len;
    if (len > o->used) o->used = len;
    pl_stats.records_in += k - from; /* every row before k was read here */
    pl_stats.records_out += out;
    return k;
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
    for (; k < b->count; k++) {
        if (fast.on && (k = fast_rows(b, k)) == b->count) break;
        if (on_row(b, &b->rows[k])) return -1;
    }
    return 0;
}

static int pl_guest_process(const uint8_t *data, size_t len) { return pl_csv_feed(&g.csv, data, len); }

static int pl_guest_finish(void) { return pl_csv_finish(&g.csv); }
