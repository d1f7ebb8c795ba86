/* engine/jinja.c - a Jinja2 interpreter for chat templates (the subset Hugging Face templates
 * use), matching Jinja2 3.x as transformers configures it, byte for byte.
 *
 * Owns: the lexer (Jinja2's tokenizer rules, with trim_blocks, lstrip_blocks, `-`/`+`
 *       whitespace control and its trailing-newline rule), the parser (one AST per template,
 *       kept in the template's arena), and the renderer (a tree walk over Python-like values).
 * Runs: on any thread; a parsed template is read-only, and each render has its own arena.
 * Must not: do I/O, keep global state, or let a template loop forever or grow without bound
 *       (every render has step, memory and output limits).
 *
 * Errors unwind with longjmp to ym_jinja_parse / ym_jinja_render: everything a parse or a
 * render allocates comes from one arena, freed in one go, so an error frees nothing by hand.
 * Values are immutable once built (the sandbox forbids mutating lists and dicts), except
 * namespace() objects, so they are shared by pointer without reference counts. */
#include "engine/jinja.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

#include "engine/utf8.h"

/* ------------------------------------------------------------------------------------------ */
/* Arena and error unwinding                                                                  */

typedef struct chunk {
    struct chunk *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
} chunk;

typedef struct arena {
    chunk *head;
    size_t total, limit;
} arena;

typedef struct ctx {
    arena *ar;
    jmp_buf *jb;
    ym_diag *diag;
    ym_err err;
    int raised;
} ctx;

static void ctx_fail(ctx *c, ym_err err, int raised, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6), noreturn));
static void ctx_fail(ctx *c, ym_err err, int raised, int line, const char *fmt, ...)
{
    char msg[sizeof(((ym_diag *)0)->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (c->diag != NULL) {
        if (raised || line <= 0)
            snprintf(c->diag->msg, sizeof(c->diag->msg), "%s", msg);
        else
            snprintf(c->diag->msg, sizeof(c->diag->msg), "line %d: %.480s", line, msg);
        snprintf(c->diag->param, sizeof(c->diag->param), "%s", raised ? YM_JINJA_RAISED : "template");
    }
    c->err = err;
    c->raised = raised;
    longjmp(*c->jb, 1);
}
#define FAIL(c, line, ...) ctx_fail((c), YM_EINVAL, 0, (line), __VA_ARGS__)

static void *aalloc(ctx *c, size_t n)
{
    arena *a = c->ar;
    n = (n + 15) & ~(size_t)15;
    if (a->head == NULL || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->total + cap > a->limit)
            ctx_fail(c, YM_EINVAL, 0, 0, "template used more than %zu bytes of memory", a->limit);
        chunk *k = malloc(sizeof(chunk) + cap);
        if (k == NULL)
            ctx_fail(c, YM_ENOMEM, 0, 0, "out of memory");
        k->cap = cap;
        k->used = 0;
        k->next = a->head;
        a->head = k;
        a->total += cap;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

static void arena_free(arena *a)
{
    chunk *k = a->head;
    while (k != NULL) {
        chunk *n = k->next;
        free(k);
        k = n;
    }
    a->head = NULL;
}

static char *astrdup(ctx *c, const char *s, size_t n)
{
    char *p = aalloc(c, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ------------------------------------------------------------------------------------------ */
/* Values                                                                                     */

enum {
    V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_LOOP, V_FUNC,
    V_METHOD, V_MACRO,
};

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jv {
    int k;
    union {
        int b;
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;                /* V_STR; V_UNDEF: p is the hint (may be NULL) */
        jlist *l;           /* V_LIST (tuple when l->tuple) */
        jdict *d;           /* V_DICT, V_NS */
        struct loopv *loop; /* V_LOOP */
        int fn;             /* V_FUNC */
        struct {
            struct jv *self;
            const char *name;
        } m;                /* V_METHOD */
        struct node *macro; /* V_MACRO */
    } u;
} jv;

struct jlist {
    jv *v;
    size_t n, cap;
    int tuple;
};
struct jdict {
    jv *key;
    jv *val;
    size_t n, cap;
};

typedef struct loopv {
    jlist *items;
    size_t i;
    int depth;
} loopv;

static const jv NONE = { .k = V_NONE };

static jv mk_bool(int b) { jv v = { .k = V_BOOL }; v.u.b = b != 0; return v; }
static jv mk_int(int64_t i) { jv v = { .k = V_INT }; v.u.i = i; return v; }
static jv mk_float(double f) { jv v = { .k = V_FLOAT }; v.u.f = f; return v; }
static jv mk_str(const char *p, size_t n) { jv v = { .k = V_STR }; v.u.s.p = p; v.u.s.n = n; return v; }
static jv mk_cstr(const char *p) { return mk_str(p, strlen(p)); }
static jv mk_undef(const char *hint) { jv v = { .k = V_UNDEF }; v.u.s.p = hint; return v; }

static jlist *list_new(ctx *c, size_t cap)
{
    jlist *l = aalloc(c, sizeof(*l));
    l->n = 0;
    l->cap = cap ? cap : 4;
    l->tuple = 0;
    l->v = aalloc(c, l->cap * sizeof(jv));
    return l;
}
static void list_push(ctx *c, jlist *l, jv v)
{
    if (l->n == l->cap) {
        jv *nv = aalloc(c, 2 * l->cap * sizeof(jv));
        memcpy(nv, l->v, l->n * sizeof(jv));
        l->v = nv;
        l->cap *= 2;
    }
    l->v[l->n++] = v;
}
static jv mk_list(jlist *l) { jv v = { .k = V_LIST }; v.u.l = l; return v; }

static jdict *dict_new(ctx *c, size_t cap)
{
    jdict *d = aalloc(c, sizeof(*d));
    d->n = 0;
    d->cap = cap ? cap : 4;
    d->key = aalloc(c, d->cap * sizeof(jv));
    d->val = aalloc(c, d->cap * sizeof(jv));
    return d;
}
static jv mk_dict(jdict *d) { jv v = { .k = V_DICT }; v.u.d = d; return v; }

static int v_eq(const jv *a, const jv *b);

static jv *dict_find(jdict *d, const jv *key)
{
    for (size_t i = 0; i < d->n; i++)
        if (v_eq(&d->key[i], key))
            return &d->val[i];
    return NULL;
}
static jv *dict_find_str(jdict *d, const char *s, size_t n)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->key[i].k == V_STR && d->key[i].u.s.n == n && memcmp(d->key[i].u.s.p, s, n) == 0)
            return &d->val[i];
    return NULL;
}
static void dict_set(ctx *c, jdict *d, jv key, jv val)
{
    jv *old = dict_find(d, &key);
    if (old != NULL) {
        *old = val;
        return;
    }
    if (d->n == d->cap) {
        jv *nk = aalloc(c, 2 * d->cap * sizeof(jv));
        jv *nv = aalloc(c, 2 * d->cap * sizeof(jv));
        memcpy(nk, d->key, d->n * sizeof(jv));
        memcpy(nv, d->val, d->n * sizeof(jv));
        d->key = nk;
        d->val = nv;
        d->cap *= 2;
    }
    d->key[d->n] = key;
    d->val[d->n] = val;
    d->n++;
}

/* ------------------------------------------------------------------------------------------ */
/* Growable byte buffers (in the arena)                                                       */

typedef struct buf {
    char *p;
    size_t n, cap, max;
} buf;

static void buf_put(ctx *c, buf *b, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (b->n + n > b->max)
        ctx_fail(c, YM_EINVAL, 0, 0, "output longer than %zu bytes", b->max);
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n)
            cap *= 2;
        char *np = aalloc(c, cap);
        if (b->n)
            memcpy(np, b->p, b->n);
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void buf_puts(ctx *c, buf *b, const char *s) { buf_put(c, b, s, strlen(s)); }
static void buf_putc(ctx *c, buf *b, char ch) { buf_put(c, b, &ch, 1); }
static void buf_printf(ctx *c, buf *b, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void buf_printf(ctx *c, buf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    buf_put(c, b, tmp, n < 0 ? 0 : (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}
static jv buf_str(buf *b) { return mk_str(b->p ? b->p : "", b->n); }

/* ------------------------------------------------------------------------------------------ */
/* UTF-8 and Python's notion of whitespace                                                    */

/* Decode one code point at s[*i] (valid UTF-8 is guaranteed by the callers' inputs; a stray
 * byte decodes as itself so nothing loops). */
static int32_t u8_next(const char *s, size_t n, size_t *i)
{
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + *i, (utf8proc_ssize_t)(n - *i), &cp);
    if (k <= 0) {
        cp = (unsigned char)s[*i];
        k = 1;
    }
    *i += (size_t)k;
    return cp;
}
static size_t u8_put(char *out, int32_t cp)
{
    return (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)out);
}
static size_t u8_len(const char *s, size_t n)
{
    return ym_utf8_count((const unsigned char *)s, n);
}
/* Byte offset of code point index ci (ci <= number of code points). */
static size_t u8_off(const char *s, size_t n, size_t ci)
{
    return ym_utf8_offset((const unsigned char *)s, n, ci);
}

/* str.isspace() / re's \s */
static int py_space(int32_t cp)
{
    return (cp >= 9 && cp <= 13) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202f || cp == 0x205f || cp == 0x3000;
}
/* Length of the whitespace run ending at s[n) (bytes). */
static size_t rspace_len(const char *s, size_t n)
{
    size_t end = n;
    while (end > 0) {
        size_t st = end - 1;
        while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80)
            st--;
        size_t j = st;
        if (!py_space(u8_next(s, n, &j)))
            break;
        end = st;
    }
    return n - end;
}
static size_t lspace_len(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        if (!py_space(u8_next(s, n, &j)))
            break;
        i = j;
    }
    return i;
}

/* ------------------------------------------------------------------------------------------ */
/* Lexer: Jinja2's tokenizer rules (jinja2/lexer.py) with trim_blocks and lstrip_blocks on    */

enum {
    T_EOF, T_DATA, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT,
    T_FLOAT, T_OP,
};

typedef struct tok {
    int type;
    int line;
    const char *p; /* T_DATA, T_NAME, T_OP: the text; T_STRING: the decoded value */
    size_t n;
    int64_t i;
    double f;
} tok;

typedef struct lexer {
    ctx *c;
    const char *s;
    size_t n, pos;
    int line;
    tok *t;
    size_t nt, cap;
} lexer;

static tok *lex_push(lexer *lx, int type, const char *p, size_t n)
{
    if (lx->nt == lx->cap) {
        size_t cap = lx->cap ? lx->cap * 2 : 256;
        tok *nt = aalloc(lx->c, cap * sizeof(tok));
        if (lx->nt)
            memcpy(nt, lx->t, lx->nt * sizeof(tok));
        lx->t = nt;
        lx->cap = cap;
    }
    tok *t = &lx->t[lx->nt++];
    memset(t, 0, sizeof(*t));
    t->type = type;
    t->line = lx->line;
    t->p = p;
    t->n = n;
    return t;
}

static void count_lines(lexer *lx, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        lx->line += p[i] == '\n';
}

static int starts(const lexer *lx, size_t at, const char *lit)
{
    size_t k = strlen(lit);
    return at + k <= lx->n && memcmp(lx->s + at, lit, k) == 0;
}

/* Python's unicode-escape decoding of a string literal's body (Jinja2 decodes literals so). */
static void decode_string(lexer *lx, const char *s, size_t n, tok *t)
{
    char *out = aalloc(lx->c, n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] != '\\' || i + 1 >= n) {
            out[o++] = s[i++];
            continue;
        }
        char e = s[i + 1];
        int32_t cp = -1;
        size_t used = 2;
        switch (e) {
        case '\n': cp = -2; break; /* line continuation: nothing */
        case '\\': cp = '\\'; break;
        case '\'': cp = '\''; break;
        case '"': cp = '"'; break;
        case 'a': cp = 7; break;
        case 'b': cp = 8; break;
        case 'f': cp = 12; break;
        case 'n': cp = 10; break;
        case 'r': cp = 13; break;
        case 't': cp = 9; break;
        case 'v': cp = 11; break;
        case 'x': case 'u': case 'U': {
            size_t nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            int32_t v = 0;
            for (size_t k = 0; k < nd; k++) {
                char h = i + 2 + k < n ? s[i + 2 + k] : 0;
                if (!isxdigit((unsigned char)h))
                    FAIL(lx->c, t->line, "truncated \\%c escape in a string literal", e);
                v = v * 16 + (isdigit((unsigned char)h) ? h - '0' : (tolower((unsigned char)h) - 'a' + 10));
                if (v > 0x10FFFF)
                    FAIL(lx->c, t->line, "illegal Unicode character in a string literal");
            }
            cp = v;
            used = 2 + nd;
            break;
        }
        default:
            if (e >= '0' && e <= '7') {
                int32_t v = 0;
                size_t k = 0;
                while (k < 3 && i + 1 + k < n && s[i + 1 + k] >= '0' && s[i + 1 + k] <= '7')
                    v = v * 8 + (s[i + 1 + k++] - '0');
                cp = v;
                used = 1 + k;
            }
            break;
        }
        if (cp == -1) { /* unknown escape: kept as written */
            out[o++] = s[i++];
            continue;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF)
            FAIL(lx->c, t->line, "a surrogate code point in a string literal");
        if (cp >= 0)
            o += u8_put(out + o, cp); /* an escape is never shorter than its UTF-8 */
        i += used;
    }
    out[o] = '\0';
    t->p = out;
    t->n = o;
}

/* Tokens of one {{ ... }} or {% ... %} up to and including its end tag. */
static void lex_tag(lexer *lx, int block)
{
    int depth = 0;
    char stack[256];
    for (;;) {
        if (lx->pos >= lx->n)
            FAIL(lx->c, lx->line, "unexpected end of template inside %s (missing '%s')",
                 block ? "a block tag" : "a variable tag", block ? "%}" : "}}");
        size_t p = lx->pos;
        const char *s = lx->s;
        if (depth == 0) {
            if (block) {
                if (starts(lx, p, "+%}")) {
                    lex_push(lx, T_BLOCK_END, s + p, 3);
                    lx->pos = p + 3;
                    return;
                }
                if (starts(lx, p, "-%}")) {
                    lex_push(lx, T_BLOCK_END, s + p, 3);
                    size_t q = p + 3;
                    size_t w = lspace_len(s + q, lx->n - q);
                    count_lines(lx, s + q, w);
                    lx->pos = q + w;
                    return;
                }
                if (starts(lx, p, "%}")) {
                    lex_push(lx, T_BLOCK_END, s + p, 2);
                    lx->pos = p + 2;
                    if (lx->pos < lx->n && s[lx->pos] == '\n') { /* trim_blocks */
                        lx->pos++;
                        lx->line++;
                    }
                    return;
                }
            } else {
                if (starts(lx, p, "-}}")) {
                    lex_push(lx, T_VAR_END, s + p, 3);
                    size_t q = p + 3;
                    size_t w = lspace_len(s + q, lx->n - q);
                    count_lines(lx, s + q, w);
                    lx->pos = q + w;
                    return;
                }
                if (starts(lx, p, "}}")) {
                    lex_push(lx, T_VAR_END, s + p, 2);
                    lx->pos = p + 2;
                    return;
                }
            }
        }
        size_t w = lspace_len(s + p, lx->n - p);
        if (w > 0) {
            count_lines(lx, s + p, w);
            lx->pos += w;
            continue;
        }
        unsigned char ch = (unsigned char)s[p];
        if (isdigit(ch)) {
            /* float: digits[_digits] ( [.digits] e[+-]digits | .digits ); else integer.
             * First the extent, then the digits without '_' for strtod/strtoull. */
            size_t q = p;
            int is_float = 0;
#define DIGITS(q)                                                                                  \
    while ((q) < lx->n && (isdigit((unsigned char)s[q]) ||                                         \
                           (s[q] == '_' && (q) + 1 < lx->n && isdigit((unsigned char)s[(q) + 1])))) \
        (q)++
            if (ch == '0' && q + 1 < lx->n && s[q + 1] != 0 && strchr("bBoOxX", s[q + 1]) != NULL)
                FAIL(lx->c, lx->line, "binary, octal and hex literals are not supported");
            DIGITS(q);
            if (q + 1 < lx->n && s[q] == '.' && isdigit((unsigned char)s[q + 1])) {
                q++;
                DIGITS(q);
                is_float = 1;
            }
            if (q + 1 < lx->n && (s[q] == 'e' || s[q] == 'E')) {
                size_t r = q + 1;
                if (r < lx->n && (s[r] == '+' || s[r] == '-'))
                    r++;
                if (r < lx->n && isdigit((unsigned char)s[r])) {
                    q = r;
                    DIGITS(q);
                    is_float = 1;
                }
            }
#undef DIGITS
            char *num = aalloc(lx->c, q - p + 1);
            size_t nn = 0;
            for (size_t k = p; k < q; k++)
                if (s[k] != '_')
                    num[nn++] = s[k];
            num[nn] = '\0';
            tok *t = lex_push(lx, is_float ? T_FLOAT : T_INT, s + p, q - p);
            if (is_float) {
                t->f = strtod(num, NULL);
            } else {
                unsigned long long v = nn <= 19 ? strtoull(num, NULL, 10) : ULLONG_MAX;
                if (v > (unsigned long long)INT64_MAX)
                    FAIL(lx->c, lx->line, "integer literal %.40s%s is too large", num, nn > 40 ? "..." : "");
                t->i = (int64_t)v;
            }
            lx->pos = q;
            continue;
        }
        if (isalpha(ch) || ch == '_') {
            size_t q = p;
            while (q < lx->n && (isalnum((unsigned char)s[q]) || s[q] == '_'))
                q++;
            lex_push(lx, T_NAME, s + p, q - p);
            lx->pos = q;
            continue;
        }
        if (ch == '\'' || ch == '"') {
            size_t q = p + 1;
            while (q < lx->n && s[q] != (char)ch) {
                if (s[q] == '\\' && q + 1 < lx->n)
                    q++;
                q++;
            }
            if (q >= lx->n)
                FAIL(lx->c, lx->line, "unterminated string literal");
            tok *t = lex_push(lx, T_STRING, NULL, 0);
            decode_string(lx, s + p + 1, q - p - 1, t);
            count_lines(lx, s + p, q - p);
            lx->pos = q + 1;
            continue;
        }
        static const char *const ops2[] = { "//", "**", "==", "!=", ">=", "<=" };
        size_t olen = 0;
        for (size_t k = 0; k < sizeof(ops2) / sizeof(ops2[0]); k++)
            if (starts(lx, p, ops2[k]))
                olen = 2;
        if (olen == 0 && strchr("+-/*%~[](){}><=.:|,;", ch) != NULL && ch != 0)
            olen = 1;
        if (olen == 0)
            FAIL(lx->c, lx->line, "unexpected character '%c' in a tag", ch);
        if (ch == '(' || ch == '[' || ch == '{') {
            if (depth == (int)sizeof(stack))
                FAIL(lx->c, lx->line, "brackets nested too deeply");
            stack[depth++] = ch == '(' ? ')' : ch == '[' ? ']' : '}';
        } else if (ch == ')' || ch == ']' || ch == '}') {
            if (depth == 0)
                FAIL(lx->c, lx->line, "unexpected '%c'", ch);
            if (stack[depth - 1] != (char)ch)
                FAIL(lx->c, lx->line, "unexpected '%c', expected '%c'", ch, stack[depth - 1]);
            depth--;
        }
        lex_push(lx, T_OP, s + p, olen);
        lx->pos += olen;
    }
}

