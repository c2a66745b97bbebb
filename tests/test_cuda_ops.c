/* Every CUDA op against the CPU reference on random inputs of odd sizes (label cuda: it needs
 * a GPU). The measure is NMSE = sum (got - want)^2 / sum want^2, as llama.cpp's
 * test-backend-ops uses: at most 1e-7 where the GPU computes in f32, and at most 1e-4 for
 * prompt matmuls with bf16 operands (f16: 1e-5), which round activations to 8 (11) bits. */
#include "backend/cpu/cpu.h"
#include "backend/cpu/quant.h"
#include "backend/cuda/cuda.h"
#include "base/half.h"
#include "test_util.h"

static uint64_t rng = 12345;
static float frand(void) { /* uniform in [-1, 1) */
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng >> 40) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

static void fill_rand(float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = frand() * scale;
}

/* A host buffer of `n` elements of dtype dt with random values (returned as f32 too). */
static void *rand_typed(hc_dtype dt, int64_t n, float scale) {
    void *p = malloc((size_t)n * hc_dtype_size(dt));
    for (int64_t i = 0; i < n; i++) {
        const float v = frand() * scale;
        if (dt == HC_DTYPE_F32) ((float *)p)[i] = v;
        else if (dt == HC_DTYPE_BF16) ((uint16_t *)p)[i] = hc_f32_to_bf16(v);
        else ((uint16_t *)p)[i] = hc_f32_to_f16(v);
    }
    return p;
}

/* The f32 backend, and the one whose stream the helpers use (each backend has its own stream,
 * so a case keeps its copies and ops on one). */
static hc_backend *gpu, *cur;

static void *up(const void *host, size_t bytes) {
    void *d = cur->alloc(cur, bytes);
    cur->upload(cur, d, host, bytes);
    return d;
}

/* Downloads `n` floats from the GPU and returns them (caller frees). */
static float *down(const void *dev, int64_t n) {
    float *h = malloc(sizeof(float) * (size_t)n);
    cur->download(cur, h, dev, sizeof(float) * (size_t)n);
    return h;
}

static double nmse(const float *got, const float *want, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    if (num != num) return INFINITY;
    return den > 0 ? num / den : num;
}

static void report(const char *what, double e, double tol) {
    CHECK(e <= tol, "%s: NMSE %.3g > %.3g", what, e, tol);
    if (getenv("HUBCAP_TEST_VERBOSE")) printf("  %-60s NMSE %.2e\n", what, e);
}

static const char *dt_name(hc_dtype dt) { return hc_dtype_name(dt); }

/* x rounded as the int8 GEMV rounds it (gemv_q8x_kernel, and the CPU's quantize_acts): per
 * block of 32, d = amax / 127 and x = d * (x / d rounded to nearest even). */
static void round_acts_q8(float *x, int64_t n) {
    for (int64_t b = 0; b + 32 <= n; b += 32) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[b + i]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int i = 0; i < 32; i++) x[b + i] = d * rintf(x[b + i] * id);
    }
}

/* out = x @ W^T + b for one weight layout, on the GPU (backend be) and the CPU reference. */
static void matmul_case(hc_backend *be, const char *tag, hc_dtype dt, int quant, bool transposed, bool bias, int64_t T,
                        int64_t N, int64_t K, double tol) {
    hc_backend *cpu = hc_backend_cpu();
    cur = be;
    float *x = malloc(sizeof(float) * (size_t)(T * K));
    fill_rand(x, T * K, 1.0f);
    void *w = rand_typed(dt, N * K, 0.5f);
    size_t wbytes = (size_t)(N * K) * hc_dtype_size(dt);
    hc_mat hw = {.data = w, .dtype = dt, .rows = N, .cols = K, .ld = transposed ? N : K, .transposed = transposed};
    if (quant) {
        const size_t rb = hc_quant_row_bytes(quant, K);
        uint8_t *q = malloc(rb * (size_t)N);
        float *row = malloc(sizeof(float) * (size_t)K);
        for (int64_t n = 0; n < N; n++) {
            for (int64_t k = 0; k < K; k++) row[k] = hc_load_f32(w, dt, n * K + k);
            hc_quantize_row(quant, q + rb * (size_t)n, row, K);
        }
        free(row);
        free(w);
        w = q;
        wbytes = rb * (size_t)N;
        hw.data = w;
        hw.quant = quant;
    }
    void *b = bias ? rand_typed(dt, N, 0.3f) : NULL;
    hc_vec hb = {.data = b, .dtype = dt, .n = N};
    float *want = malloc(sizeof(float) * (size_t)(T * N));
    /* q8_0, q4_0 and q4_k rows of whole 16-byte lines, up to 8 rows of x (Q8X_MAX_T in matmul.cu):
     * the GEMV quantizes x to int8 (per 32); so does the tensor-core matmul, for 9 to 16 rows
     * (MMQ_MAX_T), on q8_0 and q4_0 */
    const bool q80 = quant == HC_QUANT_Q8_0 || quant == HC_QUANT_Q4_0;
    const bool int8_x = quant && ((T <= 8 && hc_quant_row_bytes(quant, K) % 16 == 0) || (q80 && T > 8 && T <= 16 && !transposed));
    float *xr = malloc(sizeof(float) * (size_t)(T * K));
    memcpy(xr, x, sizeof(float) * (size_t)(T * K));
    if (int8_x) round_acts_q8(xr, T * K);
    cpu->matmul(cpu, want, xr, &hw, &hb, T);
    free(xr);

    hc_mat dw = hw;
    dw.data = up(w, wbytes);
    hc_vec db = hb;
    if (b) db.data = up(b, (size_t)N * hc_dtype_size(dt));
    float *dx = up(x, sizeof(float) * (size_t)(T * K));
    float *dout = be->alloc(be, sizeof(float) * (size_t)(T * N));
    be->matmul(be, dout, dx, &dw, &db, T);
    float *got = down(dout, T * N);
    char what[160];
    snprintf(what, sizeof what, "matmul %s %s%s%s T=%lld N=%lld K=%lld", tag, quant ? "quant" : dt_name(dt),
             transposed ? " transposed" : "", bias ? " +bias" : "", (long long)T, (long long)N, (long long)K);
    if (quant) snprintf(what + strlen(what), sizeof what - strlen(what), " q%d%s", quant, int8_x ? " int8 x" : "");
    report(what, nmse(got, want, T * N), tol);
    be->free(be, (void *)dw.data);
    if (b) be->free(be, (void *)db.data);
    be->free(be, dx);
    be->free(be, dout);
    cur = gpu;
    free(got);
    free(want);
    free(x);
    free(w);
    free(b);
}

static void test_matmul(hc_backend *bf16, hc_backend *f16) {
    const hc_dtype dts[] = {HC_DTYPE_F32, HC_DTYPE_BF16, HC_DTYPE_F16};
    const int64_t Ts[] = {1, 3, 4, 5, 8, 9, 16, 17, 37}; /* both sides of the GEMV's 4 rows, and of 16 */
    const int nT = (int)(sizeof Ts / sizeof Ts[0]);
    const int64_t shapes[][2] = {{67, 45}, {130, 256}, {33, 1000}, {5, 8}};
    for (int d = 0; d < 3; d++)
        for (int t = 0; t < nT; t++)
            for (int s = 0; s < 4; s++) {
                matmul_case(gpu, "f32", dts[d], 0, false, s == 1, Ts[t], shapes[s][0], shapes[s][1], 1e-7);
                /* 16-bit operands apply past the GEMV's rows (gemv_max_t in matmul.cu, 4); fewer rows stay in f32. */
                matmul_case(bf16, "bf16", dts[d], 0, false, s == 1, Ts[t], shapes[s][0], shapes[s][1], Ts[t] > 4 ? 1e-4 : 1e-7);
                matmul_case(f16, "f16", dts[d], 0, false, false, Ts[t], shapes[s][0], shapes[s][1], Ts[t] > 4 ? 1e-5 : 1e-7);
            }
    for (int t = 0; t < nT; t++) {
        matmul_case(gpu, "f32", HC_DTYPE_F32, 0, true, true, Ts[t], 67, 45, 1e-7);
        matmul_case(gpu, "f32", HC_DTYPE_BF16, 0, true, false, Ts[t], 130, 33, 1e-7);
        const int quants[] = {HC_QUANT_Q8_0, HC_QUANT_Q4_0, HC_QUANT_Q4_K};
        for (int q = 0; q < 3; q++) {
            matmul_case(gpu, "f32", HC_DTYPE_BF16, quants[q], false, false, Ts[t], 67, 512, 1e-7);
            matmul_case(bf16, "bf16", HC_DTYPE_BF16, quants[q], false, true, Ts[t], 130, 256, Ts[t] > 4 ? 1e-4 : 1e-7);
            /* Rows of 3 blocks are not 16-byte multiples: the unstaged kernel. */
            if (q < 2) matmul_case(gpu, "f32", HC_DTYPE_F32, quants[q], false, true, Ts[t], 45, 96, 1e-7);
            matmul_case(gpu, "f32", HC_DTYPE_F16, quants[q], false, false, Ts[t], 5000, 1024, 1e-7);
        }
        /* Many rows: one or two warps a row. */
        matmul_case(gpu, "f32", HC_DTYPE_BF16, 0, false, false, Ts[t], 7000, 64, 1e-7);
        matmul_case(gpu, "f32", HC_DTYPE_BF16, 0, false, true, Ts[t], 3000, 1024, 1e-7);
    }
}

static void test_norm_rope_embed(void) {
    hc_backend *cpu = hc_backend_cpu();
    const int64_t Cs[] = {37, 1000, 3000};
    const hc_norm_kind kinds[] = {HC_NORM_RMS, HC_NORM_RMS_PLUS1, HC_NORM_LAYER};
    for (int c = 0; c < 3 * 2; c++) /* 5 rows, and 70 (rows held in registers where C allows) */
        for (int k = 0; k < 3; k++) {
            const int64_t T = c < 3 ? 5 : 70, C = Cs[c % 3];
            float *x = malloc(sizeof(float) * (size_t)(T * C)), *want = malloc(sizeof(float) * (size_t)(T * C));
            fill_rand(x, T * C, 3.0f);
            void *w = rand_typed(HC_DTYPE_BF16, C, 1.0f), *b = rand_typed(HC_DTYPE_BF16, C, 1.0f);
            hc_vec hw = {w, HC_DTYPE_BF16, C}, hb = {b, HC_DTYPE_BF16, C};
            cpu->norm(cpu, want, x, &hw, kinds[k] == HC_NORM_LAYER ? &hb : NULL, kinds[k], 1e-6f, T, C);
            hc_vec dw = {up(w, 2 * (size_t)C), HC_DTYPE_BF16, C}, db = {up(b, 2 * (size_t)C), HC_DTYPE_BF16, C};
            float *dx = up(x, sizeof(float) * (size_t)(T * C));
            gpu->norm(gpu, dx, dx, &dw, kinds[k] == HC_NORM_LAYER ? &db : NULL, kinds[k], 1e-6f, T, C); /* in place */
            float *got = down(dx, T * C);
            char what[96];
            snprintf(what, sizeof what, "norm kind %d T=%lld C=%lld", (int)kinds[k], (long long)T, (long long)C);
            report(what, nmse(got, want, T * C), 1e-7);
            gpu->free(gpu, (void *)dw.data);
            gpu->free(gpu, (void *)db.data);
            gpu->free(gpu, dx);
            free(x), free(want), free(w), free(b), free(got);
        }
    for (int r = 0; r < 2; r++) {
        const int64_t T = 5, nh = 3, D = 16, R = r ? 8 : 16;
        int32_t pos[5] = {0, 1, 7, 100, 4000};
        float inv[8], *x = malloc(sizeof(float) * (size_t)(T * nh * D));
        for (int i = 0; i < R / 2; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)R);
        fill_rand(x, T * nh * D, 1.0f);
        float *dx = up(x, sizeof(float) * (size_t)(T * nh * D));
        int32_t *dpos = up(pos, sizeof pos);
        float *dinv = up(inv, sizeof inv);
        cpu->rope(cpu, x, pos, inv, 1.1f, T, nh, D, R);
        gpu->rope(gpu, dx, dpos, dinv, 1.1f, T, nh, D, R);
        float *got = down(dx, T * nh * D);
        report(r ? "rope partial R=8 of D=16" : "rope R=D=16", nmse(got, x, T * nh * D), 1e-7);
        gpu->free(gpu, dx), gpu->free(gpu, dpos), gpu->free(gpu, dinv);
        free(x), free(got);
    }
    for (int tr = 0; tr < 2; tr++) {
        const int64_t V = 50, C = 37, T = 7;
        void *tab = rand_typed(HC_DTYPE_BF16, V * C, 1.0f);
        hc_mat ht = {.data = tab, .dtype = HC_DTYPE_BF16, .rows = V, .cols = C, .ld = tr ? V : C, .transposed = tr};
        int32_t ids[7] = {0, 49, 3, 3, 17, 1, 48};
        float *want = malloc(sizeof(float) * (size_t)(T * C));
        fill_rand(want, T * C, 1.0f);
        float *dout = up(want, sizeof(float) * (size_t)(T * C));
        cpu->embedding(cpu, want, &ht, ids, T, 1.5f, true);
        hc_mat dt = ht;
        dt.data = up(tab, 2 * (size_t)(V * C));
        int32_t *dids = up(ids, sizeof ids);
        gpu->embedding(gpu, dout, &dt, dids, T, 1.5f, true);
        float *got = down(dout, T * C);
        report(tr ? "embedding transposed, accumulate" : "embedding, accumulate", nmse(got, want, T * C), 1e-7);
        gpu->free(gpu, (void *)dt.data), gpu->free(gpu, dids), gpu->free(gpu, dout);
        free(tab), free(want), free(got);
    }
}

