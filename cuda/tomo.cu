// CUDA twins of csrc/tomo.cpp (single-axis tilt projection / back-projection in real space):
// same geometry and weights, device pointers in. The projection is written as a gather over
// the voxels that reach each image column (no atomics); results match the CPU kernels up to
// the order of float sums.
#include <cmath>
#include <cstdint>
#include <string>

#include "cuda_common.cuh"

namespace {

using hpcem_cu::blocks;
using hpcem_cu::last;
using hpcem_cu::P_;
using hpcem_cu::stream_of;

__device__ inline double row_u0(double ang, int iz, int nz, int nx, int W) {
  return double(-(nx / 2)) * cos(ang) + double(iz - nz / 2) * sin(ang) + double(W / 2);
}

// one thread per image pixel (t, iy, u): the voxels whose column u(ix) lies in [u-1, u+1)
__global__ void k_tilt_project(const float* __restrict__ vol, int nz, int ny, int nx, const double* __restrict__ ang,
                               long T, int W, float* __restrict__ out) {
  const long id = long(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= T * ny * W) return;
  const int u = int(id % W);
  const int iy = int((id / W) % ny);
  const long t = id / (long(W) * ny);
  const double c = cos(ang[t]);
  double acc = 0.0;
  for (int iz = 0; iz < nz; ++iz) {
    const double a = row_u0(ang[t], iz, nz, nx, W);
    int lo = 0, hi = nx - 1;
    if (fabs(c) > 1e-12) {
      double t1 = (u - 1 - a) / c, t2 = (u + 1 - a) / c;
      if (t1 > t2) { const double s = t1; t1 = t2; t2 = s; }
      lo = max(0, int(floor(t1)) - 1);
      hi = min(nx - 1, int(ceil(t2)) + 1);
    }
    const float* v = vol + (size_t(iz) * ny + iy) * nx;
    for (int ix = lo; ix <= hi; ++ix) {
      const double ux = a + c * ix;
      const double fl = floor(ux);
      const int u0 = int(fl);
      const double f = ux - fl;
      if (u0 == u) acc += (1.0 - f) * v[ix];
      else if (u0 + 1 == u) acc += f * v[ix];
    }
  }
  out[id] = float(acc);
}

// one thread per voxel: volume += sum_t images[t, iy, u(ix)] (linear)
__global__ void k_tilt_backproject(const float* __restrict__ img, const double* __restrict__ ang, long T, int ny, int W,
                                   float* __restrict__ vol, int nz, int nx) {
  const long id = long(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= long(nz) * ny * nx) return;
  const int ix = int(id % nx);
  const int iy = int((id / nx) % ny);
  const int iz = int(id / (long(nx) * ny));
  double acc = 0.0;
  for (long t = 0; t < T; ++t) {
    const double u = row_u0(ang[t], iz, nz, nx, W) + cos(ang[t]) * ix;
    const double fl = floor(u);
    const int u0 = int(fl);
    if (u0 < -1 || u0 >= W) continue;
    const double f = u - fl;
    const float* row = img + (size_t(t) * ny + iy) * W;
    if (u0 >= 0) acc += (1.0 - f) * row[u0];
    if (u0 + 1 < W) acc += f * row[u0 + 1];
  }
  vol[id] += float(acc);
}

}  // namespace

namespace hpcem_tomo {

std::string tilt_project(uintptr_t vol, int nz, int ny, int nx, uintptr_t ang, long T, int W, uintptr_t out,
                         uintptr_t stream) {
  const long total = T * ny * W;
  if (total == 0) return "";
  k_tilt_project<<<blocks(total, 256), 256, 0, stream_of(stream)>>>(P_<const float>(vol), nz, ny, nx,
                                                                     P_<const double>(ang), T, W, P_<float>(out));
  return last("tilt_project");
}

std::string tilt_backproject(uintptr_t img, uintptr_t ang, long T, int ny, int W, uintptr_t vol, int nz, int nx,
                             uintptr_t stream) {
  const long total = long(nz) * ny * nx;
  if (total == 0) return "";
  k_tilt_backproject<<<blocks(total, 256), 256, 0, stream_of(stream)>>>(P_<const float>(img), P_<const double>(ang),
                                                                         T, ny, W, P_<float>(vol), nz, nx);
  return last("tilt_backproject");
}

}  // namespace hpcem_tomo
