/* Activations, residual adds and soft-capping. */
#include <math.h>

#include "backend/activation.h"
#include "backend/cpu/cpu.h"

void hc_cpu_glu(hc_backend *be, float *out, const float *gate, const float *up, hc_activation act, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) out[i] = hc_act_apply(gate[i], act) * up[i];
}

void hc_cpu_activate(hc_backend *be, float *x, hc_activation act, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) x[i] = hc_act_apply(x[i], act);
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
