// CUDA twin of csrc/gtm.cpp (GTM / ROME manifold-learning kernels). Device pointers in
// (cupy .data.ptr), sizes as plain integers, a cudaStream_t as uintptr_t; every entry point
// returns "" on success, else the CUDA error (see cuda/gtm_bind.cpp, hpcem/kernels/gtm.py).
// No cuBLAS: the products run in one register-tiled GEMM kernel (templated on operand and
// accumulator types and on the operand layouts).
//
//   gtm_solve:  A_packed (Mp x dc) = P2^T G_chunk and B (M x 2dc) = Phi^T H_chunk in double
//               (P2[k, (m, m')] = phi_km phi_km', m <= m'), then ONE THREAD BLOCK PER PIXEL
//               unpacks A_d + lam I into shared memory (global scratch when M*M doubles do
//               not fit), factorises it (right-looking Cholesky, a growing ridge when it is
//               not SPD in floating point, like the CPU code) and solves for the complex
//               right-hand side (re and im as two real columns).
//   gtm_distances:        out (N x K) float = Z (N x L) @ Ymat^T (K x L)
//   gtm_responsibilities: in place, one block per particle, log-sum-exp in double
//   gtm_accumulate:       out (K x L) double = R^T (K x N) @ Z (N x L), double accumulation
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <string>

#include "cuda_common.cuh"

namespace hpcem_gtm {
namespace {

using hpcem_cu::err;
using hpcem_cu::last;
using hpcem_cu::P_;
using hpcem_cu::stream_of;

constexpr int TM = 64, TN = 64, TK = 16;  // tile rows, cols, k per step
constexpr int THREADS = 256;              // 16 x 16 threads, 4 x 4 outputs each
constexpr long MAX_GRID_Y = 65535;

// C[m, n] = sum_k opA(m, k) opB(k, n) for m < rows, n < cols, accumulated in TC.
//   opA(m, k) = AT ? A[k*lda + m] : A[m*lda + k]
//   opB(k, n) = BT ? B[n*ldb + k] : B[k*ldb + n]
template <typename TA, typename TB, typename TC, bool AT, bool BT>
__global__ void __launch_bounds__(THREADS)
k_gemm(int rows, int cols, int kdim, const TA* __restrict__ A, long lda, const TB* __restrict__ B,
       long ldb, TC* __restrict__ C, long ldc) {
  __shared__ TC As[TK][TM + 1];
  __shared__ TC Bs[TK][TN + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const long m0 = (long)blockIdx.x * TM, n0 = (long)blockIdx.y * TN;
  TC acc[4][4];
#pragma unroll
  for (int u = 0; u < 4; ++u)
#pragma unroll
    for (int v = 0; v < 4; ++v) acc[u][v] = TC(0);
  for (int k0 = 0; k0 < kdim; k0 += TK) {
    for (int e = tid; e < TM * TK; e += THREADS) {
      int r, kk;
      if (AT) { kk = e / TM; r = e % TM; } else { r = e / TK; kk = e % TK; }  // coalesced
      const long m = m0 + r;
      const int k = k0 + kk;
      TC v = TC(0);
      if (m < rows && k < kdim) v = (TC)(AT ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k]);
      As[kk][r] = v;
    }
    for (int e = tid; e < TN * TK; e += THREADS) {
      int c, kk;
      if (BT) { c = e / TK; kk = e % TK; } else { kk = e / TN; c = e % TN; }
      const long n = n0 + c;
      const int k = k0 + kk;
      TC v = TC(0);
      if (n < cols && k < kdim) v = (TC)(BT ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n]);
      Bs[kk][c] = v;
    }
    __syncthreads();
    hpcem_cu::tile_fma(As, Bs, acc, tx, ty);
    __syncthreads();
  }
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const long m = m0 + ty + 16 * u;
    if (m >= rows) continue;
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const long n = n0 + tx + 16 * v;
      if (n < cols) C[(size_t)m * ldc + n] = acc[u][v];
    }
  }
}

// Launch k_gemm over the whole (rows x cols) output, splitting cols so grid.y stays legal.
template <typename TA, typename TB, typename TC, bool AT, bool BT>
void gemm(long rows, long cols, long kdim, const TA* A, long lda, const TB* B, long ldb, TC* C,
          long ldc, cudaStream_t st) {
  if (rows <= 0 || cols <= 0) return;
  const long cmax = MAX_GRID_Y * TN;
  for (long c0 = 0; c0 < cols; c0 += cmax) {
    const long nc = std::min(cmax, cols - c0);
    dim3 g((unsigned)((rows + TM - 1) / TM), (unsigned)((nc + TN - 1) / TN));
    const TB* Bc = BT ? B + (size_t)c0 * ldb : B + c0;
    k_gemm<TA, TB, TC, AT, BT><<<g, THREADS, 0, st>>>((int)rows, (int)nc, (int)kdim, A, lda, Bc,
                                                      ldb, C + c0, ldc);
  }
}

