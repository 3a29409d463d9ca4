// hpcem._cuda: CUDA twins of the CPU kernels. Arguments are raw device pointers
// (cupy's .data.ptr) and sizes; hpcem/kernels/ checks the arrays first.
#include <pybind11/pybind11.h>
#include <stdexcept>
#include "launchers.hpp"

namespace py = pybind11;
using hpcem_cuda::project;

void register_marginalise_cuda(py::module_& m);
void register_gtm_cuda(py::module_& m);
void register_tv_cuda(py::module_& m);
void register_tomo_cuda(py::module_& m);
void register_importance_cuda(py::module_& m);

static void ok(const std::string& err) {
  if (!err.empty()) throw std::runtime_error("hpcem._cuda: " + err);
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "hpcem CUDA kernels (device pointers in; see hpcem/kernels/)";
  m.def("device_count", &hpcem_cuda::device_count);
  m.def("project3d", [](uintptr_t vol, int P, uintptr_t rot, long B, int n, double r_max, double pad, int kernel,
                        uintptr_t out, uintptr_t stream) {
    ok(project(vol, P, rot, 0, B, n, r_max, pad, true, out, stream, kernel));
  });
  m.def("project2d", [](uintptr_t refs, long K, int P, uintptr_t rot, uintptr_t idx, long B, int n, double r_max,
                        double pad, uintptr_t out, uintptr_t stream) {
    (void)K;
    ok(project(refs, P, rot, idx, B, n, r_max, pad, false, out, stream));
  });
  m.def("backproject3d", [](uintptr_t slices, uintptr_t weights, uintptr_t rot, long B, int n, uintptr_t data,
                            uintptr_t weight, int P, bool dbl, double r_max, double pad, int kernel, uintptr_t stream) {
    ok(hpcem_cuda::backproject(slices, weights, rot, 0, B, n, data, weight, P, dbl, r_max, pad, true, stream, kernel));
  });
  m.def("backproject2d", [](uintptr_t slices, uintptr_t weights, uintptr_t rot, uintptr_t idx, long B, int n,
                            uintptr_t data, uintptr_t weight, long K, int P, bool dbl, double r_max, double pad,
                            uintptr_t stream) {
    (void)K;
    ok(hpcem_cuda::backproject(slices, weights, rot, idx, B, n, data, weight, P, dbl, r_max, pad, false, stream));
  });
  m.def("symmetrise3d", [](uintptr_t data, uintptr_t weight, uintptr_t out_data, uintptr_t out_weight, int P,
                           uintptr_t ops, int G, double r_pad, bool dbl, uintptr_t stream) {
    ok(hpcem_cuda::symmetrise3d(data, weight, out_data, out_weight, P, ops, G, r_pad, dbl, stream));
  });
  m.def("project3d_at", [](uintptr_t vol, int P, uintptr_t rot, long B, uintptr_t ky, uintptr_t kx, long M,
                           double pad, uintptr_t out, uintptr_t stream) {
    ok(hpcem_cuda::project_at(vol, P, rot, B, ky, kx, M, pad, out, stream));
  });
  m.def("backproject3d_at", [](uintptr_t values, uintptr_t weights, uintptr_t rot, long B, uintptr_t ky, uintptr_t kx,
                               long M, uintptr_t data, uintptr_t weight, int P, bool dbl, double pad, uintptr_t stream) {
    ok(hpcem_cuda::backproject_at(values, weights, rot, B, ky, kx, M, data, weight, P, dbl, pad, stream));
  });
  register_marginalise_cuda(m);
  register_gtm_cuda(m);
  register_tv_cuda(m);
  register_tomo_cuda(m);
  register_importance_cuda(m);
}
