// tv: the stencils of the sparsity + total-variation regularised reconstruction (seed 002, eqs 11-22;
// the solver is hpcem/recon/tv_solver.py, the layout hpcem/kernels/tv.py).
//
// Volumes are float32 (nz, ny, nx) C-contiguous; half transforms complex64 (nz, ny, nx/2+1).
// Discrete gradient (eq 12): backward differences, (Dx)_a[v] = x[v] - x[v - e_a] for v_a >= 1 and
// 0 on the first plane of each axis; its adjoint (eq 17): (D^T u)[v] = sum_a u_a[v] - u_a[v + e_a]
// (the second term only inside the box).  The TV term is Nesterov-smoothed (eq 14): the Huber
// function h_mu(|Dx|) (|Dx|^2 / 2mu below mu, |Dx| - mu/2 above), whose gradient is
// D^T(u) with u = Dx / max(|Dx|, mu) (eq 16); with per-voxel weights w it is D^T(w u).
//
// Concurrency: every kernel runs over z planes (OpenMP; the prox step in contiguous blocks of planes
// per thread, keeping two planes of weighted unit gradients); each output voxel is written by one
// thread from values that do not depend on the split, and sums are accumulated per plane in double
// and added plane by plane in order, so results are bitwise independent of the thread count.
#include "common.hpp"
#include <omp.h>
#include <vector>

namespace {

struct Box {
  long nz, ny, nx;
  size_t at(long z, long y, long x) const { return (size_t(z) * ny + y) * nx + x; }
  size_t size() const { return size_t(nz) * ny * nx; }
};

Box box_of(const py::array& a, const char* name) {
  require(a.ndim() == 3, std::string("tv: ") + name + " must be a volume (nz, ny, nx)");
  return Box{long(a.shape(0)), long(a.shape(1)), long(a.shape(2))};
}

void same_box(const py::array& a, const Box& b, const char* name) {
  require(a.ndim() == 3 && a.shape(0) == b.nz && a.shape(1) == b.ny && a.shape(2) == b.nx,
          std::string("tv: ") + name + " must have the volume's shape");
}

// an output array, written in place: exactly float32 (or complex64), C-contiguous, writeable
template <typename T>
T* out_data(py::array& a, const char* name) {
  require(a.dtype().is(py::dtype::of<T>()) && (a.flags() & py::array::c_style) && a.writeable(),
          std::string("tv: ") + name + " must be a writeable C-contiguous " +
              (sizeof(T) == 4 ? "float32" : "complex64") + " array");
  return static_cast<T*>(a.mutable_data());
}

float* out_ptr(py::array& a, const Box& b, const char* name) {
  same_box(a, b, name);
  return out_data<float>(a, name);
}

inline float huber(float m, float mu) { return m < mu ? 0.5f * m * m / mu : m - 0.5f * mu; }

// backward differences at (z, y, x) and their norm
inline float grad_at(const float* x, const Box& b, long z, long y, long xx, float d[3]) {
  const float c = x[b.at(z, y, xx)];
  d[0] = z > 0 ? c - x[b.at(z - 1, y, xx)] : 0.f;
  d[1] = y > 0 ? c - x[b.at(z, y - 1, xx)] : 0.f;
  d[2] = xx > 0 ? c - x[b.at(z, y, xx - 1)] : 0.f;
  return std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
}

// The weighted unit gradients q_a = w (Dx)_a / max(|Dx|, mu) of one z plane (3 x ny x nx, a-major),
// each computed once: the TV gradient at v is sum_a q_a[v] - q_a[v + e_a] (eq 17).
void plane_q(const float* x, const float* w, const Box& b, float mu, long z, float* q) {
  const size_t np = size_t(b.ny) * b.nx;
  for (long y = 0; y < b.ny; ++y)
    for (long xx = 0; xx < b.nx; ++xx) {
      float d[3];
      const float m = grad_at(x, b, z, y, xx, d);
      const float s = w[b.at(z, y, xx)] / std::max(m, mu);
      const size_t i = size_t(y) * b.nx + xx;
      q[i] = s * d[0];
      q[np + i] = s * d[1];
      q[2 * np + i] = s * d[2];
    }
}

// Calls f(z, tvgrad) for the planes [z0, z1) with tvgrad (ny x nx) the plane's D^T(w u); two planes of q
// are kept (this one and the next), so every q is computed once per thread (plus one plane per block).
template <typename F>
void tv_grad_planes(const float* x, const float* w, const Box& b, float mu, long z0, long z1, F f) {
  const size_t np = size_t(b.ny) * b.nx;
  std::vector<float> cur(3 * np), nxt(3 * np), g(np);
  plane_q(x, w, b, mu, z0, cur.data());
  for (long z = z0; z < z1; ++z) {
    const bool more = z + 1 < b.nz;
    if (more) plane_q(x, w, b, mu, z + 1, nxt.data());
    for (long y = 0; y < b.ny; ++y)
      for (long xx = 0; xx < b.nx; ++xx) {
        const size_t i = size_t(y) * b.nx + xx;
        float v = cur[i] + cur[np + i] + cur[2 * np + i];
        if (more) v -= nxt[i];
        if (y + 1 < b.ny) v -= cur[np + i + b.nx];
        if (xx + 1 < b.nx) v -= cur[2 * np + i + 1];
        g[i] = v;
      }
    f(z, g.data());
    std::swap(cur, nxt);
  }
}

// planes [lo, hi) of block t of T (contiguous blocks: every thread keeps its q planes)
inline void block_of(long nz, int t, int T, long& lo, long& hi) {
  lo = nz * t / T;
  hi = nz * (t + 1) / T;
}

// sum of per-plane partial sums, in plane order
double ordered_sum(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return s;
}

// wl1 = 1 / (|x| + eps), wtv = 1 / (h_mu(|Dx|) + epsp): the reweighting of eq 11
void tv_weights(carray<float> x, double eps, double epsp, double mu, py::array wl1,
                py::array wtv) {
  const Box b = box_of(x, "x");
  float* a = out_ptr(wl1, b, "wl1");
  float* t = out_ptr(wtv, b, "wtv");
  const float* X = x.data();
  const float fe = float(eps), fep = float(epsp), fmu = float(mu);
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static)
  for (long z = 0; z < b.nz; ++z)
    for (long y = 0; y < b.ny; ++y)
      for (long xx = 0; xx < b.nx; ++xx) {
        float d[3];
        const size_t i = b.at(z, y, xx);
        a[i] = 1.f / (std::abs(X[i]) + fe);
        t[i] = 1.f / (huber(grad_at(X, b, z, y, xx, d), fmu) + fep);
      }
}