static void lex(lexer *lx)
{
    int line_starting = 1;
    const char *s = lx->s;
    for (;;) {
        /* the next {{, {% or {# */
        size_t t = lx->pos;
        int kind = 0;
        while (t + 1 < lx->n) {
            if (s[t] == '{' && (s[t + 1] == '{' || s[t + 1] == '%' || s[t + 1] == '#')) {
                kind = s[t + 1];
                break;
            }
            t++;
        }
        if (kind == 0) {
            if (lx->pos < lx->n)
                lex_push(lx, T_DATA, s + lx->pos, lx->n - lx->pos);
            count_lines(lx, s + lx->pos, lx->n - lx->pos);
            lx->pos = lx->n;
            lex_push(lx, T_EOF, NULL, 0);
            return;
        }
        char sign = t + 2 < lx->n && (s[t + 2] == '-' || s[t + 2] == '+') ? s[t + 2] : 0;
        const char *text = s + lx->pos;
        size_t tn = t - lx->pos, keep = tn;
        int text_line = lx->line;
        if (sign == '-') {
            keep = tn - rspace_len(text, tn);
        } else if (sign != '+' && kind != '{') { /* lstrip_blocks */
            size_t l_pos = tn;
            while (l_pos > 0 && text[l_pos - 1] != '\n')
                l_pos--;
            if ((l_pos > 0 || line_starting) && l_pos < tn && rspace_len(text + l_pos, tn - l_pos) == tn - l_pos)
                keep = l_pos;
        }
        if (keep > 0) {
            tok *d = lex_push(lx, T_DATA, text, keep);
            d->line = text_line;
        }
        count_lines(lx, text, tn);
        lx->pos = t + 2 + (sign != 0);
        line_starting = 0;
        if (kind == '#') {
            size_t q = lx->pos;
            for (;;) {
                if (q + 1 >= lx->n)
                    FAIL(lx->c, lx->line, "missing end of comment tag");
                if (starts(lx, q, "+#}")) {
                    count_lines(lx, s + lx->pos, q - lx->pos);
                    lx->pos = q + 3;
                    break;
                }
                if (starts(lx, q, "-#}")) {
                    count_lines(lx, s + lx->pos, q - lx->pos);
                    q += 3;
                    size_t w = lspace_len(s + q, lx->n - q);
                    count_lines(lx, s + q, w);
                    lx->pos = q + w;
                    line_starting = w > 0 && s[q + w - 1] == '\n';
                    break;
                }
                if (starts(lx, q, "#}")) {
                    count_lines(lx, s + lx->pos, q - lx->pos);
                    lx->pos = q + 2;
                    if (lx->pos < lx->n && s[lx->pos] == '\n') {
                        lx->pos++;
                        lx->line++;
                        line_starting = 1;
                    }
                    break;
                }
                q++;
            }
            continue;
        }
        if (kind == '%') {
            /* {% raw %} ... {% endraw %}: the text between, untouched */
            size_t q = lx->pos;
            q += lspace_len(s + q, lx->n - q);
            if (starts(lx, q, "raw")) {
                size_t r = q + 3;
                r += lspace_len(s + r, lx->n - r);
                size_t end = 0;
                if (starts(lx, r, "-%}"))
                    end = r + 3 + lspace_len(s + r + 3, lx->n - r - 3);
                else if (starts(lx, r, "%}"))
                    end = r + 2;
                if (end) {
                    count_lines(lx, s + lx->pos, end - lx->pos);
                    /* find {%[-+]? endraw ... */
                    size_t b = end;
                    for (;;) {
                        if (b + 1 >= lx->n)
                            FAIL(lx->c, lx->line, "missing end of raw directive");
                        if (s[b] == '{' && s[b + 1] == '%') {
                            size_t e2 = b + 2;
                            char sg = e2 < lx->n && (s[e2] == '-' || s[e2] == '+') ? s[e2] : 0;
                            e2 += sg != 0;
                            e2 += lspace_len(s + e2, lx->n - e2);
                            if (starts(lx, e2, "endraw")) {
                                size_t e3 = e2 + 6;
                                e3 += lspace_len(s + e3, lx->n - e3);
                                size_t fin = 0;
                                if (starts(lx, e3, "+%}"))
                                    fin = e3 + 3;
                                else if (starts(lx, e3, "-%}"))
                                    fin = e3 + 3 + lspace_len(s + e3 + 3, lx->n - e3 - 3);
                                else if (starts(lx, e3, "%}"))
                                    fin = e3 + 2 + (e3 + 2 < lx->n && s[e3 + 2] == '\n');
                                if (fin) {
                                    const char *rt = s + end;
                                    size_t rn = b - end, rk = rn;
                                    if (sg == '-') {
                                        rk = rn - rspace_len(rt, rn);
                                    } else if (sg != '+') {
                                        size_t l_pos = rn;
                                        while (l_pos > 0 && rt[l_pos - 1] != '\n')
                                            l_pos--;
                                        if (l_pos < rn && rspace_len(rt + l_pos, rn - l_pos) == rn - l_pos &&
                                            (l_pos > 0))
                                            rk = l_pos;
                                    }
                                    if (rk)
                                        lex_push(lx, T_DATA, rt, rk);
                                    count_lines(lx, s + end, fin - end);
                                    line_starting = s[fin - 1] == '\n';
                                    lx->pos = fin;
                                    break;
                                }
                            }
                        }
                        b++;
                    }
                    continue;
                }
            }
            lex_push(lx, T_BLOCK_BEGIN, s + t, 2);
            lex_tag(lx, 1);
        } else {
            lex_push(lx, T_VAR_BEGIN, s + t, 2);
            lex_tag(lx, 0);
        }
        {
            /* the end tag's match ends in a newline when trim_blocks or '-' ate one */
            const tok *e = &lx->t[lx->nt - 1];
            line_starting = s + lx->pos > e->p + e->n && s[lx->pos - 1] == '\n';
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* AST                                                                                        */

enum {
    E_CONST, E_NAME, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_BIN, E_NEG, E_POS,
    E_NOT, E_AND, E_OR, E_COND, E_LIST, E_TUPLE, E_DICT, E_CONCAT, E_CMP,
    S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_BREAK, S_CONTINUE, S_GEN,
};

enum { CMP_EQ, CMP_NE, CMP_LT, CMP_LE, CMP_GT, CMP_GE, CMP_IN, CMP_NOTIN };

typedef struct nodes {
    struct node **v;
    size_t n, cap;
} nodes;

typedef struct node {
    int k, line, op, fid;
    jv val;                /* E_CONST, S_TEXT */
    const char *name;      /* names of variables, attributes, filters, tests, macros, targets */
    const char *name2;     /* S_SET on a namespace: the attribute */
    struct node *a, *b, *c, *d;
    nodes args;            /* arguments, items, dict keys, compared operands, if conditions */
    nodes kwv;             /* keyword argument values, dict values, macro defaults */
    const char **kw;       /* keyword argument names, for/set targets, macro parameters */
    size_t nkw;
    int *ops;              /* E_CMP */
    nodes body, els;
    nodes *bodies;         /* S_IF: one body per condition */
} node;

struct ym_jinja {
    arena ar;
    nodes root;
};

typedef struct parser {
    ctx *c;
    tok *t;
    size_t i, nt;
    int depth;
} parser;

static void nodes_push(ctx *c, nodes *ns, node *x)
{
    if (ns->n == ns->cap) {
        size_t cap = ns->cap ? ns->cap * 2 : 4;
        node **nv = aalloc(c, cap * sizeof(node *));
        if (ns->n)
            memcpy(nv, ns->v, ns->n * sizeof(node *));
        ns->v = nv;
        ns->cap = cap;
    }
    ns->v[ns->n++] = x;
}

static node *nnew(parser *ps, int k, int line)
{
    node *x = aalloc(ps->c, sizeof(node));
    memset(x, 0, sizeof(*x));
    x->k = k;
    x->line = line;
    return x;
}

static tok *cur(parser *ps) { return &ps->t[ps->i]; }
static int tok_is(const tok *t, int type, const char *s)
{
    return t->type == type && (s == NULL || (t->n == strlen(s) && memcmp(t->p, s, t->n) == 0));
}
static int is_op(parser *ps, const char *s) { return tok_is(cur(ps), T_OP, s); }
static int is_name(parser *ps, const char *s) { return tok_is(cur(ps), T_NAME, s); }

static const char *tok_desc(parser *ps, const tok *t)
{
    char tmp[64];
    switch (t->type) {
    case T_EOF: return "end of template";
    case T_VAR_END: return "end of print statement '}}'";
    case T_BLOCK_END: return "end of statement block '%}'";
    case T_STRING: return "string";
    case T_INT: case T_FLOAT: return "number";
    default:
        snprintf(tmp, sizeof(tmp), "'%.*s'", (int)(t->n < 40 ? t->n : 40), t->p);
        return astrdup(ps->c, tmp, strlen(tmp));
    }
}

static void expect_op(parser *ps, const char *s)
{
    if (!is_op(ps, s))
        FAIL(ps->c, cur(ps)->line, "expected '%s', got %s", s, tok_desc(ps, cur(ps)));
    ps->i++;
}
static const char *expect_name(parser *ps)
{
    tok *t = cur(ps);
    if (t->type != T_NAME)
        FAIL(ps->c, t->line, "expected a name, got %s", tok_desc(ps, t));
    ps->i++;
    return astrdup(ps->c, t->p, t->n);
}
static void expect_block_end(parser *ps, const char *what)
{
    if (cur(ps)->type != T_BLOCK_END)
        FAIL(ps->c, cur(ps)->line, "expected end of '%s' tag '%%}', got %s", what, tok_desc(ps, cur(ps)));
    ps->i++;
}

/* Filter and test tables (ids resolved at parse time, so an unknown name is a parse error). */
enum {
    F_ABS, F_ATTR, F_CAPITALIZE, F_CENTER, F_COUNT, F_DEFAULT, F_DICTSORT, F_ESCAPE, F_FIRST,
    F_FLOAT, F_FORMAT, F_INDENT, F_INT, F_ITEMS, F_JOIN, F_LAST, F_LENGTH, F_LIST, F_LOWER, F_MAP,
    F_MAX, F_MIN, F_REJECT, F_REJECTATTR, F_REPLACE, F_REVERSE, F_ROUND, F_SAFE, F_SELECT,
    F_SELECTATTR, F_SORT, F_STRING, F_STRIPTAGS, F_SUM, F_TITLE, F_TOJSON, F_TRIM, F_UNIQUE,
    F_UPPER, F_WORDCOUNT,
};
static const struct {
    const char *name;
    int id;
} filters[] = {
    {"abs", F_ABS}, {"attr", F_ATTR}, {"capitalize", F_CAPITALIZE}, {"center", F_CENTER},
    {"count", F_COUNT}, {"d", F_DEFAULT}, {"default", F_DEFAULT}, {"dictsort", F_DICTSORT},
    {"e", F_ESCAPE}, {"escape", F_ESCAPE}, {"first", F_FIRST}, {"float", F_FLOAT},
    {"forceescape", F_ESCAPE}, {"format", F_FORMAT}, {"indent", F_INDENT}, {"int", F_INT},
    {"items", F_ITEMS}, {"join", F_JOIN}, {"last", F_LAST}, {"length", F_LENGTH},
    {"list", F_LIST}, {"lower", F_LOWER}, {"map", F_MAP}, {"max", F_MAX}, {"min", F_MIN},
    {"reject", F_REJECT}, {"rejectattr", F_REJECTATTR}, {"replace", F_REPLACE},
    {"reverse", F_REVERSE}, {"round", F_ROUND}, {"safe", F_SAFE}, {"select", F_SELECT},
    {"selectattr", F_SELECTATTR}, {"sort", F_SORT}, {"string", F_STRING},
    {"striptags", F_STRIPTAGS}, {"sum", F_SUM}, {"title", F_TITLE}, {"tojson", F_TOJSON},
    {"trim", F_TRIM}, {"unique", F_UNIQUE}, {"upper", F_UPPER}, {"wordcount", F_WORDCOUNT},
};
enum {
    X_BOOLEAN, X_CALLABLE, X_DEFINED, X_DIVISIBLEBY, X_EQ, X_ESCAPED, X_EVEN, X_FALSE, X_FLOAT,
    X_GE, X_GT, X_IN, X_INTEGER, X_ITERABLE, X_LE, X_LOWER, X_LT, X_MAPPING, X_NE, X_NONE,
    X_NUMBER, X_ODD, X_SAMEAS, X_SEQUENCE, X_STRING, X_TRUE, X_UNDEFINED, X_UPPER,
};
static const struct {
    const char *name;
    int id;
} tests[] = {
    {"!=", X_NE}, {"<", X_LT}, {"<=", X_LE}, {"==", X_EQ}, {">", X_GT}, {">=", X_GE},
    {"boolean", X_BOOLEAN}, {"callable", X_CALLABLE}, {"defined", X_DEFINED},
    {"divisibleby", X_DIVISIBLEBY}, {"eq", X_EQ}, {"equalto", X_EQ}, {"escaped", X_ESCAPED},
    {"even", X_EVEN}, {"false", X_FALSE}, {"float", X_FLOAT}, {"ge", X_GE}, {"greaterthan", X_GT},
    {"gt", X_GT}, {"in", X_IN}, {"integer", X_INTEGER}, {"iterable", X_ITERABLE}, {"le", X_LE},
    {"lessthan", X_LT}, {"lower", X_LOWER}, {"lt", X_LT}, {"mapping", X_MAPPING}, {"ne", X_NE},
    {"none", X_NONE}, {"number", X_NUMBER}, {"odd", X_ODD}, {"sameas", X_SAMEAS},
    {"sequence", X_SEQUENCE}, {"string", X_STRING}, {"true", X_TRUE}, {"undefined", X_UNDEFINED},
    {"upper", X_UPPER},
};
static int find_filter(const char *name)
{
    for (size_t i = 0; i < sizeof(filters) / sizeof(filters[0]); i++)
        if (strcmp(filters[i].name, name) == 0)
            return filters[i].id;
    return -1;
}
static int find_test(const char *name)
{
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
        if (strcmp(tests[i].name, name) == 0)
            return tests[i].id;
    return -1;
}

static node *p_expr(parser *ps);
static node *p_or(parser *ps);
static node *p_unary(parser *ps, int with_filter);

static void enter(parser *ps)
{
    if (++ps->depth > 200)
        FAIL(ps->c, cur(ps)->line, "template nested too deeply");
}

/* (args, kw=args) after the '(' */
static void p_call_args(parser *ps, node *x)
{
    expect_op(ps, "(");
    size_t kwcap = 0;
    while (!is_op(ps, ")")) {
        if (x->args.n + x->nkw > 0)
            expect_op(ps, ",");
        if (is_op(ps, ")"))
            break;
        if (is_op(ps, "*") || is_op(ps, "**"))
            FAIL(ps->c, cur(ps)->line, "*args and **kwargs in calls are not supported");
        if (cur(ps)->type == T_NAME && tok_is(&ps->t[ps->i + 1], T_OP, "=")) {
            const char *k = expect_name(ps);
            ps->i++;
            if (x->nkw == kwcap) {
                kwcap = kwcap ? kwcap * 2 : 4;
                const char **nk = aalloc(ps->c, kwcap * sizeof(char *));
                if (x->nkw)
                    memcpy(nk, x->kw, x->nkw * sizeof(char *));
                x->kw = nk;
            }
            x->kw[x->nkw++] = k;
            nodes_push(ps->c, &x->kwv, p_expr(ps));
        } else {
            if (x->nkw > 0)
                FAIL(ps->c, cur(ps)->line, "positional argument after a keyword argument");
            nodes_push(ps->c, &x->args, p_expr(ps));
        }
    }
    ps->i++;
}

static node *p_primary(parser *ps)
{
    tok *t = cur(ps);
    node *x;
    switch (t->type) {
    case T_NAME:
        ps->i++;
        if (tok_is(t, T_NAME, "true") || tok_is(t, T_NAME, "True") || tok_is(t, T_NAME, "false") ||
            tok_is(t, T_NAME, "False")) {
            x = nnew(ps, E_CONST, t->line);
            x->val = mk_bool(t->p[0] == 't' || t->p[0] == 'T');
        } else if (tok_is(t, T_NAME, "none") || tok_is(t, T_NAME, "None")) {
            x = nnew(ps, E_CONST, t->line);
            x->val = NONE;
        } else {
            x = nnew(ps, E_NAME, t->line);
            x->name = astrdup(ps->c, t->p, t->n);
        }
        return x;
    case T_STRING: {
        /* adjacent literals concatenate */
        buf b = { .max = SIZE_MAX };
        while (cur(ps)->type == T_STRING) {
            buf_put(ps->c, &b, cur(ps)->p, cur(ps)->n);
            ps->i++;
        }
        x = nnew(ps, E_CONST, t->line);
        x->val = b.n ? buf_str(&b) : mk_str("", 0);
        return x;
    }
    case T_INT:
        ps->i++;
        x = nnew(ps, E_CONST, t->line);
        x->val = mk_int(t->i);
        return x;
    case T_FLOAT:
        ps->i++;
        x = nnew(ps, E_CONST, t->line);
        x->val = mk_float(t->f);
        return x;
    case T_OP:
        if (is_op(ps, "(")) {
            ps->i++;
            if (is_op(ps, ")")) {
                ps->i++;
                return nnew(ps, E_TUPLE, t->line);
            }
            node *e = p_expr(ps);
            if (is_op(ps, ",")) {
                x = nnew(ps, E_TUPLE, t->line);
                nodes_push(ps->c, &x->args, e);
                while (is_op(ps, ",")) {
                    ps->i++;
                    if (is_op(ps, ")"))
                        break;
                    nodes_push(ps->c, &x->args, p_expr(ps));
                }
                e = x;
            }
            expect_op(ps, ")");
            return e;
        }
        if (is_op(ps, "[")) {
            ps->i++;
            x = nnew(ps, E_LIST, t->line);
            while (!is_op(ps, "]")) {
                if (x->args.n)
                    expect_op(ps, ",");
                if (is_op(ps, "]"))
                    break;
                nodes_push(ps->c, &x->args, p_expr(ps));
            }
            ps->i++;
            return x;
        }
        if (is_op(ps, "{")) {
            ps->i++;
            x = nnew(ps, E_DICT, t->line);
            while (!is_op(ps, "}")) {
                if (x->args.n)
                    expect_op(ps, ",");
                if (is_op(ps, "}"))
                    break;
                nodes_push(ps->c, &x->args, p_expr(ps));
                expect_op(ps, ":");
                nodes_push(ps->c, &x->kwv, p_expr(ps));
            }
            ps->i++;
            return x;
        }
        break;
    default:
        break;
    }
    FAIL(ps->c, t->line, "unexpected %s", tok_desc(ps, t));
}

static node *p_postfix(parser *ps, node *x)
{
    for (;;) {
        tok *t = cur(ps);
        if (is_op(ps, ".")) {
            ps->i++;
            tok *a = cur(ps);
            if (a->type == T_NAME) {
                node *y = nnew(ps, E_ATTR, t->line);
                y->a = x;
                y->name = astrdup(ps->c, a->p, a->n);
                ps->i++;
                x = y;
            } else if (a->type == T_INT) {
                node *y = nnew(ps, E_ITEM, t->line);
                y->a = x;
                y->b = nnew(ps, E_CONST, t->line);
                y->b->val = mk_int(a->i);
                ps->i++;
                x = y;
            } else {
                FAIL(ps->c, a->line, "expected a name after '.', got %s", tok_desc(ps, a));
            }
        } else if (is_op(ps, "[")) {
            ps->i++;
            node *parts[3] = { NULL, NULL, NULL };
            int np = 0, is_slice = 0;
            for (;;) {
                if (!is_op(ps, ":") && !is_op(ps, "]"))
                    parts[np] = p_expr(ps);
                if (is_op(ps, ":")) {
                    if (np == 2)
                        FAIL(ps->c, cur(ps)->line, "too many ':' in a subscript");
                    is_slice = 1;
                    np++;
                    ps->i++;
                    continue;
                }
                break;
            }
            if (is_op(ps, ","))
                FAIL(ps->c, cur(ps)->line, "tuple subscripts are not supported");
            expect_op(ps, "]");
            node *y;
            if (is_slice) {
                y = nnew(ps, E_SLICE, t->line);
                y->b = parts[0];
                y->c = parts[1];
                y->d = parts[2];
            } else {
                if (parts[0] == NULL)
                    FAIL(ps->c, t->line, "empty subscript");
                y = nnew(ps, E_ITEM, t->line);
                y->b = parts[0];
            }
            y->a = x;
            x = y;
        } else if (is_op(ps, "(")) {
            node *y = nnew(ps, E_CALL, t->line);
            y->a = x;
            p_call_args(ps, y);
            x = y;
        } else {
            return x;
        }
    }
}

static node *p_filter(parser *ps, node *x)
{
    tok *t = cur(ps);
    ps->i++; /* '|' */
    node *y = nnew(ps, E_FILTER, t->line);
    y->a = x;
    y->name = expect_name(ps);
    while (is_op(ps, ".")) {
        ps->i++;
        const char *more = expect_name(ps);
        char tmp[256];
        snprintf(tmp, sizeof(tmp), "%s.%s", y->name, more);
        y->name = astrdup(ps->c, tmp, strlen(tmp));
    }
    y->fid = find_filter(y->name);
    if (y->fid < 0)
        FAIL(ps->c, t->line, "unknown filter '%s'", y->name);
    if (is_op(ps, "("))
        p_call_args(ps, y);
    return y;
}

static node *p_test(parser *ps, node *x)
{
    tok *t = cur(ps);
    ps->i++; /* 'is' */
    node *y = nnew(ps, E_TEST, t->line);
    y->a = x;
    if (is_name(ps, "not")) {
        y->op = 1;
        ps->i++;
    }
    if (cur(ps)->type == T_OP && (is_op(ps, "==") || is_op(ps, "!=") || is_op(ps, "<") ||
                                  is_op(ps, "<=") || is_op(ps, ">") || is_op(ps, ">="))) {
        y->name = astrdup(ps->c, cur(ps)->p, cur(ps)->n);
        ps->i++;
    } else {
        y->name = expect_name(ps);
    }
    y->fid = find_test(y->name);
    if (y->fid < 0)
        FAIL(ps->c, t->line, "unknown test '%s'", y->name);
    tok *n = cur(ps);
    if (is_op(ps, "(")) {
        p_call_args(ps, y);
    } else if ((n->type == T_NAME || n->type == T_STRING || n->type == T_INT || n->type == T_FLOAT ||
                is_op(ps, "[") || is_op(ps, "{")) &&
               !is_name(ps, "else") && !is_name(ps, "or") && !is_name(ps, "and")) {
        if (is_name(ps, "is"))
            FAIL(ps->c, n->line, "you cannot chain multiple tests with is");
        node *arg = p_postfix(ps, p_primary(ps));
        nodes_push(ps->c, &y->args, arg);
    }
    return y;
}

static node *p_unary(parser *ps, int with_filter)
{
    tok *t = cur(ps);
    node *x;
    enter(ps);
    if (is_op(ps, "-") || is_op(ps, "+")) {
        ps->i++;
        x = nnew(ps, t->p[0] == '-' ? E_NEG : E_POS, t->line);
        x->a = p_unary(ps, 0);
    } else {
        x = p_primary(ps);
    }
    x = p_postfix(ps, x);
    if (with_filter) {
        for (;;) {
            if (is_op(ps, "|"))
                x = p_filter(ps, x);
            else if (is_name(ps, "is"))
                x = p_test(ps, x);
            else if (is_op(ps, "(")) {
                node *y = nnew(ps, E_CALL, cur(ps)->line);
                y->a = x;
                p_call_args(ps, y);
                x = y;
            } else
                break;
        }
    }
    ps->depth--;
    return x;
}

static node *bin(parser *ps, int op, int line, node *a, node *b)
{
    node *x = nnew(ps, E_BIN, line);
    x->op = op;
    x->a = a;
    x->b = b;
    return x;
}

static node *p_pow(parser *ps)
{
    node *x = p_unary(ps, 1);
    while (is_op(ps, "**")) {
        int line = cur(ps)->line;
        ps->i++;
        x = bin(ps, 'p', line, x, p_unary(ps, 1));
    }
    return x;
}
static node *p_math2(parser *ps)
{
    node *x = p_pow(ps);
    for (;;) {
        int line = cur(ps)->line, op;
        if (is_op(ps, "*")) op = '*';
        else if (is_op(ps, "/")) op = '/';
        else if (is_op(ps, "//")) op = 'f';
        else if (is_op(ps, "%")) op = '%';
        else return x;
        ps->i++;
        x = bin(ps, op, line, x, p_pow(ps));
    }
}
static node *p_concat(parser *ps)
{
    node *x = p_math2(ps);
    if (!is_op(ps, "~"))
        return x;
    node *y = nnew(ps, E_CONCAT, cur(ps)->line);
    nodes_push(ps->c, &y->args, x);
    while (is_op(ps, "~")) {
        ps->i++;
        nodes_push(ps->c, &y->args, p_math2(ps));
    }
    return y;
}
static node *p_math1(parser *ps)
{
    node *x = p_concat(ps);
    for (;;) {
        int line = cur(ps)->line, op;
        if (is_op(ps, "+")) op = '+';
        else if (is_op(ps, "-")) op = '-';
        else return x;
        ps->i++;
        x = bin(ps, op, line, x, p_concat(ps));
    }
}
static node *p_compare(parser *ps)
{
    node *x = p_math1(ps);
    node *y = NULL;
    size_t cap = 0;
    for (;;) {
        int op;
        if (is_op(ps, "==")) op = CMP_EQ;
        else if (is_op(ps, "!=")) op = CMP_NE;
        else if (is_op(ps, "<")) op = CMP_LT;
        else if (is_op(ps, "<=")) op = CMP_LE;
        else if (is_op(ps, ">")) op = CMP_GT;
        else if (is_op(ps, ">=")) op = CMP_GE;
        else if (is_name(ps, "in")) op = CMP_IN;
        else if (is_name(ps, "not") && tok_is(&ps->t[ps->i + 1], T_NAME, "in")) {
            op = CMP_NOTIN;
            ps->i++;
        } else
            break;
        int line = cur(ps)->line;
        ps->i++;
        if (y == NULL) {
            y = nnew(ps, E_CMP, line);
            y->a = x;
        }
        if (y->args.n == cap) {
            cap = cap ? cap * 2 : 4;
            int *no = aalloc(ps->c, cap * sizeof(int));
            if (y->args.n)
                memcpy(no, y->ops, y->args.n * sizeof(int));
            y->ops = no;
        }
        y->ops[y->args.n] = op;
        nodes_push(ps->c, &y->args, p_math1(ps));
    }
    return y ? y : x;
}
static node *p_not(parser *ps)
{
    if (is_name(ps, "not")) {
        node *x = nnew(ps, E_NOT, cur(ps)->line);
        ps->i++;
        enter(ps);
        x->a = p_not(ps);
        ps->depth--;
        return x;
    }
    return p_compare(ps);
}
static node *p_and(parser *ps)
{
    node *x = p_not(ps);
    while (is_name(ps, "and")) {
        node *y = nnew(ps, E_AND, cur(ps)->line);
        ps->i++;
        y->a = x;
        y->b = p_not(ps);
        x = y;
    }
    return x;
}
static node *p_or(parser *ps)
{
    node *x = p_and(ps);
    while (is_name(ps, "or")) {
        node *y = nnew(ps, E_OR, cur(ps)->line);
        ps->i++;
        y->a = x;
        y->b = p_and(ps);
        x = y;
    }
    return x;
}
/* or_expr [if or_expr [else expr]] */
static node *p_expr(parser *ps)
{
    enter(ps);
    node *x = p_or(ps);
    while (is_name(ps, "if")) {
        node *y = nnew(ps, E_COND, cur(ps)->line);
        ps->i++;
        y->a = x;
        y->b = p_or(ps);
        if (is_name(ps, "else")) {
            ps->i++;
            y->c = p_expr(ps);
        }
        x = y;
    }
    ps->depth--;
    return x;
}

/* ------------------------------------------------------------------------------------------ */
/* Statements                                                                                 */

static void p_body(parser *ps, nodes *body, const char *const *ends, int opened_line,
                   const char *opened);

static void add_target(parser *ps, node *x, const char *name)
{
    const char **nk = aalloc(ps->c, (x->nkw + 1) * sizeof(char *));
    if (x->nkw)
        memcpy(nk, x->kw, x->nkw * sizeof(char *));
    nk[x->nkw++] = name;
    x->kw = nk;
}

static const char *end_tag(parser *ps)
{
    /* the tag name after {% that closed a body */
    return astrdup(ps->c, cur(ps)->p, cur(ps)->n);
}

static node *p_stmt(parser *ps)
{
    tok *t = cur(ps);
    int line = t->line;
    if (t->type != T_NAME)
        FAIL(ps->c, line, "expected a tag name, got %s", tok_desc(ps, t));
    char name[64];
    snprintf(name, sizeof(name), "%.*s", (int)(t->n < 60 ? t->n : 60), t->p);
    ps->i++;
    node *x;
    if (strcmp(name, "if") == 0) {
        x = nnew(ps, S_IF, line);
        size_t cap = 0;
        static const char *const ends[] = { "elif", "else", "endif", NULL };
        for (;;) {
            nodes_push(ps->c, &x->args, p_expr(ps));
            expect_block_end(ps, "if");
            if (x->args.n > cap) {
                cap = cap ? cap * 2 : 4;
                nodes *nb = aalloc(ps->c, cap * sizeof(nodes));
                memset(nb, 0, cap * sizeof(nodes));
                if (x->args.n > 1)
                    memcpy(nb, x->bodies, (x->args.n - 1) * sizeof(nodes));
                x->bodies = nb;
            }
            p_body(ps, &x->bodies[x->args.n - 1], ends, line, "if");
            const char *e = end_tag(ps);
            ps->i++;
            if (strcmp(e, "elif") == 0)
                continue;
            if (strcmp(e, "else") == 0) {
                static const char *const ends2[] = { "endif", NULL };
                expect_block_end(ps, "else");
                p_body(ps, &x->els, ends2, line, "if");
                ps->i++;
            }
            expect_block_end(ps, "endif");
            return x;
        }
    }
    if (strcmp(name, "for") == 0) {
        x = nnew(ps, S_FOR, line);
        add_target(ps, x, expect_name(ps));
        int paren = 0;
        while (is_op(ps, ",")) {
            ps->i++;
            if (is_name(ps, "in"))
                break;
            add_target(ps, x, expect_name(ps));
            paren = 1;
        }
        x->op = paren || x->nkw > 1;
        if (!is_name(ps, "in"))
            FAIL(ps->c, cur(ps)->line, "expected 'in' in a for tag, got %s", tok_desc(ps, cur(ps)));
        ps->i++;
        /* the iterable: an expression without a trailing inline if (that is the loop filter) */
        enter(ps);
        x->a = p_or(ps);
        ps->depth--;
        if (is_name(ps, "if")) {
            ps->i++;
            x->b = p_expr(ps);
        }
        if (is_name(ps, "recursive"))
            FAIL(ps->c, cur(ps)->line, "recursive for loops are not supported");
        expect_block_end(ps, "for");
        static const char *const ends[] = { "else", "endfor", NULL };
        p_body(ps, &x->body, ends, line, "for");
        if (is_name(ps, "else")) {
            static const char *const ends2[] = { "endfor", NULL };
            ps->i++;
            expect_block_end(ps, "else");
            p_body(ps, &x->els, ends2, line, "for");
        }
        ps->i++;
        expect_block_end(ps, "endfor");
        return x;
    }
    if (strcmp(name, "set") == 0) {
        const char *target = expect_name(ps);
        if (is_op(ps, ".")) {
            ps->i++;
            x = nnew(ps, S_SET, line);
            x->name = target;
            x->name2 = expect_name(ps);
            expect_op(ps, "=");
            x->a = p_expr(ps);
            expect_block_end(ps, "set");
            return x;
        }
        x = nnew(ps, S_SET, line);
        add_target(ps, x, target);
        while (is_op(ps, ",")) {
            ps->i++;
            add_target(ps, x, expect_name(ps));
        }
        if (is_op(ps, "=")) {
            ps->i++;
            x->a = p_expr(ps);
            if (is_op(ps, ",")) { /* set a = 1, 2: a tuple */
                node *tu = nnew(ps, E_TUPLE, line);
                nodes_push(ps->c, &tu->args, x->a);
                while (is_op(ps, ",")) {
                    ps->i++;
                    if (cur(ps)->type == T_BLOCK_END)
                        break;
                    nodes_push(ps->c, &tu->args, p_expr(ps));
                }
                x->a = tu;
            }
            x->op = x->nkw > 1;
            expect_block_end(ps, "set");
            return x;
        }
        if (x->nkw > 1)
            FAIL(ps->c, line, "a block set takes one name");
        x->k = S_SETBLOCK;
        if (is_op(ps, "|")) { /* {% set x | filter %} */
            node *f = NULL;
            while (is_op(ps, "|"))
                f = p_filter(ps, f);
            x->b = f;
        }
        expect_block_end(ps, "set");
        static const char *const ends[] = { "endset", NULL };
        p_body(ps, &x->body, ends, line, "set");
        ps->i++;
        expect_block_end(ps, "endset");
        return x;
    }
    if (strcmp(name, "macro") == 0) {
        x = nnew(ps, S_MACRO, line);
        x->name = expect_name(ps);
        expect_op(ps, "(");
        while (!is_op(ps, ")")) {
            if (x->nkw)
                expect_op(ps, ",");
            add_target(ps, x, expect_name(ps));
            node *def = NULL;
            if (is_op(ps, "=")) {
                ps->i++;
                def = p_expr(ps);
            } else if (x->kwv.n && x->kwv.v[x->kwv.n - 1] != NULL) {
                FAIL(ps->c, line, "non-default argument follows default argument");
            }
            nodes_push(ps->c, &x->kwv, def);
        }
        ps->i++;
        expect_block_end(ps, "macro");
        static const char *const ends[] = { "endmacro", NULL };
        p_body(ps, &x->body, ends, line, "macro");
        ps->i++;
        if (cur(ps)->type == T_NAME)
            ps->i++;
        expect_block_end(ps, "endmacro");
        return x;
    }
    if (strcmp(name, "generation") == 0) { /* transformers' AssistantTracker: renders its body */
        x = nnew(ps, S_GEN, line);
        expect_block_end(ps, "generation");
        static const char *const ends[] = { "endgeneration", NULL };
        p_body(ps, &x->body, ends, line, "generation");
        ps->i++;
        expect_block_end(ps, "endgeneration");
        return x;
    }
    if (strcmp(name, "break") == 0 || strcmp(name, "continue") == 0) {
        x = nnew(ps, name[0] == 'b' ? S_BREAK : S_CONTINUE, line);
        expect_block_end(ps, name);
        return x;
    }
    FAIL(ps->c, line, "unknown tag '%s'", name);
}

/* Nodes until one of ends (left as the current token, after its {%), or EOF (an error naming
 * the open block). */
static void p_body(parser *ps, nodes *body, const char *const *ends, int opened_line,
                   const char *opened)
{
    enter(ps);
    for (;;) {
        tok *t = cur(ps);
        switch (t->type) {
        case T_EOF:
            if (ends == NULL) {
                ps->depth--;
                return;
            }
            FAIL(ps->c, t->line, "unclosed '%s' block (opened at line %d): expected '%s'", opened,
                 opened_line, ends[0]);
        case T_DATA: {
            node *x = nnew(ps, S_TEXT, t->line);
            x->val = mk_str(t->p, t->n);
            nodes_push(ps->c, body, x);
            ps->i++;
            break;
        }
        case T_VAR_BEGIN: {
            ps->i++;
            node *x = nnew(ps, S_OUT, t->line);
            x->a = p_expr(ps);
            if (cur(ps)->type != T_VAR_END)
                FAIL(ps->c, cur(ps)->line, "expected end of print statement '}}', got %s",
                     tok_desc(ps, cur(ps)));
            ps->i++;
            nodes_push(ps->c, body, x);
            break;
        }
        case T_BLOCK_BEGIN: {
            ps->i++;
            tok *n = cur(ps);
            if (ends != NULL && n->type == T_NAME)
                for (size_t k = 0; ends[k] != NULL; k++)
                    if (tok_is(n, T_NAME, ends[k])) {
                        ps->depth--;
                        return;
                    }
            if (n->type == T_NAME) {
                static const char *const closers[] = { "endif", "endfor", "else", "elif", "endset",
                                                       "endmacro", "endgeneration", NULL };
                for (size_t k = 0; closers[k] != NULL; k++)
                    if (tok_is(n, T_NAME, closers[k])) {
                        if (ends == NULL)
                            FAIL(ps->c, n->line, "unexpected '%s' (no block is open)", closers[k]);
                        FAIL(ps->c, n->line, "unexpected '%s' in '%s' block (opened at line %d): expected '%s'",
                             closers[k], opened, opened_line, ends[0]);
                    }
            }
            nodes_push(ps->c, body, p_stmt(ps));
            break;
        }
        default:
            FAIL(ps->c, t->line, "unexpected %s", tok_desc(ps, t));
        }
    }
}

static int valid_utf8(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0)
            return 0;
        i += (size_t)k;
    }
    return 1;
}

ym_err ym_jinja_parse(const char *src, size_t len, ym_jinja_t **out, ym_diag *diag)
{
    *out = NULL;
    ym_jinja_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    t->ar.limit = (size_t)64 << 20;
    jmp_buf jb;
    ctx c = { .ar = &t->ar, .jb = &jb, .diag = diag };
    if (setjmp(jb) != 0) {
        arena_free(&t->ar);
        free(t);
        return c.err;
    }
    if (!valid_utf8(src, len))
        FAIL(&c, 0, "template is not valid UTF-8");
    /* Jinja2 reads \r\n and \r as \n, and drops one trailing newline */
    char *s = aalloc(&c, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n > 0 && s[n - 1] == '\n')
        n--;
    s[n] = '\0';
    lexer lx = { .c = &c, .s = s, .n = n, .line = 1 };
    lex(&lx);
    parser ps = { .c = &c, .t = lx.t, .nt = lx.nt };
    p_body(&ps, &t->root, NULL, 0, NULL);
    *out = t;
    return YM_OK;
}

void ym_jinja_free(ym_jinja_t *t)
{
    if (t == NULL)
        return;
    arena_free(&t->ar);
    free(t);
}

/* ------------------------------------------------------------------------------------------ */
/* Rendering: Python's str(), repr() and json.dumps()                                        */

typedef struct frame {
    jdict *vars;
    struct frame *parent;
} frame;

enum { FN_RANGE, FN_NAMESPACE, FN_RAISE, FN_STRFTIME, FN_DICT };

typedef struct rctx {
    ctx c;
    uint64_t steps, max_steps;
    size_t max_output;
    int64_t now;
    frame *root; /* the template's top-level frame (macros see it) */
    int call_depth;
} rctx;

#define RFAIL(r, line, ...) FAIL(&(r)->c, (line), __VA_ARGS__)

static void step(rctx *r, int line)
{
    if (++r->steps > r->max_steps)
        RFAIL(r, line, "template ran more than %" PRIu64 " steps", r->max_steps);
}

static const char *type_name(const jv *v)
{
    switch (v->k) {
    case V_UNDEF: return "Undefined";
    case V_NONE: return "NoneType";
    case V_BOOL: return "bool";
    case V_INT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return "str";
    case V_LIST: return v->u.l->tuple ? "tuple" : "list";
    case V_DICT: return "dict";
    case V_NS: return "Namespace";
    case V_LOOP: return "LoopContext";
    case V_MACRO: return "Macro";
    default: return "function";
    }
}

/* An undefined value used where Jinja2's Undefined raises. */
static void undef_fail(rctx *r, const jv *v, int line) __attribute__((noreturn));
static void undef_fail(rctx *r, const jv *v, int line)
{
    RFAIL(r, line, "%s", v->u.s.p ? v->u.s.p : "value is undefined");
}

/* Python's repr(float): the shortest string that reads back the same. */
static void fmt_float(double x, char *out, size_t cap)
{
    if (isnan(x)) {
        snprintf(out, cap, "nan");
        return;
    }
    if (isinf(x)) {
        snprintf(out, cap, x < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, x);
        if (strtod(tmp, NULL) == x)
            break;
    }
    /* tmp: [-]d[.ddd]e[+-]XX */
    char digits[40];
    size_t nd = 0;
    const char *p = tmp;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (isdigit((unsigned char)*p))
            digits[nd++] = *p;
    int e = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    size_t o = 0;
    if (neg)
        out[o++] = '-';
    if (e >= -4 && e < 16) {
        if (e >= 0) {
            for (int k = 0; k <= e; k++)
                out[o++] = (size_t)k < nd ? digits[k] : '0';
            out[o++] = '.';
            if ((size_t)(e + 1) < nd)
                for (size_t k = (size_t)e + 1; k < nd; k++)
                    out[o++] = digits[k];
            else
                out[o++] = '0';
        } else {
            out[o++] = '0';
            out[o++] = '.';
            for (int k = 0; k < -e - 1; k++)
                out[o++] = '0';
            for (size_t k = 0; k < nd; k++)
                out[o++] = digits[k];
        }
        out[o] = '\0';
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (size_t k = 1; k < nd; k++)
                out[o++] = digits[k];
        }
        snprintf(out + o, cap - o, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
}

static void put_repr(rctx *r, buf *b, const jv *v);
static void put_repr_d(rctx *r, buf *b, const jv *v, int depth);

static void put_str(rctx *r, buf *b, const jv *v)
{
    ctx *c = &r->c;
    char tmp[48];
    switch (v->k) {
    case V_UNDEF: return;
    case V_NONE: buf_puts(c, b, "None"); return;
    case V_BOOL: buf_puts(c, b, v->u.b ? "True" : "False"); return;
    case V_INT: buf_printf(c, b, "%" PRId64, v->u.i); return;
    case V_FLOAT: fmt_float(v->u.f, tmp, sizeof(tmp)); buf_puts(c, b, tmp); return;
    case V_STR: buf_put(c, b, v->u.s.p, v->u.s.n); return;
    default: put_repr_d(r, b, v, 0); return;
    }
}

static void put_str_repr(rctx *r, buf *b, const char *s, size_t n)
{
    ctx *c = &r->c;
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    buf_putc(c, b, q);
    for (size_t i = 0; i < n;) {
        size_t st = i;
        int32_t cp = u8_next(s, n, &i);
        if (cp == q || cp == '\\') {
            buf_putc(c, b, '\\');
            buf_putc(c, b, (char)cp);
        } else if (cp == '\n') {
            buf_puts(c, b, "\\n");
        } else if (cp == '\r') {
            buf_puts(c, b, "\\r");
        } else if (cp == '\t') {
            buf_puts(c, b, "\\t");
        } else if (cp < 0x20 || cp == 0x7f) {
            buf_printf(c, b, "\\x%02x", cp);
        } else if (cp < 0x80) {
            buf_putc(c, b, (char)cp);
        } else {
            utf8proc_category_t cat = utf8proc_category(cp);
            int printable = !(cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF ||
                              cat == UTF8PROC_CATEGORY_CS || cat == UTF8PROC_CATEGORY_CO ||
                              cat == UTF8PROC_CATEGORY_CN || cat == UTF8PROC_CATEGORY_ZL ||
                              cat == UTF8PROC_CATEGORY_ZP || cat == UTF8PROC_CATEGORY_ZS);
            if (printable)
                buf_put(c, b, s + st, i - st);
            else if (cp <= 0xff)
                buf_printf(c, b, "\\x%02x", cp);
            else if (cp <= 0xffff)
                buf_printf(c, b, "\\u%04x", cp);
            else
                buf_printf(c, b, "\\U%08x", cp);
        }
    }
    buf_putc(c, b, q);
}

static void put_repr(rctx *r, buf *b, const jv *v) { put_repr_d(r, b, v, 0); }

/* depth bounds the recursion: a namespace may hold itself */
static void put_repr_d(rctx *r, buf *b, const jv *v, int depth)
{
    ctx *c = &r->c;
    if (depth > 200)
        RFAIL(r, 0, "value nested too deeply to print");
    switch (v->k) {
    case V_UNDEF: buf_puts(c, b, "Undefined"); return;
    case V_STR: put_str_repr(r, b, v->u.s.p, v->u.s.n); return;
    case V_LIST: {
        const jlist *l = v->u.l;
        buf_putc(c, b, l->tuple ? '(' : '[');
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                buf_puts(c, b, ", ");
            put_repr_d(r, b, &l->v[i], depth + 1);
        }
        if (l->tuple && l->n == 1)
            buf_putc(c, b, ',');
        buf_putc(c, b, l->tuple ? ')' : ']');
        return;
    }
    case V_DICT: case V_NS: {
        const jdict *d = v->u.d;
        if (v->k == V_NS)
            buf_puts(c, b, "<Namespace ");
        buf_putc(c, b, '{');
        for (size_t i = 0; i < d->n; i++) {
            if (i)
                buf_puts(c, b, ", ");
            put_repr_d(r, b, &d->key[i], depth + 1);
            buf_puts(c, b, ": ");
            put_repr_d(r, b, &d->val[i], depth + 1);
        }
        buf_putc(c, b, '}');
        if (v->k == V_NS)
            buf_putc(c, b, '>');
        return;
    }
    case V_LOOP: buf_puts(c, b, "<LoopContext>"); return;
    case V_FUNC: case V_METHOD: case V_MACRO: buf_puts(c, b, "<function>"); return;
    default: put_str(r, b, v); return;
    }
}

static jv to_str(rctx *r, const jv *v)
{
    if (v->k == V_STR)
        return *v;
    buf b = { .max = r->max_output };
    put_str(r, &b, v);
    return buf_str(&b);
}

/* json.dumps(v, ensure_ascii, indent, separators, sort_keys) */
typedef struct jsonopt {
    int ensure_ascii, sort_keys;
    const char *indent; /* NULL: one line */
    size_t indent_n;
    jv item_sep, key_sep;
} jsonopt;

static void json_str(rctx *r, buf *b, const char *s, size_t n, int ascii)
{
    ctx *c = &r->c;
    buf_putc(c, b, '"');
    for (size_t i = 0; i < n;) {
        size_t st = i;
        int32_t cp = u8_next(s, n, &i);
        switch (cp) {
        case '"': buf_puts(c, b, "\\\""); break;
        case '\\': buf_puts(c, b, "\\\\"); break;
        case '\n': buf_puts(c, b, "\\n"); break;
        case '\r': buf_puts(c, b, "\\r"); break;
        case '\t': buf_puts(c, b, "\\t"); break;
        case '\b': buf_puts(c, b, "\\b"); break;
        case '\f': buf_puts(c, b, "\\f"); break;
        default:
            if (cp < 0x20 || (ascii && cp >= 0x7f)) {
                if (cp > 0xffff) {
                    int32_t u = cp - 0x10000;
                    buf_printf(c, b, "\\u%04x\\u%04x", 0xd800 | (u >> 10), 0xdc00 | (u & 0x3ff));
                } else {
                    buf_printf(c, b, "\\u%04x", cp);
                }
            } else {
                buf_put(c, b, s + st, i - st);
            }
        }
    }
    buf_putc(c, b, '"');
}

static void json_key(rctx *r, buf *b, const jv *k, const jsonopt *o, int line)
{
    char tmp[48];
    switch (k->k) {
    case V_STR: json_str(r, b, k->u.s.p, k->u.s.n, o->ensure_ascii); return;
    case V_INT: snprintf(tmp, sizeof(tmp), "%" PRId64, k->u.i); break;
    case V_FLOAT:
        if (isnan(k->u.f)) snprintf(tmp, sizeof(tmp), "NaN");
        else if (isinf(k->u.f)) snprintf(tmp, sizeof(tmp), k->u.f < 0 ? "-Infinity" : "Infinity");
        else fmt_float(k->u.f, tmp, sizeof(tmp));
        break;
    case V_BOOL: snprintf(tmp, sizeof(tmp), k->u.b ? "true" : "false"); break;
    case V_NONE: snprintf(tmp, sizeof(tmp), "null"); break;
    default: RFAIL(r, line, "keys must be str, int, float, bool or None, not %s", type_name(k));
    }
    json_str(r, b, tmp, strlen(tmp), 0);
}

static int cmp_values(rctx *r, const jv *a, const jv *b, int line);

static void json_newline(rctx *r, buf *b, const jsonopt *o, int level)
{
    buf_putc(&r->c, b, '\n');
    for (int i = 0; i < level; i++)
        buf_put(&r->c, b, o->indent, o->indent_n);
}

static void json_dump(rctx *r, buf *b, const jv *v, const jsonopt *o, int level, int line)
{
    ctx *c = &r->c;
    char tmp[48];
    if (level > 200)
        RFAIL(r, line, "tojson: value nested too deeply");
    switch (v->k) {
    case V_NONE: buf_puts(c, b, "null"); return;
    case V_BOOL: buf_puts(c, b, v->u.b ? "true" : "false"); return;
    case V_INT: buf_printf(c, b, "%" PRId64, v->u.i); return;
    case V_FLOAT:
        if (isnan(v->u.f)) buf_puts(c, b, "NaN");
        else if (isinf(v->u.f)) buf_puts(c, b, v->u.f < 0 ? "-Infinity" : "Infinity");
        else { fmt_float(v->u.f, tmp, sizeof(tmp)); buf_puts(c, b, tmp); }
        return;
    case V_STR: json_str(r, b, v->u.s.p, v->u.s.n, o->ensure_ascii); return;
    case V_LIST: {
        const jlist *l = v->u.l;
        if (l->n == 0) {
            buf_puts(c, b, "[]");
            return;
        }
        buf_putc(c, b, '[');
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                buf_put(c, b, o->item_sep.u.s.p, o->item_sep.u.s.n);
            if (o->indent)
                json_newline(r, b, o, level + 1);
            json_dump(r, b, &l->v[i], o, level + 1, line);
        }
        if (o->indent)
            json_newline(r, b, o, level);
        buf_putc(c, b, ']');
        return;
    }
    case V_DICT: {
        const jdict *d = v->u.d;
        if (d->n == 0) {
            buf_puts(c, b, "{}");
            return;
        }
        size_t *ord = aalloc(c, d->n * sizeof(size_t));
        for (size_t i = 0; i < d->n; i++)
            ord[i] = i;
        if (o->sort_keys) /* insertion sort: stable, and dicts in templates are small */
            for (size_t i = 1; i < d->n; i++)
                for (size_t j = i; j > 0 && cmp_values(r, &d->key[ord[j - 1]], &d->key[ord[j]], line) > 0; j--) {
                    size_t t = ord[j];
                    ord[j] = ord[j - 1];
                    ord[j - 1] = t;
                }
        buf_putc(c, b, '{');
        for (size_t i = 0; i < d->n; i++) {
            if (i)
                buf_put(c, b, o->item_sep.u.s.p, o->item_sep.u.s.n);
            if (o->indent)
                json_newline(r, b, o, level + 1);
            json_key(r, b, &d->key[ord[i]], o, line);
            buf_put(c, b, o->key_sep.u.s.p, o->key_sep.u.s.n);
            json_dump(r, b, &d->val[ord[i]], o, level + 1, line);
        }
        if (o->indent)
            json_newline(r, b, o, level);
        buf_putc(c, b, '}');
        return;
    }
    default:
        RFAIL(r, line, "Object of type %s is not JSON serializable", type_name(v));
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Python semantics of values                                                                 */

static int v_true(const jv *v)
{
    switch (v->k) {
    case V_UNDEF: case V_NONE: return 0;
    case V_BOOL: return v->u.b;
    case V_INT: return v->u.i != 0;
    case V_FLOAT: return v->u.f != 0.0;
    case V_STR: return v->u.s.n != 0;
    case V_LIST: return v->u.l->n != 0;
    case V_DICT: return v->u.d->n != 0;
    default: return 1;
    }
}

static int is_num(const jv *v) { return v->k == V_BOOL || v->k == V_INT || v->k == V_FLOAT; }
static double num_f(const jv *v)
{
    return v->k == V_FLOAT ? v->u.f : v->k == V_INT ? (double)v->u.i : (double)v->u.b;
}
static int64_t num_i(const jv *v) { return v->k == V_INT ? v->u.i : v->u.b; }

static int v_eq(const jv *a, const jv *b)
{
    if (is_num(a) && is_num(b)) {
        if (a->k == V_FLOAT || b->k == V_FLOAT)
            return num_f(a) == num_f(b);
        return num_i(a) == num_i(b);
    }
    if (a->k != b->k)
        return 0;
    switch (a->k) {
    case V_UNDEF: case V_NONE: return 1;
    case V_STR: return a->u.s.n == b->u.s.n && memcmp(a->u.s.p, b->u.s.p, a->u.s.n) == 0;
    case V_LIST:
        if (a->u.l->tuple != b->u.l->tuple || a->u.l->n != b->u.l->n)
            return 0;
        for (size_t i = 0; i < a->u.l->n; i++)
            if (!v_eq(&a->u.l->v[i], &b->u.l->v[i]))
                return 0;
        return 1;
    case V_DICT:
        if (a->u.d->n != b->u.d->n)
            return 0;
        for (size_t i = 0; i < a->u.d->n; i++) {
            jv *o = dict_find(b->u.d, &a->u.d->key[i]);
            if (o == NULL || !v_eq(&a->u.d->val[i], o))
                return 0;
        }
        return 1;
    case V_NS: return a->u.d == b->u.d;
    case V_LOOP: return a->u.loop == b->u.loop;
    case V_FUNC: return a->u.fn == b->u.fn;
    case V_MACRO: return a->u.macro == b->u.macro;
    default: return 0;
    }
}

/* <0, 0, >0 for Python's ordering; TypeError where Python has none */
static int cmp_values(rctx *r, const jv *a, const jv *b, int line)
{
    if (a->k == V_UNDEF)
        undef_fail(r, a, line);
    if (b->k == V_UNDEF)
        undef_fail(r, b, line);
    if (is_num(a) && is_num(b)) {
        if (a->k == V_FLOAT || b->k == V_FLOAT) {
            double x = num_f(a), y = num_f(b);
            return x < y ? -1 : x > y ? 1 : 0;
        }
        int64_t x = num_i(a), y = num_i(b);
        return x < y ? -1 : x > y ? 1 : 0;
    }
    if (a->k == V_STR && b->k == V_STR) {
        size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        int d = n ? memcmp(a->u.s.p, b->u.s.p, n) : 0;
        if (d)
            return d;
        return a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n ? 1 : 0;
    }
    if (a->k == V_LIST && b->k == V_LIST && a->u.l->tuple == b->u.l->tuple) {
        size_t n = a->u.l->n < b->u.l->n ? a->u.l->n : b->u.l->n;
        for (size_t i = 0; i < n; i++) {
            if (v_eq(&a->u.l->v[i], &b->u.l->v[i]))
                continue;
            return cmp_values(r, &a->u.l->v[i], &b->u.l->v[i], line);
        }
        return a->u.l->n < b->u.l->n ? -1 : a->u.l->n > b->u.l->n ? 1 : 0;
    }
    RFAIL(r, line, "'<' not supported between instances of '%s' and '%s'", type_name(a), type_name(b));
}

static int64_t v_len(rctx *r, const jv *v, int line)
{
    switch (v->k) {
    case V_UNDEF: return 0;
    case V_STR: return (int64_t)u8_len(v->u.s.p, v->u.s.n);
    case V_LIST: return (int64_t)v->u.l->n;
    case V_DICT: return (int64_t)v->u.d->n;
    default: RFAIL(r, line, "object of type '%s' has no len()", type_name(v));
    }
}

/* The items a for loop (or a filter) iterates over. */
static jlist *v_iter(rctx *r, const jv *v, int line)
{
    ctx *c = &r->c;
    switch (v->k) {
    case V_UNDEF: return list_new(c, 1);
    case V_LIST: return v->u.l;
    case V_DICT: {
        jlist *l = list_new(c, v->u.d->n);
        for (size_t i = 0; i < v->u.d->n; i++)
            list_push(c, l, v->u.d->key[i]);
        return l;
    }
    case V_STR: {
        jlist *l = list_new(c, v->u.s.n);
        for (size_t i = 0; i < v->u.s.n;) {
            size_t st = i;
            u8_next(v->u.s.p, v->u.s.n, &i);
            list_push(c, l, mk_str(v->u.s.p + st, i - st));
        }
        return l;
    }
    default: RFAIL(r, line, "'%s' object is not iterable", type_name(v));
    }
}

static jv concat_str(rctx *r, const jv *a, const jv *b)
{
    char *p = aalloc(&r->c, a->u.s.n + b->u.s.n + 1);
    memcpy(p, a->u.s.p, a->u.s.n);
    memcpy(p + a->u.s.n, b->u.s.p, b->u.s.n);
    return mk_str(p, a->u.s.n + b->u.s.n);
}

static jv repeat(rctx *r, const jv *seq, int64_t times, int line)
{
    ctx *c = &r->c;
    if (times < 0)
        times = 0;
    if (seq->k == V_STR) {
        if (seq->u.s.n && (uint64_t)times > r->max_output / seq->u.s.n)
            RFAIL(r, line, "string repetition too large");
        buf b = { .max = r->max_output };
        for (int64_t i = 0; i < times; i++)
            buf_put(c, &b, seq->u.s.p, seq->u.s.n);
        return b.n ? buf_str(&b) : mk_str("", 0);
    }
    if (seq->u.l->n && (uint64_t)times > 1000000 / seq->u.l->n)
        RFAIL(r, line, "list repetition too large");
    jlist *l = list_new(c, seq->u.l->n * (size_t)times + 1);
    l->tuple = seq->u.l->tuple;
    for (int64_t i = 0; i < times; i++)
        for (size_t k = 0; k < seq->u.l->n; k++)
            list_push(c, l, seq->u.l->v[k]);
    return mk_list(l);
}

static jv arith(rctx *r, int op, const jv *a, const jv *b, int line)
{
    if (a->k == V_UNDEF)
        undef_fail(r, a, line);
    if (b->k == V_UNDEF)
        undef_fail(r, b, line);
    if (is_num(a) && is_num(b)) {
        int fl = a->k == V_FLOAT || b->k == V_FLOAT;
        int64_t x = num_i(a), y = num_i(b), z;
        double fx = num_f(a), fy = num_f(b);
        switch (op) {
        case '+':
            if (fl) return mk_float(fx + fy);
            if (__builtin_add_overflow(x, y, &z)) break;
            return mk_int(z);
        case '-':
            if (fl) return mk_float(fx - fy);
            if (__builtin_sub_overflow(x, y, &z)) break;
            return mk_int(z);
        case '*':
            if (fl) return mk_float(fx * fy);
            if (__builtin_mul_overflow(x, y, &z)) break;
            return mk_int(z);
        case '/':
            if (fy == 0.0) RFAIL(r, line, "division by zero");
            return mk_float(fx / fy);
        case 'f':
            if (fl) {
                if (fy == 0.0) RFAIL(r, line, "float floor division by zero");
                return mk_float(floor(fx / fy));
            }
            if (y == 0) RFAIL(r, line, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) break;
            z = x / y;
            if ((x % y != 0) && ((x < 0) != (y < 0)))
                z--;
            return mk_int(z);
        case '%':
            if (fl) {
                if (fy == 0.0) RFAIL(r, line, "float modulo");
                double m = fmod(fx, fy);
                if (m != 0.0 && ((m < 0) != (fy < 0)))
                    m += fy;
                return mk_float(m);
            }
            if (y == 0) RFAIL(r, line, "integer division or modulo by zero");
            if (y == -1) return mk_int(0);
            z = x % y;
            if (z != 0 && ((z < 0) != (y < 0)))
                z += y;
            return mk_int(z);
        case 'p':
            if (!fl && y >= 0) {
                int64_t acc = 1;
                for (int64_t k = 0; k < y; k++) {
                    if (__builtin_mul_overflow(acc, x, &acc))
                        RFAIL(r, line, "integer too large");
                    if (acc == 0 || acc == 1)
                        break;
                }
                if (acc == 1 && x == -1)
                    acc = (y % 2) ? -1 : 1;
                return mk_int(acc);
            }
            return mk_float(pow(fx, fy));
        }
        RFAIL(r, line, "integer overflow");
    }
    if (op == '+') {
        if (a->k == V_STR && b->k == V_STR)
            return concat_str(r, a, b);
        if (a->k == V_LIST && b->k == V_LIST && a->u.l->tuple == b->u.l->tuple) {
            jlist *l = list_new(&r->c, a->u.l->n + b->u.l->n + 1);
            l->tuple = a->u.l->tuple;
            for (size_t i = 0; i < a->u.l->n; i++)
                list_push(&r->c, l, a->u.l->v[i]);
            for (size_t i = 0; i < b->u.l->n; i++)
                list_push(&r->c, l, b->u.l->v[i]);
            return mk_list(l);
        }
    }
    if (op == '*') {
        if ((a->k == V_STR || a->k == V_LIST) && (b->k == V_INT || b->k == V_BOOL))
            return repeat(r, a, num_i(b), line);
        if ((b->k == V_STR || b->k == V_LIST) && (a->k == V_INT || a->k == V_BOOL))
            return repeat(r, b, num_i(a), line);
    }
    if (op == '%' && a->k == V_STR)
        RFAIL(r, line, "printf-style string formatting with %% is not supported (use ~ or the format filter)");
    static const char *const names[] = { ['+'] = "+", ['-'] = "-", ['*'] = "*", ['/'] = "/",
                                         ['f'] = "//", ['%'] = "%", ['p'] = "**" };
    RFAIL(r, line, "unsupported operand type(s) for %s: '%s' and '%s'", names[op], type_name(a),
          type_name(b));
}

static int v_in(rctx *r, const jv *x, const jv *seq, int line)
{
    switch (seq->k) {
    case V_STR:
        if (x->k != V_STR)
            RFAIL(r, line, "'in <string>' requires string as left operand, not %s", type_name(x));
        if (x->u.s.n == 0)
            return 1;
        for (size_t i = 0; i + x->u.s.n <= seq->u.s.n; i++)
            if (memcmp(seq->u.s.p + i, x->u.s.p, x->u.s.n) == 0)
                return 1;
        return 0;
    case V_LIST:
        for (size_t i = 0; i < seq->u.l->n; i++)
            if (v_eq(x, &seq->u.l->v[i]))
                return 1;
        return 0;
    case V_DICT:
        return dict_find(seq->u.d, x) != NULL;
    case V_UNDEF:
        undef_fail(r, seq, line);
    default:
        RFAIL(r, line, "argument of type '%s' is not iterable", type_name(seq));
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Attribute and item access (jinja2.sandbox semantics for the types templates meet)          */

static const char *const str_methods[] = {
    "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "rsplit", "upper", "lower",
    "title", "capitalize", "replace", "find", "rfind", "count", "join", "splitlines", "isdigit",
    "isalpha", "isalnum", "isspace", "isupper", "islower", "swapcase", "casefold", NULL,
};
static const char *const dict_methods[] = { "items", "keys", "values", "get", NULL };
static const char *const list_methods[] = { "count", "index", NULL };

static int in_names(const char *const *names, const char *s)
{
    for (size_t i = 0; names[i] != NULL; i++)
        if (strcmp(names[i], s) == 0)
            return 1;
    return 0;
}

static jv method(rctx *r, const jv *self, const char *name)
{
    jv m = { .k = V_METHOD };
    jv *s = aalloc(&r->c, sizeof(jv));
    *s = *self;
    m.u.m.self = s;
    m.u.m.name = name;
    return m;
}

static jv no_attr(rctx *r, const jv *obj, const char *name)
{
    char tmp[256];
    if (obj->k == V_NONE)
        snprintf(tmp, sizeof(tmp), "'None' has no attribute '%s'", name);
    else
        snprintf(tmp, sizeof(tmp), "'%s object' has no attribute '%s'", type_name(obj), name);
    return mk_undef(astrdup(&r->c, tmp, strlen(tmp)));
}

static jv loop_attr(rctx *r, const loopv *lp, const char *name, const jv *self);

/* obj.name: the attribute first, then the item (jinja2 Environment.getattr) */
static jv get_attr(rctx *r, const jv *obj, const char *name, int line)
{
    switch (obj->k) {
    case V_UNDEF:
        undef_fail(r, obj, line);
    case V_DICT: {
        if (in_names(dict_methods, name))
            return method(r, obj, name);
        jv *v = dict_find_str(obj->u.d, name, strlen(name));
        return v ? *v : no_attr(r, obj, name);
    }
    case V_NS: {
        jv *v = dict_find_str(obj->u.d, name, strlen(name));
        return v ? *v : no_attr(r, obj, name);
    }
    case V_STR:
        if (in_names(str_methods, name))
            return method(r, obj, name);
        return no_attr(r, obj, name);
    case V_LIST:
        if (in_names(list_methods, name))
            return method(r, obj, name);
        return no_attr(r, obj, name);
    case V_LOOP:
        return loop_attr(r, obj->u.loop, name, obj);
    default:
        return no_attr(r, obj, name);
    }
}

/* obj[key]: the item first, then the attribute (jinja2 Environment.getitem) */
static jv get_item(rctx *r, const jv *obj, const jv *key, int line)
{
    if (obj->k == V_UNDEF)
        undef_fail(r, obj, line);
    if (key->k == V_UNDEF)
        undef_fail(r, key, line);
    if ((obj->k == V_LIST || obj->k == V_STR) && (key->k == V_INT || key->k == V_BOOL)) {
        int64_t n = v_len(r, obj, line), i = num_i(key);
        if (i < 0)
            i += n;
        if (i >= 0 && i < n) {
            if (obj->k == V_LIST)
                return obj->u.l->v[i];
            size_t st = u8_off(obj->u.s.p, obj->u.s.n, (size_t)i), en = st + 1;
            while (en < obj->u.s.n && ((unsigned char)obj->u.s.p[en] & 0xC0) == 0x80)
                en++;
            return mk_str(obj->u.s.p + st, en - st);
        }
        return mk_undef("list index out of range");
    }
    if (obj->k == V_DICT || obj->k == V_NS) {
        jv *v = dict_find(obj->u.d, key);
        if (v != NULL)
            return *v;
    }
    if (key->k == V_STR) {
        char *name = astrdup(&r->c, key->u.s.p, key->u.s.n);
        if (obj->k == V_DICT) {
            if (in_names(dict_methods, name))
                return method(r, obj, name);
            return no_attr(r, obj, name);
        }
        return get_attr(r, obj, name, line);
    }
    char tmp[96];
    snprintf(tmp, sizeof(tmp), "'%s object' has no item of that key", type_name(obj));
    return mk_undef(astrdup(&r->c, tmp, strlen(tmp)));
}

static int64_t slice_bound(rctx *r, const jv *v, int line)
{
    if (v->k == V_INT || v->k == V_BOOL)
        return num_i(v);
    RFAIL(r, line, "slice indices must be integers or None");
}

/* Python's seq[start:stop:step] for lists, tuples and strings (by code point) */
static jv get_slice(rctx *r, const jv *obj, const jv *a, const jv *b, const jv *s, int line)
{
    ctx *c = &r->c;
    if (obj->k == V_UNDEF)
        undef_fail(r, obj, line);
    if (obj->k != V_LIST && obj->k != V_STR)
        RFAIL(r, line, "'%s' object is not subscriptable with a slice", type_name(obj));
    int64_t n = v_len(r, obj, line);
    int64_t st = 1;
    if (s != NULL && s->k != V_NONE) {
        st = slice_bound(r, s, line);
        if (st == 0)
            RFAIL(r, line, "slice step cannot be zero");
        /* a step past the length selects the same items, and keeps i += st from overflowing */
        if (st > n)
            st = n + 1;
        if (st < -n)
            st = -n - 1;
    }
    int64_t lo, hi;
    if (a == NULL || a->k == V_NONE) {
        lo = st > 0 ? 0 : n - 1;
    } else {
        lo = slice_bound(r, a, line);
        if (lo < 0) lo += n;
        if (st > 0) { if (lo < 0) lo = 0; if (lo > n) lo = n; }
        else { if (lo < 0) lo = -1; if (lo >= n) lo = n - 1; }
    }
    if (b == NULL || b->k == V_NONE) {
        hi = st > 0 ? n : -1;
    } else {
        hi = slice_bound(r, b, line);
        if (hi < 0) hi += n;
        if (st > 0) { if (hi < 0) hi = 0; if (hi > n) hi = n; }
        else { if (hi < -1) hi = -1; if (hi >= n) hi = n - 1; }
    }
    /* code point offsets of a string, once */
    size_t *off = NULL;
    if (obj->k == V_STR) {
        off = aalloc(c, ((size_t)n + 1) * sizeof(size_t));
        size_t i = 0, k = 0;
        while (i < obj->u.s.n) {
            off[k++] = i;
            u8_next(obj->u.s.p, obj->u.s.n, &i);
        }
        off[k] = obj->u.s.n;
    }
    jlist *l = obj->k == V_LIST ? list_new(c, 8) : NULL;
    buf bb = { .max = SIZE_MAX };
    for (int64_t i = lo; st > 0 ? i < hi : i > hi; i += st) {
        if (l != NULL)
            list_push(c, l, obj->u.l->v[i]);
        else
            buf_put(c, &bb, obj->u.s.p + off[i], off[i + 1] - off[i]);
    }
    if (l != NULL) {
        l->tuple = obj->u.l->tuple;
        return mk_list(l);
    }
    return bb.n ? buf_str(&bb) : mk_str("", 0);
}

static jv loop_attr(rctx *r, const loopv *lp, const char *name, const jv *self)
{
    int64_t i = (int64_t)lp->i, n = (int64_t)lp->items->n;
    if (strcmp(name, "index") == 0) return mk_int(i + 1);
    if (strcmp(name, "index0") == 0) return mk_int(i);
    if (strcmp(name, "revindex") == 0) return mk_int(n - i);
    if (strcmp(name, "revindex0") == 0) return mk_int(n - i - 1);
    if (strcmp(name, "first") == 0) return mk_bool(i == 0);
    if (strcmp(name, "last") == 0) return mk_bool(i == n - 1);
    if (strcmp(name, "length") == 0) return mk_int(n);
    if (strcmp(name, "depth") == 0) return mk_int(lp->depth);
    if (strcmp(name, "depth0") == 0) return mk_int(lp->depth - 1);
    if (strcmp(name, "previtem") == 0)
        return i > 0 ? lp->items->v[i - 1] : mk_undef("there is no previous item");
    if (strcmp(name, "nextitem") == 0)
        return i + 1 < n ? lp->items->v[i + 1] : mk_undef("there is no next item");
    if (strcmp(name, "cycle") == 0)
        return method(r, self, "cycle");
    return no_attr(r, self, name);
}

/* ------------------------------------------------------------------------------------------ */
/* String operations (str methods and filters)                                                */

enum { CASE_UPPER, CASE_LOWER, CASE_TITLE_PY, CASE_CAPITALIZE, CASE_SWAP };

static int cased(int32_t cp)
{
    utf8proc_category_t k = utf8proc_category(cp);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}

static jv change_case(rctx *r, jv s, int mode)
{
    buf b = { .max = SIZE_MAX };
    int prev_cased = 0, first = 1;
    char tmp[8];
    for (size_t i = 0; i < s.u.s.n;) {
        int32_t cp = u8_next(s.u.s.p, s.u.s.n, &i), o = cp;
        switch (mode) {
        case CASE_UPPER: o = utf8proc_toupper(cp); break;
        case CASE_LOWER: o = utf8proc_tolower(cp); break;
        case CASE_TITLE_PY:
            o = prev_cased ? utf8proc_tolower(cp) : utf8proc_totitle(cp);
            prev_cased = cased(o);
            break;
        case CASE_CAPITALIZE: o = first ? utf8proc_totitle(cp) : utf8proc_tolower(cp); break;
        case CASE_SWAP:
            o = utf8proc_toupper(cp) != cp ? utf8proc_toupper(cp) : utf8proc_tolower(cp);
            break;
        }
        first = 0;
        buf_put(&r->c, &b, tmp, u8_put(tmp, o));
    }
    return b.n ? buf_str(&b) : mk_str("", 0);
}

/* jinja2's title filter: each run between [-\s({[<]+ separators gets its first character
 * upper-cased and the rest lower-cased */
static jv title_filter(rctx *r, jv s)
{
    buf b = { .max = SIZE_MAX };
    char tmp[8];
    int at_start = 1;
    for (size_t i = 0; i < s.u.s.n;) {
        int32_t cp = u8_next(s.u.s.p, s.u.s.n, &i);
        int sep = py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
        int32_t o;
        if (sep) { /* a separator run is an item of its own; upper() leaves it as it is */
            o = cp;
            at_start = 1;
        } else {
            o = at_start ? utf8proc_toupper(cp) : utf8proc_tolower(cp);
            at_start = 0;
        }
        buf_put(&r->c, &b, tmp, u8_put(tmp, o));
    }
    return b.n ? buf_str(&b) : mk_str("", 0);
}

static int in_chars(int32_t cp, const jv *chars)
{
    for (size_t i = 0; i < chars->u.s.n;)
        if (u8_next(chars->u.s.p, chars->u.s.n, &i) == cp)
            return 1;
    return 0;
}

/* str.strip([chars]); which: 1 left, 2 right, 3 both */
static jv strip(rctx *r, jv s, const jv *chars, int which, int line)
{
    if (chars != NULL && chars->k != V_NONE && chars->k != V_STR)
        RFAIL(r, line, "strip arg must be None or str");
    if (chars != NULL && chars->k == V_NONE)
        chars = NULL;
    size_t a = 0, b = s.u.s.n;
    if (which & 1)
        while (a < b) {
            size_t j = a;
            int32_t cp = u8_next(s.u.s.p, b, &j);
            if (chars ? !in_chars(cp, chars) : !py_space(cp))
                break;
            a = j;
        }
    if (which & 2)
        while (b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)s.u.s.p[st] & 0xC0) == 0x80)
                st--;
            size_t j = st;
            int32_t cp = u8_next(s.u.s.p, b, &j);
            if (chars ? !in_chars(cp, chars) : !py_space(cp))
                break;
            b = st;
        }
    return mk_str(s.u.s.p + a, b - a);
}

static const char *memmem_(const char *h, size_t hn, const char *n, size_t nn)
{
    if (nn == 0)
        return h;
    for (size_t i = 0; i + nn <= hn; i++)
        if (memcmp(h + i, n, nn) == 0)
            return h + i;
    return NULL;
}

static jv str_replace(rctx *r, jv s, jv old, jv new, int64_t count)
{
    ctx *c = &r->c;
    buf b = { .max = r->max_output };
    if (old.u.s.n == 0) { /* Python inserts new around every character */
        int64_t done = 0;
        for (size_t i = 0; i <= s.u.s.n;) {
            if (count < 0 || done < count) {
                buf_put(c, &b, new.u.s.p, new.u.s.n);
                done++;
            }
            if (i == s.u.s.n)
                break;
            size_t st = i;
            u8_next(s.u.s.p, s.u.s.n, &i);
            buf_put(c, &b, s.u.s.p + st, i - st);
        }
        return b.n ? buf_str(&b) : mk_str("", 0);
    }
    size_t i = 0;
    int64_t done = 0;
    while (i < s.u.s.n) {
        const char *f = (count < 0 || done < count) ? memmem_(s.u.s.p + i, s.u.s.n - i, old.u.s.p, old.u.s.n) : NULL;
        if (f == NULL) {
            buf_put(c, &b, s.u.s.p + i, s.u.s.n - i);
            break;
        }
        buf_put(c, &b, s.u.s.p + i, (size_t)(f - (s.u.s.p + i)));
        buf_put(c, &b, new.u.s.p, new.u.s.n);
        i = (size_t)(f - s.u.s.p) + old.u.s.n;
        done++;
    }
    return b.n ? buf_str(&b) : mk_str("", 0);
}

/* str.split(sep=None, maxsplit=-1) */
static jv str_split(rctx *r, jv s, const jv *sep, int64_t maxsplit, int line)
{
    ctx *c = &r->c;
    jlist *l = list_new(c, 8);
    if (sep == NULL || sep->k == V_NONE) {
        size_t i = 0, n = s.u.s.n;
        int64_t done = 0;
        for (;;) {
            i += lspace_len(s.u.s.p + i, n - i);
            if (i >= n)
                break;
            if (maxsplit >= 0 && done >= maxsplit) {
                size_t e = n - rspace_len(s.u.s.p + i, n - i);
                list_push(c, l, mk_str(s.u.s.p + i, e - i));
                break;
            }
            size_t j = i;
            while (j < n) {
                size_t k = j;
                if (py_space(u8_next(s.u.s.p, n, &k)))
                    break;
                j = k;
            }
            list_push(c, l, mk_str(s.u.s.p + i, j - i));
            done++;
            i = j;
        }
        return mk_list(l);
    }
    if (sep->k != V_STR)
        RFAIL(r, line, "must be str or None, not %s", type_name(sep));
    if (sep->u.s.n == 0)
        RFAIL(r, line, "empty separator");
    size_t i = 0;
    int64_t done = 0;
    for (;;) {
        const char *f = (maxsplit < 0 || done < maxsplit) ? memmem_(s.u.s.p + i, s.u.s.n - i, sep->u.s.p, sep->u.s.n) : NULL;
        if (f == NULL) {
            list_push(c, l, mk_str(s.u.s.p + i, s.u.s.n - i));
            break;
        }
        list_push(c, l, mk_str(s.u.s.p + i, (size_t)(f - (s.u.s.p + i))));
        i = (size_t)(f - s.u.s.p) + sep->u.s.n;
        done++;
    }
    return mk_list(l);
}

/* str.splitlines(): Python's line boundaries */
static jlist *splitlines(rctx *r, jv s)
{
    jlist *l = list_new(&r->c, 8);
    size_t i = 0, st = 0, n = s.u.s.n;
    while (i < n) {
        size_t at = i;
        int32_t cp = u8_next(s.u.s.p, n, &i);
        if (cp == '\n' || cp == '\r' || cp == 11 || cp == 12 || cp == 0x1c || cp == 0x1d ||
            cp == 0x1e || cp == 0x85 || cp == 0x2028 || cp == 0x2029) {
            list_push(&r->c, l, mk_str(s.u.s.p + st, at - st));
            if (cp == '\r' && i < n && s.u.s.p[i] == '\n')
                i++;
            st = i;
        }
    }
    if (st < n)
        list_push(&r->c, l, mk_str(s.u.s.p + st, n - st));
    return l;
}

static int64_t str_count(jv s, jv sub)
{
    if (sub.u.s.n == 0)
        return (int64_t)u8_len(s.u.s.p, s.u.s.n) + 1;
    int64_t k = 0;
    for (size_t i = 0; i + sub.u.s.n <= s.u.s.n;) {
        if (memcmp(s.u.s.p + i, sub.u.s.p, sub.u.s.n) == 0) {
            k++;
            i += sub.u.s.n;
        } else {
            i++;
        }
    }
    return k;
}

static int64_t str_find(jv s, jv sub, int rev)
{
    int64_t found = -1;
    for (size_t i = 0; i + sub.u.s.n <= s.u.s.n; i++)
        if (memcmp(s.u.s.p + i, sub.u.s.p, sub.u.s.n) == 0) {
            found = (int64_t)u8_len(s.u.s.p, i);
            if (!rev)
                break;
        }
    return found;
}

static int all_chars(jv s, int what)
{
    if (s.u.s.n == 0)
        return 0;
    int any_cased = 0;
    for (size_t i = 0; i < s.u.s.n;) {
        int32_t cp = u8_next(s.u.s.p, s.u.s.n, &i);
        utf8proc_category_t k = utf8proc_category(cp);
        switch (what) {
        case 'd': if (k != UTF8PROC_CATEGORY_ND) return 0; break;
        case 'a': if (k < UTF8PROC_CATEGORY_LU || k > UTF8PROC_CATEGORY_LO) return 0; break;
        case 'n': if ((k < UTF8PROC_CATEGORY_LU || k > UTF8PROC_CATEGORY_LO) && (k < UTF8PROC_CATEGORY_ND || k > UTF8PROC_CATEGORY_NO)) return 0; break;
        case 's': if (!py_space(cp)) return 0; break;
        case 'u': if (k == UTF8PROC_CATEGORY_LL) return 0; any_cased |= k == UTF8PROC_CATEGORY_LU; break;
        case 'l': if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LT) return 0; any_cased |= k == UTF8PROC_CATEGORY_LL; break;
        }
    }
    return (what == 'u' || what == 'l') ? any_cased : 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Calls: evaluated arguments                                                                 */

typedef struct args {
    jv *pos;
    size_t npos;
    const char **kw;
    jv *kwv;
    size_t nkw;
    const char *what; /* "filter 'join'" for messages */
    int line;
} args;

/* Argument i by position or by name; NULL when absent. */
static const jv *arg(rctx *r, const args *a, size_t i, const char *name)
{
    const jv *v = i < a->npos ? &a->pos[i] : NULL;
    for (size_t k = 0; k < a->nkw; k++)
        if (strcmp(a->kw[k], name) == 0) {
            if (v != NULL)
                RFAIL(r, a->line, "%s got multiple values for argument '%s'", a->what, name);
            v = &a->kwv[k];
        }
    return v;
}
static void check_args(rctx *r, const args *a, size_t max_pos, const char *const *names)
{
    if (a->npos > max_pos)
        RFAIL(r, a->line, "%s takes at most %zu positional arguments (%zu given)", a->what, max_pos, a->npos);
    for (size_t k = 0; k < a->nkw; k++) {
        int ok = 0;
        for (size_t i = 0; names != NULL && names[i] != NULL; i++)
            ok |= strcmp(names[i], a->kw[k]) == 0;
        if (!ok)
            RFAIL(r, a->line, "%s got an unexpected keyword argument '%s'", a->what, a->kw[k]);
    }
}
static jv need_str(rctx *r, const args *a, const jv *v, const char *name)
{
    if (v == NULL || v->k != V_STR)
        RFAIL(r, a->line, "%s: argument '%s' must be a string, not %s", a->what, name,
              v ? type_name(v) : "missing");
    return *v;
}
static int64_t need_int(rctx *r, const args *a, const jv *v, const char *name)
{
    if (v == NULL || (v->k != V_INT && v->k != V_BOOL))
        RFAIL(r, a->line, "%s: argument '%s' must be an integer, not %s", a->what, name,
              v ? type_name(v) : "missing");
    return num_i(v);
}

static jv apply_filter(rctx *r, int fid, const char *fname, jv v, const args *a);
static int apply_test(rctx *r, int tid, const char *tname, const jv *v, const args *a);

/* item.attr.0... for selectattr / map(attribute=) / sort(attribute=): getitem per part */
static jv attr_path(rctx *r, jv v, jv path, int line)
{
    size_t i = 0;
    while (i <= path.u.s.n) {
        size_t j = i;
        while (j < path.u.s.n && path.u.s.p[j] != '.')
            j++;
        jv part = mk_str(path.u.s.p + i, j - i);
        int digits = j > i;
        int64_t num = 0;
        for (size_t k = i; k < j; k++) {
            if (!isdigit((unsigned char)path.u.s.p[k]) || num > (INT64_MAX - 9) / 10) {
                digits = 0;
                break;
            }
            num = num * 10 + (path.u.s.p[k] - '0');
        }
        jv key = digits ? mk_int(num) : part;
        v = get_item(r, &v, &key, line);
        i = j + 1;
    }
    return v;
}

static jv sorted(rctx *r, jlist *in, int reverse, int case_sensitive, const jv *attribute, int line)
{
    ctx *c = &r->c;
    size_t n = in->n;
    jv *keys = aalloc(c, (n + 1) * sizeof(jv));
    size_t *ord = aalloc(c, (n + 1) * sizeof(size_t));
    for (size_t i = 0; i < n; i++) {
        jv k = in->v[i];
        if (attribute != NULL && attribute->k == V_STR)
            k = attr_path(r, k, *attribute, line);
        if (!case_sensitive && k.k == V_STR)
            k = change_case(r, k, CASE_LOWER);
        keys[i] = k;
        ord[i] = i;
    }
    /* stable insertion sort (Python's sort is stable; reverse keeps equal items in order) */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0; j--) {
            int d = cmp_values(r, &keys[ord[j - 1]], &keys[ord[j]], line);
            if (reverse ? d >= 0 : d <= 0)
                break;
            size_t t = ord[j];
            ord[j] = ord[j - 1];
            ord[j - 1] = t;
            step(r, line);
        }
    jlist *l = list_new(c, n + 1);
    for (size_t i = 0; i < n; i++)
        list_push(c, l, in->v[ord[i]]);
    return mk_list(l);
}

