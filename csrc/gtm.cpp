// GTM (ROME statistical manifold learning) kernels, CPU (C++/OpenMP).
//
// Notation (hpcem/algorithms/gtm.py): K latent points, M basis functions (Gaussians + one
// constant), N particles, D Fourier coefficients of this rank's pixel block.
//
//   gtm_solve:  for every pixel d, A_d = Phi^T diag(G[:, d]) Phi + lam I (M x M, real SPD),
//               B_d = Phi^T H[:, d] (complex), W[:, d] = A_d^{-1} B_d    (ROME eqs 15-16).
//     All A_d are built by ONE matrix product: with the Khatri-Rao rows
//     P2[k, (m, m')] = phi_km phi_km' (m <= m'), A_packed = P2^T G is an
//     (M(M+1)/2) x K x D DGEMM; B = Phi^T H is an M x K x 2D DGEMM. Then a Cholesky
//     factorisation and two triangular solves per pixel (double, OpenMP over pixels).
//   gtm_distances: delta'(n, k) = Z_n . Ymat_k, one SGEMM N x 3D x K (the E-step distances
//     without the k-independent |t_n|^2 term; see gtm.py for the layout of Z and Ymat).
//   gtm_responsibilities: in place, delta -> r_kn = softmax_k(-beta/2 (a_n + delta_nk))
//     with log-sum-exp in double (eq 9); returns per-particle log-normaliser, the
//     responsibility-weighted squared distance (for the mean-beta update, eqs 13-14),
//     the most likely latent point and its responsibility.
//   gtm_accumulate: RZ = R^T Z (K x 3D), the M-step sums G and H (SGEMM, double accumulation
//     over particle blocks).
// The GEMMs are OpenBLAS's, borrowed from scipy.linalg.cython_blas (csrc/blas.hpp).
#include "blas.hpp"
#include "common.hpp"

#include <omp.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

using hpcem_blas::gemm_rm;

// In-place Cholesky of the lower triangle of a (M x M row-major, double). false if not SPD.
bool cholesky(double* a, int M) {
  for (int j = 0; j < M; ++j) {
    double s = a[j * M + j];
    for (int p = 0; p < j; ++p) s -= a[j * M + p] * a[j * M + p];
    if (!(s > 0.0) || !std::isfinite(s)) return false;
    const double ljj = std::sqrt(s);
    a[j * M + j] = ljj;
    const double inv = 1.0 / ljj;
    for (int i = j + 1; i < M; ++i) {
      double t = a[i * M + j];
      const double* ri = a + i * M;
      const double* rj = a + j * M;
      for (int p = 0; p < j; ++p) t -= ri[p] * rj[p];
      a[i * M + j] = t * inv;
    }
  }
  return true;
}

// Solve L L^T x = b for two right-hand sides stored interleaved (x[2m], x[2m+1]).
void chol_solve2(const double* L, int M, double* x) {
  for (int i = 0; i < M; ++i) {  // forward: L y = b
    double r = x[2 * i], s = x[2 * i + 1];
    const double* li = L + i * M;
    for (int p = 0; p < i; ++p) { r -= li[p] * x[2 * p]; s -= li[p] * x[2 * p + 1]; }
    x[2 * i] = r / li[i];
    x[2 * i + 1] = s / li[i];
  }
  for (int i = M - 1; i >= 0; --i) {  // backward: L^T x = y
    double r = x[2 * i], s = x[2 * i + 1];
    for (int p = i + 1; p < M; ++p) { r -= L[p * M + i] * x[2 * p]; s -= L[p * M + i] * x[2 * p + 1]; }
    x[2 * i] = r / L[i * M + i];
    x[2 * i + 1] = s / L[i * M + i];
  }
}

