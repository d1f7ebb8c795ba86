/* bench/chat_template_bench.c - the cost of engine/jinja.c per template: parse (once per model
 * load) and render (once per chat request), each averaged over N runs.
 *
 *   gcc -O2 -I. bench/chat_template_bench.c build-test/engine/libym_engine.a \
 *       -ljansson -lutf8proc -lopenblas -lm -lpthread -o /tmp/chat_template_bench
 *   /tmp/chat_template_bench TEMPLATE.jinja tests/fixtures/chat_templates/conversations.json N
 *
 * Renders the fixture conversation "system_multi_turn" (4 messages) with add_generation_prompt,
 * as bench/chat_template_bench.py does with Jinja2 for the ratio. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <jansson.h>

#include "engine/jinja.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: chat_template_bench TEMPLATE CONVERSATIONS.json N\n");
        return 2;
    }
    static char src[1 << 20];
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL)
        return 1;
    size_t n = fread(src, 1, sizeof(src), f);
    fclose(f);
    json_t *convs = json_load_file(argv[2], 0, NULL);
    json_t *vars = json_pack("{s:O, s:b, s:s, s:s, s:n, s:n}", "messages",
                             json_object_get(convs, "system_multi_turn"), "add_generation_prompt", 1,
                             "bos_token", "<s>", "eos_token", "</s>", "tools", "documents");
    int runs = atoi(argv[3]);
    ym_diag diag;
    ym_jinja_t *t = NULL;
    double t0 = now();
    for (int i = 0; i < runs; i++) {
        if (ym_jinja_parse(src, n, &t, &diag) != YM_OK) {
            fprintf(stderr, "%s\n", diag.msg);
            return 1;
        }
        ym_jinja_free(t);
    }
    double parse = (now() - t0) / runs;
    ym_jinja_parse(src, n, &t, &diag);
    t0 = now();
    for (int i = 0; i < runs; i++) {
        char *out = NULL;
        if (ym_jinja_render(t, vars, NULL, &out, NULL, &diag) != YM_OK) {
            fprintf(stderr, "%s\n", diag.msg);
            return 1;
        }
        free(out);
    }
    double render = (now() - t0) / runs;
    printf("%s: parse %.1f us, render %.1f us\n", argv[1], parse * 1e6, render * 1e6);
    ym_jinja_free(t);
    json_decref(vars);
    json_decref(convs);
    return 0;
}
