/* Every CPU op against a naive formula computed in double, including the edge cases:
 * windows longer than the sequence, one kv head, T = 1, partial rotary, transposed weights;
 * and the thread pool that the fast ones run on. */
#include <stdatomic.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/cpu/fast.h"
#include "backend/cpu/quant.h"
#include "base/half.h"
#include "base/threadpool.h"
#include "hubcap.h"
#include "model/rope.h"
#include "test_util.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

static uint64_t rs = 88172645463325252ull;
static float frand(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((double)(rs >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static void fill(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = frand();
}

static double max_diff(const float *a, const double *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

static void test_half(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = hc_f16_to_f32((uint16_t)h);
        if (f != f) continue;
        if (hc_f32_to_f16(f) != h) bad++;
    }
    CHECK(bad == 0, "f16 -> f32 -> f16 round trips exactly (%d bad)", bad);
    CHECK(hc_f16_to_f32(0x3c00) == 1.0f && hc_f16_to_f32(0xc000) == -2.0f && hc_f16_to_f32(0x0001) == 5.9604645e-8f,
          "f16 values");
    CHECK(hc_f32_to_f16(65520.0f) == 0x7c00 && hc_f32_to_f16(1e-9f) == 0, "f16 overflow and underflow");
    for (uint32_t h = 0; h < 65536; h += 7) {
        float f = hc_bf16_to_f32((uint16_t)h);
        if (f == f && hc_f32_to_bf16(f) != h) bad++;
    }
    CHECK(bad == 0, "bf16 round trip");
    CHECK(hc_f32_to_bf16(1.00390625f) == 0x3f80, "bf16 rounds half to even");
}

static void test_matmul(hc_backend *be) {
    const int64_t T = 3, K = 37, N = 11;
    float x[3 * 37], wf[11 * 37], bias[11], out[3 * 11];
    uint16_t wb[11 * 37], wh[11 * 37], wt[37 * 11];
    double want[3 * 11];
    fill(x, T * K);
    fill(wf, N * K);
    fill(bias, N);
    for (int64_t i = 0; i < N * K; i++) {
        wb[i] = hc_f32_to_bf16(wf[i]);
        wh[i] = hc_f32_to_f16(wf[i]);
    }
    for (int dt = 0; dt < 3; dt++) {
        hc_mat w = {.dtype = dt == 0 ? HC_DTYPE_F32 : dt == 1 ? HC_DTYPE_BF16 : HC_DTYPE_F16, .rows = N, .cols = K, .ld = K};
        w.data = dt == 0 ? (const void *)wf : dt == 1 ? (const void *)wb : (const void *)wh;
        hc_vec b = {.data = bias, .dtype = HC_DTYPE_F32, .n = N};
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++) {
                double s = bias[n];
                for (int64_t k = 0; k < K; k++) {
                    float wv = dt == 0 ? wf[n * K + k] : dt == 1 ? hc_bf16_to_f32(wb[n * K + k]) : hc_f16_to_f32(wh[n * K + k]);
                    s += (double)x[t * K + k] * wv;
                }
                want[t * N + n] = s;
            }
        be->matmul(be, out, x, &w, &b, T);
        CHECK(max_diff(out, want, T * N) < 1e-5, "matmul dtype %d: %g", dt, max_diff(out, want, T * N));
    }
    /* Stored transposed [K, N] (GPT-2 Conv1D), and a column slice of it. */
    for (int64_t k = 0; k < K; k++)
        for (int64_t n = 0; n < N; n++) wt[k * N + n] = wb[n * K + k];
    hc_mat w = {.data = wt, .dtype = HC_DTYPE_BF16, .rows = N, .cols = K, .ld = N, .transposed = true};
    for (int64_t t = 0; t < T; t++)
        for (int64_t n = 0; n < N; n++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += (double)x[t * K + k] * hc_bf16_to_f32(wb[n * K + k]);
            want[t * N + n] = s;
        }
    be->matmul(be, out, x, &w, NULL, T);
    CHECK(max_diff(out, want, T * N) < 1e-5, "transposed matmul");
    hc_mat slice = w;
    slice.data = wt + 4;
    slice.rows = 5;
    be->matmul(be, out, x, &slice, NULL, 1);
    double want5[5];
    for (int n = 0; n < 5; n++) want5[n] = want[4 + n];
    CHECK(max_diff(out, want5, 5) < 1e-5, "column slice of a transposed matrix");
    /* Row slice of a [N, K] matrix (a fused qkv view). */
    hc_mat rows = {.data = wf + 3 * K, .dtype = HC_DTYPE_F32, .rows = 4, .cols = K, .ld = K};
    be->matmul(be, out, x, &rows, NULL, 1);
    double want4[4];
    for (int n = 0; n < 4; n++) {
        want4[n] = 0;
        for (int64_t k = 0; k < K; k++) want4[n] += (double)x[k] * wf[(3 + n) * K + k];
    }
    CHECK(max_diff(out, want4, 4) < 1e-5, "row slice");
    /* Embedding gather with scale and accumulate. */
    int32_t ids[2] = {10, 0};
    hc_mat table = {.data = wf, .dtype = HC_DTYPE_F32, .rows = N, .cols = K, .ld = K};
    float emb[2 * 37];
    be->embedding(be, emb, &table, ids, 2, 2.0f, false);
    be->embedding(be, emb, &table, ids, 2, 1.0f, true);
    double wemb[2 * 37];
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < K; k++) wemb[t * K + k] = 3.0 * wf[ids[t] * K + k];
    CHECK(max_diff(emb, wemb, 2 * K) < 1e-6, "embedding");
}

static void test_norms(hc_backend *be) {
    const int64_t T = 4, C = 19;
    float x[4 * 19], w[19], b[19], out[4 * 19];
    double want[4 * 19];
    fill(x, T * C);
    fill(w, C);
    fill(b, C);
    hc_vec wv = {.data = w, .dtype = HC_DTYPE_F32, .n = C}, bv = {.data = b, .dtype = HC_DTYPE_F32, .n = C};
    for (int kind = 0; kind < 3; kind++) {
        for (int64_t t = 0; t < T; t++) {
            double mean = 0, var = 0, ss = 0;
            for (int64_t c = 0; c < C; c++) mean += x[t * C + c] / (double)C;
            for (int64_t c = 0; c < C; c++) {
                var += (x[t * C + c] - mean) * (x[t * C + c] - mean) / (double)C;
                ss += (double)x[t * C + c] * x[t * C + c] / (double)C;
            }
            for (int64_t c = 0; c < C; c++) {
                if (kind == HC_NORM_LAYER) want[t * C + c] = (x[t * C + c] - mean) / sqrt(var + 1e-5) * w[c] + b[c];
                else want[t * C + c] = x[t * C + c] / sqrt(ss + 1e-5) * (kind == HC_NORM_RMS_PLUS1 ? 1.0 + w[c] : w[c]);
            }
        }
        be->norm(be, out, x, &wv, kind == HC_NORM_LAYER ? &bv : NULL, (hc_norm_kind)kind, 1e-5f, T, C);
        CHECK(max_diff(out, want, T * C) < 1e-5, "norm kind %d: %g", kind, max_diff(out, want, T * C));
    }
    /* In place, as the per-head q/k norms use it. */
    memcpy(out, x, sizeof x);
    be->norm(be, out, out, &wv, NULL, HC_NORM_RMS, 1e-5f, T, C);
    float ref[4 * 19];
    be->norm(be, ref, x, &wv, NULL, HC_NORM_RMS, 1e-5f, T, C);
    CHECK(!memcmp(out, ref, sizeof ref), "norm in place");
}

static void test_rope(hc_backend *be) {
    const int64_t T = 3, NH = 2, D = 10;
    for (int64_t R = 4; R <= D; R += 6) { /* partial (4 of 10) and full */
        float x[3 * 2 * 10], inv[5];
        double want[3 * 2 * 10];
        fill(x, T * NH * D);
        for (int64_t i = 0; i < R / 2; i++) inv[i] = powf(10000.0f, -(float)(2 * i) / (float)R);
        int32_t pos[3] = {0, 5, 17};
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < NH; h++) {
                const float *v = x + (t * NH + h) * D;
                double *o = want + (t * NH + h) * D;
                for (int64_t d = 0; d < D; d++) o[d] = v[d];
                for (int64_t i = 0; i < R / 2; i++) { /* rotate (v[i], v[i+R/2]) by angle pos*inv */
                    double a = (double)((float)pos[t] * inv[i]);
                    o[i] = 0.5 * (v[i] * cos(a) - v[i + R / 2] * sin(a)) * 2;
                    o[i + R / 2] = v[i + R / 2] * cos(a) + v[i] * sin(a);
                }
            }
        be->rope(be, x, pos, inv, 1.0f, T, NH, D, R);
        CHECK(max_diff(x, want, T * NH * D) < 1e-5, "rope R=%lld: %g", (long long)R, max_diff(x, want, T * NH * D));
    }
}

