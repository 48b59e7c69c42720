"""The drive stage: one module per hotplug method, run on a booted guest.

Takes a ``Guest`` (harness.session) and the ``KernelArtifacts`` it booted, gives
a ``Recorder`` (common.py) holding the steps, phases and removals the method
recorded. Each method module declares ``METHOD = register(Method(...))``
(method.py: the protocol and the registry, which imports every module here);
harness.runner runs them, one fresh guest each.
"""
