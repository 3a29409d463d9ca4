// hpcem._core: the CPU (C++/OpenMP) kernels. Each family registers itself.
#include "common.hpp"
#include <omp.h>

PYBIND11_MODULE(_core, m) {
  m.doc() = "hpcem CPU kernels (C++/OpenMP)";
  m.def("max_threads", []() { return omp_get_max_threads(); });
  m.def("set_threads", [](int n) { omp_set_num_threads(n); });
  register_project(m);
  register_backproject(m);
  register_marginalise(m);
  register_gtm(m);
  register_tv(m);
  register_tomo(m);
  register_importance(m);
}