/* Naive attention: full score matrix, explicit causal + window mask, double softmax. */
static void naive_attention(double *out, const float *q, const float *kc, const float *vc, const int32_t *pos,
                            int64_t T, int64_t H, int64_t KVH, int64_t D, float scale, int64_t window, float cap) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            int64_t kvh = h * KVH / H;
            double s[64], mx = -1e300, sum = 0;
            for (int64_t j = 0; j <= pos[t]; j++) {
                bool visible = window == 0 || pos[t] - j < window;
                double v = 0;
                for (int64_t d = 0; d < D; d++) v += (double)q[(t * H + h) * D + d] * kc[(j * KVH + kvh) * D + d];
                v *= scale;
                if (cap > 0) v = cap * tanh(v / cap);
                s[j] = visible ? v : -INFINITY;
                if (s[j] > mx) mx = s[j];
            }
            for (int64_t j = 0; j <= pos[t]; j++) sum += (s[j] = exp(s[j] - mx));
            for (int64_t d = 0; d < D; d++) {
                double o = 0;
                for (int64_t j = 0; j <= pos[t]; j++) o += s[j] / sum * vc[(j * KVH + kvh) * D + d];
                out[(t * H + h) * D + d] = o;
            }
        }
}

static void test_attention(hc_backend *be) {
    const int64_t S = 20, D = 6;
    struct {
        int64_t T, H, KVH, window;
        float cap;
        int32_t first;
    } cases[] = {
        {5, 4, 2, 0, 0, 0},    /* GQA, causal prompt */
        {5, 4, 1, 0, 0, 3},    /* one kv head (MQA), prompt after a cached prefix */
        {1, 4, 4, 0, 0, 12},   /* T = 1 decode */
        {8, 2, 2, 3, 0, 0},    /* window shorter than the sequence */
        {6, 2, 1, 50, 0, 4},   /* window longer than the sequence */
        {4, 4, 2, 4, 5.0f, 9}, /* window + soft-capping */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int64_t T = cases[c].T, H = cases[c].H, KVH = cases[c].KVH;
        float q[8 * 4 * 6], kc[20 * 4 * 6], vc[20 * 4 * 6], out[8 * 4 * 6], scratch[20];
        double want[8 * 4 * 6];
        fill(q, T * H * D);
        fill(kc, S * KVH * D);
        fill(vc, S * KVH * D);
        for (int64_t i = 0; i < T * H * D; i++) q[i] *= 3;
        int32_t pos[8];
        for (int64_t t = 0; t < T; t++) pos[t] = cases[c].first + (int32_t)t;
        be->attention(be, out, q, kc, vc, HC_DTYPE_F32, pos, T, H, KVH, D, 0.4f, cases[c].window, cases[c].cap, 0, scratch);
        naive_attention(want, q, kc, vc, pos, T, H, KVH, D, 0.4f, cases[c].window, cases[c].cap);
        CHECK(max_diff(out, want, T * H * D) < 1e-5, "attention case %zu: %g", c, max_diff(out, want, T * H * D));
    }
}

static void test_elementwise_and_routing(hc_backend *be) {
    float g[8] = {-3, -1, -0.5f, 0, 0.5f, 1, 2, 4}, u[8], out[8];
    double want[8];
    fill(u, 8);
    for (int act = 0; act < 4; act++) {
        for (int i = 0; i < 8; i++) {
            double x = g[i], a;
            switch (act) {
            case HC_ACT_SILU: a = x / (1 + exp(-x)); break;
            case HC_ACT_GELU_TANH: a = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); break;
            case HC_ACT_GELU: a = 0.5 * x * (1 + erf(x / sqrt(2.0))); break;
            default: a = x > 0 ? x : 0;
            }
            want[i] = a * u[i];
        }
        be->glu(be, out, g, u, (hc_activation)act, 8);
        CHECK(max_diff(out, want, 8) < 1e-6, "glu act %d", act);
    }
    memcpy(out, g, sizeof g);
    be->softcap(be, out, 2.0f, 8);
    for (int i = 0; i < 8; i++) want[i] = 2 * tanh(g[i] / 2);
    CHECK(max_diff(out, want, 8) < 1e-6, "softcap");
    float logits[2 * 5] = {0.1f, 2.0f, -1.0f, 1.5f, 0.3f, 5, 5, 1, 0, 5};
    float w[4];
    int32_t e[4];
    be->topk_route(be, w, e, logits, 2, 5, 2, true);
    CHECK(e[0] == 1 && e[1] == 3, "top-2 experts %d %d", e[0], e[1]);
    double z = exp(2.0) + exp(1.5);
    CHECK(fabs(w[0] - exp(2.0) / z) < 1e-6 && fabs(w[1] - exp(1.5) / z) < 1e-6, "renormalised weights");
    CHECK(e[2] == 0 && e[3] == 1 && fabs(w[2] - 0.5) < 1e-6, "ties keep index order");
    be->topk_route(be, w, e, logits, 1, 5, 1, false);
    double zall = exp(0.1) + exp(2.0) + exp(-1.0) + exp(1.5) + exp(0.3);
    CHECK(fabs(w[0] - exp(2.0) / zall) < 1e-6, "softmax weight without renorm");
}

static void test_rope_tables(void) {
    float a[16], b[16], af;
    hc_rope_config def = {.type = HC_ROPE_DEFAULT, .theta = 10000, .factor = 1};
    hc_rope_inv_freq(a, &af, &def, 32, 4096, 4096);
    CHECK(fabsf(a[1] - powf(10000, -2.0f / 32)) < 1e-9f && af == 1, "default table");
    hc_rope_config lin = def;
    lin.type = HC_ROPE_LINEAR;
    lin.factor = 4;
    hc_rope_inv_freq(b, &af, &lin, 32, 4096, 4096);
    CHECK(fabsf(b[3] - a[3] / 4) < 1e-9f, "linear divides by the factor");
    hc_rope_config l3 = def;
    l3.type = HC_ROPE_LLAMA3;
    l3.factor = 8;
    l3.low_freq_factor = 1;
    l3.high_freq_factor = 4;
    l3.original_max_position_embeddings = 8192;
    hc_rope_inv_freq(b, &af, &l3, 32, 131072, 131072);
    CHECK(b[0] == a[0], "llama3 keeps high frequencies");
    CHECK(fabsf(b[15] - a[15] / 8) < 1e-12f, "llama3 divides low frequencies by the factor");
    hc_rope_config dyn = def;
    dyn.type = HC_ROPE_DYNAMIC;
    dyn.factor = 2;
    dyn.original_max_position_embeddings = 4096;
    hc_rope_inv_freq(b, &af, &dyn, 32, 4096, 100);
    CHECK(!memcmp(a, b, sizeof(float) * 16), "dynamic within the trained length = default");
    hc_rope_inv_freq(b, &af, &dyn, 32, 4096, 8192);
    double base = 10000 * pow(2.0 * 8192 / 4096 - 1, 32.0 / 30);
    CHECK(fabs(b[5] - 1 / pow(base, 10.0 / 32)) < 1e-6 * b[5], "dynamic NTK base");
    hc_rope_config yarn = def;
    yarn.type = HC_ROPE_YARN;
    yarn.factor = 4;
    yarn.truncate = true;
    yarn.original_max_position_embeddings = 4096;
    hc_rope_inv_freq(b, &af, &yarn, 32, 16384, 16384);
    CHECK(fabsf(af - (float)(0.1 * log(4.0) + 1)) < 1e-6f, "yarn attention factor");
    CHECK(b[0] == a[0] && fabsf(b[15] - a[15] / 4) < 1e-6f * a[15], "yarn extrapolates high, interpolates low");
    hc_rope_config lr = def;
    lr.type = HC_ROPE_LONGROPE;
    lr.original_max_position_embeddings = 4096;
    lr.factor = 32; /* 131072 / 4096 */
    lr.n_factors = 16;
    for (int i = 0; i < 16; i++) lr.short_factor[i] = 1.0f + 0.01f * (float)i, lr.long_factor[i] = 1.0f + (float)i;
    hc_rope_inv_freq(b, &af, &lr, 32, 131072, 0);
    CHECK(b[0] == a[0] && fabsf(b[7] - a[7] / 1.07f) < 1e-6f * a[7], "longrope at load: the short factors");
    CHECK(fabsf(af - (float)sqrt(1 + log(32.0) / log(4096.0))) < 1e-6f, "longrope attention factor from the factor");
    hc_rope_inv_freq(b, &af, &lr, 32, 131072, 4096);
    CHECK(fabsf(b[7] - a[7] / 1.07f) < 1e-6f * a[7], "longrope up to the pretrained context: short");
    hc_rope_inv_freq(b, &af, &lr, 32, 131072, 4097);
    CHECK(fabsf(b[7] - a[7] / 8) < 1e-6f * a[7], "longrope past it: long");
    lr.attention_factor = 1.25;
    hc_rope_inv_freq(b, &af, &lr, 32, 131072, 4097);
    CHECK(af == 1.25f, "longrope attention_factor as given");
    lr.attention_factor = 0, lr.factor = 1;
    hc_rope_inv_freq(b, &af, &lr, 32, 4096, 1);
    CHECK(af == 1.0f, "longrope without scaling: attention factor 1");
}

/* The fast kernels against the reference: odd sizes, every weight format, T = 1 and blocks,
 * and the same bits with 1 and 2 threads. */