static void attention_case_on(hc_backend *be, double tol, int64_t T, int64_t H, int64_t KVH, int64_t D, int64_t S, int64_t p0, int64_t window, float cap,
                           hc_dtype kv) {
    hc_backend *cpu = hc_backend_cpu();
    cur = be;
    void *kc = rand_typed(kv, S * KVH * D, 1.0f), *vc = rand_typed(kv, S * KVH * D, 1.0f);
    float *q = malloc(sizeof(float) * (size_t)(T * H * D)), *want = malloc(sizeof(float) * (size_t)(T * H * D));
    float *scratch = malloc(sizeof(float) * (size_t)S);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(p0 + t);
    fill_rand(q, T * H * D, 1.0f);
    const float scale = 1.0f / sqrtf((float)D);
    cpu->attention(cpu, want, q, kc, vc, kv, pos, T, H, KVH, D, scale, window, cap, S, scratch);
    const size_t cb = (size_t)(S * KVH * D) * hc_dtype_size(kv);
    void *dk = up(kc, cb), *dv = up(vc, cb);
    float *dq = up(q, sizeof(float) * (size_t)(T * H * D)), *dout = be->alloc(be, sizeof(float) * (size_t)(T * H * D));
    int32_t *dpos = up(pos, sizeof(int32_t) * (size_t)T);
    float *dscr = be->alloc(be, sizeof(float) * (size_t)S);
    be->attention(be, dout, dq, dk, dv, kv, dpos, T, H, KVH, D, scale, window, cap, S, dscr);
    float *got = down(dout, T * H * D);
    char what[160];
    snprintf(what, sizeof what, "attention %s T=%lld H=%lld KVH=%lld D=%lld S=%lld pos0=%lld window=%lld cap=%g kv %s",
             tol > 1e-7 ? "bf16" : "f32", (long long)T, (long long)H, (long long)KVH, (long long)D, (long long)S, (long long)p0,
             (long long)window, cap, dt_name(kv));
    report(what, nmse(got, want, T * H * D), tol);
    be->free(be, dk), be->free(be, dv), be->free(be, dq), be->free(be, dout), be->free(be, dpos), be->free(be, dscr);
    cur = gpu;
    free(kc), free(vc), free(q), free(want), free(scratch), free(pos), free(got);
}

static void attention_case(int64_t T, int64_t H, int64_t KVH, int64_t D, int64_t S, int64_t p0, int64_t window, float cap,
                           hc_dtype kv) {
    attention_case_on(gpu, 1e-7, T, H, KVH, D, S, p0, window, cap, kv);
}

/* Prompts with 16-bit compute go through the tensor-core kernel: Q, K, V and the softmax
 * weights are rounded to bf16 (8 bits), hence the looser bound. */
static void test_flash_attention(hc_backend *bf16) {
    const int64_t Ds[] = {16, 64, 128, 256};
    for (int d = 0; d < 4; d++) {
        attention_case_on(bf16, 1e-4, 16, 4, 2, Ds[d], 300, 0, 0, 0, HC_DTYPE_BF16);
        attention_case_on(bf16, 1e-4, 100, 4, 1, Ds[d], 300, 37, 0, 0, HC_DTYPE_F32);
    }
    attention_case_on(bf16, 1e-4, 200, 8, 2, 64, 400, 150, 64, 0, HC_DTYPE_BF16);   /* sliding window */
    attention_case_on(bf16, 1e-4, 77, 4, 4, 128, 100, 0, 0, 30.0f, HC_DTYPE_F16);   /* soft-capping */
    attention_case_on(bf16, 1e-4, 2048, 32, 8, 64, 2048, 0, 0, 0, HC_DTYPE_BF16);   /* a 2048-token prompt */
    attention_case_on(bf16, 1e-4, 100, 4, 1, 128, 300, 37, 0, 0, HC_DTYPE_BF16);   /* from position 37 */
    attention_case_on(bf16, 1e-4, 130, 8, 2, 128, 400, 5, 40, 0, HC_DTYPE_BF16);   /* window, D 128 */
    attention_case_on(bf16, 1e-4, 65, 4, 2, 64, 100, 0, 0, 20.0f, HC_DTYPE_BF16);  /* soft-capping, D 64 */
}

/* A prompt's norm and flash attention also leave a 16-bit copy of their output for the GEMM
 * right after them. The GEMM must match the CPU's norm (or attention) and matmul; and when an
 * op changes that output in between (here h += h), the GEMM must not take the stale copy. */
static void acts16_case(hc_backend *be, hc_dtype dt, bool attention, bool changed) {
    hc_backend *cpu = hc_backend_cpu();
    cur = be;
    const int64_t T = 100, H = 4, KVH = 2, D = 64, C = H * D, N = 96;
    float *x = malloc(sizeof(float) * (size_t)(T * C)), *h = malloc(sizeof(float) * (size_t)(T * C));
    float *want = malloc(sizeof(float) * (size_t)(T * N)), *scratch = malloc(sizeof(float) * (size_t)T);
    fill_rand(x, T * C, 1.0f);
    void *nw = rand_typed(HC_DTYPE_F32, C, 1.0f), *w = rand_typed(dt, N * C, 0.5f);
    void *kc = rand_typed(HC_DTYPE_BF16, T * KVH * D, 1.0f), *vc = rand_typed(HC_DTYPE_BF16, T * KVH * D, 1.0f);
    int32_t pos[100];
    for (int t = 0; t < T; t++) pos[t] = t;
    const hc_vec hn = {.data = nw, .dtype = HC_DTYPE_F32, .n = C};
    hc_mat hw = {.data = w, .dtype = dt, .rows = N, .cols = C, .ld = C};
    if (attention) cpu->attention(cpu, h, x, kc, vc, HC_DTYPE_BF16, pos, T, H, KVH, D, 0.125f, 0, 0, T, scratch);
    else cpu->norm(cpu, h, x, &hn, NULL, HC_NORM_RMS, 1e-5f, T, C);
    if (changed) cpu->add(cpu, h, h, h, T * C);
    cpu->matmul(cpu, want, h, &hw, NULL, T);

    float *dx = up(x, sizeof(float) * (size_t)(T * C)), *dh = be->alloc(be, sizeof(float) * (size_t)(T * C));
    float *dout = be->alloc(be, sizeof(float) * (size_t)(T * N)), *dscr = be->alloc(be, sizeof(float) * (size_t)T);
    const size_t cb = (size_t)(T * KVH * D) * 2;
    void *dk = up(kc, cb), *dv = up(vc, cb);
    int32_t *dpos = up(pos, sizeof pos);
    hc_vec dn = hn;
    dn.data = up(nw, sizeof(float) * (size_t)C);
    hc_mat dw = hw;
    dw.data = up(w, (size_t)(N * C) * hc_dtype_size(dt));
    if (attention) be->attention(be, dh, dx, dk, dv, HC_DTYPE_BF16, dpos, T, H, KVH, D, 0.125f, 0, 0, T, dscr);
    else be->norm(be, dh, dx, &dn, NULL, HC_NORM_RMS, 1e-5f, T, C);
    if (changed) be->add(be, dh, dh, dh, T * C);
    be->matmul(be, dout, dh, &dw, NULL, T);
    float *got = down(dout, T * N);
    char what[120];
    snprintf(what, sizeof what, "%s then matmul %s%s (16-bit copy)", attention ? "flash attention" : "norm", dt_name(dt),
             changed ? ", changed between" : "");
    report(what, nmse(got, want, T * N), 1e-4);
    be->free(be, dx), be->free(be, dh), be->free(be, dout), be->free(be, dscr), be->free(be, dk), be->free(be, dv);
    be->free(be, dpos), be->free(be, (void *)dn.data), be->free(be, (void *)dw.data);
    cur = gpu;
    free(x), free(h), free(want), free(scratch), free(nw), free(w), free(kc), free(vc), free(got);
}

static void test_acts16(hc_backend *bf16, hc_backend *f16) {
    for (int changed = 0; changed < 2; changed++) {
        acts16_case(bf16, HC_DTYPE_BF16, false, changed);
        acts16_case(f16, HC_DTYPE_F16, false, changed);
        acts16_case(bf16, HC_DTYPE_BF16, true, changed);
    }
}

static void test_attention(void) {
    const int64_t Ds[] = {8, 16, 64, 80, 128, 256};
    for (int d = 0; d < 6; d++) {
        attention_case(1, 4, 2, Ds[d], 300, 0, 0, 0, HC_DTYPE_F32);
        attention_case(7, 4, 2, Ds[d], 300, 20, 0, 0, HC_DTYPE_F32);
        attention_case(1, 4, 4, Ds[d], 300, 299, 0, 0, HC_DTYPE_BF16);
    }
    attention_case(5, 6, 1, 64, 200, 100, 16, 0, HC_DTYPE_F32);  /* MQA, sliding window */
    attention_case(5, 4, 2, 32, 200, 100, 0, 50.0f, HC_DTYPE_F16); /* soft-capping */
    attention_case(1, 32, 8, 128, 4096, 3000, 0, 0, HC_DTYPE_BF16); /* long decode: split keys */
    attention_case(1, 8, 8, 64, 4096, 4095, 1024, 0, HC_DTYPE_F32);
    attention_case(1, 4, 2, 64, 8192, 8000, 0, 0, HC_DTYPE_BF16); /* 64 splits: the last one combines */
    attention_case(300, 8, 2, 64, 512, 0, 0, 0, HC_DTYPE_F32);    /* a prompt from position 0 */
}

static void test_elementwise(void) {
    hc_backend *cpu = hc_backend_cpu();
    const int64_t n = 1237;
    float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n), *want = malloc(sizeof(float) * n);
    fill_rand(a, n, 4.0f);
    fill_rand(b, n, 4.0f);
    float *da = up(a, sizeof(float) * n), *db = up(b, sizeof(float) * n), *dout = gpu->alloc(gpu, sizeof(float) * n);
    const hc_activation acts[] = {HC_ACT_SILU, HC_ACT_GELU_TANH, HC_ACT_GELU, HC_ACT_RELU};
    char what[64];
    for (int k = 0; k < 4; k++) {
        cpu->glu(cpu, want, a, b, acts[k], n);
        gpu->glu(gpu, dout, da, db, acts[k], n);
        float *got = down(dout, n);
        snprintf(what, sizeof what, "glu act %d", (int)acts[k]);
        report(what, nmse(got, want, n), 1e-7);
        free(got);
        memcpy(want, a, sizeof(float) * n);
        cpu->activate(cpu, want, acts[k], n);
        gpu->upload(gpu, dout, a, sizeof(float) * n);
        gpu->activate(gpu, dout, acts[k], n);
        got = down(dout, n);
        snprintf(what, sizeof what, "activate act %d", (int)acts[k]);
        report(what, nmse(got, want, n), 1e-7);
        free(got);
    }
    cpu->add(cpu, want, a, b, n);
    gpu->add(gpu, dout, da, db, n);
    float *got = down(dout, n);
    report("add", nmse(got, want, n), 0);
    free(got);
    cpu->add(cpu, want, a + 1, b + 1, n - 1); /* not 16-byte aligned: one at a time */
    gpu->add(gpu, dout, da + 1, db + 1, n - 1);
    got = down(dout, n - 1);
    report("add, unaligned", nmse(got, want, n - 1), 0);
    free(got);
    memcpy(want, a, sizeof(float) * n);
    cpu->add_scaled(cpu, want, b, 0.3f, n);
    gpu->upload(gpu, dout, a, sizeof(float) * n);
    gpu->add_scaled(gpu, dout, db, 0.3f, n);
    got = down(dout, n);
    report("add_scaled", nmse(got, want, n), 1e-12);
    free(got);
    memcpy(want, a, sizeof(float) * n);
    cpu->softcap(cpu, want, 3.0f, n);
    gpu->softcap(gpu, da, 3.0f, n);
    got = down(da, n);
    report("softcap", nmse(got, want, n), 1e-7);
    free(got);
    gpu->fill(gpu, dout, 2.5f, n);
    got = down(dout, n);
    for (int64_t i = 0; i < n; i++) want[i] = 2.5f;
    report("fill", nmse(got, want, n), 0);
    free(got);
    /* set_rows into each cache dtype: compare the stored bits widened back. */
    const hc_dtype kvs[] = {HC_DTYPE_F32, HC_DTYPE_F16, HC_DTYPE_BF16};
    for (int k = 0; k < 3; k++) {
        const int64_t T = 3, W = 37, S = 10;
        int32_t pos[3] = {9, 0, 4};
        const size_t es = hc_dtype_size(kvs[k]);
        void *hc = calloc((size_t)(S * W), es), *gc = malloc((size_t)(S * W) * es);
        cpu->set_rows(cpu, hc, kvs[k], b, pos, T, W);
        void *dc = gpu->alloc(gpu, (size_t)(S * W) * es);
        int32_t *dpos = up(pos, sizeof pos);
        gpu->set_rows(gpu, dc, kvs[k], db, dpos, T, W);
        gpu->download(gpu, gc, dc, (size_t)(S * W) * es);
        CHECK(!memcmp(gc, hc, (size_t)(S * W) * es), "set_rows %s stores the same bits", dt_name(kvs[k]));
        gpu->free(gpu, dc), gpu->free(gpu, dpos);
        free(hc), free(gc);
    }
    gpu->free(gpu, da), gpu->free(gpu, db), gpu->free(gpu, dout);
    free(a), free(b), free(want);

    /* MoE routing: the same experts in the same order, and the same weights. */
    for (int renorm = 0; renorm < 2; renorm++) {
        const int64_t T = 9, E = 8, k = 2;
        float l[72], w1[18], *w2;
        int32_t e1[18], e2[18];
        fill_rand(l, T * E, 3.0f);
        cpu->topk_route(cpu, w1, e1, l, T, E, k, renorm);
        float *dl = up(l, sizeof l), *dw = gpu->alloc(gpu, sizeof w1);
        int32_t *de = gpu->alloc(gpu, sizeof e1);
        gpu->topk_route(gpu, dw, de, dl, T, E, k, renorm);
        gpu->download(gpu, e2, de, sizeof e2);
        w2 = down(dw, T * k);
        CHECK(!memcmp(e1, e2, sizeof e1), "topk_route picks the same experts (renorm %d)", renorm);
        report(renorm ? "topk_route weights, renormalised" : "topk_route weights", nmse(w2, w1, T * k), 1e-10);
        /* and its backward */
        float dwt[18], dlc[72], *dlg;
        fill_rand(dwt, T * k, 1.0f);
        cpu->topk_route_backward(cpu, dlc, dwt, e1, l, T, E, k, renorm);
        float *ddw = up(dwt, sizeof dwt), *ddl = gpu->alloc(gpu, sizeof dlc);
        gpu->topk_route_backward(gpu, ddl, ddw, de, dl, T, E, k, renorm);
        dlg = down(ddl, T * E);
        report(renorm ? "topk_route_backward, renormalised" : "topk_route_backward", nmse(dlg, dlc, T * E), 1e-10);
        gpu->free(gpu, ddw), gpu->free(gpu, ddl);
        free(dlg);
        gpu->free(gpu, dl), gpu->free(gpu, dw), gpu->free(gpu, de);
        free(w2);
    }
}

