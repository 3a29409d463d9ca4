#!/usr/bin/env bash
# Start a private single-node SLURM for the tests: munged, slurmctld and slurmd of Debian's
# slurm-wlm (installed with apt-get when missing), all state, sockets and logs under one folder.
# On success prints the environment the tests need (eval it); stop with .ci/slurm_down.sh.
#
#   if env=$(.ci/slurm_up.sh); then eval "$env"; fi ... .ci/slurm_down.sh
#
# Exit status 1 (nothing printed on stdout, the reason on stderr) when SLURM cannot be started
# here (not root, no apt-get, a daemon that does not come up): the SLURM tests then skip.
# A site's own SLURM is never touched: the configuration is written under $HPCEM_SLURM_DIR.
set -euo pipefail
DIR=${HPCEM_SLURM_DIR:-/tmp/hpcem-slurm}
PORT=${HPCEM_SLURM_PORT:-6817}            # slurmctld; slurmd listens on PORT+1
say() { echo "slurm_up: $*" >&2; }
fail() { say "$*"; "$(dirname "$0")/slurm_down.sh" >/dev/null 2>&1 || true; exit 1; }

[ "$(id -u)" = 0 ] || { say "not root: no local SLURM"; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || { say "no slurm-wlm and no apt-get: no local SLURM"; exit 1; }
  say "installing slurm-wlm and munge with apt-get"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      slurm-wlm munge; } >"${TMPDIR:-/tmp}/hpcem-slurm-apt.log" 2>&1 \
    || { say "apt-get failed (${TMPDIR:-/tmp}/hpcem-slurm-apt.log)"; exit 1; }
fi
[ -e "$DIR/slurmctld.pid" ] && "$(dirname "$0")/slurm_down.sh" >/dev/null 2>&1 || true
rm -rf "$DIR" && mkdir -p "$DIR/ctld" "$DIR/d" && chmod 755 "$DIR"

HOST=$(hostname -s)
# Job ids new at every start (the state is wiped): MPICH names its shared memory after the PMI
# job id ("<job>.<step>"), and a segment left by a killed run of an earlier start must not meet
# a new job of the same id.
FIRST_JOB=$(( $(date +%s) % 600000 * 100 + 1 ))
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >"$DIR/slurm.conf" <<EOF
# hpcem test cluster (written by .ci/slurm_up.sh): one node, this host
ClusterName=hpcemci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
AuthInfo=socket=$DIR/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
FirstJobId=$FIRST_JOB
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
# Two stand-in GPUs (plain files: slurm drops file-less GPUs) so the GPU template's allocation
# (--gres=gpu:G, one rank per GPU) is tested on machines without one.
touch "$DIR/gpu0" "$DIR/gpu1"
printf "AutoDetect=off\nNodeName=$HOST Name=gpu File=$DIR/gpu[0-1]\n" >"$DIR/gres.conf"
echo "ConstrainCores=no" >"$DIR/cgroup.conf"
export SLURM_CONF=$DIR/slurm.conf
MPI=none   # pmi2 where this slurm has the plugin (Debian's has pmi2 and pmix): pip's mpich speaks it
if srun --mpi=list 2>&1 | grep -w pmi2 >/dev/null; then MPI=pmi2; sed -i 's/^MpiDefault=none/MpiDefault=pmi2/' "$SLURM_CONF"; fi

mungekey --create --keyfile="$DIR/munge.key" >/dev/null 2>&1 || fail "mungekey failed"
chmod 600 "$DIR/munge.key"
munged --force --socket="$DIR/munge.socket" --key-file="$DIR/munge.key" --pid-file="$DIR/munged.pid" \
  --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed" 2>>"$DIR/munged.log" \
  || fail "munged did not start ($DIR/munged.log)"
slurmctld 2>>"$DIR/slurmctld.log" || fail "slurmctld did not start ($DIR/slurmctld.log)"
slurmd 2>>"$DIR/slurmd.log" || fail "slurmd did not start ($DIR/slurmd.log)"
for _ in $(seq 60); do
  state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
  case "$state" in idle) break ;; esac
  sleep 0.5
done
[ "$state" = idle ] || fail "node $HOST is '${state:-unreachable}', not idle ($DIR/slurmctld.log, $DIR/slurmd.log)"
say "SLURM up: node $HOST, $CPUS CPUs, ${MEM} MB, MpiDefault=$MPI, conf $SLURM_CONF"
echo "export SLURM_CONF=$DIR/slurm.conf HPCEM_TEST_SLURM=1"
