/* The CUDA backend's memory functions, op table, error capture and decode-step graphs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/common.cuh"

extern "C" {
#include "base/status.h"
}

bool hc_cuda_fail(hc_backend *be, cudaError_t e, const char *what) {
    hc_cuda_ctx *cx = hc_cuda(be);
    cx->op_seq++; /* every launch and copy passes here: it ends the validity of acts16 */
    if (e == cudaSuccess) return cx->failed != 0;
    if (!cx->failed) {
        snprintf(cx->error, sizeof cx->error, "CUDA error in %s: %s", what, cudaGetErrorString(e));
        cx->failed = 1;
    }
    return true;
}

void *hc_cuda_acts16_begin(hc_backend *be, int64_t n) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (cx->compute == HC_DTYPE_F32 || cx->capturing || n <= 0) return NULL;
    cx->acts16_src = NULL; /* until done() */
    cx->f32_missing = NULL; /* its only copy is about to be overwritten: no longer read (h_matmul_only) */
    return hc_cuda_scratch(be, &cx->acts16, &cx->acts16_bytes, 2 * (size_t)n);
}

void hc_cuda_acts16_done(hc_backend *be, const float *out, int64_t n) {
    hc_cuda_ctx *cx = hc_cuda(be);
    cx->acts16_src = out, cx->acts16_n = n, cx->acts16_seq = cx->op_seq;
}

static void drop_graphs(hc_cuda_ctx *cx) {
    for (int i = 0; i < cx->n_graphs; i++)
        if (cx->graphs[i].exec) cudaGraphExecDestroy(cx->graphs[i].exec);
    cx->n_graphs = 0;
}

void *hc_cuda_scratch(hc_backend *be, void **buf, size_t *cap, size_t bytes) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (bytes <= *cap) return *buf;
    if (cx->capturing) { /* a graph must not allocate: the eager runs before it sized this */
        hc_cuda_fail(be, cudaErrorStreamCaptureUnsupported, "scratch growth during graph capture");
        return NULL;
    }
    cudaStreamSynchronize(cx->stream);
    drop_graphs(cx); /* a recording may hold the old buffer */
    if (*buf) cudaFree(*buf);
    *buf = NULL;
    *cap = 0;
    size_t want = bytes + bytes / 4;
    if (hc_cuda_fail(be, cudaMalloc(buf, want), "scratch allocation")) return NULL;
    *cap = want;
    return *buf;
}

static void *cuda_alloc(hc_backend *be, size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 256) != cudaSuccess) {
        cudaGetLastError(); /* an out-of-memory answer is not a sticky error */
        return NULL;
    }
    if (cudaMemsetAsync(p, 0, bytes, hc_cuda(be)->stream) != cudaSuccess) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free(hc_backend *be, void *p) {
    hc_cuda_ctx *cx = hc_cuda(be);
    /* A captured graph holds raw pointers: any free may leave one pointing at freed memory. */
    drop_graphs(cx);
    cudaStreamSynchronize(cx->stream);
    cx->f32_missing = NULL; /* it may lie in p, and p's address may come back */
    cudaFree(p);
}

static void cuda_upload(hc_backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes || hc_cuda(be)->failed) return;
    hc_cuda_fail(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, hc_cuda(be)->stream), "upload");
}

/* Synchronous, through a page-locked staging buffer (kept and grown as needed). After a failure
 * the destination is filled with NaN, so no caller reads stale numbers as results; check() says
 * what went wrong. */
static void cuda_download(hc_backend *be, void *dst, const void *src, size_t bytes) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (!bytes) return;
    if (!cx->failed && bytes > cx->pinned_bytes) {
        if (cx->pinned) cudaFreeHost(cx->pinned);
        cx->pinned = NULL;
        cx->pinned_bytes = 0;
        if (cudaMallocHost(&cx->pinned, bytes) == cudaSuccess) cx->pinned_bytes = bytes;
        else cudaGetLastError(); /* no page-locked memory: copy straight into dst */
    }
    void *stage = bytes <= cx->pinned_bytes ? cx->pinned : dst;
    if (!cx->failed) {
        hc_cuda_fail(be, cudaMemcpyAsync(stage, src, bytes, cudaMemcpyDeviceToHost, cx->stream), "download");
        hc_cuda_fail(be, cudaStreamSynchronize(cx->stream), "a queued kernel");
    }
    if (cx->failed) memset(dst, 0xff, bytes);
    else if (stage != dst) memcpy(dst, stage, bytes);
}

static hc_status cuda_check(hc_backend *be) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (!cx->failed) hc_cuda_fail(be, cudaStreamSynchronize(cx->stream), "a queued kernel");
    if (cx->failed) return hc_fail(HC_ERR_DEVICE, "%s", cx->error);
    return HC_OK;
}

