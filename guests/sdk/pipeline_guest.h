/*
 * pipeline_guest.h — C SDK for wasm-pipeline guests (guest ABI v1).
 *
 * Header-only. Include it in exactly one translation unit: a guest is one .c file built with
 *
 *   python -m ziglang cc -target wasm32-wasi -O2 -s -mexec-model=reactor -msimd128 \
 *       -Wl,-z,stack-size=65536 -I guests/sdk -o x.wasm x.c
 *
 * What it gives a guest, section by section:
 *   1. The ABI: host imports (pl_emit, pl_fail, pl_log) and, in section 4, the exports every
 *      guest has (pl_abi_version, pl_input_buffer, pl_input_capacity, pl_counters, pl_init,
 *      pl_process, pl_finish). The guest implements three hooks instead of the raw exports:
 *
 *          static int pl_guest_init(const uint8_t *config, size_t len);
 *          static int pl_guest_process(const uint8_t *data, size_t len);
 *          static int pl_guest_finish(void);
 *
 *      `config` and `data` point into the input area, whose contents are NOT preserved across
 *      checkpoints: copy anything needed after the hook returns. pl_process and pl_finish flush
 *      every output port after their hook returns 0. The guest keeps pl_stats (the counters)
 *      current.
 *   2. Allocation sizing, short copies and memchr (pl_copy, pl_memchr), and a growable byte
 *      buffer (pl_buf) for messages and scratch data.
 *   3. Buffered output ports (pl_out): bytes are gathered in a PL_OUT_CAP buffer per port and
 *      handed to the host when a buffer is full and when pl_process or pl_finish returns.
 *   4. The ABI exports.
 *   5. UTF-8 byte order mark handling for the framers.
 *   6. A line framer (pl_lines) for JSON Lines style input.
 *   7. A CSV record framer (pl_csv) that reproduces Python's csv.reader (excel dialect,
 *      strict=False, file opened with newline='') byte for byte, fed arbitrary chunks.
 *   8. CSV field writing, ASCII/Latin-1 case mapping, decimal number parsing.
 *   9. A small pull-style JSON reader for configuration objects.
 *  10. Typed values: 64-bit integers and ISO 8601 dates.
 *  11. Config helpers, UTF-8 checking, JSON string output, and a streaming JSON value scanner
 *      (pl_json_stream).
 *  12. The rejects output ("line,reason,record" CSV on port 1).
 *
 * Error contract, everywhere in this SDK: a function returns 0 on success and non-zero on
 * failure. The code that detects a failure calls pl_fail() exactly once with a message for the
 * user; everything above it only propagates the non-zero status. Hooks return that status to the
 * host unchanged.
 *
 * All state lives in linear memory (static data and malloc), so a memory snapshot taken between
 * calls captures a guest completely.
 */
#ifndef PIPELINE_GUEST_H
#define PIPELINE_GUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __wasm_simd128__
#include <wasm_simd128.h>
#endif

#define PL_API static inline __attribute__((unused))
/* For functions off the hot path: keeping them out of line keeps the hot loops small, which
 * matters to the JIT compiling the module (fewer live values, no register spills). */
#define PL_COLD static __attribute__((unused, noinline))
#define PL_EXPORT(name) __attribute__((export_name(name), visibility("default")))
#define PL_IMPORT(name) __attribute__((import_module("pipeline"), import_name(name)))

#define PL_ABI_VERSION 1

/* Input area: 1 MiB, the host's default chunk size. */
#ifndef PL_INPUT_CAP
#define PL_INPUT_CAP (1u << 20)
#endif
/* Output buffer per port; flushed through pl_emit when full. */
#ifndef PL_OUT_CAP
#define PL_OUT_CAP (256u << 10)
#endif
/* Number of output ports the guest uses (0 main, 1 rejects, 2.. named outputs). */
#ifndef PL_OUTPUT_PORTS
#define PL_OUTPUT_PORTS 2
#endif

/* Log levels for pl_log. */
enum { PL_LOG_DEBUG = 0, PL_LOG_INFO = 1, PL_LOG_WARN = 2, PL_LOG_ERROR = 3 };

/* ------------------------------------------------------------------------------------------ */
/* 1. ABI                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Hands `len` bytes at `ptr` to output `port`. Non-zero: the host refused them. */
PL_IMPORT("pl_emit") int32_t pl_emit(int32_t port, const void *ptr, int32_t len);
/* Sets the error message of the current call (the call then returns non-zero). */
PL_IMPORT("pl_fail") void pl_fail(const void *ptr, int32_t len);
/* One log line at `level` (PL_LOG_*). */
PL_IMPORT("pl_log") void pl_log(int32_t level, const void *ptr, int32_t len);

/* The guest's hooks (see the top of this file). */
static int pl_guest_init(const uint8_t *config, size_t len);
static int pl_guest_process(const uint8_t *data, size_t len);
static int pl_guest_finish(void);

/* Record counters read by the host through pl_counters(); the guest keeps them current. */
typedef struct pl_counters_t {
    uint64_t records_in;       /* data records read (not headers, not blank lines) */
    uint64_t records_out;      /* records written to the main output */
    uint64_t records_rejected; /* records written to the rejects output */
} pl_counters_t;

static pl_counters_t pl_stats;
/* Bytes readable past the end of any span the SDK hands out, so that short copies can move
 * whole 16-byte blocks (see pl_copy_over). */
#define PL_PAD 16u
/* An empty span with PL_PAD readable bytes. */
static const uint8_t pl__empty[PL_PAD];

/* Reports `s` (NUL-terminated) as the error of the current call; returns -1 for chaining. */
PL_API int pl_fail_str(const char *s) {
    pl_fail(s, (int32_t)strlen(s));
    return -1;
}

/* Logs the NUL-terminated string `s` at `level`. */
PL_API void pl_log_str(int32_t level, const char *s) { pl_log(level, s, (int32_t)strlen(s)); }

/* ------------------------------------------------------------------------------------------ */
/* 2. Allocation sizes, short copies, pl_buf (a growable byte buffer)                         */
/* ------------------------------------------------------------------------------------------ */

/*
 * Allocation sizes. malloc (zig's libc for wasm32) adds a 16-byte header and a 4-byte free-list
 * link to each block and serves blocks in power-of-two sizes (64 KiB pages and up for large
 * ones), keeping freed blocks for reuse at the same size. A buffer grown by realloc should ask for
 * 2^k - PL_MALLOC_HEADER bytes: a few bytes more take a block twice as large.
 */
#define PL_MALLOC_HEADER 32u

/* The allocation size to grow a buffer of `current` bytes to when it must hold `need`: more than
 * 1.5 x `current` (amortised growth), of the form 2^k - PL_MALLOC_HEADER; 0 if too large. */
PL_COLD size_t pl_grow_size(size_t current, size_t need) {
    size_t size = 256;
    while (size - PL_MALLOC_HEADER < need || size - PL_MALLOC_HEADER < current + current / 2) {
        if (size > SIZE_MAX / 2) return 0;
        size *= 2;
    }
    return size - PL_MALLOC_HEADER;
}

/*
 * Copies n bytes; tuned for the short spans of CSV fields (one or two unaligned loads and
 * stores per copy, no library call below 64 bytes). Never reads or writes outside
 * [src, src+n) and [dst, dst+n).
 */
PL_API void pl_copy(uint8_t *dst, const uint8_t *src, size_t n) {
    if (n <= 16) {
        if (n >= 8) {
            uint64_t a, b;
            memcpy(&a, src, 8);
            memcpy(&b, src + n - 8, 8);
            memcpy(dst, &a, 8);
            memcpy(dst + n - 8, &b, 8);
        } else if (n >= 4) {
            uint32_t a, b;
            memcpy(&a, src, 4);
            memcpy(&b, src + n - 4, 4);
            memcpy(dst, &a, 4);
            memcpy(dst + n - 4, &b, 4);
        } else if (n) {
            uint8_t a = src[0], b = src[n / 2], c = src[n - 1];
            dst[0] = a;
            dst[n / 2] = b;
            dst[n - 1] = c;
        }
        return;
    }
#ifdef __wasm_simd128__
    if (n <= 64) {
        /* 17..64 bytes: 16-byte blocks from the front, then one (overlapping) last block. */
        v128_t last = wasm_v128_load(src + n - 16);
        for (size_t i = 0; i + 16 < n; i += 16) wasm_v128_store(dst + i, wasm_v128_load(src + i));
        wasm_v128_store(dst + n - 16, last);
        return;
    }
#endif
    memcpy(dst, src, n);
}

/*
 * memchr, 16 bytes at a time: the first `c` in the n bytes at p, or NULL. (The libc memchr of
 * wasm32 goes byte by byte: several times slower on lines and string values.) Never reads
 * outside [p, p+n).
 */
PL_API const uint8_t *pl_memchr(const void *s, uint8_t c, size_t n) {
    const uint8_t *p = (const uint8_t *)s, *const end = p + n;
#ifdef __wasm_simd128__
    const v128_t vc = wasm_i8x16_splat((int8_t)c);
    for (; end - p >= 16; p += 16) {
        const uint32_t m = (uint32_t)wasm_i8x16_bitmask(wasm_i8x16_eq(wasm_v128_load(p), vc));
        if (m) return p + __builtin_ctz(m);
    }
#endif
    for (; p < end; p++)
        if (*p == c) return p;
    return NULL;
}

/*
 * A malloc-backed byte buffer. Appends never fail visibly: on allocation failure the buffer
 * sets `oom` and ignores further appends; check `oom` once at the end. Zero-initialise
 * (pl_buf b = {0};) to start; pl_buf_free releases it.
 */
typedef struct pl_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    bool oom;
} pl_buf;

/* Makes room for `extra` more bytes; false (and `oom` set) if memory ran out. */
PL_COLD bool pl__buf_grow(pl_buf *b, size_t extra) {
    size_t cap = extra > SIZE_MAX / 2 - b->len ? 0 : pl_grow_size(b->cap, b->len + extra);
    uint8_t *d = cap ? (uint8_t *)realloc(b->data, cap) : NULL;
    if (!d) {
        b->oom = true;
        return false;
    }
    b->data = d;
    b->cap = cap;
    return true;
}

PL_API bool pl_buf_reserve(pl_buf *b, size_t extra) {
    if (b->oom) return false;
    return extra <= b->cap - b->len || pl__buf_grow(b, extra);
}

PL_API void pl_buf_put(pl_buf *b, const void *p, size_t n) {
    if (n && pl_buf_reserve(b, n)) {
        pl_copy(b->data + b->len, (const uint8_t *)p, n);
        b->len += n;
    }
}

PL_API void pl_buf_putc(pl_buf *b, uint8_t c) {
    if (pl_buf_reserve(b, 1)) b->data[b->len++] = c;
}

PL_API void pl_buf_puts(pl_buf *b, const char *s) { pl_buf_put(b, s, strlen(s)); }

/* Appends `v` in decimal. */
PL_API void pl_buf_put_u64(pl_buf *b, uint64_t v) {
    char tmp[20];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    pl_buf_put(b, tmp + i, sizeof tmp - i);
}

PL_API void pl_buf_free(pl_buf *b) {
    free(b->data);
    *b = (pl_buf){0};
}

/* Reports the buffer's contents through pl_fail (or "out of memory" if building it failed),
 * frees the buffer and returns -1. */
