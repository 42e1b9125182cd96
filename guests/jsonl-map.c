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

/* A name the fast path looks for in an object (see build_tree). */
typedef struct entry {
    uint8_t name16[16]; /* the name's first 16 bytes, zero-padded: compared in one go */
    const char *name;
    uint32_t len;
    int32_t node;  /* the object it is looked for in */
    int32_t path;  /* the path it is the last name of, or -1 */
    int32_t child; /* the node of its value, if that is an object, or -1 */
    int32_t next;  /* the next entry of its node with the same name_hash, or -1 */
    uint32_t *paths; /* every path through it: when the name comes again, their values are forgotten */
    uint32_t npaths;
    uint64_t seen; /* the object it was last seen in (member) */
} entry;

/* A select entry: its path and output key. */
typedef struct selected {
    uint32_t path;         /* index in g.paths */
    uint32_t key, key_len; /* "key": at g.keys.data + key */
} selected;

/* Stream state. */
static struct {
    pl_lines lines;
    pl_json_stream js;
    pl_buf compact;   /* the line being handled, compact */
    pl_buf reason;    /* scratch for reject reasons */
    pl_buf big_line;  /* with select: an output line too large for the output buffer */
    pl_buf keys;      /* with select: per path its output key, "key":, back to back */
    /* Every path the config names (filter fields, select), once; per line, the value each leads
     * to, found in one pass over the object's members (resolve). */
    pl_strs paths;
    size_t *first_len;     /* length of each path's first name */
    span *found;           /* each path's value in the line; .p NULL if it has none */
    selected *select; /* per select entry */
    bool select_nested; /* a select path goes on from another ("a" and "a.b"): their values overlap */
    /* The fast path: the paths' names as a tree of nodes, one per object looked in (node 0 is the
     * line's object), each a 64-slot hash table of its entries; the lines' tokens (index_blocks). */
    entry *entries;
    uint32_t nentries;
    int32_t (*slots)[64];
    uint32_t nnodes;
    pl_buf tokens;
    pl_buf kinds; /* per token of g.tokens (same index), its first byte: match_shape reads 8 at once */
    uint64_t line_no; /* the line being handled */
    bool escapes;     /* the line may have a backslash (fast path: has one) */
    bool spaced;  /* the line may have whitespace inside its object (fast path: any outside strings) */
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
    if (!(g.select = calloc(cfg.select.n, sizeof *g.select))) return pl_fail_str("out of memory");
    for (uint32_t i = 0; i < cfg.select.n; i++) {
        const pl_str *s = &cfg.select.v[i];
        if (pl_strs_find(&cfg.select, s->ptr, s->len) != i) return pl_config_duplicate_key("config.select", s);
        if ((g.select[i].path = add_path(s)) == UINT32_MAX) return pl_fail_str("out of memory");
        const int64_t r = pl_strs_find(&cfg.rename_from, s->ptr, s->len);
        if (r >= 0) s = &cfg.rename_to.v[r];
        const size_t key = g.keys.len;
        pl_json_buf_string(&g.keys, (const uint8_t *)s->ptr, s->len);
        pl_buf_putc(&g.keys, ':');
        g.select[i].key = (uint32_t)key;
        g.select[i].key_len = (uint32_t)(g.keys.len - key);
    }
    for (uint32_t i = 0; i < cfg.rename_from.n; i++)
        if (pl_strs_find(&cfg.select, cfg.rename_from.v[i].ptr, cfg.rename_from.v[i].len) < 0) {
            pl_buf m = {0};
            pl_buf_puts(&m, "config.rename: '");
            pl_buf_put(&m, cfg.rename_from.v[i].ptr, cfg.rename_from.v[i].len);
            pl_buf_puts(&m, "' is not selected");
            return pl_fail_buf(&m);
        }
    for (uint32_t i = 0; i < cfg.select.n; i++)
        for (uint32_t k = 0; k < cfg.select.n; k++) {
            const pl_str *a = &cfg.select.v[i], *b = &cfg.select.v[k];
            if (a->len < b->len && b->ptr[a->len] == '.' && memcmp(a->ptr, b->ptr, a->len) == 0) g.select_nested = true;
        }
    /* write_selected copies keys 16 bytes at a time: room for the last one's overread. */
    pl_buf_reserve(&g.keys, PL_PAD);
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

/* A new node, with no entries; -1 if memory ran out. */
static int32_t add_node(void) {
    int32_t(*slots)[64] = realloc(g.slots, (g.nnodes + 1) * sizeof *slots);
    if (!slots) return -1;
    g.slots = slots;
    memset(slots[g.nnodes], 0xFF, sizeof *slots); /* every slot -1: empty */
    return (int32_t)g.nnodes++;
}

/* The entry of `node` for the name (len bytes at name, which must outlive it), added if new; -1
 * if memory ran out. */
static int32_t add_entry(int32_t node, const char *name, uint32_t len) {
    const uint32_t h = name_hash((const uint8_t *)name, len);
    for (int32_t i = g.slots[node][h]; i >= 0; i = g.entries[i].next)
        if (g.entries[i].len == len && memcmp(g.entries[i].name, name, len) == 0) return i;
    entry *entries = realloc(g.entries, (g.nentries + 1) * sizeof *entries);
    if (!entries) return -1;
    g.entries = entries;
    entry *e = &entries[g.nentries];
    *e = (entry){.name = name, .len = len, .node = node, .path = -1, .child = -1, .next = g.slots[node][h]};
    memcpy(e->name16, name, len < 16 ? len : 16);
    g.slots[node][h] = (int32_t)g.nentries;
    return (int32_t)g.nentries++;
}

/* Builds the fast path's tree of names from g.paths: "a.b" and "a.c" share the entry of "a" in
 * node 0, whose child node has the entries "b" and "c". */
static int build_tree(void) {
    if (g.paths.n && add_node() < 0) return pl_fail_str("out of memory");
    for (uint32_t i = 0; i < g.paths.n; i++) {
        const pl_str *p = &g.paths.v[i];
        int32_t node = 0;
        for (size_t at = 0;;) {
            const char *dot = memchr(p->ptr + at, '.', p->len - at);
            const size_t name_end = dot ? (size_t)(dot - p->ptr) : p->len;
            const int32_t e = add_entry(node, p->ptr + at, (uint32_t)(name_end - at));
            if (e < 0) return pl_fail_str("out of memory");
            uint32_t *paths = realloc(g.entries[e].paths, (g.entries[e].npaths + 1) * sizeof *paths);
            if (!paths) return pl_fail_str("out of memory");
            g.entries[e].paths = paths;
            paths[g.entries[e].npaths++] = i;
            if (!dot) {
                g.entries[e].path = (int32_t)i;
                break;
            }
            if (g.entries[e].child < 0) {
                const int32_t child = add_node();
                if (child < 0) return pl_fail_str("out of memory");
                g.entries[e].child = child;
            }
            node = g.entries[e].child;
            at = name_end + 1;
        }
    }
    return 0;
}

static int shapes_init(void);

static int pl_guest_init(const uint8_t *config, size_t len) {
    static const char *const keys[] = {"filter", "select", "rename", "max_line_bytes", NULL};
    pl_lines_init(&g.lines, on_line, NULL);
    if (pl_config_read(config, len, keys, read_config) || (cfg.select.n && select_keys())) return -1;
    /* Whole groups of eight (begin_line clears them so). */
    if (!(g.found = calloc((g.paths.n + 8) & ~7u, sizeof *g.found)) || shapes_init())
        return pl_fail_str("out of memory");
    return build_tree();
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

/* index_blocks reads whole 64-byte blocks, up to this many bytes past the end of its bytes. */
#define FAST_OVERREAD 64u

/* True if the fast path may read FAST_OVERREAD bytes past `end`. */
static inline bool overread_ok(const uint8_t *end) {
    return (uint64_t)(uintptr_t)end + FAST_OVERREAD <= (uint64_t)__builtin_wasm_memory_size(0) << 16;
}

/* memcmp's sign (-1, 0 or 1), 8 bytes at a time: the libc one goes byte by byte. */
static int bytes_compare(const uint8_t *a, const uint8_t *b, size_t n) {
    for (; n >= 8; a += 8, b += 8, n -= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y) return __builtin_bswap64(x) > __builtin_bswap64(y) ? 1 : -1;
    }
    for (; n; a++, b++, n--)
        if (*a != *b) return *a > *b ? 1 : -1;
    return 0;
}

/* The sign of the string s (n bytes) - c's string. */
static inline int compare_bytes(const cond *c, const uint8_t *s, size_t n) {
    /* == and != need only know that strings of other lengths differ. */
    if (c->op <= OP_NE && n != c->string.len) return 1;
    const int cmp = bytes_compare(s, (const uint8_t *)c->string.ptr, n < c->string.len ? n : c->string.len);
    return cmp ? cmp : (n > c->string.len) - (n < c->string.len);
}

/* compare for a JSON string value [p, end) with an escape: decoded first. */
PL_COLD int compare_escaped(const cond *c, const uint8_t *p, const uint8_t *end) {
    pl_json j;
    pl_str decoded;
    pl_json_init(&j, p, (size_t)(end - p));
    if (pl_json_string(&j, &decoded)) return -2;
    const int cmp = compare_bytes(c, (const uint8_t *)decoded.ptr, decoded.len);
    pl_str_free(&decoded);
    return cmp;
}

/* Whether the n bytes at p have a backslash: a short string in one vector. */
static inline bool has_backslash(const uint8_t *p, size_t n) {
    if (n > 16 || !overread_ok(p + n)) return pl_memchr(p, '\\', n) != NULL;
    return (uint32_t)wasm_i8x16_bitmask(wasm_i8x16_eq(wasm_v128_load(p), wasm_i8x16_splat('\\'))) & ((1u << n) - 1);
}

/* -2: not comparable (other type); else the sign of the value [p, end) - c's value. Pointers,
 * not a span: a struct argument would pass through memory (wasm32's C ABI). */
static int compare(const cond *c, const uint8_t *p, const uint8_t *end) {
    const uint8_t first = *p;
    switch (c->type) {
    case PL_JSON_NUMBER: {
        double d;
        if (!(first == '-' || (uint8_t)(first - '0') < 10) || !pl_parse_number(p, (size_t)(end - p), &d))
            return -2;
        return (d > c->number) - (d < c->number);
    }
    case PL_JSON_STRING: {
        if (first != '"') return -2;
        const size_t n = (size_t)(end - p) - 2;
        return g.escapes && has_backslash(p + 1, n) ? compare_escaped(c, p, end) : compare_bytes(c, p + 1, n);
    }
    case PL_JSON_BOOL: return first == (c->boolean ? 't' : 'f') ? 0 : -2;
    default: return first == 'n' ? 0 : -2; /* null */
    }
}

/* Whether the comparison c holds for the line whose paths resolve() found. */
static __attribute__((noinline)) bool compare_holds_any(const cond *c) {
    const span v = g.found[c->path];
    const bool present = v.p != NULL;
    if (c->op == OP_EXISTS) return present;
    const int cmp = present ? compare(c, v.p, v.end) : -2;
    switch (c->op) {
    case OP_EQ: return cmp == 0;
    case OP_NE: return cmp != 0;
    case OP_GT: return cmp != -2 && cmp > 0;
    case OP_GE: return cmp != -2 && cmp >= 0;
    case OP_LT: return cmp == -1;
    default: return cmp == -1 || cmp == 0; /* OP_LE */
    }
}

/* compare_holds_any, without a call for the usual == or != with a string: a value of another
 * type, or whose text is shorter than the string (an escape only makes it shorter still) or, in
 * a line without a backslash, of another length is not equal; a line without a backslash has
 * the text of its strings as their value. */
static inline bool compare_holds(const cond *c) {
    if (c->op <= OP_NE && c->type == PL_JSON_STRING) {
        const span v = g.found[c->path];
        if (!v.p || *v.p != '"') return c->op == OP_NE;
        const size_t raw = (size_t)(v.end - v.p) - 2;
        if (raw < c->string.len || (!g.escapes && raw != c->string.len)) return c->op == OP_NE;
        if (!g.escapes) return (bytes_compare(v.p + 1, (const uint8_t *)c->string.ptr, raw) == 0) == (c->op == OP_EQ);
    }
    return compare_holds_any(c);
}

/* Whether the condition holds for the line whose paths resolve() found (its comparisons without
 * a call each). */
static __attribute__((noinline)) bool holds(const cond *c) {
    if (c->kind == COND_COMPARE) return compare_holds(c);
    for (uint32_t i = 0; i < c->nparts; i++) {
        const cond *part = &c->parts[i];
        if ((part->kind == COND_COMPARE ? compare_holds(part) : holds(part)) == (c->kind == COND_ANY))
            return c->kind == COND_ANY;
    }
    return c->kind == COND_ALL;
}

/* holds for the config's filter, its top level inline (holds is recursive, so never inlined). */
static inline bool filter_holds(void) {
    const cond *const c = &cfg.filter;
    if (c->kind == COND_COMPARE) return compare_holds(c);
    for (const cond *part = c->parts, *const end = part + c->nparts; part < end; part++)
        if ((part->kind == COND_COMPARE ? compare_holds(part) : holds(part)) == (c->kind == COND_ANY))
            return c->kind == COND_ANY;
    return c->kind == COND_ALL;
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

static uint8_t *compact_into(uint8_t *d, const uint8_t *p, const uint8_t *end);

/* put_over near the end of memory. */
PL_COLD uint8_t *put_near_end(uint8_t *d, const uint8_t *s, size_t n) {
    pl_copy(d, s, n);
    return d + n;
}

/* Copies the n bytes at s to d, which has 15 bytes of room after them: 16 bytes at a time (no
 * branch on the length), reading past s + n where memory goes on. Returns d + n. */
static inline uint8_t *put_over(uint8_t *d, const uint8_t *s, size_t n) {
    if (!overread_ok(s + n)) return put_near_end(d, s, n);
    pl_copy_over(d, s, n);
    return d + n;
}

/* A selected value: its text, or, if it is an object or an array with whitespace, compact. */
PL_COLD uint8_t *put_container(uint8_t *d, const uint8_t *p, const uint8_t *end) {
    return g.spaced ? compact_into(d, p, end) : put_over(d, p, (size_t)(end - p));
}

/* With select: the object of the selected values the line (its object obj_len bytes) has. Its
 * size is bounded first, so that one reservation takes the whole line, without a call and a
 * bounds check per piece; a line too large for the output buffer is put together in
 * g.big_line. Few values are live across the loops: wasmtime spills much otherwise. */
static __attribute__((noinline)) int write_selected(pl_out *o, size_t obj_len) {
    /* '{', '}' and '\n', and per value its key and a ','. The values of paths that do not go on
     * from one another are apart in the object, so its length bounds them without a loop. */
    size_t n = 3 + g.keys.len + cfg.select.n;
    if (!g.select_nested) {
        n += obj_len;
    } else {
        for (const selected *s = g.select, *const end = s + cfg.select.n; s < end; s++) {
            const span v = g.found[s->path];
            if (v.p) n += (size_t)(v.end - v.p);
        }
    }
    /* put_over writes up to 15 bytes past the line: the output buffer's slack has room. */
    const bool fits = n <= PL_OUT_CAP;
    uint8_t *const start = fits ? pl_out_reserve(o, n) : pl_buf_reserve(&g.big_line, n + 16) ? g.big_line.data : NULL;
    if (!start) return fits ? -1 : pl_fail_str("out of memory");
    uint8_t *d = start;
    *d++ = '{';
    for (const selected *s = g.select, *const end = s + cfg.select.n; s < end; s++) {
        const span v = g.found[s->path];
        if (!v.p) continue;
        if (d != start + 1) *d++ = ',';
        pl_copy_over(d, g.keys.data + s->key, s->key_len); /* g.keys has PL_PAD bytes of room after them */
        d += s->key_len;
        d = (*v.p | 0x20) == '{' ? put_container(d, v.p, v.end) : put_over(d, v.p, (size_t)(v.end - v.p));
    }
    *d++ = '}';
    *d++ = '\n';
    if (!fits) return pl_out_write(o, start, (size_t)(d - start));
    o->len += (uint32_t)(d - start);
    return 0;
}

static int write_line(const uint8_t *obj_p, const uint8_t *obj_end) {
    const span obj = {obj_p, obj_end}; /* pointers, not a span: see end_line */
    pl_out *o = pl_port(0);
    if (cfg.select.n) return write_selected(o, (size_t)(obj.end - obj.p));
    if (!cfg.rename_from.n) return pl_out_write(o, obj.p, (size_t)(obj.end - obj.p)) || pl_out_putc(o, '\n');
    writer w = {o, true};
    return pl_out_putc(o, '{') || members(obj, write_renamed, &w) || pl_out_write(o, "}\n", 2);
}

/* The slow path, for a line the fast one did not take: validates it with the SDK's streaming
 * scanner (whose error is the reject reason) and looks the paths up in its compact copy. */
PL_COLD int slow_line(const uint8_t *line, size_t len, uint64_t line_no) {
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
    return write_line(obj.p, obj.end);
}

static inline bool is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* ---------------------------------------------------------------------------------------- */
/* The fast path                                                                             */
/* ---------------------------------------------------------------------------------------- */

/*
 * The fast path checks a line and finds the paths' values in two passes, as simdjson does, so
 * that no loop goes byte by byte (wasmtime adds an interruption check to every loop iteration).
 * index_blocks classifies a window of lines 64 bytes at a time into bit masks (the blocks run on
 * across the lines: a line needs no block of its own), works out which bytes are inside strings
 * (backslash runs, then a prefix XOR of the unescaped quotes) and lists each line's tokens: each
 * structural character , : [ ] { } outside strings, each quote that opens a string, and the
 * first byte of each run of other bytes outside strings (a number or a literal). Control
 * characters, escapes and UTF-8 are checked there, in bulk, and the lines' '\n's found.
 * walk_line then walks the tokens through the JSON grammar, one step per member, checks numbers
 * and literals, and matches member names against the tree of the paths' names. A line it turns
 * down goes to slow_line, which finds the error to report.
 *
 * wasmtime's register allocator spills much in large functions, so the hot parts are separate
 * functions with little live state, and the rare cases (escapes, control characters, bytes >=
 * 0x80, names past the first of their slot) are cold functions of their own.
 */

/* Lines longer than this take the slow path: the token list takes 4 bytes per byte at worst. */
#define FAST_MAX_LINE (1u << 20)
/* The walk keeps a bit per open container in a uint64_t: deeper lines take the slow path. */
#define FAST_MAX_DEPTH 63

/* Bit i set if an odd number of bits 0..i of x are set: which bytes lie between quotes. */
static inline uint64_t prefix_xor(uint64_t x) {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    return x ^ x << 32;
}

/* The bytes escaped by a backslash in a block whose backslashes are `bs`: in a run of them,
 * every other one escapes the next byte. *carry is 1 if the block's first byte is escaped (a
 * run with an odd length ended the block before) and is set for the next block. simdjson's
 * branchless way: a run's escaping backslashes are those at an even distance from its start. */
static inline uint64_t escaped_bytes(uint64_t bs, uint64_t *carry) {
    const uint64_t even = 0x5555555555555555ull;
    bs &= ~*carry;
    const uint64_t follows = bs << 1 | *carry;
    const uint64_t odd_starts = bs & ~even & ~follows;
    uint64_t even_runs;
    *carry = __builtin_add_overflow(odd_starts, bs, &even_runs);
    return (even ^ even_runs << 1) & follows;
}

static inline bool is_hex(uint8_t c) { return (uint8_t)(c - '0') < 10 || (uint8_t)((c | 0x20) - 'a') < 6; }

/* True if each byte of the block at b that `escaped` marks makes a valid escape with the
 * backslash before it: one of " \ / b f n r t, or u and four hex digits. */
static bool escapes_valid(const uint8_t *b, uint64_t escaped) {
    for (; escaped; escaped &= escaped - 1) {
        const uint8_t *e = b + __builtin_ctzll(escaped);
        switch (*e) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': break;
        case 'u':
            if (!is_hex(e[1]) || !is_hex(e[2]) || !is_hex(e[3]) || !is_hex(e[4])) return false;
            break;
        default: return false;
        }
    }
    return true;
}

/* Appends the position of each set bit of `bits` (byte i of the block at b) to out, and the byte
 * there to kinds (out's entries' twins in g.kinds); returns the new end. It writes up to 8
 * further (garbage) entries past the end: whole groups of 8, the first two without a loop (the
 * usual block has fewer than 16 tokens). */
static inline __attribute__((always_inline)) const uint8_t **put_tokens(const uint8_t **out, uint8_t *kinds,
                                                                       const uint8_t *b, uint64_t bits) {
    const uint32_t n = (uint32_t)__builtin_popcountll(bits);
#define PUT_8(o, ko)                                                                                                 \
    for (int k = 0; k < 8; k++) {                                                                                    \
        const uint8_t *const at = b + __builtin_ctzll(bits);                                                         \
        (o)[k] = at;                                                                                                 \
        (ko)[k] = *at;                                                                                               \
        bits &= bits - 1;                                                                                            \
    }
    PUT_8(out, kinds);
    if (n > 8) {
        PUT_8(out + 8, kinds + 8);
        for (uint32_t i = 16; bits; i += 8) PUT_8(out + i, kinds + i);
    }
#undef PUT_8
    return out + n;
}

/* The byte that no token has: the walk stops at it. */
static const uint8_t NO_TOKEN = 0;

/* The classes of up to 64 bytes (bit i for byte i). */
typedef struct block {
    uint64_t quotes, structural, ws;
    uint64_t rare; /* backslashes, control characters (tab and CR too) and bytes >= 0x80 */
} block;

/* The 16 bytes at p into bits k.. of the block's masks. */
static inline void classify16(block *bl, const uint8_t *p, int k) {
    const v128_t v = wasm_v128_load(p), space = wasm_i8x16_splat(0x20);
    bl->quotes |= (uint64_t)wasm_i8x16_bitmask(wasm_i8x16_eq(v, wasm_i8x16_splat('"'))) << k;
    /* , : [ ] { } are , : { } once bit 5 is set; so are a few control characters, which make a
     * line invalid where they would count (outside strings). */
    const v128_t l = wasm_v128_or(v, space);
    const v128_t s = wasm_v128_or(wasm_v128_or(wasm_i8x16_eq(l, wasm_i8x16_splat(',')), wasm_i8x16_eq(l, wasm_i8x16_splat(':'))),
                                  wasm_v128_or(wasm_i8x16_eq(l, wasm_i8x16_splat('{')), wasm_i8x16_eq(l, wasm_i8x16_splat('}'))));
    bl->structural |= (uint64_t)wasm_i8x16_bitmask(s) << k;
    /* Signed, the bytes below 0x21: whitespace, the control characters (checked apart) and the
     * bytes >= 0x80 (rare_block takes them out). One instruction, where unsigned takes four. */
    bl->ws |= (uint64_t)wasm_i8x16_bitmask(wasm_i8x16_lt(v, wasm_i8x16_splat(0x21))) << k;
    /* Signed, the bytes below 0x20 are the control characters and those >= 0x80. */
    bl->rare |= (uint64_t)wasm_i8x16_bitmask(wasm_v128_or(wasm_i8x16_lt(v, space), wasm_i8x16_eq(v, wasm_i8x16_splat('\\'))))
                << k;
}

/* Bit i set for each byte i of the 64 at b equal to c. */
static inline uint64_t bytes_eq(const uint8_t *b, uint8_t c) {
    uint64_t m = 0;
    for (int k = 0; k < 64; k += 16)
        m |= (uint64_t)wasm_i8x16_bitmask(wasm_i8x16_eq(wasm_v128_load(b + k), wasm_i8x16_splat((int8_t)c))) << k;
    return m;
}

/* Bit i set for each byte i of the 64 at b below 0x20 (unsigned) or, if `high`, >= 0x80. */
static inline uint64_t bytes_below_space(const uint8_t *b, bool high) {
    uint64_t m = 0;
    for (int k = 0; k < 64; k += 16) {
        const v128_t v = wasm_v128_load(b + k), space = wasm_i8x16_splat(0x20);
        m |= (uint64_t)wasm_i8x16_bitmask(high ? wasm_i8x16_lt(v, space) : wasm_u8x16_lt(v, space)) << k;
    }
    return m;
}

/* index_window's state from one block to the next, in memory rather than in locals: wasmtime's
 * register allocator spills much less that way. The carries and flags are the current line's:
 * each '\n' starts them afresh. */
static struct {
    uint64_t in_string;    /* all ones if the block starts inside a string */
    uint64_t escape_carry; /* 1 if the block's first byte is escaped */
    uint64_t scalar_carry; /* 1 if the byte before the block is part of a number or literal */
    uint64_t spaced;       /* whitespace outside strings so far */
    uint64_t escaped;      /* the escaped bytes of the block (rare_block) */
    uint64_t high;         /* the bytes >= 0x80 of the block (rare_block) */
    uint32_t utf8_carry;   /* continuation bytes at the block's start that rare_block checked */
    bool escapes;          /* a backslash so far */
    bool bad;              /* the line is invalid: its remaining bytes are only searched for its '\n' */
    const uint8_t *line;   /* where the line starts */
    uint32_t line_tok;     /* where its tokens start in g.tokens (an index: the buffer may move) */
    uint32_t nlines;       /* the window's lines so far (g.lines_ix) */
    block bl;              /* the classes of a block for index_rare */
    const uint8_t *next;   /* where index_run stopped */
} scan;

/* True if the bytes >= 0x80 of the block at b (bit i for byte i) are whole valid UTF-8
 * sequences; the block's first scan.utf8_carry bytes were checked with the block before. */
static bool utf8_block(const uint8_t *b, uint64_t high) {
    high &= ~0ull << scan.utf8_carry;
    scan.utf8_carry = 0;
    while (high) {
        const uint32_t i = (uint32_t)__builtin_ctzll(high);
        uint8_t lo, hi;
        const int more = pl__utf8_lead(b[i], &lo, &hi);
        /* The line ends with '}' or '\n', neither a continuation byte: a sequence cut short by
         * the end of the line fails here without reading further. */
        if (!more || b[i + 1] < lo || b[i + 1] > hi) return false;
        for (int k = 2; k <= more; k++)
            if ((b[i + k] & 0xC0) != 0x80) return false;
        if (i + (uint32_t)more >= 63) {
            scan.utf8_carry = i + (uint32_t)more - 63;
            break;
        }
        high &= ~0ull << (i + (uint32_t)more + 1);
    }
    return true;
}

/* The backslashes, control characters and bytes >= 0x80 of the block at b (bytes `valid`):
 * sets scan.escaped to the escaped bytes and scan.high to the bytes >= 0x80, and returns the
 * control characters; UINT64_MAX if an escape or the UTF-8 is invalid. */
PL_COLD uint64_t rare_block(const uint8_t *b, uint64_t valid) {
    const uint64_t bs = bytes_eq(b, '\\') & valid;
    const uint64_t escaped = scan.escaped = escaped_bytes(bs, &scan.escape_carry) & valid;
    scan.escapes |= bs != 0;
    if (escaped && !escapes_valid(b, escaped)) return UINT64_MAX;
    const uint64_t ctrl = bytes_below_space(b, false) & valid;
    const uint64_t high = scan.high = bytes_below_space(b, true) & ~ctrl & valid;
    if ((high || scan.utf8_carry) && !utf8_block(b, high)) return UINT64_MAX;
    return ctrl;
}

/* Tab and CR are whitespace outside strings; any other control character, and any inside a
 * string, makes the line invalid. */
PL_COLD bool controls_valid(const uint8_t *b, uint64_t ctrl, uint64_t inside) {
    return !(ctrl & ~((bytes_eq(b, '\t') | bytes_eq(b, '\r')) & ~inside));
}

/* A line of a window (index_window). */
typedef struct line_ix {
    const uint8_t *nl;    /* its '\n' */
    uint32_t tok, ntok;   /* its tokens: ntok from g.tokens' tok-th on, then its '\n''s */
    bool ok;              /* none of its bytes made it invalid */
    bool spaced, escapes; /* for g.spaced and g.escapes */
} line_ix;

/* A window ends at the first block that starts with more than WINDOW_TOKENS tokens listed, or
 * more lines than WINDOW_LINES less the 64 a block may end, once a line has ended in it (till
 * then its first line has the token list grow for it). */
#define WINDOW_TOKENS 4096u
#define WINDOW_LINES 512u
/* The most one block adds to the token list: a token per byte, and the 8 further entries
 * put_tokens may write. */
#define BLOCK_ROOM (64u + 8)

static line_ix lines_ix[WINDOW_LINES];

static inline const uint8_t **token_at(uint32_t i) { return (const uint8_t **)(void *)g.tokens.data + i; }

/* The twin in g.kinds of the token entry at tok. */
static inline uint8_t *kind_at(const uint8_t *const *tok) { return g.kinds.data + (tok - token_at(0)); }

/* Starts the state of the line at p, whose tokens start at the i-th of g.tokens. */
static inline void start_line(const uint8_t *p, uint32_t i) {
    scan.in_string = scan.escape_carry = scan.scalar_carry = scan.spaced = 0;
    scan.utf8_carry = 0;
    scan.escapes = scan.bad = false;
    scan.line = p;
    scan.line_tok = i;
}

/* Lists the line that ends at the '\n' at nl, whose token is the i-th of g.tokens, in lines_ix,
 * and starts the next line. */
static inline void end_of_line(const uint8_t *nl, uint32_t i, bool ok, bool spaced) {
    lines_ix[scan.nlines++] = (line_ix){nl, scan.line_tok, i - scan.line_tok, ok, spaced, scan.escapes};
    start_line(nl + 1, i + 1);
}

/* The line is invalid: its tokens so far are dropped (returns where they started). */
PL_COLD const uint8_t **line_bad(void) {
    scan.bad = true;
    return token_at(scan.line_tok);
}

/* Appends the tokens of the bytes `valid` of the block at b (classes bl) to tok, all of them of
 * one line and before its '\n'; returns the new end. */
static inline __attribute__((always_inline)) const uint8_t **segment(const uint8_t *b, uint64_t valid, block bl,
                                                                    const uint8_t **tok) {
    uint64_t ctrl = 0;
    scan.escaped = scan.high = 0;
    if (((bl.rare & valid) || scan.escape_carry || scan.utf8_carry) && (ctrl = rare_block(b, valid)) == UINT64_MAX)
        return line_bad();
    const uint64_t all_quotes = bl.quotes & valid, quotes = all_quotes & ~scan.escaped;
    /* From each opening quote up to (not including) its closing quote. */
    const uint64_t inside = prefix_xor(quotes) ^ scan.in_string;
    scan.in_string = (uint64_t)((int64_t)inside >> 63);
    if (ctrl && !controls_valid(b, ctrl, inside)) return line_bad();
    const uint64_t ws = bl.ws & ~scan.high & valid, structural = bl.structural & valid;
    scan.spaced |= ws & ~inside;
    /* Bytes of numbers and literals (or of anything invalid) outside strings: a token where a
     * run of them starts. */
    const uint64_t scalar = valid & ~(inside | all_quotes | structural | ws);
    const uint64_t tokens =
        (structural & ~inside) | (quotes & inside) | (scalar & ~(scalar << 1 | scan.scalar_carry));
    scan.scalar_carry = scalar >> 63;
    return put_tokens(tok, kind_at(tok), b, tokens);
}

/* index_block for a block with a byte to check (a backslash, a control character other than
 * '\n', a byte >= 0x80), after an escape or a UTF-8 sequence that goes on into it, in an invalid
 * line or with a '\n' inside a string: line by line, each line's part of it (the bits of
 * `valid` before each '\n' of `newlines`, and after the last) on its own, the classes in
 * scan.bl. */
static __attribute__((noinline)) const uint8_t **index_rare(const uint8_t *b, uint64_t valid, uint64_t newlines,
                                                            const uint8_t **tok) {
    for (;;) {
        const uint64_t nl = newlines & -newlines; /* 0 for the part after the last '\n' */
        if (!scan.bad) tok = segment(b, nl ? valid & (nl - 1) : valid, scan.bl, tok);
        if (!nl) return tok;
        const uint8_t *const at = b + __builtin_ctzll(newlines);
        *tok = at;
        /* An unterminated string (or a '\n' in one) makes the line invalid. */
        end_of_line(at, (uint32_t)(tok - token_at(0)), !scan.bad && !scan.in_string, scan.spaced != 0);
        tok++;
        valid &= ~(nl | (nl - 1));
        newlines &= newlines - 1;
    }
}

/* Lists the lines that end at the '\n's `newlines` of a block that index_block took whole: its
 * `tokens`, the '\n's among them, are listed from tok on, and `spaced` is its whitespace outside
 * strings but the '\n's. */
static __attribute__((noinline)) void end_lines(const uint8_t *b, uint64_t newlines, uint64_t tokens, uint64_t spaced,
                                                const uint8_t **tok) {
    const uint32_t first = (uint32_t)(tok - token_at(0));
    do {
        const uint64_t nl = newlines & -newlines, before = nl - 1;
        end_of_line(b + __builtin_ctzll(newlines), first + (uint32_t)__builtin_popcountll(tokens & before), true,
                    (scan.spaced | (spaced & before)) != 0);
        spaced &= ~(nl | before);
        newlines &= newlines - 1;
    } while (newlines);
    scan.spaced = spaced; /* the next line's part */
}

/* Indexes the `left` bytes at b (64 at most): appends their tokens to tok, listing the lines
 * that end in them; returns the new end. */
static inline __attribute__((always_inline)) const uint8_t **index_block(const uint8_t *b, size_t left, const uint8_t **tok) {
    const uint64_t valid = left >= 64 ? ~0ull : (1ull << left) - 1;
    /* 16 bytes at a time, only as many as there are. */
    block bl = {0};
    classify16(&bl, b, 0);
    if (left > 16) classify16(&bl, b + 16, 16);
    if (left > 32) classify16(&bl, b + 32, 32);
    if (left > 48) classify16(&bl, b + 48, 48);
    const uint64_t rare = bl.rare & valid;
    /* A '\n' is a control character: only a block with one may end a line. */
    const uint64_t newlines = rare ? bytes_eq(b, '\n') & valid : 0;
    const uint64_t quotes = bl.quotes & valid;
    /* From each opening quote up to (not including) its closing quote. */
    const uint64_t inside = prefix_xor(quotes) ^ scan.in_string;
    /* The usual block has no byte to check, and its '\n's are outside strings: the lines they
     * end have no string open, and the next starts outside one, as the running state has it. */
    if ((rare & ~newlines) | (inside & newlines) | scan.escape_carry | scan.utf8_carry | scan.bad) {
        scan.bl = bl;
        return index_rare(b, valid, newlines, tok);
    }
    const uint64_t ws = bl.ws & valid, structural = bl.structural & valid;
    /* Bytes of numbers and literals (or of anything invalid) outside strings: a token where a
     * run of them starts. A '\n' is a token too: the one after its line's, which stops a walk
     * as NO_TOKEN does. */
    const uint64_t scalar = valid & ~(inside | quotes | structural | ws);
    const uint64_t tokens = (structural & ~inside) | (quotes & inside) |
                            (scalar & ~(scalar << 1 | scan.scalar_carry)) | newlines;
    const uint8_t **const end = put_tokens(tok, kind_at(tok), b, tokens);
    const uint64_t spaced = ws & ~inside & ~newlines;
    if (newlines)
        end_lines(b, newlines, tokens, spaced, tok);
    else
        scan.spaced |= spaced;
    scan.in_string = (uint64_t)((int64_t)inside >> 63);
    scan.scalar_carry = scalar >> 63;
    return end;
}

/* index_block over the blocks from b on, up to end or the first that starts with more tokens
 * listed than `limit` or with more lines than WINDOW_LINES less 64; sets scan.next to where it
 * stopped. One loop, without a call per block. */
static __attribute__((noinline)) const uint8_t **index_run(const uint8_t *b, const uint8_t *end, const uint8_t **tok,
                                                           const uint8_t **limit) {
    for (; b < end && tok <= limit && scan.nlines <= WINDOW_LINES - 64; b += 64) tok = index_block(b, (size_t)(end - b), tok);
    scan.next = b;
    return tok;
}

/*
 * Pass 1 over the bytes from start to end (FAST_OVERREAD readable bytes after them), 64 at a
 * time whatever the lines: lists each line's tokens in g.tokens from its first-th entry on, each
 * line's followed by its '\n''s, and lists the lines that end in the bytes in lines_ix
 * (scan.nlines of them). Each '\n' starts the line state afresh: a '\n' cannot be inside a valid
 * string, so a line whose string it would be in is invalid, and the next line is indexed as if
 * alone. The tokens are each structural character outside strings, each quote that opens a
 * string and the first byte of each run of other bytes outside strings (a number or a literal,
 * or something invalid). A line is invalid (`ok` false) for a control character other than tab
 * or CR outside strings, an invalid escape, an unterminated string or invalid UTF-8 (bytes >=
 * 0x80 outside strings are invalid too, and the walk finds those: they are not a number or a
 * literal). It stops early, at a block's start, where the window ends (WINDOW_TOKENS), or if no
 * line has ended and the first has FAST_MAX_LINE bytes or the token list cannot grow for it
 * (then marked bad). Returns the end of the tokens, the unfinished line's from scan.line_tok on.
 */
static const uint8_t **index_blocks(const uint8_t *const start, const uint8_t *const end, uint32_t first) {
    pl_buf *tb = &g.tokens;
    /* Room for a window and the 8 NO_TOKEN of index_line. */
    const size_t room = (WINDOW_TOKENS + BLOCK_ROOM + 8) * sizeof(const uint8_t *);
    scan.nlines = 0;
    start_line(start, first);
    tb->len = first * sizeof(const uint8_t *);
    g.kinds.len = first;
    /* g.kinds: as many, and the 16 match_shape may read past a line's. */
    if (!pl_buf_reserve(tb, room) || !pl_buf_reserve(&g.kinds, room / sizeof(const uint8_t *) + 16)) {
        scan.bad = true;
        return NULL;
    }
    const uint8_t **tok = token_at(first), **limit = tok + WINDOW_TOKENS;
    for (const uint8_t *b = start; b < end;) {
        tok = index_run(b, end, tok, limit);
        if ((b = scan.next) >= end) break;
        {
            if (scan.nlines) break;
            /* A line of more than WINDOW_TOKENS tokens: the list grows for it. */
            tb->len = (size_t)((const uint8_t *)tok - tb->data);
            g.kinds.len = tb->len / sizeof(const uint8_t *);
            if ((size_t)(b - scan.line) >= FAST_MAX_LINE || !pl_buf_reserve(tb, room) ||
                !pl_buf_reserve(&g.kinds, room / sizeof(const uint8_t *) + 16)) {
                scan.bad = true;
                break;
            }
            tok = (const uint8_t **)(void *)(tb->data + tb->len);
            limit = tok + WINDOW_TOKENS;
        }
        tok = index_block(b, (size_t)(end - b), tok);
        b += 64;
    }
    return tok;
}

/* index_blocks over a window of whole lines from start (the chunk's bytes up to end): returns
 * how many of its lines lines_ix lists. g.tokens.len is set past their tokens. */
static uint32_t index_window(const uint8_t *start, const uint8_t *end) {
    index_blocks(start, end, 0);
    g.tokens.len = scan.line_tok * sizeof(const uint8_t *);
    return scan.nlines;
}

/* index_blocks over the one line [start, end) (no '\n' in it, at most FAST_MAX_LINE bytes),
 * its tokens listed after g.tokens.len (those of the window it is handled amid stay) and
 * NO_TOKEN-terminated, eight times, for the look-ahead of walk_line and match_shape: sets *t and
 * *n to them, and g.spaced and g.escapes; false if the line is invalid. */
static bool index_line(const uint8_t *start, const uint8_t *end, const uint8_t *const **t, uint32_t *n) {
    const uint32_t first = (uint32_t)(g.tokens.len / sizeof(const uint8_t *));
    const uint8_t **tok = index_blocks(start, end, first);
    if (scan.bad || scan.in_string) return false;
    for (int k = 0; k < 8; k++) tok[k] = &NO_TOKEN;
    memset(kind_at(tok), 0, 8);
    *t = token_at(first);
    *n = (uint32_t)(tok - token_at(first));
    g.spaced = scan.spaced != 0;
    g.escapes = scan.escapes;
    return true;
}

/* Bit i set for each decimal digit among the 16 bytes at p. Shifted by 0x50, the digits are the
 * bytes 0x80 to 0x89, the only ones below (int8_t)0x8A: one signed compare, where an unsigned
 * one takes four instructions. */
static inline uint32_t digits16(const uint8_t *p) {
    const v128_t d = wasm_i8x16_add(wasm_v128_load(p), wasm_i8x16_splat(0x50));
    return (uint32_t)wasm_i8x16_bitmask(wasm_i8x16_lt(d, wasm_i8x16_splat((int8_t)0x8A)));
}

/* The number of decimal digits at p, found 16 bytes at a time (the line's last byte, '}' or
 * '\n', stops them). */
static inline size_t digit_run(const uint8_t *p) {
    for (size_t n = 0;; n += 16) {
        const uint32_t k = (uint32_t)__builtin_ctz(~digits16(p + n));
        if (k < 16) return n + k;
    }
}

/* The end of the JSON number at p, or NULL if there is none. */
PL_COLD const uint8_t *number_end_slow(const uint8_t *p) {
    p += *p == '-';
    if (*p == '0') {
        p++;
    } else if ((uint8_t)(*p - '1') < 9) {
        p += digit_run(p);
    } else {
        return NULL;
    }
    if (*p == '.') {
        const size_t n = digit_run(p + 1);
        if (!n) return NULL;
        p += 1 + n;
    }
    if ((*p | 0x20) == 'e') {
        p++;
        p += *p == '+' || *p == '-';
        const size_t n = digit_run(p);
        if (!n) return NULL;
        p += n;
    }
    return p;
}

/* number_end_slow, without a loop for the usual number: an integer part and maybe a fraction,
 * within 16 bytes (the digits of the 16 bytes at p in one mask). */
static inline const uint8_t *number_end(const uint8_t *p) {
    const uint32_t other = ~digits16(p);
    const uint32_t neg = p[0] == '-', whole = (uint32_t)__builtin_ctz(other >> neg);
    /* No digit, or a leading zero followed by digits (invalid). Bitwise: with && the compiler
     * makes a jump table of it. */
    if ((whole == 0) | ((whole > 1) & (p[neg] == '0'))) return NULL;
    uint32_t end = neg + whole;
    if (p[end] == '.') {
        const uint32_t frac = (uint32_t)__builtin_ctz(other >> (end + 1));
        if (!frac) return NULL;
        end += 1 + frac;
    }
    return end < 16 && (p[end] | 0x20) != 'e' ? p + end : number_end_slow(p);
}

/* The bytes that may follow a number or a literal: those that end a run of them in index_block
 * (whitespace and control characters, quotes and the structural characters). */
static const bool ENDS_SCALAR[256] = {[0 ... 0x20] = true, ['"'] = true, [','] = true, [':'] = true,
                                      ['['] = true,        [']'] = true, ['{'] = true, ['}'] = true};

/* Whether the token at v, the first byte of a run of bytes outside strings, is a number or a
 * literal, the whole run. */
static inline __attribute__((always_inline)) bool scalar_ok(const uint8_t *v) {
    const uint8_t *value_end;
    /* Numbers first: the usual scalar, told apart in two compares (a switch on the first byte
     * compiles to a jump table). */
    if ((uint8_t)(*v - '0') < 10 || *v == '-') {
        if (!(value_end = number_end(v))) return false;
    } else if (*v == 't' || *v == 'n') {
        if (memcmp(v, *v == 't' ? "true" : "null", 4)) return false;
        value_end = v + 4;
    } else if (*v == 'f') {
        if (memcmp(v, "false", 5)) return false;
        value_end = v + 5;
    } else {
        return false;
    }
    return ENDS_SCALAR[*value_end];
}

/* Whether `e` is the name of n <= 16 bytes whose 16 bytes (the name, then anything) are k. */
static inline bool entry_is(const entry *e, v128_t k, size_t n) {
    const uint32_t same = (uint32_t)wasm_i8x16_bitmask(wasm_i8x16_eq(k, wasm_v128_load(e->name16)));
    return e->len == n && ((same | 0xFFFFu << n) & 0xFFFF) == 0xFFFF;
}

/* find_entry for names of more than 16 bytes or with an escape, and past the first entry of
 * their slot. */
PL_COLD int32_t find_entry_slow(int32_t node, const uint8_t *key, const uint8_t *key_end) {
    const size_t n = (size_t)(key_end - key);
    if (g.escapes && pl_memchr(key, '\\', n)) {
        /* The name's text is not the name: decode it. */
        for (uint32_t i = 0; i < g.nentries; i++)
            if (g.entries[i].node == node && string_is((span){key - 1, key_end + 1}, g.entries[i].name, g.entries[i].len))
                return (int32_t)i;
        return -1;
    }
    for (int32_t i = g.slots[node][name_hash(key, n)]; i >= 0; i = g.entries[i].next)
        if (g.entries[i].len == n && memcmp(key, g.entries[i].name, n) == 0) return i;
    return -1;
}

/* The entry of `node` for the member name [key, key_end), or -1. The name is followed by at
 * least 16 readable bytes (the rest of the line and FAST_OVERREAD more). */
static inline __attribute__((always_inline)) int32_t find_entry(int32_t node, const uint8_t *key,
                                                               const uint8_t *key_end) {
    const size_t n = (size_t)(key_end - key);
    if (n > 16) return find_entry_slow(node, key, key_end);
    /* The usual name: at most 16 bytes, no escape, the first in its slot. Compared in one go,
     * the bytes past the name masked off. */
    const v128_t k = wasm_v128_load(key);
    if (g.escapes && (uint32_t)wasm_i8x16_bitmask(wasm_i8x16_eq(k, wasm_i8x16_splat('\\'))) & ~(0xFFFFu << n))
        return find_entry_slow(node, key, key_end);
    const int32_t i = g.slots[node][name_hash(key, n)];
    if (i < 0 || entry_is(&g.entries[i], k, n)) return i;
    return g.entries[i].next < 0 ? -1 : find_entry_slow(node, key, key_end);
}

/* The walk's state (walk_line). */
typedef struct walk {
    const uint8_t *const *t; /* the next token */
    int32_t node;            /* the node of the innermost object, -1 if none */
    int32_t pending;         /* the path the open member's value is the value of, or -1 */
    int32_t child;           /* the node of the open member's value, if it is an object, or -1 */
    const uint8_t *value;    /* where the open member's value starts */
} walk;

/* A name came again in one object: what the earlier one led to is forgotten (the last one
 * counts, as in Python's json module). */
PL_COLD void forget(const entry *e) {
    for (uint32_t k = 0; k < e->npaths; k++) g.found[e->paths[k]].p = NULL;
}

/* The last byte before p that is not whitespace, +1: the end of a value or a member name
 * followed by whitespace. */
PL_COLD const uint8_t *trim_end(const uint8_t *p) {
    while (p[-1] <= ' ') p--;
    return p;
}

/* The closing quote of the member name whose ':' is at colon: the last byte before it that is
 * not whitespace. */
static inline const uint8_t *name_end(const uint8_t *colon) { return colon[-1] == '"' ? colon - 1 : trim_end(colon) - 1; }

/* At a member of the object at `depth`: its name and ':' (false if they are not there); matches
 * the name in the object's node and moves on to the value. */
static inline __attribute__((always_inline)) bool member(walk *w, uint32_t depth) {
    const uint8_t *const *t = w->t;
    const uint8_t *const colon = t[1];
    if (**t != '"' || *colon != ':') return false;
    w->value = t[2];
    w->t = t + 2;
    if (w->node < 0) return true;
    const int32_t i = find_entry(w->node, t[0] + 1, name_end(colon));
    if (i >= 0) {
        entry *e = &g.entries[i];
        /* With duplicate names the last one counts. The value of a path the name ends is simply
         * found again; but paths that go on into an object the name leads to must be forgotten,
         * for the last object may not have them. An object is told apart from others of its node
         * by line and depth: two in one line at one depth come from a name that came again
         * further out, which forgot all they led to. */
        if (e->child >= 0) {
            const uint64_t stamp = g.line_no << 6 | depth;
            if (e->seen == stamp) forget(e);
            e->seen = stamp;
        }
        w->pending = e->path;
        w->child = e->child;
    }
    return true;
}

/*
 * Pass 2 of the fast path, over the tokens index_blocks listed for a line (NO_TOKEN after them): checks that they are one JSON
 * object and sets g.found as resolve would (the values' text as written, whitespace included).
 * It accepts only what pl_json_compact accepts, so a line it turns down (returning false) goes to
 * slow_line, which finds the error to report; it also turns down valid lines nested deeper than
 * FAST_MAX_DEPTH.
 */
static __attribute__((noinline)) bool walk_line(const uint8_t *const *const tokens, const uint8_t *const *const t_end) {
    /* Per open container, the walk's state in the member it is the value of. */
    static struct {
        int32_t node, pending;
        const uint8_t *value;
    } saved[FAST_MAX_DEPTH + 1];
    walk w = {tokens, -1, -1, g.nnodes ? 0 : -1, NULL};
    uint64_t objects = 0; /* bit per open container (1 << depth): 1 object, 0 array */
    uint32_t depth = 0;
    bool in_object = false; /* the innermost container is an object */
    bool closed = false;    /* a container just closed: no value to read */
    if (**w.t != '{') return false;
    /* The line is a value, an object: its '{' is the first token. Each round reads a value
     * (unless a container just closed), then the ',' and the next member name, or the end of
     * its container. One loop, not two nested: wasmtime checks for interruption at each. */
    for (;;) {
        const uint8_t *const v = *w.t;
        if (closed) {
            closed = false;
        } else if (*v == '"') {
            w.t++;
        } else if ((*v | 0x20) == '{') { /* '{' or '[' */
            if (depth == FAST_MAX_DEPTH) return false;
            saved[depth].node = w.node;
            saved[depth].pending = w.pending;
            saved[depth].value = w.value;
            depth++;
            in_object = *v == '{';
            objects = in_object ? objects | 1ull << depth : objects & ~(1ull << depth);
            w.node = in_object ? w.child : -1;
            w.pending = w.child = -1;
            w.t++;
            if (**w.t != (in_object ? '}' : ']')) {
                if (in_object && !member(&w, depth)) return false;
                continue;
            }
            /* Empty: closed below. */
        } else {
            if (!scalar_ok(v)) return false;
            w.t++;
        }
        const uint8_t *const after = *w.t;
        if (w.pending >= 0) {
            /* The value ends at the last byte before this token that is not whitespace. */
            g.found[w.pending] = (span){w.value, after[-1] > ' ' ? after : trim_end(after)};
            w.pending = -1;
        }
        w.child = -1;
        if (*after == ',') {
            w.t++;
            if (in_object && !member(&w, depth)) return false;
            continue;
        }
        if (*after != (in_object ? '}' : ']')) return false;
        w.t++;
        if (!--depth) return w.t == t_end;
        in_object = objects >> depth & 1;
        w.node = saved[depth].node;
        w.pending = saved[depth].pending;
        w.value = saved[depth].value;
        closed = true;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Shapes                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/*
 * JSON Lines mostly repeat a few shapes: the same names in the same order around values of the
 * same kinds. walk_line's steps depend only on the kind of each token (which structural
 * character, a quote, or anything else: a number or a literal), on the text of the member names
 * and on whether each number or literal is valid. So a line with as many tokens as one it took
 * before, of the same kinds, with the same names (as written) and valid numbers and literals, it
 * would take too, in the same steps, finding each path's value at the same token. match_shape
 * checks exactly that in a few tight loops and sets g.found from the recorded token places:
 * about 1,040 instead of 1,500 instructions for a line of the benchmark's events.
 */

/* Shapes are kept per token count modulo this (the benchmark's four shapes have four counts). */
#define SHAPE_SLOTS 16u
/* Lines with more tokens, names, numbers and literals, or a longer name, get no shape. */
#define SHAPE_MAX_TOKENS 256u
#define SHAPE_MAX_NAMES 64u /* short and long together */
#define SHAPE_MAX_SCALARS 64u
#define SHAPE_NAME_BYTES 32u /* a name's text, quotes included: two vectors */
/* A shape is replaced when the lines of its slot missed it this much more often than they
 * matched it: two shapes taking turns in a slot do not replace each other on every line. */
#define SHAPE_TRUST_NEW 2
#define SHAPE_TRUST_MAX 8

/* Whether a token's first byte is its kind: the structural characters and the quote. Any other
 * first byte (a number, a literal, or not JSON) is one kind, which the shape checks with
 * scalar_ok at each of its places instead. */
static const bool IS_KIND[256] = {['"'] = 1, [','] = 1, [':'] = 1, ['['] = 1, [']'] = 1, ['{'] = 1, ['}'] = 1};

/* A line's shape, as recorded by record_shape. Token places, not pointers: nothing points into
 * the input area between calls. */
typedef struct shape {
    uint32_t ntokens; /* 0: none recorded */
    int32_t trust;    /* matches minus misses since recorded (see SHAPE_TRUST_NEW) */
    uint32_t nshort, nlong, nscalars, nfound;
    uint32_t nfilter; /* the first nfilter places are the filter's paths' (see match_shape) */
    struct place *places; /* its room in shape_places (a pointer: no division per line to find it) */
    /* Per token its first byte, or 0 for a number or a literal (with kind_mask 0 there); then 0
     * for the 16 match_shape may read past the line's tokens. */
    uint8_t kinds[SHAPE_MAX_TOKENS + 16], kind_mask[SHAPE_MAX_TOKENS + 16];
    /* The member names (the tokens that open them, and their text, quotes included): those of
     * up to 8 bytes compared as one uint64_t under a mask, the others as two vectors. */
    uint16_t short_at[SHAPE_MAX_NAMES + 3], long_at[SHAPE_MAX_NAMES];
    uint64_t short_text[SHAPE_MAX_NAMES + 3], short_mask[SHAPE_MAX_NAMES + 3];
    uint8_t long_len[SHAPE_MAX_NAMES];
    uint8_t long_text[SHAPE_MAX_NAMES][SHAPE_NAME_BYTES] __attribute__((aligned(16)));
    uint16_t scalar_at[SHAPE_MAX_SCALARS];
} shape;

/* A path the shape has a value for: the token that starts the value and the token after it. */
typedef struct place {
    uint16_t path, at, after;
} place;

static shape shapes[SHAPE_SLOTS];
/* Per shape, room for a place per path (SHAPE_SLOTS x g.paths.n); shape.nfound are used. */
static place *shape_places;
/* The places match_shape left for end_line to set, of the line's tokens rest_t: a line the filter
 * drops (most, as a rule) needs only the filter's paths. */
static const place *rest, *rest_end;
static const uint8_t *const *rest_t;
/* Per path, whether the filter compares it. */
static bool *filter_path;

/* Marks the paths the condition c compares in filter_path. */
static void mark_filter_paths(const cond *c) {
    if (c->kind == COND_COMPARE) filter_path[c->path] = true;
    for (uint32_t i = 0; i < c->nparts; i++) mark_filter_paths(&c->parts[i]);
}

/* Room for the places of every slot's shape, and filter_path; non-zero if memory ran out. */
static int shapes_init(void) {
    if (!(shape_places = calloc(SHAPE_SLOTS * g.paths.n + 1, sizeof *shape_places)) ||
        !(filter_path = calloc(g.paths.n + 1, sizeof *filter_path)))
        return -1;
    for (uint32_t i = 0; i < SHAPE_SLOTS; i++) shapes[i].places = shape_places + (size_t)i * g.paths.n;
    if (cfg.has_filter) mark_filter_paths(&cfg.filter);
    return 0;
}

/* Sets g.found from the places [pl, end) of the tokens t. */
static inline void set_places(const place *pl, const place *const end, const uint8_t *const *t) {
    for (; pl < end; pl++) {
        const uint8_t *const after = t[pl->after];
        g.found[pl->path] = (span){t[pl->at], after[-1] > ' ' ? after : trim_end(after)};
    }
}

/* Whether the first bytes of 16 tokens (their twins in g.kinds at got) are k[0..15] where
 * mask[0..15] is 0xFF: one vector, one branch for the 16. */
static inline bool kinds16(const uint8_t *got, const uint8_t *k, const uint8_t *mask) {
    const v128_t have = wasm_v128_and(wasm_v128_load(got), wasm_v128_load(mask));
    return !wasm_v128_any_true(wasm_v128_xor(have, wasm_v128_load(k)));
}

/* Whether the member name at p (followed by at least SHAPE_NAME_BYTES readable bytes) is the
 * long name k of s, as written. Equal text up to and including the closing quote is the same
 * name: a quote escaped in one is escaped in the other, by the same bytes before it. */
static inline bool long_name_is(const shape *s, uint32_t k, const uint8_t *p) {
    const uint8_t *n = s->long_text[k];
    const uint64_t same = (uint64_t)(uint32_t)wasm_i8x16_bitmask(wasm_i8x16_eq(wasm_v128_load(p), wasm_v128_load(n))) |
                          (uint64_t)(uint32_t)wasm_i8x16_bitmask(wasm_i8x16_eq(wasm_v128_load(p + 16), wasm_v128_load(n + 16)))
                              << 16;
    return ((same | ~0ull << s->long_len[k]) & 0xFFFFFFFFu) == 0xFFFFFFFFu;
}

/* Whether the line's n tokens at t have the shape s; if so, sets g.found as walk_line would. */
static __attribute__((noinline)) bool match_shape(const shape *s, const uint8_t *const *t, uint32_t n) {
    /* Groups of 16 read at most 15 kinds past the line's: its '\n''s and the next line's, or
     * NO_TOKEN's, or room g.kinds keeps (compared under a zero mask). */
    const uint8_t *const got = kind_at(t);
    for (uint32_t i = 0; i < n; i += 16)
        if (!kinds16(got + i, s->kinds + i, s->kind_mask + i)) return false;
    /* Four names a round, their differences or-ed: a quarter of the rounds (each with an
     * interruption check) and branches. The short names have room for three past nshort (kept
     * 0: the line's first token, compared under a zero mask). */
    uint64_t diff = 0;
    for (uint32_t k = 0; k < s->nshort; k += 4) {
        for (uint32_t i = k; i < k + 4; i++) {
            uint64_t a;
            memcpy(&a, t[s->short_at[i]], 8);
            diff |= (a ^ s->short_text[i]) & s->short_mask[i];
        }
    }
    if (diff) return false;
    for (uint32_t k = 0; k < s->nlong; k++)
        if (!long_name_is(s, k, t[s->long_at[k]])) return false;
    for (uint32_t k = 0; k < s->nscalars; k++)
        if (!scalar_ok(t[s->scalar_at[k]])) return false;
    const place *const pl = s->places;
    set_places(pl, pl + s->nfilter, t);
    rest = pl + s->nfilter;
    rest_end = pl + s->nfound;
    rest_t = t;
    return true;
}

/* The token place of p among the n tokens at t: the first at or after it. */
static uint16_t place_of(const uint8_t *const *t, uint32_t n, const uint8_t *p) {
    uint32_t i = 0;
    while (i < n && t[i] < p) i++;
    return (uint16_t)i;
}

/* Adds the member name of len bytes at p, token i, to s; false if s has no room for it. */
static bool record_name(shape *s, uint32_t i, const uint8_t *p, size_t len) {
    if (s->nshort + s->nlong == SHAPE_MAX_NAMES || len > SHAPE_NAME_BYTES) return false;
    if (len <= 8) {
        uint64_t text = 0;
        memcpy(&text, p, len);
        s->short_text[s->nshort] = text;
        s->short_mask[s->nshort] = ~0ull >> (64 - 8 * len);
        s->short_at[s->nshort++] = (uint16_t)i;
    } else {
        memset(s->long_text[s->nlong], 0, SHAPE_NAME_BYTES);
        memcpy(s->long_text[s->nlong], p, len);
        s->long_len[s->nlong] = (uint8_t)len;
        s->long_at[s->nlong++] = (uint16_t)i;
    }
    return true;
}

/* Records the shape of the line whose n tokens at t walk_line just took into s (leaving s
 * empty if the line has too many names or scalars, or a name too long). */
PL_COLD void record_shape(shape *s, const uint8_t *const *t, uint32_t n) {
    s->ntokens = 0;
    s->nshort = s->nlong = s->nscalars = s->nfound = s->nfilter = 0;
    for (uint32_t i = 0; i < n; i++) {
        const bool kind = IS_KIND[*t[i]];
        s->kinds[i] = kind ? *t[i] : 0;
        s->kind_mask[i] = kind ? 0xFF : 0;
        if (!kind) {
            if (s->nscalars == SHAPE_MAX_SCALARS) return;
            s->scalar_at[s->nscalars++] = (uint16_t)i;
        } else if (*t[i] == '"' && *t[i + 1] == ':') { /* a string before a ':' is a member name */
            if (!record_name(s, i, t[i], (size_t)(name_end(t[i + 1]) + 1 - t[i]))) return;
        }
    }
    memset(s->kinds + n, 0, 16);
    memset(s->kind_mask + n, 0, 16);
    for (uint32_t k = s->nshort; k < s->nshort + 3; k++) { /* match_shape compares names four at a time */
        s->short_at[k] = 0;
        s->short_text[k] = s->short_mask[k] = 0;
    }
    /* A value starts at a token; the token after it is the first at or past its end (the
     * tokens inside a container are before its end). */
    place *pl = s->places;
    for (int filter = 1; filter >= 0; filter--) {
        for (uint32_t k = 0; k < g.paths.n; k++) {
            const span v = g.found[k];
            if (v.p && filter_path[k] == filter)
                pl[s->nfound++] = (place){(uint16_t)k, place_of(t, n, v.p), place_of(t, n, v.end)};
        }
        if (filter) s->nfilter = s->nfound;
    }
    s->ntokens = n;
    s->trust = SHAPE_TRUST_NEW;
}

/* Pass 2 of the fast path: match_shape if the line has the shape of its slot, else walk_line
 * (recording the line's shape if the slot's one has lost its trust). */
static bool walk_tokens(const uint8_t *const *const t, const uint32_t n) {
    shape *s = &shapes[n % SHAPE_SLOTS];
    if (s->ntokens == n && match_shape(s, t, n)) {
        s->trust += s->trust < SHAPE_TRUST_MAX;
        return true;
    }
    s->trust -= s->trust > 0;
    rest = rest_end; /* walk_line sets every path's value */
    if (!walk_line(t, t + n)) return false;
    if (!s->trust && n <= SHAPE_MAX_TOKENS) record_shape(s, t, n);
    return true;
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

/* A line that is not blank: counted, and its paths not found yet. */
static void begin_line(uint64_t line_no) {
    pl_stats.records_in++;
    /* Eight spans a round, in four vector stores: one round (one interruption check) for up to
     * eight paths. g.found has room for whole groups of eight. */
    for (uint32_t k = 0; k < g.paths.n; k += 8)
        for (int v = 0; v < 8; v += 2) wasm_v128_store(&g.found[k + v], wasm_i64x2_splat(0));
    g.line_no = line_no;
}

/* A line the fast path turned down. */
PL_COLD int other_line(const uint8_t *line, size_t len, uint64_t line_no) {
    g.spaced = false;
    g.escapes = true;
    return slow_line(line, len, line_no);
}

/* The object `obj` of a line the fast path took: filtered and written. */
static int end_line(const uint8_t *obj_p, const uint8_t *obj_end) {
    /* Pointers, not a span: a struct argument would pass through memory (wasm32's C ABI). */
    span obj = {obj_p, obj_end};
    if (cfg.has_filter && !filter_holds()) return 0;
    set_places(rest, rest_end, rest_t);
    pl_stats.records_out++;
    if (!cfg.select.n && (g.spaced || cfg.rename_from.n)) {
        /* The whole object is written: compact it (renaming walks its compact members). */
        pl_buf *c = &g.compact;
        c->len = 0;
        if (!pl_buf_reserve(c, (size_t)(obj.end - obj.p) + 1)) return pl_fail_str("out of memory");
        uint8_t *d = compact_into(c->data, obj.p, obj.end);
        *d = 0; /* padding for pl_json_compact_skip */
        obj = (span){c->data, d};
    }
    return write_line(obj.p, obj.end);
}

/* A line from the SDK's framer (pl_lines): one that began in an earlier chunk, or at the start
 * of the stream; or one index_window did not take. */
static int on_line(void *ctx, const uint8_t *line, size_t len, uint64_t line_no) {
    (void)ctx;
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) i++;
    if (i == len) return 0; /* a blank line */
    size_t n = len;
    while (is_ws(line[n - 1])) n--;
    begin_line(line_no);
    const uint8_t *const *t;
    uint32_t nt;
    if (line[i] != '{' || line[n - 1] != '}' || n - i > FAST_MAX_LINE || !overread_ok(line + n) ||
        !index_line(line + i, line + n, &t, &nt) || !walk_tokens(t, nt))
        return other_line(line, len, line_no);
    return end_line(line + i, line + n);
}

/* A line that index_window took, up to its '\n' (less a '\r' before it: len bytes). */
static int indexed_line(const uint8_t *line, size_t len, uint64_t line_no, const line_ix *x) {
    /* No token: nothing but spaces, tabs and CRs (any other byte is a token or made it invalid). */
    if (!x->ntok) return 0;
    begin_line(line_no);
    g.spaced = x->spaced;
    g.escapes = x->escapes;
    const uint8_t *const *const t = token_at(x->tok);
    if (!walk_tokens(t, x->ntok)) return other_line(line, len, line_no);
    return end_line(t[0], t[x->ntok - 1] + 1);
}

/* Hands the line [p, nl) over, as the SDK's framer does (pl__lines_deliver): a '\r' before the
 * '\n' dropped, max_line_bytes checked, numbered in g.lines. x is its index, or NULL. */
static inline int deliver(const uint8_t *p, const uint8_t *nl, const line_ix *x) {
    pl_lines *l = &g.lines;
    size_t n = (size_t)(nl - p);
    /* As fast as a line gets past the index: one of FAST_MAX_LINE bytes or more is not taken. */
    const bool indexed = x && x->ok && n < FAST_MAX_LINE;
    if (n && p[n - 1] == '\r') n--;
    if (n > l->max_line_bytes) return pl__lines_too_long(l);
    const int rc = indexed ? indexed_line(p, n, l->line_no, x) : on_line(NULL, p, n, l->line_no);
    l->line_no++;
    return rc;
}

/*
 * The lines that end in the chunk are framed here, by the fast path's index (the '\n's are
 * found by the same 64-byte blocks that classify the lines' bytes, a window of lines at a time)
 * rather than by the SDK's framer, which would first search every line for its '\n'. The framer
 * still takes what it must hold: the stream's first bytes (a BOM), a line begun in an earlier
 * chunk, and the chunk's last line if it does not end in it.
 */
static int pl_guest_process(const uint8_t *data, size_t len) {
    pl_lines *l = &g.lines;
    const uint8_t *p = data, *const end = data + len;
    g.tokens.len = 0; /* no window's tokens to keep */
    if (l->bom < 3 || l->partial.len) {
        const uint8_t *nl = pl_memchr(p, '\n', len);
        if (!nl) return pl_lines_feed(l, p, len);
        if (pl_lines_feed(l, p, (size_t)(nl + 1 - p))) return -1;
        p = nl + 1;
    }
    while (p < end) {
        const uint32_t nlines = overread_ok(end) ? index_window(p, end) : 0;
        if (!nlines) {
            /* No line ends in what the index took: one of FAST_MAX_LINE bytes or more (or one the
             * token list could not grow for), or the chunk's unfinished last line. */
            const uint8_t *const nl = pl_memchr(p, '\n', (size_t)(end - p));
            if (!nl) break;
            const int rc = deliver(p, nl, NULL);
            if (rc) return rc;
            p = nl + 1;
            continue;
        }
        for (const line_ix *x = lines_ix, *const x_end = x + nlines; x < x_end; x++) {
            const int rc = deliver(p, x->nl, x);
            if (rc) return rc;
            p = x->nl + 1;
        }
    }
    return p < end ? pl_lines_feed(l, p, (size_t)(end - p)) : 0;
}

static int pl_guest_finish(void) {
    g.tokens.len = 0;
    return pl_lines_finish(&g.lines);
}
