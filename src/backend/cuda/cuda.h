/* The CUDA backend: every op of backend.h on an NVIDIA GPU (one .cu file per op family).
 * Built when CMake finds nvcc (HUBCAP_CUDA=AUTO|ON); HUBCAP_HAVE_CUDA tells the C side. */
#ifndef HC_BACKEND_CUDA_H
#define HC_BACKEND_CUDA_H

#include "backend/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Opens GPU `device_index` with matmuls computed in `compute` (F32, BF16 or F16; accumulation
 * is always f32). Fails with a clear message when no usable GPU or driver is present.
 * Free with be->destroy(be). */
hc_status hc_backend_cuda_new(int device_index, hc_dtype compute, hc_backend **out);

/* True when a CUDA device can be opened; else false with the reason in `why`. */
bool hc_cuda_available(char *why, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