PL_API int pl_fail_buf(pl_buf *b) {
    if (b->oom)
        pl_fail_str("out of memory");
    else
        pl_fail(b->data, (int32_t)b->len);
    pl_buf_free(b);
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* 3. Output ports                                                                             */
/* ------------------------------------------------------------------------------------------ */

/*
 * A buffered output port. Write with pl_out_write/pl_out_putc, or reserve space and write
 * directly:
 *
 *     uint8_t *d = pl_out_reserve(o, n);   // n <= PL_OUT_CAP; flushes if needed
 *     if (!d) return -1;
 *     ... write at most n bytes at d ...
 *     o->len += written;
 *
 * The buffer has PL_OUT_SLACK spare bytes past PL_OUT_CAP: after pl_out_reserve(o, n), code may
 * scribble up to PL_OUT_SLACK bytes beyond the n reserved ones (pl_copy_over, pl_case_map_padded
 * do); only what o->len covers is output. A port's number is its index: use pl_port(n).
 */
#define PL_OUT_SLACK 32u
typedef struct pl_out {
    uint32_t len;
    uint32_t used; /* bytes of buf reserved or written since it was last zeroed (pl__out_settle) */
    uint8_t buf[PL_OUT_CAP + PL_OUT_SLACK] __attribute__((aligned(16)));
} pl_out;

/*
 * The input area (with PL_PAD bytes after it) and the output buffers, side by side on 64 KiB
 * pages of their own. Between calls neither holds anything a snapshot needs: the host does not
 * snapshot the input area's pages, and pl__out_settle leaves the buffers zeroed (all-zero pages
 * are not stored either). Keeping the guest's state off these pages means a checkpoint stores
 * only pages the guest really changed.
 */
static struct {
    uint8_t input[PL_INPUT_CAP + PL_PAD];
    pl_out ports[PL_OUTPUT_PORTS];
} pl__io __attribute__((aligned(65536)));

/* The output port number `port` (0 main, 1 rejects, ...). */
#define pl_port(port) (&pl__io.ports[(port)])

PL_COLD int pl__emit(int32_t port, const void *p, size_t n) {
    if (pl_emit(port, p, (int32_t)n) == 0) return 0;
    pl_buf m = {0};
    pl_buf_puts(&m, "the host refused output on port ");
    pl_buf_put_u64(&m, (uint64_t)port);
    return pl_fail_buf(&m);
}

/* Hands the buffered bytes of `o` to the host. */
PL_COLD int pl_out_flush(pl_out *o) {
    if (!o->len) return 0;
    uint32_t n = o->len;
    if (n > o->used) o->used = n;
    o->len = 0;
    return pl__emit((int32_t)(o - pl__io.ports), o->buf, n);
}

/*
 * Flushes every port and zeroes what its buffer held; pl_process and pl_finish call this after
 * the guest's hook. Why: between calls the buffers then hold nothing but zeros, and the host's
 * snapshots skip all-zero pages, so a checkpoint stores only the pages a guest really changed
 * (the 2 x 256 KiB of buffers were most of csv-map's dirty pages at every checkpoint).
 */
PL_COLD int pl__out_settle(void) {
    for (int i = 0; i < PL_OUTPUT_PORTS; i++) {
        pl_out *o = &pl__io.ports[i];
        if (pl_out_flush(o)) return -1;
        if (o->used) {
            const size_t n = o->used + PL_OUT_SLACK; /* what pl_out_reserve lets code scribble */
            memset(o->buf, 0, n < sizeof o->buf ? n : sizeof o->buf);
            o->used = 0;
        }
    }
    return 0;
}

/* Returns a pointer to `n` (<= PL_OUT_CAP) contiguous free bytes, flushing first if fewer are
 * free; NULL if the flush failed. Advance o->len by what was written. */
PL_API uint8_t *pl_out_reserve(pl_out *o, size_t n) {
    if (n > PL_OUT_CAP - o->len && pl_out_flush(o)) return NULL;
    if (o->len + n > o->used) o->used = o->len + (uint32_t)n;
    return o->buf + o->len;
}

/*
 * Copies n bytes from src to dst in whole 16-byte blocks: fast for short spans of varying
 * length, but it reads up to 15 bytes past src+n (so src must have PL_PAD readable bytes after
 * it, as every span from the input area and the CSV framer has) and writes up to 15 bytes past
 * dst+n (which the caller owns, e.g. PL_OUT_SLACK).
 */
PL_API void pl_copy_over(uint8_t *dst, const uint8_t *src, size_t n) {
#ifdef __wasm_simd128__
    wasm_v128_store(dst, wasm_v128_load(src));
    if (n <= 16) return;
    /* The second block outside the loop: spans of 17 to 32 bytes (a CSV row's few columns) are
     * common, and every loop iteration costs an interruption check. */
    wasm_v128_store(dst + 16, wasm_v128_load(src + 16));
    if (n <= 32) return;
#pragma clang loop unroll(disable)
    for (size_t i = 32; i < n; i += 16) wasm_v128_store(dst + i, wasm_v128_load(src + i));
#else
    memcpy(dst, src, n);
#endif
}

PL_COLD int pl__out_write_slow(pl_out *o, const uint8_t *p, size_t n) {
    if (pl_out_flush(o)) return -1;
    if (n >= PL_OUT_CAP) return pl__emit((int32_t)(o - pl__io.ports), p, n);
    memcpy(o->buf, p, n);
    o->len = (uint32_t)n;
    return 0;
}

/* Appends n bytes to the port. Blocks larger than the buffer go to the host directly. */
PL_API int pl_out_write(pl_out *o, const void *p, size_t n) {
    if (n <= PL_OUT_CAP - o->len) {
        pl_copy(o->buf + o->len, (const uint8_t *)p, n);
        o->len += (uint32_t)n;
        return 0;
    }
    return pl__out_write_slow(o, (const uint8_t *)p, n);
}

PL_API int pl_out_putc(pl_out *o, uint8_t c) {
    if (o->len == PL_OUT_CAP && pl_out_flush(o)) return -1;
    o->buf[o->len++] = c;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* 4. ABI exports                                                                              */
/* ------------------------------------------------------------------------------------------ */

PL_EXPORT("pl_abi_version") int32_t pl_abi_version(void) { return PL_ABI_VERSION; }
PL_EXPORT("pl_input_buffer") int32_t pl_input_buffer(void) { return (int32_t)(uintptr_t)pl__io.input; }
PL_EXPORT("pl_input_capacity") int32_t pl_input_capacity(void) { return (int32_t)PL_INPUT_CAP; }
PL_EXPORT("pl_counters") int32_t pl_counters(void) { return (int32_t)(uintptr_t)&pl_stats; }

/* A guest with named outputs besides main and rejects defines PL_OUTPUTS before including this
 * header, as "name=port" lines (ports 1-255), e.g. "rejects=1\nerrors=2", and sets
 * PL_OUTPUT_PORTS to the highest port + 1. Without it the host assumes "rejects=1". */
#ifdef PL_OUTPUTS
PL_EXPORT("pl_outputs") int32_t pl_outputs(void) { return (int32_t)(uintptr_t)PL_OUTPUTS; }
#endif

PL_COLD int pl__check_len(const char *what, int32_t len) {
    if (len >= 0 && (uint32_t)len <= PL_INPUT_CAP) return 0;
    pl_buf m = {0};
    pl_buf_puts(&m, what);
    pl_buf_puts(&m, ": length ");
    if (len < 0) {
        pl_buf_putc(&m, '-');
        pl_buf_put_u64(&m, (uint64_t)(-(int64_t)len));
    } else {
        pl_buf_put_u64(&m, (uint64_t)len);
    }
    pl_buf_puts(&m, " is outside the input area (capacity ");
    pl_buf_put_u64(&m, PL_INPUT_CAP);
    pl_buf_puts(&m, ")");
    return pl_fail_buf(&m);
}

PL_EXPORT("pl_init") int32_t pl_init(int32_t len) {
    if (pl__check_len("pl_init", len)) return 1;
    return pl_guest_init(pl__io.input, (size_t)len) ? 1 : 0;
}

PL_EXPORT("pl_process") int32_t pl_process(int32_t len) {
    if (pl__check_len("pl_process", len)) return 1;
    return pl_guest_process(pl__io.input, (size_t)len) || pl__out_settle() ? 1 : 0;
}

PL_EXPORT("pl_finish") int32_t pl_finish(void) { return pl_guest_finish() || pl__out_settle() ? 1 : 0; }

/* ------------------------------------------------------------------------------------------ */
/* 5. UTF-8 byte order mark at stream start (shared by the framers)                            */
/* ------------------------------------------------------------------------------------------ */

static const uint8_t pl__bom_bytes[3] = {0xEF, 0xBB, 0xBF};

/*
 * Strips a UTF-8 BOM from the start of a stream that arrives in arbitrary chunks.
 * `*state` is the number of BOM bytes matched so far (0..2) or 3 once detection is over.
 * Returns how many leading bytes of `d` were consumed as BOM. If the bytes matched so far turn
 * out not to be a BOM, `*replay` is set to their count: the caller must process
 * pl__bom_bytes[0..*replay) as data before the rest of `d`.
 */
PL_API size_t pl__bom_skip(uint8_t *state, const uint8_t *d, size_t n, size_t *replay) {
    size_t i = 0;
    *replay = 0;
    while (*state < 3 && i < n) {
        if (d[i] == pl__bom_bytes[*state]) {
            ++*state;
            ++i;
        } else {
            *replay = *state;
            *state = 3;
        }
    }
    return i;
}

/* End-of-stream counterpart: how many matched bytes of an incomplete BOM are data. */
PL_API size_t pl__bom_end(uint8_t *state) {
    size_t replay = *state < 3 ? *state : 0;
    *state = 3;
    return replay;
}

/* ------------------------------------------------------------------------------------------ */
/* 6. Line framer                                                                              */
/* ------------------------------------------------------------------------------------------ */

/*
 * Splits a byte stream into lines at '\n'. A '\r' right before the '\n' is dropped (CRLF files);
 * a lone '\r' is ordinary data. A UTF-8 BOM at stream start is stripped. Every line is
 * delivered, empty ones included; a last line without '\n' is delivered by pl_lines_finish
 * (unless it is empty).
 *
 * The callback gets the line without its terminator and its 1-based line number. `line` may
 * point into the chunk being fed or into the framer's own buffer: it is valid only during the
 * callback (and, unlike CSV fields, has no PL_PAD guarantee). A non-zero return stops the
 * framer, which returns that status.
 *
 * Lines split across chunks are copied into the framer's buffer, so the input area may be
 * reused between feeds. A line longer than max_line_bytes (default 64 MiB) fails the call.
 */
typedef int (*pl_line_fn)(void *ctx, const uint8_t *line, size_t len, uint64_t line_no);

typedef struct pl_lines {
    pl_line_fn on_line;
    void *ctx;
    uint64_t max_line_bytes;
    uint64_t line_no; /* number of the next line (1-based) */
    pl_buf partial;   /* a line whose end has not been seen yet */
    uint8_t bom;
} pl_lines;

PL_API void pl_lines_init(pl_lines *l, pl_line_fn fn, void *ctx) {
    *l = (pl_lines){.on_line = fn, .ctx = ctx, .max_line_bytes = 64u << 20, .line_no = 1};
}

PL_COLD int pl__lines_too_long(pl_lines *l) {
    pl_buf m = {0};
    pl_buf_puts(&m, "line ");
    pl_buf_put_u64(&m, l->line_no);
    pl_buf_puts(&m, ": line exceeds max_line_bytes (");
    pl_buf_put_u64(&m, l->max_line_bytes);
    pl_buf_puts(&m, "); raise max_line_bytes in the stage config");
    return pl_fail_buf(&m);
}

PL_API int pl__lines_deliver(pl_lines *l, const uint8_t *p, size_t n) {
    if (n && p[n - 1] == '\r') n--;
    if (n > l->max_line_bytes) return pl__lines_too_long(l);
    int r = l->on_line(l->ctx, p, n, l->line_no);
    l->line_no++;
    return r;
}

PL_API int pl__lines_scan(pl_lines *l, const uint8_t *d, size_t n) {
    const uint8_t *end = d + n;
    while (d < end) {
        const uint8_t *nl = pl_memchr(d, '\n', (size_t)(end - d));
        if (!nl) break;
        int r;
        if (l->partial.len) {
            pl_buf_put(&l->partial, d, (size_t)(nl - d));
            if (l->partial.oom) return pl_fail_str("out of memory");
            r = pl__lines_deliver(l, l->partial.data, l->partial.len);
            l->partial.len = 0;
        } else {
            r = pl__lines_deliver(l, d, (size_t)(nl - d));
        }
        if (r) return r;
        d = nl + 1;
    }
    if (d < end) {
        /* +1: the part held may still end with the '\r' of a CRLF split across chunks. */
        if (l->partial.len + (uint64_t)(end - d) > l->max_line_bytes + 1) return pl__lines_too_long(l);
        pl_buf_put(&l->partial, d, (size_t)(end - d));
        if (l->partial.oom) return pl_fail_str("out of memory");
    }
    return 0;
}

/* Feeds the next `n` bytes of the stream. */
PL_API int pl_lines_feed(pl_lines *l, const uint8_t *d, size_t n) {
    if (l->bom < 3) {
        size_t replay, used = pl__bom_skip(&l->bom, d, n, &replay);
        if (replay && pl__lines_scan(l, pl__bom_bytes, replay)) return -1;
        d += used;
        n -= used;
    }
    return pl__lines_scan(l, d, n);
}

/* Ends the stream: delivers a last line that has no '\n'. */
PL_API int pl_lines_finish(pl_lines *l) {
    size_t replay = pl__bom_end(&l->bom);
    if (replay && pl__lines_scan(l, pl__bom_bytes, replay)) return -1;
    if (!l->partial.len) return 0;
    int r = pl__lines_deliver(l, l->partial.data, l->partial.len);
    l->partial.len = 0;
    return r;
}

/* ------------------------------------------------------------------------------------------ */
/* 7. CSV record framer                                                                        */
/* ------------------------------------------------------------------------------------------ */

/*
 * pl_csv turns a byte stream fed in arbitrary chunks into CSV records, exactly as Python's
 *
 *     csv.reader(open(path, encoding="utf-8-sig", newline=""))      # excel dialect, strict=False
 *
 * would read them, but on bytes (no UTF-8 validation; NUL is an ordinary byte):
 *   - fields are separated by ','; records end at CRLF, LF or a lone CR outside quotes, or at
 *     the end of the stream;
 *   - a field that starts with '"' is quoted: ',', CR and LF inside it are data, '""' is one '"';
 *   - a '"' inside an unquoted field is data (x"y -> x"y);
 *   - bytes after a closing quote are appended to the field ("ab"c -> abc), and a '"' among them
 *     is data;
 *   - the end of the stream inside an open quoted field ends the field ("abc<EOF> -> abc);
 *   - a blank line (a line break at the start of a record) is not a record: it is skipped;
 *   - a UTF-8 BOM at the start of the stream is stripped.
 *
 * Records reach the guest in batches, not one by one: a callback per record cost more than
 * finding the record did. A batch (pl_csv_batch) is an array of rows (pl_csv_row) and the array
 * of field ends they index: the raw bytes of field i of row r are [begin, end) of the batch's
 * data, with end = ends[r->first + i] (the offset of the ',' or line break after the field) and
 * begin = r->start for i = 0, else the end of field i - 1 plus one. Nothing is cut or copied
 * until the guest reads a field: pl_csv_field gives its value (quotes removed, '""' undoubled),
 * so the columns a guest never reads cost almost nothing. pl_csv_record_of cuts every field of
 * a row at once (for headers and rejects).
 *
 * A batch holds the records completed by one feed, or part of them (a batch has at most
 * PL__CSV_ROWS rows); everything in it (data, ends, rows, decoded values) is valid only during
 * the callback. Its data is the chunk being fed, or, for a record that began in an earlier
 * chunk, the framer's carry buffer, where the open record's raw bytes are copied when a feed
 * returns: the caller may overwrite its input between feeds.
 *
 * `line` is the 1-based physical line where the record starts: CRLF, LF and a lone CR each end a
 * line, including those inside quoted fields and blank lines.
 *
 * A record whose raw bytes (terminator excluded) exceed max_record_bytes (default 64 MiB) fails
 * the feed, after the records before it were delivered; so does running out of memory.
 *
 * How it scans: 64 bytes at a time, SIMD compares give bitmasks of the commas, quotes and line
 * breaks. In a block without quotes every comma and line break separates. Otherwise a prefix XOR
 * of the quote mask says which bytes lie inside quotes, which is exact as long as every quoted
 * part opens at a field's start and closes before a separator (or a '"' of a '""' pair); a
 * block where that does not hold (x"y, "ab"c) is walked special byte by special byte with the
 * reader's state machine instead. The separators' offsets then go to `ends` with a few
 * instructions each, and the record starts and ends are found from the line break mask.
 */

/* The value was quoted in the input. */
#define PL_FIELD_QUOTED 1u
/* The value contains ',', '"', CR or LF: written back as CSV it must be quoted. */
#define PL_FIELD_NEEDS_QUOTING 2u

/* A value: `len` bytes at `ptr`, followed by at least PL_PAD readable bytes (provided the chunks
 * fed to the framer are, as the input area is). */
typedef struct pl_field {
    const uint8_t *ptr;
    size_t len;
    uint32_t flags; /* PL_FIELD_* */
} pl_field;

/* A record of a batch: where its fields are (see above). */
typedef struct pl_csv_row {
    uint32_t start; /* offset in the batch's data of the record's first byte */
    uint32_t first; /* index in the batch's ends of the end of its first field */
    uint32_t count; /* fields, at least 1 */
    /* Offset of the record's first '"', or of its end if it has none. Raw bytes before it are
     * values as they are: no field among them is quoted or holds a '"' to double. */
    uint32_t quote;
    uint64_t line; /* physical line where the record starts (1-based) */
} pl_csv_row;

typedef struct pl_csv_batch {
    const uint8_t *data;    /* the rows' raw bytes */
    const uint32_t *ends;   /* field ends, offsets in data */
    const pl_csv_row *rows; /* in stream order */
    uint32_t count;         /* rows, at least 1 */
    struct pl_csv *csv;     /* the framer (holds the values pl_csv_field decodes) */
} pl_csv_batch;

/* A record with its fields cut (pl_csv_record_of). */
typedef struct pl_csv_record {
    const pl_field *fields;
    uint32_t count;
    uint64_t line;
} pl_csv_record;

/* Called once per batch; non-zero stops the framer, which returns that status. */
typedef int (*pl_csv_batch_fn)(void *ctx, const pl_csv_batch *batch);

/* Rows per batch: the batch arrays stay small (~24 KiB of rows, ~32 KiB of ends). */
#define PL__CSV_ROWS 1024u
#define PL__CSV_ENDS 8192u
/* Blocks of 64 bytes per group: the scanner's first pass runs over a group, then its second. */
#define PL__CSV_GROUP 16u

/* The reader's state between two bytes. */
enum {
    PL__CSV_START,  /* at a field's start: after ',' or a line break, or at the stream start */
    PL__CSV_FIELD,  /* in an unquoted field, or in bytes after a closing quote: '"' is data */
    PL__CSV_QUOTED, /* inside quotes */
    PL__CSV_QUOTE,  /* right after a '"' that left the quotes: closing, or the first of '""' */
};

typedef struct pl_csv {
    pl_csv_batch_fn on_batch;
    void *ctx;
    uint64_t max_record_bytes;
    /* Scanner state at the end of what was read. Offsets are relative to the chunk being fed. */
    uint64_t line;       /* line breaks so far */
    uint64_t rec_line;   /* line where the open record started */
    int64_t rec_start;   /* offset of the open record's first byte (< 0: in an earlier chunk) */
    int64_t rec_quote;   /* offset of its first '"' (INT64_MAX: none yet) */
    uint32_t rec_first;  /* index in ends of the open record's first field end */
    uint8_t state;       /* PL__CSV_* */
    bool in_record;      /* a record is open */
    bool after_break;    /* the last byte was a line break outside quotes, or none was read */
    bool after_cr;       /* the last byte was '\r' */
    uint8_t bom;
    bool oom;            /* pl_csv_field ran out of memory during the current batch */
    /* The batch under way (scratch: zeroed when a feed returns, so it costs no snapshot pages). */
    uint32_t *ends;
    uint32_t nends, ends_cap, ends_used;
    pl_csv_row *rows;
    uint32_t nrows, rows_used;
    /* The open record's raw bytes from earlier chunks and its field ends among them. */
    uint8_t *carry;
    size_t carried, carry_cap;
    uint32_t *carry_ends;
    uint32_t ncarry_ends, carry_ends_cap;
    /* Values pl_csv_field built for the current batch ('""' pairs, bytes after the closing
     * quote), and blocks it outgrew (freed after the batch). */
    uint8_t *values;
    size_t values_len, values_cap;
    pl_buf retired;
    /* Fields cut by pl_csv_record_of. */
    pl_field *cut;
    uint32_t cut_cap;
} pl_csv;

PL_API void pl_csv_init(pl_csv *p, pl_csv_batch_fn fn, void *ctx) {
    *p = (pl_csv){.on_batch = fn, .ctx = ctx, .max_record_bytes = 64u << 20, .after_break = true};
}

PL_COLD int pl__csv_oom(uint64_t line) {
    pl_buf m = {0};
    pl_buf_puts(&m, "out of memory at line ");
    pl_buf_put_u64(&m, line);
    return pl_fail_buf(&m);
}

PL_COLD int pl__csv_too_big(pl_csv *p) {
    pl_buf m = {0};
    pl_buf_puts(&m, "line ");
    pl_buf_put_u64(&m, p->rec_line);
    pl_buf_puts(&m, ": record exceeds max_record_bytes (");
    pl_buf_put_u64(&m, p->max_record_bytes);
    pl_buf_puts(&m, "); raise max_record_bytes in the stage config");
    return pl_fail_buf(&m);
}

/* Grows the array *a of *cap elements of `size` bytes to hold `need`; false if out of memory. */
PL_COLD bool pl__csv_grow(void **a, uint32_t *cap, size_t size, size_t need) {
    size_t bytes = need > SIZE_MAX / 2 / size ? 0 : pl_grow_size((size_t)*cap * size, need * size);
    void *n = bytes && bytes / size <= UINT32_MAX ? realloc(*a, bytes) : NULL;
    if (!n) return false;
    *a = n;
    *cap = (uint32_t)(bytes / size);
    return true;
}

/* ---- Reading fields ---- */

/* Offset in the batch's data of the first raw byte of field i of row r. */
PL_API uint32_t pl_csv_field_begin(const pl_csv_batch *b, const pl_csv_row *r, uint32_t i) {
    return i ? b->ends[r->first + i - 1] + 1 : r->start;
}

/* Offset in the batch's data just past the raw bytes of field i of row r. */
PL_API uint32_t pl_csv_field_end(const pl_csv_batch *b, const pl_csv_row *r, uint32_t i) {
    return b->ends[r->first + i];
}

/* True if any of the n bytes at s is ',', '"', CR or LF. Reads up to 15 bytes past s + n. */
PL_API bool pl__csv_special(const uint8_t *s, size_t n) {
#ifdef __wasm_simd128__
    for (size_t i = 0; i < n; i += 16) {
        const v128_t v = wasm_v128_load(s + i);
        const v128_t m = wasm_v128_or(wasm_v128_or(wasm_i8x16_eq(v, wasm_i8x16_splat(',')), wasm_i8x16_eq(v, wasm_i8x16_splat('"'))),
                                      wasm_v128_or(wasm_i8x16_eq(v, wasm_i8x16_splat('\r')), wasm_i8x16_eq(v, wasm_i8x16_splat('\n'))));
        uint32_t bits = (uint32_t)wasm_i8x16_bitmask(m);
        if (n - i < 16) bits &= (1u << (n - i)) - 1;
        if (bits) return true;
    }
    return false;
#else
    for (size_t i = 0; i < n; i++)
        if (s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n') return true;
    return false;
#endif
}

/* True if the n bytes at s hold a '"'. Reads up to 15 bytes past s + n. */
PL_API bool pl_csv_has_quote(const uint8_t *s, size_t n) {
#ifdef __wasm_simd128__
    for (size_t i = 0; i < n; i += 16) {
        uint32_t bits = (uint32_t)wasm_i8x16_bitmask(wasm_i8x16_eq(wasm_v128_load(s + i), wasm_i8x16_splat('"')));
        if (n - i < 16) bits &= (1u << (n - i)) - 1;
        if (bits) return true;
    }
    return false;
#else
    return pl_memchr(s, '"', n) != NULL;
#endif
}

/* Room for n bytes (and PL_PAD more) of decoded values, valid until the batch ends; NULL (and
 * p->oom set) if memory ran out. A full buffer is replaced, not grown: values already handed out
 * point into it, so it is kept until the batch ends. */
PL_COLD uint8_t *pl__csv_values_room(pl_csv *p, size_t n) {
    if (p->oom) return NULL;
    if (n + PL_PAD <= p->values_cap - p->values_len) return p->values + p->values_len;
    const size_t size = pl_grow_size(p->values_cap, n + PL_PAD);
    uint8_t *fresh = size ? (uint8_t *)malloc(size) : NULL;
    if (fresh && p->values) pl_buf_put(&p->retired, &p->values, sizeof p->values);
    if (!fresh || p->retired.oom) {
        free(fresh);
        p->oom = true;
        return NULL;
    }
    p->values = fresh;
    p->values_len = 0;
    p->values_cap = size;
    return fresh;
}

/* The value of a field whose raw bytes [s, s + n) start with '"'. */
PL_COLD pl_field pl__csv_unquote(pl_csv *p, const uint8_t *s, size_t n) {
    const uint8_t *const end = s + n, *from = s + 1;
    const uint8_t *q = pl_memchr(from, '"', (size_t)(end - from));
    if (!q || q + 1 == end) { /* "abc" or "abc<EOF>: the value is in place */
        const size_t len = (size_t)((q ? q : end) - from);
        return (pl_field){from, len, PL_FIELD_QUOTED | (pl__csv_special(from, len) ? PL_FIELD_NEEDS_QUOTING : 0)};
    }
    /* '""' pairs, or bytes after the closing quote: the value is built in p->values. */
    uint8_t *const start = pl__csv_values_room(p, n), *d = start;
    if (!start) return (pl_field){pl__empty, 0, 0};
    while (q) {
        pl_copy(d, from, (size_t)(q - from));
        d += q - from;
        if (q + 1 < end && q[1] == '"') { /* '""' is one '"' */
            *d++ = '"';
            from = q + 2;
            q = pl_memchr(from, '"', (size_t)(end - from));
        } else { /* the closing quote: what follows up to the separator is data, quotes too */
            from = q + 1;
            q = NULL;
        }
    }
    pl_copy(d, from, (size_t)(end - from));
    d += end - from;
    p->values_len += (size_t)(d - start);
    return (pl_field){start, (size_t)(d - start),
                      PL_FIELD_QUOTED | (pl__csv_special(start, (size_t)(d - start)) ? PL_FIELD_NEEDS_QUOTING : 0)};
}

/*
 * The value of field i (< r->count) of row r, quotes removed and '""' undoubled, for reading:
 * its flags say whether it was quoted, but PL_FIELD_NEEDS_QUOTING only if it was (pl_csv_field
 * works that out for every field). Valid until the batch callback returns. Running out of memory
 * gives an empty value and fails the feed once the callback returns.
 */
PL_API pl_field pl_csv_value(const pl_csv_batch *b, const pl_csv_row *r, uint32_t i) {
    const uint32_t begin = pl_csv_field_begin(b, r, i), end = pl_csv_field_end(b, r, i);
    const uint8_t *s = b->data + begin;
    if (begin < end && *s == '"') return pl__csv_unquote(b->csv, s, end - begin);
    return (pl_field){s, end - begin, 0};
}

/* pl_csv_value with its flags complete: PL_FIELD_NEEDS_QUOTING says whether, written back as
 * CSV, the value must be quoted. */
PL_API pl_field pl_csv_field(const pl_csv_batch *b, const pl_csv_row *r, uint32_t i) {
    pl_field f = pl_csv_value(b, r, i);
    /* Unquoted, only a '"' can make it need quoting (a ',' or line break would have ended it). */
    const uint32_t end = pl_csv_field_end(b, r, i);
    if (!(f.flags & PL_FIELD_QUOTED) && r->quote < end &&
        (r->quote >= end - f.len || pl_csv_has_quote(f.ptr, f.len)))
        f.flags = PL_FIELD_NEEDS_QUOTING;
    return f;
}

/* Cuts every field of row r into out->fields (valid until the batch callback returns). */
PL_COLD int pl_csv_record_of(const pl_csv_batch *b, const pl_csv_row *r, pl_csv_record *out) {
    pl_csv *p = b->csv;
    if (r->count > p->cut_cap && !pl__csv_grow((void **)&p->cut, &p->cut_cap, sizeof *p->cut, r->count))
        return pl__csv_oom(r->line);
    for (uint32_t i = 0; i < r->count; i++) p->cut[i] = pl_csv_field(b, r, i);
    if (p->oom) return pl__csv_oom(r->line);
    *out = (pl_csv_record){p->cut, r->count, r->line};
    return 0;
}

/* ---- Delivering ---- */

/* Hands a batch to the guest, then drops the values decoded for it. */
PL_COLD int pl__csv_deliver(pl_csv *p, const uint8_t *data, const uint32_t *ends, const pl_csv_row *rows, uint32_t n) {
    if (!n) return 0;
    const pl_csv_batch batch = {data, ends, rows, n, p};
    int rc = p->on_batch(p->ctx, &batch);
    if (!rc && p->oom) rc = pl__csv_oom(rows[0].line);
    for (size_t i = 0; i < p->retired.len; i += sizeof(uint8_t *)) {
        uint8_t *old;
        memcpy(&old, p->retired.data + i, sizeof old);
        free(old);
    }
    p->retired.len = 0;
    if (p->values_len) memset(p->values, 0, p->values_len); /* scratch: zero pages cost snapshots nothing */
    p->values_len = 0;
    return rc;
}

/* Delivers the rows found so far in the chunk at `data`. */
PL_COLD int pl__csv_deliver_rows(pl_csv *p, const uint8_t *data) {
    if (p->nends > p->ends_used) p->ends_used = p->nends;
    if (p->nrows > p->rows_used) p->rows_used = p->nrows;
    const uint32_t n = p->nrows;
    p->nrows = 0;
    return pl__csv_deliver(p, data, p->ends, p->rows, n);
}

/* Appends the field ends ends[from, to) of the open record, as offsets in the carry buffer. */
PL_COLD int pl__csv_carry_ends(pl_csv *p, uint32_t from, uint32_t to) {
    const uint32_t need = p->ncarry_ends + (to - from) + 1;
    if (need > p->carry_ends_cap &&
        !pl__csv_grow((void **)&p->carry_ends, &p->carry_ends_cap, sizeof *p->carry_ends, need))
        return pl__csv_oom(p->rec_line);
    for (uint32_t k = from; k < to; k++) p->carry_ends[p->ncarry_ends++] = (uint32_t)(p->ends[k] - p->rec_start);
    return 0;
}

/* Appends [from, to) of the chunk to the carry buffer, after checking the record's size. */
PL_COLD int pl__csv_carry_bytes(pl_csv *p, const uint8_t *from, const uint8_t *to) {
    const size_t n = (size_t)(to - from);
    if (p->carried + n > p->max_record_bytes) return pl__csv_too_big(p);
    if (n + PL_PAD > p->carry_cap - p->carried) {
        /* PL_PAD spare bytes past the record: see pl_field. */
        size_t size = pl_grow_size(p->carry_cap, p->carried + n + PL_PAD);
        uint8_t *c = size ? (uint8_t *)realloc(p->carry, size) : NULL;
        if (!c) return pl__csv_oom(p->rec_line);
        p->carry = c;
        p->carry_cap = size;
    }
    pl_copy(p->carry + p->carried, from, n);
    p->carried += n;
    return 0;
}

/* The offset in the carry buffer of the open record's first '"', or its end if none. */
PL_API uint32_t pl__csv_carried_quote(const pl_csv *p) {
    const int64_t q = p->rec_quote == INT64_MAX ? INT64_MAX : p->rec_quote - p->rec_start;
    return q < (int64_t)p->carried ? (uint32_t)q : (uint32_t)p->carried;
}

/* The record carried from earlier chunks ends at ends[idx] of the chunk at `data`: completes it
 * in the carry buffer and delivers it on its own. */
PL_COLD int pl__csv_end_carried(pl_csv *p, const uint8_t *data, uint32_t idx) {
    if (pl__csv_carry_bytes(p, data, data + p->ends[idx]) || pl__csv_carry_ends(p, p->rec_first, idx + 1)) return -1;
    const pl_csv_row row = {0, 0, p->ncarry_ends, pl__csv_carried_quote(p), p->rec_line};
    p->carried = 0;
    p->ncarry_ends = 0;
    return pl__csv_deliver(p, p->carry, p->carry_ends, &row, 1);
}

/* Not enough room in ends and rows for a group's separators (7 more may be written past them) and
 * records (a record takes 2 bytes at least). */
PL_API bool pl__csv_full(const pl_csv *p) {
    return p->ends_cap - p->nends < 64 * PL__CSV_GROUP + 8 || p->nrows > PL__CSV_ROWS - 32 * PL__CSV_GROUP;
}

/* At least a group's worth of room in ends and rows: delivers the rows so far, moves the open
 * record's field ends to the front, and grows ends if that record alone fills them. */
PL_COLD int pl__csv_make_room(pl_csv *p, const uint8_t *data) {
    if (p->nends > p->ends_used) p->ends_used = p->nends;
    if (!p->ends) {
        p->rows = (pl_csv_row *)malloc(PL__CSV_ROWS * sizeof *p->rows);
        if (!p->rows || !pl__csv_grow((void **)&p->ends, &p->ends_cap, sizeof *p->ends, PL__CSV_ENDS))
            return pl__csv_oom(p->line + 1);
        memset(p->rows, 0, PL__CSV_ROWS * sizeof *p->rows);
        memset(p->ends, 0, (size_t)p->ends_cap * sizeof *p->ends);
    }
    if (p->nrows && pl__csv_deliver_rows(p, data)) return -1;
    const uint32_t open = p->in_record ? p->nends - p->rec_first : 0;
    memmove(p->ends, p->ends + p->nends - open, open * sizeof *p->ends);
    p->nends = open;
    p->rec_first = 0;
    if (pl__csv_full(p) &&
        !pl__csv_grow((void **)&p->ends, &p->ends_cap, sizeof *p->ends, (size_t)p->nends + 64 * PL__CSV_GROUP + 8))
        return pl__csv_oom(p->rec_line);
    return 0;
}

/* A record of the chunk ends at ends[idx] but is larger than max_record_bytes: the rows before it
 * go to the guest, then the feed fails. */
PL_COLD int pl__csv_big_row(pl_csv *p, const uint8_t *data) {
    return pl__csv_deliver_rows(p, data) ? -1 : pl__csv_too_big(p);
}

/* ---- Scanning ---- */

/* The special bytes among the 64 at `s`, as bitmasks (bit i = byte i). */
typedef struct pl__csv_masks {
    uint64_t commas, quotes, breaks, crs; /* breaks: CR and LF */
} pl__csv_masks;

__attribute__((always_inline)) static inline pl__csv_masks pl__csv_mask64(const uint8_t *s) {
    pl__csv_masks m = {0, 0, 0, 0};
#ifdef __wasm_simd128__
    v128_t any_cr = wasm_i64x2_splat(0);
    for (int i = 0; i < 4; i++) {
        const v128_t v = wasm_v128_load(s + 16 * i);
        const v128_t cr = wasm_i8x16_eq(v, wasm_i8x16_splat('\r'));
        const v128_t brk = wasm_v128_or(cr, wasm_i8x16_eq(v, wasm_i8x16_splat('\n')));
        any_cr = wasm_v128_or(any_cr, cr);
        m.commas |= (uint64_t)wasm_i8x16_bitmask(wasm_i8x16_eq(v, wasm_i8x16_splat(','))) << (16 * i);
        m.quotes |= (uint64_t)wasm_i8x16_bitmask(wasm_i8x16_eq(v, wasm_i8x16_splat('"'))) << (16 * i);
        m.breaks |= (uint64_t)wasm_i8x16_bitmask(brk) << (16 * i);
    }
    /* Most text has no CR: one test instead of four bitmasks. */
    if (wasm_v128_any_true(any_cr))
        for (int i = 0; i < 4; i++)
            m.crs |= (uint64_t)wasm_i8x16_bitmask(wasm_i8x16_eq(wasm_v128_load(s + 16 * i), wasm_i8x16_splat('\r'))) << (16 * i);
#else
    for (int i = 0; i < 64; i++) {
        const uint8_t c = s[i];
        m.commas |= (uint64_t)(c == ',') << i;
        m.quotes |= (uint64_t)(c == '"') << i;
        m.breaks |= (uint64_t)(c == '\r' || c == '\n') << i;
        m.crs |= (uint64_t)(c == '\r') << i;
    }
#endif
    return m;
}

/* pl__csv_mask64 for the last n < 64 bytes of a chunk (never reads past them). */
PL_COLD pl__csv_masks pl__csv_mask_tail(const uint8_t *s, size_t n) {
    uint8_t tmp[64] __attribute__((aligned(16))) = {0};
    memcpy(tmp, s, n);
    return pl__csv_mask64(tmp);
}

/* Bit i of the result is the XOR of bits 0..i of x: with x the quotes of a block, whether an odd
 * number of them lie at or before byte i. */
PL_API uint64_t pl__prefix_xor(uint64_t x) {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    return x;
}

/* The block's separators (the commas and line breaks outside quotes) the slow, exact way: its
 * special bytes one by one through the reader's state machine, from p->state on. `seps` has the
 * block's commas and line breaks, wherever they are. */
PL_COLD uint64_t pl__csv_walk_block(pl_csv *p, uint64_t quotes, uint64_t seps, uint64_t valid) {
    unsigned state = p->state;
    uint64_t special = (seps | quotes) & valid, out = 0;
    int next = 0; /* the first byte not yet read */
    for (; special; special &= special - 1) {
        const int at = __builtin_ctzll(special);
        if (at > next && state != PL__CSV_QUOTED) state = PL__CSV_FIELD; /* ordinary bytes */
        if (quotes >> at & 1) {
            state = state == PL__CSV_START || state == PL__CSV_QUOTE ? PL__CSV_QUOTED
                    : state == PL__CSV_QUOTED                        ? PL__CSV_QUOTE
                                                                     : PL__CSV_FIELD;
        } else if (state != PL__CSV_QUOTED) {
            out |= 1ull << at;
            state = PL__CSV_START;
        }
        next = at + 1;
    }
    if (64 - __builtin_clzll(valid) > next && state != PL__CSV_QUOTED) state = PL__CSV_FIELD;
    p->state = (uint8_t)state;
    return out;
}

/* The separators of a block (exact for blocks without quotes too: they need no case of their
 * own, and half the blocks of typical data hold a quote, so a branch on it mispredicts often).
 * Inlined: a call in the scanner's loop would make the JIT spill the block's vectors around it. */
__attribute__((always_inline)) static inline uint64_t pl__csv_quoted_block(pl_csv *p, uint64_t q, uint64_t seps, uint64_t valid) {
    const unsigned state = p->state;
    const uint64_t in = pl__prefix_xor(q) ^ (state == PL__CSV_QUOTED ? ~0ull : 0); /* inside quotes */
    const uint64_t opens = q & in, closes = q & ~in;
    /* Exact only if each opening quote starts a field (or reopens after a closing one: '""'),
     * and each closing quote is followed by a separator, a reopening quote or the block's end. */
    const uint64_t may_open = (seps | closes) << 1 | (state == PL__CSV_START || state == PL__CSV_QUOTE);
    const uint64_t may_close = (seps | opens) >> 1 | ~valid >> 1 | 1ull << 63;
    const bool resumed_ok = state != PL__CSV_QUOTE || ((seps | q) & 1);
    if ((opens & ~may_open) || (closes & ~may_close) || !resumed_ok) return pl__csv_walk_block(p, q, seps, valid);
    /* The state after the last byte, from its bits (inside quotes, quote, separator; a byte is
     * never both of the last two): a table, as a chain of conditions would be branches that
     * mispredict. */
    static const uint8_t after[8] = {PL__CSV_FIELD,  PL__CSV_START,  PL__CSV_QUOTE,  PL__CSV_QUOTE,
                                     PL__CSV_QUOTED, PL__CSV_QUOTED, PL__CSV_QUOTED, PL__CSV_QUOTED};
    const unsigned last = 63u - (unsigned)__builtin_clzll(valid);
    p->state = after[(in >> last & 1) << 2 | (q >> last & 1) << 1 | (seps >> last & 1)];
    return seps & ~in & valid;
}

/* What the first pass finds in a block for the second (see pl__csv_scan); bit i is byte i. */
typedef struct pl__csv_block {
    uint64_t seps;   /* the separators: commas outside quotes and record ends */
    uint64_t ends;   /* the line breaks that end a record */
    uint64_t starts; /* the first bytes of records */
    uint64_t quotes; /* every '"' */
    uint64_t lines;  /* the bytes that end a physical line */
    uint64_t line;   /* physical lines ended before the block */
    uint32_t first;  /* index in ends of the block's first separator */
} pl__csv_block;


/* First pass over one block (special bytes in m, data bytes in `valid`): its separators go to
 * ends, the rest to *b. */
__attribute__((always_inline)) static inline void pl__csv_index(pl_csv *p, uint32_t base, pl__csv_masks masks,
                                                                uint64_t valid, pl__csv_block *b) {
    /* The masks go through memory: left to itself the compiler computes some of them only where
     * they are used, which keeps the block's vectors alive across branches, and the JIT then
     * spills them on every block. */
    b->seps = masks.commas, b->ends = masks.breaks, b->lines = masks.crs, b->quotes = masks.quotes;
    __asm__ volatile("" : : "r"(b) : "memory");
    const pl__csv_masks m = {b->seps, b->quotes, b->ends, b->lines};
    const uint64_t all = m.commas | m.breaks;
    uint64_t seps = pl__csv_quoted_block(p, m.quotes, all, valid);
    /* A line break outside quotes ends a record, unless it comes right after another one (or at
     * the stream start): then it is a blank line, or the LF of a CRLF. */
    const uint64_t breaks = m.breaks & seps;
    const uint64_t after_break = breaks << 1 | p->after_break;
    const uint64_t ends = breaks & ~after_break;
    seps = (seps & ~breaks) | ends;
    /* Physical lines: CR, and LF but after a CR, wherever they are. */
    const uint64_t lines = m.crs | (m.breaks & ~m.crs & ~(m.crs << 1 | p->after_cr));
    *b = (pl__csv_block){seps, ends, valid & ~breaks & after_break, m.quotes, lines, p->line, p->nends};
    uint32_t *out = p->ends + p->nends;
    for (uint64_t s = seps; s; out += 8) { /* may write 7 entries past the last: see pl__csv_full */
#ifdef __wasm_simd128__
        /* Four offsets a store: Cranelift computes each scalar store's address on its own. */
        uint32_t at[8];
#pragma clang loop unroll(full)
        for (int i = 0; i < 8; i++) {
            at[i] = (uint32_t)__builtin_ctzll(s);
            s &= s - 1;
        }
        const v128_t vbase = wasm_i32x4_splat((int32_t)base);
        wasm_v128_store(out, wasm_i32x4_add(wasm_i32x4_make((int32_t)at[0], (int32_t)at[1], (int32_t)at[2], (int32_t)at[3]), vbase));
        wasm_v128_store(out + 4, wasm_i32x4_add(wasm_i32x4_make((int32_t)at[4], (int32_t)at[5], (int32_t)at[6], (int32_t)at[7]), vbase));
#else
#pragma clang loop unroll(full)
        for (int i = 0; i < 8; i++) {
            out[i] = base + (uint32_t)__builtin_ctzll(s);
            s &= s - 1;
        }
#endif
    }
    p->nends += (uint32_t)__builtin_popcountll(seps);
    p->line += (uint64_t)__builtin_popcountll(lines);
    const unsigned last = 63u - (unsigned)__builtin_clzll(valid);
    p->after_break = breaks >> last & 1;
    p->after_cr = m.crs >> last & 1;
}

/* Opens the record whose first byte is bit `at` of block b, at `base`. */
__attribute__((always_inline)) static inline void pl__csv_open(pl_csv *p, const pl__csv_block *b, uint32_t base, unsigned at) {
    const uint64_t below = (1ull << at) - 1, q = b->quotes & ~below;
    p->in_record = true;
    p->rec_start = base + at;
    p->rec_quote = q ? (int64_t)(base + (uint32_t)__builtin_ctzll(q)) : INT64_MAX;
    p->rec_line = b->line + (uint64_t)__builtin_popcountll(b->lines & below) + 1;
}

/* Second pass over one block at data + base: the records it ends go to rows. */
__attribute__((always_inline)) static inline int pl__csv_records(pl_csv *p, const uint8_t *data, uint32_t base,
                                                                 const pl__csv_block *b) {
    /* Records alternate with runs of line breaks: the record open at the block's start (or its
     * first start), then after each record end the next start. */
    if (p->in_record) {
        /* The open record's first quote: the earlier one if it has one (a select, not a branch). */
        const int64_t q = b->quotes ? (int64_t)(base + (uint32_t)__builtin_ctzll(b->quotes)) : INT64_MAX;
        p->rec_quote = q < p->rec_quote ? q : p->rec_quote;
    } else if (b->starts) {
        pl__csv_open(p, b, base, (unsigned)__builtin_ctzll(b->starts));
    }
    for (uint64_t e = b->ends; e; e &= e - 1) {
        const uint64_t below = (e & (0 - e)) - 1;
        const uint32_t at = base + (uint32_t)__builtin_ctzll(e);
        const uint32_t idx = b->first + (uint32_t)__builtin_popcountll(b->seps & below);
        if (p->rec_start < 0) {
            if (pl__csv_end_carried(p, data, idx)) return -1;
        } else {
            if ((uint64_t)(at - p->rec_start) > p->max_record_bytes) return pl__csv_big_row(p, data);
            const uint32_t quote = p->rec_quote < at ? (uint32_t)p->rec_quote : at;
            p->rows[p->nrows++] = (pl_csv_row){(uint32_t)p->rec_start, p->rec_first, idx + 1 - p->rec_first, quote, p->rec_line};
        }
        p->rec_first = idx + 1;
        p->in_record = false;
        const uint64_t next = b->starts & ~below;
        if (next) pl__csv_open(p, b, base, (unsigned)__builtin_ctzll(next));
    }
    return 0;
}

/* Both passes over up to PL__CSV_GROUP whole blocks from data + at. The first finds the
 * separators 64 bytes at a time, the second turns them into records: two small loops keep the
 * JIT's registers for what each needs (one loop doing both spilled its masks on every block). */
__attribute__((noinline)) static int pl__csv_group(pl_csv *p, const uint8_t *data, uint32_t at, uint32_t nblocks) {
    pl__csv_block blocks[PL__CSV_GROUP];
    for (uint32_t k = 0; k < nblocks; k++)
        pl__csv_index(p, at + 64 * k, pl__csv_mask64(data + at + 64 * k), ~0ull, &blocks[k]);
    for (uint32_t k = 0; k < nblocks; k++)
        if (pl__csv_records(p, data, at + 64 * k, &blocks[k])) return -1;
    return 0;
}

/* Both passes over the last n < 64 bytes of a chunk, at data + at. */
PL_COLD int pl__csv_tail(pl_csv *p, const uint8_t *data, uint32_t at, size_t n) {
    pl__csv_block b;
    pl__csv_index(p, at, pl__csv_mask_tail(data + at, n), (1ull << n) - 1, &b);
    return pl__csv_records(p, data, at, &b);
}

/* The chunk ended inside a record: its bytes and field ends in the chunk go to the carry buffer,
 * and offsets become relative to the next chunk. */
PL_COLD int pl__csv_carry(pl_csv *p, const uint8_t *data, size_t n) {
    const int64_t from = p->rec_start < 0 ? 0 : p->rec_start;
    if (pl__csv_carry_bytes(p, data + from, data + n) || pl__csv_carry_ends(p, p->rec_first, p->nends)) return -1;
    const int64_t start = -(int64_t)p->carried;
    if (p->rec_quote != INT64_MAX) p->rec_quote += start - p->rec_start;
    p->rec_start = start;
    return 0;
}

/* Zeroes the batch arrays used during a feed: between calls they hold nothing, and zero pages
 * cost snapshots nothing. */
PL_COLD void pl__csv_settle(pl_csv *p) {
    if (p->nends > p->ends_used) p->ends_used = p->nends;
    if (p->nrows > p->rows_used) p->rows_used = p->nrows;
    const size_t ends = p->ends_used + 8u < p->ends_cap ? p->ends_used + 8u : p->ends_cap;
    if (p->ends) memset(p->ends, 0, ends * sizeof *p->ends);
    if (p->rows) memset(p->rows, 0, p->rows_used * sizeof *p->rows);
    p->ends_used = p->rows_used = 0;
    p->nends = p->nrows = 0;
    p->rec_first = 0;
}

PL_API int pl__csv_scan(pl_csv *p, const uint8_t *data, size_t n) {
    const size_t whole = n / 64;
    for (size_t k = 0; k < whole; k += PL__CSV_GROUP) {
        const uint32_t blocks = whole - k < PL__CSV_GROUP ? (uint32_t)(whole - k) : PL__CSV_GROUP;
        if ((pl__csv_full(p) && pl__csv_make_room(p, data)) || pl__csv_group(p, data, (uint32_t)(64 * k), blocks))
            return -1;
    }
    const size_t at = 64 * whole;
    if (at < n && ((pl__csv_full(p) && pl__csv_make_room(p, data)) || pl__csv_tail(p, data, (uint32_t)at, n - at))) return -1;
    int rc = pl__csv_deliver_rows(p, data);
    if (!rc && p->in_record) rc = pl__csv_carry(p, data, n);
    pl__csv_settle(p);
    return rc;
}

/* Feeds the next `n` bytes of the stream; records completed by them are delivered. `data` must
 * be followed by PL_PAD readable bytes (the input area is). */
PL_API int pl_csv_feed(pl_csv *p, const uint8_t *data, size_t n) {
    if (p->bom < 3) {
        size_t replay, used = pl__bom_skip(&p->bom, data, n, &replay);
        if (replay && pl__csv_scan(p, pl__bom_bytes, replay)) return -1;
        data += used;
        n -= used;
    }
    return n ? pl__csv_scan(p, data, n) : 0;
}

/* Ends the stream: delivers the open record, if any (last line without a line break, or an
 * unterminated quoted field). */
PL_API int pl_csv_finish(pl_csv *p) {
    size_t replay = pl__bom_end(&p->bom);
    if (replay && pl__csv_scan(p, pl__bom_bytes, replay)) return -1;
    if (!p->in_record) return 0;
    /* All of the open record's bytes are in the carry buffer (moved there by the last feed). */
    p->in_record = false;
    if (p->ncarry_ends == p->carry_ends_cap &&
        !pl__csv_grow((void **)&p->carry_ends, &p->carry_ends_cap, sizeof *p->carry_ends, p->ncarry_ends + 1))
        return pl__csv_oom(p->rec_line);
    p->carry_ends[p->ncarry_ends++] = (uint32_t)p->carried;
    const pl_csv_row row = {0, 0, p->ncarry_ends, pl__csv_carried_quote(p), p->rec_line};
    p->carried = 0;
    p->ncarry_ends = 0;
    return pl__csv_deliver(p, p->carry, p->carry_ends, &row, 1);
}

/* ------------------------------------------------------------------------------------------ */
/* 8. CSV writing, case mapping, numbers                                                       */
/* ------------------------------------------------------------------------------------------ */

/* True if the value must be quoted when written as a CSV field: it holds ',', '"', CR or LF. */
PL_API bool pl_csv_needs_quoting(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == ',' || c == '"' || c == '\r' || c == '\n') return true;
    }
    return false;
}

/* Writes `"` + the value with each '"' doubled + `"` at dst (room for 2n+2 bytes needed);
 * returns the end of what was written. */
PL_API uint8_t *pl_csv_quote_into(uint8_t *dst, const uint8_t *p, size_t n) {
    const uint8_t *end = p + n;
    *dst++ = '"';
    for (;;) {
        const uint8_t *q = pl_memchr(p, '"', (size_t)(end - p));
        if (!q) break;
        pl_copy(dst, p, (size_t)(q - p) + 1);
        dst += q - p + 1;
        *dst++ = '"';
        p = q + 1;
    }
    pl_copy(dst, p, (size_t)(end - p));
    dst += end - p;
    *dst++ = '"';
    return dst;
}

/* pl_csv_quote_into that may read 15 bytes past p+n and write 15 past what it returns (as
 * pl_copy_over does): a short value without quotes goes in one 16-byte copy. */
PL_API uint8_t *pl_csv_quote_into_padded(uint8_t *dst, const uint8_t *p, size_t n) {
#ifdef __wasm_simd128__
    if (n <= 16) {
        const v128_t v = wasm_v128_load(p);
        if (!((uint32_t)wasm_i8x16_bitmask(wasm_i8x16_eq(v, wasm_i8x16_splat('"'))) & ((1u << n) - 1))) {
            dst[0] = '"';
            wasm_v128_store(dst + 1, v);
            dst[n + 1] = '"';
            return dst + n + 2;
        }
    }
#endif
    return pl_csv_quote_into(dst, p, n);
}

/* Writes one CSV field, quoted (with doubled quotes) if `quote`. Any size. */
PL_API int pl_csv_put_field(pl_out *o, const uint8_t *p, size_t n, bool quote) {
    if (!quote) return pl_out_write(o, p, n);
    if (n <= (PL_OUT_CAP - 2) / 2) {
        uint8_t *d = pl_out_reserve(o, 2 * n + 2);
        if (!d) return -1;
        o->len = (uint32_t)(pl_csv_quote_into(d, p, n) - o->buf);
        return 0;
    }
    const uint8_t *end = p + n;
    if (pl_out_putc(o, '"')) return -1;
    for (;;) {
        const uint8_t *q = pl_memchr(p, '"', (size_t)(end - p));
        if (!q) break;
        if (pl_out_write(o, p, (size_t)(q - p) + 1) || pl_out_putc(o, '"')) return -1;
        p = q + 1;
    }
    if (pl_out_write(o, p, (size_t)(end - p))) return -1;
    return pl_out_putc(o, '"');
}

/*
 * Case mapping in place. Mapped: ASCII a-z <-> A-Z, and the Latin-1 Supplement letters
 * U+00E0..U+00FE except U+00F7 (÷) <-> U+00C0..U+00DE except U+00D7 (×), i.e. the UTF-8 pairs
 * C3 A0..C3 BE <-> C3 80..C3 9E (same code-point offset 0x20). Not mapped: ß (U+00DF), ÿ (U+00FF),
 * µ (U+00B5) and every other code point, whose case forms lie outside Latin-1 or change length.
 * Every other byte is left as is, so invalid UTF-8 passes through.
 */
PL_COLD void pl__case_map(uint8_t *p, size_t n, bool upper) {
    const uint8_t from = upper ? 'a' : 'A';
    /* Latin-1 pair second bytes to map: upper A0..BE, lower 80..9E; skipping B7 / 97. */
    const uint8_t l1_from = upper ? 0xA0 : 0x80, l1_skip = upper ? 0xB7 : 0x97;
    bool latin1 = false;
    size_t i = 0;
#ifdef __wasm_simd128__
    const v128_t vfrom = wasm_i8x16_splat((int8_t)from), v26 = wasm_i8x16_splat(26);
    const v128_t v20 = wasm_i8x16_splat(0x20), vc3 = wasm_i8x16_splat((int8_t)0xC3);
    v128_t seen = wasm_i8x16_splat(0);
    const size_t blocks_end = n & ~(size_t)15;
#pragma clang loop unroll(disable)
    for (; i < blocks_end; i += 16) {
        v128_t v = wasm_v128_load(p + i);
        v128_t letter = wasm_u8x16_lt(wasm_i8x16_sub(v, vfrom), v26);
        wasm_v128_store(p + i, wasm_v128_xor(v, wasm_v128_and(letter, v20)));
        seen = wasm_v128_or(seen, wasm_i8x16_eq(v, vc3));
    }
    latin1 = wasm_v128_any_true(seen);
#endif
    for (; i < n; i++) {
        uint8_t c = p[i];
        if ((uint8_t)(c - from) < 26) p[i] = c ^ 0x20;
        latin1 |= c == 0xC3;
    }
    if (!latin1) return;
    for (i = 0; i + 1 < n; i++) {
        if (p[i] != 0xC3) continue;
        uint8_t c = p[++i];
        if ((uint8_t)(c - l1_from) < 0x1F && c != l1_skip) p[i] = c ^ 0x20;
    }
}

/* Upper-cases `n` bytes in place (see pl__case_map for what is mapped). */
PL_API void pl_upper(uint8_t *p, size_t n) { pl__case_map(p, n, true); }
/* Lower-cases `n` bytes in place (see pl__case_map for what is mapped). */
PL_API void pl_lower(uint8_t *p, size_t n) { pl__case_map(p, n, false); }
/* pl_upper (upper) or pl_lower that may read and rewrite (unchanged) the 15 bytes after p+n:
 * faster on short spans, for text just written into an output buffer (PL_OUT_SLACK). Only the n
 * bytes change, so a field inside a row already written can be mapped in place. */
PL_COLD void pl__case_map_short(uint8_t *p, size_t n, bool upper);

PL_API void pl_case_map_padded(uint8_t *p, size_t n, bool upper) {
    if (n <= 8) {
        /* Up to 8 bytes of ASCII in one 64-bit word, with no vector constants to load (the JIT
         * keeps those in stack slots): the letters are the bytes whose 7 low bits are in
         * [from, from + 25] and whose high bit is clear; `keep` leaves the bytes past n alone. */
        uint64_t x;
        memcpy(&x, p, 8);
        const uint64_t ones = 0x0101010101010101ull, keep = n == 8 ? ~0ull : (1ull << (8 * n)) - 1;
        if (!(x & keep & 0x80 * ones)) {
            const uint64_t from = upper ? 'a' : 'A', low7 = x & 0x7F * ones;
            const uint64_t at_least = low7 + (0x80 - from) * ones, above = low7 + (0x80 - from - 26) * ones;
            x ^= (at_least & ~above & ~x & keep & 0x80 * ones) >> 2;
            memcpy(p, &x, 8);
            return;
        }
    }
    pl__case_map_short(p, n, upper);
}

/* pl_case_map_padded past its first case, out of line: its vector constants would cost the
 * inlined common case stack slots. */
PL_COLD void pl__case_map_short(uint8_t *p, size_t n, bool upper) {
#ifdef __wasm_simd128__
    if (n <= 16) { /* one block */
        const v128_t v = wasm_v128_load(p);
        /* Lead bytes C3 within the n bytes (the rest may be anything), and the bytes after them. */
        const v128_t within = wasm_u8x16_lt(wasm_i8x16_const(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            wasm_i8x16_splat((int8_t)n));
        const v128_t lead = wasm_v128_and(wasm_i8x16_eq(v, wasm_i8x16_splat((int8_t)0xC3)), within);
        const v128_t next = wasm_i8x16_shuffle(wasm_i8x16_splat(0), lead, 0, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
                                               27, 28, 29, 30);
        /* C3 C3 pairs take the full path: there a C3 is sometimes the second byte of a pair. */
        if (!wasm_v128_any_true(wasm_v128_and(lead, next))) {
            v128_t flip = wasm_u8x16_lt(wasm_i8x16_sub(v, wasm_i8x16_splat(upper ? 'a' : 'A')), wasm_i8x16_splat(26));
            /* Second bytes of Latin-1 letters (see pl__case_map). */
            const v128_t l1 = wasm_v128_andnot(
                wasm_u8x16_lt(wasm_i8x16_sub(v, wasm_i8x16_splat((int8_t)(upper ? 0xA0 : 0x80))), wasm_i8x16_splat(0x1F)),
                wasm_i8x16_eq(v, wasm_i8x16_splat((int8_t)(upper ? 0xB7 : 0x97))));
            flip = wasm_v128_and(wasm_v128_or(flip, wasm_v128_and(l1, next)), within);
            wasm_v128_store(p, wasm_v128_xor(v, wasm_v128_and(flip, wasm_i8x16_splat(0x20))));
            return;
        }
    }
#endif
    pl__case_map(p, n, upper);
}

/* strtod on `len` bytes already checked to be a decimal number. */
PL_COLD bool pl__strtod(const uint8_t *s, size_t len, double *out) {
    char small[64];
    char *buf = len < sizeof small ? small : (char *)malloc(len + 1);
    if (!buf) return false;
    memcpy(buf, s, len);
    buf[len] = 0;
    *out = strtod(buf, NULL);
    if (buf != small) free(buf);
    return true;
}

static const double pl__pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                   1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* pl_parse_number for any text: spaces, signs, exponents, long mantissas. */
PL_COLD bool pl__parse_number_full(const uint8_t *s, size_t n, double *out) {
    const double *const pow10 = pl__pow10;
    const uint8_t *p = s, *const end = s + n;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    const uint8_t *const start = p;
    bool neg = false;
    if (p < end && ((unsigned)(*p - '+') & ~2u) == 0) neg = *p++ == '-'; /* '+' or '-' */
    /* Digits with at most one '.', in one loop: the common case costs a few operations a byte. */
    uint64_t mant = 0;
    int digits = 0, frac = -1; /* frac: digits after the '.', -1 before it */
    for (; p < end; p++) {
        const unsigned d = (unsigned)(*p - '0');
        if (d < 10) {
            mant = mant * 10 + d;
            digits++;
            frac += frac >= 0;
        } else if (*p == '.' && frac < 0) {
            frac = 0;
        } else {
            break;
        }
    }
    if (!digits) return false;
    int64_t exp10 = frac > 0 ? -frac : 0;
    if (p < end && (*p | 0x20) == 'e') {
        p++;
        bool eneg = false;
        if (p < end && ((unsigned)(*p - '+') & ~2u) == 0) eneg = *p++ == '-';
        if (p == end || (unsigned)(*p - '0') >= 10) return false;
        int64_t e = 0;
        for (; p < end && (unsigned)(*p - '0') < 10; p++)
            if (e < 100000) e = e * 10 + (*p - '0');
        exp10 += eneg ? -e : e;
    }
    const uint8_t *const num_end = p;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (p != end) return false;
    /* Clinger's fast path: an exact mantissa below 2^53 times an exact power of ten is one
     * correctly rounded operation. Everything else goes to strtod (correctly rounded). */
    if (digits <= 19 && mant <= (1ull << 53) && exp10 >= -22 && exp10 <= 22) {
        double v = (double)mant;
        v = exp10 < 0 ? v / pow10[-exp10] : v * pow10[exp10];
        *out = neg ? -v : v;
        return true;
    }
    return pl__strtod(start, (size_t)(num_end - start), out);
}

/*
 * Parses a decimal number: optional spaces/tabs, an optional sign, digits with an optional
 * fraction (at least one digit overall: "5", "5.", ".5"), an optional exponent ("e" or "E", an
 * optional sign, digits), optional spaces/tabs; nothing else (no inf, nan, hex or '_').
 * The result is the correctly rounded double (overflow gives +-inf). Returns false if the text
 * is not such a number.
 */
PL_API bool pl_parse_number(const uint8_t *s, size_t n, double *out) {
#ifdef __wasm_simd128__
    /* Fast path, without a loop, for the usual field of 1 to 16 bytes: an optional '-', then
     * digits with at most one '.' ("41.36", "-7", ".5"). Anything else (spaces, '+', exponents,
     * longer text, a mantissa past 2^53) takes the full parser. It loads 16 bytes at s, which is
     * safe in linear memory when they lie in the 64 KiB page holding s: memory is whole pages. */
    if (n - 1 < 16 && ((uintptr_t)s & 0xFFFF) <= 0x10000 - 16) {
        const v128_t iota = wasm_i8x16_make(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const v128_t v = wasm_v128_load(s), dv = wasm_i8x16_sub(v, wasm_i8x16_splat('0'));
        const v128_t is_digit = wasm_u8x16_lt(dv, wasm_i8x16_splat(10));
        const uint32_t low = (1u << n) - 1, neg = s[0] == '-';
        const uint32_t digit_m = (uint32_t)wasm_i8x16_bitmask(is_digit) & low;
        const uint32_t dot_m = (uint32_t)wasm_i8x16_bitmask(wasm_i8x16_eq(v, wasm_i8x16_splat('.'))) & low;
        if ((digit_m | dot_m | neg) == low && digit_m && !(dot_m & (dot_m - 1))) {
            const int digits = __builtin_popcount(digit_m);
            const int dot = dot_m ? __builtin_ctz(dot_m) : 127;
            const int frac = dot_m ? __builtin_popcount(digit_m >> dot) : 0;
            /* Right-align the digits, dropping the sign and the dot: output lane j takes digit
             * t = j - (16 - digits), found at neg + t, one further on from the dot on. Lanes
             * before the first digit get an index the swizzle maps to 0 (negative) or the sign's
             * lane, zeroed with the other non-digits. */
            v128_t idx = wasm_i8x16_add(iota, wasm_i8x16_splat((int8_t)((int)neg + digits - 16)));
            idx = wasm_i8x16_sub(idx, wasm_i8x16_ge(idx, wasm_i8x16_splat((int8_t)dot)));
            const v128_t d = wasm_i8x16_swizzle(wasm_v128_and(dv, is_digit), idx);
            /* Digits -> 2-digit -> 4-digit -> 8-digit groups. */
            const v128_t w10 = wasm_i16x8_make(10, 1, 10, 1, 10, 1, 10, 1);
            const v128_t d2 = wasm_i16x8_narrow_i32x4(wasm_i32x4_dot_i16x8(wasm_u16x8_extend_low_u8x16(d), w10),
                                                      wasm_i32x4_dot_i16x8(wasm_u16x8_extend_high_u8x16(d), w10));
            const v128_t d4 = wasm_i32x4_dot_i16x8(d2, wasm_i16x8_make(100, 1, 100, 1, 100, 1, 100, 1));
            const v128_t d8 = wasm_i32x4_dot_i16x8(wasm_i16x8_narrow_i32x4(d4, d4),
                                                   wasm_i16x8_make(10000, 1, 10000, 1, 10000, 1, 10000, 1));
            const uint64_t mant = (uint64_t)(uint32_t)wasm_i32x4_extract_lane(d8, 0) * 100000000u +
                                  (uint32_t)wasm_i32x4_extract_lane(d8, 1);
            if (mant <= (1ull << 53)) {
                const double x = (double)mant / pl__pow10[frac];
                *out = neg ? -x : x;
                return true;
            }
        }
    }
#endif
    return pl__parse_number_full(s, n, out);
}

/* pl_parse_number, out of line: the slow path of pl_parse_number_padded. */
PL_COLD bool pl__parse_number_cold(const uint8_t *s, size_t n, double *out) { return pl_parse_number(s, n, out); }

/*
 * The plain decimals pl_parse_number_padded parses without a loop: up to 8 characters after an
 * optional '-', digits with at most one '.' and at least one digit ("123.45", "-7", ".5"), read
 * 8 bytes at once in a 64-bit word (the text must be followed by at least 8 readable bytes, as
 * every pl_csv value is). Its value is -(neg) mant / 10^frac, mant < 10^8 and frac < 8; as a
 * double, (double)mant / pl__pow10[frac] (exact operands, so correctly rounded) negated if neg.
 * Returns false for any other text, which may still be a number.
 */
__attribute__((always_inline, unused)) static inline bool pl_parse_decimal8(const uint8_t *s, size_t n, uint64_t *mant,
                                                                            unsigned *frac, bool *neg) {
    *neg = n && s[0] == '-';
    const size_t len = n - *neg;
    if (len - 1 >= 8) return false;
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t x;
    memcpy(&x, s + *neg, 8); /* byte i of x is character i */
    const uint64_t keep = len == 8 ? ~0ull : (1ull << (8 * len)) - 1;
    x &= keep;
    /* The first '.', if any: the lowest zero byte of x ^ '.'s (exact for the lowest one). */
    const uint64_t dx = x ^ ('.' * ones), dots = (dx - ones) & ~dx & high & keep;
    size_t digits = len;
    *frac = 0;
    if (dots) {
        const unsigned at = (unsigned)__builtin_ctzll(dots) & ~7u; /* bit offset of the '.' */
        const uint64_t below = (1ull << at) - 1;
        x = (x & below) | ((x >> 8) & ~below);
        digits = len - 1;
        *frac = (unsigned)(len - 1 - at / 8);
    }
    if (!digits) return false;
    /* Right-align the digits behind '0's: byte 0 is the most significant one. */
    const unsigned pad = 8 * (unsigned)(8 - digits);
    x = x << pad | ('0' * ones) >> (63 - pad) >> 1;
    /* All eight bytes '0'..'9' (a second '.' or any other byte fails here). */
    if ((x & 0xF0F0F0F0F0F0F0F0ull) != 0x3030303030303030ull ||
        ((x + 0x0606060606060606ull) & 0xF0F0F0F0F0F0F0F0ull) != 0x3030303030303030ull)
        return false;
    x = (x & 0x0F0F0F0F0F0F0F0Full) * 2561 >> 8;
    x = (x & 0x00FF00FF00FF00FFull) * 6553601 >> 16;
    *mant = (x & 0x0000FFFF0000FFFFull) * 42949672960001ull >> 32;
    return true;
}

/*
 * pl_parse_number for text followed by at least 8 readable bytes (as every pl_csv value is):
 * the plain decimals of pl_parse_decimal8 without a loop, anything else through
 * pl_parse_number. Inlined: small, and a call would cost a good part of it.
 */
__attribute__((always_inline, unused)) static inline bool pl_parse_number_padded(const uint8_t *s, size_t n, double *out) {
    uint64_t mant;
    unsigned frac;
    bool neg;
    if (pl_parse_decimal8(s, n, &mant, &frac, &neg)) {
        const double v = (double)mant / pl__pow10[frac];
        *out = neg ? -v : v;
        return true;
    }
    return pl__parse_number_cold(s, n, out);
}

/* ------------------------------------------------------------------------------------------ */
/* 9. JSON reader                                                                              */
/* ------------------------------------------------------------------------------------------ */

/*
 * A pull reader over a JSON text held in memory (RFC 8259; nesting limited to 64 levels).
 * The caller walks the document, checking each value's type with pl_json_peek before reading it:
 *
 *     pl_json j;
 *     pl_json_init(&j, text, len);
 *     if (pl_json_peek(&j) != PL_JSON_OBJECT) ...              // not an object
 *     pl_json_enter(&j);
 *     pl_str key;
 *     int more;
 *     while ((more = pl_json_next(&j, &key)) > 0) {            // cursor is now at key's value
 *         if (strcmp(key.ptr, "name") == 0 && pl_json_peek(&j) == PL_JSON_STRING)
 *             pl_json_string(&j, &name);
 *         else
 *             pl_json_skip(&j);                                // any value, validated
 *         pl_str_free(&key);
 *     }
 *     if (more < 0 || pl_json_done(&j)) ...                    // syntax error: j.error, j.error_at
 *
 * Functions return 0 (or a positive count) on success and -1 on error; on a syntax error
 * `error` is set to a short description and `error_at` to the byte offset. pl_json_peek returns
 * PL_JSON_INVALID at a syntax error. These functions do not call pl_fail: the guest words the
 * message (pl_json_fail does it in a standard form).
 */
typedef enum pl_json_type {
    PL_JSON_INVALID,
    PL_JSON_NULL,
    PL_JSON_BOOL,
    PL_JSON_NUMBER,
    PL_JSON_STRING,
    PL_JSON_ARRAY,
    PL_JSON_OBJECT,
} pl_json_type;

typedef struct pl_json {
    const uint8_t *start, *p, *end;
    const char *error; /* NULL until a syntax error */
    size_t error_at;
    int depth;
} pl_json;

/* A decoded string: UTF-8 bytes, NUL-terminated (it may also contain NULs from "\u0000"). */
typedef struct pl_str {
    char *ptr;
    size_t len;
} pl_str;

PL_API void pl_str_free(pl_str *s) {
    free(s->ptr);
    s->ptr = NULL;
    s->len = 0;
}

/* True if the string equals the `n` bytes at `p`. */
PL_API bool pl_str_eq(const pl_str *s, const void *p, size_t n) {
    return s->len == n && memcmp(s->ptr, p, n) == 0;
}

#define PL_JSON_MAX_DEPTH 64

PL_API void pl_json_init(pl_json *j, const void *text, size_t len) {
    *j = (pl_json){.start = (const uint8_t *)text, .p = (const uint8_t *)text};
    j->end = j->start + len;
}

PL_API int pl__json_err(pl_json *j, const char *what) {
    if (!j->error) {
        j->error = what;
        j->error_at = (size_t)(j->p - j->start);
    }
    return -1;
}

PL_API void pl__json_ws(pl_json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

/* The type of the value at the cursor (whitespace skipped). */
PL_API pl_json_type pl_json_peek(pl_json *j) {
    if (j->error) return PL_JSON_INVALID;
    pl__json_ws(j);
    if (j->p == j->end) {
        pl__json_err(j, "unexpected end of JSON");
        return PL_JSON_INVALID;
    }
    switch (*j->p) {
    case 'n': return PL_JSON_NULL;
    case 't':
    case 'f': return PL_JSON_BOOL;
    case '"': return PL_JSON_STRING;
    case '[': return PL_JSON_ARRAY;
    case '{': return PL_JSON_OBJECT;
    default:
        if (*j->p == '-' || (uint8_t)(*j->p - '0') < 10) return PL_JSON_NUMBER;
        pl__json_err(j, "expected a JSON value");
        return PL_JSON_INVALID;
    }
}

PL_API int pl__json_literal(pl_json *j, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return pl__json_err(j, "expected a JSON value");
    j->p += n;
    return 0;
}

/* Reads null. */
PL_API int pl_json_null(pl_json *j) {
    if (pl_json_peek(j) != PL_JSON_NULL) return pl__json_err(j, "expected null");
    return pl__json_literal(j, "null");
}

/* Reads true or false. */
PL_API int pl_json_bool(pl_json *j, bool *out) {
    if (pl_json_peek(j) != PL_JSON_BOOL) return pl__json_err(j, "expected true or false");
    *out = *j->p == 't';
    return pl__json_literal(j, *out ? "true" : "false");
}

/* Reads a number (JSON grammar; the double nearest to it). */
PL_API int pl_json_number(pl_json *j, double *out) {
    if (pl_json_peek(j) != PL_JSON_NUMBER) return pl__json_err(j, "expected a number");
    const uint8_t *s = j->p, *e = j->end, *p = s;
    if (*p == '-') p++;
    if (p < e && *p == '0') {
        p++;
    } else if (p < e && (uint8_t)(*p - '1') < 9) {
        while (p < e && (uint8_t)(*p - '0') < 10) p++;
    } else {
        j->p = p;
        return pl__json_err(j, "invalid number");
    }
    if (p < e && *p == '.') {
        if (++p == e || (uint8_t)(*p - '0') >= 10) {
            j->p = p;
            return pl__json_err(j, "invalid number");
        }
        while (p < e && (uint8_t)(*p - '0') < 10) p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p == e || (uint8_t)(*p - '0') >= 10) {
            j->p = p;
            return pl__json_err(j, "invalid number");
        }
        while (p < e && (uint8_t)(*p - '0') < 10) p++;
    }
    j->p = p;
    if (!pl_parse_number(s, (size_t)(p - s), out)) return pl__json_err(j, "invalid number");
    return 0;
}

PL_API int pl__json_hex4(pl_json *j, const uint8_t *p, uint32_t *out) {
    uint32_t v = 0;
    if (j->end - p < 4) return -1;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        uint32_t d;
        if ((uint8_t)(c - '0') < 10)
            d = c - '0';
        else if ((uint8_t)((c | 0x20) - 'a') < 6)
            d = (uint32_t)((c | 0x20) - 'a' + 10);
        else
            return -1;
        v = v * 16 + d;
    }
    *out = v;
    return 0;
}

/* Reads a string, decoding escapes (\uXXXX and surrogate pairs to UTF-8) into a malloc'd,
 * NUL-terminated pl_str the caller frees. Raw control characters and lone surrogates are
 * errors. With `out` NULL the string is validated and skipped. */
PL_API int pl_json_string(pl_json *j, pl_str *out) {
    if (pl_json_peek(j) != PL_JSON_STRING) return pl__json_err(j, "expected a string");
    pl_buf b = {0};
    const uint8_t *p = j->p + 1, *e = j->end;
    for (;;) {
        const uint8_t *run = p;
        while (p < e && *p != '"' && *p != '\\' && *p >= 0x20) p++;
        if (out) pl_buf_put(&b, run, (size_t)(p - run));
        if (p == e) {
            j->p = p;
            pl_buf_free(&b);
            return pl__json_err(j, "unterminated string");
        }
        if (*p == '"') break;
        if (*p < 0x20) {
            j->p = p;
            pl_buf_free(&b);
            return pl__json_err(j, "control character in string");
        }
        /* A backslash escape. */
        const uint8_t *esc = p++;
        uint32_t cp;
        if (p == e) {
            j->p = esc;
            pl_buf_free(&b);
            return pl__json_err(j, "unterminated string");
        }
        switch (*p++) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (pl__json_hex4(j, p, &cp)) {
                j->p = esc;
                pl_buf_free(&b);
                return pl__json_err(j, "invalid \\u escape");
            }
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00) {
                uint32_t lo;
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u' || pl__json_hex4(j, p + 2, &lo) ||
                    lo < 0xDC00 || lo >= 0xE000) {
                    j->p = esc;
                    pl_buf_free(&b);
                    return pl__json_err(j, "invalid \\u escape (unpaired surrogate)");
                }
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                j->p = esc;
                pl_buf_free(&b);
                return pl__json_err(j, "invalid \\u escape (unpaired surrogate)");
            }
            break;
        default:
            j->p = esc;
            pl_buf_free(&b);
            return pl__json_err(j, "invalid escape in string");
        }
        if (!out) continue;
        uint8_t u[4];
        size_t k;
        if (cp < 0x80) {
            u[0] = (uint8_t)cp;
            k = 1;
        } else if (cp < 0x800) {
            u[0] = (uint8_t)(0xC0 | (cp >> 6));
            u[1] = (uint8_t)(0x80 | (cp & 0x3F));
            k = 2;
        } else if (cp < 0x10000) {
            u[0] = (uint8_t)(0xE0 | (cp >> 12));
            u[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            u[2] = (uint8_t)(0x80 | (cp & 0x3F));
            k = 3;
        } else {
            u[0] = (uint8_t)(0xF0 | (cp >> 18));
            u[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
            u[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            u[3] = (uint8_t)(0x80 | (cp & 0x3F));
            k = 4;
        }
        pl_buf_put(&b, u, k);
    }
    j->p = p + 1;
    if (!out) return 0;
    pl_buf_putc(&b, 0);
    if (b.oom) {
        pl_buf_free(&b);
        return pl__json_err(j, "out of memory");
    }
    out->ptr = (char *)b.data;
    out->len = b.len - 1;
    return 0;
}

/* Steps into the array or object at the cursor; then iterate with pl_json_next. */
PL_API int pl_json_enter(pl_json *j) {
    pl_json_type t = pl_json_peek(j);
    if (t != PL_JSON_ARRAY && t != PL_JSON_OBJECT) return pl__json_err(j, "expected an array or object");
    if (j->depth == PL_JSON_MAX_DEPTH) return pl__json_err(j, "nesting too deep");
    j->depth++;
    j->p++;
    return 0;
}

/*
 * Moves to the next element of the array or object most recently entered. Returns 1 with the
 * cursor at the element's value (for an object, the member's key is stored in *key, which the
 * caller frees; pass key = NULL in arrays), 0 after the closing bracket, -1 on error. The
 * previous element must have been read or skipped.
 */
PL_API int pl_json_next(pl_json *j, pl_str *key) {
    if (j->error) return -1;
    /* First element iff the last non-blank byte before the cursor is the opening bracket. */
    const uint8_t *b = j->p;
    while (b > j->start && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\n' || b[-1] == '\r')) b--;
    bool first = b > j->start && (b[-1] == '[' || b[-1] == '{');
    bool object = key != NULL;
    pl__json_ws(j);
    if (j->p == j->end) return pl__json_err(j, "unexpected end of JSON");
    if (*j->p == (object ? '}' : ']')) {
        j->p++;
        j->depth--;
        return 0;
    }
    if (!first) {
        if (*j->p != ',') return pl__json_err(j, object ? "expected ',' or '}'" : "expected ',' or ']'");
        j->p++;
    }
    if (!object) return 1;
    pl__json_ws(j);
    if (j->p == j->end || *j->p != '"') return pl__json_err(j, "expected a member name");
    if (pl_json_string(j, key)) return -1;
    pl__json_ws(j);
    if (j->p == j->end || *j->p != ':') {
        pl_str_free(key);
        return pl__json_err(j, "expected ':'");
    }
    j->p++;
    return 1;
}

/* Skips (and validates) the value at the cursor, whatever its type. */
PL_API int pl_json_skip(pl_json *j) {
    double d;
    bool bv;
    switch (pl_json_peek(j)) {
    case PL_JSON_NULL: return pl_json_null(j);
    case PL_JSON_BOOL: return pl_json_bool(j, &bv);
    case PL_JSON_NUMBER: return pl_json_number(j, &d);
    case PL_JSON_STRING: return pl_json_string(j, NULL);
    case PL_JSON_ARRAY:
    case PL_JSON_OBJECT: {
        bool object = *j->p == '{';
        if (pl_json_enter(j)) return -1;
        pl_str key;
        int more;
        while ((more = pl_json_next(j, object ? &key : NULL)) > 0) {
            if (object) pl_str_free(&key);
            if (pl_json_skip(j)) return -1;
        }
        return more;
    }
    default: return -1;
    }
}

/* Checks that only whitespace follows the cursor. */
PL_API int pl_json_done(pl_json *j) {
    if (j->error) return -1;
    pl__json_ws(j);
    return j->p == j->end ? 0 : pl__json_err(j, "unexpected data after the JSON value");
}

/* Fails the call with "<what>: invalid JSON at byte N: <error>"; returns -1. */
PL_API int pl_json_fail(const pl_json *j, const char *what) {
    pl_buf m = {0};
    pl_buf_puts(&m, what);
    pl_buf_puts(&m, ": invalid JSON at byte ");
    pl_buf_put_u64(&m, j->error_at);
    pl_buf_puts(&m, ": ");
    pl_buf_puts(&m, j->error ? j->error : "syntax error");
    return pl_fail_buf(&m);
}

/* ------------------------------------------------------------------------------------------ */
/* 10. Typed values: 64-bit integers and ISO 8601 dates                                        */
/* ------------------------------------------------------------------------------------------ */

/*
 * Parses a decimal integer: optional spaces/tabs, an optional sign, one or more ASCII digits
 * (leading zeros allowed), optional spaces/tabs; nothing else. Returns false if the text is not
 * such a number or lies outside int64 (-2^63 .. 2^63-1). Python's int() agrees on what it accepts.
 */
PL_API bool pl_parse_int64(const uint8_t *s, size_t n, int64_t *out) {
    const uint8_t *p = s, *const end = s + n;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    bool neg = false;
    if (p < end && ((unsigned)(*p - '+') & ~2u) == 0) neg = *p++ == '-'; /* '+' or '-' */
    const uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    const uint8_t *const digits = p;
    uint64_t v = 0;
    for (; p < end && (unsigned)(*p - '0') < 10; p++) {
        const unsigned d = (unsigned)(*p - '0');
        if (v > (limit - d) / 10) return false; /* v * 10 + d > limit */
        v = v * 10 + d;
    }
    if (p == digits) return false;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (p != end) return false;
    /* -(v - 1) - 1 reaches INT64_MIN without overflowing. */
    *out = neg ? (v ? -(int64_t)(v - 1) - 1 : 0) : (int64_t)v;
    return true;
}

typedef struct pl_date {
    int year, month, day;
} pl_date;

/*
 * Parses an ISO 8601 calendar date in its extended form, exactly "YYYY-MM-DD" (10 bytes, ASCII
 * digits, no surrounding spaces), that names a real day of the proleptic Gregorian calendar with
 * a year from 0001 to 9999 (leap years: divisible by 4, but not by 100 unless by 400). These are
 * the 10-byte strings Python's datetime.date.fromisoformat accepts.
 */
PL_API bool pl_parse_date(const uint8_t *s, size_t n, pl_date *out) {
    static const uint8_t days_in[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (n != 10 || s[4] != '-' || s[7] != '-') return false;
    int v[3] = {0, 0, 0};
    static const uint8_t start[3] = {0, 5, 8}, width[3] = {4, 2, 2};
    for (int k = 0; k < 3; k++) {
        for (int i = start[k]; i < start[k] + width[k]; i++) {
            const unsigned d = (unsigned)(s[i] - '0');
            if (d >= 10) return false;
            v[k] = v[k] * 10 + (int)d;
        }
    }
    const int year = v[0], month = v[1], day = v[2];
    if (year < 1 || month < 1 || month > 12 || day < 1) return false;
    const bool leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    if (day > days_in[month - 1] + (month == 2 && leap)) return false;
    *out = (pl_date){year, month, day};
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* 11. Config helpers, UTF-8, JSON output, streaming JSON scanner                             */
/* ------------------------------------------------------------------------------------------ */

/*
 * Config helpers: the standard messages of the builtin guests' pl_init, built on the reader.
 *
 * pl_config_open starts reading the config object: an empty (or all-blank) config is the empty
 * object. It returns 0 with the reader inside the object (iterate with pl_json_next), 1 if there
 * is nothing to read, -1 after failing the call.
 */
PL_COLD int pl_config_open(pl_json *j, const uint8_t *config, size_t len) {
    pl_json_init(j, config, len);
    size_t i = 0;
    while (i < len && (config[i] == ' ' || config[i] == '\t' || config[i] == '\n' || config[i] == '\r')) i++;
    if (i == len) return 1;
    if (pl_json_peek(j) != PL_JSON_OBJECT || pl_json_enter(j)) {
        if (j->error) return pl_json_fail(j, "config");
        return pl_fail_str("config: expected a JSON object");
    }
    return 0;
}

/* Fails with "config.<key>: expected <what>", or with the JSON syntax error if that is why the
 * value did not read as <what>. Returns -1. */
PL_COLD int pl_config_type_error(const pl_json *j, const char *key, const char *what) {
    if (j->error) return pl_json_fail(j, "config");
    pl_buf m = {0};
    pl_buf_puts(&m, "config.");
    pl_buf_puts(&m, key);
    pl_buf_puts(&m, ": expected ");
    pl_buf_puts(&m, what);
    return pl_fail_buf(&m);
}

/* Fails with "<where>: unknown key '<key>' (known: <known>)". Returns -1. */
PL_COLD int pl_config_unknown_key(const char *where, const pl_str *key, const char *known) {
    pl_buf m = {0};
    pl_buf_puts(&m, where);
    pl_buf_puts(&m, ": unknown key '");
    pl_buf_put(&m, key->ptr, key->len);
    pl_buf_puts(&m, "' (known: ");
    pl_buf_puts(&m, known);
    pl_buf_puts(&m, ")");
    return pl_fail_buf(&m);
}

/* Fails with "<where>: duplicate key '<key>'". Returns -1. */
PL_COLD int pl_config_duplicate_key(const char *where, const pl_str *key) {
    pl_buf m = {0};
    pl_buf_puts(&m, where);
    pl_buf_puts(&m, ": duplicate key '");
    pl_buf_put(&m, key->ptr, key->len);
    pl_buf_puts(&m, "'");
    return pl_fail_buf(&m);
}

/*
 * Reads a config object whose keys are the NULL-terminated list `keys`: for each key present,
 * calls fn(j, index in keys) with the reader at its value, which fn must read (or fail the
 * call). An empty config is the empty object. Fails with "config: unknown key 'k' (known: a, b)"
 * for a key not in the list and "config: duplicate key 'k'" for a repeated one; fn's non-zero
 * result is passed up.
 */
typedef int (*pl_config_fn)(pl_json *j, int key);

PL_COLD int pl_config_read(const uint8_t *config, size_t len, const char *const *keys, pl_config_fn fn) {
    pl_json j;
    int rc = pl_config_open(&j, config, len);
    if (rc) return rc < 0 ? rc : 0;
    uint64_t seen = 0; /* bit per key, to refuse duplicates */
    pl_str key;
    int more;
    while ((more = pl_json_next(&j, &key)) > 0) {
        int k = 0;
        while (keys[k] && !pl_str_eq(&key, keys[k], strlen(keys[k]))) k++;
        if (!keys[k]) {
            pl_buf known = {0};
            for (int i = 0; keys[i]; i++) {
                if (i) pl_buf_puts(&known, ", ");
                pl_buf_puts(&known, keys[i]);
            }
            pl_buf_putc(&known, 0);
            rc = known.oom ? pl_fail_str("out of memory") : pl_config_unknown_key("config", &key, (char *)known.data);
            pl_buf_free(&known);
        } else if (seen >> k & 1) {
            rc = pl_config_duplicate_key("config", &key);
        } else {
            seen |= 1ull << k;
            rc = fn(&j, k);
        }
        pl_str_free(&key);
        if (rc) return rc;
    }
    return more < 0 || pl_json_done(&j) ? pl_json_fail(&j, "config") : 0;
}

/* A growable list of decoded strings (zero-initialise). */
typedef struct pl_strs {
    pl_str *v;
    uint32_t n;
} pl_strs;

/* Appends `s` (the list takes ownership); false if memory ran out. */
PL_COLD bool pl_strs_push(pl_strs *l, pl_str s) {
    pl_str *v = (pl_str *)realloc(l->v, (l->n + 1) * sizeof *v);
    if (!v) return false;
    l->v = v;
    l->v[l->n++] = s;
    return true;
}

/* Index of the entry equal to the n bytes at p, or -1. */
PL_API int64_t pl_strs_find(const pl_strs *l, const void *p, size_t n) {
    for (uint32_t i = 0; i < l->n; i++)
        if (pl_str_eq(&l->v[i], p, n)) return i;
    return -1;
}

/* Reads the config value of `key` as a list of strings into `out`; fails with
 * "config.<key>: expected a list of strings". */
PL_COLD int pl_config_str_list(pl_json *j, const char *key, pl_strs *out) {
    static const char what[] = "a list of strings";
    if (pl_json_peek(j) != PL_JSON_ARRAY || pl_json_enter(j)) return pl_config_type_error(j, key, what);
    int more;
    while ((more = pl_json_next(j, NULL)) > 0) {
        pl_str s;
        if (pl_json_peek(j) != PL_JSON_STRING || pl_json_string(j, &s)) return pl_config_type_error(j, key, what);
        if (!pl_strs_push(out, s)) return pl_fail_str("out of memory");
    }
    return more < 0 ? pl_json_fail(j, "config") : 0;
}

/* Reads the config value of `key` as a string-to-string object into `from` and `to` (same
 * indexes); fails with "config.<key>: expected <what>". */
PL_COLD int pl_config_str_map(pl_json *j, const char *key, const char *what, pl_strs *from, pl_strs *to) {
    if (pl_json_peek(j) != PL_JSON_OBJECT || pl_json_enter(j)) return pl_config_type_error(j, key, what);
    pl_str name;
    int more;
    while ((more = pl_json_next(j, &name)) > 0) {
        pl_str value;
        if (pl_json_peek(j) != PL_JSON_STRING || pl_json_string(j, &value)) {
            pl_str_free(&name);
            return pl_config_type_error(j, key, what);
        }
        if (!pl_strs_push(from, name) || !pl_strs_push(to, value)) return pl_fail_str("out of memory");
    }
    return more < 0 ? pl_json_fail(j, "config") : 0;
}

/* Reads a positive integer of at most `max` (a byte limit such as max_record_bytes); fails with
 * "config.<key>: expected a positive integer". */
PL_COLD int pl_config_size(pl_json *j, const char *key, double max, uint64_t *out) {
    double v;
    if (pl_json_peek(j) != PL_JSON_NUMBER || pl_json_number(j, &v) || !(v >= 1 && v <= max) ||
        v != (double)(uint64_t)v)
        return pl_config_type_error(j, key, "a positive integer");
    *out = (uint64_t)v;
    return 0;
}

/*
 * UTF-8 and JSON string output.
 *
 * pl_utf8_valid checks bytes the way a strict decoder (Python's "utf-8") does: no overlong
 * forms, no surrogates (U+D800..U+DFFF), nothing above U+10FFFF, no truncated sequences.
 * pl_json_put_string writes valid UTF-8 bytes as a JSON string exactly as Python's
 * json.dumps(s, ensure_ascii=False) does: '"' and '\\' escaped, \b \f \n \r \t in their short
 * forms, other control characters as \u00XX (lower-case hex), everything else as is.
 */

/* The accepted range of the byte after the lead byte `c` of a multi-byte sequence, and how many
 * continuation bytes follow it (0: `c` is not a valid lead byte). The bytes after the second
 * are always 80..BF. */
PL_API int pl__utf8_lead(uint8_t c, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) return 1;
    if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0) *lo = 0xA0; /* no overlong 3-byte forms */
        if (c == 0xED) *hi = 0x9F; /* no surrogates */
        return 2;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0) *lo = 0x90; /* no overlong 4-byte forms */
        if (c == 0xF4) *hi = 0x8F; /* nothing above U+10FFFF */
        return 3;
    }
    return 0;
}

/* True if the n bytes at p are valid UTF-8. */
PL_API bool pl_utf8_valid(const uint8_t *p, size_t n) {
    const uint8_t *end = p + n;
    while (p < end) {
        /* ASCII runs, 8 bytes at a time. */
        while (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (w & 0x8080808080808080ull) break;
            p += 8;
        }
        if (p == end) break;
        if (*p < 0x80) {
            p++;
            continue;
        }
        uint8_t lo, hi;
        int more = pl__utf8_lead(*p++, &lo, &hi);
        if (!more || end - p < more || p[0] < lo || p[0] > hi) return false;
        for (int k = 1; k < more; k++)
            if ((p[k] & 0xC0) != 0x80) return false;
        p += more;
    }
    return true;
}

/* The first byte in [p, end) that ends a run of plain string bytes: '"', '\\', a control
 * character or, if `ascii`, a byte >= 0x80; `end` if there is none. 16 bytes at a time. */
PL_API const uint8_t *pl__json_plain_end(const uint8_t *p, const uint8_t *end, bool ascii) {
#ifdef __wasm_simd128__
    const v128_t quote = wasm_i8x16_splat('"'), backslash = wasm_i8x16_splat('\\');
    const v128_t space = wasm_i8x16_splat(0x20), zero = wasm_i8x16_splat(0);
    while (end - p >= 16) {
        const v128_t v = wasm_v128_load(p);
        v128_t stop = wasm_v128_or(wasm_i8x16_eq(v, quote), wasm_i8x16_eq(v, backslash));
        stop = wasm_v128_or(stop, wasm_u8x16_lt(v, space));
        if (ascii) stop = wasm_v128_or(stop, wasm_i8x16_lt(v, zero)); /* bytes >= 0x80 */
        const uint32_t mask = (uint32_t)wasm_i8x16_bitmask(stop);
        if (mask) return p + __builtin_ctz(mask);
        p += 16;
    }
#endif
    while (p < end && *p != '"' && *p != '\\' && *p >= 0x20 && !(ascii && *p >= 0x80)) p++;
    return p;
}

/* Writes the n bytes at p (valid UTF-8) escaped as the inside of a JSON string at dst, which
 * has room for 6n bytes; returns the end of what was written. */
PL_API uint8_t *pl_json_escape_into(uint8_t *dst, const uint8_t *p, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const uint8_t *const end = p + n;
    while (p < end) {
        const uint8_t *run = p;
        p = pl__json_plain_end(p, end, false);
        pl_copy(dst, run, (size_t)(p - run));
        dst += p - run;
        if (p == end) break;
        const uint8_t c = *p++;
        *dst++ = '\\';
        switch (c) {
        case '"':
        case '\\': *dst++ = c; break;
        case '\b': *dst++ = 'b'; break;
        case '\f': *dst++ = 'f'; break;
        case '\n': *dst++ = 'n'; break;
        case '\r': *dst++ = 'r'; break;
        case '\t': *dst++ = 't'; break;
        default:
            memcpy(dst, "u00", 3);
            dst[3] = (uint8_t)hex[c >> 4];
            dst[4] = (uint8_t)hex[c & 15];
            dst += 5;
        }
    }
    return dst;
}

/* Appends the n bytes at p (valid UTF-8) to `b` as a JSON string, quotes included. */
PL_API void pl_json_buf_string(pl_buf *b, const uint8_t *p, size_t n) {
    if (n > SIZE_MAX / 6 - 2) b->oom = true;
    if (!pl_buf_reserve(b, 6 * n + 2)) return;
    uint8_t *d = b->data + b->len;
    *d++ = '"';
    d = pl_json_escape_into(d, p, n);
    *d++ = '"';
    b->len = (size_t)(d - b->data);
}

/* Writes the n bytes at p (valid UTF-8) to the port as a JSON string, quotes included. Any
 * size: a long string is escaped a piece at a time (escaping works byte by byte, so a piece may
 * end inside a UTF-8 sequence). */
PL_API int pl_json_put_string(pl_out *o, const uint8_t *p, size_t n) {
    if (pl_out_putc(o, '"')) return -1;
    while (n) {
        const size_t k = n < PL_OUT_CAP / 6 ? n : PL_OUT_CAP / 6;
        uint8_t *d = pl_out_reserve(o, 6 * k);
        if (!d) return -1;
        o->len = (uint32_t)(pl_json_escape_into(d, p, k) - o->buf);
        p += k;
        n -= k;
    }
    return pl_out_putc(o, '"');
}

/*
 * A streaming JSON value scanner: a small push tokenizer holding its state in linear memory.
 *
 * It reads one JSON value (RFC 8259, any size) fed in chunks of any size, validates it -
 * grammar, UTF-8 inside strings, nesting up to PL_JSON_STREAM_MAX_DEPTH - and appends its
 * compact form (every byte but the insignificant whitespace, so numbers, strings and their
 * escapes keep their original text) to a pl_buf. Nothing of the value is held besides that
 * compact copy, and the caller may pass a NULL buffer to only validate. Escapes \uXXXX are
 * checked for their four hex digits only: like Python's json module, a lone surrogate escape is
 * accepted (the RFC's grammar allows it).
 *
 *     pl_json_stream s;
 *     pl_json_stream_init(&s, 0);
 *     for each chunk:
 *         size_t used = pl_json_stream_feed(&s, chunk, n, &buf);   // stops after the value
 *         if (s.error) ...                                          // s.error, s.error_at
 *         if (s.done) ... the value ended after `used` bytes of this chunk ...
 *     at the end of input: if (!s.done && pl_json_stream_end(&s)) ...
 *
 * Leading whitespace is skipped; the feed stops right after the value's last byte. A number at
 * the top level ends only at a byte that cannot continue it (that byte is not consumed) or at
 * pl_json_stream_end. `offset` counts the bytes consumed since init (plus the initial offset):
 * error_at is the stream offset of the offending byte (or of the end, for a truncated value).
 */
#ifndef PL_JSON_STREAM_MAX_DEPTH
#define PL_JSON_STREAM_MAX_DEPTH 4096
#endif

enum {
    PL__JS_VALUE,     /* a value is expected */
    PL__JS_FIRST,     /* right after '[': a value or ']' */
    PL__JS_KEY_FIRST, /* right after '{': a member name or '}' */
    PL__JS_KEY,       /* after ',' in an object: a member name */
    PL__JS_COLON,     /* after a member name */
    PL__JS_AFTER,     /* after a value in a container: ',' or its closing bracket */
    PL__JS_STRING,    /* in a string */
    PL__JS_ESCAPE,    /* after '\' in a string */
    PL__JS_HEX,       /* in \uXXXX: `count` hex digits to go */
    PL__JS_UTF8,      /* in a UTF-8 sequence: `count` bytes to go, the next in [lo, hi] */
    PL__JS_LITERAL,   /* in true, false or null: `literal[count]` is the next byte */
    /* Numbers: after '-', after a leading '0', in integer digits, after '.', in fraction digits,
     * after 'e', after the exponent's sign, in exponent digits. */
    PL__JS_MINUS,
    PL__JS_ZERO,
    PL__JS_INT,
    PL__JS_DOT,
    PL__JS_FRAC,
    PL__JS_E,
    PL__JS_ESIGN,
    PL__JS_EXP,
};

typedef struct pl_json_stream {
    uint64_t offset;     /* stream offset of the next byte */
    const char *error;   /* NULL until a syntax error */
    uint64_t error_at;   /* stream offset of the error */
    const char *literal; /* the literal being matched (PL__JS_LITERAL) */
    uint32_t depth;      /* open arrays and objects */
    uint8_t state;       /* PL__JS_* */
    uint8_t count, lo, hi;
    bool key;  /* the open string is a member name */
    bool done; /* the value is complete */
    uint8_t objects[PL_JSON_STREAM_MAX_DEPTH / 8]; /* bit per open container: 1 object, 0 array */
} pl_json_stream;

/* Starts reading a value; `offset` is the stream offset of the first byte to be fed. */
PL_API void pl_json_stream_init(pl_json_stream *s, uint64_t offset) {
    s->offset = offset;
    s->error = NULL;
    s->error_at = 0;
    s->literal = NULL;
    s->depth = 0;
    s->state = PL__JS_VALUE;
    s->key = s->done = false;
}

PL_COLD size_t pl__js_error(pl_json_stream *s, const char *what, const uint8_t *at, const uint8_t *start) {
    s->error = what;
    s->error_at = s->offset + (uint64_t)(at - start);
    return (size_t)(at - start);
}

/* True if the byte may follow a complete number inside a container. */
PL_API bool pl__js_number_end(uint8_t c) {
    return c == ',' || c == ']' || c == '}' || c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Feeds the next n bytes; returns how many were consumed (all of them, unless the value ended
 * or an error stopped the scan: see `done` and `error`). `out` may be NULL. */
PL_API size_t pl_json_stream_feed(pl_json_stream *s, const uint8_t *d, size_t n, pl_buf *out) {
    const uint8_t *p = d, *const end = d + n;
    pl_buf sink = {.oom = true}; /* appends to it are ignored */
    if (!out) out = &sink;
    /* Every byte consumed but whitespace outside strings goes to `out`: whole runs of them are
     * appended at once, from `keep` up to the next such whitespace or the end of the feed. */
    const uint8_t *keep = p;
    while (p < end && !s->done) {
        uint8_t c = *p;
        switch (s->state) {
        case PL__JS_STRING: {
            /* The common case: a run of printable ASCII. */
            p = pl__json_plain_end(p, end, true);
            if (p == end) continue;
            c = *p;
            if (c == '"') {
                s->state = s->key ? PL__JS_COLON : PL__JS_AFTER;
                if (!s->key && !s->depth) s->done = true;
            } else if (c == '\\') {
                s->state = PL__JS_ESCAPE;
            } else if (c < 0x20) {
                return pl__js_error(s, "control character in string", p, d);
            } else {
                s->count = (uint8_t)pl__utf8_lead(c, &s->lo, &s->hi);
                if (!s->count) return pl__js_error(s, "invalid UTF-8 in string", p, d);
                s->state = PL__JS_UTF8;
            }
            break;
        }
        case PL__JS_UTF8:
            if (c < s->lo || c > s->hi) return pl__js_error(s, "invalid UTF-8 in string", p, d);
            s->lo = 0x80;
            s->hi = 0xBF;
            if (!--s->count) s->state = PL__JS_STRING;
            break;
        case PL__JS_ESCAPE:
            if (c == 'u') {
                s->state = PL__JS_HEX;
                s->count = 4;
            } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
                       c == 't') {
                s->state = PL__JS_STRING;
            } else {
                return pl__js_error(s, "invalid escape in string", p, d);
            }
            break;
        case PL__JS_HEX:
            if (!((uint8_t)(c - '0') < 10 || (uint8_t)((c | 0x20) - 'a') < 6))
                return pl__js_error(s, "invalid \\u escape", p, d);
            if (!--s->count) s->state = PL__JS_STRING;
            break;
        case PL__JS_LITERAL:
            if (c != (uint8_t)s->literal[s->count]) return pl__js_error(s, "expected a JSON value", p, d);
            if (!s->literal[++s->count]) {
                s->state = PL__JS_AFTER;
                s->done = !s->depth;
            }
            break;
        case PL__JS_MINUS:
        case PL__JS_DOT:
        case PL__JS_E:
        case PL__JS_ESIGN:
            if ((uint8_t)(c - '0') < 10) {
                s->state = s->state == PL__JS_MINUS ? (c == '0' ? PL__JS_ZERO : PL__JS_INT)
                           : s->state == PL__JS_DOT ? PL__JS_FRAC
                                                    : PL__JS_EXP;
            } else if (s->state == PL__JS_E && (c == '+' || c == '-')) {
                s->state = PL__JS_ESIGN;
            } else {
                return pl__js_error(s, "invalid number", p, d);
            }
            break;
        case PL__JS_ZERO:
        case PL__JS_INT:
        case PL__JS_FRAC:
        case PL__JS_EXP:
            if ((uint8_t)(c - '0') < 10 && s->state != PL__JS_ZERO) {
                /* Digits: take the whole run at once. */
                while (p < end && (uint8_t)(*p - '0') < 10) p++;
                continue;
            }
            if ((c == '.' || (c | 0x20) == 'e') && s->state != PL__JS_EXP &&
                !(c == '.' && s->state == PL__JS_FRAC)) {
                s->state = c == '.' ? PL__JS_DOT : PL__JS_E;
                break;
            }
            /* The number ended before this byte, which is not consumed. */
            if (!s->depth) {
                s->done = true;
                continue;
            }
            if (!pl__js_number_end(c)) return pl__js_error(s, "invalid number", p, d);
            s->state = PL__JS_AFTER;
            continue;
        default: {
            /* Structure: whitespace, brackets, ',' and ':', and the first byte of a value. */
            if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                pl_buf_put(out, keep, (size_t)(p - keep));
                while (++p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
                }
                keep = p;
                continue;
            }
            const uint8_t st = s->state;
            const bool in_object = s->depth && (s->objects[(s->depth - 1) / 8] >> ((s->depth - 1) % 8) & 1);
            if (st == PL__JS_AFTER) {
                if (c == ',') {
                    s->state = in_object ? PL__JS_KEY : PL__JS_VALUE;
                    break;
                }
                if (c != (in_object ? '}' : ']'))
                    return pl__js_error(s, in_object ? "expected ',' or '}'" : "expected ',' or ']'", p, d);
            } else if (st == PL__JS_COLON) {
                if (c != ':') return pl__js_error(s, "expected ':'", p, d);
                s->state = PL__JS_VALUE;
                break;
            } else if (st == PL__JS_KEY || st == PL__JS_KEY_FIRST) {
                if (c == '"') {
                    s->state = PL__JS_STRING;
                    s->key = true;
                    break;
                }
                if (st == PL__JS_KEY || c != '}') return pl__js_error(s, "expected a member name", p, d);
            } else if (st == PL__JS_FIRST && c == ']') {
                /* An empty array: closed below. */
            } else {
                /* PL__JS_VALUE, or PL__JS_FIRST with a value. */
                s->key = false;
                if (c == '"') {
                    s->state = PL__JS_STRING;
                } else if (c == '[' || c == '{') {
                    if (s->depth == PL_JSON_STREAM_MAX_DEPTH)
                        return pl__js_error(s, "nesting deeper than the limit of 4096", p, d);
                    uint8_t *bits = &s->objects[s->depth / 8], bit = (uint8_t)(1u << (s->depth % 8));
                    *bits = (uint8_t)(c == '{' ? *bits | bit : *bits & ~bit);
                    s->depth++;
                    s->state = c == '{' ? PL__JS_KEY_FIRST : PL__JS_FIRST;
                } else if (c == '-') {
                    s->state = PL__JS_MINUS;
                } else if ((uint8_t)(c - '0') < 10) {
                    s->state = c == '0' ? PL__JS_ZERO : PL__JS_INT;
                } else if (c == 't' || c == 'f' || c == 'n') {
                    s->literal = c == 't' ? "true" : c == 'f' ? "false" : "null";
                    s->count = 1;
                    s->state = PL__JS_LITERAL;
                } else {
                    return pl__js_error(s, "expected a JSON value", p, d);
                }
                break;
            }
            /* A closing bracket. */
            s->depth--;
            s->state = PL__JS_AFTER;
            s->done = !s->depth;
            break;
        }
        }
        p++;
    }
    pl_buf_put(out, keep, (size_t)(p - keep));
    s->offset += (uint64_t)(p - d);
    return (size_t)(p - d);
}

