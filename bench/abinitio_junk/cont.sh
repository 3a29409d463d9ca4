#!/bin/bash
# bash cont.sh SRC IT OUT [flags]: copy SRC's run files up to iteration IT into OUT and continue from there
set -e
src=$1; it=$(printf %03d $2); out=$3; shift 3
mkdir -p $out
for f in $src/run_it*; do
  n=$(basename $f | sed 's/run_it\([0-9]*\)_.*/\1/')
  [ $((10#$n)) -le $((10#$it)) ] && cp $f $out/
done
cp $src/run_log.star $out/ 2>/dev/null || true
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
/usr/bin/time -v hpcem abinitio --continue $out/run_it${it}_optimiser.star --j 1 "$@" > $out/log.txt 2> $out/err.txt