/* The fused ops against their op sequences on the CPU reference. */
/* Quantized weights in one launch of the int8 GEMV: q, k, v (67 rows, so one warp's two rows
 * straddle two matrices) and gate/up, against the reference on x rounded as that kernel rounds it. */
static void quantize_rows(uint8_t *q, const void *w, hc_dtype dt, int quant, int64_t N, int64_t K) {
    const size_t rb = hc_quant_row_bytes(quant, K);
    float *row = malloc(sizeof(float) * (size_t)K);
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < K; k++) row[k] = hc_load_f32(w, dt, n * K + k);
        hc_quantize_row(quant, q + rb * (size_t)n, row, K);
    }
    free(row);
}

/* matmul_n over three matrices of one input (q, k, v shapes), or gated_matmul over gate and up,
 * on backend be against the CPU reference. Weights of dtype dt, quantized to `quant` when it is
 * set: x is then rounded for the reference as the int8 kernels round it. adjacent (matmul_n):
 * k and v take no bias, and their weights lie one after the other in one allocation, as do
 * their outputs, which a 16-bit prompt runs as one strided-batched GEMM. */
static void fused_case(hc_backend *be, const char *tag, hc_dtype dt, int quant, int64_t T, bool gated, hc_activation act,
                       double tol, bool adjacent) {
    hc_backend *cpu = hc_backend_cpu();
    cur = be;
    const int64_t K = 256, N[3] = {67, gated ? 67 : 33, 33}; /* gate and up: the same rows */
    const int n = gated ? 2 : 3;
    float *x = malloc(sizeof(float) * (size_t)(T * K)), *xr = malloc(sizeof(float) * (size_t)(T * K));
    fill_rand(x, T * K, 1.0f);
    memcpy(xr, x, sizeof(float) * (size_t)(T * K));
    if (quant) round_acts_q8(xr, T * K);
    void *w[3], *b[3];
    hc_mat hw[3], dw[3];
    hc_vec hb[3], db[3];
    const hc_mat *hwp[3], *dwp[3];
    const hc_vec *hbp[3], *dbp[3];
    float *want[3], *dout[3];
    const size_t kv_bytes = (quant ? hc_quant_row_bytes(quant, K) : (size_t)K * hc_dtype_size(dt)) * (size_t)N[1];
    char *kv_w = adjacent ? be->alloc(be, 2 * kv_bytes) : NULL;                           /* k's rows, then v's */
    float *kv_out = adjacent ? be->alloc(be, 2 * sizeof(float) * (size_t)(T * N[1])) : NULL; /* k's output, then v's */
    for (int i = 0; i < n; i++) {
        size_t wbytes = (size_t)(N[i] * K) * hc_dtype_size(dt);
        w[i] = rand_typed(dt, N[i] * K, 0.3f);
        if (quant) {
            wbytes = hc_quant_row_bytes(quant, K) * (size_t)N[i];
            uint8_t *q = malloc(wbytes);
            quantize_rows(q, w[i], dt, quant, N[i], K);
            free(w[i]);
            w[i] = q;
        }
        b[i] = rand_typed(dt, N[i], 0.3f);
        hw[i] = (hc_mat){.data = w[i], .dtype = dt, .rows = N[i], .cols = K, .ld = K, .quant = quant};
        const bool bias = i != 1 && !(adjacent && i == 2); /* one without a bias; adjacent: two */
        hb[i] = (hc_vec){bias ? b[i] : NULL, dt, bias ? N[i] : 0};
        dw[i] = hw[i];
        if (adjacent && i > 0) {
            dw[i].data = kv_w + (i - 1) * kv_bytes;
            be->upload(be, (void *)dw[i].data, w[i], wbytes);
        } else {
            dw[i].data = up(w[i], wbytes);
        }
        db[i] = hb[i];
        if (hb[i].data) db[i].data = up(b[i], (size_t)N[i] * hc_dtype_size(dt));
        hwp[i] = &hw[i], dwp[i] = &dw[i], hbp[i] = &hb[i], dbp[i] = &db[i];
        want[i] = malloc(sizeof(float) * (size_t)(T * N[i]));
        dout[i] = adjacent && i > 0 ? kv_out + (i - 1) * T * N[1] : be->alloc(be, sizeof(float) * (size_t)(T * N[i]));
    }
    float *dx = up(x, sizeof(float) * (size_t)(T * K));
    char what[128];
    if (!gated) {
        cpu->matmul_n(cpu, want, xr, hwp, hbp, 3, T);
        be->matmul_n(be, dout, dx, dwp, dbp, 3, T);
        for (int i = 0; i < 3; i++) {
            float *got = down(dout[i], T * N[i]);
            snprintf(what, sizeof what, "matmul_n %s%s T=%lld matrix %d", tag, adjacent ? " (k, v adjacent)" : "",
                     (long long)T, i);
            report(what, nmse(got, want[i], T * N[i]), tol);
            free(got);
        }
    } else {
        cpu->gated_matmul(cpu, want[0], want[1], xr, hwp[0], hbp[0], hwp[1], hbp[1], act, T);
        be->gated_matmul(be, dout[0], dout[1], dx, dwp[0], dbp[0], dwp[1], dbp[1], act, T);
        float *got = down(dout[0], T * N[0]);
        snprintf(what, sizeof what, "gated_matmul %s T=%lld act %d", tag, (long long)T, (int)act);
        report(what, nmse(got, want[0], T * N[0]), tol);
        free(got);
    }
    for (int i = 0; i < n; i++) {
        if (!(adjacent && i > 0)) be->free(be, (void *)dw[i].data), be->free(be, dout[i]);
        if (db[i].data) be->free(be, (void *)db[i].data);
        free(w[i]), free(b[i]), free(want[i]);
    }
    if (adjacent) be->free(be, kv_w), be->free(be, kv_out);
    be->free(be, dx);
    free(x), free(xr);
    cur = gpu;
}

/* q8_0 / q4_0 / q4_k sets: 1, 3, 6 rows (two passes of the int8 GEMV) and, but for q4_k, 13 (the
 * tensor-core matmul). */
static void test_fused_quant(void) {
    const int quants[3] = {HC_QUANT_Q8_0, HC_QUANT_Q4_0, HC_QUANT_Q4_K};
    const int64_t Ts[4] = {1, 3, 6, 13};
    char tag[32];
    for (int qi = 0; qi < 3; qi++)
        for (int ti = 0; ti < (quants[qi] == HC_QUANT_Q4_K ? 3 : 4); ti++)
            for (int gated = 0; gated < 2; gated++) {
                snprintf(tag, sizeof tag, "q%d int8 x", quants[qi]);
                fused_case(gpu, tag, HC_DTYPE_BF16, quants[qi], Ts[ti], gated, HC_ACT_SILU, 1e-6, false);
            }
}

