#!/bin/sh
# ferry mount hook. The Node Manager calls it as
#   mount.sh mount|unmount SERVER
# before a migratable server starts on this machine (mount) and after it stops or is fenced
# (unmount), so the server finds its state (transaction logs, message stores) on shared
# storage wherever it runs. Exit 0 on success; a failed mount stops the server from
# starting here and the cluster master tries the next candidate machine.
# Configure it per machine:  hooks = { mount = "/path/mount.sh", timeout = "30s" }
# This example mounts an NFS export per server; adapt the device and mount point.
set -eu
action=$1 server=$2
export_dir="nfs.example:/exports/ferry/$server"     # adapt
mount_point="/srv/ferry/$server"

case $action in
  mount)
    mkdir -p "$mount_point"
    if mountpoint -q "$mount_point"; then echo "$mount_point already mounted"; exit 0; fi
    mount -t nfs -o hard,timeo=50 "$export_dir" "$mount_point"
    echo "mounted $export_dir on $mount_point";;
  unmount)
    if mountpoint -q "$mount_point"; then umount -f -l "$mount_point"; fi
    echo "unmounted $mount_point";;
  *) echo "usage: $0 mount|unmount SERVER" >&2; exit 2;;
esac
