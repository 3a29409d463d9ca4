// pybind11 registration of the CUDA marginalisation kernels (cuda/marginalise.cu).
// module_cuda.cpp calls register_marginalise_cuda(m); arguments are device pointers
// (cupy .data.ptr), sizes and a stream handle, like the other _cuda entry points.
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "marginalise_cuda.hpp"

namespace py = pybind11;

namespace {
void check(const std::string& e) {
  if (!e.empty()) throw std::runtime_error("hpcem._cuda (marginalise): " + e);
}
}  // namespace

void register_marginalise_cuda(py::module_& m) {
  m.def("marg_coarse_diff2", [](uintptr_t X, uintptr_t ctf, uintptr_t s, uintptr_t ph, uintptr_t R, long B,
                                long T, long J, long M, uintptr_t out, uintptr_t stream) {
    py::gil_scoped_release nogil;
    check(hpcem_marg::coarse_diff2(X, ctf, s, ph, R, B, T, J, M, out, stream));
  });
  m.def("marg_pair_diff2", [](uintptr_t X, uintptr_t ctf, uintptr_t s, uintptr_t ph, uintptr_t R, long M,
                              uintptr_t pi, uintptr_t pt, uintptr_t pj, long P, uintptr_t out, uintptr_t stream) {
    py::gil_scoped_release nogil;
    check(hpcem_marg::pair_diff2(X, ctf, s, ph, R, M, pi, pt, pj, P, out, stream));
  });
  m.def("marg_accumulate", [](uintptr_t X, uintptr_t ctf, uintptr_t s, uintptr_t ph, uintptr_t R, long M,
                              uintptr_t pi, uintptr_t pt, uintptr_t pj, uintptr_t w, long P, uintptr_t data,
                              bool data_double, uintptr_t weight, bool weight_double, uintptr_t noise,
                              uintptr_t stream) {
    py::gil_scoped_release nogil;
    check(hpcem_marg::accumulate(X, ctf, s, ph, R, M, pi, pt, pj, w, P, data, data_double, weight,
                                 weight_double, noise, stream));
  });
  m.def("marg_logsumexp", [](uintptr_t diff2, uintptr_t lpt, uintptr_t lpj, long B, long T, long J,
                             uintptr_t logZ, uintptr_t pmax, uintptr_t arg, uintptr_t prob, uintptr_t stream) {
    py::gil_scoped_release nogil;
    check(hpcem_marg::logsumexp(diff2, lpt, lpj, B, T, J, logZ, pmax, arg, prob, stream));
  });
}
