// pybind11 registration of the CUDA tilt kernels (cuda/tomo.cu); module_cuda.cpp calls
// register_tomo_cuda(m). Arguments are device pointers, sizes and a stream handle;
// hpcem/kernels/tomo.py checks the arrays first.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace hpcem_tomo {  // defined in cuda/tomo.cu; each returns "" or the CUDA error
std::string tilt_project(uintptr_t vol, int nz, int ny, int nx, uintptr_t ang, long T, int W, uintptr_t out,
                         uintptr_t stream);
std::string tilt_backproject(uintptr_t img, uintptr_t ang, long T, int ny, int W, uintptr_t vol, int nz, int nx,
                             uintptr_t stream);
}  // namespace hpcem_tomo

namespace {
void check(const std::string& e) {
  if (!e.empty()) throw std::runtime_error("hpcem._cuda (tomo): " + e);
}
}  // namespace

void register_tomo_cuda(py::module_& m) {
  m.def("tilt_project", [](uintptr_t vol, int nz, int ny, int nx, uintptr_t ang, long T, int W, uintptr_t out,
                           uintptr_t stream) { check(hpcem_tomo::tilt_project(vol, nz, ny, nx, ang, T, W, out, stream)); });
  m.def("tilt_backproject", [](uintptr_t img, uintptr_t ang, long T, int ny, int W, uintptr_t vol, int nz, int nx,
                               uintptr_t stream) {
    check(hpcem_tomo::tilt_backproject(img, ang, T, ny, W, vol, nz, nx, stream));
  });
}
