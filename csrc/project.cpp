// project: padded 3D Fourier volume + poses -> 2D Fourier slices (trilinear),
// and padded 2D references + in-plane rotations -> rotated 2D transforms (bilinear).
// Layout and conventions: csrc/common.hpp, hpcem/core/fourier.py, hpcem/kernels/projection.py.
#include "common.hpp"
#include <omp.h>

namespace {

// Trilinear sample of a padded half volume at p (any sign; Friedel for px < 0; interp.hpp).
inline cfloat sample3d(const cfloat* vol, int P, float px, float py, float pz) {
  bool flip = px < 0.f;
  if (flip) { px = -px; py = -py; pz = -pz; }
  cfloat acc(0.f, 0.f);
  linear_neighbours(P, px, py, pz, [&](int, size_t off, float w) { acc += w * vol[off]; });
  return flip ? std::conj(acc) : acc;
}

// Gaussian-kernel sum of a padded half volume at p (the forward operator whose adjoint is the
// Gaussian back-projection; interp.hpp): sum over the 27 neighbours of K(n - p) V(n).
inline cfloat sample3d_gauss(const cfloat* vol, int P, float px, float py, float pz) {
  bool flip = px < 0.f;
  if (flip) { px = -px; py = -py; pz = -pz; }
  cfloat acc(0.f, 0.f);
  gauss_neighbours(P, px, py, pz, [&](int, size_t off, float w, bool mate) {
    acc += w * (mate ? std::conj(vol[off]) : vol[off]);
  });
  return flip ? std::conj(acc) : acc;
}

inline cfloat sample2d(const cfloat* img, int P, float px, float py) {
  bool flip = px < 0.f;
  if (flip) { px = -px; py = -py; }
  cfloat acc(0.f, 0.f);
  bilinear_neighbours(P, px, py, [&](int, size_t off, float w) { acc += w * img[off]; });
  return flip ? std::conj(acc) : acc;
}

// vol (P, P, P/2+1) complex64; rot (B, 3, 3) float64 -> out (B, n, n/2+1) complex64
py::array_t<cfloat> project3d(carray<cfloat> vol, carray<double> rot, int n, double r_max, double pad, int kernel) {
  require(vol.ndim() == 3, "project3d: volume must be (P, P, P//2+1)");
  const int P = int(vol.shape(0));
  require(vol.shape(1) == P && vol.shape(2) == P / 2 + 1, "project3d: volume must be (P, P, P//2+1)");
  require(rot.ndim() == 3 && rot.shape(1) == 3 && rot.shape(2) == 3, "project3d: rotations must be (B, 3, 3)");
  require(n > 0, "project3d: n must be positive");
  require(kernel == KERNEL_LINEAR || kernel == KERNEL_GAUSS, "project3d: kernel must be 0 (linear) or 1 (gauss)");
  const long B = long(rot.shape(0));
  const int nh = n / 2 + 1;
  py::array_t<cfloat> out({size_t(B), size_t(n), size_t(nh)});
  const cfloat* V = vol.data();
  const double* R = rot.data();
  cfloat* O = out.mutable_data();
  {
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static) collapse(2)
    for (long b = 0; b < B; ++b) {
      for (int iy = 0; iy < n; ++iy) {
        const SliceGeom g(R + 9 * b, pad, true);
        const int ky = fft_freq(iy, n);
        const int xmax = row_xmax(ky, r_max, nh);
        cfloat* o = O + (size_t(b) * n + iy) * nh;
        for (int kx = 0; kx < nh; ++kx) {
          if (kx > xmax) { o[kx] = cfloat(0.f, 0.f); continue; }
          const float fkx = float(kx), fky = float(ky);
          const float px = g.cx0 * fkx + g.cx1 * fky, py = g.cy0 * fkx + g.cy1 * fky, pz = g.cz0 * fkx + g.cz1 * fky;
          o[kx] = kernel == KERNEL_GAUSS ? sample3d_gauss(V, P, px, py, pz) : sample3d(V, P, px, py, pz);
        }
      }
    }
  }
  return out;
}

