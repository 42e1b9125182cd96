/*
 * gunzip — decompress a gzip stream: RFC 1952 members holding RFC 1951 deflate data.
 *
 * Input: one or more gzip members back to back (as `cat a.gz b.gz` makes them); zero bytes
 * between or after members are skipped (padding, as gzip and Python's gzip module allow). The
 * header may carry FEXTRA, FNAME, FCOMMENT and FHCRC (checked); reserved flag bits are refused.
 * Deflate: stored, fixed and dynamic Huffman blocks, matches up to 32 KiB back. Each member's
 * CRC32 and ISIZE are checked. An empty input is an empty output (as Python's gzip.decompress).
 *
 * Output (port 0): the decompressed bytes, emitted in blocks of PL_OUT_CAP bytes.
 *
 * Config: none (an empty object).
 *
 * Errors fail the run with "compressed byte N: <what>", N the offset in the input of the byte
 * where the bad element starts (the member for a bad magic, the trailer for a CRC mismatch, the
 * input's length for a stream cut short).
 *
 * Streaming: the input may arrive in chunks of any size, down to 1 byte. Everything the
 * decoder needs between chunks (bit buffer, Huffman tables, the 32 KiB history, a partly read
 * header or trailer) is in static memory, so a snapshot between two chunks resumes exactly. The
 * decoder never holds a partly decoded symbol: a literal/length code and its distance are
 * decoded together from the bit buffer and committed only when all their bits are there, so the
 * only suspended state is "waiting for more bits" at an element boundary.
 */
#include "pipeline_guest.h"
#include "pl_helpers.h"

#define WSIZE 32768u  /* deflate's window: how far back a match may reach */
#define MAX_MATCH 258u
#define FAST_BITS 10u /* Huffman codes up to this length decode with one table lookup */
#define FAST_MASK ((1u << FAST_BITS) - 1)

/* gzip header flags (RFC 1952 2.3.1). */
#define FHCRC 2u
#define FEXTRA 4u
#define FNAME 8u
#define FCOMMENT 16u
#define FRESERVED 0xE0u

/* Results of decode() besides a symbol. */
#define NEED (-1) /* the bits so far are a prefix of a code: more input needed */
#define BAD (-2)  /* no code matches */

/*
 * A canonical Huffman code (RFC 1951 3.2.2). `fast` maps the next FAST_BITS input bits to
 * symbol << 4 | length for codes up to FAST_BITS long, 0 for longer codes (and unused bit
 * patterns), which decode() resolves bit by bit from `count` and `symbol`.
 */
typedef struct huff {
    uint16_t fast[1u << FAST_BITS];
    uint16_t count[16];   /* number of codes of each length */
    uint16_t symbol[288]; /* symbols in code order */
} huff;

