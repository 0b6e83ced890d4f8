/* cub/device/device_radix_sort.cuh (emulation): DeviceRadixSort::SortPairs
 * with CUB's semantics: the size query (d_temp_storage NULL), the digit of
 * a key is bits [begin_bit, end_bit) of the key with signed keys' sign bit
 * flipped (CUB's twiddle), stable, and the temporary storage really used
 * (too small: cudaErrorInvalidValue). Keys of 1, 2, 4 or 8 bytes. */
#ifndef UPCYC_EMU_CUB_DEVICE_RADIX_SORT_CUH
#define UPCYC_EMU_CUB_DEVICE_RADIX_SORT_CUH

#include "../../cuda_runtime.h"

#include <type_traits>

/* emu_runtime.cpp: stable sort of n digits, writing the permutation
 * (idx[s] = the input position of the s-th element) into temp storage. */
cudaError_t emu_radix_sort_perm(void *temp, size_t *temp_bytes, const uint64_t *digits_or_null, size_t n,
                                uint32_t **perm_out);
cudaError_t emu_radix_sort_check(const void *in, const void *out, size_t bytes, const char *what);

namespace cub {
struct DeviceRadixSort {
    template <typename KeyT, typename ValueT, typename NumItemsT>
    static cudaError_t SortPairs(void *d_temp_storage, size_t &temp_storage_bytes, const KeyT *d_keys_in,
                                 KeyT *d_keys_out, const ValueT *d_values_in, ValueT *d_values_out,
                                 NumItemsT num_items, int begin_bit = 0, int end_bit = sizeof(KeyT) * 8,
                                 cudaStream_t stream = 0)
    {
        (void)stream;
        static_assert(std::is_integral<KeyT>::value && sizeof(KeyT) <= 8, "integer keys only");
        if (num_items < 0 || begin_bit < 0 || end_bit > (int)sizeof(KeyT) * 8 || begin_bit > end_bit)
            return cudaErrorInvalidValue;
        size_t n = (size_t)num_items;
        if (!d_temp_storage)
            return emu_radix_sort_perm(NULL, &temp_storage_bytes, NULL, n, NULL);
        if (n == 0)
            return cudaSuccess;
        cudaError_t e;
        if ((e = emu_radix_sort_check(d_keys_in, d_keys_out, n * sizeof(KeyT), "keys")) != cudaSuccess ||
            (e = emu_radix_sort_check(d_values_in, d_values_out, n * sizeof(ValueT), "values")) != cudaSuccess)
            return e;
        typedef typename std::make_unsigned<KeyT>::type U;
        const U flip = std::is_signed<KeyT>::value ? (U)((U)1 << (sizeof(KeyT) * 8 - 1)) : (U)0;
        const int width = end_bit - begin_bit;
        const uint64_t mask = width >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << width) - 1);
        uint64_t *digits = new uint64_t[n];
        for (size_t i = 0; i < n; i++)
            digits[i] = width == 0 ? 0 : ((uint64_t)(U)((U)d_keys_in[i] ^ flip) >> begin_bit) & mask;
        uint32_t *perm = NULL;
        e = emu_radix_sort_perm(d_temp_storage, &temp_storage_bytes, digits, n, &perm);
        delete[] digits;
        if (e != cudaSuccess)
            return e;
        for (size_t s = 0; s < n; s++) {
            d_keys_out[s] = d_keys_in[perm[s]];
            d_values_out[s] = d_values_in[perm[s]];
        }
        return cudaSuccess;
    }
};
}   // namespace cub

#endif
