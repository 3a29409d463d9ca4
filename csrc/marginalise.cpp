// Marginalisation kernels of the MAP-EM E-step (CPU, C++/OpenMP).
//
// For particle i (Fourier coefficients X_i, CTF c_i, weights s_i = hermitian weight / sigma2),
// translation t (phase factors ph_t) and reference hypothesis j (R_j, already projected):
//   diff2(i,t,j) = sum_k s_ik |X_ik conj(ph_tk) - c_ik R_jk|^2
//                = A_i + Q_ij - 2 Cross_itj
//   A_i = sum_k s|X|^2,  Q = (s c^2) @ |R|^2,  Cross_itj = Re sum_k (s c X conj(ph_t))_k conj(R_jk)
// Cross is one real SGEMM (B*T) x 2M x J: a complex64 row viewed as 2M interleaved floats
// (re, im) dotted with another gives re*re + im*im = Re(y conj(r)).
// The SGEMM is OpenBLAS's, borrowed from scipy.linalg.cython_blas (no link-time BLAS).
//
// Posteriors: log p(t,j | i) = -diff2 + logprior_t(i,t) + logprior_j(j) - logZ_i (double
// log-sum-exp); the significant set is the smallest set of hypotheses whose probabilities
// sum to >= frac, found by a mass-targeted quickselect (no full sort).
#include "common.hpp"

#include <dlfcn.h>
#include <link.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

namespace {

using sgemm_t = void (*)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                         float*, float*, int*);

// OpenBLAS's thread-count controls, found among the loaded libraries (the one scipy links;
// numpy's 64-bit-integer OpenBLAS exports suffixed names and is not touched). Absent for
// other BLAS vendors: coarse_diff2 then lets the BLAS thread each call.
using setn_t = void (*)(int);
using getn_t = int (*)();
struct BlasThreads {
  setn_t set = nullptr;
  getn_t get = nullptr;
};

int find_openblas(struct dl_phdr_info* info, size_t, void* data) {
  auto* bt = static_cast<BlasThreads*>(data);
  if (bt->set || !info->dlpi_name || !std::strstr(info->dlpi_name, "openblas")) return 0;
  void* h = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
  if (!h) return 0;
  const char* names[][2] = {{"scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"},
                            {"openblas_set_num_threads", "openblas_get_num_threads"}};
  for (auto& nm : names) {
    void* sp = dlsym(h, nm[0]);
    void* gp = dlsym(h, nm[1]);
    if (sp && gp) {
      bt->set = reinterpret_cast<setn_t>(sp);
      bt->get = reinterpret_cast<getn_t>(gp);
      break;
    }
  }
  dlclose(h);  // NOLOAD handle: drops only the reference just taken
  return bt->set ? 1 : 0;
}

struct Blas {
  sgemm_t gemm = nullptr;
  BlasThreads threads;
};

const Blas& get_blas() {
  static Blas b;  // resolved once, under the GIL
  if (!b.gemm) {
    py::object capi = py::module_::import("scipy.linalg.cython_blas").attr("__pyx_capi__");
    py::object cap = capi["sgemm"];
    PyObject* c = cap.ptr();
    void* p = PyCapsule_GetPointer(c, PyCapsule_GetName(c));
    if (!p) throw py::error_already_set();
    dl_iterate_phdr(find_openblas, &b.threads);
    b.gemm = reinterpret_cast<sgemm_t>(p);
  }
  return b;
}

// Row-major C (m x n) = alpha * A (m x k) @ B^T + beta * C, with B row-major (n x k).
// Column-major view: C^T (n x m) = B (n x k) @ A^T: sgemm('T', 'N', n, m, k, B, A).
void gemm_abt(sgemm_t f, int m, int n, int k, float alpha, const float* A, int lda,
              const float* B, int ldb, float beta, float* C, int ldc) {
  if (m == 0 || n == 0) return;
  char ta = 'T', tb = 'N';
  f(&ta, &tb, &n, &m, &k, &alpha, const_cast<float*>(B), &ldb, const_cast<float*>(A), &lda,
    &beta, C, &ldc);
}

struct Inputs {  // validated views of the common inputs
  int B, M, T, J;
  const float* X;   // (B, 2M) interleaved
  const float* c;   // (B, M)
  const float* s;   // (B, M)
  const float* ph;  // (T, 2M)
  const float* R;   // (J, 2M)
};

