// backproject: the exact adjoint of project3d / project2d (same interpolation weights: trilinear /
// bilinear, or in 3D the Gaussian kernel of seed 002, common.hpp), accumulating into padded half-grid
// accumulators in place; plus symmetrise3d.
//
// Concurrency: no atomics. The accumulator is split into slabs of FFT-ordered
// frequencies along z (3D) or y (2D); each slab is owned by one thread, which visits
// every slice of the batch but only the rows' kx ranges whose trilinear corners can
// reach its slab (computed analytically per row), and writes only corners inside the
// slab. Results are therefore bitwise independent of the thread count.
//
// Accumulators: complex128 + float64 (default in hpcem.core.projector) or
// complex64 + float32; data += w_interp * slice, weight += w_interp * weights.
#include "common.hpp"
#include <omp.h>
#include <vector>

namespace {

template <typename T>
struct Acc {
  std::complex<T>* data;
  T* weight;
};

// Accumulate one slice sample (value v, weight wt) at p into the part of the
// accumulator with slab coordinate (z in 3D, y in 2D) in [slo, shi).
template <typename T, bool THREE_D>
inline void splat(Acc<T> acc, int P, float px, float py, float pz, cfloat v, float wt, int slo, int shi) {
  if (px < 0.f) { px = -px; py = -py; pz = -pz; v = std::conj(v); }
  const int s0 = int(std::floor(THREE_D ? pz : py));
  if (s0 < slo - 1 || s0 >= shi) return;
  auto add = [&](int s, size_t off, float w) {
    if (s < slo || s >= shi) return;
    acc.data[off] += std::complex<T>(T(w * v.real()), T(w * v.imag()));
    acc.weight[off] += T(w * wt);
  };
  if (THREE_D)
    linear_neighbours(P, px, py, pz, add);
  else
    bilinear_neighbours(P, px, py, add);
}

// The Gaussian kernel's splat (3D; interp.hpp): the 27 neighbours of round(p), those with z in [slo, shi).
template <typename T>
inline void splat_gauss(Acc<T> acc, int P, float px, float py, float pz, cfloat v, float wt, int slo, int shi) {
  if (px < 0.f) { px = -px; py = -py; pz = -pz; v = std::conj(v); }
  const int cz = int(std::floor(pz + 0.5f)), cx = int(std::floor(px + 0.5f));
  if ((cz + 1 < slo || cz - 1 >= shi) && (cx > 0 || -cz + 1 < slo || -cz - 1 >= shi)) return;
  gauss_neighbours(P, px, py, pz, [&](int z, size_t off, float w, bool mate) {
    if (z < slo || z >= shi) return;
    const cfloat u = mate ? std::conj(v) : v;
    acc.data[off] += std::complex<T>(T(w * u.real()), T(w * u.imag()));
    acc.weight[off] += T(w * wt);
  });
}

// One slab: all slices of the batch (those of class `cls` in 2D, cls < 0: all); GAUSS: 3D only.
template <typename T, bool THREE_D, bool GAUSS = false>
void backproject_slab(const cfloat* S, const float* W, const double* R, const int64_t* idx, long cls, long B,
                      int n, double r_max, double pad, Acc<T> acc, int P, int slo, int shi) {
  // reach of a sample along the slab axis: corners in [c, c+1] (linear), [round(c) - 1, round(c) + 1]
  // and their Friedel mates (gauss)
  const double lo_reach = GAUSS ? 3.0 : 1.0, hi_reach = GAUSS ? 2.0 : 0.0;
  const int nh = n / 2 + 1;
  for (long b = 0; b < B; ++b) {
    if (cls >= 0 && idx[b] != cls) continue;
    const SliceGeom g(R + (THREE_D ? 9 : 4) * b, pad, THREE_D);
    // slab coordinate along the row: c(kx) = c0*kx + c1*ky
    const double c0 = THREE_D ? g.cz0 : g.cy0, c1 = THREE_D ? g.cz1 : g.cy1;
    for (int iy = 0; iy < n; ++iy) {
      const int ky = fft_freq(iy, n);
      const int xmax = row_xmax(ky, r_max, nh);
      if (xmax < 0) continue;
      // corners in [slo, shi) need c' in [slo-1, shi), c' = +-c (Friedel flip)
      int a1, b1, a2, b2;
      kx_interval(c0, c1 * ky, slo - lo_reach, shi + hi_reach, xmax, a1, b1);
      kx_interval(c0, c1 * ky, -(shi + hi_reach), lo_reach - slo, xmax, a2, b2);
      const size_t row = (size_t(b) * n + iy) * nh;
      const float fky = float(ky);
      auto visit = [&](int kx) {
        const float fkx = float(kx);
        const float px = g.cx0 * fkx + g.cx1 * fky, py = g.cy0 * fkx + g.cy1 * fky, pz = g.cz0 * fkx + g.cz1 * fky;
        if (GAUSS)
          splat_gauss<T>(acc, P, px, py, pz, S[row + kx], W[row + kx], slo, shi);
        else
          splat<T, THREE_D>(acc, P, px, py, pz, S[row + kx], W[row + kx], slo, shi);
      };
      for (int kx = a1; kx <= b1; ++kx) visit(kx);
      for (int kx = a2; kx <= b2; ++kx)
        if (kx < a1 || kx > b1) visit(kx);
    }
  }
}

template <typename T>
Acc<T> get_acc(py::array& data, py::array& weight, int nd, long& K, int& P) {
  require(data.ndim() == nd && weight.ndim() == nd, "backproject: accumulators have the wrong number of dimensions");
  for (int i = 0; i < nd; ++i) require(data.shape(i) == weight.shape(i), "backproject: data and weight shapes differ");
  require((data.flags() & py::array::c_style) && (weight.flags() & py::array::c_style),
          "backproject: accumulators must be C-contiguous");
  require(data.writeable() && weight.writeable(), "backproject: accumulators must be writeable");
  P = int(data.shape(nd - 2));
  require(data.shape(nd - 1) == P / 2 + 1, "backproject: accumulator last axis must be P//2+1");
  if (nd == 3 && data.shape(0) != P) {  // 3D: (P, P, P/2+1); 2D stacked: (K, P, P/2+1)
    K = long(data.shape(0));
  } else {
    K = long(data.shape(0));
  }
  return Acc<T>{static_cast<std::complex<T>*>(data.mutable_data()), static_cast<T*>(weight.mutable_data())};
}

bool is_double_acc(const py::array& data, const py::array& weight) {
  if (data.dtype().is(py::dtype::of<std::complex<double>>()) && weight.dtype().is(py::dtype::of<double>()))
    return true;
  if (data.dtype().is(py::dtype::of<std::complex<float>>()) && weight.dtype().is(py::dtype::of<float>()))
    return false;
  throw std::invalid_argument("backproject: accumulators must be (complex128, float64) or (complex64, float32)");
}

void check_slices(const carray<cfloat>& S, const carray<float>& W, long B, int n) {
  const int nh = n / 2 + 1;
  require(S.ndim() == 3 && S.shape(0) == B && S.shape(1) == n && S.shape(2) == nh,
          "backproject: slices must be (B, n, n//2+1)");
  require(W.ndim() == 3 && W.shape(0) == B && W.shape(1) == n && W.shape(2) == nh,
          "backproject: weights must be (B, n, n//2+1)");
}

template <typename T>
void bp3d_impl(const carray<cfloat>& S, const carray<float>& W, const carray<double>& R, Acc<T> acc, int P, long B,
               int n, double r_max, double pad, int kernel) {
  py::gil_scoped_release nogil;
  const int ns = n_slabs(P, omp_get_max_threads()), fmin = freq_min(P);
  const cfloat* s = S.data();
  const float* w = W.data();
  const double* r = R.data();
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < ns; ++i) {
    const int slo = fmin + int(long(i) * P / ns), shi = fmin + int(long(i + 1) * P / ns);
    if (kernel == KERNEL_GAUSS)
      backproject_slab<T, true, true>(s, w, r, nullptr, -1, B, n, r_max, pad, acc, P, slo, shi);
    else
      backproject_slab<T, true>(s, w, r, nullptr, -1, B, n, r_max, pad, acc, P, slo, shi);
  }
}

