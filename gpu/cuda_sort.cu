/* cuda_sort.cu: a stable sort of small int32 keys with their indices, on
 * CUB's radix sort (stable, deterministic), for the MoE dispatch (keys:
 * expert of each assignment) and the embedding backward (keys: token ids).
 * Kept in its own file: CUB is most of the CUDA build time. */
#include "cuda_internal.cuh"

#include <cub/device/device_radix_sort.cuh>

static __global__ void iota_kernel(int32_t *x, int n)
{
    GRID_STRIDE(i, (size_t)n)
        x[i] = (int32_t)i;
}

void cuda_stable_sort_indices(const upc_kernels *K, const int32_t *keys, int n, int key_limit,
                              int32_t *sorted_idx, int32_t *sorted_keys, const char *kernel)
{
    if (n <= 0)
        return;
    int bits = 1;
    while (bits < 31 && (1LL << bits) < (long long)key_limit)
        bits++;
    size_t temp_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, keys, (int32_t *)NULL, (const int32_t *)NULL,
                                               (int32_t *)NULL, n, 0, bits, (cudaStream_t)0),
               kernel, "sizing the radix sort");
    /* scratch: [iota n][keys out n (when not wanted)][CUB temp] */
    size_t ints = (size_t)n * (sorted_keys ? 1 : 2);
    size_t head = (ints * sizeof(int32_t) + 255) / 256 * 256;
    char *s = (char *)cuda_scratch(K, SCRATCH_SORT, head + temp_bytes, kernel);
    int32_t *iota = (int32_t *)s;
    int32_t *keys_out = sorted_keys ? sorted_keys : iota + n;
    iota_kernel<<<cuda_blocks((size_t)n), CUDA_THREADS>>>(iota, n);
    cuda_after_launch(K, kernel);
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(s + head, temp_bytes, keys, keys_out, iota, sorted_idx, n, 0,
                                               bits, (cudaStream_t)0),
               kernel, "radix sort");
    cuda_after_launch(K, kernel);
}