// One proximal-gradient step (eqs 20-22): v = y - t (g graw + beta D^T(wtv u(y)) + gamma2 (y - xp)),
// z = soft(v, t alpha wl1) (eq 21), gz = g z; g the separable gridding correction g[z] g[y] g[x].
// Returns (sum (z - y)^2, sum y^2).
py::tuple tv_prox_step(carray<float> y, carray<float> graw, carray<float> xp, carray<float> wl1,
                       carray<float> wtv, carray<float> g, double mu, double beta, double gamma2, double t,
                       double alpha, py::array z, py::array gz) {
  const Box b = box_of(y, "y");
  same_box(graw, b, "graw");
  same_box(xp, b, "xp");
  same_box(wl1, b, "wl1");
  same_box(wtv, b, "wtv");
  require(b.nz == b.ny && b.ny == b.nx && g.ndim() == 1 && g.shape(0) == b.nx,
          "tv_prox_step: the volume must be a cube and g its (n,) correction profile");
  float* Z = out_ptr(z, b, "z");
  float* GZ = out_ptr(gz, b, "gz");
  const float *Y = y.data(), *GR = graw.data(), *XP = xp.data(), *WL = wl1.data(), *WT = wtv.data(),
              *G = g.data();
  const float fmu = float(mu), fb = float(beta), fg = float(gamma2), ft = float(t), fa = float(alpha);
  std::vector<double> dz(b.nz, 0.0), yy(b.nz, 0.0);
  {
    py::gil_scoped_release nogil;
#pragma omp parallel
    {
      const int T = omp_get_num_threads(), t = omp_get_thread_num();
      long lo, hi;
      block_of(b.nz, t, T, lo, hi);
      if (lo < hi)
        tv_grad_planes(Y, WT, b, fmu, lo, hi, [&](long k, const float* tvg) {
          double sd = 0.0, sy = 0.0;
          for (long j = 0; j < b.ny; ++j)
            for (long i = 0; i < b.nx; ++i) {
              const size_t v = b.at(k, j, i);
              const float gc = G[k] * G[j] * G[i];
              const float grad = gc * GR[v] + fb * tvg[size_t(j) * b.nx + i] + fg * (Y[v] - XP[v]);
              const float u = Y[v] - ft * grad, th = ft * fa * WL[v];
              const float s = std::abs(u) > th ? u - std::copysign(th, u) : 0.f;
              Z[v] = s;
              GZ[v] = gc * s;
              sd += double(s - Y[v]) * double(s - Y[v]);
              sy += double(Y[v]) * double(Y[v]);
            }
          dz[k] = sd;
          yy[k] = sy;
        });
    }
  }
  return py::make_tuple(ordered_sum(dz), ordered_sum(yy));
}