Inputs check_inputs(const carray<cfloat>& X, const carray<float>& ctf, const carray<float>& s,
                    const carray<cfloat>& ph, const carray<cfloat>& R) {
  require(X.ndim() == 2 && ctf.ndim() == 2 && s.ndim() == 2 && ph.ndim() == 2 && R.ndim() == 2,
          "marginalise: X, ctf, s, phases, refs must be 2-D");
  Inputs in;
  in.B = (int)X.shape(0);
  in.M = (int)X.shape(1);
  in.T = (int)ph.shape(0);
  in.J = (int)R.shape(0);
  require(ctf.shape(0) == in.B && ctf.shape(1) == in.M, "marginalise: ctf must be (B, M)");
  require(s.shape(0) == in.B && s.shape(1) == in.M, "marginalise: s must be (B, M)");
  require(ph.shape(1) == in.M, "marginalise: phases must be (T, M)");
  require(R.shape(1) == in.M, "marginalise: refs must be (J, M)");
  in.X = reinterpret_cast<const float*>(X.data());
  in.c = ctf.data();
  in.s = s.data();
  in.ph = reinterpret_cast<const float*>(ph.data());
  in.R = reinterpret_cast<const float*>(R.data());
  return in;
}

// ---------------------------------------------------------------------------------------
// 1. coarse_diff2: all (t, j) for every particle, through SGEMM.
//
// Work is split into blocks of particles; a block's operand Y[(i,t), :] = s c X conj(ph_t)
// (interleaved, nb*T rows x 2M) is formed, its rows of D prefilled with A_i + Q_ij, and
// D_block += -2 Y R^T in one SGEMM. Two threadings:
//  mode 1 (default when OpenBLAS's thread control is found): OpenMP threads take blocks,
//         each calling a single-threaded SGEMM (OpenBLAS set to 1 thread for the call and
//         restored after; process-wide, as OpenBLAS has no per-call setting).
//  mode 0: blocks in sequence, fills on the calling thread, OpenBLAS threads each SGEMM.
// Measured on 2 cores: mode 1 is 10-60 % faster (no spinning OpenMP workers competing with
// OpenBLAS's threads, no serial fills).
namespace {
inline void fill_block(const Inputs& in, int i0, int nb, const float* A, const float* Q,
                       float* Y, float* D) {
  const int M = in.M, M2 = 2 * M, T = in.T, J = in.J;
  for (int ib = 0; ib < nb; ++ib) {
    const int i = i0 + ib;
    const float *x = in.X + (size_t)i * M2, *ci = in.c + (size_t)i * M, *si = in.s + (size_t)i * M;
    for (int t = 0; t < T; ++t) {
      const float* p = in.ph + (size_t)t * M2;
      float* y = Y + ((size_t)ib * T + t) * M2;
#pragma omp simd
      for (int k = 0; k < M; ++k) {
        const float w = si[k] * ci[k];
        const float xr = x[2 * k], xi = x[2 * k + 1], pr = p[2 * k], pim = p[2 * k + 1];
        y[2 * k] = w * (xr * pr + xi * pim);
        y[2 * k + 1] = w * (xi * pr - xr * pim);
      }
      float* d = D + ((size_t)i * T + t) * J;
      const float* q = Q + (size_t)i * J;
      const float a = A[i];
#pragma omp simd
      for (int j = 0; j < J; ++j) d[j] = a + q[j];
    }
  }
}
}  // namespace

