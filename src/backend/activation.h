/* The activations, one definition for the CPU reference and the CUDA kernels (compiled for
 * both host and device under nvcc). */
#ifndef HC_BACKEND_ACTIVATION_H
#define HC_BACKEND_ACTIVATION_H

#include <math.h>

#include "hubcap.h"

#ifdef __CUDACC__
#define HC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HC_HOST_DEVICE static inline
#endif

HC_HOST_DEVICE float hc_act_apply(float x, hc_activation act) {
    switch (act) {
    case HC_ACT_SILU: return x / (1.0f + expf(-x));
    case HC_ACT_GELU_TANH: {
        const float k = 0.7978845608028654f; /* sqrt(2/pi) */
        return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
    }
    case HC_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case HC_ACT_RELU: return x > 0 ? x : 0;
    }
    return x;
}

#endif