static void test_fast_matmul(hc_backend *ref) {
    hc_backend *fast1, *fast2;
    CHECK_OK(hc_backend_cpu_fast_new(1, &fast1));
    CHECK_OK(hc_backend_cpu_fast_new(2, &fast2));
    hc_backend *fastbf, *fastbf1; /* bf16 compute, 2 threads and 1 */
    CHECK_OK(hc_backend_cpu_fast_new(2, &fastbf));
    CHECK_OK(hc_backend_cpu_fast_new(1, &fastbf1));
    if (!fast1 || !fast2 || !fastbf || !fastbf1) return;
    hc_backend_cpu_fast_bf16_compute(fastbf, true);
    hc_backend_cpu_fast_bf16_compute(fastbf1, true);
    printf("  fast kernels: %s\n", hc_cpu_kernels());
    const int64_t shapes[][3] = {{1, 37, 13}, {3, 64, 29}, {5, 100, 17}, {9, 71, 33}, {1, 160, 64}, {1, 96, 7}, {1, 64, 22}, {67, 96, 40}, {19, 200, 23}, {4, 2048, 300}, {1, 768, 19}, {6, 512, 21}, {1, 224, 9}, {5, 224, 18}, {1, 288, 35}, {7, 416, 6},
                                 /* 8 tokens and more: the rows-across-lanes prompt kernels (q4_k too) */
                                 {9, 512, 37}, {16, 768, 20}, {8, 2048, 17},
                                 /* bf16 prompts: panels of 64 rows (partial ones too), k in blocks of 1024, odd K */
                                 {21, 2100, 130}, {17, 101, 30},
                                 /* decode rows past 2048 values go several at a time: tails of rows and of k */
                                 {1, 2100, 23}, {1, 8192, 10},
                                 /* r16 layouts: whole groups of 16 rows, a lone last block (K/32 odd), tail rows */
                                 {1, 2048, 48}, {3, 96, 32}, {1, 96, 16}, {9, 96, 33}, {2, 160, 35}, {1, 8192, 16}, {7, 64, 64},
                                 /* q4_kr16: super-blocks of 256, whole groups and tails, every token path */
                                 {1, 512, 32}, {3, 768, 35}, {12, 256, 48}, {1, 2048, 17},
                                 /* decode in chunks of rows that a thread done with its slice takes from the other's */
                                 {1, 4096, 200},
                                 /* bf16r16: whole groups and tails, K not a multiple of 32, prompts past 16 tokens */
                                 {1, 70, 35}, {17, 70, 35}, {24, 2048, 80}, {1, 2048, 1043}, {5, 22, 16}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t T = shapes[si][0], K = shapes[si][1], N = shapes[si][2];
        float *q4_ref = malloc(sizeof(float) * (size_t)(T * N)); /* [T, N] the reference on plain q4_0 */
        float *q8_ref = malloc(sizeof(float) * (size_t)(T * N)); /* [T, N] and on plain q8_0 */
        float *q4k_ref = malloc(sizeof(float) * (size_t)(T * N)); /* [T, N] and on plain q4_k */
        float *x = malloc(sizeof(float) * (size_t)(T * K)), *wf = malloc(sizeof(float) * (size_t)(N * K));
        uint16_t *wb = malloc(2 * (size_t)(N * K)), *wh = malloc(2 * (size_t)(N * K));
        float *a = malloc(sizeof(float) * (size_t)(T * N)), *b = malloc(sizeof(float) * (size_t)(T * N)),
              *c = malloc(sizeof(float) * (size_t)(T * N)), bias[4200];
        fill(x, T * K);
        fill(wf, N * K);
        fill(bias, N);
        for (int64_t i = 0; i < N * K; i++) wb[i] = hc_f32_to_bf16(wf[i]), wh[i] = hc_f32_to_f16(wf[i]);
        hc_vec bv = {.data = bias, .dtype = HC_DTYPE_F32, .n = N};
        for (int fmt = 0; fmt < 10; fmt++) { /* f32 bf16 f16 q8_0 q4_0 q4_k q4_0x4 q4_0r16 q8_0r16 q4_kr16 */
            hc_mat w = {.rows = N, .cols = K, .ld = K};
            void *qbuf = NULL;
            if (fmt < 3) {
                w.dtype = fmt == 0 ? HC_DTYPE_F32 : fmt == 1 ? HC_DTYPE_BF16 : HC_DTYPE_F16;
                w.data = fmt == 0 ? (void *)wf : fmt == 1 ? (void *)wb : (void *)wh;
            } else {
                const int quants[] = {HC_QUANT_Q8_0, HC_QUANT_Q4_0, HC_QUANT_Q4_K, HC_QUANT_Q4_0X4, HC_QUANT_Q4_0R16,
                                      HC_QUANT_Q8_0R16, HC_QUANT_Q4_KR16};
                w.quant = quants[fmt - 3];
                if (K % hc_quant_block_elems(w.quant)) continue;
                const size_t rb = hc_quant_row_bytes(w.quant, K);
                qbuf = malloc(rb * (size_t)N);
                for (int64_t n = 0; n < N; n++) hc_quantize_mat_row(w.quant, qbuf, N, K, n, wf + n * K);
                w.data = qbuf;
            }
            ref->matmul(ref, a, x, &w, &bv, T);
            if (fmt == 3) memcpy(q8_ref, a, sizeof(float) * (size_t)(T * N));
            if (fmt == 5) memcpy(q4k_ref, a, sizeof(float) * (size_t)(T * N));
            if (fmt == 4) memcpy(q4_ref, a, sizeof(float) * (size_t)(T * N));
            /* q4_0x4 and the r16 layouts are q4_0's and q8_0's numbers in another order: the
             * reference gives the same bits */
            if (fmt >= 6)
                CHECK(!memcmp(fmt == 8 ? q8_ref : fmt == 9 ? q4k_ref : q4_ref, a, sizeof(float) * (size_t)(T * N)), "layout %d = its format (K=%lld N=%lld)",
                      w.quant, (long long)K, (long long)N);
            fast1->matmul(fast1, b, x, &w, &bv, T);
            fast2->matmul(fast2, c, x, &w, &bv, T);
            double err = 0, scale = 0;
            for (int64_t i = 0; i < T * N; i++) err = fmax(err, fabs((double)a[i] - b[i])), scale = fmax(scale, fabs(a[i]));
            /* Quantized weights meet activations quantized to 8 bits, as in llama.cpp: a relative bound. */
            const double tol = fmt < 3 ? 1e-4 : 0.02 * scale;
            CHECK(err < tol, "fast matmul T=%lld K=%lld N=%lld fmt %d: %g (tol %g)", (long long)T, (long long)K,
                  (long long)N, fmt, err, tol);
            CHECK(!memcmp(b, c, sizeof(float) * (size_t)(T * N)), "1 and 2 threads give the same bits (fmt %d)", fmt);
            /* (q4_0x4 and r16 have kernels only where quantize on load picks them: VNNI) */
            const bool x4_kernels = hc_cpu_quant_layout(NULL, HC_QUANT_Q4_0) != HC_QUANT_Q4_0;
            if (fmt >= 3 && strcmp(hc_cpu_kernels(), "scalar") && (fmt < 6 || x4_kernels)) {
                /* Tighter (SIMD kernels; scalar runs the reference): the fast kernels compute exactly the reference's product with activations
                 * rounded as they quantize them (per group of 32, or 256 for q4_k: d = max|x|/127, q = rint(x/d)). */
                float *xq = malloc(sizeof(float) * (size_t)(T * K)); /* [T, K] */
                const int G = w.quant == HC_QUANT_Q4_K || w.quant == HC_QUANT_Q4_KR16 ? 256 : 32;
                for (int64_t i = 0; i < T * K; i += G) {
                    float amax = 0;
                    for (int j = 0; j < G; j++) amax = fmaxf(amax, fabsf(x[i + j]));
                    const float d = amax / 127.0f, id = d ? 1.0f / d : 0;
                    for (int j = 0; j < G; j++) xq[i + j] = d * rintf(x[i + j] * id);
                }
                ref->matmul(ref, a, xq, &w, &bv, T);
                double eq = 0, sq = 0;
                for (int64_t i = 0; i < T * N; i++) eq = fmax(eq, fabs((double)a[i] - b[i])), sq = fmax(sq, fabs(a[i]));
                CHECK(eq < 1e-5 * sq, "fast quantized matmul T=%lld K=%lld N=%lld fmt %d (%s) = reference on q8 acts: %g",
                      (long long)T, (long long)K, (long long)N, fmt, hc_cpu_has_vnni() ? "vnni" : "avx2", eq / sq);
                free(xq);
            }
            if (fmt < 3) { /* the same weights stored transposed ([K, N], GPT-2's layout, and dx = dy W) */
                const size_t es = hc_dtype_size(w.dtype);
                char *wt = malloc(es * (size_t)(N * K));
                for (int64_t n = 0; n < N; n++)
                    for (int64_t kk = 0; kk < K; kk++) memcpy(wt + es * (size_t)(kk * N + n), (const char *)w.data + es * (size_t)(n * K + kk), es);
                hc_mat wtv = {.data = wt, .dtype = w.dtype, .rows = N, .cols = K, .ld = N, .transposed = true};
                fast1->matmul(fast1, b, x, &wtv, &bv, T);
                fast2->matmul(fast2, c, x, &wtv, &bv, T);
                double et = 0;
                for (int64_t i = 0; i < T * N; i++) et = fmax(et, fabs((double)a[i] - b[i]));
                /* its sums run in another order than the reference's: the rounding grows with K */
                const double tol_t = 1e-4 * (K > 2048 ? (double)K / 2048 : 1.0);
                CHECK(et < tol_t, "fast transposed matmul T=%lld K=%lld N=%lld fmt %d: %g", (long long)T, (long long)K,
                      (long long)N, fmt, et);
                CHECK(!memcmp(b, c, sizeof(float) * (size_t)(T * N)), "transposed: 1 and 2 threads give the same bits");
                free(wt);
            }
            if (fmt == 1) {
                /* With bf16 compute on, every product on bf16 weights takes the vdpbf16ps paths
                 * where the CPU has them (decode, a few tokens, prompts as panels): then the
                 * result is the reference on bf16-rounded activations, the same bits on 1 and 2
                 * threads. */
                fastbf->matmul(fastbf, c, x, &w, &bv, T);
                fastbf1->matmul(fastbf1, b, x, &w, &bv, T);
                CHECK(!memcmp(b, c, sizeof(float) * (size_t)(T * N)), "bf16 compute: 1 and 2 threads give the same bits (T=%lld K=%lld N=%lld)",
                      (long long)T, (long long)K, (long long)N);
                const bool dot16 = !strcmp(hc_cpu_kernels(), "avx512") && __builtin_cpu_supports("avx512bf16");
                if (dot16) {
                    float *xr = malloc(sizeof(float) * (size_t)(T * K)); /* [T, K] */
                    for (int64_t i = 0; i < T * K; i++) xr[i] = hc_bf16_to_f32(hc_f32_to_bf16(x[i]));
                    ref->matmul(ref, a, xr, &w, &bv, T);
                    free(xr);
                }
                double eb = 0;
                for (int64_t i = 0; i < T * N; i++) eb = fmax(eb, fabs((double)a[i] - c[i]));
                CHECK(eb < 1e-4, "bf16 compute T=%lld K=%lld N=%lld (%s): %g", (long long)T, (long long)K, (long long)N,
                      dot16 ? "vdpbf16ps = reference on bf16 activations" : "f32 = reference", eb);
                if (K % 2 == 0) {
                    /* The same weights repacked into bf16r16 (16 rows interleaved by pairs, the
                     * rows past the last whole group plain), as the CPU repacks bf16 weights read
                     * into RAM for inference. */
                    uint16_t *w16 = malloc(2 * (size_t)(N * K));
                    for (int64_t n = 0; n < N; n++) hc_quantize_mat_row(HC_QUANT_BF16R16, w16, N, K, n, wf + n * K);
                    hc_mat wr = {.data = w16, .rows = N, .cols = K, .ld = K, .dtype = HC_DTYPE_BF16, .quant = HC_QUANT_BF16R16};
                    float *r1 = malloc(sizeof(float) * (size_t)(T * N)), *r2 = malloc(sizeof(float) * (size_t)(T * N)),
                          *fref = malloc(sizeof(float) * (size_t)(T * N)); /* [T, N] each */
                    /* the reference reads the layout too (f32 activations) */
                    ref->matmul(ref, r1, x, &wr, &bv, T);
                    ref->matmul(ref, fref, x, &w, &bv, T);
                    double e2 = 0;
                    for (int64_t i = 0; i < T * N; i++) e2 = fmax(e2, fabs((double)r1[i] - fref[i]));
                    CHECK(e2 < 1e-4, "bf16r16 reference T=%lld K=%lld N=%lld: %g", (long long)T, (long long)K, (long long)N, e2);
                    /* f32 and bf16 compute (AVX-512: FMAs on the widened pairs, vdpbf16ps; else the
                     * reference): the same bits on 1 and 2 threads, the reference's numbers (on
                     * bf16-rounded activations for vdpbf16ps), and for prompts the packed GEMM's
                     * bits on the stored layout, pair by pair */
                    for (int bf = 0; bf < 2; bf++) {
                        hc_backend *one = bf ? fastbf1 : fast1, *two = bf ? fastbf : fast2;
                        const float *want = bf ? a : fref;
                        one->matmul(one, r1, x, &wr, &bv, T);
                        two->matmul(two, r2, x, &wr, &bv, T);
                        CHECK(!memcmp(r1, r2, sizeof(float) * (size_t)(T * N)), "bf16r16 (%s): 1 and 2 threads give the same bits (T=%lld K=%lld N=%lld)",
                              bf ? "bf16" : "f32", (long long)T, (long long)K, (long long)N);
                        double er = 0;
                        for (int64_t i = 0; i < T * N; i++) er = fmax(er, fabs((double)want[i] - r2[i]));
                        CHECK(er < 1e-4, "bf16r16 (%s) T=%lld K=%lld N=%lld: %g", bf ? "bf16" : "f32", (long long)T, (long long)K, (long long)N, er);
                        if (T >= 16 && (bf ? dot16 : !strcmp(hc_cpu_kernels(), "avx512"))) {
                            two->matmul(two, r1, x, &w, &bv, T);
                            for (int64_t t = 0; t < T; t++)
                                CHECK(!memcmp(r1 + t * N, r2 + t * N, sizeof(float) * (size_t)(N / 16 * 16)),
                                      "bf16r16 (%s) prompt = the packed GEMM's bits (T=%lld K=%lld N=%lld)", bf ? "bf16" : "f32", (long long)T,
                                      (long long)K, (long long)N);
                        }
                    }
                    free(fref);
                    free(w16), free(r1), free(r2);
                }
            }
            free(qbuf);
        }
        free(x), free(wf), free(wb), free(wh), free(a), free(b), free(c), free(q4_ref), free(q8_ref), free(q4k_ref);
    }
    /* Quantization error is what the formats promise. */
    float row[64], back[64];
    fill(row, 64);
    uint8_t q[200];
    hc_quantize_row(HC_QUANT_Q8_0, q, row, 64);
    hc_dequantize_row(HC_QUANT_Q8_0, back, q, 64);
    double e8 = 0, e4 = 0;
    for (int i = 0; i < 64; i++) e8 = fmax(e8, fabs(row[i] - back[i]));
    hc_quantize_row(HC_QUANT_Q4_0, q, row, 64);
    hc_dequantize_row(HC_QUANT_Q4_0, back, q, 64);
    for (int i = 0; i < 64; i++) e4 = fmax(e4, fabs(row[i] - back[i]));
    CHECK(e8 < 1.0 / 127 && e4 < 1.0 / 7, "quantization error q8_0 %g, q4_0 %g", e8, e4);
    float row256[256], back256[256];
    fill(row256, 256);
    hc_quantize_row(HC_QUANT_Q4_K, q, row256, 256);
    hc_dequantize_row(HC_QUANT_Q4_K, back256, q, 256);
    double ek = 0;
    for (int i = 0; i < 256; i++) ek = fmax(ek, fabs(row256[i] - back256[i]));
    CHECK(ek < 2.0 / 15 && hc_quant_row_bytes(HC_QUANT_Q4_K, 256) == 144, "q4_k error %g", ek);
    /* rope (SIMD rotation, on the pool): the reference's bits; partial rotary with a tail,
     * a full 128-wide head with an attention factor, a few tokens (one thread) */
    for (int cfg = 0; cfg < 3; cfg++) {
        const int64_t T = cfg == 2 ? 3 : 300, nh = cfg ? 3 : 4, D = cfg ? 128 : 64, R = cfg ? 128 : 48;
        const float factor = cfg ? 1.25f : 1.0f;
        float *x1 = malloc(sizeof(float) * T * nh * D), *x2 = malloc(sizeof(float) * T * nh * D), inv[64];
        int32_t *pos = malloc(sizeof(int32_t) * T);
        fill(x1, T * nh * D);
        memcpy(x2, x1, sizeof(float) * T * nh * D);
        for (int i = 0; i < R / 2; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)R);
        for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(t * 7);
        ref->rope(ref, x1, pos, inv, factor, T, nh, D, R);
        fast2->rope(fast2, x2, pos, inv, factor, T, nh, D, R);
        CHECK(!memcmp(x1, x2, sizeof(float) * T * nh * D), "fast rope gives the reference's bits (case %d)", cfg);
        free(x1), free(x2), free(pos);
    }
    /* The matmul's backward: fast (threaded dW) against the reference, and 1 vs 2 threads. */
    for (int cfg = 0; cfg < 4; cfg++) {
        const int64_t T = cfg == 3 ? 1 : 19, N = cfg == 2 ? 300 : 45, K = 70, ld = cfg == 1 ? N + 3 : K + 2;
        const bool tr = cfg == 1;
        const int64_t rows = tr ? K : N;
        float *wf = malloc(sizeof(float) * rows * ld), *xx = malloc(sizeof(float) * T * K), *go = malloc(sizeof(float) * T * N);
        float *r[3], *f1[3], *f2[3];
        const int64_t sz[3] = {T * K, rows * ld, N};
        fill(wf, rows * ld), fill(xx, T * K), fill(go, T * N);
        for (int i = 0; i < 3; i++) {
            r[i] = malloc(sizeof(float) * sz[i]), f1[i] = malloc(sizeof(float) * sz[i]), f2[i] = malloc(sizeof(float) * sz[i]);
            fill(r[i], sz[i]);
            memcpy(f1[i], r[i], sizeof(float) * sz[i]), memcpy(f2[i], r[i], sizeof(float) * sz[i]);
        }
        hc_mat w = {.data = wf, .dtype = HC_DTYPE_F32, .rows = N, .cols = K, .ld = ld, .transposed = tr};
        ref->matmul_backward(ref, r[0], r[1], r[2], go, xx, &w, T);
        fast1->matmul_backward(fast1, f1[0], f1[1], f1[2], go, xx, &w, T);
        fast2->matmul_backward(fast2, f2[0], f2[1], f2[2], go, xx, &w, T);
        for (int i = 0; i < 3; i++) {
            double err = 0, scale = 0;
            for (int64_t e = 0; e < sz[i]; e++) err = fmax(err, fabs((double)r[i][e] - f1[i][e])), scale = fmax(scale, fabs(r[i][e]));
            CHECK(err <= 1e-5 * scale, "fast matmul backward (case %d, %s): %g of %g", cfg, i == 0 ? "dx" : i == 1 ? "dW" : "db",
                  err, scale);
            CHECK(!memcmp(f1[i], f2[i], sizeof(float) * sz[i]), "fast matmul backward: same bits with 1 and 2 threads");
            free(r[i]), free(f1[i]), free(f2[i]);
        }
        free(wf), free(xx), free(go);
    }
    /* Attention's backward: the fast path against the reference, and 1 vs 2 threads bit for bit. */
    for (int cfg = 0; cfg < 3; cfg++) {
        const int64_t T = 37, H = 6, KVH = cfg == 2 ? 1 : 3, D = cfg == 1 ? 20 : 64;
        const int64_t nq = T * H * D, nk = T * KVH * D, window = cfg == 1 ? 9 : 0;
        const float cap = cfg == 1 ? 20.0f : 0;
        float *qa = malloc(sizeof(float) * nq), *k = malloc(sizeof(float) * nk), *v = malloc(sizeof(float) * nk);
        float *go = malloc(sizeof(float) * nq), *scratch = malloc(sizeof(float) * (2 * T + 2));
        float *r[3], *f1[3], *f2[3];
        const int64_t sz[3] = {nq, nk, nk};
        for (int i = 0; i < 3; i++)
            r[i] = malloc(sizeof(float) * sz[i]), f1[i] = malloc(sizeof(float) * sz[i]), f2[i] = malloc(sizeof(float) * sz[i]);
        int32_t pos[37];
        for (int t = 0; t < T; t++) pos[t] = t;
        fill(qa, nq), fill(k, nk), fill(v, nk), fill(go, nq);
        ref->attention_backward(ref, r[0], r[1], r[2], go, NULL, NULL, qa, k, v, pos, 1, T, H, KVH, D, 0.3f, window, cap, scratch);
        fast1->attention_backward(fast1, f1[0], f1[1], f1[2], go, NULL, NULL, qa, k, v, pos, 1, T, H, KVH, D, 0.3f, window, cap, scratch);
        fast2->attention_backward(fast2, f2[0], f2[1], f2[2], go, NULL, NULL, qa, k, v, pos, 1, T, H, KVH, D, 0.3f, window, cap, scratch);
        for (int i = 0; i < 3; i++) {
            double err = 0, scale = 0;
            for (int64_t x = 0; x < sz[i]; x++) err = fmax(err, fabs((double)r[i][x] - f1[i][x])), scale = fmax(scale, fabs(r[i][x]));
            CHECK(err <= 1e-5 * scale, "fast attention backward (case %d, %s): %g of %g", cfg, i == 0 ? "dq" : i == 1 ? "dk" : "dv",
                  err, scale);
            CHECK(!memcmp(f1[i], f2[i], sizeof(float) * sz[i]), "fast attention backward: same bits with 1 and 2 threads");
            free(r[i]), free(f1[i]), free(f2[i]);
        }
        /* Two sequences in one call: each as it is alone (the second's rows after the first's),
         * forward (attention_train) and backward. */
        {
            float *q2 = malloc(sizeof(float) * 2 * nq), *k2 = malloc(sizeof(float) * 2 * nk), *v2 = malloc(sizeof(float) * 2 * nk);
            float *g2 = malloc(sizeof(float) * 2 * nq), *o2 = malloc(sizeof(float) * 2 * nq), *res = malloc(sizeof(float) * 2 * T * H);
            float *d2[3], *d1[3], *o1 = malloc(sizeof(float) * nq);
            const int64_t sz2[3] = {nq, nk, nk};
            for (int i = 0; i < 3; i++) d2[i] = malloc(sizeof(float) * 2 * sz2[i]), d1[i] = malloc(sizeof(float) * sz2[i]);
            fill(q2, 2 * nq), fill(k2, 2 * nk), fill(v2, 2 * nk), fill(g2, 2 * nq);
            fast2->attention_train(fast2, o2, res, q2, k2, v2, pos, 2, T, H, KVH, D, 0.3f, window, cap, scratch);
            fast2->attention_backward(fast2, d2[0], d2[1], d2[2], g2, o2, res, q2, k2, v2, pos, 2, T, H, KVH, D, 0.3f, window, cap,
                                      scratch);
            for (int b = 0; b < 2; b++) {
                fast2->attention(fast2, o1, q2 + b * nq, k2 + b * nk, v2 + b * nk, HC_DTYPE_F32, pos, T, H, KVH, D, 0.3f, window,
                                 cap, T, scratch);
                CHECK(!memcmp(o1, o2 + b * nq, sizeof(float) * nq), "attention_train: sequence %d as alone (case %d)", b, cfg);
                fast2->attention_backward(fast2, d1[0], d1[1], d1[2], g2 + b * nq, o1, NULL, q2 + b * nq, k2 + b * nk, v2 + b * nk,
                                          pos, 1, T, H, KVH, D, 0.3f, window, cap, scratch);
                for (int i = 0; i < 3; i++)
                    CHECK(!memcmp(d1[i], d2[i] + b * sz2[i], sizeof(float) * sz2[i]),
                          "attention backward of two sequences: sequence %d's %s as alone (case %d)", b,
                          i == 0 ? "dq" : i == 1 ? "dk" : "dv", cfg);
            }
            for (int i = 0; i < 3; i++) free(d2[i]), free(d1[i]);
            free(q2), free(k2), free(v2), free(g2), free(o2), free(res), free(o1);
        }
        free(qa), free(k), free(v), free(go), free(scratch);
    }
    /* Attention: the fast path against the reference, and 1 vs 2 threads bit for bit: a head dim
     * of no vector width (the per-key path), and the grouped path's 64 and 128 (4 query heads a KV
     * head; 10 with one KV head, so an item takes 4, 4 and 2), prompts and decode. */
    const struct {
        int64_t T, H, KVH, D;
    } att_cases[] = {{7, 8, 2, 67}, {7, 8, 2, 64}, {1, 32, 8, 64}, {5, 10, 1, 128}, {1, 10, 1, 128}};
    for (size_t ac = 0; ac < sizeof att_cases / sizeof att_cases[0]; ac++) {
        const int64_t T = att_cases[ac].T, H = att_cases[ac].H, KVH = att_cases[ac].KVH, D = att_cases[ac].D, S = 300;
        float *qv = malloc(sizeof(float) * T * H * D), *kc = malloc(sizeof(float) * S * KVH * D),
              *vc = malloc(sizeof(float) * S * KVH * D), *o1 = malloc(sizeof(float) * T * H * D),
              *o2 = malloc(sizeof(float) * T * H * D), *o3 = malloc(sizeof(float) * T * H * D), scratch[300];
        fill(qv, T * H * D);
        fill(kc, S * KVH * D);
        fill(vc, S * KVH * D);
        int32_t pos[7];
        for (int w = 0; w < 3; w++) { /* the last: fewer keys than a block of 16 */
            for (int t = 0; t < T; t++) pos[t] = (w == 2 ? 3 : 250) + t;
            const int64_t win = w == 1 ? 40 : 0;
            const float cap = w == 1 ? 30.0f : 0;
            ref->attention(ref, o1, qv, kc, vc, HC_DTYPE_F32, pos, T, H, KVH, D, 0.2f, win, cap, 0, scratch);
            fast1->attention(fast1, o2, qv, kc, vc, HC_DTYPE_F32, pos, T, H, KVH, D, 0.2f, win, cap, 0, scratch);
            fast2->attention(fast2, o3, qv, kc, vc, HC_DTYPE_F32, pos, T, H, KVH, D, 0.2f, win, cap, 0, scratch);
            double err = 0;
            for (int64_t i = 0; i < T * H * D; i++) err = fmax(err, fabs((double)o1[i] - o2[i]));
            CHECK(err < 1e-5, "fast attention (D %d, window %d): %g", (int)D, w, err);
            CHECK(!memcmp(o2, o3, sizeof(float) * T * H * D), "fast attention (D %d): same bits with 1 and 2 threads", (int)D);
        }
        /* 16-bit caches: store with set_rows, attend, compare with f32 within the rounding. */
        for (int dt = 0; dt < 2; dt++) {
            hc_dtype kd = dt ? HC_DTYPE_BF16 : HC_DTYPE_F16;
            uint16_t *k16 = malloc(2 * S * KVH * D), *v16 = malloc(2 * S * KVH * D);
            int32_t all[300];
            for (int i = 0; i < S; i++) all[i] = i;
            ref->set_rows(ref, k16, kd, kc, all, S, KVH * D);
            ref->set_rows(ref, v16, kd, vc, all, S, KVH * D);
            for (int t = 0; t < T; t++) pos[t] = 250 + t;
            ref->attention(ref, o1, qv, kc, vc, HC_DTYPE_F32, pos, T, H, KVH, D, 0.2f, 0, 0, 0, scratch);
            ref->attention(ref, o2, qv, k16, v16, kd, pos, T, H, KVH, D, 0.2f, 0, 0, 0, scratch);
            fast2->attention(fast2, o3, qv, k16, v16, kd, pos, T, H, KVH, D, 0.2f, 0, 0, 0, scratch);
            double e16 = 0, ef = 0;
            for (int64_t i = 0; i < T * H * D; i++) {
                e16 = fmax(e16, fabs((double)o1[i] - o2[i]));
                ef = fmax(ef, fabs((double)o2[i] - o3[i]));
            }
            CHECK(e16 < (dt ? 2e-2 : 3e-3) && ef < 1e-5, "%s KV cache (D %d): %g vs f32, fast %g", dt ? "bf16" : "f16", (int)D,
                  e16, ef);
            free(k16);
            free(v16);
        }
        free(qv), free(kc), free(vc), free(o1), free(o2), free(o3);
    }
    fast1->destroy(fast1);
    fast2->destroy(fast2);
    fastbf->destroy(fastbf);
    fastbf1->destroy(fastbf1);
}