// P2 (K x Mp) = phi_km phi_km' (m <= m', packed row by row) and Phi in double (K x M)
__global__ void k_khatri_rao(const float* __restrict__ phi, int K, int M, double* __restrict__ P2,
                             double* __restrict__ Pd) {
  const int Mp = M * (M + 1) / 2;
  const long n = (long)K * M * M;
  for (long q = blockIdx.x * (long)blockDim.x + threadIdx.x; q < n; q += (long)gridDim.x * blockDim.x) {
    const int k = (int)(q / ((long)M * M)), m = (int)(q / M % M), mp = (int)(q % M);
    const double a = phi[(size_t)k * M + m];
    if (mp == m) Pd[(size_t)k * M + m] = a;
    if (mp >= m) {
      const int c = m * M - m * (m - 1) / 2 + (mp - m);  // packed index of (m, mp)
      P2[(size_t)k * Mp + c] = a * (double)phi[(size_t)k * M + mp];
    }
  }
}

// One block per pixel j of the chunk: unpack A (lower triangle) + lam (+ ridge), Cholesky,
// two triangular solves for the two real right-hand sides, write W[:, d0 + j] as complex64.
__global__ void k_solve(const double* __restrict__ Ap, const double* __restrict__ Bc, int M, int dc,
                        double lam, long D, long d0, float2* __restrict__ W,
                        double* __restrict__ scratch) {
  extern __shared__ double sh[];
  const int j = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  double* x = sh;                                                   // 2M (re, im interleaved)
  double* A = scratch ? scratch + (size_t)j * M * M : sh + 2 * M;  // M x M, lower triangle used
  __shared__ double red[THREADS];
  __shared__ int bad;
  __shared__ double tr;
  // trace of A_d (for the ridge scale)
  double t = 0.0;
  for (int m = tid; m < M; m += nt) t += Ap[(size_t)(m * M - m * (m - 1) / 2) * dc + j];
  red[tid] = t;
  __syncthreads();
  for (int h = nt / 2; h > 0; h >>= 1) {
    if (tid < h) red[tid] += red[tid + h];
    __syncthreads();
  }
  if (tid == 0) tr = red[0];
  __syncthreads();
  double jitter = 0.0;
  double ridge = 1e-10 * (tr / M + lam) + 1e-300;
  bool ok = false;
  for (int attempt = 0; attempt <= 12 && !ok; ++attempt) {
    if (attempt > 0) { jitter = ridge; ridge *= 10.0; }
    // unpack: c runs over (m, mp >= m) row by row; A[mp][m] = Ap[c]
    const int Mp = M * (M + 1) / 2;
    for (int c = tid; c < Mp; c += nt) {
      int m = 0, base = 0;
      while (base + (M - m) <= c) { base += M - m; ++m; }
      const int mp = m + (c - base);
      double v = Ap[(size_t)c * dc + j];
      if (mp == m) v += lam + jitter;
      A[(size_t)mp * M + m] = v;
    }
    if (tid == 0) bad = 0;
    __syncthreads();
    for (int k = 0; k < M; ++k) {
      if (tid == 0) {
        const double s = A[(size_t)k * M + k];
        if (!(s > 0.0) || !isfinite(s)) bad = 1;
        else A[(size_t)k * M + k] = sqrt(s);
      }
      __syncthreads();
      if (bad) break;  // uniform: every thread reads the same shared flag
      const double inv = 1.0 / A[(size_t)k * M + k];
      for (int i = k + 1 + tid; i < M; i += nt) A[(size_t)i * M + k] *= inv;
      __syncthreads();
      const int n = M - k - 1;  // trailing update of the lower triangle
      for (int e = tid; e < n * n; e += nt) {
        const int i = k + 1 + e / n, q = k + 1 + e % n;
        if (q <= i) A[(size_t)i * M + q] -= A[(size_t)i * M + k] * A[(size_t)q * M + k];
      }
      __syncthreads();
    }
    ok = !bad;
    __syncthreads();
  }
  for (int m = tid; m < M; m += nt) {
    x[2 * m] = ok ? Bc[(size_t)m * 2 * dc + 2 * j] : 0.0;
    x[2 * m + 1] = ok ? Bc[(size_t)m * 2 * dc + 2 * j + 1] : 0.0;
  }
  __syncthreads();
  if (ok) {
    for (int i = 0; i < M; ++i) {  // forward: L y = b (column oriented)
      if (tid == 0) {
        const double l = A[(size_t)i * M + i];
        x[2 * i] /= l;
        x[2 * i + 1] /= l;
      }
      __syncthreads();
      const double yr = x[2 * i], yi = x[2 * i + 1];
      for (int r = i + 1 + tid; r < M; r += nt) {
        const double l = A[(size_t)r * M + i];
        x[2 * r] -= l * yr;
        x[2 * r + 1] -= l * yi;
      }
      __syncthreads();
    }
    for (int i = M - 1; i >= 0; --i) {  // backward: L^T x = y
      if (tid == 0) {
        const double l = A[(size_t)i * M + i];
        x[2 * i] /= l;
        x[2 * i + 1] /= l;
      }
      __syncthreads();
      const double yr = x[2 * i], yi = x[2 * i + 1];
      for (int r = tid; r < i; r += nt) {
        const double l = A[(size_t)i * M + r];
        x[2 * r] -= l * yr;
        x[2 * r + 1] -= l * yi;
      }
      __syncthreads();
    }
  }
  for (int m = tid; m < M; m += nt)
    W[(size_t)m * D + d0 + j] = make_float2((float)x[2 * m], (float)x[2 * m + 1]);
}

