// Shared helpers for hpcem's CPU kernels: array access, Fourier index wrapping.
// Conventions (see hpcem/core/fourier.py): half transforms of shape (..., n, n/2+1),
// rows in FFT order (row i is frequency i for i <= (n-1)/2, else i - n).
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <complex>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <algorithm>
#include <cmath>

#include "fourier_index.hpp"  // fft_freq, fft_index, freq_min, freq_max
#include "interp.hpp"         // interpolation weights (trilinear, bilinear, Gaussian), shared with cuda/

namespace py = pybind11;
using cfloat = std::complex<float>;

template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

inline void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

// registration hooks, one per kernel family (csrc/<family>.cpp)
void register_project(py::module_& m);
void register_backproject(py::module_& m);
void register_marginalise(py::module_& m);
void register_marginalise_posteriors(py::module_& m);  // called by register_marginalise
void register_gtm(py::module_& m);
void register_tv(py::module_& m);
void register_tomo(py::module_& m);
void register_importance(py::module_& m);

// ---------------------------------------------------------------------------
// Fourier-space interpolation on a padded half grid (project / backproject).
//
// A padded half transform of box P has shape (P, P, P/2+1) [z, y, x] (3D) or
// (P, P/2+1) [y, x] (2D). Representable frequencies along the FFT-ordered axes
// are fmin(P) .. fmax(P); along x, 0 .. P/2. A trilinear corner outside these
// ranges holds zero (project) and receives nothing (backproject), so the two
// kernels stay exact adjoints (freq_min / freq_max: fourier_index.hpp).

// Sample position of the 2D frequency (kx, ky) under a pose: p = pad * A^T (kx, ky, 0).
// Coefficients precomputed per slice: px = cx0*kx + cx1*ky, etc.
struct SliceGeom {
  float cx0, cx1, cy0, cy1, cz0, cz1;
  SliceGeom(const double* A, double pad, bool three_d) {
    if (three_d) {  // A row-major 3x3, A^T k = (A00 kx + A10 ky, A01 kx + A11 ky, A02 kx + A12 ky)
      cx0 = float(pad * A[0]); cx1 = float(pad * A[3]);
      cy0 = float(pad * A[1]); cy1 = float(pad * A[4]);
      cz0 = float(pad * A[2]); cz1 = float(pad * A[5]);
    } else {        // A row-major 2x2, A^T k = (A00 kx + A10 ky, A01 kx + A11 ky)
      cx0 = float(pad * A[0]); cx1 = float(pad * A[2]);
      cy0 = float(pad * A[1]); cy1 = float(pad * A[3]);
      cz0 = 0.f; cz1 = 0.f;
    }
  }
};

// Conservative range [a, b] of integer kx in [0, xmax] for which
// lo <= alpha*kx + beta < hi may hold (one sample of margin on each side).
// Empty when a > b.
inline void kx_interval(double alpha, double beta, double lo, double hi, int xmax, int& a, int& b) {
  if (std::abs(alpha) < 1e-9) {
    if (beta >= lo - 1e-4 && beta < hi + 1e-4) { a = 0; b = xmax; } else { a = 1; b = 0; }
    return;
  }
  double t1 = (lo - beta) / alpha, t2 = (hi - beta) / alpha;
  if (t1 > t2) std::swap(t1, t2);
  t1 = std::max(t1, -2.0); t2 = std::min(t2, double(xmax) + 2.0);
  a = std::max(0, int(std::floor(t1)) - 1);
  b = std::min(xmax, int(std::ceil(t2)) + 1);
}

// Number of slabs the accumulator is split into for the race-free back-projection
// (each slab of FFT-ordered frequencies is written by exactly one thread).
inline int n_slabs(int P, int threads) {
  int s = std::max(1, std::min(P / 4, 4 * threads));
  return std::max(1, std::min(s, P));
}

// Largest kx (<= nh-1) with kx^2 + ky^2 <= r_max^2; -1 when the row is outside.
inline int row_xmax(int ky, double r_max, int nh) {
  double r2 = r_max * r_max, rem = r2 - double(ky) * ky;
  if (rem < 0) return -1;
  int x = int(std::floor(std::sqrt(rem)));
  while (double(x + 1) * (x + 1) + double(ky) * ky <= r2) ++x;
  while (x >= 0 && double(x) * x + double(ky) * ky > r2) --x;
  return std::min(x, nh - 1);
}
