"""What each object of the default kernel's build costs, and which scenario needs it.

Reads an existing build tree; builds nothing, boots nothing. For the harness's
reused ``O=`` tree of the default kernel (the one ``build --json`` would use:
``harness.kernel.kernel.gather_inputs(BuildRequest())``) it prints:

* objects per directory (``*.o`` under the ``O=`` tree, host tools and link
  products included, as the issue's 1136 counts them), their share, an estimate
  of the compile seconds they cost (below), the Kconfig option(s) that build
  them and **which scenario needs them** (``NEEDS``, written from reading the
  harness: guest-scripts/init, harness/drive/*, harness/machine/*, FACTS.md);
* with ``--by-option``: the same per Kconfig option. Each object is mapped to
  the innermost option that builds it by reading the pristine source tree's
  Kbuild files (``obj-$(CONFIG_X) += foo.o``, ``foo-$(CONFIG_Y) += bar.o``,
  ``obj-$(CONFIG_X) += dir/``, ``ifdef CONFIG_X`` blocks); an object reached
  only through ``obj-y`` all the way down is "(always)". The options' origin
  (requested by base.config, selected by an enabled option, or a Kconfig
  default that olddefconfig switched on) comes from the source tree's Kconfig
  ``select`` lines;
* per scenario (always, when the source tree is there): the per-option rows
  summed by the scenario their NEEDS text names ("ssh", "acpi boot (...)"),
  with kunit.py's objects for the same options and how many more ours are;
  ``--json-out FILE`` records one figure per scenario (run_all.py collects
  them; README.md's performance section shows those 10+ objects beyond
  kunit.py's: issue 13's alternative to a cold build no slower than kunit.py's);
* with ``--candidates``: the enabled options nothing in the harness asked for
  (not in base.config, not selected, no scenario in ``NEEDS``), with their
  objects: what to examine for a smaller kernel;
* kunit.py's build dir side by side, when one exists under the cache's
  ``kunit/`` folder (or ``--kunit-dir``); otherwise how to get one.

Compile seconds are an *estimate* from the ``.o`` files' mtimes (completion
times) of a cold ``make -jN`` build: with N jobs an object is charged the time
since the N-th previous object completed (``t[i] - t[i-N]``; the sum over all
objects is about N x the wall time, i.e. CPU seconds). Idle gaps between
objects (headers, host tools, links) are charged to the next object. The
default tree is used if its objects still carry their cold-build mtimes
(older than ``.harness-steps``, written at the end of its first full build);
an object rebuilt later (a patch, a ccache-served rebuild) carries no cold
time, and when fewer than 90% do, the timing comes from another fully timed
``O=`` tree that built the same objects from a ``.config`` a few lines away
(another geometry): the one whose cold build took the least wall time, i.e.
the least disturbed by other work (the tree, its span and its ``.config``
differences are printed). Times measured on a shared 2-core machine are
inflated by whatever else ran, and a build through ccache pays a cold miss
(an extra preprocessor pass) that kunit.py's plain gcc does not: the
compiler of each tree is printed; the shares are the figure to read.

``object_table(...)`` returns the data (for bench_build.py and others);
``main()`` prints it. Exit 0, or 2 when the tree cannot be found.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

ARCH = "arm64"
ALWAYS = "(always)"
LINK = "(link)"
HOST = "(host tool)"
STAMP = ".harness-steps"
TIMED_FRACTION = 0.9
MAX_CONFIG_DIFF = 8     # a geometry fragment changes ~5 lines of the .config

# ------------------------------------------------------------------ needs ---
# Which scenario needs an option, from reading the harness (2026-11-27).
# Scenario names: the methods (acpi-dimm, probe, virtio-mem, kselftest,
# split-leaf, race), "acpi boot" = the methods that boot through edk2
# (acpi-dimm, kselftest, split-leaf), "dt boot" = probe, virtio-mem, race,
# "all" = every boot, "ssh" = the SSH transport (the default transport of every
# method), "serial" = the serial transport and the crash watcher.
ACPI_BOOT = "acpi boot (acpi-dimm, kselftest, split-leaf)"
NEEDS: dict[str, str] = {
    # console, initramfs, userland
    "SMP": "all: -smp 2; race runs readers next to the add/remove loop",
    "PRINTK": "all: the crash watcher reads the kernel's console lines",
    "TTY": "serial transport, crash watcher (console)",
    "SERIAL_AMBA_PL011": "serial transport, crash watcher (QEMU virt's UART)",
    "SERIAL_AMBA_PL011_CONSOLE": "crash watcher: kernel messages on ttyAMA0",
    "BLK_DEV_INITRD": "all: the guest is an initramfs (guest_image.py)",
    "RD_GZIP": "all: the initramfs is gzip (guest_image.py)",
    "DEVTMPFS": "all: guest-scripts/init mounts devtmpfs on /dev",
    "DEVTMPFS_MOUNT": "all: /dev before init runs",
    "PROC_FS": "all: /proc/meminfo, /proc/iomem in every phase",
    "PROC_SYSCTL": "init writes /proc/sys/kernel/sysrq",
    "SYSFS": "all: /sys/devices/system/memory (blocks, probe, remove)",
    "BINFMT_ELF": "all: busybox, dropbear",
    "BINFMT_SCRIPT": "all: /init and guest-scripts are shell scripts",
    "MULTIUSER": "ssh: dropbear sets uids",
    "FUTEX": "all: glibc (dropbear is dynamically linked)",
    "EPOLL": "userland (busybox/glibc); kept from FACTS.md's booting fragment",
    "SHMEM": "init mounts tmpfs on /tmp and /run",
    "TMPFS": "init mounts tmpfs on /tmp and /run",
    "UNIX98_PTYS": "init mounts devpts; the console shell (cttyhack)",
    "MAGIC_SYSRQ": "tests/test_qemu.py: echo c > /proc/sysrq-trigger proves the crash "
                   "watcher on a real guest; init enables sysrq",
    # firmware and buses
    "ACPI": f"{ACPI_BOOT}: pc-dimm hotplug needs QEMU's ACPI GED, which exists "
            "only with firmware (edk2), which boots Linux with ACPI",
    "ACPI_HOTPLUG_MEMORY": "acpi-dimm, kselftest, split-leaf: the pc-dimm add/eject path",
    "EFI": f"{ACPI_BOOT}: ACPI on arm64 depends on EFI (edk2 boot)",
    "EFI_STUB": f"{ACPI_BOOT}: edk2 loads the Image as an EFI application",
    "PCI": "ssh (virtio-net-pci) and virtio-mem (virtio-mem-pci)",
    "PCI_HOST_GENERIC": "dt boot: the virt machine's PCIe host from the device tree "
                        "(ssh, virtio-mem)",
    "ARM_GIC_V3": "all: -M virt,gic-version=3",
    "RTC_CLASS": "nothing found: no harness code reads the guest's wall clock "
                 "(race.py's date +%s is relative)",
    "RTC_DRV_PL031": "nothing found (see RTC_CLASS)",
    # virtio and networking
    "VIRTIO_MENU": "ssh (virtio-net), virtio-mem",
    "VIRTIO": "ssh (virtio-net), virtio-mem",
    "VIRTIO_PCI": "ssh (virtio-net-pci), virtio-mem (virtio-mem-pci)",
    "NET": "ssh: dropbear over QEMU user networking",
    "INET": "ssh: TCP/IPv4 to dropbear (10.0.2.15 via hostfwd)",
    "PACKET": "nothing found: init sets a static address with ip (netlink), "
              "no DHCP client",
    "UNIX": "userland sockets (busybox/glibc may use AF_UNIX); not traced further",
    "NETDEVICES": "ssh: eth0",
    "NET_CORE": "ssh: eth0",
    "VIRTIO_NET": "ssh: virtio-net-pci eth0",
    # the subject under test
    "MEMORY_HOTPLUG": "every method: the subject",
    "MEMORY_HOTREMOVE": "every method: the subject",
    "MIGRATION": "every method: offline migrates pages",
    "COMPACTION": "virtio-mem (CONTIG_ALLOC needs it)",
    "CONTIG_ALLOC": "virtio-mem (alloc_contig_range)",
    "VIRTIO_MEM": "virtio-mem",
    "ARCH_MEMORY_PROBE": "probe, race (memory/probe and memory/remove, patches 0001/0002)",
    # inspection
    "DEBUG_KERNEL": "PTDUMP_DEBUGFS depends on it (the ptdump checks)",
    "DEBUG_FS": "every phase: /sys/kernel/debug/kernel_page_tables; page_owner stacks",
    "PTDUMP_DEBUGFS": "every phase: the kernel's page-table dump (ptdump checks)",
    "PTDUMP_CORE": "the ptdump checks (selected by PTDUMP_DEBUGFS)",
    "KALLSYMS": "crash reports' symbolised call traces (crashwatch), "
                "page_owner stacks (leakcheck)",
    "IKCONFIG": "nothing found: the harness reads the host's .config, never "
                "/proc/config.gz",
    "IKCONFIG_PROC": "nothing found (see IKCONFIG)",
    # from olddefconfig, arm64 or the options above
    "OF": "dt boot (probe, virtio-mem, race): the device tree; arm64 selects it",
    "ARM64": "all",
    "HOTPLUG_CPU": "nothing found (arm64 SMP selects it)",
    "SPARSEMEM": "every method: memory blocks are sections",
}



@dataclass(frozen=True)
class Proposal:
    """Options that could go from base.config: ``unset`` are the lines to write
    (``# CONFIG_X is not set``), ``goes`` the enabled options that follow them
    (selected only by them, or depending on them), ``why`` why no scenario
    needs them, ``risk`` what a real boot must confirm."""
    name: str
    unset: tuple[str, ...]
    goes: tuple[str, ...]
    why: str
    risk: str


# Applied to kernel-configs/base.config on 2026-11-27 (issue 13), kept as the
# record of why each option went; TCP_CONG_CUBIC was proposed too, but the
# default congestion-control choice selects it again (olddefconfig keeps it)
APPLIED: tuple[Proposal, ...] = (
    Proposal("rtc", ("RTC_CLASS", "RTC_DRV_PL031"),
             ("RTC_LIB", "RTC_INTF_DEV", "RTC_INTF_PROC", "RTC_INTF_SYSFS", "RTC_NVMEM",
              "RTC_HCTOSYS", "RTC_SYSTOHC", "NVMEM", "NVMEM_LAYOUTS", "NVMEM_SYSFS"),
             "no harness code reads the guest's wall clock: console timestamps are "
             "monotonic, race.py's date +%s loop is relative, SSH keys are per run",
             "low: the guest clock starts at 1970; boot + run --method all"),
    Proposal("acpi-processor", ("ACPI_PROCESSOR",),
             ("ACPI_PROCESSOR_IDLE", "CPU_IDLE", "CPU_IDLE_GOV_LADDER", "THERMAL",
              "THERMAL_OF", "THERMAL_GOV_STEP_WISE"),
             "the ACPI processor driver (idle states, throttling) and the thermal and "
             "cpuidle cores it selects; memory hotplug does not use them; CPUs come "
             "from the MADT without it, idle is WFI",
             "low-medium: ACPI boot with -smp 2 (acpi-dimm, kselftest, split-leaf)"),
    Proposal("efivarfs", ("EFIVAR_FS",), (),
             "nothing mounts efivarfs (guest-scripts/init mounts proc, sysfs, devtmpfs, "
             "devpts, debugfs, tmpfs)", "low"),
    Proposal("dmi", ("DMI",), ("DMIID",),
             "SMBIOS tables: nothing reads /sys/class/dmi; ACPI's DMI quirk tables "
             "are stubs without it", "low: ACPI boot"),
    Proposal("virtio-pci-legacy", ("VIRTIO_PCI_LEGACY",), ("VIRTIO_PCI_LIB_LEGACY",),
             "QEMU's virtio-net-pci is transitional (the modern driver binds it) and "
             "virtio-mem-pci is modern-only", "low: ssh and virtio-mem"),
    Proposal("ikconfig", ("IKCONFIG", "IKCONFIG_PROC"), (),
             "the harness reads the host's .config (KernelArtifacts.kconfig), never "
             "/proc/config.gz", "none (a convenience when poking a guest by hand)"),
    Proposal("packet", ("PACKET",), (),
             "init configures eth0 statically with ip (netlink); no DHCP client, "
             "no packet sockets", "low: ssh"),
    Proposal("inet-diag", ("INET_DIAG",), ("INET_TCP_DIAG", "INET_UDP_DIAG"),
             "socket monitoring for ss; nothing runs ss", "none"),
    Proposal("vga-arb", ("VGA_ARB",), (), "no VGA device on -M virt", "none"),
    Proposal("fw-loader", ("FW_LOADER",), (), "no device here loads firmware", "low"),
)

# not applied yet: medium risk, needs a full real-guest run
PROPOSALS: tuple[Proposal, ...] = (
    Proposal("syscalls", ("POSIX_TIMERS", "FHANDLE", "ADVISE_SYSCALLS", "COREDUMP",
                          "SECRETMEM", "RSEQ", "SIGNALFD", "TIMERFD", "EVENTFD",
                          "FILE_LOCKING"),
             ("EXPORTFS", "ELF_CORE", "MEMBARRIER"),
             "syscalls busybox, dropbear and the guest scripts are not known to use",
             "medium: glibc/dropbear/busybox may call some (alarm() needs "
             "POSIX_TIMERS); only with a full real-guest suite run"),
)

# Directory prefixes that hold no Kconfig-gated kernel code.
HOST_DIRS = ("scripts/", "tools/")


# ------------------------------------------------------------- Kbuild -------

@dataclass(frozen=True)
class Entry:
    """One item of a Kbuild list: an object, a subdirectory or a part of a
    composite object, and the option its line names (None: ``y`` or unknown)."""
    kind: str            # "obj" | "dir" | "part"
    name: str            # "foo.o", "sub/dir" (no trailing slash), or the part "bar.o"
    option: Optional[str]
    composite: str = ""  # for parts: the composite's name ("foo" of foo-y)


_OP = re.compile(r"\s*(\+=|:=|\?=|=)\s*")
_CONFIG = re.compile(r"CONFIG_([A-Za-z0-9_]+)")
_IF = re.compile(r"^(ifdef|ifndef|ifeq|ifneq)\b\s*(.*)$")
LIST_KINDS = {"obj", "lib", "subdir", "core", "drivers", "libs", "head"}
NOT_COMPOSITE = {"ccflags", "asflags", "ldflags", "subdir-ccflags", "extra",
                 "always", "targets", "hostprogs", "userprogs", "userccflags",
                 "hostprogs-always", "CFLAGS", "AFLAGS", "KASAN_SANITIZE",
                 "GCOV_PROFILE", "KCOV_INSTRUMENT", "UBSAN_SANITIZE"}


def _joined_lines(text: str) -> Iterable[str]:
    """Logical lines: comments dropped, backslash continuations joined."""
    buf = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield (buf + line).strip()
        buf = ""
    if buf.strip():
        yield buf.strip()


def _if_option(directive: str, arg: str) -> Optional[str]:
    """The option an ``if...`` line makes true inside its block (positive
    forms only: ``ifdef CONFIG_X``, ``ifeq ($(CONFIG_X),y)``, ``ifneq
    ($(CONFIG_X),)``); None for anything else."""
    m = _CONFIG.search(arg)
    if not m:
        return None
    compact = arg.replace(" ", "")
    if directive == "ifdef":
        return m.group(1)
    if directive == "ifeq" and (compact.endswith(",y)") or compact.endswith(',"y"')):
        return m.group(1)
    if directive == "ifneq" and (compact.endswith(",)") or compact.endswith(',"")')):
        return m.group(1)
    return None


def _unparenthesised_space(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and ch in " \t":
            return True
    return False


def _split_assignment(line: str) -> Optional[tuple[str, str, str]]:
    """``obj-$(CONFIG_X) += a.o`` -> ("obj", "$(CONFIG_X)", "a.o");
    ``foo-y := a.o`` -> ("foo", "y", "a.o"); ``foo-objs`` -> cond "objs";
    None for any other line (recipes, flags of one target, other forms)."""
    m = _OP.search(line)
    if not m:
        return None
    lhs, values = line[:m.start()].strip(), line[m.end():]
    if not lhs or lhs.startswith("$(") or _unparenthesised_space(lhs):
        return None
    cut = lhs.find("-$(")
    if cut > 0:
        return lhs[:cut], lhs[cut + 1:], values
    for cond in ("y", "objs"):
        if lhs.endswith("-" + cond) and len(lhs) > len(cond) + 1:
            return lhs[:-len(cond) - 1], cond, values
    return None


def _clean_path(token: str) -> str:
    for prefix in ("$(objtree)/", "$(srctree)/", "$(obj)/", "$(src)/"):
        if token.startswith(prefix):
            token = token[len(prefix):]
    return token.replace("$(SRCARCH)", ARCH).replace("$(ARCH)", ARCH)


def parse_kbuild(text: str) -> list[Entry]:
    """The Entries of one Kbuild file (a ``Makefile`` or ``Kbuild``).

    Understood: ``obj-<c> += a.o sub/``, ``lib-<c>``, ``subdir-<c>``,
    ``core-``/``drivers-``/``libs-`` (top and arch Makefiles), composite
    objects ``foo-<c> += a.o`` / ``foo-objs := a.o``, where ``<c>`` is ``y``
    or ``$(CONFIG_X)`` (any expression naming a CONFIG_ option: the first one
    counts), and ``ifdef``/``ifeq``/``ifneq`` blocks naming an option. Tokens
    holding other make variables are skipped.
    """
    entries: list[Entry] = []
    stack: list[Optional[str]] = []   # options of the enclosing if-blocks (None: not positive)
    for line in _joined_lines(text):
        if not line:
            continue
        m = _IF.match(line)
        if m:
            stack.append(_if_option(m.group(1), m.group(2)))
            continue
        if line.startswith("else"):
            if stack:
                stack[-1] = None
            rest = line[4:].strip()
            m = _IF.match(rest)
            if m and stack:
                stack[-1] = _if_option(m.group(1), m.group(2))
            continue
        if line.startswith("endif"):
            if stack:
                stack.pop()
            continue
        split = _split_assignment(line)
        if split is None:
            continue
        var, cond, values = split
        if cond.startswith("$("):
            c = _CONFIG.search(cond)
            if not c:
                continue             # obj-$(foo): not an option
            option: Optional[str] = c.group(1)
        elif cond == "objs" or cond == "y":
            option = None
        else:
            continue
        if option is None:
            option = next((o for o in reversed(stack) if o), None)
        tokens = [_clean_path(t) for t in values.split()]
        if var in LIST_KINDS:
            for t in tokens:
                if "$" in t:
                    continue
                if t.endswith("/"):
                    entries.append(Entry("dir", t.rstrip("/"), option))
                elif t.endswith("/lib.a"):
                    entries.append(Entry("dir", t[:-len("/lib.a")], option))
                elif t.endswith(".o"):
                    entries.append(Entry("obj", t, option))
        elif var not in NOT_COMPOSITE and "$" not in var and "FLAGS" not in var \
                and not var.endswith("flags"):
            for t in tokens:
                if "$" not in t and t.endswith(".o"):
                    entries.append(Entry("part", t, option, composite=var))
    return entries


class OptionMap:
    """Maps a built object (path relative to the O= tree) to the Kconfig option
    that builds it, reading the source tree's Kbuild files on demand."""

    def __init__(self, source: Path):
        self.source = Path(source)
        self._rules: dict[str, list[Entry]] = {}
        self._dir_option: dict[str, tuple[Optional[str], ...]] = {}
        self._root_dirs = self._root_entries()

    def rules(self, d: str) -> list[Entry]:
        if d not in self._rules:
            base = self.source / d if d else self.source
            text = ""
            for name in ("Kbuild", "Makefile"):
                p = base / name
                if p.is_file():
                    text = p.read_text(errors="replace")
                    break
            self._rules[d] = parse_kbuild(text)
        return self._rules[d]

    def _root_entries(self) -> dict[str, Optional[str]]:
        """Directories named by root-relative files: the top Kbuild and
        Makefile and the arch Makefile (``libs-$(CONFIG_EFI_STUB) +=
        .../libstub/lib.a``)."""
        found: dict[str, Optional[str]] = {}
        for rel in ("Kbuild", "Makefile", f"arch/{ARCH}/Makefile"):
            p = self.source / rel
            if p.is_file():
                for e in parse_kbuild(p.read_text(errors="replace")):
                    if e.kind == "dir":
                        found.setdefault(e.name, e.option)
                        if e.option and not found[e.name]:
                            found[e.name] = e.option
        return found

    def dir_chain(self, d: str) -> list[Optional[str]]:
        """Options on the way from the top to directory ``d``, outermost first
        (None where a level is built unconditionally)."""
        if not d:
            return []
        if d in self._dir_option:
            return list(self._dir_option[d])
        parts = d.split("/")
        chain: Optional[list[Optional[str]]] = None
        for cut in range(len(parts) - 1, 0, -1):
            parent, rest = "/".join(parts[:cut]), "/".join(parts[cut:])
            hits = [e for e in self.rules(parent) if e.kind == "dir" and e.name == rest]
            if hits:
                opt = next((e.option for e in hits if e.option), None)
                chain = self.dir_chain(parent) + [opt]
                break
        if chain is None:
            chain = [self._root_dirs.get(d)] if d in self._root_dirs else [None]
        self._dir_option[d] = tuple(chain)
        return chain

    def object_option(self, obj: str) -> Optional[str]:
        """The option of ``obj``'s own Kbuild line (or of its composite),
        None when it is ``obj-y`` (or not found)."""
        d, _, name = obj.rpartition("/")
        entries = self.rules(d)
        direct = [e for e in entries if e.kind == "obj" and e.name == name]
        opt = next((e.option for e in direct if e.option), None)
        if opt or direct:
            return opt
        parts = [e for e in entries if e.kind == "part" and e.name == name]
        for p in parts:
            if p.option:
                return p.option
            comp = [e for e in entries if e.kind == "obj" and e.name == p.composite + ".o"]
            copt = next((e.option for e in comp if e.option), None)
            if copt:
                return copt
        return None

    def option(self, obj: str) -> str:
        """The innermost option that builds ``obj``: its own line's, else its
        directory's, else an enclosing directory's; ALWAYS when none."""
        if obj.startswith(HOST_DIRS):
            return HOST
        if "/" not in obj:
            return LINK
        own = self.object_option(obj)
        if own:
            return own
        for opt in reversed(self.dir_chain(obj.rpartition("/")[0])):
            if opt:
                return opt
        return ALWAYS


# ------------------------------------------------------------- Kconfig ------

_KCONFIG_SYM = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")
_KCONFIG_SELECT = re.compile(r"^\s*select\s+([A-Za-z0-9_]+)(?:\s+if\s+(.*))?$")


_KCONFIG_PROMPT = re.compile(r'^\s*(?:(?:bool|tristate|string|int|hex)\s+"|prompt\s+")')


def parse_selects(text: str, prompts: Optional[set[str]] = None) -> list[tuple[str, str]]:
    """``(selector, selected)`` pairs of one Kconfig file; the options that
    have a prompt (a user can turn them off) are added to ``prompts``."""
    pairs: list[tuple[str, str]] = []
    current: Optional[str] = None
    for line in text.splitlines():
        m = _KCONFIG_SYM.match(line)
        if m:
            current = m.group(1)
            continue
        if line[:1] not in ("", " ", "\t", "#"):
            current = None           # menu, choice, if, source...: a new block
            continue
        if current and prompts is not None and _KCONFIG_PROMPT.match(line):
            prompts.add(current)
        m = _KCONFIG_SELECT.match(line)
        if m and current:
            pairs.append((current, m.group(1)))
    return pairs


def reverse_selects(source: Path,
                    prompts: Optional[set[str]] = None) -> dict[str, set[str]]:
    """{option: {options that select it}} over the source tree's Kconfig
    files (other architectures skipped); options with a prompt go to
    ``prompts``."""
    rev: dict[str, set[str]] = defaultdict(set)
    for root, dirs, files in os.walk(source):
        rel = os.path.relpath(root, source)
        if rel == "arch":
            dirs[:] = [d for d in dirs if d == ARCH]
        if rel in ("Documentation", "tools", "samples", "scripts"):
            dirs[:] = []
            continue
        for f in files:
            if f.startswith("Kconfig"):
                try:
                    text = (Path(root) / f).read_text(errors="replace")
                except OSError:
                    continue
                for a, b in parse_selects(text, prompts):
                    rev[b].add(a)
    return rev


def read_config(path: Path) -> dict[str, str]:
    """{X: value} of the enabled options of a .config (``CONFIG_`` dropped)."""
    out = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        m = re.match(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$", line)
        if m and m.group(2) != "n":
            out[m.group(1)] = m.group(2)
    return out


def origin(opt: str, requested: Mapping[str, str], enabled: Mapping[str, str],
           rev: Mapping[str, set[str]]) -> str:
    """Why ``opt`` is on: requested by a fragment, selected by enabled
    options, or a Kconfig default (olddefconfig)."""
    if opt in (ALWAYS, LINK, HOST):
        return ""
    if requested.get(opt, "n") not in ("n", ""):
        return "base.config"
    sel = sorted(s for s in rev.get(opt, ()) if s in enabled)
    if sel:
        more = f" +{len(sel) - 3}" if len(sel) > 3 else ""
        return "selected by " + ", ".join(sel[:3]) + more
    if opt not in enabled:
        return "not in .config"
    return "default"


def need_of(opt: str, enabled: Mapping[str, str], rev: Mapping[str, set[str]],
            needs: Mapping[str, str] = NEEDS, depth: int = 3,
            prompts: Optional[set[str]] = None) -> str:
    """The scenario that needs ``opt``: NEEDS, else through an enabled
    option selecting it (up to ``depth`` levels); an option without a prompt
    that nothing selects follows other options (``prompts`` given)."""
    if opt == ALWAYS:
        return "core kernel (built whatever the config)"
    if opt == LINK:
        return "vmlinux link (kallsyms passes)"
    if opt == HOST:
        return "build tools run on the host"
    if opt in needs:
        return needs[opt]
    frontier, seen = [opt], {opt}
    for _ in range(depth):
        nxt = []
        for o in frontier:
            for s in sorted(rev.get(o, ())):
                if s in seen or s not in enabled:
                    continue
                if s in needs:
                    return f"via {s}: {needs[s]}"
                seen.add(s)
                nxt.append(s)
        frontier = nxt
    if prompts is not None and opt not in prompts and opt in enabled:
        return "no prompt: on whenever its dependencies are (arch or core)"
    return "?"


def brings(opt: str, enabled: Mapping[str, str], rev: Mapping[str, set[str]],
           requested: Mapping[str, str]) -> list[str]:
    """Enabled options that only ``opt`` (or what only it selects) selects:
    they would go with it (an estimate: defaults of options with a prompt
    are not evaluated). Sorted."""
    gone = {opt}
    changed = True
    while changed:
        changed = False
        for o in enabled:
            if o in gone or requested.get(o, "n") not in ("n", ""):
                continue
            sel = {s for s in rev.get(o, ()) if s in enabled}
            if sel and sel <= gone:
                gone.add(o)
                changed = True
    return sorted(gone - {opt})


# ------------------------------------------------------------- objects ------

def list_objects(build_dir: Path) -> list[str]:
    """Every ``*.o`` under the O= tree, relative paths, sorted."""
    build_dir = Path(build_dir)
    out = []
    for root, _dirs, files in os.walk(build_dir):
        for f in files:
            if f.endswith(".o"):
                out.append(os.path.relpath(os.path.join(root, f), build_dir))
    return sorted(out)


def group_dir(obj: str, depth: int) -> str:
    parts = obj.split("/")[:-1]
    return "/".join(parts[:depth]) if parts else "."


def cold_times(build_dir: Path, objects: Sequence[str],
               jobs: int) -> dict[str, Optional[float]]:
    """{object: estimated compile seconds} from a cold build's mtimes (see the
    module docstring); objects rebuilt after the cold build get None."""
    build_dir = Path(build_dir)
    stamp = build_dir / STAMP
    end = stamp.stat().st_mtime if stamp.exists() else float("inf")
    start: Optional[float] = None
    cfg = build_dir / ".config"
    if cfg.exists():
        start = cfg.stat().st_mtime
    mt = {o: (build_dir / o).stat().st_mtime for o in objects}
    cold = sorted((t, o) for o, t in mt.items() if t <= end + 1)
    out: dict[str, Optional[float]] = {o: None for o in objects}
    times = [t for t, _ in cold]
    first = start if start is not None and times and start <= times[0] else \
        (times[0] if times else 0.0)
    for i, (t, o) in enumerate(cold):
        prev = times[i - jobs] if i >= jobs else first
        out[o] = max(0.0, t - prev)
    return out


def timed_fraction(build_dir: Path) -> float:
    objs = list_objects(build_dir)
    if not objs or not (Path(build_dir) / STAMP).exists():
        return 0.0
    end = (Path(build_dir) / STAMP).stat().st_mtime + 1
    ok = sum(1 for o in objs if (Path(build_dir) / o).stat().st_mtime <= end)
    return ok / len(objs)


def pick_timing_tree(default: Path,
                     candidates: Iterable[Path]) -> tuple[Path, list[str]]:
    """(tree, config differences) for the timing: the default tree if its
    objects are cold-timed; else, among the fully timed trees that built the
    same objects (95%) from a .config at most MAX_CONFIG_DIFF lines away (a
    geometry), the one whose cold build took least wall time (the least
    disturbed by other work on the machine); else the nearest in .config."""
    if timed_fraction(default) >= TIMED_FRACTION:
        return default, []
    base = read_config(default / ".config") if (default / ".config").exists() else {}
    mine = set(list_objects(default))
    near: list[tuple[float, Path, list[str]]] = []
    far: list[tuple[int, Path, list[str]]] = []
    for tree in candidates:
        if tree == default or not (tree / ".config").exists():
            continue
        if timed_fraction(tree) < TIMED_FRACTION:
            continue
        cfg = read_config(tree / ".config")
        diff = sorted(k for k in set(base) | set(cfg) if base.get(k) != cfg.get(k))
        theirs = set(list_objects(tree))
        same = len(mine & theirs) / max(len(mine | theirs), 1)
        if same >= 0.95 and len(diff) <= MAX_CONFIG_DIFF:
            near.append((_span(tree), tree, diff))
        else:
            far.append((len(diff), tree, diff))
    if near:
        _, tree, diff = min(near, key=lambda x: (x[0], str(x[1])))
        return tree, diff
    if far:
        _, tree, diff = min(far, key=lambda x: (x[0], str(x[1])))
        return tree, diff
    return default, []


def _make_line(tree: Path) -> str:
    """Which source tree the O= tree was last built from (its build log)."""
    try:
        with open(tree / "harness-build.log", errors="replace") as f:
            first = f.readline()
    except OSError:
        return "no build log"
    m = re.search(r"make -C (\S+)", first)
    return f"built from {m.group(1)}" if m else "build log without a make line"


def compiler_of(tree: Path) -> str:
    """The compiler command of the tree's objects, from one saved ``.o.cmd``
    (``ccache aarch64-linux-gnu-gcc`` or ``aarch64-linux-gnu-gcc``...)."""
    for cmd in sorted(Path(tree).glob("*/.*.o.cmd"))[:20]:
        try:
            first = cmd.read_text(errors="replace").split("\n", 1)[0]
        except OSError:
            continue
        m = re.match(r"^\S+\s*:=\s*(?:(ccache)\s+)?(\S*gcc|\S*clang)\b", first)
        if m:
            return " ".join(x for x in m.groups() if x)
    return "unknown compiler"


def _span(tree: Path) -> float:
    ts = [(tree / o).stat().st_mtime for o in list_objects(tree)]
    return max(ts) - min(ts) if ts else 0.0


# --------------------------------------------------------------- table ------

@dataclass
class Row:
    key: str                      # directory or option
    objects: int
    share: float                  # of all objects
    seconds: Optional[float]      # estimated compile CPU seconds (None: not timed)
    options: list[tuple[str, int]] = field(default_factory=list)   # [(option, n)]
    need: str = ""
    origin: str = ""
    kunit: Optional[int] = None   # kunit.py's objects for the same key
    kunit_seconds: Optional[float] = None   # their estimate from its build's mtimes


@dataclass
class ObjectTable:
    build_dir: Path
    source: Optional[Path]
    by: str
    total: int
    rows: list[Row]
    timing_dir: Optional[Path] = None
    timing_diff: list[str] = field(default_factory=list)
    timed: int = 0
    total_seconds: Optional[float] = None
    kunit_dir: Optional[Path] = None
    kunit_total: Optional[int] = None
    kunit_total_seconds: Optional[float] = None
    candidates: list[Row] = field(default_factory=list)   # by option: nobody asked
    proposals: list[Row] = field(default_factory=list)    # one per PROPOSALS entry


def _seconds(times: Mapping[str, Optional[float]], objs: Iterable[str]) -> Optional[float]:
    """Sum of the known estimates of ``objs``; None when none is known."""
    known = [t for t in (times.get(o) for o in objs) if t is not None]
    return sum(known) if known else None


def object_table(build_dir: Path, *, source: Optional[Path] = None, by: str = "directory",
                 depth: int = 2, timing_dir: Optional[Path] = None, jobs: int = 2,
                 kunit_dir: Optional[Path] = None, requested: Optional[Mapping[str, str]] = None,
                 needs: Mapping[str, str] = NEEDS) -> ObjectTable:
    """Objects of ``build_dir`` grouped by directory (``depth`` levels) or by
    Kconfig option (``by="option"``, needs ``source``), with shares, estimated
    compile seconds (from ``timing_dir``'s cold mtimes, default ``build_dir``)
    and the scenario that needs them. ``requested``: the options the fragments
    ask for ({"CONFIG_X": "y"} or {"X": "y"})."""
    build_dir = Path(build_dir)
    objects = list_objects(build_dir)
    total = len(objects)
    omap = OptionMap(source) if source else None
    enabled = read_config(build_dir / ".config") if (build_dir / ".config").exists() else {}
    req = {k.removeprefix("CONFIG_"): v for k, v in (requested or {}).items()}
    prompts: set[str] = set()
    rev: dict[str, set[str]] = reverse_selects(source, prompts) if source else {}
    tdir = Path(timing_dir) if timing_dir else build_dir
    tobjs = set(list_objects(tdir)) if tdir != build_dir else set(objects)
    times = cold_times(tdir, sorted(tobjs), jobs)

    def key_of(o: str) -> str:
        if by == "option":
            return omap.option(o) if omap else "?"
        return group_dir(o, depth)

    opt_of = {o: (omap.option(o) if omap else "?") for o in objects}
    groups: dict[str, list[str]] = defaultdict(list)
    for o in objects:
        groups[key_of(o)].append(o)

    kunit_counts: Optional[Counter[str]] = None
    kunit_groups: dict[str, list[str]] = defaultdict(list)
    kunit_total = None
    ktimes: dict[str, Optional[float]] = {}
    if kunit_dir and Path(kunit_dir).is_dir():
        kobjs = list_objects(Path(kunit_dir))
        kunit_total = len(kobjs)
        ktimes = cold_times(Path(kunit_dir), kobjs, jobs)
        for o in kobjs:
            kunit_groups[(omap.option(o) if omap else "?") if by == "option"
                         else group_dir(o, depth)].append(o)
        kunit_counts = Counter({k: len(v) for k, v in kunit_groups.items()})

    rows = []
    for key, objs in groups.items():
        opts = Counter(opt_of[o] for o in objs).most_common()
        top = key if by == "option" else opts[0][0]
        row = Row(key, len(objs), len(objs) / total if total else 0.0,
                  _seconds(times, objs), opts,
                  need_of(top, enabled, rev, needs, prompts=prompts),
                  origin(top, req, enabled, rev))
        if kunit_counts is not None:
            row.kunit = kunit_counts.get(key, 0)
            row.kunit_seconds = _seconds(ktimes, kunit_groups.get(key, []))
        rows.append(row)
    for key, n in (kunit_counts or Counter()).items():
        if key not in groups:        # built by kunit.py only
            rows.append(Row(key, 0, 0.0, None, [], "(kunit.py only)", "", n,
                            _seconds(ktimes, kunit_groups[key])))
    rows.sort(key=lambda r: (-max(r.objects, r.kunit or 0), r.key))
    timed = [o for o in objects if times.get(o) is not None]

    candidates = []
    if omap is not None:
        by_opt: dict[str, list[str]] = defaultdict(list)
        for o in objects:
            by_opt[opt_of[o]].append(o)
        for opt, objs in by_opt.items():
            if opt in (ALWAYS, LINK, HOST) or opt in needs:
                continue
            if origin(opt, req, enabled, rev) != "default" or opt not in prompts:
                continue         # asked for, selected, or without a prompt
            extra = brings(opt, enabled, rev, req)
            objs = objs + [o for x in extra for o in by_opt.get(x, [])]
            with_ = f"default; with {', '.join(extra)}" if extra else "default"
            candidates.append(Row(opt, len(objs), len(objs) / total if total else 0.0,
                                  _seconds(times, objs), [],
                                  need_of(opt, enabled, rev, needs, prompts=prompts),
                                  with_))
        candidates.sort(key=lambda r: (-r.objects, r.key))
    proposals = []
    for prop in PROPOSALS if omap is not None else ():
        gone = set(prop.unset) | set(prop.goes)
        pobjs = [o for o in objects if opt_of[o] in gone]
        on = [o for o in prop.unset if o in enabled]
        proposals.append(Row(prop.name, len(pobjs), len(pobjs) / total if total else 0.0,
                             _seconds(times, pobjs),
                             sorted(Counter(opt_of[o] for o in pobjs).items()),
                             prop.why, "unset " + ", ".join(prop.unset)
                             + ("" if len(on) == len(prop.unset) else
                                f" (enabled now: {', '.join(on) or 'none'})")))
    return ObjectTable(build_dir, source, by, total, rows, tdir, [], len(timed),
                       _seconds(times, objects), Path(kunit_dir) if kunit_dir else None,
                       kunit_total, _seconds(ktimes, ktimes) if ktimes else None,
                       candidates, proposals)


# ---------------------------------------------------------------- print -----

def scenario_of(need: str) -> str:
    """The scenario part of a NEEDS text: without "via OPTION: " prefixes and
    what follows the first ": " ("ssh: TCP/IPv4 to dropbear" -> "ssh")."""
    text = need
    while text.startswith("via ") and ": " in text:
        text = text.split(": ", 1)[1]
    return text.split(": ", 1)[0].strip() or "?"


@dataclass
class Scenario:
    name: str
    objects: int = 0
    kunit: int = 0
    seconds: float = 0.0
    options: Counter[str] = field(default_factory=Counter)


def by_scenario(rows: Sequence[Row]) -> list[Scenario]:
    """Per-option rows (``object_table(by="option")``) summed per scenario,
    the most objects beyond kunit.py's first."""
    out: dict[str, Scenario] = {}
    for r in rows:
        name = scenario_of(r.need)      # "(kunit.py only)" stays as it is
        s = out.setdefault(name, Scenario(name))
        s.objects += r.objects
        s.kunit += r.kunit or 0
        s.seconds += r.seconds or 0.0
        if r.objects:
            s.options[r.key] += r.objects
    return sorted(out.values(), key=lambda s: (-(s.objects - s.kunit), s.name))


# objects beyond kunit.py's from which a scenario is a README row
SCENARIO_README_MIN = 10


def print_scenarios(scenarios: Sequence[Scenario], me: Sequence[str],
                    kunit_dir: Optional[Path]) -> None:
    """The table, and one figure per scenario for --json-out (the README shows
    those that build at least SCENARIO_README_MIN objects more than kunit.py)."""
    import benchlib as bl
    kunit = kunit_dir is not None
    print(f"{'scenario (what needs the objects)':<48} {'objects':>7} "
          + (f"{'kunit':>6} {'beyond':>6} " if kunit else "") + f"{'~cpu s':>7}  options")
    for s in scenarios:
        opts = ", ".join(f"{o}:{n}" for o, n in s.options.most_common(4))
        more = f" +{len(s.options) - 4}" if len(s.options) > 4 else ""
        print(f"{s.name[:48]:<48} {s.objects:>7} "
              + (f"{s.kunit:>6} {s.objects - s.kunit:>6} " if kunit else "")
              + f"{s.seconds:7.1f}  {opts}{more}")
        if not s.objects:
            continue
        kfig = None
        if kunit:
            kfig = bl.kunit_figure("kunit.py's objects for the same options", s.kunit,
                                   f"$ find {kunit_dir} -name '*.o'", unit="objects")
        bl.record("objects_for_" + bl.slug(s.name)[:48], f"objects needed by {s.name}",
                  s.objects, "objects", command=bl.command_text(me),
                  extra=f"~{s.seconds:.0f} CPU s (estimated from cold-build mtimes); "
                        f"options: {opts}{more}",
                  readme=kunit and s.objects - s.kunit >= SCENARIO_README_MIN, kunit=kfig)


def format_rows(rows: Sequence[Row], by: str, top: int, kunit: bool) -> list[str]:
    head = f"{'option' if by == 'option' else 'directory':<34} {'objects':>7} {'share':>6} " \
           f"{'~cpu s':>7}"
    if kunit:
        head += f" {'kunit':>6} {'~cpu s':>7}"
    head += "  " + ("origin / needed by" if by == "option" else "built by / needed by")
    lines = [head]
    for r in rows[:top]:
        secs = f"{r.seconds:7.1f}" if r.seconds is not None else f"{'n/a':>7}"
        line = f"{r.key:<34} {r.objects:>7} {r.share:>6.1%} {secs}"
        if kunit:
            ks = f"{r.kunit_seconds:7.1f}" if r.kunit_seconds is not None else f"{'':>7}"
            line += f" {r.kunit if r.kunit is not None else '':>6} {ks}"
        if by == "option":
            extra = f"{r.origin}; " if r.origin else ""
        else:
            shown = ", ".join(f"{o}:{n}" for o, n in r.options[:3])
            more = f" +{len(r.options) - 3}" if len(r.options) > 3 else ""
            extra = f"[{shown}{more}] "
        lines.append(f"{line}  {extra}{r.need}")
    if len(rows) > top:
        rest = rows[top:]
        lines.append(f"{'(' + str(len(rest)) + ' more)':<34} "
                     f"{sum(r.objects for r in rest):>7} "
                     f"{sum(r.share for r in rest):>6.1%}")
    return lines


def default_tree() -> tuple[Path, Path, dict[str, str], Path, str]:
    """(O= tree, pristine source, requested options, cache root) of the
    default kernel, without building."""
    from harness.host import cache_root
    from harness.kernel import kernel, source
    inputs = kernel.gather_inputs(kernel.BuildRequest())
    outdir = kernel.outdir_path(source.work_tree(inputs.source), inputs)
    return outdir, source.pristine_tree(inputs.source), dict(inputs.requested), \
        cache_root(), inputs.source.short


def find_kunit_dir(cache: Path, short: str) -> Optional[Path]:
    """kunit.py's build dir under ``cache/kunit/``: one named after the source
    identity first, else any folder there holding a .config and objects."""
    root = cache / "kunit"
    if not root.is_dir():
        return None
    found = sorted((p.parent for p in root.glob("**/.config")),
                   key=lambda p: (short not in str(p), str(p)))
    for p in found:
        if any(p.glob("*/*.o")) or any(p.glob("*/*/*.o")):
            return p
    return None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", type=Path, help="the O= tree (default: the default "
                   "kernel's, found without building)")
    p.add_argument("--source", type=Path, help="the kernel source tree whose Kbuild "
                   "files map objects to options (default: the pristine tree)")
    p.add_argument("--by-option", action="store_true",
                   help="also group by the Kconfig option that builds each object")
    p.add_argument("--candidates", action="store_true",
                   help="list the options olddefconfig switched on that no fragment "
                        "asked for, nothing selects and no scenario needs")
    p.add_argument("--list", metavar="PREFIX",
                   help="also list every object under PREFIX (e.g. drivers/acpi) with "
                        "its estimated seconds and option")
    p.add_argument("--depth", type=int, default=2, help="directory levels (default 2)")
    p.add_argument("--top", type=int, default=30, help="rows shown (default 30)")
    p.add_argument("--jobs", type=int, default=2,
                   help="make -j of the cold build the timing reads (default 2: "
                        "the harness's os.cpu_count() on this machine)")
    p.add_argument("--timing-dir", type=Path,
                   help="O= tree whose cold-build mtimes give the seconds (default: "
                        "the build tree if cold-timed, else the nearest fully timed one)")
    p.add_argument("--kunit-dir", type=Path,
                   help="kunit.py's --build_dir (default: found under the cache's kunit/)")
    p.add_argument("--json-out", type=Path, default=None, metavar="FILE",
                   help="also write the per-scenario figures as JSON to FILE "
                        "(run_all.py collects these; bench/perf_readme.py shows those "
                        f"{SCENARIO_README_MIN}+ objects beyond kunit.py's)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import benchlib as bl
    args = parse_args(argv)
    bl.start_results_for(args, __file__, argv)
    requested: dict[str, str] = {}
    short, cache = "", None
    outdir: Optional[Path] = None
    pristine: Optional[Path] = None
    try:
        outdir, pristine, requested, cache, short = default_tree()
    except Exception as e:   # noqa: BLE001 - no toolchain or no source: say so
        if not args.build_dir:
            bl.die(f"cannot find the default kernel's O= tree: {e}")
            return 2
    build_dir: Optional[Path] = args.build_dir or outdir
    src: Optional[Path] = args.source or pristine
    if build_dir is None or not build_dir.is_dir() or not list_objects(build_dir):
        bl.die(f"no built objects in {build_dir}: build the default kernel first "
               f"({bl.command_text(bl.harness_argv('build', '--json'))})")
        return 2
    if src is not None and not src.is_dir():
        src = None
    timing: Path = args.timing_dir
    diff: list[str] = []
    if timing is None:
        siblings = sorted(Path(build_dir).parent.iterdir())
        timing, diff = pick_timing_tree(Path(build_dir), siblings)
    kunit = args.kunit_dir or (find_kunit_dir(cache, short) if cache else None)
    me = [sys.executable, "bench/bench_objects.py"] + (list(argv) if argv is not None
                                                       else sys.argv[1:])
    bl.header("objects of the cold kernel build")
    print(f"   O= tree {build_dir}")
    print(f"   source  {src or '(none: no option mapping)'}")
    t = object_table(Path(build_dir), source=src, by="directory", depth=args.depth,
                     timing_dir=timing, jobs=args.jobs, kunit_dir=kunit,
                     requested=requested)
    tf = timed_fraction(Path(timing))
    if Path(timing) == Path(build_dir):
        where = "the build tree itself"
    else:
        same = "the same .config" if not diff else \
            f"{len(diff)} .config differences: {', '.join(diff[:6])}"
        where = f"{timing} ({same}; {_make_line(Path(timing))})"
    print(f"   timing  {where}")
    print(f"           {tf:.0%} of its objects carry cold-build mtimes, spanning "
          f"{_span(Path(timing)):.0f} s, compiled by {compiler_of(Path(timing))}; "
          f"estimate t[i]-t[i-{args.jobs}] (see --help)")
    print()
    print(f"objects: {t.total}  $ find {build_dir} -name '*.o' | wc -l")
    if t.total_seconds is not None:
        print(f"estimated compile CPU seconds of the timed objects: {t.total_seconds:.0f} "
              f"({t.timed} objects; /{args.jobs} jobs = {t.total_seconds / args.jobs:.0f} s "
              f"wall)  {bl.command_text(me)}")
    if kunit:
        print(f"kunit.py objects: {t.kunit_total}  $ find {kunit} -name '*.o' | wc -l")
        if t.kunit_total_seconds is not None:
            print(f"kunit.py's estimated compile CPU seconds: {t.kunit_total_seconds:.0f} "
                  f"(/{args.jobs} jobs = {t.kunit_total_seconds / args.jobs:.0f} s wall, "
                  f"from the mtimes of its build, spanning {_span(Path(kunit)):.0f} s, "
                  f"compiled by {compiler_of(Path(kunit))})")
    else:
        print("kunit.py build dir: not found under the cache's kunit/; get one with "
              "bench/bench_kunit.py (when it exists) or, from the pristine tree, "
              f"$ cd {src or 'SOURCE'} && tools/testing/kunit/kunit.py build --arch=arm64 "
              f"--cross_compile=aarch64-linux-gnu- --build_dir="
              f"{(cache or Path('~/.cache/hotplug-harness')) / 'kunit' / (short or 'SRC')}"
              " ; then --kunit-dir DIR")
    print()
    print(f"== by directory (depth {args.depth})  {bl.command_text(me)}")
    for line in format_rows(t.rows, "directory", args.top, kunit is not None):
        print(line)
    if src is None:
        print("\n(by option and by scenario: no source tree to read Kbuild files from; "
              "--source DIR)")
    else:
        o = object_table(Path(build_dir), source=src, by="option", timing_dir=timing,
                         jobs=args.jobs, kunit_dir=kunit, requested=requested)
        print()
        print(f"== by the scenario that needs them (summed over the options that build "
              f"them)  {bl.command_text(me)}")
        print_scenarios(by_scenario(o.rows), me, kunit)
        if args.by_option:
            print()
            print(f"== by Kconfig option  {bl.command_text(me)}")
            for line in format_rows(o.rows, "option", args.top, kunit is not None):
                print(line)
    if src is not None:
        print()
        print("== proposed for base.config (not applied: each re-keys the default "
              f"kernel; see PROPOSALS)  {bl.command_text(me)}")
        print(f"{'proposal':<20} {'objects':>7} {'share':>6} {'~cpu s':>7}  "
              "unset / objects per option / why / risk")
        risks = {p.name: p.risk for p in PROPOSALS}
        for r in t.proposals:
            secs = f"{r.seconds:7.1f}" if r.seconds is not None else f"{'n/a':>7}"
            per = ", ".join(f"{o}:{n}" for o, n in r.options)
            print(f"{r.key:<20} {r.objects:>7} {r.share:>6.1%} {secs}  {r.origin}")
            print(f"{'':<44}[{per}]")
            print(f"{'':<44}why: {r.need}")
            print(f"{'':<44}risk: {risks[r.key]}")
        n = sum(r.objects for r in t.proposals)
        secs_all = sum(r.seconds or 0.0 for r in t.proposals)
        print(f"{'all proposals':<20} {n:>7} {n / t.total:>6.1%} {secs_all:7.1f}  "
              f"-> {t.total - n} objects"
              + (f" (kunit.py: {t.kunit_total})" if t.kunit_total else ""))
    if args.list:
        print()
        print(f"== objects under {args.list}  {bl.command_text(me)}")
        omap = OptionMap(src) if src else None
        times = cold_times(Path(timing), list_objects(Path(timing)), args.jobs)
        for obj in list_objects(Path(build_dir)):
            if obj.startswith(args.list):
                est = times.get(obj)
                print(f"{obj:<60} {est if est is not None else float('nan'):6.1f}  "
                      f"{omap.option(obj) if omap else ''}")
    if args.candidates and src is not None:
        print()
        print("== enabled by a Kconfig default only (has a prompt, no fragment asks, "
              f"nothing enabled selects it, no scenario in NEEDS)  {bl.command_text(me)}")
        for line in format_rows(t.candidates, "option", args.top, False):
            print(line)
    return 0


if __name__ == "__main__":
    import benchlib
    benchlib.entry(main)
