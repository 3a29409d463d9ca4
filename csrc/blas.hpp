// The BLAS the CPU kernels call: scipy's OpenBLAS, borrowed through the function pointers
// that scipy.linalg.cython_blas exports as capsules (no link-time BLAS), plus OpenBLAS's
// process-wide thread-count control where that library is loaded.
#pragma once

namespace hpcem_blas {

using sgemm_t = void (*)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                         float*, float*, int*);
using dgemm_t = void (*)(char*, char*, int*, int*, int*, double*, double*, int*, double*, int*,
                         double*, double*, int*);

// OpenBLAS's thread-count controls, found among the loaded libraries (the one scipy links;
// numpy's 64-bit-integer OpenBLAS exports suffixed names and is not touched). Both null for
// other BLAS vendors.
struct Threads {
  void (*set)(int) = nullptr;
  int (*get)() = nullptr;
};

struct Blas {
  sgemm_t sgemm = nullptr;
  dgemm_t dgemm = nullptr;
  Threads threads;
};

// Resolved on the first call; every call must hold the GIL (the first imports scipy).
// Throws pybind11::error_already_set when scipy's capsules cannot be read.
const Blas& blas();

// Row-major C (m x n) = alpha * op(A) @ op(B) + beta * C through the column-major BLAS:
// C^T = op(B)^T op(A)^T. ta: A is stored k x m (row-major) and used transposed; tb: B is
// stored n x k and used transposed (tb alone gives C = A @ B^T for B row-major n x k).
template <typename T, typename F>
inline void gemm_rm(F f, bool ta, bool tb, int m, int n, int k, T alpha, const T* A, int lda,
                    const T* B, int ldb, T beta, T* C, int ldc) {
  if (m <= 0 || n <= 0) return;
  char opb = tb ? 'T' : 'N', opa = ta ? 'T' : 'N';
  f(&opb, &opa, &n, &m, &k, &alpha, const_cast<T*>(B), &ldb, const_cast<T*>(A), &lda, &beta,
    C, &ldc);
}

}  // namespace hpcem_blas
