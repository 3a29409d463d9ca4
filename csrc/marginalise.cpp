#include "common.hpp"
void register_marginalise(py::module_& m) {}
