/* tests/unit/test_tokenizer.c - placeholder until the module's tests land. */
#include "testutil.h"

Suite *tokenizer_suite(void)
{
    return suite_create("tokenizer");
}