/* ------------------------------------------------------------------------------------------ */
/* Filters                                                                                    */

static jv html_escape(rctx *r, jv s)
{
    buf b = { .max = r->max_output };
    for (size_t i = 0; i < s.u.s.n; i++) {
        switch (s.u.s.p[i]) {
        case '&': buf_puts(&r->c, &b, "&amp;"); break;
        case '<': buf_puts(&r->c, &b, "&lt;"); break;
        case '>': buf_puts(&r->c, &b, "&gt;"); break;
        case '"': buf_puts(&r->c, &b, "&#34;"); break;
        case '\'': buf_puts(&r->c, &b, "&#39;"); break;
        default: buf_putc(&r->c, &b, s.u.s.p[i]);
        }
    }
    return b.n ? buf_str(&b) : mk_str("", 0);
}

static jv python_int(rctx *r, const jv *v, const jv *def, int64_t base, int line)
{
    (void)line;
    switch (v->k) {
    case V_INT: return *v;
    case V_BOOL: return mk_int(v->u.b);
    case V_FLOAT:
        if (isfinite(v->u.f) && fabs(v->u.f) < 9.2e18)
            return mk_int((int64_t)v->u.f);
        return *def;
    case V_STR: {
        jv t = strip(r, *v, NULL, 3, line);
        char tmp[128];
        size_t n = 0;
        for (size_t i = 0; i < t.u.s.n && n < sizeof(tmp) - 1; i++)
            if (t.u.s.p[i] != '_')
                tmp[n++] = t.u.s.p[i];
        tmp[n] = '\0';
        if (n > 0 && n < sizeof(tmp) - 1) {
            char *end;
            errno = 0;
            long long x = strtoll(tmp, &end, (int)base);
            if (*end == '\0' && end != tmp && !isspace((unsigned char)tmp[0]) && errno == 0)
                return mk_int(x);
            double f = strtod(tmp, &end);
            if (*end == '\0' && end != tmp && isfinite(f) && fabs(f) < 9.2e18)
                return mk_int((int64_t)f);
        }
        return *def;
    }
    default: return *def;
    }
}