/* Ends the input: completes a top-level number; anything else unfinished is an error. */
PL_API int pl_json_stream_end(pl_json_stream *s) {
    if (s->error) return -1;
    if (s->done) return 0;
    const uint8_t st = s->state;
    if (!s->depth && (st == PL__JS_ZERO || st == PL__JS_INT || st == PL__JS_FRAC || st == PL__JS_EXP)) {
        s->done = true;
        return 0;
    }
    s->error = st >= PL__JS_MINUS && st != PL__JS_ZERO && st != PL__JS_INT && st != PL__JS_FRAC &&
                       st != PL__JS_EXP
                   ? "invalid number"
                   : "unexpected end of JSON";
    s->error_at = s->offset;
    return -1;
}

/* Validates the n bytes at `text` as exactly one JSON value (whitespace around it allowed) and
 * appends its compact form to `out` (which may be NULL). On error returns -1 with s->error set
 * and s->error_at the offset in `text`. */
PL_API int pl_json_compact(pl_json_stream *s, const uint8_t *text, size_t n, pl_buf *out) {
    pl_json_stream_init(s, 0);
    size_t used = pl_json_stream_feed(s, text, n, out);
    if (s->error || pl_json_stream_end(s)) return -1;
    while (used < n && (text[used] == ' ' || text[used] == '\t' || text[used] == '\n' || text[used] == '\r'))
        used++;
    if (used == n) return 0;
    s->error = "unexpected data after the JSON value";
    s->error_at = used;
    return -1;
}