// (sum wl1 |z|, sum wtv h_mu(|Dz|), sum (z - xp)^2): the penalty terms of the objective at z
py::tuple tv_penalties(carray<float> z, carray<float> xp, carray<float> wl1, carray<float> wtv, double mu) {
  const Box b = box_of(z, "z");
  same_box(xp, b, "xp");
  same_box(wl1, b, "wl1");
  same_box(wtv, b, "wtv");
  const float *Z = z.data(), *XP = xp.data(), *WL = wl1.data(), *WT = wtv.data();
  const float fmu = float(mu);
  std::vector<double> l1(b.nz, 0.0), tv(b.nz, 0.0), rs(b.nz, 0.0);
  {
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static)
    for (long k = 0; k < b.nz; ++k) {
      double a = 0.0, c = 0.0, r = 0.0;
      for (long j = 0; j < b.ny; ++j)
        for (long i = 0; i < b.nx; ++i) {
          float d[3];
          const size_t v = b.at(k, j, i);
          a += double(WL[v]) * std::abs(Z[v]);
          c += double(WT[v]) * huber(grad_at(Z, b, k, j, i, d), fmu);
          const double e = double(Z[v]) - double(XP[v]);
          r += e * e;
        }
      l1[k] = a;
      tv[k] = c;
      rs[k] = r;
    }
  }
  return py::make_tuple(ordered_sum(l1), ordered_sum(tv), ordered_sum(rs));
}

// Multiplicity of the half-grid column i of a real transform of length n (1: own mirror).
inline double hermitian_mult(long i, long n) { return (i == 0 || (n % 2 == 0 && 2 * i == n)) ? 1.0 : 2.0; }

void check_half(const py::array& a, long nz, long ny, long nh, const char* name) {
  require(a.ndim() == 3 && a.shape(0) == nz && a.shape(1) == ny && a.shape(2) == nh,
          std::string("tv: ") + name + " must be a half grid (nz, ny, nx//2+1)");
}

// (1 / (2 nz ny nx)) sum over the full grid of Wd |Gz - Zc|^2 (the data term, orthonormal DFT units)
double tv_data_value(carray<cfloat> Gz, carray<cfloat> Zc, carray<float> Wd, long nx) {
  require(Gz.ndim() == 3, "tv_data_value: Gz must be a half grid (nz, ny, nx//2+1)");
  const long nz = long(Gz.shape(0)), ny = long(Gz.shape(1)), nh = long(Gz.shape(2));
  require(nh == nx / 2 + 1, "tv_data_value: the last axis must be nx//2+1");
  check_half(Zc, nz, ny, nh, "Zc");
  check_half(Wd, nz, ny, nh, "Wd");
  const cfloat *A = Gz.data(), *B = Zc.data();
  const float* W = Wd.data();
  std::vector<double> part(nz, 0.0);
  {
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static)
    for (long k = 0; k < nz; ++k) {
      double s = 0.0;
      for (long j = 0; j < ny; ++j) {
        const size_t row = (size_t(k) * ny + j) * nh;
        for (long i = 0; i < nh; ++i) {
          const cfloat r = A[row + i] - B[row + i];
          s += hermitian_mult(i, nx) * double(W[row + i]) * (double(r.real()) * r.real() + double(r.imag()) * r.imag());
        }
      }
      part[k] = s;
    }
  }
  return 0.5 * ordered_sum(part) / (double(nz) * ny * nx);
}

