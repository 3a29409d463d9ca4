// Host-side entry points of the CUDA kernels (cuda/kernels.cu); plain types only so
// that module_cuda.cpp needs no CUDA headers. Each returns an empty string on
// success, else the error.
#pragma once
#include <cstdint>
#include <string>

namespace hpcem_cuda {
std::string project(uintptr_t vol, int P, uintptr_t rot, uintptr_t idx, long B, int n, double r_max, double pad,
                    bool three_d, uintptr_t out, uintptr_t stream, int kernel = 0);
std::string backproject(uintptr_t slices, uintptr_t weights, uintptr_t rot, uintptr_t idx, long B, int n,
                        uintptr_t data, uintptr_t weight, int P, bool dbl, double r_max, double pad, bool three_d,
                        uintptr_t stream, int kernel = 0);
std::string symmetrise3d(uintptr_t data, uintptr_t weight, uintptr_t out_data, uintptr_t out_weight, int P,
                         uintptr_t ops, int G, double r_pad, bool dbl, uintptr_t stream);
std::string project_at(uintptr_t vol, int P, uintptr_t rot, long B, uintptr_t ky, uintptr_t kx, long M, double pad,
                       uintptr_t out, uintptr_t stream);
std::string backproject_at(uintptr_t values, uintptr_t weights, uintptr_t rot, long B, uintptr_t ky, uintptr_t kx,
                           long M, uintptr_t data, uintptr_t weight, int P, bool dbl, double pad, uintptr_t stream);
int device_count();
}  // namespace hpcem_cuda
