/* tests/unit/main.c - runs every module's Check suite in one SRunner.
 * YM_SUITE=name runs one suite only (Check's CK_RUN_SUITE works too). */
#include <stdlib.h>

#include "testutil.h"

int main(void)
{
    SRunner *sr = srunner_create(err_suite());
    srunner_add_suite(sr, utf8_suite());
    srunner_add_suite(sr, tokenizer_suite());
    srunner_add_suite(sr, safetensors_suite());
    srunner_add_suite(sr, config_suite());
    srunner_add_suite(sr, model_suite());
    srunner_add_suite(sr, state_suite());
    srunner_add_suite(sr, forward_suite());
    srunner_add_suite(sr, sampling_suite());
    srunner_add_suite(sr, textout_suite());
    srunner_add_suite(sr, conformance_suite());
    srunner_add_suite(sr, gemm_suite());
    srunner_add_suite(sr, adapters_suite());
    srunner_add_suite(sr, sparsity_suite());
    srunner_add_suite(sr, sparse_suite());
    srunner_add_suite(sr, order_suite());
    srunner_add_suite(sr, jinja_suite());
    srunner_add_suite(sr, ssd_suite());
    srunner_add_suite(sr, mamba2_suite());
    srunner_add_suite(sr, mamba2_sparse_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