void backproject3d(carray<cfloat> slices, carray<float> weights, carray<double> rot, py::array data,
                   py::array weight, double r_max, double pad, int kernel) {
  require(rot.ndim() == 3 && rot.shape(1) == 3 && rot.shape(2) == 3, "backproject3d: rotations must be (B, 3, 3)");
  require(kernel == KERNEL_LINEAR || kernel == KERNEL_GAUSS, "backproject3d: kernel must be 0 (linear) or 1 (gauss)");
  const long B = long(rot.shape(0));
  require(slices.ndim() == 3, "backproject3d: slices must be (B, n, n//2+1)");
  const int n = int(slices.shape(1));
  check_slices(slices, weights, B, n);
  long K;
  int P;
  if (is_double_acc(data, weight)) {
    auto acc = get_acc<double>(data, weight, 3, K, P);
    require(K == P, "backproject3d: accumulators must be (P, P, P//2+1)");
    bp3d_impl<double>(slices, weights, rot, acc, P, B, n, r_max, pad, kernel);
  } else {
    auto acc = get_acc<float>(data, weight, 3, K, P);
    require(K == P, "backproject3d: accumulators must be (P, P, P//2+1)");
    bp3d_impl<float>(slices, weights, rot, acc, P, B, n, r_max, pad, kernel);
  }
}

