/* tools/bench_stub.c - placeholder for `yunmin bench` until tools/bench.c is built in.
 * Weak, so the real ym_cmd_bench replaces it when both are linked. */
#include <stdio.h>

#include "tools/cli.h"

__attribute__((weak)) int ym_cmd_bench(int argc, char **argv)
{
    fprintf(stderr, "yunmin: bench: not built yet\n");
    return CLI_FAIL;
}
