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

}  // namespace hpcem_cu