/* Length and distance bases and extra bits (RFC 1951 3.2.5). */
static const uint16_t LBASE[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                   31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t LEXT[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t DBASE[30] = {1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
                                   193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const uint8_t DEXT[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
/* The order code length code lengths are sent in (RFC 1951 3.2.7). */
static const uint8_t CLEN_ORDER[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

enum {
    S_HEADER,  /* the 10 fixed header bytes (or padding between members) */
    S_XLEN,    /* FEXTRA length */
    S_EXTRA,   /* FEXTRA data */
    S_NAME,    /* FNAME, up to its NUL */
    S_COMMENT, /* FCOMMENT, up to its NUL */
    S_HCRC,    /* FHCRC */
    S_BLOCK,   /* a block header: BFINAL, BTYPE */
    S_STORED_LEN, /* a stored block's LEN, NLEN */
    S_STORED,  /* a stored block's data */
    S_TABLE,   /* HLIT, HDIST, HCLEN */
    S_CLENS,   /* code length code lengths */
    S_LENS,    /* literal/length and distance code lengths */
    S_CODES,   /* compressed data of a Huffman block */
    S_TRAILER, /* CRC32, ISIZE */
};

static const char *const WHERE[] = {
    [S_HEADER] = "header", [S_XLEN] = "header", [S_EXTRA] = "header",   [S_NAME] = "header",
    [S_COMMENT] = "header", [S_HCRC] = "header", [S_TRAILER] = "trailer",
};

static struct {
    /* Input: the chunk being decoded, and the bit buffer (bits enter at the top, leave at the
     * bottom; bits above `bitcnt` are zero). */
    const uint8_t *chunk, *in, *end;
    uint64_t base; /* input offset of `chunk` */
    uint64_t bitbuf;
    unsigned bitcnt;
    /* Position in the stream. */
    uint8_t state;
    bool final;      /* the current block is the member's last */
    uint8_t flags;   /* FLG of the current member */
    uint8_t hdr[10]; /* fixed header bytes, then the trailer's 8 */
    uint32_t n;      /* bytes of hdr read, or bytes left to skip/copy, or code lengths read */
    uint32_t hcrc;   /* CRC32 of the header so far */
    uint64_t trailer_at; /* input offset of the current member's trailer */
    uint64_t members;    /* members completed */
    uint64_t member_out; /* bytes the current member decompressed to, before `obuf[member_from]` */
    uint32_t crc;        /* CRC32 of the member's output up to obuf[crc_from] */
    uint32_t nlen, ndist, ncode;
    uint8_t lens[286 + 30];
    const huff *lencode, *distcode;
    huff dyn_len, dyn_dist, clen;
    huff fixed_len, fixed_dist;
    /* Output: obuf[0, emit_from) is history (up to WSIZE bytes), [emit_from, opos) is new.
     * New bytes are emitted once there are PL_OUT_CAP of them; a match may add MAX_MATCH more
     * past that, and its 8-byte copies may overshoot by 7. */
    size_t opos, emit_from, crc_from, member_from;
    uint8_t obuf[WSIZE + PL_OUT_CAP + MAX_MATCH + 8];
} g;

/* ---------------------------------------------------------------------------------------- */
/* CRC32 (IEEE, reflected), slicing by 8                                                     */
/* ---------------------------------------------------------------------------------------- */

static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 255];
}

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    for (; n >= 8; p += 8, n -= 8) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        a ^= crc;
        crc = crc_table[7][a & 255] ^ crc_table[6][(a >> 8) & 255] ^ crc_table[5][(a >> 16) & 255] ^
              crc_table[4][a >> 24] ^ crc_table[3][b & 255] ^ crc_table[2][(b >> 8) & 255] ^
              crc_table[1][(b >> 16) & 255] ^ crc_table[0][b >> 24];
    }
    while (n--) crc = crc_table[0][(crc ^ *p++) & 255] ^ (crc >> 8);
    return ~crc;
}

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* Input offset of the next unread bit's byte. */
static uint64_t byte_pos(void) { return g.base + (uint64_t)(g.in - g.chunk) - (g.bitcnt + 7) / 8; }

/* Fails with "compressed byte <at>: <what><detail>". */
static int fail_at(uint64_t at, const char *what, const char *detail) {
    pl_buf m = {0};
    pl_buf_puts(&m, "compressed byte ");
    pl_buf_put_u64(&m, at);
    pl_buf_puts(&m, ": ");
    pl_buf_puts(&m, what);
    if (detail) pl_buf_puts(&m, detail);
    return pl_fail_buf(&m);
}

static void put_hex32(pl_buf *m, uint32_t v) {
    static const char hex[] = "0123456789abcdef";
    pl_buf_puts(m, "0x");
    for (int s = 28; s >= 0; s -= 4) pl_buf_putc(m, (uint8_t)hex[(v >> s) & 15]);
}

/* ---------------------------------------------------------------------------------------- */
/* Huffman codes                                                                             */
/* ---------------------------------------------------------------------------------------- */

/*
 * Builds `h` from the code lengths of symbols 0..n-1 (0 = unused). Returns -1 for an
 * over-subscribed set, and for an incomplete one unless it has at most one code, of length 1
 * (RFC 1951 allows a lone distance code; zlib accepts exactly these).
 */
static int build(huff *h, const uint8_t *len, unsigned n) {
    uint16_t offs[16];
    memset(h->count, 0, sizeof h->count);
    for (unsigned i = 0; i < n; i++) h->count[len[i]]++;
    h->count[0] = 0;
    int left = 1, codes = 0;
    for (unsigned l = 1; l < 16; l++) {
        left = (left << 1) - h->count[l];
        if (left < 0) return -1;
        codes += h->count[l];
    }
    if (left > 0 && !(codes == 0 || (codes == 1 && h->count[1] == 1))) return -1;
    offs[1] = 0;
    for (unsigned l = 1; l < 15; l++) offs[l + 1] = (uint16_t)(offs[l] + h->count[l]);
    for (unsigned i = 0; i < n; i++)
        if (len[i]) h->symbol[offs[len[i]]++] = (uint16_t)i;
    /* Fill the fast table: codes are assigned in increasing order per length and sent most
     * significant bit first, so the table index is the bit-reversed code. */
    memset(h->fast, 0, sizeof h->fast);
    unsigned code = 0, index = 0;
    for (unsigned l = 1; l <= FAST_BITS; l++, code <<= 1) {
        for (unsigned k = 0; k < h->count[l]; k++, code++) {
            unsigned rev = 0;
            for (unsigned b = 0; b < l; b++) rev |= ((code >> b) & 1u) << (l - 1 - b);
            uint16_t entry = (uint16_t)(h->symbol[index++] << 4 | l);
            for (unsigned j = rev; j <= FAST_MASK; j += 1u << l) h->fast[j] = entry;
        }
    }
    return 0;
}

/*
 * Decodes the code at the bottom of `bits`, of which `avail` are valid (the rest are zero).
 * Returns symbol << 4 | code length, NEED or BAD. Consumes nothing.
 */
static inline int decode(const huff *h, uint64_t bits, unsigned avail) {
    unsigned e = h->fast[bits & FAST_MASK];
    if (e) return (e & 15) <= avail ? (int)e : NEED;
    /* A code longer than FAST_BITS (or none): walk the canonical code one bit at a time. */
    int code = 0, first = 0, index = 0;
    for (unsigned l = 1; l < 16; l++) {
        if (l > avail) return NEED;
        code |= (int)((bits >> (l - 1)) & 1);
        int count = h->count[l];
        if (code - first < count) return h->symbol[index + code - first] << 4 | (int)l;
        index += count;
        first = (first + count) << 1;
        code <<= 1;
    }
    return BAD;
}

static void build_fixed(void) {
    uint8_t l[288];
    memset(l, 8, 144);
    memset(l + 144, 9, 112);
    memset(l + 256, 7, 24);
    memset(l + 280, 8, 8);
    build(&g.fixed_len, l, 288);
    /* 32 distance codes, complete; 30 and 31 never occur in valid data (codes() refuses them). */
    memset(l, 5, 32);
    build(&g.fixed_dist, l, 32);
}

/* ---------------------------------------------------------------------------------------- */
/* Bits and bytes                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* Tops the bit buffer up to at least 57 bits, or with all the input left. */
static inline void refill(void) {
    if (g.end - g.in >= 8) {
        uint64_t w;
        memcpy(&w, g.in, 8);
        g.bitbuf |= w << g.bitcnt;
        g.in += (63 - g.bitcnt) >> 3;
        g.bitcnt |= 56;
        g.bitbuf &= g.bitcnt == 64 ? ~0ull : (1ull << g.bitcnt) - 1; /* keep bits above bitcnt zero */
        return;
    }
    while (g.bitcnt <= 56 && g.in < g.end) {
        g.bitbuf |= (uint64_t)*g.in++ << g.bitcnt;
        g.bitcnt += 8;
    }
}

/* Takes n (<= 32) bits; the caller has checked that bitcnt >= n. */
static inline uint32_t take(unsigned n) {
    uint32_t v = (uint32_t)(g.bitbuf & ((1ull << n) - 1));
    g.bitbuf >>= n;
    g.bitcnt -= n;
    return v;
}

/* ---------------------------------------------------------------------------------------- */
/* Output                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* Folds the output since crc_from into the member's CRC. */
static void crc_catch_up(void) {
    g.crc = crc32_update(g.crc, g.obuf + g.crc_from, g.opos - g.crc_from);
    g.crc_from = g.opos;
}

/* Emits the new output and keeps the last WSIZE bytes as history. */
static int flush(void) {
    crc_catch_up();
    if (pl_out_write(pl_port(0), g.obuf + g.emit_from, g.opos - g.emit_from)) return -1;
    g.member_out += g.opos - g.member_from;
    size_t keep = g.opos < WSIZE ? g.opos : WSIZE;
    memmove(g.obuf, g.obuf + g.opos - keep, keep);
    g.opos = g.emit_from = g.crc_from = g.member_from = keep;
    return 0;
}

static inline bool output_full(void) { return g.opos - g.emit_from >= PL_OUT_CAP; }

/* ---------------------------------------------------------------------------------------- */
/* Deflate                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/*
 * Decodes the current Huffman block until its end-of-block code (returns 1), until the input
 * runs out or the output region is full (0), or an error (-1). The hot loop works on local
 * copies of the bit buffer and the output position.
 */
static int codes(void) {
    const huff *lc = g.lencode, *dc = g.distcode;
    uint8_t *const ob = g.obuf;
    size_t op = g.opos;
    const size_t limit = g.emit_from + PL_OUT_CAP;
    const uint64_t member_before = g.member_out - g.member_from; /* + op: bytes of this member */
    int rc = 0;
    const char *error = NULL;
    while (op < limit) {
        refill();
        uint64_t bb = g.bitbuf;
        unsigned bc = g.bitcnt;
        int e = decode(lc, bb, bc);
        if (e < 0) {
            if (e == BAD) error = "invalid literal/length code";
            break;
        }
        unsigned sym = (unsigned)e >> 4, used = (unsigned)e & 15;
        if (sym < 256) {
            ob[op++] = (uint8_t)sym;
            take(used);
            continue;
        }
        if (sym == 256) {
            take(used);
            rc = 1;
            break;
        }
        sym -= 257;
        if (sym >= 29) {
            error = "invalid literal/length code";
            break;
        }
        unsigned x = LEXT[sym];
        if (used + x > bc) break;
        unsigned length = LBASE[sym] + (unsigned)((bb >> used) & ((1u << x) - 1));
        used += x;
        int d = decode(dc, bb >> used, bc - used);
        if (d < 0) {
            if (d == BAD) error = "invalid distance code";
            break;
        }
        unsigned dsym = (unsigned)d >> 4;
        used += (unsigned)d & 15;
        if (dsym >= 30) {
            error = "invalid distance code";
            break;
        }
        x = DEXT[dsym];
        if (used + x > bc) break;
        unsigned dist = DBASE[dsym] + (unsigned)((bb >> used) & ((1u << x) - 1));
        used += x;
        if (dist > member_before + op) {
            error = "invalid distance too far back";
            break;
        }
        take(used);
        uint8_t *dst = ob + op;
        const uint8_t *src = dst - dist;
        if (dist >= 8) {
            /* Whole 8-byte words: each reads only bytes already final (dist >= 8). */
            for (unsigned i = 0; i < length; i += 8) memcpy(dst + i, src + i, 8);
        } else if (dist == 1) {
            memset(dst, *src, length);
        } else {
            for (unsigned i = 0; i < length; i++) dst[i] = src[i];
        }
        op += length;
    }
    g.opos = op;
    if (error) return fail_at(byte_pos(), error, NULL);
    return rc;
}

/* Reads the code lengths of a dynamic block (S_LENS); 1 when all are read, 0 for more input. */
static int code_lengths(void) {
    const uint32_t total = g.nlen + g.ndist;
    while (g.n < total) {
        refill();
        uint64_t at = byte_pos();
        int e = decode(&g.clen, g.bitbuf, g.bitcnt);
        if (e == NEED) return 0;
        if (e == BAD) return fail_at(at, "invalid code lengths code", NULL);
        unsigned sym = (unsigned)e >> 4, used = (unsigned)e & 15;
        if (sym < 16) {
            take(used);
            g.lens[g.n++] = (uint8_t)sym;
            continue;
        }
        /* 16: repeat the previous length 3-6 times; 17: 3-10 zeros; 18: 11-138 zeros. */
        unsigned x = sym == 16 ? 2 : sym == 17 ? 3 : 7;
        if (used + x > g.bitcnt) return 0;
        if (sym == 16 && g.n == 0) return fail_at(at, "invalid bit length repeat (no previous length)", NULL);
        take(used);
        unsigned rep = (sym == 16 ? 3 : sym == 17 ? 3 : 11) + take(x);
        uint8_t value = sym == 16 ? g.lens[g.n - 1] : 0;
        if (g.n + rep > total) return fail_at(at, "invalid bit length repeat (past the last code)", NULL);
        memset(g.lens + g.n, value, rep);
        g.n += rep;
    }
    uint64_t at = byte_pos();
    if (g.lens[256] == 0) return fail_at(at, "invalid dynamic block (no end-of-block code)", NULL);
    if (build(&g.dyn_len, g.lens, g.nlen)) return fail_at(at, "invalid literal/lengths set", NULL);
    if (build(&g.dyn_dist, g.lens + g.nlen, g.ndist)) return fail_at(at, "invalid distances set", NULL);
    g.lencode = &g.dyn_len;
    g.distcode = &g.dyn_dist;
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* The gzip stream                                                                           */
/* ---------------------------------------------------------------------------------------- */

/* After a block: the next block, or the member's trailer. */
static void end_block(void) {
    if (!g.final) {
        g.state = S_BLOCK;
        return;
    }
    crc_catch_up();
    take(g.bitcnt & 7); /* the trailer starts at a byte boundary */
    g.trailer_at = byte_pos();
    g.state = S_TRAILER;
    g.n = 0;
}

/* A header byte was read: fold it into the header CRC. */
static void header_byte(uint8_t c) { g.hcrc = crc32_update(g.hcrc, &c, 1); }

/* Checks the fixed header bytes as they arrive; -1 on a bad one. */
static int check_header(uint8_t c, uint64_t at) {
    static const uint8_t magic[2] = {0x1f, 0x8b};
    if (g.n < 2 && c != magic[g.n]) return fail_at(at, "not gzip data (bad magic bytes, expected 1f 8b)", NULL);
    if (g.n == 2 && c != 8) return fail_at(at, "unknown compression method (not deflate)", NULL);
    if (g.n == 3 && (c & FRESERVED)) return fail_at(at, "reserved gzip header flags set", NULL);
    return 0;
}

static int check_trailer(uint64_t at) {
    uint32_t crc = (uint32_t)g.hdr[0] | (uint32_t)g.hdr[1] << 8 | (uint32_t)g.hdr[2] << 16 | (uint32_t)g.hdr[3] << 24;
    uint32_t isize = (uint32_t)g.hdr[4] | (uint32_t)g.hdr[5] << 8 | (uint32_t)g.hdr[6] << 16 | (uint32_t)g.hdr[7] << 24;
    uint64_t out = g.member_out + (g.opos - g.member_from);
    pl_buf m = {0};
    if (crc != g.crc) {
        pl_buf_puts(&m, "CRC32 mismatch (stored ");
        put_hex32(&m, crc);
        pl_buf_puts(&m, ", computed ");
        put_hex32(&m, g.crc);
    } else if (isize != (uint32_t)out) {
        pl_buf_puts(&m, "length mismatch (stored ");
        pl_buf_put_u64(&m, isize);
        pl_buf_puts(&m, ", decompressed ");
        pl_buf_put_u64(&m, (uint32_t)out);
    } else {
        return 0;
    }
    pl_buf_puts(&m, ")");
    pl_buf_putc(&m, 0);
    int rc = m.oom ? pl_fail_str("out of memory") : fail_at(at, (const char *)m.data, NULL);
    pl_buf_free(&m);
    return rc;
}

/* Decodes as much of the chunk as possible: 0 once it is all consumed, -1 on an error. */
static int run(void) {
    for (;;) {
        refill();
        uint64_t at = byte_pos();
        switch (g.state) {
        case S_HEADER: {
            if (g.bitcnt < 8) return 0;
            uint8_t c = (uint8_t)take(8);
            if (g.n == 0 && c == 0 && g.members > 0) continue; /* padding after a member */
            if (g.n == 0) g.hcrc = 0;
            if (check_header(c, at)) return -1;
            header_byte(c);
            g.hdr[g.n++] = c;
            if (g.n < 10) continue;
            g.flags = g.hdr[3];
            g.n = 0;
            g.state = S_XLEN;
            continue;
        }
        case S_XLEN:
            if (!(g.flags & FEXTRA)) {
                g.state = S_NAME;
                continue;
            }
            if (g.bitcnt < 16) return 0;
            g.n = take(16);
            header_byte((uint8_t)g.n);
            header_byte((uint8_t)(g.n >> 8));
            g.state = S_EXTRA;
            continue;
        case S_EXTRA:
            for (; g.n && g.bitcnt >= 8; g.n--) header_byte((uint8_t)take(8));
            if (g.n) {
                if (g.in == g.end) return 0;
                continue; /* the bit buffer ran dry: refill it */
            }
            g.state = S_NAME;
            continue;
        case S_NAME:
        case S_COMMENT: {
            if (!(g.flags & (g.state == S_NAME ? FNAME : FCOMMENT))) {
                g.state++;
                continue;
            }
            uint8_t c = 1;
            while (c && g.bitcnt >= 8) header_byte(c = (uint8_t)take(8));
            if (c) {
                if (g.in == g.end) return 0;
                continue; /* the bit buffer ran dry: refill it */
            }
            g.state++;
            continue;
        }
        case S_HCRC:
            if (g.flags & FHCRC) {
                if (g.bitcnt < 16) return 0;
                if (take(16) != (g.hcrc & 0xFFFF)) return fail_at(at, "header CRC16 mismatch", NULL);
            }
            g.crc = 0;
            g.member_out = 0;
            g.crc_from = g.member_from = g.opos;
            g.state = S_BLOCK;
            continue;
        case S_BLOCK:
            if (g.bitcnt < 3) return 0;
            g.final = take(1);
            switch (take(2)) {
            case 0:
                take(g.bitcnt & 7); /* stored data starts at a byte boundary */
                g.state = S_STORED_LEN;
                break;
            case 1:
                g.lencode = &g.fixed_len;
                g.distcode = &g.fixed_dist;
                g.state = S_CODES;
                break;
            case 2: g.state = S_TABLE; break;
            default: return fail_at(at, "invalid block type 3", NULL);
            }
            continue;
        case S_STORED_LEN: {
            if (g.bitcnt < 32) return 0;
            uint32_t len = take(16), nlen = take(16);
            if (len != (~nlen & 0xFFFF)) return fail_at(at, "invalid stored block lengths", NULL);
            g.n = len;
            g.state = S_STORED;
            continue;
        }
        case S_STORED:
            while (g.n) {
                if (output_full() && flush()) return -1;
                if (g.bitcnt >= 8) { /* bytes already in the bit buffer come first */
                    g.obuf[g.opos++] = (uint8_t)take(8);
                    g.n--;
                    continue;
                }
                size_t k = (size_t)(g.end - g.in);
                if (k == 0) return 0;
                if (k > g.n) k = g.n;
                size_t room = PL_OUT_CAP - (g.opos - g.emit_from);
                if (k > room) k = room;
                memcpy(g.obuf + g.opos, g.in, k);
                g.opos += k;
                g.in += k;
                g.n -= (uint32_t)k;
            }
            end_block();
            continue;
        case S_TABLE:
            if (g.bitcnt < 14) return 0;
            g.nlen = take(5) + 257;
            g.ndist = take(5) + 1;
            g.ncode = take(4) + 4;
            if (g.nlen > 286 || g.ndist > 30) return fail_at(at, "too many length or distance codes", NULL);
            memset(g.lens, 0, 19);
            g.n = 0;
            g.state = S_CLENS;
            continue;
        case S_CLENS:
            for (; g.n < g.ncode && g.bitcnt >= 3; g.n++) g.lens[CLEN_ORDER[g.n]] = (uint8_t)take(3);
            if (g.n < g.ncode) {
                if (g.in == g.end) return 0;
                continue; /* the bit buffer ran dry: refill it */
            }
            if (build(&g.clen, g.lens, 19)) return fail_at(at, "invalid code lengths set", NULL);
            g.n = 0;
            g.state = S_LENS;
            continue;
        case S_LENS: {
            int r = code_lengths();
            if (r <= 0) return r;
            g.state = S_CODES;
            continue;
        }
        case S_CODES: {
            int r = codes();
            if (r < 0) return -1;
            if (r == 1) {
                end_block();
            } else if (output_full()) {
                if (flush()) return -1;
            } else {
                return 0;
            }
            continue;
        }
        case S_TRAILER:
            for (; g.n < 8 && g.bitcnt >= 8; g.n++) g.hdr[g.n] = (uint8_t)take(8);
            if (g.n < 8) {
                if (g.in == g.end) return 0;
                continue; /* the bit buffer ran dry: refill it */
            }
            if (check_trailer(g.trailer_at)) return -1;
            g.members++;
            g.n = 0;
            g.state = S_HEADER;
            continue;
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Hooks                                                                                     */
/* ---------------------------------------------------------------------------------------- */

static int pl_guest_init(const uint8_t *config, size_t len) {
    if (pl_config_none(config, len, "gunzip")) return -1;
    crc_init();
    build_fixed();
    return 0;
}

static int pl_guest_process(const uint8_t *data, size_t len) {
    g.chunk = g.in = data;
    g.end = data + len;
    int rc = run();
    g.base += len;
    g.chunk = g.in = g.end = NULL;
    return rc;
}

static int pl_guest_finish(void) {
    if (g.state != S_HEADER || g.n != 0) {
        const char *where = WHERE[g.state] ? WHERE[g.state] : "deflate data";
        pl_buf m = {0};
        pl_buf_puts(&m, "truncated gzip stream (input ends in the ");
        pl_buf_puts(&m, where);
        pl_buf_puts(&m, g.members ? " of member " : " of the first member");
        if (g.members) pl_buf_put_u64(&m, g.members + 1);
        pl_buf_puts(&m, ")");
        pl_buf_putc(&m, 0);
        int rc = m.oom ? pl_fail_str("out of memory") : fail_at(g.base, (const char *)m.data, NULL);
        pl_buf_free(&m);
        return rc;
    }
    crc_catch_up();
    return pl_out_write(pl_port(0), g.obuf + g.emit_from, g.opos - g.emit_from);
}