template <typename T>
void bp2d_impl(const carray<cfloat>& S, const carray<float>& W, const carray<double>& R, const int64_t* idx,
               Acc<T> acc, int P, long K, long B, int n, double r_max, double pad) {
  py::gil_scoped_release nogil;
  const int ns = n_slabs(P, omp_get_max_threads()), fmin = freq_min(P);
  const size_t ref_size = size_t(P) * (P / 2 + 1);
  const cfloat* s = S.data();
  const float* w = W.data();
  const double* r = R.data();
  const long tasks = K * ns;
#pragma omp parallel for schedule(dynamic, 1)
  for (long t = 0; t < tasks; ++t) {
    const long k = t / ns;
    const int i = int(t % ns);
    const int slo = fmin + int(long(i) * P / ns), shi = fmin + int(long(i + 1) * P / ns);
    Acc<T> a{acc.data + ref_size * k, acc.weight + ref_size * k};
    backproject_slab<T, false>(s, w, r, idx, k, B, n, r_max, pad, a, P, slo, shi);
  }
}

void backproject2d(carray<cfloat> slices, carray<float> weights, carray<double> rot, carray<int64_t> index,
                   py::array data, py::array weight, double r_max, double pad) {
  require(rot.ndim() == 3 && rot.shape(1) == 2 && rot.shape(2) == 2, "backproject2d: rotations must be (B, 2, 2)");
  const long B = long(rot.shape(0));
  require(slices.ndim() == 3, "backproject2d: slices must be (B, n, n//2+1)");
  const int n = int(slices.shape(1));
  check_slices(slices, weights, B, n);
  require(index.ndim() == 1 && index.shape(0) == B, "backproject2d: ref_index must be (B,)");
  long K;
  int P;
  const bool dbl = is_double_acc(data, weight);
  if (dbl) {
    auto acc = get_acc<double>(data, weight, 3, K, P);
    for (long b = 0; b < B; ++b) require(index.data()[b] >= 0 && index.data()[b] < K, "backproject2d: ref_index out of range");
    bp2d_impl<double>(slices, weights, rot, index.data(), acc, P, K, B, n, r_max, pad);
  } else {
    auto acc = get_acc<float>(data, weight, 3, K, P);
    for (long b = 0; b < B; ++b) require(index.data()[b] >= 0 && index.data()[b] < K, "backproject2d: ref_index out of range");
    bp2d_impl<float>(slices, weights, rot, index.data(), acc, P, K, B, n, r_max, pad);
  }
}