/* Largest |a - b| relative to max(|b|, floor). */
static double rel_diff(const float *a, const float *b, int64_t n, double floor) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - b[i]) / fmax(fabs((double)b[i]), floor);
        if (!(d <= m)) m = d;
    }
    return m;
}

/* Decode's fused products on the fast backend (matmul_n's q, k, v; gate and up with their glu
 * in one pass of the pool) give the bits of the op sequence, with 1 and 2 threads, in every
 * weight format: each row is computed as one matmul computes it and glu is elementwise. */
/* q4_k decode with activations at the ends of their range: whole super-blocks of x at +max and
 * -max (every q = +-127, so each block's sum is +-4064, the largest the integer mins take) and
 * alternating signs, against the reference on the same rounded activations. */
static void test_q4k_extreme_acts(hc_backend *ref) {
    hc_backend *fast;
    CHECK_OK(hc_backend_cpu_fast_new(2, &fast));
    if (!fast) return;
    enum { K = 1024, N = 48 };
    float *wf = malloc(sizeof(float) * N * K), x[K], xq[K], a[N], b[N];
    fill(wf, (int64_t)N * K);
    for (int i = 0; i < K; i++) x[i] = i < 256 ? 3.0f : i < 512 ? -3.0f : i < 768 ? (i % 2 ? 3.0f : -3.0f) : (i % 3 ? 0.5f : -3.0f);
    for (int i = 0; i < K; i += 256) { /* as quantize_acts rounds them: one scale per 256 */
        float amax = 0;
        for (int j = 0; j < 256; j++) amax = fmaxf(amax, fabsf(x[i + j]));
        const float d = amax / 127.0f, id = 1.0f / d;
        for (int j = 0; j < 256; j++) xq[i + j] = d * rintf(x[i + j] * id);
    }
    const int quants[] = {HC_QUANT_Q4_K, HC_QUANT_Q4_KR16};
    /* (the scalar kernels, and q4_kr16 without VNNI, take the reference on unrounded x) */
    const int layouts = !strcmp(hc_cpu_kernels(), "scalar") ? 0 : hc_cpu_quant_layout(NULL, HC_QUANT_Q4_K) == HC_QUANT_Q4_K ? 1 : 2;
    for (int qi = 0; qi < layouts; qi++) {
        const size_t rb = hc_quant_row_bytes(quants[qi], K);
        void *q = malloc(rb * N);
        for (int n = 0; n < N; n++) hc_quantize_mat_row(quants[qi], q, N, K, n, wf + (size_t)n * K);
        hc_mat w = {.data = q, .rows = N, .cols = K, .ld = K, .quant = quants[qi]};
        ref->matmul(ref, a, xq, &w, NULL, 1);
        fast->matmul(fast, b, x, &w, NULL, 1);
        double e = 0, sc = 0;
        for (int n = 0; n < N; n++) e = fmax(e, fabs((double)a[n] - b[n])), sc = fmax(sc, fabs(a[n]));
        CHECK(e < 1e-5 * sc, "q4_k layout %d decode on activations at +-max: %g of %g", quants[qi], e, sc);
        free(q);
    }
    free(wf);
    fast->destroy(fast);
}

