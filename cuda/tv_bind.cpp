// pybind11 registration of the CUDA regularised-reconstruction stencils (cuda/tv.cu);
// module_cuda.cpp calls register_tv_cuda(m). Argument order: hpcem/kernels/tv.py.
#include "bind_common.hpp"
#include "tv_cuda.hpp"

namespace py = pybind11;

void register_tv_cuda(py::module_& m) {
  using hpcem_cu::checked;
  m.def("tv_weights", checked("tv", hpcem_tv::weights));
  m.def("tv_prox_step", checked("tv", hpcem_tv::prox_step));
  m.def("tv_penalties", checked("tv", hpcem_tv::penalties));
  m.def("tv_data_value", checked("tv", hpcem_tv::data_value));
  m.def("tv_extrapolate", checked("tv", hpcem_tv::extrapolate));
  m.def("tv_extrapolate_residual", checked("tv", hpcem_tv::extrapolate_residual));
}
