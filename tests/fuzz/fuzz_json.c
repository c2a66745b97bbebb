/* libFuzzer target: the JSON parser on arbitrary bytes must never crash or leak. */
#include <stddef.h>
#include <stdint.h>

#include "format/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    hc_json_doc doc;
    if (hc_json_parse(&doc, (const char *)data, size, "fuzz.json") == HC_OK) {
        /* Walk what was built so a malformed tree would be caught by ASan. */
        const hc_json *root = doc.root;
        if (root->type == HC_JSON_OBJECT)
            for (size_t i = 0; i < root->len; i++) (void)hc_json_get(root, root->u.members[i].key);
        hc_json_free(&doc);
    }
    return 0;
}
