// CUDA twin of csrc/importance.cpp: importance distributions over one pose dimension and their
// draws (seed 003, eqs 13 and 20-23), and the product of the drawn sets as E-step candidates.
// Same maths and the same counter-based random stream as the CPU file, so both draw the same
// points; one block per segment. Two launches for the draws: is_draw_count fills a (S, M)
// workspace with the distribution's running sum and the draw counts (and each segment's count of
// distinct points, whose prefix sum the caller turns into offsets); is_draw_emit writes the
// distinct points in grid order with log(m / (N q)).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_common.cuh"

namespace py = pybind11;

namespace {

using hpcem_cu::last;
using hpcem_cu::P_;
using hpcem_cu::stream_of;

constexpr int THREADS = 256;
constexpr double CUT = -40.0;

__device__ inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

__device__ inline double uniform01(uint64_t key, uint64_t k) {
  return double(splitmix64(key + 0x632BE59BD9B4E019ULL * (k + 1)) >> 11) * (1.0 / 9007199254740992.0);
}

__device__ double block_sum(double v, double* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h >>= 1) {
    if (threadIdx.x < h) red[threadIdx.x] += red[threadIdx.x + h];
    __syncthreads();
  }
  const double out = red[0];
  __syncthreads();
  return out;
}

// one block per segment: cdf (S, M) running sum of q, cnt (S, M) draws per point
__global__ void k_draw_count(const double* __restrict__ prev, const double* __restrict__ val,
                             const double* __restrict__ grid, int C, int D, long M, int kind,
                             const double* __restrict__ kappa_s,
                             const double* __restrict__ inv_T, const double* __restrict__ alpha, double s0,
                             const uint64_t* __restrict__ keys, long max_draws, double* __restrict__ cdf,
                             int* __restrict__ cnt, long* __restrict__ nuniq, long* __restrict__ ndraw,
                             double* __restrict__ ess) {
  __shared__ double red[THREADS];
  __shared__ double sh_N;
  const long s = blockIdx.x;
  const double kappa = kappa_s[s];
  const double* p = prev + size_t(s) * C * D;
  const double* v = val + size_t(s) * C;
  double* q = cdf + size_t(s) * M;
  int* m = cnt + size_t(s) * M;
  double vmax = 0.0;
  for (int i = 0; i < C; ++i) vmax = fmax(vmax, v[i]);
  double zpart = 0.0;
  for (long j = threadIdx.x; j < M; j += blockDim.x) {
    const double* g = grid + size_t(j) * D;
    double a = 0.0;
    if (vmax > 0.0) {
      for (int i = 0; i < C; ++i) {
        if (!(v[i] > 0.0)) continue;
        const double w = inv_T[s] > 0.0 ? exp(inv_T[s] * log(v[i] / vmax)) : 1.0;
        double e = 0.0;
        if (kind == 0) {
          double dot = 0.0;
          for (int k = 0; k < D; ++k) dot += p[i * D + k] * g[k];
          e = kappa * (dot - 1.0);
        } else {
          double d2 = 0.0;
          for (int k = 0; k < D; ++k) d2 += (p[i * D + k] - g[k]) * (p[i * D + k] - g[k]);
          e = -kappa * d2;
        }
        if (e > CUT) a += w * exp(e);
      }
    }
    q[j] = a;
    m[j] = 0;
    zpart += a;
  }
  const double Z = block_sum(zpart, red);
  const double al = Z > 0.0 ? alpha[s] : 1.0;
  double s2part = 0.0;
  for (long j = threadIdx.x; j < M; j += blockDim.x) {
    const double qj = (Z > 0.0 ? (1.0 - al) * q[j] / Z : 0.0) + al / double(M);
    q[j] = qj;
    s2part += qj * qj;
  }
  const double s2 = block_sum(s2part, red);
  if (threadIdx.x == 0) {  // running sum (sequential: M is at most a few 10^4)
    double c = 0.0;
    for (long j = 0; j < M; ++j) {
      c += q[j];
      q[j] = c;
    }
    const double e = 1.0 / s2;
    long N = long(ceil(s0 * e));
    N = N < 1 ? 1 : (N > max_draws ? max_draws : N);
    ess[s] = e;
    ndraw[s] = N;
    sh_N = double(N);
  }
  __syncthreads();
  const long N = long(sh_N);
  const double total = q[M - 1];
  for (long k = threadIdx.x; k < N; k += blockDim.x) {
    const double t = (double(k) + uniform01(keys[s], 0)) / double(N) * total;   // systematic draws
    long lo = 0, hi = M - 1;  // first j with cdf[j] > t
    while (lo < hi) {
      const long mid = (lo + hi) / 2;
      if (q[mid] > t) hi = mid; else lo = mid + 1;
    }
    atomicAdd(m + lo, 1);
  }
  __syncthreads();
  double upart = 0.0;
  for (long j = threadIdx.x; j < M; j += blockDim.x) upart += m[j] > 0 ? 1.0 : 0.0;
  const double U = block_sum(upart, red);
  if (threadIdx.x == 0) nuniq[s] = long(U + 0.5);
}