// Trilinear sample of a padded half accumulator (data and weight) at p, Friedel for px < 0.
template <typename T>
inline void sample_acc(const std::complex<T>* D, const T* Wt, int P, double px, double py, double pz,
                       std::complex<T>& dv, T& wv) {
  const bool flip = px < 0;
  if (flip) { px = -px; py = -py; pz = -pz; }
  std::complex<double> d(0, 0);
  double w = 0;
  linear_neighbours(P, px, py, pz, [&](int, size_t off, double c) {
    d += c * std::complex<double>(D[off]);
    w += c * double(Wt[off]);
  });
  dv = std::complex<T>(flip ? std::conj(d) : d);
  wv = T(w);
}

template <typename T>
void sym_impl(const std::complex<T>* D, const T* Wt, std::complex<T>* Do, T* Wo, const double* ops, long G, int P,
              double r_pad) {
  py::gil_scoped_release nogil;
  const int Ph = P / 2 + 1;
  const double r2 = r_pad * r_pad;
#pragma omp parallel for schedule(static) collapse(2)
  for (int iz = 0; iz < P; ++iz) {
    for (int iy = 0; iy < P; ++iy) {
      const double kz = fft_freq(iz, P), ky = fft_freq(iy, P);
      const size_t off = (size_t(iz) * P + iy) * Ph;
      for (int kx = 0; kx < Ph; ++kx) {
        std::complex<T> ds(0, 0);
        T ws = 0;
        if (kx * kx + ky * ky + kz * kz <= r2) {
          for (long g = 0; g < G; ++g) {  // sample at R^T k
            const double* M = ops + 9 * g;
            const double qx = M[0] * kx + M[3] * ky + M[6] * kz;
            const double qy = M[1] * kx + M[4] * ky + M[7] * kz;
            const double qz = M[2] * kx + M[5] * ky + M[8] * kz;
            std::complex<T> dv;
            T wv;
            sample_acc<T>(D, Wt, P, qx, qy, qz, dv, wv);
            ds += dv;
            ws += wv;
          }
        }
        Do[off + kx] = ds;
        Wo[off + kx] = ws;
      }
    }
  }
}

// out(k) = sum_R acc(R^T k) for |k| <= r_pad (padded units), 0 beyond; returns new arrays.
py::tuple symmetrise3d(py::array data, py::array weight, carray<double> ops, double r_pad) {
  require(ops.ndim() == 3 && ops.shape(1) == 3 && ops.shape(2) == 3, "symmetrise3d: ops must be (G, 3, 3)");
  long K;
  int P;
  const long G = long(ops.shape(0));
  if (is_double_acc(data, weight)) {
    auto a = get_acc<double>(data, weight, 3, K, P);
    require(K == P, "symmetrise3d: accumulators must be (P, P, P//2+1)");
    py::array_t<std::complex<double>> Do({data.shape(0), data.shape(1), data.shape(2)});
    py::array_t<double> Wo({data.shape(0), data.shape(1), data.shape(2)});
    sym_impl<double>(a.data, a.weight, Do.mutable_data(), Wo.mutable_data(), ops.data(), G, P, r_pad);
    return py::make_tuple(Do, Wo);
  }
  auto a = get_acc<float>(data, weight, 3, K, P);
  require(K == P, "symmetrise3d: accumulators must be (P, P, P//2+1)");
  py::array_t<std::complex<float>> Do({data.shape(0), data.shape(1), data.shape(2)});
  py::array_t<float> Wo({data.shape(0), data.shape(1), data.shape(2)});
  sym_impl<float>(a.data, a.weight, Do.mutable_data(), Wo.mutable_data(), ops.data(), G, P, r_pad);
  return py::make_tuple(Do, Wo);
}

