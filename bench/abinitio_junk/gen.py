"""The gated test_map_and_junk_separate set (tests/test_abinitio_full.py::_small_set(tmp, 1, junk=0.3)) into OUT,
with the truth (classes, junk kinds, map) saved as truth.npz."""
import sys
import numpy as np
from hpcem.simulate.junk import add_junk
from hpcem.simulate.particles import simulate_dataset
from hpcem.simulate.volumes import pseudo_atomic_volume
from hpcem.simulate.write import write_dataset

out = sys.argv[1]
vols = [pseudo_atomic_volume(32, 3.75, seed=s).astype(np.float64) for s in (1,)]
d = simulate_dataset(n=32, n_particles=800, angpix=3.75, snr=1.0, ctf=True, seed=5, volumes=vols, n_classes=1,
                     model="atoms")
add_junk(d, 0.3, seed=5)
write_dataset(d, out)
kind = np.array(["particle"] * len(d.classes), dtype=object)
for i, k in d.meta["junk_kind"].items():
    kind[i] = k
np.savez(out + "/truth.npz", classes=np.asarray(d.classes), map=vols[0], kind=kind.astype(str))
print("wrote", out, np.bincount(np.asarray(d.classes)))
