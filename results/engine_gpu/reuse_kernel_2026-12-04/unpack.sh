set -e
mkdir -p /root/x20/bin
for f in .x20/*.xz; do n=$(basename $f .xz); xz -dc $f > /root/x20/bin/$n; chmod +x /root/x20/bin/$n; done
ls /root/x20/bin
