"""Per-particle values of a :class:`hpcem.io.particles.ParticleSet` (RELION units: Angstrom, degrees,
kV, mm): CTF parameters, poses, origins, subsets, classes, optics groups."""
from __future__ import annotations

import numpy as np
import pandas as pd

from hpcem.errors import InputError


def column(df: pd.DataFrame, name: str, default=None, dtype=np.float64):
    if name in df.columns:
        return df[name].to_numpy(dtype=dtype)
    if default is None:
        return None
    return np.full(len(df), default, dtype=dtype)


# The numeric RELION columns hpcem reads from particle and optics tables.  Only these are checked:
# other columns pass through untouched (RELION 3.1/5 write text and vector-valued ones, e.g.
# rlnOddZernike = "[0.07,0.10,...]", that hpcem never interprets).
NUMERIC_COLUMNS = {"rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize", "rlnVoltage", "rlnSphericalAberration",
                   "rlnAmplitudeContrast", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift",
                   "rlnCtfBfactor", "rlnCtfScalefactor", "rlnClassNumber", "rlnRandomSubset", "rlnOriginXAngst",
                   "rlnOriginYAngst", "rlnOriginX", "rlnOriginY", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                   "rlnDetectorPixelSize", "rlnMagnification", "rlnImageDimensionality",
                   "rlnCtfDataAreCtfPremultiplied", "rlnNormCorrection", "rlnAngleRotPrior", "rlnAngleTiltPrior",
                   "rlnAnglePsiPrior", "rlnMicrographOriginalPixelSize"}


def check_numeric(table: pd.DataFrame, src: str, block: str) -> None:
    """One InputError naming the file, the column and the row of the first value of a numeric RELION
    column that is not a number (STAR readers leave such a column as text)."""
    for col in table.columns:
        if col not in NUMERIC_COLUMNS or table[col].dtype.kind in "iufb":
            continue
        values = table[col]
        num = pd.to_numeric(values, errors="coerce")
        bad = num.isna().to_numpy() & ~values.astype(str).str.strip().str.lower().isin(("nan", "none", "")).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError("%s row %d: %r is not a number" % (block, i + 1, values.iloc[i]), file=src, field=col)


class ParticleColumns:
    """Accessors over ``self._table`` / ``self._optics`` / ``self._group_index`` (set by the particle set)."""

    # ------------------------------------------------------------------ per-particle values
    def _optics_value(self, attr: str, col: str, idx: np.ndarray) -> np.ndarray:
        t = self._table
        if col in t.columns:  # per-particle value (RELION 3.0 files with varying values)
            return t[col].to_numpy(np.float64)[idx]
        vals = []
        for g in self._optics.values():
            v = getattr(g, attr)
            if v is None:
                raise InputError(f"optics group {g.number} has no {col} (needed for the CTF)",
                                 file=self._src, field=col)
            vals.append(v)
        return np.asarray(vals, np.float64)[self._group_index[idx]]

    def ctf_params(self, indices=None) -> dict[str, np.ndarray]:
        """CTF parameters per particle: defocus_u, defocus_v [A], defocus_angle [deg],
        voltage [kV], cs [mm], amp_contrast, phase_shift [deg], bfactor [A^2], angpix [A].

        rlnDefocusU is required; rlnDefocusV defaults to U, rlnDefocusAngle, rlnPhaseShift
        and rlnCtfBfactor to 0."""
        idx = self._idx(indices)
        t, src = self._table, self._src
        if "rlnDefocusU" not in t.columns:
            raise InputError("data_particles has no rlnDefocusU column (needed for the CTF)",
                             file=src, field="rlnDefocusU")
        du = t["rlnDefocusU"].to_numpy(np.float64)[idx]
        out = {
            "defocus_u": du,
            "defocus_v": t["rlnDefocusV"].to_numpy(np.float64)[idx] if "rlnDefocusV" in t.columns
            else du.copy(),
            "defocus_angle": column(t, "rlnDefocusAngle", 0.0)[idx],
            "voltage": self._optics_value("voltage", "rlnVoltage", idx),
            "cs": self._optics_value("cs", "rlnSphericalAberration", idx),
            "amp_contrast": self._optics_value("amp_contrast", "rlnAmplitudeContrast", idx),
            "phase_shift": column(t, "rlnPhaseShift", 0.0)[idx],
            "bfactor": column(t, "rlnCtfBfactor", 0.0)[idx],
            "angpix": np.asarray([g.angpix for g in self._optics.values()],
                                 np.float64)[self._group_index[idx]],
        }
        cols = {"defocus_u": "rlnDefocusU", "defocus_v": "rlnDefocusV",
                "defocus_angle": "rlnDefocusAngle", "voltage": "rlnVoltage",
                "cs": "rlnSphericalAberration", "amp_contrast": "rlnAmplitudeContrast",
                "phase_shift": "rlnPhaseShift", "bfactor": "rlnCtfBfactor"}
        for k, c in cols.items():
            v = out[k]
            bad = ~np.isfinite(v)
            if bad.any():
                i = int(idx[np.flatnonzero(bad)[0]])
                raise InputError(f"particle {i + 1} has a non-finite {c}", file=src, field=c)
        if np.any(out["voltage"] <= 0):
            raise InputError("voltage must be positive (kV)", file=src, field="rlnVoltage")
        return out

    def poses(self, indices=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rot, tilt, psi) in degrees per particle; zeros where absent."""
        idx = self._idx(indices)
        t = self._table
        return tuple(column(t, c, 0.0)[idx] for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))

    def origins_angst(self, indices=None) -> np.ndarray:
        """(B, 2) origins (x, y) in Angstrom; zeros where absent."""
        idx = self._idx(indices)
        t = self._table
        return np.stack([column(t, "rlnOriginXAngst", 0.0)[idx], column(t, "rlnOriginYAngst", 0.0)[idx]],
                        axis=1)

    def origins_px(self, indices=None) -> np.ndarray:
        """(B, 2) origins (x, y) in pixels of the common grid (rlnOriginX/YAngst / its pixel size);
        zeros where absent."""
        return self.origins_angst(self._idx(indices)) / self.angpix

    def random_subset(self, indices=None) -> np.ndarray | None:
        t = self._table
        return None if "rlnRandomSubset" not in t.columns else \
            t["rlnRandomSubset"].to_numpy(np.int64)[self._idx(indices)]

    def class_numbers(self, indices=None) -> np.ndarray | None:
        t = self._table
        return None if "rlnClassNumber" not in t.columns else \
            t["rlnClassNumber"].to_numpy(np.int64)[self._idx(indices)]

    def optics_group_index(self, indices=None) -> np.ndarray:
        """0-based index of each particle's optics group (in order of group number)."""
        return self._group_index[self._idx(indices)]

