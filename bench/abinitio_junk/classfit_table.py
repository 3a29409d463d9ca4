"""python classfit_table.py OUT.npz RUNDIR: classfit.py's numbers for the seed-1 gated run (class 2 the map,
class 3 the low-res junk class; the truth of /work/exp/issue12-sagd9/kj9 = gen.py kj9): the particles lost to
class 3 against the kept ones."""
import sys, numpy as np
from hpcem.io.star import read_star
d = np.load(sys.argv[1]); run = sys.argv[2]
t = np.load("/work/exp/issue12-sagd9/kj9/truth.npz"); truth, kind = t["classes"], t["kind"]
c = read_star(run + "/run_data.star")["particles"]["rlnClassNumber"].to_numpy()
F = np.stack([d["fit%d" % k] for k in range(5)]); P = np.stack([d["pers%d" % k] for k in range(5)])
L = np.stack([d["loglik%d" % k] for k in range(5)])
s2 = d["sigma2"][0][:P.shape[2]]; df = d["defocus"]
gsh = 0.5 * (P[3][None] - P) / s2[None, None]          # expected gain per shell over the zero map
part = truth > 0
lost, kept = part & (c == 3), part & (c == 2)
lowk = kept & (df < 10000)
names = {1: "map", 2: "low-res junk", 4: "truth"}
for nm, m in (("lost (29)", lost), ("kept", kept), ("kept, defocus < 1 um", lowk)):
    print("%s  n %d  median defocus %.2f um" % (nm, m.sum(), np.median(df[m]) / 1e4))
    for k in (1, 2, 4):
        xa, aa = F[k, 0], F[k, 1]
        print("   %-12s marginal gain %6.1f  best pose 2xa-aa %6.1f  free scale xa^2/aa %6.1f  a* %.2f  "
              "gain shells 0-4 %5.1f 5-8 %5.1f 9-13 %5.1f" % (
                  names[k], np.median((L[k] - L[3])[m]), np.median((2 * xa - aa)[m]), np.median((xa ** 2 / aa)[m]),
                  np.median((xa / aa)[m]), np.median(gsh[k][m][:, :5].sum(1)), np.median(gsh[k][m][:, 5:9].sum(1)),
                  np.median(gsh[k][m][:, 9:].sum(1))))
a_t = F[4, 0] / F[4, 1]
print("truth a* lost / kept: %.2f / %.2f (the truth's own scale cancels in the ratio)"
      % (np.median(a_t[lost]), np.median(a_t[kept])))
print("lost particles whose truth gain (free scale) beats the run map's by > 30 nats: %d of %d" % (
    np.sum(((F[4, 0] ** 2 / F[4, 1]) - (F[1, 0] ** 2 / F[1, 1]) > 30)[lost]), lost.sum()))