/* The end of the value starting at p in compact JSON that is known to be valid (the output of
 * pl_json_compact): a fast skip that does not check anything. */
PL_API const uint8_t *pl_json_compact_skip(const uint8_t *p, const uint8_t *end) {
    uint32_t depth = 0;
    do {
        const uint8_t c = *p++;
        if (c == '"') {
            while (*(p = pl__json_plain_end(p, end, false)) == '\\') p += 2;
            p++;
        } else if (c == '[' || c == '{') {
            depth++;
        } else if (c == ']' || c == '}') {
            depth--;
        } else if (c != ',' && c != ':') {
            /* A number or a literal: up to the next delimiter. */
            while (p < end && *p != ',' && *p != ']' && *p != '}') p++;
        }
    } while (depth && p < end);
    return p;
}

/* ------------------------------------------------------------------------------------------ */
/* 12. Rejects output                                                                          */
/* ------------------------------------------------------------------------------------------ */

/*
 * The rejects output of record-oriented guests (port 1): CSV with the header
 * "line,reason,record", written before the first row. `line` is where the record starts in the
 * input, `reason` says why it was rejected and `record` is the record's text (for CSV input, the
 * record's fields written as one CSV row), quoted as a CSV field when needed, so nothing is lost.
 * pl_reject counts the record in pl_stats.records_rejected.
 */
