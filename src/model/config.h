/* config.json and generation_config.json -> hc_model_config, with transformers' defaults. */
#ifndef HC_MODEL_CONFIG_H
#define HC_MODEL_CONFIG_H

#include "format/json.h"
#include "hubcap.h"

/* The model_types hubcap runs, for messages: "llama, mistral, ...". */
const char *hc_supported_model_types(void);

/* Fills cfg from a parsed config.json. `src` names the file in errors. */
hc_status hc_config_parse(hc_model_config *cfg, const hc_json *root, const char *src);

/* Overlays generation_config.json (bos/eos/pad and sampling defaults). */
hc_status hc_generation_config_parse(hc_model_config *cfg, const hc_json *root, const char *src);

#endif
