// Posteriors of the MAP-EM E-step (CPU, C++/OpenMP): the marginalisation kernels'
// (csrc/marginalise.cpp) second half.
//
// log p(t,j | i) = -diff2 + logprior_t(i,t) + logprior_j(j) - logZ_i (double log-sum-exp);
// the significant set is the smallest set of hypotheses whose probabilities sum to >= frac,
// found by a mass-targeted quickselect (no full sort). Over the full (T, J) grid
// (posteriors) or over variable-length per-particle segments of explicit pairs
// (segment_posteriors).
#include "common.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace {

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
  if (frac >= 1.0) {  // exhaustive: every hypothesis, also those whose probability underflowed
    P.sig.reserve(n);
    for (int64_t q = 0; q < n; ++q) {
      lp[q] *= inv;
      P.sig.emplace_back(lp[q], q);
    }
    return;
  }
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
// 1. posteriors over the full (B, T, J) grid
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
// 2. posteriors over variable-length segments (particle i owns pairs offs[i]:offs[i+1])
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

}  // namespace

void register_marginalise_posteriors(py::module_& m) {
  m.def("marg_posteriors", &posteriors, py::arg("diff2"), py::arg("logprior_t"),
        py::arg("logprior_j"), py::arg("frac") = 0.999,
        "-> (logZ, pmax, argmax_t, argmax_j, nsig, offsets, t_idx, j_idx, weight)");
  m.def("marg_segment_posteriors", &segment_posteriors, py::arg("minus_logp"),
        py::arg("offsets"), py::arg("frac") = 0.999,
        "-> (weight, logZ, pmax, argmax, nsig, significant)");
}
