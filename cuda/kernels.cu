// CUDA twins of csrc/project.cpp and csrc/backproject.cpp: same geometry, same
// interpolation weights (trilinear / bilinear, or seed 002's Gaussian kernel in 3D), device
// pointers in; the interpolation weights are csrc/interp.hpp's, one definition for both. Back-projection
// uses atomicAdd (float or double accumulators; double atomics need sm_60+).
#include <cstdint>
#include <string>

#include "cuda_common.cuh"
#include "interp.hpp"  // linear_neighbours, bilinear_neighbours, gauss_neighbours (host + device)
#include "launchers.hpp"

namespace {

using hpcem_cu::blocks;
using hpcem_cu::last;
using hpcem_cu::P_;
using hpcem_cu::stream_of;

// p = pad * A^T (kx, ky, 0) (3D) or pad * A^T (kx, ky) (2D); returns false outside r_max
__device__ inline bool slice_point(const double* A, bool three_d, float pad, int kx, int ky, double r_max,
                                   float& px, float& py, float& pz) {
  if (double(kx * kx + ky * ky) > r_max * r_max) return false;  // as csrc row_xmax
  const float fkx = float(kx), fky = float(ky);
  if (three_d) {
    px = float(pad * A[0]) * fkx + float(pad * A[3]) * fky;
    py = float(pad * A[1]) * fkx + float(pad * A[4]) * fky;
    pz = float(pad * A[2]) * fkx + float(pad * A[5]) * fky;
  } else {
    px = float(pad * A[0]) * fkx + float(pad * A[2]) * fky;
    py = float(pad * A[1]) * fkx + float(pad * A[3]) * fky;
    pz = 0.f;
  }
  return true;
}

// thread t of a launch over B slices of n x (n/2+1) frequencies: its slice b and frequency (kx, ky);
// false past the end
__device__ inline bool slice_thread(long B, int n, long& t, long& b, int& kx, int& ky) {
  const int nh = n / 2 + 1;
  t = long(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= B * n * nh) return false;
  kx = int(t % nh);
  ky = fft_freq(int((t / nh) % n), n);
  b = t / (long(nh) * n);
  return true;
}

// thread t of a launch over B slices x M listed frequencies (ky[m], kx[m]): p = pad * A_b^T (kx, ky, 0);
// false past the end
__device__ inline bool listed_point(const double* rot, long B, const int* ky, const int* kx, long M, float pad,
                                    long& t, float& px, float& py, float& pz) {
  t = long(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= B * M) return false;
  const long b = t / M, m = t % M;
  const double* A = rot + 9 * b;
  const float fkx = float(kx[m]), fky = float(ky[m]);
  px = float(pad * A[0]) * fkx + float(pad * A[3]) * fky;
  py = float(pad * A[1]) * fkx + float(pad * A[4]) * fky;
  pz = float(pad * A[2]) * fkx + float(pad * A[5]) * fky;
  return true;
}

// one back-projected sample: w (vr, vi) into data[off], w wt into weight[off]
template <typename T>
__device__ inline void splat_atomic(T* data, T* weight, size_t off, float w, float vr, float vi, float wt) {
  atomicAdd(data + 2 * off, T(w * vr));
  atomicAdd(data + 2 * off + 1, T(w * vi));
  atomicAdd(weight + off, T(w * wt));
}

__global__ void k_project(const float2* __restrict__ vol, int P, int K_or_0, const double* __restrict__ rot,
                          const int64_t* __restrict__ idx, long B, int n, double r_max, float pad, bool three_d,
                          float2* __restrict__ out, bool gauss) {
  long t, b;
  int kx, ky;
  if (!slice_thread(B, n, t, b, kx, ky)) return;
  float px, py, pz;
  float2 acc = make_float2(0.f, 0.f);
  if (slice_point(rot + (three_d ? 9 : 4) * b, three_d, pad, kx, ky, r_max, px, py, pz)) {
    const bool flip = px < 0.f;
    if (flip) { px = -px; py = -py; pz = -pz; }
    const float2* base = three_d ? vol : vol + size_t(idx[b]) * P * (P / 2 + 1);
    auto add = [&](int, size_t off, float w) {
      acc.x += w * base[off].x;
      acc.y += w * base[off].y;
    };
    if (!three_d)
      bilinear_neighbours(P, px, py, add);
    else if (gauss)
      gauss_neighbours(P, px, py, pz, [&](int, size_t off, float w, bool mate) {
        acc.x += w * base[off].x;
        acc.y += w * (mate ? -base[off].y : base[off].y);
      });
    else
      linear_neighbours(P, px, py, pz, add);
    if (flip) acc.y = -acc.y;
  }
  out[t] = acc;
}

template <typename T>
__global__ void k_backproject(const float2* __restrict__ S, const float* __restrict__ W,
                              const double* __restrict__ rot, const int64_t* __restrict__ idx, long B, int n,
                              T* __restrict__ data, T* __restrict__ weight, int P, double r_max, float pad,
                              bool three_d, bool gauss) {
  long t, b;
  int kx, ky;
  if (!slice_thread(B, n, t, b, kx, ky)) return;
  float px, py, pz;
  if (!slice_point(rot + (three_d ? 9 : 4) * b, three_d, pad, kx, ky, r_max, px, py, pz)) return;
  float2 v = S[t];
  const float wt = W[t];
  if (px < 0.f) { px = -px; py = -py; pz = -pz; v.y = -v.y; }
  const size_t base = three_d ? 0 : size_t(idx[b]) * P * (P / 2 + 1);
  auto add = [&](int, size_t off, float w) { splat_atomic(data, weight, base + off, w, v.x, v.y, wt); };
  if (!three_d)
    bilinear_neighbours(P, px, py, add);
  else if (gauss)
    gauss_neighbours(P, px, py, pz, [&](int, size_t off, float w, bool mate) {
      splat_atomic(data, weight, off, w, v.x, mate ? -v.y : v.y, wt);
    });
  else
    linear_neighbours(P, px, py, pz, add);
}

// one thread per (slice b, listed frequency m); the same trilinear sample as k_project
__global__ void k_project_at(const float2* __restrict__ vol, int P, const double* __restrict__ rot, long B,
                             const int* __restrict__ ky, const int* __restrict__ kx, long M, float pad,
                             float2* __restrict__ out) {
  long t;
  float px, py, pz;
  if (!listed_point(rot, B, ky, kx, M, pad, t, px, py, pz)) return;
  const bool flip = px < 0.f;
  if (flip) { px = -px; py = -py; pz = -pz; }
  float2 acc = make_float2(0.f, 0.f);
  linear_neighbours(P, px, py, pz, [&](int, size_t off, float w) {
    acc.x += w * vol[off].x;
    acc.y += w * vol[off].y;
  });
  if (flip) acc.y = -acc.y;
  out[t] = acc;
}

template <typename T>
__global__ void k_backproject_at(const float2* __restrict__ S, const float* __restrict__ W,
                                 const double* __restrict__ rot, long B, const int* __restrict__ ky,
                                 const int* __restrict__ kx, long M, T* __restrict__ data, T* __restrict__ weight,
                                 int P, float pad) {
  long t;
  float px, py, pz;
  if (!listed_point(rot, B, ky, kx, M, pad, t, px, py, pz)) return;
  float2 v = S[t];
  const float wt = W[t];
  if (px < 0.f) { px = -px; py = -py; pz = -pz; v.y = -v.y; }
  linear_neighbours(P, px, py, pz, [&](int, size_t off, float w) { splat_atomic(data, weight, off, w, v.x, v.y, wt); });
}

template <typename T>
__global__ void k_symmetrise(const T* __restrict__ D, const T* __restrict__ Wt, T* __restrict__ Do,
                             T* __restrict__ Wo, int P, const double* __restrict__ ops, int G, double r_pad) {
  const int Ph = P / 2 + 1;
  const long t = long(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= long(P) * P * Ph) return;
  const int kx = int(t % Ph);
  const int iy = int((t / Ph) % P);
  const int iz = int(t / (long(Ph) * P));
  const double kz = fft_freq(iz, P), ky = fft_freq(iy, P);
  double dr = 0, di = 0, ws = 0;
  if (kx * kx + ky * ky + kz * kz <= r_pad * r_pad) {
    for (int g = 0; g < G; ++g) {
      const double* M = ops + 9 * g;
      double qx = M[0] * kx + M[3] * ky + M[6] * kz;
      double qy = M[1] * kx + M[4] * ky + M[7] * kz;
      double qz = M[2] * kx + M[5] * ky + M[8] * kz;
      const double sgn = qx < 0 ? -1.0 : 1.0;
      qx *= sgn; qy *= sgn; qz *= sgn;
      double sr = 0, si = 0;
      linear_neighbours(P, qx, qy, qz, [&](int, size_t off, double c) {
        sr += c * double(D[2 * off]);
        si += c * double(D[2 * off + 1]);
        ws += c * double(Wt[off]);
      });
      dr += sr;
      di += sgn * si;
    }
  }
  Do[2 * t] = T(dr);
  Do[2 * t + 1] = T(di);
  Wo[t] = T(ws);
}

}  // namespace

