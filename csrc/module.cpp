// hpcem._core: the CPU (C++/OpenMP) kernels. Each family registers itself.
#include "common.hpp"
#include "blas.hpp"
#include <omp.h>

PYBIND11_MODULE(_core, m) {
  m.doc() = "hpcem CPU kernels (C++/OpenMP)";
  m.def("max_threads", []() { return omp_get_max_threads(); });
  // --j: OpenMP threads and OpenBLAS's threads alike (the BLAS-threaded SGEMMs, e.g.
  // coarse_diff2's mode 0, otherwise run on every core whatever --j says).
  m.def("set_threads", [](int n) {
    omp_set_num_threads(n);
    const hpcem_blas::Blas& b = hpcem_blas::blas();
    if (b.threads.set) b.threads.set(n);
  });
  m.def("blas_threads", []() {
    const hpcem_blas::Blas& b = hpcem_blas::blas();
    return b.threads.get ? b.threads.get() : -1;
  });
  register_project(m);
  register_backproject(m);
  register_marginalise(m);
  register_gtm(m);
  register_tv(m);
  register_tomo(m);
  register_importance(m);
}
