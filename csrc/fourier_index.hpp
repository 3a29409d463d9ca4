// FFT-ordered index <-> frequency helpers shared by the CPU kernels (csrc/common.hpp) and
// their CUDA twins (cuda/cuda_common.cuh): one definition, host and device.
// Conventions (hpcem/core/fourier.py): an FFT-ordered axis of length n holds frequency i at
// index i for i <= (n-1)/2, else i - n; a padded half grid of box P represents frequencies
// freq_min(P) .. freq_max(P) along its FFT-ordered axes.
#pragma once

#if defined(__CUDACC__)
#define HPCEM_HD __host__ __device__
#else
#define HPCEM_HD
#endif

// frequency of row/slice index i in an FFT-ordered axis of length n
HPCEM_HD inline int fft_freq(int i, int n) { return i <= (n - 1) / 2 ? i : i - n; }
// index of frequency f in an FFT-ordered axis of length n
HPCEM_HD inline int fft_index(int f, int n) { return f >= 0 ? f : f + n; }
// representable frequency range of a padded axis of length P
HPCEM_HD inline int freq_min(int P) { return -(P / 2); }
HPCEM_HD inline int freq_max(int P) { return (P - 1) / 2; }