namespace hpcem_cuda {

std::string project(uintptr_t vol, int P, uintptr_t rot, uintptr_t idx, long B, int n, double r_max, double pad,
                    bool three_d, uintptr_t out, uintptr_t stream, int kernel) {
  const long total = B * n * long(n / 2 + 1);
  if (total == 0) return {};
  k_project<<<blocks(total, 256), 256, 0, stream_of(stream)>>>(
      P_<const float2>(vol), P, 0, P_<const double>(rot), P_<const int64_t>(idx), B, n, r_max, float(pad),
      three_d, P_<float2>(out), three_d && kernel == 1);
  return last("project");
}

template <typename T>
static void launch_backproject(uintptr_t slices, uintptr_t weights, uintptr_t rot, uintptr_t idx, long B, int n,
                               uintptr_t data, uintptr_t weight, int P, double r_max, double pad, bool three_d,
                               uintptr_t stream, bool gauss) {
  const long total = B * n * long(n / 2 + 1);
  k_backproject<T><<<blocks(total, 256), 256, 0, stream_of(stream)>>>(
      P_<const float2>(slices), P_<const float>(weights), P_<const double>(rot), P_<const int64_t>(idx), B, n,
      P_<T>(data), P_<T>(weight), P, r_max, float(pad), three_d, gauss);
}

std::string backproject(uintptr_t slices, uintptr_t weights, uintptr_t rot, uintptr_t idx, long B, int n,
                        uintptr_t data, uintptr_t weight, int P, bool dbl, double r_max, double pad, bool three_d,
                        uintptr_t stream, int kernel) {
  if (B * n * long(n / 2 + 1) == 0) return {};
  const bool gauss = three_d && kernel == 1;
  if (dbl)
    launch_backproject<double>(slices, weights, rot, idx, B, n, data, weight, P, r_max, pad, three_d, stream, gauss);
  else
    launch_backproject<float>(slices, weights, rot, idx, B, n, data, weight, P, r_max, pad, three_d, stream, gauss);
  return last("backproject");
}

std::string project_at(uintptr_t vol, int P, uintptr_t rot, long B, uintptr_t ky, uintptr_t kx, long M, double pad,
                       uintptr_t out, uintptr_t stream) {
  if (B * M == 0) return {};
  k_project_at<<<blocks(B * M, 256), 256, 0, stream_of(stream)>>>(P_<const float2>(vol), P, P_<const double>(rot), B,
                                                                  P_<const int>(ky), P_<const int>(kx), M, float(pad),
                                                                  P_<float2>(out));
  return last("project3d_at");
}

std::string backproject_at(uintptr_t values, uintptr_t weights, uintptr_t rot, long B, uintptr_t ky, uintptr_t kx,
                           long M, uintptr_t data, uintptr_t weight, int P, bool dbl, double pad, uintptr_t stream) {
  if (B * M == 0) return {};
  if (dbl)
    k_backproject_at<double><<<blocks(B * M, 256), 256, 0, stream_of(stream)>>>(
        P_<const float2>(values), P_<const float>(weights), P_<const double>(rot), B, P_<const int>(ky),
        P_<const int>(kx), M, P_<double>(data), P_<double>(weight), P, float(pad));
  else
    k_backproject_at<float><<<blocks(B * M, 256), 256, 0, stream_of(stream)>>>(
        P_<const float2>(values), P_<const float>(weights), P_<const double>(rot), B, P_<const int>(ky),
        P_<const int>(kx), M, P_<float>(data), P_<float>(weight), P, float(pad));
  return last("backproject3d_at");
}

template <typename T>
static void launch_symmetrise(uintptr_t data, uintptr_t weight, uintptr_t out_data, uintptr_t out_weight, int P,
                              uintptr_t ops, int G, double r_pad, uintptr_t stream) {
  const long total = long(P) * P * (P / 2 + 1);
  k_symmetrise<T><<<blocks(total, 256), 256, 0, stream_of(stream)>>>(
      P_<const T>(data), P_<const T>(weight), P_<T>(out_data), P_<T>(out_weight), P, P_<const double>(ops), G,
      r_pad);
}

std::string symmetrise3d(uintptr_t data, uintptr_t weight, uintptr_t out_data, uintptr_t out_weight, int P,
                         uintptr_t ops, int G, double r_pad, bool dbl, uintptr_t stream) {
  if (dbl)
    launch_symmetrise<double>(data, weight, out_data, out_weight, P, ops, G, r_pad, stream);
  else
    launch_symmetrise<float>(data, weight, out_data, out_weight, P, ops, G, r_pad, stream);
  return last("symmetrise3d");
}

int device_count() {
  int c = 0;
  if (cudaGetDeviceCount(&c) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return c;
}

}  // namespace hpcem_cuda
