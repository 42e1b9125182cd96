/*
 * pl_helpers.h — small helpers shared by builtin guests, on top of pipeline_guest.h (include it
 * first). Kept out of the SDK header so that its sections stay with their owners.
 */
#ifndef PL_HELPERS_H
#define PL_HELPERS_H

#include "pipeline_guest.h"

/* For a guest that takes no config: accepts an empty config or an empty JSON object, and fails
 * with "config: unknown key 'k' (<guest> takes no config)" for any key. */
PL_COLD int pl_config_none(const uint8_t *config, size_t len, const char *guest) {
    pl_json j;
    int rc = pl_config_open(&j, config, len);
    if (rc) return rc < 0 ? -1 : 0;
    pl_str key;
    int more = pl_json_next(&j, &key);
    if (more > 0) {
        pl_buf m = {0};
        pl_buf_puts(&m, "config: unknown key '");
        pl_buf_put(&m, key.ptr, key.len);
        pl_buf_puts(&m, "' (");
        pl_buf_puts(&m, guest);
        pl_buf_puts(&m, " takes no config)");
        pl_str_free(&key);
        return pl_fail_buf(&m);
    }
    if (more < 0 || pl_json_done(&j)) return pl_json_fail(&j, "config");
    return 0;
}

/* Rejects a CSV record (pl_reject) with the reason in `reason`, its fields written back as one
 * CSV row (quoted as csv-map quotes its output); `scratch` is a buffer the caller keeps. */
PL_COLD int pl_reject_csv_record(const pl_csv_record *rec, const pl_buf *reason, pl_buf *scratch) {
    scratch->len = 0;
    for (uint32_t i = 0; i < rec->count; i++) {
        const pl_field *f = &rec->fields[i];
        if (i) pl_buf_putc(scratch, ',');
        if (!(f->flags & PL_FIELD_NEEDS_QUOTING) && (f->len || rec->count > 1)) {
            pl_buf_put(scratch, f->ptr, f->len);
        } else if (pl_buf_reserve(scratch, 2 * f->len + 2)) {
            scratch->len = (size_t)(pl_csv_quote_into(scratch->data + scratch->len, f->ptr, f->len) - scratch->data);
        }
    }
    if (scratch->oom) return pl_fail_str("out of memory");
    return pl_reject(rec->line, reason, scratch->data, scratch->len);
}

/* pl_reject_csv_record for row r of a batch. */
PL_COLD int pl_reject_csv_row(const pl_csv_batch *b, const pl_csv_row *r, const pl_buf *reason, pl_buf *scratch) {
    pl_csv_record rec;
    return pl_csv_record_of(b, r, &rec) || pl_reject_csv_record(&rec, reason, scratch);
}

/* Rejects a row whose field count differs from the header's `expected`, with the reason
 * "expected 4 fields, got 5" built in `reason` (a buffer the caller keeps, like `scratch`). */
PL_COLD int pl_reject_field_count(const pl_csv_batch *b, const pl_csv_row *r, uint32_t expected, pl_buf *reason,
                                  pl_buf *scratch) {
    reason->len = 0;
    pl_buf_puts(reason, "expected ");
    pl_buf_put_u64(reason, expected);
    pl_buf_puts(reason, expected == 1 ? " field, got " : " fields, got ");
    pl_buf_put_u64(reason, r->count);
    return pl_reject_csv_row(b, r, reason, scratch);
}

/* Fails with "<what>: column '<name>' is not in the header (columns: a, b, c)", the list cut
 * with ", ..." after about 1000 bytes. */
PL_COLD int pl_fail_not_in_header(const char *what, const pl_str *name, const pl_csv_record *h) {
    pl_buf m = {0};
    pl_buf_puts(&m, what);
    pl_buf_puts(&m, ": column '");
    pl_buf_put(&m, name->ptr, name->len);
    pl_buf_puts(&m, "' is not in the header (columns: ");
    for (uint32_t i = 0; i < h->count && m.len <= 1000; i++) {
        if (i) pl_buf_puts(&m, ", ");
        pl_buf_put(&m, h->fields[i].ptr, h->fields[i].len);
    }
    pl_buf_puts(&m, m.len > 1000 ? ", ...)" : ")");
    return pl_fail_buf(&m);
}

#endif /* PL_HELPERS_H */