static jv filter_tojson(rctx *r, jv v, const args *a)
{
    static const char *const names[] = { "ensure_ascii", "indent", "separators", "sort_keys", NULL };
    check_args(r, a, 4, names);
    const jv *ea = arg(r, a, 0, "ensure_ascii"), *ind = arg(r, a, 1, "indent"),
             *sep = arg(r, a, 2, "separators"), *sk = arg(r, a, 3, "sort_keys");
    jsonopt o = { .ensure_ascii = ea ? v_true(ea) : 0, .sort_keys = sk ? v_true(sk) : 0 };
    if (ind != NULL && ind->k != V_NONE) {
        if (ind->k == V_STR) {
            o.indent = ind->u.s.p;
            o.indent_n = ind->u.s.n;
        } else if (ind->k == V_INT || ind->k == V_BOOL) {
            int64_t k = num_i(ind);
            if (k > 64)
                RFAIL(r, a->line, "tojson: indent %" PRId64 " is too large", k);
            char *sp = aalloc(&r->c, 65);
            memset(sp, ' ', 64);
            o.indent = sp;
            o.indent_n = k > 0 ? (size_t)k : 0;
        } else {
            RFAIL(r, a->line, "tojson: indent must be an integer or a string");
        }
    }
    o.item_sep = mk_cstr(o.indent ? "," : ", ");
    o.key_sep = mk_cstr(": ");
    if (sep != NULL && sep->k != V_NONE) {
        if (sep->k != V_LIST || sep->u.l->n != 2 || sep->u.l->v[0].k != V_STR || sep->u.l->v[1].k != V_STR)
            RFAIL(r, a->line, "tojson: separators must be a pair of strings");
        o.item_sep = sep->u.l->v[0];
        o.key_sep = sep->u.l->v[1];
    }
    buf b = { .max = r->max_output };
    json_dump(r, &b, &v, &o, 0, a->line);
    return buf_str(&b);
}

