/* The GPU's two ceilings, measured: device-memory bandwidth with a copy kernel (bytes read plus
 * bytes written, 16-byte accesses, 2 GiB each way) and the bf16 tensor-core rate with a cuBLAS
 * 8192^3 GEMM (f32 accumulation). Medians of 20 timed runs after warm-up, on random data.
 * usage: bench_cuda_peak */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(x)                                                                                                          \
    do {                                                                                                               \
        cudaError_t e_ = (x);                                                                                          \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "bench_cuda_peak: %s: %s\n", #x, cudaGetErrorString(e_));                                  \
            return 1;                                                                                                  \
        }                                                                                                              \
    } while (0)

__global__ void copy_kernel(uint4 *dst, const uint4 *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) dst[i] = src[i];
}

__global__ void init_kernel(unsigned *p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = (unsigned)(i * 2654435761u) ^ seed;
}

/* bf16 values in [-1, 1): random bits would hold NaNs and infinities. */
__global__ void init_bf16_kernel(__nv_bfloat16 *p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)(i * 2654435761u) ^ seed;
        h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
        p[i] = __float2bfloat16((float)(h & 0xffffff) / (float)(1 << 23) - 1.0f);
    }
}

static int cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(void) {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const size_t bytes = (size_t)2 << 30, n = bytes / 16;
    uint4 *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    init_kernel<<<4096, 256>>>((unsigned *)a, bytes / 4, 1);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    float ms[20];
    const int blocks = prop.multiProcessorCount * 8;
    for (int i = 0; i < 3; i++) copy_kernel<<<blocks, 512>>>(b, a, n);
    for (int i = 0; i < 20; i++) {
        cudaEventRecord(e0);
        copy_kernel<<<blocks, 512>>>(i & 1 ? a : b, i & 1 ? b : a, n);
        cudaEventRecord(e1);
        CK(cudaEventSynchronize(e1));
        cudaEventElapsedTime(&ms[i], e0, e1);
    }
    qsort(ms, 20, sizeof ms[0], cmp);
    const double bw = 2.0 * (double)bytes / (ms[10] * 1e-3) / 1e12;
    CK(cudaFree(a));
    CK(cudaFree(b));

    const int M = 8192;
    __nv_bfloat16 *A, *B;
    float *C;
    CK(cudaMalloc(&A, sizeof(__nv_bfloat16) * M * M));
    CK(cudaMalloc(&B, sizeof(__nv_bfloat16) * M * M));
    CK(cudaMalloc(&C, sizeof(float) * M * M));
    init_bf16_kernel<<<4096, 256>>>(A, (size_t)M * M, 7);
    init_bf16_kernel<<<4096, 256>>>(B, (size_t)M * M, 9);
    cublasHandle_t h;
    cublasCreate(&h);
    const float one = 1, zero = 0;
    for (int i = 0; i < 23; i++) {
        if (i >= 3) cudaEventRecord(e0);
        cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, M, M, &one, A, CUDA_R_16BF, M, B, CUDA_R_16BF, M, &zero, C, CUDA_R_32F, M,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (i >= 3) {
            cudaEventRecord(e1);
            CK(cudaEventSynchronize(e1));
            cudaEventElapsedTime(&ms[i - 3], e0, e1);
        }
    }
    qsort(ms, 20, sizeof ms[0], cmp);
    const double tflops = 2.0 * M * (double)M * M / (ms[10] * 1e-3) / 1e12;
    printf("{\"gpu\":\"%s\",\"sms\":%d,\"copy_tb_s\":%.3f,\"bf16_gemm_tflop_s\":%.1f}\n", prop.name, prop.multiProcessorCount,
           bw, tflops);
    cublasDestroy(h);
    return 0;
}
