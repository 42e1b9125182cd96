/*
 * jsonl-map — filters and projects a JSON Lines stream.
 *
 * Input: lines (pl_lines: '\n' ends a line, a '\r' before it is dropped, a leading UTF-8 BOM
 * is dropped). A blank line (nothing but JSON whitespace) is skipped; every other line must be
 * one JSON object (RFC 8259, UTF-8).
 *
 * Config (a JSON object; every key optional):
 *   filter          a condition; the lines for which it holds are kept. A condition is
 *                     {"field": path, "op": "==" | "!=" | ">" | ">=" | "<" | "<=", "value": v}
 *                     {"field": path, "op": "exists"}
 *                     {"all": [condition, ...]}    every one holds (true when empty)
 *                     {"any": [condition, ...]}    at least one holds (false when empty)
 *   select          [path, ...]  output only these fields, in this order
 *   rename          {key: new key}  with select, keys are select's paths; without, top-level names
 *   max_line_bytes  positive integer, default 67108864 (64 MiB)
 *
 * A path is member names joined by '.' ("a.b" is member b of the object in member a); with
 * duplicate names the last one counts, as in Python's json module. `value` is a number, a string,
 * true, false or null (the ordering ops take a number or a string). A comparison holds only if
 * the field exists and has the value's type: numbers compare as doubles, strings (escapes
 * decoded) bytewise, true/false/null by equality. "!=" is exactly "not ==", so it holds for a
 * missing field or one of another type. "exists" holds for any value, null included.
 *
 * Output (port 0): one compact object per kept line ('\n'-terminated, no insignificant
 * whitespace; every value keeps its original text, numbers and string escapes included).
 * Without select: the line's object with the renamed top-level members renamed. With select: an
 * object whose keys are the paths as given (or their new names) mapped to the values they
 * designate, in select's order; a path the line does not have is left out.
 *
 * Rejects (port 1): "line,reason,record" CSV (pl_reject): `line` is the 1-based line number and
 * `record` the line as read. Rejected: a line that is not valid JSON ("invalid JSON at byte 7:
 * expected ':'", byte offsets within the line) and a valid one that is not an object ("not a JSON
 * object"). Counters: records_in counts non-blank lines, records_out the objects written.
 */
#define PL_OUTPUTS "rejects=1"
#include "pipeline_guest.h"

enum { OP_EQ, OP_NE, OP_GT, OP_GE, OP_LT, OP_LE, OP_EXISTS };
static const char *const OP_NAMES[] = {"==", "!=", ">", ">=", "<", "<=", "exists"};
#define N_OPS (sizeof OP_NAMES / sizeof OP_NAMES[0])

enum { COND_COMPARE, COND_ALL, COND_ANY };

/* A filter condition. */
typedef struct cond {
    uint8_t kind; /* COND_* */
    uint8_t op;   /* OP_*, for COND_COMPARE */
    pl_json_type type; /* the value's type */
    pl_str field;
    uint32_t path; /* index of field in g.paths */
    double number;
    pl_str string;
    bool boolean;
    struct cond *parts; /* for COND_ALL and COND_ANY */
    uint32_t nparts;
} cond;

/* A span of compact JSON text. */
typedef struct span {
    const uint8_t *p, *end;
} span;

/* The parsed config. */
static struct {
    bool has_filter;
    cond filter;
    pl_strs select;
    pl_strs rename_from, rename_to;
} cfg;

/* Stream state. */
static struct {
    pl_lines lines;
    pl_json_stream js;
    pl_buf compact;   /* the line being handled, compact */
    pl_buf reason;    /* scratch for reject reasons */
    pl_buf keys;      /* with select: per path its output key, "key":, back to back */
    size_t *key_end;  /* end of each path's key in `keys` */
    /* Every path the config names (filter fields, select), once; per line, the value each leads
     * to, found in one pass over the object's members (resolve). */
    pl_strs paths;
    size_t *first_len;     /* length of each path's first name */
    span *found;           /* each path's value in the line; .p NULL if it has none */
    /* The fast path's state per path: its names as (start, length) pairs in the path, how many
     * of them the open objects matched so far (`level`: the path is looked for in the object at
     * depth level + 1), and where the value of a last name that matched starts. */
    uint32_t **names;
    uint32_t *nnames;
    uint32_t *level;
    const uint8_t **pending;
    uint64_t name_hashes; /* bit name_hash() of every name of every path */
    bool spaced;          /* the line has whitespace inside its object */
    uint32_t *select_path; /* index in paths of each select entry */
} g;

