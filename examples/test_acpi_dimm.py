"""An example user test (the pytest plugin's fixtures): plug a 512 MiB pc-dimm
over QMP, online it, offline it, unplug it (device_del, the guest's ACPI
eject), and judge it with the harness's checks, the ordering checks included.

    .venv/bin/python -m pytest examples/ [--hh-patch my-fix.patch] [--hh-config 64k-42]
"""


def test_acpi_dimm_add_remove(hh_guest):
    g = hh_guest(method="acpi-dimm")  # ACPI boot (edk2), DIMM slots
    dimm = g.add_dimm(512)            # object-add + device_add (phase "before" taken first)
    g.online(dimm)                    # its blocks online_movable
    g.offline(dimm)                   # phase "online" taken first
    g.delete_dimm(dimm)               # device_del, DEVICE_DELETED, object-del; "removed-1"
    g.assert_pass()                   # every check that applies; names the report if not