// values / weights (B, M) at the listed slice frequencies (ky, kx): the adjoint of project3d_at,
// by the same slabs (each slab thread visits every listed coefficient of every slice)
template <typename T>
void bp3d_at_impl(const cfloat* S, const float* W, const double* R, const int32_t* KY, const int32_t* KX, long B,
                  long M, Acc<T> acc, int P, double pad) {
  py::gil_scoped_release nogil;
  const int ns = n_slabs(P, omp_get_max_threads()), fmin = freq_min(P);
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < ns; ++i) {
    const int slo = fmin + int(long(i) * P / ns), shi = fmin + int(long(i + 1) * P / ns);
    for (long b = 0; b < B; ++b) {
      const SliceGeom g(R + 9 * b, pad, true);
      const size_t row = size_t(b) * M;
      for (long m = 0; m < M; ++m) {
        const float fkx = float(KX[m]), fky = float(KY[m]);
        splat<T, true>(acc, P, g.cx0 * fkx + g.cx1 * fky, g.cy0 * fkx + g.cy1 * fky, g.cz0 * fkx + g.cz1 * fky,
                       S[row + m], W[row + m], slo, shi);
      }
    }
  }
}

void backproject3d_at(carray<cfloat> values, carray<float> weights, carray<double> rot, carray<int32_t> ky,
                      carray<int32_t> kx, py::array data, py::array weight, double pad) {
  require(rot.ndim() == 3 && rot.shape(1) == 3 && rot.shape(2) == 3, "backproject3d_at: rotations must be (B, 3, 3)");
  const long B = long(rot.shape(0)), M = long(kx.shape(0));
  require(ky.ndim() == 1 && kx.ndim() == 1 && ky.shape(0) == M, "backproject3d_at: ky, kx must be (M,)");
  require(values.ndim() == 2 && values.shape(0) == B && values.shape(1) == M && weights.ndim() == 2 &&
              weights.shape(0) == B && weights.shape(1) == M,
          "backproject3d_at: values and weights must be (B, M)");
  long K;
  int P;
  if (is_double_acc(data, weight)) {
    auto acc = get_acc<double>(data, weight, 3, K, P);
    require(K == P, "backproject3d_at: accumulators must be (P, P, P//2+1)");
    bp3d_at_impl<double>(values.data(), weights.data(), rot.data(), ky.data(), kx.data(), B, M, acc, P, pad);
  } else {
    auto acc = get_acc<float>(data, weight, 3, K, P);
    require(K == P, "backproject3d_at: accumulators must be (P, P, P//2+1)");
    bp3d_at_impl<float>(values.data(), weights.data(), rot.data(), ky.data(), kx.data(), B, M, acc, P, pad);
  }
}

// Row b's float32 entries (values less the prediction, weights) in storage order: a sequential read of
// the double sums; returns whether any weight is nonzero.
template <typename R>
inline bool bp2d_row(const std::complex<R>* V, const R* W, const cfloat* refs, const int64_t* pred,
                     long b, long M, cfloat* val, float* wt) {
  const std::complex<R>* v = V + size_t(b) * M;
  const R* w = W + size_t(b) * M;
  const cfloat* p = refs ? refs + size_t(pred[b]) * M : nullptr;
  bool any = false;
  for (long m = 0; m < M; ++m) {
    double re = v[m].real(), im = v[m].imag();
    if (p) {
      re -= w[m] * double(p[m].real());
      im -= w[m] * double(p[m].imag());
    }
    val[m] = cfloat(float(re), float(im));
    wt[m] = float(w[m]);
    any = any || w[m] != 0.0;
  }
  return any;
}

// Two rows of one geometry splatted at once into two accumulators (u0 / u1: whether each row has weight
// there): the corners and their weights computed once; each accumulator receives exactly the additions,
// in the same order, that two separate splats would give it.
template <typename T>
inline void splat2d_pair(Acc<T> a0, Acc<T> a1, int P, float px, float py, cfloat v0, float w0, bool u0, cfloat v1,
                         float w1, bool u1, int slo, int shi) {
  if (px < 0.f) { px = -px; py = -py; v0 = std::conj(v0); v1 = std::conj(v1); }
  const int s0 = int(std::floor(py));
  if (s0 < slo - 1 || s0 >= shi) return;
  bilinear_neighbours(P, px, py, [&](int s, size_t off, float w) {
    if (s < slo || s >= shi) return;
    if (u0) {
      a0.data[off] += std::complex<T>(T(w * v0.real()), T(w * v0.imag()));
      a0.weight[off] += T(w * w0);
    }
    if (u1) {
      a1.data[off] += std::complex<T>(T(w * v1.real()), T(w * v1.imag()));
      a1.weight[off] += T(w * w1);
    }
  });
}