/* ---------------------------------------------------------------------------------------- */
/* Config                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* The index of `path` in g.paths, added if new; UINT32_MAX if memory ran out. */
static uint32_t add_path(const pl_str *path) {
    int64_t i = pl_strs_find(&g.paths, path->ptr, path->len);
    if (i >= 0) return (uint32_t)i;
    pl_str copy = {malloc(path->len + 1), path->len};
    size_t *first = realloc(g.first_len, (g.paths.n + 1) * sizeof *first);
    if (first) g.first_len = first;
    if (!copy.ptr || !first || !pl_strs_push(&g.paths, copy)) return UINT32_MAX;
    memcpy(copy.ptr, path->ptr, path->len + 1);
    const char *dot = memchr(path->ptr, '.', path->len);
    g.first_len[g.paths.n - 1] = dot ? (size_t)(dot - path->ptr) : path->len;
    return g.paths.n - 1;
}

/* Fails with "config.filter: <what>"; returns -1. */
static int filter_error(const char *what) {
    pl_buf m = {0};
    pl_buf_puts(&m, "config.filter: ");
    pl_buf_puts(&m, what);
    return pl_fail_buf(&m);
}

static int read_cond(pl_json *j, cond *c);

/* Reads the list of conditions of "all" or "any". */
static int read_parts(pl_json *j, cond *c, const char *key) {
    if (pl_json_peek(j) != PL_JSON_ARRAY || pl_json_enter(j))
        return pl_config_type_error(j, key, "a list of conditions");
    int more;
    while ((more = pl_json_next(j, NULL)) > 0) {
        cond *parts = realloc(c->parts, (c->nparts + 1) * sizeof *parts);
        if (!parts) return pl_fail_str("out of memory");
        c->parts = parts;
        c->parts[c->nparts] = (cond){0};
        if (read_cond(j, &c->parts[c->nparts++])) return -1;
    }
    return more < 0 ? pl_json_fail(j, "config") : 0;
}

static int read_op(pl_json *j, cond *c) {
    static const char what[] = "one of ==, !=, >, >=, <, <=, exists";
    pl_str op;
    if (pl_json_peek(j) != PL_JSON_STRING || pl_json_string(j, &op)) return pl_config_type_error(j, "filter.op", what);
    int found = -1;
    for (size_t i = 0; i < N_OPS; i++)
        if (pl_str_eq(&op, OP_NAMES[i], strlen(OP_NAMES[i]))) found = (int)i;
    int rc = 0;
    if (found < 0) {
        pl_buf m = {0};
        pl_buf_puts(&m, "config.filter.op: expected ");
        pl_buf_puts(&m, what);
        pl_buf_puts(&m, " (got '");
        pl_buf_put(&m, op.ptr, op.len);
        pl_buf_puts(&m, "')");
        rc = pl_fail_buf(&m);
    }
    c->op = (uint8_t)found;
    pl_str_free(&op);
    return rc;
}

static int read_value(pl_json *j, cond *c) {
    c->type = pl_json_peek(j);
    switch (c->type) {
    case PL_JSON_NUMBER: return pl_json_number(j, &c->number) ? pl_json_fail(j, "config") : 0;
    case PL_JSON_STRING: return pl_json_string(j, &c->string) ? pl_json_fail(j, "config") : 0;
    case PL_JSON_BOOL: return pl_json_bool(j, &c->boolean) ? pl_json_fail(j, "config") : 0;
    case PL_JSON_NULL: return pl_json_null(j) ? pl_json_fail(j, "config") : 0;
    default: return pl_config_type_error(j, "filter.value", "a number, a string, true, false or null");
    }
}