static jv filter_indent(rctx *r, jv v, const args *a)
{
    static const char *const names[] = { "width", "first", "blank", NULL };
    check_args(r, a, 3, names);
    const jv *w = arg(r, a, 0, "width"), *first = arg(r, a, 1, "first"), *blank = arg(r, a, 2, "blank");
    jv ind;
    if (w == NULL) {
        ind = mk_cstr("    ");
    } else if (w->k == V_STR) {
        ind = *w;
    } else {
        int64_t k = need_int(r, a, w, "width");
        if (k > 256)
            RFAIL(r, a->line, "indent: width too large");
        char *sp = aalloc(&r->c, (size_t)(k > 0 ? k : 0) + 1);
        memset(sp, ' ', (size_t)(k > 0 ? k : 0));
        ind = mk_str(sp, (size_t)(k > 0 ? k : 0));
    }
    jv s = to_str(r, &v);
    jv nl = mk_cstr("\n");
    s = concat_str(r, &s, &nl); /* jinja2 appends a newline for splitlines' sake */
    jlist *lines = splitlines(r, s);
    buf b = { .max = r->max_output };
    ctx *c = &r->c;
    if (blank != NULL && v_true(blank)) {
        for (size_t i = 0; i < lines->n; i++) {
            if (i) {
                buf_putc(c, &b, '\n');
                buf_put(c, &b, ind.u.s.p, ind.u.s.n);
            }
            buf_put(c, &b, lines->v[i].u.s.p, lines->v[i].u.s.n);
        }
    } else if (lines->n > 0) {
        buf_put(c, &b, lines->v[0].u.s.p, lines->v[0].u.s.n);
        if (lines->n > 1) {
            buf_putc(c, &b, '\n');
            for (size_t i = 1; i < lines->n; i++) {
                if (i > 1)
                    buf_putc(c, &b, '\n');
                if (lines->v[i].u.s.n)
                    buf_put(c, &b, ind.u.s.p, ind.u.s.n);
                buf_put(c, &b, lines->v[i].u.s.p, lines->v[i].u.s.n);
            }
        }
    }
    jv out = b.n ? buf_str(&b) : mk_str("", 0);
    if (first != NULL && v_true(first))
        out = concat_str(r, &ind, &out);
    return out;
}

