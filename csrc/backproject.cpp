#include "common.hpp"
void register_backproject(py::module_& m) {}
