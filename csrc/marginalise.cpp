// Marginalisation kernels of the MAP-EM E-step (CPU, C++/OpenMP).
//
// For particle i (Fourier coefficients X_i, CTF c_i, weights s_i = hermitian weight / sigma2),
// translation t (phase factors ph_t) and reference hypothesis j (R_j, already projected):
//   diff2(i,t,j) = sum_k s_ik |X_ik conj(ph_tk) - c_ik R_jk|^2
//                = A_i + Q_ij - 2 Cross_itj
//   A_i = sum_k s|X|^2,  Q = (s c^2) @ |R|^2,  Cross_itj = Re sum_k (s c X conj(ph_t))_k conj(R_jk)
// Cross is one real SGEMM (B*T) x 2M x J: a complex64 row viewed as 2M interleaved floats
// (re, im) dotted with another gives re*re + im*im = Re(y conj(r)).
// The SGEMM is OpenBLAS's, borrowed from scipy.linalg.cython_blas (csrc/blas.hpp).
//
// The posteriors over these hypotheses (log-sum-exp, significant sets): csrc/posteriors.cpp.
#include "blas.hpp"
#include "common.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace {

using hpcem_blas::gemm_rm;
using hpcem_blas::sgemm_t;

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
  const Inputs in{(int)X.shape(0), (int)X.shape(1), (int)ph.shape(0), (int)R.shape(0),
                  reinterpret_cast<const float*>(X.data()), ctf.data(), s.data(),
                  reinterpret_cast<const float*>(ph.data()), reinterpret_cast<const float*>(R.data())};
  require(ctf.shape(0) == in.B && ctf.shape(1) == in.M, "marginalise: ctf must be (B, M)");
  require(s.shape(0) == in.B && s.shape(1) == in.M, "marginalise: s must be (B, M)");
  require(ph.shape(1) == in.M, "marginalise: phases must be (T, M)");
  require(R.shape(1) == in.M, "marginalise: refs must be (J, M)");
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

py::array_t<float> coarse_diff2(const carray<cfloat>& X, const carray<float>& ctf,
                                const carray<float>& s, const carray<cfloat>& ph,
                                const carray<cfloat>& R, int block_particles, int mode) {
  Inputs in = check_inputs(X, ctf, s, ph, R);
  const int B = in.B, M = in.M, T = in.T, J = in.J, M2 = 2 * M;
  py::array_t<float> out({(py::ssize_t)B, (py::ssize_t)T, (py::ssize_t)J});
  float* D = out.mutable_data();
  const hpcem_blas::Blas& blas = hpcem_blas::blas();
  const sgemm_t f = blas.sgemm;
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
          gemm_rm<float>(f, false, true, std::min(qb, B - i0), J, M, 1.0f,
                         sc2.data() + (size_t)i0 * M, M, r2.data(), M, 0.0f,
                         Q.data() + (size_t)i0 * J, J);
        std::vector<float> Y((size_t)bb * T * M2);
#pragma omp for schedule(dynamic, 1)
        for (int blk = 0; blk < nblk; ++blk) {
          const int i0 = blk * bb, nb = std::min(bb, B - i0);
          fill_block(in, i0, nb, A.data(), Q.data(), Y.data(), D);
          gemm_rm<float>(f, false, true, nb * T, J, M2, -2.0f, Y.data(), M2, in.R, M2, 1.0f,
                         D + (size_t)i0 * T * J, J);
        }
      }
      blas.threads.set(old);
    } else {
      gemm_rm<float>(f, false, true, B, J, M, 1.0f, sc2.data(), M, r2.data(), M, 0.0f,
                     Q.data(), J);
      std::vector<float> Y((size_t)bb * T * M2);
      for (int blk = 0; blk < nblk; ++blk) {
        const int i0 = blk * bb, nb = std::min(bb, B - i0);
        fill_block(in, i0, nb, A.data(), Q.data(), Y.data(), D);
        gemm_rm<float>(f, false, true, nb * T, J, M2, -2.0f, Y.data(), M2, in.R, M2, 1.0f,
                       D + (size_t)i0 * T * J, J);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// 2. explicit (particle, translation, reference) triples
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

// ---------------------------------------------------------------------------------------
// 3. M-step sums over weighted pairs. data/weight race-free by bucketing pairs by j,
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
      // per-hypothesis sums in the accumulators' precision: a double accumulator then holds the
      // same sums (to double rounding) however the pairs are split into calls (batches, ranks)
      std::vector<Td> tr(2 * M);
      std::vector<Tw> tw(M);
#pragma omp for schedule(dynamic, 1)
      for (int64_t j = 0; j < in.J; ++j) {
        if (sj[j] == sj[j + 1]) continue;
        std::fill(tr.begin(), tr.end(), Td(0));
        std::fill(tw.begin(), tw.end(), Tw(0));
        for (int64_t e = sj[j]; e < sj[j + 1]; ++e) {
          const int64_t q = byj[e], i = a[q], t = b[q];
          const float wq = w[q];
          const float *x = in.X + (size_t)i * 2 * M, *ci = in.c + (size_t)i * M,
                      *sk = in.s + (size_t)i * M, *p = in.ph + (size_t)t * 2 * M;
#pragma omp simd
          for (int k = 0; k < M; ++k) {
            const float g = wq * ci[k] * sk[k];
            const float xr = x[2 * k], xi = x[2 * k + 1], pr = p[2 * k], pim = p[2 * k + 1];
            tr[2 * k] += Td(g * (xr * pr + xi * pim));
            tr[2 * k + 1] += Td(g * (xi * pr - xr * pim));
            tw[k] += Tw(g * ci[k]);
          }
        }
        Td* dj = dacc + (size_t)j * 2 * M;
        Tw* wj = wacc + (size_t)j * M;
        for (int k = 0; k < 2 * M; ++k) dj[k] += tr[k];
        for (int k = 0; k < M; ++k) wj[k] += tw[k];
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

// the four accumulator dtype pairs; accumulators are never converted (updated in place)
template <typename Td, typename Tw>
void def_accumulate(py::module_& m) {
  m.def("marg_accumulate", &accumulate<Td, Tw>, py::arg("X"), py::arg("ctf"), py::arg("s"),
        py::arg("phases"), py::arg("refs"), py::arg("pair_i"), py::arg("pair_t"),
        py::arg("pair_j"), py::arg("weight"), py::arg("data_acc").noconvert(),
        py::arg("weight_acc").noconvert(), py::arg("noise_acc").noconvert());
}

}  // namespace

void register_marginalise(py::module_& m) {
  register_marginalise_posteriors(m);  // csrc/posteriors.cpp
  m.def("marg_coarse_diff2", &coarse_diff2, py::arg("X"), py::arg("ctf"), py::arg("s"),
        py::arg("phases"), py::arg("refs"), py::arg("block_particles") = 0, py::arg("mode") = -1,
        "diff2 (B,T,J) float32 for all particles x translations x references via SGEMM");
  m.def("marg_pair_diff2", &pair_diff2, py::arg("X"), py::arg("ctf"), py::arg("s"),
        py::arg("phases"), py::arg("refs"), py::arg("pair_i"), py::arg("pair_t"),
        py::arg("pair_j"), "diff2 (P,) float32 for explicit (i, t, j) triples");
  def_accumulate<float, float>(m);
  def_accumulate<double, double>(m);
  def_accumulate<float, double>(m);
  def_accumulate<double, float>(m);
}