/* select / reject / selectattr / rejectattr */
static jv filter_select(rctx *r, jv v, const args *a, int want, int by_attr)
{
    ctx *c = &r->c;
    jlist *in = v_iter(r, &v, a->line);
    size_t off = by_attr ? 1 : 0;
    jv attr = { 0 };
    if (by_attr)
        attr = need_str(r, a, a->npos > 0 ? &a->pos[0] : NULL, "attribute");
    int tid = -1;
    const char *tname = NULL;
    if (a->npos > off) {
        jv tn = need_str(r, a, &a->pos[off], "test");
        tname = astrdup(c, tn.u.s.p, tn.u.s.n);
        tid = find_test(tname);
        if (tid < 0)
            RFAIL(r, a->line, "unknown test '%s'", tname);
    }
    args ta = { .pos = a->pos + off + 1, .npos = a->npos > off + 1 ? a->npos - off - 1 : 0,
                .kw = a->kw, .kwv = a->kwv, .nkw = a->nkw, .what = tname, .line = a->line };
    jlist *l = list_new(c, in->n + 1);
    for (size_t i = 0; i < in->n; i++) {
        step(r, a->line);
        jv x = by_attr ? attr_path(r, in->v[i], attr, a->line) : in->v[i];
        int ok = tid < 0 ? v_true(&x) : apply_test(r, tid, tname, &x, &ta);
        if (ok == want)
            list_push(c, l, in->v[i]);
    }
    return mk_list(l);
}

static jv filter_map(rctx *r, jv v, const args *a)
{
    ctx *c = &r->c;
    jlist *in = v_iter(r, &v, a->line);
    jlist *l = list_new(c, in->n + 1);
    const jv *attribute = NULL, *def = NULL;
    for (size_t k = 0; k < a->nkw; k++) {
        if (strcmp(a->kw[k], "attribute") == 0)
            attribute = &a->kwv[k];
        else if (strcmp(a->kw[k], "default") == 0)
            def = &a->kwv[k];
    }
    if (attribute != NULL) {
        jv path = need_str(r, a, attribute, "attribute");
        for (size_t i = 0; i < in->n; i++) {
            jv x = attr_path(r, in->v[i], path, a->line);
            if (x.k == V_UNDEF && def != NULL)
                x = *def;
            list_push(c, l, x);
        }
        return mk_list(l);
    }
    jv fn = need_str(r, a, a->npos ? &a->pos[0] : NULL, "filter");
    const char *fname = astrdup(c, fn.u.s.p, fn.u.s.n);
    int fid = find_filter(fname);
    if (fid < 0)
        RFAIL(r, a->line, "unknown filter '%s'", fname);
    args fa = { .pos = a->pos + 1, .npos = a->npos - 1, .kw = a->kw, .kwv = a->kwv, .nkw = a->nkw,
                .what = fname, .line = a->line };
    for (size_t i = 0; i < in->n; i++) {
        step(r, a->line);
        list_push(c, l, apply_filter(r, fid, fname, in->v[i], &fa));
    }
    return mk_list(l);
}

static jv filter_round(rctx *r, jv v, const args *a)
{
    static const char *const names[] = { "precision", "method", NULL };
    check_args(r, a, 2, names);
    const jv *p = arg(r, a, 0, "precision"), *m = arg(r, a, 1, "method");
    int64_t prec = p ? need_int(r, a, p, "precision") : 0;
    jv meth = m ? need_str(r, a, m, "method") : mk_cstr("common");
    if (!is_num(&v))
        RFAIL(r, a->line, "round: a number is required, not %s", type_name(&v));
    if (prec < -300 || prec > 300)
        RFAIL(r, a->line, "round: precision out of range");
    double x = num_f(&v), sc = pow(10.0, (double)prec);
    if (meth.u.s.n == 6 && memcmp(meth.u.s.p, "common", 6) == 0) {
        if (v.k != V_FLOAT)
            return mk_int(num_i(&v));
        return mk_float(rint(x * sc) / sc);
    }
    if (meth.u.s.n == 5 && memcmp(meth.u.s.p, "floor", 5) == 0)
        return mk_float(floor(x * sc) / sc);
    if (meth.u.s.n == 4 && memcmp(meth.u.s.p, "ceil", 4) == 0)
        return mk_float(ceil(x * sc) / sc);
    RFAIL(r, a->line, "round: method must be 'common', 'ceil' or 'floor'");
}

/* "%s and %d"|format(x, y): the conversions templates use */
static jv filter_format(rctx *r, jv v, const args *a)
{
    ctx *c = &r->c;
    jv f = to_str(r, &v);
    buf b = { .max = r->max_output };
    size_t ai = 0;
    for (size_t i = 0; i < f.u.s.n; i++) {
        if (f.u.s.p[i] != '%') {
            buf_putc(c, &b, f.u.s.p[i]);
            continue;
        }
        char cv = i + 1 < f.u.s.n ? f.u.s.p[++i] : 0;
        if (cv == '%') {
            buf_putc(c, &b, '%');
            continue;
        }
        if (ai >= a->npos)
            RFAIL(r, a->line, "format: not enough arguments for format string");
        const jv *x = &a->pos[ai++];
        if (cv == 's')
            put_str(r, &b, x);
        else if (cv == 'r')
            put_repr(r, &b, x);
        else if ((cv == 'd' || cv == 'i') && is_num(x))
            buf_printf(c, &b, "%" PRId64, x->k == V_FLOAT ? (int64_t)x->u.f : num_i(x));
        else
            RFAIL(r, a->line, "format: unsupported conversion '%%%c'", cv ? cv : ' ');
    }
    if (ai < a->npos)
        RFAIL(r, a->line, "format: not all arguments converted during string formatting");
    return b.n ? buf_str(&b) : mk_str("", 0);
}