static void test_fast_fused(void) {
    hc_backend *fast1, *fast2;
    CHECK_OK(hc_backend_cpu_fast_new(1, &fast1));
    CHECK_OK(hc_backend_cpu_fast_new(2, &fast2));
    if (!fast1 || !fast2) return;
    const int64_t shapes[][3] = {{2048, 512, 128}, {512, 300, 96}, {768, 1000, 200}}; /* K, N of q and gate, N of k and v */
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t K = shapes[si][0], N = shapes[si][1], NK = shapes[si][2];
        float *x = malloc(sizeof(float) * (size_t)K), *wf = malloc(sizeof(float) * (size_t)(3 * N * K));
        float *seq = malloc(sizeof(float) * (size_t)(3 * N)), *one = malloc(sizeof(float) * (size_t)(3 * N)),
              *two = malloc(sizeof(float) * (size_t)(3 * N)), *tmp = malloc(sizeof(float) * (size_t)N), bias[3][1000];
        uint16_t *wb = malloc(2 * (size_t)(3 * N * K));
        fill(x, K);
        fill(wf, 3 * N * K);
        for (int i = 0; i < 3; i++) fill(bias[i], N);
        for (int64_t i = 0; i < 3 * N * K; i++) wb[i] = hc_f32_to_bf16(wf[i]);
        /* f32 bf16 q8_0 q4_0 q4_k, and the layouts quantize on load picks here (r16 with VNNI);
         * then bf16 with bf16 compute (x rounded by each thread, decode_bf16dot) */
        const int quants[] = {0, 0, HC_QUANT_Q8_0, HC_QUANT_Q4_0, HC_QUANT_Q4_K, 0};
        for (int fmt = 0; fmt < 6; fmt++) {
            const bool bf16 = fmt == 1 || fmt == 5;
            hc_backend_cpu_fast_bf16_compute(fast1, fmt == 5);
            hc_backend_cpu_fast_bf16_compute(fast2, fmt == 5);
            const int quant = quants[fmt] ? hc_cpu_quant_layout(NULL, quants[fmt]) : 0;
            if (quant && K % hc_quant_block_elems(quant)) continue;
            hc_mat w[3];
            void *qbuf[3] = {NULL, NULL, NULL};
            for (int i = 0; i < 3; i++) {
                const int64_t rows = i == 0 ? N : NK;
                w[i] = (hc_mat){.rows = rows, .cols = K, .ld = K, .dtype = bf16 ? HC_DTYPE_BF16 : HC_DTYPE_F32};
                if (!quant) {
                    w[i].data = bf16 ? (void *)(wb + i * N * K) : (void *)(wf + i * N * K);
                    continue;
                }
                w[i].quant = quant;
                qbuf[i] = malloc(hc_quant_row_bytes(quant, K) * (size_t)rows);
                for (int64_t n = 0; n < rows; n++) hc_quantize_mat_row(quant, qbuf[i], rows, K, n, wf + (i * N + n) * K);
                w[i].data = qbuf[i];
            }
            const hc_mat *ws[3] = {&w[0], &w[1], &w[2]};
            hc_vec bv[3];
            for (int i = 0; i < 3; i++) bv[i] = (hc_vec){.data = bias[i], .dtype = HC_DTYPE_F32, .n = w[i].rows};
            const hc_vec *bs[3] = {&bv[0], &bv[1], &bv[2]};
            float *seq_o[3] = {seq, seq + N, seq + 2 * N}, *one_o[3] = {one, one + N, one + 2 * N},
                  *two_o[3] = {two, two + N, two + 2 * N};
            for (int i = 0; i < 3; i++) fast2->matmul(fast2, seq_o[i], x, ws[i], bs[i], 1);
            fast1->matmul_n(fast1, one_o, x, ws, bs, 3, 1);
            fast2->matmul_n(fast2, two_o, x, ws, bs, 3, 1);
            bool same = true;
            for (int i = 0; i < 3; i++) {
                const size_t bytes = sizeof(float) * (size_t)w[i].rows;
                same = same && !memcmp(seq_o[i], one_o[i], bytes) && !memcmp(seq_o[i], two_o[i], bytes);
            }
            CHECK(same, "fused q, k, v (fmt %d, K %lld): the bits of three matmuls", fmt, (long long)K);
            /* gate and up: the first matrix and another of the same shape */
            hc_mat up = w[0];
            void *ubuf = NULL;
            if (quant) {
                ubuf = malloc(hc_quant_row_bytes(quant, K) * (size_t)N);
                for (int64_t n = 0; n < N; n++) hc_quantize_mat_row(quant, ubuf, N, K, n, wf + (2 * N + n) * K);
                up.data = ubuf;
            } else {
                up.data = bf16 ? (void *)(wb + 2 * N * K) : (void *)(wf + 2 * N * K);
            }
            for (int act = 0; act < 2; act++) {
                const hc_activation a = act ? HC_ACT_GELU_TANH : HC_ACT_SILU;
                fast2->matmul(fast2, seq, x, &w[0], &bv[0], 1);
                fast2->matmul(fast2, tmp, x, &up, &bv[1], 1);
                fast2->glu(fast2, seq, seq, tmp, a, N);
                fast1->gated_matmul(fast1, one, tmp, x, &w[0], &bv[0], &up, &bv[1], a, 1);
                fast2->gated_matmul(fast2, two, tmp, x, &w[0], &bv[0], &up, &bv[1], a, 1);
                CHECK(!memcmp(seq, one, sizeof(float) * (size_t)N) && !memcmp(seq, two, sizeof(float) * (size_t)N),
                      "fused gate and up (fmt %d, K %lld, act %d): the bits of two matmuls and glu", fmt, (long long)K, act);
            }
            free(ubuf);
            for (int i = 0; i < 3; i++) free(qbuf[i]);
        }
        free(x), free(wf), free(wb), free(seq), free(one), free(two), free(tmp);
    }
    fast1->destroy(fast1);
    fast2->destroy(fast2);
}

