/* A Jinja2 interpreter for chat templates, configured as transformers configures jinja2:
 * trim_blocks, lstrip_blocks, loop controls, an immutable sandbox, tojson as json.dumps with
 * ensure_ascii=False, raise_exception, strftime_now (honouring SOURCE_DATE_EPOCH). */
#ifndef HC_TEMPLATE_JINJA_H
#define HC_TEMPLATE_JINJA_H

#include <stddef.h>

#include "format/json.h"
#include "hubcap.h"

/* Renders `src` (len bytes) with the variables of the JSON object `context`. `source` names
 * the template in errors: "chat_template:12:5: unexpected 'endfor'". A raise_exception in the
 * template fails with its message. *out is malloc'd. */
hc_status hc_jinja_render(const char *src, size_t len, const char *source, const hc_json *context, char **out,
                          size_t *out_len);

#endif