py::array_t<cfloat> gtm_solve(const carray<float>& Phi, const carray<float>& G,
                              const carray<cfloat>& H, double lam, int chunk) {
  require(Phi.ndim() == 2 && G.ndim() == 2 && H.ndim() == 2, "gtm_solve: Phi, G, H must be 2-D");
  const int K = (int)Phi.shape(0), M = (int)Phi.shape(1), D = (int)G.shape(1);
  require(G.shape(0) == K, "gtm_solve: G must be (K, D) with K = Phi.shape[0]");
  require(H.shape(0) == K && H.shape(1) == D, "gtm_solve: H must be (K, D) like G");
  require(M >= 1 && K >= 1, "gtm_solve: empty basis");
  require(lam >= 0.0 && std::isfinite(lam), "gtm_solve: lam must be finite and >= 0");
  const int Mp = M * (M + 1) / 2;
  // auto: pixels per DGEMM so that the packed A block stays near 64 MiB (few BLAS/OpenMP
  // alternations: OpenMP threads still spinning after a region slow the next BLAS call)
  if (chunk <= 0) chunk = std::max(64, (int)std::min<long long>(D, (64LL << 20) / (8LL * Mp)));
  py::array_t<cfloat> Wout({(py::ssize_t)M, (py::ssize_t)D});
  const float* phi = Phi.data();
  const float* g = G.data();
  const float* h = reinterpret_cast<const float*>(H.data());
  float* w = reinterpret_cast<float*>(Wout.mutable_data());
  const hpcem_blas::dgemm_t f = hpcem_blas::blas().dgemm;
  int n_fail = 0;
  {
    py::gil_scoped_release nogil;
    // Khatri-Rao rows P2 (K x Mp) and Phi in double
    std::vector<double> P2((size_t)K * Mp), Pd((size_t)K * M);
    for (int k = 0; k < K; ++k) {
      const float* pk = phi + (size_t)k * M;
      double* q = P2.data() + (size_t)k * Mp;
      int c = 0;
      for (int m = 0; m < M; ++m)
        for (int mp = m; mp < M; ++mp) q[c++] = (double)pk[m] * (double)pk[mp];
      for (int m = 0; m < M; ++m) Pd[(size_t)k * M + m] = pk[m];
    }
    std::vector<double> Gc((size_t)K * chunk), Hc((size_t)K * 2 * chunk);
    std::vector<double> Ap((size_t)Mp * chunk), Bc((size_t)M * 2 * chunk);
    for (int d0 = 0; d0 < D; d0 += chunk) {
      const int dc = std::min(chunk, D - d0);
      for (int k = 0; k < K; ++k) {
        const float* gk = g + (size_t)k * D + d0;
        const float* hk = h + ((size_t)k * D + d0) * 2;
        double* gc = Gc.data() + (size_t)k * dc;
        double* hc = Hc.data() + (size_t)k * 2 * dc;
        for (int j = 0; j < dc; ++j) gc[j] = gk[j];
        for (int j = 0; j < 2 * dc; ++j) hc[j] = hk[j];
      }
      // A_packed (Mp x dc) = P2^T (Mp x K) @ Gc (K x dc)
      gemm_rm<double>(f, true, false, Mp, dc, K, 1.0, P2.data(), Mp, Gc.data(), dc, 0.0,
                      Ap.data(), dc);
      // B (M x 2dc) = Phi^T (M x K) @ Hc (K x 2dc)
      gemm_rm<double>(f, true, false, M, 2 * dc, K, 1.0, Pd.data(), M, Hc.data(), 2 * dc, 0.0,
                      Bc.data(), 2 * dc);
      int fails = 0;
#pragma omp parallel reduction(+ : fails)
      {
        std::vector<double> A((size_t)M * M), x(2 * (size_t)M);
#pragma omp for schedule(static)
        for (int j = 0; j < dc; ++j) {
          int c = 0;
          double tr = 0.0;
          for (int m = 0; m < M; ++m)
            for (int mp = m; mp < M; ++mp) {
              const double v = Ap[(size_t)(c++) * dc + j];
              A[(size_t)mp * M + m] = v;  // lower triangle
              if (mp == m) tr += v;
            }
          for (int m = 0; m < M; ++m) A[(size_t)m * M + m] += lam;
          std::vector<double> A0;
          bool ok = cholesky(A.data(), M);
          double jitter = 1e-10 * (tr / M + lam) + 1e-300;
          for (int attempt = 0; !ok && attempt < 12; ++attempt, jitter *= 10.0) {
            ++fails;  // not SPD in floating point: add a growing ridge and retry
            c = 0;
            for (int m = 0; m < M; ++m)
              for (int mp = m; mp < M; ++mp) A[(size_t)mp * M + m] = Ap[(size_t)(c++) * dc + j];
            for (int m = 0; m < M; ++m) A[(size_t)m * M + m] += lam + jitter;
            ok = cholesky(A.data(), M);
          }
          for (int m = 0; m < M; ++m) {
            x[2 * m] = Bc[(size_t)m * 2 * dc + 2 * j];
            x[2 * m + 1] = Bc[(size_t)m * 2 * dc + 2 * j + 1];
          }
          if (ok) {
            chol_solve2(A.data(), M, x.data());
          } else {
            for (auto& v : x) v = 0.0;
          }
          for (int m = 0; m < M; ++m) {
            float* wm = w + ((size_t)m * D + d0 + j) * 2;
            wm[0] = (float)x[2 * m];
            wm[1] = (float)x[2 * m + 1];
          }
        }
      }
      n_fail += fails;
    }
  }
  (void)n_fail;
  return Wout;
}