// Whether row b + B/2 repeats row b's rotation into accumulator index[b] + K/2 for every b < B/2 (VDAM's two
// half sets of (class, psi) rows on one rank): then the rows are splatted in pairs.
inline bool bp2d_paired(const double* R, const int64_t* idx, long B, long K) {
  if (B < 2 || B % 2 || K % 2) return false;
  const long h = B / 2;
  for (long b = 0; b < h; ++b) {
    if (idx[b + h] != idx[b] + K / 2 || idx[b] >= K / 2) return false;
    for (int e = 0; e < 4; ++e)
      if (R[4 * b + e] != R[4 * (b + h) + e]) return false;
  }
  return true;
}

// Rows of double sums (B, M) at the listed frequencies (ky[m], kx[m]): row b's values V[b] (complex128)
// and weights W[b] (float64), minus W[b] * refs[pred[b]] when refs are given (the residual around the
// rows' predictions), rounded to float32 as backproject2d's slices are, bilinearly splatted into class
// ref_index[b]'s accumulator; only the columns cols[] are visited, in that order (a raster order of
// the coefficients gives backproject2d's sums of the rows put on the full half grid, zero elsewhere).
// Tasks: (class, slab) pairs, no atomics; entries of zero weight (no particle reached them) are skipped.
// Rows whose second half repeats the first half's rotations into the second half of the accumulators
// (bp2d_paired) are splatted two at a time (splat2d_pair): the same sums, one geometry for both.
template <typename T, typename Fp>
void bp2d_at_impl(const std::complex<Fp>* V, const Fp* W, const cfloat* refs, const int64_t* pred,
                  const double* R, const int64_t* idx, const int32_t* KY, const int32_t* KX, const int32_t* cols,
                  long B, long M, long C, Acc<T> acc, int P, long K, double pad) {
  py::gil_scoped_release nogil;
  const bool paired = bp2d_paired(R, idx, B, K);
  const long nrow = paired ? B / 2 : B, ncls = paired ? K / 2 : K;   // row b (< nrow) and its mate b + nrow
  const int threads = omp_get_max_threads();
  const int ns = threads <= 1 ? 1 : std::max(1, std::min(P / 4, int((2 * threads + ncls - 1) / ncls)));
  const int fmin = freq_min(P);
  const size_t ref_size = size_t(P) * (P / 2 + 1);
  // with several slabs per class the rows are converted once, in parallel, before the slab tasks (half the
  // bytes of the double rows); with one slab each task converts its own rows into a small buffer
  std::vector<cfloat> vall(ns > 1 ? size_t(B) * M : 0);
  std::vector<float> wall(ns > 1 ? size_t(B) * M : 0);
  std::vector<char> anyall(ns > 1 ? B : 0);
  if (ns > 1) {
#pragma omp parallel for schedule(static)
    for (long b = 0; b < B; ++b)
      anyall[b] = bp2d_row(V, W, refs, pred, b, M, vall.data() + size_t(b) * M, wall.data() + size_t(b) * M);
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (long t = 0; t < ncls * ns; ++t) {
    const long k = t / ns;
    const int i = int(t % ns);
    const int slo = fmin + int(long(i) * P / ns), shi = fmin + int(long(i + 1) * P / ns);
    Acc<T> a{acc.data + ref_size * k, acc.weight + ref_size * k};
    Acc<T> a1{acc.data + ref_size * (k + ncls), acc.weight + ref_size * (k + ncls)};
    std::vector<cfloat> own(ns > 1 ? 0 : 2 * M);
    std::vector<float> ownw(ns > 1 ? 0 : 2 * M);
    // row q's float32 entries (q = b, or its mate b + nrow stored in the second half of the own buffers)
    auto row = [&](long q, int slot, const cfloat*& val, const float*& wt) {
      if (ns > 1) {
        val = vall.data() + size_t(q) * M;
        wt = wall.data() + size_t(q) * M;
        return bool(anyall[q]);
      }
      val = own.data() + size_t(slot) * M;
      wt = ownw.data() + size_t(slot) * M;
      return bp2d_row(V, W, refs, pred, q, M, own.data() + size_t(slot) * M, ownw.data() + size_t(slot) * M);
    };
    for (long b = 0; b < nrow; ++b) {
      if (idx[b] != k) continue;
      const cfloat *val, *val1 = nullptr;
      const float *wt, *wt1 = nullptr;
      const bool any = row(b, 0, val, wt);
      const bool any1 = paired && row(b + nrow, 1, val1, wt1);
      if (!any && !any1) continue;
      const Fp* w = W + size_t(b) * M;
      const Fp* w1 = paired ? W + size_t(b + nrow) * M : nullptr;
      const SliceGeom g(R + 4 * b, pad, false);
      for (long c = 0; c < C; ++c) {
        const long m = cols[c];
        // entries of zero weight (no particle reached them) are skipped
        const bool u = any && w[m] != Fp(0), u1 = any1 && w1[m] != Fp(0);
        if (!u && !u1) continue;
        const float fkx = float(KX[m]), fky = float(KY[m]);
        const float px = g.cx0 * fkx + g.cx1 * fky, py = g.cy0 * fkx + g.cy1 * fky;
        if (!paired)
          splat<T, false>(a, P, px, py, 0.f, val[m], wt[m], slo, shi);
        else
          splat2d_pair<T>(a, a1, P, px, py, u ? val[m] : cfloat(0.f), u ? wt[m] : 0.f, u,
                          u1 ? val1[m] : cfloat(0.f), u1 ? wt1[m] : 0.f, u1, slo, shi);
      }
    }
  }
}

template <typename Fp>
void backproject2d_at_t(carray<std::complex<Fp>> values, carray<Fp> weights, carray<double> rot,
                        carray<int64_t> index, carray<int32_t> ky, carray<int32_t> kx, carray<int32_t> cols,
                        py::array data, py::array weight, double pad, py::object refs, py::object pred) {
  require(rot.ndim() == 3 && rot.shape(1) == 2 && rot.shape(2) == 2, "backproject2d_at: rotations must be (B, 2, 2)");
  const long B = long(rot.shape(0)), M = long(kx.shape(0)), C = long(cols.shape(0));
  require(ky.ndim() == 1 && kx.ndim() == 1 && ky.shape(0) == M && cols.ndim() == 1,
          "backproject2d_at: ky, kx must be (M,), cols (C,)");
  for (long c = 0; c < C; ++c) require(cols.data()[c] >= 0 && cols.data()[c] < M, "backproject2d_at: cols out of range");
  require(values.ndim() == 2 && values.shape(0) == B && values.shape(1) == M && weights.ndim() == 2 &&
              weights.shape(0) == B && weights.shape(1) == M,
          "backproject2d_at: values and weights must be (B, M)");
  require(index.ndim() == 1 && index.shape(0) == B, "backproject2d_at: ref_index must be (B,)");
  const cfloat* rp = nullptr;
  const int64_t* pp = nullptr;
  carray<cfloat> r;
  carray<int64_t> q;
  if (!refs.is_none()) {
    r = refs.cast<carray<cfloat>>();
    q = pred.cast<carray<int64_t>>();
    require(r.ndim() == 2 && r.shape(1) == M, "backproject2d_at: refs must be (J, M)");
    require(q.ndim() == 1 && q.shape(0) == B, "backproject2d_at: pred_index must be (B,)");
    for (long b = 0; b < B; ++b)
      require(q.data()[b] >= 0 && q.data()[b] < r.shape(0), "backproject2d_at: pred_index out of range");
    rp = r.data();
    pp = q.data();
  }
  long K;
  int P;
  auto run = [&](auto acc) {
    for (long b = 0; b < B; ++b)
      require(index.data()[b] >= 0 && index.data()[b] < K, "backproject2d_at: ref_index out of range");
    for (long m = 0; m < M; ++m)
      require(kx.data()[m] >= 0 && 2 * kx.data()[m] <= P && 2 * std::abs(ky.data()[m]) <= P,
              "backproject2d_at: frequencies outside the padded box");
    bp2d_at_impl(values.data(), weights.data(), rp, pp, rot.data(), index.data(), ky.data(), kx.data(), cols.data(),
                 B, M, C, acc, P, K, pad);
  };
  if (is_double_acc(data, weight))
    run(get_acc<double>(data, weight, 3, K, P));
  else
    run(get_acc<float>(data, weight, 3, K, P));
}

// Rows in double (complex128 / float64) or single precision (complex64 / float32, VDAM's mini-batch sums).
void backproject2d_at(py::array values, py::array weights, carray<double> rot, carray<int64_t> index,
                      carray<int32_t> ky, carray<int32_t> kx, carray<int32_t> cols, py::array data, py::array weight,
                      double pad, py::object refs, py::object pred) {
  if (values.dtype().is(py::dtype::of<std::complex<float>>()) && weights.dtype().is(py::dtype::of<float>()))
    backproject2d_at_t<float>(values.cast<carray<cfloat>>(), weights.cast<carray<float>>(), rot, index, ky, kx, cols,
                              data, weight, pad, refs, pred);
  else
    backproject2d_at_t<double>(values.cast<carray<std::complex<double>>>(), weights.cast<carray<double>>(), rot, index,
                               ky, kx, cols, data, weight, pad, refs, pred);
}

}  // namespace

