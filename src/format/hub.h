/* The Hugging Face Hub: hf:// handles resolved to snapshot folders in the HF cache. */
#ifndef HC_FORMAT_HUB_H
#define HC_FORMAT_HUB_H

#include "hubcap.h"

bool hc_is_hub_handle(const char *path);
/* hf:// handles are resolved (downloading what is missing); other paths are copied. *local is
 * malloc'd. */
hc_status hc_resolve_model_path(const char *path, char **local);

#endif
