"""python sharedmass.py DATA CKPT...: the classes' shared posterior mass J (splitmerge.shared_mass) of one full-grid
E-step of all particles against each checkpoint's maps and noise (at the run's final radius), with class shares."""
import sys
import numpy as np
from hpcem.algorithms.sagd.config import AbInitioConfig
from hpcem.algorithms.sagd.model import SagdModel
from hpcem.algorithms.sagd.schedule import Schedule, quadrature
from hpcem.algorithms.vdam.splitmerge import shared_mass
from hpcem.cli.inputs import read_particles
from hpcem.estep import FullGrid
from hpcem.parallel.comm import get_comm
from hpcem.runtime.checkpoint import load_checkpoint

data = sys.argv[1]
ps = read_particles(data + "/particles.star", 0.0, ctf=True, diameter=96)
cfg = AbInitioConfig(K=3, particle_diameter=96, ctf=True, num_init_iters=20, radwn_step=0.5, num_final_iters=100,
                     max_res=9, split_merge=True)
m = SagdModel(ps, cfg, get_comm(force_serial=True))
m.load()
sched = Schedule(cfg, ps.box, ps.angpix, ps.n)
it = sched.total - 1
quad, r = quadrature(sched.radius(it), m.radius_px), sched.shell(it)
for ck in sys.argv[2:]:
    st = load_checkpoint(ck).state
    sums, _ = m.e_step(np.asarray(st["maps"]), r, quad, np.arange(ps.n), np.asarray(st["sigma2"]), FullGrid(), None,
                       accumulate=False, record=False)
    J = shared_mass(sums.class_overlap)
    pc = sums.class_weight / sums.class_weight.sum()
    print("%s  shares %s  J12 %.3f J13 %.3f J23 %.3f" % (ck, " ".join("%.2f" % p for p in pc), J[0, 1], J[0, 2],
                                                          J[1, 2]), flush=True)