static void test_fused(hc_backend *bf16) {
    hc_backend *cpu = hc_backend_cpu();
    const int64_t Ts[] = {1, 5, 8, 20};
    char tag[32];
    for (int ti = 0; ti < 4; ti++)
        for (int gated = 0; gated < 2; gated++) {
            hc_backend *be = gated && ti == 3 ? bf16 : gpu;
            const hc_dtype dt = ti == 1 ? HC_DTYPE_F32 : HC_DTYPE_BF16;
            snprintf(tag, sizeof tag, "%s %s", be == bf16 ? "bf16" : "f32", dt_name(dt));
            fused_case(be, tag, dt, 0, Ts[ti], gated, ti & 1 ? HC_ACT_GELU_TANH : HC_ACT_SILU, be == bf16 ? 1e-4 : 1e-7, false);
        }
    /* ffn: the gated MLP and its down projection; past the GEMV's rows a 16-bit backend keeps
     * gate, up and their product in 16 bits (bf16 tolerance), below it the op sequence. The
     * third case holds gate and up in one allocation, gate first, which takes them as one
     * strided-batched GEMM. */
    for (int ti = 0; ti < 3; ti++) {
        const int64_t T = ti ? 20 : 3, C = 256, I = 64, Co = 48;
        const bool one_alloc = ti == 2;
        hc_backend *be = bf16;
        cur = be;
        float *x = malloc(sizeof(float) * (size_t)(T * C)), *want = malloc(sizeof(float) * (size_t)(T * Co));
        float *ta = malloc(sizeof(float) * (size_t)(T * I)), *tb = malloc(sizeof(float) * (size_t)(T * I));
        fill_rand(x, T * C, 1.0f);
        void *w[3] = {rand_typed(HC_DTYPE_BF16, I * C, 0.2f), rand_typed(HC_DTYPE_BF16, I * C, 0.2f),
                      rand_typed(HC_DTYPE_BF16, Co * I, 0.2f)};
        hc_mat hw[3], dw[3];
        char *gu = one_alloc ? be->alloc(be, (size_t)(2 * I * C) * 2) : NULL;
        for (int i = 0; i < 3; i++) {
            const int64_t rows = i < 2 ? I : Co, cols = i < 2 ? C : I;
            hw[i] = (hc_mat){.data = w[i], .dtype = HC_DTYPE_BF16, .rows = rows, .cols = cols, .ld = cols};
            dw[i] = hw[i];
            if (gu && i < 2) {
                dw[i].data = gu + (size_t)(i * I * C) * 2;
                be->upload(be, (void *)dw[i].data, w[i], (size_t)(rows * cols) * 2);
            } else {
                dw[i].data = up(w[i], (size_t)(rows * cols) * 2);
            }
        }
        const hc_vec nb = {0};
        cpu->ffn(cpu, want, ta, tb, x, &hw[0], &nb, &hw[1], &nb, &hw[2], &nb, HC_ACT_SILU, T);
        float *dx = up(x, sizeof(float) * (size_t)(T * C)), *dout = be->alloc(be, sizeof(float) * (size_t)(T * Co));
        float *da = be->alloc(be, sizeof(float) * (size_t)(T * I)), *db = be->alloc(be, sizeof(float) * (size_t)(T * I));
        be->ffn(be, dout, da, db, dx, &dw[0], &nb, &dw[1], &nb, &dw[2], &nb, HC_ACT_SILU, T);
        float *got = down(dout, T * Co);
        char what[96];
        snprintf(what, sizeof what, "ffn bf16 T=%lld%s", (long long)T, one_alloc ? ", gate and up in one allocation" : "");
        report(what, nmse(got, want, T * Co), ti ? 1e-4 : 1e-7);
        for (int i = 0; i < 3; i++) {
            if (!gu || i == 2) be->free(be, (void *)dw[i].data);
            free(w[i]);
        }
        if (gu) be->free(be, gu);
        be->free(be, dx), be->free(be, dout), be->free(be, da), be->free(be, db);
        free(x), free(want), free(ta), free(tb), free(got);
        cur = gpu;
    }
    /* add_norm: both the updated residual and the norm, a few rows and many. */
    for (int64_t T = 3; T < 200; T += 97) {
        const int64_t C = 1000;
        float *x = malloc(sizeof(float) * T * C), *o = malloc(sizeof(float) * T * C), *h = malloc(sizeof(float) * T * C);
        fill_rand(x, T * C, 2.0f);
        fill_rand(o, T * C, 2.0f);
        void *w = rand_typed(HC_DTYPE_BF16, C, 1.0f);
        hc_vec hw = {w, HC_DTYPE_BF16, C}, dw = {up(w, 2 * C), HC_DTYPE_BF16, C};
        float *dx = up(x, sizeof(float) * T * C), *dout = up(o, sizeof(float) * T * C), *dh = gpu->alloc(gpu, sizeof(float) * T * C);
        cpu->add_norm(cpu, h, x, o, &hw, NULL, HC_NORM_RMS_PLUS1, 1e-6f, T, C);
        gpu->add_norm(gpu, dh, dx, dout, &dw, NULL, HC_NORM_RMS_PLUS1, 1e-6f, T, C);
        float *gx = down(dx, T * C), *gh = down(dh, T * C);
        report("add_norm residual", nmse(gx, x, T * C), 0);
        report("add_norm norm", nmse(gh, h, T * C), 1e-7);
        gpu->free(gpu, (void *)dw.data), gpu->free(gpu, dx), gpu->free(gpu, dout), gpu->free(gpu, dh);
        free(x), free(o), free(h), free(w), free(gx), free(gh);
    }
    /* matmul_add_norm and ffn_add_norm against the CPU's op sequence: the updated residual and
     * the next norm (or the add alone, h NULL). Past the GEMV's rows the bf16 backend adds the
     * product into x inside the GEMM (bf16 tolerance); 3 rows, and the f32 backend, take the
     * sequence. With h_matmul_only (mode 2) the bf16 backend keeps h in bf16 alone at 100 rows:
     * h is checked through a matmul on bf16 weights (which reads that copy), then one on f32
     * weights (which widens h back to f32 first), then h itself. */
    for (int ci = 0; ci < 24; ci++) {
        hc_backend *be = ci & 4 ? gpu : bf16;
        const int64_t T = ci & 1 ? 100 : 3, C = 256, I = 96, N2 = 48;
        const int mode = ci / 8; /* 0: norm, 1: no norm, 2: norm read by matmuls only */
        const bool ffn = ci & 2, with_norm = mode != 1, only = mode == 2;
        cur = be;
        const int64_t K = ffn ? C : I; /* the o projection reads [T, I] */
        float *x = malloc(sizeof(float) * (size_t)(T * C)), *in = malloc(sizeof(float) * (size_t)(T * K));
        float *h = malloc(sizeof(float) * (size_t)(T * C)), *o = malloc(sizeof(float) * (size_t)(T * C));
        float *fa = malloc(sizeof(float) * (size_t)(T * I)), *fb = malloc(sizeof(float) * (size_t)(T * I));
        fill_rand(x, T * C, 2.0f);
        fill_rand(in, T * K, 1.0f);
        void *w[5] = {rand_typed(HC_DTYPE_BF16, I * C, 0.2f), rand_typed(HC_DTYPE_BF16, I * C, 0.2f),
                      rand_typed(HC_DTYPE_BF16, C * I, 0.2f), rand_typed(HC_DTYPE_BF16, N2 * C, 0.2f),
                      rand_typed(HC_DTYPE_F32, N2 * C, 0.2f)};
        void *nwh = rand_typed(HC_DTYPE_BF16, C, 1.0f);
        hc_mat hw[5], dw[5];
        for (int i = 0; i < 5; i++) {
            const int64_t rows = i < 2 ? I : i == 2 ? C : N2, cols = i == 2 ? I : C;
            const hc_dtype dt = i == 4 ? HC_DTYPE_F32 : HC_DTYPE_BF16;
            hw[i] = (hc_mat){.data = w[i], .dtype = dt, .rows = rows, .cols = cols, .ld = cols};
            dw[i] = hw[i];
            dw[i].data = up(w[i], (size_t)(rows * cols) * hc_dtype_size(dt));
        }
        const hc_vec nb = {0}, hn = {nwh, HC_DTYPE_BF16, C}, dn = {up(nwh, 2 * (size_t)C), HC_DTYPE_BF16, C};
        float *dx = up(x, sizeof(float) * (size_t)(T * C)), *din = up(in, sizeof(float) * (size_t)(T * K));
        float *dh = be->alloc(be, sizeof(float) * (size_t)(T * C)), *dout = be->alloc(be, sizeof(float) * (size_t)(T * C));
        float *da = be->alloc(be, sizeof(float) * (size_t)(T * I)), *db = be->alloc(be, sizeof(float) * (size_t)(T * I));
        if (ffn) {
            cpu->ffn_add_norm(cpu, with_norm ? h : NULL, x, o, fa, fb, in, &hw[0], &nb, &hw[1], &nb, &hw[2], &nb, HC_ACT_SILU,
                              &hn, NULL, HC_NORM_RMS, 1e-5f, only, T);
            be->ffn_add_norm(be, with_norm ? dh : NULL, dx, dout, da, db, din, &dw[0], &nb, &dw[1], &nb, &dw[2], &nb,
                             HC_ACT_SILU, &dn, NULL, HC_NORM_RMS, 1e-5f, only, T);
        } else {
            cpu->matmul_add_norm(cpu, with_norm ? h : NULL, x, o, in, &hw[2], &nb, &hn, NULL, HC_NORM_RMS, 1e-5f, only, T);
            be->matmul_add_norm(be, with_norm ? dh : NULL, dx, dout, din, &dw[2], &nb, &dn, NULL, HC_NORM_RMS, 1e-5f, only,
                                T);
        }
        const double tol = be == bf16 && T > 4 ? 1e-4 : 1e-7;
        const char *op = ffn ? "ffn_add_norm" : "matmul_add_norm", *bn = be == bf16 ? "bf16" : "f32";
        char what[112];
        float *gx = down(dx, T * C);
        snprintf(what, sizeof what, "%s %s T=%lld%s residual", op, bn, (long long)T,
                 mode == 1 ? " (no norm)" : only ? " (h for matmuls)" : "");
        report(what, nmse(gx, x, T * C), tol);
        if (only) { /* read h the way the decoder may: as matmul input, 16-bit weights first */
            float *y = malloc(sizeof(float) * (size_t)(T * N2)), *dy = be->alloc(be, sizeof(float) * (size_t)(T * N2));
            for (int i = 3; i < 5; i++) {
                cpu->matmul(cpu, y, h, &hw[i], NULL, T);
                be->matmul(be, dy, dh, &dw[i], NULL, T);
                float *gy = down(dy, T * N2);
                snprintf(what, sizeof what, "%s %s T=%lld h for matmuls: matmul on %s weights", op, bn, (long long)T,
                         i == 3 ? "bf16" : "f32 (widened)");
                report(what, nmse(gy, y, T * N2), tol);
                free(gy);
            }
            be->free(be, dy), free(y);
        }
        if (with_norm) {
            float *gh = down(dh, T * C);
            snprintf(what, sizeof what, "%s %s T=%lld norm%s", op, bn, (long long)T, only ? " (h for matmuls, read after)" : "");
            report(what, nmse(gh, h, T * C), tol);
            free(gh);
        }
        for (int i = 0; i < 5; i++) be->free(be, (void *)dw[i].data), free(w[i]);
        be->free(be, (void *)dn.data), be->free(be, dx), be->free(be, din), be->free(be, dh), be->free(be, dout);
        be->free(be, da), be->free(be, db);
        free(x), free(in), free(h), free(o), free(fa), free(fb), free(nwh), free(gx);
        cur = gpu;
    }
    /* rope_store: full and partial rotary, none, each cache dtype; 4 rows (the decode kernel)
     * and a 100-row prompt (a block a row). */
    for (int cc = 0; cc < 6; cc++) {
        const int c = cc % 3;
        const int64_t T = cc < 3 ? 4 : 100, H = 4, KVH = 2, D = 16, S = T + 12, R = c == 0 ? 16 : c == 1 ? 8 : 0;
        const hc_dtype kv = c == 0 ? HC_DTYPE_F32 : c == 1 ? HC_DTYPE_BF16 : HC_DTYPE_F16;
        int32_t pos[100] = {3, 4, 5, 11};
        if (T > 4)
            for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(T + 11 - t); /* stored backwards */
        float inv[8];
        for (int i = 0; i < 8; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)(R ? R : 16));
        float *q = malloc(sizeof(float) * T * H * D), *k = malloc(sizeof(float) * T * KVH * D), *v = malloc(sizeof(float) * T * KVH * D);
        fill_rand(q, T * H * D, 1.0f), fill_rand(k, T * KVH * D, 1.0f), fill_rand(v, T * KVH * D, 1.0f);
        const size_t cb = (size_t)(S * KVH * D) * hc_dtype_size(kv);
        void *kc = calloc(1, cb), *vc = calloc(1, cb), *gkc = malloc(cb), *gvc = malloc(cb);
        float *dq = up(q, sizeof(float) * T * H * D), *dk = up(k, sizeof(float) * T * KVH * D), *dv = up(v, sizeof(float) * T * KVH * D);
        void *dkc = gpu->alloc(gpu, cb), *dvc = gpu->alloc(gpu, cb);
        int32_t *dpos = up(pos, sizeof pos);
        float *dinv = up(inv, sizeof inv);
        cpu->rope_store(cpu, q, k, v, kc, vc, kv, pos, R ? inv : NULL, 1.1f, T, H, KVH, D, R);
        gpu->rope_store(gpu, dq, dk, dv, dkc, dvc, kv, dpos, R ? dinv : NULL, 1.1f, T, H, KVH, D, R);
        float *gq = down(dq, T * H * D), *gk = down(dk, T * KVH * D);
        gpu->download(gpu, gkc, dkc, cb);
        gpu->download(gpu, gvc, dvc, cb);
        char what[64];
        snprintf(what, sizeof what, "rope_store T=%lld R=%lld q", (long long)T, (long long)R);
        report(what, nmse(gq, q, T * H * D), 1e-7);
        snprintf(what, sizeof what, "rope_store T=%lld R=%lld k", (long long)T, (long long)R);
        report(what, nmse(gk, k, T * KVH * D), 1e-7);
        /* The caches: the same bits, except that rounding a value that sin/cos made differ in
         * its last f32 bit may move a 16-bit value by one step. */
        float *wk = malloc(sizeof(float) * S * KVH * D), *gk2 = malloc(sizeof(float) * S * KVH * D);
        for (int64_t i = 0; i < S * KVH * D; i++) wk[i] = hc_load_f32(kc, kv, i), gk2[i] = hc_load_f32(gkc, kv, i);
        snprintf(what, sizeof what, "rope_store T=%lld R=%lld k cache %s", (long long)T, (long long)R, dt_name(kv));
        report(what, nmse(gk2, wk, S * KVH * D), 1e-5);
        CHECK(!memcmp(gvc, vc, cb), "rope_store stores v exactly (%s)", dt_name(kv));
        gpu->free(gpu, dq), gpu->free(gpu, dk), gpu->free(gpu, dv), gpu->free(gpu, dkc), gpu->free(gpu, dvc),
            gpu->free(gpu, dpos), gpu->free(gpu, dinv);
        free(q), free(k), free(v), free(kc), free(vc), free(gkc), free(gvc), free(gq), free(gk), free(wk), free(gk2);
    }
}

/* Rows of three sequences with caches of different sizes, in one call, against the CPU's row
 * by row reference: the KV store, then attention. */
