"""An example user test (the pytest plugin's fixtures): probe one hidden block
through /sys/devices/system/memory/probe, online it, offline and remove it,
and judge it with the harness's checks, the ordering checks included (gdb
follows the removal: --hh-order-check off turns that off).

    .venv/bin/python -m pytest examples/ [--hh-patch my-fix.patch] [--hh-config 64k-42]
"""


def test_probe_online_remove(hh_guest):
    g = hh_guest(method="probe")      # DT boot: 1 GiB hidden above mem=, rodata=full
    addr = g.hidden_base()            # the first hidden block (phase "before" taken)
    g.probe(addr)                     # echo ADDR > /sys/devices/system/memory/probe
    g.online(addr)                    # online_movable
    g.offline(addr)                   # phase "online" taken first
    g.remove(addr)                    # echo ADDR > .../remove, gdb watching; "removed-1"
    g.assert_pass()                   # every check that applies; names the report if not
