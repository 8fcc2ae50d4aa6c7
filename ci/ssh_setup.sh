#!/bin/bash
# Start real sshd servers as root, without systemd, for the SSHCluster tests (tests/test_ssh*.py).
#
# - loopback: sshd on 127.0.0.1:${PORT:-2222}
# - three "hosts" with their own addresses: network namespaces hd-a, hd-b, hd-c on a bridge
#   (10.77.0.11-13, the root namespace is 10.77.0.1), each running sshd on port 22, so that a
#   scheduler on host A and workers on B and C really talk across addresses.
# Key-only root login with a key made here; known_hosts entries so no prompt. Idempotent.
# Writes $D/hosts ("loopback 127.0.0.1 2222" and "netns ADDR 22" lines) for the tests.
# Exits non-zero when sshd did not start: ci/services.sh then fails CI.
# Stop: kill $(cat /tmp/hpcdask-sshd/*.pid); ip netns del hd-a hd-b hd-c; ip link del hdbr0
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
PORT=${PORT:-2222}
D=${SSH_STATE_DIR:-/tmp/hpcdask-sshd}
[ "$(id -u)" = 0 ] || { echo "ssh_setup: must run as root" >&2; exit 1; }
mkdir -p "$D"
if ! dpkg -s openssh-server >/dev/null 2>&1; then
  apt-get -o DPkg::Lock::Timeout=600 -qq update
  apt-get -o DPkg::Lock::Timeout=600 -qq install -y --no-install-recommends openssh-server \
    openssh-client >/dev/null
fi
ssh-keygen -A >/dev/null                       # host keys (postinst normally does this)
mkdir -p /run/sshd && chmod 0755 /run/sshd     # privilege-separation dir: sshd needs it

# client key for root; sshd trusts it
mkdir -p /root/.ssh && chmod 700 /root/.ssh
[ -f /root/.ssh/id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519
grep -qF "$(cut -d' ' -f1,2 /root/.ssh/id_ed25519.pub)" /root/.ssh/authorized_keys 2>/dev/null ||
  cat /root/.ssh/id_ed25519.pub >>/root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
HOSTKEY=$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)

alive() { [ -n "$1" ] && [ -d "/proc/$1" ] && ! grep -q "^State:.*Z" "/proc/$1/status" 2>/dev/null; }

# start_sshd NAME ADDR PORT [NETNS]
start_sshd() {
  local name=$1 addr=$2 port=$3 ns=${4:-}
  cat >"$D/$name.conf" <<CONF
Port $port
ListenAddress $addr
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
PidFile $D/$name.pid
MaxStartups 100:30:200
MaxSessions 50
AcceptEnv LANG LC_*
CONF
  /usr/sbin/sshd -t -f "$D/$name.conf"
  local hk="[$addr]:$port"
  [ "$port" = 22 ] && hk=$addr
  ssh-keygen -R "$hk" >/dev/null 2>&1 || true
  echo "$hk $HOSTKEY" >>/root/.ssh/known_hosts
  if ! alive "$(cat "$D/$name.pid" 2>/dev/null)"; then
    rm -f "$D/$name.pid"
    if [ -n "$ns" ]; then
      ip netns exec "$ns" /usr/sbin/sshd -f "$D/$name.conf" -E "$D/$name.log"
    else
      /usr/sbin/sshd -f "$D/$name.conf" -E "$D/$name.log"
    fi
    for _ in $(seq 50); do [ -s "$D/$name.pid" ] && break; sleep 0.1; done
  fi
  ssh -p "$port" -o BatchMode=yes -o ConnectTimeout=5 "root@$addr" true ||
    { echo "ssh_setup: sshd $name ($addr:$port) does not accept logins; see $D/$name.log" >&2; exit 1; }
}

: >"$D/hosts.new"
start_sshd loopback 127.0.0.1 "$PORT"
echo "loopback 127.0.0.1 $PORT" >>"$D/hosts.new"

# Network namespaces: a bridge in the root namespace, one veth pair per "host".
if [ "${HPCDASK_SSH_NETNS:-1}" = 1 ]; then
  ip link show hdbr0 >/dev/null 2>&1 || {
    ip link add hdbr0 type bridge
    ip addr add 10.77.0.1/24 dev hdbr0
  }
  ip link set hdbr0 up
  i=11
  for h in a b c; do
    ns=hd-$h addr=10.77.0.$i
    if ! ip netns list | grep -qw "$ns"; then
      ip netns add "$ns"
      ip link add "veth-$h" type veth peer name eth0 netns "$ns"
      ip link set "veth-$h" master hdbr0 up
      ip -n "$ns" addr add "$addr/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
      ip -n "$ns" route add default via 10.77.0.1
    fi
    start_sshd "$ns" "$addr" 22 "$ns"
    echo "netns $addr 22" >>"$D/hosts.new"
    i=$((i + 1))
  done
fi
mv "$D/hosts.new" "$D/hosts"
echo "ssh_setup: sshd up: $(tr '\n' ';' <"$D/hosts")"
