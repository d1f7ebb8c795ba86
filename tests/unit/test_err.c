/* tests/unit/test_err.c - the error table and ym_diag. */
#include <string.h>

#include "engine/err.h"
#include "testutil.h"

START_TEST(test_err_names_messages_and_http_come_from_one_table)
{
    ck_assert_str_eq(ym_err_name(YM_EBUSY), "YM_EBUSY");
    ck_assert_str_eq(ym_strerror(YM_EBUSY), "queue full or draining");
    ck_assert_int_eq(ym_err_http_status(YM_EBUSY), 503);
    ck_assert_int_eq(ym_err_http_status(YM_EFORMAT), 422);
    ck_assert_str_eq(ym_err_name((ym_err)-999), "YM_UNKNOWN");
    ck_assert_int_eq(ym_err_http_status((ym_err)-999), 500);
}
END_TEST

START_TEST(test_diag_param_records_message_and_param)
{
    ym_diag d = {0};
    ck_assert_int_eq(ym_diag_param(&d, YM_EINVAL, "top_p", "top_p must be in (0, 1], got %g", 1.5),
                     YM_EINVAL);
    ck_assert_str_eq(d.param, "top_p");
    ck_assert_str_eq(d.msg, "top_p must be in (0, 1], got 1.5");
    ck_assert_int_eq(ym_diag_set(NULL, YM_EIO, "ignored %d", 1), YM_EIO);
}
END_TEST

Suite *err_suite(void)
{
    Suite *s = suite_create("err");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_err_names_messages_and_http_come_from_one_table);
    tcase_add_test(tc, test_diag_param_records_message_and_param);
    suite_add_tcase(s, tc);
    return s;
}
