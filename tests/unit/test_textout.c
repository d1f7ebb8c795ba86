/* tests/unit/test_textout.c - placeholder until the module's tests land. */
#include "testutil.h"

Suite *textout_suite(void)
{
    return suite_create("textout");
}
