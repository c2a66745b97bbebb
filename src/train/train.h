/* Training internals shared by the gradient code and the fine-tuning loop. */
#ifndef HC_TRAIN_TRAIN_H
#define HC_TRAIN_TRAIN_H

#include "model/model.h"

struct hc_grads {
    hc_model *m;
    int64_t n;
    const hc_tensor_info **tensors; /* the checkpoint's, sorted by data address */
    float **g;                      /* [n] each tensor's gradient (n_elements f32), NULL if unused */
    bool checkpointing;             /* keep layer inputs only; recompute the rest in the backward */
};

void hc_lora_free(hc_model *m);
hc_status hc_lora_sync(hc_model *m); /* backend copies and views of the adapter */

#endif
