/* What the library knows of a checkpoint beyond the public API (include/hubcap.h). */
#ifndef HC_FORMAT_CHECKPOINT_H
#define HC_FORMAT_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>

#include "hubcap.h"

/* Gives back the memory of bytes [p, p + n) of a tensor's data that nothing reads any more
 * (weights quantized on load): the whole pages inside the range. The checkpoint is then marked:
 * saving it would write what is no longer there, so hc_checkpoint_save refuses it. */
void hc_checkpoint_release(hc_checkpoint *ck, const void *p, size_t n);
bool hc_checkpoint_released(const hc_checkpoint *ck);
/* Whether the shards are mapped (else read into RAM): a mapped page given back comes again from
 * the file when read. */
bool hc_checkpoint_mapped(const hc_checkpoint *ck);

#endif
