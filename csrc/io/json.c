/*
 * json.c -- a strict, bounded JSON parser (RFC 8259 grammar) and JSON writing helpers; see json.h.
 *
 * Grammar implemented (recursive descent, depth <= UQ_JSON_MAX_DEPTH):
 *   value  = object | array | string | number | "true" | "false" | "null"
 *   object = '{' [ string ':' value *( ',' string ':' value ) ] '}'
 *   array  = '[' [ value *( ',' value ) ] ']'
 *   number = [ '-' ] ( '0' | [1-9][0-9]* ) [ '.' [0-9]+ ] [ ( 'e' | 'E' ) [ '+' | '-' ] [0-9]+ ]
 * Pass 1 (fill = 0) validates and counts; pass 2 (fill = 1) writes nodes and unescaped strings into buffers
 * sized by pass 1, and checks keys for duplicates (sorting one scratch array per object).
 */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s;
    size_t len, pos;
    int fill;            /* 0: count only; 1: write */
    int64_t max_nodes;
    int32_t nnodes;      /* nodes used so far */
    size_t nstr;         /* string bytes used so far (including NULs) */
    int32_t max_members; /* largest object (pass 1) */
    uq_json_node *nodes;
    char *strings;
    struct keyref { const char *k; size_t n; size_t off; } *scratch;
} parser;

static uq_status perr(parser *p, const char *what) {
    return uq_set_error(UQ_ERR_FORMAT, "invalid JSON at byte %zu: %s", p->pos, what);
}

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') p->pos++;
        else break;
    }
}

static int peek(const parser *p) { return p->pos < p->len ? (unsigned char)p->s[p->pos] : -1; }

static uq_status new_node(parser *p, uq_json_type t, int32_t *idx) {
    if ((int64_t)p->nnodes >= p->max_nodes)
        return uq_set_error(UQ_ERR_FORMAT, "invalid JSON at byte %zu: more than %lld values", p->pos,
                            (long long)p->max_nodes);
    *idx = p->nnodes++;
    if (p->fill) {
        uq_json_node *n = &p->nodes[*idx];
        memset(n, 0, sizeof *n);
        n->type = t;
        n->next = -1;
        n->child = -1;
        n->offset = p->pos;
    }
    return UQ_OK;
}