/* Reads one condition object. */
static int read_cond(pl_json *j, cond *c) {
    static const char known[] = "field, op, value, all, any";
    if (pl_json_peek(j) != PL_JSON_OBJECT || pl_json_enter(j))
        return pl_config_type_error(j, "filter",
                                    "a condition object ({\"field\", \"op\", \"value\"}, {\"all\"} or {\"any\"})");
    unsigned seen = 0;
    pl_str key;
    int more;
    while ((more = pl_json_next(j, &key)) > 0) {
        unsigned bit;
        int rc;
        if (pl_str_eq(&key, "field", 5)) {
            bit = 1;
            rc = pl_json_peek(j) != PL_JSON_STRING || pl_json_string(j, &c->field)
                     ? pl_config_type_error(j, "filter.field", "a string")
                     : 0;
        } else if (pl_str_eq(&key, "op", 2)) {
            bit = 2;
            rc = read_op(j, c);
        } else if (pl_str_eq(&key, "value", 5)) {
            bit = 4;
            rc = read_value(j, c);
        } else if (pl_str_eq(&key, "all", 3) || pl_str_eq(&key, "any", 3)) {
            bit = 8;
            c->kind = key.ptr[1] == 'l' ? COND_ALL : COND_ANY;
            rc = read_parts(j, c, c->kind == COND_ALL ? "filter.all" : "filter.any");
        } else {
            rc = pl_config_unknown_key("config.filter", &key, known);
            pl_str_free(&key);
            return rc;
        }
        if (!rc && (seen & bit)) rc = bit == 8 ? filter_error("a condition takes one of all, any")
                                               : pl_config_duplicate_key("config.filter", &key);
        seen |= bit;
        pl_str_free(&key);
        if (rc) return rc;
    }
    if (more < 0) return pl_json_fail(j, "config");
    if (seen & 8) return seen == 8 ? 0 : filter_error("a condition with all or any takes no field, op or value");
    if (!(seen & 1)) return filter_error("missing 'field'");
    if ((c->path = add_path(&c->field)) == UINT32_MAX) return pl_fail_str("out of memory");
    if (!(seen & 2)) return filter_error("missing 'op'");
    if (c->op == OP_EXISTS) return seen & 4 ? filter_error("op 'exists' takes no value") : 0;
    if (!(seen & 4)) return filter_error("missing 'value'");
    if (c->op >= OP_GT && c->type != PL_JSON_NUMBER && c->type != PL_JSON_STRING)
        return pl_fail_str("config.filter.value: expected a number or a string for an ordering op");
    return 0;
}

/* The output keys of select, as JSON text. */
static int select_keys(void) {
    g.key_end = calloc(cfg.select.n, sizeof *g.key_end);
    g.select_path = calloc(cfg.select.n, sizeof *g.select_path);
    if (!g.key_end || !g.select_path) return pl_fail_str("out of memory");
    for (uint32_t i = 0; i < cfg.select.n; i++) {
        const pl_str *s = &cfg.select.v[i];
        if (pl_strs_find(&cfg.select, s->ptr, s->len) != i) return pl_config_duplicate_key("config.select", s);
        if ((g.select_path[i] = add_path(s)) == UINT32_MAX) return pl_fail_str("out of memory");
        const int64_t r = pl_strs_find(&cfg.rename_from, s->ptr, s->len);
        if (r >= 0) s = &cfg.rename_to.v[r];
        pl_json_buf_string(&g.keys, (const uint8_t *)s->ptr, s->len);
        pl_buf_putc(&g.keys, ':');
        g.key_end[i] = g.keys.len;
    }
    for (uint32_t i = 0; i < cfg.rename_from.n; i++)
        if (pl_strs_find(&cfg.select, cfg.rename_from.v[i].ptr, cfg.rename_from.v[i].len) < 0) {
            pl_buf m = {0};
            pl_buf_puts(&m, "config.rename: '");
            pl_buf_put(&m, cfg.rename_from.v[i].ptr, cfg.rename_from.v[i].len);
            pl_buf_puts(&m, "' is not selected");
            return pl_fail_buf(&m);
        }
    return g.keys.oom ? pl_fail_str("out of memory") : 0;
}

static int on_line(void *ctx, const uint8_t *line, size_t len, uint64_t line_no);

/* A 6-bit hash of a member name (n bytes at p): a name whose hash no path's name has is none of
 * them, so most members are passed over without comparing names. */
static inline uint32_t name_hash(const uint8_t *p, size_t n) { return (uint32_t)((n ? p[0] : 0) + n * 16) & 63; }

enum { KEY_FILTER, KEY_SELECT, KEY_RENAME, KEY_MAX_LINE_BYTES };

static int read_config(pl_json *j, int key) {
    switch (key) {
    case KEY_FILTER:
        cfg.has_filter = true;
        return read_cond(j, &cfg.filter);
    case KEY_SELECT:
        if (pl_config_str_list(j, "select", &cfg.select)) return -1;
        return cfg.select.n ? 0 : pl_fail_str("config.select: expected at least one path");
    case KEY_RENAME:
        return pl_config_str_map(j, "rename", "an object mapping keys to new keys", &cfg.rename_from, &cfg.rename_to);
    default: return pl_config_size(j, "max_line_bytes", 4294967296.0, &g.lines.max_line_bytes);
    }
}

