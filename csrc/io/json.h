/*
 * json.h -- internal header: a small, strict, bounded JSON (RFC 8259) parser and writer helpers.
 *
 * Not part of the public API (uniql.h). Used by the safetensors reader/writer, and meant for the artifact
 * reader and config parsing.
 *
 * Parsing is two passes over the text with the same code: the first validates and counts values and string
 * bytes, the second fills one node array and one string arena allocated exactly (plus one scratch array for
 * duplicate-key checks). No allocation per token. Recursion is bounded by UQ_JSON_MAX_DEPTH and the number of
 * values by a caller-given limit, so a hostile input cannot exhaust the stack or memory.
 *
 * Strictness: exactly one value, surrounded only by JSON whitespace (space, tab, CR, LF); no comments, no
 * trailing commas, no NaN/Infinity, no leading zeros, no control characters inside strings; strings must be
 * valid UTF-8 (no overlong forms, no surrogates, <= U+10FFFF); escaped surrogates must form a pair; the
 * escape \u0000 is rejected (strings are handed out NUL-terminated); duplicate keys inside one object are
 * rejected. Errors are UQ_ERR_FORMAT with a message giving the byte offset, UQ_ERR_NOMEM on allocation
 * failure.
 */
#ifndef UQ_IO_JSON_H
#define UQ_IO_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "uniql.h"

#define UQ_JSON_MAX_DEPTH 64                 /* nesting limit (containers inside containers) */
#define UQ_JSON_DEFAULT_MAX_NODES (1 << 22)  /* default limit on the number of values */

typedef enum {
    UQ_JSON_NULL = 0,
    UQ_JSON_FALSE = 1,
    UQ_JSON_TRUE = 2,
    UQ_JSON_NUMBER = 3,
    UQ_JSON_STRING = 4,
    UQ_JSON_ARRAY = 5,
    UQ_JSON_OBJECT = 6
} uq_json_type;

/* One value. Children of an array/object form a singly linked list through `next` (indices into the
 * document's node array, -1 terminates); object members carry their key. */
typedef struct {
    uq_json_type type;
    int32_t next;    /* next sibling inside the parent container, -1 for the last or for the root */
    int32_t child;   /* ARRAY/OBJECT: first element/member, -1 when empty */
    int32_t count;   /* ARRAY/OBJECT: number of elements/members */
    const char *key; /* member of an object: its key (unescaped, NUL-terminated); NULL otherwise */
    size_t key_len;
    const char *str; /* STRING: unescaped NUL-terminated value; NUMBER: the literal in the source text
                        (NOT NUL-terminated, `len` bytes); NULL otherwise */
    size_t len;
    size_t offset;   /* byte offset of the value in the source text (for messages) */
} uq_json_node;

typedef struct {
    uq_json_node *nodes; /* nodes[0] is the root; NULL before parse / after free */
    int32_t nnodes;
    char *strings;       /* arena of unescaped strings (owned) */
    size_t strings_len;
} uq_json_doc;

/* Parses text[0..len) (need not be NUL-terminated) into doc. max_nodes <= 0 selects
 * UQ_JSON_DEFAULT_MAX_NODES; at most INT32_MAX - 1. On failure doc is left empty (safe to free). */
uq_status uq_json_parse(const char *text, size_t len, int64_t max_nodes, uq_json_doc *doc);
/* Releases what parse allocated; accepts NULL and an empty/failed doc. */
void uq_json_free(uq_json_doc *doc);

static inline const uq_json_node *uq_json_root(const uq_json_doc *d) { return d->nnodes > 0 ? &d->nodes[0] : NULL; }
static inline const uq_json_node *uq_json_first(const uq_json_doc *d, const uq_json_node *n) {
    return n->child >= 0 ? &d->nodes[n->child] : NULL;
}
static inline const uq_json_node *uq_json_next(const uq_json_doc *d, const uq_json_node *n) {
    return n->next >= 0 ? &d->nodes[n->next] : NULL;
}
/* Member of object `obj` with key `key` (NUL-terminated), or NULL (also when obj is not an object). */
const uq_json_node *uq_json_member(const uq_json_doc *d, const uq_json_node *obj, const char *key);

/* 1 when n is a NUMBER written as an integer (no fraction, no exponent) that fits int64, with *out set;
 * 0 otherwise (not a number, a fraction/exponent, or out of range). */
int uq_json_as_int64(const uq_json_node *n, int64_t *out);
/* 1 when n is a NUMBER (any form) representable as a finite double, with *out set; 0 otherwise. */
int uq_json_as_double(const uq_json_node *n, double *out);
/* Name of a type ("object", "string", ...). */
const char *uq_json_type_name(uq_json_type t);

/* 1 when s[0..len) is valid UTF-8 (strict: no overlong forms, no surrogates, <= U+10FFFF). */
int uq_json_utf8_valid(const char *s, size_t len);

/* Growable output buffer for writing JSON. Functions never fail loudly: an allocation failure sets
 * `failed` and later appends are ignored; check `failed` once at the end. p is NUL-terminated when
 * non-NULL and not failed. */
typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} uq_json_buf;

void uq_json_buf_put(uq_json_buf *b, const char *s, size_t n);
void uq_json_buf_puts(uq_json_buf *b, const char *s);
void uq_json_buf_i64(uq_json_buf *b, int64_t v);
/* Appends s[0..n) as a quoted JSON string: '"' and '\\' escaped, control characters as \b \f \n \r \t or
 * \u00XX; other bytes (UTF-8) verbatim. */
void uq_json_buf_string(uq_json_buf *b, const char *s, size_t n);
void uq_json_buf_free(uq_json_buf *b);

#endif /* UQ_IO_JSON_H */
