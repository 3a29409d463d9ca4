"""python gen.py OUT [lo,hi]: the gated test_map_and_junk_separate set (hpcem.simulate.sets.small_set(1, 0.3), the
generator of tests/test_abinitio_full.py::_small_set) into OUT, with the truth (classes, junk kinds, misplaced
particles' distances from the centre in px, map) saved as truth.npz.  lo,hi: the off-centre junk range in box
fractions (0.2,0.35: the set of the fourth to eighth passes)."""
import sys
import numpy as np
from hpcem.simulate.sets import small_set
from hpcem.simulate.write import write_dataset

out = sys.argv[1]
oc = tuple(float(x) for x in sys.argv[2].split(",")) if len(sys.argv) > 2 else None
d, vols = small_set(1, 0.3, offcentre=oc)
write_dataset(d, out)
kind = np.array(["particle"] * len(d.classes), dtype=object)
for i, k in d.meta["junk_kind"].items():
    kind[i] = k
shift = np.full(len(d.classes), np.nan)
for i, r in d.meta["junk_shift"].items():
    shift[i] = r
np.savez(out + "/truth.npz", classes=np.asarray(d.classes), map=vols[0], kind=kind.astype(str), shift=shift)
print("wrote", out, np.bincount(np.asarray(d.classes)))