static void test_rows(void) {
    hc_backend *cpu = hc_backend_cpu();
    const int64_t T = 6, H = 4, KVH = 2, D = 64, R = 64, Ss[3] = {50, 300, 129};
    const int row_seq[6] = {0, 1, 1, 2, 2, 2};
    const int32_t pos[6] = {49, 17, 18, 0, 1, 2};
    const hc_dtype kv = HC_DTYPE_BF16;
    void *hk[3], *hv[3], *dk[3], *dv[3];
    for (int i = 0; i < 3; i++) {
        const size_t cb = (size_t)(Ss[i] * KVH * D) * 2;
        hk[i] = rand_typed(kv, Ss[i] * KVH * D, 1.0f);
        hv[i] = rand_typed(kv, Ss[i] * KVH * D, 1.0f);
        dk[i] = up(hk[i], cb);
        dv[i] = up(hv[i], cb);
    }
    void *hkr[6], *hvr[6], *dkr[6], *dvr[6];
    for (int t = 0; t < T; t++) hkr[t] = hk[row_seq[t]], hvr[t] = hv[row_seq[t]], dkr[t] = dk[row_seq[t]], dvr[t] = dv[row_seq[t]];
    void **dkr_dev = up(dkr, sizeof dkr), **dvr_dev = up(dvr, sizeof dvr);
    float inv[32];
    for (int i = 0; i < 32; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)R);
    float *q = malloc(sizeof(float) * T * H * D), *k = malloc(sizeof(float) * T * KVH * D), *v = malloc(sizeof(float) * T * KVH * D);
    fill_rand(q, T * H * D, 1.0f), fill_rand(k, T * KVH * D, 1.0f), fill_rand(v, T * KVH * D, 1.0f);
    float *dq = up(q, sizeof(float) * T * H * D), *dkk = up(k, sizeof(float) * T * KVH * D), *dvv = up(v, sizeof(float) * T * KVH * D);
    int32_t *dpos = up(pos, sizeof pos);
    float *dinv = up(inv, sizeof inv), *scratch = malloc(sizeof(float) * 300), *dscr = gpu->alloc(gpu, sizeof(float) * 300);
    float *want = malloc(sizeof(float) * T * H * D), *dout = gpu->alloc(gpu, sizeof(float) * T * H * D);
    cpu->rope_store_rows(cpu, q, k, v, hkr, hvr, kv, pos, inv, 1.0f, T, H, KVH, D, R);
    gpu->rope_store_rows(gpu, dq, dkk, dvv, dkr_dev, dvr_dev, kv, dpos, dinv, 1.0f, T, H, KVH, D, R);
    cpu->attention_rows(cpu, want, q, hkr, hvr, kv, pos, T, H, KVH, D, 0.125f, 0, 0, 300, scratch);
    gpu->attention_rows(gpu, dout, dq, dkr_dev, dvr_dev, kv, dpos, T, H, KVH, D, 0.125f, 0, 0, 300, dscr);
    float *got = down(dout, T * H * D), *gq = down(dq, T * H * D);
    report("rope_store_rows q", nmse(gq, q, T * H * D), 1e-7);
    report("attention_rows over 3 sequences", nmse(got, want, T * H * D), 1e-5); /* bf16 keys may differ by a step */
    for (int i = 0; i < 3; i++) {
        const int64_t n = Ss[i] * KVH * D;
        void *g = malloc((size_t)n * 2);
        gpu->download(gpu, g, dk[i], (size_t)n * 2);
        float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
        for (int64_t e = 0; e < n; e++) a[e] = hc_load_f32(hk[i], kv, e), b[e] = hc_load_f32(g, kv, e);
        report("rope_store_rows k cache", nmse(b, a, n), 1e-5);
        gpu->free(gpu, dk[i]), gpu->free(gpu, dv[i]);
        free(g), free(a), free(b), free(hk[i]), free(hv[i]);
    }
    gpu->free(gpu, dkr_dev), gpu->free(gpu, dvr_dev), gpu->free(gpu, dq), gpu->free(gpu, dkk), gpu->free(gpu, dvv),
        gpu->free(gpu, dpos), gpu->free(gpu, dinv), gpu->free(gpu, dscr), gpu->free(gpu, dout);
    free(q), free(k), free(v), free(scratch), free(want), free(got), free(gq);
}

/* The KV store of a step's rows, then attention over one cache, back to back: attention loads
 * the rows no kernel of the step writes before it waits for the store, so this checks that it
 * waits for the step's own rows (T of them, the last at p0 + T - 1). */
static void store_then_attention_case(int64_t T, int64_t D, int64_t S, int64_t p0) {
    hc_backend *cpu = hc_backend_cpu();
    const int64_t H = 8, KVH = 2, R = D;
    const hc_dtype kv = HC_DTYPE_BF16;
    const size_t cb = (size_t)(S * KVH * D) * 2;
    void *hk = rand_typed(kv, S * KVH * D, 1.0f), *hv = rand_typed(kv, S * KVH * D, 1.0f);
    void *dk = up(hk, cb), *dv = up(hv, cb);
    int32_t pos[8];
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(p0 + t);
    float inv[128];
    for (int i = 0; i < R / 2; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)R);
    float *q = malloc(sizeof(float) * T * H * D), *k = malloc(sizeof(float) * T * KVH * D), *v = malloc(sizeof(float) * T * KVH * D);
    fill_rand(q, T * H * D, 1.0f), fill_rand(k, T * KVH * D, 1.0f), fill_rand(v, T * KVH * D, 1.0f);
    float *dq = up(q, sizeof(float) * T * H * D), *dkk = up(k, sizeof(float) * T * KVH * D), *dvv = up(v, sizeof(float) * T * KVH * D);
    int32_t *dpos = up(pos, sizeof(int32_t) * (size_t)T);
    float *dinv = up(inv, sizeof(float) * (size_t)(R / 2)), *scratch = malloc(sizeof(float) * S), *dscr = gpu->alloc(gpu, sizeof(float) * S);
    float *want = malloc(sizeof(float) * T * H * D), *dout = gpu->alloc(gpu, sizeof(float) * T * H * D);
    const float scale = 1.0f / sqrtf((float)D);
    cpu->rope_store(cpu, q, k, v, hk, hv, kv, pos, inv, 1.0f, T, H, KVH, D, R);
    cpu->attention(cpu, want, q, hk, hv, kv, pos, T, H, KVH, D, scale, 0, 0, S, scratch);
    gpu->rope_store(gpu, dq, dkk, dvv, dk, dv, kv, dpos, dinv, 1.0f, T, H, KVH, D, R);
    gpu->attention(gpu, dout, dq, dk, dv, kv, dpos, T, H, KVH, D, scale, 0, 0, S, dscr);
    float *got = down(dout, T * H * D);
    char what[120];
    snprintf(what, sizeof what, "rope_store then attention T=%lld D=%lld S=%lld pos0=%lld", (long long)T, (long long)D,
             (long long)S, (long long)p0);
    report(what, nmse(got, want, T * H * D), 1e-5); /* bf16 keys may differ by a step */
    gpu->free(gpu, dk), gpu->free(gpu, dv), gpu->free(gpu, dq), gpu->free(gpu, dkk), gpu->free(gpu, dvv),
        gpu->free(gpu, dpos), gpu->free(gpu, dinv), gpu->free(gpu, dscr), gpu->free(gpu, dout);
    free(hk), free(hv), free(q), free(k), free(v), free(scratch), free(want), free(got);
}

static void test_store_then_attention(void) {
    store_then_attention_case(1, 64, 384, 200);  /* one block a head */
    store_then_attention_case(1, 64, 384, 383);  /* the last position */
    store_then_attention_case(3, 64, 300, 40);   /* rows of one sequence */
    store_then_attention_case(1, 128, 300, 299); /* D 128 */
    store_then_attention_case(1, 64, 4096, 2500); /* split keys */
    store_then_attention_case(4, 128, 4096, 1000);
}

/* ---- backward: every op's gradients against the CPU reference (f32, NMSE <= 1e-7). Parameter
 * gradients start from random values, so += is checked along with the sums. ---------------- */

/* Compares n floats of a device buffer with the reference's host buffer. */
static void cmp_dev(const char *what, const void *dev, const float *want, int64_t n) {
    float *got = down(dev, n);
    report(what, nmse(got, want, n), 1e-7);
    free(got);
}

static void matmul_backward_case(hc_dtype dt, bool transposed, bool bias, int64_t T, int64_t N, int64_t K) {
    hc_backend *cpu = hc_backend_cpu();
    const int64_t ld = transposed ? N + 3 : K + 5, rows = transposed ? K : N;
    void *wh = rand_typed(dt, rows * ld, 0.5f);
    float *x = malloc(sizeof(float) * (size_t)(T * K)), *dout = malloc(sizeof(float) * (size_t)(T * N));
    float *dw = malloc(sizeof(float) * (size_t)(rows * ld)), *db = malloc(sizeof(float) * (size_t)N);
    float *dx = malloc(sizeof(float) * (size_t)(T * K));
    fill_rand(x, T * K, 1), fill_rand(dout, T * N, 1), fill_rand(dw, rows * ld, 1), fill_rand(db, N, 1);
    void *wd = up(wh, (size_t)(rows * ld) * hc_dtype_size(dt));
    float *xd = up(x, sizeof(float) * (size_t)(T * K)), *gd = up(dout, sizeof(float) * (size_t)(T * N));
    float *dwd = up(dw, sizeof(float) * (size_t)(rows * ld)), *dbd = up(db, sizeof(float) * (size_t)N);
    float *dxd = cur->alloc(cur, sizeof(float) * (size_t)(T * K));
    hc_mat w = {.data = wh, .dtype = dt, .rows = N, .cols = K, .ld = ld, .transposed = transposed};
    hc_mat wdv = w;
    wdv.data = wd;
    cpu->matmul_backward(cpu, dx, dw, bias ? db : NULL, dout, x, &w, T);
    cur->matmul_backward(cur, dxd, dwd, bias ? dbd : NULL, gd, xd, &wdv, T);
    char what[160];
    snprintf(what, sizeof what, "matmul_backward %s%s T=%lld N=%lld K=%lld dx", dt_name(dt), transposed ? " transposed" : "",
             (long long)T, (long long)N, (long long)K);
    cmp_dev(what, dxd, dx, T * K);
    what[strlen(what) - 2] = 0;
    strcat(what, "dW");
    cmp_dev(what, dwd, dw, rows * ld);
    if (bias) {
        what[strlen(what) - 2] = 0;
        strcat(what, "db");
        cmp_dev(what, dbd, db, N);
    }
    cur->free(cur, wd), cur->free(cur, xd), cur->free(cur, gd), cur->free(cur, dwd), cur->free(cur, dbd), cur->free(cur, dxd);
    free(wh), free(x), free(dout), free(dw), free(db), free(dx);
}

/* acc: dx accumulates onto random values (the residual stream's gradient). */
static void norm_backward_case(hc_norm_kind kind, hc_dtype dt, bool with_b, int64_t T, int64_t C, bool acc) {
    hc_backend *cpu = hc_backend_cpu();
    void *wh = rand_typed(dt, C, 1), *bh = rand_typed(dt, C, 1);
    float *x = malloc(sizeof(float) * (size_t)(T * C)), *dout = malloc(sizeof(float) * (size_t)(T * C));
    float *dx = malloc(sizeof(float) * (size_t)(T * C)), *dw = malloc(sizeof(float) * (size_t)C), *db = malloc(sizeof(float) * (size_t)C);
    fill_rand(x, T * C, 2), fill_rand(dout, T * C, 1), fill_rand(dw, C, 1), fill_rand(db, C, 1), fill_rand(dx, T * C, 1);
    for (int64_t i = 0; i < T * C; i++) x[i] += 0.3f; /* a mean for LayerNorm to remove */
    void *wd = up(wh, (size_t)C * hc_dtype_size(dt)), *bd = up(bh, (size_t)C * hc_dtype_size(dt));
    float *xd = up(x, sizeof(float) * (size_t)(T * C)), *gd = up(dout, sizeof(float) * (size_t)(T * C));
    float *dwd = up(dw, sizeof(float) * (size_t)C), *dbd = up(db, sizeof(float) * (size_t)C);
    float *dxd = up(dx, sizeof(float) * (size_t)(T * C));
    hc_vec w = {wh, dt, C}, b = {with_b ? bh : NULL, dt, C}, wdv = {wd, dt, C}, bdv = {with_b ? bd : NULL, dt, C};
    cpu->norm_backward(cpu, dx, dw, with_b ? db : NULL, dout, x, &w, &b, kind, 1e-5f, T, C, acc);
    cur->norm_backward(cur, dxd, dwd, with_b ? dbd : NULL, gd, xd, &wdv, &bdv, kind, 1e-5f, T, C, acc);
    char what[160];
    snprintf(what, sizeof what, "norm_backward kind %d %s T=%lld C=%lld%s", (int)kind, dt_name(dt), (long long)T, (long long)C,
             acc ? " +=" : "");
    char w2[200];
    snprintf(w2, sizeof w2, "%s dx", what), cmp_dev(w2, dxd, dx, T * C);
    snprintf(w2, sizeof w2, "%s dw", what), cmp_dev(w2, dwd, dw, C);
    if (with_b) snprintf(w2, sizeof w2, "%s db", what), cmp_dev(w2, dbd, db, C);
    cur->free(cur, wd), cur->free(cur, bd), cur->free(cur, xd), cur->free(cur, gd), cur->free(cur, dwd), cur->free(cur, dbd);
    cur->free(cur, dxd);
    free(wh), free(bh), free(x), free(dout), free(dx), free(dw), free(db);
}

/* attention_train and attention_backward on backend be against the CPU reference, B sequences
 * of T rows: f32 compute exactly (NMSE tol 1e-7); bf16 compute through the flash kernels (D 64
 * and 128), whose Q, K, V, dO and the probabilities are rounded to bf16 as transformers'
 * autocast does, with tol stated by the caller. The backward takes the device forward's output
 * and reserve (the log-sum-exps). */
