#include "common.hpp"
void register_project(py::module_& m) {}