void register_backproject(py::module_& m) {
  m.def("backproject3d", &backproject3d, py::arg("slices"), py::arg("weights"), py::arg("rotations"),
        py::arg("data_acc"), py::arg("weight_acc"), py::arg("r_max"), py::arg("pad"), py::arg("kernel") = KERNEL_LINEAR,
        "Adjoint of project3d (same kernel: 0 trilinear, 1 Gaussian): accumulate slices (and weights) into "
        "padded half-grid accumulators in place.");
  m.def("backproject3d_at", &backproject3d_at, py::arg("values"), py::arg("weights"), py::arg("rotations"),
        py::arg("ky"), py::arg("kx"), py::arg("data_acc"), py::arg("weight_acc"), py::arg("pad"),
        "Adjoint of project3d_at: accumulate (B, M) values and weights at the listed frequencies in place.");
  m.def("backproject2d", &backproject2d, py::arg("slices"), py::arg("weights"), py::arg("rotations2d"),
        py::arg("ref_index"), py::arg("data_acc"), py::arg("weight_acc"), py::arg("r_max"), py::arg("pad"),
        "Adjoint of project2d: accumulate into (K, P, P//2+1) accumulators in place.");
  m.def("backproject2d_at", &backproject2d_at, py::arg("values"), py::arg("weights"), py::arg("rotations2d"),
        py::arg("ref_index"), py::arg("ky"), py::arg("kx"), py::arg("cols"), py::arg("data_acc"),
        py::arg("weight_acc"), py::arg("pad"), py::arg("refs") = py::none(), py::arg("pred_index") = py::none(),
        "Adjoint of project2d_at for (B, M) double rows at the listed frequencies (optionally their residual "
        "around refs[pred_index]; the columns cols only, in that order), accumulated in place.");
  m.def("symmetrise3d", &symmetrise3d, py::arg("data_acc"), py::arg("weight_acc"), py::arg("ops"),
        py::arg("r_pad"), "Symmetrised copies of 3D accumulators: sum over R of acc(R^T k), trilinear.");
}