// refs (K, P, P/2+1) complex64; rot (B, 2, 2) float64; index (B,) int64 (class of each slice)
py::array_t<cfloat> project2d(carray<cfloat> refs, carray<double> rot, carray<int64_t> index, int n,
                              double r_max, double pad) {
  require(refs.ndim() == 3, "project2d: references must be (K, P, P//2+1)");
  const long K = long(refs.shape(0));
  const int P = int(refs.shape(1));
  require(refs.shape(2) == P / 2 + 1, "project2d: references must be (K, P, P//2+1)");
  require(rot.ndim() == 3 && rot.shape(1) == 2 && rot.shape(2) == 2, "project2d: rotations must be (B, 2, 2)");
  const long B = long(rot.shape(0));
  require(index.ndim() == 1 && index.shape(0) == B, "project2d: ref_index must be (B,)");
  const int64_t* idx = index.data();
  for (long b = 0; b < B; ++b) require(idx[b] >= 0 && idx[b] < K, "project2d: ref_index out of range");
  const int nh = n / 2 + 1;
  py::array_t<cfloat> out({size_t(B), size_t(n), size_t(nh)});
  const cfloat* F = refs.data();
  const double* R = rot.data();
  cfloat* O = out.mutable_data();
  const size_t ref_size = size_t(P) * (P / 2 + 1);
  {
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static) collapse(2)
    for (long b = 0; b < B; ++b) {
      for (int iy = 0; iy < n; ++iy) {
        const SliceGeom g(R + 4 * b, pad, false);
        const cfloat* ref = F + ref_size * size_t(idx[b]);
        const int ky = fft_freq(iy, n);
        const int xmax = row_xmax(ky, r_max, nh);
        cfloat* o = O + (size_t(b) * n + iy) * nh;
        for (int kx = 0; kx < nh; ++kx) {
          if (kx > xmax) { o[kx] = cfloat(0.f, 0.f); continue; }
          const float fkx = float(kx), fky = float(ky);
          o[kx] = sample2d(ref, P, g.cx0 * fkx + g.cx1 * fky, g.cy0 * fkx + g.cy1 * fky);
        }
      }
    }
  }
  return out;
}

// refs (K, P, P/2+1) complex64; rot (B, 2, 2); index (B,); ky, kx (M,) int32 -> out (B, M): project2d's
// coefficients at the listed frequencies only (the E-step's coefficients inside its limit)
py::array_t<cfloat> project2d_at(carray<cfloat> refs, carray<double> rot, carray<int64_t> index, carray<int32_t> ky,
                                 carray<int32_t> kx, double pad) {
  require(refs.ndim() == 3, "project2d_at: references must be (K, P, P//2+1)");
  const long K = long(refs.shape(0));
  const int P = int(refs.shape(1));
  require(refs.shape(2) == P / 2 + 1, "project2d_at: references must be (K, P, P//2+1)");
  require(rot.ndim() == 3 && rot.shape(1) == 2 && rot.shape(2) == 2, "project2d_at: rotations must be (B, 2, 2)");
  require(ky.ndim() == 1 && kx.ndim() == 1 && ky.shape(0) == kx.shape(0), "project2d_at: ky, kx must be (M,)");
  const long B = long(rot.shape(0)), M = long(kx.shape(0));
  require(index.ndim() == 1 && index.shape(0) == B, "project2d_at: ref_index must be (B,)");
  const int64_t* idx = index.data();
  for (long b = 0; b < B; ++b) require(idx[b] >= 0 && idx[b] < K, "project2d_at: ref_index out of range");
  py::array_t<cfloat> out({size_t(B), size_t(M)});
  const cfloat* F = refs.data();
  const double* R = rot.data();
  const int32_t *KY = ky.data(), *KX = kx.data();
  cfloat* O = out.mutable_data();
  const size_t ref_size = size_t(P) * (P / 2 + 1);
  {
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static)
    for (long b = 0; b < B; ++b) {
      const SliceGeom g(R + 4 * b, pad, false);
      const cfloat* ref = F + ref_size * size_t(idx[b]);
      cfloat* o = O + size_t(b) * M;
      for (long m = 0; m < M; ++m) {
        const float fkx = float(KX[m]), fky = float(KY[m]);
        o[m] = sample2d(ref, P, g.cx0 * fkx + g.cx1 * fky, g.cy0 * fkx + g.cy1 * fky);
      }
    }
  }
  return out;
}