static void attention_backward_case_on(hc_backend *be, double tol, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t D,
                                       int64_t window, float cap) {
    hc_backend *cpu = hc_backend_cpu();
    cur = be;
    const int64_t nq = B * T * H * D, nk = B * T * KVH * D;
    float *q = malloc(sizeof(float) * (size_t)nq), *k = malloc(sizeof(float) * (size_t)nk), *v = malloc(sizeof(float) * (size_t)nk);
    float *dout = malloc(sizeof(float) * (size_t)nq), *dq = malloc(sizeof(float) * (size_t)nq), *o = malloc(sizeof(float) * (size_t)nq);
    float *dk = malloc(sizeof(float) * (size_t)nk), *dv = malloc(sizeof(float) * (size_t)nk), *scratch = malloc(sizeof(float) * (size_t)(2 * T + 2));
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
    fill_rand(q, nq, 1), fill_rand(k, nk, 1), fill_rand(v, nk, 1), fill_rand(dout, nq, 1);
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)t;
    const float scale = 1.0f / sqrtf((float)D) * 2.0f; /* sharper than usual, so the softmax is not flat */
    cpu->attention_train(cpu, o, NULL, q, k, v, pos, B, T, H, KVH, D, scale, window, cap, scratch);
    cpu->attention_backward(cpu, dq, dk, dv, dout, o, NULL, q, k, v, pos, B, T, H, KVH, D, scale, window, cap, scratch);
    float *qd = up(q, sizeof(float) * (size_t)nq), *kd = up(k, sizeof(float) * (size_t)nk), *vd = up(v, sizeof(float) * (size_t)nk);
    float *gd = up(dout, sizeof(float) * (size_t)nq), *od = be->alloc(be, sizeof(float) * (size_t)nq);
    float *rd = be->alloc(be, sizeof(float) * (size_t)(B * T * H)), *sd = be->alloc(be, sizeof(float) * (size_t)(2 * T + 2));
    int32_t *pd = up(pos, sizeof(int32_t) * (size_t)T);
    float *dqd = be->alloc(be, sizeof(float) * (size_t)nq), *dkd = be->alloc(be, sizeof(float) * (size_t)nk);
    float *dvd = be->alloc(be, sizeof(float) * (size_t)nk);
    be->attention_train(be, od, rd, qd, kd, vd, pd, B, T, H, KVH, D, scale, window, cap, sd);
    be->attention_backward(be, dqd, dkd, dvd, gd, od, rd, qd, kd, vd, pd, B, T, H, KVH, D, scale, window, cap, sd);
    char what[160], w2[200];
    snprintf(what, sizeof what, "attention_%%s %s B=%lld T=%lld H=%lld KVH=%lld D=%lld window=%lld cap=%g",
             tol > 1e-7 ? "bf16" : "f32", (long long)B, (long long)T, (long long)H, (long long)KVH, (long long)D,
             (long long)window, (double)cap);
    const float *want[4] = {o, dq, dk, dv};
    const float *got[4] = {od, dqd, dkd, dvd};
    const int64_t n[4] = {nq, nq, nk, nk};
    static const char *const part[4] = {"train out", "backward dq", "backward dk", "backward dv"};
    for (int i = 0; i < 4; i++) {
        float *h = down(got[i], n[i]);
        snprintf(w2, sizeof w2, what, part[i]);
        report(w2, nmse(h, want[i], n[i]), tol);
        free(h);
    }
    be->free(be, qd), be->free(be, kd), be->free(be, vd), be->free(be, gd), be->free(be, od), be->free(be, pd);
    be->free(be, rd), be->free(be, sd), be->free(be, dqd), be->free(be, dkd), be->free(be, dvd);
    cur = gpu;
    free(q), free(k), free(v), free(dout), free(o), free(dq), free(dk), free(dv), free(scratch), free(pos);
}

/* matmul_add (out += alpha x W^T) with f32 weights, as LoRA's A and B are, plain and through a
 * transposed view, at decode and prompt sizes, on backend be against the CPU's op sequence. */
static void matmul_add_case(hc_backend *be, double tol, bool transposed, int64_t T, int64_t N, int64_t K) {
    hc_backend *cpu = hc_backend_cpu();
    cur = be;
    const int64_t ld = transposed ? N + 2 : K + 3, rows = transposed ? K : N;
    float *w = malloc(sizeof(float) * (size_t)(rows * ld)), *x = malloc(sizeof(float) * (size_t)(T * K));
    float *out = malloc(sizeof(float) * (size_t)(T * N)), *tmp = malloc(sizeof(float) * (size_t)(T * N));
    fill_rand(w, rows * ld, 0.5f), fill_rand(x, T * K, 1), fill_rand(out, T * N, 1);
    float *wd = up(w, sizeof(float) * (size_t)(rows * ld)), *xd = up(x, sizeof(float) * (size_t)(T * K));
    float *od = up(out, sizeof(float) * (size_t)(T * N)), *td = be->alloc(be, sizeof(float) * (size_t)(T * N));
    hc_mat hw = {.data = w, .dtype = HC_DTYPE_F32, .rows = N, .cols = K, .ld = ld, .transposed = transposed};
    hc_mat dw = hw;
    dw.data = wd;
    cpu->matmul_add(cpu, out, tmp, x, &hw, 0.75f, T);
    be->matmul_add(be, od, td, xd, &dw, 0.75f, T);
    char what[160];
    snprintf(what, sizeof what, "matmul_add %s%s T=%lld N=%lld K=%lld", tol > 1e-7 ? "bf16" : "f32",
             transposed ? " transposed" : "", (long long)T, (long long)N, (long long)K);
    float *got = down(od, T * N);
    report(what, nmse(got, out, T * N), tol);
    be->free(be, wd), be->free(be, xd), be->free(be, od), be->free(be, td);
    cur = gpu;
    free(w), free(x), free(out), free(tmp), free(got);
}

/* ffn_train and ffn_backward on backend be against the CPU's op sequence: the output, dx and
 * the weights' (and biases') gradients, which start random so += is checked. Weights of dtype
 * dt; on a bf16 backend with bf16 weights and no biases the kept activations are 16-bit. */
static void mlp_train_case(hc_backend *be, double tol, hc_dtype dt, bool bias, int64_t T, int64_t C, int64_t I, bool ow) {
    hc_backend *cpu = hc_backend_cpu();
    cur = be;
    void *wh[3] = {rand_typed(dt, I * C, 0.2f), rand_typed(dt, I * C, 0.2f), rand_typed(dt, C * I, 0.2f)};
    void *bh[3] = {rand_typed(dt, I, 0.5f), rand_typed(dt, I, 0.5f), rand_typed(dt, C, 0.5f)};
    const int64_t wn[3] = {I * C, I * C, C * I}, bn[3] = {I, I, C};
    float *x = malloc(sizeof(float) * (size_t)(T * C)), *dout = malloc(sizeof(float) * (size_t)(T * C));
    float *out = malloc(sizeof(float) * (size_t)(T * C)), *dx = malloc(sizeof(float) * (size_t)(T * C));
    float *keep = malloc(sizeof(float) * (size_t)(3 * T * I)), *scr = malloc(sizeof(float) * (size_t)(T * (3 * I + C)));
    float *g[3], *gb[3], *gd[3], *gbd[3];
    void *wd[3], *bd[3];
    hc_mat w[3], wv[3];
    hc_vec b[3], bv[3];
    fill_rand(x, T * C, 1), fill_rand(dout, T * C, 1);
    for (int i = 0; i < 3; i++) {
        g[i] = malloc(sizeof(float) * (size_t)wn[i]), gb[i] = malloc(sizeof(float) * (size_t)bn[i]);
        fill_rand(g[i], wn[i], 1), fill_rand(gb[i], bn[i], 1);
        gd[i] = up(g[i], sizeof(float) * (size_t)wn[i]), gbd[i] = up(gb[i], sizeof(float) * (size_t)bn[i]);
        wd[i] = up(wh[i], (size_t)wn[i] * hc_dtype_size(dt)), bd[i] = up(bh[i], (size_t)bn[i] * hc_dtype_size(dt));
        w[i] = (hc_mat){.data = wh[i], .dtype = dt, .rows = i < 2 ? I : C, .cols = i < 2 ? C : I, .ld = i < 2 ? C : I};
        wv[i] = w[i], wv[i].data = wd[i];
        b[i] = (hc_vec){.data = bias ? bh[i] : NULL, .dtype = dt, .n = bn[i]};
        bv[i] = b[i], bv[i].data = bias ? bd[i] : NULL;
    }
    float *xd = up(x, sizeof(float) * (size_t)(T * C)), *dod = up(dout, sizeof(float) * (size_t)(T * C));
    float *outd = be->alloc(be, sizeof(float) * (size_t)(T * C)), *dxd = be->alloc(be, sizeof(float) * (size_t)(T * C));
    float *kd = be->alloc(be, sizeof(float) * (size_t)(3 * T * I)), *sd = be->alloc(be, sizeof(float) * (size_t)(T * (3 * I + C)));
    cpu->ffn_train(cpu, out, keep, x, &w[0], &b[0], &w[1], &b[1], &w[2], &b[2], HC_ACT_SILU, T);
    cpu->ffn_backward(cpu, dx, g[0], bias ? gb[0] : NULL, g[1], bias ? gb[1] : NULL, g[2], bias ? gb[2] : NULL, dout, x, keep,
                      &w[0], &b[0], &w[1], &b[1], &w[2], &b[2], HC_ACT_SILU, T, scr, ow);
    be->ffn_train(be, outd, kd, xd, &wv[0], &bv[0], &wv[1], &bv[1], &wv[2], &bv[2], HC_ACT_SILU, T);
    be->ffn_backward(be, dxd, gd[0], bias ? gbd[0] : NULL, gd[1], bias ? gbd[1] : NULL, gd[2], bias ? gbd[2] : NULL, dod, xd,
                     kd, &wv[0], &bv[0], &wv[1], &bv[1], &wv[2], &bv[2], HC_ACT_SILU, T, sd, ow);
    static const char *const names[3] = {"dgate", "dup", "ddown"};
    char what[160];
    const char *tag = tol > 1e-7 ? "bf16" : "f32";
    float *got = down(outd, T * C);
    snprintf(what, sizeof what, "ffn_train %s %s%s T=%lld C=%lld I=%lld out", tag, dt_name(dt), bias ? " bias" : "",
             (long long)T, (long long)C, (long long)I);
    report(what, nmse(got, out, T * C), tol);
    free(got);
    got = down(dxd, T * C);
    snprintf(what, sizeof what, "ffn_backward %s %s%s T=%lld C=%lld I=%lld dx", tag, dt_name(dt), bias ? " bias" : "",
             (long long)T, (long long)C, (long long)I);
    report(what, nmse(got, dx, T * C), tol);
    free(got);
    for (int i = 0; i < 3; i++) {
        got = down(gd[i], wn[i]);
        snprintf(what, sizeof what, "ffn_backward %s %s T=%lld %s%s", tag, dt_name(dt), (long long)T, names[i],
                 ow ? " (overwritten)" : "");
        report(what, nmse(got, g[i], wn[i]), tol);
        free(got);
        if (!bias) continue;
        got = down(gbd[i], bn[i]);
        snprintf(what, sizeof what, "ffn_backward %s %s T=%lld %s bias", tag, dt_name(dt), (long long)T, names[i]);
        report(what, nmse(got, gb[i], bn[i]), tol);
        free(got);
    }
    for (int i = 0; i < 3; i++) {
        be->free(be, gd[i]), be->free(be, gbd[i]), be->free(be, wd[i]), be->free(be, bd[i]);
        free(wh[i]), free(bh[i]), free(g[i]), free(gb[i]);
    }
    be->free(be, xd), be->free(be, dod), be->free(be, outd), be->free(be, dxd), be->free(be, kd), be->free(be, sd);
    free(x), free(dout), free(out), free(dx), free(keep), free(scr);
    cur = gpu;
}

/* lm_loss (the LM head, the loss and its backward) on backend be against the CPU's op sequence:
 * the per-row losses, dx and dW (+= onto random values); rows 2 and 5 have no target. On a bf16
 * backend with bf16 weights and no soft-capping the logits are 16-bit. grad: with the backward. */
