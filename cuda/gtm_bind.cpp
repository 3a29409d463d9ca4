// pybind11 registration of the CUDA GTM kernels (cuda/gtm.cu). module_cuda.cpp calls
// register_gtm_cuda(m); arguments are device pointers (cupy .data.ptr), sizes and a stream
// handle, like the other _cuda entry points. hpcem/kernels/gtm.py checks the arrays first.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace hpcem_gtm {  // defined in cuda/gtm.cu; each returns "" or the CUDA error
std::string gtm_solve(uintptr_t Phi, uintptr_t G, uintptr_t H, long K, long M, long D, double lam,
                      long chunk, uintptr_t Wout, uintptr_t stream);
std::string gtm_distances(uintptr_t Z, uintptr_t Y, long N, long L, long K, uintptr_t out,
                          uintptr_t stream);
std::string gtm_responsibilities(uintptr_t delta, uintptr_t a, long N, long K, double beta,
                                 uintptr_t logZ, uintptr_t rdelta, uintptr_t kmax, uintptr_t rmax,
                                 uintptr_t stream);
std::string gtm_accumulate(uintptr_t R, uintptr_t Z, long N, long K, long L, uintptr_t out,
                           uintptr_t stream);
}  // namespace hpcem_gtm

namespace {
void check(const std::string& e) {
  if (!e.empty()) throw std::runtime_error("hpcem._cuda (gtm): " + e);
}
}  // namespace

void register_gtm_cuda(py::module_& m) {
  m.def(
      "gtm_solve",
      [](uintptr_t Phi, uintptr_t G, uintptr_t H, long K, long M, long D, double lam, long chunk,
         uintptr_t W, uintptr_t stream) {
        py::gil_scoped_release nogil;
        check(hpcem_gtm::gtm_solve(Phi, G, H, K, M, D, lam, chunk, W, stream));
      },
      py::arg("Phi"), py::arg("G"), py::arg("H"), py::arg("K"), py::arg("M"), py::arg("D"),
      py::arg("lam"), py::arg("chunk"), py::arg("W"), py::arg("stream"),
      "W (M, D) complex64 <- per pixel (Phi^T diag(G[:,d]) Phi + lam I)^-1 Phi^T H[:,d]");
  m.def(
      "gtm_distances",
      [](uintptr_t Z, uintptr_t Y, long N, long L, long K, uintptr_t out, uintptr_t stream) {
        py::gil_scoped_release nogil;
        check(hpcem_gtm::gtm_distances(Z, Y, N, L, K, out, stream));
      },
      py::arg("Z"), py::arg("Ymat"), py::arg("N"), py::arg("L"), py::arg("K"), py::arg("out"),
      py::arg("stream"), "out (N, K) float32 <- Z (N, L) @ Ymat (K, L)^T");
  m.def(
      "gtm_responsibilities",
      [](uintptr_t delta, uintptr_t a, long N, long K, double beta, uintptr_t logZ,
         uintptr_t rdelta, uintptr_t kmax, uintptr_t rmax, uintptr_t stream) {
        py::gil_scoped_release nogil;
        check(hpcem_gtm::gtm_responsibilities(delta, a, N, K, beta, logZ, rdelta, kmax, rmax,
                                              stream));
      },
      py::arg("delta"), py::arg("a"), py::arg("N"), py::arg("K"), py::arg("beta"),
      py::arg("logZ"), py::arg("rdelta"), py::arg("kmax"), py::arg("rmax"), py::arg("stream"),
      "in place: delta (N, K) -> responsibilities; fills logZ, rdelta, kmax, rmax (N,)");
  m.def(
      "gtm_accumulate",
      [](uintptr_t R, uintptr_t Z, long N, long K, long L, uintptr_t out, uintptr_t stream) {
        py::gil_scoped_release nogil;
        check(hpcem_gtm::gtm_accumulate(R, Z, N, K, L, out, stream));
      },
      py::arg("R"), py::arg("Z"), py::arg("N"), py::arg("K"), py::arg("L"), py::arg("out"),
      py::arg("stream"), "out (K, L) float64 <- R (N, K)^T @ Z (N, L)");
}
