// Helpers shared by the CUDA kernels (cuda/kernels.cu, cuda/marginalise.cu, cuda/gtm.cu):
// error strings, device-pointer casts, launch sizes and the FFT index helpers (one
// definition with the CPU kernels, csrc/fourier_index.hpp). Host entry points take device
// pointers as uintptr_t (cupy's .data.ptr) and return "" on success, else the CUDA error.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "fourier_index.hpp"  // fft_freq, fft_index, freq_min, freq_max (host + device)

namespace hpcem_cu {

// "" for cudaSuccess, else the error's text
inline std::string err(cudaError_t e) {
  return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e));
}
// the last launch error ("" if none), prefixed with what failed when given
inline std::string last(const char* what = nullptr) {
  std::string e = err(cudaGetLastError());
  if (e.empty() || !what) return e;
  return std::string(what) + ": " + e;
}

// a device pointer passed as an integer, typed
template <typename T>
inline T* P_(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

inline cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// 1-D grid size covering total threads
inline unsigned blocks(long total, int threads) { return unsigned((total + threads - 1) / threads); }

// One slab of a 64 x 64 output tile on a 16 x 16 thread block (cuda/gtm.cu's and
// cuda/marginalise.cu's tiled products): thread (tx, ty) accumulates rows ty + 16u and columns
// tx + 16v (u, v < 4) over the TK k-values staged in shared memory as As[k][row], Bs[k][col].
template <int TK, int LDA, int LDB, typename T>
__device__ __forceinline__ void tile_fma(const T (&As)[TK][LDA], const T (&Bs)[TK][LDB], T (&acc)[4][4],
                                         int tx, int ty) {
#pragma unroll
  for (int kk = 0; kk < TK; ++kk) {
    T a[4], b[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      a[u] = As[kk][ty + 16 * u];
      b[u] = Bs[kk][tx + 16 * u];
    }
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
      for (int v = 0; v < 4; ++v) acc[u][v] = fma(a[u], b[v], acc[u][v]);
  }
}

}  // namespace hpcem_cu
