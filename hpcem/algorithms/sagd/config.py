"""Settings of ab initio reconstruction by SAGD (seed 003): cryoSPARC's Ab-Initio Reconstruction
parameters under hpcem-style names (cryoSPARC's ``abinit_<name>`` without the prefix, with its
defaults), and the seed's own choices (prior, importance sampling, s0)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ...runtime.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Params, param
from ..map_em.config3d import _known_symmetry

YES_NO = argparse.BooleanOptionalAction
IN_0_1 = (lambda v: 0.0 <= v <= 1.0, "in [0, 1]")


@dataclass(frozen=True)
class AbInitioConfig(Params):
    K: int = param(1, "number of classes, each from its own random start (cryoSPARC abinit_K)", check=AT_LEAST_1,
                   group="model")
    sym: str = param("C1", "point group enforced (C1 recommended for ab initio)", check=(_known_symmetry, "a point group"),
                     group="model")
    particle_diameter: float = param(0.0, "mask diameter in A (0: 80%% of the box); maps are windowed by it",
                                     check=NON_NEGATIVE, group="model")
    ctf: bool = param(False, "CTF-aware likelihood", action="store_true", group="model")
    init_res: float = param(35.0, "resolution (A) of the initial iterations (abinit_init_res)", check=POSITIVE,
                            group="schedule")
    max_res: float = param(12.0, "final resolution (A) (abinit_max_res)", check=POSITIVE, group="schedule")
    num_init_iters: int = param(200, "iterations at --init_res before the resolution rises (abinit_num_init_iters)",
                                check=NON_NEGATIVE, group="schedule")
    num_final_iters: int = param(300, "iterations at --max_res at the end (abinit_num_final_iters)",
                                 check=NON_NEGATIVE, group="schedule")
    radwn_step: float = param(0.04, "rise of the Fourier radius (cycles per box) per iteration between the two "
                              "(abinit_radwn_step)", check=POSITIVE, group="schedule")
    minisize_init: int = param(90, "particles per mini-batch at first (abinit_minisize_init)", check=AT_LEAST_1,
                               group="schedule")
    minisize: int = param(300, "particles per mini-batch after --minisize_num_init_iters (abinit_minisize)",
                          check=AT_LEAST_1, group="schedule")
    minisize_num_init_iters: int = param(300, "iteration at which the mini-batch size switches "
                                         "(abinit_minisize_num_init_iters)", check=NON_NEGATIVE, group="schedule")
    high_lr: float = param(2.0, "SAGD's step factor epsilon at the start (the seed's 2; abinit_high_lr)",
                           check=POSITIVE, group="schedule")
    high_lr_duration: int = param(150, "iterations per halving of epsilon, down to 1/16 (the seed's 150; "
                                  "abinit_high_lr_duration)", check=AT_LEAST_1, group="schedule")
    high_lr_restart: bool = param(True, "K > 1: once the resolution has reached --max_res and fewer than 5%% of the "
                                  "particles change class per visit, epsilon is restored to --high_lr and its "
                                  "halvings counted from there (the classes settle with small steps; the map then "
                                  "needs large ones); --no-high_lr_restart: one schedule from iteration 0",
                                  action=YES_NO, group="schedule")
    high_lr_stop: str = param("relapse", "after the restart (--high_lr_restart): 'relapse' (default) halves epsilon once "
                              "at the first iteration more than 10%% of the particles change class per visit again, "
                              "'resettle' at the first iteration fewer than 5%% do after that; 'none': only the "
                              "halvings every --high_lr_duration (the large steps then turn the empty class into a "
                              "second particle class)", choices=("none", "relapse", "resettle"), group="schedule")
    high_lr_rearm: bool = param(False, "K > 1, after the restart: a re-seeded class or a --split_merge move arms it "
                                "again (epsilon back to --high_lr at the first iteration the classes have settled, "
                                "an epoch after the move; --high_lr_stop counted anew); off by default: with "
                                "--split_merge --split_merge_size 0 --reseed_from worst on map + 30%% junk at K = 3 "
                                "seeds 1 / 2 / 3 0.80 / 0.74 / 0.87 -> 0.84 / 0.78 / 0.48: the maps recovered, but "
                                "a re-seeded class and the particles' class trade the particles (issue 12, twelfth "
                                "pass)", action=YES_NO, group="schedule")
    class_anneal_beta: float = param(0.1, "class similarity: class posteriors mixed with the uniform "
                                     "distribution in this proportion, annealed to 0 (abinit_class_anneal_beta)",
                                     check=IN_0_1, group="classes")
    class_anneal_start: int = param(300, "iteration where the class similarity starts falling "
                                    "(abinit_class_anneal_start)", check=NON_NEGATIVE, group="classes")
    class_anneal_end: int = param(350, "iteration where it reaches 0 (abinit_class_anneal_end)", check=NON_NEGATIVE,
                                  group="classes")
    class_reseed: float = param(0.2, "a class whose share of the particles falls below this / K is re-seeded from "
                                "the largest class", check=NON_NEGATIVE, group="classes")
    reseed_from: str = param("largest", "K > 1: a re-seeded class (--class_reseed, a --split_merge move) starts from a "
                             "copy of the largest class ('largest') or from the map of the images the classes fit "
                             "worst ('worst': the images, half the mean class share, whose log-likelihood lies furthest "
                             "below their class's median, back-projected at their best poses; one E-step of every particle per "
                             "re-seed; off by default: with --split_merge on map + 30%% junk at K = 3 it merged seed 2's "
                             "split particles, ARI 0.13 -> 0.74, but cost seed 3 0.91 -> 0.87; issue 12, eleventh pass)",
                             choices=("largest", "worst"), group="classes")
    split_merge: bool = param(False, "K >= 3: when two classes share their particles (one structure split over two "
                              "classes), the smaller takes over the map of the largest other class (issue 11's "
                              "split-merge move, hpcem.algorithms.vdam.splitmerge), after the class similarity is off; "
                              "off by default: with junk a particle class and a junk class share the ambiguous "
                              "particles the same way (issue 12, tenth pass: ARI 0.78/0.13/0.91 -> 0.22/0.19/0.35 on "
                              "three seeds; with --split_merge_size 0 --reseed_from worst 0.80/0.74/0.87, eleventh pass)",
                              action=YES_NO, group="classes")
    split_merge_size: float = param(1.5, "--split_merge: the class to split must hold at least this many times the "
                                    "pair's mean share (0: any class)", check=NON_NEGATIVE, group="classes")
    nonneg: bool = param(True, "densities kept non-negative (projection after every step; abinit_nonneg)",
                         action=YES_NO, group="model")
    prior: str = param("exponential", "prior on the densities (seed 003 eqs 5-6, section 4.6)",
                       choices=("exponential", "uniform", "car"), group="model")
    prior_weight: float = param(0.1, "strength of the prior: lambda = this / (mean density of the initial maps) for "
                                "the exponential prior, 1 / sigma_car^2 times this for CAR", check=NON_NEGATIVE,
                                group="model")
    window: bool = param(True, "maps windowed by the particle mask every iteration (abinit_window)", action=YES_NO,
                         group="model")
    center: bool = param(True, "maps re-centred on their centre of mass every iteration (abinit_center)",
                         action=YES_NO, group="model")
    init_radwn_cutoff: float = param(7.0, "low-pass (Fourier radius, cycles per box) of the random initial maps "
                                     "(abinit_init_radwn_cutoff)", check=POSITIVE, group="model")
    importance_sampling: bool = param(True, "importance-sampled quadrature over poses (seed 003 section 3.4); "
                                      "--no-importance_sampling: the full quadrature", action=YES_NO,
                                      group="sampling")
    s0: float = param(10.0, "importance samples per effective sample size (the seed's s0)", check=POSITIVE,
                      group="sampling")
    oversampling: int = param(1, "adaptive oversampling (RELION's): the quadrature's points scored as the children of "
                              "the significant points of a grid twice as coarse; 0: every point (the seed's exhaustive "
                              "sum)", choices=(0, 1), group="sampling")
    maxsig: int = param(300, "most significant coarse points of a particle oversampled (0: all)", check=NON_NEGATIVE,
                        group="sampling")
    offset_range: float = param(6.0, "translations searched within this radius (pixels) around the box centre",
                                check=NON_NEGATIVE, group="sampling")
    target_initial_ess_fraction: float = param(0.011, "the initial noise scale makes this fraction of the poses "
                                               "significant at the first iteration (abinit_target_initial_ess_fraction)",
                                               check=(lambda v: 0 < v < 1, "in (0, 1)"), group="noise")
    noise_initw: float = param(5000.0, "weight (images) of the initial noise estimate (abinit_noise_initw)",
                               check=NON_NEGATIVE, group="noise")
    noise_priorw: float = param(50.0, "weight (images) of the images' power as the noise prior (abinit_noise_priorw)",
                                check=NON_NEGATIVE, group="noise")
    robust_noise: bool = param(True, "noise power per shell from the median particle (scaled to the mean of pure "
                               "noise), so that junk images (ice gradients, carbon edges) do not inflate it; "
                               "--no-robust_noise: the mean", action=YES_NO, group="noise")
    random_seed: int = param(0, "seed of the random initial maps, mini-batches and draws", group="model")
    write_iter: int = param(50, "maps, data and a checkpoint every this many iterations (and at the last)",
                            check=AT_LEAST_1, group="I/O")
    batch: int = param(0, "particles per kernel call (0: automatic)", check=NON_NEGATIVE, group="compute")
    iters: int = param(0, cli=False)      # total iterations, set from the schedule
    mask_width: float = param(5.0, cli=False)
