#!/usr/bin/env bash
# Stop the private SLURM that .ci/slurm_up.sh started (slurmd, slurmctld, munged, by their pid files).
DIR=${HPCEM_SLURM_DIR:-/tmp/hpcem-slurm}
stop() {
  local pid
  pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$DIR/$1.pid"
}
SLURM_CONF=$DIR/slurm.conf scancel --full --quiet --user=root 2>/dev/null || true
stop slurmd
stop slurmctld
stop munged
echo "slurm_down: stopped the SLURM under $DIR" >&2
