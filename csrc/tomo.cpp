// tomo: real-space single-axis tilt geometry (tilt axis = y) for tomograms.
//
// A volume (nz, ny, nx) [z, y, x] and a tilt series (T, ny, W): voxel (ix, iy, iz) at
// x = ix - nx/2, z = iz - nz/2 (hpcem's origin n//2) lands at image column
//     u = x cos(t) + z sin(t) + W/2        (row iy, tilt t, angles in radians)
// and is spread linearly over columns floor(u), floor(u)+1 (weights 1-f, f); columns outside
// [0, W) receive nothing.
//
// tilt_project:      images[t, iy, :] = sum over voxels of the row of their spread values
//                    (the ray sums of the sample rotated by t about y, viewed along z);
// tilt_backproject:  volume[iz, iy, ix] += sum_t images[t, iy, u] (linear interpolation at u),
//                    the exact adjoint of tilt_project.
// Both are race-free (projection: one thread per image row; back-projection: one thread per
// volume row), so the results are bitwise independent of the thread count.
#include "common.hpp"
#include <omp.h>
#include <vector>

namespace {

struct TiltRow {  // u(ix) = u0 + c * ix for one (tilt, iz)
  double u0, c;
};

inline TiltRow tilt_row(double ang, int iz, int nz, int nx, int W) {
  const double c = std::cos(ang), s = std::sin(ang);
  return {double(-(nx / 2)) * c + double(iz - nz / 2) * s + double(W / 2), c};
}

// Column u0 = floor(u) and weight f = u - u0 of a voxel at u; false when neither u0 nor u0 + 1
// lies in [0, W).
inline bool column_of(double u, int W, int& u0, double& f) {
  const double fl = std::floor(u);
  u0 = int(fl);
  f = u - fl;
  return u0 >= -1 && u0 < W;
}

// volume (nz, ny, nx) float32, angles (T,) float64 -> images (T, ny, W) float32
py::array_t<float> tilt_project(carray<float> vol, carray<double> angles, int W) {
  require(vol.ndim() == 3, "tilt_project: volume must be (nz, ny, nx)");
  require(angles.ndim() == 1, "tilt_project: angles must be (T,)");
  require(W > 0, "tilt_project: width must be positive");
  const int nz = int(vol.shape(0)), ny = int(vol.shape(1)), nx = int(vol.shape(2));
  const long T = long(angles.shape(0));
  py::array_t<float> out({size_t(T), size_t(ny), size_t(W)});
  const float* V = vol.data();
  const double* A = angles.data();
  float* O = out.mutable_data();
  {
    py::gil_scoped_release nogil;
#pragma omp parallel
    {
      std::vector<double> row(static_cast<size_t>(W) + 1);
#pragma omp for schedule(static) collapse(2)
      for (long t = 0; t < T; ++t) {
        for (int iy = 0; iy < ny; ++iy) {
          std::fill(row.begin(), row.end(), 0.0);
          for (int iz = 0; iz < nz; ++iz) {
            const TiltRow g = tilt_row(A[t], iz, nz, nx, W);
            const float* v = V + (size_t(iz) * ny + iy) * nx;
            for (int ix = 0; ix < nx; ++ix) {
              int u0;
              double f;
              if (!column_of(g.u0 + g.c * ix, W, u0, f)) continue;
              if (u0 >= 0) row[size_t(u0)] += (1.0 - f) * v[ix];
              if (u0 + 1 < W) row[size_t(u0 + 1)] += f * v[ix];
            }
          }
          float* o = O + (size_t(t) * ny + iy) * W;
          for (int u = 0; u < W; ++u) o[u] = float(row[size_t(u)]);
        }
      }
    }
  }
  return out;
}

// images (T, ny, W) float32, angles (T,) float64, volume (nz, ny, nx) float32: volume += P^T images
void tilt_backproject(carray<float> images, carray<double> angles, py::array_t<float, py::array::c_style> vol) {
  require(images.ndim() == 3, "tilt_backproject: images must be (T, ny, W)");
  require(vol.ndim() == 3, "tilt_backproject: volume must be (nz, ny, nx)");
  const long T = long(images.shape(0));
  const int ny = int(images.shape(1)), W = int(images.shape(2));
  require(angles.ndim() == 1 && long(angles.shape(0)) == T, "tilt_backproject: angles must be (T,)");
  require(int(vol.shape(1)) == ny, "tilt_backproject: images and volume differ in ny");
  const int nz = int(vol.shape(0)), nx = int(vol.shape(2));
  const float* I = images.data();
  const double* A = angles.data();
  float* V = vol.mutable_data();
  {
    py::gil_scoped_release nogil;
#pragma omp parallel
    {
      std::vector<double> acc(static_cast<size_t>(nx));
#pragma omp for schedule(static) collapse(2)
      for (int iz = 0; iz < nz; ++iz) {
        for (int iy = 0; iy < ny; ++iy) {
          std::fill(acc.begin(), acc.end(), 0.0);
          for (long t = 0; t < T; ++t) {
            const TiltRow g = tilt_row(A[t], iz, nz, nx, W);
            const float* img = I + (size_t(t) * ny + iy) * W;
            for (int ix = 0; ix < nx; ++ix) {
              int u0;
              double f;
              if (!column_of(g.u0 + g.c * ix, W, u0, f)) continue;
              double s = 0.0;
              if (u0 >= 0) s += (1.0 - f) * img[u0];
              if (u0 + 1 < W) s += f * img[u0 + 1];
              acc[size_t(ix)] += s;
            }
          }
          float* v = V + (size_t(iz) * ny + iy) * nx;
          for (int ix = 0; ix < nx; ++ix) v[ix] += float(acc[size_t(ix)]);
        }
      }
    }
  }
}

}  // namespace

void register_tomo(py::module_& m) {
  m.def("tilt_project", &tilt_project, py::arg("volume"), py::arg("angles"), py::arg("width"),
        "Tilt series (T, ny, W) of a volume (nz, ny, nx) about the y axis (angles in radians), linear in u.");
  m.def("tilt_backproject", &tilt_backproject, py::arg("images"), py::arg("angles"), py::arg("volume"),
        "volume += the exact adjoint of tilt_project applied to images (T, ny, W), in place.");
}
