// Host entry points of cuda/tv.cu, the CUDA twin of csrc/tv.cpp (the regularised M-step's stencils;
// layout and maths in hpcem/kernels/tv.py). Device pointers as uintptr_t, sizes, a stream; each
// returns "" on success, else the CUDA error. Sums are accumulated in double (atomicAdd, sm_60+).
#pragma once
#include <cstdint>
#include <string>

namespace hpcem_tv {
std::string weights(uintptr_t x, long nz, long ny, long nx, double eps, double epsp, double mu, uintptr_t wl1,
                    uintptr_t wtv, uintptr_t stream);
// sums (2,) double: (sum (z-y)^2, sum y^2), zeroed by the caller
std::string prox_step(uintptr_t y, uintptr_t graw, uintptr_t xp, uintptr_t wl1, uintptr_t wtv, uintptr_t g, long n,
                      double mu, double beta, double gamma2, double t, double alpha, uintptr_t z, uintptr_t gz,
                      uintptr_t sums, uintptr_t stream);
// sums (3,) double: (sum wl1 |z|, sum wtv h_mu(|Dz|), sum (z - xp)^2), zeroed by the caller
std::string penalties(uintptr_t z, uintptr_t xp, uintptr_t wl1, uintptr_t wtv, long nz, long ny, long nx, double mu,
                      uintptr_t sums, uintptr_t stream);
// out (1,) double: (1 / 2 nz ny nx) sum_full Wd |Gz - Zc|^2, zeroed by the caller
std::string data_value(uintptr_t Gz, uintptr_t Zc, uintptr_t Wd, long nz, long ny, long nx, uintptr_t out,
                       uintptr_t stream);
std::string extrapolate(uintptr_t p, uintptr_t q, uintptr_t r, long N, double a, double b, uintptr_t out,
                        uintptr_t stream);
std::string extrapolate_residual(uintptr_t Gp, uintptr_t Gq, uintptr_t Gr, long N, double a, double b, uintptr_t Wd,
                                 uintptr_t Zc, uintptr_t Gy, uintptr_t R, uintptr_t stream);
}  // namespace hpcem_tv
