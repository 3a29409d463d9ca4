// CUDA twin of csrc/marginalise.cpp and csrc/posteriors.cpp (marginalisation kernels of the
// MAP-EM E-step).
// Device pointers in (cupy .data.ptr), sizes as plain integers; every launcher returns an
// empty string on success, else the CUDA error. No cuBLAS: the cross term runs in a
// register-tiled GEMM whose operand loader forms y = (s c X) conj(ph_t) on the fly, so the
// (B*T) x 2M operand is never stored. Same maths as the CPU file:
//   diff2(i,t,j) = A_i + Q_ij - 2 Re sum_k y_itk conj(R_jk),  A_i = sum s|X|^2,
//   Q = (s c^2) @ |R|^2.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>

#include "cuda_common.cuh"
#include "marginalise_cuda.hpp"

namespace hpcem_marg {
namespace {

using hpcem_cu::err;
using hpcem_cu::last;
using hpcem_cu::P_;
using hpcem_cu::stream_of;

constexpr int TM = 64, TN = 64, TKF = 16;  // tile rows, cols, k (floats) per step
constexpr int THREADS = 256;               // 16 x 16 threads, 4 x 4 outputs each

// prep: W = s c X (B,M) complex, SC2 = s c^2 (B,M), A_i = sum s |X|^2 (one block per particle)
__global__ void k_prep_particles(const float2* __restrict__ X, const float* __restrict__ c,
                                 const float* __restrict__ s, int M, float2* __restrict__ W,
                                 float* __restrict__ SC2, float* __restrict__ A) {
  const int i = blockIdx.x;
  double acc = 0.0;
  for (int k = threadIdx.x; k < M; k += blockDim.x) {
    const size_t q = (size_t)i * M + k;
    const float2 x = X[q];
    const float sk = s[q], ck = c[q];
    W[q] = make_float2(sk * ck * x.x, sk * ck * x.y);
    SC2[q] = sk * ck * ck;
    acc += (double)sk * ((double)x.x * x.x + (double)x.y * x.y);
  }
  __shared__ double red[THREADS];
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h >>= 1) {
    if (threadIdx.x < h) red[threadIdx.x] += red[threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) A[i] = (float)red[0];
}

__global__ void k_abs2(const float2* __restrict__ R, size_t n, float* __restrict__ R2) {
  for (size_t q = blockIdx.x * (size_t)blockDim.x + threadIdx.x; q < n; q += (size_t)gridDim.x * blockDim.x) {
    const float2 r = R[q];
    R2[q] = r.x * r.x + r.y * r.y;
  }
}

// Tiled C[m, n] = sum_kf Aop[m, kf] Bop[n, kf].
// CROSS: rows m = i*T + t, Aop = interleaved (re, im) of W_i conj(ph_t), Bop = interleaved R_j,
//        out[m*J + n] = A_i + Q[i*J + n] - 2 acc.
// QUAD:  rows m = i, Aop = SC2 (B, M), Bop = R2 (J, M), out[m*J + n] = acc.
template <bool CROSS>
__global__ void __launch_bounds__(THREADS)
k_gemm(int rows, int J, int M, int T, const float2* __restrict__ W, const float2* __restrict__ ph,
       const float2* __restrict__ R, const float* __restrict__ SC2, const float* __restrict__ R2,
       const float* __restrict__ Arow, const float* __restrict__ Q, float* __restrict__ out) {
  __shared__ float As[TKF][TM + 4];
  __shared__ float Bs[TKF][TN + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
  const int KF = CROSS ? 2 * M : M;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < KF; k0 += TKF) {
    if (CROSS) {  // 64 rows x 8 complex coefficients: 2 per thread, both operands
      for (int e = tid; e < TM * (TKF / 2); e += THREADS) {
        const int r = e / (TKF / 2), kc = e % (TKF / 2);
        const int k = k0 / 2 + kc, m = m0 + r, n = n0 + r;
        float2 y = make_float2(0.f, 0.f), b = make_float2(0.f, 0.f);
        if (m < rows && k < M) {
          const int i = m / T, t = m % T;
          const float2 w = W[(size_t)i * M + k], p = ph[(size_t)t * M + k];
          y = make_float2(w.x * p.x + w.y * p.y, w.y * p.x - w.x * p.y);  // w conj(p)
        }
        if (n < J && k < M) b = R[(size_t)n * M + k];
        As[2 * kc][r] = y.x;
        As[2 * kc + 1][r] = y.y;
        Bs[2 * kc][r] = b.x;
        Bs[2 * kc + 1][r] = b.y;
      }
    } else {
      for (int e = tid; e < TM * TKF; e += THREADS) {
        const int r = e / TKF, kk = e % TKF, k = k0 + kk, m = m0 + r, n = n0 + r;
        As[kk][r] = (m < rows && k < M) ? SC2[(size_t)m * M + k] : 0.f;
        Bs[kk][r] = (n < J && k < M) ? R2[(size_t)n * M + k] : 0.f;
      }
    }
    __syncthreads();
    hpcem_cu::tile_fma(As, Bs, acc, tx, ty);
    __syncthreads();
  }
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int m = m0 + ty + 16 * u;
    if (m >= rows) continue;
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const int n = n0 + tx + 16 * v;
      if (n >= J) continue;
      if (CROSS) {
        const int i = m / T;
        out[(size_t)m * J + n] = Arow[i] + Q[(size_t)i * J + n] - 2.f * acc[u][v];
      } else {
        out[(size_t)m * J + n] = acc[u][v];
      }
    }
  }
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// one warp per pair: sum_k s |X conj(ph) - c R|^2
__global__ void k_pair_diff2(const float2* __restrict__ X, const float* __restrict__ c,
                             const float* __restrict__ s, const float2* __restrict__ ph,
                             const float2* __restrict__ R, int M, const int64_t* __restrict__ pi,
                             const int64_t* __restrict__ pt, const int64_t* __restrict__ pj, long P,
                             float* __restrict__ out) {
  const long p = (blockIdx.x * (long)blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (p >= P) return;
  const size_t xi = (size_t)pi[p] * M, tp = (size_t)pt[p] * M, rj = (size_t)pj[p] * M;
  float acc = 0.f;
  for (int k = lane; k < M; k += 32) {
    const float2 x = X[xi + k], q = ph[tp + k], r = R[rj + k];
    const float ck = c[xi + k];
    const float dr = x.x * q.x + x.y * q.y - ck * r.x;
    const float di = x.y * q.x - x.x * q.y - ck * r.y;
    acc = fmaf(s[xi + k], dr * dr + di * di, acc);
  }
  acc = warp_sum(acc);
  if (lane == 0) out[p] = acc;
}

template <typename Td, typename Tw>
__global__ void k_accumulate(const float2* __restrict__ X, const float* __restrict__ c,
                             const float* __restrict__ s, const float2* __restrict__ ph,
                             const float2* __restrict__ R, int M, const int64_t* __restrict__ pi,
                             const int64_t* __restrict__ pt, const int64_t* __restrict__ pj,
                             const float* __restrict__ w, long P, Td* __restrict__ data,
                             Tw* __restrict__ weight, float* __restrict__ noise) {
  const long p = blockIdx.x;  // one block per pair
  if (p >= P) return;
  const float wp = w[p];
  if (wp == 0.f) return;
  const size_t xi = (size_t)pi[p] * M, tp = (size_t)pt[p] * M, rj = (size_t)pj[p] * M;
  for (int k = threadIdx.x; k < M; k += blockDim.x) {
    const float2 x = X[xi + k], q = ph[tp + k], r = R[rj + k];
    const float ck = c[xi + k], g = wp * ck * s[xi + k];
    const float yr = x.x * q.x + x.y * q.y, yi = x.y * q.x - x.x * q.y;
    atomicAdd(&data[2 * (rj + k)], (Td)(g * yr));
    atomicAdd(&data[2 * (rj + k) + 1], (Td)(g * yi));
    atomicAdd(&weight[rj + k], (Tw)(g * ck));
    const float dr = yr - ck * r.x, di = yi - ck * r.y;
    atomicAdd(&noise[xi + k], wp * (dr * dr + di * di));
  }
}

// per particle (one block): log posterior lp = -diff2 + lpt + lpj over n = T*J;
// logZ (double), pmax, flat argmax (first maximum); optional dense probabilities (B, T*J)
// double. As csrc/posteriors.cpp summarise(): p = exp(lp - max) / sum, 0 where
// lp - max <= -50; a particle whose maximum is not finite (all -inf / NaN, or +inf) gets
// logZ = -inf, pmax = 0 and p = 0 (argmax still the first maximum, -1 if none).
__global__ void k_logsumexp(const float* __restrict__ d, const float* __restrict__ lpt,
                            const float* __restrict__ lpj, int T, int J,
                            double* __restrict__ logZ, double* __restrict__ pmax,
                            int64_t* __restrict__ arg, double* __restrict__ prob) {
  const int i = blockIdx.x;
  const long n = (long)T * J;
  const float* di = d + (size_t)i * n;
  __shared__ double sv[THREADS];
  __shared__ long si[THREADS];
  double mx = -DBL_MAX;
  long am = -1;
  for (long q = threadIdx.x; q < n; q += blockDim.x) {
    const double v = (double)lpt[(size_t)i * T + q / J] + lpj[q % J] - di[q];
    if (v > mx) { mx = v; am = q; }
  }
  sv[threadIdx.x] = mx;
  si[threadIdx.x] = am;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h >>= 1) {
    if (threadIdx.x < h) {
      const double o = sv[threadIdx.x + h];
      const long oi = si[threadIdx.x + h];
      if (o > sv[threadIdx.x] || (o == sv[threadIdx.x] && oi >= 0 && (si[threadIdx.x] < 0 || oi < si[threadIdx.x]))) {
        sv[threadIdx.x] = o;
        si[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  mx = sv[0];
  am = si[0];
  __syncthreads();
  double sum = 0.0;
  for (long q = threadIdx.x; q < n; q += blockDim.x) {
    const double v = (double)lpt[(size_t)i * T + q / J] + lpj[q % J] - di[q] - mx;
    if (v > -50.0) sum += exp(v);
  }
  sv[threadIdx.x] = sum;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h >>= 1) {
    if (threadIdx.x < h) sv[threadIdx.x] += sv[threadIdx.x + h];
    __syncthreads();
  }
  sum = sv[0];
  const bool ok = am >= 0 && isfinite(mx);
  const double inv = ok ? 1.0 / sum : 0.0;
  if (threadIdx.x == 0) {
    logZ[i] = ok ? mx + log(sum) : -INFINITY;
    pmax[i] = inv;
    arg[i] = am;
  }
  if (prob) {
    for (long q = threadIdx.x; q < n; q += blockDim.x) {
      const double v = (double)lpt[(size_t)i * T + q / J] + lpj[q % J] - di[q] - mx;
      prob[(size_t)i * n + q] = (ok && v > -50.0) ? exp(v) * inv : 0.0;
    }
  }
}

}  // namespace

std::string coarse_diff2(uintptr_t X, uintptr_t ctf, uintptr_t s, uintptr_t ph, uintptr_t R,
                         long B, long T, long J, long M, uintptr_t out, uintptr_t stream) {
  cudaStream_t st = stream_of(stream);
  if (B == 0 || T == 0 || J == 0) return "";
  float2 *W = nullptr;
  float *SC2 = nullptr, *R2 = nullptr, *A = nullptr, *Q = nullptr;
  std::string e;
  auto alloc = [&](void** p, size_t bytes) {
    if (e.empty()) e = err(cudaMallocAsync(p, bytes ? bytes : 4, st));
  };
  alloc((void**)&W, sizeof(float2) * B * M);
  alloc((void**)&SC2, sizeof(float) * B * M);
  alloc((void**)&R2, sizeof(float) * J * M);
  alloc((void**)&A, sizeof(float) * B);
  alloc((void**)&Q, sizeof(float) * B * J);
  if (e.empty()) {
    k_prep_particles<<<(unsigned)B, THREADS, 0, st>>>(P_<const float2>(X), P_<const float>(ctf),
                                                      P_<const float>(s), (int)M, W, SC2, A);
    k_abs2<<<1024, THREADS, 0, st>>>(P_<const float2>(R), (size_t)J * M, R2);
    dim3 gq((unsigned)((J + TN - 1) / TN), (unsigned)((B + TM - 1) / TM));
    k_gemm<false><<<gq, THREADS, 0, st>>>((int)B, (int)J, (int)M, 1, nullptr, nullptr, nullptr, SC2,
                                          R2, nullptr, nullptr, Q);
    // grid.y is limited to 65535 row tiles: launch whole particles in chunks
    const long pc = std::max(1L, (65535L * TM) / T);
    for (long i0 = 0; i0 < B; i0 += pc) {
      const long nb = std::min(pc, B - i0), nr = nb * T;
      dim3 g((unsigned)((J + TN - 1) / TN), (unsigned)((nr + TM - 1) / TM));
      k_gemm<true><<<g, THREADS, 0, st>>>((int)nr, (int)J, (int)M, (int)T, W + i0 * M,
                                          P_<const float2>(ph), P_<const float2>(R), nullptr,
                                          nullptr, A + i0, Q + i0 * J, P_<float>(out) + i0 * T * J);
    }
    e = last();
  }
  for (void* p : {(void*)W, (void*)SC2, (void*)R2, (void*)A, (void*)Q})
    if (p) cudaFreeAsync(p, st);
  return e;
}

std::string pair_diff2(uintptr_t X, uintptr_t ctf, uintptr_t s, uintptr_t ph, uintptr_t R, long M,
                       uintptr_t pi, uintptr_t pt, uintptr_t pj, long P, uintptr_t out,
                       uintptr_t stream) {
  if (P == 0) return "";
  cudaStream_t st = stream_of(stream);
  const long threads = P * 32;
  k_pair_diff2<<<(unsigned)((threads + THREADS - 1) / THREADS), THREADS, 0, st>>>(
      P_<const float2>(X), P_<const float>(ctf), P_<const float>(s), P_<const float2>(ph),
      P_<const float2>(R), (int)M, P_<const int64_t>(pi), P_<const int64_t>(pt),
      P_<const int64_t>(pj), P, P_<float>(out));
  return last();
}

std::string accumulate(uintptr_t X, uintptr_t ctf, uintptr_t s, uintptr_t ph, uintptr_t R, long M,
                       uintptr_t pi, uintptr_t pt, uintptr_t pj, uintptr_t w, long P,
                       uintptr_t data, bool data_double, uintptr_t weight, bool weight_double,
                       uintptr_t noise, uintptr_t stream) {
  if (P == 0) return "";
  cudaStream_t st = stream_of(stream);
  const int th = M >= 256 ? 256 : 128;
#define HPCEM_MARG_ACC(TD, TW)                                                                   \
  k_accumulate<TD, TW><<<(unsigned)P, th, 0, st>>>(                                             \
      P_<const float2>(X), P_<const float>(ctf), P_<const float>(s), P_<const float2>(ph),       \
      P_<const float2>(R), (int)M, P_<const int64_t>(pi), P_<const int64_t>(pt),                \
      P_<const int64_t>(pj), P_<const float>(w), P, P_<TD>(data), P_<TW>(weight), P_<float>(noise))
  if (data_double && weight_double) HPCEM_MARG_ACC(double, double);
  else if (data_double) HPCEM_MARG_ACC(double, float);
  else if (weight_double) HPCEM_MARG_ACC(float, double);
  else HPCEM_MARG_ACC(float, float);
#undef HPCEM_MARG_ACC
  return last();
}

std::string logsumexp(uintptr_t diff2, uintptr_t lpt, uintptr_t lpj, long B, long T, long J,
                      uintptr_t logZ, uintptr_t pmax, uintptr_t arg, uintptr_t prob,
                      uintptr_t stream) {
  if (B == 0) return "";
  cudaStream_t st = stream_of(stream);
  k_logsumexp<<<(unsigned)B, THREADS, 0, st>>>(P_<const float>(diff2), P_<const float>(lpt),
                                               P_<const float>(lpj), (int)T, (int)J,
                                               P_<double>(logZ), P_<double>(pmax),
                                               P_<int64_t>(arg), P_<double>(prob));
  return last();
}

}  // namespace hpcem_marg