/* The fast backend's norm and glu run SIMD kernels (vector_math.c) split over threads: within
 * a few ulps of the reference, and the same bits with one thread or two, for shapes above and
 * below the parallel threshold, tails of every length, and weights in f32, bf16 and f16. */
static void test_fast_elementwise(hc_backend *ref) {
    hc_backend *fast, *fast1;
    CHECK_OK(hc_backend_cpu_fast_new(2, &fast));
    CHECK_OK(hc_backend_cpu_fast_new(1, &fast1));
    if (!fast || !fast1) return;
    const int64_t shapes[][2] = {{1, 64}, {3, 50}, {2, 17}, {5, 7}, {64, 1024}, {37, 2049}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t T = shapes[si][0], C = shapes[si][1], n = T * C;
        float *x = malloc(sizeof(float) * (size_t)n), *y = malloc(sizeof(float) * (size_t)n); /* [T, C] */
        float *a = malloc(sizeof(float) * (size_t)n), *b = malloc(sizeof(float) * (size_t)n); /* [T, C] */
        float *b1 = malloc(sizeof(float) * (size_t)n);                                          /* [T, C] */
        float *wt = malloc(sizeof(float) * (size_t)C), *bias = malloc(sizeof(float) * (size_t)C); /* [C] */
        uint16_t *w16 = malloc(sizeof(uint16_t) * (size_t)C), *b16 = malloc(sizeof(uint16_t) * (size_t)C); /* [C] */
        fill(x, n);
        fill(y, n);
        for (int64_t i = 0; i < n; i++) x[i] = x[i] * 3.0f + 0.5f; /* an offset mean for LayerNorm */
        fill(wt, C);
        fill(bias, C);
        for (int dt = 0; dt < 3; dt++) {
            const hc_dtype wd = dt == 0 ? HC_DTYPE_F32 : dt == 1 ? HC_DTYPE_BF16 : HC_DTYPE_F16;
            for (int64_t c = 0; dt && c < C; c++) {
                w16[c] = dt == 1 ? hc_f32_to_bf16(wt[c]) : hc_f32_to_f16(wt[c]);
                b16[c] = dt == 1 ? hc_f32_to_bf16(bias[c]) : hc_f32_to_f16(bias[c]);
            }
            const hc_vec w = {.data = dt ? (const void *)w16 : wt, .dtype = wd, .n = C};
            const hc_vec bv = {.data = dt ? (const void *)b16 : bias, .dtype = wd, .n = C};
            for (int kind = 0; kind < 3; kind++) {
                hc_norm_kind k = kind == 0 ? HC_NORM_RMS : kind == 1 ? HC_NORM_RMS_PLUS1 : HC_NORM_LAYER;
                ref->norm(ref, a, x, &w, kind == 2 ? &bv : NULL, k, 1e-5f, T, C);
                fast->norm(fast, b, x, &w, kind == 2 ? &bv : NULL, k, 1e-5f, T, C);
                fast1->norm(fast1, b1, x, &w, kind == 2 ? &bv : NULL, k, 1e-5f, T, C);
                /* outputs are O(1): errors relative to max(|ref|, 1) */
                CHECK(rel_diff(b, a, n, 1.0) < 1e-6, "fast norm %d dtype %d at T=%lld C=%lld: %g", kind, dt,
                      (long long)T, (long long)C, rel_diff(b, a, n, 1.0));
                CHECK(memcmp(b, b1, sizeof(float) * (size_t)n) == 0, "fast norm %d: 1 and 2 threads differ", kind);
            }
        }
        /* the activations' whole range: the exponential's underflow and overflow included */
        for (int64_t i = 0; i < n; i += 7) x[i] = (float)((i / 7) % 41 - 20) * 5.5f;
        const hc_activation acts[] = {HC_ACT_SILU, HC_ACT_GELU_TANH, HC_ACT_GELU};
        for (size_t ai = 0; ai < 3; ai++) {
            ref->glu(ref, a, x, y, acts[ai], n);
            fast->glu(fast, b, x, y, acts[ai], n);
            fast1->glu(fast1, b1, x, y, acts[ai], n);
            /* The reference's 0.5 x (1 + tanh u) cancels for negative x (as torch's does); the
             * kernel's x / (1 + e^-2u) does not. Their gap stays within an ulp of tanh times x. */
            double worst = 0;
            for (int64_t i = 0; i < n; i++) {
                const double err = fabs((double)b[i] - a[i]) / (2e-6 * fabs(a[i]) + 1e-7 * fabs(x[i] * y[i]) + 1e-30);
                if (!(err <= worst)) worst = err;
            }
            CHECK(worst <= 1, "fast glu %zu at n=%lld: %g of the tolerance", ai, (long long)n, worst);
            CHECK(memcmp(b, b1, sizeof(float) * (size_t)n) == 0, "fast glu %zu: 1 and 2 threads differ", ai);
        }
        free(x), free(y), free(a), free(b), free(b1), free(wt), free(bias), free(w16), free(b16);
    }
    /* softmax's exponentials: exp(x - shift) and their sum, against expf */
    float e[203], want[203];
    double sum_want = 0;
    for (int i = 0; i < 203; i++) {
        e[i] = (float)(i - 150) * 0.75f - 3.0f;
        sum_want += (want[i] = expf(e[i] - 1.25f));
    }
    const double sum = hc_vec_exp_shift(e, 1.25f, 203);
    CHECK(rel_diff(e, want, 203, 1e-30) < 3e-7, "exp_shift: %g", rel_diff(e, want, 203, 1e-30));
    CHECK(fabs(sum - sum_want) < 1e-6 * sum_want, "exp_shift sum %.9g, want %.9g", sum, sum_want);
    fast->destroy(fast);
    fast1->destroy(fast1);
}

