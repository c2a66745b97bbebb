/* Training internals shared by the gradient code and the fine-tuning loop. */
#ifndef HC_TRAIN_TRAIN_H
#define HC_TRAIN_TRAIN_H

#include "model/model.h"

/* Buffers kept between gradient calls, in the order they are asked for (every layer's
 * activations: a step allocates nothing once they exist, so a GPU may replay its recording). */
typedef struct {
    void **p;
    size_t *bytes;
    int n, cap;
} hc_train_workspace;

struct hc_grads {
    hc_model *m;
    int64_t n;
    const hc_tensor_info **tensors; /* the checkpoint's, sorted by data address */
    float **g;                      /* [n] each tensor's gradient (n_elements f32) in backend memory, NULL if unused */
    float *arena;                   /* one backend allocation holding every g[i] (256-byte aligned, zero between) */
    int64_t arena_n;                /* its floats */
    bool *lazy;                     /* [n] cleared by the step's first write (=), not by hc_grads_zero */
    int64_t n_lazy;
    bool fresh;                     /* zeroed, and the lazy ones not yet written */
    float **gh;                     /* [n] their host copies (the same arrays on the CPU) */
    bool on_device;                 /* g lives on a device: gh is refreshed by hc_grads_download */
    bool stale;                     /* gh is behind g */
    bool checkpointing;             /* keep layer inputs only; recompute the rest in the backward */
    hc_train_workspace ws;                /* the training step's activations and scratch */
};

void hc_lora_free(hc_model *m);
/* Brings the host copies of the gradients (tensors and adapter) up to date: one download each
 * on a device backend, nothing on the CPU. */
void hc_grads_download(hc_grads *g);
/* Clears the lazily cleared gradients if no step has written them since hc_grads_zero. */
void hc_grads_settle(hc_grads *g);
hc_status hc_lora_sync(hc_model *m); /* backend copies and views of the adapter */

#endif