py::array_t<float> coarse_diff2(const carray<cfloat>& X, const carray<float>& ctf,
                                const carray<float>& s, const carray<cfloat>& ph,
                                const carray<cfloat>& R, int block_particles, int mode) {
  Inputs in = check_inputs(X, ctf, s, ph, R);
  const int B = in.B, M = in.M, T = in.T, J = in.J, M2 = 2 * M;
  py::array_t<float> out({(py::ssize_t)B, (py::ssize_t)T, (py::ssize_t)J});
  float* D = out.mutable_data();
  const Blas& blas = get_blas();
  const sgemm_t f = blas.gemm;
  if (B == 0 || T == 0 || J == 0) return out;
  if (M == 0) {
    std::fill(D, D + (size_t)B * T * J, 0.0f);
    return out;
  }
  const int nthr = omp_get_max_threads();
  if (mode < 0) mode = blas.threads.set ? 1 : 0;
  require(mode == 0 || mode == 1, "coarse_diff2: mode must be -1, 0 or 1");
  require(mode == 0 || blas.threads.set,
          "coarse_diff2: mode 1 needs OpenBLAS's thread control, which was not found");
  // Operand blocks of ~1280 rows (B*T direction), at most 64 MB each; in mode 1 small
  // enough that every thread gets a block (down to 4 particles).
  int bb = block_particles;
  if (bb <= 0) {
    const double per = (double)T * M2 * sizeof(float);
    bb = (1280 + T - 1) / T;
    bb = (int)std::max(1.0, std::min((double)bb, std::floor(64.0e6 / std::max(per, 1.0))));
    if (mode == 1) bb = std::max(std::min(bb, 4), std::min(bb, (B + nthr - 1) / nthr));
  }
  bb = std::min(bb, B);
  const int nblk = (B + bb - 1) / bb;
  {
    py::gil_scoped_release nogil;
    std::vector<float> A(B), sc2((size_t)B * M), r2((size_t)J * M), Q((size_t)B * J);
#pragma omp parallel for schedule(static) if (mode == 1)
    for (int i = 0; i < B; ++i) {
      const float *x = in.X + (size_t)i * M2, *ci = in.c + (size_t)i * M, *si = in.s + (size_t)i * M;
      double a = 0.0;
      for (int k = 0; k < M; ++k) {
        a += (double)si[k] * ((double)x[2 * k] * x[2 * k] + (double)x[2 * k + 1] * x[2 * k + 1]);
        sc2[(size_t)i * M + k] = si[k] * ci[k] * ci[k];
      }
      A[i] = (float)a;
    }
#pragma omp parallel for schedule(static) if (mode == 1)
    for (int j = 0; j < J; ++j) {
      const float* r = in.R + (size_t)j * M2;
      float* o = r2.data() + (size_t)j * M;
#pragma omp simd
      for (int k = 0; k < M; ++k) o[k] = r[2 * k] * r[2 * k] + r[2 * k + 1] * r[2 * k + 1];
    }
    // Q = (s c^2) @ |R|^2 (B x M x J)
    if (mode == 1) {
      // Every SGEMM single-threaded, also Q's: a BLAS-threaded call would leave OpenBLAS's
      // workers spinning (for up to ~0.1 s) on the cores the OpenMP threads need.
      const int old = blas.threads.get();
      blas.threads.set(1);
#pragma omp parallel
      {
        const int qb = std::max(1, (B + omp_get_num_threads() - 1) / omp_get_num_threads());
#pragma omp for schedule(static)
        for (int i0 = 0; i0 < B; i0 += qb)
          gemm_abt(f, std::min(qb, B - i0), J, M, 1.0f, sc2.data() + (size_t)i0 * M, M,
                   r2.data(), M, 0.0f, Q.data() + (size_t)i0 * J, J);
        std::vector<float> Y((size_t)bb * T * M2);
#pragma omp for schedule(dynamic, 1)
        for (int blk = 0; blk < nblk; ++blk) {
          const int i0 = blk * bb, nb = std::min(bb, B - i0);
          fill_block(in, i0, nb, A.data(), Q.data(), Y.data(), D);
          gemm_abt(f, nb * T, J, M2, -2.0f, Y.data(), M2, in.R, M2, 1.0f,
                   D + (size_t)i0 * T * J, J);
        }
      }
      blas.threads.set(old);
    } else {
      gemm_abt(f, B, J, M, 1.0f, sc2.data(), M, r2.data(), M, 0.0f, Q.data(), J);
      std::vector<float> Y((size_t)bb * T * M2);
      for (int blk = 0; blk < nblk; ++blk) {
        const int i0 = blk * bb, nb = std::min(bb, B - i0);
        fill_block(in, i0, nb, A.data(), Q.data(), Y.data(), D);
        gemm_abt(f, nb * T, J, M2, -2.0f, Y.data(), M2, in.R, M2, 1.0f,
                 D + (size_t)i0 * T * J, J);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Significant set: the smallest prefix (in descending probability) whose mass reaches need.
// Reorders v so that the chosen elements are v[0..k); returns k. Expected O(n).
using PI = std::pair<double, int64_t>;  // (probability, flat index)

size_t select_mass(std::vector<PI>& v, double need) {
  size_t lo = 0, hi = v.size();  // undecided range; v[0..lo) already taken
  auto desc = [](const PI& a, const PI& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  while (hi > lo) {
    if (need <= 0.0) return lo;
    if (hi - lo <= 32) {
      std::sort(v.begin() + lo, v.begin() + hi, desc);
      for (size_t q = lo; q < hi; ++q) {
        need -= v[q].first;
        if (need <= 0.0) return q + 1;
      }
      return hi;
    }
    // median-of-three pivot, 3-way partition into (> p | == p | < p)
    const double a = v[lo].first, b = v[(lo + hi) / 2].first, c = v[hi - 1].first;
    const double p = std::max(std::min(a, b), std::min(std::max(a, b), c));
    size_t gt = lo, q = lo, lt = hi;  // [lo,gt) > p, [gt,q) == p, [lt,hi) < p
    while (q < lt) {
      if (v[q].first > p) std::swap(v[gt++], v[q++]);
      else if (v[q].first < p) std::swap(v[q], v[--lt]);
      else ++q;
    }
    double sgt = 0.0;
    for (size_t r = lo; r < gt; ++r) sgt += v[r].first;
    if (sgt >= need) {  // answer lies inside the > p part
      hi = gt;
      continue;
    }
    need -= sgt;
    // equal elements: take them in index order until the mass is reached
    std::sort(v.begin() + gt, v.begin() + lt, desc);
    for (size_t r = gt; r < lt; ++r) {
      need -= v[r].first;
      if (need <= 0.0) return r + 1;
    }
    lo = lt;
  }
  return lo;
}

struct Particle {  // per-particle posterior summary
  double logZ = -std::numeric_limits<double>::infinity();
  double pmax = 0.0;
  int64_t arg = -1;
  std::vector<PI> sig;  // significant (prob, flat index), in index order
};

// lp: n unnormalised log posteriors (double); on return lp holds the probabilities
// (0 below exp(-50) of the maximum). Fills the summary.
void summarise(double* lp, int64_t n, double frac, Particle& P, std::vector<PI>& cand) {
  std::vector<PI> keep = std::move(P.sig);  // reuse the allocation
  keep.clear();
  P = Particle{};
  P.sig = std::move(keep);
  if (n == 0) return;
  double mx = -std::numeric_limits<double>::infinity();
  int64_t am = -1;
  for (int64_t q = 0; q < n; ++q)
    if (lp[q] > mx) { mx = lp[q]; am = q; }
  P.arg = am;
  if (!std::isfinite(mx)) {  // all -inf (or NaN): no posterior
    for (int64_t q = 0; q < n; ++q) lp[q] = 0.0;
    return;
  }
  double sum = 0.0;
  for (int64_t q = 0; q < n; ++q) {
    const double d = lp[q] - mx;
    const double e = d > -50.0 ? std::exp(d) : 0.0;
    lp[q] = e;
    sum += e;
  }
  P.logZ = mx + std::log(sum);
  P.pmax = 1.0 / sum;
  const double inv = 1.0 / sum;
  // every member of the minimal set has p >= (1 - frac) / n
  const double eps = (1.0 - frac) / (double)n;
  cand.clear();
  for (int64_t q = 0; q < n; ++q) {
    const double p = lp[q] * inv;
    lp[q] = p;
    if (p >= eps && p > 0.0) cand.emplace_back(p, q);
  }
  const size_t k = std::min(cand.size(), std::max<size_t>(1, select_mass(cand, frac)));
  if (k == 0) return;
  // threshold = smallest chosen probability; ties at it were chosen in index order
  double pk = cand[0].first;
  for (size_t r = 1; r < k; ++r) pk = std::min(pk, cand[r].first);
  size_t ties = 0;
  for (size_t r = 0; r < k; ++r) ties += cand[r].first == pk;
  P.sig.reserve(k);
  for (int64_t q = 0; q < n && P.sig.size() < k; ++q) {  // emit in index order, O(n)
    const double p = lp[q];
    if (p > pk) P.sig.emplace_back(p, q);
    else if (p == pk && ties > 0) { P.sig.emplace_back(p, q); --ties; }
  }
}

// ---------------------------------------------------------------------------------------
// 2. posteriors over the full (B, T, J) grid
py::tuple posteriors(const carray<float>& diff2, const carray<float>& lpt,
                     const carray<float>& lpj, double frac) {
  require(diff2.ndim() == 3, "posteriors: diff2 must be (B, T, J)");
  const int64_t B = diff2.shape(0), T = diff2.shape(1), J = diff2.shape(2);
  require(lpt.ndim() == 2 && lpt.shape(0) == B && lpt.shape(1) == T,
          "posteriors: logprior_t must be (B, T)");
  require(lpj.ndim() == 1 && lpj.shape(0) == J, "posteriors: logprior_j must be (J,)");
  require(frac > 0.0 && frac <= 1.0, "posteriors: frac must be in (0, 1]");
  const float *d = diff2.data(), *pt = lpt.data(), *pj = lpj.data();
  std::vector<Particle> parts(B);
  py::array_t<double> logZ(B), pmax(B);
  py::array_t<int64_t> at(B), aj(B), nsig(B), offs(B + 1);
  {
    py::gil_scoped_release nogil;
#pragma omp parallel
    {
      std::vector<double> lp(T * J);
      std::vector<PI> cand;
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < B; ++i) {
        const float* di = d + i * T * J;
        for (int64_t t = 0; t < T; ++t) {
          const double a = pt[i * T + t];
          for (int64_t j = 0; j < J; ++j) lp[t * J + j] = a + (double)pj[j] - (double)di[t * J + j];
        }
        summarise(lp.data(), T * J, frac, parts[i], cand);
      }
    }
  }
  auto o = offs.mutable_unchecked<1>();
  o(0) = 0;
  for (int64_t i = 0; i < B; ++i) o(i + 1) = o(i) + (int64_t)parts[i].sig.size();
  const int64_t S = o(B);
  py::array_t<int32_t> ti(S), ji(S);
  py::array_t<float> w(S);
  int32_t *tp = ti.mutable_data(), *jp = ji.mutable_data();
  float* wp = w.mutable_data();
  double *lz = logZ.mutable_data(), *pm = pmax.mutable_data();
  int64_t *atp = at.mutable_data(), *ajp = aj.mutable_data(), *ns = nsig.mutable_data();
  const int64_t* op = offs.data();
  for (int64_t i = 0; i < B; ++i) {
    const Particle& P = parts[i];
    lz[i] = P.logZ;
    pm[i] = P.pmax;
    atp[i] = P.arg >= 0 ? P.arg / J : -1;
    ajp[i] = P.arg >= 0 ? P.arg % J : -1;
    ns[i] = (int64_t)P.sig.size();
    for (size_t q = 0; q < P.sig.size(); ++q) {
      tp[op[i] + q] = (int32_t)(P.sig[q].second / J);
      jp[op[i] + q] = (int32_t)(P.sig[q].second % J);
      wp[op[i] + q] = (float)P.sig[q].first;
    }
  }
  return py::make_tuple(logZ, pmax, at, aj, nsig, offs, ti, ji, w);
}

// ---------------------------------------------------------------------------------------
// 3. explicit (particle, translation, reference) triples
void check_pairs(const Inputs& in, const carray<int64_t>& pi, const carray<int64_t>& pt,
                 const carray<int64_t>& pj) {
  require(pi.ndim() == 1 && pt.ndim() == 1 && pj.ndim() == 1 && pi.shape(0) == pt.shape(0) &&
              pi.shape(0) == pj.shape(0),
          "marginalise: pair_i, pair_t, pair_j must be 1-D of equal length");
  const int64_t P = pi.shape(0);
  const int64_t *a = pi.data(), *b = pt.data(), *c = pj.data();
  bool ok = true;
  for (int64_t q = 0; q < P; ++q)
    ok &= (a[q] >= 0) & (a[q] < in.B) & (b[q] >= 0) & (b[q] < in.T) & (c[q] >= 0) & (c[q] < in.J);
  require(ok, "marginalise: pair index out of range");
}

// s |X conj(ph) - c R|^2 summed over k, float lanes, double across chunks
inline double pair_one(const Inputs& in, int64_t i, int64_t t, int64_t j) {
  const int M = in.M;
  const float *x = in.X + (size_t)i * 2 * M, *ci = in.c + (size_t)i * M,
              *si = in.s + (size_t)i * M, *p = in.ph + (size_t)t * 2 * M,
              *r = in.R + (size_t)j * 2 * M;
  double tot = 0.0;
  for (int k0 = 0; k0 < M; k0 += 512) {
    const int k1 = std::min(M, k0 + 512);
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int k = k0; k < k1; ++k) {
      const float xr = x[2 * k], xi = x[2 * k + 1], pr = p[2 * k], pim = p[2 * k + 1];
      const float dr = xr * pr + xi * pim - ci[k] * r[2 * k];
      const float di = xi * pr - xr * pim - ci[k] * r[2 * k + 1];
      acc += si[k] * (dr * dr + di * di);
    }
    tot += acc;
  }
  return tot;
}

py::array_t<float> pair_diff2(const carray<cfloat>& X, const carray<float>& ctf,
                              const carray<float>& s, const carray<cfloat>& ph,
                              const carray<cfloat>& R, const carray<int64_t>& pi,
                              const carray<int64_t>& pt, const carray<int64_t>& pj) {
  Inputs in = check_inputs(X, ctf, s, ph, R);
  check_pairs(in, pi, pt, pj);
  const int64_t P = pi.shape(0);
  py::array_t<float> out(P);
  float* o = out.mutable_data();
  const int64_t *a = pi.data(), *b = pt.data(), *c = pj.data();
  {
    py::gil_scoped_release nogil;
    const int64_t nkey = (int64_t)in.B * in.T;
    if (P < 4 * (int64_t)omp_get_max_threads() || nkey > 50000000) {
#pragma omp parallel for schedule(static)
      for (int64_t q = 0; q < P; ++q) o[q] = (float)pair_one(in, a[q], b[q], c[q]);
    } else {
      // Group the pairs by (i, t) (counting sort): the shifted particle y = X_i conj(ph_t)
      // is formed once per group and reused for each of its references.
      std::vector<int64_t> start(nkey + 1, 0), order(P);
      for (int64_t q = 0; q < P; ++q) ++start[a[q] * in.T + b[q] + 1];
      for (int64_t k = 0; k < nkey; ++k) start[k + 1] += start[k];
      {
        std::vector<int64_t> pos(start.begin(), start.end() - 1);
        for (int64_t q = 0; q < P; ++q) order[pos[a[q] * in.T + b[q]]++] = q;
      }
      // work items: (group, chunk of <= 64 pairs) so one large group cannot stall a thread
      std::vector<std::pair<int64_t, int64_t>> items;  // (first, last) positions in order
      for (int64_t k = 0; k < nkey; ++k)
        for (int64_t e = start[k]; e < start[k + 1]; e += 64)
          items.emplace_back(e, std::min(start[k + 1], e + 64));
      const int M = in.M;
#pragma omp parallel
      {
        std::vector<float> yr(M), yi(M);
#pragma omp for schedule(dynamic, 16)
        for (int64_t it = 0; it < (int64_t)items.size(); ++it) {
          const int64_t q0 = order[items[it].first];
          const int64_t i = a[q0], t = b[q0];
          const float *x = in.X + (size_t)i * 2 * M, *p = in.ph + (size_t)t * 2 * M,
                      *ci = in.c + (size_t)i * M, *si = in.s + (size_t)i * M;
#pragma omp simd
          for (int k = 0; k < M; ++k) {
            yr[k] = x[2 * k] * p[2 * k] + x[2 * k + 1] * p[2 * k + 1];
            yi[k] = x[2 * k + 1] * p[2 * k] - x[2 * k] * p[2 * k + 1];
          }
          for (int64_t e = items[it].first; e < items[it].second; ++e) {
            const int64_t q = order[e];
            const float* r = in.R + (size_t)c[q] * 2 * M;
            double tot = 0.0;
            for (int k0 = 0; k0 < M; k0 += 512) {
              const int k1 = std::min(M, k0 + 512);
              float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
              for (int k = k0; k < k1; ++k) {
                const float dr = yr[k] - ci[k] * r[2 * k], di = yi[k] - ci[k] * r[2 * k + 1];
                acc += si[k] * (dr * dr + di * di);
              }
              tot += acc;
            }
            o[q] = (float)tot;
          }
        }
      }
    }
  }
  return out;
}

py::tuple segment_posteriors(const carray<double>& mlp, const carray<int64_t>& offs,
                             double frac) {
  require(mlp.ndim() == 1 && offs.ndim() == 1 && offs.shape(0) >= 1,
          "segment_posteriors: minus_logp (P,) and offsets (B+1,) expected");
  require(frac > 0.0 && frac <= 1.0, "segment_posteriors: frac must be in (0, 1]");
  const int64_t B = offs.shape(0) - 1, P = mlp.shape(0);
  const int64_t* o = offs.data();
  bool ok = o[0] == 0 && o[B] == P;
  for (int64_t i = 0; i < B; ++i) ok &= o[i + 1] >= o[i];
  require(ok, "segment_posteriors: offsets must start at 0, be non-decreasing and end at P");
  const double* m = mlp.data();
  py::array_t<float> w(P);
  py::array_t<double> logZ(B), pmax(B);
  py::array_t<int64_t> arg(B), nsig(B);
  py::array_t<bool> sig(P);
  float* wp = w.mutable_data();
  bool* sp = sig.mutable_data();
  double *lz = logZ.mutable_data(), *pm = pmax.mutable_data();
  int64_t *ap = arg.mutable_data(), *ns = nsig.mutable_data();
  {
    py::gil_scoped_release nogil;
#pragma omp parallel
    {
      std::vector<double> lp;
      std::vector<PI> cand;
      Particle Pt;
#pragma omp for schedule(dynamic, 4)
      for (int64_t i = 0; i < B; ++i) {
        const int64_t n = o[i + 1] - o[i];
        lp.resize(n);
        for (int64_t q = 0; q < n; ++q) lp[q] = -m[o[i] + q];
        summarise(lp.data(), n, frac, Pt, cand);
        lz[i] = Pt.logZ;
        pm[i] = Pt.pmax;
        ap[i] = Pt.arg >= 0 ? o[i] + Pt.arg : -1;
        ns[i] = (int64_t)Pt.sig.size();
        for (int64_t q = 0; q < n; ++q) {
          wp[o[i] + q] = (float)lp[q];
          sp[o[i] + q] = false;
        }
        for (const PI& e : Pt.sig) sp[o[i] + e.second] = true;
      }
    }
  }
  return py::make_tuple(w, logZ, pmax, arg, nsig, sig);
}

// ---------------------------------------------------------------------------------------
// 4. M-step sums over weighted pairs. data/weight race-free by bucketing pairs by j,
// noise race-free by bucketing pairs by i (two passes, no per-thread copies).
std::vector<int64_t> bucket(const int64_t* key, const float* w, int64_t P, int64_t nk,
                            std::vector<int64_t>& start) {
  start.assign(nk + 1, 0);
  for (int64_t q = 0; q < P; ++q)
    if (w[q] != 0.0f) ++start[key[q] + 1];
  for (int64_t k = 0; k < nk; ++k) start[k + 1] += start[k];
  std::vector<int64_t> pos(start.begin(), start.end() - 1), order(start[nk]);
  for (int64_t q = 0; q < P; ++q)
    if (w[q] != 0.0f) order[pos[key[q]]++] = q;
  return order;
}

template <typename Td, typename Tw>
void accumulate(const carray<cfloat>& X, const carray<float>& ctf, const carray<float>& s,
                const carray<cfloat>& ph, const carray<cfloat>& R, const carray<int64_t>& pi,
                const carray<int64_t>& pt, const carray<int64_t>& pj, const carray<float>& wt,
                py::array_t<std::complex<Td>, py::array::c_style> data_acc,
                py::array_t<Tw, py::array::c_style> weight_acc,
                py::array_t<float, py::array::c_style> noise_acc) {
  Inputs in = check_inputs(X, ctf, s, ph, R);
  check_pairs(in, pi, pt, pj);
  const int64_t P = pi.shape(0);
  const int M = in.M;
  require(wt.ndim() == 1 && wt.shape(0) == P, "accumulate: weight must be (P,)");
  require(data_acc.ndim() == 2 && data_acc.shape(0) == in.J && data_acc.shape(1) == M,
          "accumulate: data_acc must be (J, M)");
  require(weight_acc.ndim() == 2 && weight_acc.shape(0) == in.J && weight_acc.shape(1) == M,
          "accumulate: weight_acc must be (J, M)");
  require(noise_acc.ndim() == 2 && noise_acc.shape(0) == in.B && noise_acc.shape(1) == M,
          "accumulate: noise_acc must be (B, M)");
  Td* dacc = reinterpret_cast<Td*>(data_acc.mutable_data());
  Tw* wacc = weight_acc.mutable_data();
  float* nacc = noise_acc.mutable_data();
  const int64_t *a = pi.data(), *b = pt.data(), *c = pj.data();
  const float* w = wt.data();
  {
    py::gil_scoped_release nogil;
    std::vector<int64_t> sj, si;
    const std::vector<int64_t> byj = bucket(c, w, P, in.J, sj);
    const std::vector<int64_t> byi = bucket(a, w, P, in.B, si);
#pragma omp parallel
    {
      std::vector<float> tr(2 * M), tw(M);
#pragma omp for schedule(dynamic, 1)
      for (int64_t j = 0; j < in.J; ++j) {
        if (sj[j] == sj[j + 1]) continue;
        std::fill(tr.begin(), tr.end(), 0.0f);
        std::fill(tw.begin(), tw.end(), 0.0f);
        for (int64_t e = sj[j]; e < sj[j + 1]; ++e) {
          const int64_t q = byj[e], i = a[q], t = b[q];
          const float wq = w[q];
          const float *x = in.X + (size_t)i * 2 * M, *ci = in.c + (size_t)i * M,
                      *sk = in.s + (size_t)i * M, *p = in.ph + (size_t)t * 2 * M;
#pragma omp simd
          for (int k = 0; k < M; ++k) {
            const float g = wq * ci[k] * sk[k];
            const float xr = x[2 * k], xi = x[2 * k + 1], pr = p[2 * k], pim = p[2 * k + 1];
            tr[2 * k] += g * (xr * pr + xi * pim);
            tr[2 * k + 1] += g * (xi * pr - xr * pim);
            tw[k] += g * ci[k];
          }
        }
        Td* dj = dacc + (size_t)j * 2 * M;
        Tw* wj = wacc + (size_t)j * M;
        for (int k = 0; k < 2 * M; ++k) dj[k] += (Td)tr[k];
        for (int k = 0; k < M; ++k) wj[k] += (Tw)tw[k];
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < in.B; ++i) {
        float* ni = nacc + (size_t)i * M;
        const float *x = in.X + (size_t)i * 2 * M, *ci = in.c + (size_t)i * M;
        for (int64_t e = si[i]; e < si[i + 1]; ++e) {
          const int64_t q = byi[e], t = b[q], j = c[q];
          const float wq = w[q];
          const float *p = in.ph + (size_t)t * 2 * M, *r = in.R + (size_t)j * 2 * M;
#pragma omp simd
          for (int k = 0; k < M; ++k) {
            const float xr = x[2 * k], xi = x[2 * k + 1], pr = p[2 * k], pim = p[2 * k + 1];
            const float dr = xr * pr + xi * pim - ci[k] * r[2 * k];
            const float di = xi * pr - xr * pim - ci[k] * r[2 * k + 1];
            ni[k] += wq * (dr * dr + di * di);
          }
        }
      }
    }
  }
}

}  // namespace

void register_marginalise(py::module_& m) {
  m.def("marg_coarse_diff2", &coarse_diff2, py::arg("X"), py::arg("ctf"), py::arg("s"),
        py::arg("phases"), py::arg("refs"), py::arg("block_particles") = 0, py::arg("mode") = -1,
        "diff2 (B,T,J) float32 for all particles x translations x references via SGEMM");
  m.def("marg_posteriors", &posteriors, py::arg("diff2"), py::arg("logprior_t"),
        py::arg("logprior_j"), py::arg("frac") = 0.999,
        "-> (logZ, pmax, argmax_t, argmax_j, nsig, offsets, t_idx, j_idx, weight)");
  m.def("marg_pair_diff2", &pair_diff2, py::arg("X"), py::arg("ctf"), py::arg("s"),
        py::arg("phases"), py::arg("refs"), py::arg("pair_i"), py::arg("pair_t"),
        py::arg("pair_j"), "diff2 (P,) float32 for explicit (i, t, j) triples");
  m.def("marg_segment_posteriors", &segment_posteriors, py::arg("minus_logp"),
        py::arg("offsets"), py::arg("frac") = 0.999,
        "-> (weight, logZ, pmax, argmax, nsig, significant)");
  m.def("marg_accumulate", &accumulate<float, float>, py::arg("X"), py::arg("ctf"), py::arg("s"),
        py::arg("phases"), py::arg("refs"), py::arg("pair_i"), py::arg("pair_t"),
        py::arg("pair_j"), py::arg("weight"), py::arg("data_acc").noconvert(),
        py::arg("weight_acc").noconvert(), py::arg("noise_acc").noconvert());
  m.def("marg_accumulate", &accumulate<double, double>, py::arg("X"), py::arg("ctf"),
        py::arg("s"), py::arg("phases"), py::arg("refs"), py::arg("pair_i"), py::arg("pair_t"),
        py::arg("pair_j"), py::arg("weight"), py::arg("data_acc").noconvert(),
        py::arg("weight_acc").noconvert(), py::arg("noise_acc").noconvert());
  m.def("marg_accumulate", &accumulate<float, double>, py::arg("X"), py::arg("ctf"),
        py::arg("s"), py::arg("phases"), py::arg("refs"), py::arg("pair_i"), py::arg("pair_t"),
        py::arg("pair_j"), py::arg("weight"), py::arg("data_acc").noconvert(),
        py::arg("weight_acc").noconvert(), py::arg("noise_acc").noconvert());
  m.def("marg_accumulate", &accumulate<double, float>, py::arg("X"), py::arg("ctf"),
        py::arg("s"), py::arg("phases"), py::arg("refs"), py::arg("pair_i"), py::arg("pair_t"),
        py::arg("pair_j"), py::arg("weight"), py::arg("data_acc").noconvert(),
        py::arg("weight_acc").noconvert(), py::arg("noise_acc").noconvert());
}
