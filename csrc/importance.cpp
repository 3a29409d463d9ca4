// importance: cryoSPARC's importance-sampled quadrature over poses (seed 003, eqs 10-23).
//
// is_draw: for every segment s (a particle, or a (particle, class) pair) and one pose dimension
// (viewing directions, in-plane angles or translations), the importance distribution over the
// dimension's M quadrature points g_j (eq 20):
//
//     q_j = (1 - alpha_s) Z^-1 sum_i phi_i^(1/T_s) K(p_i, g_j) + alpha_s / M,
//
// from the segment's previous marginal (points p_i with values phi_i, zero-padded to C), with
// K(x, y) = exp(kappa (x.y - 1)) (kind 0: unit vectors, eqs 21-22) or exp(-kappa |x - y|^2)
// (kind 1: translations, eq 23); then N_s = ceil(s0 ESS(q)) draws with replacement (ESS =
// 1 / sum q^2), systematic (one uniform u0 from a counter-based generator keyed by the segment's
// key, draw k at (k + u0) / N of the cumulative distribution: each draw marginally from q, point j
// drawn floor or ceil of N q_j times; the same draws for any thread or rank count).  Output (CSR over segments, grid order within): the distinct drawn
// points and log(m_j / (N q_j)), m_j the times point j was drawn (the properly weighted factor of
// eq 13; a point drawn twice counts twice).
//
// is_candidates: the product of a segment's three drawn sets (eq 13) as explicit E-step
// hypotheses (CSR over particles): translation t, hypothesis j = class * Jc1 + d * npsi + p and
// the log weight lw_d + lw_p + lw_t.
#include "common.hpp"
#include <omp.h>
#include <vector>

