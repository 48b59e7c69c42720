"""The build stage: a kernel source tree (Debian's linux-source or your git tree) plus
patches/ and kernel-configs/ fragments in, KernelArtifacts out (Image, vmlinux, .config,
cached by content). Nothing here boots anything.
"""