/* ---- backward: finite differences ------------------------------------------------------------
 * Each op's backward against central differences of L = sum(r * op(inputs)) for a random r, on
 * tiny random shapes, for every input element. */

typedef struct {
    hc_backend *be;
    int op;
    float *x, *w, *b, *k, *v, *r, *out, *scratch;
    int32_t *pos, *ids;
    int64_t T, N, K, H, KVH, D, R, n;
    hc_dtype wdt;
    int kind, act;
    int64_t window;
    float cap;
} fd_ctx;

enum { FD_MATMUL, FD_NORM, FD_ROPE, FD_ATTN, FD_GLU, FD_SOFTCAP, FD_EMBED, FD_ROUTE };

static double fd_loss(fd_ctx *c) {
    hc_backend *be = c->be;
    int64_t n = 0;
    switch (c->op) {
    case FD_MATMUL: {
        hc_mat w = {.data = c->w, .dtype = HC_DTYPE_F32, .rows = c->N, .cols = c->K, .ld = c->K};
        hc_vec b = {c->b, HC_DTYPE_F32, c->N};
        be->matmul(be, c->out, c->x, &w, &b, c->T);
        n = c->T * c->N;
        break;
    }
    case FD_NORM: {
        hc_vec w = {c->w, HC_DTYPE_F32, c->K}, b = {c->b, HC_DTYPE_F32, c->K};
        be->norm(be, c->out, c->x, &w, c->kind == HC_NORM_LAYER ? &b : NULL, (hc_norm_kind)c->kind, 1e-5f, c->T, c->K);
        n = c->T * c->K;
        break;
    }
    case FD_ROPE:
        memcpy(c->out, c->x, sizeof(float) * (size_t)(c->T * c->H * c->D));
        be->rope(be, c->out, c->pos, c->w, 1.1f, c->T, c->H, c->D, c->R);
        n = c->T * c->H * c->D;
        break;
    case FD_ATTN:
        be->attention(be, c->out, c->x, c->k, c->v, HC_DTYPE_F32, c->pos, c->T, c->H, c->KVH, c->D, 0.35f, c->window,
                      c->cap, c->T, c->scratch);
        n = c->T * c->H * c->D;
        break;
    case FD_GLU:
        be->glu(be, c->out, c->x, c->w, (hc_activation)c->act, c->n);
        n = c->n;
        break;
    case FD_SOFTCAP:
        memcpy(c->out, c->x, sizeof(float) * (size_t)c->n);
        be->softcap(be, c->out, 2.0f, c->n);
        n = c->n;
        break;
    case FD_ROUTE: { /* the weights, with the experts held as chosen (topk is flat between swaps) */
        int32_t e[64];
        be->topk_route(be, c->out, e, c->x, c->T, c->N, c->K, c->kind);
        n = c->T * c->K;
        break;
    }
    case FD_EMBED: {
        hc_mat t = {.data = c->w, .dtype = HC_DTYPE_F32, .rows = c->N, .cols = c->K, .ld = c->K};
        be->embedding(be, c->out, &t, c->ids, c->T, 1.7f, false);
        n = c->T * c->K;
        break;
    }
    }
    double l = 0;
    for (int64_t i = 0; i < n; i++) l += (double)c->r[i] * c->out[i];
    return l;
}

/* Compares ana[i] with the central difference over p[i] for all i < n. */
static void fd_compare(fd_ctx *c, const char *what, float *p, const float *ana, int64_t n) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        const float keep = p[i], h = 1e-2f * fmaxf(1.0f, fabsf(keep));
        p[i] = keep + h;
        const double lp = fd_loss(c);
        p[i] = keep - h;
        const double lm = fd_loss(c);
        p[i] = keep;
        const double num = (lp - lm) / (2.0 * h), err = fabs(num - ana[i]) / fmax(1.0, fabs(num));
        worst = fmax(worst, err);
    }
    CHECK(worst < 5e-3, "%s: backward differs from finite differences by %g", what, worst);
}

