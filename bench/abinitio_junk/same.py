"""python same.py RUN_A RUN_B IT...: relative difference of each class map and the number of particles with a
different last-visit class between two runs at the given written iterations."""
import sys
import numpy as np
from hpcem.io.mrc import read_mrc
from hpcem.io.star import read_star

a, b = sys.argv[1:3]
for it in sys.argv[3:]:
    p = "run_it%03d" % int(it)
    rel = []
    for k in (1, 2, 3):
        x, y = (read_mrc("%s/%s_class%03d.mrc" % (d, p, k))[0].astype(np.float64) for d in (a, b))
        rel.append(np.linalg.norm(x - y) / np.linalg.norm(x))
    c = [read_star("%s/%s_data.star" % (d, p))["particles"]["rlnClassNumber"].to_numpy() for d in (a, b)]
    print("it %s: map relative differences %s, particles in another class %d" % (
        it, " ".join("%.2e" % r for r in rel), int(np.sum(c[0] != c[1]))))