// One block per particle row of delta (N x K): softmax_k(-beta/2 (a_n + delta_nk)) in place.
__global__ void k_responsibilities(float* __restrict__ dl, const double* __restrict__ a, int K,
                                   double beta, double* __restrict__ logZ,
                                   double* __restrict__ rdelta, int64_t* __restrict__ kmax,
                                   float* __restrict__ rmax) {
  const long n = blockIdx.x;
  float* row = dl + (size_t)n * K;
  const int tid = threadIdx.x;
  __shared__ double sv[THREADS], sd[THREADS];
  __shared__ int si[THREADS];
  double mn = DBL_MAX;
  int am = -1;
  for (int k = tid; k < K; k += blockDim.x)
    if ((double)row[k] < mn) { mn = row[k]; am = k; }
  sv[tid] = mn;
  si[tid] = am;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h >>= 1) {
    if (tid < h) {
      const double o = sv[tid + h];
      const int oi = si[tid + h];
      if (oi >= 0 && (si[tid] < 0 || o < sv[tid] || (o == sv[tid] && oi < si[tid]))) {
        sv[tid] = o;
        si[tid] = oi;
      }
    }
    __syncthreads();
  }
  mn = sv[0];
  am = si[0];
  __syncthreads();
  double s = 0.0, sdd = 0.0;
  for (int k = tid; k < K; k += blockDim.x) {
    const double v = row[k];
    const double x = -0.5 * beta * (v - mn);
    const double e = x > -80.0 ? exp(x) : 0.0;
    s += e;
    sdd += e * v;
  }
  sv[tid] = s;
  sd[tid] = sdd;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h >>= 1) {
    if (tid < h) {
      sv[tid] += sv[tid + h];
      sd[tid] += sd[tid + h];
    }
    __syncthreads();
  }
  s = sv[0];
  sdd = sd[0];
  const double inv = 1.0 / s;
  for (int k = tid; k < K; k += blockDim.x) {
    const double x = -0.5 * beta * ((double)row[k] - mn);
    const double e = x > -80.0 ? exp(x) : 0.0;
    row[k] = (float)(e * inv);
  }
  if (tid == 0) {
    logZ[n] = -0.5 * beta * (a[n] + mn) + log(s);
    rdelta[n] = a[n] + sdd * inv;
    kmax[n] = am < 0 ? 0 : am;
    rmax[n] = (float)inv;
  }
}

}  // namespace