static void test_backward(hc_backend *be) {
    fd_ctx c = {.be = be};
    float *buf[12];
    for (int i = 0; i < 12; i++) buf[i] = calloc(4096, sizeof(float));
    float *dx = buf[8], *dw = buf[9], *db = buf[10], *d3 = buf[11];
    c.x = buf[0], c.w = buf[1], c.b = buf[2], c.k = buf[3], c.v = buf[4], c.r = buf[5], c.out = buf[6], c.scratch = buf[7];
    int32_t pos[8] = {0, 1, 2, 3, 4, 5, 6, 7}, ids[5] = {3, 0, 3, 6, 1};
    c.pos = pos, c.ids = ids;
    char what[64];

    /* matmul */
    c.op = FD_MATMUL, c.T = 3, c.N = 5, c.K = 7;
    fill(c.x, 21), fill(c.w, 35), fill(c.b, 5), fill(c.r, 15);
    memset(dw, 0, 4096 * 4), memset(db, 0, 4096 * 4);
    hc_mat w = {.data = c.w, .dtype = HC_DTYPE_F32, .rows = 5, .cols = 7, .ld = 7};
    be->matmul_backward(be, dx, dw, db, c.r, c.x, &w, 3);
    fd_compare(&c, "matmul dx", c.x, dx, 21);
    fd_compare(&c, "matmul dw", c.w, dw, 35);
    fd_compare(&c, "matmul db", c.b, db, 5);

    /* norms */
    for (int kind = 0; kind < 3; kind++) {
        c.op = FD_NORM, c.kind = kind, c.T = 3, c.K = 9;
        fill(c.x, 27), fill(c.w, 9), fill(c.b, 9), fill(c.r, 27);
        memset(dw, 0, 4096 * 4), memset(db, 0, 4096 * 4);
        hc_vec nw = {c.w, HC_DTYPE_F32, 9}, nb = {c.b, HC_DTYPE_F32, 9};
        be->norm_backward(be, dx, dw, db, c.r, c.x, &nw, kind == HC_NORM_LAYER ? &nb : NULL, (hc_norm_kind)kind, 1e-5f, 3, 9,
                          false);
        snprintf(what, sizeof what, "norm %d dx", kind);
        fd_compare(&c, what, c.x, dx, 27);
        float acc[27];
        for (int i = 0; i < 27; i++) acc[i] = 0.25f * (float)i;
        be->norm_backward(be, acc, NULL, NULL, c.r, c.x, &nw, kind == HC_NORM_LAYER ? &nb : NULL, (hc_norm_kind)kind, 1e-5f, 3,
                          9, true);
        bool same = true;
        for (int i = 0; i < 27; i++) same = same && acc[i] == 0.25f * (float)i + dx[i];
        CHECK(same, "norm %d: dx accumulates as the sum of dx and what was there", kind);
        snprintf(what, sizeof what, "norm %d dw", kind);
        fd_compare(&c, what, c.w, dw, 9);
        if (kind == HC_NORM_LAYER) fd_compare(&c, "layernorm db", c.b, db, 9);
    }

    /* rope, partial rotary */
    c.op = FD_ROPE, c.T = 3, c.H = 2, c.D = 8, c.R = 6;
    fill(c.x, 48), fill(c.r, 48);
    for (int i = 0; i < 3; i++) c.w[i] = powf(100.0f, -(float)i / 3.0f);
    memcpy(dx, c.r, 48 * 4);
    be->rope_backward(be, dx, pos, c.w, 1.1f, 3, 2, 8, 6);
    fd_compare(&c, "rope dx", c.x, dx, 48);

    /* attention: GQA, with and without window and soft-capping */
    for (int variant = 0; variant < 2; variant++) {
        c.op = FD_ATTN, c.T = 5, c.H = 4, c.KVH = 2, c.D = 3, c.window = variant ? 3 : 0, c.cap = variant ? 1.5f : 0;
        fill(c.x, 60), fill(c.k, 30), fill(c.v, 30), fill(c.r, 60);
        be->attention_backward(be, dx, dw, d3, c.r, NULL, NULL, c.x, c.k, c.v, pos, 1, 5, 4, 2, 3, 0.35f, c.window, c.cap, c.scratch);
        snprintf(what, sizeof what, "attention %d dq", variant);
        fd_compare(&c, what, c.x, dx, 60);
        snprintf(what, sizeof what, "attention %d dk", variant);
        fd_compare(&c, what, c.k, dw, 30);
        snprintf(what, sizeof what, "attention %d dv", variant);
        fd_compare(&c, what, c.v, d3, 30);
    }

    /* glu, every activation; softcap; embedding */
    for (int act = 0; act < 4; act++) {
        c.op = FD_GLU, c.act = act, c.n = 40;
        fill(c.x, 40), fill(c.w, 40), fill(c.r, 40);
        for (int i = 0; i < 40; i++) c.x[i] = c.x[i] * 3.0f + (fabsf(c.x[i]) < 0.05f ? 0.2f : 0.0f); /* off relu's kink */
        be->glu_backward(be, dx, dw, c.r, c.x, c.w, (hc_activation)act, 40);
        snprintf(what, sizeof what, "glu %d dgate", act);
        fd_compare(&c, what, c.x, dx, 40);
        snprintf(what, sizeof what, "glu %d dup", act);
        fd_compare(&c, what, c.w, dw, 40);
    }
    c.op = FD_SOFTCAP, c.n = 30;
    fill(c.x, 30), fill(c.r, 30);
    for (int i = 0; i < 30; i++) c.x[i] *= 4.0f;
    memcpy(c.out, c.x, 30 * 4);
    be->softcap(be, c.out, 2.0f, 30);
    be->softcap_backward(be, dx, c.r, c.out, 2.0f, 30);
    fd_compare(&c, "softcap dx", c.x, dx, 30);
    c.op = FD_EMBED, c.T = 5, c.N = 7, c.K = 4;
    fill(c.w, 28), fill(c.r, 20);
    memset(dw, 0, 4096 * 4);
    hc_mat tab = {.data = c.w, .dtype = HC_DTYPE_F32, .rows = 7, .cols = 4, .ld = 4};
    be->embedding_backward(be, dw, &tab, c.r, ids, 5, 1.7f);
    fd_compare(&c, "embedding dtable", c.w, dw, 28);
    /* MoE routing, with and without renormalising: 4 rows of 6 logits, top 2 */
    for (int renorm = 0; renorm < 2; renorm++) {
        c.op = FD_ROUTE, c.T = 4, c.N = 6, c.K = 2, c.kind = renorm;
        fill(c.x, 24), fill(c.r, 8);
        /* logits at least 0.6 apart, so the choice holds under +-h */
        for (int i = 0; i < 24; i++) c.x[i] = 0.8f * (float)((i % 6 * 5 + i / 6 * 3) % 6) - 2.0f + 0.1f * c.x[i];
        int32_t e[8];
        be->topk_route(be, c.out, e, c.x, 4, 6, 2, renorm);
        be->topk_route_backward(be, dx, c.r, e, c.x, 4, 6, 2, renorm);
        fd_compare(&c, renorm ? "topk_route dlogits (renorm)" : "topk_route dlogits", c.x, dx, 24);
    }
    for (int i = 0; i < 12; i++) free(buf[i]);
}

/* The pool: every thread runs every job once and the caller returns only after all of them,
 * whether the workers spin between jobs, fall asleep (a pause longer than their spinning), or
 * never spin (more threads than cores). */
typedef struct {
    atomic_int sum;   /* the threads' ith + 1, added */
    atomic_int calls; /* how many threads ran */
} pool_probe;

static void pool_probe_part(void *ctx, int ith, int nth) {
    pool_probe *p = ctx;
    (void)nth;
    atomic_fetch_add(&p->sum, ith + 1);
    atomic_fetch_add(&p->calls, 1);
}

static void test_pool(void) {
    const int sizes[2] = {2, hc_cpu_count() + 2};
    for (int si = 0; si < 2; si++) {
        hc_pool *pool;
        CHECK_OK(hc_pool_new(sizes[si], &pool));
        if (!pool) return;
        const int n = hc_pool_size(pool);
        bool ok = n == sizes[si];
        for (int job = 0; job < 300; job++) {
            if (job % 100 == 99) { /* past the workers' ~1 ms of spinning: they sleep and are woken */
                struct timespec ts = {0, 5 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            pool_probe probe = {0, 0};
            hc_pool_run(pool, pool_probe_part, &probe);
            ok = ok && atomic_load(&probe.calls) == n && atomic_load(&probe.sum) == n * (n + 1) / 2;
        }
        CHECK(ok, "pool of %d threads (%d cores): every thread ran every job once before hc_pool_run returned", n,
              hc_cpu_count());
        hc_pool_free(pool);
    }
}

int main(void) {
    test_pool();
    hc_backend *be = hc_backend_cpu();
    test_backward(be);
    test_half();
    test_matmul(be);
    test_norms(be);
    test_rope(be);
    test_attention(be);
    test_elementwise_and_routing(be);
    test_rope_tables();
    test_fast_matmul(be);
    test_q4k_extreme_acts(be);
    test_fast_fused();
    test_fast_elementwise(be);
    return test_finish("ops");
}
