"""python classfit.py DATA RUNDIR CKPT OUT.npz: each particle against each final class map, a zero map and the
true map (DATA/truth_class001.mrc) alone (full grid at the
run's final radius, the checkpoint's noise): marginal log-likelihood, per-shell expected gain over a zero map,
and at the best pose the cross term xa and prediction power aa (gain 2xa - aa; with a free scale xa^2 / aa)."""
import sys
import numpy as np
from hpcem.algorithms.sagd.config import AbInitioConfig
from hpcem.algorithms.sagd.model import SagdModel
from hpcem.algorithms.sagd.schedule import Schedule, quadrature
from hpcem.cli.inputs import read_particles
from hpcem.estep import FullGrid
from hpcem.io.mrc import read_mrc
from hpcem.parallel.comm import get_comm
from hpcem.runtime.checkpoint import load_checkpoint

data, run, ckpt, out = sys.argv[1:5]
comm = get_comm()
ps = read_particles(data + "/particles.star", 0.0, ctf=True, diameter=96)
cfg = AbInitioConfig(K=1, particle_diameter=96, ctf=True, num_init_iters=20, radwn_step=0.5, num_final_iters=100,
                     max_res=9)
m = SagdModel(ps, cfg, comm)
m.load()
st = load_checkpoint(ckpt).state
sigma2 = np.asarray(st["sigma2"], np.float64)
sched = Schedule(cfg, ps.box, ps.angpix, ps.n)
it = sched.total - 1
quad, r = quadrature(sched.radius(it), m.radius_px), sched.shell(it)
pa = m.parts
from hpcem.estep.rank import coefficients
kidx = coefficients(pa.shell, r)
sh = pa.shell[kidx]
onehot = np.zeros((kidx.size, r + 1)); onehot[np.arange(kidx.size), sh] = 1.0
hw = pa.hw[kidx]
N = ps.n


class Cap(FullGrid):
    def __init__(self):
        self.fit = np.zeros((3, N)); self.pers = np.zeros((N, r + 1))

    def observe(self, sel, res, o_px):
        self.fit[:, sel] = np.asarray(res.fit)
        self.pers[sel] = (np.asarray(res.noise, np.float64) * hw[None]) @ onehot


pa.scale = np.ones(pa.G)      # makes the E-step report the best-pose fit (a scale of 1 changes nothing)
maps = [read_mrc(run + "/run_class%03d.mrc" % k)[0].astype(np.float64) for k in (1, 2, 3)]
maps.append(np.zeros_like(maps[0]))
maps.append(read_mrc(data + "/truth_class001.mrc")[0].astype(np.float64))
res = {}
allp = np.arange(N)
for k, V in enumerate(maps):
    cap = Cap()
    m.e_step(V[None], r, quad, allp, sigma2, cap, None, accumulate=True, record=False)
    res["loglik%d" % k] = m.search["loglik"].copy()
    res["fit%d" % k] = cap.fit
    res["pers%d" % k] = cap.pers
    print("class", k + 1, "done", flush=True)
res["sigma2"] = sigma2
res["defocus"] = ps.table["rlnDefocusU"].to_numpy()
np.savez(out, **res)
