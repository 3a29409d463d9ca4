#!/bin/bash
# bash runab.sh DATA OUT [extra flags]: the gated test's exact abinitio command (SMALL[2:] + --K 3), --j 1
set -e
data=$1; out=$2; shift 2
mkdir -p $out
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
/usr/bin/time -v hpcem abinitio --i $data/particles.star --o $out/run --K 3 --particle_diameter 96 --ctf \
  --random_seed 1 --num_init_iters 20 --radwn_step 0.5 --num_final_iters 100 --class_anneal_start 20 \
  --class_anneal_end 40 --max_res 9 --high_lr_duration 40 --j 1 "$@" > $out/log.txt 2> $out/err.txt