static void lm_loss_case(hc_backend *be, double tol, hc_dtype dt, float cap, bool grad, int64_t T, int64_t V, int64_t C,
                         bool ow) {
    hc_backend *cpu = hc_backend_cpu();
    cur = be;
    void *wh = rand_typed(dt, V * C, 0.3f);
    float *x = malloc(sizeof(float) * (size_t)(T * C)), *dx = malloc(sizeof(float) * (size_t)(T * C));
    float *dw = malloc(sizeof(float) * (size_t)(V * C)), *scr = malloc(sizeof(float) * (size_t)(2 * T * V));
    float *loss = malloc(sizeof(float) * (size_t)T), *hit = malloc(sizeof(float) * (size_t)T);
    int32_t *tg = malloc(sizeof(int32_t) * (size_t)T);
    fill_rand(x, T * C, 1), fill_rand(dw, V * C, 1);
    for (int64_t t = 0; t < T; t++) tg[t] = t == 2 || t == 5 ? -1 : (int32_t)((t * 37) % V);
    void *wd = up(wh, (size_t)(V * C) * hc_dtype_size(dt));
    float *xd = up(x, sizeof(float) * (size_t)(T * C)), *dwd = up(dw, sizeof(float) * (size_t)(V * C));
    float *dxd = be->alloc(be, sizeof(float) * (size_t)(T * C)), *sd = be->alloc(be, sizeof(float) * (size_t)(2 * T * V));
    float *ld = be->alloc(be, sizeof(float) * (size_t)T), *hd = be->alloc(be, sizeof(float) * (size_t)T);
    int32_t *td = up(tg, sizeof(int32_t) * (size_t)T);
    hc_mat w = {.data = wh, .dtype = dt, .rows = V, .cols = C, .ld = C}, wv = w;
    wv.data = wd;
    cpu->lm_loss(cpu, grad ? dx : NULL, grad ? dw : NULL, loss, hit, x, &w, cap, tg, T, 1.0 / 7, scr, ow);
    be->lm_loss(be, grad ? dxd : NULL, grad ? dwd : NULL, ld, hd, xd, &wv, cap, td, T, 1.0 / 7, sd, ow);
    char what[160];
    snprintf(what, sizeof what, "lm_loss %s %s%s%s%s T=%lld V=%lld C=%lld", tol > 1e-7 ? "bf16" : "f32", dt_name(dt),
             cap > 0 ? " softcap" : "", grad ? "" : " (no backward)", ow ? " (overwritten)" : "", (long long)T, (long long)V,
             (long long)C);
    char w2[200];
    float *got = down(ld, T);
    snprintf(w2, sizeof w2, "%s loss", what), report(w2, nmse(got, loss, T), tol);
    free(got);
    if (grad) {
        got = down(dxd, T * C);
        snprintf(w2, sizeof w2, "%s dx", what), report(w2, nmse(got, dx, T * C), tol);
        free(got);
        got = down(dwd, V * C);
        snprintf(w2, sizeof w2, "%s dW", what), report(w2, nmse(got, dw, V * C), tol);
        free(got);
    }
    be->free(be, wd), be->free(be, xd), be->free(be, dwd), be->free(be, dxd), be->free(be, sd), be->free(be, ld);
    be->free(be, hd), be->free(be, td);
    free(wh), free(x), free(dx), free(dw), free(scr), free(loss), free(hit), free(tg);
    cur = gpu;
}

/* matmul_n_backward (q, k and v's backward) on backend be against the CPU's op sequence; n1:
 * the second weight's rows (a GPU puts the outputs side by side when every count is a multiple
 * of 4). */
static void matmul_n_backward_case(hc_backend *be, double tol, hc_dtype dt, bool bias, int64_t T, int64_t K, bool ow,
                                   int64_t n1) {
    hc_backend *cpu = hc_backend_cpu();
    cur = be;
    const int64_t N[3] = {64, n1, 24};
    void *wh[3], *bh[3], *wd[3], *bd[3];
    float *d[3], *dd[3], *g[3], *gd[3], *gb[3], *gbd[3];
    hc_mat w[3], wv[3];
    const hc_mat *ws[3], *wvs[3];
    float *x = malloc(sizeof(float) * (size_t)(T * K)), *dx = malloc(sizeof(float) * (size_t)(T * K));
    float *tmp = malloc(sizeof(float) * (size_t)(T * K));
    fill_rand(x, T * K, 1);
    for (int i = 0; i < 3; i++) {
        wh[i] = rand_typed(dt, N[i] * K, 0.3f), bh[i] = rand_typed(dt, N[i], 0.3f);
        d[i] = malloc(sizeof(float) * (size_t)(T * N[i])), g[i] = malloc(sizeof(float) * (size_t)(N[i] * K));
        gb[i] = malloc(sizeof(float) * (size_t)N[i]);
        fill_rand(d[i], T * N[i], 1), fill_rand(g[i], N[i] * K, 1), fill_rand(gb[i], N[i], 1);
        wd[i] = up(wh[i], (size_t)(N[i] * K) * hc_dtype_size(dt)), bd[i] = up(bh[i], (size_t)N[i] * hc_dtype_size(dt));
        dd[i] = up(d[i], sizeof(float) * (size_t)(T * N[i])), gd[i] = up(g[i], sizeof(float) * (size_t)(N[i] * K));
        gbd[i] = up(gb[i], sizeof(float) * (size_t)N[i]);
        w[i] = (hc_mat){.data = wh[i], .dtype = dt, .rows = N[i], .cols = K, .ld = K};
        wv[i] = w[i], wv[i].data = wd[i];
        ws[i] = &w[i], wvs[i] = &wv[i];
    }
    float *xd = up(x, sizeof(float) * (size_t)(T * K)), *dxd = be->alloc(be, sizeof(float) * (size_t)(T * K));
    float *td = be->alloc(be, sizeof(float) * (size_t)(T * K));
    float *const gs[3] = {g[0], g[1], g[2]}, *const gds[3] = {gd[0], gd[1], gd[2]};
    float *const gbs[3] = {bias ? gb[0] : NULL, bias ? gb[1] : NULL, bias ? gb[2] : NULL};
    float *const gbds[3] = {bias ? gbd[0] : NULL, bias ? gbd[1] : NULL, bias ? gbd[2] : NULL};
    const float *const ds[3] = {d[0], d[1], d[2]}, *const dds[3] = {dd[0], dd[1], dd[2]};
    cpu->matmul_n_backward(cpu, dx, gs, gbs, ds, x, ws, 3, T, tmp, ow);
    be->matmul_n_backward(be, dxd, gds, gbds, dds, xd, wvs, 3, T, td, ow);
    char what[160];
    const char *tag = tol > 1e-7 ? "bf16" : "f32";
    float *got = down(dxd, T * K);
    snprintf(what, sizeof what, "matmul_n_backward %s %s%s T=%lld K=%lld dx", tag, dt_name(dt), bias ? " bias" : "",
             (long long)T, (long long)K);
    report(what, nmse(got, dx, T * K), tol);
    free(got);
    for (int i = 0; i < 3; i++) {
        got = down(gd[i], N[i] * K);
        snprintf(what, sizeof what, "matmul_n_backward %s %s T=%lld dW%d%s", tag, dt_name(dt), (long long)T, i,
                 ow ? " (overwritten)" : "");
        report(what, nmse(got, g[i], N[i] * K), tol);
        free(got);
        if (bias) {
            got = down(gbd[i], N[i]);
            snprintf(what, sizeof what, "matmul_n_backward %s %s T=%lld db%d", tag, dt_name(dt), (long long)T, i);
            report(what, nmse(got, gb[i], N[i]), tol);
            free(got);
        }
        be->free(be, wd[i]), be->free(be, bd[i]), be->free(be, dd[i]), be->free(be, gd[i]), be->free(be, gbd[i]);
        free(wh[i]), free(bh[i]), free(d[i]), free(g[i]), free(gb[i]);
    }
    be->free(be, xd), be->free(be, dxd), be->free(be, td);
    free(x), free(dx), free(tmp);
    cur = gpu;
}

static void attention_backward_case(int64_t T, int64_t H, int64_t KVH, int64_t D, int64_t window, float cap) {
    attention_backward_case_on(gpu, 1e-7, 1, T, H, KVH, D, window, cap);
}