// delta'(n,k) = Z_n . Ymat_k   (Z: N x L, Ymat: K x L, L = 3D) -> out (N x K) float32
py::array_t<float> gtm_distances(const carray<float>& Z, const carray<float>& Y, int block) {
  require(Z.ndim() == 2 && Y.ndim() == 2, "gtm_distances: Z and Ymat must be 2-D");
  const int N = (int)Z.shape(0), L = (int)Z.shape(1), K = (int)Y.shape(0);
  require(Y.shape(1) == L, "gtm_distances: Z and Ymat must have the same number of columns");
  if (block <= 0) block = 4096;
  py::array_t<float> out({(py::ssize_t)N, (py::ssize_t)K});
  const float* z = Z.data();
  const float* y = Y.data();
  float* o = out.mutable_data();
  const hpcem_blas::sgemm_t f = hpcem_blas::blas().sgemm;
  {
    py::gil_scoped_release nogil;
    if (L == 0) {
      std::fill(o, o + (size_t)N * K, 0.0f);
    } else {
      for (int n0 = 0; n0 < N; n0 += block) {
        const int nb = std::min(block, N - n0);
        gemm_rm<float>(f, false, true, nb, K, L, 1.0f, z + (size_t)n0 * L, L, y, L, 0.0f,
                       o + (size_t)n0 * K, K);
      }
    }
  }
  return out;
}