namespace {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// k-th uniform in [0, 1) of the stream `key`
inline double uniform01(uint64_t key, uint64_t k) {
  return double(splitmix64(key + 0x632BE59BD9B4E019ULL * (k + 1)) >> 11) * (1.0 / 9007199254740992.0);
}

constexpr double CUT = -40.0;  // kernel values below exp(-40) of the peak are left out

struct Draw {
  std::vector<int32_t> idx;
  std::vector<double> lw;
  long n = 0;
  double ess = 0.0;
};

// the importance distribution of one segment over the grid (q, length M) and its draws
void draw_segment(const double* prev, const double* val, int C, int D, const double* grid, long M, int kind,
                  double kappa, double inv_T, double alpha, double s0, uint64_t key, long max_draws,
                  std::vector<double>& q, std::vector<double>& u, std::vector<int32_t>& cnt, Draw& out) {
  double vmax = 0.0;
  for (int i = 0; i < C; ++i) vmax = std::max(vmax, val[i]);
  std::fill(q.begin(), q.end(), 0.0);
  double Z = 0.0;
  if (vmax > 0.0) {
    for (int i = 0; i < C; ++i) {
      if (!(val[i] > 0.0)) continue;
      const double w = inv_T > 0.0 ? std::exp(inv_T * std::log(val[i] / vmax)) : 1.0;
      const double* p = prev + size_t(i) * D;
      for (long j = 0; j < M; ++j) {
        const double* g = grid + size_t(j) * D;
        double e;
        if (kind == 0) {
          double dot = 0.0;
          for (int k = 0; k < D; ++k) dot += p[k] * g[k];
          e = kappa * (dot - 1.0);
        } else {
          double d2 = 0.0;
          for (int k = 0; k < D; ++k) d2 += (p[k] - g[k]) * (p[k] - g[k]);
          e = -kappa * d2;
        }
        if (e > CUT) q[j] += w * std::exp(e);
      }
    }
    for (long j = 0; j < M; ++j) Z += q[j];
  }
  const double a = Z > 0.0 ? alpha : 1.0;
  double s2 = 0.0;
  for (long j = 0; j < M; ++j) {
    q[j] = (Z > 0.0 ? (1.0 - a) * q[j] / Z : 0.0) + a / double(M);
    s2 += q[j] * q[j];
  }
  out.ess = 1.0 / s2;
  const long N = std::max(1L, std::min(max_draws, long(std::ceil(s0 * out.ess))));
  out.n = N;
  u.resize(size_t(N));
  const double u0 = uniform01(key, 0);   // systematic draws: (k + u0) / N, each marginally from q
  for (long k = 0; k < N; ++k) u[size_t(k)] = (double(k) + u0) / double(N);
  std::fill(cnt.begin(), cnt.end(), 0);
  double total = 0.0;
  for (long j = 0; j < M; ++j) total += q[j];
  long j = 0;
  double c = q[0];
  for (long k = 0; k < N; ++k) {
    const double t = u[size_t(k)] * total;
    while (t >= c && j < M - 1) c += q[size_t(++j)];
    ++cnt[size_t(j)];
  }
  out.idx.clear();
  out.lw.clear();
  for (long jj = 0; jj < M; ++jj) {
    if (!cnt[size_t(jj)]) continue;
    out.idx.push_back(int32_t(jj));
    out.lw.push_back(std::log(double(cnt[size_t(jj)]) / (double(N) * q[size_t(jj)] / total)));
  }
}

// prev (S, C, D), val (S, C), grid (M, D), inv_T / alpha (S,), keys (S,) uint64
py::tuple is_draw(carray<double> prev, carray<double> val, carray<double> grid, int kind, carray<double> kappa,
                  carray<double> inv_T, carray<double> alpha, double s0, carray<uint64_t> keys, long max_draws) {
  require(prev.ndim() == 3, "is_draw: prev must be (S, C, D)");
  const long S = long(prev.shape(0));
  const int C = int(prev.shape(1)), D = int(prev.shape(2));
  require(val.ndim() == 2 && val.shape(0) == S && val.shape(1) == C, "is_draw: val must be (S, C)");
  require(grid.ndim() == 2 && grid.shape(1) == D && grid.shape(0) > 0, "is_draw: grid must be (M, D)");
  require(inv_T.ndim() == 1 && inv_T.shape(0) == S && alpha.ndim() == 1 && alpha.shape(0) == S &&
              keys.ndim() == 1 && keys.shape(0) == S && kappa.ndim() == 1 && kappa.shape(0) == S,
          "is_draw: kappa, inv_T, alpha and keys must be (S,)");
  require(kind == 0 || kind == 1, "is_draw: kind must be 0 (unit vectors) or 1 (points)");
  require(max_draws >= 1, "is_draw: max_draws must be >= 1");
  const long M = long(grid.shape(0));
  std::vector<Draw> res(static_cast<size_t>(S));
  const double *P = prev.data(), *V = val.data(), *G = grid.data(), *IT = inv_T.data(), *A = alpha.data(),
               *KA = kappa.data();
  const uint64_t* Kk = keys.data();
  {
    py::gil_scoped_release nogil;
#pragma omp parallel
    {
      std::vector<double> q(static_cast<size_t>(M)), u;
      std::vector<int32_t> cnt(static_cast<size_t>(M));
#pragma omp for schedule(dynamic, 4)
      for (long s = 0; s < S; ++s)
        draw_segment(P + size_t(s) * C * D, V + size_t(s) * C, C, D, G, M, kind, KA[s], IT[s], A[s], s0, Kk[s],
                     max_draws, q, u, cnt, res[size_t(s)]);
    }
  }
  py::array_t<int64_t> off(S + 1), nd(S);
  py::array_t<double> ess(S);
  auto o = off.mutable_data();
  o[0] = 0;
  for (long s = 0; s < S; ++s) {
    o[s + 1] = o[s] + long(res[size_t(s)].idx.size());
    nd.mutable_data()[s] = res[size_t(s)].n;
    ess.mutable_data()[s] = res[size_t(s)].ess;
  }
  py::array_t<int32_t> idx(o[S]);
  py::array_t<double> lw(o[S]);
  int32_t* I = idx.mutable_data();
  double* L = lw.mutable_data();
  for (long s = 0; s < S; ++s) {
    std::copy(res[size_t(s)].idx.begin(), res[size_t(s)].idx.end(), I + o[s]);
    std::copy(res[size_t(s)].lw.begin(), res[size_t(s)].lw.end(), L + o[s]);
  }
  return py::make_tuple(off, idx, lw, nd, ess);
}

// drawn sets of the three dimensions (CSR over the S segments) -> candidates (CSR over the B
// particles; segment s belongs to particle s / K and class cls[s])
py::tuple is_candidates(carray<int64_t> od, carray<int32_t> id, carray<double> ld, carray<int64_t> op,
                        carray<int32_t> ip, carray<double> lp, carray<int64_t> ot, carray<int32_t> it,
                        carray<double> lt, carray<int64_t> cls, int K, long npsi, long Jc1) {
  const long S = long(od.shape(0)) - 1;
  require(S >= 0 && op.shape(0) == S + 1 && ot.shape(0) == S + 1 && cls.shape(0) == S,
          "is_candidates: offsets must be (S+1,), classes (S,)");
  require(K >= 1 && S % K == 0, "is_candidates: segments must be K per particle");
  const long B = S / K;
  const int64_t *Od = od.data(), *Op = op.data(), *Ot = ot.data(), *Cl = cls.data();
  std::vector<int64_t> start(size_t(S) + 1, 0);
  for (long s = 0; s < S; ++s)
    start[size_t(s) + 1] = start[size_t(s)] + (Od[s + 1] - Od[s]) * (Op[s + 1] - Op[s]) * (Ot[s + 1] - Ot[s]);
  const int64_t P = start[size_t(S)];
  py::array_t<int64_t> poff(B + 1), tout(P), jout(P);
  py::array_t<double> eout(P);
  int64_t *PO = poff.mutable_data(), *TO = tout.mutable_data(), *JO = jout.mutable_data();
  double* EO = eout.mutable_data();
  for (long b = 0; b <= B; ++b) PO[b] = start[size_t(b) * K];
  const int32_t *Id = id.data(), *Ip = ip.data(), *It = it.data();
  const double *Ld = ld.data(), *Lp = lp.data(), *Lt = lt.data();
  {
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 8)
    for (long s = 0; s < S; ++s) {
      int64_t q = start[size_t(s)];
      for (int64_t a = Od[s]; a < Od[s + 1]; ++a)
        for (int64_t b = Op[s]; b < Op[s + 1]; ++b) {
          const int64_t j = Cl[s] * Jc1 + int64_t(Id[a]) * npsi + Ip[b];
          const double e = Ld[a] + Lp[b];
          for (int64_t c = Ot[s]; c < Ot[s + 1]; ++c, ++q) {
            TO[q] = It[c];
            JO[q] = j;
            EO[q] = e + Lt[c];
          }
        }
    }
  }
  return py::make_tuple(poff, tout, jout, eout);
}

}  // namespace

void register_importance(py::module_& m) {
  m.def("is_draw", &is_draw, py::arg("prev"), py::arg("val"), py::arg("grid"), py::arg("kind"), py::arg("kappa"),
        py::arg("inv_T"), py::arg("alpha"), py::arg("s0"), py::arg("keys"), py::arg("max_draws"),
        "Importance distributions (eq 20) from previous marginals and their draws: (offsets, idx, lw, N, ESS).");
  m.def("is_candidates", &is_candidates, py::arg("od"), py::arg("id"), py::arg("ld"), py::arg("op"), py::arg("ip"),
        py::arg("lp"), py::arg("ot"), py::arg("it"), py::arg("lt"), py::arg("cls"), py::arg("K"), py::arg("npsi"),
        py::arg("Jc1"), "Product of the drawn sets as E-step candidates: (offsets, t, j, log weight).");
}
