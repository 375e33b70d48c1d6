#!/bin/sh
# ferry ifconfig hook: the wlsifconfig.sh equivalent. The Node Manager calls it as
#   ifconfig.sh addif|removeif IFACE IP NETMASK
# before it starts a migratable server (addif) and after the server stops or is fenced
# (removeif). Exit 0 on success; anything else stops the server from starting, the error
# (with this script's output) goes to the event log, and the cluster master tries the next
# candidate machine. Exit 3 from addif means "another host still answers for this address"
# (the old holder has not removed it yet): ferry then tries this machine again shortly
# instead of giving up on it. Configure it per machine:  hooks = { ifconfig = "/path/ifconfig.sh" }
# This example does what ferry's built-in action does, with the iproute2 and iputils-arping
# tools, plus a log line; adapt it (sudo, another tool, a cloud API call for a secondary IP).
set -eu
action=$1 iface=$2 ip=$3 netmask=$4

prefix_len() {  # 255.255.255.0 -> 24
  n=0; IFS=.; for o in $1; do
    case $o in 255) n=$((n+8));; 254) n=$((n+7));; 252) n=$((n+6));; 248) n=$((n+5));;
      240) n=$((n+4));; 224) n=$((n+3));; 192) n=$((n+2));; 128) n=$((n+1));; 0) ;;
      *) echo "bad netmask $1" >&2; exit 2;; esac
  done; echo $n
}

case $action in
  addif)
    if ip -o addr show dev "$iface" | grep -q " $ip/"; then
      echo "$ip already on $iface"
    else
      # Refuse if another host answers for the address (duplicate address detection).
      if ! arping -q -D -c 2 -w 1 -I "$iface" "$ip"; then
        echo "$ip is in use by another host on $iface" >&2; exit 3
      fi
      ip addr add "$ip/$(prefix_len "$netmask")" dev "$iface"
    fi
    # Gratuitous ARP so neighbours forget the old machine at once (in the background: it
    # lingers about a second).
    (arping -q -U -c 1 -I "$iface" "$ip" >/dev/null 2>&1 &)
    echo "added $ip to $iface";;
  removeif)
    ip addr del "$ip/$(prefix_len "$netmask")" dev "$iface" 2>/dev/null || true
    echo "removed $ip from $iface";;
  *) echo "usage: $0 addif|removeif IFACE IP NETMASK" >&2; exit 2;;
esac