static void cuda_mem_info(hc_backend *be, size_t *free_bytes, size_t *total_bytes) {
    (void)be;
    *free_bytes = *total_bytes = 0;
    if (cudaMemGetInfo(free_bytes, total_bytes) != cudaSuccess) cudaGetLastError();
}

/* Runs fn(arg), the ops of one decode step. The same step with the same buffers (the key)
 * runs eagerly once, is captured into a CUDA graph the second time, and replays after that,
 * so a small model is not bound by a few hundred kernel launches per token. */
static void cuda_graph_run(hc_backend *be, const void *key, size_t key_len, void (*fn)(void *), void *arg) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (cx->failed || key_len > sizeof cx->graphs[0].key || cx->no_graphs) {
        fn(arg);
        return;
    }
    hc_cuda_graph *g = NULL;
    for (int i = 0; i < cx->n_graphs; i++)
        if (cx->graphs[i].key_len == key_len && !memcmp(cx->graphs[i].key, key, key_len)) g = &cx->graphs[i];
    if (!g) {
        if (cx->n_graphs == HC_CUDA_MAX_GRAPHS) drop_graphs(cx);
        g = &cx->graphs[cx->n_graphs++];
        memset(g, 0, sizeof *g);
        memcpy(g->key, key, key_len);
        g->key_len = key_len;
    }
    if (g->exec) {
        if (!cx->timing) {
            hc_cuda_fail(be, cudaGraphLaunch(g->exec, cx->stream), "graph launch");
            return;
        }
        /* HUBCAP_CUDA_TIMING: the GPU time of each replay, to tell it from host time. */
        cudaEventRecord(cx->ev[0], cx->stream);
        hc_cuda_fail(be, cudaGraphLaunch(g->exec, cx->stream), "graph launch");
        cudaEventRecord(cx->ev[1], cx->stream);
        cudaEventSynchronize(cx->ev[1]);
        float ms = 0;
        cudaEventElapsedTime(&ms, cx->ev[0], cx->ev[1]);
        cx->replay_ms += ms;
        cx->replays++;
        return;
    }
    if (g->seen++ == 0) {
        fn(arg);
        return;
    }
    cudaGraph_t graph = NULL;
    if (hc_cuda_fail(be, cudaStreamBeginCapture(cx->stream, cudaStreamCaptureModeThreadLocal), "graph capture")) return;
    cx->capturing = true;
    fn(arg);
    cx->capturing = false;
    cudaError_t e = cudaStreamEndCapture(cx->stream, &graph);
    if (hc_cuda_fail(be, e, "graph capture")) return;
    e = cudaGraphInstantiate(&g->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (hc_cuda_fail(be, e, "graph instantiation")) return;
    hc_cuda_fail(be, cudaGraphLaunch(g->exec, cx->stream), "graph launch");
}

static void cuda_destroy(hc_backend *be) {
    hc_cuda_ctx *cx = hc_cuda(be);
    if (cx->timing && cx->replays)
        fprintf(stderr, "hubcap cuda: %lld graph replays, %.3f ms of GPU time each\n", (long long)cx->replays,
                cx->replay_ms / (double)cx->replays);
    if (cx->timing) cudaEventDestroy(cx->ev[0]), cudaEventDestroy(cx->ev[1]);
    drop_graphs(cx);
    cudaStreamSynchronize(cx->stream);
    if (cx->scratch_a) cudaFree(cx->scratch_a);
    if (cx->scratch_b) cudaFree(cx->scratch_b);
    if (cx->mmq_x) cudaFree(cx->mmq_x);
    if (cx->acts16) cudaFree(cx->acts16);
    if (cx->partials) cudaFree(cx->partials);
    if (cx->train_scratch) cudaFree(cx->train_scratch);
    if (cx->kv16) cudaFree(cx->kv16);
    if (cx->dw16) cudaFree(cx->dw16);
    if (cx->argmax_state) cudaFree(cx->argmax_state);
    if (cx->att_done) cudaFree(cx->att_done);
    if (cx->pinned) cudaFreeHost(cx->pinned);
    if (cx->blas) cublasDestroy(cx->blas);
    if (cx->stream) cudaStreamDestroy(cx->stream);
    free(cx);
    free(be);
}

extern "C" bool hc_cuda_available(char *why, size_t cap) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(why, cap, "no usable CUDA GPU (%s)", cudaGetErrorString(e));
        cudaGetLastError();
        return false;
    }
    if (n == 0) {
        snprintf(why, cap, "no CUDA GPU found");
        return false;
    }
    return true;
}

