// Interpolation weights on a padded half grid, one definition for the CPU kernels (csrc/project.cpp,
// csrc/backproject.cpp) and their CUDA twins (cuda/kernels.cu), host and device.
//
// Each visitor takes a point p with px >= 0 (the caller has already applied the Friedel flip of a
// sample with px < 0) in a padded half grid of box P, shape (P, P, P/2+1) [z, y, x] (3D) or (P, P/2+1)
// [y, x] (2D), and calls f for every neighbour inside the grid's representable frequencies:
//   linear_neighbours   f(z, offset, weight)        the 8 trilinear corners (float or double p)
//   bilinear_neighbours f(y, offset, weight)        the 4 bilinear corners (2D)
//   gauss_neighbours    f(z, offset, weight, mate)  seed 002's Gaussian kernel (eqs 27-29): the 27
//       grid points round(p) + d, d in {-1, 0, 1}^3, weight exp(-|round(p) + d - p|^2 / h), h = 2
//       (separable: one factor per axis); a neighbour with x = -1 (px < 0.5) is its Friedel mate
//       (1, -y, -z) and mate is true: its value is the conjugate.
// A corner outside the grid holds zero (projection) and receives nothing (back-projection), so the
// two kernels stay exact adjoints. z (y in 2D) is the frequency along the slowest axis, for the
// CPU back-projection's slabs. The weights are computed in one order (z, then y, then x), so the
// CPU and CUDA kernels agree to the rounding of their sums.
#pragma once
#include <math.h>
#include <stddef.h>

#include "fourier_index.hpp"  // HPCEM_HD, fft_index, freq_min, freq_max

constexpr int KERNEL_LINEAR = 0, KERNEL_GAUSS = 1;

HPCEM_HD inline float floor_of(float v) { return floorf(v); }
HPCEM_HD inline double floor_of(double v) { return floor(v); }

template <typename R, typename F>
HPCEM_HD inline void linear_neighbours(int P, R px, R py, R pz, F&& f) {
  const int Ph = P / 2 + 1, fmin = freq_min(P), fmax = freq_max(P);
  const int x0 = int(floor_of(px)), y0 = int(floor_of(py)), z0 = int(floor_of(pz));
  const R fx = px - R(x0), fy = py - R(y0), fz = pz - R(z0);
  for (int dz = 0; dz < 2; ++dz) {
    const int z = z0 + dz;
    if (z < fmin || z > fmax) continue;
    const R wz = dz ? fz : R(1) - fz;
    const size_t zoff = size_t(fft_index(z, P)) * P;
    for (int dy = 0; dy < 2; ++dy) {
      const int y = y0 + dy;
      if (y < fmin || y > fmax) continue;
      const R wzy = wz * (dy ? fy : R(1) - fy);
      const size_t off = (zoff + size_t(fft_index(y, P))) * Ph;
      for (int dx = 0; dx < 2; ++dx) {
        const int x = x0 + dx;
        if (x >= Ph) continue;
        f(z, off + x, wzy * (dx ? fx : R(1) - fx));
      }
    }
  }
}

template <typename F>
HPCEM_HD inline void bilinear_neighbours(int P, float px, float py, F&& f) {
  const int Ph = P / 2 + 1, fmin = freq_min(P), fmax = freq_max(P);
  const int x0 = int(floorf(px)), y0 = int(floorf(py));
  const float fx = px - float(x0), fy = py - float(y0);
  for (int dy = 0; dy < 2; ++dy) {
    const int y = y0 + dy;
    if (y < fmin || y > fmax) continue;
    const float wy = dy ? fy : 1.f - fy;
    const size_t off = size_t(fft_index(y, P)) * Ph;
    for (int dx = 0; dx < 2; ++dx) {
      const int x = x0 + dx;
      if (x >= Ph) continue;
      f(y, off + x, wy * (dx ? fx : 1.f - fx));
    }
  }
}

// the Gaussian kernel along one axis: the rounded centre, and the weights of centre - 1, centre, centre + 1
HPCEM_HD inline int gauss_axis(float p, float w[3]) {
  const int c = int(floorf(p + 0.5f));
  for (int d = 0; d < 3; ++d) {
    const float t = float(c + d - 1) - p;
    w[d] = expf(-t * t / 2.f);   // h = 2
  }
  return c;
}

template <typename F>
HPCEM_HD inline void gauss_neighbours(int P, float px, float py, float pz, F&& f) {
  const int Ph = P / 2 + 1, fmin = freq_min(P), fmax = freq_max(P);
  float wx[3], wy[3], wz[3];
  const int cx = gauss_axis(px, wx), cy = gauss_axis(py, wy), cz = gauss_axis(pz, wz);
  for (int dz = 0; dz < 3; ++dz)
    for (int dy = 0; dy < 3; ++dy)
      for (int dx = 0; dx < 3; ++dx) {
        int x = cx + dx - 1, y = cy + dy - 1, z = cz + dz - 1;
        const bool mate = x < 0;
        if (mate) { x = -x; y = -y; z = -z; }
        if (x >= Ph || y < fmin || y > fmax || z < fmin || z > fmax) continue;
        f(z, (size_t(fft_index(z, P)) * P + size_t(fft_index(y, P))) * Ph + x, wz[dz] * wy[dy] * wx[dx], mate);
      }
}