// out = p + a (q - p) + b (p - r), element-wise over float32 arrays of one size (the momentum step
// of the accelerated iterations; complex arrays are passed as their float32 views)
void tv_extrapolate(carray<float> p, carray<float> q, carray<float> r, double a, double b, py::array out) {
  const size_t N = size_t(p.size());
  require(size_t(q.size()) == N && size_t(r.size()) == N && size_t(out.size()) == N,
          "tv_extrapolate: arrays must have one size");
  const float *P = p.data(), *Q = q.data(), *R = r.data();
  float* O = out_data<float>(out, "out");
  const float fa = float(a), fb = float(b);
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static)
  for (long i = 0; i < long(N); ++i) O[i] = P[i] + fa * (Q[i] - P[i]) + fb * (P[i] - R[i]);
}

// Gy = Gp + a (Gq - Gp) + b (Gp - Gr) and R = Wd (Gy - Zc): the extrapolated point's transform and
// its weighted residual (whose inverse transform is the data term's gradient)
void tv_extrapolate_residual(carray<cfloat> Gp, carray<cfloat> Gq, carray<cfloat> Gr, double a, double b,
                             carray<float> Wd, carray<cfloat> Zc, py::array Gy, py::array R) {
  require(Gp.ndim() == 3, "tv_extrapolate_residual: Gp must be a half grid");
  const long nz = long(Gp.shape(0)), ny = long(Gp.shape(1)), nh = long(Gp.shape(2));
  for (const py::array* arr : {static_cast<const py::array*>(&Gq), static_cast<const py::array*>(&Gr),
                               static_cast<const py::array*>(&Wd), static_cast<const py::array*>(&Zc),
                               static_cast<const py::array*>(&Gy), static_cast<const py::array*>(&R)})
    check_half(*arr, nz, ny, nh, "each half-grid array");
  const cfloat *P = Gp.data(), *Q = Gq.data(), *S = Gr.data(), *Z = Zc.data();
  const float* W = Wd.data();
  cfloat *Y = out_data<cfloat>(Gy, "Gy"), *O = out_data<cfloat>(R, "R");
  const float fa = float(a), fb = float(b);
  const long N = nz * ny * nh;
  py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static)
  for (long i = 0; i < N; ++i) {
    const cfloat y = P[i] + fa * (Q[i] - P[i]) + fb * (P[i] - S[i]);
    Y[i] = y;
    O[i] = W[i] * (y - Z[i]);
  }
}

}  // namespace

void register_tv(py::module_& m) {
  m.def("tv_weights", &tv_weights, py::arg("x"), py::arg("eps"), py::arg("epsp"), py::arg("mu"), py::arg("wl1"),
        py::arg("wtv"), "Reweighting of eq 11: wl1 = 1/(|x|+eps), wtv = 1/(h_mu(|Dx|)+epsp), in place.");
  m.def("tv_prox_step", &tv_prox_step, py::arg("y"), py::arg("graw"), py::arg("xp"), py::arg("wl1"),
        py::arg("wtv"), py::arg("g"), py::arg("mu"), py::arg("beta"), py::arg("gamma2"), py::arg("t"),
        py::arg("alpha"), py::arg("z"), py::arg("gz"),
        "One proximal-gradient step (eqs 20-22) into z and g z; returns (sum (z-y)^2, sum y^2).");
  m.def("tv_penalties", &tv_penalties, py::arg("z"), py::arg("xp"), py::arg("wl1"), py::arg("wtv"), py::arg("mu"),
        "(sum wl1 |z|, sum wtv h_mu(|Dz|), sum (z - xp)^2).");
  m.def("tv_data_value", &tv_data_value, py::arg("Gz"), py::arg("Zc"), py::arg("Wd"), py::arg("nx"),
        "Data term (1/2N) sum_full Wd |Gz - Zc|^2 from half grids.");
  m.def("tv_extrapolate", &tv_extrapolate, py::arg("p"), py::arg("q"), py::arg("r"), py::arg("a"), py::arg("b"),
        py::arg("out"), "out = p + a (q - p) + b (p - r), float32.");
  m.def("tv_extrapolate_residual", &tv_extrapolate_residual, py::arg("Gp"), py::arg("Gq"), py::arg("Gr"),
        py::arg("a"), py::arg("b"), py::arg("Wd"), py::arg("Zc"), py::arg("Gy"), py::arg("R"),
        "Gy = Gp + a (Gq - Gp) + b (Gp - Gr), R = Wd (Gy - Zc), complex64 half grids.");
}
