// Shared by the pybind11 registrations of the CUDA twins (cuda/*_bind.cpp): a host entry point
// returns "" or the CUDA error; bound through `checked`, it runs without the GIL and a non-empty
// error becomes one RuntimeError "hpcem._cuda (<family>): <error>".
#pragma once
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

namespace hpcem_cu {

inline void raise_if_error(const char* family, const std::string& e) {
  if (!e.empty()) throw std::runtime_error(std::string("hpcem._cuda (") + family + "): " + e);
}

// a Python-callable wrapper of `std::string f(args...)` (same arguments)
template <typename... A>
auto checked(const char* family, std::string (*f)(A...)) {
  return [family, f](A... args) {
    std::string e;
    {
      pybind11::gil_scoped_release nogil;
      e = f(args...);
    }
    raise_if_error(family, e);
  };
}

}  // namespace hpcem_cu