extern "C" hc_status hc_backend_cuda_new(int device_index, hc_dtype compute, hc_backend **out) {
    *out = NULL;
    char why[200];
    if (!hc_cuda_available(why, sizeof why)) return hc_fail(HC_ERR_DEVICE, "--device cuda: %s", why);
    if (compute != HC_DTYPE_F32 && compute != HC_DTYPE_BF16 && compute != HC_DTYPE_F16)
        return hc_fail(HC_ERR_UNSUPPORTED, "compute dtype %s: use F32, BF16 or F16", hc_dtype_name(compute));
    cudaError_t e = cudaSetDevice(device_index);
    if (e != cudaSuccess) return hc_fail(HC_ERR_DEVICE, "--device cuda: cannot open GPU %d: %s", device_index, cudaGetErrorString(e));
    cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, device_index);
    if (e != cudaSuccess) return hc_fail(HC_ERR_DEVICE, "--device cuda: %s", cudaGetErrorString(e));
    if (prop.major < 8)
        return hc_fail(HC_ERR_DEVICE, "--device cuda: %s has compute capability %d.%d; hubcap needs 8.0 (Ampere) or newer",
                       prop.name, prop.major, prop.minor);
    hc_backend *be = (hc_backend *)calloc(1, sizeof *be);
    hc_cuda_ctx *cx = (hc_cuda_ctx *)calloc(1, sizeof *cx);
    if (!be || !cx) {
        free(be);
        free(cx);
        return hc_fail(HC_ERR_NOMEM, "out of memory");
    }
    cx->device = device_index;
    cx->compute = compute;
    cx->n_sm = prop.multiProcessorCount;
    be->ctx = cx;
    be->destroy = cuda_destroy;
    e = cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        cuda_destroy(be);
        return hc_fail(HC_ERR_DEVICE, "--device cuda: cannot create a stream: %s", cudaGetErrorString(e));
    }
    if (cublasCreate(&cx->blas) != CUBLAS_STATUS_SUCCESS) {
        cx->blas = NULL;
        cuda_destroy(be);
        return hc_fail(HC_ERR_DEVICE, "--device cuda: cannot initialise cuBLAS");
    }
    cublasSetStream(cx->blas, cx->stream);
    cx->no_graphs = getenv("HUBCAP_CUDA_NO_GRAPHS") != NULL; /* read once, not per token */
    cx->pdl = prop.major >= 9 && !getenv("HUBCAP_CUDA_NO_PDL");
    if (getenv("HUBCAP_CUDA_TIMING")) {
        cx->timing = true;
        cudaEventCreate(&cx->ev[0]);
        cudaEventCreate(&cx->ev[1]);
    }
    /* f32 means f32: the default math mode uses TF32 only where a compute type asks for it. */
    cublasSetMathMode(cx->blas, CUBLAS_DEFAULT_MATH);
    be->name = "cuda";
    be->device = true;
    be->alloc = cuda_alloc;
    be->free = cuda_free;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->fill = hc_cuda_fill;
    be->embedding = hc_cuda_embedding;
    be->matmul = hc_cuda_matmul;
    be->norm = hc_cuda_norm;
    be->rope = hc_cuda_rope;
    be->attention = hc_cuda_attention;
    be->set_rows = hc_cuda_set_rows;
    be->glu = hc_cuda_glu;
    be->activate = hc_cuda_activate;
    be->add = hc_cuda_add;
    be->add_scaled = hc_cuda_add_scaled;
    be->softcap = hc_cuda_softcap;
    be->topk_route = hc_cuda_topk_route;
    be->matmul_n = hc_cuda_matmul_n;
    be->gated_matmul = hc_cuda_gated_matmul;
    be->ffn = hc_cuda_ffn;
    be->matmul_add = hc_cuda_matmul_add;
    be->attention_train = hc_cuda_attention_train;
    be->ffn_train = hc_cuda_ffn_train;
    be->add_norm = hc_cuda_add_norm;
    be->matmul_add_norm = hc_cuda_matmul_add_norm;
    be->ffn_add_norm = hc_cuda_ffn_add_norm;
    be->rope_store = hc_cuda_rope_store;
    be->rope_store_rows = hc_cuda_rope_store_rows;
    be->attention_rows = hc_cuda_attention_rows;
    be->embedding_backward = hc_cuda_embedding_backward;
    be->matmul_backward = hc_cuda_matmul_backward;
    be->norm_backward = hc_cuda_norm_backward;
    be->rope_backward = hc_cuda_rope_backward;
    be->attention_backward = hc_cuda_attention_backward;
    be->matmul_n_backward = hc_cuda_matmul_n_backward;
    be->ffn_backward = hc_cuda_ffn_backward;
    be->lm_loss = hc_cuda_lm_loss;
    be->glu_backward = hc_cuda_glu_backward;
    be->softcap_backward = hc_cuda_softcap_backward;
    be->topk_route_backward = hc_cuda_topk_route_backward;
    be->cross_entropy = hc_cuda_cross_entropy;
    be->copy = hc_cuda_copy;
    be->sum_squares = hc_cuda_sum_squares;
    be->argmax_rows = hc_cuda_argmax_rows;
    be->adamw = hc_cuda_adamw;
    be->check = cuda_check;
    be->mem_info = cuda_mem_info;
    be->graph_run = cuda_graph_run;
    *out = be;
    return HC_OK;
}
