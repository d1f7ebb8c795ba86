/* tests/unit/testutil.h - shared helpers for the Check suites. */
#ifndef YM_TESTS_TESTUTIL_H
#define YM_TESTS_TESTUTIL_H

#include <check.h>

/* Fixture path: YM_FIXTURE_DIR "/" name (static buffer, one at a time per call site). */
#define YM_FIXTURE(name) (YM_FIXTURE_DIR "/" name)

Suite *err_suite(void);
Suite *utf8_suite(void);
Suite *tokenizer_suite(void);
Suite *safetensors_suite(void);
Suite *config_suite(void);
Suite *model_suite(void);
Suite *state_suite(void);
Suite *forward_suite(void);
Suite *sampling_suite(void);
Suite *textout_suite(void);
Suite *conformance_suite(void);
Suite *gemm_suite(void);
Suite *adapters_suite(void);
Suite *sparsity_suite(void);
Suite *sparse_suite(void);
Suite *order_suite(void);
Suite *jinja_suite(void);
Suite *ssd_suite(void);
Suite *mamba2_suite(void);
Suite *mamba2_sparse_suite(void);

#endif
