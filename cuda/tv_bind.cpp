// pybind11 registration of the CUDA regularised-reconstruction stencils (cuda/tv.cu);
// module_cuda.cpp calls register_tv_cuda(m). Argument order: hpcem/kernels/tv.py.
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "tv_cuda.hpp"

namespace py = pybind11;

namespace {
void check(const std::string& e) {
  if (!e.empty()) throw std::runtime_error("hpcem._cuda (tv): " + e);
}
}  // namespace

void register_tv_cuda(py::module_& m) {
  m.def("tv_weights", [](uintptr_t x, long nz, long ny, long nx, double eps, double epsp, double mu, uintptr_t wl1,
                         uintptr_t wtv, uintptr_t stream) {
    py::gil_scoped_release nogil;
    check(hpcem_tv::weights(x, nz, ny, nx, eps, epsp, mu, wl1, wtv, stream));
  });
  m.def("tv_prox_step", [](uintptr_t y, uintptr_t graw, uintptr_t xp, uintptr_t wl1, uintptr_t wtv, uintptr_t g,
                           long n, double mu, double beta, double gamma2, double t, double alpha, uintptr_t z,
                           uintptr_t gz, uintptr_t sums, uintptr_t stream) {
    py::gil_scoped_release nogil;
    check(hpcem_tv::prox_step(y, graw, xp, wl1, wtv, g, n, mu, beta, gamma2, t, alpha, z, gz, sums, stream));
  });
  m.def("tv_penalties", [](uintptr_t z, uintptr_t xp, uintptr_t wl1, uintptr_t wtv, long nz, long ny, long nx,
                           double mu, uintptr_t sums, uintptr_t stream) {
    py::gil_scoped_release nogil;
    check(hpcem_tv::penalties(z, xp, wl1, wtv, nz, ny, nx, mu, sums, stream));
  });
  m.def("tv_data_value", [](uintptr_t Gz, uintptr_t Zc, uintptr_t Wd, long nz, long ny, long nx, uintptr_t out,
                            uintptr_t stream) {
    py::gil_scoped_release nogil;
    check(hpcem_tv::data_value(Gz, Zc, Wd, nz, ny, nx, out, stream));
  });
  m.def("tv_extrapolate", [](uintptr_t p, uintptr_t q, uintptr_t r, long N, double a, double b, uintptr_t out,
                             uintptr_t stream) {
    py::gil_scoped_release nogil;
    check(hpcem_tv::extrapolate(p, q, r, N, a, b, out, stream));
  });
  m.def("tv_extrapolate_residual", [](uintptr_t Gp, uintptr_t Gq, uintptr_t Gr, long N, double a, double b,
                                      uintptr_t Wd, uintptr_t Zc, uintptr_t Gy, uintptr_t R, uintptr_t stream) {
    py::gil_scoped_release nogil;
    check(hpcem_tv::extrapolate_residual(Gp, Gq, Gr, N, a, b, Wd, Zc, Gy, R, stream));
  });
}