// vol (P, P, P/2+1) complex64; rot (B, 3, 3); ky, kx (M,) int32 -> out (B, M): the slice
// coefficients at the listed frequencies only (the E-step's coefficients inside its limit)
py::array_t<cfloat> project3d_at(carray<cfloat> vol, carray<double> rot, carray<int32_t> ky, carray<int32_t> kx,
                                 double pad) {
  require(vol.ndim() == 3, "project3d_at: volume must be (P, P, P//2+1)");
  const int P = int(vol.shape(0));
  require(vol.shape(1) == P && vol.shape(2) == P / 2 + 1, "project3d_at: volume must be (P, P, P//2+1)");
  require(rot.ndim() == 3 && rot.shape(1) == 3 && rot.shape(2) == 3, "project3d_at: rotations must be (B, 3, 3)");
  require(ky.ndim() == 1 && kx.ndim() == 1 && ky.shape(0) == kx.shape(0), "project3d_at: ky, kx must be (M,)");
  const long B = long(rot.shape(0)), M = long(kx.shape(0));
  py::array_t<cfloat> out({size_t(B), size_t(M)});
  const cfloat* V = vol.data();
  const double* R = rot.data();
  const int32_t *KY = ky.data(), *KX = kx.data();
  cfloat* O = out.mutable_data();
  {
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static)
    for (long b = 0; b < B; ++b) {
      const SliceGeom g(R + 9 * b, pad, true);
      cfloat* o = O + size_t(b) * M;
      for (long m = 0; m < M; ++m) {
        const float fkx = float(KX[m]), fky = float(KY[m]);
        o[m] = sample3d(V, P, g.cx0 * fkx + g.cx1 * fky, g.cy0 * fkx + g.cy1 * fky, g.cz0 * fkx + g.cz1 * fky);
      }
    }
  }
  return out;
}

}  // namespace

void register_project(py::module_& m) {
  m.def("project3d", &project3d, py::arg("vol_ft_pad"), py::arg("rotations"), py::arg("n"),
        py::arg("r_max"), py::arg("pad"), py::arg("kernel") = KERNEL_LINEAR,
        "Fourier slices (B, n, n//2+1) of a padded half volume at pad * A^T (kx, ky, 0), trilinear "
        "(kernel 0) or the Gaussian kernel sum (kernel 1).");
  m.def("project3d_at", &project3d_at, py::arg("vol_ft_pad"), py::arg("rotations"), py::arg("ky"), py::arg("kx"),
        py::arg("pad"), "Slice coefficients (B, M) at the listed frequencies (ky, kx) only.");
  m.def("project2d", &project2d, py::arg("refs_ft_pad"), py::arg("rotations2d"), py::arg("ref_index"),
        py::arg("n"), py::arg("r_max"), py::arg("pad"),
        "Rotated transforms (B, n, n//2+1) of padded half references at pad * R^T k, bilinear.");
  m.def("project2d_at", &project2d_at, py::arg("refs_ft_pad"), py::arg("rotations2d"), py::arg("ref_index"),
        py::arg("ky"), py::arg("kx"), py::arg("pad"),
        "Rotated reference coefficients (B, M) at the listed frequencies (ky, kx) only.");
}