static jv apply_filter(rctx *r, int fid, const char *fname, jv v, const args *a0)
{
    ctx *c = &r->c;
    args aa = *a0;
    const args *a = &aa;
    char what[96];
    snprintf(what, sizeof(what), "filter '%s'", fname);
    aa.what = what;
    step(r, a->line);
    switch (fid) {
    case F_ABS:
        check_args(r, a, 0, NULL);
        if (v.k == V_FLOAT) return mk_float(fabs(v.u.f));
        if (v.k == V_INT || v.k == V_BOOL) {
            if (num_i(&v) == INT64_MIN) RFAIL(r, a->line, "integer overflow");
            return mk_int(num_i(&v) < 0 ? -num_i(&v) : num_i(&v));
        }
        RFAIL(r, a->line, "bad operand type for abs(): '%s'", type_name(&v));
    case F_ATTR: {
        check_args(r, a, 1, NULL);
        jv n = need_str(r, a, arg(r, a, 0, "name"), "name");
        const char *name = astrdup(c, n.u.s.p, n.u.s.n);
        if (v.k == V_DICT)
            return in_names(dict_methods, name) ? method(r, &v, name) : no_attr(r, &v, name);
        if (v.k == V_UNDEF)
            return v;
        return get_attr(r, &v, name, a->line);
    }
    case F_CAPITALIZE: check_args(r, a, 0, NULL); return change_case(r, to_str(r, &v), CASE_CAPITALIZE);
    case F_CENTER: {
        static const char *const names[] = { "width", NULL };
        check_args(r, a, 1, names);
        const jv *w = arg(r, a, 0, "width");
        int64_t width = w ? need_int(r, a, w, "width") : 80;
        jv s = to_str(r, &v);
        int64_t n = (int64_t)u8_len(s.u.s.p, s.u.s.n);
        if (width <= n)
            return s;
        if (width > 100000)
            RFAIL(r, a->line, "center: width too large");
        int64_t pad = width - n, left = pad / 2 + (pad & width & 1);
        buf b = { .max = r->max_output };
        for (int64_t i = 0; i < left; i++) buf_putc(c, &b, ' ');
        buf_put(c, &b, s.u.s.p, s.u.s.n);
        for (int64_t i = 0; i < pad - left; i++) buf_putc(c, &b, ' ');
        return buf_str(&b);
    }
    case F_COUNT: case F_LENGTH:
        check_args(r, a, 0, NULL);
        return mk_int(v_len(r, &v, a->line));
    case F_DEFAULT: {
        static const char *const names[] = { "default_value", "boolean", NULL };
        check_args(r, a, 2, names);
        const jv *d = arg(r, a, 0, "default_value"), *bo = arg(r, a, 1, "boolean");
        if (v.k == V_UNDEF || (bo != NULL && v_true(bo) && !v_true(&v)))
            return d ? *d : mk_str("", 0);
        return v;
    }
    case F_DICTSORT: {
        static const char *const names[] = { "case_sensitive", "by", "reverse", NULL };
        check_args(r, a, 3, names);
        if (v.k != V_DICT)
            RFAIL(r, a->line, "dictsort: a dict is required, not %s", type_name(&v));
        const jv *cs = arg(r, a, 0, "case_sensitive"), *by = arg(r, a, 1, "by"), *rev = arg(r, a, 2, "reverse");
        int by_value = by && by->k == V_STR && by->u.s.n == 5 && memcmp(by->u.s.p, "value", 5) == 0;
        jlist *items = list_new(c, v.u.d->n + 1);
        for (size_t i = 0; i < v.u.d->n; i++) {
            jlist *t = list_new(c, 2);
            t->tuple = 1;
            list_push(c, t, v.u.d->key[i]);
            list_push(c, t, v.u.d->val[i]);
            list_push(c, items, mk_list(t));
        }
        jv path = mk_cstr(by_value ? "1" : "0");
        return sorted(r, items, rev && v_true(rev), cs && v_true(cs), &path, a->line);
    }
    case F_ESCAPE: check_args(r, a, 0, NULL); return html_escape(r, to_str(r, &v));
    case F_FIRST: {
        check_args(r, a, 0, NULL);
        if (v.k == V_UNDEF)
            return v;
        jlist *l = v_iter(r, &v, a->line);
        return l->n ? l->v[0] : mk_undef("No first item, sequence was empty.");
    }
    case F_LAST: {
        check_args(r, a, 0, NULL);
        if (v.k == V_UNDEF)
            return v;
        jlist *l = v_iter(r, &v, a->line);
        return l->n ? l->v[l->n - 1] : mk_undef("No last item, sequence was empty.");
    }
    case F_FLOAT: {
        static const char *const names[] = { "default", NULL };
        check_args(r, a, 1, names);
        const jv *d = arg(r, a, 0, "default");
        jv def = d ? *d : mk_float(0.0);
        if (v.k == V_FLOAT) return v;
        if (v.k == V_INT || v.k == V_BOOL) return mk_float((double)num_i(&v));
        if (v.k == V_STR) {
            jv t = strip(r, v, NULL, 3, a->line);
            char *s = astrdup(c, t.u.s.p, t.u.s.n), *end;
            double f = strtod(s, &end);
            if (t.u.s.n > 0 && *end == '\0' && !(s[0] == '0' && (s[1] == 'x' || s[1] == 'X')))
                return mk_float(f);
        }
        return def;
    }
    case F_FORMAT: return filter_format(r, v, a);
    case F_INDENT: return filter_indent(r, v, a);
    case F_INT: {
        static const char *const names[] = { "default", "base", NULL };
        check_args(r, a, 2, names);
        const jv *d = arg(r, a, 0, "default"), *bs = arg(r, a, 1, "base");
        jv def = d ? *d : mk_int(0);
        int64_t base = bs ? need_int(r, a, bs, "base") : 10;
        if (base < 2 || base > 36)
            RFAIL(r, a->line, "int: base must be in 2..36");
        return python_int(r, &v, &def, base, a->line);
    }
    case F_ITEMS: {
        check_args(r, a, 0, NULL);
        jlist *items = list_new(c, 4);
        if (v.k == V_UNDEF)
            return mk_list(items);
        if (v.k != V_DICT)
            RFAIL(r, a->line, "items: can only get item pairs from a mapping, not %s", type_name(&v));
        for (size_t i = 0; i < v.u.d->n; i++) {
            jlist *t = list_new(c, 2);
            t->tuple = 1;
            list_push(c, t, v.u.d->key[i]);
            list_push(c, t, v.u.d->val[i]);
            list_push(c, items, mk_list(t));
        }
        return mk_list(items);
    }
    case F_JOIN: {
        static const char *const names[] = { "d", "attribute", NULL };
        check_args(r, a, 2, names);
        const jv *d = arg(r, a, 0, "d"), *at = arg(r, a, 1, "attribute");
        jv sep = d ? to_str(r, d) : mk_str("", 0);
        jlist *l = v_iter(r, &v, a->line);
        buf b = { .max = r->max_output };
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                buf_put(c, &b, sep.u.s.p, sep.u.s.n);
            jv x = at && at->k == V_STR ? attr_path(r, l->v[i], *at, a->line) : l->v[i];
            put_str(r, &b, &x);
        }
        return b.n ? buf_str(&b) : mk_str("", 0);
    }
    case F_LIST: {
        check_args(r, a, 0, NULL);
        jlist *src = v_iter(r, &v, a->line), *l = list_new(c, src->n + 1);
        for (size_t i = 0; i < src->n; i++)
            list_push(c, l, src->v[i]);
        return mk_list(l);
    }
    case F_LOWER: check_args(r, a, 0, NULL); return change_case(r, to_str(r, &v), CASE_LOWER);
    case F_UPPER: check_args(r, a, 0, NULL); return change_case(r, to_str(r, &v), CASE_UPPER);
    case F_MAP: return filter_map(r, v, a);
    case F_MAX: case F_MIN: {
        static const char *const names[] = { "case_sensitive", "attribute", NULL };
        check_args(r, a, 2, names);
        const jv *cs = arg(r, a, 0, "case_sensitive"), *at = arg(r, a, 1, "attribute");
        jlist *l = v_iter(r, &v, a->line);
        if (l->n == 0)
            return mk_undef(fid == F_MAX ? "No aggregated item, sequence was empty." : "No aggregated item, sequence was empty.");
        jv s = sorted(r, l, fid == F_MAX, cs && v_true(cs), at, a->line);
        return s.u.l->v[0];
    }
    case F_REJECT: return filter_select(r, v, a, 0, 0);
    case F_SELECT: return filter_select(r, v, a, 1, 0);
    case F_REJECTATTR: return filter_select(r, v, a, 0, 1);
    case F_SELECTATTR: return filter_select(r, v, a, 1, 1);
    case F_REPLACE: {
        static const char *const names[] = { "old", "new", "count", NULL };
        check_args(r, a, 3, names);
        jv old = need_str(r, a, arg(r, a, 0, "old"), "old");
        jv new = need_str(r, a, arg(r, a, 1, "new"), "new");
        const jv *cn = arg(r, a, 2, "count");
        int64_t count = cn && cn->k != V_NONE ? need_int(r, a, cn, "count") : -1;
        return str_replace(r, to_str(r, &v), old, new, count);
    }
    case F_REVERSE: {
        check_args(r, a, 0, NULL);
        if (v.k == V_STR) {
            jlist *chars = v_iter(r, &v, a->line);
            buf b = { .max = SIZE_MAX };
            for (size_t i = chars->n; i > 0; i--)
                buf_put(c, &b, chars->v[i - 1].u.s.p, chars->v[i - 1].u.s.n);
            return b.n ? buf_str(&b) : mk_str("", 0);
        }
        jlist *src = v_iter(r, &v, a->line), *l = list_new(c, src->n + 1);
        for (size_t i = src->n; i > 0; i--)
            list_push(c, l, src->v[i - 1]);
        return mk_list(l);
    }
    case F_ROUND: return filter_round(r, v, a);
    case F_SAFE: case F_STRING: check_args(r, a, 0, NULL); return to_str(r, &v);
    case F_SORT: {
        static const char *const names[] = { "reverse", "case_sensitive", "attribute", NULL };
        check_args(r, a, 3, names);
        const jv *rv = arg(r, a, 0, "reverse"), *cs = arg(r, a, 1, "case_sensitive"), *at = arg(r, a, 2, "attribute");
        return sorted(r, v_iter(r, &v, a->line), rv && v_true(rv), cs && v_true(cs), at, a->line);
    }
    case F_STRIPTAGS: {
        check_args(r, a, 0, NULL);
        jv s = to_str(r, &v);
        buf b = { .max = SIZE_MAX };
        int in_tag = 0;
        for (size_t i = 0; i < s.u.s.n; i++) {
            if (s.u.s.p[i] == '<') in_tag = 1;
            else if (s.u.s.p[i] == '>' && in_tag) in_tag = 0;
            else if (!in_tag) buf_putc(c, &b, s.u.s.p[i]);
        }
        jv t = b.n ? buf_str(&b) : mk_str("", 0);
        jv words = str_split(r, t, NULL, -1, a->line);
        args ja = { .pos = (jv[]){ mk_cstr(" ") }, .npos = 1, .line = a->line };
        return apply_filter(r, F_JOIN, "join", words, &ja);
    }
    case F_SUM: {
        static const char *const names[] = { "attribute", "start", NULL };
        check_args(r, a, 2, names);
        const jv *at = arg(r, a, 0, "attribute"), *st = arg(r, a, 1, "start");
        jv acc = st ? *st : mk_int(0);
        jlist *l = v_iter(r, &v, a->line);
        for (size_t i = 0; i < l->n; i++) {
            jv x = at && at->k == V_STR ? attr_path(r, l->v[i], *at, a->line) : l->v[i];
            acc = arith(r, '+', &acc, &x, a->line);
        }
        return acc;
    }
    case F_TITLE: check_args(r, a, 0, NULL); return title_filter(r, to_str(r, &v));
    case F_TOJSON: return filter_tojson(r, v, a);
    case F_TRIM: {
        static const char *const names[] = { "chars", NULL };
        check_args(r, a, 1, names);
        return strip(r, to_str(r, &v), arg(r, a, 0, "chars"), 3, a->line);
    }
    case F_UNIQUE: {
        static const char *const names[] = { "case_sensitive", "attribute", NULL };
        check_args(r, a, 2, names);
        const jv *cs = arg(r, a, 0, "case_sensitive"), *at = arg(r, a, 1, "attribute");
        jlist *src = v_iter(r, &v, a->line), *l = list_new(c, src->n + 1), *seen = list_new(c, src->n + 1);
        for (size_t i = 0; i < src->n; i++) {
            jv k = at && at->k == V_STR ? attr_path(r, src->v[i], *at, a->line) : src->v[i];
            if (!(cs && v_true(cs)) && k.k == V_STR)
                k = change_case(r, k, CASE_LOWER);
            jv sv = mk_list(seen);
            if (!v_in(r, &k, &sv, a->line)) {
                list_push(c, seen, k);
                list_push(c, l, src->v[i]);
            }
            step(r, a->line);
        }
        return mk_list(l);
    }
    case F_WORDCOUNT: {
        check_args(r, a, 0, NULL);
        jv s = to_str(r, &v);
        int64_t n = 0;
        int in_word = 0;
        for (size_t i = 0; i < s.u.s.n;) {
            int32_t cp = u8_next(s.u.s.p, s.u.s.n, &i);
            utf8proc_category_t k = utf8proc_category(cp);
            int w = cp == '_' || (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
                    (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
            if (w && !in_word)
                n++;
            in_word = w;
        }
        return mk_int(n);
    }
    }
    RFAIL(r, a->line, "filter '%s' is not implemented", fname);
}

/* ------------------------------------------------------------------------------------------ */
/* Tests                                                                                      */

static int apply_test(rctx *r, int tid, const char *tname, const jv *v, const args *a0)
{
    args aa = *a0;
    const args *a = &aa;
    char what[96];
    snprintf(what, sizeof(what), "test '%s'", tname);
    aa.what = what;
    const jv *x = a->npos ? &a->pos[0] : NULL;
    switch (tid) {
    case X_DEFINED: return v->k != V_UNDEF;
    case X_UNDEFINED: return v->k == V_UNDEF;
    case X_NONE: return v->k == V_NONE;
    case X_BOOLEAN: return v->k == V_BOOL;
    case X_TRUE: return v->k == V_BOOL && v->u.b;
    case X_FALSE: return v->k == V_BOOL && !v->u.b;
    case X_INTEGER: return v->k == V_INT;
    case X_FLOAT: return v->k == V_FLOAT;
    case X_NUMBER: return is_num(v);
    case X_STRING: return v->k == V_STR;
    case X_MAPPING: return v->k == V_DICT;
    case X_ITERABLE: return v->k == V_STR || v->k == V_LIST || v->k == V_DICT || v->k == V_UNDEF;
    case X_SEQUENCE: return v->k == V_STR || v->k == V_LIST || v->k == V_DICT;
    case X_CALLABLE: return v->k == V_FUNC || v->k == V_METHOD || v->k == V_MACRO;
    case X_ESCAPED: return 0;
    case X_LOWER: { jv s = to_str(r, v); jv l = change_case(r, s, CASE_LOWER); return v_eq(&s, &l); }
    case X_UPPER: { jv s = to_str(r, v); jv u = change_case(r, s, CASE_UPPER); return v_eq(&s, &u); }
    case X_ODD: case X_EVEN: {
        if (v->k == V_UNDEF)
            undef_fail(r, v, a->line);
        if (v->k != V_INT && v->k != V_BOOL)
            RFAIL(r, a->line, "test '%s' needs an integer, not %s", tname, type_name(v));
        int64_t m = num_i(v) % 2;
        return tid == X_ODD ? m != 0 : m == 0;
    }
    case X_DIVISIBLEBY: {
        if (x == NULL)
            RFAIL(r, a->line, "test 'divisibleby' needs an argument");
        jv m = arith(r, '%', v, x, a->line);
        return !v_true(&m);
    }
    }
    if (x == NULL)
        RFAIL(r, a->line, "test '%s' needs an argument", tname);
    switch (tid) {
    case X_EQ: return v_eq(v, x);
    case X_NE: return !v_eq(v, x);
    case X_LT: return cmp_values(r, v, x, a->line) < 0;
    case X_LE: return cmp_values(r, v, x, a->line) <= 0;
    case X_GT: return cmp_values(r, v, x, a->line) > 0;
    case X_GE: return cmp_values(r, v, x, a->line) >= 0;
    case X_IN: return v_in(r, v, x, a->line);
    case X_SAMEAS:
        if (v->k != x->k) return 0;
        if (v->k == V_NONE || v->k == V_UNDEF) return 1;
        if (v->k == V_BOOL) return v->u.b == x->u.b;
        if (v->k == V_LIST) return v->u.l == x->u.l;
        if (v->k == V_DICT || v->k == V_NS) return v->u.d == x->u.d;
        return v_eq(v, x) && v->k == V_INT && v->u.i >= -5 && v->u.i <= 256;
    }
    RFAIL(r, a->line, "test '%s' is not implemented", tname);
}

/* ------------------------------------------------------------------------------------------ */
/* Methods of str, dict, list and loop                                                        */

static jv call_method(rctx *r, const jv *self, const char *name, const args *a0)
{
    ctx *c = &r->c;
    args aa = *a0;
    const args *a = &aa;
    char what[96];
    snprintf(what, sizeof(what), "%s.%s()", type_name(self), name);
    aa.what = what;
    step(r, a->line);
    if (self->k == V_STR) {
        jv s = *self;
        if (strcmp(name, "strip") == 0 || strcmp(name, "lstrip") == 0 || strcmp(name, "rstrip") == 0) {
            check_args(r, a, 1, NULL);
            return strip(r, s, a->npos ? &a->pos[0] : NULL, name[0] == 'l' ? 1 : name[0] == 'r' ? 2 : 3, a->line);
        }
        if (strcmp(name, "startswith") == 0 || strcmp(name, "endswith") == 0) {
            check_args(r, a, 1, NULL);
            if (a->npos != 1)
                RFAIL(r, a->line, "%s takes exactly one argument", what);
            const jv *x = &a->pos[0];
            jlist one = { .v = (jv *)x, .n = 1 };
            const jlist *cands = x->k == V_LIST && x->u.l->tuple ? x->u.l : &one;
            for (size_t i = 0; i < cands->n; i++) {
                jv p = cands->v[i];
                if (p.k != V_STR)
                    RFAIL(r, a->line, "%s first arg must be str or a tuple of str, not %s", what, type_name(&p));
                if (p.u.s.n <= s.u.s.n &&
                    memcmp(name[0] == 's' ? s.u.s.p : s.u.s.p + s.u.s.n - p.u.s.n, p.u.s.p, p.u.s.n) == 0)
                    return mk_bool(1);
            }
            return mk_bool(0);
        }
        if (strcmp(name, "split") == 0 || strcmp(name, "rsplit") == 0) {
            static const char *const names[] = { "sep", "maxsplit", NULL };
            check_args(r, a, 2, names);
            const jv *sep = arg(r, a, 0, "sep"), *ms = arg(r, a, 1, "maxsplit");
            int64_t maxsplit = ms ? need_int(r, a, ms, "maxsplit") : -1;
            if (name[0] == 'r' && maxsplit >= 0)
                RFAIL(r, a->line, "rsplit with maxsplit is not supported");
            return str_split(r, s, sep, maxsplit, a->line);
        }
        if (strcmp(name, "upper") == 0) { check_args(r, a, 0, NULL); return change_case(r, s, CASE_UPPER); }
        if (strcmp(name, "lower") == 0 || strcmp(name, "casefold") == 0) { check_args(r, a, 0, NULL); return change_case(r, s, CASE_LOWER); }
        if (strcmp(name, "title") == 0) { check_args(r, a, 0, NULL); return change_case(r, s, CASE_TITLE_PY); }
        if (strcmp(name, "capitalize") == 0) { check_args(r, a, 0, NULL); return change_case(r, s, CASE_CAPITALIZE); }
        if (strcmp(name, "swapcase") == 0) { check_args(r, a, 0, NULL); return change_case(r, s, CASE_SWAP); }
        if (strcmp(name, "replace") == 0) {
            check_args(r, a, 3, NULL);
            if (a->npos < 2)
                RFAIL(r, a->line, "%s takes at least 2 arguments", what);
            jv old = need_str(r, a, &a->pos[0], "old"), new = need_str(r, a, &a->pos[1], "new");
            int64_t count = a->npos > 2 ? need_int(r, a, &a->pos[2], "count") : -1;
            return str_replace(r, s, old, new, count);
        }
        if (strcmp(name, "find") == 0 || strcmp(name, "rfind") == 0 || strcmp(name, "count") == 0) {
            check_args(r, a, 1, NULL);
            jv sub = need_str(r, a, a->npos ? &a->pos[0] : NULL, "sub");
            if (name[0] == 'c')
                return mk_int(str_count(s, sub));
            return mk_int(str_find(s, sub, name[0] == 'r'));
        }
        if (strcmp(name, "join") == 0) {
            check_args(r, a, 1, NULL);
            if (a->npos != 1)
                RFAIL(r, a->line, "%s takes exactly one argument", what);
            jlist *l = v_iter(r, &a->pos[0], a->line);
            buf b = { .max = r->max_output };
            for (size_t i = 0; i < l->n; i++) {
                if (l->v[i].k != V_STR)
                    RFAIL(r, a->line, "sequence item %zu: expected str instance, %s found", i, type_name(&l->v[i]));
                if (i)
                    buf_put(c, &b, s.u.s.p, s.u.s.n);
                buf_put(c, &b, l->v[i].u.s.p, l->v[i].u.s.n);
            }
            return b.n ? buf_str(&b) : mk_str("", 0);
        }
        if (strcmp(name, "splitlines") == 0) { check_args(r, a, 0, NULL); return mk_list(splitlines(r, s)); }
        if (strcmp(name, "isdigit") == 0) return mk_bool(all_chars(s, 'd'));
        if (strcmp(name, "isalpha") == 0) return mk_bool(all_chars(s, 'a'));
        if (strcmp(name, "isalnum") == 0) return mk_bool(all_chars(s, 'n'));
        if (strcmp(name, "isspace") == 0) return mk_bool(all_chars(s, 's'));
        if (strcmp(name, "isupper") == 0) return mk_bool(all_chars(s, 'u'));
        if (strcmp(name, "islower") == 0) return mk_bool(all_chars(s, 'l'));
    } else if (self->k == V_DICT) {
        jdict *d = self->u.d;
        if (strcmp(name, "get") == 0) {
            check_args(r, a, 2, NULL);
            if (a->npos < 1)
                RFAIL(r, a->line, "%s takes at least one argument", what);
            jv *v = dict_find(d, &a->pos[0]);
            return v ? *v : a->npos > 1 ? a->pos[1] : NONE;
        }
        check_args(r, a, 0, NULL);
        jlist *l = list_new(c, d->n + 1);
        for (size_t i = 0; i < d->n; i++) {
            if (name[0] == 'k') {
                list_push(c, l, d->key[i]);
            } else if (name[0] == 'v') {
                list_push(c, l, d->val[i]);
            } else {
                jlist *t = list_new(c, 2);
                t->tuple = 1;
                list_push(c, t, d->key[i]);
                list_push(c, t, d->val[i]);
                list_push(c, l, mk_list(t));
            }
        }
        return mk_list(l);
    } else if (self->k == V_LIST) {
        check_args(r, a, 1, NULL);
        if (a->npos != 1)
            RFAIL(r, a->line, "%s takes exactly one argument", what);
        int64_t k = 0;
        for (size_t i = 0; i < self->u.l->n; i++)
            if (v_eq(&self->u.l->v[i], &a->pos[0])) {
                if (name[0] == 'i')
                    return mk_int((int64_t)i);
                k++;
            }
        if (name[0] == 'i')
            RFAIL(r, a->line, "list.index(x): x not in list");
        return mk_int(k);
    } else if (self->k == V_LOOP && strcmp(name, "cycle") == 0) {
        if (a->npos == 0)
            RFAIL(r, a->line, "no items for cycling given");
        return a->pos[self->u.loop->i % a->npos];
    }
    RFAIL(r, a->line, "%s is not supported", what);
}

/* ------------------------------------------------------------------------------------------ */
/* Evaluation                                                                                 */

static jv lookup(rctx *r, frame *f, const char *name)
{
    size_t n = strlen(name);
    for (; f != NULL; f = f->parent) {
        jv *v = dict_find_str(f->vars, name, n);
        if (v != NULL)
            return *v;
    }
    char tmp[128];
    snprintf(tmp, sizeof(tmp), "'%s' is undefined", name);
    return mk_undef(astrdup(&r->c, tmp, strlen(tmp)));
}

static frame *frame_new(rctx *r, frame *parent)
{
    frame *f = aalloc(&r->c, sizeof(frame));
    f->vars = dict_new(&r->c, 4);
    f->parent = parent;
    return f;
}

static void frame_set(rctx *r, frame *f, const char *name, jv v)
{
    dict_set(&r->c, f->vars, mk_cstr(name), v);
}

static jv eval(rctx *r, frame *f, const node *x);
static int exec_body(rctx *r, frame *f, const nodes *body, buf *out);

static void eval_args(rctx *r, frame *f, const node *x, args *a, const char *what)
{
    a->npos = x->args.n;
    a->pos = aalloc(&r->c, (a->npos + 1) * sizeof(jv));
    for (size_t i = 0; i < a->npos; i++)
        a->pos[i] = eval(r, f, x->args.v[i]);
    a->nkw = x->nkw;
    a->kw = x->kw;
    a->kwv = aalloc(&r->c, (a->nkw + 1) * sizeof(jv));
    for (size_t i = 0; i < a->nkw; i++)
        a->kwv[i] = eval(r, f, x->kwv.v[i]);
    a->what = what;
    a->line = x->line;
}

static jv call_macro(rctx *r, const node *m, const args *a)
{
    frame *f = frame_new(r, r->root);
    if (a->npos > m->nkw)
        RFAIL(r, a->line, "macro '%s' takes not more than %zu argument(s)", m->name, m->nkw);
    for (size_t k = 0; k < a->nkw; k++) {
        int ok = 0;
        for (size_t i = 0; i < m->nkw; i++)
            if (strcmp(m->kw[i], a->kw[k]) == 0) {
                if (i < a->npos)
                    RFAIL(r, a->line, "macro '%s' got multiple values for argument '%s'", m->name, a->kw[k]);
                ok = 1;
            }
        if (!ok)
            RFAIL(r, a->line, "macro '%s' has no argument '%s'", m->name, a->kw[k]);
    }
    for (size_t i = 0; i < m->nkw; i++) {
        jv v;
        const jv *given = i < a->npos ? &a->pos[i] : NULL;
        for (size_t k = 0; k < a->nkw; k++)
            if (strcmp(m->kw[i], a->kw[k]) == 0)
                given = &a->kwv[k];
        if (given != NULL) {
            v = *given;
        } else if (m->kwv.v[i] != NULL) {
            v = eval(r, f, m->kwv.v[i]);
        } else {
            char tmp[160];
            snprintf(tmp, sizeof(tmp), "parameter '%s' was not provided", m->kw[i]);
            v = mk_undef(astrdup(&r->c, tmp, strlen(tmp)));
        }
        frame_set(r, f, m->kw[i], v);
    }
    buf b = { .max = r->max_output };
    exec_body(r, f, &m->body, &b);
    return b.n ? buf_str(&b) : mk_str("", 0);
}

static jv call_global(rctx *r, int fn, const args *a)
{
    ctx *c = &r->c;
    switch (fn) {
    case FN_RANGE: {
        check_args(r, a, 3, NULL);
        if (a->npos == 0)
            RFAIL(r, a->line, "range expected at least 1 argument, got 0");
        int64_t lo = 0, hi, st = 1;
        if (a->npos == 1) {
            hi = need_int(r, a, &a->pos[0], "stop");
        } else {
            lo = need_int(r, a, &a->pos[0], "start");
            hi = need_int(r, a, &a->pos[1], "stop");
            if (a->npos > 2)
                st = need_int(r, a, &a->pos[2], "step");
        }
        if (st == 0)
            RFAIL(r, a->line, "range() arg 3 must not be zero");
        int64_t n = 0;
        if (st > 0 && lo < hi)
            n = (int64_t)(((__int128)hi - lo - 1) / st + 1);
        else if (st < 0 && lo > hi)
            n = (int64_t)(((__int128)lo - hi - 1) / -st + 1);
        if (n > 100000)
            RFAIL(r, a->line, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        jlist *l = list_new(c, (size_t)n + 1);
        for (int64_t i = 0; i < n; i++)
            list_push(c, l, mk_int((int64_t)((__int128)lo + (__int128)i * st)));
        return mk_list(l);
    }
    case FN_NAMESPACE: case FN_DICT: {
        jdict *d = dict_new(c, a->nkw + 4);
        if (a->npos > 1)
            RFAIL(r, a->line, "%s expected at most 1 positional argument", fn == FN_DICT ? "dict()" : "namespace()");
        if (a->npos == 1) {
            if (a->pos[0].k != V_DICT)
                RFAIL(r, a->line, "%s: the positional argument must be a dict", fn == FN_DICT ? "dict()" : "namespace()");
            for (size_t i = 0; i < a->pos[0].u.d->n; i++)
                dict_set(c, d, a->pos[0].u.d->key[i], a->pos[0].u.d->val[i]);
        }
        for (size_t k = 0; k < a->nkw; k++)
            dict_set(c, d, mk_cstr(a->kw[k]), a->kwv[k]);
        jv v = mk_dict(d);
        if (fn == FN_NAMESPACE)
            v.k = V_NS;
        return v;
    }
    case FN_RAISE: {
        jv m = a->npos ? to_str(r, &a->pos[0]) : mk_str("", 0);
        ctx_fail(c, YM_EINVAL, 1, a->line, "%.*s", (int)(m.u.s.n < 500 ? m.u.s.n : 500), m.u.s.p);
    }
    case FN_STRFTIME: {
        check_args(r, a, 1, NULL);
        jv fmt = need_str(r, a, a->npos ? &a->pos[0] : NULL, "format");
        if (memchr(fmt.u.s.p, '\0', fmt.u.s.n) != NULL || fmt.u.s.n > 256)
            RFAIL(r, a->line, "strftime_now: bad format");
        char *cf = astrdup(c, fmt.u.s.p, fmt.u.s.n);
        struct tm tm;
        time_t t = r->now ? (time_t)r->now : time(NULL);
        if (r->now)
            gmtime_r(&t, &tm);
        else
            localtime_r(&t, &tm);
        char out[1024];
        size_t n = fmt.u.s.n ? strftime(out, sizeof(out), cf, &tm) : 0;
        return mk_str(astrdup(c, out, n), n);
    }
    }
    RFAIL(r, a->line, "unknown function");
}

static jv eval_call(rctx *r, frame *f, const node *x)
{
    jv fn = eval(r, f, x->a);
    args a;
    eval_args(r, f, x, &a, "call");
    step(r, x->line);
    switch (fn.k) {
    case V_FUNC: {
        static const char *const names[] = { "range()", "namespace()", "raise_exception()",
                                             "strftime_now()", "dict()" };
        a.what = names[fn.u.fn];
        return call_global(r, fn.u.fn, &a);
    }
    case V_METHOD: return call_method(r, fn.u.m.self, fn.u.m.name, &a);
    case V_MACRO: {
        /* Jinja2 stops runaway recursion with Python's recursion limit; so do we, well
         * before the C stack would */
        if (++r->call_depth > 100)
            RFAIL(r, x->line, "macro '%s': maximum recursion depth exceeded", fn.u.macro->name);
        jv v = call_macro(r, fn.u.macro, &a);
        r->call_depth--;
        return v;
    }
    case V_UNDEF: undef_fail(r, &fn, x->line);
    default: RFAIL(r, x->line, "'%s' object is not callable", type_name(&fn));
    }
}

static jv eval(rctx *r, frame *f, const node *x)
{
    step(r, x->line);
    switch (x->k) {
    case E_CONST: return x->val;
    case E_NAME: return lookup(r, f, x->name);
    case E_ATTR: {
        jv o = eval(r, f, x->a);
        return get_attr(r, &o, x->name, x->line);
    }
    case E_ITEM: {
        jv o = eval(r, f, x->a), k = eval(r, f, x->b);
        return get_item(r, &o, &k, x->line);
    }
    case E_SLICE: {
        jv o = eval(r, f, x->a);
        jv a = x->b ? eval(r, f, x->b) : NONE, b = x->c ? eval(r, f, x->c) : NONE,
           s = x->d ? eval(r, f, x->d) : NONE;
        return get_slice(r, &o, &a, &b, &s, x->line);
    }
    case E_CALL: return eval_call(r, f, x);
    case E_FILTER: {
        jv v = eval(r, f, x->a);
        args a;
        eval_args(r, f, x, &a, x->name);
        return apply_filter(r, x->fid, x->name, v, &a);
    }
    case E_TEST: {
        jv v = eval(r, f, x->a);
        args a;
        eval_args(r, f, x, &a, x->name);
        int t = apply_test(r, x->fid, x->name, &v, &a);
        return mk_bool(x->op ? !t : t);
    }
    case E_BIN: {
        jv a = eval(r, f, x->a), b = eval(r, f, x->b);
        return arith(r, x->op, &a, &b, x->line);
    }
    case E_NEG: case E_POS: {
        jv a = eval(r, f, x->a);
        if (a.k == V_UNDEF)
            undef_fail(r, &a, x->line);
        if (!is_num(&a))
            RFAIL(r, x->line, "bad operand type for unary %c: '%s'", x->k == E_NEG ? '-' : '+', type_name(&a));
        if (x->k == E_POS)
            return a.k == V_BOOL ? mk_int(a.u.b) : a;
        if (a.k == V_FLOAT)
            return mk_float(-a.u.f);
        if (num_i(&a) == INT64_MIN)
            RFAIL(r, x->line, "integer overflow");
        return mk_int(-num_i(&a));
    }
    case E_NOT: {
        jv a = eval(r, f, x->a);
        return mk_bool(!v_true(&a));
    }
    case E_AND: {
        jv a = eval(r, f, x->a);
        return v_true(&a) ? eval(r, f, x->b) : a;
    }
    case E_OR: {
        jv a = eval(r, f, x->a);
        return v_true(&a) ? a : eval(r, f, x->b);
    }
    case E_COND: {
        jv t = eval(r, f, x->b);
        if (v_true(&t))
            return eval(r, f, x->a);
        return x->c ? eval(r, f, x->c) : mk_undef("the inline if expression evaluated to false and no else section was defined");
    }
    case E_LIST: case E_TUPLE: {
        jlist *l = list_new(&r->c, x->args.n + 1);
        l->tuple = x->k == E_TUPLE;
        for (size_t i = 0; i < x->args.n; i++)
            list_push(&r->c, l, eval(r, f, x->args.v[i]));
        return mk_list(l);
    }
    case E_DICT: {
        jdict *d = dict_new(&r->c, x->args.n + 1);
        for (size_t i = 0; i < x->args.n; i++) {
            jv k = eval(r, f, x->args.v[i]);
            if (k.k == V_LIST && !k.u.l->tuple)
                RFAIL(r, x->line, "unhashable type: 'list'");
            if (k.k == V_DICT || k.k == V_NS)
                RFAIL(r, x->line, "unhashable type: 'dict'");
            dict_set(&r->c, d, k, eval(r, f, x->kwv.v[i]));
        }
        return mk_dict(d);
    }
    case E_CONCAT: {
        buf b = { .max = r->max_output };
        for (size_t i = 0; i < x->args.n; i++) {
            jv v = eval(r, f, x->args.v[i]);
            put_str(r, &b, &v);
        }
        return b.n ? buf_str(&b) : mk_str("", 0);
    }
    case E_CMP: {
        jv left = eval(r, f, x->a);
        for (size_t i = 0; i < x->args.n; i++) {
            jv right = eval(r, f, x->args.v[i]);
            int ok;
            switch (x->ops[i]) {
            case CMP_EQ: ok = v_eq(&left, &right); break;
            case CMP_NE: ok = !v_eq(&left, &right); break;
            case CMP_LT: ok = cmp_values(r, &left, &right, x->line) < 0; break;
            case CMP_LE: ok = cmp_values(r, &left, &right, x->line) <= 0; break;
            case CMP_GT: ok = cmp_values(r, &left, &right, x->line) > 0; break;
            case CMP_GE: ok = cmp_values(r, &left, &right, x->line) >= 0; break;
            case CMP_IN: ok = v_in(r, &left, &right, x->line); break;
            default: ok = !v_in(r, &left, &right, x->line); break;
            }
            if (!ok)
                return mk_bool(0);
            left = right;
        }
        return mk_bool(1);
    }
    }
    RFAIL(r, x->line, "cannot evaluate this node");
}

/* ------------------------------------------------------------------------------------------ */
/* Statements                                                                                 */

enum { FLOW_NEXT, FLOW_BREAK, FLOW_CONTINUE };

static void assign_targets(rctx *r, frame *f, const node *x, jv v)
{
    if (!x->op) {
        frame_set(r, f, x->kw[0], v);
        return;
    }
    jlist *items = v.k == V_LIST ? v.u.l : v.k == V_STR ? v_iter(r, &v, x->line) : NULL;
    if (items == NULL)
        RFAIL(r, x->line, "cannot unpack non-iterable %s object", type_name(&v));
    if (items->n != x->nkw)
        RFAIL(r, x->line, items->n > x->nkw ? "too many values to unpack (expected %zu)"
                                            : "not enough values to unpack (expected %zu)", x->nkw);
    for (size_t i = 0; i < x->nkw; i++)
        frame_set(r, f, x->kw[i], items->v[i]);
}

static int exec_for(rctx *r, frame *f, const node *x, buf *out)
{
    ctx *c = &r->c;
    jv it = eval(r, f, x->a);
    jlist *src = v_iter(r, &it, x->line);
    jlist *items = src;
    if (x->b != NULL) {
        items = list_new(c, src->n + 1);
        for (size_t i = 0; i < src->n; i++) {
            frame *ff = frame_new(r, f);
            assign_targets(r, ff, x, src->v[i]);
            jv ok = eval(r, ff, x->b);
            if (v_true(&ok))
                list_push(c, items, src->v[i]);
        }
    }
    loopv *lp = aalloc(c, sizeof(loopv));
    lp->items = items;
    lp->depth = 1;
    jv lv = { .k = V_LOOP };
    lv.u.loop = lp;
    for (size_t i = 0; i < items->n; i++) {
        step(r, x->line);
        lp->i = i;
        frame *ff = frame_new(r, f);
        frame_set(r, ff, "loop", lv);
        assign_targets(r, ff, x, items->v[i]);
        int flow = exec_body(r, ff, &x->body, out);
        if (flow == FLOW_BREAK)
            break;
    }
    if (items->n == 0 && x->els.n > 0)
        return exec_body(r, f, &x->els, out);
    return FLOW_NEXT;
}

static int exec_body(rctx *r, frame *f, const nodes *body, buf *out)
{
    for (size_t i = 0; i < body->n; i++) {
        const node *x = body->v[i];
        step(r, x->line);
        switch (x->k) {
        case S_TEXT:
            buf_put(&r->c, out, x->val.u.s.p, x->val.u.s.n);
            break;
        case S_OUT: {
            jv v = eval(r, f, x->a);
            put_str(r, out, &v);
            break;
        }
        case S_IF: {
            const nodes *chosen = &x->els;
            for (size_t k = 0; k < x->args.n; k++) {
                jv t = eval(r, f, x->args.v[k]);
                if (v_true(&t)) {
                    chosen = &x->bodies[k];
                    break;
                }
            }
            int flow = exec_body(r, f, chosen, out);
            if (flow != FLOW_NEXT)
                return flow;
            break;
        }
        case S_FOR:
            exec_for(r, f, x, out);
            break;
        case S_SET:
            if (x->name2 != NULL) {
                jv ns = lookup(r, f, x->name);
                if (ns.k != V_NS)
                    RFAIL(r, x->line, "cannot assign attribute on non-namespace object");
                dict_set(&r->c, ns.u.d, mk_cstr(x->name2), eval(r, f, x->a));
            } else {
                assign_targets(r, f, x, eval(r, f, x->a));
            }
            break;
        case S_SETBLOCK: {
            buf b = { .max = r->max_output };
            exec_body(r, f, &x->body, &b);
            jv v = b.n ? buf_str(&b) : mk_str("", 0);
            /* the filters, innermost first */
            const node *chain[64];
            size_t nc = 0;
            for (const node *fl = x->b; fl != NULL && nc < 64; fl = fl->a)
                chain[nc++] = fl;
            for (size_t k = nc; k > 0; k--) {
                args a;
                eval_args(r, f, chain[k - 1], &a, chain[k - 1]->name);
                v = apply_filter(r, chain[k - 1]->fid, chain[k - 1]->name, v, &a);
            }
            frame_set(r, f, x->kw[0], v);
            break;
        }
        case S_MACRO: {
            jv m = { .k = V_MACRO };
            m.u.macro = (node *)x;
            frame_set(r, f, x->name, m);
            break;
        }
        case S_GEN: { /* a call block in transformers: its own scope, as a macro body */
            int flow = exec_body(r, frame_new(r, f), &x->body, out);
            if (flow != FLOW_NEXT)
                return flow;
            break;
        }
        case S_BREAK: return FLOW_BREAK;
        case S_CONTINUE: return FLOW_CONTINUE;
        default: RFAIL(r, x->line, "cannot run this statement");
        }
    }
    return FLOW_NEXT;
}

/* ------------------------------------------------------------------------------------------ */
/* Entry                                                                                      */

static jv from_json(rctx *r, const json_t *j, int depth)
{
    ctx *c = &r->c;
    if (depth > 512)
        FAIL(c, 0, "variables nested too deeply");
    switch (json_typeof(j)) {
    case JSON_NULL: return NONE;
    case JSON_TRUE: return mk_bool(1);
    case JSON_FALSE: return mk_bool(0);
    case JSON_INTEGER: return mk_int((int64_t)json_integer_value(j));
    case JSON_REAL: return mk_float(json_real_value(j));
    case JSON_STRING: return mk_str(json_string_value(j), json_string_length(j));
    case JSON_ARRAY: {
        jlist *l = list_new(c, json_array_size(j) + 1);
        for (size_t i = 0; i < json_array_size(j); i++)
            list_push(c, l, from_json(r, json_array_get(j, i), depth + 1));
        return mk_list(l);
    }
    case JSON_OBJECT: {
        jdict *d = dict_new(c, json_object_size(j) + 1);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v)
        {
            /* a key added anew (dict_set would search; keys of a JSON object are unique) */
            if (d->n == d->cap)
                dict_set(c, d, mk_cstr(k), from_json(r, v, depth + 1));
            else {
                d->key[d->n] = mk_cstr(k);
                d->val[d->n] = from_json(r, v, depth + 1);
                d->n++;
            }
        }
        return mk_dict(d);
    }
    }
    return NONE;
}

ym_err ym_jinja_render(const ym_jinja_t *t, const json_t *vars, const ym_jinja_opts *opts,
                       char **out, size_t *out_len, ym_diag *diag)
{
    *out = NULL;
    if (out_len != NULL)
        *out_len = 0;
    if (vars != NULL && !json_is_object(vars))
        return ym_diag_set(diag, YM_EINVAL, "template variables must be a JSON object");
    ym_jinja_opts o = opts != NULL ? *opts : (ym_jinja_opts){ 0 };
    arena ar = { .limit = o.max_memory ? o.max_memory : (size_t)256 << 20 };
    jmp_buf jb;
    rctx r = { .c = { .ar = &ar, .jb = &jb, .diag = diag } };
    r.max_steps = o.max_steps ? o.max_steps : 50000000u;
    r.max_output = o.max_output ? o.max_output : (size_t)16 << 20;
    r.now = o.now;
    if (setjmp(jb) != 0) {
        arena_free(&ar);
        return r.c.err;
    }
    frame *globals = frame_new(&r, NULL);
    static const struct {
        const char *name;
        int fn;
    } fns[] = { { "range", FN_RANGE }, { "namespace", FN_NAMESPACE },
                { "raise_exception", FN_RAISE }, { "strftime_now", FN_STRFTIME }, { "dict", FN_DICT } };
    for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
        jv f = { .k = V_FUNC };
        f.u.fn = fns[i].fn;
        frame_set(&r, globals, fns[i].name, f);
    }
    if (vars != NULL) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)vars, k, v)
            frame_set(&r, globals, k, from_json(&r, v, 0));
    }
    r.root = frame_new(&r, globals);
    buf b = { .max = r.max_output };
    exec_body(&r, r.root, &t->root, &b);
    char *res = malloc(b.n + 1);
    if (res == NULL) {
        arena_free(&ar);
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    }
    if (b.n)
        memcpy(res, b.p, b.n);
    res[b.n] = '\0';
    *out = res;
    if (out_len != NULL)
        *out_len = b.n;
    arena_free(&ar);
    return YM_OK;
}
