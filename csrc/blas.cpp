// csrc/blas.hpp: scipy's cython_blas capsules and OpenBLAS's thread control, looked up once.
#include "blas.hpp"

#include <dlfcn.h>
#include <link.h>

#include <cstring>

#include "common.hpp"

namespace hpcem_blas {
namespace {

int find_openblas(struct dl_phdr_info* info, size_t, void* data) {
  auto* bt = static_cast<Threads*>(data);
  if (bt->set || !info->dlpi_name || !std::strstr(info->dlpi_name, "openblas")) return 0;
  void* h = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
  if (!h) return 0;
  const char* names[][2] = {{"scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"},
                            {"openblas_set_num_threads", "openblas_get_num_threads"}};
  for (auto& nm : names) {
    void* sp = dlsym(h, nm[0]);
    void* gp = dlsym(h, nm[1]);
    if (sp && gp) {
      bt->set = reinterpret_cast<void (*)(int)>(sp);
      bt->get = reinterpret_cast<int (*)()>(gp);
      break;
    }
  }
  dlclose(h);  // NOLOAD handle: drops only the reference just taken
  return bt->set ? 1 : 0;
}

void* capsule(const py::object& capi, const char* name) {
  py::object cap = capi[name];
  PyObject* c = cap.ptr();
  void* p = PyCapsule_GetPointer(c, PyCapsule_GetName(c));
  if (!p) throw py::error_already_set();
  return p;
}

Blas resolve() {
  py::object capi = py::module_::import("scipy.linalg.cython_blas").attr("__pyx_capi__");
  Blas b;
  b.sgemm = reinterpret_cast<sgemm_t>(capsule(capi, "sgemm"));
  b.dgemm = reinterpret_cast<dgemm_t>(capsule(capi, "dgemm"));
  dl_iterate_phdr(find_openblas, &b.threads);  // after the import: scipy's OpenBLAS is loaded
  return b;
}

}  // namespace

const Blas& blas() {
  // Filled by the first caller, under the GIL like every call. Not a guarded static: the
  // import may release the GIL, and a second thread blocking on the guard while holding the
  // GIL would deadlock. Two early callers may both resolve; they store the same pointers.
  // A throwing first call leaves it empty: retried next call.
  static Blas b;
  if (!b.sgemm) {
    const Blas r = resolve();
    b.dgemm = r.dgemm;
    b.threads = r.threads;
    b.sgemm = r.sgemm;  // last: marks it resolved
  }
  return b;
}

}  // namespace hpcem_blas
