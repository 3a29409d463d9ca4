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

namespace py = pybind11;
using cfloat = std::complex<float>;

template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// frequency of row/slice index i in an FFT-ordered axis of length n
inline int fft_freq(int i, int n) { return i <= (n - 1) / 2 ? i : i - n; }
// index of frequency f in an FFT-ordered axis of length n
inline int fft_index(int f, int n) { return f >= 0 ? f : f + n; }

inline void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

// registration hooks, one per kernel family (csrc/<family>.cpp)
void register_project(py::module_& m);
void register_backproject(py::module_& m);
void register_marginalise(py::module_& m);