// In place: delta (N x K) -> responsibilities. Returns (logZ, rdelta, kmax, rmax).
py::tuple gtm_responsibilities(py::array_t<float, py::array::c_style> delta,
                               const carray<double>& a, double beta) {
  require(delta.ndim() == 2, "gtm_responsibilities: delta must be (N, K)");
  const int N = (int)delta.shape(0), K = (int)delta.shape(1);
  require(a.ndim() == 1 && a.shape(0) == N, "gtm_responsibilities: a must be (N,)");
  require(beta > 0.0 && std::isfinite(beta), "gtm_responsibilities: beta must be > 0");
  require(delta.writeable(), "gtm_responsibilities: delta must be writeable");
  py::array_t<double> logZ(N), rdelta(N);
  py::array_t<int64_t> kmax(N);
  py::array_t<float> rmax(N);
  float* dl = delta.mutable_data();
  const double* av = a.data();
  double* lz = logZ.mutable_data();
  double* rd = rdelta.mutable_data();
  int64_t* km = kmax.mutable_data();
  float* rm = rmax.mutable_data();
  {
    py::gil_scoped_release nogil;
#pragma omp parallel
    {
      std::vector<double> e(K);
#pragma omp for schedule(static)
      for (int n = 0; n < N; ++n) {
        float* row = dl + (size_t)n * K;
        double mn = std::numeric_limits<double>::infinity();
        int am = 0;
        for (int k = 0; k < K; ++k)
          if ((double)row[k] < mn) { mn = row[k]; am = k; }
        double s = 0.0, sd = 0.0;
        for (int k = 0; k < K; ++k) {
          const double x = -0.5 * beta * ((double)row[k] - mn);
          const double ek = x > -80.0 ? std::exp(x) : 0.0;
          e[k] = ek;
          s += ek;
          sd += ek * (double)row[k];
        }
        const double inv = 1.0 / s;
        for (int k = 0; k < K; ++k) row[k] = (float)(e[k] * inv);
        lz[n] = -0.5 * beta * (av[n] + mn) + std::log(s);
        rd[n] = av[n] + sd * inv;
        km[n] = am;
        rm[n] = (float)inv;  // the minimum distance has e = 1
      }
    }
  }
  return py::make_tuple(logZ, rdelta, kmax, rmax);
}

// RZ (K x L) = R^T (K x N) @ Z (N x L), float32 GEMM per particle block, double accumulation.
py::array_t<double> gtm_accumulate(const carray<float>& R, const carray<float>& Z, int block) {
  require(R.ndim() == 2 && Z.ndim() == 2, "gtm_accumulate: R and Z must be 2-D");
  const int N = (int)R.shape(0), K = (int)R.shape(1), L = (int)Z.shape(1);
  require(Z.shape(0) == N, "gtm_accumulate: R and Z must have the same number of rows");
  if (block <= 0) block = 2048;
  py::array_t<double> out({(py::ssize_t)K, (py::ssize_t)L});
  double* o = out.mutable_data();
  const float* r = R.data();
  const float* z = Z.data();
  const hpcem_blas::sgemm_t f = hpcem_blas::blas().sgemm;
  {
    py::gil_scoped_release nogil;
    std::fill(o, o + (size_t)K * L, 0.0);
    std::vector<float> tmp((size_t)K * L);
    for (int n0 = 0; n0 < N; n0 += block) {
      const int nb = std::min(block, N - n0);
      gemm_rm<float>(f, true, false, K, L, nb, 1.0f, r + (size_t)n0 * K, K, z + (size_t)n0 * L,
                     L, 0.0f, tmp.data(), L);
#pragma omp parallel for schedule(static)
      for (long long i = 0; i < (long long)K * L; ++i) o[i] += tmp[i];
    }
  }
  return out;
}

}  // namespace

void register_gtm(py::module_& m) {
  m.def("gtm_solve", &gtm_solve, py::arg("Phi"), py::arg("G"), py::arg("H"), py::arg("lam"),
        py::arg("chunk") = 0,
        "W (M, D) complex64: per pixel d solve (Phi^T diag(G[:,d]) Phi + lam I) w_d = Phi^T H[:,d]");
  m.def("gtm_distances", &gtm_distances, py::arg("Z"), py::arg("Ymat"), py::arg("block") = 4096,
        "delta' (N, K) float32 = Z @ Ymat^T");
  m.def("gtm_responsibilities", &gtm_responsibilities, py::arg("delta"), py::arg("a"),
        py::arg("beta"),
        "in place: delta -> responsibilities; returns (logZ, rdelta, kmax, rmax)");
  m.def("gtm_accumulate", &gtm_accumulate, py::arg("R"), py::arg("Z"), py::arg("block") = 2048,
        "R^T @ Z (K, L) float64");
}
