/* Activations, residual adds and soft-capping. */
#include <math.h>

#include "backend/cpu/cpu.h"

static inline float act_apply(float x, hc_activation act) {
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

void hc_cpu_glu(hc_backend *be, float *out, const float *gate, const float *up, hc_activation act, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) out[i] = act_apply(gate[i], act) * up[i];
}

void hc_cpu_activate(hc_backend *be, float *x, hc_activation act, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) x[i] = act_apply(x[i], act);
}

void hc_cpu_add(hc_backend *be, float *out, const float *a, const float *b, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void hc_cpu_add_scaled(hc_backend *be, float *out, const float *x, float alpha, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) out[i] += alpha * x[i];
}

void hc_cpu_softcap(hc_backend *be, float *x, float cap, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) x[i] = cap * tanhf(x[i] / cap);
}