// W (M, D) complex64 = per pixel (Phi^T diag(G[:,d]) Phi + lam I)^{-1} Phi^T H[:,d]
std::string gtm_solve(uintptr_t Phi, uintptr_t G, uintptr_t H, long K, long M, long D, double lam,
                      long chunk, uintptr_t Wout, uintptr_t stream) {
  cudaStream_t st = stream_of(stream);
  if (D == 0 || M == 0) return "";
  const long Mp = M * (M + 1) / 2;
  // auto: packed A and B chunks near 256 MiB
  if (chunk <= 0) chunk = std::max(64L, std::min(D, (256L << 20) / (8L * (Mp + 2 * M))));
  chunk = std::min(chunk, D);
  // shared memory per block: x (2M) + A (M*M) doubles; beyond 96 KiB use global scratch
  const size_t sh_full = sizeof(double) * (2 * M + M * M);
  const bool use_shared = sh_full <= (96u << 10);
  if (!use_shared) chunk = std::max(1L, std::min(chunk, (512L << 20) / (8L * M * M)));
  double *P2 = nullptr, *Pd = nullptr, *Ap = nullptr, *Bc = nullptr, *scratch = nullptr;
  std::string e;
  auto alloc = [&](double** p, size_t n) {
    if (e.empty()) e = err(cudaMallocAsync((void**)p, n ? sizeof(double) * n : 8, st));
  };
  alloc(&P2, (size_t)K * Mp);
  alloc(&Pd, (size_t)K * M);
  alloc(&Ap, (size_t)Mp * chunk);
  alloc(&Bc, (size_t)M * 2 * chunk);
  if (!use_shared) alloc(&scratch, (size_t)M * M * chunk);
  const size_t shmem = use_shared ? sh_full : sizeof(double) * 2 * M;
  if (e.empty() && shmem > (48u << 10))
    e = err(cudaFuncSetAttribute(k_solve, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shmem));
  if (e.empty()) {
    if (K > 0)
      k_khatri_rao<<<(unsigned)std::min<long>(4096, (K * M * M + 255) / 256), 256, 0, st>>>(
          P_<const float>(Phi), (int)K, (int)M, P2, Pd);
    const float* g = P_<const float>(G);
    const float* h = P_<const float>(H);  // interleaved (re, im): K x 2D
    const int nt = M * M >= 4096 ? 256 : (M * M >= 1024 ? 128 : 64);
    for (long d0 = 0; d0 < D && e.empty(); d0 += chunk) {
      const long dc = std::min(chunk, D - d0);
      if (K > 0) {
        gemm<double, float, double, true, false>(Mp, dc, K, P2, Mp, g + d0, D, Ap, dc, st);
        gemm<double, float, double, true, false>(M, 2 * dc, K, Pd, M, h + 2 * d0, 2 * D, Bc, 2 * dc, st);
      } else {
        e = err(cudaMemsetAsync(Ap, 0, sizeof(double) * Mp * dc, st));
        if (e.empty()) e = err(cudaMemsetAsync(Bc, 0, sizeof(double) * M * 2 * dc, st));
      }
      k_solve<<<(unsigned)dc, nt, shmem, st>>>(Ap, Bc, (int)M, (int)dc, lam, D, d0,
                                                P_<float2>(Wout), scratch);
      if (e.empty()) e = last();
    }
  }
  for (double* p : {P2, Pd, Ap, Bc, scratch})
    if (p) cudaFreeAsync(p, st);
  return e;
}

// out (N, K) float32 = Z (N, L) @ Ymat^T
std::string gtm_distances(uintptr_t Z, uintptr_t Y, long N, long L, long K, uintptr_t out,
                          uintptr_t stream) {
  cudaStream_t st = stream_of(stream);
  if (N == 0 || K == 0) return "";
  if (L == 0) return err(cudaMemsetAsync(P_<void>(out), 0, sizeof(float) * N * K, st));
  gemm<float, float, float, false, true>(N, K, L, P_<const float>(Z), L, P_<const float>(Y), L,
                                         P_<float>(out), K, st);
  return last();
}

// in place: delta (N, K) -> responsibilities; logZ, rdelta (N,) f64, kmax (N,) i64, rmax (N,) f32
std::string gtm_responsibilities(uintptr_t delta, uintptr_t a, long N, long K, double beta,
                                 uintptr_t logZ, uintptr_t rdelta, uintptr_t kmax, uintptr_t rmax,
                                 uintptr_t stream) {
  cudaStream_t st = stream_of(stream);
  if (N == 0) return "";
  const int nt = K >= 256 ? 256 : (K >= 64 ? 128 : 32);
  k_responsibilities<<<(unsigned)N, nt, 0, st>>>(P_<float>(delta), P_<const double>(a), (int)K,
                                                 beta, P_<double>(logZ), P_<double>(rdelta),
                                                 P_<int64_t>(kmax), P_<float>(rmax));
  return last();
}

// out (K, L) float64 = R^T (K, N) @ Z (N, L), accumulated in double
std::string gtm_accumulate(uintptr_t R, uintptr_t Z, long N, long K, long L, uintptr_t out,
                           uintptr_t stream) {
  cudaStream_t st = stream_of(stream);
  if (K == 0 || L == 0) return "";
  if (N == 0) return err(cudaMemsetAsync(P_<void>(out), 0, sizeof(double) * K * L, st));
  gemm<float, float, double, true, false>(K, L, N, P_<const float>(R), K, P_<const float>(Z), L,
                                          P_<double>(out), L, st);
  return last();
}

}  // namespace hpcem_gtm
