#!/usr/bin/env bash
# Install what the SLURM integration test (tests/test_slurm.py) needs: Debian's SLURM
# daemons and clients, MUNGE, and slurmdbd with MariaDB for job accounting.
#
# Idempotent: does nothing when everything is installed already. Non-interactive.
# Needs root (or sudo). Only installs packages: no service is enabled or started,
# the test starts its own daemons in a temporary folder and stops them afterwards.
#
#   .ci/slurm-setup.sh            install if missing
#   .ci/slurm-setup.sh --check    exit 1 (listing what is missing) instead of installing
set -euo pipefail

PACKAGES=(
  slurmctld slurmd slurm-client   # controller, node daemon, sbatch/squeue/sacct/...
  slurm-wlm-basic-plugins         # select/cons_tres, proctrack/linuxproc, gres/gpu, ...
  slurmdbd slurm-wlm-mysql-plugin # accounting daemon, so that sacct answers
  munge                           # authentication between the daemons
  mariadb-server mariadb-client   # slurmdbd's database
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "slurm-setup: all packages present (${PACKAGES[*]})"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "slurm-setup: missing packages: ${missing[*]}" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "slurm-setup: needs root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

# Keep the packages' maintainer scripts from starting system services (munged,
# mariadb, slurmctld, slurmd, slurmdbd) during the install: the test runs its own.
# Only when no policy is in place already; removed again on exit.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# temporary, from .ci/slurm-setup.sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  trap '$SUDO rm -f "$POLICY"' EXIT
fi

echo "slurm-setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${PACKAGES[@]}"
echo "slurm-setup: done"