static int pl_guest_init(const uint8_t *config, size_t len) {
    static const char *const keys[] = {"filter", "select", "rename", "max_line_bytes", NULL};
    pl_lines_init(&g.lines, on_line, NULL);
    if (pl_config_read(config, len, keys, read_config) || (cfg.select.n && select_keys())) return -1;
    const uint32_t n = g.paths.n + 1;
    g.found = calloc(n, sizeof *g.found);
    g.names = calloc(n, sizeof *g.names);
    g.nnames = calloc(n, sizeof *g.nnames);
    g.level = calloc(n, sizeof *g.level);
    g.pending = calloc(n, sizeof *g.pending);
    if (!g.found || !g.names || !g.nnames || !g.level || !g.pending) return pl_fail_str("out of memory");
    for (uint32_t i = 0; i < g.paths.n; i++) {
        const pl_str *p = &g.paths.v[i];
        if (!(g.names[i] = calloc(2 * (p->len + 1), sizeof **g.names))) return pl_fail_str("out of memory");
        for (size_t at = 0;; at++) {
            const char *dot = memchr(p->ptr + at, '.', p->len - at);
            const size_t name_end = dot ? (size_t)(dot - p->ptr) : p->len;
            g.name_hashes |= 1ull << name_hash((const uint8_t *)p->ptr + at, name_end - at);
            g.names[i][2 * g.nnames[i]] = (uint32_t)at;
            g.names[i][2 * g.nnames[i]++ + 1] = (uint32_t)(name_end - at);
            if (!dot) break;
            at = name_end;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Lookups in a compact object                                                               */
/* ---------------------------------------------------------------------------------------- */

/* True if the JSON string text `s` (quotes included) decodes to the n bytes at want. */
static bool string_is(span s, const void *want, size_t n) {
    /* Text with an escape is longer than the bytes it decodes to: only a longer one needs decoding. */
    const size_t raw = (size_t)(s.end - s.p) - 2;
    if (raw <= n) return raw == n && memcmp(s.p + 1, want, n) == 0;
    if (!pl_memchr(s.p + 1, '\\', raw)) return false;
    pl_json j;
    pl_str d;
    pl_json_init(&j, s.p, (size_t)(s.end - s.p));
    if (pl_json_string(&j, &d)) return false; /* a lone surrogate escape: equal to no config text */
    bool eq = pl_str_eq(&d, want, n);
    pl_str_free(&d);
    return eq;
}

/* Calls fn for each member of the compact object `obj`; stops at a non-zero result. */
typedef int (*member_fn)(span key, span value, void *ctx);
static int members(span obj, member_fn fn, void *ctx) {
    const uint8_t *p = obj.p + 1;
    while (*p != '}') {
        span key = {p, pl_json_compact_skip(p, obj.end)};
        span value = {key.end + 1, pl_json_compact_skip(key.end + 1, obj.end)};
        int rc = fn(key, value, ctx);
        if (rc) return rc;
        p = value.end + (*value.end == ',');
    }
    return 0;
}

typedef struct lookup {
    const char *name;
    size_t len;
    span found; /* the last member with the name; found.p NULL if none */
} lookup;

static int match_member(span key, span value, void *ctx) {
    lookup *l = ctx;
    if (string_is(key, l->name, l->len)) l->found = value;
    return 0;
}

/* The value at `path` in the object `obj`; false if it has none. */
static bool find(span obj, const pl_str *path, span *out) {
    const char *p = path->ptr, *const end = p + path->len;
    for (;;) {
        if (*obj.p != '{') return false;
        const char *dot = memchr(p, '.', (size_t)(end - p));
        lookup l = {p, (size_t)((dot ? dot : end) - p), {NULL, NULL}};
        members(obj, match_member, &l);
        if (!l.found.p) return false;
        if (!dot) {
            *out = l.found;
            return true;
        }
        obj = l.found;
        p = dot + 1;
    }
}

static int match_first_name(span key, span value, void *ctx) {
    (void)ctx;
    for (uint32_t i = 0; i < g.paths.n; i++)
        if (string_is(key, g.paths.v[i].ptr, g.first_len[i])) g.found[i] = value;
    return 0;
}

/* Finds the value of every path in the object: the first names in one pass, then the rest. */
static void resolve(span obj) {
    for (uint32_t i = 0; i < g.paths.n; i++) g.found[i].p = NULL;
    members(obj, match_first_name, NULL);
    for (uint32_t i = 0; i < g.paths.n; i++) {
        const pl_str *p = &g.paths.v[i];
        const pl_str rest = {p->ptr + g.first_len[i] + 1, p->len - g.first_len[i] - 1};
        if (g.found[i].p && g.first_len[i] < p->len && !find(g.found[i], &rest, &g.found[i])) g.found[i].p = NULL;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Filter                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* -2: not comparable (other type); else the sign of value - c's value. */
static int compare(const cond *c, span v) {
    const uint8_t first = *v.p;
    switch (c->type) {
    case PL_JSON_NUMBER: {
        double d;
        if (!(first == '-' || (uint8_t)(first - '0') < 10) || !pl_parse_number(v.p, (size_t)(v.end - v.p), &d))
            return -2;
        return (d > c->number) - (d < c->number);
    }
    case PL_JSON_STRING: {
        if (first != '"') return -2;
        pl_str s = {(char *)v.p + 1, (size_t)(v.end - v.p) - 2};
        pl_str decoded = {0};
        if (pl_memchr(s.ptr, '\\', s.len)) {
            pl_json j;
            pl_json_init(&j, v.p, (size_t)(v.end - v.p));
            if (pl_json_string(&j, &decoded)) return -2;
            s = decoded;
        }
        const size_t n = s.len < c->string.len ? s.len : c->string.len;
        int cmp = memcmp(s.ptr, c->string.ptr, n);
        cmp = cmp ? (cmp > 0) - (cmp < 0) : (s.len > c->string.len) - (s.len < c->string.len);
        pl_str_free(&decoded);
        return cmp;
    }
    case PL_JSON_BOOL: return first == (c->boolean ? 't' : 'f') ? 0 : -2;
    default: return first == 'n' ? 0 : -2; /* null */
    }
}

/* Whether the condition holds for the line whose paths resolve() found. */
static bool holds(const cond *c) {
    if (c->kind != COND_COMPARE) {
        for (uint32_t i = 0; i < c->nparts; i++)
            if (holds(&c->parts[i]) == (c->kind == COND_ANY)) return c->kind == COND_ANY;
        return c->kind == COND_ALL;
    }
    const span v = g.found[c->path];
    const bool present = v.p != NULL;
    if (c->op == OP_EXISTS) return present;
    const int cmp = present ? compare(c, v) : -2;
    switch (c->op) {
    case OP_EQ: return cmp == 0;
    case OP_NE: return cmp != 0;
    case OP_GT: return cmp != -2 && cmp > 0;
    case OP_GE: return cmp != -2 && cmp >= 0;
    case OP_LT: return cmp == -1;
    default: return cmp == -1 || cmp == 0; /* OP_LE */
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Lines                                                                                     */
/* ---------------------------------------------------------------------------------------- */

typedef struct writer {
    pl_out *o;
    bool first;
} writer;

/* Writes one member of the object, renaming its key if rename names it. */
static int write_renamed(span key, span value, void *ctx) {
    writer *w = ctx;
    if (!w->first && pl_out_putc(w->o, ',')) return -1;
    w->first = false;
    int rc = -1;
    for (uint32_t i = 0; i < cfg.rename_to.n && rc < 0; i++)
        if (string_is(key, cfg.rename_from.v[i].ptr, cfg.rename_from.v[i].len)) {
            const pl_str *to = &cfg.rename_to.v[i];
            rc = pl_json_put_string(w->o, (const uint8_t *)to->ptr, to->len);
        }
    if (rc < 0) rc = pl_out_write(w->o, key.p, (size_t)(key.end - key.p));
    return rc || pl_out_putc(w->o, ':') || pl_out_write(w->o, value.p, (size_t)(value.end - value.p));
}

static int write_value(pl_out *o, span v);

static int write_line(span obj) {
    pl_out *o = pl_port(0);
    if (cfg.select.n) {
        if (pl_out_putc(o, '{')) return -1;
        bool first = true;
        for (uint32_t i = 0; i < cfg.select.n; i++) {
            const span v = g.found[g.select_path[i]];
            if (!v.p) continue;
            const size_t key = i ? g.key_end[i - 1] : 0;
            if ((!first && pl_out_putc(o, ',')) || pl_out_write(o, g.keys.data + key, g.key_end[i] - key) ||
                write_value(o, v))
                return -1;
            first = false;
        }
        return pl_out_write(o, "}\n", 2);
    }
    if (!cfg.rename_from.n) return pl_out_write(o, obj.p, (size_t)(obj.end - obj.p)) || pl_out_putc(o, '\n');
    writer w = {o, true};
    return pl_out_putc(o, '{') || members(obj, write_renamed, &w) || pl_out_write(o, "}\n", 2);
}

/* The slow path, for a line the fast one did not take: validates it with the SDK's streaming
 * scanner (whose error is the reject reason) and looks the paths up in its compact copy. */
static int slow_line(const uint8_t *line, size_t len, uint64_t line_no) {
    pl_buf *c = &g.compact;
    c->len = 0;
    pl_buf *m = &g.reason;
    m->len = 0;
    if (pl_json_compact(&g.js, line, len, c)) {
        pl_buf_puts(m, "invalid JSON at byte ");
        pl_buf_put_u64(m, g.js.error_at);
        pl_buf_puts(m, ": ");
        pl_buf_puts(m, g.js.error);
        return pl_reject(line_no, m, line, len);
    }
    if (c->oom) return pl_fail_str("out of memory");
    if (c->data[0] != '{') {
        pl_buf_puts(m, "not a JSON object");
        return pl_reject(line_no, m, line, len);
    }
    /* A padding byte past the end keeps the scans of pl_json_compact_skip in bounds. */
    pl_buf_putc(c, 0);
    if (c->oom) return pl_fail_str("out of memory");
    span obj = {c->data, c->data + c->len - 1};
    resolve(obj);
    if (cfg.has_filter && !holds(&cfg.filter)) return 0;
    pl_stats.records_out++;
    return write_line(obj);
}

static inline bool is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* The bytes of the 16 at p that stop a run of plain string bytes: '"', '\\', a control
 * character or a byte >= 0x80 (bit i for p[i]). */
static inline uint32_t string_stops(const uint8_t *p) {
    const v128_t v = wasm_v128_load(p);
    v128_t stop = wasm_v128_or(wasm_i8x16_eq(v, wasm_i8x16_splat('"')), wasm_i8x16_eq(v, wasm_i8x16_splat('\\')));
    stop = wasm_v128_or(stop, wasm_u8x16_lt(v, wasm_i8x16_splat(0x20)));
    stop = wasm_v128_or(stop, wasm_i8x16_lt(v, wasm_i8x16_splat(0)));
    return (uint32_t)wasm_i8x16_bitmask(stop);
}

/* The closing quote of the string whose text starts at p (after its opening quote), or NULL
 * if the string is invalid or unterminated; sets *esc if it has an escape. The line starts at
 * `start`: near its end, 16 bytes are read from end - 16 rather than one at a time. */
static const uint8_t *scan_string(const uint8_t *p, const uint8_t *end, const uint8_t *start, bool *esc) {
    for (;;) {
        uint32_t stops;
        if (end - p >= 16) {
            if (!(stops = string_stops(p))) {
                p += 16;
                continue;
            }
        } else if (end - start >= 16) {
            if (!(stops = string_stops(end - 16) >> (16 - (end - p)))) return NULL;
        } else {
            while (p < end && *p != '"' && *p != '\\' && *p >= 0x20 && *p < 0x80) p++;
            if (p == end) return NULL;
            stops = 1;
        }
        p += __builtin_ctz(stops);
        const uint8_t c = *p;
        if (c == '"') return p;
        if (c == '\\') {
            *esc = true;
            if (end - p < 2) return NULL;
            const uint8_t e = p[1];
            if (e == 'u') {
                if (end - p < 6) return NULL;
                for (int k = 2; k < 6; k++)
                    if (!((uint8_t)(p[k] - '0') < 10 || (uint8_t)((p[k] | 0x20) - 'a') < 6)) return NULL;
                p += 6;
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
                p += 2;
            } else {
                return NULL;
            }
        } else if (c < 0x20) {
            return NULL;
        } else {
            uint8_t lo, hi;
            const int more = pl__utf8_lead(c, &lo, &hi);
            if (!more || end - p <= more || p[1] < lo || p[1] > hi) return NULL;
            for (int k = 2; k <= more; k++)
                if ((p[k] & 0xC0) != 0x80) return NULL;
            p += 1 + more;
        }
    }
}

/* True if the member name `key` (the text between the quotes; `esc` if it has an escape) is
 * the n bytes at want. */
static inline bool key_is(const uint8_t *key, const uint8_t *key_end, bool esc, const char *want, size_t n) {
    if (esc) return string_is((span){key - 1, key_end + 1}, want, n);
    /* The first and last bytes turn most other names down without a call. */
    return (size_t)(key_end - key) == n && (!n || (key[0] == (uint8_t)want[0] && key[n - 1] == (uint8_t)want[n - 1] &&
                                                   (n <= 2 || memcmp(key + 1, want + 1, n - 2) == 0)));
}

/* The member with name `key` in an object at `depth` starts its value at p: the paths looked for
 * there whose next name it is match it. Returns true if one matched its last name (its value is
 * complete at `after` in fast_object); sets *live if one goes on into the value, an object. */
static bool match_name(uint32_t depth, const uint8_t *key, const uint8_t *key_end, bool esc, const uint8_t *p,
                         bool *live) {
    bool last = false;
    for (uint32_t i = 0; i < g.paths.n; i++) {
        const uint32_t k = g.level[i];
        if (k != depth - 1 || !key_is(key, key_end, esc, g.paths.v[i].ptr + g.names[i][2 * k], g.names[i][2 * k + 1]))
            continue;
        /* With duplicate names the last one counts: forget what an earlier one led to. */
        g.found[i].p = NULL;
        if (k + 1 == g.nnames[i]) {
            g.pending[i] = p;
            last = true;
        } else if (*p == '{') {
            g.level[i] = depth;
            *live = true;
        }
    }
    return last;
}

/* The value of the open member of the object at `depth` ends at p: it is found for the paths
 * it is pending for. */
static void complete(uint32_t depth, const uint8_t *p) {
    for (uint32_t i = 0; i < g.paths.n; i++)
        if (g.pending[i] && g.level[i] == depth - 1) {
            g.found[i] = (span){g.pending[i], p};
            g.pending[i] = NULL;
        }
}

/* The object at `depth` closed: the paths looked for in it go back to its parent. */
static void leave(uint32_t depth) {
    for (uint32_t i = 0; i < g.paths.n; i++)
        if (g.level[i] == depth - 1) g.level[i] = depth - 2;
}

/* Appends the compact form of the valid JSON text [p, end) to `d`; returns the end. */
static uint8_t *compact_into(uint8_t *d, const uint8_t *p, const uint8_t *end) {
    while (p < end) {
        const uint8_t *run = p;
        while (p < end && *p != '"' && !is_ws(*p)) p++;
        if (p < end && *p == '"') {
            while (*(p = pl__json_plain_end(p + 1, end, false)) == '\\') p++;
            p++;
        }
        memcpy(d, run, (size_t)(p - run));
        d += p - run;
        while (p < end && is_ws(*p)) p++;
    }
    return d;
}

#define FAST_MAX_DEPTH 63

/*
 * The fast path: validates the object [p, end) (p at its '{', end after its '}') in place, in
 * one pass, and sets g.found as resolve would (the values' text as written, whitespace
 * included). It accepts only what pl_json_compact accepts, so a line it turns down (returning
 * false) goes to slow_line, which finds the error to report; it also turns down valid lines
 * nested deeper than FAST_MAX_DEPTH. Sets g.spaced if there is whitespace inside the object.
 */
static bool fast_object(const uint8_t *p, const uint8_t *const end) {
    const uint8_t *const start = p;
    uint64_t objects = 2;               /* bit per open container (1 << depth): 1 object, 0 array */
    uint64_t live = g.paths.n ? 2 : 0;  /* bit per open object in which paths are looked for */
    uint64_t pending = 0;               /* bit per open object whose open member is a path's value */
    uint32_t depth = 1;
    bool spaced = false, esc = false;
    const uint8_t *q;
    /* The object's last byte is its '}', so the scans below stop before `end` except in strings
     * and literals, which check. */
#define SKIP_WS()                                                                                                    \
    if (is_ws(*p)) {                                                                                                 \
        spaced = true;                                                                                               \
        do p++;                                                                                                      \
        while (is_ws(*p));                                                                                           \
    }
#define IN_OBJECT() (objects >> depth & 1)
    p++;
    SKIP_WS();
    if (*p == '}') goto close;
member : {
    SKIP_WS();
    if (*p != '"') return false;
    esc = false;
    const uint8_t *key = p + 1;
    if (!(q = scan_string(key, end, start, &esc))) return false;
    p = q + 1;
    SKIP_WS();
    if (*p++ != ':') return false;
    SKIP_WS();
    if (live >> depth & 1 && (esc || g.name_hashes >> name_hash(key, (size_t)(q - key)) & 1)) {
        bool deeper = false;
        if (match_name(depth, key, q, esc, p, &deeper)) pending |= 1ull << depth;
        if (deeper) live |= 2ull << depth;
    }
}
value:
    switch (*p) {
    case '"':
        if (!(q = scan_string(p + 1, end, start, &esc))) return false;
        p = q + 1;
        break;
    case '{':
    case '[':
        if (depth == FAST_MAX_DEPTH) return false;
        depth++;
        objects = *p == '{' ? objects | 1ull << depth : objects & ~(1ull << depth);
        p++;
        SKIP_WS();
        if (*p == (IN_OBJECT() ? '}' : ']')) goto close;
        if (IN_OBJECT()) goto member;
        goto value;
    case 't':
        if (end - p < 4 || memcmp(p, "true", 4)) return false;
        p += 4;
        break;
    case 'f':
        if (end - p < 5 || memcmp(p, "false", 5)) return false;
        p += 5;
        break;
    case 'n':
        if (end - p < 4 || memcmp(p, "null", 4)) return false;
        p += 4;
        break;
    default:
        if (*p == '-') p++;
        if (*p == '0') {
            p++;
        } else if ((uint8_t)(*p - '1') < 9) {
            do p++;
            while ((uint8_t)(*p - '0') < 10);
        } else {
            return false;
        }
        if (*p == '.') {
            if ((uint8_t)(*++p - '0') >= 10) return false;
            do p++;
            while ((uint8_t)(*p - '0') < 10);
        }
        if ((*p | 0x20) == 'e') {
            p++;
            if (*p == '+' || *p == '-') p++;
            if ((uint8_t)(*p - '0') >= 10) return false;
            do p++;
            while ((uint8_t)(*p - '0') < 10);
        }
    }
after:
    if (pending >> depth & 1) {
        complete(depth, p);
        pending &= ~(1ull << depth);
    }
    SKIP_WS();
    if (*p == ',') {
        p++;
        if (IN_OBJECT()) goto member;
        SKIP_WS();
        goto value;
    }
    if (*p != (IN_OBJECT() ? '}' : ']')) return false;
close:
    p++;
    if (live >> depth & 1 && depth > 1) {
        leave(depth);
        live &= ~(1ull << depth);
    }
    if (--depth) {
        if (p == end) return false;
        goto after;
    }
#undef SKIP_WS
#undef IN_OBJECT
    g.spaced = spaced;
    return p == end;
}

/* Writes a value found by the fast path, compact. */
static int write_value(pl_out *o, span v) {
    if (!g.spaced || (*v.p != '{' && *v.p != '[')) return pl_out_write(o, v.p, (size_t)(v.end - v.p));
    pl_buf *c = &g.compact;
    c->len = 0;
    if (!pl_buf_reserve(c, (size_t)(v.end - v.p))) return pl_fail_str("out of memory");
    return pl_out_write(o, c->data, (size_t)(compact_into(c->data, v.p, v.end) - c->data));
}

static int on_line(void *ctx, const uint8_t *line, size_t len, uint64_t line_no) {
    (void)ctx;
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) i++;
    if (i == len) return 0; /* a blank line */
    pl_stats.records_in++;
    size_t n = len;
    while (is_ws(line[n - 1])) n--;
    for (uint32_t k = 0; k < g.paths.n; k++) {
        g.found[k].p = NULL;
        g.pending[k] = NULL;
        g.level[k] = 0;
    }
    if (line[i] != '{' || line[n - 1] != '}' || !fast_object(line + i, line + n)) {
        g.spaced = false;
        return slow_line(line, len, line_no);
    }
    if (cfg.has_filter && !holds(&cfg.filter)) return 0;
    pl_stats.records_out++;
    span obj = {line + i, line + n};
    if (!cfg.select.n && (g.spaced || cfg.rename_from.n)) {
        /* The whole object is written: compact it (renaming walks its compact members). */
        pl_buf *c = &g.compact;
        c->len = 0;
        if (!pl_buf_reserve(c, n - i + 1)) return pl_fail_str("out of memory");
        uint8_t *d = compact_into(c->data, obj.p, obj.end);
        *d = 0; /* padding for pl_json_compact_skip */
        obj = (span){c->data, d};
    }
    return write_line(obj);
}

static int pl_guest_process(const uint8_t *data, size_t len) { return pl_lines_feed(&g.lines, data, len); }

static int pl_guest_finish(void) { return pl_lines_finish(&g.lines); }
