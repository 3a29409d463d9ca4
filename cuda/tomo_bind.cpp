// pybind11 registration of the CUDA tilt kernels (cuda/tomo.cu); module_cuda.cpp calls
// register_tomo_cuda(m). Arguments are device pointers, sizes and a stream handle;
// hpcem/kernels/tomo.py checks the arrays first.
#include <cstdint>
#include <string>

#include "bind_common.hpp"

namespace py = pybind11;

namespace hpcem_tomo {  // defined in cuda/tomo.cu; each returns "" or the CUDA error
std::string tilt_project(uintptr_t vol, int nz, int ny, int nx, uintptr_t ang, long T, int W, uintptr_t out,
                         uintptr_t stream);
std::string tilt_backproject(uintptr_t img, uintptr_t ang, long T, int ny, int W, uintptr_t vol, int nz, int nx,
                             uintptr_t stream);
}  // namespace hpcem_tomo

void register_tomo_cuda(py::module_& m) {
  m.def("tilt_project", hpcem_cu::checked("tomo", hpcem_tomo::tilt_project));
  m.def("tilt_backproject", hpcem_cu::checked("tomo", hpcem_tomo::tilt_backproject));
}