static void test_backward(hc_backend *bf16) {
    hc_backend *cpu = hc_backend_cpu();
    const hc_dtype dts[] = {HC_DTYPE_F32, HC_DTYPE_BF16, HC_DTYPE_F16};
    for (int i = 0; i < 3; i++) {
        matmul_backward_case(dts[i], false, true, 7, 45, 33);
        matmul_backward_case(dts[i], true, true, 3, 29, 70);
    }
    matmul_backward_case(HC_DTYPE_BF16, false, false, 100, 130, 67); /* T above the GEMV path */
    matmul_backward_case(HC_DTYPE_F32, true, false, 70, 33, 90);
    for (int kind = 0; kind < 3; kind++) {
        norm_backward_case((hc_norm_kind)kind, HC_DTYPE_F32, kind == HC_NORM_LAYER, 9, 77, false);
        norm_backward_case((hc_norm_kind)kind, HC_DTYPE_BF16, kind == HC_NORM_LAYER, 5, 300, kind == 1);
    }
    norm_backward_case(HC_NORM_RMS, HC_DTYPE_F32, false, 33, 8, false); /* per head: many short rows */
    norm_backward_case(HC_NORM_RMS, HC_DTYPE_BF16, false, 1500, 256, true); /* several rows a block */
    norm_backward_case(HC_NORM_RMS_PLUS1, HC_DTYPE_BF16, false, 2000, 130, false);
    norm_backward_case(HC_NORM_LAYER, HC_DTYPE_F32, true, 3000, 96, true);
    norm_backward_case(HC_NORM_RMS_PLUS1, HC_DTYPE_BF16, false, 300, 2048, true); /* 2, 3, 4 float4s a thread */
    norm_backward_case(HC_NORM_RMS, HC_DTYPE_F32, false, 100, 3000, false);
    norm_backward_case(HC_NORM_LAYER, HC_DTYPE_F32, true, 70, 4096, false);
    norm_backward_case(HC_NORM_LAYER, HC_DTYPE_F32, true, 3, 7000, true); /* too wide for shared sums */
    attention_backward_case(13, 4, 2, 16, 0, 0);
    attention_backward_case(37, 6, 1, 24, 0, 0);
    attention_backward_case(29, 4, 4, 8, 7, 0);
    attention_backward_case(21, 8, 2, 32, 0, 30.0f);
    attention_backward_case(150, 2, 1, 64, 40, 50.0f);
    /* bf16 compute: the flash kernels (D 64 and 128; odd T, GQA, windows, soft-capping); other
     * head dims take the f32 path on this backend too */
    attention_backward_case_on(bf16, 1e-4, 1, 150, 4, 2, 64, 0, 0);
    attention_backward_case_on(bf16, 1e-4, 3, 77, 4, 4, 128, 0, 0);
    attention_backward_case_on(bf16, 1e-4, 2, 200, 8, 2, 64, 70, 0);
    attention_backward_case_on(bf16, 1e-4, 2, 130, 6, 3, 128, 0, 30.0f);
    attention_backward_case_on(bf16, 1e-4, 4, 512, 8, 1, 64, 0, 0);
    attention_backward_case_on(bf16, 1e-4, 2, 16, 2, 1, 64, 5, 0);
    /* D 24 on the bf16 backend: the op sequence, whose products of f32 operands cuBLAS may run
     * with CUBLAS_COMPUTE_32F_FAST_16BF (gemm_core); its NMSE read 6e-8 to 1.01e-7 over the
     * sessions' runs, as the random data moved with the tests added before it */
    attention_backward_case_on(bf16, 1e-6, 2, 40, 4, 2, 24, 0, 0);
    attention_backward_case_on(gpu, 1e-7, 3, 33, 4, 2, 64, 0, 0);
    /* the gated MLP's training ops: 16-bit kept activations on the bf16 backend (bf16 weights,
     * no biases, T above the GEMV sizes), the op sequence otherwise */
    mlp_train_case(gpu, 1e-7, HC_DTYPE_BF16, false, 37, 48, 80, false);
    mlp_train_case(gpu, 1e-7, HC_DTYPE_F32, true, 5, 24, 40, true);
    mlp_train_case(bf16, 1e-4, HC_DTYPE_BF16, false, 100, 64, 176, false);
    mlp_train_case(bf16, 1e-4, HC_DTYPE_BF16, false, 100, 64, 176, true);
    mlp_train_case(bf16, 1e-4, HC_DTYPE_BF16, false, 37, 40, 24, false); /* C > I */
    mlp_train_case(bf16, 1e-4, HC_DTYPE_BF16, true, 100, 64, 96, false);
    mlp_train_case(bf16, 1e-4, HC_DTYPE_BF16, false, 3, 64, 96, true);
    lm_loss_case(gpu, 1e-7, HC_DTYPE_BF16, 0, true, 9, 300, 40, false);
    lm_loss_case(gpu, 1e-7, HC_DTYPE_F32, 30.0f, true, 9, 300, 40, true);
    lm_loss_case(bf16, 1e-4, HC_DTYPE_BF16, 0, true, 100, 1000, 64, false);
    lm_loss_case(bf16, 1e-4, HC_DTYPE_BF16, 0, true, 100, 1000, 64, true);
    lm_loss_case(bf16, 1e-4, HC_DTYPE_BF16, 0, false, 100, 1000, 64, false);
    lm_loss_case(bf16, 1e-4, HC_DTYPE_BF16, 30.0f, true, 100, 1000, 64, false);
    matmul_n_backward_case(gpu, 1e-7, HC_DTYPE_BF16, true, 9, 40, false, 16);
    matmul_n_backward_case(gpu, 1e-7, HC_DTYPE_BF16, false, 9, 40, true, 16);
    matmul_n_backward_case(bf16, 1e-4, HC_DTYPE_BF16, false, 100, 72, false, 16);
    matmul_n_backward_case(bf16, 1e-4, HC_DTYPE_BF16, false, 100, 72, true, 16);
    matmul_n_backward_case(bf16, 1e-4, HC_DTYPE_BF16, true, 100, 72, true, 16);
    matmul_n_backward_case(bf16, 1e-4, HC_DTYPE_F32, false, 100, 72, false, 16);
    matmul_n_backward_case(bf16, 1e-4, HC_DTYPE_BF16, false, 100, 72, true, 18);
    for (int tr = 0; tr < 2; tr++) {
        matmul_add_case(gpu, 1e-7, tr, 3, 40, 8);
        matmul_add_case(gpu, 1e-7, tr, 100, 70, 8);
        matmul_add_case(bf16, 1e-4, tr, 100, 300, 8);
        matmul_add_case(bf16, 1e-4, tr, 77, 8, 260);
    }
    /* embedding: two rows share an id, and a transposed table */
    for (int tr = 0; tr < 2; tr++) {
        const int64_t V = 11, C = 37, T = 9, ld = tr ? V + 2 : C + 3, rows = tr ? C : V;
        float *dt = malloc(sizeof(float) * (size_t)(rows * ld)), *dout = malloc(sizeof(float) * (size_t)(T * C));
        int32_t ids[9] = {3, 0, 10, 3, 5, 5, 5, 1, 9};
        fill_rand(dt, rows * ld, 1), fill_rand(dout, T * C, 1);
        float *dtd = up(dt, sizeof(float) * (size_t)(rows * ld)), *gd = up(dout, sizeof(float) * (size_t)(T * C));
        int32_t *idd = up(ids, sizeof ids);
        hc_mat table = {.data = NULL, .dtype = HC_DTYPE_F32, .rows = V, .cols = C, .ld = ld, .transposed = tr};
        cpu->embedding_backward(cpu, dt, &table, dout, ids, T, 0.7f);
        cur->embedding_backward(cur, dtd, &table, gd, idd, T, 0.7f);
        cmp_dev(tr ? "embedding_backward transposed" : "embedding_backward", dtd, dt, rows * ld);
        cur->free(cur, dtd), cur->free(cur, gd), cur->free(cur, idd);
        free(dt), free(dout);
    }
    /* rope: partial rotary dims, positions not from 0 */
    {
        const int64_t T = 5, nh = 3, D = 20, R = 12;
        float *x = malloc(sizeof(float) * (size_t)(T * nh * D)), inv[6];
        int32_t pos[5] = {7, 8, 9, 100, 2047};
        fill_rand(x, T * nh * D, 1);
        for (int i = 0; i < 6; i++) inv[i] = powf(10000.0f, -2.0f * (float)i / (float)R);
        float *xd = up(x, sizeof(float) * (size_t)(T * nh * D)), *invd = up(inv, sizeof inv);
        int32_t *pd = up(pos, sizeof pos);
        cpu->rope_backward(cpu, x, pos, inv, 1.1f, T, nh, D, R);
        cur->rope_backward(cur, xd, pd, invd, 1.1f, T, nh, D, R);
        cmp_dev("rope_backward", xd, x, T * nh * D);
        cur->free(cur, xd), cur->free(cur, invd), cur->free(cur, pd);
        free(x);
    }
    /* the loss, forward and backward, with rows that have no target and a tie for the argmax;
     * a vocabulary that rows of 8 divide (16-byte loads) and one they do not */
    for (int64_t V = 1001; V >= 1000; V--) {
        const int64_t T = 6;
        float *lg = malloc(sizeof(float) * (size_t)(T * V)), *dl = malloc(sizeof(float) * (size_t)(T * V));
        float loss[6], hit[6];
        int32_t tg[6] = {5, -1, (int32_t)V - 1, 0, 77, 3};
        fill_rand(lg, T * V, 8);
        lg[3 * V + 0] = lg[3 * V + 9] = lg[3 * V + 256] = 20; /* row 3: ties, the first (its target) wins */
        cpu->cross_entropy(cpu, dl, loss, hit, lg, tg, T, V, 1.0 / 5);
        float *lgd = up(lg, sizeof(float) * (size_t)(T * V)), *dld = cur->alloc(cur, sizeof(float) * (size_t)(T * V));
        float *lsd = cur->alloc(cur, sizeof loss), *htd = cur->alloc(cur, sizeof hit);
        int32_t *tgd = up(tg, sizeof tg);
        cur->cross_entropy(cur, dld, lsd, htd, lgd, tgd, T, V, 1.0 / 5);
        cmp_dev("cross_entropy dlogits", dld, dl, T * V);
        cmp_dev("cross_entropy loss", lsd, loss, T);
        float hh[6];
        cur->download(cur, hh, htd, sizeof hh);
        CHECK(!memcmp(hh, hit, sizeof hh) && hit[3] == 1, "cross_entropy: the same argmax hits");
        /* greedy ids on the device: the first maximum, as the CPU */
        int32_t am[6], amd_h[6];
        int32_t *amd = cur->alloc(cur, sizeof am);
        cpu->argmax_rows(cpu, am, lg, T, V);
        cur->argmax_rows(cur, amd, lgd, T, V);
        cur->download(cur, amd_h, amd, sizeof amd_h);
        CHECK(!memcmp(am, amd_h, sizeof am) && am[3] == 0, "argmax_rows: the CPU's ids (tie: the first)");
        cur->free(cur, amd);
        if (V == 1001) { /* rows longer than a block's chunk: ties across chunks, NaNs, -0 and +0; twice */
            const int64_t LV = 3 * 4096 + 5, LT = 4;
            float *lv = malloc(sizeof(float) * (size_t)(LT * LV));
            fill_rand(lv, LT * LV, 9);
            lv[5000] = lv[9000] = 30;                                              /* row 0: 5000 */
            for (int64_t i = 0; i < LV; i++) lv[LV + i] = NAN;                     /* row 1: only NaNs, 0 */
            for (int64_t i = 3; i < LV; i += 7) lv[2 * LV + i] = NAN; /* (a NaN first: the CPU keeps 0) */
            lv[2 * LV + LV - 1] = 30;                                              /* row 2: the last */
            for (int64_t i = 0; i < LV; i++) lv[3 * LV + i] = -1;
            lv[3 * LV + 6000] = -0.0f, lv[3 * LV + 8000] = 0.0f;                   /* row 3: 6000 */
            int32_t lam[4], lamd_h[4];
            int32_t *lamd = cur->alloc(cur, sizeof lam);
            float *lvd = up(lv, sizeof(float) * (size_t)(LT * LV));
            cpu->argmax_rows(cpu, lam, lv, LT, LV);
            for (int rep = 0; rep < 2; rep++) {
                cur->argmax_rows(cur, lamd, lvd, LT, LV);
                cur->download(cur, lamd_h, lamd, sizeof lamd_h);
                CHECK(!memcmp(lam, lamd_h, sizeof lam) && lam[0] == 5000 && lam[1] == 0 && lam[2] == LV - 1 && lam[3] == 6000,
                      "argmax_rows: long rows, the CPU's ids (%d %d %d %d against %d %d %d %d)", lamd_h[0], lamd_h[1],
                      lamd_h[2], lamd_h[3], lam[0], lam[1], lam[2], lam[3]);
            }
            cur->free(cur, lamd), cur->free(cur, lvd);
            free(lv);
        }
        /* copy, sum_squares */
        cur->copy(cur, dld, lgd, T * V);
        cmp_dev("copy", dld, lg, T * V);
        /* sum_squares accumulates: two calls onto a start of 1 */
        double ss = 1, ssd = 1;
        double *ssdev = up(&ssd, sizeof ssd);
        cpu->sum_squares(cpu, &ss, lg, T * V);
        cpu->sum_squares(cpu, &ss, lg, 7);
        cur->sum_squares(cur, ssdev, lgd, T * V);
        cur->sum_squares(cur, ssdev, lgd, 7);
        cur->download(cur, &ssd, ssdev, sizeof ssd);
        cur->free(cur, ssdev);
        CHECK(fabs(ss - ssd) <= 1e-12 * ss, "sum_squares %.17g vs %.17g", ssd, ss);
        cur->free(cur, lgd), cur->free(cur, dld), cur->free(cur, lsd), cur->free(cur, htd), cur->free(cur, tgd);
        free(lg), free(dl);
    }
    /* AdamW: two steps from the same state, writing bf16 weights */
    {
        const int64_t n = 777;
        float *w = malloc(sizeof(float) * n), *m1 = calloc(n, 4), *m2 = calloc(n, 4), *g = malloc(sizeof(float) * n);
        uint16_t *o = malloc(2 * n), *od = malloc(2 * n);
        fill_rand(w, n, 1), fill_rand(g, n, 0.1f);
        float *wd = up(w, sizeof(float) * n), *m1d = up(m1, sizeof(float) * n), *m2d = up(m2, sizeof(float) * n);
        float *gd = up(g, sizeof(float) * n);
        void *outd = cur->alloc(cur, 2 * n);
        const hc_adamw_params ap = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1};
        for (int step = 1; step <= 2; step++) {
            cpu->adamw(cpu, w, m1, m2, g, 0.5f, n, &ap, step, o, HC_DTYPE_BF16);
            cur->adamw(cur, wd, m1d, m2d, gd, 0.5f, n, &ap, step, outd, HC_DTYPE_BF16);
        }
        cmp_dev("adamw w", wd, w, n);
        cmp_dev("adamw m2", m2d, m2, n);
        cur->download(cur, od, outd, 2 * n);
        int same = 0;
        for (int64_t i = 0; i < n; i++) same += od[i] == o[i];
        CHECK(same >= n - 2, "adamw: bf16 weights written (%d of %lld equal)", same, (long long)n);
        cur->free(cur, wd), cur->free(cur, m1d), cur->free(cur, m2d), cur->free(cur, gd), cur->free(cur, outd);
        free(w), free(m1), free(m2), free(g), free(o), free(od);
    }
    /* glu for each activation, gated and not; softcap */
    {
        const int64_t n = 1000;
        float *g = malloc(sizeof(float) * n), *u = malloc(sizeof(float) * n), *d = malloc(sizeof(float) * n);
        float *dg = malloc(sizeof(float) * n), *du = malloc(sizeof(float) * n);
        fill_rand(g, n, 4), fill_rand(u, n, 1), fill_rand(d, n, 1);
        float *gd = up(g, sizeof(float) * n), *ud = up(u, sizeof(float) * n), *dd = up(d, sizeof(float) * n);
        float *dgd = cur->alloc(cur, sizeof(float) * n), *dud = cur->alloc(cur, sizeof(float) * n);
        const hc_activation acts[] = {HC_ACT_SILU, HC_ACT_GELU_TANH, HC_ACT_GELU, HC_ACT_RELU};
        for (int a = 0; a < 4; a++)
            for (int gated = 0; gated < 2; gated++) {
                cpu->glu_backward(cpu, dg, gated ? du : NULL, d, g, gated ? u : NULL, acts[a], n);
                cur->glu_backward(cur, dgd, gated ? dud : NULL, dd, gd, gated ? ud : NULL, acts[a], n);
                char what[80];
                snprintf(what, sizeof what, "glu_backward act %d%s dgate", a, gated ? " gated" : "");
                cmp_dev(what, dgd, dg, n);
                if (gated) snprintf(what, sizeof what, "glu_backward act %d dup", a), cmp_dev(what, dud, du, n);
            }
        for (int64_t i = 0; i < n; i++) u[i] = 30.0f * tanhf(g[i] * 5 / 30.0f); /* y of a cap of 30 */
        cur->upload(cur, ud, u, sizeof(float) * n);
        cpu->softcap_backward(cpu, dg, d, u, 30.0f, n);
        cur->softcap_backward(cur, dgd, dd, ud, 30.0f, n);
        cmp_dev("softcap_backward", dgd, dg, n);
        cur->free(cur, gd), cur->free(cur, ud), cur->free(cur, dd), cur->free(cur, dgd), cur->free(cur, dud);
        free(g), free(u), free(d), free(dg), free(du);
    }
}

int main(void) {
    char why[200];
    if (!hc_cuda_available(why, sizeof why)) {
        printf("skipped: test_cuda_ops needs a GPU (%s)\n", why);
        return 77; /* CTest's skip code (SKIP_RETURN_CODE) */
    }
    hc_backend *bf16 = NULL, *f16 = NULL;
    CHECK_OK(hc_backend_cuda_new(0, HC_DTYPE_F32, &gpu));
    CHECK_OK(hc_backend_cuda_new(0, HC_DTYPE_BF16, &bf16));
    CHECK_OK(hc_backend_cuda_new(0, HC_DTYPE_F16, &f16));
    if (!gpu || !bf16 || !f16) return test_finish("cuda ops");
    cur = gpu;
    test_matmul(bf16, f16);
    test_norm_rope_embed();
    test_attention();
    test_store_then_attention();
    test_flash_attention(bf16);
    test_acts16(bf16, f16);
    test_elementwise();
    test_fused(bf16);
    fused_case(bf16, "bf16 BF16", HC_DTYPE_BF16, 0, 100, false, HC_ACT_SILU, 1e-4, true);
    test_fused_quant();
    test_rows();
    test_backward(bf16);
    CHECK_OK(gpu->check(gpu));
    CHECK_OK(bf16->check(bf16));
    gpu->destroy(gpu);
    bf16->destroy(bf16);
    f16->destroy(f16);
    return test_finish("cuda ops");
}
