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

HC_HOST_DEVICE float hc_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

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

/* act(x) and its derivative, as hc_act_apply defines act: the backward's one definition. */
HC_HOST_DEVICE void hc_act_grad(float x, hc_activation act, float *a, float *da) {
    switch (act) {
    case HC_ACT_SILU: {
        const float sg = 1.0f / (1.0f + expf(-x));
        *a = x * sg;
        *da = sg * (1.0f + x * (1.0f - sg));
        return;
    }
    case HC_ACT_GELU_TANH: {
        const float k = 0.7978845608028654f, u = k * (x + 0.044715f * x * x * x), th = tanhf(u);
        *a = 0.5f * x * (1.0f + th);
        *da = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * k * (1.0f + 3.0f * 0.044715f * x * x);
        return;
    }
    case HC_ACT_GELU:
        *a = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
        *da = 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * 0.3989422804014327f * expf(-0.5f * x * x);
        return;
    case HC_ACT_RELU:
        *a = x > 0 ? x : 0;
        *da = x > 0 ? 1.0f : 0.0f;
        return;
    }
    *a = x;
    *da = 1;
}

#endif
