// Host entry points of cuda/marginalise.cu (plain types: device pointers as uintptr_t,
// sizes, a cudaStream_t as uintptr_t). Each returns "" on success, else the CUDA error.
// Same maths and layouts as csrc/marginalise.cpp and csrc/posteriors.cpp (see
// hpcem/kernels/marginalise.py).
#pragma once
#include <cstdint>
#include <string>

namespace hpcem_marg {
// diff2 (B, T, J) float32 = sum_k s |X conj(ph_t) - c R_j|^2 for all (i, t, j)
std::string coarse_diff2(uintptr_t X, uintptr_t ctf, uintptr_t s, uintptr_t ph, uintptr_t R,
                         long B, long T, long J, long M, uintptr_t out, uintptr_t stream);
// diff2 (P,) for explicit int64 triples (pair_i, pair_t, pair_j)
std::string pair_diff2(uintptr_t X, uintptr_t ctf, uintptr_t s, uintptr_t ph, uintptr_t R, long M,
                       uintptr_t pi, uintptr_t pt, uintptr_t pj, long P, uintptr_t out,
                       uintptr_t stream);
// in-place M-step sums (atomics): data (J,M) complex64/128, weight (J,M) f32/f64, noise (B,M) f32
std::string accumulate(uintptr_t X, uintptr_t ctf, uintptr_t s, uintptr_t ph, uintptr_t R, long M,
                       uintptr_t pi, uintptr_t pt, uintptr_t pj, uintptr_t w, long P,
                       uintptr_t data, bool data_double, uintptr_t weight, bool weight_double,
                       uintptr_t noise, uintptr_t stream);
// per particle: logZ (B,) f64, pmax (B,) f64, flat argmax (B,) int64 over T*J; prob (B,T*J)
// float64 dense posteriors if prob != 0 (the CPU summarise()'s: 0 below exp(-50) of the max)
std::string logsumexp(uintptr_t diff2, uintptr_t lpt, uintptr_t lpj, long B, long T, long J,
                      uintptr_t logZ, uintptr_t pmax, uintptr_t arg, uintptr_t prob,
                      uintptr_t stream);
}  // namespace hpcem_marg
