/* What quantizing the activations costs a quantized matmul, apart from the weights' own error.
 *
 * Quantized weights meet activations quantized to int8 (matmul_fast.c's quantize_acts): one
 * scale per block of 32 values, or per 256 for q4_k (llama.cpp's q8_K), where the 6-bit
 * sub-block scales then apply to integer sums (matmul_vnni.c). A scale over 256 values is set
 * by their largest, so outlier channels, common in trained models' activations, cost the other
 * values precision. The fixtures' models are too narrow for q4_k (K < 256), so this measures it
 * on one [512, 2048] matrix of Gaussian weights, q4_k, against x of four kinds:
 *   relative RMS error of the outputs (over 20 vectors): the q4_k weights alone against the f32
 *   weights; rounding x per 32 and per 256 against the q4_k product on f32 x (the reference
 *   matmul on the rounded x gives the fast kernels' numbers); and both together ("total").
 * usage: bench_acts_error */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/backend.h"
#include "backend/cpu/quant.h"

enum { K = 2048, N = 512, TRIALS = 20 };

static uint32_t seed = 7;
static float uniform(void) {
    seed = seed * 1664525u + 1013904223u;
    return (float)(seed >> 8) / (1 << 24);
}
static float gauss(void) { return sqrtf(-2 * logf(uniform() + 1e-7f)) * cosf(6.2831853f * uniform()); }

/* x rounded as quantize_acts rounds it with one scale per G values: xq[K] */
static void round_acts(float *xq, const float *x, int G) {
    for (int i = 0; i < K; i += G) {
        float amax = 0;
        for (int j = 0; j < G; j++) amax = fmaxf(amax, fabsf(x[i + j]));
        const float d = amax / 127.0f, id = d ? 1.0f / d : 0;
        for (int j = 0; j < G; j++) xq[i + j] = d * rintf(x[i + j] * id);
    }
}

int main(void) {
    hc_backend *ref = hc_backend_cpu();
    float *wf = malloc(sizeof(float) * N * K); /* [N, K] */
    const size_t rb = hc_quant_row_bytes(HC_QUANT_Q4_K, K);
    void *wq = malloc(rb * N);
    if (!wf || !wq) return 1;
    for (int i = 0; i < N * K; i++) wf[i] = 0.02f * gauss();
    for (int n = 0; n < N; n++) hc_quantize_mat_row(HC_QUANT_Q4_K, wq, N, K, n, wf + (size_t)n * K);
    const hc_mat w4 = {.data = wq, .rows = N, .cols = K, .ld = K, .quant = HC_QUANT_Q4_K};
    const hc_mat w32 = {.data = wf, .rows = N, .cols = K, .ld = K, .dtype = HC_DTYPE_F32};
    static float x[K], xq[K], exact[N], q4[N], by32[N], by256[N];
    const char *kinds[] = {"gaussian", "6 channels x20", "2 channels x100", "heavy tail (g^3)"};
    printf("%-18s %12s %12s %12s %14s %14s\n", "x", "weights", "acts /32", "acts /256", "total /32", "total /256");
    for (int kind = 0; kind < 4; kind++) {
        double ew = 0, e32 = 0, e256 = 0, t32 = 0, t256 = 0, norm = 0;
        for (int t = 0; t < TRIALS; t++) {
            for (int i = 0; i < K; i++) {
                const float g = gauss();
                x[i] = kind == 3 ? g * g * g : g;
            }
            if (kind == 1)
                for (int i = 0; i < 6; i++) x[(i * 331 + 17) % K] *= 20;
            if (kind == 2)
                for (int i = 0; i < 2; i++) x[(i * 977 + 5) % K] *= 100;
            ref->matmul(ref, exact, x, &w32, NULL, 1);
            ref->matmul(ref, q4, x, &w4, NULL, 1);
            round_acts(xq, x, 32);
            ref->matmul(ref, by32, xq, &w4, NULL, 1);
            round_acts(xq, x, 256);
            ref->matmul(ref, by256, xq, &w4, NULL, 1);
            for (int n = 0; n < N; n++) {
                ew += pow(q4[n] - exact[n], 2);
                e32 += pow(by32[n] - q4[n], 2);
                e256 += pow(by256[n] - q4[n], 2);
                t32 += pow(by32[n] - exact[n], 2);
                t256 += pow(by256[n] - exact[n], 2);
                norm += pow(exact[n], 2);
            }
        }
        printf("%-18s %12.4f %12.4f %12.4f %14.4f %14.4f\n", kinds[kind], sqrt(ew / norm), sqrt(e32 / norm),
               sqrt(e256 / norm), sqrt(t32 / norm), sqrt(t256 / norm));
    }
    return 0;
}