static bool pl__rejects_started;
static pl_buf pl__reject_line; /* scratch for the line number */

PL_COLD int pl_reject(uint64_t line, const pl_buf *reason, const uint8_t *record, size_t n) {
    pl_stats.records_rejected++;
    pl_out *o = pl_port(1);
    if (!pl__rejects_started) {
        pl__rejects_started = true;
        if (pl_out_write(o, "line,reason,record\n", 19)) return -1;
    }
    pl__reject_line.len = 0;
    pl_buf_put_u64(&pl__reject_line, line);
    if (reason->oom || pl__reject_line.oom) return pl_fail_str("out of memory");
    return pl_out_write(o, pl__reject_line.data, pl__reject_line.len) || pl_out_putc(o, ',') ||
           pl_csv_put_field(o, reason->data, reason->len, pl_csv_needs_quoting(reason->data, reason->len)) ||
           pl_out_putc(o, ',') || pl_csv_put_field(o, record, n, pl_csv_needs_quoting(record, n)) ||
           pl_out_putc(o, '\n');
}

/* Appends the n bytes at p to a reason in double quotes, cut after about 64 bytes (at a UTF-8
 * character boundary, marked "..."): `column 'x' is not a number: "abc"`. */
PL_COLD void pl_reject_put_value(pl_buf *reason, const uint8_t *p, size_t n) {
    size_t k = n;
    if (k > 64) {
        k = 64;
        while (k && (p[k] & 0xC0) == 0x80) k--;
    }
    pl_buf_putc(reason, '"');
    pl_buf_put(reason, p, k);
    pl_buf_puts(reason, k < n ? "...\"" : "\"");
}

#endif /* PIPELINE_GUEST_H */