__global__ void k_draw_emit(const double* __restrict__ cdf, const int* __restrict__ cnt, long M,
                            const long* __restrict__ off, const long* __restrict__ ndraw, int* __restrict__ idx,
                            double* __restrict__ lw) {
  const long s = blockIdx.x;
  if (threadIdx.x != 0) return;
  const double* c = cdf + size_t(s) * M;
  const int* m = cnt + size_t(s) * M;
  const double total = c[M - 1], N = double(ndraw[s]);
  long o = off[s];
  for (long j = 0; j < M; ++j) {
    if (!m[j]) continue;
    const double qj = (c[j] - (j ? c[j - 1] : 0.0)) / total;
    idx[o] = int(j);
    lw[o] = log(double(m[j]) / (N * qj));
    ++o;
  }
}

__global__ void k_candidates(const long* __restrict__ od, const int* __restrict__ id, const double* __restrict__ ld,
                             const long* __restrict__ op, const int* __restrict__ ip, const double* __restrict__ lp,
                             const long* __restrict__ ot, const int* __restrict__ it, const double* __restrict__ lt,
                             const long* __restrict__ cls, const long* __restrict__ start, long npsi, long Jc1,
                             long* __restrict__ tout, long* __restrict__ jout, double* __restrict__ eout) {
  const long s = blockIdx.x;
  const long nd = od[s + 1] - od[s], np = op[s + 1] - op[s], nt = ot[s + 1] - ot[s];
  const long total = nd * np * nt;
  for (long q = threadIdx.x; q < total; q += blockDim.x) {
    const long a = od[s] + q / (np * nt), b = op[s] + (q / nt) % np, c = ot[s] + q % nt;
    const long o = start[s] + q;
    tout[o] = it[c];
    jout[o] = cls[s] * Jc1 + long(id[a]) * npsi + ip[b];
    eout[o] = ld[a] + lp[b] + lt[c];
  }
}

void check(const std::string& e) {
  if (!e.empty()) throw std::runtime_error("hpcem._cuda (importance): " + e);
}

}  // namespace

void register_importance_cuda(py::module_& m) {
  m.def("is_draw_count", [](uintptr_t prev, uintptr_t val, uintptr_t grid, long S, int C, int D, long M, int kind,
                            uintptr_t kappa, uintptr_t inv_T, uintptr_t alpha, double s0, uintptr_t keys, long max_draws,
                            uintptr_t cdf, uintptr_t cnt, uintptr_t nuniq, uintptr_t ndraw, uintptr_t ess,
                            uintptr_t stream) {
    py::gil_scoped_release nogil;
    if (S > 0)
      k_draw_count<<<unsigned(S), THREADS, 0, stream_of(stream)>>>(
          P_<const double>(prev), P_<const double>(val), P_<const double>(grid), C, D, M, kind, P_<const double>(kappa),
          P_<const double>(inv_T), P_<const double>(alpha), s0, P_<const uint64_t>(keys), max_draws, P_<double>(cdf),
          P_<int>(cnt), P_<long>(nuniq), P_<long>(ndraw), P_<double>(ess));
    check(last("is_draw_count"));
  });
  m.def("is_draw_emit", [](uintptr_t cdf, uintptr_t cnt, long S, long M, uintptr_t off, uintptr_t ndraw, uintptr_t idx,
                           uintptr_t lw, uintptr_t stream) {
    py::gil_scoped_release nogil;
    if (S > 0)
      k_draw_emit<<<unsigned(S), 32, 0, stream_of(stream)>>>(P_<const double>(cdf), P_<const int>(cnt), M,
                                                             P_<const long>(off), P_<const long>(ndraw), P_<int>(idx),
                                                             P_<double>(lw));
    check(last("is_draw_emit"));
  });
  m.def("is_candidates", [](uintptr_t od, uintptr_t id, uintptr_t ld, uintptr_t op, uintptr_t ip, uintptr_t lp,
                            uintptr_t ot, uintptr_t it, uintptr_t lt, uintptr_t cls, uintptr_t start, long S, int K,
                            long npsi, long Jc1, uintptr_t tout, uintptr_t jout, uintptr_t eout, uintptr_t stream) {
    (void)K;
    py::gil_scoped_release nogil;
    if (S > 0)
      k_candidates<<<unsigned(S), THREADS, 0, stream_of(stream)>>>(
          P_<const long>(od), P_<const int>(id), P_<const double>(ld), P_<const long>(op), P_<const int>(ip),
          P_<const double>(lp), P_<const long>(ot), P_<const int>(it), P_<const double>(lt), P_<const long>(cls),
          P_<const long>(start), npsi, Jc1, P_<long>(tout), P_<long>(jout), P_<double>(eout));
    check(last("is_candidates"));
  });
}
