// CUDA twin of csrc/tv.cpp: the stencils of the sparsity + total-variation regularised reconstruction
// (seed 002, eqs 11-22; layout and maths in hpcem/kernels/tv.py). One thread per voxel (or half-grid
// coefficient); sums reduced per block in shared memory (double) and added with atomicAdd.
#include <cstdint>
#include <string>

#include "cuda_common.cuh"
#include "tv_cuda.hpp"

namespace {

using hpcem_cu::blocks;
using hpcem_cu::last;
using hpcem_cu::P_;
using hpcem_cu::stream_of;

constexpr int THREADS = 256;

struct Box {
  long nz, ny, nx;
  __device__ size_t at(long z, long y, long x) const { return (size_t(z) * ny + y) * nx + x; }
};

__device__ inline float huber(float m, float mu) { return m < mu ? 0.5f * m * m / mu : m - 0.5f * mu; }

__device__ inline float grad_at(const float* x, const Box& b, long z, long y, long xx, float d[3]) {
  const float c = x[b.at(z, y, xx)];
  d[0] = z > 0 ? c - x[b.at(z - 1, y, xx)] : 0.f;
  d[1] = y > 0 ? c - x[b.at(z, y - 1, xx)] : 0.f;
  d[2] = xx > 0 ? c - x[b.at(z, y, xx - 1)] : 0.f;
  return sqrtf(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
}

__device__ inline float tv_grad_at(const float* x, const float* w, const Box& b, float mu, long z, long y, long xx) {
  float d[3], e[3];
  const float m = grad_at(x, b, z, y, xx, d);
  float g = w[b.at(z, y, xx)] / fmaxf(m, mu) * (d[0] + d[1] + d[2]);
  if (z + 1 < b.nz) g -= w[b.at(z + 1, y, xx)] / fmaxf(grad_at(x, b, z + 1, y, xx, e), mu) * e[0];
  if (y + 1 < b.ny) g -= w[b.at(z, y + 1, xx)] / fmaxf(grad_at(x, b, z, y + 1, xx, e), mu) * e[1];
  if (xx + 1 < b.nx) g -= w[b.at(z, y, xx + 1)] / fmaxf(grad_at(x, b, z, y, xx + 1, e), mu) * e[2];
  return g;
}

__device__ inline void coords(const Box& b, long i, long& z, long& y, long& x) {
  x = i % b.nx;
  y = (i / b.nx) % b.ny;
  z = i / (b.nx * b.ny);
}

// adds the block's sums of v[0..K) into out[0..K) (double)
template <int K>
__device__ inline void block_sum(double v[K], double* out) {
  __shared__ double sh[K][THREADS];
  for (int k = 0; k < K; ++k) sh[k][threadIdx.x] = v[k];
  __syncthreads();
  for (int s = THREADS / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s)
      for (int k = 0; k < K; ++k) sh[k][threadIdx.x] += sh[k][threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0)
    for (int k = 0; k < K; ++k) atomicAdd(out + k, sh[k][0]);
}

__global__ void k_weights(const float* __restrict__ x, Box b, float eps, float epsp, float mu, float* __restrict__ wl1,
                          float* __restrict__ wtv) {
  const long i = long(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= b.nz * b.ny * b.nx) return;
  long z, y, xx;
  coords(b, i, z, y, xx);
  float d[3];
  wl1[i] = 1.f / (fabsf(x[i]) + eps);
  wtv[i] = 1.f / (huber(grad_at(x, b, z, y, xx, d), mu) + epsp);
}

__global__ void k_prox(const float* __restrict__ Y, const float* __restrict__ GR, const float* __restrict__ XP,
                       const float* __restrict__ WL, const float* __restrict__ WT, const float* __restrict__ G, Box b,
                       float mu, float beta, float gamma2, float t, float alpha, float* __restrict__ Z,
                       float* __restrict__ GZ, double* __restrict__ sums) {
  const long i = long(blockIdx.x) * blockDim.x + threadIdx.x;
  double v[2] = {0.0, 0.0};
  if (i < b.nz * b.ny * b.nx) {
    long z, y, xx;
    coords(b, i, z, y, xx);
    const float gc = G[z] * G[y] * G[xx];
    const float grad = gc * GR[i] + beta * tv_grad_at(Y, WT, b, mu, z, y, xx) + gamma2 * (Y[i] - XP[i]);
    const float u = Y[i] - t * grad, th = t * alpha * WL[i];
    const float s = fabsf(u) > th ? u - copysignf(th, u) : 0.f;
    Z[i] = s;
    GZ[i] = gc * s;
    v[0] = double(s - Y[i]) * double(s - Y[i]);
    v[1] = double(Y[i]) * double(Y[i]);
  }
  block_sum<2>(v, sums);
}

__global__ void k_penalties(const float* __restrict__ Z, const float* __restrict__ XP, const float* __restrict__ WL,
                            const float* __restrict__ WT, Box b, float mu, double* __restrict__ sums) {
  const long i = long(blockIdx.x) * blockDim.x + threadIdx.x;
  double v[3] = {0.0, 0.0, 0.0};
  if (i < b.nz * b.ny * b.nx) {
    long z, y, xx;
    coords(b, i, z, y, xx);
    float d[3];
    v[0] = double(WL[i]) * fabsf(Z[i]);
    v[1] = double(WT[i]) * huber(grad_at(Z, b, z, y, xx, d), mu);
    const double e = double(Z[i]) - double(XP[i]);
    v[2] = e * e;
  }
  block_sum<3>(v, sums);
}

__global__ void k_data_value(const float2* __restrict__ A, const float2* __restrict__ B, const float* __restrict__ W,
                             long N, long nh, long nx, double* __restrict__ out) {
  const long i = long(blockIdx.x) * blockDim.x + threadIdx.x;
  double v[1] = {0.0};
  if (i < N) {
    const long c = i % nh;
    const double mult = (c == 0 || (nx % 2 == 0 && 2 * c == nx)) ? 1.0 : 2.0;
    const double re = double(A[i].x) - B[i].x, im = double(A[i].y) - B[i].y;
    v[0] = mult * double(W[i]) * (re * re + im * im);
  }
  block_sum<1>(v, out);
}

__global__ void k_extrapolate(const float* __restrict__ p, const float* __restrict__ q, const float* __restrict__ r,
                              long N, float a, float b, float* __restrict__ out) {
  const long i = long(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < N) out[i] = p[i] + a * (q[i] - p[i]) + b * (p[i] - r[i]);
}

__global__ void k_extrapolate_residual(const float2* __restrict__ P, const float2* __restrict__ Q,
                                       const float2* __restrict__ S, long N, float a, float b,
                                       const float* __restrict__ W, const float2* __restrict__ Zc,
                                       float2* __restrict__ Gy, float2* __restrict__ R) {
  const long i = long(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  float2 y;
  y.x = P[i].x + a * (Q[i].x - P[i].x) + b * (P[i].x - S[i].x);
  y.y = P[i].y + a * (Q[i].y - P[i].y) + b * (P[i].y - S[i].y);
  Gy[i] = y;
  R[i] = make_float2(W[i] * (y.x - Zc[i].x), W[i] * (y.y - Zc[i].y));
}

}  // namespace

namespace hpcem_tv {

std::string weights(uintptr_t x, long nz, long ny, long nx, double eps, double epsp, double mu, uintptr_t wl1,
                    uintptr_t wtv, uintptr_t stream) {
  const long N = nz * ny * nx;
  if (N == 0) return {};
  k_weights<<<blocks(N, THREADS), THREADS, 0, stream_of(stream)>>>(P_<const float>(x), Box{nz, ny, nx}, float(eps),
                                                                  float(epsp), float(mu), P_<float>(wl1),
                                                                  P_<float>(wtv));
  return last("tv_weights");
}

std::string prox_step(uintptr_t y, uintptr_t graw, uintptr_t xp, uintptr_t wl1, uintptr_t wtv, uintptr_t g, long n,
                      double mu, double beta, double gamma2, double t, double alpha, uintptr_t z, uintptr_t gz,
                      uintptr_t sums, uintptr_t stream) {
  const long N = n * n * n;
  if (N == 0) return {};
  k_prox<<<blocks(N, THREADS), THREADS, 0, stream_of(stream)>>>(
      P_<const float>(y), P_<const float>(graw), P_<const float>(xp), P_<const float>(wl1), P_<const float>(wtv),
      P_<const float>(g), Box{n, n, n}, float(mu), float(beta), float(gamma2), float(t), float(alpha), P_<float>(z),
      P_<float>(gz), P_<double>(sums));
  return last("tv_prox_step");
}

std::string penalties(uintptr_t z, uintptr_t xp, uintptr_t wl1, uintptr_t wtv, long nz, long ny, long nx, double mu,
                      uintptr_t sums, uintptr_t stream) {
  const long N = nz * ny * nx;
  if (N == 0) return {};
  k_penalties<<<blocks(N, THREADS), THREADS, 0, stream_of(stream)>>>(
      P_<const float>(z), P_<const float>(xp), P_<const float>(wl1), P_<const float>(wtv), Box{nz, ny, nx},
      float(mu), P_<double>(sums));
  return last("tv_penalties");
}

std::string data_value(uintptr_t Gz, uintptr_t Zc, uintptr_t Wd, long nz, long ny, long nx, uintptr_t out,
                       uintptr_t stream) {
  const long nh = nx / 2 + 1, N = nz * ny * nh;
  if (N == 0) return {};
  k_data_value<<<blocks(N, THREADS), THREADS, 0, stream_of(stream)>>>(P_<const float2>(Gz), P_<const float2>(Zc),
                                                                     P_<const float>(Wd), N, nh, nx,
                                                                     P_<double>(out));
  return last("tv_data_value");  // the caller scales by 1 / (2 nz ny nx)
}

std::string extrapolate(uintptr_t p, uintptr_t q, uintptr_t r, long N, double a, double b, uintptr_t out,
                        uintptr_t stream) {
  if (N == 0) return {};
  k_extrapolate<<<blocks(N, THREADS), THREADS, 0, stream_of(stream)>>>(P_<const float>(p), P_<const float>(q),
                                                                      P_<const float>(r), N, float(a), float(b),
                                                                      P_<float>(out));
  return last("tv_extrapolate");
}

std::string extrapolate_residual(uintptr_t Gp, uintptr_t Gq, uintptr_t Gr, long N, double a, double b, uintptr_t Wd,
                                 uintptr_t Zc, uintptr_t Gy, uintptr_t R, uintptr_t stream) {
  if (N == 0) return {};
  k_extrapolate_residual<<<blocks(N, THREADS), THREADS, 0, stream_of(stream)>>>(
      P_<const float2>(Gp), P_<const float2>(Gq), P_<const float2>(Gr), N, float(a), float(b), P_<const float>(Wd),
      P_<const float2>(Zc), P_<float2>(Gy), P_<float2>(R));
  return last("tv_extrapolate_residual");
}

}  // namespace hpcem_tv