/* Length of the UTF-8 sequence starting at s[0..avail) or 0 if invalid (strict). */
static size_t utf8_seq(const unsigned char *s, size_t avail) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t n;
    unsigned cp, min;
    if (c >= 0xc2 && c <= 0xdf) { n = 2; cp = c & 0x1f; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { n = 3; cp = c & 0x0f; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (avail < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

int uq_json_utf8_valid(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_seq(u + i, len - i);
        if (n == 0) return 0;
        i += n;
    }
    return 1;
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static void emit(parser *p, char **w, const char *src, size_t n) {
    if (p->fill) {
        memcpy(*w, src, n);
        *w += n;
    }
    p->nstr += n;
}

/* Parses a string at p->pos (which is '"'); on success *out and *out_len are the unescaped NUL-terminated copy
 * (fill pass) and p->pos is past the closing quote. */
static uq_status parse_string(parser *p, const char **out, size_t *out_len) {
    p->pos++; /* opening quote */
    size_t start_nstr = p->nstr;
    char *w = p->fill ? p->strings + p->nstr : NULL;
    char *w0 = w;
    for (;;) {
        if (p->pos >= p->len) return perr(p, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c < 0x20) return perr(p, "control character inside string (must be escaped)");
        if (c == '\\') {
            if (p->pos + 1 >= p->len) return perr(p, "unterminated escape in string");
            char e = p->s[p->pos + 1];
            char one;
            switch (e) {
            case '"': one = '"'; break;
            case '\\': one = '\\'; break;
            case '/': one = '/'; break;
            case 'b': one = '\b'; break;
            case 'f': one = '\f'; break;
            case 'n': one = '\n'; break;
            case 'r': one = '\r'; break;
            case 't': one = '\t'; break;
            case 'u': one = 0; break;
            default: return perr(p, "invalid escape in string");
            }
            if (e != 'u') {
                emit(p, &w, &one, 1);
                p->pos += 2;
                continue;
            }
            unsigned cp;
            if (p->pos + 6 > p->len || !hex4(p->s + p->pos + 2, &cp)) return perr(p, "invalid \\u escape in string");
            size_t adv = 6;
            if (cp >= 0xdc00 && cp <= 0xdfff) return perr(p, "unpaired low surrogate escape in string");
            if (cp >= 0xd800 && cp <= 0xdbff) {
                unsigned lo;
                if (p->pos + 12 > p->len || p->s[p->pos + 6] != '\\' || p->s[p->pos + 7] != 'u' ||
                    !hex4(p->s + p->pos + 8, &lo) || lo < 0xdc00 || lo > 0xdfff)
                    return perr(p, "unpaired high surrogate escape in string");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                adv = 12;
            }
            if (cp == 0) return perr(p, "\\u0000 inside a string is not supported");
            char buf[4];
            size_t n;
            if (cp < 0x80) { buf[0] = (char)cp; n = 1; }
            else if (cp < 0x800) { buf[0] = (char)(0xc0 | (cp >> 6)); buf[1] = (char)(0x80 | (cp & 0x3f)); n = 2; }
            else if (cp < 0x10000) {
                buf[0] = (char)(0xe0 | (cp >> 12)); buf[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
                buf[2] = (char)(0x80 | (cp & 0x3f)); n = 3;
            } else {
                buf[0] = (char)(0xf0 | (cp >> 18)); buf[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
                buf[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); buf[3] = (char)(0x80 | (cp & 0x3f)); n = 4;
            }
            emit(p, &w, buf, n);
            p->pos += adv;
            continue;
        }
        /* a run of plain bytes */
        size_t n = utf8_seq((const unsigned char *)p->s + p->pos, p->len - p->pos);
        if (n == 0) return perr(p, "invalid UTF-8 inside string");
        emit(p, &w, p->s + p->pos, n);
        p->pos += n;
    }
    char nul = '\0';
    emit(p, &w, &nul, 1);
    if (out) *out = w0;
    if (out_len) *out_len = p->nstr - start_nstr - 1;
    return UQ_OK;
}

static uq_status parse_number(parser *p, int32_t idx) {
    size_t start = p->pos;
    if (peek(p) == '-') p->pos++;
    int c = peek(p);
    if (c == '0') {
        p->pos++;
    } else if (c >= '1' && c <= '9') {
        while ((c = peek(p)) >= '0' && c <= '9') p->pos++;
    } else {
        return perr(p, "invalid number");
    }
    if (peek(p) == '.') {
        p->pos++;
        if (!((c = peek(p)) >= '0' && c <= '9')) return perr(p, "digit expected after '.' in number");
        while ((c = peek(p)) >= '0' && c <= '9') p->pos++;
    }
    if (peek(p) == 'e' || peek(p) == 'E') {
        p->pos++;
        if (peek(p) == '+' || peek(p) == '-') p->pos++;
        if (!((c = peek(p)) >= '0' && c <= '9')) return perr(p, "digit expected in exponent");
        while ((c = peek(p)) >= '0' && c <= '9') p->pos++;
    }
    if (p->fill) {
        p->nodes[idx].str = p->s + start;
        p->nodes[idx].len = p->pos - start;
    }
    return UQ_OK;
}

static int keyref_cmp(const void *a, const void *b) {
    const struct keyref *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->k, y->k, n);
    if (c) return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

static uq_status parse_value(parser *p, int depth, int32_t *out);

static uq_status check_unique(parser *p, int32_t obj) {
    const uq_json_node *o = &p->nodes[obj];
    if (o->count < 2) return UQ_OK;
    int32_t k = 0;
    for (int32_t c = o->child; c >= 0; c = p->nodes[c].next, k++) {
        p->scratch[k].k = p->nodes[c].key;
        p->scratch[k].n = p->nodes[c].key_len;
        p->scratch[k].off = p->nodes[c].offset;
    }
    qsort(p->scratch, (size_t)k, sizeof *p->scratch, keyref_cmp);
    for (int32_t i = 1; i < k; i++)
        if (keyref_cmp(&p->scratch[i - 1], &p->scratch[i]) == 0)
            return uq_set_error(UQ_ERR_FORMAT, "duplicate key '%.200s' in JSON object (second value at byte %zu)",
                                p->scratch[i].k,
                                p->scratch[i].off > p->scratch[i - 1].off ? p->scratch[i].off : p->scratch[i - 1].off);
    return UQ_OK;
}

static uq_status parse_container(parser *p, int depth, int is_obj, int32_t idx) {
    if (depth >= UQ_JSON_MAX_DEPTH)
        return uq_set_error(UQ_ERR_FORMAT, "invalid JSON at byte %zu: nesting deeper than %d", p->pos,
                            UQ_JSON_MAX_DEPTH);
    char close = is_obj ? '}' : ']';
    p->pos++; /* '{' or '[' */
    skip_ws(p);
    int32_t prev = -1, count = 0;
    if (peek(p) == close) {
        p->pos++;
        return UQ_OK;
    }
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        uq_status st;
        if (is_obj) {
            if (peek(p) != '"') return perr(p, "expected a string key in object");
            if ((st = parse_string(p, &key, &key_len)) != UQ_OK) return st;
            skip_ws(p);
            if (peek(p) != ':') return perr(p, "expected ':' after object key");
            p->pos++;
            skip_ws(p);
        }
        int32_t c;
        if ((st = parse_value(p, depth + 1, &c)) != UQ_OK) return st;
        if (p->fill) {
            if (prev < 0) p->nodes[idx].child = c;
            else p->nodes[prev].next = c;
            p->nodes[c].key = key;
            p->nodes[c].key_len = key_len;
        }
        prev = c;
        count++;
        skip_ws(p);
        int ch = peek(p);
        if (ch == ',') {
            p->pos++;
            skip_ws(p);
            continue;
        }
        if (ch == close) {
            p->pos++;
            break;
        }
        return perr(p, is_obj ? "expected ',' or '}' in object" : "expected ',' or ']' in array");
    }
    if (p->fill) {
        p->nodes[idx].count = count;
        if (is_obj) return check_unique(p, idx);
    } else if (is_obj && count > p->max_members) {
        p->max_members = count;
    }
    return UQ_OK;
}

static uq_status parse_value(parser *p, int depth, int32_t *out) {
    int c = peek(p);
    uq_status st;
    int32_t idx;
    switch (c) {
    case '{':
    case '[':
        if ((st = new_node(p, c == '{' ? UQ_JSON_OBJECT : UQ_JSON_ARRAY, &idx)) != UQ_OK) return st;
        if ((st = parse_container(p, depth, c == '{', idx)) != UQ_OK) return st;
        break;
    case '"': {
        if ((st = new_node(p, UQ_JSON_STRING, &idx)) != UQ_OK) return st;
        const char *s;
        size_t n;
        if ((st = parse_string(p, &s, &n)) != UQ_OK) return st;
        if (p->fill) {
            p->nodes[idx].str = s;
            p->nodes[idx].len = n;
        }
        break;
    }
    case 't': case 'f': case 'n': {
        const char *word = c == 't' ? "true" : c == 'f' ? "false" : "null";
        size_t n = strlen(word);
        if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) return perr(p, "invalid literal");
        if ((st = new_node(p, c == 't' ? UQ_JSON_TRUE : c == 'f' ? UQ_JSON_FALSE : UQ_JSON_NULL, &idx)) != UQ_OK)
            return st;
        p->pos += n;
        break;
    }
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            if ((st = new_node(p, UQ_JSON_NUMBER, &idx)) != UQ_OK) return st;
            if ((st = parse_number(p, idx)) != UQ_OK) return st;
            break;
        }
        return perr(p, c < 0 ? "unexpected end of text, expected a value" : "expected a value");
    }
    *out = idx;
    return UQ_OK;
}

static uq_status run(parser *p) {
    p->pos = 0;
    p->nnodes = 0;
    p->nstr = 0;
    skip_ws(p);
    if (p->pos >= p->len) return perr(p, "empty text, expected a value");
    int32_t root;
    uq_status st = parse_value(p, 0, &root);
    if (st != UQ_OK) return st;
    skip_ws(p);
    if (p->pos != p->len) return perr(p, "unexpected data after the value");
    return UQ_OK;
}

uq_status uq_json_parse(const char *text, size_t len, int64_t max_nodes, uq_json_doc *doc) {
    if (!doc) return uq_set_error(UQ_ERR_ARG, "uq_json_parse: doc is NULL");
    memset(doc, 0, sizeof *doc);
    if (!text && len > 0) return uq_set_error(UQ_ERR_ARG, "uq_json_parse: text is NULL");
    if (max_nodes <= 0) max_nodes = UQ_JSON_DEFAULT_MAX_NODES;
    if (max_nodes > INT32_MAX - 1) max_nodes = INT32_MAX - 1;
    parser p;
    memset(&p, 0, sizeof p);
    p.s = text;
    p.len = len;
    p.max_nodes = max_nodes;
    uq_status st = run(&p);
    if (st != UQ_OK) return st;
    size_t nnodes = (size_t)p.nnodes, nstr = p.nstr, nmem = (size_t)p.max_members;
    void *nodes = NULL, *strings = NULL, *scratch = NULL;
    if ((st = uq_alloc(nnodes * sizeof(uq_json_node), &nodes)) != UQ_OK ||
        (st = uq_alloc(nstr, &strings)) != UQ_OK ||
        (st = uq_alloc(nmem * sizeof(struct keyref), &scratch)) != UQ_OK) {
        uq_free(nodes);
        uq_free(strings);
        return st;
    }
    p.fill = 1;
    p.nodes = nodes;
    p.strings = strings;
    p.scratch = scratch;
    st = run(&p);
    uq_free(scratch);
    if (st == UQ_OK && ((size_t)p.nnodes != nnodes || p.nstr != nstr))
        st = uq_set_error(UQ_ERR_INTERNAL, "uq_json_parse: passes disagree");
    if (st != UQ_OK) {
        uq_free(nodes);
        uq_free(strings);
        return st;
    }
    doc->nodes = nodes;
    doc->nnodes = p.nnodes;
    doc->strings = strings;
    doc->strings_len = nstr;
    return UQ_OK;
}

void uq_json_free(uq_json_doc *doc) {
    if (!doc) return;
    uq_free(doc->nodes);
    uq_free(doc->strings);
    memset(doc, 0, sizeof *doc);
}

const uq_json_node *uq_json_member(const uq_json_doc *d, const uq_json_node *obj, const char *key) {
    if (!d || !obj || !key || obj->type != UQ_JSON_OBJECT) return NULL;
    size_t n = strlen(key);
    for (const uq_json_node *c = uq_json_first(d, obj); c; c = uq_json_next(d, c))
        if (c->key_len == n && memcmp(c->key, key, n) == 0) return c;
    return NULL;
}

int uq_json_as_int64(const uq_json_node *n, int64_t *out) {
    if (!n || n->type != UQ_JSON_NUMBER || !n->str || n->len == 0) return 0;
    const char *s = n->str;
    size_t i = 0, len = n->len;
    int neg = 0;
    if (s[0] == '-') { neg = 1; i = 1; }
    if (i >= len) return 0;
    uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
    for (; i < len; i++) {
        char c = s[i];
        if (c < '0' || c > '9') return 0; /* '.', 'e', 'E' */
        unsigned d = (unsigned)(c - '0');
        if (v > (lim - d) / 10) return 0;
        v = v * 10 + d;
    }
    if (out) *out = neg ? (v == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return 1;
}

int uq_json_as_double(const uq_json_node *n, double *out) {
    if (!n || n->type != UQ_JSON_NUMBER || !n->str || n->len == 0 || n->len >= 512) return 0;
    char buf[512];
    memcpy(buf, n->str, n->len);
    buf[n->len] = '\0';
    errno = 0;
    char *end = NULL;
    double v = strtod(buf, &end);
    if (end != buf + n->len || !isfinite(v)) return 0;
    if (out) *out = v;
    return 1;
}

const char *uq_json_type_name(uq_json_type t) {
    switch (t) {
    case UQ_JSON_NULL: return "null";
    case UQ_JSON_FALSE: case UQ_JSON_TRUE: return "boolean";
    case UQ_JSON_NUMBER: return "number";
    case UQ_JSON_STRING: return "string";
    case UQ_JSON_ARRAY: return "array";
    case UQ_JSON_OBJECT: return "object";
    }
    return "?";
}

/* ------------------------------------------------------------------------------- writing ---- */

void uq_json_buf_put(uq_json_buf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (n >= SIZE_MAX / 2 - b->len) { b->failed = 1; return; }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) { b->failed = 1; return; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void uq_json_buf_puts(uq_json_buf *b, const char *s) { uq_json_buf_put(b, s, strlen(s)); }

void uq_json_buf_i64(uq_json_buf *b, int64_t v) {
    char t[32];
    int n = snprintf(t, sizeof t, "%lld", (long long)v);
    uq_json_buf_put(b, t, (size_t)n);
}

void uq_json_buf_string(uq_json_buf *b, const char *s, size_t n) {
    uq_json_buf_put(b, "\"", 1);
    size_t run_start = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                snprintf(u, sizeof u, "\\u%04x", c);
                esc = u;
            }
        }
        if (esc) {
            uq_json_buf_put(b, s + run_start, i - run_start);
            uq_json_buf_puts(b, esc);
            run_start = i + 1;
        }
    }
    uq_json_buf_put(b, s + run_start, n - run_start);
    uq_json_buf_put(b, "\"", 1);
}

void uq_json_buf_free(uq_json_buf *b) {
    if (!b) return;
    free(b->p);
    memset(b, 0, sizeof *b);
}
