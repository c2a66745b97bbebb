/* libFuzzer target: a chat template of arbitrary bytes, rendered over a fixed conversation, must
 * render or fail with a message; never crash, hang, leak or exhaust memory. Templates come from
 * whoever published a model. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hubcap.h"

static const char *messages = "[{\"role\": \"system\", \"content\": \"Be brief.\"},"
                              " {\"role\": \"user\", \"content\": \"Hi \\u00e9 <b>\"},"
                              " {\"role\": \"assistant\", \"content\": \"Hello.\", \"tool_calls\": [{\"function\":"
                              " {\"name\": \"f\", \"arguments\": {\"x\": [1, 2.5, null, true]}}}]},"
                              " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"more\"}]}]";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *tmpl = malloc(size + 1);
    if (!tmpl) return 0;
    memcpy(tmpl, data, size);
    tmpl[size] = 0;
    hc_chat_params p = hc_chat_default_params();
    p.bos_token = "<s>";
    p.eos_token = "</s>";
    p.extra_context_json = "{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]}";
    char *out = NULL;
    size_t len = 0;
    if (hc_chat_template_render(tmpl, messages, &p, &out, &len) == HC_OK) {
        if (strlen(out) > len) abort(); /* out is len bytes and a terminating zero (it may hold zeros) */
        hc_free(out);
    }
    free(tmpl);
    return 0;
}
