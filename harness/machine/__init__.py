"""The boot stage's parts: QEMU (VmSpec -> argv, the process, QMP, guest RAM as shared
files), the one console reader and its crash watcher, the SSH and serial transports, the
guest image (initramfs), and snapshots of booted guests (saved and restored by QEMU
migration). Takes KernelArtifacts' paths;
harness.session wires them into a Guest.
"""
